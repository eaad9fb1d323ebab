//! Reading, chunking and storing one file. Runs on the file-saver threads.
//!
//! Files are read with plain `read()` into a buffer, never mmap: a file
//! truncated while mapped turns into SIGBUS (doc/reliability.md E6), while
//! `read()` just returns less, and page-cache reads run at ~29 GB/s, far
//! above the CPU stages. The buffer is cut with FastCDC; the chunks of one
//! buffer are hashed, compressed and sealed in parallel on rayon, so one
//! huge file still uses every core.
//!
//! A file that cannot be opened or vanished is a [`SourceWarning`], never
//! an `Error`; an `Error` here always comes from the repository.

use super::{FileJob, FileOutcome};
use crate::blob::{BlobKind, BlobSink};
use crate::chunking::Chunker;
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::progress::{Progress, SourceWarning};
use crate::snapshot::tree::{FLAG_CHANGED_DURING_READ, FLAG_INCOMPLETE};
use crossbeam_channel::{Receiver, Sender};
use rayon::prelude::*;
use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes read per step for big files; a buffer holds this plus one
/// maximal chunk, and is cut into chunks once it holds a maximal chunk
/// (or this, when larger), so at the default 1 MiB average one buffer
/// still yields several chunks for the cores to seal at once. 1 MiB, not
/// 4: up to four such buffers are alive while two big files are read, and
/// the larger ones held 12 MiB more of a backup's peak memory.
pub(crate) const READ_BUF: usize = 1024 * 1024;

/// Files larger than this are read with [`chunk_stream_overlapped`]; it
/// allocates its extra buffers per file, which is not worth it for less.
const OVERLAP_ABOVE: u64 = 8 * 1024 * 1024;

fn open_source(path: &Path) -> std::io::Result<File> {
    // O_NOFOLLOW: the entry was a regular file when listed; if it has been
    // swapped for a symlink since, do not follow it. O_NOATIME keeps the
    // backup from dirtying every inode, but is refused for files we do not own.
    let base = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(base | libc::O_NOATIME)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(base)
            .open(path),
        r => r,
    }
}

/// A file being read for backup. A sparse file (fewer blocks allocated
/// than its size) is read by its data only: its holes, found with
/// `SEEK_DATA`/`SEEK_HOLE`, become zeros in the buffer without a read,
/// so they chunk, hash and deduplicate exactly as the zeros `read()`
/// would return (a 10 GiB disk image of zeroes was read in 52 s).
struct Source<'a> {
    file: &'a File,
    /// Read with `pread` at `pos`: `lseek` moves the file offset.
    pos: u64,
    /// The region `pos` is in: a hole or data, up to `end`. A file that
    /// is not sparse, or whose filesystem cannot tell, is data to the end.
    in_hole: bool,
    end: u64,
    /// Bytes of holes passed over (never read).
    holes: u64,
}

impl<'a> Source<'a> {
    fn new(file: &'a File, st: &std::fs::Metadata) -> Self {
        let sparse = st.blocks().saturating_mul(512) < st.size();
        Source {
            file,
            pos: 0,
            in_hole: false,
            end: if sparse { 0 } else { u64::MAX },
            holes: 0,
        }
    }

    /// Find the region at `pos`.
    fn locate(&mut self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        let at = libc::off_t::try_from(self.pos).unwrap_or(libc::off_t::MAX);
        self.in_hole = false;
        self.end = u64::MAX;
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                // No data from here on: a hole up to the end, if any is left.
                let size = self.file.metadata()?.size();
                self.in_hole = size > self.pos;
                self.end = size.max(self.pos);
            }
            return Ok(());
        }
        if data > at {
            self.in_hole = true;
            self.end = data as u64;
            return Ok(());
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, at, libc::SEEK_HOLE) };
        if hole > at {
            self.end = hole as u64;
        }
        Ok(())
    }
}

impl Read for Source<'_> {
    fn read(&mut self, dst: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.pos >= self.end {
            self.locate()?;
            if !self.in_hole && self.pos >= self.end {
                return Ok(0);
            }
        }
        let n = usize::try_from(self.end - self.pos)
            .unwrap_or(usize::MAX)
            .min(dst.len());
        let n = if self.in_hole {
            dst[..n].fill(0);
            self.holes += n as u64;
            n
        } else {
            self.file.read_at(&mut dst[..n], self.pos)?
        };
        self.pos += n as u64;
        Ok(n)
    }
}

