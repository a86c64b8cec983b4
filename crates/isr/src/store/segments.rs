//! Body segment files: where the embedded store keeps page bodies, outside its B-tree.
//!
//! Bodies are appended to numbered files in `data_dir/bodies/` (`00000001.seg`, …), each
//! up to a size bound; the entry's metadata row in redb records where its bodies are: one
//! [`Extent`] per entry, the identity body then the Brotli and gzip variants, back to
//! back. Reading a page is then one B-tree lookup and one vectored `pread` of exactly its
//! bytes, instead of a range scan over chunks.
//!
//! Only the store's writer thread appends, and it `fdatasync`s what it appended before it
//! commits the transaction that points to it, so a committed extent is always on disk. A
//! crash between the two leaves unreferenced bytes at the end of a segment: dead space,
//! like the bodies of replaced pages. The writer counts the live bytes of every segment
//! (in redb, in the same transaction as the rows that change them) and rewrites a sealed
//! segment whose live bytes fall under half its size, moving the extents still in use to
//! the active segment a few MiB per transaction while the store is idle; a segment left
//! with no live bytes is deleted.
//!
//! Readers share one open handle per segment. A reader that found an extent in a segment
//! deleted since (its snapshot predates the move) sees [`Unread::Moved`] and reads again: the
//! newer snapshot has the new extent. Segment numbers are never reused.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::StoreError;
use crate::page_file::PageFile;

/// Segments grow to this size before the next one starts (tests pass smaller ones).
pub(super) const SEGMENT_BYTES: u64 = 256 << 20;

/// A page read from the store and not kept in the memory tier is sent straight from its
/// segment ([`Segments::refer`]) when its identity body is at least this large; smaller
/// ones are read into memory. Lower than [`crate::page_file::MIN_BYTES`]: the other way
/// here is not one copy but a read into a new buffer and then a copy into the socket.
pub(super) const REFER_MIN_BYTES: usize = 16 * 1024;

/// First byte of a metadata row that carries an extent. Rows written before segments
/// existed are the JSON metadata alone, starting with `{`.
const EXTENT_ROW: u8 = 1;
const HEADER: usize = 1 + 4 + 8 + 3 * 4;

/// Where one entry's bodies are: `lens` bytes of identity, Brotli and gzip, in that order,
/// from `off` in segment `seg`. An entry whose bodies are all empty has no bytes anywhere
/// (`seg` 0, which no file has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Extent {
    /// Segment number.
    pub seg: u32,
    /// Offset in the segment.
    pub off: u64,
    /// Lengths of the identity, Brotli and gzip bodies.
    pub lens: [u32; 3],
}

impl Extent {
    /// Bytes in all.
    pub(super) fn len(&self) -> u64 {
        self.lens.iter().map(|&l| u64::from(l)).sum()
    }
}

/// A metadata row: the extent, then the metadata's own bytes.
pub(super) fn encode_row(ext: &Extent, meta: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(HEADER + meta.len());
    row.push(EXTENT_ROW);
    row.extend_from_slice(&ext.seg.to_le_bytes());
    row.extend_from_slice(&ext.off.to_le_bytes());
    for l in ext.lens {
        row.extend_from_slice(&l.to_le_bytes());
    }
    row.extend_from_slice(meta);
    row
}

/// Splits a metadata row into its extent (none for a row of an earlier version, whose
/// bodies are in the chunk table) and the metadata's bytes.
pub(super) fn decode_row(row: &[u8]) -> Result<(Option<Extent>, &[u8]), StoreError> {
    if row.first() != Some(&EXTENT_ROW) {
        return Ok((None, row));
    }
    let h = row
        .get(..HEADER)
        .ok_or_else(|| StoreError::Failed("a metadata row is truncated".into()))?;
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let ext = Extent {
        seg: u32_at(1),
        off: u64::from_le_bytes(h[5..13].try_into().expect("8 bytes")),
        lens: [u32_at(13), u32_at(17), u32_at(21)],
    };
    Ok((Some(ext), &row[HEADER..]))
}

/// Why [`Segments::read`] returned no bodies.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unread {
    /// The extent was in a segment deleted since the reader's snapshot: read the row
    /// again.
    Moved,
    /// Asked not to wait, and the bytes are not all in the page cache.
    WouldBlock,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Failed(format!("{what} {}: {e}", path.display()))
}

fn name(id: u32) -> String {
    format!("{id:08}.seg")
}

/// The segment files, shared by the readers and the writer.
pub(super) struct Segments {
    dir: PathBuf,
    open: RwLock<HashMap<u32, Arc<File>>>,
}

