//! `coffer diff SNAPSHOT1[:PATH] SNAPSHOT2[:PATH]`

use crate::cli::commands::restore::resolve_subtree;
use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Result, bail};
use clap::Args;
use coffer::diff::{self, DiffOptions, DiffStats, Side};
use coffer::snapshot::tree::NodeKind;
use coffer::snapshot::walk::Unreadable;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer diff 1a2b3c4d latest
  coffer diff 1a2b3c4d:/etc latest:/etc --metadata")]
pub struct DiffArgs {
    /// The older snapshot (id prefix or `latest`), optionally `:PATH` to
    /// compare one directory
    pub first: String,
    /// The newer snapshot, optionally `:PATH`
    pub second: String,
    /// Also list entries whose metadata alone changed (mode, owner, mtime, xattrs), marked U
    #[arg(long)]
    pub metadata: bool,
}

fn side_json(s: &Side) -> serde_json::Value {
    serde_json::json!({
        "files": s.files,
        "dirs": s.dirs,
        "others": s.others,
        "bytes": s.bytes,
    })
}

fn summary(st: &DiffStats) {
    let row = |what: &str, a: u64, r: u64, extra: String| {
        output::line(&format!("{what:<8} {a:>9} new, {r:>9} removed{extra}"));
    };
    output::line("");
    row(
        "Files:",
        st.added.files,
        st.removed.files,
        format!(", {:>9} changed", st.modified_files),
    );
    row("Dirs:", st.added.dirs, st.removed.dirs, String::new());
    row("Others:", st.added.others, st.removed.others, String::new());
    if st.type_changed > 0 {
        output::line(&format!("Changed type: {}", st.type_changed));
    }
    if st.metadata_changed > 0 {
        output::line(&format!("Metadata only: {}", st.metadata_changed));
    }
    output::line(&format!(
        "Added:   {} in new files",
        output::bytes(st.added.bytes)
    ));
    output::line(&format!(
        "Removed: {} in removed files",
        output::bytes(st.removed.bytes)
    ));
}

pub fn run(g: &GlobalOpts, a: &DiffArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let all = super::SnapshotFilter::default();
    let old = resolve_subtree(&repo, &a.first, &all)?;
    let new = resolve_subtree(&repo, &a.second, &all)?;
    for (s, arg) in [(&old, &a.first), (&new, &a.second)] {
        if s.only.is_some() {
            bail!("{arg} names a file: diff compares snapshots or directories");
        }
    }
    // Paths print as the second side has them.
    let base = if new.path == b"/" {
        Vec::new()
    } else {
        new.path.clone()
    };
    let stats = diff::diff(
        repo.as_ref(),
        &old.tree,
        &new.tree,
        DiffOptions {
            metadata: a.metadata,
        },
        |c| {
            let mut p = base.clone();
            p.push(b'/');
            p.extend_from_slice(c.path);
            if c.node.kind == NodeKind::Dir {
                p.push(b'/');
            }
            let p = String::from_utf8_lossy(&p);
            if g.json {
                output::json(&serde_json::json!({
                    "message_type": "change",
                    "path": p,
                    "modifier": c.modifier.marker().to_string(),
                }));
            } else {
                output::line(&format!("{}    {p}", c.modifier.marker()));
            }
            Ok(())
        },
    )?;
    if g.json {
        output::json(&serde_json::json!({
            "message_type": "statistics",
            "source_snapshot": old.snapshot.to_hex(),
            "target_snapshot": new.snapshot.to_hex(),
            "changed_files": stats.modified_files,
            "type_changed": stats.type_changed,
            "metadata_changed": stats.metadata_changed,
            "added": side_json(&stats.added),
            "removed": side_json(&stats.removed),
        }));
    } else if !g.quiet {
        summary(&stats);
    }
    let unreadable: Vec<Unreadable> = stats
        .unreadable
        .into_iter()
        .map(|u| {
            let mut p = base.clone();
            p.push(b'/');
            p.extend_from_slice(&u.path);
            Unreadable {
                path: p,
                error: u.error,
            }
        })
        .collect();
    Ok(output::unreadable_and_damaged(&unreadable, &stats.damaged))
}
