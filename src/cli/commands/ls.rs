//! `coffer ls SNAPSHOT [PATH]`

use super::trim_slashes;
use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Result, bail};
use clap::Args;
use coffer::blob::BlobSource;
use coffer::snapshot::tree::{Node, NodeKind};
use coffer::snapshot::walk::{Unreadable, Visit, find_path, walk};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer ls latest
  coffer ls latest /home/me/projects --long")]
pub struct LsArgs {
    /// Snapshot id prefix or `latest`, optionally `SNAPSHOT:PATH`
    pub snapshot: std::ffi::OsString,
    /// Only list this path and what is below it
    pub path: Option<std::ffi::OsString>,
    /// Show mode, owner, size and modification time
    #[arg(short, long)]
    pub long: bool,
    /// Which snapshot `latest` means
    #[command(flatten)]
    pub filter: super::SnapshotFilter,
}

fn print(path: &[u8], n: &Node, long: bool, json: bool) {
    let p = String::from_utf8_lossy(path);
    if json {
        output::json(&serde_json::json!({
            "path": p,
            "name": String::from_utf8_lossy(&n.name),
            "type": n.kind.as_str(),
            "mode": n.mode,
            "uid": n.uid,
            "gid": n.gid,
            "user": &*n.user,
            "group": &*n.group,
            "size": n.size,
            "mtime": output::rfc3339_time(n.mtime.sec, n.mtime.nsec),
            "message_type": "node",
        }));
    } else if long {
        output::line(&output::long_listing(&p, n));
    } else {
        output::line(&p);
    }
}

pub fn run(g: &GlobalOpts, a: &LsArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    // Bytes, not UTF-8: a snapshot's names are whatever the filesystem held.
    let whole = a.snapshot.as_bytes();
    let (snap_ref, inline) = match whole.iter().position(|&b| b == b':') {
        Some(i) => (&whole[..i], Some(&whole[i + 1..])),
        None => (whole, None),
    };
    let want = match (inline, a.path.as_deref()) {
        (Some(_), Some(_)) => {
            bail!("give the path once: as SNAPSHOT:PATH or as the second argument")
        }
        (Some(p), None) => p,
        (None, Some(p)) => p.as_bytes(),
        (None, None) => b"/",
    };
    let snap_ref = std::str::from_utf8(snap_ref)
        .map_err(|_| anyhow::anyhow!("the snapshot must be an id prefix or `latest`"))?;
    let (_, snap) = a.filter.resolve(&repo, snap_ref)?;
    let rel = trim_slashes(want);
    let (root, prefix) = if rel.is_empty() {
        (snap.tree, Vec::new())
    } else {
        let Some(node) = find_path(repo.as_ref(), &snap.tree, rel)? else {
            bail!("{} is not in the snapshot", String::from_utf8_lossy(want));
        };
        let mut full = b"/".to_vec();
        full.extend_from_slice(rel);
        print(&full, &node, a.long, g.json);
        match (node.kind, node.subtree) {
            (NodeKind::Dir, Some(sub)) => (sub, full),
            _ => return Ok(ExitCode::SUCCESS),
        }
    };
    let full = |rel: &[u8]| {
        let mut full = prefix.clone();
        full.push(b'/');
        full.extend_from_slice(rel);
        full
    };
    let unreadable = walk(
        repo.as_ref(),
        &root,
        |rel, node| {
            print(&full(rel), node, a.long, g.json);
            Ok(Visit::Descend)
        },
        |_, _| Ok(()),
    )?;
    let unreadable: Vec<Unreadable> = unreadable
        .into_iter()
        .map(|u| Unreadable {
            path: full(&u.path),
            error: u.error,
        })
        .collect();
    // What the listing met damaged (an index segment, a snapshot) is
    // reported with it, not left for the exit.
    Ok(output::unreadable_and_damaged(
        &unreadable,
        &repo.take_damaged(),
    ))
}
