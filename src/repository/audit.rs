//! The local index cache judged against the repository (issue 19.1).
//!
//! The cache is a copy of the index segments; a flipped bit in it made
//! `check` blame an intact pack whose trailer "differed from the index",
//! and `repair packs` then moved the pack aside. So `check`, the repairs
//! and prune first read every segment from the repository and compare
//! each pack it lists with what the cache holds; a cache that disagrees is
//! rebuilt from the segments, and the message says it was the cache.

use super::Repository;
use crate::error::{Error, Result};
use crate::id::PackId;
use crate::index::Agreement;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

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

/// One segment's verdict: its packs and how the cache compares, or the
/// line naming the damaged segment.
type SegmentVerdict = std::result::Result<Vec<(PackId, Agreement)>, String>;

/// What the segments said about one pack, against the cache.
#[derive(Default)]
struct Seen {
    segments: u32,
    differs: bool,
    covers: bool,
}

impl Repository {
    /// Check the local index cache against the repository's index segments
    /// (every one is read) and rebuild it if they disagree. Packs that only
    /// a damaged segment lists are left in the cache: it may be the last
    /// thing that locates their blobs (`repair index` uses it).
    pub fn audit_index(&self) -> Result<IndexAudit> {
        let mut audit = IndexAudit::default();
        if !self.verify_index_cache()? {
            audit.cache_rebuilt = Some("SQLite's integrity check failed".into());
        }
        let idx = self.index()?;
        let verdicts: Vec<SegmentVerdict> = self
            .segment_ids()?
            .par_iter()
            .map(|id| match self.load_segment(id) {
                Ok(seg) => Ok(Ok(seg
                    .packs
                    .iter()
                    .map(|p| Ok((p.id, idx.compare_pack(p)?)))
                    .collect::<Result<_>>()?)),
                Err(e @ (Error::Corrupt { .. } | Error::NotFound { .. })) => Ok(Err(format!(
                    "{e}; its blobs are ignored (run `coffer repair index`)"
                ))),
                Err(e) => Err(e),
            })
            .collect::<Result<_>>()?;
        // A pack two segments list (a rerun of an interrupted repair) is
        // in the cache as their union: each only has to be covered.
        let mut listed: HashMap<PackId, Seen> = HashMap::new();
        for v in verdicts {
            match v {
                Ok(packs) => {
                    for (p, a) in packs {
                        let s = listed.entry(p).or_default();
                        s.segments += 1;
                        s.differs |= a == Agreement::Differs;
                        s.covers |= a == Agreement::Covers;
                    }
                }
                Err(line) => audit.damaged_segments.push(line),
            }
        }
        let wrong = listed
            .values()
            .filter(|s| s.differs || (s.segments == 1 && s.covers))
            .count();
        let extra = if audit.damaged_segments.is_empty() {
            let known: HashSet<&PackId> = listed.keys().collect();
            idx.packs()?
                .iter()
                .filter(|(p, _)| !known.contains(p))
                .count()
        } else {
            0
        };
        if wrong + extra > 0 {
            audit.cache_rebuilt = Some(format!(
                "it disagreed with the index segments about {} packs",
                wrong + extra
            ));
            idx.clear()?;
            self.refresh_index()?;
        }
        Ok(audit)
    }
}
