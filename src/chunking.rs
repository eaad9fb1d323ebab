//! Content-defined chunking: FastCDC (2020 variant, normalization level 1)
//! with the gear table XORed by a per-repository seed, so chunk boundaries
//! of known content cannot be predicted without the key (repo-format/README.md,
//! "Chunking"; doc/reliability.md H-9).
//!
//! The chunker is a pure function of bytes: `Chunker::next_cut` finds the
//! end of the chunk that starts at the beginning of a slice. Streaming callers
//! keep the uncut tail of one buffer and prepend it to the next, which yields
//! exactly the cuts of a single pass over the whole stream, because FastCDC
//! restarts its rolling hash at every cut.

use fastcdc::v2020::{self, Normalization};
use std::borrow::Cow;

/// Chunk size limits, fixed per repository in its config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self {
            min_size: 256 * 1024,
            avg_size: 1024 * 1024,
            max_size: 4 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// The bounds FastCDC accepts; checked when a config is created or read.
    pub fn validate(&self) -> Result<(), String> {
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        let ok = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunk sizes min {min} avg {avg} max {max} are outside FastCDC's bounds"
            ))
        }
    }
}

/// A configured chunker: parameters, masks and the seeded gear tables.
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl Chunker {
    /// `params` must have passed [`ChunkerParams::validate`].
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        let (mask_s, mask_l) = v2020::select_masks(params.avg_size as usize, Normalization::Level1);
        let (gear, gear_ls) = v2020::get_gear_with_seed(seed);
        Self {
            params,
            mask_s,
            mask_l,
            gear,
            gear_ls,
        }
    }

    pub(crate) fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the chunk starting at `data[0]`. When `data` is shorter than
    /// the minimum size the whole slice is returned; a streaming caller must
    /// only trust a cut that ends before its buffer's end, unless at EOF.
    pub(crate) fn next_cut(&self, data: &[u8]) -> usize {
        if data.is_empty() {
            return 0;
        }
        let p = &self.params;
        let (_, n) = v2020::cut_gear(
            data,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        n.clamp(1, data.len())
    }

    /// Every chunk of a complete input, as (offset, length).
    pub fn cuts(&self, data: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let n = self.next_cut(&data[pos..]);
            out.push((pos, n));
            pos += n;
        }
        out
    }

    /// Cut a buffer that may be followed by more data: returns the complete
    /// chunks and the offset where the uncut tail begins. At EOF every byte
    /// is cut.
    ///
    /// A cut found before the buffer's end is final: FastCDC decides it from
    /// the bytes before it alone, and it applies the same masks at the same
    /// offsets whether more data follows or not. So is a cut at the maximal
    /// size. Only a chunk that runs into the buffer's end waits for more.
    /// Cutting only while a maximal chunk's worth remained, as this did
    /// before, left up to `max_size` uncut in every buffer: with 5 MiB
    /// buffers and 1 MiB chunks, about one chunk per buffer and four bytes
    /// copied to the next buffer for every byte stored.
    pub(crate) fn cut_buffer(&self, data: &[u8], eof: bool) -> (Vec<(usize, usize)>, usize) {
        let mut out = Vec::new();
        let mut pos = 0;
        let max = self.params.max_size as usize;
        while pos < data.len() {
            let rest = &data[pos..];
            let n = self.next_cut(rest);
            if !eof && n == rest.len() && n < max {
                // The chunk may go on past the buffer's end.
                break;
            }
            out.push((pos, n));
            pos += n;
        }
        (out, pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
        }
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn default_params_are_valid() {
        ChunkerParams::default().validate().unwrap();
        assert!(
            ChunkerParams {
                min_size: 10,
                avg_size: 20,
                max_size: 30
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn seeds_change_boundaries() {
        let data = noise(200_000, 1);
        let a = Chunker::new(small(), 1).cuts(&data);
        let b = Chunker::new(small(), 2).cuts(&data);
        assert_ne!(a, b);
    }

    #[test]
    fn insertion_changes_only_nearby_chunks() {
        let data = noise(400_000, 3);
        let mut edited = data.clone();
        edited.insert(1000, 0x55);
        let c = Chunker::new(small(), 9);
        let set = |d: &[u8]| -> std::collections::HashSet<Vec<u8>> {
            c.cuts(d)
                .iter()
                .map(|&(o, n)| d[o..o + n].to_vec())
                .collect()
        };
        let (a, b) = (set(&data), set(&edited));
        let shared = a.intersection(&b).count();
        assert!(shared + 3 >= a.len(), "shared {shared} of {}", a.len());
    }

    proptest! {
        #[test]
        fn cuts_cover_input_and_respect_bounds(len in 0usize..100_000, seed in any::<u64>()) {
            let data = noise(len, seed);
            let c = Chunker::new(small(), seed);
            let cuts = c.cuts(&data);
            let mut pos = 0;
            for (i, &(o, n)) in cuts.iter().enumerate() {
                prop_assert_eq!(o, pos);
                prop_assert!(n <= 16384);
                if i + 1 < cuts.len() { prop_assert!(n >= 1024); }
                pos += n;
            }
            prop_assert_eq!(pos, len);
        }

        #[test]
        fn streaming_equals_one_pass(
            len in 0usize..120_000,
            seed in any::<u64>(),
            buf in 1usize..40_000,
            zeros in 0usize..60_000,
        ) {
            // Noise with a run of zeros in it: the run has no content
            // boundaries, so it is cut at the maximal size, and a buffer
            // ending inside it must wait for more data.
            let mut data = noise(len, seed);
            let at = (seed as usize) % (len + 1);
            data.splice(at..at, std::iter::repeat_n(0u8, zeros));
            let len = data.len();
            let c = Chunker::new(small(), seed);
            let whole = c.cuts(&data);
            let mut streamed = Vec::new();
            let mut base = 0;
            let mut carry: Vec<u8> = Vec::new();
            let mut fed = 0;
            loop {
                let take = buf.min(len - fed);
                carry.extend_from_slice(&data[fed..fed + take]);
                fed += take;
                let eof = fed == len;
                let (cuts, used) = c.cut_buffer(&carry, eof);
                streamed.extend(cuts.iter().map(|&(o, n)| (base + o, n)));
                base += used;
                carry.drain(..used);
                if eof { break; }
            }
            prop_assert_eq!(streamed, whole);
        }
    }
}
