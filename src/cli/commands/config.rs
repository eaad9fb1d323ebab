//! `coffer [-P NAME] config show`: each setting in force and where it came
//! from (flag, environment variable, profile, default).

use crate::cli::profile::{self, Setting, Source};
use crate::cli::{GlobalOpts, output};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer -P nightly config show
  coffer -P nightly config show --json")]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print each setting in force and where it came from
    #[command(after_help = "Examples:
  coffer -P nightly config show
  coffer -P nightly --repo /mnt/other config show --json")]
    Show,
}

pub fn run(g: &GlobalOpts, a: &ConfigArgs) -> Result<ExitCode> {
    match a.command {
        ConfigCommand::Show => show(g),
    }
}

fn show(g: &GlobalOpts) -> Result<ExitCode> {
    let loaded = g.settings.profile.as_ref();
    let mut settings = g.settings.globals.clone();
    if let Some(l) = loaded {
        settings.extend(profile::job_settings(&l.p)?);
    }
    let file = loaded.map(|l| l.file.display().to_string());
    if g.json {
        let list: Vec<serde_json::Value> = settings.iter().map(|s| json(s, &file)).collect();
        output::json(&serde_json::json!({
            "profile": loaded.map(|l| l.name.clone()),
            "file": file,
            "settings": list,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    match (loaded, &file) {
        (Some(l), Some(f)) => output::line(&format!("# profile {} in {f}", l.name)),
        _ => output::line(&format!(
            "# no profile (-P NAME selects a [profiles.NAME] of {})",
            profile::config_path(g)?.display()
        )),
    }
    for s in &settings {
        if s.value.is_null() {
            output::line(&format!("# {}: not set", s.key));
            continue;
        }
        let from = match (&s.source, &file) {
            (Source::Profile, Some(f)) => format!("profile {f}"),
            (src, _) => src.to_string(),
        };
        output::line(&format!("{} = {}  # {from}", s.key, s.value));
    }
    Ok(ExitCode::SUCCESS)
}

fn json(s: &Setting, file: &Option<String>) -> serde_json::Value {
    let (source, variable) = match &s.source {
        Source::Flag => ("flag", None),
        Source::Env(v) => ("env", Some(v.clone())),
        Source::Profile => ("profile", None),
        Source::Default => ("default", None),
    };
    serde_json::json!({
        "key": s.key,
        "value": s.value,
        "source": source,
        "variable": variable,
        "file": file.clone().filter(|_| s.source == Source::Profile),
    })
}
