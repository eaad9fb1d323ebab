//! `coffer key list|add|remove|passwd|export` (issue #7, doc/reliability.md
//! H-5, A8): every new key opens the repository on its own, the key in use
//! and the last key cannot be removed, a password change leaves exactly
//! the new key, key files are created 0600 and never overwritten, and a key
//! file that other users can read is refused by every command.

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn keys_json(env: &Env) -> Vec<serde_json::Value> {
    env.coffer()
        .args(["--json", "key", "list"])
        .run()
        .ok()
        .json()
        .as_array()
        .unwrap()
        .clone()
}

fn write_secret(env: &Env, name: &str, text: &str) -> std::path::PathBuf {
    let p = env.path(name);
    fs::write(&p, text).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn with_key_file<'a>(env: &'a Env, kf: &Path) -> Invocation<'a> {
    env.coffer().no_password().arg("--key-file").arg(kf)
}

#[test]
fn list_shows_every_key_and_marks_the_one_in_use() {
    let env = Env::new();
    env.init();
    let keys = keys_json(&env);
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(k["current"], true);
    assert_eq!(k["kind"], "passphrase");
    assert_eq!(k["username"], "e2e-tester");
    assert!(k["hostname"].as_str().is_some_and(|h| !h.is_empty()));
    let created = parse_rfc3339(k["created"].as_str().unwrap()).unwrap();
    assert!((created - now_secs()).abs() < 600, "created {created}");
    assert_eq!(k["id"].as_str().unwrap().len(), 64);

    let kf = env.path("k.key");
    env.coffer()
        .args(["key", "add", "--new-key-file"])
        .arg(&kf)
        .run()
        .ok();
    let keys = keys_json(&env);
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.iter().filter(|k| k["current"] == true).count(), 1);
    assert!(keys.iter().any(|k| k["kind"] == "key file"));
    // Opened through the key file, the key file's slot is the current one.
    let human = with_key_file(&env, &kf).args(["key", "list"]).run().ok();
    let starred: Vec<&str> = human
        .stdout
        .lines()
        .filter(|l| l.starts_with('*'))
        .collect();
    assert_eq!(starred.len(), 1, "{}", human.stdout);
    assert!(starred[0].contains("key file"), "{}", human.stdout);
}

#[test]
fn add_passphrase_and_key_file_each_open_the_repository() {
    let env = Env::new();
    env.init();
    let pw = write_secret(&env, "new.pw", "second secret\n");
    let r = env
        .coffer()
        .args(["--json", "key", "add", "--new-password-file"])
        .arg(&pw)
        .run()
        .ok();
    assert_eq!(r.json()["message_type"], "key_added");
    env.coffer()
        .env("COFFER_PASSWORD", "second secret")
        .arg("snapshots")
        .run()
        .ok();
    // The old password still works too.
    env.coffer().arg("snapshots").run().ok();

    // A key file in a directory that does not exist yet.
    let kf = env.path("keys/dir/new.key");
    env.coffer()
        .args(["key", "add", "--new-key-file"])
        .arg(&kf)
        .run()
        .ok();
    assert_eq!(mode(&kf), 0o600, "a new key file must be 0600");
    with_key_file(&env, &kf).arg("snapshots").run().ok();

    // Never overwrite: the file keeps its bytes and no key is added.
    let before = fs::read(&kf).unwrap();
    let r = env
        .coffer()
        .args(["key", "add", "--new-key-file"])
        .arg(&kf)
        .run()
        .expect_code(1);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert_eq!(fs::read(&kf).unwrap(), before);
    assert_eq!(keys_json(&env).len(), 3);

    // Without a terminal and without --new-password-file: a clear error.
    let r = env.coffer().args(["key", "add"]).run().expect_code(1);
    assert!(r.stderr.contains("--new-password-file"), "{}", r.stderr);
    let empty = write_secret(&env, "empty.pw", "\n");
    let r = env
        .coffer()
        .args(["key", "add", "--new-password-file"])
        .arg(&empty)
        .run()
        .expect_code(1);
    assert!(r.stderr.contains("empty"), "{}", r.stderr);
    assert_eq!(keys_json(&env).len(), 3, "a refused key was added");
}

