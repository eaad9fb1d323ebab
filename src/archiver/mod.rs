//! Backup: turn directory trees into a snapshot.
//!
//! ```text
//!  walker thread ──items (ordered, bounded)──────────────────► assembler (caller's thread)
//!      │                                                          ▲   builds trees bottom-up,
//!      └──file jobs (bounded)──► file savers (N threads) ─results─┘   stores them, counts
//!                                  read → FastCDC → BLAKE3 → dedup → zstd → seal  (rayon)
//!                                  → BlobSink (packs → verify → upload → index)
//! ```
//!
//! The walker emits items in depth-first name order; each file item carries
//! a one-shot receiver for its result, so files are read in parallel while
//! trees are assembled in order. Memory is bounded by the two channel
//! capacities, never by the size of the tree or of any file.
//!
//! Errors: a source problem is a [`SourceWarning`] collected in the outcome
//! (exit 3); any [`Error`] (a repository failure) aborts the run before a
//! snapshot is written.

pub mod exclude;
pub(crate) mod file_saver;
mod memo;
pub mod metadata;
pub(crate) mod prefetch;
pub mod scan;
pub mod stream;
pub mod tar_import;

use crate::blob::{BlobKind, BlobSink, BlobSource};
use crate::chunking::Chunker;
use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::progress::{Progress, SourceWarning};
use crate::repository::Repository;
use crate::repository::blob_store::BlobStore;
use crate::snapshot::Snapshot;
use crate::snapshot::tree::{Node, NodeKind, Tree};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Items per message from the walker to the assembler.
pub(crate) const ITEM_BATCH: usize = 256;
/// Threads preparing directory listings ahead of the walker.
const PREFETCH_THREADS: usize = 4;
/// Batches the walker may run ahead of the assembler (2048 items). Each
/// file item holds its node, path and result channel, about 1 KB: at 32
/// batches the queue held 6.6 MB of a 200k-file backup's peak, for no
/// speed, since the walker cannot queue more files than [`JOB_QUEUE`]
/// ahead of the savers anyway.
const ITEM_QUEUE: usize = 8;
/// Files waiting for a saver.
const JOB_QUEUE: usize = 256;

pub(crate) struct FileJob {
    pub path: PathBuf,
    pub result: Sender<Result<FileOutcome>>,
}

/// What a file saver produced for one file.
#[derive(Default)]
pub struct FileOutcome {
    pub content: Vec<BlobId>,
    /// Bytes of content: those read, and the holes of a sparse file.
    pub read: u64,
    /// Bytes of `read` that were holes, passed over without reading.
    pub holes: u64,
    /// Stored bytes this file added to the repository.
    pub added: u64,
    pub flags: u32,
    /// Metadata of the open file before it was read.
    pub stat: Option<std::fs::Metadata>,
    /// The file was stored, with a problem worth reporting.
    pub warning: Option<SourceWarning>,
    /// The file could not be stored at all.
    pub skipped: Option<SourceWarning>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParentState {
    New,
    Changed,
    Unmodified,
}

pub enum Item {
    Enter {
        node: Node,
        parent_subtree: Option<BlobId>,
        /// The directory is unchanged since the parent snapshot but maybe
        /// for its subdirectories: only those follow, and the tree is the
        /// parent's, rebuilt only if one of them changed.
        reuse: Option<Reused>,
    },
    Leaf {
        path: PathBuf,
        node: Node,
        outcome: Option<Receiver<Result<FileOutcome>>>,
        state: ParentState,
    },
    Leave {
        flags: u32,
    },
}

/// An unchanged directory's tree in the parent snapshot, and how many
/// files (and their bytes) it holds outside its subdirectories: what the
/// assembler counts for them instead of handling each. No node is built,
/// and no tree encoded or hashed, for a directory that did not change.
pub struct Reused {
    pub(crate) tree: ReusedTree,
    pub files: u64,
    pub bytes: u64,
}

/// The parent's tree of an unchanged directory: read, or known by its
/// memo (read only if a subdirectory changed).
#[derive(Clone)]
pub(crate) enum ReusedTree {
    Loaded(Arc<Tree>),
    Memo(Arc<memo::TreeMemo>),
}

#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// Absolute paths to back up.
    pub paths: Vec<PathBuf>,
    /// Re-read every file even when the parent says it is unchanged.
    pub force: bool,
    /// File saver threads.
    pub threads: usize,
    /// What to leave out.
    pub excludes: exclude::Excludes,
}

/// Counters of one backup; stored in the snapshot's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs_new: u64,
    pub dirs_changed: u64,
    pub dirs_unmodified: u64,
    pub total_files: u64,
    pub total_bytes: u64,
    pub bytes_read: u64,
    pub bytes_added: u64,
    pub warnings: u64,
    pub duration_ms: u64,
}

