//! `coffer init`, and the zero-configuration default repository.

use crate::cli::{GlobalOpts, output, repo};
use anyhow::{Context, Result, bail};
use clap::Args;
use coffer::backend::Location;
use coffer::backend::local::LocalBackend;
use coffer::crypto::key_file::{KdfParams, KeyFileSecret};
use coffer::repository::config::Config;
use coffer::repository::{InitSecret, Repository, new_repo_id};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer init
  coffer init --repo /mnt/backup/coffer --compression 6
  coffer init --repo /mnt/offsite/coffer --from-repo /mnt/backup/coffer")]
pub struct InitArgs {
    /// zstd compression level (1-22, or -7..-1 for faster still; 0 picks
    /// the default, 1). Higher levels store less and cost more CPU: 3 is
    /// about 1.5x the CPU of 1 for 3-9% less stored on binaries and text
    #[arg(long, default_value_t = coffer::repository::config::DEFAULT_ZSTD_LEVEL)]
    pub compression: i32,
    /// Target pack size (e.g. 16M; larger packs mean fewer objects on a
    /// remote store, smaller ones less memory during a backup)
    #[arg(long, default_value = "8M")]
    pub pack_size: String,
    /// Smallest chunk (e.g. 256K)
    #[arg(long, default_value = "256K")]
    pub chunk_min: String,
    /// Average chunk (e.g. 1M)
    #[arg(long, default_value = "1M")]
    pub chunk_avg: String,
    /// Largest chunk (e.g. 4M)
    #[arg(long, default_value = "4M")]
    pub chunk_max: String,
    /// Share this repository's key (`--from-repo DIR`), so that `copy` from
    /// it moves only missing blobs and backups into both deduplicate alike;
    /// the chunk sizes are taken from it too
    #[command(flatten)]
    pub from: super::FromRepo,
}

fn config_from(a: &InitArgs) -> Result<Config> {
    let sz = |s: &str| -> Result<u32> {
        u32::try_from(super::parse_size(s)?).map_err(|_| anyhow::anyhow!("size {s} is too large"))
    };
    let c = Config {
        zstd_level: if a.compression == 0 {
            coffer::repository::config::DEFAULT_ZSTD_LEVEL
        } else {
            a.compression
        },
        pack_size: sz(&a.pack_size)?,
        chunker: coffer::chunking::ChunkerParams {
            min_size: sz(&a.chunk_min)?,
            avg_size: sz(&a.chunk_avg)?,
            max_size: sz(&a.chunk_max)?,
        },
        created_ns: 0,
    };
    c.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(c)
}

/// A repository is created only where nothing is: in a new or an empty
/// directory. Anything else is named: a repository (coffer's, or another
/// program's), a file, or a directory with other things in it. In a
/// bucket, creating the repository checks that no config, key or pack is
/// there.
fn refuse_occupied(loc: &Location) -> Result<()> {
    let Location::Local(path) = loc else {
        return Ok(());
    };
    if path.is_file() {
        bail!(
            "{} is a file: give a new or empty directory for the repository",
            path.display()
        );
    }
    let mut names: Vec<String> = match std::fs::read_dir(path) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if names.is_empty() {
        return Ok(());
    }
    if repo::has_config(path) {
        if let Err(e @ coffer::Error::ForeignRepository { .. }) =
            Repository::check_format(&LocalBackend::open(path))
        {
            bail!("{e}; `coffer init` needs a new or empty directory");
        }
        bail!("{} already holds a repository", path.display());
    }
    names.sort();
    let shown = names.len().min(3);
    bail!(
        "{} is not empty ({}{}) and holds no coffer repository: `coffer init` needs a new or empty directory",
        path.display(),
        names[..shown].join(", "),
        if names.len() > shown { ", …" } else { "" }
    )
}

/// A new repository has one key slot, the only copy of its wrapped master
/// key: one damaged byte there and no secret opens it (repo-format/README.md,
/// "What survives one damaged byte", says why there is no second copy). A
/// second key is the remedy, and only the user can put it somewhere else.
const SECOND_KEY: &str = "  It has one key slot, and one damaged byte in it would lock you out: make a second key now and keep it away from this machine:\n    coffer key export --file FILE";

/// Write a new key file with mode 0600, refusing to overwrite anything.
pub fn write_key_file(path: &Path, kf: &KeyFileSecret) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create key file {}", path.display()))?;
    f.write_all(kf.to_text().as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write key file {}", path.display()))?;
    Ok(())
}

