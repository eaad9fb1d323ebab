//! Parses and checks pack trailers; pure over bytes. Layout in [`super`].

use super::{ENTRY_LEN, MAX_PACK_ENTRIES, MAX_PACK_SIZE, PackEntry, TRAILER_MAGIC};
use crate::blob::BlobKind;
use crate::codec::{DecodeError, Reader};
use crate::crypto::{AadKind, KeySet, aad, envelope};
use crate::id::{BlobId, RepoId};

/// Largest trailer envelope a reader will fetch.
pub(crate) const MAX_TRAILER: usize = 12 + MAX_PACK_ENTRIES * ENTRY_LEN + envelope::OVERHEAD;

/// From the last 4 bytes of a pack, the length of the trailer envelope,
/// checked against the pack's size.
pub(crate) fn trailer_len(last4: [u8; 4], pack_size: u64) -> Result<usize, String> {
    let n = u32::from_le_bytes(last4) as u64;
    if pack_size > MAX_PACK_SIZE {
        return Err(format!(
            "pack is {pack_size} bytes, over the {MAX_PACK_SIZE} limit"
        ));
    }
    if n < envelope::OVERHEAD as u64 || n + 4 > pack_size || n as usize > MAX_TRAILER {
        return Err(format!(
            "trailer length {n} does not fit a pack of {pack_size} bytes (truncated pack?)"
        ));
    }
    Ok(n as usize)
}

/// Decrypt and parse a trailer envelope; check that the entries tile the
/// pack from 0 to `blobs_end` (the offset where the trailer starts).
pub(crate) fn open_trailer(
    keys: &KeySet,
    repo: &RepoId,
    sealed: &[u8],
    blobs_end: u64,
) -> Result<Vec<PackEntry>, String> {
    let plain = envelope::open(
        &keys.data,
        &aad(repo, AadKind::PackTrailer, &[0; 32]),
        sealed,
    )
    .map_err(|e| format!("trailer: {e}"))?;
    let entries = decode_trailer(&plain).map_err(|e| format!("trailer: {e}"))?;
    check_tiling(&entries, blobs_end)?;
    Ok(entries)
}

/// Parse a whole pack held in memory.
pub fn parse_pack(keys: &KeySet, repo: &RepoId, pack: &[u8]) -> Result<Vec<PackEntry>, String> {
    if pack.len() < 4 {
        return Err(format!(
            "pack is only {} bytes (empty or truncated)",
            pack.len()
        ));
    }
    let size = pack.len() as u64;
    let last4: [u8; 4] = pack[pack.len() - 4..]
        .try_into()
        .map_err(|_| "short pack")?;
    let n = trailer_len(last4, size)?;
    let start = pack.len() - 4 - n;
    open_trailer(keys, repo, &pack[start..pack.len() - 4], start as u64)
}

pub fn decode_trailer(plain: &[u8]) -> Result<Vec<PackEntry>, DecodeError> {
    let mut r = Reader::new(plain);
    if r.take(8)? != TRAILER_MAGIC {
        return Err(DecodeError("bad trailer magic".into()));
    }
    let n = r.count(MAX_PACK_ENTRIES, ENTRY_LEN, "trailer entry")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(decode_entry(&mut r)?);
    }
    r.finish()?;
    Ok(out)
}

pub(crate) fn decode_entry(r: &mut Reader) -> Result<PackEntry, DecodeError> {
    let k = r.u8()?;
    let kind = BlobKind::from_u8(k).ok_or_else(|| DecodeError(format!("unknown blob kind {k}")))?;
    let id = BlobId(r.array()?);
    let offset = r.u32()?;
    let length = r.u32()?;
    let raw_length = r.u32()?;
    if length < envelope::OVERHEAD as u32 + 1 {
        return Err(DecodeError(format!(
            "blob {id} has impossible length {length}"
        )));
    }
    Ok(PackEntry {
        kind,
        id,
        offset,
        length,
        raw_length,
    })
}

