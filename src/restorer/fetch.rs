//! Reading a batch's blobs from the repository: grouped by pack, each
//! pack's needed ranges read once (coalesced when close), every blob
//! authenticated, decompressed and re-hashed before any byte of it is
//! delivered to the files it serves.
//!
//! [`Shared::fetch`] is the one place that decides how pack reads run
//! (today: one rayon task per piece of a pack, a thread-local buffer each).

use super::{FileTask, Shared, direct};
use crate::blob::BlobPlace;
use crate::id::{BlobId, PackId};
use rayon::prelude::*;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

/// Needed ranges of a pack closer than this are read as one.
const COALESCE_GAP: u64 = 1024 * 1024;
/// The most bytes of a pack one task reads and decodes (see
/// [`split_into_pieces`]).
const PIECE: u64 = 2 << 20;
/// A pack buffer larger than this is not kept for the next pack.
const KEEP_PACK_BUF: usize = 64 * 1024 * 1024;

thread_local! {
    /// Each worker's buffer for pack ranges: reusing it spares faulting in
    /// fresh zeroed pages for every range read (about a tenth of a
    /// restore's CPU time when each read got a new allocation).
    static PACK_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where a decoded blob goes: the batch's file (by index) and the offset.
type Target = (usize, u64);
/// The way complete O_DIRECT segments reach the writer threads.
type SegmentTx = crossbeam_channel::Sender<(usize, direct::Ready)>;

/// A blob the batch needs, and where its bytes go.
pub(super) struct Need {
    id: BlobId,
    place: BlobPlace,
    targets: Vec<Target>,
}

/// A piece of one pack's share of a batch: the blobs to read from it,
/// sorted by offset (see [`split_into_pieces`]).
pub(super) struct PackRead {
    pack: PackId,
    blobs: Vec<Need>,
}

/// The pack reads a batch needs: every blob of the files that have a
/// temporary file (`places[i]` for `tasks[i]`, as planned), each read once
/// however many places it serves, grouped by pack.
pub(super) fn pack_reads(
    tasks: &[FileTask],
    places: Vec<Option<Vec<(BlobId, BlobPlace, u64)>>>,
) -> Vec<PackRead> {
    let mut needs: HashMap<BlobId, Need> = HashMap::new();
    for (i, places) in places.into_iter().enumerate() {
        let Some(places) = places else { continue };
        if tasks[i].file.is_none() {
            continue;
        }
        for (id, place, off) in places {
            needs
                .entry(id)
                .or_insert_with(|| Need {
                    id,
                    place,
                    targets: Vec::new(),
                })
                .targets
                .push((i, off));
        }
    }
    let mut by_pack: HashMap<PackId, Vec<Need>> = HashMap::new();
    for n in needs.into_values() {
        by_pack.entry(n.place.pack).or_default().push(n);
    }
    let mut reads: Vec<PackRead> = Vec::new();
    for (pack, mut blobs) in by_pack {
        blobs.sort_by_key(|n| n.place.offset);
        split_into_pieces(pack, blobs, &mut reads);
    }
    // In the order of the first file position each piece serves (about
    // the order the backup wrote them), not by pack id: rayon splits
    // the list into contiguous runs, so the threads then write
    // different files. In id order both wrote the same big file at once
    // and spun on its inode lock (8% of a restore's CPU in
    // rwsem_spin_on_owner).
    reads.sort_by_cached_key(|r| {
        let first = r
            .blobs
            .iter()
            .flat_map(|n| n.targets.iter().copied())
            .min()
            .unwrap_or((usize::MAX, u64::MAX));
        (first, r.pack)
    });
    reads
}

impl Shared<'_> {
    /// Each pack's structure (size, trailer) is checked once per restore.
    /// Damage there is reported naming the pack; its blobs are still
    /// used, since each is authenticated and re-hashed on its own.
    pub(super) fn check_packs(&self, reads: &[PackRead]) -> Vec<String> {
        // A pack read in several pieces is checked once.
        let unchecked: Vec<PackId> = {
            let mut checked = self.checked_packs.lock().unwrap_or_else(|p| p.into_inner());
            reads
                .iter()
                .map(|r| r.pack)
                .filter(|p| checked.insert(*p))
                .collect()
        };
        crate::backend::in_io_pool(self.src.requests_in_flight(), || {
            unchecked
                .par_iter()
                .filter_map(|p| self.src.check_pack(p).err().map(|e| e.to_string()))
                .collect()
        })
    }

    /// Do every pack read of a batch, in parallel across pieces, delivering
    /// each decoded blob into the files of `tasks`. A blob that cannot be
    /// read or decoded fails the files it serves.
    pub(super) fn fetch(&self, tasks: &[FileTask], reads: &[PackRead]) {
        std::thread::scope(|scope| {
            // Complete segments of big files go to the writer threads, so
            // the workers decode on while direct writes wait on the disk.
            let (tx, rx) = crossbeam_channel::bounded::<(usize, direct::Ready)>(direct::QUEUE);
            let stager = &self.stager;
            for _ in 0..direct::WRITERS {
                let rx = rx.clone();
                scope.spawn(move || write_segments(stager, tasks, rx));
            }
            drop(rx);
            let in_flight = self.src.requests_in_flight();
            let segments = &tx;
            crate::backend::in_io_pool(in_flight, || {
                reads.par_iter().for_each(|r| {
                    PACK_BUF.with_borrow_mut(|buf| {
                        self.restore_pack(tasks, &r.pack, &r.blobs, segments, buf);
                        // Keep the buffer for the next pack, but not an outsized one.
                        if buf.capacity() > KEEP_PACK_BUF {
                            *buf = Vec::new();
                        }
                    })
                })
            });
            drop(tx);
        });
    }

    /// Read the ranges of `pack` that `blobs` (sorted by offset) need
    /// (close ones as one read), authenticate and decode each blob, and
    /// write it to every place it serves.
    fn restore_pack(
        &self,
        tasks: &[FileTask],
        pack: &PackId,
        blobs: &[Need],
        tx: &SegmentTx,
        buf: &mut Vec<u8>,
    ) {
        let mut i = 0;
        while i < blobs.len() {
            if self.check_stop().is_err() {
                // Each file left short is removed with its temporary name.
                for n in &blobs[i..] {
                    fail_targets(tasks, &n.targets, "interrupted");
                }
                return;
            }
            let (start, end, j) = coalesce(blobs, i);
            let range = self
                .src
                .read_pack_range_into(pack, start, (end - start) as usize, buf);
            for n in &blobs[i..j] {
                let data = range.as_ref().map_err(|e| e.to_string()).and_then(|()| {
                    let o = (n.place.offset as u64 - start) as usize;
                    self.src
                        .open_sealed(&n.id, &n.place, &buf[o..o + n.place.length as usize])
                        .map_err(|e| e.to_string())
                });
                match data {
                    Ok(data) => self.deliver(tasks, &n.targets, &data, tx),
                    Err(e) => fail_targets(tasks, &n.targets, &e),
                }
            }
            i = j;
        }
    }

    /// Write one decoded blob to every place it serves.
    fn deliver(&self, tasks: &[FileTask], targets: &[Target], data: &[u8], tx: &SegmentTx) {
        let zero = data.iter().all(|&b| b == 0);
        for &(ti, off) in targets {
            self.put(&tasks[ti], data, off, zero, tx, ti);
        }
        self.progress
            .bytes_done(data.len() as u64 * targets.len() as u64);
    }

    /// Write one decoded blob at `off` of file `ti`: through its staged
    /// segments when it is written with O_DIRECT, else straight into the
    /// page cache. Zeros are not written (holes).
    fn put(&self, t: &FileTask, data: &[u8], off: u64, zero: bool, tx: &SegmentTx, ti: usize) {
        let Some(f) = &t.file else { return };
        let cached = |piece: &[u8], at: u64| match f.write_all_at(piece, at) {
            Ok(()) => {
                t.written_end
                    .fetch_max(at + piece.len() as u64, Ordering::Relaxed);
            }
            Err(e) => t.fail(format!("{}: {e}", t.path.display())),
        };
        let Some(df) = &t.direct else {
            if !zero {
                cached(data, off);
            }
            return;
        };
        for (at, start, n) in direct::pieces(off, data.len()) {
            let piece = &data[start..start + n];
            let zero = zero || piece.iter().all(|&b| b == 0);
            match df.place(&self.stager, at, piece, zero) {
                direct::Placed::Staged => {}
                direct::Placed::Complete(ready) => {
                    if let Err(e) = tx.send((ti, ready)) {
                        self.stager.give(e.into_inner().1.buf);
                        t.fail(format!("{}: the writer threads stopped", t.path.display()));
                    }
                }
                direct::Placed::Cached if !zero => cached(piece, at),
                direct::Placed::Cached => {}
            }
        }
    }
}

