//! Offsite copies (doc/reliability.md 4.M, 4.C): `init --from-repo` and
//! `copy --from-repo`, through the real binary. The source is the
//! environment's repository; the destination is `offsite/` beside it.

use crate::support::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const MIB: usize = 1024 * 1024;
/// Exit code of a process that died by `abort()` (128 + SIGABRT).
const ABORTED: i32 = 128 + libc::SIGABRT;

fn offsite(env: &Env) -> PathBuf {
    env.path("offsite")
}

/// `coffer --repo offsite` with the source's password for `--from-repo`.
fn dst<'a>(env: &'a Env) -> Invocation<'a> {
    env.coffer()
        .no_repo()
        .arg("--repo")
        .arg(offsite(env))
        .env("COFFER_FROM_PASSWORD", PASSWORD)
}

fn init_offsite(env: &Env) {
    dst(env)
        .args(["init", "--from-repo"])
        .arg(&env.repo)
        .run()
        .ok();
}

/// `copy --json` into the offsite repository; returns its JSON lines.
fn copy(env: &Env, extra: &[&str]) -> Vec<serde_json::Value> {
    let r = dst(env)
        .args(["--json", "copy", "--from-repo"])
        .arg(&env.repo)
        .args(extra)
        .run()
        .ok();
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn summary(lines: &[serde_json::Value]) -> &serde_json::Value {
    let last = lines.last().expect("copy printed nothing");
    assert_eq!(last["message_type"], "summary", "{last}");
    last
}

/// Every file of a repository but its locks, with a hash of its bytes.
fn fingerprint(repo: &Path) -> BTreeMap<PathBuf, blake3::Hash> {
    let mut out = BTreeMap::new();
    let mut stack = vec![repo.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.starts_with(repo.join("locks")) {
                out.insert(p.clone(), blake3::hash(&fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// The destination's latest snapshot restores to exactly `root`,
/// metadata included.
fn offsite_restores(env: &Env, root: &Path) {
    let target = env.path("restored");
    let _ = fs::remove_dir_all(&target);
    dst(env)
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run()
        .ok();
    compare_trees(root, &restored(&target, root));
}

/// `check --read-data` of the destination finds nothing wrong (M5).
fn offsite_checks_clean(env: &Env) {
    let v = dst(env)
        .args(["--json", "check", "--read-data"])
        .run()
        .ok()
        .json();
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(0), "{v}");
}

/// An application home with awkward entries, backed up twice.
fn source_with_two_snapshots(env: &Env) -> TreeBuilder {
    env.init();
    let t = TreeBuilder::new(env.path("home"));
    write_mixed_file(&t.path("db/big.dat"), 3 * MIB as u64, 1);
    t.random_file("models-user-a/weights.bin", MIB + 17, 2);
    t.file("models-user-a/config.json", b"{\"layers\": 4}\n");
    t.file("notes/n\u{e9}e.txt", &b"text\n".repeat(3000));
    t.symlink("current", "models-user-a");
    t.hardlink("db/big.link", "db/big.dat");
    t.dir("empty");
    t.mode("models-user-a/config.json", 0o640);
    t.set_all_mtimes();
    env.backup_json(&[&t.root], &["--tag", "nightly"]);
    t.file("logs/day2.log", b"second day\n");
    env.backup_json(&[&t.root], &["--tag", "nightly"]);
    t
}

#[test]
fn copy_restores_byte_for_byte_and_a_rerun_copies_nothing() {
    let env = Env::new();
    let t = source_with_two_snapshots(&env);
    init_offsite(&env);
    let before = fingerprint(&env.repo);

    let lines = copy(&env, &[]);
    assert_eq!(summary(&lines)["snapshots_copied"], 2, "{lines:?}");
    // The source is only read (doc/reliability.md M3): no object added,
    // changed or removed, and no lock left behind.
    assert_eq!(fingerprint(&env.repo), before);
    assert_eq!(fs::read_dir(env.repo.join("locks")).unwrap().count(), 0);

    // Both copies restore exactly, metadata included, and the
    // destination checks clean down to the data (M5).
    offsite_restores(&env, &t.root);
    offsite_checks_clean(&env);
    let snaps = dst(&env).args(["--json", "snapshots"]).run().ok().json();
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[1]["tags"][0], "nightly");
    // The second copy's parent is the first copy, not a source id.
    assert_eq!(snaps[1]["parent"], snaps[0]["id"]);

    // A rerun finds both and writes nothing (M1).
    let listing = fs::read_dir(offsite(&env).join("packs")).unwrap().count();
    let again = copy(&env, &[]);
    let s = summary(&again);
    assert_eq!(
        (
            s["snapshots_copied"].as_u64(),
            s["snapshots_present"].as_u64()
        ),
        (Some(0), Some(2))
    );
    assert_eq!(
        fs::read_dir(offsite(&env).join("packs")).unwrap().count(),
        listing
    );
}

#[test]
fn a_nightly_copy_moves_only_what_changed() {
    let env = Env::new();
    let t = source_with_two_snapshots(&env);
    init_offsite(&env);
    copy(&env, &[]);
    let grown_before = dir_size(&offsite(&env));
    // Next night: one new model file, everything else as it was.
    // Below the smallest chunk: one blob, whatever the repository's cuts.
    t.random_file("models-user-b/weights.bin", 200_000, 9);
    env.backup_json(&[&t.root], &[]);
    let lines = copy(&env, &["latest"]);
    let snap = &lines[0];
    assert_eq!(snap["copied"], true, "{snap}");
    assert_eq!(
        snap["blobs_copied"], 1,
        "only the new file's content: {snap}"
    );
    // The unchanged directories were not even read: the previous copy,
    // marked complete, vouches for them. Read: the trees from the root
    // down to `home`, and the new directory.
    let depth = t.root.components().count() as u64;
    assert_eq!(snap["trees_read"].as_u64(), Some(depth + 1), "{snap}");
    // db, models-user-a, notes, empty, logs.
    assert_eq!(snap["trees_skipped"], 5, "{snap}");
    let grown = dir_size(&offsite(&env)) - grown_before;
    assert!(
        grown < 300_000,
        "the destination grew by {grown} bytes for a 200 kB file"
    );
    offsite_restores(&env, &t.root);
    // Backups straight into the offsite repository deduplicate against
    // the copied data: the same key and the same chunk cuts.
    let r = dst(&env).args(["--json", "backup"]).arg(&t.root).run().ok();
    let s = r.summary();
    assert!(num(&s, "data_added") < 64 * 1024, "{s}");
}

/// doc/reliability.md M2, M4: into a repository with its own key, every id
/// is rewritten, and what restores is the same tree, names that are not
/// UTF-8 and metadata included; a rerun finds the copies.
#[test]
fn copy_into_an_unrelated_repository_rewrites_every_id() {
    let env = Env::new();
    let t = source_with_two_snapshots(&env);
    t.file(
        OsStr::from_bytes(b"latin1-\xe9t\xe9.txt"),
        b"not UTF-8 in its name\n",
    );
    t.symlink("odd-link", OsStr::from_bytes(b"target-\xff"));
    env.backup_json(&[&t.root], &[]);
    dst(&env).arg("init").run().ok();
    let before = fingerprint(&env.repo);
    let r = dst(&env)
        .args(["copy", "--from-repo"])
        .arg(&env.repo)
        .run()
        .ok()
        .stderr_has("do not share keys");
    assert!(r.stdout.contains("copied as"), "{}", r.stdout);
    assert_eq!(fingerprint(&env.repo), before, "the source was written to");
    offsite_restores(&env, &t.root);
    offsite_checks_clean(&env);
    // No source id made it into the destination: its trees name other ids.
    let src_tree = env.coffer().args(["--json", "snapshots"]).run().ok().json()[2]["tree"].clone();
    let dst_tree = dst(&env).args(["--json", "snapshots"]).run().ok().json()[2]["tree"].clone();
    assert_ne!(src_tree, dst_tree);
    let again = copy(&env, &[]);
    assert_eq!(summary(&again)["snapshots_copied"], 0, "{again:?}");
}

#[test]
fn the_same_repository_a_wrong_password_or_no_source_are_clear_errors() {
    let env = Env::new();
    source_with_two_snapshots(&env);
    env.coffer()
        .env("COFFER_FROM_PASSWORD", PASSWORD)
        .args(["copy", "--from-repo"])
        .arg(&env.repo)
        .run()
        .expect_code(1)
        .stderr_has("same repository");
    init_offsite(&env);
    let before = fingerprint(&offsite(&env));
    // A wrong source password names the source.
    dst(&env)
        .env("COFFER_FROM_PASSWORD", "wrong")
        .args(["copy", "--from-repo"])
        .arg(&env.repo)
        .run()
        .expect_code(1)
        .stderr_has(&env.repo.display().to_string());
    dst(&env)
        .arg("copy")
        .run()
        .expect_code(1)
        .stderr_has("--from-repo");
    assert_eq!(fingerprint(&offsite(&env)), before);
}

/// doc/reliability.md C1: killed after some packs were copied, the
/// destination has no snapshot without its data, and a rerun finishes
/// without copying again what the first run stored.
#[test]
fn a_copy_killed_midway_leaves_no_snapshot_and_the_rerun_reuses_its_packs() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("data"));
    for i in 0..4 {
        t.random_file(format!("f{i}.bin"), 3 * MIB, 40 + i as u64);
    }
    env.backup_json(&[&t.root], &[]);
    init_offsite(&env);
    let r = dst(&env)
        .args(["copy", "--from-repo"])
        .arg(&env.repo)
        .env("COFFER_FAILPOINT", "after-put:pack:1")
        .run_any();
    assert_eq!(r.code, ABORTED, "{}\n{}", r.stdout, r.stderr);
    assert!(
        fs::read_dir(offsite(&env).join("snapshots"))
            .unwrap()
            .next()
            .is_none()
    );
    let written = dir_size(&offsite(&env).join("packs"));
    assert!(written > 0);
    let lines = copy(&env, &[]);
    let s = &lines[0];
    let copied = s["bytes_copied"].as_u64().unwrap();
    assert!(
        copied < 12 * MIB as u64,
        "the rerun copied {copied} bytes: what the killed run stored was copied again\n{s}"
    );
    offsite_restores(&env, &t.root);
}

/// doc/reliability.md C2: a damaged source blob stops the copy naming its
/// pack; the destination gets no snapshot for it and the source is not
/// touched.
#[test]
fn a_damaged_source_stops_the_copy_and_names_the_pack() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("data"));
    t.random_file("only.bin", 2 * MIB, 5);
    env.backup_json(&[&t.root], &[]);
    init_offsite(&env);
    // The biggest pack holds the file's data.
    let pack = env
        .objects("packs")
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    flip_byte(&pack, 1000);
    let before = fingerprint(&env.repo);
    dst(&env)
        .args(["copy", "--from-repo"])
        .arg(&env.repo)
        .run()
        .expect_code(1)
        .stderr_has(&file_name(&pack)[..16]);
    assert!(
        fs::read_dir(offsite(&env).join("snapshots"))
            .unwrap()
            .next()
            .is_none()
    );
    assert_eq!(fingerprint(&env.repo), before);
}

/// Issue 20: a snapshot of the source that does not read is named and
/// makes the copy exit 3; the others are copied. Before, it was skipped in
/// silence and the copy exited 0.
#[test]
fn a_damaged_source_snapshot_is_named_and_the_copy_exits_3() {
    let env = Env::new();
    source_with_two_snapshots(&env);
    init_offsite(&env);
    let snaps = env.objects("snapshots");
    assert_eq!(snaps.len(), 2);
    flip_byte(&snaps[0], 40);
    let damaged = snaps[0].file_name().unwrap().to_string_lossy().to_string();
    let r = dst(&env)
        .args(["copy", "--from-repo"])
        .arg(&env.repo)
        .run()
        .expect_code(3);
    assert!(r.stderr.contains(&damaged[..8]), "{}", r.stderr);
    assert!(
        r.stdout.contains("1 snapshot copied") || r.stderr.contains("1 snapshot copied"),
        "{r:?}"
    );
    let listed = dst(&env).args(["--json", "snapshots"]).run().ok();
    assert_eq!(listed.json().as_array().unwrap().len(), 1);
}
