//! Trees: one per directory, nodes sorted by name (repo-format/README.md,
//! "Trees"). The encoding is canonical: the same directory state always
//! yields the same bytes, so an unchanged directory keeps its tree id and
//! is stored once.
//!
//! ```text
//! tree := "cofferT1"[8] || count u32 || node*count     (names strictly ascending, bytewise)
//! node := name bytes || kind u8 || mode u32 || uid u32 || gid u32
//!         || user str || group str || mtime_sec i64 || mtime_nsec u32
//!         || ctime_sec i64 || ctime_nsec u32 || size u64
//!         || inode u64 || device u64 || links u64 || rdev u64 || flags u32
//!         || link_target bytes || xattr_count u32 || (name bytes || value bytes)*
//!         || content_count u32 || blob id[32]* || has_subtree u8 || [subtree id[32]]
//! ```
//! `bytes`/`str` are `u32 length || bytes`; `*_nsec` is below 10^9.
//! Seconds and nanoseconds apart, so any time a filesystem can hold round-
//! trips (nanoseconds in one i64 would end in 2262). Atime is not stored: it changes
//! on every read and would make every tree new each night.

use crate::codec::{DecodeError, Reader, Writer};
use crate::id::BlobId;
use std::sync::Arc;

pub(crate) const TREE_MAGIC: &[u8; 8] = b"cofferT1";
pub(crate) const MAX_NAME: usize = 4096;
/// The smallest encoded node: a 1-byte name, empty strings and lists.
pub(crate) const MIN_NODE_LEN: usize =
    4 + 1 + 1 + 4 * 3 + 4 + 4 + 12 * 2 + 8 * 5 + 4 + 4 + 4 + 4 + 1;
pub(crate) const MAX_LINK_TARGET: usize = 64 * 1024;
pub(crate) const MAX_XATTRS: usize = 4096;
pub(crate) const MAX_XATTR_VALUE: usize = 1024 * 1024;
/// Flag: the file changed while it was read; content is what was read.
pub(crate) const FLAG_CHANGED_DURING_READ: u32 = 1;
/// Flag: the file could not be read completely; content is incomplete.
pub(crate) const FLAG_INCOMPLETE: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum NodeKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    CharDevice = 5,
    BlockDevice = 6,
    Socket = 7,
}

impl NodeKind {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => NodeKind::File,
            2 => NodeKind::Dir,
            3 => NodeKind::Symlink,
            4 => NodeKind::Fifo,
            5 => NodeKind::CharDevice,
            6 => NodeKind::BlockDevice,
            7 => NodeKind::Socket,
            _ => return None,
        })
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeKind::File => "file",
            NodeKind::Dir => "dir",
            NodeKind::Symlink => "symlink",
            NodeKind::Fifo => "fifo",
            NodeKind::CharDevice => "chardev",
            NodeKind::BlockDevice => "blockdev",
            NodeKind::Socket => "socket",
        }
    }
}

/// A file time: seconds since the epoch (negative before 1970) and
/// nanoseconds within the second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl Time {
    pub fn new(sec: i64, nsec: i64) -> Time {
        Time {
            sec,
            nsec: nsec.clamp(0, 999_999_999) as u32,
        }
    }

    /// Nanoseconds since the epoch, saturating (for display only).
    pub fn as_ns(&self) -> i64 {
        self.sec
            .saturating_mul(1_000_000_000)
            .saturating_add(self.nsec as i64)
    }

    pub fn now() -> Time {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Time {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(_) => Time::default(),
        }
    }
}

/// One directory entry and its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: Vec<u8>,
    pub kind: NodeKind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Owner names, shared: a tree's nodes nearly all name the same few,
    /// and two allocations per node were a tenth of decoding a tree.
    pub user: Arc<str>,
    pub group: Arc<str>,
    pub mtime: Time,
    pub ctime: Time,
    pub size: u64,
    pub inode: u64,
    pub device: u64,
    pub links: u64,
    pub rdev: u64,
    pub flags: u32,
    pub link_target: Vec<u8>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub content: Vec<BlobId>,
    pub subtree: Option<BlobId>,
}

