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
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::admin;
use crate::api::{self, ApiError, SecretThrottle, Secrets};

mod hits;
mod lane;
use crate::body::{Body, Boxed};
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
    /// Every state, in the order of [`crate::metrics::STATES`].
    pub const ALL: [CacheState; 5] = [
        CacheState::Hit,
        CacheState::Stale,
        CacheState::Miss,
        CacheState::Revalidated,
        CacheState::Bypass,
    ];

    /// The header value.
    pub fn as_str(self) -> &'static str {
        crate::metrics::STATES[self as usize]
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

const X_ISR_CACHE: &str = "x-isr-cache";

/// The public front: the engine plus the secrets that guard its API.
pub struct Front {
    pub(crate) engine: Arc<Engine>,
    secrets: Secrets,
    sessions: admin::Sessions,
    throttle: SecretThrottle,
    fetcher: Arc<crate::fetch::Fetcher>,
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
        Arc::new(Front {
            throttle: SecretThrottle::new(engine.config().limits.failed_secrets_per_minute),
            fetcher: Arc::new(crate::fetch::Fetcher::new(engine.config())),
            engine,
            secrets,
            sessions: admin::Sessions::default(),
        })
    }

    /// Accepts connections on `listener` until `shutdown` completes, then lets requests in
    /// flight finish for up to `grace` before returning. A `trusted` listener (the private
    /// `admin_listen`) serves only the `/_isr/` routes and the API alias, without the secret.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        trusted: bool,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) {
        let connections = hyper_util::server::graceful::GracefulShutdown::new();
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let lane_connections: lane::Tracker = Arc::default();
        let limits = self.engine.config().limits.clone();
        // At most max_connections at once: past that, new connections wait in the
        // kernel's backlog until one closes.
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        // Hits on the public listener are answered by the hit loops; the private listener
        // goes straight to hyper.
        let hits = if trusted {
            None
        } else {
            match hits::Hits::start(self.clone(), stopping.clone()) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "could not start the hit loops; hits are answered on tokio");
                    None
                }
            }
        };
        let _close_hits = hits.clone().map(hits::CloseOnDrop);
        tokio::pin!(shutdown);
        loop {
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => s.expect("never closed"),
                () = &mut shutdown => break,
            };
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
            let held = lane::Held {
                remote,
                slot,
                watcher: connections.watcher(),
                in_lane: lane_connections.clone(),
            };
            match &hits {
                Some(hits) => match stream.into_std() {
                    Ok(stream) => hits.add(stream, held),
                    Err(e) => tracing::warn!(error = %e, "could not take a connection off tokio"),
                },
                None => {
                    let first = if trusted {
                        lane::Start::Hyper(Bytes::new())
                    } else {
                        lane::Start::Lane(bytes::BytesMut::new())
                    };
                    let conn = self.clone().connection(
                        stream,
                        held,
                        first,
                        trusted,
                        stopping.clone(),
                        None,
                    );
                    tokio::spawn(conn);
                }
            }
        }
        drop(listener);
        let _ = stop.send(true);
        if let Some(hits) = &hits {
            hits.stop();
        }
        let open = connections.count() + Arc::strong_count(&lane_connections) - 1;
        tracing::info!(open, "stopped accepting; finishing requests in flight");
        let finished = async {
            connections.shutdown().await;
            while Arc::strong_count(&lane_connections) > 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(grace, finished).await.is_err() {
            tracing::warn!(grace = ?grace, "grace period over; closing the remaining connections");
        }
    }

    /// One connection's life on tokio (`trusted`: from the private listener): from
    /// `first`, the lane (which gives it back to `hits`, when there are hit loops, after a
    /// hit answered without waiting), then hyper for good.
    async fn connection(
        self: Arc<Self>,
        mut stream: tokio::net::TcpStream,
        held: lane::Held,
        first: lane::Start,
        trusted: bool,
        mut stopping: tokio::sync::watch::Receiver<bool>,
        hits: Option<hits::Hits>,
    ) {
        let (prefix, first) = match first {
            lane::Start::Hyper(prefix) => (prefix, None),
            lane::Start::Lane(buf) => {
                let give_back = hits.is_some();
                match self.lane(&mut stream, &mut stopping, buf, give_back).await {
                    lane::Handoff::Closed => return,
                    lane::Handoff::Idle => {
                        match (hits, stream.into_std()) {
                            (Some(hits), Ok(stream)) => hits.add(stream, held),
                            _ => tracing::debug!("a connection could not go back to the hit loops"),
                        }
                        return;
                    }
                    lane::Handoff::Hyper(prefix) => (prefix, None),
                    lane::Handoff::Served(prefix, key, served) => (prefix, Some((key, served))),
                }
            }
        };
        let lane::Held {
            remote,
            slot: _slot,
            watcher,
            in_lane,
        } = held;
        drop(in_lane);
        let limits = &self.engine.config().limits;
        let request_timeout = limits.request_timeout;
        let (head_timeout, max_head) = (limits.header_read_timeout, limits.max_header_bytes);
        // The outcome the lane already has for the first request hyper reads.
        let first = std::sync::Mutex::new(first);
        let front = self.clone();
        let service = service_fn(move |req| {
            let front = front.clone();
            let served = first.lock().unwrap_or_else(|e| e.into_inner()).take();
            async move {
                let req = req.map(crate::body::boxed);
                let answer = front.handle_served(req, remote, trusted, served);
                let res = tokio::time::timeout(request_timeout, answer)
                    .await
                    .unwrap_or_else(|_| {
                        tracing::warn!(client = %remote.ip(), timeout = ?request_timeout, "request took longer than [limits] request_timeout");
                        plain(StatusCode::GATEWAY_TIMEOUT, lane::TIMEOUT_TEXT)
                    });
                Ok::<_, Infallible>(res)
            }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(head_timeout)
            .max_buf_size(max_head);
        let io = TokioIo::new(lane::Rewind {
            prefix,
            inner: stream,
        });
        let conn = watcher.watch(http.serve_connection(io, service));
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    /// Answers one request, counting it by cache state (and logging it with
    /// `--debug-cache`).
    pub async fn handle(
        &self,
        req: Request<Boxed>,
        remote: SocketAddr,
        trusted: bool,
    ) -> Response<Body> {
        self.handle_served(req, remote, trusted, None).await
    }

    /// [`Front::handle`], answering with `served` when it is the engine's outcome for this
    /// request's cache key (the hit lane served it before handing the connection over).
    async fn handle_served(
        &self,
        req: Request<Boxed>,
        remote: SocketAddr,
        trusted: bool,
        served: Option<(String, Served)>,
    ) -> Response<Body> {
        let debug = self.engine.config().debug_cache.then(|| {
            (
                req.method().clone(),
                redact_secret(self.key_of(&req)),
                tokio::time::Instant::now(),
            )
        });
        let res = match served {
            Some((key, served)) if self.key_of(&req) == key => {
                self.respond(req, &key, served, remote).await
            }
            _ => self.answer(req, remote, trusted).await,
        };
        let state = res.headers().get(X_ISR_CACHE).map(HeaderValue::as_bytes);
        if let Some(i) = state.and_then(|s| {
            CacheState::ALL
                .iter()
                .position(|c| c.as_str().as_bytes() == s)
        }) {
            self.engine.metrics().request(i);
        }
        if let Some((method, key, started)) = debug {
            let header = |n: &str| {
                res.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            tracing::info!(
                target: "isr::cache",
                %method,
                key,
                state = %header(X_ISR_CACHE),
                age = %header("age"),
                status = res.status().as_u16(),
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "request"
            );
        }
        res
    }

    async fn answer(
        &self,
        req: Request<Boxed>,
        remote: SocketAddr,
        trusted: bool,
    ) -> Response<Body> {
        let path = req.uri().path();
        let peer = Peer {
            ip: remote.ip(),
            trusted,
        };
        if path.starts_with("/_isr/") {
            return self.isr_route(req, peer).await;
        }
        if self.engine.config().api_path.as_deref() == Some(path) {
            return self.revalidate_api(req, peer).await;
        }
        if trusted {
            return plain(
                StatusCode::NOT_FOUND,
                "the admin listener serves only /_isr/ routes\n",
            );
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return self.proxy(req, remote).await;
        }
        let cfg = self.engine.config();
        let key = self.key_of(&req);
        if self.engine.routes().bypasses(key::path_of(&key)) {
            return self.proxy(req, remote).await;
        }
        if let Some(s) = req.headers().get("x-prerender-revalidate") {
            // (A path a `dynamic = false` route does not know is never fetched.)
            let path = key::path_of(&key);
            let unknown = self.engine.is_dropped(path)
                || (self.engine.is_unknown_static(path)
                    && self.engine.lookup(&key).await.is_none());
            // A wrong secret counts towards the address's limit; while the address is
            // refused, the header is ignored (an ordinary request), even with the secret.
            let now = self.engine.now();
            let accepted = self.throttle.blocked(remote.ip(), now).is_none()
                && self.secrets.accepts(s.as_bytes());
            if !accepted {
                self.throttle.failed(remote.ip(), now);
            }
            if accepted && !unknown {
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

    /// The cache key of `req`.
    fn key_of<B>(&self, req: &Request<B>) -> String {
        let ignore = &self.engine.config().cache.ignore_query;
        key::normalize(req.uri().path(), req.uri().query(), ignore)
    }

    async fn respond(
        &self,
        req: Request<Boxed>,
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
            Served::NotFound(Some(page)) => {
                let mut res = self.cached(&req, "/404", &page, CacheState::Hit);
                *res.status_mut() = StatusCode::NOT_FOUND;
                res
            }
            Served::NotFound(None) => {
                let mut res = plain(StatusCode::NOT_FOUND, "not found\n");
                res.headers_mut()
                    .insert(X_ISR_CACHE, CacheState::Hit.header());
                res
            }
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
        req: &Request<Boxed>,
        key: &str,
        e: &Entry,
        state: CacheState,
    ) -> Response<Body> {
        let now = self.engine.now();
        // A HIT was just checked fresh and a STALE stale; only fetched pages need a check.
        let freshness = match state {
            CacheState::Hit => Freshness::Fresh,
            CacheState::Stale => Freshness::Stale,
            _ => self.engine.freshness(key, &e.meta, now),
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
        let cache_control = policy::cache_control(&timing, freshness, now);
        if self.engine.cdn().emits_tags() {
            for (name, value) in crate::cdn::emitted_headers(&e.meta.tags, &cache_control) {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    h.insert(name, v);
                }
            }
        }
        if let Ok(cc) = HeaderValue::from_str(&cache_control) {
            h.insert(header::CACHE_CONTROL, cc);
        }
        if e.varies() {
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        if !not_modified && req.method() != Method::HEAD && status != StatusCode::NO_CONTENT {
            *res.body_mut() = Body::Full(Some(body.bytes()));
        }
        res
    }

    async fn proxy(&self, req: Request<Boxed>, remote: SocketAddr) -> Response<Body> {
        match self.engine.source().proxy(req, remote.ip()).await {
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

    async fn isr_route(&self, req: Request<Boxed>, peer: Peer) -> Response<Body> {
        let path = req.uri().path();
        if !peer.trusted
            && (path == "/_isr/metrics" || path == "/_isr/fetch" || path.starts_with("/_isr/admin"))
        {
            if let Some(wait) = self.throttle.blocked(peer.ip, self.engine.now()) {
                let e = SecretThrottle::refusal(wait);
                return json(e.status, &e.body());
            }
        }
        match (req.method(), req.uri().path()) {
            (_, "/_isr/revalidate") => self.revalidate_api(req, peer).await,
            (_, "/_isr/health") => {
                let wants_ready = req.uri().query().is_some_and(|q| {
                    q.split('&')
                        .any(|p| p == "ready" || p.starts_with("ready="))
                });
                if wants_ready && !self.engine.ready() {
                    plain(StatusCode::SERVICE_UNAVAILABLE, "prebuilding\n")
                } else {
                    plain(StatusCode::OK, "ok")
                }
            }
            (&Method::GET, "/_isr/metrics") => match self.auth(&req, peer) {
                Some(_) => self.metrics().await,
                None => unauthorized("metrics need the secret: Authorization: Bearer <secret>"),
            },
            (&Method::GET, "/_isr/admin") => {
                let Some(auth) = self.auth(&req, peer) else {
                    return html(StatusCode::UNAUTHORIZED, admin::login_page(None));
                };
                let q = admin::Query::parse(req.uri().query());
                match admin::page(&self.engine, &q, &auth.csrf).await {
                    Ok(page) => html(StatusCode::OK, page),
                    Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
                }
            }
            (&Method::GET, "/_isr/admin/status.json") => match self.auth(&req, peer) {
                Some(_) => match admin::status(&self.engine, 100).await {
                    Ok(st) => json(
                        StatusCode::OK,
                        &serde_json::to_string(&st).unwrap_or_default(),
                    ),
                    Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
                },
                None => unauthorized("the status needs the secret: Authorization: Bearer <secret>"),
            },
            (&Method::GET, "/_isr/fetch") => match self.auth(&req, peer) {
                Some(_) => self.fetcher.serve(&self.engine, &req).await,
                None => unauthorized(
                    "/_isr/fetch is for the origin: send Authorization: Bearer <secret>, or call it on admin_listen",
                ),
            },
            (&Method::POST, "/_isr/admin/login") => self.login(req, peer).await,
            (&Method::POST, "/_isr/admin/logout" | "/_isr/admin/revalidate") => {
                self.admin_post(req, peer).await
            }
            (_, other) => json_error(
                StatusCode::NOT_FOUND,
                &format!("no such isr endpoint: {other}"),
            ),
        }
    }

    async fn metrics(&self) -> Response<Body> {
        let stats = self.engine.store().stats().await.unwrap_or_default();
        let gauges = crate::metrics::Gauges {
            entries: stats.entries,
            store_bytes: stats.bytes,
            memory_tier_bytes: self.engine.hot().bytes(),
            pages_overdue: self.engine.overdue().count,
        };
        let mut text = self.engine.metrics().render(&gauges);
        self.engine.cdn().render_metrics(&mut text);
        let mut res = plain(StatusCode::OK, &text);
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        res
    }

    /// Who may use the admin routes: the private listener, the secret as a bearer token,
    /// or a login session (whose CSRF token guards its forms).
    fn auth(&self, req: &Request<Boxed>, peer: Peer) -> Option<Auth> {
        if peer.trusted {
            return Some(Auth::default());
        }
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(s) = bearer {
            if self.secrets.accepts(s.trim().as_bytes()) {
                return Some(Auth::default());
            }
            self.throttle.failed(peer.ip, self.engine.now());
        }
        let token = session_cookie(req.headers())?;
        let csrf = self.sessions.csrf(&token, self.engine.now())?;
        Some(Auth {
            session: Some(token),
            csrf,
        })
    }

    async fn login(&self, req: Request<Boxed>, peer: Peer) -> Response<Body> {
        let Ok(form) = form_body(req).await else {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "form too large\n");
        };
        let secret = form
            .iter()
            .find(|(k, _)| k == "secret")
            .map(|(_, v)| v.as_str());
        if !secret.is_some_and(|s| self.secrets.accepts(s.as_bytes())) {
            self.throttle.failed(peer.ip, self.engine.now());
            tracing::warn!(client = %peer.ip, "admin login with a wrong secret");
            return html(
                StatusCode::UNAUTHORIZED,
                admin::login_page(Some("Wrong secret.")),
            );
        }
        let token = self.sessions.open(self.engine.now());
        let mut res = redirect("/_isr/admin");
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{}={token}; HttpOnly; SameSite=Strict; Path=/_isr/; Max-Age=43200",
            admin::COOKIE
        )) {
            res.headers_mut().insert(header::SET_COOKIE, v);
        }
        res
    }

    /// The admin page's forms: logout and revalidate. A session must send its CSRF token;
    /// a request from another site's page is refused by its `Origin` as well.
    async fn admin_post(&self, req: Request<Boxed>, peer: Peer) -> Response<Body> {
        if cross_site(req.headers()) {
            return plain(
                StatusCode::FORBIDDEN,
                "cross-site form submission refused\n",
            );
        }
        let Some(auth) = self.auth(&req, peer) else {
            return unauthorized("log in first");
        };
        let logout = req.uri().path() == "/_isr/admin/logout";
        let Ok(form) = form_body(req).await else {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "form too large\n");
        };
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str())
        };
        if auth.session.is_some()
            && !bool::from(subtle::ConstantTimeEq::ct_eq(
                field("csrf").as_bytes(),
                auth.csrf.as_bytes(),
            ))
        {
            return plain(
                StatusCode::FORBIDDEN,
                "stale or missing form token: reload the admin page\n",
            );
        }
        if logout {
            if let Some(t) = &auth.session {
                self.sessions.close(t);
            }
            let mut res = redirect("/_isr/admin");
            res.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "isr_admin=; HttpOnly; SameSite=Strict; Path=/_isr/; Max-Age=0",
                ),
            );
            return res;
        }
        let value = field("value").to_string();
        let mut r = crate::engine::Revalidation::default();
        match field("type") {
            "page" if value.starts_with('/') => r.pages.push(value.clone()),
            "layout" if value.starts_with('/') => r.layouts.push(value.clone()),
            "tag" if !value.is_empty() => r.tags.push(value.clone()),
            _ => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "type must be page, layout or tag, with a value (paths start with /)\n",
                )
            }
        }
        let done = match self.engine.revalidate(&r).await {
            Ok(_) => format!("Revalidated {} {value}.", field("type")),
            Err(e) => format!("Could not revalidate {value}: {e}"),
        };
        let back = Some(field("back"))
            .filter(|b| b.starts_with("/_isr/admin"))
            .unwrap_or("/_isr/admin");
        let sep = if back.contains('?') { '&' } else { '?' };
        redirect(&format!("{back}{sep}done={}", admin::url_encode(&done)))
    }

    async fn revalidate_api(&self, req: Request<Boxed>, peer: Peer) -> Response<Body> {
        match self.revalidate_inner(req, peer).await {
            Ok(now) => json(
                StatusCode::OK,
                &serde_json::json!({ "revalidated": true, "now": now }).to_string(),
            ),
            Err(e) => json(e.status, &e.body()),
        }
    }

    async fn revalidate_inner(&self, req: Request<Boxed>, peer: Peer) -> Result<u64, ApiError> {
        if req.method() != Method::POST {
            return Err(ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: "use POST".into(),
            });
        }
        let max_body = self.engine.config().limits.max_api_body;
        let too_large = || ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("body over {max_body} bytes"),
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max_body) {
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
        let body: Bytes = Limited::new(req.into_body(), max_body)
            .collect()
            .await
            .map_err(|_| too_large())?
            .to_bytes();
        let r = if peer.trusted {
            api::parse_body(&body)?
        } else {
            let now = self.engine.now();
            if let Some(wait) = self.throttle.blocked(peer.ip, now) {
                return Err(SecretThrottle::refusal(wait));
            }
            api::parse_request(
                &self.secrets,
                bearer.as_deref(),
                query_secret.as_deref(),
                &body,
            )
            .inspect_err(|e| {
                if e.status == StatusCode::UNAUTHORIZED {
                    self.throttle.failed(peer.ip, now);
                }
            })?
        };
        if let Some(p) = self.engine.unknown_static_page(&r).await {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "{p} is not a known page: its route is dynamic = false and it was never prebuilt"
                ),
            });
        }
        self.engine.revalidate(&r).await.map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("could not record the revalidation: {e}"),
        })
    }
}

