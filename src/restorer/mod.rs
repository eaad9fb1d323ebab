//! Restore: recreate a snapshot's trees, or selected parts, under a target.
//!
//! Plan, then execute, in bounded batches:
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
pub mod file_writer;
pub mod select;

use crate::blob::{BlobPlace, PackedBlobSource};
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::progress::{Progress, SourceWarning};
use crate::snapshot::tree::{Node, NodeKind};
use crate::snapshot::walk::{Unreadable, Visit, walk};
use rayon::prelude::*;
use select::{Pick, Selection};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Files per batch: bounds open descriptors and planning memory.
const BATCH_FILES: usize = 512;
/// Blob references per batch (a single larger file still forms one batch).
const BATCH_BLOBS: usize = 64 * 1024;
/// Needed ranges of a pack closer than this are read as one.
const COALESCE_GAP: u64 = 1024 * 1024;
/// A pack buffer larger than this is not kept for the next pack.
const KEEP_PACK_BUF: usize = 64 * 1024 * 1024;

thread_local! {
    /// Each worker's buffer for pack ranges: reusing it spares faulting in
    /// fresh zeroed pages for every range read (about a tenth of a
    /// restore's CPU time when each read got a new allocation).
    static PACK_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

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
    pub warnings: Vec<SourceWarning>,
    /// With `dry_run`: one line per entry that would be written.
    pub planned: Vec<String>,
}

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
}

/// A blob the batch needs, and where its bytes go.
struct Need {
    id: BlobId,
    place: BlobPlace,
    targets: Vec<(usize, u64)>,
}

