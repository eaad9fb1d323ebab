//! Real sources (issue #8): streams from stdin and from a command, and the
//! exclude rules of a backup.

use crate::support::*;
use std::io::Write;

fn backup_stdin(env: &Env, data: &[u8], name: &str) -> serde_json::Value {
    let mut child = env
        .coffer()
        .args(["--json", "backup", "--stdin", "--stdin-name", name])
        .spawn();
    {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(data).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("summary");
    serde_json::from_str(last).expect("json")
}

#[test]
fn stdin_dumps_round_trip_and_deduplicate() {
    let env = Env::new();
    env.init();
    // A "dump" of 8 MB of text-like rows; the next day changes a few rows.
    let mut day1 = Vec::new();
    for i in 0..120_000u32 {
        day1.extend_from_slice(
            format!("INSERT INTO t VALUES ({i}, 'row {}', {});\n", i * 7, i % 97).as_bytes(),
        );
    }
    let mut day2 = day1.clone();
    let at = day2.len() / 2;
    day2.splice(
        at..at,
        b"INSERT INTO t VALUES (-1, 'new row', 0);\n"
            .iter()
            .copied(),
    );
    let s1 = backup_stdin(&env, &day1, "dump_all.sql");
    let size1 = env.repo_size();
    let s2 = backup_stdin(&env, &day2, "dump_all.sql");
    let grown = env.repo_size() - size1;
    assert!(num(&s2, "data_added") < day2.len() as u64 / 4, "{s2}");
    assert!(
        grown < day2.len() as u64 / 4,
        "the second dump grew the repository by {grown} bytes"
    );
    assert_eq!(
        s2["parent"], s1["snapshot_id"],
        "the second dump's parent is the first"
    );
    // Both restore exactly, as /dump_all.sql.
    for (snap, data) in [(&s1, &day1), (&s2, &day2)] {
        let id = snap["snapshot_id"].as_str().unwrap();
        let r = env.coffer().args(["dump", id, "/dump_all.sql"]).run().ok();
        assert!(r.stdout.as_bytes() == &data[..], "dump of {id} differs");
    }
}

#[test]
fn failing_command_leaves_no_snapshot() {
    let env = Env::new();
    env.init();
    let r = env
        .coffer()
        .args([
            "backup",
            "--stdin-from-command",
            "--",
            "sh",
            "-c",
            "echo partial; echo boom >&2; exit 7",
        ])
        .run()
        .expect_code(1);
    assert!(
        r.stderr.contains("boom"),
        "the command's stderr is shown: {}",
        r.stderr
    );
    assert!(r.stderr.contains("no snapshot"), "{}", r.stderr);
    assert!(env.objects("snapshots").is_empty());
    // A good command works and its output restores.
    let r = env
        .coffer()
        .args([
            "--json",
            "backup",
            "--stdin-name",
            "out.txt",
            "--stdin-from-command",
            "--",
            "sh",
            "-c",
            "seq 1 50000",
        ])
        .run()
        .ok();
    assert_eq!(num(&r.summary(), "total_bytes_processed"), 288_894);
    let d = env.coffer().args(["dump", "latest", "/out.txt"]).run().ok();
    assert!(d.stdout.starts_with("1\n2\n3\n") && d.stdout.ends_with("50000\n"));
}

#[test]
fn excludes_leave_out_what_they_say_and_nothing_else() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("home"));
    t.file("a.tmp", b"x");
    t.file("keep/a.tmpx", b"kept");
    t.file(".cache/x/b", b"x");
    t.file(".db/looker.lck", b"x");
    t.file(".db/looker.db", b"kept");
    t.file(".snapshots/s", b"x");
    t.file(
        "cachey/CACHEDIR.TAG",
        b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n",
    );
    t.file("cachey/data", b"x");
    t.file("fakecache/CACHEDIR.TAG", b"not a signature");
    t.file("fakecache/data", b"kept");
    t.file("marked/.nobackup", b"");
    t.file("marked/m", b"x");
    t.random_file("big", 2_000_000, 1);
    t.file("logs/app.log", b"x");
    t.file("logs/keep.log", b"kept");
    t.file("Photo.JPG", b"x");
    let excl = env.path("excludes");
    std::fs::write(
        &excl,
        "# caches\n.cache\n*.tmp\n\n.snapshots\n.db/*.lck\n*.log\n!keep.log\n",
    )
    .unwrap();
    env.coffer()
        .arg("backup")
        .arg(&t.root)
        .arg("--exclude-file")
        .arg(&excl)
        .args([
            "--exclude-caches",
            "--exclude-if-present",
            ".nobackup",
            "--exclude-larger-than",
            "1M",
            "--iexclude",
            "*.jpg",
        ])
        .run()
        .ok();
    let ls = env.coffer().args(["ls", "latest"]).run().ok();
    let root = t.root.to_string_lossy().to_string();
    let listed: Vec<String> = ls
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&root).map(|s| s.to_string()))
        .filter(|s| !s.is_empty())
        .collect();
    let want = [
        "/.db",
        "/.db/looker.db",
        "/cachey",
        "/cachey/CACHEDIR.TAG",
        "/fakecache",
        "/fakecache/CACHEDIR.TAG",
        "/fakecache/data",
        "/keep",
        "/keep/a.tmpx",
        "/logs",
        "/logs/keep.log",
    ];
    assert_eq!(listed, want, "ls:\n{}", ls.stdout);
}