/// Entries must be contiguous, in order, and end exactly at `end`.
pub fn check_tiling(entries: &[PackEntry], end: u64) -> Result<(), String> {
    let mut pos = 0u64;
    for e in entries {
        if e.offset as u64 != pos {
            return Err(format!(
                "blob {} at offset {} (expected {pos})",
                e.id, e.offset
            ));
        }
        pos += e.length as u64;
    }
    if pos != end {
        return Err(format!("blobs end at {pos}, trailer starts at {end}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::writer::PackWriter;
    use super::super::{SealedBlob, open_blob, seal_blob};
    use super::*;
    use crate::crypto::MasterKey;

    /// A writer on a reused, dirty buffer makes the same pack as a new
    /// one, starting at an aligned address (written without a copy).
    #[test]
    fn reused_buffers_make_identical_aligned_packs() {
        let keys = KeySet::derive(&MasterKey([5; 32]));
        let repo = RepoId([6; 32]);
        let blobs: Vec<SealedBlob> = (0..5u8)
            .map(|i| {
                let b = vec![i; 10_000 * i as usize + 1];
                seal_blob(&keys, &repo, BlobKind::Data, keys.blob_id(&b), &b, 3)
            })
            .collect();
        let fill = |mut w: PackWriter| {
            for b in &blobs {
                w.add(SealedBlob {
                    kind: b.kind,
                    id: b.id,
                    bytes: b.bytes.clone(),
                    raw_length: b.raw_length,
                });
            }
            w.finish(&keys, &repo)
        };
        let plain = fill(PackWriter::new());
        let first = fill(PackWriter::with_capacity(1 << 20));
        assert_eq!(first.bytes().as_ptr() as usize % crate::direct_io::ALIGN, 0);
        let mut dirty = first.into_buffer();
        dirty.fill(0xa5);
        let again = fill(PackWriter::with_buffer(dirty));
        assert_eq!(again.bytes().as_ptr() as usize % crate::direct_io::ALIGN, 0);
        // The trailer is sealed under a fresh nonce: the blobs and the
        // entries are what must match.
        let blob_end: usize = blobs.iter().map(|b| b.bytes.len()).sum();
        assert_eq!(plain.bytes()[..blob_end], again.bytes()[..blob_end]);
        assert_eq!(plain.bytes().len(), again.bytes().len());
        assert_eq!(plain.entries, again.entries);
        assert_eq!(
            parse_pack(&keys, &repo, again.bytes()).unwrap(),
            again.entries
        );
    }

    #[test]
    fn pack_round_trip_and_damage() {
        let keys = KeySet::derive(&MasterKey([5; 32]));
        let repo = RepoId([6; 32]);
        let mut w = PackWriter::new();
        let blobs: Vec<Vec<u8>> = vec![b"abc".repeat(1000), vec![], b"xyz".to_vec()];
        for b in &blobs {
            w.add(seal_blob(
                &keys,
                &repo,
                BlobKind::Data,
                keys.blob_id(b),
                b,
                3,
            ));
        }
        let p = w.finish(&keys, &repo);
        let entries = parse_pack(&keys, &repo, p.bytes()).unwrap();
        assert_eq!(entries, p.entries);
        for (e, b) in entries.iter().zip(&blobs) {
            let s = &p.bytes()[e.offset as usize..(e.offset + e.length) as usize];
            assert_eq!(&open_blob(&keys, &repo, e, s).unwrap(), b);
        }
        // Any truncation is an error, never a panic.
        for n in 0..p.bytes().len() {
            assert!(parse_pack(&keys, &repo, &p.bytes()[..n]).is_err());
        }
        // Another repository cannot read it.
        assert!(parse_pack(&keys, &RepoId([7; 32]), p.bytes()).is_err());
        // A blob read as the wrong kind or under the wrong id fails.
        let e = entries[0];
        let s = &p.bytes()[e.offset as usize..(e.offset + e.length) as usize];
        let mut wrong = e;
        wrong.kind = BlobKind::Tree;
        assert!(open_blob(&keys, &repo, &wrong, s).is_err());
        wrong = e;
        wrong.id = BlobId([0; 32]);
        assert!(open_blob(&keys, &repo, &wrong, s).is_err());
        wrong = e;
        wrong.raw_length += 1;
        assert!(open_blob(&keys, &repo, &wrong, s).is_err());
    }
}
