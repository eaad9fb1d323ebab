//! The SQLite index: adding a segment of 100k blobs, then lookups and
//! `contains` (the dedup check) against it, hits and misses.

mod common;

use coffer::blob::BlobKind;
use coffer::id::{BlobId, PackId, RepoId, SegmentId};
use coffer::index::Index;
use coffer::index::segment::{IndexedPack, Segment};
use coffer::pack::PackEntry;
use coffer::repository::config::FORMAT_VERSION;
use common::XorShift;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const BLOBS: usize = 100_000;
/// 1 MiB chunks in packs of the default 8 MiB.
const PER_PACK: usize = 8;
const LOOKUPS: usize = 10_000;

fn id32(rng: &mut XorShift) -> [u8; 32] {
    let mut b = [0u8; 32];
    rng.fill(&mut b);
    b
}

fn segment(rng: &mut XorShift) -> (Segment, Vec<BlobId>) {
    let mut ids = Vec::with_capacity(BLOBS);
    let mut packs = Vec::new();
    while ids.len() < BLOBS {
        let mut entries = Vec::with_capacity(PER_PACK);
        let mut offset = 0u32;
        for _ in 0..PER_PACK.min(BLOBS - ids.len()) {
            let id = BlobId(id32(rng));
            let length = 700_000 + rng.below(400_000) as u32;
            entries.push(PackEntry {
                kind: BlobKind::Data,
                id,
                offset,
                length,
                raw_length: length + 1000,
            });
            offset += length;
            ids.push(id);
        }
        packs.push(IndexedPack {
            id: PackId(id32(rng)),
            size: offset as u64 + 1024,
            entries,
        });
    }
    (Segment { packs }, ids)
}

fn index(c: &mut Criterion) {
    let mut rng = XorShift::new(10);
    let repo = RepoId([1; 32]);
    let (seg, ids) = segment(&mut rng);
    let seg_id = SegmentId(id32(&mut rng));

    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(BLOBS as u64));
    g.bench_function("add_segment/100k-blobs", |b| {
        b.iter_batched(
            || Index::in_memory(&repo, FORMAT_VERSION).expect("in-memory index"),
            |idx| {
                idx.add_segment(&seg_id, &seg).expect("add segment");
                idx
            },
            BatchSize::PerIteration,
        )
    });

    let idx = Index::in_memory(&repo, FORMAT_VERSION).expect("in-memory index");
    idx.add_segment(&seg_id, &seg).expect("add segment");
    let hits: Vec<BlobId> = (0..LOOKUPS)
        .map(|_| ids[rng.below(BLOBS as u64) as usize])
        .collect();
    let misses: Vec<BlobId> = (0..LOOKUPS).map(|_| BlobId(id32(&mut rng))).collect();
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    g.bench_function("lookup/hit-10k", |b| {
        b.iter(|| {
            for id in &hits {
                black_box(idx.lookup(id).expect("lookup").expect("present"));
            }
        })
    });
    g.bench_function("lookup/miss-10k", |b| {
        b.iter(|| {
            for id in &misses {
                black_box(idx.lookup(id).expect("lookup"));
            }
        })
    });
    g.bench_function("contains/hit-10k", |b| {
        b.iter(|| {
            for id in &hits {
                black_box(idx.contains(id).expect("contains"));
            }
        })
    });
    g.bench_function("contains/miss-10k", |b| {
        b.iter(|| {
            for id in &misses {
                black_box(idx.contains(id).expect("contains"));
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = index
}
criterion_main!(benches);
