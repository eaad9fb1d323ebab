//! Living with the command line (issue 23 item 6): shell completions,
//! manual pages, `-q` on every command, and progress drawn only on a
//! terminal.

use crate::support::*;
use std::fs;
use std::path::Path;

thread_local! {
    /// The commands [`quiet`] ran, to find one the test leaves out.
    static RUN_QUIET: std::cell::RefCell<std::collections::BTreeSet<String>> =
        Default::default();
}

/// `coffer -q ARGS`: exit 0 and nothing on stderr; the run, for what
/// its stdout must hold.
fn quiet(inv: Invocation<'_>, args: &[&str]) -> Run {
    if let Some(cmd) = args.iter().find(|a| !a.starts_with('-')) {
        RUN_QUIET.with(|r| r.borrow_mut().insert(cmd.to_string()));
    }
    let r = inv.arg("-q").args(args).run().ok();
    assert_eq!(r.stderr, "", "`coffer -q {args:?}` wrote to stderr");
    r
}

/// [`quiet`] for a command asked to show nothing: stdout empty too.
fn silent(inv: Invocation<'_>, args: &[&str]) {
    let r = quiet(inv, args);
    assert_eq!(r.stdout, "", "`coffer -q {args:?}` wrote to stdout");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn quiet_leaves_every_command_only_what_it_was_asked_to_show() {
    let env = Env::new();
    silent(env.coffer(), &["init"]);
    let t = TreeBuilder::new(env.path("src"));
    t.file("a.txt", b"alpha\n");
    t.file("sub/b.txt", b"beta\n");
    silent(env.coffer(), &["backup", s(&t.root)]);
    t.file("a.txt", b"alpha, changed\n");
    silent(env.coffer(), &["backup", s(&t.root)]);
    silent(env.coffer(), &["backup", "--dry-run", s(&t.root)]);
    let ids = env.snapshot_ids();
    let (first, second) = (ids[0].as_str(), ids[1].as_str());
    let a_txt = t.root.join("a.txt");

    // What was asked for stays, and only that.
    let snaps = quiet(env.coffer(), &["snapshots"]).stdout;
    assert!(
        snaps.contains(s(&t.root)) && !snaps.contains("2 snapshots"),
        "{snaps}"
    );
    let ls = quiet(env.coffer(), &["ls", "latest"]).stdout;
    assert!(ls.contains("a.txt") && ls.contains("b.txt"), "{ls}");
    let dump = quiet(env.coffer(), &["dump", "latest", s(&a_txt)]).stdout;
    assert_eq!(dump, "alpha, changed\n");
    let diff = quiet(env.coffer(), &["diff", first, second]).stdout;
    assert_eq!(diff.trim(), format!("M    {}", a_txt.display()), "{diff}");
    let find = quiet(env.coffer(), &["find", "b.txt"]).stdout;
    assert!(find.contains("b.txt"), "{find}");
    let stats = quiet(env.coffer(), &["stats"]).stdout;
    assert!(stats.contains("Total Size"), "{stats}");
    let cat = quiet(env.coffer(), &["cat", "config"]).stdout;
    serde_json::from_str::<serde_json::Value>(&cat).expect("cat config prints JSON");
    let keys = quiet(env.coffer(), &["key", "list"]).stdout;
    assert!(keys.contains("passphrase"), "{keys}");
    let would = quiet(
        env.coffer(),
        &[
            "restore",
            "latest",
            "--dry-run",
            "--target",
            s(&env.path("nowhere")),
        ],
    )
    .stdout;
    assert!(would.contains("a.txt"), "{would}");
    let script = quiet(env.bare(), &["completions", "bash"]).stdout;
    assert!(script.contains("coffer"), "{script}");
    let page = quiet(env.bare(), &["manpage"]).stdout;
    assert!(page.contains(".TH coffer 1"), "{page}");

    // Commands that act: nothing at all.
    silent(
        env.coffer(),
        &["restore", "latest", "--target", s(&env.path("r"))],
    );
    silent(env.coffer(), &["check"]);
    silent(env.coffer(), &["check", "--read-data"]);
    silent(env.coffer(), &["check", "--read-data-subset", "1/2"]);
    silent(env.coffer(), &["drill"]);
    let tar = env.path("a.tar");
    silent(env.coffer(), &["export-tar", "latest", "-o", s(&tar)]);
    silent(env.coffer(), &["import-tar", "--name", "site", s(&tar)]);
    silent(env.coffer(), &["forget", first]);
    silent(env.coffer(), &["forget", "--keep-last", "1", "--prune"]);
    silent(env.coffer(), &["prune", "--max-unused", "0%"]);
    silent(env.coffer(), &["prune", "--dry-run"]);
    silent(env.coffer(), &["unlock"]);
    silent(env.coffer(), &["repair", "index"]);
    silent(env.coffer(), &["repair", "packs"]);
    silent(env.coffer(), &["repair", "config"]);
    silent(env.coffer(), &["repair", "snapshots"]);
    let offsite = env.path("offsite");
    let to_offsite = || {
        env.coffer()
            .no_repo()
            .arg("--repo")
            .arg(&offsite)
            .env("COFFER_FROM_PASSWORD", PASSWORD)
    };
    silent(to_offsite(), &["init", "--from-repo", s(&env.repo)]);
    silent(to_offsite(), &["copy", "--from-repo", s(&env.repo)]);
    silent(env.bare(), &["manpage", "--dir", s(&env.path("man"))]);

    // A profile's nightly job, and the settings it puts in force.
    let conf = env.xdg_config.join("coffer");
    fs::create_dir_all(&conf).unwrap();
    fs::write(
        conf.join("config.toml"),
        format!(
            "[profiles.nightly]\nsources = [{:?}]\nkeep-last = 2\n",
            s(&t.root)
        ),
    )
    .unwrap();
    let nightly = || env.coffer().arg("-P").arg("nightly");
    silent(nightly(), &["run"]);
    let shown = quiet(nightly(), &["config", "show"]).stdout;
    assert!(shown.contains("keep-last"), "{shown}");

    // Keys last: passwd changes the passphrase every run above used.
    let new_pw = env.path("new-password");
    fs::write(&new_pw, "another passphrase\n").unwrap();
    silent(
        env.coffer(),
        &["key", "add", "--new-password-file", s(&new_pw)],
    );
    silent(
        env.coffer(),
        &["key", "export", "--file", s(&env.path("recovery.key"))],
    );
    let listed = quiet(env.coffer(), &["--json", "key", "list"]).json();
    let added = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == false && k["kind"] == "passphrase")
        .expect("the added key is listed");
    silent(
        env.coffer(),
        &["key", "remove", added["short_id"].as_str().unwrap()],
    );
    silent(
        env.coffer(),
        &["key", "passwd", "--new-password-file", s(&new_pw)],
    );

    // A command added later is added here too.
    let help = env.bare().arg("--help").run().ok().stdout;
    let commands = help
        .split("Commands:\n")
        .nth(1)
        .expect("coffer --help lists commands")
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        // mount runs until it is unmounted: tests/mount runs it.
        .filter(|c| *c != "help" && *c != "mount");
    RUN_QUIET.with(|r| {
        for c in commands {
            assert!(r.borrow().contains(c), "`coffer -q {c}` is not tried here");
        }
    });
}

