//! Which snapshot paths a restore (or dump) takes: `--include` and
//! `--exclude` patterns, each either a path prefix (`/home/u/models`) or a
//! glob. A glob without `/` matches an entry's name at any depth
//! (`*.log`); with `/` it matches the whole path (`/home/*/models`).
//! A matching directory brings (or drops) everything below it.

use crate::error::Result;
use crate::pattern::Pattern;

/// Include and exclude patterns together.
#[derive(Default)]
pub(crate) struct Selection {
    includes: Vec<Pattern>,
    excludes: Vec<Pattern>,
}

/// The verdict for one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// Restore it and everything below.
    All,
    /// Not selected itself, but something below may be: create the
    /// directory and look inside.
    Descend,
    /// Skip it and everything below.
    Skip,
}

impl Selection {
    pub fn new(includes: &[Vec<u8>], excludes: &[Vec<u8>]) -> Result<Selection> {
        Ok(Selection {
            includes: includes
                .iter()
                .map(|p| Pattern::new(p, false))
                .collect::<Result<_>>()?,
            excludes: excludes
                .iter()
                .map(|p| Pattern::new(p, false))
                .collect::<Result<_>>()?,
        })
    }

    /// Verdict for `path` (`/`-rooted), given that its parent's verdict was
    /// `parent` (`All` for the root's children when there are no includes).
    pub fn pick(&self, path: &[u8], is_dir: bool, parent: Pick) -> Pick {
        if self.excludes.iter().any(|p| p.matches(path)) {
            return Pick::Skip;
        }
        if parent == Pick::All || self.includes.is_empty() {
            return Pick::All;
        }
        if self.includes.iter().any(|p| p.matches(path)) {
            return Pick::All;
        }
        if is_dir && self.includes.iter().any(|p| p.may_match_below(path)) {
            return Pick::Descend;
        }
        Pick::Skip
    }

    pub(crate) fn root_pick(&self) -> Pick {
        if self.includes.is_empty() {
            Pick::All
        } else {
            Pick::Descend
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(inc: &[&str], exc: &[&str]) -> Selection {
        let v = |x: &[&str]| x.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        Selection::new(&v(inc), &v(exc)).unwrap()
    }

    #[test]
    fn prefixes_globs_and_excludes() {
        let s = sel(&["/home/u/models"], &[]);
        assert_eq!(s.pick(b"/home", true, Pick::Descend), Pick::Descend);
        assert_eq!(s.pick(b"/home/u/models", true, Pick::Descend), Pick::All);
        assert_eq!(s.pick(b"/home/u/modelsx", true, Pick::Descend), Pick::Skip);
        assert_eq!(s.pick(b"/etc", true, Pick::Descend), Pick::Skip);
        let s = sel(&["*.txt"], &[]);
        assert_eq!(s.pick(b"/a/b/c.txt", false, Pick::Descend), Pick::All);
        assert_eq!(s.pick(b"/a/b/c.bin", false, Pick::Descend), Pick::Skip);
        assert_eq!(s.pick(b"/a", true, Pick::Descend), Pick::Descend);
        let s = sel(&[], &["*.log", "/a/tmp"]);
        assert_eq!(s.pick(b"/a/x.log", false, Pick::All), Pick::Skip);
        assert_eq!(s.pick(b"/a/tmp", true, Pick::All), Pick::Skip);
        assert_eq!(s.pick(b"/a/tmpx", true, Pick::All), Pick::All);
        let s = sel(&["/home/*/models"], &[]);
        assert_eq!(s.pick(b"/home/u/models", true, Pick::Descend), Pick::All);
        assert_eq!(s.pick(b"/home/u/other", true, Pick::Descend), Pick::Descend);
    }
}
