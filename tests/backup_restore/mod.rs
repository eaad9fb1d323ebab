//! Backup and restore round trips of trees full of awkward entries, and the
//! listing commands (`ls`, `snapshots --json`, `cat`) over them.

use crate::support::*;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const MIN_CHUNK: usize = 256 * 1024;
const MAX_CHUNK: usize = 4 * 1024 * 1024;
const SPARSE_SIZE: u64 = 256 * 1024 * 1024;
const ZERO_SIZE: usize = 64 * 1024 * 1024;
const XATTR_NAME: &str = "user.coffer.test";
const XATTR_VALUE: &[u8] = b"value with \x00 and \xff bytes";

fn non_utf8(prefix: &str, name: &[u8]) -> PathBuf {
    let mut b = prefix.as_bytes().to_vec();
    b.extend_from_slice(name);
    PathBuf::from(OsStr::from_bytes(&b))
}

fn deep_dir() -> PathBuf {
    let mut p = PathBuf::from("deep");
    for i in 0..60 {
        p.push(format!("level{i:02}"));
    }
    p
}

/// Build a tree of every kind of entry coffer must carry. `heavy` adds the
/// chunk-boundary files, the all-zero file and the sparse file. Returns
/// whether the user xattrs could be set (false: the filesystem does not
/// support them).
fn build_rich_tree(t: &TreeBuilder, heavy: bool) -> bool {
    for (i, size) in [0usize, 1, 4095, 4096, 4097].into_iter().enumerate() {
        t.random_file(format!("sizes/f_{size}"), size, 100 + i as u64);
    }
    if heavy {
        for (i, size) in [
            MIN_CHUNK - 1,
            MIN_CHUNK,
            MIN_CHUNK + 1,
            MAX_CHUNK - 1,
            MAX_CHUNK,
            MAX_CHUNK + 1,
        ]
        .into_iter()
        .enumerate()
        {
            t.random_file(format!("chunks/f_{size}"), size, 200 + i as u64);
        }
        t.file("zeros/zero64", &vec![0u8; ZERO_SIZE]);
        t.sparse(
            "sparse/holey",
            SPARSE_SIZE,
            &[
                (0, b"head of the sparse file"),
                (100 << 20, b"in the middle"),
                (SPARSE_SIZE - 4, b"tail"),
            ],
        );
    }
    t.dir("empty");
    t.dir("nested/also_empty");
    t.file("text/hello.txt", b"hello, world\n");

    t.symlink("links/dangling", "does/not/exist");
    t.symlink("links/to_file", "../sizes/f_1");
    t.symlink("links/to_dir", "../sizes");
    t.symlink("links/absolute", "/nonexistent/absolute/target");
    t.symlink(
        non_utf8("links/", b"odd_target"),
        OsStr::from_bytes(b"target-\xfe\xff"),
    );

    t.random_file("hard/a", 10_000, 7);
    t.hardlink("hard/b", "hard/a");
    t.hardlink("hard/sub/c", "hard/a");
    t.random_file("hard/x", 300, 8);
    t.hardlink("other_dir_link", "hard/x");

    t.fifo("special/fifo");

    for name in [
        "日本語のファイル.txt",
        "emoji 🎉 party",
        "caf\u{e9}",
        "cafe\u{301}",
        "-dash",
        ".hidden",
        "with space",
    ] {
        t.file(Path::new("names").join(name), name.as_bytes());
    }
    t.file(non_utf8("names/", b"bad-\xff-name"), b"not utf-8");
    t.dir(non_utf8("names/", b"dir-\xc3\x28"));
    t.file(
        non_utf8("names/", b"dir-\xc3\x28/inside"),
        b"inside a non-utf-8 directory",
    );

    t.file(deep_dir().join("bottom.txt"), b"sixty levels down");

    t.file("modes/m600", b"private");
    t.mode("modes/m600", 0o600);
    t.file("modes/m755", b"#!/bin/sh\necho hi\n");
    t.mode("modes/m755", 0o755);
    t.file("modes/m444", b"read only");
    t.mode("modes/m444", 0o444);
    t.file("modes/dir750/inner", b"in a 750 dir");
    t.mode("modes/dir750", 0o750);

    let xattr_ok = match set_xattr(&t.path("text/hello.txt"), XATTR_NAME, XATTR_VALUE) {
        Ok(()) => {
            set_xattr(&t.path("nested"), "user.coffer.dir", b"on a directory")
                .expect("xattr on a directory");
            true
        }
        Err(e) if is_unsupported(&e) => false,
        Err(e) => panic!("setxattr: {e}"),
    };

    if is_root() {
        // Owners other than the test's own, so restoring them is observable.
        let chown = |rel: &str, uid: u32, gid: u32| {
            let c = std::ffi::CString::new(t.path(rel).as_os_str().as_bytes()).unwrap();
            // SAFETY: valid C string; lchown does not follow symlinks.
            assert_eq!(unsafe { libc::lchown(c.as_ptr(), uid, gid) }, 0);
        };
        chown("text/hello.txt", 4242, 4343);
        chown("links/to_file", 4244, 4345);
        chown("nested", 4246, 4347);
    }
    xattr_ok
}

