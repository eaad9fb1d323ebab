//! `coffer mount` through the kernel: run when `/dev/fuse` can be opened
//! and `fusermount3` exists; otherwise each test says it was skipped,
//! unless `COFFER_REQUIRE_FUSE` is set (CI sets it), when it fails. Every
//! mount is undone by a guard, so a failing test leaves none behind.

use crate::support::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Can this machine mount FUSE filesystems? Says why not when it cannot.
fn fuse_or_skip(test: &str) -> bool {
    let dev = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse");
    let helper = Command::new("fusermount3")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let why = match (dev, helper) {
        (Ok(_), Ok(_)) => return true,
        (Err(e), _) => format!("/dev/fuse cannot be opened: {e}"),
        (_, Err(e)) => format!("fusermount3 cannot be run: {e}"),
    };
    if std::env::var_os("COFFER_REQUIRE_FUSE").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{test}: COFFER_REQUIRE_FUSE is set but {why}");
    }
    eprintln!(
        "skipped: {why} ({test}; set COFFER_REQUIRE_FUSE=1 to make this a failure; Debian: apt-get install fuse3)"
    );
    false
}

/// A running `coffer mount`; dropping it unmounts (lazily, so a failed
/// test cannot leave a mount behind) and reaps the process.
struct Mounted {
    child: Option<Child>,
    dir: PathBuf,
}

