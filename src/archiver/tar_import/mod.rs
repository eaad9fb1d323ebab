//! Importing a tar archive (plain, gzip or zstd; told apart by magic
//! bytes) as a snapshot of the archive's file tree.
//!
//! ```text
//!  input ─peek/detect─► decoder ─(read-ahead thread, bounded)─► tar entries
//!        ─► member: normalise name, header+PAX → node
//!                   file data → chunk_stream (FastCDC → BLAKE3 → dedup → zstd → seal)
//!        ─► staging (nodes only) ─end of archive─► trees bottom-up ─► snapshot
//! ```
//!
//! Layout: the snapshot records the one path `/NAME`, and the archive's
//! tree is the directory `NAME` (its metadata from the archive's `.` entry
//! when there is one). That is how `backup --stdin` records `/NAME`, so
//! `snapshots`, parent selection and `forget` grouping see one stream of
//! snapshots per name and host, and `restore` puts the tree in
//! `TARGET/NAME`. `export-tar` writes the tree relative to `NAME` again.
//!
//! Member file bytes go through the same chunker and blob store as files on
//! disk, so a nightly archive of a mostly unchanged system stores little
//! more than its changed files. Memory is bounded by the read-ahead queue
//! and the chunker's buffer, never by the archive's or a member's size.
//!
//! Errors: a member that cannot be represented (a `..` name, a hard link to
//! nothing, ...) is a [`SourceWarning`] and is skipped (exit 3). A
//! truncated or corrupt archive is an [`Error::Archive`]: half an archive
//! would look like a complete snapshot, so none is written.

pub(crate) mod detect;
pub mod member;
pub(crate) mod staging;

use super::file_saver::chunk_stream;
use super::{BackupOutcome, SnapshotOptions, Summary, record_snapshot};
use crate::blob::{BlobSink, BlobSource};
use crate::chunking::Chunker;
use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::progress::{Progress, SourceWarning};
use crate::repository::Repository;
use crate::snapshot::Snapshot;
use crate::snapshot::tree::{MAX_LINK_TARGET, Node, NodeKind, Time, valid_name};
use crate::snapshot::walk::load_tree;
use crossbeam_channel::{Receiver, bounded};
use member::{Pax, node_from_header, normalise};
use staging::Staging;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Decoded bytes per read-ahead block, and blocks queued: decompression
/// runs on its own thread, ahead of chunking, within 8 MiB.
const AHEAD_BLOCK: usize = 1 << 20;
const AHEAD_BLOCKS: usize = 8;

/// Import `input` into `sink` as the directory `name`; returns the root
/// tree (holding only `name`). `archive` names the input in messages.
/// `parent` is the root tree of an earlier import, for the counters.
pub fn import_tar(
    sink: &dyn BlobSink,
    parent: Option<(&dyn BlobSource, BlobId)>,
    chunker: &Chunker,
    input: &mut (dyn Read + Send),
    name: &str,
    archive: &str,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    if !valid_name(name.as_bytes()) {
        return Err(Error::Usage(format!(
            "--name {name:?} must be a plain name (no `/`, not `.` or `..`)"
        )));
    }
    let start = std::time::Instant::now();
    let fail = |reason: String| Error::Archive {
        archive: archive.to_string(),
        reason,
    };
    let head = detect::peek(input).map_err(|e| fail(format!("read failed: {e}")))?;
    let container = detect::detect(&head).map_err(|e| fail(e.0))?;
    let mut decoded = detect::decoder(container, head, input).map_err(|e| fail(format!("{e}")))?;
    let (tx, rx) = bounded::<std::io::Result<Vec<u8>>>(AHEAD_BLOCKS);
    let mut run = Importer {
        sink,
        chunker,
        progress,
        archive,
        container,
        summary: Summary::default(),
        warnings: Vec::new(),
        buf: Vec::new(),
    };
    let staged = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("coffer-tar-read".into())
            .spawn_scoped(s, move || read_ahead(&mut decoded, tx))
            .map_err(|e| Error::Internal(format!("cannot start the archive reader thread: {e}")))?;
        let mut ahead = AheadReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        // Dropping the queue's receiver (on any return) stops the reader.
        run.read_archive(&mut ahead, name)
    })?;
    let parent_top = match parent {
        Some((src, root)) => load_tree(src, &root)
            .ok()
            .and_then(|t| t.find(name.as_bytes()).and_then(|n| n.subtree))
            .map(|id| (src, id)),
        None => None,
    };
    let tree = staged.finish(sink, parent_top, &mut run.summary)?;
    let mut summary = run.summary;
    summary.warnings = run.warnings.len() as u64;
    summary.duration_ms = start.elapsed().as_millis() as u64;
    Ok(BackupOutcome {
        tree,
        summary,
        warnings: run.warnings,
    })
}

