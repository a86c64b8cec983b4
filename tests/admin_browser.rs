//! The admin page in a real headless Chromium, driven through chromedriver's WebDriver
//! protocol: log in, find a page by tag, press revalidate, see its state change.
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test.sh installs them); fails,
//! never skips, when they are missing. Set `ISR_SCREENSHOT=path.png` to keep a screenshot.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, send, Isr, Origin, SECRET};
use serde_json::{json, Value};

/// A chromedriver process and one browser session in it.
struct Browser {
    driver: Child,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is required (bash scripts/test.sh installs chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if send("GET", &format!("{url}/status"), &[], "").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=1400,900",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let mut b = Browser {
            driver,
            base: url.clone(),
            _profile: profile,
        };
        let session = b.call("POST", "/session", caps).await;
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {session}"))
            .to_string();
        b.base = format!("{url}/session/{id}");
        // Finding an element waits (up to 10 s) for the page that has it: a click that
        // submits a form returns before the next page has loaded.
        b.call("POST", "/timeouts", json!({"implicit": 10_000}))
            .await;
        b
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" {
            String::new()
        } else {
            body.to_string()
        };
        let r = send(
            method,
            &format!("{}{path}", self.base),
            &[("content-type", "application/json")],
            &body,
        )
        .await
        .unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        assert!(
            r.status < 300,
            "webdriver {method} {path}: {} {v}",
            r.status
        );
        v["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url })).await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.call("POST", &format!("/element/{e}/clear"), json!({}))
            .await;
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.call("POST", &format!("/element/{e}/click"), json!({}))
            .await;
    }

    async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.call("GET", &format!("/element/{e}/text"), Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn screenshot(&self) -> Vec<u8> {
        let v = self.call("GET", "/screenshot", Value::Null).await;
        base64_decode(v.as_str().expect("a base64 PNG"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | u32::from(val(*c)) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_logs_in_finds_a_page_by_tag_and_revalidates_it_in_chromium() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    for p in [
        "/blog/hello-world",
        "/blog/isr-in-rust",
        "/blog/tags",
        "/fast/news",
    ] {
        isr.get(p).await.unwrap();
    }
    isr.get("/blog/tags").await.unwrap();
    let browser = Browser::start().await;

    browser.go(&isr.url("/_isr/admin")).await;
    browser.type_into("#secret", "not-the-secret").await;
    browser.click("#login").await;
    assert_eq!(browser.text("#error").await, "Wrong secret.");
    browser.type_into("#secret", SECRET).await;
    browser.click("#login").await;
    assert_eq!(browser.text("#entries").await, "4");

    browser.type_into("#tag", "post-isr-in-rust").await;
    browser.click("#search").await;
    browser.find("#revalidate-tag").await; // only on the page filtered by tag
    let row = "tr[data-key='/blog/isr-in-rust']";
    assert_eq!(browser.text(&format!("{row} .state")).await, "fresh");
    browser.click(&format!("{row} button")).await;
    assert_eq!(
        browser.text("#done").await,
        "Revalidated page /blog/isr-in-rust."
    );
    assert_eq!(browser.text(&format!("{row} .state")).await, "stale");
    assert_eq!(isr.get("/blog/isr-in-rust").await.unwrap().cache(), "STALE");
    assert_eq!(isr.get("/blog/hello-world").await.unwrap().cache(), "HIT");

    browser.go(&isr.url("/_isr/admin")).await;
    let png = browser.screenshot().await;
    assert_eq!(&png[1..4], b"PNG");
    if let Ok(path) = std::env::var("ISR_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }
}
