//! Hostile clients against the real binary: slow and oversized heads, too many
//! connections, slow requests, request smuggling, cache poisoning through unkeyed inputs,
//! odd paths, and guessing the secret.

mod common;

use std::time::Duration;

use common::{metric, raw, read_responses, send, Isr, Origin, Spec, CONFIG, SECRET};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (at most `within`); returns what came.
async fn until_closed(s: &mut TcpStream, within: Duration) -> Result<String, &'static str> {
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return Err("the connection was still open"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(String::from_utf8_lossy(&all).into_owned()),
            Ok(Ok(n)) => all.extend_from_slice(&chunk[..n]),
        }
    }
}

fn with_limits(limits: &str) -> String {
    format!("{CONFIG}\n[limits]\n{limits}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_that_never_ends_is_cut_off_after_header_read_timeout() {
    let origin = Origin::start().await;
    let isr = Isr::start_with(&origin, &with_limits("header_read_timeout = \"1s\"")).await;
    // Slowloris: a head started and never finished, one byte now and then.
    let mut s = TcpStream::connect(isr.addr).await.unwrap();
    s.write_all(b"GET /blog/a HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _ = s.write_all(b"X-A: 1\r\n").await;
    until_closed(&mut s, Duration::from_secs(10)).await.unwrap();
    // An idle keep-alive connection after a hit is closed too.
    isr.get("/blog/a").await.unwrap();
    let mut s = TcpStream::connect(isr.addr).await.unwrap();
    s.write_all(b"GET /blog/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_responses(&mut s, 1).await.len(), 1);
    until_closed(&mut s, Duration::from_secs(10)).await.unwrap();
    // Meanwhile everybody else is served.
    assert_eq!(isr.get("/blog/a").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_over_max_header_bytes_gets_431() {
    let origin = Origin::start().await;
    let isr = Isr::start_with(&origin, &with_limits("max_header_bytes = \"8KiB\"")).await;
    let big = "a".repeat(12 * 1024);
    let r = isr
        .request("GET", "/blog/a", &[("x-big", &big)], "")
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(origin.count("/blog/a"), 0);
    let small = "a".repeat(4 * 1024);
    let r = isr
        .request("GET", "/blog/a", &[("x-small", &small)], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_max_connections_wait_for_a_free_one() {
    let origin = Origin::start().await;
    let isr = Isr::start_with(&origin, &with_limits("max_connections = 2")).await;
    isr.get("/blog/a").await.unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(isr.addr).await.unwrap();
        s.write_all(b"GET /blog/a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_responses(&mut s, 1).await.len(), 1);
        held.push(s); // kept open (keep-alive)
    }
    let mut third = TcpStream::connect(isr.addr).await.unwrap();
    third
        .write_all(b"GET /blog/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "a third connection was served while two were open"
    );
    drop(held.pop());
    assert_eq!(read_responses(&mut third, 1).await.len(), 1);
}

/// An origin that takes 4 s for each of `paths`, behind an isr whose `request_timeout` is
/// 1 s (and whose origin timeout is longer, so the request limit is what ends them).
async fn slow_pages_with_a_1s_request_timeout(paths: &[&str]) -> (Origin, Isr) {
    let origin = Origin::start().await;
    for p in paths {
        origin.set(
            p,
            Spec {
                delay: Duration::from_secs(4),
                ..Spec::default()
            },
        );
    }
    let config = format!(
        "{}\n[limits]\nrequest_timeout = \"1s\"\n",
        CONFIG.replace("origin_timeout = \"2s\"", "origin_timeout = \"10s\"")
    );
    let isr = Isr::start_with(&origin, &config).await;
    (origin, isr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_slower_than_request_timeout_gets_504() {
    let (_origin, isr) = slow_pages_with_a_1s_request_timeout(&["/api/slow"]).await;
    let r = isr.get("/api/slow").await.unwrap();
    assert_eq!(r.status, 504);
    assert!(r.text().contains("request_timeout"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cacheable_miss_slower_than_request_timeout_gets_504_and_the_connection_goes_on() {
    let (_origin, isr) =
        slow_pages_with_a_1s_request_timeout(&["/blog/slow", "/blog/slow-head"]).await;
    let r = raw(
        &isr,
        "GET /blog/slow HTTP/1.1\r\nHost: x\r\n\r\nGET /blog/quick HTTP/1.1\r\nHost: x\r\n\r\n",
        2,
    )
    .await;
    assert!(r[0].0.starts_with("http/1.1 504"), "{}", r[0].0);
    assert!(r[0].1.contains("request_timeout"), "{}", r[0].1);
    assert!(r[1].0.starts_with("http/1.1 200") && r[1].1.contains("page /blog/quick v1"));
    let head = isr
        .request("HEAD", "/blog/slow-head", &[], "")
        .await
        .unwrap();
    assert_eq!(head.status, 504);
    assert!(head.text().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_body_limit_is_configurable() {
    let origin = Origin::start().await;
    let isr = Isr::start_with(&origin, &with_limits("max_api_body = 1024")).await;
    let long = json!({"tags": vec!["t".repeat(50); 40]});
    let r = isr.revalidate(long).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(isr.revalidate(json!({"tag": "posts"})).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicting_content_length_and_transfer_encoding_are_refused() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    for smuggle in [
        "POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/y HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        "GET /blog/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(isr.addr).await.unwrap();
        s.write_all(smuggle.as_bytes()).await.unwrap();
        let answer = until_closed(&mut s, Duration::from_secs(5)).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{smuggle:?} got {answer:?}");
        assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    }
    // After a miss, the connection is still the lane's: refused the same way.
    let mut s = TcpStream::connect(isr.addr).await.unwrap();
    s.write_all(
        b"GET /blog/m HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /api/y HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = until_closed(&mut s, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    assert_eq!(origin.count("/api/x") + origin.count("/api/y"), 0);
    // On a connection that hyper took over (its first request had a body), hyper serves
    // such a request by Transfer-Encoding alone and closes the connection (RFC 9112 6.1):
    // what was smuggled behind it is never served, and the origin gets a consistent
    // request.
    let mut s = TcpStream::connect(isr.addr).await.unwrap();
    s.write_all(
        b"POST /api/z HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi\
          POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /api/y HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = until_closed(&mut s, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    assert_eq!(origin.count("/api/y"), 0);
    let (_, headers, body) = origin.last("/api/x");
    assert!(
        body.is_empty() && !headers.contains_key("content-length"),
        "{headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unkeyed_headers_never_change_what_others_get() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    let poisons: [(&str, &str); 10] = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-scheme", "nothttps"),
        ("x-forwarded-proto", "nothttps"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-http-method-override", "DELETE"),
        ("forwarded", "host=evil.example;proto=nothttps"),
        ("host", "evil.example"),
        ("accept-language", "xx"),
        ("user-agent", "evil-agent"),
    ];
    for (i, (name, value)) in poisons.iter().enumerate() {
        let path = format!("/blog/p{i}");
        let first = isr
            .request("GET", &path, &[(name, value)], "")
            .await
            .unwrap();
        assert_eq!(first.cache(), "MISS", "{name}");
        let (target, headers, body) = origin.last(&path);
        assert_eq!(target, path, "{name}");
        assert!(body.is_empty());
        let seen: Vec<String> = headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("")))
            .collect();
        assert!(
            !seen.iter().any(|h| h.contains(value)),
            "{name} reached the origin: {seen:?}"
        );
        let next = isr.get(&path).await.unwrap();
        assert_eq!(next.cache(), "HIT", "{name}");
        assert_eq!(next.body, first.body, "{name}");
    }
    // A fat GET (a body on a GET) is not forwarded into a shared page either.
    let r = isr
        .request("GET", "/blog/fat", &[("content-length", "5")], "hello")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(origin.last("/blog/fat").2.is_empty());
    assert_eq!(origin.count("/blog/fat"), 1);
    // Duplicate Host headers are refused.
    let dup = raw(
        &isr,
        "GET /blog/dup HTTP/1.1\r\nHost: a\r\nHost: evil.example\r\n\r\n",
        1,
    )
    .await;
    assert!(
        dup[0].0.starts_with("http/1.1 400") || dup[0].0.starts_with("http/1.1 200"),
        "{dup:?}"
    );
    if dup[0].0.starts_with("http/1.1 200") {
        let (_, headers, _) = origin.last("/blog/dup");
        assert!(!format!("{headers:?}").contains("evil.example"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_paths_map_to_one_key_and_never_leave_the_site() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    // Spellings of one page: the first stores it, the others are hits on the same key.
    isr.get("/blog/b").await.unwrap();
    for alias in [
        "/blog/a/../b",
        "/blog/%2e%2e/blog/b",
        "/blog/./b",
        "/x/../../blog/b",
        "/blog/%62",
    ] {
        let r = isr.get(alias).await.unwrap();
        assert_eq!(r.cache(), "HIT", "{alias}");
        assert!(r.text().contains("page /blog/b v1"), "{alias}");
    }
    assert_eq!(origin.count("/blog/b"), 1);
    // Raw targets hyper's client would not send: absolute-form, `//`, NUL, invalid UTF-8.
    let answers = raw(
        &isr,
        "GET http://evil.example/blog/abs HTTP/1.1\r\nHost: evil.example\r\n\r\n\
         GET //evil.example/x HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/%00 HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
        4,
    )
    .await;
    for (head, _) in &answers {
        assert!(!head.starts_with("http/1.1 5"), "{answers:?}");
    }
    // Every request went to our origin, for the path as keyed.
    let targets: Vec<String> = origin.log().iter().map(|l| l.target.clone()).collect();
    for t in ["/blog/abs", "//evil.example/x", "/blog/%00", "/blog/%FF%FE"] {
        assert!(targets.contains(&t.to_string()), "{t} not in {targets:?}");
    }
    // An overlong path is answered, not a crash.
    let long = format!("/blog/{}", "a".repeat(8000));
    let r = isr.get(&long).await.unwrap();
    assert!(
        r.status == 200 || r.status == 414 || r.status == 431,
        "{}",
        r.status
    );
    assert_eq!(isr.get("/_isr/health").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn guessing_the_secret_is_limited_per_address() {
    let origin = Origin::start().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let isr = Isr::start_opts(
        &origin,
        &format!(
            "admin_listen = \"127.0.0.1:{}\"\n{CONFIG}",
            common::free_port()
        ),
        &[("ISR_LOG", "debug"), ("ISR_DEBUG_CACHE", "1")],
        Some(log.path()),
    )
    .await;
    let guess = "wrong-guess-4711";
    let api = |auth: String| {
        let isr = &isr;
        async move {
            isr.request(
                "POST",
                "/_isr/revalidate",
                &[("authorization", &auth)],
                r#"{"tag": "posts"}"#,
            )
            .await
            .unwrap()
        }
    };
    // Ten wrong tries in the various places a secret can be.
    for i in 0..10 {
        let r = match i % 4 {
            0 => api(format!("Bearer {guess}")).await,
            1 => isr
                .request(
                    "POST",
                    &format!("/_isr/revalidate?secret={guess}"),
                    &[],
                    "{}",
                )
                .await
                .unwrap(),
            2 => isr
                .request(
                    "POST",
                    "/_isr/revalidate",
                    &[],
                    &json!({"secret": guess, "tag": "t"}).to_string(),
                )
                .await
                .unwrap(),
            _ => isr
                .request(
                    "GET",
                    "/_isr/metrics",
                    &[("authorization", &format!("Bearer {guess}"))],
                    "",
                )
                .await
                .unwrap(),
        };
        assert_eq!(r.status, 401, "try {i}");
    }
    // The eleventh is refused, even with the right secret, on the API and the admin routes.
    let r = api(format!("Bearer {SECRET}")).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("try again in"));
    let m = isr
        .request(
            "GET",
            "/_isr/metrics",
            &[("authorization", &format!("Bearer {SECRET}"))],
            "",
        )
        .await
        .unwrap();
    assert_eq!(m.status, 429);
    // x-prerender-revalidate is then ignored: an ordinary request.
    isr.get("/blog/r").await.unwrap();
    let r = isr
        .request("GET", "/blog/r", &[("x-prerender-revalidate", SECRET)], "")
        .await
        .unwrap();
    assert_eq!(r.cache(), "HIT");
    // Visitors are served as ever.
    assert_eq!(isr.get("/blog/r").await.unwrap().status, 200);

    // Secrets, right or wrong, never show in logs or metrics.
    let metrics = send(
        "GET",
        &format!("http://{}/_isr/metrics", admin_addr(&isr)),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(metrics.status, 200, "the private listener is not limited");
    assert!(metric(&metrics.text(), "isr_requests_total{state=\"HIT\"}") >= 1.0);
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(logged.contains("request"), "debug logging was on: {logged}");
    for secret in [guess, SECRET, "old-secret"] {
        let lines: Vec<&str> = logged.lines().filter(|l| l.contains(secret)).collect();
        assert!(lines.is_empty(), "{secret} appears in the log: {lines:#?}");
        assert!(
            !metrics.text().contains(secret),
            "{secret} appears in the metrics"
        );
    }
}

/// The `admin_listen` address from the config file of `isr`.
fn admin_addr(isr: &Isr) -> String {
    let text = std::fs::read_to_string(&isr.config).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("admin_listen = "))
        .unwrap()
        .trim_matches('"')
        .to_string()
}
