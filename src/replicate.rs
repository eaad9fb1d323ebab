//! Copying snapshots into another repository: the offsite replica.
//!
//! Two cases, told apart by [`Repository::shares_ids_with`]:
//! - **Related** (the destination was made with `init --from-repo`, which
//!   shares the source's master key): the same data has the same ids and
//!   chunk cuts in both, so blobs and trees move unchanged, by id, and only
//!   those the destination lacks. Each is decrypted in the source and its
//!   body (still compressed) sealed anew, since the repository id is in
//!   every object's associated data; the destination's check before upload
//!   decodes and re-hashes it like any blob. Nothing is recompressed.
//! - **Unrelated** keys: the same plaintext has another id in the
//!   destination. Every content blob of a copied snapshot is read to learn
//!   its destination id (stored only when missing there), and every tree is
//!   rewritten with the new ids. The chunk cuts stay the source's, so later
//!   backups into the destination do not deduplicate against the copies
//!   (restic has the same limit without `--copy-chunker-params`).
//!
//! Per snapshot, in time order: walk its trees in the source, depth first;
//! copy the content blobs the destination lacks; store each tree after
//! everything below it; make it all durable ([`BlobStore::finish`]); write
//! the snapshot last (doc/design.md invariant 5). A copy that dies leaves only
//! packs nothing references, which the next run adopts instead of copying
//! again. A snapshot already in the destination (same time, host, user,
//! paths, tags and tree) is skipped, so a rerun copies only what is new.
//!
//! Between related repositories the walk skips a subtree the destination
//! is known to hold completely:
//! one already copied in this run, or one that the newest snapshot of the
//! same host and paths in the destination has at the same path, when that
//! snapshot carries the index's "complete" mark. A nightly copy therefore
//! reads only the trees along the paths that changed. A tree that merely
//! exists in the destination is not trusted that way: an interrupted copy
//! can leave a tree indexed whose content packs never were.
//!
//! The source is only read (a shared lock aside, which the caller takes).

use crate::blob::{BlobKind, BlobSink, BlobSource};
use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::progress::Progress;
use crate::repository::Repository;
use crate::repository::blob_store::BlobStore;
use crate::snapshot::Snapshot;
use crate::snapshot::tree::{NodeKind, Tree};
use crate::snapshot::walk::load_tree;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Content blobs read and stored at once: bounds the plaintexts in memory
/// (each at most one maximal chunk) while every core seals.
const BLOB_BATCH: usize = 16;
/// Content ids looked up in the destination's index at once.
const LOOKUP_BATCH: usize = 4096;

/// What happened to one source snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyOutcome {
    pub source: SnapshotId,
    /// Its id in the destination: the new copy, or the copy found there.
    pub destination: SnapshotId,
    /// False when the destination already held it.
    pub copied: bool,
    pub stats: CopyStats,
}

/// What a copy did, and the damaged objects it skipped on each side (a
/// snapshot that does not read, an index segment), each named once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyRun {
    pub snapshots: Vec<CopyOutcome>,
    pub source_damaged: Vec<String>,
    pub destination_damaged: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub trees_read: u64,
    /// Subtrees not walked: the destination holds them completely.
    pub trees_skipped: u64,
    pub trees_copied: u64,
    pub blobs_copied: u64,
    /// Plaintext bytes of the content blobs copied.
    pub bytes_copied: u64,
    /// Bytes the destination grew by (compressed and encrypted).
    pub bytes_added: u64,
}

/// One snapshot's [`CopyStats`] as they grow, each copied blob also
/// reported to the progress display.
struct Tally<'a> {
    counts: CopyStats,
    progress: &'a dyn Progress,
}

impl Tally<'_> {
    fn blob_copied(&mut self, raw: u64, added: u64) {
        self.counts.blobs_copied += 1;
        self.counts.bytes_copied += raw;
        self.counts.bytes_added += added;
        self.progress.bytes_done(raw);
    }
}

/// The same backup in both repositories? Everything but the parent,
/// which names a snapshot of the repository it is in, and, between
/// unrelated repositories (`same_ids` false), the tree, whose id differs.
pub(crate) fn same_snapshot(a: &Snapshot, b: &Snapshot, same_ids: bool) -> bool {
    a.time_ns == b.time_ns
        && (a.tree == b.tree || !same_ids)
        && a.hostname == b.hostname
        && a.username == b.username
        && a.uid == b.uid
        && a.gid == b.gid
        && a.paths == b.paths
        && a.tags == b.tags
}

