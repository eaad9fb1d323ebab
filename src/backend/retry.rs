//! Retries for a remote store: 503 SlowDown, 429, 5xx, timeouts, resets
//! and bodies cut short are routine on S3 (restic#1600, #4018), so every
//! request that failed with a transient [`crate::error::Failure`] is tried again, after
//! a capped, jittered exponential pause, up to [`Options::retries`] tries.
//! Anything else (denied, not found, a permanent error) is returned at once.
//!
//! A put whose answer was lost may have landed. The retry then finds the
//! name taken: a content-named object of the same size is this one (the
//! backend already knows that), and a create-once object (config, key,
//! lock) whose bytes are ours is ours. Nothing is written twice under one
//! name, and nothing is taken for ours that is not.

use super::options::Options;
use super::{Backend, FileKind, ObjectInfo};
use crate::error::{Error, Result};
use std::sync::OnceLock;
use std::time::Duration;

/// The longest pause between two tries.
const MAX_PAUSE: Duration = Duration::from_secs(30);

type Reporter = Box<dyn Fn(&str) + Send + Sync>;
static REPORTER: OnceLock<(Reporter, bool)> = OnceLock::new();
/// Set once the quiet one-time notice has been given.
static NOTICED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Where retries are reported: with `every`, a line per retried request
/// (the CLI's `-v`); without, one line the first time a request needs a
/// third try, so that a store that has stopped answering is not a silent
/// wait of a minute or more. Unset, retries are silent.
pub fn set_reporter(f: Reporter, every: bool) {
    let _ = REPORTER.set((f, every));
}

pub(crate) struct Retrying<B> {
    inner: B,
    tries: u32,
    base: Duration,
}

impl<B: Backend> Retrying<B> {
    pub fn new(inner: B, o: &Options) -> Self {
        Retrying {
            inner,
            tries: o.retries.max(1),
            base: o.retry_base,
        }
    }

    /// `f` until it succeeds, fails for good, or has had every try.
    fn run<T>(&self, op: &str, what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 1;
        loop {
            match f() {
                Err(e) if e.is_transient() && attempt < self.tries => {
                    let pause = pause(self.base, attempt);
                    match REPORTER.get() {
                        Some((r, true)) => r(&format!(
                            "coffer: {op} {what} failed ({e}); try {} of {} in {} ms",
                            attempt + 1,
                            self.tries,
                            pause.as_millis()
                        )),
                        Some((r, false))
                            if attempt == 2
                                && !NOTICED.swap(true, std::sync::atomic::Ordering::Relaxed) =>
                        {
                            r(&format!(
                                "coffer: the store is not answering as it should ({e}); retrying, up to {} tries per request (-v shows each)",
                                self.tries
                            ))
                        }
                        _ => {}
                    }
                    std::thread::sleep(pause);
                    attempt += 1;
                }
                Err(e) => return Err(with_tries(e, attempt)),
                ok => return ok,
            }
        }
    }
}

/// `base` doubled per try, capped, then scaled by a random factor in
/// [0.5, 1.5) so that threads that failed together do not retry together.
fn pause(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(MAX_PAUSE);
    let mut r = [0u8; 2];
    let jitter = match getrandom::fill(&mut r) {
        Ok(()) => f64::from(u16::from_le_bytes(r)) / 65536.0,
        Err(_) => 0.5,
    };
    capped.mul_f64(0.5 + jitter)
}

/// Record how many tries a transient failure had, for its message.
fn with_tries(e: Error, n: u32) -> Error {
    match e {
        Error::Remote {
            op,
            object,
            failure,
            detail,
            ..
        } => Error::Remote {
            op,
            object,
            failure,
            detail,
            tries: n,
        },
        e => e,
    }
}

