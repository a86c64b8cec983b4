//! Where pages live: one async trait, several adapters, and the hot in-memory tier.
//!
//! An adapter stores and finds; it holds no policy. Every write of an entry replaces its
//! metadata, all its body variants and its tag-index rows in one atomic step, so a crash
//! never leaves a torn or mixed entry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::entry::{Entry, Meta};
use crate::policy::Mark;

mod hot;
mod marks;
mod memory;
mod redb;
mod redis;
mod segments;

pub use self::hot::HotTier;
pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;
pub use self::redis::RedisStore;

/// A store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// I/O, corruption, or a refused write.
    #[error("store: {0}")]
    Failed(String),
    /// A shared store cannot be reached right now (the adapter logs when that starts and
    /// ends, so callers need not log every call).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The store `cfg` names: Redis when `[redis]` is set, else the embedded store in
/// `data_dir`.
pub fn open(cfg: &crate::Config) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &cfg.redis {
        Some(r) => Arc::new(RedisStore::connect(&r.url, &r.prefix)?),
        None => Arc::new(RedbStore::open(&cfg.data_dir)?),
    })
}

/// Where a [`Store::list`] page starts: just after the cursor `after` when it is inside
/// the prefix's range, else at the prefix itself.
pub fn list_start<'a>(prefix: &'a str, after: Option<&'a str>) -> std::ops::Bound<&'a str> {
    match after {
        Some(a) if a >= prefix => std::ops::Bound::Excluded(a),
        _ => std::ops::Bound::Included(prefix),
    }
}

/// Totals, for metrics and the admin page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Pages stored.
    pub entries: u64,
    /// Bytes the store takes (file size, or the memory Redis reports).
    pub bytes: u64,
}

/// Whether this node may regenerate a page (cluster-wide single-flight).
pub enum Lease {
    /// No other node shares this store: go ahead.
    Local,
    /// This node holds the lease until the guard is dropped.
    Held(LeaseGuard),
    /// Another node is regenerating the page right now.
    Elsewhere,
}

/// Releases a lease when dropped.
pub struct LeaseGuard(Option<Box<dyn FnOnce() + Send>>);

impl LeaseGuard {
    /// A guard that runs `release` when dropped.
    pub fn new(release: impl FnOnce() + Send + 'static) -> LeaseGuard {
        LeaseGuard(Some(Box::new(release)))
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

/// A change another node made to a shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A revalidation mark (merge it into the tag clock).
    Mark {
        /// The target's store name (see [`crate::tags::Target::store_name`]).
        name: String,
        /// The mark.
        mark: Mark,
    },
    /// A new page was stored for `key`, generated at `generated` (drop older copies).
    Stored {
        /// The cache key.
        key: Arc<str>,
        /// Its generation stamp.
        generated: u64,
    },
}

/// How long a write of [`Store::put_same_bodies_soon`] may wait for its commit.
pub const SOON: Duration = Duration::from_secs(1);

/// The future an adapter returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A durable home for entries, the tag clock and the tag index.
pub trait Store: Send + Sync + 'static {
    /// The entry stored under `key`, bodies included.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Entry>>;

    /// The entry stored under `key`, to answer one request with and not to keep: its
    /// large bodies may be references into the store's own files, sent from there. By
    /// default, [`Store::get`].
    fn get_to_send<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Entry>> {
        self.get(key)
    }

    /// [`Store::get_to_send`] when the store can answer on the calling thread without
    /// waiting for the disk, the network or another thread (the embedded store while its
    /// pages are in the OS page cache); `None` when it cannot, and the future must be
    /// used. The hit loops answer what this returns. By default, `None`.
    fn get_now(&self, _key: &str) -> Option<Result<Option<Entry>, StoreError>> {
        None
    }

    /// Only the metadata of `key`.
    fn get_meta<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Meta>>;

    /// Stores `entry` under `key` unless the stored one was generated later (a slow
    /// fetch never overwrites a newer page). Returns whether it was written.
    fn put<'a>(&'a self, key: &'a str, entry: Arc<Entry>) -> StoreFuture<'a, bool>;

    /// Like [`Store::put`], for a regeneration whose bodies the engine found byte-identical
    /// to the stored entry's: an adapter may then rewrite only the metadata, after
    /// checking that the stored entry still has the same body hash and variants.
    fn put_same_bodies<'a>(&'a self, key: &'a str, entry: Arc<Entry>) -> StoreFuture<'a, bool> {
        self.put(key, entry)
    }

    /// Like [`Store::put_same_bodies`], when the engine has found that losing this write
    /// in a crash would cost only a regeneration (see [`crate::policy::rewrite_may_wait`]):
    /// an adapter may then answer before the write is durable and commit it with others
    /// within [`SOON`]. By default, [`Store::put_same_bodies`].
    fn put_same_bodies_soon<'a>(
        &'a self,
        key: &'a str,
        entry: Arc<Entry>,
    ) -> StoreFuture<'a, bool> {
        self.put_same_bodies(key, entry)
    }

    /// Makes every write answered so far durable (the writes of
    /// [`Store::put_same_bodies_soon`] included), as a server does before it exits.
    fn sync(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Every key carrying `tag`.
    fn keys_with_tag<'a>(&'a self, tag: &'a str) -> StoreFuture<'a, Vec<String>>;

    /// Up to `limit` keys carrying `tag` that sort after `after` (when given), in key
    /// order: one page of the admin listing by tag.
    fn keys_with_tag_after<'a>(
        &'a self,
        tag: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut keys = self.keys_with_tag(tag).await?;
            keys.sort();
            Ok(keys
                .into_iter()
                .filter(|k| after.is_none_or(|a| k.as_str() > a))
                .take(limit)
                .collect())
        })
    }

    /// Every key that starts with `prefix` (byte-wise), in key order.
    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>>;

    /// Up to `limit` keys starting with `prefix` and sorting after `after` (when given),
    /// in key order, with their metadata: one page of the admin listing, or of a scan.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Meta)>>;

    /// Totals.
    fn stats(&self) -> StoreFuture<'_, StoreStats>;

    /// Records an on-demand revalidation mark (merged with any earlier one).
    fn put_mark<'a>(&'a self, name: &'a str, mark: Mark) -> StoreFuture<'a, ()>;

    /// Every mark, to rebuild the tag clock at start.
    fn load_marks(&self) -> StoreFuture<'_, Vec<(String, Mark)>>;

    /// Asks for the right to regenerate `key` (a store shared by several nodes hands it
    /// to one node at a time; a store of one process always says [`Lease::Local`]).
    fn lease<'a>(&'a self, _key: &'a str) -> StoreFuture<'a, Lease> {
        Box::pin(async { Ok(Lease::Local) })
    }

    /// Waits, at most `at_most`, until no node holds the lease on `key`.
    fn wait_for_lease<'a>(&'a self, _key: &'a str, _at_most: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    /// The changes other nodes make, for a shared store (taken once, by the engine).
    fn events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<StoreEvent>> {
        None
    }
}
