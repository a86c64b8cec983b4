//! ISR inside a Rust web app: [`Isr`] holds the engine (store, tag clock, data cache)
//! and [`IsrLayer`] wraps the app's router, whose handlers become the origin, called
//! in-process.
//!
//! It is the same code as `isr serve`: the layer's service answers every request with
//! [`crate::front::Front`], and the engine's [`crate::origin::Source`] is the wrapped
//! service instead of an HTTP client. States, headers, single-flight, stores, the
//! revalidation API and the `/_isr/` routes behave as the server's do.
//!
//! ```
//! use axum::{routing::get, Router};
//! use isr::layer::{Isr, Route};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let isr = Isr::builder()
//!     .memory_store()
//!     .route(Route::new("/blog/{slug}").revalidate(300).tags(["posts", "post:{slug}"]))
//!     .route(Route::new("/admin/{*rest}").cache(false))
//!     .build()
//!     .await?;
//! let router = Router::new().route("/blog/{slug}", get(|| async { "<h1>Hello</h1>" }));
//! let app = isr.layer().layer(router);
//! // Serve it with `axum::serve(listener, Router::new().fallback_service(app))`.
//!
//! let get = |path: &str| http::Request::get(path).body(axum::body::Body::empty()).unwrap();
//! let first = app.clone().oneshot(get("/blog/hello")).await?;
//! assert_eq!(first.headers()["x-isr-cache"], "MISS");
//! let second = app.clone().oneshot(get("/blog/hello")).await?;
//! assert_eq!(second.headers()["x-isr-cache"], "HIT");
//!
//! // After a CMS edit:
//! isr.revalidate_tag("posts").await?;
//! let third = app.oneshot(get("/blog/hello")).await?;
//! assert_eq!(third.headers()["x-isr-cache"], "STALE");
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response};
use http_body::Body as HttpBody;
use tower_service::Service;

use crate::body::{self, Body, BoxError, Boxed};
use crate::config::{self, Config, ConfigError};
use crate::data::{CacheLife, DataCache};
use crate::engine::{Engine, Revalidation};
use crate::front::Front;
use crate::origin::{FetchError, Fetched, Source, SourceFuture};
use crate::store::{self, StoreError};

/// ISR for an app: the engine, its store and the revalidation functions. Cheap to clone;
/// handlers reach it through their state, or as an `Extension<Isr>` (the layer's
/// service adds it to every request it hands to the app).
#[derive(Clone)]
pub struct Isr {
    front: Arc<Front>,
    engine: Arc<Engine>,
}

/// Failure to build an [`Isr`].
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is invalid (the message names it).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The store cannot be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
}

enum StoreChoice {
    Memory,
    Dir(PathBuf),
    Redis(String),
}

/// Settings for an [`Isr`], in the vocabulary of the config file. See [`Isr::builder`].
pub struct IsrBuilder {
    toml: String,
    routes: Vec<Route>,
    revalidate: Option<Option<u64>>,
    store: StoreChoice,
    secret: Option<String>,
    fetch_allow: Vec<String>,
    cache_life: Vec<(String, CacheLife)>,
}

/// A route configured in code: the same keys as a `[[route]]` block.
#[derive(Debug, Clone)]
pub struct Route {
    pattern: String,
    revalidate: Option<Option<u64>>,
    tags: Vec<String>,
    dynamic: bool,
    cache: bool,
    refresh: Option<String>,
}

impl Route {
    /// A route for `pattern` (`/blog/{slug}`, `/docs/{*path}`).
    pub fn new(pattern: &str) -> Route {
        Route {
            pattern: pattern.into(),
            revalidate: None,
            tags: Vec::new(),
            dynamic: true,
            cache: true,
            refresh: None,
        }
    }

    /// Regenerate pages of this route once they are `secs` old.
    pub fn revalidate(mut self, secs: u64) -> Route {
        self.revalidate = Some(Some(secs));
        self
    }

