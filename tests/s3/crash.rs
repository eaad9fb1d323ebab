//! The crash matrix (tests/crash) against a bucket: a backup, a prune and
//! a copy into S3 die by `abort()` at an object write or deletion
//! (`COFFER_FAILPOINT`), each on its own copy of a template repository.
//! Afterwards `unlock` clears the dead run's lock, `check --read-data` is
//! clean, every snapshot that existed restores byte for byte, and the next
//! run completes.
//!
//! CI runs a fixed sample of points. `COFFER_S3_CRASH_MATRIX=full`
//! (tools/s3-crash-matrix) runs every point instead: for each kind of
//! point, N = 1, 2, … until the run no longer reaches an N-th write or
//! deletion and completes (then the repository is checked all the same).

use super::id;
use crate::support::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

const MIB: usize = 1024 * 1024;
/// Exit code of a process that died by `abort()` (128 + SIGABRT).
const ABORTED: i32 = 128 + libc::SIGABRT;

fn full_matrix() -> bool {
    std::env::var("COFFER_S3_CRASH_MATRIX").is_ok_and(|v| v == "full")
}

/// Run `scenario` at each sampled point (each must kill the run), or in
/// the full matrix at every N of every family, until a run completes.
fn run_matrix(sample: &[&str], families: &[&str], mut scenario: impl FnMut(&str) -> bool) {
    if !full_matrix() {
        for point in sample {
            assert!(
                scenario(point),
                "{point}: the run finished without reaching the point"
            );
        }
        return;
    }
    for family in families {
        for n in 1.. {
            let point = format!("{family}:{n}");
            println!("crash point {point}");
            if !scenario(&point) {
                println!("{family}: the run completes with {} such events", n - 1);
                break;
            }
        }
    }
}

/// Run with a failpoint set: true if it died there, false if it
/// completed (the point lies past the end of the run); anything else
/// fails the test.
fn run_killed(inv: Invocation<'_>, point: &str) -> bool {
    let r = inv.env("COFFER_FAILPOINT", point).run_any();
    match r.code {
        ABORTED => true,
        0 if full_matrix() => false,
        code => panic!(
            "{point}: exit {code}, not the failpoint's abort\nstdout:\n{}\nstderr:\n{}",
            r.stdout, r.stderr
        ),
    }
}

/// What a killed run leaves to the user: `unlock` removes its lock (its
/// process is dead, on this host), then the repository checks clean.
fn unlock_and_check(env: &Env, point: &str) {
    env.coffer().arg("unlock").run().ok();
    let locks = env.object_names("locks");
    assert!(locks.is_empty(), "{point}: unlock left locks: {locks:?}");
    env.check_clean();
}

// ---------------------------------------------------------------------------
// backup

/// One snapshot `s1` in S3, and a tree that has since gained ~4.5 MiB, so
/// the next backup writes several 1 MiB packs, an index segment and a
/// snapshot.
struct BackupTemplate {
    env: Env,
    tree: TreeBuilder,
    s1: String,
    golden1: PathBuf,
}

fn backup_template(env: Env) -> BackupTemplate {
    env.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("old/a.bin", 3 * MIB / 2, 1);
    t.file("old/notes.txt", b"first version\n");
    t.symlink("old/link", "notes.txt");
    let s1 = id(&env.backup_json(&[&t.root], &[]));
    let golden1 = env.restore_of(&s1, &t.root);
    compare_trees(&t.root, &golden1);
    for i in 0..3 {
        t.random_file(format!("new/b{i}.bin"), 3 * MIB / 2, 10 + i);
    }
    t.file("old/notes.txt", b"second version, longer\n");
    BackupTemplate {
        env,
        tree: t,
        s1,
        golden1,
    }
}

