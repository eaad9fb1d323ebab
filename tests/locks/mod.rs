//! Concurrency and locks (doc/reliability.md 4.G; issue 6 points 5 and 6):
//! concurrent backups, prune against a running backup (refused naming the
//! holder, or waiting with `--wait-lock`), stale locks of dead processes,
//! `unlock`, unreadable lock objects, and a backup frozen with SIGSTOP past
//! the stale timeout while `unlock` and `prune` run (restic#2715).
//!
//! A backup that holds its lock for as long as a test needs is `backup
//! --stdin` fed through a pipe the test keeps open. Waiting for a state
//! (a lock object appearing) polls with a generous limit; nothing asserts
//! how long anything took.

use crate::support::*;
use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin};
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

/// Poll `cond` until it holds; fail after a minute.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `backup --stdin` that holds its shared lock until `finish`.
struct StreamBackup {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl StreamBackup {
    /// Start it with extra environment, feed `first`, and wait until its
    /// lock object exists.
    fn start(env: &Env, envs: &[(&str, &str)], first: &[u8]) -> StreamBackup {
        let locks_before = env.objects("locks").len();
        // No --json: its status lines would fill the stdout pipe nobody
        // reads until `finish`, and block the backup.
        let mut inv = env
            .coffer()
            .args(["backup", "--stdin", "--stdin-name", "stream.bin"]);
        for (k, v) in envs {
            inv = inv.env(k, v);
        }
        let mut child = inv.spawn();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(first).unwrap();
        wait_until("the stream backup's lock", || {
            env.objects("locks").len() > locks_before
        });
        StreamBackup {
            child,
            stdin: Some(stdin),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Write the rest, close the stream, wait: (exit code, stdout, stderr).
    fn finish(mut self, rest: &[u8]) -> (i32, String, String) {
        let mut stdin = self.stdin.take().unwrap();
        let _ = stdin.write_all(rest);
        drop(stdin);
        let out = self.child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        )
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: sending a signal to a child process we started.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// A repository with one snapshot of a small tree; returns the tree.
fn repo_with_snapshot(env: &Env) -> (TreeBuilder, String) {
    env.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("a.bin", 300 * 1024, 1);
    t.file("b.txt", b"hello\n");
    let s = env.backup_json(&[&t.root], &[])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    (t, s)
}

#[test]
fn two_concurrent_backups_of_different_trees_both_succeed() {
    // doc/reliability.md G1: overlapping data, one repository, same host.
    let env = Env::new();
    env.init_with(&["--pack-size", "1M"]);
    let t1 = TreeBuilder::new(env.path("one"));
    let t2 = TreeBuilder::new(env.path("two"));
    let shared = Rng::new(5).bytes(2 * MIB);
    for (i, t) in [&t1, &t2].iter().enumerate() {
        t.file("shared.bin", &shared);
        t.random_file("own.bin", 3 * MIB, 10 + i as u64);
        t.file("name.txt", format!("tree {i}\n").as_bytes());
    }
    let spawn = |root: &Path| env.coffer().args(["--json", "backup"]).arg(root).spawn();
    let (c1, c2) = (spawn(&t1.root), spawn(&t2.root));
    for c in [c1, c2] {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a concurrent backup failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(env.objects("locks").is_empty(), "a lock was left behind");
    let check = || {
        env.check_clean();
        let v = env.coffer().args(["--json", "snapshots"]).run().ok().json();
        let snaps = v.as_array().unwrap();
        assert_eq!(snaps.len(), 2, "{v}");
        for t in [&t1, &t2] {
            let id = snaps
                .iter()
                .find(|s| s["paths"][0] == t.root.to_str().unwrap())
                .unwrap_or_else(|| panic!("no snapshot of {}: {v}", t.root.display()))["id"]
                .as_str()
                .unwrap();
            compare_trees(&t.root, &env.restore_of(id, &t.root));
        }
    };
    check();
    // A prune afterwards keeps both intact.
    env.coffer().arg("prune").run().ok();
    check();
}

#[test]
fn prune_during_a_backup_fails_naming_the_holder_or_waits_for_it() {
    // doc/reliability.md G5.
    let env = Env::new();
    let (t, s0) = repo_with_snapshot(&env);
    let data = Rng::new(9).bytes(2 * MIB);
    let b = StreamBackup::start(&env, &[], &data[..MIB]);
    let before = env.repo_listing();
    let r = env.coffer().arg("prune").run().expect_code(1);
    assert!(r.stderr.contains("locked"), "{}", r.stderr);
    assert!(
        r.stderr.contains("shared lock held by e2e-tester@")
            && r.stderr.contains(&format!("(pid {})", b.pid())),
        "the message does not name the holder (pid {}):\n{}",
        b.pid(),
        r.stderr
    );
    assert_eq!(
        env.repo_listing(),
        before,
        "the refused prune changed the repository"
    );
    // forget and repair are exclusive too.
    env.coffer()
        .args(["forget", "--keep-last", "1"])
        .run()
        .expect_code(1);
    env.coffer().args(["repair", "index"]).run().expect_code(1);
    // Shared with shared: a check runs alongside.
    env.coffer().arg("check").run().ok();

    // --wait-lock: the prune waits while the backup runs, then proceeds.
    let prune = env.coffer().args(["--wait-lock", "120s", "prune"]).spawn();
    let mut prune = prune;
    // While the backup holds its lock the prune cannot have finished.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        prune.try_wait().unwrap().is_none(),
        "prune --wait-lock finished while a backup held its lock"
    );
    let (code, stdout, stderr) = b.finish(&data[MIB..]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let out = prune.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prune --wait-lock failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.check_clean();
    compare_trees(&t.root, &env.restore_of(&s0, &t.root));
    let target = env.restore_of("latest", Path::new("/"));
    assert!(std::fs::read(target.join("stream.bin")).unwrap() == data);
}

#[test]
fn a_stale_lock_of_a_dead_process_blocks_nobody_and_unlock_removes_only_it() {
    // doc/reliability.md A1, G6, G7.
    let env = Env::new();
    let (t, s0) = repo_with_snapshot(&env);
    let golden = env.restore_of(&s0, &t.root);
    t.random_file("c.bin", 2 * MIB, 3);
    env.killed_backup(&t.root);
    let stale = env.objects("locks");
    assert_eq!(stale.len(), 1, "the killed backup left no lock");

    // Exclusive commands proceed past it, and the first one on this host
    // removes it: its process is gone (issue 19.10).
    env.coffer().args(["forget", "--keep-last", "5"]).run().ok();
    assert!(!stale[0].exists(), "the next run left its host's dead lock");
    env.coffer().arg("prune").run().ok();
    env.check_clean();
    compare_trees(&golden, &env.restore_of(&s0, &t.root));

    // unlock removes a stale lock and keeps a live one.
    let live = StreamBackup::start(&env, &[], b"live data");
    // Lock objects under their final names (a put shows its temporary first).
    let named = || -> Vec<_> {
        env.objects("locks")
            .into_iter()
            .filter(|l| !l.to_string_lossy().contains(".tmp-"))
            .collect()
    };
    wait_until("the live lock under its name", || !named().is_empty());
    let live_locks = named();
    env.killed_backup(&t.root);
    let stale: Vec<_> = named()
        .into_iter()
        .filter(|l| !live_locks.contains(l))
        .collect();
    assert_eq!(stale.len(), 1, "the killed backup left no lock");
    let r = env.coffer().arg("unlock").run().ok();
    assert!(r.stdout.contains("1 locks removed, 1 kept"), "{}", r.stdout);
    assert!(!stale[0].exists(), "unlock left the stale lock");
    let left = env.objects("locks");
    assert_eq!(left.len(), 1, "unlock removed the live lock");
    let (code, stdout, stderr) = live.finish(b" and more");
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(env.objects("locks").is_empty());
    env.check_clean();
}

#[test]
fn an_unreadable_lock_object_makes_lock_takers_refuse_until_remove_all() {
    // doc/reliability.md G8: garbage and empty lock objects.
    let env = Env::new();
    let (t, s0) = repo_with_snapshot(&env);
    for (what, bytes) in [
        ("garbage", b"this is not a lock at all, just junk".to_vec()),
        ("empty", Vec::new()),
    ] {
        let name = format!("{:064x}", 0xdead_beef_u64 + bytes.len() as u64);
        let bad = env.repo.join("locks").join(&name);
        std::fs::write(&bad, &bytes).unwrap();
        for args in [
            vec!["backup", t.root.to_str().unwrap()],
            vec!["prune"],
            vec!["check"],
            vec!["forget", "--keep-last", "1"],
            vec!["repair", "index"],
        ] {
            let r = env.coffer().args(&args).run().expect_code(1);
            assert!(
                r.stderr.contains(&name),
                "{what} lock: `{}` does not name locks/{name}:\n{}",
                args.join(" "),
                r.stderr
            );
            assert!(r.stderr.contains("unlock --remove-all"), "{}", r.stderr);
        }
        assert_eq!(env.snapshot_ids(), vec![s0.clone()]);
        // Plain unlock cannot tell what it protects: it stays.
        env.coffer().arg("unlock").run().ok();
        assert!(bad.exists(), "{what} lock: plain unlock removed it");
        let r = env.coffer().args(["unlock", "--remove-all"]).run().ok();
        assert!(r.stdout.contains("1 locks removed"), "{}", r.stdout);
        assert!(!bad.exists(), "{what} lock: unlock --remove-all left it");
        env.check_clean();
    }
    env.backup_json(&[&t.root], &[]);
    env.check_clean();
}

#[test]
fn a_backup_stopped_past_the_stale_timeout_aborts_without_a_snapshot() {
    // doc/reliability.md G3 (restic#2715): SIGSTOP for longer than the stale
    // timeout; meanwhile `unlock` removes its lock and `prune` deletes the
    // packs it had uploaded. Resumed, it must notice and write no snapshot.
    let stale_env = [("COFFER_LOCK_STALE_SECS", "6")];
    let env = Env::new();
    let (t, s0) = repo_with_snapshot(&env);
    // Streams are read 8 MiB at a time before chunking: feed more than
    // that so packs are uploaded before the stop.
    let data = Rng::new(21).bytes(19 * MIB);
    let packs_before = env.objects("packs").len();
    let b = StreamBackup::start(&env, &stale_env, &data[..17 * MIB]);
    // Only a pack under its final name counts: one still being written
    // (`.tmp-` name) is invisible to prune, and stopping the backup then
    // left prune nothing to delete (seen under load).
    wait_until("the stream backup's first packs", || {
        env.objects("packs")
            .iter()
            .filter(|p| !p.to_string_lossy().contains(".tmp-"))
            .count()
            > packs_before
    });
    signal(b.pid(), libc::SIGSTOP);

    // Its lock goes stale (not refreshed for 6 s): unlock removes it.
    let stale_after = Instant::now() + Duration::from_secs(6);
    wait_until("unlock to find the stopped backup's lock stale", || {
        if Instant::now() < stale_after {
            return false;
        }
        let v = env
            .coffer()
            .args(["--json", "unlock"])
            .env("COFFER_LOCK_STALE_SECS", "6")
            .run()
            .ok()
            .json();
        num(&v, "removed") == 1
    });
    assert!(env.objects("locks").is_empty());
    // prune now runs and removes the stopped backup's unindexed packs.
    let v = env
        .coffer()
        .args(["--json", "prune"])
        .env("COFFER_LOCK_STALE_SECS", "6")
        .run()
        .ok()
        .json();
    assert!(
        num(&v, "packs_deleted") >= 1,
        "prune found none of the stopped backup's packs to delete: {v}"
    );
    env.check_clean();

    signal(b.pid(), libc::SIGCONT);
    let (code, stdout, stderr) = b.finish(&data[17 * MIB..]);
    assert_eq!(
        code, 1,
        "the resumed backup did not fail:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("lock was lost"), "{stderr}");
    assert_eq!(
        env.snapshot_ids(),
        vec![s0.clone()],
        "the resumed backup wrote a snapshot"
    );
    env.check_clean();
    compare_trees(&t.root, &env.restore_of(&s0, &t.root));
    // The next run of the same stream completes and restores exactly.
    let b = StreamBackup::start(&env, &stale_env, &data[..MIB]);
    let (code, stdout, stderr) = b.finish(&data[MIB..]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let target = env.restore_of("latest", Path::new("/"));
    assert!(std::fs::read(target.join("stream.bin")).unwrap() == data);
    env.check_clean();
}
