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
//!
//! Faulting in is the kernel zeroing 16 384 pages: 26-29 ms on one core of
//! a 2-core VM while the other waited, 15-21 ms split over rayon's pool
//! (which the derivation's lanes use next, warmed up for them). Unmapping
//! took another 5-8 ms before the command could start; the pages are now
//! given back on a thread of their own. A no-change backup of the home
//! tree with a password: 196 -> 190 ms, medians of 8 alternated runs.

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
        // SAFETY: the call covers exactly the mapping just made and is
        // only advice: small pages even where the system makes every large
        // mapping huge.
        unsafe {
            libc::madvise(base, map_len, libc::MADV_NOHUGEPAGE);
        }
        let mem = KdfMemory {
            base,
            map_len,
            blocks,
        };
        mem.populate();
        Some(mem)
    }

    /// Fault the whole mapping in now, in parts on rayon's threads.
    fn populate(&self) {
        use rayon::prelude::*;
        let page = 4096;
        let part = self.map_len.div_ceil(POPULATE_PARTS).next_multiple_of(page);
        let base = self.base as usize;
        let len = self.map_len;
        (0..POPULATE_PARTS).into_par_iter().for_each(|i| {
            let start = (i * part).min(len);
            let end = ((i + 1) * part).min(len);
            if start < end {
                // SAFETY: [start, end) lies inside the mapping made in
                // `new` (`end` is capped at its length and `start` is
                // page-aligned), which stays mapped until `self` drops,
                // after this returns. The call is only advice: a kernel
                // without MADV_POPULATE_WRITE (before 5.14) leaves the
                // pages to be faulted in as Argon2 first writes them.
                unsafe {
                    libc::madvise(
                        (base + start) as *mut libc::c_void,
                        end - start,
                        libc::MADV_POPULATE_WRITE,
                    );
                }
            }
        });
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

/// Parts the mapping is faulted in by: several per thread, so that a
/// thread slowed by other work does not hold the rest up.
const POPULATE_PARTS: usize = 16;

/// Bytes given back per MADV_DONTNEED call when releasing (page-aligned).
const FREE_PART: usize = 1 << 20;

// SAFETY: a KdfMemory owns its mapping alone (nothing else holds its
// address), so moving it to another thread, to be unmapped there, moves
// sole ownership, as for a Box.
unsafe impl Send for KdfMemory {}

impl KdfMemory {
    /// Unmap on another thread: freeing the pages does not delay the
    /// caller.
    pub(super) fn release(self) {
        // A spawn that fails drops its closure, and the memory with it.
        let _ = std::thread::Builder::new()
            .name("coffer-kdf-free".into())
            .spawn(move || {
                self.free_pages();
                drop(self)
            });
    }

    /// Give the pages back a part at a time, before the unmapping: munmap
    /// holds the address space locked for writing while it frees, and the
    /// caller's first mmap (a large allocation) waited the whole 5 ms.
    /// MADV_DONTNEED holds it only for reading, one part at a time.
    fn free_pages(&self) {
        let part = FREE_PART.min(self.map_len);
        let mut off = 0;
        while off < self.map_len {
            let len = part.min(self.map_len - off);
            // SAFETY: [off, off + len) lies inside the mapping, which no
            // slice borrows any more (`blocks` borrows `self` mutably and
            // `self` is owned here); the pages read as zero afterwards,
            // a valid value for Block, until the unmapping.
            unsafe {
                libc::madvise(
                    (self.base as usize + off) as *mut libc::c_void,
                    len,
                    libc::MADV_DONTNEED,
                );
            }
            off += len;
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

    /// How many of the mapping's pages are resident.
    fn resident(mem: &KdfMemory) -> usize {
        let pages = mem.map_len.div_ceil(4096);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is the mapping, `vec` has one byte per page.
        let rc = unsafe { libc::mincore(mem.base, mem.map_len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn memory_is_faulted_in_whole_and_given_back_whole() {
        // An odd size: the last part is shorter than the others.
        let blocks = 5 * 1024 + 3;
        let mem = KdfMemory::new(blocks).unwrap();
        let pages = (blocks * 1024).div_ceil(4096);
        if resident(&mem) == 0 {
            // A kernel before 5.14 has no MADV_POPULATE_WRITE.
            return;
        }
        assert_eq!(resident(&mem), pages);
        mem.free_pages();
        assert_eq!(resident(&mem), 0);
    }

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
