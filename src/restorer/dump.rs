//! `dump`: a file's bytes, or a directory as a tar stream, written to any
//! writer (usually stdout). Every blob is authenticated and re-hashed
//! before its bytes are written.

use crate::blob::{BlobKind, BlobSource};
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::snapshot::tree::{Node, NodeKind};
use crate::snapshot::walk::{Unreadable, Visit, walk};
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

/// What a GNU header field cannot hold goes into PAX records, which GNU
/// tar, bsdtar and the tar crate all read: nanosecond and pre-1970 mtimes,
/// long owner names, symlink targets that must stay byte-exact, xattrs.
fn header(node: &Node, kind: tar::EntryType, size: u64) -> (tar::Header, Vec<(String, Vec<u8>)>) {
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(node.mode);
    h.set_uid(node.uid as u64);
    h.set_gid(node.gid as u64);
    if h.set_username(&node.user).is_err() {
        pax.push(("uname".into(), node.user.as_bytes().to_vec()));
    }
    if h.set_groupname(&node.group).is_err() {
        pax.push(("gname".into(), node.group.as_bytes().to_vec()));
    }
    h.set_mtime(node.mtime.sec.max(0) as u64);
    if node.mtime.nsec != 0 || node.mtime.sec < 0 {
        pax.push(("mtime".into(), pax_time(node.mtime).into_bytes()));
    }
    for (name, value) in &node.xattrs {
        if let Ok(name) = std::str::from_utf8(name) {
            pax.push((format!("SCHILY.xattr.{name}"), value.clone()));
        }
    }
    h.set_size(size);
    (h, pax)
}

/// `sec.nsec` as PAX writes it; before 1970 the whole value is negative.
fn pax_time(t: crate::snapshot::tree::Time) -> String {
    if t.sec >= 0 || t.nsec == 0 {
        return format!("{}.{:09}", t.sec, t.nsec);
    }
    // sec -2 plus 0.75 s is -1.25 s.
    format!("-{}.{:09}", -(t.sec + 1), 1_000_000_000 - t.nsec)
}

/// Writes tree nodes as tar entries. `dump --archive tar` and `export-tar`
/// both go through here, so the two commands cannot drift apart.
pub struct TarWriter<'a> {
    b: tar::Builder<&'a mut dyn Write>,
    src: &'a dyn BlobSource,
    /// (device, inode) → first name written, to write later names of a
    /// multiply-linked file as hard links to it.
    links: HashMap<(u64, u64), PathBuf>,
}

impl<'a> TarWriter<'a> {
    pub fn new(src: &'a dyn BlobSource, w: &'a mut dyn Write) -> Self {
        TarWriter {
            b: tar::Builder::new(w),
            src,
            links: HashMap::new(),
        }
    }

    /// Every node below the tree `root`, depth first in name order, named
    /// `prefix/…` (relative: a leading `/` is dropped; empty: no prefix).
    /// Returns the directories whose trees could not be read (written as
    /// empty directories), named as in the archive.
    pub fn append_tree(&mut self, root: &BlobId, prefix: &[u8]) -> Result<Vec<Unreadable>> {
        let strip: &[u8] = prefix.strip_prefix(b"/").unwrap_or(prefix);
        let named = |rel: &[u8]| {
            let mut p = strip.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(rel);
            p
        };
        let unreadable = walk(
            self.src,
            root,
            |rel, node| {
                self.append_node(&named(rel), node)?;
                Ok(Visit::Descend)
            },
            |_, _| Ok(()),
        )?;
        Ok(unreadable
            .into_iter()
            .map(|u| Unreadable {
                path: named(&u.path),
                error: u.error,
            })
            .collect())
    }

    /// One entry named `path` (relative); a directory's children are not
    /// included. Sockets have no tar form and are left out.
    pub fn append_node(&mut self, path: &[u8], node: &Node) -> Result<()> {
        let mut name = path.to_vec();
        if node.kind == NodeKind::Dir {
            // As GNU tar names directories, so listings compare equal.
            name.push(b'/');
        }
        let path = PathBuf::from(OsStr::from_bytes(&name));
        let io = |e: std::io::Error| out_err(e);
        let b = &mut self.b;
        match node.kind {
            NodeKind::Dir => {
                let (mut h, pax) = header(node, tar::EntryType::Directory, 0);
                append_pax(b, &pax).map_err(io)?;
                b.append_data(&mut h, &path, std::io::empty()).map_err(io)?;
            }
            NodeKind::Symlink => {
                let (mut h, mut pax) = header(node, tar::EntryType::Symlink, 0);
                // The target is data, not a path to tidy: written raw, as
                // long as the header field allows, else as a PAX record.
                let field = &mut h.as_old_mut().linkname;
                if node.link_target.len() <= field.len() {
                    field[..node.link_target.len()].copy_from_slice(&node.link_target);
                } else {
                    pax.push(("linkpath".into(), node.link_target.clone()));
                }
                append_pax(b, &pax).map_err(io)?;
                b.append_data(&mut h, &path, std::io::empty()).map_err(io)?;
            }
            NodeKind::File => {
                if node.links > 1 {
                    if let Some(first) = self.links.get(&(node.device, node.inode)) {
                        let (mut h, pax) = header(node, tar::EntryType::Link, 0);
                        append_pax(b, &pax).map_err(io)?;
                        b.append_link(&mut h, &path, first).map_err(io)?;
                        return Ok(());
                    }
                    self.links.insert((node.device, node.inode), path.clone());
                }
                let (mut h, pax) = header(node, tar::EntryType::Regular, node.size);
                append_pax(b, &pax).map_err(io)?;
                let mut error = None;
                let r = BlobReader {
                    src: self.src,
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
                let (mut h, pax) = header(node, kind, 0);
                let _ = h.set_device_major(libc::major(node.rdev));
                let _ = h.set_device_minor(libc::minor(node.rdev));
                append_pax(b, &pax).map_err(io)?;
                b.append_data(&mut h, &path, std::io::empty()).map_err(io)?;
            }
            NodeKind::Socket => {}
        }
        Ok(())
    }

    /// Write the end-of-archive blocks.
    pub fn finish(mut self) -> Result<()> {
        self.b.finish().map_err(out_err)
    }
}

fn append_pax(
    b: &mut tar::Builder<&mut dyn Write>,
    pax: &[(String, Vec<u8>)],
) -> std::io::Result<()> {
    b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
}

/// Write the tree `root` as a tar archive; entry names are `prefix/…`
/// (relative, no leading `/`). Returns the directories left empty because
/// their trees could not be read.
pub fn dump_tar(
    src: &dyn BlobSource,
    root: &BlobId,
    prefix: &[u8],
    w: &mut dyn Write,
) -> Result<Vec<Unreadable>> {
    let mut t = TarWriter::new(src, w);
    let unreadable = t.append_tree(root, prefix)?;
    t.finish()?;
    Ok(unreadable)
}

#[cfg(test)]
mod tests {
    use super::pax_time;
    use crate::snapshot::tree::Time;

    #[test]
    fn pax_times_write_negative_values_whole() {
        assert_eq!(pax_time(Time::new(5, 1)), "5.000000001");
        assert_eq!(pax_time(Time::new(0, 0)), "0.000000000");
        // The importer reads "-1.25" as -2 s plus 0.75 s (member.rs).
        assert_eq!(pax_time(Time::new(-2, 750_000_000)), "-1.250000000");
        assert_eq!(pax_time(Time::new(-1, 1)), "-0.999999999");
        assert_eq!(pax_time(Time::new(-3, 0)), "-3.000000000");
    }
}
