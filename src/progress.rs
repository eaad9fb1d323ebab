//! Progress events. The library only reports; the CLI decides how to show
//! them (indicatif bars, JSON lines, or nothing).

use std::path::Path;

/// A problem with a user's file that does not stop the operation: the file
/// is skipped or marked, and the command exits 3 (doc/design.md invariant 6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceWarning {
    pub path: std::path::PathBuf,
    pub message: String,
}

impl std::fmt::Display for SourceWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// Receives events from long operations; every method has a no-op default.
pub trait Progress: Sync {
    /// Whether a pre-scan for totals is worth its stat() calls (a progress
    /// bar with an ETA wants one; a log does not).
    fn wants_totals(&self) -> bool {
        false
    }
    /// The work ahead: this many files (or, for work counted by
    /// [`Progress::item_done`], packs or snapshots) and bytes in total;
    /// `bytes` 0 when it is not known ahead.
    fn scan_total(&self, _files: u64, _bytes: u64) {}
    /// A file is being read.
    fn file_started(&self, _path: &Path, _size: u64) {}
    /// A file is complete; `read` bytes were read (0 when unchanged).
    fn file_done(&self, _path: &Path, _size: u64, _read: u64) {}
    /// `files` unchanged files of `bytes` are done, passed over as a
    /// whole with their unchanged directory.
    fn unchanged_done(&self, _files: u64, _bytes: u64) {}
    /// Must every unchanged file come through [`Progress::file_done`]
    /// (to be named), or may an unchanged directory's come as a count?
    fn names_unchanged(&self) -> bool {
        false
    }
    /// One unit of work that is not a file is done: a pack verified or
    /// repacked, a snapshot copied. Its bytes come through `bytes_done`.
    fn item_done(&self) {}
    /// Bytes of content processed (read, restored or verified).
    fn bytes_done(&self, _n: u64) {}
    fn warning(&self, _w: &SourceWarning) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}
