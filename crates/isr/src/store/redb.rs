//! The embedded durable store: one redb file in `data_dir`, and the page bodies in
//! segment files beside it ([`super::segments`]).
//!
//! Tables: `pages` (key → the entry's [`Extent`] and its metadata, in
//! [`Meta::to_binary`]'s encoding), `extents` ((segment,
//! offset) → key: which entry each extent belongs to, to move it when its segment is
//! compacted), `segment_live` (segment → bytes still referenced), `tags` ((tag, key) → ())
//! for eager tag revalidation, and tables only read, which earlier versions wrote:
//! `chunks` ((key, encoding, n) → up to 8,000 bytes of a body; a row of `pages` without an
//! extent has its bodies there, until the page is next written), `marks` (name →
//! (stale_at, expire_at)) and `meta` (string key → JSON metadata, converted into `pages`
//! on open by [`migrate_meta`]). Metadata is apart from bodies so freshness checks never read a
//! body. Revalidation marks are written to their own append-only log beside the database
//! ([`super::marks`]): a revalidation then waits for one small `fdatasync`, not for a
//! commit of the whole store.
//!
//! Writes go to one writer thread that groups whatever is queued into a single
//! transaction (group commit): one fsync of the segments and one commit serve many pages.
//! Rewrites that may wait ([`Store::put_same_bodies_soon`]: a regeneration that changed no
//! body) are answered at once and kept for up to [`super::SOON`], or until a write that
//! may not wait comes, so that a burst of regenerations costs a few commits, not one each.
//! Every commit uses redb's quick-repair mode, so opening after `kill -9` is instant
//! instead of a full scan, and a commit is atomic: an entry is either entirely the old one
//! or entirely the new one. When no write is queued, the writer compacts segments.
//!
//! A write that fails (a full or unwritable disk) leaves the file at its last commit, but
//! redb then refuses every further transaction until the database is reopened. So the
//! writer reopens it, at most every [`REOPEN_EVERY`], until writes succeed again: storing
//! resumes by itself when space returns, and meanwhile the engine serves from memory and
//! the origin.
//!
//! Lookups of pages run on the calling thread while the store is served from the OS page
//! cache (handing a read to another thread costs more than the read), and on tokio's
//! blocking pool when they would wait for the disk, so that several disk reads wait at
//! once without stalling the threads that serve hits from memory: see [`InlineReads`].
//! They share one read snapshot of `pages` until the writer's next commit ([`Db`]).
//! Index scans (eager revalidation) and loading the marks (start-up) run inline.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;

use super::segments::{
    decode_row, encode_row, Appender, Extent, Segments, Unread, REFER_MIN_BYTES, SEGMENT_BYTES,
};
use super::{Store, StoreError, StoreFuture, StoreStats};
use crate::entry::{Body, Encoding, Entry, Meta};
use crate::policy::Mark;

/// Key (the bytes of its string) → extent and [`Meta::to_binary`] row.
const PAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pages");
/// Key → extent and JSON metadata, as versions before `pages` stored them: moved into
/// `pages` when the database is opened ([`migrate_meta`]).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const EXTENTS: TableDefinition<(u32, u64), &str> = TableDefinition::new("extents");
const LIVE: TableDefinition<u32, u64> = TableDefinition::new("segment_live");
/// Bodies as earlier versions stored them: (key, encoding, n) → the n-th 8,000 bytes.
const CHUNKS: TableDefinition<(&str, u8, u32), &[u8]> = TableDefinition::new("chunks");
const TAGS: TableDefinition<(&str, &str), ()> = TableDefinition::new("tags");
const MARKS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("marks");

/// Writes queued per transaction at most, so one commit stays short.
const MAX_BATCH: usize = 512;

/// Bytes of bodies one compaction transaction moves at most, so a write that arrives
/// meanwhile waits little.
const COMPACT_STEP: u64 = 4 << 20;

/// How often a store that failed a write is reopened to try again.
const REOPEN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The open database, shared by the store and its writer thread.
type Slot = Arc<Db>;

/// The open database (none while the writer reopens it), and the read snapshot of its
/// `pages` table that lookups share.
struct Db {
    /// The newest snapshot, opened by the first lookup after a commit and dropped by the
    /// writer after each commit: a lookup that starts once a write has returned sees it.
    /// (Declared first so that it is dropped before the database, whose last commit on
    /// close can then trim the file.)
    snapshot: std::sync::Mutex<Option<Arc<Snapshot>>>,
    open: std::sync::RwLock<Option<Arc<Database>>>,
}

