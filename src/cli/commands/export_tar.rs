//! `coffer export-tar SNAPSHOT [PATH]`: a directory of a snapshot as a tar
//! archive whose entry names are relative to that directory, the inverse
//! of `import-tar` (which records an archive as `/NAME`).

use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Result, bail};
use clap::Args;
use coffer::blob::BlobSource;
use coffer::restorer::dump::TarWriter;
use coffer::snapshot::tree::NodeKind;
use coffer::snapshot::walk::Unreadable;
use coffer::snapshot::walk::find_path;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer export-tar latest /srv/app -o app.tar
  coffer export-tar latest | tar -t")]
pub struct ExportTarArgs {
    /// Snapshot id prefix or `latest`
    pub snapshot: String,
    /// Directory (or file) inside the snapshot; entries are named relative
    /// to it (default: the snapshot's path when it has exactly one, as an
    /// imported archive does; otherwise `/`)
    pub path: Option<String>,
    /// Write the archive to FILE instead of stdout
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Which snapshot `latest` means
    #[command(flatten)]
    pub filter: super::SnapshotFilter,
}

pub fn run(g: &GlobalOpts, a: &ExportTarArgs) -> Result<ExitCode> {
    match export(g, a) {
        Err(e) if output::is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        r => r,
    }
}

fn export(g: &GlobalOpts, a: &ExportTarArgs) -> Result<ExitCode> {
    // SAFETY: isatty only inspects the descriptor.
    if a.output.is_none() && unsafe { libc::isatty(1) } == 1 {
        bail!(
            "refusing to write a tar archive to a terminal: redirect stdout or use --output FILE"
        );
    }
    let repo = repo::open(g)?;
    let (id, snap) = a.filter.resolve(&repo, &a.snapshot)?;
    let path: Vec<u8> = match (&a.path, snap.paths.as_slice()) {
        (Some(p), _) => p.as_bytes().to_vec(),
        (None, [only]) => only.clone(),
        (None, _) => b"/".to_vec(),
    };
    let shown = String::from_utf8_lossy(&path).into_owned();
    let rel: Vec<u8> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .join(&b'/');
    let node = if rel.is_empty() {
        None
    } else {
        match find_path(repo.as_ref(), &snap.tree, &rel)? {
            Some(n) => Some(n),
            None => bail!("{shown} is not in snapshot {}", id.short()),
        }
    };
    // A directory whose tree cannot be read is written empty and named:
    // the archive holds everything else.
    let write = |w: &mut dyn Write| -> Result<Vec<Unreadable>> {
        let mut t = TarWriter::new(repo.as_ref(), w);
        let unreadable = match &node {
            None => t.append_tree(&snap.tree, b"")?,
            Some(n) => match (n.kind, n.subtree) {
                (NodeKind::Dir, Some(sub)) => t.append_tree(&sub, b"")?,
                (NodeKind::Dir, None) => bail!("{shown} in snapshot {} has no tree", id.short()),
                // A single entry, under its own name.
                _ => {
                    t.append_node(&n.name, n)?;
                    Vec::new()
                }
            },
        };
        t.finish()?;
        Ok(unreadable)
    };
    match &a.output {
        Some(file) => {
            let f = std::fs::File::create(file)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", file.display()))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
            let done = write(&mut out).and_then(|unreadable| {
                out.into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|f| f.sync_all())
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
                Ok(unreadable)
            });
            match done {
                Ok(unreadable) => Ok(output::unreadable_and_damaged(
                    &unreadable,
                    &repo.take_damaged(),
                )),
                Err(e) => {
                    // Half an archive looks like a whole one to `tar -x`.
                    let _ = std::fs::remove_file(file);
                    Err(e)
                }
            }
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            let unreadable = write(&mut out)?;
            out.flush()?;
            Ok(output::unreadable_and_damaged(
                &unreadable,
                &repo.take_damaged(),
            ))
        }
    }
}
