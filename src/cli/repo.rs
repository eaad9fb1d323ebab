//! Finding the repository and the secret that opens it.
//!
//! Repository: `--repo`, `COFFER_REPOSITORY`, else the default repository
//! `$XDG_DATA_HOME/coffer/default`. Secret, first found wins: `--key-file`,
//! `--password-file`, `--password-command` (never both), `COFFER_PASSWORD`,
//! the default key file (only for the default repository), an interactive
//! prompt. As in restic, what names a source explicitly beats the bare
//! password variable a shell profile may have left set.

use super::GlobalOpts;
use anyhow::{Context, Result, anyhow, bail};
use coffer::backend::{self, Backend, Location};
use coffer::crypto::key_file::KeyFileSecret;
use coffer::repository::config::{CONFIG, CONFIG_COPY};
use coffer::repository::lock::LockGuard;
use coffer::repository::{FormatChecked, Repository, Secret, default_cache_root};
use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The repository this process opened, so damaged objects no operation's
/// outcome reported (what opening met, a snapshot listing, an operation
/// that failed before it drained them) are reported when it exits.
pub static OPENED: std::sync::OnceLock<Arc<Repository>> = std::sync::OnceLock::new();

fn xdg(var: &str, fallback: &str) -> Result<PathBuf> {
    if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(v));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("neither {var} nor HOME is set: give --repo"))?;
    Ok(Path::new(&home).join(fallback))
}

pub fn default_repo_path() -> Result<PathBuf> {
    Ok(xdg("XDG_DATA_HOME", ".local/share")?
        .join("coffer")
        .join("default"))
}

pub fn default_key_file() -> Result<PathBuf> {
    Ok(xdg("XDG_CONFIG_HOME", ".config")?
        .join("coffer")
        .join("default.key"))
}

/// Where profiles are read from unless `--config` names another file.
pub fn default_config_file() -> Result<PathBuf> {
    Ok(xdg("XDG_CONFIG_HOME", ".config")?
        .join("coffer")
        .join("config.toml"))
}

/// The repository location and whether it is the default one.
pub fn location(g: &GlobalOpts) -> Result<(Location, bool)> {
    match &g.repo {
        Some(r) if !r.as_os_str().is_empty() => Ok((Location::parse_os(r.as_os_str())?, false)),
        _ => Ok((Location::Local(default_repo_path()?), true)),
    }
}

/// `--option KEY=VALUE`s, checked.
pub fn backend_options(g: &GlobalOpts) -> Result<backend::Options> {
    Ok(backend::Options::parse(&g.options)?)
}

/// The store at `loc`, as every command reaches it.
pub fn open_backend(g: &GlobalOpts, loc: &Location) -> Result<Arc<dyn Backend>> {
    Ok(backend::open(loc, &backend_options(g)?)?)
}

pub fn cache_root(g: &GlobalOpts) -> Option<PathBuf> {
    if g.no_cache {
        return None;
    }
    g.cache_dir.clone().or_else(default_cache_root)
}

/// Read a key file, refusing one that others can read.
pub fn read_key_file(path: &Path) -> Result<KeyFileSecret> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "key file {} is readable by other users: run `chmod 600 {}` and try again",
            path.display(),
            path.display()
        );
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read key file {}", path.display()))?,
    );
    KeyFileSecret::parse(&text).map_err(|e| anyhow!("key file {}: {e}", path.display()))
}

/// Strip exactly one trailing newline (and a CR before it).
fn strip_newline(mut s: Vec<u8>) -> Vec<u8> {
    if s.last() == Some(&b'\n') {
        s.pop();
        if s.last() == Some(&b'\r') {
            s.pop();
        }
    }
    s
}

/// Where the secret of one repository comes from: the global options, or
/// `copy`'s and `init`'s `--from-*` options for a second repository.
pub struct SecretOpts<'a> {
    pub password_env: &'static str,
    pub password_file: Option<&'a Path>,
    pub password_command: Option<&'a str>,
    pub key_file: Option<&'a Path>,
}

impl SecretOpts<'_> {
    /// The option `base` as this repository's user spells it: `--base`,
    /// `--from-base` for `copy`'s and `init`'s source, or a profile's
    /// `copy-to-base` for `run`'s copy destination.
    fn flag(&self, base: &str) -> String {
        match self.password_env {
            "COFFER_PASSWORD" => format!("--{base}"),
            "COFFER_FROM_PASSWORD" => format!("--from-{base}"),
            _ => format!("the profile key copy-to-{base}"),
        }
    }
}

impl GlobalOpts {
    pub fn secret_opts(&self) -> SecretOpts<'_> {
        SecretOpts {
            password_env: "COFFER_PASSWORD",
            password_file: self.password_file.as_deref(),
            password_command: self.password_command.as_deref(),
            key_file: self.key_file.as_deref(),
        }
    }
}

