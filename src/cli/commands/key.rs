//! `coffer key list|add|remove|passwd|export`: the key slots that open a
//! repository. Every new slot is verified against the repository before
//! the command reports success, and `passwd` removes the old slot only
//! after the new one opens (doc/reliability.md H-5, A8). New passphrases come
//! from the terminal (asked twice, not echoed) or a file, never from the
//! command line; new key files are created 0600 and never overwrite.

use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use coffer::crypto::key_file::{KdfParams, KeyFileSecret, SlotKind};
use coffer::id::KeyId;
use coffer::repository::{Repository, Secret};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zeroize::Zeroizing;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer key list
  coffer key add --new-key-file ~/coffer-second.key
  coffer key passwd")]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the keys (id, kind, user, host, creation time; `*` marks the one in use)
    #[command(after_help = "Examples:
  coffer key list
  coffer key list --json")]
    List,
    /// Add a key: a new passphrase (asked twice, or from a file) or a new key file
    Add(AddArgs),
    /// Remove a key (not the one in use, never the last one)
    Remove(RemoveArgs),
    /// Change the passphrase in use: add the new key, verify it, then remove the old one
    Passwd(PasswdArgs),
    /// Write a recovery key file that opens the repository without any passphrase
    Export(ExportArgs),
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer key add
  coffer key add --new-password-file ~/new-password
  coffer key add --new-key-file ~/coffer-second.key")]
pub struct AddArgs {
    /// Read the new passphrase from this file (first line) instead of the terminal
    #[arg(long, conflicts_with = "new_key_file")]
    pub new_password_file: Option<PathBuf>,
    /// Create a new key file here (mode 0600) instead of a passphrase
    #[arg(long)]
    pub new_key_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer key remove 1a2b3c4d")]
pub struct RemoveArgs {
    /// The key id (or a unique prefix of at least 4 hex digits), from `coffer key list`
    pub id: String,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer key passwd
  coffer key passwd --new-password-file ~/new-password")]
pub struct PasswdArgs {
    /// Read the new passphrase from this file (first line) instead of the terminal
    #[arg(long)]
    pub new_password_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer key export --file ~/coffer-recovery.key")]
pub struct ExportArgs {
    /// Where to write the recovery key file (created 0600; never overwritten)
    #[arg(long)]
    pub file: PathBuf,
}

pub fn run(g: &GlobalOpts, a: &KeyArgs) -> Result<ExitCode> {
    match &a.command {
        KeyCommand::List => list(g),
        KeyCommand::Add(a) => add(g, a),
        KeyCommand::Remove(a) => remove(g, a),
        KeyCommand::Passwd(a) => passwd(g, a),
        KeyCommand::Export(a) => export(g, a),
    }
}

fn kind_str(k: Option<SlotKind>) -> &'static str {
    match k {
        Some(SlotKind::Passphrase) => "passphrase",
        Some(SlotKind::KeyFile) => "key file",
        None => "unreadable",
    }
}

fn list(g: &GlobalOpts) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let current = *repo.key_id();
    let keys = repo.list_keys()?;
    if g.json {
        let v: Vec<serde_json::Value> = keys
            .iter()
            .map(|(id, kind, meta)| {
                let mut o = serde_json::json!({
                    "id": id.to_hex(),
                    "short_id": id.short(),
                    "current": *id == current,
                    "kind": kind_str(*kind),
                });
                match meta {
                    Ok(m) => {
                        o["hostname"] = m.hostname.clone().into();
                        o["username"] = m.username.clone().into();
                        o["created"] = output::rfc3339(m.created_unix_ns).into();
                    }
                    Err(e) => o["error"] = e.clone().into(),
                }
                o
            })
            .collect();
        output::json(&serde_json::Value::Array(v));
        return Ok(ExitCode::SUCCESS);
    }
    output::line(&format!(
        " {:<9} {:<11} {:<12} {:<20} Created",
        "ID", "Kind", "User", "Host"
    ));
    output::line(&"-".repeat(76));
    for (id, kind, meta) in &keys {
        let mark = if *id == current { '*' } else { ' ' };
        let rest = match meta {
            Ok(m) => format!(
                "{:<12} {:<20} {}",
                m.username,
                m.hostname,
                output::short_time(m.created_unix_ns)
            ),
            Err(e) => format!("(cannot read its metadata: {e})"),
        };
        output::line(&format!(
            "{mark}{:<9} {:<11} {rest}",
            id.short(),
            kind_str(*kind)
        ));
    }
    output::line(&"-".repeat(76));
    output::line(&format!("{} keys; * marks the key in use", keys.len()));
    Ok(ExitCode::SUCCESS)
}

/// The first line of `path`, without its newline; refuses an empty one.
fn read_password_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let data = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("cannot read password file {}", path.display()))?,
    );
    let mut first = Zeroizing::new(data.split(|&b| b == b'\n').next().unwrap_or(&[]).to_vec());
    if first.last() == Some(&b'\r') {
        first.pop();
    }
    if first.is_empty() {
        bail!("password file {} is empty", path.display());
    }
    Ok(first)
}

