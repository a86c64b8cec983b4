//! The embedded durable store: one redb file in `data_dir`.
//!
//! Tables: `meta` (key → metadata), `chunks` ((key, encoding, n) → up to 8,000 bytes of
//! a body; redb rounds its pages up to powers of two, so a 16 KiB page stored whole took
//! 32 KiB on disk and ~20 KiB in chunks), `tags`
//! ((tag, key) → ()) for eager tag revalidation, and `marks` (name → (stale_at,
//! expire_at)), which earlier versions wrote and which is still read. Metadata is apart
//! from bodies so freshness checks never read a body. Revalidation marks are written to
//! their own append-only log beside the database ([`super::marks`]): a revalidation then
//! waits for one small `fdatasync`, not for a commit of the whole store.
//!
//! Writes go to one writer thread that groups whatever is queued into a single
//! transaction (group commit): one fsync serves many pages. Every commit uses redb's
//! quick-repair mode, so opening after `kill -9` is instant instead of a full scan, and
//! a commit is atomic: an entry is either entirely the old one or entirely the new one.
//!
//! A write that fails (a full or unwritable disk) leaves the file at its last commit, but
//! redb then refuses every further transaction until the database is reopened. So the
//! writer reopens it, at most every [`REOPEN_EVERY`], until writes succeed again: storing
//! resumes by itself when space returns, and meanwhile the engine serves from memory and
//! the origin.
//!
//! Lookups of pages run on tokio's blocking pool: a page that is not in redb's cache or
//! the OS page cache means a disk read, and several of those must be able to wait at once
//! without stalling the threads that serve hits from memory. Index scans (eager
//! revalidation) and loading the marks (start-up) run inline.

use std::path::Path;
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;

use super::{Store, StoreError, StoreFuture, StoreStats};
use crate::entry::{Encoding, Entry, Meta};
use crate::policy::Mark;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BODY: TableDefinition<(&str, u8, u32), &[u8]> = TableDefinition::new("chunks");

/// Largest piece of a body stored as one value. Measured with 20,000 pages: 16 KiB bodies
/// take 32 KiB each stored whole, 20.4 KiB in 8,000-byte chunks (20.6 KiB in 4,000-byte
/// ones, 32 KiB in 16,000-byte ones, as neighbours share redb's power-of-two pages).
const CHUNK: usize = 8000;
const TAGS: TableDefinition<(&str, &str), ()> = TableDefinition::new("tags");
const MARKS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("marks");

/// Writes queued per transaction at most, so one commit stays short.
const MAX_BATCH: usize = 512;

/// How often a store that failed a write is reopened to try again.
const REOPEN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The open database, or none while the writer reopens it.
type Slot = Arc<std::sync::RwLock<Option<Arc<Database>>>>;

/// The redb-backed store.
pub struct RedbStore {
    path: std::path::PathBuf,
    db: Slot,
    marks: Arc<super::marks::MarkLog>,
    writer: mpsc::Sender<Write>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RedbStore {
    /// Lets the writer finish what is queued and release the file.
    fn drop(&mut self) {
        drop(std::mem::replace(&mut self.writer, mpsc::channel().0));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Op {
    /// `same_bodies`: the engine found the bodies byte-identical to the stored ones.
    Put {
        key: String,
        entry: Arc<Entry>,
        same_bodies: bool,
    },
}

struct Write {
    op: Op,
    done: oneshot::Sender<Result<bool, StoreError>>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) `dir/isr.redb`.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Failed(format!("cannot create data_dir {}: {e}", dir.display()))
        })?;
        let path = dir.join("isr.redb");
        let db: Slot = Arc::new(std::sync::RwLock::new(Some(Arc::new(open_db(&path)?))));
        let marks = Arc::new(super::marks::MarkLog::open(dir)?);
        let (writer, queue) = mpsc::channel();
        let (wdb, wpath) = (db.clone(), path.clone());
        let thread = std::thread::Builder::new()
            .name("isr-store-writer".into())
            .spawn(move || write_loop(&wdb, &wpath, &queue))
            .map_err(err)?;
        Ok(RedbStore {
            path,
            db,
            marks,
            writer,
            thread: Some(thread),
        })
    }

    fn submit(&self, op: Op) -> StoreFuture<'_, bool> {
        let (done, rx) = oneshot::channel();
        let sent = self.writer.send(Write { op, done });
        Box::pin(async move {
            sent.map_err(|_| StoreError::Failed("the store writer has stopped".into()))?;
            rx.await
                .map_err(|_| StoreError::Failed("the store writer has stopped".into()))?
        })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = current(&self.db)?.begin_read().map_err(err)?;
        f(&txn)
    }
}