impl Node {
    pub fn new(name: Vec<u8>, kind: NodeKind) -> Self {
        Node {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            user: empty_name(),
            group: empty_name(),
            mtime: Time::default(),
            ctime: Time::default(),
            size: 0,
            inode: 0,
            device: 0,
            links: 0,
            rdev: 0,
            flags: 0,
            link_target: Vec::new(),
            xattrs: Vec::new(),
            content: Vec::new(),
            subtree: None,
        }
    }
}

/// A name is valid when it is one path component: not empty, not `.` or
/// `..`, without `/` or NUL. One validator serves decode, restore, ls and
/// check (doc/reliability.md I1).
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// A directory's nodes, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Sort nodes into canonical order before encoding.
    pub fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }

    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// Canonical bytes. Callers sort first; unsorted input is a bug that
    /// decode would reject, so it is caught by every round-trip test.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(TREE_MAGIC);
        w.u32(self.nodes.len() as u32);
        for n in &self.nodes {
            w.bytes(&n.name);
            w.u8(n.kind as u8);
            w.u32(n.mode);
            w.u32(n.uid);
            w.u32(n.gid);
            w.str(&n.user);
            w.str(&n.group);
            w.i64(n.mtime.sec);
            w.u32(n.mtime.nsec);
            w.i64(n.ctime.sec);
            w.u32(n.ctime.nsec);
            w.u64(n.size);
            w.u64(n.inode);
            w.u64(n.device);
            w.u64(n.links);
            w.u64(n.rdev);
            w.u32(n.flags);
            w.bytes(&n.link_target);
            w.u32(n.xattrs.len() as u32);
            for (k, v) in &n.xattrs {
                w.bytes(k);
                w.bytes(v);
            }
            w.u32(n.content.len() as u32);
            for id in &n.content {
                w.raw(id.as_bytes());
            }
            match &n.subtree {
                Some(id) => {
                    w.u8(1);
                    w.raw(id.as_bytes());
                }
                None => w.u8(0),
            }
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Tree, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.take(8)? != TREE_MAGIC {
            return Err(DecodeError("not a tree (bad magic)".into()));
        }
        let count = r.count(usize::MAX, MIN_NODE_LEN, "tree node")?;
        let mut nodes: Vec<Node> = Vec::with_capacity(count);
        let mut names = OwnerNames::default();
        for _ in 0..count {
            let name = r.bytes(MAX_NAME, "name")?.to_vec();
            if !valid_name(&name) {
                return Err(DecodeError(format!(
                    "invalid entry name {:?}",
                    String::from_utf8_lossy(&name)
                )));
            }
            if let Some(prev) = nodes.last()
                && prev.name >= name
            {
                return Err(DecodeError(format!(
                    "entries not strictly sorted at {:?} (duplicate or out of order)",
                    String::from_utf8_lossy(&name)
                )));
            }
            let k = r.u8()?;
            let kind = NodeKind::from_u8(k)
                .ok_or_else(|| DecodeError(format!("unknown node kind {k}")))?;
            // Built whole, not from `Node::new`: its placeholder owner
            // names would be made only to be replaced.
            let mut n = Node {
                name,
                kind,
                mode: r.u32()?,
                uid: r.u32()?,
                gid: r.u32()?,
                user: names.get(r.str(1024, "user name")?),
                group: names.get(r.str(1024, "group name")?),
                mtime: read_time(&mut r)?,
                ctime: read_time(&mut r)?,
                size: r.u64()?,
                inode: r.u64()?,
                device: r.u64()?,
                links: r.u64()?,
                rdev: r.u64()?,
                flags: r.u32()?,
                link_target: r.bytes(MAX_LINK_TARGET, "symlink target")?.to_vec(),
                xattrs: Vec::new(),
                content: Vec::new(),
                subtree: None,
            };
            let nx = r.count(MAX_XATTRS, 8, "xattr")?;
            for _ in 0..nx {
                let k = r.bytes(MAX_NAME, "xattr name")?.to_vec();
                let v = r.bytes(MAX_XATTR_VALUE, "xattr value")?.to_vec();
                n.xattrs.push((k, v));
            }
            let nc = r.count(usize::MAX, 32, "content id")?;
            n.content.reserve(nc);
            for _ in 0..nc {
                n.content.push(BlobId(r.array()?));
            }
            n.subtree = match r.u8()? {
                0 => None,
                1 => Some(BlobId(r.array()?)),
                v => return Err(DecodeError(format!("bad subtree flag {v}"))),
            };
            let shape_ok = match kind {
                NodeKind::Dir => n.subtree.is_some() && n.content.is_empty(),
                NodeKind::File => n.subtree.is_none(),
                _ => n.subtree.is_none() && n.content.is_empty(),
            };
            if !shape_ok {
                return Err(DecodeError(format!(
                    "{} node with the wrong fields (directories need a subtree and no content; only files have content)",
                    kind.as_str()
                )));
            }
            nodes.push(n);
        }
        r.finish()?;
        Ok(Tree { nodes })
    }
}

