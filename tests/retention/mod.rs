//! Retention end to end (doc/reliability.md 4.L; issue 6 points 1 and 2):
//! `forget` policies and their explanations, forgetting by id, refusing to
//! empty a group, `prune` giving space back (whole packs and repacks) while
//! every remaining snapshot restores exactly, `--dry-run` changing nothing,
//! and prune refusing to delete anything when what it sees is damaged.
//!
//! Snapshots here are all taken within seconds, so only rules that do not
//! depend on the calendar are asserted exactly (`--keep-last`,
//! `--keep-tag`, `--keep-within`); a count rule always keeps the newest.

use crate::support::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

const MIB: usize = 1024 * 1024;

fn snap_id(summary: &serde_json::Value) -> String {
    summary["snapshot_id"].as_str().unwrap().to_string()
}

/// Four snapshots of one tree (the oldest tagged `important`) and one of
/// the same tree under another host name.
struct Snaps {
    env: Env,
    tree: TreeBuilder,
    /// host "here", oldest first.
    here: Vec<String>,
    /// host "there".
    there: String,
}

fn snaps() -> Snaps {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    let mut here = Vec::new();
    for i in 0..4u64 {
        t.random_file(format!("f{i}.bin"), 32 * 1024, i);
        let mut extra = vec!["--host", "here"];
        if i == 0 {
            extra.extend(["--tag", "important"]);
        }
        here.push(snap_id(&env.backup_json(&[&t.root], &extra)));
    }
    let there = snap_id(&env.backup_json(&[&t.root], &["--host", "there"]));
    Snaps {
        env,
        tree: t,
        here,
        there,
    }
}

/// The stdout line of `forget` about snapshot `id`.
fn line_of<'a>(out: &'a str, id: &str) -> &'a str {
    out.lines()
        .find(|l| l.trim_start().starts_with(&id[..8]))
        .unwrap_or_else(|| panic!("no line for snapshot {} in:\n{out}", &id[..8]))
}

#[test]
fn dry_run_names_the_rule_for_every_snapshot_and_changes_nothing() {
    let s = snaps();
    let env = &s.env;
    let before = env.snapshot_ids();
    let listing = env.repo_listing();
    let r = env
        .coffer()
        .args([
            "forget",
            "--keep-last",
            "2",
            "--keep-tag",
            "important",
            "--dry-run",
        ])
        .run()
        .ok();
    let out = &r.stdout;
    assert!(out.contains("group host here"), "{out}");
    assert!(out.contains("group host there"), "{out}");
    for id in &s.here[2..] {
        assert!(
            line_of(out, id).contains("keep (last snapshot)"),
            "{}",
            line_of(out, id)
        );
    }
    assert!(
        line_of(out, &s.here[0]).contains("keep (tag important)"),
        "{out}"
    );
    assert!(line_of(out, &s.here[1]).ends_with("remove"), "{out}");
    assert!(
        line_of(out, &s.there).contains("keep (last snapshot)"),
        "{out}"
    );
    assert!(out.contains("would remove 1 snapshot\n"), "{out}");
    assert_eq!(env.snapshot_ids(), before, "a dry run removed snapshots");
    assert_eq!(
        env.repo_listing(),
        listing,
        "a dry run changed the repository"
    );
}

