//! Packs: many sealed blobs in one object, with an encrypted trailer that
//! lists them, so the index can always be rebuilt from packs alone
//! (doc/design.md invariant 4; repo-format/README.md, "Packs").
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

pub(crate) const TRAILER_MAGIC: &[u8; 8] = b"cofferP1";
pub(crate) const ENTRY_LEN: usize = 1 + 32 + 4 + 4 + 4;
/// Largest plaintext a blob may have: chunks are at most 16 MiB (FastCDC's
/// limit); trees of huge directories are the reason for the headroom.
pub(crate) const MAX_BLOB_RAW: u32 = 256 * 1024 * 1024;
/// Largest pack this code writes or accepts.
pub(crate) const MAX_PACK_SIZE: u64 = 1 << 31;
/// Most blobs one trailer may list.
pub(crate) const MAX_PACK_ENTRIES: usize = 1 << 22;

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

/// The piecewise verify's window: large enough for zstd and BLAKE3 to
/// run at full speed, small enough to stay in a core's cache.
const VERIFY_WINDOW: usize = 128 * 1024;

thread_local! {
    static VERIFY_WINDOWS: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; 2 * VERIFY_WINDOW].into_boxed_slice());
}

/// Buffers for sealing blobs, shared by every thread that seals: compressing
/// and encrypting in place here, then copying once into the pack, replaces
/// an allocation and three copies of every blob. One buffer per thread
/// that ever sealed used to be kept: the file savers (which seal one-chunk
/// files themselves), the pool's workers, stream storers and the tree
/// assembler each ended up holding a zeroed 4 MiB buffer, 18 MB of a home
/// directory's backup. Only as many as there are cores are kept; a thread
/// that finds none free makes one for the blob at hand.
static SCRATCH: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Larger scratch buffers (from a huge tree blob) are freed after use
/// rather than kept.
const KEEP_SCRATCH: usize = 8 << 20;

/// Run `f` with a scratch buffer of the pool (or a new one). The buffer is
/// taken out while in use, so a nested call gets another one instead of a
/// conflict.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let lock = || SCRATCH.lock().unwrap_or_else(|p| p.into_inner());
    let mut buf = lock().pop().unwrap_or_default();
    let r = f(&mut buf);
    if buf.capacity() <= KEEP_SCRATCH {
        // Asked once: the answer costs system calls (and cgroup file reads).
        static KEEP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let keep =
            *KEEP.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut pool = lock();
        if pool.len() < keep {
            pool.push(buf);
        }
    }
    r
}

/// Grow `buf` to at least `n` initialised bytes. Only growth is zeroed:
/// a reused buffer keeps its old bytes, which callers overwrite.
fn at_least(buf: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if buf.len() < n {
        buf.resize(n, 0);
    }
    &mut buf[..n]
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
    seal_blob_with(keys, repo, kind, id, plaintext, zstd_level, |bytes| {
        SealedBlob {
            kind,
            id,
            bytes: bytes.to_vec(),
            raw_length: u32::try_from(plaintext.len()).unwrap_or(u32::MAX),
        }
    })
}

/// [`seal_blob`] in this thread's scratch buffer, handing the sealed bytes
/// to `f` (which appends them to a pack).
pub fn seal_blob_with<R>(
    keys: &KeySet,
    repo: &RepoId,
    kind: BlobKind,
    id: BlobId,
    plaintext: &[u8],
    zstd_level: i32,
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    with_scratch(|buf| {
        let buf = at_least(buf, PAYLOAD + plaintext.len() + envelope::TAG_LEN);
        // zstd writes straight after the flag byte; its output must be
        // smaller than the plaintext to be worth keeping.
        let room = plaintext.len().saturating_sub(1);
        let n = match compression::compress_into(
            plaintext,
            zstd_level,
            &mut buf[PAYLOAD..PAYLOAD + room],
        ) {
            Some(n) => {
                buf[FLAG] = 1;
                n
            }
            None => {
                buf[FLAG] = 0;
                buf[PAYLOAD..PAYLOAD + plaintext.len()].copy_from_slice(plaintext);
                plaintext.len()
            }
        };
        seal_scratch(
            keys,
            repo,
            kind,
            &id,
            &mut buf[..PAYLOAD + n + envelope::TAG_LEN],
            f,
        )
    })
}

