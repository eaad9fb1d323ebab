//! What runs around the commands of a profile's job: its hooks
//! (`before-backup`, `after-backup`, `on-failure`, each through `sh -c`)
//! and the metrics file. `backup` uses it when a profile gives hooks or a
//! metrics file is asked for; `run` for all of its steps.

use super::commands::backup::{self, BackupArgs, Done};
use super::{GlobalOpts, metrics, output, repo};
use anyhow::{Result, anyhow};
use std::os::fd::AsFd;
use std::process::{ExitCode, Stdio};
use std::time::Instant;

/// The step of a job that failed, and why.
pub struct StepFailed {
    pub step: &'static str,
    pub error: anyhow::Error,
}

pub fn failed(step: &'static str) -> impl FnOnce(anyhow::Error) -> StepFailed {
    move |error| StepFailed { step, error }
}

/// `backup`: with the profile's hooks and the metrics file, when there
/// are any; a dry run records nothing, so it runs neither.
pub fn backup(g: &GlobalOpts, a: &BackupArgs) -> Result<ExitCode> {
    let hooks = g.settings.profile.as_ref().is_some_and(|l| {
        let p = &l.p;
        p.before_backup.is_some() || p.after_backup.is_some() || p.on_failure.is_some()
    });
    if a.dry_run || (!hooks && g.metrics_file.is_none()) {
        return backup::run(g, a);
    }
    let mut job = Job::new(g, "backup");
    let r = job.backup(a);
    job.finish(r)
}

/// One backup or run: what it did so far, for its hooks and metrics.
pub struct Job<'a> {
    g: &'a GlobalOpts,
    command: &'static str,
    started: Instant,
    /// A step completed with warnings (exit 3): the job ends with 3.
    warned: bool,
    backup: Option<Done>,
}

impl<'a> Job<'a> {
    pub fn new(g: &'a GlobalOpts, command: &'static str) -> Self {
        Job {
            g,
            command,
            started: Instant::now(),
            warned: false,
            backup: None,
        }
    }

    fn profile_name(&self) -> &str {
        self.g
            .settings
            .profile
            .as_ref()
            .map_or("", |l| l.name.as_str())
    }

    /// A short header before each step of `run`.
    pub fn header(&self, step: &str) {
        if !self.g.quiet {
            output::notice(&format!(
                "== {} {}: {step}",
                self.command,
                self.profile_name()
            ));
        }
    }

    /// The hooks, the backup, its outcome.
    pub fn backup(&mut self, a: &BackupArgs) -> Result<(), StepFailed> {
        self.hook("before-backup", &[])
            .map_err(|e| anyhow!("{}; no backup was made", output::message(&e)))
            .map_err(failed("before-backup"))?;
        let done = backup::backup(self.g, a).map_err(failed("backup"))?;
        self.warned |= done.code != ExitCode::SUCCESS;
        let id = done.snapshot.map(|i| i.to_hex()).unwrap_or_default();
        let env = [
            ("COFFER_SNAPSHOT_ID", id.clone()),
            ("COFFER_EXIT_CODE", self.code().to_string()),
            ("COFFER_SUMMARY", one_line(&done)),
            ("COFFER_SUMMARY_JSON", output::json_line(&done.json)),
        ];
        self.backup = Some(done);
        self.hook("after-backup", &env)
            .map_err(|e| anyhow!("{} (snapshot {id} was saved)", output::message(&e)))
            .map_err(failed("after-backup"))
    }

    /// A step of `run` other than the backup.
    pub fn step(
        &mut self,
        step: &'static str,
        f: impl FnOnce() -> Result<ExitCode>,
    ) -> Result<(), StepFailed> {
        self.header(step);
        let code = f().map_err(failed(step))?;
        self.warned |= code != ExitCode::SUCCESS;
        Ok(())
    }

    /// The exit code so far, the job having not failed.
    fn code(&self) -> u8 {
        if self.warned { 3 } else { 0 }
    }

