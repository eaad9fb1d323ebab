//! Repair: return a damaged repository to a check-clean state, writing new
//! objects and never deleting the only copy of anything it could not read
//! (RELIABILITY.md §0.10, B6).
//!
//! - `repair index` rebuilds the index from the packs' own trailers: new
//!   segments first, then the old ones are deleted. A pack whose trailer
//!   cannot be read is reported and left in place, unindexed.
//! - `repair snapshots` writes, for each snapshot that references lost
//!   data, a new snapshot whose trees leave out the files and directories
//!   that cannot be restored. The damaged originals stay unless asked to go.

use crate::backend::FileKind;
use crate::blob::{BlobKind, BlobSink, BlobSource};
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId, SegmentId, SnapshotId};
use crate::index::segment::{IndexedPack, Segment};
use crate::pack::reader::{open_trailer, parse_pack, trailer_len};
use crate::repository::Repository;
use crate::repository::blob_store::{BlobStore, CHECKPOINT_BLOBS};
use crate::snapshot::Snapshot;
use crate::snapshot::tree::{NodeKind, Tree};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct IndexRepair {
    pub packs_indexed: u64,
    pub blobs_indexed: u64,
    /// Packs whose blobs could not be listed, each with the reason.
    pub unreadable: Vec<String>,
    pub segments_written: u64,
    pub segments_removed: u64,
}

fn read_entries(
    repo: &Repository,
    name: &str,
    size: u64,
) -> std::result::Result<IndexedPack, String> {
    let id = PackId::from_hex(name).ok_or("not a pack name")?;
    let quick = || -> std::result::Result<IndexedPack, String> {
        let last4 = repo
            .backend()
            .get_range(FileKind::Pack, name, size.saturating_sub(4), 4)
            .map_err(|e| e.to_string())?;
        let n = trailer_len(last4.as_slice().try_into().map_err(|_| "short read")?, size)?;
        let start = size - 4 - n as u64;
        let sealed = repo
            .backend()
            .get_range(FileKind::Pack, name, start, n)
            .map_err(|e| e.to_string())?;
        let entries = open_trailer(repo.keys(), repo.id(), &sealed, start)?;
        Ok(IndexedPack { id, size, entries })
    };
    quick().or_else(|_| {
        // The slow way also catches a pack whose size field was damaged.
        let bytes = repo
            .backend()
            .get(FileKind::Pack, name)
            .map_err(|e| e.to_string())?;
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
pub fn repair_index(repo: &Repository) -> Result<IndexRepair> {
    let old: Vec<SegmentId> = repo
        .backend()
        .list(FileKind::Index)?
        .into_iter()
        .filter_map(|(n, _)| SegmentId::from_hex(&n))
        .collect();
    let packs = repo.backend().list(FileKind::Pack)?;
    let results: Vec<(String, std::result::Result<IndexedPack, String>)> = packs
        .par_iter()
        .map(|(name, size)| (name.clone(), read_entries(repo, name, *size)))
        .collect();
    let mut report = IndexRepair::default();
    let mut seg = Segment::default();
    let mut blobs = 0usize;
    for (name, r) in results {
        match r {
            Ok(p) => {
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
            Err(e) => report
                .unreadable
                .push(format!("{}: {e}", FileKind::Pack.path(&name))),
        }
    }
    if !seg.packs.is_empty() {
        repo.save_segment(&seg)?;
        report.segments_written += 1;
    }
    // Sealing uses random nonces, so no new segment shares an old name.
    for s in &old {
        repo.delete(FileKind::Index, &s.to_hex())?;
        report.segments_removed += 1;
    }
    repo.refresh_index()?;
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
}

/// Rewrite a tree without what cannot be restored. `None`: unchanged.
fn rewrite(
    repo: &Repository,
    store: &BlobStore,
    id: &BlobId,
    path: &str,
    dropped: &mut Vec<String>,
    memo: &mut HashMap<BlobId, Option<BlobId>>,
) -> Result<Option<BlobId>> {
    if let Some(m) = memo.get(id) {
        return Ok(*m);
    }
    let idx = repo.index()?;
    let mut tree = match repo
        .read_blob(BlobKind::Tree, id)
        .and_then(|b| Tree::decode(&b).map_err(|e| Error::corrupt(format!("tree {id}"), e.0)))
    {
        Ok(t) => t,
        Err(_) => {
            dropped.push(format!("{path} (unreadable directory)"));
            let empty = Tree::default().encode();
            let eid = store.blob_id(&empty);
            store.store_blob(BlobKind::Tree, eid, &empty)?;
            return Ok(Some(eid));
        }
    };
    let mut changed = false;
    let mut keep = Vec::with_capacity(tree.nodes.len());
    for mut n in std::mem::take(&mut tree.nodes) {
        let p = format!(
            "{}/{}",
            path.trim_end_matches('/'),
            String::from_utf8_lossy(&n.name)
        );
        let mut lost = false;
        for c in &n.content {
            if !idx.contains(c)? {
                lost = true;
                break;
            }
        }
        if lost {
            dropped.push(p);
            changed = true;
            continue;
        }
        if n.kind == NodeKind::Dir
            && let Some(sub) = n.subtree
            && let Some(new) = rewrite(repo, store, &sub, &p, dropped, memo)?
        {
            n.subtree = Some(new);
            changed = true;
        }
        keep.push(n);
    }
    let out = if changed {
        tree.nodes = keep;
        let bytes = tree.encode();
        let nid = store.blob_id(&bytes);
        store.store_blob(BlobKind::Tree, nid, &bytes)?;
        Some(nid)
    } else {
        None
    };
    memo.insert(*id, out);
    Ok(out)
}

/// Write repaired copies of damaged snapshots; with `forget`, remove the
/// originals once their copies are stored. The caller holds an exclusive lock.
///
/// When the index lists packs that are gone, it is rebuilt from the packs
/// first: otherwise their blobs would look present, nothing would be
/// repaired, and the next backup would reuse the lost data.
pub fn repair_snapshots(repo: Arc<Repository>, forget: bool) -> Result<SnapshotRepair> {
    let mut report = SnapshotRepair::default();
    let present: std::collections::HashSet<String> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
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
            repo.delete(FileKind::Snapshot, &id.to_hex())?;
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
        let mut dropped = Vec::new();
        match rewrite(&repo, &store, &s.tree, "/", &mut dropped, &mut memo)? {
            Some(new_root) => plans.push((sid, s, new_root, dropped)),
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
            repo.delete(FileKind::Snapshot, &old.to_hex())?;
        }
        report.rewritten.push((old, nid, dropped));
    }
    Ok(report)
}
