//! `coffer dump SNAPSHOT PATH`: a file's bytes, or a directory as tar.

use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use coffer::blob::BlobSource;
use coffer::restorer::dump::{dump_file, dump_tar};
use coffer::snapshot::tree::NodeKind;
use coffer::snapshot::walk::find_path;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Archive {
    Tar,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer dump latest /etc/fstab
  coffer dump latest /etc > etc.tar")]
pub struct DumpArgs {
    /// Snapshot id prefix or `latest`
    pub snapshot: String,
    /// Path inside the snapshot (a file, or a directory written as tar)
    pub path: std::ffi::OsString,
    /// Archive format for directories
    #[arg(long, value_enum, default_value = "tar")]
    pub archive: Archive,
    /// Which snapshot `latest` means
    #[command(flatten)]
    pub filter: super::SnapshotFilter,
}

pub fn run(g: &GlobalOpts, a: &DumpArgs) -> Result<ExitCode> {
    match dump(g, a) {
        Err(e) if output::is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        r => r,
    }
}

fn dump(g: &GlobalOpts, a: &DumpArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let (id, snap) = a.filter.resolve(&repo, &a.snapshot)?;
    let rel = super::trim_slashes(a.path.as_bytes());
    let shown = a.path.to_string_lossy();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let unreadable = if rel.is_empty() {
        dump_tar(repo.as_ref(), &snap.tree, b"", &mut out)?
    } else {
        let Some(node) = find_path(repo.as_ref(), &snap.tree, rel)? else {
            bail!("{shown} is not in snapshot {}", id.short());
        };
        match (node.kind, node.subtree) {
            (NodeKind::File, _) => {
                dump_file(repo.as_ref(), &node, &mut out)?;
                Vec::new()
            }
            (NodeKind::Dir, Some(sub)) => match a.archive {
                Archive::Tar => dump_tar(repo.as_ref(), &sub, rel, &mut out)?,
            },
            _ => bail!(
                "{shown} is a {}, which has no content to dump",
                node.kind.as_str()
            ),
        }
    };
    out.flush()?;
    Ok(output::unreadable_and_damaged(
        &unreadable,
        &repo.take_damaged(),
    ))
}