/// Regular-file paths and their total size, as the backup should count them.
fn file_totals(t: &TreeBuilder) -> (u64, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for p in t.paths() {
        let md = fs::symlink_metadata(t.path(&p)).unwrap();
        if md.is_file() {
            n += 1;
            bytes += md.len();
        }
    }
    (n, bytes)
}

fn allocated(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().blocks() * 512
}

#[test]
fn full_round_trip_of_every_entry_kind() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    let xattr_ok = build_rich_tree(&t, true);
    // The one large file of the suite: ~300 MB, part random, part text.
    write_mixed_file(&t.path("big/large.bin"), 300_000_000, 42);
    t.set_all_mtimes();
    assert!(
        allocated(&t.path("sparse/holey")) < SPARSE_SIZE / 4,
        "the fixture filesystem does not keep sparse files sparse"
    );

    let s = env.backup_json(&[&t.root], &[]);
    let (files, bytes) = file_totals(&t);
    assert_eq!(num(&s, "warnings"), 0, "{s}");
    assert_eq!(num(&s, "total_files_processed"), files, "{s}");
    assert_eq!(num(&s, "total_bytes_processed"), bytes, "{s}");
    assert_eq!(num(&s, "files_new"), files, "{s}");

    let target = env.path("restore");
    env.coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run()
        .ok();
    let out = restored(&target, &t.root);
    compare_trees(&t.root, &out);
    assert_no_temp_files(&target);

    // Hardlinks come back as hardlinks, not copies.
    let ino = |rel: &str| fs::symlink_metadata(out.join(rel)).unwrap().ino();
    assert_eq!(ino("hard/a"), ino("hard/b"));
    assert_eq!(ino("hard/a"), ino("hard/sub/c"));
    assert_eq!(ino("hard/x"), ino("other_dir_link"));
    assert_ne!(ino("hard/a"), ino("hard/x"));

    // Sparse and all-zero files keep their bytes and stay sparse.
    let holey = out.join("sparse/holey");
    assert_eq!(fs::metadata(&holey).unwrap().len(), SPARSE_SIZE);
    assert!(
        allocated(&holey) < SPARSE_SIZE / 4,
        "restored sparse file allocates {} bytes of {SPARSE_SIZE}",
        allocated(&holey)
    );
    let zeros = out.join("zeros/zero64");
    assert!(
        allocated(&zeros) < ZERO_SIZE as u64 / 4,
        "restored all-zero file allocates {} bytes of {ZERO_SIZE}",
        allocated(&zeros)
    );

    if xattr_ok {
        assert_eq!(
            user_xattrs(&out.join("text/hello.txt"))
                .get(XATTR_NAME.as_bytes())
                .map(Vec::as_slice),
            Some(XATTR_VALUE)
        );
    } else {
        println!(
            "NOTE: user.* xattrs are not supported on this filesystem (ENOTSUP); the xattr assertion was skipped"
        );
    }
    if is_root() {
        let md = fs::symlink_metadata(out.join("text/hello.txt")).unwrap();
        assert_eq!((md.uid(), md.gid()), (4242, 4343));
    }
}

