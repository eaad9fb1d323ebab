//! `dump`: a file's bytes, or a directory as a tar stream, written to any
//! writer (usually stdout). Every blob is authenticated and re-hashed
//! before its bytes are written.

use crate::blob::{BlobKind, BlobSource};
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::snapshot::tree::{Node, NodeKind};
use crate::snapshot::walk::{Visit, walk};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

fn out_err(e: std::io::Error) -> Error {
    Error::Target {
        path: PathBuf::from("<output>"),
        source: e,
    }
}

/// Write a file node's content to `w`.
pub fn dump_file(src: &dyn BlobSource, node: &Node, w: &mut dyn Write) -> Result<u64> {
    let mut n = 0u64;
    for id in &node.content {
        let data = src.read_blob(BlobKind::Data, id)?;
        w.write_all(&data).map_err(out_err)?;
        n += data.len() as u64;
    }
    Ok(n)
}

/// Streams a file's blobs as a `Read`, for the tar builder. A repository
/// error is kept aside and reported after the entry.
struct BlobReader<'a> {
    src: &'a dyn BlobSource,
    ids: std::slice::Iter<'a, BlobId>,
    cur: Vec<u8>,
    pos: usize,
    error: &'a mut Option<Error>,
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.cur.len() {
            let Some(id) = self.ids.next() else {
                return Ok(0);
            };
            match self.src.read_blob(BlobKind::Data, id) {
                Ok(d) => {
                    self.cur = d;
                    self.pos = 0;
                }
                Err(e) => {
                    let msg = e.to_string();
                    *self.error = Some(e);
                    return Err(std::io::Error::other(msg));
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn header(node: &Node, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(node.mode);
    h.set_uid(node.uid as u64);
    h.set_gid(node.gid as u64);
    let _ = h.set_username(&node.user);
    let _ = h.set_groupname(&node.group);
    h.set_mtime(node.mtime.sec.max(0) as u64);
    h.set_size(size);
    h
}

/// Write the tree `root` as a tar archive; entry names are `prefix/…`
/// (relative, no leading `/`).
pub fn dump_tar(
    src: &dyn BlobSource,
    root: &BlobId,
    prefix: &[u8],
    w: &mut dyn Write,
) -> Result<()> {
    let mut b = tar::Builder::new(w);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let strip: &[u8] = prefix.strip_prefix(b"/").unwrap_or(prefix);
    walk(
        src,
        root,
        |rel, node| {
            let mut p = strip.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(rel);
            let path = PathBuf::from(OsStr::from_bytes(&p));
            let io = |e: std::io::Error| out_err(e);
            match node.kind {
                NodeKind::Dir => {
                    let mut h = header(node, tar::EntryType::Directory, 0);
                    b.append_data(&mut h, &path, std::io::empty()).map_err(io)?;
                }
                NodeKind::Symlink => {
                    let mut h = header(node, tar::EntryType::Symlink, 0);
                    b.append_link(&mut h, &path, OsStr::from_bytes(&node.link_target))
                        .map_err(io)?;
                }
                NodeKind::File => {
                    if node.links > 1 {
                        if let Some(first) = links.get(&(node.device, node.inode)) {
                            let mut h = header(node, tar::EntryType::Link, 0);
                            b.append_link(&mut h, &path, first).map_err(io)?;
                            return Ok(Visit::Descend);
                        }
                        links.insert((node.device, node.inode), path.clone());
                    }
                    let mut h = header(node, tar::EntryType::Regular, node.size);
                    let mut error = None;
                    let r = BlobReader {
                        src,
                        ids: node.content.iter(),
                        cur: Vec::new(),
                        pos: 0,
                        error: &mut error,
                    };
                    let res = b.append_data(&mut h, &path, r);
                    if let Some(e) = error {
                        return Err(e);
                    }
                    res.map_err(io)?;
                }
                NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice => {
                    let kind = match node.kind {
                        NodeKind::Fifo => tar::EntryType::Fifo,
                        NodeKind::CharDevice => tar::EntryType::Char,
                        _ => tar::EntryType::Block,
                    };
                    let mut h = header(node, kind, 0);
                    let major = (node.rdev >> 8) & 0xfff;
                    let minor = (node.rdev & 0xff) | ((node.rdev >> 12) & 0xfff00);
                    let _ = h.set_device_major(major as u32);
                    let _ = h.set_device_minor(minor as u32);
                    b.append_data(&mut h, &path, std::io::empty()).map_err(io)?;
                }
                NodeKind::Socket => {}
            }
            Ok(Visit::Descend)
        },
        |_, _| Ok(()),
    )?;
    b.finish().map_err(out_err)?;
    Ok(())
}