impl Segments {
    /// Opens every segment in `data_dir/bodies` (creating the directory), and returns them
    /// with their sizes.
    pub(super) fn open(data_dir: &Path) -> Result<(Segments, BTreeMap<u32, u64>), StoreError> {
        let dir = data_dir.join("bodies");
        std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let (mut open, mut sizes) = (HashMap::new(), BTreeMap::new());
        for d in std::fs::read_dir(&dir).map_err(|e| io_err("cannot list", &dir, e))? {
            let path = d.map_err(|e| io_err("cannot list", &dir, e))?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let f = File::options()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_err("cannot open", &path, e))?;
            let len = f
                .metadata()
                .map_err(|e| io_err("cannot stat", &path, e))?
                .len();
            open.insert(id, Arc::new(f));
            sizes.insert(id, len);
        }
        let segs = Segments {
            dir,
            open: RwLock::new(open),
        };
        Ok((segs, sizes))
    }

    fn file(&self, id: u32) -> Option<Arc<File>> {
        self.open
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Reads the three bodies of `ext`, each into a buffer of exactly its size, in one
    /// system call when the kernel returns it all at once. Unless `wait`, it reads only what
    /// the page cache holds (`RWF_NOWAIT`) and returns [`Unread::WouldBlock`] instead of
    /// waiting for the disk.
    pub(super) fn read(
        &self,
        ext: &Extent,
        wait: bool,
    ) -> Result<Result<[Bytes; 3], Unread>, StoreError> {
        if ext.len() == 0 {
            return Ok(Ok(Default::default()));
        }
        let Some(file) = self.file(ext.seg) else {
            return Ok(Err(Unread::Moved));
        };
        let mut bufs = ext.lens.map(|l| vec![0u8; l as usize]);
        if wait {
            read_exact_at(&file, &mut bufs, ext.off)
                .map_err(|e| io_err("cannot read", &self.dir.join(name(ext.seg)), e))?;
        } else {
            let mut slices = io_slices(&mut bufs);
            let flags = rustix::io::ReadWriteFlags::NOWAIT;
            // A short read, or any error: the waiting read on the blocking pool does it
            // all again (and reports a real error).
            match rustix::io::preadv2(&*file, &mut slices, ext.off, flags) {
                Ok(n) if n as u64 == ext.len() => {}
                _ => return Ok(Err(Unread::WouldBlock)),
            }
        }
        Ok(Ok(bufs.map(Bytes::from)))
    }

    /// The three bodies of `ext` as references into their segment, for `sendfile`, when
    /// the page cache holds them: the last byte is probed with an `RWF_NOWAIT` read
    /// ([`Unread::WouldBlock`] when it would wait for the disk). The pages of one extent
    /// are written, read and so evicted together, and its last page is its own (the first
    /// may be shared with the extent before it, and so be younger in the page cache).
    pub(super) fn refer(&self, ext: &Extent) -> Result<[Arc<PageFile>; 3], Unread> {
        let file = self.file(ext.seg).ok_or(Unread::Moved)?;
        let flags = rustix::io::ReadWriteFlags::NOWAIT;
        let mut byte = [0u8; 1];
        let mut slice = [IoSliceMut::new(&mut byte)];
        let last = ext.off + ext.len().max(1) - 1;
        if !matches!(rustix::io::preadv2(&*file, &mut slice, last, flags), Ok(1)) {
            return Err(Unread::WouldBlock);
        }
        let mut off = ext.off;
        Ok(ext.lens.map(|l| {
            let body = PageFile::in_segment(file.clone(), off, l as usize);
            off += u64::from(l);
            body
        }))
    }

    /// Bytes in all segment files.
    pub(super) fn bytes(&self) -> u64 {
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        open.values()
            .map(|f| f.metadata().map_or(0, |m| m.len()))
            .sum()
    }

    fn create(&self, id: u32) -> Result<Arc<File>, StoreError> {
        let path = self.dir.join(name(id));
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err("cannot create", &path, e))?;
        let f = Arc::new(f);
        // The new name must survive a crash along with the data the next commit points to.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("cannot sync", &self.dir, e))?;
        self.open
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, f.clone());
        Ok(f)
    }

    /// Deletes segment `id` (the writer found no live bytes in it).
    pub(super) fn delete(&self, id: u32) -> Result<(), StoreError> {
        self.open
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let path = self.dir.join(name(id));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err("cannot delete", &path, e))
            }
            _ => Ok(()),
        }
    }
}

/// The non-empty buffers of `bufs`, for a vectored read.
fn io_slices(bufs: &mut [Vec<u8>; 3]) -> Vec<IoSliceMut<'_>> {
    bufs.iter_mut()
        .filter(|b| !b.is_empty())
        .map(|b| IoSliceMut::new(b))
        .collect()
}

/// Fills `bufs` from `off` on: one `preadv`, then plain reads for whatever a short read
/// left.
fn read_exact_at(file: &File, bufs: &mut [Vec<u8>; 3], off: u64) -> std::io::Result<()> {
    let mut slices = io_slices(bufs);
    let mut got = rustix::io::preadv(file, &mut slices, off)?;
    drop(slices);
    let mut at = off;
    for b in bufs.iter_mut() {
        let done = got.min(b.len());
        got -= done;
        if done < b.len() {
            file.read_exact_at(&mut b[done..], at + done as u64)?;
        }
        at += b.len() as u64;
    }
    Ok(())
}

