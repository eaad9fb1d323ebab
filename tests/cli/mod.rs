//! The command line: the zero-configuration default repository, password
//! sources, and the exit codes and messages of common mistakes.

mod polish;

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn simple_tree(env: &Env) -> TreeBuilder {
    let t = TreeBuilder::new(env.path("src"));
    t.file("a.txt", b"alpha\n");
    t.file("sub/b.txt", b"beta\n");
    t.random_file("sub/c.bin", 100_000, 3);
    t
}

// ---------------------------------------------------------------------------
// Zero configuration

#[test]
fn zero_config_backup_creates_default_repository_and_key_file() {
    let env = Env::new();
    let t = simple_tree(&env);
    let key = env.xdg_config.join("coffer/default.key");
    let repo = env.xdg_data.join("coffer/default");

    let r = env.bare().arg("backup").arg(&t.root).run().ok();
    assert!(
        r.stderr.contains(key.to_str().unwrap()),
        "stderr does not say where the key file is:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(repo.to_str().unwrap()),
        "stderr does not say where the repository is:\n{}",
        r.stderr
    );
    assert!(
        repo.join("config").is_file(),
        "no repository at {}",
        repo.display()
    );
    assert_eq!(mode_of(&key), 0o600, "default key file mode");
    assert_eq!(
        mode_of(key.parent().unwrap()),
        0o700,
        "default key directory mode"
    );
    assert!(!env.repo.exists());

    // Later commands find the repository and key with no flags at all.
    let r = env.bare().arg("snapshots").run().ok();
    assert!(r.stdout.contains("1 snapshot\n"), "{}", r.stdout);
    assert!(r.stdout.contains(t.root.to_str().unwrap()), "{}", r.stdout);

    let r = env.bare().arg("backup").arg(&t.root).run().ok();
    assert!(
        !r.stderr.contains("created repository"),
        "a second repository was created:\n{}",
        r.stderr
    );

    let target = env.path("restore");
    env.bare()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run()
        .ok();
    compare_trees(&t.root, &restored(&target, &t.root));
    // A file as the restore target is named as such.
    let afile = env.path("afile");
    fs::write(&afile, b"mine").unwrap();
    env.bare()
        .args(["restore", "latest", "--target"])
        .arg(&afile)
        .run()
        .expect_code(1)
        .stderr_has("is not a directory");
    assert_eq!(fs::read(&afile).unwrap(), b"mine");
    // Without its key file the default repository says which file is gone.
    let kept = env.path("default.key.kept");
    fs::rename(&key, &kept).unwrap();
    env.bare()
        .arg("snapshots")
        .run()
        .expect_code(1)
        .stderr_has(key.to_str().unwrap());
    fs::rename(&kept, &key).unwrap();
    assert!(
        env.xdg_cache.join("coffer").is_dir(),
        "the index cache is not under XDG_CACHE_HOME"
    );
}

#[test]
fn zero_config_falls_back_to_home_without_xdg_variables() {
    let env = Env::new();
    let t = simple_tree(&env);
    let run = |inv: Invocation<'_>| {
        inv.env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .run()
    };
    let r = run(env.bare().arg("backup").arg(&t.root)).ok();
    let key = env.home.join(".config/coffer/default.key");
    assert!(r.stderr.contains(key.to_str().unwrap()), "{}", r.stderr);
    assert!(
        env.home
            .join(".local/share/coffer/default/config")
            .is_file()
    );
    assert_eq!(mode_of(&key), 0o600);
    let r = run(env.bare().args(["ls", "latest"])).ok();
    assert!(
        r.stdout
            .lines()
            .any(|l| l == t.path("sub/b.txt").to_str().unwrap()),
        "{}",
        r.stdout
    );
}

#[test]
fn zero_config_commands_before_any_backup_say_so() {
    let env = Env::new();
    env.bare()
        .arg("snapshots")
        .run()
        .expect_code(1)
        .stderr_has("no repository yet");
}

#[test]
fn version_mentions_format_version() {
    let env = Env::new();
    let r = env.bare().arg("--version").run().ok();
    assert!(
        r.stdout.contains("coffer") && r.stdout.contains("format version 1"),
        "{}",
        r.stdout
    );
}

// ---------------------------------------------------------------------------
// Passwords

