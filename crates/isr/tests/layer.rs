//! The tower layer around an axum app, and the data cache, called in-process with
//! tower's `oneshot` (tokio's paused clock where time matters).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Router};
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use isr::data::{CacheLife, DataError};
use isr::layer::{Isr, IsrService, Route};
use tower::{Layer, ServiceExt};

/// A blog: posts rendered from a title that the edit form changes.
#[derive(Default)]
struct Blog {
    renders: AtomicUsize,
    title: Mutex<String>,
    failing: std::sync::atomic::AtomicBool,
    slow: std::sync::atomic::AtomicBool,
}

type App = IsrService<Router>;

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn cache(&self) -> &str {
        self.headers
            .get("x-isr-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    }
}

async fn send(app: &App, req: Request<axum::body::Body>) -> Reply {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get_page(app: &App, path: &str) -> Reply {
    send(
        app,
        Request::get(path).body(axum::body::Body::empty()).unwrap(),
    )
    .await
}

async fn post_form(app: &App, path: &str, body: &str) -> Reply {
    let req = Request::post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    send(app, req).await
}

async fn post_page(State(blog): State<Arc<Blog>>, Path(slug): Path<String>) -> impl IntoResponse {
    blog.renders.fetch_add(1, Ordering::SeqCst);
    if blog.slow.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if blog.failing.load(Ordering::SeqCst) {
        return (http::StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    let title = blog.title.lock().unwrap().clone();
    format!("<h1>{title}</h1><p>{slug}</p>").into_response()
}

/// The edit form: saves the title, then revalidates, as a CMS handler would.
async fn edit(
    State(blog): State<Arc<Blog>>,
    Extension(isr): Extension<Isr>,
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> &'static str {
    *blog.title.lock().unwrap() = form["title"].clone();
    if form.get("mode").map(String::as_str) == Some("update") {
        isr.update_tag("posts").await.unwrap();
    } else {
        isr.revalidate_tag("posts").await.unwrap();
    }
    "saved"
}

fn router(blog: &Arc<Blog>) -> Router {
    Router::new()
        .route("/blog/{slug}", get(post_page))
        .route("/edit", post(edit))
        .route(
            "/account",
            get(|| async { ([("set-cookie", "session=1")], "yours only") }),
        )
        .route(
            "/tagged",
            get(|State(blog): State<Arc<Blog>>| async move {
                blog.renders.fetch_add(1, Ordering::SeqCst);
                (
                    [("x-isr-tags", "menu"), ("x-isr-revalidate", "5")],
                    "tagged",
                )
            }),
        )
        .with_state(blog.clone())
}

async fn blog_app() -> (Isr, App, Arc<Blog>) {
    let isr = Isr::builder()
        .memory_store()
        .secret("s3cret")
        .route(
            Route::new("/blog/{slug}")
                .revalidate(60)
                .tags(["posts", "post:{slug}"]),
        )
        .route(Route::new("/edit").cache(false))
        .build()
        .await
        .unwrap();
    let blog = Arc::new(Blog::default());
    *blog.title.lock().unwrap() = "First".into();
    let app = isr.layer().layer(router(&blog));
    (isr, app, blog)
}

#[tokio::test(start_paused = true)]
async fn pages_from_handlers_are_cached_then_regenerated_after_their_window() {
    let (_isr, app, blog) = blog_app().await;
    let miss = get_page(&app, "/blog/hello").await;
    assert_eq!((miss.status, miss.cache()), (200, "MISS"));
    assert_eq!(miss.body, "<h1>First</h1><p>hello</p>");
    assert!(miss.headers["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("public, s-maxage=60"));
    let hit = get_page(&app, "/blog/hello").await;
    assert_eq!(
        (hit.cache(), hit.body.as_str()),
        ("HIT", miss.body.as_str())
    );
    assert_eq!(blog.renders.load(Ordering::SeqCst), 1);

    *blog.title.lock().unwrap() = "Second".into();
    tokio::time::sleep(Duration::from_secs(61)).await;
    let stale = get_page(&app, "/blog/hello").await;
    assert_eq!(
        (stale.cache(), stale.body.as_str()),
        ("STALE", miss.body.as_str())
    );
    for _ in 0..100 {
        if blog.renders.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fresh = get_page(&app, "/blog/hello").await;
    assert_eq!(
        (fresh.cache(), fresh.body.as_str()),
        ("HIT", "<h1>Second</h1><p>hello</p>")
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_render_the_page_once() {
    let (_isr, app, blog) = blog_app().await;
    blog.slow.store(true, Ordering::SeqCst);
    let replies = futures_join_all((0..50).map(|_| {
        let app = app.clone();
        async move { get_page(&app, "/blog/rush").await }
    }))
    .await;
    assert_eq!(blog.renders.load(Ordering::SeqCst), 1);
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.body == "<h1>First</h1><p>rush</p>"));
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn an_edit_form_revalidates_by_tag_and_update_tag_reads_its_own_write() {
    let (_isr, app, blog) = blog_app().await;
    assert_eq!(get_page(&app, "/blog/a").await.cache(), "MISS");
    // The form is a POST (never cached) through the same service.
    let saved = post_form(&app, "/edit", "title=Edited").await;
    assert_eq!(
        (saved.status, saved.body.as_str(), saved.cache()),
        (200, "saved", "BYPASS")
    );
    let stale = get_page(&app, "/blog/a").await;
    assert_eq!(
        (stale.cache(), stale.body.as_str()),
        ("STALE", "<h1>First</h1><p>a</p>")
    );

    let saved = post_form(&app, "/edit", "title=Now&mode=update").await;
    assert_eq!(saved.status, 200);
    let now = get_page(&app, "/blog/a").await;
    assert_eq!(
        (now.cache(), now.body.as_str()),
        ("MISS", "<h1>Now</h1><p>a</p>")
    );
    assert!(blog.renders.load(Ordering::SeqCst) >= 2);
}

#[tokio::test(start_paused = true)]
async fn response_headers_set_tags_and_window_and_uncacheable_answers_pass_through() {
    let (isr, app, blog) = blog_app().await;
    let first = get_page(&app, "/tagged").await;
    assert_eq!(first.cache(), "MISS");
    // The control headers are for isr only.
    assert!(first.headers.get("x-isr-tags").is_none());
    assert!(first.headers.get("x-isr-revalidate").is_none());
    assert!(first.headers["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("public, s-maxage=5"));
    assert_eq!(get_page(&app, "/tagged").await.cache(), "HIT");
    isr.revalidate_tag("menu").await.unwrap();
    assert_eq!(get_page(&app, "/tagged").await.cache(), "STALE");
    assert!(blog.renders.load(Ordering::SeqCst) >= 1);

    // A response with Set-Cookie goes to its visitor only, every time.
    for _ in 0..2 {
        let mine = get_page(&app, "/account").await;
        assert_eq!((mine.cache(), mine.body.as_str()), ("BYPASS", "yours only"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_handler_never_replaces_a_good_page() {
    let (_isr, app, blog) = blog_app().await;
    assert_eq!(get_page(&app, "/blog/ok").await.status, 200);
    blog.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(61)).await;
    for _ in 0..3 {
        let r = get_page(&app, "/blog/ok").await;
        assert_eq!((r.status, r.cache()), (200, "STALE"));
        assert_eq!(r.body, "<h1>First</h1><p>ok</p>");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A page never stored and failing: the app's error, not stored.
    let missing = get_page(&app, "/blog/never").await;
    assert_eq!((missing.status, missing.cache()), (500, "MISS"));
}

#[tokio::test]
async fn the_revalidation_api_is_served_by_the_layer() {
    let (_isr, app, _blog) = blog_app().await;
    assert_eq!(get_page(&app, "/blog/api").await.cache(), "MISS");
    let req = |secret: &str| {
        Request::post("/_isr/revalidate")
            .header("authorization", format!("Bearer {secret}"))
            .body(axum::body::Body::from(r#"{"tag": "post:api"}"#))
            .unwrap()
    };
    let refused = send(&app, req("wrong")).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    let ok = send(&app, req("s3cret")).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("\"revalidated\":true"), "{}", ok.body);
    assert_eq!(get_page(&app, "/blog/api").await.cache(), "STALE");
    assert_eq!(get_page(&app, "/_isr/health").await.body, "ok");
}

#[tokio::test]
async fn pages_survive_a_restart_in_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let blog = Arc::new(Blog::default());
    *blog.title.lock().unwrap() = "Kept".into();
    for round in 0..2 {
        let isr = Isr::builder()
            .data_dir(dir.path())
            .route(Route::new("/blog/{slug}").revalidate(600))
            .build()
            .await
            .unwrap();
        let app = isr.layer().layer(router(&blog));
        let r = get_page(&app, "/blog/kept").await;
        assert_eq!(r.cache(), if round == 0 { "MISS" } else { "HIT" });
        assert_eq!(r.body, "<h1>Kept</h1><p>kept</p>");
    }
    assert_eq!(blog.renders.load(Ordering::SeqCst), 1);
}

#[tokio::test]
#[should_panic(expected = "wraps one service")]
async fn routers_layer_method_is_refused_with_a_message() {
    let isr = Isr::builder().memory_store().build().await.unwrap();
    let _ = Router::<()>::new()
        .route("/a", get(|| async { "a" }))
        .route("/b", get(|| async { "b" }))
        .layer(isr.layer());
}

#[tokio::test]
async fn builder_errors_name_the_key() {
    let err = Isr::builder()
        .memory_store()
        .route(Route::new("/blog/{slug}").tags(["post:{id}"]))
        .build()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tags") && err.contains("{id}"), "{err}");
    let err = Isr::builder()
        .memory_store()
        .route(Route::new("blog"))
        .build()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("match"), "{err}");
    let err = Isr::builder()
        .memory_store()
        .route(Route::new("/a").refresh("sometimes"))
        .build()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("refresh") && err.contains("sometimes"),
        "{err}"
    );
}

// ---- the data cache ------------------------------------------------------------------

fn counted(
    calls: &Arc<AtomicUsize>,
    value: &str,
) -> impl FnOnce() -> std::future::Ready<Result<String, String>> + Send + 'static {
    let (calls, value) = (calls.clone(), value.to_string());
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(value))
    }
}

async fn settle(calls: &AtomicUsize, want: usize) {
    for _ in 0..100 {
        if calls.load(Ordering::SeqCst) >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let the stored value land.
    tokio::time::sleep(Duration::from_millis(5)).await;
}

#[tokio::test(start_paused = true)]
async fn data_is_fresh_then_stale_while_revalidating_then_expired() {
    let isr = Isr::builder().memory_store().build().await.unwrap();
    let data = isr.data();
    let calls = Arc::new(AtomicUsize::new(0));
    let life = CacheLife {
        stale: 0,
        revalidate: Some(10_000),
        expire: 60_000,
    };
    let get = |v: &str| {
        data.get_or_fetch::<String, _, _, _>("posts", &["posts"], life, counted(&calls, v))
    };
    assert_eq!(get("v1").await.unwrap(), "v1");
    assert_eq!(get("v2").await.unwrap(), "v1", "fresh: cached");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        get("v2").await.unwrap(),
        "v1",
        "stale: the old value at once"
    );
    settle(&calls, 2).await;
    assert_eq!(
        get("v3").await.unwrap(),
        "v2",
        "refreshed in the background"
    );

    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(
        get("v4").await.unwrap(),
        "v4",
        "expired: waits for a new value"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn concurrent_reads_of_missing_data_fetch_once() {
    let isr = Isr::builder().memory_store().build().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let reads = futures_join_all((0..30).map(|_| {
        let (data, calls) = (isr.data(), calls.clone());
        async move {
            data.get_or_fetch("slow", &[], Duration::from_secs(60), move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, String>(vec![1u32, 2, 3])
            })
            .await
        }
    }))
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(reads.iter().all(|r| r.as_ref().unwrap() == &vec![1, 2, 3]));
}

#[tokio::test(start_paused = true)]
async fn a_failed_data_fetch_keeps_the_last_good_value_and_backs_off() {
    let isr = Isr::builder().memory_store().build().await.unwrap();
    let data = isr.data();
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = |calls: &Arc<AtomicUsize>| {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err::<String, _>("api down"))
        }
    };
    let life = Duration::from_secs(10);
    let read_failing = || data.get_or_fetch::<String, _, _, _>("feed", &[], life, failing(&calls));
    assert_eq!(
        data.get_or_fetch("feed", &[], life, counted(&calls, "good"))
            .await
            .unwrap(),
        "good"
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(read_failing().await.unwrap(), "good");
    settle(&calls, 2).await;
    // Backing off (3 s after the first failure): no new fetch, the good value again.
    for _ in 0..3 {
        assert_eq!(read_failing().await.unwrap(), "good");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(read_failing().await.unwrap(), "good");
    settle(&calls, 3).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Nothing cached: the error.
    let err = data
        .get_or_fetch("never", &[], life, failing(&calls))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DataError::Fetch { message, .. } if message == "api down"),
        "{err}"
    );
}

#[tokio::test]
async fn profiles_come_from_next_js_and_from_the_config() {
    let isr = Isr::builder()
        .memory_store()
        .config_toml("[cache_life.editorial]\nrevalidate = \"2m\"\nexpire = \"1d\"\n")
        .build()
        .await
        .unwrap();
    let data = isr.data();
    assert_eq!(data.life(&"hours".into()).unwrap(), CacheLife::HOURS);
    assert_eq!(CacheLife::HOURS.revalidate, Some(3_600_000));
    assert_eq!(CacheLife::HOURS.expire, 86_400_000);
    let editorial = data.life(&"editorial".into()).unwrap();
    assert_eq!(editorial.revalidate, Some(120_000));
    assert_eq!(editorial.expire, 86_400_000);
    assert_eq!(
        editorial.stale,
        CacheLife::DEFAULT.stale,
        "unset keys take the default's"
    );
    let err = data
        .get_or_fetch("x", &[], "fortnightly", || async { Ok::<_, String>(1) })
        .await
        .unwrap_err();
    assert!(matches!(err, DataError::UnknownProfile(_)), "{err}");
    assert!(
        err.to_string().contains("[cache_life.fortnightly]"),
        "{err}"
    );
}

#[tokio::test]
async fn update_tag_expires_data_so_the_writer_reads_its_write() {
    let isr = Isr::builder().memory_store().build().await.unwrap();
    let data = isr.data();
    let calls = Arc::new(AtomicUsize::new(0));
    let get = |v: &str| {
        data.get_or_fetch::<String, _, _, _>("profile", &["user:1"], "max", counted(&calls, v))
    };
    assert_eq!(get("old").await.unwrap(), "old");
    isr.revalidate_tag("user:1").await.unwrap();
    assert_eq!(
        get("new").await.unwrap(),
        "old",
        "revalidate_tag: stale once more"
    );
    settle(&calls, 2).await;
    isr.update_tag("user:1").await.unwrap();
    assert_eq!(get("newest").await.unwrap(), "newest", "update_tag: waits");
}

/// A page whose render reads cached data.
async fn menu_page(Extension(isr): Extension<Isr>) -> String {
    let menu: Vec<String> = isr
        .data()
        .get_or_fetch(
            "menu",
            &["menu", "nav"],
            Duration::from_secs(30),
            || async { Ok::<_, String>(vec!["Home".to_string(), "Blog".to_string()]) },
        )
        .await
        .unwrap();
    menu.join(" | ")
}

#[tokio::test(start_paused = true)]
async fn a_page_gets_the_tags_and_the_shortest_window_of_the_data_it_read() {
    let isr = Isr::builder()
        .memory_store()
        .route(Route::new("/home").revalidate(300).tags(["home"]))
        .build()
        .await
        .unwrap();
    let app = isr
        .layer()
        .layer(Router::new().route("/home", get(menu_page)));
    let first = get_page(&app, "/home").await;
    assert_eq!(
        (first.cache(), first.body.as_str()),
        ("MISS", "Home | Blog")
    );
    let stored = isr.engine().lookup("/home").await.unwrap();
    assert!(
        stored.meta.tags.iter().any(|t| t == "menu"),
        "{:?}",
        stored.meta.tags
    );
    assert!(
        stored.meta.tags.iter().any(|t| t == "home"),
        "{:?}",
        stored.meta.tags
    );
    // The route says 300 s; the menu, 30 s: the lowest wins, as in Next.js.
    let cc = first.headers["cache-control"].to_str().unwrap().to_string();
    assert!(cc.starts_with("public, s-maxage=30,"), "{cc}");
    assert_eq!(get_page(&app, "/home").await.cache(), "HIT");
    isr.revalidate_tag("nav").await.unwrap();
    assert_eq!(
        get_page(&app, "/home").await.cache(),
        "STALE",
        "a data tag reaches the page"
    );

    // A page with an on-demand-only window also refreshes with its data.
    let isr = Isr::builder()
        .memory_store()
        .route(Route::new("/home").revalidate_on_demand_only())
        .build()
        .await
        .unwrap();
    let app = isr
        .layer()
        .layer(Router::new().route("/home", get(menu_page)));
    let page = get_page(&app, "/home").await;
    let cc = page.headers["cache-control"].to_str().unwrap().to_string();
    assert!(cc.starts_with("public, s-maxage=30,"), "{cc}");
}

#[tokio::test]
async fn listed_pages_of_a_static_route_are_prebuilt_and_others_are_404_without_the_app() {
    let isr = Isr::builder()
        .memory_store()
        .config_toml("[prebuild]\npaths = [\"/docs/intro\"]\n")
        .route(Route::new("/docs/{*path}").dynamic(false))
        .build()
        .await
        .unwrap();
    let renders = Arc::new(AtomicUsize::new(0));
    let counted = renders.clone();
    let router = Router::new().route(
        "/docs/{*path}",
        get(move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            "a doc"
        }),
    );
    let app = isr.layer().layer(router);
    for _ in 0..200 {
        if get_page(&app, "/_isr/health?ready").await.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        renders.load(Ordering::SeqCst),
        1,
        "prebuilt once the layer wrapped the app"
    );
    let intro = get_page(&app, "/docs/intro").await;
    assert_eq!(
        (intro.status, intro.cache(), intro.body.as_str()),
        (200, "HIT", "a doc")
    );
    let unknown = get_page(&app, "/docs/unknown").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        renders.load(Ordering::SeqCst),
        1,
        "the app is not asked for unknown pages"
    );
}

#[tokio::test]
async fn a_value_whose_type_changed_is_fetched_again() {
    let isr = Isr::builder().memory_store().build().await.unwrap();
    let data = isr.data();
    let old: String = data
        .get_or_fetch("settings", &[], "max", || async {
            Ok::<_, String>("v1".to_string())
        })
        .await
        .unwrap();
    assert_eq!(old, "v1");
    // A deploy changed the type stored under the key.
    let new: Vec<u32> = data
        .get_or_fetch("settings", &[], "max", || async {
            Ok::<_, String>(vec![2])
        })
        .await
        .unwrap();
    assert_eq!(new, vec![2]);
    let again: Vec<u32> = data
        .get_or_fetch("settings", &[], "max", || async {
            Err::<Vec<u32>, _>("not called: the new value is cached")
        })
        .await
        .unwrap();
    assert_eq!(again, vec![2]);
}

#[tokio::test]
async fn revalidating_a_data_tag_regenerates_the_page_with_the_new_data() {
    let isr = Isr::builder()
        .memory_store()
        .route(Route::new("/prices").revalidate(3600))
        .build()
        .await
        .unwrap();
    let price = Arc::new(Mutex::new(10));
    let current = price.clone();
    let router = Router::new().route(
        "/prices",
        get(move |Extension(isr): Extension<Isr>| {
            let current = current.clone();
            async move {
                let p: u32 = isr
                    .data()
                    .get_or_fetch("price", &["prices"], "max", move || async move {
                        Ok::<_, String>(*current.lock().unwrap())
                    })
                    .await
                    .unwrap();
                format!("price {p}")
            }
        }),
    );
    let app = isr.layer().layer(router);
    assert_eq!(get_page(&app, "/prices").await.body, "price 10");
    *price.lock().unwrap() = 12;
    isr.revalidate_tag("prices").await.unwrap();
    let stale = get_page(&app, "/prices").await;
    assert_eq!((stale.cache(), stale.body.as_str()), ("STALE", "price 10"));
    // The regeneration does not reuse the stale value: the page shows the new price.
    let mut body = String::new();
    for _ in 0..200 {
        body = get_page(&app, "/prices").await.body;
        if body != "price 10" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(body, "price 12");
}

#[tokio::test]
async fn wrong_secrets_are_limited_per_client_address_found_by_client_ip() {
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;
    let isr = Isr::builder()
        .memory_store()
        .secret("s3cret")
        .config_toml("[limits]\nfailed_secrets_per_minute = 3\n")
        .build()
        .await
        .unwrap();
    let app = isr
        .layer()
        .client_ip(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))
        .layer(Router::new());
    let from = |ip: &str, secret: &str| {
        let mut req = Request::post("/_isr/revalidate")
            .header("authorization", format!("Bearer {secret}"))
            .body(axum::body::Body::from(r#"{"tag": "t"}"#))
            .unwrap();
        let addr: SocketAddr = format!("{ip}:4000").parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(addr));
        req
    };
    for _ in 0..3 {
        assert_eq!(send(&app, from("10.0.0.1", "guess")).await.status, 401);
    }
    // That address is now refused, even with the right secret; another one is not.
    assert_eq!(send(&app, from("10.0.0.1", "s3cret")).await.status, 429);
    assert_eq!(send(&app, from("10.0.0.2", "s3cret")).await.status, 200);
}
