//! Repositories in a real S3 bucket. `COFFER_TEST_S3` names an endpoint
//! and a bucket (`http://127.0.0.1:8333/BUCKET`), the credentials come from
//! the usual `AWS_*` variables, and every repository gets a prefix of its
//! own, so tests run in parallel in one bucket and a rerun never meets an
//! earlier run's objects.
//!
//! Without `COFFER_TEST_S3` a test says it is skipped and passes, unless
//! `COFFER_REQUIRE_S3` is set (CI sets it): then it fails, so CI cannot
//! pass by skipping.

use super::*;
use coffer::backend::{Backend, FileKind, Location, Options};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every object kind, for listing and deleting a whole repository.
const KINDS: [FileKind; 6] = [
    FileKind::Key,
    FileKind::Pack,
    FileKind::Index,
    FileKind::Snapshot,
    FileKind::Lock,
    FileKind::Damaged,
];
const CONFIGS: [&str; 2] = ["config", "config.copy"];

/// A fresh `s3:` location under `COFFER_TEST_S3`, or `None` after saying
/// why `test` is skipped.
pub fn s3_location_or_skip(test: &str) -> Option<String> {
    let base = match std::env::var("COFFER_TEST_S3") {
        Ok(v) if !v.is_empty() => v,
        _ => {
            if std::env::var_os("COFFER_REQUIRE_S3").is_some_and(|v| !v.is_empty() && v != "0") {
                panic!("{test}: COFFER_REQUIRE_S3 is set but COFFER_TEST_S3 is not");
            }
            println!("skipped: COFFER_TEST_S3 not set ({test})");
            return None;
        }
    };
    assert!(
        base.starts_with("http://") || base.starts_with("https://"),
        "COFFER_TEST_S3={base:?} is not http(s)://HOST[:PORT]/BUCKET"
    );
    Some(format!(
        "s3:{}/{}",
        base.trim_end_matches('/'),
        unique_prefix(test)
    ))
}

/// `coffer-e2e/TEST-PID-N-RANDOM`: unique across threads, processes and reruns.
fn unique_prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos(),
    );
    let name: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!(
        "coffer-e2e/{name}-{}-{n}-{:08x}",
        std::process::id(),
        h.finish() as u32
    )
}

/// The store at an `s3:` location, as the binary opens it.
pub fn s3_backend(location: &str) -> Arc<dyn Backend> {
    let loc = Location::parse(location).unwrap_or_else(|e| panic!("{location}: {e}"));
    coffer::backend::open(&loc, &Options::default())
        .unwrap_or_else(|e| panic!("open {location}: {e}"))
}

/// The directory name of a kind as the tests name it (`packs`, `locks`, …).
fn kind_of(dir: &str) -> FileKind {
    KINDS
        .into_iter()
        .find(|k| k.dir() == dir)
        .unwrap_or_else(|| panic!("no object kind {dir:?}"))
}

/// Every object under `location` but its locks, by repository path, with
/// its size.
pub fn s3_listing(b: &dyn Backend) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    for kind in KINDS.into_iter().filter(|k| *k != FileKind::Lock) {
        for o in b.list(kind).expect("list objects") {
            out.insert(PathBuf::from(kind.path(&o.name)), o.size);
        }
    }
    for name in CONFIGS {
        if let Ok(size) = b.size(FileKind::Config, name) {
            out.insert(PathBuf::from(name), size);
        }
    }
    out
}

/// Copy every object but the locks from one store to another.
pub fn s3_copy_objects(from: &dyn Backend, to: &dyn Backend) {
    for kind in KINDS.into_iter().filter(|k| *k != FileKind::Lock) {
        for o in from.list(kind).expect("list objects") {
            let data = from.get(kind, &o.name).expect("get object");
            to.put(kind, &o.name, &data).expect("put object");
        }
    }
    for name in CONFIGS {
        if let Ok(data) = from.get(FileKind::Config, name) {
            to.put(FileKind::Config, name, &data).expect("put config");
        }
    }
}

/// Delete everything under a test's prefix.
pub fn s3_remove_all(b: &dyn Backend) {
    for kind in KINDS {
        let names: Vec<String> = b
            .list(kind)
            .expect("list objects")
            .into_iter()
            .map(|o| o.name)
            .collect();
        b.delete_many(kind, &names).expect("delete objects");
    }
    for name in CONFIGS {
        b.delete(FileKind::Config, name).expect("delete config");
    }
}

/// A repository location that is removed from the bucket when the test
/// passes, and kept (and named) for inspection when it fails.
pub struct S3Repo {
    pub location: String,
}

impl Drop for S3Repo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the failed test's repository is kept: {}", self.location);
        } else {
            s3_remove_all(&*s3_backend(&self.location));
        }
    }
}

impl Env {
    /// An environment whose repository is a fresh prefix in the
    /// `COFFER_TEST_S3` bucket, or `None` after saying why `test` is
    /// skipped.
    pub fn s3(test: &str) -> Option<Env> {
        let location = s3_location_or_skip(test)?;
        let mut env = Env::new();
        env.repo = PathBuf::from(&location);
        env.s3 = Some(S3Repo { location });
        Some(env)
    }

    /// A second S3 environment holding a copy of this one's objects (all
    /// but the locks), as `copy_dir` makes one of a local repository.
    pub fn s3_clone(&self, test: &str) -> Env {
        let env = Env::s3(test).expect("an S3 environment is cloned only when S3 is set");
        s3_copy_objects(&*self.backend(), &*env.backend());
        env
    }

    /// The S3 location, when the repository is in a bucket.
    pub fn s3_location(&self) -> Option<&str> {
        self.s3.as_ref().map(|s| s.location.as_str())
    }

    /// The repository's store, through the library, as the binary opens it.
    pub fn backend(&self) -> Arc<dyn Backend> {
        match self.s3_location() {
            Some(l) => s3_backend(l),
            None => Arc::new(coffer::backend::local::LocalBackend::open(&self.repo)),
        }
    }

    /// The names of the objects of one kind (`packs`, `index`, `locks`, …),
    /// on a local disk or in a bucket alike.
    pub fn object_names(&self, kind: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .backend()
            .list(kind_of(kind))
            .expect("list objects")
            .into_iter()
            .map(|o| o.name)
            .collect();
        names.sort();
        names
    }
}