/// Create a repository opened by a new key file at `key_path`. The key file
/// is written (and synced) before the repository, so a repository never
/// exists without its key.
pub fn create_with_key_file(
    g: &GlobalOpts,
    loc: &Location,
    key_path: &Path,
    config: Config,
    related: Option<&Repository>,
) -> Result<Repository> {
    refuse_occupied(loc)?;
    if key_path.exists() {
        bail!(
            "key file {} already exists but {loc} holds no repository: move the key file away, or give --repo",
            key_path.display(),
        );
    }
    let options = repo::backend_options(g)?;
    let kf = KeyFileSecret::generate(new_repo_id());
    write_key_file(key_path, &kf)?;
    let created = coffer::backend::create(loc, &options).and_then(|b| {
        Repository::init_related(
            b,
            InitSecret::KeyFile(kf),
            config,
            KdfParams::default(),
            related,
        )
    });
    let repo = match created {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(key_path);
            return Err(e.into());
        }
    };
    if !g.quiet {
        output::notice(&format!(
            "coffer: created repository {} at {loc}\n  Its key is in {}\n  KEEP A COPY OF THIS KEY FILE SOMEWHERE SAFE (not only on this machine): without it the backups cannot be read.\n{SECOND_KEY}",
            repo.id().short(),
            key_path.display()
        ));
    }
    Ok(repo)
}

fn init_with_password(
    g: &GlobalOpts,
    loc: &Location,
    pw: zeroize::Zeroizing<Vec<u8>>,
    config: Config,
    related: Option<&Repository>,
) -> Result<Repository> {
    let b = coffer::backend::create(loc, &repo::backend_options(g)?)?;
    let repo = Repository::init_related(
        b,
        InitSecret::Passphrase(pw),
        config,
        KdfParams::default(),
        related,
    )?;
    if !g.quiet {
        output::notice(SECOND_KEY);
    }
    Ok(repo)
}

pub fn run(g: &GlobalOpts, a: &InitArgs) -> Result<ExitCode> {
    let mut config = config_from(a)?;
    let (path, is_default) = repo::location(g)?;
    refuse_occupied(&path)?;
    let related = a.from.open(g)?;
    if let Some(r) = &related {
        super::report_problems(r);
    }
    if let Some(r) = &related {
        // The same cuts as the source, or its data and new backups would
        // not deduplicate against each other.
        config.chunker = r.config()?.chunker;
    }
    let related = related.as_deref();
    let repo = if let Some(kp) = &g.key_file {
        create_with_key_file(g, &path, kp, config, related)?
    } else if let Some(pw) = repo::configured_password(g)? {
        init_with_password(g, &path, pw, config, related)?
    } else if is_default {
        create_with_key_file(g, &path, &repo::default_key_file()?, config, related)?
    } else if repo::interactive() {
        let pw = repo::prompt("enter a password for the new repository: ")?;
        let again = repo::prompt("enter the password again: ")?;
        if pw != again {
            bail!("the passwords do not match; nothing was created");
        }
        init_with_password(g, &path, pw, config, related)?
    } else {
        bail!(
            "no password for the new repository: set COFFER_PASSWORD, --password-file, --password-command, or --key-file FILE to create a key file"
        );
    };
    // Told, not recorded: coffer is correct either way.
    let create_once = repo.probe_create_once().unwrap_or(None);
    if create_once == Some(false) && !g.quiet {
        output::notice(&format!(
            "coffer: note: {path} does not refuse a second put of a name (it ignores If-None-Match, as Garage does); coffer stays correct (lock and key names are random, a config is looked for before it is written), but two `init`s racing on the same location could both succeed"
        ));
    }
    if g.json {
        let mut j = serde_json::json!({
            "message_type": "initialized",
            "id": repo.id().to_hex(),
            "repository": path.to_string(),
        });
        if let Some(c) = create_once {
            j["create_once"] = c.into();
        }
        output::json(&j);
    } else if !g.quiet {
        output::line(&format!(
            "created coffer repository {} at {path}",
            repo.id().short(),
        ));
        if let Some(r) = related {
            output::line(&format!(
                "it shares the key of repository {} ({}): `coffer copy --from-repo` moves only what it lacks",
                r.id().short(),
                r.location()
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    /// `init` without options and the default repository `backup` creates
    /// must get the same configuration.
    #[test]
    fn init_defaults_are_the_library_defaults() {
        let cli = Cli::try_parse_from(["init"]).unwrap();
        assert_eq!(config_from(&cli.init).unwrap(), Config::default());
        let cli = Cli::try_parse_from(["init", "--pack-size", "16M"]).unwrap();
        assert_eq!(config_from(&cli.init).unwrap().pack_size, 16 << 20);
    }
}
