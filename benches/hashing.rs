//! Keyed BLAKE3 blob ids of 1 MiB chunks.

mod common;

use coffer::crypto::{KeySet, MasterKey};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn hashing(c: &mut Criterion) {
    let keys = KeySet::derive(&MasterKey([7; 32]));
    let chunk = common::mixed(2, common::MIB);
    let mut g = c.benchmark_group("hashing");
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("blob_id/1MiB", |b| {
        b.iter(|| keys.blob_id(black_box(&chunk)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = hashing
}
criterion_main!(benches);
