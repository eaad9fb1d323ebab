//! `coffer forget [ID...] [--keep-* ...] [--prune]`

use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Result, anyhow, bail};
use clap::Args;
use coffer::backend::FileKind;
use coffer::id::SnapshotId;
use coffer::retention::policy::{self, GroupBy, KeepPolicy};
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer forget --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --prune
  coffer forget --keep-last 10 --host web1 --dry-run
  coffer forget 1a2b3c4d")]
pub struct ForgetArgs {
    /// Snapshots to remove (id prefixes); without them, the policy decides
    pub ids: Vec<String>,
    /// Keep the newest N snapshots
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub keep_last: i64,
    /// Keep the newest snapshot of each of the last N hours (-1: all)
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub keep_hourly: i64,
    /// Keep the newest snapshot of each of the last N days
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub keep_daily: i64,
    /// Keep the newest snapshot of each of the last N ISO weeks
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub keep_weekly: i64,
    /// Keep the newest snapshot of each of the last N months
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub keep_monthly: i64,
    /// Keep the newest snapshot of each of the last N years
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub keep_yearly: i64,
    /// Keep every snapshot within this duration of the newest (e.g. 30d, 1y2m)
    #[arg(long)]
    pub keep_within: Option<String>,
    /// Keep snapshots with this tag (repeatable)
    #[arg(long)]
    pub keep_tag: Vec<String>,
    /// Group by these fields: host, paths, tags (comma-separated)
    #[arg(long, default_value = "host,paths")]
    pub group_by: String,
    /// Only consider snapshots that match (--host, --tag, --path)
    #[command(flatten)]
    pub filter: super::SnapshotFilter,
    /// Show what would be removed, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Run prune afterwards
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_args: PruneFlags,
}

#[derive(Args, Debug)]
pub struct PruneFlags {
    /// With --prune: unused space to tolerate, as a share of the data in use
    #[arg(long, default_value = "5%")]
    pub max_unused: String,
}

fn group_by(s: &str) -> Result<GroupBy> {
    let mut g = GroupBy {
        host: false,
        paths: false,
        tags: false,
    };
    for f in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match f {
            "host" => g.host = true,
            "paths" => g.paths = true,
            "tags" => g.tags = true,
            other => bail!("--group-by: unknown field {other:?} (use host, paths, tags)"),
        }
    }
    Ok(g)
}

pub fn run(g: &GlobalOpts, a: &ForgetArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let _lock = repo::write_lock(g, &repo, true, "forget")?;
    let mut remove: Vec<SnapshotId> = Vec::new();
    let mut report = Vec::new();
    if !a.ids.is_empty() {
        for r in &a.ids {
            let (id, _) = repo.resolve_snapshot(r).map_err(|e| match e {
                coffer::error::Error::Corrupt { .. } => anyhow::anyhow!(
                    "{e}: it cannot be read to be forgotten; `coffer repair snapshots --forget` removes unreadable snapshots"
                ),
                e => e.into(),
            })?;
            remove.push(id);
        }
    } else {
        let policy = KeepPolicy {
            last: a.keep_last,
            hourly: a.keep_hourly,
            daily: a.keep_daily,
            weekly: a.keep_weekly,
            monthly: a.keep_monthly,
            yearly: a.keep_yearly,
            within_ns: a
                .keep_within
                .as_deref()
                .map(policy::parse_duration)
                .transpose()
                .map_err(|e| anyhow!("--keep-within {e}"))?,
            tags: a.keep_tag.clone(),
        };
        if policy.is_empty() {
            bail!(
                "no policy given: name snapshots to forget, or give --keep-last/-hourly/-daily/-weekly/-monthly/-yearly/-within/-tag"
            );
        }
        let snaps: Vec<_> = repo
            .list_snapshots()?
            .into_iter()
            .filter(|(_, s)| a.filter.admits(s))
            .collect();
        for (key, group) in policy::group(snaps, group_by(&a.group_by)?) {
            let decisions = policy::apply(&group, &policy);
            // A policy that keeps nothing of a group is almost surely a typo
            // (a misspelled --keep-tag); never empty a group (restic#4568).
            if !decisions.iter().any(|d| d.keep) {
                bail!(
                    "the policy keeps no snapshot of the group ({key}); refusing to remove them all (forget them by id if that is really meant)"
                );
            }
            if !g.json && !g.quiet {
                output::line(&format!("group {key}:"));
            }
            for d in &decisions {
                let s = &group.iter().find(|(id, _)| id == &d.id).map(|x| &x.1);
                let time = s.map(|s| output::short_time(s.time_ns)).unwrap_or_default();
                if !g.json && !g.quiet {
                    output::line(&format!(
                        "  {} {} {}",
                        d.id.short(),
                        time,
                        if d.keep {
                            format!("keep ({})", d.reasons.join(", "))
                        } else {
                            "remove".to_string()
                        }
                    ));
                }
                report.push(serde_json::json!({"id": d.id.to_hex(), "group": key, "keep": d.keep, "reasons": d.reasons}));
                if !d.keep {
                    remove.push(d.id);
                }
            }
        }
    }
    if !a.dry_run {
        // One batch: one directory fsync for all of them, not one each. A
        // crash part way removes fewer snapshots, nothing else (B4).
        let names: Vec<String> = remove.iter().map(|id| id.to_hex()).collect();
        repo.delete_many(FileKind::Snapshot, &names)?;
    }
    if g.json {
        output::json(&serde_json::json!({
            "message_type": "summary", "dry_run": a.dry_run,
            "removed": remove.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
            "decisions": report,
        }));
    } else if !g.quiet {
        output::line(&format!(
            "{} {}",
            if a.dry_run { "would remove" } else { "removed" },
            output::count(remove.len(), "snapshot", "snapshots")
        ));
    }
    if a.prune {
        let pa = super::prune::PruneArgs {
            max_unused: a.prune_args.max_unused.clone(),
            dry_run: a.dry_run,
        };
        // A dry run removed nothing: its prune must plan without them.
        super::prune::prune_locked(g, &repo, &pa, &remove)?;
    }
    Ok(ExitCode::SUCCESS)
}