#[test]
fn one_file_system_keeps_the_mount_point_empty() {
    use std::os::unix::fs::MetadataExt;
    // /dev/pts is its own filesystem (devpts) inside /dev on Linux.
    let (Ok(dev), Ok(pts)) = (std::fs::metadata("/dev"), std::fs::metadata("/dev/pts")) else {
        println!("NOTE: no /dev/pts here; --one-file-system not exercised");
        return;
    };
    if dev.dev() == pts.dev()
        || std::fs::read_dir("/dev/pts")
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    {
        println!(
            "NOTE: /dev/pts is not a separate, non-empty mount here; --one-file-system not exercised"
        );
        return;
    }
    let env = Env::new();
    env.init();
    let list = |extra: &[&str]| -> Vec<String> {
        // /dev/pts is a mount point below /dev.
        let r = env
            .coffer()
            .args(["backup", "/dev", "--exclude", "/dev/shm"])
            .args(extra)
            .run_any();
        assert!(r.code == 0 || r.code == 3, "{}", r.stderr);
        let ls = env.coffer().args(["ls", "latest", "/dev/pts"]).run().ok();
        ls.stdout.lines().map(str::to_string).collect()
    };
    let crossing = list(&[]);
    assert!(
        crossing.len() > 1,
        "without -x, /dev/pts is walked: {crossing:?}"
    );
    let staying = list(&["--one-file-system"]);
    assert_eq!(
        staying,
        vec!["/dev/pts".to_string()],
        "with -x the mount point is kept, empty"
    );
}

