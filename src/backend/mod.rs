//! Where repository objects live. The trait offers only what an S3 bucket
//! offers too (doc/design.md invariant 1): create-once put, whole or ranged get,
//! list by kind, delete. No rename, no append, no update in place.
//!
//! Durability contract: when `put` returns `Ok`, the object is durable under
//! its final name with exactly the given bytes; when it returns `Err`, no
//! object with partial content exists under that name. `list` either
//! returns every object of a kind or an error, never a partial list
//! presented as complete (restic#4612).

pub mod conformance;
pub(crate) mod faulty;
pub mod local;
pub mod location;
pub mod memory;
pub mod options;
pub mod retry;
pub mod s3;

pub use location::{Location, S3Location};
pub use options::Options;

use crate::error::Result;
use std::sync::Arc;
use std::time::SystemTime;

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    /// When it was written, if the store says (S3 and a local disk do):
    /// what lets prune spare packs too young to be referenced yet.
    pub modified: Option<SystemTime>,
}

impl ObjectInfo {
    pub fn new(name: impl Into<String>, size: u64) -> ObjectInfo {
        ObjectInfo {
            name: name.into(),
            size,
            modified: None,
        }
    }
}

/// A directory that holds objects of one kind on a store that has
/// directories (a local disk), with a stamp that changes whenever an entry
/// is added to it, removed or renamed: see [`Backend::dir_stamps`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirStamp {
    /// The directory's name inside the kind's directory; empty for the
    /// kind's directory itself.
    pub dir: String,
    /// Opaque; equal stamps mean no entry came, went or was renamed.
    pub stamp: String,
    /// When the directory last changed (its inode change time).
    pub changed: SystemTime,
}

/// What a command cost a remote store: requests by method, and the bytes
/// of object data sent (puts) and received (gets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub get: u64,
    pub put: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
    pub sent: u64,
    pub received: u64,
}

