//! Tampering with every object kind (issue #7, doc/reliability.md F1-F3, F8, F9,
//! H-3, H-6, H-7): for config, key slots, packs, index segments and
//! snapshots, a flipped byte, a truncation, appended bytes and two objects
//! of the same kind swapped (contents exchanged, names kept) are each
//! detected, reported with the object's name, exit 1, no panic; and a
//! restore never leaves a file under its final name whose bytes differ from
//! the snapshot. Plus: unknown and downgraded format versions, truncated key
//! slots and wrong key files give clear errors.
//!
//! The objects that say how to open the repository are kept so that one
//! damaged byte locks no one out (repo-format/README.md, "What survives one
//! damaged byte"): a damaged `config` or `config.copy`, or a slot's damaged
//! metadata, is a warning naming it (exit 3) and the restore is byte-exact.
//!
//! Key slots are the one kind where "named" has a limit: a flip inside the
//! salt, the KDF parameters or the wrapped key is, by design, the same
//! to the reader as a wrong password (the AEAD cannot tell which input was
//! wrong), so it is reported as "does not open", the other slots still open
//! the repository, and `key list` through another key names every slot
//! whose structure or metadata is damaged.

use crate::support::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

const MIB: usize = 1024 * 1024;

/// A repository with two snapshots over small packs: `s1` holds `a.bin`,
/// `small.txt` and `dir/c.txt`; `s2` adds `b.bin`, stored in packs of its own.
struct Fixture {
    env: Env,
    tree: TreeBuilder,
    s1: String,
    s2: String,
    /// Packs written by the first and by the second backup.
    packs1: Vec<PathBuf>,
    packs2: Vec<PathBuf>,
    targets: std::cell::Cell<u32>,
}

fn fixture() -> Fixture {
    let env = Env::new();
    env.init_with(&["--pack-size", "1M"]);
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("a.bin", 2 * MIB, 71);
    t.file("small.txt", b"a small file\n");
    t.file("dir/c.txt", b"c\n");
    let s1 = env.backup_json(&[&t.root], &[])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let packs1 = env.objects("packs");
    t.random_file("b.bin", 2 * MIB, 72);
    let s2 = env.backup_json(&[&t.root], &[])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let old: BTreeSet<PathBuf> = packs1.iter().cloned().collect();
    let mut packs2: Vec<PathBuf> = env
        .objects("packs")
        .into_iter()
        .filter(|p| !old.contains(p))
        .collect();
    // Largest first: the data packs that hold b.bin.
    packs2.sort_by_key(|p| std::cmp::Reverse(fs::metadata(p).unwrap().len()));
    let mut packs1 = packs1;
    packs1.sort_by_key(|p| std::cmp::Reverse(fs::metadata(p).unwrap().len()));
    assert!(packs1.len() >= 2 && packs2.len() >= 2, "too few packs");
    Fixture {
        env,
        tree: t,
        s1,
        s2,
        packs1,
        packs2,
        targets: std::cell::Cell::new(0),
    }
}

impl Fixture {
    fn fresh_target(&self) -> PathBuf {
        let n = self.targets.get() + 1;
        self.targets.set(n);
        self.env.path(format!("restore-{n}"))
    }

    /// Forget the local index cache, so the next command reads the segments.
    fn drop_cache(&self) {
        let _ = fs::remove_dir_all(&self.env.cache);
    }

    /// Restore `snap` into a new directory; whatever the outcome, every
    /// regular file there must equal its source byte for byte, and no
    /// temporary file may be left.
    fn restore(&self, snap: &str) -> Run {
        let target = self.fresh_target();
        let r = self
            .env
            .coffer()
            .args(["restore", snap, "--target"])
            .arg(&target)
            .run();
        assert_restored_files_are_right(&target, &self.tree.root);
        assert_no_temp_files(&target);
        r
    }
}

/// Every regular file under `target` holds exactly the bytes of the file it
/// restores (under `target/<absolute source path>`).
fn assert_restored_files_are_right(target: &Path, source_root: &Path) {
    let base = restored(target, source_root);
    let mut stack = vec![base.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with(".coffer-tmp-") {
                    continue; // reported by assert_no_temp_files
                }
                let rel = p.strip_prefix(&base).unwrap();
                let src = source_root.join(rel);
                assert!(
                    fs::read(&src).ok() == Some(fs::read(&p).unwrap()),
                    "{} was restored with bytes that differ from {}",
                    p.display(),
                    src.display()
                );
            }
        }
    }
}