/// A backup killed at `point`: nothing lost, the next backup completes and
/// leaves none of the killed run's packs outside the index.
fn backup_killed_at(t: &BackupTemplate, point: &str) -> bool {
    let env = t.env.s3_clone("s3 backup crash");
    let root = t.tree.root.as_path();
    let killed = run_killed(env.coffer().arg("backup").arg(root), point);
    let packs_after_kill: BTreeSet<String> = env.object_names("packs").into_iter().collect();

    unlock_and_check(&env, point);
    compare_trees(&t.golden1, &env.restore_of(&t.s1, root));
    for s in env.snapshot_ids().iter().filter(|s| **s != t.s1) {
        compare_trees(root, &env.restore_of(s, root));
    }

    let s2 = id(&env.backup_json(&[root], &[]));
    compare_trees(root, &env.restore_of(&s2, root));
    let now: BTreeSet<String> = env.object_names("packs").into_iter().collect();
    let gone: Vec<_> = packs_after_kill.difference(&now).collect();
    assert!(gone.is_empty(), "{point}: packs disappeared: {gone:?}");
    let infos = unindexed_infos(&env.check_clean());
    assert!(
        infos.is_empty(),
        "{point}: the next backup left the killed run's packs unindexed: {infos:?}"
    );
    killed
}

#[test]
fn s3_backup_killed_at_sampled_points_loses_nothing() {
    let Some(env) = Env::s3("s3_backup_killed_at_sampled_points") else {
        return;
    };
    let t = backup_template(env);
    run_matrix(
        &[
            "before-put:pack:2",
            "after-put:pack:1",
            "before-put:index:1",
            "before-put:snapshot:1",
        ],
        &["before-put", "after-put"],
        |point| backup_killed_at(&t, point),
    );
}

// ---------------------------------------------------------------------------
// prune

/// A forgotten snapshot `s1` whose data only it referenced, in small
/// chunks and 1 MiB packs, so a prune deletes index segments and several
/// packs and repacks one; `s2` is kept.
struct PruneTemplate {
    env: Env,
    tree: TreeBuilder,
    s2: String,
}

fn prune_template(env: Env) -> PruneTemplate {
    env.init_with(&[
        "--pack-size",
        "1M",
        "--chunk-min",
        "64K",
        "--chunk-avg",
        "128K",
        "--chunk-max",
        "256K",
    ]);
    let t = TreeBuilder::new(env.path("src"));
    for (i, name) in ["a1.bin", "a2.bin", "k1.bin"].iter().enumerate() {
        t.random_file(name, 3 * MIB / 2, 100 + i as u64);
    }
    // Kept, between the deleted files: a pack mixes kept and unused data.
    t.file("a1k.txt", b"kept between a1 and a2\n");
    let backup = || {
        env.coffer()
            .env("RAYON_NUM_THREADS", "1")
            .args(["--json", "backup", "--threads", "1"])
            .arg(&t.root)
            .run()
            .ok()
            .summary()
    };
    backup();
    fs::remove_file(t.path("a1.bin")).unwrap();
    fs::remove_file(t.path("a2.bin")).unwrap();
    let s2 = id(&backup());
    env.coffer().args(["forget", "--keep-last", "1"]).run().ok();
    let plan = env
        .coffer()
        .args(["--json", "prune", "--dry-run"])
        .run()
        .ok()
        .json();
    assert!(
        num(&plan, "packs_to_delete") >= 2,
        "the template gives prune too little to delete: {plan}"
    );
    PruneTemplate { env, tree: t, s2 }
}

/// A prune killed at `point`: `s2` restores, the next prune finishes the
/// job and leaves nothing to do.
fn prune_killed_at(t: &PruneTemplate, point: &str) -> bool {
    let env = t.env.s3_clone("s3 prune crash");
    let root = t.tree.root.as_path();
    let killed = run_killed(env.coffer().arg("prune"), point);
    unlock_and_check(&env, point);
    compare_trees(root, &env.restore_of(&t.s2, root));

    env.coffer().arg("prune").run().ok();
    env.check_clean();
    compare_trees(root, &env.restore_of(&t.s2, root));
    let plan = env
        .coffer()
        .args(["--json", "prune", "--dry-run"])
        .run()
        .ok()
        .json();
    for k in ["packs_to_delete", "packs_to_repack", "unindexed_packs"] {
        assert_eq!(
            num(&plan, k),
            0,
            "{point}: the prune after the kill left work: {plan}"
        );
    }
    let s3 = id(&env.backup_json(&[root], &[]));
    compare_trees(root, &env.restore_of(&s3, root));
    killed
}

