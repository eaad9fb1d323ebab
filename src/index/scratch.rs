//! Prune's and check's scratch tables (used, moved, dead, refs, missing,
//! and the staged packs of a prune), reached through [`Scratch`].

use super::segment::IndexedPack;
use super::{Index, PackUsage, entry_row, schema};
use crate::blob::BlobKind;
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::pack::PackEntry;
use rusqlite::{Connection, params};
use std::collections::HashSet;

impl Index {
    /// The scratch tables of this cache.
    pub fn scratch(&self) -> Scratch<'_> {
        Scratch { index: self }
    }
}

/// Working sets of prune and check, kept in the cache's database so that
/// memory does not grow with the blobs.
pub struct Scratch<'a> {
    index: &'a Index,
}

impl Scratch<'_> {
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.index.conn()
    }

    fn err<E: std::fmt::Display + 'static>(&self, e: E) -> Error {
        self.index.err(e)
    }

    /// Start staging a prune's changes (see [`Index::retire`]).
    pub(crate) fn prune_begin(&self) -> Result<()> {
        self.conn()
            .execute_batch(schema::PRUNE_BEGIN)
            .map_err(|e| self.err(e))
    }

    /// Stage a pack prune wrote; the cache lists it from [`Index::retire`].
    pub(crate) fn stage_pack(&self, pack: &IndexedPack) -> Result<()> {
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

    /// Start an empty used-blob set.
    pub(crate) fn used_reset(&self) -> Result<()> {
        self.conn()
            .execute_batch(schema::USED)
            .map_err(|e| self.err(e))
    }

    /// Mark many blobs used, in one transaction: one autocommit statement
    /// per blob costs a transaction each, and a repository has millions.
    #[cfg(test)]
    pub(crate) fn used_insert_many(&self, ids: &[BlobId]) -> Result<()> {
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
    pub(crate) fn used_insert_new(&self, ids: &[BlobId]) -> Result<Vec<BlobId>> {
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
    #[cfg(test)]
    pub(crate) fn moved_insert(&self, id: &BlobId) -> Result<bool> {
        let c = self.conn();
        let mut st = c
            .prepare_cached("INSERT OR IGNORE INTO moved (id) VALUES (?1)")
            .map_err(|e| self.err(e))?;
        Ok(st.execute(params![&id.0[..]]).map_err(|e| self.err(e))? == 1)
    }

    /// Note the packs prune retires, for [`Scratch::to_move`].
    pub(crate) fn dead_set(&self, dead: &[PackId]) -> Result<()> {
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
    /// order: used, held by no pack outside [`Scratch::dead_set`], and not
    /// copied already (from another retired pack holding the same blob).
    /// They are recorded as copied in the same transaction: one per pack,
    /// where autocommitted point queries cost a temporary-journal write
    /// and truncation per blob.
    pub(crate) fn to_move(&self, pack: &PackId) -> Result<Vec<PackEntry>> {
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
    #[cfg(test)]
    pub(crate) fn used_insert(&self, id: &BlobId) -> Result<bool> {
        let c = self.conn();
        let mut st = c
            .prepare_cached("INSERT OR IGNORE INTO used (id) VALUES (?1)")
            .map_err(|e| self.err(e))?;
        Ok(st.execute(params![&id.0[..]]).map_err(|e| self.err(e))? == 1)
    }

    #[cfg(test)]
    pub(crate) fn used_contains(&self, id: &BlobId) -> Result<bool> {
        let c = self.conn();
        let mut st = c
            .prepare_cached("SELECT 1 FROM used WHERE id = ?1")
            .map_err(|e| self.err(e))?;
        st.exists(params![&id.0[..]]).map_err(|e| self.err(e))
    }

    /// Fill the used set from what [`Scratch::refs_add`] appended.
    pub(crate) fn used_from_refs(&self) -> Result<()> {
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
}

/// Referenced blobs the index does not hold, found by a merge of two
/// sorted lists rather than a lookup per reference: SQLite's sorter spills
/// to temporary files in sequential runs, and `blobs` is read in key order,
/// so each page of either is read once (RAM stays at the page caches).
impl Scratch<'_> {
    /// Start an empty list of referenced blobs.
    pub(crate) fn refs_reset(&self) -> Result<()> {
        self.conn()
            .execute_batch(schema::REFS)
            .map_err(|e| self.err(e))
    }

    /// Append referenced blob ids (duplicates welcome), in one transaction.
    pub(crate) fn refs_add(&self, ids: &[BlobId]) -> Result<()> {
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
    /// [`Scratch::missing_among`]); returns how many distinct ids that is.
    pub(crate) fn refs_resolve(&self) -> Result<u64> {
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

    /// Which of `ids` [`Scratch::refs_resolve`] found missing.
    pub(crate) fn missing_among(&self, ids: &[BlobId]) -> Result<HashSet<BlobId>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{RepoId, SegmentId};
    use crate::index::test_seg as seg;

    #[test]
    fn used_and_moved_sets() {
        let idx = Index::in_memory(&RepoId([1; 32]), 1).unwrap();
        idx.scratch().used_reset().unwrap();
        idx.scratch()
            .used_insert_many(&[BlobId([1; 32]), BlobId([2; 32]), BlobId([1; 32])])
            .unwrap();
        assert!(idx.scratch().used_contains(&BlobId([2; 32])).unwrap());
        assert!(!idx.scratch().used_insert(&BlobId([1; 32])).unwrap());
        let (a, b) = (BlobId([1; 32]), BlobId([3; 32]));
        assert_eq!(idx.scratch().used_insert_new(&[a, b, b]).unwrap(), [b]);
        assert!(idx.scratch().moved_insert(&BlobId([1; 32])).unwrap());
        assert!(!idx.scratch().moved_insert(&BlobId([1; 32])).unwrap());
        // A new plan starts from empty sets.
        idx.scratch().used_reset().unwrap();
        assert!(!idx.scratch().used_contains(&BlobId([2; 32])).unwrap());
        assert!(idx.scratch().moved_insert(&BlobId([1; 32])).unwrap());
    }

    #[test]
    fn refs_resolve_finds_exactly_the_unindexed_references() {
        let idx = Index::in_memory(&RepoId([1; 32]), 1).unwrap();
        idx.add_segment(&SegmentId([1; 32]), &seg(10, &[2, 4, 6, 8]))
            .unwrap();
        idx.add_segment(&SegmentId([2; 32]), &seg(11, &[4, 9]))
            .unwrap();
        idx.scratch().refs_reset().unwrap();
        // Unsorted, repeated, before the first, between and after the last.
        let ids = [9, 1, 4, 5, 4, 1, 2, 200, 8, 7, 255, 6].map(|b| BlobId([b; 32]));
        idx.scratch().refs_add(&ids[..5]).unwrap();
        idx.scratch().refs_add(&ids[5..]).unwrap();
        assert_eq!(idx.scratch().refs_resolve().unwrap(), 5);
        let missing = idx.scratch().missing_among(&ids).unwrap();
        let mut got: Vec<u8> = missing.iter().map(|b| b.0[0]).collect();
        got.sort();
        assert_eq!(got, vec![1, 5, 7, 200, 255]);
        // A new list starts empty; nothing referenced, nothing missing.
        idx.scratch().refs_reset().unwrap();
        assert_eq!(idx.scratch().refs_resolve().unwrap(), 0);
        assert!(idx.scratch().missing_among(&ids).unwrap().is_empty());
        idx.scratch().refs_add(&[BlobId([3; 32])]).unwrap();
        assert_eq!(idx.scratch().refs_resolve().unwrap(), 1);
        // An empty index: every reference is missing.
        let empty = Index::in_memory(&RepoId([1; 32]), 1).unwrap();
        empty.scratch().refs_reset().unwrap();
        empty.scratch().refs_add(&ids).unwrap();
        assert_eq!(empty.scratch().refs_resolve().unwrap(), 10);
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
        idx.scratch().used_reset().unwrap();
        idx.scratch().refs_reset().unwrap();
        idx.scratch().used_insert(&BlobId([9; 32])).unwrap();
        idx.scratch()
            .refs_add(&[1, 4, 2, 4, 7, 255].map(|b| BlobId([b; 32])))
            .unwrap();
        idx.scratch().used_from_refs().unwrap();
        assert!(idx.scratch().used_contains(&BlobId([4; 32])).unwrap());
        let (usage, missing) = idx.scratch().usage(10).unwrap();
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
        assert_eq!(idx.scratch().usage(2).unwrap().1.len(), 2);
        // Nothing used: every pack is unused, nothing is missing.
        idx.scratch().used_reset().unwrap();
        let (usage, missing) = idx.scratch().usage(10).unwrap();
        assert!(usage.iter().all(|u| u.used_blobs == 0) && usage.len() == 3);
        assert!(missing.is_empty());
    }
}
