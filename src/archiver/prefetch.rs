//! The parallel half of the directory walk: directory listings, entry
//! metadata (lstat, extended attributes, link targets), exclusion checks and
//! the parent snapshot's tree for each directory are prepared by a small
//! pool of threads ahead of the walker, which stays one ordered, depth-first
//! pass (trees must be built in order, and order keeps output repeatable).
//!
//! Which directory to prepare next: the walker emits directories in
//! depth-first order of sorted names, which is the byte order of their paths
//! with `/` mapped to 0 (names hold neither `/` nor NUL). Queued directories
//! are kept in that order and a free worker always takes the first, i.e.
//! the one the walker will need soonest. At most `READY_MAX` prepared
//! listings wait for the walker, which bounds memory; a directory the
//! walker needs before any worker started on it is listed by the walker
//! itself, so a full window of far-ahead listings can never stall it.
//!
//! A worker queues the subdirectories of each directory it lists (with
//! their parent subtrees, from the parent tree it loaded), the same ones
//! the walker will enter. Were they queued only when the walker took the
//! listing, the walker would reach a directory's first subdirectory before
//! any worker could start on it and list it itself, all the way down: in
//! a no-change backup of a 35k-file home tree the walker spent 63% of its
//! time listing and loading parent trees. Since the walker takes
//! directories in increasing key order, whatever is queued or ready below
//! the key it last took will never be taken, and is dropped.

use super::exclude::Excludes;
use super::memo::{Memos, TreeMemo};
use super::metadata::{NameCache, kind_of, read_xattrs};
use crate::blob::BlobSource;
use crate::id::BlobId;
use crate::progress::SourceWarning;
use crate::snapshot::tree::{FLAG_INCOMPLETE, Node, NodeKind, Time, Tree};
use crate::snapshot::walk::load_tree;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Prepared listings that may wait for the walker.
const READY_MAX: usize = 32;

/// Idle workers woken for the subdirectories one listing queues: more
/// than the pool would only wake threads that find nothing.
const PREFETCH_WAKE: usize = 4;

/// One directory entry, read and checked. Its path is its directory's
/// joined with `name`, built only where it is needed: a no-change backup
/// never needs the paths of the files it passes over.
pub struct Scanned {
    pub name: Vec<u8>,
    pub md: Metadata,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A symlink's target (empty for other kinds).
    pub link_target: Vec<u8>,
    /// A directory holding a valid `CACHEDIR.TAG` under `--exclude-caches`.
    pub cache_dir: bool,
}

/// A directory's entries in name order, minus the excluded ones.
pub struct Listing {
    pub flags: u32,
    pub entries: Vec<Scanned>,
    pub warnings: Vec<SourceWarning>,
    /// The parent snapshot's tree for this directory, when it has one
    /// and it was read.
    pub parent: Option<Tree>,
    /// Instead of `parent`: its memo, which these entries match (so the
    /// tree was not read; the subdirectories' extended attributes are
    /// the memo's, as they would be the parent nodes').
    pub memo: Option<TreeMemo>,
    /// The parent subtree id this listing was made against.
    pub against: Option<BlobId>,
}

struct Job {
    path: PathBuf,
    parent_subtree: Option<BlobId>,
    /// Under `--one-file-system`, the device the walk stays on.
    dev: Option<u64>,
}

#[derive(Default)]
struct State {
    queued: BTreeMap<Vec<u8>, Job>,
    running: HashSet<Vec<u8>>,
    ready: BTreeMap<Vec<u8>, Listing>,
    /// The key the walker took last: nothing at or below it is wanted.
    taken: Option<Vec<u8>>,
    shutdown: bool,
}

impl State {
    /// Queue `job` unless it is known already or behind the walker.
    fn queue(&mut self, k: Vec<u8>, job: Job) -> bool {
        if self.shutdown
            || self.taken.as_ref().is_some_and(|t| k <= *t)
            || self.ready.contains_key(&k)
            || self.running.contains(&k)
        {
            return false;
        }
        self.queued.entry(k).or_insert(job);
        true
    }

    /// Queue each of `jobs` (see [`State::queue`]); how many went in.
    fn queue_all(&mut self, jobs: Vec<(Vec<u8>, Job)>) -> usize {
        jobs.into_iter()
            .map(|(k, job)| usize::from(self.queue(k, job)))
            .sum()
    }
}

