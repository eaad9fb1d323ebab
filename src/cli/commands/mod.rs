//! One module per command; each is a thin call into the library.

pub mod backup;
pub mod cat;
pub mod check;
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
pub mod prune;
pub mod repair;
pub mod restore;
pub mod snapshots;
pub mod stats;
pub mod unlock;

use anyhow::{Result, bail};
use clap::Args;
use coffer::id::SnapshotId;
use coffer::repository::Repository;
use coffer::snapshot::Snapshot;

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
    fn admits(&self, s: &Snapshot) -> bool {
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
                match all.iter().rev().find(|(_, s)| self.admits(s)) {
                    Some(x) => x.clone(),
                    None => bail!("no snapshot matches --host/--tag/--path for `latest`"),
                }
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

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("512").unwrap(), 512);
        assert_eq!(super::parse_size("4M").unwrap(), 4 << 20);
        assert_eq!(super::parse_size("256k").unwrap(), 256 << 10);
        assert!(super::parse_size("x").is_err());
        assert!(super::parse_size("5Q").is_err());
    }
}
