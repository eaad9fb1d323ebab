//! `coffer backup PATH...`

use crate::cli::progress_bars::CliProgress;
use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Result, bail};
use clap::Args;
use coffer::archiver::{self, BackupOptions, SnapshotOptions};
use coffer::repository::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Add a tag to the snapshot (repeatable, or comma-separated)
    #[arg(long = "tag", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Hostname to record (default: this machine's)
    #[arg(long)]
    pub host: Option<String>,
    /// Snapshot to compare with (default: the latest of this host and paths)
    #[arg(long)]
    pub parent: Option<String>,
    /// Re-read every file, even those unchanged since the parent snapshot
    #[arg(long)]
    pub force: bool,
    /// Reader threads (default: the number of CPUs)
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(g: &GlobalOpts, a: &BackupArgs) -> Result<ExitCode> {
    let mut paths = Vec::new();
    for p in &a.paths {
        match archiver::absolute_path(p) {
            Ok(abs) if std::fs::symlink_metadata(&abs).is_ok() => paths.push(abs),
            _ => output::warn(&format!(
                "{}: does not exist or cannot be read; skipped",
                p.display()
            )),
        }
    }
    if paths.is_empty() {
        bail!("none of the given paths exist: nothing to back up");
    }
    paths.sort();
    paths.dedup();

    let (repo_path, is_default) = repo::location(g)?;
    if is_default && !repo_path.join("config").exists() {
        super::init::create_with_key_file(
            &repo_path,
            &repo::default_key_file()?,
            Config::default(),
            g.quiet,
        )?;
    }
    let repo = repo::open(g)?;
    let hostname = a.host.clone().unwrap_or_else(coffer::repository::hostname);

    let parent = match &a.parent {
        Some(r) => Some(repo.resolve_snapshot(r)?),
        None => {
            let want: Vec<Vec<u8>> = paths
                .iter()
                .map(|p| std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec())
                .collect();
            repo.list_snapshots()?
                .into_iter()
                .rev()
                .find(|(_, s)| s.hostname == hostname && s.paths == want)
        }
    };
    let opts = SnapshotOptions {
        backup: BackupOptions {
            paths,
            force: a.force,
            threads: a
                .threads
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(2)
                })
                .max(1),
        },
        parent,
        tags: a.tags.iter().filter(|t| !t.is_empty()).cloned().collect(),
        hostname,
    };
    let progress = CliProgress::new(g.json, g.quiet);
    let result = archiver::snapshot(repo.clone(), &opts, &progress);
    progress.finish();
    let (id, snap, outcome) = result?;
    let s = &outcome.summary;
    if g.json {
        output::json(&serde_json::json!({
            "message_type": "summary",
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unmodified": s.files_unmodified,
            "dirs_new": s.dirs_new,
            "dirs_changed": s.dirs_changed,
            "dirs_unmodified": s.dirs_unmodified,
            "total_files_processed": s.total_files,
            "total_bytes_processed": s.total_bytes,
            "bytes_read": s.bytes_read,
            "data_added": s.bytes_added,
            "total_duration": s.duration_ms as f64 / 1000.0,
            "warnings": s.warnings,
            "snapshot_id": id.to_hex(),
            "parent": snap.parent.map(|p| p.to_hex()),
        }));
    } else if !g.quiet {
        output::line(&format!(
            "Files: {} new, {} changed, {} unmodified",
            s.files_new, s.files_changed, s.files_unmodified
        ));
        output::line(&format!(
            "Dirs:  {} new, {} changed, {} unmodified",
            s.dirs_new, s.dirs_changed, s.dirs_unmodified
        ));
        output::line(&format!(
            "Read {} of {} in {} files; added {} to the repository (after dedup and compression)",
            output::bytes(s.bytes_read),
            output::bytes(s.total_bytes),
            s.total_files,
            output::bytes(s.bytes_added)
        ));
        output::line(&format!("Duration {:.2}s", s.duration_ms as f64 / 1000.0));
        if !outcome.warnings.is_empty() {
            output::line(&format!(
                "{} files or directories could not be read completely (see warnings above)",
                outcome.warnings.len()
            ));
        }
        output::line(&format!("snapshot {} saved", id.short()));
    }
    Ok(if outcome.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
