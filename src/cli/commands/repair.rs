//! `coffer repair index` / `coffer repair snapshots [--forget]`

use crate::cli::{GlobalOpts, output, repo};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct RepairArgs {
    #[command(subcommand)]
    pub what: RepairWhat,
}

#[derive(Subcommand, Debug)]
pub enum RepairWhat {
    /// Rebuild the index from the packs' own trailers
    Index,
    /// Write new snapshots that leave out data that was lost
    Snapshots {
        /// Remove the damaged originals once their repaired copies are stored
        #[arg(long)]
        forget: bool,
    },
}

pub fn run(g: &GlobalOpts, a: &RepairArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let _lock = repo.lock(true, repo::lock_timeouts(), repo::wait_lock(g)?)?;
    match &a.what {
        RepairWhat::Index => {
            let r = coffer::repair::repair_index(&repo)?;
            for u in &r.unreadable {
                output::warn(&format!("left unindexed (unreadable): {u}"));
            }
            if g.json {
                output::json(
                    &serde_json::json!({"message_type": "summary", "packs_indexed": r.packs_indexed, "blobs_indexed": r.blobs_indexed, "unreadable": r.unreadable, "segments_written": r.segments_written, "segments_removed": r.segments_removed}),
                );
            } else if !g.quiet {
                output::line(&format!(
                    "indexed {} blobs in {} packs into {} segments (replacing {}); {} packs unreadable",
                    r.blobs_indexed,
                    r.packs_indexed,
                    r.segments_written,
                    r.segments_removed,
                    r.unreadable.len()
                ));
            }
            Ok(if r.unreadable.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        RepairWhat::Snapshots { forget } => {
            let r = coffer::repair::repair_snapshots(repo.clone(), *forget)?;
            if let Some(ir) = &r.index_rebuilt {
                for u in &ir.unreadable {
                    output::warn(&format!("left unindexed (unreadable): {u}"));
                }
                if !g.json && !g.quiet {
                    let names: Vec<String> = r.missing_packs.iter().map(|p| p.to_hex()).collect();
                    output::line(&format!(
                        "the index listed {} missing packs ({}): rebuilt it from the packs ({} blobs in {} packs)",
                        names.len(),
                        names.join(", "),
                        ir.blobs_indexed,
                        ir.packs_indexed
                    ));
                }
            }
            for (id, e) in &r.unreadable {
                if r.unreadable_removed {
                    if !g.json && !g.quiet {
                        output::line(&format!("removed unreadable snapshot {}: {e}", id.short()));
                    }
                } else {
                    output::warn(&format!(
                        "{e}: nothing of snapshot {} can be recovered; `coffer repair snapshots --forget` removes it",
                        id.short()
                    ));
                }
            }
            for (old, new, dropped) in &r.rewritten {
                if !g.json && !g.quiet {
                    output::line(&format!(
                        "snapshot {} -> {} (left out {} entries):",
                        old.short(),
                        new.short(),
                        dropped.len()
                    ));
                    for d in dropped {
                        output::line(&format!("  {d}"));
                    }
                }
            }
            if g.json {
                output::json(
                    &serde_json::json!({"message_type": "summary", "intact": r.intact,
                    "unreadable": r.unreadable.iter().map(|(id, _)| id.to_hex()).collect::<Vec<_>>(),
                    "unreadable_removed": r.unreadable_removed,
                    "missing_packs": r.missing_packs.iter().map(|p| p.to_hex()).collect::<Vec<_>>(),
                    "rewritten": r.rewritten.iter().map(|(o, n, d)| serde_json::json!({"old": o.to_hex(), "new": n.to_hex(), "left_out": d})).collect::<Vec<_>>()}),
                );
            } else if !g.quiet {
                output::line(&format!(
                    "{} snapshots intact, {} repaired",
                    r.intact,
                    r.rewritten.len()
                ));
            }
            // Damage left in place is a partial success.
            Ok(if r.unreadable.is_empty() || r.unreadable_removed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
    }
}