fn warning(path: &Path, message: String) -> SourceWarning {
    SourceWarning {
        path: path.to_path_buf(),
        message,
    }
}

/// Store every chunk of `data[cuts]`, in parallel when there are several.
pub(super) fn store_chunks(
    sink: &dyn BlobSink,
    data: &[u8],
    cuts: &[(usize, usize)],
    ids: &mut Vec<BlobId>,
) -> Result<u64> {
    let one = |&(o, n): &(usize, usize)| -> Result<(BlobId, u64)> {
        let chunk = &data[o..o + n];
        let id = sink.blob_id(chunk);
        let added = sink.store_blob(BlobKind::Data, id, chunk)?;
        Ok((id, added))
    };
    let results: Vec<(BlobId, u64)> = if cuts.len() == 1 {
        vec![one(&cuts[0])?]
    } else {
        cuts.par_iter().map(one).collect::<Result<_>>()?
    };
    let mut added = 0;
    for (id, a) in results {
        ids.push(id);
        added += a;
    }
    Ok(added)
}

/// Read, chunk and store one file. `buf` is the calling thread's reusable
/// read buffer.
pub(crate) fn save_file(
    job: &FileJob,
    sink: &dyn BlobSink,
    chunker: &Chunker,
    progress: &dyn Progress,
    buf: &mut Vec<u8>,
) -> Result<FileOutcome> {
    let path = &job.path;
    let mut out = FileOutcome::default();
    let mut file = match open_source(path) {
        Ok(f) => f,
        Err(e) => {
            let msg = if e.kind() == std::io::ErrorKind::NotFound {
                "vanished before it could be read".to_string()
            } else {
                format!("cannot open: {e}")
            };
            out.skipped = Some(warning(path, msg));
            return Ok(out);
        }
    };
    // A file that changes while it is read (a live log) is read once more;
    // if it changes again, what was read is kept and the entry is flagged.
    let mut total = 0;
    for attempt in 0..2 {
        if attempt == 1 {
            match open_source(path) {
                Ok(f) => file = f,
                Err(_) => break, // keep the first attempt's result
            }
        }
        let before = match file.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                out.skipped = Some(warning(path, "was replaced by a non-regular file".into()));
                return Ok(out);
            }
            Err(e) => {
                out.skipped = Some(warning(path, format!("cannot stat: {e}")));
                return Ok(out);
            }
        };
        out.stat = Some(before.clone());
        if attempt == 0 {
            progress.file_started(path, before.size());
        }
        let mut src = Source::new(&file, &before);
        let streamed = if before.size() > OVERLAP_ABOVE {
            chunk_stream_overlapped(&mut src, sink, chunker, progress, buf)?
        } else {
            chunk_stream(&mut src, before.size(), sink, chunker, progress, buf)?
        };
        out.holes = src.holes;
        out.content = streamed.content;
        out.added += streamed.added;
        total = streamed.read;
        out.read = total;
        out.flags = 0;
        out.warning = None;
        if let Some(e) = streamed.error {
            out.flags |= FLAG_INCOMPLETE;
            out.warning = Some(warning(
                path,
                format!("read error after {total} bytes, stored what was read: {e}"),
            ));
            break;
        }
        let changed = match file.metadata() {
            Ok(after) => {
                after.size() != before.size()
                    || after.mtime() != before.mtime()
                    || after.mtime_nsec() != before.mtime_nsec()
                    || total != before.size()
            }
            Err(_) => true,
        };
        if !changed {
            break;
        }
        out.flags |= FLAG_CHANGED_DURING_READ;
        out.warning = Some(warning(
            path,
            "changed while it was read, twice; stored what was read the second time".into(),
        ));
    }
    progress.file_done(path, total, total);
    Ok(out)
}