/// Where the body (`flag || payload`) starts in a sealed blob.
const FLAG: usize = envelope::NONCE_LEN;
const PAYLOAD: usize = FLAG + 1;

/// Seal the envelope `env` (its body in place) and hand it to `f`.
fn seal_scratch<R>(
    keys: &KeySet,
    repo: &RepoId,
    kind: BlobKind,
    id: &BlobId,
    env: &mut [u8],
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    envelope::seal_in_place(&keys.data, &blob_aad(repo, kind, id), env);
    f(env)
}

/// Seal a body as [`open_blob_body`] returns it (`flag || payload`, already
/// encoded) for another repository, handing the sealed bytes to `f`.
pub(crate) fn seal_body_with<R>(
    keys: &KeySet,
    repo: &RepoId,
    kind: BlobKind,
    id: BlobId,
    body: &[u8],
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    with_scratch(|buf| {
        let env = at_least(buf, FLAG + body.len() + envelope::TAG_LEN);
        env[FLAG..FLAG + body.len()].copy_from_slice(body);
        seal_scratch(keys, repo, kind, &id, env, f)
    })
}

/// Decrypt one blob to its body (`flag || payload`) without decoding it:
/// what `copy` moves between repositories that name blobs alike, sparing
/// a decompression here and a compression there. The destination's check
/// before upload decodes and re-hashes it, as it does every blob.
pub(crate) fn open_blob_body(
    keys: &KeySet,
    repo: &RepoId,
    entry: &PackEntry,
    sealed: &[u8],
) -> Result<Vec<u8>, String> {
    check_raw_length(entry)?;
    let body = envelope::open(&keys.data, &blob_aad(repo, entry.kind, &entry.id), sealed)
        .map_err(|e| format!("blob {}: {e}", entry.id))?;
    match body.split_first() {
        Some((0, p)) if p.len() != entry.raw_length as usize => Err(format!(
            "blob {}: {} bytes, index says {}",
            entry.id,
            p.len(),
            entry.raw_length
        )),
        Some((0 | 1, _)) => Ok(body),
        Some((f, _)) => Err(format!("blob {}: unknown encoding flag {f}", entry.id)),
        None => Err(format!("blob {}: empty body", entry.id)),
    }
}

/// Decrypt, decompress and re-hash one sealed blob, checking it against
/// its entry, in windows of 128 KiB at a time: the check
/// before upload needs no buffer of a blob's size (two of up to a chunk
/// each, decrypted and decompressed, were 8 MiB of a backup's peak
/// memory), and each piece is hashed while it is still in the cache.
pub fn verify_blob(
    keys: &KeySet,
    repo: &RepoId,
    entry: &PackEntry,
    sealed: &[u8],
) -> Result<(), String> {
    check_raw_length(entry)?;
    VERIFY_WINDOWS.with(|w| {
        let mut w = w.borrow_mut();
        let (decrypted, decoded) = w.split_at_mut(VERIFY_WINDOW);
        verify_in(keys, repo, entry, sealed, decrypted, decoded)
    })
}

/// What a blob's body turned out to be, as its pieces arrive.
enum Body<'w> {
    Start,
    Plain,
    Zstd(compression::PieceDecoder<'w>),
    Bad(String),
}

