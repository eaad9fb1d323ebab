//! Shared helpers for the end-to-end tests: an isolated environment that runs
//! the `coffer` binary, a fixture tree builder, fast pseudo-random data and
//! `compare_trees`, which checks that a restored tree matches its source.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The password every repository made through [`Env::coffer`] uses.
pub const PASSWORD: &str = "correct horse battery staple";

/// Variables that would let the caller's configuration leak into a test.
const COFFER_VARS: [&str; 6] = [
    "COFFER_REPOSITORY",
    "COFFER_PASSWORD",
    "COFFER_PASSWORD_FILE",
    "COFFER_PASSWORD_COMMAND",
    "COFFER_KEY_FILE",
    "COFFER_CACHE_DIR",
];

/// A temporary directory holding an isolated HOME, XDG directories, a
/// repository location and a cache directory.
pub struct Env {
    _tmp: tempfile::TempDir,
    /// The temporary directory, canonicalized (snapshots store real paths).
    pub root: PathBuf,
    pub home: PathBuf,
    pub xdg_data: PathBuf,
    pub xdg_config: PathBuf,
    pub xdg_cache: PathBuf,
    /// `--repo` for [`Env::coffer`] (not created until `init`).
    pub repo: PathBuf,
    /// `--cache-dir` for [`Env::coffer`].
    pub cache: PathBuf,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("coffer-e2e-")
            .tempdir()
            .expect("create temp dir");
        let root = fs::canonicalize(tmp.path()).expect("canonicalize temp dir");
        let home = root.join("home");
        let xdg_data = root.join("xdg-data");
        let xdg_config = root.join("xdg-config");
        let xdg_cache = root.join("xdg-cache");
        for d in [&home, &xdg_data, &xdg_config, &xdg_cache] {
            fs::create_dir_all(d).expect("create env dir");
        }
        Env {
            repo: root.join("repo"),
            cache: root.join("cache"),
            _tmp: tmp,
            root,
            home,
            xdg_data,
            xdg_config,
            xdg_cache,
        }
    }

    /// A path inside the environment's temporary directory.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// `coffer --repo REPO --cache-dir CACHE` with `COFFER_PASSWORD` set.
    pub fn coffer(&self) -> Invocation<'_> {
        Invocation {
            env: self,
            prefix: Vec::new(),
            args: Vec::new(),
            envs: Vec::new(),
            removes: Vec::new(),
            repo: true,
            cache: true,
            password: true,
        }
    }

    /// `coffer` with nothing but the isolated HOME and XDG variables.
    pub fn bare(&self) -> Invocation<'_> {
        Invocation {
            repo: false,
            cache: false,
            password: false,
            ..self.coffer()
        }
    }

    /// `coffer init` for [`Env::coffer`]'s repository, with extra init flags.
    pub fn init_with(&self, extra: &[&str]) {
        self.coffer().arg("init").args(extra).run().ok();
        assert!(
            self.repo.join("config").is_file(),
            "init did not create {}/config",
            self.repo.display()
        );
    }

    pub fn init(&self) {
        self.init_with(&[]);
    }

    /// `backup --json PATHS...` (plus `extra` flags), expecting exit 0;
    /// returns the summary object.
    pub fn backup_json(&self, paths: &[&Path], extra: &[&str]) -> serde_json::Value {
        let r = self
            .coffer()
            .args(["--json", "backup"])
            .args(extra)
            .args(paths)
            .run()
            .ok();
        r.summary()
    }

    /// Total bytes of all files under the repository directory.
    pub fn repo_size(&self) -> u64 {
        dir_size(&self.repo)
    }

    /// The files of one object kind (`packs`, `index`, `snapshots`, `keys`).
    pub fn objects(&self, kind: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        collect_files(&self.repo.join(kind), &mut out);
        out.sort();
        out
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd {
        let e = e.expect("read_dir entry");
        let md = fs::symlink_metadata(e.path()).expect("lstat");
        if md.is_dir() {
            collect_files(&e.path(), out);
        } else if md.is_file() {
            out.push(e.path());
        }
    }
}

/// Sum of the lengths of every regular file under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files
        .iter()
        .map(|f| fs::metadata(f).expect("stat").len())
        .sum()
}

/// One run of the binary being prepared.
pub struct Invocation<'a> {
    env: &'a Env,
    prefix: Vec<OsString>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    removes: Vec<OsString>,
    repo: bool,
    cache: bool,
    password: bool,
}

