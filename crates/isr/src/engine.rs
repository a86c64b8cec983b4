//! The engine: lookups through the hot tier and the store, per-key single-flight for
//! misses and regenerations, the bounded background regeneration queue, retry backoff,
//! hit-for-miss, and on-demand revalidation through the tag clock.
//!
//! Every origin fetch for the cache runs in a spawned task (a *flight*) that outlives
//! the request that started it. Requests for the same key join the running flight; a
//! guard publishes an outcome even if the task dies, so no waiter hangs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::body::Body;
use crate::cdn::{Cdn, Cdns, Purge};
use crate::config::{Config, Window};
use crate::entry::Entry;
use crate::key;
use crate::metrics::{Metrics, OriginError, RevalidationKind, StoreOp};
use crate::origin::{self, FetchError, Fetched, Origin, Source};
use crate::policy::{self, Freshness, Mark};
use crate::route::{Routes, Rules};
use crate::store::{HotTier, Lease, Store, StoreError, StoreEvent};
use crate::tags::{TagClock, Target};

/// A response that only the visitor who asked may get (uncacheable or too large).
pub struct Passthrough {
    /// Status and headers as the origin sent them.
    pub parts: http::response::Parts,
    /// The body, possibly still streaming from the origin.
    pub body: Body,
}

/// A response that is not stored: an origin error passed through, or isr's own 502/504.
#[derive(Debug)]
pub struct ErrorResponse {
    /// Status to send.
    pub status: StatusCode,
    /// Headers to send.
    pub headers: HeaderMap,
    /// Body to send.
    pub body: Bytes,
}

impl ErrorResponse {
    fn from_fetch(e: &FetchError) -> ErrorResponse {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        ErrorResponse {
            status: e.status(),
            headers,
            body: Bytes::from(format!("{e}\n")),
        }
    }
}

/// What a flight produced.
#[derive(Clone)]
pub enum Outcome {
    /// A page was stored (or a newer stored one found); serve it.
    Stored(Arc<Entry>),
    /// Uncacheable: the first visitor to take it gets it, others fetch their own.
    Uncacheable(Arc<Mutex<Option<Passthrough>>>),
    /// No usable page: keep any old copy, else send this.
    Failed(Arc<ErrorResponse>),
}

/// What the front should answer for a cacheable request.
pub enum Served {
    /// Fresh from cache.
    Hit(Arc<Entry>),
    /// Stale from cache (a regeneration has been started or is backing off).
    Stale(Arc<Entry>),
    /// Fetched from the origin just now and stored.
    Miss(Arc<Entry>),
    /// An uncacheable response for this visitor only (`BYPASS`).
    Pass(Passthrough),
    /// Proxy the visitor's own request (`BYPASS`, hit-for-miss).
    Bypass,
    /// Not stored: an origin error or a 502/504 (`MISS`).
    Error(Arc<ErrorResponse>),
    /// A path a `dynamic = false` route does not know: 404 without asking the origin,
    /// with the origin's cached `/404` page when there is one.
    NotFound(Option<Arc<Entry>>),
}

/// A wall clock in unix ms that follows tokio's clock, so paused-clock tests can move it.
struct Now {
    base_ms: u64,
    base: tokio::time::Instant,
}

impl Now {
    fn new() -> Now {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Now {
            base_ms,
            base: tokio::time::Instant::now(),
        }
    }

    fn ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }
}

/// A running fetch for one key: its outcome, and a signal that a visitor is now waiting
/// for it (a background regeneration queued for a permit then starts at once).
struct Flight {
    outcome: watch::Receiver<Option<Outcome>>,
    visitor_waiting: Arc<tokio::sync::Notify>,
}

/// When each `refresh = "always"` page is due: a min-heap, and the live due time per
/// key (heap entries that no longer match it are stale and skipped).
#[derive(Default)]
struct RefreshSchedule {
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(u64, String)>>,
    due: HashMap<String, u64>,
}

/// What prebuilding one page did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warmed {
    /// Already stored and fresh: nothing fetched.
    Fresh,
    /// Fetched and stored.
    Stored,
    /// Not stored, and why.
    Failed(String),
}

/// The last overdue scan: how many pages were overdue, and the first of them.
#[derive(Debug, Clone, Default)]
pub struct Overdue {
    /// Pages overdue.
    pub count: u64,
    /// The first [`OVERDUE_LISTED`] of them, in key order.
    pub pages: Vec<(String, crate::entry::Meta)>,
    /// When the scan finished (unix ms; 0 = none yet).
    pub scanned_at: u64,
}

/// How many overdue pages a scan keeps for the admin page.
pub const OVERDUE_LISTED: usize = 1000;

/// Background regenerations that may wait for a slot or run at once, per slot of
/// `regen_concurrency` (1,024 with the default 16).
pub const QUEUED_PER_SLOT: usize = 64;

struct Backoff {
    failures: u32,
    until: u64,
    last_error: String,
}

/// Most pages a backoff is kept for at once. A dead origin behind a large store fails
/// every page visited; past this, a failing page retries at its next stale hit, within
/// the bounded queue of background regenerations.
const BACKOFFS_KEPT: usize = 100_000;

/// Failing pages: how many regenerations of each failed in a row, and when it may be
/// tried again.
struct Backoffs {
    map: HashMap<String, Backoff>,
    cap: usize,
    /// When backoffs past their retry time may next be swept out to make room (unix ms).
    sweep_at: u64,
}

impl Backoffs {
    fn new(cap: usize) -> Backoffs {
        Backoffs {
            map: HashMap::new(),
            cap,
            sweep_at: 0,
        }
    }

    fn get(&self, key: &str) -> Option<&Backoff> {
        self.map.get(key)
    }

    fn remove(&mut self, key: &str) {
        self.map.remove(key);
    }

    /// Records a failed regeneration of `key`: its backoff, or `None` when `cap` pages
    /// are backing off already (those past their retry time are swept out, at most once
    /// a second, to make room).
    fn record(&mut self, key: &str, now: u64, window: Window, why: &str) -> Option<&Backoff> {
        if self.map.len() >= self.cap && !self.map.contains_key(key) {
            if now >= self.sweep_at {
                self.map.retain(|_, b| b.until > now);
                self.sweep_at = now + 1000;
            }
            if self.map.len() >= self.cap {
                return None;
            }
        }
        let b = self.map.entry(key.to_string()).or_insert(Backoff {
            failures: 0,
            until: 0,
            last_error: String::new(),
        });
        b.failures += 1;
        why.clone_into(&mut b.last_error);
        b.until = now + policy::backoff_ms(b.failures, window);
        Some(b)
    }
}

/// An on-demand revalidation request, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revalidation {
    /// Pages (type page).
    pub pages: Vec<String>,
    /// Layouts (type layout).
    pub layouts: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// `mode = "expire"`.
    pub expire: bool,
    /// Queue regenerations of affected entries now.
    pub eager: bool,
}

