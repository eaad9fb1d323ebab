//! Where repository objects live. The trait offers only what an S3 bucket
//! offers too (doc/design.md invariant 1): create-once put, whole or ranged get,
//! list by kind, delete. No rename, no append, no update in place.
//!
//! Durability contract: when `put` returns `Ok`, the object is durable under
//! its final name with exactly the given bytes; when it returns `Err`, no
//! object with partial content exists under that name. `list` either
//! returns every object of a kind or an error, never a partial list
//! presented as complete (restic#4612).

pub mod local;
pub mod location;
pub mod memory;

pub use location::Location;

use crate::error::Result;

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
    pub fn is_content_named(&self) -> bool {
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
pub const MAX_RECORD_OBJECT: u64 = 512 << 20;

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
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
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
    ) -> Result<()> {
        *buf = self.get_range(kind, name, offset, len)?;
        Ok(())
    }
    /// Every object of a kind, with its size.
    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>>;
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
    /// Remove what writers killed mid-put left behind (a backend whose puts
    /// leave nothing has nothing to do), if older than `min_age`. Only
    /// under an exclusive lock: a younger temporary may be a live put.
    /// Returns how many were removed.
    /// The run is being abandoned (a signal): remove this process's
    /// unfinished temporary objects and start no new ones. Objects already
    /// named stay; a put still writing fails. Returns how many were removed.
    fn abandon(&self) -> usize {
        0
    }
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

/// Run the same contract checks against any backend (doc/design.md habit 3).
#[cfg(test)]
pub fn conformance(b: &dyn Backend) {
    use crate::error::Error;
    assert!(b.list(FileKind::Pack).unwrap().is_empty());
    assert!(matches!(
        b.get(FileKind::Snapshot, "aa"),
        Err(Error::NotFound { .. })
    ));
    b.put(FileKind::Pack, "abcd", b"hello world").unwrap();
    b.put(FileKind::Pack, "abcd", b"hello world").unwrap();
    b.put(FileKind::Config, "config", b"cfg").unwrap();
    assert!(b.put(FileKind::Config, "config", b"cfx").is_err());
    assert_eq!(b.get(FileKind::Pack, "abcd").unwrap(), b"hello world");
    assert_eq!(b.get_range(FileKind::Pack, "abcd", 6, 5).unwrap(), b"world");
    assert!(b.get_range(FileKind::Pack, "abcd", 6, 6).is_err());
    assert_eq!(b.size(FileKind::Pack, "abcd").unwrap(), 11);
    assert_eq!(
        b.list(FileKind::Pack).unwrap(),
        vec![("abcd".to_string(), 11)]
    );
    assert_eq!(b.get(FileKind::Config, "config").unwrap(), b"cfg");
    b.delete(FileKind::Pack, "abcd").unwrap();
    b.delete(FileKind::Pack, "abcd").unwrap();
    assert!(b.list(FileKind::Pack).unwrap().is_empty());
    // A batch: objects in several directories, one already gone.
    for n in ["aa01", "aa02", "bb01"] {
        b.put(FileKind::Pack, n, n.as_bytes()).unwrap();
    }
    let batch: Vec<String> = ["aa01", "bb01", "cc01"].map(String::from).to_vec();
    b.delete_many(FileKind::Pack, &batch).unwrap();
    assert_eq!(
        b.list(FileKind::Pack).unwrap(),
        vec![("aa02".to_string(), 4)]
    );
}
