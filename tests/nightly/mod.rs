//! What an operator ran into running the README's nightly jobs for real
//! (issue 18, and issue 19 item 7): remote-looking repository locations,
//! empty dumps, the repository backing itself up, times given and shown,
//! `latest` in a shared repository, the recorded user, and progress.

use crate::support::*;
use std::fs;
use std::io::Write;
use std::path::Path;

/// The names directly under `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every path `ls --json SNAP` lists.
fn listed(env: &Env, snap: &str, extra: &[&str]) -> Vec<String> {
    env.coffer()
        .args(["--json", "ls", snap])
        .args(extra)
        .run()
        .ok()
        .stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("ls --json line");
            v["path"].as_str().expect("path").to_string()
        })
        .collect()
}

#[test]
fn remote_looking_locations_are_refused_not_made_into_local_directories() {
    let env = Env::new();
    let data = TreeBuilder::new(env.path("data"));
    data.file("a.txt", b"a");
    let before = entries(&env.root);
    // S3 is supported: without credentials it says which variables to
    // set (whatever the caller's environment holds), and creates nothing.
    for (loc, shown) in [
        ("s3:https://host/bucket", "s3:https://host/bucket"),
        // restic's form without a scheme means https.
        (
            "s3:s3.amazonaws.com/bucket",
            "s3:https://s3.amazonaws.com/bucket",
        ),
    ] {
        env.bare()
            .env("COFFER_PASSWORD", PASSWORD)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .args(["init", "--repo", loc])
            .run()
            .expect_code(1)
            .stderr_has(shown)
            .stderr_has("AWS_ACCESS_KEY_ID");
    }
    for loc in [
        "sftp:user@host:/srv/coffer",
        "sftp://user@host/srv/coffer",
        "rclone:remote:coffer",
        "rest:https://host:8000/",
        "azure:container:/coffer",
        "gs:bucket:/coffer",
        "b2:bucket:coffer",
        "swift:container:/coffer",
        "https://host/bucket",
    ] {
        env.bare()
            .env("COFFER_PASSWORD", PASSWORD)
            .args(["init", "--repo", loc])
            .run()
            .expect_code(1)
            .stderr_has(loc)
            .stderr_has("local directory");
        // The same location through the environment, for a backup.
        env.bare()
            .env("COFFER_PASSWORD", PASSWORD)
            .env("COFFER_REPOSITORY", loc)
            .arg("backup")
            .arg(&data.root)
            .run()
            .expect_code(1)
            .stderr_has(loc);
        assert_eq!(entries(&env.root), before, "{loc} created something");
    }
    // A copy's source and destination are parsed the same way.
    env.init();
    env.coffer()
        .args(["copy", "--from-repo", "rclone:remote:coffer"])
        .run()
        .expect_code(1)
        .stderr_has("rclone:remote:coffer");
    env.bare()
        .env("COFFER_PASSWORD", PASSWORD)
        .arg("copy")
        .args(["--repo", "b2:bucket:coffer", "--from-repo"])
        .arg(&env.repo)
        .env("COFFER_FROM_PASSWORD", PASSWORD)
        .run()
        .expect_code(1)
        .stderr_has("b2:bucket:coffer");
    assert!(!env.path("rclone:remote:coffer").exists());
    assert!(!env.path("b2:bucket:coffer").exists());
    // A directory whose name merely looks like a scheme is still reachable,
    // as restic's `local:` or a `./` in front.
    for (loc, dir) in [("./s3:odd", "s3:odd"), ("local:plain", "plain")] {
        env.bare()
            .env("COFFER_PASSWORD", PASSWORD)
            .args(["init", "--repo", loc])
            .run()
            .ok();
        assert!(env.path(dir).join("config").is_file(), "{loc}");
    }
}

