//! A small blog made with axum and cached by isr's `IsrLayer`.
//!
//! - `/` lists the posts; `/posts/{slug}` shows one. Both are cached pages: the first
//!   visitor renders them, everyone after gets them from memory (`x-isr-cache: HIT`).
//! - The post list comes from the data cache (`get_or_fetch` with the tag `posts`), so
//!   the home page carries that tag without saying so.
//! - `/edit/{slug}` is an edit form (never cached). Saving calls `update_tag` for the
//!   post, so the editor sees the change on the next page view, and `revalidate_tag`
//!   for the list, which visitors get refreshed in the background.
//!
//! Run it with `cargo run -p axum-blog` and open <http://127.0.0.1:3000/>.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Form, Router};
use isr::layer::{Isr, Route};
use tower_layer::Layer;

/// The "database": posts by slug.
#[derive(Default)]
pub struct Db {
    posts: Mutex<BTreeMap<String, Post>>,
}

/// A post.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Post {
    title: String,
    body: String,
}

/// The edit form's fields.
#[derive(serde::Deserialize)]
pub struct Edit {
    title: String,
    body: String,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn home(State(db): State<Arc<Db>>, Extension(isr): Extension<Isr>) -> Response {
    // A "query" through the data cache: tagged `posts`, refreshed every minute.
    let titles = isr
        .data()
        .get_or_fetch(
            "post-titles",
            &["posts"],
            Duration::from_secs(60),
            move || async move {
                let posts = db.posts.lock().unwrap();
                Ok::<_, String>(
                    posts
                        .iter()
                        .map(|(slug, p)| (slug.clone(), p.title.clone()))
                        .collect::<Vec<_>>(),
                )
            },
        )
        .await;
    match titles {
        Ok(titles) => {
            let items: String = titles
                .iter()
                .map(|(slug, title)| {
                    format!("<li><a href=\"/posts/{slug}\">{}</a></li>", escape(title))
                })
                .collect();
            Html(format!("<h1>Blog</h1><ul>{items}</ul>")).into_response()
        }
        Err(e) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn post(State(db): State<Arc<Db>>, Path(slug): Path<String>) -> Response {
    match db.posts.lock().unwrap().get(&slug) {
        Some(p) => Html(format!(
            "<h1>{}</h1><p>{}</p><a href=\"/edit/{slug}\">edit</a>",
            escape(&p.title),
            escape(&p.body)
        ))
        .into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            Html("<h1>No such post</h1>"),
        )
            .into_response(),
    }
}

async fn edit_form(State(db): State<Arc<Db>>, Path(slug): Path<String>) -> Response {
    let p = db
        .posts
        .lock()
        .unwrap()
        .get(&slug)
        .cloned()
        .unwrap_or(Post {
            title: String::new(),
            body: String::new(),
        });
    Html(format!(
        "<form method=\"post\"><input name=\"title\" value=\"{}\"><textarea name=\"body\">{}</textarea><button>Save</button></form>",
        escape(&p.title),
        escape(&p.body)
    ))
    .into_response()
}

async fn save(
    State(db): State<Arc<Db>>,
    Extension(isr): Extension<Isr>,
    Path(slug): Path<String>,
    Form(edit): Form<Edit>,
) -> Response {
    db.posts.lock().unwrap().insert(
        slug.clone(),
        Post {
            title: edit.title,
            body: edit.body,
        },
    );
    // The editor reads their own write; the list is refreshed in the background.
    let revalidated = async {
        isr.update_tag(&format!("post:{slug}")).await?;
        isr.revalidate_tag("posts").await
    };
    match revalidated.await {
        Ok(_) => Redirect::to(&format!("/posts/{slug}")).into_response(),
        Err(e) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// The blog's routes (the origin isr caches).
pub fn router(db: Arc<Db>) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/posts/{slug}", get(post))
        .route("/edit/{slug}", get(edit_form).post(save))
        .with_state(db)
}

/// ISR for the blog: posts for an hour (or until edited), the edit form never.
pub async fn isr(builder: isr::layer::IsrBuilder) -> Result<Isr, isr::layer::BuildError> {
    builder
        .route(
            Route::new("/posts/{slug}")
                .revalidate(3600)
                .tags(["posts", "post:{slug}"]),
        )
        .route(Route::new("/edit/{slug}").cache(false))
        .build()
        .await
}

/// A database with one post.
pub fn seeded() -> Arc<Db> {
    let db = Arc::new(Db::default());
    db.posts.lock().unwrap().insert(
        "hello".into(),
        Post {
            title: "Hello, world".into(),
            body: "The first post.".into(),
        },
    );
    db
}

#[tokio::main]
async fn main() {
    let addr = std::env::var("BLOG_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let isr = match isr(Isr::builder().data_dir("./blog-isr-data")).await {
        Ok(isr) => isr,
        Err(e) => {
            eprintln!("axum-blog: {e}");
            std::process::exit(2);
        }
    };
    // The layer wraps the whole router; an outer router serves it.
    let app = Router::new().fallback_service(isr.layer().layer(router(seeded())));
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("axum-blog: cannot listen on {addr}: {e}");
            std::process::exit(2);
        }
    };
    println!("axum-blog on http://{addr}/ (edit a post at /edit/hello)");
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("axum-blog: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn send(app: &Router, req: axum::http::Request<axum::body::Body>) -> (String, String) {
        let res = app.clone().oneshot(req).await.unwrap();
        let state = res
            .headers()
            .get("x-isr-cache")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (state, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(path: &str) -> axum::http::Request<axum::body::Body> {
        axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn editing_a_post_shows_at_once_and_refreshes_the_list() {
        let isr = isr(Isr::builder().memory_store()).await.unwrap();
        let app = Router::new().fallback_service(isr.layer().layer(router(seeded())));
        assert_eq!(send(&app, get("/posts/hello")).await.0, "MISS");
        let (state, page) = send(&app, get("/posts/hello")).await;
        assert_eq!(state, "HIT");
        assert!(page.contains("Hello, world"));
        assert!(send(&app, get("/")).await.1.contains("Hello, world"));

        let save = axum::http::Request::post("/edit/hello")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from("title=Edited&body=New+text"))
            .unwrap();
        let res = app.clone().oneshot(save).await.unwrap();
        assert_eq!(res.status(), axum::http::StatusCode::SEE_OTHER);

        // The post: expired by update_tag, so it is rendered again for the editor.
        let (state, page) = send(&app, get("/posts/hello")).await;
        assert_eq!(state, "MISS");
        assert!(
            page.contains("Edited") && page.contains("New text"),
            "{page}"
        );
        // The list: stale once (its data was tagged `posts`), then refreshed.
        let (state, list) = send(&app, get("/")).await;
        assert_eq!(state, "STALE");
        assert!(list.contains("Hello, world"));
        let mut fresh = String::new();
        for _ in 0..200 {
            fresh = send(&app, get("/")).await.1;
            if fresh.contains("Edited") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(fresh.contains("Edited"), "{fresh}");
    }
}
