//! Crash safety (doc/reliability.md 4.A, 4.B, E1; issue 6 point 6): backup, prune
//! and forget are killed with `abort()` at exact object writes and
//! deletions (`COFFER_FAILPOINT`), and after every kill the repository
//! must be whole: `check --read-data` passes (unindexed packs are only
//! information), every snapshot that existed restores byte for byte, and
//! the next run completes. Every kill point runs on its own copy of a
//! template repository, so the points do not depend on each other. A full
//! repository disk (`enospc-put`) fails the write instead of killing.

use crate::support::*;
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const MIB: usize = 1024 * 1024;
/// Exit code of a process that died by `abort()` (128 + SIGABRT).
const ABORTED: i32 = 128 + libc::SIGABRT;

/// A fresh environment whose repository is a copy of `template`'s.
fn clone_repo(template: &Env) -> Env {
    let env = Env::new();
    copy_dir(&template.repo, &env.repo);
    env
}

/// Run with a failpoint set; the process must die at it.
fn killed(env: &Env, failpoint: &str, args: &[&str], extra: &[&Path]) -> Run {
    let r = env
        .coffer()
        .args(args)
        .args(extra)
        .env("COFFER_FAILPOINT", failpoint)
        .run_any();
    assert_eq!(
        r.code,
        ABORTED,
        "`{}` with COFFER_FAILPOINT={failpoint} did not die at the failpoint\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        r.stdout,
        r.stderr
    );
    r
}

fn pack_names(env: &Env) -> BTreeSet<String> {
    env.objects("packs").iter().map(|p| file_name(p)).collect()
}

// ---------------------------------------------------------------------------
// backup

/// A repository with one snapshot (`s1`) of `src` and a source tree that
/// has since gained ~4.5 MiB of new data, so the next backup writes several
/// packs, an index segment and a snapshot.
struct BackupTemplate {
    env: Env,
    tree: TreeBuilder,
    s1: String,
    /// `s1` restored right after it was taken (the tree has changed since).
    golden1: PathBuf,
}

