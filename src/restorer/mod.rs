//! Restore: recreate a snapshot's trees, or selected parts, under a target.
//!
//! Plan, then execute, in bounded batches (`plan.rs` decides, `fetch.rs`
//! reads the repository, `finish.rs` completes what was written):
//! 1. Walk the snapshot's trees (iteratively) through the selection.
//!    Directories are created or checked to be real directories before
//!    their entries, so every parent of a path written here is a directory
//!    this run made or verified: nothing is written through a symlink,
//!    planted or restored (doc/reliability.md I3, I4, I6). Names were validated
//!    when each tree was decoded (no `..`, `/` or NUL).
//! 2. Files go into a batch; a file already at the target with the same
//!    content is left alone (`--overwrite if-changed`), which also makes a
//!    re-run after an interruption resume where it stopped.
//! 3. A batch is executed pack by pack: every blob the batch needs is looked
//!    up, grouped by pack, and each pack's needed byte ranges are read once
//!    (coalesced when close), in parallel across packs. Each blob is
//!    authenticated, decompressed and re-hashed before any byte of it is
//!    written; a blob used by several files is read once. Writes are
//!    positioned writes into temporary files (extended to their length at
//!    commit when they end in zeros), so all-zero chunks are simply not written and stay holes.
//! 4. A complete file gets its metadata and is renamed into place; a file
//!    with any failed blob is removed, never left with wrong bytes
//!    (doc/reliability.md F1). Hardlinks are made once their first name exists;
//!    directory metadata is applied last, deepest first.

pub mod direct;
pub mod dump;
mod fetch;
pub(crate) mod file_writer;
mod finish;
mod plan;
pub mod select;

pub(crate) use plan::data_size;

use crate::blob::PackedBlobSource;
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::progress::{Progress, SourceWarning};
use crate::snapshot::tree::Node;
use crate::snapshot::walk::Unreadable;
use rayon::prelude::*;
use select::Selection;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What to do with a file that already exists at the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Replace it unconditionally.
    Always,
    /// Keep it when size and content already match; replace it otherwise.
    #[default]
    IfChanged,
    /// Keep whatever is there.
    Never,
}

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Include patterns (path prefixes or globs); empty means everything.
    pub includes: Vec<Vec<u8>>,
    pub excludes: Vec<Vec<u8>>,
    pub overwrite: Overwrite,
    /// Re-read every restored file and check it against the snapshot.
    pub verify: bool,
    /// Plan only: report what would be written.
    pub dry_run: bool,
    /// The snapshot path of the tree being restored (`/` for the root; the
    /// PATH of `SNAPSHOT:PATH`), for matching patterns.
    pub root_path: Vec<u8>,
    /// Write even when the target seems to lack the space.
    pub skip_space_check: bool,
    /// Set (by a signal handler) to stop: the files being written are
    /// removed, the complete ones stay, and the restore returns
    /// [`Error::Interrupted`].
    pub stop: Option<&'static AtomicBool>,
}

#[derive(Debug, Default)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    pub bytes: u64,
    /// What of `bytes` is data, not holes (all-zero chunks).
    pub data_bytes: u64,
    /// Files left alone because they already matched.
    pub files_unchanged: u64,
    /// Entries left as they were because something already had their name
    /// and `--overwrite never` was given (whatever its type or content).
    pub kept: u64,
    pub files_verified: u64,
    /// Entries that could not be restored, each naming the path and why.
    pub errors: Vec<String>,
    /// Entries below a directory that could not be made (not restored,
    /// not in `errors`: the directory's line names them all).
    pub not_restored: u64,
    /// Directories whose trees could not be read, by snapshot path: they
    /// are empty at the target, everything else was restored.
    pub unreadable: Vec<Unreadable>,
    /// Damaged or missing packs met on the way, each named once (the
    /// files that needed them are in `errors` if they failed).
    pub damaged_packs: Vec<String>,
    /// Other damaged objects skipped on the way (an index segment, whose
    /// blobs were then unknown), each named once.
    pub damaged: Vec<String>,
    pub warnings: Vec<SourceWarning>,
    /// With `dry_run`: one line per entry that would be written.
    pub planned: Vec<String>,
}

/// A file of the current batch, from its planning to its commit.
struct FileTask {
    path: PathBuf,
    tmp: PathBuf,
    node: Node,
    file: Option<File>,
    /// Big files: the O_DIRECT descriptor and staged segments.
    direct: Option<direct::DirectFile>,
    /// The end of the furthest range written: when a file ends in a hole
    /// (zero chunks are not written), it is extended to its size at commit.
    written_end: std::sync::atomic::AtomicU64,
    error: Mutex<Option<String>>,
}

