//! `coffer mount`: a read-only FUSE view of a repository's snapshots.
//!
//! ```text
//! snapshots/<time>_<short id>/<absolute path>...
//! hosts/<host>/<time>_<short id>/...
//! tags/<tag>/<time>_<short id>/...
//! latest -> snapshots/<newest>
//! ```
//! Directories are listed from tree blobs alone; a file's read fetches the
//! data blobs that cover the range asked for, through a cache bounded in
//! bytes (`cache.rs`), with read-ahead for sequential readers (`reader.rs`).
//! Metadata is the snapshot's. The snapshots are those present when the
//! mount starts.

mod cache;
mod fs;
mod inodes;
mod reader;

pub use fs::MountFs;
pub use reader::Source;

use crate::id::SnapshotId;
use crate::localtime::local_ns;
use crate::snapshot::Snapshot;
use crate::snapshot::tree::{Node, NodeKind, Time};
use inodes::{Child, Inodes, ROOT};
use std::collections::BTreeMap;

/// The name of a snapshot's directory: its local time, then its id, so
/// names sort by time and never collide.
fn snapshot_dir_name(id: &SnapshotId, s: &Snapshot) -> String {
    let t = local_ns(s.time_ns);
    let zone = if t.offset == 0 {
        "Z".to_string()
    } else {
        let o = t.offset.abs();
        let sign = if t.offset < 0 { '-' } else { '+' };
        format!("{sign}{:02}{:02}", o / 3600, o % 3600 / 60)
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{zone}_{}",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        id.short()
    )
}

/// A host name or tag as one path component: `/` and NUL, which a name
/// cannot hold, become `_`, and `.`, `..` and the empty name get a `_` in
/// front.
fn component(s: &str) -> Vec<u8> {
    let mut b: Vec<u8> = s
        .bytes()
        .map(|c| if c == b'/' || c == 0 { b'_' } else { c })
        .collect();
    if b.is_empty() || b == b"." || b == b".." {
        b.insert(0, b'_');
    }
    b
}

/// The metadata of a directory the layout makes up: readable by all,
/// owned by whoever mounted, dated `time`.
fn layout_dir(name: Vec<u8>, time: Time, uid: u32, gid: u32) -> Node {
    layout_node(name, NodeKind::Dir, time, uid, gid)
}

/// A directory (mode 0555) or symlink (0777) the layout makes up.
fn layout_node(name: Vec<u8>, kind: NodeKind, time: Time, uid: u32, gid: u32) -> Node {
    let dir = kind == NodeKind::Dir;
    let mut n = Node::new(name, kind);
    n.mode = if dir { 0o555 } else { 0o777 };
    n.uid = uid;
    n.gid = gid;
    n.mtime = time;
    n.ctime = time;
    n.links = if dir { 2 } else { 1 };
    n
}

fn time_of(ns: i64) -> Time {
    Time::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

/// Enter the layout's directories for `snapshots` (oldest first).
fn build_layout(t: &Inodes, snapshots: &[(SnapshotId, Snapshot)], uid: u32, gid: u32) {
    let newest = snapshots
        .iter()
        .map(|(_, s)| time_of(s.time_ns))
        .max()
        .unwrap_or_else(Time::now);
    let dir = |parent: u64, name: &[u8]| t.add(parent, layout_dir(name.to_vec(), newest, uid, gid));
    let child = |name: &[u8], ino: u64, kind: NodeKind| Child {
        name: name.to_vec(),
        ino,
        kind,
    };
    // Each place a snapshot appears is its own directory (a directory has
    // one parent), all reading the same tree.
    let snap_dir = |parent: u64, name: &[u8], s: &Snapshot| {
        let mut n = layout_dir(name.to_vec(), time_of(s.time_ns), uid, gid);
        n.subtree = Some(s.tree);
        child(name, t.add(parent, n), NodeKind::Dir)
    };
    let names: Vec<Vec<u8>> = snapshots
        .iter()
        .map(|(id, s)| snapshot_dir_name(id, s).into_bytes())
        .collect();

    let mut root = Vec::new();
    let all = dir(ROOT, b"snapshots");
    root.push(child(b"snapshots", all, NodeKind::Dir));
    let list = snapshots
        .iter()
        .zip(&names)
        .map(|((_, s), name)| snap_dir(all, name, s))
        .collect();
    t.set_children(all, list);

    for (top, key) in [
        (
            &b"hosts"[..],
            (|s: &Snapshot| vec![s.hostname.clone()]) as fn(&Snapshot) -> Vec<String>,
        ),
        (&b"tags"[..], |s: &Snapshot| s.tags.clone()),
    ] {
        let mut groups: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
        for (i, (_, s)) in snapshots.iter().enumerate() {
            for k in key(s) {
                let g = groups.entry(component(&k)).or_default();
                if g.last() != Some(&i) {
                    g.push(i);
                }
            }
        }
        let top_ino = dir(ROOT, top);
        root.push(child(top, top_ino, NodeKind::Dir));
        let mut list = Vec::new();
        for (g, members) in groups {
            let g_ino = dir(top_ino, &g);
            let inside = members
                .iter()
                .map(|&i| snap_dir(g_ino, &names[i], &snapshots[i].1))
                .collect();
            t.set_children(g_ino, inside);
            list.push(child(&g, g_ino, NodeKind::Dir));
        }
        t.set_children(top_ino, list);
    }

    let newest_idx = (0..snapshots.len()).max_by_key(|&i| snapshots[i].1.time_ns);
    if let Some(i) = newest_idx {
        let mut link = layout_node(b"latest".to_vec(), NodeKind::Symlink, newest, uid, gid);
        link.link_target = [&b"snapshots/"[..], &names[i]].concat();
        root.push(child(b"latest", t.add(ROOT, link), NodeKind::Symlink));
    }
    t.set_children(ROOT, root);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_single_names() {
        assert_eq!(component("a/b"), b"a_b");
        assert_eq!(component(""), b"_");
        assert_eq!(component(".."), b"_..");
        assert_eq!(component("web-1"), b"web-1");
    }
}