impl Summary {
    pub(crate) fn to_map(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for (k, v) in [
            ("files_new", self.files_new),
            ("files_changed", self.files_changed),
            ("files_unmodified", self.files_unmodified),
            ("dirs_new", self.dirs_new),
            ("dirs_changed", self.dirs_changed),
            ("dirs_unmodified", self.dirs_unmodified),
            ("total_files", self.total_files),
            ("total_bytes", self.total_bytes),
            ("bytes_read", self.bytes_read),
            ("bytes_added", self.bytes_added),
            ("warnings", self.warnings),
            ("duration_ms", self.duration_ms),
        ] {
            m.insert(k.to_string(), v);
        }
        m
    }
}

pub struct BackupOutcome {
    pub tree: BlobId,
    pub summary: Summary,
    pub warnings: Vec<SourceWarning>,
}

/// Back up `opts.paths` into `sink`, comparing with the parent snapshot's
/// tree when given. Returns the root tree id; the caller writes the snapshot.
pub fn backup(
    sink: &dyn BlobSink,
    parent: Option<(&dyn BlobSource, BlobId)>,
    chunker: &Chunker,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    let memo_failed = AtomicBool::new(false);
    match walk(sink, parent, chunker, opts, progress, Some(&memo_failed)) {
        // A directory passed over by its memo had a subdirectory change,
        // and then its parent tree could not be read to rebuild it. The
        // walk that reads every parent tree copes with that (it walks the
        // directory as new), so it runs again that way; what the first
        // stored is deduplicated.
        Err(_) if memo_failed.load(Ordering::Relaxed) => {
            walk(sink, parent, chunker, opts, progress, None)
        }
        r => r,
    }
}

/// [`backup`], with unchanged directories recognised by their memos when
/// `memo_failed` is given (set if a memo's tree then could not be read).
fn walk(
    sink: &dyn BlobSink,
    parent: Option<(&dyn BlobSource, BlobId)>,
    chunker: &Chunker,
    opts: &BackupOptions,
    progress: &dyn Progress,
    memo_failed: Option<&AtomicBool>,
) -> Result<BackupOutcome> {
    let start = std::time::Instant::now();
    for p in &opts.paths {
        if !p.is_absolute() {
            return Err(Error::Usage(format!(
                "backup path {} must be absolute",
                p.display()
            )));
        }
    }
    let trie = scan::PathTrie::new(&opts.paths);
    let stop = AtomicBool::new(false);
    let (warn_tx, warn_rx) = unbounded::<SourceWarning>();
    let memos = memo::Memos::new(sink);
    let mut prefetch = prefetch::Prefetch::new(&opts.excludes, parent.map(|p| p.0));
    if memo_failed.is_some()
        && !opts.force
        && !progress.names_unchanged()
        && sink.parent_blobs_known()
    {
        prefetch = prefetch.with_memos(&memos);
    }
    let mut outcome = std::thread::scope(|s| -> Result<BackupOutcome> {
        let (item_tx, item_rx) = bounded::<Vec<Item>>(ITEM_QUEUE);
        let (job_tx, job_rx) = bounded::<FileJob>(JOB_QUEUE);
        let walker = scan::Walker::new(
            scan::Outlets {
                items: item_tx,
                jobs: job_tx,
                warnings: warn_tx.clone(),
            },
            sink,
            parent.map(|p| p.0),
            &opts.excludes,
            &prefetch,
            opts.force,
        );
        let walker = if progress.names_unchanged() {
            walker.each_file()
        } else {
            walker
        };
        let parent_root = parent.map(|p| p.1);
        let trie = &trie;
        let walk = std::thread::Builder::new()
            .name("coffer-walk".into())
            .stack_size(256 * 1024 * 1024)
            .spawn_scoped(s, move || walker.run(trie, parent_root))
            .map_err(|e| Error::Internal(format!("cannot start the walker thread: {e}")))?;
        for i in 0..opts.threads.max(1) {
            let rx = job_rx.clone();
            let stop = &stop;
            std::thread::Builder::new()
                .name(format!("coffer-read-{i}"))
                .spawn_scoped(s, move || {
                    let mut buf = Vec::new();
                    for job in rx.iter() {
                        if stop.load(Ordering::Relaxed) {
                            continue;
                        }
                        let r = file_saver::save_file(&job, sink, chunker, progress, &mut buf);
                        let _ = job.result.send(r);
                    }
                })
                .map_err(|e| Error::Internal(format!("cannot start a reader thread: {e}")))?;
        }
        drop(job_rx);
        // Listing and stat'ing is mostly waiting on the kernel (or the disk,
        // when cold): more listers than cores keep the walker fed. Spawned
        // after every fallible step, so that nothing returns before the
        // `shutdown` below that lets them end.
        for i in 0..PREFETCH_THREADS {
            let prefetch = &prefetch;
            let spawned = std::thread::Builder::new()
                .name(format!("coffer-list-{i}"))
                .spawn_scoped(s, move || prefetch.work());
            if spawned.is_err() {
                // The walker lists by itself what no worker prepared.
                break;
            }
        }
        if progress.wants_totals() {
            let (paths, stop) = (&opts.paths, &stop);
            s.spawn(move || scan::prescan(paths, stop, progress));
        }
        let r = assemble(
            sink,
            parent.map(|p| p.0),
            (&memos, memo_failed),
            chunker,
            item_rx,
            progress,
        );
        // Stops the savers' remaining jobs after an error, and the pre-scan
        // in any case: the backup is done either way.
        stop.store(true, Ordering::Relaxed);
        let walked = walk.join();
        // Whatever happened, the listers must stop for the scope to end.
        prefetch.shutdown();
        let walked = walked.map_err(|_| Error::Internal("the walker thread panicked".into()))?;
        // A repository error the walker met explains an early end of items.
        walked?;
        r
    })?;
    memos.flush();
    drop(warn_tx);
    let early: Vec<SourceWarning> = warn_rx.iter().collect();
    for w in &early {
        progress.warning(w);
    }
    outcome.warnings.extend(early);
    outcome.summary.warnings = outcome.warnings.len() as u64;
    outcome.summary.duration_ms = start.elapsed().as_millis() as u64;
    Ok(outcome)
}

