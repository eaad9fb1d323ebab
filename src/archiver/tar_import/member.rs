//! One tar member's name and metadata, turned into what a tree node holds.
//!
//! Names are normalised the way GNU tar extracts them: a leading `/` is
//! dropped, `.` and empty components vanish (so `./etc//x` is `etc/x`).
//! A name with a `..` component or a NUL byte is refused: it could only be
//! meant to escape the tree, and there is no safe reading of it.

use crate::snapshot::tree::{MAX_NAME, MAX_XATTR_VALUE, MAX_XATTRS, Node, NodeKind, Time};

/// Longest member name accepted. Tar itself has no limit (a PAX `path` can
/// be any length); this bounds the depth of the staged tree and matches the
/// longest path a snapshot records.
pub(crate) const MAX_MEMBER_PATH: usize = 64 * 1024;
/// Longest user or group name kept (the tree's limit).
const MAX_OWNER_NAME: usize = 1024;

/// Split a member name into tree names. `Ok(vec![])` is the archive's root
/// (`.`, `./` or `/`).
pub(crate) fn normalise(raw: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if raw.contains(&0) {
        return Err("its name contains a NUL byte".into());
    }
    if raw.len() > MAX_MEMBER_PATH {
        return Err(format!(
            "its name is {} bytes long (at most {MAX_MEMBER_PATH})",
            raw.len()
        ));
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err("its name contains `..`, which would point outside the archive".into());
            }
            _ if c.len() > MAX_NAME => {
                return Err(format!(
                    "a component of its name is {} bytes long (at most {MAX_NAME})",
                    c.len()
                ));
            }
            _ => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// The metadata a tar header (with its PAX records) gives a node; content,
/// subtree, size and hardlink fields are the caller's.
pub(crate) fn node_from_header(
    name: Vec<u8>,
    kind: NodeKind,
    h: &tar::Header,
    pax: &Pax,
) -> Result<Node, String> {
    let mut n = Node::new(name, kind);
    let bad = |what: &str, e: std::io::Error| format!("its header has an unreadable {what}: {e}");
    n.mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
    // The tar crate already applied PAX `uid`/`gid` to the header.
    n.uid = u32::try_from(h.uid().map_err(|e| bad("uid", e))?)
        .map_err(|_| "its uid does not fit in 32 bits".to_string())?;
    n.gid = u32::try_from(h.gid().map_err(|e| bad("gid", e))?)
        .map_err(|_| "its gid does not fit in 32 bits".to_string())?;
    n.user = owner_name(
        pax.uname
            .as_deref()
            .or_else(|| h.username_bytes())
            .unwrap_or_default(),
    );
    n.group = owner_name(
        pax.gname
            .as_deref()
            .or_else(|| h.groupname_bytes())
            .unwrap_or_default(),
    );
    n.mtime = match pax.mtime {
        Some(t) => t,
        None => {
            let secs = h.mtime().map_err(|e| bad("mtime", e))?;
            Time::new(i64::try_from(secs).unwrap_or(i64::MAX), 0)
        }
    };
    n.ctime = pax.ctime.unwrap_or(n.mtime);
    n.links = 1;
    if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        n.rdev = libc::makedev(major, minor);
    }
    n.xattrs = pax.xattrs.clone();
    Ok(n)
}

fn owner_name(raw: &[u8]) -> std::sync::Arc<str> {
    let s = String::from_utf8_lossy(raw);
    let mut end = s.len().min(MAX_OWNER_NAME);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].into()
}

/// The PAX records of one member that the tar crate does not apply itself.
#[derive(Default, Debug, PartialEq, Eq)]
pub(crate) struct Pax {
    pub mtime: Option<Time>,
    pub ctime: Option<Time>,
    pub uname: Option<Vec<u8>>,
    pub gname: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// GNU's PAX sparse formats keep a block map inside the data, which the
    /// tar crate would hand over as content.
    pub sparse: bool,
}

impl Pax {
    /// Collect from `(key, value)` records. Unknown keys are ignored, as
    /// POSIX asks; a malformed time is ignored in favour of the header's.
    pub(crate) fn from_records<'a>(records: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Pax {
        let mut p = Pax::default();
        for (k, v) in records {
            match k {
                b"mtime" => p.mtime = parse_time(v).or(p.mtime),
                b"ctime" => p.ctime = parse_time(v).or(p.ctime),
                b"uname" => p.uname = Some(v.to_vec()),
                b"gname" => p.gname = Some(v.to_vec()),
                _ if k.starts_with(b"GNU.sparse.") => p.sparse = true,
                _ => {
                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.")
                        && !name.is_empty()
                        && v.len() <= MAX_XATTR_VALUE
                        && name.len() <= MAX_NAME
                        && p.xattrs.len() < MAX_XATTRS
                    {
                        p.xattrs.push((name.to_vec(), v.to_vec()));
                    }
                }
            }
        }
        p.xattrs.sort();
        p.xattrs.dedup_by(|a, b| a.0 == b.0);
        p
    }
}