/// Trees this run has copied or found complete. Bounded: past
/// [`Done::LIMIT`] it starts over, which costs only speed.
#[derive(Default)]
struct Done(HashSet<BlobId>);

impl Done {
    const LIMIT: usize = 2_000_000;

    fn insert(&mut self, id: BlobId) {
        if self.0.len() >= Self::LIMIT {
            self.0.clear();
        }
        self.0.insert(id);
    }
}

/// Copy `snaps` (of `src`) into `dst`, oldest first, calling `done` after
/// each. Stops at the first error; the snapshots copied before it stay.
/// `progress` counts snapshots and the source bytes read to copy them.
pub fn copy_snapshots(
    src: &Repository,
    dst: &Arc<Repository>,
    snaps: &[(SnapshotId, Snapshot)],
    progress: &dyn Progress,
    done: impl FnMut(&CopyOutcome),
) -> Result<CopyRun> {
    Ok(CopyRun {
        snapshots: copy_each(src, dst, snaps, progress, done)?,
        source_damaged: src.take_damaged(),
        destination_damaged: dst.take_damaged(),
    })
}

fn copy_each(
    src: &Repository,
    dst: &Arc<Repository>,
    snaps: &[(SnapshotId, Snapshot)],
    progress: &dyn Progress,
    mut done: impl FnMut(&CopyOutcome),
) -> Result<Vec<CopyOutcome>> {
    if src.id() == dst.id() {
        return Err(Error::Usage(
            "the source and the destination are the same repository".into(),
        ));
    }
    let same_ids = src.shares_ids_with(dst);
    src.index()?;
    let mut order: Vec<&(SnapshotId, Snapshot)> = snaps.iter().collect();
    order.sort_by(|a, b| a.1.time_ns.cmp(&b.1.time_ns).then(a.0.cmp(&b.0)));
    let mut existing = dst.list_snapshots()?;
    let mut trees_done = Done::default();
    let mut rekey = Rekey::default();
    let mut out = Vec::new();
    // How many bytes a snapshot needs is learnt only by walking it.
    progress.scan_total(order.len() as u64, 0);
    for (sid, snap) in order {
        if let Some((did, _)) = existing
            .iter()
            .find(|(_, d)| same_snapshot(snap, d, same_ids))
        {
            let o = CopyOutcome {
                source: *sid,
                destination: *did,
                copied: false,
                stats: CopyStats::default(),
            };
            progress.item_done();
            done(&o);
            out.push(o);
            continue;
        }
        let store = BlobStore::new(dst.clone())?;
        let mut stats = Tally {
            counts: CopyStats::default(),
            progress,
        };
        let tree = if same_ids {
            let reference = complete_reference(dst, &existing, snap);
            copy_tree(
                src,
                dst,
                &store,
                snap.tree,
                reference,
                &mut trees_done,
                &mut stats,
            )?;
            snap.tree
        } else {
            copy_tree_rekeyed(src, &store, snap.tree, &mut rekey, &mut stats)?
        };
        store.finish()?;
        // The parent, where the destination holds a copy of it.
        let parent = snap.parent.and_then(|p| {
            let orig = match snaps.iter().find(|(id, _)| *id == p) {
                Some((_, s)) => s.clone(),
                None => src.load_snapshot(&p).ok()?,
            };
            existing
                .iter()
                .find(|(_, d)| same_snapshot(&orig, d, same_ids))
                .map(|(id, _)| *id)
        });
        let copy = Snapshot {
            parent,
            tree,
            ..snap.clone()
        };
        let did = dst.save_snapshot(&copy)?;
        // Every blob it names is indexed now; only a hint for later runs.
        let _ = dst.index().and_then(|i| i.mark_complete(&did));
        existing.push((did, copy));
        let o = CopyOutcome {
            source: *sid,
            destination: did,
            copied: true,
            stats: stats.counts,
        };
        progress.item_done();
        done(&o);
        out.push(o);
    }
    Ok(out)
}

