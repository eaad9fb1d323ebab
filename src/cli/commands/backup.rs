//! `coffer backup PATH...`

use crate::cli::progress_bars::CliProgress;
use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Result, bail};
use clap::Args;
use coffer::archiver::{self, BackupOptions, SnapshotOptions};
use coffer::id::SnapshotId;
use coffer::repository::Repository;
use coffer::repository::config::Config;
use coffer::snapshot::Snapshot;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer backup ~/projects /etc
  coffer backup --exclude-caches --exclude '*.tmp' --tag nightly /srv
  coffer backup --stdin-from-command --stdin-name db.sql -- pg_dumpall -U postgres")]
pub struct BackupArgs {
    /// Files and directories to back up (with --stdin-from-command: the
    /// command and its arguments, after `--`)
    pub paths: Vec<PathBuf>,
    /// Back up standard input as one file
    #[arg(long)]
    pub stdin: bool,
    /// File name for --stdin / --stdin-from-command (restic's
    /// --stdin-filename works too)
    #[arg(long, visible_alias = "stdin-filename", default_value = "stdin")]
    pub stdin_name: String,
    /// Run the command given after `--` and back up its output; if it
    /// exits non-zero, the backup fails and no snapshot is written
    #[arg(long)]
    pub stdin_from_command: bool,
    /// Record a stream that read nothing (by default an empty stream is
    /// refused: it is usually a dump that failed)
    #[arg(long)]
    pub allow_empty: bool,
    /// Add a tag to the snapshot (repeatable, or comma-separated)
    #[arg(long = "tag", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Hostname to record (default: this machine's)
    #[arg(long)]
    pub host: Option<String>,
    /// Record this time for the snapshot instead of now ("YYYY-MM-DD
    /// HH:MM:SS" in local time, or RFC 3339 with Z or an offset)
    #[arg(long)]
    pub time: Option<String>,
    /// Snapshot to compare with (default: the latest of this host and paths)
    #[arg(long)]
    pub parent: Option<String>,
    /// Re-read every file, even those unchanged since the parent snapshot
    #[arg(long)]
    pub force: bool,
    /// Leave out paths matching a pattern (gitignore-style; repeatable; `!` re-includes)
    #[arg(long = "exclude", short = 'e')]
    pub exclude: Vec<String>,
    /// Like --exclude, ignoring case
    #[arg(long = "iexclude")]
    pub iexclude: Vec<String>,
    /// Read exclude patterns from a file (one per line, # comments)
    #[arg(long = "exclude-file")]
    pub exclude_file: Vec<PathBuf>,
    /// Like --exclude-file, ignoring case
    #[arg(long = "iexclude-file")]
    pub iexclude_file: Vec<PathBuf>,
    /// Leave out the contents of directories with a valid CACHEDIR.TAG
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out directories that contain a file of this name (repeatable)
    #[arg(long)]
    pub exclude_if_present: Vec<String>,
    /// Leave out files larger than this (e.g. 2G)
    #[arg(long)]
    pub exclude_larger_than: Option<String>,
    /// Do not cross into other filesystems (mount points are kept, empty)
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Reader threads (default: the number of CPUs)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also back up the paths listed in FILE, one per line (`#` comments
    /// and blank lines skipped; `-` reads standard input; repeatable)
    #[arg(long, value_name = "FILE")]
    pub files_from: Vec<PathBuf>,
    /// Like --files-from, but every line is a path, `#` and blanks included
    #[arg(long, value_name = "FILE")]
    pub files_from_verbatim: Vec<PathBuf>,
    /// Like --files-from, with paths separated by NUL bytes (`find -print0`)
    #[arg(long, value_name = "FILE")]
    pub files_from_raw: Vec<PathBuf>,
    /// Read and compare everything as a backup would, but write nothing:
    /// report what would be added (before compression)
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

/// How a `--files-from*` file separates and filters its paths.
#[derive(Clone, Copy)]
enum ListForm {
    Lines,
    Verbatim,
    Raw,
}

/// The paths a `--files-from*` option names.
fn listed_paths(file: &std::path::Path, form: ListForm) -> Result<Vec<PathBuf>> {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    let mut data = Vec::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().lock().read_to_end(&mut data)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut data))
    };
    read.map_err(|e| anyhow::anyhow!("cannot read the list of paths {}: {e}", file.display()))?;
    let sep = if matches!(form, ListForm::Raw) {
        0
    } else {
        b'\n'
    };
    let mut out = Vec::new();
    for item in data.split(|&b| b == sep) {
        let item = match form {
            ListForm::Raw => item,
            _ => item.strip_suffix(b"\r").unwrap_or(item),
        };
        let skip = match form {
            ListForm::Lines => {
                let t = item.trim_ascii();
                t.is_empty() || t.starts_with(b"#")
            }
            ListForm::Verbatim | ListForm::Raw => item.is_empty(),
        };
        if skip {
            continue;
        }
        let item = if matches!(form, ListForm::Lines) {
            item.trim_ascii()
        } else {
            item
        };
        out.push(PathBuf::from(std::ffi::OsStr::from_bytes(item)));
    }
    Ok(out)
}

