//! One module per command; each is a thin call into the library.

pub mod backup;
pub mod cat;
pub mod check;
pub mod completions;
pub mod config;
pub mod copy;
pub mod diff;
pub mod drill;
pub mod dump;
pub mod export_tar;
pub mod find;
pub mod forget;
pub mod import_tar;
pub mod init;
pub mod key;
pub mod ls;
pub mod manpage;
pub mod mount;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod run;
pub mod snapshots;
pub mod stats;
pub mod unlock;

use crate::cli::{GlobalOpts, repo};
use anyhow::{Result, bail};
use clap::Args;
use coffer::id::SnapshotId;
use coffer::repository::Repository;
use coffer::snapshot::Snapshot;
use std::path::PathBuf;
use std::sync::Arc;

/// A second repository to read from (`copy`, `init --from-repo`), with its
/// own secret: `COFFER_FROM_PASSWORD` or one of these options.
#[derive(Args, Debug, Default, Clone)]
pub struct FromRepo {
    /// The repository to read from
    #[arg(long, env = "COFFER_FROM_REPOSITORY", value_name = "DIR")]
    pub from_repo: Option<PathBuf>,
    /// Read its password from a file (first line)
    #[arg(long, env = "COFFER_FROM_PASSWORD_FILE", value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Run a shell command and use its output as its password
    #[arg(long, env = "COFFER_FROM_PASSWORD_COMMAND", value_name = "CMD")]
    pub from_password_command: Option<String>,
    /// Open it with a key file
    #[arg(long, env = "COFFER_FROM_KEY_FILE", value_name = "FILE")]
    pub from_key_file: Option<PathBuf>,
}

impl FromRepo {
    /// Open the source repository, if one is named. Its index cache goes
    /// beside the destination's (each under its own repository id).
    pub fn open(&self, g: &GlobalOpts) -> Result<Option<Arc<Repository>>> {
        let Some(path) = self
            .from_repo
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
        else {
            return Ok(None);
        };
        let loc = coffer::backend::Location::parse_os(path.as_os_str())?;
        let is_default = matches!(&loc, coffer::backend::Location::Local(p)
            if repo::default_repo_path().is_ok_and(|d| &d == p));
        let opts = repo::SecretOpts {
            password_env: "COFFER_FROM_PASSWORD",
            password_file: self.from_password_file.as_deref(),
            password_command: self.from_password_command.as_deref(),
            key_file: self.from_key_file.as_deref(),
        };
        // What opening found damaged there (its config, a slot's metadata)
        // stays with it: the caller reports it with [`report_problems`].
        Ok(Some(repo::open_at(
            g,
            &loc,
            is_default,
            &opts,
            repo::cache_root(g),
        )?))
    }
}

/// Warn about each damaged object `repo` met so far (the other side of a
/// copy: the exit-code check at the end only sees the main repository),
/// naming the repository; returns them, for the caller's exit code.
pub fn report_problems(repo: &coffer::repository::Repository) -> Vec<String> {
    let problems = repo.take_problems();
    for p in &problems {
        super::output::warn(&format!("{}: {p}", repo.location()));
    }
    problems
}

/// Which snapshots a command reads, as restic selects them.
#[derive(Args, Debug, Default, Clone)]
pub struct SnapshotFilter {
    /// Only snapshots of this host (repeatable)
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only snapshots with this tag (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only snapshots that back up this path (repeatable)
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
}

impl SnapshotFilter {
    pub fn admits(&self, s: &Snapshot) -> bool {
        let path_ok = self.paths.is_empty()
            || self.paths.iter().any(|p| {
                let p = p.trim_end_matches('/');
                s.paths.iter().any(|sp| sp == p.as_bytes())
            });
        (self.hosts.is_empty() || self.hosts.contains(&s.hostname))
            && (self.tags.is_empty() || self.tags.iter().any(|t| s.tags.contains(t)))
            && path_ok
    }

    /// The snapshots named by `refs` (id prefixes or `latest`, the newest
    /// one the filter admits), or every snapshot the filter admits when
    /// none are named; oldest first, each once.
    pub fn select(
        &self,
        repo: &Repository,
        refs: &[String],
    ) -> Result<Vec<(SnapshotId, Snapshot)>> {
        let all = repo.list_snapshots()?;
        if refs.is_empty() {
            return Ok(all.into_iter().filter(|(_, s)| self.admits(s)).collect());
        }
        let mut out: Vec<(SnapshotId, Snapshot)> = Vec::new();
        for r in refs {
            let picked = if r == "latest" {
                self.newest(&all)?.clone()
            } else {
                repo.resolve_snapshot(r)?
            };
            if !out.iter().any(|(id, _)| *id == picked.0) {
                out.push(picked);
            }
        }
        out.sort_by(|a, b| a.1.time_ns.cmp(&b.1.time_ns).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// One snapshot: an id prefix, or `latest`, the newest one the filter
    /// admits (in a shared repository, not whatever ran last).
    pub fn resolve(&self, repo: &Repository, reference: &str) -> Result<(SnapshotId, Snapshot)> {
        if reference == "latest" {
            return Ok(self.newest(&repo.list_snapshots()?)?.clone());
        }
        Ok(repo.resolve_snapshot(reference)?)
    }

    /// The newest of `all` (oldest first) that the filter admits.
    fn newest<'a>(&self, all: &'a [(SnapshotId, Snapshot)]) -> Result<&'a (SnapshotId, Snapshot)> {
        match all.iter().rev().find(|(_, s)| self.admits(s)) {
            Some(x) => Ok(x),
            None if all.is_empty() => bail!("the repository has no snapshots yet"),
            None => bail!(
                "no snapshot matches {} for `latest`: run `coffer snapshots` with the same options",
                self.describe()
            ),
        }
    }

    /// The filter as the user gave it, for messages.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (flag, values) in [
            ("--host", &self.hosts),
            ("--tag", &self.tags),
            ("--path", &self.paths),
        ] {
            parts.extend(values.iter().map(|v| format!("{flag} {v}")));
        }
        parts.join(" ")
    }
}

/// `512`, `64K`, `1M`, `2G` (binary units) → bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => bail!("size {s:?}: unknown unit (use K, M, G or T)"),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("size {s:?} is not a number"))?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("size {s:?} is too large"))
}

/// A snapshot path without its leading and trailing slashes, as bytes
/// (names in a snapshot need not be UTF-8).
pub(crate) fn trim_slashes(p: &[u8]) -> &[u8] {
    let start = p.iter().position(|&b| b != b'/').unwrap_or(p.len());
    let end = p.iter().rposition(|&b| b != b'/').map_or(start, |i| i + 1);
    &p[start..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn trim_slashes_keeps_inner_bytes() {
        assert_eq!(super::trim_slashes(b"//a/b\xff//"), b"a/b\xff");
        assert_eq!(super::trim_slashes(b"///"), b"");
        assert_eq!(super::trim_slashes(b""), b"");
        assert_eq!(super::trim_slashes(b"x"), b"x");
    }

    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("512").unwrap(), 512);
        assert_eq!(super::parse_size("4M").unwrap(), 4 << 20);
        assert_eq!(super::parse_size("256k").unwrap(), 256 << 10);
        assert!(super::parse_size("x").is_err());
        assert!(super::parse_size("5Q").is_err());
    }
}