struct Frame {
    node: Option<Node>,
    parent_subtree: Option<BlobId>,
    tree: Tree,
    /// The parent's tree of an unchanged directory (see [`Reused`]).
    reuse: Option<ReusedTree>,
}

/// Consume items in order, fill in file results, store finished trees.
fn assemble(
    sink: &dyn BlobSink,
    parent_source: Option<&dyn BlobSource>,
    (memos, memo_failed): (&memo::Memos, Option<&AtomicBool>),
    chunker: &Chunker,
    items: Receiver<Vec<Item>>,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    let mut summary = Summary::default();
    // Content of multiply-linked files read so far, for their other names.
    let mut linked: HashMap<(u64, u64), (Vec<BlobId>, u64, u32)> = HashMap::new();
    let mut warnings = Vec::new();
    let mut stack = vec![Frame {
        node: None,
        parent_subtree: None,
        tree: Tree::default(),
        reuse: None,
    }];
    let store_tree = |tree: &mut Tree, summary: &mut Summary| -> Result<BlobId> {
        tree.sort();
        let bytes = tree.encode();
        let id = sink.blob_id(&bytes);
        summary.bytes_added += sink.store_blob(BlobKind::Tree, id, &bytes)?;
        // The next backup finds this directory unchanged by its memo.
        memos.keep(id, tree);
        Ok(id)
    };
    for item in items.iter().flatten() {
        match item {
            Item::Enter {
                node,
                parent_subtree,
                reuse,
            } => {
                if let Some(r) = &reuse {
                    summary.total_files += r.files;
                    summary.total_bytes += r.bytes;
                    summary.files_unmodified += r.files;
                    progress.unchanged_done(r.files, r.bytes);
                }
                stack.push(Frame {
                    node: Some(node),
                    parent_subtree,
                    tree: Tree::default(),
                    reuse: reuse.map(|r| r.tree),
                });
            }
            Item::Leave { flags } => {
                let Some(mut f) = stack.pop().filter(|_| !stack.is_empty()) else {
                    return Err(Error::Internal("unbalanced directory walk".into()));
                };
                let id = match (f.reuse.take(), f.parent_subtree) {
                    (Some(ReusedTree::Memo(m)), Some(old_id)) if m.same_subdirs(&f.tree.nodes) => {
                        old_id
                    }
                    (Some(old), Some(old_id)) => {
                        let old = match old {
                            ReusedTree::Loaded(t) => t,
                            // A subdirectory changed: the parent's tree is
                            // rebuilt, so it is read after all.
                            ReusedTree::Memo(_) => {
                                let loaded = match parent_source {
                                    Some(src) => crate::snapshot::walk::load_tree(src, &old_id),
                                    None => Err(Error::Internal(
                                        "an unchanged directory without a parent snapshot".into(),
                                    )),
                                };
                                if loaded.is_err()
                                    && let Some(failed) = memo_failed
                                {
                                    failed.store(true, Ordering::Relaxed);
                                }
                                Arc::new(loaded?)
                            }
                        };
                        match reused_tree(&old, f.tree)? {
                            None => old_id,
                            Some(mut tree) => store_tree(&mut tree, &mut summary)?,
                        }
                    }
                    (Some(_), None) => {
                        return Err(Error::Internal(
                            "an unchanged directory without its parent tree".into(),
                        ));
                    }
                    (None, _) => store_tree(&mut f.tree, &mut summary)?,
                };
                match f.parent_subtree {
                    None => summary.dirs_new += 1,
                    Some(p) if p == id => summary.dirs_unmodified += 1,
                    Some(_) => summary.dirs_changed += 1,
                }
                let mut node = f
                    .node
                    .unwrap_or_else(|| Node::new(b"?".to_vec(), NodeKind::Dir));
                node.subtree = Some(id);
                node.flags |= flags;
                if let Some(top) = stack.last_mut() {
                    top.tree.nodes.push(node);
                }
            }
            Item::Leaf {
                path,
                mut node,
                outcome,
                state,
            } => {
                let is_file = node.kind == NodeKind::File;
                let link_key = (node.device, node.inode);
                let reuse_link = is_file && outcome.is_none() && state != ParentState::Unmodified;
                let outcome = match (outcome, reuse_link.then(|| linked.get(&link_key)).flatten()) {
                    (Some(rx), _) => Some(
                        rx.recv()
                            .map_err(|_| Error::Internal("a reader thread stopped".into()))??,
                    ),
                    (None, Some((content, size, flags))) => {
                        node.content = content.clone();
                        node.size = *size;
                        node.flags = *flags;
                        None
                    }
                    // The first name of this inode could not be read: read
                    // this one here.
                    (None, None) if reuse_link => {
                        let (tx, _rx) = bounded(1);
                        let job = FileJob {
                            path: path.clone(),
                            result: tx,
                        };
                        Some(file_saver::save_file(
                            &job,
                            sink,
                            chunker,
                            progress,
                            &mut Vec::new(),
                        )?)
                    }
                    (None, None) => None,
                };
                if let Some(out) = outcome {
                    if let Some(w) = out.skipped {
                        progress.warning(&w);
                        warnings.push(w);
                        continue;
                    }
                    if let Some(w) = out.warning {
                        progress.warning(&w);
                        warnings.push(w);
                    }
                    if let Some(st) = &out.stat {
                        use std::os::unix::fs::MetadataExt;
                        node.mtime = crate::snapshot::tree::Time::new(st.mtime(), st.mtime_nsec());
                        node.ctime = crate::snapshot::tree::Time::new(st.ctime(), st.ctime_nsec());
                        node.inode = st.ino();
                        node.device = st.dev();
                        node.mode = st.mode() & 0o7777;
                    }
                    node.content = out.content;
                    node.size = out.read;
                    node.flags = out.flags;
                    summary.bytes_read += out.read - out.holes;
                    summary.bytes_added += out.added;
                } else if is_file {
                    progress.file_done(&path, node.size, 0);
                }
                if is_file && node.links > 1 {
                    linked.insert(link_key, (node.content.clone(), node.size, node.flags));
                }
                if is_file {
                    summary.total_files += 1;
                    summary.total_bytes += node.size;
                    match state {
                        ParentState::New => summary.files_new += 1,
                        ParentState::Changed => summary.files_changed += 1,
                        ParentState::Unmodified => summary.files_unmodified += 1,
                    }
                }
                if let Some(top) = stack.last_mut() {
                    top.tree.nodes.push(node);
                }
            }
        }
    }
    if stack.len() != 1 {
        return Err(Error::Internal("the directory walk ended early".into()));
    }
    let mut root = stack.pop().map(|f| f.tree).unwrap_or_default();
    let tree = store_tree(&mut root, &mut summary)?;
    Ok(BackupOutcome {
        tree,
        summary,
        warnings,
    })
}

