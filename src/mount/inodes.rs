//! The mount's inodes: one per name a directory listing or lookup has
//! shown, numbered in the order they were first seen and kept for the life
//! of the mount, so a number never changes meaning while mounted. A
//! directory's children are entered when it is first listed or looked in,
//! from its tree blob alone (file contents are not read).

use crate::blob::BlobSource;
use crate::error::Result;
use crate::snapshot::tree::{Node, NodeKind};
use crate::snapshot::walk::load_tree;
use std::sync::{Arc, OnceLock, RwLock};

/// The root directory's number, as FUSE fixes it.
pub const ROOT: u64 = 1;

/// One name in a directory.
#[derive(Clone, Debug)]
pub(crate) struct Child {
    pub(crate) name: Vec<u8>,
    pub(crate) ino: u64,
    pub(crate) kind: NodeKind,
}

pub(crate) struct Inode {
    pub(crate) parent: u64,
    /// Name and metadata as the snapshot holds them (made up for the
    /// directories of the layout).
    pub(crate) node: Node,
    /// A directory's children, sorted by name, once known.
    children: OnceLock<Arc<[Child]>>,
}

#[derive(Default)]
pub(crate) struct Inodes {
    all: RwLock<Vec<Arc<Inode>>>,
}

impl Inodes {
    /// A table holding the root directory, `root`.
    pub(crate) fn new(root: Node) -> Inodes {
        let t = Inodes::default();
        t.add(ROOT, root);
        t
    }

    pub(crate) fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        let all = self.all.read().unwrap_or_else(|p| p.into_inner());
        all.get(usize::try_from(ino).ok()?.checked_sub(1)?).cloned()
    }

    /// Enter `node` as a child of `parent`; returns its number.
    pub(crate) fn add(&self, parent: u64, node: Node) -> u64 {
        let mut all = self.all.write().unwrap_or_else(|p| p.into_inner());
        all.push(Arc::new(Inode {
            parent,
            node,
            children: OnceLock::new(),
        }));
        all.len() as u64
    }

    /// Give the directory `ino` its children (the layout's directories).
    pub(crate) fn set_children(&self, ino: u64, mut children: Vec<Child>) {
        children.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(dir) = self.get(ino) {
            let _ = dir.children.set(children.into());
        }
    }

    /// The children of directory `ino`, reading its tree on first use. A
    /// tree that cannot be read is an error each time it is asked for, so
    /// a repository that comes back is read again.
    pub(crate) fn children(&self, src: &dyn BlobSource, ino: u64) -> Result<Option<Arc<[Child]>>> {
        let Some(dir) = self.get(ino) else {
            return Ok(None);
        };
        if let Some(c) = dir.children.get() {
            return Ok(Some(c.clone()));
        }
        let Some(tree_id) = dir.node.subtree.filter(|_| dir.node.kind == NodeKind::Dir) else {
            return Ok(None);
        };
        let tree = load_tree(src, &tree_id)?;
        // Two threads may load the same directory at once: both enter
        // children, the first list set is the one every caller then uses.
        let children: Vec<Child> = tree
            .nodes
            .into_iter()
            .map(|n| Child {
                name: n.name.clone(),
                kind: n.kind,
                ino: self.add(ino, n),
            })
            .collect();
        let _ = dir.children.set(children.into());
        Ok(dir.children.get().cloned())
    }

    /// The child `name` of directory `ino`.
    pub(crate) fn lookup(
        &self,
        src: &dyn BlobSource,
        ino: u64,
        name: &[u8],
    ) -> Result<Option<u64>> {
        let Some(children) = self.children(src, ino)? else {
            return Ok(None);
        };
        Ok(children
            .binary_search_by(|c| c.name.as_slice().cmp(name))
            .ok()
            .map(|i| children[i].ino))
    }

    /// The path of `ino` below the mount's root, for messages.
    pub(crate) fn path(&self, mut ino: u64) -> Vec<u8> {
        let mut names = Vec::new();
        while ino != ROOT {
            let Some(i) = self.get(ino) else { break };
            names.push(i.node.name.clone());
            ino = i.parent;
        }
        names.reverse();
        names.join(&b'/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobKind;
    use crate::id::BlobId;
    use crate::snapshot::tree::Tree;

    struct Trees(Tree);
    impl BlobSource for Trees {
        fn read_blob(&self, kind: BlobKind, _: &BlobId) -> Result<Vec<u8>> {
            assert_eq!(kind, BlobKind::Tree, "listing must not read file contents");
            Ok(self.0.encode())
        }
    }

    #[test]
    fn numbers_stay_put_and_paths_are_named() {
        let mut file = Node::new(b"f".to_vec(), NodeKind::File);
        file.content = vec![BlobId([9; 32])];
        let src = Trees(Tree {
            nodes: vec![Node::new(b"a".to_vec(), NodeKind::Symlink), file],
        });
        let mut root = Node::new(Vec::new(), NodeKind::Dir);
        root.subtree = Some(BlobId([1; 32]));
        let t = Inodes::new(root);
        let mut snap = Node::new(b"snap".to_vec(), NodeKind::Dir);
        snap.subtree = Some(BlobId([2; 32]));
        let s = t.add(ROOT, snap);
        t.set_children(
            ROOT,
            vec![Child {
                name: b"snap".to_vec(),
                ino: s,
                kind: NodeKind::Dir,
            }],
        );
        let f = t.lookup(&src, s, b"f").unwrap().unwrap();
        assert_eq!(t.lookup(&src, s, b"f").unwrap(), Some(f));
        assert_eq!(t.lookup(&src, s, b"nope").unwrap(), None);
        assert_eq!(t.lookup(&src, ROOT, b"snap").unwrap(), Some(s));
        assert_eq!(t.path(f), b"snap/f");
        assert_eq!(t.children(&src, f).unwrap().map(|c| c.len()), None);
    }
}
