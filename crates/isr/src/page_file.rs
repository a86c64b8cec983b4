//! Bodies of [`MIN_BYTES`] (32 KiB) and more in the memory tier live in sealed memory
//! files (`memfd`) from the entry's first hit there (`HotTier::get`), not on the heap, so
//! the hit lane can send them with `sendfile`: the kernel hands the file's pages to the
//! socket instead of copying the body out of isr's memory for every hit, as nginx does for
//! static files. That cut the server CPU per 128 KiB hit by a quarter (BENCHMARKS.md,
//! "Large bodies sent from page files with `sendfile`", and "Where copying stops paying"
//! for where the line is drawn).
//!
//! A page file is written once, then sealed against writes, growth and shrinking, so it
//! is immutable while any response still sends from it; its memory is freed when the
//! last `Arc` (the tier's entry, or a response in flight) drops it. Reading a body back as
//! [`Bytes`] (hyper's path, store writes, regeneration checks) copies it.
//!
//! Each file costs a file descriptor. isr keeps at most a quarter of the process's
//! open-file limit in page files; past that, or if the kernel refuses one, a body simply
//! stays on the heap and is copied as smaller bodies are.
//!
//! A page file can also be a stored body's bytes in one of the embedded store's segment
//! files (`PageFile::in_segment`): a page read from disk for one response, not kept in
//! the memory tier, is sent from there with `sendfile` without being read into isr at all.
//! Segments are append-only, so those bytes never change either; a segment compacted away
//! stays readable through the open descriptor until the last response using it is sent.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// Bodies in the memory tier at least this large go to page files; smaller ones are
/// copied in the headers' `writev` (one system call instead of the head's `send` and a
/// `sendfile`) and save a descriptor each. Measured on 2026-12-03 (BENCHMARKS.md, "Where
/// copying stops paying"), copied against sent from a file, per server CPU-second:
/// 16 KiB 1.08× on one hot URL and 1.00× on a spread, 32 KiB 0.98× on both, 64 KiB
/// 0.67× and 0.94×, 128 KiB 0.75× and 0.76×.
pub const MIN_BYTES: usize = 32 * 1024;

static OPEN: AtomicUsize = AtomicUsize::new(0);

/// A body in a sealed memory file, or in a store's segment file.
#[derive(Debug)]
pub struct PageFile {
    file: Arc<File>,
    /// Where the body starts in `file` (0 in a memory file).
    off: u64,
    len: usize,
    /// A memory file, counted in [`OPEN`].
    memfd: bool,
}

impl PageFile {
    /// A sealed file holding `body`, or `None` when the page-file budget is used up or
    /// the kernel refuses (the caller keeps the body on the heap).
    pub fn holding(body: &[u8]) -> Option<Arc<PageFile>> {
        if OPEN.fetch_add(1, Ordering::Relaxed) >= max_open() {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        match sealed(body) {
            Ok(file) => Some(Arc::new(PageFile {
                file: Arc::new(file),
                off: 0,
                len: body.len(),
                memfd: true,
            })),
            Err(e) => {
                OPEN.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "page file refused; the body stays on the heap");
                None
            }
        }
    }

    /// The `len` bytes at `off` in `file`, a segment file of the embedded store whose
    /// bytes never change once written.
    pub(crate) fn in_segment(file: Arc<File>, off: u64, len: usize) -> Arc<PageFile> {
        Arc::new(PageFile {
            file,
            off,
            len,
            memfd: false,
        })
    }

    /// The body's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty body (never made: empty bodies stay on the heap).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file, for `sendfile`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Where the body starts in [`PageFile::fd`].
    pub fn offset(&self) -> u64 {
        self.off
    }

    /// A copy of the body (read into fresh memory that is never zeroed first).
    pub fn read(&self) -> Bytes {
        let mut buf = Vec::with_capacity(self.len);
        while buf.len() < self.len {
            let at = self.off + buf.len() as u64;
            // A sealed memory file of this length fails only if the kernel is out of
            // memory; a segment only if the disk fails under bytes already committed.
            // Neither leaves anything to serve.
            let n = rustix::io::pread(&*self.file, rustix::buffer::spare_capacity(&mut buf), at)
                .expect("reading a page file");
            assert!(n > 0, "a page file shrank");
        }
        Bytes::from(buf)
    }
}

impl Drop for PageFile {
    fn drop(&mut self) {
        if self.memfd {
            OPEN.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn sealed(body: &[u8]) -> std::io::Result<File> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create("isr-page", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut file = File::from(fd);
    file.write_all(body)?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    Ok(file)
}

/// True while another page file may be made.
pub fn available() -> bool {
    OPEN.load(Ordering::Relaxed) < max_open()
}

/// A quarter of the soft open-file limit, read once.
fn max_open() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        limit.current.map_or(usize::MAX, |n| (n / 4) as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_body_sealed_and_gives_it_back() {
        let body: Vec<u8> = (0..MIN_BYTES * 2).map(|i| (i % 251) as u8).collect();
        let f = PageFile::holding(&body).expect("page file");
        assert_eq!(f.len(), body.len());
        assert_eq!(&f.read()[..], &body[..]);
        // Sealed: nobody, isr included, can change it while responses send from it.
        let mut file = &*f.file;
        assert!(file.write_all(b"x").is_err());
        assert!(f.file.set_len(1).is_err());
    }
}
