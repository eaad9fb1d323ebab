//! S3 retries against injected faults: a real `coffer` binary talks to
//! the real S3 server (`COFFER_TEST_S3`) through a proxy that breaks
//! chosen requests (tests/support/faultproxy.rs). Each fault kind must
//! cost exactly one retry, leave the restored bytes equal to the source,
//! and leave the bucket holding what a clean run would have written,
//! each object written once.

use crate::support::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The client's timeout, and how long a held answer waits: past it.
const TIMEOUT: &str = "s3.timeout=2s";
const HOLD: Duration = Duration::from_secs(3);

/// What one faulted init, backup and restore left.
struct Faulted {
    target: FaultTarget,
    proxy: FaultProxy,
    env: Env,
    /// Every run's stderr, in order.
    stderr: String,
}

/// A small tree of several packs' worth (1 MiB packs), at `src`.
fn source(env: &Env) -> PathBuf {
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("a.bin", 1_500_000, 1);
    t.random_file("b.bin", 1_300_000, 2);
    t.random_file("deep/c.bin", 900_000, 3);
    for i in 0..20 {
        t.random_file(format!("small/{i}.txt"), 100 + i * 50, 100 + i as u64);
    }
    env.path("src")
}

/// `-v` and the options every faulted run uses.
fn flags() -> [&'static str; 5] {
    ["-v", "--option", TIMEOUT, "--option", "retry-base=20ms"]
}

/// init, backup and restore through a proxy with `rules`, each exiting 0,
/// the restore equal to the source.
fn round_trip(test: &str, rules: Vec<FaultRule>) -> Option<Faulted> {
    let target = FaultTarget::from_env_or_skip(test)?;
    let proxy = target.proxy(rules);
    let mut env = Env::new();
    env.repo = PathBuf::from(target.proxied_repo(&proxy));
    let src = source(&env);
    let mut stderr = String::new();
    let init = env
        .coffer()
        .args(flags())
        .args(["init", "--pack-size", "1M"])
        .run()
        .ok();
    stderr += &init.stderr;
    let backup = env
        .coffer()
        .args(flags())
        .arg("backup")
        .arg(&src)
        .run()
        .ok();
    stderr += &backup.stderr;
    let target_dir = env.path("restore");
    let restore = env
        .coffer()
        .args(flags())
        .args(["restore", "latest", "--target"])
        .arg(&target_dir)
        .run()
        .ok();
    stderr += &restore.stderr;
    compare_trees(&src, &restored(&target_dir, &src));
    Some(Faulted {
        target,
        proxy,
        env,
        stderr,
    })
}

/// The retry lines (`-v`) among `stderr`'s.
fn retry_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("coffer: ") && l.contains(" failed (") && l.contains("; try "))
        .collect()
}

/// Every rule fired once (`faults` requests were broken), each cost one
/// retry line naming its object, and the repository is exact and whole.
fn assert_recovered(f: &Faulted, faults: usize) {
    assert_one_retry_per_fault(f, faults);
    assert_bucket_exact(f);
    let check = f
        .env
        .coffer()
        .no_repo()
        .args(["--repo", &f.target.direct_repo(), "check", "--read-data"])
        .run();
    assert_eq!(
        check.code, 0,
        "check --read-data straight against the server failed\nstdout:\n{}\nstderr:\n{}",
        check.stdout, check.stderr
    );
    f.target.remove_all();
}

fn assert_one_retry_per_fault(f: &Faulted, faults: usize) {
    let faulted = f.proxy.faulted();
    assert_eq!(
        faulted.len(),
        faults,
        "the scripted faults did not all fire: {faulted:?}"
    );
    let retries = retry_lines(&f.stderr);
    assert_eq!(
        retries.len(),
        faults,
        "one retry line per fault expected; faults {faulted:?}\nstderr:\n{}",
        f.stderr
    );
    for s in &faulted {
        // A listing's line names the directory: "list packs failed".
        let named = match s.object.strip_prefix("list:") {
            Some(dir) => format!("list {}", dir.trim_end_matches('/')),
            None => s.object.clone(),
        };
        assert!(
            retries.iter().any(|l| l.contains(&named)),
            "no retry line names {} ({:?})\nstderr:\n{}",
            s.object,
            s.fault,
            f.stderr
        );
    }
}

