//! End-to-end tests: the real `isr` binary in front of a real test origin on loopback.
//! Grouped by theme: serving, bypass, freshness, failures, stampedes, the API, restarts, CLI.

mod common;

use std::time::Duration;

use common::{eventually, raw, read_responses, send, Isr, Origin, Spec, SECRET};
use serde_json::json;

fn spec_headers(headers: &[(&str, &str)]) -> Spec {
    Spec {
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

// ---- serving ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn miss_then_hit_with_age_etag_cache_control_and_304() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    let a = isr.get("/blog/hello").await.unwrap();
    assert_eq!((a.status, a.cache()), (200, "MISS"));
    assert!(a.text().contains("page /blog/hello v1"));
    let b = isr.get("/blog/hello").await.unwrap();
    assert_eq!(b.cache(), "HIT");
    assert_eq!(b.body, a.body);
    assert_eq!(origin.count("/blog/hello"), 1);
    assert!(b.header("age").parse::<u64>().is_ok());
    assert!(
        b.header("cache-control").starts_with("public, s-maxage=35"),
        "{}",
        b.header("cache-control")
    );
    assert!(b
        .header("cache-control")
        .contains("stale-while-revalidate="));
    let etag = b.header("etag").to_string();
    assert!(etag.starts_with('"'));
    let c = isr
        .request("GET", "/blog/hello", &[("if-none-match", &etag)], "")
        .await
        .unwrap();
    assert_eq!(
        (c.status, c.body.len(), c.header("etag")),
        (304, 0, etag.as_str())
    );
    let head = isr.request("HEAD", "/blog/hello", &[], "").await.unwrap();
    assert_eq!(
        (head.status, head.cache(), head.body.len()),
        (200, "HIT", 0)
    );
    assert_eq!(head.header("content-length"), a.body.len().to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn brotli_and_gzip_variants_follow_accept_encoding() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    let plain = isr.get("/page").await.unwrap();
    let (br, gz) = compressed_variants_of(&isr, "/page", &plain).await;
    assert_eq!(plain.header("content-encoding"), "");
    assert_eq!(br.header("vary"), "Accept-Encoding");
    assert!(br.body.len() < plain.body.len() && gz.body.len() < plain.body.len());
    let etags = [plain.header("etag"), br.header("etag"), gz.header("etag")];
    assert!(etags[0] != etags[1] && etags[1] != etags[2] && etags[0] != etags[2]);
    assert_eq!(
        origin.count("/page"),
        1,
        "variants are made once, from one origin response"
    );
}

/// The Brotli and gzip answers for `path`, each checked to decode to `plain`'s body.
async fn compressed_variants_of(
    isr: &Isr,
    path: &str,
    plain: &common::Reply,
) -> (common::Reply, common::Reply) {
    let br = isr
        .request("GET", path, &[("accept-encoding", "gzip, br")], "")
        .await
        .unwrap();
    let gz = isr
        .request("GET", path, &[("accept-encoding", "gzip")], "")
        .await
        .unwrap();
    assert_eq!(br.header("content-encoding"), "br");
    assert_eq!(gz.header("content-encoding"), "gzip");
    let mut out = Vec::new();
    brotli::BrotliDecompress(&mut &br.body[..], &mut out).unwrap();
    assert_eq!(out, plain.body);
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz.body[..]), &mut out).unwrap();
    assert_eq!(out, plain.body);
    (br, gz)
}

