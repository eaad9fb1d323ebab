//! `coffer -P NAME run`: a profile's nightly job in one command. Its steps,
//! each only when the profile asks for it: backup (with its hooks), forget
//! (keep-* rules), prune (after forget, when due: prune-every), copy
//! (copy-to) and check (check-subset). The first failure stops the job and
//! names its step; a step's warnings (exit 3) do not stop it, and the job
//! then ends with 3.

use super::check::CheckArgs;
use super::copy::{self, CopyArgs};
use super::prune::PruneArgs;
use super::{check, forget, prune};
use crate::cli::job::{Job, StepFailed, failed, now_secs};
use crate::cli::profile::{self, Profile, PruneEvery};
use crate::cli::{GlobalOpts, repo};
use anyhow::{Result, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer -P nightly run
  coffer -P nightly --json run")]
pub struct RunArgs {}

pub fn run(g: &GlobalOpts, _a: &RunArgs) -> Result<ExitCode> {
    let Some(l) = g.settings.profile.as_ref() else {
        bail!(
            "run needs a profile: `coffer -P NAME run`, with a [profiles.NAME] table in {}",
            profile::config_path(g)?.display()
        );
    };
    let mut job = Job::new(g, "run");
    let r = steps(g, &mut job, &l.p);
    job.finish(r)
}

fn steps(g: &GlobalOpts, job: &mut Job, p: &Profile) -> Result<(), StepFailed> {
    let backup = profile::backup_args(p).map_err(failed("backup"))?;
    job.header("backup");
    job.backup(&backup)?;
    if p.has_keep_rules() {
        let mut a = profile::forget_args(p).map_err(failed("forget"))?;
        // This machine's job forgets this machine's snapshots, not those
        // other hosts keep in the same repository by their own rules.
        if a.filter.hosts.is_empty() {
            a.filter.hosts.push(
                backup
                    .host
                    .clone()
                    .unwrap_or_else(coffer::repository::hostname),
            );
        }
        job.step("forget", || forget::run(g, &a))?;
        if prune_due(g, p).map_err(failed("prune"))? {
            let max_unused = a.prune_args.max_unused.clone();
            job.step("prune", || prune(g, &max_unused))?;
        }
    }
    if let Some(to) = &p.copy_to {
        job.step("copy", || copy_to(g, p, to))?;
    }
    if let Some(s) = &p.check_subset {
        job.step("check", || check_slice(g, s))?;
    }
    Ok(())
}

/// Where the time of the last prune of this repository is kept: beside
/// its index cache (none with --no-cache: then every run prunes).
fn prune_stamp(g: &GlobalOpts) -> Result<Option<PathBuf>> {
    let Some(root) = repo::cache_root(g) else {
        return Ok(None);
    };
    let r = repo::open(g)?;
    Ok(Some(root.join(r.id().to_hex()).join("last-prune")))
}

/// Is a prune due after this forget? `prune-every`: always (the default),
/// never, or at most once in a duration.
fn prune_due(g: &GlobalOpts, p: &Profile) -> Result<bool> {
    let every = match &p.prune_every {
        None => PruneEvery::Always,
        Some(s) => profile::prune_every(s).map_err(|e| anyhow::anyhow!("prune-every: {e}"))?,
    };
    let secs = match every {
        PruneEvery::Always => return Ok(true),
        PruneEvery::Never => return Ok(false),
        PruneEvery::Secs(s) => s,
    };
    let Some(stamp) = prune_stamp(g)? else {
        return Ok(true);
    };
    let last = std::fs::read_to_string(&stamp)
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok());
    Ok(last.is_none_or(|t| now_secs() as i64 - t >= secs))
}

fn prune(g: &GlobalOpts, max_unused: &str) -> Result<ExitCode> {
    let (a, _, _) = profile::parse_args::<PruneArgs>("prune", &["--max-unused", max_unused])?;
    let code = prune::run(g, &a)?;
    if let Some(stamp) = prune_stamp(g)? {
        write_stamp(&stamp)?;
    }
    Ok(code)
}

fn write_stamp(stamp: &Path) -> Result<()> {
    if let Some(dir) = stamp.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(stamp, format!("{}\n", now_secs())).map_err(|e| {
        anyhow::anyhow!(
            "cannot record the time of this prune in {}: {e}",
            stamp.display()
        )
    })
}

/// Copy the profile's repository into `copy-to`, opened with its own
/// copy-to-* secret, or with the profile's when it gives none (a replica
/// made with `init --from-repo` and the same password).
fn copy_to(g: &GlobalOpts, p: &Profile, to: &Path) -> Result<ExitCode> {
    let src = repo::open(g)?;
    let loc = coffer::backend::Location::parse_os(to.as_os_str())?;
    let own = p.copy_to_password_file.is_some()
        || p.copy_to_password_command.is_some()
        || p.copy_to_key_file.is_some();
    let secret = if own {
        repo::SecretOpts {
            password_env: "COFFER_COPY_TO_PASSWORD",
            password_file: p.copy_to_password_file.as_deref(),
            password_command: p.copy_to_password_command.as_deref(),
            key_file: p.copy_to_key_file.as_deref(),
        }
    } else {
        g.secret_opts()
    };
    let dst = repo::open_at(g, &loc, false, &secret, repo::cache_root(g))?;
    let (a, _, _) = profile::parse_args::<CopyArgs>("copy", &[])?;
    copy::copy(g, src, dst, &a)
}

/// `check --read-data-subset` with the profile's slice (`rotate/M`: the
/// slice of the day).
fn check_slice(g: &GlobalOpts, subset: &str) -> Result<ExitCode> {
    let slice = profile::check_subset(subset, now_secs() / 86_400)
        .map_err(|e| anyhow::anyhow!("check-subset: {e}"))?;
    let (a, _, _) = profile::parse_args::<CheckArgs>("check", &["--read-data-subset", &slice])?;
    check::run(g, &a)
}
