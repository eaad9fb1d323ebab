//! Path patterns over snapshot paths, shared by restore's `--include` /
//! `--exclude` and by `find`: each either a path (`/home/u/models`) or a
//! glob. A pattern without `/` matches an entry's name at any depth
//! (`*.log`, `config`); with `/` it matches the whole `/`-rooted path
//! (`/home/*/models`). Pure: no I/O.

use crate::error::{Error, Result};
use globset::{GlobBuilder, GlobMatcher};

/// One compiled pattern.
pub struct Pattern {
    /// The path form, `/`-rooted, without trailing `/`.
    literal: Vec<u8>,
    glob: Option<GlobMatcher>,
    name_only: bool,
    /// Literals compare ASCII case-insensitively too (globs carry it themselves).
    fold_case: bool,
}

impl Pattern {
    pub fn new(p: &[u8], case_insensitive: bool) -> Result<Pattern> {
        let text = String::from_utf8_lossy(p).into_owned();
        let name_only = !text.contains('/');
        let is_glob = text.contains(['*', '?', '[', '{']);
        let mut literal = p.to_vec();
        while literal.len() > 1 && literal.last() == Some(&b'/') {
            literal.pop();
        }
        if !name_only && literal.first() != Some(&b'/') {
            literal.insert(0, b'/');
        }
        let glob = if is_glob {
            let g = if name_only {
                text.clone()
            } else {
                String::from_utf8_lossy(&literal).into_owned()
            };
            Some(
                GlobBuilder::new(&g)
                    .literal_separator(true)
                    .case_insensitive(case_insensitive)
                    .build()
                    .map_err(|e| Error::Usage(format!("pattern {text:?}: {e}")))?
                    .compile_matcher(),
            )
        } else {
            None
        };
        Ok(Pattern {
            literal,
            glob,
            name_only,
            fold_case: case_insensitive,
        })
    }

    /// Does the pattern match `path` (`/`-rooted) itself?
    pub fn matches(&self, path: &[u8]) -> bool {
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        match (&self.glob, self.name_only) {
            (Some(g), true) => g.is_match(String::from_utf8_lossy(name).as_ref()),
            (Some(g), false) => g.is_match(String::from_utf8_lossy(path).as_ref()),
            (None, true) => self.same(name, &self.literal),
            (None, false) => self.same(path, &self.literal) || self.literal == b"/",
        }
    }

    fn same(&self, a: &[u8], b: &[u8]) -> bool {
        if self.fold_case {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    }

    /// Could something below `dir` match? (Decides whether to descend.)
    pub(crate) fn may_match_below(&self, dir: &[u8]) -> bool {
        if self.name_only || self.glob.is_some() {
            return true;
        }
        self.literal.len() > dir.len()
            && self.literal.starts_with(dir)
            && (dir == b"/" || self.literal[dir.len()] == b'/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, ci: bool, path: &str) -> bool {
        Pattern::new(p.as_bytes(), ci)
            .unwrap()
            .matches(path.as_bytes())
    }

    #[test]
    fn names_paths_and_case() {
        assert!(m("*.sql", false, "/srv/db/dump.sql"));
        assert!(!m("*.sql", false, "/srv/db/dump.SQL"));
        assert!(m("*.sql", true, "/srv/db/dump.SQL"));
        assert!(m("config", false, "/etc/app/config"));
        assert!(!m("config", false, "/etc/app/Config"));
        assert!(m("config", true, "/etc/app/Config"));
        assert!(m("/home/*/models", false, "/home/u/models"));
        assert!(!m("/home/*/models", false, "/home/u/v/models"));
        assert!(m("/etc/FSTAB", true, "/etc/fstab"));
        assert!(!m("/etc/FSTAB", false, "/etc/fstab"));
        // `*` does not cross `/` in a path pattern.
        assert!(!m("/home/*", false, "/home/u/file"));
    }
}
