//! The memory Argon2id fills, mapped straight from the kernel and backed by
//! huge pages where the kernel allows them.
//!
//! A passphrase slot's 64 MiB would otherwise come from
//! `vec![Block::default(); n]`: a memset of the whole area and one page
//! fault per 4 KiB page, 16 384 of them, which was a third of the key
//! derivation's time when opening a repository (`perf record` of a
//! no-change backup: 7.6% of all its CPU outside Argon2's compression
//! function). A fresh anonymous mapping is already zero and, advised as
//! huge pages, faults in 2 MiB at a time: the derivation went from about
//! 70 ms to about 47 ms on a 2-core machine. Where huge pages are
//! disabled the mapping still saves the memset.

use argon2::Block;

const HUGE_PAGE: usize = 2 << 20;

/// An anonymous private mapping of at least `blocks` Argon2 blocks,
/// unmapped on drop.
pub(super) struct KdfMemory {
    base: *mut libc::c_void,
    map_len: usize,
    /// Offset of the first block: the mapping's first 2 MiB boundary, so
    /// every huge page lies wholly inside the area.
    start: usize,
    blocks: usize,
}

impl KdfMemory {
    /// Map memory for `blocks` blocks; `None` if the kernel refuses (the
    /// caller then lets Argon2 allocate as usual).
    pub(super) fn new(blocks: usize) -> Option<KdfMemory> {
        let len = blocks.checked_mul(size_of::<Block>())?;
        let map_len = len.checked_add(HUGE_PAGE)?;
        // SAFETY: an anonymous private mapping with no address hint touches
        // no existing memory; failure is reported as MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let start = (base as usize).next_multiple_of(HUGE_PAGE) - base as usize;
        // SAFETY: the range lies inside the mapping just made. The advice is
        // only a hint: if the kernel has huge pages off it fails, and the
        // memory is still ordinary zeroed memory.
        unsafe {
            libc::madvise(
                base.cast::<u8>().add(start).cast(),
                len,
                libc::MADV_HUGEPAGE,
            );
        }
        Some(KdfMemory {
            base,
            map_len,
            start,
            blocks,
        })
    }

    pub(super) fn blocks(&mut self) -> &mut [Block] {
        // SAFETY: `start + blocks * 1024 <= map_len`, so the slice lies inside
        // the mapping, which lives (readable and writable) until `self`
        // drops, and `&mut self` makes the borrow unique. mmap returns
        // page-aligned memory and `start` is a multiple of 2 MiB, which
        // satisfies Block's 64-byte alignment. A Block is an array of u64,
        // for which every bit pattern (here, zeros) is a valid value.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.cast::<u8>().add(self.start).cast::<Block>(),
                self.blocks,
            )
        }
    }
}

impl Drop for KdfMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no slice into it
        // outlives `self` (`blocks` borrows `self` mutably).
        unsafe {
            libc::munmap(self.base, self.map_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_memory_derives_the_same_key() {
        // Small parameters: the point is the memory, not the cost.
        let params = argon2::Params::new(1024, 2, 2, Some(32)).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut want = [0u8; 32];
        a.hash_password_into(b"pw", b"saltsaltsaltsalt", &mut want)
            .unwrap();
        let mut mem = KdfMemory::new(a.params().block_count()).unwrap();
        assert!(mem.blocks().len() == 1024);
        let mut got = [0u8; 32];
        a.hash_password_into_with_memory(b"pw", b"saltsaltsaltsalt", &mut got, mem.blocks())
            .unwrap();
        assert_eq!(got, want);
    }
}
