//! `coffer manpage [--dir DIR]`: manual pages (roff) from the clap
//! definitions, each command's examples included.

use crate::cli::{Cli, output};
use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer manpage --dir ~/.local/share/man/man1
  coffer manpage | man -l -")]
pub struct ManpageArgs {
    /// Write coffer.1 and one page per command (coffer-backup.1, ...) into
    /// this directory (created if missing) instead of the main page to stdout
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn run(a: &ManpageArgs) -> Result<ExitCode> {
    // No page for clap's `help` command, so the main page names none.
    let cmd = Cli::command().disable_help_subcommand(true);
    match &a.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write manual pages into {}", dir.display()))?;
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            output::raw(&out);
        }
    }
    Ok(ExitCode::SUCCESS)
}
