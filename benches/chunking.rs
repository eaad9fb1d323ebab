//! FastCDC chunking over 64 MiB of mixed data (default 256K/1M/4M sizes).

mod common;

use coffer::chunking::{Chunker, ChunkerParams};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn chunking(c: &mut Criterion) {
    let data = common::mixed(1, 64 * common::MIB);
    let chunker = Chunker::new(ChunkerParams::default(), 0x5eed);
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("cuts/64MiB-mixed", |b| {
        b.iter(|| chunker.cuts(black_box(&data)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = chunking
}
criterion_main!(benches);
