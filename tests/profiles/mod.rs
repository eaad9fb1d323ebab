//! Profiles (issue 23): `[profiles.NAME]` in `$XDG_CONFIG_HOME/coffer/config.toml`
//! chosen with `-P`, flags and environment variables overriding them,
//! errors that name the key, the profile and the file; the hooks around a
//! backup; `coffer run`, the whole nightly job; the metrics file; and
//! `config show`.

use crate::support::*;
use std::fs;
use std::path::{Path, PathBuf};

/// A repository with a password file, a source tree and a config file of
/// profiles, all inside one [`Env`].
struct Setup {
    env: Env,
    repo: PathBuf,
    pw: PathBuf,
    src: TreeBuilder,
    log: PathBuf,
}

fn setup() -> Setup {
    let env = Env::new();
    let pw = env.path("pw");
    fs::write(&pw, "profile password\n").unwrap();
    let repo = env.path("main");
    init_repo(&env, &repo, &pw);
    let src = TreeBuilder::new(env.path("src"));
    src.random_file("a.bin", 40_000, 1);
    src.file("notes.txt", b"hello");
    let log = env.path("hooks.log");
    Setup {
        env,
        repo,
        pw,
        src,
        log,
    }
}

fn init_repo(env: &Env, repo: &Path, pw: &Path) {
    env.bare()
        .arg("--repo")
        .arg(repo)
        .arg("--password-file")
        .arg(pw)
        .arg("init")
        .run()
        .ok();
}

impl Setup {
    /// `config.toml` with one profile `nightly`: repository, password file
    /// and sources, then `extra` lines.
    fn config(&self, extra: &str) {
        self.config_without_sources(&format!("sources = [{:?}]\n{extra}", self.src.root));
    }

    /// `config.toml` with one profile `nightly`: repository, password file,
    /// then `extra` lines.
    fn config_without_sources(&self, extra: &str) {
        let dir = self.env.xdg_config.join("coffer");
        fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "[profiles.nightly]\nrepository = {:?}\npassword-file = {:?}\n{extra}\n",
            self.repo, self.pw
        );
        fs::write(dir.join("config.toml"), text).unwrap();
    }

    /// `coffer -P nightly ARGS`, with only the isolated HOME and XDG.
    fn p(&self, args: &[&str]) -> Run {
        self.env.bare().args(["-P", "nightly"]).args(args).run()
    }

    /// `snapshots --json` of `repo`.
    fn snapshots(&self, repo: &Path) -> Vec<serde_json::Value> {
        let r = self
            .env
            .bare()
            .arg("--repo")
            .arg(repo)
            .arg("--password-file")
            .arg(&self.pw)
            .args(["snapshots", "--json"])
            .run()
            .ok();
        r.json().as_array().unwrap().clone()
    }

    fn log(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

/// The `config show --json` entry for `key`.
fn shown<'a>(show: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    show["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .unwrap_or_else(|| panic!("config show has no {key}: {show}"))
}