/// What the workers and the walker share.
pub(crate) struct Prefetch<'a> {
    state: Mutex<State>,
    /// Workers wait here for work (or room).
    work: Condvar,
    /// The walker waits here for a running listing.
    done: Condvar,
    excludes: &'a Excludes,
    parent_source: Option<&'a dyn BlobSource>,
    /// Where unchanged directories are recognised by their parent tree's
    /// memo; only when the walk may reuse them as a whole.
    memos: Option<&'a Memos<'a>>,
}

thread_local! {
    /// Owner names for matching memos, one cache per listing thread.
    static NAMES: std::cell::RefCell<NameCache> = Default::default();
}

/// The queue key: depth-first order of sorted names.
fn key(path: &Path) -> Vec<u8> {
    path.as_os_str()
        .as_bytes()
        .iter()
        .map(|&b| if b == b'/' { 0 } else { b })
        .collect()
}

impl<'a> Prefetch<'a> {
    pub fn new(excludes: &'a Excludes, parent_source: Option<&'a dyn BlobSource>) -> Self {
        Prefetch {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            excludes,
            parent_source,
            memos: None,
        }
    }

    /// Recognise unchanged directories by memo (see `archiver::memo`):
    /// only when the walk passes over an unchanged directory's files as
    /// a whole, trusting the parent's content to be stored.
    pub fn with_memos(mut self, memos: &'a Memos<'a>) -> Self {
        self.memos = Some(memos);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic of a holder (every
        // update is a single insert or remove).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask for `path` to be prepared; the walker will `take` it later.
    /// `dev`: under `--one-file-system`, the device the walk stays on.
    /// The walk asks through [`Prefetch::schedule_subdirs`]; tests start
    /// workers on a directory with this.
    #[cfg(test)]
    fn schedule(&self, path: PathBuf, parent_subtree: Option<BlobId>, dev: Option<u64>) {
        let k = key(&path);
        let job = Job {
            path,
            parent_subtree,
            dev,
        };
        let queued = usize::from(self.lock().queue(k, job));
        self.wake(queued);
    }

    /// The listing of `path`: prepared by a worker, or made here.
    /// `dev`: under `--one-file-system`, the device the walk stays on.
    pub fn take(&self, path: &Path, parent_subtree: Option<BlobId>, dev: Option<u64>) -> Listing {
        let k = key(path);
        let mut st = self.lock();
        // Whatever sorts before `path` was passed by (excluded, or on
        // another file system): drop it so it holds no room.
        st.ready = st.ready.split_off(&k);
        st.queued = st.queued.split_off(&k);
        st.taken = Some(k.clone());
        loop {
            if let Some(l) = st.ready.remove(&k) {
                drop(st);
                self.work.notify_one();
                return l;
            }
            if st.running.contains(&k) {
                st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let job = st.queued.remove(&k);
            drop(st);
            let sub = job.map_or(parent_subtree, |j| j.parent_subtree);
            return self.list(path, sub, dev);
        }
    }

    /// A worker: prepare queued directories, nearest first, until shutdown.
    pub fn work(&self) {
        loop {
            let mut st = self.lock();
            let (k, job) = loop {
                if st.shutdown {
                    return;
                }
                if st.ready.len() < READY_MAX
                    && let Some((k, job)) = st.queued.pop_first()
                {
                    break (k, job);
                }
                st = self.work.wait(st).unwrap_or_else(|p| p.into_inner());
            };
            st.running.insert(k.clone());
            drop(st);
            let listing = self.list(&job.path, job.parent_subtree, job.dev);
            let subdirs = subdirs(&job.path, &listing, job.dev);
            let mut st = self.lock();
            st.running.remove(&k);
            // The key the walker took last may be this one: it is waiting
            // for it (keys below it are passed).
            let wanted = st.taken.as_ref().is_none_or(|t| k >= *t);
            let mut queued = 0;
            if !st.shutdown && wanted {
                st.ready.insert(k, listing);
                queued = st.queue_all(subdirs);
            }
            drop(st);
            self.done.notify_all();
            self.wake(queued);
        }
    }

    /// Wake idle workers for `queued` new jobs.
    fn wake(&self, queued: usize) {
        for _ in 0..queued.min(PREFETCH_WAKE) {
            self.work.notify_one();
        }
    }

    /// Ask for the subdirectories of a listing the walker made itself
    /// (see [`enters`]).
    pub(crate) fn schedule_subdirs(&self, dir: &Path, listing: &Listing, dev: Option<u64>) {
        let jobs = subdirs(dir, listing, dev);
        let queued = self.lock().queue_all(jobs);
        self.wake(queued);
    }

    /// Stop the workers (queued and ready listings are dropped).
    pub fn shutdown(&self) {
        let mut st = self.lock();
        st.shutdown = true;
        st.queued.clear();
        st.ready.clear();
        drop(st);
        self.work.notify_all();
        self.done.notify_all();
    }

    /// List one directory: names in byte order, each entry's metadata,
    /// exclusions applied; with the parent's tree, or the memo that shows
    /// the directory unchanged without it.
    fn list(&self, path: &Path, parent_subtree: Option<BlobId>, dev: Option<u64>) -> Listing {
        let mut out = Listing {
            flags: 0,
            entries: Vec::new(),
            warnings: Vec::new(),
            parent: None,
            memo: None,
            against: parent_subtree,
        };
        self.read_entries(path, &mut out);
        let memos = self.memos.filter(|_| {
            out.flags == 0
                && out.warnings.is_empty()
                && !out
                    .entries
                    .iter()
                    .any(|e| e.cache_dir || !enters_fs(e, dev))
        });
        let mut missing = None;
        if let (Some(memos), Some(id)) = (memos, parent_subtree) {
            match memos.get(&id) {
                Some(m) if NAMES.with_borrow_mut(|n| m.matches(&out.entries, n)) => {
                    // Only the subdirectories become nodes of their own;
                    // each matched its parent node's kind, change time,
                    // inode and device, so it keeps the recorded
                    // attributes, as `fill_xattrs` would.
                    for e in out.entries.iter_mut().filter(|e| e.md.is_dir()) {
                        e.xattrs = m
                            .subdir(&e.name)
                            .map(|s| s.xattrs.clone())
                            .unwrap_or_default();
                    }
                    out.memo = Some(m);
                    return out;
                }
                Some(_) => {}
                None => missing = Some((memos, id)),
            }
        }
        self.read_parent(path, &mut out, parent_subtree);
        if let (Some((memos, id)), Some(tree)) = (missing, &out.parent) {
            memos.keep(id, tree);
        }
        out
    }

    /// Give `listing` (of `path`) the parent's tree `parent_subtree` in
    /// place of any memo, and its entries their extended attributes.
    pub(crate) fn read_parent(
        &self,
        path: &Path,
        listing: &mut Listing,
        parent_subtree: Option<BlobId>,
    ) {
        // An unreadable parent only costs a re-read of what is below it;
        // it must not stop the backup.
        listing.parent = match (self.parent_source, parent_subtree) {
            (Some(src), Some(id)) => load_tree(src, &id).ok(),
            _ => None,
        };
        listing.memo = None;
        listing.against = parent_subtree;
        fill_xattrs(path, &mut listing.entries, listing.parent.as_ref());
    }

    /// The entries of `path` in name order, without their extended
    /// attributes (see [`fill_xattrs`]).
    fn read_entries(&self, path: &Path, out: &mut Listing) {
        let warn = |out: &mut Listing, path: &Path, message: String| {
            out.warnings.push(SourceWarning {
                path: path.to_path_buf(),
                message,
            });
        };
        let rd = match std::fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) => {
                warn(out, path, format!("cannot list directory: {e}"));
                out.flags |= FLAG_INCOMPLETE;
                return;
            }
        };
        // Entries are kept, not just names: `DirEntry::metadata` stats
        // relative to the open directory, so the kernel does not resolve the
        // whole path again for every file.
        let mut names: Vec<(Vec<u8>, std::fs::DirEntry)> = Vec::new();
        for e in rd {
            match e {
                Ok(e) => names.push((e.file_name().into_vec(), e)),
                Err(e) => {
                    warn(out, path, format!("error while listing directory: {e}"));
                    out.flags |= FLAG_INCOMPLETE;
                }
            }
        }
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out.entries.reserve(names.len());
        // One path, each entry's name pushed onto it and popped again.
        let mut child = path.to_path_buf();
        for (name, entry) in names {
            child.push(OsStr::from_bytes(&name));
            let md = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    warn(out, &child, "vanished before it could be read".into());
                    child.pop();
                    continue;
                }
                Err(e) => {
                    warn(out, &child, format!("cannot read metadata: {e}"));
                    child.pop();
                    continue;
                }
            };
            if self.excludes.excluded(&child, &md) {
                child.pop();
                continue;
            }
            let link_target = if md.file_type().is_symlink() {
                std::fs::read_link(&child)
                    .map(|t| t.as_os_str().as_bytes().to_vec())
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let cache_dir = md.is_dir() && self.excludes.is_cache_dir(&child);
            child.pop();
            out.entries.push(Scanned {
                xattrs: Vec::new(),
                name,
                md,
                link_target,
                cache_dir,
            });
        }
    }
}

