//! How big snapshots are: as restored (`restore-size`), or as the distinct
//! blobs they reference (`raw-data`), next to what the repository holds.
//!
//! `restore-size` sums every entry's size, directory by directory, and
//! remembers each subtree's totals: a subtree that thirty nightly
//! snapshots share is read once. `raw-data` builds the used set in the
//! index cache's temporary tables ([`crate::repository::used`]) and sums
//! it there, so memory does not grow with the number of blobs.

use crate::blob::{BlobKind, BlobSource};
use crate::error::Result;
use crate::id::BlobId;
use crate::index::BlobTotals;
use crate::repository::Repository;
use crate::snapshot::tree::{NodeKind, Tree};
use crate::snapshot::walk::load_tree;
use std::collections::HashMap;

/// What restoring the snapshots would write. A hard-linked file counts
/// once per name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreSize {
    pub files: u64,
    pub dirs: u64,
    /// Symlinks, devices, FIFOs, sockets.
    pub others: u64,
    /// Sum of the files' sizes.
    pub bytes: u64,
}

impl RestoreSize {
    pub fn add(&mut self, o: &RestoreSize) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.others += o.others;
        self.bytes += o.bytes;
    }
}

/// What restoring some snapshots would write, and the damaged objects
/// skipped on the way (an index segment, a snapshot), each named once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreSizes {
    pub total: RestoreSize,
    pub damaged: Vec<String>,
}

/// [`restore_size`] of each tree in `roots`, summed (a subtree shared by
/// several is read once).
pub fn restore_sizes(source: &dyn BlobSource, roots: &[BlobId]) -> Result<RestoreSizes> {
    let mut memo = SubtreeTotals::default();
    let mut total = RestoreSize::default();
    for r in roots {
        total.add(&restore_size(source, r, &mut memo)?);
    }
    Ok(RestoreSizes {
        total,
        damaged: source.take_damaged(),
    })
}

/// Totals of subtrees already summed, shared by the snapshots of one run.
/// Bounded: past `SubtreeTotals::LIMIT` entries it starts over, which
/// costs only speed.
#[derive(Default)]
pub struct SubtreeTotals {
    done: HashMap<BlobId, RestoreSize>,
    /// Trees read so far.
    pub trees_loaded: u64,
}

impl SubtreeTotals {
    /// About 150 MiB at most.
    const LIMIT: usize = 2_000_000;

    fn insert(&mut self, id: BlobId, t: RestoreSize) {
        if self.done.len() >= Self::LIMIT {
            self.done.clear();
        }
        self.done.insert(id, t);
    }
}

/// What restoring the tree `root` would write (the root itself not counted).
pub fn restore_size(
    source: &dyn BlobSource,
    root: &BlobId,
    memo: &mut SubtreeTotals,
) -> Result<RestoreSize> {
    struct Frame {
        id: BlobId,
        tree: Tree,
        next: usize,
        sum: RestoreSize,
    }
    if let Some(t) = memo.done.get(root) {
        return Ok(*t);
    }
    memo.trees_loaded += 1;
    let mut stack = vec![Frame {
        id: *root,
        tree: load_tree(source, root)?,
        next: 0,
        sum: RestoreSize::default(),
    }];
    loop {
        let Some(top) = stack.last_mut() else {
            unreachable!("the root frame returns below")
        };
        let Some(n) = top.tree.nodes.get(top.next) else {
            let done = stack.pop().unwrap_or_else(|| unreachable!());
            memo.insert(done.id, done.sum);
            match stack.last_mut() {
                Some(parent) => parent.sum.add(&done.sum),
                None => return Ok(done.sum),
            }
            continue;
        };
        top.next += 1;
        match n.kind {
            NodeKind::File => {
                top.sum.files += 1;
                top.sum.bytes += n.size;
            }
            NodeKind::Dir => top.sum.dirs += 1,
            _ => top.sum.others += 1,
        }
        let Some(sub) = n.subtree.filter(|_| n.kind == NodeKind::Dir) else {
            continue;
        };
        if let Some(t) = memo.done.get(&sub) {
            let t = *t;
            top.sum.add(&t);
            continue;
        }
        memo.trees_loaded += 1;
        let tree = load_tree(source, &sub)?;
        stack.push(Frame {
            id: sub,
            tree,
            next: 0,
            sum: RestoreSize::default(),
        });
    }
}

/// Distinct blobs referenced by some snapshots, and what the repository
/// holds in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawData {
    /// Referenced by the snapshots, by kind.
    pub referenced: Vec<BlobTotals>,
    /// Everything indexed, by kind (referenced or not).
    pub repository: Vec<BlobTotals>,
    pub packs: u64,
    pub pack_bytes: u64,
    /// Temporary files killed writes left (no object, only space), and
    /// their bytes: prune removes those older than an hour.
    pub temp_files: u64,
    pub temp_bytes: u64,
    /// Copies of blobs beyond the first (concurrent backups each storing
    /// the same data): their count and stored bytes, which prune frees.
    pub duplicate_blobs: u64,
    pub duplicate_bytes: u64,
    /// Damaged objects skipped on the way (an index segment, a snapshot),
    /// each named once.
    pub damaged: Vec<String>,
}

impl RawData {
    pub fn sum(list: &[BlobTotals]) -> BlobTotals {
        list.iter().fold(
            BlobTotals {
                kind: BlobKind::Data,
                count: 0,
                stored_bytes: 0,
                raw_bytes: 0,
            },
            |mut a, t| {
                a.count += t.count;
                a.stored_bytes += t.stored_bytes;
                a.raw_bytes += t.raw_bytes;
                a
            },
        )
    }
}

