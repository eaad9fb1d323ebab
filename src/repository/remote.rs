//! What a remote store makes worth remembering on this machine: copies
//! of snapshots and tree packs (the object cache), and when every pack
//! was last listed. On a local disk none of it is used.

use super::object_cache::ObjectCache;
use super::{Repository, lock};
use crate::backend::FileKind;
use crate::error::Result;
use crate::id::PackId;
use std::path::{Path, PathBuf};

/// See [`Repository::pack_listing_due`].
const WRITING: &str = "writing.";
const PACKS_LISTED: &str = "packs-listed";
const PACK_LISTING_EVERY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The `writing.<pid>` marks in `dir` whose process is gone: writers that
/// died before they finished.
fn dead_writer_marks(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(WRITING)?.parse().ok())
                .is_some_and(|pid: u32| !lock::pid_alive(pid))
        })
        .map(|e| e.path())
}

impl Repository {
    /// Should a writer compare every pack in the store with the index now
    /// (refuse lost packs, adopt an interrupted backup's)? Always on a
    /// local disk, where listing is cheap. On a remote store, where listing
    /// 100 000 packs is 100 requests a night, only when a writer on this
    /// machine was interrupted, when the last full listing is a week old,
    /// or without a cache to remember either; `check` and `prune` list
    /// every time.
    pub(crate) fn pack_listing_due(&self) -> bool {
        let Some(dir) = self.cache_dir().filter(|_| self.backend.is_remote()) else {
            return true;
        };
        let interrupted = dead_writer_marks(&dir).next().is_some();
        let listed = std::fs::metadata(dir.join(PACKS_LISTED)).and_then(|m| m.modified());
        interrupted || !listed.is_ok_and(|t| t.elapsed().is_ok_and(|age| age < PACK_LISTING_EVERY))
    }

    /// A full pack listing just agreed with the index: remember when, and
    /// forget the interrupted writers it has dealt with.
    pub(crate) fn pack_listing_done(&self) {
        let Some(dir) = self.cache_dir() else { return };
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let _ = std::fs::write(dir.join(PACKS_LISTED), b"");
        for mark in dead_writer_marks(&dir) {
            let _ = std::fs::remove_file(mark);
        }
    }

    /// Mark (or unmark) this process as writing packs: a mark left behind
    /// means a writer died, so the next one lists the packs.
    pub(crate) fn mark_writing(&self, on: bool) {
        let Some(dir) = self.cache_dir() else { return };
        let mark = dir.join(format!("{WRITING}{}", std::process::id()));
        if on {
            let _ = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(mark, b""));
        } else {
            let _ = std::fs::remove_file(mark);
        }
    }

    /// This repository's directory in the cache root.
    pub(super) fn cache_dir(&self) -> Option<PathBuf> {
        self.cache_root
            .as_ref()
            .map(|r| r.join(self.repo_id.to_hex()))
    }

    /// Copies of snapshots and tree packs, for a remote store with a cache
    /// directory (see [`object_cache`]).
    pub(super) fn object_cache(&self) -> Option<ObjectCache> {
        self.cache_dir()
            .filter(|_| self.backend.is_remote())
            .map(|d| ObjectCache::new(d.join("objects")))
    }

    /// Keep a copy of a tree pack this process uploads, so that the next
    /// backup reads its parent's trees without a request.
    pub(crate) fn keep_tree_pack(&self, pack: &PackId, bytes: &[u8]) {
        if let Some(c) = self.object_cache() {
            c.put(FileKind::Pack, &pack.to_hex(), bytes);
        }
    }

    /// Make sure the object cache holds the tree pack `pack`: one request
    /// for the whole pack instead of one per tree blob, now and on every
    /// later run. Returns whether it does.
    pub(super) fn cache_tree_pack(&self, c: &ObjectCache, pack: &PackId) -> Result<bool> {
        let name = pack.to_hex();
        if c.has(FileKind::Pack, &name) {
            return Ok(true);
        }
        let _one = self.cache_fill.lock().unwrap_or_else(|p| p.into_inner());
        if c.has(FileKind::Pack, &name) {
            return Ok(true);
        }
        let Some(size) = self.index()?.pack_size(pack)? else {
            return Ok(false);
        };
        let bytes = self.backend.get(FileKind::Pack, &name)?;
        if bytes.len() as u64 != size {
            return Ok(false);
        }
        c.put(FileKind::Pack, &name, &bytes);
        Ok(c.has(FileKind::Pack, &name))
    }
}