/// Every path `ls` should print for a backup of `root`: its ancestors, the
/// root itself and everything below (non-UTF-8 bytes shown lossily).
fn expected_ls_paths(t: &TreeBuilder) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    let mut acc = PathBuf::from("/");
    for c in t.root.components().skip(1) {
        acc.push(c);
        want.insert(acc.to_string_lossy().into_owned());
    }
    for p in t.paths() {
        want.insert(t.root.join(p).to_string_lossy().into_owned());
    }
    want
}

#[test]
fn ls_lists_every_path_and_long_shows_sizes() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    build_rich_tree(&t, false);
    t.set_all_mtimes();
    env.backup_json(&[&t.root], &[]);

    let r = env.coffer().args(["ls", "latest"]).run().ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    let got: BTreeSet<String> = lines.iter().map(|l| l.to_string()).collect();
    let want = expected_ls_paths(&t);
    assert_eq!(
        lines.len(),
        got.len(),
        "ls printed duplicate lines:\n{}",
        r.stdout
    );
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "ls differs from the fixture\nmissing: {missing:#?}\nextra: {extra:#?}"
    );

    // A sub-path lists only itself and what is below it.
    let sub = t.path("hard");
    let r = env.coffer().args(["ls", "latest"]).arg(&sub).run().ok();
    let got: BTreeSet<String> = r.stdout.lines().map(str::to_string).collect();
    let want: BTreeSet<String> = want
        .into_iter()
        .filter(|p| Path::new(p).starts_with(&sub))
        .collect();
    assert_eq!(got, want);

    let r = env.coffer().args(["ls", "latest", "--long"]).run().ok();
    let line_for = |rel: &str| -> Vec<String> {
        let suffix = format!(" {}", t.path(rel).display());
        let line = r
            .stdout
            .lines()
            .find(|l| l.ends_with(&suffix) || l.contains(&format!("{suffix} -> ")))
            .unwrap_or_else(|| panic!("ls --long has no line for {rel}:\n{}", r.stdout));
        line.split_whitespace().map(str::to_string).collect()
    };
    for size in [0u64, 1, 4095, 4096, 4097] {
        let f = line_for(&format!("sizes/f_{size}"));
        assert_eq!(
            f[3],
            size.to_string(),
            "size column of sizes/f_{size}: {f:?}"
        );
        assert!(f[0].starts_with('-'), "{f:?}");
    }
    assert_eq!(line_for("hard/a")[3], "10000");
    assert_eq!(line_for("modes/m600")[0], "-rw-------");
    assert_eq!(line_for("modes/m755")[0], "-rwxr-xr-x");
    assert_eq!(line_for("modes/m444")[0], "-r--r--r--");
    assert!(line_for("empty")[0].starts_with('d'));
    assert!(line_for("special/fifo")[0].starts_with('p'));
    let link = line_for("links/to_file");
    assert!(
        link[0].starts_with('l') && link.ends_with(&["->".to_string(), "../sizes/f_1".to_string()]),
        "{link:?}"
    );
}