/// A read transaction and its `pages` table.
struct Snapshot {
    txn: redb::ReadTransaction,
    pages: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl Db {
    fn new(db: Database) -> Db {
        Db {
            snapshot: std::sync::Mutex::new(None),
            open: std::sync::RwLock::new(Some(Arc::new(db))),
        }
    }

    /// The newest read snapshot, opened now if no lookup has since the last commit.
    fn snapshot(&self) -> Result<Arc<Snapshot>, StoreError> {
        // Opened under the lock: a snapshot begun before a commit is never kept after the
        // writer's `forget_snapshot` for that commit.
        let mut shared = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = &*shared {
            return Ok(s.clone());
        }
        let txn = current(self)?.begin_read().map_err(err)?;
        let pages = txn.open_table(PAGES).map_err(err)?;
        let s = Arc::new(Snapshot { txn, pages });
        *shared = Some(s.clone());
        Ok(s)
    }

    /// Drops the shared snapshot: after every commit, and before the database is closed.
    fn forget_snapshot(&self) {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// The redb-backed store.
pub struct RedbStore {
    path: std::path::PathBuf,
    db: Slot,
    segs: Arc<Segments>,
    inline: InlineReads,
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
    /// Changes nothing: commits the writes that wait.
    Sync,
}

struct Write {
    op: Op,
    /// Who waits for the answer; `None` for a write that may wait for a later commit
    /// (answered already).
    done: Option<oneshot::Sender<Result<bool, StoreError>>>,
}

impl Write {
    fn answer(self, result: Result<bool, StoreError>) {
        if let Some(done) = self.done {
            let _ = done.send(result);
        }
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) `dir/isr.redb` and the segments in `dir/bodies`.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_with(dir, SEGMENT_BYTES)
    }

    /// Like [`RedbStore::open`], with segments of at most `segment_bytes`.
    fn open_with(dir: &Path, segment_bytes: u64) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Failed(format!("cannot create data_dir {}: {e}", dir.display()))
        })?;
        let path = dir.join("isr.redb");
        let db: Slot = Arc::new(Db::new(open_db(&path)?));
        let (segs, sizes) = Segments::open(dir)?;
        let segs = Arc::new(segs);
        let app = Appender::new(segs.clone(), &sizes, segment_bytes)?;
        let mut writer = Writer {
            sizes: sizes
                .into_iter()
                .chain([(app.active(), app.len())])
                .collect(),
            app,
            segs: segs.clone(),
            slot: db.clone(),
            live: BTreeMap::new(),
            compact_after: None,
        };
        writer.load_live(&*current(&db)?)?;
        writer.delete_empty();
        let marks = Arc::new(super::marks::MarkLog::open(dir)?);
        let (tx, queue) = mpsc::channel();
        let (wdb, wpath) = (db.clone(), path.clone());
        let thread = std::thread::Builder::new()
            .name("isr-store-writer".into())
            .spawn(move || write_loop(&wdb, &wpath, &queue, writer))
            .map_err(err)?;
        Ok(RedbStore {
            path,
            db,
            segs,
            inline: InlineReads::new(),
            marks,
            writer: tx,
            thread: Some(thread),
        })
    }

    /// Reads `key` on the calling thread when [`InlineReads`] allows and the page cache
    /// holds it, else on the blocking pool, bodies read into memory there.
    fn get_with<'a>(&'a self, key: &'a str, bodies: Bodies) -> StoreFuture<'a, Option<Entry>> {
        if let Some(read) = self.read_inline(key, bodies) {
            return Box::pin(std::future::ready(read));
        }
        let (slot, segs, key) = (self.db.clone(), self.segs.clone(), key.to_string());
        blocking(move || Ok(read_entry(&slot, &segs, &key, Bodies::Wait)?.unwrap_or(None)))
    }

    /// Reads `key` on the calling thread when [`InlineReads`] allows and the page cache
    /// holds its bodies; `None` otherwise.
    fn read_inline(&self, key: &str, bodies: Bodies) -> Option<Result<Option<Entry>, StoreError>> {
        let started = self.inline.allowed()?;
        let read = read_entry(&self.db, &self.segs, key, bodies);
        if matches!(read, Ok(Err(Unread::WouldBlock))) {
            return None;
        }
        self.inline.took(started);
        Some(read.map(|r| r.unwrap_or(None)))
    }

    fn submit(&self, op: Op) -> StoreFuture<'_, bool> {
        let (done, rx) = oneshot::channel();
        let sent = self.writer.send(Write {
            op,
            done: Some(done),
        });
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
        .set_cache_size(16 << 20)
        .create(path)
        .map_err(|e| StoreError::Failed(format!("cannot open {}: {e}", path.display())))?;
    let mut txn = db.begin_write().map_err(err)?;
    txn.set_quick_repair(true);
    {
        txn.open_table(PAGES).map_err(err)?;
        txn.open_table(EXTENTS).map_err(err)?;
        txn.open_table(LIVE).map_err(err)?;
        txn.open_table(CHUNKS).map_err(err)?;
        txn.open_table(TAGS).map_err(err)?;
        txn.open_table(MARKS).map_err(err)?;
    }
    txn.commit().map_err(err)?;
    migrate_meta(&db, path)?;
    Ok(db)
}

/// Rows moved from `meta` to `pages` per transaction.
const MIGRATE_BATCH: usize = 20_000;

/// Moves the rows of `meta` (JSON metadata under string keys, as versions before `pages`
/// wrote them) into `pages`, then deletes `meta`: once per database, on the first open by
/// this version. Each batch moves atomically, so an interrupted migration resumes on the
/// next open. A row whose JSON does not decode is dropped (the page is fetched again).
/// Earlier versions do not read `pages`: they would see an empty store, and must not be
/// run on one this version has opened (README, "Durability").
fn migrate_meta(db: &Database, path: &Path) -> Result<(), StoreError> {
    let exists = match db.begin_read().map_err(err)?.open_table(META) {
        Ok(_) => true,
        Err(redb::TableError::TableDoesNotExist(_)) => false,
        Err(e) => return Err(err(e)),
    };
    if !exists {
        return Ok(());
    }
    let (started, mut moved, mut dropped) = (std::time::Instant::now(), 0u64, 0u64);
    loop {
        let mut txn = db.begin_write().map_err(err)?;
        txn.set_quick_repair(true);
        let done = {
            let mut meta = txn.open_table(META).map_err(err)?;
            let mut pages = txn.open_table(PAGES).map_err(err)?;
            let mut extents = txn.open_table(EXTENTS).map_err(err)?;
            let mut delta = Delta::new();
            let rows = meta
                .iter()
                .map_err(err)?
                .take(MIGRATE_BATCH)
                .map(|r| r.map(|(k, v)| (k.value().to_string(), v.value().to_vec())))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            for (key, row) in &rows {
                let (ext, json) = decode_row(row)?;
                // `taken` only after an earlier version wrote to a store this one had
                // converted: the row this version wrote stays. A row dropped leaves its
                // bodies as dead bytes for compaction.
                let taken = pages.get(key.as_bytes()).map_err(err)?.is_some();
                match Meta::from_bytes(json).ok().filter(|_| !taken) {
                    None => {
                        if let Some(ext) = ext {
                            release(&mut extents, &mut delta, &ext)?;
                        }
                        dropped += 1;
                    }
                    Some(m) => {
                        let binary = m.to_binary();
                        let row = match ext {
                            Some(ext) => encode_row(&ext, &binary),
                            // Bodies still in the chunk table: no extent, as before.
                            None => binary,
                        };
                        pages.insert(key.as_bytes(), row.as_slice()).map_err(err)?;
                        moved += 1;
                    }
                }
                meta.remove(key.as_str()).map_err(err)?;
            }
            let mut live = txn.open_table(LIVE).map_err(err)?;
            for (seg, d) in delta {
                let now = live.get(seg).map_err(err)?.map_or(0, |v| v.value());
                set_live(&mut live, seg, now.saturating_add_signed(d))?;
            }
            rows.len() < MIGRATE_BATCH
        };
        if done {
            txn.delete_table(META).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        if done {
            break;
        }
    }
    tracing::info!(path = %path.display(), pages = moved, dropped, took_ms = started.elapsed().as_millis() as u64, "moved the store's metadata to its binary format");
    Ok(())
}

/// The open database (an error while it is being reopened).
fn current(slot: &Db) -> Result<Arc<Database>, StoreError> {
    slot.open
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| {
            StoreError::Failed("the store is being reopened after a failed write".into())
        })
}

