//! The archive's file tree, staged in memory until the last member is read.
//!
//! A tar stream gives no order guarantees: a directory's own entry may come
//! after its files, or never; a name may appear twice (the later one wins,
//! as when extracting); a hardlink names an earlier member. So nodes (the
//! metadata and content ids, never file bytes) are collected first and the
//! trees are written at the end. Memory is proportional to the number of
//! members, like a directory listing, and independent of their sizes.
//!
//! Directories live in an arena indexed by creation order. A directory is
//! always created after its parent, so walking the arena backwards visits
//! children before parents (trees are stored bottom-up) and forwards visits
//! parents first (parent-snapshot trees are looked up top-down), both
//! without recursion, which a hostile archive nested 30 000 deep would turn
//! into a stack overflow.

use crate::archiver::Summary;
use crate::blob::{BlobKind, BlobSink, BlobSource};
use crate::error::Result;
use crate::id::BlobId;
use crate::snapshot::tree::{Node, NodeKind, Time, Tree};
use crate::snapshot::walk::load_tree;
use std::collections::{BTreeMap, HashMap, HashSet};

enum Child {
    Dir(usize),
    // Boxed: a node is ~270 bytes, and most children are leaves anyway.
    Leaf(Box<Node>),
}

struct Dir {
    parent: usize,
    node: Node,
    children: BTreeMap<Vec<u8>, Child>,
    /// Replaced by a later member of the same name: not in the snapshot.
    dead: bool,
}

pub(crate) struct Staging {
    dirs: Vec<Dir>,
    /// Metadata for directories the archive never lists (owner and mode as
    /// extracting would create them).
    template: Node,
    /// Inode numbers handed to hardlink groups.
    inodes: HashSet<u64>,
    /// The archive listed its root (`.` or `./`).
    root_listed: bool,
}

/// A member was placed, but something earlier was dropped for it.
pub(crate) type Replaced = Option<String>;

fn display(comps: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&comps.join(&b'/')).into_owned()
}

impl Staging {
    /// An empty tree whose top directory is `root` (its name and the
    /// metadata used until the archive lists `.` itself); `template` gives
    /// the owner and mode of directories the archive leaves out.
    pub fn new(root: Node, template: Node) -> Staging {
        Staging {
            dirs: vec![Dir {
                parent: 0,
                node: root,
                children: BTreeMap::new(),
                dead: false,
            }],
            template,
            inodes: HashSet::new(),
            root_listed: false,
        }
    }

    /// Date the top directory when the archive does not list `.`: with the
    /// newest member's mtime, so that importing the same archive twice
    /// gives the same top directory.
    pub(crate) fn date_unlisted_root(&mut self, newest: Time) {
        if !self.root_listed {
            self.dirs[0].node.mtime = newest;
            self.dirs[0].node.ctime = newest;
        }
    }

    /// The directory holding `comps`' last component, creating missing
    /// directories along the way (dated like the member that needs them).
    fn parent_dir(&mut self, comps: &[Vec<u8>], mtime: Time) -> Result<usize, String> {
        let mut at = 0;
        for (i, c) in comps.iter().enumerate().take(comps.len().saturating_sub(1)) {
            at = match self.dirs[at].children.get(c) {
                Some(Child::Dir(d)) => *d,
                Some(Child::Leaf(_)) => {
                    return Err(format!(
                        "its parent {} is not a directory in the archive",
                        display(&comps[..=i])
                    ));
                }
                None => {
                    let mut node = self.template.clone();
                    node.name = c.clone();
                    node.mtime = mtime;
                    node.ctime = mtime;
                    self.new_dir(at, node)
                }
            };
        }
        Ok(at)
    }

    fn new_dir(&mut self, parent: usize, node: Node) -> usize {
        let name = node.name.clone();
        self.dirs.push(Dir {
            parent,
            node,
            children: BTreeMap::new(),
            dead: false,
        });
        let id = self.dirs.len() - 1;
        self.dirs[parent].children.insert(name, Child::Dir(id));
        id
    }

    /// A directory member: new, or new metadata for one already implied
    /// by earlier members (its children stay).
    pub fn put_dir(&mut self, comps: &[Vec<u8>], node: Node) -> Result<Replaced, String> {
        let Some(last) = comps.last() else {
            let name = std::mem::take(&mut self.dirs[0].node.name);
            self.dirs[0].node = Node { name, ..node };
            self.root_listed = true;
            return Ok(None);
        };
        let parent = self.parent_dir(comps, node.mtime)?;
        match self.dirs[parent].children.get(last) {
            Some(Child::Dir(d)) => {
                let d = *d;
                self.dirs[d].node = node;
                Ok(None)
            }
            Some(Child::Leaf(_)) => {
                self.new_dir(parent, node);
                Ok(Some(
                    "appears twice, first as a non-directory; kept the later directory".into(),
                ))
            }
            None => {
                self.new_dir(parent, node);
                Ok(None)
            }
        }
    }

    /// Anything but a directory. A name already present is replaced, as
    /// extracting the archive would replace it.
    pub(crate) fn put_leaf(&mut self, comps: &[Vec<u8>], node: Node) -> Result<Replaced, String> {
        let Some(last) = comps.last() else {
            return Err("it names the archive's root `.` but is not a directory".into());
        };
        let parent = self.parent_dir(comps, node.mtime)?;
        let old = self.dirs[parent]
            .children
            .insert(last.clone(), Child::Leaf(Box::new(node)));
        Ok(match old {
            None => None,
            Some(Child::Leaf(_)) => {
                Some("appears more than once in the archive; kept the last one".into())
            }
            Some(Child::Dir(d)) => {
                self.dirs[d].dead = true;
                Some(
                    "appears twice, first as a directory; kept the later non-directory and dropped what was in the directory".into(),
                )
            }
        })
    }

