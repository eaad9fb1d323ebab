//! Hostile snapshots on restore (issue #7, doc/reliability.md 4.I, H8): trees
//! and snapshots written directly with the repository key, as someone who
//! holds the key (or a compromised client) could write them. Whatever they
//! hold, a restore creates, modifies and deletes nothing outside
//! `--target`, never panics, never allocates or preallocates what a node
//! merely declares, and names what it refuses.
//!
//! Every test keeps a sentinel directory beside the target (`outside/`,
//! holding `victim.txt`) and checks afterwards that it and the rest of the
//! test directory are exactly as before.

use crate::support::*;
use coffer::backend::local::LocalBackend;
use coffer::blob::{BlobKind, BlobSink};
use coffer::id::BlobId;
use coffer::repository::blob_store::BlobStore;
use coffer::repository::{Repository, Secret};
use coffer::snapshot::Snapshot;
use coffer::snapshot::tree::{Node, NodeKind, Tree};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const VICTIM: &[u8] = b"must never change\n";

/// Writes blobs, trees and snapshots straight into a repository.
struct Crafter {
    repo: Arc<Repository>,
    store: Option<BlobStore>,
}

impl Crafter {
    fn new(env: &Env) -> Crafter {
        let secret = Secret::Passphrase(zeroize::Zeroizing::new(PASSWORD.as_bytes().to_vec()));
        let repo = Arc::new(
            Repository::open(Arc::new(LocalBackend::open(&env.repo)), &secret)
                .expect("open the repository"),
        );
        let store = BlobStore::new(repo.clone()).expect("blob store");
        Crafter {
            repo,
            store: Some(store),
        }
    }

    fn store(&self, kind: BlobKind, bytes: &[u8]) -> BlobId {
        let id = self.repo.keys().blob_id(bytes);
        self.store
            .as_ref()
            .unwrap()
            .store_blob(kind, id, bytes)
            .expect("store blob");
        id
    }

    fn data(&self, bytes: &[u8]) -> BlobId {
        self.store(BlobKind::Data, bytes)
    }

    /// Store `nodes` as one tree, in the order given (not sorted, not
    /// validated: the encoder writes whatever it is handed).
    fn raw_tree(&self, nodes: Vec<Node>) -> BlobId {
        self.store(BlobKind::Tree, &Tree { nodes }.encode())
    }

    fn tree(&self, mut nodes: Vec<Node>) -> BlobId {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        self.raw_tree(nodes)
    }

    /// Flush the blobs and write a snapshot of `root`; returns its id.
    fn snapshot(mut self, root: BlobId) -> String {
        self.store
            .take()
            .unwrap()
            .finish()
            .expect("finish blob store");
        let snap = Snapshot {
            time_ns: 1_700_000_000_000_000_000,
            tree: root,
            parent: None,
            hostname: "hostile".into(),
            username: "mallory".into(),
            uid: 0,
            gid: 0,
            paths: vec![b"/".to_vec()],
            tags: vec![],
            program_version: "crafted".into(),
            summary: BTreeMap::new(),
        };
        self.repo
            .save_snapshot(&snap)
            .expect("save snapshot")
            .to_hex()
    }
}

fn file(c: &Crafter, name: &[u8], content: &[u8]) -> Node {
    let mut n = Node::new(name.to_vec(), NodeKind::File);
    n.mode = 0o644;
    n.links = 1;
    n.size = content.len() as u64;
    if !content.is_empty() {
        n.content = vec![c.data(content)];
    }
    n
}

fn dir(name: &[u8], subtree: BlobId) -> Node {
    let mut n = Node::new(name.to_vec(), NodeKind::Dir);
    n.mode = 0o755;
    n.subtree = Some(subtree);
    n
}

fn symlink(name: &[u8], target: &Path) -> Node {
    let mut n = Node::new(name.to_vec(), NodeKind::Symlink);
    n.mode = 0o777;
    n.link_target = target.as_os_str().as_encoded_bytes().to_vec();
    n
}

/// A repository, a sentinel directory and a snapshot of everything else
/// in the test directory, to compare after each restore.
struct World {
    env: Env,
    outside: PathBuf,
    before: BTreeMap<PathBuf, (u32, u64, Vec<u8>)>,
}

