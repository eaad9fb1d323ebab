//! The directory walk: visits the backup paths depth-first in name order
//! and emits an ordered stream of [`Item`]s. Files that must be read become
//! jobs for the file savers; a file unchanged since the parent snapshot
//! (same size, mtime, ctime, inode and device, and recorded without
//! problems) carries its old content ids
//! and is never opened.
//!
//! The walk recurses; real filesystems bound the depth (PATH_MAX), and the
//! walker thread is given a large stack. Listings, metadata and parent
//! trees are prepared ahead of it by the `prefetch` module.

use super::metadata::{NameCache, node_from_metadata, node_from_parts, same_node};
use super::prefetch::{Listing, Prefetch, Scanned};
use super::{FileJob, FileOutcome, ITEM_BATCH, Item, ParentState, Reused, ReusedTree};
use crate::blob::{BlobSink, BlobSource};
use crate::error::Result;
use crate::id::BlobId;
use crate::progress::SourceWarning;
use crate::snapshot::tree::{Node, NodeKind, Tree};
use crate::snapshot::walk::load_tree;
use crossbeam_channel::{Sender, bounded};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The backup paths as a tree of path components: inner nodes are
/// directories recorded only for their metadata, `target` nodes are walked
/// completely.
#[derive(Default, Debug)]
pub(crate) struct PathTrie {
    children: BTreeMap<Vec<u8>, PathTrie>,
    target: bool,
}

impl PathTrie {
    /// Build from absolute paths. A path below another target is subsumed.
    pub fn new(paths: &[PathBuf]) -> PathTrie {
        let mut root = PathTrie::default();
        for p in paths {
            let mut node = &mut root;
            for c in p.components() {
                if let std::path::Component::Normal(name) = c {
                    if node.target {
                        break;
                    }
                    node = node.children.entry(name.as_bytes().to_vec()).or_default();
                }
            }
            node.target = true;
            node.children.clear();
        }
        root
    }
}

/// Where the walker's output goes: items to the assembler, files to the
/// readers, warnings to the report.
pub(crate) struct Outlets {
    pub items: Sender<Vec<Item>>,
    pub jobs: Sender<FileJob>,
    pub warnings: Sender<SourceWarning>,
}

pub(crate) struct Walker<'a> {
    /// Items go out in batches: one channel operation (and one thread
    /// wake-up) per [`ITEM_BATCH`] entries, not per file.
    items: Sender<Vec<Item>>,
    pending: Vec<Item>,
    /// Blob ids confirmed stored, for the directory being walked.
    known: std::collections::HashSet<BlobId>,
    excludes: &'a super::exclude::Excludes,
    /// The device of the backup path being walked (`--one-file-system`).
    fs_dev: Option<u64>,
    jobs: Sender<FileJob>,
    parent_source: Option<&'a dyn BlobSource>,
    /// Where content ids reused from the parent must still be stored.
    sink: &'a dyn BlobSink,
    /// A repository error met by the walker itself; aborts the backup.
    error: Option<crate::error::Error>,
    force: bool,
    /// May an unchanged directory's files be passed over as a whole
    /// (see [`Reused`])? Not when every file is to be re-read or named.
    reuse_dirs: bool,
    names: NameCache,
    warnings: Sender<SourceWarning>,
    /// (device, inode) of multiply-linked files already sent for reading.
    linked: std::collections::HashSet<(u64, u64)>,
    prefetch: &'a Prefetch<'a>,
}

/// The walker stops when the assembler hangs up (an error upstream).
struct Hangup;

