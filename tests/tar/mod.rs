//! Tar archives (issue #8 item 4): `import-tar` of archives made by GNU tar
//! (plain, gzip, zstd; GNU and PAX headers) restores the tree exactly,
//! deduplicates nightly imports, survives hostile members and refuses
//! truncated archives; `export-tar` gives the archive back.

use crate::support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tree with what archives carry: a few MB of data, an empty file, a
/// symlink, a hardlink, nested and empty directories, a path longer than
/// the 100 bytes of a tar header, odd modes, a FIFO, a non-UTF-8 name. `nanos`: mtimes with
/// nanoseconds (only PAX archives keep them) or whole seconds.
fn fixture(root: &Path, nanos: bool) -> TreeBuilder {
    let t = TreeBuilder::new(root);
    t.random_file("data/big.bin", 3 << 20, 1);
    t.file("data/notes.txt", b"notes\n");
    t.file("empty", b"");
    t.symlink("data/latest", "big.bin");
    t.symlink("dangling", "../nowhere/at all");
    t.hardlink("data/notes-link.txt", "data/notes.txt");
    t.dir("srv/empty-dir");
    let long = format!("{}/{}/file.txt", "l".repeat(90), "m".repeat(60));
    t.file(&long, b"long name\n");
    t.file("secret", b"key\n");
    t.mode("secret", 0o600);
    t.file("bin/tool", b"#!/bin/sh\n");
    t.mode("bin/tool", 0o755);
    t.mode("srv/empty-dir", 0o750);
    t.fifo("run/pipe");
    // Names are bytes, not text.
    t.file(
        std::ffi::OsStr::from_bytes(b"caf\xe9-\xff.txt"),
        b"latin-1 name\n",
    );
    let mut all = t.paths();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    all.push(PathBuf::new());
    for (i, rel) in all.iter().enumerate() {
        let i = i as i64;
        let nsec = if nanos {
            (i * 123_456_789 + 7) % 1_000_000_000
        } else {
            0
        };
        set_mtime(&t.root.join(rel), 1_500_000_000 + i * 3_607, nsec);
    }
    t
}

