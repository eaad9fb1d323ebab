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
    env.restore_latest_matches(&t.root, &env.path("restore"));
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

/// A directory found unchanged is passed over as a whole (its tree reused
/// from the parent snapshot, its subdirectories still entered). Whatever
/// changed, and however deep, the snapshot must be the one the full walk
/// makes: `-vv`, which names every unchanged file, walks file by file.
#[test]
fn unchanged_directories_reuse_their_trees_and_deep_changes_still_count() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    for d in ["a", "a/b", "a/b/c", "a/b/c/d", "x", "x/y", "z"] {
        for i in 0..3 {
            t.file(format!("{d}/f{i}.txt"), format!("{d} {i}\n").as_bytes());
        }
    }
    t.symlink("a/b/link", "f0.txt");
    t.dir("a/empty");
    t.set_all_mtimes();
    let first = env.backup_json(&[&t.root], &[]);
    assert_eq!(num(&first, "files_new"), 21, "{first}");

    let same = env.backup_json(&[&t.root], &[]);
    assert_eq!(num(&same, "files_unmodified"), 21, "{same}");
    assert_eq!(num(&same, "total_files_processed"), 21, "{same}");
    assert_eq!(
        num(&same, "dirs_changed") + num(&same, "dirs_new"),
        0,
        "{same}"
    );

    // Each change, then a backup that may take the shortcut, then one that
    // walks every file (from the first as parent): the second must find
    // every directory and file as the first recorded it, so the first is
    // exactly what the full walk makes. (Root trees are not compared: the
    // ancestors of the backed-up directory change as the test runs.)
    type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let changes: Vec<Change> = vec![
        (
            "a file deep down",
            Box::new(|| fs::write(t.path("a/b/c/d/f1.txt"), b"changed, and longer\n").unwrap()),
        ),
        (
            "a new file",
            Box::new(|| fs::write(t.path("x/y/new.txt"), b"new\n").unwrap()),
        ),
        (
            "a removed file",
            Box::new(|| fs::remove_file(t.path("z/f2.txt")).unwrap()),
        ),
        ("a mode", Box::new(|| t.mode("a/f0.txt", 0o600))),
        (
            "an mtime",
            Box::new(|| set_mtime(&t.path("x/f1.txt"), 1_000_000, 5)),
        ),
        (
            "a symlink's target",
            Box::new(|| {
                fs::remove_file(t.path("a/b/link")).unwrap();
                t.symlink("a/b/link", "f1.txt");
            }),
        ),
        (
            "a new directory",
            Box::new(|| {
                t.file("a/b/c/new/inner.txt", b"inner\n");
            }),
        ),
        (
            "a removed directory",
            Box::new(|| fs::remove_dir(t.path("a/empty")).unwrap()),
        ),
        ("a directory's mode", Box::new(|| t.mode("x/y", 0o700))),
    ];
    // Where the file system has user xattrs: setting one moves only the
    // change time, which is all a directory found unchanged by its memo
    // (archiver/memo.rs) has to notice it by.
    let mut changes = changes;
    let probe = env.path("xattr-probe");
    fs::write(&probe, b"").unwrap();
    if set_xattr(&probe, "user.coffer.probe", b"").is_ok() {
        changes.push((
            "a file's extended attribute",
            Box::new(|| set_xattr(&t.path("x/y/f0.txt"), "user.coffer.memo", b"1").unwrap()),
        ));
        changes.push((
            "a directory's extended attribute",
            Box::new(|| set_xattr(&t.path("a/b"), "user.coffer.memo", b"2").unwrap()),
        ));
    }
    for (n, (what, change)) in changes.iter().enumerate() {
        change();
        let quick = env.backup_json(&[&t.root], &[]);
        let recorded = num(&quick, "files_changed")
            + num(&quick, "files_new")
            + num(&quick, "dirs_changed")
            + num(&quick, "dirs_new");
        assert!(recorded > 0, "{what} was not recorded: {quick}");
        let full = env.backup_json(&[&t.root], &["-vv"]);
        assert_eq!(
            num(&full, "dirs_changed") + num(&full, "dirs_new") + num(&full, "files_changed"),
            0,
            "after {what}, the full walk differs from the quick one: {quick} then {full}"
        );
        for k in ["total_files_processed", "total_bytes_processed"] {
            assert_eq!(num(&quick, k), num(&full, k), "{k} after {what}");
        }
        assert_eq!(
            num(&full, "files_unmodified"),
            num(&full, "total_files_processed")
        );
        env.restore_latest_matches(&t.root, &env.path(format!("restore{n}")));
    }
}
