//! Human and JSON rendering; the only place that prints.

use std::io::Write;

/// One line on stderr: `coffer: error: …` with the whole cause chain.
pub fn error(e: &anyhow::Error) {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    let _ = writeln!(std::io::stderr(), "coffer: error: {msg}");
}

/// An informational message on stderr (stdout stays clean for data).
pub fn notice(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

pub fn warn(msg: &str) {
    let _ = writeln!(std::io::stderr(), "coffer: warning: {msg}");
}

/// Name each directory skipped because its tree could not be read; the
/// exit code a command that completed otherwise ends with (0 or 3).
pub fn unreadable(list: &[coffer::snapshot::walk::Unreadable]) -> std::process::ExitCode {
    for u in list {
        warn(&u.to_string());
    }
    if list.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(3)
    }
}

/// A write to a reader that went away (`coffer dump … | head`): not a
/// failure, the output simply stops.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Print a line to stdout; a closed pipe (`coffer ls | head`) is not an error.
pub fn line(s: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{s}").is_err() {
        std::process::exit(0);
    }
}

pub fn json(v: &serde_json::Value) {
    line(&v.to_string());
}

/// Bytes in binary units: `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn split(ns: i64) -> (i64, u32, u32, i64, i64, i64, i64) {
    split_time(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

fn split_time(secs: i64, frac: i64) -> (i64, u32, u32, i64, i64, i64, i64) {
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    (y, mo, d, sod / 3600, sod % 3600 / 60, sod % 60, frac)
}

/// RFC 3339 in UTC with nanoseconds.
pub fn rfc3339(ns: i64) -> String {
    let (y, mo, d, h, mi, s, frac) = split(ns);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:09}Z")
}

/// RFC 3339 in UTC from seconds and nanoseconds (any year).
pub fn rfc3339_time(sec: i64, nsec: u32) -> String {
    let (y, mo, d, h, mi, s, frac) = split_time(sec, nsec as i64);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:09}Z")
}

/// `2026-11-22 20:26:36` (UTC) from seconds, for tables.
pub fn short_time_sec(sec: i64) -> String {
    let (y, mo, d, h, mi, s, _) = split_time(sec, 0);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// `2026-11-22 20:26:36` (UTC), for tables.
pub fn short_time(ns: i64) -> String {
    let (y, mo, d, h, mi, s, _) = split(ns);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// One entry as `ls -l` shows it: mode, owner, group, size, mtime, path,
/// and a symlink's target (`ls --long`, `find --long`).
pub fn long_listing(path: &str, n: &coffer::snapshot::tree::Node) -> String {
    let owner = |name: &str, id: u32| {
        if name.is_empty() {
            id.to_string()
        } else {
            name.to_string()
        }
    };
    let mut line = format!(
        "{} {:>8} {:>8} {:>12} {} {path}",
        mode_string(n.kind.as_str(), n.mode),
        owner(&n.user, n.uid),
        owner(&n.group, n.gid),
        n.size,
        short_time_sec(n.mtime.sec),
    );
    if n.kind == coffer::snapshot::tree::NodeKind::Symlink {
        line.push_str(" -> ");
        line.push_str(&String::from_utf8_lossy(&n.link_target));
    }
    line
}

/// `rwxr-xr-x` with the type letter in front.
pub fn mode_string(kind: &str, mode: u32) -> String {
    let t = match kind {
        "dir" => 'd',
        "symlink" => 'l',
        "fifo" => 'p',
        "chardev" => 'c',
        "blockdev" => 'b',
        "socket" => 's',
        _ => '-',
    };
    let mut s: Vec<char> = vec![t];
    for (i, c) in ['r', 'w', 'x', 'r', 'w', 'x', 'r', 'w', 'x']
        .iter()
        .enumerate()
    {
        let bit = 1 << (8 - i);
        s.push(if mode & bit != 0 { *c } else { '-' });
    }
    // setuid, setgid and sticky show in place of the x of user, group, other.
    for (bit, pos, set, unset) in [
        (0o4000, 3, 's', 'S'),
        (0o2000, 6, 's', 'S'),
        (0o1000, 9, 't', 'T'),
    ] {
        if mode & bit != 0 {
            s[pos] = if s[pos] == 'x' { set } else { unset };
        }
    }
    s.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_700_000_000_123_000_000),
            "2023-11-14T22:13:20.123000000Z"
        );
        assert_eq!(short_time(951_782_400_000_000_000), "2000-02-29 00:00:00");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(mode_string("dir", 0o755), "drwxr-xr-x");
        assert_eq!(mode_string("dir", 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string("file", 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string("file", 0o2644), "-rw-r-Sr--");
    }
}
