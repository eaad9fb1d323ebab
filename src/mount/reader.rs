//! Reading a file of a snapshot at any offset: the blob offsets are worked
//! out once per open file (from the index's blob lengths), a read fetches
//! only the blobs that cover its range, and reads that go forward through
//! a file start the next blobs in the background (read-ahead).

use super::cache::BlobCache;
use crate::blob::PackedBlobSource;
use crate::error::{Error, Result};
use crate::id::BlobId;
use crossbeam_channel::{Sender, unbounded};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a mount reads blobs from.
pub type Source = Arc<dyn PackedBlobSource + Send + Sync>;

/// At most this many bytes are read ahead of a sequential reader, and at
/// most a quarter of the cache, so read-ahead never evicts what it fetched
/// before it is used.
const READ_AHEAD_MAX: u64 = 32 << 20;
/// Threads that fetch blobs ahead of sequential readers.
const READ_AHEAD_THREADS: usize = 2;

/// The blob source and cache every open file of a mount shares.
pub(crate) struct Blobs {
    pub(crate) src: Source,
    cache: Arc<BlobCache>,
    ahead: Sender<BlobId>,
    ahead_bytes: u64,
}

impl Blobs {
    pub(crate) fn new(src: Source, cache_bytes: usize) -> Blobs {
        let cache = Arc::new(BlobCache::new(cache_bytes));
        let (tx, rx) = unbounded::<BlobId>();
        for n in 0..READ_AHEAD_THREADS {
            let (rx, cache, src) = (rx.clone(), cache.clone(), src.clone());
            // Without the thread, reads are only slower: no read-ahead.
            let _ = std::thread::Builder::new()
                .name(format!("coffer-ahead-{n}"))
                .spawn(move || {
                    for id in rx {
                        if !cache.contains(&id) {
                            // A failure is reported by the read that needs it.
                            let _ = cache.get(src.as_ref(), &id);
                        }
                    }
                });
        }
        Blobs {
            src,
            cache,
            ahead: tx,
            ahead_bytes: READ_AHEAD_MAX.min(cache_bytes as u64 / 4),
        }
    }
}

/// A file opened through the mount.
pub(crate) struct OpenFile {
    ids: Vec<BlobId>,
    /// `ends[i]`: the offset just past blob `i`.
    ends: Vec<u64>,
    /// The last blob the previous read used (`usize::MAX`: none yet).
    last_used: AtomicUsize,
    /// Blobs before this one were handed to read-ahead.
    queued: AtomicUsize,
}

impl OpenFile {
    /// Look up the lengths of `content`'s blobs in the index; a blob the
    /// index does not know makes the file unreadable.
    pub(crate) fn open(src: &dyn PackedBlobSource, content: &[BlobId]) -> Result<OpenFile> {
        let places = src.locate_many(content)?;
        let mut ends = Vec::with_capacity(content.len());
        let mut end = 0u64;
        for (id, place) in content.iter().zip(places) {
            let place = place.ok_or_else(|| Error::BlobMissing { id: id.to_hex() })?;
            end += u64::from(place.raw_length);
            ends.push(end);
        }
        Ok(OpenFile {
            ids: content.to_vec(),
            ends,
            last_used: AtomicUsize::new(usize::MAX),
            queued: AtomicUsize::new(0),
        })
    }

    fn start(&self, i: usize) -> u64 {
        if i == 0 { 0 } else { self.ends[i - 1] }
    }

    /// Up to `len` bytes at `offset` (fewer at the end of the file).
    pub(crate) fn read(&self, blobs: &Blobs, offset: u64, len: u32) -> Result<Vec<u8>> {
        let total = self.ends.last().copied().unwrap_or(0);
        let end = offset.saturating_add(u64::from(len)).min(total);
        if offset >= end {
            return Ok(Vec::new());
        }
        let first = self.ends.partition_point(|&e| e <= offset);
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut i = first;
        while self.start(i) < end {
            let data = blobs.cache.get(blobs.src.as_ref(), &self.ids[i])?;
            let start = self.start(i);
            if data.len() as u64 != self.ends[i] - start {
                return Err(Error::corrupt(
                    format!("blob {}", self.ids[i]),
                    format!(
                        "holds {} bytes where the index says {}",
                        data.len(),
                        self.ends[i] - start
                    ),
                ));
            }
            let from = (offset.max(start) - start) as usize;
            let to = (end.min(self.ends[i]) - start) as usize;
            out.extend_from_slice(&data[from..to]);
            i += 1;
        }
        self.read_ahead(blobs, first, i - 1);
        Ok(out)
    }