/// Free bytes at `path`. `COFFER_TEST_FREE_SPACE` stands in for the
/// measurement, so tests can exercise the check without a small filesystem.
fn free_space(path: &Path) -> Option<u64> {
    if let Some(v) = std::env::var_os("COFFER_TEST_FREE_SPACE") {
        return v.to_str().and_then(|v| v.parse().ok());
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `st` is a plain C struct the call fills; `c` is a valid path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// The selection verdict for the entry at `rel`, given the verdicts of its
/// ancestors on `picks` (one per depth, kept by the depth-first walk).
fn pick_at(
    picks: &mut Vec<Pick>,
    sel: &Selection,
    root_path: &[u8],
    rel: &[u8],
    is_dir: bool,
) -> Pick {
    let depth = rel.iter().filter(|&&b| b == b'/').count();
    picks.truncate(depth + 1);
    let parent = *picks.last().unwrap_or(&Pick::All);
    let pick = sel.pick(&join_path(root_path, rel), is_dir, parent);
    picks.push(pick);
    pick
}

fn join_path(root: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut p = root.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(rel);
    p
}

struct Restorer<'a> {
    src: &'a dyn PackedBlobSource,
    progress: &'a dyn Progress,
    opts: &'a RestoreOptions,
    as_root: bool,
    summary: RestoreSummary,
    batch: Vec<FileTask>,
    batch_blobs: usize,
    /// (device, inode) → first restored path, for hardlinks.
    links: HashMap<(u64, u64), PathBuf>,
    /// Packs whose structure was already checked in this restore.
    checked_packs: std::collections::HashSet<PackId>,
    pending_links: Vec<(PathBuf, PathBuf)>,
    dirs: Vec<(PathBuf, Node)>,
    /// Directories (relative to the target, `""` for the target itself)
    /// this restore created: nothing can be in them yet, so their entries
    /// need no check for an existing file.
    fresh_dirs: std::collections::HashSet<Vec<u8>>,
    /// Segment buffers for files written with O_DIRECT.
    stager: direct::Stager,
    /// The chunk of a run of zeros, for [`data_size`].
    zero: Option<(BlobId, u64)>,
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
    if std::fs::metadata(target).is_ok_and(|m| !m.is_dir()) {
        return Err(Error::Usage(format!(
            "restore target {} is not a directory: give a directory (it is created when missing)",
            target.display()
        )));
    }
    let target_fresh = !opts.dry_run && std::fs::symlink_metadata(target).is_err();
    let zero = src.zero_chunk();
    // Only an existing target can hold files the restore keeps or replaces.
    let existing = (!opts.dry_run && !target_fresh).then_some(target);
    let plan = plan(src, root, existing, opts, &sel, &root_path, zero)?;
    progress.scan_total(plan.files, plan.bytes);
    if !plan.matched && !opts.includes.is_empty() {
        let pats: Vec<String> = opts
            .includes
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        return Err(Error::Usage(format!(
            "--include {} matched nothing in the snapshot (paths are absolute, as `coffer ls` prints them)",
            pats.join(", ")
        )));
    }
    if !opts.dry_run {
        std::fs::create_dir_all(target).map_err(|e| Error::Target {
            path: target.to_path_buf(),
            source: e,
        })?;
        if !opts.skip_space_check
            && let Some(free) = free_space(target)
            && plan.needed > free
        {
            return Err(Error::NoSpace {
                path: target.to_path_buf(),
                needed: plan.needed,
                free,
            });
        }
    }

    let mut r = Restorer {
        src,
        progress,
        opts,
        // SAFETY: geteuid cannot fail.
        as_root: unsafe { libc::geteuid() } == 0,
        summary: RestoreSummary::default(),
        batch: Vec::new(),
        batch_blobs: 0,
        links: HashMap::new(),
        checked_packs: Default::default(),
        pending_links: Vec::new(),
        dirs: Vec::new(),
        fresh_dirs: Default::default(),
        stager: Default::default(),
        zero,
    };
    if target_fresh {
        r.fresh_dirs.insert(Vec::new());
    }
    // Pass 2: create directories and specials, batch files.
    let mut picks: Vec<Pick> = vec![sel.root_pick()];
    let mut failed_dirs: Vec<Vec<u8>> = Vec::new();
    // Directories only looked into (a pattern may match below them) are
    // made when something below is restored, so `--include '*.sql'` does
    // not leave every other directory behind, empty. The ancestors of the
    // entry being visited, outermost first.
    let mut pending: Vec<(Vec<u8>, PathBuf, Node)> = Vec::new();
    let unreadable = walk(
        src,
        root,
        |rel, node| {
            r.check_stop()?;
            while pending.last().is_some_and(|(d, _, _)| !is_below(rel, d)) {
                pending.pop();
            }
            let is_dir = node.kind == NodeKind::Dir;
            let pick = pick_at(&mut picks, &sel, &root_path, rel, is_dir);
            if pick == Pick::Skip || (pick == Pick::Descend && !is_dir) {
                return Ok(Visit::Skip);
            }
            if failed_dirs.iter().any(|d| is_below(rel, d)) {
                // Walked only to be counted: each entry below a directory
                // that could not be made is one not restored.
                if pick == Pick::All {
                    r.summary.not_restored += 1;
                }
                return Ok(Visit::Descend);
            }
            let path = target.join(OsStr::from_bytes(rel));
            if is_dir
                && r.opts.overwrite == Overwrite::Never
                && !r.fresh_dirs.contains(parent_of(rel))
                && std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir())
            {
                // A file, symlink or FIFO the user has where the snapshot
                // has a directory: `never` keeps it, and with it everything
                // the snapshot has below that name.
                r.summary.kept += 1;
                return Ok(Visit::Skip);
            }
            if is_dir && pick == Pick::Descend {
                pending.push((rel.to_vec(), path, node.clone()));
                return Ok(Visit::Descend);
            }
            for (d, p, n) in std::mem::take(&mut pending) {
                if !r.make_dir(&d, p, &n) {
                    failed_dirs.push(d);
                    r.summary.not_restored += 1;
                    return Ok(Visit::Descend);
                }
            }
            if is_dir {
                if !r.make_dir(rel, path, node) {
                    failed_dirs.push(rel.to_vec());
                }
                return Ok(Visit::Descend);
            }
            let fresh = r.fresh_dirs.contains(parent_of(rel));
            r.entry(path, node, fresh)?;
            Ok(Visit::Descend)
        },
        |_, _| Ok(()),
    )?;
    r.run_batch();
    r.check_stop()?;
    r.finish_links();
    r.summary.unreadable = unreadable
        .into_iter()
        .map(|u| Unreadable {
            path: join_path(&root_path, &u.path),
            error: u.error,
        })
        .collect();

    if !opts.dry_run {
        for (path, node) in r.dirs.iter().rev() {
            if let Err(e) = file_writer::apply_metadata(node, path, r.as_root) {
                r.summary
                    .errors
                    .push(format!("{}: cannot set metadata: {e}", path.display()));
            }
        }
    }
    Ok(r.summary)
}

/// What pass 1 found: whether the selection matched, and what the restore
/// will write.
struct Plan {
    matched: bool,
    files: u64,
    /// The files' sizes, holes included: what the progress counts.
    bytes: u64,
    /// Bytes the target must have free: data only (holes cost nothing),
    /// less what the files being replaced already occupy.
    needed: u64,
}

/// Pass 1: walk the selection to count the files and the space they need
/// (less what `existing`, the target if it was there, holds already), to
/// refuse early on a full disk.
fn plan(
    src: &dyn PackedBlobSource,
    root: &BlobId,
    existing: Option<&Path>,
    opts: &RestoreOptions,
    sel: &Selection,
    root_path: &[u8],
    zero: Option<(BlobId, u64)>,
) -> Result<Plan> {
    let mut picks: Vec<Pick> = vec![sel.root_pick()];
    let mut plan = Plan {
        matched: false,
        files: 0,
        bytes: 0,
        needed: 0,
    };
    let mut linked: std::collections::HashSet<(u64, u64)> = Default::default();
    walk(
        src,
        root,
        |rel, node| {
            check_stop(opts)?;
            let pick = pick_at(&mut picks, sel, root_path, rel, node.kind == NodeKind::Dir);
            if pick == Pick::Skip {
                return Ok(Visit::Skip);
            }
            if pick == Pick::All {
                plan.matched = true;
                // A file's other names are hard links: no space of their own.
                if node.kind == NodeKind::File
                    && (node.links <= 1 || linked.insert((node.device, node.inode)))
                {
                    let mut need = data_size(node, zero);
                    if let Some(t) = existing {
                        let there =
                            kept_bytes(&t.join(OsStr::from_bytes(rel)), node, opts.overwrite);
                        need = need.saturating_sub(there);
                    }
                    plan.needed = plan.needed.saturating_add(need);
                    plan.bytes = plan.bytes.saturating_add(node.size.min(most_bytes(node)));
                    plan.files += 1;
                }
            }
            Ok(Visit::Descend)
        },
        |_, _| Ok(()),
    )?;
    Ok(plan)
}

