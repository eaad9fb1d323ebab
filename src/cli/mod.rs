//! Command-line definitions and dispatch. Flags follow restic's where a
//! restic user would look for them.

pub mod commands;
#[cfg(test)]
mod help_examples;
pub mod job;
pub mod metrics;
pub mod output;
pub mod profile;
pub mod progress_bars;
pub mod repo;
pub mod signals;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (writes repository format version 1)"
);

#[derive(Parser)]
#[command(
    name = "coffer",
    version = LONG_VERSION,
    about = "Content-addressed, deduplicating, encrypted backups",
    long_about = "Content-addressed, deduplicating, encrypted backups.\n\nWith no --repo and no COFFER_REPOSITORY, coffer uses a default repository under $XDG_DATA_HOME/coffer/default, opened with a generated key file under $XDG_CONFIG_HOME/coffer/.",
    after_help = "Examples:
  coffer backup ~/projects /etc
  coffer snapshots
  coffer restore latest --target /tmp/r"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, listed under their own heading in each
/// command's `--help` so that its own options stand apart.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOpts {
    /// Repository location: a directory, or s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]
    #[arg(short = 'r', long, global = true, env = "COFFER_REPOSITORY")]
    pub repo: Option<PathBuf>,
    /// Backend option KEY=VALUE, repeatable: s3.connections=N (8),
    /// s3.region=R, s3.timeout=60s (no progress for this long fails a
    /// request), s3.virtual-host=true, retries=N (10), retry-base=250ms
    #[arg(long = "option", global = true, value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Say more: -v names each file backup and import-tar read and restore
    /// writes, the packs prune removes or repacks, the trees copy read and
    /// skipped, each retried request to a remote store and the requests a
    /// command sent; -vv also the files left unchanged, and each request
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Read the repository password from a file (first line)
    #[arg(long, global = true, env = "COFFER_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Run a shell command and use its output as the password
    #[arg(long, global = true, env = "COFFER_PASSWORD_COMMAND")]
    pub password_command: Option<String>,
    /// Open the repository with a key file instead of a password
    #[arg(long, global = true, env = "COFFER_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Directory for the local index cache
    #[arg(long, global = true, env = "COFFER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Keep no local cache (the index is rebuilt in memory on each run)
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Machine-readable JSON output
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress, notices or summaries: only errors, warnings and what the
    /// command is asked to show (a listing, a file, the snapshot table)
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Wait this long for a conflicting lock to go away (e.g. 10m)
    #[arg(long, global = true)]
    pub wait_lock: Option<String>,
    /// Take no lock on a repository that is only read (snapshots, ls,
    /// restore, dump, check, stats, copy's source), for one you cannot
    /// write to; commands that write refuse it
    #[arg(long, global = true)]
    pub no_lock: bool,
    /// Use the settings of this profile of the config file; flags and
    /// environment variables override them
    #[arg(short = 'P', long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// The config file of profiles (default: $XDG_CONFIG_HOME/coffer/config.toml)
    #[arg(long, global = true, env = "COFFER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write Prometheus metrics of a backup or run to FILE (node_exporter's
    /// textfile collector), replaced atomically
    #[arg(long, global = true, env = "COFFER_METRICS_FILE", value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// The profile in use and where each setting came from
    #[arg(skip)]
    pub settings: std::sync::Arc<profile::Applied>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a new repository
    Init(commands::init::InitArgs),
    /// Back up files and directories into a new snapshot
    Backup(commands::backup::BackupArgs),
    /// Run a profile's nightly job: backup, forget, prune, copy, check
    Run(commands::run::RunArgs),
    /// Show the settings in force (with -P: a profile's) and where each came from
    Config(commands::config::ConfigArgs),
    /// List snapshots
    Snapshots(commands::snapshots::SnapshotsArgs),
    /// List the files in a snapshot
    Ls(commands::ls::LsArgs),
    /// Restore a snapshot (or part of it) into a directory
    Restore(commands::restore::RestoreArgs),
    /// Remove snapshots by id or by a keep policy
    Forget(commands::forget::ForgetArgs),
    /// Remove data no snapshot references
    Prune(commands::prune::PruneArgs),
    /// Verify the repository's structure and, optionally, its data
    Check(commands::check::CheckArgs),
    /// Rebuild the index or rewrite damaged snapshots
    Repair(commands::repair::RepairArgs),
    /// Remove stale locks
    Unlock(commands::unlock::UnlockArgs),
    /// Restore a random sample into a temp dir and verify every byte
    Drill(commands::drill::DrillArgs),
    /// Show the snapshots as a read-only filesystem (FUSE) until unmounted
    Mount(commands::mount::MountArgs),
    /// Write a file from a snapshot to stdout (a directory as tar)
    Dump(commands::dump::DumpArgs),
    /// Show what changed between two snapshots
    Diff(commands::diff::DiffArgs),
    /// Find files and directories in snapshots by name, time, blob or pack
    Find(commands::find::FindArgs),
    /// Count what snapshots hold: restored size, or distinct stored data
    Stats(commands::stats::StatsArgs),
    /// Copy snapshots from another repository (--from-repo) into this one
    Copy(commands::copy::CopyArgs),
    /// Import a tar, tar.gz or tar.zst archive as a snapshot of /NAME
    ImportTar(commands::import_tar::ImportTarArgs),
    /// Write a snapshot's directory as a tar archive (the inverse of import-tar)
    ExportTar(commands::export_tar::ExportTarArgs),
    /// Print repository objects as JSON (for debugging)
    Cat(commands::cat::CatArgs),
    /// Manage the keys (passphrases and key files) that open the repository
    Key(commands::key::KeyArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(commands::completions::CompletionsArgs),
    /// Write manual pages: the main page to stdout, or one per command into --dir
    Manpage(commands::manpage::ManpageArgs),
}