/// Read the extended attributes of `entries` (of directory `path`).
/// Setting or removing one changes the ctime, so an inode whose ctime the
/// parent snapshot recorded still has the xattrs recorded with it: two
/// syscalls per file saved.
fn fill_xattrs(path: &Path, entries: &mut [Scanned], parent: Option<&Tree>) {
    let mut child = path.to_path_buf();
    for e in entries {
        e.xattrs = match parent.and_then(|t| t.find(&e.name)) {
            Some(p) if same_inode_state(p, &e.md) => p.xattrs.clone(),
            _ => {
                child.push(OsStr::from_bytes(&e.name));
                let x = read_xattrs(&child);
                child.pop();
                x
            }
        };
    }
}

/// Is this entry on the walk's device, when `--one-file-system` keeps the
/// walk on one (`dev`)? Only a directory on another is treated apart.
fn enters_fs(e: &Scanned, dev: Option<u64>) -> bool {
    use std::os::unix::fs::MetadataExt;
    !e.md.is_dir() || dev.is_none_or(|d| d == e.md.dev())
}

/// Does the walk enter this entry? A directory, not a cache directory left
/// out by `--exclude-caches`, and under `--one-file-system` (`dev`) on the
/// walk's device. Workers and the walker ask the same question.
fn enters(e: &Scanned, dev: Option<u64>) -> bool {
    e.md.is_dir() && !e.cache_dir && enters_fs(e, dev)
}

