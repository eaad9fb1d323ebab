//! What a blob is, and the two roles the operations need from a repository:
//! read a blob ([`BlobSource`]) and store one ([`BlobSink`]). The archiver
//! and restorer depend on these traits, not on the concrete repository, so
//! their tests need no repository at all (doc/design.md habit 4).

use crate::error::Result;
use crate::id::{BlobId, PackId};

/// What a blob holds; recorded in pack trailers and bound into its AAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobKind {
    Data = 1,
    Tree = 2,
}

impl BlobKind {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(BlobKind::Data),
            2 => Some(BlobKind::Tree),
            _ => None,
        }
    }
}

/// Reads blobs by id; every returned blob has been authenticated and its id
/// re-hashed.
pub trait BlobSource: Sync {
    fn read_blob(&self, kind: BlobKind, id: &BlobId) -> Result<Vec<u8>>;
    /// Damaged repository objects this source skipped since the last call
    /// (an index segment, a snapshot), each named with what it cost: an
    /// operation drains them into its outcome when it ends.
    fn take_damaged(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Stores blobs, deduplicating against what the repository already holds.
pub trait BlobSink: Sync {
    /// The id `data` would be stored under.
    fn blob_id(&self, data: &[u8]) -> BlobId;
    /// Is a blob with `id` stored (indexed) or queued in this run? The
    /// archiver asks before reusing a parent snapshot's content ids, so a
    /// blob lost from the index is stored again (restic#2571).
    fn has_blob(&self, id: &BlobId) -> Result<bool>;
    /// Which of `ids` are stored or queued (one query for many ids).
    fn known_blobs(&self, ids: &[BlobId]) -> Result<std::collections::HashSet<BlobId>> {
        let mut out = std::collections::HashSet::new();
        for id in ids {
            if self.has_blob(id)? {
                out.insert(*id);
            }
        }
        Ok(out)
    }
    /// Are the content ids a backup reuses from its parent snapshot known
    /// to be stored, without looking each one up? (True when the index
    /// vouched for the whole parent and has lost no blob since.)
    fn parent_blobs_known(&self) -> bool {
        false
    }
    /// Store `data` unless a blob with `id` is already stored or queued.
    /// Returns the number of bytes added to the repository (0 when deduplicated).
    fn store_blob(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<u64>;
    /// The encoded memo of tree `id` kept in the local cache, if any
    /// (`archiver::memo`), and whether it is due to be kept on (written
    /// again): only a cache, so failing to read one is a miss.
    fn tree_memo(&self, _id: &BlobId) -> Option<(Vec<u8>, bool)> {
        None
    }
    /// Keep these encoded tree memos in the local cache, where there is
    /// one; failing to is only a miss next time.
    fn keep_tree_memos(&self, _memos: Vec<(BlobId, Vec<u8>)>) {}
}

/// Where a stored blob lives: the pack and byte range the restorer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobPlace {
    pub kind: BlobKind,
    pub pack: PackId,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

/// Blob reads grouped by pack: what a fast restore needs to read each pack
/// once, in order, fetching only the byte ranges it uses.
pub trait PackedBlobSource: BlobSource {
    /// Where a blob is stored; `None` when the index does not know it.
    fn locate(&self, id: &BlobId) -> Result<Option<BlobPlace>>;
    /// [`PackedBlobSource::locate`] for many blobs at once.
    fn locate_many(&self, ids: &[BlobId]) -> Result<Vec<Option<BlobPlace>>> {
        ids.iter().map(|id| self.locate(id)).collect()
    }
    /// Raw bytes of a pack.
    fn read_pack_range(&self, pack: &PackId, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// [`PackedBlobSource::read_pack_range`] into a reused buffer (resized
    /// to `len`).
    fn read_pack_range_into(
        &self,
        pack: &PackId,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        *buf = self.read_pack_range(pack, offset, len)?;
        Ok(())
    }
    /// How many pack reads to keep in flight, for a source that is a
    /// remote store (`None`: a local disk, read on the CPU pool).
    fn requests_in_flight(&self) -> Option<usize> {
        None
    }
    /// Authenticate, decompress and verify one sealed blob read at `place`.
    fn open_sealed(&self, id: &BlobId, place: &BlobPlace, sealed: &[u8]) -> Result<Vec<u8>>;
    /// The id `data` has in this repository (to compare existing files).
    fn data_id(&self, data: &[u8]) -> BlobId;
    /// The id and length of the chunk a run of zeros is cut into (every
    /// chunk of a hole but its last), to tell holes from data without
    /// reading; `None` when unknown.
    fn zero_chunk(&self) -> Option<(BlobId, u64)> {
        None
    }
    /// Check a pack's structure (size, trailer) apart from the blobs read
    /// from it; the restorer reports a failure and still uses the blobs,
    /// each of which is verified on its own.
    fn check_pack(&self, _pack: &PackId) -> Result<()> {
        Ok(())
    }
}
