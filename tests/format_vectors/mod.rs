//! The compatibility promise: the frozen format-v1 repository in
//! `repo-format/vectors/repo-v1` (made once by `tools/make-golden-repo.sh`)
//! must open and restore byte for byte, with metadata, in every later
//! commit. If this test fails, the format changed: bump the format version
//! and add a migration instead of regenerating the vector.

use sha2::{Digest, Sha256};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("repo-format/vectors")
}

fn coffer(cache: &Path, args: &[&str]) -> (i32, String, String) {
    coffer_at(&vectors().join("repo-v1"), cache, args)
}

/// `coffer` on `repo` (the frozen repository or a copy of it), opened with
/// the frozen repository's password.
fn coffer_at(repo: &Path, cache: &Path, args: &[&str]) -> (i32, String, String) {
    let v = vectors();
    let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .env_remove("COFFER_PASSWORD")
        .env_remove("COFFER_REPOSITORY")
        .env_remove("COFFER_KEY_FILE")
        .env_remove("COFFER_PASSWORD_COMMAND")
        .env_remove("COFFER_PASSWORD_FILE")
        .arg("--repo")
        .arg(repo)
        .arg("--password-file")
        .arg(v.join("repo-v1.password"))
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .expect("run coffer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Row {
    rel: Vec<u8>,
    kind: String,
    mode: u32,
    size: u64,
    mtime_ns: i64,
    extra: String,
}

fn manifest() -> (String, Vec<Row>) {
    let text = std::fs::read_to_string(vectors().join("repo-v1.manifest")).expect("manifest");
    let mut source = String::new();
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(' ').collect();
        if f[0] == "source" {
            source = f[1].to_string();
            continue;
        }
        rows.push(Row {
            rel: hex::decode(f[0]).expect("hex path"),
            kind: f[1].to_string(),
            mode: u32::from_str_radix(f[2], 8).expect("mode"),
            size: f[3].parse().expect("size"),
            mtime_ns: f[4].parse().expect("mtime"),
            extra: f[5].to_string(),
        });
    }
    (source, rows)
}

#[test]
fn frozen_v1_repository_restores_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let target = tmp.path().join("target");
    let (code, out, err) = coffer(&cache, &["snapshots", "--json"]);
    assert_eq!(code, 0, "{err}");
    let snaps: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "7ecd17f5105af0262638fd26fb28c9e8ff5944702fe76babd234df5585945cfd",
            "34f900fc7238768033ccdbc2dcb36530fa5ac40a18d7636145d6dd069b5bd5ef"
        ]
    );
    assert_eq!(snaps[1]["hostname"], "vector-host");
    assert_eq!(snaps[1]["tags"][0], "v1");

    let (code, _, err) = coffer(
        &cache,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert_matches_manifest(&target);
}

/// `target` holds the latest snapshot's files exactly as the manifest
/// lists them: bytes, kinds, modes, times and the hardlink.
fn assert_matches_manifest(target: &Path) {
    let (source, rows) = manifest();
    let root = target.join(source.trim_start_matches('/'));
    let mut seen = 0;
    for r in &rows {
        let p = root.join(std::ffi::OsStr::from_bytes(&r.rel));
        let md = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let what = p.display().to_string();
        match r.kind.as_str() {
            "file" => {
                assert!(md.is_file(), "{what}");
                let data = std::fs::read(&p).unwrap();
                assert_eq!(data.len() as u64, r.size, "{what}");
                assert_eq!(hex::encode(Sha256::digest(&data)), r.extra, "{what}");
            }
            "dir" => assert!(md.is_dir(), "{what}"),
            "symlink" => {
                assert!(md.file_type().is_symlink(), "{what}");
                let t = std::fs::read_link(&p).unwrap();
                assert_eq!(hex::encode(t.as_os_str().as_bytes()), r.extra, "{what}");
            }
            k => panic!("unknown kind {k}"),
        }
        if r.kind != "symlink" {
            assert_eq!(md.mode() & 0o7777, r.mode, "{what} mode");
        }
        assert_eq!(
            md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            r.mtime_ns,
            "{what} mtime"
        );
        seen += 1;
    }
    assert_eq!(seen, 9);
    // The two names of the hardlinked file are one inode again.
    let a = std::fs::metadata(root.join("docs/hello.txt")).unwrap();
    let b = std::fs::metadata(root.join("docs/hello-hardlink.txt")).unwrap();
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn frozen_v1_first_snapshot_and_wrong_password() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let target = tmp.path().join("t");
    let (code, _, err) = coffer(
        &cache,
        &["restore", "7ecd17f5", "--target", target.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let (source, _) = manifest();
    let f = target
        .join(source.trim_start_matches('/'))
        .join("docs/empty-file");
    assert_eq!(
        std::fs::read(&f).unwrap(),
        b"",
        "the first snapshot has the file empty"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .env("COFFER_PASSWORD", "not the password")
        .env_remove("COFFER_PASSWORD_FILE")
        .arg("--repo")
        .arg(vectors().join("repo-v1"))
        .arg("--cache-dir")
        .arg(&cache)
        .arg("snapshots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not open"));
}

/// The frozen repository predates `config.copy`: with a damaged config
/// body it still restores byte for byte (a reader needs none of the body),
/// and `repair config` gives an intact copy of it its `config.copy`.
#[test]
fn frozen_v1_repository_without_config_copy_reads_with_a_damaged_config() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo-v1");
    copy_tree(&vectors().join("repo-v1"), &repo);
    assert!(!repo.join("config.copy").exists());
    // Git keeps no empty directory; `repair` takes a lock there.
    std::fs::create_dir_all(repo.join("locks")).unwrap();
    let cache = tmp.path().join("cache");
    let target = tmp.path().join("target");
    let config = repo.join("config");
    let orig = std::fs::read(&config).unwrap();
    let mut damaged = orig.clone();
    damaged[80] ^= 0xff;
    std::fs::write(&config, &damaged).unwrap();
    let (code, _, err) = coffer_at(
        &repo,
        &cache,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("repository object config is damaged"), "{err}");
    assert_matches_manifest(&target);

    std::fs::write(&config, &orig).unwrap();
    let (code, _, err) = coffer_at(&repo, &cache, &["repair", "config"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(repo.join("config.copy")).unwrap(), orig);
    let (code, _, err) = coffer_at(&repo, &cache, &["snapshots"]);
    assert_eq!(code, 0, "{err}");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
