//! Every command against a repository in a real S3 bucket (SeaweedFS in
//! CI): backups restore byte for byte with their metadata, the reading
//! commands see what was stored, maintenance leaves a repository that
//! checks clean, copies run both ways between a directory and a bucket;
//! the backend contract on the live server; and the crash matrix at a
//! sample of kill points (`crash.rs`).
//!
//! They need `COFFER_TEST_S3=http://HOST:PORT/BUCKET` and the `AWS_*`
//! credentials; without them they say they are skipped, unless
//! `COFFER_REQUIRE_S3` is set (CI sets it). Each test works under a prefix
//! of its own, removed when it passes.

mod crash;

use crate::support::*;
use coffer::backend::FileKind;
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const MIB: usize = 1024 * 1024;

fn id(v: &serde_json::Value) -> String {
    v["snapshot_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no snapshot_id in {v}"))
        .to_string()
}

/// `backup --json --stdin --stdin-name NAME` fed `data`; the summary.
fn stdin_backup(env: &Env, name: &str, data: &[u8]) -> serde_json::Value {
    let mut child = env
        .coffer()
        .args(["--json", "backup", "--stdin", "--stdin-name", name])
        .spawn();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("feed stdin");
    let out = child.wait_with_output().expect("wait for backup --stdin");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    run.ok().summary()
}

/// The JSON Lines a command printed.
fn json_lines(r: &Run) -> Vec<serde_json::Value> {
    r.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Every regular file under `dir`, relative to it.
fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut all = Vec::new();
    collect_files(dir, &mut all);
    all.iter()
        .map(|f| f.strip_prefix(dir).expect("under dir").to_path_buf())
        .collect()
}

/// A tree with the awkward entries a restore must get right: a file over
/// several 1 MiB packs, compressible data, a hardlink, a symlink, an
/// empty directory, a non-default mode.
fn awkward_tree(env: &Env) -> TreeBuilder {
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("data/big.bin", 2 * MIB + 17, 1);
    write_mixed_file(&t.path("data/mixed.dat"), MIB as u64, 2);
    t.file("docs/readme.txt", &b"read me\n".repeat(500));
    t.symlink("docs/link", "readme.txt");
    t.hardlink("data/big.link", "data/big.bin");
    t.dir("empty");
    t.mode("docs/readme.txt", 0o640);
    t.set_all_mtimes();
    t
}