    /// Run hook `which` of the profile, if it has one. Its output goes to
    /// stderr: stdout stays coffer's (`--json`).
    fn hook(&self, which: &'static str, env: &[(&str, String)]) -> Result<()> {
        let Some(l) = self.g.settings.profile.as_ref() else {
            return Ok(());
        };
        let cmd = match which {
            "before-backup" => &l.p.before_backup,
            "after-backup" => &l.p.after_backup,
            _ => &l.p.on_failure,
        };
        let Some(cmd) = cmd else { return Ok(()) };
        let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("COFFER_PROFILE", &l.name)
            .env("COFFER_HOOK", which)
            .env("COFFER_COMMAND", self.command)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr))
            .status()
            .map_err(|e| anyhow!("cannot run the {which} hook {cmd:?}: {e}"))?;
        if !status.success() {
            return Err(anyhow!("the {which} hook failed ({status}): {cmd}"));
        }
        Ok(())
    }

    /// Run `on-failure` if the job failed, write the metrics file, and give
    /// the job's exit code (or its error).
    pub fn finish(self, r: Result<(), StepFailed>) -> Result<ExitCode> {
        let (code, result) = match r {
            Ok(()) => (self.code(), Ok(ExitCode::from(self.code()))),
            Err(f) => (1, Err(self.failure(f))),
        };
        let Some(path) = &self.g.metrics_file else {
            return result;
        };
        let written = metrics::write(path, &self.metrics(code), now_secs());
        match (result, written) {
            (Ok(_), Err(e)) => Err(e),
            (Err(e), Err(w)) => {
                output::warn(&output::message(&w));
                Err(e)
            }
            (result, Ok(())) => result,
        }
    }

    /// The on-failure hook, and the error the job ends with.
    fn failure(&self, f: StepFailed) -> anyhow::Error {
        let mut env = vec![
            ("COFFER_FAILED_STEP", f.step.to_string()),
            ("COFFER_ERROR", output::message(&f.error)),
            ("COFFER_EXIT_CODE", "1".to_string()),
        ];
        if let Some(id) = self.backup.as_ref().and_then(|d| d.snapshot) {
            env.push(("COFFER_SNAPSHOT_ID", id.to_hex()));
        }
        if let Err(e) = self.hook("on-failure", &env) {
            output::warn(&output::message(&e));
        }
        if self.command == "run" {
            f.error.context(format!(
                "run {}: step {} failed",
                self.profile_name(),
                f.step
            ))
        } else {
            f.error
        }
    }

    fn metrics(&self, exit_code: u8) -> metrics::Metrics {
        let s = self.backup.as_ref().map(|d| &d.summary);
        let repo = repo::OPENED.get();
        metrics::Metrics {
            profile: self.profile_name().to_string(),
            command: self.command,
            exit_code,
            duration_secs: self.started.elapsed().as_secs_f64(),
            files_read: s.map(|s| s.files_new + s.files_changed),
            bytes_read: s.map(|s| s.bytes_read),
            bytes_added: s.map(|s| s.bytes_added),
            warnings: s.map(|s| s.warnings),
            snapshots: repo
                .and_then(|r| r.list_snapshots().ok())
                .map(|l| l.len() as u64),
            repository_bytes: repo
                .and_then(|r| r.index().ok()?.packs().ok())
                .map(|p| p.iter().map(|(_, size)| size).sum()),
        }
    }
}

/// `COFFER_SUMMARY`: the backup in one line, for a notification.
fn one_line(d: &Done) -> String {
    let s = &d.summary;
    format!(
        "snapshot {} saved: {} ({} new, {} changed), {} read, {} added, {} in {:.1}s",
        d.snapshot.map(|i| i.short()).unwrap_or_default(),
        output::count(s.total_files, "file", "files"),
        s.files_new,
        s.files_changed,
        output::bytes(s.bytes_read),
        output::bytes(s.bytes_added),
        output::count(s.warnings, "warning", "warnings"),
        s.duration_ms as f64 / 1000.0
    )
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
