//! Prune: give back the space of data no snapshot references.
//!
//! Plan (nothing is written): list snapshots and packs, mark every blob the
//! snapshots reference (walking each tree once, into a SQLite temporary
//! table, so memory does not grow with the repository), then classify each
//! pack: all used → keep; nothing used → delete; partly used with more than
//! `max_unused` of its bytes unused → repack. A used blob that several
//! packs hold (concurrent backups of the same data each stored it) counts
//! as used in one of them only, so the other copies are given back like
//! unused data; the copy kept is in a pack that stays or is repacked. The plan is refused — nothing
//! deleted — when what was listed does not add up: a snapshot or index
//! segment that cannot be read, an indexed pack missing or of the wrong
//! size, or a used blob the index does not know (doc/reliability.md §6.7).
//!
//! Execute, in the order that keeps every crash safe (doc/reliability.md 4.B):
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
use crate::error::{Error, Result};
use crate::id::{PackId, SegmentId, SnapshotId};
use crate::index::segment::{IndexedPack, Segment};
use crate::pack::writer::PackWriter;
use crate::pack::{PackEntry, open_blob};
use crate::progress::Progress;
use crate::repository::Repository;
use crate::repository::audit::IndexAudit;
use crate::repository::blob_store::{CHECKPOINT_BLOBS, put_verified, verify_sealed};
use std::collections::{HashMap, HashSet};

#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Unused bytes to tolerate in the whole repository, as a share of the
    /// used bytes; the emptiest packs are repacked until the rest fits.
    pub max_unused: f64,
    /// Snapshots to plan as if already removed: `forget --prune --dry-run`
    /// previews the prune its real run makes (issue 18.8).
    pub forgotten: HashSet<SnapshotId>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused: 0.05,
            forgotten: HashSet::new(),
        }
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
    /// Why the local index cache was rebuilt before planning, if it was.
    pub cache_note: Option<String>,
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
    pub(crate) fn is_noop(&self) -> bool {
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
    /// Temporary files of puts killed mid-write, removed.
    pub temps_removed: u64,
}

/// A temporary file this old cannot be a put still in progress: writers
/// refresh their locks far more often, and puts take seconds.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Mark every blob reachable from every snapshot but the `forgotten` in
/// the index's used set. Returns the number of snapshots walked.
pub(crate) fn mark_used(repo: &Repository, forgotten: &HashSet<SnapshotId>) -> Result<usize> {
    let mut snaps = repo.list_snapshots()?;
    snaps.retain(|(id, _)| !forgotten.contains(id));
    let problems = repo.take_problems();
    if !problems.is_empty() {
        return Err(Error::PruneRefused(format!(
            "{} (a damaged snapshot or index segment may reference data that would be deleted; run `coffer check`, then `coffer repair index` for a segment or `coffer repair snapshots --forget` for a snapshot)",
            problems.join("; ")
        )));
    }
    let mut used = repo.used_set()?;
    for (sid, s) in &snaps {
        used.add_tree(&s.tree).map_err(|e| {
            Error::PruneRefused(format!(
                "snapshot {} cannot be read completely: {e}",
                sid.short()
            ))
        })?;
    }
    used.finish()?;
    Ok(snaps.len())
}

/// Work out what prune would do. Writes nothing.
pub fn plan(repo: &Repository, opts: &PruneOptions) -> Result<PrunePlan> {
    match plan_once(repo, opts) {
        // A blob the cache cannot find may be the cache's fault: refuse
        // only once SQLite's full check says the cache is sound.
        Err(e @ Error::PruneRefused(_)) => match repo.confirm_index_cache()? {
            None => Err(e),
            Some(why) => {
                let mut p = plan_once(repo, opts)?;
                p.cache_note = IndexAudit {
                    cache_rebuilt: Some(why),
                    ..Default::default()
                }
                .cache_note();
                Ok(p)
            }
        },
        r => r,
    }
}

