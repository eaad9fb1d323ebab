//! `coffer snapshots`

use crate::cli::{GlobalOpts, output, repo};
use anyhow::Result;
use clap::Args;
use coffer::id::SnapshotId;
use coffer::snapshot::Snapshot;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer snapshots
  coffer snapshots --host web1 --json")]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub filter: super::SnapshotFilter,
}

pub fn snapshot_json(id: &SnapshotId, s: &Snapshot) -> serde_json::Value {
    serde_json::json!({
        "id": id.to_hex(),
        "short_id": id.short(),
        "time": output::rfc3339(s.time_ns),
        "tree": s.tree.to_hex(),
        "parent": s.parent.map(|p| p.to_hex()),
        "paths": s.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>(),
        "hostname": s.hostname,
        "username": s.username,
        "uid": s.uid,
        "gid": s.gid,
        "tags": s.tags,
        "program_version": s.program_version,
        "summary": summary_json(&s.summary),
    })
}

/// A snapshot's stored counters under the names `backup --json` reports
/// them by, so that one program reads both (restic's names; the duration
/// in seconds). Counters this version does not know keep their names.
fn summary_json(stored: &std::collections::BTreeMap<String, u64>) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, &v) in stored {
        let (name, value) = match k.as_str() {
            "bytes_added" => ("data_added", v.into()),
            "total_bytes" => ("total_bytes_processed", v.into()),
            "total_files" => ("total_files_processed", v.into()),
            "duration_ms" => ("total_duration", (v as f64 / 1000.0).into()),
            other => (other, v.into()),
        };
        m.insert(name.to_string(), value);
    }
    serde_json::Value::Object(m)
}

pub fn run(g: &GlobalOpts, a: &SnapshotsArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let snaps: Vec<_> = repo
        .list_snapshots()?
        .into_iter()
        .filter(|(_, s)| a.filter.admits(s))
        .collect();
    if g.json {
        output::json(&serde_json::Value::Array(
            snaps.iter().map(|(id, s)| snapshot_json(id, s)).collect(),
        ));
        return Ok(ExitCode::SUCCESS);
    }
    output::line(&format!(
        "{:<10} {:<20} {:<16} {:<14} {:>10}  Paths",
        "ID", "Time", "Host", "Tags", "Size"
    ));
    output::line(&"-".repeat(90));
    for (id, s) in &snaps {
        let paths: Vec<String> = s
            .paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        output::line(&format!(
            "{:<10} {:<20} {:<16} {:<14} {:>10}  {}",
            id.short(),
            output::short_time(s.time_ns),
            s.hostname,
            s.tags.join(","),
            output::bytes(s.summary.get("total_bytes").copied().unwrap_or(0)),
            paths.join(" ")
        ));
    }
    output::line(&"-".repeat(90));
    if !g.quiet {
        output::line(&output::count(snaps.len(), "snapshot", "snapshots"));
    }
    Ok(ExitCode::SUCCESS)
}
