//! # isr: Incremental Static Regeneration in front of any website
//!
//! A request flows through these parts:
//!
//! ```text
//! request ─► front ─► key + route ─► Engine::serve ─► policy::freshness(timing, tag clock mark, now)
//!                                        │                    ├─ HIT / STALE ─► respond (STALE also starts a flight)
//!                  HotTier ◄── Store (redb | redis)           └─ MISS ─► flight (single-flight) ─► Source (HTTP origin, or the app behind IsrLayer)
//!                                        ▲
//!            revalidation API ─► TagClock (+ store marks) ─► (eager) flights
//! ```
//!
//! - [`policy`]: the rules, as pure functions of entry timing, the tag clock's mark and
//!   `now`: fresh, stale or expired; `Cache-Control` for CDNs; freshness precedence;
//!   what may be stored; backoff.
//! - [`engine::Engine`]: single-flight per key for misses and regenerations (a *flight*
//!   is a spawned task that outlives the request that started it), a semaphore bounding
//!   background regenerations, backoff after failures, hit-for-miss, and on-demand
//!   revalidation. It knows the [`store::Store`] trait, never a concrete store.
//! - [`tags::TagClock`]: when each tag, page and layout was last revalidated. An entry
//!   generated before a mark that concerns it is stale (or expired), so revalidating a
//!   tag is one map write whatever the number of pages.
//! - [`store`]: the `Store` trait and its adapters ([`store::RedbStore`], durable and
//!   crash-safe; [`store::RedisStore`], shared by several nodes, which also hands out
//!   per-page regeneration leases and carries revalidations to every node;
//!   [`store::MemoryStore`]) and the byte-bounded [`store::HotTier`], which keeps large
//!   bodies in sealed memory files ([`page_file`]) that are sent with `sendfile`.
//! - [`origin`]: the HTTP client side: fetching pages with requests that never carry
//!   visitor data, proxying bypassed requests, and turning responses into
//!   [`entry::Entry`] values with Brotli and gzip variants.
//! - [`front`]: the HTTP server, the `/_isr/` routes and response headers. Connections
//!   start in its *hit loops* (one epoll thread per CPU), which answer plain `GET`/`HEAD`
//!   hits straight from the socket (pages in memory, and pages the store reads from the
//!   OS page cache); misses and pages the store must read from the disk go to its *hit
//!   lane* on tokio, anything else to hyper. It enforces `[limits]`
//!   (head timeout and size, connections, request time, API body size, and the
//!   per-address limit on wrong secrets kept by [`api::SecretThrottle`]).
//! - [`cdn`]: purging the CDN layers in front of isr (`[[cdn]]`: HTTP `PURGE` with
//!   Varnish xkey tags, Cloudflare, Fastly, a signed webhook) after revalidations, batched
//!   and retried by one background worker per CDN, and the tag headers sent downstream.
//! - [`admin`]: the admin page (server-rendered HTML, login sessions, CSRF tokens) and the
//!   status JSON; [`metrics`]: the counters behind `/_isr/metrics`.
//! - [`layer`]: ISR inside a Rust web app. [`layer::Isr`] holds an engine whose
//!   [`origin::Source`] is the app itself, and [`layer::IsrLayer`] wraps the app's router
//!   so every request goes through the same front as `isr serve` (whose source is the
//!   HTTP [`origin::Origin`]). `Isr` also has `revalidate_tag`, `update_tag` and
//!   `revalidate_path` for handlers.
//! - [`data`]: the data cache ([`data::DataCache::get_or_fetch`] with tags and a
//!   [`data::CacheLife`]), in the pages' store and under the same tag clock; a page
//!   rendered through the layer inherits the tags and shortest window of the data it
//!   read. [`fetch`] serves it to origins in any language at `/_isr/fetch`, for the
//!   upstream hosts of `[fetch] allow` only.
//! - [`config`], [`key`], [`route`], [`api`]: configuration, cache keys, routes and the
//!   revalidation API's parsing.
#![deny(missing_docs)]

pub mod admin;
pub mod api;
mod background;
pub mod body;
pub mod cdn;
pub mod config;
pub mod data;
pub mod engine;
pub mod entry;
pub mod fetch;
pub mod front;
pub mod key;
pub mod layer;
pub mod metrics;
pub mod origin;
pub mod page_file;
pub mod policy;
pub mod prebuild;
pub mod route;
pub mod store;
pub mod tags;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use api::Secrets;
pub use config::Config;
pub use engine::Engine;

/// Failure to start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory cannot be used.
    #[error("{0}")]
    Store(#[from] store::StoreError),
    /// A `[[cdn]]` cannot be used (its token is missing from the environment).
    #[error("{0}")]
    Cdn(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the `[prebuild]` once against the configured store and returns what it did
/// (`isr prebuild`); `progress(done, total)` is called after each page.
pub async fn prebuild_once(
    cfg: Config,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<prebuild::Report, StartError> {
    let engine = Engine::new(cfg.clone(), store::open(&cfg)?).await?;
    let report = prebuild::run(&engine, progress).await;
    // Rewrites the store may still hold back (unchanged pages) are committed before exit.
    if let Err(e) = engine.store().sync().await {
        tracing::warn!(error = %e, "could not commit the last rewrites");
    }
    Ok(report)
}

/// A server that is bound and ready to run.
pub struct Server {
    front: Arc<front::Front>,
    listener: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
}

impl Server {
    /// Opens the store (Redis when `cfg.redis` is set, else the embedded store in
    /// `cfg.data_dir`) and binds `cfg.listen`.
    pub async fn bind(cfg: Config, secrets: Secrets) -> Result<Server, StartError> {
        cdn::check_env(&cfg, |v| std::env::var(v).ok()).map_err(StartError::Cdn)?;
        let store = store::open(&cfg)?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let admin = match cfg.admin_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?,
            ),
            None => None,
        };
        let engine = Engine::new(cfg, store).await?;
        let p = &engine.config().prebuild;
        if !p.paths.is_empty() || p.sitemap.is_some() {
            engine.set_ready_later();
            let e = engine.clone();
            tokio::spawn(async move {
                prebuild::run(&e, &|_, _| {}).await;
                e.set_ready();
            });
        }
        Ok(Server {
            front: front::Front::new(engine, secrets),
            listener,
            admin,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` completes, then lets requests in flight finish (at most
    /// [`Server::GRACE`]), then commits what the store holds back. Pages already stored
    /// are durable whenever the process stops.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let store = self.front.engine.store().clone();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let when_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let admin = self.admin.map(|listener| {
            tokio::spawn(self.front.clone().serve(
                listener,
                true,
                when_stopped(stopped.clone()),
                Self::GRACE,
            ))
        });
        let main = self
            .front
            .serve(self.listener, false, when_stopped(stopped), Self::GRACE);
        tokio::pin!(main);
        tokio::select! {
            () = shutdown => {
                let _ = stop.send(true);
                main.await;
            }
            () = &mut main => {}
        }
        let _ = stop.send(true);
        if let Some(a) = admin {
            let _ = a.await;
        }
        if let Err(e) = store.sync().await {
            tracing::warn!(error = %e, "could not commit the last rewrites before stopping");
        }
    }

    /// How long requests in flight may take to finish after a shutdown signal.
    pub const GRACE: std::time::Duration = std::time::Duration::from_secs(10);
}