/// The ISR engine. Shared as `Arc<Engine>`.
pub struct Engine {
    cfg: Config,
    routes: Routes,
    store: Arc<dyn Store>,
    hot: HotTier,
    clock: TagClock,
    /// Where pages come from: set at start for `isr serve`, by the layer for an app.
    source: std::sync::OnceLock<Arc<dyn Source>>,
    flights: Mutex<HashMap<String, Flight>>,
    data_flights: crate::data::DataFlights,
    backoff: Mutex<Backoffs>,
    uncacheable: quick_cache::sync::Cache<String, u64>,
    regen_slots: Arc<Semaphore>,
    /// Places for background regenerations waiting for a slot or running
    /// ([`QUEUED_PER_SLOT`] per slot).
    regen_queue: Arc<Semaphore>,
    now: Now,
    metrics: Metrics,
    /// `refresh = "always"` pages by the time they go stale (earliest first).
    refresh_due: Mutex<RefreshSchedule>,
    /// False while the start-up prebuild runs.
    ready: std::sync::atomic::AtomicBool,
    /// Pages found overdue by the last monitor scan (count, and the first few).
    overdue: Mutex<Overdue>,
    /// The latest revalidation mark handed out; generation stamps are kept above the
    /// marks applied before them, so same-millisecond races resolve correctly.
    last_mark: AtomicU64,
    /// The `[[cdn]]` layers purged after revalidations.
    cdn: Cdns,
    /// Stored pages of `dynamic = false` routes that the last prebuild no longer lists:
    /// unknown again (404 without the origin). Empty most of the time, so the hit path
    /// checks the flag first.
    dropped: std::sync::RwLock<std::collections::HashSet<String>>,
    any_dropped: std::sync::atomic::AtomicBool,
    /// Store errors are logged once a minute (a full disk fails every write).
    quiet_reads: Quiet,
    quiet_writes: Quiet,
    /// Regeneration failures are logged at most [`FAILURES_LOGGED_PER_S`] a second.
    quiet_regens: Quiet,
}

/// Lets a recurring error be logged at most `limit` times per `every_ms`, the window
/// starting at the first one logged, each with the count held back since the one before.
struct Quiet {
    every_ms: u64,
    limit: u64,
    /// When the current window ends (unix ms).
    next_at: AtomicU64,
    /// Logged in the current window (starts at `limit`, so nothing is logged before the
    /// first window opens).
    used: AtomicU64,
    held_back: AtomicU64,
}

/// Regeneration failures logged per second at most (a dead origin behind many stale pages
/// fails thousands a second; a page or two failing are all logged).
const FAILURES_LOGGED_PER_S: u64 = 10;

