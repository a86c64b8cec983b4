//! The data cache: the values pages are made from (API responses, database queries),
//! cached with tags and a life, like Next.js's `fetch` cache, `unstable_cache` and
//! `"use cache"` with `cacheTag`/`cacheLife`.
//!
//! Values live in the same store and hot tier as pages (under keys starting with
//! `data:`, which no page key does), follow the same rules (fresh, stale, expired; one
//! fetch per key at a time; failures keep the last good value and back off) and the
//! same tag clock, so one `revalidate_tag("posts")` reaches pages and data together.
//!
//! When a page rendered by the app behind an [`crate::layer::IsrLayer`] reads cached
//! data, the page gets that data's tags, and its revalidate window becomes the lowest of
//! the data's windows (as in Next.js). That is tracked per render task: data read from
//! a task the handler spawns is not seen.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Window;
use crate::engine::Engine;
use crate::entry::{Entry, Meta};
use crate::policy::Freshness;

const SECOND: u64 = 1000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
/// "Never" for `expire`: a hundred years.
const NEVER: u64 = 36_500 * DAY;

/// How long a cached value lives, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLife {
    /// How long a browser may use it without asking (Next.js's client router). isr has
    /// no client cache: kept so profiles read the same as Next.js's.
    pub stale: u64,
    /// Age at which it is refreshed in the background (`None` = only on demand).
    pub revalidate: Window,
    /// Age past which it is not used: the next read waits for a fresh value.
    pub expire: u64,
}

impl CacheLife {
    /// `default`: 5 min / 15 min / never, as Next.js documents.
    pub const DEFAULT: CacheLife = CacheLife::new(5 * MINUTE, 15 * MINUTE, NEVER);
    /// `seconds`: 30 s / 1 s / 1 min.
    pub const SECONDS: CacheLife = CacheLife::new(30 * SECOND, SECOND, MINUTE);
    /// `minutes`: 5 min / 1 min / 1 h.
    pub const MINUTES: CacheLife = CacheLife::new(5 * MINUTE, MINUTE, HOUR);
    /// `hours`: 5 min / 1 h / 1 day.
    pub const HOURS: CacheLife = CacheLife::new(5 * MINUTE, HOUR, DAY);
    /// `days`: 5 min / 1 day / 1 week.
    pub const DAYS: CacheLife = CacheLife::new(5 * MINUTE, DAY, 7 * DAY);
    /// `weeks`: 5 min / 1 week / 30 days.
    pub const WEEKS: CacheLife = CacheLife::new(5 * MINUTE, 7 * DAY, 30 * DAY);
    /// `max`: 5 min / 30 days / never.
    pub const MAX: CacheLife = CacheLife::new(5 * MINUTE, 30 * DAY, NEVER);

    const fn new(stale: u64, revalidate: u64, expire: u64) -> CacheLife {
        CacheLife {
            stale,
            revalidate: Some(revalidate),
            expire,
        }
    }

    /// A built-in profile by its Next.js name.
    pub fn builtin(name: &str) -> Option<CacheLife> {
        Some(match name {
            "default" => CacheLife::DEFAULT,
            "seconds" => CacheLife::SECONDS,
            "minutes" => CacheLife::MINUTES,
            "hours" => CacheLife::HOURS,
            "days" => CacheLife::DAYS,
            "weeks" => CacheLife::WEEKS,
            "max" => CacheLife::MAX,
            _ => return None,
        })
    }
}

/// The `life` argument of [`DataCache::get_or_fetch`]: a revalidate window, or a profile
/// by name (`[cache_life.NAME]` in the config first, then the built-in ones).
#[derive(Debug, Clone)]
pub enum Life {
    /// Refreshed in the background once this old; expires after `[cache] expire`.
    Every(std::time::Duration),
    /// A named profile.
    Profile(String),
    /// These exact numbers.
    Custom(CacheLife),
}

impl From<std::time::Duration> for Life {
    fn from(d: std::time::Duration) -> Life {
        Life::Every(d)
    }
}

impl From<&str> for Life {
    fn from(name: &str) -> Life {
        Life::Profile(name.to_string())
    }
}

impl From<CacheLife> for Life {
    fn from(l: CacheLife) -> Life {
        Life::Custom(l)
    }
}

/// Why [`DataCache::get_or_fetch`] has no value to give.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DataError {
    /// The fetch failed and no earlier value is stored.
    #[error("fetching {key} failed: {message}")]
    Fetch {
        /// The data key.
        key: String,
        /// The fetch's own error, as text.
        message: String,
    },
    /// `life` names a profile that neither the config nor Next.js defines.
    #[error("unknown cache life profile `{0}` (built in: default, seconds, minutes, hours, days, weeks, max; or define [cache_life.{0}])")]
    UnknownProfile(String),
}

/// A value as it is stored: status, headers and body (JSON for typed values, the
/// upstream response for `/_isr/fetch`).
pub(crate) struct Raw {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
}

pub(crate) type RawFuture = Pin<Box<dyn Future<Output = Result<Raw, String>> + Send>>;
pub(crate) type Fetch = Box<dyn FnOnce() -> RawFuture + Send>;