pub fn run(g: &GlobalOpts, a: &BackupArgs) -> Result<ExitCode> {
    Ok(backup(g, a)?.code)
}

/// What a backup did, for a profile's hooks and the metrics file.
pub struct Done {
    pub code: ExitCode,
    /// None for a dry run.
    pub snapshot: Option<SnapshotId>,
    pub summary: archiver::Summary,
    /// The `--json` summary object.
    pub json: serde_json::Value,
}

/// [`run`], returning what the backup did.
pub fn backup(g: &GlobalOpts, a: &BackupArgs) -> Result<Done> {
    if a.stdin || a.stdin_from_command {
        return run_stream(g, a);
    }
    // Before anything is created, even the default repository.
    let time_ns = a.time.as_deref().map(snapshot_time).transpose()?;
    if a.allow_empty {
        bail!("--allow-empty is for a stream (--stdin, --stdin-from-command); remove it");
    }
    let mut given = a.paths.clone();
    for (files, form) in [
        (&a.files_from, ListForm::Lines),
        (&a.files_from_verbatim, ListForm::Verbatim),
        (&a.files_from_raw, ListForm::Raw),
    ] {
        for f in files {
            given.extend(listed_paths(f, form)?);
        }
    }
    if given.is_empty() {
        bail!(
            "nothing to back up: give one or more paths, --files-from FILE, --stdin, or --stdin-from-command -- CMD"
        );
    }
    let mut paths = Vec::new();
    let mut skipped = 0u64;
    for p in &given {
        match archiver::absolute_path(p) {
            Ok(abs) if std::fs::symlink_metadata(&abs).is_ok() => paths.push(abs),
            _ => {
                skipped += 1;
                output::warn(&format!(
                    "{}: does not exist or cannot be read; skipped",
                    p.display()
                ));
            }
        }
    }
    if paths.is_empty() {
        bail!("none of the given paths exist: nothing to back up");
    }
    paths.sort();
    paths.dedup();

    // A dry run creates nothing, not even the default repository.
    let repo = if a.dry_run {
        repo::open(g)?
    } else {
        open_or_create(g)?
    };
    let hostname = a.host.clone().unwrap_or_else(coffer::repository::hostname);
    let want: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec())
        .collect();
    let parent = find_parent(&repo, a.parent.as_deref(), &hostname, &want)?;
    let mut excludes = excludes(a)?;
    leave_out_own_dirs(g, &paths, &mut excludes)?;
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
            excludes,
        },
        parent,
        tags: a.tags.iter().filter(|t| !t.is_empty()).cloned().collect(),
        hostname,
        time_ns,
    };
    let _lock = repo::write_lock(g, &repo, false, "backup")?;
    let progress = CliProgress::new(g.json, g.quiet)
        .with_json_status_per_bytes()
        .listing(g.verbose, g.quiet);
    if a.dry_run {
        let result = archiver::dry_run(repo.clone(), &opts, &progress);
        progress.finish();
        let mut outcome = result?;
        outcome.summary.warnings += skipped;
        let code = report_dry_run(g, &outcome)?;
        return Ok(Done {
            code,
            snapshot: None,
            json: dry_run_json(&outcome.summary),
            summary: outcome.summary,
        });
    }
    let result = archiver::snapshot(repo.clone(), &opts, &progress);
    progress.finish();
    let (id, snap, mut outcome) = result?;
    // A skipped path makes the snapshot incomplete, like an unreadable file.
    outcome.summary.warnings += skipped;
    done(g, id, &snap, outcome)
}