/// A new passphrase: from `file`, else asked twice on the terminal.
fn new_passphrase(file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(f) = file {
        return read_password_file(f);
    }
    if !repo::interactive() {
        bail!("no new password: give --new-password-file FILE, or run on a terminal to be asked");
    }
    let pw = repo::prompt("enter the new password: ")?;
    let again = repo::prompt("enter the new password again: ")?;
    if pw != again {
        bail!("the passwords do not match; nothing was changed");
    }
    if pw.is_empty() {
        bail!("an empty password is not allowed; nothing was changed");
    }
    Ok(pw)
}

fn report(g: &GlobalOpts, kind: &str, id: &KeyId, text: String) {
    if g.json {
        output::json(&serde_json::json!({
            "message_type": kind,
            "id": id.to_hex(),
            "short_id": id.short(),
        }));
    } else if !g.quiet {
        output::line(&text);
    }
}

/// Write a new key file at `path`, then add and verify its slot; the key
/// file is removed again when the slot cannot be added.
fn add_key_file(repo: &Repository, path: &Path) -> Result<KeyId> {
    if std::fs::symlink_metadata(path).is_ok() {
        bail!(
            "{} already exists: a key file is never overwritten; choose another name",
            path.display()
        );
    }
    let kf = KeyFileSecret::generate(*repo.id());
    super::init::write_key_file(path, &kf)?;
    // Read back what was written, exactly as a later `--key-file` will.
    let added = repo::read_key_file(path)
        .and_then(|back| Ok(repo.add_key(&Secret::KeyFile(back), KdfParams::default())?));
    match added {
        Ok(id) => Ok(id),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e.context(format!(
                "no key was added and {} was removed",
                path.display()
            )))
        }
    }
}

fn add(g: &GlobalOpts, a: &AddArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    if let Some(path) = &a.new_key_file {
        let id = add_key_file(&repo, path)?;
        report(
            g,
            "key_added",
            &id,
            format!(
                "added key {} (key file {}); keep a copy of the key file somewhere safe",
                id.short(),
                path.display()
            ),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let pw = new_passphrase(a.new_password_file.as_deref())?;
    let id = repo.add_key(&Secret::Passphrase(pw), KdfParams::default())?;
    report(
        g,
        "key_added",
        &id,
        format!("added key {} (passphrase)", id.short()),
    );
    Ok(ExitCode::SUCCESS)
}

fn remove(g: &GlobalOpts, a: &RemoveArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let id = repo.resolve_key(&a.id)?;
    repo.remove_key(&id)?;
    report(g, "key_removed", &id, format!("removed key {}", id.short()));
    Ok(ExitCode::SUCCESS)
}

/// Open the repository as a handle of its own (not shared like
/// [`repo::open`]'s), because `passwd` changes which key the handle uses.
fn open_owned(g: &GlobalOpts) -> Result<Repository> {
    let (loc, is_default) = repo::location(g)?;
    let (backend, checked) = repo::open_existing(g, &loc, is_default)?;
    let secret = repo::secret(&g.secret_opts(), is_default, &loc)?;
    Ok(Repository::open_checked(backend, checked, &secret)?)
}

fn passwd(g: &GlobalOpts, a: &PasswdArgs) -> Result<ExitCode> {
    let mut repo = open_owned(g)?;
    let old = *repo.key_id();
    let pw = new_passphrase(a.new_password_file.as_deref())?;
    let id = repo.change_passphrase(&Secret::Passphrase(pw), KdfParams::default())?;
    report(
        g,
        "key_changed",
        &id,
        format!(
            "changed the password: key {} replaces key {}",
            id.short(),
            old.short()
        ),
    );
    Ok(ExitCode::SUCCESS)
}

fn export(g: &GlobalOpts, a: &ExportArgs) -> Result<ExitCode> {
    let repo = repo::open(g)?;
    let id = add_key_file(&repo, &a.file)?;
    report(
        g,
        "key_exported",
        &id,
        format!(
            "wrote recovery key file {} (key {}) for repository {}.\n  It opens the repository with no password: store it away from this machine, and `coffer key remove {}` revokes it.",
            a.file.display(),
            id.short(),
            repo.id().short(),
            id.short()
        ),
    );
    Ok(ExitCode::SUCCESS)
}