/// The tree of a directory the walker found unchanged (see [`Reused`]):
/// `None` when its subdirectories' nodes (`subdirs`, in order) are the
/// parent's too, so the parent's tree id stands; otherwise the parent's
/// tree with those nodes put in.
fn reused_tree(old: &Tree, subdirs: Tree) -> Result<Option<Tree>> {
    // Checked first and built only on a change: most unchanged directories
    // stay unchanged all the way down, and copying every file node of
    // every one of them only to drop the copy was a tenth of the
    // assembler's time in a no-change backup.
    let mut fresh = subdirs.nodes.iter();
    let mut same = true;
    for p in old.nodes.iter().filter(|p| p.kind == NodeKind::Dir) {
        match fresh.next() {
            Some(n) if n.name == p.name => same &= n == p,
            _ => {
                return Err(Error::Internal(format!(
                    "the walk skipped subdirectory {} of an unchanged directory",
                    String::from_utf8_lossy(&p.name)
                )));
            }
        }
    }
    if fresh.next().is_some() {
        return Err(Error::Internal(
            "the walk entered a directory its unchanged parent does not hold".into(),
        ));
    }
    if same {
        return Ok(None);
    }
    let mut fresh = subdirs.nodes.into_iter();
    let nodes = old
        .nodes
        .iter()
        .map(|p| match p.kind {
            NodeKind::Dir => fresh.next().unwrap_or_else(|| p.clone()),
            _ => p.clone(),
        })
        .collect();
    Ok(Some(Tree { nodes }))
}

/// What a backup into a repository needs besides the paths.
pub struct SnapshotOptions {
    pub backup: BackupOptions,
    pub parent: Option<(SnapshotId, Snapshot)>,
    pub tags: Vec<String>,
    pub hostname: String,
    /// The snapshot's time (default: now), like restic's `backup --time`.
    pub time_ns: Option<i64>,
}

/// Back up into `repo` and record a snapshot. Order: packs, index segment,
/// then the snapshot (doc/design.md invariant 5); on any error no snapshot exists.
pub fn snapshot(
    repo: Arc<Repository>,
    opts: &SnapshotOptions,
    progress: &dyn Progress,
) -> Result<(SnapshotId, Snapshot, BackupOutcome)> {
    let paths = opts
        .backup
        .paths
        .iter()
        .map(|p| std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec())
        .collect();
    record_snapshot(repo, opts, paths, |store, parent, chunker| {
        backup(store, parent, chunker, &opts.backup, progress)
    })
}

