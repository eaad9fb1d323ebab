//! Pack sealing: `seal_blob_with` (compress when it helps, then encrypt,
//! as a backup does it) and `verify_blob` (the check before upload) on
//! 1 MiB chunks, and a `PackWriter` filling and finishing a pack of the default size.

mod common;

use coffer::blob::BlobKind;
use coffer::crypto::{KeySet, MasterKey};
use coffer::id::RepoId;
use coffer::pack::writer::PackWriter;
use coffer::pack::{PackEntry, SealedBlob, seal_blob, seal_blob_with, verify_blob};
use coffer::repository::config::DEFAULT_PACK_SIZE;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn pack(c: &mut Criterion) {
    let keys = KeySet::derive(&MasterKey([7; 32]));
    let repo = RepoId([1; 32]);
    let inputs = [
        ("text", common::text_chunk(6)),
        ("random", common::random_chunk(7)),
        ("mixed", common::mixed(8, common::MIB)),
    ];
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes(common::MIB as u64));
    for (name, data) in &inputs {
        let id = keys.blob_id(data);
        g.bench_function(format!("seal_blob/{name}-1MiB"), |b| {
            b.iter(|| {
                seal_blob_with(&keys, &repo, BlobKind::Data, id, black_box(data), 3, |s| {
                    s.len()
                })
            })
        });
        let sealed = seal_blob(&keys, &repo, BlobKind::Data, id, data, 3);
        let entry = PackEntry {
            kind: BlobKind::Data,
            id,
            offset: 0,
            length: sealed.bytes.len() as u32,
            raw_length: sealed.raw_length,
        };
        g.bench_function(format!("verify_blob/{name}-1MiB"), |b| {
            b.iter(|| verify_blob(&keys, &repo, &entry, black_box(&sealed.bytes)))
        });
    }

    // A pack of the default size, of sealed 1 MiB blobs.
    let per_pack = DEFAULT_PACK_SIZE as u64 / common::MIB as u64;
    let blobs: Vec<SealedBlob> = (0..per_pack)
        .map(|i| {
            let data = common::mixed(100 + i, common::MIB);
            seal_blob(&keys, &repo, BlobKind::Data, keys.blob_id(&data), &data, 3)
        })
        .collect();
    let pack_bytes: u64 = blobs.iter().map(|b| b.bytes.len() as u64).sum();
    g.throughput(Throughput::Bytes(pack_bytes));
    g.bench_function(format!("writer/{per_pack}-blobs"), |b| {
        b.iter_batched(
            || {
                blobs
                    .iter()
                    .map(|s| SealedBlob {
                        kind: s.kind,
                        id: s.id,
                        bytes: s.bytes.clone(),
                        raw_length: s.raw_length,
                    })
                    .collect::<Vec<_>>()
            },
            |blobs| {
                let mut w = PackWriter::new();
                for blob in blobs {
                    w.add(blob);
                }
                w.finish(&keys, &repo)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = pack
}
criterion_main!(benches);
