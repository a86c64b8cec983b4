//! A store that lives in memory only: for tests and for embedding without a disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::{Store, StoreError, StoreFuture, StoreStats};
use crate::entry::{Entry, Meta};
use crate::policy::Mark;

/// Entries and marks in maps; nothing survives the process.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<String, Arc<Entry>>,
    marks: HashMap<String, Mark>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Result<T, StoreError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| StoreError::Failed("poisoned".into()))?;
        Ok(f(&mut inner))
    }

    /// A copy of the entry stored under `key` (the store never waits).
    fn read(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.with(|i| i.entries.get(key).map(|e| copy(e)))
    }
}

fn copy(e: &Entry) -> Entry {
    Entry::new(e.meta.clone(), e.identity(), e.br(), e.gzip())
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Entry>> {
        Box::pin(std::future::ready(self.read(key)))
    }

    fn get_now(&self, key: &str) -> Option<Result<Option<Entry>, StoreError>> {
        Some(self.read(key))
    }

    fn get_meta<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Meta>> {
        Box::pin(async move { self.with(|i| i.entries.get(key).map(|e| e.meta.clone())) })
    }

    fn put<'a>(&'a self, key: &'a str, entry: Arc<Entry>) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.with(|i| {
                if i.entries
                    .get(key)
                    .is_some_and(|old| old.meta.generated > entry.meta.generated)
                {
                    return false;
                }
                i.entries.insert(key.to_string(), entry);
                true
            })
        })
    }

    fn keys_with_tag<'a>(&'a self, tag: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.with(|i| {
                i.entries
                    .iter()
                    .filter(|(_, e)| e.meta.tags.iter().any(|t| t == tag))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
        })
    }

    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.with(|i| {
                i.entries
                    .range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Meta)>> {
        use std::ops::Bound;
        Box::pin(async move {
            self.with(|i| {
                let start = super::list_start(prefix, after).map(str::to_string);
                i.entries
                    .range((start, Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .take(limit)
                    .map(|(k, e)| (k.clone(), e.meta.clone()))
                    .collect()
            })
        })
    }

    fn stats(&self) -> StoreFuture<'_, StoreStats> {
        Box::pin(async move {
            self.with(|i| StoreStats {
                entries: i.entries.len() as u64,
                bytes: i.entries.values().map(|e| e.meta.bytes).sum(),
            })
        })
    }

    fn put_mark<'a>(&'a self, name: &'a str, mark: Mark) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.with(|i| {
                let m = i.marks.entry(name.to_string()).or_default();
                *m = m.merge(mark);
            })
        })
    }

    fn load_marks(&self) -> StoreFuture<'_, Vec<(String, Mark)>> {
        Box::pin(
            async move { self.with(|i| i.marks.iter().map(|(k, v)| (k.clone(), *v)).collect()) },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn lists_by_prefix_with_a_cursor() {
        let store = MemoryStore::new();
        for k in ["/a", "/a/b", "/a/c", "/b"] {
            let meta = Meta {
                status: 200,
                headers: vec![],
                generated: 1,
                revalidate: None,
                expire: 1,
                tags: vec![],
                hash: String::new(),
                br: false,
                gzip: false,
                bytes: 0,
            };
            let e = Arc::new(Entry::new(meta, Bytes::from_static(b"body"), None, None));
            store.put(k, e).await.unwrap();
        }
        let keys = |page: Vec<(String, Meta)>| page.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(store.list("/a", None, 2).await.unwrap()),
            ["/a", "/a/b"]
        );
        assert_eq!(
            keys(store.list("/a", Some("/a/b"), 5).await.unwrap()),
            ["/a/c"]
        );
        assert_eq!(keys(store.list("", Some("/a/c"), 5).await.unwrap()), ["/b"]);
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.entries, stats.bytes), (4, 16));
    }
}
