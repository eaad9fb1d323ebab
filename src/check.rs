//! `check`: find every fault, change nothing (a lock object aside).
//!
//! Structure: the config and a key opened (or we would not be here); every
//! index segment reads; every indexed pack exists with its recorded size;
//! each pack's own trailer agrees with the index; every snapshot reads and
//! every tree and blob it references is indexed. Packs nobody indexes are
//! reported as reclaimable (`prune` removes them), not as errors.
//!
//! `--read-data` (or a subset of packs) also reads packs whole: the name
//! must be the hash of the bytes, and every blob must authenticate,
//! decompress and hash to its id. Hardware faults are what users hit most
//! (doc/reliability.md §0.3), so a subset each night is cheap insurance.

use crate::backend::FileKind;
use crate::blob::{BlobKind, BlobSource};
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId, SnapshotId, content_hash};
use crate::pack::reader::{open_trailer, parse_pack, trailer_len};
use crate::pack::{PackEntry, open_blob};
use crate::progress::Progress;
use crate::repository::Repository;
use crate::snapshot::Snapshot;
use crate::snapshot::tree::{NodeKind, Tree};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

/// Which packs to read in full.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReadData {
    None,
    All,
    /// A random share of the packs (0 < f ≤ 1).
    Fraction(f64),
    /// Slice n of m (1-based): m runs with n = 1..m read every pack once.
    Slice(u32, u32),
}

impl ReadData {
    /// Parse `10%` or `n/m`.
    pub fn parse_subset(s: &str) -> std::result::Result<ReadData, String> {
        if let Some(f) = crate::units::parse_percent(s) {
            return f.map(ReadData::Fraction);
        }
        if let Some((n, m)) = s.split_once('/') {
            let n: u32 = n
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: n in n/m is not a number"))?;
            let m: u32 = m
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: m in n/m is not a number"))?;
            if m == 0 || n == 0 || n > m {
                return Err(format!("{s:?}: use n/m with 1 ≤ n ≤ m"));
            }
            return Ok(ReadData::Slice(n, m));
        }
        Err(format!("{s:?}: give a percentage (10%) or a slice (n/m)"))
    }

    fn selects(&self, i: usize, _id: &PackId) -> bool {
        match *self {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Fraction(f) => {
                let mut r = [0u8; 8];
                crate::crypto::envelope::random_bytes(&mut r);
                (u64::from_le_bytes(r) as f64 / u64::MAX as f64) < f
            }
            ReadData::Slice(n, m) => (i as u64 % m as u64) == (n as u64 - 1),
        }
    }
}

#[derive(Debug, Default)]
pub struct Findings {
    /// Damage: each line names the object and what is wrong.
    pub errors: Vec<String>,
    /// Worth knowing, not damage (reclaimable packs).
    pub infos: Vec<String>,
    pub snapshots: u64,
    pub trees: u64,
    pub packs: u64,
    pub packs_read: u64,
    pub blobs_read: u64,
    pub bytes_read: u64,
}

