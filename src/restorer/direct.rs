//! Big restored files, written around the page cache.
//!
//! A restore writes each byte once and does not read it back (unless
//! `--verify`), so copying it into the page cache only costs: on the
//! 2-core VMs coffer is measured on, that copy was a third of a full
//! restore's CPU (see [`crate::direct_io`]). Files of at least
//! `MIN_FILE` bytes are therefore written with O_DIRECT, which needs
//! aligned offsets and lengths, while blobs arrive at arbitrary offsets and
//! in any order (packs are read in parallel; a blob may serve several
//! places). So each file is cut into aligned `SEGMENT`s: a blob's bytes
//! are copied into the buffers of the segments it covers, and a segment
//! whose every byte has arrived is handed to one of the writer threads,
//! which writes it with one O_DIRECT `pwrite` and returns the buffer to
//! the pool.
//!
//! Memory is bounded by `Stager`'s buffer budget. When it is spent (a
//! file whose blobs come in an order far from its own), a segment not yet
//! started goes through the page cache instead; segments never mix the
//! two, so a direct write never covers bytes written the other way.
//!
//! Zeros cost nothing: a piece of all zeros is counted but not copied
//! (buffers start zeroed), and a segment of nothing but zeros is never
//! written, so it stays a hole.

use crate::direct_io::{self, AlignedBuf};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Aligned unit of staging and writing.
pub(crate) const SEGMENT: usize = 1 << 20;
/// Files smaller than this go through the page cache: one write each, and
/// a direct write would wait on the device for every small file.
pub(crate) const MIN_FILE: u64 = SEGMENT as u64;
/// Segment buffers alive at once (staging, queued or being written).
const BUDGET: usize = 32;
/// Complete segments queued for the writer threads.
pub(crate) const QUEUE: usize = 8;
/// Writer threads. An O_DIRECT `pwrite` returns only when the device has
/// the bytes, so one writer kept one request in flight and sat in the
/// disk's queue for 1.4 s of a 2.3 s cold restore of the home tree while
/// the workers waited for it; four took the restore from 3.06-3.28 s to
/// 2.93-3.02 s (eight and a longer queue: no better).
pub(crate) const WRITERS: usize = 4;

/// The pool of segment buffers, shared by every file of a restore.
pub(crate) struct Stager {
    free: Mutex<Vec<AlignedBuf>>,
    live: AtomicU64,
}

impl Default for Stager {
    fn default() -> Self {
        Stager {
            free: Mutex::new(Vec::new()),
            live: AtomicU64::new(0),
        }
    }
}

