//! The memory Argon2id fills, mapped straight from the kernel and faulted
//! in with one call, in ordinary 4 KiB pages.
//!
//! A passphrase slot's 64 MiB would otherwise come from
//! `vec![Block::default(); n]`: a memset of the whole area and one page
//! fault per 4 KiB page, 16 384 of them, which was a third of the key
//! derivation's time when opening a repository (`perf record` of a
//! no-change backup: 7.6% of all its CPU outside Argon2's compression
//! function). A fresh anonymous mapping is already zero, and
//! `MADV_POPULATE_WRITE` (Linux 5.14) faults it all in at once.
//!
//! Not huge pages, although they fault in 2 MiB at a time and made the
//! derivation fastest when run again and again (about 47 against 70 ms):
//! on a virtual machine the host takes back the free 2 MiB blocks a while
//! after they are freed, and zeroing memory it must first supply again
//! was 60% of the derivation's CPU. Run as a nightly job runs (after the
//! machine did other work: `tools/compare` reads the whole tree and
//! repository first), `coffer snapshots` took 0.14-0.17 s with huge pages
//! against 0.09-0.11 s with small ones, and a no-change backup of the home
//! tree 0.27-0.44 s (median 0.34) against 0.24-0.32 s (median 0.30).

use argon2::Block;

/// An anonymous private mapping of `blocks` Argon2 blocks, unmapped on
/// drop.
pub(super) struct KdfMemory {
    base: *mut libc::c_void,
    map_len: usize,
    blocks: usize,
}

impl KdfMemory {
    /// Map memory for `blocks` blocks; `None` if the kernel refuses (the
    /// caller then lets Argon2 allocate as usual).
    pub(super) fn new(blocks: usize) -> Option<KdfMemory> {
        let map_len = blocks.checked_mul(size_of::<Block>())?;
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
        // SAFETY: both calls cover exactly the mapping just made, and both
        // are only advice: small pages even where the system makes every
        // large mapping huge, then all of them faulted in now. A kernel
        // that knows neither leaves ordinary zeroed memory, faulted in as
        // Argon2 first writes it.
        unsafe {
            libc::madvise(base, map_len, libc::MADV_NOHUGEPAGE);
            libc::madvise(base, map_len, libc::MADV_POPULATE_WRITE);
        }
        Some(KdfMemory {
            base,
            map_len,
            blocks,
        })
    }

    pub(super) fn blocks(&mut self) -> &mut [Block] {
        // SAFETY: `blocks * 1024 == map_len`, so the slice is the mapping,
        // which lives (readable and writable) until `self` drops, and
        // `&mut self` makes the borrow unique. mmap returns page-aligned
        // memory, which satisfies Block's 64-byte alignment. A Block is an
        // array of u64, for which every bit pattern (here, zeros) is a
        // valid value.
        unsafe { std::slice::from_raw_parts_mut(self.base.cast::<Block>(), self.blocks) }
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