fn backup_template() -> BackupTemplate {
    let env = Env::new();
    env.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("old/a.bin", 3 * MIB / 2, 1);
    t.file("old/notes.txt", b"first version\n");
    t.symlink("old/link", "notes.txt");
    let s1 = env.backup_json(&[&t.root], &[])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
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

/// Kill a backup of the template's tree at `failpoint`, then prove nothing
/// was lost and the next backup completes, reusing what the killed one
/// uploaded. `all_uploaded`: the kill came after every pack was written,
/// so the rerun must add no data at all.
fn backup_killed_at(t: &BackupTemplate, failpoint: &str, all_uploaded: bool) {
    let env = clone_repo(&t.env);
    let root = t.tree.root.as_path();
    killed(&env, failpoint, &["--json", "backup"], &[root]);
    let packs_after_kill = pack_names(&env);

    // Nothing lost: the repository checks clean and s1 restores exactly.
    env.check_clean();
    compare_trees(&t.golden1, &env.restore_of(&t.s1, root));
    // A snapshot the killed run managed to write is complete.
    let before_rerun = env.snapshot_ids();
    for s in before_rerun.iter().filter(|s| **s != t.s1) {
        compare_trees(root, &env.restore_of(s, root));
    }

    // The next backup succeeds and its snapshot restores exactly.
    let summary = env.backup_json(&[root], &[]);
    let s2 = summary["snapshot_id"].as_str().unwrap().to_string();
    compare_trees(root, &env.restore_of(&s2, root));

    // It reused the killed run's packs: all are still there, and none is
    // left outside the index.
    let now = pack_names(&env);
    let gone: Vec<_> = packs_after_kill.difference(&now).collect();
    assert!(gone.is_empty(), "{failpoint}: packs disappeared: {gone:?}");
    let check = env.check_clean();
    let infos = unindexed_infos(&check);
    assert!(
        infos.is_empty(),
        "{failpoint}: after the rerun, packs of the killed backup are still unindexed (not reused): {infos:?}"
    );
    if all_uploaded {
        // At most a few new trees: the ancestors of `src` (the temporary
        // directory's parents) change as other tests create directories.
        assert!(
            num(&summary, "data_added") < 64 * 1024,
            "{failpoint}: every blob was uploaded before the kill, yet the rerun added data: {summary}"
        );
    }
}

#[test]
fn backup_killed_at_every_stage_loses_nothing() {
    let t = backup_template();
    // The ~4.5 MiB of new data in 1 MiB packs (chunks of at most 1.5 MiB,
    // the file size) make at least two data packs and a tree pack, in that
    // order; the exact count varies with the chunker's key and the threads.
    // A1: lock taken, nothing uploaded yet.
    backup_killed_at(&t, "before-put:pack:1", false);
    // A3: some packs uploaded, no index segment.
    backup_killed_at(&t, "after-put:pack:2", false);
    // A3: every pack uploaded, killed before the index segment.
    backup_killed_at(&t, "before-put:index:1", true);
    // A4: index segment written, killed before the snapshot.
    backup_killed_at(&t, "before-put:snapshot:1", true);
    // A5: snapshot written, killed before the lock was removed.
    backup_killed_at(&t, "after-put:snapshot:1", true);
}

#[test]
fn backup_killed_before_its_lock_leaves_nothing() {
    let t = backup_template();
    let env = clone_repo(&t.env);
    let before = env.repo_listing();
    killed(&env, "before-put:lock:1", &["backup"], &[&t.tree.root]);
    assert_eq!(
        env.repo_listing(),
        before,
        "a backup killed before its lock wrote objects"
    );
    assert!(env.objects("locks").is_empty());
    env.check_clean();
    compare_trees(&t.golden1, &env.restore_of(&t.s1, &t.tree.root));
}

/// `backup --stdin` fed `data`, with a failpoint (or none).
fn stdin_backup(env: &Env, data: &[u8], failpoint: Option<&str>) -> std::process::Output {
    let mut inv = env
        .coffer()
        .args(["--json", "backup", "--stdin", "--stdin-name", "dump.sql"]);
    if let Some(fp) = failpoint {
        inv = inv.env("COFFER_FAILPOINT", fp);
    }
    let mut child = inv.spawn();
    let mut stdin = child.stdin.take().unwrap();
    // The process may die before it read everything: a broken pipe is expected then.
    let _ = stdin.write_all(data);
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn stdin_backup_killed_mid_stream_leaves_no_snapshot_and_rerun_reuses_its_packs() {
    // doc/reliability.md A10, scaled down.
    let template = Env::new();
    template.init_with(&["--pack-size", "1M"]);
    let data = Rng::new(77).bytes(5 * MIB);
    for (failpoint, all_uploaded) in [("after-put:pack:2", false), ("before-put:index:1", true)] {
        let env = clone_repo(&template);
        let out = stdin_backup(&env, &data, Some(failpoint));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{failpoint}: not killed at the failpoint; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            env.snapshot_ids().is_empty(),
            "{failpoint}: a snapshot was written"
        );
        env.check_clean();
        // What the killed run left durable: packs under their names, not
        // the temporary files of writes it never committed. Which chunks
        // those are depends on which sealer and upload thread finished
        // first, not only on the failpoint, so the rerun is held to
        // exactly that.
        let left: u64 = env
            .repo_listing()
            .iter()
            .filter(|(p, _)| p.starts_with("packs") && !p.to_string_lossy().contains(".tmp-"))
            .map(|(_, n)| n)
            .sum();

        let out = stdin_backup(&env, &data, None);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{failpoint}: rerun failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        let added = num(&summary, "data_added");
        if all_uploaded {
            // Only the new one-file tree (its mtime is the time of the run).
            assert!(
                added < 4096,
                "{failpoint}: the rerun uploaded the stream again: {summary}"
            );
        } else {
            // Everything the killed run made durable is reused: the rerun
            // adds only the rest (pack framing makes `left` a little more
            // than the data it holds, never less).
            assert!(
                left > 0,
                "{failpoint}: the killed run left no pack to reuse"
            );
            assert!(
                added + left <= data.len() as u64 + 4096,
                "{failpoint}: the rerun re-uploaded what the killed run stored ({left} bytes of packs): {summary}"
            );
        }
        let target = env.restore_of("latest", Path::new("/"));
        assert!(
            fs::read(target.join("dump.sql")).unwrap() == data,
            "{failpoint}: the stream snapshot does not restore byte for byte"
        );
        assert!(unindexed_infos(&env.check_clean()).is_empty());
    }
}

// ---------------------------------------------------------------------------
// prune and forget

/// A repository where `prune` has whole packs to delete and partly used
/// packs to repack: 64-256 KiB chunks in 1 MiB packs, one reader thread so
/// packs hold consecutive chunks; `s1` (files a1, a1k, a2, k1, k2) was
/// forgotten, `s2` (a1k, k1, k2: a1 and a2 deleted) is kept.
struct PruneTemplate {
    env: Env,
    tree: TreeBuilder,
    s2: String,
}

fn prune_template() -> PruneTemplate {
    let env = Env::new();
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
    for (i, name) in ["a1.bin", "a2.bin", "k1.bin", "k2.bin"].iter().enumerate() {
        t.random_file(name, 3 * MIB / 2, 100 + i as u64);
    }
    t.file("small.txt", b"kept\n");
    // A small kept file stored between a1 and a2 always shares a pack with
    // some of their chunks, so there is a pack to repack whatever the
    // chunk boundaries (they follow the repository's random chunker key:
    // with a pack boundary on the a2/k1 file boundary, no pack was mixed).
    // One reader and one pool thread store blobs in file order.
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
    let s2 = backup()["snapshot_id"].as_str().unwrap().to_string();
    env.coffer().args(["forget", "--keep-last", "1"]).run().ok();
    assert_eq!(env.snapshot_ids(), vec![s2.clone()]);
    let plan = env
        .coffer()
        .args(["--json", "prune", "--dry-run"])
        .run()
        .ok()
        .json();
    assert!(
        num(&plan, "packs_to_delete") >= 2 && num(&plan, "packs_to_repack") >= 1,
        "the template does not exercise both deletion and repacking: {plan}"
    );
    PruneTemplate { env, tree: t, s2 }
}

/// After a prune killed at `failpoint`: nothing lost, the next prune
/// finishes the job, and the repository stays check-clean.
fn prune_killed_at(t: &PruneTemplate, failpoint: &str) {
    let env = clone_repo(&t.env);
    let root = t.tree.root.as_path();
    killed(&env, failpoint, &["prune"], &[]);
    env.check_clean();
    compare_trees(root, &env.restore_of(&t.s2, root));

    env.coffer().arg("prune").run().ok();
    env.check_clean();
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
            "{failpoint}: the prune after the kill left work: {plan}"
        );
    }
}

