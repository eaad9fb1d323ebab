//! Restore drill: prove that backups restore, on a schedule, cheaply.
//!
//! For each chosen snapshot: sample files (always including the largest
//! one up to a size cap, sized by its data: a sparse file's holes are free),
//! restore them with the real restorer into a temporary directory, re-read
//! every restored byte and compare it with the snapshot (the restorer's
//! `--verify`), then remove the directory. What operations guides ask for
//! every quarter, as one command for a timer.

use crate::blob::BlobSource;
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::progress::Progress;
use crate::repository::Repository;
use crate::restorer::{self, Overwrite, RestoreOptions};
use crate::snapshot::Snapshot;
use crate::snapshot::tree::NodeKind;
use crate::snapshot::walk::{Visit, walk};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// How many files to sample per snapshot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sample {
    /// This share of the files (0 < f ≤ 1).
    Fraction(f64),
    /// At most this many files.
    Count(usize),
}

impl Sample {
    pub fn parse(s: &str) -> std::result::Result<Sample, String> {
        if let Some(f) = crate::units::parse_percent(s) {
            return f.map(Sample::Fraction);
        }
        let n: usize = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: give a percentage (2%) or a file count"))?;
        if n == 0 {
            return Err("the sample must have at least one file".into());
        }
        Ok(Sample::Count(n))
    }
}

/// How to drill.
#[derive(Clone, Debug)]
pub struct DrillOptions {
    pub sample: Sample,
    /// Where the sample is restored (in a fresh directory, removed after).
    pub scratch: PathBuf,
    /// The largest file whose data is at most this is always drilled.
    pub largest_max: u64,
    /// Set (by a signal handler) to stop, cleaning up the scratch directory.
    pub stop: Option<&'static AtomicBool>,
}

#[derive(Debug, Default)]
pub struct DrillReport {
    pub snapshots: Vec<SnapshotId>,
    pub files: u64,
    /// Data restored and verified (holes excluded).
    pub bytes: u64,
    pub seconds: f64,
    /// Each failure names the snapshot, the file and what went wrong.
    pub failures: Vec<String>,
    /// Damaged objects skipped on the way (an index segment, a snapshot),
    /// each named once.
    pub damaged: Vec<String>,
}

fn random_unit() -> f64 {
    let mut r = [0u8; 8];
    crate::crypto::envelope::random_bytes(&mut r);
    (u64::from_le_bytes(r) >> 11) as f64 / (1u64 << 53) as f64
}

/// Choose the sample of one snapshot: its paths, and the directories
/// that could not be read to choose from.
fn choose(
    repo: &Repository,
    snap: &Snapshot,
    opts: &DrillOptions,
) -> Result<(Vec<Vec<u8>>, Vec<String>)> {
    let zero = crate::blob::PackedBlobSource::zero_chunk(repo);
    let mut largest: Option<(u64, Vec<u8>)> = None;
    let mut chosen: Vec<Vec<u8>> = Vec::new();
    let mut seen = 0usize;
    let sample = opts.sample;
    let unreadable = walk(
        repo,
        &snap.tree,
        |rel, node| {
            if node.kind != NodeKind::File {
                return Ok(Visit::Descend);
            }
            let mut p = b"/".to_vec();
            p.extend_from_slice(rel);
            let data = restorer::data_size(node, zero);
            if data <= opts.largest_max && largest.as_ref().is_none_or(|(s, _)| data > *s) {
                largest = Some((data, p.clone()));
            }
            seen += 1;
            match sample {
                Sample::Fraction(f) => {
                    if random_unit() < f {
                        chosen.push(p);
                    }
                }
                // Reservoir sampling: memory bounded by the sample size.
                Sample::Count(n) => {
                    if chosen.len() < n {
                        chosen.push(p);
                    } else {
                        let j = (random_unit() * seen as f64) as usize;
                        if j < n {
                            chosen[j] = p;
                        }
                    }
                }
            }
            Ok(Visit::Descend)
        },
        |_, _| Ok(()),
    )?;
    if let Some((_, p)) = largest
        && !chosen.contains(&p)
    {
        chosen.push(p);
    }
    Ok((chosen, unreadable.iter().map(|u| format!("/{u}")).collect()))
}

/// Run a drill over `snaps` (a few snapshots). Not enough scratch space is
/// [`Error::DrillScratch`], not a failure of the repository.
pub fn drill(
    repo: &Repository,
    snaps: &[(SnapshotId, Snapshot)],
    opts: &DrillOptions,
    progress: &dyn Progress,
) -> Result<DrillReport> {
    let scratch: &Path = &opts.scratch;
    let start = std::time::Instant::now();
    let mut report = DrillReport::default();
    let mut r = [0u8; 8];
    crate::crypto::envelope::random_bytes(&mut r);
    let dir: PathBuf = scratch.join(format!("coffer-drill-{}", hex::encode(r)));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Target {
        path: dir.clone(),
        source: e,
    })?;
    let result = (|| -> Result<()> {
        for (i, (id, snap)) in snaps.iter().enumerate() {
            report.snapshots.push(*id);
            let (paths, unreadable) = choose(repo, snap, opts)?;
            let fail = |e: String| format!("snapshot {}: {e}", id.short());
            report.failures.extend(unreadable.into_iter().map(fail));
            if paths.is_empty() {
                continue;
            }
            let ropts = RestoreOptions {
                includes: paths,
                verify: true,
                overwrite: Overwrite::Always,
                stop: opts.stop,
                ..Default::default()
            };
            let target = dir.join(i.to_string());
            let restored = restorer::restore(repo, &snap.tree, &target, &ropts, progress);
            // Keep the scratch space small: one snapshot's sample at a time.
            let _ = std::fs::remove_dir_all(&target);
            match restored {
                Ok(s) => {
                    report.files += s.files_verified;
                    report.bytes += s.data_bytes;
                    report.failures.extend(s.errors.into_iter().map(fail));
                    let unreadable = s.unreadable.iter().map(|u| u.to_string());
                    report.failures.extend(unreadable.map(fail));
                    report.damaged.extend(s.damaged);
                }
                Err(Error::NoSpace { needed, free, .. }) => {
                    return Err(Error::DrillScratch {
                        path: scratch.to_path_buf(),
                        needed,
                        free,
                    });
                }
                Err(Error::Interrupted) => return Err(Error::Interrupted),
                Err(e) => report.failures.push(fail(e.to_string())),
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    report.damaged.extend(repo.take_damaged());
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Which snapshots to drill when none is named: the newest, the oldest and
/// one chosen at random between them.
pub fn pick_snapshots(all: Vec<(SnapshotId, Snapshot)>) -> Vec<(SnapshotId, Snapshot)> {
    if all.len() <= 3 {
        return all;
    }
    let n = all.len();
    let mid = 1 + ((random_unit() * (n - 2) as f64) as usize).min(n - 3);
    vec![all[n - 1].clone(), all[mid].clone(), all[0].clone()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_parsing() {
        assert_eq!(Sample::parse("2%").unwrap(), Sample::Fraction(0.02));
        assert_eq!(Sample::parse("50").unwrap(), Sample::Count(50));
        assert!(Sample::parse("0").is_err());
        assert!(Sample::parse("0%").is_err());
        assert!(Sample::parse("abc").is_err());
    }
}