impl Requests {
    /// The request counts by method, in the order they are reported.
    pub fn by_method(&self) -> [(&'static str, u64); 5] {
        [
            ("GET", self.get),
            ("PUT", self.put),
            ("HEAD", self.head),
            ("LIST", self.list),
            ("DELETE", self.delete),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_method().iter().map(|(_, n)| n).sum()
    }
}

/// Open the store an existing repository lives in (nothing is created).
/// Every command reaches its repository through this one function, so
/// retries and crash-test failpoints wrap every backend alike.
pub fn open(location: &Location, o: &Options) -> Result<Arc<dyn Backend>> {
    let inner: Arc<dyn Backend> = match location {
        Location::Local(p) => Arc::new(local::LocalBackend::open(p)),
        Location::S3(l) => Arc::new(retry::Retrying::new(s3::S3Backend::open(l, o)?, o)),
    };
    Ok(faulty::install(inner))
}

/// [`open`] for `init`: a local directory is made; a bucket must exist.
pub fn create(location: &Location, o: &Options) -> Result<Arc<dyn Backend>> {
    if let Location::Local(p) = location {
        return Ok(faulty::install(Arc::new(local::LocalBackend::create(p)?)));
    }
    open(location, o)
}

/// Run `f` where `n` requests can be in flight at once: for a remote
/// store (`Some(n)`), on a pool of at least `n` threads kept apart from
/// rayon's CPU-sized global pool, so that 30-100 ms per request does not
/// leave the cores idle; for a local disk (`None`), on the global pool as
/// before. Work inside `f` that uses rayon (`par_iter`) runs on that pool.
pub(crate) fn in_io_pool<R: Send>(n: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
    match n.and_then(io_pool) {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// One pool per size asked for, made once and kept for the process.
fn io_pool(n: usize) -> Option<&'static rayon::ThreadPool> {
    static POOLS: std::sync::Mutex<Vec<(usize, &'static rayon::ThreadPool)>> =
        std::sync::Mutex::new(Vec::new());
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let n = n.max(cores);
    let mut pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = pools.iter().find(|(size, _)| *size == n) {
        return Some(p);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("coffer-io-{i}"))
        .build()
        .ok()?;
    let pool: &'static rayon::ThreadPool = Box::leak(Box::new(pool));
    pools.push((n, pool));
    Some(pool)
}

/// Object names coffer writes: `config`/`config.copy`, else lowercase hex
/// (ids); anything else found in a listing is not coffer's.
pub(crate) fn valid_name(kind: FileKind, name: &str) -> Result<()> {
    let ok = match kind {
        FileKind::Config => name == "config" || name == "config.copy",
        _ => {
            !name.is_empty()
                && name.len() <= 128
                && name
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        }
    };
    if ok {
        Ok(())
    } else {
        Err(crate::error::Error::Usage(format!(
            "invalid object name {name:?}"
        )))
    }
}

/// The object kinds, each under a fixed name or prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Config,
    Key,
    Pack,
    Index,
    Snapshot,
    Lock,
    /// A pack `repair packs` took out of service, kept byte for byte under
    /// its old name: never read, listed or indexed by coffer; the only copy
    /// of what could not be read is not deleted (doc/reliability.md B6).
    Damaged,
}

impl FileKind {
    /// The directory (prefix) of the kind; `config` is a single object.
    pub fn dir(&self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys",
            FileKind::Pack => "packs",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshots",
            FileKind::Lock => "locks",
            FileKind::Damaged => "damaged",
        }
    }

    /// Is an object of this kind named by the hash of its bytes? Then an
    /// object of the same size under the same name is the same object.
    pub(crate) fn is_content_named(&self) -> bool {
        matches!(self, FileKind::Pack | FileKind::Index | FileKind::Snapshot)
    }

    /// The largest object of this kind the format allows: every object is
    /// checked against it before it is read whole (or written), so a huge
    /// file planted in the repository costs nothing (repo-format/README.md,
    /// "Limits").
    pub fn max_size(&self) -> u64 {
        use crate::crypto::envelope::OVERHEAD;
        match self {
            // Magic, version, repository id, the sealed 28-byte body.
            FileKind::Config => 8 + 4 + 32 + 28 + OVERHEAD as u64,
            // Everything up to `meta`, then at most 64 KiB of it.
            FileKind::Key => 117 + 65_536,
            // Magic, flag, two times, hostname and username of at most
            // 1 KiB each, pid; sealed.
            FileKind::Lock => 8 + 1 + 8 + 8 + 2 * (4 + 1024) + 4 + OVERHEAD as u64,
            FileKind::Pack | FileKind::Damaged => crate::pack::MAX_PACK_SIZE,
            FileKind::Index | FileKind::Snapshot => MAX_RECORD_OBJECT,
        }
    }

    /// The object's path inside the repository. Packs are spread over 256
    /// subdirectories by their first byte so no directory grows huge.
    pub fn path(&self, name: &str) -> String {
        match self {
            // `config` or its copy `config.copy`, in the root.
            FileKind::Config => name.to_string(),
            FileKind::Pack if name.len() >= 2 => format!("packs/{}/{name}", &name[..2]),
            _ => format!("{}/{name}", self.dir()),
        }
    }
}

/// The largest index segment or snapshot object. Their records have no
/// overall cap of their own; the reference writer's segments stay far
/// below this (100 000 blobs, plus one pack's at most 2^22 entries), and
/// so do its snapshots (100 000 paths of at most `PATH_MAX` bytes).
pub(crate) const MAX_RECORD_OBJECT: u64 = 512 << 20;

/// A repository store.
pub trait Backend: Send + Sync {
    /// Human-readable location, for messages.
    fn location(&self) -> String;
    /// Store a new object. `config`, keys and locks are create-once: an
    /// existing name is an error. For content-named kinds (packs, index,
    /// snapshots) an existing object of the same size is taken as this one,
    /// which makes retried puts idempotent.
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()>;
    /// [`Backend::put`] in two steps: when this returns the bytes are
    /// written (the caller may reuse `data`); the object is durable under
    /// its name only after [`PendingPut::commit`] returns `Ok`. Lets a
    /// caller wait for durability (fsyncs) without holding the bytes.
    /// Dropping a pending put never leaves a partial object: a two-step
    /// backend leaves none, one that puts at once (the default) leaves the
    /// whole object.
    fn put_pending(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<Box<dyn PendingPut>> {
        self.put(kind, name, data)?;
        Ok(Box::new(Committed))
    }
    /// Read a whole object.
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>>;
    /// Read `len` bytes at `offset`; a short object is an error.
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.get_range_into(kind, name, offset, len, &mut buf)?;
        Ok(buf)
    }
    /// [`Backend::get_range`] into `buf` (resized to `len`), so a caller
    /// that reads many ranges can reuse one buffer instead of faulting in
    /// fresh pages for each.
    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()>;
    /// Hand every object of a kind to `f`, in no particular order, page
    /// by page on a remote store: all of them, or an error.
    fn list_each(&self, kind: FileKind, f: &mut dyn FnMut(ObjectInfo) -> Result<()>) -> Result<()>;
    /// Every object of a kind, sorted by name.
    fn list(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        self.list_each(kind, &mut |o| {
            out.push(o);
            Ok(())
        })?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
    /// How many requests the store wants in flight: the size of the pools
    /// that upload, fetch and verify packs (apart from the CPU pool), so
    /// that a remote store's latency per request does not starve them.
    fn connections(&self) -> usize {
        2
    }
    /// Is every request a round trip over a network (worth caching
    /// immutable objects locally, worth a pool of requests in flight)?
    fn is_remote(&self) -> bool {
        false
    }
    /// Does the store refuse a second create-once put of a name (S3's
    /// `If-None-Match: *`)? Found by trying, with an object that is removed
    /// again; `None` where the question does not arise (a local disk,
    /// whose link() refuses). Nothing about the answer is recorded: coffer
    /// is correct either way (random lock and key names, a config looked
    /// for before it is written); `init` tells the user.
    fn probe_create_once(&self) -> Result<Option<bool>> {
        Ok(None)
    }
    /// Requests sent so far, on a store that counts them (a remote one);
    /// `None` for a local disk.
    fn requests(&self) -> Option<Requests> {
        None
    }
    /// The directories that hold objects of `kind`, the kind's own
    /// directory first (its stamp changes when a directory comes or goes),
    /// so that a caller remembering them can list only those that changed
    /// since ([`Backend::list_dir_each`]). `None` for a store without
    /// directories, such as an object store: list everything.
    fn dir_stamps(&self, _kind: FileKind) -> Result<Option<Vec<DirStamp>>> {
        Ok(None)
    }
    /// [`Backend::list_each`] for one directory [`Backend::dir_stamps`]
    /// named (not the kind's own).
    fn list_dir_each(
        &self,
        _kind: FileKind,
        dir: &str,
        _f: &mut dyn FnMut(ObjectInfo) -> Result<()>,
    ) -> Result<()> {
        Err(crate::error::Error::Internal(format!(
            "{} has no directory {dir} to list",
            self.location()
        )))
    }
    /// The size of one object.
    fn size(&self, kind: FileKind, name: &str) -> Result<u64>;
    /// Delete an object; deleting a missing object is not an error.
    fn delete(&self, kind: FileKind, name: &str) -> Result<()>;
    /// Delete many objects of one kind, all durably gone when it returns
    /// (but not necessarily one by one in between: a crash may bring back
    /// some of them, which callers must tolerate as for a crash before the
    /// call).
    fn delete_many(&self, kind: FileKind, names: &[String]) -> Result<()> {
        names.iter().try_for_each(|n| self.delete(kind, n))
    }
    /// When the object was last modified, if the backend knows: how old
    /// a lock object that cannot be read is.
    fn modified(&self, _kind: FileKind, _name: &str) -> Result<Option<std::time::SystemTime>> {
        Ok(None)
    }
    /// How many temporary files killed puts left behind, and their bytes.
    fn temp_usage(&self) -> Result<(u64, u64)> {
        Ok((0, 0))
    }
    /// The run is being abandoned (a signal): remove this process's
    /// unfinished temporary objects and start no new ones. Objects already
    /// named stay; a put still writing fails. Returns how many were removed.
    fn abandon(&self) -> usize {
        0
    }
    /// Remove what writers killed mid-put left behind (a backend whose puts
    /// leave nothing has nothing to do), if older than `min_age`. Only
    /// under an exclusive lock: a younger temporary may be a live put.
    /// Returns how many were removed.
    fn remove_stale_temps(&self, _min_age: std::time::Duration) -> Result<usize> {
        Ok(0)
    }
}

/// The second step of [`Backend::put_pending`].
pub trait PendingPut: Send {
    /// Make the object durable under its name (same contract as `put`).
    fn commit(self: Box<Self>) -> Result<()>;
}

/// A pending put of a backend whose `put` is already complete.
struct Committed;

impl PendingPut for Committed {
    fn commit(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