/// No name was stored twice, and the bucket holds exactly what the
/// server accepted (locks removed again), several packs of it.
fn assert_bucket_exact(f: &Faulted) {
    let stored = f.proxy.stored();
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written twice under one name: {twice:?}");
    let listed = f.target.objects();
    let deleted = f.proxy.deleted();
    let expected: Vec<&String> = stored
        .keys()
        .filter(|k| !k.starts_with("locks/") && !deleted.contains(*k))
        .collect();
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        expected,
        "the bucket does not hold exactly what the server accepted"
    );
    assert!(
        listed.keys().filter(|k| k.starts_with("packs/")).count() >= 3,
        "the backup should span several packs: {listed:?}"
    );
}

#[test]
fn a_500_on_a_pack_put_and_a_listing_is_retried() {
    let rules = vec![
        FaultRule::nth("PUT", "packs/", 3, Fault::InternalError),
        FaultRule::nth("GET", "list:snapshots/", 2, Fault::InternalError),
    ];
    if let Some(f) = round_trip("internal-error", rules) {
        assert_recovered(&f, 2);
    }
}

#[test]
fn a_slowdown_503_is_retried_on_put_and_read() {
    let rules = vec![
        FaultRule::nth("PUT", "index/", 1, Fault::SlowDown),
        FaultRule::nth("GET", "packs/", 2, Fault::SlowDown),
    ];
    if let Some(f) = round_trip("slowdown", rules) {
        assert_recovered(&f, 2);
    }
}

/// A body that stops half way (an orderly end short of Content-Length,
/// or a reset), on whole-object reads (a key, the config) and on ranged
/// pack reads.
#[test]
fn a_body_cut_short_is_retried() {
    let rules = vec![
        FaultRule::nth("GET", "keys/", 1, Fault::CutBody),
        FaultRule::nth("GET", "config", 2, Fault::ResetBody),
        FaultRule::nth("GET", "packs/", 3, Fault::CutBody),
        FaultRule::nth("GET", "packs/", 5, Fault::ResetBody),
    ];
    if let Some(f) = round_trip("cut-body", rules) {
        assert_recovered(&f, 4);
    }
}

/// An answer held past `s3.timeout`: the put had landed (its retry finds
/// the same object), the read is simply asked again; and a body that
/// stalls half way past the timeout between reads.
#[test]
fn an_answer_held_past_the_timeout_is_retried() {
    let rules = vec![
        FaultRule::nth("PUT", "packs/", 2, Fault::Hold(HOLD)),
        FaultRule::nth("GET", "packs/", 1, Fault::Hold(HOLD)),
        FaultRule::nth("GET", "packs/", 4, Fault::StallBody(HOLD)),
    ];
    if let Some(f) = round_trip("held", rules) {
        assert_recovered(&f, 3);
    }
}

/// Puts that landed but whose answer was lost, of every create-once kind
/// (key, config, lock) and two content-named ones: the retry finds its
/// own bytes under the name and succeeds. And a lock's deletion whose
/// answer was lost: deleting it again is no error.
#[test]
fn a_lost_answer_to_a_put_is_resolved_by_its_bytes() {
    let rules = vec![
        FaultRule::nth("PUT", "keys/", 1, Fault::LoseAnswer),
        FaultRule::nth("PUT", "config", 1, Fault::LoseAnswer),
        FaultRule::nth("PUT", "locks/", 1, Fault::LoseAnswer),
        FaultRule::nth("PUT", "packs/", 1, Fault::LoseAnswer),
        FaultRule::nth("PUT", "snapshots/", 1, Fault::LoseAnswer),
        FaultRule::nth("DELETE", "locks/", 1, Fault::LoseAnswer),
    ];
    if let Some(f) = round_trip("lost-answer", rules) {
        assert_recovered(&f, 6);
    }
}

