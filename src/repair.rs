//! Repair: return a damaged repository to a check-clean state, writing new
//! objects and never deleting the only copy of anything it could not read
//! (doc/reliability.md §0.10, B6).
//!
//! - `repair index` rebuilds the index from the packs' own trailers: new
//!   segments first, then the old ones are deleted. A pack whose trailer
//!   cannot be read keeps the entries the old index had for it, when some
//!   of its blobs still verify; otherwise it is reported and left in
//!   place, unindexed.
//! - `repair packs` reads packs whole (those named, or all) and, for each
//!   that does not verify, moves every blob that still authenticates,
//!   decompresses and hashes to its id into new packs, then moves the
//!   damaged pack to `damaged/` and rebuilds the index: the lost blobs are no longer
//!   indexed, so the next backup stores their content again instead of
//!   deduplicating against damage, and `repair snapshots` can leave out
//!   the files that needed them.
//! - `repair snapshots` writes, for each snapshot that references lost
//!   data, a new snapshot whose trees leave out the files and directories
//!   that cannot be restored. The damaged originals stay unless asked to go.

use crate::backend::FileKind;
use crate::blob::{BlobKind, BlobSink, BlobSource};
use crate::check::verify_blobs;
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId, SegmentId, SnapshotId, content_hash};
use crate::index::segment::{IndexedPack, Segment};
use crate::pack::PackEntry;
use crate::pack::reader::{check_tiling, open_trailer, parse_pack, trailer_len};
use crate::pack::writer::PackWriter;
use crate::progress::Progress;
use crate::repository::Repository;
use crate::repository::blob_store::{BlobStore, CHECKPOINT_BLOBS, put_verified, verify_sealed};
use crate::snapshot::Snapshot;
use crate::snapshot::tree::{NodeKind, Tree};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct IndexRepair {
    pub packs_indexed: u64,
    pub blobs_indexed: u64,
    /// Packs whose blobs could not be listed, each with the reason.
    pub unreadable: Vec<String>,
    pub segments_written: u64,
    pub segments_removed: u64,
    /// Packs whose trailer does not read, indexed with the entries the old
    /// index had for them (issue 19.2): their blobs stay restorable, and
    /// `repair packs` moves them into a sound pack.
    pub trailer_damaged: Vec<KeptPack>,
}

/// A pack indexed from the old index because its trailer does not read.
#[derive(Debug)]
pub struct KeptPack {
    pub pack: PackId,
    /// Why the trailer does not read.
    pub reason: String,
    /// Blobs the old index listed for it, all indexed again.
    pub listed: u64,
    /// How many of those verify now.
    pub verified: u64,
}

fn read_entries(
    repo: &Repository,
    name: &str,
    size: u64,
) -> std::result::Result<IndexedPack, String> {
    let id = PackId::from_hex(name).ok_or("not a pack name")?;
    let quick = || -> std::result::Result<IndexedPack, String> {
        let last4 = repo
            .read_pack_range(&id, size.saturating_sub(4), 4)
            .map_err(|e| e.to_string())?;
        let n = trailer_len(last4.as_slice().try_into().map_err(|_| "short read")?, size)?;
        let start = size - 4 - n as u64;
        let sealed = repo
            .read_pack_range(&id, start, n)
            .map_err(|e| e.to_string())?;
        let entries = open_trailer(repo.keys(), repo.id(), &sealed, start)?;
        Ok(IndexedPack { id, size, entries })
    };
    quick().or_else(|_| {
        // The slow way also catches a pack whose size field was damaged.
        let bytes = repo.read_pack(&id).map_err(|e| e.to_string())?;
        let entries = parse_pack(repo.keys(), repo.id(), &bytes)?;
        Ok(IndexedPack {
            id,
            size: bytes.len() as u64,
            entries,
        })
    })
}