impl Mounted {
    fn start(env: &Env, dir: &Path, extra: &[&str]) -> Mounted {
        fs::create_dir_all(dir).expect("create mount point");
        let child = env.coffer().arg("mount").arg(dir).args(extra).spawn();
        let mut m = Mounted {
            child: Some(child),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dir.join("snapshots").exists() {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                let mut err = String::new();
                let _ = m
                    .child
                    .as_mut()
                    .unwrap()
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err);
                panic!("coffer mount exited ({status}) before mounting:\n{err}");
            }
            assert!(
                Instant::now() < deadline,
                "coffer mount did not mount within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    /// Send `signal`, wait for the exit; returns its code and stderr.
    fn stop(mut self, signal: i32) -> (Option<i32>, String) {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("coffer mount did not exit within 30 s of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn is_mounted(dir: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let d = dir.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*d))
}

/// The small-chunk repository every test mounts: chunks of 16-64 KiB, so
/// a file of a few hundred KiB spans many blobs.
fn small_chunk_env() -> Env {
    let env = Env::new();
    env.init_with(&[
        "--chunk-min",
        "16K",
        "--chunk-avg",
        "32K",
        "--chunk-max",
        "64K",
    ]);
    env
}

/// Everything `lstat`, `readlink` and the xattr calls show of one entry,
/// minus what a directory's size and link count say about the disk it is on.
#[derive(Debug, PartialEq)]
struct Seen {
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    mtime: (i64, i64),
    target: Option<PathBuf>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn seen(p: &Path) -> Seen {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    Seen {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        size: (!m.is_dir()).then_some(m.size()),
        mtime: (m.mtime(), m.mtime_nsec()),
        target: m
            .file_type()
            .is_symlink()
            .then(|| fs::read_link(p).unwrap()),
        xattrs: user_xattrs(p),
    }
}

/// Every entry below `dir`, by path relative to it.
fn listing(dir: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Seen>) {
    let mut names: Vec<_> = fs::read_dir(dir.join(rel))
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.join(rel).display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names {
        let r = rel.join(&n);
        let p = dir.join(&r);
        out.insert(r.clone(), seen(&p));
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            listing(dir, &r, out);
        }
    }
}

/// Names of a directory of the mount, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The directory name of the snapshot with id `id` among `names`.
fn named<'a>(names: &'a [String], id: &str) -> &'a str {
    names
        .iter()
        .find(|n| n.ends_with(&format!("_{}", &id[..8])))
        .unwrap_or_else(|| panic!("no directory for snapshot {id} in {names:?}"))
}

#[test]
fn mount_shows_each_snapshot_as_its_tree_and_serves_any_byte_range() {
    if !fuse_or_skip("mount_shows_each_snapshot_as_its_tree_and_serves_any_byte_range") {
        return;
    }
    let env = small_chunk_env();
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("big.bin", 700_000, 1);
    t.file("docs/readme.txt", b"hello through fuse\n");
    t.file("docs/empty", b"");
    t.random_file("docs/deep/nested/x.dat", 90_000, 2);
    t.symlink("docs/link", "../big.bin");
    t.symlink("dangling", "/no/such/target");
    t.mode("docs/readme.txt", 0o640);
    t.mode("docs/deep", 0o750);
    set_mtime(&t.path("docs/readme.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&t.path("big.bin"), -86_400, 5);
    let xattrs = set_xattr(&t.path("big.bin"), "user.origin", b"camera \x00 roll").is_ok();
    let first = env.backup_json(&[&t.root], &["--tag", "nightly"])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A second snapshot from another host; the first keeps the old bytes.
    let old_readme = fs::read(t.path("docs/readme.txt")).unwrap();
    t.file("docs/readme.txt", b"changed later\n");
    set_mtime(&t.path("docs/readme.txt"), 1_600_000_000, 123_456_789);
    let second = env.backup_json(&[&t.root], &["--host", "other-host"])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();

    let mnt = env.path("mnt");
    let m = Mounted::start(&env, &mnt, &[]);
    assert_eq!(names(&mnt), ["hosts", "latest", "snapshots", "tags"]);
    let snaps = names(&mnt.join("snapshots"));
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    let (first_dir, second_dir) = (named(&snaps, &first), named(&snaps, &second));

    // latest, hosts/ and tags/.
    assert_eq!(
        fs::read_link(mnt.join("latest")).unwrap(),
        Path::new("snapshots").join(second_dir)
    );
    let hosts = names(&mnt.join("hosts"));
    assert!(hosts.contains(&"other-host".to_string()), "{hosts:?}");
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert_eq!(names(&mnt.join("hosts/other-host")), [second_dir]);
    assert_eq!(names(&mnt.join("tags")), ["nightly"]);
    assert_eq!(names(&mnt.join("tags/nightly")), [first_dir]);

    // The latest snapshot's tree is the source's, entry for entry.
    let inside = |snap: &Path| snap.join(t.root.strip_prefix("/").unwrap());
    let mut want = BTreeMap::new();
    listing(&t.root, Path::new(""), &mut want);
    let mut got = BTreeMap::new();
    listing(&inside(&mnt.join("latest")), Path::new(""), &mut got);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (rel, w) in &want {
        assert_eq!(&got[rel], w, "{}", rel.display());
    }
    if xattrs {
        assert_eq!(
            want[Path::new("big.bin")]
                .xattrs
                .get(&b"user.origin"[..])
                .map(Vec::as_slice),
            Some(&b"camera \x00 roll"[..])
        );
    }
    // The same tree under hosts/ and tags/, and the first snapshot's bytes.
    let via_tag = inside(&mnt.join("tags/nightly").join(first_dir));
    assert_eq!(
        fs::read(via_tag.join("docs/readme.txt")).unwrap(),
        old_readme
    );
    let via_host = inside(&mnt.join("hosts/other-host").join(second_dir));
    assert_eq!(
        fs::read(via_host.join("docs/readme.txt")).unwrap(),
        b"changed later\n"
    );

    // Whole files, then reads at random offsets, each longer than the
    // largest chunk, so each crosses at least one blob boundary.
    let snap = inside(&mnt.join("latest"));
    for rel in [
        "big.bin",
        "docs/empty",
        "docs/deep/nested/x.dat",
        "docs/link",
    ] {
        assert!(
            fs::read(snap.join(rel)).unwrap() == fs::read(t.path(rel)).unwrap(),
            "{rel} differs"
        );
    }
    let src = fs::read(t.path("big.bin")).unwrap();
    let f = fs::File::open(snap.join("big.bin")).unwrap();
    let mut rng = Rng::new(7);
    for _ in 0..20 {
        let off = rng.next_u64() % src.len() as u64;
        let mut buf = vec![0u8; 100_000];
        let n = f.read_at(&mut buf, off).unwrap();
        let end = (off as usize + 100_000).min(src.len());
        assert_eq!(n, end - off as usize, "short read at {off}");
        assert!(buf[..n] == src[off as usize..end], "bytes differ at {off}");
    }
    assert_eq!(f.read_at(&mut [0u8; 10], src.len() as u64).unwrap(), 0);

    // Read-only: no new file, no writing to an old one.
    let erofs = |r: std::io::Result<fs::File>| match r {
        Ok(_) => panic!("a write was allowed"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}"),
    };
    erofs(fs::File::create(snap.join("new.txt")));
    erofs(
        fs::OpenOptions::new()
            .write(true)
            .open(snap.join("big.bin")),
    );
    erofs(
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_APPEND)
            .open(snap.join("docs/readme.txt")),
    );
    assert!(fs::create_dir(snap.join("newdir")).is_err());
    assert!(fs::remove_file(snap.join("big.bin")).is_err());
    assert_eq!(fs::read(t.path("big.bin")).unwrap(), src);
    drop(m);
    assert!(!is_mounted(&mnt));
}

#[test]
fn sigterm_and_sigint_unmount_and_exit_zero() {
    if !fuse_or_skip("sigterm_and_sigint_unmount_and_exit_zero") {
        return;
    }
    let env = small_chunk_env();
    let t = TreeBuilder::new(env.path("src"));
    t.file("a.txt", b"a\n");
    env.backup_json(&[&t.root], &[]);
    for (signal, name) in [(libc::SIGTERM, "mnt-term"), (libc::SIGINT, "mnt-int")] {
        let mnt = env.path(name);
        let m = Mounted::start(&env, &mnt, &[]);
        assert!(is_mounted(&mnt));
        // The mount holds the shared lock of a reader: no prune under it.
        env.coffer()
            .arg("prune")
            .run()
            .expect_code(1)
            .stderr_has("the repository is locked");
        let (code, stderr) = m.stop(signal);
        assert_eq!(code, Some(0), "signal {signal}: stderr:\n{stderr}");
        assert!(!is_mounted(&mnt), "still mounted after signal {signal}");
        assert_eq!(fs::read_dir(&mnt).unwrap().count(), 0);
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // The lock went with the mount: prune runs at once.
    env.coffer().arg("prune").run().ok();
}

#[test]
fn a_damaged_blob_fails_the_read_with_eio_and_one_warning() {
    if !fuse_or_skip("a_damaged_blob_fails_the_read_with_eio_and_one_warning") {
        return;
    }
    let env = small_chunk_env();
    let t = TreeBuilder::new(env.path("src"));
    t.random_file("victim.bin", 400_000, 3);
    t.file("fine.txt", b"still readable\n");
    env.backup_json(&[&t.root], &[]);
    for pack in env.objects("packs") {
        let kinds = env
            .coffer()
            .args(["cat", "pack", &file_name(&pack)])
            .run()
            .ok()
            .json();
        let data = kinds["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["type"] == "data");
        if data {
            flip_byte(&pack, fs::metadata(&pack).unwrap().len() / 3);
        }
    }
    let mnt = env.path("mnt");
    let m = Mounted::start(&env, &mnt, &[]);
    let snap = mnt.join("latest").join(t.root.strip_prefix("/").unwrap());
    // Listing needs no file data.
    assert_eq!(names(&snap), ["fine.txt", "victim.bin"]);
    for _ in 0..3 {
        let e = fs::read(snap.join("victim.bin")).expect_err("a damaged file was read");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }
    let (code, stderr) = m.stop(libc::SIGTERM);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("victim.bin"))
        .collect();
    assert_eq!(lines.len(), 1, "one warning line for the file:\n{stderr}");
    assert!(lines[0].starts_with("coffer: warning: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(code.is_some(), "killed: {stderr}");
}

#[test]
fn a_missing_mount_point_or_a_tiny_cache_is_refused_before_mounting() {
    let env = Env::new();
    env.init();
    let r = env
        .coffer()
        .args(["mount", "no-such-dir"])
        .run()
        .expect_code(1);
    assert!(
        r.stderr.contains("no-such-dir") && r.stderr.contains("mkdir"),
        "{}",
        r.stderr
    );
    fs::create_dir(env.path("mnt")).unwrap();
    // The default chunks are up to 4 MiB: a 1 MiB cache could hold none.
    let r = env
        .coffer()
        .args(["mount", "mnt", "--cache-size", "1M"])
        .run()
        .expect_code(1);
    assert!(
        r.stderr.contains("--cache-size 1M is too small"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("give at least 16.00 MiB"), "{}", r.stderr);
}
