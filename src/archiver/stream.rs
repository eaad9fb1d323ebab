//! Backing up a stream (standard input, or a command's output such as
//! `pg_dumpall`) as one file in a snapshot. The stream goes through the
//! same chunk → hash → dedup → compress → seal pipeline as files, so
//! consecutive dumps deduplicate against each other.
//!
//! A stream that ends in a read error, or whose producer exits non-zero,
//! is a failed backup: the caller's `finished` check runs after the last
//! byte and before the snapshot is written (doc/reliability.md E9).

use super::file_saver::chunk_stream_overlapped;
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

/// Give the pipe at `fd` a 1 MiB buffer (Linux's default ceiling for
/// unprivileged processes) when it is one. With the default 64 KiB the
/// producer and this process woke each other for every 64 KiB: 8 000
/// round trips per 512 MiB dump. Anything but a pipe is left alone, and a
/// refusal only costs speed.
#[cfg(target_os = "linux")]
pub fn widen_pipe(fd: &impl std::os::fd::AsFd) {
    use std::os::fd::AsRawFd;
    let fd = fd.as_fd().as_raw_fd();
    // SAFETY: fcntl(F_SETPIPE_SZ) on a file descriptor we hold changes at
    // most the capacity of the pipe behind it; it touches no memory of
    // ours, and on anything that is not a pipe it fails with EBADF/EINVAL.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20);
    }
}

#[cfg(not(target_os = "linux"))]
pub fn widen_pipe(_fd: &impl std::os::fd::AsFd) {}