/// `tar ARGS`, which must succeed.
fn tar(args: &[&str], cwd: &Path) {
    let out = Command::new("tar")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tar --full-time -tvf FILE` (stdout).
fn listing(archive: &Path) -> String {
    let out = Command::new("tar")
        .args(["--full-time", "-tvf"])
        .arg(archive)
        .output()
        .expect("run tar -t");
    assert!(
        out.status.success(),
        "tar -tvf {} failed: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 listing")
}

fn zstd_tar_works() -> bool {
    Command::new("tar")
        .args(["--zstd", "-cf", "/dev/null", "--files-from", "/dev/null"])
        .status()
        .is_ok_and(|s| s.success())
}

fn import(env: &Env, archive: &Path, extra: &[&str]) -> serde_json::Value {
    env.coffer()
        .args(["--json", "import-tar"])
        .arg(archive)
        .args(extra)
        .run()
        .ok()
        .summary()
}

#[test]
fn gnu_tar_archives_import_and_restore_exactly() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fixture(&src, false);
    let mut archives = vec![
        ("gnu.tar", vec!["--format=gnu", "-cf"]),
        ("gnu.tar.gz", vec!["--format=gnu", "-czf"]),
    ];
    if zstd_tar_works() {
        archives.push(("gnu.tar.zst", vec!["--format=gnu", "--zstd", "-cf"]));
    }
    for (file, flags) in &archives {
        let path = env.path(file);
        let mut args: Vec<&str> = flags.clone();
        args.push(path.to_str().unwrap());
        args.extend(["-C", src.to_str().unwrap(), "."]);
        tar(&args, &env.root);
        let s = import(&env, &path, &["--name", "tree"]);
        assert_eq!(num(&s, "warnings"), 0, "{file}: {s}");
        assert_eq!(num(&s, "total_files_processed"), 8, "{file}: {s}");
        let id = s["snapshot_id"].as_str().unwrap();
        let out = env.restore_of(id, Path::new("/tree"));
        compare_trees(&src, &out);
    }
    let snaps = env.coffer().args(["--json", "snapshots"]).run().ok().json();
    for s in snaps.as_array().unwrap() {
        assert_eq!(s["paths"], serde_json::json!(["/tree"]), "{s}");
    }
}

#[test]
fn pax_archives_keep_nanosecond_mtimes() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fixture(&src, true);
    let path = env.path("pax.tar");
    tar(
        &[
            "--format=posix",
            "-cf",
            path.to_str().unwrap(),
            "-C",
            src.to_str().unwrap(),
            ".",
        ],
        &env.root,
    );
    let s = import(&env, &path, &[]);
    // The name defaults to the file name without its suffix.
    let out = env.restore_of(s["snapshot_id"].as_str().unwrap(), Path::new("/pax"));
    compare_trees(&src, &out);
}

#[test]
fn a_second_nightly_import_adds_little() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    let t = fixture(&src, false);
    t.random_file("data/more.bin", 2 << 20, 2);
    let night = |n: u32| -> (PathBuf, serde_json::Value) {
        let path = env.path(format!("system-2024-01-0{n}.tar.gz"));
        tar(
            &[
                "-czf",
                path.to_str().unwrap(),
                "-C",
                src.to_str().unwrap(),
                ".",
            ],
            &env.root,
        );
        let s = import(&env, &path, &["--name", "system"]);
        (path, s)
    };
    let (_, first) = night(1);
    let before = env.repo_size();
    t.file("data/notes.txt", b"notes, edited the next day\n");
    t.file("srv/new.txt", b"a new file\n");
    let (archive, second) = night(2);
    let grown = env.repo_size() - before;
    let size = std::fs::metadata(&archive).unwrap().len();
    assert!(
        grown < size / 10,
        "the second import grew the repository by {grown} bytes for a {size}-byte archive"
    );
    assert_eq!(second["parent"], first["snapshot_id"], "{second}");
    assert_eq!(num(&second, "files_new"), 1, "{second}");
    assert!(num(&second, "files_unmodified") >= 4, "{second}");
}

/// One `tar -tvf` line, split into what must match.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Listed {
    kind: char,
    perms: String,
    owner: String,
    size: String,
    mtime: String,
    link: Option<String>,
}

/// name → entry, with `./` prefixes and trailing slashes dropped and the
/// root left out; hard links become files with their group's size (which
/// name of a group is written first is the writer's choice), and the
/// groups are returned apart.
fn parse_listing(text: &str) -> (BTreeMap<String, Listed>, BTreeSet<BTreeSet<String>>) {
    let clean = |n: &str| {
        let n = n.strip_prefix("./").unwrap_or(n);
        n.strip_suffix('/').unwrap_or(n).to_string()
    };
    let mut out = BTreeMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        // perms owner size date time name; columns are padded, and the
        // name (which may hold spaces) is whatever follows the time.
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols.len() >= 6, "odd listing line {line:?}");
        let rest = line
            .split_once(&format!("{} {} ", cols[3], cols[4]))
            .map(|(_, name)| name)
            .unwrap_or_else(|| panic!("no name in {line:?}"))
            // The time column is padded when its fraction is short.
            .trim_start();
        let (name, link) = if let Some((n, t)) = rest.split_once(" -> ") {
            (n, Some(t.to_string()))
        } else if let Some((n, t)) = rest.split_once(" link to ") {
            links.push((clean(n), clean(t)));
            (n, None)
        } else {
            (rest, None)
        };
        let name = clean(name);
        if name.is_empty() || name == "." {
            continue;
        }
        let kind = cols[0].chars().next().unwrap();
        out.insert(
            name,
            Listed {
                kind: if kind == 'h' { '-' } else { kind },
                perms: cols[0][1..].to_string(),
                owner: cols[1].to_string(),
                size: cols[2].to_string(),
                mtime: format!("{} {}", cols[3], cols[4]),
                link,
            },
        );
    }
    let mut groups: Vec<BTreeSet<String>> = Vec::new();
    for (a, b) in links {
        match groups.iter_mut().find(|g| g.contains(&a) || g.contains(&b)) {
            Some(g) => {
                g.insert(a);
                g.insert(b);
            }
            None => groups.push([a, b].into_iter().collect()),
        }
    }
    for g in &groups {
        let size = g
            .iter()
            .filter_map(|n| out.get(n))
            .map(|e| e.size.clone())
            .max_by_key(|s| s.parse::<u64>().unwrap_or(0))
            .unwrap_or_default();
        for n in g {
            if let Some(e) = out.get_mut(n) {
                e.size = size.clone();
            }
        }
    }
    (out, groups.into_iter().collect())
}

#[test]
fn export_tar_gives_the_archive_back() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fixture(&src, true);
    let original = env.path("orig.tar");
    tar(
        &[
            "--format=posix",
            "-cf",
            original.to_str().unwrap(),
            "-C",
            src.to_str().unwrap(),
            ".",
        ],
        &env.root,
    );
    import(&env, &original, &["--name", "orig"]);
    let exported = env.path("exported.tar");
    env.coffer()
        .args(["export-tar", "latest", "--output"])
        .arg(&exported)
        .run()
        .ok();
    let (want, want_links) = parse_listing(&listing(&original));
    let (got, got_links) = parse_listing(&listing(&exported));
    assert_eq!(got, want);
    assert_eq!(got_links, want_links);
    assert_eq!(want_links.len(), 1, "the fixture has one hardlink pair");

    // Extracting gives the same files, bytes, modes and mtimes.
    let x = env.path("x");
    std::fs::create_dir(&x).unwrap();
    tar(&["-xf", exported.to_str().unwrap()], &x);
    // The export has no entry for its top directory itself.
    let md = std::fs::metadata(&src).unwrap();
    std::fs::set_permissions(&x, md.permissions()).unwrap();
    use std::os::unix::fs::MetadataExt;
    set_mtime(&x, md.mtime(), md.mtime_nsec());
    compare_trees(&src, &x);

    // To stdout, with an explicit path.
    let sub = env.path("sub.tar");
    std::fs::write(
        &sub,
        env.stdout_bytes(&["export-tar", "latest", "/orig/data"]),
    )
    .unwrap();
    let names: BTreeSet<String> = parse_listing(&listing(&sub)).0.into_keys().collect();
    let expect: BTreeSet<String> = ["big.bin", "latest", "notes-link.txt", "notes.txt"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, expect);

    // `dump --archive tar` shares the writer: same entries, under the prefix.
    let dumped = env.path("dump.tar");
    std::fs::write(&dumped, env.stdout_bytes(&["dump", "latest", "/orig/data"])).unwrap();
    let names: BTreeSet<String> = parse_listing(&listing(&dumped)).0.into_keys().collect();
    let prefixed: BTreeSet<String> = expect.iter().map(|n| format!("orig/data/{n}")).collect();
    assert_eq!(names, prefixed);
}

#[test]
fn the_container_is_recognised_by_content_not_name() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    let t = TreeBuilder::new(&src);
    t.file("a.txt", b"alpha\n");
    t.file("d/b.txt", b"beta\n");
    // gzip named .tar, plain named .tgz.
    let gz = env.path("x.tar");
    tar(
        &[
            "-czf",
            gz.to_str().unwrap(),
            "-C",
            src.to_str().unwrap(),
            ".",
        ],
        &env.root,
    );
    let plain = env.path("y.tgz");
    tar(
        &[
            "-cf",
            plain.to_str().unwrap(),
            "-C",
            src.to_str().unwrap(),
            ".",
        ],
        &env.root,
    );
    let a = import(&env, &gz, &[]);
    let b = import(&env, &plain, &[]);
    for (s, name) in [(&a, "x"), (&b, "y")] {
        let d = env
            .coffer()
            .args(["dump", s["snapshot_id"].as_str().unwrap()])
            .arg(format!("/{name}/d/b.txt"))
            .run()
            .ok();
        assert_eq!(d.stdout, "beta\n");
    }

    // From stdin, --name is required.
    env.coffer()
        .args(["import-tar", "-"])
        .run()
        .expect_code(1)
        .stderr_has("--name");
    let mut child = env
        .coffer()
        .args(["--json", "import-tar", "-", "--name", "piped"])
        .spawn();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&std::fs::read(&gz).unwrap()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = env
        .coffer()
        .args(["dump", "latest", "/piped/a.txt"])
        .run()
        .ok();
    assert_eq!(d.stdout, "alpha\n");

    // Not an archive at all: exit 1, named, nothing recorded.
    let text = env.path("notes.tar");
    std::fs::write(&text, "just text\n").unwrap();
    let before = env.objects("snapshots").len();
    env.coffer()
        .arg("import-tar")
        .arg(&text)
        .run()
        .expect_code(1)
        .stderr_has("notes.tar")
        .stderr_has("not a tar archive");
    assert_eq!(env.objects("snapshots").len(), before);
}

#[test]
fn truncated_archives_fail_and_record_no_snapshot() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    let t = TreeBuilder::new(&src);
    t.random_file("big.bin", 1 << 20, 3);
    t.file("small.txt", b"small\n");
    for (file, flag) in [("cut.tar", "-cf"), ("cut.tar.gz", "-czf")] {
        let whole = env.path(format!("whole-{file}"));
        tar(
            &[
                flag,
                whole.to_str().unwrap(),
                "-C",
                src.to_str().unwrap(),
                ".",
            ],
            &env.root,
        );
        let bytes = std::fs::read(&whole).unwrap();
        let cut = env.path(file);
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let r = env
            .coffer()
            .arg("import-tar")
            .arg(&cut)
            .run()
            .expect_code(1)
            .stderr_has(file)
            .stderr_has("no snapshot was written");
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        assert!(env.objects("snapshots").is_empty(), "{file}");
    }
}

/// A raw header block with `name` copied in as is (the tar crate's own
/// setters refuse hostile names, which is the point here).
fn raw_member(
    b: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[test]
fn hostile_members_are_skipped_and_nothing_lands_outside() {
    use tar::EntryType as T;
    let env = Env::new();
    env.init();
    let mut b = tar::Builder::new(Vec::new());
    raw_member(&mut b, b"ok.txt", T::Regular, 0o644, b"fine\n");
    raw_member(&mut b, b"../evil.txt", T::Regular, 0o644, b"evil\n");
    raw_member(&mut b, b"a/../../evil2.txt", T::Regular, 0o644, b"evil\n");
    raw_member(&mut b, b"/abs/file.txt", T::Regular, 0o644, b"abs\n");
    raw_member(&mut b, b"dup.txt", T::Regular, 0o644, b"first\n");
    raw_member(&mut b, b"dup.txt", T::Regular, 0o644, b"second\n");
    // Files before their directory's entry, and parents never listed.
    raw_member(&mut b, b"late/inner.txt", T::Regular, 0o644, b"inner\n");
    raw_member(&mut b, b"late/", T::Directory, 0o700, b"");
    raw_member(&mut b, b"no/parents/here.txt", T::Regular, 0o644, b"deep\n");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(T::Link);
    h.set_mode(0o644);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    b.append_link(&mut h, "ghost-link", "missing.txt").unwrap();
    raw_member(&mut b, b"ok.txt/under-a-file", T::Regular, 0o644, b"x\n");
    // A symlink may point anywhere: it is stored, never followed.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(T::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    b.append_link(&mut h, "up", "../../etc/passwd").unwrap();
    // The classic escape: write through that symlink. Its parent is not a
    // directory, so the member is refused.
    raw_member(&mut b, b"up/escape.txt", T::Regular, 0o644, b"escape\n");
    // A NUL in a PAX path.
    b.append_pax_extensions([("path", &b"nul\0name.txt"[..])])
        .unwrap();
    raw_member(&mut b, b"placeholder", T::Regular, 0o644, b"nul\n");
    let bytes = b.into_inner().unwrap();
    let archive = env.path("hostile.tar");
    std::fs::write(&archive, bytes).unwrap();

    let r = env
        .coffer()
        .arg("import-tar")
        .arg(&archive)
        .run()
        .expect_code(3)
        .stderr_has("`..`")
        .stderr_has("NUL")
        .stderr_has("not an earlier file")
        .stderr_has("not a directory")
        .stderr_has("more than once");
    assert!(!r.stderr.contains("panicked"));

    let out = env.restore_of("latest", Path::new("/hostile"));
    let got: BTreeSet<String> = TreeBuilder::new(&out)
        .paths()
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = [
        "abs",
        "abs/file.txt",
        "dup.txt",
        "late",
        "late/inner.txt",
        "no",
        "no/parents",
        "no/parents/here.txt",
        "ok.txt",
        "up",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, want);
    assert_eq!(std::fs::read(out.join("dup.txt")).unwrap(), b"second\n");
    use std::os::unix::fs::PermissionsExt;
    let late = std::fs::metadata(out.join("late")).unwrap();
    assert_eq!(late.permissions().mode() & 0o7777, 0o700);
    // Nothing escaped the restore target.
    let target = out.parent().unwrap();
    let top: Vec<_> = std::fs::read_dir(target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, vec![std::ffi::OsString::from("hostile")]);
    for p in ["evil.txt", "evil2.txt", "restore-0/evil.txt"] {
        assert!(!env.path(p).exists(), "{p} escaped");
    }
}
