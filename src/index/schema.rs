//! The SQLite schema of the local index cache; the only file with SQL DDL.
//! Migrations are keyed on `PRAGMA user_version`; the cache can always be
//! rebuilt from segments, so an unknown version simply means "rebuild".

/// 2: `blobs_by_pack` covers `pack_entries` (version 1's index on `pid`
/// alone sent every row back to the table, one random lookup per blob).
pub(crate) const SCHEMA_VERSION: i64 = 2;

/// One definition for [`CREATE`] and [`UNSTAGE`]. It covers the queries
/// that walk a pack's blobs (`pack_entries`, prune's rewritten index, the
/// trailer comparison of `check`): a WITHOUT ROWID table's index also holds
/// the key (`id`), so with these columns the table itself is never read and
/// a pack's rows come out in offset order, one sequential range.
macro_rules! by_pack_index {
    () => {
        "CREATE INDEX IF NOT EXISTS blobs_by_pack ON blobs(pid, offset, kind, length, raw_length);"
    };
}

pub const CREATE: &str = concat!(
    "
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
CREATE TABLE IF NOT EXISTS tree_memos (
    id BLOB PRIMARY KEY,
    memo BLOB NOT NULL,
    day INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tree_memos_by_day ON tree_memos(day);
",
    by_pack_index!()
);

/// A full rebuild appends every segment's blobs here, then copies them
/// into `blobs` sorted by key: ten million inserts at random keys touch
/// every page of the table again and again, one sorted pass touches each
/// once. Temporary, so it costs disk, not memory.
pub(crate) const STAGING: &str = "
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
pub(crate) const UNSTAGE: &str = concat!(
    "
INSERT OR IGNORE INTO blobs (id, pid, kind, offset, length, raw_length)
    SELECT id, pid, kind, offset, length, raw_length FROM staging ORDER BY id, pid;
DELETE FROM staging;
",
    by_pack_index!()
);

/// Prune's retired packs, and the packs it wrote, staged until [`RETIRE`]
/// brings the cache to the new segments in one transaction. Adding each
/// new segment as it was written inserted its blobs at random keys, and at
/// ten million blobs every insert rewrote a page of a table larger than
/// the page cache.
pub(crate) const PRUNE_BEGIN: &str = "
CREATE TEMP TABLE IF NOT EXISTS retired (pid INTEGER PRIMARY KEY);
CREATE TEMP TABLE IF NOT EXISTS new_packs (id BLOB PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS new_blobs (
    pack BLOB NOT NULL,
    id BLOB NOT NULL,
    kind INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    raw_length INTEGER NOT NULL
);
DELETE FROM retired;
DELETE FROM new_packs;
DELETE FROM new_blobs;
";

/// Drop the retired packs' rows and add the new ones. Without
/// `blobs_by_pack` the delete can only scan `blobs` in key order, and the
/// inserts come sorted by key, so each page is rewritten once; deleting
/// through the index went pack by pack, at random keys. The index is then
/// rebuilt in one sorted pass, as after a bulk load.
pub(crate) const RETIRE: &str = concat!(
    "
DROP INDEX IF EXISTS blobs_by_pack;
DELETE FROM blobs WHERE pid IN (SELECT pid FROM retired);
DELETE FROM packs WHERE pid IN (SELECT pid FROM retired);
INSERT OR IGNORE INTO packs (id, size) SELECT id, size FROM new_packs;
INSERT OR IGNORE INTO blobs (id, pid, kind, offset, length, raw_length)
    SELECT n.id, p.pid, n.kind, n.offset, n.length, n.raw_length
    FROM new_blobs n JOIN packs p ON p.id = n.pack ORDER BY n.id, p.pid;
DELETE FROM retired;
DELETE FROM new_packs;
DELETE FROM new_blobs;
",
    by_pack_index!()
);

/// The packs a prune retires, so that choosing what to copy out of a pack
/// is one query per pack (a blob moves when it is used and no surviving
/// pack holds it) instead of three point queries per blob.
pub(crate) const DEAD: &str = "
CREATE TEMP TABLE IF NOT EXISTS dead (pid INTEGER PRIMARY KEY);
DELETE FROM dead;
";

/// The blobs of one pack (`?1`) that prune must copy, in offset order:
/// used, and held by no pack outside `dead`. Both lookups go by the key
/// of `used` and `blobs`.
pub(crate) const TO_MOVE: &str = "
SELECT b.id, b.kind, b.offset, b.length, b.raw_length
FROM packs p JOIN blobs b ON b.pid = p.pid
WHERE p.id = ?1
  AND EXISTS (SELECT 1 FROM used u WHERE u.id = b.id)
  AND NOT EXISTS (SELECT 1 FROM blobs o WHERE o.id = b.id AND o.pid NOT IN (SELECT pid FROM dead))
ORDER BY b.offset
";

/// Forget every snapshot's "complete" mark: run whenever blobs leave the
/// cache, so that no mark outlives the blobs it vouches for.
pub(crate) const DROP_COMPLETE_MARKS: &str = "DELETE FROM meta WHERE key LIKE 'complete:%';";

pub(crate) const DROP: &str = "
DROP TABLE IF EXISTS meta;
DROP TABLE IF EXISTS segments;
DROP TABLE IF EXISTS packs;
DROP TABLE IF EXISTS blobs;
DROP TABLE IF EXISTS tree_memos;
";

/// The set of blobs in use, built by prune and check, and the blobs prune
/// has copied into new packs: temporary tables, so ten million blobs cost
/// disk pages, not memory.
pub(crate) const USED: &str = "
CREATE TEMP TABLE IF NOT EXISTS used (id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS moved (id BLOB PRIMARY KEY) WITHOUT ROWID;
DELETE FROM used;
DELETE FROM moved;
";

/// The blob ids the trees reference (`check`, prune's used set), appended as they come
/// (a rowid table: appends touch only its last page, where inserting ten
/// million random keys into a B-tree rewrites pages all over a file larger
/// than any cache), and the referenced ids the index lacks.
pub(crate) const REFS: &str = "
CREATE TEMP TABLE IF NOT EXISTS refs (id BLOB NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS missing (id BLOB PRIMARY KEY) WITHOUT ROWID;
DELETE FROM refs;
DELETE FROM missing;
";

/// Fill the used set from the `refs` list in one sorted pass: inserting
/// each reference as it came was a random B-tree insert per blob.
pub(crate) const USED_FROM_REFS: &str = "
INSERT OR IGNORE INTO used (id) SELECT id FROM refs ORDER BY id;
DELETE FROM refs;
";
