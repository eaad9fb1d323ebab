//! Pseudo-random data.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// xorshift64: fast, deterministic, incompressible enough for dedup tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let v = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&v[..n]);
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Write `size` bytes of half random, half repeated text (so zstd has some
/// work to do) to `path`, streaming.
pub fn write_mixed_file(path: &Path, size: u64, seed: u64) {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).expect("create parent dirs");
    }
    let mut rng = Rng::new(seed);
    let mut f =
        std::io::BufWriter::with_capacity(1 << 20, File::create(path).expect("create big file"));
    let mut block = vec![0u8; 4096];
    let mut written = 0u64;
    let mut i = 0u64;
    while written < size {
        if rng.next_u64().is_multiple_of(2) {
            rng.fill(&mut block);
        } else {
            let text = format!(
                "block {i:>12} of a file for coffer's end-to-end tests; the quick brown fox. "
            );
            for (dst, src) in block.iter_mut().zip(text.as_bytes().iter().cycle()) {
                *dst = *src;
            }
        }
        let n = (size - written).min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("write big file");
        written += n as u64;
        i += 1;
    }
    f.flush().expect("flush big file");
}