impl Quiet {
    fn new(every_ms: u64, limit: u64) -> Quiet {
        Quiet {
            every_ms,
            limit,
            next_at: AtomicU64::new(0),
            used: AtomicU64::new(limit),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(errors held back since the last log)` when this one should be logged.
    fn admit(&self, now: u64) -> Option<u64> {
        let next = self.next_at.load(Ordering::Relaxed);
        let opens = now >= next
            && self
                .next_at
                .compare_exchange(
                    next,
                    now + self.every_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if opens {
            self.used.store(1, Ordering::Relaxed);
        }
        if opens || self.used.fetch_add(1, Ordering::Relaxed) < self.limit {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// What [`Engine::take_turn`] found.
pub(crate) enum Turn {
    /// Another node stored a fresh entry meanwhile: use it.
    Newer(Arc<Entry>),
    /// Fetch it. `lease` is held until the fetch is stored; `waited`: another node held
    /// the lease, and gave up or failed.
    Go {
        lease: Option<crate::store::LeaseGuard>,
        waited: bool,
    },
}

/// The stored pages a revalidation touches.
#[derive(Default)]
struct Affected {
    /// Pages named by path (and their query variants) or under a layout.
    by_path: Vec<String>,
    /// Pages carrying one of the tags (looked up only where needed).
    by_tag: Vec<String>,
}

impl Engine {
    /// Builds an engine over `store` that fetches pages from the configured HTTP origin,
    /// loading the tag clock from the store.
    pub async fn new(cfg: Config, store: Arc<dyn Store>) -> Result<Arc<Engine>, StoreError> {
        let origin = Arc::new(Origin::new(&cfg));
        let engine = Engine::without_source(cfg, store).await?;
        engine.bind_source(origin);
        Ok(engine)
    }

    /// An engine whose source is bound later with [`Engine::bind_source`] (by the layer,
    /// once it knows the app it wraps). Until then every fetch fails with a 502.
    pub async fn without_source(
        cfg: Config,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Engine>, StoreError> {
        let clock = TagClock::new();
        let mut last = 0;
        let marks = match store.load_marks().await {
            Ok(marks) => marks,
            // A shared store that is down at start: the node starts empty (every page is
            // a miss) and its subscriber loads the clock once the store is reachable.
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!(error = %why, "starting without the shared tag clock");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        for (name, mark) in marks {
            if let Some(t) = Target::from_store_name(&name) {
                clock.apply(t, mark);
                last = last.max(mark.stale_at).max(mark.expire_at);
            }
        }
        let events = store.events();
        let cfg_cdns = cfg.cdns.clone();
        let engine = Arc::new(Engine {
            routes: Routes::new(&cfg.routes),
            hot: HotTier::new(cfg.cache.memory),
            source: std::sync::OnceLock::new(),
            regen_slots: Arc::new(Semaphore::new(cfg.cache.regen_concurrency)),
            regen_queue: Arc::new(Semaphore::new(
                cfg.cache.regen_concurrency.saturating_mul(QUEUED_PER_SLOT),
            )),
            uncacheable: quick_cache::sync::Cache::new(10_000),
            flights: Mutex::default(),
            data_flights: Mutex::default(),
            backoff: Mutex::new(Backoffs::new(BACKOFFS_KEPT)),
            clock,
            store,
            cfg,
            now: Now::new(),
            metrics: Metrics::default(),
            refresh_due: Mutex::default(),
            ready: std::sync::atomic::AtomicBool::new(true),
            overdue: Mutex::default(),
            last_mark: AtomicU64::new(last),
            dropped: Default::default(),
            any_dropped: Default::default(),
            quiet_reads: Quiet::new(60_000, 1),
            quiet_writes: Quiet::new(60_000, 1),
            quiet_regens: Quiet::new(1_000, FAILURES_LOGGED_PER_S),
            cdn: Cdns::start(
                cfg_cdns
                    .into_iter()
                    .map(|c| Cdn::new(c, |v| std::env::var(v).ok()))
                    .collect(),
            ),
        });
        let weak = Arc::downgrade(&engine);
        let every = Duration::from_millis(engine.cfg.overdue_after.clamp(1000, 60_000));
        tokio::spawn(async move {
            // Scans take ~7 s of one core per million pages: wait at least 100 times the
            // last scan's duration, so the monitor never takes more than 1 % of a core.
            let mut wait = every;
            loop {
                tokio::time::sleep(wait).await;
                let Some(engine) = weak.upgrade() else { return };
                let started = tokio::time::Instant::now();
                if let Err(e) = engine.scan_overdue().await {
                    tracing::debug!(error = %e, "overdue scan failed");
                }
                wait = every.max(started.elapsed() * 100);
            }
        });
        if engine.routes.any_refresh_always() {
            let weak = Arc::downgrade(&engine);
            tokio::spawn(refresher(weak));
        }
        if let Some(mut events) = events {
            let weak = Arc::downgrade(&engine);
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    let Some(engine) = weak.upgrade() else { return };
                    engine.apply(event);
                }
            });
        }
        Ok(engine)
    }

    /// Applies a change another node made to the shared store: a revalidation mark goes
    /// into the tag clock (and generation stamps stay above it); a newer page drops this
    /// node's older copy from memory.
    fn apply(&self, event: StoreEvent) {
        match event {
            StoreEvent::Mark { name, mark } => {
                if let Some(t) = Target::from_store_name(&name) {
                    self.clock.apply(t, mark);
                    self.last_mark
                        .fetch_max(mark.stale_at.max(mark.expire_at), Ordering::SeqCst);
                }
            }
            StoreEvent::Stored { key, generated } => self.hot.remove_older(&key, generated),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The routes.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Sets where pages come from; false if a source was already bound (an engine has
    /// one source for its whole life).
    pub fn bind_source(&self, source: Arc<dyn Source>) -> bool {
        self.source.set(source).is_ok()
    }

    /// Where pages come from.
    pub fn source(&self) -> &dyn Source {
        match self.source.get() {
            Some(s) => s.as_ref(),
            None => &origin::Unbound,
        }
    }

    /// The counters behind `/_isr/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The CDN layers in front of isr.
    pub fn cdn(&self) -> &Cdns {
        &self.cdn
    }

    /// The memory tier.
    pub fn hot(&self) -> &HotTier {
        &self.hot
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The last regeneration error of `key` and how many regenerations failed in a row,
    /// while it is failing (forgotten once a regeneration succeeds).
    pub fn last_error(&self, key: &str) -> Option<(String, u32)> {
        let b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        b.get(key).map(|b| (b.last_error.clone(), b.failures))
    }

    /// The last overdue scan.
    pub fn overdue(&self) -> Overdue {
        self.overdue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Calls `f` with every stored page's metadata, a thousand pages at a time; returns
    /// how many pages there were.
    async fn for_each_stored(
        &self,
        mut f: impl FnMut(&[(String, crate::entry::Meta)]),
    ) -> Result<u64, StoreError> {
        let (mut after, mut pages): (Option<String>, u64) = (None, 0);
        loop {
            let mut page = self.store.list("", after.as_deref(), 1000).await?;
            let next = match page.last() {
                Some((k, _)) if page.len() == 1000 => Some(k.clone()),
                _ => None,
            };
            // Data cache values are not pages: nobody visits them, they refresh when read.
            page.retain(|(k, _)| key::is_page(k));
            pages += page.len() as u64;
            f(&page);
            match next {
                Some(k) => after = Some(k),
                None => return Ok(pages),
            }
        }
    }

    /// Reads every page's metadata, a thousand at a time, and counts the overdue ones
    /// (run every `overdue_after`, at most every minute, and never more often than every
    /// 100 times its own duration: 7 s of one core per million pages in redb).
    pub async fn scan_overdue(&self) -> Result<(), StoreError> {
        let mut found = Overdue::default();
        let started = tokio::time::Instant::now();
        let pages = self
            .for_each_stored(|page| {
                let now = self.now();
                for (key, meta) in page {
                    if policy::is_overdue(&meta.timing(), now, self.cfg.overdue_after) {
                        found.count += 1;
                        if found.pages.len() < OVERDUE_LISTED {
                            found.pages.push((key.clone(), meta.clone()));
                        }
                    }
                }
            })
            .await?;
        found.scanned_at = self.now();
        tracing::debug!(
            pages,
            overdue = found.count,
            ms = started.elapsed().as_millis() as u64,
            "overdue scan"
        );
        *self.overdue.lock().unwrap_or_else(|e| e.into_inner()) = found;
        Ok(())
    }

    /// Unix ms, following tokio's clock.
    pub fn now(&self) -> u64 {
        self.now.ms()
    }

    /// The entry for `key` from the hot tier, else from the store: kept hot when the tier
    /// admits it, else read to be sent once (its large bodies straight from the store's
    /// files, where the store can).
    pub async fn lookup(&self, key: &str) -> Option<Arc<Entry>> {
        if let Some(e) = self.hot.get(key) {
            return Some(e);
        }
        let keep = self.hot.admits(key);
        let read = if keep {
            self.store.get(key).await
        } else {
            self.store.get_to_send(key).await
        };
        match read {
            Ok(Some(e)) => {
                let e = Arc::new(e);
                if keep {
                    self.hot.insert(key, e.clone());
                }
                Some(e)
            }
            Ok(None) => None,
            Err(StoreError::Unavailable(_)) => None,
            Err(e) => {
                self.metrics.store_error(StoreOp::Read);
                if let Some(more) = self.quiet_reads.admit(self.now()) {
                    tracing::error!(key, error = %e, more_since_last_log = more, "store read failed; treating as a miss (logged once a minute)");
                }
                None
            }
        }
    }

    /// [`Engine::lookup`] without waiting: the entry for `key` from the hot tier, else
    /// from the store when it can read it on this thread (the embedded store with its
    /// pages in the OS page cache); `Some(None)` when the store does not hold it. `None`
    /// when only [`Engine::lookup`] can tell (a read that would wait, or that failed: it
    /// reports the failure). A page read here is kept in the hot tier on the terms of
    /// [`HotTier::admits`](crate::store::HotTier::admits), asked only once it is read.
    #[inline]
    pub fn lookup_now(&self, key: &str) -> Option<Option<Arc<Entry>>> {
        match self.hot.get(key) {
            Some(e) => Some(Some(e)),
            None => self.read_now(key),
        }
    }

    /// The store's part of [`Engine::lookup_now`], apart so that a memory-tier hit pays
    /// for no more than the tier's lookup.
    #[inline(never)]
    fn read_now(&self, key: &str) -> Option<Option<Arc<Entry>>> {
        let Some(e) = self.store.get_now(key)?.ok()? else {
            return Some(None);
        };
        if !self.hot.admits(key) {
            return Some(Some(Arc::new(e)));
        }
        let e = Arc::new(e.on_heap());
        self.hot.insert(key, e.clone());
        Some(Some(e))
    }

    /// The state of `entry` (stored under `key`) now.
    pub fn freshness(&self, key: &str, meta: &crate::entry::Meta, now: u64) -> Freshness {
        let mark = self.clock.mark_for(key::path_of(key), &meta.tags);
        policy::freshness(&meta.timing(), mark, now)
    }

    /// What the cached `e` for `key` answers at `now`: a HIT (starting the regeneration
    /// early when `refresh = "ahead"` says so) or a STALE (starting a background
    /// regeneration); `Err(e)` once it has expired.
    pub fn answer_cached(
        self: &Arc<Self>,
        key: &str,
        e: Arc<Entry>,
        now: u64,
    ) -> Result<Served, Arc<Entry>> {
        match self.freshness(key, &e.meta, now) {
            Freshness::Fresh => {
                self.refresh_ahead(key, &e.meta, now);
                Ok(Served::Hit(e))
            }
            Freshness::Stale => {
                self.regenerate_in_background(key, e.meta.revalidate);
                Ok(Served::Stale(e))
            }
            Freshness::Expired => Err(e),
        }
    }

    /// Serves a cacheable `GET`/`HEAD` for `key`.
    pub async fn serve(self: &Arc<Self>, key: &str) -> Served {
        if self.is_dropped(key::path_of(key)) {
            return Served::NotFound(self.lookup("/404").await);
        }
        let now = self.now();
        let copy = match self.lookup(key).await {
            Some(e) => match self.answer_cached(key, e, now) {
                Ok(served) => return served,
                Err(expired) => Some(expired),
            },
            None => {
                if self.uncacheable.get(key).is_some_and(|until| until > now) {
                    return Served::Bypass;
                }
                if self.is_unknown_static(key::path_of(key)) {
                    return Served::NotFound(self.lookup("/404").await);
                }
                None
            }
        };
        if let Some(old) = &copy {
            if self.in_backoff(key, now) {
                return Served::Stale(old.clone());
            }
        }
        let outcome = self
            .join_flight(key, copy.as_ref().map(|e| e.meta.revalidate))
            .await;
        match (outcome, copy) {
            (Outcome::Stored(e), _) => Served::Miss(e),
            (_, Some(old)) => Served::Stale(old),
            (Outcome::Uncacheable(slot), None) => {
                match slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    Some(p) => Served::Pass(p),
                    None => Served::Bypass,
                }
            }
            (Outcome::Failed(e), None) => Served::Error(e),
        }
    }

    /// Prebuilds `key`: fetches and stores it unless a fresh copy is already stored.
    /// Shares single-flight with visitors, and never counts as one.
    pub async fn warm(self: &Arc<Self>, key: &str) -> Warmed {
        let stored = self.store.get_meta(key).await.ok().flatten();
        if let Some(meta) = &stored {
            if self.freshness(key, meta, self.now()) == Freshness::Fresh {
                return Warmed::Fresh;
            }
        }
        match self.join_flight(key, stored.map(|m| m.revalidate)).await {
            Outcome::Stored(_) => Warmed::Stored,
            Outcome::Failed(e) => Warmed::Failed(format!(
                "{} {}",
                e.status,
                String::from_utf8_lossy(&e.body).trim()
            )),
            Outcome::Uncacheable(_) => Warmed::Failed("the response is uncacheable".into()),
        }
    }

    /// Whether `path` belongs to a `dynamic = false` route and is not listed in
    /// `[prebuild] paths` (the caller has found no stored page for it: prebuilt pages are
    /// stored, so the store remembers the known set across restarts).
    pub fn is_unknown_static(&self, path: &str) -> bool {
        self.routes.is_static(path)
            && !self
                .cfg
                .prebuild
                .paths
                .iter()
                .any(|p| p.split('?').next() == Some(path))
    }

    /// Whether `path` is a stored page of a `dynamic = false` route that the last
    /// prebuild no longer lists (it is then answered 404 without the origin).
    pub fn is_dropped(&self, path: &str) -> bool {
        self.any_dropped.load(Ordering::Relaxed)
            && self
                .dropped
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(path)
    }

    /// After a prebuild that read its whole sitemap: the `dynamic = false` routes know
    /// exactly `known` (and `[prebuild] paths`); their other stored pages become unknown.
    pub async fn set_known_static(
        &self,
        known: std::collections::HashSet<String>,
    ) -> Result<(), StoreError> {
        if !self.routes.any_static() {
            return Ok(());
        }
        let mut dropped = std::collections::HashSet::new();
        self.for_each_stored(|page| {
            for (k, _) in page {
                let path = key::path_of(k);
                if self.is_unknown_static(path) && !known.contains(path) {
                    dropped.insert(path.to_string());
                }
            }
        })
        .await?;
        if !dropped.is_empty() {
            tracing::info!(
                pages = dropped.len(),
                "prebuild: pages no longer listed now answer 404"
            );
        }
        self.any_dropped
            .store(!dropped.is_empty(), Ordering::Relaxed);
        *self.dropped.write().unwrap_or_else(|e| e.into_inner()) = dropped;
        Ok(())
    }

    /// Whether a revalidation names a page of a `dynamic = false` route that was never
    /// prebuilt nor listed: the path, for a 404.
    pub async fn unknown_static_page<'a>(&self, r: &'a Revalidation) -> Option<&'a str> {
        for p in &r.pages {
            if self.is_dropped(p) {
                return Some(p);
            }
            if self.is_unknown_static(p) {
                let stored = self.store.keys_with_prefix(p).await.unwrap_or_default();
                if !stored.iter().any(|k| key::path_of(k) == p) {
                    return Some(p);
                }
            }
        }
        None
    }

    /// Whether the start-up prebuild is done (`/_isr/health?ready`).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Marks a start-up prebuild as running.
    pub fn set_ready_later(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }

    /// Marks the start-up prebuild done.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Remembers when a `refresh = "always"` page goes stale, for the refresher (the
    /// latest call for a key replaces its earlier due time).
    fn schedule_refresh(&self, key: &str, meta: &crate::entry::Meta) {
        if let Some(window) = meta.revalidate {
            if self.routes.refreshes_always(key::path_of(key)) {
                let due = meta.generated + window;
                let mut s = self.refresh_due.lock().unwrap_or_else(|e| e.into_inner());
                s.due.insert(key.to_string(), due);
                s.heap.push(std::cmp::Reverse((due, key.to_string())));
            }
        }
    }

    /// The `refresh = "always"` pages due by `now`, at most `n` of them.
    fn due_refreshes(&self, now: u64, n: usize) -> Vec<String> {
        let mut s = self.refresh_due.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        while out.len() < n
            && s.heap
                .peek()
                .is_some_and(|std::cmp::Reverse((due, _))| *due <= now)
        {
            let Some(std::cmp::Reverse((due, key))) = s.heap.pop() else {
                break;
            };
            // A heap entry that a later schedule replaced is skipped.
            if s.due.get(&key) == Some(&due) {
                s.due.remove(&key);
                out.push(key);
            }
        }
        out
    }

    /// After a HIT: starts the regeneration early when the page is in the last 20 % of its
    /// window and its route says `refresh = "ahead"` (the route is looked up only then).
    pub fn refresh_ahead(self: &Arc<Self>, key: &str, meta: &crate::entry::Meta, now: u64) {
        if policy::prefresh_due(&meta.timing(), now)
            && self.routes.refreshes_ahead(key::path_of(key))
        {
            self.regenerate_in_background(key, meta.revalidate);
        }
    }

    /// Regenerates `key` now, outside single-flight (`x-prerender-revalidate`); an
    /// on-demand revalidation of one page, so the CDNs are purged of it once it is stored.
    pub async fn regenerate_now(self: &Arc<Self>, key: &str) -> Outcome {
        let copy = self.lookup(key).await.map(|e| e.meta.revalidate);
        let outcome = self.produce(key, copy, FetchFor::Visitor).await;
        if matches!(outcome, Outcome::Stored(_)) {
            self.cdn.purge_path(key, false);
        }
        outcome
    }

    pub(crate) fn in_backoff(&self, key: &str, now: u64) -> bool {
        let b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        b.get(key).is_some_and(|b| b.until > now)
    }

    /// Starts a background regeneration unless one is running or the key is backing off.
    /// `window` is the current page's revalidate window (it caps the backoff).
    /// When [`QUEUED_PER_SLOT`] background regenerations per slot already wait or run,
    /// none starts: the page stays stale until a later request finds room (a slow or dead
    /// origin behind many stale pages would otherwise queue a task for each of them).
    pub fn regenerate_in_background(self: &Arc<Self>, key: &str, window: Window) {
        if self.in_backoff(key, self.now()) {
            return;
        }
        let Ok(place) = self.regen_queue.clone().try_acquire_owned() else {
            return;
        };
        drop(self.start_flight(key, true, Some(window), None, Some(place)));
    }

    /// Joins the flight for `key`, starting one if none runs, and waits for its outcome.
    async fn join_flight(self: &Arc<Self>, key: &str, copy: Option<Window>) -> Outcome {
        let mut rx = self.start_flight(key, false, copy, None, None);
        let outcome = rx.wait_for(Option::is_some).await.map(|v| v.clone());
        match outcome {
            Ok(Some(o)) => o,
            _ => self.abandoned(),
        }
    }

    /// The outcome of a fetch whose task ended without producing one (a 502 to visitors).
    fn abandoned(&self) -> Outcome {
        Outcome::Failed(Arc::new(ErrorResponse::from_fetch(&FetchError::Invalid {
            origin: self.source().name().to_string(),
            detail: "the regeneration was abandoned".into(),
        })))
    }

    fn start_flight(
        self: &Arc<Self>,
        key: &str,
        background: bool,
        copy: Option<Window>,
        permit: Option<OwnedSemaphorePermit>,
        place: Option<OwnedSemaphorePermit>,
    ) -> watch::Receiver<Option<Outcome>> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = flights.get(key) {
            if !background {
                f.visitor_waiting.notify_one();
            }
            return f.outcome.clone();
        }
        let (tx, rx) = watch::channel(None);
        let visitor_waiting = Arc::new(tokio::sync::Notify::new());
        flights.insert(
            key.to_string(),
            Flight {
                outcome: rx.clone(),
                visitor_waiting: visitor_waiting.clone(),
            },
        );
        drop(flights);
        let guard = FlightGuard {
            engine: self.clone(),
            key: key.to_string(),
            tx,
            visitor_waiting: visitor_waiting.clone(),
            _place: place,
        };
        tokio::spawn(async move {
            // Background work waits for a regeneration slot, unless a visitor starts
            // waiting for this page: a visitor never queues behind background work, and
            // the flight is then the visitor's.
            let mut background = background;
            let _permit = match permit {
                Some(p) => Some(p),
                None if background => {
                    let slots = guard.engine.regen_slots.clone();
                    tokio::select! {
                        p = slots.acquire_owned() => p.ok(),
                        () = visitor_waiting.notified() => {
                            background = false;
                            None
                        }
                    }
                }
                None => None,
            };
            let fetch_for = if background {
                FetchFor::Background(&visitor_waiting)
            } else {
                FetchFor::Visitor
            };
            let outcome = guard.engine.produce_once(&guard.key, copy, fetch_for).await;
            let _ = guard.tx.send(Some(outcome));
        });
        rx
    }