#[test]
fn include_restores_only_that_subdirectory() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    build_rich_tree(&t, false);
    t.set_all_mtimes();
    env.backup_json(&[&t.root], &[]);

    let target = env.path("restore");
    let inc = t.path("hard");
    env.coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .arg("--include")
        .arg(&inc)
        .run()
        .ok();
    let out = restored(&target, &t.root);
    let top: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        top,
        vec![OsStr::new("hard").to_owned()],
        "restore --include brought back more than hard/"
    );
    compare_trees(&inc, &out.join("hard"));
    // The hardlinks inside the included directory are still hardlinks.
    let ino = |rel: &str| fs::symlink_metadata(out.join(rel)).unwrap().ino();
    assert_eq!(ino("hard/a"), ino("hard/sub/c"));
    assert_no_temp_files(&target);

    // A deep include restores just that chain.
    let target2 = env.path("restore2");
    let deep = t.path(deep_dir());
    env.coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target2)
        .arg("--include")
        .arg(&deep)
        .run()
        .ok();
    let out2 = restored(&target2, &t.root);
    let top: Vec<_> = fs::read_dir(&out2)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, vec![OsStr::new("deep").to_owned()]);
    compare_trees(&deep, &restored(&target2, &deep));
}

fn is_hex64(v: &serde_json::Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[test]
fn snapshots_json_has_the_documented_fields() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("a.txt", b"a");
    let s = env.backup_json(
        &[&t.root],
        &[
            "--tag",
            "alpha",
            "--tag",
            "beta,gamma",
            "--host",
            "e2e-host",
        ],
    );

    let r = env.coffer().args(["snapshots", "--json"]).run().ok();
    let v = r.json();
    let list = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    assert_eq!(list.len(), 1, "{v}");
    let snap = &list[0];
    assert!(is_hex64(&snap["id"]), "id: {snap}");
    assert_eq!(snap["id"], s["snapshot_id"]);
    let id = snap["id"].as_str().unwrap();
    let short = snap["short_id"]
        .as_str()
        .unwrap_or_else(|| panic!("short_id: {snap}"));
    assert!(
        short.len() >= 8 && short.len() < 64 && id.starts_with(short),
        "short_id {short} of {id}"
    );
    let time = snap["time"]
        .as_str()
        .unwrap_or_else(|| panic!("time: {snap}"));
    let secs = parse_rfc3339(time).unwrap_or_else(|| panic!("time {time:?} is not RFC 3339"));
    assert!(
        (secs - now_secs()).abs() < 600,
        "snapshot time {time} is not now"
    );
    assert_eq!(snap["paths"], serde_json::json!([t.root.to_str().unwrap()]));
    assert_eq!(snap["hostname"], "e2e-host");
    assert_eq!(snap["username"], "e2e-tester");
    assert_eq!(snap["tags"], serde_json::json!(["alpha", "beta", "gamma"]));
    assert!(is_hex64(&snap["tree"]), "tree: {snap}");

    // A second snapshot: both listed, oldest first, the new one with a parent.
    t.file("b.txt", b"b");
    let s2 = env.backup_json(&[&t.root], &["--host", "e2e-host"]);
    let v = env.coffer().args(["snapshots", "--json"]).run().ok().json();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], s["snapshot_id"]);
    assert_eq!(list[1]["id"], s2["snapshot_id"]);
    assert_eq!(list[1]["tags"], serde_json::json!([]));
    assert_eq!(list[1]["parent"], s["snapshot_id"]);
}

