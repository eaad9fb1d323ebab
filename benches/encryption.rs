//! XChaCha20-Poly1305 envelope seal and open of 1 MiB.

mod common;

use coffer::crypto::envelope::{open, seal};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn encryption(c: &mut Criterion) {
    let key = [9u8; 32];
    let aad = [1u8; 65];
    let plain = common::random_chunk(5);
    let sealed = seal(&key, &aad, &plain);
    let mut g = c.benchmark_group("encryption");
    g.throughput(Throughput::Bytes(plain.len() as u64));
    g.bench_function("seal/1MiB", |b| {
        b.iter(|| seal(&key, &aad, black_box(&plain)))
    });
    g.bench_function("open/1MiB", |b| {
        b.iter(|| open(&key, &aad, black_box(&sealed)).expect("authentic"))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = encryption
}
criterion_main!(benches);