impl Stager {
    /// A buffer (of old bytes when reused), or `None` when the budget is
    /// spent. Not cleared: every byte of a segment is either copied or
    /// zeroed as its piece arrives, which spares a memset of everything
    /// restored.
    fn take(&self) -> Option<AlignedBuf> {
        if let Some(b) = lock(&self.free).pop() {
            return Some(b);
        }
        let claimed = self
            .live
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < BUDGET as u64).then_some(n + 1)
            })
            .is_ok();
        claimed.then(|| AlignedBuf::zeroed(SEGMENT))
    }

    pub fn give(&self, b: AlignedBuf) {
        lock(&self.free).push(b);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Segment {
    /// Bytes arrived so far (zeros included); the buffer exists once a
    /// piece with data arrived. Zero pieces that came before it are
    /// remembered, to be cleared in it.
    Staged {
        buf: Option<AlignedBuf>,
        filled: usize,
        zeros: Vec<(usize, usize)>,
    },
    /// No buffer could be had: this segment's data goes through the page
    /// cache. Its zero pieces staged before need nothing (holes).
    Cached,
}

/// A segment with all its bytes, for a writer thread.
pub(crate) struct Ready {
    pub offset: u64,
    pub len: usize,
    pub buf: AlignedBuf,
}

/// Where one piece of a blob went.
pub(crate) enum Placed {
    /// Staged; nothing to do now.
    Staged,
    /// Staged, and its segment is complete: write it.
    Complete(Ready),
    /// Write this piece through the page cache.
    Cached,
}

/// The O_DIRECT side of one restored file.
pub(crate) struct DirectFile {
    fd: File,
    size: u64,
    segments: Mutex<HashMap<u64, Segment>>,
    /// The filesystem refused a direct write: the rest goes through the
    /// page cache.
    refused: AtomicBool,
}

impl DirectFile {
    /// Open `tmp` (just created as `file`) a second time with O_DIRECT.
    /// `None` when the filesystem refuses it, or when the name no longer
    /// leads to the same file (it was replaced in between).
    pub fn open(tmp: &Path, file: &File, size: u64) -> Option<DirectFile> {
        let fd = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(tmp)
            .ok()?;
        let (a, b) = (fd.metadata().ok()?, file.metadata().ok()?);
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return None;
        }
        Some(DirectFile {
            fd,
            size,
            segments: Mutex::new(HashMap::new()),
            refused: AtomicBool::new(false),
        })
    }

    /// Stage `piece`, which lies inside one segment at file offset `off`.
    pub fn place(&self, stager: &Stager, off: u64, piece: &[u8], zero: bool) -> Placed {
        let index = off / SEGMENT as u64;
        let seg_start = index * SEGMENT as u64;
        let seg_len = (self.size - seg_start).min(SEGMENT as u64) as usize;
        let at = (off - seg_start) as usize;
        let mut segments = lock(&self.segments);
        let seg = segments.entry(index).or_insert(Segment::Staged {
            buf: None,
            filled: 0,
            zeros: Vec::new(),
        });
        let Segment::Staged { buf, filled, zeros } = seg else {
            return Placed::Cached;
        };
        let range = at..at + piece.len();
        match buf {
            Some(b) if zero => b.as_mut_slice()[range].fill(0),
            Some(b) => b.as_mut_slice()[range].copy_from_slice(piece),
            None if zero => zeros.push((range.start, range.end)),
            None => {
                let Some(mut b) = stager.take() else {
                    *seg = Segment::Cached;
                    return Placed::Cached;
                };
                for &(a, z) in zeros.iter() {
                    b.as_mut_slice()[a..z].fill(0);
                }
                b.as_mut_slice()[range].copy_from_slice(piece);
                *buf = Some(b);
            }
        }
        *filled += piece.len();
        if *filled < seg_len {
            return Placed::Staged;
        }
        let buf = buf.take();
        segments.remove(&index);
        match buf {
            Some(buf) => Placed::Complete(Ready {
                offset: seg_start,
                len: seg_len,
                buf,
            }),
            // Zeros only: a hole.
            None => Placed::Staged,
        }
    }

    /// Write a complete segment (on a writer thread). Returns the end of
    /// what was written, which may pass the file's size by the padding of
    /// its last block. The buffer goes back to the pool either way.
    pub fn write(&self, stager: &Stager, cached: &File, mut r: Ready) -> std::io::Result<u64> {
        let direct = if self.refused.load(Ordering::Relaxed) {
            None
        } else {
            match direct_io::write_padded_at(&self.fd, &mut r.buf, r.len, r.offset) {
                Ok(()) => Some(Ok(
                    r.offset + r.len.next_multiple_of(direct_io::ALIGN) as u64
                )),
                Err(e) if direct_io::refused(&e) => {
                    self.refused.store(true, Ordering::Relaxed);
                    None
                }
                Err(e) => Some(Err(e)),
            }
        };
        let result = direct.unwrap_or_else(|| {
            cached
                .write_all_at(&r.buf.as_slice()[..r.len], r.offset)
                .map(|()| r.offset + r.len as u64)
        });
        stager.give(r.buf);
        result
    }

    /// After every blob was delivered: true when no segment is left
    /// waiting for bytes (else the file must not be committed). Buffers
    /// still held go back to the pool.
    pub fn finish(&self, stager: &Stager) -> bool {
        let mut complete = true;
        for (_, seg) in lock(&self.segments).drain() {
            if let Segment::Staged { buf, .. } = seg {
                complete = false;
                if let Some(b) = buf {
                    stager.give(b);
                }
            }
        }
        complete
    }
}