#[test]
fn quiet_still_shows_warnings() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("a.txt", b"alpha\n");
    let r = env
        .coffer()
        .args(["-q", "backup"])
        .arg(&t.root)
        .arg(env.path("missing"))
        .run()
        .expect_code(3);
    assert!(r.stderr.contains("coffer: warning: "), "{}", r.stderr);
    assert_eq!(r.stdout, "");
}

#[test]
fn verbose_names_the_files_read_and_restored() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    let a = t.file("a.txt", b"alpha\n");
    let b = t.file("b.txt", b"beta\n");
    let r = env.coffer().args(["-v", "backup"]).arg(&t.root).run().ok();
    assert!(
        r.stderr.contains(&format!("read {} (6 B)", a.display())),
        "{}",
        r.stderr
    );
    t.file("b.txt", b"beta, changed\n");
    // -v: only what was read again; -vv: the unchanged file too.
    let r = env.coffer().args(["-v", "backup"]).arg(&t.root).run().ok();
    assert!(
        r.stderr.contains(&format!("read {}", b.display())),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(s(&a)), "{}", r.stderr);
    let r = env.coffer().args(["-vv", "backup"]).arg(&t.root).run().ok();
    assert!(
        r.stderr.contains(&format!("unchanged {}", a.display())),
        "{}",
        r.stderr
    );
    let dst = env.path("r");
    let r = env
        .coffer()
        .args(["-v", "restore", "latest", "--target"])
        .arg(&dst)
        .run()
        .ok();
    let at = restored(&dst, &a);
    assert!(
        r.stderr.contains(&format!("restored {}", at.display())),
        "{}",
        r.stderr
    );
    // -q wins over -v.
    let r = env
        .coffer()
        .args(["-q", "-v", "backup"])
        .arg(&t.root)
        .run()
        .ok();
    assert_eq!(r.stderr, "");
}

