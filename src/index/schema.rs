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

pub const DROP: &str = "
DROP TABLE IF EXISTS meta;
DROP TABLE IF EXISTS segments;
DROP TABLE IF EXISTS packs;
DROP TABLE IF EXISTS blobs;
";
