//! The benchmark's origin: deterministic HTML pages, optionally slowed down, counting the
//! requests it serves so stampede tests can check how many reached it.
//!
//! ```text
//! bench_origin serve ADDR [DELAY_MS]   # /page/N: 16 KiB, /big/N: 128 KiB, /p32k/N, /p64k/N, /_count, /_reset,
//!                                      # /_bump (new content version for every page)
//! bench_origin write DIR COUNT         # the same pages as files, for nginx static
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const SMALL: usize = 16 * 1024;
const BIG: usize = 128 * 1024;

/// Page `n` of exactly `size` bytes at content `version`: HTML with text that compresses
/// like real prose.
fn page(n: u64, size: usize, version: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "static",
        "regeneration",
        "cache",
        "origin",
        "page",
        "fresh",
        "stale",
        "tag",
        "server",
        "visitor",
        "content",
        "writer",
        "latency",
        "edge",
        "render",
        "request",
    ];
    let mut out = format!(
        "<!doctype html><html><head><title>Page {n}</title></head><body><h1>Page {n} v{version}</h1><p>"
    );
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let tail = "</p></body></html>";
    while out.len() + tail.len() + 16 < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(WORDS[(x % 16) as usize]);
        out.push(if x.is_multiple_of(11) { '.' } else { ' ' });
    }
    while out.len() + tail.len() < size {
        out.push(' ');
    }
    out.push_str(tail);
    out.into_bytes()
}

/// The page prefixes and their sizes; the two between 16 and 128 KiB are for finding where
/// sending from a file starts to pay (bench/ab.py).
const SIZES: [(&str, usize); 4] = [
    ("/page/", SMALL),
    ("/p32k/", 32 * 1024),
    ("/p64k/", 64 * 1024),
    ("/big/", BIG),
];

fn parse(path: &str) -> Option<(u64, usize)> {
    SIZES
        .iter()
        .find_map(|&(prefix, size)| Some((path.strip_prefix(prefix)?.parse().ok()?, size)))
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    version: AtomicU64,
}

async fn handle(
    req: Request<Incoming>,
    delay: Duration,
    c: Arc<Counters>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    match path {
        "/_count" => {
            return Ok(text(
                StatusCode::OK,
                c.requests.load(Ordering::SeqCst).to_string(),
            ))
        }
        "/_reset" => {
            c.requests.store(0, Ordering::SeqCst);
            return Ok(text(StatusCode::OK, "0".into()));
        }
        "/_bump" => {
            let v = c.version.fetch_add(1, Ordering::SeqCst) + 1;
            return Ok(text(StatusCode::OK, v.to_string()));
        }
        _ => {}
    }
    let Some((n, size)) = parse(path) else {
        return Ok(text(StatusCode::NOT_FOUND, "not found".into()));
    };
    c.requests.fetch_add(1, Ordering::SeqCst);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut r = Response::new(Full::new(Bytes::from(page(
        n,
        size,
        c.version.load(Ordering::SeqCst),
    ))));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Ok(r)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("write") => {
            let dir = std::path::Path::new(&args[2]);
            let count: u64 = args[3].parse().expect("COUNT");
            for (sub, size) in [("page", SMALL), ("big", BIG)] {
                std::fs::create_dir_all(dir.join(sub)).unwrap();
                for n in 0..count {
                    std::fs::write(dir.join(sub).join(n.to_string()), page(n, size, 0)).unwrap();
                }
            }
        }
        Some("serve") => {
            let listener = tokio::net::TcpListener::bind(&args[2]).await.expect("bind");
            let delay =
                Duration::from_millis(args.get(3).and_then(|d| d.parse().ok()).unwrap_or(0));
            let counters = Arc::new(Counters::default());
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let c = counters.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, delay, c.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
        _ => {
            eprintln!("usage: bench_origin serve ADDR [DELAY_MS] | bench_origin write DIR COUNT");
            std::process::exit(2);
        }
    }
}