/// A repository created with `init` under `COFFER_PASSWORD=secret`.
fn secret_repo() -> Env {
    let env = Env::new();
    env.coffer()
        .env("COFFER_PASSWORD", "secret")
        .arg("init")
        .run()
        .ok();
    env
}

#[test]
fn password_from_environment() {
    let env = secret_repo();
    env.coffer()
        .env("COFFER_PASSWORD", "secret")
        .arg("snapshots")
        .run()
        .ok();
}

#[test]
fn password_file_flag() {
    let env = secret_repo();
    let pf = env.path("pw");
    fs::write(&pf, "secret\n").unwrap();
    env.coffer()
        .no_password()
        .arg("--password-file")
        .arg(&pf)
        .arg("snapshots")
        .run()
        .ok();
    fs::write(&pf, "wrong\n").unwrap();
    env.coffer()
        .no_password()
        .arg("--password-file")
        .arg(&pf)
        .arg("snapshots")
        .run()
        .expect_code(1)
        .stderr_has("does not open");
}

#[test]
fn password_file_environment() {
    let env = secret_repo();
    let pf = env.path("pw");
    fs::write(&pf, "secret\n").unwrap();
    env.coffer()
        .no_password()
        .env("COFFER_PASSWORD_FILE", &pf)
        .arg("snapshots")
        .run()
        .ok();
    let missing = env.path("no-such-password-file");
    env.coffer()
        .no_password()
        .env("COFFER_PASSWORD_FILE", &missing)
        .arg("snapshots")
        .run()
        .expect_code(1)
        .stderr_has(missing.to_str().unwrap());
}

#[test]
fn password_command_flag() {
    let env = secret_repo();
    env.coffer()
        .no_password()
        .args(["--password-command", "echo secret", "snapshots"])
        .run()
        .ok();
    env.coffer()
        .no_password()
        .args(["--password-command", "false", "snapshots"])
        .run()
        .expect_code(1)
        .stderr_has("password command");
}

#[test]
fn password_command_environment() {
    let env = secret_repo();
    env.coffer()
        .no_password()
        .env("COFFER_PASSWORD_COMMAND", "printf 'secret\\n'")
        .arg("snapshots")
        .run()
        .ok();
}

/// As in restic: a password file or command named on the command line (or
/// by its own variable) beats a bare COFFER_PASSWORD left in the
/// environment, and naming both a file and a command is refused.
#[test]
fn password_file_or_command_wins_over_the_password_variable() {
    let env = secret_repo();
    let pf = env.path("pw");
    fs::write(&pf, "secret\r\n").unwrap();
    env.coffer()
        .env("COFFER_PASSWORD", "wrong")
        .arg("--password-file")
        .arg(&pf)
        .arg("snapshots")
        .run()
        .ok();
    env.coffer()
        .env("COFFER_PASSWORD", "wrong")
        .args(["--password-command", "echo secret", "snapshots"])
        .run()
        .ok();
    fs::write(&pf, "wrong\n").unwrap();
    env.coffer()
        .env("COFFER_PASSWORD", "secret")
        .arg("--password-file")
        .arg(&pf)
        .arg("snapshots")
        .run()
        .expect_code(1)
        .stderr_has("does not open");
    env.coffer()
        .arg("--password-file")
        .arg(&pf)
        .args(["--password-command", "echo secret", "snapshots"])
        .run()
        .expect_code(1)
        .stderr_has("give one");
}

#[test]
fn no_password_and_no_terminal_fails_naming_the_variable() {
    let env = secret_repo();
    env.coffer()
        .no_password()
        .arg("snapshots")
        .run()
        .expect_code(1)
        .stderr_has("COFFER_PASSWORD");
    // init without any password source fails the same way and creates nothing.
    let other = Env::new();
    other
        .coffer()
        .no_password()
        .arg("init")
        .run()
        .expect_code(1)
        .stderr_has("COFFER_PASSWORD");
    assert!(!other.repo.join("config").exists());
}

#[test]
fn wrong_password_does_not_open() {
    let env = secret_repo();
    env.coffer()
        .env("COFFER_PASSWORD", "not the secret")
        .arg("snapshots")
        .run()
        .expect_code(1)
        .stderr_has("does not open");
    env.coffer()
        .env("COFFER_PASSWORD", "not the secret")
        .args(["restore", "latest", "--target"])
        .arg(env.path("t"))
        .run()
        .expect_code(1)
        .stderr_has("does not open");
    assert!(
        !env.path("t").exists(),
        "a restore with the wrong password created its target"
    );
}

