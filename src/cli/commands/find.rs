//! `coffer find [PATTERN...] [--snapshot ID] [--blob ID] [--tree ID] [--pack ID]`

use crate::cli::commands::SnapshotFilter;
use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Result, anyhow, bail};
use clap::Args;
use coffer::blob::BlobKind;
use coffer::find::{self, Query, Seen};
use coffer::id::PackId;
use coffer::localtime::parse_time;
use coffer::pattern::Pattern;
use coffer::snapshot::tree::NodeKind;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer find '*.sql' --oldest 2026-11-01
  coffer find /home/*/models --long
  coffer find --pack 3f2e1d0c")]
pub struct FindArgs {
    /// Name patterns (`*.sql`, `config`) or path patterns (`/home/*/models`);
    /// an entry matching any of them is listed
    pub patterns: Vec<std::ffi::OsString>,
    /// Search only this snapshot (id prefix or `latest`; repeatable)
    #[arg(short, long = "snapshot", value_name = "ID")]
    pub snapshots: Vec<String>,
    /// Match patterns regardless of case
    #[arg(short = 'i', long)]
    pub ignore_case: bool,
    /// Only entries modified at or after this time (YYYY-MM-DD[ HH:MM[:SS]] local time, or RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub oldest: Option<String>,
    /// Only entries modified at or before this time
    #[arg(long, value_name = "TIME")]
    pub newest: Option<String>,
    /// Files holding this content blob (id or prefix; repeatable)
    #[arg(long = "blob", value_name = "ID")]
    pub blobs: Vec<String>,
    /// Directories stored as this tree (id or prefix; repeatable)
    #[arg(long = "tree", value_name = "ID")]
    pub trees: Vec<String>,
    /// Entries whose data or tree is in this pack (id or prefix; repeatable)
    #[arg(long = "pack", value_name = "ID")]
    pub packs: Vec<String>,
    /// Show mode, owner, size and modification time
    #[arg(short, long)]
    pub long: bool,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn run(g: &GlobalOpts, a: &FindArgs) -> Result<ExitCode> {
    let mut q = Query::default();
    for p in &a.patterns {
        q.patterns.push(Pattern::new(p.as_bytes(), a.ignore_case)?);
    }
    let time = |s: &Option<String>, flag: &str| -> Result<Option<i64>> {
        s.as_deref()
            .map(|t| {
                parse_time(t)
                    .map(|ns| ns.div_euclid(1_000_000_000))
                    .map_err(|e| anyhow!("--{flag}: {e}"))
            })
            .transpose()
    };
    q.newer_than = time(&a.oldest, "oldest")?;
    q.older_than = time(&a.newest, "newest")?;
    for (ids, flag, list) in [
        (&a.blobs, "blob", &mut q.blobs),
        (&a.trees, "tree", &mut q.trees),
    ] {
        for id in ids {
            if !is_hex(id) {
                bail!("--{flag} {id:?} is not a hex id or id prefix");
            }
            list.add(id);
        }
    }
    if q.patterns.is_empty()
        && q.blobs.is_empty()
        && q.trees.is_empty()
        && a.packs.is_empty()
        && q.newer_than.is_none()
        && q.older_than.is_none()
    {
        bail!("find needs a pattern, --oldest/--newest, --blob, --tree or --pack");
    }
    let repo = repo::open(g)?;
    if !a.packs.is_empty() {
        let idx = repo.index()?;
        let packs = idx.packs()?;
        for p in &a.packs {
            let want = p.to_ascii_lowercase();
            if !is_hex(&want) {
                bail!("--pack {p:?} is not a hex id or id prefix");
            }
            let found: Vec<PackId> = packs
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| id.to_hex().starts_with(&want))
                .collect();
            let pack = match found.as_slice() {
                [one] => *one,
                [] => bail!(
                    "no pack matches {p:?}: the index knows {} packs",
                    packs.len()
                ),
                _ => bail!("{p:?} matches {} packs: give more digits", found.len()),
            };
            for e in idx.pack_entries(&pack)? {
                match e.kind {
                    BlobKind::Data => q.blobs.exact.insert(e.id),
                    BlobKind::Tree => q.trees.exact.insert(e.id),
                };
            }
        }
    }
    // Newest first: the copies a user most likely wants come first.
    let mut snaps = a.filter.select(&repo, &a.snapshots)?;
    snaps.reverse();
    let mut seen = Seen::default();
    let mut total = 0u64;
    let mut in_snapshots = 0u64;
    let mut unreadable = Vec::new();
    let mut damaged = Vec::new();
    for (sid, snap) in &snaps {
        let mut first = true;
        let st = find::find(repo.as_ref(), &snap.tree, &q, &mut seen, |f| {
            let path = String::from_utf8_lossy(f.path);
            if g.json {
                output::json(&serde_json::json!({
                    "message_type": "match",
                    "snapshot": sid.to_hex(),
                    "path": path,
                    "type": f.node.kind.as_str(),
                    "size": f.node.size,
                    "mode": f.node.mode,
                    "mtime": output::rfc3339_time(f.node.mtime.sec, f.node.mtime.nsec),
                    "id": f.id.map(|i| i.to_hex()),
                }));
                return Ok(());
            }
            if first {
                output::line(&format!(
                    "Found matching entries in snapshot {} from {}",
                    sid.short(),
                    output::short_time(snap.time_ns)
                ));
                first = false;
            }
            let mut line = if a.long {
                output::long_listing(&path, f.node)
            } else {
                path.into_owned()
            };
            if let Some(id) = f.id {
                line.push_str(&format!(
                    "  ({} {})",
                    if f.node.kind == NodeKind::Dir {
                        "tree"
                    } else {
                        "blob"
                    },
                    id.short()
                ));
            }
            output::line(&line);
            Ok(())
        })?;
        if st.matches > 0 {
            in_snapshots += 1;
            if !g.json {
                output::line("");
            }
        }
        total += st.matches;
        for mut u in st.unreadable {
            u.error = format!("{} (snapshot {})", u.error, sid.short());
            unreadable.push(u);
        }
        damaged.extend(st.damaged);
    }
    if g.json {
        output::json(&serde_json::json!({
            "message_type": "summary",
            "matches": total,
            "snapshots_with_matches": in_snapshots,
            "snapshots_searched": snaps.len(),
        }));
    } else if !g.quiet {
        output::notice(&format!(
            "{} in {in_snapshots} of {}",
            output::count(total, "match", "matches"),
            output::count(snaps.len(), "snapshot", "snapshots")
        ));
    }
    Ok(output::unreadable_and_damaged(&unreadable, &damaged))
}
