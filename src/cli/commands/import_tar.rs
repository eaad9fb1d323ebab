//! `coffer import-tar FILE|-`: a tar, tar.gz or tar.zst archive as a
//! snapshot of the one path `/NAME`.

use super::backup::{find_parent, open_or_create, report_as, snapshot_time};
use crate::cli::progress_bars::CliProgress;
use crate::cli::{GlobalOpts, repo};
use anyhow::{Result, bail};
use clap::Args;
use coffer::archiver::tar_import::snapshot_tar;
use coffer::archiver::{BackupOptions, SnapshotOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer import-tar site-2026-11-01.tar.gz
  coffer import-tar --name site --tag imported - < site.tar.zst")]
pub struct ImportTarArgs {
    /// The archive (plain, gzip or zstd, recognised by content), or `-` for stdin
    pub archive: PathBuf,
    /// Name of the snapshot's top directory, recorded as the path `/NAME`
    /// (default: the archive's file name without .tar/.tgz/.tar.gz/.tar.zst;
    /// required for stdin). Give the same name every night so imports of
    /// dated archives form one series for parents and `forget`
    #[arg(long)]
    pub name: Option<String>,
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
    /// Snapshot to compare with (default: the latest of this host and name)
    #[arg(long)]
    pub parent: Option<String>,
}

/// `nightly.tar.gz` → `nightly`. Only the archive suffixes are removed,
/// whatever the content turns out to be.
pub fn default_name(archive: &Path) -> Option<String> {
    let file = archive.file_name()?.to_str()?;
    let lower = file.to_ascii_lowercase();
    let suffixes = [
        ".tar.gz",
        ".tar.zst",
        ".tar.zstd",
        ".tgz",
        ".tzst",
        ".tar",
        ".gz",
        ".zst",
    ];
    let stem = suffixes
        .iter()
        .find(|s| lower.len() > s.len() && lower.ends_with(*s))
        .map_or(file, |s| &file[..file.len() - s.len()]);
    coffer::snapshot::tree::valid_name(stem.as_bytes()).then(|| stem.to_string())
}

pub fn run(g: &GlobalOpts, a: &ImportTarArgs) -> Result<ExitCode> {
    let stdin = a.archive.as_os_str() == "-";
    let name = match (&a.name, stdin) {
        (Some(n), _) => n.clone(),
        (None, true) => {
            bail!("importing from stdin needs --name NAME for the snapshot's path /NAME")
        }
        (None, false) => match default_name(&a.archive) {
            Some(n) => n,
            None => bail!(
                "cannot derive a name from {}: give --name NAME",
                a.archive.display()
            ),
        },
    };
    if !coffer::snapshot::tree::valid_name(name.as_bytes()) {
        bail!("--name {name:?} must be a plain name (no `/`, not `.` or `..`)");
    }
    let label = if stdin {
        "<stdin>".to_string()
    } else {
        a.archive.display().to_string()
    };
    // Open the archive before the repository: a mistyped file name should
    // not cost a password prompt or create the default repository.
    let mut file = if stdin {
        None
    } else {
        Some(
            std::fs::File::open(&a.archive)
                .map_err(|e| anyhow::anyhow!("cannot open archive {label}: {e}"))?,
        )
    };
    let time_ns = a.time.as_deref().map(snapshot_time).transpose()?;
    let repo = open_or_create(g)?;
    let hostname = a.host.clone().unwrap_or_else(coffer::repository::hostname);
    let want = vec![format!("/{name}").into_bytes()];
    let parent = find_parent(&repo, a.parent.as_deref(), &hostname, &want)?;
    let opts = SnapshotOptions {
        backup: BackupOptions {
            paths: Vec::new(),
            force: false,
            threads: 1,
            excludes: Default::default(),
        },
        parent,
        tags: a.tags.iter().filter(|t| !t.is_empty()).cloned().collect(),
        hostname,
        time_ns,
    };
    let _lock = repo::write_lock(g, &repo, false, "import-tar")?;
    let progress = CliProgress::new(g.json, g.quiet)
        .with_json_status_per_bytes()
        .listing(g.verbose, g.quiet);
    let result = match file.as_mut() {
        Some(f) => snapshot_tar(repo.clone(), f, &name, &label, &opts, &progress),
        None => {
            let mut input = std::io::stdin();
            snapshot_tar(repo.clone(), &mut input, &name, &label, &opts, &progress)
        }
    };
    progress.finish();
    let (id, snap, outcome) = result?;
    report_as(
        g,
        &id,
        &snap,
        &outcome,
        "archive members were skipped or replaced",
    )
}

#[cfg(test)]
mod tests {
    use super::default_name;
    use std::path::Path;

    #[test]
    fn names_drop_the_archive_suffix_only() {
        let n = |p: &str| default_name(Path::new(p));
        assert_eq!(n("/backups/etc.tar.gz").as_deref(), Some("etc"));
        assert_eq!(n("etc.TGZ").as_deref(), Some("etc"));
        assert_eq!(n("rootfs.tar.zst").as_deref(), Some("rootfs"));
        assert_eq!(n("x.tar").as_deref(), Some("x"));
        assert_eq!(n("data.v2.tar").as_deref(), Some("data.v2"));
        assert_eq!(n("dump").as_deref(), Some("dump"));
        assert_eq!(n(".tar"), Some(".tar".into()));
        assert_eq!(n(".."), None);
        assert_eq!(n("/"), None);
    }
}
