//! The SQLite schema of the local index cache; the only file with SQL DDL.
//! Migrations are keyed on `PRAGMA user_version`; the cache can always be
//! rebuilt from segments, so an unknown version simply means "rebuild".

pub const SCHEMA_VERSION: i64 = 1;

pub const CREATE: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS segments (id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS packs (
    pid INTEGER PRIMARY KEY,
    id BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB NOT NULL,
    pid INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    raw_length INTEGER NOT NULL,
    PRIMARY KEY (id, pid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_pack ON blobs(pid);
";

/// A full rebuild appends every segment's blobs here, then copies them
/// into `blobs` sorted by key: ten million inserts at random keys touch
/// every page of the table again and again, one sorted pass touches each
/// once. Temporary, so it costs disk, not memory.
pub const STAGING: &str = "
CREATE TEMP TABLE IF NOT EXISTS staging (
    id BLOB NOT NULL,
    pid INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    raw_length INTEGER NOT NULL
);
DELETE FROM staging;
DROP INDEX IF EXISTS blobs_by_pack;
";

/// Move the staged blobs into the (empty) `blobs` table in key order, then
/// build the per-pack index in one sorted pass.
pub const UNSTAGE: &str = "
INSERT OR IGNORE INTO blobs (id, pid, kind, offset, length, raw_length)
    SELECT id, pid, kind, offset, length, raw_length FROM staging ORDER BY id, pid;
DELETE FROM staging;
CREATE INDEX IF NOT EXISTS blobs_by_pack ON blobs(pid);
";

pub const DROP: &str = "
DROP TABLE IF EXISTS meta;
DROP TABLE IF EXISTS segments;
DROP TABLE IF EXISTS packs;
DROP TABLE IF EXISTS blobs;
";

/// The set of blobs in use, built by prune and check, and the blobs prune
/// has copied into new packs: temporary tables, so ten million blobs cost
/// disk pages, not memory.
pub const USED: &str = "
CREATE TEMP TABLE IF NOT EXISTS used (id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS moved (id BLOB PRIMARY KEY) WITHOUT ROWID;
DELETE FROM used;
DELETE FROM moved;
";

/// Per pack: recorded size, blobs and bytes in total and in use.
pub const PACK_USAGE: &str = "
SELECT p.id, p.size, COUNT(*), SUM(b.length),
       SUM(CASE WHEN u.id IS NULL THEN 0 ELSE 1 END),
       SUM(CASE WHEN u.id IS NULL THEN 0 ELSE b.length END)
FROM blobs b JOIN packs p ON p.pid = b.pid LEFT JOIN used u ON u.id = b.id
GROUP BY b.pid ORDER BY p.id
";

/// Used blobs the index does not know.
pub const MISSING_USED: &str = "
SELECT u.id FROM used u WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.id = u.id)
";
