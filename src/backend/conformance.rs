//! The backend contract as checks any store can be put through
//! (doc/design.md habit 3): the local directory and the in-memory store in
//! unit tests, a real S3 server from the integration tests. Each check
//! returns what broke instead of panicking, so a caller can name the store.
//!
//! Every check needs a store with no objects (a fresh directory, or a fresh
//! prefix in a bucket).

use super::{Backend, FileKind};
use crate::error::Error;
use std::sync::Arc;

type Outcome = std::result::Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn ok<T>(what: &str, r: crate::error::Result<T>) -> std::result::Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn names(b: &dyn Backend, kind: FileKind) -> std::result::Result<Vec<(String, u64)>, String> {
    Ok(ok("list", b.list(kind))?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect())
}

/// The basic contract: put, get, ranges, list, size, delete, create-once.
pub fn run(b: &dyn Backend) -> Outcome {
    ensure!(
        names(b, FileKind::Pack)?.is_empty(),
        "the store is not empty"
    );
    ensure!(
        matches!(b.get(FileKind::Snapshot, "aa"), Err(Error::NotFound { .. })),
        "a missing object is not NotFound"
    );
    ensure!(
        matches!(
            b.size(FileKind::Snapshot, "aa"),
            Err(Error::NotFound { .. })
        ),
        "the size of a missing object is not NotFound"
    );
    ok("put", b.put(FileKind::Pack, "abcd", b"hello world"))?;
    ok("put again", b.put(FileKind::Pack, "abcd", b"hello world"))?;
    ok("put config", b.put(FileKind::Config, "config", b"cfg"))?;
    ensure!(
        b.put(FileKind::Config, "config", b"cfx").is_err(),
        "a second config replaced the first"
    );
    ensure!(
        ok("get", b.get(FileKind::Pack, "abcd"))? == b"hello world",
        "get returned other bytes"
    );
    ensure!(
        ok("get_range", b.get_range(FileKind::Pack, "abcd", 6, 5))? == b"world",
        "a ranged read returned other bytes"
    );
    ensure!(
        b.get_range(FileKind::Pack, "abcd", 6, 6).is_err(),
        "a range past the end was not an error"
    );
    ensure!(
        ok("size", b.size(FileKind::Pack, "abcd"))? == 11,
        "wrong size"
    );
    ensure!(
        names(b, FileKind::Pack)? == vec![("abcd".to_string(), 11)],
        "the listing is wrong"
    );
    ensure!(
        ok("get config", b.get(FileKind::Config, "config"))? == b"cfg",
        "the config changed"
    );
    ok("delete", b.delete(FileKind::Pack, "abcd"))?;
    ok("delete again", b.delete(FileKind::Pack, "abcd"))?;
    ensure!(
        names(b, FileKind::Pack)?.is_empty(),
        "a deleted object is listed"
    );
    // A batch: objects in several directories, one already gone.
    for n in ["aa01", "aa02", "bb01"] {
        ok("put", b.put(FileKind::Pack, n, n.as_bytes()))?;
    }
    let batch: Vec<String> = ["aa01", "bb01", "cc01"].map(String::from).to_vec();
    ok("delete_many", b.delete_many(FileKind::Pack, &batch))?;
    ensure!(
        names(b, FileKind::Pack)? == vec![("aa02".to_string(), 4)],
        "delete_many left the wrong objects"
    );
    ok("delete", b.delete(FileKind::Pack, "aa02"))?;
    ok("delete config", b.delete(FileKind::Config, "config"))
}

/// What a remote store adds to worry about: listings longer than a page,
/// ranges at the very edges of an object, and modification times.
pub fn run_remote(b: &dyn Backend) -> Outcome {
    ensure!(
        names(b, FileKind::Index)?.is_empty(),
        "the store is not empty"
    );
    // More than one page of 1000.
    let n = 1003;
    let all: Vec<String> = (0..n).map(|i| format!("{i:08x}")).collect();
    for name in &all {
        ok("put", b.put(FileKind::Index, name, name.as_bytes()))?;
    }
    let listed = ok("list", b.list(FileKind::Index))?;
    ensure!(
        listed.len() == n,
        "{} of {n} objects were listed",
        listed.len()
    );
    ensure!(
        listed.iter().map(|o| &o.name).eq(all.iter()),
        "the listing has other names"
    );
    ensure!(
        listed.iter().all(|o| o.modified.is_some()),
        "a listed object has no modification time"
    );
    ok("delete_many", b.delete_many(FileKind::Index, &all))?;
    ensure!(
        names(b, FileKind::Index)?.is_empty(),
        "a deleted object is listed"
    );

    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    ok("put", b.put(FileKind::Pack, "ee00", &data))?;
    let len = data.len();
    for (off, n) in [(0, 1), (0, len), (len - 1, 1), (1, len - 1), (4096, 65536)] {
        let got = ok(
            "get_range",
            b.get_range(FileKind::Pack, "ee00", off as u64, n),
        )?;
        ensure!(
            got == data[off..off + n],
            "range {off}+{n} returned other bytes"
        );
    }
    for (off, n) in [(len, 1), (len - 1, 2), (len + 10, 5)] {
        ensure!(
            b.get_range(FileKind::Pack, "ee00", off as u64, n).is_err(),
            "range {off}+{n} past the end was not an error"
        );
    }
    ensure!(
        ok("modified", b.modified(FileKind::Pack, "ee00"))?.is_some(),
        "no modification time"
    );
    ok("delete", b.delete(FileKind::Pack, "ee00"))
}

/// Writers racing to create the same create-once object: exactly one wins.
pub fn race_create_once(b: Arc<dyn Backend>, writers: usize) -> Outcome {
    let wins: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|i| {
                let b = b.clone();
                s.spawn(move || {
                    b.put(FileKind::Lock, "ab12", format!("writer {i}").as_bytes())
                        .is_ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect()
    });
    let won = wins.iter().filter(|w| **w).count();
    ensure!(
        won == 1,
        "{won} of {writers} racing writers created the object"
    );
    ok("delete", b.delete(FileKind::Lock, "ab12"))
}
