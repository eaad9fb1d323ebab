//! The FUSE operations (through `fuser`): lookups and listings from the
//! inode table, reads through open files, metadata from the snapshot's
//! nodes. Nothing is ever written: the mount is read-only, and opening a
//! file for writing is refused with EROFS.

use super::inodes::{Inode, Inodes, ROOT};
use super::reader::{Blobs, OpenFile, Source};
use crate::id::SnapshotId;
use crate::snapshot::Snapshot;
use crate::snapshot::tree::{Node, NodeKind, Time};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    ReplyXattr, Request,
};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may keep names and attributes: nothing in a
/// snapshot ever changes.
const TTL: Duration = Duration::from_secs(3600);

/// Called with one line for each file that cannot be read.
pub type Warn = Box<dyn Fn(&str) + Send + Sync>;

/// A repository's snapshots as a FUSE filesystem.
pub struct MountFs {
    inodes: Inodes,
    blobs: Blobs,
    open: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    /// Files already warned about: one line each, however many reads fail.
    warned: Mutex<HashSet<u64>>,
    warn: Warn,
}

impl MountFs {
    /// The view of `snapshots` (oldest first), reading from `src` with at
    /// most `cache_bytes` of decoded file data in memory; the directories
    /// of the layout belong to `uid`:`gid`.
    pub fn new(
        src: Source,
        snapshots: &[(SnapshotId, Snapshot)],
        cache_bytes: usize,
        (uid, gid): (u32, u32),
        warn: Warn,
    ) -> MountFs {
        let root = super::layout_dir(Vec::new(), Time::now(), uid, gid);
        let inodes = Inodes::new(root);
        super::build_layout(&inodes, snapshots, uid, gid);
        MountFs {
            inodes,
            blobs: Blobs::new(src, cache_bytes),
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            warned: Mutex::new(HashSet::new()),
            warn,
        }
    }

    /// Report that `ino` cannot be read (once per file) and give EIO.
    fn failed(&self, ino: u64, e: &crate::Error) -> Errno {
        let first = self
            .warned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ino);
        if first {
            let path = String::from_utf8_lossy(&self.inodes.path(ino)).into_owned();
            (self.warn)(&format!("{path}: cannot be read: {e}"));
        }
        Errno::EIO
    }

    fn children_of(&self, ino: u64) -> Result<Arc<[super::inodes::Child]>, Errno> {
        match self.inodes.children(self.blobs.src.as_ref(), ino) {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(match self.inodes.get(ino) {
                Some(_) => Errno::ENOTDIR,
                None => Errno::ENOENT,
            }),
            Err(e) => Err(self.failed(ino, &e)),
        }
    }

    fn open_file(&self, fh: FileHandle) -> Option<Arc<OpenFile>> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&fh.0).cloned()
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
        NodeKind::Socket => FileType::Socket,
    }
}

fn system_time(t: Time) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nsec));
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.sec as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + nanos
    }
}

/// A device number as the FUSE protocol carries it (the kernel's
/// `new_encode_dev`), from the 64-bit one the snapshot holds.
fn fuse_rdev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn attr(ino: u64, n: &Node) -> FileAttr {
    let size = match n.kind {
        NodeKind::File => n.size,
        NodeKind::Symlink => n.link_target.len() as u64,
        _ => 0,
    };
    let mtime = system_time(n.mtime);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: system_time(n.ctime),
        crtime: mtime,
        kind: file_type(n.kind),
        perm: (n.mode & 0o7777) as u16,
        nlink: match n.kind {
            NodeKind::Dir => 2,
            _ => u32::try_from(n.links).unwrap_or(u32::MAX).max(1),
        },
        uid: n.uid,
        gid: n.gid,
        rdev: fuse_rdev(n.rdev),
        blksize: 4096,
        flags: 0,
    }
}

/// Answer an xattr request of `size` bytes with `data`: its length when
/// asked for the size (0), ERANGE when it does not fit.
fn xattr_reply(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for MountFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Err(e) = self.children_of(parent.0) {
            return reply.error(e);
        }
        let found = self
            .inodes
            .lookup(self.blobs.src.as_ref(), parent.0, name.as_bytes())
            .ok()
            .flatten()
            .and_then(|ino| Some((ino, self.inodes.get(ino)?)));
        match found {
            Some((ino, i)) => reply.entry(&TTL, &attr(ino, &i.node), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inodes.get(ino.0) {
            Some(i) => reply.attr(&TTL, &attr(ino.0, &i.node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inodes.get(ino.0) {
            Some(i) if i.node.kind == NodeKind::Symlink => reply.data(&i.node.link_target),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let Some(i) = self.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if i.node.kind != NodeKind::File {
            return reply.error(Errno::EINVAL);
        }
        match OpenFile::open(self.blobs.src.as_ref(), &i.node.content) {
            Ok(f) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.open
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fh, Arc::new(f));
                // The content never changes: the kernel may keep what it
                // cached from an earlier open.
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Err(e) => reply.error(self.failed(ino.0, &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(f) = self.open_file(fh) else {
            return reply.error(Errno::EBADF);
        };
        match f.read(&self.blobs, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(self.failed(ino.0, &e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let children = match self.children_of(ino.0) {
            Ok(c) => c,
            Err(e) => return reply.error(e),
        };
        let parent = self
            .inodes
            .get(ino.0)
            .map_or(ROOT, |i: Arc<Inode>| i.parent);
        let dots = [(ino.0, &b"."[..]), (parent, &b".."[..])];
        let entries = dots
            .iter()
            .map(|&(i, name)| (i, FileType::Directory, name))
            .chain(
                children
                    .iter()
                    .map(|c| (c.ino, file_type(c.kind), c.name.as_slice())),
            );
        for (n, (i, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(i), n as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(i) = self.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match i.node.xattrs.iter().find(|(k, _)| k == name.as_bytes()) {
            Some((_, v)) => xattr_reply(reply, size, v),
            None => reply.error(Errno::NO_XATTR),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(i) = self.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let mut names = Vec::new();
        for (k, _) in &i.node.xattrs {
            names.extend_from_slice(k);
            names.push(0);
        }
        xattr_reply(reply, size, &names);
    }

    fn access(
        &self,
        _req: &Request,
        ino: INodeNo,
        mask: fuser::AccessFlags,
        reply: fuser::ReplyEmpty,
    ) {
        if self.inodes.get(ino.0).is_none() {
            reply.error(Errno::ENOENT);
        } else if mask.contains(fuser::AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_and_times_convert() {
        let dev = libc::makedev(8, 0x123);
        assert_eq!(fuse_rdev(dev), 0x23 | (8 << 8) | (0x100 << 12));
        assert_eq!(
            system_time(Time {
                sec: -2,
                nsec: 500_000_000
            }),
            UNIX_EPOCH - Duration::from_millis(1500)
        );
    }
}
