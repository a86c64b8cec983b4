//! Prebuilding: `[prebuild]` paths and the origin's sitemap fetched at start (with
//! `/_isr/health?ready`), and `isr prebuild` for deploy pipelines.

mod common;

use std::time::Duration;

use common::{eventually, Isr, Origin, Spec, CONFIG};

fn sitemap(origin: &Origin) -> String {
    let base = origin.url();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc>{base}/blog/low</loc><priority>0.1</priority></url>
  <url><loc>{base}/blog/high</loc><priority>0.9</priority></url>
  <url><loc>https://elsewhere.example/blog/foreign</loc><priority>1.0</priority></url>
</urlset>"#
    )
}

/// Runs `isr prebuild` with `config` against `origin`, storing into `data`.
fn isr_prebuild(
    config: &std::path::Path,
    origin: &Origin,
    data: &std::path::Path,
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_isr"))
        .args(["prebuild", "--config"])
        .arg(config)
        .args(["--origin", &origin.url(), "--data-dir"])
        .arg(data)
        .env("ISR_LOG", "warn")
        .output()
        .unwrap()
}

fn xml(body: String) -> Spec {
    Spec {
        headers: vec![("content-type".into(), "application/xml".into())],
        body: Some(body),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prebuild_fetches_listed_paths_and_the_best_sitemap_urls_before_ready() {
    let origin = Origin::start().await;
    origin.set("/sitemap.xml", xml(sitemap(&origin)));
    origin.set(
        "/blog/slow",
        Spec {
            delay: Duration::from_millis(800),
            ..Default::default()
        },
    );
    let config = format!(
        "{CONFIG}\n[prebuild]\npaths = [\"/blog/slow\"]\nsitemap = \"/sitemap.xml\"\nlimit = 1\n"
    );
    let isr = Isr::start_with(&origin, &config).await;
    // Serving starts at once; readiness waits for the prebuild.
    assert_eq!(isr.get("/_isr/health?ready").await.unwrap().status, 503);
    eventually("the prebuild finishes", async || {
        isr.get("/_isr/health?ready").await.unwrap().status == 200
    })
    .await;
    assert_eq!(isr.get("/blog/slow").await.unwrap().cache(), "HIT");
    assert_eq!(isr.get("/blog/high").await.unwrap().cache(), "HIT");
    // Over the limit (lower priority), and another host: not prebuilt.
    assert_eq!(isr.get("/blog/low").await.unwrap().cache(), "MISS");
    assert_eq!(origin.count("/blog/foreign"), 0);
    assert_eq!(origin.count("/blog/slow"), 1);
    assert_eq!(origin.count("/blog/high"), 1);
    // Prebuilding is not a visitor.
    let m = isr
        .request(
            "GET",
            "/_isr/metrics",
            &[("authorization", "Bearer test-secret")],
            "",
        )
        .await
        .unwrap()
        .text();
    assert!(m.contains("isr_requests_total{state=\"MISS\"} 1\n"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_sitemap_is_skipped_and_the_listed_paths_still_prebuild() {
    for bad in [
        Spec {
            status: Some(404),
            ..Default::default()
        },
        xml("User-agent: *\nDisallow:".into()),
    ] {
        let origin = Origin::start().await;
        origin.set("/sitemap.xml", bad);
        let config =
            format!("{CONFIG}\n[prebuild]\npaths = [\"/blog/home\"]\nsitemap = \"/sitemap.xml\"\n");
        let isr = Isr::start_with(&origin, &config).await;
        eventually("the prebuild finishes", async || {
            isr.get("/_isr/health?ready").await.unwrap().status == 200
        })
        .await;
        assert_eq!(isr.get("/blog/home").await.unwrap().cache(), "HIT");
        assert_eq!(isr.get("/blog/other").await.unwrap().cache(), "MISS");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn isr_prebuild_fills_the_store_once_and_skips_fresh_pages_the_next_time() {
    let origin = Origin::start().await;
    origin.set("/sitemap.xml", xml(sitemap(&origin)));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("isr.toml");
    std::fs::write(
        &config,
        format!("{CONFIG}\n[prebuild]\npaths = [\"/blog/a\", \"/blog/a\"]\nsitemap = \"/sitemap.xml\"\n"),
    )
    .unwrap();
    let run = || isr_prebuild(&config, &origin, &data);
    let out = tokio::task::block_in_place(run);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("prebuilt 3 pages: 3 stored, 0 already fresh, 0 failed"),
        "{text}"
    );
    let again = tokio::task::block_in_place(run);
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.contains("prebuilt 3 pages: 0 stored, 3 already fresh"),
        "{text}"
    );
    // A server started on that store serves them without asking the origin.
    let isr = Isr::spawn(&origin, &data, &config).await;
    for p in ["/blog/a", "/blog/high", "/blog/low"] {
        assert_eq!(isr.get(p).await.unwrap().cache(), "HIT", "{p}");
        assert_eq!(origin.count(p), 1, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dynamic_false_route_serves_only_known_paths_and_404s_the_rest_without_the_origin() {
    let origin = Origin::start().await;
    let base = origin.url();
    origin.set(
        "/sitemap.xml",
        xml(format!(
            "<urlset><url><loc>{base}/docs/from-sitemap</loc></url></urlset>"
        )),
    );
    origin.set(
        "/404",
        Spec {
            status: Some(404),
            body: Some("<h1>custom not found</h1>".into()),
            ..Default::default()
        },
    );
    let config = format!(
        "{CONFIG}\n[[route]]\nmatch = \"/docs/{{*path}}\"\ndynamic = false\n\
         [prebuild]\npaths = [\"/docs/listed\", \"/404\"]\nsitemap = \"/sitemap.xml\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let (data, config_path) = (dir.path().join("data"), dir.path().join("isr.toml"));
    std::fs::write(&config_path, &config).unwrap();
    let isr = Isr::spawn(&origin, &data, &config_path).await;
    eventually("the prebuild finishes", async || {
        isr.get("/_isr/health?ready").await.unwrap().status == 200
    })
    .await;
    for known in ["/docs/listed", "/docs/from-sitemap"] {
        let r = isr.get(known).await.unwrap();
        assert_eq!((r.status, r.cache()), (200, "HIT"), "{known}");
    }
    // Unknown: 404 with the origin's cached /404 page, and the origin never asked.
    let r = isr.get("/docs/unknown").await.unwrap();
    assert_eq!(r.status, 404);
    assert!(r.text().contains("custom not found"));
    assert_eq!(origin.count("/docs/unknown"), 0);
    // Neither a forced regeneration nor the API fetches it.
    let r = isr
        .request(
            "GET",
            "/docs/unknown",
            &[("x-prerender-revalidate", common::SECRET)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(origin.count("/docs/unknown"), 0);
    let r = isr
        .revalidate(serde_json::json!({"path": "/docs/unknown"}))
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = isr
        .revalidate(serde_json::json!({"path": "/docs/from-sitemap"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The known set survives a restart (the prebuilt pages are in the store), even with
    // the sitemap gone.
    let (data, config_path, dir) = isr.kill();
    origin.set(
        "/sitemap.xml",
        Spec {
            status: Some(500),
            ..Default::default()
        },
    );
    let isr = Isr::spawn(&origin, &data, &config_path).await;
    assert_eq!(isr.get("/docs/from-sitemap").await.unwrap().status, 200);
    assert_eq!(isr.get("/docs/unknown").await.unwrap().status, 404);
    assert_eq!(origin.count("/docs/unknown"), 0);
    // Each prebuild refreshes the known set: a page the sitemap no longer lists is unknown
    // again once that prebuild is done (the slow sitemap leaves time to ask for it first,
    // so it is in memory and the hit lane must refuse it too), and a newly listed one is
    // known.
    let (data, config_path, _) = isr.kill();
    let mut slow = xml(format!(
        "<urlset><url><loc>{base}/docs/new</loc></url></urlset>"
    ));
    slow.delay = Duration::from_millis(500);
    origin.set("/sitemap.xml", slow);
    let isr = Isr::spawn(&origin, &data, &config_path).await;
    assert_eq!(isr.get("/docs/from-sitemap").await.unwrap().status, 200);
    eventually("the prebuild finishes", async || {
        isr.get("/_isr/health?ready").await.unwrap().status == 200
    })
    .await;
    let fetched = origin.count("/docs/from-sitemap");
    let r = isr.get("/docs/from-sitemap").await.unwrap();
    assert_eq!(r.status, 404);
    assert!(r.text().contains("custom not found"));
    assert_eq!(origin.count("/docs/from-sitemap"), fetched);
    let r = isr
        .revalidate(serde_json::json!({"path": "/docs/from-sitemap"}))
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    for known in ["/docs/new", "/docs/listed"] {
        assert_eq!(isr.get(known).await.unwrap().status, 200, "{known}");
    }
    drop(dir);
}

/// A stale page that `isr prebuild` regenerates unchanged is a rewrite the store may hold
/// back for a moment: it is committed before the command exits.
#[tokio::test(flavor = "multi_thread")]
async fn isr_prebuild_commits_unchanged_regenerations_before_it_exits() {
    let origin = Origin::start().await;
    origin.set(
        "/fast/p",
        Spec {
            body: Some("<p>unchanged</p>".into()),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("isr.toml");
    std::fs::write(
        &config,
        format!("{CONFIG}\n[prebuild]\npaths = [\"/fast/p\"]\n"),
    )
    .unwrap();
    let run = || {
        let out = isr_prebuild(&config, &origin, &data);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    let generated = || {
        let rt = tokio::runtime::Handle::current();
        let store = isr::store::RedbStore::open(&data).unwrap();
        let meta = rt.block_on(isr::store::Store::get_meta(&store, "/fast/p"));
        meta.unwrap().unwrap().generated
    };
    tokio::task::block_in_place(run);
    let first = tokio::task::block_in_place(generated);
    tokio::time::sleep(Duration::from_millis(1100)).await; // /fast/ pages: revalidate = 1
    tokio::task::block_in_place(run);
    assert_eq!(origin.count("/fast/p"), 2, "the stale page was regenerated");
    assert!(
        tokio::task::block_in_place(generated) > first,
        "the unchanged regeneration was committed"
    );
}
