//! The isolated environment that runs the `coffer` binary, and what a run
//! produced.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::S3Repo;

/// The password every repository made through [`Env::coffer`] uses.
pub const PASSWORD: &str = "correct horse battery staple";

/// Variables that would let the caller's configuration leak into a test.
const COFFER_VARS: [&str; 8] = [
    "COFFER_CONFIG",
    "COFFER_METRICS_FILE",
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
    /// Set by [`Env::s3`]: `repo` is then this `s3:` location, not a path.
    pub s3: Option<S3Repo>,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    /// The raw stdout of a run that must exit 0 (`Run` holds text; a
    /// dumped file or a tar is bytes).
    pub fn stdout_bytes(&self, args: &[&str]) -> Vec<u8> {
        let out = self
            .coffer()
            .args(args)
            .spawn()
            .wait_with_output()
            .expect("wait for coffer");
        assert_eq!(
            out.status.code(),
            Some(0),
            "coffer {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

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
            s3: None,
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
        let made = match self.s3_location() {
            Some(_) => self
                .backend()
                .size(coffer::backend::FileKind::Config, "config")
                .is_ok(),
            None => self.repo.join("config").is_file(),
        };
        assert!(made, "init did not create {}/config", self.repo.display());
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

    /// `backup ROOT` killed (abort) just before its first pack put: what a
    /// crashed backup leaves, its lock included.
    pub fn killed_backup(&self, root: &Path) {
        let r = self
            .coffer()
            .arg("backup")
            .arg(root)
            .env("COFFER_FAILPOINT", "before-put:pack:1")
            .run_any();
        assert_eq!(r.code, 128 + libc::SIGABRT, "{}", r.stderr);
    }

    /// `restore latest --target TARGET` (expecting exit 0), then the
    /// restored copy of `root` compared with `root`, metadata included.
    pub fn restore_latest_matches(&self, root: &Path, target: &Path) {
        self.coffer()
            .args(["restore", "latest", "--target"])
            .arg(target)
            .run()
            .ok();
        crate::support::compare_trees(root, &crate::support::restored(target, root));
    }

    /// Total bytes of all objects in the repository (on S3, locks excepted).
    pub fn repo_size(&self) -> u64 {
        match self.s3_location() {
            Some(_) => self.repo_listing().values().sum(),
            None => dir_size(&self.repo),
        }
    }

    /// The files of one object kind (`packs`, `index`, `snapshots`, `keys`).
    /// A bucket has no files: S3 tests use [`Env::object_names`].
    pub fn objects(&self, kind: &str) -> Vec<PathBuf> {
        assert!(
            self.s3.is_none(),
            "Env::objects gives file paths; on S3 use Env::object_names"
        );
        let mut out = Vec::new();
        collect_files(&self.repo.join(kind), &mut out);
        out.sort();
        out
    }
}

pub fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
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
