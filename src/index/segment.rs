//! Index segments (repo-format/README.md, "Index segments"): one immutable
//! object per backup checkpoint or prune, listing packs and their blobs.
//!
//! ```text
//! segment := "cofferI1"[8] || pack_count u32 || pack*
//! pack    := pack_id[32] || pack_size u64 || entry_count u32 || entry*
//! entry   := kind u8 || blob id[32] || offset u32 || length u32 || raw_length u32
//! ```
//! Sealed with the index key, aad = repo || IndexSegment || 0^32; the object
//! is named by BLAKE3 of the sealed bytes.

use crate::codec::{DecodeError, Reader, Writer};
use crate::id::PackId;
use crate::pack::reader::{check_tiling, decode_entry};
use crate::pack::writer::encode_entry;
use crate::pack::{ENTRY_LEN, MAX_PACK_ENTRIES, MAX_PACK_SIZE, PackEntry};

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"cofferI1";

/// One pack as a segment lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedPack {
    pub id: PackId,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub packs: Vec<IndexedPack>,
}

impl Segment {
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.entries.len()).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.buf
            .reserve(12 + self.packs.len() * 44 + self.blob_count() * ENTRY_LEN);
        w.raw(SEGMENT_MAGIC);
        w.u32(self.packs.len() as u32);
        for p in &self.packs {
            w.raw(p.id.as_bytes());
            w.u64(p.size);
            w.u32(p.entries.len() as u32);
            for e in &p.entries {
                encode_entry(&mut w, e);
            }
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Segment, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.take(8)? != SEGMENT_MAGIC {
            return Err(DecodeError("not an index segment (bad magic)".into()));
        }
        let np = r.count(usize::MAX, 44, "pack")?;
        let mut packs = Vec::with_capacity(np);
        for _ in 0..np {
            let id = PackId(r.array()?);
            let size = r.u64()?;
            if size > MAX_PACK_SIZE {
                return Err(DecodeError(format!("pack {id} size {size} over the limit")));
            }
            let ne = r.count(MAX_PACK_ENTRIES, ENTRY_LEN, "blob entry")?;
            let mut entries = Vec::with_capacity(ne);
            for _ in 0..ne {
                entries.push(decode_entry(&mut r)?);
            }
            // The blobs and the 4-byte trailer length must fit inside the pack.
            let end = entries
                .last()
                .map(|e| e.offset as u64 + e.length as u64)
                .unwrap_or(0);
            check_tiling(&entries, end).map_err(|e| DecodeError(format!("pack {id}: {e}")))?;
            if end + 4 > size {
                return Err(DecodeError(format!(
                    "pack {id}: blobs extend past its size"
                )));
            }
            packs.push(IndexedPack { id, size, entries });
        }
        r.finish()?;
        Ok(Segment { packs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobKind;
    use crate::id::BlobId;

    #[test]
    fn round_trip_and_truncation() {
        let s = Segment {
            packs: vec![IndexedPack {
                id: PackId([1; 32]),
                size: 1000,
                entries: vec![
                    PackEntry {
                        kind: BlobKind::Data,
                        id: BlobId([2; 32]),
                        offset: 0,
                        length: 100,
                        raw_length: 200,
                    },
                    PackEntry {
                        kind: BlobKind::Tree,
                        id: BlobId([3; 32]),
                        offset: 100,
                        length: 50,
                        raw_length: 10,
                    },
                ],
            }],
        };
        let b = s.encode();
        assert_eq!(Segment::decode(&b).unwrap(), s);
        for n in 0..b.len() {
            assert!(Segment::decode(&b[..n]).is_err());
        }
        let mut bad = s.clone();
        bad.packs[0].entries[1].offset = 99;
        assert!(Segment::decode(&bad.encode()).is_err());
    }

    /// Segments whose packs' entries tile, as a writer makes them.
    fn segment() -> impl proptest::strategy::Strategy<Value = Segment> {
        use proptest::prelude::*;
        let entry = (any::<bool>(), any::<[u8; 32]>(), 41u32..5000, any::<u32>());
        let pack = (
            any::<[u8; 32]>(),
            proptest::collection::vec(entry, 0..8),
            0u64..1000,
        )
            .prop_map(|(id, es, slack)| {
                let mut off = 0u32;
                let entries: Vec<PackEntry> = es
                    .into_iter()
                    .map(|(tree, id, length, raw_length)| {
                        let e = PackEntry {
                            kind: if tree { BlobKind::Tree } else { BlobKind::Data },
                            id: BlobId(id),
                            offset: off,
                            length,
                            raw_length,
                        };
                        off += length;
                        e
                    })
                    .collect();
                IndexedPack {
                    id: PackId(id),
                    size: off as u64 + 4 + slack,
                    entries,
                }
            });
        proptest::collection::vec(pack, 0..5).prop_map(|packs| Segment { packs })
    }

    proptest::proptest! {
        #[test]
        fn encode_decode_round_trip(s in segment()) {
            let b = s.encode();
            let back = Segment::decode(&b).unwrap();
            proptest::prop_assert_eq!(&back, &s);
            proptest::prop_assert_eq!(back.encode(), b);
        }
    }
}