/// A PAX time: decimal seconds, optionally negative, with an optional
/// fraction of up to nanosecond precision (`1500000000.123456789`).
pub fn parse_time(v: &[u8]) -> Option<Time> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nsec: i64 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
    }
    Some(if !neg {
        Time::new(secs, nsec)
    } else if nsec == 0 {
        Time::new(-secs, 0)
    } else {
        // Nanoseconds count forward: -1.25 s is -2 s plus 0.75 s.
        Time::new(-secs - 1, 1_000_000_000 - nsec)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(raw: &str) -> Vec<String> {
        normalise(raw.as_bytes())
            .unwrap()
            .into_iter()
            .map(|c| String::from_utf8(c).unwrap())
            .collect()
    }

    #[test]
    fn names_normalise_like_gnu_tar_extracts_them() {
        assert_eq!(names("etc/passwd"), ["etc", "passwd"]);
        assert_eq!(names("./etc//passwd"), ["etc", "passwd"]);
        assert_eq!(names("/etc/passwd"), ["etc", "passwd"]);
        assert_eq!(names("//etc/./x/"), ["etc", "x"]);
        assert!(names("./").is_empty());
        assert!(names(".").is_empty());
        assert!(names("/").is_empty());
        assert_eq!(names("..."), ["..."]);
        assert_eq!(names("a..b/.c"), ["a..b", ".c"]);
    }

    #[test]
    fn names_that_escape_or_hide_are_refused() {
        for bad in ["../x", "a/../../b", "a/..", "/..", "..", "a/b/../c"] {
            let e = normalise(bad.as_bytes()).unwrap_err();
            assert!(e.contains(".."), "{bad}: {e}");
        }
        assert!(normalise(b"a\0b").unwrap_err().contains("NUL"));
        let long = vec![b'x'; MAX_NAME + 1];
        assert!(normalise(&long).is_err());
        let deep = b"a/".repeat(MAX_MEMBER_PATH / 2 + 1);
        assert!(normalise(&deep).is_err());
    }

    #[test]
    fn names_are_raw_bytes() {
        let got = normalise(b"caf\xe9/\xff").unwrap();
        assert_eq!(got, vec![b"caf\xe9".to_vec(), b"\xff".to_vec()]);
    }

    #[test]
    fn pax_times_keep_nanoseconds_and_sign() {
        assert_eq!(parse_time(b"1500000000"), Some(Time::new(1_500_000_000, 0)));
        assert_eq!(
            parse_time(b"1500000000.123456789"),
            Some(Time::new(1_500_000_000, 123_456_789))
        );
        assert_eq!(parse_time(b"12.5"), Some(Time::new(12, 500_000_000)));
        // More digits than nanoseconds: truncated, as GNU tar does.
        assert_eq!(parse_time(b"1.1234567899"), Some(Time::new(1, 123_456_789)));
        assert_eq!(parse_time(b"-1.25"), Some(Time::new(-2, 750_000_000)));
        assert_eq!(parse_time(b"-3"), Some(Time::new(-3, 0)));
        for bad in ["", ".5", "1e9", "x", "1.2.3", "-", "1.-2"] {
            assert_eq!(parse_time(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn pax_records_collect_what_the_tree_keeps() {
        let recs: Vec<(&[u8], &[u8])> = vec![
            (b"mtime", b"7.000000001"),
            (b"uname", b"alice"),
            (b"SCHILY.xattr.user.b", b"2"),
            (b"SCHILY.xattr.user.a", b"1"),
            (b"comment", b"ignored"),
        ];
        let p = Pax::from_records(recs.into_iter());
        assert_eq!(p.mtime, Some(Time::new(7, 1)));
        assert_eq!(p.uname.as_deref(), Some(&b"alice"[..]));
        assert_eq!(
            p.xattrs,
            vec![
                (b"user.a".to_vec(), b"1".to_vec()),
                (b"user.b".to_vec(), b"2".to_vec())
            ]
        );
        assert!(!p.sparse);
        let s = Pax::from_records([(&b"GNU.sparse.major"[..], &b"1"[..])].into_iter());
        assert!(s.sparse);
    }
}