    /// Produces `key` unless another node sharing the store is regenerating it: then
    /// waits (at most `origin_timeout`) for that node's page instead of asking the origin
    /// again. If no newer page shows up, a visitor's fetch goes ahead anyway, and so does
    /// background work a visitor has joined meanwhile; other background work just ends
    /// (the page stays stale until a later request). A store that cannot be reached never
    /// blocks a fetch: single-flight is then per node.
    async fn produce_once(
        &self,
        key: &str,
        copy: Option<Window>,
        mut fetch_for: FetchFor<'_>,
    ) -> Outcome {
        let _lease = match self.take_turn(key).await {
            Turn::Newer(e) => return Outcome::Stored(e),
            Turn::Go { lease, waited } => {
                if let (true, FetchFor::Background(visitor)) = (waited, fetch_for) {
                    if !self.visitor_joined_or_leave(key, visitor) {
                        return self.abandoned();
                    }
                    fetch_for = FetchFor::Visitor;
                }
                lease
            }
        };
        self.produce(key, copy, fetch_for).await
    }

    /// Whether a visitor has joined the background flight for `key` whose signal is
    /// `visitor` (taking the signal). If none has, the flight leaves the flights now,
    /// under the lock visitors join with: a visitor who comes later starts a fetch of its
    /// own rather than join one that is ending.
    fn visitor_joined_or_leave(&self, key: &str, visitor: &tokio::sync::Notify) -> bool {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if visitor.notified().now_or_never().is_some() {
            return true;
        }
        remove_flight(&mut flights, key, visitor);
        false
    }