#[test]
fn prune_killed_at_every_stage_loses_nothing() {
    let t = prune_template();
    let segments = t.env.objects("index").len();
    assert!(
        segments >= 2,
        "expected one segment per backup, got {segments}"
    );

    for fp in [
        // B1: before the repacked pack is written; after it, before the new index.
        "before-put:pack:1",
        "before-put:index:1",
        // B2: the new index is written, the old segments are not yet deleted.
        "after-put:index:1",
        "before-delete:index:2",
        // B3: before and in the middle of deleting packs.
        "before-delete:pack:1",
        "before-delete:pack:2",
    ] {
        prune_killed_at(&t, fp);
    }
}

#[test]
fn forget_killed_between_deletions_removes_fewer_snapshots_and_nothing_else() {
    // doc/reliability.md B4.
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    let mut snaps = Vec::new();
    for i in 0..3u64 {
        t.random_file(format!("f{i}.bin"), 64 * 1024, i);
        snaps.push(
            env.backup_json(&[&t.root], &[])["snapshot_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let before = env.repo_listing();
    killed(
        &env,
        "before-delete:snapshot:2",
        &["forget", "--keep-last", "1"],
        &[],
    );
    let left = env.snapshot_ids();
    assert_eq!(
        left.len(),
        2,
        "exactly one snapshot should be gone: {left:?}"
    );
    assert!(left.contains(&snaps[2]), "the newest snapshot was removed");
    let after = env.repo_listing();
    let removed: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    assert_eq!(
        removed.len(),
        1,
        "more than one object removed: {removed:?}"
    );
    assert!(removed[0].starts_with("snapshots"), "{removed:?}");
    assert_eq!(after.len() + 1, before.len(), "objects were added");
    env.check_clean();
    for s in &left {
        env.restore_of(s, &t.root);
    }
    compare_trees(&t.root, &env.restore_of(&snaps[2], &t.root));
    env.coffer()
        .args(["forget", "--keep-last", "1", "--prune"])
        .run()
        .ok();
    assert_eq!(env.snapshot_ids(), vec![snaps[2].clone()]);
    env.check_clean();
}

// ---------------------------------------------------------------------------
// full disk

/// Names of every object under the repository that a put left at a
/// temporary name (`.tmp-` infix).
fn temp_objects(env: &Env) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if e.file_name().to_string_lossy().contains(".tmp-") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&env.repo, &mut out);
    out
}

/// doc/reliability.md E1: the repository's disk fills while a backup writes a
/// pack (in the middle of a 24 MiB file, on the overlapped big-file path),
/// its index segment or its snapshot. Each time: exit 1 with "repository
/// disk full", no snapshot, nothing half-written under a final name or
/// left at a temporary one, the repository checks clean; once there is
/// room again, the next backup completes and restores byte for byte.
#[test]
fn a_full_repository_disk_fails_cleanly_and_the_next_backup_works() {
    for point in [
        "enospc-put:pack:3",
        "enospc-put:index:1",
        "enospc-put:snapshot:1",
    ] {
        let env = Env::new();
        env.init_with(&["--pack-size", "1M"]);
        let t = TreeBuilder::new(env.path("src"));
        t.random_file("big.bin", 24 * MIB, 7);
        for i in 0..20 {
            t.file(format!("small/{i}.txt"), format!("file {i}\n").as_bytes());
        }
        let r = env
            .coffer()
            .env("COFFER_FAILPOINT", point)
            .args(["backup"])
            .arg(&t.root)
            .run()
            .expect_code(1)
            .stderr_has("repository disk full");
        let first_line = r
            .stderr
            .lines()
            .find(|l| l.contains("disk full"))
            .unwrap_or("");
        assert!(
            first_line.contains("free some space"),
            "{point}: the error does not say what to do: {}",
            r.stderr
        );
        assert!(
            env.snapshot_ids().is_empty(),
            "{point}: a snapshot was committed"
        );
        let left = temp_objects(&env);
        assert!(left.is_empty(), "{point}: temporary objects left: {left:?}");
        // Every object at a final name is whole (check reads every pack).
        env.check_clean();

        let summary = env.backup_json(&[&t.root], &[]);
        let snap = summary["snapshot_id"].as_str().unwrap().to_string();
        compare_trees(&t.root, &env.restore_of(&snap, &t.root));
        assert!(unindexed_infos(&env.check_clean()).is_empty(), "{point}");
        // What the failed run wrote is reused, not uploaded again: when
        // only the index or the snapshot failed, every pack was written;
        // when the third pack failed, at least two were, so storing them
        // again would take the packs past the 24 MiB of (incompressible)
        // content by at least two chunks (256 KiB or more each).
        if point.contains(":pack:") {
            let packs = dir_size(&env.repo.join("packs"));
            assert!(
                packs < (24 * MIB + 256 * 1024) as u64,
                "{point}: {packs} bytes of packs for 24 MiB of content: stored twice?"
            );
        } else {
            let added = num(&summary, "data_added");
            assert!(
                added < 64 * 1024,
                "{point}: the rerun stored again what was written: {summary}"
            );
        }
    }
}
