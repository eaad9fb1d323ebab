//! Restore and the other readers of snapshots when things go wrong
//! (issues 18 and 19): a damaged tree costs only its directory, a directory
//! that cannot be made is counted with everything below it, a closed pipe
//! stops `dump` quietly, files found up to date get their metadata back,
//! the free-space check counts only what will be written, a drill without
//! scratch space says so, and an interrupted restore leaves no temporary
//! files.

use crate::support::*;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const MIB: usize = 1024 * 1024;

fn snapshot_id(v: &serde_json::Value) -> String {
    v["snapshot_id"].as_str().expect("snapshot_id").to_string()
}

/// Flip a byte in the middle of the stored tree of directory `path` in
/// snapshot `snap` (its pack found through `cat pack`).
fn damage_tree(env: &Env, snap: &str, path: &Path) {
    let spec = format!("{snap}:{}", path.display());
    let tree = env.coffer().args(["cat", "tree", &spec]).run().ok().json()["id"]
        .as_str()
        .expect("tree id")
        .to_string();
    for pack in env.objects("packs") {
        let name = pack.file_name().unwrap().to_string_lossy().into_owned();
        let v = env.coffer().args(["cat", "pack", &name]).run().ok().json();
        let Some(b) = v["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == tree.as_str())
        else {
            continue;
        };
        let at = (num(b, "offset") + num(b, "length") / 2) as usize;
        let mut bytes = fs::read(&pack).unwrap();
        bytes[at] ^= 0xff;
        fs::write(&pack, bytes).unwrap();
        return;
    }
    panic!("tree {tree} of {spec} is in no pack");
}

#[test]
fn one_damaged_tree_costs_only_its_directory() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    for i in 0..20 {
        t.file(format!("a/f{i}.txt"), format!("file {i}\n").as_bytes());
    }
    t.file("b/x.txt", b"x\n");
    t.file("b/sub/y.txt", b"y\n");
    t.file("c.txt", b"content of c\n");
    let s1 = snapshot_id(&env.backup_json(&[&t.root], &[]));
    t.file("a/new.txt", b"new in a\n");
    t.file("b/new.txt", b"new in b\n");
    let s2 = snapshot_id(&env.backup_json(&[&t.root], &[]));
    let b = t.path("b");
    damage_tree(&env, &s2, &b);
    let b_shown = b.display().to_string();

    // Restore: everything but b's contents, b named, exit 1.
    let target = env.path("restored");
    let r = env
        .coffer()
        .args(["restore", &s2, "--target"])
        .arg(&target)
        .run()
        .expect_code(1)
        .stderr_has(&b_shown)
        .stderr_has("cannot be read");
    for rel in (0..20)
        .map(|i| format!("a/f{i}.txt"))
        .chain(["a/new.txt".into(), "c.txt".into()])
    {
        let got = fs::read(restored(&target, &t.path(&rel)));
        assert_eq!(
            got.ok(),
            Some(fs::read(t.path(&rel)).unwrap()),
            "{rel} not restored\n{}",
            r.stderr
        );
    }
    let rb = restored(&target, &b);
    assert!(rb.is_dir() && fs::read_dir(&rb).unwrap().next().is_none());

    // ls, find, diff: complete listings but for b, b named, exit 3.
    let r = env
        .coffer()
        .args(["ls", &s2])
        .run()
        .expect_code(3)
        .stderr_has(&b_shown);
    assert!(r.stdout.contains("/a/new.txt") && r.stdout.contains("/c.txt"));
    let r = env
        .coffer()
        .args(["find", "*.txt"])
        .run()
        .expect_code(3)
        .stderr_has(&b_shown);
    assert!(r.stdout.contains("/a/new.txt"), "{}", r.stdout);
    let r = env
        .coffer()
        .args(["diff", &s1, &s2])
        .run()
        .expect_code(3)
        .stderr_has(&b_shown);
    assert!(r.stdout.contains("+    ") && r.stdout.contains("/a/new.txt"));

    // dump and export-tar: archives of everything else, exit 3.
    let r = env
        .coffer()
        .args(["dump", &s2])
        .arg(&t.root)
        .run()
        .expect_code(3)
        .stderr_has("b: its tree cannot be read");
    assert!(r.stdout.contains("a/new.txt") && r.stdout.contains("content of c"));
    let out = env.path("export.tar");
    env.coffer()
        .args(["export-tar", &s2])
        .arg(&t.root)
        .arg("--output")
        .arg(&out)
        .run()
        .expect_code(3)
        .stderr_has("b: its tree cannot be read");
    let tar = String::from_utf8_lossy(&fs::read(&out).unwrap()).into_owned();
    assert!(tar.contains("a/new.txt") && tar.contains("content of c"));
}

