//! Writing restored entries and their metadata.
//!
//! Files are written under a temporary name in their final directory,
//! blob by blob (each authenticated and re-hashed before a byte of it is
//! written), given their metadata, and only then renamed into place: an interrupted or failed restore never leaves a half-written file
//! under the real name (doc/reliability.md E3, F1).

use crate::error::{Error, Result};
use crate::snapshot::tree::{Node, NodeKind};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

fn target_err(path: &Path, source: std::io::Error) -> Error {
    Error::Target {
        path: path.to_path_buf(),
        source,
    }
}

fn cstr(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// The temporary name a file is restored under: in the same directory,
/// derived from the final name, so a re-run after an interruption reuses
/// (truncates) it instead of leaving another stray file.
pub(crate) fn stable_temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
    let h = blake3::hash(name);
    let tmp = format!(".coffer-tmp-{}", hex::encode(&h.as_bytes()[..8]));
    path.parent().unwrap_or(Path::new(".")).join(tmp)
}

/// Create (or truncate) an empty temporary file. Its size is set by the
/// writes, or at commit when it ends in a hole, so the common case costs no
/// extra `ftruncate`.
pub(crate) fn create_empty(tmp: &Path) -> std::io::Result<File> {
    // O_NOFOLLOW: a symlink planted under the temporary name is not followed.
    OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600)
        .open(tmp)
}

/// Give a complete temporary file its metadata and move it to its name.
///
/// Metadata goes through the open descriptor (no path lookups), times
/// last; `rename` afterwards changes only the ctime. The rename replaces a
/// file or symlink at `path` atomically and never follows it; only a
/// directory in the way has to be removed first.
pub fn commit(node: &Node, file: File, tmp: &Path, path: &Path, as_root: bool) -> Result<()> {
    apply_metadata_fd(node, &file, as_root).map_err(|e| target_err(path, e))?;
    drop(file);
    match std::fs::rename(tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if in_the_way(&e) => {
            clear_any(path)?;
            std::fs::rename(tmp, path).map_err(|e| target_err(path, e))
        }
        Err(e) => Err(target_err(path, e)),
    }
}

/// Errors that mean "something else occupies the name".
fn in_the_way(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EEXIST) | Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::ENOTDIR)
    )
}

/// Remove whatever is at `path` unless it is a real directory: a symlink
/// planted in the target is replaced, never followed (doc/reliability.md I4).
pub(crate) fn clear_non_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => std::fs::remove_file(path).map_err(|e| target_err(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(target_err(path, e)),
    }
}

/// Make `path` a real directory (not a symlink to one). Returns whether
/// this call created it: entries of a directory made here cannot exist yet,
/// which spares a lookup per entry.
pub(crate) fn ensure_dir(path: &Path) -> Result<bool> {
    match std::fs::create_dir(path) {
        Ok(()) => return Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(target_err(path, e)),
    }
    // mkdir never follows a symlink, so the name is taken by something:
    // keep it only if it is a real directory.
    clear_non_dir(path)?;
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(target_err(path, e)),
    }
}

/// Remove a directory or anything else at `path`, so a non-directory can
/// take its place.
fn clear_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(path).map_err(|e| target_err(path, e)),
        Ok(_) => std::fs::remove_file(path).map_err(|e| target_err(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(target_err(path, e)),
    }
}

/// Create a symlink, FIFO or device node at `path` (replacing what is there).
pub(crate) fn restore_special(node: &Node, path: &Path, as_root: bool) -> Result<Option<String>> {
    let made = match make_special(node, path, as_root) {
        Err(e) if in_the_way(&e) => {
            clear_any(path)?;
            make_special(node, path, as_root)
        }
        r => r,
    };
    if let Some(warning) = made.map_err(|e| target_err(path, e))? {
        return Ok(Some(warning));
    }
    apply_metadata(node, path, as_root).map_err(|e| target_err(path, e))?;
    Ok(None)
}

/// One attempt at creating a special entry; `Ok(Some(w))` when it is not
/// restored at all, for the reason `w`.
fn make_special(node: &Node, path: &Path, as_root: bool) -> std::io::Result<Option<String>> {
    let c = cstr(path)?;
    match node.kind {
        NodeKind::Symlink => {
            let target = std::ffi::OsStr::from_bytes(&node.link_target);
            std::os::unix::fs::symlink(target, path)?;
        }
        NodeKind::Fifo => {
            // SAFETY: `c` is a valid NUL-terminated path.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        NodeKind::CharDevice | NodeKind::BlockDevice => {
            if !as_root {
                return Ok(Some("device node not restored (needs root)".into()));
            }
            let kind = if node.kind == NodeKind::CharDevice {
                libc::S_IFCHR
            } else {
                libc::S_IFBLK
            };
            // SAFETY: `c` is a valid NUL-terminated path.
            if unsafe { libc::mknod(c.as_ptr(), kind | 0o600, node.rdev as libc::dev_t) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        NodeKind::Socket => {
            return Ok(Some(
                "socket not restored (sockets are created by programs)".into(),
            ));
        }
        NodeKind::File | NodeKind::Dir => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a special entry",
            ));
        }
    }
    Ok(None)
}