#[test]
fn profile_values_are_used_and_flags_and_env_override_them() {
    let s = setup();
    s.config("host = \"profhost\"\ntag = [\"prof\"]\nexclude = [\"*.txt\"]");
    let other = s.env.path("other");
    init_repo(&s.env, &other, &s.pw);

    // The profile alone: its repository, sources, host, tag and exclude.
    s.p(&["backup"]).ok();
    let snaps = s.snapshots(&s.repo);
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["hostname"], "profhost");
    assert_eq!(snaps[0]["tags"], serde_json::json!(["prof"]));
    assert_eq!(snaps[0]["paths"][0], s.src.root.to_str().unwrap());
    assert_eq!(
        snaps[0]["summary"]["total_files_processed"], 1,
        "*.txt left out"
    );

    // A flag beats the profile; the other keys still come from it.
    s.p(&["backup", "--host", "flaghost"]).ok();
    let snaps = s.snapshots(&s.repo);
    assert_eq!(snaps[1]["hostname"], "flaghost");
    assert_eq!(snaps[1]["tags"], serde_json::json!(["prof"]));

    // Paths on the command line replace the profile's sources.
    let elsewhere = TreeBuilder::new(s.env.path("elsewhere"));
    elsewhere.file("x", b"x");
    s.env
        .bare()
        .args(["-P", "nightly", "backup"])
        .arg(&elsewhere.root)
        .run()
        .ok();
    assert_eq!(
        s.snapshots(&s.repo)[2]["paths"],
        serde_json::json!([elsewhere.root.to_str().unwrap()])
    );

    // An environment variable beats the profile, a flag beats both.
    s.env
        .bare()
        .args(["-P", "nightly", "backup"])
        .env("COFFER_REPOSITORY", &other)
        .run()
        .ok();
    assert_eq!(s.snapshots(&other).len(), 1);
    assert_eq!(s.snapshots(&s.repo).len(), 3);
    let show = s
        .env
        .bare()
        .args(["-P", "nightly", "--json", "config", "show", "--cache-dir"])
        .arg(s.env.path("c"))
        .env("COFFER_REPOSITORY", &other)
        .run()
        .ok()
        .json();
    let file = s.env.xdg_config.join("coffer/config.toml");
    assert_eq!(show["profile"], "nightly");
    assert_eq!(show["file"], file.to_str().unwrap());
    let repo = shown(&show, "repository");
    assert_eq!(repo["source"], "env");
    assert_eq!(repo["variable"], "COFFER_REPOSITORY");
    assert_eq!(repo["value"], other.to_str().unwrap());
    assert_eq!(shown(&show, "cache-dir")["source"], "flag");
    let pw = shown(&show, "password-file");
    assert_eq!(pw["source"], "profile");
    assert_eq!(pw["file"], file.to_str().unwrap());
    assert_eq!(shown(&show, "host")["value"], "profhost");
    assert_eq!(shown(&show, "keep-daily")["source"], "default");
    let text = s
        .env
        .bare()
        .args(["-P", "nightly", "--repo"])
        .arg(&other)
        .args(["config", "show"])
        .run()
        .ok()
        .stdout;
    assert!(
        text.contains(&format!(
            "repository = {:?}  # flag",
            other.to_str().unwrap()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "host = \"profhost\"  # profile {}",
            file.display()
        )),
        "{text}"
    );

    // The secret is one setting: COFFER_PASSWORD replaces the profile's
    // key file and password file together (the missing key file would fail).
    s.config(&format!("key-file = {:?}", s.env.path("missing.key")));
    s.p(&["snapshots"]).expect_code(1).stderr_has("missing.key");
    s.env
        .bare()
        .args(["-P", "nightly", "snapshots"])
        .env("COFFER_PASSWORD", "profile password")
        .run()
        .ok();

    // Without -P the config file is not read at all, even a broken one.
    fs::write(&file, "this is not toml [").unwrap();
    s.env
        .bare()
        .arg("--repo")
        .arg(&s.repo)
        .arg("--password-file")
        .arg(&s.pw)
        .arg("snapshots")
        .run()
        .ok();
}

#[test]
fn profile_errors_name_the_key_the_profile_and_the_file() {
    let s = setup();
    let file = s.env.xdg_config.join("coffer/config.toml");
    let one_line_error = |r: Run, needles: &[&str]| {
        let r = r.expect_code(1);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        for n in needles {
            assert!(r.stderr.contains(n), "no {n:?} in {}", r.stderr);
        }
    };
    let f = file.to_str().unwrap();
    s.config("keep-dayly = 7");
    one_line_error(
        s.p(&["backup"]),
        &[
            f,
            "profile \"nightly\"",
            "unknown key \"keep-dayly\"",
            "keep-daily",
        ],
    );
    s.config("keep-daily = \"seven\"");
    one_line_error(
        s.p(&["backup"]),
        &[f, "profile \"nightly\"", "keep-daily:", "string"],
    );
    s.config("exclude-caches = 1");
    one_line_error(s.p(&["backup"]), &[f, "exclude-caches:"]);
    s.config("");
    one_line_error(
        s.env.bare().args(["-P", "weekly", "backup"]).run(),
        &["profile \"weekly\"", f, "nightly"],
    );
    let missing = s.env.path("nope.toml");
    one_line_error(
        s.env
            .bare()
            .arg("--config")
            .arg(&missing)
            .args(["-P", "nightly", "backup"])
            .run(),
        &[missing.to_str().unwrap(), "does not exist"],
    );
    one_line_error(
        s.env
            .bare()
            .args(["-P", "nightly", "backup"])
            .env("COFFER_CONFIG", &missing)
            .run(),
        &[missing.to_str().unwrap()],
    );
    // A file others can change names commands coffer would run: refused.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o664)).unwrap();
    one_line_error(s.p(&["backup"]), &[f, "chmod go-w"]);
    // Nothing was backed up by any of them.
    assert!(s.snapshots(&s.repo).is_empty());
}

