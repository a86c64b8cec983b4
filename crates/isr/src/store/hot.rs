//! The hot tier: a byte-bounded in-memory cache of ready-to-serve entries in front of
//! any store. Its budget is a hard bound (quick_cache's weight capacity); an entry larger
//! than the whole budget is simply not kept in memory.

use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::entry::Entry;

#[derive(Clone)]
struct ByBytes;

impl Weighter<Box<str>, Arc<Entry>> for ByBytes {
    fn weight(&self, key: &Box<str>, val: &Arc<Entry>) -> u64 {
        key.len() as u64 + val.weight()
    }
}

/// Ready-to-serve entries, bounded in bytes. A budget of 0 disables it.
pub struct HotTier {
    cache: Option<Cache<Box<str>, Arc<Entry>, ByBytes>>,
}

impl HotTier {
    /// A tier holding at most `budget` bytes.
    pub fn new(budget: u64) -> HotTier {
        let cache = (budget > 0).then(|| {
            // quick_cache sizes its tables from an item estimate; assume 16 KiB pages.
            let items = (budget / 16384).clamp(64, 1 << 20) as usize;
            Cache::with_weighter(items, budget, ByBytes)
        });
        HotTier { cache }
    }

    /// The entry for `key`, if held.
    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.cache.as_ref()?.get(key)
    }

    /// Holds `entry` for `key` (replacing any older one), with its large bodies moved to
    /// page files.
    pub fn insert(&self, key: &str, entry: Arc<Entry>) {
        if let Some(c) = &self.cache {
            let entry = entry.in_page_files().map_or(entry, Arc::new);
            c.insert(key.into(), entry);
        }
    }

    /// Drops the entry for `key` if it was generated before `generated` (another node
    /// stored a newer page; the next request reads that one from the shared store).
    pub fn remove_older(&self, key: &str, generated: u64) {
        if let Some(c) = &self.cache {
            c.remove_if(key, |e| e.meta.generated < generated);
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.weight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Meta;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn entry(len: usize) -> Arc<Entry> {
        let meta = Meta {
            status: 200,
            headers: vec![],
            generated: 0,
            revalidate: None,
            expire: 1,
            tags: vec![],
            hash: String::new(),
            br: false,
            gzip: false,
            bytes: 0,
        };
        Arc::new(Entry::new(meta, Bytes::from(vec![b'x'; len]), None, None))
    }

    proptest! {
        #[test]
        fn never_exceeds_its_budget(sizes in proptest::collection::vec(0usize..50_000, 1..200)) {
            let hot = HotTier::new(256 * 1024);
            for (i, s) in sizes.iter().enumerate() {
                hot.insert(&format!("/p/{i}"), entry(*s));
                prop_assert!(hot.bytes() <= 256 * 1024);
            }
        }
    }

    #[test]
    fn zero_budget_disables_it() {
        let hot = HotTier::new(0);
        hot.insert("/a", entry(10));
        assert!(hot.get("/a").is_none());
    }
}