#[test]
fn a_stream_that_read_nothing_is_refused_unless_allowed() {
    let env = Env::new();
    env.init();
    // stdin is /dev/null: a dump that failed before printing anything.
    env.coffer()
        .args(["backup", "--stdin", "--stdin-name", "mysql.sql"])
        .run()
        .expect_code(1)
        .stderr_has("--allow-empty");
    env.coffer()
        .args(["backup", "--stdin-from-command", "--", "true"])
        .run()
        .expect_code(1)
        .stderr_has("--allow-empty");
    assert!(
        env.objects("snapshots").is_empty(),
        "an empty stream was saved"
    );
    let s = env.backup_json(&[], &["--stdin", "--allow-empty"]);
    assert_eq!(num(&s, "total_bytes_processed"), 0);
    assert_eq!(env.objects("snapshots").len(), 1);
}

/// No listed path is `dir` or below it.
fn assert_left_out(paths: &[String], dir: &Path) {
    let d = dir.to_str().expect("utf-8 path");
    for p in paths {
        assert!(
            p != d && !p.starts_with(&format!("{d}/")),
            "{p} (under {d}) was backed up"
        );
    }
}

#[test]
fn the_repository_and_the_cache_never_back_themselves_up() {
    let env = Env::new();
    // The zero-configuration repository and cache under the backed-up home.
    let home = TreeBuilder::new(&env.home);
    home.file("notes.txt", b"notes");
    let share = env.home.join(".local/share");
    let cache = env.home.join(".cache");
    let zero = || {
        env.bare()
            .env("XDG_DATA_HOME", &share)
            .env("XDG_CACHE_HOME", &cache)
    };
    zero().arg("backup").arg(&env.home).run().ok();
    let r = zero().arg("backup").arg(&env.home).run().ok();
    let repo = share.join("coffer/default");
    let cache_root = cache.join("coffer");
    assert!(
        r.stderr.contains(&format!(
            "leaving out the repository itself: {}",
            repo.display()
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!(
            "leaving out coffer's cache: {}",
            cache_root.display()
        )),
        "{}",
        r.stderr
    );
    let paths: Vec<String> = zero()
        .args(["--json", "ls", "latest"])
        .run()
        .ok()
        .stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["path"].as_str().expect("path").to_string()
        })
        .collect();
    assert!(paths.iter().any(|p| p.ends_with("/notes.txt")), "{paths:?}");
    assert_left_out(&paths, &repo);
    assert_left_out(&paths, &cache_root);
    let tag = fs::read(cache_root.join("CACHEDIR.TAG")).expect("CACHEDIR.TAG in the cache");
    assert!(tag.starts_with(b"Signature: 8a477f597d28d172789f06886806bc55"));

    // Any local repository and --cache-dir, not only the default ones.
    env.init();
    let s = env.backup_json(&[&env.root], &[]);
    let paths = listed(&env, s["snapshot_id"].as_str().unwrap(), &[]);
    assert!(paths.iter().any(|p| p.ends_with("/notes.txt")), "{paths:?}");
    assert_left_out(&paths, &env.repo);
    assert_left_out(&paths, &env.cache);
}

#[test]
fn backup_time_is_checked_and_rfc3339_is_accepted_everywhere() {
    let env = Env::new();
    env.init();
    let data = TreeBuilder::new(env.path("data"));
    data.file("a.txt", b"a");
    for bad in [
        "2026-13-45",
        "2026-11-10 25:61:61",
        "2026-02-29",
        "yesterday",
    ] {
        env.coffer()
            .args(["backup", "--time", bad])
            .arg(&data.root)
            .run()
            .expect_code(1)
            .stderr_has(bad);
    }
    assert!(env.objects("snapshots").is_empty());
    let at = parse_rfc3339("2026-11-10T02:00:00Z").unwrap();
    for given in ["2026-11-10T02:00:00Z", "2026-11-10T07:30:00+05:30"] {
        let s = env.backup_json(&[&data.root], &["--time", given]);
        let v = env.coffer().args(["--json", "snapshots"]).run().ok().json();
        let snap = v
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == s["snapshot_id"])
            .expect("the snapshot")
            .clone();
        let t = snap["time"].as_str().unwrap();
        assert_eq!(parse_rfc3339(t), Some(at), "--time {given} recorded {t}");
    }
    // A time in the future is recorded, with a warning.
    env.coffer()
        .args(["backup", "--time", "2099-01-01 00:00:00"])
        .arg(&data.root)
        .run()
        .ok()
        .stderr_has("in the future");
    // find takes the same forms, an offset included, and refuses the same.
    env.coffer()
        .args(["find", "a.txt", "--oldest", "2026-11-10T02:00:00+01:00"])
        .run()
        .ok();
    env.coffer()
        .args(["find", "a.txt", "--newest", "2026-02-30"])
        .run()
        .expect_code(1)
        .stderr_has("2026-02-30");
}

