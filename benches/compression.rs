//! zstd on 1 MiB chunks: compressible text-like data, and random data,
//! which zstd itself gives up on quickly (stored raw).

mod common;

use coffer::compression::{compress, decompress};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn compression(c: &mut Criterion) {
    let text = common::text_chunk(3);
    let random = common::random_chunk(4);
    let mut g = c.benchmark_group("compression");
    g.throughput(Throughput::Bytes(common::MIB as u64));
    for level in [3, 1] {
        g.bench_with_input(
            BenchmarkId::new("compress/text-1MiB", format!("level{level}")),
            &level,
            |b, &l| b.iter(|| compress(black_box(&text), l)),
        );
        g.bench_with_input(
            BenchmarkId::new("compress/random-1MiB", format!("level{level}")),
            &level,
            |b, &l| b.iter(|| compress(black_box(&random), l)),
        );
    }
    let packed = compress(&text, 3).expect("text-like data compresses");
    eprintln!(
        "compression: text-like 1 MiB -> {} bytes at level 3 (ratio {:.2}); random -> stored raw: {}",
        packed.len(),
        text.len() as f64 / packed.len() as f64,
        compress(&random, 3).is_none()
    );
    g.bench_function("decompress/text-1MiB", |b| {
        b.iter(|| decompress(black_box(&packed), text.len()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = compression
}
criterion_main!(benches);