#[test]
fn restore_counts_every_entry_below_a_directory_it_cannot_make() {
    let env = Env::new();
    env.init();
    // A name long enough that, under the deep target below, the
    // directory's path exceeds PATH_MAX while the short names still fit.
    let long = "d".repeat(200);
    let t = TreeBuilder::new(env.path("src"));
    t.file("top.txt", b"top\n");
    for i in 0..5 {
        t.file(format!("{long}/f{i}"), b"f\n");
    }
    t.file(format!("{long}/sub/g"), b"g\n");
    let s = snapshot_id(&env.backup_json(&[&t.root], &[]));
    let mut target = env.path("t");
    while target.as_os_str().len() < 3750 {
        target.push("x".repeat(200));
    }
    target.push("y".repeat(3980 - target.as_os_str().len()));
    let spec = format!("{s}:{}", t.root.display());
    let r = env
        .coffer()
        .args(["--json", "restore", &spec, "--target"])
        .arg(&target)
        .run()
        .expect_code(1);
    // The directory, its 5 files, sub and sub/g.
    assert!(
        r.stderr.contains("8 entries could not be restored"),
        "{}",
        r.stderr
    );
    let summary = r.summary();
    assert_eq!(num(&summary, "entries_not_restored"), 8, "{summary}");
    assert_eq!(fs::read(target.join("top.txt")).unwrap(), b"top\n");
}

/// Run `args`, read a little of its stdout, close the pipe and wait.
fn read_then_close(env: &Env, args: &[&str]) -> (i32, String) {
    let mut child = env.coffer().args(args).spawn();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 4096];
    out.read_exact(&mut buf).unwrap();
    drop(out);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn dump_and_export_tar_stop_quietly_when_the_reader_goes_away() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("big.bin", 8 * MIB, 5);
    t.random_file("more.bin", 4 * MIB, 6);
    env.backup_json(&[&t.root], &[]);
    let big = t.path("big.bin").display().to_string();
    let root = t.root.display().to_string();
    for args in [
        vec!["dump", "latest", big.as_str()],
        vec!["dump", "latest", root.as_str()],
        vec!["export-tar", "latest", root.as_str()],
    ] {
        let (code, err) = read_then_close(&env, &args);
        assert_eq!((code, err.as_str()), (0, ""), "{args:?}");
    }
}

#[test]
fn files_found_up_to_date_get_their_metadata_back() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    let key = t.file("bin/tool", b"#!/bin/sh\necho tool\n");
    t.mode("bin/tool", 0o4750);
    set_mtime(&key, 1_600_000_000, 123);
    let xattr = set_xattr(&key, "user.origin", b"backup").is_ok();
    env.backup_json(&[&t.root], &[]);
    let target = env.path("restored");
    let restore = || {
        env.coffer()
            .args(["restore", "latest", "--target"])
            .arg(&target)
            .run()
            .ok()
    };
    restore();
    let out = restored(&target, &key);
    fs::set_permissions(&out, fs::Permissions::from_mode(0o600)).unwrap();
    set_mtime(&out, 1_700_000_000, 0);
    if xattr {
        set_xattr(&out, "user.origin", b"changed").unwrap();
        set_xattr(&out, "user.extra", b"not in the snapshot").unwrap();
    }
    if is_root() {
        std::os::unix::fs::lchown(&out, Some(4242), Some(4242)).unwrap();
    }
    let r = restore();
    assert!(r.stdout.contains("already up to date"), "{}", r.stdout);
    let (src, got) = (fs::metadata(&key).unwrap(), fs::metadata(&out).unwrap());
    let mode = if is_root() { 0o4750 } else { 0o750 };
    assert_eq!(got.mode() & 0o7777, mode);
    assert_eq!((got.mtime(), got.mtime_nsec()), (1_600_000_000, 123));
    if is_root() {
        assert_eq!((got.uid(), got.gid()), (src.uid(), src.gid()));
    }
    if xattr {
        assert_eq!(user_xattrs(&out), user_xattrs(&key));
    }
}

