//! Fixture trees: a builder, timestamps, extended attributes.

use super::*;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Set atime and mtime of `path` itself (never a symlink's target).
pub fn set_mtime(path: &Path, secs: i64, nsec: i64) {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsec as _,
    };
    let times = [ts, ts];
    let c = cpath(path);
    // SAFETY: valid C string and two valid timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Set an extended attribute on `path` itself.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let c = cpath(path);
    let n = CString::new(name).expect("xattr name");
    // SAFETY: valid C strings; value pointer and length match.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether an error means "extended attributes are not supported here".
pub fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM))
}

/// The `user.*` extended attributes of `path` itself.
pub fn user_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = cpath(path);
    let mut out = BTreeMap::new();
    // SAFETY: a null buffer with size 0 asks for the needed length.
    let len = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if len <= 0 {
        return out;
    }
    let mut names = vec![0u8; len as usize + 256];
    // SAFETY: the buffer has the length we pass.
    let len = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        len >= 0,
        "llistxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    names.truncate(len as usize);
    for name in names.split(|&b| b == 0).filter(|n| n.starts_with(b"user.")) {
        let cn = CString::new(name).expect("xattr name");
        // SAFETY: size query.
        let vlen = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        assert!(
            vlen >= 0,
            "lgetxattr {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        let mut val = vec![0u8; vlen as usize];
        // SAFETY: the buffer has the length we pass.
        let got =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(
            got >= 0,
            "lgetxattr {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        val.truncate(got as usize);
        out.insert(name.to_vec(), val);
    }
    out
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Builds a fixture directory tree. Paths are relative to `root`.
pub struct TreeBuilder {
    pub root: PathBuf,
}

impl TreeBuilder {
    pub fn new(root: impl AsRef<Path>) -> TreeBuilder {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(&root).expect("create fixture root");
        TreeBuilder { root }
    }

    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    fn parent(&self, rel: &Path) -> PathBuf {
        let p = self.root.join(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).expect("create parent dirs");
        }
        p
    }

    pub fn dir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).expect("create dir");
        p
    }

    pub fn file(&self, rel: impl AsRef<Path>, data: &[u8]) -> PathBuf {
        let p = self.parent(rel.as_ref());
        fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    pub fn random_file(&self, rel: impl AsRef<Path>, size: usize, seed: u64) -> PathBuf {
        self.file(rel, &Rng::new(seed).bytes(size))
    }

    pub fn mode(&self, rel: impl AsRef<Path>, mode: u32) {
        let p = self.root.join(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    pub fn symlink(&self, rel: impl AsRef<Path>, target: impl AsRef<Path>) -> PathBuf {
        let p = self.parent(rel.as_ref());
        std::os::unix::fs::symlink(target, &p).expect("symlink");
        p
    }

    pub fn hardlink(&self, rel: impl AsRef<Path>, existing: impl AsRef<Path>) -> PathBuf {
        let p = self.parent(rel.as_ref());
        fs::hard_link(self.root.join(existing), &p).expect("hard link");
        p
    }

    pub fn fifo(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.parent(rel.as_ref());
        let c = cpath(&p);
        // SAFETY: valid C string.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o640) };
        assert_eq!(
            rc,
            0,
            "mkfifo {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
        p
    }

    /// A sparse file of `size` bytes with `writes` at the given offsets.
    pub fn sparse(&self, rel: impl AsRef<Path>, size: u64, writes: &[(u64, &[u8])]) -> PathBuf {
        use std::os::unix::fs::FileExt;
        let p = self.parent(rel.as_ref());
        let f = File::create(&p).expect("create sparse file");
        f.set_len(size).expect("set_len");
        for (off, data) in writes {
            f.write_all_at(data, *off).expect("write into sparse file");
        }
        p
    }

    /// Every path below the root (relative, root excluded), sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk_rel(&self.root, Path::new(""), &mut out);
        out.sort();
        out
    }

    /// Give every entry (and the root) a distinct mtime with nanoseconds,
    /// deepest first so that setting a child does not disturb its directory.
    pub fn set_all_mtimes(&self) {
        let mut all = self.paths();
        all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for (i, rel) in all.iter().enumerate() {
            let i = i as i64;
            set_mtime(
                &self.root.join(rel),
                1_500_000_000 + i * 3_607,
                (i * 123_456_789 + 7) % 1_000_000_000,
            );
        }
        set_mtime(&self.root, 1_400_000_000, 999_999_999);
    }
}

pub(super) fn walk_rel(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let dir = base.join(rel);
    let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for e in rd {
        let e = e.expect("dir entry");
        let r = rel.join(e.file_name());
        out.push(r.clone());
        if fs::symlink_metadata(e.path()).expect("lstat").is_dir() {
            walk_rel(base, &r, out);
        }
    }
}

/// `dst/<abs>` for an absolute `abs`: where `restore --target dst` puts it.
pub fn restored(dst: &Path, abs: &Path) -> PathBuf {
    dst.join(abs.strip_prefix("/").expect("absolute path"))
}
