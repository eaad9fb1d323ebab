//! A repository in a local directory.
//!
//! `put` writes a temporary file beside the target, fsyncs it, renames it to
//! its final name and fsyncs the directory, so a crash or a full disk never
//! leaves a partial object under a valid name (doc/reliability.md §0.5,
//! rustic#1731). Temporary files carry a `.tmp-` infix, are never listed,
//! and are removed by [`Backend::remove_stale_temps`].

use super::{Backend, DirStamp, FileKind, ObjectInfo, PendingPut};
use crate::direct_io::{self, AlignedBuf};
use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub struct LocalBackend {
    root: PathBuf,
    /// The packs read last, kept open (see [`OpenPacks`]).
    open_packs: OpenPacks,
}

/// Packs recently read from, still open: a walk reads its parent's trees
/// a few hundred bytes at a time from the same tree packs, and opening,
/// checking and closing the pack for each was three syscalls per
/// directory. A pack's bytes never change under its name (it is named by
/// them), so a kept file reads what a fresh open would; a deleted pack is
/// dropped here first, so that its space is freed when it is deleted.
#[derive(Default)]
struct OpenPacks(std::sync::Mutex<std::collections::VecDeque<(String, std::sync::Arc<File>)>>);

const OPEN_PACKS: usize = 8;

impl OpenPacks {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(String, std::sync::Arc<File>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open file of object `name` of `kind`, if kept (only packs are).
    fn get(&self, kind: FileKind, name: &str) -> Option<std::sync::Arc<File>> {
        if kind != FileKind::Pack {
            return None;
        }
        self.lock()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
    }

    fn keep(&self, kind: FileKind, name: &str, f: std::sync::Arc<File>) {
        if kind != FileKind::Pack {
            return;
        }
        let mut l = self.lock();
        if l.iter().any(|(n, _)| n == name) {
            return;
        }
        if l.len() >= OPEN_PACKS {
            l.pop_front();
        }
        l.push_back((name.to_string(), f));
    }

    fn forget(&self, kind: FileKind, name: &str) {
        if kind == FileKind::Pack {
            self.lock().retain(|(n, _)| n != name);
        }
    }
}

const TEMP_INFIX: &str = ".tmp-";

/// The temporary files this process has created and not yet named or
/// removed, so that a run stopped by a signal removes them on its way out
/// instead of leaving them for a prune an hour later. `None` once
/// abandoned: no new temporary file is created after that.
static OWN_TEMPS: std::sync::Mutex<Option<Vec<PathBuf>>> = std::sync::Mutex::new(Some(Vec::new()));

fn own_temps() -> std::sync::MutexGuard<'static, Option<Vec<PathBuf>>> {
    OWN_TEMPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Create the temporary file `tmp` with `open` while holding the list, so
/// that [`abandon_own_temps`] sees every temporary file that exists.
fn create_tracked<T>(tmp: &Path, open: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut temps = own_temps();
    let Some(list) = temps.as_mut() else {
        return Err(std::io::Error::other("the run was interrupted"));
    };
    let file = open()?;
    list.push(tmp.to_path_buf());
    Ok(file)
}

/// `tmp` was named or removed.
fn untrack(tmp: &Path) {
    if let Some(list) = own_temps().as_mut() {
        list.retain(|p| p != tmp);
    }
}

/// Remove this process's temporary files and refuse new ones (a put that
/// was writing one fails, and its object never appears). Returns how many
/// were removed.
pub(crate) fn abandon_own_temps() -> usize {
    let list = own_temps().take().unwrap_or_default();
    for p in &list {
        let _ = fs::remove_file(p);
    }
    list.len()
}

/// Object names are lowercase hex (or `config`, `config.copy`): nothing can escape the
/// repository directory through a name.
impl LocalBackend {
    /// Open an existing directory (the caller checks for a config object).
    pub fn open(root: &Path) -> Self {
        LocalBackend {
            root: root.to_path_buf(),
            open_packs: OpenPacks::default(),
        }
    }