impl FileTask {
    fn fail(&self, msg: String) {
        let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        e.get_or_insert(msg);
    }

    /// Create the (empty) temporary file the content is written into, and
    /// its O_DIRECT writer when the file is big; a failure fails the file.
    fn create_temporary(&mut self) {
        match file_writer::create_empty(&self.tmp) {
            Ok(f) => {
                if self.node.size >= direct::MIN_FILE {
                    self.direct = direct::DirectFile::open(&self.tmp, &f, self.node.size);
                }
                self.file = Some(f);
            }
            Err(e) => self.fail(format!("{}: {e}", self.path.display())),
        }
    }
}

/// Batches executed at once, each on its own thread, while the walk plans
/// the next. A batch ends in phases (create, read, commit) whose tails
/// leave a core idle; with two in flight the other fills it. Cold restore
/// of the home tree: one at a time, after the walk, 2.30-2.34 s; one
/// beside the walk 2.19-2.31 s; two 1.99-2.05 s; three no better.
const EXECUTORS: usize = 2;

/// What a batch's execution needs, shared by the walk (main thread) and
/// the executor threads that run batches while the walk plans the next.
struct Shared<'a> {
    src: &'a dyn PackedBlobSource,
    progress: &'a dyn Progress,
    opts: &'a RestoreOptions,
    as_root: bool,
    /// Packs whose structure was already checked in this restore.
    checked_packs: Mutex<std::collections::HashSet<PackId>>,
    /// Segment buffers for files written with O_DIRECT.
    stager: direct::Stager,
}

/// A batch handed to the executor: its files and where their blobs are.
type Planned = (Vec<FileTask>, Vec<Option<plan::FilePlaces>>);
/// A batch executed: its files, how each ended, damaged packs met.
type Executed = (Vec<FileTask>, Vec<finish::FileOutcome>, Vec<String>);

/// One restore's state, shared by its steps (see the submodules).
struct Restorer<'a> {
    sh: &'a Shared<'a>,
    summary: RestoreSummary,
    batch: Vec<FileTask>,
    batch_blobs: usize,
    /// Full batches go to the executor threads. Taken (dropped) by
    /// `wait_batches`, which stops them; a batch that finds it gone, or
    /// every executor gone, runs here.
    exec: Option<crossbeam_channel::Sender<Planned>>,
    /// Executed batches, to be counted.
    executed: crossbeam_channel::Receiver<Executed>,
    /// Batches sent and not yet counted.
    in_flight: usize,
    /// (device, inode) → first restored path, for hardlinks.
    links: HashMap<(u64, u64), PathBuf>,
    pending_links: Vec<(PathBuf, PathBuf)>,
    dirs: Vec<(PathBuf, Node)>,
    /// Directories (relative to the target, `""` for the target itself)
    /// this restore created: nothing can be in them yet, so their entries
    /// need no check for an existing file.
    fresh_dirs: std::collections::HashSet<Vec<u8>>,
    /// The chunk of a run of zeros, for [`data_size`].
    zero: Option<(BlobId, u64)>,
}

impl<'a> std::ops::Deref for Restorer<'a> {
    type Target = Shared<'a>;
    fn deref(&self) -> &Shared<'a> {
        self.sh
    }
}

