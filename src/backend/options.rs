//! `--option KEY=VALUE` (`-o`, as restic spells it): what tunes how a
//! backend talks to its store. Unknown keys and bad values are errors
//! naming the key, never ignored.

use crate::error::{Error, Result};
use std::time::Duration;

/// Backend settings, with the defaults a user gets without `-o`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Requests in flight at once (uploads, pack fetches, verifies).
    pub s3_connections: usize,
    /// The signing region when `AWS_REGION`/`AWS_DEFAULT_REGION` are unset.
    pub s3_region: Option<String>,
    /// How long a request may make no progress (connect, first byte, or
    /// between two reads or writes) before it counts as failed and retried.
    /// Not a limit on a whole transfer: a big pack on a slow line is fine
    /// as long as bytes keep moving (rustic#1091, restic#1424).
    pub s3_timeout: Duration,
    /// `BUCKET.HOST` instead of `HOST/BUCKET` (path style is the default:
    /// every S3-compatible store takes it).
    pub s3_virtual_host: bool,
    /// Tries of a request that failed transiently, the first included.
    pub retries: u32,
    /// The first pause between two tries; it doubles (with jitter) up to
    /// 30 s.
    pub retry_base: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            s3_connections: 8,
            s3_region: None,
            s3_timeout: Duration::from_secs(60),
            s3_virtual_host: false,
            retries: 10,
            retry_base: Duration::from_millis(250),
        }
    }
}

const KEYS: &str = "s3.connections, s3.region, s3.timeout, s3.virtual-host, retries, retry-base";

impl Options {
    /// Parse `KEY=VALUE` pairs on top of the defaults.
    pub fn parse<S: AsRef<str>>(pairs: &[S]) -> Result<Options> {
        let mut o = Options::default();
        for pair in pairs {
            let pair = pair.as_ref();
            let Some((key, value)) = pair.split_once('=') else {
                return Err(Error::Usage(format!(
                    "option {pair:?} is not KEY=VALUE (known keys: {KEYS})"
                )));
            };
            let bad = |what: &str| Error::Usage(format!("option {key}={value:?}: {what}"));
            match key.trim() {
                "s3.connections" => {
                    o.s3_connections = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=256).contains(n))
                        .ok_or_else(|| bad("give a number of connections from 1 to 256"))?;
                }
                "s3.region" if !value.is_empty() => o.s3_region = Some(value.to_string()),
                "s3.timeout" => {
                    o.s3_timeout = parse_duration(value)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| bad("give a duration such as 30s, 500ms or 2m"))?;
                }
                "s3.virtual-host" => {
                    o.s3_virtual_host = value.parse().map_err(|_| bad("give true or false"))?;
                }
                "retries" => {
                    o.retries = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| bad("give a number of tries from 1 to 100"))?;
                }
                "retry-base" => {
                    o.retry_base = parse_duration(value)
                        .ok_or_else(|| bad("give a duration such as 250ms or 1s"))?;
                }
                other => {
                    return Err(Error::Usage(format!(
                        "unknown option {other:?} (known keys: {KEYS})"
                    )));
                }
            }
        }
        Ok(o)
    }
}

/// `500ms`, `30s`, `2m`.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_refuse() {
        let o = Options::parse(&["s3.connections=16", "s3.timeout=2s", "retry-base=10ms"]).unwrap();
        assert_eq!(o.s3_connections, 16);
        assert_eq!(o.s3_timeout, Duration::from_secs(2));
        assert_eq!(o.retry_base, Duration::from_millis(10));
        assert_eq!(Options::parse::<&str>(&[]).unwrap(), Options::default());
        for bad in [
            "s3.connections=0",
            "s3.connections=x",
            "s3.timeout=5",
            "s3.timeout=0s",
            "s3.virtual-host=yes",
            "s3.colour=blue",
            "noequals",
        ] {
            let e = Options::parse(&[bad]).unwrap_err().to_string();
            assert!(e.contains(bad.split('=').next().unwrap()), "{bad}: {e}");
        }
    }
}
