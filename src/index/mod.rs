//! The repository index, queried through a local SQLite cache
//! (doc/design.md invariant 4).
//!
//! The source of truth is the set of index segments in the repository; the
//! SQLite file is a cache of their union, stamped with the repository id,
//! the format version and the exact set of segments it holds. [`Index::sync`]
//! compares that set with a fresh listing: new segments are added, and if
//! any cached segment has disappeared (a prune replaced it) the cache is
//! rebuilt, so a cache that says "already stored" never outlives a prune
//! (doc/reliability.md §0.9). Each segment is added in one transaction, so a
//! kill mid-update leaves the cache at the previous consistent state.
//!
//! Lookups are indexed B-tree queries: memory stays at SQLite's page cache
//! however large the repository grows.

pub mod schema;
pub mod segment;

use crate::blob::BlobKind;
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId, RepoId, SegmentId, SnapshotId};
use crate::pack::PackEntry;
use rusqlite::{Connection, OptionalExtension, params};
use segment::{IndexedPack, Segment};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One row of `id, kind, offset, length, raw_length`.
type EntryRow = (Vec<u8>, u8, u32, u32, u32);

fn entry_row(r: &rusqlite::Row) -> rusqlite::Result<EntryRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

/// Where a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: PackId,
    pub entry: PackEntry,
}