#[test]
fn verbose_prune_names_each_pack_it_removes_or_repacks() {
    let env = Env::new();
    busy_repo(&env);
    let plain = env
        .coffer()
        .args(["prune", "--dry-run", "--max-unused", "0%"])
        .run()
        .ok();
    let verbose = env
        .coffer()
        .args(["-v", "prune", "--dry-run", "--max-unused", "0%"])
        .run()
        .ok();
    let named: Vec<&str> = verbose
        .stdout
        .lines()
        .filter(|l| l.starts_with("  repack ") || l.starts_with("  unused "))
        .collect();
    assert!(!named.is_empty(), "{}", verbose.stdout);
    for l in &named {
        let id = l.split_whitespace().nth(1).unwrap();
        let pack = env.repo.join("packs").join(&id[..2]).join(id);
        assert!(pack.is_file(), "{l}: no such pack");
    }
    assert!(!plain.stdout.contains("  repack "), "{}", plain.stdout);
}

// ---------------------------------------------------------------------------
// Completions and manual pages

#[test]
fn completions_for_every_shell_name_the_commands() {
    let env = Env::new();
    for (shell, marker) in [
        ("bash", "complete -F _coffer"),
        ("zsh", "#compdef coffer"),
        ("fish", "complete -c coffer"),
        ("elvish", "coffer"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = env.bare().args(["completions", shell]).run().ok().stdout;
        assert!(out.contains(marker), "{shell}: no {marker:?}");
        for cmd in ["import-tar", "restore", "completions"] {
            assert!(out.contains(cmd), "{shell} completion lacks {cmd}");
        }
    }
    env.bare()
        .args(["completions", "tcsh"])
        .run()
        .expect_code(1)
        .stderr_has("possible values");
}

#[test]
fn manpage_writes_one_page_per_command_with_its_examples() {
    let env = Env::new();
    let dir = env.path("man/man1");
    env.bare().args(["manpage", "--dir"]).arg(&dir).run().ok();
    for page in [
        "coffer.1",
        "coffer-backup.1",
        "coffer-key-add.1",
        "coffer-repair-index.1",
    ] {
        assert!(dir.join(page).is_file(), "no {page}");
    }
    let backup = fs::read_to_string(dir.join("coffer-backup.1")).unwrap();
    assert!(backup.contains("\\-\\-exclude"), "{backup}");
    assert!(backup.contains("Examples:"), "{backup}");
    let main = env.bare().arg("manpage").run().ok().stdout;
    assert_eq!(main, fs::read_to_string(dir.join("coffer.1")).unwrap());
}

// ---------------------------------------------------------------------------
// Progress bars

/// A repository whose commands have work to show: packs of 1 MiB that
/// each hold files of both snapshots, the older one forgotten, so that
/// prune repacks every pack.
fn busy_repo(env: &Env) -> TreeBuilder {
    env.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(env.path("src"));
    for i in 0..60 {
        t.random_file(format!("f{i:02}"), 50_000, i);
    }
    env.coffer().arg("backup").arg(&t.root).run().ok();
    for i in (1..60).step_by(2) {
        fs::remove_file(t.path(format!("f{i:02}"))).unwrap();
    }
    env.coffer().arg("backup").arg(&t.root).run().ok();
    let oldest = env.snapshot_ids()[0].clone();
    env.coffer().args(["forget", &oldest]).run().ok();
    env.coffer()
        .no_repo()
        .arg("--repo")
        .arg(env.path("offsite"))
        .args(["init", "--from-repo"])
        .arg(&env.repo)
        .env("COFFER_FROM_PASSWORD", PASSWORD)
        .run()
        .ok();
    t
}

/// The commands with a bar, as arguments after `coffer --cache-dir DIR`.
fn with_bars(env: &Env) -> Vec<Vec<String>> {
    let offsite = env.path("offsite").display().to_string();
    let repo = env.repo.display().to_string();
    let target = env.path("restored").display().to_string();
    [
        vec!["--repo", &repo, "check", "--read-data"],
        vec!["--repo", &offsite, "copy", "--from-repo", &repo],
        vec!["--repo", &repo, "prune", "--max-unused", "0%"],
        vec!["--repo", &repo, "restore", "latest", "--target", &target],
    ]
    .iter()
    .map(|v| v.iter().map(|x| x.to_string()).collect())
    .collect()
}

#[test]
fn progress_is_never_drawn_on_a_stderr_that_is_not_a_terminal() {
    let env = Env::new();
    busy_repo(&env);
    for args in with_bars(&env) {
        let r = env
            .coffer()
            .no_repo()
            .args(&args)
            .env("COFFER_FROM_PASSWORD", PASSWORD)
            .run()
            .ok();
        for (name, out) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
            assert!(
                !out.contains('\r') && !out.contains('\x1b'),
                "`coffer {args:?}` drew on a {name} that is a pipe:\n{out:?}"
            );
        }
    }
}