#[test]
fn hooks_run_in_order_with_their_environment() {
    let s = setup();
    let summary = s.env.path("summary.json");
    // A dump to a staging file inside the sources: one line.
    s.config(&format!(
        "before-backup = 'echo \"before $COFFER_PROFILE $COFFER_HOOK\" >> {log}; echo dumped > {src}/dump.sql'\n\
         after-backup = 'echo \"after $COFFER_SNAPSHOT_ID $COFFER_EXIT_CODE $COFFER_SUMMARY\" >> {log}; printf %s \"$COFFER_SUMMARY_JSON\" > {summary}'\n\
         on-failure = 'echo failure >> {log}'",
        log = s.log.display(),
        src = s.src.root.display(),
        summary = summary.display()
    ));
    let r = s.p(&["--json", "backup"]).ok();
    let out = r.summary();
    let id = out["snapshot_id"].as_str().unwrap();
    let log = s.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0], "before nightly before-backup");
    assert!(
        log[1].starts_with(&format!(
            "after {id} 0 snapshot {} saved: 3 files",
            &id[..8]
        )),
        "{log:?}"
    );
    let hook_json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(hook_json, out, "COFFER_SUMMARY_JSON is the --json summary");
    // The hook's own output went to stderr: stdout is only JSON.
    assert!(r.stdout.lines().all(|l| l.starts_with('{')), "{}", r.stdout);
    // What the before-backup hook staged is in the snapshot.
    let dumped = s
        .env
        .bare()
        .args(["-P", "nightly", "dump", "latest"])
        .arg(s.src.root.join("dump.sql"))
        .run()
        .ok();
    assert_eq!(dumped.stdout, "dumped\n");
}