/// Split one pack's needed blobs (sorted by offset) into reads that span
/// at most [`PIECE`] bytes each (a blob larger than that alone), so that
/// the workers share a pack: a batch of small files often needs only one
/// or two packs, and one task per pack left a core idle for most of a
/// cold restore's fetch (2.3 of its 3.1 s).
fn split_into_pieces(pack: PackId, blobs: Vec<Need>, out: &mut Vec<PackRead>) {
    let mut piece: Vec<Need> = Vec::new();
    let mut start = 0u64;
    for n in blobs {
        let off = u64::from(n.place.offset);
        let end = off + u64::from(n.place.length);
        if !piece.is_empty() && end - start > PIECE {
            out.push(PackRead {
                pack,
                blobs: std::mem::take(&mut piece),
            });
        }
        if piece.is_empty() {
            start = off;
        }
        piece.push(n);
    }
    if !piece.is_empty() {
        out.push(PackRead { pack, blobs: piece });
    }
}

/// The pack range to read for `blobs[i]` (sorted by offset): it extends
/// while the next blob is close. Returns the range's start and end, and
/// the index of the first blob past it.
fn coalesce(blobs: &[Need], i: usize) -> (u64, u64, usize) {
    let start = blobs[i].place.offset as u64;
    let mut end = start + blobs[i].place.length as u64;
    let mut j = i + 1;
    while j < blobs.len() && (blobs[j].place.offset as u64) <= end + COALESCE_GAP {
        end = end.max(blobs[j].place.offset as u64 + blobs[j].place.length as u64);
        j += 1;
    }
    (start, end, j)
}

