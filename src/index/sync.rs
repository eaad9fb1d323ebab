//! Bringing the cache in line with the repository's segments: sync,
//! bulk load, and prune's retirement of old segments.

use super::segment::{IndexedPack, Segment};
use super::{Index, schema};
use crate::error::Result;
use crate::id::{PackId, SegmentId};
use rusqlite::{Connection, params};
use std::collections::HashSet;

impl Index {
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

    /// Bring the cache from the old segments to prune's new ones in one
    /// transaction, instead of a rebuild from every new segment: forget
    /// `retired` packs and `old` segments, add the staged packs, and
    /// record `new` segments. Those list the staged packs and packs whose
    /// rows prune copied from this cache, so the result is what a rebuild
    /// gives. Prune calls it before deleting anything: a crash then leaves
    /// old segments the next sync adds back (with these packs' rows); a
    /// cache another process rebuilt meanwhile loses the same rows, found
    /// by pack id.
    pub(crate) fn retire(
        &self,
        retired: &[PackId],
        old: &[SegmentId],
        new: &[SegmentId],
    ) -> Result<()> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{BlobId, RepoId};
    use crate::index::test_seg as seg;

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
}