/// The root of the newest destination snapshot of the same host and paths
/// whose blobs the index vouches for, if any.
fn complete_reference(
    dst: &Repository,
    existing: &[(SnapshotId, Snapshot)],
    snap: &Snapshot,
) -> Option<BlobId> {
    let idx = dst.index().ok()?;
    existing
        .iter()
        .filter(|(_, d)| d.hostname == snap.hostname && d.paths == snap.paths)
        .filter(|(id, _)| idx.is_complete(id).unwrap_or(false))
        .max_by_key(|(_, d)| d.time_ns)
        .map(|(_, d)| d.tree)
}

struct Frame {
    id: BlobId,
    tree: Tree,
    /// The destination's tree at the same path, known complete.
    reference: Option<Tree>,
    next: usize,
}

/// Copy the tree `root` and everything below it that the destination lacks.
fn copy_tree(
    src: &Repository,
    dst: &Repository,
    store: &BlobStore,
    root: BlobId,
    reference: Option<BlobId>,
    trees_done: &mut Done,
    stats: &mut Tally,
) -> Result<()> {
    if reference == Some(root) || trees_done.0.contains(&root) {
        stats.counts.trees_skipped += 1;
        return Ok(());
    }
    let mut stack = vec![open_frame(src, dst, store, root, reference, stats)?];
    while let Some(top) = stack.last_mut() {
        if let Some(n) = top.tree.nodes.get(top.next) {
            top.next += 1;
            let Some(sub) = n.subtree.filter(|_| n.kind == NodeKind::Dir) else {
                continue;
            };
            let ref_sub = top
                .reference
                .as_ref()
                .and_then(|r| r.find(&n.name))
                .filter(|r| r.kind == NodeKind::Dir)
                .and_then(|r| r.subtree);
            if ref_sub == Some(sub) || trees_done.0.contains(&sub) {
                stats.counts.trees_skipped += 1;
                continue;
            }
            let frame = open_frame(src, dst, store, sub, ref_sub, stats)?;
            stack.push(frame);
            continue;
        }
        let f = stack.pop().unwrap_or_else(|| unreachable!());
        // Everything below is stored or queued: now the tree itself.
        if !store.has_blob(&f.id)? {
            let bytes = f.tree.encode();
            if store.blob_id(&bytes) != f.id {
                return Err(Error::corrupt(
                    format!("tree {}", f.id),
                    "it does not encode back to the bytes its id names",
                ));
            }
            stats.counts.bytes_added += store.store_blob(BlobKind::Tree, f.id, &bytes)?;
            stats.counts.trees_copied += 1;
        }
        trees_done.insert(f.id);
    }
    Ok(())
}