fn verify_in(
    keys: &KeySet,
    repo: &RepoId,
    entry: &PackEntry,
    sealed: &[u8],
    decrypted: &mut [u8],
    decoded: &mut [u8],
) -> Result<(), String> {
    let raw = entry.raw_length as usize;
    let mut hasher = keys.blob_id_hasher();
    let mut plain = 0usize;
    let mut body = Body::Start;
    let mut decoded = Some(decoded);
    let opened = envelope::open_each(
        &keys.data,
        &blob_aad(repo, entry.kind, &entry.id),
        sealed,
        decrypted,
        |mut piece| {
            if let Body::Start = body {
                let Some((&flag, rest)) = piece.split_first() else {
                    return;
                };
                piece = rest;
                body = match (flag, decoded.take()) {
                    (0, _) => Body::Plain,
                    (1, Some(out)) => {
                        compression::PieceDecoder::new(out, raw).map_or_else(Body::Bad, Body::Zstd)
                    }
                    (f, _) => Body::Bad(format!("unknown encoding flag {f}")),
                };
            }
            let mut each = |p: &[u8]| {
                hasher.update(p);
                plain += p.len();
            };
            match &mut body {
                Body::Plain => each(piece),
                Body::Zstd(d) => d.feed(piece, &mut each),
                Body::Start | Body::Bad(_) => {}
            }
        },
    );
    opened.map_err(|e| format!("blob {}: {e}", entry.id))?;
    match body {
        Body::Start => return Err(format!("blob {}: empty body", entry.id)),
        Body::Bad(e) => return Err(format!("blob {}: {e}", entry.id)),
        Body::Plain => {}
        Body::Zstd(d) => {
            d.finish(&mut |p: &[u8]| {
                hasher.update(p);
                plain += p.len();
            })
            .map_err(|e| format!("blob {}: {e}", entry.id))?;
        }
    }
    check_decoded(entry, plain, || BlobId(*hasher.finalize().as_bytes()))
}

fn check_raw_length(entry: &PackEntry) -> Result<(), String> {
    if entry.raw_length > MAX_BLOB_RAW {
        return Err(format!(
            "blob {} declares {} bytes",
            entry.id, entry.raw_length
        ));
    }
    Ok(())
}

/// The decoded plaintext has the length and id the pack entry records.
fn check_plain(keys: &KeySet, entry: &PackEntry, plain: &[u8]) -> Result<(), String> {
    check_decoded(entry, plain.len(), || keys.blob_id(plain))
}

/// [`check_plain`] for a plaintext decoded `len` bytes long and hashed to
/// `id` (asked only when the length is right), whole or in pieces.
fn check_decoded(entry: &PackEntry, len: usize, id: impl FnOnce() -> BlobId) -> Result<(), String> {
    if len != entry.raw_length as usize {
        return Err(format!(
            "blob {}: {len} bytes, index says {}",
            entry.id, entry.raw_length
        ));
    }
    if id() != entry.id {
        return Err(format!(
            "blob {}: content does not hash to its id",
            entry.id
        ));
    }
    Ok(())
}