/// Rebuild every index segment from the packs. The caller holds an
/// exclusive lock.
///
/// A pack whose trailer does not read keeps the entries the old index had
/// for it (the segments, or failing them the local cache): dropping them
/// lost every intact blob of a pack damaged only at its end (issue 19.2).
/// Its blobs are verified here for the report, and on every read as always.
pub fn repair_index(repo: &Repository) -> Result<IndexRepair> {
    let old = repo.segment_ids()?;
    let packs = repo.list_packs()?;
    let results: Vec<(String, u64, std::result::Result<IndexedPack, String>)> = packs
        .par_iter()
        .map(|(name, size)| (name.clone(), *size, read_entries(repo, name, *size)))
        .collect();
    let mut report = IndexRepair::default();
    let mut indexed = Vec::with_capacity(results.len());
    let mut failed = Vec::new();
    for (name, size, r) in results {
        match (r, PackId::from_hex(&name)) {
            (Ok(p), _) => indexed.push(p),
            (Err(e), Some(id)) => failed.push((id, size, e)),
            (Err(e), None) => report
                .unreadable
                .push(format!("{}: {e}", FileKind::Pack.path(&name))),
        }
    }
    if !failed.is_empty() {
        let wanted: HashSet<PackId> = failed.iter().map(|(p, _, _)| *p).collect();
        let mut known = old_entries(repo, &old, &wanted)?;
        for (id, size, reason) in failed {
            let kept = match known.remove(&id) {
                Some(entries) => keep_old_entries(repo, id, size, entries, reason.clone())?,
                None => None,
            };
            match kept {
                Some((p, k)) => {
                    indexed.push(p);
                    report.trailer_damaged.push(k);
                }
                None => report
                    .unreadable
                    .push(format!("{}: {reason}", FileKind::Pack.path(&id.to_hex()))),
            }
        }
    }
    let mut seg = Segment::default();
    let mut blobs = 0usize;
    for p in indexed {
        report.packs_indexed += 1;
        report.blobs_indexed += p.entries.len() as u64;
        blobs += p.entries.len();
        seg.packs.push(p);
        if blobs >= CHECKPOINT_BLOBS {
            repo.save_segment(&seg)?;
            report.segments_written += 1;
            seg = Segment::default();
            blobs = 0;
        }
    }
    if !seg.packs.is_empty() {
        repo.save_segment(&seg)?;
        report.segments_written += 1;
    }
    // Sealing uses random nonces, so no new segment shares an old name.
    for s in &old {
        repo.delete_exclusively(FileKind::Index, &[s.to_hex()])?;
        report.segments_removed += 1;
    }
    repo.refresh_index()?;
    Ok(report)
}

