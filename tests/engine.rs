//! Engine tests on tokio's paused clock: the engine driven directly (no front), with an
//! in-memory store and the loopback test origin, so windows, backoff and single-flight
//! are checked without sleeping.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Origin, Spec};
use isr::config::Overrides;
use isr::engine::{Engine, Revalidation, Served};
use isr::store::MemoryStore;

const CONFIG: &str = r#"
[cache]
revalidate = 60
expire = 600
origin_timeout = "30s"
regen_concurrency = 2
[[route]]
match = "/blog/{slug}"
tags = ["posts", "post-{slug}"]
"#;

async fn engine(origin: &Origin) -> Arc<Engine> {
    let cfg = isr::config::parse(
        "<test>",
        CONFIG,
        &Overrides {
            origin: Some(origin.url()),
            ..Default::default()
        },
    )
    .unwrap();
    Engine::new(cfg, Arc::new(MemoryStore::new()))
        .await
        .unwrap()
}

async fn serve(e: &Arc<Engine>, key: &str) -> (&'static str, String) {
    match e.serve(key).await {
        Served::Hit(x) => ("HIT", body(&x)),
        Served::Stale(x) => ("STALE", body(&x)),
        Served::Miss(x) => ("MISS", body(&x)),
        Served::Pass(_) => ("PASS", String::new()),
        Served::Bypass => ("BYPASS", String::new()),
        Served::Error(x) => ("ERROR", x.status.to_string()),
        Served::NotFound(_) => ("NOT FOUND", String::new()),
    }
}

