//! The embedded store's revalidation marks: an append-only log beside the redb file.
//!
//! A revalidation answers once its mark is durable. In redb that meant a whole commit of
//! a database holding every page (page writes, quick-repair allocator state, fsyncs), so
//! its latency grew with the store. Here a mark is one small record appended and
//! `fdatasync`ed, whatever the number of pages: 0.06 ms on one of this project's machines,
//! 0.3 ms (p50) on another, where it is most of a revalidation's latency.
//!
//! Records: `M`, the name's length (u16, little-endian), the name, `stale_at` and
//! `expire_at` (u64 each), then an FNV-1a 64-bit checksum of all of that. Loading merges
//! records by name (the latest of each field wins, as marks only move forward), so order
//! does not matter. A record cut short by a crash or a full disk fails its checksum and
//! is dropped with everything after it (it was never acknowledged): opening truncates the
//! file there, and a failed append truncates back at once, so later records are never
//! written after a torn one. Opening rewrites the log with one record per name when it
//! holds many more records than names.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::StoreError;
use crate::policy::Mark;

/// The mark log of one data directory.
pub(super) struct MarkLog {
    path: PathBuf,
    /// The file, and its length after the last acknowledged record.
    file: Mutex<(File, u64)>,
}

fn failed(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Failed(format!("{what} {}: {e}", path.display()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn record(name: &str, mark: Mark) -> Vec<u8> {
    let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
    let mut r = Vec::with_capacity(1 + 2 + name.len() + 24);
    r.push(b'M');
    r.extend_from_slice(&(name.len() as u16).to_le_bytes());
    r.extend_from_slice(name);
    r.extend_from_slice(&mark.stale_at.to_le_bytes());
    r.extend_from_slice(&mark.expire_at.to_le_bytes());
    r.extend_from_slice(&fnv1a(&r).to_le_bytes());
    r
}

/// The marks in `bytes`, merged by name, the number of records, and the length of the
/// valid prefix.
fn parse(bytes: &[u8]) -> (BTreeMap<String, Mark>, usize, usize) {
    let (mut marks, mut records, mut at) = (BTreeMap::<String, Mark>::new(), 0, 0);
    let u64_at = |b: &[u8], i: usize| {
        b.get(i..i + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
    };
    while at < bytes.len() {
        let rest = &bytes[at..];
        let Some(len) = rest
            .get(1..3)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
        else {
            break;
        };
        let end = 3 + len + 16;
        let (Some(stale_at), Some(expire_at), Some(sum)) = (
            u64_at(rest, 3 + len),
            u64_at(rest, 3 + len + 8),
            u64_at(rest, end),
        ) else {
            break;
        };
        if rest[0] != b'M' || fnv1a(&rest[..end]) != sum {
            break;
        }
        let Ok(name) = std::str::from_utf8(&rest[3..3 + len]) else {
            break;
        };
        let m = marks.entry(name.to_string()).or_default();
        *m = m.merge(Mark {
            stale_at,
            expire_at,
        });
        records += 1;
        at += end + 8;
    }
    (marks, records, at)
}

impl MarkLog {
    /// Opens (or creates) `dir/marks.log`, dropping a torn tail and compacting it when
    /// it is mostly repeats.
    pub(super) fn open(dir: &Path) -> Result<MarkLog, StoreError> {
        let path = dir.join("marks.log");
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)
                    .map_err(|e| failed("cannot read", &path, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed("cannot open", &path, e)),
        }
        let (marks, records, valid) = parse(&bytes);
        if valid < bytes.len() {
            tracing::warn!(path = %path.display(), dropped_bytes = bytes.len() - valid, "dropping a torn record at the end of the mark log (it was never acknowledged)");
        }
        if records > 2 * marks.len() + 1024 || valid < bytes.len() {
            // Rewrite: one record per name, into a new file renamed over the old one.
            let tmp = dir.join("marks.log.tmp");
            let mut out = Vec::new();
            for (name, m) in &marks {
                out.extend_from_slice(&record(name, *m));
            }
            let mut f = File::create(&tmp).map_err(|e| failed("cannot create", &tmp, e))?;
            f.write_all(&out)
                .and_then(|()| f.sync_all())
                .map_err(|e| failed("cannot write", &tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| failed("cannot replace", &path, e))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| failed("cannot sync", dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| failed("cannot open", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| failed("cannot read", &path, e))?
            .len();
        Ok(MarkLog {
            path,
            file: Mutex::new((file, len)),
        })
    }

    /// Appends a mark and waits until it is on disk. Blocking: call it off the async
    /// threads.
    pub(super) fn append(&self, name: &str, mark: Mark) -> Result<(), StoreError> {
        let r = record(name, mark);
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let (file, len) = &mut *guard;
        match file.write_all(&r).and_then(|()| file.sync_data()) {
            Ok(()) => {
                *len += r.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Never leave a partial record for the next one to follow.
                let _ = file.set_len(*len);
                Err(failed("cannot write", &self.path, e))
            }
        }
    }

    /// Every mark in the log, merged by name.
    pub(super) fn load(&self) -> Result<BTreeMap<String, Mark>, StoreError> {
        let bytes = std::fs::read(&self.path).map_err(|e| failed("cannot read", &self.path, e))?;
        Ok(parse(&bytes).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_merge_survive_reopen_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = MarkLog::open(dir.path()).unwrap();
            log.append("t:posts", Mark::at(5, false)).unwrap();
            log.append("t:posts", Mark::at(3, true)).unwrap();
            log.append("p:/a", Mark::at(7, false)).unwrap();
        }
        // A crash in the middle of a fourth record.
        let path = dir.path().join("marks.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let torn = record("t:posts", Mark::at(99, true));
        bytes.extend_from_slice(&torn[..torn.len() - 3]);
        std::fs::write(&path, &bytes).unwrap();

        let log = MarkLog::open(dir.path()).unwrap();
        let marks = log.load().unwrap();
        assert_eq!(
            marks["t:posts"],
            Mark {
                stale_at: 5,
                expire_at: 3
            }
        );
        assert_eq!(marks["p:/a"], Mark::at(7, false));
        // Appends after the repair are read back.
        log.append("t:posts", Mark::at(11, false)).unwrap();
        assert_eq!(log.load().unwrap()["t:posts"].stale_at, 11);
        assert_eq!(
            parse(&std::fs::read(&path).unwrap()).1,
            3,
            "compacted to one record per name, plus the new one"
        );
    }

    #[test]
    fn a_log_of_repeats_is_compacted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = MarkLog::open(dir.path()).unwrap();
            for i in 1..=3000 {
                log.append("t:hot", Mark::at(i, false)).unwrap();
            }
        }
        let log = MarkLog::open(dir.path()).unwrap();
        let bytes = std::fs::read(dir.path().join("marks.log")).unwrap();
        assert_eq!(parse(&bytes).1, 1);
        assert_eq!(log.load().unwrap()["t:hot"].stale_at, 3000);
    }
}