/// The entries the old index has for each of `wanted`: from the segments
/// `old` that still read, else from the local cache (checked by SQLite
/// first), which may have been filled while a now damaged segment was
/// sound. Only entries that tile a pack are taken.
fn old_entries(
    repo: &Repository,
    old: &[SegmentId],
    wanted: &HashSet<PackId>,
) -> Result<HashMap<PackId, Vec<PackEntry>>> {
    let found: Vec<Vec<IndexedPack>> = old
        .par_iter()
        .map(|id| match repo.load_segment(id) {
            Ok(seg) => Ok(seg
                .packs
                .into_iter()
                .filter(|p| wanted.contains(&p.id))
                .collect()),
            // Damaged or gone: its packs are looked up in the cache below.
            Err(Error::Corrupt { .. } | Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        })
        .collect::<Result<_>>()?;
    let mut out: HashMap<PackId, Vec<PackEntry>> = found
        .into_iter()
        .flatten()
        .map(|p| (p.id, p.entries))
        .collect();
    repo.verify_index_cache()?;
    let idx = repo.index()?;
    for p in wanted {
        if out.contains_key(p) {
            continue;
        }
        let entries = idx.pack_entries(p)?;
        let end = entries
            .last()
            .map_or(0, |e| u64::from(e.offset) + u64::from(e.length));
        if !entries.is_empty() && check_tiling(&entries, end).is_ok() {
            out.insert(*p, entries);
        }
    }
    Ok(out)
}

/// Index `pack` (of `size` bytes, its trailer unreadable for `reason`)
/// with `entries` from the old index, as far as they fit in what is left
/// of it, counting how many of them verify. `None` when none fit or none
/// verify: entries that locate nothing are not worth indexing.
fn keep_old_entries(
    repo: &Repository,
    pack: PackId,
    size: u64,
    mut entries: Vec<PackEntry>,
    reason: String,
) -> Result<Option<(IndexedPack, KeptPack)>> {
    // A truncated pack keeps the blobs before the cut (a segment's blobs
    // must end before the pack's last 4 bytes).
    entries.retain(|e| u64::from(e.offset) + u64::from(e.length) + 4 <= size);
    if entries.is_empty() {
        return Ok(None);
    }
    let name = pack.to_hex();
    let bytes = repo.read_pack(&pack)?;
    let (good, _, _) = verify_blobs(repo, &FileKind::Pack.path(&name), &bytes, entries.clone());
    if good.is_empty() {
        return Ok(None);
    }
    let kept = KeptPack {
        pack,
        reason,
        listed: entries.len() as u64,
        verified: good.len() as u64,
    };
    Ok(Some((
        IndexedPack {
            id: pack,
            size,
            entries,
        },
        kept,
    )))
}

#[derive(Debug, Default)]
pub struct PackRepair {
    pub packs_read: u64,
    /// Damaged packs, each with what was wrong, all moved to `damaged/`
    /// once their readable blobs were stored again.
    pub damaged: Vec<(PackId, Vec<String>)>,
    pub blobs_salvaged: u64,
    /// Blobs that did not verify: (blob, the pack it was in).
    pub blobs_lost: Vec<(BlobId, PackId)>,
    pub packs_written: u64,
    pub index: Option<IndexRepair>,
    /// Why the local index cache was rebuilt first, if it was.
    pub cache_note: Option<String>,
}

/// What reading one pack whole found: the blobs that verify, the ones
/// that do not, and a line per fault. No bytes are kept: with many damaged
/// packs that would be their whole size in memory.
struct PackVerdict {
    good: Vec<PackEntry>,
    bad: Vec<BlobId>,
    faults: Vec<String>,
}

/// Read `pack` whole and verify each blob its own trailer lists or,
/// when the trailer does not read, the index (audited against the
/// repository first): a pack damaged only at its end still gives up its
/// blobs (issue 19.2). `None` when the pack is sound.
fn examine_pack(repo: &Repository, pack: &PackId) -> Result<Option<PackVerdict>> {
    let name = pack.to_hex();
    let obj = FileKind::Pack.path(&name);
    let bytes = repo.read_pack(pack)?;
    let mut faults = Vec::new();
    if content_hash(&bytes) != pack.0 {
        faults.push(format!("{obj}: content does not match its name"));
    }
    let entries = match parse_pack(repo.keys(), repo.id(), &bytes) {
        Ok(e) => e,
        Err(e) => {
            faults.push(format!("{obj}: {e}"));
            repo.index()?.pack_entries(pack)?
        }
    };
    let (good, bad, blob_faults) = verify_blobs(repo, &obj, &bytes, entries);
    faults.extend(blob_faults);
    Ok((!faults.is_empty()).then_some(PackVerdict { good, bad, faults }))
}

/// Salvage damaged packs (`only`, or every pack in the repository when
/// empty). The caller holds an exclusive lock.
///
/// Order, so that a crash loses nothing a rerun could save: the salvaged
/// blobs go into new packs that an index segment lists (durable), then the
/// damaged packs move to `damaged/`, then the index is rebuilt from the
/// packs. A crash before the rebuild leaves an index naming deleted packs,
/// which `check` reports and `repair index` fixes.
pub fn repair_packs(
    repo: &Repository,
    only: &[PackId],
    progress: &dyn Progress,
) -> Result<PackRepair> {
    let mut report = PackRepair {
        cache_note: repo.audit_index(true)?.cache_note(),
        ..Default::default()
    };
    let listed: HashMap<PackId, u64> = repo
        .list_packs()?
        .into_iter()
        .filter_map(|(n, size)| PackId::from_hex(&n).map(|p| (p, size)))
        .collect();
    let candidates: Vec<(PackId, u64)> = if only.is_empty() {
        listed.into_iter().collect()
    } else {
        let mut c = Vec::with_capacity(only.len());
        for p in only {
            let size = listed.get(p).ok_or_else(|| {
                Error::Usage(format!(
                    "pack {p} is not in the repository: give pack ids as `coffer check --read-data` names them"
                ))
            })?;
            c.push((*p, *size));
        }
        c
    };
    report.packs_read = candidates.len() as u64;
    progress.scan_total(
        candidates.len() as u64,
        candidates.iter().map(|(_, s)| s).sum(),
    );
    // One pack per thread at a time bounds memory to a few packs.
    let verdicts: Vec<(PackId, Option<PackVerdict>)> = candidates
        .par_iter()
        .map(|(p, size)| {
            let v = examine_pack(repo, p)?;
            progress.bytes_done(*size);
            progress.item_done();
            Ok((*p, v))
        })
        .collect::<Result<_>>()?;
    let damaged: Vec<(PackId, PackVerdict)> = verdicts
        .into_iter()
        .filter_map(|(p, v)| v.map(|v| (p, v)))
        .collect();
    if damaged.is_empty() {
        return Ok(report);
    }
    let pack_size = repo.config()?.pack_size as usize;
    let mut seg = Segment::default();
    let mut writer = PackWriter::with_capacity(pack_size + pack_size / 8);
    let upload =
        |writer: &mut PackWriter, seg: &mut Segment, report: &mut PackRepair| -> Result<()> {
            if writer.is_empty() {
                return Ok(());
            }
            repo.ensure_lock()?;
            let w = std::mem::replace(writer, PackWriter::with_capacity(pack_size + pack_size / 8));
            let mut fin = w.finish(repo.keys(), repo.id());
            if let Err((_, why)) = verify_sealed(repo, &fin) {
                return Err(Error::corrupt(
                    format!("{} (before upload)", FileKind::Pack.path(&fin.id.to_hex())),
                    why,
                ));
            }
            seg.packs.push(put_verified(repo, &mut fin)?);
            report.packs_written += 1;
            Ok(())
        };
    for (pack, v) in &damaged {
        let bytes = if v.good.is_empty() {
            Vec::new()
        } else {
            repo.read_pack(pack)?
        };
        for e in &v.good {
            // Read again, so a blob that changed since is caught by the
            // new pack's verify before upload.
            let Some(sealed) =
                bytes.get(e.offset as usize..(e.offset as usize + e.length as usize))
            else {
                report.blobs_lost.push((e.id, *pack));
                continue;
            };
            writer.add_sealed(e.kind, e.id, e.raw_length, sealed);
            report.blobs_salvaged += 1;
            if writer.len() >= pack_size {
                upload(&mut writer, &mut seg, &mut report)?;
            }
        }
        report.blobs_lost.extend(v.bad.iter().map(|b| (*b, *pack)));
    }
    upload(&mut writer, &mut seg, &mut report)?;
    if !seg.packs.is_empty() {
        repo.save_segment(&seg)?;
    }
    // The damaged bytes are the only copy of the blobs that did not
    // verify: they move to `damaged/` (ignored by every reader) rather
    // than being deleted, for a later attempt or a forensic look.
    let packs: Vec<PackId> = damaged.iter().map(|(p, _)| *p).collect();
    repo.quarantine_packs(&packs)?;
    report.damaged = damaged.into_iter().map(|(p, v)| (p, v.faults)).collect();
    report.index = Some(repair_index(repo)?);
    Ok(report)
}

#[derive(Debug, Default)]
pub struct SnapshotRepair {
    /// (old id, new id, paths left out).
    pub rewritten: Vec<(SnapshotId, SnapshotId, Vec<String>)>,
    pub intact: u64,
    /// Packs the index listed that were missing (the index was then
    /// rebuilt from the packs), and how that went.
    pub missing_packs: Vec<PackId>,
    pub index_rebuilt: Option<IndexRepair>,
    /// Snapshot files that do not read at all (each with the reason):
    /// nothing of them can be recovered, their trees are unknown.
    pub unreadable: Vec<(SnapshotId, String)>,
    /// Whether those were removed (`--forget`).
    pub unreadable_removed: bool,
    /// Why the local index cache was rebuilt first, if it was.
    pub cache_note: Option<String>,
}

/// A tree rewritten without what cannot be restored: the new tree
/// (`None`: unchanged) and what was left out.
#[derive(Clone, Default)]
struct Rewritten {
    tree: Option<BlobId>,
    left_out: Vec<LeftOut>,
}

/// An entry left out, by its path below the rewritten tree (`""`: the
/// tree itself).
#[derive(Clone)]
struct LeftOut {
    rel: String,
    /// A directory whose tree could not be read (emptied, not removed).
    unreadable_dir: bool,
}

/// `rel` below `base`, as `/`-separated text.
fn join(base: &str, rel: &str) -> String {
    match (base, rel) {
        (b, "") => b.to_string(),
        ("", r) => r.to_string(),
        (b, r) => format!("{}/{r}", b.trim_end_matches('/')),
    }
}

/// Rewrite a tree without what cannot be restored. A tree shared by
/// several snapshots (or directories) is rewritten once; `memo` keeps what
/// it left out, so each of them reports it (issue 19.8).
fn rewrite(
    repo: &Repository,
    store: &BlobStore,
    id: &BlobId,
    memo: &mut HashMap<BlobId, Rewritten>,
) -> Result<Rewritten> {
    if let Some(m) = memo.get(id) {
        return Ok(m.clone());
    }
    let out = rewrite_uncached(repo, store, id, memo)?;
    memo.insert(*id, out.clone());
    Ok(out)
}

fn rewrite_uncached(
    repo: &Repository,
    store: &BlobStore,
    id: &BlobId,
    memo: &mut HashMap<BlobId, Rewritten>,
) -> Result<Rewritten> {
    let idx = repo.index()?;
    let mut tree = match repo
        .read_blob(BlobKind::Tree, id)
        .and_then(|b| Tree::decode(&b).map_err(|e| Error::corrupt(format!("tree {id}"), e.0)))
    {
        Ok(t) => t,
        Err(_) => {
            let empty = Tree::default().encode();
            let eid = store.blob_id(&empty);
            store.store_blob(BlobKind::Tree, eid, &empty)?;
            return Ok(Rewritten {
                tree: Some(eid),
                left_out: vec![LeftOut {
                    rel: String::new(),
                    unreadable_dir: true,
                }],
            });
        }
    };
    let mut changed = false;
    let mut left_out = Vec::new();
    let mut keep = Vec::with_capacity(tree.nodes.len());
    for mut n in std::mem::take(&mut tree.nodes) {
        let name = String::from_utf8_lossy(&n.name).into_owned();
        let mut lost = false;
        for c in &n.content {
            if !idx.contains(c)? {
                lost = true;
                break;
            }
        }
        if lost {
            left_out.push(LeftOut {
                rel: name,
                unreadable_dir: false,
            });
            changed = true;
            continue;
        }
        if n.kind == NodeKind::Dir
            && let Some(sub) = n.subtree
        {
            let r = rewrite(repo, store, &sub, memo)?;
            left_out.extend(r.left_out.iter().map(|l| LeftOut {
                rel: join(&name, &l.rel),
                unreadable_dir: l.unreadable_dir,
            }));
            if let Some(new) = r.tree {
                n.subtree = Some(new);
                changed = true;
            }
        }
        keep.push(n);
    }
    if !changed {
        return Ok(Rewritten::default());
    }
    tree.nodes = keep;
    let bytes = tree.encode();
    let nid = store.blob_id(&bytes);
    store.store_blob(BlobKind::Tree, nid, &bytes)?;
    Ok(Rewritten {
        tree: Some(nid),
        left_out,
    })
}

/// What `repair snapshots` reports for an entry left out of a snapshot.
fn describe(l: &LeftOut) -> String {
    let path = join("/", &l.rel);
    if l.unreadable_dir {
        format!("{path} (unreadable directory)")
    } else {
        path
    }
}

/// Write repaired copies of damaged snapshots; with `forget`, remove the
/// originals once their copies are stored. The caller holds an exclusive lock.
///
/// When the index lists packs that are gone, it is rebuilt from the packs
/// first: otherwise their blobs would look present, nothing would be
/// repaired, and the next backup would reuse the lost data.
pub fn repair_snapshots(repo: Arc<Repository>, forget: bool) -> Result<SnapshotRepair> {
    // What is left out is decided by lookups in the cache: it must be
    // sound all through, not only row by row.
    let mut report = SnapshotRepair {
        cache_note: repo.audit_index(true)?.cache_note(),
        ..Default::default()
    };
    let present: std::collections::HashSet<String> =
        repo.list_packs()?.into_iter().map(|(n, _)| n).collect();
    report.missing_packs = repo
        .index()?
        .packs()?
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| !present.contains(&p.to_hex()))
        .collect();
    if !report.missing_packs.is_empty() {
        report.index_rebuilt = Some(repair_index(&repo)?);
    }
    let (snaps, damaged) = repo.list_snapshots_and_damaged()?;
    // A snapshot file that does not decrypt or decode holds nothing to
    // rewrite. Kept unless asked, since it blocks `prune` (which cannot
    // tell what it referenced) and a user may still restore the file from
    // elsewhere; with --forget it goes, as `forget` could not read it.
    for (id, e) in damaged {
        if forget {
            repo.delete_exclusively(FileKind::Snapshot, &[id.to_hex()])?;
        }
        report.unreadable.push((id, e.to_string()));
    }
    report.unreadable_removed = forget;
    // Repaired copies written by an earlier run, so a rerun (or a run with
    // --forget after one without) reuses them instead of adding duplicates.
    let earlier: HashMap<(SnapshotId, BlobId), SnapshotId> = snaps
        .iter()
        .filter(|(_, s)| s.tags.iter().any(|t| t == "repaired"))
        .filter_map(|(id, s)| s.parent.map(|p| ((p, s.tree), *id)))
        .collect();
    let store = BlobStore::new(repo.clone())?;
    let mut memo = HashMap::new();
    let mut plans: Vec<(SnapshotId, Snapshot, BlobId, Vec<String>)> = Vec::new();
    for (sid, s) in snaps {
        let r = rewrite(&repo, &store, &s.tree, &mut memo)?;
        match r.tree {
            Some(new_root) => {
                let dropped = r.left_out.iter().map(describe).collect();
                plans.push((sid, s, new_root, dropped));
            }
            None => report.intact += 1,
        }
    }
    // Trees first (durable and indexed), then the snapshots that use them.
    store.finish()?;
    for (old, s, root, dropped) in plans {
        let mut ns = s.clone();
        ns.tree = root;
        ns.parent = Some(old);
        if !ns.tags.iter().any(|t| t == "repaired") {
            ns.tags.push("repaired".into());
        }
        let nid = match earlier.get(&(old, root)) {
            Some(id) => *id,
            None => repo.save_snapshot(&ns)?,
        };
        if forget {
            repo.delete_exclusively(FileKind::Snapshot, &[old.to_hex()])?;
        }
        report.rewritten.push((old, nid, dropped));
    }
    Ok(report)
}