#[test]
fn cat_prints_valid_json() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    build_rich_tree(&t, false);
    env.backup_json(&[&t.root], &[]);
    let snaps = env.coffer().args(["snapshots", "--json"]).run().ok().json();
    let snap = &snaps[0];

    let config = env.coffer().args(["cat", "config"]).run().ok().json();
    assert_eq!(config["version"], 1, "{config}");
    assert!(is_hex64(&config["id"]), "{config}");
    assert_eq!(config["chunker"]["min_size"], MIN_CHUNK as u64, "{config}");
    assert_eq!(config["chunker"]["max_size"], MAX_CHUNK as u64, "{config}");
    assert!(
        parse_rfc3339(config["created"].as_str().unwrap_or("")).is_some(),
        "{config}"
    );

    let cs = env
        .coffer()
        .args(["cat", "snapshot", "latest"])
        .run()
        .ok()
        .json();
    assert_eq!(cs["id"], snap["id"]);
    assert_eq!(cs["tree"], snap["tree"]);
    assert_eq!(cs["paths"], snap["paths"]);

    let tree = env
        .coffer()
        .args(["cat", "tree", "latest"])
        .run()
        .ok()
        .json();
    assert_eq!(tree["id"], snap["tree"]);
    let first = t
        .root
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    assert_eq!(tree["nodes"][0]["name"], first.as_str(), "{tree}");
    assert_eq!(tree["nodes"][0]["type"], "dir");

    // The tree of the backed-up directory lists its entries, sorted.
    let spec = format!("latest:{}", t.root.display());
    let sub = env.coffer().args(["cat", "tree", &spec]).run().ok().json();
    let names: Vec<String> = sub["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = fs::read_dir(&t.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    want.sort();
    assert_eq!(names, want);

    // Index objects list exactly the packs on disk; packs parse.
    let mut indexed = BTreeSet::new();
    for seg in env.objects("index") {
        let v = env
            .coffer()
            .args(["cat", "index", &file_name(&seg)])
            .run()
            .ok()
            .json();
        for p in v["packs"].as_array().unwrap() {
            indexed.insert(p["id"].as_str().unwrap().to_string());
        }
    }
    let on_disk: BTreeSet<String> = env.objects("packs").iter().map(|p| file_name(p)).collect();
    assert_eq!(indexed, on_disk);
    for pack in env.objects("packs") {
        let v = env
            .coffer()
            .args(["cat", "pack", &file_name(&pack)])
            .run()
            .ok()
            .json();
        assert_eq!(v["size"], fs::metadata(&pack).unwrap().len());
        assert!(!v["blobs"].as_array().unwrap().is_empty(), "{v}");
    }

    let keys = env.coffer().args(["cat", "keys"]).run().ok().json();
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    assert_eq!(keys[0]["current"], true);
}

#[test]
fn mtimes_far_from_now_round_trip() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("before_1970", b"old");
    set_mtime(&t.path("before_1970"), -315_619_200, 123_456_789); // 1960-01-01
    t.file("y2038", b"2038");
    set_mtime(&t.path("y2038"), 2_147_483_648, 1);
    env.backup_json(&[&t.root], &[]);
    let target = env.path("restore");
    env.coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run()
        .ok();
    compare_trees(&t.root, &restored(&target, &t.root));
}

#[test]
fn mtime_after_2262_round_trips() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("future", b"from the future");
    set_mtime(&t.path("future"), 13_574_473_689, 987_654_321); // 2400-05-06T07:08:09Z
    let r = env.coffer().arg("backup").arg(&t.root).run();
    let target = env.path("restore");
    env.coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run()
        .ok();
    // Either the time is kept, or the backup says it could not keep it.
    if r.code == 0 {
        compare_trees(&t.root, &restored(&target, &t.root));
    } else {
        assert_eq!(r.code, 3);
        assert!(r.stderr.contains("future"), "{}", r.stderr);
    }
}

#[test]
fn include_that_matches_nothing_is_an_error() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("d/f.txt", b"f");
    env.backup_json(&[&t.root], &[]);
    // A relative path (as typed for `backup`) or a typo matches nothing:
    // exiting 0 after restoring nothing would look like success to a script.
    let target = env.path("restore");
    env.coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .args(["--include", "src/d"])
        .run()
        .expect_code(1)
        .stderr_has("src/d");
}

