//! Writes that bypass the page cache (O_DIRECT), shared by the local
//! backend (packs) and the restorer (big restored files).
//!
//! Why at all: on the 2-core VMs coffer is measured on, buffered writes of
//! 1 GiB cost 1.8 s of kernel CPU (page allocation and
//! `copy_folio_from_iter_atomic`, `dd bs=1M`), O_DIRECT 0.3 s. Data written
//! once and not read back soon (a pack, a restored file) gains nothing from
//! the cache, and the user's own working set stays in it.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// O_DIRECT needs buffer address, file offset and length aligned to the
/// device's logical block size; 4096 covers 512-byte and 4K-sector disks.
pub(crate) const ALIGN: usize = 4096;

/// A zero-initialised byte buffer whose start is [`ALIGN`]-aligned.
///
/// Over-allocating a `Vec` and starting at the first aligned byte needs no
/// `unsafe` and no custom allocator.
pub(crate) struct AlignedBuf {
    v: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> Self {
        let v = vec![0u8; len + ALIGN];
        let start = v.as_ptr().align_offset(ALIGN);
        AlignedBuf { v, start, len }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.v[self.start..self.start + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.v[self.start..self.start + self.len]
    }
}

/// Does this error mean "this file or filesystem does not do O_DIRECT
/// (or not at this alignment)"? Some filesystems accept the flag at open
/// and refuse the writes (some FUSE and network filesystems); the caller
/// then writes through the page cache.
pub fn refused(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// Write the first `len` bytes of `buf` at `offset` (aligned) through an
/// O_DIRECT descriptor, padding the last block with zeros: the caller cuts
/// the file back to its size when the padding ran past it.
pub(crate) fn write_padded_at(
    f: &File,
    buf: &mut AlignedBuf,
    len: usize,
    offset: u64,
) -> std::io::Result<()> {
    debug_assert!(offset.is_multiple_of(ALIGN as u64));
    let padded = len.next_multiple_of(ALIGN);
    let b = buf.as_mut_slice();
    b[len..padded].fill(0);
    f.write_all_at(&b[..padded], offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        for len in [ALIGN, 3 * ALIGN, 1 << 20] {
            let b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.len(), len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }
}
