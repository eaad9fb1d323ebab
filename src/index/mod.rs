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

mod cache;
mod lookup;
pub(crate) mod schema;
mod scratch;
pub mod segment;
mod sync;

use crate::id::PackId;
use crate::pack::PackEntry;
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::Mutex;

pub use lookup::BlobTotals;
pub(crate) use lookup::PackUsage;
pub(crate) use lookup::entry_digest;
pub use scratch::Scratch;

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

/// A segment of one pack `[pack; 32]` holding data blobs `[b; 32]`.
#[cfg(test)]
pub(crate) fn test_seg(pack: u8, blobs: &[u8]) -> segment::Segment {
    use crate::blob::BlobKind;
    use crate::id::BlobId;
    use segment::{IndexedPack, Segment};
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