/// What a run produced: exit code (128 + signal if killed), stdout, stderr.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl<'a> Invocation<'a> {
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Self {
        self.removes.push(k.as_ref().to_owned());
        self
    }

    /// Do not set `COFFER_PASSWORD`.
    pub fn no_password(mut self) -> Self {
        self.password = false;
        self
    }

    /// Do not pass `--repo`.
    pub fn no_repo(mut self) -> Self {
        self.repo = false;
        self
    }

    /// Run the binary through a wrapper program (e.g. `setpriv ...`).
    pub fn wrap<I, S>(mut self, prefix: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.prefix = prefix.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// The command line, for messages.
    fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .prefix
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        parts.push("coffer".into());
        parts.extend(self.args.iter().map(|a| a.to_string_lossy().into_owned()));
        parts.join(" ")
    }

    /// Run to completion. Whatever the outcome, the binary must not panic.
    pub fn run(self) -> Run {
        self.finish(false)
    }

    /// Run to completion, allowing death by a signal (a failpoint's
    /// `abort()` gives 128 + 6); a panic still fails the test.
    pub fn run_any(self) -> Run {
        self.finish(true)
    }

    /// Start the binary with piped stdin, stdout and stderr, without waiting.
    pub fn spawn(self) -> std::process::Child {
        let (mut cmd, what) = self.command();
        cmd.stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {what}: {err}"))
    }

    /// The configured command and its description.
    fn command(self) -> (Command, String) {
        let bin = env!("CARGO_BIN_EXE_coffer");
        let mut cmd = match self.prefix.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        for v in COFFER_VARS {
            cmd.env_remove(v);
        }
        for v in [
            "XDG_DATA_HOME",
            "XDG_CONFIG_HOME",
            "XDG_CACHE_HOME",
            "XDG_STATE_HOME",
            "XDG_RUNTIME_DIR",
        ] {
            cmd.env_remove(v);
        }
        let e = self.env;
        cmd.env("HOME", &e.home)
            .env("XDG_DATA_HOME", &e.xdg_data)
            .env("XDG_CONFIG_HOME", &e.xdg_config)
            .env("XDG_CACHE_HOME", &e.xdg_cache)
            .env("USER", "e2e-tester")
            .env("RUST_BACKTRACE", "1")
            .current_dir(&e.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.repo {
            cmd.arg("--repo").arg(&e.repo);
        }
        if self.cache {
            cmd.arg("--cache-dir").arg(&e.cache);
        }
        if self.password {
            cmd.env("COFFER_PASSWORD", PASSWORD);
        }
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        for k in &self.removes {
            cmd.env_remove(k);
        }
        let what = self.describe();
        (cmd, what)
    }

    fn finish(self, signal_ok: bool) -> Run {
        let (mut cmd, what) = self.command();
        let out = cmd
            .output()
            .unwrap_or_else(|err| panic!("cannot run {what}: {err}"));
        let code = match out.status.code() {
            Some(c) => c,
            None => {
                use std::os::unix::process::ExitStatusExt;
                128 + out.status.signal().unwrap_or(0)
            }
        };
        let run = Run {
            code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(
            !run.stderr.contains("panicked") && code != 101 && (signal_ok || code < 128),
            "`{what}` panicked or was killed (exit {code})\nstdout:\n{}\nstderr:\n{}",
            run.stdout,
            run.stderr
        );
        run
    }
}

impl Run {
    /// Assert exit code 0.
    pub fn ok(self) -> Run {
        self.expect_code(0)
    }

    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "unexpected exit code {} (wanted {code})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Assert stderr contains `needle`.
    pub fn stderr_has(self, needle: &str) -> Run {
        assert!(
            self.stderr.contains(needle),
            "stderr does not mention {needle:?}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// stdout parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not valid JSON ({e}):\n{}", self.stdout))
    }

    /// The last stdout line of `backup --json`, which must be the summary.
    pub fn summary(&self) -> serde_json::Value {
        let last = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("no output from backup --json; stderr:\n{}", self.stderr));
        let v: serde_json::Value = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"));
        assert_eq!(
            v["message_type"], "summary",
            "last line is not the summary: {last}"
        );
        v
    }
}

/// A numeric field of a JSON object, which must be present.
pub fn num(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("field {field} missing or not a number in {v}"))
}

// ---------------------------------------------------------------------------
// Pseudo-random data