/// Exit 1 and a message naming `name`.
fn assert_fails_naming(r: &Run, name: &str, what: &str) {
    assert_eq!(
        r.code, 1,
        "{what}: expected exit 1\nstdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
    assert!(
        r.stderr.contains(name),
        "{what}: stderr does not name {name}:\n{}",
        r.stderr
    );
}

/// The ways one object is damaged in place: (description, new bytes).
fn damages(orig: &[u8], flips: &[usize]) -> Vec<(String, Vec<u8>)> {
    let n = orig.len();
    let mut out = Vec::new();
    for &at in flips {
        if at < n {
            let mut b = orig.to_vec();
            b[at] ^= 0xff;
            out.push((format!("byte {at} of {n} flipped"), b));
        }
    }
    let mut cuts: Vec<usize> = vec![0, 1, n / 2, n.saturating_sub(4), n - 1];
    cuts.sort();
    cuts.dedup();
    for c in cuts {
        out.push((format!("truncated to {c} of {n} bytes"), orig[..c].to_vec()));
    }
    for extra in [&[0u8][..], &[0xa5; 4][..], &[7u8; 100][..]] {
        let mut b = orig.to_vec();
        b.extend_from_slice(extra);
        out.push((format!("{} bytes appended", extra.len()), b));
    }
    out
}

fn swap_contents(a: &Path, b: &Path) {
    let (x, y) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    fs::write(a, y).unwrap();
    fs::write(b, x).unwrap();
}

// ---------------------------------------------------------------------------
// config

// What survives one damaged byte (repo-format/README.md, "What survives
// one damaged byte"): each row of that table is flipped here and what it
// promises is checked.

/// A repository with one snapshot of a few small files, opened by
/// PASSWORD through its only key slot.
fn small_repo() -> (Env, TreeBuilder) {
    let env = Env::new();
    env.init();
    let t = TreeBuilder::new(env.path("src"));
    t.file("a.txt", b"alpha\n");
    t.random_file("dir/b.bin", 300_000, 5);
    env.backup_json(&[&t.root], &[]);
    (env, t)
}

/// `restore latest` exits `code` and restores every file byte for byte.
fn assert_restores_latest(env: &Env, t: &TreeBuilder, code: i32, what: &str) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let target = env.path(format!("survive-{n}"));
    let r = env
        .coffer()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .run();
    assert_eq!(r.code, code, "{what}: restore exit code\n{}", r.stderr);
    compare_trees(&t.root, &restored(&target, &t.root));
}