/// Every path under `root` except the repository, the cache and the
/// restore targets: (mode, size, content or link target).
fn inventory(root: &Path) -> BTreeMap<PathBuf, (u32, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let top = rel.components().next().unwrap().as_os_str().to_owned();
            let top = top.to_string_lossy();
            if top == "repo" || top == "cache" || top.starts_with("target") {
                continue;
            }
            let md = fs::symlink_metadata(&p).unwrap();
            let body = if md.is_file() {
                fs::read(&p).unwrap()
            } else if md.file_type().is_symlink() {
                fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            if md.is_dir() {
                stack.push(p.clone());
            }
            out.insert(
                rel,
                (md.mode(), if md.is_dir() { 0 } else { md.len() }, body),
            );
        }
    }
    out
}

impl World {
    fn new() -> World {
        let env = Env::new();
        env.init();
        let outside = env.path("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim.txt"), VICTIM).unwrap();
        let before = inventory(&env.root);
        World {
            env,
            outside,
            before,
        }
    }

    fn target(&self, n: &str) -> PathBuf {
        self.env.path(format!("target-{n}"))
    }

    fn restore(&self, snap: &str, target: &Path) -> Run {
        self.env
            .coffer()
            .args(["restore", snap, "--target"])
            .arg(target)
            .run()
    }

    /// Nothing outside the targets changed.
    fn assert_outside_untouched(&self) {
        let now = inventory(&self.env.root);
        assert!(
            now == self.before,
            "something outside the target changed:\nbefore: {:?}\nafter:  {:?}",
            self.before.keys().collect::<Vec<_>>(),
            now.keys().collect::<Vec<_>>()
        );
        assert_eq!(fs::read(self.outside.join("victim.txt")).unwrap(), VICTIM);
    }
}

/// The entries directly in `dir` (names), or none if it does not exist.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

#[test]
fn invalid_names_are_refused_before_anything_is_written() {
    let w = World::new();
    let outside = w.outside.join("evil").into_os_string().into_encoded_bytes();
    let bad: Vec<Vec<u8>> = vec![
        b"..".to_vec(),
        b".".to_vec(),
        Vec::new(),
        b"a/b".to_vec(),
        outside.clone(), // absolute
        b"../../outside/evil".to_vec(),
        b"a\0b".to_vec(),
        b"../victim.txt".to_vec(),
    ];
    for (i, name) in bad.iter().enumerate() {
        let c = Crafter::new(&w.env);
        // A good file beside the bad entry: the whole tree is refused, so
        // not even the good one is written.
        let nodes = vec![file(&c, b"aaa-good", b"good\n"), file(&c, name, b"pwned\n")];
        let root = c.raw_tree(nodes);
        let snap = c.snapshot(root);
        let t = w.target(&format!("name{i}"));
        let r = w.restore(&snap, &t).expect_code(1);
        assert!(
            r.stderr.contains("invalid entry name") && r.stderr.contains(&root.to_hex()),
            "name {:?}: the error does not name the tree and the reason:\n{}",
            String::from_utf8_lossy(name),
            r.stderr
        );
        assert!(
            entries(&t).is_empty(),
            "name {:?}: restore wrote {:?}",
            String::from_utf8_lossy(name),
            entries(&t)
        );
        for cmd in [
            vec!["ls".to_string(), snap.clone()],
            vec!["dump".to_string(), snap.clone(), "/aaa-good".to_string()],
        ] {
            let r = w.env.coffer().args(&cmd).run().expect_code(1);
            assert!(
                r.stderr.contains("invalid entry name"),
                "{cmd:?}: {}",
                r.stderr
            );
        }
        w.assert_outside_untouched();
    }
}

/// A tree that fails validation is skipped like a damaged one (issue 19):
/// named, nothing below it written, everything else restored, exit 1.
#[test]
fn a_bad_tree_deep_down_is_named_and_only_its_directory_is_skipped() {
    let w = World::new();
    let c = Crafter::new(&w.env);
    let bad = c.raw_tree(vec![file(&c, b"..", b"x")]);
    let deep = c.tree(vec![dir(b"d3", bad)]);
    let root = c.tree(vec![
        file(&c, b"early.txt", b"written first in walk order\n"),
        dir(b"d2", deep),
    ]);
    let snap = c.snapshot(root);
    let t = w.target("deep");
    let r = w.restore(&snap, &t).expect_code(1);
    assert!(r.stderr.contains(&bad.to_hex()), "{}", r.stderr);
    assert!(
        r.stderr.contains("d2/d3: its tree cannot be read"),
        "{}",
        r.stderr
    );
    assert_eq!(entries(&t), ["d2", "early.txt"]);
    assert!(entries(&t.join("d2/d3")).is_empty());
    w.assert_outside_untouched();
}

