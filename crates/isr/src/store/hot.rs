//! The hot tier: a byte-bounded in-memory cache of ready-to-serve entries in front of
//! any store. Its budget is a hard bound (quick_cache's weight capacity); an entry larger
//! than the whole budget is simply not kept in memory.
//!
//! Once the tier is full, a page read from the store is kept only on its second read
//! within a while ([`HotTier::admits`]), as nginx's `proxy_cache_min_uses 2`: a crawler or
//! a random walk over a store much larger than the tier then neither churns it (each
//! page kept would evict another) nor pays for reading into memory a page it sends once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quick_cache::sync::{Cache, EntryAction, EntryResult};
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
    /// Hashes of keys read from the store and not kept, one per slot: a key whose hash is
    /// still in its slot at its next read is kept then.
    seen: Box<[AtomicU64]>,
    /// quick_cache's own hasher (aHash): std's SipHash cost 1.4 % of a disk-tier hit.
    hasher: quick_cache::DefaultHashBuilder,
}

/// Slots in [`HotTier::seen`] per entry the tier holds (of 16 KiB): a page read twice
/// while about as many other pages are read from the store as the tier holds is kept. A
/// page read again only later would mostly be evicted before its next read anyway: four
/// slots per entry admitted up to three times as many pages, for the same or a lower hit
/// rate (`bench/admission_sim.py`, BENCHMARKS.md "An Intel VM again").
const SEEN_PER_ITEM: usize = 1;

impl HotTier {
    /// A tier holding at most `budget` bytes.
    pub fn new(budget: u64) -> HotTier {
        // quick_cache sizes its tables from an item estimate; assume 16 KiB pages.
        let items = (budget / 16384).clamp(64, 1 << 20) as usize;
        let cache = (budget > 0).then(|| Cache::with_weighter(items, budget, ByBytes));
        let slots = if budget > 0 { items * SEEN_PER_ITEM } else { 0 };
        HotTier {
            cache,
            seen: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            hasher: quick_cache::DefaultHashBuilder::default(),
        }
    }

    /// Whether a page about to be read from the store for `key` should be kept in the
    /// tier: always while the tier has room; once it is full, only when the same key was
    /// read and not kept a short while ago. Never when the tier is disabled.
    pub fn admits(&self, key: &str) -> bool {
        let Some(c) = &self.cache else {
            return false;
        };
        if c.weight() < c.capacity() / 16 * 15 {
            return true;
        }
        let h = self.hasher.hash_one(key);
        let slot = &self.seen[(h >> 16) as usize % self.seen.len()];
        slot.swap(h | 1, Ordering::Relaxed) == h | 1
    }

    /// The entry for `key`, if held. On an entry's first hit in the tier its large bodies
    /// move to page files (see [`HotTier::insert`]), and this hit already gets that copy.
    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let c = self.cache.as_ref()?;
        let e = c.get(key)?;
        if e.wants_page_files() {
            return Some(promote(c, key, &e).unwrap_or(e));
        }
        Some(e)
    }

    /// The entry for `key`, if held, without counting a hit: it neither moves to page files
    /// nor gains recency (a regeneration reading the page it replaces).
    pub fn peek(&self, key: &str) -> Option<Arc<Entry>> {
        self.cache.as_ref()?.peek(key)
    }

    /// Holds `entry` for `key` (replacing any older one). Its bodies stay on the heap until
    /// its first hit: a page read only once, as most are on a random walk over a store
    /// larger than the tier, never pays for a page file.
    pub fn insert(&self, key: &str, entry: Arc<Entry>) {
        if let Some(c) = &self.cache {
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

/// Replaces `e`, held for `key`, by a copy with its large bodies in page files, unless a
/// newer entry replaced it meanwhile; returns the copy when it took `e`'s place.
fn promote(
    c: &Cache<Box<str>, Arc<Entry>, ByBytes>,
    key: &str,
    e: &Arc<Entry>,
) -> Option<Arc<Entry>> {
    // The files are written outside the shard's lock; only the swap happens under it.
    let files = Arc::new(e.in_page_files()?);
    let key: Box<str> = key.into();
    let swapped = c.entry(&key, Some(Duration::ZERO), |_, held| {
        let same = Arc::ptr_eq(held, e);
        if same {
            *held = files.clone();
        }
        EntryAction::Retain(same)
    });
    matches!(swapped, EntryResult::Retained(true)).then_some(files)
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

    fn in_files(e: &Entry) -> bool {
        matches!(e.body_for_bytes(None).1, crate::entry::Body::File(_))
    }

    #[test]
    fn large_bodies_move_to_page_files_on_the_first_hit_never_over_a_newer_entry() {
        let hot = HotTier::new(1 << 20);
        let large = crate::page_file::MIN_BYTES + 1000;
        hot.insert("/a", entry(large));
        let c = hot.cache.as_ref().unwrap();
        assert!(
            !in_files(&c.peek("/a").unwrap()),
            "inserted: still on the heap"
        );
        assert!(
            in_files(&hot.get("/a").unwrap()),
            "the first hit gets the file"
        );
        assert!(in_files(&c.peek("/a").unwrap()), "and the tier keeps it");
        hot.insert("/peeked", entry(large));
        assert!(
            !in_files(&hot.peek("/peeked").unwrap()),
            "a peek is not a hit"
        );
        assert!(!in_files(&c.peek("/peeked").unwrap()));
        hot.insert("/small", entry(100));
        assert!(
            !in_files(&hot.get("/small").unwrap()),
            "small bodies stay on the heap"
        );

        // A hit that read the old entry while a newer one came in must not put the old
        // one back.
        hot.insert("/b", entry(large));
        let old = c.peek("/b").unwrap();
        let newer = entry(large + 10_000);
        hot.insert("/b", newer.clone());
        assert!(promote(c, "/b", &old).is_none());
        assert!(Arc::ptr_eq(&c.peek("/b").unwrap(), &newer));
    }

    #[test]
    fn zero_budget_disables_it() {
        let hot = HotTier::new(0);
        hot.insert("/a", entry(10));
        assert!(hot.get("/a").is_none());
        assert!(
            !hot.admits("/a"),
            "nothing is kept, so nothing is read to keep"
        );
    }

    #[test]
    fn once_full_a_page_read_from_the_store_is_kept_on_its_second_read() {
        let hot = HotTier::new(256 * 1024);
        assert!(
            hot.admits("/new"),
            "while the tier has room, everything is kept"
        );
        assert!(hot.admits("/new"));
        for i in 0..64 {
            hot.insert(&format!("/fill/{i}"), entry(8 * 1024));
        }
        assert!(hot.bytes() > 240 * 1024, "full: {}", hot.bytes());
        assert!(!hot.admits("/once"), "read once: sent, not kept");
        assert!(hot.admits("/once"), "read again soon after: kept");
        assert!(
            !hot.admits("/other"),
            "another key is not let in by the first"
        );
        // A random walk of single reads keeps nothing.
        assert!((0..10_000).all(|i| !hot.admits(&format!("/walk/{i}"))));
    }
}