/// Closes and reopens the database after a failed write. Readers holding it are given a
/// moment to finish; if one does not, the old one is put back for the next try.
fn reopen(slot: &Slot, path: &Path) -> Result<(), StoreError> {
    let taken = slot.open.write().unwrap_or_else(|e| e.into_inner()).take();
    // Taken first: a lookup cannot open a new snapshot of the database being closed.
    slot.forget_snapshot();
    if let Some(mut old) = taken {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            match Arc::try_unwrap(old) {
                Ok(db) => {
                    drop(db);
                    break;
                }
                Err(still_shared) if std::time::Instant::now() > deadline => {
                    *slot.open.write().unwrap_or_else(|e| e.into_inner()) = Some(still_shared);
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
    *slot.open.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db));
    Ok(())
}

fn write_loop(slot: &Slot, path: &Path, queue: &mpsc::Receiver<Write>, mut writer: Writer) {
    // After a failed write: when, and why (writes fail at once until the next reopen).
    let mut failed: Option<(std::time::Instant, StoreError)> = None;
    // Writes that may wait for a later commit, and when the first of them came.
    let mut waiting: Vec<Write> = Vec::new();
    let mut waiting_since = std::time::Instant::now();
    loop {
        // The next write, or none: the waiting writes' time is up (`stop` false), or the
        // store is closing (`stop` true); either way, what waits is committed below.
        let due = (!waiting.is_empty()).then(|| waiting_since + super::SOON);
        let (mut batch, stop) = match due {
            Some(due) => {
                match queue.recv_timeout(due.saturating_duration_since(std::time::Instant::now())) {
                    Ok(w) => (vec![w], false),
                    Err(mpsc::RecvTimeoutError::Timeout) => (Vec::new(), false),
                    Err(mpsc::RecvTimeoutError::Disconnected) => (Vec::new(), true),
                }
            }
            // Compaction steps run only while no write is queued or waiting and the store
            // is writable.
            None if failed.is_none() && writer.wants_compaction() => match queue.try_recv() {
                Ok(w) => (vec![w], false),
                Err(mpsc::TryRecvError::Empty) => {
                    if let Err(e) = current(slot).and_then(|db| writer.compact_step(&db)) {
                        tracing::warn!(error = %e, "segment compaction failed; retrying in a minute");
                        writer.compact_after = Some(std::time::Instant::now() + COMPACT_RETRY);
                    }
                    continue;
                }
                Err(mpsc::TryRecvError::Disconnected) => (Vec::new(), true),
            },
            None => match queue.recv() {
                Ok(w) => (vec![w], false),
                Err(_) => (Vec::new(), true),
            },
        };
        while !stop && waiting.len() + batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let all_may_wait = !batch.is_empty() && batch.iter().all(|w| w.done.is_none());
        if !stop && all_may_wait && waiting.len() + batch.len() < MAX_BATCH {
            if waiting.is_empty() {
                waiting_since = std::time::Instant::now();
            }
            waiting.append(&mut batch);
            continue;
        }
        // The writes that waited are older: they go first.
        batch.splice(0..0, waiting.drain(..));
        if !batch.is_empty() {
            commit_batch(slot, path, &mut writer, &mut failed, batch);
        }
        if stop {
            return;
        }
    }
}

/// Applies `batch` in one transaction and answers its writes, reopening the store first
/// after a failure (at most every [`REOPEN_EVERY`]; until then, writes fail at once).
fn commit_batch(
    slot: &Slot,
    path: &Path,
    writer: &mut Writer,
    failed: &mut Option<(std::time::Instant, StoreError)>,
    batch: Vec<Write>,
) {
    if let Some((at, e)) = &failed {
        if at.elapsed() < REOPEN_EVERY {
            // Until the next reopen, writes fail at once (and do not delay it).
            for w in batch {
                w.answer(Err(e.clone()));
            }
            return;
        }
    }
    let result = match &failed {
        Some(_) => reopen(slot, path).and_then(|()| {
            let db = current(slot)?;
            writer.load_live(&db)?;
            writer.apply(&db, &batch)
        }),
        None => current(slot).and_then(|db| writer.apply(&db, &batch)),
    };
    match result {
        Ok(results) => {
            if failed.take().is_some() {
                tracing::warn!(path = %path.display(), "the store is writable again");
            }
            for (w, r) in batch.into_iter().zip(results) {
                w.answer(Ok(r));
            }
        }
        Err(e) => {
            // Not logged here: the engine logs store errors once a minute, with a count.
            let e = match &failed {
                Some((_, first)) => first.clone(),
                None => e,
            };
            *failed = Some((std::time::Instant::now(), e.clone()));
            for w in batch {
                w.answer(Err(e.clone()));
            }
        }
    }
}

/// How long compaction waits after a failed step.
const COMPACT_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// Changes to segments' live bytes made by one transaction, applied to [`Writer::live`]
/// once it commits.
type Delta = BTreeMap<u32, i64>;

/// The writer thread's state besides the database: the segment it appends to, and the
/// size and live bytes of every segment (as the `segment_live` table has them).
struct Writer {
    segs: Arc<Segments>,
    /// Told of every commit, to drop the lookups' snapshot.
    slot: Slot,
    app: Appender,
    sizes: BTreeMap<u32, u64>,
    live: BTreeMap<u32, u64>,
    /// After a failed compaction step: not before then.
    compact_after: Option<std::time::Instant>,
}

impl Writer {
    /// Reads the live bytes of every segment from the database.
    fn load_live(&mut self, db: &Database) -> Result<(), StoreError> {
        let txn = db.begin_read().map_err(err)?;
        let table = txn.open_table(LIVE).map_err(err)?;
        self.live.clear();
        for row in table.iter().map_err(err)? {
            let (seg, bytes) = row.map_err(err)?;
            self.live.insert(seg.value(), bytes.value());
        }
        Ok(())
    }

    /// Appends an entry's bodies, keeping the segment sizes current.
    fn append(&mut self, bodies: [&[u8]; 3]) -> Result<Extent, StoreError> {
        let ext = self.app.append(bodies)?;
        self.sizes.insert(self.app.active(), self.app.len());
        Ok(ext)
    }

    /// Applies a batch in one transaction; returns per write whether it changed anything.
    fn apply(&mut self, db: &Database, batch: &[Write]) -> Result<Vec<bool>, StoreError> {
        let mut txn = db.begin_write().map_err(err)?;
        txn.set_quick_repair(true);
        let mut results = Vec::with_capacity(batch.len());
        let mut delta = Delta::new();
        {
            let mut meta = txn.open_table(PAGES).map_err(err)?;
            let mut extents = txn.open_table(EXTENTS).map_err(err)?;
            let mut chunks = txn.open_table(CHUNKS).map_err(err)?;
            let mut tags = txn.open_table(TAGS).map_err(err)?;
            for w in batch {
                let Op::Put {
                    key,
                    entry,
                    same_bodies,
                } = &w.op
                else {
                    results.push(true);
                    continue;
                };
                let k = key.as_str();
                // `legacy`: stored by an earlier version, its bodies in the chunk table.
                let (old_ext, old, legacy) = match meta.get(k.as_bytes()).map_err(err)? {
                    Some(row) => {
                        let (ext, m) = decode_row(row.value())?;
                        (ext, Meta::from_binary(m), ext.is_none())
                    }
                    None => (None, None, false),
                };
                if old
                    .as_ref()
                    .is_some_and(|o| o.generated > entry.meta.generated)
                {
                    results.push(false);
                    continue;
                }
                // Skip rewriting bodies only when the stored ones are still those the
                // engine compared byte for byte (same hash and variants), and are in a
                // segment (a page stored by an earlier version moves to one now).
                let kept = old_ext.filter(|_| {
                    *same_bodies
                        && old.as_ref().is_some_and(|o| {
                            o.hash == entry.meta.hash
                                && o.br == entry.meta.br
                                && o.gzip == entry.meta.gzip
                        })
                });
                // Only the tags that changed touch the index (a regeneration mostly keeps
                // them all, and an unchanged row would still be rewritten).
                let old_tags = old.as_ref().map_or(&[][..], |o| &o.tags[..]);
                for t in old_tags.iter().filter(|t| !entry.meta.tags.contains(t)) {
                    tags.remove((t.as_str(), k)).map_err(err)?;
                }
                for t in entry.meta.tags.iter().filter(|t| !old_tags.contains(t)) {
                    tags.insert((t.as_str(), k), ()).map_err(err)?;
                }
                let ext = match kept {
                    Some(ext) => ext,
                    None => {
                        match old_ext {
                            Some(o) => release(&mut extents, &mut delta, &o)?,
                            None if legacy => {
                                for e in Encoding::ALL {
                                    let range = (k, e.code(), 0)..=(k, e.code(), u32::MAX);
                                    chunks.retain_in(range, |_, _| false).map_err(err)?;
                                }
                            }
                            None => {}
                        }
                        let (i, b, g) = (entry.identity(), entry.br(), entry.gzip());
                        let none = Bytes::new();
                        let ext = self.append([
                            &i,
                            b.as_ref().unwrap_or(&none),
                            g.as_ref().unwrap_or(&none),
                        ])?;
                        claim(&mut extents, &mut delta, &ext, k)?;
                        ext
                    }
                };
                meta.insert(
                    k.as_bytes(),
                    encode_row(&ext, &entry.meta.to_binary()).as_slice(),
                )
                .map_err(err)?;
                results.push(true);
            }
        }
        self.commit(txn, delta)?;
        Ok(results)
    }

    /// Writes the live bytes `delta` changes, makes the appended bodies durable, then
    /// commits; deletes the segments left empty.
    fn commit(&mut self, txn: redb::WriteTransaction, delta: Delta) -> Result<(), StoreError> {
        let live_after = |seg: &u32, d: &i64| {
            let now = self.live.get(seg).copied().unwrap_or(0);
            (*seg, now.saturating_add_signed(*d))
        };
        let changed: Vec<(u32, u64)> = delta.iter().map(|(s, d)| live_after(s, d)).collect();
        {
            let mut live = txn.open_table(LIVE).map_err(err)?;
            for &(seg, bytes) in &changed {
                set_live(&mut live, seg, bytes)?;
            }
        }
        self.app.sync()?;
        txn.commit().map_err(err)?;
        // Before the segments emptied by this commit are deleted: a lookup that finds its
        // extent gone ([`Unread::Moved`]) then reads again from a newer snapshot.
        self.slot.forget_snapshot();
        for (seg, bytes) in changed {
            self.live.insert(seg, bytes);
        }
        self.delete_empty();
        Ok(())
    }

    /// Deletes every segment but the active one that holds no live bytes.
    fn delete_empty(&mut self) {
        let active = self.app.active();
        let empty: Vec<u32> = (self.sizes.keys())
            .filter(|&&s| s != active && self.live.get(&s).is_none_or(|&l| l == 0))
            .copied()
            .collect();
        for seg in empty {
            match self.segs.delete(seg) {
                Ok(()) => {
                    self.sizes.remove(&seg);
                    self.live.remove(&seg);
                }
                Err(e) => tracing::warn!(error = %e, "cannot delete an empty segment"),
            }
        }
    }

    /// The sealed segment most worth compacting: the one with the smallest share of live
    /// bytes, when that share is under half.
    fn candidate(&self) -> Option<u32> {
        let active = self.app.active();
        let share = |seg: u32, size: u64| {
            let live = self.live.get(&seg).copied().unwrap_or(0);
            (seg != active && live * 2 < size).then_some((live as f64 / size as f64, seg))
        };
        let best = self.sizes.iter().filter_map(|(&s, &size)| share(s, size));
        best.min_by(|a, b| a.0.total_cmp(&b.0)).map(|(_, seg)| seg)
    }

    fn wants_compaction(&self) -> bool {
        self.compact_after
            .is_none_or(|t| std::time::Instant::now() >= t)
            && self.candidate().is_some()
    }

    /// Moves up to [`COMPACT_STEP`] bytes of the extents still in use in the best
    /// candidate segment to the active one, in one transaction.
    fn compact_step(&mut self, db: &Database) -> Result<(), StoreError> {
        self.compact_after = None;
        let Some(seg) = self.candidate() else {
            return Ok(());
        };
        let mut txn = db.begin_write().map_err(err)?;
        txn.set_quick_repair(true);
        let mut delta = Delta::new();
        {
            let mut meta = txn.open_table(PAGES).map_err(err)?;
            let mut extents = txn.open_table(EXTENTS).map_err(err)?;
            let rows = extents
                .range((seg, 0)..=(seg, u64::MAX))
                .map_err(err)?
                .take(256)
                .map(|r| r.map(|(at, key)| (at.value().1, key.value().to_string())))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            if rows.is_empty() {
                // Nothing refers to it any more: whatever the count said, it is empty.
                let live = self.live.get(&seg).copied().unwrap_or(0);
                delta.insert(seg, -(live as i64));
            }
            let mut moved = 0;
            for (off, key) in rows {
                if moved >= COMPACT_STEP {
                    break;
                }
                let row = meta
                    .get(key.as_bytes())
                    .map_err(err)?
                    .map(|r| r.value().to_vec());
                let found = match &row {
                    Some(row) => decode_row(row)?,
                    None => (None, &[][..]),
                };
                let old = match found.0 {
                    Some(e) if e.seg == seg && e.off == off => e,
                    // A row left behind (it should not happen): drop it.
                    _ => {
                        extents.remove((seg, off)).map_err(err)?;
                        continue;
                    }
                };
                let [i, b, g] = self.segs.read(&old, true)?.map_err(|_| {
                    StoreError::Failed(format!("segment {seg} went away while compacted"))
                })?;
                let new = self.append([&i, &b, &g])?;
                release(&mut extents, &mut delta, &old)?;
                claim(&mut extents, &mut delta, &new, &key)?;
                meta.insert(key.as_bytes(), encode_row(&new, found.1).as_slice())
                    .map_err(err)?;
                moved += old.len();
            }
        }
        self.commit(txn, delta)
    }
}

/// Records that segment `seg` holds `bytes` live bytes (no row for none).
fn set_live(live: &mut redb::Table<u32, u64>, seg: u32, bytes: u64) -> Result<(), StoreError> {
    if bytes == 0 {
        live.remove(seg).map_err(err)?;
    } else {
        live.insert(seg, bytes).map_err(err)?;
    }
    Ok(())
}

/// Forgets `ext` (its entry was replaced or moved): its bytes are dead now.
fn release(
    extents: &mut redb::Table<(u32, u64), &str>,
    delta: &mut Delta,
    ext: &Extent,
) -> Result<(), StoreError> {
    if ext.len() > 0 {
        extents.remove((ext.seg, ext.off)).map_err(err)?;
        *delta.entry(ext.seg).or_default() -= ext.len() as i64;
    }
    Ok(())
}

/// Records that `ext` holds the bodies of `key`.
fn claim(
    extents: &mut redb::Table<(u32, u64), &str>,
    delta: &mut Delta,
    ext: &Extent,
    key: &str,
) -> Result<(), StoreError> {
    if ext.len() > 0 {
        extents.insert((ext.seg, ext.off), key).map_err(err)?;
        *delta.entry(ext.seg).or_default() += ext.len() as i64;
    }
    Ok(())
}

/// How [`read_entry`] gets an entry's bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bodies {
    /// Read into memory, waiting for the disk if need be.
    Wait,
    /// Read into memory from the page cache only, else [`Unread::WouldBlock`].
    NoWait,
    /// Large bodies as references into their segment (from the page cache only, else
    /// [`Unread::WouldBlock`]); small ones as [`Bodies::NoWait`].
    Refer,
}