/// Import into `repo` and record a snapshot of the one path `/NAME`.
/// Order as for a backup: packs, index, then the snapshot; after an error
/// there is no snapshot.
pub fn snapshot_tar(
    repo: Arc<Repository>,
    input: &mut (dyn Read + Send),
    name: &str,
    archive: &str,
    opts: &SnapshotOptions,
    progress: &dyn Progress,
) -> Result<(SnapshotId, Snapshot, BackupOutcome)> {
    let paths = vec![format!("/{name}").into_bytes()];
    record_snapshot(repo, opts, paths, |store, parent, chunker| {
        import_tar(store, parent, chunker, input, name, archive, progress)
    })
}

fn read_ahead(src: &mut dyn Read, tx: crossbeam_channel::Sender<std::io::Result<Vec<u8>>>) {
    loop {
        let mut block = vec![0u8; AHEAD_BLOCK];
        let mut n = 0;
        let mut error = None;
        while n < AHEAD_BLOCK {
            match src.read(&mut block[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        block.truncate(n);
        let end = n < AHEAD_BLOCK;
        if n > 0 && tx.send(Ok(block)).is_err() {
            return;
        }
        if let Some(e) = error {
            let _ = tx.send(Err(e));
            return;
        }
        if end {
            return;
        }
    }
}

/// The read side of the read-ahead queue. The end of the queue is the end
/// of the stream; an error is passed on once, then the stream ends.
struct AheadReader {
    rx: Receiver<std::io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for AheadReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(block)) => {
                    self.cur = block;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct Importer<'a> {
    sink: &'a dyn BlobSink,
    chunker: &'a Chunker,
    progress: &'a dyn Progress,
    archive: &'a str,
    container: detect::Container,
    summary: Summary,
    warnings: Vec<SourceWarning>,
    buf: Vec<u8>,
}

/// What to do with one member.
enum Member {
    File,
    Dir,
    Link,
    Symlink,
    Special(NodeKind),
    /// Not a member of the tree (a PAX global header, a volume label).
    Ignore,
    Unsupported(u8),
}

impl Importer<'_> {
    fn fail(&self, reason: String) -> Error {
        Error::Archive {
            archive: self.archive.to_string(),
            reason,
        }
    }

    fn warn(&mut self, raw: &[u8], message: String) {
        let w = SourceWarning {
            path: PathBuf::from(std::ffi::OsStr::from_bytes(raw)),
            message: format!("in archive {}: {message}; member skipped", self.archive),
        };
        self.progress.warning(&w);
        self.warnings.push(w);
    }

    fn read_archive(&mut self, input: &mut dyn Read, name: &str) -> Result<Staging> {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut names = super::metadata::NameCache::default();
        let mut template = Node::new(Vec::new(), NodeKind::Dir);
        template.mode = 0o755;
        template.uid = uid;
        template.gid = gid;
        template.user = names.user(uid);
        template.group = names.group(gid);
        template.links = 1;
        let mut root = template.clone();
        root.name = name.as_bytes().to_vec();
        let mut staging = Staging::new(root, template);

        let mut tar = tar::Archive::new(input);
        let entries = tar
            .entries()
            .map_err(|e| self.fail(format!("cannot read: {e}")))?;
        let mut last = String::from("(the start)");
        let mut newest = Time::default();
        for (members, entry) in entries.enumerate() {
            let mut entry = entry.map_err(|e| {
                self.fail(
                    if members == 0 && self.container == detect::Container::Tar {
                        format!("it is not a valid tar archive: {e}")
                    } else {
                        format!("it is truncated or corrupt after member {last}: {e}")
                    },
                )
            })?;
            let raw = entry.path_bytes().into_owned();
            last = String::from_utf8_lossy(&raw).into_owned();
            let pax = match entry.pax_extensions() {
                Ok(Some(recs)) => Pax::from_records(
                    recs.filter_map(|r| r.ok())
                        .map(|r| (r.key_bytes(), r.value_bytes())),
                ),
                Ok(None) => Pax::default(),
                Err(e) => {
                    return Err(self.fail(format!("member {last} has unreadable PAX records: {e}")));
                }
            };
            if let Ok(t) = entry.header().mtime() {
                newest = newest.max(
                    pax.mtime
                        .unwrap_or(Time::new(t.min(i64::MAX as u64) as i64, 0)),
                );
            }
            let kind = classify(entry.header(), &raw);
            let placed = self.member(&mut staging, &mut entry, kind, &raw, &pax)?;
            match placed {
                Ok(None) => {}
                Ok(Some(replaced)) => {
                    let w = SourceWarning {
                        path: PathBuf::from(std::ffi::OsStr::from_bytes(&raw)),
                        message: format!("in archive {}: {replaced}", self.archive),
                    };
                    self.progress.warning(&w);
                    self.warnings.push(w);
                }
                Err(why) => self.warn(&raw, why),
            }
        }
        staging.date_unlisted_root(newest);
        let input = tar.into_inner();
        // Read to the end, so gzip and zstd check their trailers: an
        // archive whose end is cut off must not import as complete.
        let mut rest = [0u8; 64 * 1024];
        let mut trailing = 0u64;
        loop {
            match input.read(&mut rest) {
                Ok(0) => break,
                Ok(n) => trailing += rest[..n].iter().filter(|&&b| b != 0).count() as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(self.fail(format!(
                        "it is truncated or corrupt after its last member {last}: {e}"
                    )));
                }
            }
        }
        if trailing > 0 {
            self.warn(
                b"",
                format!(
                    "{trailing} non-zero bytes after the end-of-archive marker were ignored (concatenated archives are not read)"
                ),
            );
        }
        Ok(staging)
    }

    /// Place one member. The outer `Result` is fatal (a repository error
    /// or a broken archive); the inner one is this member's fate.
    fn member<R: Read>(
        &mut self,
        staging: &mut Staging,
        entry: &mut tar::Entry<'_, R>,
        kind: Member,
        raw: &[u8],
        pax: &Pax,
    ) -> Result<Result<staging::Replaced, String>> {
        let kind = match kind {
            Member::Ignore => return Ok(Ok(None)),
            Member::Unsupported(b) => {
                return Ok(Err(format!(
                    "its type {:?} is not a file, directory, link or device",
                    char::from(b)
                )));
            }
            k => k,
        };
        let comps = match normalise(raw) {
            Ok(c) => c,
            Err(why) => return Ok(Err(why)),
        };
        let name = comps.last().cloned().unwrap_or_default();
        let node_kind = match kind {
            Member::File | Member::Link => NodeKind::File,
            Member::Dir => NodeKind::Dir,
            Member::Symlink => NodeKind::Symlink,
            Member::Special(k) => k,
            Member::Ignore | Member::Unsupported(_) => return Ok(Ok(None)),
        };
        let mut node = match node_from_header(name.clone(), node_kind, entry.header(), pax) {
            Ok(n) => n,
            Err(why) => return Ok(Err(why)),
        };
        Ok(match kind {
            Member::Dir => staging.put_dir(&comps, node),
            Member::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                match normalise(&target) {
                    Ok(t) if t.is_empty() => Err("it is a hard link without a target".into()),
                    Ok(t) => staging.put_link(&comps, &t, name),
                    Err(why) => Err(format!("it is a hard link whose target is refused: {why}")),
                }
            }
            Member::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                if target.is_empty() || target.contains(&0) || target.len() > MAX_LINK_TARGET {
                    Err(format!(
                        "it is a symlink whose target is empty, contains NUL or is longer than {MAX_LINK_TARGET} bytes"
                    ))
                } else {
                    node.size = target.len() as u64;
                    node.link_target = target;
                    staging.put_leaf(&comps, node)
                }
            }
            Member::Special(_) => staging.put_leaf(&comps, node),
            Member::File => {
                if pax.sparse {
                    return Ok(Err(
                        "it is stored in GNU's PAX sparse format, which coffer cannot read; re-create the archive without --sparse".into(),
                    ));
                }
                if comps.is_empty() {
                    return Ok(Err(
                        "it names the archive's root `.` but is not a directory".into(),
                    ));
                }
                let expected = entry.size();
                let shown = PathBuf::from(std::ffi::OsStr::from_bytes(raw));
                self.progress.file_started(&shown, expected);
                let streamed = chunk_stream(
                    entry,
                    expected,
                    self.sink,
                    self.chunker,
                    self.progress,
                    &mut self.buf,
                )?;
                let lost = |detail: String| {
                    format!(
                        "it is truncated or corrupt in member {}: {detail}",
                        shown.display()
                    )
                };
                if let Some(e) = streamed.error {
                    return Err(self.fail(lost(format!("{e}"))));
                }
                if streamed.read != expected {
                    return Err(self.fail(lost(format!(
                        "the archive ends after {} of its {expected} bytes",
                        streamed.read
                    ))));
                }
                self.progress.file_done(&shown, expected, streamed.read);
                self.summary.bytes_read += streamed.read;
                node.size = streamed.read;
                node.content = streamed.content;
                staging.put_leaf(&comps, node)
            }
            Member::Ignore | Member::Unsupported(_) => Ok(None),
        })
    }
}

fn classify(h: &tar::Header, raw: &[u8]) -> Member {
    use tar::EntryType as T;
    match h.entry_type() {
        // Pre-POSIX archives mark directories only by a trailing slash.
        T::Regular if raw.ends_with(b"/") => Member::Dir,
        T::Regular | T::Continuous | T::GNUSparse => Member::File,
        T::Directory => Member::Dir,
        T::Link => Member::Link,
        T::Symlink => Member::Symlink,
        T::Fifo => Member::Special(NodeKind::Fifo),
        T::Char => Member::Special(NodeKind::CharDevice),
        T::Block => Member::Special(NodeKind::BlockDevice),
        T::XGlobalHeader => Member::Ignore,
        t => match t.as_byte() {
            // GNU incremental dump directory: a directory with a listing.
            b'D' => Member::Dir,
            // GNU volume label.
            b'V' => Member::Ignore,
            b => Member::Unsupported(b),
        },
    }
}
