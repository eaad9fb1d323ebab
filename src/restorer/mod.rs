//! Restore: recreate a snapshot's trees, or selected parts, under a target.
//!
//! The snapshot's tree is walked depth-first. Directories are created (or
//! checked to be real directories) before their entries, so every parent of
//! a path written here is a directory this run made or verified: nothing is
//! written through a symlink, planted or restored (RELIABILITY.md I3, I4,
//! I6). Names were validated when each tree was decoded (no `..`, `/` or
//! NUL). Files are restored in parallel batches; hardlinks are made after
//! their first path exists; directory metadata is applied last, deepest
//! first, so writing entries does not disturb directory times.

pub mod file_writer;

use crate::blob::BlobSource;
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::progress::{Progress, SourceWarning};
use crate::snapshot::tree::{Node, NodeKind};
use crate::snapshot::walk::{Visit, walk};
use rayon::prelude::*;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Files restored per parallel batch.
const BATCH: usize = 256;

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Snapshot paths (`/a/b`) to restore; empty means everything.
    pub includes: Vec<Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    pub bytes: u64,
    /// Entries that could not be restored, each naming the path and why.
    pub errors: Vec<String>,
    pub warnings: Vec<SourceWarning>,
}

fn strip(p: &[u8]) -> &[u8] {
    let mut p = p;
    while let [b'/', rest @ ..] = p {
        p = rest;
    }
    while let [rest @ .., b'/'] = p {
        p = rest;
    }
    p
}

/// `Some(true)`: restore the node and everything below; `Some(false)`: an
/// ancestor of an include, create it and look inside; `None`: skip.
fn selected(path: &[u8], includes: &[Vec<u8>]) -> Option<bool> {
    if includes.is_empty() {
        return Some(true);
    }
    let mut ancestor = false;
    for inc in includes {
        let inc = strip(inc);
        if inc.is_empty() || path == inc || (path.starts_with(inc) && path[inc.len()] == b'/') {
            return Some(true);
        }
        if inc.starts_with(path) && inc[path.len()] == b'/' {
            ancestor = true;
        }
    }
    ancestor.then_some(false)
}

/// Restore the tree `root` into `target`.
pub fn restore(
    source: &dyn BlobSource,
    root: &BlobId,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreSummary> {
    std::fs::create_dir_all(target).map_err(|e| Error::Target {
        path: target.to_path_buf(),
        source: e,
    })?;
    // SAFETY: geteuid cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut summary = RestoreSummary::default();
    let mut batch: Vec<(PathBuf, Node)> = Vec::new();
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut pending_links: Vec<(PathBuf, PathBuf)> = Vec::new();
    // Paths (relative) whose directory could not be created: skip below.
    let mut failed_dirs: Vec<Vec<u8>> = Vec::new();

    let run_batch = |batch: &mut Vec<(PathBuf, Node)>, summary: &mut RestoreSummary| {
        let results: Vec<(PathBuf, Result<u64>)> = batch
            .par_iter()
            .map(|(p, n)| (p.clone(), file_writer::restore_file(source, n, p, as_root)))
            .collect();
        for (p, r) in results {
            match r {
                Ok(b) => {
                    summary.files += 1;
                    summary.bytes += b;
                    progress.file_done(&p, b, b);
                }
                Err(e) => summary.errors.push(format!("{}: {e}", p.display())),
            }
        }
        batch.clear();
    };

    walk(
        source,
        root,
        |rel, node| {
            if failed_dirs
                .iter()
                .any(|d| rel.starts_with(d) && rel.get(d.len()) == Some(&b'/'))
            {
                return Ok(Visit::Skip);
            }
            let Some(full) = selected(rel, &opts.includes) else {
                return Ok(Visit::Skip);
            };
            let path = target.join(OsStr::from_bytes(rel));
            if !full && node.kind != NodeKind::Dir {
                return Ok(Visit::Skip);
            }
            match node.kind {
                NodeKind::Dir => {
                    if let Err(e) = file_writer::ensure_dir(&path) {
                        summary.errors.push(e.to_string());
                        failed_dirs.push(rel.to_vec());
                        return Ok(Visit::Skip);
                    }
                    summary.dirs += 1;
                    dirs.push((path, node.clone()));
                }
                NodeKind::File => {
                    if node.links > 1 {
                        let key = (node.device, node.inode);
                        if let Some(first) = links.get(&key) {
                            pending_links.push((first.clone(), path));
                            return Ok(Visit::Skip);
                        }
                        links.insert(key, path.clone());
                    }
                    batch.push((path, node.clone()));
                    if batch.len() >= BATCH {
                        run_batch(&mut batch, &mut summary);
                    }
                }
                _ => match file_writer::restore_special(node, &path, as_root) {
                    Ok(None) => summary.others += 1,
                    Ok(Some(w)) => {
                        let w = SourceWarning {
                            path: path.clone(),
                            message: w,
                        };
                        progress.warning(&w);
                        summary.warnings.push(w);
                    }
                    Err(e) => summary.errors.push(e.to_string()),
                },
            }
            Ok(Visit::Descend)
        },
        |_, _| Ok(()),
    )?;
    run_batch(&mut batch, &mut summary);
    for (first, path) in pending_links {
        let r = file_writer::clear_non_dir(&path).and_then(|_| {
            std::fs::hard_link(&first, &path).map_err(|e| Error::Target {
                path: path.clone(),
                source: e,
            })
        });
        match r {
            Ok(()) => summary.files += 1,
            Err(e) => summary.errors.push(e.to_string()),
        }
    }
    for (path, node) in dirs.iter().rev() {
        if let Err(e) = file_writer::apply_metadata(node, path, as_root) {
            summary
                .errors
                .push(format!("{}: cannot set metadata: {e}", path.display()));
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_selection() {
        let inc = vec![b"/home/u/models".to_vec()];
        assert_eq!(selected(b"home", &inc), Some(false));
        assert_eq!(selected(b"home/u", &inc), Some(false));
        assert_eq!(selected(b"home/u/models", &inc), Some(true));
        assert_eq!(selected(b"home/u/models/x", &inc), Some(true));
        assert_eq!(selected(b"home/u/modelsx", &inc), None);
        assert_eq!(selected(b"etc", &inc), None);
        assert_eq!(selected(b"anything", &[]), Some(true));
    }
}
