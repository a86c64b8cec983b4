//! The floor of a hyper-based hit path: hyper answering every request with the same
//! in-memory 16 KiB page and no cache logic at all. Comparing it with isr and nginx static
//! shows how much of the gap is isr's own work and how much is hyper plus the body copy.
//!
//! `bare_hyper ADDR` (run it pinned, e.g. `taskset -c 0`, and load it with wrk on CPU 1).

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:19200".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    let page = Bytes::from(vec![b'x'; 16 * 1024]);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let page = page.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let mut r = Response::new(Full::new(page.clone()));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html"),
                );
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