#[test]
fn backup_restore_and_every_reading_command_on_s3() {
    let Some(env) = Env::s3("backup_restore_and_every_reading_command_on_s3") else {
        return;
    };
    env.init_with(&["--pack-size", "1M"]);
    let t = awkward_tree(&env);

    // backup, then restore whole: bytes and metadata.
    let b1 = env.backup_json(&[&t.root], &["--tag", "first"]);
    assert_eq!(num(&b1, "files_new"), 4, "{b1}");
    // The random 2 MiB at least (the mixed file compresses).
    assert!(num(&b1, "data_added") > 2 * MIB as u64, "{b1}");
    let s1 = id(&b1);
    compare_trees(&t.root, &env.restore_of(&s1, &t.root));
    let golden1 = env.restore_of(&s1, &t.root);

    // A second backup reads only what changed.
    t.file("docs/readme.txt", b"changed\n");
    t.file("new/n.txt", b"new file\n");
    fs::remove_file(t.path("data/mixed.dat")).unwrap();
    let b2 = env.backup_json(&[&t.root], &[]);
    assert_eq!(
        (num(&b2, "files_new"), num(&b2, "files_changed")),
        (1, 1),
        "{b2}"
    );
    assert!(num(&b2, "data_added") < 64 * 1024, "{b2}");
    let s2 = id(&b2);
    compare_trees(&t.root, &env.restore_of(&s2, &t.root));

    // backup --stdin, read back with dump.
    let stream = Rng::new(3).bytes(MIB + 5);
    let b3 = stdin_backup(&env, "stream.bin", &stream);
    let s3 = id(&b3);
    assert!(env.stdout_bytes(&["dump", &s3, "/stream.bin"]) == stream);

    // snapshots
    let snaps = env.coffer().args(["--json", "snapshots"]).run().ok().json();
    let snaps = snaps.as_array().expect("array");
    let ids: Vec<&str> = snaps.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [s1.as_str(), s2.as_str(), s3.as_str()]);
    assert_eq!(snaps[0]["tags"][0], "first");
    assert_eq!(snaps[1]["paths"][0], t.root.to_str().unwrap());
    assert_eq!(snaps[1]["parent"], s1.as_str());

    // ls: the second snapshot's entries under the tree.
    let ls = env.coffer().args(["--json", "ls", &s2]).run().ok();
    let listed: BTreeSet<String> = json_lines(&ls)
        .iter()
        .filter(|n| n["message_type"] == "node")
        .filter_map(|n| n["path"].as_str())
        .filter_map(|p| {
            Some(
                Path::new(p)
                    .strip_prefix(&t.root)
                    .ok()?
                    .to_str()?
                    .to_string(),
            )
        })
        .collect();
    let want: BTreeSet<String> = [
        "",
        "data",
        "data/big.bin",
        "data/big.link",
        "docs",
        "docs/readme.txt",
        "docs/link",
        "empty",
        "new",
        "new/n.txt",
    ]
    .map(String::from)
    .into();
    assert_eq!(listed, want);

    // restore --include of one file brings back that file alone.
    let target = env.path("one");
    let one = t.path("docs/readme.txt");
    env.coffer()
        .args(["restore", &s2, "--target"])
        .arg(&target)
        .arg("--include")
        .arg(&one)
        .run()
        .ok();
    assert_eq!(
        files_under(&target),
        BTreeSet::from([restored(Path::new(""), &one)])
    );
    assert_eq!(fs::read(restored(&target, &one)).unwrap(), b"changed\n");

    // dump of a file
    let big = t.path("data/big.bin");
    assert!(env.stdout_bytes(&["dump", &s1, big.to_str().unwrap()]) == fs::read(&big).unwrap());

    // diff s1 s2
    let d = env.coffer().args(["--json", "diff", &s1, &s2]).run().ok();
    let changes: BTreeSet<(String, String)> = json_lines(&d)
        .iter()
        .filter(|c| c["message_type"] == "change")
        .map(|c| {
            (
                c["modifier"].as_str().unwrap().to_string(),
                c["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let p = |rel: &str| t.path(rel).to_str().unwrap().to_string();
    let expect: BTreeSet<(String, String)> = [
        ("+", p("new") + "/"),
        ("+", p("new/n.txt")),
        ("-", p("data/mixed.dat")),
        ("M", p("docs/readme.txt")),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p))
    .collect();
    assert_eq!(changes, expect);

    // find: big.bin is in the two tree snapshots.
    let f = env.coffer().args(["--json", "find", "big.bin"]).run().ok();
    let f = json_lines(&f);
    let matched: BTreeSet<&str> = f
        .iter()
        .filter(|m| m["message_type"] == "match")
        .map(|m| m["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(matched, BTreeSet::from([s1.as_str(), s2.as_str()]));
    assert_eq!(f.last().unwrap()["snapshots_searched"], 3);

    // stats: the stream snapshot's size, and raw-data against the bucket.
    let st = env
        .coffer()
        .args(["--json", "stats", &s3])
        .run()
        .ok()
        .json();
    assert_eq!(
        (num(&st, "total_size"), num(&st, "files")),
        (stream.len() as u64, 1),
        "{st}"
    );
    let raw = env
        .coffer()
        .args(["--json", "stats", "--mode", "raw-data"])
        .run()
        .ok()
        .json();
    let packs: Vec<u64> = env
        .repo_listing()
        .iter()
        .filter(|(p, _)| p.starts_with("packs"))
        .map(|(_, size)| *size)
        .collect();
    let repo = &raw["repository"];
    assert_eq!(num(repo, "packs"), packs.len() as u64, "{raw}");
    assert_eq!(num(repo, "pack_bytes"), packs.iter().sum::<u64>(), "{raw}");
    assert_eq!(num(repo, "unreferenced_bytes"), 0, "{raw}");

    // check and drill
    let c = env.check_clean();
    assert_eq!(c["errors"].as_array().map(Vec::len), Some(0), "{c}");
    let dr = env
        .coffer()
        .args(["--json", "drill", "--sample", "100%", &s1])
        .run()
        .ok();
    let dr = json_lines(&dr).pop().unwrap();
    assert_eq!(dr["failures"].as_array().map(Vec::len), Some(0), "{dr}");
    assert!(num(&dr, "files_verified") >= 3, "{dr}");

    // export-tar of s1, imported again as a snapshot of /imported, which
    // restores to the first tree exactly.
    let tar = env.path("s1.tar");
    env.coffer()
        .args(["export-tar", &s1])
        .arg(t.root.to_str().unwrap())
        .arg("--output")
        .arg(&tar)
        .run()
        .ok();
    let imp = env
        .coffer()
        .args(["--json", "import-tar", "--name", "imported"])
        .arg(&tar)
        .run()
        .ok()
        .summary();
    let s4 = id(&imp);
    let back = env.path("imported");
    env.coffer()
        .args(["restore", &format!("{s4}:/imported"), "--target"])
        .arg(&back)
        .run()
        .ok();
    // The archive has no entry for its top directory, so that one
    // directory has the import's time.
    let top = fs::metadata(&golden1).unwrap();
    set_mtime(&back, top.mtime(), top.mtime_nsec());
    compare_trees(&golden1, &back);
    env.check_clean();
}

#[test]
fn forget_prune_repair_key_and_unlock_on_s3() {
    let Some(env) = Env::s3("forget_prune_repair_key_and_unlock_on_s3") else {
        return;
    };
    env.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("gone.bin", 2 * MIB, 1);
    t.random_file("kept.bin", 2 * MIB, 2);
    t.file("small.txt", b"small\n");
    let s1 = id(&env.backup_json(&[&t.root], &[]));
    fs::remove_file(t.path("gone.bin")).unwrap();
    t.random_file("c.bin", MIB, 3);
    let s2 = id(&env.backup_json(&[&t.root], &[]));

    // forget the first snapshot, prune what only it held.
    let f = env
        .coffer()
        .args(["--json", "forget", "--keep-last", "1"])
        .run()
        .ok()
        .summary();
    assert_eq!(f["removed"], serde_json::json!([s1]), "{f}");
    assert_eq!(env.snapshot_ids(), vec![s2.clone()]);
    let packs_before = env.object_names("packs");
    let p = env.coffer().args(["--json", "prune"]).run().ok().summary();
    let deleted = num(&p, "packs_deleted");
    assert!(deleted >= 1, "prune removed nothing: {p}");
    assert!(
        num(&p, "bytes_freed") >= 3 * MIB as u64 / 2,
        "2 MiB of random data became unreferenced: {p}"
    );
    let packs_after = env.object_names("packs");
    assert_eq!(
        packs_after.len() as u64,
        // Repacked packs count among the deleted ones.
        packs_before.len() as u64 - deleted + num(&p, "packs_written"),
        "{p}"
    );
    let after = env.check_clean();
    assert_eq!(after["errors"].as_array().map(Vec::len), Some(0), "{after}");
    compare_trees(&t.root, &env.restore_of(&s2, &t.root));

    // repair index: every segment deleted from the bucket, rebuilt from
    // the packs; with a fresh cache nothing is found before the repair.
    let b = env.backend();
    let segments = env.object_names("index");
    assert!(!segments.is_empty());
    b.delete_many(FileKind::Index, &segments).unwrap();
    fs::remove_dir_all(&env.cache).unwrap();
    let broken = env.coffer().args(["--json", "check", "--read-data"]).run();
    assert_eq!(
        broken.code, 1,
        "check passed without an index:\n{}",
        broken.stdout
    );
    let r = env
        .coffer()
        .args(["--json", "repair", "index"])
        .run()
        .ok()
        .summary();
    assert_eq!(num(&r, "packs_indexed"), packs_after.len() as u64, "{r}");
    assert!(num(&r, "segments_written") >= 1, "{r}");
    env.check_clean();
    compare_trees(&t.root, &env.restore_of(&s2, &t.root));

    // key add / list / remove
    let pw = env.path("second.pw");
    fs::write(&pw, "second secret\n").unwrap();
    env.coffer()
        .args(["key", "add", "--new-password-file"])
        .arg(&pw)
        .run()
        .ok();
    let keys = env
        .coffer()
        .args(["--json", "key", "list"])
        .run()
        .ok()
        .json();
    let keys = keys.as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let second = || env.coffer().env("COFFER_PASSWORD", "second secret");
    assert_eq!(
        second().args(["--json", "snapshots"]).run().ok().json()[0]["id"],
        s2.as_str()
    );
    let added = keys
        .iter()
        .find(|k| k["current"] == false)
        .expect("the added key")["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.coffer().args(["key", "remove", &added]).run().ok();
    assert_eq!(env.object_names("keys").len(), 1);
    second().arg("snapshots").run().expect_code(1);

    // unlock: a killed backup's lock is removed, and the next backup works.
    t.random_file("d.bin", MIB, 4);
    env.killed_backup(&t.root);
    assert_eq!(
        env.object_names("locks").len(),
        1,
        "no lock left by the kill"
    );
    let u = env.coffer().args(["--json", "unlock"]).run().ok().summary();
    assert_eq!(num(&u, "removed"), 1, "{u}");
    assert!(env.object_names("locks").is_empty());
    let s3 = id(&env.backup_json(&[&t.root], &[]));
    compare_trees(&t.root, &env.restore_of(&s3, &t.root));
    env.check_clean();
}

/// A local repository with two snapshots of an awkward tree.
fn local_source(env: &Env) -> TreeBuilder {
    env.init_with(&["--pack-size", "1M"]);
    let t = awkward_tree(env);
    env.backup_json(&[&t.root], &["--tag", "nightly"]);
    t.file("later/day2.log", b"second day\n");
    env.backup_json(&[&t.root], &["--tag", "nightly"]);
    t
}

/// `init --from-repo FROM` then `copy --json --from-repo FROM` into `to`;
/// the copy's summary.
fn init_and_copy(to: &Env, from: &Env) -> serde_json::Value {
    let with_from = || to.coffer().env("COFFER_FROM_PASSWORD", PASSWORD);
    with_from()
        .args(["init", "--from-repo"])
        .arg(&from.repo)
        .run()
        .ok();
    let r = with_from()
        .args(["--json", "copy", "--from-repo"])
        .arg(&from.repo)
        .run()
        .ok();
    r.summary()
}

#[test]
fn copy_from_a_directory_to_s3_and_back() {
    let Some(remote) = Env::s3("copy_from_a_directory_to_s3_and_back") else {
        return;
    };
    let local = Env::new();
    let t = local_source(&local);
    let ids = local.snapshot_ids();

    // local -> S3
    let s = init_and_copy(&remote, &local);
    assert_eq!(num(&s, "snapshots_copied"), 2, "{s}");
    assert_eq!(remote.snapshot_ids().len(), 2);
    compare_trees(&t.root, &remote.restore_of("latest", &t.root));
    remote.check_clean();
    // A rerun finds both and uploads nothing.
    let packs = remote.object_names("packs");
    let again = remote
        .coffer()
        .env("COFFER_FROM_PASSWORD", PASSWORD)
        .args(["--json", "copy", "--from-repo"])
        .arg(&local.repo)
        .run()
        .ok()
        .summary();
    assert_eq!(
        (
            num(&again, "snapshots_copied"),
            num(&again, "snapshots_present")
        ),
        (0, 2),
        "{again}"
    );
    assert_eq!(remote.object_names("packs"), packs);

    // S3 -> another local directory
    let back = Env::new();
    let s = init_and_copy(&back, &remote);
    assert_eq!(num(&s, "snapshots_copied"), 2, "{s}");
    compare_trees(&t.root, &back.restore_of("latest", &t.root));
    back.check_clean();
    // The first snapshot too, in all three repositories.
    let first_local = local.restore_of(&ids[0], &t.root);
    compare_trees(
        &first_local,
        &back.restore_of(&back.snapshot_ids()[0], &t.root),
    );
    compare_trees(
        &first_local,
        &remote.restore_of(&remote.snapshot_ids()[0], &t.root),
    );
}

#[test]
fn the_backend_contract_holds_on_the_live_server() {
    use coffer::backend::conformance;
    let fresh = || s3_location_or_skip("the_backend_contract_holds_on_the_live_server");
    let Some(first) = fresh() else { return };
    let repos: Vec<S3Repo> = [Some(first), fresh(), fresh()]
        .into_iter()
        .map(|l| S3Repo {
            location: l.expect("COFFER_TEST_S3 is set"),
        })
        .collect();
    let b = s3_backend(&repos[0].location);
    conformance::run(&*b).unwrap_or_else(|e| panic!("{}: {e}", repos[0].location));
    let b = s3_backend(&repos[1].location);
    conformance::run_remote(&*b).unwrap_or_else(|e| panic!("{}: {e}", repos[1].location));
    let b = s3_backend(&repos[2].location);
    conformance::race_create_once(b, 8).unwrap_or_else(|e| panic!("{}: {e}", repos[2].location));
}

/// `init` tells whether the store refuses a second put of a name
/// (SeaweedFS honours `If-None-Match`), and leaves no probe object behind;
/// a no-change backup with a warm cache costs few requests, which `-v`
/// reports (the figure the README quotes).
#[test]
fn init_probes_create_once_and_a_no_change_backup_is_cheap() {
    let Some(env) = Env::s3("init_probes_create_once_and_a_no_change_backup_is_cheap") else {
        return;
    };
    let r = env.coffer().args(["--json", "init"]).run().ok();
    let init: serde_json::Value = json_lines(&r)
        .into_iter()
        .find(|v| v["message_type"] == "initialized")
        .expect("an initialized message");
    assert_eq!(init["create_once"], serde_json::json!(true), "{init}");
    assert!(
        env.object_names("packs").is_empty(),
        "the probe was left behind"
    );
    let t = TreeBuilder::new(env.path("src"));
    for i in 0..200 {
        t.file(
            format!("d{}/f{i}.txt", i % 20),
            format!("file {i}\n").as_bytes(),
        );
    }
    env.backup_json(&[&t.root], &[]);
    let r = env
        .coffer()
        .args(["--json", "-v", "backup"])
        .arg(&t.root)
        .run()
        .ok();
    let summary = json_lines(&r)
        .into_iter()
        .find(|v| v["message_type"] == "summary")
        .expect("a summary");
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains(" requests to s3:"))
        .unwrap_or_else(|| panic!("-v names no request count: {}", r.stderr));
    let n: u64 = line
        .trim_start_matches("coffer: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"));
    // config and copy, key list and slot, snapshot list, lock list, put
    // and re-list, segment list, snapshot put, lock delete: 11. The parent
    // snapshot and its trees come from the local cache.
    //
    // The snapshot holds the tree's ancestors too, and the temporary
    // directory's metadata changes whenever a test running beside this one
    // makes or removes its own directory there: then one new tree goes
    // up, in one pack and one index segment (two more puts). Allowed only
    // when the diff of the two snapshots shows nothing else.
    assert_eq!(summary["files_new"], 0, "{summary}");
    assert_eq!(summary["files_changed"], 0, "{summary}");
    let parent = summary["parent"].as_str().expect("a parent");
    let new = summary["snapshot_id"].as_str().expect("a snapshot id");
    let d = env
        .coffer()
        .args(["--json", "diff", "--metadata", parent, new])
        .run()
        .ok();
    let changes: Vec<_> = json_lines(&d)
        .into_iter()
        .filter(|v| v["message_type"] == "change")
        .collect();
    let root = format!("{}/", t.root.display());
    for c in &changes {
        let path = c["path"].as_str().unwrap_or_default();
        assert!(
            c["modifier"] == "U" && path.len() < root.len() && root.starts_with(path),
            "a no-change backup changed more than an ancestor's metadata: {c}"
        );
    }
    let extra = if changes.is_empty() { 0 } else { 2 };
    assert!(
        n <= 12 + extra,
        "a no-change backup made {n} requests: {line} ({} ancestors changed)",
        changes.len()
    );
    assert!(!line.contains("HEAD"), "{line}");
}

/// A bucket that does not exist, credentials the store refuses, and a
/// store that does not answer: each a one-line error saying what to do,
/// exit 1, and nothing created.
#[test]
fn a_missing_bucket_wrong_credentials_and_a_dead_store_are_clear_errors() {
    let Some(env) = Env::s3("a_missing_bucket_wrong_credentials_and_a_dead_store_are_clear_errors")
    else {
        return;
    };
    let location = env.s3_location().unwrap().to_string();
    // s3:http://HOST:PORT/BUCKET/PREFIX → the same with another bucket.
    let (scheme_host, rest) = location.split_at(location.find("//").unwrap() + 2);
    let (host, path) = rest.split_once('/').unwrap();
    let (_, prefix) = path.split_once('/').unwrap();
    let no_bucket = format!("{scheme_host}{host}/no-such-bucket-coffer/{prefix}");
    let r = env
        .coffer()
        .no_repo()
        .args(["--repo", &no_bucket, "init"])
        .run()
        .expect_code(1);
    assert!(
        r.stderr.contains("NoSuchBucket") && r.stderr.contains("create the bucket"),
        "{}",
        r.stderr
    );

    env.init_with(&[]);
    let r = env
        .coffer()
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["snapshots"])
        .run()
        .expect_code(1);
    assert!(
        r.stderr.contains("access denied") && !r.stderr.contains("tries"),
        "{}",
        r.stderr
    );

    // Nothing listens on port 9 (discard) of loopback.
    let dead = format!("s3:http://127.0.0.1:9/{path}");
    let r = env
        .coffer()
        .no_repo()
        .args([
            "--repo",
            &dead,
            "--option",
            "retries=2",
            "--option",
            "retry-base=10ms",
        ])
        .arg("snapshots")
        .run()
        .expect_code(1);
    assert!(
        r.stderr.contains("still failing after 2 tries"),
        "{}",
        r.stderr
    );
}