/// `--files-from` (comments and blanks skipped), `--files-from-verbatim`
/// (every line a path) and `--files-from-raw` (NUL-separated) add paths
/// to the backup; a listed path that is missing is a warning (exit 3).
#[test]
fn files_from_lists_add_the_paths_they_name() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("a/one.txt", b"one\n");
    t.file("b/two.txt", b"two\n");
    t.file("#hash/three.txt", b"three\n");
    t.file("c d/four.txt", b"four\n");
    t.file("not-listed/five.txt", b"five\n");
    let list = env.path("list.txt");
    std::fs::write(
        &list,
        format!(
            "# what goes to the nightly backup\n\n  {}  \r\n{}\n",
            t.path("a").display(),
            t.path("b/two.txt").display()
        ),
    )
    .unwrap();
    let verbatim = env.path("verbatim.txt");
    std::fs::write(&verbatim, format!("{}\n", t.path("#hash").display())).unwrap();
    let raw = env.path("raw.bin");
    let mut bytes = t.path("c d").as_os_str().as_bytes().to_vec();
    bytes.push(0);
    std::fs::write(&raw, bytes).unwrap();
    let s = env.backup_json(
        &[],
        &[
            "--files-from",
            list.to_str().unwrap(),
            "--files-from-verbatim",
            verbatim.to_str().unwrap(),
            "--files-from-raw",
            raw.to_str().unwrap(),
        ],
    );
    assert_eq!(num(&s, "total_files_processed"), 4, "{s}");
    let snaps = env.coffer().args(["--json", "snapshots"]).run().ok().json();
    let paths: Vec<String> = snaps[0]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = ["#hash", "a", "b/two.txt", "c d"]
        .iter()
        .map(|p| t.path(p).display().to_string())
        .collect();
    assert_eq!(paths, want);
    // A listed path that does not exist: the rest is backed up, exit 3.
    std::fs::write(&list, format!("{}\n/no/such/path\n", t.path("a").display())).unwrap();
    env.coffer()
        .args(["backup", "--files-from"])
        .arg(&list)
        .run()
        .expect_code(3)
        .stderr_has("/no/such/path");
    env.coffer()
        .args(["backup", "--files-from"])
        .arg(env.path("missing-list"))
        .run()
        .expect_code(1)
        .stderr_has("cannot read the list of paths");
    // A stream backup takes no list: refused, not silently ignored.
    env.coffer()
        .args(["backup", "--stdin", "--files-from"])
        .arg(&list)
        .run()
        .expect_code(1)
        .stderr_has("--files-from");
}

/// `backup --dry-run` reads and compares as a backup does, reports what
/// would be added, and writes nothing: no snapshot, no pack, no index.
#[test]
fn a_dry_run_reports_what_a_backup_would_add_and_writes_nothing() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("model.bin", 600_000, 3);
    t.file("notes.txt", &b"notes\n".repeat(1000));
    env.backup_json(&[&t.root], &[]);
    t.random_file("new.bin", 300_000, 4);
    t.file("notes.txt", &b"changed notes\n".repeat(1000));
    let before = env.repo_listing();
    let r = env
        .coffer()
        .args(["--json", "backup", "--dry-run"])
        .arg(&t.root)
        .run()
        .ok();
    let s = r.summary();
    assert_eq!(s["dry_run"], true, "{s}");
    assert_eq!(num(&s, "files_new"), 1, "{s}");
    assert_eq!(num(&s, "files_changed"), 1, "{s}");
    assert_eq!(num(&s, "files_unmodified"), 1, "{s}");
    // The new file and the changed notes, raw, plus a few small trees.
    let added = num(&s, "data_added_uncompressed");
    assert!(
        (300_000 + 14_000..300_000 + 14_000 + 16_384).contains(&added),
        "{s}"
    );
    assert_eq!(
        env.repo_listing(),
        before,
        "a dry run wrote to the repository"
    );
    assert_eq!(env.snapshot_ids().len(), 1);
    let out = env
        .coffer()
        .args(["backup", "-n"])
        .arg(&t.root)
        .run()
        .ok()
        .stdout;
    assert!(
        out.contains("would add") && out.contains("nothing was written"),
        "{out}"
    );
    // The zero-configuration repository is not created by a dry run.
    env.bare()
        .args(["backup", "--dry-run"])
        .arg(&t.root)
        .run()
        .expect_code(1)
        .stderr_has("no repository yet");
    assert!(!env.xdg_data.join("coffer/default").exists());
}

/// restic's spelling of the stream's name, `--stdin-filename`, works as
/// coffer's `--stdin-name`: a restic user's nightly script runs as it is.
#[test]
fn restics_stdin_filename_names_the_stream() {
    let env = Env::new();
    env.init();
    let mut child = env
        .coffer()
        .args(["backup", "--stdin", "--stdin-filename", "all.sql"])
        .spawn();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"SELECT 1;\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = env.coffer().args(["dump", "latest", "/all.sql"]).run().ok();
    assert_eq!(dumped.stdout, "SELECT 1;\n");
}