// ---------------------------------------------------------------------------
// Repository locations

#[test]
fn missing_repository_directory() {
    let env = Env::new();
    let nowhere = env.path("no/such/repo");
    let r = env
        .coffer()
        .no_repo()
        .arg("--repo")
        .arg(&nowhere)
        .arg("snapshots")
        .run()
        .expect_code(1);
    let r = r.stderr_has("does not exist");
    assert!(r.stderr.contains(nowhere.to_str().unwrap()), "{}", r.stderr);
    assert!(
        !nowhere.exists(),
        "a read-only command created the repository directory"
    );
    // The environment variable is honoured the same way.
    env.coffer()
        .no_repo()
        .env("COFFER_REPOSITORY", &nowhere)
        .arg("snapshots")
        .run()
        .expect_code(1)
        .stderr_has("does not exist");
}

#[test]
fn directory_that_is_not_a_repository() {
    let env = Env::new();
    fs::create_dir_all(&env.repo).unwrap();
    fs::write(env.repo.join("some-file"), b"not a repository").unwrap();
    env.coffer()
        .arg("snapshots")
        .run()
        .expect_code(1)
        .stderr_has("not a coffer repository");
    env.coffer()
        .args(["ls", "latest"])
        .run()
        .expect_code(1)
        .stderr_has("not a coffer repository");
    // --repo naming a file.
    env.coffer()
        .no_repo()
        .arg("--repo")
        .arg(env.repo.join("some-file"))
        .arg("snapshots")
        .run()
        .expect_code(1)
        .stderr_has("is a file, not a repository directory");
}

#[test]
fn directory_that_is_not_a_repository_without_password() {
    let env = Env::new();
    fs::create_dir_all(&env.repo).unwrap();
    env.coffer()
        .no_password()
        .arg("snapshots")
        .run()
        .expect_code(1)
        .stderr_has("not a coffer repository");
}

#[test]
fn init_twice_is_refused() {
    let env = Env::new();
    env.init();
    let config = fs::read(env.repo.join("config")).unwrap();
    env.coffer()
        .arg("init")
        .run()
        .expect_code(1)
        .stderr_has("already");
    assert_eq!(
        fs::read(env.repo.join("config")).unwrap(),
        config,
        "the second init touched the config"
    );
    assert_eq!(
        env.objects("keys").len(),
        1,
        "the second init added a key slot"
    );
    env.coffer().arg("snapshots").run().ok();
}

// ---------------------------------------------------------------------------
// Key files

#[test]
fn key_file_init_and_group_readable_key_file_is_refused() {
    let env = Env::new();
    let key = env.path("keys/repo.key");
    env.coffer()
        .no_password()
        .arg("--key-file")
        .arg(&key)
        .arg("init")
        .run()
        .ok();
    assert_eq!(mode_of(&key), 0o600);
    env.coffer()
        .no_password()
        .arg("--key-file")
        .arg(&key)
        .arg("snapshots")
        .run()
        .ok();

    for mode in [0o640, 0o604] {
        fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
        let r = env
            .coffer()
            .no_password()
            .arg("--key-file")
            .arg(&key)
            .arg("snapshots")
            .run()
            .expect_code(1);
        assert!(
            r.stderr.contains(key.to_str().unwrap()) && r.stderr.contains("chmod 600"),
            "mode {mode:o}: {}",
            r.stderr
        );
    }
}

