//! Shared helpers for the benchmarks: a deterministic data generator
//! (xorshift, no dependency on the OS random source) that mixes text-like
//! compressible runs with random incompressible runs, and the common
//! criterion configuration.

// Each bench file compiles this module separately and uses only part of it.
#![allow(dead_code)]

use criterion::Criterion;
use std::path::Path;
use std::time::Duration;

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

/// Short runs: ten samples, a few seconds each. The numbers are for
/// comparing stages and spotting regressions, not for publication.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

/// xorshift64*: fast, deterministic, good enough for benchmark data.
#[derive(Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // Never zero: xorshift would stay at zero forever.
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0; the bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo) as u64) as usize
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "that",
    "with",
    "on",
    "as",
    "by",
    "this",
    "be",
    "are",
    "from",
    "at",
    "or",
    "an",
    "it",
    "not",
    "which",
    "have",
    "has",
    "but",
    "all",
    "can",
    "will",
    "one",
    "were",
    "their",
    "backup",
    "snapshot",
    "repository",
    "chunk",
    "index",
    "pack",
    "blob",
    "tree",
    "encrypt",
    "compress",
    "fn",
    "let",
    "mut",
    "return",
    "impl",
    "struct",
    "enum",
    "match",
    "self",
    "Some",
    "None",
    "Ok",
    "Err",
    "error",
    "warning",
    "info",
    "debug",
    "request",
    "response",
    "user",
    "server",
    "client",
    "timeout",
    "value",
    "count",
    "size",
    "offset",
    "length",
    "buffer",
    "file",
    "directory",
    "path",
    "name",
    "time",
    "2024-05-17T03:12:44Z",
    "GET",
    "POST",
    "/api/v1/items",
    "200",
    "404",
    "500",
    "127.0.0.1",
    "=",
    "{",
    "}",
    "(",
    ")",
    ";",
    ",",
    "->",
    "::",
    "0",
    "1",
    "42",
    "1024",
    "0x7f",
    "true",
    "false",
    "null",
];

/// Text-like bytes: words from a small vocabulary, numbers, punctuation and
/// line breaks. zstd shrinks it roughly 3-5x, like source code or logs.
pub fn text_like(rng: &mut XorShift, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut col = 0;
    while out.len() < len {
        let r = rng.next_u64();
        if r.is_multiple_of(13) {
            // A number, so the text is not too repetitive.
            let n = (r >> 8) % 1_000_000;
            out.extend_from_slice(n.to_string().as_bytes());
        } else {
            let w = WORDS[((r >> 8) % WORDS.len() as u64) as usize];
            out.extend_from_slice(w.as_bytes());
        }
        col += 8;
        if (r >> 40).is_multiple_of(11) || col > 90 {
            out.push(b'\n');
            let indent = ((r >> 48) % 4) as usize * 4;
            out.extend(std::iter::repeat_n(b' ', indent));
            col = indent;
        } else {
            out.push(b' ');
        }
    }
    out.truncate(len);
    out
}

/// Incompressible bytes.
pub fn random_bytes(rng: &mut XorShift, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill(&mut out);
    out
}

/// Alternating text-like and random runs of 64 KiB..2 MiB, roughly half
/// and half: what a home directory with sources, logs and media looks like
/// to the chunker.
pub fn mixed(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    let mut out = Vec::with_capacity(len);
    let mut text = rng.below(2) == 0;
    while out.len() < len {
        let run = rng.range(64 * KIB, 2 * MIB).min(len - out.len());
        if text {
            out.extend_from_slice(&text_like(&mut rng, run));
        } else {
            out.extend_from_slice(&random_bytes(&mut rng, run));
        }
        text = !text;
    }
    out
}

/// 1 MiB of compressible text-like data.
pub fn text_chunk(seed: u64) -> Vec<u8> {
    text_like(&mut XorShift::new(seed), MIB)
}

/// 1 MiB of random data.
pub fn random_chunk(seed: u64) -> Vec<u8> {
    random_bytes(&mut XorShift::new(seed), MIB)
}

/// Fill `dir` with about `total` bytes in `files` files spread over nested
/// directories: one file in ten is large (a few MiB), the rest small; each
/// file is text-like, random or mixed. Deterministic for a given seed.
/// Returns the number of bytes written.
pub fn write_tree(dir: &Path, total: usize, files: usize, seed: u64) -> std::io::Result<u64> {
    let mut rng = XorShift::new(seed);
    let large = (files / 10).max(1);
    let small = files - large;
    // Large files hold ~70% of the bytes, small ones the rest.
    let large_avg = total * 7 / 10 / large;
    let small_avg = (total * 3 / 10 / small.max(1)).max(1);
    let mut written = 0u64;
    for i in 0..files {
        let avg = if i % 10 == 0 { large_avg } else { small_avg };
        let size = rng.range(avg / 2, avg * 3 / 2 + 1);
        let sub = dir.join(format!("d{:02}/e{:02}", i % 17, i % 5));
        std::fs::create_dir_all(&sub)?;
        let data = match rng.below(3) {
            0 => text_like(&mut rng, size),
            1 => random_bytes(&mut rng, size),
            _ => mixed(rng.next_u64(), size),
        };
        std::fs::write(sub.join(format!("f{i:04}.dat")), &data)?;
        written += data.len() as u64;
    }
    Ok(written)
}
