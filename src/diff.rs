//! Comparing two snapshots (or two directories of them): what was added,
//! removed, modified, changed type, or changed only its metadata.
//!
//! Both trees are walked together, merging each directory's nodes by name
//! (both lists are sorted, so this is one pass). A directory whose subtree
//! id is the same on both sides holds the same bytes all the way down and
//! is not opened: a nightly diff of a large, mostly unchanged tree reads
//! only the trees along the changed paths. The walk is iterative (a hostile
//! tree nested 10^5 deep cannot overflow the stack) and holds one pair of
//! trees per level.

use crate::blob::BlobSource;
use crate::error::Result;
use crate::id::BlobId;
use crate::snapshot::tree::{Node, NodeKind, Tree};
use crate::snapshot::walk::{Unreadable, load_subtree, load_tree};
use std::cmp::Ordering;

/// How an entry differs, with restic's one-letter markers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modifier {
    /// Only in the second tree (`+`).
    Added,
    /// Only in the first tree (`-`).
    Removed,
    /// A file's content or a symlink's target differs (`M`).
    Modified,
    /// The entry is of another kind, e.g. a file became a directory (`T`).
    TypeChanged,
    /// Same content, other metadata: mode, owner, mtime, xattrs (`U`).
    Metadata,
}

impl Modifier {
    pub fn marker(self) -> char {
        match self {
            Modifier::Added => '+',
            Modifier::Removed => '-',
            Modifier::Modified => 'M',
            Modifier::TypeChanged => 'T',
            Modifier::Metadata => 'U',
        }
    }
}

/// One difference. `node` is the entry as the second tree has it, or as
/// the first had it when it was removed.
pub struct Change<'a> {
    /// `/`-joined path below the compared roots, without a leading `/`.
    pub path: &'a [u8],
    pub modifier: Modifier,
    pub node: &'a Node,
}

/// Entries on one side of the comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Side {
    pub files: u64,
    pub dirs: u64,
    /// Symlinks, devices, FIFOs, sockets.
    pub others: u64,
    /// Sum of the sizes of the files counted.
    pub bytes: u64,
}

impl Side {
    fn count(&mut self, n: &Node) {
        match n.kind {
            NodeKind::File => {
                self.files += 1;
                self.bytes += n.size;
            }
            NodeKind::Dir => self.dirs += 1,
            _ => self.others += 1,
        }
    }
}

/// Totals of a comparison. An entry that changed type counts as removed
/// (the old one) and added (the new one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffStats {
    pub added: Side,
    pub removed: Side,
    /// Files whose content differs.
    pub modified_files: u64,
    pub type_changed: u64,
    /// Entries whose metadata alone differs (counted whether or not they
    /// were reported).
    pub metadata_changed: u64,
    /// Trees read to find all this.
    pub trees_loaded: u64,
    /// Directories not compared because a tree of theirs (on either side)
    /// could not be read.
    pub unreadable: Vec<Unreadable>,
    /// Other damaged objects skipped on the way (an index segment, a
    /// snapshot), each named once.
    pub damaged: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct DiffOptions {
    /// Report entries whose metadata alone changed (`U`).
    pub metadata: bool,
}

/// Metadata a user would call a change. ctime, inode, device and link
/// count are left out: a restore or a copy of the same data changes them.
fn same_metadata(a: &Node, b: &Node) -> bool {
    a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.user == b.user
        && a.group == b.group
        && a.mtime == b.mtime
        && a.rdev == b.rdev
        && a.xattrs == b.xattrs
}

/// What to compare in one directory: either side may be absent (the whole
/// directory was added or removed).
struct Frame {
    old: Tree,
    new: Tree,
    i: usize,
    j: usize,
    /// The directory's path plus `/`, or empty at the roots.
    prefix: Vec<u8>,
}

fn load(source: &dyn BlobSource, id: Option<BlobId>, stats: &mut DiffStats) -> Result<Tree> {
    match id {
        Some(id) => {
            stats.trees_loaded += 1;
            load_tree(source, &id)
        }
        None => Ok(Tree::default()),
    }
}