/// What [`snapshot`] would do, writing nothing: every file that differs
/// from the parent is read, chunked and hashed as in a backup, and each
/// chunk the repository lacks is counted instead of stored. The outcome's
/// `bytes_added` is those chunks' size before compression.
pub fn dry_run(
    repo: Arc<Repository>,
    opts: &SnapshotOptions,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    let chunker = repo.chunker()?;
    repo.index()?;
    let sink = DrySink {
        repo: &repo,
        counted: Default::default(),
    };
    let parent = opts
        .parent
        .as_ref()
        .map(|(_, s)| (repo.as_ref() as &dyn BlobSource, s.tree));
    backup(&sink, parent, &chunker, &opts.backup, progress)
}

/// A [`BlobSink`] that stores nothing: it answers from the index and
/// counts the new blobs it is handed (each once).
struct DrySink<'a> {
    repo: &'a Repository,
    counted: std::sync::Mutex<std::collections::HashSet<BlobId>>,
}

impl BlobSink for DrySink<'_> {
    fn blob_id(&self, data: &[u8]) -> BlobId {
        self.repo.keys().blob_id(data)
    }

    fn has_blob(&self, id: &BlobId) -> Result<bool> {
        let counted = self.counted.lock().is_ok_and(|c| c.contains(id));
        Ok(counted || self.repo.index()?.contains(id)?)
    }

    fn store_blob(&self, _kind: BlobKind, id: BlobId, data: &[u8]) -> Result<u64> {
        if self.repo.index()?.contains(&id)? {
            return Ok(0);
        }
        let fresh = self
            .counted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        Ok(if fresh { data.len() as u64 } else { 0 })
    }
}

/// Run `fill` against a new blob store (with the parent snapshot's tree to
/// compare with), then make everything it stored durable and indexed, and
/// only then write the snapshot of `paths`.
pub(crate) fn record_snapshot(
    repo: Arc<Repository>,
    opts: &SnapshotOptions,
    paths: Vec<Vec<u8>>,
    fill: impl FnOnce(
        &BlobStore,
        Option<(&dyn BlobSource, BlobId)>,
        &crate::chunking::Chunker,
    ) -> Result<BackupOutcome>,
) -> Result<(SnapshotId, Snapshot, BackupOutcome)> {
    let store = BlobStore::new(repo.clone())?;
    let chunker = repo.chunker()?;
    if let Some((pid, _)) = &opts.parent {
        // A cache that cannot answer only costs the lookups.
        store.trust_parent(repo.index()?.is_complete(pid).unwrap_or(false));
    }
    let parent = opts
        .parent
        .as_ref()
        .map(|(_, s)| (repo.as_ref() as &dyn BlobSource, s.tree));
    let mut outcome = fill(&store, parent, &chunker)?;
    let stats = store.finish()?;
    outcome.summary.bytes_added = stats.stored_bytes_added;
    let (id, snap) = save_snapshot(&repo, &outcome, paths, opts)?;
    // Every blob the snapshot names was found in the index or stored and
    // indexed by `finish`. Only a hint for the next backup: ignore failure.
    let _ = repo.index().and_then(|i| i.mark_complete(&id));
    Ok((id, snap, outcome))
}

/// Write the snapshot object: the last step, after packs and index.
fn save_snapshot(
    repo: &Repository,
    outcome: &BackupOutcome,
    paths: Vec<Vec<u8>>,
    opts: &SnapshotOptions,
) -> Result<(SnapshotId, Snapshot)> {
    let snap = Snapshot {
        time_ns: opts.time_ns.unwrap_or_else(crate::repository::now_ns),
        tree: outcome.tree,
        parent: opts.parent.as_ref().map(|(id, _)| *id),
        hostname: opts.hostname.clone(),
        username: crate::repository::username(),
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        paths,
        tags: opts.tags.clone(),
        program_version: format!("coffer {}", env!("CARGO_PKG_VERSION")),
        summary: outcome.summary.to_map(),
    };
    let id = repo.save_snapshot(&snap)?;
    Ok((id, snap))
}

/// Make a user-given path absolute and resolve symlinks in its parent
/// directories, keeping the last component as given: backing up a symlink
/// stores the link, as restic does.
pub fn absolute_path(p: &Path) -> std::io::Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    let mut clean = PathBuf::from("/");
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::Normal(n) => clean.push(n),
            _ => {}
        }
    }
    match (clean.parent(), clean.file_name()) {
        (Some(parent), Some(name)) => Ok(std::fs::canonicalize(parent)?.join(name)),
        _ => Ok(clean),
    }
}

#[cfg(test)]
mod tests {
    //! The backup through its roles: a temp-dir tree into an in-memory
    //! repository, the parent read back through [`BlobSource`].
    use super::*;
    use crate::progress::NoProgress;
    use crate::snapshot::walk::load_tree;

    /// Back up `dir` (with `parent`'s tree to compare with) and make it
    /// durable, as `snapshot` does, without writing a snapshot.
    fn backup_dir(repo: &Arc<Repository>, dir: &Path, parent: Option<BlobId>) -> BackupOutcome {
        let source: &dyn BlobSource = repo.as_ref();
        backup_from(repo, dir, parent.map(|p| (source, p)), false)
    }

