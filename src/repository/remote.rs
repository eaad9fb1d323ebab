//! What a store makes worth remembering on this machine: copies of
//! snapshots and tree packs of a remote store (the object cache), and
//! which packs a writer has already compared with the index.

use super::object_cache::ObjectCache;
use super::{Repository, lock};
use crate::backend::{DirStamp, FileKind};
use crate::error::Result;
use crate::id::PackId;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// See [`Repository::pack_check_plan`].
const WRITING: &str = "writing.";
const PACKS_LISTED: &str = "packs-listed";
const PACK_DIRS: &str = "pack-dirs";
const PACK_DIRS_HEADER: &str = "coffer pack-dirs 1";
const PACK_LISTING_EVERY: Duration = Duration::from_secs(7 * 24 * 3600);

/// A directory that changed less than this long before it was stamped is
/// listed again next time: timestamps are coarse (a clock tick of a few
/// milliseconds), so an entry removed in the same tick as the stamp was
/// taken could leave the stamp as it was.
const SETTLED_AFTER: Duration = Duration::from_secs(2);

/// Which packs a writer compares with the index before it stores blobs
/// (refusing lost or damaged packs, adopting an interrupted backup's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PackCheck {
    /// None: nothing changed since the last comparison.
    Skip,
    /// Every pack.
    All,
    /// The packs of the directories of a local repository named by these
    /// first bytes of their packs' names (`0a` for 0x0a), the only ones
    /// that changed.
    Dirs(Vec<u8>),
}

/// A [`PackCheck`] and the directory stamps it was decided on, which
/// [`Repository::pack_check_done`] remembers once the check passed.
pub(crate) struct PackCheckPlan {
    pub(crate) check: PackCheck,
    stamps: Option<Vec<DirStamp>>,
}

/// Which directories changed between the `saved` stamps and `now` (the
/// kind's own directory first, as [`crate::backend::Backend::dir_stamps`]
/// gives them).
fn changed_dirs(saved: &HashMap<String, String>, now: &[DirStamp]) -> PackCheck {
    let Some((base, dirs)) = now.split_first() else {
        return PackCheck::All;
    };
    // A directory came or went, or the layout is not the usual one.
    if saved.get(&base.dir) != Some(&base.stamp) || !base.dir.is_empty() {
        return PackCheck::All;
    }
    let mut changed = Vec::new();
    for d in dirs {
        if saved.get(&d.dir) == Some(&d.stamp) {
            continue;
        }
        match pack_dir_byte(&d.dir) {
            Some(b) => changed.push(b),
            None => return PackCheck::All,
        }
    }
    if changed.is_empty() {
        PackCheck::Skip
    } else {
        PackCheck::Dirs(changed)
    }
}

/// The first byte of the names of the packs in the directory `d`, which
/// must be two lowercase hex digits.
fn pack_dir_byte(d: &str) -> Option<u8> {
    let hex = d.len() == 2 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    u8::from_str_radix(d, 16).ok().filter(|_| hex)
}

/// The stamps saved in `file`; `None` if it is missing or not wholly
/// readable.
fn read_stamps(file: &Path) -> Option<HashMap<String, String>> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut lines = text.lines();
    if lines.next()? != PACK_DIRS_HEADER {
        return None;
    }
    let mut out = HashMap::new();
    for l in lines {
        // The kind's own directory has an empty name: the line starts
        // with the space.
        let (dir, stamp) = l.split_once(' ')?;
        if stamp.is_empty() || stamp.contains(' ') {
            return None;
        }
        out.insert(dir.to_string(), stamp.to_string());
    }
    Some(out)
}

/// The text that [`read_stamps`] reads back: settled directories only, so
/// the others count as changed next time.
fn stamps_text(stamps: &[DirStamp], now: SystemTime) -> String {
    let mut text = format!("{PACK_DIRS_HEADER}\n");
    for d in stamps {
        let settled = now
            .duration_since(d.changed)
            .is_ok_and(|age| age >= SETTLED_AFTER);
        if settled && !d.dir.contains([' ', '\n']) {
            text.push_str(&format!("{} {}\n", d.dir, d.stamp));
        }
    }
    text
}

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

/// Must every pack be listed: a writer on this machine died, or the last
/// full listing (remembered in the cache directory `dir`) is a week old?
fn full_listing_due(dir: &Path) -> bool {
    let interrupted = dead_writer_marks(dir).next().is_some();
    let listed = std::fs::metadata(dir.join(PACKS_LISTED)).and_then(|m| m.modified());
    interrupted || !listed.is_ok_and(|t| t.elapsed().is_ok_and(|age| age < PACK_LISTING_EVERY))
}

