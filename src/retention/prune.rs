//! Prune: give back the space of data no snapshot references.
//!
//! Plan (nothing is written): list snapshots and packs, mark every blob the
//! snapshots reference (walking each tree once, into a SQLite temporary
//! table, so memory does not grow with the repository), then classify each
//! pack: all used → keep; nothing used → delete; partly used with more than
//! `max_unused` of its bytes unused → repack. The plan is refused — nothing
//! deleted — when what was listed does not add up: a snapshot or index
//! segment that cannot be read, an indexed pack missing or of the wrong
//! size, or a used blob the index does not know (RELIABILITY.md §6.7).
//!
//! Execute, in the order that keeps every crash safe (RELIABILITY.md 4.B):
//! 1. copy the used blobs of packs to repack into new packs (their sealed
//!    bytes are moved as they are, after being authenticated and re-hashed),
//!    writing an index segment for them every `CHECKPOINT_BLOBS` blobs;
//! 2. write new index segments listing every pack that stays;
//! 3. delete the old index segments;
//! 4. delete the packs no longer indexed.
//!
//! A crash after 1 leaves unreferenced packs for the next prune; after 2,
//! duplicate index entries, which readers tolerate; during 3 or 4, packs
//! that nothing references. No step leaves a snapshot without its data.
//! Every write and delete first checks the exclusive lock is still held.

use crate::backend::FileKind;
use crate::blob::{BlobKind, BlobSource};
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId, SegmentId};
use crate::index::segment::{IndexedPack, Segment};
use crate::pack::writer::PackWriter;
use crate::pack::{SealedBlob, open_blob};
use crate::repository::Repository;
use crate::repository::blob_store::{CHECKPOINT_BLOBS, upload_pack};
use crate::snapshot::tree::{NodeKind, Tree};
use std::collections::{HashMap, HashSet};

#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Unused bytes to tolerate in the whole repository, as a share of the
    /// used bytes; the emptiest packs are repacked until the rest fits.
    pub max_unused: f64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { max_unused: 0.05 }
    }
}

#[derive(Clone, Debug, Default)]
pub struct PrunePlan {
    pub snapshots: usize,
    pub used_blobs: u64,
    pub packs_total: u64,
    pub bytes_total: u64,
    pub bytes_used: u64,
    /// Indexed packs with no used blob.
    pub delete: Vec<(PackId, u64)>,
    /// Partly used packs to rewrite.
    pub repack: Vec<(PackId, u64)>,
    /// Packs in the repository that no index segment lists (left by an
    /// interrupted backup or prune): nothing can reference their blobs.
    pub unindexed: Vec<(String, u64)>,
    /// The segments listed when planning; replaced on execution.
    pub old_segments: Vec<SegmentId>,
}

