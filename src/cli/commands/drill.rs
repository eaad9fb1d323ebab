//! `coffer drill [SNAPSHOT] [--sample 2%|N]`

use crate::cli::progress_bars::CliProgress;
use crate::cli::{GlobalOpts, output, repo, signals};
use anyhow::{Result, anyhow, bail};
use clap::Args;
use coffer::drill::{DrillOptions, Sample, drill, pick_snapshots};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer drill
  coffer drill latest --sample 2% --scratch-dir /var/tmp")]
pub struct DrillArgs {
    /// Snapshot to drill (default: the newest, the oldest and one between)
    pub snapshot: Option<String>,
    /// Files to restore per snapshot: a share (2%) or a count (50); the
    /// largest file (up to --largest-max) is always included
    #[arg(long, default_value = "2%")]
    pub sample: String,
    /// Where to restore the sample (removed afterwards; default: the system temp dir)
    #[arg(long)]
    pub scratch_dir: Option<PathBuf>,
    /// Drill only these snapshots (and `latest` is the newest of them)
    #[command(flatten)]
    pub filter: super::SnapshotFilter,
    /// The largest file is always drilled when its data (holes excluded)
    /// is at most this (K, M, G, T)
    #[arg(long, default_value = "1G", value_name = "SIZE")]
    pub largest_max: String,
}

pub fn run(g: &GlobalOpts, a: &DrillArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let sample = Sample::parse(&a.sample).map_err(|e| anyhow!("--sample {e}"))?;
    let snaps = match &a.snapshot {
        Some(r) => vec![a.filter.resolve(&repo, r)?],
        None => pick_snapshots(a.filter.select(&repo, &[])?),
    };
    if snaps.is_empty() {
        bail!("the repository has no snapshots to drill");
    }
    let opts = DrillOptions {
        sample,
        scratch: a.scratch_dir.clone().unwrap_or_else(std::env::temp_dir),
        largest_max: super::parse_size(&a.largest_max).map_err(|e| anyhow!("--largest-max {e}"))?,
        stop: Some(signals::stop_on_signal()),
    };
    let progress = CliProgress::new(g.json, g.quiet);
    let r = drill(&repo, &snaps, &opts, &progress);
    progress.finish();
    let r = match r {
        Err(coffer::Error::Interrupted) => {
            output::error(&anyhow!(
                "drill interrupted; its scratch directory was removed"
            ));
            return Ok(signals::exit_code());
        }
        r => r?,
    };
    let rate = if r.seconds > 0.0 {
        (r.bytes as f64 / r.seconds) as u64
    } else {
        0
    };
    if g.json {
        output::json(&serde_json::json!({
            "message_type": "summary",
            "snapshots": r.snapshots.iter().map(|s| s.to_hex()).collect::<Vec<_>>(),
            "files_verified": r.files, "bytes": r.bytes, "seconds": r.seconds,
            "bytes_per_second": rate, "failures": r.failures,
        }));
    } else {
        for f in &r.failures {
            output::line(&format!("FAILED: {f}"));
        }
        if !g.quiet {
            output::line(&format!(
                "drill: restored and verified {} ({}) from {} in {:.2}s ({}/s): {}",
                output::count(r.files, "file", "files"),
                output::bytes(r.bytes),
                output::count(r.snapshots.len(), "snapshot", "snapshots"),
                r.seconds,
                output::bytes(rate),
                if r.failures.is_empty() {
                    "all match".to_string()
                } else {
                    format!("{} FAILURES", r.failures.len())
                }
            ));
        }
    }
    let code = output::damaged(&r.damaged);
    if !r.failures.is_empty() {
        bail!(
            "the restore drill found {} failures (listed above)",
            r.failures.len()
        );
    }
    Ok(code)
}
