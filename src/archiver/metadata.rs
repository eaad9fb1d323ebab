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
use std::sync::Arc;

/// uid/gid → name, looked up once per id.
#[derive(Default)]
pub(crate) struct NameCache {
    users: HashMap<u32, Arc<str>>,
    groups: HashMap<u32, Arc<str>>,
}

impl NameCache {
    /// The name, shared with every node of the same owner.
    pub fn user(&mut self, uid: u32) -> Arc<str> {
        self.user_ref(uid).clone()
    }
    pub fn group(&mut self, gid: u32) -> Arc<str> {
        self.group_ref(gid).clone()
    }
    /// The name, without a copy: comparing costs no allocation.
    pub fn user_ref(&mut self, uid: u32) -> &Arc<str> {
        self.users
            .entry(uid)
            .or_insert_with(|| lookup_user(uid).into())
    }
    pub fn group_ref(&mut self, gid: u32) -> &Arc<str> {
        self.groups
            .entry(gid)
            .or_insert_with(|| lookup_group(gid).into())
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

/// Would [`node_from_parts`] build `p` from this entry, content and
/// subtree aside? Field by field, so that an unchanged directory's
/// entries are compared with its parent's tree without building (and
/// allocating) a node for each. `p.flags` must be clear: a node recorded
/// with a problem is never reused as it is.
pub(crate) fn same_node(
    p: &Node,
    md: &Metadata,
    names: &mut NameCache,
    link_target: &[u8],
    xattrs: &[(Vec<u8>, Vec<u8>)],
) -> bool {
    let kind = kind_of(md);
    let (size, rdev, target): (u64, u64, &[u8]) = match kind {
        NodeKind::File => (md.size(), 0, &[]),
        NodeKind::Symlink => (link_target.len() as u64, 0, link_target),
        NodeKind::CharDevice | NodeKind::BlockDevice => (0, md.rdev(), &[]),
        _ => (0, 0, &[]),
    };
    p.flags == 0
        && p.kind == kind
        && p.mode == md.mode() & 0o7777
        && p.uid == md.uid()
        && p.gid == md.gid()
        && p.mtime == Time::new(md.mtime(), md.mtime_nsec())
        && p.ctime == Time::new(md.ctime(), md.ctime_nsec())
        && p.inode == md.ino()
        && p.device == md.dev()
        && p.links == md.nlink()
        && p.size == size
        && p.rdev == rdev
        && p.link_target == target
        && p.xattrs == xattrs
        && p.user == *names.user_ref(p.uid)
        && p.group == *names.group_ref(p.gid)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the walker reads of `path`, built into a node.
    fn built(path: &Path, names: &mut NameCache) -> (Node, Metadata, Vec<u8>) {
        let md = std::fs::symlink_metadata(path).unwrap();
        let target = std::fs::read_link(path)
            .map(|t| t.as_os_str().as_bytes().to_vec())
            .unwrap_or_default();
        let node = node_from_parts(b"x".to_vec(), &md, names, target.clone(), read_xattrs(path));
        (node, md, target)
    }

    #[test]
    fn same_node_agrees_with_node_from_parts_field_by_field() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, b"some bytes").unwrap();
        let link = d.path().join("l");
        std::os::unix::fs::symlink("f", &link).unwrap();
        let dir = d.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let mut names = NameCache::default();
        for path in [&file, &link, &dir] {
            let (node, md, target) = built(path, &mut names);
            assert!(same_node(
                &node,
                &md,
                &mut names,
                &target,
                &node.xattrs.clone()
            ));
            // Any one field off, and the entry is not the node.
            let changes: Vec<fn(&mut Node)> = vec![
                |n| n.mode ^= 0o1,
                |n| n.uid += 1,
                |n| n.gid += 1,
                |n| n.user = format!("{}x", n.user).into(),
                |n| n.group = format!("{}x", n.group).into(),
                |n| n.mtime.nsec ^= 1,
                |n| n.ctime.sec += 1,
                |n| n.size += 1,
                |n| n.inode += 1,
                |n| n.device += 1,
                |n| n.links += 1,
                |n| n.rdev += 1,
                |n| n.flags = 1,
                |n| n.link_target.push(b'x'),
                |n| n.xattrs.push((b"user.a".to_vec(), b"v".to_vec())),
                |n| {
                    n.kind = if n.kind == NodeKind::File {
                        NodeKind::Dir
                    } else {
                        NodeKind::File
                    }
                },
            ];
            for (i, change) in changes.iter().enumerate() {
                let mut p = node.clone();
                change(&mut p);
                assert!(
                    !same_node(&p, &md, &mut names, &target, &node.xattrs),
                    "change {i} of {} went unnoticed",
                    path.display()
                );
            }
        }
    }
}