#[test]
fn times_are_shown_in_local_time() {
    let env = Env::new();
    env.init();
    let data = TreeBuilder::new(env.path("data"));
    let f = data.file("a.txt", b"a");
    // 2026-11-10 02:00:00 UTC.
    set_mtime(&f, 1_794_276_000, 0);
    let kolkata = || env.coffer().env("TZ", "Asia/Kolkata");
    // Local time given, local time shown; the instant is the same.
    kolkata()
        .args(["backup", "--time", "2026-11-10 07:30:00"])
        .arg(&data.root)
        .run()
        .ok();
    let r = kolkata().arg("snapshots").run().ok();
    assert!(r.stdout.contains("2026-11-10 07:30:00"), "{}", r.stdout);
    let v = kolkata().args(["--json", "snapshots"]).run().ok().json();
    let t = v[0]["time"].as_str().unwrap();
    assert!(
        t.starts_with("2026-11-10T07:30:00") && t.ends_with("+05:30"),
        "{t}"
    );
    assert_eq!(parse_rfc3339(t), parse_rfc3339("2026-11-10T02:00:00Z"));
    let r = kolkata()
        .args(["ls", "latest", "--long"])
        .arg(&f)
        .run()
        .ok();
    assert!(r.stdout.contains("2026-11-10 07:30:00"), "{}", r.stdout);
    let r = kolkata()
        .args(["--json", "ls", "latest"])
        .arg(&f)
        .run()
        .ok();
    assert!(r.stdout.contains("2026-11-10T07:30:00"), "{}", r.stdout);
    assert!(r.stdout.contains("+05:30"), "{}", r.stdout);
}

#[test]
fn latest_can_be_narrowed_by_host_tag_and_path() {
    let env = Env::new();
    env.init();
    let a = TreeBuilder::new(env.path("alpha"));
    a.file("a.txt", b"alpha's file");
    let b = TreeBuilder::new(env.path("beta"));
    b.file("b.txt", b"beta's file");
    let sa = env.backup_json(&[&a.root], &["--host", "alpha", "--tag", "db"]);
    let id_a = sa["snapshot_id"].as_str().unwrap().to_string();
    // Another machine's backup ran last: plain `latest` is that one.
    env.backup_json(&[&b.root], &["--host", "beta"]);
    let a_file = a.path("a.txt");
    let a_path = a.root.to_str().unwrap();
    for filter in [["--host", "alpha"], ["--tag", "db"], ["--path", a_path]] {
        let paths = listed(&env, "latest", &filter);
        assert!(
            paths.iter().any(|p| p.ends_with("/a.txt"))
                && !paths.iter().any(|p| p.ends_with("/b.txt")),
            "ls latest {filter:?}: {paths:?}"
        );
        let r = env
            .coffer()
            .args(["dump", "latest"])
            .arg(&a_file)
            .args(filter)
            .run()
            .ok();
        assert_eq!(r.stdout, "alpha's file");
    }
    let target = env.path("restored");
    env.coffer()
        .args(["restore", "latest", "--host", "alpha", "--target"])
        .arg(&target)
        .run()
        .ok();
    assert_eq!(
        fs::read(restored(&target, &a_file)).unwrap(),
        b"alpha's file"
    );
    let tar = env.path("alpha.tar");
    env.coffer()
        .args(["export-tar", "latest", "--tag", "db", "--output"])
        .arg(&tar)
        .run()
        .ok();
    let bytes = fs::read(&tar).unwrap();
    assert!(bytes.windows(12).any(|w| w == b"alpha's file"));
    let v = env
        .coffer()
        .args([
            "--json", "drill", "latest", "--host", "alpha", "--sample", "1",
        ])
        .run()
        .ok()
        .summary();
    assert_eq!(v["snapshots"], serde_json::json!([id_a]));
    env.coffer()
        .args(["ls", "latest", "--host", "gamma"])
        .run()
        .expect_code(1)
        .stderr_has("--host");
}

