//! CDN purging end to end: a real Varnish (Debian's varnish with varnish-modules' xkey)
//! in front of the real isr binary, and the Cloudflare, Fastly and webhook adapters
//! against a local HTTP receiver that records the exact requests their APIs document.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, metric, send, Isr, Logged, Origin, Reply, Spec};
use serde_json::{json, Value};

/// A real `varnishd` on a free loopback port in front of `backend`, with the VCL of
/// docs/cdn.md. Panics (never skips) when varnishd is missing: `scripts/test.sh` installs it.
struct Varnish {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Varnish {
    async fn start(backend: std::net::SocketAddr, port: u16) -> Varnish {
        let dir = tempfile::tempdir().unwrap();
        let vcl = dir.path().join("isr.vcl");
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/isr.vcl"))
            .unwrap()
            .replace(
                "127.0.0.1\"; .port = \"8080",
                &format!("{}\"; .port = \"{}", backend.ip(), backend.port()),
            );
        // The test also wants to see whether Varnish answered from its cache.
        let text = text.replace(
            "sub vcl_deliver {",
            "sub vcl_deliver {\n    set resp.http.x-varnish-cache = \"MISS\";\n    if (obj.hits > 0) { set resp.http.x-varnish-cache = \"HIT\"; }",
        );
        std::fs::write(&vcl, text).unwrap();
        let child = Command::new("varnishd")
            .args(["-F", "-j", "none", "-T", "none", "-s", "malloc,32m"])
            .arg("-n")
            .arg(dir.path().join("n"))
            .args(["-a", &format!("127.0.0.1:{port}"), "-f"])
            .arg(&vcl)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("varnishd is not installed: run scripts/test.sh, which installs varnish and varnish-modules");
        let v = Varnish {
            port,
            child,
            _dir: dir,
        };
        for _ in 0..200 {
            if v.get("/_isr/health").await.is_ok_and(|r| r.status == 200) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("varnishd did not start");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn get(&self, path: &str) -> Result<Reply, String> {
        send("GET", &format!("{}{path}", self.url()), &[], "").await
    }
}

impl Drop for Varnish {
    fn drop(&mut self) {
        // SIGTERM, so the manager also stops its worker process.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Waits (at most 20 s: purge retries back off for seconds) until `f` is true.
async fn within(what: &str, f: impl AsyncFnMut() -> bool) {
    common::eventually_for(Duration::from_secs(20), what, f).await
}

async fn purges(isr: &Isr, cdn: &str, result: &str) -> f64 {
    let series = format!("isr_cdn_purges_total{{cdn=\"{cdn}\",result=\"{result}\"}}");
    metric(&isr.metrics().await, &series)
}

fn body(l: &Logged) -> Value {
    serde_json::from_slice(&l.body).unwrap_or(Value::Null)
}

fn header<'a>(l: &'a Logged, name: &str) -> &'a str {
    l.headers.get(name).map_or("", |v| v.to_str().unwrap_or(""))
}

const BLOG: &str = r#"
[cache]
origin_timeout = "2s"

[[route]]
match = "/blog/{slug}"
tags = ["posts", "post-{slug}"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_revalidation_on_isr_reaches_the_visitor_behind_varnish() {
    let origin = Origin::start().await;
    let receiver = Origin::start().await; // a second cache that purges only by path
    let varnish_port = free_port();
    let config = format!(
        "{BLOG}
[[cdn]]
kind = \"http-purge\"
url = \"http://127.0.0.1:{varnish_port}\"
xkey = true
emit_tags = true

[[cdn]]
kind = \"http-purge\"
name = \"paths-only\"
url = \"{}\"
",
        receiver.url()
    );
    let isr = Isr::start_with(&origin, &config).await;
    let varnish = Varnish::start(isr.addr, varnish_port).await;
    let through = async |path: &str| varnish.get(path).await.unwrap();

    for path in ["/blog/a", "/blog/b"] {
        let first = through(path).await;
        assert!(
            first.text().contains(&format!("page {path} v1")),
            "{}",
            first.text()
        );
        let again = through(path).await;
        assert_eq!(again.header("x-varnish-cache"), "HIT", "{path}");
    }
    assert_eq!(origin.count("/blog/a"), 1);

    // An eager tag revalidation: isr regenerates, then purges Varnish by xkey.
    let r = isr
        .revalidate(json!({"tag": "post-a", "eager": true}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    within("the xkey purge", async || {
        purges(&isr, "http-purge", "ok").await >= 1.0
    })
    .await;
    let next = through("/blog/a").await;
    assert_eq!(next.header("x-varnish-cache"), "MISS");
    assert_eq!(next.cache(), "HIT", "isr regenerated before purging");
    assert!(next.text().contains("page /blog/a v2"), "{}", next.text());
    let other = through("/blog/b").await;
    assert_eq!(
        other.header("x-varnish-cache"),
        "HIT",
        "an untagged page stays"
    );
    assert!(other.text().contains("v1"));

    // A path with mode = expire: purged by URL; the next visitor waits for fresh content.
    let r = isr
        .revalidate(json!({"path": "/blog/b", "mode": "expire"}))
        .await;
    assert_eq!(r.status, 200);
    within("the path purge", async || {
        purges(&isr, "http-purge", "ok").await >= 2.0
    })
    .await;
    let next = through("/blog/b").await;
    assert_eq!(next.cache(), "MISS");
    assert!(next.text().contains("page /blog/b v2"), "{}", next.text());

    // The cache without xkey got the tagged page's URL instead of the tag.
    within("the paths-only purges", async || receiver.log().len() >= 2).await;
    let log = receiver.log();
    let sent: Vec<(&str, &str)> = log
        .iter()
        .map(|l| (l.method.as_str(), l.target.as_str()))
        .collect();
    assert_eq!(sent, [("PURGE", "/blog/a"), ("PURGE", "/blog/b")]);
    assert_eq!(header(&log[0], "host"), receiver.addr.to_string());
    assert_eq!(purges(&isr, "paths-only", "failed").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn emit_tags_sends_surrogate_keys_on_hits_and_misses() {
    let origin = Origin::start().await;
    let receiver = Origin::start().await;
    let config = format!(
        "{BLOG}\n[[cdn]]\nkind = \"http-purge\"\nurl = \"{}\"\nemit_tags = true\n",
        receiver.url()
    );
    let isr = Isr::start_with(&origin, &config).await;
    let miss = isr.get("/blog/hello").await.unwrap();
    let hit = isr.get("/blog/hello").await.unwrap(); // answered by the hit lane
    assert_eq!((miss.cache(), hit.cache()), ("MISS", "HIT"));
    for r in [&miss, &hit] {
        assert_eq!(r.header("surrogate-key"), "posts post-hello");
        assert_eq!(r.header("cache-tag"), "posts,post-hello");
        let cdn = r.header("cdn-cache-control");
        assert!(cdn.starts_with("public, max-age="), "{cdn}");
        assert!(cdn.contains("stale-while-revalidate="), "{cdn}");
    }
    // Without emit_tags, none of them.
    let plain = Isr::start_with(&origin, BLOG).await;
    let r = plain.get("/blog/hello").await.unwrap();
    assert_eq!(r.header("surrogate-key"), "");
    assert_eq!(r.header("cdn-cache-control"), "");
}

fn api_config(receiver: &Origin) -> String {
    format!(
        "public_url = \"https://www.example.com\"
{BLOG}
[[route]]
match = \"/fast/{{slug}}\"
revalidate = 1

[[cdn]]
kind = \"cloudflare\"
zone_id = \"Z1\"
api_url = \"{r}/client/v4\"

[[cdn]]
kind = \"fastly\"
service_id = \"S1\"
api_url = \"{r}\"
purge_on_regenerate = true

[[cdn]]
kind = \"webhook\"
url = \"{r}/hook\"
token_env = \"HOOK_SECRET\"
",
        r = receiver.url()
    )
}

const TOKENS: [(&str, &str); 3] = [
    ("CLOUDFLARE_API_TOKEN", "cf-token"),
    ("FASTLY_API_TOKEN", "fastly-token"),
    ("HOOK_SECRET", "hook-secret,older-secret"),
];

async fn start_with_apis(origin: &Origin, receiver: &Origin) -> Isr {
    Isr::start_opts(origin, &api_config(receiver), &TOKENS, None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn cloudflare_fastly_and_webhook_get_the_requests_their_apis_document() {
    let origin = Origin::start().await;
    let receiver = Origin::start().await;
    let isr = start_with_apis(&origin, &receiver).await;
    isr.get("/blog/a").await.unwrap();

    let r = isr
        .revalidate(json!({"tags": ["posts"], "paths": ["/blog/a"]}))
        .await;
    assert_eq!(r.status, 200);
    within("five API calls", async || receiver.log().len() >= 5).await;
    let log = receiver.log();
    let find = |method: &str, target: &str, key: Option<&str>| -> Logged {
        log.iter()
            .find(|l| {
                l.method == method
                    && l.target == target
                    && key.is_none_or(|k| body(l).get(k).is_some())
            })
            .unwrap_or_else(|| panic!("no {method} {target} {key:?} in {log:#?}"))
            .clone()
    };

    let cf = "/client/v4/zones/Z1/purge_cache";
    let files = find("POST", cf, Some("files"));
    assert_eq!(
        body(&files),
        json!({"files": ["https://www.example.com/blog/a"]})
    );
    assert_eq!(header(&files, "authorization"), "Bearer cf-token");
    assert_eq!(header(&files, "content-type"), "application/json");
    let tags = find("POST", cf, Some("tags"));
    assert_eq!(body(&tags), json!({"tags": ["posts"]}));

    let keys = find("POST", "/service/S1/purge", None);
    assert_eq!(body(&keys), json!({"surrogate_keys": ["posts"]}));
    assert_eq!(header(&keys, "fastly-key"), "fastly-token");
    assert_eq!(header(&keys, "fastly-soft-purge"), "1");
    let url = find("POST", "/purge/www.example.com/blog/a", None);
    assert_eq!(header(&url, "fastly-key"), "fastly-token");
    assert_eq!(header(&url, "fastly-soft-purge"), "1");

    let hook = find("POST", "/hook", None);
    assert_eq!(
        body(&hook),
        json!({"paths": ["/blog/a"], "tags": ["posts"]})
    );
    assert_eq!(
        header(&hook, "x-isr-signature"),
        isr::cdn::sign(b"hook-secret", &hook.body)
    );
    assert_eq!(log.len(), 5, "{log:#?}");

    // x-prerender-revalidate is an on-demand revalidation of one page: purged too.
    let r = isr
        .request(
            "GET",
            "/blog/b",
            &[("x-prerender-revalidate", common::SECRET)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.cache(), "REVALIDATED");
    within("the page's purges", async || {
        receiver.count("/purge/www.example.com/blog/b") == 1 && receiver.count("/hook") == 2
    })
    .await;
    let log = receiver.log();
    let hook = log.iter().rfind(|l| l.target == "/hook").unwrap();
    assert_eq!(body(hook), json!({"paths": ["/blog/b"], "tags": []}));
    within("Cloudflare's purge of it", async || {
        receiver.log().len() == 8
    })
    .await;
    let offset = 8;

    // 250 tags: three Cloudflare calls (100 each at most), one Fastly call (256).
    let many: Vec<String> = (0..250).map(|i| format!("t{i:03}")).collect();
    let r = isr.revalidate(json!({ "tags": many })).await;
    assert_eq!(r.status, 200);
    within("the batched calls", async || {
        receiver.log().len() >= offset + 5
    })
    .await;
    let log = receiver.log();
    let new = &log[offset..];
    let cf_sizes: Vec<usize> = new
        .iter()
        .filter(|l| l.target == cf)
        .map(|l| body(l)["tags"].as_array().unwrap().len())
        .collect();
    assert_eq!(cf_sizes, [100, 100, 50]);
    let fastly: Vec<&Logged> = new
        .iter()
        .filter(|l| l.target == "/service/S1/purge")
        .collect();
    assert_eq!(fastly.len(), 1);
    assert_eq!(
        body(fastly[0])["surrogate_keys"].as_array().unwrap().len(),
        250
    );
    for (cdn, ok) in [("cloudflare", 6.0), ("fastly", 4.0), ("webhook", 3.0)] {
        assert_eq!(purges(&isr, cdn, "ok").await, ok, "{cdn}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_purges_are_retried_with_backoff_and_counted_without_delaying_anyone() {
    let origin = Origin::start().await;
    let receiver = Origin::start().await;
    receiver.set(
        "/client/v4/zones/Z1/purge_cache",
        Spec {
            statuses: vec![503, 429],
            ..Spec::default()
        },
    );
    receiver.set(
        "/service/S1/purge",
        Spec {
            status: Some(403),
            ..Spec::default()
        },
    );
    receiver.set(
        "/hook",
        Spec {
            delay: Duration::from_secs(2),
            ..Spec::default()
        },
    );
    let isr = start_with_apis(&origin, &receiver).await;
    isr.get("/blog/a").await.unwrap();
    let r = isr.revalidate(json!({"tag": "posts"})).await;
    assert_eq!(r.status, 200);
    // The API answered while the webhook receiver still holds its answer, and pages serve.
    assert_eq!(purges(&isr, "webhook", "ok").await, 0.0);
    assert_eq!(isr.get("/blog/a").await.unwrap().cache(), "STALE");

    within("Cloudflare's third try", async || {
        purges(&isr, "cloudflare", "ok").await == 1.0
    })
    .await;
    assert_eq!(purges(&isr, "cloudflare", "retried").await, 2.0);
    assert_eq!(receiver.count("/client/v4/zones/Z1/purge_cache"), 3);
    within("Fastly's refusal", async || {
        purges(&isr, "fastly", "failed").await == 1.0
    })
    .await;
    assert_eq!(
        purges(&isr, "fastly", "retried").await,
        0.0,
        "a 403 is not retried"
    );
    assert_eq!(receiver.count("/service/S1/purge"), 1);
    within("the slow webhook", async || {
        purges(&isr, "webhook", "ok").await == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_on_regenerate_purges_pages_whose_content_changed() {
    let origin = Origin::start().await;
    let receiver = Origin::start().await;
    let isr = start_with_apis(&origin, &receiver).await;
    assert_eq!(isr.get("/fast/x").await.unwrap().cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(isr.get("/fast/x").await.unwrap().cache(), "STALE");
    within("the regeneration's purge", async || {
        receiver.count("/purge/www.example.com/fast/x") == 1
    })
    .await;
    // Only Fastly has purge_on_regenerate; a same-body regeneration purges nothing.
    assert!(receiver.log().iter().all(|l| !l.target.contains("zones")));
    origin.set(
        "/fast/y",
        Spec {
            body: Some("<p>always the same</p>".into()),
            ..Spec::default()
        },
    );
    isr.get("/fast/y").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    isr.get("/fast/y").await.unwrap();
    within("the second regeneration", async || {
        origin.count("/fast/y") == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count("/purge/www.example.com/fast/y"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_cdn_token_stops_the_start_with_exit_2() {
    let receiver = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("isr.toml");
    std::fs::write(&config, api_config(&receiver)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_isr"))
        .args(["serve", "--origin", "http://127.0.0.1:9", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .env_remove("CLOUDFLARE_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CLOUDFLARE_API_TOKEN"), "{err}");
}