    /// Regenerate pages of this route only on demand (`revalidate = false`).
    pub fn revalidate_on_demand_only(mut self) -> Route {
        self.revalidate = Some(None);
        self
    }

    /// Tag templates (`post:{slug}` takes the route's `{slug}`).
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Route {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// `dynamic(false)`: only prebuilt or listed paths exist; others are 404 without
    /// calling the app.
    pub fn dynamic(mut self, dynamic: bool) -> Route {
        self.dynamic = dynamic;
        self
    }

    /// `refresh`: `"on-request"` (default), `"ahead"` (a hit late in the window
    /// regenerates early) or `"always"` (pages regenerate as they go stale, visited or
    /// not).
    pub fn refresh(mut self, refresh: &str) -> Route {
        self.refresh = Some(refresh.into());
        self
    }

    /// `cache(false)`: never cached; every request goes to the app (`BYPASS`).
    pub fn cache(mut self, cache: bool) -> Route {
        self.cache = cache;
        self
    }
}

impl Isr {
    /// Settings with the defaults of the config file, the embedded store in
    /// `./isr-data`, and the secret from `ISR_SECRET` when it is set.
    pub fn builder() -> IsrBuilder {
        IsrBuilder {
            toml: String::new(),
            routes: Vec::new(),
            revalidate: None,
            store: StoreChoice::Dir(PathBuf::from("./isr-data")),
            secret: None,
            fetch_allow: Vec::new(),
            cache_life: Vec::new(),
        }
    }

    /// The layer that wraps the app (the whole router: `isr.layer().layer(router)`).
    pub fn layer(&self) -> IsrLayer {
        IsrLayer {
            isr: self.clone(),
            client_ip: socket_addr,
        }
    }

    /// The engine (lookups, revalidations, metrics).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The data cache, sharing the pages' store and tag clock.
    pub fn data(&self) -> DataCache {
        DataCache::new(self.engine.clone())
    }

    /// Marks every page and value carrying `tag` stale: served once more while it is
    /// regenerated in the background (Next.js's `revalidateTag`). Returns the mark's
    /// time (unix ms).
    pub async fn revalidate_tag(&self, tag: &str) -> Result<u64, StoreError> {
        self.revalidate(&Revalidation {
            tags: vec![tag.into()],
            ..Default::default()
        })
        .await
    }

    /// Expires every page and value carrying `tag`: the next read waits for fresh
    /// content, so the writer reads its own write (Next.js's `updateTag`).
    pub async fn update_tag(&self, tag: &str) -> Result<u64, StoreError> {
        self.revalidate(&Revalidation {
            tags: vec![tag.into()],
            expire: true,
            ..Default::default()
        })
        .await
    }

    /// Marks the page at `path` (and its query variants) stale (Next.js's
    /// `revalidatePath`).
    pub async fn revalidate_path(&self, path: &str) -> Result<u64, StoreError> {
        self.revalidate(&Revalidation {
            pages: vec![path.into()],
            ..Default::default()
        })
        .await
    }

    /// Runs `[prebuild]` now (the layer also starts it once when it wraps the app):
    /// fetches the listed and sitemap pages that are not stored and fresh.
    pub async fn prebuild(&self) -> crate::prebuild::Report {
        crate::prebuild::run(&self.engine, &|_, _| {}).await
    }

    /// Any revalidation the HTTP API can express (layouts, several tags, `eager`).
    pub async fn revalidate(&self, r: &Revalidation) -> Result<u64, StoreError> {
        self.engine.revalidate(r).await
    }
}

impl IsrBuilder {
    /// Starts from config-file text (every key of `isr.toml` except `listen` and
    /// `origin`, which belong to the server); later calls add to it.
    pub fn config_toml(mut self, text: &str) -> IsrBuilder {
        self.toml = text.into();
        self
    }

