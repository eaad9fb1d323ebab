//! FastCDC chunking over 64 MiB of mixed data (default 256K/1M/4M sizes),
//! alone and followed by each chunk's keyed BLAKE3 id: the second is the
//! ceiling of a stream backup whose chunks are all known already (a
//! dump that did not change), against which `tools/compare --steps dumps`
//! figures are read.

mod common;

use coffer::chunking::{Chunker, ChunkerParams};
use coffer::crypto::{KeySet, MasterKey};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn chunking(c: &mut Criterion) {
    let data = common::mixed(1, 64 * common::MIB);
    let chunker = Chunker::new(ChunkerParams::default(), 0x5eed);
    let keys = KeySet::derive(&MasterKey([7; 32]));
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("cuts/64MiB-mixed", |b| {
        b.iter(|| chunker.cuts(black_box(&data)))
    });
    g.bench_function("cuts+ids/64MiB-mixed", |b| {
        b.iter(|| {
            for (at, n) in chunker.cuts(black_box(&data)) {
                black_box(keys.blob_id(&data[at..at + n]));
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = chunking
}
criterion_main!(benches);