/// A password from the environment, a file or a command, if one is configured.
pub fn configured_password(g: &GlobalOpts) -> Result<Option<Zeroizing<Vec<u8>>>> {
    configured_password_from(&g.secret_opts())
}

fn configured_password_from(o: &SecretOpts) -> Result<Option<Zeroizing<Vec<u8>>>> {
    if o.password_file.is_some() && o.password_command.is_some() {
        bail!(
            "{} and {} both name the password (also through their environment variables): give one",
            o.flag("password-file"),
            o.flag("password-command")
        );
    }
    if let Some(f) = o.password_file {
        let data = std::fs::read(f)
            .with_context(|| format!("cannot read password file {}", f.display()))?;
        let mut first = data.split(|&b| b == b'\n').next().unwrap_or(&[]).to_vec();
        // A file saved on Windows ends its line with CR LF.
        if first.last() == Some(&b'\r') {
            first.pop();
        }
        if first.is_empty() {
            bail!("password file {} is empty", f.display());
        }
        return Ok(Some(Zeroizing::new(first)));
    }
    if let Some(cmd) = o.password_command {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run password command {cmd:?}"))?;
        if !out.status.success() {
            bail!("password command {cmd:?} failed ({})", out.status);
        }
        let pw = strip_newline(out.stdout);
        if pw.is_empty() {
            bail!("password command {cmd:?} printed nothing");
        }
        return Ok(Some(Zeroizing::new(pw)));
    }
    if let Some(p) = std::env::var_os(o.password_env) {
        use std::os::unix::ffi::OsStrExt;
        // As an empty password file is: an empty password is almost always
        // a variable that a script failed to fill, not a choice.
        if p.is_empty() {
            bail!(
                "{} is set but empty: set it to the password, or unset it",
                o.password_env
            );
        }
        return Ok(Some(Zeroizing::new(p.as_bytes().to_vec())));
    }
    Ok(None)
}

/// Ask on the terminal (not echoed).
pub fn prompt(question: &str) -> Result<Zeroizing<Vec<u8>>> {
    let p = rpassword::prompt_password(question)
        .context("cannot read the password from the terminal")?;
    Ok(Zeroizing::new(p.into_bytes()))
}

pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// The secret for an existing repository.
pub fn secret(o: &SecretOpts, is_default: bool, repo_path: &Location) -> Result<Secret> {
    if let Some(k) = o.key_file {
        return Ok(Secret::KeyFile(read_key_file(k)?));
    }
    if let Some(p) = configured_password_from(o)? {
        return Ok(Secret::Passphrase(p));
    }
    let mut missing_key_file = None;
    if is_default {
        let kf = default_key_file()?;
        if kf.exists() {
            return Ok(Secret::KeyFile(read_key_file(&kf)?));
        }
        missing_key_file = Some(kf);
    }
    if interactive() {
        return Ok(Secret::Passphrase(prompt(&format!(
            "enter password for repository {repo_path}: "
        ))?));
    }
    if let Some(kf) = missing_key_file {
        bail!(
            "the default repository's key file {} is missing: put back your copy of it (or give --key-file, or a password if you added one)",
            kf.display()
        );
    }
    bail!(
        "no password for repository {repo_path}: set {}, {}, {} or {}",
        o.password_env,
        o.flag("password-file"),
        o.flag("password-command"),
        o.flag("key-file")
    )
}

/// Does `path` hold a config object, or its copy (which opening falls back
/// to when the config is missing)?
pub fn has_config(path: &Path) -> bool {
    [CONFIG, CONFIG_COPY].iter().any(|n| path.join(n).exists())
}

/// Open the repository the options name.
pub fn open(g: &GlobalOpts) -> Result<Arc<Repository>> {
    let (loc, is_default) = location(g)?;
    // `coffer run` calls several commands in one process: they share the
    // repository it opened (one password, one report of damage at exit).
    if let Some(r) = OPENED.get()
        && r.location() == loc.to_string()
    {
        return Ok(r.clone());
    }
    let repo = open_at(g, &loc, is_default, &g.secret_opts(), cache_root(g))?;
    if !g.quiet {
        repo.set_notifier(Box::new(super::output::notice));
    }
    let _ = OPENED.set(repo.clone());
    Ok(repo)
}

/// Open the repository at `loc` with the secret `o` describes.
pub fn open_at(
    g: &GlobalOpts,
    loc: &Location,
    is_default: bool,
    o: &SecretOpts,
    cache: Option<PathBuf>,
) -> Result<Arc<Repository>> {
    let (backend, checked) = open_existing(g, loc, is_default)?;
    let secret = secret(o, is_default, loc)?;
    Ok(Arc::new(
        Repository::open_checked(backend, checked, &secret)?.with_cache_dir(cache),
    ))
}