#[test]
fn ls_long_shows_special_mode_bits() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.dir("sticky");
    t.mode("sticky", 0o1777);
    t.file("setuid", b"#!/bin/sh\n");
    t.mode("setuid", 0o4755);
    t.file("setgid", b"#!/bin/sh\n");
    t.mode("setgid", 0o2755);
    env.backup_json(&[&t.root], &[]);
    let r = env.coffer().args(["ls", "latest", "--long"]).run().ok();
    let mode_of = |rel: &str| -> String {
        let suffix = format!(" {}", t.path(rel).display());
        let line = r
            .stdout
            .lines()
            .find(|l| l.ends_with(&suffix))
            .unwrap_or_else(|| panic!("{}", r.stdout));
        line.split_whitespace().next().unwrap().to_string()
    };
    assert_eq!(mode_of("sticky"), "drwxrwxrwt");
    assert_eq!(mode_of("setuid"), "-rwsr-xr-x");
    assert_eq!(mode_of("setgid"), "-rwxr-sr-x");
}

/// The walk reuses the parent's xattrs for an inode whose ctime is
/// unchanged; a changed, added or removed xattr must still be seen, on an
/// otherwise untouched file and directory.
#[test]
fn xattr_changes_between_backups_are_seen() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    let f = t.file("f", b"same content");
    let g = t.file("g", b"other content");
    let d = t.dir("d");
    match set_xattr(&f, "user.a", b"one") {
        Ok(()) => {}
        Err(e) if is_unsupported(&e) => {
            println!("NOTE: user.* xattrs are not supported here; test skipped");
            return;
        }
        Err(e) => panic!("setxattr: {e}"),
    }
    set_xattr(&g, "user.gone", b"soon").unwrap();
    env.backup_json(&[&t.root], &[]);

    set_xattr(&f, "user.a", b"two").unwrap();
    set_xattr(&d, "user.new", b"on the dir").unwrap();
    let gone = std::ffi::CString::new(g.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new("user.gone").unwrap();
    assert_eq!(
        unsafe { libc::lremovexattr(gone.as_ptr(), name.as_ptr()) },
        0
    );
    // The changed ctimes mark both files as changed, like restic.
    let s = env.backup_json(&[&t.root], &[]);
    assert_eq!(num(&s, "files_changed"), 2, "{s}");

    let out = env.restore_of("latest", &t.root);
    let x = |p: &str| user_xattrs(&out.join(p));
    assert_eq!(
        x("f").get(&b"user.a"[..]).map(Vec::as_slice),
        Some(&b"two"[..])
    );
    assert!(x("g").is_empty(), "{:?}", x("g"));
    assert_eq!(
        x("d").get(&b"user.new"[..]).map(Vec::as_slice),
        Some(&b"on the dir"[..])
    );
}

/// `--overwrite never` keeps every name that already exists in the target,
/// whatever its type: a file where the snapshot has a symlink, a FIFO or a
/// directory stays that file, and so does a directory where the snapshot
/// has a file. Only free names are restored.
#[test]
fn overwrite_never_keeps_existing_entries_of_any_type() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("a/real.txt", b"snapshot bytes\n");
    t.symlink("a/link", "real.txt");
    t.fifo("a/fifo");
    t.file("b/inner.txt", b"inside b\n");
    t.file("c", b"snapshot c\n");
    t.hardlink("a/hard", t.path("a/real.txt"));
    t.file("fresh/new.txt", b"restored\n");
    env.backup_json(&[&t.root], &[]);

    let target = env.path("restore");
    let out = restored(&target, &t.root);
    fs::create_dir_all(out.join("a")).unwrap();
    fs::create_dir_all(out.join("c")).unwrap();
    fs::write(out.join("a/link"), b"mine: link\n").unwrap();
    fs::write(out.join("a/fifo"), b"mine: fifo\n").unwrap();
    fs::write(out.join("a/real.txt"), b"mine: real\n").unwrap();
    fs::write(out.join("b"), b"mine: b\n").unwrap();
    fs::write(out.join("c/keep.txt"), b"mine: c\n").unwrap();

    let r = env
        .coffer()
        .args([
            "--json",
            "restore",
            "latest",
            "--overwrite",
            "never",
            "--target",
        ])
        .arg(&target)
        .run()
        .ok();
    for (rel, mine) in [
        ("a/link", "mine: link\n"),
        ("a/fifo", "mine: fifo\n"),
        ("a/real.txt", "mine: real\n"),
        ("b", "mine: b\n"),
        ("c/keep.txt", "mine: c\n"),
    ] {
        let md = fs::symlink_metadata(out.join(rel)).unwrap();
        assert!(md.is_file(), "{rel} is no longer the user's file");
        assert_eq!(fs::read_to_string(out.join(rel)).unwrap(), mine, "{rel}");
    }
    assert!(fs::symlink_metadata(out.join("c")).unwrap().is_dir());
    // Free names are restored, a hardlink whose first name was kept gets
    // the snapshot's bytes, not the user's.
    assert_eq!(fs::read(out.join("fresh/new.txt")).unwrap(), b"restored\n");
    assert_eq!(fs::read(out.join("a/hard")).unwrap(), b"snapshot bytes\n");
    let s = r.summary();
    assert_eq!(num(&s, "entries_kept"), 5, "{s}");
    assert_no_temp_files(&target);
}

