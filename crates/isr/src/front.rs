//! HTTP in and out: the listener, the `/_isr/` routes, and turning what the engine
//! decided into responses (headers, ETag/304, encodings, HEAD).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::api::{self, ApiError, Secrets};
use crate::body::Body;
use crate::engine::{Engine, Outcome, Served};
use crate::entry::{self, Entry};
use crate::key;
use crate::policy::{self, Freshness};

/// The value of the `x-isr-cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheState {
    /// Served fresh from cache.
    Hit,
    /// Served stale from cache while it regenerates.
    Stale,
    /// Fetched from the origin for this request.
    Miss,
    /// Regenerated synchronously by `x-prerender-revalidate`.
    Revalidated,
    /// Proxied, not stored.
    Bypass,
}

impl CacheState {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            CacheState::Hit => "HIT",
            CacheState::Stale => "STALE",
            CacheState::Miss => "MISS",
            CacheState::Revalidated => "REVALIDATED",
            CacheState::Bypass => "BYPASS",
        })
    }
}

const X_ISR_CACHE: &str = "x-isr-cache";

/// The public front: the engine plus the secrets that guard its API.
pub struct Front {
    engine: Arc<Engine>,
    secrets: Secrets,
}

impl Front {
    /// A front for `engine`, accepting `secrets` on the revalidation API.
    pub fn new(engine: Arc<Engine>, secrets: Secrets) -> Arc<Front> {
        if secrets.is_empty() {
            tracing::warn!(
                env = %engine.config().secret_env,
                "no revalidation secret is set: the revalidation API answers 401 to everything"
            );
        }
        Arc::new(Front { engine, secrets })
    }