#[test]
fn group_readable_default_key_file_is_refused() {
    let env = Env::new();
    let t = simple_tree(&env);
    env.bare().arg("backup").arg(&t.root).run().ok();
    let key = env.xdg_config.join("coffer/default.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    env.bare()
        .arg("snapshots")
        .run()
        .expect_code(1)
        .stderr_has("readable by other users");
    env.bare()
        .arg("backup")
        .arg(&t.root)
        .run()
        .expect_code(1)
        .stderr_has("readable by other users");
}

// ---------------------------------------------------------------------------
// Backup sources

#[test]
fn backup_of_nonexistent_path_fails() {
    let env = Env::new();
    env.init();
    let missing = env.path("does-not-exist");
    let r = env
        .coffer()
        .arg("backup")
        .arg(&missing)
        .run()
        .expect_code(1);
    assert!(r.stderr.contains(missing.to_str().unwrap()), "{}", r.stderr);
    assert!(
        env.objects("snapshots").is_empty(),
        "a snapshot was written for nothing"
    );
}

#[test]
fn backup_with_one_missing_path_exits_3() {
    let env = Env::new();
    env.init();
    let t = simple_tree(&env);
    let missing = env.path("does-not-exist");
    let r = env.coffer().arg("backup").arg(&t.root).arg(&missing).run();
    assert!(r.stderr.contains(missing.to_str().unwrap()), "{}", r.stderr);
    assert_eq!(env.objects("snapshots").len(), 1);
    r.expect_code(3);
}

/// How to run the binary so that a mode 000 file cannot be read.
enum Unreadable {
    /// Not root: permissions already apply.
    Direct,
    /// Root: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH with setpriv.
    Wrapped(Vec<String>),
    /// Root, and no way to drop the capabilities.
    Impossible(String),
}

fn unreadable_strategy(probe: &Path) -> Unreadable {
    if !is_root() {
        return Unreadable::Direct;
    }
    let caps = "-dac_override,-dac_read_search";
    let wrapper: Vec<String> = [
        "setpriv",
        &format!("--inh-caps={caps}"),
        &format!("--bounding-set={caps}"),
    ]
    .map(String::from)
    .to_vec();
    // The probe file is mode 000: `cat` must fail under the wrapper.
    match std::process::Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg("cat")
        .arg(probe)
        .output()
    {
        Ok(o)
            if !o.status.success()
                && String::from_utf8_lossy(&o.stderr).contains("Permission denied") =>
        {
            Unreadable::Wrapped(wrapper)
        }
        Ok(o) => Unreadable::Impossible(format!(
            "setpriv did not make the file unreadable ({})",
            o.status
        )),
        Err(e) => Unreadable::Impossible(format!("setpriv is not available: {e}")),
    }
}

#[test]
fn backup_with_unreadable_file_exits_3_and_keeps_the_rest() {
    let env = Env::new();
    env.init();
    let t = simple_tree(&env);
    let secret = t.file("sub/unreadable.txt", b"you cannot read me");
    t.mode("sub/unreadable.txt", 0o000);
    let locked_dir = t.dir("locked");
    t.file("locked/inside.txt", b"hidden");
    t.mode("locked", 0o000);

    let strategy = unreadable_strategy(&secret);
    let inv = env.coffer().arg("backup").arg(&t.root);
    let r = match &strategy {
        Unreadable::Direct => inv.run(),
        Unreadable::Wrapped(w) => inv.wrap(w).run(),
        Unreadable::Impossible(why) => {
            println!(
                "NOTE: running as root and {why}: the unreadable-file part of this test was NOT exercised; \
                 only checking that the backup succeeds"
            );
            inv.run().ok();
            return;
        }
    };
    // Put the permissions back so the temporary directory can be removed.
    t.mode("locked", 0o755);
    t.mode("sub/unreadable.txt", 0o644);
    assert_eq!(
        r.code, 3,
        "backup with unreadable entries\nstdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
    assert!(
        r.stderr.contains(secret.to_str().unwrap()),
        "no warning names the unreadable file:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(locked_dir.to_str().unwrap()),
        "no warning names the unreadable directory:\n{}",
        r.stderr
    );
    assert_eq!(
        env.objects("snapshots").len(),
        1,
        "the backup did not record a snapshot"
    );

    // Everything readable was stored correctly (doc/reliability.md E5, E8).
    let target = env.path("restore");
    env.coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run()
        .ok();
    let out = restored(&target, &t.root);
    assert_eq!(fs::read(out.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(fs::read(out.join("sub/b.txt")).unwrap(), b"beta\n");
    assert_eq!(
        fs::read(out.join("sub/c.bin")).unwrap(),
        fs::read(t.path("sub/c.bin")).unwrap()
    );
    let restored_secret: PathBuf = out.join("sub/unreadable.txt");
    if let Ok(data) = fs::read(&restored_secret) {
        assert_ne!(
            data, b"you cannot read me",
            "the unreadable file's content got into the snapshot"
        );
    }
    assert!(!out.join("locked/inside.txt").exists());
}

/// A usage error exits 1 like any failure (clap's own code would be 2);
/// `--help` and `--version` exit 0.
#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let env = Env::new();
    env.init();
    for args in [
        vec!["stats", "--mode", "bogus"],
        vec!["no-such-command"],
        vec!["backup", "--no-such-flag"],
    ] {
        env.coffer().args(&args).run().expect_code(1);
    }
    let r = env.coffer().arg("--help").run().ok();
    assert!(r.stdout.contains("backup"), "{}", r.stdout);
    env.coffer().arg("--version").run().ok();
}

// ---------------------------------------------------------------------------
// Read-only repositories and --help

/// A read-only bind mount of a directory, unmounted when dropped (also
/// when the test fails).
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn new(src: &Path, at: &Path) -> Option<ReadOnlyMount> {
        fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["--bind", "-o", "ro"])
            .arg(src)
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| ReadOnlyMount(at.to_path_buf()))
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_read_only_repository_is_read_with_no_lock_and_writers_refuse_it() {
    let env = Env::new();
    env.init();
    let t = simple_tree(&env);
    env.coffer().arg("backup").arg(&t.root).run().ok();
    let ro = env.path("ro");
    let Some(_mount) = ReadOnlyMount::new(&env.repo, &ro) else {
        assert!(!is_root(), "root could not bind-mount {}", ro.display());
        eprintln!("SKIPPED: a read-only bind mount needs root");
        return;
    };
    let at = |args: &[&str]| env.coffer().no_repo().arg("--repo").arg(&ro).args(args);
    // Commands that never lock read it as they are.
    at(&["snapshots"]).run().ok();
    at(&["ls", "latest"]).run().ok();
    let d = at(&["dump", "latest"]).arg(t.path("a.txt")).run().ok();
    assert_eq!(d.stdout, "alpha\n");
    let dst = env.path("restored");
    at(&["restore", "latest", "--target"]).arg(&dst).run().ok();
    compare_trees(&t.root, &restored(&dst, &t.root));
    // check locks unless told not to; the error says how.
    at(&["check"]).run().expect_code(1).stderr_has("--no-lock");
    at(&["check", "--read-data", "--no-lock"]).run().ok();
    at(&["stats", "--mode", "raw-data", "--no-lock"]).run().ok();
    // copy reads its source without a lock; the destination is locked.
    let replica = env.path("replica");
    env.coffer()
        .no_repo()
        .arg("--repo")
        .arg(&replica)
        .arg("init")
        .run()
        .ok();
    env.coffer()
        .no_repo()
        .arg("--repo")
        .arg(&replica)
        .args(["copy", "--no-lock", "--from-repo"])
        .arg(&ro)
        .env("COFFER_FROM_PASSWORD", PASSWORD)
        .run()
        .ok();
    // Writers refuse --no-lock, naming it, on any repository.
    env.coffer()
        .args(["backup", "--no-lock"])
        .arg(&t.root)
        .run()
        .expect_code(1)
        .stderr_has("--no-lock: backup writes to the repository");
    env.coffer()
        .args(["prune", "--no-lock"])
        .run()
        .expect_code(1)
        .stderr_has("--no-lock: prune writes");
}

#[test]
fn help_lists_a_commands_own_options_apart_from_the_global_ones() {
    let env = Env::new();
    let h = env.bare().args(["restore", "--help"]).run().ok().stdout;
    let own = h.find("--target").expect("restore --help lists --target");
    let global = h.find("Global options:").expect("a Global options heading");
    let repo = h.find("--repo").expect("restore --help lists --repo");
    assert!(own < global && global < repo, "{h}");
}

// ---------------------------------------------------------------------------
// Output conventions: JSON, --quiet, counts

#[test]
fn backup_and_snapshot_summaries_share_field_names_and_json_has_no_nulls() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("only.txt", b"one file\n");
    let first = env
        .coffer()
        .args(["--json", "backup"])
        .arg(&t.root)
        .run()
        .ok();
    // The first backup has no parent: the field is absent, not null.
    assert!(!first.stdout.contains("null"), "{}", first.stdout);
    let summary = first.summary();
    let snaps = env.coffer().args(["--json", "snapshots"]).run().ok();
    assert!(!snaps.stdout.contains("null"), "{}", snaps.stdout);
    let stored = &snaps.json()[0]["summary"];
    for field in [
        "files_new",
        "dirs_new",
        "total_files_processed",
        "total_bytes_processed",
        "data_added",
        "bytes_read",
        "total_duration",
        "warnings",
    ] {
        assert!(summary.get(field).is_some(), "backup lacks {field}");
        assert_eq!(
            stored.get(field),
            summary.get(field),
            "{field} differs between backup --json and snapshots --json"
        );
    }
    let found = env.coffer().args(["--json", "find", "only.txt"]).run().ok();
    assert!(!found.stdout.contains("null"), "{}", found.stdout);
}

#[test]
fn quiet_keeps_what_was_asked_for_and_drops_the_rest() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("only.txt", b"one file\n");
    let b = env.coffer().args(["-q", "backup"]).arg(&t.root).run().ok();
    assert_eq!((b.stdout.as_str(), b.stderr.as_str()), ("", ""));
    let s = env.coffer().args(["-q", "snapshots"]).run().ok();
    assert!(
        s.stdout.contains(&t.root.to_string_lossy().to_string()),
        "{}",
        s.stdout
    );
    assert!(!s.stdout.contains("1 snapshot"), "{}", s.stdout);
    let f = env.coffer().args(["-q", "find", "only.txt"]).run().ok();
    assert!(
        f.stdout.contains("only.txt") && f.stderr.is_empty(),
        "{f:?}"
    );
    let k = env.coffer().args(["-q", "key", "list"]).run().ok();
    assert!(k.stdout.contains("passphrase"), "{}", k.stdout);
}