/// Bytes a file's content occupies once restored: its size less the
/// all-zero chunks, which are left as holes. A file holds at most its
/// blobs' bytes, so a hostile declared size (2^63) cannot inflate, or
/// overflow, the sum; such a file fails on its own when restored.
pub fn data_size(node: &Node, zero: Option<(BlobId, u64)>) -> u64 {
    let size = node.size.min(most_bytes(node));
    let Some((id, len)) = zero else { return size };
    let holes = node.content.iter().filter(|c| **c == id).count() as u64;
    size.saturating_sub(holes.saturating_mul(len))
}

/// The most a file's blobs can hold.
fn most_bytes(node: &Node) -> u64 {
    node.content.len() as u64 * crate::pack::MAX_BLOB_RAW as u64
}

/// Space already held at `path` that restoring `node` over it will not
/// need again. All of it for a name `--overwrite never` keeps, and for a
/// file a restore already wrote (its size and mtime, which a restore sets
/// last): `if-changed` keeps it when it is equal, which is what makes an
/// interrupted restore resumable into a disk sized for the whole. Else
/// what the regular file there occupies, freed when its new version is
/// renamed over it.
fn kept_bytes(path: &Path, node: &Node, overwrite: Overwrite) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let written = m.is_file()
        && m.len() == node.size
        && m.mtime() == node.mtime.sec
        && m.mtime_nsec() == i64::from(node.mtime.nsec);
    match overwrite {
        Overwrite::Never => u64::MAX,
        Overwrite::IfChanged if written => u64::MAX,
        _ if m.is_file() => m.blocks() * 512,
        _ => 0,
    }
}

fn check_stop(opts: &RestoreOptions) -> Result<()> {
    match opts.stop {
        Some(s) if s.load(Ordering::Relaxed) => Err(Error::Interrupted),
        _ => Ok(()),
    }
}