#[test]
fn json_decisions_match_what_is_removed_and_a_second_run_removes_nothing() {
    let s = snaps();
    let env = &s.env;
    let v = env
        .coffer()
        .args([
            "--json",
            "forget",
            "--keep-last",
            "1",
            "--keep-within",
            "1h",
        ])
        .args(["--group-by", "paths"])
        .run()
        .ok()
        .json();
    // --keep-within 1h of the newest keeps everything taken in this test.
    let decisions = v["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 5, "{v}");
    for d in decisions {
        assert_eq!(d["keep"], true, "{d}");
        assert!(
            d["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "within"),
            "{d}"
        );
        assert!(d["group"].as_str().unwrap().starts_with("paths ["), "{d}");
    }
    assert_eq!(v["removed"].as_array().unwrap().len(), 0);

    // One group (by paths): --keep-last 2 keeps the two newest, whatever the host.
    let v = env
        .coffer()
        .args([
            "--json",
            "forget",
            "--keep-last",
            "2",
            "--group-by",
            "paths",
        ])
        .run()
        .ok()
        .json();
    assert_eq!(v["dry_run"], false);
    let mut kept = Vec::new();
    let mut removed = Vec::new();
    for d in v["decisions"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap().to_string();
        if d["keep"] == true {
            assert_eq!(d["reasons"], serde_json::json!(["last snapshot"]), "{d}");
            kept.push(id);
        } else {
            assert_eq!(d["reasons"], serde_json::json!([]), "{d}");
            removed.push(id);
        }
    }
    kept.sort();
    removed.sort();
    let mut want_kept = vec![s.here[3].clone(), s.there.clone()];
    want_kept.sort();
    assert_eq!(kept, want_kept);
    let mut listed: Vec<String> = v["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, removed);
    let mut left = env.snapshot_ids();
    left.sort();
    assert_eq!(left, want_kept);

    // The same policy again removes nothing (doc/reliability.md L5).
    let v = env
        .coffer()
        .args([
            "--json",
            "forget",
            "--keep-last",
            "2",
            "--group-by",
            "paths",
        ])
        .run()
        .ok()
        .json();
    assert_eq!(v["removed"], serde_json::json!([]), "{v}");
    env.check_clean();
    compare_trees(&s.tree.root, &env.restore_of(&s.there, &s.tree.root));
}

#[test]
fn forget_by_id_removes_exactly_those_snapshots() {
    let s = snaps();
    let env = &s.env;
    env.coffer()
        .args(["forget", &s.here[1][..10], &s.here[2]])
        .run()
        .ok();
    let mut left = env.snapshot_ids();
    left.sort();
    let mut want = vec![s.here[0].clone(), s.here[3].clone(), s.there.clone()];
    want.sort();
    assert_eq!(left, want);
    // An id that matches nothing is an error and removes nothing.
    env.coffer()
        .args(["forget", "0000000000"])
        .run()
        .expect_code(1);
    assert_eq!(env.snapshot_ids().len(), 3);
    env.check_clean();
}

#[test]
fn a_policy_that_keeps_nothing_of_a_group_is_refused() {
    // doc/reliability.md L1 (restic#4568): a misspelled --keep-tag.
    let s = snaps();
    let env = &s.env;
    let before = env.repo_listing();
    let r = env
        .coffer()
        .args(["forget", "--keep-tag", "importnat"])
        .run()
        .expect_code(1);
    assert!(
        r.stderr.contains("refusing") && r.stderr.contains("group"),
        "{}",
        r.stderr
    );
    assert_eq!(env.snapshot_ids().len(), 5, "snapshots were removed");
    assert_eq!(env.repo_listing(), before, "the repository changed");
    // One group kept by the tag, the other emptied: still refused, nothing removed.
    env.coffer()
        .args(["forget", "--keep-tag", "important", "--prune"])
        .run()
        .expect_code(1);
    assert_eq!(env.repo_listing(), before, "the repository changed");
    // And no policy at all is refused too.
    env.coffer().arg("forget").run().expect_code(1);
    assert_eq!(env.repo_listing(), before);
}

#[test]
fn forget_with_prune_shrinks_the_repository_after_files_were_deleted() {
    let env = Env::new();
    env.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(env.path("src"));
    for i in 0..4u64 {
        t.random_file(format!("big{i}.bin"), 3 * MIB / 2, 40 + i);
    }
    t.file("keep.txt", b"small and kept\n");
    env.backup_json(&[&t.root], &[]);
    for i in 0..3 {
        fs::remove_file(t.path(format!("big{i}.bin"))).unwrap();
    }
    let last = snap_id(&env.backup_json(&[&t.root], &[]));
    let before = env.repo_size();
    let r = env
        .coffer()
        .args(["forget", "--keep-last", "1", "--prune"])
        .run()
        .ok();
    assert!(r.stdout.contains("removed 1 snapshot\n"), "{}", r.stdout);
    let after = env.repo_size();
    assert!(
        after + (4 * MIB) as u64 <= before,
        "the repository did not shrink by the ~4.5 MiB deleted: {before} -> {after} bytes"
    );
    assert_eq!(env.snapshot_ids(), vec![last.clone()]);
    env.check_clean();
    compare_trees(&t.root, &env.restore_of(&last, &t.root));
}

/// A repository where prune must repack: 64-256 KiB chunks in 1 MiB packs
/// and one reader thread, so a pack holds the end of one file and the
/// start of the next; deleting a file leaves such a pack partly used.
/// Returns the env, the tree, and golden restores of the snapshots kept.
fn repack_fixture() -> (Env, TreeBuilder, BTreeMap<String, PathBuf>) {
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
    for (i, name) in ["a.bin", "b.bin", "c.bin"].iter().enumerate() {
        t.random_file(name, 3 * MIB / 2, 200 + i as u64);
    }
    let first = snap_id(&env.backup_json(&[&t.root], &["--threads", "1"]));
    fs::remove_file(t.path("b.bin")).unwrap();
    t.file("d.txt", b"added later\n");
    let second = snap_id(&env.backup_json(&[&t.root], &["--threads", "1"]));
    t.random_file("e.bin", 200 * 1024, 300);
    let third = snap_id(&env.backup_json(&[&t.root], &["--threads", "1"]));
    env.coffer().args(["forget", &first]).run().ok();
    let mut golden = BTreeMap::new();
    for s in [second, third] {
        let g = env.restore_of(&s, &t.root);
        golden.insert(s, g);
    }
    (env, t, golden)
}

#[test]
fn prune_dry_run_changes_nothing() {
    let (env, _t, _golden) = repack_fixture();
    let before = env.repo_listing();
    let v = env
        .coffer()
        .args(["--json", "prune", "--dry-run"])
        .run()
        .ok()
        .json();
    assert!(num(&v, "bytes_to_free") > 0, "{v}");
    assert_eq!(
        env.repo_listing(),
        before,
        "prune --dry-run changed the repository"
    );
    assert!(env.objects("locks").is_empty(), "a lock was left behind");
    // Also through forget.
    env.coffer()
        .args(["forget", "--keep-last", "1", "--prune", "--dry-run"])
        .run()
        .ok();
    assert_eq!(
        env.repo_listing(),
        before,
        "forget --prune --dry-run changed the repository"
    );
}

#[test]
fn prune_repacks_partly_used_packs_and_every_snapshot_still_restores() {
    let (env, t, golden) = repack_fixture();
    let packs_before = env.objects("packs");
    let size_before = env.repo_size();
    let plan = env
        .coffer()
        .args(["--json", "prune", "--dry-run"])
        .run()
        .ok()
        .json();
    assert!(
        num(&plan, "packs_to_repack") >= 1,
        "nothing to repack: {plan}"
    );
    let v = env.coffer().args(["--json", "prune"]).run().ok().json();
    assert!(num(&v, "packs_repacked") >= 1, "{v}");
    assert!(num(&v, "blobs_repacked") >= 1, "{v}");
    assert!(num(&v, "packs_written") >= 1, "{v}");
    assert!(num(&v, "bytes_freed") > 0, "{v}");
    assert!(env.repo_size() < size_before);
    let packs_after = env.objects("packs");
    assert!(
        packs_after.iter().any(|p| !packs_before.contains(p)),
        "no new pack was written by the repack"
    );
    env.check_clean();
    for (s, g) in &golden {
        compare_trees(g, &env.restore_of(s, &t.root));
    }
    // The latest snapshot is the current tree.
    compare_trees(&t.root, &env.restore_of("latest", &t.root));
    // Nothing left to do; a second prune is a no-op.
    let plan = env
        .coffer()
        .args(["--json", "prune", "--dry-run"])
        .run()
        .ok()
        .json();
    for k in ["packs_to_delete", "packs_to_repack", "unindexed_packs"] {
        assert_eq!(num(&plan, k), 0, "{plan}");
    }
}

/// Prune must refuse and delete nothing; returns its stderr.
fn prune_refuses(env: &Env) -> String {
    let before = env.repo_listing();
    let r = env.coffer().arg("prune").run().expect_code(1);
    assert!(r.stderr.contains("refusing to prune"), "{}", r.stderr);
    assert_eq!(env.repo_listing(), before, "prune deleted or wrote objects");
    r.stderr
}

#[test]
fn prune_refuses_when_a_snapshot_is_corrupt() {
    let (env, _t, golden) = repack_fixture();
    let victim = env
        .repo
        .join("snapshots")
        .join(golden.keys().next().unwrap());
    let len = fs::metadata(&victim).unwrap().len();
    flip_byte(&victim, len / 2);
    let err = prune_refuses(&env);
    assert!(err.contains(&file_name(&victim)), "{err}");
    // Through forget --prune too: the snapshots go, the data stays.
    let r = env
        .coffer()
        .args(["forget", "--keep-last", "5", "--prune"])
        .run()
        .expect_code(1);
    assert!(r.stderr.contains("refusing to prune"), "{}", r.stderr);
}

#[test]
fn prune_refuses_when_an_indexed_pack_is_missing() {
    let (env, t, golden) = repack_fixture();
    let packs = env.objects("packs");
    let victim: &Path = &packs[packs.len() / 2];
    fs::remove_file(victim).unwrap();
    let err = prune_refuses(&env);
    assert!(err.contains(&file_name(victim)), "{err}");
    // check names the missing pack too.
    let r = env.coffer().arg("check").run().expect_code(1);
    assert!(r.stdout.contains(&file_name(victim)), "{}", r.stdout);
    drop((t, golden));
}

/// A backup killed mid-put leaves `<name>.tmp-<hex>` files that no listing
/// shows; prune (under its exclusive lock) removes those older than an
/// hour, and leaves a young one, which could be a put still under way.
#[test]
fn prune_removes_stale_temporary_files_and_keeps_young_ones() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("a.bin", 100_000, 1);
    env.backup_json(&[&t.root], &[]);
    let dir = env.repo.join("packs").join("ab");
    fs::create_dir_all(&dir).unwrap();
    let name = "ab".repeat(32);
    let stale = dir.join(format!("{name}.tmp-0123456789abcdef"));
    let young = dir.join(format!("{name}.tmp-fedcba9876543210"));
    let stale_index = env
        .repo
        .join("index")
        .join(format!("{name}.tmp-00000000000000aa"));
    for p in [&stale, &young, &stale_index] {
        fs::write(p, b"half a pack").unwrap();
    }
    for p in [&stale, &stale_index] {
        set_mtime(p, now_secs() - 7200, 0);
    }
    let v = env.coffer().args(["--json", "prune"]).run().ok().summary();
    assert_eq!(num(&v, "temporary_files_removed"), 2, "{v}");
    assert!(!stale.exists() && !stale_index.exists());
    assert!(young.exists(), "a young temporary file was removed");
    env.check_clean();
}

/// `snapshots` and `forget` take the same filters as `find` and `stats`:
/// `--host`, `--tag`, `--path`, each repeatable.
#[test]
fn snapshots_and_forget_filter_by_host_tag_and_path() {
    let s = snaps();
    let env = &s.env;
    let other = TreeBuilder::new(env.path("other"));
    other.file("x.txt", b"x\n");
    let elsewhere = snap_id(&env.backup_json(&[&other.root], &["--host", "here"]));
    let ids = |args: &[&str]| -> Vec<String> {
        let v = env
            .coffer()
            .args(["--json", "snapshots"])
            .args(args)
            .run()
            .ok()
            .json();
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect()
    };
    let root = s.tree.root.to_str().unwrap();
    assert_eq!(ids(&["--host", "there"]), vec![s.there.clone()]);
    assert_eq!(ids(&["--tag", "important"]), vec![s.here[0].clone()]);
    assert_eq!(
        ids(&["--path", other.root.to_str().unwrap()]),
        vec![elsewhere.clone()]
    );
    assert_eq!(ids(&["--host", "here", "--path", root]).len(), 4);
    assert_eq!(
        ids(&["--host", "here", "--host", "there", "--path", root]).len(),
        5
    );
    // forget --keep-last 1 limited to one path leaves the other alone.
    env.coffer()
        .args([
            "forget",
            "--keep-last",
            "1",
            "--host",
            "here",
            "--path",
            root,
        ])
        .run()
        .ok();
    let left = ids(&[]);
    assert_eq!(left.len(), 3, "{left:?}");
    for id in [&s.here[3], &s.there, &elsewhere] {
        assert!(left.contains(id), "{id} was forgotten: {left:?}");
    }
}

/// Issue 18.7: three hosts back the same data up at once, none seeing the
/// others' packs, so the repository holds three copies of every chunk.
/// (Made deterministic: three copies of one empty repository each take a
/// backup, then their objects are merged, which is exactly what the
/// concurrent backups leave.) `stats` shows the duplicates, `prune` keeps
/// one copy of each blob, and every snapshot still restores.
#[test]
fn prune_removes_the_duplicate_copies_concurrent_backups_stored() {
    let env = Env::new();
    env.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(env.path("src"));
    for i in 0..3u64 {
        t.random_file(format!("f{i}.bin"), 3 * MIB / 2, 500 + i);
    }
    t.file("small.txt", b"shared and small\n");
    let empty = env.path("empty-repo");
    copy_dir(&env.repo, &empty);
    let mut snaps = Vec::new();
    for host in ["a", "b", "c"] {
        // A repository of its own and a cache of its own: no host sees
        // what the others store.
        fs::remove_dir_all(&env.repo).unwrap();
        copy_dir(&empty, &env.repo);
        let s = env
            .coffer()
            .args(["--json", "--no-cache", "backup", "--host", host])
            .arg(&t.root)
            .run()
            .ok()
            .summary();
        snaps.push(snap_id(&s));
        copy_dir(&env.repo, &env.path("merged"));
    }
    fs::remove_dir_all(&env.repo).unwrap();
    fs::rename(env.path("merged"), &env.repo).unwrap();
    let _ = fs::remove_dir_all(&env.cache);
    assert_eq!(env.snapshot_ids().len(), 3);
    let one_copy = (9 * MIB / 2) as u64;
    let before = env.repo_size();
    assert!(before > 3 * one_copy, "{before}");

    let stats = env
        .coffer()
        .args(["--json", "stats", "--mode", "raw-data"])
        .run()
        .ok()
        .json();
    let repo_stats = &stats["repository"];
    assert!(
        num(repo_stats, "duplicate_blobs") >= 2 * num(&stats, "data_blobs"),
        "{stats}"
    );
    assert!(num(repo_stats, "duplicate_bytes") > 2 * one_copy, "{stats}");

    let dry = env
        .coffer()
        .args(["--json", "prune", "--dry-run"])
        .run()
        .ok()
        .json();
    let v = env.coffer().args(["--json", "prune"]).run().ok().json();
    assert_eq!(
        num(&dry, "bytes_to_free"),
        num(&v, "bytes_freed"),
        "{dry} {v}"
    );
    let after = env.repo_size();
    assert!(
        after < one_copy + one_copy / 4,
        "the repository still holds more than one copy: {before} -> {after} bytes"
    );
    env.check_clean();
    for s in &snaps {
        compare_trees(&t.root, &env.restore_of(s, &t.root));
    }
    let stats = env
        .coffer()
        .args(["--json", "stats", "--mode", "raw-data"])
        .run()
        .ok()
        .json();
    // What is left is within --max-unused (a few small trees at most).
    assert!(
        num(&stats["repository"], "duplicate_bytes") < one_copy / 100,
        "{stats}"
    );
    // A second prune finds nothing to do.
    let plan = env
        .coffer()
        .args(["--json", "prune", "--dry-run"])
        .run()
        .ok()
        .json();
    for k in ["packs_to_delete", "packs_to_repack", "unindexed_packs"] {
        assert_eq!(num(&plan, k), 0, "{plan}");
    }
}

/// Issue 18.8: `forget --prune --dry-run` must preview the prune that the
/// real run does, with the forgotten snapshots gone.
#[test]
fn forget_prune_dry_run_previews_what_the_real_run_frees() {
    let env = Env::new();
    env.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(env.path("src"));
    for i in 0..3u64 {
        t.random_file(format!("big{i}.bin"), 3 * MIB / 2, 60 + i);
    }
    env.backup_json(&[&t.root], &[]);
    for i in 0..3 {
        fs::remove_file(t.path(format!("big{i}.bin"))).unwrap();
    }
    t.file("keep.txt", b"kept\n");
    env.backup_json(&[&t.root], &[]);
    let summary = |args: &[&str]| -> serde_json::Value {
        let r = env.coffer().args(args).run().ok();
        let last = r
            .stdout
            .lines()
            .rev()
            .find(|l| l.contains("bytes_"))
            .unwrap_or_else(|| panic!("{}", r.stdout))
            .to_string();
        serde_json::from_str(&last).unwrap()
    };
    let dry = summary(&[
        "--json",
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--dry-run",
    ]);
    let real = summary(&["--json", "forget", "--keep-last", "1", "--prune"]);
    assert!(num(&real, "bytes_freed") > (4 * MIB) as u64, "{real}");
    assert_eq!(
        num(&dry, "bytes_to_free"),
        num(&real, "bytes_freed"),
        "{dry} {real}"
    );
}
