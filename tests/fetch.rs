//! `/_isr/fetch?url=`: the data cache for origins in any language, against the real
//! binary and fake upstreams on loopback.

mod common;

use common::{Isr, Origin, Spec, SECRET};

fn config(upstream: &Origin, admin_port: u16) -> String {
    format!(
        "admin_listen = \"127.0.0.1:{admin_port}\"\n[fetch]\nallow = [\"localhost:{}\"]\n",
        upstream.addr.port()
    )
}

fn fetch_path(url: &str) -> String {
    let encoded: String = url
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("/_isr/fetch?url={encoded}")
}

async fn fetch(isr: &Isr, url: &str, headers: &[(&str, &str)]) -> common::Reply {
    let auth = format!("Bearer {SECRET}");
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    isr.request("GET", &fetch_path(url), &all, "")
        .await
        .unwrap()
}

#[tokio::test]
async fn an_upstream_is_fetched_once_cached_with_tags_and_revalidated_by_tag() {
    let (origin, upstream) = (Origin::start().await, Origin::start().await);
    upstream.set(
        "/posts",
        Spec {
            body: Some("{\"posts\":[1,2]}".into()),
            headers: vec![("content-type".into(), "application/json".into())],
            ..Default::default()
        },
    );
    let isr = Isr::start_with(&origin, &config(&upstream, common::free_port())).await;
    let url = format!("http://localhost:{}/posts", upstream.addr.port());
    let tagged = [("x-isr-tags", "posts, api"), ("x-isr-revalidate", "60")];

    let first = fetch(&isr, &url, &tagged).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.cache(), "MISS");
    assert_eq!(first.text(), "{\"posts\":[1,2]}");
    assert_eq!(first.header("content-type"), "application/json");
    // Echoed so the origin can put them on the page it renders from this data.
    assert_eq!(first.header("x-isr-tags"), "posts,api");
    assert_eq!(first.header("x-isr-revalidate"), "60");
    let second = fetch(&isr, &url, &tagged).await;
    assert_eq!(second.cache(), "HIT");
    assert_eq!(upstream.count("/posts"), 1);

    // Nothing of the caller's request reaches the upstream: not its secret, not its tags.
    let (_, headers, _) = upstream.last("/posts");
    assert!(headers.get("authorization").is_none());
    assert!(headers.get("x-isr-tags").is_none());

    // One revalidation of the tag reaches the data, as it reaches pages.
    upstream.set(
        "/posts",
        Spec {
            body: Some("{\"posts\":[1,2,3]}".into()),
            ..Default::default()
        },
    );
    assert_eq!(
        isr.revalidate(serde_json::json!({"tag": "posts"}))
            .await
            .status,
        200
    );
    let stale = fetch(&isr, &url, &tagged).await;
    assert_eq!(stale.cache(), "STALE");
    assert_eq!(stale.text(), "{\"posts\":[1,2]}");
    common::eventually("the refreshed value", async || {
        fetch(&isr, &url, &tagged).await.text() == "{\"posts\":[1,2,3]}"
    })
    .await;
    assert_eq!(upstream.count("/posts"), 2);

    // mode = "expire": the next read waits for the upstream (read-your-writes).
    upstream.set(
        "/posts",
        Spec {
            body: Some("{\"posts\":[]}".into()),
            ..Default::default()
        },
    );
    let r = isr
        .revalidate(serde_json::json!({"tag": "api", "mode": "expire"}))
        .await;
    assert_eq!(r.status, 200);
    let fresh = fetch(&isr, &url, &tagged).await;
    assert_eq!(
        (fresh.cache(), fresh.text().as_str()),
        ("MISS", "{\"posts\":[]}")
    );
}

