//! End to end: back up a generated tree (a few hundred files, ~200 MB,
//! mixed compressible and incompressible) into a fresh in-memory
//! repository. Every iteration starts from an empty repository, so all data
//! is new; the tree is generated once and stays in the page cache.
//!
//! `COFFER_BENCH_TREE_MB` changes the tree size (default 200).

mod common;

use coffer::archiver::{BackupOptions, SnapshotOptions, snapshot};
use coffer::backend::memory::MemoryBackend;
use coffer::crypto::key_file::KdfParams;
use coffer::progress::NoProgress;
use coffer::repository::config::Config;
use coffer::repository::{InitSecret, Repository};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

fn new_repo() -> Arc<Repository> {
    let repo = Repository::init(
        Arc::new(MemoryBackend::new()),
        InitSecret::Passphrase(Zeroizing::new(b"bench".to_vec())),
        Config::default(),
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            lanes: 1,
        },
    )
    .expect("init in-memory repository");
    Arc::new(repo)
}

fn backup(c: &mut Criterion) {
    let mb: usize = std::env::var("COFFER_BENCH_TREE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().expect("temp dir");
    let bytes = common::write_tree(dir.path(), mb * 1_000_000, 300, 42).expect("write tree");
    let root = dir.path().canonicalize().expect("canonical temp dir");
    let opts = SnapshotOptions {
        backup: BackupOptions {
            paths: vec![root],
            force: false,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            excludes: Default::default(),
        },
        parent: None,
        tags: Vec::new(),
        hostname: "bench".into(),
        time_ns: None,
    };

    let mut g = c.benchmark_group("backup");
    g.throughput(Throughput::Bytes(bytes));
    // Each iteration takes about two seconds on 2 cores: ten of them.
    g.measurement_time(Duration::from_secs(25));
    g.bench_function(format!("snapshot/{}MB-300-files", bytes / 1_000_000), |b| {
        b.iter_batched(
            new_repo,
            |repo| {
                let (_, _, outcome) = snapshot(repo.clone(), &opts, &NoProgress).expect("backup");
                assert_eq!(outcome.summary.total_bytes, bytes);
                repo
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = backup
}
criterion_main!(benches);