/// Read one source tree and copy the content blobs of its files that the
/// destination lacks (files unchanged against the reference are skipped).
fn open_frame(
    src: &Repository,
    dst: &Repository,
    store: &BlobStore,
    id: BlobId,
    reference: Option<BlobId>,
    stats: &mut Tally,
) -> Result<Frame> {
    let tree = load_tree(src, &id)?;
    stats.counts.trees_read += 1;
    // Unreadable in the destination: no reference, so nothing is skipped.
    let reference = reference.and_then(|r| load_tree(dst, &r).ok());
    let mut ids: Vec<BlobId> = tree
        .nodes
        .iter()
        .filter(|n| !n.content.is_empty())
        .filter(|n| {
            let same = reference
                .as_ref()
                .and_then(|r| r.find(&n.name))
                .is_some_and(|r| r.content == n.content);
            !same
        })
        .flat_map(|n| n.content.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    for part in ids.chunks(LOOKUP_BATCH) {
        let known = store.known_blobs(part)?;
        let missing: Vec<BlobId> = part
            .iter()
            .filter(|i| !known.contains(i))
            .copied()
            .collect();
        for batch in missing.chunks(BLOB_BATCH) {
            let copied: Vec<(u64, u64)> = batch
                .par_iter()
                .map(|id| {
                    let (body, raw) = src.read_blob_body(BlobKind::Data, id)?;
                    let added = store.store_body(BlobKind::Data, *id, raw, &body)?;
                    Ok((u64::from(raw), added))
                })
                .collect::<Result<_>>()?;
            for (raw, added) in copied {
                stats.blob_copied(raw, added);
            }
        }
    }
    Ok(Frame {
        id,
        tree,
        reference,
        next: 0,
    })
}

/// Source ids and the ids the same plaintext has in an unrelated
/// destination, learnt during one run. Bounded like [`Done`]: forgetting
/// costs a re-read, never a wrong id (each is a pure function of content).
#[derive(Default)]
struct Rekey {
    blobs: HashMap<BlobId, BlobId>,
    trees: HashMap<BlobId, BlobId>,
}

impl Rekey {
    const LIMIT: usize = 2_000_000;

    fn remember(map: &mut HashMap<BlobId, BlobId>, from: BlobId, to: BlobId) {
        if map.len() >= Self::LIMIT {
            map.clear();
        }
        map.insert(from, to);
    }
}

/// Copy the tree `root` into a destination with unrelated keys, rewriting
/// every id; returns the root's id there. Depth first, one tree per level.
fn copy_tree_rekeyed(
    src: &Repository,
    store: &BlobStore,
    root: BlobId,
    rekey: &mut Rekey,
    stats: &mut Tally,
) -> Result<BlobId> {
    struct Frame {
        id: BlobId,
        /// The source tree, its ids rewritten as they become known.
        tree: Tree,
        next: usize,
    }
    if let Some(t) = rekey.trees.get(&root) {
        stats.counts.trees_skipped += 1;
        return Ok(*t);
    }
    let open = |id: BlobId, rekey: &mut Rekey, stats: &mut Tally| -> Result<Frame> {
        let mut tree = load_tree(src, &id)?;
        stats.counts.trees_read += 1;
        rekey_content(src, store, &mut tree, rekey, stats)?;
        Ok(Frame { id, tree, next: 0 })
    };
    let mut stack = vec![open(root, rekey, stats)?];
    loop {
        let Some(top) = stack.last_mut() else {
            unreachable!("the root frame returns below")
        };
        if let Some(n) = top.tree.nodes.get_mut(top.next) {
            top.next += 1;
            let Some(sub) = n.subtree.filter(|_| n.kind == NodeKind::Dir) else {
                continue;
            };
            if let Some(t) = rekey.trees.get(&sub) {
                n.subtree = Some(*t);
                stats.counts.trees_skipped += 1;
                continue;
            }
            let frame = open(sub, rekey, stats)?;
            stack.push(frame);
            continue;
        }
        let f = stack.pop().unwrap_or_else(|| unreachable!());
        let bytes = f.tree.encode();
        let new_id = store.blob_id(&bytes);
        let added = store.store_blob(BlobKind::Tree, new_id, &bytes)?;
        if added > 0 {
            stats.counts.trees_copied += 1;
            stats.counts.bytes_added += added;
        }
        Rekey::remember(&mut rekey.trees, f.id, new_id);
        match stack.last_mut() {
            Some(parent) => parent.tree.nodes[parent.next - 1].subtree = Some(new_id),
            None => return Ok(new_id),
        }
    }
}

/// Give every file of `tree` its content ids in the destination, storing
/// the blobs it lacks.
fn rekey_content(
    src: &Repository,
    store: &BlobStore,
    tree: &mut Tree,
    rekey: &mut Rekey,
    stats: &mut Tally,
) -> Result<()> {
    let mut todo: Vec<BlobId> = tree
        .nodes
        .iter()
        .flat_map(|n| n.content.iter().copied())
        .filter(|id| !rekey.blobs.contains_key(id))
        .collect();
    todo.sort_unstable();
    todo.dedup();
    let mut learnt: HashMap<BlobId, BlobId> = HashMap::new();
    for batch in todo.chunks(BLOB_BATCH) {
        let done: Vec<(BlobId, BlobId, u64, u64)> = batch
            .par_iter()
            .map(|id| {
                let data = src.read_blob(BlobKind::Data, id)?;
                let new_id = store.blob_id(&data);
                let added = store.store_blob(BlobKind::Data, new_id, &data)?;
                Ok((*id, new_id, data.len() as u64, added))
            })
            .collect::<Result<_>>()?;
        for (old, new, raw, added) in done {
            if added > 0 {
                stats.blob_copied(raw, added);
            }
            learnt.insert(old, new);
        }
    }
    for n in &mut tree.nodes {
        for id in &mut n.content {
            let new = learnt
                .get(id)
                .or_else(|| rekey.blobs.get(id))
                .copied()
                .ok_or_else(|| Error::BlobMissing { id: id.to_hex() })?;
            *id = new;
        }
    }
    for (old, new) in learnt {
        Rekey::remember(&mut rekey.blobs, old, new);
    }
    Ok(())
}