/// Parse arguments and run. Exit codes: 0 ok, 1 failure (as `Err`),
/// 3 completed with unreadable or changed files.
pub fn run() -> anyhow::Result<ExitCode> {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|c| (c, m)));
    let cli = match parsed {
        Ok((mut cli, m)) => {
            profile::apply(&mut cli, &m)?;
            cli
        }
        // A usage error is a failure like any other (exit 1, as restic's
        // are), not clap's own 2, which scripts would not expect; help and
        // --version are successes.
        Err(e) => {
            let _ = e.print();
            return Ok(if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
    };
    let g = &cli.global;
    if !g.quiet || g.verbose > 0 {
        coffer::backend::retry::set_reporter(Box::new(output::notice), g.verbose > 0);
    }
    coffer::backend::s3::set_trace(g.verbose > 1);
    let code = dispatch(&cli, g);
    // Damaged objects that were skipped: name each, and never exit 0.
    if let Some(repo) = repo::OPENED.get() {
        // The repository lives in a static, which is never dropped.
        repo.close_cache();
        if g.verbose > 0
            && let Some(r) = repo.requests()
        {
            report_requests(&repo.location(), &r);
        }
        let problems = repo.take_problems();
        for p in &problems {
            output::warn(p);
        }
        if !problems.is_empty() && matches!(code, Ok(c) if c == ExitCode::SUCCESS) {
            return Ok(ExitCode::from(3));
        }
    }
    code
}

/// `-v`: what the command cost a remote store, e.g. "coffer: 11 requests
/// to s3:… (GET 3, PUT 2, LIST 5, DELETE 1), 1.2 KiB sent, 3.4 KiB received".
fn report_requests(location: &str, r: &coffer::backend::Requests) {
    let each: Vec<String> = r
        .by_method()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    output::notice(&format!(
        "coffer: {} requests to {location} ({}), {} sent, {} received",
        r.total(),
        each.join(", "),
        output::bytes(r.sent),
        output::bytes(r.received)
    ));
}

fn dispatch(cli: &Cli, g: &GlobalOpts) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Init(a) => commands::init::run(g, a),
        Command::Backup(a) => job::backup(g, a),
        Command::Run(a) => commands::run::run(g, a),
        Command::Config(a) => commands::config::run(g, a),
        Command::Snapshots(a) => commands::snapshots::run(g, a),
        Command::Ls(a) => commands::ls::run(g, a),
        Command::Restore(a) => commands::restore::run(g, a),
        Command::Dump(a) => commands::dump::run(g, a),
        Command::Mount(a) => commands::mount::run(g, a),
        Command::Diff(a) => commands::diff::run(g, a),
        Command::Find(a) => commands::find::run(g, a),
        Command::Stats(a) => commands::stats::run(g, a),
        Command::Copy(a) => commands::copy::run(g, a),
        Command::ImportTar(a) => commands::import_tar::run(g, a),
        Command::ExportTar(a) => commands::export_tar::run(g, a),
        Command::Forget(a) => commands::forget::run(g, a),
        Command::Prune(a) => commands::prune::run(g, a),
        Command::Check(a) => commands::check::run(g, a),
        Command::Repair(a) => commands::repair::run(g, a),
        Command::Unlock(a) => commands::unlock::run(g, a),
        Command::Drill(a) => commands::drill::run(g, a),
        Command::Cat(a) => commands::cat::run(g, a),
        Command::Key(a) => commands::key::run(g, a),
        Command::Completions(a) => commands::completions::run(a),
        Command::Manpage(a) => commands::manpage::run(a),
    }
}