    /// [`backup_dir`] with the parent read through any source; `trusted`:
    /// its content vouched for, as a parent the index marked complete.
    fn backup_from(
        repo: &Arc<Repository>,
        dir: &Path,
        parent: Option<(&dyn BlobSource, BlobId)>,
        trusted: bool,
    ) -> BackupOutcome {
        let store = BlobStore::new(repo.clone()).unwrap();
        store.trust_parent(trusted);
        let opts = BackupOptions {
            paths: vec![dir.to_path_buf()],
            force: false,
            threads: 2,
            excludes: Default::default(),
        };
        let chunker = repo.chunker().unwrap();
        let out = backup(&store, parent, &chunker, &opts, &NoProgress).unwrap();
        store.finish().unwrap();
        out
    }

    /// The node at absolute `path` below the root tree `root`.
    fn node_at(repo: &Repository, root: BlobId, path: &Path) -> Node {
        let mut tree = load_tree(repo, &root).unwrap();
        let names: Vec<_> = path.components().skip(1).collect();
        for (i, c) in names.iter().enumerate() {
            let name = c.as_os_str().as_encoded_bytes();
            let node = tree.find(name).unwrap().clone();
            if i + 1 == names.len() {
                return node;
            }
            tree = load_tree(repo, &node.subtree.unwrap()).unwrap();
        }
        panic!("empty path");
    }

    /// `root` with the node at absolute `path` given `content`, the trees
    /// above it rewritten and stored: a parent snapshot forged to disagree
    /// with the file's bytes while agreeing with its metadata.
    fn with_content(
        store: &BlobStore,
        repo: &Repository,
        root: BlobId,
        path: &Path,
        content: Vec<BlobId>,
    ) -> BlobId {
        fn rewrite(
            store: &BlobStore,
            repo: &Repository,
            id: BlobId,
            names: &[&[u8]],
            content: &[BlobId],
        ) -> BlobId {
            let mut tree = load_tree(repo, &id).unwrap();
            let node = tree.nodes.iter_mut().find(|n| n.name == names[0]).unwrap();
            if names.len() == 1 {
                node.content = content.to_vec();
            } else {
                let sub = node.subtree.unwrap();
                node.subtree = Some(rewrite(store, repo, sub, &names[1..], content));
            }
            let bytes = tree.encode();
            let new = store.blob_id(&bytes);
            store.store_blob(BlobKind::Tree, new, &bytes).unwrap();
            new
        }
        let names: Vec<&[u8]> = path
            .components()
            .skip(1)
            .map(|c| c.as_os_str().as_encoded_bytes())
            .collect();
        rewrite(store, repo, root, &names, &content)
    }

    fn repo() -> Arc<Repository> {
        Arc::new(crate::repository::memory_repo().1)
    }

    #[test]
    fn an_unchanged_tree_is_not_read_and_keeps_every_id() {
        let repo = repo();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("src");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a"), b"alpha").unwrap();
        std::fs::write(dir.join("sub/b"), b"beta!!").unwrap();
        let first = backup_dir(&repo, &dir, None);
        assert_eq!(first.summary.files_new, 2);
        assert_eq!(first.summary.bytes_read, 11);

        let second = backup_dir(&repo, &dir, Some(first.tree));
        // Compared at `dir`: the ancestors (/tmp) change under parallel tests.
        let tree_of = |root| node_at(&repo, root, &dir).subtree.unwrap();
        assert_eq!(tree_of(second.tree), tree_of(first.tree));
        assert_eq!(second.summary.files_unmodified, 2);
        assert_eq!(second.summary.files_new + second.summary.files_changed, 0);
        assert_eq!(second.summary.bytes_read, 0, "nothing was read");
        // `src` and `sub` at least.
        assert!(second.summary.dirs_unmodified >= 2);
        assert!(second.warnings.is_empty());
    }