pub struct Index {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// The `meta` key of [`Index::mark_complete`]'s mark for `snap`; every such
/// key matches `complete:%` ([`schema::DROP_COMPLETE_MARKS`]).
fn complete_key(snap: &SnapshotId) -> String {
    format!("complete:{}", snap.to_hex())
}

/// Remove the cache database and its WAL and shared-memory files.
fn discard_cache_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

fn cache_err(path: &Path, e: impl std::fmt::Display) -> Error {
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
    pub fn verify_file(path: &Path) -> Result<bool> {
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
    pub fn recreate(&self, repo: &RepoId, format_version: u32) -> Result<()> {
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
    pub fn integrity_ok(&self) -> Result<bool> {
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

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // SQLite keeps its own consistency; a poisoned guard still holds a
        // usable connection.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err<E: std::fmt::Display + 'static>(&self, e: E) -> Error {
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
    pub fn mark_complete(&self, snap: &SnapshotId) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, x'')",
                params![complete_key(snap)],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Does `snap` carry the mark of [`Index::mark_complete`]?
    pub fn is_complete(&self, snap: &SnapshotId) -> Result<bool> {
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

    /// The segments the cache was built from.
    pub fn segments(&self) -> Result<HashSet<SegmentId>> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT id FROM segments")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.err(e))?;
        let mut out = HashSet::new();
        for r in rows {
            let b = r.map_err(|e| self.err(e))?;
            out.insert(SegmentId::from_slice(&b).ok_or_else(|| self.err("bad segment id"))?);
        }
        Ok(out)
    }

    /// Bring the cache in line with the listed segments. `load` fetches and
    /// decrypts one segment, or returns `None` for a damaged one, which is
    /// skipped (and retried next time). Returns true when a full rebuild
    /// happened.
    pub fn sync(
        &self,
        listed: &[SegmentId],
        load: impl Fn(&SegmentId) -> Result<Option<Segment>>,
    ) -> Result<bool> {
        let have = self.segments()?;
        let want: HashSet<SegmentId> = listed.iter().copied().collect();
        let rebuild = !have.is_subset(&want);
        if rebuild {
            self.clear()?;
        }
        let have = if rebuild { HashSet::new() } else { have };
        let new: Vec<&SegmentId> = listed.iter().filter(|id| !have.contains(id)).collect();
        if have.is_empty() && new.len() > 1 {
            self.bulk_load(&new, &load)?;
        } else {
            for id in new {
                if let Some(seg) = load(id)? {
                    self.add_segment(id, &seg)?;
                }
            }
        }
        Ok(rebuild)
    }

    /// Add many segments in one transaction, through the staging table
    /// ([`schema::STAGING`]); meant for an empty cache, correct for any (a
    /// concurrent process may have filled it meanwhile: rows already there
    /// are ignored). A kill rolls back to the previous state.
    fn bulk_load(
        &self,
        ids: &[&SegmentId],
        load: &impl Fn(&SegmentId) -> Result<Option<Segment>>,
    ) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        tx.execute_batch(schema::STAGING).map_err(|e| self.err(e))?;
        {
            let mut ins_seg = tx
                .prepare_cached("INSERT OR IGNORE INTO segments (id) VALUES (?1)")
                .map_err(|e| self.err(e))?;
            for id in ids {
                let Some(seg) = load(id)? else { continue };
                self.insert_packs(
                    &tx,
                    &seg.packs,
                    "INSERT INTO staging (id, pid, kind, offset, length, raw_length) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                ins_seg
                    .execute(params![&id.0[..]])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.execute_batch(schema::UNSTAGE).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Add one segment's packs and blobs, atomically.
    pub fn add_segment(&self, id: &SegmentId, seg: &Segment) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        self.insert_packs(
            &tx,
            &seg.packs,
            "INSERT OR IGNORE INTO blobs (id, pid, kind, offset, length, raw_length) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO segments (id) VALUES (?1)",
            params![&id.0[..]],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Insert `packs` (known ones are kept) and their blob rows through
    /// `blob_sql`, which takes (id, pid, kind, offset, length, raw_length):
    /// into `blobs` directly, or into the staging table of a bulk load.
    fn insert_packs(&self, tx: &Connection, packs: &[IndexedPack], blob_sql: &str) -> Result<()> {
        let mut ins_pack = tx
            .prepare_cached("INSERT OR IGNORE INTO packs (id, size) VALUES (?1, ?2)")
            .map_err(|e| self.err(e))?;
        let mut get_pid = tx
            .prepare_cached("SELECT pid FROM packs WHERE id = ?1")
            .map_err(|e| self.err(e))?;
        let mut ins_blob = tx.prepare_cached(blob_sql).map_err(|e| self.err(e))?;
        for p in packs {
            ins_pack
                .execute(params![&p.id.0[..], p.size as i64])
                .map_err(|e| self.err(e))?;
            let pid: i64 = get_pid
                .query_row(params![&p.id.0[..]], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            for e in &p.entries {
                ins_blob
                    .execute(params![
                        &e.id.0[..],
                        pid,
                        e.kind as u8,
                        e.offset,
                        e.length,
                        e.raw_length
                    ])
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    /// Start staging a prune's changes (see [`Index::retire`]).
    pub fn prune_begin(&self) -> Result<()> {
        self.conn()
            .execute_batch(schema::PRUNE_BEGIN)
            .map_err(|e| self.err(e))
    }

    /// Stage a pack prune wrote; the cache lists it from [`Index::retire`].
    pub fn stage_pack(&self, pack: &IndexedPack) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT OR IGNORE INTO new_packs (id, size) VALUES (?1, ?2)",
            params![&pack.id.0[..], pack.size as i64],
        )
        .map_err(|e| self.err(e))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO new_blobs (pack, id, kind, offset, length, raw_length) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(|e| self.err(e))?;
            for e in &pack.entries {
                st.execute(params![
                    &pack.id.0[..],
                    &e.id.0[..],
                    e.kind as u8,
                    e.offset,
                    e.length,
                    e.raw_length
                ])
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Bring the cache from the old segments to prune's new ones in one
    /// transaction, instead of a rebuild from every new segment: forget
    /// `retired` packs and `old` segments, add the staged packs, and
    /// record `new` segments. Those list the staged packs and packs whose
    /// rows prune copied from this cache, so the result is what a rebuild
    /// gives. Prune calls it before deleting anything: a crash then leaves
    /// old segments the next sync adds back (with these packs' rows); a
    /// cache another process rebuilt meanwhile loses the same rows, found
    /// by pack id.
    pub fn retire(&self, retired: &[PackId], old: &[SegmentId], new: &[SegmentId]) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        {
            let mut mark = tx
                .prepare("INSERT OR IGNORE INTO retired (pid) SELECT pid FROM packs WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            for p in retired {
                mark.execute(params![&p.0[..]]).map_err(|e| self.err(e))?;
            }
            let mut drop_seg = tx
                .prepare("DELETE FROM segments WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            for s in old {
                drop_seg
                    .execute(params![&s.0[..]])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.execute_batch(schema::DROP_COMPLETE_MARKS)
            .map_err(|e| self.err(e))?;
        tx.execute_batch(schema::RETIRE).map_err(|e| self.err(e))?;
        {
            let mut add_seg = tx
                .prepare("INSERT OR IGNORE INTO segments (id) VALUES (?1)")
                .map_err(|e| self.err(e))?;
            for s in new {
                add_seg
                    .execute(params![&s.0[..]])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Where a blob is stored (any one copy).
    pub fn lookup(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        let c = self.conn();
        self.lookup_in(&c, id)
    }

    /// [`Index::lookup`] for many ids in one read transaction: one lock
    /// of the cache instead of one per blob.
    pub fn lookup_many(&self, ids: &[BlobId]) -> Result<Vec<Option<BlobLocation>>> {
        let c = self.conn();
        let tx = c.unchecked_transaction().map_err(|e| self.err(e))?;
        let out = ids
            .iter()
            .map(|id| self.lookup_in(&tx, id))
            .collect::<Result<Vec<_>>>()?;
        tx.finish().map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn lookup_in(&self, c: &Connection, id: &BlobId) -> Result<Option<BlobLocation>> {
        let mut st = c
            .prepare_cached(
                "SELECT p.id, b.kind, b.offset, b.length, b.raw_length FROM blobs b JOIN packs p ON p.pid = b.pid WHERE b.id = ?1 LIMIT 1",
            )
            .map_err(|e| self.err(e))?;
        let row = st
            .query_row(params![&id.0[..]], entry_row)
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((pack, kind, offset, length, raw_length)) = row else {
            return Ok(None);
        };
        let pack = PackId::from_slice(&pack).ok_or_else(|| self.err("bad pack id"))?;
        let kind = BlobKind::from_u8(kind).ok_or_else(|| self.err("bad blob kind"))?;
        Ok(Some(BlobLocation {
            pack,
            entry: PackEntry {
                kind,
                id: *id,
                offset,
                length,
                raw_length,
            },
        }))
    }

    pub fn contains(&self, id: &BlobId) -> Result<bool> {
        let c = self.conn();
        let mut st = c
            .prepare_cached("SELECT 1 FROM blobs WHERE id = ?1 LIMIT 1")
            .map_err(|e| self.err(e))?;
        st.exists(params![&id.0[..]]).map_err(|e| self.err(e))
    }

    /// The size the index records for `pack`, if it knows the pack.
    pub fn pack_size(&self, pack: &PackId) -> Result<Option<u64>> {
        let c = self.conn();
        let mut st = c
            .prepare_cached("SELECT size FROM packs WHERE id = ?1")
            .map_err(|e| self.err(e))?;
        st.query_row(params![&pack.0[..]], |r| r.get::<_, i64>(0))
            .optional()
            .map(|s| s.map(|s| s as u64))
            .map_err(|e| self.err(e))
    }

    /// Every indexed pack and its recorded size.
    pub fn packs(&self) -> Result<Vec<(PackId, u64)>> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT id, size FROM packs ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let (id, size) = r.map_err(|e| self.err(e))?;
            out.push((
                PackId::from_slice(&id).ok_or_else(|| self.err("bad pack id"))?,
                size as u64,
            ));
        }
        Ok(out)
    }

    /// Distinct blobs by kind, each counted once however many packs hold
    /// it: every indexed blob, or (`used_only`) those in the used set.
    pub fn blob_totals(&self, used_only: bool) -> Result<Vec<BlobTotals>> {
        let sql = if used_only {
            "SELECT kind, COUNT(*), SUM(length), SUM(raw_length) FROM \
             (SELECT b.kind AS kind, b.length AS length, b.raw_length AS raw_length \
              FROM used u JOIN blobs b ON b.id = u.id GROUP BY u.id) GROUP BY kind ORDER BY kind"
        } else {
            "SELECT kind, COUNT(*), SUM(length), SUM(raw_length) FROM \
             (SELECT kind, length, raw_length FROM blobs GROUP BY id) GROUP BY kind ORDER BY kind"
        };
        let c = self.conn();
        let mut st = c.prepare(sql).map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, u8>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let (kind, count, stored, raw) = r.map_err(|e| self.err(e))?;
            out.push(BlobTotals {
                kind: BlobKind::from_u8(kind).ok_or_else(|| self.err("bad blob kind"))?,
                count: count as u64,
                stored_bytes: stored as u64,
                raw_bytes: raw as u64,
            });
        }
        Ok(out)
    }

    /// Copies of blobs beyond the first, whether used or not: (count,
    /// stored bytes). One scan in key order.
    pub fn duplicates(&self) -> Result<(u64, u64)> {
        let c = self.conn();
        let (n, bytes): (i64, i64) = c
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(length), 0) FROM \
                 (SELECT length, ROW_NUMBER() OVER (PARTITION BY id ORDER BY pid) AS copy FROM blobs) \
                 WHERE copy > 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        Ok((n as u64, bytes as u64))
    }

    /// Sum of the recorded sizes of every indexed pack.
    pub fn packs_bytes(&self) -> Result<u64> {
        let c = self.conn();
        let n: i64 = c
            .query_row("SELECT COALESCE(SUM(size), 0) FROM packs", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    /// (blob count, pack count).
    pub fn counts(&self) -> Result<(u64, u64)> {
        let c = self.conn();
        let blobs: i64 = c
            .query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let packs: i64 = c
            .query_row("SELECT COUNT(*) FROM packs", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok((blobs as u64, packs as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(pack: u8, blobs: &[u8]) -> Segment {
        let mut off = 0;
        let entries = blobs
            .iter()
            .map(|&b| {
                let e = PackEntry {
                    kind: BlobKind::Data,
                    id: BlobId([b; 32]),
                    offset: off,
                    length: 100,
                    raw_length: 90,
                };
                off += 100;
                e
            })
            .collect();
        Segment {
            packs: vec![IndexedPack {
                id: PackId([pack; 32]),
                size: off as u64 + 200,
                entries,
            }],
        }
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
    fn sync_adds_and_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let repo = RepoId([1; 32]);
        let idx = Index::open(&path, &repo, 1).unwrap();
        let s1 = SegmentId([1; 32]);
        let s2 = SegmentId([2; 32]);
        let load = |id: &SegmentId| {
            Ok(Some(if id.0[0] == 1 {
                seg(10, &[1, 2])
            } else {
                seg(11, &[3])
            }))
        };
        assert!(!idx.sync(&[s1], load).unwrap());
        assert!(idx.contains(&BlobId([1; 32])).unwrap());
        assert!(!idx.contains(&BlobId([3; 32])).unwrap());
        let loc = idx.lookup(&BlobId([2; 32])).unwrap().unwrap();
        assert_eq!(loc.pack, PackId([10; 32]));
        assert_eq!(loc.entry.offset, 100);
        assert!(!idx.sync(&[s1, s2], load).unwrap());
        assert!(idx.contains(&BlobId([3; 32])).unwrap());
        // s1 disappeared (prune): the cache must forget its blobs.
        let many = idx
            .contains_many(&[BlobId([1; 32]), BlobId([3; 32]), BlobId([9; 32])])
            .unwrap();
        assert_eq!(many.len(), 2);
        assert!(many.contains(&BlobId([1; 32])) && !many.contains(&BlobId([9; 32])));
        assert!(idx.sync(&[s2], load).unwrap());
        assert!(!idx.contains(&BlobId([1; 32])).unwrap());
        assert!(idx.contains(&BlobId([3; 32])).unwrap());
        drop(idx);
        // Reopening keeps the content; another repository id wipes it.
        let idx = Index::open(&path, &repo, 1).unwrap();
        assert!(idx.contains(&BlobId([3; 32])).unwrap());
        drop(idx);
        let idx = Index::open(&path, &RepoId([2; 32]), 1).unwrap();
        assert!(!idx.contains(&BlobId([3; 32])).unwrap());
        assert!(idx.segments().unwrap().is_empty());
    }

    #[test]
    fn bulk_rebuild_holds_exactly_the_listed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.sqlite"), &RepoId([1; 32]), 1).unwrap();
        // Pack 12 is in two segments, blob 3 in two packs, segment 4 damaged.
        let load = |id: &SegmentId| {
            Ok(match id.0[0] {
                1 => Some(seg(10, &[1, 2])),
                2 => Some(seg(11, &[3, 4])),
                3 => Some(Segment {
                    packs: [seg(12, &[3, 5]).packs, seg(12, &[3, 5]).packs].concat(),
                }),
                _ => None,
            })
        };
        let all = [1, 2, 3, 4].map(|i| SegmentId([i; 32]));
        // A fresh cache takes the bulk path (more than one new segment).
        assert!(!idx.sync(&all, load).unwrap());
        assert_eq!(idx.counts().unwrap(), (6, 3));
        assert_eq!(idx.segments().unwrap().len(), 3);
        assert_eq!(idx.packs_of(&BlobId([3; 32])).unwrap().len(), 2);
        assert_eq!(idx.pack_entries(&PackId([12; 32])).unwrap().len(), 2);
        let loc = idx.lookup(&BlobId([4; 32])).unwrap().unwrap();
        assert_eq!((loc.pack, loc.entry.offset), (PackId([11; 32]), 100));
        // Segment 1 replaced (a prune): rebuilt in bulk without its blobs.
        assert!(idx.sync(&all[1..], load).unwrap());
        assert_eq!(idx.counts().unwrap(), (4, 2));
        assert!(!idx.contains(&BlobId([1; 32])).unwrap());
        assert!(idx.contains(&BlobId([5; 32])).unwrap());
        // The per-pack index is back, and a later segment is added alone.
        let c = idx.conn();
        let n: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'blobs_by_pack'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        drop(c);
        assert_eq!(n, 1);
        assert!(!idx.sync(&[all[1], all[2], all[0]], load).unwrap());
        assert_eq!(idx.counts().unwrap(), (6, 3));
    }

    #[test]
    fn used_and_moved_sets() {
        let idx = Index::in_memory(&RepoId([1; 32]), 1).unwrap();
        idx.used_reset().unwrap();
        idx.used_insert_many(&[BlobId([1; 32]), BlobId([2; 32]), BlobId([1; 32])])
            .unwrap();
        assert!(idx.used_contains(&BlobId([2; 32])).unwrap());
        assert!(!idx.used_insert(&BlobId([1; 32])).unwrap());
        let (a, b) = (BlobId([1; 32]), BlobId([3; 32]));
        assert_eq!(idx.used_insert_new(&[a, b, b]).unwrap(), [b]);
        assert!(idx.moved_insert(&BlobId([1; 32])).unwrap());
        assert!(!idx.moved_insert(&BlobId([1; 32])).unwrap());
        // A new plan starts from empty sets.
        idx.used_reset().unwrap();
        assert!(!idx.used_contains(&BlobId([2; 32])).unwrap());
        assert!(idx.moved_insert(&BlobId([1; 32])).unwrap());
    }

    #[test]
    fn refs_resolve_finds_exactly_the_unindexed_references() {
        let idx = Index::in_memory(&RepoId([1; 32]), 1).unwrap();
        idx.add_segment(&SegmentId([1; 32]), &seg(10, &[2, 4, 6, 8]))
            .unwrap();
        idx.add_segment(&SegmentId([2; 32]), &seg(11, &[4, 9]))
            .unwrap();
        idx.refs_reset().unwrap();
        // Unsorted, repeated, before the first, between and after the last.
        let ids = [9, 1, 4, 5, 4, 1, 2, 200, 8, 7, 255, 6].map(|b| BlobId([b; 32]));
        idx.refs_add(&ids[..5]).unwrap();
        idx.refs_add(&ids[5..]).unwrap();
        assert_eq!(idx.refs_resolve().unwrap(), 5);
        let missing = idx.missing_among(&ids).unwrap();
        let mut got: Vec<u8> = missing.iter().map(|b| b.0[0]).collect();
        got.sort();
        assert_eq!(got, vec![1, 5, 7, 200, 255]);
        // A new list starts empty; nothing referenced, nothing missing.
        idx.refs_reset().unwrap();
        assert_eq!(idx.refs_resolve().unwrap(), 0);
        assert!(idx.missing_among(&ids).unwrap().is_empty());
        idx.refs_add(&[BlobId([3; 32])]).unwrap();
        assert_eq!(idx.refs_resolve().unwrap(), 1);
        // An empty index: every reference is missing.
        let empty = Index::in_memory(&RepoId([1; 32]), 1).unwrap();
        empty.refs_reset().unwrap();
        empty.refs_add(&ids).unwrap();
        assert_eq!(empty.refs_resolve().unwrap(), 10);
    }

    /// The queries that walk a pack's blobs, or all blobs in order, read
    /// no table rows at random: that is what makes `check` and `prune`
    /// affordable at ten million blobs.
    #[test]
    fn pack_and_ordered_scans_use_no_random_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.sqlite"), &RepoId([1; 32]), 1).unwrap();
        let load = |id: &SegmentId| Ok(Some(seg(id.0[0], &[id.0[0], 7])));
        idx.sync(&[1, 2, 3].map(|i| SegmentId([i; 32])), load)
            .unwrap();
        idx.refs_reset().unwrap();
        let c = idx.conn();
        let plan = |sql: &str| -> String {
            let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = st.query_map([], |r| r.get::<_, String>(3)).unwrap();
            rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
        };
        let entries = plan(
            "SELECT b.id, b.kind, b.offset, b.length, b.raw_length FROM packs p JOIN blobs b ON b.pid = p.pid WHERE p.id = x'00' ORDER BY b.offset",
        );
        assert!(
            entries.contains("COVERING INDEX blobs_by_pack") && !entries.contains("TEMP B-TREE"),
            "{entries}"
        );
        let all = plan("SELECT id FROM blobs ORDER BY id");
        assert!(!all.contains("TEMP B-TREE"), "{all}");
        drop(c);
        let pe = idx.pack_entries(&PackId([2; 32])).unwrap();
        assert_eq!(pe.iter().map(|e| e.offset).collect::<Vec<_>>(), [0, 100]);
        assert_eq!(pe[1].id, BlobId([7; 32]));
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
    fn usage_counts_one_copy_of_each_used_blob_and_names_missing_ones() {
        let idx = Index::in_memory(&RepoId([1; 32]), 1).unwrap();
        // Blob 4 is in packs 10 and 11; pack 12 holds nothing used.
        idx.add_segment(&SegmentId([1; 32]), &seg(10, &[2, 4, 6]))
            .unwrap();
        idx.add_segment(&SegmentId([2; 32]), &seg(11, &[4, 9]))
            .unwrap();
        idx.add_segment(&SegmentId([3; 32]), &seg(12, &[3, 5]))
            .unwrap();
        idx.used_reset().unwrap();
        idx.refs_reset().unwrap();
        idx.used_insert(&BlobId([9; 32])).unwrap();
        idx.refs_add(&[1, 4, 2, 4, 7, 255].map(|b| BlobId([b; 32])))
            .unwrap();
        idx.used_from_refs().unwrap();
        assert!(idx.used_contains(&BlobId([4; 32])).unwrap());
        let (usage, missing) = idx.usage(10).unwrap();
        let got: Vec<(u8, u64, u64, u64, u64, u64, u64)> = usage
            .iter()
            .map(|u| {
                let (p, s) = (u.pack.0[0], u.size);
                (
                    p,
                    s,
                    u.blobs,
                    u.bytes,
                    u.used_blobs,
                    u.used_bytes,
                    u.duplicate_blobs,
                )
            })
            .collect();
        // Blob 4 is used in pack 10 (the first to hold it), a duplicate in 11.
        assert_eq!(
            got,
            [
                (10, 500, 3, 300, 2, 200, 0),
                (11, 400, 2, 200, 1, 100, 1),
                (12, 400, 2, 200, 0, 0, 0)
            ]
        );
        assert_eq!(idx.duplicates().unwrap(), (1, 100));
        assert_eq!(missing, [1, 7, 255].map(|b| BlobId([b; 32])));
        assert_eq!(idx.usage(2).unwrap().1.len(), 2);
        // Nothing used: every pack is unused, nothing is missing.
        idx.used_reset().unwrap();
        let (usage, missing) = idx.usage(10).unwrap();
        assert!(usage.iter().all(|u| u.used_blobs == 0) && usage.len() == 3);
        assert!(missing.is_empty());
    }

    /// The digests of a cache agree with the segments it was built from,
    /// and no longer once a row or a pack's size is altered.
    #[test]
    fn pack_digests_match_the_segments_until_a_row_changes() {
        let idx = Index::in_memory(&RepoId([1; 32]), 1).unwrap();
        let (a, b) = (seg(10, &[1, 2, 3]), seg(11, &[4]));
        idx.add_segment(&SegmentId([1; 32]), &a).unwrap();
        idx.add_segment(&SegmentId([2; 32]), &b).unwrap();
        let sum = |s: &Segment| {
            s.packs[0]
                .entries
                .iter()
                .fold(0u128, |x, e| x.wrapping_add(entry_digest(e)))
        };
        let judge = || {
            let d = idx.pack_digests(false).unwrap();
            assert_eq!(d.segments.len(), 2);
            (
                d.packs[&PackId([10; 32])].matches(500, sum(&a)),
                d.packs[&PackId([11; 32])].matches(300, sum(&b)),
                d.orphans,
            )
        };
        assert_eq!(judge(), (true, true, 0));
        idx.conn()
            .execute(
                "UPDATE blobs SET length = 99 WHERE id = ?1",
                params![&[2u8; 32][..]],
            )
            .unwrap();
        assert_eq!(judge(), (false, true, 0));
        idx.conn()
            .execute(
                "UPDATE packs SET size = 1 WHERE id = ?1",
                params![&[11u8; 32][..]],
            )
            .unwrap();
        assert_eq!(judge(), (false, false, 0));
    }

    #[test]
    fn complete_marks_are_dropped_when_blobs_go() {
        let idx = Index::in_memory(&RepoId([1; 32]), 1).unwrap();
        idx.add_segment(&SegmentId([1; 32]), &seg(10, &[1, 2]))
            .unwrap();
        idx.prune_begin().unwrap();
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

/// What [`Index::pack_digests`] read.
#[derive(Debug, Default)]
pub struct CacheDigests {
    pub packs: HashMap<PackId, PackDigest>,
    /// Pids that have blob rows but no pack.
    pub orphans: u64,
    /// The segments the cache holds.
    pub segments: HashSet<SegmentId>,
}

/// One pack as the cache holds it ([`Index::pack_digests`]): its recorded
/// size and the sum of [`entry_digest`] over its blobs, read through the
/// table and through the per-pack index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackDigest {
    pub size: u64,
    pub table: u128,
    pub by_pack: u128,
    /// Whether looking the pack up by its id finds this pack.
    pub id_lookup: bool,
    /// A row no segment could list (an unknown kind, a bad id).
    pub damaged: bool,
}

impl PackDigest {
    /// Does the cache hold a pack of `size` bytes whose entries sum to
    /// `sum`, along every access path?
    pub fn matches(&self, size: u64, sum: u128) -> bool {
        self.id_lookup
            && !self.damaged
            && self.size == size
            && self.table == sum
            && self.by_pack == sum
    }
}

/// A blob entry's share of a [`PackDigest`]: a sum of these does not
/// depend on the order rows come in.
pub fn entry_digest(e: &PackEntry) -> u128 {
    let mut b = [0u8; 45];
    b[..32].copy_from_slice(&e.id.0);
    b[32] = e.kind as u8;
    b[33..37].copy_from_slice(&e.offset.to_le_bytes());
    b[37..41].copy_from_slice(&e.length.to_le_bytes());
    b[41..45].copy_from_slice(&e.raw_length.to_le_bytes());
    let h = blake3::hash(&b);
    let mut first = [0u8; 16];
    first.copy_from_slice(&h.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// How much of a pack is in use (from [`Index::usage`]).
/// Distinct blobs of one kind and their sizes, from [`Index::blob_totals`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobTotals {
    pub kind: BlobKind,
    pub count: u64,
    /// As stored: compressed and encrypted.
    pub stored_bytes: u64,
    /// Before compression.
    pub raw_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackUsage {
    pub pack: PackId,
    pub size: u64,
    pub blobs: u64,
    pub bytes: u64,
    /// Used blobs counted once: held here and in no pack before this one.
    pub used_blobs: u64,
    pub used_bytes: u64,
    /// Used blobs an earlier pack also holds: as good as unused here.
    pub duplicate_blobs: u64,
    pub duplicate_bytes: u64,
}

impl Index {
    /// Start an empty used-blob set.
    pub fn used_reset(&self) -> Result<()> {
        self.conn()
            .execute_batch(schema::USED)
            .map_err(|e| self.err(e))
    }

    /// Mark many blobs used, in one transaction: one autocommit statement
    /// per blob costs a transaction each, and a repository has millions.
    pub fn used_insert_many(&self, ids: &[BlobId]) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        {
            let mut st = tx
                .prepare_cached("INSERT OR IGNORE INTO used (id) VALUES (?1)")
                .map_err(|e| self.err(e))?;
            for id in ids {
                st.execute(params![&id.0[..]]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Mark many blobs used, in one transaction; returns those that were
    /// not yet (each once, in the order given).
    pub fn used_insert_new(&self, ids: &[BlobId]) -> Result<Vec<BlobId>> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        {
            let mut st = tx
                .prepare_cached("INSERT OR IGNORE INTO used (id) VALUES (?1)")
                .map_err(|e| self.err(e))?;
            for id in ids {
                if st.execute(params![&id.0[..]]).map_err(|e| self.err(e))? == 1 {
                    out.push(*id);
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Record that prune copied `id` into a new pack; `false` when it
    /// already had (the blob is in two packs being repacked). A temporary
    /// table, like `used`: a set in memory grows with the blobs repacked.
    pub fn moved_insert(&self, id: &BlobId) -> Result<bool> {
        let c = self.conn();
        let mut st = c
            .prepare_cached("INSERT OR IGNORE INTO moved (id) VALUES (?1)")
            .map_err(|e| self.err(e))?;
        Ok(st.execute(params![&id.0[..]]).map_err(|e| self.err(e))? == 1)
    }

    /// Note the packs prune retires, for [`Index::to_move`].
    pub fn dead_set(&self, dead: &[PackId]) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        tx.execute_batch(schema::DEAD).map_err(|e| self.err(e))?;
        {
            let mut st = tx
                .prepare("INSERT OR IGNORE INTO dead (pid) SELECT pid FROM packs WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            for p in dead {
                st.execute(params![&p.0[..]]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The blobs of `pack` that prune must copy into a new pack, in offset
    /// order: used, held by no pack outside [`Index::dead_set`], and not
    /// copied already (from another retired pack holding the same blob).
    /// They are recorded as copied in the same transaction: one per pack,
    /// where autocommitted point queries cost a temporary-journal write
    /// and truncation per blob.
    pub fn to_move(&self, pack: &PackId) -> Result<Vec<PackEntry>> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        {
            let mut st = tx
                .prepare_cached(schema::TO_MOVE)
                .map_err(|e| self.err(e))?;
            let mut moved = tx
                .prepare_cached("INSERT OR IGNORE INTO moved (id) VALUES (?1)")
                .map_err(|e| self.err(e))?;
            let rows = st
                .query_map(params![&pack.0[..]], entry_row)
                .map_err(|e| self.err(e))?;
            for r in rows {
                let (id, kind, offset, length, raw_length) = r.map_err(|e| self.err(e))?;
                if moved.execute(params![&id[..]]).map_err(|e| self.err(e))? == 0 {
                    continue;
                }
                out.push(PackEntry {
                    kind: BlobKind::from_u8(kind).ok_or_else(|| self.err("bad blob kind"))?,
                    id: BlobId::from_slice(&id).ok_or_else(|| self.err("bad blob id"))?,
                    offset,
                    length,
                    raw_length,
                });
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Mark a blob used; `false` when it already was.
    pub fn used_insert(&self, id: &BlobId) -> Result<bool> {
        let c = self.conn();
        let mut st = c
            .prepare_cached("INSERT OR IGNORE INTO used (id) VALUES (?1)")
            .map_err(|e| self.err(e))?;
        Ok(st.execute(params![&id.0[..]]).map_err(|e| self.err(e))? == 1)
    }

    pub fn used_contains(&self, id: &BlobId) -> Result<bool> {
        let c = self.conn();
        let mut st = c
            .prepare_cached("SELECT 1 FROM used WHERE id = ?1")
            .map_err(|e| self.err(e))?;
        st.exists(params![&id.0[..]]).map_err(|e| self.err(e))
    }

    /// Fill the used set from what [`Index::refs_add`] appended.
    pub fn used_from_refs(&self) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        tx.execute_batch(schema::USED_FROM_REFS)
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Usage of every indexed pack against the used set, and (at most
    /// `limit` of) the used blobs that no indexed pack holds. One merge of
    /// `blobs` and `used`, both read in key order: a join looked up each of
    /// ten million blobs at random. Memory grows with the packs, not the
    /// blobs.
    ///
    /// A used blob that several packs hold counts as used in the first of
    /// them (lowest `pid`) and as a duplicate in the others, so that prune
    /// gives back the copies that concurrent backups stored (issue 18.7)
    /// while the one it keeps is in a pack that stays or is repacked.
    pub fn usage(&self, limit: usize) -> Result<(Vec<PackUsage>, Vec<BlobId>)> {
        #[derive(Default)]
        struct Sums {
            blobs: u64,
            bytes: u64,
            used_blobs: u64,
            used_bytes: u64,
            duplicate_blobs: u64,
            duplicate_bytes: u64,
        }
        let c = self.conn();
        let tx = c.unchecked_transaction().map_err(|e| self.err(e))?;
        let mut sums: std::collections::HashMap<i64, Sums> = std::collections::HashMap::new();
        let mut missing = Vec::new();
        {
            let mut blobs = tx
                .prepare("SELECT id, pid, length FROM blobs ORDER BY id, pid")
                .map_err(|e| self.err(e))?;
            let mut used = tx
                .prepare("SELECT id FROM used ORDER BY id")
                .map_err(|e| self.err(e))?;
            let mut blobs = blobs.query([]).map_err(|e| self.err(e))?;
            let mut used = used.query([]).map_err(|e| self.err(e))?;
            let next_blob = |rows: &mut rusqlite::Rows| -> Result<Option<(Vec<u8>, i64, i64)>> {
                match rows.next().map_err(|e| self.err(e))? {
                    Some(r) => Ok(Some((
                        r.get(0).map_err(|e| self.err(e))?,
                        r.get(1).map_err(|e| self.err(e))?,
                        r.get(2).map_err(|e| self.err(e))?,
                    ))),
                    None => Ok(None),
                }
            };
            let next_used = |rows: &mut rusqlite::Rows| -> Result<Option<Vec<u8>>> {
                match rows.next().map_err(|e| self.err(e))? {
                    Some(r) => Ok(Some(r.get(0).map_err(|e| self.err(e))?)),
                    None => Ok(None),
                }
            };
            let mut b = next_blob(&mut blobs)?;
            let mut u = next_used(&mut used)?;
            // Whether some pack holds the current used id; a blob stored in
            // two packs is two rows with the same id, so `u` moves on only
            // when the blobs have passed it.
            let mut held = false;
            loop {
                let ord = match (&b, &u) {
                    (None, None) => break,
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (Some((bid, _, _)), Some(uid)) => bid.cmp(uid),
                };
                if ord == std::cmp::Ordering::Greater {
                    if let Some(id) = u.as_deref()
                        && !held
                        && missing.len() < limit
                    {
                        missing
                            .push(BlobId::from_slice(id).ok_or_else(|| self.err("bad blob id"))?);
                    }
                    held = false;
                    u = next_used(&mut used)?;
                    continue;
                }
                let Some((_, pid, length)) = b.take() else {
                    break;
                };
                let s = sums.entry(pid).or_default();
                s.blobs += 1;
                s.bytes += length as u64;
                if ord == std::cmp::Ordering::Equal {
                    if held {
                        s.duplicate_blobs += 1;
                        s.duplicate_bytes += length as u64;
                    } else {
                        s.used_blobs += 1;
                        s.used_bytes += length as u64;
                        held = true;
                    }
                }
                b = next_blob(&mut blobs)?;
            }
        }
        let mut out = Vec::with_capacity(sums.len());
        {
            let mut st = tx
                .prepare("SELECT pid, id, size FROM packs ORDER BY id")
                .map_err(|e| self.err(e))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(|e| self.err(e))?;
            for r in rows {
                let (pid, id, size) = r.map_err(|e| self.err(e))?;
                // A pack no blob row names is not indexed, as before.
                let Some(s) = sums.remove(&pid) else { continue };
                out.push(PackUsage {
                    pack: PackId::from_slice(&id).ok_or_else(|| self.err("bad pack id"))?,
                    size: size as u64,
                    blobs: s.blobs,
                    bytes: s.bytes,
                    used_blobs: s.used_blobs,
                    used_bytes: s.used_bytes,
                    duplicate_blobs: s.duplicate_blobs,
                    duplicate_bytes: s.duplicate_bytes,
                });
            }
        }
        tx.finish().map_err(|e| self.err(e))?;
        Ok((out, missing))
    }

    /// The blobs of one pack, in offset order.
    pub fn pack_entries(&self, pack: &PackId) -> Result<Vec<PackEntry>> {
        let c = self.conn();
        let mut st = c
            .prepare_cached(
                "SELECT b.id, b.kind, b.offset, b.length, b.raw_length FROM packs p JOIN blobs b ON b.pid = p.pid WHERE p.id = ?1 ORDER BY b.offset",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![&pack.0[..]], entry_row)
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let (id, kind, offset, length, raw_length) = r.map_err(|e| self.err(e))?;
            out.push(PackEntry {
                kind: BlobKind::from_u8(kind).ok_or_else(|| self.err("bad blob kind"))?,
                id: BlobId::from_slice(&id).ok_or_else(|| self.err("bad blob id"))?,
                offset,
                length,
                raw_length,
            });
        }
        Ok(out)
    }

    /// A digest of each pack the cache holds, as each of its access paths
    /// sees it, for [`crate::repository::audit`]: every query goes either
    /// through a table or through an index of it, and a flipped byte in
    /// one leaves the other intact (issue 19.1). Four sequential scans;
    /// `PRAGMA integrity_check` costs five seconds per million blobs.
    /// One read transaction, so that what another process adds meanwhile
    /// is neither in the digests nor in the segments they are from.
    /// `table_only`: [`Index::integrity_ok`] has just shown the per-pack
    /// index to agree with the table, so one scan does.
    pub fn pack_digests(&self, table_only: bool) -> Result<CacheDigests> {
        let c = self.conn();
        let tx = c.unchecked_transaction().map_err(|e| self.err(e))?;
        let mut segments = HashSet::new();
        {
            let mut st = tx
                .prepare("SELECT id FROM segments")
                .map_err(|e| self.err(e))?;
            let mut rows = st.query([]).map_err(|e| self.err(e))?;
            while let Some(r) = rows.next().map_err(|e| self.err(e))? {
                let id: Vec<u8> = r.get(0).map_err(|e| self.err(e))?;
                segments
                    .insert(SegmentId::from_slice(&id).ok_or_else(|| self.err("bad segment id"))?);
            }
        }
        let mut by_pid: HashMap<i64, PackDigest> = HashMap::new();
        let mut ids: HashMap<i64, PackId> = HashMap::new();
        {
            let mut st = tx
                .prepare("SELECT pid, id, size FROM packs NOT INDEXED")
                .map_err(|e| self.err(e))?;
            let mut rows = st.query([]).map_err(|e| self.err(e))?;
            while let Some(r) = rows.next().map_err(|e| self.err(e))? {
                let pid: i64 = r.get(0).map_err(|e| self.err(e))?;
                let id: Vec<u8> = r.get(1).map_err(|e| self.err(e))?;
                let size: i64 = r.get(2).map_err(|e| self.err(e))?;
                let id = PackId::from_slice(&id).ok_or_else(|| self.err("bad pack id"))?;
                ids.insert(pid, id);
                by_pid.insert(
                    pid,
                    PackDigest {
                        size: size as u64,
                        ..Default::default()
                    },
                );
            }
        }
        // The unique index on `packs.id` answers every lookup by pack id.
        {
            let mut st = tx
                .prepare(
                    "SELECT id, pid FROM packs INDEXED BY sqlite_autoindex_packs_1 ORDER BY id",
                )
                .map_err(|e| self.err(e))?;
            let mut rows = st.query([]).map_err(|e| self.err(e))?;
            while let Some(r) = rows.next().map_err(|e| self.err(e))? {
                let id: Vec<u8> = r.get(0).map_err(|e| self.err(e))?;
                let pid: i64 = r.get(1).map_err(|e| self.err(e))?;
                if let Some(d) = by_pid.get_mut(&pid)
                    && ids.get(&pid).is_some_and(|p| p.0[..] == id[..])
                {
                    d.id_lookup = true;
                }
            }
        }
        let scans = [
            (
                "SELECT pid, id, kind, offset, length, raw_length FROM blobs NOT INDEXED",
                false,
            ),
            (
                "SELECT pid, id, kind, offset, length, raw_length FROM blobs INDEXED BY blobs_by_pack ORDER BY pid, offset",
                true,
            ),
        ];
        for (sql, by_index) in &scans[..if table_only { 1 } else { 2 }] {
            let mut st = tx.prepare(sql).map_err(|e| self.err(e))?;
            let mut rows = st.query([]).map_err(|e| self.err(e))?;
            while let Some(r) = rows.next().map_err(|e| self.err(e))? {
                let pid: i64 = r.get(0).map_err(|e| self.err(e))?;
                let id = r
                    .get_ref(1)
                    .map_err(|e| self.err(e))?
                    .as_blob()
                    .ok()
                    .and_then(BlobId::from_slice);
                let (kind, offset, length, raw_length) = (
                    r.get::<_, u8>(2).map_err(|e| self.err(e))?,
                    r.get::<_, u32>(3).map_err(|e| self.err(e))?,
                    r.get::<_, u32>(4).map_err(|e| self.err(e))?,
                    r.get::<_, u32>(5).map_err(|e| self.err(e))?,
                );
                let (Some(kind), Some(id)) = (BlobKind::from_u8(kind), id) else {
                    // Not a row any segment can list: the pack disagrees.
                    by_pid.entry(pid).or_default().damaged = true;
                    continue;
                };
                let h = entry_digest(&PackEntry {
                    kind,
                    id,
                    offset,
                    length,
                    raw_length,
                });
                let d = by_pid.entry(pid).or_default();
                if *by_index {
                    d.by_pack = d.by_pack.wrapping_add(h);
                } else {
                    d.table = d.table.wrapping_add(h);
                }
            }
        }
        if table_only {
            for d in by_pid.values_mut() {
                d.by_pack = d.table;
            }
        }
        tx.finish().map_err(|e| self.err(e))?;
        // Rows of a pid the `packs` table does not name belong to no pack
        // a segment could list.
        let mut orphans = 0u64;
        let mut out = HashMap::with_capacity(by_pid.len());
        for (pid, d) in by_pid {
            match ids.get(&pid) {
                Some(p) => {
                    out.insert(*p, d);
                }
                None => orphans += 1,
            }
        }
        Ok(CacheDigests {
            packs: out,
            orphans,
            segments,
        })
    }

    /// Every pack that holds a copy of `id`.
    pub fn packs_of(&self, id: &BlobId) -> Result<Vec<PackId>> {
        let c = self.conn();
        let mut st = c
            .prepare_cached(
                "SELECT p.id FROM blobs b JOIN packs p ON p.pid = b.pid WHERE b.id = ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![&id.0[..]], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let b = r.map_err(|e| self.err(e))?;
            out.push(PackId::from_slice(&b).ok_or_else(|| self.err("bad pack id"))?);
        }
        Ok(out)
    }
}

/// Referenced blobs the index does not hold, found by a merge of two
/// sorted lists rather than a lookup per reference: SQLite's sorter spills
/// to temporary files in sequential runs, and `blobs` is read in key order,
/// so each page of either is read once (RAM stays at the page caches).
impl Index {
    /// Start an empty list of referenced blobs.
    pub fn refs_reset(&self) -> Result<()> {
        self.conn()
            .execute_batch(schema::REFS)
            .map_err(|e| self.err(e))
    }

    /// Append referenced blob ids (duplicates welcome), in one transaction.
    pub fn refs_add(&self, ids: &[BlobId]) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        {
            let mut st = tx
                .prepare_cached("INSERT INTO refs (id) VALUES (?1)")
                .map_err(|e| self.err(e))?;
            for id in ids {
                st.execute(params![&id.0[..]]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Record every referenced id that no indexed pack holds (see
    /// [`Index::missing_among`]); returns how many distinct ids that is.
    pub fn refs_resolve(&self) -> Result<u64> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(|e| self.err(e))?;
        let mut found = 0u64;
        {
            let mut refs = tx
                .prepare("SELECT id FROM refs ORDER BY id")
                .map_err(|e| self.err(e))?;
            let mut blobs = tx
                .prepare("SELECT id FROM blobs ORDER BY id")
                .map_err(|e| self.err(e))?;
            let mut ins = tx
                .prepare("INSERT OR IGNORE INTO missing (id) VALUES (?1)")
                .map_err(|e| self.err(e))?;
            let mut refs = refs.query([]).map_err(|e| self.err(e))?;
            let mut blobs = blobs.query([]).map_err(|e| self.err(e))?;
            let next = |rows: &mut rusqlite::Rows| -> Result<Option<Vec<u8>>> {
                match rows.next().map_err(|e| self.err(e))? {
                    Some(r) => Ok(Some(r.get(0).map_err(|e| self.err(e))?)),
                    None => Ok(None),
                }
            };
            let mut have = next(&mut blobs)?;
            let mut last: Option<Vec<u8>> = None;
            while let Some(r) = next(&mut refs)? {
                if last.as_ref() == Some(&r) {
                    continue;
                }
                // Both are in memcmp order, SQLite's order for BLOBs.
                while have.as_ref().is_some_and(|h| *h < r) {
                    have = next(&mut blobs)?;
                }
                if have.as_ref() != Some(&r) {
                    ins.execute(params![&r[..]]).map_err(|e| self.err(e))?;
                    found += 1;
                }
                last = Some(r);
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(found)
    }

    /// Which of `ids` [`Index::refs_resolve`] found missing.
    pub fn missing_among(&self, ids: &[BlobId]) -> Result<HashSet<BlobId>> {
        let c = self.conn();
        let mut st = c
            .prepare_cached("SELECT 1 FROM missing WHERE id = ?1")
            .map_err(|e| self.err(e))?;
        let mut out = HashSet::new();
        for id in ids {
            if st.exists(params![&id.0[..]]).map_err(|e| self.err(e))? {
                out.insert(*id);
            }
        }
        Ok(out)
    }
}

impl Index {
    /// Which of `ids` the index holds: one query per 256 ids.
    pub fn contains_many(&self, ids: &[BlobId]) -> Result<HashSet<BlobId>> {
        const CHUNK: usize = 256;
        let mut out = HashSet::new();
        let c = self.conn();
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT DISTINCT id FROM blobs WHERE id IN ({})",
                vec!["?"; chunk.len()].join(",")
            );
            let mut st = c.prepare_cached(&sql).map_err(|e| self.err(e))?;
            let params: Vec<&[u8]> = chunk.iter().map(|i| &i.0[..]).collect();
            let rows = st
                .query_map(rusqlite::params_from_iter(params), |r| {
                    r.get::<_, Vec<u8>>(0)
                })
                .map_err(|e| self.err(e))?;
            for r in rows {
                let b = r.map_err(|e| self.err(e))?;
                out.insert(BlobId::from_slice(&b).ok_or_else(|| self.err("bad blob id"))?);
            }
        }
        Ok(out)
    }
}
