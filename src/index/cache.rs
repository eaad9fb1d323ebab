//! The cache file's life: open, stamp, verify, discard and rebuild.

use super::{Index, schema};
use crate::error::{Error, Result};
use crate::id::{BlobId, RepoId, SnapshotId};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The `meta` key of [`Index::mark_complete`]'s mark for `snap`; every such
/// key matches `complete:%` ([`schema::DROP_COMPLETE_MARKS`]).
pub(super) fn complete_key(snap: &SnapshotId) -> String {
    format!("complete:{}", snap.to_hex())
}

/// Days a tree memo is kept after it was made or last kept on.
const TREE_MEMO_DAYS: i64 = 90;

/// Age in days from which a tree memo in use is kept on (see
/// [`Index::tree_memo`]): below half of [`TREE_MEMO_DAYS`] with its
/// spread, so a memo used every month never lapses.
const TREE_MEMO_REFRESH: i64 = 30;

/// Remove the cache database and its WAL and shared-memory files.
pub(super) fn discard_cache_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

pub(super) fn cache_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Cache {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl Index {
    /// Open (or create) the cache at `path` for repository `repo`. A file
    /// that is corrupt, from another repository or another schema is
    /// discarded and rebuilt.
    pub fn open(path: &Path, repo: &RepoId, format_version: u32) -> Result<Index> {
        match Self::try_open(path, repo, format_version) {
            Ok(i) => Ok(i),
            Err(_) => {
                // The cache is disposable: start over from an empty file.
                discard_cache_files(path);
                Self::try_open(path, repo, format_version)
            }
        }
    }

    /// An index held only in memory (tests, benchmarks, one-off tools).
    pub fn in_memory(repo: &RepoId, format_version: u32) -> Result<Index> {
        let conn = Connection::open_in_memory().map_err(|e| cache_err(Path::new(":memory:"), e))?;
        Self::init(conn, Path::new(":memory:"), repo, format_version)
    }

    fn try_open(path: &Path, repo: &RepoId, format_version: u32) -> Result<Index> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| cache_err(path, e))?;
        }
        let conn = Connection::open(path).map_err(|e| cache_err(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(60))
            .map_err(|e| cache_err(path, e))?;
        // WAL: readers never block the writer; NORMAL sync is enough for a
        // cache that is rebuilt when it disagrees with the repository.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| cache_err(path, e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| cache_err(path, e))?;
        // A WAL is reused from its start after a checkpoint but never
        // shrinks by itself: one prune or bulk load at ten million blobs
        // left a ~1 GB file behind for good. With a limit SQLite truncates
        // it back whenever it resets it.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(|e| cache_err(path, e))?;
        // No integrity check here: `PRAGMA quick_check` reads every page,
        // which cost 0.11 s of a 1 s no-change backup at 70k files and grows
        // with the repository. A file that is not a database fails on the
        // first read below; damage deeper in it surfaces as SQLITE_CORRUPT
        // in use, which discards the file (see `err`), and `coffer check`
        // runs the full check (`verify_file`).
        Self::init(conn, path, repo, format_version)
    }

    /// Read every page of the cache at `path` and discard it if SQLite
    /// finds it damaged. Returns false when it was discarded (the next open
    /// rebuilds it from the repository). A byte flipped inside a row leaves
    /// the pages well formed: [`Index::pack_digests`] finds that.
    pub(crate) fn verify_file(path: &Path) -> Result<bool> {
        if !path.exists() {
            return Ok(true);
        }
        let verdict = Connection::open(path).and_then(|c| {
            c.busy_timeout(std::time::Duration::from_secs(60))?;
            c.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
        });
        match verdict {
            Ok(ok) if ok == "ok" => Ok(true),
            _ => {
                discard_cache_files(path);
                Ok(false)
            }
        }
    }

    /// Throw the cache file away and start an empty one in its place,
    /// behind the same handle: a damaged file may fail even the deletes
    /// of [`Index::clear`].
    pub(crate) fn recreate(&self, repo: &RepoId, format_version: u32) -> Result<()> {
        if self.path == Path::new(":memory:") {
            return self.clear();
        }
        let mut c = self.conn();
        // Close the damaged file before it is removed.
        *c = Connection::open_in_memory().map_err(|e| cache_err(&self.path, e))?;
        discard_cache_files(&self.path);
        let fresh = Self::try_open(&self.path, repo, format_version)?;
        *c = fresh.conn.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok(())
    }

    /// SQLite's full check of this cache: every page, and each index
    /// against its table. Unlike [`Index::pack_digests`] it also finds a
    /// damaged key inside the tree (which sends lookups astray without
    /// changing a row), at five seconds per million blobs.
    pub(crate) fn integrity_ok(&self) -> Result<bool> {
        let verdict = self
            .conn()
            .query_row("PRAGMA integrity_check(1)", [], |r| r.get::<_, String>(0));
        match verdict {
            Ok(v) => Ok(v == "ok"),
            Err(e)
                if e.sqlite_error_code().is_some_and(|c| {
                    matches!(
                        c,
                        rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
                    )
                }) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.err(e)),
        }
    }

    fn init(conn: Connection, path: &Path, repo: &RepoId, format_version: u32) -> Result<Index> {
        // SQLite's default 2 MiB page cache does not hold even the interior
        // pages of a ten-million-blob table, so every lookup re-reads them
        // from the file. 32 MiB per schema (main, and temp for prune's and
        // check's sets) is a fixed bound. No mmap: mapped pages would count
        // as our memory and grow with the repository.
        conn.execute_batch("PRAGMA cache_size = -32768; PRAGMA temp.cache_size = -32768;")
            .map_err(|e| cache_err(path, e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| cache_err(path, e))?;
        if version != 0 && version != schema::SCHEMA_VERSION {
            conn.execute_batch(schema::DROP)
                .map_err(|e| cache_err(path, e))?;
        }
        conn.execute_batch(schema::CREATE)
            .map_err(|e| cache_err(path, e))?;
        conn.pragma_update(None, "user_version", schema::SCHEMA_VERSION)
            .map_err(|e| cache_err(path, e))?;
        let idx = Index {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        };
        let stamp = format!("{}:{}", repo.to_hex(), format_version);
        let current: Option<Vec<u8>> = idx
            .conn()
            .query_row("SELECT value FROM meta WHERE key='stamp'", [], |r| r.get(0))
            .optional()
            .map_err(|e| cache_err(path, e))?;
        if current.as_deref() != Some(stamp.as_bytes()) {
            idx.clear()?;
            idx.conn()
                .execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('stamp', ?1)",
                    params![stamp.as_bytes()],
                )
                .map_err(|e| cache_err(path, e))?;
        }
        Ok(idx)
    }

    /// Close the cache file now, leaving an empty in-memory database that
    /// fails every later query. SQLite folds the write-ahead log into the
    /// file and removes it when the last connection closes; a process that
    /// exits with the connection open leaves the log behind, and the next
    /// one to open the cache must first read and checksum all of it (a
    /// 6 MB log, 1 000 frames, after some hundred backups). Another process
    /// still using the cache keeps its log: closing never waits for it.
    pub fn close(&self) {
        let Ok(empty) = Connection::open_in_memory() else {
            return;
        };
        let old = std::mem::replace(&mut *self.conn(), empty);
        // A failed close leaves the log as a crash would: still valid.
        let _ = old.close();
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // SQLite keeps its own consistency; a poisoned guard still holds a
        // usable connection.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn err<E: std::fmt::Display + 'static>(&self, e: E) -> Error {
        use rusqlite::ErrorCode;
        let code = (&e as &dyn std::any::Any)
            .downcast_ref::<rusqlite::Error>()
            .and_then(|e| e.sqlite_error_code());
        if code == Some(ErrorCode::DiskFull) {
            // The cache is only a copy of the repository's index: nothing is
            // lost, but the user has to make room or move it (doc/reliability.md E1).
            return cache_err(
                &self.path,
                "the disk holding the cache is full: free some space, or put the cache on another disk with --cache-dir, and run the command again",
            );
        }
        // Damage found in use: remove the file so that the next run rebuilds
        // it from the repository, instead of failing the same way forever.
        let damaged = matches!(
            code,
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
        );
        if damaged && self.path != Path::new(":memory:") {
            discard_cache_files(&self.path);
            return cache_err(
                &self.path,
                format!(
                    "{e}; the damaged cache was removed: run the command again to rebuild it from the repository"
                ),
            );
        }
        cache_err(&self.path, e)
    }

    /// Shrink the main schema's page cache to `kib` KiB for the rest of
    /// this connection's life. A backup asks for a small one: its lookups
    /// touch one leaf page each at random, which no cache we could afford
    /// holds at scale, while 8 MiB still keeps the interior pages of a
    /// ten-million-blob table; the 32 MiB default stays for check and
    /// prune, which scan. SQLite frees pages beyond the new size.
    pub(crate) fn limit_cache(&self, kib: u32) -> Result<()> {
        self.conn()
            .execute_batch(&format!("PRAGMA cache_size = -{kib}"))
            .map_err(|e| self.err(e))
    }

    /// Forget everything (the stamp stays).
    pub fn clear(&self) -> Result<()> {
        let c = self.conn();
        c.execute_batch("DELETE FROM blobs; DELETE FROM packs; DELETE FROM segments;")
            .and_then(|()| c.execute_batch(schema::DROP_COMPLETE_MARKS))
            .map_err(|e| self.err(e))
    }

    /// Record that every blob snapshot `snap` references is in this index:
    /// its backup has just finished, having checked or stored each one. A
    /// backup whose parent carries this mark need not look up the content
    /// ids it reuses (70k lookups were an eighth of a no-change backup).
    /// Removing blobs ([`Index::clear`], [`Index::retire`]) drops every
    /// mark, so a mark never outlives the blobs it vouches for.
    pub(crate) fn mark_complete(&self, snap: &SnapshotId) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, x'')",
                params![complete_key(snap)],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The encoded memo of tree `id` (`archiver::memo`), if one is kept,
    /// and whether, used on `day`, it is due to be kept on (written again
    /// with this day): once [`TREE_MEMO_REFRESH`] days old, plus up to as
    /// many again by the id, so that the memos of a tree written on one
    /// night are not all due on one later night. Only a read: a lookup
    /// never waits for another writer of the cache.
    pub(crate) fn tree_memo(&self, id: &BlobId, day: i64) -> Result<Option<(Vec<u8>, bool)>> {
        let found: Option<(Vec<u8>, i64)> = self
            .conn()
            .prepare_cached("SELECT memo, day FROM tree_memos WHERE id = ?1")
            .and_then(|mut st| {
                st.query_row(params![id.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        let spread = i64::from(id.as_bytes()[0]) * TREE_MEMO_REFRESH / 256;
        Ok(found.map(|(memo, kept)| (memo, kept < day - TREE_MEMO_REFRESH - spread)))
    }

    /// Keep tree memos made (or kept on) on `day`, days since the epoch,
    /// and forget those kept more than [`TREE_MEMO_DAYS`] before.
    pub(crate) fn keep_tree_memos(&self, memos: &[(BlobId, Vec<u8>)], day: i64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO tree_memos (id, memo, day) VALUES (?1, ?2, ?3)",
                )
                .map_err(|e| self.err(e))?;
            for (id, memo) in memos {
                st.execute(params![id.as_bytes(), memo, day])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.execute(
            "DELETE FROM tree_memos WHERE day < ?1",
            params![day - TREE_MEMO_DAYS],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Does `snap` carry the mark of [`Index::mark_complete`]?
    pub(crate) fn is_complete(&self, snap: &SnapshotId) -> Result<bool> {
        self.conn()
            .query_row(
                "SELECT 1 FROM meta WHERE key = ?1",
                params![complete_key(snap)],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{BlobId, PackId, SegmentId};
    use crate::index::test_seg as seg;

    #[test]
    fn tree_memos_are_kept_replaced_and_forgotten_after_their_days() {
        let idx = Index::in_memory(&RepoId([1; 32]), 1).unwrap();
        // `c` sorts first: no spread added to its age.
        let (a, b, c) = (BlobId([1; 32]), BlobId([2; 32]), BlobId([0; 32]));
        assert_eq!(idx.tree_memo(&a, 100).unwrap(), None);
        idx.keep_tree_memos(&[(a, vec![1]), (b, vec![2]), (c, vec![4])], 100)
            .unwrap();
        assert_eq!(idx.tree_memo(&a, 100).unwrap(), Some((vec![1], false)));
        idx.keep_tree_memos(&[(a, vec![3])], 100 + TREE_MEMO_DAYS)
            .unwrap();
        assert_eq!(idx.tree_memo(&a, 100).unwrap(), Some((vec![3], false)));
        assert_eq!(idx.tree_memo(&b, 100).unwrap(), Some((vec![2], false)));
        // A month on, `c` is due to be kept on: written again, it stays.
        let month = 101 + TREE_MEMO_REFRESH;
        assert_eq!(idx.tree_memo(&c, month).unwrap(), Some((vec![4], true)));
        assert_eq!(
            idx.tree_memo(&c, month - 1).unwrap(),
            Some((vec![4], false))
        );
        idx.keep_tree_memos(&[(c, vec![4])], month).unwrap();
        let day = 101 + TREE_MEMO_DAYS;
        idx.keep_tree_memos(&[], day).unwrap();
        assert_eq!(idx.tree_memo(&b, day).unwrap(), None, "kept past its days");
        // Kept on two months ago, it is due again.
        assert_eq!(idx.tree_memo(&c, day).unwrap(), Some((vec![4], true)));
        assert_eq!(idx.tree_memo(&a, day).unwrap(), Some((vec![3], false)));
        // Spread by id: an id sorting last is due up to a month later.
        let late = BlobId([255; 32]);
        idx.keep_tree_memos(&[(late, vec![5])], day).unwrap();
        let due = day + 1 + TREE_MEMO_REFRESH;
        assert_eq!(idx.tree_memo(&late, due).unwrap(), Some((vec![5], false)));
        assert_eq!(
            idx.tree_memo(&late, due + TREE_MEMO_REFRESH).unwrap(),
            Some((vec![5], true))
        );
        // They describe a tree's bytes, not what the repository holds: a
        // cache cleared to be synced again keeps them.
        idx.clear().unwrap();
        assert_eq!(idx.tree_memo(&a, day).unwrap(), Some((vec![3], false)));
    }

    /// SQLITE_FULL (here from `max_page_count`, as a full disk gives it)
    /// becomes an error that says what to do, and the cache is kept.
    #[test]
    fn a_full_cache_disk_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let idx = Index::open(&path, &RepoId([1; 32]), 1).unwrap();
        let pages: i64 = idx
            .conn()
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        idx.conn()
            .pragma_update(None, "max_page_count", pages + 1)
            .unwrap();
        let big: Vec<u8> = (0..=255).collect();
        let e = idx
            .add_segment(&SegmentId([9; 32]), &seg(12, &big))
            .unwrap_err()
            .to_string();
        assert!(e.contains("disk holding the cache is full"), "{e}");
        assert!(e.contains("--cache-dir"), "{e}");
        assert!(path.exists(), "a full cache was discarded");
    }

    #[test]
    fn a_cache_of_an_older_schema_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let repo = RepoId([1; 32]);
        let idx = Index::open(&path, &repo, 1).unwrap();
        idx.sync(&[SegmentId([1; 32])], |_| Ok(Some(seg(10, &[1]))))
            .unwrap();
        let c = idx.conn();
        // What version 1 had: an index on `pid` alone.
        c.execute_batch(
            "DROP INDEX blobs_by_pack; CREATE INDEX blobs_by_pack ON blobs(pid); PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(c);
        drop(idx);
        let idx = Index::open(&path, &repo, 1).unwrap();
        assert!(idx.segments().unwrap().is_empty());
        assert_eq!(idx.counts().unwrap(), (0, 0));
        let sql: String = idx
            .conn()
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'blobs_by_pack'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(sql.contains("raw_length"), "{sql}");
    }

    #[test]
    fn complete_marks_are_dropped_when_blobs_go() {
        let idx = Index::in_memory(&RepoId([1; 32]), 1).unwrap();
        idx.add_segment(&SegmentId([1; 32]), &seg(10, &[1, 2]))
            .unwrap();
        idx.scratch().prune_begin().unwrap();
        let (a, b) = (SnapshotId([1; 32]), SnapshotId([2; 32]));
        idx.mark_complete(&a).unwrap();
        assert!(idx.is_complete(&a).unwrap() && !idx.is_complete(&b).unwrap());
        // Adding blobs keeps the mark; retiring any pack drops it.
        idx.add_segment(&SegmentId([2; 32]), &seg(11, &[3]))
            .unwrap();
        assert!(idx.is_complete(&a).unwrap());
        idx.retire(&[PackId([11; 32])], &[SegmentId([2; 32])], &[])
            .unwrap();
        assert!(!idx.is_complete(&a).unwrap());
        idx.mark_complete(&b).unwrap();
        idx.clear().unwrap();
        assert!(!idx.is_complete(&b).unwrap());
    }

    #[test]
    fn corrupt_cache_file_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        std::fs::write(&path, b"this is not a database at all, just junk bytes").unwrap();
        let idx = Index::open(&path, &RepoId([1; 32]), 1).unwrap();
        assert_eq!(idx.counts().unwrap(), (0, 0));
    }

    /// Damage past the header: opening stays cheap (no full check), the
    /// first query that meets it removes the file, `verify_file` finds it,
    /// and the next open starts from an empty cache.
    #[test]
    fn damage_inside_the_cache_is_found_and_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let repo = RepoId([1; 32]);
        let damage = |path: &Path| {
            let idx = Index::open(path, &repo, 1).unwrap();
            for p in 0..40u8 {
                let blobs: Vec<u8> = (0..=255u8).collect();
                let mut s = seg(p, &blobs);
                for (i, e) in s.packs[0].entries.iter_mut().enumerate() {
                    e.id.0[1] = p;
                    e.id.0[2] = i as u8;
                }
                idx.add_segment(&SegmentId([p; 32]), &s).unwrap();
            }
            idx.conn()
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
            drop(idx);
            let mut bytes = std::fs::read(path).unwrap();
            assert!(bytes.len() > 64 * 4096);
            for b in &mut bytes[8 * 4096..] {
                *b = 0xa5;
            }
            std::fs::write(path, bytes).unwrap();
        };

        damage(&path);
        assert!(!Index::verify_file(&path).unwrap());
        assert!(!path.exists());
        assert!(Index::verify_file(&path).unwrap());

        damage(&path);
        let idx = Index::open(&path, &repo, 1).unwrap();
        let ids: Vec<BlobId> = (0..40u8)
            .map(|p| {
                let mut id = BlobId([7; 32]);
                id.0[1] = p;
                id.0[2] = 7;
                id
            })
            .collect();
        let err = idx.lookup_many(&ids).unwrap_err().to_string();
        assert!(err.contains("run the command again"), "{err}");
        assert!(!path.exists());
        drop(idx);
        let idx = Index::open(&path, &repo, 1).unwrap();
        assert_eq!(idx.counts().unwrap(), (0, 0));
    }
}