/// Fetches in progress, by store key: the stored entry, or why there is none.
pub(crate) type DataFlights =
    Mutex<std::collections::HashMap<String, tokio::sync::watch::Receiver<Option<FlightResult>>>>;
type FlightResult = Result<Arc<Entry>, String>;

/// How a value was found, for `x-isr-cache` on `/_isr/fetch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    Hit,
    Stale,
    Miss,
}

/// What a render read: the tags and the lowest revalidate window of its data.
#[derive(Debug, Default)]
pub(crate) struct Used {
    pub(crate) tags: Vec<String>,
    pub(crate) revalidate: Option<u64>,
}

tokio::task_local! {
    static RENDER: Arc<Mutex<Used>>;
}

/// Runs `render` (a page render by the app), returning what data it read.
pub(crate) async fn rendering<F: Future>(render: F) -> (F::Output, Used) {
    let used = Arc::new(Mutex::new(Used::default()));
    let out = RENDER.scope(used.clone(), render).await;
    let used = std::mem::take(&mut *used.lock().unwrap_or_else(|e| e.into_inner()));
    (out, used)
}

/// Whether this task is rendering a page for the cache.
fn in_render() -> bool {
    RENDER.try_with(|_| ()).is_ok()
}

fn note_use(tags: &[String], revalidate: Window) {
    let _ = RENDER.try_with(|used| {
        let mut u = used.lock().unwrap_or_else(|e| e.into_inner());
        for t in tags {
            if !u.tags.contains(t) {
                u.tags.push(t.clone());
            }
        }
        if let Some(r) = revalidate {
            u.revalidate = Some(u.revalidate.map_or(r, |old| old.min(r)));
        }
    });
}

/// The data cache of an engine. Cheap to clone.
#[derive(Clone)]
pub struct DataCache {
    engine: Arc<Engine>,
}

impl DataCache {
    /// The data cache sharing `engine`'s store, hot tier and tag clock.
    pub fn new(engine: Arc<Engine>) -> DataCache {
        DataCache { engine }
    }

    /// Resolves `life` against the config's profiles, then the built-in ones.
    pub fn life(&self, life: &Life) -> Result<CacheLife, DataError> {
        match life {
            Life::Every(d) => Ok(CacheLife {
                stale: CacheLife::DEFAULT.stale,
                revalidate: Some(d.as_millis() as u64),
                expire: self.engine.config().cache.expire,
            }),
            Life::Profile(name) => self
                .engine
                .config()
                .cache_life
                .get(name)
                .copied()
                .or_else(|| CacheLife::builtin(name))
                .ok_or_else(|| DataError::UnknownProfile(name.clone())),
            Life::Custom(l) => Ok(*l),
        }
    }

