//! Operating isr: metrics, the admin page and its login, the private admin listener,
//! `--debug-cache` logs, overdue pages and `isr status`, all against the real binary.

mod common;

use std::time::Duration;

use common::{
    eventually, free_port, metric as value, send, Isr, Origin, Reply, Spec, CONFIG, SECRET,
};

const BEARER: &str = "Bearer test-secret";

async fn metrics(isr: &Isr) -> String {
    isr.metrics().await
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_with_requests_regenerations_errors_and_revalidations() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    let before = metrics(&isr).await;
    assert_eq!(value(&before, "isr_requests_total{state=\"HIT\"}"), 0.0);
    assert_eq!(value(&before, "isr_entries"), 0.0);

    isr.get("/fast/m").await.unwrap();
    isr.get("/fast/m").await.unwrap();
    isr.get("/api/x").await.unwrap();
    origin.set(
        "/blog/broken",
        Spec {
            status: Some(503),
            ..Default::default()
        },
    );
    isr.get("/blog/broken").await.unwrap();
    isr.revalidate(serde_json::json!({"tags": ["posts"], "paths": ["/a"]}))
        .await;
    // /fast/ pages go stale after 1 s: the next request regenerates in the background.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(isr.get("/fast/m").await.unwrap().cache(), "STALE");
    eventually("the regeneration is counted", async || {
        value(
            &metrics(&isr).await,
            "isr_regenerations_total{result=\"ok\"}",
        ) == 1.0
    })
    .await;

    let m = metrics(&isr).await;
    assert_eq!(value(&m, "isr_requests_total{state=\"MISS\"}"), 2.0);
    assert_eq!(value(&m, "isr_requests_total{state=\"HIT\"}"), 1.0);
    assert_eq!(value(&m, "isr_requests_total{state=\"STALE\"}"), 1.0);
    assert_eq!(value(&m, "isr_requests_total{state=\"BYPASS\"}"), 1.0);
    assert_eq!(
        value(&m, "isr_origin_errors_total{kind=\"status_5xx\"}"),
        1.0
    );
    assert_eq!(value(&m, "isr_origin_fetch_seconds_count"), 3.0);
    assert_eq!(value(&m, "isr_revalidations_total{kind=\"tag\"}"), 1.0);
    assert_eq!(value(&m, "isr_revalidations_total{kind=\"path\"}"), 1.0);
    assert_eq!(value(&m, "isr_regenerations_in_flight"), 0.0);
    assert_eq!(value(&m, "isr_entries"), 1.0);
    assert!(value(&m, "isr_store_bytes") > 0.0);
    assert!(value(&m, "isr_memory_tier_bytes") > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_admin_refuse_requests_without_the_secret() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    for path in [
        "/_isr/metrics",
        "/_isr/admin",
        "/_isr/admin?tag=posts",
        "/_isr/admin/status.json",
    ] {
        let r = isr.get(path).await.unwrap();
        assert_eq!(r.status, 401, "{path}");
        assert!(!r.text().contains("isr_requests_total"), "{path}");
        let wrong = isr
            .request("GET", path, &[("authorization", "Bearer nope")], "")
            .await
            .unwrap();
        assert_eq!(wrong.status, 401, "{path}");
    }
    let forged = isr
        .request(
            "GET",
            "/_isr/admin",
            &[("cookie", "isr_admin=0123456789abcdef0123456789abcdef")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(forged.status, 401);
    let r = isr
        .request(
            "POST",
            "/_isr/admin/revalidate",
            &[("content-type", "application/x-www-form-urlencoded")],
            "type=tag&value=posts",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
}

/// Logs in through the form; returns the session cookie.
async fn login(isr: &Isr) -> String {
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let wrong = isr
        .request("POST", "/_isr/admin/login", &form, "secret=nope")
        .await
        .unwrap();
    assert_eq!(wrong.status, 401);
    assert!(wrong.text().contains("Wrong secret"));
    let r = isr
        .request(
            "POST",
            "/_isr/admin/login",
            &form,
            &format!("secret={SECRET}"),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.header("location")), (303, "/_isr/admin"));
    let cookie = r.header("set-cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_string()
}

fn csrf_of(page: &Reply) -> String {
    let text = page.text();
    let at = text
        .find("name=csrf value=\"")
        .expect("a form with a csrf token")
        + 17;
    text[at..at + 32].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_lists_pages_by_prefix_and_tag_and_revalidates_them_with_csrf_protection() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    for p in ["/blog/a", "/blog/b", "/fast/c"] {
        isr.get(p).await.unwrap();
    }
    let cookie = login(&isr).await;
    let page = |q: String| {
        let cookie = cookie.clone();
        let isr = &isr;
        async move {
            isr.request("GET", &q, &[("cookie", &cookie)], "")
                .await
                .unwrap()
        }
    };
    let all = page("/_isr/admin".into()).await;
    assert_eq!(all.status, 200);
    let text = all.text();
    for p in ["/blog/a", "/blog/b", "/fast/c"] {
        assert!(text.contains(&format!("data-key=\"{p}\"")), "{p}");
    }
    assert!(text.contains("<b id=entries>3</b>"));
    let by_prefix = page("/_isr/admin?prefix=/blog/".into()).await.text();
    assert!(
        by_prefix.contains("data-key=\"/blog/a\"") && !by_prefix.contains("data-key=\"/fast/c\"")
    );
    let by_tag = page("/_isr/admin?tag=post-b".into()).await;
    let t = by_tag.text();
    assert!(t.contains("data-key=\"/blog/b\"") && !t.contains("data-key=\"/blog/a\""));
    assert!(t.contains("class=\"state fresh\""));

    let form = |body: String| {
        let cookie = cookie.clone();
        let isr = &isr;
        async move {
            let headers = [
                ("cookie", cookie.as_str()),
                ("content-type", "application/x-www-form-urlencoded"),
            ];
            isr.request("POST", "/_isr/admin/revalidate", &headers, &body)
                .await
                .unwrap()
        }
    };
    // Without the page's CSRF token: refused, nothing revalidated.
    let r = form("type=tag&value=post-b&csrf=0000".into()).await;
    assert_eq!(r.status, 403);
    assert_eq!(isr.get("/blog/b").await.unwrap().cache(), "HIT");
    // From another site's page: refused.
    let headers = [
        ("cookie", cookie.as_str()),
        ("origin", "http://evil.example"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let csrf = csrf_of(&by_tag);
    let body = format!("type=tag&value=post-b&csrf={csrf}&back=/_isr/admin%3Ftag%3Dpost-b");
    let r = isr
        .request("POST", "/_isr/admin/revalidate", &headers, &body)
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    // With it: revalidated, back to the listing with a message.
    let r = form(body).await;
    assert_eq!(r.status, 303);
    assert!(r
        .header("location")
        .starts_with("/_isr/admin?tag=post-b&done=Revalidated"));
    let after = page(r.header("location").to_string()).await.text();
    assert!(after.contains("class=\"state stale\""), "{after}");
    assert!(after.contains("id=done>Revalidated tag post-b."));
    assert_eq!(isr.get("/blog/b").await.unwrap().cache(), "STALE");
    assert_eq!(isr.get("/blog/a").await.unwrap().cache(), "HIT");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_listing_is_paginated() {
    let origin = Origin::start().await;
    let isr = Isr::start(&origin).await;
    for i in 0..60 {
        isr.get(&format!("/blog/p{i:02}")).await.unwrap();
    }
    let cookie = login(&isr).await;
    let first = isr
        .request("GET", "/_isr/admin", &[("cookie", &cookie)], "")
        .await
        .unwrap()
        .text();
    assert_eq!(first.matches("<tr data-key=").count(), 50);
    assert!(
        first.contains("href=\"/_isr/admin?after=/blog/p49\""),
        "{first}"
    );
    let second = isr
        .request(
            "GET",
            "/_isr/admin?after=/blog/p49",
            &[("cookie", &cookie)],
            "",
        )
        .await
        .unwrap()
        .text();
    assert_eq!(second.matches("<tr data-key=").count(), 10);
    assert!(second.contains("data-key=\"/blog/p50\"") && !second.contains("id=next"));
    // By tag too (every /blog/ page carries `posts`).
    let by_tag = |q: &'static str| {
        let cookie = cookie.clone();
        let isr = &isr;
        async move {
            isr.request("GET", q, &[("cookie", &cookie)], "")
                .await
                .unwrap()
                .text()
        }
    };
    let first = by_tag("/_isr/admin?tag=posts").await;
    assert_eq!(first.matches("<tr data-key=").count(), 50);
    assert!(
        first.contains("href=\"/_isr/admin?tag=posts&amp;after=/blog/p49\""),
        "{first}"
    );
    let second = by_tag("/_isr/admin?tag=posts&after=/blog/p49").await;
    assert_eq!(second.matches("<tr data-key=").count(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_serves_metrics_admin_and_api_without_the_secret_and_nothing_else() {
    let origin = Origin::start().await;
    let port = free_port();
    let config = format!("admin_listen = \"127.0.0.1:{port}\"\n{CONFIG}");
    let isr = Isr::start_with(&origin, &config).await;
    isr.get("/blog/a").await.unwrap();
    let admin = |path: &str| format!("http://127.0.0.1:{port}{path}");
    assert_eq!(
        send("GET", &admin("/_isr/health"), &[], "")
            .await
            .unwrap()
            .status,
        200
    );
    let m = send("GET", &admin("/_isr/metrics"), &[], "").await.unwrap();
    assert_eq!(m.status, 200);
    assert_eq!(value(&m.text(), "isr_requests_total{state=\"MISS\"}"), 1.0);
    let page = send("GET", &admin("/_isr/admin"), &[], "").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.text().contains("data-key=\"/blog/a\""));
    let r = send(
        "POST",
        &admin("/_isr/revalidate"),
        &[],
        r#"{"tag": "post-a"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(isr.get("/blog/a").await.unwrap().cache(), "STALE");
    // Pages are not served there, and the public listener still wants the secret.
    assert_eq!(
        send("GET", &admin("/blog/a"), &[], "")
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(isr.get("/_isr/metrics").await.unwrap().status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_cache_logs_one_line_per_request_and_per_origin_fetch() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let isr = Isr::start_opts(&origin, CONFIG, &[("ISR_DEBUG_CACHE", "1")], Some(&log)).await;
    isr.get("/blog/dbg?utm_source=x").await.unwrap();
    isr.get("/blog/dbg").await.unwrap();
    eventually("two request lines are logged", async || {
        std::fs::read_to_string(&log)
            .unwrap()
            .matches("key=\"/blog/dbg\"")
            .count()
            >= 3
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("/blog/dbg")).collect();
    assert!(
        lines.iter().any(|l| l.contains("origin fetch")
            && l.contains("fetch=\"miss\"")
            && l.contains("origin_status=200")
            && l.contains("origin_ms=")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" request ") && l.contains("state=MISS") && l.contains("age=0")),
        "{text}"
    );
    assert!(lines.iter().any(|l| l.contains("state=HIT")), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn overdue_pages_show_in_metrics_admin_and_isr_status() {
    let origin = Origin::start().await;
    let config = format!("{CONFIG}\n[monitor]\noverdue_after = \"1s\"\n");
    let isr = Isr::start_with(&origin, &config).await;
    isr.get("/fast/old").await.unwrap(); // revalidate = 1 s: overdue after 2 s
    isr.get("/blog/new").await.unwrap(); // revalidate = 1 h: not overdue
    eventually("the scan finds the overdue page", async || {
        value(&metrics(&isr).await, "isr_pages_overdue") == 1.0
    })
    .await;
    let page = isr
        .request(
            "GET",
            "/_isr/admin?view=overdue",
            &[("authorization", BEARER)],
            "",
        )
        .await
        .unwrap()
        .text();
    assert!(page.contains("Overdue pages"));
    assert!(page.contains("data-key=\"/fast/old\"") && !page.contains("data-key=\"/blog/new\""));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_isr"))
        .args(["status", "--server", &isr.url("")])
        .env("ISR_SECRET", SECRET)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("pages         2"), "{text}");
    assert!(text.contains("overdue       1"), "{text}");
    assert!(text.contains("/fast/old  last regenerated"), "{text}");
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_isr"))
        .args(["status", "--server", &isr.url("")])
        .env("ISR_SECRET", "wrong")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
}