impl Restorer<'_> {
    fn check_stop(&self) -> Result<()> {
        check_stop(self.opts)
    }

    /// Create (or keep) the directory at `rel`, its metadata set at the
    /// end; false, with the error recorded, when it cannot be made.
    fn make_dir(&mut self, rel: &[u8], path: PathBuf, node: &Node) -> bool {
        if self.opts.dry_run {
            self.summary
                .planned
                .push(format!("dir  {}", path.display()));
        } else {
            match file_writer::ensure_dir(&path) {
                Ok(true) => {
                    self.fresh_dirs.insert(rel.to_vec());
                }
                Ok(false) => {}
                Err(e) => {
                    self.summary.errors.push(e.to_string());
                    return false;
                }
            }
        }
        self.summary.dirs += 1;
        self.dirs.push((path, node.clone()));
        true
    }

    /// Restore or batch one non-directory entry; `fresh` when its directory
    /// was created by this restore.
    fn entry(&mut self, path: PathBuf, node: &Node, fresh: bool) -> Result<()> {
        if self.opts.overwrite == Overwrite::Never
            && !fresh
            && std::fs::symlink_metadata(&path).is_ok()
        {
            self.summary.kept += 1;
            if node.kind == NodeKind::File {
                self.progress.file_done(&path, node.size, 0);
            }
            return Ok(());
        }
        if node.kind != NodeKind::File {
            if self.opts.dry_run {
                self.summary
                    .planned
                    .push(format!("{:<4} {}", node.kind.as_str(), path.display()));
                self.summary.others += 1;
                return Ok(());
            }
            match file_writer::restore_special(node, &path, self.as_root) {
                Ok(None) => self.summary.others += 1,
                Ok(Some(w)) => {
                    let w = SourceWarning { path, message: w };
                    self.progress.warning(&w);
                    self.summary.warnings.push(w);
                }
                Err(e) => self.summary.errors.push(e.to_string()),
            }
            return Ok(());
        }
        if node.links > 1 {
            let key = (node.device, node.inode);
            if let Some(first) = self.links.get(&key) {
                self.pending_links.push((first.clone(), path));
                return Ok(());
            }
            self.links.insert(key, path.clone());
        }
        // `never` kept every existing name above; `matches` is false for a
        // name that is free or not a regular file.
        if !fresh
            && self.opts.overwrite == Overwrite::IfChanged
            && let Some(f) = self.open_matching(node, &path)
        {
            // Same bytes, but mode, owner, xattrs or times may differ: a
            // file "up to date" has the snapshot's metadata too.
            if !self.opts.dry_run
                && let Err(e) = file_writer::remove_extra_user_xattrs(node, &f)
                    .and_then(|()| file_writer::apply_metadata_fd(node, &f, self.as_root))
            {
                self.summary
                    .errors
                    .push(format!("{}: cannot set metadata: {e}", path.display()));
            }
            self.summary.files_unchanged += 1;
            self.progress.file_done(&path, node.size, 0);
            return Ok(());
        }
        if self.opts.dry_run {
            self.summary
                .planned
                .push(format!("file {} ({} bytes)", path.display(), node.size));
            self.summary.files += 1;
            self.summary.bytes += node.size;
            return Ok(());
        }
        self.batch_blobs += node.content.len();
        self.batch.push(FileTask {
            tmp: file_writer::stable_temp_path(&path),
            path,
            node: node.clone(),
            file: None,
            direct: None,
            written_end: Default::default(),
            error: Mutex::new(None),
        });
        if self.batch.len() >= BATCH_FILES || self.batch_blobs >= BATCH_BLOBS {
            self.run_batch();
        }
        Ok(())
    }

    /// Does the regular file at `path` hold exactly the node's content?
    fn matches(&self, node: &Node, path: &Path) -> bool {
        self.open_matching(node, path).is_some()
    }

    /// The regular file at `path`, open, when it holds exactly the node's
    /// content.
    fn open_matching(&self, node: &Node, path: &Path) -> Option<File> {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO would wait for a writer: only a regular file is
        // opened, with O_NOFOLLOW for a symlink swapped in since.
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_file() && m.len() == node.size => {}
            _ => return None,
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .ok()?;
        match f.metadata() {
            Ok(m) if m.is_file() && m.len() == node.size => {}
            _ => return None,
        }
        let mut off = 0u64;
        for id in &node.content {
            let Ok(Some(place)) = self.src.locate(id) else {
                return None;
            };
            if place.raw_length > crate::pack::MAX_BLOB_RAW {
                return None;
            }
            let mut buf = vec![0u8; place.raw_length as usize];
            if f.read_exact_at(&mut buf, off).is_err() || self.src.data_id(&buf) != *id {
                return None;
            }
            off += buf.len() as u64;
        }
        (off == node.size).then_some(f)
    }

    fn run_batch(&mut self) {
        let mut tasks = std::mem::take(&mut self.batch);
        self.batch_blobs = 0;
        if tasks.is_empty() {
            return;
        }
        // Plan each file before anything is created: every content blob
        // located, a data blob, and their lengths adding up to the declared
        // size. A file that fails here gets no temporary file at all, so a
        // hostile size (2^62) is never preallocated (doc/reliability.md I8).
        let mut needs: HashMap<BlobId, Need> = HashMap::new();
        // Every location the batch needs, in one query round.
        let mut ids: Vec<BlobId> = tasks
            .iter()
            .flat_map(|t| t.node.content.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let located: HashMap<BlobId, std::result::Result<Option<BlobPlace>, String>> =
            match self.src.locate_many(&ids) {
                Ok(places) => ids.into_iter().zip(places.into_iter().map(Ok)).collect(),
                Err(e) => ids.into_iter().map(|id| (id, Err(e.to_string()))).collect(),
            };
        let mut planned_places: Vec<Option<Vec<(BlobId, BlobPlace, u64)>>> =
            vec![None; tasks.len()];
        for (i, t) in tasks.iter_mut().enumerate() {
            let mut places: Vec<(BlobId, BlobPlace, u64)> =
                Vec::with_capacity(t.node.content.len());
            let mut off = 0u64;
            let mut planned = true;
            for id in &t.node.content {
                let place = match located.get(id) {
                    Some(Ok(p)) => *p,
                    Some(Err(e)) => {
                        t.fail(format!("{}: {e}", t.path.display()));
                        planned = false;
                        break;
                    }
                    None => None,
                };
                let Some(place) = place else {
                    t.fail(format!("{}: blob {id} is not in the repository index (data lost: run `coffer check`)", t.path.display()));
                    planned = false;
                    break;
                };
                if place.kind != crate::blob::BlobKind::Data {
                    t.fail(format!(
                        "{}: blob {id} is a tree, not file content (the snapshot is corrupt)",
                        t.path.display()
                    ));
                    planned = false;
                    break;
                }
                places.push((*id, place, off));
                off += place.raw_length as u64;
            }
            if !planned {
                continue;
            }
            if off != t.node.size {
                t.fail(format!(
                    "{}: content adds up to {off} bytes, the snapshot says {} (the snapshot is corrupt)",
                    t.path.display(),
                    t.node.size
                ));
                continue;
            }
            planned_places[i] = Some(places);
        }
        // The temporary files; unwritten (zero) ranges stay holes. Made in
        // parallel: creating inodes is most of the cost of small files.
        tasks
            .par_iter_mut()
            .zip(planned_places.par_iter())
            .for_each(|(t, places)| {
                if places.is_some() {
                    match file_writer::create_empty(&t.tmp) {
                        Ok(f) => {
                            if t.node.size >= direct::MIN_FILE {
                                t.direct = direct::DirectFile::open(&t.tmp, &f, t.node.size);
                            }
                            t.file = Some(f);
                        }
                        Err(e) => t.fail(format!("{}: {e}", t.path.display())),
                    }
                }
            });
        for (i, places) in planned_places.into_iter().enumerate() {
            let Some(places) = places else { continue };
            if tasks[i].file.is_none() {
                continue;
            }
            for (id, place, off) in places {
                needs
                    .entry(id)
                    .or_insert_with(|| Need {
                        id,
                        place,
                        targets: Vec::new(),
                    })
                    .targets
                    .push((i, off));
            }
        }
        let mut by_pack: HashMap<PackId, Vec<Need>> = HashMap::new();
        for n in needs.into_values() {
            by_pack.entry(n.place.pack).or_default().push(n);
        }
        let mut packs: Vec<(PackId, Vec<Need>)> = by_pack.into_iter().collect();
        // In the order of the first file position each pack serves (about
        // the order the backup wrote them), not by pack id: rayon splits
        // the list into contiguous runs, so the threads then write
        // different files. In id order both wrote the same big file at once
        // and spun on its inode lock (8% of a restore's CPU in
        // rwsem_spin_on_owner).
        packs.sort_by_cached_key(|(p, needs)| {
            let first = needs
                .iter()
                .flat_map(|n| n.targets.iter().copied())
                .min()
                .unwrap_or((usize::MAX, u64::MAX));
            (first, *p)
        });
        // Each pack's structure (size, trailer) is checked once per restore.
        // Damage there is reported naming the pack; its blobs are still
        // used, since each is authenticated and re-hashed on its own.
        let unchecked: Vec<PackId> = packs
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !self.checked_packs.contains(p))
            .collect();
        let damaged: Vec<String> = unchecked
            .par_iter()
            .filter_map(|p| self.src.check_pack(p).err().map(|e| e.to_string()))
            .collect();
        self.checked_packs.extend(unchecked);
        self.summary.damaged_packs.extend(damaged);
        std::thread::scope(|scope| {
            // Complete segments of big files go to one writer thread, so
            // the workers decode on while a direct write waits on the disk.
            let (tx, rx) = crossbeam_channel::bounded::<(usize, direct::Ready)>(direct::QUEUE);
            let (stager, tasks) = (&self.stager, &tasks);
            scope.spawn(move || write_segments(stager, tasks, rx));
            packs.par_iter_mut().for_each(|(pack, blobs)| {
                PACK_BUF.with_borrow_mut(|buf| {
                    self.restore_pack(tasks, pack, blobs, &tx, buf);
                    // Keep the buffer for the next pack, but not an outsized one.
                    if buf.capacity() > KEEP_PACK_BUF {
                        *buf = Vec::new();
                    }
                })
            });
            drop(tx);
        });
        // Finish each file, in parallel: metadata, then the rename that
        // makes it visible (and, with --verify, a re-read).
        let results: Vec<std::result::Result<bool, String>> = tasks
            .par_iter_mut()
            .map(|t| {
                if let Some(df) = t.direct.take()
                    && !df.finish(&self.stager)
                {
                    t.fail(format!(
                        "{}: restore incomplete: some content never arrived",
                        t.path.display()
                    ));
                }
                let file = t.file.take();
                let err = t.error.lock().map(|e| e.clone()).unwrap_or(None);
                let file = match (file, err) {
                    (Some(f), None) => f,
                    (f, e) => {
                        drop(f);
                        let _ = std::fs::remove_file(&t.tmp);
                        return Err(e.unwrap_or_else(|| format!("{}: not created", t.path.display())));
                    }
                };
                // Short when the file ends in a hole; long when its last
                // direct write was padded to the block size.
                let end = t.written_end.load(Ordering::Relaxed);
                if end != t.node.size
                    && let Err(e) = file.set_len(t.node.size)
                {
                    drop(file);
                    let _ = std::fs::remove_file(&t.tmp);
                    return Err(format!("{}: {e}", t.path.display()));
                }
                match file_writer::commit(&t.node, file, &t.tmp, &t.path, self.as_root) {
                    Ok(()) => {
                        self.progress.file_done(&t.path, t.node.size, t.node.size);
                        if self.opts.verify && !self.matches(&t.node, &t.path) {
                            return Err(format!(
                                "{}: verification failed: the restored file does not match the snapshot",
                                t.path.display()
                            ));
                        }
                        Ok(self.opts.verify)
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&t.tmp);
                        Err(e.to_string())
                    }
                }
            })
            .collect();
        for (t, r) in tasks.iter().zip(results) {
            match r {
                Ok(verified) => {
                    self.summary.files += 1;
                    self.summary.bytes += t.node.size;
                    self.summary.data_bytes += data_size(&t.node, self.zero);
                    self.summary.files_verified += u64::from(verified);
                }
                Err(e) => self.summary.errors.push(e),
            }
        }
    }

    /// Read the ranges of `pack` that the batch needs (close ones as one
    /// read), authenticate and decode each blob, and write it to every
    /// place it serves.
    fn restore_pack(
        &self,
        tasks: &[FileTask],
        pack: &PackId,
        blobs: &mut [Need],
        tx: &crossbeam_channel::Sender<(usize, direct::Ready)>,
        buf: &mut Vec<u8>,
    ) {
        blobs.sort_by_key(|n| n.place.offset);
        let mut i = 0;
        while i < blobs.len() {
            if self.check_stop().is_err() {
                // Each file left short is removed with its temporary name.
                for n in &blobs[i..] {
                    for &(ti, _) in &n.targets {
                        let t = &tasks[ti];
                        t.fail(format!("{}: interrupted", t.path.display()));
                    }
                }
                return;
            }
            // Extend the range while the next blob is close.
            let start = blobs[i].place.offset as u64;
            let mut end = start + blobs[i].place.length as u64;
            let mut j = i + 1;
            while j < blobs.len() && (blobs[j].place.offset as u64) <= end + COALESCE_GAP {
                end = end.max(blobs[j].place.offset as u64 + blobs[j].place.length as u64);
                j += 1;
            }
            let range = self
                .src
                .read_pack_range_into(pack, start, (end - start) as usize, buf);
            for n in &blobs[i..j] {
                let data = range.as_ref().map_err(|e| e.to_string()).and_then(|()| {
                    let o = (n.place.offset as u64 - start) as usize;
                    self.src
                        .open_sealed(&n.id, &n.place, &buf[o..o + n.place.length as usize])
                        .map_err(|e| e.to_string())
                });
                match data {
                    Ok(data) => {
                        let zero = data.iter().all(|&b| b == 0);
                        for &(ti, off) in &n.targets {
                            self.put(&tasks[ti], &data, off, zero, tx, ti);
                        }
                        self.progress
                            .bytes_done(data.len() as u64 * n.targets.len() as u64);
                    }
                    Err(e) => {
                        for &(ti, _) in &n.targets {
                            let t = &tasks[ti];
                            t.fail(format!("{}: {e}", t.path.display()));
                        }
                    }
                }
            }
            i = j;
        }
    }

    /// Write one decoded blob at `off` of file `ti`: through its staged
    /// segments when it is written with O_DIRECT, else straight into the
    /// page cache. Zeros are not written (holes).
    fn put(
        &self,
        t: &FileTask,
        data: &[u8],
        off: u64,
        zero: bool,
        tx: &crossbeam_channel::Sender<(usize, direct::Ready)>,
        ti: usize,
    ) {
        let Some(f) = &t.file else { return };
        let cached = |piece: &[u8], at: u64| match f.write_all_at(piece, at) {
            Ok(()) => {
                t.written_end
                    .fetch_max(at + piece.len() as u64, Ordering::Relaxed);
            }
            Err(e) => t.fail(format!("{}: {e}", t.path.display())),
        };
        let Some(df) = &t.direct else {
            if !zero {
                cached(data, off);
            }
            return;
        };
        for (at, start, n) in direct::pieces(off, data.len()) {
            let piece = &data[start..start + n];
            let zero = zero || piece.iter().all(|&b| b == 0);
            match df.place(&self.stager, at, piece, zero) {
                direct::Placed::Staged => {}
                direct::Placed::Complete(ready) => {
                    if let Err(e) = tx.send((ti, ready)) {
                        self.stager.give(e.into_inner().1.buf);
                        t.fail(format!("{}: the writer thread stopped", t.path.display()));
                    }
                }
                direct::Placed::Cached if !zero => cached(piece, at),
                direct::Placed::Cached => {}
            }
        }
    }

    fn finish_links(&mut self) {
        for (first, path) in std::mem::take(&mut self.pending_links) {
            if self.opts.dry_run {
                self.summary.planned.push(format!(
                    "link {} => {}",
                    path.display(),
                    first.display()
                ));
                continue;
            }
            // The name was free when its entry was walked; if something
            // took it since (the user, while this ran), `never` keeps it.
            if self.opts.overwrite == Overwrite::Never && std::fs::symlink_metadata(&path).is_ok() {
                self.summary.kept += 1;
                continue;
            }
            let r = file_writer::clear_non_dir(&path).and_then(|_| {
                std::fs::hard_link(&first, &path).map_err(|e| Error::Target {
                    path: path.clone(),
                    source: e,
                })
            });
            match r {
                Ok(()) => self.summary.files += 1,
                Err(e) => self.summary.errors.push(e.to_string()),
            }
        }
    }
}

