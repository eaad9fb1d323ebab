//! Damage to the repository at rest (doc/reliability.md F1-F3, F5, F8): every
//! failure is a clear error naming the damaged object, exit 1, no panic, and
//! no restored file ever holds wrong bytes under its final name.

use crate::support::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

const MIB: usize = 1024 * 1024;

/// A repository with small packs where `a.bin` and `b.bin` are stored in
/// different packs: `a.bin` by the first backup, `b.bin` by the second.
struct TwoPacks {
    env: Env,
    tree: TreeBuilder,
    /// The first snapshot (without b.bin).
    first: String,
    /// Packs written by the second backup, by kind ("data" or "tree").
    data_packs: Vec<PathBuf>,
    tree_packs: Vec<PathBuf>,
}

fn pack_kinds(env: &Env, pack: &Path) -> BTreeSet<String> {
    let v = env
        .coffer()
        .args(["cat", "pack", &file_name(pack)])
        .run()
        .ok()
        .json();
    v["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap().to_string())
        .collect()
}

fn two_packs() -> TwoPacks {
    let env = Env::new();
    env.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("a.bin", 3 * MIB, 11);
    t.file("small.txt", b"a small file\n");
    let first = env.backup_json(&[&t.root], &[])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let old: BTreeSet<PathBuf> = env.objects("packs").into_iter().collect();
    t.random_file("b.bin", 3 * MIB, 12);
    let s = env.backup_json(&[&t.root], &[]);
    assert_eq!(
        num(&s, "files_unmodified"),
        2,
        "a.bin was not taken from the parent: {s}"
    );
    let mut data_packs = Vec::new();
    let mut tree_packs = Vec::new();
    for p in env
        .objects("packs")
        .into_iter()
        .filter(|p| !old.contains(p))
    {
        let kinds = pack_kinds(&env, &p);
        if kinds.len() == 1 && kinds.contains("data") {
            data_packs.push(p);
        } else if kinds.len() == 1 && kinds.contains("tree") {
            tree_packs.push(p);
        } else {
            panic!("pack {} mixes blob kinds: {kinds:?}", p.display());
        }
    }
    assert!(
        !data_packs.is_empty() && !tree_packs.is_empty(),
        "the second backup wrote no data or no tree pack"
    );
    data_packs.sort_by_key(|p| std::cmp::Reverse(fs::metadata(p).unwrap().len()));
    TwoPacks {
        env,
        tree: t,
        first,
        data_packs,
        tree_packs,
    }
}

/// A file restored from a damaged repository is either absent or right.
fn absent_or_correct(restored: &Path, original: &Path) {
    match fs::read(restored) {
        Ok(data) => assert!(
            data == fs::read(original).unwrap(),
            "{} was restored with wrong content under its final name",
            restored.display()
        ),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::NotFound,
            "{}: {e}",
            restored.display()
        ),
    }
}

#[test]
fn flipped_byte_in_a_data_pack_fails_restore_naming_the_pack() {
    let f = two_packs();
    let (env, t) = (&f.env, &f.tree);
    let victim = &f.data_packs[0];
    let len = fs::metadata(victim).unwrap().len();
    flip_byte(victim, len / 2);

    let target = env.path("restore");
    let r = env
        .coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run()
        .expect_code(1);
    let hex = file_name(victim);
    assert!(
        r.stderr.contains(&hex),
        "stderr does not name the damaged pack {hex}:\n{}",
        r.stderr
    );

    let out = restored(&target, &t.root);
    absent_or_correct(&out.join("b.bin"), &t.path("b.bin"));
    assert!(
        !out.join("b.bin").exists(),
        "b.bin's data is damaged, yet b.bin was restored"
    );
    assert_eq!(
        fs::read(out.join("a.bin")).unwrap(),
        fs::read(t.path("a.bin")).unwrap()
    );
    assert_eq!(fs::read(out.join("small.txt")).unwrap(), b"a small file\n");
    assert_no_temp_files(&target);

    // The first snapshot does not use the damaged pack and restores fully.
    let target1 = env.path("restore1");
    env.coffer()
        .args(["restore", &f.first, "--target"])
        .arg(&target1)
        .run()
        .ok();
    let out1 = restored(&target1, &t.root);
    assert_eq!(
        fs::read(out1.join("a.bin")).unwrap(),
        fs::read(t.path("a.bin")).unwrap()
    );
    assert!(!out1.join("b.bin").exists());
}

#[test]
fn zero_length_pack_fails_restore_naming_the_pack() {
    let f = two_packs();
    let (env, t) = (&f.env, &f.tree);
    let victim = &f.data_packs[0];
    fs::write(victim, b"").unwrap();

    let target = env.path("restore");
    let r = env
        .coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run()
        .expect_code(1);
    let hex = file_name(victim);
    assert!(
        r.stderr.contains(&hex),
        "stderr does not name the empty pack {hex}:\n{}",
        r.stderr
    );
    let out = restored(&target, &t.root);
    assert!(
        !out.join("b.bin").exists(),
        "b.bin was restored from an empty pack"
    );
    assert_eq!(
        fs::read(out.join("a.bin")).unwrap(),
        fs::read(t.path("a.bin")).unwrap()
    );
    assert_no_temp_files(&target);
}

#[test]
fn flipped_byte_in_a_tree_pack_fails_ls_and_restore_naming_it() {
    let f = two_packs();
    let env = &f.env;
    let victim = &f.tree_packs[0];
    let len = fs::metadata(victim).unwrap().len();
    flip_byte(victim, len / 3);
    let hex = file_name(victim);

    // 1 when the byte is in the root tree; 3 when in a subtree, which ls
    // names and lists around (issue 19).
    let r = env.coffer().args(["ls", "latest"]).run();
    assert!(
        matches!(r.code, 1 | 3) && r.stderr.contains(&hex),
        "ls does not name the damaged pack {hex}:\n{}",
        r.stderr
    );
    let target = env.path("restore");
    let r = env
        .coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run()
        .expect_code(1);
    assert!(
        r.stderr.contains(&hex),
        "restore does not name the damaged pack {hex}:\n{}",
        r.stderr
    );
    assert_no_temp_files(&target);
    // The older snapshot's trees are elsewhere: it still lists.
    env.coffer().args(["ls", &f.first]).run().ok();
}