#[test]
fn a_failing_before_backup_hook_aborts_and_runs_on_failure() {
    let s = setup();
    s.config(&format!(
        "before-backup = 'exit 7'\n\
         after-backup = 'echo after >> {log}'\n\
         on-failure = 'echo \"failure $COFFER_FAILED_STEP $COFFER_EXIT_CODE $COFFER_ERROR\" >> {log}'",
        log = s.log.display()
    ));
    let r = s.p(&["backup"]).expect_code(1);
    assert!(
        r.stderr.contains("before-backup hook failed"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("no backup was made"), "{}", r.stderr);
    assert!(s.snapshots(&s.repo).is_empty());
    let log = s.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(
        log[0]
            .starts_with("failure before-backup 1 the before-backup hook failed (exit status: 7)"),
        "{log:?}"
    );
}

#[test]
fn a_failing_after_backup_hook_makes_the_exit_code_1() {
    let s = setup();
    s.config(&format!(
        "after-backup = 'exit 2'\n\
         on-failure = 'echo \"failure $COFFER_FAILED_STEP $COFFER_SNAPSHOT_ID\" >> {log}'",
        log = s.log.display()
    ));
    let r = s.p(&["backup"]).expect_code(1);
    assert!(
        r.stderr.contains("after-backup hook failed"),
        "{}",
        r.stderr
    );
    let snaps = s.snapshots(&s.repo);
    assert_eq!(snaps.len(), 1, "the snapshot was saved before the hook");
    let id = snaps[0]["id"].as_str().unwrap();
    assert!(
        r.stderr.contains(&format!("snapshot {id} was saved")),
        "{}",
        r.stderr
    );
    assert_eq!(s.log(), [format!("failure after-backup {id}")]);
}

#[test]
fn run_backs_up_forgets_prunes_copies_and_checks() {
    let s = setup();
    let offsite = s.env.path("offsite");
    s.env
        .bare()
        .arg("--repo")
        .arg(&offsite)
        .arg("--password-file")
        .arg(&s.pw)
        .args(["init", "--from-repo"])
        .arg(&s.repo)
        .arg("--from-password-file")
        .arg(&s.pw)
        .run()
        .ok();
    s.config(&format!(
        "keep-last = 2\nprune-every = \"7d\"\ncopy-to = {offsite:?}\ncheck-subset = \"rotate/1\"\n\
         after-backup = 'echo \"after $COFFER_SNAPSHOT_ID\" >> {log}'",
        log = s.log.display()
    ));
    // Another machine's snapshots in the same repository: its own rules
    // keep them, not this profile's keep-last.
    for _ in 0..3 {
        s.p(&["backup", "--host", "elsewhere"]).ok();
    }
    let mut ids = Vec::new();
    for night in 0..3u64 {
        s.src
            .random_file(format!("night{night}.bin"), 30_000, 10 + night);
        let r = s.env.bare().args(["run", "-P", "nightly"]).run().ok();
        let headers: Vec<&str> = r
            .stderr
            .lines()
            .filter_map(|l| l.strip_prefix("== run nightly: "))
            .collect();
        // Pruned on the first night only: prune-every is 7 days.
        let want: &[&str] = if night == 0 {
            &["backup", "forget", "prune", "copy", "check"]
        } else {
            &["backup", "forget", "copy", "check"]
        };
        assert_eq!(headers, want, "{}", r.stderr);
        ids.push(
            s.log()
                .last()
                .unwrap()
                .strip_prefix("after ")
                .unwrap()
                .to_string(),
        );
    }
    // keep-last = 2: the two newest of this host; the other host's three stay.
    let snaps = s.snapshots(&s.repo);
    let (here, there): (Vec<_>, Vec<_>) = snaps.iter().partition(|v| v["hostname"] != "elsewhere");
    let kept: Vec<&str> = here.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(kept, ids[1..]);
    assert_eq!(there.len(), 3);
    // The replica got every snapshot (copy never removes), the last one
    // with the last night's file.
    assert_eq!(s.snapshots(&offsite).len(), 6);
    let ls = s
        .env
        .bare()
        .arg("--repo")
        .arg(&offsite)
        .arg("--password-file")
        .arg(&s.pw)
        .args(["ls", "latest"])
        .run()
        .ok();
    assert!(ls.stdout.contains("night2.bin"), "{}", ls.stdout);
}

#[test]
fn a_failing_step_stops_the_run_and_is_named() {
    let s = setup();
    let metrics = s.env.path("m/coffer.prom");
    fs::create_dir_all(metrics.parent().unwrap()).unwrap();
    s.config(&format!(
        "keep-last = 5\ncheck-subset = \"1/2\"\nmetrics-file = {metrics:?}\n\
         on-failure = 'echo \"failure $COFFER_FAILED_STEP $COFFER_EXIT_CODE\" >> {log}'",
        log = s.log.display()
    ));
    // -q: nothing but what went wrong.
    let quiet = s.p(&["-q", "run"]).ok();
    assert_eq!((quiet.stdout.as_str(), quiet.stderr.as_str()), ("", ""));
    let success = metric(
        &fs::read_to_string(&metrics).unwrap(),
        "coffer_last_success_timestamp_seconds",
    );
    // Now the copy's destination does not exist: the run stops there.
    let cfg = s.env.xdg_config.join("coffer/config.toml");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(
        &cfg,
        format!("{text}copy-to = {:?}\n", s.env.path("no-such-repo")),
    )
    .unwrap();
    let r = s.p(&["run"]).expect_code(1);
    assert!(
        r.stderr.contains("run nightly: step copy failed"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("no-such-repo"), "{}", r.stderr);
    assert!(!r.stderr.contains("== run nightly: check"), "{}", r.stderr);
    assert_eq!(s.log(), ["failure copy 1"]);
    assert_eq!(
        s.snapshots(&s.repo).len(),
        2,
        "the backup before it was kept"
    );
    let after = fs::read_to_string(&metrics).unwrap();
    assert_eq!(metric(&after, "coffer_exit_code"), 1.0);
    assert_eq!(
        metric(&after, "coffer_last_success_timestamp_seconds"),
        success,
        "a failure keeps the last success time"
    );
}

/// The value of the one series of `name` in a metrics file.
fn metric(text: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn metrics_file_matches_the_backup_summary_and_is_replaced_whole() {
    let s = setup();
    let dir = s.env.path("textfile");
    fs::create_dir_all(&dir).unwrap();
    let metrics = dir.join("coffer.prom");
    s.config(&format!("metrics-file = {metrics:?}"));
    let before = now_secs();
    let sum = s.p(&["--json", "backup"]).ok().summary();
    s.src.random_file("more.bin", 20_000, 5);
    let sum2 = s.p(&["--json", "backup"]).ok().summary();
    let text = fs::read_to_string(&metrics).unwrap();
    // Every line is a HELP, a TYPE or `name{labels} value`, each series
    // after its HELP and TYPE.
    let mut names = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for chunk in lines.chunks(3) {
        let [help, ty, series] = chunk else {
            panic!("not HELP, TYPE, series: {chunk:?}")
        };
        let name = help
            .strip_prefix("# HELP ")
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        assert_eq!(*ty, format!("# TYPE {name} gauge"));
        let rest = series
            .strip_prefix(&format!(
                "{name}{{profile=\"nightly\",command=\"backup\"}} "
            ))
            .unwrap_or_else(|| panic!("bad series line {series:?}"));
        rest.parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {series:?}"));
        names.push(name);
    }
    for n in [
        "coffer_last_success_timestamp_seconds",
        "coffer_duration_seconds",
        "coffer_files_read",
        "coffer_bytes_read",
        "coffer_bytes_added",
        "coffer_snapshots",
        "coffer_repository_bytes",
        "coffer_warnings",
        "coffer_exit_code",
    ] {
        assert!(names.contains(&n), "{n} missing:\n{text}");
    }
    // The second backup's figures, as its --json summary gave them.
    assert_eq!(
        metric(&text, "coffer_files_read"),
        (num(&sum2, "files_new") + num(&sum2, "files_changed")) as f64
    );
    assert_eq!(metric(&text, "coffer_files_read"), 1.0);
    assert_eq!(
        metric(&text, "coffer_bytes_read"),
        num(&sum2, "bytes_read") as f64
    );
    assert_eq!(
        metric(&text, "coffer_bytes_added"),
        num(&sum2, "data_added") as f64
    );
    assert_eq!(metric(&text, "coffer_warnings"), 0.0);
    assert_eq!(metric(&text, "coffer_exit_code"), 0.0);
    assert_eq!(metric(&text, "coffer_snapshots"), 2.0);
    let packs = dir_size(&s.repo.join("packs")) as f64;
    assert_eq!(metric(&text, "coffer_repository_bytes"), packs);
    assert!(
        metric(&text, "coffer_repository_bytes")
            >= (num(&sum, "data_added") + num(&sum2, "data_added")) as f64
    );
    let t = metric(&text, "coffer_last_success_timestamp_seconds") as i64;
    assert!(t >= before && t <= now_secs(), "{t}");
    // Replaced by rename: nothing else is left in the directory.
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("coffer.prom")]);

    // --metrics-file works without a profile too, labelled profile="".
    let plain = dir.join("plain.prom");
    s.env
        .bare()
        .arg("--repo")
        .arg(&s.repo)
        .arg("--password-file")
        .arg(&s.pw)
        .arg("--metrics-file")
        .arg(&plain)
        .arg("backup")
        .arg(&s.src.root)
        .run()
        .ok();
    let text = fs::read_to_string(&plain).unwrap();
    assert!(
        text.contains("coffer_exit_code{profile=\"\",command=\"backup\"} 0\n"),
        "{text}"
    );
    // Asked of a command that writes none, it is refused, not ignored.
    s.p(&["snapshots", "--metrics-file", "x.prom"])
        .expect_code(1)
        .stderr_has("only backup and run write metrics");
}

#[test]
fn a_profile_backs_up_a_command_s_output() {
    let s = setup();
    s.config("stdin-from-command = [\"sh\", \"-c\", \"echo dump\"]");
    s.p(&["backup"])
        .expect_code(1)
        .stderr_has("stdin-from-command and sources/files-from");
    s.config_without_sources(
        "stdin-from-command = [\"sh\", \"-c\", \"echo dump of the night\"]\nstdin-name = \"db.sql\"",
    );
    s.p(&["backup"]).ok();
    let dumped = s.p(&["dump", "latest", "/db.sql"]).ok();
    assert_eq!(dumped.stdout, "dump of the night\n");
    // A failing dump saves nothing, and says so.
    s.config_without_sources("stdin-from-command = [\"sh\", \"-c\", \"echo half; exit 4\"]");
    s.p(&["backup"])
        .expect_code(1)
        .stderr_has("no snapshot was written");
    assert_eq!(s.snapshots(&s.repo).len(), 1);
}

#[test]
fn a_backup_with_warnings_does_not_stop_the_run_which_exits_3() {
    let s = setup();
    let metrics = s.env.path("coffer.prom");
    // One source is missing: the backup saves the rest and exits 3.
    s.config_without_sources(&format!(
        "sources = [{:?}, {:?}]\nkeep-last = 3\ncheck-subset = \"1/1\"\nmetrics-file = {metrics:?}\n\
         after-backup = 'echo \"after $COFFER_EXIT_CODE\" >> {log}'\n\
         on-failure = 'echo failure >> {log}'",
        s.src.root,
        s.env.path("missing"),
        log = s.log.display()
    ));
    let r = s.p(&["run"]).expect_code(3);
    let headers: Vec<&str> = r
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("== run nightly: "))
        .collect();
    assert_eq!(
        headers,
        ["backup", "forget", "prune", "check"],
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("missing: does not exist"), "{}", r.stderr);
    assert_eq!(s.log(), ["after 3"]);
    assert_eq!(s.snapshots(&s.repo).len(), 1);
    let text = fs::read_to_string(&metrics).unwrap();
    assert_eq!(metric(&text, "coffer_exit_code"), 3.0);
    assert_eq!(metric(&text, "coffer_warnings"), 1.0);
    assert!(metric(&text, "coffer_last_success_timestamp_seconds") > 0.0);
}
