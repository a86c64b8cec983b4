//! Several isr nodes sharing one cache through a real `redis-server`: the shared store
//! adapter itself, cluster-wide single-flight, invalidation fan-out and resync, and
//! nodes that keep serving while Redis is gone.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, send, Isr, Origin, Redis, Spec, CONFIG};
use isr::entry::{Entry, Meta};
use isr::policy::Mark;
use isr::store::{Lease, RedisStore, Store};

fn cluster_config(redis: &Redis) -> String {
    format!("{CONFIG}\n[redis]\nurl = \"{}\"\n", redis.url())
}

async fn nodes(origin: &Origin, redis: &Redis, n: usize) -> Vec<Isr> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Isr::start_with(origin, &cluster_config(redis)).await);
    }
    out
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn entry(generated: u64, body: &str, tags: &[&str]) -> Arc<Entry> {
    let meta = Meta {
        status: 200,
        headers: vec![("content-type".into(), "text/html".into())],
        generated,
        revalidate: Some(60_000),
        expire: 86_400_000,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        hash: isr::entry::hash(body.as_bytes()),
        br: true,
        gzip: false,
        bytes: 0,
    };
    let br = Some(Bytes::from(format!("br:{body}")));
    Arc::new(Entry::new(meta, Bytes::from(body.to_string()), br, None))
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_store_keeps_entries_tags_marks_and_the_newer_generation() {
    let redis = Redis::start();
    let store = RedisStore::connect(&redis.url(), "t1").unwrap();
    assert!(store.get("/a").await.unwrap().is_none());
    assert!(store
        .put("/a", entry(100, "one", &["x", "y"]))
        .await
        .unwrap());
    let got = store.get("/a").await.unwrap().unwrap();
    assert_eq!(got.identity(), "one");
    assert_eq!(got.br().as_deref(), Some(&b"br:one"[..]));
    assert_eq!(got.gzip(), None);
    assert_eq!(got.meta.tags, ["x", "y"]);
    // An older fetch never replaces a newer page; a newer one moves the tag index.
    assert!(!store.put("/a", entry(99, "old", &["x"])).await.unwrap());
    assert!(store.put("/a", entry(101, "two", &["y"])).await.unwrap());
    assert_eq!(store.get("/a").await.unwrap().unwrap().identity(), "two");
    assert!(store.keys_with_tag("x").await.unwrap().is_empty());
    assert_eq!(store.keys_with_tag("y").await.unwrap(), ["/a"]);
    store.put("/a/b?q=1", entry(5, "deep", &[])).await.unwrap();
    store.put("/ab", entry(5, "other", &[])).await.unwrap();
    assert_eq!(
        store.keys_with_prefix("/a").await.unwrap(),
        ["/a", "/a/b?q=1", "/ab"]
    );
    assert_eq!(store.get_meta("/ab").await.unwrap().unwrap().generated, 5);
    // Listing pages by cursor, within a prefix.
    let keys = |page: Vec<(String, Meta)>| page.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list("/a", None, 2).await.unwrap()),
        ["/a", "/a/b?q=1"]
    );
    assert_eq!(
        keys(store.list("/a", Some("/a/b?q=1"), 2).await.unwrap()),
        ["/ab"]
    );
    assert_eq!(
        keys(store.list("/a/", None, 10).await.unwrap()),
        ["/a/b?q=1"]
    );
    assert_eq!(store.stats().await.unwrap().entries, 3);
    assert_eq!(
        store.keys_with_tag_after("y", None, 10).await.unwrap(),
        ["/a"]
    );
    // Marks merge; a second prefix in the same Redis sees none of this.
    store.put_mark("t:x", Mark::at(10, false)).await.unwrap();
    store.put_mark("t:x", Mark::at(20, true)).await.unwrap();
    store.put_mark("t:x", Mark::at(15, false)).await.unwrap();
    let marks = store.load_marks().await.unwrap();
    assert_eq!(marks, [("t:x".to_string(), Mark::at(20, true))]);
    let other = RedisStore::connect(&redis.url(), "t2").unwrap();
    assert!(other.get("/a").await.unwrap().is_none());
    assert!(other.load_marks().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_is_held_by_one_node_at_a_time_and_expires_when_its_holder_dies() {
    let redis = Redis::start();
    let a = RedisStore::connect(&redis.url(), "lease").unwrap();
    let b = RedisStore::connect(&redis.url(), "lease").unwrap();
    let held = a.lease("/p").await.unwrap();
    assert!(matches!(held, Lease::Held(_)));
    assert!(matches!(b.lease("/p").await.unwrap(), Lease::Elsewhere));
    // Released on drop: the other node may now take it.
    drop(held);
    eventually("the lease is released", async || {
        matches!(b.lease("/p").await.unwrap(), Lease::Held(_))
    })
    .await;
    // A holder that dies (its renewals stop) loses the lease when it expires.
    redis
        .cli(&["SET", "lease:lease:/q", "dead-node", "PX", "300"])
        .unwrap();
    assert!(matches!(a.lease("/q").await.unwrap(), Lease::Elsewhere));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(a.lease("/q").await.unwrap(), Lease::Held(_)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_request_stampede_across_three_nodes_makes_one_origin_request() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    origin.set(
        "/blog/hot",
        Spec {
            delay: Duration::from_millis(300),
            ..Default::default()
        },
    );
    let nodes = nodes(&origin, &redis, 3).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let url = nodes[i % 3].url("/blog/hot");
        tasks.push(tokio::spawn(async move {
            send("GET", &url, &[], "").await.unwrap()
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    assert_eq!(origin.count("/blog/hot"), 1);
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.body == replies[0].body));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revalidation_on_one_node_makes_the_page_stale_on_every_node_and_regenerates_once() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    let nodes = nodes(&origin, &redis, 3).await;
    assert_eq!(nodes[0].get("/blog/b").await.unwrap().cache(), "MISS");
    for n in &nodes[1..] {
        // From Redis into this node's memory, then from memory.
        assert_eq!(n.get("/blog/b").await.unwrap().cache(), "HIT");
        assert_eq!(n.get("/blog/b").await.unwrap().cache(), "HIT");
    }
    let r = nodes[0]
        .revalidate(serde_json::json!({"tag": "post-b"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for n in &nodes[1..] {
        eventually("the revalidation reaches every node", async || {
            n.get("/blog/b").await.unwrap().cache() == "STALE"
        })
        .await;
    }
    // Every node serves the regenerated page, and the cluster asked the origin once.
    for n in &nodes {
        eventually("every node serves the new page", async || {
            let r = n.get("/blog/b").await.unwrap();
            r.cache() == "HIT" && r.text().contains("v2")
        })
        .await;
    }
    assert_eq!(origin.count("/blog/b"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_missed_invalidations_resynchronises_and_never_serves_them_as_hit() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    let nodes = nodes(&origin, &redis, 2).await;
    for path in ["/blog/c", "/blog/d"] {
        nodes[0].get(path).await.unwrap();
        assert_eq!(nodes[1].get(path).await.unwrap().cache(), "HIT");
    }
    // A revalidation recorded while the nodes' subscriptions were away: written to Redis
    // with its version bump, never published.
    let mark = format!("{} 0", unix_ms());
    redis
        .cli(&["HSET", "isr:marks", "t:post-c", &mark])
        .unwrap();
    redis.cli(&["INCR", "isr:version"]).unwrap();
    assert_eq!(nodes[1].get("/blog/c").await.unwrap().cache(), "HIT");
    // The subscription drops and comes back: the node reads the whole clock again.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap();
    // Applied means: not a HIT, or a HIT of the regenerated page (another node may
    // have regenerated it first).
    let applied = async |n: &Isr, path: &str| {
        let r = n.get(path).await.unwrap();
        r.cache() != "HIT" || r.text().contains("v2")
    };
    for n in &nodes {
        eventually("a resubscribed node applies what it missed", async || {
            applied(n, "/blog/c").await
        })
        .await;
    }
    // A gap in the versions (one mark never published, the next one published) also
    // makes nodes resynchronise.
    let mark = format!("{} 0", unix_ms());
    redis
        .cli(&["HSET", "isr:marks", "t:post-d", &mark])
        .unwrap();
    redis.cli(&["INCR", "isr:version"]).unwrap();
    nodes[0]
        .revalidate(serde_json::json!({"tag": "unrelated"}))
        .await;
    eventually("a version gap triggers a resync", async || {
        applied(&nodes[1], "/blog/d").await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_keep_serving_while_redis_is_down_and_converge_when_it_returns() {
    let mut redis = Redis::start();
    let origin = Origin::start().await;
    let nodes = nodes(&origin, &redis, 3).await;
    for i in 0..10 {
        let path = format!("/blog/p{i}");
        for n in &nodes {
            assert_eq!(n.get(&path).await.unwrap().status, 200);
        }
    }
    // Load on every node; Redis dies in the middle of it. Cached pages: no errors, no
    // origin traffic.
    let before = origin.count("/blog/p3");
    let urls: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| (0..10).map(|i| n.url(&format!("/blog/p{i}"))).collect())
        .collect();
    let load = tokio::spawn(async move {
        let mut replies = Vec::new();
        for round in 0..60 {
            for (i, node) in urls.iter().enumerate() {
                let r = send("GET", &node[(round + i) % 10], &[], "").await.unwrap();
                replies.push((r.status, r.cache().to_string()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        replies
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.stop();
    let replies = load.await.unwrap();
    assert_eq!(replies.len(), 180);
    assert!(
        replies.iter().all(|(s, c)| *s == 200 && c == "HIT"),
        "{replies:?}"
    );
    assert_eq!(origin.count("/blog/p3"), before);
    // A page never seen before: served from the origin.
    let r = nodes[1].get("/blog/new").await.unwrap();
    assert_eq!((r.status, r.cache()), (200, "MISS"));
    // A revalidation that cannot be recorded says so.
    let r = nodes[0]
        .revalidate(serde_json::json!({"tag": "post-p1"}))
        .await;
    assert_eq!(r.status, 500, "{}", r.text());
    // Redis returns (empty): revalidations flow between nodes again.
    redis.resume();
    eventually(
        "a revalidation on node A reaches node C again",
        async || {
            let r = nodes[0]
                .revalidate(serde_json::json!({"tag": "post-p2"}))
                .await;
            r.status == 200 && nodes[2].get("/blog/p2").await.unwrap().cache() == "STALE"
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_regeneration_longer_than_the_lease_keeps_it_by_renewing() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    // Slower than the 3 s lease: without renewals a second node would fetch too.
    origin.set(
        "/blog/slow",
        Spec {
            delay: Duration::from_millis(4500),
            ..Default::default()
        },
    );
    let config =
        cluster_config(&redis).replace("origin_timeout = \"2s\"", "origin_timeout = \"10s\"");
    let a = Isr::start_with(&origin, &config).await;
    let b = Isr::start_with(&origin, &config).await;
    let first = tokio::spawn({
        let url = a.url("/blog/slow");
        async move { send("GET", &url, &[], "").await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let second = b.get("/blog/slow").await.unwrap();
    let first = first.await.unwrap();
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.body, second.body);
    assert_eq!(origin.count("/blog/slow"), 1);
}

#[tokio::test]
async fn data_cache_values_are_fetched_once_across_nodes_and_revalidated_on_every_node() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let redis = Redis::start();
    let node = || async {
        isr::layer::Isr::builder()
            .redis(&redis.url())
            .build()
            .await
            .unwrap()
    };
    let (a, b) = (node().await, node().await);
    let calls = Arc::new(AtomicUsize::new(0));
    let read = |isr: &isr::layer::Isr, value: &'static str| {
        let (data, calls) = (isr.data(), calls.clone());
        async move {
            data.get_or_fetch("menu", &["nav"], "hours", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, String>(value.to_string())
            })
            .await
            .unwrap()
        }
    };
    // Both nodes miss at once: one fetch between them, through the store's lease.
    let (from_a, from_b) = tokio::join!(read(&a, "first"), read(&b, "first"));
    assert_eq!((from_a.as_str(), from_b.as_str()), ("first", "first"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // update_tag on one node expires the value on the other too.
    a.update_tag("nav").await.unwrap();
    eventually("node b sees the revalidation", async || {
        read(&b, "second").await == "second"
    })
    .await;
    assert_eq!(
        read(&a, "third").await,
        "second",
        "node a reads b's new value"
    );
}

#[tokio::test]
async fn pages_through_the_layer_are_rendered_once_across_nodes() {
    use axum::{routing::get, Router};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{Layer, ServiceExt};
    let redis = Redis::start();
    let renders = Arc::new(AtomicUsize::new(0));
    let url = redis.url();
    let node = || {
        let (renders, url) = (renders.clone(), url.clone());
        async move {
            let isr = isr::layer::Isr::builder()
                .redis(&url)
                .route(
                    isr::layer::Route::new("/news")
                        .revalidate(60)
                        .tags(["news"]),
                )
                .build()
                .await
                .unwrap();
            let router = Router::new().route(
                "/news",
                get(move || async move {
                    renders.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "<h1>News</h1>"
                }),
            );
            let app = isr.layer().layer(router);
            (isr, app)
        }
    };
    let ((a, app_a), (_b, app_b)) = (node().await, node().await);
    let get = |app: &isr::layer::IsrService<Router>| {
        let app = app.clone();
        async move {
            let req = http::Request::get("/news")
                .body(axum::body::Body::empty())
                .unwrap();
            let res = app.oneshot(req).await.unwrap();
            res.headers()["x-isr-cache"].to_str().unwrap().to_string()
        }
    };
    // Both nodes miss at once: one render between them.
    let (x, y) = tokio::join!(get(&app_a), get(&app_b));
    assert_eq!(renders.load(Ordering::SeqCst), 1, "{x} {y}");
    assert_eq!(get(&app_b).await, "HIT");
    // A revalidation on one node reaches the other.
    a.revalidate_tag("news").await.unwrap();
    eventually("node b sees the revalidation", async || {
        get(&app_b).await == "STALE"
    })
    .await;
}

/// A read-your-writes revalidation (`"mode": "expire"`, eager) while another node holds
/// the page's lease and then dies without storing it: the visitor who waits for the page
/// gets the new one. The eager regeneration waited for the lease; a background fetch then
/// ends, but not once a visitor has joined it (it used to end, and the visitor got the
/// expired copy as STALE).
#[tokio::test(flavor = "multi_thread")]
async fn a_visitor_who_joins_a_regeneration_that_waited_for_a_dead_nodes_lease_gets_the_new_page() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    let node = Isr::start_with(&origin, &cluster_config(&redis)).await;
    assert_eq!(node.get("/blog/lease").await.unwrap().cache(), "MISS");
    // Another node takes the page's lease, and dies: the lease lapses in 1.5 s.
    redis
        .cli(&["SET", "isr:lease:/blog/lease", "dead-node", "PX", "1500"])
        .unwrap();
    let body = serde_json::json!({"path": "/blog/lease", "mode": "expire", "eager": true});
    assert_eq!(node.revalidate(body).await.status, 200);
    // The eager regeneration is waiting for the lease now; a visitor joins it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = node.get("/blog/lease").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.cache() != "STALE" && r.text().contains("v2"),
        "the visitor got {} {}",
        r.cache(),
        r.text()
    );
    assert_eq!(origin.count("/blog/lease"), 2);
}