impl Repository {
    /// Which packs a writer should compare with the index now.
    ///
    /// On a local disk, the pack directories whose stamps changed since the
    /// last comparison that passed (a pack written, removed or renamed
    /// changes its directory's): a nightly backup of a terabyte repository
    /// then lists the few directories the previous night wrote to, not its
    /// 100 000 packs (0.26 s of `stat`s alone on a 2-core VM). Every pack
    /// when a writer on this machine was interrupted, when the last full
    /// listing is a week old (it also finds a pack cut short in place,
    /// which leaves its directory as it was), or without a cache to
    /// remember either. On a remote store, where listing 100 000 packs is
    /// 100 requests a night, every pack on those same conditions and none
    /// otherwise. `check` and `prune` list every time.
    pub(crate) fn pack_check_plan(&self) -> PackCheckPlan {
        let Some(dir) = self.cache_dir() else {
            // Nowhere to remember stamps: nothing to compare them with.
            return PackCheckPlan {
                check: PackCheck::All,
                stamps: None,
            };
        };
        let stamps = self.backend.dir_stamps(FileKind::Pack).ok().flatten();
        let check = match &stamps {
            _ if full_listing_due(&dir) => PackCheck::All,
            Some(now) => match read_stamps(&dir.join(PACK_DIRS)) {
                Some(saved) => changed_dirs(&saved, now),
                None => PackCheck::All,
            },
            None if self.backend.is_remote() => PackCheck::Skip,
            None => PackCheck::All,
        };
        PackCheckPlan { check, stamps }
    }

    /// The check `plan` asked for passed: remember the directory stamps it
    /// was decided on (taken before the listing, so whatever changed while
    /// it ran is listed next time), and when it listed every pack, when,
    /// forgetting the interrupted writers it has dealt with.
    pub(crate) fn pack_check_done(&self, plan: PackCheckPlan) {
        let Some(dir) = self.cache_dir() else { return };
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        if let Some(stamps) = &plan.stamps {
            let tmp = dir.join(format!("{PACK_DIRS}.tmp-{}", std::process::id()));
            let text = stamps_text(stamps, SystemTime::now());
            if std::fs::write(&tmp, text).is_err()
                || std::fs::rename(&tmp, dir.join(PACK_DIRS)).is_err()
            {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        if plan.check != PackCheck::All {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(dir: &str, stamp: &str, age_secs: u64, now: SystemTime) -> DirStamp {
        DirStamp {
            dir: dir.into(),
            stamp: stamp.into(),
            changed: now - Duration::from_secs(age_secs),
        }
    }

    #[test]
    fn only_directories_whose_stamps_changed_are_listed() {
        let now = SystemTime::now();
        let old = [
            stamp("", "base1", 100, now),
            stamp("0a", "s1", 100, now),
            stamp("ff", "s2", 100, now),
        ];
        let saved = read_back(&stamps_text(&old, now));
        assert_eq!(changed_dirs(&saved, &old), PackCheck::Skip);
        let mut now_dirs = old.to_vec();
        now_dirs[2].stamp = "s2b".into();
        assert_eq!(changed_dirs(&saved, &now_dirs), PackCheck::Dirs(vec![0xff]));
        // A directory came or went: the base changed, list everything.
        now_dirs[0].stamp = "base2".into();
        assert_eq!(changed_dirs(&saved, &now_dirs), PackCheck::All);
        // A directory that is not two hex digits changed: everything.
        let odd = [
            stamp("", "base1", 100, now),
            stamp("0a", "s1", 100, now),
            stamp("ff", "s2", 100, now),
            stamp("zz", "s3", 100, now),
        ];
        assert_eq!(changed_dirs(&saved, &odd), PackCheck::All);
        // Nothing remembered about the base, or no base: everything.
        assert_eq!(changed_dirs(&HashMap::new(), &old), PackCheck::All);
        assert_eq!(changed_dirs(&saved, &[]), PackCheck::All);
        assert_eq!(changed_dirs(&saved, &old[1..]), PackCheck::All);
    }

    #[test]
    fn directories_changed_just_before_the_stamp_are_listed_next_time() {
        let now = SystemTime::now();
        let dirs = [
            stamp("", "b", 100, now),
            stamp("01", "x", 1, now),
            stamp("02", "y", 100, now),
            DirStamp {
                dir: "03".into(),
                stamp: "z".into(),
                changed: now + Duration::from_secs(60),
            },
        ];
        let saved = read_back(&stamps_text(&dirs, now));
        assert_eq!(
            changed_dirs(&saved, &dirs),
            PackCheck::Dirs(vec![0x01, 0x03])
        );
    }

    #[test]
    fn a_damaged_stamp_file_means_list_everything() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(PACK_DIRS);
        assert_eq!(read_stamps(&f), None);
        for bad in [
            "",
            "coffer pack-dirs 2\n 1.2.3.4.5\n",
            "coffer pack-dirs 1\nno-stamp\n",
            "coffer pack-dirs 1\n0a \n",
            "coffer pack-dirs 1\n0a a b\n",
        ] {
            std::fs::write(&f, bad).unwrap();
            assert_eq!(read_stamps(&f), None, "{bad:?}");
        }
        std::fs::write(&f, "coffer pack-dirs 1\n 1.2\n0a 3.4\n").unwrap();
        let got = read_stamps(&f).unwrap();
        assert_eq!(got.get(""), Some(&"1.2".to_string()));
        assert_eq!(got.get("0a"), Some(&"3.4".to_string()));
    }

    fn read_back(text: &str) -> HashMap<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(PACK_DIRS);
        std::fs::write(&f, text).unwrap();
        read_stamps(&f).unwrap()
    }
}
