//! `coffer stats [SNAPSHOT...] [--mode restore-size|raw-data]`

use crate::cli::commands::SnapshotFilter;
use crate::cli::{GlobalOpts, output, repo};
use anyhow::Result;
use clap::{Args, ValueEnum};
use coffer::blob::BlobKind;
use coffer::index::BlobTotals;
use coffer::stats::{self, RawData, RestoreSize};
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    /// What restoring the snapshots would write: entries and file sizes
    RestoreSize,
    /// The distinct blobs the snapshots reference, as stored and before
    /// compression, next to what the repository holds
    RawData,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer stats
  coffer stats --mode raw-data
  coffer stats latest --json")]
pub struct StatsArgs {
    /// Snapshots (id prefixes or `latest`); without them, every snapshot
    pub snapshots: Vec<String>,
    /// What to count
    #[arg(long, value_enum, default_value = "restore-size")]
    pub mode: Mode,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

fn kind_of(list: &[BlobTotals], kind: BlobKind) -> u64 {
    list.iter()
        .filter(|t| t.kind == kind)
        .map(|t| t.count)
        .sum()
}

fn row(label: &str, value: String) {
    output::line(&format!("{label:>26}  {value}"));
}

fn restore_size(g: &GlobalOpts, n: usize, t: &RestoreSize) {
    if g.json {
        output::json(&serde_json::json!({
            "mode": "restore-size",
            "snapshots_count": n,
            "total_file_count": t.files + t.dirs + t.others,
            "files": t.files,
            "dirs": t.dirs,
            "others": t.others,
            "total_size": t.bytes,
        }));
        return;
    }
    output::line("Stats in restore-size mode:");
    row("Snapshots processed:", n.to_string());
    row(
        "Total File Count:",
        format!(
            "{} ({}, {}, {})",
            t.files + t.dirs + t.others,
            output::count(t.files, "file", "files"),
            output::count(t.dirs, "dir", "dirs"),
            output::count(t.others, "other", "others")
        ),
    );
    row("Total Size:", output::bytes(t.bytes));
}

fn raw_data(g: &GlobalOpts, n: usize, r: &RawData) {
    let used = RawData::sum(&r.referenced);
    let all = RawData::sum(&r.repository);
    let ratio = used.raw_bytes as f64 / used.stored_bytes.max(1) as f64;
    let saving = 100.0 * (1.0 - used.stored_bytes as f64 / used.raw_bytes.max(1) as f64);
    let unreferenced = all.stored_bytes.saturating_sub(used.stored_bytes);
    if g.json {
        output::json(&serde_json::json!({
            "mode": "raw-data",
            "snapshots_count": n,
            "total_blob_count": used.count,
            "data_blobs": kind_of(&r.referenced, BlobKind::Data),
            "tree_blobs": kind_of(&r.referenced, BlobKind::Tree),
            "total_uncompressed_size": used.raw_bytes,
            "total_size": used.stored_bytes,
            "compression_ratio": ratio,
            "compression_space_saving": saving,
            "repository": {
                "packs": r.packs,
                "pack_bytes": r.pack_bytes,
                "blobs": all.count,
                "blob_bytes": all.stored_bytes,
                "unreferenced_bytes": unreferenced,
                "temporary_files": r.temp_files,
                "temporary_bytes": r.temp_bytes,
                "duplicate_blobs": r.duplicate_blobs,
                "duplicate_bytes": r.duplicate_bytes,
            },
        }));
        return;
    }
    output::line("Stats in raw-data mode:");
    row("Snapshots processed:", n.to_string());
    row(
        "Total Blob Count:",
        format!(
            "{} ({} data, {} trees)",
            used.count,
            kind_of(&r.referenced, BlobKind::Data),
            kind_of(&r.referenced, BlobKind::Tree)
        ),
    );
    row("Total Uncompressed Size:", output::bytes(used.raw_bytes));
    row(
        "Total Size:",
        format!(
            "{} (compressed and encrypted)",
            output::bytes(used.stored_bytes)
        ),
    );
    row("Compression Ratio:", format!("{ratio:.2}x"));
    row("Compression Space Saving:", format!("{saving:.2} %"));
    output::line("");
    output::line("Repository:");
    row(
        "Packs:",
        format!("{} ({})", r.packs, output::bytes(r.pack_bytes)),
    );
    row(
        "Blobs:",
        format!("{} ({})", all.count, output::bytes(all.stored_bytes)),
    );
    row(
        "Not referenced:",
        format!(
            "{} (by these snapshots; `coffer prune` frees what no snapshot uses)",
            output::bytes(unreferenced)
        ),
    );
    row(
        "Temporary files:",
        format!(
            "{} ({}; left by interrupted writes, `coffer prune` removes those over an hour old)",
            r.temp_files,
            output::bytes(r.temp_bytes)
        ),
    );
    row(
        "Duplicate copies:",
        format!(
            "{} ({}) stored more than once (by concurrent backups); `coffer prune` keeps one copy",
            output::count(r.duplicate_blobs, "blob", "blobs"),
            output::bytes(r.duplicate_bytes)
        ),
    );
}

pub fn run(g: &GlobalOpts, a: &StatsArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let snaps = a.filter.select(&repo, &a.snapshots)?;
    let roots: Vec<_> = snaps.iter().map(|(_, s)| s.tree).collect();
    let damaged = match a.mode {
        Mode::RestoreSize => {
            let r = stats::restore_sizes(repo.as_ref(), &roots)?;
            restore_size(g, snaps.len(), &r.total);
            r.damaged
        }
        Mode::RawData => {
            // Packs must not be pruned away while their blobs are summed.
            let _lock = repo::read_lock(g, &repo)?;
            let r = stats::raw_data(&repo, &roots)?;
            raw_data(g, snaps.len(), &r);
            r.damaged
        }
    };
    Ok(output::damaged(&damaged))
}
