//! `coffer repair index` / `coffer repair packs [ID...]` / `coffer repair config` / `coffer repair snapshots [--forget]`

use crate::cli::progress_bars::CliProgress;
use crate::cli::{GlobalOpts, output, repo};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer repair index
  coffer repair snapshots --forget
  coffer repair config")]
pub struct RepairArgs {
    #[command(subcommand)]
    pub what: RepairWhat,
}

#[derive(Subcommand, Debug)]
pub enum RepairWhat {
    /// Rebuild the index from the packs' own trailers
    #[command(after_help = "Examples:
  coffer repair index
  coffer check")]
    Index,
    /// Read packs whole (those given, or all) and move what still verifies
    /// out of damaged ones, so lost blobs are stored again by the next backup
    #[command(after_help = "Examples:
  coffer repair packs
  coffer repair packs 3f2e1d0c")]
    Packs {
        /// Pack ids, as `coffer check --read-data` names them (default: every pack)
        ids: Vec<String>,
    },
    /// Rewrite a missing or damaged `config` from its intact copy, or the
    /// copy from `config` (which also gives an older repository its copy)
    #[command(after_help = "Examples:
  coffer repair config")]
    Config,
    /// Write new snapshots that leave out data that was lost
    #[command(after_help = "Examples:
  coffer repair snapshots
  coffer repair snapshots --forget")]
    Snapshots {
        /// Remove the damaged originals once their repaired copies are stored
        #[arg(long)]
        forget: bool,
    },
}

pub fn run(g: &GlobalOpts, a: &RepairArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let _lock = repo::write_lock(g, &repo, true, "repair")?;
    match &a.what {
        RepairWhat::Index => {
            let r = coffer::repair::repair_index(&repo)?;
            warn_index_repair(&r);
            if g.json {
                let kept: Vec<serde_json::Value> = r
                    .trailer_damaged
                    .iter()
                    .map(|k| serde_json::json!({"pack": k.pack.to_hex(), "reason": k.reason, "blobs_listed": k.listed, "blobs_verified": k.verified}))
                    .collect();
                output::json(
                    &serde_json::json!({"message_type": "summary", "packs_indexed": r.packs_indexed, "blobs_indexed": r.blobs_indexed, "unreadable": r.unreadable, "trailer_damaged": kept, "segments_written": r.segments_written, "segments_removed": r.segments_removed}),
                );
            } else if !g.quiet {
                output::line(&format!(
                    "indexed {} in {} into {} (replacing {}); {} unreadable",
                    output::count(r.blobs_indexed, "blob", "blobs"),
                    output::count(r.packs_indexed, "pack", "packs"),
                    output::count(r.segments_written, "segment", "segments"),
                    r.segments_removed,
                    output::count(r.unreadable.len(), "pack", "packs")
                ));
            }
            Ok(if r.unreadable.is_empty() && r.trailer_damaged.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        RepairWhat::Packs { ids } => {
            let mut only = Vec::with_capacity(ids.len());
            for i in ids {
                // `packs/ab/<id>` as check prints it, or the bare id.
                let i = i.rsplit('/').next().unwrap_or(i);
                only.push(coffer::id::PackId::from_hex(i).ok_or_else(|| {
                    anyhow::anyhow!("{i:?} is not a pack id: give the 64 hex digits `coffer check --read-data` prints")
                })?);
            }
            let progress = CliProgress::new(g.json, g.quiet).counting("packs", "read");
            let r = coffer::repair::repair_packs(&repo, &only, &progress);
            progress.finish();
            let r = r?;
            note_cache(g, r.cache_note.as_deref());
            let lost: Vec<serde_json::Value> = r
                .blobs_lost
                .iter()
                .map(|(b, p)| serde_json::json!({"blob": b.to_hex(), "pack": p.to_hex()}))
                .collect();
            if g.json {
                output::json(&serde_json::json!({
                    "message_type": "summary",
                    "packs_read": r.packs_read,
                    "damaged": r.damaged.iter().map(|(p, f)| serde_json::json!({"pack": p.to_hex(), "faults": f})).collect::<Vec<_>>(),
                    "blobs_salvaged": r.blobs_salvaged,
                    "blobs_lost": lost,
                    "packs_written": r.packs_written,
                }));
            } else if !g.quiet {
                for (p, faults) in &r.damaged {
                    output::line(&format!("damaged pack {}:", p.to_hex()));
                    for f in faults {
                        output::line(&format!("  {f}"));
                    }
                }
                output::line(&format!(
                    "read {}: {} damaged, removed after moving {} into {}; {} lost",
                    output::count(r.packs_read, "pack", "packs"),
                    r.damaged.len(),
                    output::count(r.blobs_salvaged, "intact blob", "intact blobs"),
                    output::count(r.packs_written, "new pack", "new packs"),
                    output::count(r.blobs_lost.len(), "blob", "blobs")
                ));
            }
            if let Some(ir) = &r.index {
                warn_index_repair(ir);
            }
            if r.blobs_lost.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            output::warn(&format!(
                "{} blobs were lost: run `coffer backup` to store again what still exists on disk, then `coffer repair snapshots` for the snapshots that needed them",
                r.blobs_lost.len()
            ));
            Ok(ExitCode::from(3))
        }
        RepairWhat::Config => {
            let rewritten = repo.repair_config()?;
            if g.json {
                output::json(
                    &serde_json::json!({"message_type": "summary", "rewritten": rewritten}),
                );
            } else if !g.quiet {
                output::line(&match rewritten.as_slice() {
                    [] => "config and config.copy are intact: nothing to do".to_string(),
                    names => names
                        .iter()
                        .map(|n| {
                            let from = if *n == "config" {
                                "config.copy"
                            } else {
                                "config"
                            };
                            format!("rewrote {n} from {from}")
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                });
            }
            Ok(ExitCode::SUCCESS)
        }
        RepairWhat::Snapshots { forget } => {
            let r = coffer::repair::repair_snapshots(repo.clone(), *forget)?;
            note_cache(g, r.cache_note.as_deref());
            if let Some(ir) = &r.index_rebuilt {
                warn_index_repair(ir);
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
                        "snapshot {} -> {} (left out {}):",
                        old.short(),
                        new.short(),
                        output::count(dropped.len(), "entry", "entries")
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
                    "{} intact, {} repaired",
                    output::count(r.intact, "snapshot", "snapshots"),
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

/// Say what an index rebuild could not do, and what to run about it.
fn warn_index_repair(r: &coffer::repair::IndexRepair) {
    for u in &r.unreadable {
        output::warn(&format!("left unindexed (unreadable): {u}"));
    }
    for k in &r.trailer_damaged {
        let name = k.pack.to_hex();
        output::warn(&format!(
            "{}: {}; indexed with the {} blobs the old index listed ({} verify now): `coffer repair packs {name}` moves them into a sound pack",
            coffer::backend::FileKind::Pack.path(&name),
            k.reason,
            k.listed,
            k.verified
        ));
    }
}

/// A cache found wrong (and rebuilt) is not damage to the repository.
fn note_cache(g: &GlobalOpts, note: Option<&str>) {
    if let Some(n) = note
        && !g.json
        && !g.quiet
    {
        output::line(&format!("note: {n}"));
    }
}