    /// `[cache] revalidate`: the window of pages no route or response sets, in seconds.
    pub fn revalidate(mut self, secs: u64) -> IsrBuilder {
        self.revalidate = Some(Some(secs));
        self
    }

    /// Adds a route.
    pub fn route(mut self, route: Route) -> IsrBuilder {
        self.routes.push(route);
        self
    }

    /// Keeps everything in memory only (tests, previews): nothing survives a restart.
    pub fn memory_store(mut self) -> IsrBuilder {
        self.store = StoreChoice::Memory;
        self
    }

    /// The embedded store's directory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> IsrBuilder {
        self.store = StoreChoice::Dir(dir.into());
        self
    }

    /// A Redis store shared with other nodes (`redis://host:port/db`).
    pub fn redis(mut self, url: &str) -> IsrBuilder {
        self.store = StoreChoice::Redis(url.into());
        self
    }

    /// The revalidation API's secret (else `ISR_SECRET`, or the config's `secret_env`).
    pub fn secret(mut self, secret: &str) -> IsrBuilder {
        self.secret = Some(secret.into());
        self
    }

    /// `[fetch] allow`: hosts `/_isr/fetch` may fetch.
    pub fn fetch_allow<I: IntoIterator<Item = S>, S: Into<String>>(mut self, hosts: I) -> Self {
        self.fetch_allow = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// `[cache_life.NAME]`: a data cache profile.
    pub fn cache_life(mut self, name: &str, life: CacheLife) -> IsrBuilder {
        self.cache_life.push((name.into(), life));
        self
    }

    /// Validates the settings (errors name the key, as for a config file) and opens the
    /// store.
    pub async fn build(self) -> Result<Isr, BuildError> {
        let mut toml = self.toml.clone();
        let quote = |s: &str| toml::Value::String(s.into()).to_string();
        let window = |w: Option<u64>| w.map_or("false".to_string(), |s| s.to_string());
        if let Some(w) = self.revalidate {
            toml = format!("[cache]\nrevalidate = {}\n{toml}", window(w));
        }
        if !self.fetch_allow.is_empty() {
            let hosts: Vec<String> = self.fetch_allow.iter().map(|h| quote(h)).collect();
            toml.push_str(&format!("\n[fetch]\nallow = [{}]\n", hosts.join(", ")));
        }
        for r in &self.routes {
            toml.push_str(&format!("\n[[route]]\nmatch = {}\n", quote(&r.pattern)));
            if let Some(w) = r.revalidate {
                toml.push_str(&format!("revalidate = {}\n", window(w)));
            }
            let tags: Vec<String> = r.tags.iter().map(|t| quote(t)).collect();
            toml.push_str(&format!(
                "tags = [{}]\ndynamic = {}\ncache = {}\n",
                tags.join(", "),
                r.dynamic,
                r.cache
            ));
            if let Some(refresh) = &r.refresh {
                toml.push_str(&format!("refresh = {}\n", quote(refresh)));
            }
        }
        let overrides = config::Overrides {
            origin: Some("http://localhost".into()),
            ..Default::default()
        };
        let mut cfg: Config = config::parse("IsrBuilder", &toml, &overrides)?;
        for (name, life) in self.cache_life {
            cfg.cache_life.insert(name, life);
        }
        // A `[redis]` table in the config text wins over the builder's choice.
        let store: Arc<dyn store::Store> = match (self.store, cfg.redis.is_some()) {
            (StoreChoice::Memory, false) => Arc::new(store::MemoryStore::default()),
            (StoreChoice::Redis(url), false) => {
                cfg.redis = Some(config::RedisConfig {
                    url,
                    prefix: "isr".into(),
                });
                store::open(&cfg)?
            }
            (StoreChoice::Dir(d), false) => {
                cfg.data_dir = d;
                store::open(&cfg)?
            }
            (_, true) => store::open(&cfg)?,
        };
        let secrets = match &self.secret {
            Some(s) => crate::Secrets::parse(s),
            None => crate::Secrets::parse(&std::env::var(&cfg.secret_env).unwrap_or_default()),
        };
        let engine = Engine::without_source(cfg, store).await?;
        Ok(Isr {
            front: Front::new(engine.clone(), secrets),
            engine,
        })
    }
}

/// A tower layer: `isr.layer().layer(router)` gives a service that caches the router's
/// pages. Wrap the whole router: axum's `Router::layer` wraps each route separately,
/// and an engine has one source, so that panics with a message saying so.
#[derive(Clone)]
pub struct IsrLayer {
    isr: Isr,
    client_ip: ClientIp,
}

/// Reads the client's address from a request's extensions.
type ClientIp = fn(&http::Extensions) -> Option<IpAddr>;

/// A `SocketAddr` extension, when the server put one there.
fn socket_addr(ext: &http::Extensions) -> Option<IpAddr> {
    ext.get::<SocketAddr>().map(SocketAddr::ip)
}

impl IsrLayer {
    /// How to find the client's address in a request (the limit on wrong secrets counts
    /// by it; without one, every client counts as one). With axum's
    /// `into_make_service_with_connect_info::<SocketAddr>()`:
    /// `.client_ip(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))`.
    /// The default reads a `SocketAddr` extension.
    pub fn client_ip(mut self, read: ClientIp) -> IsrLayer {
        self.client_ip = read;
        self
    }
}

impl<S> tower_layer::Layer<S> for IsrLayer
where
    S: Service<Request<Boxed>> + Clone + Send + Sync + 'static,
    S::Response: IntoHttp,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Service = IsrService<S>;

