//! `coffer completions SHELL`: a completion script on stdout, generated
//! from the same clap definitions the parser uses, so it never lags a flag.

use crate::cli::{Cli, output};
use anyhow::Result;
use clap::{Args, CommandFactory};
use clap_complete::Shell;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer completions bash > ~/.local/share/bash-completion/completions/coffer
  coffer completions zsh > ~/.zfunc/_coffer
  coffer completions fish > ~/.config/fish/completions/coffer.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for
    pub shell: Shell,
}

pub fn run(a: &CompletionsArgs) -> Result<ExitCode> {
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "coffer", &mut out);
    output::raw(&out);
    Ok(ExitCode::SUCCESS)
}
