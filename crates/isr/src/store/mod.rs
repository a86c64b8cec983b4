//! Where pages live: one async trait, several adapters, and the hot in-memory tier.
//!
//! An adapter stores and finds; it holds no policy. Every write of an entry replaces its
//! metadata, all its body variants and its tag-index rows in one atomic step, so a crash
//! never leaves a torn or mixed entry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::entry::{Entry, Meta};
use crate::policy::Mark;

mod hot;
mod memory;
mod redb;

pub use self::hot::HotTier;
pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;

/// A store operation failed (I/O, corruption, or the store is gone).
#[derive(Debug, Clone, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// The future an adapter returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A durable home for entries, the tag clock and the tag index.
pub trait Store: Send + Sync + 'static {
    /// The entry stored under `key`, bodies included.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Entry>>;

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

    /// Every key carrying `tag`.
    fn keys_with_tag<'a>(&'a self, tag: &'a str) -> StoreFuture<'a, Vec<String>>;

    /// Every key that starts with `prefix` (byte-wise), in key order.
    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>>;

    /// Records an on-demand revalidation mark (merged with any earlier one).
    fn put_mark<'a>(&'a self, name: &'a str, mark: Mark) -> StoreFuture<'a, ()>;

    /// Every mark, to rebuild the tag clock at start.
    fn load_marks(&self) -> StoreFuture<'_, Vec<(String, Mark)>>;
}