/// `script` runs a command on a pseudo-terminal (util-linux).
fn have_script() -> bool {
    std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn progress_bars_show_counts_bytes_and_eta_on_a_terminal() {
    if !have_script() {
        eprintln!("skipped: no `script` to run coffer on a terminal");
        return;
    }
    let env = Env::new();
    busy_repo(&env);
    let bin = env!("CARGO_BIN_EXE_coffer");
    let wanted = [
        ("check", "packs, ", "verified"),
        ("copy", "snapshots, ", "copied"),
        ("prune", "packs, ", "repacked"),
        ("restore", "files, ", "restored"),
    ];
    for (args, (name, noun, verb)) in with_bars(&env).into_iter().zip(wanted) {
        let mut line = format!(
            "{} --cache-dir {}",
            shell_quote(bin),
            shell_quote(s(&env.cache))
        );
        for a in &args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        let out = std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("COFFER_PASSWORD", PASSWORD)
            .env("COFFER_FROM_PASSWORD", PASSWORD)
            .env("HOME", &env.home)
            .env("XDG_CONFIG_HOME", &env.xdg_config)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run script");
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {shown}");
        assert!(
            shown.contains(noun) && shown.contains(&format!(" {verb} (")) && shown.contains("/s)"),
            "{name}: no progress line on the terminal:\n{shown:?}"
        );
        // Those that know their total ahead draw a bar with an ETA.
        if name != "copy" {
            assert!(shown.contains("ETA"), "{name}: no ETA:\n{shown:?}");
        }
    }
}