    /// Accepts connections on `listener` until `shutdown` completes, then lets requests in
    /// flight finish for up to `grace` before returning.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) {
        let connections = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let front = self.clone();
            let watcher = connections.watcher();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let front = front.clone();
                    async move { Ok::<_, Infallible>(front.handle(req, remote).await) }
                });
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                let conn = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        let open = connections.count();
        tracing::info!(open, "stopped accepting; finishing requests in flight");
        if tokio::time::timeout(grace, connections.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?grace, "grace period over; closing the remaining connections");
        }
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        let path = req.uri().path();
        if path.starts_with("/_isr/") {
            return self.isr_route(req).await;
        }
        if self.engine.config().api_path.as_deref() == Some(path) {
            return self.revalidate_api(req).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return self.proxy(req, remote).await;
        }
        let cfg = self.engine.config();
        let key = key::normalize(path, req.uri().query(), &cfg.cache.ignore_query);
        if self.engine.routes().bypasses(key::path_of(&key)) {
            return self.proxy(req, remote).await;
        }
        if let Some(s) = req.headers().get("x-prerender-revalidate") {
            if self.secrets.accepts(s.as_bytes()) {
                let outcome = self.engine.regenerate_now(&key).await;
                return match outcome {
                    Outcome::Stored(e) => self.cached(&req, &key, &e, CacheState::Revalidated),
                    _ => {
                        let served = self.engine.serve(&key).await;
                        self.respond(req, &key, served, remote).await
                    }
                };
            }
        }
        if req.headers().contains_key(header::AUTHORIZATION)
            || has_bypass_cookie(req.headers(), &cfg.cache.bypass_cookies)
        {
            return self.proxy(req, remote).await;
        }
        let served = self.engine.serve(&key).await;
        self.respond(req, &key, served, remote).await
    }

    async fn respond(
        &self,
        req: Request<Incoming>,
        key: &str,
        served: Served,
        remote: SocketAddr,
    ) -> Response<Body> {
        match served {
            Served::Hit(e) => self.cached(&req, key, &e, CacheState::Hit),
            Served::Stale(e) => self.cached(&req, key, &e, CacheState::Stale),
            Served::Miss(e) => self.cached(&req, key, &e, CacheState::Miss),
            Served::Pass(p) => not_stored(
                &req,
                Response::from_parts(p.parts, p.body),
                CacheState::Bypass,
            ),
            // Hit-for-miss: this visitor's own request goes to the origin.
            Served::Bypass => self.proxy(req, remote).await,
            Served::Error(e) => {
                let mut res = Response::new(Body::full(e.body.clone()));
                *res.status_mut() = e.status;
                *res.headers_mut() = e.headers.clone();
                res.headers_mut().remove(header::CONTENT_LENGTH);
                not_stored(&req, res, CacheState::Miss)
            }
        }
    }

    /// A response from a cached entry.
    fn cached(
        &self,
        req: &Request<Incoming>,
        key: &str,
        e: &Entry,
        state: CacheState,
    ) -> Response<Body> {
        let now = self.engine.now();
        // A HIT was just checked fresh and a STALE stale; only fetched pages need a check.
        let freshness = match state {
            CacheState::Hit => Freshness::Fresh,
            CacheState::Stale => Freshness::Stale,
            _ => self.engine.freshness(key, e, now),
        };
        let timing = e.meta.timing();
        let (encoding, body) = e.body_for(req.headers().get(header::ACCEPT_ENCODING));
        let etag = e.etag(encoding);
        let not_modified = (200..300).contains(&e.meta.status)
            && req
                .headers()
                .get(header::IF_NONE_MATCH)
                .is_some_and(|inm| entry::if_none_match(inm, etag));
        let status = if not_modified {
            StatusCode::NOT_MODIFIED
        } else {
            StatusCode::from_u16(e.meta.status).unwrap_or(StatusCode::OK)
        };
        let mut res = Response::new(Body::empty());
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.reserve(e.headers.len() + 8);
        if !not_modified {
            for (n, v) in &e.headers {
                h.append(n.clone(), v.clone());
            }
            if let Some(ce) = encoding.header() {
                h.insert(header::CONTENT_ENCODING, ce);
            }
            if status != StatusCode::NO_CONTENT {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
        }
        h.insert(X_ISR_CACHE, state.header());
        h.insert(
            header::AGE,
            HeaderValue::from(policy::secs(timing.age(now))),
        );
        h.insert(header::ETAG, etag.clone());
        if let Ok(cc) = HeaderValue::from_str(&policy::cache_control(&timing, freshness, now)) {
            h.insert(header::CACHE_CONTROL, cc);
        }
        if e.varies() {
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        if !not_modified && req.method() != Method::HEAD && status != StatusCode::NO_CONTENT {
            *res.body_mut() = Body::Full(Some(body.clone()));
        }
        res
    }

    async fn proxy(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        match self.engine.origin().proxy(req, remote.ip()).await {
            Ok(res) => {
                let (mut parts, body) = res.into_parts();
                parts
                    .headers
                    .insert(X_ISR_CACHE, CacheState::Bypass.header());
                Response::from_parts(
                    parts,
                    Body::Stream {
                        prefix: None,
                        rest: body,
                    },
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "proxying to the origin failed");
                let mut res = plain(e.status(), &format!("{e}\n"));
                res.headers_mut()
                    .insert(X_ISR_CACHE, CacheState::Bypass.header());
                res
            }
        }
    }

    async fn isr_route(&self, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/_isr/revalidate" => self.revalidate_api(req).await,
            "/_isr/health" => plain(StatusCode::OK, "ok"),
            other => json(
                StatusCode::NOT_FOUND,
                &ApiError {
                    status: StatusCode::NOT_FOUND,
                    message: format!("no such isr endpoint: {other}"),
                }
                .body(),
            ),
        }
    }

    async fn revalidate_api(&self, req: Request<Incoming>) -> Response<Body> {
        match self.revalidate_inner(req).await {
            Ok(now) => json(
                StatusCode::OK,
                &serde_json::json!({ "revalidated": true, "now": now }).to_string(),
            ),
            Err(e) => json(e.status, &e.body()),
        }
    }

    async fn revalidate_inner(&self, req: Request<Incoming>) -> Result<u64, ApiError> {
        if req.method() != Method::POST {
            return Err(ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: "use POST".into(),
            });
        }
        let too_large = || ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("body over {} bytes", api::MAX_BODY),
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > api::MAX_BODY) {
            return Err(too_large());
        }
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|s| s.trim().to_string());
        let query_secret = req.uri().query().and_then(|q| {
            q.split('&')
                .filter_map(|p| p.split_once('='))
                .find(|(n, _)| *n == "secret")
                .map(|(_, v)| api::form_decode(v))
        });
        let body: Bytes = Limited::new(req.into_body(), api::MAX_BODY)
            .collect()
            .await
            .map_err(|_| too_large())?
            .to_bytes();
        let r = api::parse_request(
            &self.secrets,
            bearer.as_deref(),
            query_secret.as_deref(),
            &body,
        )?;
        self.engine.revalidate(&r).await.map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("could not record the revalidation: {e}"),
        })
    }
}

fn has_bypass_cookie(h: &HeaderMap, names: &[String]) -> bool {
    if names.is_empty() {
        return false;
    }
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.split('=').next())
        .any(|name| names.iter().any(|n| n == name.trim()))
}

/// An origin response that was not stored, made ready for the visitor: hop-by-hop and
/// isr's control headers removed (they are never sent to visitors), its state set, no
/// body for HEAD.
fn not_stored(
    req: &Request<Incoming>,
    mut res: Response<Body>,
    state: CacheState,
) -> Response<Body> {
    let h = res.headers_mut();
    crate::origin::strip_hop_by_hop(h);
    h.remove("x-isr-tags");
    h.remove("x-isr-revalidate");
    h.insert(X_ISR_CACHE, state.header());
    if req.method() == Method::HEAD {
        *res.body_mut() = Body::empty();
    }
    res
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut res = Response::new(Body::full(text.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn json(status: StatusCode, body: &str) -> Response<Body> {
    let mut res = Response::new(Body::full(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bypass_cookie_detection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __isr_preview=x"),
        );
        assert!(has_bypass_cookie(&h, &["__isr_preview".into()]));
        assert!(!has_bypass_cookie(&h, &["other".into()]));
    }
}
