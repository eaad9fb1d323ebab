//! Decoded data blobs kept in memory, bounded in bytes, least recently
//! used out first; and the blobs being read right now, so that a read and
//! the read-ahead worker never fetch the same blob twice at once.

use crate::blob::{BlobKind, BlobSource};
use crate::error::Result;
use crate::id::BlobId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub(crate) type Bytes = Arc<Vec<u8>>;

#[derive(Default)]
struct Lru {
    blobs: HashMap<BlobId, (Bytes, u64)>,
    /// Last use → blob, oldest first.
    order: BTreeMap<u64, BlobId>,
    tick: u64,
    bytes: usize,
    /// Blobs some thread is reading from the repository.
    loading: HashSet<BlobId>,
}

impl Lru {
    fn touch(&mut self, id: &BlobId) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        let (data, used) = self.blobs.get_mut(id)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, *id);
        Some(data.clone())
    }

    fn insert(&mut self, id: BlobId, data: Bytes, limit: usize) {
        if data.len() > limit || self.blobs.contains_key(&id) {
            return;
        }
        self.tick += 1;
        self.bytes += data.len();
        self.order.insert(self.tick, id);
        self.blobs.insert(id, (data, self.tick));
        while self.bytes > limit {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some((d, _)) = self.blobs.remove(&old) {
                self.bytes -= d.len();
            }
        }
    }
}

/// The blob cache of one mount.
pub(crate) struct BlobCache {
    limit: usize,
    state: Mutex<Lru>,
    loaded: Condvar,
}

impl BlobCache {
    pub(crate) fn new(limit: usize) -> BlobCache {
        BlobCache {
            limit,
            state: Mutex::new(Lru::default()),
            loaded: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        // A panic elsewhere cannot leave the map half updated in a way that
        // matters: at worst a blob is read again.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn contains(&self, id: &BlobId) -> bool {
        let s = self.lock();
        s.blobs.contains_key(id) || s.loading.contains(id)
    }

    /// The data blob `id`, from memory or read (authenticated, re-hashed)
    /// from `src`; waits for a read of it already under way.
    pub(crate) fn get(&self, src: &dyn BlobSource, id: &BlobId) -> Result<Bytes> {
        let mut s = self.lock();
        loop {
            if let Some(d) = s.touch(id) {
                return Ok(d);
            }
            if !s.loading.contains(id) {
                break;
            }
            s = self.loaded.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.loading.insert(*id);
        drop(s);
        let read = src.read_blob(BlobKind::Data, id).map(Arc::new);
        let mut s = self.lock();
        s.loading.remove(id);
        if let Ok(d) = &read {
            s.insert(*id, d.clone(), self.limit);
        }
        drop(s);
        self.loaded.notify_all();
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize);
    impl BlobSource for Counting {
        fn read_blob(&self, _: BlobKind, id: &BlobId) -> Result<Vec<u8>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            if id.0[0] == 0xff {
                return Err(Error::corrupt("pack x", "bad"));
            }
            Ok(vec![id.0[0]; 100])
        }
    }

    #[test]
    fn keeps_recent_blobs_within_the_byte_limit() {
        let src = Counting(AtomicUsize::new(0));
        let c = BlobCache::new(250);
        let (a, b, d) = (BlobId([1; 32]), BlobId([2; 32]), BlobId([3; 32]));
        c.get(&src, &a).unwrap();
        c.get(&src, &b).unwrap();
        c.get(&src, &a).unwrap();
        assert_eq!(src.0.load(Ordering::Relaxed), 2);
        // A third blob pushes out the least recently used one, b.
        c.get(&src, &d).unwrap();
        assert!(c.contains(&a) && c.contains(&d) && !c.contains(&b));
        assert!(c.lock().bytes <= 250);
    }

    #[test]
    fn a_failed_read_is_not_cached() {
        let src = Counting(AtomicUsize::new(0));
        let c = BlobCache::new(1000);
        let bad = BlobId([0xff; 32]);
        assert!(c.get(&src, &bad).is_err());
        assert!(c.get(&src, &bad).is_err());
        assert_eq!(src.0.load(Ordering::Relaxed), 2);
        assert!(!c.contains(&bad));
    }
}