impl<B: Backend> Backend for Retrying<B> {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let mut uncertain = false;
        let what = kind.path(name);
        self.run("write", &what, || {
            let r = self.inner.put(kind, name, data);
            match r {
                // An earlier try that failed on the way back may have
                // stored it: ours if the bytes are ours.
                Err(Error::AlreadyExists { .. }) if uncertain => match self.inner.get(kind, name) {
                    Ok(stored) if stored == data => Ok(()),
                    Ok(_) => r,
                    Err(e) => Err(e),
                },
                Err(e) => {
                    uncertain |= e.is_transient();
                    Err(e)
                }
                ok => ok,
            }
        })
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        self.run("read", &kind.path(name), || self.inner.get(kind, name))
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.run("read", &kind.path(name), || {
            self.inner.get_range(kind, name, offset, len)
        })
    }

    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.run("read", &kind.path(name), || {
            self.inner.get_range_into(kind, name, offset, len, buf)
        })
    }

    /// A listing that failed half way is started again, and `f` sees each
    /// object once: the pages are gathered before they are handed on.
    fn list_each(&self, kind: FileKind, f: &mut dyn FnMut(ObjectInfo) -> Result<()>) -> Result<()> {
        let all = self.run("list", kind.dir(), || {
            let mut all = Vec::new();
            self.inner.list_each(kind, &mut |o| {
                all.push(o);
                Ok(())
            })?;
            Ok(all)
        })?;
        all.into_iter().try_for_each(f)
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

    fn size(&self, kind: FileKind, name: &str) -> Result<u64> {
        self.run("stat", &kind.path(name), || self.inner.size(kind, name))
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        self.run("delete", &kind.path(name), || self.inner.delete(kind, name))
    }

    fn delete_many(&self, kind: FileKind, names: &[String]) -> Result<()> {
        let what = format!("{} objects under {}", names.len(), kind.dir());
        self.run("delete", &what, || self.inner.delete_many(kind, names))
    }

    fn modified(&self, kind: FileKind, name: &str) -> Result<Option<std::time::SystemTime>> {
        self.run("stat", &kind.path(name), || self.inner.modified(kind, name))
    }

    fn temp_usage(&self) -> Result<(u64, u64)> {
        self.inner.temp_usage()
    }

    fn abandon(&self) -> usize {
        self.inner.abandon()
    }

    fn remove_stale_temps(&self, min_age: Duration) -> Result<usize> {
        self.inner.remove_stale_temps(min_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::error::Failure;
    use std::sync::Mutex;

    /// A store that fails the first `fail` requests transiently, and
    /// stores a put's bytes even when it "loses the answer".
    struct Flaky {
        inner: MemoryBackend,
        fail: Mutex<u32>,
        lose_answer: bool,
    }

    impl Flaky {
        fn take_failure(&self) -> Option<Error> {
            let mut n = self.fail.lock().unwrap();
            (*n > 0).then(|| {
                *n -= 1;
                Error::Remote {
                    op: "write",
                    object: "x".into(),
                    failure: Failure::Transient,
                    detail: "HTTP 503 SlowDown".into(),
                    tries: 1,
                }
            })
        }
    }

    impl Backend for Flaky {
        fn location(&self) -> String {
            "flaky".into()
        }
        fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
            if self.lose_answer
                && let Some(e) = self.take_failure()
            {
                self.inner.put(kind, name, data)?;
                return Err(e);
            }
            match self.take_failure() {
                Some(e) => Err(e),
                None => self.inner.put(kind, name, data),
            }
        }
        fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
            match self.take_failure() {
                Some(e) => Err(e),
                None => self.inner.get(kind, name),
            }
        }
        fn get_range_into(
            &self,
            k: FileKind,
            n: &str,
            o: u64,
            l: usize,
            buf: &mut Vec<u8>,
        ) -> Result<()> {
            self.inner.get_range_into(k, n, o, l, buf)
        }
        fn list_each(
            &self,
            kind: FileKind,
            f: &mut dyn FnMut(ObjectInfo) -> Result<()>,
        ) -> Result<()> {
            self.inner.list_each(kind, f)
        }
        fn size(&self, kind: FileKind, name: &str) -> Result<u64> {
            self.inner.size(kind, name)
        }
        fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
            self.inner.delete(kind, name)
        }
    }

    fn opts(tries: u32) -> Options {
        Options {
            retries: tries,
            retry_base: Duration::from_millis(1),
            ..Options::default()
        }
    }

    fn flaky(fail: u32, lose_answer: bool) -> Flaky {
        Flaky {
            inner: MemoryBackend::new(),
            fail: Mutex::new(fail),
            lose_answer,
        }
    }

    #[test]
    fn transient_failures_are_retried_until_the_tries_run_out() {
        let b = Retrying::new(flaky(3, false), &opts(5));
        b.put(FileKind::Pack, "ab", b"data").unwrap();
        assert_eq!(b.get(FileKind::Pack, "ab").unwrap(), b"data");
        let b = Retrying::new(flaky(5, false), &opts(3));
        match b.put(FileKind::Pack, "ab", b"data") {
            Err(e @ Error::Remote { tries: 3, .. }) => {
                assert!(e.to_string().contains("after 3 tries"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lost_answer_to_a_create_once_put_is_resolved_by_its_bytes() {
        // The lock landed, the answer did not: the retry finds the name
        // taken by our own bytes, which is success.
        let b = Retrying::new(flaky(1, true), &opts(3));
        b.put(FileKind::Lock, "aa", b"mine").unwrap();
        assert_eq!(b.get(FileKind::Lock, "aa").unwrap(), b"mine");
        // Someone else's lock under the name stays an error.
        let b = Retrying::new(flaky(0, false), &opts(3));
        b.inner.inner.put(FileKind::Key, "bb", b"theirs").unwrap();
        assert!(matches!(
            b.put(FileKind::Key, "bb", b"mine"),
            Err(Error::AlreadyExists { .. })
        ));
    }

    #[test]
    fn pauses_grow_are_capped_and_jittered() {
        let base = Duration::from_millis(100);
        for attempt in 1..40 {
            let p = pause(base, attempt);
            let exp = base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(MAX_PAUSE);
            assert!(p >= exp / 2 && p < exp * 3 / 2, "{attempt}: {p:?}");
        }
    }
}
