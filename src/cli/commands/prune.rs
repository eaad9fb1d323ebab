//! `coffer prune [--max-unused 5%] [--dry-run]`

use crate::cli::progress_bars::CliProgress;
use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Result, anyhow};
use clap::Args;
use coffer::id::SnapshotId;
use coffer::repository::Repository;
use coffer::retention::prune::{self, PruneOptions};
use std::process::ExitCode;

#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:
  coffer prune
  coffer prune --max-unused 0% --dry-run")]
pub struct PruneArgs {
    /// Unused space to tolerate, as a share of the data in use (repacks the emptiest packs until under it)
    #[arg(long, default_value = "5%")]
    pub max_unused: String,
    /// Show what would be removed, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

pub fn max_unused(s: &str) -> Result<f64> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| anyhow!("--max-unused {s:?}: give a percentage such as 5%"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(anyhow!("--max-unused must be between 0% and 100%"));
    }
    Ok(v / 100.0)
}

/// Plan and (unless dry-run) execute, as if the `forgotten` snapshots were
/// gone; the caller holds an exclusive lock.
pub fn prune_locked(
    g: &GlobalOpts,
    repo: &Repository,
    a: &PruneArgs,
    forgotten: &[SnapshotId],
) -> Result<()> {
    let opts = PruneOptions {
        max_unused: max_unused(&a.max_unused)?,
        forgotten: forgotten.iter().copied().collect(),
    };
    let plan = prune::plan(repo, &opts)?;
    let freed = plan.bytes_to_delete();
    if !g.quiet && !g.json {
        if let Some(n) = &plan.cache_note {
            output::line(&format!("note: {n}"));
        }
        output::line(&format!(
            "{}, {} ({}), {} in use",
            output::count(plan.snapshots, "snapshot", "snapshots"),
            output::count(plan.packs_total, "pack", "packs"),
            output::bytes(plan.bytes_total),
            output::bytes(plan.bytes_used)
        ));
        output::line(&format!(
            "{}: {} unused, {} to repack, {} unindexed; up to {} to free",
            if a.dry_run {
                "would remove"
            } else {
                "removing"
            },
            output::count(plan.delete.len(), "pack", "packs"),
            output::count(plan.repack.len(), "pack", "packs"),
            output::count(plan.unindexed.len(), "pack", "packs"),
            output::bytes(freed)
        ));
        if g.verbose > 0 {
            list_packs(&plan);
        }
    }
    if a.dry_run {
        if g.json {
            output::json(&serde_json::json!({
                "message_type": "summary", "dry_run": true,
                "packs_to_delete": plan.delete.len(), "packs_to_repack": plan.repack.len(),
                "unindexed_packs": plan.unindexed.len(), "bytes_to_free": freed,
            }));
        }
        return Ok(());
    }
    let progress = CliProgress::new(g.json, g.quiet).counting("packs", "repacked");
    let r = prune::execute(repo, &plan, &progress);
    progress.finish();
    let r = r?;
    if g.json {
        output::json(&serde_json::json!({
            "message_type": "summary", "dry_run": false,
            "packs_deleted": r.packs_deleted, "packs_repacked": r.packs_repacked,
            "packs_written": r.packs_written, "blobs_repacked": r.blobs_repacked,
            "bytes_freed": r.bytes_freed, "temporary_files_removed": r.temps_removed,
        }));
    } else if !g.quiet {
        output::line(&format!(
            "deleted {}, repacked {} ({} into {}), freed {}",
            output::count(r.packs_deleted, "pack", "packs"),
            output::count(r.packs_repacked, "pack", "packs"),
            output::count(r.blobs_repacked, "blob", "blobs"),
            output::count(r.packs_written, "new pack", "new packs"),
            output::bytes(r.bytes_freed)
        ));
        if r.temps_removed > 0 {
            output::line(&format!(
                "removed {} left by interrupted writes",
                output::count(r.temps_removed, "temporary file", "temporary files")
            ));
        }
    }
    Ok(())
}

/// `-v`: each pack the plan removes or repacks, with its size.
fn list_packs(plan: &prune::PrunePlan) {
    let delete = plan.delete.iter().map(|(p, n)| ("unused", p.to_hex(), n));
    let repack = plan.repack.iter().map(|(p, n)| ("repack", p.to_hex(), n));
    let unindexed = plan
        .unindexed
        .iter()
        .map(|(p, n)| ("unindexed", p.clone(), n));
    for (why, pack, size) in delete.chain(repack).chain(unindexed) {
        output::line(&format!("  {why:<9} {pack} ({})", output::bytes(*size)));
    }
}

pub fn run(g: &GlobalOpts, a: &PruneArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let _lock = repo::write_lock(g, &repo, true, "prune")?;
    prune_locked(g, &repo, a, &[])?;
    Ok(ExitCode::SUCCESS)
}