    /// Takes this node's turn to fetch `key` through the store's lease (pages and data
    /// cache values alike): the entry another node stored meanwhile, or the go-ahead,
    /// holding the lease when this node got it.
    pub(crate) async fn take_turn(&self, key: &str) -> Turn {
        match self.store.lease(key).await {
            Ok(Lease::Elsewhere) => {
                let _ = self
                    .store
                    .wait_for_lease(key, self.cfg.cache.origin_timeout)
                    .await;
                match self.fresh_in_store(key).await {
                    Some(e) => Turn::Newer(e),
                    None => Turn::Go {
                        lease: None,
                        waited: true,
                    },
                }
            }
            Ok(Lease::Held(guard)) => {
                // Another node may have finished this page just before the lease was
                // free, and its announcement not reached this node yet.
                match self.fresh_in_store(key).await {
                    Some(e) => Turn::Newer(e),
                    None => Turn::Go {
                        lease: Some(guard),
                        waited: false,
                    },
                }
            }
            Ok(Lease::Local) | Err(_) => Turn::Go {
                lease: None,
                waited: false,
            },
        }
    }

    /// The stored page for `key` if it is fresh now and not yet due for an early refresh
    /// (then also kept hot): a page another node has just regenerated.
    pub(crate) async fn fresh_in_store(&self, key: &str) -> Option<Arc<Entry>> {
        let meta = self.store.get_meta(key).await.ok()??;
        let now = self.now();
        if self.freshness(key, &meta, now) != Freshness::Fresh
            || policy::prefresh_due(&meta.timing(), now)
        {
            return None;
        }
        let e = Arc::new(self.store.get(key).await.ok()??);
        self.hot.insert(key, e.clone());
        Some(e)
    }