    /// Create the directory layout for a new repository.
    pub fn create(root: &Path) -> Result<Self> {
        let b = LocalBackend {
            root: root.to_path_buf(),
            open_packs: OpenPacks::default(),
        };
        for d in ["keys", "packs", "index", "snapshots", "locks"] {
            let p = root.join(d);
            fs::create_dir_all(&p)
                .map_err(|e| Error::backend_io("mkdir", p.display().to_string(), e))?;
        }
        sync_dir(root).map_err(|e| Error::backend_io("fsync", root.display().to_string(), e))?;
        Ok(b)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, kind: FileKind, name: &str) -> Result<PathBuf> {
        super::valid_name(kind, name)?;
        Ok(self.root.join(kind.path(name)))
    }

    /// Remove temporary files a killed writer left behind.
    #[cfg(test)]
    pub(crate) fn remove_stale_temp_files(&self) -> Result<usize> {
        self.remove_temps_older_than(std::time::Duration::ZERO)
    }

    fn remove_temps_older_than(&self, min_age: std::time::Duration) -> Result<usize> {
        let now = std::time::SystemTime::now();
        let mut n = 0;
        for (path, m) in self.temp_files()? {
            let old_enough = m
                .modified()
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= min_age);
            if old_enough && fs::remove_file(path).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every temporary file (`.tmp-` infix) in the object directories,
    /// with its metadata.
    fn temp_files(&self) -> Result<Vec<(PathBuf, fs::Metadata)>> {
        let mut out = Vec::new();
        for dir in self.kind_dirs(FileKind::Pack)?.into_iter().chain(
            [
                FileKind::Key,
                FileKind::Index,
                FileKind::Snapshot,
                FileKind::Lock,
                FileKind::Damaged,
            ]
            .iter()
            .map(|k| self.root.join(k.dir())),
        ) {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().contains(TEMP_INFIX)
                    && let Ok(m) = e.metadata()
                    && m.is_file()
                {
                    out.push((e.path(), m));
                }
            }
        }
        Ok(out)
    }

    /// Refuse `dir` (below the root) unless it is a real directory or
    /// absent: a symbolic link there would divert reads, writes and
    /// deletions out of the repository.
    fn check_real_dir(&self, dir: &Path) -> Result<()> {
        let rel = || {
            dir.strip_prefix(&self.root)
                .unwrap_or(dir)
                .display()
                .to_string()
        };
        match fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(m) if m.file_type().is_symlink() => Err(Error::ForeignEntry {
                path: rel(),
                what: match fs::read_link(dir) {
                    Ok(t) => format!("a symbolic link (to {})", t.display()),
                    Err(_) => "a symbolic link".into(),
                },
            }),
            Ok(_) => Err(Error::ForeignEntry {
                path: rel(),
                what: "not a directory".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::backend_io("stat", rel(), e)),
        }
    }

    /// [`Self::check_real_dir`] for every directory between the root and
    /// the object (`packs`, then `packs/ab`).
    fn check_object_dirs(&self, kind: FileKind, name: &str) -> Result<()> {
        let rel = kind.path(name);
        let mut dir = self.root.clone();
        let mut parts: Vec<&str> = rel.split('/').collect();
        parts.pop();
        for p in parts {
            dir.push(p);
            self.check_real_dir(&dir)?;
        }
        Ok(())
    }

    /// Open an object for reading: never through a symbolic link, never a
    /// FIFO or device (O_NONBLOCK: opening a FIFO does not wait for a
    /// writer), never larger than its kind allows. Returns it and its size.
    fn open_object(&self, kind: FileKind, name: &str) -> Result<(File, u64)> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.full(kind, name)?;
        let obj = kind.path(name);
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => Error::corrupt(
                    obj.clone(),
                    "it is a symbolic link, not an object coffer wrote: remove it (coffer never follows links inside a repository)",
                ),
                _ => Error::backend_io("read", obj.clone(), e),
            })?;
        let m = f
            .metadata()
            .map_err(|e| Error::backend_io("stat", obj.clone(), e))?;
        if !m.is_file() {
            return Err(Error::corrupt(
                obj,
                "it is not a regular file (a FIFO, device or directory), not an object coffer wrote: remove it",
            ));
        }
        if m.len() > kind.max_size() {
            return Err(Error::corrupt(
                obj,
                format!(
                    "it is {} bytes, more than the {} bytes an object of its kind may have: not an object coffer wrote; remove it",
                    m.len(),
                    kind.max_size()
                ),
            ));
        }
        Ok((f, m.len()))
    }

    fn kind_dirs(&self, kind: FileKind) -> Result<Vec<PathBuf>> {
        let base = self.root.join(kind.dir());
        self.check_real_dir(&base)?;
        if kind != FileKind::Pack {
            return Ok(vec![base]);
        }
        let mut dirs = Vec::new();
        let rd = fs::read_dir(&base)
            .map_err(|e| Error::backend_io("list", base.display().to_string(), e))?;
        for e in rd {
            let e = e.map_err(|e| Error::backend_io("list", base.display().to_string(), e))?;
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(e.path()),
                Ok(t) if t.is_symlink() => self.check_real_dir(&e.path())?,
                _ => {}
            }
        }
        Ok(dirs)
    }
}

