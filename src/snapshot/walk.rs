//! Depth-first walk over a snapshot's trees through a [`BlobSource`].
//! Iterative, so a hostile tree nested 10^5 deep cannot overflow the stack
//! (doc/reliability.md I9); memory holds one tree per level.

use super::tree::{NodeKind, Tree};
use crate::blob::{BlobKind, BlobSource};
use crate::error::{Error, Result};
use crate::id::BlobId;

/// Load and decode one tree blob, naming it on failure.
pub fn load_tree(source: &dyn BlobSource, id: &BlobId) -> Result<Tree> {
    let bytes = source.read_blob(BlobKind::Tree, id)?;
    Tree::decode(&bytes).map_err(|e| Error::corrupt(format!("tree {id}"), e.0))
}

/// What the visitor wants next.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Descend into this directory (ignored for non-directories).
    Descend,
    /// Do not descend into this directory.
    Skip,
}

/// A directory whose tree could not be read (damaged or missing): it was
/// skipped with everything below it, so one bad tree does not hide the
/// rest of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// The directory's path, as the walk names it.
    pub path: Vec<u8>,
    pub error: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: its tree cannot be read, so everything below it was skipped: {}",
            String::from_utf8_lossy(&self.path),
            self.error
        )
    }
}

/// Load the subtree of the directory at `path`: `Ok(None)`, with the damage
/// recorded in `unreadable`, when the tree is corrupt or missing; any
/// other failure (the repository cannot be reached) aborts.
pub(crate) fn load_subtree(
    source: &dyn BlobSource,
    id: &BlobId,
    path: &[u8],
    unreadable: &mut Vec<Unreadable>,
) -> Result<Option<Tree>> {
    match load_tree(source, id) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.is_damage() => {
            unreadable.push(Unreadable {
                path: path.to_vec(),
                error: e.to_string(),
            });
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Visit every node under `root` in depth-first, name order. `path` is the
/// node's path relative to the root, components joined by `/`. A directory
/// is visited before its children; `leave` is called after them (not for a
/// directory whose tree cannot be read: it is returned instead). The root
/// tree itself must be readable.
pub fn walk(
    source: &dyn BlobSource,
    root: &BlobId,
    mut visit: impl FnMut(&[u8], &super::tree::Node) -> Result<Visit>,
    mut leave: impl FnMut(&[u8], &super::tree::Node) -> Result<()>,
) -> Result<Vec<Unreadable>> {
    let mut unreadable = Vec::new();
    struct Frame {
        tree: Tree,
        next: usize,
        prefix: Vec<u8>,
        /// The directory node this frame lists, for `leave`.
        dir: Option<super::tree::Node>,
    }
    let mut stack = vec![Frame {
        tree: load_tree(source, root)?,
        next: 0,
        prefix: Vec::new(),
        dir: None,
    }];
    while let Some(top) = stack.last_mut() {
        if top.next >= top.tree.nodes.len() {
            let done = stack.pop().unwrap_or_else(|| unreachable!());
            if let Some(d) = done.dir {
                // The frame's prefix is the directory's own path plus `/`.
                let mut dpath = done.prefix;
                dpath.pop();
                leave(&dpath, &d)?;
            }
            continue;
        }
        let node = top.tree.nodes[top.next].clone();
        top.next += 1;
        let mut path = top.prefix.clone();
        path.extend_from_slice(&node.name);
        let v = visit(&path, &node)?;
        if node.kind == NodeKind::Dir
            && v == Visit::Descend
            && let Some(sub) = node.subtree
            && let Some(tree) = load_subtree(source, &sub, &path, &mut unreadable)?
        {
            path.push(b'/');
            stack.push(Frame {
                tree,
                next: 0,
                prefix: path,
                dir: Some(node),
            });
        }
    }
    Ok(unreadable)
}

/// Find the node at `path` (components separated by `/`, no leading `/`)
/// below `root`. Returns `None` when a component does not exist.
pub fn find_path(
    source: &dyn BlobSource,
    root: &BlobId,
    path: &[u8],
) -> Result<Option<super::tree::Node>> {
    let mut tree = load_tree(source, root)?;
    let comps: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let Some(node) = tree.find(c).cloned() else {
            return Ok(None);
        };
        if i + 1 == comps.len() {
            return Ok(Some(node));
        }
        match (node.kind, node.subtree) {
            (NodeKind::Dir, Some(sub)) => tree = load_tree(source, &sub)?,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Trees by id, in memory: the [`BlobSource`] the unit tests of walks over
/// trees (diff, find) run against, with no repository (doc/design.md
/// habit 4).
#[cfg(test)]
#[derive(Default)]
pub(crate) struct MemTrees(std::sync::Mutex<std::collections::HashMap<BlobId, Vec<u8>>>);

#[cfg(test)]
impl BlobSource for MemTrees {
    fn read_blob(&self, _kind: BlobKind, id: &BlobId) -> Result<Vec<u8>> {
        self.0
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::corrupt(format!("tree {id}"), "missing"))
    }
}

#[cfg(test)]
impl MemTrees {
    /// Store a directory of `nodes` (sorted here); returns its id.
    pub(crate) fn put(&self, nodes: Vec<super::tree::Node>) -> BlobId {
        let mut t = Tree { nodes };
        t.sort();
        let bytes = t.encode();
        let id = BlobId(*blake3::hash(&bytes).as_bytes());
        self.0.lock().unwrap().insert(id, bytes);
        id
    }
}