/// xorshift64: fast, deterministic, incompressible enough for dedup tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let v = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&v[..n]);
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Write `size` bytes of half random, half repeated text (so zstd has some
/// work to do) to `path`, streaming.
pub fn write_mixed_file(path: &Path, size: u64, seed: u64) {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).expect("create parent dirs");
    }
    let mut rng = Rng::new(seed);
    let mut f =
        std::io::BufWriter::with_capacity(1 << 20, File::create(path).expect("create big file"));
    let mut block = vec![0u8; 4096];
    let mut written = 0u64;
    let mut i = 0u64;
    while written < size {
        if rng.next_u64().is_multiple_of(2) {
            rng.fill(&mut block);
        } else {
            let text = format!(
                "block {i:>12} of a file for coffer's end-to-end tests; the quick brown fox. "
            );
            for (dst, src) in block.iter_mut().zip(text.as_bytes().iter().cycle()) {
                *dst = *src;
            }
        }
        let n = (size - written).min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("write big file");
        written += n as u64;
        i += 1;
    }
    f.flush().expect("flush big file");
}

// ---------------------------------------------------------------------------
// Fixture trees

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Set atime and mtime of `path` itself (never a symlink's target).
pub fn set_mtime(path: &Path, secs: i64, nsec: i64) {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsec as _,
    };
    let times = [ts, ts];
    let c = cpath(path);
    // SAFETY: valid C string and two valid timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Set an extended attribute on `path` itself.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let c = cpath(path);
    let n = CString::new(name).expect("xattr name");
    // SAFETY: valid C strings; value pointer and length match.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether an error means "extended attributes are not supported here".
pub fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM))
}

