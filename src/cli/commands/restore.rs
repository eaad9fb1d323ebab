//! `coffer restore SNAPSHOT[:PATH] --target DIR`

use crate::cli::progress_bars::CliProgress;
use crate::cli::{GlobalOpts, output, repo, signals};
use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use coffer::id::BlobId;
use coffer::repository::Repository;
use coffer::restorer::{self, Overwrite, RestoreOptions};
use coffer::snapshot::tree::NodeKind;
use coffer::snapshot::walk::find_path;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OverwriteArg {
    Always,
    IfChanged,
    Never,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer restore latest --target /tmp/r
  coffer restore latest:/home/me/projects/app --target /tmp/app
  coffer restore 1a2b3c4d --target /tmp/r --include '*.sql' --verify")]
pub struct RestoreArgs {
    /// Snapshot id prefix or `latest`; `SNAPSHOT:PATH` restores the
    /// contents of PATH directly into the target
    pub snapshot: String,
    /// Directory to restore into (created if missing)
    #[arg(short, long)]
    pub target: PathBuf,
    /// Restore only paths matching (a path prefix or a glob; repeatable)
    #[arg(short, long)]
    pub include: Vec<PathBuf>,
    /// Leave out paths matching (a path prefix or a glob; repeatable)
    #[arg(short, long)]
    pub exclude: Vec<PathBuf>,
    /// Existing files: replace always, only when their content differs, or never
    #[arg(long, value_enum, default_value = "if-changed")]
    pub overwrite: OverwriteArg,
    /// Re-read every restored file and check it against the snapshot
    #[arg(long)]
    pub verify: bool,
    /// Show what would be restored, write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Which snapshot `latest` means
    #[command(flatten)]
    pub filter: super::SnapshotFilter,
    /// Write even when the target seems too small for what would be written
    #[arg(long)]
    pub skip_space_check: bool,
}

/// What `SNAPSHOT[:PATH]` names.
pub struct Subtree {
    pub snapshot: coffer::id::SnapshotId,
    /// The tree to restore.
    pub tree: BlobId,
    /// Its path in the snapshot.
    pub path: Vec<u8>,
    /// When PATH is a single file: the include that selects just it.
    pub only: Option<Vec<u8>>,
}

/// Resolve `SNAPSHOT[:PATH]`, `latest` as `filter` narrows it.
pub fn resolve_subtree(
    repo: &Repository,
    reference: &str,
    filter: &super::SnapshotFilter,
) -> Result<Subtree> {
    let (snap_ref, path) = match reference.split_once(':') {
        Some((s, p)) => (s, Some(p)),
        None => (reference, None),
    };
    let (id, snap) = filter.resolve(repo, snap_ref)?;
    let Some(path) = path
        .map(|p| p.trim_end_matches('/'))
        .filter(|p| !p.is_empty())
    else {
        return Ok(Subtree {
            snapshot: id,
            tree: snap.tree,
            path: b"/".to_vec(),
            only: None,
        });
    };
    let rel = path.trim_start_matches('/');
    let Some(node) = find_path(repo, &snap.tree, rel.as_bytes())? else {
        bail!("{path} is not in snapshot {}", id.short());
    };
    let full = format!("/{rel}").into_bytes();
    match (node.kind, node.subtree) {
        (NodeKind::Dir, Some(sub)) => Ok(Subtree {
            snapshot: id,
            tree: sub,
            path: full,
            only: None,
        }),
        _ => {
            // A single file: restore its directory, selecting just it.
            let parent_rel = rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
            let parent_tree = if parent_rel.is_empty() {
                snap.tree
            } else {
                match find_path(repo, &snap.tree, parent_rel.as_bytes())? {
                    Some(n) => n
                        .subtree
                        .ok_or_else(|| anyhow::anyhow!("{parent_rel} is not a directory"))?,
                    None => bail!("{path} is not in snapshot {}", id.short()),
                }
            };
            Ok(Subtree {
                snapshot: id,
                tree: parent_tree,
                path: format!("/{parent_rel}").into_bytes(),
                only: Some(full),
            })
        }
    }
}

pub fn run(g: &GlobalOpts, a: &RestoreArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let Subtree {
        snapshot: id,
        tree,
        path: root_path,
        only,
    } = resolve_subtree(&repo, &a.snapshot, &a.filter)?;
    let mut includes: Vec<Vec<u8>> = a
        .include
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect();
    if let Some(f) = only {
        if !includes.is_empty() {
            bail!("--include cannot be combined with SNAPSHOT:PATH naming a single file");
        }
        includes.push(f);
    }
    let opts = RestoreOptions {
        includes,
        excludes: a
            .exclude
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect(),
        overwrite: match a.overwrite {
            OverwriteArg::Always => Overwrite::Always,
            OverwriteArg::IfChanged => Overwrite::IfChanged,
            OverwriteArg::Never => Overwrite::Never,
        },
        verify: a.verify,
        dry_run: a.dry_run,
        root_path,
        skip_space_check: a.skip_space_check,
        stop: Some(signals::stop_on_signal()),
    };
    let progress = CliProgress::new(g.json, g.quiet)
        .counting("files", "restored")
        .listing(g.verbose, g.quiet);
    let start = std::time::Instant::now();
    let result = restorer::restore(repo.as_ref(), &tree, &a.target, &opts, &progress);
    progress.finish();
    let s = match result {
        Err(coffer::Error::Interrupted) => {
            output::error(&anyhow::anyhow!(
                "restore interrupted: the files already restored are complete, the ones being written were removed; run the same restore again to finish it"
            ));
            return Ok(signals::exit_code());
        }
        r => r?,
    };
    for e in s.damaged_packs.iter().chain(&s.errors) {
        output::warn(e);
    }
    for u in &s.unreadable {
        output::warn(&u.to_string());
    }
    if a.dry_run && !g.json {
        for p in &s.planned {
            output::line(&format!("would restore {p}"));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if g.json {
        output::json(&serde_json::json!({
            "message_type": "summary",
            "snapshot_id": id.to_hex(),
            "dry_run": a.dry_run,
            "files_restored": s.files,
            "files_unchanged": s.files_unchanged,
            "entries_kept": s.kept,
            "files_verified": s.files_verified,
            "dirs_restored": s.dirs,
            "other_restored": s.others,
            "bytes_restored": s.bytes,
            "errors": s.errors,
            "entries_not_restored": s.errors.len() as u64 + s.not_restored,
            "unreadable_dirs": s.unreadable.iter().map(|u| String::from_utf8_lossy(&u.path).into_owned()).collect::<Vec<_>>(),
            "damaged_packs": s.damaged_packs,
            "planned": s.planned,
            "total_duration": secs,
        }));
    } else if !g.quiet {
        let verb = if a.dry_run {
            "would restore"
        } else {
            "restored"
        };
        let mut line = format!(
            "{verb} {}, {}, {} ({}) from snapshot {} to {} in {secs:.2}s",
            output::count(s.files, "file", "files"),
            output::count(s.dirs, "dir", "dirs"),
            output::count(s.others, "other entry", "other entries"),
            output::bytes(s.bytes),
            id.short(),
            a.target.display()
        );
        if s.files_unchanged > 0 {
            line.push_str(&format!(
                "; {} already up to date",
                output::count(s.files_unchanged, "file", "files")
            ));
        }
        if s.kept > 0 {
            line.push_str(&format!(
                "; {} kept as they were (--overwrite never)",
                output::count(s.kept, "existing entry", "existing entries")
            ));
        }
        if a.verify {
            line.push_str(&format!(
                "; {} verified",
                output::count(s.files_verified, "file", "files")
            ));
        }
        output::line(&line);
    }
    for d in &s.damaged {
        output::warn(d);
    }
    if !s.errors.is_empty() || s.not_restored > 0 {
        let below = if s.not_restored > 0 {
            format!(
                ", {} of them below directories that could not be made",
                s.not_restored
            )
        } else {
            String::new()
        };
        bail!(
            "{} could not be restored{below} (listed above)",
            output::count(s.errors.len() as u64 + s.not_restored, "entry", "entries")
        );
    }
    if !s.unreadable.is_empty() {
        bail!(
            "{} directories could not be read from the repository and are empty at the target (listed above); everything else was restored",
            s.unreadable.len()
        );
    }
    // Every file restored, but through damage that `check` should see.
    if !s.damaged_packs.is_empty() || !s.damaged.is_empty() {
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}