/// The extended attributes this process may set: all as root, else only
/// the `user.` namespace.
fn settable_xattrs(node: &Node, as_root: bool) -> impl Iterator<Item = (CString, &[u8])> {
    node.xattrs.iter().filter_map(move |(k, v)| {
        if !as_root && !k.starts_with(b"user.") {
            return None;
        }
        CString::new(k.as_slice()).ok().map(|ck| (ck, v.as_slice()))
    })
}

/// The mode to set: without root, setuid/setgid bits are dropped
/// (doc/reliability.md I7).
fn settable_mode(node: &Node, as_root: bool) -> libc::mode_t {
    let mode = if as_root {
        node.mode
    } else {
        node.mode & 0o1777
    };
    mode as libc::mode_t
}

/// Access and modification time, both the node's mtime.
fn node_times(node: &Node) -> [libc::timespec; 2] {
    let ts = libc::timespec {
        tv_sec: node.mtime.sec as libc::time_t,
        tv_nsec: node.mtime.nsec as _,
    };
    [ts, ts]
}

/// Owner (root only), mode, xattrs, then times last (setting anything else
/// would bump them). Never follows a symlink.
pub(crate) fn apply_metadata(node: &Node, path: &Path, as_root: bool) -> std::io::Result<()> {
    let c = cstr(path)?;
    if as_root {
        // SAFETY: `c` is a valid NUL-terminated path; lchown does not follow links.
        if unsafe { libc::lchown(c.as_ptr(), node.uid, node.gid) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (k, v) in settable_xattrs(node, as_root) {
        // SAFETY: valid C strings and a value buffer of the length passed.
        // Failures (unsupported filesystem) are not fatal for a restore.
        unsafe {
            libc::lsetxattr(c.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0);
        }
    }
    // SAFETY: `c` is a valid path; chmod on a non-symlink.
    if node.kind != NodeKind::Symlink
        && unsafe { libc::chmod(c.as_ptr(), settable_mode(node, as_root)) } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    let times = node_times(node);
    // SAFETY: `times` is two valid timespecs; AT_SYMLINK_NOFOLLOW sets the
    // link's own times.
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Remove the `user.*` xattrs of an existing file that the snapshot's
/// entry does not have, so a file kept as it was ends with the snapshot's
/// xattrs. Other namespaces (security labels, ACLs) are the system's and
/// are left alone.
pub(crate) fn remove_extra_user_xattrs(node: &Node, file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: a null buffer of length 0 asks for the size of the list.
    let len = unsafe { libc::flistxattr(fd, std::ptr::null_mut(), 0) };
    if len <= 0 {
        return if len == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        };
    }
    let mut names = vec![0u8; len as usize];
    // SAFETY: `names` is valid for the length passed.
    let len = unsafe { libc::flistxattr(fd, names.as_mut_ptr().cast(), names.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    names.truncate(len as usize);
    for name in names.split(|&b| b == 0) {
        if !name.starts_with(b"user.") || node.xattrs.iter().any(|(k, _)| k == name) {
            continue;
        }
        let Ok(c) = CString::new(name) else { continue };
        // SAFETY: `c` is a valid NUL-terminated name.
        if unsafe { libc::fremovexattr(fd, c.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// [`apply_metadata`] through an open descriptor of a regular file.
pub(crate) fn apply_metadata_fd(node: &Node, file: &File, as_root: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY (all calls below): `fd` is an open descriptor owned by `file`,
    // which outlives them; buffers are valid for the lengths passed.
    if as_root && unsafe { libc::fchown(fd, node.uid, node.gid) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for (k, v) in settable_xattrs(node, as_root) {
        // Failures (unsupported filesystem) are not fatal for a restore.
        unsafe {
            libc::fsetxattr(fd, k.as_ptr(), v.as_ptr().cast(), v.len(), 0);
        }
    }
    if unsafe { libc::fchmod(fd, settable_mode(node, as_root)) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let times = node_times(node);
    if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