/// Report the backup, and what it did.
fn done(
    g: &GlobalOpts,
    id: SnapshotId,
    snap: &Snapshot,
    outcome: archiver::BackupOutcome,
) -> Result<Done> {
    let code = report(g, &id, snap, &outcome)?;
    Ok(Done {
        code,
        snapshot: Some(id),
        json: saved_json(&id, snap, &outcome.summary),
        summary: outcome.summary,
    })
}

/// `--time` → ns since the epoch; a time still to come is allowed (a
/// backup recorded for tonight) but said, since it sorts after every
/// snapshot taken until then and becomes their `latest` and parent.
pub(super) fn snapshot_time(s: &str) -> Result<i64> {
    let ns = coffer::localtime::parse_time(s).map_err(|e| anyhow::anyhow!("--time: {e}"))?;
    if ns > coffer::repository::now_ns() {
        output::warn(&format!(
            "--time {s} is in the future: the snapshot sorts after every backup made before then"
        ));
    }
    Ok(ns)
}

fn excludes(a: &BackupArgs) -> Result<coffer::archiver::exclude::Excludes> {
    let mut ex = coffer::archiver::exclude::Excludes::default();
    for p in &a.exclude {
        ex.add(p, false)?;
    }
    for p in &a.iexclude {
        ex.add(p, true)?;
    }
    for (files, ci) in [(&a.exclude_file, false), (&a.iexclude_file, true)] {
        for f in files {
            let text = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("cannot read exclude file {}: {e}", f.display()))?;
            ex.add_file(&text, ci)?;
        }
    }
    ex.exclude_caches = a.exclude_caches;
    ex.if_present = a.exclude_if_present.clone();
    ex.larger_than = a
        .exclude_larger_than
        .as_deref()
        .map(super::parse_size)
        .transpose()?;
    ex.one_file_system = a.one_file_system;
    Ok(ex)
}

/// The repository being written and coffer's cache are never part of a
/// backup (a backup of `~` holds both when they are in their default
/// places); say so once when a backed-up path contains them.
fn leave_out_own_dirs(
    g: &GlobalOpts,
    paths: &[PathBuf],
    excludes: &mut coffer::archiver::exclude::Excludes,
) -> Result<()> {
    let cache = repo::cache_root(g);
    if let Some(c) = &cache {
        // The cache may not exist before this backup's index opens it;
        // made now, it can be left out of this backup too.
        let _ = coffer::repository::tag_cache_dir(c);
    }
    let own = [
        (local_repo_dir(g)?, "the repository itself"),
        (cache, "coffer's cache"),
    ];
    for (dir, what) in own {
        let Some(real) = dir.and_then(|d| std::fs::canonicalize(d).ok()) else {
            continue;
        };
        let inside = |p: &PathBuf| {
            real.starts_with(p) || std::fs::canonicalize(p).is_ok_and(|c| real.starts_with(c))
        };
        if excludes.never_back_up(&real) && paths.iter().any(inside) && !g.quiet {
            output::notice(&format!("coffer: leaving out {what}: {}", real.display()));
        }
    }
    Ok(())
}

/// The repository's directory, when it is on a local disk.
fn local_repo_dir(g: &GlobalOpts) -> Result<Option<PathBuf>> {
    Ok(match repo::location(g)?.0 {
        coffer::backend::Location::Local(p) => Some(p),
        _ => None,
    })
}

