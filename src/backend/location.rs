//! Where a repository lives, as the user names it (`--repo`,
//! `COFFER_REPOSITORY`, `--from-repo`). Parsed in one place so that a
//! restic user's `sftp:…` is refused instead of silently becoming a local
//! directory named `sftp:host:` (issue 18).

use crate::error::{Error, Result};
use std::ffi::OsStr;
use std::path::PathBuf;

/// A repository location coffer can open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory on a mounted filesystem.
    Local(PathBuf),
    /// A bucket (and a key prefix in it) on an S3-compatible store.
    S3(S3Location),
}

/// `s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]`, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// `http://HOST:PORT` or `https://HOST`, without a trailing slash.
    pub endpoint: String,
    pub bucket: String,
    /// Empty, or the key prefix without leading or trailing slashes.
    pub prefix: String,
}

impl S3Location {
    /// The part after `s3:`. restic's form without a scheme
    /// (`s3:s3.amazonaws.com/bucket`) means https.
    fn parse(whole: &str, rest: &str) -> Result<S3Location> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "repository {whole}: {why}; an S3 location is s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]"
            ))
        };
        let (scheme, hostpath) = match rest.split_once("://") {
            Some((s, r)) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {
                (s.to_ascii_lowercase(), r)
            }
            Some((s, _)) => return Err(bad(&format!("{s}:// is not http:// or https://"))),
            None => ("https".to_string(), rest),
        };
        let (host, path) = hostpath.split_once('/').unwrap_or((hostpath, ""));
        if host.is_empty() || host.contains(['@', '?', '#', ' ']) {
            return Err(bad("it names no host"));
        }
        let path = path.trim_matches('/');
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if !valid_bucket(bucket) {
            return Err(bad(&format!(
                "{bucket:?} is not a bucket name (3-63 lowercase letters, digits, '-' and '.')"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
            && !prefix.is_empty()
        {
            return Err(bad("its prefix has an empty, '.' or '..' part"));
        }
        Ok(S3Location {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3:{}/{}", self.endpoint, self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// S3's bucket naming rules, loosely: what every store accepts.
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && b.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// restic's and rclone's remote prefixes, with the store each names: a
/// location starting with one is never taken for a relative path.
const REMOTES: [(&str, &str); 7] = [
    ("sftp", "SFTP"),
    ("rest", "a REST server"),
    ("rclone", "rclone"),
    ("azure", "Azure Blob Storage"),
    ("gs", "Google Cloud Storage"),
    ("b2", "Backblaze B2"),
    ("swift", "OpenStack Swift"),
];

impl Location {
    /// `PATH`, `local:PATH`, `s3:…`, or an error naming what is not
    /// supported.
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
            if scheme.eq_ignore_ascii_case("s3") {
                return Ok(Location::S3(S3Location::parse(s, rest)?));
            }
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
            Location::S3(l) => l.fmt(f),
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
    fn s3_locations_are_split_and_checked() {
        let s3 = |s: &str| match Location::parse(s) {
            Ok(Location::S3(l)) => l,
            other => panic!("{s}: {other:?}"),
        };
        let l = s3("s3:http://127.0.0.1:8333/bucket/some/prefix/");
        assert_eq!(l.endpoint, "http://127.0.0.1:8333");
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("bucket", "some/prefix")
        );
        assert_eq!(l.to_string(), "s3:http://127.0.0.1:8333/bucket/some/prefix");
        let l = s3("S3:s3.amazonaws.com/my-bucket");
        assert_eq!(l.endpoint, "https://s3.amazonaws.com");
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", ""));
        for bad in [
            "s3:http://host",
            "s3:http:///bucket",
            "s3:ftp://host/bucket",
            "s3:http://host/Bad_Bucket",
            "s3:http://host/bucket/a/../b",
            "s3:http://user@host/bucket",
        ] {
            match Location::parse(bad) {
                Err(Error::Usage(m)) => assert!(m.contains("s3:http(s)://HOST"), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let e = Location::parse("gs:b:/").unwrap_err().to_string();
        assert!(
            e.contains("local directory") && e.contains("S3 bucket"),
            "{e}"
        );
    }
}