    /// [`Engine::fetch_and_store`], counted in the metrics (and logged with
    /// `--debug-cache`).
    async fn produce(&self, key: &str, copy: Option<Window>, fetch_for: FetchFor<'_>) -> Outcome {
        struct InFlight<'a>(&'a Metrics);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.in_flight(-1);
            }
        }
        self.metrics.in_flight(1);
        let _in_flight = InFlight(&self.metrics);
        let started = tokio::time::Instant::now();
        let outcome = self.fetch_and_store(key, copy, fetch_for).await;
        let stored = matches!(outcome, Outcome::Stored(_));
        if copy.is_some() {
            self.metrics.regeneration(stored);
        }
        if self.cfg.debug_cache {
            let status = match &outcome {
                Outcome::Stored(e) => e.meta.status.to_string(),
                Outcome::Failed(e) => e.status.as_u16().to_string(),
                Outcome::Uncacheable(_) => "uncacheable".into(),
            };
            tracing::info!(
                target: "isr::cache",
                key,
                fetch = if copy.is_some() { "regeneration" } else { "miss" },
                origin_status = %status,
                origin_ms = started.elapsed().as_millis() as u64,
                stored,
                "origin fetch"
            );
        }
        outcome
    }

    /// Fetches `key` from the origin and stores the result when it may be stored.
    /// `copy` is the revalidate window of the page being replaced, if there is one: a
    /// failure then keeps that page and backs off. `fetch_for` decides the priority of its
    /// compression.
    async fn fetch_and_store(
        &self,
        key: &str,
        copy: Option<Window>,
        fetch_for: FetchFor<'_>,
    ) -> Outcome {
        let rules = &self.routes.rules(key::path_of(key));
        let generated = self.generation_stamp();
        let started = tokio::time::Instant::now();
        let fetched = self.source().fetch(key).await;
        match &fetched {
            Ok(Fetched::Complete(parts, _)) => {
                self.metrics.origin_fetch(started.elapsed());
                if parts.status.is_server_error() {
                    self.metrics.origin_error(OriginError::Status5xx);
                }
            }
            Ok(Fetched::TooLarge(..)) => self.metrics.origin_error(OriginError::TooLarge),
            Err(FetchError::Connect { .. }) => self.metrics.origin_error(OriginError::Connect),
            Err(FetchError::Timeout { .. }) => self.metrics.origin_error(OriginError::Timeout),
            Err(FetchError::Invalid { .. }) => self.metrics.origin_error(OriginError::Invalid),
        }
        let failure = |why: String| {
            if let Some(window) = copy {
                self.record_failure(key, window, &why);
            } else {
                tracing::warn!(key, reason = %why, "origin fetch failed on a miss");
            }
        };
        let (parts, body) = match fetched {
            Err(e) => {
                failure(e.to_string());
                return Outcome::Failed(Arc::new(ErrorResponse::from_fetch(&e)));
            }
            Ok(Fetched::TooLarge(parts, prefix, rest)) => {
                let why = format!("response over max_body ({} bytes)", self.cfg.cache.max_body);
                return self.uncacheable(
                    key,
                    rules,
                    copy,
                    why,
                    parts,
                    Body::Stream {
                        prefix: Some(prefix),
                        rest,
                    },
                );
            }
            Ok(Fetched::Complete(parts, body)) => (parts, body),
        };
        let status = parts.status.as_u16();
        if !policy::is_storable_status(status) {
            failure(format!("origin answered {status}"));
            let e = ErrorResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            };
            return Outcome::Failed(Arc::new(e));
        }
        let entry =
            match origin::build_entry(&parts, body.clone(), rules, &self.cfg.cache, key, generated)
            {
                Ok(e) => e,
                Err(why) => {
                    return self.uncacheable(
                        key,
                        rules,
                        copy,
                        format!("{why:?}"),
                        parts,
                        Body::full(body),
                    )
                }
            };
        // The page being replaced, to reuse its variants; read without promoting it into
        // the hot tier (an eager revalidation of many pages must not flush the tier).
        let previous = match (copy, self.hot.peek(key)) {
            (Some(_), Some(hot)) => Some(hot),
            (Some(_), None) => self.store.get(key).await.ok().flatten().map(Arc::new),
            (None, _) => None,
        };
        let reused = previous.and_then(|p| origin::reuse_variants(&entry, &p).map(|r| (r, p)));
        let (entry, write) = match reused {
            Some((reused, old)) => {
                let mark = self.clock.mark_for(key::path_of(key), &old.meta.tags);
                let write = if policy::rewrite_may_wait(&old.meta.timing(), mark, self.now()) {
                    Rewrite::SameBodiesSoon
                } else {
                    Rewrite::SameBodies
                };
                (Ok(reused), write)
            }
            None => (entry_with_variants(entry, fetch_for).await, Rewrite::All),
        };
        let entry = match entry {
            Ok(e) => Arc::new(e),
            Err(e) => {
                let e = FetchError::Invalid {
                    origin: self.source().name().into(),
                    detail: e.to_string(),
                };
                return Outcome::Failed(Arc::new(ErrorResponse::from_fetch(&e)));
            }
        };
        tracing::debug!(
            key,
            status,
            ms = started.elapsed().as_millis() as u64,
            "page generated"
        );
        let (entry, ours) = self.store_entry(key, entry, write).await;
        if !ours {
            return Outcome::Stored(entry);
        }
        self.schedule_refresh(key, &entry.meta);
        if copy.is_some() && write == Rewrite::All && self.cdn.purges_on_regenerate() {
            self.cdn.purge_path(key, true);
        }
        Outcome::Stored(entry)
    }

    /// Stores a freshly fetched entry (keeping it in memory even if the store fails)
    /// and returns what to serve: it, with `true`; or, with `false`, a newer one that
    /// was stored meanwhile.
    pub(crate) async fn store_entry(
        &self,
        key: &str,
        entry: Arc<Entry>,
        write: Rewrite,
    ) -> (Arc<Entry>, bool) {
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        let stored = match write {
            Rewrite::All => self.store.put(key, entry.clone()).await,
            Rewrite::SameBodies => self.store.put_same_bodies(key, entry.clone()).await,
            Rewrite::SameBodiesSoon => self.store.put_same_bodies_soon(key, entry.clone()).await,
        };
        match stored {
            Ok(true) => {}
            Ok(false) => {
                // A newer page was stored meanwhile (e.g. a forced revalidation): serve that.
                if let Ok(Some(newer)) = self.store.get(key).await {
                    let newer = Arc::new(newer);
                    self.hot.insert(key, newer.clone());
                    return (newer, false);
                }
            }
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => {
                self.metrics.store_error(StoreOp::Write);
                if let Some(more) = self.quiet_writes.admit(self.now()) {
                    tracing::error!(key, error = %e, more_since_last_log = more, "could not store the page; serving it from memory (logged once a minute)");
                }
            }
        }
        self.hot.insert(key, entry.clone());
        (entry, true)
    }

    /// The generation stamp for a fetch starting now: above every revalidation mark
    /// handed out so far, so same-millisecond races resolve correctly.
    pub(crate) fn generation_stamp(&self) -> u64 {
        self.now().max(self.last_mark.load(Ordering::SeqCst) + 1)
    }

    /// The data cache's fetches in progress.
    pub(crate) fn data_flights(&self) -> &crate::data::DataFlights {
        &self.data_flights
    }

    fn uncacheable(
        &self,
        key: &str,
        rules: &Rules,
        copy: Option<Window>,
        why: String,
        parts: http::response::Parts,
        body: Body,
    ) -> Outcome {
        if let Some(window) = copy {
            self.record_failure(key, window, &format!("uncacheable response: {why}"));
            let e = ErrorResponse {
                status: StatusCode::BAD_GATEWAY,
                headers: HeaderMap::new(),
                body: Bytes::new(),
            };
            return Outcome::Failed(Arc::new(e));
        }
        let until = self.now()
            + policy::hit_for_miss_ms(rules.revalidate.unwrap_or(self.cfg.cache.revalidate));
        self.uncacheable.insert(key.to_string(), until);
        tracing::info!(key, reason = %why, "response is uncacheable; passing this key through for a while");
        Outcome::Uncacheable(Arc::new(Mutex::new(Some(Passthrough { parts, body }))))
    }

    pub(crate) fn record_failure(&self, key: &str, window: Window, why: &str) {
        let now = self.now();
        let mut map = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let backoff = map
            .record(key, now, window, why)
            .map(|b| (b.failures, b.until - now));
        drop(map);
        let Some(more) = self.quiet_regens.admit(now) else {
            return;
        };
        match backoff {
            Some((failures, retry_in_ms)) => tracing::warn!(
                key,
                reason = why,
                failures,
                retry_in_ms,
                more_since_last_log = more,
                "regeneration failed; still serving the last good page"
            ),
            None => tracing::warn!(
                key,
                reason = why,
                more_since_last_log = more,
                "regeneration failed; still serving the last good page (too many pages failing to back each off)"
            ),
        }
    }

    /// Applies an on-demand revalidation; returns its timestamp (unix ms).
    pub async fn revalidate(self: &Arc<Self>, r: &Revalidation) -> Result<u64, StoreError> {
        let at = {
            let now = self.now();
            let prev = self.last_mark.fetch_max(now, Ordering::SeqCst);
            if prev >= now {
                // Same millisecond as the previous mark: stay strictly after it.
                self.last_mark.fetch_add(1, Ordering::SeqCst) + 1
            } else {
                now
            }
        };
        let mark = Mark::at(at, r.expire);
        let targets = r
            .tags
            .iter()
            .map(|t| Target::Tag(t))
            .chain(r.pages.iter().map(|p| Target::Page(p)))
            .chain(r.layouts.iter().map(|p| Target::Layout(p)));
        for t in targets {
            self.metrics.revalidation(match t {
                Target::Tag(_) => RevalidationKind::Tag,
                Target::Page(_) => RevalidationKind::Path,
                Target::Layout(_) => RevalidationKind::Layout,
            });
            self.clock.apply(t, mark);
            if let Err(e) = self.store.put_mark(&t.store_name(), mark).await {
                self.metrics.store_error(StoreOp::Write);
                return Err(e);
            }
        }
        if r.eager || self.routes.any_refresh_always() || !self.cdn.is_empty() {
            let engine = self.clone();
            let r = r.clone();
            tokio::spawn(async move { engine.after_revalidation(&r).await });
        }
        Ok(at)
    }

    /// The background part of a revalidation: regenerates the affected stored pages when
    /// it is eager (lazy ones too on `refresh = "always"` routes), then purges the CDNs,
    /// once isr's copies are regenerated (eager) or marked (lazy).
    async fn after_revalidation(self: &Arc<Self>, r: &Revalidation) {
        let regenerate = r.eager || self.routes.any_refresh_always();
        let affected = self
            .affected(r, |t| regenerate || self.cdn.needs_tag_paths(t))
            .await;
        if regenerate {
            let mut keys: Vec<String> = affected
                .by_path
                .iter()
                .chain(&affected.by_tag)
                .cloned()
                .collect();
            keys.sort();
            keys.dedup();
            if !r.eager {
                // Lazy revalidations still regenerate `refresh = "always"` pages at once.
                keys.retain(|k| self.routes.refreshes_always(key::path_of(k)));
            }
            let flights = self.regenerate_all(keys).await;
            if r.eager {
                for mut rx in flights {
                    let _ = rx.wait_for(Option::is_some).await;
                }
            }
        }
        if !self.cdn.is_empty() {
            let purge = Purge {
                paths: r
                    .pages
                    .iter()
                    .chain(&r.layouts)
                    .chain(&affected.by_path)
                    .cloned()
                    .collect(),
                tags: r.tags.iter().cloned().collect(),
                tag_paths: affected.by_tag.into_iter().collect(),
            };
            self.cdn.purge(&purge, false);
        }
    }

    /// The stored pages a revalidation names: by path and layout always, by tag for the
    /// tags where `by_tag` says so (a tag over many pages costs one index read).
    async fn affected(&self, r: &Revalidation, by_tag: impl Fn(&str) -> bool) -> Affected {
        let mut found = Affected::default();
        for t in r.tags.iter().filter(|t| by_tag(t)) {
            let keys = self.store.keys_with_tag(t).await.unwrap_or_default();
            // Data cache values carry tags too; they refresh when next read.
            found
                .by_tag
                .extend(keys.into_iter().filter(|k| key::is_page(k)));
        }
        for p in &r.pages {
            let keys = self.store.keys_with_prefix(p).await.unwrap_or_default();
            found
                .by_path
                .extend(keys.into_iter().filter(|k| key::path_of(k) == p));
        }
        for p in &r.layouts {
            let prefix = p.trim_end_matches('/');
            let keys = self
                .store
                .keys_with_prefix(prefix)
                .await
                .unwrap_or_default();
            found.by_path.extend(
                keys.into_iter()
                    .filter(|k| key::is_under(key::path_of(k), p)),
            );
        }
        found
    }

    /// Starts a background regeneration of each of `keys`, `regen_concurrency` at a time;
    /// returns their outcomes to wait on.
    async fn regenerate_all(
        self: &Arc<Self>,
        keys: Vec<String>,
    ) -> Vec<watch::Receiver<Option<Outcome>>> {
        tracing::info!(pages = keys.len(), "regenerating the revalidated pages");
        let mut flights = Vec::with_capacity(keys.len());
        for k in keys {
            let Ok(permit) = self.regen_slots.clone().acquire_owned().await else {
                break;
            };
            let rules = self.routes.rules(key::path_of(&k));
            let window = match self.store.get_meta(&k).await {
                Ok(Some(m)) => m.revalidate,
                _ => rules.revalidate.unwrap_or(self.cfg.cache.revalidate),
            };
            flights.push(self.start_flight(&k, true, Some(window), Some(permit), None));
        }
        flights
    }
}