/// The empty owner name, shared by every node made without one.
fn empty_name() -> Arc<str> {
    static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::from("")).clone()
}

/// Owner names met while decoding one tree: each distinct name is
/// allocated once and shared by the nodes naming it.
#[derive(Default)]
struct OwnerNames(Vec<Arc<str>>);

impl OwnerNames {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(n) = self.0.iter().find(|n| n.as_ref() == s) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(s);
        // A hostile tree could name a new owner on every node: the list
        // stays short, and past it names are simply not shared.
        if self.0.len() < 16 {
            self.0.push(n.clone());
        }
        n
    }
}

fn read_time(r: &mut Reader) -> Result<Time, DecodeError> {
    let sec = r.i64()?;
    let nsec = r.u32()?;
    if nsec >= 1_000_000_000 {
        return Err(DecodeError(format!("nanoseconds {nsec} out of range")));
    }
    Ok(Time { sec, nsec })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Tree {
        let mut f = Node::new(b"a\xffb".to_vec(), NodeKind::File);
        f.content = vec![BlobId([1; 32]), BlobId([2; 32])];
        f.xattrs = vec![(b"user.x".to_vec(), b"v".to_vec())];
        f.mtime = Time { sec: -5, nsec: 7 };
        let mut d = Node::new(b"dir".to_vec(), NodeKind::Dir);
        d.subtree = Some(BlobId([3; 32]));
        let mut l = Node::new(b"link".to_vec(), NodeKind::Symlink);
        l.link_target = b"/nowhere".to_vec();
        Tree {
            nodes: vec![f, d, l],
        }
    }

    #[test]
    fn round_trip_and_canonical() {
        let t = sample();
        let b = t.encode();
        let back = Tree::decode(&b).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.encode(), b);
        assert!(back.find(b"dir").is_some());
        assert!(back.find(b"nope").is_none());
    }

    #[test]
    fn hostile_trees_rejected() {
        for bad in [&b".."[..], b".", b"", b"a/b", b"a\0b"] {
            let mut t = sample();
            t.nodes[0].name = bad.to_vec();
            t.sort();
            assert!(Tree::decode(&t.encode()).is_err(), "{bad:?}");
        }
        let mut t = sample();
        t.nodes[1].name = t.nodes[0].name.clone();
        assert!(Tree::decode(&t.encode()).is_err());
        let mut t = sample();
        t.nodes.swap(0, 2);
        assert!(Tree::decode(&t.encode()).is_err());
        let b = sample().encode();
        for n in 0..b.len() {
            assert!(Tree::decode(&b[..n]).is_err());
        }
        let mut long = b.clone();
        long.push(0);
        assert!(Tree::decode(&long).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut input = TREE_MAGIC.to_vec();
            input.extend(data);
            let _ = Tree::decode(&input);
        }

        #[test]
        fn encode_decode_round_trip(names in proptest::collection::btree_set("[a-z]{1,8}", 0..20), size in any::<u64>(), mtime in any::<i64>(), nsec in 0u32..1_000_000_000) {
            let nodes = names.into_iter().map(|n| {
                let mut node = Node::new(n.into_bytes(), NodeKind::File);
                node.size = size;
                node.mtime = Time { sec: mtime, nsec };
                node
            }).collect();
            let t = Tree { nodes };
            let b = t.encode();
            let back = Tree::decode(&b).unwrap();
            prop_assert_eq!(&back, &t);
            prop_assert_eq!(back.encode(), b);
        }
    }
}