/// Two snapshots of a small tree; returns (env, tree, first id, second id).
fn two_snapshots() -> (Env, TreeBuilder, String, String) {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("one.txt", b"one\n");
    t.random_file("data.bin", 200_000, 5);
    let s1 = env.backup_json(&[&t.root], &[])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    t.file("two.txt", b"two\n");
    let s2 = env.backup_json(&[&t.root], &[])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    (env, t, s1, s2)
}

#[test]
fn flipped_byte_in_a_snapshot_object_is_named() {
    let (env, t, s1, s2) = two_snapshots();
    let obj = env.repo.join("snapshots").join(&s1);
    let len = fs::metadata(&obj).unwrap().len();
    flip_byte(&obj, len / 2);

    // The damaged snapshot is named and skipped; the others are still
    // listed (doc/reliability.md F8), and the exit code is not 0.
    let r = env.coffer().arg("snapshots").run().expect_code(3);
    assert!(
        r.stderr.contains(&format!("snapshots/{s1}")),
        "stderr does not name snapshots/{s1}:\n{}",
        r.stderr
    );
    assert!(
        r.stdout.contains(&s2[..8]),
        "the intact snapshot is not listed:\n{}",
        r.stdout
    );
    let r = env
        .coffer()
        .args(["snapshots", "--json"])
        .run()
        .expect_code(3);
    assert!(r.stderr.contains(&s1), "{}", r.stderr);
    let listed: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], s2.as_str());

    // The intact snapshot, named by id, still restores.
    let target = env.path("restore");
    env.coffer()
        .args(["restore", &s2, "--target"])
        .arg(&target)
        .run()
        .ok();
    compare_trees(&t.root, &restored(&target, &t.root));
    // The damaged one, named by id, fails naming itself.
    env.coffer()
        .args(["ls", &s1])
        .run()
        .expect_code(1)
        .stderr_has(&s1);
}

#[test]
fn zero_length_snapshot_object_is_named() {
    let (env, _t, s1, _s2) = two_snapshots();
    let obj = env.repo.join("snapshots").join(&s1);
    fs::write(&obj, b"").unwrap();
    let r = env.coffer().arg("snapshots").run().expect_code(3);
    assert!(
        r.stderr.contains(&s1) && r.stderr.contains("empty or truncated"),
        "{}",
        r.stderr
    );
}

#[test]
fn truncated_index_object_is_named_with_and_without_cache() {
    let (env, t, _s1, _s2) = two_snapshots();
    let segments = env.objects("index");
    assert!(!segments.is_empty());
    let victim = &segments[0];
    let len = fs::metadata(victim).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(victim)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let hex = file_name(victim);
    let names_it = |r: &Run| {
        assert!(
            r.stderr.contains(&format!("index/{hex}")),
            "stderr does not name index/{hex}:\n{}",
            r.stderr
        );
    };

    // Loading the index from the repository finds the damage and names it;
    // what the other segment indexes is still usable (doc/reliability.md F5).
    let r = env.coffer().args(["--no-cache", "ls", "latest"]).run();
    assert_ne!(r.code, 0);
    names_it(&r);
    let t1 = env.path("restore1");
    let r = env
        .coffer()
        .args(["--no-cache", "restore", "latest", "--target"])
        .arg(&t1)
        .run()
        .expect_code(1);
    names_it(&r);

    // The cache filled by the backups still holds the segment's entries:
    // either the damage is reported, or the restore is correct.
    let t2 = env.path("restore2");
    let r = env
        .coffer()
        .args(["restore", "latest", "--target"])
        .arg(&t2)
        .run();
    if r.code == 0 {
        println!(
            "NOTE: with a warm index cache the truncated index segment {hex} went unnoticed (restore succeeded)"
        );
        compare_trees(&t.root, &restored(&t2, &t.root));
    } else {
        assert_eq!(r.code, 1);
        names_it(&r);
    }

    // Without the cache, the same clear error, every time: a failed sync
    // must not leave a cache that hides the damage.
    fs::remove_dir_all(&env.cache).unwrap();
    for _ in 0..2 {
        let r = env
            .coffer()
            .args(["restore", "latest", "--target"])
            .arg(env.path("restore3"))
            .run()
            .expect_code(1);
        names_it(&r);
    }
    // A backup over the damaged index names it, stores again what the
    // damaged segment indexed, and its snapshot restores completely.
    let r = env.coffer().arg("backup").arg(&t.root).run().expect_code(3);
    names_it(&r);
    assert_eq!(env.objects("snapshots").len(), 3);
    let t4 = env.path("restore4");
    let r = env
        .coffer()
        .args(["restore", "latest", "--target"])
        .arg(&t4)
        .run();
    assert_eq!(r.code, 3, "{}", r.stderr);
    compare_trees(&t.root, &restored(&t4, &t.root));
}

#[test]
fn zero_length_index_object_is_named() {
    let (env, _t, _s1, _s2) = two_snapshots();
    let victim = env.objects("index")[0].clone();
    fs::write(&victim, b"").unwrap();
    let hex = file_name(&victim);
    let r = env.coffer().args(["--no-cache", "ls", "latest"]).run();
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(&hex) && r.stderr.contains("empty or truncated"),
        "{}",
        r.stderr
    );
}