#[test]
fn s3_prune_killed_at_sampled_points_loses_nothing() {
    let Some(env) = Env::s3("s3_prune_killed_at_sampled_points") else {
        return;
    };
    let t = prune_template(env);
    run_matrix(
        &["before-delete:1", "before-delete:3"],
        &["before-put", "after-put", "before-delete"],
        |point| prune_killed_at(&t, point),
    );
}

// ---------------------------------------------------------------------------
// copy into S3

/// A local repository with two snapshots, their restored trees, and an
/// S3 repository made from it with `init --from-repo`, still empty.
struct CopyTemplate {
    source: Env,
    dest: Env,
    tree: TreeBuilder,
    goldens: Vec<PathBuf>,
}

fn copy_template(dest: Env) -> CopyTemplate {
    let source = Env::new();
    source.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(source.path("src"));
    t.random_file("a.bin", 3 * MIB / 2, 1);
    t.file("notes.txt", b"day one\n");
    source.backup_json(&[&t.root], &[]);
    t.random_file("b.bin", 2 * MIB, 2);
    t.file("notes.txt", b"day two\n");
    source.backup_json(&[&t.root], &[]);
    let goldens = source
        .snapshot_ids()
        .iter()
        .map(|s| source.restore_of(s, &t.root))
        .collect();
    dest.coffer()
        .env("COFFER_FROM_PASSWORD", PASSWORD)
        .args(["init", "--from-repo"])
        .arg(&source.repo)
        .run()
        .ok();
    CopyTemplate {
        source,
        dest,
        tree: t,
        goldens,
    }
}

/// Every snapshot of `dest` restores to the source snapshot at its
/// position (copy writes them oldest first).
fn dest_restores(t: &CopyTemplate, dest: &Env, point: &str) {
    let ids = dest.snapshot_ids();
    assert!(ids.len() <= t.goldens.len(), "{point}: {ids:?}");
    for (s, golden) in ids.iter().zip(&t.goldens) {
        compare_trees(golden, &dest.restore_of(s, &t.tree.root));
    }
}

/// A copy killed at `point`: what reached the bucket is whole, and the
/// next copy brings every snapshot across.
fn copy_killed_at(t: &CopyTemplate, point: &str) -> bool {
    let source = Env::new();
    copy_dir(&t.source.repo, &source.repo);
    let dest = t.dest.s3_clone("s3 copy crash");
    let copy = || {
        dest.coffer()
            .env("COFFER_FROM_PASSWORD", PASSWORD)
            .args(["--json", "copy", "--from-repo"])
            .arg(&source.repo)
    };
    let killed = run_killed(copy(), point);
    // The killed run may have locked the source too.
    source.coffer().arg("unlock").run().ok();
    unlock_and_check(&dest, point);
    dest_restores(t, &dest, point);

    let s = copy().run().ok().summary();
    assert_eq!(
        num(&s, "snapshots_copied") + num(&s, "snapshots_present"),
        2,
        "{point}: {s}"
    );
    assert_eq!(dest.snapshot_ids().len(), 2, "{point}");
    dest_restores(t, &dest, point);
    let infos = unindexed_infos(&dest.check_clean());
    assert!(infos.is_empty(), "{point}: {infos:?}");
    // And the bucket takes backups of its own.
    let root = t.tree.root.as_path();
    let s = id(&dest.backup_json(&[root], &[]));
    compare_trees(root, &dest.restore_of(&s, root));
    killed
}

#[test]
fn s3_copy_killed_at_sampled_points_loses_nothing() {
    let Some(dest) = Env::s3("s3_copy_killed_at_sampled_points") else {
        return;
    };
    let t = copy_template(dest);
    run_matrix(
        &["before-put:pack:1", "after-put:snapshot:1"],
        &["before-put", "after-put"],
        |point| copy_killed_at(&t, point),
    );
}