/// The repository to back up into; the zero-configuration default one is
/// created on first use.
pub(super) fn open_or_create(g: &GlobalOpts) -> Result<Arc<Repository>> {
    let (loc, is_default) = repo::location(g)?;
    if is_default
        && let coffer::backend::Location::Local(repo_path) = &loc
        && !repo::has_config(repo_path)
    {
        super::init::create_with_key_file(
            g,
            &loc,
            &repo::default_key_file()?,
            Config::default(),
            None,
        )?;
    }
    repo::open(g)
}

/// `--parent`, or the latest snapshot of the same host and paths.
pub(super) fn find_parent(
    repo: &Repository,
    parent: Option<&str>,
    hostname: &str,
    paths: &[Vec<u8>],
) -> Result<Option<(SnapshotId, Snapshot)>> {
    Ok(match parent {
        Some(r) => Some(repo.resolve_snapshot(r)?),
        None => repo
            .list_snapshots()?
            .into_iter()
            .rev()
            .find(|(_, s)| s.hostname == hostname && s.paths == paths),
    })
}

/// `--stdin` and `--stdin-from-command`.
fn run_stream(g: &GlobalOpts, a: &BackupArgs) -> Result<Done> {
    if a.dry_run {
        bail!(
            "--dry-run compares files and directories with the repository; a stream has nothing to compare before it is read"
        );
    }
    if a.stdin && a.stdin_from_command {
        bail!("give either --stdin or --stdin-from-command, not both");
    }
    if a.stdin && !a.paths.is_empty() {
        bail!("--stdin backs up standard input only: remove the paths");
    }
    if !(a.files_from.is_empty() && a.files_from_verbatim.is_empty() && a.files_from_raw.is_empty())
    {
        bail!(
            "--files-from names files to back up, a stream backup reads only its input: run them as two backups"
        );
    }
    let time_ns = a.time.as_deref().map(snapshot_time).transpose()?;
    let mut child = None;
    if a.stdin_from_command {
        let Some((cmd, args)) = a.paths.split_first() else {
            bail!(
                "--stdin-from-command needs the command after `--`, e.g. `coffer backup --stdin-from-command -- pg_dumpall -U postgres`"
            );
        };
        let c = std::process::Command::new(cmd)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", cmd.display()))?;
        child = Some(c);
    }
    let repo = open_or_create(g)?;
    let hostname = a.host.clone().unwrap_or_else(coffer::repository::hostname);
    let want = vec![format!("/{}", a.stdin_name).into_bytes()];
    let parent = find_parent(&repo, a.parent.as_deref(), &hostname, &want)?;
    let opts = SnapshotOptions {
        backup: BackupOptions {
            paths: Vec::new(),
            force: a.force,
            threads: 1,
            excludes: Default::default(),
        },
        parent,
        tags: a.tags.iter().filter(|t| !t.is_empty()).cloned().collect(),
        hostname,
        time_ns,
    };
    let _lock = repo::write_lock(g, &repo, false, "backup")?;
    let progress = CliProgress::new(g.json, g.quiet)
        .with_json_status_per_bytes()
        .listing(g.verbose, g.quiet);
    let cmd_name = a
        .paths
        .first()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let result = match child.as_mut() {
        Some(c) => {
            let mut out = c
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no output pipe from {cmd_name}"))?;
            archiver::stream::widen_pipe(&out);
            let mut finished = || -> coffer::Result<()> {
                let status = c
                    .wait()
                    .map_err(|e| coffer::Error::Usage(format!("waiting for {cmd_name}: {e}")))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(coffer::Error::Usage(format!(
                        "{cmd_name} failed ({status}); no snapshot was written"
                    )))
                }
            };
            archiver::stream::snapshot_stream(
                repo.clone(),
                &mut out,
                &a.stdin_name,
                a.allow_empty,
                &opts,
                &progress,
                &mut finished,
            )
        }
        None => {
            archiver::stream::widen_pipe(&std::io::stdin());
            let mut input = std::io::stdin().lock();
            archiver::stream::snapshot_stream(
                repo.clone(),
                &mut input,
                &a.stdin_name,
                a.allow_empty,
                &opts,
                &progress,
                &mut || Ok(()),
            )
        }
    };
    progress.finish();
    if result.is_err()
        && let Some(c) = child.as_mut()
    {
        let _ = c.kill();
        let _ = c.wait();
    }
    let (id, snap, outcome) = result?;
    done(g, id, &snap, outcome)
}