/// The distinct blobs below `roots`, summed in the index cache.
pub fn raw_data(repo: &Repository, roots: &[BlobId]) -> Result<RawData> {
    let mut used = repo.used_set()?;
    for r in roots {
        used.add_tree(r)?;
    }
    used.finish()?;
    let idx = repo.index()?;
    let (_, packs) = idx.counts()?;
    let (temp_files, temp_bytes) = repo.temp_usage()?;
    let (duplicate_blobs, duplicate_bytes) = idx.duplicates()?;
    Ok(RawData {
        temp_files,
        temp_bytes,
        referenced: idx.blob_totals(true)?,
        repository: idx.blob_totals(false)?,
        packs,
        pack_bytes: idx.packs_bytes()?,
        duplicate_blobs,
        duplicate_bytes,
        damaged: repo.take_damaged(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobSink;
    use crate::repository::blob_store::BlobStore;
    use crate::snapshot::tree::Node;
    use std::sync::Arc;

    fn store_tree(sink: &dyn BlobSink, nodes: Vec<Node>) -> BlobId {
        let mut t = Tree { nodes };
        t.sort();
        let bytes = t.encode();
        let id = sink.blob_id(&bytes);
        sink.store_blob(BlobKind::Tree, id, &bytes).unwrap();
        id
    }

    fn file(sink: &dyn BlobSink, name: &str, data: &[u8]) -> Node {
        let id = sink.blob_id(data);
        sink.store_blob(BlobKind::Data, id, data).unwrap();
        let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::File);
        n.content = vec![id];
        n.size = data.len() as u64;
        n
    }

    fn dir(name: &str, sub: BlobId) -> Node {
        let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::Dir);
        n.subtree = Some(sub);
        n
    }

    /// The damaged segment a run skipped is in its outcome, once: the
    /// next operation on the same repository does not report it again.
    #[test]
    fn restore_sizes_names_the_damaged_segment_it_skipped_once() {
        use crate::backend::{Backend, FileKind};
        let (backend, repo) = crate::repository::memory_repo();
        let repo = Arc::new(repo);
        let store = BlobStore::new(repo.clone()).unwrap();
        let root = store_tree(&store, vec![file(&store, "a", b"kept")]);
        store.finish().unwrap();
        let first = repo.segment_ids().unwrap();
        let store = BlobStore::new(repo.clone()).unwrap();
        file(&store, "b", b"in the segment that is damaged");
        store.finish().unwrap();
        let seg = repo.segment_ids().unwrap();
        let seg = seg.iter().find(|s| !first.contains(s)).unwrap().to_hex();
        backend.delete(FileKind::Index, &seg).unwrap();
        backend
            .put(FileKind::Index, &seg, b"not a segment")
            .unwrap();
        let dyn_backend: Arc<dyn Backend> = backend.clone();
        let secret = crate::repository::Secret::Passphrase(zeroize::Zeroizing::new(b"pw".to_vec()));
        let again = Repository::open(dyn_backend, &secret).unwrap();
        let r = restore_sizes(&again, &[root]).unwrap();
        assert_eq!(r.total.files, 1);
        assert_eq!(r.damaged.len(), 1, "{:?}", r.damaged);
        assert!(r.damaged[0].contains(&seg), "{:?}", r.damaged);
        assert!(restore_sizes(&again, &[root]).unwrap().damaged.is_empty());
    }

    #[test]
    fn restore_size_and_raw_data_of_two_snapshots_sharing_a_subtree() {
        let (_, repo) = crate::repository::memory_repo();
        let repo = Arc::new(repo);
        let store = BlobStore::new(repo.clone()).unwrap();
        let shared_data = vec![7u8; 10_000];
        let shared = store_tree(&store, vec![file(&store, "big", &shared_data)]);
        let mut link = Node::new(b"link".to_vec(), NodeKind::Symlink);
        link.link_target = b"big".to_vec();
        let day1 = store_tree(
            &store,
            vec![
                dir("models", shared),
                file(&store, "a", b"first day"),
                link.clone(),
            ],
        );
        let day2 = store_tree(
            &store,
            vec![
                dir("models", shared),
                file(&store, "a", b"second day!"),
                link,
            ],
        );
        // Unreferenced: counted in the repository, not in the snapshots.
        let stray = b"stray blob, no snapshot refers to it";
        store
            .store_blob(BlobKind::Data, store.blob_id(stray), stray)
            .unwrap();
        store.finish().unwrap();

        let mut memo = SubtreeTotals::default();
        let s1 = restore_size(repo.as_ref(), &day1, &mut memo).unwrap();
        assert_eq!(
            s1,
            RestoreSize {
                files: 2,
                dirs: 1,
                others: 1,
                bytes: 10_000 + 9
            }
        );
        let s2 = restore_size(repo.as_ref(), &day2, &mut memo).unwrap();
        assert_eq!(s2.bytes, 10_000 + 11);
        // day1, shared, day2: the shared subtree was summed once.
        assert_eq!(memo.trees_loaded, 3);

        let raw = raw_data(&repo, &[day1, day2]).unwrap();
        let data = raw
            .referenced
            .iter()
            .find(|t| t.kind == BlobKind::Data)
            .unwrap();
        assert_eq!(data.count, 3);
        assert_eq!(data.raw_bytes, 10_000 + 9 + 11);
        assert!(data.stored_bytes < 10_000, "the zeros compress");
        let trees = raw
            .referenced
            .iter()
            .find(|t| t.kind == BlobKind::Tree)
            .unwrap();
        assert_eq!(trees.count, 3);
        let all = RawData::sum(&raw.repository);
        assert_eq!(all.count, 3 + 3 + 1);
        assert!(raw.packs >= 1 && raw.pack_bytes > all.stored_bytes);
        assert_eq!((raw.duplicate_blobs, raw.duplicate_bytes), (0, 0));
    }
}
