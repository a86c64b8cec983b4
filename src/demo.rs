//! `isr demo`: a built-in blog origin (each render simulates a ~150 ms CMS query), isr in
//! front of it, and a small CMS page where saving a post revalidates its tag.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use isr::config::{Overrides, RouteConfig};

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Where isr listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Number of blog posts.
    #[arg(long, default_value_t = 10_000)]
    posts: usize,
    /// Directory of the embedded store.
    #[arg(long, default_value = "./isr-demo-data")]
    data_dir: PathBuf,
    /// Simulated CMS query time per render, in milliseconds.
    #[arg(long, default_value_t = 150)]
    render_ms: u64,
    /// Newest posts prebuilt at start (with the index page).
    #[arg(long, default_value_t = 100)]
    prebuild: usize,
}

struct Blog {
    posts: usize,
    render: Duration,
    edits: Mutex<HashMap<usize, (String, String)>>,
    isr_url: String,
    secret: String,
}

const WORDS: [&str; 24] = [
    "static", "cache", "origin", "render", "fresh", "stale", "edge", "page", "tag", "build",
    "deploy", "content", "writer", "reader", "server", "latency", "rust", "speed", "quiet",
    "careful", "simple", "bright", "steady", "open",
];

/// A tiny deterministic generator, so post N is the same text on every machine.
fn words(seed: usize, n: usize) -> String {
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            WORDS[(x % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Blog {
    fn post(&self, n: usize) -> (String, String) {
        if let Some(p) = self.edits.lock().unwrap_or_else(|e| e.into_inner()).get(&n) {
            return p.clone();
        }
        let title = format!("Post {n}: {}", words(n, 4));
        let body = (0..4)
            .map(|p| words(n * 31 + p, 60))
            .collect::<Vec<_>>()
            .join("\n\n");
        (title, body)
    }

    fn slug_number(&self, slug: &str) -> Option<usize> {
        slug.parse().ok().filter(|n| (1..=self.posts).contains(n))
    }

    fn page(title: &str, content: &str) -> String {
        format!(
            "<!doctype html><html><head><meta charset=utf-8><title>{t}</title>\
             <style>body{{font:16px/1.5 system-ui;max-width:42rem;margin:2rem auto;padding:0 1rem}}\
             textarea,input{{width:100%;font:inherit}}</style></head><body>{content}\
             <footer><hr><small>rendered by the demo origin at {now} (unix ms)</small></footer></body></html>",
            t = escape(title),
            now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis()),
        )
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/") => {
                tokio::time::sleep(self.render).await;
                let list: String = (self.posts.saturating_sub(19)..=self.posts)
                    .rev()
                    .map(|n| {
                        format!(
                            "<li><a href=\"/blog/{n}\">{}</a></li>",
                            escape(&self.post(n).0)
                        )
                    })
                    .collect();
                html(StatusCode::OK, Blog::page("The isr demo blog", &format!(
                    "<h1>The isr demo blog</h1><p>{} posts. Edit one in the <a href=\"/cms\">CMS</a>.</p><ul>{list}</ul>",
                    self.posts
                )))
            }
            (Method::GET, p) if p.starts_with("/blog/") => {
                tokio::time::sleep(self.render).await;
                match self.slug_number(&p["/blog/".len()..]) {
                    Some(n) => {
                        let (title, body) = self.post(n);
                        let paras: String = body
                            .split("\n\n")
                            .map(|p| format!("<p>{}</p>", escape(p)))
                            .collect();
                        html(StatusCode::OK, Blog::page(&title, &format!(
                            "<p><a href=\"/\">← all posts</a></p><h1>{}</h1>{paras}<p><a href=\"/cms?post={n}\">Edit this post</a></p>",
                            escape(&title)
                        )))
                    }
                    None => html(
                        StatusCode::NOT_FOUND,
                        Blog::page("Not found", "<h1>No such post</h1>"),
                    ),
                }
            }
            (Method::GET, "/cms") => {
                let n = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("post="))
                    .and_then(|v| v.parse().ok())
                    .filter(|n| (1..=self.posts).contains(n))
                    .unwrap_or(self.posts);
                let (title, body) = self.post(n);
                html(StatusCode::OK, Blog::page("CMS", &format!(
                    "<h1>Edit post {n}</h1><form method=post action=/cms><input type=hidden name=post value={n}>\
                     <p><label>Title<br><input name=title value=\"{}\"></label></p>\
                     <p><label>Body<br><textarea name=body rows=14>{}</textarea></label></p>\
                     <p><button>Save and revalidate</button></p></form>",
                    escape(&title), escape(&body)
                )))
            }
            (Method::POST, "/cms") => self.save(req).await,
            _ => html(
                StatusCode::NOT_FOUND,
                Blog::page("Not found", "<h1>Not found</h1>"),
            ),
        }
    }

    async fn save(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let Ok(body) = Limited::new(req.into_body(), 1 << 20).collect().await else {
            return html(StatusCode::PAYLOAD_TOO_LARGE, "too large".into());
        };
        let body = body.to_bytes();
        let form: HashMap<String, String> = String::from_utf8_lossy(&body)
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (isr::api::form_decode(k), isr::api::form_decode(v)))
            .collect();
        let Some(n) = form
            .get("post")
            .and_then(|v| v.parse().ok())
            .filter(|n| (1..=self.posts).contains(n))
        else {
            return html(
                StatusCode::BAD_REQUEST,
                Blog::page("CMS", "<h1>Unknown post</h1>"),
            );
        };
        let title = form.get("title").cloned().unwrap_or_default();
        let text = form
            .get("body")
            .cloned()
            .unwrap_or_default()
            .replace("\r\n", "\n");
        self.edits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n, (title, text));
        // Expire (read-your-writes): the writer's next visit waits for the new text.
        let call = serde_json::json!({ "tag": format!("post-{n}"), "path": "/", "mode": "expire" });
        let result = match crate::client::post_revalidate(&self.isr_url, &self.secret, &call).await
        {
            Ok((200, _)) => {
                format!("Saved. isr revalidated tag <code>post-{n}</code> and the index.")
            }
            Ok((status, text)) => format!("Saved, but isr answered {status}: {}", escape(&text)),
            Err(e) => format!("Saved, but isr could not be reached: {}", escape(&e)),
        };
        html(StatusCode::OK, Blog::page("Saved", &format!(
            "<h1>{result}</h1><p><a href=\"/blog/{n}\">View the post</a> · <a href=\"/\">Index</a> · <a href=\"/cms?post={n}\">Edit again</a></p>"
        )))
    }
}

