//! Packs: many sealed blobs in one object, with an encrypted trailer that
//! lists them, so the index can always be rebuilt from packs alone
//! (DESIGN.md invariant 4; repo-format/README.md, "Packs").
//!
//! ```text
//! pack    := blob* || trailer_envelope || trailer_len u32
//! blob    := envelope(flag u8 || payload)        key: data, aad = repo || DataBlob(4)|TreeBlob(5) || blob id
//!            flag 0: payload is the plaintext; flag 1: payload is zstd of it
//! trailer := "cofferP1"[8] || count u32 || entry*count      key: data, aad = repo || PackTrailer || 0^32
//! entry   := kind u8 || blob id[32] || offset u32 || length u32 || raw_length u32   (45 bytes)
//! ```
//!
//! Blobs tile the pack from offset 0 to the trailer with no gaps; a reader
//! checks it. The pack's name is BLAKE3 of all its bytes.

pub mod reader;
pub mod writer;

use crate::blob::BlobKind;
use crate::compression;
use crate::crypto::{AadKind, KeySet, aad, envelope};
use crate::id::{BlobId, RepoId};

pub const TRAILER_MAGIC: &[u8; 8] = b"cofferP1";
pub const ENTRY_LEN: usize = 1 + 32 + 4 + 4 + 4;
/// Largest plaintext a blob may have: chunks are at most 16 MiB (FastCDC's
/// limit); trees of huge directories are the reason for the headroom.
pub const MAX_BLOB_RAW: u32 = 256 * 1024 * 1024;
/// Largest pack this code writes or accepts.
pub const MAX_PACK_SIZE: u64 = 1 << 31;
/// Most blobs one trailer may list.
pub const MAX_PACK_ENTRIES: usize = 1 << 22;

/// A blob's place in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub id: BlobId,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

/// A blob sealed and ready to be appended to a pack.
pub struct SealedBlob {
    pub kind: BlobKind,
    pub id: BlobId,
    pub bytes: Vec<u8>,
    pub raw_length: u32,
}

fn blob_aad(repo: &RepoId, kind: BlobKind, id: &BlobId) -> [u8; 65] {
    let k = match kind {
        BlobKind::Data => AadKind::DataBlob,
        BlobKind::Tree => AadKind::TreeBlob,
    };
    aad(repo, k, &id.0)
}

/// Compress (when it helps) and encrypt one blob.
pub fn seal_blob(
    keys: &KeySet,
    repo: &RepoId,
    kind: BlobKind,
    id: BlobId,
    plaintext: &[u8],
    zstd_level: i32,
) -> SealedBlob {
    let mut body = Vec::with_capacity(plaintext.len() / 2 + 1);
    match compression::compress(plaintext, zstd_level) {
        Some(c) => {
            body.push(1);
            body.extend_from_slice(&c);
        }
        None => {
            body.push(0);
            body.extend_from_slice(plaintext);
        }
    }
    let bytes = envelope::seal(&keys.data, &blob_aad(repo, kind, &id), &body);
    SealedBlob {
        kind,
        id,
        bytes,
        raw_length: u32::try_from(plaintext.len()).unwrap_or(u32::MAX),
    }
}

/// Decrypt, decompress and verify one blob against its id. `object` names
/// the pack for error messages.
pub fn open_blob(
    keys: &KeySet,
    repo: &RepoId,
    entry: &PackEntry,
    sealed: &[u8],
) -> Result<Vec<u8>, String> {
    if entry.raw_length > MAX_BLOB_RAW {
        return Err(format!(
            "blob {} declares {} bytes",
            entry.id, entry.raw_length
        ));
    }
    let body = envelope::open(&keys.data, &blob_aad(repo, entry.kind, &entry.id), sealed)
        .map_err(|e| format!("blob {}: {e}", entry.id))?;
    let plain = match body.split_first() {
        Some((0, p)) => p.to_vec(),
        Some((1, c)) => compression::decompress(c, entry.raw_length as usize)
            .map_err(|e| format!("blob {}: {e}", entry.id))?,
        Some((f, _)) => return Err(format!("blob {}: unknown encoding flag {f}", entry.id)),
        None => return Err(format!("blob {}: empty body", entry.id)),
    };
    if plain.len() != entry.raw_length as usize {
        return Err(format!(
            "blob {}: {} bytes, index says {}",
            entry.id,
            plain.len(),
            entry.raw_length
        ));
    }
    if keys.blob_id(&plain) != entry.id {
        return Err(format!(
            "blob {}: content does not hash to its id",
            entry.id
        ));
    }
    Ok(plain)
}