/// Regenerates `refresh = "always"` pages as they go stale, with or without visitors, at
/// most `[refresh] max_per_second` a second. Pages stored before the start are found by
/// one metadata scan at start (the cost of one overdue scan).
async fn refresher(engine: std::sync::Weak<Engine>) {
    {
        let Some(e) = engine.upgrade() else { return };
        let seeded = e
            .for_each_stored(|page| {
                for (key, meta) in page {
                    e.schedule_refresh(key, meta);
                }
            })
            .await;
        if let Err(err) = seeded {
            tracing::warn!(error = %err, "refresh: could not read the stored pages; only pages stored from now on are scheduled");
        }
    }
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(e) = engine.upgrade() else { return };
        let per_tick = (e.cfg.refresh_per_second as usize).div_ceil(10);
        let now = e.now();
        for key in e.due_refreshes(now, per_tick) {
            let meta = match e.store.get_meta(&key).await {
                Ok(Some(m)) => m,
                _ => continue,
            };
            if e.freshness(&key, &meta, now) == Freshness::Fresh {
                continue; // regenerated meanwhile: already scheduled again
            }
            e.regenerate_in_background(&key, meta.revalidate);
            // If this one fails, try again after another window.
            let retry = crate::entry::Meta {
                generated: now,
                ..meta
            };
            e.schedule_refresh(&key, &retry);
        }
    }
}