fn html(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}

async fn serve_origin(listener: tokio::net::TcpListener, blog: Arc<Blog>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let blog = blog.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let blog = blog.clone();
                async move { Ok::<_, Infallible>(blog.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn secret() -> String {
    if let Some(s) = std::env::var("ISR_SECRET")
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        return s;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("demo-{:x}", seed ^ (u128::from(std::process::id()) << 64))
}

pub(crate) async fn run(args: DemoArgs) -> ExitCode {
    let listen: SocketAddr = match args.listen.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!(
                "isr demo: --listen {} is not an address such as 127.0.0.1:8080",
                args.listen
            );
            return ExitCode::from(2);
        }
    };
    let origin_listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("isr demo: cannot start the demo origin: {e}");
            return ExitCode::FAILURE;
        }
    };
    let origin_addr = origin_listener.local_addr().expect("bound");
    let secrets = secret();
    let mut cfg = match isr::config::parse(
        "<demo>",
        "",
        &Overrides {
            listen: Some(listen.to_string()),
            origin: Some(format!("http://{origin_addr}")),
            data_dir: Some(args.data_dir.clone()),
            redis: None,
            debug_cache: false,
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("isr demo: {e}");
            return ExitCode::from(2);
        }
    };
    let route = |pattern: &str, revalidate: Option<u64>, tags: &[&str], cache: bool| RouteConfig {
        pattern: pattern.into(),
        revalidate: revalidate.map(|s| Some(s * 1000)),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        dynamic: true,
        cache,
        refresh_ahead: false,
        refresh_always: false,
    };
    cfg.routes = vec![
        route("/", Some(60), &["posts"], true),
        route("/blog/{slug}", Some(60), &["posts", "post-{slug}"], true),
        route("/cms", None, &[], false),
    ];
    let posts = args.posts.max(1);
    cfg.prebuild.paths = std::iter::once("/".to_string())
        .chain((posts.saturating_sub(args.prebuild) + 1..=posts).map(|n| format!("/blog/{n}")))
        .collect();
    let server = match isr::Server::bind(cfg, isr::Secrets::parse(&secrets)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("isr demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let isr_url = format!("http://{}", server.local_addr());
    let blog = Arc::new(Blog {
        posts: args.posts.max(1),
        render: Duration::from_millis(args.render_ms),
        edits: Mutex::default(),
        isr_url: isr_url.clone(),
        secret: secrets
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
    });
    tokio::spawn(serve_origin(origin_listener, blog));
    println!(
        "isr demo is running ({} posts, each render takes ~{} ms at the origin)\n",
        args.posts, args.render_ms
    );
    println!("  blog through isr   {isr_url}/");
    println!("  a post             {isr_url}/blog/1   (first visit MISS, then HIT; see the x-isr-cache header)");
    println!("  a prebuilt post    {isr_url}/blog/{}   (the {} newest posts are prebuilt at start: HIT at once)", args.posts.max(1), args.prebuild.min(args.posts));
    println!("  CMS (edit a post)  {isr_url}/cms?post=1    (saving revalidates tag post-1: live on the next request)");
    println!("  the origin itself  http://{origin_addr}/");
    println!("  data               {}", args.data_dir.display());
    println!("\n  try: curl -si {isr_url}/blog/1 | grep -i x-isr-cache");
    println!("       ISR_SECRET={secrets} cargo run --release -- revalidate --server {isr_url} --tag posts\n");
    println!("Press Ctrl-C to stop.");
    server.run(crate::shutdown_signal()).await;
    ExitCode::SUCCESS
}