    fn layer(&self, inner: S) -> IsrService<S> {
        let cfg = self.isr.engine.config();
        let source = AppSource {
            inner,
            isr: (
                Arc::downgrade(&self.isr.front),
                Arc::downgrade(&self.isr.engine),
            ),
            host: HeaderValue::from_str(&cfg.origin_host)
                .unwrap_or(HeaderValue::from_static("localhost")),
            timeout: cfg.cache.origin_timeout,
            max_body: cfg.cache.max_body,
        };
        assert!(
            self.isr.engine.bind_source(Arc::new(source)),
            "an IsrLayer wraps one service: apply it to the whole router \
             (`isr.layer().layer(router)`), not through axum's Router::layer, \
             which wraps each route separately"
        );
        // `[prebuild]`, as `isr serve` does at start (`/_isr/health?ready` says when it
        // is done), once there is an app to render the pages.
        let p = &self.isr.engine.config().prebuild;
        if !p.paths.is_empty() || p.sitemap.is_some() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let engine = self.isr.engine.clone();
                engine.set_ready_later();
                runtime.spawn(async move {
                    crate::prebuild::run(&engine, &|_, _| {}).await;
                    engine.set_ready();
                });
            }
        }
        IsrService {
            isr: self.isr.clone(),
            client_ip: self.client_ip,
            inner: PhantomData,
        }
    }
}

/// The service an [`IsrLayer`] makes: answers from the cache, and calls the app for
/// misses, regenerations and everything that is not cached.
pub struct IsrService<S> {
    isr: Isr,
    client_ip: ClientIp,
    inner: PhantomData<fn() -> S>,
}

impl<S> Clone for IsrService<S> {
    fn clone(&self) -> Self {
        IsrService {
            isr: self.isr.clone(),
            client_ip: self.client_ip,
            inner: PhantomData,
        }
    }
}

impl<S, B> Service<Request<B>> for IsrService<S>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The app is called through clones of it, made ready when called.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The client's address, as `client_ip` finds it: what the limit on wrong secrets
        // counts by.
        let ip = (self.client_ip)(req.extensions()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let remote = SocketAddr::new(ip, 0);
        let mut req = req.map(body::boxed_unsync);
        req.extensions_mut().insert(self.isr.clone());
        let front = self.isr.front.clone();
        Box::pin(async move { Ok(front.handle(req, remote, false).await) })
    }
}