/// What [`chunk_stream`] produced.
pub(crate) struct Streamed {
    pub content: Vec<BlobId>,
    pub read: u64,
    pub added: u64,
    /// The read error that ended the stream early, if any: a source error,
    /// reported by the caller as a warning or a failure as it sees fit.
    pub error: Option<std::io::Error>,
}

/// How far reading a source into a buffer has come; both chunking loops
/// fill their buffers through it.
#[derive(Default)]
struct Fill {
    /// Bytes of the buffer holding data not yet cut.
    filled: usize,
    /// Bytes read from the source so far.
    total: u64,
    eof: bool,
    /// The read error that ended the source early.
    error: Option<std::io::Error>,
}

impl Fill {
    /// One read into `dst`, the free part of the buffer after `filled`.
    fn read(&mut self, src: &mut dyn Read, dst: &mut [u8], progress: &dyn Progress) {
        match src.read(dst) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                self.filled += n;
                self.total += n as u64;
                progress.bytes_done(n as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                self.error = Some(e);
                self.eof = true;
            }
        }
    }
}

/// How much a buffer holds before it is cut: [`READ_BUF`], and never less
/// than one maximal chunk. Short of EOF the chunker may find no final cut
/// in less than a maximal chunk (a run without content boundaries), so a
/// buffer filled by short reads (a pipe) to less than that could be cut
/// into nothing, again and again: a repository made with `--chunk-max`
/// above `READ_BUF` hung on a piped dump.
fn fill_target(chunker: &Chunker) -> usize {
    READ_BUF.max(chunker.params().max_size as usize)
}

/// Read `src` to its end, cut it into chunks and store them. `size_hint`
/// (the expected length, 0 if unknown) sizes the reads; `buf` is the
/// calling thread's reusable buffer. Only repository errors are `Err`.
pub(crate) fn chunk_stream(
    src: &mut dyn Read,
    size_hint: u64,
    sink: &dyn BlobSink,
    chunker: &Chunker,
    progress: &dyn Progress,
    buf: &mut Vec<u8>,
) -> Result<Streamed> {
    let mut out = Streamed {
        content: Vec::new(),
        read: 0,
        added: 0,
        error: None,
    };
    let max = chunker.params().max_size as usize;
    let fill_to = fill_target(chunker);
    let mut f = Fill::default();
    while !f.eof {
        // Fill up to `fill_to`, asking for what the file should still hold
        // (+1 to see EOF without another call): a 1 KiB file costs a 1 KiB
        // read, not a 16 MiB one.
        while f.filled < fill_to && !f.eof {
            let expected = if size_hint == 0 {
                READ_BUF as u64
            } else {
                size_hint.saturating_sub(f.total).saturating_add(1)
            };
            let filled = f.filled;
            let want = (READ_BUF + max - filled).min(
                usize::try_from(expected)
                    .unwrap_or(usize::MAX)
                    .max(64 * 1024),
            );
            if buf.len() < filled + want {
                // The buffer belongs to this reader thread and only ever
                // grows, so bytes are zeroed once per thread, not per file.
                buf.resize(filled + want, 0);
            }
            f.read(src, &mut buf[filled..filled + want], progress);
        }
        let (cuts, used) = chunker.cut_buffer(&buf[..f.filled], f.eof);
        out.added += store_chunks(sink, &buf[..f.filled], &cuts, &mut out.content)?;
        buf.copy_within(used..f.filled, 0);
        f.filled -= used;
    }
    out.read = f.total;
    out.error = f.error;
    Ok(out)
}

/// Room in a big file's buffer past [`fill_target`]: the buffer is cut
/// once it holds that much, and the tail carried to the next one is less
/// than a maximal chunk, so the next read always has at least this much
/// room. It used to be a whole [`READ_BUF`]: three 5 MiB buffers of a big
/// file were the largest part of an initial backup's peak memory after
/// the pack buffers.
const STREAM_SLACK: usize = 256 * 1024;

/// Buffers of one big file whose chunks may be in the pool at once.
const IN_FLIGHT: usize = 2;

/// Big files (and streams) being read with [`chunk_stream_overlapped`] at
/// this moment, by every reader thread.
static ACTIVE_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// Counts a stream in [`ACTIVE_STREAMS`] while it lives.
struct ActiveStream;

