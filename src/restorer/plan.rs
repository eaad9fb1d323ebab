//! Deciding what a restore writes: the counting pass and its space check,
//! the walk that makes directories and specials and batches files
//! (through the selection), what is already up to date at the target, and
//! where each batched file's blobs are.

use super::select::{Pick, Selection};
use super::{FileTask, Overwrite, RestoreOptions, Restorer, Shared, check_stop, file_writer};
use crate::blob::{BlobPlace, PackedBlobSource};
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::progress::SourceWarning;
use crate::snapshot::tree::{Node, NodeKind};
use crate::snapshot::walk::{Unreadable, Visit, walk};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Files per batch: bounds open descriptors and planning memory.
const BATCH_FILES: usize = 512;
/// Blob references per batch (a single larger file still forms one batch).
const BATCH_BLOBS: usize = 64 * 1024;

/// A planned file's content: each blob, where it is, and its offset in
/// the file.
pub(super) type FilePlaces = Vec<(BlobId, BlobPlace, u64)>;

/// Every location a batch needs, or why it could not be looked up.
type Located = HashMap<BlobId, std::result::Result<Option<BlobPlace>, String>>;

/// What pass 1 found: whether the selection matched, and what the restore
/// will write.
pub(super) struct Plan {
    matched: bool,
    pub(super) files: u64,
    /// The files' sizes, holes included: what the progress counts.
    pub(super) bytes: u64,
    /// Bytes the target must have free: data only (holes cost nothing),
    /// less what the files being replaced already occupy.
    needed: u64,
}

/// Refuse a target that exists and is not a directory.
pub(super) fn check_target(target: &Path) -> Result<()> {
    if std::fs::metadata(target).is_ok_and(|m| !m.is_dir()) {
        return Err(Error::Usage(format!(
            "restore target {} is not a directory: give a directory (it is created when missing)",
            target.display()
        )));
    }
    Ok(())
}

