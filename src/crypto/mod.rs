//! Keys and their uses (repo-format/README.md, "Keys and derivation").
//!
//! One random 32-byte master key per repository. Every use gets its own
//! subkey, `BLAKE3-derive_key(context, master)`, so a key compromised in one
//! role (say the chunker seed, which leaks through chunk sizes) says nothing
//! about the others. Associated data binds every ciphertext to its
//! repository, its object kind and, for blobs and key slots, its id:
//! nothing can be moved to another place or repository unnoticed
//! (doc/reliability.md H-6).

pub mod envelope;
mod kdf_memory;
pub mod key_file;

use crate::id::{BlobId, RepoId};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Object kinds as they appear in associated data (one byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AadKind {
    Config = 1,
    KeyWrap = 2,
    KeyMeta = 3,
    DataBlob = 4,
    TreeBlob = 5,
    PackTrailer = 6,
    IndexSegment = 7,
    Snapshot = 8,
    Lock = 9,
}

/// `repo_id[32] || kind[1] || id[32]`; `id` is zero for the config, pack
/// trailers and objects named by the hash of their ciphertext (the name
/// already pins those).
pub fn aad(repo: &RepoId, kind: AadKind, id: &[u8; 32]) -> [u8; 65] {
    let mut a = [0u8; 65];
    a[..32].copy_from_slice(repo.as_bytes());
    a[32] = kind as u8;
    a[33..].copy_from_slice(id);
    a
}

/// The repository's master key. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey(pub [u8; 32]);

impl MasterKey {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        envelope::random_bytes(&mut k);
        MasterKey(k)
    }
}

/// Subkeys derived from the master key, one per role. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeySet {
    /// Key of the keyed BLAKE3 that names blobs.
    id_key: [u8; 32],
    /// Source of the chunker's gear seed.
    chunker_seed: u64,
    /// AEAD key for blobs and pack trailers.
    pub data: [u8; 32],
    /// AEAD key for index segments.
    pub index: [u8; 32],
    /// AEAD key for snapshots.
    pub snapshot: [u8; 32],
    /// AEAD key for the config body, key slot metadata and locks.
    pub meta: [u8; 32],
}

impl KeySet {
    pub fn derive(master: &MasterKey) -> Self {
        let d = |ctx: &str| blake3::derive_key(ctx, &master.0);
        let seed = d("coffer v1 chunker gear seed");
        KeySet {
            id_key: d("coffer v1 blob id"),
            chunker_seed: u64::from_le_bytes(seed[..8].try_into().unwrap_or([0; 8])),
            data: d("coffer v1 data"),
            index: d("coffer v1 index"),
            snapshot: d("coffer v1 snapshot"),
            meta: d("coffer v1 metadata"),
        }
    }

    /// The hasher [`KeySet::blob_id`] runs, to name a blob fed in pieces.
    pub(crate) fn blob_id_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.id_key)
    }

    /// Blob id: keyed BLAKE3 of the plaintext, so ids do not reveal whether
    /// the repository holds a known file.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    pub(crate) fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subkeys_are_distinct() {
        let k = KeySet::derive(&MasterKey([3; 32]));
        let all = [k.id_key, k.data, k.index, k.snapshot, k.meta];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j]);
            }
        }
        assert_ne!(k.blob_id(b"a"), k.blob_id(b"b"));
        let other = KeySet::derive(&MasterKey([4; 32]));
        assert_ne!(k.blob_id(b"a"), other.blob_id(b"a"));
    }
}
