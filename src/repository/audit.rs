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
use crate::id::PackId;
use crate::index::entry_digest;
use rayon::prelude::*;
use std::collections::HashMap;

/// What [`Repository::audit_index`] found.
#[derive(Debug, Default)]
pub struct IndexAudit {
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
    pub fn audit_index(&self, full: bool) -> Result<IndexAudit> {
        let mut audit = IndexAudit::default();
        if !self.verify_index_cache()? {
            audit.cache_rebuilt = Some("SQLite found it damaged".into());
        }
        if full && let Some(why) = self.confirm_index_cache()? {
            audit.cache_rebuilt = Some(why);
        }
        let idx = self.index()?;
        // Digests, not entries, are kept: the entries of every segment
        // are the whole index, which must not have to fit in memory.
        let loaded: Vec<SegmentVerdict> = self
            .segment_ids()?
            .par_iter()
            .map(|id| match self.load_segment(id) {
                Ok(seg) => Ok(Ok(seg
                    .packs
                    .iter()
                    .map(|p| {
                        let sum = p
                            .entries
                            .iter()
                            .fold(0u128, |a, e| a.wrapping_add(entry_digest(e)));
                        (p.id, (p.size, sum))
                    })
                    .collect())),
                Err(e @ (Error::Corrupt { .. } | Error::NotFound { .. })) => Ok(Err(format!(
                    "{e}; its blobs are ignored (run `coffer repair index`)"
                ))),
                Err(e) => Err(e),
            })
            .collect::<Result<_>>()?;
        // A pack two segments list alike (a rerun of an interrupted
        // repair) is judged once; listed differently, the cache holds the
        // union, which the digests cannot check: it is left alone.
        let mut listed: HashMap<PackId, Option<Listed>> = HashMap::new();
        for l in loaded {
            match l {
                Ok(packs) => {
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
                Err(line) => audit.damaged_segments.push(line),
            }
        }
        // SQLite meeting damage on the way is as wrong as can be.
        // After SQLite's full check the per-pack index agrees with the
        // table: reading one of them does.
        let checked = full && self.cache_path().is_some();
        let (cached, orphans) = match idx.pack_digests(checked) {
            Ok(d) => d,
            Err(Error::Cache { .. }) => (HashMap::new(), 1),
            Err(e) => return Err(e),
        };
        let mut wrong = orphans;
        for (p, l) in &listed {
            let Some((size, sum)) = l else { continue };
            if !cached.get(p).is_some_and(|d| d.matches(*size, *sum)) {
                wrong += 1;
            }
        }
        // Packs only the cache knows: gone from the repository's index,
        // unless a damaged segment is what lists them.
        if audit.damaged_segments.is_empty() {
            wrong += cached.keys().filter(|p| !listed.contains_key(p)).count() as u64;
        }
        if wrong > 0 {
            audit.cache_rebuilt = Some(format!(
                "it disagreed with the index segments about {wrong} packs"
            ));
            self.rebuild_index_cache()?;
        }
        Ok(audit)
    }

    /// SQLite's full check of the cache, which unlike the digests of
    /// [`Repository::audit_index`] also sees a damaged key inside its
    /// trees (lookups then miss blobs that are there); a damaged cache is
    /// rebuilt. Five seconds per million blobs: run by `check` and the
    /// repairs, and by prune only before it refuses. Returns why the cache
    /// was rebuilt, if it was.
    pub fn confirm_index_cache(&self) -> Result<Option<String>> {
        if self.cache_path().is_none() || self.index()?.integrity_ok()? {
            return Ok(None);
        }
        self.rebuild_index_cache()?;
        Ok(Some("SQLite's full check found it damaged".into()))
    }

    /// Start the cache over and fill it from the segments.
    fn rebuild_index_cache(&self) -> Result<()> {
        self.index()?.recreate(&self.repo_id, FORMAT_VERSION)?;
        self.refresh_index()
    }
}
