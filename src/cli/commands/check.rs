//! `coffer check [--read-data | --read-data-subset 10%|n/m]`

use crate::cli::progress_bars::CliProgress;
use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Result, anyhow};
use clap::Args;
use coffer::check::{ReadData, check};
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer check
  coffer check --read-data-subset 1/30
  coffer check --read-data")]
pub struct CheckArgs {
    /// Also read every pack and verify every blob
    #[arg(long)]
    pub read_data: bool,
    /// Read only a subset of packs: a percentage (10%) or a slice (n/m)
    #[arg(long, conflicts_with = "read_data")]
    pub read_data_subset: Option<String>,
}

pub fn run(g: &GlobalOpts, a: &CheckArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let _lock = repo::read_lock(g, &repo)?;
    let read = match (&a.read_data, &a.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some(s)) => {
            ReadData::parse_subset(s).map_err(|e| anyhow!("--read-data-subset {e}"))?
        }
        _ => ReadData::None,
    };
    let progress = CliProgress::new(g.json, g.quiet).counting("packs", "verified");
    let f = check(&repo, read, &progress);
    progress.finish();
    let f = f?;
    if g.json {
        output::json(&serde_json::json!({
            "message_type": "summary",
            "errors": f.errors, "infos": f.infos,
            "snapshots": f.snapshots, "trees": f.trees, "packs": f.packs,
            "packs_read": f.packs_read, "blobs_read": f.blobs_read, "bytes_read": f.bytes_read,
        }));
    } else {
        for e in &f.errors {
            output::line(&format!("error: {e}"));
        }
        if !g.quiet {
            for i in &f.infos {
                output::line(&format!("info: {i}"));
            }
            output::line(&format!(
                "checked {}, {}, {}{}: {}",
                output::count(f.snapshots, "snapshot", "snapshots"),
                output::count(f.trees, "tree", "trees"),
                output::count(f.packs, "pack", "packs"),
                if read == ReadData::None {
                    String::new()
                } else {
                    format!(
                        " ({}, {}, {} read in full)",
                        output::count(f.packs_read, "pack", "packs"),
                        output::count(f.blobs_read, "blob", "blobs"),
                        output::bytes(f.bytes_read)
                    )
                },
                if f.errors.is_empty() {
                    "no errors".to_string()
                } else {
                    format!("{} errors", f.errors.len())
                }
            ));
        }
    }
    if !f.errors.is_empty() {
        anyhow::bail!(
            "the repository has {} errors (listed above)",
            f.errors.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