/// [`load`] below the roots: a damaged tree is recorded in `stats` and
/// gives `None`, so the directory at `path` is skipped, not the whole diff.
fn load_side(
    source: &dyn BlobSource,
    id: Option<BlobId>,
    path: &[u8],
    stats: &mut DiffStats,
) -> Result<Option<Tree>> {
    let Some(id) = id else {
        return Ok(Some(Tree::default()));
    };
    stats.trees_loaded += 1;
    load_subtree(source, &id, path, &mut stats.unreadable)
}

/// Compare the trees `old` and `new`, calling `emit` for every difference
/// in depth-first name order. Everything below an added or removed
/// directory is reported as added or removed too.
pub fn diff(
    source: &dyn BlobSource,
    old: &BlobId,
    new: &BlobId,
    opts: DiffOptions,
    emit: impl FnMut(Change<'_>) -> Result<()>,
) -> Result<DiffStats> {
    let mut stats = compare(source, old, new, opts, emit)?;
    stats.damaged = source.take_damaged();
    Ok(stats)
}

fn compare(
    source: &dyn BlobSource,
    old: &BlobId,
    new: &BlobId,
    opts: DiffOptions,
    mut emit: impl FnMut(Change<'_>) -> Result<()>,
) -> Result<DiffStats> {
    let mut stats = DiffStats::default();
    if old == new {
        return Ok(stats);
    }
    let mut stack = vec![Frame {
        old: load(source, Some(*old), &mut stats)?,
        new: load(source, Some(*new), &mut stats)?,
        i: 0,
        j: 0,
        prefix: Vec::new(),
    }];
    while let Some(top) = stack.last_mut() {
        let a = top.old.nodes.get(top.i);
        let b = top.new.nodes.get(top.j);
        let order = match (a, b) {
            (None, None) => {
                stack.pop();
                continue;
            }
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.name.cmp(&b.name),
        };
        // The subtrees to compare next, if this entry needs a look inside.
        let mut descend: Option<(Option<BlobId>, Option<BlobId>)> = None;
        let mut path = top.prefix.clone();
        match (order, a, b) {
            (Ordering::Less, Some(a), _) => {
                top.i += 1;
                path.extend_from_slice(&a.name);
                stats.removed.count(a);
                emit(Change {
                    path: &path,
                    modifier: Modifier::Removed,
                    node: a,
                })?;
                if a.kind == NodeKind::Dir {
                    descend = Some((a.subtree, None));
                }
            }
            (Ordering::Greater, _, Some(b)) => {
                top.j += 1;
                path.extend_from_slice(&b.name);
                stats.added.count(b);
                emit(Change {
                    path: &path,
                    modifier: Modifier::Added,
                    node: b,
                })?;
                if b.kind == NodeKind::Dir {
                    descend = Some((None, b.subtree));
                }
            }
            (_, Some(a), Some(b)) => {
                top.i += 1;
                top.j += 1;
                path.extend_from_slice(&b.name);
                let modifier = if a.kind != b.kind {
                    // Both a removal and an addition, reported once.
                    stats.type_changed += 1;
                    stats.removed.count(a);
                    stats.added.count(b);
                    Some(Modifier::TypeChanged)
                } else if (a.kind == NodeKind::File && a.content != b.content)
                    || (a.kind == NodeKind::Symlink && a.link_target != b.link_target)
                {
                    if a.kind == NodeKind::File {
                        stats.modified_files += 1;
                    }
                    Some(Modifier::Modified)
                } else if !same_metadata(a, b) {
                    stats.metadata_changed += 1;
                    opts.metadata.then_some(Modifier::Metadata)
                } else {
                    None
                };
                if let Some(modifier) = modifier {
                    emit(Change {
                        path: &path,
                        modifier,
                        node: b,
                    })?;
                }
                // A kind change has a directory on one side at most: the
                // walk below reports its entries as removed or added.
                let sub = |n: &Node| (n.kind == NodeKind::Dir).then_some(n.subtree).flatten();
                let (sa, sb) = (sub(a), sub(b));
                if sa != sb {
                    descend = Some((sa, sb));
                }
            }
            _ => unreachable!("the order matches the entries present"),
        }
        if let Some((sa, sb)) = descend {
            let (Some(old), Some(new)) = (
                load_side(source, sa, &path, &mut stats)?,
                load_side(source, sb, &path, &mut stats)?,
            ) else {
                continue;
            };
            path.push(b'/');
            stack.push(Frame {
                old,
                new,
                i: 0,
                j: 0,
                prefix: path,
            });
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tree::Time;
    use crate::snapshot::walk::MemTrees as Trees;

    fn file(name: &str, content: &[u8], size: u64) -> Node {
        let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::File);
        n.content = vec![BlobId(*blake3::hash(content).as_bytes())];
        n.size = size;
        n.mode = 0o644;
        n
    }

    fn dir(name: &str, sub: BlobId) -> Node {
        let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::Dir);
        n.subtree = Some(sub);
        n.mode = 0o755;
        n
    }

    fn run(t: &Trees, a: BlobId, b: BlobId, metadata: bool) -> (Vec<String>, DiffStats) {
        let mut out = Vec::new();
        let stats = diff(t, &a, &b, DiffOptions { metadata }, |c| {
            let slash = if c.node.kind == NodeKind::Dir {
                "/"
            } else {
                ""
            };
            out.push(format!(
                "{} {}{slash}",
                c.modifier.marker(),
                String::from_utf8_lossy(c.path)
            ));
            Ok(())
        })
        .unwrap();
        (out, stats)
    }

    #[test]
    fn reports_every_kind_of_change_in_path_order() {
        let t = Trees::default();
        let same = t.put(vec![file("keep", b"k", 1)]);
        let old_models = t.put(vec![file("m1", b"a", 10), file("m2", b"b", 20)]);
        let new_models = t.put(vec![file("m1", b"a2", 11), file("m3", b"c", 30)]);
        let gone = t.put(vec![file("x", b"x", 5)]);
        let mut touched = file("touched", b"t", 1);
        let old = t.put(vec![
            dir("same", same),
            dir("models", old_models),
            dir("gone", gone),
            file("becomes-dir", b"f", 3),
            touched.clone(),
        ]);
        touched.mtime = Time::new(1, 0);
        let new = t.put(vec![
            dir("same", same),
            dir("models", new_models),
            dir("becomes-dir", gone),
            touched,
            file("new", b"n", 7),
        ]);
        let (lines, stats) = run(&t, old, new, false);
        assert_eq!(
            lines,
            [
                "T becomes-dir/",
                "+ becomes-dir/x",
                "- gone/",
                "- gone/x",
                "M models/m1",
                "- models/m2",
                "+ models/m3",
                "+ new",
            ]
        );
        assert_eq!(stats.modified_files, 1);
        assert_eq!(stats.type_changed, 1);
        assert_eq!(stats.metadata_changed, 1);
        assert_eq!(
            stats.added,
            Side {
                files: 3,
                dirs: 1,
                others: 0,
                bytes: 5 + 30 + 7
            }
        );
        assert_eq!(
            stats.removed,
            Side {
                files: 3,
                dirs: 1,
                others: 0,
                bytes: 5 + 20 + 3
            }
        );
        // The unchanged directory was never opened: the two roots, both
        // `models`, the removed `gone` and the new `becomes-dir`.
        assert_eq!(stats.trees_loaded, 6);
        let (lines, _) = run(&t, old, new, true);
        assert!(lines.contains(&"U touched".to_string()), "{lines:?}");
    }

    #[test]
    fn identical_roots_read_nothing() {
        let t = Trees::default();
        let root = t.put(vec![file("a", b"a", 1)]);
        let (lines, stats) = run(&t, root, root, true);
        assert!(lines.is_empty());
        assert_eq!(stats.trees_loaded, 0);
    }

    #[test]
    fn a_missing_subtree_is_named_and_skipped_a_missing_root_fails() {
        let t = Trees::default();
        let a = t.put(vec![file("a", b"a", 1)]);
        let lost = BlobId([7; 32]);
        let b = t.put(vec![dir("d", lost), file("e", b"e", 1)]);
        let mut seen = Vec::new();
        let st = diff(&t, &a, &b, DiffOptions::default(), |c| {
            seen.push(c.path.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [b"a".to_vec(), b"d".to_vec(), b"e".to_vec()]);
        assert_eq!(st.unreadable.len(), 1);
        assert_eq!(st.unreadable[0].path, b"d");
        assert!(st.unreadable[0].error.contains(&lost.to_string()));
        let err = diff(&t, &a, &lost, DiffOptions::default(), |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains(&lost.to_string()), "{err}");
    }
}