    fn leaf_mut(&mut self, comps: &[Vec<u8>]) -> Option<&mut Node> {
        let (last, dirs) = comps.split_last()?;
        let mut at = 0;
        for c in dirs {
            match self.dirs[at].children.get(c)? {
                Child::Dir(d) => at = *d,
                Child::Leaf(_) => return None,
            }
        }
        match self.dirs[at].children.get_mut(last)? {
            Child::Leaf(n) => Some(&mut **n),
            Child::Dir(_) => None,
        }
    }

    /// A hard link `comps` to the earlier member `target`: both names then
    /// share one inode number (stable across imports: derived from the
    /// first name), so restore and export-tar link them again.
    pub(crate) fn put_link(
        &mut self,
        comps: &[Vec<u8>],
        target: &[Vec<u8>],
        name: Vec<u8>,
    ) -> Result<Replaced, String> {
        if comps == target {
            return Err("it is a hard link to itself".into());
        }
        let Some(first) = self.leaf_mut(target) else {
            return Err(format!(
                "it is a hard link to {}, which is not an earlier file in the archive",
                display(target)
            ));
        };
        if first.kind == NodeKind::File && first.inode == 0 {
            let h = blake3::hash(&target.join(&b'/'));
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&h.as_bytes()[..8]);
            let mut ino = u64::from_le_bytes(bytes);
            while ino == 0 || self.inodes.contains(&ino) {
                ino = ino.wrapping_add(1);
            }
            self.inodes.insert(ino);
            if let Some(first) = self.leaf_mut(target) {
                first.inode = ino;
            }
        }
        let Some(first) = self.leaf_mut(target) else {
            return Err("internal error: a hard link target vanished".into());
        };
        let mut node = first.clone();
        node.name = name;
        self.put_leaf(comps, node)
    }

    /// Store every tree bottom-up and return the root tree, which holds the
    /// one top directory. `parent` is the previous import's top directory,
    /// for the new/changed/unmodified counters.
    pub fn finish(
        mut self,
        sink: &dyn BlobSink,
        parent: Option<(&dyn BlobSource, BlobId)>,
        summary: &mut Summary,
    ) -> Result<BlobId> {
        let n = self.dirs.len();
        let mut parent_sub: Vec<Option<BlobId>> = vec![None; n];
        parent_sub[0] = parent.map(|p| p.1);
        let mut links: HashMap<u64, u64> = HashMap::new();
        for i in 0..n {
            if i > 0 && self.dirs[self.dirs[i].parent].dead {
                self.dirs[i].dead = true;
            }
            if self.dirs[i].dead {
                continue;
            }
            // A parent tree that cannot be read only costs the counters.
            let old = match (parent, parent_sub[i]) {
                (Some((src, _)), Some(id)) => load_tree(src, &id).ok(),
                _ => None,
            };
            for (name, child) in &self.dirs[i].children {
                let was = old.as_ref().and_then(|t| t.find(name));
                match child {
                    Child::Dir(d) => {
                        parent_sub[*d] = was
                            .filter(|p| p.kind == NodeKind::Dir)
                            .and_then(|p| p.subtree);
                    }
                    Child::Leaf(node) if node.kind == NodeKind::File => {
                        summary.total_files += 1;
                        summary.total_bytes += node.size;
                        if node.inode != 0 {
                            *links.entry(node.inode).or_default() += 1;
                        }
                        match was {
                            None => summary.files_new += 1,
                            Some(p)
                                if p.kind == NodeKind::File
                                    && p.content == node.content
                                    && p.mtime == node.mtime
                                    && p.mode == node.mode =>
                            {
                                summary.files_unmodified += 1
                            }
                            Some(_) => summary.files_changed += 1,
                        }
                    }
                    Child::Leaf(_) => {}
                }
            }
        }
        let mut ids: Vec<Option<BlobId>> = vec![None; n];
        for i in (0..n).rev() {
            if self.dirs[i].dead {
                continue;
            }
            let mut tree = Tree::default();
            for (_, child) in std::mem::take(&mut self.dirs[i].children) {
                let node = match child {
                    Child::Leaf(mut node) => {
                        match links.get(&node.inode) {
                            Some(&count) if count > 1 => node.links = count,
                            _ => {
                                node.inode = 0;
                                node.links = 1;
                            }
                        }
                        *node
                    }
                    Child::Dir(d) => {
                        let placeholder = Node::new(Vec::new(), NodeKind::Dir);
                        let mut node = std::mem::replace(&mut self.dirs[d].node, placeholder);
                        node.subtree = ids[d];
                        node
                    }
                };
                tree.nodes.push(node);
            }
            tree.sort();
            let id = store(sink, &tree, summary)?;
            ids[i] = Some(id);
            match parent_sub[i] {
                None => summary.dirs_new += 1,
                Some(p) if p == id => summary.dirs_unmodified += 1,
                Some(_) => summary.dirs_changed += 1,
            }
        }
        let mut top =
            std::mem::replace(&mut self.dirs[0].node, Node::new(Vec::new(), NodeKind::Dir));
        top.subtree = ids[0];
        store(sink, &Tree { nodes: vec![top] }, summary)
    }
}

fn store(sink: &dyn BlobSink, tree: &Tree, summary: &mut Summary) -> Result<BlobId> {
    let bytes = tree.encode();
    let id = sink.blob_id(&bytes);
    summary.bytes_added += sink.store_blob(BlobKind::Tree, id, &bytes)?;
    Ok(id)
}