/// The `user.*` extended attributes of `path` itself.
pub fn user_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = cpath(path);
    let mut out = BTreeMap::new();
    // SAFETY: a null buffer with size 0 asks for the needed length.
    let len = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if len <= 0 {
        return out;
    }
    let mut names = vec![0u8; len as usize + 256];
    // SAFETY: the buffer has the length we pass.
    let len = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        len >= 0,
        "llistxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    names.truncate(len as usize);
    for name in names.split(|&b| b == 0).filter(|n| n.starts_with(b"user.")) {
        let cn = CString::new(name).expect("xattr name");
        // SAFETY: size query.
        let vlen = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        assert!(
            vlen >= 0,
            "lgetxattr {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        let mut val = vec![0u8; vlen as usize];
        // SAFETY: the buffer has the length we pass.
        let got =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(
            got >= 0,
            "lgetxattr {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        val.truncate(got as usize);
        out.insert(name.to_vec(), val);
    }
    out
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Builds a fixture directory tree. Paths are relative to `root`.
pub struct TreeBuilder {
    pub root: PathBuf,
}

impl TreeBuilder {
    pub fn new(root: impl AsRef<Path>) -> TreeBuilder {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(&root).expect("create fixture root");
        TreeBuilder { root }
    }

    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    fn parent(&self, rel: &Path) -> PathBuf {
        let p = self.root.join(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).expect("create parent dirs");
        }
        p
    }

    pub fn dir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).expect("create dir");
        p
    }

    pub fn file(&self, rel: impl AsRef<Path>, data: &[u8]) -> PathBuf {
        let p = self.parent(rel.as_ref());
        fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    pub fn random_file(&self, rel: impl AsRef<Path>, size: usize, seed: u64) -> PathBuf {
        self.file(rel, &Rng::new(seed).bytes(size))
    }

    pub fn mode(&self, rel: impl AsRef<Path>, mode: u32) {
        let p = self.root.join(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    pub fn symlink(&self, rel: impl AsRef<Path>, target: impl AsRef<Path>) -> PathBuf {
        let p = self.parent(rel.as_ref());
        std::os::unix::fs::symlink(target, &p).expect("symlink");
        p
    }

    pub fn hardlink(&self, rel: impl AsRef<Path>, existing: impl AsRef<Path>) -> PathBuf {
        let p = self.parent(rel.as_ref());
        fs::hard_link(self.root.join(existing), &p).expect("hard link");
        p
    }

    pub fn fifo(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.parent(rel.as_ref());
        let c = cpath(&p);
        // SAFETY: valid C string.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o640) };
        assert_eq!(
            rc,
            0,
            "mkfifo {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
        p
    }

    /// A sparse file of `size` bytes with `writes` at the given offsets.
    pub fn sparse(&self, rel: impl AsRef<Path>, size: u64, writes: &[(u64, &[u8])]) -> PathBuf {
        use std::os::unix::fs::FileExt;
        let p = self.parent(rel.as_ref());
        let f = File::create(&p).expect("create sparse file");
        f.set_len(size).expect("set_len");
        for (off, data) in writes {
            f.write_all_at(data, *off).expect("write into sparse file");
        }
        p
    }

    /// Every path below the root (relative, root excluded), sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk_rel(&self.root, Path::new(""), &mut out);
        out.sort();
        out
    }

    /// Give every entry (and the root) a distinct mtime with nanoseconds,
    /// deepest first so that setting a child does not disturb its directory.
    pub fn set_all_mtimes(&self) {
        let mut all = self.paths();
        all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for (i, rel) in all.iter().enumerate() {
            let i = i as i64;
            set_mtime(
                &self.root.join(rel),
                1_500_000_000 + i * 3_607,
                (i * 123_456_789 + 7) % 1_000_000_000,
            );
        }
        set_mtime(&self.root, 1_400_000_000, 999_999_999);
    }
}

fn walk_rel(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let dir = base.join(rel);
    let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for e in rd {
        let e = e.expect("dir entry");
        let r = rel.join(e.file_name());
        out.push(r.clone());
        if fs::symlink_metadata(e.path()).expect("lstat").is_dir() {
            walk_rel(base, &r, out);
        }
    }
}

/// `dst/<abs>` for an absolute `abs`: where `restore --target dst` puts it.
pub fn restored(dst: &Path, abs: &Path) -> PathBuf {
    dst.join(abs.strip_prefix("/").expect("absolute path"))
}

// ---------------------------------------------------------------------------
// Tree comparison

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Other,
}

struct Entry {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    ino: (u64, u64),
    link: Option<PathBuf>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn scan(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut rels = vec![PathBuf::new()];
    walk_rel(root, Path::new(""), &mut rels);
    let mut out = BTreeMap::new();
    for rel in rels {
        let p = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Other
        };
        out.insert(
            rel,
            Entry {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                size: md.size(),
                ino: (md.dev(), md.ino()),
                link: (kind == Kind::Symlink).then(|| fs::read_link(&p).expect("readlink")),
                xattrs: user_xattrs(&p),
            },
        );
    }
    out
}

fn same_bytes(a: &Path, b: &Path) -> Result<(), String> {
    let mut fa = File::open(a).map_err(|e| format!("open {}: {e}", a.display()))?;
    let mut fb = File::open(b).map_err(|e| format!("open {}: {e}", b.display()))?;
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| format!("read {}: {e}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| format!("read {}: {e}", b.display()))?;
        if na != nb || ba[..na] != bb[..nb] {
            let first = ba[..na]
                .iter()
                .zip(&bb[..nb])
                .position(|(x, y)| x != y)
                .unwrap_or(na.min(nb));
            return Err(format!("content differs at byte {}", off + first as u64));
        }
        if na == 0 {
            return Ok(());
        }
        off += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Groups of paths sharing an inode (hardlinks), as sorted path lists.
fn link_groups(entries: &BTreeMap<PathBuf, Entry>) -> BTreeSet<Vec<PathBuf>> {
    let mut by_inode: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    for (rel, e) in entries {
        if e.kind != Kind::Dir {
            by_inode.entry(e.ino).or_default().push(rel.clone());
        }
    }
    by_inode.into_values().filter(|g| g.len() > 1).collect()
}

/// Assert that the trees at `a` and `b` are equal: the same entries, kinds,
/// file bytes, permission bits, mtimes (ns), symlink targets, `user.*`
/// xattrs, owners and hardlink groups. Nothing is followed through symlinks.
pub fn compare_trees(a: &Path, b: &Path) {
    let ea = scan(a);
    let eb = scan(b);
    let mut diffs: Vec<String> = Vec::new();
    let ka: BTreeSet<&PathBuf> = ea.keys().collect();
    let kb: BTreeSet<&PathBuf> = eb.keys().collect();
    for only in ka.difference(&kb) {
        diffs.push(format!("{}: only in {}", only.display(), a.display()));
    }
    for only in kb.difference(&ka) {
        diffs.push(format!("{}: only in {}", only.display(), b.display()));
    }
    for (rel, x) in &ea {
        let Some(y) = eb.get(rel) else { continue };
        let name = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel.as_path()
        };
        let mut d = |what: String| diffs.push(format!("{}: {what}", name.display()));
        if x.kind != y.kind {
            d(format!("kind {:?} vs {:?}", x.kind, y.kind));
            continue;
        }
        if x.kind != Kind::Symlink && x.mode != y.mode {
            d(format!("mode {:o} vs {:o}", x.mode, y.mode));
        }
        if x.mtime != y.mtime {
            d(format!(
                "mtime {}.{:09} vs {}.{:09}",
                x.mtime.0, x.mtime.1, y.mtime.0, y.mtime.1
            ));
        }
        if (x.uid, x.gid) != (y.uid, y.gid) {
            d(format!("owner {}:{} vs {}:{}", x.uid, x.gid, y.uid, y.gid));
        }
        if x.xattrs != y.xattrs {
            d(format!("user xattrs {:?} vs {:?}", x.xattrs, y.xattrs));
        }
        match x.kind {
            Kind::File => {
                if x.size != y.size {
                    d(format!("size {} vs {}", x.size, y.size));
                } else if let Err(e) = same_bytes(&a.join(rel), &b.join(rel)) {
                    d(e);
                }
            }
            Kind::Symlink if x.link != y.link => {
                d(format!("symlink target {:?} vs {:?}", x.link, y.link));
            }
            _ => {}
        }
    }
    let ga = link_groups(&ea);
    let gb = link_groups(&eb);
    if ga != gb {
        diffs.push(format!("hardlink groups differ:\n  {ga:?}\n  {gb:?}"));
    }
    if !diffs.is_empty() {
        let n = diffs.len();
        diffs.truncate(60);
        panic!(
            "trees differ ({n} differences)\n  a: {}\n  b: {}\n{}",
            a.display(),
            b.display(),
            diffs.join("\n")
        );
    }
}

/// Assert no restore temporary file (`.coffer-tmp-*`) is left under `dir`.
pub fn assert_no_temp_files(dir: &Path) {
    let mut rels = Vec::new();
    if dir.exists() {
        walk_rel(dir, Path::new(""), &mut rels);
    }
    let left: Vec<_> = rels
        .iter()
        .filter(|r| {
            r.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b".coffer-tmp-"))
        })
        .collect();
    assert!(
        left.is_empty(),
        "restore left temporary files behind: {left:?}"
    );
}