/// The writer's side: the segment it appends to, and what it appended since the last sync.
pub(super) struct Appender {
    segs: Arc<Segments>,
    max: u64,
    id: u32,
    file: Arc<File>,
    len: u64,
    unsynced: Vec<Arc<File>>,
}

impl Appender {
    /// Appends to the newest segment of `sizes` (its end may hold bytes a crash left
    /// unreferenced: they count as dead), or to a new one when there is none.
    pub(super) fn new(
        segs: Arc<Segments>,
        sizes: &BTreeMap<u32, u64>,
        max: u64,
    ) -> Result<Appender, StoreError> {
        let (id, len) = match sizes.last_key_value() {
            Some((&id, &len)) => (id, len),
            None => (1, 0),
        };
        let file = match segs.file(id) {
            Some(f) => f,
            None => segs.create(id)?,
        };
        Ok(Appender {
            segs,
            max,
            id,
            file,
            len,
            unsynced: Vec::new(),
        })
    }

    /// The segment appended to now (never compacted).
    pub(super) fn active(&self) -> u32 {
        self.id
    }

    /// Appends `bodies` back to back and returns their extent; starts a new segment first
    /// when they would take this one past its bound.
    pub(super) fn append(&mut self, bodies: [&[u8]; 3]) -> Result<Extent, StoreError> {
        let lens = bodies.map(|b| u32::try_from(b.len()).unwrap_or(u32::MAX));
        let total: u64 = bodies.iter().map(|b| b.len() as u64).sum();
        if total == 0 {
            return Ok(Extent {
                seg: 0,
                off: 0,
                lens: [0; 3],
            });
        }
        if lens.contains(&u32::MAX) {
            return Err(StoreError::Failed("a body is over 4 GiB".into()));
        }
        if self.len > 0 && self.len + total > self.max {
            self.id += 1;
            self.file = self.segs.create(self.id)?;
            self.len = 0;
        }
        let off = self.len;
        let mut at = off;
        for b in bodies {
            self.file
                .write_all_at(b, at)
                .map_err(|e| io_err("cannot write", &self.segs.dir.join(name(self.id)), e))?;
            at += b.len() as u64;
        }
        self.len = at;
        if !self.unsynced.iter().any(|f| Arc::ptr_eq(f, &self.file)) {
            self.unsynced.push(self.file.clone());
        }
        Ok(Extent {
            seg: self.id,
            off,
            lens,
        })
    }

    /// Size of the segment appended to now.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Makes everything appended so far durable (before the commit that points to it).
    pub(super) fn sync(&mut self) -> Result<(), StoreError> {
        for f in self.unsynced.drain(..) {
            f.sync_data()
                .map_err(|e| io_err("cannot sync", &self.segs.dir, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_rows_of_earlier_versions_have_no_extent() {
        let ext = Extent {
            seg: 7,
            off: 1 << 33,
            lens: [16384, 0, 4000],
        };
        let row = encode_row(&ext, b"{\"status\":200}");
        assert_eq!(
            decode_row(&row).unwrap(),
            (Some(ext), &b"{\"status\":200}"[..])
        );
        assert_eq!(decode_row(b"{}").unwrap(), (None, &b"{}"[..]));
        assert!(decode_row(&row[..10]).is_err());
    }

    #[test]
    fn appends_roll_over_to_new_segments_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (segs, sizes) = Segments::open(dir.path()).unwrap();
        let segs = Arc::new(segs);
        let mut app = Appender::new(segs.clone(), &sizes, 100).unwrap();
        let a = app.append([b"0123456789", b"br", b""]).unwrap();
        let b = app.append([&[b'x'; 95], b"", b"gz"]).unwrap();
        let empty = app.append([b"", b"", b""]).unwrap();
        app.sync().unwrap();
        assert_eq!((a.seg, a.off, b.seg, b.off), (1, 0, 2, 0));
        let [i, br, gz] = segs.read(&a, true).unwrap().unwrap();
        assert_eq!(
            (&i[..], &br[..], gz.len()),
            (&b"0123456789"[..], &b"br"[..], 0)
        );
        let [i, _, gz] = segs.read(&b, true).unwrap().unwrap();
        assert_eq!((i.len(), &gz[..]), (95, &b"gz"[..]));
        // Not waiting, it reads the same bytes, or none if they are not in the page cache.
        match segs.read(&b, false).unwrap() {
            Ok(bodies) => assert_eq!(bodies, [i, Bytes::new(), gz]),
            Err(e) => assert_eq!(e, Unread::WouldBlock),
        }
        assert_eq!(segs.read(&empty, true).unwrap().unwrap()[0].len(), 0);
        segs.delete(1).unwrap();
        assert_eq!(segs.read(&a, true).unwrap(), Err(Unread::Moved));
        // Reopened, appends go on at the end of the newest segment.
        let (segs, sizes) = Segments::open(dir.path()).unwrap();
        assert_eq!(sizes.into_iter().collect::<Vec<_>>(), [(2, 97)]);
        let mut app = Appender::new(Arc::new(segs), &[(2, 97)].into(), 100).unwrap();
        assert_eq!(app.append([b"abc", b"", b""]).unwrap().off, 97);
    }
}