/// A repository made straight on the server, then reached through a
/// proxy with `rules` for one run: its outcome, what the proxy saw, and
/// the `--repo` it was given. The repository is removed after the run.
fn through_failing_proxy(
    test: &str,
    rules: Vec<FaultRule>,
    args: &[&str],
) -> Option<(Run, Vec<Seen>, String)> {
    let target = FaultTarget::from_env_or_skip(test)?;
    let mut env = Env::new();
    env.repo = PathBuf::from(target.direct_repo());
    env.coffer().args(["init", "--pack-size", "1M"]).run().ok();
    let proxy = target.proxy(rules);
    env.repo = PathBuf::from(target.proxied_repo(&proxy));
    let run = env
        .coffer()
        .args(["--option", TIMEOUT, "--option", "retry-base=20ms"])
        .args(args)
        .run();
    // Nothing to look at afterwards: the run's outcome is all.
    target.remove_all();
    Some((run, proxy.seen(), target.proxied_repo(&proxy)))
}

fn tries_per_object(seen: &[Seen]) -> BTreeMap<&str, usize> {
    let mut out = BTreeMap::new();
    for s in seen {
        *out.entry(s.object.as_str()).or_insert(0) += 1;
    }
    out
}

/// One line, the error: nothing else on stderr.
/// The one error line of a failed run, besides the one notice (without
/// `-v`) that the store is not answering and retries go on.
fn one_error_line(run: &Run) -> &str {
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("is not answering as it should"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "want a one-line error\nstderr:\n{}",
        run.stderr
    );
    lines[0]
}

#[test]
fn a_fault_that_never_stops_fails_after_the_tries() {
    let rules = vec![FaultRule::every(Fault::SlowDown)];
    let args = ["--option", "retries=3", "snapshots"];
    let Some((run, seen, repo)) = through_failing_proxy("never-stops", rules, &args) else {
        return;
    };
    let run = run.expect_code(1);
    // Without -v: one line when a request first needs a third try, so a
    // store that stopped answering is not a silent wait, then the error.
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 2, "stderr:\n{}", run.stderr);
    assert!(
        lines[0].contains("not answering") && lines[0].contains("-v shows each"),
        "{}",
        lines[0]
    );
    let line = lines[1];
    assert!(
        line.contains("after 3 tries") && line.contains("SlowDown"),
        "{line}"
    );
    assert!(
        line.contains(&format!("read of {repo}/config failed")),
        "{line}"
    );
    // The config (an unreachable store is not asked for its copy too):
    // three tries, no more.
    assert!(
        tries_per_object(&seen).values().all(|n| *n == 3),
        "three tries per object: {seen:?}"
    );
}

#[test]
fn a_403_fails_at_once_without_retries() {
    let rules = vec![FaultRule::every(Fault::Denied)];
    let Some((run, seen, repo)) = through_failing_proxy("denied", rules, &["-v", "snapshots"])
    else {
        return;
    };
    let run = run.expect_code(1);
    assert!(retry_lines(&run.stderr).is_empty(), "{}", run.stderr);
    let line = one_error_line(&run);
    assert!(
        line.contains("access denied") && line.contains("AccessDenied"),
        "{line}"
    );
    assert!(
        line.contains(&format!("read of {repo}/config failed")),
        "{line}"
    );
    assert!(
        tries_per_object(&seen).values().all(|n| *n == 1),
        "a denied request is not tried again: {seen:?}"
    );
}

/// A backup whose pack puts never succeed: exit 1 with the one error,
/// its lock removed, nothing but what the server accepted left behind.
#[test]
fn a_backup_whose_pack_puts_always_fail_aborts() {
    let Some(target) = FaultTarget::from_env_or_skip("packs-never") else {
        return;
    };
    let mut env = Env::new();
    env.repo = PathBuf::from(target.direct_repo());
    env.coffer().args(["init", "--pack-size", "1M"]).run().ok();
    let proxy = target.proxy(vec![FaultRule::all("PUT", "packs/", Fault::SlowDown)]);
    env.repo = PathBuf::from(target.proxied_repo(&proxy));
    let src = source(&env);
    let run = env
        .coffer()
        .args([
            "--option",
            TIMEOUT,
            "--option",
            "retry-base=20ms",
            "--option",
            "retries=3",
        ])
        .arg("backup")
        .arg(&src)
        .run();
    let run = run.expect_code(1);
    let line = one_error_line(&run);
    // Whether it reads "backup aborted after a repository error: …" or
    // names the failed write alone depends on which thread met it first.
    assert!(
        line.contains("write of") && line.contains("/packs/") && line.contains("after 3 tries"),
        "{line}"
    );
    assert!(
        tries_per_object(&proxy.faulted()).values().all(|n| *n == 3),
        "three tries per pack: {:?}",
        proxy.seen()
    );
    let left: Vec<String> = target
        .objects()
        .into_keys()
        .filter(|k| !k.starts_with("config") && !k.starts_with("keys/"))
        .collect();
    assert!(left.is_empty(), "the failed backup left {left:?}");
    target.remove_all();
}