/// Store `src` as the file `/NAME` and record a snapshot of it. A stream
/// that reads nothing is refused unless `allow_empty`, as restic does.
pub fn snapshot_stream(
    repo: Arc<Repository>,
    src: &mut dyn Read,
    name: &str,
    allow_empty: bool,
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
    let chunker = repo.chunker()?;
    let streamed = chunk_stream_overlapped(src, &store, &chunker, progress, &mut Vec::new())?;
    if let Some(e) = streamed.error {
        return Err(Error::StreamRead {
            read: streamed.read,
            source: e,
        });
    }
    // The producer's own failure, when it has one, says more than "empty".
    finished()?;
    if streamed.read == 0 && !allow_empty {
        return Err(Error::EmptyStream {
            name: name.to_string(),
        });
    }
    let mut node = Node::new(name.as_bytes().to_vec(), NodeKind::File);
    node.mode = 0o600;
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    node.uid = unsafe { libc::getuid() };
    node.gid = unsafe { libc::getgid() };
    node.user = crate::repository::username().into();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiver::file_saver::chunk_stream;
    use crate::chunking::{Chunker, ChunkerParams};
    use crate::id::BlobId;
    use crate::progress::NoProgress;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Blobs in memory; fails every store after `fail_after` blobs.
    #[derive(Default)]
    struct MemSink {
        blobs: Mutex<HashMap<BlobId, Vec<u8>>>,
        fail_after: Option<usize>,
    }

    impl BlobSink for MemSink {
        fn blob_id(&self, data: &[u8]) -> BlobId {
            BlobId(*blake3::hash(data).as_bytes())
        }
        fn has_blob(&self, id: &BlobId) -> Result<bool> {
            Ok(self.blobs.lock().expect("lock").contains_key(id))
        }
        fn store_blob(&self, _: BlobKind, id: BlobId, data: &[u8]) -> Result<u64> {
            let mut b = self.blobs.lock().expect("lock");
            if self.fail_after.is_some_and(|n| b.len() >= n) {
                return Err(Error::Usage("disk on fire".into()));
            }
            Ok(if b.insert(id, data.to_vec()).is_none() {
                data.len() as u64
            } else {
                0
            })
        }
    }

    /// Hands out `data` in awkward read sizes, like a pipe, then maybe fails.
    struct Pipe<'a> {
        data: &'a [u8],
        pos: usize,
        step: usize,
        fail_at: Option<usize>,
    }

    impl Read for Pipe<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.fail_at.is_some_and(|f| self.pos >= f) {
                return Err(std::io::Error::other("producer died"));
            }
            self.step = (self.step * 7 + 13) % 200_000 + 1;
            let end = (self.pos + self.step.min(buf.len())).min(self.data.len());
            let end = self.fail_at.map_or(end, |f| end.min(f));
            let n = end - self.pos;
            buf[..n].copy_from_slice(&self.data[self.pos..end]);
            self.pos = end;
            Ok(n)
        }
    }

    fn pipe(data: &[u8], fail_at: Option<usize>) -> Pipe<'_> {
        Pipe {
            data,
            pos: 0,
            step: 1,
            fail_at,
        }
    }

    /// 40 MB of text-like bytes: several buffers, hence several hand-overs.
    fn stream_data() -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..40_000_000)
            .map(|i| {
                if i % 64 == 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                }
                b"0123456789abcdef\t\n"[((x >> (i % 64)) % 18) as usize]
            })
            .collect()
    }

    fn chunker() -> Chunker {
        Chunker::new(
            ChunkerParams {
                min_size: 64 * 1024,
                avg_size: 256 * 1024,
                max_size: 1024 * 1024,
            },
            7,
        )
    }

    #[test]
    fn overlapped_stream_cuts_and_stores_like_a_single_pass() {
        let data = stream_data();
        let c = chunker();
        let sink = MemSink::default();
        let got = chunk_stream_overlapped(
            &mut pipe(&data, None),
            &sink,
            &c,
            &NoProgress,
            &mut Vec::new(),
        )
        .expect("stream");
        assert!(got.error.is_none());
        assert_eq!(got.read, data.len() as u64);
        let plain = MemSink::default();
        let want = chunk_stream(&mut &data[..], 0, &plain, &c, &NoProgress, &mut Vec::new())
            .expect("plain stream");
        assert_eq!(got.content, want.content, "cuts differ from one pass");
        assert!(got.content.len() > 40, "too few chunks to cross buffers");
        let blobs = sink.blobs.lock().expect("lock");
        let joined: Vec<u8> = got
            .content
            .iter()
            .flat_map(|id| blobs[id].iter().copied())
            .collect();
        assert!(joined == data, "stored chunks do not rebuild the stream");
        assert_eq!(
            got.added,
            blobs.values().map(|b| b.len() as u64).sum::<u64>()
        );
    }

    /// Streams read at the same time share their buffers (a third buffer
    /// only while one is alone, shed when another starts): each must
    /// still come out as one pass over its own bytes.
    #[test]
    fn concurrent_streams_each_store_their_own_bytes() {
        let data = stream_data();
        let c = chunker();
        let sink = MemSink::default();
        let starts = [0usize, 5_000_000, 11_000_000];
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = starts
                .iter()
                .map(|&at| {
                    let (src, sink, c) = (&data[at..], &sink, &c);
                    s.spawn(move || {
                        chunk_stream_overlapped(
                            &mut pipe(src, None),
                            sink,
                            c,
                            &NoProgress,
                            &mut Vec::new(),
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("stream thread"))
                .collect()
        });
        let blobs = sink.blobs.lock().expect("lock");
        for (r, &at) in results.into_iter().zip(&starts) {
            let got = r.expect("stream");
            assert!(got.error.is_none());
            assert_eq!(got.read, (data.len() - at) as u64);
            let joined: Vec<u8> = got
                .content
                .iter()
                .flat_map(|id| blobs[id].iter().copied())
                .collect();
            assert!(joined == data[at..], "stream from {at} does not rebuild");
        }
    }

    /// A repository's maximal chunk may exceed a read buffer (chunk_max
    /// goes up to 16 MiB): a pipe's short reads must still fill a buffer
    /// to a whole maximal chunk, or nothing is ever cut. Zeros never cut
    /// early, so every chunk is maximal. Both paths run on a thread so a
    /// regression fails here instead of hanging the suite.
    #[test]
    fn chunks_larger_than_a_read_buffer_are_cut_from_a_pipe() {
        use crate::archiver::file_saver::READ_BUF;
        let max = 3 * READ_BUF;
        let data = vec![0u8; 2 * max + 12_345];
        let c = Chunker::new(
            ChunkerParams {
                min_size: 256 * 1024,
                avg_size: 1024 * 1024,
                max_size: max as u32,
            },
            7,
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let (data2, c2) = (data.clone(), c.clone());
        std::thread::spawn(move || {
            let (a, b) = (MemSink::default(), MemSink::default());
            let over = chunk_stream_overlapped(
                &mut pipe(&data2, None),
                &a,
                &c2,
                &NoProgress,
                &mut Vec::new(),
            )
            .map(|s| s.content);
            let plain = chunk_stream(
                &mut pipe(&data2, None),
                0,
                &b,
                &c2,
                &NoProgress,
                &mut Vec::new(),
            )
            .map(|s| s.content);
            let _ = tx.send((over, plain, a, b));
        });
        let (over, plain, a, b) = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("a stream with chunks larger than a read buffer never finished");
        for (what, ids, sink) in [("overlapped", over, a), ("plain", plain, b)] {
            let ids = ids.expect(what);
            assert_eq!(ids.len(), 3, "{what}: two maximal chunks and the rest");
            let blobs = sink.blobs.lock().expect("lock");
            let joined: Vec<u8> = ids
                .iter()
                .flat_map(|id| blobs[id].iter().copied())
                .collect();
            assert!(joined == data, "{what}: chunks do not rebuild the stream");
        }
    }

    #[test]
    fn a_read_error_ends_the_stream_with_what_was_read() {
        let data = stream_data();
        let c = chunker();
        let sink = MemSink::default();
        let at = 23_456_789;
        let got = chunk_stream_overlapped(
            &mut pipe(&data, Some(at)),
            &sink,
            &c,
            &NoProgress,
            &mut Vec::new(),
        )
        .expect("a source error is not a repository error");
        assert!(got.error.is_some());
        assert_eq!(got.read, at as u64);
        let blobs = sink.blobs.lock().expect("lock");
        let stored: usize = got.content.iter().map(|id| blobs[id].len()).sum();
        assert_eq!(stored, at);
    }

    #[test]
    fn a_repository_error_stops_the_stream_without_hanging() {
        let data = stream_data();
        let sink = MemSink {
            fail_after: Some(30),
            ..Default::default()
        };
        let r = chunk_stream_overlapped(
            &mut pipe(&data, None),
            &sink,
            &chunker(),
            &NoProgress,
            &mut Vec::new(),
        );
        assert!(matches!(r, Err(Error::Usage(m)) if m == "disk on fire"));
    }
}
