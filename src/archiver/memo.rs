//! What the walk needs of an unchanged directory's parent tree, kept in
//! the local cache so that the tree need not be read at all.
//!
//! To find a directory unchanged, the walk compared every entry's
//! metadata with the parent snapshot's node for it, and for that it read,
//! decrypted, decompressed, verified and decoded every parent tree: in a
//! no-change backup of a 35k-file home tree that was 54% of the walk's
//! instructions (`valgrind --tool=callgrind`). A tree's id names its bytes
//! (a keyed hash), so whatever is derived from those bytes holds for as
//! long as the id exists, whichever snapshot or path it turns up under.
//! A [`TreeMemo`] keeps, for one tree id:
//!
//! - one digest of every node's metadata as the change rule compares it
//!   (`same_node`): name, kind, mode, owner ids, times, inode, device,
//!   links, size, device number, symlink target, in order;
//! - the owner names the nodes record, by id, since a renamed user makes
//!   every node of that owner different;
//! - each subdirectory's name, subtree id, extended attributes and a
//!   digest of its whole node, for the walk to go on below (with the
//!   attributes the parent recorded, as it takes them from the parent's
//!   node) and for the assembler to see whether the subdirectory's node
//!   came out the same.
//!
//! The same digest over a fresh listing equal to the memo's means every
//! entry passes `same_node` against the parent's node: extended attributes
//! aside, which the walk takes from the parent's node anyway when kind,
//! change time, inode and device are the same (setting one changes the
//! change time). A tree with a node recorded with a problem gets no memo:
//! such a node is never reused as it is.
//!
//! A memo that cannot be decoded, or whose checksum fails (a damaged
//! cache page), is a miss.

use super::metadata::{NameCache, kind_of};
use super::prefetch::Scanned;
use crate::blob::BlobSink;
use crate::codec::{DecodeError, Reader, Writer};
use crate::id::BlobId;
use crate::snapshot::tree::{Node, NodeKind, Time, Tree};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

/// First byte of an encoded memo: another layout is a miss.
const MEMO_VERSION: u8 = 2;

/// Bytes of the BLAKE3 checksum that ends an encoded memo.
const CHECKSUM_LEN: usize = 16;

