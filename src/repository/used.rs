//! The set of blobs that snapshots reach, built in the index cache's
//! temporary tables (so ten million blobs cost disk pages, not memory):
//! prune keeps what it holds, `stats` sums it.
//!
//! Trees are marked as they are reached; a tree already marked was walked
//! before, with everything below it, so snapshots that share most of their
//! trees cost little more than one. Content ids are appended to a list and
//! sorted into the set once at the end (see [`crate::index`]).

use super::Repository;
use crate::backend::FileKind;
use crate::blob::BlobKind;
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::index::BlobLocation;
use crate::pack::open_blob;
use crate::snapshot::tree::{NodeKind, Tree};
use rayon::prelude::*;

/// Trees marked and looked up at once.
const TREE_BATCH: usize = 256;
/// Uncompressed tree bytes decoded at once: bounds the decoded trees and
/// their content ids in memory, however large one tree is.
/// (Tiny in unit tests, so that they go through the splitting.)
const TREE_BYTES: u64 = if cfg!(test) { 64 } else { 8 << 20 };

/// A used set being built; [`UsedSet::finish`] completes it.
pub(crate) struct UsedSet<'a> {
    repo: &'a Repository,
}

impl Repository {
    /// Start an empty used set (replacing any earlier one).
    pub(crate) fn used_set(&self) -> Result<UsedSet<'_>> {
        let idx = self.index()?;
        idx.scratch().used_reset()?;
        idx.scratch().refs_reset()?;
        Ok(UsedSet { repo: self })
    }
}

impl UsedSet<'_> {
    /// Mark the tree `root` and every tree and blob below it. An error
    /// names the tree that could not be read; the set is then incomplete.
    pub(crate) fn add_tree(&mut self, root: &BlobId) -> Result<()> {
        let repo = self.repo;
        let idx = repo.index()?;
        let mut stack = vec![*root];
        while !stack.is_empty() {
            // Trees a batch at a time: one transaction marks them, one
            // looks them up, and they are read and decoded in parallel.
            // One by one, each cost two autocommitted statements and the
            // CPU work of a tree on one core.
            let batch = stack.split_off(stack.len().saturating_sub(TREE_BATCH));
            // Already marked: that tree, and so everything below it, is done.
            let fresh = idx.scratch().used_insert_new(&batch)?;
            let locs = idx.lookup_many(&fresh)?;
            let mut todo: Vec<(BlobId, Option<BlobLocation>)> =
                fresh.into_iter().zip(locs).collect();
            // Decoded a few MiB at a time: one tree of a huge file lists
            // millions of content ids, and 256 of them at 10 million blobs
            // held 130 MiB at once.
            while !todo.is_empty() {
                let mut bytes = 0u64;
                let take = todo
                    .iter()
                    .take_while(|(_, loc)| {
                        let first = bytes == 0;
                        bytes += loc.as_ref().map_or(0, |l| u64::from(l.entry.raw_length));
                        first || bytes <= TREE_BYTES
                    })
                    .count()
                    .max(1);
                let part: Vec<_> = todo.drain(..take).collect();
                let trees: Vec<Tree> = part
                    .into_par_iter()
                    .map(|(tid, loc)| read_tree(repo, &tid, loc))
                    .collect::<Result<_>>()?;
                let mut content = Vec::new();
                for tree in &trees {
                    content.extend(tree.nodes.iter().flat_map(|n| n.content.iter().copied()));
                    for n in &tree.nodes {
                        if n.kind == NodeKind::Dir
                            && let Some(sub) = n.subtree
                        {
                            stack.push(sub);
                        }
                    }
                }
                drop(trees);
                // Appended, and sorted into the used set once at the end.
                idx.scratch().refs_add(&content)?;
            }
        }
        Ok(())
    }

    /// Sort the content ids gathered so far into the set.
    pub fn finish(self) -> Result<()> {
        self.repo.index()?.scratch().used_from_refs()
    }
}

/// Read and decode one tree at `loc` (from the index).
fn read_tree(repo: &Repository, id: &BlobId, loc: Option<BlobLocation>) -> Result<Tree> {
    let loc = loc.ok_or_else(|| Error::BlobMissing { id: id.to_hex() })?;
    let name = loc.pack.to_hex();
    if loc.entry.kind != BlobKind::Tree {
        return Err(Error::corrupt(
            FileKind::Pack.path(&name),
            format!(
                "blob {id} is indexed as {:?}, expected a tree",
                loc.entry.kind
            ),
        ));
    }
    let sealed = repo.backend().get_range(
        FileKind::Pack,
        &name,
        loc.entry.offset as u64,
        loc.entry.length as usize,
    )?;
    let bytes = open_blob(repo.keys(), repo.id(), &loc.entry, &sealed)
        .map_err(|e| Error::corrupt(FileKind::Pack.path(&name), e))?;
    Tree::decode(&bytes).map_err(|e| Error::corrupt(format!("tree {id}"), e.0))
}