/// A response an app may give: any `http::Response` whose body is bytes.
pub trait IntoHttp: Send + 'static {
    /// As a response with a [`Boxed`] body.
    fn into_http(self) -> Response<Boxed>;
}

impl<B> IntoHttp for Response<B>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn into_http(self) -> Response<Boxed> {
        self.map(body::boxed_unsync)
    }
}

/// The engine's source for an app: the wrapped service, called in-process.
struct AppSource<S> {
    inner: S,
    /// The [`Isr`] handed to renders as an extension (weak: the engine owns this).
    isr: (std::sync::Weak<Front>, std::sync::Weak<Engine>),
    host: HeaderValue,
    timeout: Duration,
    max_body: u64,
}

const APP: &str = "the app behind IsrLayer";

fn app_error(detail: impl ToString) -> FetchError {
    FetchError::Invalid {
        origin: APP.into(),
        detail: detail.to_string(),
    }
}

impl<S> AppSource<S>
where
    S: Service<Request<Boxed>> + Clone + Send + Sync + 'static,
    S::Response: IntoHttp,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    async fn call(&self, req: Request<Boxed>) -> Result<Response<Boxed>, FetchError> {
        let mut svc = self.inner.clone();
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .map_err(|e| app_error(e.into()))?;
        let res = svc.call(req).await.map_err(|e| app_error(e.into()))?;
        Ok(res.into_http())
    }

    async fn render(&self, key: &str) -> Result<Fetched, FetchError> {
        let mut req = Request::get(key)
            .body(body::boxed(http_body_util::Empty::<Bytes>::new()))
            .map_err(app_error)?;
        crate::origin::cache_fetch_headers(req.headers_mut(), self.host.clone());
        if let (Some(front), Some(engine)) = (self.isr.0.upgrade(), self.isr.1.upgrade()) {
            req.extensions_mut().insert(Isr { front, engine });
        }
        let (res, used) = crate::data::rendering(async {
            let res = self.call(req).await?;
            let (parts, body) = res.into_parts();
            crate::origin::read_body(parts, body, self.max_body, app_error).await
        })
        .await;
        let mut fetched = res?;
        let parts = match &mut fetched {
            Fetched::Complete(parts, _) | Fetched::TooLarge(parts, _, _) => parts,
        };
        add_data_facts(&mut parts.headers, &used);
        Ok(fetched)
    }
}

/// Gives a page the tags of the data its render read, and a revalidate window no
/// longer than theirs (through headers an HTTP origin may send too).
fn add_data_facts(h: &mut http::HeaderMap, used: &crate::data::Used) {
    if !used.tags.is_empty() {
        let mut tags = h
            .get("x-isr-tags")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_default();
        for t in &used.tags {
            if !tags.is_empty() {
                tags.push(',');
            }
            tags.push_str(t);
        }
        if let Ok(v) = HeaderValue::from_str(&tags) {
            h.insert("x-isr-tags", v);
        }
    }
    if let Some(ms) = used.revalidate {
        h.insert("x-isr-revalidate-max", HeaderValue::from(ms.div_ceil(1000)));
    }
}

impl<S> Source for AppSource<S>
where
    S: Service<Request<Boxed>> + Clone + Send + Sync + 'static,
    S::Response: IntoHttp,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    fn fetch<'a>(&'a self, key: &'a str) -> SourceFuture<'a, Result<Fetched, FetchError>> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.render(key)).await {
                Ok(r) => r,
                Err(_) => Err(FetchError::Timeout {
                    origin: APP.into(),
                    timeout: self.timeout,
                }),
            }
        })
    }

    fn proxy(
        &self,
        req: Request<Boxed>,
        _client: IpAddr,
    ) -> SourceFuture<'_, Result<Response<Boxed>, FetchError>> {
        Box::pin(self.call(req))
    }

    fn name(&self) -> &str {
        APP
    }
}