/// Reads the entry stored under `key`, its bodies as `bodies` says: `Ok(Err(WouldBlock))`
/// when they are not in the page cache and `bodies` is not [`Bodies::Wait`].
fn read_entry(
    slot: &Slot,
    segs: &Segments,
    key: &str,
    bodies: Bodies,
) -> Result<Result<Option<Entry>, Unread>, StoreError> {
    // Another try only when the extent was in a segment compacted away since the
    // snapshot: the next snapshot has where it moved.
    for _ in 0..3 {
        let snap = slot.snapshot()?;
        let Some(row) = snap.pages.get(key.as_bytes()).map_err(err)? else {
            return Ok(Ok(None));
        };
        let (ext, m) = decode_page(key, row.value())?;
        let large = |ext: &Extent| ext.lens[0] as usize >= REFER_MIN_BYTES;
        if let Some(ext) = ext.filter(|e| bodies == Bodies::Refer && large(e)) {
            let [identity, br, gzip] = match segs.refer(&ext) {
                Ok(refs) => refs.map(Body::File),
                Err(Unread::Moved) => continue,
                Err(Unread::WouldBlock) => return Ok(Err(Unread::WouldBlock)),
            };
            let (br, gzip) = (m.br.then_some(br), m.gzip.then_some(gzip));
            return Ok(Ok(Some(Entry::with_bodies(m, identity, br, gzip))));
        }
        let [identity, br, gzip] = match ext {
            Some(ext) => match segs.read(&ext, bodies == Bodies::Wait)? {
                Ok(bodies) => bodies,
                Err(Unread::Moved) => continue,
                Err(Unread::WouldBlock) => return Ok(Err(Unread::WouldBlock)),
            },
            None => read_chunks(&snap.txn, key, &m)?,
        };
        let (br, gzip) = (m.br.then_some(br), m.gzip.then_some(gzip));
        return Ok(Ok(Some(Entry::new(m, identity, br, gzip))));
    }
    Err(StoreError::Failed(format!(
        "the bodies of {key} kept moving while read"
    )))
}