pub fn check(repo: &Repository, read: ReadData, progress: &dyn Progress) -> Result<Findings> {
    let mut f = Findings::default();
    // Every index segment is read from the repository and the cache judged
    // against it: a cache filled while the segments were sound would hide
    // damage done since, and a damaged cache would blame intact packs.
    let audit = repo.audit_index(true)?;
    f.infos.extend(audit.cache_note());
    f.errors.extend(audit.damaged_segments.iter().cloned());
    let idx = repo.index()?;
    // Packs: listing vs index.
    let listed: HashMap<String, u64> = repo.list_packs()?.into_iter().collect();
    let indexed = idx.packs()?;
    let indexed_names: HashSet<String> = indexed.iter().map(|(p, _)| p.to_hex()).collect();
    f.packs = indexed.len() as u64;
    let mut present = Vec::new();
    for (p, size) in &indexed {
        match listed.get(&p.to_hex()) {
            None => f.errors.push(format!(
                "pack {p} is in the index but missing from the repository (`coffer repair snapshots` drops it from the index and writes snapshots without the files that needed it)"
            )),
            Some(&s) if s != *size => f.errors.push(format!(
                "pack {p} is {s} bytes, the index records {size} (truncated or damaged: `coffer repair packs {p}` keeps what still verifies)"
            )),
            Some(_) => present.push((*p, *size)),
        }
    }
    let mut unindexed = 0u64;
    let mut unindexed_bytes = 0u64;
    for (name, size) in &listed {
        if !indexed_names.contains(name) {
            unindexed += 1;
            unindexed_bytes += size;
        }
    }
    // Trailers vs index, in parallel: two small reads per pack.
    let in_flight = repo.requests_in_flight();
    let trailer_errors: Vec<String> = crate::backend::in_io_pool(in_flight, || {
        present
            .par_iter()
            .filter_map(|(p, size)| check_trailer(repo, p, *size).err())
            .collect()
    });
    f.errors.extend(trailer_errors);
    // Snapshots, trees, blobs. The references go to a list in the cache
    // and are compared with the index in one sorted pass: a lookup per
    // reference was ten million random reads of the index. Only if some
    // are missing are the trees walked again, to name the files.
    let snaps = repo.list_snapshots()?;
    f.snapshots = snaps.len() as u64;
    idx.scratch().refs_reset()?;
    let (trees, tree_errors, trees_missing) = walk_trees(repo, &snaps, |_, _, tree| {
        let content: Vec<BlobId> = tree
            .nodes
            .iter()
            .flat_map(|n| n.content.iter().copied())
            .collect();
        idx.scratch().refs_add(&content)
    })?;
    f.trees = trees;
    f.errors.extend(tree_errors);
    let missing = idx.scratch().refs_resolve()?;
    f.infos.extend(next_step(
        missing + trees_missing,
        unindexed,
        unindexed_bytes,
        !audit.damaged_segments.is_empty(),
    ));
    if missing > 0 {
        walk_trees(repo, &snaps, |sid, path, tree| {
            let content: Vec<BlobId> = tree
                .nodes
                .iter()
                .flat_map(|n| n.content.iter().copied())
                .collect();
            let missing = idx.scratch().missing_among(&content)?;
            for n in &tree.nodes {
                if let Some(c) = n.content.iter().find(|c| missing.contains(c)) {
                    f.errors.push(format!(
                        "snapshot {} {}: data blob {c} is missing from the index",
                        sid.short(),
                        String::from_utf8_lossy(&child_path(path, &n.name))
                    ));
                }
            }
            Ok(())
        })?;
    }
    // Problems met on the way (a segment skipped when the index was
    // built, a damaged snapshot), each once.
    for p in repo.take_damaged() {
        if !f.errors.contains(&p) {
            f.errors.push(p);
        }
    }
    // Read data.
    if read != ReadData::None {
        let mut sorted = present.clone();
        sorted.sort();
        let chosen: Vec<(PackId, u64)> = sorted
            .iter()
            .enumerate()
            .filter(|(i, (p, _))| read.selects(*i, p))
            .map(|(_, p)| *p)
            .collect();
        progress.scan_total(chosen.len() as u64, chosen.iter().map(|(_, s)| s).sum());
        let results: Vec<(u64, u64, Vec<String>)> = crate::backend::in_io_pool(in_flight, || {
            chosen
                .par_iter()
                .map(|(p, size)| {
                    let r = read_pack(repo, p);
                    // A pack that fails counts as done too: the bar
                    // measures the work, the findings the damage.
                    progress.bytes_done(*size);
                    progress.item_done();
                    r.unwrap_or_else(|e| (0, 0, vec![e.to_string()]))
                })
                .collect()
        });
        f.packs_read = chosen.len() as u64;
        for (blobs, bytes, errs) in results {
            f.blobs_read += blobs;
            f.bytes_read += bytes;
            f.errors.extend(errs);
        }
    }
    Ok(f)
}

/// What to run about referenced blobs the index lacks (`missing`) and
/// packs it does not list. Unindexed packs may well hold the missing blobs
/// (the index was lost or damaged): then the index is rebuilt first, and
/// nothing is called lost or reclaimable until that is done.
fn next_step(
    missing: u64,
    unindexed: u64,
    unindexed_bytes: u64,
    damaged_segments: bool,
) -> Option<String> {
    let unindexed_line =
        format!("{unindexed} packs ({unindexed_bytes} bytes) are not in the index");
    match (missing, unindexed > 0 || damaged_segments) {
        (0, _) if unindexed > 0 => Some(format!(
            "{unindexed_line} (left by an interrupted backup or prune); `coffer prune` reclaims them"
        )),
        (0, _) => None,
        (_, true) => Some(format!(
            "{missing} blobs the snapshots need are not in the index{}: `coffer repair index` rebuilds the index from the packs, then run `coffer check` again",
            if unindexed > 0 {
                format!(", and {unindexed_line}")
            } else {
                String::new()
            }
        )),
        (_, false) => Some(format!(
            "{missing} blobs the snapshots need are in no pack: `coffer repair snapshots` writes snapshots without the files that need them, and the next backup stores again what still exists"
        )),
    }
}

