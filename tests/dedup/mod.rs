//! Deduplication and change detection: what `backup --json` reports and what
//! the repository grows by on disk.

use crate::support::*;
use std::fs;
use std::path::Path;

const MIB: u64 = 1024 * 1024;
/// "Almost nothing": trees of the ancestor directories may change between
/// runs, file data must not be stored again.
const SMALL: u64 = 64 * 1024;

/// A tree of a few MiB of random data and some small files.
fn small_tree(env: &Env) -> TreeBuilder {
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("big/three_mib.bin", 3 * MIB as usize, 1);
    t.random_file("big/one_mib.bin", MIB as usize, 2);
    for i in 0..12 {
        t.file(
            format!("small/note{i}.txt"),
            format!("note number {i}\n").repeat(i + 1).as_bytes(),
        );
    }
    t.file("top.txt", b"top level file\n");
    t.dir("empty");
    t
}

#[test]
fn identical_files_in_one_backup_are_stored_once() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    let data = Rng::new(20).bytes(20 * MIB as usize);
    t.file("one.bin", &data);
    t.file("sub/two.bin", &data);
    drop(data);

    let before = env.repo_size();
    let s = env.backup_json(&[&t.root], &[]);
    let grown = env.repo_size() - before;
    assert_eq!(num(&s, "total_bytes_processed"), 40 * MIB, "{s}");
    assert_eq!(num(&s, "bytes_read"), 40 * MIB, "{s}");
    let added = num(&s, "data_added");
    // Random data does not compress: stored size is at least the raw size.
    assert!(
        (20 * MIB..21 * MIB).contains(&added),
        "data_added {added} for two copies of a 20 MiB file: expected about 20 MiB"
    );
    assert!(
        (20 * MIB..22 * MIB).contains(&grown),
        "the repository grew by {grown} bytes: expected about 20 MiB"
    );

    // Both copies restore.
    let target = env.path("restore");
    env.coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run()
        .ok();
    compare_trees(&t.root, &restored(&target, &t.root));
}

#[test]
fn unchanged_second_backup_adds_almost_nothing() {
    let env = Env::new();
    env.init();
    let t = small_tree(&env);
    let first = env.backup_json(&[&t.root], &[]);
    assert!(num(&first, "data_added") > 4 * MIB, "{first}");

    let before = env.repo_size();
    let s = env.backup_json(&[&t.root], &[]);
    let grown = env.repo_size() - before;
    let total = num(&s, "total_files_processed");
    assert_eq!(total, 15, "{s}");
    assert_eq!(num(&s, "files_unmodified"), total, "{s}");
    assert_eq!(num(&s, "files_new"), 0, "{s}");
    assert_eq!(num(&s, "files_changed"), 0, "{s}");
    assert_eq!(
        num(&s, "bytes_read"),
        0,
        "unchanged files were read again: {s}"
    );
    assert!(num(&s, "data_added") < SMALL, "{s}");
    assert!(
        grown < SMALL,
        "the repository grew by {grown} bytes for an unchanged tree"
    );
    assert_eq!(
        s["parent"], first["snapshot_id"],
        "the second backup did not use the first as parent"
    );
}

#[test]
fn one_modified_file_is_the_only_change() {
    let env = Env::new();
    env.init();
    let t = small_tree(&env);
    env.backup_json(&[&t.root], &[]);

    // Change the size too: same-size rewrites within one timestamp tick are
    // not what this test is about.
    let p = t.path("small/note3.txt");
    let mut content = fs::read(&p).unwrap();
    content.extend_from_slice(b"one more line\n");
    fs::write(&p, &content).unwrap();

    let s = env.backup_json(&[&t.root], &[]);
    let total = num(&s, "total_files_processed");
    assert_eq!(num(&s, "files_changed"), 1, "{s}");
    assert_eq!(num(&s, "files_new"), 0, "{s}");
    assert_eq!(num(&s, "files_unmodified"), total - 1, "{s}");
    assert_eq!(num(&s, "bytes_read"), content.len() as u64, "{s}");
    assert!(num(&s, "data_added") < SMALL, "{s}");

    // The new snapshot, built mostly from the parent's content ids, restores
    // the current tree exactly.
    let target = env.path("restore");
    env.coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run()
        .ok();
    compare_trees(&t.root, &restored(&target, &t.root));
}

#[test]
fn force_rereads_everything_but_adds_nothing() {
    let env = Env::new();
    env.init();
    let t = small_tree(&env);
    env.backup_json(&[&t.root], &[]);

    let before = env.repo_size();
    let s = env.backup_json(&[&t.root], &["--force"]);
    let grown = env.repo_size() - before;
    let total = num(&s, "total_bytes_processed");
    assert!(total > 4 * MIB, "{s}");
    assert_eq!(
        num(&s, "bytes_read"),
        total,
        "--force did not re-read every file: {s}"
    );
    assert!(num(&s, "data_added") < SMALL, "{s}");
    assert!(
        grown < SMALL,
        "the repository grew by {grown} bytes after a --force backup of an unchanged tree"
    );
}

#[test]
fn new_file_with_known_content_is_deduplicated_across_snapshots() {
    let env = Env::new();
    env.init();
    let t = small_tree(&env);
    env.backup_json(&[&t.root], &[]);
    fs::copy(t.path("big/three_mib.bin"), t.path("copy_of_three.bin")).unwrap();

    let s = env.backup_json(&[&t.root], &[]);
    assert_eq!(num(&s, "files_new"), 1, "{s}");
    assert_eq!(num(&s, "bytes_read"), 3 * MIB, "{s}");
    assert!(
        num(&s, "data_added") < SMALL,
        "a copy of stored content was stored again: {s}"
    );
    assert!(Path::new(&t.path("copy_of_three.bin")).exists());
}
