//! Crash-test failpoints (doc/reliability.md H2), as a wrapper any backend
//! can wear, so the crash matrix runs against a local directory and an S3
//! bucket alike.
//!
//! `COFFER_FAILPOINT=before-put:N` or `after-put:N` kills the process with
//! `abort()` (no unwinding, no destructors: a real death) just before or
//! just after the N-th object write; `before-put:KIND:N` counts only one
//! kind (`pack`, `index`, `snapshot`, `key`, `lock`, `config`; plurals work
//! too). `before-delete[:KIND]:N` does the same just before the N-th
//! deletion. `enospc-put[:KIND]:N` does not kill: the local backend's N-th
//! write stops half way with ENOSPC, as on a full disk (doc/reliability.md
//! E1); the local backend asks `enospc_now`. Unset, nothing is wrapped.

use super::{Backend, FileKind, ObjectInfo, PendingPut};
use crate::error::Result;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Point {
    delete: bool,
    after: bool,
    /// Fail the write with ENOSPC instead of aborting.
    enospc: bool,
    kind: Option<String>,
    n: u64,
}

static POINT: OnceLock<Option<Point>> = OnceLock::new();
static COUNT: AtomicU64 = AtomicU64::new(0);

fn point() -> &'static Option<Point> {
    POINT.get_or_init(|| parse(&std::env::var("COFFER_FAILPOINT").ok()?))
}

fn parse(v: &str) -> Option<Point> {
    let parts: Vec<&str> = v.split(':').collect();
    let (delete, after, enospc) = match *parts.first()? {
        "before-put" => (false, false, false),
        "after-put" => (false, true, false),
        "before-delete" => (true, false, false),
        "enospc-put" => (false, false, true),
        _ => return None,
    };
    let (kind, n) = match parts.as_slice() {
        [_, n] => (None, n.parse().ok()?),
        [_, k, n] => (Some(k.to_string()), n.parse().ok()?),
        _ => return None,
    };
    Some(Point {
        delete,
        after,
        enospc,
        kind,
        n,
    })
}

/// `pack` or `packs`, `key` or `keys`, …; `config` for the config.
fn kind_matches(k: &str, dir: &str) -> bool {
    k == dir || format!("{k}s") == dir || (k == "config" && dir.is_empty())
}

/// Does the failpoint count events of this kind?
fn counts_kind(p: &Point, kind: FileKind) -> bool {
    p.kind
        .as_deref()
        .is_none_or(|k| kind_matches(k, kind.dir()))
}

/// Count the event (a delete, or a put before or after it is durable) if
/// the failpoint is a kill point counting it, and die at the N-th.
fn kill_at(delete: bool, after: bool, kind: FileKind) {
    if let Some(p) = point()
        && !p.enospc
        && p.delete == delete
        && p.after == after
        && counts_kind(p, kind)
        && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == p.n
    {
        std::process::abort();
    }
}

/// Should this write run out of space (the N-th of an `enospc-put`)?
pub(crate) fn enospc_now(kind: FileKind) -> bool {
    match point() {
        Some(p) if p.enospc && counts_kind(p, kind) => {
            COUNT.fetch_add(1, Ordering::SeqCst) + 1 == p.n
        }
        _ => false,
    }
}

/// `inner`, wearing the failpoint `COFFER_FAILPOINT` names, if any.
pub fn install(inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
    match point() {
        Some(p) if !p.enospc => Arc::new(Faulty { inner }),
        _ => inner,
    }
}

struct Faulty {
    inner: Arc<dyn Backend>,
}

/// Counts the put as done once it is durable.
struct CountedPut(Box<dyn PendingPut>, FileKind);

impl PendingPut for CountedPut {
    fn commit(self: Box<Self>) -> Result<()> {
        self.0.commit()?;
        kill_at(false, true, self.1);
        Ok(())
    }
}

impl Backend for Faulty {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.put_pending(kind, name, data)?.commit()
    }
    fn put_pending(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<Box<dyn PendingPut>> {
        kill_at(false, false, kind);
        let p = self.inner.put_pending(kind, name, data)?;
        Ok(Box::new(CountedPut(p, kind)))
    }
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        self.inner.get(kind, name)
    }
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.inner.get_range(kind, name, offset, len)
    }
    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.inner.get_range_into(kind, name, offset, len, buf)
    }
    fn list_each(&self, kind: FileKind, f: &mut dyn FnMut(ObjectInfo) -> Result<()>) -> Result<()> {
        self.inner.list_each(kind, f)
    }
    fn list(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        self.inner.list(kind)
    }
    fn connections(&self) -> usize {
        self.inner.connections()
    }
    fn requests(&self) -> Option<super::Requests> {
        self.inner.requests()
    }
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
    fn probe_create_once(&self) -> Result<Option<bool>> {
        self.inner.probe_create_once()
    }
    fn dir_stamps(&self, kind: FileKind) -> Result<Option<Vec<super::DirStamp>>> {
        self.inner.dir_stamps(kind)
    }
    fn list_dir_each(
        &self,
        kind: FileKind,
        dir: &str,
        f: &mut dyn FnMut(ObjectInfo) -> Result<()>,
    ) -> Result<()> {
        self.inner.list_dir_each(kind, dir, f)
    }
    fn size(&self, kind: FileKind, name: &str) -> Result<u64> {
        self.inner.size(kind, name)
    }
    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        kill_at(true, false, kind);
        self.inner.delete(kind, name)
    }
    /// One at a time, so a kill can fall in the middle of a batch.
    fn delete_many(&self, kind: FileKind, names: &[String]) -> Result<()> {
        names.iter().try_for_each(|n| self.delete(kind, n))
    }
    fn modified(&self, kind: FileKind, name: &str) -> Result<Option<std::time::SystemTime>> {
        self.inner.modified(kind, name)
    }
    fn temp_usage(&self) -> Result<(u64, u64)> {
        self.inner.temp_usage()
    }
    fn abandon(&self) -> usize {
        self.inner.abandon()
    }
    fn remove_stale_temps(&self, min_age: std::time::Duration) -> Result<usize> {
        self.inner.remove_stale_temps(min_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse() {
        let p = parse("before-put:pack:3").unwrap();
        assert!(!p.delete && !p.after && !p.enospc && p.n == 3);
        assert_eq!(p.kind.as_deref(), Some("pack"));
        assert!(parse("after-put:2").unwrap().after);
        assert!(parse("before-delete:index:1").unwrap().delete);
        assert!(parse("enospc-put:1").unwrap().enospc);
        for bad in [
            "",
            "sometime:1",
            "before-put",
            "before-put:x",
            "before-put:a:b:c",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert!(kind_matches("pack", "packs") && kind_matches("packs", "packs"));
        assert!(kind_matches("config", "") && !kind_matches("key", "packs"));
    }
}
