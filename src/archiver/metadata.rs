//! Reading a file's metadata into a tree [`Node`]: mode, owner and names,
//! times in nanoseconds, inode and device (for change detection and
//! hardlinks), symlink targets and extended attributes. Never follows
//! symlinks.

use crate::snapshot::tree::{Node, NodeKind, Time};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// uid/gid → name, looked up once per id.
#[derive(Default)]
pub(crate) struct NameCache {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl NameCache {
    pub fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| lookup_user(uid))
            .clone()
    }
    pub fn group(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| lookup_group(gid))
            .clone()
    }
}

fn lookup_user(uid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: zeroed passwd is a valid out-parameter; getpwuid_r writes into
    // `pwd` and `buf` (whose length we pass) and sets `res` to null or &pwd.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut res);
        if rc == 0 && !res.is_null() && !pwd.pw_name.is_null() {
            return std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    String::new()
}

fn lookup_group(gid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: as in lookup_user, for getgrgid_r.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut res: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut res);
        if rc == 0 && !res.is_null() && !grp.gr_name.is_null() {
            return std::ffi::CStr::from_ptr(grp.gr_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    String::new()
}

pub fn kind_of(md: &Metadata) -> NodeKind {
    let t = md.file_type();
    if t.is_file() {
        NodeKind::File
    } else if t.is_dir() {
        NodeKind::Dir
    } else if t.is_symlink() {
        NodeKind::Symlink
    } else if t.is_fifo() {
        NodeKind::Fifo
    } else if t.is_char_device() {
        NodeKind::CharDevice
    } else if t.is_block_device() {
        NodeKind::BlockDevice
    } else {
        NodeKind::Socket
    }
}

/// Fill the metadata fields of a node (content and subtree stay empty).
pub(crate) fn node_from_metadata(
    name: Vec<u8>,
    path: &Path,
    md: &Metadata,
    names: &mut NameCache,
) -> Node {
    let link_target = if md.file_type().is_symlink() {
        std::fs::read_link(path)
            .map(|t| t.as_os_str().as_bytes().to_vec())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    node_from_parts(name, md, names, link_target, read_xattrs(path))
}

/// [`node_from_metadata`] from a symlink target and xattrs already read.
pub(crate) fn node_from_parts(
    name: Vec<u8>,
    md: &Metadata,
    names: &mut NameCache,
    link_target: Vec<u8>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
) -> Node {
    let kind = kind_of(md);
    let mut n = Node::new(name, kind);
    n.mode = md.mode() & 0o7777;
    n.uid = md.uid();
    n.gid = md.gid();
    n.user = names.user(n.uid);
    n.group = names.group(n.gid);
    n.mtime = Time::new(md.mtime(), md.mtime_nsec());
    n.ctime = Time::new(md.ctime(), md.ctime_nsec());
    n.inode = md.ino();
    n.device = md.dev();
    n.links = md.nlink();
    match kind {
        NodeKind::File => n.size = md.size(),
        NodeKind::Symlink => {
            n.size = link_target.len() as u64;
            n.link_target = link_target;
        }
        NodeKind::CharDevice | NodeKind::BlockDevice => n.rdev = md.rdev(),
        _ => {}
    }
    n.xattrs = xattrs;
    n
}

/// Extended attributes of `path` itself (not of a symlink's target), sorted
/// by name for a canonical tree. Unsupported or unreadable: none.
pub(crate) fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    // SAFETY: a null buffer with size 0 asks only for the needed length.
    let len = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if len <= 0 {
        return Vec::new();
    }
    let mut names = vec![0u8; len as usize];
    // SAFETY: `names` has exactly the length we pass.
    let len = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if len <= 0 {
        return Vec::new();
    }
    names.truncate(len as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(cn) = CString::new(name) else { continue };
        // SAFETY: size query as above.
        let vlen = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        if vlen < 0 {
            continue;
        }
        let mut val = vec![0u8; vlen as usize];
        // SAFETY: `val` has exactly the length we pass.
        let got =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if got < 0 {
            continue;
        }
        val.truncate(got as usize);
        out.push((name.to_vec(), val));
    }
    out.sort();
    out
}