#[test]
fn the_user_comes_from_the_uid_when_user_is_unset() {
    let env = Env::new();
    env.init();
    let data = TreeBuilder::new(env.path("data"));
    data.file("a.txt", b"a");
    env.coffer()
        .env_remove("USER")
        .env_remove("LOGNAME")
        .arg("backup")
        .arg(&data.root)
        .run()
        .ok();
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("id -un");
    let me = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let v = env.coffer().args(["--json", "snapshots"]).run().ok().json();
    assert_eq!(v[0]["username"], serde_json::json!(me));
}

#[test]
fn status_lines_count_bytes_while_a_stream_is_read() {
    let env = Env::new();
    env.init();
    let mut child = env
        .coffer()
        .args(["--json", "backup", "--stdin", "--stdin-name", "big.sql"])
        .spawn();
    {
        let mut stdin = child.stdin.take().expect("stdin");
        let mut rng = Rng::new(14);
        stdin.write_all(&rng.bytes(4 << 20)).expect("write");
        // Status lines come at most once a second: wait past that, mid-file.
        std::thread::sleep(std::time::Duration::from_millis(1200));
        stdin.write_all(&rng.bytes(1 << 20)).expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.last().unwrap()["message_type"], "summary");
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .any(|l| l["message_type"] == "status" && l["bytes_done"].as_u64() > Some(0)),
        "no status line counted bytes before the summary:\n{stdout}"
    );
}

#[test]
fn an_empty_coffer_password_is_refused() {
    let env = Env::new();
    env.coffer()
        .env("COFFER_PASSWORD", "")
        .arg("init")
        .run()
        .expect_code(1)
        .stderr_has("COFFER_PASSWORD");
    assert!(!env.repo.join("config").exists());
}

/// Every command closes the index cache on its way out, so SQLite folds
/// its write-ahead log into the file: a log left behind would have to be
/// read and checksummed whole by the next command that opens the cache.
#[test]
fn commands_leave_no_write_ahead_log_in_the_cache() {
    let env = Env::new();
    env.init();
    let data = TreeBuilder::new(env.path("data"));
    data.file("a.txt", b"a");
    data.file("b.txt", b"b");
    let logs = || {
        let mut files = Vec::new();
        collect_files(&env.cache, &mut files);
        let sqlite = files.iter().filter(|f| f.ends_with("index.sqlite")).count();
        let wal: Vec<_> = files
            .into_iter()
            .filter(|f| f.to_string_lossy().ends_with("-wal"))
            .collect();
        (sqlite, wal)
    };
    env.coffer().arg("backup").arg(env.path("data")).run().ok();
    assert_eq!(logs(), (1, vec![]), "after a backup");
    env.coffer().arg("backup").arg(env.path("data")).run().ok();
    env.coffer().args(["ls", "latest"]).run().ok();
    env.coffer().arg("check").run().ok();
    assert_eq!(logs(), (1, vec![]), "after backup, ls and check");
}
