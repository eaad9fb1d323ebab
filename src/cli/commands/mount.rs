//! `coffer mount MOUNTPOINT`: the repository's snapshots as a read-only
//! FUSE filesystem, served in the foreground until it is unmounted or the
//! process gets SIGINT or SIGTERM (which unmount it).

use crate::cli::{GlobalOpts, output, repo, signals};
use anyhow::{Context, Result, bail};
use clap::Args;
use coffer::mount::{MountFs, Source};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  coffer mount /mnt/backups    # browse /mnt/backups/latest/; Ctrl-C or fusermount3 -u ends it
  coffer mount --tag nightly --cache-size 256M /mnt/backups")]
pub struct MountArgs {
    /// An empty directory to show the repository in: snapshots/, hosts/,
    /// tags/ and latest
    pub mountpoint: PathBuf,
    /// Memory for file data read from the repository (decoded blobs, least
    /// recently used out first; sequential reads fetch up to a quarter of
    /// it ahead)
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    pub cache_size: String,
    /// Show only the snapshots these select
    #[command(flatten)]
    pub filter: super::SnapshotFilter,
}

pub fn run(g: &GlobalOpts, a: &MountArgs) -> Result<ExitCode> {
    let mp = &a.mountpoint;
    let cache_bytes =
        usize::try_from(super::parse_size(&a.cache_size)?).context("--cache-size is too large")?;
    if !mp.is_dir() {
        bail!(
            "mount point {} is not a directory: create it first (mkdir -p {})",
            mp.display(),
            mp.display()
        );
    }
    let repo = repo::open(g)?;
    // A blob larger than the cache is read again for each read of it, and
    // read-ahead gets a quarter: room for four of the largest keeps both.
    let least = 4 * u64::from(repo.config()?.chunker.max_size);
    if (cache_bytes as u64) < least {
        bail!(
            "--cache-size {} is too small for this repository, whose chunks are up to {}: give at least {}",
            a.cache_size,
            output::bytes(least / 4),
            output::bytes(least)
        );
    }
    let _lock = repo::read_lock(g, &repo)?;
    let snapshots: Vec<_> = repo
        .list_snapshots()?
        .into_iter()
        .filter(|(_, s)| a.filter.admits(s))
        .collect();
    // Absolute, so that warnings name files a user can find.
    let mp = &std::fs::canonicalize(mp).unwrap_or_else(|_| mp.clone());
    let shown = mp.display().to_string();
    let warn_at = shown.trim_end_matches('/').to_string();
    let warn = Box::new(move |m: &str| output::warn(&format!("{warn_at}/{m}")));
    // SAFETY: geteuid and getegid cannot fail.
    let owner = unsafe { (libc::geteuid(), libc::getegid()) };
    let src: Source = repo.clone();
    let fs = MountFs::new(src, &snapshots, cache_bytes, owner, warn);

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
        fuser::MountOption::FSName("coffer".into()),
        fuser::MountOption::Subtype("coffer".into()),
    ];
    // Reads of different files, or the kernel's read-ahead of one, are
    // served at once; the blob cache is shared.
    config.n_threads = Some(4);
    let mut session = fuser::Session::new(fs, mp, &config).map_err(|e| {
        anyhow::anyhow!(
            "cannot mount on {shown}: {e}; coffer mount needs /dev/fuse and fusermount3 (Debian: apt-get install fuse3), and an empty directory"
        )
    })?;
    unmount_on_signal(session.unmount_callable(), mp.clone());
    if !g.quiet {
        output::notice(&format!(
            "coffer: {} mounted read-only at {shown}; unmount with `fusermount3 -u {shown}` or Ctrl-C",
            match snapshots.len() {
                1 => "1 snapshot".to_string(),
                n => format!("{n} snapshots"),
            }
        ));
    }
    session
        .run()
        .with_context(|| format!("the mount at {shown} failed"))?;
    Ok(ExitCode::SUCCESS)
}

/// On SIGINT or SIGTERM, unmount, which ends the session; when something
/// still uses the mount (a shell inside it), detach it lazily so that the
/// kernel drops it once they leave.
fn unmount_on_signal(mut unmounter: fuser::SessionUnmounter, mp: PathBuf) {
    let stop = signals::stop_on_signal();
    let watcher = std::thread::Builder::new()
        .name("coffer-unmount".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            if unmounter.unmount().is_err() {
                lazy_unmount(&mp);
            }
        });
    if watcher.is_err() {
        output::warn("cannot watch for Ctrl-C: unmount with fusermount3 -u");
    }
}

fn lazy_unmount(mp: &Path) {
    let done = std::process::Command::new("fusermount3")
        .args([OsStr::new("-u"), OsStr::new("-z"), OsStr::new("--")])
        .arg(mp)
        .status()
        .is_ok_and(|s| s.success());
    if done {
        return;
    }
    let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        output::warn(&format!(
            "cannot unmount {}: {}; run `fusermount3 -u -z {}`",
            mp.display(),
            std::io::Error::last_os_error(),
            mp.display()
        ));
    }
}