impl<'a> Walker<'a> {
    /// A walker that has seen nothing yet. `force` re-reads every file
    /// rather than trusting the parent's metadata.
    pub fn new(
        out: Outlets,
        sink: &'a dyn BlobSink,
        parent_source: Option<&'a dyn BlobSource>,
        excludes: &'a super::exclude::Excludes,
        prefetch: &'a Prefetch<'a>,
        force: bool,
    ) -> Walker<'a> {
        Walker {
            items: out.items,
            pending: Vec::with_capacity(ITEM_BATCH),
            known: Default::default(),
            excludes,
            fs_dev: None,
            jobs: out.jobs,
            parent_source,
            sink,
            error: None,
            force,
            reuse_dirs: !force,
            names: Default::default(),
            warnings: out.warnings,
            linked: Default::default(),
            prefetch,
        }
    }

    /// Pass every file to the assembler, unchanged directories' too (for
    /// a progress report that names each unchanged file).
    pub fn each_file(mut self) -> Self {
        self.reuse_dirs = false;
        self
    }

    pub fn run(mut self, trie: &PathTrie, parent_root: Option<BlobId>) -> Result<()> {
        self.walk_all(trie, parent_root)?;
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn walk_all(&mut self, trie: &PathTrie, parent_root: Option<BlobId>) -> Result<()> {
        // An unreadable parent only costs a full re-read; it must not stop
        // the backup (its damage is reported where it was found).
        let parent = self.load_parent(parent_root).ok().flatten();
        // A hang-up means the assembler stopped on an error it reports itself.
        let walked = if trie.target {
            // Backing up `/` itself: its entries form the root tree.
            self.fs_dev = std::fs::symlink_metadata("/")
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::dev(&m));
            self.walk_dir(Path::new("/"), parent_root, None).map(|_| ())
        } else {
            self.emit_trie(trie, Path::new("/"), parent.as_ref())
        };
        if walked.is_ok() {
            let _ = self.flush();
        }
        Ok(())
    }

    fn load_parent(&self, id: Option<BlobId>) -> Result<Option<Tree>> {
        match (self.parent_source, id) {
            (Some(src), Some(id)) => load_tree(src, &id).map(Some),
            _ => Ok(None),
        }
    }

    /// A parent subtree that cannot be loaded only costs a re-read of
    /// everything below it; it must not stop the backup.
    fn parent_subtree(&self, pnode: Option<&Node>) -> Option<Tree> {
        let p = pnode?;
        if p.kind != NodeKind::Dir {
            return None;
        }
        self.load_parent(p.subtree).ok().flatten()
    }

    fn send(&mut self, item: Item) -> Result<(), Hangup> {
        self.pending.push(item);
        if self.pending.len() >= ITEM_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Hangup> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(ITEM_BATCH));
        self.items.send(batch).map_err(|_| Hangup)
    }

    fn warn(&self, path: &Path, message: String) {
        let _ = self.warnings.send(SourceWarning {
            path: path.to_path_buf(),
            message,
        });
    }

    fn emit_trie(
        &mut self,
        trie: &PathTrie,
        prefix: &Path,
        parent: Option<&Tree>,
    ) -> Result<(), Hangup> {
        for (name, child) in &trie.children {
            let path = prefix.join(OsStr::from_bytes(name));
            let md = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.warn(&path, format!("cannot read: {e}"));
                    continue;
                }
            };
            let pnode = parent.and_then(|t| t.find(name));
            if child.target {
                if self.excludes.excluded(&path, &md) {
                    continue;
                }
                self.fs_dev = Some(std::os::unix::fs::MetadataExt::dev(&md));
                let node = node_from_metadata(name.clone(), &path, &md, &mut self.names);
                let cache = md.is_dir() && self.excludes.is_cache_dir(&path);
                self.emit_entry(&path, node, &md, pnode, cache)?;
            } else {
                if !md.is_dir() {
                    self.warn(
                        &path,
                        "is not a directory; the paths below it are skipped".into(),
                    );
                    continue;
                }
                let node = node_from_metadata(name.clone(), &path, &md, &mut self.names);
                let sub = self.parent_subtree(pnode);
                self.send(Item::Enter {
                    node,
                    parent_subtree: pnode.and_then(|p| p.subtree),
                    reuse: None,
                })?;
                self.emit_trie(child, &path, sub.as_ref())?;
                self.send(Item::Leave { flags: 0 })?;
            }
        }
        Ok(())
    }

    /// The device `--one-file-system` keeps the walk on, if any.
    fn walk_dev(&self) -> Option<u64> {
        self.fs_dev.filter(|_| self.excludes.one_file_system)
    }

    /// Does `--one-file-system` keep the walk out of this directory?
    fn other_fs(&self, md: &std::fs::Metadata) -> bool {
        self.walk_dev()
            .is_some_and(|d| d != std::os::unix::fs::MetadataExt::dev(md))
    }

    /// Emit one entry; `cache_dir` when it is a directory with a valid
    /// `CACHEDIR.TAG` under `--exclude-caches`.
    fn emit_entry(
        &mut self,
        path: &Path,
        node: Node,
        md: &std::fs::Metadata,
        pnode: Option<&Node>,
        cache_dir: bool,
    ) -> Result<(), Hangup> {
        match node.kind {
            NodeKind::Dir => {
                let other_fs = self.other_fs(md);
                let cache = !other_fs && cache_dir;
                let psub = pnode
                    .filter(|p| p.kind == NodeKind::Dir)
                    .and_then(|p| p.subtree);
                let parent_subtree = pnode.and_then(|p| p.subtree);
                if !other_fs && !cache {
                    let flags = self.walk_dir(path, psub, Some((node, parent_subtree)))?;
                    return self.send(Item::Leave { flags });
                }
                self.send(Item::Enter {
                    node,
                    parent_subtree,
                    reuse: None,
                })?;
                // A mount point is recorded, not entered; of a cache
                // directory only its CACHEDIR.TAG is kept.
                if cache {
                    let tag = path.join("CACHEDIR.TAG");
                    if let Ok(tmd) = std::fs::symlink_metadata(&tag) {
                        let sub = self.parent_subtree(pnode);
                        let tnode = sub.as_ref().and_then(|t| t.find(b"CACHEDIR.TAG"));
                        let node = node_from_metadata(
                            b"CACHEDIR.TAG".to_vec(),
                            &tag,
                            &tmd,
                            &mut self.names,
                        );
                        self.emit_entry(&tag, node, &tmd, tnode, false)?;
                    }
                }
                self.send(Item::Leave { flags: 0 })
            }
            NodeKind::File => {
                let state = match pnode {
                    None => ParentState::New,
                    Some(p)
                        if !self.force && unchanged(p, &node) && self.all_known(&p.content)? =>
                    {
                        let mut node = node;
                        node.content = p.content.clone();
                        return self.send(Item::Leaf {
                            path: path.to_path_buf(),
                            node,
                            outcome: None,
                            state: ParentState::Unmodified,
                        });
                    }
                    Some(_) => ParentState::Changed,
                };
                if node.links > 1 && !self.linked.insert((node.device, node.inode)) {
                    // Another name of a file already being read: the
                    // assembler copies its content ids instead of reading twice.
                    return self.send(Item::Leaf {
                        path: path.to_path_buf(),
                        node,
                        outcome: None,
                        state,
                    });
                }
                let (tx, rx) = bounded::<Result<FileOutcome>>(1);
                self.jobs
                    .send(FileJob {
                        path: path.to_path_buf(),
                        result: tx,
                    })
                    .map_err(|_| Hangup)?;
                self.send(Item::Leaf {
                    path: path.to_path_buf(),
                    node,
                    outcome: Some(rx),
                    state,
                })
            }
            _ => self.send(Item::Leaf {
                path: path.to_path_buf(),
                node,
                outcome: None,
                state: if pnode.is_some() {
                    ParentState::Unmodified
                } else {
                    ParentState::New
                },
            }),
        }
    }

    /// Are all these blobs still stored? A repository error stops the walk.
    fn all_known(&mut self, ids: &[BlobId]) -> Result<bool, Hangup> {
        if self.sink.parent_blobs_known() {
            return Ok(true);
        }
        for id in ids {
            if self.known.contains(id) {
                continue;
            }
            match self.sink.has_blob(id) {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) => {
                    self.error = Some(e);
                    return Err(Hangup);
                }
            }
        }
        Ok(true)
    }

    /// Is every entry of this listing the parent's node for it, one for
    /// one and in order, and every file's content still stored? Then the
    /// directory's tree is the parent's but for its subdirectories, which
    /// the walk still enters (a change deep down leaves a directory's own
    /// metadata alone).
    fn same_entries(&mut self, entries: &[Scanned], parent: &Tree) -> Result<bool, Hangup> {
        if entries.len() != parent.nodes.len() {
            return Ok(false);
        }
        for (e, p) in entries.iter().zip(&parent.nodes) {
            if e.name != p.name
                || e.cache_dir
                || (e.md.is_dir() && self.other_fs(&e.md))
                || !same_node(p, &e.md, &mut self.names, &e.link_target, &e.xattrs)
            {
                return Ok(false);
            }
            if p.kind == NodeKind::File && !self.all_known(&p.content)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Emit every entry of a directory; returns the directory's flags.
    /// `parent_subtree` is the parent snapshot's tree of this directory.
    /// `enter` is the directory's own node and the id its `Enter` item
    /// names, sent here once the listing tells whether the directory is
    /// unchanged (none for the root of a backup of `/`).
    fn walk_dir(
        &mut self,
        path: &Path,
        parent_subtree: Option<BlobId>,
        enter: Option<(Node, Option<BlobId>)>,
    ) -> Result<u32, Hangup> {
        let mut listing = self.prefetch.take(path, parent_subtree, self.walk_dev());
        let complete = listing.flags == 0 && listing.warnings.is_empty();
        for w in std::mem::take(&mut listing.warnings) {
            let _ = self.warnings.send(w);
        }
        // A memo only stands for the parent's tree when the directory is
        // passed over as a whole; otherwise the tree is read after all.
        let memo_usable = self.reuse_dirs
            && complete
            && self.sink.parent_blobs_known()
            && listing.against == parent_subtree
            && enter.as_ref().is_some_and(|(_, s)| *s == parent_subtree);
        if listing.memo.is_some() && !memo_usable {
            self.prefetch
                .read_parent(path, &mut listing, parent_subtree);
        }
        // Subdirectories this walk will enter are prepared while the files
        // before them are emitted (a no-op when a worker made the listing
        // and queued them already).
        self.prefetch
            .schedule_subdirs(path, &listing, self.walk_dev());
        let Listing {
            flags,
            entries,
            parent,
            memo,
            ..
        } = listing;
        let parent = parent.map(Arc::new);
        let memo = memo.map(Arc::new);
        let tree = parent.as_deref();
        // One batched index query for the content the parent lets us reuse,
        // instead of one per file.
        self.known.clear();
        if !self.force
            && !self.sink.parent_blobs_known()
            && let Some(parent) = tree
        {
            let mut ids = Vec::new();
            for e in &entries {
                if let Some(p) = parent.find(&e.name)
                    && e.md.is_file()
                    && p.kind == NodeKind::File
                    && p.size == e.md.len()
                    && p.inode == std::os::unix::fs::MetadataExt::ino(&e.md)
                {
                    ids.extend_from_slice(&p.content);
                }
            }
            if !ids.is_empty() {
                match self.sink.known_blobs(&ids) {
                    Ok(k) => self.known = k,
                    Err(e) => {
                        self.error = Some(e);
                        return Err(Hangup);
                    }
                }
            }
        }
        let reused = match enter {
            Some((node, enter_subtree)) => {
                let tree = match (&parent, &memo) {
                    // Matched where it was listed; `memo_usable` held.
                    (_, Some(m)) => Some(ReusedTree::Memo(Arc::clone(m))),
                    (Some(t), None)
                        if self.reuse_dirs
                            && complete
                            && enter_subtree == parent_subtree
                            && self.same_entries(&entries, t)? =>
                    {
                        Some(ReusedTree::Loaded(Arc::clone(t)))
                    }
                    _ => None,
                };
                let reuse = tree.map(|tree| {
                    let files = entries.iter().filter(|e| e.md.is_file());
                    Reused {
                        tree,
                        files: files.clone().count() as u64,
                        bytes: files.map(|e| e.md.len()).sum(),
                    }
                });
                let reused = reuse.is_some();
                self.send(Item::Enter {
                    node,
                    parent_subtree: enter_subtree,
                    reuse,
                })?;
                reused
            }
            None => false,
        };
        let parent = parent.as_deref();
        for e in entries {
            if reused && !e.md.is_dir() {
                // In the parent's tree, which the assembler reuses.
                continue;
            }
            // Under a memo, a subdirectory's parent node is its subtree.
            let from_memo = memo.as_ref().filter(|_| e.md.is_dir()).map(|m| Node {
                subtree: m.subtree(&e.name),
                ..Node::new(e.name.clone(), NodeKind::Dir)
            });
            let pnode = parent.and_then(|t| t.find(&e.name)).or(from_memo.as_ref());
            let node = node_from_parts(e.name, &e.md, &mut self.names, e.link_target, e.xattrs);
            let child = path.join(OsStr::from_bytes(&node.name));
            self.emit_entry(&child, node, &e.md, pnode, e.cache_dir)?;
        }
        Ok(flags)
    }
}

/// Count the files and bytes below `paths` for progress totals. Runs beside
/// the real walk; errors are ignored (the walk reports them).
pub(crate) fn prescan(
    paths: &[PathBuf],
    stop: &std::sync::atomic::AtomicBool,
    progress: &dyn crate::progress::Progress,
) {
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if md.is_file() {
            files += 1;
            bytes += md.len();
        }
    }
    progress.scan_total(files, bytes);
}

/// The change-detection rule (doc/design.md): all five must match, and the
/// parent must not have recorded the file as damaged or changing.
pub fn unchanged(parent: &Node, now: &Node) -> bool {
    parent.kind == NodeKind::File
        && parent.flags == 0
        && parent.size == now.size
        && parent.mtime == now.mtime
        && parent.ctime == now.ctime
        && parent.inode == now.inode
        && parent.device == now.device
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trie_subsumes_nested_targets() {
        let t = PathTrie::new(&[
            PathBuf::from("/a/b"),
            PathBuf::from("/a/b/c"),
            PathBuf::from("/x"),
        ]);
        let a = &t.children[&b"a".to_vec()];
        assert!(!a.target);
        let b = &a.children[&b"b".to_vec()];
        assert!(b.target && b.children.is_empty());
        assert!(t.children[&b"x".to_vec()].target);
        let t = PathTrie::new(&[PathBuf::from("/a/b/c"), PathBuf::from("/a")]);
        assert!(t.children[&b"a".to_vec()].target);
        assert!(t.children[&b"a".to_vec()].children.is_empty());
    }
}