/// Fail every file a blob serves, for `why`.
fn fail_targets(tasks: &[FileTask], targets: &[Target], why: &str) {
    for &(ti, _) in targets {
        let t = &tasks[ti];
        t.fail(format!("{}: {why}", t.path.display()));
    }
}

/// A writer thread: each complete segment written with O_DIRECT into
/// its file; a failure fails that file.
fn write_segments(
    stager: &direct::Stager,
    tasks: &[FileTask],
    rx: crossbeam_channel::Receiver<(usize, direct::Ready)>,
) {
    for (ti, ready) in rx {
        let t = &tasks[ti];
        let (Some(df), Some(f)) = (&t.direct, &t.file) else {
            stager.give(ready.buf);
            continue;
        };
        match df.write(stager, f, ready) {
            Ok(end) => {
                t.written_end.fetch_max(end, Ordering::Relaxed);
            }
            Err(e) => t.fail(format!("{}: {e}", t.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobKind;

    fn need(i: u8, offset: u32, length: u32) -> Need {
        Need {
            id: BlobId([i; 32]),
            place: BlobPlace {
                kind: BlobKind::Data,
                pack: PackId([7; 32]),
                offset,
                length,
                raw_length: length,
            },
            targets: vec![(usize::from(i), 0)],
        }
    }

    /// Pieces keep every blob once, in offset order, and span at most
    /// `PIECE` bytes unless one blob alone is larger.
    #[test]
    fn a_pack_is_split_into_bounded_pieces() {
        let mib = 1u32 << 20;
        let sizes = [4096, mib, mib / 2, 3 * mib, 100, mib, mib, 10, 5 * mib / 2];
        let mut blobs = Vec::new();
        let mut off = 0;
        for (i, len) in sizes.iter().enumerate() {
            blobs.push(need(i as u8, off, *len));
            off += len + 64;
        }
        let mut out = Vec::new();
        split_into_pieces(PackId([7; 32]), blobs, &mut out);
        assert!(out.len() >= 4, "{} pieces", out.len());
        let order: Vec<u32> = out
            .iter()
            .flat_map(|r| r.blobs.iter().map(|n| n.place.offset))
            .collect();
        assert_eq!(order.len(), sizes.len());
        assert!(order.windows(2).all(|w| w[0] < w[1]));
        for r in &out {
            let first = &r.blobs[0].place;
            let last = &r.blobs[r.blobs.len() - 1].place;
            let span = u64::from(last.offset + last.length - first.offset);
            assert!(span <= PIECE || r.blobs.len() == 1, "span {span}");
        }
    }
}