/// Visit every tree the snapshots reach, once each (a shared tree under
/// the first snapshot that reaches it), with its snapshot and path.
/// Returns how many trees there were, a line for each that could not be
/// read, and how many of those the index does not list.
fn walk_trees(
    repo: &Repository,
    snaps: &[(SnapshotId, Snapshot)],
    mut visit: impl FnMut(&SnapshotId, &[u8], &Tree) -> Result<()>,
) -> Result<(u64, Vec<String>, u64)> {
    let mut seen: HashSet<BlobId> = HashSet::new();
    let (mut trees, mut errors, mut missing) = (0u64, Vec::new(), 0u64);
    for (sid, s) in snaps {
        let mut stack = vec![(s.tree, b"/".to_vec())];
        while let Some((tid, path)) = stack.pop() {
            if !seen.insert(tid) {
                continue;
            }
            trees += 1;
            let tree = match repo.read_blob(BlobKind::Tree, &tid).and_then(|b| {
                Tree::decode(&b).map_err(|e| Error::corrupt(format!("tree {tid}"), e.0))
            }) {
                Ok(t) => t,
                Err(e) => {
                    let what = match e {
                        Error::BlobMissing { id } => {
                            missing += 1;
                            format!("tree {id} is missing from the index")
                        }
                        e => e.to_string(),
                    };
                    errors.push(format!(
                        "snapshot {} {}: {what}",
                        sid.short(),
                        String::from_utf8_lossy(&path)
                    ));
                    continue;
                }
            };
            visit(sid, &path, &tree)?;
            for n in &tree.nodes {
                if n.kind == NodeKind::Dir
                    && let Some(sub) = n.subtree
                {
                    stack.push((sub, child_path(&path, &n.name)));
                }
            }
        }
    }
    Ok((trees, errors, missing))
}

fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if p.len() > 1 {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn check_trailer(repo: &Repository, p: &PackId, size: u64) -> std::result::Result<(), String> {
    let name = p.to_hex();
    let obj = FileKind::Pack.path(&name);
    let fail = |e: String| format!("{obj}: {e}");
    let last4 = repo
        .read_pack_range(p, size.saturating_sub(4), 4)
        .map_err(|e| fail(e.to_string()))?;
    let last4: [u8; 4] = last4
        .as_slice()
        .try_into()
        .map_err(|_| fail("short read".into()))?;
    // A trailer that does not read leaves the blobs where the index says.
    let unreadable = |e: String| {
        fail(format!(
            "{e} (`coffer repair packs {name}` keeps the blobs the index locates)"
        ))
    };
    let n = trailer_len(last4, size).map_err(unreadable)?;
    let start = size - 4 - n as u64;
    let sealed = repo
        .read_pack_range(p, start, n)
        .map_err(|e| fail(e.to_string()))?;
    let entries = open_trailer(repo.keys(), repo.id(), &sealed, start).map_err(unreadable)?;
    let recorded = repo
        .index()
        .map_err(|e| fail(e.to_string()))?
        .pack_entries(p)
        .map_err(|e| fail(e.to_string()))?;
    let mut a = entries.clone();
    a.sort_by_key(|e| e.offset);
    if a != recorded {
        return Err(fail(format!(
            "the pack's trailer lists {} blobs that differ from the {} the index records (`coffer repair index` rebuilds the index from the packs' trailers)",
            a.len(),
            recorded.len()
        )));
    }
    Ok(())
}

/// Read one pack whole and verify everything in it.
fn read_pack(repo: &Repository, p: &PackId) -> Result<(u64, u64, Vec<String>)> {
    let name = p.to_hex();
    let obj = FileKind::Pack.path(&name);
    let bytes = repo.read_pack(p)?;
    let mut errs = Vec::new();
    if content_hash(&bytes) != p.0 {
        errs.push(format!("{obj}: content does not match its name (damaged)"));
    }
    // A pack whose trailer is damaged still has its blobs where the index
    // says: verify those, as `repair packs` will salvage them.
    let entries = match parse_pack(repo.keys(), repo.id(), &bytes) {
        Ok(e) => e,
        Err(e) => {
            errs.push(format!("{obj}: {e}"));
            repo.index()?.pack_entries(p)?
        }
    };
    let blobs = entries.len() as u64;
    errs.extend(verify_blobs(repo, &obj, &bytes, entries).2);
    if !errs.is_empty() {
        errs.push(format!(
            "{obj} is damaged: `coffer repair packs {name}` keeps what still verifies and lets the next backup store the rest again"
        ));
    }
    Ok((blobs, bytes.len() as u64, errs))
}

/// Authenticate, decompress and re-hash each blob of a pack read whole
/// (`obj` names it in the faults): the entries that verify, the ids of
/// those that do not, and a line per fault.
pub(crate) fn verify_blobs(
    repo: &Repository,
    obj: &str,
    bytes: &[u8],
    entries: Vec<PackEntry>,
) -> (Vec<PackEntry>, Vec<BlobId>, Vec<String>) {
    let (mut good, mut bad, mut faults) =
        (Vec::with_capacity(entries.len()), Vec::new(), Vec::new());
    for e in entries {
        let start = e.offset as usize;
        let Some(sealed) = bytes.get(start..start.saturating_add(e.length as usize)) else {
            faults.push(format!("{obj}: blob {} lies outside the pack", e.id));
            bad.push(e.id);
            continue;
        };
        match open_blob(repo.keys(), repo.id(), &e, sealed) {
            Ok(_) => good.push(e),
            Err(err) => {
                faults.push(format!("{obj}: {err}"));
                bad.push(e.id);
            }
        }
    }
    (good, bad, faults)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::blob_store::store_in_own_pack;
    use crate::snapshot::tree::Node;

    fn file(name: &str, content: &[BlobId]) -> Node {
        let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::File);
        n.content = content.to_vec();
        n
    }

    /// References the index lacks are found by the sorted comparison and
    /// named by snapshot and path, once per tree, however many snapshots
    /// share it; indexed ones are not reported.
    #[test]
    fn unindexed_data_blobs_are_named_by_path() {
        let (_, repo) = crate::repository::memory_repo();
        let a = store_in_own_pack(&repo, &[(BlobKind::Data, b"aaaa".to_vec())])[0];
        let lost = |s: &str| repo.keys().blob_id(s.as_bytes());
        let mut sub = Tree::default();
        sub.nodes.push(file("a", &[a, a]));
        sub.nodes.push(file("b", &[a, lost("b")]));
        sub.sort();
        let sub_bytes = sub.encode();
        let sub_id = repo.keys().blob_id(&sub_bytes);
        let mut root = Tree::default();
        let mut dir = Node::new(b"sub".to_vec(), NodeKind::Dir);
        dir.subtree = Some(sub_id);
        root.nodes.push(dir);
        root.nodes.push(file("c", &[lost("c"), lost("b")]));
        root.sort();
        let root_bytes = root.encode();
        let ids = store_in_own_pack(
            &repo,
            &[(BlobKind::Tree, sub_bytes), (BlobKind::Tree, root_bytes)],
        );
        let mut snap = crate::snapshot::Snapshot {
            time_ns: 0,
            tree: ids[1],
            parent: None,
            hostname: "h".into(),
            username: "u".into(),
            uid: 0,
            gid: 0,
            paths: vec![b"/".to_vec()],
            tags: Vec::new(),
            program_version: "test".into(),
            summary: Default::default(),
        };
        repo.save_snapshot(&snap).unwrap();
        snap.time_ns = 1;
        repo.save_snapshot(&snap).unwrap();
        let f = check(&repo, ReadData::None, &crate::progress::NoProgress).unwrap();
        assert_eq!((f.snapshots, f.trees, f.packs), (2, 2, 2));
        let mut errors = f.errors.clone();
        errors.sort();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].ends_with(&format!(
                "/c: data blob {} is missing from the index",
                lost("c")
            )),
            "{errors:?}"
        );
        assert!(
            errors[1].ends_with(&format!(
                "/sub/b: data blob {} is missing from the index",
                lost("b")
            )),
            "{errors:?}"
        );
        // With everything indexed, a second check of the same cache is clean.
        store_in_own_pack(
            &repo,
            &[
                (BlobKind::Data, b"b".to_vec()),
                (BlobKind::Data, b"c".to_vec()),
            ],
        );
        repo.refresh_index().unwrap();
        let f = check(&repo, ReadData::None, &crate::progress::NoProgress).unwrap();
        assert!(f.errors.is_empty(), "{:?}", f.errors);
    }

    #[test]
    fn subsets() {
        assert_eq!(
            ReadData::parse_subset("10%").unwrap(),
            ReadData::Fraction(0.1)
        );
        assert_eq!(
            ReadData::parse_subset("2/5").unwrap(),
            ReadData::Slice(2, 5)
        );
        assert!(ReadData::parse_subset("0%").is_err());
        assert!(ReadData::parse_subset("6/5").is_err());
        assert!(ReadData::parse_subset("x").is_err());
        // Every pack is in exactly one slice of m.
        let id = PackId([0; 32]);
        for i in 0..20 {
            let n = (1..=4)
                .filter(|n| ReadData::Slice(*n, 4).selects(i, &id))
                .count();
            assert_eq!(n, 1);
        }
    }
}