/// Who sent a request: the peer address (for the wrong-secret limit), and whether it
/// came in on the private `admin_listen` listener.
#[derive(Clone, Copy)]
struct Peer {
    ip: std::net::IpAddr,
    trusted: bool,
}

/// How an admin request was let in.
#[derive(Default)]
struct Auth {
    /// The login session, if that is how.
    session: Option<String>,
    /// Its CSRF token (empty without a session).
    csrf: String,
}

fn session_cookie(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == admin::COOKIE)
        .map(|(_, v)| v.to_string())
}

/// A form posted from a page of another site (its `Origin` names another host).
fn cross_site(h: &HeaderMap) -> bool {
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    match h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None | Some("null") => false,
        Some(origin) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            host != Some(origin_host)
        }
    }
}

/// A form body (at most 16 KiB) as decoded pairs.
async fn form_body(req: Request<Boxed>) -> Result<Vec<(String, String)>, ()> {
    let body = Limited::new(req.into_body(), 16 * 1024)
        .collect()
        .await
        .map_err(|_| ())?
        .to_bytes();
    Ok(admin::form_pairs(&String::from_utf8_lossy(&body)))
}

fn redirect(to: &str) -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

fn unauthorized(message: &str) -> Response<Body> {
    let mut res = json_error(StatusCode::UNAUTHORIZED, message);
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut res = Response::new(Body::full(page));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    res
}

