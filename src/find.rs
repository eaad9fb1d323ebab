//! Finding entries across snapshots: by name or path pattern, by
//! modification time, or by the content blob or subtree they hold.
//!
//! Nightly snapshots share nearly all their trees, so a search remembers
//! the subtrees in which it found nothing ([`Seen`]) and never opens one
//! of them again: searching thirty snapshots of the same data costs about
//! one walk plus the trees that changed. Subtrees with a match are walked
//! again in each snapshot, because each snapshot reports its own matches.
//! The walk is iterative and holds one tree per level.

use crate::blob::BlobSource;
use crate::error::Result;
use crate::id::BlobId;
use crate::pattern::Pattern;
use crate::snapshot::tree::{Node, NodeKind, Tree};
use crate::snapshot::walk::{Unreadable, load_subtree};
use std::collections::HashSet;

/// What an entry must satisfy; every given condition must hold.
#[derive(Default)]
pub struct Query {
    /// Any of these name or path patterns (none: any entry).
    pub patterns: Vec<Pattern>,
    /// Modified at or after this time (seconds since the epoch).
    pub newer_than: Option<i64>,
    /// Modified at or before this time.
    pub older_than: Option<i64>,
    /// Files holding one of these content blobs.
    pub blobs: Ids,
    /// Directories whose subtree is one of these.
    pub trees: Ids,
}

/// Blob ids to look for: whole ids (a set, so the thousands of blobs of
/// one pack cost a lookup per content id) and hex prefixes.
#[derive(Default)]
pub struct Ids {
    pub exact: HashSet<BlobId>,
    pub prefixes: Vec<String>,
}