/// Memos sent to the cache at once.
const KEEP_BATCH: usize = 256;

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TreeMemo {
    stats: [u8; 32],
    users: Vec<(u32, Arc<str>)>,
    groups: Vec<(u32, Arc<str>)>,
    pub subdirs: Vec<SubdirMemo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubdirMemo {
    pub name: Vec<u8>,
    pub subtree: Option<BlobId>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// [`node_digest`] of the subdirectory's node.
    pub node: [u8; 32],
}

/// The fields `same_node` compares, fed in one order for both sides.
struct StatDigest(blake3::Hasher);

impl StatDigest {
    fn new(entries: usize) -> Self {
        let mut h = blake3::Hasher::new_derive_key("coffer 2026 tree memo stats");
        h.update(&(entries as u64).to_le_bytes());
        StatDigest(h)
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        name: &[u8],
        kind: NodeKind,
        mode: u32,
        (uid, gid): (u32, u32),
        (mtime, ctime): (Time, Time),
        (inode, device, links): (u64, u64, u64),
        (size, rdev): (u64, u64),
        target: &[u8],
    ) {
        let h = &mut self.0;
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name);
        h.update(&[kind as u8]);
        for v in [mode, uid, gid, mtime.nsec, ctime.nsec] {
            h.update(&v.to_le_bytes());
        }
        for v in [mtime.sec, ctime.sec] {
            h.update(&v.to_le_bytes());
        }
        for v in [inode, device, links, size, rdev] {
            h.update(&v.to_le_bytes());
        }
        h.update(&(target.len() as u64).to_le_bytes());
        h.update(target);
    }

    fn node(&mut self, n: &Node) {
        self.entry(
            &n.name,
            n.kind,
            n.mode,
            (n.uid, n.gid),
            (n.mtime, n.ctime),
            (n.inode, n.device, n.links),
            (n.size, n.rdev),
            &n.link_target,
        );
    }

    /// As `node_from_parts` would fill a node from this metadata.
    fn live(&mut self, name: &[u8], md: &Metadata, link_target: &[u8]) {
        let kind = kind_of(md);
        let (size, rdev, target): (u64, u64, &[u8]) = match kind {
            NodeKind::File => (md.size(), 0, &[]),
            NodeKind::Symlink => (link_target.len() as u64, 0, link_target),
            NodeKind::CharDevice | NodeKind::BlockDevice => (0, md.rdev(), &[]),
            _ => (0, 0, &[]),
        };
        self.entry(
            name,
            kind,
            md.mode() & 0o7777,
            (md.uid(), md.gid()),
            (
                Time::new(md.mtime(), md.mtime_nsec()),
                Time::new(md.ctime(), md.ctime_nsec()),
            ),
            (md.ino(), md.dev(), md.nlink()),
            (size, rdev),
            target,
        );
    }

    fn finish(self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

/// A digest of a whole node, as the tree encodes it: two nodes with the
/// same digest are equal.
pub(crate) fn node_digest(n: &Node) -> [u8; 32] {
    let one = Tree {
        nodes: vec![n.clone()],
    };
    *blake3::hash(&one.encode()).as_bytes()
}

impl TreeMemo {
    /// The memo of `tree`; none when a node was recorded with a problem.
    pub fn of_tree(tree: &Tree) -> Option<TreeMemo> {
        let mut d = StatDigest::new(tree.nodes.len());
        let mut users: Vec<(u32, Arc<str>)> = Vec::new();
        let mut groups: Vec<(u32, Arc<str>)> = Vec::new();
        let mut subdirs = Vec::new();
        for n in &tree.nodes {
            if n.flags != 0 {
                return None;
            }
            d.node(n);
            for (list, id, name) in [(&mut users, n.uid, &n.user), (&mut groups, n.gid, &n.group)] {
                match list.iter().find(|(i, _)| *i == id) {
                    // One tree naming one id two ways cannot be matched.
                    Some((_, known)) if known != name => return None,
                    Some(_) => {}
                    None => list.push((id, name.clone())),
                }
            }
            if n.kind == NodeKind::Dir {
                subdirs.push(SubdirMemo {
                    name: n.name.clone(),
                    subtree: n.subtree,
                    xattrs: n.xattrs.clone(),
                    node: node_digest(n),
                });
            }
        }
        Some(TreeMemo {
            stats: d.finish(),
            users,
            groups,
            subdirs,
        })
    }

    /// Would the walk find these entries (in order, the whole listing)
    /// the same as the tree's nodes? The owner names are looked up now,
    /// as the walk compares them.
    pub fn matches(&self, entries: &[Scanned], names: &mut NameCache) -> bool {
        let mut d = StatDigest::new(entries.len());
        for e in entries {
            d.live(&e.name, &e.md, &e.link_target);
        }
        d.finish() == self.stats
            && self.users.iter().all(|(id, n)| names.user_ref(*id) == n)
            && self.groups.iter().all(|(id, n)| names.group_ref(*id) == n)
    }

    /// What the parent recorded for subdirectory `name`.
    pub fn subdir(&self, name: &[u8]) -> Option<&SubdirMemo> {
        self.subdirs
            .binary_search_by(|s| s.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.subdirs[i])
    }

    /// The subtree id the parent recorded for subdirectory `name`.
    pub fn subtree(&self, name: &[u8]) -> Option<BlobId> {
        self.subdir(name).and_then(|s| s.subtree)
    }

    /// Are `fresh` (the subdirectories' nodes as this backup built them,
    /// in order) the tree's own, so that its id stands?
    pub fn same_subdirs(&self, fresh: &[Node]) -> bool {
        fresh.len() == self.subdirs.len()
            && fresh
                .iter()
                .zip(&self.subdirs)
                .all(|(n, s)| n.name == s.name && node_digest(n) == s.node)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(MEMO_VERSION);
        w.raw(&self.stats);
        for list in [&self.users, &self.groups] {
            w.u32(list.len() as u32);
            for (id, name) in list {
                w.u32(*id);
                w.str(name);
            }
        }
        w.u32(self.subdirs.len() as u32);
        for s in &self.subdirs {
            w.bytes(&s.name);
            match &s.subtree {
                Some(id) => {
                    w.u8(1);
                    w.raw(id.as_bytes());
                }
                None => w.u8(0),
            }
            w.u32(s.xattrs.len() as u32);
            for (k, v) in &s.xattrs {
                w.bytes(k);
                w.bytes(v);
            }
            w.raw(&s.node);
        }
        let mut out = w.finish();
        let sum = blake3::hash(&out);
        out.extend_from_slice(&sum.as_bytes()[..CHECKSUM_LEN]);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<TreeMemo, DecodeError> {
        let Some(body_len) = bytes.len().checked_sub(CHECKSUM_LEN) else {
            return Err(DecodeError("tree memo too short".into()));
        };
        let (body, sum) = bytes.split_at(body_len);
        if blake3::hash(body).as_bytes()[..CHECKSUM_LEN] != *sum {
            return Err(DecodeError("tree memo checksum mismatch".into()));
        }
        let mut r = Reader::new(body);
        if r.u8()? != MEMO_VERSION {
            return Err(DecodeError("unknown tree memo version".into()));
        }
        let stats = r.array::<32>()?;
        let mut owners = [Vec::new(), Vec::new()];
        for list in &mut owners {
            let n = r.count(1 << 20, 8, "owner names")?;
            for _ in 0..n {
                let id = r.u32()?;
                list.push((id, Arc::from(r.str(1 << 16, "owner name")?)));
            }
        }
        let [users, groups] = owners;
        let n = r.count(1 << 24, 37, "subdirectories")?;
        let mut subdirs = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.bytes(1 << 16, "subdirectory name")?.to_vec();
            let subtree = match r.u8()? {
                0 => None,
                1 => Some(BlobId(r.array::<32>()?)),
                _ => return Err(DecodeError("bad subtree flag".into())),
            };
            let n_x = r.count(1 << 16, 8, "extended attributes")?;
            let mut xattrs = Vec::with_capacity(n_x);
            for _ in 0..n_x {
                let k = r.bytes(1 << 16, "xattr name")?.to_vec();
                let v = r.bytes(1 << 26, "xattr value")?.to_vec();
                xattrs.push((k, v));
            }
            let node = r.array::<32>()?;
            if subdirs
                .last()
                .is_some_and(|p: &SubdirMemo| p.name.as_slice() >= name.as_slice())
            {
                return Err(DecodeError("subdirectories out of order".into()));
            }
            subdirs.push(SubdirMemo {
                name,
                subtree,
                xattrs,
                node,
            });
        }
        r.finish()?;
        Ok(TreeMemo {
            stats,
            users,
            groups,
            subdirs,
        })
    }
}

/// Memos found and made during one backup, written to the cache in
/// batches. Only a cache: every failure to read or keep one is a miss.
pub(crate) struct Memos<'a> {
    sink: &'a dyn BlobSink,
    pending: Mutex<Vec<(BlobId, Vec<u8>)>>,
}

impl<'a> Memos<'a> {
    pub fn new(sink: &'a dyn BlobSink) -> Self {
        Memos {
            sink,
            pending: Mutex::new(Vec::new()),
        }
    }

    /// The memo of tree `id`; one due to be kept on is written again
    /// with the next batch.
    pub fn get(&self, id: &BlobId) -> Option<TreeMemo> {
        let (bytes, due) = self.sink.tree_memo(id)?;
        let memo = TreeMemo::decode(&bytes).ok()?;
        if due {
            self.push(*id, bytes);
        }
        Some(memo)
    }

    /// Keep the memo of `tree`, stored or found under `id`.
    pub fn keep(&self, id: BlobId, tree: &Tree) {
        if let Some(memo) = TreeMemo::of_tree(tree) {
            self.push(id, memo.encode());
        }
    }

    fn push(&self, id: BlobId, encoded: Vec<u8>) {
        let batch = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.push((id, encoded));
            if p.len() < KEEP_BATCH {
                return;
            }
            std::mem::take(&mut *p)
        };
        self.sink.keep_tree_memos(batch);
    }

    /// Write what is still pending.
    pub fn flush(&self) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if !batch.is_empty() {
            self.sink.keep_tree_memos(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiver::metadata::{node_from_parts, read_xattrs};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    /// The walk's listing of `dir` and the tree a backup would record.
    fn listed(dir: &Path, names: &mut NameCache) -> (Vec<Scanned>, Tree) {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        let mut entries = Vec::new();
        let mut tree = Tree::default();
        for p in paths {
            let md = std::fs::symlink_metadata(&p).unwrap();
            let target = std::fs::read_link(&p)
                .map(|t| t.as_os_str().as_bytes().to_vec())
                .unwrap_or_default();
            let name = p.file_name().unwrap().as_bytes().to_vec();
            let mut node =
                node_from_parts(name.clone(), &md, names, target.clone(), read_xattrs(&p));
            if node.kind == NodeKind::Dir {
                node.subtree = Some(BlobId([name.len() as u8; 32]));
            }
            tree.nodes.push(node);
            entries.push(Scanned {
                name,
                md,
                xattrs: Vec::new(),
                link_target: target,
                cache_dir: false,
            });
        }
        (entries, tree)
    }

    fn sample() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"some bytes").unwrap();
        std::os::unix::fs::symlink("f", d.path().join("l")).unwrap();
        std::fs::create_dir(d.path().join("d")).unwrap();
        std::fs::create_dir(d.path().join("e")).unwrap();
        d
    }

    #[test]
    fn a_memo_matches_the_listing_its_tree_was_made_from_and_no_other() {
        let d = sample();
        let mut names = NameCache::default();
        let (entries, tree) = listed(d.path(), &mut names);
        let memo = TreeMemo::of_tree(&tree).unwrap();
        assert!(memo.matches(&entries, &mut names));
        assert_eq!(memo.subtree(b"d"), Some(BlobId([1; 32])));
        assert_eq!(memo.subtree(b"f"), None);
        // Any field the change rule compares, off in one node, and the
        // memo no longer matches: as `same_node_agrees_with_node_from_parts`
        // for the node-by-node comparison.
        let changes: Vec<fn(&mut Node)> = vec![
            |n| n.mode ^= 0o1,
            |n| n.uid += 1,
            |n| n.gid += 1,
            |n| n.user = format!("{}x", n.user).into(),
            |n| n.group = format!("{}x", n.group).into(),
            |n| n.mtime.nsec ^= 1,
            |n| n.ctime.sec += 1,
            |n| n.size += 1,
            |n| n.inode += 1,
            |n| n.device += 1,
            |n| n.links += 1,
            |n| n.rdev += 1,
            |n| n.link_target.push(b'x'),
            |n| n.name.push(b'x'),
            |n| {
                n.kind = if n.kind == NodeKind::File {
                    NodeKind::Fifo
                } else {
                    NodeKind::File
                }
            },
        ];
        for at in 0..tree.nodes.len() {
            for (i, change) in changes.iter().enumerate() {
                let mut t = tree.clone();
                change(&mut t.nodes[at]);
                // No memo at all (one owner id named two ways) is safe too.
                assert!(
                    TreeMemo::of_tree(&t).is_none_or(|m| !m.matches(&entries, &mut names)),
                    "change {i} of node {at} went unnoticed"
                );
            }
        }
        // The owner renamed since: every node names the old name.
        for group in [false, true] {
            let mut t = tree.clone();
            for n in &mut t.nodes {
                let old = if group { &mut n.group } else { &mut n.user };
                *old = format!("{old}-before").into();
            }
            let m = TreeMemo::of_tree(&t).unwrap();
            assert!(!m.matches(&entries, &mut names), "group {group}");
        }
        // One entry more or less.
        assert!(!memo.matches(&entries[1..], &mut names));
        // A node recorded with a problem is never reused as it is.
        let mut t = tree.clone();
        t.nodes[2].flags = 1;
        assert!(TreeMemo::of_tree(&t).is_none());
    }

    #[test]
    fn a_touched_file_no_longer_matches() {
        let d = sample();
        let mut names = NameCache::default();
        let (_, tree) = listed(d.path(), &mut names);
        let memo = TreeMemo::of_tree(&tree).unwrap();
        // Same size, new content and modification time.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.path().join("f"), b"other byte").unwrap();
        let (entries, _) = listed(d.path(), &mut names);
        assert!(!memo.matches(&entries, &mut names));
    }

    #[test]
    fn subdirectories_are_the_same_only_node_for_node() {
        let d = sample();
        let mut names = NameCache::default();
        let (_, tree) = listed(d.path(), &mut names);
        let memo = TreeMemo::of_tree(&tree).unwrap();
        let dirs: Vec<Node> = tree
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Dir)
            .cloned()
            .collect();
        assert!(memo.same_subdirs(&dirs));
        let mut moved = dirs.clone();
        moved[1].subtree = Some(BlobId([9; 32]));
        assert!(!memo.same_subdirs(&moved));
        let mut tagged = dirs.clone();
        tagged[0].xattrs.push((b"user.a".to_vec(), b"v".to_vec()));
        assert!(!memo.same_subdirs(&tagged));
        assert!(!memo.same_subdirs(&dirs[..1]));
    }

    #[test]
    fn memos_round_trip_and_bad_bytes_are_refused() {
        let d = sample();
        let mut names = NameCache::default();
        let (_, tree) = listed(d.path(), &mut names);
        let memo = TreeMemo::of_tree(&tree).unwrap();
        let bytes = memo.encode();
        assert_eq!(TreeMemo::decode(&bytes).unwrap(), memo);
        for cut in 0..bytes.len() {
            assert!(TreeMemo::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Any byte flipped (a damaged cache page): the checksum fails.
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(TreeMemo::decode(&flipped).is_err(), "flip at {at}");
        }
        let mut swapped = memo.clone();
        swapped.subdirs.reverse();
        assert!(TreeMemo::decode(&swapped.encode()).is_err());
        // The subdirectories' recorded attributes come back as recorded.
        let want = vec![(b"user.a".to_vec(), b"1".to_vec())];
        let mut t = tree.clone();
        t.nodes.iter_mut().find(|n| n.name == b"d").unwrap().xattrs = want.clone();
        let m = TreeMemo::decode(&TreeMemo::of_tree(&t).unwrap().encode()).unwrap();
        assert_eq!(m.subdir(b"d").unwrap().xattrs, want);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = TreeMemo::decode(&data);
        }
    }
}