/// Pass 1: walk the selection to count the files and the space they need
/// (less what `existing`, the target if it was there, holds already), to
/// refuse early on a full disk.
pub(super) fn plan(
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

impl Plan {
    /// Refuse includes that matched nothing: a typo would otherwise
    /// restore nothing and succeed.
    pub(super) fn check_matched(&self, opts: &RestoreOptions) -> Result<()> {
        if !self.matched && !opts.includes.is_empty() {
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
        Ok(())
    }

    /// Create the target, then refuse early when it lacks the space the
    /// plan needs (unless told to skip the check).
    pub(super) fn prepare_target(&self, target: &Path, opts: &RestoreOptions) -> Result<()> {
        std::fs::create_dir_all(target).map_err(|e| Error::Target {
            path: target.to_path_buf(),
            source: e,
        })?;
        if !opts.skip_space_check
            && let Some(free) = free_space(target)
            && self.needed > free
        {
            return Err(Error::NoSpace {
                path: target.to_path_buf(),
                needed: self.needed,
                free,
            });
        }
        Ok(())
    }
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

/// Bytes a file's content occupies once restored: its size less the
/// all-zero chunks, which are left as holes. A file holds at most its
/// blobs' bytes, so a hostile declared size (2^63) cannot inflate, or
/// overflow, the sum; such a file fails on its own when restored.
pub(crate) fn data_size(node: &Node, zero: Option<(BlobId, u64)>) -> u64 {
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

pub(super) fn join_path(root: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut p = root.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(rel);
    p
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

/// Where pass 2 is in the snapshot.
struct Walker<'w> {
    target: &'w Path,
    sel: &'w Selection,
    root_path: &'w [u8],
    picks: Vec<Pick>,
    failed_dirs: Vec<Vec<u8>>,
    /// Directories only looked into (a pattern may match below them) are
    /// made when something below is restored, so `--include '*.sql'` does
    /// not leave every other directory behind, empty. The ancestors of the
    /// entry being visited, outermost first.
    pending: Vec<(Vec<u8>, PathBuf, Node)>,
}

impl Restorer<'_> {
    /// Pass 2: create directories and specials, batch files (a full batch
    /// is run on the way). Returns the trees that could not be read.
    pub(super) fn restore_entries(
        &mut self,
        root: &BlobId,
        target: &Path,
        sel: &Selection,
        root_path: &[u8],
    ) -> Result<Vec<Unreadable>> {
        let mut w = Walker {
            target,
            sel,
            root_path,
            picks: vec![sel.root_pick()],
            failed_dirs: Vec::new(),
            pending: Vec::new(),
        };
        let src = self.src;
        walk(
            src,
            root,
            |rel, node| self.visit(&mut w, rel, node),
            |_, _| Ok(()),
        )
    }

    fn visit(&mut self, w: &mut Walker, rel: &[u8], node: &Node) -> Result<Visit> {
        self.check_stop()?;
        while w.pending.last().is_some_and(|(d, _, _)| !is_below(rel, d)) {
            w.pending.pop();
        }
        let is_dir = node.kind == NodeKind::Dir;
        let pick = pick_at(&mut w.picks, w.sel, w.root_path, rel, is_dir);
        if pick == Pick::Skip || (pick == Pick::Descend && !is_dir) {
            return Ok(Visit::Skip);
        }
        if w.failed_dirs.iter().any(|d| is_below(rel, d)) {
            // Walked only to be counted: each entry below a directory
            // that could not be made is one not restored.
            if pick == Pick::All {
                self.summary.not_restored += 1;
            }
            return Ok(Visit::Descend);
        }
        let path = w.target.join(OsStr::from_bytes(rel));
        if is_dir
            && self.opts.overwrite == Overwrite::Never
            && !self.fresh_dirs.contains(parent_of(rel))
            && std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir())
        {
            // A file, symlink or FIFO the user has where the snapshot
            // has a directory: `never` keeps it, and with it everything
            // the snapshot has below that name.
            self.summary.kept += 1;
            return Ok(Visit::Skip);
        }
        if is_dir && pick == Pick::Descend {
            w.pending.push((rel.to_vec(), path, node.clone()));
            return Ok(Visit::Descend);
        }
        if !self.make_pending_dirs(w) {
            return Ok(Visit::Descend);
        }
        if is_dir {
            if !self.make_dir(rel, path, node) {
                w.failed_dirs.push(rel.to_vec());
            }
            return Ok(Visit::Descend);
        }
        let fresh = self.fresh_dirs.contains(parent_of(rel));
        self.entry(path, node, fresh)?;
        Ok(Visit::Descend)
    }

    /// Make the directories only looked into so far, now that something
    /// below them is restored; false when one cannot be made.
    fn make_pending_dirs(&mut self, w: &mut Walker) -> bool {
        for (d, p, n) in std::mem::take(&mut w.pending) {
            if !self.make_dir(&d, p, &n) {
                w.failed_dirs.push(d);
                self.summary.not_restored += 1;
                return false;
            }
        }
        true
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
            self.special(path, node);
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
        // `never` kept every existing name above; `keep_unchanged` is false
        // for a name that is free or not a regular file.
        if !fresh && self.opts.overwrite == Overwrite::IfChanged && self.keep_unchanged(node, &path)
        {
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
        self.queue_file(path, node);
        Ok(())
    }

    /// A symlink, FIFO, device or socket: made now (or only listed, dry).
    fn special(&mut self, path: PathBuf, node: &Node) {
        if self.opts.dry_run {
            self.summary
                .planned
                .push(format!("{:<4} {}", node.kind.as_str(), path.display()));
            self.summary.others += 1;
            return;
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
    }

    /// Leave the file at `path` alone when it holds the node's content;
    /// whether it did.
    fn keep_unchanged(&mut self, node: &Node, path: &Path) -> bool {
        let Some(f) = self.open_matching(node, path) else {
            return false;
        };
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
        self.progress.file_done(path, node.size, 0);
        true
    }

    /// Add a file to the batch, and run the batch once it is full.
    fn queue_file(&mut self, path: PathBuf, node: &Node) {
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
    }

    /// Plan each file of a batch before anything is created: every content
    /// blob located, a data blob, and their lengths adding up to the
    /// declared size. A file that fails here is failed now and gets no
    /// temporary file at all, so a hostile size (2^62) is never
    /// preallocated (doc/reliability.md I8). One entry per task.
    pub(super) fn plan_batch(&self, tasks: &[FileTask]) -> Vec<Option<FilePlaces>> {
        let located = self.locate_all(tasks);
        tasks
            .iter()
            .map(|t| match place_file(t, &located) {
                Ok(places) => Some(places),
                Err(e) => {
                    t.fail(e);
                    None
                }
            })
            .collect()
    }

    /// Every location the batch needs, in one query round.
    fn locate_all(&self, tasks: &[FileTask]) -> Located {
        let mut ids: Vec<BlobId> = tasks
            .iter()
            .flat_map(|t| t.node.content.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        match self.src.locate_many(&ids) {
            Ok(places) => ids.into_iter().zip(places.into_iter().map(Ok)).collect(),
            Err(e) => ids.into_iter().map(|id| (id, Err(e.to_string()))).collect(),
        }
    }
}

impl Shared<'_> {
    /// Does the regular file at `path` hold exactly the node's content?
    pub(super) fn matches(&self, node: &Node, path: &Path) -> bool {
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
}

/// Where the file's content is, or the error that fails it.
fn place_file(t: &FileTask, located: &Located) -> std::result::Result<FilePlaces, String> {
    let mut places: FilePlaces = Vec::with_capacity(t.node.content.len());
    let mut off = 0u64;
    for id in &t.node.content {
        let place = match located.get(id) {
            Some(Ok(p)) => *p,
            Some(Err(e)) => return Err(format!("{}: {e}", t.path.display())),
            None => None,
        };
        let Some(place) = place else {
            return Err(format!(
                "{}: blob {id} is not in the repository index (data lost: run `coffer check`)",
                t.path.display()
            ));
        };
        if place.kind != crate::blob::BlobKind::Data {
            return Err(format!(
                "{}: blob {id} is a tree, not file content (the snapshot is corrupt)",
                t.path.display()
            ));
        }
        places.push((*id, place, off));
        off += place.raw_length as u64;
    }
    if off != t.node.size {
        return Err(format!(
            "{}: content adds up to {off} bytes, the snapshot says {} (the snapshot is corrupt)",
            t.path.display(),
            t.node.size
        ));
    }
    Ok(places)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use crate::restorer::restore;
    use crate::restorer::tests::from_memory::{Src, names};

    #[test]
    fn join() {
        assert_eq!(join_path(b"/", b"a/b"), b"/a/b");
        assert_eq!(join_path(b"/x", b"a"), b"/x/a");
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
}
