//! Repair (doc/reliability.md 4.B B6, 4.F; issue 6 point 4): `repair index`
//! rebuilds the index from the packs alone; after a pack is lost, `check`
//! names it, backups refuse to build on it, `repair snapshots` writes
//! copies that leave out exactly the lost files (tagged `repaired`, the
//! originals kept unless `--forget`), reruns give the same result, and the
//! next backup stores the lost content again.

use crate::support::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const MIB: usize = 1024 * 1024;

fn snap_id(summary: &serde_json::Value) -> String {
    summary["snapshot_id"].as_str().unwrap().to_string()
}

/// Two snapshots in 1 MiB packs: `s1` of `a.bin` and `small.txt`, `s2`
/// adding `b.bin`, whose data packs hold nothing but `b.bin` chunks.
struct Fixture {
    env: Env,
    tree: TreeBuilder,
    s1: String,
    s2: String,
    golden1: PathBuf,
    golden2: PathBuf,
    /// Data packs written by the second backup (only `b.bin`).
    b_packs: Vec<PathBuf>,
}

fn fixture() -> Fixture {
    let env = Env::new();
    env.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("a.bin", 3 * MIB / 2, 1);
    t.file("small.txt", b"small\n");
    t.random_file("sub/c.bin", 100 * 1024, 3);
    let s1 = snap_id(&env.backup_json(&[&t.root], &[]));
    let old: BTreeSet<PathBuf> = env.objects("packs").into_iter().collect();
    t.random_file("b.bin", 3 * MIB, 2);
    let s2 = snap_id(&env.backup_json(&[&t.root], &[]));
    let b_packs: Vec<PathBuf> = env
        .objects("packs")
        .into_iter()
        .filter(|p| !old.contains(p))
        .filter(|p| {
            let v = env
                .coffer()
                .args(["cat", "pack", &file_name(p)])
                .run()
                .ok()
                .json();
            v["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["type"] == "data")
        })
        .collect();
    assert!(!b_packs.is_empty(), "the second backup wrote no data pack");
    let golden1 = env.restore_of(&s1, &t.root);
    let golden2 = env.restore_of(&s2, &t.root);
    compare_trees(&t.root, &golden2);
    Fixture {
        env,
        tree: t,
        s1,
        s2,
        golden1,
        golden2,
        b_packs,
    }
}

/// A copy of `golden` without `rel`, the parent directory's times kept.
fn without(golden: &Path, rel: &str, env: &Env) -> PathBuf {
    let copy = env.path(format!("expected-{}", rel.replace('/', "_")));
    let r = std::process::Command::new("cp")
        .arg("-a")
        .arg(golden)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(r.success());
    let victim = copy.join(rel);
    let dir = victim.parent().unwrap().to_path_buf();
    let md = fs::metadata(&dir).unwrap();
    fs::remove_file(&victim).unwrap();
    set_mtime(&dir, md.mtime(), md.mtime_nsec());
    copy
}

fn snapshot_json(env: &Env) -> Vec<serde_json::Value> {
    env.coffer()
        .args(["--json", "snapshots"])
        .run()
        .ok()
        .json()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn repair_index_rebuilds_deleted_segments_from_the_packs() {
    let f = fixture();
    let env = &f.env;
    let packs = env.objects("packs").len() as u64;
    for seg in env.objects("index") {
        fs::remove_file(seg).unwrap();
    }
    // Without an index every snapshot references unknown blobs.
    let r = env.coffer().arg("check").run().expect_code(1);
    for s in [&f.s1, &f.s2] {
        assert!(
            r.stdout.contains(&format!("error: snapshot {}", &s[..8])),
            "{}",
            r.stdout
        );
    }

    for round in 0..2 {
        // Rerunning gives the same result (doc/reliability.md B6).
        let v = env
            .coffer()
            .args(["--json", "repair", "index"])
            .run()
            .ok()
            .json();
        assert_eq!(num(&v, "packs_indexed"), packs, "round {round}: {v}");
        assert_eq!(v["unreadable"], serde_json::json!([]), "{v}");
        assert!(num(&v, "segments_written") >= 1, "{v}");
        env.check_clean();
        compare_trees(&f.golden1, &env.restore_of(&f.s1, &f.tree.root));
        compare_trees(&f.golden2, &env.restore_of(&f.s2, &f.tree.root));
    }
    // Also from a cold cache.
    fs::remove_dir_all(&env.cache).unwrap();
    env.check_clean();
    // And the repository takes backups again, deduplicating against it.
    let s = env.backup_json(&[&f.tree.root], &["--force"]);
    assert!(num(&s, "data_added") < 64 * 1024, "{s}");
}

#[test]
fn repair_index_killed_before_deleting_old_segments_loses_nothing() {
    // doc/reliability.md B6: a kill between the new segments and the deletion
    // of the old ones; rerunning finishes the job.
    let f = fixture();
    let env = &f.env;
    let r = env
        .coffer()
        .args(["repair", "index"])
        .env("COFFER_FAILPOINT", "before-delete:index:1")
        .run_any();
    assert_eq!(r.code, 128 + libc::SIGABRT, "{}", r.stderr);
    env.check_clean();
    compare_trees(&f.golden2, &env.restore_of(&f.s2, &f.tree.root));
    env.coffer().args(["repair", "index"]).run().ok();
    env.check_clean();
    compare_trees(&f.golden1, &env.restore_of(&f.s1, &f.tree.root));
}

#[test]
fn a_lost_pack_is_named_repaired_around_and_stored_again_by_the_next_backup() {
    let f = fixture();
    let env = &f.env;
    let victim = &f.b_packs[0];
    let hex = file_name(victim);
    let victim_len = fs::metadata(victim).unwrap().len();
    fs::remove_file(victim).unwrap();

    // check names the pack, exit 1.
    let r = env.coffer().arg("check").run().expect_code(1);
    assert!(
        r.stdout.contains(&hex) && r.stdout.contains("missing"),
        "{}",
        r.stdout
    );
    // A backup refuses to build on the lost pack, naming it.
    let r = env
        .coffer()
        .arg("backup")
        .arg(&f.tree.root)
        .run()
        .expect_code(1);
    assert!(r.stderr.contains(&hex), "{}", r.stderr);
    assert_eq!(
        env.snapshot_ids().len(),
        2,
        "the refused backup wrote a snapshot"
    );

    // repair snapshots: a copy of s2 without b.bin; s1 is intact.
    let v = env
        .coffer()
        .args(["--json", "repair", "snapshots"])
        .run()
        .ok()
        .json();
    assert_eq!(num(&v, "intact"), 1, "{v}");
    assert_eq!(v["missing_packs"], serde_json::json!([hex]), "{v}");
    let rewritten = v["rewritten"].as_array().unwrap();
    assert_eq!(rewritten.len(), 1, "{v}");
    assert_eq!(rewritten[0]["old"], f.s2.as_str(), "{v}");
    let b_path = f.tree.path("b.bin");
    assert_eq!(
        rewritten[0]["left_out"],
        serde_json::json!([b_path.to_str().unwrap()]),
        "{v}"
    );
    let repaired = rewritten[0]["new"].as_str().unwrap().to_string();
    let snaps = snapshot_json(env);
    let rs = snaps.iter().find(|s| s["id"] == repaired.as_str()).unwrap();
    assert!(
        rs["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "repaired"),
        "{rs}"
    );
    assert_eq!(rs["parent"], f.s2.as_str(), "{rs}");

    // The repaired copy restores everything but b.bin; s1 restores fully.
    let expected = without(&f.golden2, "b.bin", env);
    compare_trees(&expected, &env.restore_of(&repaired, &f.tree.root));
    compare_trees(&f.golden1, &env.restore_of(&f.s1, &f.tree.root));

    // The original is kept, and check still fails on it alone.
    assert!(env.snapshot_ids().contains(&f.s2));
    let r = env.coffer().args(["--json", "check"]).run().expect_code(1);
    let errors = r.json()["errors"].as_array().unwrap().clone();
    assert!(!errors.is_empty());
    for e in &errors {
        let e = e.as_str().unwrap();
        assert!(
            e.contains(&f.s2[..8]) && !e.contains(&repaired[..8]),
            "an error that is not about the damaged original: {e}"
        );
    }

    // --forget removes the original and reuses the repaired copy.
    let v = env
        .coffer()
        .args(["--json", "repair", "snapshots", "--forget"])
        .run()
        .ok()
        .json();
    assert_eq!(v["rewritten"][0]["new"], repaired.as_str(), "{v}");
    let mut ids = env.snapshot_ids();
    ids.sort();
    let mut want = vec![f.s1.clone(), repaired.clone()];
    want.sort();
    assert_eq!(ids, want, "a rerun should reuse the repaired copy");
    env.check_clean();
    // A third run finds nothing to do.
    let v = env
        .coffer()
        .args(["--json", "repair", "snapshots", "--forget"])
        .run()
        .ok()
        .json();
    assert_eq!(v["rewritten"], serde_json::json!([]), "{v}");

    // The next backup stores the lost content again and restores fully.
    let s = env.backup_json(&[&f.tree.root], &[]);
    // Which chunks of b.bin share the lost pack depends on sealing order,
    // so the bound is the pack's own size (its blobs are incompressible),
    // not a fixed figure.
    assert!(
        num(&s, "data_added") * 2 > victim_len,
        "the lost content ({victim_len} bytes of pack) was not uploaded again: {s}"
    );
    compare_trees(&f.tree.root, &env.restore_of(&snap_id(&s), &f.tree.root));
    env.check_clean();
    compare_trees(&expected, &env.restore_of(&repaired, &f.tree.root));
}

#[test]
fn repair_snapshots_on_a_healthy_repository_changes_nothing() {
    let f = fixture();
    let env = &f.env;
    let before = env.repo_listing();
    let v = env
        .coffer()
        .args(["--json", "repair", "snapshots", "--forget"])
        .run()
        .ok()
        .json();
    assert_eq!(num(&v, "intact"), 2, "{v}");
    assert_eq!(v["rewritten"], serde_json::json!([]), "{v}");
    assert_eq!(
        env.repo_listing(),
        before,
        "repair snapshots changed a healthy repository"
    );
}

/// A snapshot file that no longer reads blocks `prune` and cannot be
/// forgotten by id (it cannot be read); `repair snapshots` names it (exit
/// 3) and with `--forget` removes it, after which prune runs again and the
/// other snapshot restores.
#[test]
fn an_unreadable_snapshot_file_is_removed_by_repair_snapshots_forget() {
    let f = fixture();
    let env = &f.env;
    let path = env.repo.join("snapshots").join(&f.s2);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..50]).unwrap();
    env.coffer()
        .arg("prune")
        .run()
        .expect_code(1)
        .stderr_has("repair snapshots --forget");
    env.coffer()
        .args(["forget", &f.s2])
        .run()
        .expect_code(1)
        .stderr_has("repair snapshots --forget");
    let r = env
        .coffer()
        .args(["repair", "snapshots"])
        .run()
        .expect_code(3);
    assert!(r.stderr.contains(&f.s2), "{}", r.stderr);
    assert!(
        path.exists(),
        "repair without --forget removed the snapshot file"
    );
    let v = env
        .coffer()
        .args(["--json", "repair", "snapshots", "--forget"])
        .run()
        .ok()
        .json();
    assert_eq!(v["unreadable"], serde_json::json!([f.s2]), "{v}");
    assert_eq!(v["unreadable_removed"], true, "{v}");
    assert!(
        !path.exists(),
        "the unreadable snapshot file is still there"
    );
    env.coffer().arg("prune").run().ok();
    env.check_clean();
    compare_trees(&f.golden1, &env.restore_of(&f.s1, &f.tree.root));
}

/// A flipped byte inside a pack (doc/reliability.md §0.3, bit rot): `check
/// --read-data` names the pack and `repair packs`; `repair packs` moves
/// the blobs that still verify into a new pack, moves the damaged one to
/// `damaged/` and drops the lost blob from the index, so the next plain backup reads
/// the file again and stores the lost chunk, instead of deduplicating
/// against damage. Every snapshot then restores whole.
#[test]
fn repair_packs_salvages_a_damaged_pack_and_the_next_backup_heals_it() {
    let f = fixture();
    let env = &f.env;
    let victim = &f.b_packs[0];
    let name = file_name(victim);
    let len = fs::metadata(victim).unwrap().len();
    flip_byte(victim, len / 3);
    let damaged_bytes = fs::read(victim).unwrap();
    let r = env
        .coffer()
        .args(["check", "--read-data"])
        .run()
        .expect_code(1);
    assert!(
        r.stdout.contains(&format!("coffer repair packs {name}")),
        "{}",
        r.stdout
    );
    env.coffer()
        .args(["repair", "packs", "not-a-pack-id"])
        .run()
        .expect_code(1)
        .stderr_has("not a pack id");
    let r = env
        .coffer()
        .args(["--json", "repair", "packs"])
        .run()
        .expect_code(3);
    let v = r.json();
    assert_eq!(v["damaged"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["damaged"][0]["pack"], name.as_str(), "{v}");
    assert_eq!(v["blobs_lost"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(
        !victim.exists(),
        "the damaged pack is still among the packs"
    );
    // ...but not deleted: the only copy of the lost blob is kept aside.
    assert_eq!(
        fs::read(env.repo.join("damaged").join(&name)).unwrap(),
        damaged_bytes
    );
    // The lost chunk is no longer indexed: check says so, and a backup
    // of the unchanged tree (no --force) stores it again.
    env.coffer().arg("check").run().expect_code(1);
    let s = env.backup_json(&[&f.tree.root], &[]);
    assert!(num(&s, "data_added") > 0, "nothing stored again: {s}");
    env.coffer().args(["check", "--read-data"]).run().ok();
    compare_trees(&f.golden2, &env.restore_of(&f.s2, &f.tree.root));
    compare_trees(&f.golden1, &env.restore_of(&f.s1, &f.tree.root));
    // A sound repository: nothing to do.
    let before = env.repo_listing();
    let v = env
        .coffer()
        .args(["--json", "repair", "packs"])
        .run()
        .ok()
        .json();
    assert_eq!(v["damaged"], serde_json::json!([]), "{v}");
    assert_eq!(env.repo_listing(), before);
}

/// doc/reliability.md B6: `repair packs` killed just before it deletes the
/// damaged pack (its salvage already durable, the damaged bytes already
/// under `damaged/`) loses nothing, and a rerun finishes the job.
#[test]
fn repair_packs_killed_before_deleting_the_damaged_pack_loses_nothing() {
    let f = fixture();
    let env = &f.env;
    let victim = &f.b_packs[0];
    let name = file_name(victim);
    let len = fs::metadata(victim).unwrap().len();
    flip_byte(victim, len / 3);
    let r = env
        .coffer()
        .args(["repair", "packs"])
        .env("COFFER_FAILPOINT", "before-delete:packs:1")
        .run_any();
    assert_eq!(r.code, 128 + libc::SIGABRT, "{}", r.stderr);
    assert!(victim.exists() && env.repo.join("damaged").join(&name).exists());
    // Everything that restored before still does.
    compare_trees(&f.golden1, &env.restore_of(&f.s1, &f.tree.root));
    let v = env
        .coffer()
        .args(["--json", "repair", "packs"])
        .run()
        .expect_code(3)
        .json();
    assert_eq!(v["damaged"][0]["pack"], name.as_str(), "{v}");
    assert!(!victim.exists());
    let s = env.backup_json(&[&f.tree.root], &[]);
    assert!(num(&s, "data_added") > 0, "{s}");
    env.coffer().args(["check", "--read-data"]).run().ok();
    compare_trees(&f.golden2, &env.restore_of(&f.s2, &f.tree.root));
}

/// Issue 19.1: the local index cache is only a copy. A byte flipped in it
/// (each of a fixed list of offsets, one at a time) must never make
/// `check` blame an intact pack, nor `repair packs` move one aside: both
/// judge packs against the repository's own index segments and rebuild a
/// cache that disagrees, saying it was the cache that was wrong. Every
/// snapshot still restores.
#[test]
fn a_damaged_index_cache_never_gets_an_intact_pack_blamed_or_moved() {
    let f = fixture();
    let env = &f.env;
    // A settled cache: everything in the database file, no WAL to replay.
    env.check_clean();
    let cache_file = fs::read_dir(&env.cache)
        .unwrap()
        .map(|e| e.unwrap().path().join("index.sqlite"))
        .find(|p| p.is_file())
        .expect("the index cache file");
    let pristine = env.path("cache-pristine");
    copy_dir(&env.cache, &pristine);
    let put_back = || {
        fs::remove_dir_all(&env.cache).unwrap();
        copy_dir(&pristine, &env.cache);
    };
    let before = env.repo_listing();
    let len = fs::metadata(&cache_file).unwrap().len();
    // Cells fill a page from its end, so offsets late in each page land
    // in rows; a few early ones hit page headers and free space.
    let offsets: Vec<u64> = (1..len / 4096)
        .flat_map(|page| [page * 4096 + 3900, page * 4096 + 4000, page * 4096 + 2100])
        .collect();
    let mut cache_blamed = 0;
    for &off in &offsets {
        put_back();
        flip_byte(&cache_file, off);
        let r = env.coffer().args(["--json", "check"]).run();
        assert_eq!(
            r.code, 0,
            "offset {off}: check blamed the repository for a damaged cache:\n{}\n{}",
            r.stdout, r.stderr
        );
        if r.stdout.contains("cache") {
            cache_blamed += 1;
        }
        put_back();
        flip_byte(&cache_file, off);
        let r = env.coffer().args(["--json", "repair", "packs"]).run();
        assert_eq!(
            r.code, 0,
            "offset {off}: repair packs failed:\n{}\n{}",
            r.stdout, r.stderr
        );
        let v = r.json();
        assert_eq!(v["damaged"], serde_json::json!([]), "offset {off}: {v}");
        assert_eq!(
            env.repo_listing(),
            before,
            "offset {off}: repair packs changed a sound repository"
        );
        compare_trees(&f.golden2, &env.restore_of(&f.s2, &f.tree.root));
    }
    compare_trees(&f.golden1, &env.restore_of(&f.s1, &f.tree.root));
    assert!(
        cache_blamed > 0,
        "no offset damaged anything check noticed: the test did not test"
    );
}

/// Issue 19.2: a byte flipped in a pack's trailer leaves every blob of
/// the pack intact (and every snapshot restorable through the index).
/// Following the README's order, `repair index` then `repair packs`, must
/// keep those blobs: the index keeps the old entries of a pack whose
/// trailer does not read, and `repair packs` salvages the blobs from them.
#[test]
fn repairing_a_pack_with_a_damaged_trailer_keeps_its_intact_blobs() {
    let f = fixture();
    let env = &f.env;
    let victim = &f.b_packs[0];
    let name = file_name(victim);
    let len = fs::metadata(victim).unwrap().len();
    flip_byte(victim, len - 10);
    // Restore uses the blobs (each verifies) and warns about the pack.
    let restores_warning = || {
        let target = env.path("restore-warned");
        let _ = fs::remove_dir_all(&target);
        let r = env
            .coffer()
            .args(["restore", &f.s2, "--target"])
            .arg(&target)
            .run()
            .expect_code(3);
        assert!(r.stderr.contains(&name), "{}", r.stderr);
        compare_trees(&f.golden2, &restored(&target, &f.tree.root));
    };
    restores_warning();
    let r = env
        .coffer()
        .args(["check", "--read-data"])
        .run()
        .expect_code(1);
    assert!(
        r.stdout.contains(&format!("coffer repair packs {name}")),
        "{}",
        r.stdout
    );

    let r = env
        .coffer()
        .args(["--json", "repair", "index"])
        .run()
        .expect_code(3);
    let v = r.json();
    assert_eq!(v["unreadable"], serde_json::json!([]), "{v}");
    let kept = v["trailer_damaged"].as_array().expect("trailer_damaged");
    assert_eq!(kept.len(), 1, "{v}");
    assert_eq!(kept[0]["pack"], name.as_str(), "{v}");
    assert!(num(&kept[0], "blobs_listed") > 0, "{v}");
    assert_eq!(kept[0]["blobs_verified"], kept[0]["blobs_listed"], "{v}");
    assert!(
        r.stderr.contains(&format!("coffer repair packs {name}")),
        "{}",
        r.stderr
    );
    restores_warning();

    let v = env
        .coffer()
        .args(["--json", "repair", "packs"])
        .run()
        .ok()
        .json();
    assert_eq!(v["damaged"][0]["pack"], name.as_str(), "{v}");
    assert_eq!(v["blobs_lost"], serde_json::json!([]), "{v}");
    assert!(num(&v, "blobs_salvaged") > 0, "{v}");
    env.check_clean();
    compare_trees(&f.golden1, &env.restore_of(&f.s1, &f.tree.root));
    compare_trees(&f.golden2, &env.restore_of(&f.s2, &f.tree.root));
    // No file content needs storing again.
    let s = env.backup_json(&[&f.tree.root], &[]);
    assert!(num(&s, "data_added") < 4096, "{s}");
    compare_trees(&f.tree.root, &env.restore_of(&snap_id(&s), &f.tree.root));
}

/// Issue 19.8: two snapshots share the tree that lost a file; each
/// repaired copy must say what it left out, not only the first.
#[test]
fn repair_snapshots_names_what_each_snapshot_sharing_a_damaged_tree_lost() {
    let f = fixture();
    let env = &f.env;
    // Same tree as s2, another snapshot.
    let s3 = snap_id(&env.backup_json(&[&f.tree.root], &[]));
    fs::remove_file(&f.b_packs[0]).unwrap();
    let v = env
        .coffer()
        .args(["--json", "repair", "snapshots"])
        .run()
        .ok()
        .json();
    let rewritten = v["rewritten"].as_array().unwrap();
    assert_eq!(rewritten.len(), 2, "{v}");
    let b_path = f.tree.path("b.bin");
    for s in [&f.s2, &s3] {
        let r = rewritten
            .iter()
            .find(|r| r["old"] == s.as_str())
            .unwrap_or_else(|| panic!("{s} not rewritten: {v}"));
        assert_eq!(
            r["left_out"],
            serde_json::json!([b_path.to_str().unwrap()]),
            "{v}"
        );
    }
    let r = env.coffer().args(["repair", "snapshots"]).run().ok();
    assert!(!r.stdout.contains("left out 0 entries"), "{}", r.stdout);
}

/// Issue 19.9: with the index gone, the packs still hold everything:
/// `check` must send the user to `repair index`, not to `prune`.
#[test]
fn check_without_an_index_names_repair_index_not_prune() {
    let f = fixture();
    let env = &f.env;
    for seg in env.objects("index") {
        fs::remove_file(seg).unwrap();
    }
    let r = env.coffer().arg("check").run().expect_code(1);
    assert!(r.stdout.contains("coffer repair index"), "{}", r.stdout);
    assert!(!r.stdout.contains("prune"), "{}", r.stdout);
    env.coffer().args(["repair", "index"]).run().ok();
    env.check_clean();
    compare_trees(&f.golden2, &env.restore_of(&f.s2, &f.tree.root));
}