/// A key for the log, with the value of any `secret` query parameter replaced.
fn redact_secret(key: String) -> String {
    let Some((path, query)) = key.split_once('?') else {
        return key;
    };
    if !query.split('&').any(|p| p.starts_with("secret=")) {
        return key;
    }
    let query: Vec<&str> = query
        .split('&')
        .map(|p| {
            if p.starts_with("secret=") {
                "secret=<redacted>"
            } else {
                p
            }
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

fn has_bypass_cookie(h: &HeaderMap, names: &[String]) -> bool {
    !names.is_empty()
        && h.get_all(header::COOKIE)
            .iter()
            .any(|v| cookie_bypasses(v.as_bytes(), names))
}

/// Whether one `Cookie` header value carries a cookie named in `names`.
fn cookie_bypasses(value: &[u8], names: &[String]) -> bool {
    std::str::from_utf8(value).is_ok_and(|v| {
        v.split(';')
            .filter_map(|c| c.split('=').next())
            .any(|name| names.iter().any(|n| n == name.trim()))
    })
}

/// An origin response that was not stored, made ready for the visitor: hop-by-hop and
/// isr's control headers removed (they are never sent to visitors), its state set, no
/// body for HEAD.
fn not_stored(req: &Request<Boxed>, mut res: Response<Body>, state: CacheState) -> Response<Body> {
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

/// `{"error": message}` with `status`.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &ApiError {
            status,
            message: message.into(),
        }
        .body(),
    )
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
    fn secrets_are_redacted_from_logged_keys() {
        assert_eq!(
            redact_secret("/_isr/revalidate?a=1&secret=s3&tag=x".into()),
            "/_isr/revalidate?a=1&secret=<redacted>&tag=x"
        );
        assert_eq!(
            redact_secret("/blog?secretary=1".into()),
            "/blog?secretary=1"
        );
    }

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