/// Opens (or creates) the file with its tables.
fn open_db(path: &Path) -> Result<Database, StoreError> {
    let db = Database::builder()
        .set_cache_size(4 << 20)
        .create(path)
        .map_err(|e| StoreError::Failed(format!("cannot open {}: {e}", path.display())))?;
    let mut txn = db.begin_write().map_err(err)?;
    txn.set_quick_repair(true);
    {
        txn.open_table(META).map_err(err)?;
        txn.open_table(BODY).map_err(err)?;
        txn.open_table(TAGS).map_err(err)?;
        txn.open_table(MARKS).map_err(err)?;
    }
    txn.commit().map_err(err)?;
    Ok(db)
}

/// The open database (an error while it is being reopened).
fn current(slot: &Slot) -> Result<Arc<Database>, StoreError> {
    slot.read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| {
            StoreError::Failed("the store is being reopened after a failed write".into())
        })
}

/// Closes and reopens the database after a failed write. Readers holding it are given a
/// moment to finish; if one does not, the old one is put back for the next try.
fn reopen(slot: &Slot, path: &Path) -> Result<(), StoreError> {
    let taken = slot.write().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut old) = taken {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            match Arc::try_unwrap(old) {
                Ok(db) => {
                    drop(db);
                    break;
                }
                Err(still_shared) if std::time::Instant::now() > deadline => {
                    *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(still_shared);
                    return Err(StoreError::Failed("a read held the store open".into()));
                }
                Err(still_shared) => {
                    old = still_shared;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        }
    }
    let db = open_db(path)?;
    *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db));
    Ok(())
}

fn write_loop(slot: &Slot, path: &Path, queue: &mpsc::Receiver<Write>) {
    // After a failed write: when, and why (writes fail at once until the next reopen).
    let mut failed: Option<(std::time::Instant, StoreError)> = None;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        if let Some((at, e)) = &failed {
            if at.elapsed() < REOPEN_EVERY {
                // Until the next reopen, writes fail at once (and do not delay it).
                for w in batch {
                    let _ = w.done.send(Err(e.clone()));
                }
                continue;
            }
        }
        let result = match &failed {
            Some(_) => reopen(slot, path).and_then(|()| apply(&*current(slot)?, &batch)),
            None => current(slot).and_then(|db| apply(&db, &batch)),
        };
        match result {
            Ok(results) => {
                if failed.take().is_some() {
                    tracing::warn!(path = %path.display(), "the store is writable again");
                }
                for (w, r) in batch.into_iter().zip(results) {
                    let _ = w.done.send(Ok(r));
                }
            }
            Err(e) => {
                // Not logged here: the engine logs store errors once a minute, with a count.
                let e = match &failed {
                    Some((_, first)) => first.clone(),
                    None => e,
                };
                failed = Some((std::time::Instant::now(), e.clone()));
                for w in batch {
                    let _ = w.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Applies a batch in one transaction; returns per write whether it changed anything.
fn apply(db: &Database, batch: &[Write]) -> Result<Vec<bool>, StoreError> {
    let mut txn = db.begin_write().map_err(err)?;
    txn.set_quick_repair(true);
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut meta = txn.open_table(META).map_err(err)?;
        let mut body = txn.open_table(BODY).map_err(err)?;
        let mut tags = txn.open_table(TAGS).map_err(err)?;
        for w in batch {
            match &w.op {
                Op::Put {
                    key,
                    entry,
                    same_bodies,
                } => {
                    let old = meta
                        .get(key.as_str())
                        .map_err(err)?
                        .and_then(|g| Meta::from_bytes(g.value()).ok());
                    if old
                        .as_ref()
                        .is_some_and(|o| o.generated > entry.meta.generated)
                    {
                        results.push(false);
                        continue;
                    }
                    // Skip rewriting bodies only when the stored ones are still those the
                    // engine compared byte for byte (same hash and variants).
                    let keep_bodies = *same_bodies
                        && old.as_ref().is_some_and(|o| {
                            o.hash == entry.meta.hash
                                && o.br == entry.meta.br
                                && o.gzip == entry.meta.gzip
                        });
                    if let Some(old) = old {
                        for t in &old.tags {
                            tags.remove((t.as_str(), key.as_str())).map_err(err)?;
                        }
                    }
                    meta.insert(key.as_str(), entry.meta.to_bytes().as_slice())
                        .map_err(err)?;
                    for enc in Encoding::ALL.into_iter().filter(|_| !keep_bodies) {
                        let variant = match enc {
                            Encoding::Identity => Some(entry.identity()),
                            Encoding::Br => entry.br(),
                            Encoding::Gzip => entry.gzip(),
                        };
                        let k = key.as_str();
                        body.retain_in((k, enc.code(), 0)..=(k, enc.code(), u32::MAX), |_, _| {
                            false
                        })
                        .map_err(err)?;
                        for (n, piece) in variant.iter().flat_map(|b| b.chunks(CHUNK)).enumerate() {
                            body.insert((k, enc.code(), n as u32), piece).map_err(err)?;
                        }
                    }
                    for t in &entry.meta.tags {
                        tags.insert((t.as_str(), key.as_str()), ()).map_err(err)?;
                    }
                    results.push(true);
                }
            }
        }
    }
    txn.commit().map_err(err)?;
    Ok(results)
}

/// Runs a read on the blocking pool.
fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> StoreFuture<'static, T> {
    Box::pin(async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Failed(format!("store read task failed: {e}")))?
    })
}

