//! The `coffer` binary: parse arguments, run a command, map the outcome to
//! an exit code (0 ok, 1 failure, 3 completed with unreadable or changed
//! files). All logic lives in the library; `cli` only parses and prints.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            cli::output::error(&e);
            ExitCode::from(1)
        }
    }
}
