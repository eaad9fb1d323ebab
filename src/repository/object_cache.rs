//! Local copies of immutable objects that a remote store would otherwise
//! be asked for on every run: snapshots (every backup looks for its
//! parent among them) and packs of tree blobs (a backup reads its parent's
//! trees, `ls`, `find` and `diff` read little else). Kept beside the index
//! cache, under the repository id, only for a remote store: on a local
//! disk the repository itself is as near.
//!
//! Safe to trust no more than the store: every object is named by the
//! hash of its sealed bytes, and every use authenticates them (a snapshot
//! is hashed and opened, a tree blob opened with its pack's key), so a
//! damaged copy is an error the caller answers by dropping the copy and
//! asking the store. The copies are sealed as stored: the cache holds no
//! plaintext.

use crate::backend::FileKind;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

pub(crate) struct ObjectCache {
    dir: PathBuf,
}

impl ObjectCache {
    /// The cache under `dir` (created on first write).
    pub fn new(dir: PathBuf) -> ObjectCache {
        ObjectCache { dir }
    }

    fn path(&self, kind: FileKind, name: &str) -> PathBuf {
        self.dir.join(kind.path(name))
    }

    /// The whole copy, if there is one.
    pub fn get(&self, kind: FileKind, name: &str) -> Option<Vec<u8>> {
        fs::read(self.path(kind, name)).ok()
    }

    /// `len` bytes at `offset` of the copy, if there is one that long.
    pub(crate) fn get_range(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Option<Vec<u8>> {
        let f = fs::File::open(self.path(kind, name)).ok()?;
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    pub fn has(&self, kind: FileKind, name: &str) -> bool {
        self.path(kind, name).is_file()
    }

    /// Keep a copy. Failing to is not an error: the cache only saves
    /// requests. Written beside its name and renamed, so a copy is whole or
    /// absent, whatever kills the process.
    pub fn put(&self, kind: FileKind, name: &str, data: &[u8]) {
        let path = self.path(kind, name);
        let Some(dir) = path.parent() else { return };
        if fs::create_dir_all(dir).is_err() {
            return;
        }
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let written = fs::File::create(&tmp).and_then(|mut f| f.write_all(data));
        if written.is_err() || fs::rename(&tmp, &path).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// Drop a copy that did not authenticate.
    pub fn remove(&self, kind: FileKind, name: &str) {
        let _ = fs::remove_file(self.path(kind, name));
    }

    /// Drop every copy of this kind whose name `keep` refuses (objects the
    /// store no longer has: forgotten snapshots, pruned packs).
    pub fn retain(&self, kind: FileKind, keep: impl Fn(&str) -> bool) {
        let base = self.dir.join(kind.dir());
        let mut dirs = vec![base];
        while let Some(d) = dirs.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(p);
                } else if !keep(&e.file_name().to_string_lossy()) {
                    let _ = fs::remove_file(p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_whole_ranged_and_retained_by_name() {
        let d = tempfile::tempdir().unwrap();
        let c = ObjectCache::new(d.path().join("objects"));
        assert!(c.get(FileKind::Snapshot, "aa").is_none());
        c.put(FileKind::Snapshot, "aa", b"sealed");
        c.put(FileKind::Pack, "bb01", b"0123456789");
        assert_eq!(c.get(FileKind::Snapshot, "aa").unwrap(), b"sealed");
        assert_eq!(c.get_range(FileKind::Pack, "bb01", 2, 3).unwrap(), b"234");
        assert!(c.get_range(FileKind::Pack, "bb01", 8, 3).is_none());
        assert!(c.has(FileKind::Pack, "bb01"));
        c.retain(FileKind::Pack, |n| n != "bb01");
        assert!(!c.has(FileKind::Pack, "bb01"));
        c.remove(FileKind::Snapshot, "aa");
        assert!(c.get(FileKind::Snapshot, "aa").is_none());
    }
}