/// Split `len` bytes at file offset `off` into pieces that each lie inside
/// one segment: `(file offset, start in the blob, length)`.
pub fn pieces(off: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = off + done as u64;
        let room = SEGMENT - (at % SEGMENT as u64) as usize;
        let n = room.min(len - done);
        let piece = (at, done, n);
        done += n;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_never_cross_a_segment() {
        let s = SEGMENT as u64;
        let p: Vec<_> = pieces(s - 10, 30 + SEGMENT).collect();
        assert_eq!(
            p,
            vec![(s - 10, 0, 10), (s, 10, SEGMENT), (2 * s, 10 + SEGMENT, 20)]
        );
        assert_eq!(pieces(0, 0).count(), 0);
        assert_eq!(
            pieces(s, SEGMENT).collect::<Vec<_>>(),
            vec![(s, 0, SEGMENT)]
        );
    }

    /// Pieces delivered out of order, with zero runs and a budget too small
    /// for every segment, still produce exactly the original bytes and keep
    /// an all-zero segment a hole.
    #[test]
    fn staged_writes_rebuild_the_file_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("t");
        let size = 5 * SEGMENT as u64 + 777;
        let mut want = vec![0u8; size as usize];
        for (i, b) in want.iter_mut().enumerate() {
            let seg = i / SEGMENT;
            // Segment 2 is all zeros; segment 3 half zeros.
            if seg != 2 && !(seg == 3 && i % SEGMENT < SEGMENT / 2) {
                *b = (i * 7 + i / 5000) as u8 | 1;
            }
        }
        let file = crate::restorer::file_writer::create_empty(&tmp).unwrap();
        // Tmpfs and some others refuse O_DIRECT: nothing to test there.
        let Some(df) = DirectFile::open(&tmp, &file, size) else {
            return;
        };
        let stager = Stager::default();
        // Spend the budget, dirty every buffer, and give back only one:
        // staging must not rely on clean buffers, and later segments find
        // none and must go cached.
        let mut held: Vec<_> = (0..BUDGET).filter_map(|_| stager.take()).collect();
        assert_eq!(held.len(), BUDGET);
        assert!(stager.take().is_none());
        for b in &mut held {
            b.as_mut_slice().fill(0xee);
        }
        for b in held.drain(..1) {
            stager.give(b);
        }
        // "Blobs" of odd lengths. The third ends where segment 3's zeros
        // end, so that zero piece arrives before the segment has a buffer
        // and must be cleared in the dirty one it gets later.
        let seg = SEGMENT as u64;
        let b2 = 3 * seg + seg / 2 - 1_800_000;
        let lens = [300_000, 1_500_000, b2, 123, size - 1_800_000 - b2 - 123];
        let starts: Vec<u64> = lens
            .iter()
            .scan(0, |o, l| {
                *o += l;
                Some(*o - l)
            })
            .collect();
        let blobs: Vec<(u64, usize)> = [2, 1, 3, 4, 0]
            .iter()
            .map(|&i| (starts[i], lens[i] as usize))
            .collect();
        let mut end = 0u64;
        let (mut direct, mut cached) = (0, 0);
        for &(off, len) in &blobs {
            for (at, start, n) in pieces(off, len) {
                let piece = &want[(off as usize + start)..(off as usize + start + n)];
                let zero = piece.iter().all(|&b| b == 0);
                match df.place(&stager, at, piece, zero) {
                    Placed::Staged => {}
                    Placed::Complete(r) => {
                        direct += 1;
                        end = end.max(df.write(&stager, &file, r).unwrap());
                    }
                    Placed::Cached if !zero => {
                        cached += 1;
                        file.write_all_at(piece, at).unwrap();
                        end = end.max(at + n as u64);
                    }
                    Placed::Cached => {}
                }
            }
        }
        assert!(df.finish(&stager));
        assert!(direct > 0 && cached > 0, "direct {direct}, cached {cached}");
        drop(held);
        if end != size {
            file.set_len(size).unwrap();
        }
        drop(df);
        drop(file);
        assert_eq!(std::fs::read(&tmp).unwrap(), want);
    }

    #[test]
    fn a_missing_piece_is_reported_by_finish() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("t");
        let file = crate::restorer::file_writer::create_empty(&tmp).unwrap();
        let Some(df) = DirectFile::open(&tmp, &file, 2 * SEGMENT as u64) else {
            return;
        };
        let stager = Stager::default();
        assert!(matches!(
            df.place(&stager, 0, &[1u8; 100], false),
            Placed::Staged
        ));
        assert!(!df.finish(&stager));
    }
}
