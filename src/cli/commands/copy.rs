//! `coffer copy --from-repo SRC [SNAPSHOT...]`: copy snapshots from SRC
//! into the repository of `--repo` (restic's direction).

use crate::cli::commands::{FromRepo, SnapshotFilter};
use crate::cli::progress_bars::CliProgress;
use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Result, bail};
use clap::Args;
use coffer::replicate::{self, CopyOutcome};
use coffer::repository::Repository;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer copy --repo /mnt/offsite/coffer --from-repo /mnt/backup/coffer
  coffer copy --repo /mnt/offsite/coffer --from-repo /mnt/backup/coffer --host web1 latest")]
pub struct CopyArgs {
    /// Snapshots to copy (id prefixes or `latest`); without them, every
    /// snapshot of the source the filters admit
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub from: FromRepo,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

pub fn run(g: &GlobalOpts, a: &CopyArgs) -> Result<ExitCode> {
    let Some(src) = a.from.open(g)? else {
        bail!(
            "copy needs the repository to copy from: give --from-repo DIR (or COFFER_FROM_REPOSITORY)"
        );
    };
    let dst = repo::open(g)?;
    copy(g, src, dst, a)
}

/// Copy what `a` selects from `src` into `dst` (also `run`'s copy step).
pub fn copy(
    g: &GlobalOpts,
    src: Arc<Repository>,
    dst: Arc<Repository>,
    a: &CopyArgs,
) -> Result<ExitCode> {
    // Damage in the source (its config, a snapshot that does not read) is
    // named as met, and makes the copy exit 3: a skipped snapshot is never
    // silent.
    let opened = super::report_problems(&src);
    // Shared locks: a prune of either side must not delete what is being
    // copied; the source gets nothing else written.
    let _src_lock = repo::read_lock(g, &src)?;
    let _dst_lock = repo::lock_to_write(g, &dst, false, "copy")?;
    let snaps = a.filter.select(&src, &a.snapshots)?;
    if !src.shares_ids_with(&dst) && !g.quiet {
        output::notice(
            "coffer: the two repositories do not share keys: every blob of the copied snapshots is read to learn its id in the destination, and backups into the destination will not deduplicate against the copies (a destination made with `coffer init --from-repo` avoids both)",
        );
    }
    let progress = CliProgress::new(g.json, g.quiet).counting("snapshots", "copied");
    let report = |o: &CopyOutcome| {
        progress.suspend(|| {
            if g.json {
                output::json(&serde_json::json!({
                    "message_type": "snapshot",
                    "source": o.source.to_hex(),
                    "destination": o.destination.to_hex(),
                    "copied": o.copied,
                    "trees_read": o.stats.trees_read,
                    "trees_skipped": o.stats.trees_skipped,
                    "trees_copied": o.stats.trees_copied,
                    "blobs_copied": o.stats.blobs_copied,
                    "bytes_copied": o.stats.bytes_copied,
                    "bytes_added": o.stats.bytes_added,
                }));
                return;
            }
            if g.quiet {
                return;
            }
            if o.copied {
                output::line(&format!(
                    "snapshot {} copied as {}: {}, {} ({} stored)",
                    o.source.short(),
                    o.destination.short(),
                    output::count(o.stats.blobs_copied + o.stats.trees_copied, "blob", "blobs"),
                    output::bytes(o.stats.bytes_copied),
                    output::bytes(o.stats.bytes_added),
                ));
                if g.verbose > 0 {
                    output::line(&format!(
                        "  {} read, {} skipped as complete in the destination, {} stored",
                        output::count(o.stats.trees_read, "tree", "trees"),
                        o.stats.trees_skipped,
                        o.stats.trees_copied
                    ));
                }
            } else {
                output::line(&format!(
                    "snapshot {} is already in the destination as {}",
                    o.source.short(),
                    o.destination.short()
                ));
            }
        })
    };
    let run = replicate::copy_snapshots(&src, &dst, &snaps, &progress, report);
    progress.finish();
    let run = run?;
    let done = run.snapshots;
    let copied = done.iter().filter(|o| o.copied).count();
    if g.json {
        output::json(&serde_json::json!({
            "message_type": "summary",
            "snapshots_copied": copied,
            "snapshots_present": done.len() - copied,
            "bytes_added": done.iter().map(|o| o.stats.bytes_added).sum::<u64>(),
        }));
    } else if !g.quiet {
        output::notice(&format!(
            "{} copied, {} already present",
            output::count(copied, "snapshot", "snapshots"),
            done.len() - copied
        ));
    }
    // The source's damage names the source; the destination's is the
    // repository of `--repo`, as every other command names it.
    let source = src.location();
    let met: Vec<String> = (run.source_damaged.iter())
        .map(|d| format!("{source}: {d}"))
        .chain(run.destination_damaged)
        .collect();
    for d in &met {
        output::warn(d);
    }
    Ok(if opened.is_empty() && met.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
