//! `coffer restore SNAPSHOT --target DIR`

use crate::cli::progress_bars::CliProgress;
use crate::cli::{GlobalOpts, output, repo};
use anyhow::Result;
use clap::Args;
use coffer::restorer::{self, RestoreOptions};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id prefix or `latest`
    pub snapshot: String,
    /// Directory to restore into (created if missing)
    #[arg(short, long)]
    pub target: PathBuf,
    /// Restore only this path of the snapshot (repeatable)
    #[arg(short, long)]
    pub include: Vec<PathBuf>,
}

pub fn run(g: &GlobalOpts, a: &RestoreArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let (id, snap) = repo.resolve_snapshot(&a.snapshot)?;
    let opts = RestoreOptions {
        includes: a
            .include
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect(),
    };
    let progress = CliProgress::new(g.json, g.quiet);
    let start = std::time::Instant::now();
    let result = restorer::restore(repo.as_ref(), &snap.tree, &a.target, &opts, &progress);
    progress.finish();
    let s = result?;
    for e in &s.errors {
        output::warn(e);
    }
    let secs = start.elapsed().as_secs_f64();
    if g.json {
        output::json(&serde_json::json!({
            "message_type": "summary",
            "snapshot_id": id.to_hex(),
            "files_restored": s.files,
            "dirs_restored": s.dirs,
            "other_restored": s.others,
            "bytes_restored": s.bytes,
            "errors": s.errors,
            "total_duration": secs,
        }));
    } else if !g.quiet {
        output::line(&format!(
            "restored {} files, {} dirs, {} other entries ({}) from snapshot {} to {} in {secs:.2}s",
            s.files,
            s.dirs,
            s.others,
            output::bytes(s.bytes),
            id.short(),
            a.target.display()
        ));
    }
    if !s.errors.is_empty() {
        anyhow::bail!(
            "{} entries could not be restored (listed above)",
            s.errors.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