/// The store of an existing repository, its format version checked
/// (before a password is asked for); a location with no repository is
/// named, with what to do.
pub fn open_existing(
    g: &GlobalOpts,
    loc: &Location,
    is_default: bool,
) -> Result<(Arc<dyn Backend>, FormatChecked)> {
    if let Location::Local(path) = loc {
        no_local_repository(path, is_default)?;
    }
    let backend = open_backend(g, loc)?;
    let checked = Repository::check_format_for_open(backend.as_ref())?;
    Ok((backend, checked))
}

/// Why the directory `path` holds no repository, if it does not.
fn no_local_repository(path: &Path, is_default: bool) -> Result<()> {
    if has_config(path) {
        return Ok(());
    }
    if is_default {
        bail!(
            "no repository yet at the default location {}: run `coffer backup DIR` to create it, or give --repo",
            path.display()
        );
    }
    if !path.exists() {
        bail!(
            "repository {} does not exist: check --repo or run `coffer init`",
            path.display()
        );
    }
    if !path.is_dir() {
        bail!(
            "{} is a file, not a repository directory: check --repo",
            path.display()
        );
    }
    bail!(
        "{} is not a coffer repository (no config object): check --repo or run `coffer init`",
        path.display()
    )
}

/// The shared lock of a command that only reads, so that no prune deletes
/// what it is reading; none with `--no-lock` (a read-only repository, where
/// the reader accepts that a concurrent prune could pull data from under it).
pub fn read_lock(g: &GlobalOpts, repo: &Arc<Repository>) -> Result<Option<LockGuard>> {
    if g.no_lock {
        return Ok(None);
    }
    match repo.lock(false, lock_timeouts(), wait_lock(g)?) {
        Ok(l) => Ok(Some(l)),
        Err(e @ coffer::Error::Backend { .. }) if cannot_write(&e) => {
            bail!(
                "{e}: the repository cannot be written here; add --no-lock to read it without a lock"
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// A read-only mount or missing permission: a lock can never be taken.
fn cannot_write(e: &coffer::Error) -> bool {
    let coffer::Error::Backend { source, .. } = e else {
        return false;
    };
    matches!(
        source.raw_os_error(),
        Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM)
    )
}

/// The lock of a command that writes (shared for adding, exclusive for
/// deleting); `--no-lock` is refused, since what it writes needs one.
pub fn write_lock(
    g: &GlobalOpts,
    repo: &Arc<Repository>,
    exclusive: bool,
    command: &str,
) -> Result<LockGuard> {
    if g.no_lock {
        bail!(
            "--no-lock: {command} writes to the repository and needs its lock (only commands that only read take --no-lock)"
        );
    }
    lock_to_write(g, repo, exclusive, command)
}

/// [`write_lock`] whatever `--no-lock` says (copy's destination: the flag
/// is about its source); a signal then leaves the repository clean.
pub fn lock_to_write(
    g: &GlobalOpts,
    repo: &Arc<Repository>,
    exclusive: bool,
    command: &str,
) -> Result<LockGuard> {
    let guard = repo.lock(exclusive, lock_timeouts(), wait_lock(g)?)?;
    super::signals::abandon_on_signal(repo.clone(), interrupted_outcome(command));
    Ok(guard)
}

/// What stopping `command` part-way leaves, in the words a user needs.
fn interrupted_outcome(command: &str) -> &'static str {
    match command {
        "backup" | "import-tar" => {
            "no snapshot was recorded; what was already stored is reused by the next run"
        }
        "copy" => "the snapshots already copied are complete; the next copy goes on from there",
        "forget" => "the snapshots already removed stay removed, the others stay",
        "prune" => "nothing still in use was deleted; run prune again to finish",
        _ => "what was written is complete; run the command again to finish",
    }
}

/// Lock timeouts: the defaults, or `COFFER_LOCK_STALE_SECS` (for tests and
/// unusual setups; refresh and margin scale with it).
pub fn lock_timeouts() -> coffer::repository::lock::LockTimeouts {
    use coffer::repository::lock::LockTimeouts;
    match std::env::var("COFFER_LOCK_STALE_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(s) if s > 0 => LockTimeouts::with_stale(std::time::Duration::from_secs(s)),
        _ => LockTimeouts::default(),
    }
}

/// `--wait-lock` as a duration (default: do not wait).
pub fn wait_lock(g: &GlobalOpts) -> Result<std::time::Duration> {
    match &g.wait_lock {
        None => Ok(std::time::Duration::ZERO),
        Some(s) => {
            let s = s.trim();
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: u64 = num
                .parse()
                .map_err(|_| anyhow!("--wait-lock {s:?}: give e.g. 30s, 10m or 1h"))?;
            let secs = match unit {
                "" | "s" => n,
                "m" => n * 60,
                "h" => n * 3600,
                _ => bail!("--wait-lock {s:?}: give e.g. 30s, 10m or 1h"),
            };
            Ok(std::time::Duration::from_secs(secs))
        }
    }
}