impl PrunePlan {
    pub fn bytes_to_delete(&self) -> u64 {
        self.delete
            .iter()
            .chain(&self.repack)
            .map(|p| p.1)
            .sum::<u64>()
            + self.unindexed.iter().map(|p| p.1).sum::<u64>()
    }
    pub fn is_noop(&self) -> bool {
        self.delete.is_empty() && self.repack.is_empty() && self.unindexed.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub packs_written: u64,
    pub blobs_repacked: u64,
    pub bytes_freed: u64,
    pub segments_written: u64,
}

/// Mark every blob reachable from every snapshot in the index's used set.
/// Returns the number of snapshots walked.
pub fn mark_used(repo: &Repository) -> Result<usize> {
    let snaps = repo.list_snapshots()?;
    let idx = repo.index()?;
    let problems = repo.take_problems();
    if !problems.is_empty() {
        return Err(Error::Usage(format!(
            "refusing to prune: {} (a damaged snapshot or index segment may reference data that would be deleted; run `coffer check` and `coffer repair`)",
            problems.join("; ")
        )));
    }
    idx.used_reset()?;
    idx.refs_reset()?;
    for (sid, s) in &snaps {
        let mut stack = vec![s.tree];
        while let Some(tid) = stack.pop() {
            if !idx.used_insert(&tid)? {
                continue; // this tree, and so everything below it, is done
            }
            let bytes = repo.read_blob(BlobKind::Tree, &tid).map_err(|e| {
                Error::Usage(format!(
                    "refusing to prune: snapshot {} cannot be read completely: {e}",
                    sid.short()
                ))
            })?;
            let tree =
                Tree::decode(&bytes).map_err(|e| Error::corrupt(format!("tree {tid}"), e.0))?;
            let content: Vec<BlobId> = tree
                .nodes
                .iter()
                .flat_map(|n| n.content.iter().copied())
                .collect();
            // Appended, and sorted into the used set once at the end.
            idx.refs_add(&content)?;
            for n in &tree.nodes {
                if n.kind == NodeKind::Dir
                    && let Some(sub) = n.subtree
                {
                    stack.push(sub);
                }
            }
        }
    }
    idx.used_from_refs()?;
    Ok(snaps.len())
}

/// Work out what prune would do. Writes nothing.
pub fn plan(repo: &Repository, opts: &PruneOptions) -> Result<PrunePlan> {
    let old_segments: Vec<SegmentId> = repo
        .backend()
        .list(FileKind::Index)?
        .into_iter()
        .filter_map(|(n, _)| SegmentId::from_hex(&n))
        .collect();
    let snapshots = mark_used(repo)?;
    let idx = repo.index()?;
    let (usage, missing) = idx.usage(5)?;
    if !missing.is_empty() {
        let ids: Vec<String> = missing.iter().map(|b| b.to_hex()).collect();
        return Err(Error::Usage(format!(
            "refusing to prune: snapshots reference blobs the index does not know (e.g. {}): run `coffer check`, then `coffer repair index` or `coffer repair snapshots`",
            ids.join(", ")
        )));
    }
    let listed: HashMap<String, u64> = repo.backend().list(FileKind::Pack)?.into_iter().collect();
    let mut plan = PrunePlan {
        snapshots,
        old_segments,
        ..Default::default()
    };
    let mut indexed: HashSet<String> = HashSet::new();
    let mut partial = Vec::new();
    for u in usage {
        let name = u.pack.to_hex();
        match listed.get(&name) {
            None => {
                return Err(Error::Usage(format!(
                    "refusing to prune: the index lists pack {name}, which is missing from the repository: run `coffer check`"
                )));
            }
            Some(&size) if size != u.size => {
                return Err(Error::Usage(format!(
                    "refusing to prune: pack {name} is {size} bytes, the index says {}: run `coffer check`",
                    u.size
                )));
            }
            Some(_) => {}
        }
        indexed.insert(name);
        plan.packs_total += 1;
        plan.bytes_total += u.size;
        plan.bytes_used += u.used_bytes;
        plan.used_blobs += u.used_blobs;
        if u.used_blobs == 0 {
            plan.delete.push((u.pack, u.size));
        } else if u.used_blobs < u.blobs {
            partial.push(u);
        }
    }
    // Like restic, `max_unused` bounds the unused bytes of the whole
    // repository (as a share of the used bytes): repack the emptiest packs
    // first, and only until the rest is under the limit. Repacking every
    // pack past a per-pack threshold rewrote most of a nightly repository.
    let allowed = opts.max_unused * plan.bytes_used as f64;
    let mut unused: u64 = partial.iter().map(|u| u.bytes - u.used_bytes).sum();
    partial.sort_by(|a, b| {
        let fa = (a.bytes - a.used_bytes) as f64 / a.bytes.max(1) as f64;
        let fb = (b.bytes - b.used_bytes) as f64 / b.bytes.max(1) as f64;
        fb.total_cmp(&fa).then(a.pack.cmp(&b.pack))
    });
    for u in partial {
        if unused as f64 <= allowed {
            break;
        }
        unused -= u.bytes - u.used_bytes;
        plan.repack.push((u.pack, u.size));
    }
    for (name, size) in listed {
        if !indexed.contains(&name) {
            plan.unindexed.push((name, size));
        }
    }
    plan.unindexed.sort();
    Ok(plan)
}

/// Carry out a plan made by [`plan`] under the same exclusive lock.
pub fn execute(repo: &Repository, plan: &PrunePlan) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    if plan.is_noop() {
        return Ok(report);
    }
    let idx = repo.index()?;
    let dead: HashSet<PackId> = plan
        .delete
        .iter()
        .chain(&plan.repack)
        .map(|p| p.0)
        .collect();
    // The packs that stay.
    let live: Vec<(PackId, u64)> = idx
        .packs()?
        .into_iter()
        .filter(|(p, _)| !dead.contains(p))
        .collect();
    // 1. Repack: move each used blob that no surviving pack holds. The new
    // packs are indexed as they accumulate, like a backup's checkpoints: a
    // list of every repacked blob would grow with the repository. A crash
    // leaves their blobs indexed twice, which readers tolerate.
    let mut new_packs = Segment::default();
    let mut writer = PackWriter::new();
    // The cache learns the new segments only at the end (`retire`).
    let mut new_segments: Vec<SegmentId> = Vec::new();
    idx.prune_begin()?;
    let mut flush = |seg: &mut Segment, report: &mut PruneReport| -> Result<()> {
        if !seg.packs.is_empty() {
            new_segments.push(repo.save_segment(seg)?);
            report.segments_written += 1;
            *seg = Segment::default();
        }
        Ok(())
    };
    let upload = |p| -> Result<IndexedPack> {
        let p = upload_pack(repo, p)?;
        idx.stage_pack(&p)?;
        Ok(p)
    };
    for (pack, _) in &plan.repack {
        let name = pack.to_hex();
        let obj = FileKind::Pack.path(&name);
        let bytes = repo.backend().get(FileKind::Pack, &name)?;
        if crate::id::content_hash(&bytes) != pack.0 {
            return Err(Error::corrupt(
                obj,
                "content does not match its name; not repacked (run `coffer check --read-data`)",
            ));
        }
        for e in idx.pack_entries(pack)? {
            if !idx.used_contains(&e.id)? {
                continue;
            }
            if idx.packs_of(&e.id)?.iter().any(|p| !dead.contains(p)) {
                continue;
            }
            // Last: it records the blob as copied.
            if !idx.moved_insert(&e.id)? {
                continue;
            }
            let (s, l) = (e.offset as usize, e.length as usize);
            let Some(sealed) = bytes.get(s..s + l) else {
                return Err(Error::corrupt(
                    obj,
                    format!("blob {} lies outside the pack", e.id),
                ));
            };
            // Never carry a damaged blob into a new pack.
            open_blob(repo.keys(), repo.id(), &e, sealed)
                .map_err(|err| Error::corrupt(obj.clone(), err))?;
            writer.add(SealedBlob {
                kind: e.kind,
                id: e.id,
                bytes: sealed.to_vec(),
                raw_length: e.raw_length,
            });
            report.blobs_repacked += 1;
            if writer.len() >= repo.config().pack_size as usize {
                repo.ensure_lock()?;
                let p = std::mem::take(&mut writer).finish(repo.keys(), repo.id());
                new_packs.packs.push(upload(p)?);
                report.packs_written += 1;
                if new_packs.blob_count() >= CHECKPOINT_BLOBS {
                    flush(&mut new_packs, &mut report)?;
                }
            }
        }
        report.packs_repacked += 1;
    }
    if !writer.is_empty() {
        repo.ensure_lock()?;
        new_packs
            .packs
            .push(upload(writer.finish(repo.keys(), repo.id()))?);
        report.packs_written += 1;
    }
    // 2. The new index: every surviving pack, then the last new ones.
    let mut seg = Segment::default();
    let mut blobs = 0usize;
    for (pack, size) in live {
        let entries = idx.pack_entries(&pack)?;
        blobs += entries.len();
        seg.packs.push(IndexedPack {
            id: pack,
            size,
            entries,
        });
        if blobs >= CHECKPOINT_BLOBS {
            flush(&mut seg, &mut report)?;
            blobs = 0;
        }
    }
    seg.packs.append(&mut new_packs.packs);
    flush(&mut seg, &mut report)?;
    // The cache moves to the new segments before anything is deleted,
    // rather than being rebuilt from all of them afterwards.
    let retired: Vec<PackId> = dead.iter().copied().collect();
    idx.retire(&retired, &plan.old_segments, &new_segments)?;
    // 3. Old segments, then 4. old packs, each a batch that is durable
    // before the next step. A crash inside the pack batch can only bring
    // back packs no segment lists any more: prune removes them again.
    let segments: Vec<String> = plan.old_segments.iter().map(|s| s.to_hex()).collect();
    repo.delete_many(FileKind::Index, &segments)?;
    let packs: Vec<String> = plan
        .delete
        .iter()
        .chain(&plan.repack)
        .map(|(p, _)| p.to_hex())
        .chain(plan.unindexed.iter().map(|(n, _)| n.clone()))
        .collect();
    repo.delete_many(FileKind::Pack, &packs)?;
    for (_, size) in plan.delete.iter().chain(&plan.repack) {
        report.packs_deleted += 1;
        report.bytes_freed += size;
    }
    for (_, size) in &plan.unindexed {
        report.packs_deleted += 1;
        report.bytes_freed += size;
    }
    repo.refresh_index()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::memory::MemoryBackend;
    use crate::crypto::key_file::KdfParams;
    use crate::id::SnapshotId;
    use crate::index::Index;
    use crate::repository::blob_store::store_in_own_pack;
    use crate::repository::config::Config;
    use crate::repository::{InitSecret, Secret};
    use crate::snapshot::Snapshot;
    use crate::snapshot::tree::Node;
    use std::sync::Arc;
    use zeroize::Zeroizing;