/// Is `rel` inside the directory `dir` (both snapshot-relative)?
fn is_below(rel: &[u8], dir: &[u8]) -> bool {
    rel.starts_with(dir) && rel.get(dir.len()) == Some(&b'/')
}

/// The directory part of a snapshot-relative path (empty at the top).
fn parent_of(rel: &[u8]) -> &[u8] {
    rel.iter()
        .rposition(|&b| b == b'/')
        .map_or(&rel[..0], |i| &rel[..i])
}

/// The writer thread: each complete segment written with O_DIRECT into
/// its file; a failure fails that file.
fn write_segments(
    stager: &direct::Stager,
    tasks: &[FileTask],
    rx: crossbeam_channel::Receiver<(usize, direct::Ready)>,
) {
    for (ti, ready) in rx {
        let t = &tasks[ti];
        let (Some(df), Some(f)) = (&t.direct, &t.file) else {
            stager.give(ready.buf);
            continue;
        };
        match df.write(stager, f, ready) {
            Ok(end) => {
                t.written_end.fetch_max(end, Ordering::Relaxed);
            }
            Err(e) => t.fail(format!("{}: {e}", t.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join() {
        assert_eq!(join_path(b"/", b"a/b"), b"/a/b");
        assert_eq!(join_path(b"/x", b"a"), b"/x/a");
    }

    /// Restores from an in-memory repository: trees and blobs stored
    /// through the blob store, read back through [`PackedBlobSource`].
    mod from_memory {
        use super::*;
        use crate::blob::{BlobKind, BlobSink};
        use crate::progress::NoProgress;
        use crate::repository::Repository;
        use crate::repository::blob_store::BlobStore;
        use crate::snapshot::tree::Tree;
        use std::os::unix::fs::MetadataExt;
        use std::sync::Arc;

        struct Src {
            repo: Arc<Repository>,
            store: Option<BlobStore>,
        }

        impl Src {
            fn new() -> Src {
                let repo = Arc::new(crate::repository::memory_repo().1);
                let store = Some(BlobStore::new(repo.clone()).unwrap());
                Src { repo, store }
            }
            fn put(&self, kind: BlobKind, data: &[u8]) -> BlobId {
                let store = self.store.as_ref().unwrap();
                let id = store.blob_id(data);
                store.store_blob(kind, id, data).unwrap();
                id
            }
            fn file(&self, name: &str, chunks: &[&[u8]]) -> Node {
                let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::File);
                n.mode = 0o640;
                n.content = chunks.iter().map(|c| self.put(BlobKind::Data, c)).collect();
                n.size = chunks.iter().map(|c| c.len() as u64).sum();
                n
            }
            fn dir(&self, name: &str, nodes: Vec<Node>) -> Node {
                let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::Dir);
                n.mode = 0o750;
                n.subtree = Some(self.tree(nodes));
                n
            }
            fn tree(&self, nodes: Vec<Node>) -> BlobId {
                let mut t = Tree { nodes };
                t.sort();
                self.put(BlobKind::Tree, &t.encode())
            }
            /// Make what was stored readable, then restore `root` into `target`.
            fn restore(&mut self, root: BlobId, target: &Path) -> RestoreSummary {
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

        fn names(dir: &Path) -> Vec<String> {
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

        #[test]
        fn a_second_restore_leaves_equal_files_alone() {
            let mut src = Src::new();
            let root = src.tree(vec![src.dir("d", vec![src.file("f", &[b"same"])])]);
            let tmp = tempfile::tempdir().unwrap();
            src.restore(root, tmp.path());
            let s = restore(
                src.repo.as_ref(),
                &root,
                tmp.path(),
                &RestoreOptions::default(),
                &NoProgress,
            )
            .unwrap();
            assert_eq!((s.files, s.files_unchanged), (0, 1));
            assert_eq!(std::fs::read(tmp.path().join("d/f")).unwrap(), b"same");
        }

        #[test]
        fn hardlinked_names_share_one_inode() {
            let mut src = Src::new();
            let linked = |name: &str, src: &Src| {
                let mut n = src.file(name, &[b"shared bytes"]);
                (n.links, n.device, n.inode) = (3, 5, 77);
                n
            };
            let root = src.tree(vec![
                linked("one", &src),
                src.dir("sub", vec![linked("two", &src)]),
                linked("zzz", &src),
                src.file("solo", &[b"shared bytes"]),
            ]);
            let tmp = tempfile::tempdir().unwrap();
            let s = src.restore(root, tmp.path());
            assert!(s.errors.is_empty(), "{:?}", s.errors);
            assert_eq!(s.files, 4);
            let ino = |p: &str| std::fs::metadata(tmp.path().join(p)).unwrap().ino();
            assert_eq!(ino("one"), ino("sub/two"));
            assert_eq!(ino("one"), ino("zzz"));
            assert_ne!(ino("one"), ino("solo"), "equal content is not a link");
            assert_eq!(
                std::fs::metadata(tmp.path().join("one")).unwrap().nlink(),
                3
            );
            assert_eq!(
                std::fs::read(tmp.path().join("sub/two")).unwrap(),
                b"shared bytes"
            );
        }

        /// A size that disagrees with the content (either way, or absurdly
        /// large) fails that file alone, before any temporary file exists;
        /// the plan's space estimate is bounded by the blobs, so a huge
        /// declared size is no `NoSpace` refusal.
        #[test]
        fn a_file_whose_size_disagrees_with_its_content_fails_alone() {
            let mut src = Src::new();
            let sized = |name: &str, size: u64, src: &Src| {
                let mut n = src.file(name, &[b"12345"]);
                n.size = size;
                n
            };
            let mut empty_huge = Node::new(b"nothing".to_vec(), NodeKind::File);
            empty_huge.size = 1 << 62;
            let root = src.tree(vec![
                sized("short", 4, &src),
                sized("long", 6, &src),
                sized("huge", 1 << 62, &src),
                sized("max", u64::MAX, &src),
                empty_huge,
                src.file("good", &[b"fine"]),
            ]);
            let tmp = tempfile::tempdir().unwrap();
            let s = src.restore(root, tmp.path());
            assert_eq!(s.files, 1);
            assert_eq!(names(tmp.path()), ["good"], "no file, no temporary left");
            let mut errors = s.errors.clone();
            errors.sort();
            assert_eq!(errors.len(), 5, "{errors:?}");
            for (e, (name, size, adds)) in errors.iter().zip([
                ("huge", 1u64 << 62, 5),
                ("long", 6, 5),
                ("max", u64::MAX, 5),
                ("nothing", 1 << 62, 0),
                ("short", 4, 5),
            ]) {
                assert_eq!(
                    *e,
                    format!(
                        "{}: content adds up to {adds} bytes, the snapshot says {size} (the snapshot is corrupt)",
                        tmp.path().join(name).display()
                    )
                );
            }
        }

        /// A content id naming a tree blob is refused, not written as data.
        #[test]
        fn a_file_whose_content_is_a_tree_blob_fails() {
            let mut src = Src::new();
            let sub = src.tree(vec![src.file("x", &[b"x"])]);
            let mut bad = Node::new(b"bad".to_vec(), NodeKind::File);
            bad.content = vec![sub];
            bad.size = 10;
            let root = src.tree(vec![bad]);
            let tmp = tempfile::tempdir().unwrap();
            let s = src.restore(root, tmp.path());
            assert_eq!(s.errors.len(), 1);
            assert!(
                s.errors[0].contains("is a tree, not file content"),
                "{}",
                s.errors[0]
            );
            assert!(names(tmp.path()).is_empty());
        }

        /// A symlink planted where the snapshot has a directory is
        /// replaced, never followed: nothing lands outside the target.
        #[test]
        fn a_symlink_planted_for_a_parent_directory_is_not_followed() {
            let mut src = Src::new();
            let root = src.tree(vec![src.dir("a", vec![src.file("f", &[b"mine"])])]);
            let tmp = tempfile::tempdir().unwrap();
            let (target, outside) = (tmp.path().join("t"), tmp.path().join("outside"));
            std::fs::create_dir_all(&target).unwrap();
            std::fs::create_dir_all(&outside).unwrap();
            std::os::unix::fs::symlink(&outside, target.join("a")).unwrap();
            let s = src.restore(root, &target);
            assert!(s.errors.is_empty(), "{:?}", s.errors);
            assert!(names(&outside).is_empty(), "wrote through the symlink");
            let a = std::fs::symlink_metadata(target.join("a")).unwrap();
            assert!(a.is_dir());
            assert_eq!(std::fs::read(target.join("a/f")).unwrap(), b"mine");
        }

        /// When the first name of a hardlinked file cannot be restored,
        /// its other names fail too (each reported), and nothing is left.
        #[test]
        fn other_names_of_a_file_that_failed_are_reported_not_linked() {
            let mut src = Src::new();
            let linked = |name: &str, size: u64, src: &Src| {
                let mut n = src.file(name, &[b"bytes"]);
                (n.links, n.device, n.inode, n.size) = (2, 5, 78, size);
                n
            };
            let root = src.tree(vec![linked("a", 99, &src), linked("b", 99, &src)]);
            let tmp = tempfile::tempdir().unwrap();
            let s = src.restore(root, tmp.path());
            assert_eq!(s.files, 0);
            assert_eq!(s.errors.len(), 2, "{:?}", s.errors);
            assert!(
                s.errors[0].contains("content adds up to 5 bytes"),
                "{}",
                s.errors[0]
            );
            assert!(
                s.errors[1].contains(&tmp.path().join("b").display().to_string()),
                "{}",
                s.errors[1]
            );
            assert!(names(tmp.path()).is_empty());
        }
    }
}
