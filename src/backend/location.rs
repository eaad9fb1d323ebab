//! Where a repository lives, as the user names it (`--repo`,
//! `COFFER_REPOSITORY`, `--from-repo`). Parsed in one place so that a
//! restic user's `s3:…` or `sftp:…` is refused instead of silently
//! becoming a local directory named `s3:https:` (issue 18), and so the S3
//! backend can add its variant here.

use crate::error::{Error, Result};
use std::ffi::OsStr;
use std::path::PathBuf;

/// A repository location coffer can open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory on a mounted filesystem.
    Local(PathBuf),
}

/// restic's and rclone's remote prefixes, with the store each names: a
/// location starting with one is never taken for a relative path.
const REMOTES: [(&str, &str); 8] = [
    ("s3", "S3"),
    ("sftp", "SFTP"),
    ("rest", "a REST server"),
    ("rclone", "rclone"),
    ("azure", "Azure Blob Storage"),
    ("gs", "Google Cloud Storage"),
    ("b2", "Backblaze B2"),
    ("swift", "OpenStack Swift"),
];

impl Location {
    /// `PATH`, `local:PATH`, or an error naming what is not supported.
    /// A directory whose name starts like a scheme is reachable as
    /// `./NAME` or `local:NAME`.
    pub fn parse(s: &str) -> Result<Location> {
        if let Some(path) = s.strip_prefix("local:") {
            if path.is_empty() {
                return Err(Error::Usage(
                    "repository local: names no directory: give local:PATH".into(),
                ));
            }
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if let Some((scheme, rest)) = s.split_once(':') {
            let unsupported = |store: &'static str| Error::UnsupportedLocation {
                location: s.to_string(),
                store,
            };
            if let Some((_, store)) = REMOTES.iter().find(|(p, _)| p.eq_ignore_ascii_case(scheme)) {
                return Err(unsupported(store));
            }
            if rest.starts_with("//") && is_url_scheme(scheme) {
                return Err(unsupported("a URL"));
            }
        }
        Ok(Location::Local(PathBuf::from(s)))
    }

    /// [`Location::parse`] for a command-line argument: a name that is not
    /// UTF-8 cannot be a remote, so it is a local path.
    pub fn parse_os(s: &OsStr) -> Result<Location> {
        match s.to_str() {
            Some(text) => Self::parse(text),
            None => Ok(Location::Local(PathBuf::from(s))),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
        }
    }
}

/// RFC 3986: a letter, then letters, digits, `+`, `-` or `.`.
fn is_url_scheme(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(s: &str) -> Location {
        Location::Local(PathBuf::from(s))
    }

    #[test]
    fn paths_are_local_and_remotes_are_refused() {
        for s in [
            "/mnt/backup",
            "repo",
            "./s3:odd",
            "../x:y",
            "/srv/a:b",
            "backup:2024",
        ] {
            assert_eq!(Location::parse(s).unwrap(), local(s), "{s}");
        }
        assert_eq!(Location::parse("local:s3:odd").unwrap(), local("s3:odd"));
        assert!(matches!(Location::parse("local:"), Err(Error::Usage(_))));
        for (s, store) in [
            ("s3:https://host/bucket", "S3"),
            ("S3:host/bucket", "S3"),
            ("sftp:host:/x", "SFTP"),
            ("rclone:remote:x", "rclone"),
            ("https://host/x", "a URL"),
            ("file:///x", "a URL"),
        ] {
            match Location::parse(s) {
                Err(Error::UnsupportedLocation {
                    location,
                    store: st,
                }) => {
                    assert_eq!((location.as_str(), st), (s, store));
                }
                other => panic!("{s}: {other:?}"),
            }
        }
    }

    #[test]
    fn s3_says_what_a_later_version_takes() {
        let e = Location::parse("s3:https://host/bucket")
            .unwrap_err()
            .to_string();
        assert!(e.contains("S3 is not supported yet"), "{e}");
        assert!(
            e.contains("s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]"),
            "{e}"
        );
        let e = Location::parse("gs:b:/").unwrap_err().to_string();
        assert!(e.contains("local directory") && !e.contains("yet"), "{e}");
    }
}