#[test]
fn remove_refuses_the_key_in_use_and_the_last_key() {
    let env = Env::new();
    env.init();
    let first = keys_json(&env)[0]["id"].as_str().unwrap().to_string();
    // The last key (also the one in use).
    let r = env
        .coffer()
        .args(["key", "remove", &first])
        .run()
        .expect_code(1);
    assert!(r.stderr.contains(&first[..8]), "{}", r.stderr);

    let pw = write_secret(&env, "new.pw", "second secret\n");
    env.coffer()
        .args(["key", "add", "--new-password-file"])
        .arg(&pw)
        .run()
        .ok();
    let r = env
        .coffer()
        .args(["key", "remove", &first[..8]])
        .run()
        .expect_code(1);
    assert!(r.stderr.contains("in use"), "{}", r.stderr);
    assert_eq!(keys_json(&env).len(), 2);

    // Opened with the second key, the first one can go; then the first
    // password no longer opens anything.
    let second = env.coffer().env("COFFER_PASSWORD", "second secret");
    second.args(["key", "remove", &first[..8]]).run().ok();
    let r = env.coffer().arg("snapshots").run().expect_code(1);
    assert!(r.stderr.contains("does not open"), "{}", r.stderr);
    let r = env
        .coffer()
        .env("COFFER_PASSWORD", "second secret")
        .args(["key", "remove", "0000"])
        .run()
        .expect_code(1);
    assert!(r.stderr.contains("no key matches"), "{}", r.stderr);
    let r = env
        .coffer()
        .env("COFFER_PASSWORD", "second secret")
        .args(["key", "remove", "xyz"])
        .run()
        .expect_code(1);
    assert!(r.stderr.contains("not a key id"), "{}", r.stderr);
}

#[test]
fn passwd_replaces_the_key_in_use_after_verifying_the_new_one() {
    let env = Env::new();
    env.init();
    let old = keys_json(&env)[0]["id"].as_str().unwrap().to_string();
    let pw = write_secret(&env, "new.pw", "brand new\n");
    let r = env
        .coffer()
        .args(["--json", "key", "passwd", "--new-password-file"])
        .arg(&pw)
        .run()
        .ok();
    let new = r.json()["id"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let r = env.coffer().arg("snapshots").run().expect_code(1);
    assert!(r.stderr.contains("does not open"), "{}", r.stderr);
    let keys: Vec<String> = env
        .coffer()
        .env("COFFER_PASSWORD", "brand new")
        .args(["--json", "key", "list"])
        .run()
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, vec![new]);

    // A key file is not a passphrase: passwd refuses and changes nothing.
    let kf = env.path("k.key");
    env.coffer()
        .env("COFFER_PASSWORD", "brand new")
        .args(["key", "add", "--new-key-file"])
        .arg(&kf)
        .run()
        .ok();
    let r = with_key_file(&env, &kf)
        .args(["key", "passwd", "--new-password-file"])
        .arg(&pw)
        .run()
        .expect_code(1);
    assert!(r.stderr.contains("key file"), "{}", r.stderr);
    with_key_file(&env, &kf).arg("snapshots").run().ok();
}

#[test]
fn export_writes_a_recovery_key_that_needs_no_password() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("f.txt", b"recover me\n");
    env.backup_json(&[&t.root], &[]);
    let rec = env.path("recovery.key");
    let r = env
        .coffer()
        .args(["key", "export", "--file"])
        .arg(&rec)
        .run()
        .ok();
    assert!(r.stdout.contains("recovery"), "{}", r.stdout);
    assert_eq!(mode(&rec), 0o600);
    let text = fs::read_to_string(&rec).unwrap();
    assert!(text.starts_with("coffer key file v1\n"), "{text}");
    // No password of any kind: only the file.
    let target = env.path("out");
    with_key_file(&env, &rec)
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run()
        .ok();
    assert_eq!(
        fs::read(restored(&target, &t.path("f.txt"))).unwrap(),
        b"recover me\n"
    );
    // Never overwritten.
    let r = env
        .coffer()
        .args(["key", "export", "--file"])
        .arg(&rec)
        .run()
        .expect_code(1);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert_eq!(fs::read_to_string(&rec).unwrap(), text);
    // Revoking it: `key remove` with its id.
    let id = keys_json(&env)
        .iter()
        .find(|k| k["kind"] == "key file")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.coffer().args(["key", "remove", &id]).run().ok();
    let r = with_key_file(&env, &rec)
        .arg("snapshots")
        .run()
        .expect_code(1);
    assert!(r.stderr.contains("does not open"), "{}", r.stderr);
}