/// How a fetched entry is written to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rewrite {
    /// Bodies and metadata ([`Store::put`]).
    All,
    /// The bodies are byte-identical to the stored ones ([`Store::put_same_bodies`]).
    SameBodies,
    /// Likewise, and [`policy::rewrite_may_wait`] allows the commit to come a moment
    /// later, with others ([`Store::put_same_bodies_soon`]).
    SameBodiesSoon,
}

/// Who a fetch is for, which decides the priority of its compression.
#[derive(Clone, Copy)]
enum FetchFor<'a> {
    /// A visitor waits for it (a miss, an expired page, `x-prerender-revalidate`).
    Visitor,
    /// A background regeneration; this fires when a visitor joins its flight.
    Background(&'a tokio::sync::Notify),
}

/// Compresses off the serving threads: for a background regeneration on the
/// lower-priority background threads ([`crate::background`]), so that a publish of many
/// changed pages does not slow hits, unless a visitor joins the flight before a thread
/// starts on it; for a fetch a visitor waits for, on tokio's blocking pool.
async fn entry_with_variants(
    entry: Entry,
    fetch_for: FetchFor<'_>,
) -> Result<Entry, crate::background::Lost> {
    let compress = move || origin::with_variants(entry);
    match fetch_for {
        FetchFor::Background(visitor) => crate::background::run(compress, visitor.notified()).await,
        FetchFor::Visitor => crate::background::on_blocking_pool(compress).await,
    }
}

/// Removes the flight for `key` whose signal is `visitor`, and not a later flight for the
/// same key.
fn remove_flight(flights: &mut HashMap<String, Flight>, key: &str, visitor: &tokio::sync::Notify) {
    if flights
        .get(key)
        .is_some_and(|f| std::ptr::eq(&*f.visitor_waiting, visitor))
    {
        flights.remove(key);
    }
}

/// Publishes an outcome even when a flight's task ends without one, and removes the
/// flight so the next request can start a new one.
struct FlightGuard {
    engine: Arc<Engine>,
    key: String,
    tx: watch::Sender<Option<Outcome>>,
    /// The flight's signal, which also tells it from a later flight for the same key.
    visitor_waiting: Arc<tokio::sync::Notify>,
    /// A background regeneration's place in the queue, given back when it ends.
    _place: Option<OwnedSemaphorePermit>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut flights = self
            .engine
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        remove_flight(&mut flights, &self.key, &self.visitor_waiting);
        drop(flights);
        if self.tx.borrow().is_none() {
            let _ = self.tx.send(Some(self.engine.abandoned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flight_that_ends_removes_itself_and_not_a_later_flight_for_the_same_key() {
        let flight = || {
            let (_tx, outcome) = watch::channel(None);
            let visitor_waiting = Arc::new(tokio::sync::Notify::new());
            (
                visitor_waiting.clone(),
                Flight {
                    outcome,
                    visitor_waiting,
                },
            )
        };
        let (ended, _) = flight();
        let (later, later_flight) = flight();
        let mut flights = HashMap::from([("/p".to_string(), later_flight)]);
        remove_flight(&mut flights, "/p", &ended);
        assert!(
            flights.contains_key("/p"),
            "an ended flight removed a later one"
        );
        remove_flight(&mut flights, "/p", &later);
        assert!(flights.is_empty());
    }

    #[test]
    fn backoffs_are_bounded_and_make_room_by_dropping_those_past_their_retry() {
        let mut b = Backoffs::new(2);
        assert_eq!(
            b.record("/a", 0, Some(60_000), "down").unwrap().until,
            3_000
        );
        assert_eq!(
            b.record("/a", 3_000, Some(60_000), "down")
                .unwrap()
                .failures,
            2
        );
        b.record("/b", 3_000, Some(60_000), "down").unwrap();
        // Full, and both still backing off: no room for a third page.
        assert!(b.record("/c", 3_500, Some(60_000), "down").is_none());
        // Past /b's retry time (6 s), a sweep makes room; /a (retry at 9 s) stays.
        assert!(b.record("/c", 7_000, Some(60_000), "down").is_some());
        assert_eq!(b.get("/a").unwrap().failures, 2);
        assert!(b.get("/b").is_none());
        // A page already backing off is always recorded.
        assert_eq!(
            b.record("/a", 7_000, Some(60_000), "still down")
                .unwrap()
                .failures,
            3
        );
    }

    #[test]
    fn regeneration_failures_are_logged_ten_a_second_with_the_count_held_back() {
        let burst = Quiet::new(1_000, FAILURES_LOGGED_PER_S);
        let admitted: Vec<Option<u64>> = (0..15).map(|_| burst.admit(5_000)).collect();
        assert_eq!(admitted.iter().filter(|a| a.is_some()).count(), 10);
        assert_eq!(burst.admit(6_000), Some(5));
        // Store errors: once a minute.
        let minute = Quiet::new(60_000, 1);
        assert_eq!(minute.admit(1_000), Some(0));
        assert_eq!((minute.admit(2_000), minute.admit(60_999)), (None, None));
        assert_eq!(minute.admit(61_000), Some(2));
    }
}