    fn snapshot(repo: &Repository, content: &[BlobId]) -> SnapshotId {
        let mut n = Node::new(b"f".to_vec(), NodeKind::File);
        n.content = content.to_vec();
        let tree = Tree { nodes: vec![n] }.encode();
        let root = store_in_own_pack(repo, &[(BlobKind::Tree, tree)])[0];
        repo.save_snapshot(&Snapshot {
            time_ns: 0,
            tree: root,
            parent: None,
            hostname: "h".into(),
            username: "u".into(),
            uid: 0,
            gid: 0,
            paths: vec![b"/".to_vec()],
            tags: Vec::new(),
            program_version: "test".into(),
            summary: Default::default(),
        })
        .unwrap()
    }

    /// Everything an index says, in a comparable form.
    fn dump(repo: &Repository) -> Vec<(PackId, u64, Vec<crate::pack::PackEntry>)> {
        let idx = repo.index().unwrap();
        idx.packs()
            .unwrap()
            .into_iter()
            .map(|(p, s)| (p, s, idx.pack_entries(&p).unwrap()))
            .collect()
    }

    /// Prune updates the cache in place (drops the retired packs, notes the
    /// new segments) instead of rebuilding it: what it leaves must be what
    /// a rebuild from the remaining segments gives, and the next process
    /// must find nothing to add or drop.
    #[test]
    fn the_cache_prune_leaves_equals_a_rebuild() {
        let cache = tempfile::tempdir().unwrap();
        let backend = Arc::new(MemoryBackend::new());
        let kdf = KdfParams {
            memory_kib: 64,
            iterations: 1,
            lanes: 1,
        };
        let repo = Repository::init(
            backend.clone(),
            InitSecret::Passphrase(Zeroizing::new(b"pw".to_vec())),
            Config::default(),
            kdf,
        )
        .unwrap()
        .with_cache_dir(Some(cache.path().to_path_buf()));
        let data = |s: &str| (BlobKind::Data, s.as_bytes().to_vec());
        // Pack a: all kept; b: half used (repacked at 0% unused);
        // c: unused (deleted); d: the forgotten snapshot's tree and data.
        let a = store_in_own_pack(&repo, &[data("a1"), data("a2")]);
        let b = store_in_own_pack(&repo, &[data("b1"), data("b2 unused")]);
        store_in_own_pack(&repo, &[data("c1 unused")]);
        snapshot(&repo, &[a[0], a[1], b[0], a[0]]);
        let gone = snapshot(&repo, &[b[1]]);
        repo.index().unwrap();
        repo.delete(FileKind::Snapshot, &gone.to_hex()).unwrap();
        let p = plan(&repo, &PruneOptions { max_unused: 0.0 }).unwrap();
        assert_eq!(p.repack.len(), 1);
        assert_eq!(p.delete.len(), 2);
        let r = execute(&repo, &p).unwrap();
        assert_eq!((r.packs_repacked, r.blobs_repacked), (1, 1));
        let after = dump(&repo);
        assert_eq!(after.len(), 3, "a, keep's tree pack and the new pack");
        assert_eq!(
            repo.index().unwrap().segments().unwrap(),
            backend
                .list(FileKind::Index)
                .unwrap()
                .into_iter()
                .filter_map(|(n, _)| SegmentId::from_hex(&n))
                .collect()
        );
        // Another process on the same cache: nothing to do.
        let secret = Secret::Passphrase(Zeroizing::new(b"pw".to_vec()));
        let again = Repository::open(backend.clone(), &secret)
            .unwrap()
            .with_cache_dir(Some(cache.path().to_path_buf()));
        let idx = Index::open(
            &again.cache_path().unwrap(),
            again.id(),
            crate::repository::config::FORMAT_VERSION,
        )
        .unwrap();
        let listed: Vec<SegmentId> = backend
            .list(FileKind::Index)
            .unwrap()
            .into_iter()
            .filter_map(|(n, _)| SegmentId::from_hex(&n))
            .collect();
        let loads = std::cell::Cell::new(0);
        let rebuilt = idx
            .sync(&listed, |id| {
                loads.set(loads.get() + 1);
                again.load_segment(id).map(Some)
            })
            .unwrap();
        assert!(!rebuilt && loads.get() == 0, "the cache was not current");
        drop(idx);
        // A rebuild from the segments alone says the same.
        let fresh = Repository::open(backend.clone(), &secret).unwrap();
        assert_eq!(dump(&fresh), after);
        let used: Vec<BlobId> = after
            .iter()
            .flat_map(|(_, _, e)| e.iter().map(|e| e.id))
            .collect();
        for id in [a[0], a[1], b[0]] {
            assert!(used.contains(&id));
        }
        assert!(!used.contains(&b[1]));
    }
}
