//! Read-only queries: where blobs are, what packs hold, totals and digests.

use super::{BlobLocation, Index, entry_row};
use crate::blob::BlobKind;
use crate::error::Result;
use crate::id::{BlobId, PackId, SegmentId};
use crate::pack::PackEntry;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{HashMap, HashSet};

impl Index {
    /// Where a blob is stored (any one copy).
    pub fn lookup(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        let c = self.conn();
        self.lookup_in(&c, id)
    }

    /// [`Index::lookup`] for many ids in one read transaction: one lock
    /// of the cache instead of one per blob.
    pub(crate) fn lookup_many(&self, ids: &[BlobId]) -> Result<Vec<Option<BlobLocation>>> {
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
        self.packs_between(None)
    }

    /// The indexed packs whose id starts with the byte `first`, and their
    /// recorded sizes: those of one directory of a local repository.
    pub(crate) fn packs_starting_with(&self, first: u8) -> Result<Vec<(PackId, u64)>> {
        // Past every 32-byte id that starts with `first`: blobs compare
        // byte by byte, a prefix first.
        let end = match first.checked_add(1) {
            Some(next) => vec![next],
            None => vec![0xff; 33],
        };
        self.packs_between(Some((vec![first], end)))
    }

    /// Packs with `start <= id < end`, or all of them.
    fn packs_between(&self, range: Option<(Vec<u8>, Vec<u8>)>) -> Result<Vec<(PackId, u64)>> {
        let c = self.conn();
        let sql = match range {
            Some(_) => "SELECT id, size FROM packs WHERE id >= ?1 AND id < ?2 ORDER BY id",
            None => "SELECT id, size FROM packs ORDER BY id",
        };
        let mut st = c.prepare(sql).map_err(|e| self.err(e))?;
        let row = |r: &rusqlite::Row<'_>| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?));
        let rows = match &range {
            Some((start, end)) => st.query_map(params![start, end], row),
            None => st.query_map([], row),
        }
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
    pub(crate) fn blob_totals(&self, used_only: bool) -> Result<Vec<BlobTotals>> {
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
    pub(crate) fn packs_bytes(&self) -> Result<u64> {
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

/// What [`Index::pack_digests`] read.
#[derive(Debug, Default)]
pub(crate) struct CacheDigests {
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
pub(crate) struct PackDigest {
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
pub(crate) fn entry_digest(e: &PackEntry) -> u128 {
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

/// How much of a pack is in use (from [`Scratch::usage`](super::Scratch::usage)).
/// Distinct blobs of one kind and their sizes, from `Index::blob_totals`.
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
    pub(crate) fn pack_digests(&self, table_only: bool) -> Result<CacheDigests> {
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
    #[cfg(test)]
    pub(crate) fn packs_of(&self, id: &BlobId) -> Result<Vec<PackId>> {
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

impl Index {
    /// Which of `ids` the index holds: one query per 256 ids.
    pub(crate) fn contains_many(&self, ids: &[BlobId]) -> Result<HashSet<BlobId>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::RepoId;
    use crate::index::segment::Segment;
    use crate::index::test_seg as seg;

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
        idx.scratch().refs_reset().unwrap();
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

    /// A local repository's pack directories hold the packs whose names
    /// start with their two hex digits, `ff` included.
    #[test]
    fn packs_starting_with_a_byte_are_those_of_its_directory() {
        let idx = Index::in_memory(&RepoId([1; 32]), 1).unwrap();
        for (i, p) in [0x00u8, 0x0a, 0xfe, 0xff].into_iter().enumerate() {
            idx.add_segment(&SegmentId([i as u8; 32]), &seg(p, &[p, 1]))
                .unwrap();
        }
        let firsts = |b: u8| -> Vec<u8> {
            idx.packs_starting_with(b)
                .unwrap()
                .into_iter()
                .map(|(p, _)| p.0[0])
                .collect()
        };
        assert_eq!(firsts(0x0a), [0x0a]);
        assert_eq!(firsts(0xfe), [0xfe]);
        assert_eq!(firsts(0xff), [0xff]);
        assert_eq!(firsts(0x00), [0x00]);
        assert!(firsts(0x01).is_empty());
        assert_eq!(idx.packs().unwrap().len(), 4);
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
}
