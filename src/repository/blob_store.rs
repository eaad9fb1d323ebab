//! Storing blobs during a backup: dedup check → compress → seal → pack →
//! verify → upload → index, with a flush barrier at the end.
//!
//! Workers call [`BlobStore::store_blob`] from many threads: the dedup
//! check and the sealing run in the caller's thread, appending to the open
//! pack takes a short lock. Full packs go through a bounded channel to
//! `UPLOADERS` upload threads, which re-open every blob of the pack (so
//! memory or compressor faults are caught before anything is uploaded:
//! restic#4529) and put it; an index thread collects the uploaded packs and
//! every [`CHECKPOINT_BLOBS`] blobs writes an index segment and adds it to
//! the SQLite cache. Memory is bounded by the channel: a full pack waits
//! for a free upload thread, each of which holds one.
//!
//! Ordering (doc/design.md invariant 5): a blob is in a segment only after its
//! pack is durable, and [`BlobStore::finish`] returns only after the last
//! segment is durable, so the caller may then write the snapshot.

use super::Repository;
use super::config::Config;
use super::remote::PackCheck;
use crate::backend::{FileKind, PendingPut};
use crate::blob::{BlobKind, BlobSink};
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId, SegmentId};
use crate::index::segment::{IndexedPack, Segment};
use crate::pack::writer::{FinishedPack, PackWriter};
use crate::pack::{PackEntry, reader::parse_pack, seal_blob_with, seal_body_with, verify_blob};
use crossbeam_channel::{Receiver, Sender, bounded};
use rayon::prelude::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Blobs per index segment written during a backup: bounds the memory of
/// not-yet-indexed ids and the work lost to a crash. At 100 000 the ids
/// waiting for their segment and their pack entries held 18 MB of a backup
/// of 200k files; at 25 000 they hold under 5 MB, for a segment (one
/// file, one fsync, one SQLite transaction) per 25 000 new blobs.
pub const CHECKPOINT_BLOBS: usize = 25_000;

/// The size at which a backup closes a pack of trees, if the repository's
/// pack size is larger. The tree pack grows by doubling and is not pooled;
/// with the open one and the one being uploaded, 8 MiB tree packs held up
/// to 16 MiB through the tree-heavy end of a 200k-file backup, which then
/// peaked at 92 MiB against 78-87 MiB with 2 MiB ones. Trees are small and
/// read one at a time, so smaller packs cost only more (still few) files.
const TREE_PACK_SIZE: usize = 2 << 20;

/// The SQLite page cache a writing connection keeps (KiB).
const BACKUP_INDEX_CACHE_KIB: u32 = 8 << 10;

/// Packs a backup verifies and writes at once on a local disk. Two: a
/// pack's O_DIRECT write returns only when the device has it, and with one
/// upload thread the sealers waited for a free pack buffer through that
/// wait (seen in a system-wide scheduler trace); the initial backup of the
/// 1.4 GB home tree went from 3.97-4.23 s to 3.59-3.79 s. The third pack
/// buffer this takes fits in 80 MiB since the backup's other buffers
/// shrank (segments every 25 000 blobs, smaller item queue and caches, a
/// shared pool of sealing buffers): 78-79.5 MiB peak on that tree. The
/// pack's verify runs on [`verify_pool`], and the fsyncs that make it
/// durable on the index thread.
pub(crate) const UPLOADERS: usize = 2;

/// Upload threads for `repo`, of which a local disk gets `local`; a remote
/// store, where a put waits on the network rather than the disk, as many
/// as it takes requests at once, 2 to 4 (each holds one pack: the bound
/// that keeps a backup to S3 within 1.3x the memory of one to a disk).
pub(crate) fn upload_threads(repo: &Repository, local: usize) -> usize {
    match repo.requests_in_flight() {
        Some(n) => n.clamp(2, 4),
        None => local,
    }
}

/// Written packs waiting for their fsyncs: each holds an open file, not
/// its bytes, so a stalled fsync does not stop the backup for this many.
const PENDING_COMMITS: usize = 16;

/// What a backup added to the repository.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    pub blobs_added: u64,
    /// Plaintext bytes of new blobs.
    pub raw_bytes_added: u64,
    /// Bytes of new blobs as stored (compressed and encrypted).
    pub stored_bytes_added: u64,
    pub packs_written: u64,
    pub segments: Vec<SegmentId>,
}

