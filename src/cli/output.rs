//! Human and JSON rendering; the only place that prints.

use coffer::localtime;
use std::io::Write;

/// One line on stderr: `coffer: error: …` with the whole cause chain.
pub fn error(e: &anyhow::Error) {
    let _ = writeln!(std::io::stderr(), "coffer: error: {}", message(e));
}

/// An error with its whole cause chain, on one line.
pub fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
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
    exit_code(list.is_empty())
}

/// Warn about each damaged object an operation skipped (each names the
/// object and what it cost); exit 3 if there was any: damage is never
/// silent.
pub fn damaged(list: &[String]) -> std::process::ExitCode {
    for d in list {
        warn(d);
    }
    exit_code(list.is_empty())
}

/// [`unreadable`], then [`damaged`]: exit 3 if either names anything.
pub fn unreadable_and_damaged(
    unreadable: &[coffer::snapshot::walk::Unreadable],
    damaged: &[String],
) -> std::process::ExitCode {
    let a = self::unreadable(unreadable);
    let b = self::damaged(damaged);
    exit_code(a == std::process::ExitCode::SUCCESS && b == std::process::ExitCode::SUCCESS)
}

fn exit_code(clean: bool) -> std::process::ExitCode {
    if clean {
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

/// Bytes to stdout as they are (a generated script or page); a closed
/// pipe is not an error, as for [`line`].
pub fn raw(b: &[u8]) {
    let mut out = std::io::stdout().lock();
    if out.write_all(b).and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// One JSON value on one line. A field with no value is left out rather
/// than printed as `null` (the documented convention: absent means none).
pub fn json(v: &serde_json::Value) {
    line(&json_line(v));
}

/// [`json`]'s line, for a hook's environment.
pub fn json_line(v: &serde_json::Value) -> String {
    let mut v = v.clone();
    drop_nulls(&mut v);
    v.to_string()
}

fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// `1 file`, `2 files`: a count in agreement with its noun.
pub fn count<N: TryInto<u64>>(n: N, one: &str, many: &str) -> String {
    let n: u64 = n.try_into().unwrap_or(u64::MAX);
    format!("{n} {}", if n == 1 { one } else { many })
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

// Times are shown in the local zone, as restic shows them and as `--time`
// and forget's day buckets read them; JSON carries the offset.

/// RFC 3339 in local time with its offset, nanoseconds included.
pub fn rfc3339(ns: i64) -> String {
    localtime::local_ns(ns).rfc3339()
}

/// [`rfc3339`] from seconds and nanoseconds (any year).
pub fn rfc3339_time(sec: i64, nsec: u32) -> String {
    localtime::local(sec, nsec).rfc3339()
}

/// `2026-11-22 20:26:36` (local time) from seconds, for tables.
pub fn short_time_sec(sec: i64) -> String {
    localtime::local(sec, 0).short()
}

/// `2026-11-22 20:26:36` (local time), for tables.
pub fn short_time(ns: i64) -> String {
    localtime::local_ns(ns).short()
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
    fn sizes_and_modes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(mode_string("dir", 0o755), "drwxr-xr-x");
        assert_eq!(mode_string("dir", 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string("file", 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string("file", 0o2644), "-rw-r-Sr--");
    }
}