/// Whether page reads run on the calling thread. They do while the store's pages come from
/// the OS page cache: a read then costs less than handing it to another thread, and
/// bodies are read with `RWF_NOWAIT`, so a body not in the page cache goes to the
/// blocking pool anyway. The metadata lookup cannot be asked not to wait, so reads are
/// timed: [`SLOW_STREAK`] inline reads in a row slower than [`SLOW_READ`] mean the
/// metadata comes from the disk, and send the reads of the next [`BLOCKING_FOR`] to the
/// blocking pool, where disk reads wait side by side without stalling the threads that
/// serve hits. (One slow read alone is more often the thread being preempted.)
struct InlineReads {
    base: std::time::Instant,
    /// Nanoseconds after `base` before which reads go to the blocking pool.
    not_before: AtomicU64,
    /// Slow inline reads in a row.
    slow: AtomicU64,
}

/// An inline read slower than this may have waited for the disk.
const SLOW_READ: std::time::Duration = std::time::Duration::from_millis(1);
/// Slow inline reads in a row that send reads to the blocking pool.
const SLOW_STREAK: u64 = 3;
/// How long reads go to the blocking pool then. Short, so a streak of preemptions costs
/// little; on a store that does wait for the disk, a few reads a second still wait
/// inline.
const BLOCKING_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl InlineReads {
    fn new() -> InlineReads {
        InlineReads {
            base: std::time::Instant::now(),
            not_before: AtomicU64::new(0),
            slow: AtomicU64::new(0),
        }
    }

    /// When a read may run inline: the time it starts.
    fn allowed(&self) -> Option<std::time::Instant> {
        let now = std::time::Instant::now();
        let since = now.duration_since(self.base).as_nanos() as u64;
        (since >= self.not_before.load(Ordering::Relaxed)).then_some(now)
    }

    /// Records how long an inline read that started at `started` took.
    fn took(&self, started: std::time::Instant) {
        if started.elapsed() <= SLOW_READ {
            self.slow.store(0, Ordering::Relaxed);
        } else if self.slow.fetch_add(1, Ordering::Relaxed) + 1 >= SLOW_STREAK {
            self.slow.store(0, Ordering::Relaxed);
            let until = started.duration_since(self.base) + BLOCKING_FOR;
            self.not_before
                .store(until.as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

/// The extent and metadata in the `pages` row of `key`.
fn decode_page(key: &str, row: &[u8]) -> Result<(Option<Extent>, Meta), StoreError> {
    let (ext, m) = decode_row(row)?;
    Ok((ext, Meta::from_binary(m).ok_or_else(|| corrupt(key))?))
}

/// The metadata in the `pages` row of `key`.
fn decode_meta(key: &str, row: &[u8]) -> Result<Meta, StoreError> {
    decode_page(key, row).map(|(_, m)| m)
}

/// A `pages` key as the string it was written from.
fn key_str(k: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(k).map_err(|_| StoreError::Failed("a stored key is not UTF-8".into()))
}

fn corrupt(key: &str) -> StoreError {
    StoreError::Failed(format!("the stored metadata of {key} is corrupt"))
}

/// The bodies of a page an earlier version stored, in the chunk table.
fn read_chunks(txn: &redb::ReadTransaction, key: &str, m: &Meta) -> Result<[Bytes; 3], StoreError> {
    let chunks = txn.open_table(CHUNKS).map_err(err)?;
    let load = |e: Encoding, stored: bool| -> Result<Bytes, StoreError> {
        if !stored {
            return Ok(Bytes::new());
        }
        let pieces = chunks
            .range((key, e.code(), 0)..=(key, e.code(), u32::MAX))
            .map_err(err)?
            .map(|row| row.map(|(_, piece)| piece).map_err(err))
            .collect::<Result<Vec<_>, _>>()?;
        // Exactly sized: the hot tier counts these bytes against its budget.
        let mut out = Vec::with_capacity(pieces.iter().map(|p| p.value().len()).sum());
        for p in &pieces {
            out.extend_from_slice(p.value());
        }
        Ok(Bytes::from(out))
    };
    Ok([
        load(Encoding::Identity, true)?,
        load(Encoding::Br, m.br)?,
        load(Encoding::Gzip, m.gzip)?,
    ])
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
        self.get_with(key, Bodies::NoWait)
    }

    fn get_to_send<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Entry>> {
        self.get_with(key, Bodies::Refer)
    }

    fn get_now(&self, key: &str) -> Option<Result<Option<Entry>, StoreError>> {
        self.read_inline(key, Bodies::Refer)
    }

    fn get_meta<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Meta>> {
        let (slot, key) = (self.db.clone(), key.to_string());
        blocking(
            move || match slot.snapshot()?.pages.get(key.as_bytes()).map_err(err)? {
                Some(row) => decode_meta(&key, row.value()).map(Some),
                None => Ok(None),
            },
        )
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

    fn put_same_bodies_soon<'a>(
        &'a self,
        key: &'a str,
        entry: Arc<Entry>,
    ) -> StoreFuture<'a, bool> {
        let op = Op::Put {
            key: key.to_string(),
            entry,
            same_bodies: true,
        };
        let sent = self.writer.send(Write { op, done: None }).is_ok();
        Box::pin(std::future::ready(match sent {
            true => Ok(true),
            false => Err(StoreError::Failed("the store writer has stopped".into())),
        }))
    }

    fn sync(&self) -> StoreFuture<'_, ()> {
        let synced = self.submit(Op::Sync);
        Box::pin(async move { synced.await.map(|_| ()) })
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
            let meta = txn.open_table(PAGES).map_err(err)?;
            let mut keys = Vec::new();
            for row in meta.range(prefix.as_bytes()..).map_err(err)? {
                let (k, _) = row.map_err(err)?;
                let k = key_str(k.value())?;
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
            let meta = txn.open_table(PAGES).map_err(err)?;
            let start = super::list_start(prefix, after).map(str::as_bytes);
            let mut out = Vec::new();
            for row in meta
                .range::<&[u8]>((start, Bound::Unbounded))
                .map_err(err)?
            {
                let (k, v) = row.map_err(err)?;
                let k = key_str(k.value())?;
                if !k.starts_with(prefix) || out.len() == limit {
                    break;
                }
                out.push((k.to_string(), decode_meta(k, v.value())?));
            }
            Ok(out)
        });
        Box::pin(std::future::ready(r))
    }

    fn stats(&self) -> StoreFuture<'_, StoreStats> {
        let r = self.read(|txn| {
            let meta = txn.open_table(PAGES).map_err(err)?;
            Ok(StoreStats {
                entries: meta.len().map_err(err)?,
                bytes: std::fs::metadata(&self.path).map_or(0, |m| m.len()) + self.segs.bytes(),
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
    async fn bodies_of_every_size_round_trip_and_shrink_cleanly() {
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
        let smaller = &big[..8007];
        s.put("/big", entry(smaller, 2, &[])).await.unwrap();
        assert_eq!(
            s.get("/big").await.unwrap().unwrap().identity(),
            smaller.as_bytes()
        );
        s.put("/big", entry("", 3, &[])).await.unwrap();
        assert!(s.get("/big").await.unwrap().unwrap().identity().is_empty());
        let zipped = Arc::new(Entry::new(
            Meta {
                br: true,
                gzip: true,
                ..entry("", 4, &[]).meta.clone()
            },
            Bytes::from_static(b"plain"),
            Some(Bytes::from_static(b"brotli")),
            Some(Bytes::from_static(b"gzip")),
        ));
        s.put("/z", zipped).await.unwrap();
        let z = s.get("/z").await.unwrap().unwrap();
        assert_eq!(
            (
                &z.identity()[..],
                &z.br().unwrap()[..],
                &z.gzip().unwrap()[..]
            ),
            (&b"plain"[..], &b"brotli"[..], &b"gzip"[..])
        );
    }

    /// Writes `/legacy` as a version before segments did: JSON metadata alone in `meta`,
    /// the body in 8,000-byte chunks.
    fn write_legacy(dir: &Path, body: &[u8], generated: u64, tags: &[&str]) {
        let db = open_db(&dir.join("isr.redb")).unwrap();
        let e = entry(std::str::from_utf8(body).unwrap(), generated, tags);
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("/legacy", e.meta.to_bytes().as_slice())
                .unwrap();
            let mut chunks = txn.open_table(CHUNKS).unwrap();
            for (n, piece) in body.chunks(8000).enumerate() {
                chunks.insert(("/legacy", 0, n as u32), piece).unwrap();
            }
            let mut t = txn.open_table(TAGS).unwrap();
            for tag in tags {
                t.insert((*tag, "/legacy"), ()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn pages_stored_by_earlier_versions_are_read_and_move_to_segments_when_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let body = "x".repeat(20_000);
        write_legacy(dir.path(), body.as_bytes(), 10, &["t"]);
        let s = RedbStore::open(dir.path()).unwrap();
        let e = s.get("/legacy").await.unwrap().unwrap();
        assert_eq!(
            (e.identity(), e.meta.generated),
            (Bytes::from(body.clone()), 10)
        );
        assert_eq!(s.get_meta("/legacy").await.unwrap().unwrap().generated, 10);
        assert_eq!(s.list("/", None, 10).await.unwrap()[0].1.generated, 10);
        // A metadata-only regeneration still moves the bodies it was handed.
        assert!(s
            .put_same_bodies("/legacy", entry(&body, 20, &["t"]))
            .await
            .unwrap());
        let e = s.get("/legacy").await.unwrap().unwrap();
        assert_eq!((e.identity(), e.meta.generated), (Bytes::from(body), 20));
        assert_eq!(s.keys_with_tag("t").await.unwrap(), ["/legacy"]);
        let txn = current(&s.db).unwrap().begin_read().unwrap();
        assert!(txn.open_table(CHUNKS).unwrap().is_empty().unwrap());
    }

    /// Turns every row of `pages` back into a row of `meta` as versions before `pages`
    /// wrote it (string key, JSON metadata), plus one row whose JSON is corrupt.
    fn write_as_earlier_version(dir: &Path) {
        let db = Database::create(dir.join("isr.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut pages = txn.open_table(PAGES).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            let rows: Vec<(Vec<u8>, Vec<u8>)> = pages
                .iter()
                .unwrap()
                .map(|r| {
                    r.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                        .unwrap()
                })
                .collect();
            for (k, row) in rows {
                let (ext, binary) = decode_row(&row).unwrap();
                let json = Meta::from_binary(binary).unwrap().to_bytes();
                let key = std::str::from_utf8(&k).unwrap();
                meta.insert(key, encode_row(&ext.unwrap(), &json).as_slice())
                    .unwrap();
                pages.remove(k.as_slice()).unwrap();
            }
            meta.insert("/torn", &b"{\"status\":2"[..]).unwrap();
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn metadata_of_earlier_versions_moves_to_the_binary_format_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path()).unwrap();
            for i in 0..50 {
                let body = format!("page {i} ").repeat(3000);
                s.put(&format!("/p/{i}"), entry(&body, i, &["all"]))
                    .await
                    .unwrap();
            }
        }
        write_as_earlier_version(dir.path());
        let s = RedbStore::open(dir.path()).unwrap();
        for i in [0, 17, 49] {
            let e = s.get(&format!("/p/{i}")).await.unwrap().unwrap();
            assert_eq!(e.identity(), Bytes::from(format!("page {i} ").repeat(3000)));
            assert_eq!(e.meta.generated, i);
        }
        assert_eq!(
            s.get("/torn").await.unwrap().map(|e| e.meta),
            None,
            "dropped"
        );
        assert_eq!(s.stats().await.unwrap().entries, 50);
        assert_eq!(s.keys_with_tag("all").await.unwrap().len(), 50);
        let listed = s.list("/p/", Some("/p/3"), 3).await.unwrap();
        let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["/p/30", "/p/31", "/p/32"]);
        let txn = current(&s.db).unwrap().begin_read().unwrap();
        assert!(
            matches!(
                txn.open_table(META),
                Err(redb::TableError::TableDoesNotExist(_))
            ),
            "the old table is gone"
        );
        drop((txn, s));

        // An earlier version run on the converted store wrote /p/0 again, in `meta`: the
        // row this version wrote stays.
        let db = Database::create(dir.path().join("isr.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let newer = entry("from an earlier version", 999, &[]).meta.to_bytes();
        txn.open_table(META)
            .unwrap()
            .insert("/p/0", newer.as_slice())
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.get("/p/0").await.unwrap().unwrap().meta.generated, 0);
        assert_eq!(s.stats().await.unwrap().entries, 50);
    }

    /// The segment files in `dir`, by number.
    fn segment_files(dir: &Path) -> Vec<u32> {
        let mut ids: Vec<u32> = std::fs::read_dir(dir.join("bodies"))
            .unwrap()
            .map(|d| {
                d.unwrap().file_name().to_str().unwrap()[..8]
                    .parse()
                    .unwrap()
            })
            .collect();
        ids.sort();
        ids
    }

    /// Waits (a bounded number of times) until the writer has compacted everything it can.
    async fn until_compacted(s: &RedbStore) {
        for _ in 0..500 {
            // A write is queued behind any compaction step in progress.
            s.put_mark("t:sync", Mark::at(1, false)).await.unwrap();
            if s.put("/sync", entry("", 0, &[])).await.is_ok() {
                let txn = current(&s.db).unwrap().begin_read().unwrap();
                let live: u64 = txn
                    .open_table(LIVE)
                    .unwrap()
                    .iter()
                    .unwrap()
                    .map(|r| r.unwrap().1.value())
                    .sum();
                if s.segs.bytes() <= 2 * live + 2 * 4096 {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("compaction did not finish");
    }

    #[tokio::test]
    async fn a_lookup_sees_every_write_that_returned_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        for v in 1..=5u64 {
            let body = format!("version {v}");
            s.put("/p", entry(&body, v, &[])).await.unwrap();
            // Each lookup shares the snapshot the last one opened, until the next commit.
            for _ in 0..2 {
                let now = s.get_now("/p").expect("page cache").unwrap().unwrap();
                assert_eq!(now.identity(), Bytes::from(body.clone()));
                let read = s.get("/p").await.unwrap().unwrap();
                assert_eq!(read.identity(), Bytes::from(body.clone()));
            }
        }
        assert!(s.get_now("/new").unwrap().unwrap().is_none());
        s.put("/new", entry("new", 1, &[])).await.unwrap();
        assert!(s.get_now("/new").unwrap().unwrap().is_some());
    }

    #[tokio::test]
    async fn rewritten_pages_leave_dead_segments_that_compaction_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open_with(dir.path(), 4096).unwrap();
        let body = |k: usize, v: u64| format!("{k:04}:{v:04}:").repeat(100);
        let latest = |k: usize| if k.is_multiple_of(4) { 1 } else { 5 };
        // Four 1,000-byte pages per segment; then three of every four are rewritten, so the
        // first ten segments are left a quarter full (no segment ever empties by itself).
        for v in 1..=5u64 {
            for k in (0..40).filter(|k| v <= latest(*k)) {
                s.put(&format!("/p{k}"), entry(&body(k, v), v, &["all"]))
                    .await
                    .unwrap();
            }
        }
        let read_all = || async {
            for k in 0..40 {
                let e = s.get(&format!("/p{k}")).await.unwrap().unwrap();
                assert_eq!(e.identity(), Bytes::from(body(k, latest(k))));
            }
        };
        // Read before and after compaction moves them: the lookups' shared snapshot from
        // before it must not outlive the segments it refers to.
        read_all().await;
        until_compacted(&s).await;
        read_all().await;
        // 40 live pages of 1,000 bytes: about ten 4 KiB segments, not the forty written.
        let files = segment_files(dir.path());
        assert!(files.len() <= 14, "{files:?}");
        assert!(
            !files.contains(&1),
            "the first segments were compacted: {files:?}"
        );
        drop(s);
        let s = RedbStore::open_with(dir.path(), 4096).unwrap();
        for k in 0..40 {
            let e = s.get(&format!("/p{k}")).await.unwrap().unwrap();
            assert_eq!(e.identity(), Bytes::from(body(k, latest(k))));
        }
        assert_eq!(s.keys_with_tag("all").await.unwrap().len(), 40);
    }

    #[tokio::test]
    async fn large_bodies_to_send_are_references_into_segments_read_now_or_later_that_outlive_compaction(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open_with(dir.path(), 64 * 1024).unwrap();
        let zipped = |generated: u64, fill: u8| {
            let big = |n: usize, c: u8| Bytes::from(vec![c; n]);
            Arc::new(Entry::new(
                Meta {
                    br: true,
                    gzip: true,
                    ..entry("", generated, &[]).meta.clone()
                },
                big(20_000, fill),
                Some(big(17_000, fill + 1)),
                Some(big(16_500, fill + 2)),
            ))
        };
        s.put("/first", entry("a small page before it", 1, &[]))
            .await
            .unwrap();
        s.put("/big", zipped(1, b'a')).await.unwrap();
        s.put("/small", entry("small", 1, &[])).await.unwrap();
        let sent = s.get_to_send("/big").await.unwrap().unwrap();
        let in_file = |b: &Body| matches!(b, Body::File(_));
        let variants = [None, Some(&b"br"[..]), Some(&b"gzip"[..])];
        for (accept, fill) in variants.into_iter().zip(b'a'..) {
            let body = sent.body_for_bytes(accept).1;
            assert!(in_file(body), "{accept:?}: a reference into the segment");
            assert_eq!(body.bytes(), vec![fill; body.len()]);
        }
        let small = s.get_to_send("/small").await.unwrap().unwrap();
        assert!(
            !in_file(small.body_for_bytes(None).1),
            "small bodies are read"
        );
        assert_eq!(&small.identity()[..], b"small");
        assert!(!in_file(
            s.get("/big").await.unwrap().unwrap().body_for_bytes(None).1
        ));
        // Read on this thread (the page cache holds it all): as get_to_send, and on the
        // heap once the memory tier keeps it.
        let now = s.get_now("/big").expect("read without waiting").unwrap();
        let now = now.unwrap();
        assert!(in_file(now.body_for_bytes(None).1));
        let kept = now.on_heap();
        for (accept, fill) in variants.into_iter().zip(b'a'..) {
            let body = kept.body_for_bytes(accept).1;
            assert!(!in_file(body), "{accept:?}: on the heap");
            assert_eq!(body.bytes(), vec![fill; body.len()]);
        }
        assert_eq!(
            &s.get_now("/small").unwrap().unwrap().unwrap().identity()[..],
            b"small"
        );
        assert!(s.get_now("/none").unwrap().unwrap().is_none());

        // Rewritten until the first segment is compacted away: the reference still reads
        // the bytes it was given.
        for v in 2..10 {
            s.put("/big", zipped(v, b'k')).await.unwrap();
        }
        until_compacted(&s).await;
        assert!(!segment_files(dir.path()).contains(&1));
        assert_eq!(sent.identity(), vec![b'a'; 20_000]);
        assert_eq!(sent.gzip().unwrap(), vec![b'c'; 16_500]);
        let now = s.get_to_send("/big").await.unwrap().unwrap();
        assert_eq!(now.br().unwrap(), vec![b'l'; 17_000]);
    }

    #[test]
    fn only_a_streak_of_slow_inline_reads_sends_reads_to_the_blocking_pool() {
        let reads = InlineReads::new();
        let slow = || std::time::Instant::now() - 2 * SLOW_READ;
        let fast = std::time::Instant::now;
        for _ in 0..10 {
            reads.took(slow());
            reads.took(slow());
            reads.took(fast());
        }
        assert!(
            reads.allowed().is_some(),
            "preempted now and then: still inline"
        );
        for _ in 0..SLOW_STREAK {
            assert!(reads.allowed().is_some());
            reads.took(slow());
        }
        assert!(
            reads.allowed().is_none(),
            "waiting for the disk: blocking pool"
        );
    }

    #[tokio::test]
    async fn bytes_a_crash_left_after_the_last_commit_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path()).unwrap();
            s.put("/a", entry("first", 1, &[])).await.unwrap();
        }
        // A crash after appending a body but before its commit: bytes nothing points to.
        let seg = dir.path().join("bodies").join("00000001.seg");
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        std::io::Write::write_all(&mut f, b"torn body with no commit").unwrap();
        drop(f);
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(
            &s.get("/a").await.unwrap().unwrap().identity()[..],
            b"first"
        );
        s.put("/b", entry("second", 1, &[])).await.unwrap();
        assert_eq!(
            &s.get("/b").await.unwrap().unwrap().identity()[..],
            b"second"
        );
        assert_eq!(
            &s.get("/a").await.unwrap().unwrap().identity()[..],
            b"first"
        );
    }

    #[tokio::test]
    async fn rewrites_that_may_wait_commit_with_the_next_write_on_their_own_or_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let generated = async |s: &RedbStore, k| s.get_meta(k).await.unwrap().unwrap().generated;
        {
            let s = RedbStore::open(dir.path()).unwrap();
            for k in ["/a", "/b", "/c"] {
                s.put(k, entry("same", 10, &["t"])).await.unwrap();
            }
            let started = std::time::Instant::now();
            assert!(s
                .put_same_bodies_soon("/a", entry("same", 20, &["t"]))
                .await
                .unwrap());
            let before = generated(&s, "/a").await;
            if started.elapsed() < super::super::SOON {
                assert_eq!(before, 10, "answered before it is committed");
            }
            // A write that may not wait commits the waiting one with it, the waiting first
            // (older): a newer page is never overwritten by it.
            s.put_same_bodies_soon("/b", entry("same", 20, &["t"]))
                .await
                .unwrap();
            s.put("/b", entry("changed", 30, &["t"])).await.unwrap();
            assert_eq!(generated(&s, "/a").await, 20);
            let b = s.get("/b").await.unwrap().unwrap();
            assert_eq!((&b.identity()[..], b.meta.generated), (&b"changed"[..], 30));
            // Alone, it is committed within `SOON`.
            s.put_same_bodies_soon("/c", entry("same", 20, &["t"]))
                .await
                .unwrap();
            let deadline = std::time::Instant::now() + 5 * super::super::SOON;
            while generated(&s, "/c").await != 20 {
                assert!(std::time::Instant::now() < deadline, "committed on its own");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            s.put_same_bodies_soon("/a", entry("same", 40, &["t"]))
                .await
                .unwrap();
        }
        // Closing the store commits what waits.
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(generated(&s, "/a").await, 40);
        assert_eq!(s.keys_with_tag("t").await.unwrap(), ["/a", "/b", "/c"]);
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
        /// fetches, metadata-only rewrites) and reopens, with segments small enough that
        /// compaction runs all along, both adapters hold the same bodies and the tag index
        /// lists exactly the keys whose stored entry carries the tag.
        #[test]
        fn the_tag_index_agrees_with_the_entries(
            ops in proptest::collection::vec((0usize..6, 0u64..40, proptest::collection::vec(0usize..4, 0..3), proptest::bool::ANY, proptest::bool::ANY), 1..40)
        ) {
            const TAGS: [&str; 4] = ["a", "b", "c", "d"];
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let mut redb = RedbStore::open_with(dir.path(), 200).unwrap();
                let memory = crate::store::MemoryStore::default();
                for (k, generated, tags, same_bodies, reopen) in &ops {
                    let key = format!("/k{k}");
                    let tags: Vec<&str> = tags.iter().map(|t| TAGS[*t]).collect();
                    let body = format!("body {k} {generated} ").repeat(1 + *generated as usize % 4);
                    let e = entry(&body, *generated, &tags);
                    for s in [&redb as &dyn Store, &memory] {
                        if *same_bodies {
                            s.put_same_bodies(&key, e.clone()).await.unwrap();
                        } else {
                            s.put(&key, e.clone()).await.unwrap();
                        }
                    }
                    if *reopen {
                        drop(redb);
                        redb = RedbStore::open_with(dir.path(), 200).unwrap();
                    }
                }
                for k in memory.keys_with_prefix("/").await.unwrap() {
                    let (m, r) = (memory.get(&k).await.unwrap().unwrap(), redb.get(&k).await.unwrap().unwrap());
                    assert_eq!((m.identity(), m.meta.generated), (r.identity(), r.meta.generated), "{k}");
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