/// `check --read-data` through faults on pack reads: a cut or held
/// answer is asked again, never reported as a damaged pack.
#[test]
fn check_read_data_retries_cut_and_held_reads() {
    let Some(f) = round_trip("check-faults", vec![]) else {
        return;
    };
    let proxy = f.target.proxy(vec![
        FaultRule::nth("GET", "packs/", 1, Fault::CutBody),
        FaultRule::nth("GET", "packs/", 2, Fault::ResetBody),
        FaultRule::nth("GET", "packs/", 3, Fault::Hold(HOLD)),
    ]);
    let run = f
        .env
        .coffer()
        .no_repo()
        .args(["--repo", &f.target.proxied_repo(&proxy)])
        .args(flags())
        .args(["check", "--read-data"])
        .run()
        .ok();
    assert!(run.stdout.contains("no errors"), "{}", run.stdout);
    assert_eq!(proxy.faulted().len(), 3, "{:?}", proxy.seen());
    assert_eq!(
        retry_lines(&run.stderr).len(),
        3,
        "one retry line per fault\nstderr:\n{}",
        run.stderr
    );
    f.target.remove_all();
}

/// forget --prune through faults at each of its steps: the snapshot's and
/// the packs' batch deletions whose answers are lost (deleting again is
/// no error), a repacked pack's put held past the timeout, its new index
/// segment's answer lost, a pack read cut short. The repository stays
/// whole and restores the kept snapshot.
#[test]
fn forget_and_prune_recover_from_faults() {
    let Some(f) = round_trip("prune-faults", vec![]) else {
        return;
    };
    let src = f.env.path("src");
    std::fs::remove_file(src.join("a.bin")).expect("remove a.bin");
    TreeBuilder::new(&src).random_file("e.bin", 700_000, 9);
    f.env.coffer().arg("backup").arg(&src).run().ok();
    let proxy = f.target.proxy(vec![
        FaultRule::nth("POST", "delete:", 1, Fault::LoseAnswer),
        FaultRule::nth("POST", "delete:", 3, Fault::LoseAnswer),
        FaultRule::nth("GET", "packs/", 2, Fault::CutBody),
        FaultRule::nth("PUT", "packs/", 1, Fault::Hold(HOLD)),
        FaultRule::nth("PUT", "index/", 1, Fault::LoseAnswer),
    ]);
    let run = f
        .env
        .coffer()
        .no_repo()
        .args(["--repo", &f.target.proxied_repo(&proxy)])
        .args(flags())
        .args([
            "forget",
            "--keep-last",
            "1",
            "--prune",
            "--max-unused",
            "0%",
        ])
        .run()
        .ok();
    let faulted = proxy.faulted();
    assert_eq!(faulted.len(), 5, "{:?}", proxy.seen());
    assert_eq!(
        retry_lines(&run.stderr).len(),
        5,
        "one retry line per fault\nstderr:\n{}",
        run.stderr
    );
    assert!(run.stdout.contains("repacked "), "{}", run.stdout);
    let twice: Vec<_> = proxy.stored().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "written twice under one name: {twice:?}");
    let listed = f.target.objects();
    assert!(
        listed
            .keys()
            .filter(|k| k.starts_with("snapshots/"))
            .count()
            == 1
            && !listed.keys().any(|k| k.starts_with("locks/")),
        "{listed:?}"
    );
    let direct = |args: &[&str]| {
        f.env
            .coffer()
            .no_repo()
            .args(["--repo", &f.target.direct_repo()])
            .args(args)
            .run()
            .ok()
    };
    direct(&["check", "--read-data"]);
    let target_dir = f.env.path("restore-kept");
    direct(&[
        "restore",
        "latest",
        "--target",
        target_dir.to_str().expect("utf-8 path"),
    ]);
    compare_trees(&src, &restored(&target_dir, &src));
    f.target.remove_all();
}