impl Store for RedbStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Entry>> {
        let (slot, key) = (self.db.clone(), key.to_string());
        blocking(move || {
            let txn = current(&slot)?.begin_read().map_err(err)?;
            let meta = txn.open_table(META).map_err(err)?;
            let Some(m) = meta.get(key.as_str()).map_err(err)? else {
                return Ok(None);
            };
            let m = Meta::from_bytes(m.value()).map_err(err)?;
            let body = txn.open_table(BODY).map_err(err)?;
            let load = |e: Encoding| -> Result<Option<Bytes>, StoreError> {
                let k = key.as_str();
                let pieces = body
                    .range((k, e.code(), 0)..=(k, e.code(), u32::MAX))
                    .map_err(err)?
                    .map(|row| row.map(|(_, piece)| piece).map_err(err))
                    .collect::<Result<Vec<_>, _>>()?;
                if pieces.is_empty() {
                    return Ok(None);
                }
                // Exactly sized: the hot tier counts these bytes against its budget.
                let mut out = Vec::with_capacity(pieces.iter().map(|p| p.value().len()).sum());
                for p in &pieces {
                    out.extend_from_slice(p.value());
                }
                Ok(Some(Bytes::from(out)))
            };
            let identity = load(Encoding::Identity)?.unwrap_or_default();
            let br = if m.br { load(Encoding::Br)? } else { None };
            let gzip = if m.gzip { load(Encoding::Gzip)? } else { None };
            Ok(Some(Entry::new(m, identity, br, gzip)))
        })
    }

    fn get_meta<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Meta>> {
        let (slot, key) = (self.db.clone(), key.to_string());
        blocking(move || {
            let txn = current(&slot)?.begin_read().map_err(err)?;
            let meta = txn.open_table(META).map_err(err)?;
            match meta.get(key.as_str()).map_err(err)? {
                Some(m) => Meta::from_bytes(m.value()).map(Some).map_err(err),
                None => Ok(None),
            }
        })
    }

    fn put<'a>(&'a self, key: &'a str, entry: Arc<Entry>) -> StoreFuture<'a, bool> {
        self.submit(Op::Put {
            key: key.to_string(),
            entry,
            same_bodies: false,
        })
    }

    fn put_same_bodies<'a>(&'a self, key: &'a str, entry: Arc<Entry>) -> StoreFuture<'a, bool> {
        self.submit(Op::Put {
            key: key.to_string(),
            entry,
            same_bodies: true,
        })
    }

    fn keys_with_tag<'a>(&'a self, tag: &'a str) -> StoreFuture<'a, Vec<String>> {
        let r = self.read(|txn| {
            let tags = txn.open_table(TAGS).map_err(err)?;
            let mut keys = Vec::new();
            for row in tags.range((tag, "")..).map_err(err)? {
                let (k, _) = row.map_err(err)?;
                let (t, key) = k.value();
                if t != tag {
                    break;
                }
                keys.push(key.to_string());
            }
            Ok(keys)
        });
        Box::pin(std::future::ready(r))
    }

    fn keys_with_tag_after<'a>(
        &'a self,
        tag: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<String>> {
        let r = self.read(|txn| {
            let tags = txn.open_table(TAGS).map_err(err)?;
            let mut keys = Vec::new();
            for row in tags.range((tag, after.unwrap_or(""))..).map_err(err)? {
                let (k, _) = row.map_err(err)?;
                let (t, key) = k.value();
                if t != tag || keys.len() == limit {
                    break;
                }
                if Some(key) != after {
                    keys.push(key.to_string());
                }
            }
            Ok(keys)
        });
        Box::pin(std::future::ready(r))
    }

    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        let r = self.read(|txn| {
            let meta = txn.open_table(META).map_err(err)?;
            let mut keys = Vec::new();
            for row in meta.range(prefix..).map_err(err)? {
                let (k, _) = row.map_err(err)?;
                let k = k.value();
                if !k.starts_with(prefix) {
                    break;
                }
                keys.push(k.to_string());
            }
            Ok(keys)
        });
        Box::pin(std::future::ready(r))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Meta)>> {
        use std::ops::Bound;
        let r = self.read(|txn| {
            let meta = txn.open_table(META).map_err(err)?;
            let start = super::list_start(prefix, after);
            let mut out = Vec::new();
            for row in meta.range::<&str>((start, Bound::Unbounded)).map_err(err)? {
                let (k, v) = row.map_err(err)?;
                let k = k.value();
                if !k.starts_with(prefix) || out.len() == limit {
                    break;
                }
                let m = Meta::from_bytes(v.value()).map_err(err)?;
                out.push((k.to_string(), m));
            }
            Ok(out)
        });
        Box::pin(std::future::ready(r))
    }

    fn stats(&self) -> StoreFuture<'_, StoreStats> {
        let r = self.read(|txn| {
            let meta = txn.open_table(META).map_err(err)?;
            Ok(StoreStats {
                entries: meta.len().map_err(err)?,
                bytes: std::fs::metadata(&self.path).map_or(0, |m| m.len()),
            })
        });
        Box::pin(std::future::ready(r))
    }

    fn put_mark<'a>(&'a self, name: &'a str, mark: Mark) -> StoreFuture<'a, ()> {
        let (log, name) = (self.marks.clone(), name.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || log.append(&name, mark))
                .await
                .map_err(err)?
        })
    }

    fn load_marks(&self) -> StoreFuture<'_, Vec<(String, Mark)>> {
        let r = self.read(|txn| {
            // Marks written by earlier versions, then the log's.
            let mut all = self.marks.load()?;
            let marks = txn.open_table(MARKS).map_err(err)?;
            for row in marks.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                let (s, e) = v.value();
                let m = all.entry(k.value().to_string()).or_default();
                *m = m.merge(Mark {
                    stale_at: s,
                    expire_at: e,
                });
            }
            Ok(all.into_iter().collect())
        });
        Box::pin(std::future::ready(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &str, generated: u64, tags: &[&str]) -> Arc<Entry> {
        let meta = Meta {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            generated,
            revalidate: Some(60_000),
            expire: 3_600_000,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            hash: crate::entry::hash(body.as_bytes()),
            br: false,
            gzip: false,
            bytes: 0,
        };
        Arc::new(Entry::new(meta, Bytes::from(body.to_string()), None, None))
    }

    #[tokio::test]
    async fn pages_marks_and_tag_index_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path()).unwrap();
            assert!(s.put("/a", entry("one", 10, &["x", "y"])).await.unwrap());
            assert!(s.put("/a", entry("two", 20, &["y", "z"])).await.unwrap());
            assert!(!s.put("/a", entry("older", 15, &[])).await.unwrap());
            s.put("/ab", entry("ab", 10, &["y"])).await.unwrap();
            s.put_mark("t:y", Mark::at(5, false)).await.unwrap();
            s.put_mark("t:y", Mark::at(3, true)).await.unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        let e = s.get("/a").await.unwrap().unwrap();
        assert_eq!(&e.identity()[..], b"two");
        assert!(s.keys_with_tag("x").await.unwrap().is_empty());
        assert_eq!(s.keys_with_tag("y").await.unwrap(), ["/a", "/ab"]);
        assert_eq!(s.keys_with_tag("z").await.unwrap(), ["/a"]);
        assert_eq!(s.keys_with_prefix("/a").await.unwrap(), ["/a", "/ab"]);
        assert_eq!(
            s.load_marks().await.unwrap(),
            [(
                "t:y".to_string(),
                Mark {
                    stale_at: 5,
                    expire_at: 3
                }
            )]
        );
        assert!(s.get("/missing").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn marks_written_by_earlier_versions_in_the_database_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(&dir.path().join("isr.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(MARKS)
                .unwrap()
                .insert("t:old", (40, 0))
                .unwrap();
            txn.commit().unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        s.put_mark("t:old", Mark::at(30, true)).await.unwrap();
        s.put_mark("t:new", Mark::at(50, false)).await.unwrap();
        let marks: std::collections::HashMap<_, _> =
            s.load_marks().await.unwrap().into_iter().collect();
        assert_eq!(
            marks["t:old"],
            Mark {
                stale_at: 40,
                expire_at: 30
            }
        );
        assert_eq!(marks["t:new"], Mark::at(50, false));
    }

    #[tokio::test]
    async fn bodies_of_many_chunks_round_trip_and_shrink_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let big: String = (0..100_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        s.put("/big", entry(&big, 1, &[])).await.unwrap();
        assert_eq!(
            s.get("/big").await.unwrap().unwrap().identity(),
            big.as_bytes()
        );
        let smaller = &big[..CHUNK + 7];
        s.put("/big", entry(smaller, 2, &[])).await.unwrap();
        assert_eq!(
            s.get("/big").await.unwrap().unwrap().identity(),
            smaller.as_bytes()
        );
        s.put("/big", entry("", 3, &[])).await.unwrap();
        assert!(s.get("/big").await.unwrap().unwrap().identity().is_empty());
    }

    #[tokio::test]
    async fn same_bodies_rewrites_only_metadata_unless_the_stored_bodies_changed() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        s.put("/p", entry("same", 10, &["a"])).await.unwrap();
        assert!(s
            .put_same_bodies("/p", entry("same", 20, &["b"]))
            .await
            .unwrap());
        let e = s.get("/p").await.unwrap().unwrap();
        assert_eq!((&e.identity()[..], e.meta.generated), (&b"same"[..], 20));
        assert_eq!(s.keys_with_tag("b").await.unwrap(), ["/p"]);
        // Another write replaced the bodies meanwhile: the hint must not keep them.
        s.put("/p", entry("other", 30, &[])).await.unwrap();
        assert!(s
            .put_same_bodies("/p", entry("same", 40, &[]))
            .await
            .unwrap());
        assert_eq!(&s.get("/p").await.unwrap().unwrap().identity()[..], b"same");
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(24))]

        /// Whatever sequence of writes (new pages, rewrites with other tags, slower older
        /// fetches, metadata-only rewrites) and reopens, the tag index lists exactly the
        /// keys whose stored entry carries the tag, in both adapters.
        #[test]
        fn the_tag_index_agrees_with_the_entries(
            ops in proptest::collection::vec((0usize..6, 0u64..40, proptest::collection::vec(0usize..4, 0..3), proptest::bool::ANY, proptest::bool::ANY), 1..40)
        ) {
            const TAGS: [&str; 4] = ["a", "b", "c", "d"];
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let mut redb = RedbStore::open(dir.path()).unwrap();
                let memory = crate::store::MemoryStore::default();
                for (k, generated, tags, same_bodies, reopen) in &ops {
                    let key = format!("/k{k}");
                    let tags: Vec<&str> = tags.iter().map(|t| TAGS[*t]).collect();
                    let e = entry("body", *generated, &tags);
                    for s in [&redb as &dyn Store, &memory] {
                        if *same_bodies {
                            s.put_same_bodies(&key, e.clone()).await.unwrap();
                        } else {
                            s.put(&key, e.clone()).await.unwrap();
                        }
                    }
                    if *reopen {
                        drop(redb);
                        redb = RedbStore::open(dir.path()).unwrap();
                    }
                }
                for s in [&redb as &dyn Store, &memory] {
                    for tag in TAGS {
                        let mut indexed = s.keys_with_tag(tag).await.unwrap();
                        indexed.sort();
                        let mut carrying = Vec::new();
                        for k in s.keys_with_prefix("/").await.unwrap() {
                            let meta = s.get_meta(&k).await.unwrap().unwrap();
                            if meta.tags.iter().any(|t| t == tag) {
                                carrying.push(k);
                            }
                        }
                        assert_eq!(indexed, carrying, "tag {tag}");
                    }
                }
            });
        }
    }
}