/// The subdirectories of a listing the walk will enter, as jobs, with
/// their parent subtrees from the listing's parent tree or memo.
fn subdirs(dir: &Path, listing: &Listing, dev: Option<u64>) -> Vec<(Vec<u8>, Job)> {
    listing
        .entries
        .iter()
        .filter(|e| enters(e, dev))
        .map(|e| {
            let path = dir.join(OsStr::from_bytes(&e.name));
            let parent_subtree = listing.parent_subtree(&e.name);
            (
                key(&path),
                Job {
                    path,
                    parent_subtree,
                    dev,
                },
            )
        })
        .collect()
}

impl Listing {
    /// The parent snapshot's subtree of subdirectory `name`.
    pub fn parent_subtree(&self, name: &[u8]) -> Option<BlobId> {
        match (&self.parent, &self.memo) {
            (Some(t), _) => t
                .find(name)
                .filter(|p| p.kind == NodeKind::Dir)
                .and_then(|p| p.subtree),
            (None, Some(m)) => m.subtree(name),
            (None, None) => None,
        }
    }
}

/// Is `md` the same inode, untouched since the parent recorded `p`?
fn same_inode_state(p: &Node, md: &Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    p.flags == 0
        && p.kind == kind_of(md)
        && p.ctime == Time::new(md.ctime(), md.ctime_nsec())
        && p.inode == md.ino()
        && p.device == md.dev()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_depth_first_name_order() {
        // In a directory `a` sorts before `a-c`, so all of `a/...` comes
        // before `a-c`, although `/` sorts after `-` as a byte.
        let mut paths = ["/x/a-c", "/x/a/b", "/x/a", "/x", "/x/a/b/c", "/x/b"];
        paths.sort_by_key(|p| key(Path::new(p)));
        assert_eq!(
            paths,
            ["/x", "/x/a", "/x/a/b", "/x/a/b/c", "/x/a-c", "/x/b"]
        );
    }

    /// Shuts the workers down when dropped, so that a failed assertion
    /// ends the test instead of leaving the scope waiting for them.
    struct Stop<'p, 'a>(&'p Prefetch<'a>);

    impl Drop for Stop<'_, '_> {
        fn drop(&mut self) {
            self.0.shutdown();
        }
    }

    /// Waits (up to ten seconds) until the workers have `path` ready.
    fn wait_ready(pf: &Prefetch, path: &Path) -> bool {
        for _ in 0..1000 {
            if pf.lock().ready.contains_key(&key(path)) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn workers_prepare_subdirectories_before_the_walker_asks() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), "x").unwrap();
        std::fs::create_dir(d.path().join("a/b/cache")).unwrap();
        std::fs::write(
            d.path().join("a/b/cache/CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )
        .unwrap();
        let mut ex = Excludes::default();
        ex.exclude_caches = true;
        let pf = Prefetch::new(&ex, None);
        std::thread::scope(|s| {
            s.spawn(|| pf.work());
            let _stop = Stop(&pf);
            // Only the top is asked for: the rest follows from listings.
            pf.schedule(d.path().to_path_buf(), None, None);
            assert!(wait_ready(&pf, &deep), "a/b/c was never prepared");
            // The walker does not enter a cache directory: nor do workers.
            let cache = key(&d.path().join("a/b/cache"));
            let st = pf.lock();
            assert!(
                !st.ready.contains_key(&cache)
                    && !st.queued.contains_key(&cache)
                    && !st.running.contains(&cache)
            );
            drop(st);
            let l = pf.take(&deep, None, None);
            assert_eq!(l.entries.len(), 1);
            // Passing a/b/c by drops what sorts before it.
            assert!(pf.lock().ready.is_empty() && pf.lock().queued.is_empty());
            // And a listing behind the walker is not queued again.
            pf.schedule(d.path().join("a"), None, None);
            assert!(pf.lock().queued.is_empty());
        });
    }

    /// A parent source whose first read waits for a signal, counting reads.
    struct SlowParent {
        go: Mutex<std::sync::mpsc::Receiver<()>>,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl BlobSource for SlowParent {
        fn read_blob(
            &self,
            _: crate::blob::BlobKind,
            id: &BlobId,
        ) -> crate::error::Result<Vec<u8>> {
            if self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                let _ = self.go.lock().unwrap().recv();
            }
            Err(crate::error::Error::BlobMissing { id: id.to_hex() })
        }
    }

    #[test]
    fn a_listing_the_walker_waits_for_is_handed_over() {
        let d = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let src = SlowParent {
            go: Mutex::new(rx),
            reads: Default::default(),
        };
        let ex = Excludes::default();
        let pf = Prefetch::new(&ex, Some(&src));
        std::thread::scope(|s| {
            s.spawn(|| pf.work());
            let _stop = Stop(&pf);
            pf.schedule(d.path().to_path_buf(), Some(BlobId([1; 32])), None);
            // The worker is now inside the listing, reading the parent tree.
            while src.reads.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let walker = s.spawn(|| pf.take(d.path(), Some(BlobId([1; 32])), None));
            // Let the walker start waiting for the running listing.
            std::thread::sleep(std::time::Duration::from_millis(100));
            tx.send(()).unwrap();
            walker.join().unwrap();
            // Listed once: the walker got the worker's listing.
            assert_eq!(src.reads.load(std::sync::atomic::Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn workers_stay_on_the_walks_file_system() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        let dev = std::fs::metadata(d.path()).unwrap().dev();
        let ex = Excludes::default();
        let pf = Prefetch::new(&ex, None);
        std::thread::scope(|s| {
            s.spawn(|| pf.work());
            let _stop = Stop(&pf);
            // A device no entry is on: nothing below the top is queued.
            pf.schedule(d.path().to_path_buf(), None, Some(dev.wrapping_add(1)));
            assert!(wait_ready(&pf, d.path()));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(pf.lock().ready.len(), 1);
            assert!(pf.lock().queued.is_empty() && pf.lock().running.is_empty());
        });
    }

    #[test]
    fn listings_come_back_in_name_order_with_metadata_and_excludes() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b", "a", "c.tmp"] {
            std::fs::write(d.path().join(n), n).unwrap();
        }
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("a", d.path().join("link")).unwrap();
        let mut ex = Excludes::default();
        ex.add("*.tmp", false).unwrap();
        let pf = Prefetch::new(&ex, None);
        std::thread::scope(|s| {
            s.spawn(|| pf.work());
            let _stop = Stop(&pf);
            pf.schedule(d.path().to_path_buf(), None, None);
            let l = pf.take(d.path(), None, None);
            let names: Vec<&[u8]> = l.entries.iter().map(|e| e.name.as_slice()).collect();
            assert_eq!(names, [&b"a"[..], b"b", b"link", b"sub"]);
            assert_eq!(l.entries[2].link_target, b"a");
            assert!(l.entries[3].md.is_dir());
            // Not scheduled: listed by the caller itself.
            let l = pf.take(&d.path().join("sub"), None, None);
            assert!(l.entries.is_empty() && l.flags == 0);
        });
    }
}
