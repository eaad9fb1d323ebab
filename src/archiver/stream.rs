//! Backing up a stream (standard input, or a command's output such as
//! `pg_dumpall`) as one file in a snapshot. The stream goes through the
//! same chunk → hash → dedup → compress → seal pipeline as files, so
//! consecutive dumps deduplicate against each other.
//!
//! A stream that ends in a read error, or whose producer exits non-zero,
//! is a failed backup: the caller's `finished` check runs after the last
//! byte and before the snapshot is written (RELIABILITY.md E9).

use super::file_saver::chunk_stream;
use super::{BackupOutcome, SnapshotOptions, Summary, save_snapshot};
use crate::blob::{BlobKind, BlobSink};
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::progress::Progress;
use crate::repository::Repository;
use crate::repository::blob_store::BlobStore;
use crate::snapshot::Snapshot;
use crate::snapshot::tree::{Node, NodeKind, Tree, valid_name};
use std::io::Read;
use std::sync::Arc;

/// Store `src` as the file `/NAME` and record a snapshot of it.
pub fn snapshot_stream(
    repo: Arc<Repository>,
    src: &mut dyn Read,
    name: &str,
    opts: &SnapshotOptions,
    progress: &dyn Progress,
    finished: &mut dyn FnMut() -> Result<()>,
) -> Result<(SnapshotId, Snapshot, BackupOutcome)> {
    if !valid_name(name.as_bytes()) {
        return Err(Error::Usage(format!(
            "--stdin-name {name:?} must be a plain file name (no `/`, not `.` or `..`)"
        )));
    }
    let start = std::time::Instant::now();
    let store = BlobStore::new(repo.clone())?;
    let chunker = repo.chunker();
    let streamed = chunk_stream(src, 0, &store, &chunker, progress, &mut Vec::new())?;
    if let Some(e) = streamed.error {
        return Err(Error::Usage(format!(
            "reading the stream failed after {} bytes: {e}; no snapshot was written",
            streamed.read
        )));
    }
    finished()?;
    let mut node = Node::new(name.as_bytes().to_vec(), NodeKind::File);
    node.mode = 0o600;
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    node.uid = unsafe { libc::getuid() };
    node.gid = unsafe { libc::getgid() };
    node.user = crate::repository::username();
    node.mtime = crate::snapshot::tree::Time::now();
    node.ctime = node.mtime;
    node.size = streamed.read;
    node.links = 1;
    node.content = streamed.content;
    let tree = Tree { nodes: vec![node] };
    let bytes = tree.encode();
    let id = store.blob_id(&bytes);
    let mut added = streamed.added;
    added += store.store_blob(BlobKind::Tree, id, &bytes)?;
    let stats = store.finish()?;
    let changed = opts.parent.is_some();
    let summary = Summary {
        files_new: u64::from(!changed),
        files_changed: u64::from(changed),
        total_files: 1,
        total_bytes: streamed.read,
        bytes_read: streamed.read,
        bytes_added: stats.stored_bytes_added.max(added),
        duration_ms: start.elapsed().as_millis() as u64,
        ..Default::default()
    };
    let outcome = BackupOutcome {
        tree: id,
        summary,
        warnings: Vec::new(),
    };
    let paths = vec![format!("/{name}").into_bytes()];
    let (sid, snap) = save_snapshot(&repo, &outcome, paths, opts)?;
    Ok((sid, snap, outcome))
}