#[tokio::test]
async fn only_the_origin_may_call_it() {
    let (origin, upstream) = (Origin::start().await, Origin::start().await);
    let admin_port = common::free_port();
    let isr = Isr::start_with(&origin, &config(&upstream, admin_port)).await;
    let url = format!("http://localhost:{}/data", upstream.addr.port());
    let anonymous = isr.get(&fetch_path(&url)).await.unwrap();
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    let wrong = isr
        .request(
            "GET",
            &fetch_path(&url),
            &[("authorization", "Bearer nope")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(upstream.count("/data"), 0);
    // The private listener needs no secret.
    let private = common::send(
        "GET",
        &format!("http://127.0.0.1:{admin_port}{}", fetch_path(&url)),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(private.status, 200, "{}", private.text());
    assert_eq!(upstream.count("/data"), 1);
    // Bad input is a 400 that says what is wrong, and fetches nothing.
    let bad = fetch(&isr, &url, &[("x-isr-revalidate", "fortnightly")]).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(
        bad.text().contains("[cache_life.fortnightly]"),
        "{}",
        bad.text()
    );
    let missing = isr
        .request(
            "GET",
            "/_isr/fetch",
            &[("authorization", &format!("Bearer {SECRET}"))],
            "",
        )
        .await
        .unwrap();
    assert_eq!(missing.status, 400);
    assert!(missing.text().contains("?url="), "{}", missing.text());
    assert_eq!(upstream.count("/data"), 1);
}

#[tokio::test]
async fn other_hosts_ip_literals_user_info_and_redirects_never_reach_an_internal_address() {
    let (origin, upstream, internal) = (
        Origin::start().await,
        Origin::start().await,
        Origin::start().await,
    );
    let isr = Isr::start_with(&origin, &config(&upstream, common::free_port())).await;
    let (up, inside) = (upstream.addr.port(), internal.addr.port());
    for (url, status) in [
        // The internal service by name, and the allowed host on another port.
        (format!("http://localhost:{inside}/secret"), 403),
        // The allowed upstream itself, by IP literal instead of its listed name.
        (format!("http://127.0.0.1:{up}/secret"), 403),
        (format!("http://[::1]:{up}/secret"), 403),
        (format!("http://2130706433:{inside}/secret"), 403),
        (format!("http://0x7f.0.0.1:{inside}/secret"), 403),
        (format!("http://localhost.:{up}/secret"), 403),
        (
            format!("http://localhost:{up}@127.0.0.1:{inside}/secret"),
            400,
        ),
        ("file:///etc/passwd".to_string(), 400),
    ] {
        let r = fetch(&isr, &url, &[]).await;
        assert_eq!(r.status, status, "{url}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{url}");
    }
    assert_eq!(isr.get("/_isr/fetch").await.unwrap().status, 401);

    // An allowed upstream that redirects to an internal address is not followed.
    upstream.set(
        "/moved",
        Spec {
            status: Some(302),
            headers: vec![(
                "location".into(),
                format!("http://127.0.0.1:{inside}/secret"),
            )],
            ..Default::default()
        },
    );
    let r = fetch(&isr, &format!("http://localhost:{up}/moved"), &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("does not follow redirects"),
        "{}",
        r.text()
    );
    assert_eq!(internal.count("/secret"), 0);
    assert!(internal.log().is_empty());
}

#[tokio::test]
async fn a_failing_upstream_keeps_the_last_good_value() {
    let (origin, upstream) = (Origin::start().await, Origin::start().await);
    upstream.set(
        "/feed",
        Spec {
            body: Some("good".into()),
            ..Default::default()
        },
    );
    let isr = Isr::start_with(&origin, &config(&upstream, common::free_port())).await;
    let url = format!("http://localhost:{}/feed", upstream.addr.port());
    let short = [("x-isr-revalidate", "1")];
    assert_eq!(fetch(&isr, &url, &short).await.text(), "good");
    upstream.set(
        "/feed",
        Spec {
            status: Some(500),
            body: Some("broken".into()),
            ..Default::default()
        },
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Stale: served at once, refreshed in the background, and the failure keeps it.
    let stale = fetch(&isr, &url, &short).await;
    assert_eq!((stale.status, stale.text().as_str()), (200, "good"));
    common::eventually("the failed refresh", async || upstream.count("/feed") == 2).await;
    let after = fetch(&isr, &url, &short).await;
    assert_eq!((after.status, after.text().as_str()), (200, "good"));

    // Nothing cached and the upstream failing: an error, not a stored 500.
    let missing = format!("http://localhost:{}/never", upstream.addr.port());
    upstream.set(
        "/never",
        Spec {
            status: Some(503),
            ..Default::default()
        },
    );
    let r = fetch(&isr, &missing, &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("503"), "{}", r.text());
}