/// Restore the tree `root` into `target`.
pub fn restore(
    src: &dyn PackedBlobSource,
    root: &BlobId,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreSummary> {
    let sel = Selection::new(&opts.includes, &opts.excludes)?;
    let root_path = if opts.root_path.is_empty() {
        b"/".to_vec()
    } else {
        opts.root_path.clone()
    };
    plan::check_target(target)?;
    let target_fresh = !opts.dry_run && std::fs::symlink_metadata(target).is_err();
    let zero = src.zero_chunk();
    // Only an existing target can hold files the restore keeps or replaces.
    let existing = (!opts.dry_run && !target_fresh).then_some(target);
    let plan = plan::plan(src, root, existing, opts, &sel, &root_path, zero)?;
    progress.scan_total(plan.files, plan.bytes);
    plan.check_matched(opts)?;
    if !opts.dry_run {
        plan.prepare_target(target, opts)?;
    }

    let shared = Shared {
        src,
        progress,
        opts,
        // SAFETY: geteuid cannot fail.
        as_root: unsafe { libc::geteuid() } == 0,
        checked_packs: Default::default(),
        stager: Default::default(),
    };
    // Batches run on their own threads while this one walks the trees and
    // plans the next batch: done one after the other, the walk (tree
    // reads, directories, index lookups) left both cores idle for most of
    // the small files of a cold restore.
    std::thread::scope(|scope| {
        let (exec_tx, exec_rx) = crossbeam_channel::bounded::<Planned>(0);
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<Executed>();
        let sh = &shared;
        for _ in 0..EXECUTORS {
            let (exec_rx, done_tx) = (exec_rx.clone(), done_tx.clone());
            std::thread::Builder::new()
                .name("coffer-restore".into())
                .spawn_scoped(scope, move || {
                    for (tasks, places) in exec_rx {
                        if done_tx.send(sh.execute(tasks, places)).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| Error::Internal(format!("cannot start a restore thread: {e}")))?;
        }
        drop((exec_rx, done_tx));
        let mut r = Restorer::new(sh, zero, exec_tx, done_rx);
        if target_fresh {
            r.fresh_dirs.insert(Vec::new());
        }
        let walked = r.restore_entries(root, target, &sel, &root_path);
        if walked.is_ok() {
            r.run_batch();
        }
        // Every batch sent is counted (and, when interrupted, its files
        // cleaned up) before this returns, error or not.
        r.wait_batches();
        let unreadable = walked?;
        r.check_stop()?;
        r.finish_links();
        r.summary.unreadable = unreadable
            .into_iter()
            .map(|u| Unreadable {
                path: plan::join_path(&root_path, &u.path),
                error: u.error,
            })
            .collect();
        r.finish_dirs();
        r.summary.damaged = src.take_damaged();
        Ok(r.summary)
    })
}

fn check_stop(opts: &RestoreOptions) -> Result<()> {
    match opts.stop {
        Some(s) if s.load(Ordering::Relaxed) => Err(Error::Interrupted),
        _ => Ok(()),
    }
}

impl<'a> Restorer<'a> {
    fn new(
        sh: &'a Shared<'a>,
        zero: Option<(BlobId, u64)>,
        exec: crossbeam_channel::Sender<Planned>,
        executed: crossbeam_channel::Receiver<Executed>,
    ) -> Restorer<'a> {
        Restorer {
            sh,
            summary: RestoreSummary::default(),
            batch: Vec::new(),
            batch_blobs: 0,
            exec: Some(exec),
            executed,
            in_flight: 0,
            links: HashMap::new(),
            pending_links: Vec::new(),
            dirs: Vec::new(),
            fresh_dirs: Default::default(),
            zero,
        }
    }

    /// Plan the batched files and hand them to an executor (the hand-over
    /// waits until one is free), counting whatever batches finished
    /// meanwhile.
    fn run_batch(&mut self) {
        let tasks = std::mem::take(&mut self.batch);
        self.batch_blobs = 0;
        if tasks.is_empty() {
            return;
        }
        let places = self.plan_batch(&tasks);
        let planned = match &self.exec {
            Some(tx) => match tx.send((tasks, places)) {
                Ok(()) => {
                    self.in_flight += 1;
                    None
                }
                Err(e) => Some(e.into_inner()),
            },
            None => Some((tasks, places)),
        };
        if let Some((tasks, places)) = planned {
            let done = self.sh.execute(tasks, places);
            self.count(done);
        }
        while let Ok(done) = self.executed.try_recv() {
            self.in_flight -= 1;
            self.count(done);
        }
    }

    /// Stop the executors and count every batch they still have.
    fn wait_batches(&mut self) {
        drop(self.exec.take());
        while self.in_flight > 0 {
            let Ok(done) = self.executed.recv() else {
                break;
            };
            self.in_flight -= 1;
            self.count(done);
        }
    }

    fn count(&mut self, (tasks, outcomes, damaged): Executed) {
        self.summary.damaged_packs.extend(damaged);
        self.tally(&tasks, outcomes);
    }
}

impl Shared<'_> {
    fn check_stop(&self) -> Result<()> {
        check_stop(self.opts)
    }

    /// Restore a batch's files: create their temporary files, read and
    /// write their blobs pack by pack, then commit each complete file.
    fn execute(&self, mut tasks: Vec<FileTask>, places: Vec<Option<plan::FilePlaces>>) -> Executed {
        // Unwritten (zero) ranges of the temporary files stay holes. Made
        // in parallel: creating inodes is most of the cost of small files.
        tasks
            .par_iter_mut()
            .zip(places.par_iter())
            .filter(|(_, places)| places.is_some())
            .for_each(|(t, _)| t.create_temporary());
        let reads = fetch::pack_reads(&tasks, places);
        let damaged = self.check_packs(&reads);
        self.fetch(&tasks, &reads);
        let outcomes = self.finish_files(&mut tasks);
        (tasks, outcomes, damaged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Restores from an in-memory repository: trees and blobs stored
    /// through the blob store, read back through [`PackedBlobSource`].
    /// The fixture serves the tests of the other steps too.
    pub(crate) mod from_memory {
        use super::*;
        use crate::blob::{BlobKind, BlobSink};
        use crate::progress::NoProgress;
        use crate::repository::Repository;
        use crate::repository::blob_store::BlobStore;
        use crate::snapshot::tree::NodeKind;
        use crate::snapshot::tree::Tree;
        use std::os::unix::fs::MetadataExt;
        use std::sync::Arc;

        pub(crate) struct Src {
            pub(crate) repo: Arc<Repository>,
            store: Option<BlobStore>,
        }

        impl Src {
            pub(crate) fn new() -> Src {
                let repo = Arc::new(crate::repository::memory_repo().1);
                let store = Some(BlobStore::new(repo.clone()).unwrap());
                Src { repo, store }
            }
            pub(crate) fn put(&self, kind: BlobKind, data: &[u8]) -> BlobId {
                let store = self.store.as_ref().unwrap();
                let id = store.blob_id(data);
                store.store_blob(kind, id, data).unwrap();
                id
            }
            pub(crate) fn file(&self, name: &str, chunks: &[&[u8]]) -> Node {
                let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::File);
                n.mode = 0o640;
                n.content = chunks.iter().map(|c| self.put(BlobKind::Data, c)).collect();
                n.size = chunks.iter().map(|c| c.len() as u64).sum();
                n
            }
            pub(crate) fn dir(&self, name: &str, nodes: Vec<Node>) -> Node {
                let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::Dir);
                n.mode = 0o750;
                n.subtree = Some(self.tree(nodes));
                n
            }
            pub(crate) fn tree(&self, nodes: Vec<Node>) -> BlobId {
                let mut t = Tree { nodes };
                t.sort();
                self.put(BlobKind::Tree, &t.encode())
            }
            /// Make what was stored readable, then restore `root` into `target`.
            pub(crate) fn restore(&mut self, root: BlobId, target: &Path) -> RestoreSummary {
                self.store.take().unwrap().finish().unwrap();
                restore(
                    self.repo.as_ref(),
                    &root,
                    target,
                    &RestoreOptions::default(),
                    &NoProgress,
                )
                .unwrap()
            }
        }

        pub(crate) fn names(dir: &Path) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }

        #[test]
        fn nested_and_sibling_directories_are_restored_with_their_files() {
            let mut src = Src::new();
            let mut link = Node::new(b"ln".to_vec(), NodeKind::Symlink);
            link.link_target = b"a/b/c".to_vec();
            let inner = src.dir("b", vec![src.file("c", &[b"deep ", b"chunks"])]);
            let root = src.tree(vec![
                src.dir("a", vec![inner, src.file("d", &[b"sib", b"ling"])]),
                src.dir("empty", vec![]),
                src.file("top", &[b"at the top"]),
                link,
            ]);
            let tmp = tempfile::tempdir().unwrap();
            let target = tmp.path().join("out");
            let s = src.restore(root, &target);
            assert!(s.errors.is_empty(), "{:?}", s.errors);
            // a, a/b, empty: the target itself is not counted.
            assert_eq!((s.files, s.dirs, s.others), (3, 3, 1));
            assert_eq!(std::fs::read(target.join("a/b/c")).unwrap(), b"deep chunks");
            assert_eq!(std::fs::read(target.join("a/d")).unwrap(), b"sibling");
            assert_eq!(std::fs::read(target.join("top")).unwrap(), b"at the top");
            assert_eq!(
                std::fs::read_link(target.join("ln")).unwrap(),
                Path::new("a/b/c")
            );
            assert_eq!(names(&target), ["a", "empty", "ln", "top"]);
            assert_eq!(names(&target.join("a")), ["b", "d"]);
            assert!(names(&target.join("empty")).is_empty());
            let mode = |p: &str| std::fs::metadata(target.join(p)).unwrap().mode() & 0o7777;
            assert_eq!((mode("a/b"), mode("a/b/c")), (0o750, 0o640));
        }
    }
}