/// `ls`, `dump` and `find` take non-UTF-8 paths and patterns as bytes, so
/// every name a snapshot can hold can be named on the command line.
#[test]
fn ls_dump_and_find_take_non_utf8_paths() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    let name = OsStr::from_bytes(b"caf\xe9-\xff.txt");
    let file = t.file(Path::new("d").join(name), b"latin-1 name\n");
    env.backup_json(&[&t.root], &[]);
    let r = env.coffer().args(["ls", "latest"]).arg(&file).run().ok();
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    let r = env.coffer().args(["dump", "latest"]).arg(&file).run().ok();
    assert_eq!(r.stdout, "latin-1 name\n");
    // ls also takes SNAPSHOT:PATH, as restore and diff do.
    let mut inline = b"latest:".to_vec();
    inline.extend_from_slice(file.as_os_str().as_bytes());
    let r = env
        .coffer()
        .arg("ls")
        .arg(OsStr::from_bytes(&inline))
        .run()
        .ok();
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    let r = env
        .coffer()
        .arg("find")
        .arg(OsStr::from_bytes(b"caf\xe9-*"))
        .run()
        .ok();
    assert!(
        r.stdout.contains("/d/caf"),
        "find matched nothing:\n{}",
        r.stdout
    );
    // The same pattern in UTF-8 (é as two bytes) is another name.
    let r = env.coffer().args(["find", "café-*"]).run();
    assert!(!r.stdout.contains("/d/caf"), "{}", r.stdout);
}

/// A name pattern looks into every directory but creates only those on
/// the way to what it restores: `--include '*.sql'` brings back the dumps
/// and their parents, not every other directory of the snapshot, empty.
#[test]
fn include_pattern_creates_only_the_directories_it_needs() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("db/dumps/monday.sql", b"select 1;\n");
    t.file("db/notes.txt", b"notes\n");
    t.file("models/user-a/weights.bin", b"weights");
    t.dir("empty");
    env.backup_json(&[&t.root], &[]);
    let target = env.path("restore");
    env.coffer()
        .args(["restore", "latest", "--include", "*.sql", "--target"])
        .arg(&target)
        .run()
        .ok();
    let out = restored(&target, &t.root);
    assert_eq!(
        fs::read(out.join("db/dumps/monday.sql")).unwrap(),
        b"select 1;\n"
    );
    for absent in ["db/notes.txt", "models", "empty"] {
        assert!(
            fs::symlink_metadata(out.join(absent)).is_err(),
            "{absent} was restored by --include '*.sql'"
        );
    }
    // The directories on the way keep the snapshot's metadata.
    let mtime = |p: &Path| fs::symlink_metadata(p).unwrap().mtime();
    assert_eq!(mtime(&out.join("db/dumps")), mtime(&t.path("db/dumps")));
}