impl LocalBackend {
    /// The first step of a put: the bytes in a durable-to-be temporary
    /// file beside the target. `None` when the object already exists (a
    /// retried put of a content-named object).
    fn write_temp(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<Option<LocalPending>> {
        let path = self.full(kind, name)?;
        let obj = kind.path(name);
        // Content-addressed kinds: the name is the hash of the bytes, so an
        // object of the same size under the same name is this object (a
        // retried put). Other kinds are create-once: never replaced.
        if let Ok(m) = fs::metadata(&path) {
            if kind.is_content_named() && m.len() == data.len() as u64 {
                return Ok(None);
            }
            return Err(Error::AlreadyExists { path: obj.into() });
        }
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        self.check_object_dirs(kind, name)?;
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(|e| Error::backend_io("mkdir", obj.clone(), e))?;
            if let Some(p) = dir.parent() {
                sync_dir(p).map_err(|e| Error::backend_io("fsync", obj.clone(), e))?;
            }
        }
        let tmp = dir.join(format!("{name}{TEMP_INFIX}{}", unique_suffix()));
        let write = || -> std::io::Result<File> {
            if super::faulty::enospc_now(kind) {
                // What a full disk leaves: part of the object, then ENOSPC.
                let mut f = create_tracked(&tmp, || {
                    OpenOptions::new().write(true).create_new(true).open(&tmp)
                })?;
                f.write_all(&data[..data.len() / 2])?;
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            if data.len() >= DIRECT_MIN
                && let Some(f) = write_direct(&tmp, data)?
            {
                return Ok(f);
            }
            let mut f = create_tracked(&tmp, || {
                OpenOptions::new().write(true).create_new(true).open(&tmp)
            })?;
            // write_all loops over short writes; each call is capped by the
            // kernel well below 2 GiB (borg#6140).
            f.write_all(data)?;
            Ok(f)
        };
        match write() {
            Ok(file) => Ok(Some(LocalPending {
                kind,
                file,
                tmp,
                path,
                dir,
                obj,
                len: data.len() as u64,
                done: false,
            })),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                untrack(&tmp);
                Err(Error::backend_io("write", obj, e))
            }
        }
    }
}

/// A put of an object that was already there.
struct Stored;

impl PendingPut for Stored {
    fn commit(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// An object written to its temporary file, not yet durable or visible.
struct LocalPending {
    kind: FileKind,
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    obj: String,
    len: u64,
    done: bool,
}

impl LocalPending {
    /// fsync the data, give it its name, fsync the directory.
    fn finish(&mut self) -> Result<()> {
        let obj = self.obj.clone();
        if let Err(e) = self.file.sync_all() {
            return Err(Error::backend_io("write", obj, e));
        }
        // link() fails if the name exists, unlike rename(): two writers
        // racing to create `config` or a lock cannot both succeed.
        let linked = fs::hard_link(&self.tmp, &self.path);
        let _ = fs::remove_file(&self.tmp);
        untrack(&self.tmp);
        self.done = true;
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let same = self.kind.is_content_named()
                    && fs::metadata(&self.path)
                        .map(|m| m.len() == self.len)
                        .unwrap_or(false);
                if !same {
                    return Err(Error::AlreadyExists { path: obj.into() });
                }
            }
            Err(e) => return Err(Error::backend_io("link", obj, e)),
        }
        sync_dir(&self.dir).map_err(|e| Error::backend_io("fsync", obj, e))
    }
}

