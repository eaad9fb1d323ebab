//! What a backup leaves out: gitignore-style patterns, cache directories,
//! marker files, big files, other filesystems.
//!
//! Patterns are matched against absolute paths, in order; the last one
//! that matches decides, and `!pattern` re-includes. `*` does not cross
//! `/`, `**` does. A pattern starting with `/` is anchored at the root; any
//! other matches at any depth (`*.tmp`, `.cache`, `.db/*.lck`). An
//! excluded directory is not entered, so nothing below it can come back.

use crate::error::{Error, Result};
use globset::{GlobBuilder, GlobMatcher};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(crate) use crate::repository::CACHEDIR_SIGNATURE;

#[derive(Clone)]
struct Rule {
    glob: GlobMatcher,
    negate: bool,
}

/// Exclusion rules of one backup.
#[derive(Clone, Default)]
pub struct Excludes {
    rules: Vec<Rule>,
    pub exclude_caches: bool,
    pub if_present: Vec<String>,
    pub larger_than: Option<u64>,
    pub one_file_system: bool,
    /// Directories never backed up, whatever the patterns say: the
    /// repository being written and coffer's cache (a backup of `~` would
    /// otherwise store the repository inside itself). By device and inode,
    /// so no symlink or bind mount on the way lets them in.
    never: Vec<(u64, u64)>,
}

impl std::fmt::Debug for Excludes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Excludes({} patterns)", self.rules.len())
    }
}

impl Excludes {
    /// Add a pattern (`case_insensitive` for `--iexclude`).
    pub fn add(&mut self, pattern: &str, case_insensitive: bool) -> Result<()> {
        let p = pattern.trim_end();
        let (negate, p) = match p.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, p),
        };
        let p = p.trim_end_matches('/');
        if p.is_empty() {
            return Ok(());
        }
        let full = if p.starts_with('/') {
            p.to_string()
        } else {
            format!("**/{p}")
        };
        let glob = GlobBuilder::new(&full)
            .literal_separator(true)
            .case_insensitive(case_insensitive)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::Usage(format!("exclude pattern {pattern:?}: {e}")))?
            .compile_matcher();
        self.rules.push(Rule { glob, negate });
        Ok(())
    }

    /// Add the patterns of an exclude file: one per line, `#` comments and
    /// blank lines ignored.
    pub fn add_file(&mut self, text: &str, case_insensitive: bool) -> Result<()> {
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            self.add(l, case_insensitive)?;
        }
        Ok(())
    }

    /// Never back up the directory `dir` (see [`Excludes`]); false when
    /// it does not exist, so there is nothing to leave out.
    pub fn never_back_up(&mut self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(dir) {
            Ok(md) if md.is_dir() => {
                self.never.push((md.dev(), md.ino()));
                true
            }
            _ => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.never.is_empty()
            && self.rules.is_empty()
            && !self.exclude_caches
            && self.if_present.is_empty()
            && self.larger_than.is_none()
    }

    /// Does a pattern exclude `path`?
    pub fn matches(&self, path: &Path) -> bool {
        let mut out = false;
        for r in &self.rules {
            if r.glob.is_match(path) {
                out = !r.negate;
            }
        }
        out
    }

    /// Left out by a pattern, a size limit or a marker file?
    pub fn excluded(&self, path: &Path, md: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        if md.is_dir() && self.never.contains(&(md.dev(), md.ino())) {
            return true;
        }
        if self.matches(path) {
            return true;
        }
        if md.is_file()
            && let Some(max) = self.larger_than
            && md.len() > max
        {
            return true;
        }
        md.is_dir() && self.dir_marker(path).is_some()
    }

    /// Should the directory at `path` be left out because of what it holds?
    /// Returns the reason.
    pub(crate) fn dir_marker(&self, path: &Path) -> Option<String> {
        for name in &self.if_present {
            if std::fs::symlink_metadata(path.join(name)).is_ok() {
                return Some(format!("contains {name}"));
            }
        }
        None
    }

    /// Is this directory a cache (a valid CACHEDIR.TAG)? Its contents are
    /// left out, the tag itself kept.
    pub(crate) fn is_cache_dir(&self, path: &Path) -> bool {
        if !self.exclude_caches {
            return false;
        }
        let mut buf = [0u8; 43];
        match std::fs::File::open(path.join("CACHEDIR.TAG")) {
            Ok(mut f) => {
                use std::io::Read;
                f.read_exact(&mut buf).is_ok() && buf == CACHEDIR_SIGNATURE
            }
            Err(_) => false,
        }
    }
}

/// `path` as bytes, for messages.
pub fn display(path: &Path) -> String {
    String::from_utf8_lossy(path.as_os_str().as_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(pats: &[&str]) -> Excludes {
        let mut e = Excludes::default();
        for p in pats {
            e.add(p, false).unwrap();
        }
        e
    }

    #[test]
    fn gitignore_style() {
        let e = ex(&[
            "*.tmp",
            "**/.cache",
            "/srv/app/upgrade",
            ".db/*.lck",
            ".snapshots",
        ]);
        assert!(e.matches(Path::new("/home/u/a.tmp")));
        assert!(e.matches(Path::new("/a.tmp")));
        assert!(!e.matches(Path::new("/home/u/a.tmpx")));
        assert!(e.matches(Path::new("/home/u/.cache")));
        assert!(e.matches(Path::new("/srv/app/upgrade")));
        assert!(!e.matches(Path::new("/other/srv/app/upgrade")));
        assert!(e.matches(Path::new("/home/looker/.db/looker.lck")));
        assert!(!e.matches(Path::new("/home/looker/.db/looker.db")));
        assert!(e.matches(Path::new("/x/.snapshots")));
    }

    #[test]
    fn negation_and_case() {
        let e = ex(&["*.log", "!keep.log"]);
        assert!(e.matches(Path::new("/a/b.log")));
        assert!(!e.matches(Path::new("/a/keep.log")));
        let mut i = Excludes::default();
        i.add("*.JPG", true).unwrap();
        assert!(i.matches(Path::new("/p/x.jpg")));
        let mut f = Excludes::default();
        f.add_file("# comment\n\n*.o\n!main.o\n", false).unwrap();
        assert!(f.matches(Path::new("/a/x.o")) && !f.matches(Path::new("/a/main.o")));
    }
}