#[test]
fn a_key_file_others_can_read_is_refused_by_every_command() {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("f.txt", b"x\n");
    env.backup_json(&[&t.root], &[]);
    let kf = env.path("k.key");
    env.coffer()
        .args(["key", "add", "--new-key-file"])
        .arg(&kf)
        .run()
        .ok();
    with_key_file(&env, &kf).arg("snapshots").run().ok();
    let f = t.path("f.txt");
    let rel = f.to_str().unwrap().to_string();
    let commands: Vec<Vec<String>> = vec![
        vec!["snapshots".into()],
        vec!["ls".into(), "latest".into()],
        vec![
            "restore".into(),
            "latest".into(),
            "--target".into(),
            env.path("out").to_str().unwrap().into(),
        ],
        vec!["dump".into(), "latest".into(), rel],
        vec!["cat".into(), "config".into()],
        vec!["backup".into(), t.root.to_str().unwrap().into()],
        vec!["key".into(), "list".into()],
        vec![
            "key".into(),
            "export".into(),
            "--file".into(),
            "x.key".into(),
        ],
    ];
    for m in [0o640, 0o604, 0o644, 0o660] {
        fs::set_permissions(&kf, fs::Permissions::from_mode(m)).unwrap();
        for c in &commands {
            let r = with_key_file(&env, &kf).args(c).run().expect_code(1);
            assert!(
                r.stderr.contains("readable by other users") && r.stderr.contains("chmod 600"),
                "mode {m:o}, {c:?}:\n{}",
                r.stderr
            );
            // The same through the environment variable.
            let r = env
                .coffer()
                .no_password()
                .env("COFFER_KEY_FILE", &kf)
                .args(c)
                .run()
                .expect_code(1);
            assert!(
                r.stderr.contains("readable by other users"),
                "COFFER_KEY_FILE, mode {m:o}, {c:?}:\n{}",
                r.stderr
            );
        }
    }
    assert!(!env.path("x.key").exists());
    fs::set_permissions(&kf, fs::Permissions::from_mode(0o400)).unwrap();
    with_key_file(&env, &kf).arg("snapshots").run().ok();
}

/// doc/reliability.md A8: `key passwd`, `key add` and `key remove` killed
/// (abort, no unwinding) before or after each key write or deletion: the
/// old key, or the new one, always opens the repository, and nothing is
/// left that claims to work but does not.
#[test]
fn key_changes_killed_at_each_write_leave_a_working_key() {
    const ABORTED: i32 = 128 + 6;
    let opens = |env: &Env, pw: &str| {
        env.coffer()
            .env("COFFER_PASSWORD", pw)
            .arg("snapshots")
            .run()
            .code
            == 0
    };
    // passwd: (failpoint, old key opens, new key opens, slots left)
    for (fp, old, new, slots) in [
        ("before-put:key:1", true, false, 1),
        ("after-put:key:1", true, true, 2),
        ("before-delete:key:1", true, true, 2),
    ] {
        let env = Env::new();
        env.init();
        let pw = write_secret(&env, "new.pw", "after the crash\n");
        let r = env
            .coffer()
            .env("COFFER_FAILPOINT", fp)
            .args(["key", "passwd", "--new-password-file"])
            .arg(&pw)
            .run_any();
        assert_eq!(r.code, ABORTED, "passwd did not die at {fp}: {}", r.stderr);
        assert_eq!(opens(&env, PASSWORD), old, "{fp}: old password");
        assert_eq!(opens(&env, "after the crash"), new, "{fp}: new password");
        assert_eq!(env.objects("keys").len(), slots, "{fp}");
        assert!(
            !env.objects("keys")
                .iter()
                .any(|p| file_name(p).contains(".tmp-")),
            "{fp}: temporary key object left"
        );
        // The interrupted change can simply be run again.
        env.coffer()
            .args(["key", "passwd", "--new-password-file"])
            .arg(&pw)
            .run()
            .ok();
        assert!(opens(&env, "after the crash"), "{fp}: rerun");
    }

    // key remove killed before its deletion: the key is still there.
    let env = Env::new();
    env.init();
    let pw = write_secret(&env, "new.pw", "second\n");
    env.coffer()
        .args(["key", "add", "--new-password-file"])
        .arg(&pw)
        .run()
        .ok();
    let r = env
        .coffer()
        .env("COFFER_PASSWORD", "second")
        .env("COFFER_FAILPOINT", "before-delete:key:1")
        .args(["key", "remove"])
        .arg(
            &keys_json(&env)
                .iter()
                .find(|k| k["current"] == true)
                .unwrap()["id"]
                .as_str()
                .unwrap()[..12],
        )
        .run_any();
    assert_eq!(r.code, ABORTED, "{}", r.stderr);
    assert!(opens(&env, PASSWORD) && opens(&env, "second"));
}