fn plan_once(repo: &Repository, opts: &PruneOptions) -> Result<PrunePlan> {
    // The new index is written from the cache: a cache that disagrees with
    // the segments would carry its damage into the repository.
    let audit = repo.audit_index(false)?;
    if !audit.damaged_segments.is_empty() {
        return Err(Error::PruneRefused(format!(
            "{} (a damaged index segment may list data that would be deleted)",
            audit.damaged_segments.join("; ")
        )));
    }
    let old_segments = repo.segment_ids()?;
    let snapshots = mark_used(repo, &opts.forgotten)?;
    let idx = repo.index()?;
    let (usage, missing) = idx.scratch().usage(5)?;
    if !missing.is_empty() {
        let ids: Vec<String> = missing.iter().map(|b| b.to_hex()).collect();
        return Err(Error::PruneRefused(format!(
            "snapshots reference blobs the index does not know (e.g. {}): run `coffer check`, then `coffer repair index` or `coffer repair snapshots`",
            ids.join(", ")
        )));
    }
    let listed: HashMap<String, u64> = repo.list_packs()?.into_iter().collect();
    let mut plan = PrunePlan {
        snapshots,
        old_segments,
        cache_note: audit.cache_note(),
        ..Default::default()
    };
    let mut indexed: HashSet<String> = HashSet::new();
    let mut partial = Vec::new();
    for u in usage {
        let name = u.pack.to_hex();
        match listed.get(&name) {
            None => {
                return Err(Error::PruneRefused(format!(
                    "the index lists pack {name}, which is missing from the repository: run `coffer check`"
                )));
            }
            Some(&size) if size != u.size => {
                return Err(Error::PruneRefused(format!(
                    "pack {name} is {size} bytes, the index says {}: run `coffer check`",
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
/// `progress` counts the packs repacked, the slow part.
pub fn execute(
    repo: &Repository,
    plan: &PrunePlan,
    progress: &dyn Progress,
) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    // Under the exclusive lock no put of this repository is live, so what
    // a killed backup left half-written is only taking space.
    repo.ensure_lock()?;
    report.temps_removed = repo.remove_stale_temps(STALE_TEMP_AGE)? as u64;
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
    // The cache learns the new segments only at the end (`retire`).
    let mut new_segments: Vec<SegmentId> = Vec::new();
    idx.scratch().prune_begin()?;
    idx.scratch()
        .dead_set(&dead.iter().copied().collect::<Vec<_>>())?;
    let mut flush = |seg: &mut Segment, report: &mut PruneReport| -> Result<()> {
        if !seg.packs.is_empty() {
            new_segments.push(repo.save_segment(seg)?);
            report.segments_written += 1;
            *seg = Segment::default();
        }
        Ok(())
    };
    repack(repo, plan, &mut report, progress, |p, report| {
        new_packs.packs.push(p);
        if new_packs.blob_count() >= CHECKPOINT_BLOBS {
            flush(&mut new_packs, report)?;
        }
        Ok(())
    })?;
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

/// A pack to repack, read and checked against its name.
struct SourcePack {
    id: PackId,
    bytes: Vec<u8>,
}

/// A new pack and, for each of its blobs, the pack and entry it was copied
/// from, to name the source should the copy fail its check.
struct NewPack {
    pack: crate::pack::writer::FinishedPack,
    origin: Vec<(PackId, PackEntry)>,
}

/// Repacked packs verified and uploaded at once. Unlike a backup's, a
/// repack's CPU work is almost all in the verify, so a second thread
/// verifies the next pack while the first waits on its write and fsyncs.
const REPACK_UPLOADERS: usize = 2;

/// Copy the used blobs of `plan.repack` into new packs; `uploaded` gets each
/// new pack once it is durable (and staged in the cache), in order.
///
/// Three stages overlap, on their own threads: reading a pack and
/// checking its hash; choosing and copying its blobs; verifying and
/// uploading finished packs, on [`REPACK_UPLOADERS`] threads. One
/// after the other, the CPU idled through every read and fsync. Channels
/// of capacity zero bound the memory to about five packs: one read ahead,
/// one being filled, two being uploaded, and the buffer a read goes into.
///
/// The sealed bytes move as they are. Each blob is checked once, when the
/// new pack is verified before upload (decrypt, decompress, hash against
/// its id) rather than also when copied: a damaged blob can still never
/// reach an uploaded pack, and the error names the pack it came from.
fn repack(
    repo: &Repository,
    plan: &PrunePlan,
    report: &mut PruneReport,
    progress: &dyn Progress,
    mut uploaded: impl FnMut(IndexedPack, &mut PruneReport) -> Result<()>,
) -> Result<()> {
    let idx = repo.index()?;
    let bytes = plan.repack.iter().map(|(_, s)| s).sum();
    progress.scan_total(plan.repack.len() as u64, bytes);
    let pack_size = repo.config()?.pack_size as usize;
    let (src_tx, src_rx) = crossbeam_channel::bounded::<Result<SourcePack>>(0);
    let (new_tx, new_rx) = crossbeam_channel::bounded::<NewPack>(0);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Result<IndexedPack>>();
    // `move`: on an early return the channels close, so the threads end
    // and the scope can join them.
    std::thread::scope(move |scope| -> Result<()> {
        scope.spawn(move || {
            for (pack, _) in &plan.repack {
                let r = read_source(repo, pack);
                let failed = r.is_err();
                if src_tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        let uploaders = crate::repository::blob_store::upload_threads(repo, REPACK_UPLOADERS);
        for _ in 0..uploaders {
            let (new_rx, done_tx) = (new_rx.clone(), done_tx.clone());
            scope.spawn(move || {
                for p in new_rx.iter() {
                    let r = upload_repacked(repo, p).and_then(|p| {
                        idx.scratch().stage_pack(&p)?;
                        Ok(p)
                    });
                    let failed = r.is_err();
                    if done_tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
        }
        // Only the threads hold these now: when they all stop, `send` and
        // `take` see the channels closed.
        drop((new_rx, done_tx));
        // Hand new packs over, and take the uploaded ones back as they
        // come; an upload error surfaces here or when the channel closes.
        let mut take = |report: &mut PruneReport, wait: bool| -> Result<()> {
            loop {
                let r = if wait {
                    match done_rx.recv() {
                        Ok(r) => r,
                        Err(_) => return Ok(()),
                    }
                } else {
                    match done_rx.try_recv() {
                        Ok(r) => r,
                        Err(_) => return Ok(()),
                    }
                };
                uploaded(r?, report)?;
            }
        };
        let mut writer = PackWriter::with_capacity(pack_size + pack_size / 8);
        let mut origin = Vec::new();
        let mut send = |writer: &mut PackWriter,
                        origin: &mut Vec<(PackId, PackEntry)>,
                        report: &mut PruneReport|
         -> Result<()> {
            repo.ensure_lock()?;
            let w = std::mem::replace(writer, PackWriter::with_capacity(pack_size + pack_size / 8));
            let p = NewPack {
                pack: w.finish(repo.keys(), repo.id()),
                origin: std::mem::take(origin),
            };
            report.packs_written += 1;
            if new_tx.send(p).is_err() {
                // The upload thread stopped on an error: wait for it.
                take(report, true)?;
                return Err(Error::Internal("prune: the upload thread stopped".into()));
            }
            take(report, false)
        };
        for r in src_rx.iter() {
            let src = r?;
            let obj = FileKind::Pack.path(&src.id.to_hex());
            for e in idx.scratch().to_move(&src.id)? {
                let (s, l) = (e.offset as usize, e.length as usize);
                let Some(sealed) = src.bytes.get(s..s + l) else {
                    return Err(Error::corrupt(
                        obj,
                        format!("blob {} lies outside the pack", e.id),
                    ));
                };
                writer.add_sealed(e.kind, e.id, e.raw_length, sealed);
                origin.push((src.id, e));
                report.blobs_repacked += 1;
                if writer.len() >= pack_size {
                    send(&mut writer, &mut origin, report)?;
                }
            }
            report.packs_repacked += 1;
            progress.bytes_done(src.bytes.len() as u64);
            progress.item_done();
        }
        if report.packs_repacked != plan.repack.len() as u64 {
            return Err(Error::Internal("prune: the pack reader stopped".into()));
        }
        if !writer.is_empty() {
            send(&mut writer, &mut origin, report)?;
        }
        drop(new_tx);
        take(report, true)
    })
}

/// Read a pack to repack and check it against its name.
fn read_source(repo: &Repository, pack: &PackId) -> Result<SourcePack> {
    let name = pack.to_hex();
    let bytes = repo.read_pack(pack)?;
    if crate::id::content_hash(&bytes) != pack.0 {
        return Err(Error::corrupt(
            FileKind::Pack.path(&name),
            "content does not match its name; not repacked (run `coffer check --read-data`)",
        ));
    }
    Ok(SourcePack { id: *pack, bytes })
}

/// Verify a new pack and upload it. A blob that fails the check is looked
/// at again in the pack it came from: damaged there, the error names that
/// pack; intact there, the copy in memory went bad and the new pack is
/// named. Either way nothing is uploaded.
fn upload_repacked(repo: &Repository, mut p: NewPack) -> Result<IndexedPack> {
    let new_name = FileKind::Pack.path(&p.pack.id.to_hex());
    if let Err((blob, why)) = verify_sealed(repo, &p.pack) {
        let src = blob.and_then(|b| p.origin.iter().find(|(_, e)| e.id == b.id));
        if let Some((src, e)) = src {
            let name = src.to_hex();
            let sealed = repo.read_pack_range(src, e.offset as u64, e.length as usize)?;
            if let Err(err) = open_blob(repo.keys(), repo.id(), e, &sealed) {
                return Err(Error::corrupt(
                    FileKind::Pack.path(&name),
                    format!("{err}; not repacked (run `coffer check --read-data`)"),
                ));
            }
        }
        return Err(Error::corrupt(format!("{new_name} (before upload)"), why));
    }
    repo.ensure_lock()?;
    put_verified(repo, &mut p.pack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::memory::MemoryBackend;
    use crate::blob::BlobKind;
    use crate::id::{BlobId, SnapshotId};
    use crate::index::Index;
    use crate::repository::Secret;
    use crate::repository::blob_store::store_in_own_pack;
    use crate::snapshot::Snapshot;
    use crate::snapshot::tree::{Node, NodeKind, Tree};
    use std::sync::Arc;
    use zeroize::Zeroizing;

    fn snapshot(repo: &Repository, content: &[BlobId]) -> SnapshotId {
        let mut n = Node::new(b"f".to_vec(), NodeKind::File);
        n.content = content.to_vec();
        let tree = Tree { nodes: vec![n] }.encode();
        let root = store_in_own_pack(repo, &[(BlobKind::Tree, tree)])[0];
        save_root(repo, root)
    }

    /// Save a snapshot of the tree `root`.
    fn save_root(repo: &Repository, root: BlobId) -> SnapshotId {
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

    /// Marking decodes trees a few bytes at a time here (TREE_BYTES is
    /// tiny in tests): every tree and content id of a nested snapshot must
    /// still be marked, and nothing else.
    #[test]
    fn marking_in_small_pieces_reaches_every_tree_and_blob() {
        let (_, repo) = test_repo();
        let data = |s: String| (BlobKind::Data, s.into_bytes());
        let mut subtrees = Vec::new();
        let mut want = Vec::new();
        for d in 0..5 {
            let ids = store_in_own_pack(
                &repo,
                &(0..4).map(|f| data(format!("{d}/{f}"))).collect::<Vec<_>>(),
            );
            want.extend_from_slice(&ids);
            let nodes = ids
                .iter()
                .enumerate()
                .map(|(f, id)| {
                    let mut n = Node::new(format!("f{f}").into_bytes(), NodeKind::File);
                    n.content = vec![*id];
                    n
                })
                .collect();
            let t = store_in_own_pack(&repo, &[(BlobKind::Tree, Tree { nodes }.encode())])[0];
            want.push(t);
            subtrees.push(t);
        }
        let nodes = subtrees
            .iter()
            .enumerate()
            .map(|(d, t)| {
                let mut n = Node::new(format!("d{d}").into_bytes(), NodeKind::Dir);
                n.subtree = Some(*t);
                n
            })
            .collect();
        let root = store_in_own_pack(&repo, &[(BlobKind::Tree, Tree { nodes }.encode())])[0];
        want.push(root);
        let stray = store_in_own_pack(&repo, &[data("not referenced".into())])[0];
        save_root(&repo, root);
        assert_eq!(mark_used(&repo, &HashSet::new()).unwrap(), 1);
        let idx = repo.index().unwrap();
        for id in &want {
            assert!(idx.scratch().used_contains(id).unwrap(), "{id} not marked");
        }
        assert!(!idx.scratch().used_contains(&stray).unwrap());
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

    fn zero_unused() -> PruneOptions {
        PruneOptions {
            max_unused: 0.0,
            ..Default::default()
        }
    }

    fn test_repo() -> (Arc<MemoryBackend>, Repository) {
        crate::repository::memory_repo()
    }

    /// Blobs are checked once, in the new pack before upload. A blob that
    /// was stored damaged (under a valid pack name, so only its own check
    /// can tell) must stop the repack, be blamed on the pack it came from,
    /// and leave nothing uploaded and nothing deleted.
    #[test]
    fn a_damaged_blob_is_not_repacked_and_its_pack_is_named() {
        let (backend, repo) = test_repo();
        let good = repo.keys().blob_id(b"good");
        let bad = repo.keys().blob_id(b"bad");
        let unused = repo.keys().blob_id(b"unused");
        let mut w = PackWriter::new();
        for (id, plain) in [(good, &b"good"[..]), (unused, &b"unused"[..])] {
            w.add(crate::pack::seal_blob(
                repo.keys(),
                repo.id(),
                BlobKind::Data,
                id,
                plain,
                3,
            ));
        }
        // Sealed under another id: it decrypts under none but its own.
        let mut wrong =
            crate::pack::seal_blob(repo.keys(), repo.id(), BlobKind::Data, good, b"bad", 3);
        wrong.id = bad;
        w.add(wrong);
        let p = w.finish(repo.keys(), repo.id());
        let damaged = p.id;
        backend
            .put(FileKind::Pack, &p.id.to_hex(), p.bytes())
            .unwrap();
        repo.save_segment(&Segment {
            packs: vec![IndexedPack {
                id: p.id,
                size: p.bytes().len() as u64,
                entries: p.entries,
            }],
        })
        .unwrap();
        snapshot(&repo, &[good, bad]);
        let packs_before = backend.list(FileKind::Pack).unwrap();
        let p = plan(&repo, &zero_unused()).unwrap();
        assert_eq!(p.repack.len(), 1);
        let err = execute(&repo, &p, &crate::progress::NoProgress)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&damaged.to_hex()), "{err}");
        assert!(err.contains("not repacked"), "{err}");
        assert_eq!(backend.list(FileKind::Pack).unwrap(), packs_before);
    }

    /// Prune updates the cache in place (drops the retired packs, notes the
    /// new segments) instead of rebuilding it: what it leaves must be what
    /// a rebuild from the remaining segments gives, and the next process
    /// must find nothing to add or drop.
    #[test]
    fn the_cache_prune_leaves_equals_a_rebuild() {
        let cache = tempfile::tempdir().unwrap();
        let (backend, repo) = test_repo();
        let repo = repo.with_cache_dir(Some(cache.path().to_path_buf()));
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
        let p = plan(&repo, &zero_unused()).unwrap();
        assert_eq!(p.repack.len(), 1);
        assert_eq!(p.delete.len(), 2);
        let r = execute(&repo, &p, &crate::progress::NoProgress).unwrap();
        assert_eq!((r.packs_repacked, r.blobs_repacked), (1, 1));
        let after = dump(&repo);
        assert_eq!(after.len(), 3, "a, keep's tree pack and the new pack");
        assert_eq!(
            repo.index().unwrap().segments().unwrap(),
            backend
                .list(FileKind::Index)
                .unwrap()
                .into_iter()
                .filter_map(|o| SegmentId::from_hex(&o.name))
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
            .filter_map(|o| SegmentId::from_hex(&o.name))
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