/// Decrypt, decompress and verify one blob against its id. `object` names
/// the pack for error messages.
pub fn open_blob(
    keys: &KeySet,
    repo: &RepoId,
    entry: &PackEntry,
    sealed: &[u8],
) -> Result<Vec<u8>, String> {
    check_raw_length(entry)?;
    let mut body = envelope::open(&keys.data, &blob_aad(repo, entry.kind, &entry.id), sealed)
        .map_err(|e| format!("blob {}: {e}", entry.id))?;
    let plain = match body.split_first() {
        Some((0, _)) => {
            // Drop the flag in place rather than copy the plaintext out.
            body.remove(0);
            body
        }
        Some((1, c)) => compression::decompress(c, entry.raw_length as usize)
            .map_err(|e| format!("blob {}: {e}", entry.id))?,
        Some((f, _)) => return Err(format!("blob {}: unknown encoding flag {f}", entry.id)),
        None => return Err(format!("blob {}: empty body", entry.id)),
    };
    check_plain(keys, entry, &plain)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    fn noise(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    /// Blobs sealed one after another in the same thread's scratch buffer
    /// (large then small, compressible then not) each open to exactly
    /// their plaintext: no byte of an earlier blob leaks into a later one,
    /// and the scratch-buffer check agrees with the allocating one.
    #[test]
    fn scratch_sealing_round_trips_and_verify_catches_flips() {
        let keys = KeySet::derive(&MasterKey([5; 32]));
        let repo = RepoId([6; 32]);
        let blobs = [
            noise(3 << 20, 1),
            b"compressible ".repeat(50_000),
            noise(1000, 2),
            b"x".repeat(100),
            b"tiny".to_vec(),
            Vec::new(),
            b"ab".repeat(20_000),
        ];
        for (i, b) in blobs.iter().enumerate() {
            let id = keys.blob_id(b);
            let sealed = seal_blob_with(&keys, &repo, BlobKind::Data, id, b, 3, |s| s.to_vec());
            let entry = PackEntry {
                kind: BlobKind::Data,
                id,
                offset: 0,
                length: sealed.len() as u32,
                raw_length: b.len() as u32,
            };
            assert_eq!(
                &open_blob(&keys, &repo, &entry, &sealed).unwrap(),
                b,
                "blob {i}"
            );
            verify_blob(&keys, &repo, &entry, &sealed).unwrap();
            // Compressible blobs are stored compressed.
            if i == 1 || i == 6 {
                assert!(sealed.len() < b.len() / 4, "blob {i} not compressed");
            }
            // Any flipped byte fails both checks, naming the blob.
            for at in [0, envelope::NONCE_LEN, sealed.len() / 2, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[at] ^= 0x10;
                assert!(open_blob(&keys, &repo, &entry, &bad).is_err());
                let e = verify_blob(&keys, &repo, &entry, &bad).unwrap_err();
                assert!(e.contains(&id.to_string()), "{e}");
            }
            // A wrong recorded length or kind fails too.
            let longer = PackEntry {
                raw_length: entry.raw_length + 1,
                ..entry
            };
            assert!(verify_blob(&keys, &repo, &longer, &sealed).is_err());
            let tree = PackEntry {
                kind: BlobKind::Tree,
                ..entry
            };
            assert!(verify_blob(&keys, &repo, &tree, &sealed).is_err());
        }
    }

    /// A blob sealed over content that does not hash to its id (memory
    /// corrupted after hashing) is refused by the check before upload.
    /// A body taken out of one repository and sealed for another opens
    /// there to the same plaintext, and nowhere else.
    #[test]
    fn a_body_moves_to_a_related_repository_unchanged() {
        let keys = KeySet::derive(&MasterKey([5; 32]));
        let (a, b) = (RepoId([6; 32]), RepoId([7; 32]));
        for plain in [b"compressible ".repeat(5000), noise(70_000, 3)] {
            let id = keys.blob_id(&plain);
            let sealed = seal_blob_with(&keys, &a, BlobKind::Data, id, &plain, 3, |s| s.to_vec());
            let entry = PackEntry {
                kind: BlobKind::Data,
                id,
                offset: 0,
                length: sealed.len() as u32,
                raw_length: plain.len() as u32,
            };
            let body = open_blob_body(&keys, &a, &entry, &sealed).unwrap();
            let moved = seal_body_with(&keys, &b, BlobKind::Data, id, &body, |s| s.to_vec());
            let entry = PackEntry {
                length: moved.len() as u32,
                ..entry
            };
            assert_eq!(open_blob(&keys, &b, &entry, &moved).unwrap(), plain);
            verify_blob(&keys, &b, &entry, &moved).unwrap();
            assert!(open_blob(&keys, &a, &entry, &moved).is_err());
            let mut bad = sealed.clone();
            bad[envelope::NONCE_LEN + 3] ^= 1;
            assert!(open_blob_body(&keys, &a, &entry, &bad).is_err());
            // A plain body shorter than the recorded length is refused.
            let longer = PackEntry {
                raw_length: entry.raw_length + 1,
                length: sealed.len() as u32,
                ..entry
            };
            if body[0] == 0 {
                assert!(open_blob_body(&keys, &a, &longer, &sealed).is_err());
            }
        }
    }

    #[test]
    fn verify_refuses_content_that_does_not_match_its_id() {
        let keys = KeySet::derive(&MasterKey([5; 32]));
        let repo = RepoId([6; 32]);
        let good = b"the content that was hashed ".repeat(1000);
        let mut flipped = good.clone();
        flipped[500] ^= 1;
        let id = keys.blob_id(&good);
        let sealed = seal_blob_with(&keys, &repo, BlobKind::Data, id, &flipped, 3, |s| {
            s.to_vec()
        });
        let entry = PackEntry {
            kind: BlobKind::Data,
            id,
            offset: 0,
            length: sealed.len() as u32,
            raw_length: good.len() as u32,
        };
        let e = verify_blob(&keys, &repo, &entry, &sealed).unwrap_err();
        assert!(e.contains("does not hash to its id"), "{e}");
    }
}