// ---------------------------------------------------------------------------
// Where `init` creates a repository, and what is not one (issue 18.17)

/// A directory laid out as restic lays out a repository: a `config` of
/// ciphertext, JSON key files under `keys/`, and `data/`.
fn restic_like(dir: &Path) {
    for d in ["data/00", "index", "keys", "locks", "snapshots"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let mut rng = Rng::new(18);
    fs::write(dir.join("config"), rng.bytes(155)).unwrap();
    fs::write(
        dir.join("keys").join("3a".repeat(32)),
        r#"{"created":"2026-11-01T10:00:00.123Z","username":"me","hostname":"box","kdf":"scrypt","N":32768,"r":8,"p":7,"salt":"c2FsdA==","data":"ZGF0YQ=="}"#,
    )
    .unwrap();
}

#[test]
fn a_restic_repository_is_named_not_called_corrupt() {
    let env = Env::new();
    restic_like(&env.repo);
    for cmd in [
        &["snapshots"][..],
        &["restore", "latest", "--target", "t"],
        &["key", "list"],
    ] {
        let r = env.coffer().args(cmd).run().expect_code(1);
        assert!(
            r.stderr.contains("is not a coffer repository")
                && r.stderr.contains("looks like a restic repository"),
            "{cmd:?}:\n{}",
            r.stderr
        );
        assert!(!r.stderr.contains("corrupt"), "{cmd:?}:\n{}", r.stderr);
    }
    let r = env.coffer().arg("init").run().expect_code(1);
    assert!(
        r.stderr.contains("looks like a restic repository"),
        "{}",
        r.stderr
    );
    assert!(!env.repo.join("packs").exists(), "init wrote into it");
}

#[test]
fn init_refuses_a_non_empty_directory_and_takes_an_empty_one() {
    let env = Env::new();
    fs::create_dir_all(env.repo.join("photos")).unwrap();
    fs::write(env.repo.join("notes.txt"), b"mine\n").unwrap();
    let r = env.coffer().arg("init").run().expect_code(1);
    assert!(
        r.stderr.contains(&env.repo.display().to_string())
            && r.stderr.contains("is not empty")
            && r.stderr.contains("notes.txt"),
        "{}",
        r.stderr
    );
    let mut left: Vec<_> = fs::read_dir(&env.repo)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["notes.txt", "photos"], "init wrote into it");

    // An existing empty directory is where a repository may go.
    fs::remove_dir_all(&env.repo).unwrap();
    fs::create_dir(&env.repo).unwrap();
    let r = env.coffer().arg("init").run().ok();
    // With one key slot, one damaged byte would lock everyone out: init
    // says so, and how to make the second key.
    assert!(r.stderr.contains("coffer key export"), "{}", r.stderr);
    env.coffer().arg("snapshots").run().ok();
}