impl ActiveStream {
    fn enter() -> Self {
        ACTIVE_STREAMS.fetch_add(1, Ordering::Relaxed);
        ActiveStream
    }

    /// May this stream hold a third buffer? Only while it is the only one:
    /// the third buffer keeps a core busy on the next buffer's chunks while
    /// the other finishes the last chunk of the previous one, and a second
    /// big file read at the same time does that just as well. Two reader
    /// threads inside big files held six 8 MiB buffers, a third of a
    /// backup's peak memory.
    fn may_overlap(&self) -> bool {
        ACTIVE_STREAMS.load(Ordering::Relaxed) <= 1
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        ACTIVE_STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Like [`chunk_stream`], but the next buffer is read and cut on this
/// thread while earlier ones are stored on the pool.
///
/// For a stream, and for a file much larger than a buffer: without it the
/// source sits unread (a pipe undrained and its producer, e.g. pg_dump,
/// blocked; a disk idle under a 20 GB file) while a buffer is compressed.
/// The chunks of [`IN_FLIGHT`] buffers are queued at once, so a core that
/// is done with one buffer starts on the next while the other finishes
/// that buffer's last (largest) chunk: storing one buffer at a time left a
/// core idle for about a fifth of a big file's backup. Sibling reader
/// threads hide this for many small files, not for one big one. Memory is
/// bounded: `IN_FLIGHT` buffers being stored and one being read, or one
/// and one while other big files are read too; `spare` (the calling
/// thread's buffer) is one of them and is freed at the end.
pub(super) fn chunk_stream_overlapped(
    src: &mut dyn Read,
    sink: &dyn BlobSink,
    chunker: &Chunker,
    progress: &dyn Progress,
    spare: &mut Vec<u8>,
) -> Result<Streamed> {
    let fill_to = fill_target(chunker);
    let buf_len = fill_to + STREAM_SLACK;
    // Rendezvous: a full buffer is handed over only when the storer has
    // room for it, so at most IN_FLIGHT + 1 buffers exist.
    let (full_tx, full_rx) = crossbeam_channel::bounded::<FullBuffer>(0);
    let (empty_tx, empty_rx) = crossbeam_channel::bounded::<Vec<u8>>(IN_FLIGHT + 1);
    let active = ActiveStream::enter();
    std::thread::scope(|s| {
        let storer = std::thread::Builder::new()
            .name("coffer-stream-store".into())
            .spawn_scoped(s, move || store_buffers(sink, full_rx, empty_tx))
            .map_err(|e| Error::Internal(format!("cannot start the stream storer thread: {e}")))?;
        let mut buf = std::mem::take(spare);
        buf.resize(buf_len, 0);
        let mut allocated = 1;
        let mut f = Fill::default();
        while !f.eof {
            while f.filled < fill_to && !f.eof {
                let filled = f.filled;
                f.read(src, &mut buf[filled..], progress);
            }
            let (cuts, used) = chunker.cut_buffer(&buf[..f.filled], f.eof);
            // Two buffers always (one read, one stored), a third only
            // while no other big file is read; one beyond that is let go
            // when it comes back.
            let room = if active.may_overlap() {
                IN_FLIGHT + 1
            } else {
                2
            };
            let mut next = if allocated < room {
                allocated += 1;
                vec![0u8; buf_len]
            } else {
                let mut got = None;
                while let Ok(b) = empty_rx.recv() {
                    if allocated > 2 && !active.may_overlap() {
                        allocated -= 1;
                        continue;
                    }
                    got = Some(b);
                    break;
                }
                match got {
                    Some(b) => b,
                    // The storer stopped on a repository error; join() says which.
                    None => break,
                }
            };
            next[..f.filled - used].copy_from_slice(&buf[used..f.filled]);
            f.filled -= used;
            let full = std::mem::replace(&mut buf, next);
            if full_tx.send((full, cuts)).is_err() {
                break;
            }
        }
        drop(full_tx);
        // The last buffer is not handed back as the thread's spare: after
        // a big file the next thousands of small ones would otherwise keep
        // 4 MiB resident per reader thread for nothing, and faulting a
        // buffer in again costs little next to reading a big file.
        drop(buf);
        let (content, added) = storer
            .join()
            .map_err(|_| Error::Internal("the stream storer thread panicked".into()))??;
        Ok(Streamed {
            content,
            read: f.total,
            added,
            error: f.error,
        })
    })
}

/// A buffer read and cut, with its chunks' (offset, length).
type FullBuffer = (Vec<u8>, Vec<(usize, usize)>);

/// A buffer whose chunks are being stored.
struct InFlight {
    buf: Arc<Vec<u8>>,
    results: Vec<Option<(BlobId, u64)>>,
    remaining: usize,
}

/// The stream storer: queue every chunk of up to [`IN_FLIGHT`] buffers on
/// the pool, collect their ids in stream order, and hand each buffer back
/// once all its chunks are stored. After a repository error no more
/// buffers are taken; chunks already queued finish before it is returned.
fn store_buffers(
    sink: &dyn BlobSink,
    full_rx: Receiver<FullBuffer>,
    empty_tx: Sender<Vec<u8>>,
) -> Result<(Vec<BlobId>, u64)> {
    type Done = (u64, usize, Result<(BlobId, u64)>);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
    let mut flights: VecDeque<InFlight> = VecDeque::new();
    // Sequence number of `flights[0]`.
    let mut front = 0u64;
    let mut ids = Vec::new();
    let mut added = 0u64;
    let mut failed: Option<Error> = None;
    let mut input_open = true;
    rayon::in_place_scope(|scope| {
        loop {
            let accept = input_open && failed.is_none() && flights.len() < IN_FLIGHT;
            if !accept && flights.is_empty() {
                break;
            }
            let mut arrived = None;
            let mut done = None;
            if accept && flights.is_empty() {
                match full_rx.recv() {
                    Ok(b) => arrived = Some(b),
                    Err(_) => input_open = false,
                }
            } else if accept {
                crossbeam_channel::select! {
                    recv(full_rx) -> b => match b {
                        Ok(b) => arrived = Some(b),
                        Err(_) => input_open = false,
                    },
                    recv(done_rx) -> d => done = d.ok(),
                }
            } else {
                done = done_rx.recv().ok();
            }
            if let Some((buf, cuts)) = arrived {
                let seq = front + flights.len() as u64;
                let buf = Arc::new(buf);
                for (idx, &(o, n)) in cuts.iter().enumerate() {
                    let (buf, done_tx) = (Arc::clone(&buf), done_tx.clone());
                    scope.spawn(move |_| {
                        // A panic must still report, or the storer would
                        // wait for this chunk forever.
                        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            let chunk = &buf[o..o + n];
                            let id = sink.blob_id(chunk);
                            sink.store_blob(BlobKind::Data, id, chunk).map(|a| (id, a))
                        }))
                        .unwrap_or_else(|_| {
                            Err(Error::Internal("storing a chunk panicked".into()))
                        });
                        // Let go of the buffer before saying so: once every
                        // chunk has reported, the storer owns it alone.
                        drop(buf);
                        let _ = done_tx.send((seq, idx, r));
                    });
                }
                flights.push_back(InFlight {
                    buf,
                    results: vec![None; cuts.len()],
                    remaining: cuts.len(),
                });
            }
            if let Some((seq, idx, r)) = done {
                let f = &mut flights[(seq - front) as usize];
                f.remaining -= 1;
                match r {
                    Ok(v) => f.results[idx] = Some(v),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            // Retire finished buffers in stream order.
            while flights.front().is_some_and(|f| f.remaining == 0) {
                let Some(f) = flights.pop_front() else { break };
                front += 1;
                for (id, a) in f.results.into_iter().flatten() {
                    ids.push(id);
                    added += a;
                }
                let buf = Arc::try_unwrap(f.buf).unwrap_or_else(|b| vec![0u8; b.len()]);
                // The reader may be gone after a read error: nothing to do.
                let _ = empty_tx.send(buf);
            }
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok((ids, added)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::ChunkerParams;
    use crate::progress::NoProgress;
    use std::os::unix::fs::FileExt;

    /// Names chunks, stores nothing.
    struct IdSink;

    impl BlobSink for IdSink {
        fn blob_id(&self, data: &[u8]) -> BlobId {
            BlobId(*blake3::hash(data).as_bytes())
        }
        fn has_blob(&self, _: &BlobId) -> Result<bool> {
            Ok(false)
        }
        fn store_blob(&self, _: BlobKind, _: BlobId, _: &[u8]) -> Result<u64> {
            Ok(0)
        }
    }

    /// Holes passed over without reading yield exactly the chunks of the
    /// zeros `read()` returns for them, with both chunking loops.
    #[test]
    fn holes_chunk_like_the_zeros_they_read_as() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let size: u64 = 40 << 20;
        let f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        f.write_all_at(&noise[..100_000], 3 << 20).unwrap();
        f.write_all_at(&noise, (20 << 20) + 5).unwrap();
        f.write_all_at(b"tail", size - 10).unwrap();
        drop(f);
        let chunker = Chunker::new(ChunkerParams::default(), 7);
        let plain = std::fs::read(&path).unwrap();
        let want = chunk_stream(
            &mut &plain[..],
            size,
            &IdSink,
            &chunker,
            &NoProgress,
            &mut Vec::new(),
        )
        .unwrap();
        let file = File::open(&path).unwrap();
        let st = file.metadata().unwrap();
        for overlapped in [false, true] {
            let mut src = Source::new(&file, &st);
            let got = if overlapped {
                chunk_stream_overlapped(&mut src, &IdSink, &chunker, &NoProgress, &mut Vec::new())
            } else {
                chunk_stream(
                    &mut src,
                    size,
                    &IdSink,
                    &chunker,
                    &NoProgress,
                    &mut Vec::new(),
                )
            }
            .unwrap();
            assert_eq!(got.read, size);
            assert_eq!(got.content, want.content, "overlapped: {overlapped}");
            // Where the filesystem made the file sparse, its holes were
            // not read.
            if st.blocks() * 512 < size {
                assert!(src.holes > size - (4 << 20), "holes {}", src.holes);
            }
        }
    }

    fn save(path: &Path) -> FileOutcome {
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let job = FileJob {
            path: path.to_path_buf(),
            result: tx,
        };
        let chunker = Chunker::new(ChunkerParams::default(), 7);
        save_file(&job, &IdSink, &chunker, &NoProgress, &mut Vec::new()).unwrap()
    }

    #[test]
    fn a_file_is_read_whole_into_its_chunk_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"some bytes").unwrap();
        let out = save(&path);
        assert_eq!(out.content, vec![IdSink.blob_id(b"some bytes")]);
        assert_eq!((out.read, out.holes, out.flags), (10, 0, 0));
        assert!(out.warning.is_none() && out.skipped.is_none());
        assert_eq!(out.stat.unwrap().len(), 10);
    }

    /// Source problems are warnings in the outcome, never `Err`.
    #[test]
    fn a_file_that_vanished_is_skipped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let out = save(&dir.path().join("gone"));
        let w = out.skipped.unwrap();
        assert_eq!(w.path, dir.path().join("gone"));
        assert_eq!(w.message, "vanished before it could be read");
        assert!(out.content.is_empty());
    }

    #[test]
    fn a_file_swapped_for_a_directory_is_skipped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let out = save(dir.path());
        assert_eq!(
            out.skipped.unwrap().message,
            "was replaced by a non-regular file"
        );
    }

    #[test]
    fn a_file_swapped_for_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("target"), b"secret").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("target", &link).unwrap();
        let out = save(&link);
        let w = out.skipped.unwrap();
        assert!(w.message.starts_with("cannot open"), "{}", w.message);
        assert!(out.content.is_empty());
    }

    /// `/proc/PID/mem` is a regular file whose first page cannot be read.
    #[test]
    fn a_read_error_keeps_what_was_read_flagged_incomplete() {
        let out = save(Path::new(&format!("/proc/{}/mem", std::process::id())));
        assert!(out.skipped.is_none());
        let w = out.warning.unwrap();
        assert!(
            w.message.starts_with("read error after 0 bytes"),
            "{}",
            w.message
        );
        assert_eq!(out.flags, FLAG_INCOMPLETE);
        assert_eq!(out.read, 0);
    }
}