#[test]
fn counts_agree_in_number() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("only.txt", b"one file\n");
    let b = env.coffer().arg("backup").arg(&t.root).run().ok();
    assert!(b.stdout.contains(" in 1 file;"), "{}", b.stdout);
    let s = env.coffer().arg("snapshots").run().ok();
    assert!(s.stdout.contains("\n1 snapshot\n"), "{}", s.stdout);
    let dst = env.path("r");
    let r = env
        .coffer()
        .args(["restore", "latest", "--target"])
        .arg(&dst)
        .run()
        .ok();
    assert!(r.stdout.contains("restored 1 file, "), "{}", r.stdout);
    let c = env.coffer().arg("check").run().ok();
    assert!(c.stdout.contains("checked 1 snapshot, "), "{}", c.stdout);
}

// ---------------------------------------------------------------------------
// Signals

/// 18.13: SIGINT or SIGTERM during a backup says what it means, exits
/// 128 + the signal, and leaves neither its lock nor a temporary object;
/// no snapshot is recorded and the next backup reuses what was stored.
#[test]
fn an_interrupted_backup_says_so_and_leaves_no_lock_or_temporary_files() {
    for (sig, code, name) in [
        (libc::SIGINT, 130, "SIGINT"),
        (libc::SIGTERM, 143, "SIGTERM"),
    ] {
        let env = Env::new();
        env.init_with(&["--pack-size", "1M"]);
        // A stream that delivers 24 MB and then stays open, so the backup
        // is certainly still running when the signal comes.
        let child = env
            .coffer()
            .args([
                "backup",
                "--stdin-name",
                "dump.sql",
                "--stdin-from-command",
                "--",
            ])
            .args(["sh", "-c", "head -c 24000000 /dev/urandom; exec sleep 20"])
            .spawn();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while env.objects("packs").len() < 3 {
            assert!(std::time::Instant::now() < deadline, "no packs appeared");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(env.objects("locks").len(), 1, "the backup holds a lock");
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(
            stderr.contains(&format!("interrupted by {name}: no snapshot was recorded")),
            "{stderr}"
        );
        assert!(env.objects("locks").is_empty(), "lock left behind");
        assert!(env.objects("snapshots").is_empty());
        // Every object of every kind: no temporary file anywhere.
        let temps: Vec<PathBuf> = env
            .objects("")
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(".tmp-"))
            .collect();
        assert_eq!(temps, Vec::<PathBuf>::new());
        // The next backup needs no unlock, and the repository is sound.
        env.coffer()
            .args([
                "backup",
                "--stdin-name",
                "dump.sql",
                "--stdin-from-command",
                "--",
            ])
            .args(["echo", "the next night"])
            .run()
            .ok();
        env.coffer().args(["check", "--read-data"]).run().ok();
    }
}