#[test]
fn duplicate_and_unsorted_entries_are_refused() {
    let w = World::new();
    for (i, order) in [[b"b".as_slice(), b"a"], [b"a", b"a"]].iter().enumerate() {
        let c = Crafter::new(&w.env);
        let nodes = order.iter().map(|n| file(&c, n, b"x\n")).collect();
        let root = c.raw_tree(nodes);
        let snap = c.snapshot(root);
        let t = w.target(&format!("order{i}"));
        let r = w.restore(&snap, &t).expect_code(1);
        assert!(r.stderr.contains("not strictly sorted"), "{}", r.stderr);
        assert!(entries(&t).is_empty());
    }
    w.assert_outside_untouched();
}

/// doc/reliability.md I3/I4/I6: a symlink restored (or planted) in the target
/// is replaced, never written through, when a later restore puts a
/// directory or a file under that name.
#[test]
fn a_symlink_in_the_target_is_replaced_never_written_through() {
    let w = World::new();
    // Snapshot A: `evil -> outside` and `file -> outside/victim.txt`.
    let c = Crafter::new(&w.env);
    let root = c.tree(vec![
        symlink(b"evil", &w.outside),
        symlink(b"file", &w.outside.join("victim.txt")),
    ]);
    let a = c.snapshot(root);
    // Snapshot B: a directory `evil` holding `victim.txt`, and a regular
    // file `file`.
    let c = Crafter::new(&w.env);
    let sub = c.tree(vec![file(&c, b"victim.txt", b"pwned through a symlink\n")]);
    let root = c.tree(vec![
        dir(b"evil", sub),
        file(&c, b"file", b"pwned via link\n"),
    ]);
    let b = c.snapshot(root);

    for overwrite in ["if-changed", "always"] {
        let t = w.target(overwrite);
        w.restore(&a, &t).ok();
        assert!(
            fs::symlink_metadata(t.join("evil"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_link(t.join("evil")).unwrap(), w.outside);
        w.assert_outside_untouched();
        w.env
            .coffer()
            .args(["restore", &b, "--overwrite", overwrite, "--target"])
            .arg(&t)
            .run()
            .ok();
        w.assert_outside_untouched();
        let md = fs::symlink_metadata(t.join("evil")).unwrap();
        assert!(md.is_dir(), "{overwrite}: evil is not a real directory");
        assert_eq!(
            fs::read(t.join("evil/victim.txt")).unwrap(),
            b"pwned through a symlink\n"
        );
        let md = fs::symlink_metadata(t.join("file")).unwrap();
        assert!(md.is_file(), "{overwrite}: file is not a regular file");
        assert_eq!(fs::read(t.join("file")).unwrap(), b"pwned via link\n");
    }

    // `--overwrite never` keeps what is there: the symlinks stay links and
    // nothing is written through them.
    let t2 = w.target("never");
    w.restore(&a, &t2).ok();
    let r = w
        .env
        .coffer()
        .args(["restore", &b, "--overwrite", "never", "--target"])
        .arg(&t2)
        .run();
    assert!(r.code == 0 || r.code == 1, "{}", r.stderr);
    w.assert_outside_untouched();
    assert!(!fs::symlink_metadata(t2.join("evil")).unwrap().is_file());
}

/// A file node that declares 2^62 bytes but holds one small blob: refused
/// by name before any file is created, and the other files still restore.
/// Two nodes of 2^63 must not overflow the space estimate.
#[test]
fn absurd_declared_sizes_fail_cleanly_without_preallocating() {
    let w = World::new();
    for (i, sizes) in [
        vec![1u64 << 62],
        vec![1u64 << 63, 1u64 << 63],
        vec![u64::MAX],
        vec![0],
    ]
    .iter()
    .enumerate()
    {
        let c = Crafter::new(&w.env);
        let mut nodes = vec![file(&c, b"fine.txt", b"a normal file\n")];
        for (j, &s) in sizes.iter().enumerate() {
            let mut n = file(&c, format!("huge{j}").as_bytes(), b"tiny content\n");
            n.size = s;
            nodes.push(n);
        }
        let root = c.tree(nodes);
        let snap = c.snapshot(root);
        let t = w.target(&format!("size{i}"));
        let r = w.restore(&snap, &t).expect_code(1);
        for j in 0..sizes.len() {
            assert!(
                r.stderr.contains(&format!("huge{j}")) && r.stderr.contains("content adds up to"),
                "sizes {sizes:?}: huge{j} not named with the reason:\n{}",
                r.stderr
            );
            assert!(
                fs::symlink_metadata(t.join(format!("huge{j}"))).is_err(),
                "sizes {sizes:?}: huge{j} was created"
            );
        }
        assert_eq!(fs::read(t.join("fine.txt")).unwrap(), b"a normal file\n");
        assert_no_temp_files(&t);
        // Nothing in the target is bigger than what the snapshot holds.
        let total: u64 = fs::read_dir(&t)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(
            total < 1 << 20,
            "sizes {sizes:?}: {total} bytes in the target"
        );
    }
    w.assert_outside_untouched();
}

/// Names over 255 bytes and paths over PATH_MAX fail per entry with a
/// clear error; nesting thousands of directories deep does not overflow a
/// stack anywhere (the walk is iterative).
#[test]
fn very_long_names_and_deep_nesting_fail_per_entry() {
    let w = World::new();
    let c = Crafter::new(&w.env);
    let long = vec![b'n'; 300];
    let mut sub = c.tree(vec![file(&c, b"bottom.txt", b"deep\n")]);
    for _ in 0..3000 {
        sub = c.tree(vec![dir(b"dd", sub)]);
    }
    let root = c.tree(vec![
        dir(b"deep", sub),
        file(&c, &long, b"long name\n"),
        file(&c, b"ok.txt", b"ok\n"),
    ]);
    let snap = c.snapshot(root);
    let t = w.target("long");
    let r = w.restore(&snap, &t).expect_code(1);
    assert!(
        r.stderr.contains("File name too long"),
        "no ENAMETOOLONG in:\n{}",
        r.stderr
    );
    assert_eq!(fs::read(t.join("ok.txt")).unwrap(), b"ok\n");
    assert_no_temp_files(&t);
    w.env.coffer().args(["ls", &snap]).run().ok();
    w.assert_outside_untouched();
}

/// Device nodes, FIFOs and setuid bits (doc/reliability.md I7). As root they
/// are restored (like tar and restic do); without root a device is skipped
/// with a warning and setuid/setgid are dropped. The non-root half runs
/// the binary as `nobody` through setpriv.
#[test]
fn devices_and_setuid_without_root_are_skipped_or_dropped() {
    let mut w = World::new();
    let c = Crafter::new(&w.env);
    let mut dev = Node::new(b"disk".to_vec(), NodeKind::BlockDevice);
    dev.mode = 0o666;
    dev.rdev = 8 << 8; // 8:0, /dev/sda
    let mut chr = Node::new(b"mem".to_vec(), NodeKind::CharDevice);
    chr.mode = 0o666;
    chr.rdev = (1 << 8) | 1; // 1:1, /dev/mem
    let mut suid = file(&c, b"suid", b"#!/bin/sh\n");
    suid.mode = 0o6755;
    let root = c.tree(vec![dev, chr, suid, file(&c, b"plain", b"p\n")]);
    let snap = c.snapshot(root);

    if !is_root() {
        return; // the non-root path below needs root to set up
    }
    // Non-root: a copy of the world readable by nobody.
    chmod_r(&w.env.root);
    w.before = inventory(&w.env.root);
    let t = w.target("nobody");
    fs::create_dir(&t).unwrap();
    std::os::unix::fs::chown(&t, Some(65534), Some(65534)).unwrap();
    let r = w
        .env
        .coffer()
        .wrap([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ])
        .args(["--no-cache", "restore", &snap, "--target"])
        .arg(&t)
        .run();
    if r.stderr.contains("setpriv:") {
        eprintln!("setpriv cannot drop to nobody here: {}", r.stderr);
        return;
    }
    assert!(r.code == 0 || r.code == 3, "{}\n{}", r.stdout, r.stderr);
    for d in ["disk", "mem"] {
        assert!(
            fs::symlink_metadata(t.join(d)).is_err(),
            "device {d} restored without root"
        );
    }
    assert!(
        r.stderr.contains("disk") && r.stderr.contains("needs root"),
        "no warning naming the device:\n{}",
        r.stderr
    );
    let mode = fs::metadata(t.join("suid")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid/setgid kept without root");
    assert_eq!(fs::read(t.join("plain")).unwrap(), b"p\n");
    w.assert_outside_untouched();
}

/// Make `p` and everything under it readable (and directories searchable)
/// by everyone, for the run as nobody.
fn chmod_r(p: &Path) {
    let md = fs::symlink_metadata(p).unwrap();
    if md.file_type().is_symlink() {
        return;
    }
    let mode = md.permissions().mode();
    let add = if md.is_dir() { 0o555 } else { 0o444 };
    fs::set_permissions(p, fs::Permissions::from_mode(mode | add)).unwrap();
    if md.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            chmod_r(&e.unwrap().path());
        }
    }
}