/// Exit `code`, and a warning or error on stderr that contains `needle`.
fn assert_says(r: &Run, code: i32, needle: &str, what: &str) {
    assert_eq!(
        r.code, code,
        "{what}: expected exit {code}\nstdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
    assert!(
        r.stderr.contains(needle),
        "{what}: stderr does not say {needle:?}:\n{}",
        r.stderr
    );
}

/// Magic, version, repository id, nonce, ciphertext (the chunker
/// parameters) and tag of a 112-byte config.
const CONFIG_FLIPS: [usize; 14] = [0, 7, 8, 11, 12, 30, 43, 44, 67, 68, 80, 95, 96, 111];

#[test]
fn one_damaged_byte_in_config_or_its_copy_is_a_warning_and_repair_config_mends_it() {
    let (env, t) = small_repo();
    let cfg = env.repo.join("config");
    let copy = env.repo.join("config.copy");
    let orig = fs::read(&cfg).unwrap();
    assert_eq!(orig.len(), 112, "a version-1 config is 112 bytes");
    assert_eq!(
        fs::read(&copy).unwrap(),
        orig,
        "init writes config.copy with the config's bytes"
    );
    for obj in [&cfg, &copy] {
        let name = file_name(obj);
        let mut damaged: Vec<(String, Vec<u8>)> = CONFIG_FLIPS
            .iter()
            .map(|&at| {
                let mut b = orig.clone();
                b[at] ^= 0xff;
                (format!("{name} byte {at} flipped"), b)
            })
            .collect();
        damaged.push((format!("{name} truncated to 60 bytes"), orig[..60].to_vec()));
        damaged.push((
            format!("{name} with 4 bytes appended"),
            [&orig[..], &[7; 4]].concat(),
        ));
        for (what, bytes) in damaged {
            fs::write(obj, &bytes).unwrap();
            let warning = format!("repository object {name} is damaged");
            let r = env.coffer().args(["--json", "snapshots"]).run();
            assert_says(&r, 3, &warning, &what);
            assert!(!r.json().as_array().unwrap().is_empty(), "{what}");
            assert_restores_latest(&env, &t, 3, &what);
            // Writers take the parameters from the intact copy.
            if obj == &cfg {
                let r = env.coffer().arg("backup").arg(&t.root).run();
                assert_says(&r, 3, &warning, &format!("{what}: backup"));
            }
            env.coffer().args(["repair", "config"]).run().ok();
            assert_eq!(fs::read(obj).unwrap(), orig, "{what}: repair config");
            env.coffer().arg("snapshots").run().ok();
        }
    }
    // A deleted config: the copy opens the repository and puts it back.
    fs::remove_file(&cfg).unwrap();
    assert_says(
        &env.coffer().arg("snapshots").run(),
        3,
        "config is damaged (it is missing)",
        "config deleted",
    );
    env.coffer().args(["repair", "config"]).run().ok();
    assert_eq!(fs::read(&cfg).unwrap(), orig);
    env.coffer().arg("snapshots").run().ok();

    // Both replaced by another repository's: its id is in no slot's
    // associated data here, so nothing opens.
    let other = Env::new();
    other.init();
    for n in ["config", "config.copy"] {
        fs::copy(other.repo.join(n), env.repo.join(n)).unwrap();
    }
    let r = env.coffer().arg("snapshots").run();
    assert_says(
        &r,
        1,
        "does not open",
        "config and copy of another repository",
    );
}

#[test]
fn a_damaged_config_without_a_copy_is_read_only_and_writers_name_it() {
    let (env, t) = small_repo();
    let key_file = env.path("recovery.key");
    env.coffer()
        .args(["key", "export", "--file"])
        .arg(&key_file)
        .run()
        .ok();
    let with_key_file = || env.coffer().no_password().arg("--key-file").arg(&key_file);
    // A repository made before config.copy existed.
    fs::remove_file(env.repo.join("config.copy")).unwrap();
    let cfg = env.repo.join("config");
    let orig = fs::read(&cfg).unwrap();
    let tar = env.path("in.tar");
    fs::write(&tar, [0u8; 1024]).unwrap();
    for &at in &CONFIG_FLIPS {
        let what = format!("config byte {at} flipped, no copy");
        let mut b = orig.clone();
        b[at] ^= 0xff;
        fs::write(&cfg, &b).unwrap();
        match at {
            // Magic and version: nothing is known to be coffer's format
            // version 1, so nothing is read.
            0..=7 => assert_says(
                &env.coffer().arg("snapshots").run(),
                1,
                "repository object config is corrupt",
                &what,
            ),
            8..=11 => assert_says(
                &env.coffer().arg("snapshots").run(),
                1,
                "format version",
                &what,
            ),
            // The repository id: in every slot's associated data, so a
            // passphrase cannot find it; a key file names it.
            12..=43 => {
                assert_says(
                    &env.coffer().arg("snapshots").run(),
                    1,
                    "does not open",
                    &what,
                );
                assert_says(
                    &with_key_file().arg("snapshots").run(),
                    3,
                    "its id was altered",
                    &what,
                );
                assert_says(
                    &with_key_file().arg("backup").arg(&t.root).run(),
                    1,
                    "repository object config is damaged",
                    &what,
                );
            }
            // The sealed body: read-only.
            _ => {
                let damaged = "repository object config is damaged";
                for cmd in [
                    &["snapshots"][..],
                    &["ls", "latest"],
                    &["cat", "config"],
                    &["key", "list"],
                ] {
                    let r = env.coffer().args(cmd).run();
                    assert_says(&r, 3, damaged, &format!("{what}: {cmd:?}"));
                }
                let r = env
                    .coffer()
                    .arg("dump")
                    .arg("latest")
                    .arg(t.root.join("a.txt"))
                    .run();
                assert_says(&r, 3, damaged, &format!("{what}: dump"));
                assert_eq!(r.stdout, "alpha\n", "{what}: dump");
                assert_restores_latest(&env, &t, 3, &what);
                let r = env.coffer().arg("check").run().expect_code(1);
                assert!(r.stdout.contains(damaged), "{what}: check\n{}", r.stdout);
                // Writers refuse, naming the config and the way out.
                for cmd in [
                    vec!["backup".to_string(), t.root.display().to_string()],
                    vec![
                        "import-tar".into(),
                        tar.display().to_string(),
                        "--name".into(),
                        "x".into(),
                    ],
                ] {
                    let r = env.coffer().args(&cmd).run();
                    assert_says(&r, 1, "coffer copy --repo NEW", &format!("{what}: {cmd:?}"));
                    assert!(r.stderr.contains(damaged), "{what}: {}", r.stderr);
                }
                assert_says(
                    &env.coffer().args(["repair", "config"]).run(),
                    1,
                    "has no intact copy",
                    &what,
                );
            }
        }
    }
    // `copy` from it works: into a new repository, restored byte for byte.
    let mut b = orig.clone();
    b[80] ^= 0xff;
    fs::write(&cfg, &b).unwrap();
    let dst = Env::new();
    dst.init();
    let r = dst
        .coffer()
        .arg("copy")
        .arg("--from-repo")
        .arg(&env.repo)
        .env("COFFER_FROM_PASSWORD", PASSWORD)
        .run()
        // Damage in the source is named and makes the copy exit 3, as
        // every command that read past a damaged object does.
        .expect_code(3);
    assert!(r.stderr.contains("config is damaged"), "{}", r.stderr);
    assert_restores_latest(
        &dst,
        &t,
        0,
        "copied from a repository with a damaged config",
    );

    // An intact old repository gets its copy from `repair config`.
    fs::write(&cfg, &orig).unwrap();
    let r = env.coffer().args(["repair", "config"]).run().ok();
    assert!(r.stdout.contains("rewrote config.copy"), "{}", r.stdout);
    assert_eq!(fs::read(env.repo.join("config.copy")).unwrap(), orig);
}

#[test]
fn unknown_or_downgraded_format_version_is_refused_before_any_key_is_tried() {
    let env = Env::new();
    env.init();
    let cfg = env.repo.join("config");
    let copy = env.repo.join("config.copy");
    let orig = fs::read(&cfg).unwrap();
    for v in [0u32, 2, 3, 0x0100_0000, u32::MAX] {
        let mut b = orig.clone();
        b[8..12].copy_from_slice(&v.to_le_bytes());
        // A repository of another version has both objects say so.
        fs::write(&cfg, &b).unwrap();
        fs::write(&copy, &b).unwrap();
        for password in [PASSWORD, "not the password"] {
            let r = env
                .coffer()
                .env("COFFER_PASSWORD", password)
                .arg("snapshots")
                .run()
                .expect_code(1);
            assert!(
                r.stderr.contains(&format!("format version {v} ")) && r.stderr.contains("1"),
                "version {v}: the error does not name the version found and the one supported:\n{}",
                r.stderr
            );
            assert!(
                !r.stderr.contains("does not open"),
                "version {v}: a key was tried before the version was checked:\n{}",
                r.stderr
            );
        }
        if v < 1 {
            let r = env.coffer().arg("snapshots").run();
            assert!(
                !r.stderr.contains("newer coffer"),
                "a downgraded version must not send the user to a newer coffer:\n{}",
                r.stderr
            );
        }
        // Only one of them: the other is version 1, so that one is damaged.
        fs::write(&copy, &orig).unwrap();
        let r = env.coffer().arg("snapshots").run().expect_code(3);
        assert!(
            r.stderr.contains(&format!("format version {v} ")),
            "{}",
            r.stderr
        );
    }
    fs::write(&cfg, &orig).unwrap();
    env.coffer().arg("snapshots").run().ok();
}

// ---------------------------------------------------------------------------
// key slots

struct Keys {
    /// The slot opened by PASSWORD, one opened by SECOND, and a key file's.
    pw: PathBuf,
    second: PathBuf,
    key_file: PathBuf,
}

const SECOND: &str = "a second passphrase";

fn key_ids(env: &Env, key_file: &Path) -> Vec<(String, String, Option<String>)> {
    let r = env
        .coffer()
        .no_password()
        .arg("--key-file")
        .arg(key_file)
        .args(["--json", "key", "list"])
        .run()
        .ok();
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap().to_string(),
                k["kind"].as_str().unwrap().to_string(),
                k["error"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn three_keys(env: &Env) -> Keys {
    let first: BTreeSet<PathBuf> = env.objects("keys").into_iter().collect();
    assert_eq!(first.len(), 1);
    let pwfile = env.path("second.pw");
    fs::write(&pwfile, format!("{SECOND}\n")).unwrap();
    env.coffer()
        .args(["key", "add", "--new-password-file"])
        .arg(&pwfile)
        .run()
        .ok();
    let two: BTreeSet<PathBuf> = env.objects("keys").into_iter().collect();
    let key_file = env.path("other.key");
    env.coffer()
        .args(["key", "add", "--new-key-file"])
        .arg(&key_file)
        .run()
        .ok();
    let pw = first.iter().next().unwrap().clone();
    let second = two.difference(&first).next().unwrap().clone();
    Keys {
        pw,
        second,
        key_file,
    }
}

#[test]
fn damaged_key_slot_is_named_and_other_keys_still_open() {
    let f = fixture();
    let env = &f.env;
    let k = three_keys(env);
    let name = file_name(&k.pw);
    let orig = fs::read(&k.pw).unwrap();
    // Layout: magic 0..8, kind 8, KDF 9..21, salt 21..37, wrapped_len
    // 37..41, wrapped 41..113, meta_len 113..117, meta 117..
    // Bytes 16 and 20 are the high bytes of the passes and lanes counts:
    // flipped, they are out of bounds (and `8 * lanes` once overflowed).
    let structural = [0usize, 7, 8, 16, 20, 37, 38, 113, 114];
    let opaque = [9usize, 13, 17, 21, 36, 41, 64, 112];
    let meta = [117usize, 140, orig.len() - 1];
    let flips: Vec<usize> = structural
        .iter()
        .chain(&opaque)
        .chain(&meta)
        .copied()
        .collect();
    for (what, bytes) in damages(&orig, &flips) {
        fs::write(&k.pw, &bytes).unwrap();
        let r = env.coffer().arg("snapshots").run();
        let flipped_at = what
            .strip_prefix("byte ")
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse::<usize>().ok());
        let opaque_flip = flipped_at.is_some_and(|at| opaque.contains(&at));
        // A wrapped key that opens is the master key: damaged metadata
        // beside it is a warning (exit 3), naming the slot.
        let meta_flip = flipped_at.is_some_and(|at| meta.contains(&at));
        let code = if meta_flip { 3 } else { 1 };
        assert_eq!(
            r.code, code,
            "key slot {what}: expected exit {code}\n{}",
            r.stderr
        );
        if opaque_flip {
            assert!(
                r.stderr.contains("does not open"),
                "key slot {what}: expected `does not open`:\n{}",
                r.stderr
            );
        } else {
            assert!(
                r.stderr.contains(&format!("keys/{name}")),
                "key slot {what}: the error does not name keys/{name}:\n{}",
                r.stderr
            );
        }
        // Every other key still opens the repository (H-3) ...
        env.coffer()
            .env("COFFER_PASSWORD", SECOND)
            .arg("snapshots")
            .run()
            .ok();
        // ... and `key list` through one of them names the damaged slot
        // whenever its structure or metadata is what was damaged.
        let listed = key_ids(env, &k.key_file);
        let row = listed.iter().find(|(id, _, _)| *id == name);
        if !opaque_flip {
            assert!(
                matches!(row, Some((_, _, Some(_)))),
                "key slot {what}: `key list` does not report it as damaged: {listed:?}"
            );
        }
    }
    fs::write(&k.pw, &orig).unwrap();

    // Two slots swapped: neither opens (each is bound to its own name), the
    // key file still does, and `key list` names both.
    swap_contents(&k.pw, &k.second);
    for pw in [PASSWORD, SECOND] {
        let r = env
            .coffer()
            .env("COFFER_PASSWORD", pw)
            .arg("snapshots")
            .run()
            .expect_code(1);
        assert!(r.stderr.contains("does not open"), "{}", r.stderr);
    }
    let listed = key_ids(env, &k.key_file);
    for slot in [&k.pw, &k.second] {
        let id = file_name(slot);
        assert!(
            listed
                .iter()
                .any(|(i, _, e)| *i == id && e.as_deref().is_some_and(|e| !e.is_empty())),
            "swapped slot {id} not reported by `key list`: {listed:?}"
        );
    }
    let r = env
        .coffer()
        .no_password()
        .arg("--key-file")
        .arg(&k.key_file)
        .arg("key")
        .arg("list")
        .run()
        .ok();
    assert!(r.stdout.contains(&file_name(&k.pw)[..8]), "{}", r.stdout);
    swap_contents(&k.pw, &k.second);
    env.coffer().arg("snapshots").run().ok();
}

#[test]
fn the_only_key_slot_with_damaged_metadata_still_opens_and_is_named() {
    let (env, t) = small_repo();
    let slot = env.objects("keys").remove(0);
    let name = file_name(&slot);
    let orig = fs::read(&slot).unwrap();
    // The sealed metadata from offset 117: nonce, ciphertext, tag.
    for at in [117, 150, orig.len() - 1] {
        let what = format!("slot metadata byte {at} flipped");
        flip_byte(&slot, at as u64);
        let r = env.coffer().arg("snapshots").run();
        assert_says(&r, 3, &format!("keys/{name}"), &what);
        assert!(
            r.stderr.contains("key passwd"),
            "{what}: no repair named\n{}",
            r.stderr
        );
        assert_restores_latest(&env, &t, 3, &what);
        let r = env
            .coffer()
            .args(["--json", "key", "list"])
            .run()
            .expect_code(3);
        assert!(
            r.json()[0]["error"].is_string(),
            "{what}: key list does not show the damage: {}",
            r.stdout
        );
        fs::write(&slot, &orig).unwrap();
    }
    // The repair: replace the slot while it still opens.
    flip_byte(&slot, 150);
    let pw = env.path("new.pw");
    fs::write(&pw, "a new passphrase\n").unwrap();
    env.coffer()
        .args(["key", "passwd", "--new-password-file"])
        .arg(&pw)
        .run()
        .ok();
    assert!(!slot.exists(), "key passwd left the damaged slot");
    env.coffer()
        .env("COFFER_PASSWORD", "a new passphrase")
        .arg("snapshots")
        .run()
        .ok();
    // The wrapped key itself has no second copy (the table says why):
    // damaged, the only slot opens for no one.
    let slot = env.objects("keys").remove(0);
    flip_byte(&slot, 64);
    let r = env
        .coffer()
        .env("COFFER_PASSWORD", "a new passphrase")
        .arg("snapshots")
        .run();
    assert_says(&r, 1, "does not open", "wrapped key flipped");
}

#[test]
fn truncated_key_slot_is_a_clear_error() {
    let env = Env::new();
    env.init();
    let slot = env.objects("keys").remove(0);
    let orig = fs::read(&slot).unwrap();
    for n in [0, 8, 40, 100, orig.len() - 1] {
        fs::write(&slot, &orig[..n]).unwrap();
        let r = env.coffer().arg("snapshots").run().expect_code(1);
        assert!(
            r.stderr.contains(&format!("keys/{}", file_name(&slot))),
            "truncated to {n}: slot not named:\n{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("does not open"),
            "truncated to {n}:\n{}",
            r.stderr
        );
    }
    fs::write(&slot, &orig).unwrap();
    env.coffer().arg("snapshots").run().ok();
}

#[test]
fn wrong_key_files_are_clear_errors() {
    let env = Env::new();
    env.init();
    let kf = env.path("mine.key");
    env.coffer()
        .args(["key", "add", "--new-key-file"])
        .arg(&kf)
        .run()
        .ok();
    let open = |path: &Path| {
        env.coffer()
            .no_password()
            .arg("--key-file")
            .arg(path)
            .arg("snapshots")
            .run()
    };
    open(&kf).ok();

    // A key file of another repository: both repository ids are named.
    let other = Env::new();
    let other_key = other.path("other.key");
    other
        .coffer()
        .no_password()
        .arg("--key-file")
        .arg(&other_key)
        .arg("init")
        .run()
        .ok();
    let r = open(&other_key).expect_code(1);
    let text = fs::read_to_string(&other_key).unwrap();
    let other_id = text
        .lines()
        .find_map(|l| l.strip_prefix("repository "))
        .unwrap();
    assert!(
        r.stderr.contains(&other_id[..8]),
        "the error does not name the key file's repository:\n{}",
        r.stderr
    );

    // The right repository, the wrong secret.
    let mut lines: Vec<String> = fs::read_to_string(&kf)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for l in lines.iter_mut() {
        if l.starts_with("secret ") {
            *l = format!("secret {}", "5a".repeat(32));
        }
    }
    let wrong = env.path("wrong.key");
    fs::write(&wrong, lines.join("\n") + "\n").unwrap();
    set_mode(&wrong, 0o600);
    let r = open(&wrong).expect_code(1);
    assert!(r.stderr.contains("does not open"), "{}", r.stderr);

    // Not a key file at all; a missing one.
    let junk = env.path("junk.key");
    fs::write(&junk, "hello\n").unwrap();
    set_mode(&junk, 0o600);
    let r = open(&junk).expect_code(1);
    assert!(r.stderr.contains("not a coffer key file"), "{}", r.stderr);
    let r = open(&env.path("missing.key")).expect_code(1);
    assert!(r.stderr.contains("missing.key"), "{}", r.stderr);
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------
// packs

#[test]
fn damaged_or_swapped_packs_are_named_and_never_restored_wrong() {
    let f = fixture();
    let victim = f.packs2[0].clone();
    let name = file_name(&victim);
    let orig = fs::read(&victim).unwrap();
    let n = orig.len();
    // Inside the first blob, in the middle, inside the trailer, in the
    // trailer length.
    let flips = [0, 100, n / 2, n - 60, n - 4, n - 1];
    for (what, bytes) in damages(&orig, &flips) {
        fs::write(&victim, &bytes).unwrap();
        // A blob hit fails its file (exit 1); damage only in the trailer
        // leaves every blob authentic, so all files restore and the run
        // ends with exit 3. Either way the pack is named and (checked by
        // `restore`) no file holds wrong bytes.
        let r = f.restore(&f.s2);
        assert!(
            matches!(r.code, 1 | 3) && r.stderr.contains(&name),
            "restore, pack {what}: expected exit 1 or 3 naming {name}\nstdout:\n{}\nstderr:\n{}",
            r.stdout,
            r.stderr
        );
        let r = f.env.coffer().args(["cat", "pack", &name]).run();
        assert_fails_naming(&r, &name, &format!("cat pack, pack {what}"));
        // The first snapshot does not use the pack: still fully restorable.
        if what.contains("flipped") {
            f.restore(&f.s1).ok();
        }
    }
    fs::write(&victim, &orig).unwrap();

    // Two data packs swapped (one from each backup): both are named.
    let other = f.packs1[0].clone();
    swap_contents(&victim, &other);
    let r = f.restore(&f.s2);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&name) || r.stderr.contains(&file_name(&other)),
        "swapped packs not named:\n{}",
        r.stderr
    );
    let r = f.restore(&f.s1);
    assert_fails_naming(&r, &file_name(&other), "restore s1, packs swapped");
    swap_contents(&victim, &other);
    f.restore(&f.s2).ok();
}

// ---------------------------------------------------------------------------
// index segments

#[test]
fn damaged_or_swapped_index_segments_are_named() {
    let f = fixture();
    let segs = f.env.objects("index");
    assert_eq!(segs.len(), 2, "one segment per backup expected");
    for seg in &segs {
        let name = file_name(seg);
        let orig = fs::read(seg).unwrap();
        let n = orig.len();
        for (what, bytes) in damages(&orig, &[0, 30, n / 2, n - 1]) {
            fs::write(seg, &bytes).unwrap();
            f.drop_cache();
            // The second snapshot needs blobs listed by both segments.
            let r = f.restore(&f.s2);
            assert_fails_naming(&r, &name, &format!("restore, index segment {what}"));
        }
        fs::write(seg, &orig).unwrap();
        // With a warm cache filled while the segment was sound, `check`
        // still reads the segment itself and names it.
        f.drop_cache();
        f.env.coffer().arg("check").run().ok();
        fs::write(seg, &orig[..n / 2]).unwrap();
        let r = f.env.coffer().arg("check").run().expect_code(1);
        assert!(
            r.stdout.contains(&name) && r.stdout.contains("repair index"),
            "check with a warm cache does not name the truncated segment:\n{}",
            r.stdout
        );
        fs::write(seg, &orig).unwrap();
    }
    swap_contents(&segs[0], &segs[1]);
    f.drop_cache();
    let r = f.restore(&f.s2);
    assert_fails_naming(&r, &file_name(&segs[0]), "restore, segments swapped");
    assert!(r.stderr.contains(&file_name(&segs[1])), "{}", r.stderr);
    swap_contents(&segs[0], &segs[1]);
    f.drop_cache();
    f.restore(&f.s2).ok();
}

/// A damaged segment a command can do without (the second backup's, for
/// the first snapshot) is named by every command that met it, which still
/// completes and exits 3: each reports the damage from its own outcome.
#[test]
fn a_damaged_segment_is_named_by_each_command_that_met_it() {
    let f = fixture();
    let mut segs = f.env.objects("index");
    segs.sort_by_key(|p| fs::metadata(p).unwrap().modified().unwrap());
    let seg = segs.last().unwrap();
    let name = file_name(seg);
    let orig = fs::read(seg).unwrap();
    fs::write(seg, &orig[..orig.len() / 2]).unwrap();
    let target = f.fresh_target();
    let target = target.to_str().unwrap();
    let archive = f.env.path("s1.tar");
    let archive = archive.to_str().unwrap();
    let s1 = f.s1.as_str();
    for args in [
        vec!["ls", s1],
        vec!["find", "small.txt", "--snapshot", s1],
        vec!["stats", s1],
        vec!["stats", s1, "--mode", "raw-data"],
        vec!["restore", s1, "--target", target],
        vec!["dump", s1, "/"],
        vec!["export-tar", s1, "--output", archive],
    ] {
        f.drop_cache();
        let r = f.env.coffer().args(&args).run();
        assert_eq!(r.code, 3, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(&name) && r.stderr.contains("repair index"),
            "{args:?} does not name the damaged segment:\n{}",
            r.stderr
        );
    }
    fs::write(seg, &orig).unwrap();
}

// ---------------------------------------------------------------------------
// snapshots

#[test]
fn damaged_or_swapped_snapshots_are_named() {
    let f = fixture();
    let env = &f.env;
    let path = env.repo.join("snapshots").join(&f.s2);
    let orig = fs::read(&path).unwrap();
    let n = orig.len();
    for (what, bytes) in damages(&orig, &[0, 24, n / 2, n - 1]) {
        fs::write(&path, &bytes).unwrap();
        let r = f.restore(&f.s2);
        assert_fails_naming(&r, &f.s2, &format!("restore, snapshot {what}"));
        // Listing names the damaged snapshot and does not exit 0.
        let r = env.coffer().arg("snapshots").run();
        assert_ne!(r.code, 0, "snapshots, snapshot {what}: exit 0");
        assert!(
            r.stderr.contains(&f.s2),
            "snapshots, snapshot {what}: not named:\n{}",
            r.stderr
        );
    }
    fs::write(&path, &orig).unwrap();
    let p1 = env.repo.join("snapshots").join(&f.s1);
    swap_contents(&p1, &path);
    for s in [&f.s1, &f.s2] {
        let r = f.restore(s);
        assert_fails_naming(&r, s, "restore, snapshots swapped");
    }
    swap_contents(&p1, &path);
    f.restore(&f.s1).ok();
}
