//! `coffer unlock [--remove-all]`

use crate::cli::{GlobalOpts, output, repo};
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer unlock
  coffer unlock --remove-all")]
pub struct UnlockArgs {
    /// Remove every lock, also live ones and unreadable lock objects
    #[arg(long)]
    pub remove_all: bool,
}

pub fn run(g: &GlobalOpts, a: &UnlockArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let t = repo::lock_timeouts();
    let now = coffer::repository::now_ns();
    let host = coffer::repository::hostname();
    let (mut removed, mut kept) = (0, 0);
    let mut listed = Vec::new();
    for (id, info) in repo.list_locks()? {
        let (remove, what) = match &info {
            Ok(l) => (
                a.remove_all || l.is_stale(now, t.stale, &host),
                l.describe(now),
            ),
            Err(e) => (
                a.remove_all || repo.unreadable_lock_expired(&id, t.stale),
                e.to_string(),
            ),
        };
        if remove {
            repo.remove_lock(&id)?;
            removed += 1;
        } else {
            kept += 1;
        }
        // With --json, stdout is one JSON document.
        if g.json {
            listed.push(serde_json::json!({"id": id.to_hex(), "removed": remove, "lock": what}));
        } else if !g.quiet {
            let verb = if remove { "removed" } else { "kept" };
            output::line(&format!("{verb} lock {}: {what}", id.short()));
        }
    }
    if g.json {
        output::json(
            &serde_json::json!({"message_type": "summary", "removed": removed, "kept": kept, "locks": listed}),
        );
    } else if !g.quiet {
        output::line(&format!("{removed} locks removed, {kept} kept"));
    }
    Ok(ExitCode::SUCCESS)
}