impl Ids {
    /// A 64-digit id is exact; fewer digits are a prefix.
    pub fn add(&mut self, hex: &str) {
        match BlobId::from_hex(hex) {
            Some(id) => {
                self.exact.insert(id);
            }
            None => self.prefixes.push(hex.to_ascii_lowercase()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    fn contains(&self, id: &BlobId) -> bool {
        self.exact.contains(id) || {
            !self.prefixes.is_empty() && {
                let hex = id.to_hex();
                self.prefixes.iter().any(|p| hex.starts_with(p.as_str()))
            }
        }
    }
}

impl Query {
    fn matches(&self, path: &[u8], n: &Node) -> Option<Option<BlobId>> {
        if !self.patterns.is_empty() && !self.patterns.iter().any(|p| p.matches(path)) {
            return None;
        }
        if self.newer_than.is_some_and(|t| n.mtime.sec < t)
            || self.older_than.is_some_and(|t| n.mtime.sec > t)
        {
            return None;
        }
        let mut which = None;
        if !self.blobs.is_empty() {
            which = Some(*n.content.iter().find(|id| self.blobs.contains(id))?);
        }
        if !self.trees.is_empty() {
            let sub = n.subtree.filter(|_| n.kind == NodeKind::Dir)?;
            if !self.trees.contains(&sub) {
                return None;
            }
            which = Some(sub);
        }
        Some(which)
    }
}

/// One entry found.
pub struct Found<'a> {
    /// `/`-rooted path in the snapshot.
    pub path: &'a [u8],
    pub node: &'a Node,
    /// The blob or subtree that matched `--blob` or `--tree`.
    pub id: Option<BlobId>,
}

/// Subtrees known to hold no match, shared by the searches of one query.
/// Bounded: past `Seen::LIMIT` ids it starts over, which costs only
/// speed (a subtree is searched again), never a missed match.
#[derive(Default)]
pub struct Seen {
    empty: HashSet<BlobId>,
}

impl Seen {
    /// About 100 MiB of ids at most.
    const LIMIT: usize = 2_000_000;

    fn insert(&mut self, id: BlobId) {
        if self.empty.len() >= Self::LIMIT {
            self.empty.clear();
        }
        self.empty.insert(id);
    }
}

/// Totals of one search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FindStats {
    pub matches: u64,
    pub trees_loaded: u64,
    /// Subtrees not opened because an earlier search found nothing in them.
    pub trees_skipped: u64,
    /// Directories not searched because their trees could not be read
    /// (`/`-rooted paths).
    pub unreadable: Vec<Unreadable>,
    /// Other damaged objects skipped on the way (an index segment, a
    /// snapshot), each named once.
    pub damaged: Vec<String>,
}

/// Search the tree `root` (the root of a snapshot) for entries matching
/// `query`, calling `emit` for each in depth-first name order.
pub fn find(
    source: &dyn BlobSource,
    root: &BlobId,
    query: &Query,
    seen: &mut Seen,
    emit: impl FnMut(Found<'_>) -> Result<()>,
) -> Result<FindStats> {
    let mut stats = search(source, root, query, seen, emit)?;
    stats.damaged = source.take_damaged();
    Ok(stats)
}

fn search(
    source: &dyn BlobSource,
    root: &BlobId,
    query: &Query,
    seen: &mut Seen,
    mut emit: impl FnMut(Found<'_>) -> Result<()>,
) -> Result<FindStats> {
    struct Frame {
        id: BlobId,
        tree: Tree,
        next: usize,
        /// The directory's `/`-rooted path plus `/`.
        prefix: Vec<u8>,
        found: bool,
    }
    let mut stats = FindStats::default();
    if seen.empty.contains(root) {
        stats.trees_skipped += 1;
        return Ok(stats);
    }
    stats.trees_loaded += 1;
    // A snapshot whose root cannot be read is named; the others are still
    // searched.
    let Some(tree) = load_subtree(source, root, b"/", &mut stats.unreadable)? else {
        return Ok(stats);
    };
    let mut stack = vec![Frame {
        id: *root,
        tree,
        next: 0,
        prefix: b"/".to_vec(),
        found: false,
    }];
    while let Some(top) = stack.last_mut() {
        let Some(node) = top.tree.nodes.get(top.next) else {
            let done = stack.pop().unwrap_or_else(|| unreachable!());
            if done.found {
                if let Some(parent) = stack.last_mut() {
                    parent.found = true;
                }
            } else {
                seen.insert(done.id);
            }
            continue;
        };
        top.next += 1;
        let mut path = top.prefix.clone();
        path.extend_from_slice(&node.name);
        if let Some(id) = query.matches(&path, node) {
            top.found = true;
            stats.matches += 1;
            emit(Found {
                path: &path,
                node,
                id,
            })?;
        }
        let sub = match (node.kind, node.subtree) {
            (NodeKind::Dir, Some(sub)) => sub,
            _ => continue,
        };
        if seen.empty.contains(&sub) {
            stats.trees_skipped += 1;
            continue;
        }
        stats.trees_loaded += 1;
        let Some(tree) = load_subtree(source, &sub, &path, &mut stats.unreadable)? else {
            // Not known to be empty: the parents must not be remembered as
            // such, so each snapshot holding the damage reports it.
            top.found = true;
            continue;
        };
        path.push(b'/');
        stack.push(Frame {
            id: sub,
            tree,
            next: 0,
            prefix: path,
            found: false,
        });
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tree::Time;
    use crate::snapshot::walk::MemTrees as Trees;

    fn file(name: &str, mtime: i64) -> Node {
        let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::File);
        n.content = vec![BlobId(*blake3::hash(name.as_bytes()).as_bytes())];
        n.mtime = Time::new(mtime, 0);
        n
    }

    fn dir(name: &str, sub: BlobId) -> Node {
        let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::Dir);
        n.subtree = Some(sub);
        n
    }

    fn paths(t: &Trees, root: BlobId, q: &Query, seen: &mut Seen) -> (Vec<String>, FindStats) {
        let mut out = Vec::new();
        let st = find(t, &root, q, seen, |f| {
            out.push(String::from_utf8_lossy(f.path).into_owned());
            Ok(())
        })
        .unwrap();
        (out, st)
    }

    fn pattern(p: &str) -> Query {
        Query {
            patterns: vec![Pattern::new(p.as_bytes(), false).unwrap()],
            ..Query::default()
        }
    }

    #[test]
    fn an_unreadable_tree_is_named_in_every_search_and_the_rest_searched() {
        let t = Trees::default();
        let lost = BlobId([7; 32]);
        let root = t.put(vec![dir("lost", lost), file("top.sql", 30)]);
        let mut seen = Seen::default();
        for _ in 0..2 {
            let (p, st) = paths(&t, root, &pattern("*.sql"), &mut seen);
            assert_eq!(p, ["/top.sql"]);
            assert_eq!(st.unreadable.len(), 1);
            assert_eq!(st.unreadable[0].path, b"/lost");
        }
        let (p, st) = paths(&t, lost, &pattern("*"), &mut seen);
        assert!(p.is_empty());
        assert_eq!(st.unreadable[0].path, b"/");
    }

    #[test]
    fn finds_by_name_path_time_and_blob() {
        let t = Trees::default();
        let models = t.put(vec![file("a.bin", 10), file("dump.sql", 20)]);
        let root = t.put(vec![dir("models", models), file("top.sql", 30)]);
        let mut seen = Seen::default();
        let (p, _) = paths(&t, root, &pattern("*.sql"), &mut seen);
        assert_eq!(p, ["/models/dump.sql", "/top.sql"]);
        let (p, _) = paths(&t, root, &pattern("/models/*"), &mut Seen::default());
        assert_eq!(p, ["/models/a.bin", "/models/dump.sql"]);
        let q = Query {
            newer_than: Some(15),
            older_than: Some(25),
            ..Query::default()
        };
        let (p, _) = paths(&t, root, &q, &mut Seen::default());
        assert_eq!(p, ["/models/dump.sql"]);
        let blob = file("a.bin", 0).content[0].to_hex();
        for given in [&blob[..8], &blob[..]] {
            let mut q = Query::default();
            q.blobs.add(&given.to_ascii_uppercase());
            let (p, _) = paths(&t, root, &q, &mut Seen::default());
            assert_eq!(p, ["/models/a.bin"], "--blob {given}");
        }
        let mut q = Query::default();
        q.trees.add(&models.to_hex()[..10]);
        let (p, _) = paths(&t, root, &q, &mut Seen::default());
        assert_eq!(p, ["/models"]);
    }

    #[test]
    fn subtrees_without_a_match_are_not_opened_again() {
        let t = Trees::default();
        let big = t.put(vec![file("x", 0), file("y", 0)]);
        let hit = t.put(vec![file("wanted", 0)]);
        let day1 = t.put(vec![dir("big", big), dir("hit", hit)]);
        let day2 = t.put(vec![dir("big", big), dir("hit", hit), file("new", 0)]);
        let mut seen = Seen::default();
        let q = pattern("wanted");
        let (p1, s1) = paths(&t, day1, &q, &mut seen);
        let (p2, s2) = paths(&t, day2, &q, &mut seen);
        assert_eq!(p1, ["/hit/wanted"]);
        assert_eq!(p2, ["/hit/wanted"], "a match is reported in every snapshot");
        assert_eq!(s1.trees_loaded, 3);
        assert_eq!((s2.trees_loaded, s2.trees_skipped), (2, 1));
        // A snapshot whose whole tree held nothing is skipped at once.
        let (_, s3) = paths(&t, big, &q, &mut seen);
        assert_eq!((s3.trees_loaded, s3.trees_skipped), (0, 1));
    }
}