    /// The value of `key`: the cached one when fresh; the cached one when stale, with a
    /// refresh started in the background; else (missing, expired or revalidated with
    /// `update_tag`) the result of `fetch`, which then waits. One `fetch` per key runs
    /// at a time: concurrent callers share it. A failed fetch keeps the last good value
    /// (served while refreshes back off, 3 s doubling); with none, it is the error.
    ///
    /// A page rendered by the app behind an [`crate::layer::IsrLayer`] that calls this
    /// gets `tags`, and a revalidate window no longer than this value's. Such a render
    /// waits for a stale value to be refreshed (the page would otherwise be stored
    /// fresh with data already replaced); a value whose refreshes are failing is used
    /// as it is.
    pub async fn get_or_fetch<T, E, F, Fut>(
        &self,
        key: &str,
        tags: &[&str],
        life: impl Into<Life>,
        fetch: F,
    ) -> Result<T, DataError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: std::fmt::Display + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let life = self.life(&life.into())?;
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        // The fetch, kept until used: a stored value that no longer fits `T` (its type
        // changed in a deploy) is fetched again with it.
        let slot = Arc::new(Mutex::new(Some(fetch)));
        let raw = |slot: &Arc<Mutex<Option<F>>>| -> Fetch {
            let (slot, name) = (slot.clone(), key.to_string());
            Box::new(move || {
                let fetch = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                Box::pin(async move {
                    let fetch = fetch.ok_or("the fetch was already used")?;
                    let value = fetch().await.map_err(|e| e.to_string())?;
                    let body = serde_json::to_vec(&value)
                        .map_err(|e| format!("cannot serialise the value of {name}: {e}"))?;
                    Ok(Raw {
                        status: 200,
                        headers: vec![("content-type".into(), "application/json".into())],
                        body: Bytes::from(body),
                    })
                })
            })
        };
        let skey = format!("data:{key}");
        let (entry, _) = self.get_raw(&skey, tags.clone(), life, raw(&slot)).await?;
        let undecodable = match serde_json::from_slice(&entry.identity()) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let unused = slot.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        if unused {
            tracing::warn!(key, error = %undecodable, "the cached value does not fit its type any more; fetching it again");
            let rx = self.join_or_start(&skey, tags, life, raw(&slot), false);
            if let Ok(entry) = wait(rx).await {
                if let Ok(v) = serde_json::from_slice(&entry.identity()) {
                    return Ok(v);
                }
            }
        }
        Err(DataError::Fetch {
            key: key.into(),
            message: format!("the value does not deserialise: {undecodable}"),
        })
    }

    /// The stored entry for `skey` (a store key), fetching it with `fetch` when needed.
    pub(crate) async fn get_raw(
        &self,
        skey: &str,
        tags: Vec<String>,
        life: CacheLife,
        fetch: Fetch,
    ) -> Result<(Arc<Entry>, Found), DataError> {
        let e = &self.engine;
        note_use(&tags, life.revalidate);
        let now = e.now();
        let copy = match e.lookup(skey).await {
            Some(entry) => match e.freshness(skey, &entry.meta, now) {
                Freshness::Fresh => return Ok((entry, Found::Hit)),
                // A page render waits for stale data instead: the page it makes is
                // stored fresh, so it must not be made from a value already replaced
                // (the usual case: a revalidated tag that both carry).
                Freshness::Stale if !in_render() => {
                    if !e.in_backoff(skey, now) {
                        drop(self.join_or_start(skey, tags, life, fetch, true));
                    }
                    return Ok((entry, Found::Stale));
                }
                Freshness::Stale | Freshness::Expired => Some(entry),
            },
            None => None,
        };
        if let Some(old) = &copy {
            if e.in_backoff(skey, now) {
                return Ok((old.clone(), Found::Stale));
            }
        }
        let rx = self.join_or_start(skey, tags, life, fetch, copy.is_some());
        match (wait(rx).await, copy) {
            (Ok(entry), _) => Ok((entry, Found::Miss)),
            (Err(_), Some(old)) => Ok((old, Found::Stale)),
            (Err(message), None) => Err(DataError::Fetch {
                key: skey.trim_start_matches("data:").to_string(),
                message,
            }),
        }
    }

    /// The running fetch for `skey`, or a new one running `fetch` in its own task (so
    /// it finishes even if every caller goes away).
    fn join_or_start(
        &self,
        skey: &str,
        tags: Vec<String>,
        life: CacheLife,
        fetch: Fetch,
        has_copy: bool,
    ) -> tokio::sync::watch::Receiver<Option<FlightResult>> {
        let flights = self.engine.data_flights();
        let mut map = flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(skey) {
            return rx.clone();
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        map.insert(skey.to_string(), rx.clone());
        drop(map);
        let (engine, skey, fetch) = (self.engine.clone(), skey.to_string(), fetch);
        tokio::spawn(async move {
            let guard = Done {
                engine: &engine,
                key: &skey,
            };
            let result = produce(&engine, &skey, tags, life, fetch, has_copy).await;
            let _ = tx.send(Some(result));
            drop(guard);
        });
        rx
    }
}

/// The outcome of a running fetch.
async fn wait(mut rx: tokio::sync::watch::Receiver<Option<FlightResult>>) -> FlightResult {
    rx.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|v| v.clone())
        .unwrap_or_else(|| Err("the fetch was abandoned".into()))
}

/// Removes a finished fetch from the map, even if its task panicked.
struct Done<'a> {
    engine: &'a Engine,
    key: &'a str,
}

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.engine
            .data_flights()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.key);
    }
}

/// Runs one fetch and stores its value. Like a page regeneration, it first takes the
/// store's lease, so nodes sharing Redis fetch each key once between them.
async fn produce(
    engine: &Arc<Engine>,
    skey: &str,
    tags: Vec<String>,
    life: CacheLife,
    fetch: Fetch,
    has_copy: bool,
) -> FlightResult {
    let _lease = match engine.take_turn(skey).await {
        crate::engine::Turn::Newer(e) => return Ok(e),
        crate::engine::Turn::Go { lease, .. } => lease,
    };
    let generated = engine.generation_stamp();
    let timeout = engine.config().cache.origin_timeout;
    let fetched = match tokio::time::timeout(timeout, fetch()).await {
        Ok(r) => r,
        Err(_) => Err(format!("no value within origin_timeout ({timeout:?})")),
    };
    let fetched = match fetched {
        Ok(raw) if !crate::policy::is_storable_status(raw.status) => {
            Err(format!("upstream answered {}", raw.status))
        }
        other => other,
    };
    let raw = match fetched {
        Ok(raw) => raw,
        Err(why) => {
            if has_copy {
                engine.record_failure(skey, life.revalidate, &why);
            } else {
                tracing::warn!(key = skey, reason = %why, "data fetch failed with no value cached");
            }
            return Err(why);
        }
    };
    let meta = Meta {
        status: raw.status,
        headers: raw.headers,
        generated,
        revalidate: life.revalidate,
        expire: life.expire,
        tags,
        hash: crate::entry::hash(&raw.body),
        br: false,
        gzip: false,
        bytes: 0,
    };
    let entry = Arc::new(Entry::new(meta, raw.body, None, None));
    Ok(engine
        .store_entry(skey, entry, crate::engine::Rewrite::All)
        .await
        .0)
}
