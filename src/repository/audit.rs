//! The local index cache judged against the repository (issue 19.1).
//!
//! The cache is a copy of the index segments; a flipped bit in it made
//! `check` blame an intact pack whose trailer "differed from the index",
//! and `repair packs` then moved the pack aside. So `check`, the repairs
//! and prune first read every segment from the repository and compare
//! each pack it lists with what the cache holds, along every path a query
//! takes through the cache; a cache that disagrees is rebuilt from the
//! segments, and the message says it was the cache.

use super::Repository;
use super::config::FORMAT_VERSION;
use crate::error::{Error, Result};
use crate::id::{PackId, SegmentId};
use crate::index::entry_digest;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

/// What [`Repository::audit_index`] found.
#[derive(Debug, Default)]
pub(crate) struct IndexAudit {
    /// A line for each index segment that does not read, naming it and
    /// the command that fixes it.
    pub damaged_segments: Vec<String>,
    /// Why the local cache was thrown away and rebuilt, if it was.
    pub cache_rebuilt: Option<String>,
}

impl IndexAudit {
    /// The line `check` and the repairs show when the cache was rebuilt.
    pub fn cache_note(&self) -> Option<String> {
        self.cache_rebuilt.as_ref().map(|why| {
            format!(
                "the local index cache was wrong ({why}); it was rebuilt from the repository's index, which is sound"
            )
        })
    }
}

/// What a segment lists for one pack: its size and [`entry_digest`] sum.
type Listed = (u64, u128);

/// One segment's packs, or the line naming it as damaged.
type SegmentVerdict = std::result::Result<Vec<(PackId, Listed)>, String>;

impl Repository {
    /// Check the local index cache against the repository's index segments
    /// (every one is read) and rebuild it if they disagree. Packs that only
    /// a damaged segment lists are left in the cache: it may be the last
    /// thing that locates their blobs (`repair index` uses it).
    ///
    /// `full` adds SQLite's own full check ([`Index::integrity_ok`]):
    /// for `check` and the repairs, whose findings a restore relies on.
    ///
    /// [`Index::integrity_ok`]: crate::index::Index::integrity_ok
    pub(crate) fn audit_index(&self, full: bool) -> Result<IndexAudit> {
        let mut audit = IndexAudit::default();
        if !self.verify_index_cache()? {
            audit.cache_rebuilt = Some("SQLite found it damaged".into());
        }
        if full && let Some(why) = self.confirm_index_cache()? {
            audit.cache_rebuilt = Some(why);
        }
        let idx = self.index()?;
        // The cache first, then the listing: no segment it holds can be
        // missing from a listing made after (only an exclusive lock
        // deletes segments). Only those are compared: a concurrent backup
        // sharing the cache may add packs and segments meanwhile.
        // After SQLite's full check the per-pack index agrees with the
        // table: reading one of them does.
        let checked = full && self.cache_path().is_some();
        let cached = match idx.pack_digests(checked) {
            Ok(d) => Some(d),
            // SQLite meeting damage on the way: as wrong as can be.
            Err(Error::Cache { .. }) => None,
            Err(e) => return Err(e),
        };
        let mut ids = self.segment_ids()?;
        if let Some(c) = &cached {
            let listed: HashSet<SegmentId> = ids.iter().copied().collect();
            ids.extend(c.segments.iter().filter(|s| !listed.contains(s)));
        }
        // Digests, not entries, are kept: the entries of every segment
        // are the whole index, which must not have to fit in memory.
        let loaded: Vec<(SegmentId, SegmentVerdict)> = ids
            .par_iter()
            .map(|id| match self.load_segment(id) {
                Ok(seg) => Ok((
                    *id,
                    Ok(seg
                        .packs
                        .iter()
                        .map(|p| {
                            let sum = p
                                .entries
                                .iter()
                                .fold(0u128, |a, e| a.wrapping_add(entry_digest(e)));
                            (p.id, (p.size, sum))
                        })
                        .collect()),
                )),
                Err(e @ (Error::Corrupt { .. } | Error::NotFound { .. })) => Ok((
                    *id,
                    Err(format!(
                        "{e}; its blobs are ignored (run `coffer repair index`)"
                    )),
                )),
                Err(e) => Err(e),
            })
            .collect::<Result<_>>()?;
        let Some(cached) = cached else {
            audit.damaged_segments = loaded.into_iter().filter_map(|(_, v)| v.err()).collect();
            audit.cache_rebuilt = Some("SQLite found it damaged".into());
            self.recreate_index_cache()?;
            return Ok(audit);
        };
        // A pack two segments list alike (a rerun of an interrupted
        // repair) is judged once; listed differently, the cache holds the
        // union, which the digests cannot check: it is left alone.
        let mut listed: HashMap<PackId, Option<Listed>> = HashMap::new();
        let mut damaged_in_cache = false;
        for (id, v) in loaded {
            match v {
                Ok(packs) if cached.segments.contains(&id) => {
                    for (p, d) in packs {
                        listed
                            .entry(p)
                            .and_modify(|have| {
                                if *have != Some(d) {
                                    *have = None;
                                }
                            })
                            .or_insert(Some(d));
                    }
                }
                Ok(_) => {}
                Err(line) => {
                    damaged_in_cache |= cached.segments.contains(&id);
                    audit.damaged_segments.push(line);
                }
            }
        }
        let mut wrong = cached.orphans;
        for (p, l) in &listed {
            let Some((size, sum)) = l else { continue };
            if !cached.packs.get(p).is_some_and(|d| d.matches(*size, *sum)) {
                wrong += 1;
            }
        }
        // Packs the cache holds but none of its segments lists, unless a
        // damaged segment is what lists them (the cache may be all that
        // still locates their blobs).
        if !damaged_in_cache {
            wrong += cached
                .packs
                .keys()
                .filter(|p| !listed.contains_key(p))
                .count() as u64;
        }
        if wrong > 0 {
            audit.cache_rebuilt = Some(format!(
                "it disagreed with the index segments about {wrong} packs"
            ));
            // Sound to SQLite, only its content is wrong: emptied in place,
            // as a sync that finds a segment gone does.
            idx.clear()?;
            self.refresh_index()?;
        }
        Ok(audit)
    }

    /// SQLite's full check of the cache, which unlike the digests of
    /// [`Repository::audit_index`] also sees a damaged key inside its
    /// trees (lookups then miss blobs that are there); a damaged cache is
    /// rebuilt. Five seconds per million blobs: run by `check` and the
    /// repairs, and by prune only before it refuses. Returns why the cache
    /// was rebuilt, if it was.
    pub(crate) fn confirm_index_cache(&self) -> Result<Option<String>> {
        if self.cache_path().is_none() || self.index()?.integrity_ok()? {
            return Ok(None);
        }
        self.recreate_index_cache()?;
        Ok(Some("SQLite's full check found it damaged".into()))
    }

    /// Start the cache over in a new file and fill it from the segments.
    fn recreate_index_cache(&self) -> Result<()> {
        self.index()?.recreate(&self.repo_id, FORMAT_VERSION)?;
        self.refresh_index()
    }
}