    /// A parent source that counts the trees read through it.
    struct Counting<'a>(&'a Repository, std::sync::atomic::AtomicUsize);

    impl BlobSource for Counting<'_> {
        fn read_blob(&self, kind: BlobKind, id: &BlobId) -> Result<Vec<u8>> {
            if kind == BlobKind::Tree {
                self.1.fetch_add(1, Ordering::Relaxed);
            }
            self.0.read_blob(kind, id)
        }
    }

    /// [`backup_dir`] with the parent read through `source` and its
    /// content vouched for, as a parent the index marked complete: the
    /// case where unchanged directories are known by their memos.
    fn backup_trusting(
        repo: &Arc<Repository>,
        dir: &Path,
        parent: BlobId,
        source: &dyn BlobSource,
    ) -> BackupOutcome {
        backup_from(repo, dir, Some((source, parent)), true)
    }

    #[test]
    fn unchanged_directories_are_known_by_their_memos_without_reading_their_trees() {
        let repo = repo();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("src");
        std::fs::create_dir_all(dir.join("sub/deep")).unwrap();
        std::fs::create_dir_all(dir.join("other")).unwrap();
        std::fs::write(dir.join("a"), b"alpha").unwrap();
        std::fs::write(dir.join("sub/b"), b"beta").unwrap();
        std::fs::write(dir.join("sub/deep/c"), b"gamma").unwrap();
        std::fs::write(dir.join("other/d"), b"delta").unwrap();
        let first = backup_dir(&repo, &dir, None);
        let tree_of = |root| node_at(&repo, root, &dir).subtree.unwrap();
        // Only the directories above `dir`, which are not walked but
        // recorded for their metadata, have their trees read.
        let above = dir.ancestors().count() - 1;

        let counting = Counting(&repo, Default::default());
        let second = backup_trusting(&repo, &dir, first.tree, &counting);
        assert_eq!(tree_of(second.tree), tree_of(first.tree));
        assert_eq!(second.summary.files_unmodified, 4);
        // `src` and the three below it; those above change under
        // parallel tests.
        assert!(second.summary.dirs_unmodified >= 4);
        assert_eq!(counting.1.load(Ordering::Relaxed), above, "trees read");

        // A change deep down: its directories are rebuilt from the parent's
        // trees (read for it), the same as a backup without memos makes.
        std::fs::write(dir.join("sub/deep/c"), b"gamma, longer").unwrap();
        let counting = Counting(&repo, Default::default());
        let third = backup_trusting(&repo, &dir, second.tree, &counting);
        let plain = backup_dir(&repo, &dir, Some(second.tree));
        assert_eq!(tree_of(third.tree), tree_of(plain.tree));
        assert_ne!(tree_of(third.tree), tree_of(second.tree));
        assert_eq!(third.summary.files_changed, 1);
        assert_eq!(node_at(&repo, third.tree, &dir.join("sub/deep/c")).size, 13);
        assert_eq!(
            node_at(&repo, third.tree, &dir.join("other")).subtree,
            node_at(&repo, second.tree, &dir.join("other")).subtree
        );
        // `src` and `sub` (rebuilt) and `deep` (changed entries) at most.
        assert!(counting.1.load(Ordering::Relaxed) <= above + 3);

        // An extended attribute set since (where the file system has
        // them): the change time moved, so the file's attributes are read.
        let b = std::ffi::CString::new(dir.join("sub/b").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path and name, and a value of the
        // length given.
        let set = unsafe {
            libc::setxattr(
                b.as_ptr(),
                c"user.memo".as_ptr(),
                b"v".as_ptr().cast(),
                1,
                0,
            )
        };
        if set == 0 {
            let counting = Counting(&repo, Default::default());
            let fourth = backup_trusting(&repo, &dir, third.tree, &counting);
            let node = node_at(&repo, fourth.tree, &dir.join("sub/b"));
            assert_eq!(node.xattrs, vec![(b"user.memo".to_vec(), b"v".to_vec())]);
            assert_eq!(
                tree_of(fourth.tree),
                tree_of(backup_dir(&repo, &dir, Some(third.tree)).tree)
            );
        }
    }

    /// A parent source for which one tree cannot be read.
    struct Unreadable<'a>(&'a Repository, BlobId);

    impl BlobSource for Unreadable<'_> {
        fn read_blob(&self, kind: BlobKind, id: &BlobId) -> Result<Vec<u8>> {
            if *id == self.1 {
                return Err(Error::corrupt(format!("tree {id}"), "damaged in its pack"));
            }
            self.0.read_blob(kind, id)
        }
    }

    #[test]
    fn a_memo_whose_tree_cannot_be_read_when_needed_costs_a_second_walk_not_the_backup() {
        let repo = repo();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("src");
        std::fs::create_dir_all(dir.join("sub/deep")).unwrap();
        std::fs::write(dir.join("sub/b"), b"beta").unwrap();
        std::fs::write(dir.join("sub/deep/c"), b"gamma").unwrap();
        let first = backup_dir(&repo, &dir, None);
        // `sub` is unchanged (its memo matches) but `deep` below it
        // changes, so `sub`'s tree must be read to rebuild it: it cannot.
        std::fs::write(dir.join("sub/deep/c"), b"gamma, longer").unwrap();
        let sub = node_at(&repo, first.tree, &dir.join("sub"))
            .subtree
            .unwrap();
        let source = Unreadable(&repo, sub);
        let second = backup_trusting(&repo, &dir, first.tree, &source);
        assert_eq!(
            node_at(&repo, second.tree, &dir.join("sub/deep/c")).size,
            13
        );
        assert_eq!(node_at(&repo, second.tree, &dir.join("sub/b")).size, 4);
        // Walked again reading the trees: `sub` was read as new.
        assert_eq!(second.summary.files_new, 2, "{:?}", second.summary);
    }

    #[test]
    fn a_changed_file_is_read_again_and_only_its_directories_change() {
        let repo = repo();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("src");
        std::fs::create_dir_all(dir.join("keep")).unwrap();
        std::fs::create_dir_all(dir.join("edit")).unwrap();
        std::fs::write(dir.join("keep/k"), b"kept").unwrap();
        std::fs::write(dir.join("edit/e"), b"old").unwrap();
        let first = backup_dir(&repo, &dir, None);
        // A new size: a change whatever the timestamps' granularity.
        std::fs::write(dir.join("edit/e"), b"new and longer").unwrap();

        let second = backup_dir(&repo, &dir, Some(first.tree));
        assert_eq!(second.summary.files_changed, 1);
        assert_eq!(second.summary.files_unmodified, 1);
        assert_eq!(second.summary.bytes_read, 14);
        let e = node_at(&repo, second.tree, &dir.join("edit/e"));
        assert_eq!(e.content, vec![repo.keys().blob_id(b"new and longer")]);
        assert_eq!(e.size, 14);
        let keep = |t| node_at(&repo, t, &dir.join("keep")).subtree;
        assert_eq!(keep(second.tree), keep(first.tree));
        let edit = |t| node_at(&repo, t, &dir.join("edit")).subtree;
        assert_ne!(edit(second.tree), edit(first.tree));
    }

    /// The documented rule: size, mtime, ctime, inode and device decide.
    /// A parent whose content ids disagree with the file's bytes but whose
    /// metadata matches is trusted: the file is not opened.
    #[test]
    fn a_file_whose_metadata_matches_the_parent_is_not_read() {
        let repo = repo();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("src");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"on disk").unwrap();
        let first = backup_dir(&repo, &dir, None);
        let store = BlobStore::new(repo.clone()).unwrap();
        let other = b"what the parent says";
        let other_id = store.blob_id(other);
        store.store_blob(BlobKind::Data, other_id, other).unwrap();
        let forged = with_content(&store, &repo, first.tree, &dir.join("f"), vec![other_id]);
        store.finish().unwrap();

        let second = backup_dir(&repo, &dir, Some(forged));
        assert_eq!(second.summary.files_unmodified, 1);
        assert_eq!(second.summary.bytes_read, 0);
        let f = node_at(&repo, second.tree, &dir.join("f"));
        assert_eq!(
            f.content,
            vec![other_id],
            "the parent's ids, not the file's"
        );
        let tree_of = |root| node_at(&repo, root, &dir).subtree.unwrap();
        assert_eq!(tree_of(second.tree), tree_of(forged));
    }

    /// A parent's content id the repository lacks is not reused: the file
    /// is read again (restic#2571).
    #[test]
    fn a_parent_blob_missing_from_the_repository_makes_the_file_read() {
        let repo = repo();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("src");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"on disk").unwrap();
        let first = backup_dir(&repo, &dir, None);
        let store = BlobStore::new(repo.clone()).unwrap();
        let lost = BlobId([7; 32]);
        let forged = with_content(&store, &repo, first.tree, &dir.join("f"), vec![lost]);
        store.finish().unwrap();

        let second = backup_dir(&repo, &dir, Some(forged));
        assert_eq!(second.summary.files_changed, 1);
        assert_eq!(second.summary.bytes_read, 7);
        let f = node_at(&repo, second.tree, &dir.join("f"));
        assert_eq!(f.content, vec![repo.keys().blob_id(b"on disk")]);
        let tree_of = |root| node_at(&repo, root, &dir).subtree.unwrap();
        assert_eq!(tree_of(second.tree), tree_of(first.tree));
    }

    /// A file that fails mid-read is stored as far as it was read, flagged,
    /// and reported as a source warning; the backup itself succeeds.
    /// (`/proc/PID/mem` is a regular file whose first page cannot be read.)
    #[test]
    fn a_file_read_error_is_a_warning_not_an_error() {
        let repo = repo();
        let mem = PathBuf::from(format!("/proc/{}/mem", std::process::id()));
        let out = backup_dir(&repo, &mem, None);
        assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
        assert_eq!(out.warnings[0].path, mem);
        assert!(
            out.warnings[0].message.contains("read error after 0 bytes"),
            "{}",
            out.warnings[0].message
        );
        assert_eq!(out.summary.warnings, 1);
        let node = node_at(&repo, out.tree, &mem);
        assert_eq!(
            node.flags & crate::snapshot::tree::FLAG_INCOMPLETE,
            crate::snapshot::tree::FLAG_INCOMPLETE
        );
        assert!(node.content.is_empty());
    }

    /// A backup path that does not exist is a warning, and the others are
    /// still backed up.
    #[test]
    fn a_missing_backup_path_is_a_warning() {
        let repo = repo();
        let tmp = tempfile::tempdir().unwrap();
        let there = tmp.path().join("there");
        std::fs::write(&there, b"x").unwrap();
        let store = BlobStore::new(repo.clone()).unwrap();
        let opts = BackupOptions {
            paths: vec![tmp.path().join("gone"), there.clone()],
            force: false,
            threads: 1,
            excludes: Default::default(),
        };
        let out = backup(&store, None, &repo.chunker().unwrap(), &opts, &NoProgress).unwrap();
        store.finish().unwrap();
        assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
        assert_eq!(out.warnings[0].path, tmp.path().join("gone"));
        assert_eq!(out.summary.files_new, 1);
        assert_eq!(node_at(&repo, out.tree, &there).size, 1);
    }
}