/// The counts every backup summary reports, real or dry run, in restic's
/// field names (the caller adds what differs).
fn summary_json(s: &archiver::Summary) -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
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
        "total_duration": s.duration_ms as f64 / 1000.0,
        "warnings": s.warnings,
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// The summary's first lines, the same for a real and a dry run.
fn print_counts(s: &archiver::Summary) {
    output::line(&format!(
        "Files: {} new, {} changed, {} unmodified",
        s.files_new, s.files_changed, s.files_unmodified
    ));
    output::line(&format!(
        "Dirs:  {} new, {} changed, {} unmodified",
        s.dirs_new, s.dirs_changed, s.dirs_unmodified
    ));
}

/// Exit 3 when something was not read completely.
fn exit_code(s: &archiver::Summary) -> ExitCode {
    if s.warnings == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// The summary of `backup --dry-run`: what a backup would have done.
fn report_dry_run(g: &GlobalOpts, outcome: &archiver::BackupOutcome) -> Result<ExitCode> {
    let s = &outcome.summary;
    if g.json {
        output::json(&dry_run_json(s));
    } else if !g.quiet {
        print_counts(s);
        output::line(&format!(
            "Read {} of {} in {}; would add {} of new data (before compression)",
            output::bytes(s.bytes_read),
            output::bytes(s.total_bytes),
            output::count(s.total_files, "file", "files"),
            output::bytes(s.bytes_added)
        ));
        output::line("dry run: nothing was written");
    }
    Ok(exit_code(s))
}

fn dry_run_json(s: &archiver::Summary) -> serde_json::Value {
    let mut m = summary_json(s);
    m.insert("dry_run".into(), true.into());
    m.insert("data_added_uncompressed".into(), s.bytes_added.into());
    serde_json::Value::Object(m)
}

/// The summary object of a backup that saved snapshot `id`.
fn saved_json(id: &SnapshotId, snap: &Snapshot, s: &archiver::Summary) -> serde_json::Value {
    let mut m = summary_json(s);
    m.insert("data_added".into(), s.bytes_added.into());
    m.insert("snapshot_id".into(), id.to_hex().into());
    m.insert("parent".into(), snap.parent.map(|p| p.to_hex()).into());
    serde_json::Value::Object(m)
}

pub(super) fn report(
    g: &GlobalOpts,
    id: &SnapshotId,
    snap: &Snapshot,
    outcome: &archiver::BackupOutcome,
) -> Result<ExitCode> {
    report_as(
        g,
        id,
        snap,
        outcome,
        "files or directories could not be read completely",
    )
}

/// The summary; `problem` says what each warning was (files for a backup,
/// members for an archive import).
pub(super) fn report_as(
    g: &GlobalOpts,
    id: &SnapshotId,
    snap: &Snapshot,
    outcome: &archiver::BackupOutcome,
    problem: &str,
) -> Result<ExitCode> {
    let s = &outcome.summary;
    if g.json {
        output::json(&saved_json(id, snap, s));
    } else if !g.quiet {
        print_counts(s);
        output::line(&format!(
            "Read {} of {} in {}; added {} to the repository (after dedup and compression)",
            output::bytes(s.bytes_read),
            output::bytes(s.total_bytes),
            output::count(s.total_files, "file", "files"),
            output::bytes(s.bytes_added)
        ));
        output::line(&format!("Duration {:.2}s", s.duration_ms as f64 / 1000.0));
        if s.warnings > 0 {
            output::line(&format!("{} {problem} (see warnings above)", s.warnings));
        }
        output::line(&format!("snapshot {} saved", id.short()));
    }
    Ok(exit_code(s))
}