/// Parse an RFC 3339 timestamp into Unix seconds (None if malformed).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d, h, mi, sec) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') { -o } else { o }
        }
        _ => return None,
    };
    // Days from civil (proleptic Gregorian).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Flip every bit of the byte at `offset` in `path`.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for flip");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read byte");
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).expect("write byte");
}

/// The file name of `p` as a string (object names are hex).
pub fn file_name(p: &Path) -> String {
    p.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------------------
// Repository-level helpers (crash, retention, locks, repair modules)

impl Env {
    /// Full snapshot ids, oldest first.
    pub fn snapshot_ids(&self) -> Vec<String> {
        let v = self
            .coffer()
            .args(["--json", "snapshots"])
            .run()
            .ok()
            .json();
        v.as_array()
            .unwrap_or_else(|| panic!("snapshots --json is not an array: {v}"))
            .iter()
            .map(|s| s["id"].as_str().expect("snapshot id").to_string())
            .collect()
    }

    /// Restore `snap` into a fresh directory and return where `root` (an
    /// absolute path that was backed up) landed in it.
    pub fn restore_of(&self, snap: &str, root: &Path) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let target = self.path(format!("restore-{n}"));
        self.coffer()
            .args(["restore", snap, "--target"])
            .arg(&target)
            .run()
            .ok();
        restored(&target, root)
    }

    /// `check --read-data --json`, which must exit 0; returns the summary.
    pub fn check_clean(&self) -> serde_json::Value {
        let r = self.coffer().args(["--json", "check", "--read-data"]).run();
        assert_eq!(
            r.code, 0,
            "check --read-data failed\nstdout:\n{}\nstderr:\n{}",
            r.stdout, r.stderr
        );
        r.json()
    }

    /// Every object under the repository except locks, with its size.
    pub fn repo_listing(&self) -> BTreeMap<PathBuf, u64> {
        let mut files = Vec::new();
        collect_files(&self.repo, &mut files);
        files
            .into_iter()
            .filter(|f| !f.starts_with(self.repo.join("locks")))
            .map(|f| {
                let len = fs::metadata(&f).expect("stat").len();
                (
                    f.strip_prefix(&self.repo).expect("in repo").to_path_buf(),
                    len,
                )
            })
            .collect()
    }
}

/// Copy a directory tree of regular files (a repository) to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create copy target");
    for e in fs::read_dir(from).expect("read_dir for copy") {
        let e = e.expect("dir entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            fs::copy(e.path(), &dst).expect("copy file");
        }
    }
}