const FREE: &str = "COFFER_TEST_FREE_SPACE";

#[test]
fn space_check_counts_only_what_will_be_written() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    // 256 MiB long, 4 MiB of data.
    let data = Rng::new(9).bytes(4 * MIB);
    t.sparse("sparse.img", 256 << 20, &[(100 << 20, &data)]);
    for i in 0..8 {
        t.random_file(format!("files/f{i}"), 2 * MIB, 20 + i);
    }
    env.backup_json(&[&t.root], &[]);
    let restore = |target: &Path, free: &str, extra: &[&str]| {
        env.coffer()
            .args(["restore", "latest", "--target"])
            .arg(target)
            .args(extra)
            .env(FREE, free)
            .run()
    };

    // The sparse file's data and 16 MiB of files fit in 40 MB.
    let target = env.path("r1");
    restore(&target, "40000000", &[]).ok();
    compare_trees(&t.root, &restored(&target, &t.root));

    // Resuming: only the file that is missing needs space.
    fs::remove_file(restored(&target, &t.path("files/f3"))).unwrap();
    restore(&target, "3000000", &[]).ok();
    compare_trees(&t.root, &restored(&target, &t.root));

    // Too little space is still refused, unless told to go on.
    let fresh = env.path("r2");
    restore(&fresh, "1000000", &[])
        .expect_code(1)
        .stderr_has("not enough space")
        .stderr_has("--skip-space-check");
    restore(&fresh, "1000000", &["--skip-space-check"]).ok();
    compare_trees(&t.root, &restored(&fresh, &t.root));
}

#[test]
fn drill_counts_data_caps_the_largest_file_and_names_missing_scratch_space() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    let data = Rng::new(3).bytes(4 * MIB);
    t.sparse("sparse.img", 256 << 20, &[(8 << 20, &data)]);
    t.random_file("big.bin", 12 * MIB, 4);
    for i in 0..4 {
        t.file(format!("small/f{i}"), format!("small {i}\n").as_bytes());
    }
    env.backup_json(&[&t.root], &[]);
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let drill = |free: &str, extra: &[&str]| {
        env.coffer()
            .args(["drill", "--scratch-dir"])
            .arg(&scratch)
            .args(extra)
            .env(FREE, free)
            .run()
    };
    // Sparse: the largest file has 12 MiB of data, the sparse one 4.
    drill("30000000", &["--sample", "100%"]).ok();
    // Too little scratch space is not a verification failure.
    let r = drill("1000", &["--sample", "100%"])
        .expect_code(1)
        .stderr_has("cannot drill in");
    assert!(!r.stdout.contains("FAILED"), "{}", r.stdout);
    // With the largest file left out by the cap, a one-file sample needs
    // at most the 12 MiB of big.bin.
    drill("13500000", &["--sample", "1", "--largest-max", "1M"]).ok();
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
}

#[test]
fn interrupted_restore_leaves_no_temporary_files() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    for i in 0..3 {
        write_mixed_file(&t.path(format!("big{i}.bin")), 100 << 20, 40 + i);
    }
    env.backup_json(&[&t.root], &[]);
    let target = env.path("restored");
    let child = env
        .coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .spawn();
    // Once a temporary file exists, the restore is writing.
    let dir = restored(&target, &t.root);
    let writing = || {
        fs::read_dir(&dir).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".coffer-tmp-"))
        })
    };
    let mut child = child;
    while !writing() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended before it was interrupted"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: kill only signals the child this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_no_temp_files(&target);
    // What is there is complete; a second run finishes the restore.
    env.coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run()
        .ok();
    compare_trees(&t.root, &dir);
}