impl Drop for LocalPending {
    /// Never committed (the caller failed in between): leave no temporary.
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
            untrack(&self.tmp);
        }
    }
}

impl PendingPut for LocalPending {
    fn commit(mut self: Box<Self>) -> Result<()> {
        self.finish()
    }
}

/// Objects at least this large (packs) bypass the page cache.
const DIRECT_MIN: usize = 1 << 20;
/// The bounce buffer for what is not aligned in memory (segments, a pack's
/// tail). 1 MiB, not more: every thread that ever writes keeps its own,
/// and a backup's index thread copied whole 4 MiB segments through it;
/// a larger buffer saves nothing but a few `pwrite` calls.
const DIRECT_BUF: usize = 1 << 20;

thread_local! {
    /// One bounce buffer per upload thread, reused: touching fresh pages
    /// is what makes page-cache writes slow in the first place.
    static BOUNCE: std::cell::RefCell<Option<AlignedBuf>> = const { std::cell::RefCell::new(None) };
}

/// Write `data` to the new file `tmp` with O_DIRECT; the caller fsyncs
/// it. Returns `None`, leaving no file, when the filesystem refuses
/// O_DIRECT (the caller then writes through the page cache).
///
/// Why: a pack is written once and not read back by the backup (it was
/// verified in memory before upload), so the page cache only costs (see
/// [`direct_io`]); a backup spent 18% of its CPU copying packs into it.
fn write_direct(tmp: &Path, data: &[u8]) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = match create_tracked(tmp, || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(tmp)
    }) {
        Ok(f) => f,
        Err(e) if direct_io::refused(&e) => {
            let _ = fs::remove_file(tmp);
            untrack(tmp);
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let written = BOUNCE.with(|b| -> std::io::Result<()> {
        let mut b = b.borrow_mut();
        let buf = b.get_or_insert_with(|| AlignedBuf::zeroed(DIRECT_BUF));
        // An aligned caller's buffer (a pack from `PackWriter`) is written
        // straight from memory; only its unaligned tail is copied.
        let mut pos = 0usize;
        if data.as_ptr().align_offset(direct_io::ALIGN) == 0 {
            pos = data.len() - data.len() % direct_io::ALIGN;
            f.write_all_at(&data[..pos], 0)?;
        }
        for piece in data[pos..].chunks(DIRECT_BUF) {
            buf.as_mut_slice()[..piece.len()].copy_from_slice(piece);
            direct_io::write_padded_at(&f, buf, piece.len(), pos as u64)?;
            pos += piece.len();
        }
        Ok(())
    });
    match written.and_then(|()| f.set_len(data.len() as u64)) {
        Ok(()) => Ok(Some(f)),
        Err(e) if direct_io::refused(&e) => {
            drop(f);
            let _ = fs::remove_file(tmp);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn unique_suffix() -> String {
    let mut b = [0u8; 8];
    crate::crypto::envelope::random_bytes(&mut b);
    hex::encode(b)
}

/// Hand each object of `kind` in the directory `dir` to `f`.
fn list_dir(kind: FileKind, dir: &Path, f: &mut dyn FnMut(ObjectInfo) -> Result<()>) -> Result<()> {
    let rd =
        fs::read_dir(dir).map_err(|e| Error::backend_io("list", dir.display().to_string(), e))?;
    for e in rd {
        let e = e.map_err(|e| Error::backend_io("list", dir.display().to_string(), e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(TEMP_INFIX) || super::valid_name(kind, &name).is_err() {
            continue;
        }
        let m = e
            .metadata()
            .map_err(|e| Error::backend_io("stat", name.clone(), e))?;
        if m.is_file() {
            f(ObjectInfo {
                name,
                size: m.len(),
                modified: m.modified().ok(),
            })?;
        }
    }
    Ok(())
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn remove_stale_temps(&self, min_age: std::time::Duration) -> Result<usize> {
        self.remove_temps_older_than(min_age)
    }

    fn abandon(&self) -> usize {
        abandon_own_temps()
    }

    fn modified(&self, kind: FileKind, name: &str) -> Result<Option<std::time::SystemTime>> {
        let path = self.full(kind, name)?;
        let m = fs::symlink_metadata(&path)
            .map_err(|e| Error::backend_io("stat", kind.path(name), e))?;
        Ok(m.modified().ok())
    }

    fn temp_usage(&self) -> Result<(u64, u64)> {
        let files = self.temp_files()?;
        Ok((files.len() as u64, files.iter().map(|(_, m)| m.len()).sum()))
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.put_pending(kind, name, data)?.commit()
    }

    fn put_pending(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<Box<dyn PendingPut>> {
        // A pack put again replaces a damaged copy: read the new one.
        self.open_packs.forget(kind, name);
        match self.write_temp(kind, name, data)? {
            Some(p) => Ok(Box::new(p)),
            // Already there: nothing to make durable, but still a put.
            None => Ok(Box::new(Stored)),
        }
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let (f, size) = self.open_object(kind, name)?;
        let obj = kind.path(name);
        // Bounded again while reading: the file may grow after the stat.
        let max = kind.max_size();
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        f.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::backend_io("read", obj.clone(), e))?;
        if buf.len() as u64 > max {
            return Err(Error::corrupt(
                obj,
                format!(
                    "it grew past the {max} bytes an object of its kind may have while it was read"
                ),
            ));
        }
        Ok(buf)
    }

    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let f = match self.open_packs.get(kind, name) {
            Some(f) => f,
            None => {
                let f = std::sync::Arc::new(self.open_object(kind, name)?.0);
                self.open_packs.keep(kind, name, f.clone());
                f
            }
        };
        let obj = kind.path(name);
        // Only bytes beyond the buffer's old length are zeroed; the read
        // overwrites all of it.
        buf.resize(len, 0);
        match f.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::corrupt(
                obj,
                format!(
                    "object is shorter than the {len} bytes at offset {offset} the index records (truncated)"
                ),
            )),
            Err(e) => Err(Error::backend_io("read", obj, e)),
        }
    }

    fn list_each(&self, kind: FileKind, f: &mut dyn FnMut(ObjectInfo) -> Result<()>) -> Result<()> {
        for dir in self.kind_dirs(kind)? {
            list_dir(kind, &dir, f)?;
        }
        Ok(())
    }

    /// Each directory's stamp is its inode number, modification and
    /// change times: creating, removing or renaming an entry sets both
    /// times, and no user call sets the change time back.
    fn dir_stamps(&self, kind: FileKind) -> Result<Option<Vec<DirStamp>>> {
        use std::os::unix::fs::MetadataExt;
        let base = self.root.join(kind.dir());
        let stamp = |dir: String, path: &Path| -> Result<DirStamp> {
            let m = fs::symlink_metadata(path)
                .map_err(|e| Error::backend_io("stat", path.display().to_string(), e))?;
            let changed = std::time::UNIX_EPOCH
                .checked_add(std::time::Duration::new(
                    m.ctime().max(0) as u64,
                    m.ctime_nsec().clamp(0, 999_999_999) as u32,
                ))
                .unwrap_or(std::time::UNIX_EPOCH);
            Ok(DirStamp {
                dir,
                stamp: format!(
                    "{}.{}.{}.{}.{}",
                    m.ino(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec()
                ),
                changed,
            })
        };
        let mut out = vec![stamp(String::new(), &base)?];
        for dir in self.kind_dirs(kind)? {
            if dir == base {
                continue;
            }
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(stamp(name, &dir)?);
        }
        Ok(Some(out))
    }

    fn list_dir_each(
        &self,
        kind: FileKind,
        dir: &str,
        f: &mut dyn FnMut(ObjectInfo) -> Result<()>,
    ) -> Result<()> {
        if dir.is_empty() || dir == "." || dir == ".." || dir.contains('/') {
            return Err(Error::Internal(format!(
                "{dir:?} is not a directory of {}",
                kind.dir()
            )));
        }
        let path = self.root.join(kind.dir()).join(dir);
        self.check_real_dir(&path)?;
        if !path.exists() {
            // Gone since it was stamped: it holds no objects.
            return Ok(());
        }
        list_dir(kind, &path, f)
    }

    fn size(&self, kind: FileKind, name: &str) -> Result<u64> {
        let path = self.full(kind, name)?;
        fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| Error::backend_io("stat", kind.path(name), e))
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        self.open_packs.forget(kind, name);
        let path = self.full(kind, name)?;
        self.check_object_dirs(kind, name)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::backend_io("delete", kind.path(name), e)),
        }
        if let Some(d) = path.parent() {
            sync_dir(d).map_err(|e| Error::backend_io("fsync", kind.path(name), e))?;
        }
        Ok(())
    }

    /// Unlinks on several threads, then one fsync per directory, also on
    /// several threads. Unlinking a large pack waits on the filesystem
    /// (freeing its extents, ~5-10 ms each here), and so does each
    /// directory fsync: one after the other, deleting a prune's packs was a
    /// quarter of its time, while concurrent fsyncs share journal commits.
    /// The batch is durable when this returns, as the trait requires.
    fn delete_many(&self, kind: FileKind, names: &[String]) -> Result<()> {
        for n in names {
            self.open_packs.forget(kind, n);
        }
        let paths: Vec<(PathBuf, &String)> = names
            .iter()
            .map(|n| {
                self.check_object_dirs(kind, n)?;
                Ok((self.full(kind, n)?, n))
            })
            .collect::<Result<_>>()?;
        let removed = for_each_parallel(&paths, |(path, name)| match fs::remove_file(path) {
            Ok(()) => Ok(path.parent().map(|d| (d.to_path_buf(), kind.path(name)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::backend_io("delete", kind.path(name), e)),
        })?;
        let mut dirs = std::collections::BTreeMap::new();
        for (d, obj) in removed.into_iter().flatten() {
            dirs.entry(d).or_insert(obj);
        }
        let dirs: Vec<(PathBuf, String)> = dirs.into_iter().collect();
        for_each_parallel(&dirs, |(d, obj)| {
            sync_dir(d).map_err(|e| Error::backend_io("fsync", obj.clone(), e))
        })?;
        Ok(())
    }
}

/// Threads for [`LocalBackend::delete_many`]: the work is waiting on the
/// filesystem, not CPU, so more threads than cores still help.
const DELETE_THREADS: usize = 8;

/// Run `f` over `items` on a rayon pool of [`DELETE_THREADS`] threads (not
/// the global one, sized for CPU work); the results in order, or an error
/// (the other items are then mostly skipped). Without a pool, in turn.
fn for_each_parallel<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    use rayon::prelude::*;
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(DELETE_THREADS)
            .thread_name(|i| format!("coffer-delete-{i}"))
            .build()
            .ok()
    });
    match pool {
        Some(pool) if items.len() > 1 => pool.install(|| items.par_iter().map(&f).collect()),
        _ => items.iter().map(f).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_directory_stamp_changes_with_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::create(dir.path()).unwrap();
        let stamps = || b.dir_stamps(FileKind::Pack).unwrap().unwrap();
        // Directory times move in clock ticks (up to 10 ms): a change in
        // the same tick as the stamp may leave it as it was, which is why
        // a directory stamped right after a change is listed again.
        let tick = || std::thread::sleep(std::time::Duration::from_millis(30));
        let name = |c: char| c.to_string().repeat(64);
        b.put(FileKind::Pack, &name('a'), b"one").unwrap();
        b.put(FileKind::Pack, &name('b'), b"two").unwrap();
        let before = stamps();
        assert_eq!(before[0].dir, "");
        let mut dirs: Vec<_> = before[1..].iter().map(|d| d.dir.clone()).collect();
        dirs.sort();
        assert_eq!(dirs, ["aa", "bb"]);
        assert_eq!(stamps(), before, "nothing changed");
        let get = |stamps: &[DirStamp], d: &str| {
            stamps.iter().find(|s| s.dir == d).map(|s| s.stamp.clone())
        };
        // Another pack in "bb", then one removed: "bb" changes each time, "aa" never.
        let mut other = name('b');
        other.replace_range(63.., "c");
        tick();
        b.put(FileKind::Pack, &other, b"three").unwrap();
        let added = stamps();
        assert_ne!(get(&added, "bb"), get(&before, "bb"));
        assert_eq!(get(&added, "aa"), get(&before, "aa"));
        assert_eq!(added[0], before[0], "no directory came or went");
        tick();
        b.delete(FileKind::Pack, &other).unwrap();
        let removed = stamps();
        assert_ne!(get(&removed, "bb"), get(&added, "bb"));
        assert_eq!(get(&removed, "aa"), get(&before, "aa"));
        // A new directory changes the base.
        tick();
        b.put(FileKind::Pack, &name('c'), b"four").unwrap();
        assert_ne!(stamps()[0], before[0]);

        let mut listed = Vec::new();
        b.list_dir_each(FileKind::Pack, "bb", &mut |o| {
            listed.push((o.name, o.size));
            Ok(())
        })
        .unwrap();
        assert_eq!(listed, [(name('b'), 3)]);
        // A directory that is gone holds nothing; a path is refused.
        b.list_dir_each(FileKind::Pack, "dd", &mut |_| panic!("nothing there"))
            .unwrap();
        for bad in ["", ".", "..", "aa/..", "../keys"] {
            assert!(
                b.list_dir_each(FileKind::Pack, bad, &mut |_| Ok(()))
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn conformance_and_hostile_names() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::create(dir.path()).unwrap();
        super::super::conformance::run(&b).unwrap();
        super::super::conformance::run_remote(&b).unwrap();
        let shared: std::sync::Arc<dyn Backend> =
            std::sync::Arc::new(LocalBackend::open(dir.path()));
        super::super::conformance::race_create_once(shared, 8).unwrap();
        assert!(b.get(FileKind::Snapshot, "../config").is_err());
        assert!(b.put(FileKind::Key, "ABC", b"").is_err());
    }

    #[test]
    fn packs_read_are_kept_open_until_deleted_or_put_again() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::create(dir.path()).unwrap();
        let names: Vec<String> = (0..OPEN_PACKS + 2)
            .map(|i| format!("{i:02x}{}", "ab".repeat(31)))
            .collect();
        for n in &names {
            b.put(FileKind::Pack, n, n.as_bytes()).unwrap();
            assert_eq!(
                b.get_range(FileKind::Pack, n, 0, 4).unwrap(),
                &n.as_bytes()[..4]
            );
        }
        // At most OPEN_PACKS stay open, the most recent ones.
        assert_eq!(b.open_packs.lock().len(), OPEN_PACKS);
        assert!(b.open_packs.get(FileKind::Pack, &names[0]).is_none());
        let last = names.last().unwrap();
        assert!(b.open_packs.get(FileKind::Pack, last).is_some());
        // Deleting one closes it (its space is freed now, not at exit).
        b.delete(FileKind::Pack, last).unwrap();
        assert!(b.open_packs.get(FileKind::Pack, last).is_none());
        assert!(b.get_range(FileKind::Pack, last, 0, 4).is_err());
        // A pack put again (a damaged copy replaced) is read afresh.
        let n = &names[names.len() - 2];
        b.delete_many(FileKind::Pack, std::slice::from_ref(n))
            .unwrap();
        assert!(b.open_packs.get(FileKind::Pack, n).is_none());
        b.put(FileKind::Pack, n, b"replaced bytes").unwrap();
        assert_eq!(b.get_range(FileKind::Pack, n, 0, 8).unwrap(), b"replaced");
        let m = &names[names.len() - 3];
        assert!(b.open_packs.get(FileKind::Pack, m).is_some());
        // (Refused here: same name, other size; still forgotten first.)
        b.put(FileKind::Pack, m, b"other bytes").ok();
        assert!(
            b.open_packs.get(FileKind::Pack, m).is_none(),
            "a put forgets the open pack"
        );
    }

    /// Large objects take the O_DIRECT path (or its fallback): every size
    /// around the alignment and the bounce buffer comes back exactly.
    #[test]
    fn large_objects_round_trip_at_awkward_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::create(dir.path()).unwrap();
        let sizes = [
            DIRECT_MIN,
            DIRECT_MIN + 1,
            DIRECT_MIN + direct_io::ALIGN - 1,
            DIRECT_BUF,
            DIRECT_BUF + 1,
            2 * DIRECT_BUF + 12345,
        ];
        for (i, &n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..n).map(|j| (j * 31 + i * 7 + j / 4099) as u8).collect();
            let name = hex::encode([i as u8; 32]);
            b.put(FileKind::Pack, &name, &data).unwrap();
            assert_eq!(b.get(FileKind::Pack, &name).unwrap(), data, "size {n}");
            assert_eq!(b.size(FileKind::Pack, &name).unwrap(), n as u64);
            // The same from an aligned buffer, written without the bounce.
            let mut aligned = AlignedBuf::zeroed(n);
            aligned.as_mut_slice().copy_from_slice(&data);
            let name = hex::encode([0x80 | i as u8; 32]);
            b.put(FileKind::Pack, &name, aligned.as_slice()).unwrap();
            assert_eq!(b.get(FileKind::Pack, &name).unwrap(), data, "aligned {n}");
            assert_eq!(b.size(FileKind::Pack, &name).unwrap(), n as u64);
        }
        // A direct write into a file that exists is refused, not merged.
        let tmp = dir.path().join("direct-test");
        fs::write(&tmp, b"x").unwrap();
        assert!(write_direct(&tmp, &[1u8; DIRECT_MIN]).is_err());
    }

    #[test]
    fn a_pending_put_exists_only_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::create(dir.path()).unwrap();
        let entries = |d: &Path| fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
        let listed = |name: &str| {
            b.list(FileKind::Pack)
                .unwrap()
                .iter()
                .any(|o| o.name == name)
        };
        // Large enough for the O_DIRECT path, and a small one.
        let cases = [("aa01", DIRECT_MIN + 5), ("aa02", 11)];
        for (i, (name, len)) in cases.into_iter().enumerate() {
            let data = vec![7u8; len];
            let p = b.put_pending(FileKind::Pack, name, &data).unwrap();
            assert!(!listed(name));
            drop(p);
            assert!(!listed(name));
            assert_eq!(
                entries(&dir.path().join("packs/aa")),
                i,
                "a temporary is left"
            );
            let p = b.put_pending(FileKind::Pack, name, &data).unwrap();
            p.commit().unwrap();
            assert_eq!(b.get(FileKind::Pack, name).unwrap(), data);
            // Retried: the existing object is taken as this one.
            b.put_pending(FileKind::Pack, name, &data)
                .unwrap()
                .commit()
                .unwrap();
        }
        assert_eq!(entries(&dir.path().join("packs/aa")), 2);
        // A create-once kind refuses a second object at either step.
        b.put_pending(FileKind::Key, "ab", b"k")
            .unwrap()
            .commit()
            .unwrap();
        assert!(b.put_pending(FileKind::Key, "ab", b"k").is_err());
    }

    #[test]
    fn temp_files_are_invisible_and_removable() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::create(dir.path()).unwrap();
        fs::write(dir.path().join("index/abcd.tmp-1234"), b"partial").unwrap();
        assert!(b.list(FileKind::Index).unwrap().is_empty());
        assert_eq!(b.remove_stale_temp_files().unwrap(), 1);
    }

    #[test]
    fn non_content_objects_are_create_once() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::create(dir.path()).unwrap();
        b.put(FileKind::Config, "config", b"first").unwrap();
        assert!(b.put(FileKind::Config, "config", b"other").is_err());
        assert_eq!(b.get(FileKind::Config, "config").unwrap(), b"first");
    }

    /// The threaded batch delete reports a failure, naming the object,
    /// rather than losing it among the threads.
    #[test]
    fn a_failed_delete_in_a_batch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::create(dir.path()).unwrap();
        let names: Vec<String> = (0..20u8).map(|i| format!("{i:02x}01")).collect();
        for n in &names {
            b.put(FileKind::Pack, n, b"x").unwrap();
        }
        // A directory where a pack should be: remove_file fails on it.
        fs::create_dir_all(dir.path().join("packs/ee/ee01/sub")).unwrap();
        let mut batch = names.clone();
        batch.insert(7, "ee01".into());
        let err = b.delete_many(FileKind::Pack, &batch).unwrap_err();
        assert!(err.to_string().contains("ee01"), "{err}");
        batch.remove(7);
        b.delete_many(FileKind::Pack, &batch).unwrap();
        assert!(b.list(FileKind::Pack).unwrap().is_empty());
    }

    #[test]
    fn same_name_different_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::create(dir.path()).unwrap();
        b.put(FileKind::Pack, "abcd", b"1234").unwrap();
        assert!(b.put(FileKind::Pack, "abcd", b"12345").is_err());
    }
}