#[tokio::test(flavor = "multi_thread")]
async fn query_is_normalised_into_one_key_and_sent_sorted() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    assert_eq!(isr.get("/q?b=2&a=1").await.unwrap().cache(), "MISS");
    assert_eq!(
        isr.get("/q?a=1&b=2&utm_source=news").await.unwrap().cache(),
        "HIT"
    );
    assert_eq!(isr.get("/q?a=1&b=2&fbclid=x").await.unwrap().cache(), "HIT");
    assert_eq!(origin.count("/q"), 1);
    assert_eq!(origin.last("/q").0, "/q?a=1&b=2");
    assert_eq!(isr.get("/q?a=1&b=3").await.unwrap().cache(), "MISS");
    // Dot segments and escaped unreserved characters name the same page.
    assert_eq!(isr.get("/x/../%62log/hi").await.unwrap().cache(), "MISS");
    assert_eq!(isr.get("/blog/hi").await.unwrap().cache(), "HIT");
    // The trailing slash is significant.
    assert_eq!(isr.get("/blog/hi/").await.unwrap().cache(), "MISS");
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_requests_never_carry_visitor_headers() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    let r = isr
        .request(
            "GET",
            "/shared",
            &[
                ("cookie", "session=alice"),
                ("x-visitor", "alice"),
                ("user-agent", "curl/8"),
                ("accept-encoding", "br"),
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.cache(), "MISS");
    let (_, h, _) = origin.last("/shared");
    assert!(h.get("cookie").is_none() && h.get("x-visitor").is_none());
    assert!(h["user-agent"].to_str().unwrap().starts_with("isr/"));
    assert_eq!(h["accept-encoding"], "identity");
    assert_eq!(h["host"], origin.addr.to_string().as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn control_headers_are_not_sent_and_origin_headers_are_kept() {
    let origin = Origin::start().await;
    origin.set(
        "/ctl",
        spec_headers(&[
            ("x-isr-tags", "t1"),
            ("x-isr-revalidate", "100"),
            ("x-custom", "kept"),
        ]),
    );
    let isr = Isr::start(&origin).await;
    for _ in 0..2 {
        let r = isr.get("/ctl").await.unwrap();
        assert_eq!(r.header("x-isr-tags"), "");
        assert_eq!(r.header("x-isr-revalidate"), "");
        assert_eq!(r.header("x-custom"), "kept");
        assert!(r.header("cache-control").starts_with("public, s-maxage="));
    }
}

// ---- bypass ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn bypass_rules_proxy_with_visitor_headers_and_never_store() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    let r = isr
        .request("GET", "/private", &[("authorization", "Bearer u1")], "")
        .await
        .unwrap();
    assert_eq!(r.cache(), "BYPASS");
    assert_eq!(origin.last("/private").1["authorization"], "Bearer u1");
    let r = isr
        .request("GET", "/private", &[("cookie", "a=1; __isr_preview=1")], "")
        .await
        .unwrap();
    assert_eq!(r.cache(), "BYPASS");
    assert_eq!(origin.last("/private").1["cookie"], "a=1; __isr_preview=1");
    assert!(origin.last("/private").1["x-forwarded-for"]
        .to_str()
        .unwrap()
        .contains("127.0.0.1"));
    for _ in 0..2 {
        assert_eq!(isr.get("/api/items").await.unwrap().cache(), "BYPASS");
    }
    assert_eq!(origin.count("/api/items"), 2);
    let post = isr
        .request("POST", "/form", &[("content-type", "text/plain")], "hello")
        .await
        .unwrap();
    assert_eq!(post.cache(), "BYPASS");
    assert_eq!(&origin.last("/form").2[..], b"hello");
    assert_eq!(
        isr.get("/form").await.unwrap().cache(),
        "MISS",
        "a POST never stores"
    );
    // The bypassed requests stored nothing: the first plain GET is a miss.
    assert_eq!(isr.get("/private").await.unwrap().cache(), "MISS");
}

#[tokio::test(flavor = "multi_thread")]
async fn uncacheable_responses_go_only_to_their_visitor_and_are_remembered() {
    let origin = Origin::start().await;
    origin.set("/cookie", spec_headers(&[("set-cookie", "sid=secret")]));
    origin.set("/nostore", spec_headers(&[("cache-control", "private")]));
    let isr = Isr::start(&origin).await;
    for path in ["/cookie", "/nostore"] {
        let a = isr.get(path).await.unwrap();
        assert_eq!(a.cache(), "BYPASS", "{path}");
        let b = isr.get(path).await.unwrap();
        assert_eq!(b.cache(), "BYPASS", "{path}");
        assert_eq!(
            origin.count(path),
            2,
            "{path}: each visitor fetches its own"
        );
    }
    assert_eq!(
        isr.get("/cookie").await.unwrap().header("set-cookie"),
        "sid=secret"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_max_body_are_passed_through_not_stored() {
    let origin = Origin::start().await;
    origin.set(
        "/big",
        Spec {
            body: Some("x".repeat(100 * 1024)),
            ..Default::default()
        },
    );
    let isr = Isr::start(&origin).await;
    let a = isr.get("/big").await.unwrap();
    assert_eq!(
        (a.status, a.cache(), a.body.len()),
        (200, "BYPASS", 100 * 1024)
    );
    let b = isr.get("/big").await.unwrap();
    assert_eq!((b.cache(), b.body.len()), ("BYPASS", 100 * 1024));
    assert_eq!(origin.count("/big"), 2);
}

// ---- what is stored --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn stored_and_unstored_statuses() {
    let origin = Origin::start().await;
    origin.set(
        "/gone",
        Spec {
            status: Some(404),
            ..Default::default()
        },
    );
    origin.set(
        "/moved",
        Spec {
            status: Some(301),
            headers: vec![("location".into(), "/x".into())],
            ..Default::default()
        },
    );
    origin.set(
        "/broken",
        Spec {
            status: Some(500),
            body: Some("oops".into()),
            ..Default::default()
        },
    );
    origin.set(
        "/limited",
        Spec {
            status: Some(429),
            ..Default::default()
        },
    );
    let isr = Isr::start(&origin).await;
    for (path, status) in [("/gone", 404), ("/moved", 301)] {
        assert_eq!(
            (
                isr.get(path).await.unwrap().status,
                isr.get(path).await.unwrap().cache()
            ),
            (status, "HIT")
        );
        assert_eq!(origin.count(path), 1);
    }
    assert_eq!(isr.get("/moved").await.unwrap().header("location"), "/x");
    for (path, status) in [("/broken", 500), ("/limited", 429)] {
        let r = isr.get(path).await.unwrap();
        assert_eq!((r.status, r.cache()), (status, "MISS"));
        isr.get(path).await.unwrap();
        assert_eq!(origin.count(path), 2, "{path} is never stored");
    }
    assert_eq!(isr.get("/broken").await.unwrap().text(), "oops");
}

// ---- freshness -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn stale_page_is_served_at_once_and_regenerated_once_in_background() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    assert_eq!(isr.get("/fast/a").await.unwrap().cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.set(
        "/fast/a",
        Spec {
            delay: Duration::from_millis(300),
            ..Default::default()
        },
    );
    let stale = isr.get("/fast/a").await.unwrap();
    assert_eq!(stale.cache(), "STALE");
    assert!(stale.text().contains("v1"));
    assert_eq!(
        stale.header("cache-control").split(", ").nth(1),
        Some("s-maxage=0")
    );
    eventually("the regeneration lands", async || {
        let r = isr.get("/fast/a").await.unwrap();
        r.cache() == "HIT" && r.text().contains("v2")
    })
    .await;
    assert_eq!(origin.count("/fast/a"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_headers_set_freshness_and_tags() {
    let origin = Origin::start().await;
    origin.set(
        "/h1",
        spec_headers(&[("x-isr-revalidate", "1"), ("x-isr-tags", "alpha, beta")]),
    );
    origin.set(
        "/h2",
        spec_headers(&[(
            "cache-control",
            "public, s-maxage=1, stale-while-revalidate=100",
        )]),
    );
    origin.set(
        "/h3",
        spec_headers(&[
            ("x-isr-revalidate", "soon"),
            ("surrogate-key", "gamma delta"),
        ]),
    );
    let isr = Isr::start(&origin).await;
    for p in ["/h1", "/h2", "/h3"] {
        isr.get(p).await.unwrap();
    }
    assert!(isr
        .get("/h2")
        .await
        .unwrap()
        .header("cache-control")
        .ends_with("stale-while-revalidate=100"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(isr.get("/h1").await.unwrap().cache(), "STALE");
    assert_eq!(isr.get("/h2").await.unwrap().cache(), "STALE");
    assert_eq!(
        isr.get("/h3").await.unwrap().cache(),
        "HIT",
        "an unparseable x-isr-revalidate is ignored"
    );
    assert_eq!(isr.revalidate(json!({"tag": "delta"})).await.status, 200);
    assert_eq!(isr.get("/h3").await.unwrap().cache(), "STALE");
}

// ---- failures --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn failed_regeneration_keeps_the_last_good_page_and_backs_off() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    let good = isr.get("/fast/f").await.unwrap();
    origin.set(
        "/fast/f",
        Spec {
            status: Some(503),
            body: Some("down".into()),
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..20 {
        let r = isr.get("/fast/f").await.unwrap();
        assert_eq!((r.status, r.cache()), (200, "STALE"));
        assert_eq!(r.body, good.body);
    }
    // One failed try, then a 3 s backoff: twenty visits in that window make no new try.
    eventually("the failed try", async || origin.count("/fast/f") == 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(origin.count("/fast/f"), 2);
    // A stored status (even 404) from a regeneration replaces the page.
    origin.set(
        "/fast/f",
        Spec {
            status: Some(404),
            body: Some("deleted".into()),
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(3000)).await;
    isr.get("/fast/f").await.unwrap();
    eventually("the 404 replaces the page", async || {
        isr.get("/fast/f").await.unwrap().status == 404
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn miss_with_origin_down_is_502_and_timeout_is_504() {
    let origin = Origin::start().await;
    origin.set(
        "/slow",
        Spec {
            delay: Duration::from_secs(4),
            ..Default::default()
        },
    );
    let isr = Isr::start(&origin).await;
    let r = isr.get("/slow").await.unwrap();
    assert_eq!((r.status, r.cache()), (504, "MISS"));
    let dead = Origin {
        addr: "127.0.0.1:9".parse().unwrap(),
        ..origin.clone()
    };
    let isr2 = Isr::start(&dead).await;
    let r = isr2.get("/anything").await.unwrap();
    assert_eq!((r.status, r.cache()), (502, "MISS"));
    assert!(r.text().contains("could not be reached"), "{}", r.text());
    assert_eq!(
        isr2.get("/anything").await.unwrap().status,
        502,
        "errors are not stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_copy_is_served_stale_when_the_origin_fails() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    let good = isr.get("/blog/e").await.unwrap();
    assert_eq!(
        isr.revalidate(json!({"path": "/blog/e", "mode": "expire"}))
            .await
            .status,
        200
    );
    origin.set(
        "/blog/e",
        Spec {
            status: Some(500),
            ..Default::default()
        },
    );
    let r = isr.get("/blog/e").await.unwrap();
    assert_eq!((r.status, r.cache()), (200, "STALE"));
    assert_eq!(r.body, good.body);
}

// ---- stampedes -------------------------------------------------------------------

async fn stampede(isr: &Isr, path: &str, n: usize) -> Vec<common::Reply> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = isr.url(path);
        tasks.push(tokio::spawn(async move {
            send("GET", &url, &[], "").await.unwrap()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_request_stampede_on_a_missing_page_makes_one_origin_request() {
    let origin = Origin::start().await;
    origin.set(
        "/blog/hot",
        Spec {
            delay: Duration::from_millis(300),
            ..Default::default()
        },
    );
    let isr = Isr::start(&origin).await;
    let replies = stampede(&isr, "/blog/hot", 100).await;
    assert_eq!(origin.count("/blog/hot"), 1);
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.body == replies[0].body));
    assert!(replies
        .iter()
        .all(|r| r.cache() == "MISS" || r.cache() == "HIT"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_request_stampede_on_a_stale_page_makes_one_origin_request_and_nobody_waits() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    let first = isr.get("/fast/s").await.unwrap();
    origin.set(
        "/fast/s",
        Spec {
            delay: Duration::from_millis(500),
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let replies = stampede(&isr, "/fast/s", 100).await;
    assert!(
        replies
            .iter()
            .all(|r| r.cache() == "STALE" && r.body == first.body),
        "every visitor got the cached page"
    );
    eventually("one regeneration", async || origin.count("/fast/s") == 2).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(origin.count("/fast/s"), 2);
}

// ---- revalidation API ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn revalidate_by_tag_path_and_layout() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    for p in [
        "/blog/a",
        "/blog/b",
        "/blog/a?page=2",
        "/docs",
        "/docs/x/y",
        "/docsite",
    ] {
        assert_eq!(isr.get(p).await.unwrap().cache(), "MISS", "{p}");
    }
    // Tag: every page carrying it.
    let r = isr.revalidate(json!({"tag": "post-a"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["revalidated"], true);
    assert!(r.json()["now"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(isr.get("/blog/a").await.unwrap().cache(), "STALE");
    assert_eq!(isr.get("/blog/b").await.unwrap().cache(), "HIT");
    // Path: the page and all its query variants.
    eventually("regenerated", async || {
        isr.get("/blog/a").await.unwrap().cache() == "HIT"
    })
    .await;
    isr.revalidate(json!({"path": "/blog/a"})).await;
    assert_eq!(isr.get("/blog/a?page=2").await.unwrap().cache(), "STALE");
    // Layout: the subtree, segment-wise.
    isr.revalidate(json!({"path": "/docs", "type": "layout"}))
        .await;
    assert_eq!(isr.get("/docs").await.unwrap().cache(), "STALE");
    assert_eq!(isr.get("/docs/x/y").await.unwrap().cache(), "STALE");
    assert_eq!(isr.get("/docsite").await.unwrap().cache(), "HIT");
}

#[tokio::test(flavor = "multi_thread")]
async fn expire_mode_gives_read_your_writes() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    assert!(isr.get("/blog/w").await.unwrap().text().contains("v1"));
    isr.revalidate(json!({"tags": ["post-w"], "mode": "expire"}))
        .await;
    let r = isr.get("/blog/w").await.unwrap();
    assert_eq!(r.cache(), "MISS");
    assert!(r.text().contains("v2"));
    assert_eq!(isr.get("/blog/w").await.unwrap().cache(), "HIT");
}

#[tokio::test(flavor = "multi_thread")]
async fn eager_revalidation_regenerates_without_a_visitor() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    for p in ["/blog/x", "/blog/y"] {
        isr.get(p).await.unwrap();
    }
    isr.revalidate(json!({"tag": "posts", "eager": true})).await;
    eventually("both regenerated", async || {
        origin.count("/blog/x") == 2 && origin.count("/blog/y") == 2
    })
    .await;
    // The origin has answered; the new page is served once it is stored (no visitor
    // ever triggered a fetch: the counts stay at 2).
    eventually("the regenerated page is served", async || {
        let r = isr.get("/blog/x").await.unwrap();
        assert_ne!(r.cache(), "MISS");
        r.cache() == "HIT" && r.text().contains("v2")
    })
    .await;
    // Its Brotli and gzip variants, made on the background threads, are of the new page.
    let plain = isr.get("/blog/x").await.unwrap();
    compressed_variants_of(&isr, "/blog/x", &plain).await;
    assert_eq!((origin.count("/blog/x"), origin.count("/blog/y")), (2, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn api_errors_and_ways_to_pass_the_secret() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    let post = async |target: &str, bearer: Option<&str>, body: &str| {
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        isr.request("POST", target, &headers, body).await.unwrap()
    };
    let api = "/_isr/revalidate";
    let tag = r#"{"tag":"a"}"#;
    assert_eq!(post(api, None, tag).await.status, 401);
    assert_eq!(post(api, Some("nope"), tag).await.status, 401);
    let r = post(api, None, "not json").await;
    assert_eq!(r.status, 401, "the secret is checked before the body");
    assert!(r.json()["error"].is_string());
    assert_eq!(post(api, Some(SECRET), tag).await.status, 200);
    assert_eq!(
        post(api, Some("old-secret"), tag).await.status,
        200,
        "rotation: every listed secret works"
    );
    assert_eq!(
        post(&format!("{api}?secret={SECRET}"), None, tag)
            .await
            .status,
        200
    );
    assert_eq!(
        post(api, None, &format!(r#"{{"tag":"a","secret":"{SECRET}"}}"#))
            .await
            .status,
        200
    );
    for bad in [
        r#"{"tag":"a","type":"tree"}"#,
        r#"{"tag":"a","mode":"later"}"#,
        r#"{"path":"blog"}"#,
        r#"{"path":"/a?b=1"}"#,
        r#"{}"#,
        "{oops",
    ] {
        let r = post(api, Some(SECRET), bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(!r.json()["error"].as_str().unwrap().is_empty());
    }
    let big = format!(r#"{{"tag":"{}"}}"#, "a".repeat(70 * 1024));
    assert_eq!(post(api, Some(SECRET), &big).await.status, 413);
    assert_eq!(isr.get("/_isr/health").await.unwrap().text(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn x_prerender_revalidate_regenerates_synchronously() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    isr.get("/blog/p").await.unwrap();
    let r = isr
        .request("GET", "/blog/p", &[("x-prerender-revalidate", SECRET)], "")
        .await
        .unwrap();
    assert_eq!(r.cache(), "REVALIDATED");
    assert!(r.text().contains("v2"));
    assert_eq!(isr.get("/blog/p").await.unwrap().cache(), "HIT");
    let wrong = isr
        .request("GET", "/blog/p", &[("x-prerender-revalidate", "guess")], "")
        .await
        .unwrap();
    assert_eq!(wrong.cache(), "HIT");
    assert_eq!(origin.count("/blog/p"), 2);
}

// ---- durability ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_then_restart_loses_no_stored_page_and_keeps_the_tag_clock() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    let pages: Vec<String> = (0..50).map(|i| format!("/blog/k{i}")).collect();
    for p in &pages {
        assert_eq!(isr.get(p).await.unwrap().cache(), "MISS");
    }
    isr.get("/fast/r").await.unwrap();
    isr.revalidate(json!({"tag": "post-k0"})).await;
    let (data, config, dir) = isr.kill();
    let isr = Isr::spawn(&origin, &data, &config).await;
    assert_eq!(
        isr.get("/blog/k0").await.unwrap().cache(),
        "STALE",
        "the tag clock survived"
    );
    for p in &pages[1..] {
        assert_eq!(isr.get(p).await.unwrap().cache(), "HIT", "{p}");
        assert_eq!(origin.count(p), 1);
    }
    // Each entry kept its own revalidate window (1 s for /fast/).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(isr.get("/fast/r").await.unwrap().cache(), "STALE");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_pages_read_back_from_the_store_are_hits_on_one_connection() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    for p in ["/blog/r1", "/blog/r2"] {
        isr.get(p).await.unwrap();
    }
    let (data, config, dir) = isr.kill();
    let isr = Isr::spawn(&origin, &data, &config).await;
    // Nothing is in the memory tier yet: each page is read back from the store while the
    // rest of the pipeline waits, then a miss, then a hit again on the same connection.
    let r = raw(
        &isr,
        "GET /blog/r1 HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/r2 HTTP/1.1\r\nHost: x\r\nAccept-Encoding: br\r\n\r\n\
         GET /blog/r2 HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/r3 HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/r1 HTTP/1.1\r\nHost: x\r\n\r\n",
        5,
    )
    .await;
    let cache: Vec<&str> = r
        .iter()
        .map(|(h, _)| {
            h.split("x-isr-cache: ")
                .nth(1)
                .unwrap()
                .lines()
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(cache, ["hit", "hit", "hit", "miss", "hit"]);
    assert!(r[0].1.contains("page /blog/r1 v1"));
    assert!(r[1].0.contains("content-encoding: br"));
    assert!(r[2].1.contains("page /blog/r2 v1"));
    assert!(r[3].1.contains("page /blog/r3 v1"));
    assert!(r[4].1.contains("page /blog/r1 v1"));
    assert_eq!((origin.count("/blog/r1"), origin.count("/blog/r2")), (1, 1));
    drop(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_requests_in_flight_then_exits_0() {
    let origin = Origin::start().await;
    origin.set(
        "/blog/slow",
        Spec {
            delay: Duration::from_millis(800),
            ..Default::default()
        },
    );
    let mut isr = Isr::start(&origin).await;
    let url = isr.url("/blog/slow");
    let in_flight = tokio::spawn(async move { send("GET", &url, &[], "").await });
    eventually("the request reached the origin", async || {
        origin.count("/blog/slow") == 1
    })
    .await;
    let code = tokio::task::block_in_place(|| isr.terminate());
    assert_eq!(code, Some(0));
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!((r.status, r.cache()), (200, "MISS"));
    let restarted = Isr::spawn(&origin, &isr.data_dir, &isr.config).await;
    assert_eq!(restarted.get("/blog/slow").await.unwrap().cache(), "HIT");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_writes_never_leaves_a_torn_entry() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = isr.url(&format!("/blog/t{i}"));
        tasks.push(tokio::spawn(
            async move { send("GET", &url, &[], "").await },
        ));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (data, config, dir) = isr.kill();
    for t in tasks {
        let _ = t.await;
    }
    let isr = Isr::spawn(&origin, &data, &config).await;
    for i in 0..200 {
        let p = format!("/blog/t{i}");
        let before = origin.count(&p);
        let r = isr.get(&p).await.unwrap();
        assert_eq!(r.status, 200);
        assert!(
            r.text().contains(&format!("page {p} v")),
            "{p}: {}",
            r.text()
        );
        if r.cache() == "HIT" {
            assert_eq!(origin.count(&p), before, "a HIT never contacts the origin");
        }
    }
    drop(dir);
}

// ---- command line ----------------------------------------------------------------

#[test]
fn config_errors_name_file_line_and_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("isr.toml");
    std::fs::write(
        &file,
        "origin = \"http://127.0.0.1:3000\"\n[cache]\nrevalidate = \"soon\"\n",
    )
    .unwrap();
    for cmd in ["check", "serve"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_isr"))
            .args([cmd, "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("isr.toml:3: key `revalidate`"), "{cmd}: {err}");
    }
    std::fs::write(&file, "origin = \"http://127.0.0.1:3000\"\n[[route]]\nmatch = \"/blog/{slug}\"\ntags = [\"post-{slug}\"]\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_isr"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("/blog/{slug}"));
    let v = std::process::Command::new(env!("CARGO_BIN_EXE_isr"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("isr "));
}

#[tokio::test(flavor = "multi_thread")]
async fn revalidate_command_calls_the_api() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    isr.get("/blog/c").await.unwrap();
    let run = |secret: &str, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_isr"))
            .arg("revalidate")
            .args(["--server", &format!("http://{}", isr.addr)])
            .args(args)
            .env("ISR_SECRET", secret)
            .output()
            .unwrap()
    };
    let ok = run(SECRET, &["--tag", "post-c"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(isr.get("/blog/c").await.unwrap().cache(), "STALE");
    let bad = run("wrong", &["--path", "/blog/c"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("401"));
    let bad = run(SECRET, &["--path", "blog"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("must start with"));
}

#[tokio::test(flavor = "multi_thread")]
async fn origin_host_public_url_and_api_alias_from_the_config() {
    let origin = Origin::start().await;
    let config = format!(
        "origin_host = \"www.example.com\"\npublic_url = \"https://www.example.com\"\n[api]\npath = \"/api/revalidate\"\n{}",
        common::CONFIG
    );
    let isr = Isr::start_with(&origin, &config).await;
    isr.get("/blog/h").await.unwrap();
    let (_, h, _) = origin.last("/blog/h");
    assert_eq!(h["host"], "www.example.com");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "www.example.com");
    let auth = format!("Bearer {SECRET}");
    let r = isr
        .request(
            "POST",
            "/api/revalidate",
            &[("authorization", &auth)],
            r#"{"tag":"post-h"}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(isr.get("/blog/h").await.unwrap().cache(), "STALE");
    // Bypassed requests carry the visitor's headers but still the configured Host.
    isr.request("GET", "/api/x", &[("x-visitor", "v")], "")
        .await
        .unwrap();
    let (_, h, _) = origin.last("/api/x");
    assert_eq!(
        (
            h["host"].to_str().unwrap(),
            h["x-visitor"].to_str().unwrap()
        ),
        ("www.example.com", "v")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_story_edit_in_the_cms_is_live_on_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_isr"))
        .args([
            "demo",
            "--posts",
            "50",
            "--render-ms",
            "5",
            "--prebuild",
            "10",
            "--listen",
            &listen,
            "--data-dir",
        ])
        .arg(dir.path())
        .env("ISR_SECRET", SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://{listen}");
    eventually("the demo starts", async || {
        send("GET", &format!("{base}/_isr/health"), &[], "")
            .await
            .is_ok()
    })
    .await;
    let get = async |path: &str| {
        send("GET", &format!("{base}{path}"), &[], "")
            .await
            .unwrap()
    };
    eventually("the 10 newest posts are prebuilt", async || {
        get("/_isr/health?ready").await.status == 200
    })
    .await;
    assert_eq!(get("/blog/50").await.cache(), "HIT");
    assert_eq!(get("/blog/41").await.cache(), "HIT");
    let a = get("/blog/7").await;
    assert_eq!((a.status, a.cache()), (200, "MISS"));
    assert_eq!(get("/blog/7").await.cache(), "HIT");
    assert_eq!(get("/blog/999").await.status, 404);
    let cms = get("/cms?post=7").await;
    assert_eq!(cms.cache(), "BYPASS");
    assert!(cms.text().contains("<form"));
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let saved = send(
        "POST",
        &format!("{base}/cms"),
        &form,
        "post=7&title=Fresh+title&body=New+words",
    )
    .await
    .unwrap();
    assert!(saved.text().contains("revalidated"), "{}", saved.text());
    let b = get("/blog/7").await;
    assert_eq!(b.cache(), "MISS");
    assert!(b.text().contains("Fresh title") && b.text().contains("New words"));
    assert_eq!(get("/blog/8").await.cache(), "MISS");
    assert_eq!(get("/blog/7").await.cache(), "HIT");
    let index = get("/").await;
    assert!(index.text().contains("Post 50"));
    let _ = child.kill();
    let _ = child.wait();
}

/// An origin that answers every connection with bytes that are not HTTP.
async fn garbage_origin() -> Origin {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"SSH-2.0-not-http\r\n\r\n").await;
        }
    });
    let real = Origin::start().await;
    Origin { addr, ..real }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_http_from_the_origin_is_502_on_a_miss() {
    let origin = garbage_origin().await;
    let isr = Isr::start(&origin).await;
    let r = isr.get("/x").await.unwrap();
    assert_eq!((r.status, r.cache()), (502, "MISS"));
    assert!(r.text().contains("invalid response"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_body_never_replaces_a_good_page() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Serves one good page, then bodies cut short (Content-Length larger than sent).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = n.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(len) = s.read(&mut buf).await {
                    if len == 0 {
                        return;
                    }
                    let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let res: &[u8] = if i == 0 {
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4\r\nx-isr-revalidate: 1\r\n\r\ngood"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\ncut"
                    };
                    let _ = s.write_all(res).await;
                    if i > 0 {
                        return; // close mid-body
                    }
                }
            });
        }
    });
    let real = Origin::start().await;
    let origin = Origin { addr, ..real };
    let isr = Isr::start(&origin).await;
    assert_eq!(isr.get("/t").await.unwrap().text(), "good");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        let r = isr.get("/t").await.unwrap();
        assert_eq!(
            (r.status, r.cache(), r.text().as_str()),
            (200, "STALE", "good")
        );
    }
    eventually("the regeneration was tried", async || {
        served.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(isr.get("/t").await.unwrap().text(), "good");
}

#[tokio::test(flavor = "multi_thread")]
async fn head_on_a_miss_on_demand_only_pages_and_empty_responses() {
    let origin = Origin::start().await;
    origin.set(
        "/empty",
        Spec {
            status: Some(204),
            body: Some(String::new()),
            ..Default::default()
        },
    );
    let config = format!(
        "[[route]]\nmatch = \"/docs/{{*rest}}\"\nrevalidate = false\n{}",
        common::CONFIG.replace("[cache]\n", "[cache]\nexpire = \"1h\"\n")
    );
    let isr = Isr::start_with(&origin, &config).await;
    // HEAD on a missing page fetches the page (with GET) and stores it.
    let head = isr.request("HEAD", "/blog/h", &[], "").await.unwrap();
    assert_eq!(
        (head.status, head.cache(), head.body.len()),
        (200, "MISS", 0)
    );
    let get = isr.get("/blog/h").await.unwrap();
    assert_eq!(get.cache(), "HIT");
    assert_eq!(head.header("content-length"), get.body.len().to_string());
    assert_eq!(origin.last("/blog/h").0, "/blog/h");
    // revalidate = false: no stale-while-revalidate, s-maxage counts down to expire.
    let docs = isr.get("/docs/a/b").await.unwrap();
    let cc = docs.header("cache-control");
    let secs: u64 = cc
        .strip_prefix("public, s-maxage=")
        .expect(cc)
        .parse()
        .expect(cc);
    assert!((3590..=3600).contains(&secs), "{cc}");
    assert_eq!(isr.get("/docs/a/b").await.unwrap().cache(), "HIT");
    // 204 is stored and served without a body.
    assert_eq!(isr.get("/empty").await.unwrap().status, 204);
    let again = isr.get("/empty").await.unwrap();
    assert_eq!(
        (again.status, again.cache(), again.body.len()),
        (204, "HIT", 0)
    );
    assert_eq!(origin.count("/empty"), 1);
}

#[test]
fn an_unusable_data_dir_or_a_busy_port_exits_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_isr"))
            .args(["serve", "--origin", "http://127.0.0.1:9"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("data_dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    let out = run(&["--listen", &addr, "--data-dir", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on {addr}")));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_connection_serves_hits_then_a_miss_then_hits_again() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    isr.get("/blog/one").await.unwrap();
    // Two hits (the hit lane), a miss (handed to hyper), a hit, on one connection,
    // pipelined in one write.
    let r = raw(
        &isr,
        "GET /blog/one HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/one?utm_source=y HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n\
         GET /blog/two HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/one HTTP/1.1\r\nHost: x\r\n\r\n",
        4,
    )
    .await;
    let states: Vec<&str> = r
        .iter()
        .map(|(h, _)| {
            h.lines()
                .find_map(|l| l.strip_prefix("x-isr-cache: "))
                .unwrap()
        })
        .collect();
    assert_eq!(states, ["hit", "hit", "miss", "hit"]);
    assert!(r[0].1.contains("page /blog/one v1"));
    assert!(r[1].0.contains("content-encoding: gzip") && r[1].0.contains("vary: accept-encoding"));
    assert!(r[2].1.contains("page /blog/two v1"));
    assert!(r[3].1.contains("page /blog/one v1"));
    for (h, _) in &r {
        assert!(h.starts_with("http/1.1 200 ok"), "{h}");
        for name in [
            "age: ",
            "etag: ",
            "cache-control: public",
            "date: ",
            "content-type: ",
        ] {
            assert!(h.contains(name), "{name} missing in {h}");
        }
    }
    assert_eq!(origin.count("/blog/one"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn large_pages_are_sent_whole_from_page_files_to_fast_and_slow_readers() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start().await;
    // 256 KiB of pseudo-random hex: its Brotli and gzip variants are large too, so all
    // three bodies go to page files.
    let mut x = 7u64;
    let big: String = (0..256 * 1024)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(b"0123456789abcdef"[(x >> 60) as usize])
        })
        .collect();
    origin.set(
        "/blog/big",
        Spec {
            body: Some(big.clone()),
            ..Default::default()
        },
    );
    let isr = Isr::start_with(&origin, &common::CONFIG.replace("64KiB", "1MiB")).await;
    assert_eq!(isr.get("/blog/big").await.unwrap().cache(), "MISS");
    assert_eq!(isr.page_files(), 0, "a page seen once stays on the heap");
    assert_eq!(isr.get("/blog/big").await.unwrap().cache(), "HIT");
    assert_eq!(
        isr.page_files(),
        3,
        "from its first hit: identity, br and gzip in page files"
    );

    // Pipelined on one connection: identity, Brotli, identity (the hit lane), then an
    // If-None-Match that does not match (hyper's path, which reads the page file).
    let r = raw(
        &isr,
        "GET /blog/big HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/big HTTP/1.1\r\nHost: x\r\nAccept-Encoding: br\r\n\r\n\
         GET /blog/big HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/big HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"other\"\r\n\r\n",
        4,
    )
    .await;
    for (i, (head, body)) in r.iter().enumerate() {
        assert!(
            head.starts_with("http/1.1 200 ok") && head.contains("x-isr-cache: hit"),
            "{i}: {head}"
        );
        if i == 1 {
            assert!(head.contains("content-encoding: br"));
        } else {
            assert!(
                *body == big,
                "response {i}: the body differs from the origin's"
            );
        }
    }
    // The Brotli body decodes to the page (read as bytes: it is not UTF-8).
    let mut s = tokio::net::TcpStream::connect(isr.addr).await.unwrap();
    s.write_all(b"GET /blog/big HTTP/1.1\r\nHost: x\r\nAccept-Encoding: br\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let (_, got) = common::read_response_bytes(&mut s).await;
    let mut out = Vec::new();
    brotli::BrotliDecompress(&mut &got[..], &mut out).unwrap();
    assert!(out == big.as_bytes(), "the Brotli body decodes to the page");

    // A reader that lets 5 MiB of responses pile up before it reads: the socket buffers
    // fill, sendfile stops part-way, and every body still arrives whole and in order.
    let mut s = tokio::net::TcpStream::connect(isr.addr).await.unwrap();
    s.write_all(
        "GET /blog/big HTTP/1.1\r\nHost: x\r\n\r\n"
            .repeat(20)
            .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = read_responses(&mut s, 20).await;
    assert!(r
        .iter()
        .all(|(h, b)| h.contains("x-isr-cache: hit") && *b == big));
    assert_eq!(origin.count("/blog/big"), 1);

    // A new version replaces the old one, whose page files are closed.
    let newer = big.replace('a', "b");
    origin.set(
        "/blog/big",
        Spec {
            body: Some(newer.clone()),
            ..Default::default()
        },
    );
    isr.revalidate(json!({"path": "/blog/big", "eager": true}))
        .await;
    eventually("the new version is served from page files", async || {
        let r = isr.get("/blog/big").await.unwrap();
        r.cache() == "HIT" && r.text() == newer && isr.page_files() == 3
    })
    .await;
}

/// `len` characters of pseudo-random hex from `seed` (compresses to about half).
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(b"0123456789abcdef"[(x >> 60) as usize])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_not_kept_in_memory_are_sent_whole_from_the_store_in_every_encoding() {
    let origin = Origin::start().await;
    let pages: Vec<(String, String)> = (1..=3)
        .map(|i| (format!("/blog/s{i}"), noise(i, 40_000 + 1000 * i as usize)))
        .collect();
    for (path, body) in &pages {
        origin.set(
            path,
            Spec {
                body: Some(body.clone()),
                ..Default::default()
            },
        );
    }
    // No memory tier: every hit reads the page back from the store, and its bodies (all
    // three over 16 KiB) are sent from the segment files, each at its own offset.
    let config = common::CONFIG.replace(
        "max_body = \"64KiB\"",
        "max_body = \"1MiB\"\nmemory = \"0\"",
    );
    let isr = Isr::start_with(&origin, &config).await;
    for (path, _) in &pages {
        assert_eq!(isr.get(path).await.unwrap().cache(), "MISS");
    }
    // Pipelined on one connection (the hit lane), then one that hyper's path answers (it
    // carries a request body), reading the body back.
    let mut requests = String::new();
    for (path, _) in pages.iter().chain(pages.iter().rev()) {
        requests += &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    let (path, body) = &pages[1];
    requests += &format!("GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
    let r = raw(&isr, &requests, 7).await;
    let expected = pages.iter().chain(pages.iter().rev()).chain([&pages[1]]);
    for (i, ((head, got), (_, body))) in r.iter().zip(expected).enumerate() {
        assert!(head.contains("x-isr-cache: hit"), "{i}: {head}");
        assert!(
            got == body,
            "response {i}: the body differs from the origin's"
        );
    }
    assert_eq!(r[6].1, *body);

    // The compressed variants, from the same segments.
    use tokio::io::AsyncWriteExt;
    for (path, body) in &pages {
        for coding in ["br", "gzip"] {
            let mut s = tokio::net::TcpStream::connect(isr.addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: {coding}\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let (head, bytes) = common::read_response_bytes(&mut s).await;
            assert!(
                head.contains(&format!("content-encoding: {coding}")),
                "{head}"
            );
            let mut out = Vec::new();
            if coding == "br" {
                brotli::BrotliDecompress(&mut &bytes[..], &mut out).unwrap();
            } else {
                use std::io::Read;
                flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_end(&mut out)
                    .unwrap();
            }
            assert!(
                out == body.as_bytes(),
                "{path} {coding} decodes to the page"
            );
        }
    }
    // A reader with a small receive window that lets 5 MiB of answers pile up: `sendfile`
    // from the segment stops part-way, and the rest follows as the socket drains.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut s = socket.connect(isr.addr).await.unwrap();
    let one_round: String = pages
        .iter()
        .map(|(path, _)| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
        .collect();
    s.write_all(one_round.repeat(40).as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = read_responses(&mut s, 120).await;
    for (i, ((head, got), (_, body))) in r.iter().zip(pages.iter().cycle()).enumerate() {
        assert!(head.contains("x-isr-cache: hit"), "{i}: {head}");
        assert!(got == body, "slow reader, answer {i}: the body differs");
    }
    assert_eq!(isr.page_files(), 0, "nothing was copied into memory files");
    assert!(pages.iter().all(|(p, _)| origin.count(p) == 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn misses_errors_and_pass_throughs_in_a_pipeline_each_get_their_own_answer() {
    let origin = Origin::start().await;
    origin.set(
        "/blog/private",
        Spec {
            headers: vec![("cache-control".into(), "private".into())],
            ..Default::default()
        },
    );
    origin.set(
        "/blog/broken",
        Spec {
            status: Some(500),
            ..Default::default()
        },
    );
    let isr = Isr::start(&origin).await;
    // One connection: misses are fetched and stored while the rest waits; a private page
    // (passed through, not stored) and an origin error are answered once each, and the
    // connection goes on serving after them.
    let r = raw(
        &isr,
        "GET /blog/m1 HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/m1 HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/m2 HTTP/1.1\r\nHost: x\r\nAccept-Encoding: br\r\n\r\n\
         GET /blog/private HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/broken HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/m2 HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /blog/m3 HTTP/1.1\r\nHost: x\r\n\r\n",
        7,
    )
    .await;
    let got: Vec<(&str, &str)> = r
        .iter()
        .map(|(h, _)| {
            let state = h
                .split("x-isr-cache: ")
                .nth(1)
                .map_or("-", |v| v.lines().next().unwrap());
            (&h[9..12], state)
        })
        .collect();
    assert_eq!(
        got,
        [
            ("200", "miss"),
            ("200", "hit"),
            ("200", "miss"),
            ("200", "bypass"),
            ("500", "miss"),
            ("200", "hit"),
            ("200", "miss"),
        ]
    );
    assert!(r[0].1.contains("page /blog/m1 v1") && r[1].1.contains("page /blog/m1 v1"));
    assert!(r[2].0.contains("content-encoding: br"));
    assert!(r[3].1.contains("page /blog/private v1"));
    assert!(r[5].1.contains("page /blog/m2 v1") && r[6].1.contains("page /blog/m3 v1"));
    for p in ["/blog/m1", "/blog/m2", "/blog/private", "/blog/m3"] {
        assert_eq!(origin.count(p), 1, "{p}");
    }
    assert_eq!(origin.count("/blog/broken"), 1, "an error is fetched once");
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_hits_get_304_with_the_validators_and_no_body_in_a_pipeline() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    isr.get("/blog/c").await.unwrap();
    let plain = isr.get("/blog/c").await.unwrap();
    let br = isr
        .request("GET", "/blog/c", &[("accept-encoding", "br")], "")
        .await
        .unwrap();
    let (etag, br_etag) = (plain.header("etag"), br.header("etag"));
    // On one connection: a matching ETag, a weak one, a list, the identity ETag sent with
    // `Accept-Encoding: br` (it names another representation), `*`, and a plain GET.
    let requests = format!(
        "GET /blog/c HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n\
         GET /blog/c HTTP/1.1\r\nHost: x\r\nIf-None-Match: W/{etag}\r\n\r\n\
         GET /blog/c HTTP/1.1\r\nHost: x\r\nAccept-Encoding: br\r\nIf-None-Match: \"x\", {br_etag}\r\n\r\n\
         GET /blog/c HTTP/1.1\r\nHost: x\r\nAccept-Encoding: br\r\nIf-None-Match: {etag}\r\n\r\n\
         HEAD /blog/c HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\n\r\n\
         GET /blog/c HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let r = raw(&isr, &requests, 6).await;
    let status: Vec<&str> = r.iter().map(|(h, _)| &h[9..12]).collect();
    assert_eq!(status, ["304", "304", "304", "200", "304", "200"]);
    for (i, (h, body)) in r.iter().enumerate() {
        for name in [
            "x-isr-cache: hit",
            "age: ",
            "etag: ",
            "cache-control: public",
            "vary: accept-encoding",
            "date: ",
        ] {
            assert!(h.contains(name), "{i}: {name} missing in {h}");
        }
        if &h[9..12] == "304" {
            assert!(
                body.is_empty() && !h.contains("content-length") && !h.contains("content-type"),
                "{i}: {h}"
            );
        }
    }
    assert!(r[2]
        .0
        .contains(&format!("etag: {}", br_etag.to_lowercase())));
    assert!(r[3].0.contains("content-encoding: br"));
    assert!(r[5].1.contains("page /blog/c v1"));
    assert_eq!(origin.count("/blog/c"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn hits_answer_head_requests_split_heads_and_conditional_requests() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    let first = isr.get("/blog/h").await.unwrap();
    let etag = first.header("etag").to_string();
    let mut s = tokio::net::TcpStream::connect(isr.addr).await.unwrap();
    // A head that arrives in pieces.
    s.write_all(b"GET /blog/h HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"st: x\r\n\r\n").await.unwrap();
    let r = read_responses(&mut s, 1).await;
    assert!(r[0].0.contains("x-isr-cache: hit") && r[0].1.contains("page /blog/h v1"));
    // HEAD: the headers of the GET and no body: the next response follows at once.
    s.write_all(b"HEAD /blog/h HTTP/1.1\r\nHost: x\r\n\r\nGET /blog/h HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut both = Vec::new();
    while both.windows(8).filter(|w| w == b"HTTP/1.1").count() < 2 || !both.ends_with(b"</html>") {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("both responses in time")
            .unwrap();
        assert!(n > 0);
        both.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&both);
    let (head_response, get_response) = text[8..].split_once("HTTP/1.1").unwrap();
    assert!(head_response.contains("content-length: ") && head_response.ends_with("\r\n\r\n"));
    assert!(get_response.contains("page /blog/h v1"));
    // If-None-Match still gets its 304.
    let r = isr
        .request("GET", "/blog/h", &[("if-none-match", &etag)], "")
        .await
        .unwrap();
    assert_eq!(r.status, 304);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start().await;
    let mut isr = Isr::start(&origin).await;
    isr.get("/blog/idle").await.unwrap();
    let mut s = tokio::net::TcpStream::connect(isr.addr).await.unwrap();
    s.write_all(b"GET /blog/idle HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_responses(&mut s, 1).await;
    let started = std::time::Instant::now();
    let code = tokio::task::block_in_place(|| isr.terminate());
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "an idle connection held shutdown for {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_slow_reader_take_its_whole_hits_then_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let big = noise(11, 512 * 1024);
    origin.set(
        "/blog/big",
        Spec {
            body: Some(big.clone()),
            ..Default::default()
        },
    );
    let mut isr = Isr::start_with(&origin, &common::CONFIG.replace("64KiB", "1MiB")).await;
    isr.get("/blog/big").await.unwrap();
    assert_eq!(isr.get("/blog/big").await.unwrap().cache(), "HIT");
    // Eight hits pipelined by a client with a small receive window, read only after
    // shutdown has begun: the answers wait for the socket to drain.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut s = socket.connect(isr.addr).await.unwrap();
    s.write_all(
        "GET /blog/big HTTP/1.1\r\nHost: x\r\n\r\n"
            .repeat(8)
            .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = tokio::task::spawn_blocking(move || isr.terminate());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answers = read_responses(&mut s, 8).await;
    for (i, (head, body)) in answers.iter().enumerate() {
        assert!(head.contains("x-isr-cache: hit"), "{i}: {head}");
        assert!(
            *body == big,
            "answer {i}: the body differs from the origin's"
        );
    }
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the connection stayed open after its answers"
    );
    assert!(
        rest.is_empty(),
        "{} bytes after the eighth answer",
        rest.len()
    );
    assert_eq!(stopped.await.unwrap(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_ahead_regenerates_a_popular_page_before_it_goes_stale() {
    let origin = Origin::start().await;
    let config = format!(
        "{}\n[[route]]\nmatch = \"/ahead/{{slug}}\"\nrevalidate = 2\nrefresh = \"ahead\"\n",
        common::CONFIG
    );
    let isr = Isr::start_with(&origin, &config).await;
    assert_eq!(isr.get("/ahead/a").await.unwrap().cache(), "MISS");
    assert_eq!(isr.get("/ahead/a").await.unwrap().cache(), "HIT");
    assert_eq!(origin.count("/ahead/a"), 1);
    // Past 80 % of the 2 s window the page is still a HIT, and is regenerated early.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let r = isr.get("/ahead/a").await.unwrap();
    assert_eq!(r.cache(), "HIT");
    assert!(r.text().contains("v1"));
    eventually("the early regeneration lands", async || {
        let r = isr.get("/ahead/a").await.unwrap();
        assert_eq!(
            r.cache(),
            "HIT",
            "a refresh-ahead page never goes stale here"
        );
        r.text().contains("v2")
    })
    .await;
    assert_eq!(origin.count("/ahead/a"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_always_regenerates_stale_pages_without_visitors() {
    let origin = Origin::start().await;
    let config = format!(
        "{}\n[[route]]\nmatch = \"/always/{{slug}}\"\nrevalidate = 1\nrefresh = \"always\"\n\
         [[route]]\nmatch = \"/always-long/{{slug}}\"\nrevalidate = 3600\nrefresh = \"always\"\ntags = [\"always-long\"]\n",
        common::CONFIG
    );
    let isr = Isr::start_with(&origin, &config).await;
    assert_eq!(isr.get("/always/a").await.unwrap().cache(), "MISS");
    // Nobody asks; the page regenerates as it goes stale, again and again.
    eventually("two regenerations without a visitor", async || {
        origin.count("/always/a") >= 3
    })
    .await;
    // A lazy revalidation regenerates such a page at once too, long before its window.
    assert_eq!(isr.get("/always-long/x").await.unwrap().cache(), "MISS");
    isr.revalidate(json!({"tag": "always-long"})).await;
    eventually("the revalidation regenerates it", async || {
        origin.count("/always-long/x") == 2
    })
    .await;
    // A page of an ordinary route is left alone.
    isr.get("/fast/b").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(origin.count("/fast/b"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_always_schedules_the_pages_stored_before_a_restart() {
    let origin = Origin::start().await;
    let config = format!(
        "{}\n[[route]]\nmatch = \"/always/{{slug}}\"\nrevalidate = 1\nrefresh = \"always\"\n",
        common::CONFIG
    );
    let mut isr = Isr::start_with(&origin, &config).await;
    assert_eq!(isr.get("/always/r").await.unwrap().cache(), "MISS");
    let code = tokio::task::block_in_place(|| isr.terminate());
    assert_eq!(code, Some(0));
    assert_eq!(origin.count("/always/r"), 1);
    // Nobody visits the restarted node: only its start-up scan can know about the page.
    let _restarted = Isr::spawn(&origin, &isr.data_dir, &isr.config).await;
    eventually(
        "a regeneration after the restart, without a visitor",
        async || origin.count("/always/r") >= 2,
    )
    .await;
}
