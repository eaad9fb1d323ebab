//! Builds a pack in memory: append sealed blobs, then seal the trailer.
//! Layout in [`super`].

use super::{ENTRY_LEN, PackEntry, SealedBlob, TRAILER_MAGIC};
use crate::blob::BlobKind;
use crate::codec::Writer;
use crate::crypto::{AadKind, KeySet, aad, envelope};
use crate::direct_io::ALIGN;
use crate::id::{BlobId, PackId, RepoId, content_hash};

/// A pack being filled. The pack's bytes are `buf[start..]`.
#[derive(Default)]
pub struct PackWriter {
    buf: Vec<u8>,
    start: usize,
    entries: Vec<PackEntry>,
}

/// A finished pack: its name, bytes and the blobs it holds.
pub struct FinishedPack {
    pub id: PackId,
    buf: Vec<u8>,
    start: usize,
    pub entries: Vec<PackEntry>,
}

impl FinishedPack {
    /// A pack read back whole (its bytes are all of `bytes`).
    pub fn new(id: PackId, bytes: Vec<u8>, entries: Vec<PackEntry>) -> Self {
        FinishedPack {
            id,
            buf: bytes,
            start: 0,
            entries,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The buffer, for the next [`PackWriter::with_buffer`].
    pub(crate) fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

impl PackWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer whose buffer will not need to grow for a pack of `bytes`
    /// (growing by doubling would reserve twice the pack size).
    pub fn with_capacity(bytes: usize) -> Self {
        Self::with_buffer(Vec::with_capacity(bytes + ALIGN))
    }

    /// A writer reusing `buf` (its contents are dropped): a recycled buffer
    /// spares faulting in fresh pages for every pack. The pack starts at
    /// the buffer's first [`ALIGN`]-aligned byte, so a backend can write it
    /// with O_DIRECT straight from memory, as long as it never has to grow.
    pub(crate) fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        // A small buffer is not worth aligning (tree packs grow from empty).
        let start = match buf.as_ptr().align_offset(ALIGN) {
            s if s < ALIGN && buf.capacity() >= 2 * ALIGN => s,
            _ => 0,
        };
        buf.resize(start, 0);
        PackWriter {
            buf,
            start,
            entries: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    pub fn add(&mut self, blob: SealedBlob) {
        self.add_sealed(blob.kind, blob.id, blob.raw_length, &blob.bytes);
    }

    /// Append one sealed blob given by its parts (copied once, from a
    /// sealing buffer or another pack).
    pub(crate) fn add_sealed(
        &mut self,
        kind: BlobKind,
        id: BlobId,
        raw_length: u32,
        sealed: &[u8],
    ) {
        let offset = u32::try_from(self.len()).unwrap_or(u32::MAX);
        self.entries.push(PackEntry {
            kind,
            id,
            offset,
            length: u32::try_from(sealed.len()).unwrap_or(u32::MAX),
            raw_length,
        });
        self.buf.extend_from_slice(sealed);
    }

    /// Seal the trailer and name the pack.
    pub fn finish(mut self, keys: &KeySet, repo: &RepoId) -> FinishedPack {
        let trailer = encode_trailer(&self.entries);
        let sealed = envelope::seal(
            &keys.data,
            &aad(repo, AadKind::PackTrailer, &[0; 32]),
            &trailer,
        );
        self.buf.extend_from_slice(&sealed);
        self.buf.extend_from_slice(
            &u32::try_from(sealed.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        FinishedPack {
            id: PackId(content_hash(&self.buf[self.start..])),
            buf: self.buf,
            start: self.start,
            entries: self.entries,
        }
    }
}

/// The trailer plaintext.
pub(crate) fn encode_trailer(entries: &[PackEntry]) -> Vec<u8> {
    let mut w = Writer::new();
    w.buf.reserve(12 + entries.len() * ENTRY_LEN);
    w.raw(TRAILER_MAGIC);
    w.u32(entries.len() as u32);
    for e in entries {
        encode_entry(&mut w, e);
    }
    w.finish()
}

pub(crate) fn encode_entry(w: &mut Writer, e: &PackEntry) {
    w.u8(e.kind as u8);
    w.raw(e.id.as_bytes());
    w.u32(e.offset);
    w.u32(e.length);
    w.u32(e.raw_length);
}