fn body(e: &isr::entry::Entry) -> String {
    String::from_utf8_lossy(&e.identity())
        .split_whitespace()
        .take(4)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lets spawned regenerations run to completion (the clock auto-advances when idle).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn fresh_then_stale_then_regenerated_then_expired() {
    let origin = Origin::start().await;
    let e = engine(&origin).await;
    assert_eq!(serve(&e, "/blog/a").await.0, "MISS");
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(serve(&e, "/blog/a").await.0, "HIT");
    tokio::time::advance(Duration::from_secs(1)).await;
    let (state, body) = serve(&e, "/blog/a").await;
    assert_eq!(state, "STALE");
    assert!(body.contains("v1"));
    settle().await;
    let (state, body) = serve(&e, "/blog/a").await;
    assert_eq!(state, "HIT");
    assert!(body.contains("v2"), "{body}");
    tokio::time::advance(Duration::from_secs(600)).await;
    assert_eq!(
        serve(&e, "/blog/a").await.0,
        "MISS",
        "past expire the request waits"
    );
    assert_eq!(origin.count("/blog/a"), 3);
}

#[tokio::test(start_paused = true)]
async fn stampede_on_a_missing_page_shares_one_fetch() {
    let origin = Origin::start().await;
    origin.set(
        "/blog/hot",
        Spec {
            delay: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let e = engine(&origin).await;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let e = e.clone();
            tokio::spawn(async move { serve(&e, "/blog/hot").await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().0, "MISS");
    }
    assert_eq!(origin.count("/blog/hot"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_leader_does_not_leave_waiters_hanging() {
    let origin = Origin::start().await;
    origin.set(
        "/blog/d",
        Spec {
            delay: Duration::from_secs(5),
            ..Default::default()
        },
    );
    let e = engine(&origin).await;
    let leader = {
        let e = e.clone();
        tokio::spawn(async move { serve(&e, "/blog/d").await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    leader.abort();
    // The fetch runs in its own task: a later visitor joins it and gets the page.
    assert_eq!(serve(&e, "/blog/d").await.0, "MISS");
    assert_eq!(origin.count("/blog/d"), 1);
}

#[tokio::test(start_paused = true)]
async fn failures_keep_the_page_and_back_off_3s_doubling() {
    let origin = Origin::start().await;
    let e = engine(&origin).await;
    serve(&e, "/blog/f").await;
    origin.set(
        "/blog/f",
        Spec {
            status: Some(500),
            ..Default::default()
        },
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    let tries = || origin.count("/blog/f") - 1;
    assert_eq!(serve(&e, "/blog/f").await.0, "STALE");
    settle().await;
    assert_eq!(tries(), 1);
    // Within 3 s, visits make no new try.
    tokio::time::advance(Duration::from_millis(2900)).await;
    assert_eq!(serve(&e, "/blog/f").await.0, "STALE");
    settle().await;
    assert_eq!(tries(), 1);
    // After 3 s, the next visitor starts one; then the wait doubles to 6 s.
    tokio::time::advance(Duration::from_millis(200)).await;
    serve(&e, "/blog/f").await;
    settle().await;
    assert_eq!(tries(), 2);
    tokio::time::advance(Duration::from_secs(5)).await;
    serve(&e, "/blog/f").await;
    settle().await;
    assert_eq!(tries(), 2);
    tokio::time::advance(Duration::from_millis(1100)).await;
    let (state, body) = serve(&e, "/blog/f").await;
    assert_eq!(
        (state, body.contains("v1")),
        ("STALE", true),
        "the good page is never replaced by an error"
    );
    settle().await;
    assert_eq!(tries(), 3);
}

#[tokio::test(start_paused = true)]
async fn expired_copy_is_served_when_the_origin_fails() {
    let origin = Origin::start().await;
    let e = engine(&origin).await;
    serve(&e, "/blog/x").await;
    origin.set(
        "/blog/x",
        Spec {
            status: Some(502),
            ..Default::default()
        },
    );
    tokio::time::advance(Duration::from_secs(601)).await;
    let (state, body) = serve(&e, "/blog/x").await;
    assert_eq!((state, body.contains("v1")), ("STALE", true));
    origin.set(
        "/nowhere",
        Spec {
            status: Some(502),
            ..Default::default()
        },
    );
    assert_eq!(
        serve(&e, "/nowhere").await,
        ("ERROR", "502 Bad Gateway".to_string())
    );
}

#[tokio::test(start_paused = true)]
async fn revalidation_marks_stale_or_expired_in_constant_time() {
    let origin = Origin::start().await;
    let e = engine(&origin).await;
    for k in ["/blog/a", "/blog/b", "/other"] {
        serve(&e, k).await;
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    let tag = |t: &str, expire| Revalidation {
        tags: vec![t.into()],
        expire,
        ..Default::default()
    };
    e.revalidate(&tag("post-a", false)).await.unwrap();
    assert_eq!(serve(&e, "/blog/a").await.0, "STALE");
    assert_eq!(serve(&e, "/blog/b").await.0, "HIT");
    settle().await;
    assert_eq!(serve(&e, "/blog/a").await.0, "HIT");
    e.revalidate(&tag("posts", true)).await.unwrap();
    assert_eq!(serve(&e, "/blog/b").await.0, "MISS");
    assert_eq!(serve(&e, "/other").await.0, "HIT");
    // A revalidation in the same millisecond as the fetch that follows it still lets the
    // fetched page count as fresh (no second miss).
    e.revalidate(&tag("post-b", true)).await.unwrap();
    assert_eq!(serve(&e, "/blog/b").await.0, "MISS");
    assert_eq!(serve(&e, "/blog/b").await.0, "HIT");
}

#[tokio::test(start_paused = true)]
async fn eager_regeneration_is_bounded_by_regen_concurrency() {
    let origin = Origin::start().await;
    let e = engine(&origin).await;
    let keys: Vec<String> = (0..6).map(|i| format!("/blog/p{i}")).collect();
    for k in &keys {
        serve(&e, k).await;
    }
    for k in &keys {
        origin.set(
            k,
            Spec {
                delay: Duration::from_secs(1),
                ..Default::default()
            },
        );
    }
    e.revalidate(&Revalidation {
        tags: vec!["posts".into()],
        eager: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let regenerated = || keys.iter().filter(|k| origin.count(k) == 2).count();
    // regen_concurrency = 2: each second of origin time regenerates two pages.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(regenerated(), 2, "two fetches started at once, no more");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(regenerated(), 4);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(regenerated(), 6);
    tokio::time::sleep(Duration::from_millis(600)).await;
    for k in &keys {
        assert_eq!(serve(&e, k).await.0, "HIT");
    }
}

#[tokio::test(start_paused = true)]
async fn a_visitor_never_queues_behind_background_regenerations() {
    let origin = Origin::start().await;
    let e = engine(&origin).await;
    for k in ["/blog/s1", "/blog/s2", "/blog/p"] {
        serve(&e, k).await;
    }
    for k in ["/blog/s1", "/blog/s2"] {
        origin.set(
            k,
            Spec {
                delay: Duration::from_secs(10),
                ..Default::default()
            },
        );
    }
    origin.set(
        "/blog/p",
        Spec {
            delay: Duration::from_millis(100),
            ..Default::default()
        },
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    // Two slow regenerations take both slots (regen_concurrency = 2); /blog/p's waits.
    for k in ["/blog/s1", "/blog/s2", "/blog/p"] {
        assert_eq!(serve(&e, k).await.0, "STALE");
    }
    let expire = Revalidation {
        tags: vec!["post-p".into()],
        expire: true,
        ..Default::default()
    };
    e.revalidate(&expire).await.unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(serve(&e, "/blog/p").await.0, "MISS");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the visitor waited {:?} behind background work",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn background_regenerations_queue_at_most_64_per_slot_and_the_rest_wait_for_a_later_hit() {
    let origin = Origin::start().await;
    let e = engine(&origin).await;
    // regen_concurrency = 2: room for 128 background regenerations waiting or running.
    let keys: Vec<String> = (0..200).map(|i| format!("/blog/q{i}")).collect();
    for k in &keys {
        serve(&e, k).await;
        origin.set(
            k,
            Spec {
                delay: Duration::from_secs(1),
                ..Default::default()
            },
        );
    }
    tokio::time::advance(Duration::from_secs(60)).await;
    for k in &keys {
        assert_eq!(serve(&e, k).await.0, "STALE");
    }
    // 64 rounds of two one-second fetches drain the queue.
    tokio::time::sleep(Duration::from_secs(70)).await;
    let regenerated: Vec<&String> = keys.iter().filter(|k| origin.count(k) == 2).collect();
    assert_eq!(regenerated.len(), 128, "the other 72 were not queued");
    // A later stale hit on a page that found no room starts its regeneration then.
    let skipped = keys.iter().find(|k| origin.count(k) == 1).unwrap();
    assert_eq!(serve(&e, skipped).await.0, "STALE");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(origin.count(skipped), 2);
    assert_eq!(serve(&e, skipped).await.0, "HIT");
}

/// An engine with a memory tier of 64 KiB (about 38 of these pages) over a store that
/// another node filled with 300 pages, `/blog/p0` to `/blog/p299`.
async fn beside_300_stored_pages(origin: &Origin) -> Arc<Engine> {
    let config = |memory: &str| {
        let text = CONFIG.replace("[cache]", &format!("[cache]\nmemory = \"{memory}\""));
        let overrides = Overrides {
            origin: Some(origin.url()),
            ..Default::default()
        };
        isr::config::parse("<test>", &text, &overrides).unwrap()
    };
    let store = Arc::new(MemoryStore::new());
    let writer = Engine::new(config("0"), store.clone()).await.unwrap();
    for i in 0..300 {
        assert_eq!(serve(&writer, &format!("/blog/p{i}")).await.0, "MISS");
    }
    Engine::new(config("64KiB"), store).await.unwrap()
}

/// The pages of `keys` the memory tier holds.
fn held(e: &Engine, keys: impl Iterator<Item = String>) -> Vec<String> {
    keys.filter(|k| e.hot().peek(k).is_some()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_scan_of_stored_pages_once_the_memory_tier_is_full_evicts_nothing() {
    let origin = Origin::start().await;
    let e = beside_300_stored_pages(&origin).await;
    for i in 0..60 {
        assert_eq!(serve(&e, &format!("/blog/p{i}")).await.0, "HIT");
    }
    let kept = held(&e, (0..60).map(|i| format!("/blog/p{i}")));
    assert!(kept.len() > 20, "the tier filled: {kept:?}");
    // A crawler reads every other page once: all served, none kept, nothing evicted.
    for i in 60..300 {
        let (state, body) = serve(&e, &format!("/blog/p{i}")).await;
        assert!(state == "HIT" && body.contains(&format!("page /blog/p{i} v1")));
    }
    assert!(held(&e, (60..300).map(|i| format!("/blog/p{i}"))).is_empty());
    assert_eq!(held(&e, kept.iter().cloned()), kept);
    // A page read again soon after is kept.
    serve(&e, "/blog/p299").await;
    assert!(e.hot().peek("/blog/p299").is_some());
    assert_eq!(origin.count("/blog/p299"), 1);
}

/// The hit loops read pages without waiting (`lookup_now`), on the same terms: from the
/// tier, else from the store, kept once the tier is full only when read again soon after.
#[tokio::test(start_paused = true)]
async fn pages_read_without_waiting_are_kept_on_the_tiers_terms() {
    let origin = Origin::start().await;
    let e = beside_300_stored_pages(&origin).await;
    let now = |key: &str| e.lookup_now(key).expect("the memory store never waits");
    for i in 0..300 {
        let page = now(&format!("/blog/p{i}")).expect("stored");
        assert!(body(&page).contains(&format!("page /blog/p{i} v1")));
    }
    let kept = held(&e, (0..300).map(|i| format!("/blog/p{i}")));
    assert!(kept.len() > 20, "the tier filled: {kept:?}");
    // Once full, pages read once are sent and not kept, evicting nothing.
    assert!(held(&e, (100..300).map(|i| format!("/blog/p{i}"))).is_empty());
    assert_eq!(held(&e, kept.iter().cloned()), kept);
    assert!(now("/blog/p299").is_some());
    assert!(
        e.hot().peek("/blog/p299").is_some(),
        "read again soon after: kept"
    );
    assert!(now("/blog/none").is_none(), "not stored");
    assert_eq!(origin.count("/blog/p299"), 1);
}

/// A regeneration that changed no body is committed a moment later, with others, while
/// the stored page it replaces would still be served after a restart; at once when an
/// on-demand expiry has made that page unservable (a crash must not turn it into a MISS).
/// On the real clock: the embedded store's writer is a thread.
#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_regeneration_is_committed_later_only_while_the_old_page_stays_servable() {
    let origin = Origin::start().await;
    origin.set(
        "/blog/a",
        Spec {
            body: Some("<p>the same every time</p>".into()),
            ..Default::default()
        },
    );
    let text = CONFIG.replace("expire = 600", "expire = \"365d\"");
    let overrides = Overrides {
        origin: Some(origin.url()),
        ..Default::default()
    };
    let cfg = isr::config::parse("<test>", &text, &overrides).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn isr::store::Store> =
        Arc::new(isr::store::RedbStore::open(dir.path()).unwrap());
    let e = Engine::new(cfg, store.clone()).await.unwrap();
    let stored = async || store.get_meta("/blog/a").await.unwrap().unwrap().generated;
    let regenerate = async |expire: bool, fetches: usize| {
        e.revalidate(&Revalidation {
            tags: vec!["post-a".into()],
            expire,
            eager: true,
            ..Default::default()
        })
        .await
        .unwrap();
        common::eventually("the page is regenerated", async || {
            origin.count("/blog/a") == fetches && serve(&e, "/blog/a").await.0 == "HIT"
        })
        .await;
    };
    assert_eq!(serve(&e, "/blog/a").await.0, "MISS");
    let first = stored().await;
    tokio::time::sleep(Duration::from_millis(5)).await;

    // Revalidated to serve stale: the stored page stays servable, so the commit waits.
    let started = std::time::Instant::now();
    regenerate(false, 2).await;
    let now_stored = stored().await;
    if started.elapsed() < isr::store::SOON {
        assert_eq!(now_stored, first, "the rewrite waits for a later commit");
    }
    store.sync().await.unwrap();
    let second = stored().await;
    assert!(second > first, "sync commits it");
    tokio::time::sleep(Duration::from_millis(5)).await;

    // Expired on demand: after a crash the stored page would be a MISS, so at once.
    regenerate(true, 3).await;
    assert!(stored().await > second, "committed with the regeneration");
}