struct Shared {
    repo: Arc<Repository>,
    /// The repository's writing parameters, read once: a store is only
    /// made for a repository whose config reads.
    config: Config,
    /// Ids queued or uploaded but not yet in the SQLite index.
    pending: Mutex<HashSet<BlobId>>,
    /// The first repository error; once set every call fails with it.
    failed: Mutex<Option<Arc<Error>>>,
    blobs_added: AtomicU64,
    raw_added: AtomicU64,
    stored_added: AtomicU64,
    /// The data pack buffers: those free, and how many exist.
    buffers: Mutex<PackBuffers>,
    /// Signalled when a data pack buffer is freed.
    buffer_freed: Condvar,
    /// The most data pack buffers that may exist at once.
    buffer_cap: usize,
}

#[derive(Default)]
struct PackBuffers {
    free: Vec<Vec<u8>>,
    alive: usize,
}

impl Shared {
    /// Give an uploaded data pack's buffer back for a later pack: with a
    /// fresh allocation per pack, faulting in its pages was 3% of a
    /// backup's CPU.
    fn recycle(&self, buf: Vec<u8>) {
        lock(&self.buffers).free.push(buf);
        self.buffer_freed.notify_one();
    }

    /// A writer for the next data pack, on a free buffer. When
    /// `buffer_cap` buffers exist already, wait for an upload thread to
    /// free one: sealers then wait for the uploads, which are the
    /// bottleneck at that moment anyway, instead of filling more packs
    /// than can be uploaded. Without the cap a second sealer filled
    /// another 8 MiB pack while the first waited to hand over its own.
    /// After a failure nothing waits.
    fn data_pack(&self) -> PackWriter {
        let mut b = lock(&self.buffers);
        loop {
            if let Some(buf) = b.free.pop() {
                return PackWriter::with_buffer(buf);
            }
            if b.alive < self.buffer_cap || lock(&self.failed).is_some() {
                b.alive += 1;
                return PackWriter::with_capacity(data_pack_capacity(&self.config));
            }
            b = self
                .buffer_freed
                .wait_timeout(b, std::time::Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

/// Packs written and segments saved by the upload thread.
type UploadResult = Result<(u64, Vec<SegmentId>)>;

/// A pack written but not yet durable, and what the index will record.
type Uploaded = (Box<dyn PendingPut>, IndexedPack);

pub struct BlobStore {
    shared: Arc<Shared>,
    writers: Mutex<[PackWriter; 2]>,
    tx: Option<Sender<FinishedPack>>,
    uploader: Option<JoinHandle<UploadResult>>,
    /// See [`BlobSink::parent_blobs_known`]; set by [`BlobStore::trust_parent`].
    parent_known: AtomicBool,
    /// Packs of a local repository that new content was deduplicated
    /// against and that were found whole (see [`BlobStore::claim`]).
    sound_packs: Mutex<HashSet<PackId>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BlobStore {
    pub fn new(repo: Arc<Repository>) -> Result<BlobStore> {
        let config = repo.config()?.clone();
        // Load the index before workers start: every dedup check needs it.
        // 8 MiB of page cache, not 32: a 200k-file backup's peak memory
        // fell by 4 MB, and see `limit_cache`.
        repo.index()?.limit_cache(BACKUP_INDEX_CACHE_KIB)?;
        let plan = repo.pack_check_plan();
        match &plan.check {
            PackCheck::Skip => {}
            PackCheck::All => {
                adopt_unindexed_packs(&repo, None)?;
            }
            PackCheck::Dirs(dirs) => {
                adopt_unindexed_packs(&repo, Some(dirs))?;
            }
        }
        repo.pack_check_done(plan);
        repo.mark_writing(true);
        let capacity = data_pack_capacity(&config);
        let uploaders = upload_threads(&repo, UPLOADERS);
        let shared = Arc::new(Shared {
            repo,
            config,
            pending: Mutex::new(HashSet::new()),
            failed: Mutex::new(None),
            blobs_added: AtomicU64::new(0),
            raw_added: AtomicU64::new(0),
            stored_added: AtomicU64::new(0),
            // The open pack (the first buffer) and one per upload thread:
            // a sealer that closes a pack while every uploader is busy
            // waits for one to free its buffer, then hands the pack over.
            buffers: Mutex::new(PackBuffers {
                free: Vec::new(),
                alive: 1,
            }),
            buffer_freed: Condvar::new(),
            buffer_cap: uploaders + 1,
        });
        // A full pack is handed over when an upload thread is free, so
        // sealing overlaps with upload. In memory: the open pack, the ones
        // uploading, and any a sealer is waiting to hand over (rare: a
        // pack takes about three times longer to fill than to verify and write).
        let (tx, rx) = bounded::<FinishedPack>(0);
        // Written packs wait here for their fsyncs holding only a file.
        let (done_tx, done_rx) = bounded::<Result<Uploaded>>(PENDING_COMMITS);
        for i in 0..uploaders {
            let (s, rx, done_tx) = (shared.clone(), rx.clone(), done_tx.clone());
            std::thread::Builder::new()
                .name(format!("coffer-upload-{i}"))
                .spawn(move || put_loop(&s, rx, done_tx))
                .map_err(|e| Error::Internal(format!("cannot start an upload thread: {e}")))?;
        }
        drop((rx, done_tx));
        let s2 = shared.clone();
        let uploader = std::thread::Builder::new()
            .name("coffer-index".into())
            .spawn(move || index_loop(&s2, done_rx))
            .map_err(|e| Error::Internal(format!("cannot start the index thread: {e}")))?;
        Ok(BlobStore {
            shared,
            writers: Mutex::new([PackWriter::with_capacity(capacity), PackWriter::new()]),
            tx: Some(tx),
            uploader: Some(uploader),
            parent_known: AtomicBool::new(false),
            sound_packs: Mutex::new(HashSet::new()),
        })
    }

    /// Let the walk skip looking up the content ids it reuses from the
    /// parent snapshot (see [`crate::index::Index::mark_complete`]).
    pub(crate) fn trust_parent(&self, known: bool) {
        self.parent_known.store(known, Ordering::Relaxed);
    }

    pub fn repository(&self) -> &Arc<Repository> {
        &self.shared.repo
    }

    fn check_failed(&self) -> Result<()> {
        match lock(&self.shared.failed).as_ref() {
            Some(cause) => Err(Error::Aborted(cause.clone())),
            None => Ok(()),
        }
    }

    /// Is this blob already stored or queued? Claims it if not.
    fn claim(&self, id: &BlobId) -> Result<bool> {
        let stored = {
            let mut p = lock(&self.shared.pending);
            if p.contains(id) {
                return Ok(false);
            }
            // Checked under the pending lock: the uploader removes ids from
            // `pending` only after they are in SQLite, so no id is missed
            // in between.
            match self.shared.repo.index()?.lookup(id)? {
                Some(loc) => loc.pack,
                None => {
                    p.insert(*id);
                    return Ok(true);
                }
            }
        };
        self.check_dedup_pack(&stored)?;
        Ok(false)
    }

    /// New content is about to be stored as a reference to a blob of
    /// `pack`: on a local disk, make sure the pack is there at the size the
    /// index records, once per pack and run. Between full listings a backup
    /// lists only the pack directories that changed (see
    /// [`Repository::pack_check_plan`]), and a pack cut short in place
    /// leaves its directory as it was: without this, content read intact
    /// from the source would be recorded as a blob in that damaged pack
    /// (restic#2571). A remote store relies on its weekly listing: a size
    /// request per pack would be a round trip each.
    fn check_dedup_pack(&self, pack: &PackId) -> Result<()> {
        let repo = &self.shared.repo;
        if repo.backend().is_remote() || lock(&self.sound_packs).contains(pack) {
            return Ok(());
        }
        let Some(want) = repo.index()?.pack_size(pack)? else {
            return Ok(());
        };
        let listed = match repo.backend().size(FileKind::Pack, &pack.to_hex()) {
            Ok(size) => vec![(*pack, size)],
            Err(Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        refuse_lost_packs(&std::collections::HashMap::from([(*pack, want)]), &listed)?;
        lock(&self.sound_packs).insert(*pack);
        Ok(())
    }

    fn send(&self, pack: PackWriter) -> Result<()> {
        let finished = pack.finish(self.shared.repo.keys(), self.shared.repo.id());
        match &self.tx {
            Some(tx) => tx
                .send(finished)
                .map_err(|_| match lock(&self.shared.failed).clone() {
                    Some(cause) => Error::Aborted(cause),
                    None => Error::Internal("the upload thread stopped".into()),
                }),
            None => Err(Error::Internal("blob store already finished".into())),
        }
    }

    /// Seal and pack the last blobs, wait for every upload, write the last
    /// index segment. After `Ok`, everything stored is durable and indexed.
    pub fn finish(mut self) -> Result<StoreStats> {
        let packs: Vec<PackWriter> = {
            let mut w = lock(&self.writers);
            w.iter_mut().map(std::mem::take).collect()
        };
        let mut send_err = None;
        for p in packs.into_iter().filter(|p| !p.is_empty()) {
            if let Err(e) = self.send(p) {
                send_err = Some(e);
                break;
            }
        }
        drop(self.tx.take());
        let joined = match self.uploader.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Internal("the upload thread panicked".into())),
            None => Err(Error::Internal("blob store already finished".into())),
        };
        let (packs_written, segments) = joined?;
        if let Some(e) = send_err {
            return Err(e);
        }
        self.shared.repo.mark_writing(false);
        Ok(StoreStats {
            blobs_added: self.shared.blobs_added.load(Ordering::Relaxed),
            raw_bytes_added: self.shared.raw_added.load(Ordering::Relaxed),
            stored_bytes_added: self.shared.stored_added.load(Ordering::Relaxed),
            packs_written,
            segments,
        })
    }
}

impl Drop for BlobStore {
    fn drop(&mut self) {
        // An abandoned store (the backup failed) still stops its thread.
        drop(self.tx.take());
        if let Some(h) = self.uploader.take() {
            let _ = h.join();
        }
    }
}

/// Days since the epoch, the age of cached tree memos.
fn today() -> i64 {
    super::now_ns() / 86_400_000_000_000
}

impl BlobSink for BlobStore {
    fn parent_blobs_known(&self) -> bool {
        self.parent_known.load(Ordering::Relaxed)
    }

    fn tree_memo(&self, id: &BlobId) -> Option<(Vec<u8>, bool)> {
        let index = self.shared.repo.index().ok()?;
        index.tree_memo(id, today()).ok().flatten()
    }

    fn keep_tree_memos(&self, memos: Vec<(BlobId, Vec<u8>)>) {
        if let Ok(index) = self.shared.repo.index() {
            let _ = index.keep_tree_memos(&memos, today());
        }
    }

    fn blob_id(&self, data: &[u8]) -> BlobId {
        self.shared.repo.keys().blob_id(data)
    }

    fn has_blob(&self, id: &BlobId) -> Result<bool> {
        if lock(&self.shared.pending).contains(id) {
            return Ok(true);
        }
        self.shared.repo.index()?.contains(id)
    }

    fn known_blobs(&self, ids: &[BlobId]) -> Result<HashSet<BlobId>> {
        let mut out = self.shared.repo.index()?.contains_many(ids)?;
        let p = lock(&self.shared.pending);
        out.extend(ids.iter().filter(|i| p.contains(i)));
        Ok(out)
    }

    fn store_blob(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<u64> {
        let repo = &self.shared.repo;
        self.store_with(kind, id, data.len(), |append| {
            seal_blob_with(
                repo.keys(),
                repo.id(),
                kind,
                id,
                data,
                self.shared.config.zstd_level,
                append,
            )
        })
    }
}

impl BlobStore {
    /// Store a blob body read from a repository that names blobs as this
    /// one does ([`Repository::read_blob_body`]): sealed anew, not
    /// recompressed. `raw_length` is what it decodes to; the check before
    /// upload decodes it and compares its hash with `id`, as for every blob.
    pub(crate) fn store_body(
        &self,
        kind: BlobKind,
        id: BlobId,
        raw_length: u32,
        body: &[u8],
    ) -> Result<u64> {
        let repo = &self.shared.repo;
        self.store_with(kind, id, raw_length as usize, |append| {
            seal_body_with(repo.keys(), repo.id(), kind, id, body, append)
        })
    }

    /// Claim `id` and add what `seal` produces (it calls its argument with
    /// the sealed bytes) to the open pack of `kind`. Returns the bytes
    /// added: 0 when the blob was stored or queued already.
    fn store_with(
        &self,
        kind: BlobKind,
        id: BlobId,
        raw_len: usize,
        seal: impl FnOnce(
            &mut dyn FnMut(&[u8]) -> (u64, Option<PackWriter>),
        ) -> (u64, Option<PackWriter>),
    ) -> Result<u64> {
        self.check_failed()?;
        if raw_len > crate::pack::MAX_BLOB_RAW as usize {
            return Err(Error::BlobTooLarge {
                kind: if kind == BlobKind::Tree {
                    "Tree"
                } else {
                    "Data"
                },
                size: raw_len as u64,
                limit: u64::from(crate::pack::MAX_BLOB_RAW),
            });
        }
        if !self.claim(&id)? {
            return Ok(0);
        }
        let raw_length = u32::try_from(raw_len).unwrap_or(u32::MAX);
        // Sealed in this thread's scratch buffer and copied into the pack
        // under the lock: only that copy is serialised.
        let (stored, full) = seal(&mut |sealed: &[u8]| {
            let mut w = lock(&self.writers);
            let slot = &mut w[(kind == BlobKind::Tree) as usize];
            // A pack is closed before a blob would take it past the
            // target size, not after: a recycled buffer then never
            // holds (keeps resident) more than the target plus its
            // trailer.
            let target = match kind {
                BlobKind::Tree => (self.shared.config.pack_size as usize).min(TREE_PACK_SIZE),
                _ => self.shared.config.pack_size as usize,
            };
            let full = if !slot.is_empty() && slot.len() + sealed.len() > target {
                let next = if kind == BlobKind::Tree {
                    PackWriter::new()
                } else {
                    self.shared.data_pack()
                };
                Some(std::mem::replace(slot, next))
            } else {
                None
            };
            slot.add_sealed(kind, id, raw_length, sealed);
            (sealed.len() as u64, full)
        });
        self.shared.blobs_added.fetch_add(1, Ordering::Relaxed);
        self.shared
            .raw_added
            .fetch_add(raw_len as u64, Ordering::Relaxed);
        self.shared
            .stored_added
            .fetch_add(stored, Ordering::Relaxed);
        if let Some(p) = full {
            self.send(p)?;
        }
        Ok(stored)
    }
}

/// Compare the repository's packs with the index before blobs are stored.
///
/// An indexed pack that is missing, or whose size differs from the one
/// the index records (cut short, or bytes appended), is refused:
/// deduplicating against it would commit a snapshot whose data is gone
/// (doc/reliability.md §0.9, restic#2571); `repair snapshots` rebuilds the
/// index first, after which a backup stores the lost content again.
///
/// Packs that exist but that no segment lists (left by a backup killed
/// between its pack uploads and its index segment, doc/reliability.md A3) are
/// indexed, so this backup reuses their blobs instead of uploading them
/// again. Each is verified like a pack about to be uploaded, but streamed
/// (see `verify_leftover`): an interrupted multi-terabyte backup's
/// leftovers cost the memory of a few windows, not their size. One that
/// does not verify stays unindexed, for prune to remove. Returns the
/// number of packs indexed. The caller holds a lock (the segment write
/// checks it).
pub(crate) fn adopt_unindexed_packs(repo: &Repository, dirs: Option<&[u8]>) -> Result<u64> {
    let idx = repo.index()?;
    let (indexed, listed) = match dirs {
        None => (
            idx.packs()?,
            repo.backend()
                .list(FileKind::Pack)?
                .into_iter()
                .filter_map(|o| PackId::from_hex(&o.name).map(|p| (p, o.size)))
                .collect(),
        ),
        Some(dirs) => {
            let (mut indexed, mut listed) = (Vec::new(), Vec::new());
            for &first in dirs {
                let d = format!("{first:02x}");
                indexed.extend(idx.packs_starting_with(first)?);
                repo.backend().list_dir_each(FileKind::Pack, &d, &mut |o| {
                    // A name that does not belong here is not a pack
                    // of this directory (a full listing finds it).
                    if o.name.starts_with(d.as_str())
                        && let Some(p) = PackId::from_hex(&o.name)
                    {
                        listed.push((p, o.size));
                    }
                    Ok(())
                })?;
            }
            (indexed, listed)
        }
    };
    let indexed: std::collections::HashMap<PackId, u64> = indexed.into_iter().collect();
    refuse_lost_packs(&indexed, &listed)?;
    let orphans: Vec<(PackId, u64)> = listed
        .into_iter()
        .filter(|(p, _)| !indexed.contains_key(p))
        .collect();
    if orphans.is_empty() {
        return Ok(0);
    }
    let bytes: u64 = orphans.iter().map(|(_, s)| s).sum();
    repo.notice(&format!(
        "adopting {} packs ({:.1} MiB) that an interrupted backup left unindexed",
        orphans.len(),
        bytes as f64 / (1u64 << 20) as f64
    ));
    let (tx, rx) = bounded::<Option<IndexedPack>>(ADOPT_THREADS);
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..ADOPT_THREADS.min(orphans.len()) {
            let (tx, next, orphans) = (tx.clone(), &next, &orphans);
            s.spawn(move || {
                while let Some((id, size)) = orphans.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let adopted = verify_leftover(repo, id, *size).ok().map(|entries| IndexedPack {
                        id: *id,
                        size: *size,
                        entries,
                    });
                    if tx.send(adopted).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        index_adopted(repo, rx)
    })
    .map(|(adopted, refused)| {
        if refused > 0 {
            repo.notice(&format!(
                "{refused} leftover packs do not verify and stay unindexed; `coffer prune` removes them"
            ));
        }
        adopted
    })
}

/// Leftover packs verified at once, each holding one window.
const ADOPT_THREADS: usize = 2;

/// Bytes of a leftover pack read at once (or one blob, if larger).
const ADOPT_WINDOW: u64 = 8 << 20;

/// Refuse to build on packs the index lists but the repository lacks, or
/// holds at another size than the index records, naming each and the
/// repair that applies: `repair snapshots` for lost packs, `repair packs`
/// for damaged ones (it keeps what still verifies, takes the pack out of
/// service and rebuilds the index).
fn refuse_lost_packs(
    indexed: &std::collections::HashMap<PackId, u64>,
    listed: &[(PackId, u64)],
) -> Result<()> {
    let present: std::collections::HashMap<PackId, u64> = listed.iter().copied().collect();
    let (mut missing, mut damaged) = (Vec::new(), Vec::new());
    for (p, want) in indexed {
        let path = FileKind::Pack.path(&p.to_hex());
        match present.get(p) {
            None => missing.push(path),
            Some(size) if size != want => damaged.push(format!(
                "{path} is {size} bytes but the index records {want}"
            )),
            Some(_) => {}
        }
    }
    missing.sort();
    damaged.sort();
    if !damaged.is_empty() {
        return Err(Error::PacksLost {
            count: damaged.len(),
            what: "were truncated or damaged",
            packs: damaged.join("; "),
            remedy: "repair packs",
            why: "it keeps what still verifies and rebuilds the index",
        });
    }
    if !missing.is_empty() {
        return Err(Error::PacksLost {
            count: missing.len(),
            what: "are missing from the repository",
            packs: missing.join(", "),
            remedy: "repair snapshots",
            why: "it rebuilds the index first",
        });
    }
    Ok(())
}

/// Write a segment for the verified leftovers as they arrive, every
/// [`CHECKPOINT_BLOBS`] blobs and at the end. Returns how many packs were
/// indexed and how many did not verify.
fn index_adopted(repo: &Repository, rx: Receiver<Option<IndexedPack>>) -> Result<(u64, u64)> {
    let (mut adopted, mut refused) = (0u64, 0u64);
    let mut seg = Segment::default();
    let mut blobs = 0usize;
    let flush = |seg: &mut Segment| -> Result<()> {
        if !seg.packs.is_empty() {
            let id = repo.save_segment(seg)?;
            repo.index()?.add_segment(&id, seg)?;
            *seg = Segment::default();
        }
        Ok(())
    };
    for p in rx.iter() {
        let Some(p) = p else {
            refused += 1;
            continue;
        };
        adopted += 1;
        blobs += p.entries.len();
        seg.packs.push(p);
        if blobs >= CHECKPOINT_BLOBS {
            flush(&mut seg)?;
            blobs = 0;
        }
    }
    flush(&mut seg)?;
    Ok((adopted, refused))
}

/// Verify a pack no segment lists, as [`verify_pack`] does before upload,
/// without holding it: its trailer by a ranged read, then its bytes in
/// windows of [`ADOPT_WINDOW`], each blob opened and re-hashed and the
/// whole hashed against the pack's name. Returns its entries.
fn verify_leftover(repo: &Repository, id: &PackId, size: u64) -> Result<Vec<PackEntry>> {
    let name = id.to_hex();
    let obj = || FileKind::Pack.path(&name);
    let entries = repo.read_trailer(id, size)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::new();
    let mut rest = &entries[..];
    let mut pos = 0u64;
    while !rest.is_empty() {
        // Whole blobs up to the window (at least one).
        let mut end = pos;
        let n = rest
            .iter()
            .take_while(|e| {
                let fits = end == pos || e.offset as u64 + e.length as u64 - pos <= ADOPT_WINDOW;
                if fits {
                    end = e.offset as u64 + e.length as u64;
                }
                fits
            })
            .count();
        repo.backend().get_range_into(
            FileKind::Pack,
            &name,
            pos,
            (end - pos) as usize,
            &mut buf,
        )?;
        hasher.update(&buf);
        for e in &rest[..n] {
            let at = (e.offset as u64 - pos) as usize;
            verify_blob(repo.keys(), repo.id(), e, &buf[at..at + e.length as usize])
                .map_err(|why| Error::corrupt(obj(), why))?;
        }
        rest = &rest[n..];
        pos = end;
    }
    // The trailer and its length, checked already; hashed for the name.
    repo.backend()
        .get_range_into(FileKind::Pack, &name, pos, (size - pos) as usize, &mut buf)?;
    hasher.update(&buf);
    if hasher.finalize().as_bytes() != &id.0 {
        return Err(Error::corrupt(
            obj(),
            "content does not match its name (damaged)",
        ));
    }
    Ok(entries)
}

/// Room for a data pack: the target size, one maximal chunk past it, and
/// the trailer.
fn data_pack_capacity(config: &Config) -> usize {
    config.pack_size as usize + config.chunker.max_size as usize + (2 << 20)
}

/// Verify a finished pack and upload it; returns what a segment lists
/// (its entries move there; the buffer stays, to be reused). The upload
/// threads' step, and the synthetic-repository tool's.
pub fn upload_pack(repo: &Repository, pack: &mut FinishedPack) -> Result<IndexedPack> {
    verify_pack(repo, pack)?;
    put_verified(repo, pack)
}

/// Store a pack its caller has verified; what the index records of it.
/// The entries move into the result; the buffer stays with the caller, to
/// be reused.
pub(crate) fn put_verified(repo: &Repository, pack: &mut FinishedPack) -> Result<IndexedPack> {
    let (pending, indexed) = write_verified(repo, pack)?;
    pending.commit()?;
    Ok(indexed)
}

/// [`put_verified`] up to the commit: the pack's bytes are written (its
/// buffer may be reused) but it is durable only once committed.
fn write_verified(repo: &Repository, pack: &mut FinishedPack) -> Result<Uploaded> {
    let pending = repo
        .backend()
        .put_pending(FileKind::Pack, &pack.id.to_hex(), pack.bytes())?;
    if pack
        .entries
        .first()
        .is_some_and(|e| e.kind == BlobKind::Tree)
    {
        repo.keep_tree_pack(&pack.id, pack.bytes());
    }
    let indexed = IndexedPack {
        id: pack.id,
        size: pack.bytes().len() as u64,
        entries: std::mem::take(&mut pack.entries),
    };
    Ok((pending, indexed))
}

/// Verification runs on its own threads. Sealing tasks on the global rayon
/// pool block when they hand a full pack to the uploader; if the uploader
/// then needed that same pool to verify the pack, every thread would wait
/// on another: a deadlock (seen with two reader threads and one pack in
/// flight). Threads of this pool never block on the channel.
///
/// Half as many threads as cores: verifying is about a fifth of a
/// backup's CPU (a profile of the home tree's initial backup: 23%), so
/// this keeps up with the sealers; each thread keeps two 128 KiB windows.
/// As many threads as cores made no measurable difference (3.64 s
/// against 3.63 s, medians of five alternated runs).
fn verify_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::thread::available_parallelism()
            .map(|n| n.get().div_ceil(2))
            .unwrap_or(1);
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("coffer-verify-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Re-open every blob of a sealed pack before it leaves the process.
fn verify_pack(repo: &Repository, p: &FinishedPack) -> Result<()> {
    verify_sealed(repo, p).map_err(|(_, why)| {
        Error::corrupt(
            format!("{} (before upload)", FileKind::Pack.path(&p.id.to_hex())),
            why,
        )
    })
}

/// [`verify_pack`]'s check, telling which blob failed (none when the
/// trailer is at fault), so prune can name the pack a bad blob came from.
pub(crate) fn verify_sealed(
    repo: &Repository,
    p: &FinishedPack,
) -> std::result::Result<(), (Option<PackEntry>, String)> {
    let entries = parse_pack(repo.keys(), repo.id(), p.bytes()).map_err(|e| (None, e))?;
    if entries != p.entries {
        return Err((None, "trailer does not match the blobs written".into()));
    }
    let one = |e: &PackEntry| -> std::result::Result<(), (Option<PackEntry>, String)> {
        let s = &p.bytes()[e.offset as usize..(e.offset + e.length) as usize];
        verify_blob(repo.keys(), repo.id(), e, s).map_err(|err| (Some(*e), err))
    };
    match verify_pool() {
        Some(pool) => pool.install(|| entries.par_iter().try_for_each(one)),
        // No threads to spare: verify here, one blob after another.
        None => entries.iter().try_for_each(one),
    }
}

/// Record the first repository error: from then on every store fails.
fn record_failure(shared: &Shared, e: &Error) {
    lock(&shared.failed).get_or_insert_with(|| Arc::new(e.duplicate()));
}

/// An upload thread: verify and put each pack, hand it to the index thread.
/// After a failure (its own or another thread's) packs are dropped unread,
/// so senders are never blocked.
fn put_loop(shared: &Shared, rx: Receiver<FinishedPack>, done: Sender<Result<Uploaded>>) {
    let repo = &shared.repo;
    for mut pack in rx.iter() {
        let data = pack
            .entries
            .first()
            .is_some_and(|e| e.kind == BlobKind::Data);
        if lock(&shared.failed).is_some() {
            if data {
                shared.recycle(pack.into_buffer());
            }
            continue;
        }
        let r = verify_pack(repo, &pack).and_then(|()| write_verified(repo, &mut pack));
        // The bytes are written: the buffer is free while the fsyncs run.
        if data {
            shared.recycle(pack.into_buffer());
        }
        if let Err(e) = &r {
            record_failure(shared, e);
        }
        if done.send(r).is_err() {
            return;
        }
    }
}

/// The index thread: make each uploaded pack durable, in order, and write
/// a segment every [`CHECKPOINT_BLOBS`] blobs and at the end. The fsyncs
/// run here rather than on the upload thread: one that stalls (0.2-0.7 s
/// at times on a VM disk) then holds no pack buffer and the uploader goes
/// on writing. After an error nothing more is indexed; packs already
/// durable are adopted by the next backup.
fn index_loop(shared: &Shared, rx: Receiver<Result<Uploaded>>) -> UploadResult {
    let repo = &shared.repo;
    let mut unindexed = Segment::default();
    let mut unindexed_blobs = 0usize;
    let mut segments = Vec::new();
    let mut packs = 0u64;
    let mut first_err: Option<Error> = None;
    let flush = |seg: &mut Segment, segments: &mut Vec<SegmentId>| -> Result<()> {
        if seg.packs.is_empty() {
            return Ok(());
        }
        let id = repo.save_segment(seg)?;
        repo.index()?.add_segment(&id, seg)?;
        let mut p = lock(&shared.pending);
        for e in seg.packs.iter().flat_map(|p| &p.entries) {
            p.remove(&e.id);
        }
        segments.push(id);
        *seg = Segment::default();
        Ok(())
    };
    for r in rx.iter() {
        if first_err.is_some() {
            continue;
        }
        let pack = match r.and_then(|(pending, pack)| pending.commit().map(|()| pack)) {
            Ok(p) => p,
            Err(e) => {
                record_failure(shared, &e);
                first_err = Some(e);
                continue;
            }
        };
        packs += 1;
        unindexed_blobs += pack.entries.len();
        unindexed.packs.push(pack);
        if unindexed_blobs >= CHECKPOINT_BLOBS {
            if let Err(e) = flush(&mut unindexed, &mut segments) {
                record_failure(shared, &e);
                first_err = Some(e);
                continue;
            }
            unindexed_blobs = 0;
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    if let Err(e) = flush(&mut unindexed, &mut segments) {
        record_failure(shared, &e);
        return Err(e);
    }
    Ok((packs, segments))
}

/// For tests: seal `blobs` (zstd level 3) into one finished pack, not yet
/// uploaded; their ids in order.
#[cfg(test)]
fn seal_into_pack(repo: &Repository, blobs: &[(BlobKind, Vec<u8>)]) -> (FinishedPack, Vec<BlobId>) {
    let mut w = PackWriter::new();
    let mut ids = Vec::new();
    for (kind, bytes) in blobs {
        let id = repo.keys().blob_id(bytes);
        w.add(crate::pack::seal_blob(
            repo.keys(),
            repo.id(),
            *kind,
            id,
            bytes,
            3,
        ));
        ids.push(id);
    }
    (w.finish(repo.keys(), repo.id()), ids)
}

/// For tests: seal `blobs` into one new pack, listed by its own segment.
#[cfg(test)]
pub(crate) fn store_in_own_pack(repo: &Repository, blobs: &[(BlobKind, Vec<u8>)]) -> Vec<BlobId> {
    let (mut pack, ids) = seal_into_pack(repo, blobs);
    let p = upload_pack(repo, &mut pack).unwrap();
    repo.save_segment(&Segment { packs: vec![p] }).unwrap();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;

    /// doc/reliability.md E10: a bit flipped in a pack's buffer after sealing
    /// (inside a blob, in the trailer, in its length) is caught by the
    /// check before upload, which names the pack; nothing is uploaded.
    #[test]
    fn a_pack_corrupted_after_sealing_is_not_uploaded() {
        let (backend, repo) = crate::repository::memory_repo();
        let blobs = [
            b"compressible text ".repeat(5000),
            (0..70_000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            b"small".to_vec(),
        ]
        .map(|b| (BlobKind::Data, b));
        let (good, _) = seal_into_pack(&repo, &blobs);
        let len = good.bytes().len();
        let second = good.entries[1].offset as usize + 100;
        for at in [30, second, len - 20, len - 2] {
            let mut bytes = good.bytes().to_vec();
            bytes[at] ^= 0x04;
            let mut bad = FinishedPack::new(good.id, bytes, good.entries.clone());
            let e = upload_pack(&repo, &mut bad).unwrap_err().to_string();
            assert!(e.contains(&good.id.to_hex()), "flip at {at}: {e}");
            assert!(e.contains("before upload"), "flip at {at}: {e}");
            assert!(
                backend.list(FileKind::Pack).unwrap().is_empty(),
                "flip at {at}: a corrupt pack was uploaded"
            );
        }
        // The intact pack goes up.
        let mut good = good;
        upload_pack(&repo, &mut good).unwrap();
        assert_eq!(backend.list(FileKind::Pack).unwrap().len(), 1);
    }
}
