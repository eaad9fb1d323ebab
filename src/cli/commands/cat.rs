//! `coffer cat config|snapshot ID|tree ID|index ID|pack ID|keys` as JSON.

use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Result, anyhow, bail};
use clap::Args;
use coffer::id::{BlobId, PackId, SegmentId};
use coffer::pack::PackEntry;
use coffer::snapshot::tree::Node;
use coffer::snapshot::walk::{find_path, load_tree};
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer cat config
  coffer cat snapshot latest
  coffer cat tree latest:/etc")]
pub struct CatArgs {
    /// config, snapshot, tree, index, pack or keys
    pub kind: String,
    /// The object: an id (or, for `snapshot`, `latest`; for `tree`,
    /// `SNAPSHOT[:PATH]`)
    pub id: Option<String>,
}

fn entry_json(e: &PackEntry) -> Value {
    json!({"type": format!("{:?}", e.kind).to_lowercase(), "id": e.id.to_hex(), "offset": e.offset, "length": e.length, "raw_length": e.raw_length})
}

fn node_json(n: &Node) -> Value {
    let mut v = json!({
        "name": String::from_utf8_lossy(&n.name),
        "type": n.kind.as_str(),
        "mode": format!("{:o}", n.mode),
        "uid": n.uid, "gid": n.gid, "user": &*n.user, "group": &*n.group,
        "mtime": output::rfc3339_time(n.mtime.sec, n.mtime.nsec), "ctime": output::rfc3339_time(n.ctime.sec, n.ctime.nsec),
        "size": n.size, "inode": n.inode, "device": n.device, "links": n.links,
        "flags": n.flags,
        "content": n.content.iter().map(|c| c.to_hex()).collect::<Vec<_>>(),
        "subtree": n.subtree.map(|s| s.to_hex()),
    });
    if std::str::from_utf8(&n.name).is_err() {
        v["name_hex"] = json!(hex::encode(&n.name));
    }
    if !n.link_target.is_empty() {
        v["linktarget"] = json!(String::from_utf8_lossy(&n.link_target));
    }
    if n.rdev != 0 {
        v["rdev"] = json!(n.rdev);
    }
    if !n.xattrs.is_empty() {
        v["xattrs"] = n
            .xattrs
            .iter()
            .map(|(k, val)| json!({"name": String::from_utf8_lossy(k), "value_hex": hex::encode(val)}))
            .collect();
    }
    v
}

pub fn run(g: &GlobalOpts, a: &CatArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let need = || {
        a.id.clone()
            .ok_or_else(|| anyhow!("`coffer cat {}` needs an id", a.kind))
    };
    let v = match a.kind.as_str() {
        "config" => {
            let mut v = json!({
                "version": coffer::repository::config::FORMAT_VERSION,
                "id": repo.id().to_hex(),
            });
            // A damaged body (no intact copy) still shows what reads.
            match repo.config() {
                Ok(c) => {
                    v["chunker"] = json!({"min_size": c.chunker.min_size, "avg_size": c.chunker.avg_size, "max_size": c.chunker.max_size});
                    v["zstd_level"] = c.zstd_level.into();
                    v["pack_size"] = c.pack_size.into();
                    v["created"] = output::rfc3339(c.created_ns).into();
                }
                Err(e) => v["error"] = e.to_string().into(),
            }
            v
        }
        "snapshot" => {
            let (id, s) = repo.resolve_snapshot(&need()?)?;
            super::snapshots::snapshot_json(&id, &s)
        }
        "tree" => {
            let r = need()?;
            let id = match BlobId::from_hex(&r) {
                Some(id) => id,
                None => {
                    let (snap_ref, path) = r.split_once(':').unwrap_or((&r, ""));
                    let (_, s) = repo.resolve_snapshot(snap_ref)?;
                    let p = path.trim_matches('/');
                    if p.is_empty() {
                        s.tree
                    } else {
                        match find_path(repo.as_ref(), &s.tree, p.as_bytes())? {
                            Some(n) => n.subtree.ok_or_else(|| anyhow!("{path} is not a directory"))?,
                            None => bail!("{path} is not in the snapshot"),
                        }
                    }
                }
            };
            let t = load_tree(repo.as_ref(), &id)?;
            json!({"id": id.to_hex(), "nodes": t.nodes.iter().map(node_json).collect::<Vec<_>>()})
        }
        "index" => {
            let id = SegmentId::from_hex(&need()?).ok_or_else(|| anyhow!("give a full 64-digit index id"))?;
            let seg = repo.load_segment(&id)?;
            json!({"id": id.to_hex(), "packs": seg.packs.iter().map(|p| json!({
                "id": p.id.to_hex(), "size": p.size,
                "blobs": p.entries.iter().map(entry_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()})
        }
        "pack" => {
            let id = PackId::from_hex(&need()?).ok_or_else(|| anyhow!("give a full 64-digit pack id"))?;
            let bytes = repo.read_pack(&id)?;
            if coffer::id::content_hash(&bytes) != id.0 {
                bail!("pack {id} is corrupt: its content does not match its name (damaged or swapped)");
            }
            let entries = coffer::pack::reader::parse_pack(repo.keys(), repo.id(), &bytes)
                .map_err(|e| anyhow!("pack {id} is corrupt: {e}"))?;
            json!({"id": id.to_hex(), "size": bytes.len(), "blobs": entries.iter().map(entry_json).collect::<Vec<_>>()})
        }
        "keys" => Value::Array(
            repo.list_keys()?
                .into_iter()
                .map(|(id, kind, meta)| match meta {
                    Ok(m) => json!({"id": id.to_hex(), "kind": format!("{kind:?}"), "hostname": m.hostname, "username": m.username, "created": output::rfc3339(m.created_unix_ns), "current": &id == repo.key_id()}),
                    Err(e) => json!({"id": id.to_hex(), "error": e}),
                })
                .collect(),
        ),
        other => bail!("unknown object kind {other:?}: use config, snapshot, tree, index, pack or keys"),
    };
    output::line(&serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}