    /// After a read of blobs `first..=last`: when it went on from the
    /// previous read, queue the blobs after it, up to the read-ahead window.
    fn read_ahead(&self, blobs: &Blobs, first: usize, last: usize) {
        let prev = self.last_used.swap(last, Ordering::Relaxed);
        let sequential = if prev == usize::MAX {
            first == 0
        } else {
            first == prev || first == prev + 1
        };
        if !sequential || blobs.ahead_bytes == 0 {
            return;
        }
        let limit = self.ends[last] + blobs.ahead_bytes;
        let from = self.queued.load(Ordering::Relaxed).max(last + 1);
        let mut to = from;
        while to < self.ids.len() && self.ends[to] <= limit {
            to += 1;
        }
        if to <= from || self.queued.fetch_max(to, Ordering::Relaxed) >= to {
            return;
        }
        for id in &self.ids[from..to] {
            let _ = blobs.ahead.send(*id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{BlobKind, BlobPlace, BlobSource};
    use crate::id::PackId;

    /// Blob `i` is `len` bytes of value `i`; blob 9 is damaged.
    struct Fake;
    fn blob_len(id: &BlobId) -> u32 {
        u32::from(id.0[1]) * 10
    }
    impl BlobSource for Fake {
        fn read_blob(&self, _: BlobKind, id: &BlobId) -> Result<Vec<u8>> {
            if id.0[0] == 9 {
                return Err(Error::corrupt("pack p", "damaged"));
            }
            Ok(vec![id.0[0]; blob_len(id) as usize])
        }
    }
    impl PackedBlobSource for Fake {
        fn locate(&self, id: &BlobId) -> Result<Option<BlobPlace>> {
            Ok((id.0[0] != 7).then_some(BlobPlace {
                kind: BlobKind::Data,
                pack: PackId([0; 32]),
                offset: 0,
                length: 0,
                raw_length: blob_len(id),
            }))
        }
        fn read_pack_range(&self, _: &PackId, _: u64, _: usize) -> Result<Vec<u8>> {
            unreachable!()
        }
        fn open_sealed(&self, _: &BlobId, _: &BlobPlace, _: &[u8]) -> Result<Vec<u8>> {
            unreachable!()
        }
        fn data_id(&self, _: &[u8]) -> BlobId {
            unreachable!()
        }
    }

    fn id(value: u8, tens: u8) -> BlobId {
        let mut b = [0; 32];
        b[0] = value;
        b[1] = tens;
        BlobId(b)
    }

    #[test]
    fn reads_any_range_across_blob_boundaries() {
        let blobs = Blobs::new(Arc::new(Fake), 1 << 20);
        let content = [id(1, 3), id(2, 1), id(3, 5)];
        let f = OpenFile::open(&Fake, &content).unwrap();
        let whole: Vec<u8> = [vec![1; 30], vec![2; 10], vec![3; 50]].concat();
        for off in 0..95u64 {
            for len in [0u32, 1, 7, 10, 25, 100] {
                let want = &whole[(off as usize).min(90)..((off + len as u64) as usize).min(90)];
                assert_eq!(f.read(&blobs, off, len).unwrap(), want, "{off}+{len}");
            }
        }
    }

    #[test]
    fn damaged_and_unknown_blobs_are_errors() {
        let blobs = Blobs::new(Arc::new(Fake), 1 << 20);
        let f = OpenFile::open(&Fake, &[id(1, 1), id(9, 1)]).unwrap();
        assert_eq!(f.read(&blobs, 0, 10).unwrap(), vec![1; 10]);
        assert!(f.read(&blobs, 5, 10).is_err());
        assert!(matches!(
            OpenFile::open(&Fake, &[id(7, 1)]),
            Err(Error::BlobMissing { .. })
        ));
    }
}
