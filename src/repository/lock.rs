//! Repository locks (doc/design.md invariant 7; repo-format/README.md, "Locks").
//!
//! ```text
//! lock := "cofferL1"[8] || exclusive u8 || created_ns i64 || refreshed_ns i64
//!         || hostname str || username str || pid u32
//! ```
//! Sealed with the metadata key, aad = repo || Lock || lock id; stored as
//! `locks/<lock id>`, where the id is random.
//!
//! Backups and checks take shared locks; prune and repair take exclusive
//! ones. Objects are immutable, so a refresh writes a new lock object and
//! then deletes the old one. A lock is *stale* when it was not refreshed
//! for [`LockTimeouts::stale`], or when it belongs to this host and its
//! process is gone; stale locks block nobody.
//!
//! The holder's side of the contract (restic#2715, kopia#1949): the time
//! since the last successful refresh is measured on `CLOCK_BOOTTIME`, which
//! keeps counting while the process is stopped or the machine suspended.
//! Once it exceeds `stale - margin` the lock is *lost*: no refresh can
//! revive it, and the repository refuses to write index segments or
//! snapshots or to delete anything. A SIGSTOPped backup resumed after a
//! prune therefore aborts instead of committing a snapshot whose data the
//! prune may have removed.

use crate::backend::FileKind;
use crate::codec::{DecodeError, Reader, Writer};
use crate::crypto::{AadKind, KeySet, aad, envelope};
use crate::error::{Error, Result};
use crate::id::{LockId, RepoId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) const LOCK_MAGIC: &[u8; 8] = b"cofferL1";

/// How long locks live. Defaults: refresh every 5 minutes, stale after 30,
/// and a holder gives up 5 minutes before it could be seen as stale.
#[derive(Clone, Copy, Debug)]
pub struct LockTimeouts {
    pub refresh: Duration,
    pub stale: Duration,
    pub margin: Duration,
}

impl Default for LockTimeouts {
    fn default() -> Self {
        LockTimeouts {
            refresh: Duration::from_secs(5 * 60),
            stale: Duration::from_secs(30 * 60),
            margin: Duration::from_secs(5 * 60),
        }
    }
}

impl LockTimeouts {
    /// Scale all three from a stale timeout (tests use seconds).
    pub fn with_stale(stale: Duration) -> Self {
        LockTimeouts {
            refresh: stale / 6,
            stale,
            margin: stale / 6,
        }
    }
}

/// A decoded lock object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub exclusive: bool,
    pub created_ns: i64,
    pub refreshed_ns: i64,
    pub hostname: String,
    pub username: String,
    pub pid: u32,
}

impl LockInfo {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(LOCK_MAGIC);
        w.u8(self.exclusive as u8);
        w.i64(self.created_ns);
        w.i64(self.refreshed_ns);
        w.str(&self.hostname);
        w.str(&self.username);
        w.u32(self.pid);
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Result<LockInfo, DecodeError> {
        let mut r = Reader::new(b);
        if r.take(8)? != LOCK_MAGIC {
            return Err(DecodeError("not a lock (bad magic)".into()));
        }
        let exclusive = match r.u8()? {
            0 => false,
            1 => true,
            v => return Err(DecodeError(format!("bad exclusive flag {v}"))),
        };
        let l = LockInfo {
            exclusive,
            created_ns: r.i64()?,
            refreshed_ns: r.i64()?,
            hostname: r.string(1024, "hostname")?,
            username: r.string(1024, "username")?,
            pid: r.u32()?,
        };
        r.finish()?;
        Ok(l)
    }

    /// Stale: not refreshed in time, or a dead process on this host.
    pub fn is_stale(&self, now_ns: i64, stale: Duration, this_host: &str) -> bool {
        let age = now_ns.saturating_sub(self.refreshed_ns);
        if age > stale.as_nanos() as i64 {
            return true;
        }
        self.hostname == this_host && !pid_alive(self.pid)
    }

    pub fn describe(&self, now_ns: i64) -> String {
        let age = now_ns.saturating_sub(self.refreshed_ns) / 1_000_000_000;
        format!(
            "{} lock held by {}@{} (pid {}), refreshed {age}s ago",
            if self.exclusive {
                "exclusive"
            } else {
                "shared"
            },
            self.username,
            self.hostname,
            self.pid
        )
    }
}

pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if p <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(p, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Seconds on `CLOCK_BOOTTIME`: monotonic, and counts suspend and SIGSTOP.
pub(crate) fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

pub(crate) fn seal_lock(keys: &KeySet, repo: &RepoId, id: &LockId, info: &LockInfo) -> Vec<u8> {
    envelope::seal(&keys.meta, &aad(repo, AadKind::Lock, &id.0), &info.encode())
}

pub(crate) fn open_lock(
    keys: &KeySet,
    repo: &RepoId,
    id: &LockId,
    sealed: &[u8],
) -> Result<LockInfo> {
    let obj = FileKind::Lock.path(&id.to_hex());
    let plain = envelope::open(&keys.meta, &aad(repo, AadKind::Lock, &id.0), sealed)
        .map_err(|e| Error::corrupt(obj.clone(), e.to_string()))?;
    LockInfo::decode(&plain).map_err(|e| Error::corrupt(obj, e.0))
}

/// The holder's view of its lock, shared with the refresher thread.
pub struct LockState {
    pub id: Mutex<LockId>,
    pub info: Mutex<LockInfo>,
    /// Boottime of the last successful write of the lock object.
    pub last_refresh: Mutex<Duration>,
    pub lost: AtomicBool,
    pub timeouts: LockTimeouts,
}

impl LockState {
    /// `Ok` while the lock is certainly still held.
    pub fn check(&self) -> Result<()> {
        let since =
            boottime().saturating_sub(*self.last_refresh.lock().unwrap_or_else(|p| p.into_inner()));
        if self.lost.load(Ordering::SeqCst) || since + self.timeouts.margin >= self.timeouts.stale {
            self.lost.store(true, Ordering::SeqCst);
            return Err(Error::LockLost {
                secs: since.as_secs(),
            });
        }
        Ok(())
    }
}

/// Writes a fresh lock object for the holder (and deletes the old one).
pub(crate) type RefreshFn = Box<dyn Fn(&LockState) -> Result<()> + Send + Sync>;

/// A held lock: refreshed in the background, removed on drop.
pub struct LockGuard {
    pub state: Arc<LockState>,
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    refresher: Option<std::thread::JoinHandle<()>>,
    remove: Box<dyn Fn(&LockId) + Send + Sync>,
}

impl LockGuard {
    pub fn new(
        state: Arc<LockState>,
        refresh: RefreshFn,
        remove: Box<dyn Fn(&LockId) + Send + Sync>,
    ) -> LockGuard {
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let (s2, st2) = (stop.clone(), state.clone());
        let refresher = std::thread::Builder::new()
            .name("coffer-lock".into())
            .spawn(move || {
                loop {
                    let (m, cv) = &*s2;
                    let guard = m.lock().unwrap_or_else(|p| p.into_inner());
                    let (guard, _) = cv
                        .wait_timeout_while(guard, st2.timeouts.refresh, |stopped| !*stopped)
                        .unwrap_or_else(|p| p.into_inner());
                    if *guard {
                        return;
                    }
                    drop(guard);
                    // A lock past its deadline is never revived.
                    if st2.check().is_err() || refresh(&st2).is_err() {
                        st2.lost.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            })
            .ok();
        LockGuard {
            state,
            stop,
            refresher,
            remove,
        }
    }

    pub fn check(&self) -> Result<()> {
        self.state.check()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.stop;
            *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        let id = *self.state.id.lock().unwrap_or_else(|p| p.into_inner());
        (self.remove)(&id);
    }
}

use super::Repository;
use crate::id::LockId as Lid;

/// A lock object as listed: readable, or why not.
pub(crate) type ListedLock = (Lid, Result<LockInfo>);

impl Repository {
    /// Every lock object in the repository.
    pub fn list_locks(&self) -> Result<Vec<ListedLock>> {
        self.list_locks_except(None)
    }

    /// Every lock object but `ours` (which this process wrote and need not
    /// read back: a request less on a remote store).
    fn list_locks_except(&self, ours: Option<&Lid>) -> Result<Vec<ListedLock>> {
        let mut out = Vec::new();
        for name in self
            .backend()
            .list(FileKind::Lock)?
            .into_iter()
            .map(|o| o.name)
        {
            let Some(id) = Lid::from_hex(&name) else {
                continue;
            };
            if Some(&id) == ours {
                continue;
            }
            let info = self
                .backend()
                .get(FileKind::Lock, &name)
                .and_then(|b| open_lock(self.keys(), self.id(), &id, &b));
            match info {
                // Removed between list and get: it is gone, not damaged.
                Err(Error::NotFound { .. }) => {}
                info => out.push((id, info)),
            }
        }
        Ok(out)
    }

    /// Is this lock object, which cannot be read, older than `stale`
    /// (by its modification time)? A live holder rewrites its lock every
    /// refresh, so such an object is debris, not a lock anyone holds: a
    /// garbage file dropped in `locks/` must not stop every backup forever.
    pub fn unreadable_lock_expired(&self, id: &Lid, stale: Duration) -> bool {
        let modified = self.backend().modified(FileKind::Lock, &id.to_hex());
        matches!(modified, Ok(Some(t)) if t.elapsed().is_ok_and(|age| age > stale))
    }

    /// Remove the locks this host's processes left when they died (killed
    /// runs), so they do not pile up until someone runs `unlock`. Another
    /// host's locks are left alone: their processes cannot be checked here.
    /// Returns the locks that remain.
    fn remove_dead_own_locks(&self) -> Result<Vec<ListedLock>> {
        let host = super::hostname();
        let mut remain = Vec::new();
        for (id, info) in self.list_locks()? {
            match &info {
                Ok(l) if l.hostname == host && !pid_alive(l.pid) => {
                    // A failed removal only leaves it stale, as before.
                    let _ = self.remove_lock(&id);
                }
                _ => remain.push((id, info)),
            }
        }
        Ok(remain)
    }

    pub fn remove_lock(&self, id: &Lid) -> Result<()> {
        self.backend().delete(FileKind::Lock, &id.to_hex())
    }

    fn write_lock(&self, info: &LockInfo) -> Result<Lid> {
        let mut b = [0u8; 32];
        envelope::random_bytes(&mut b);
        let id = Lid(b);
        self.backend().put(
            FileKind::Lock,
            &id.to_hex(),
            &seal_lock(self.keys(), self.id(), &id, info),
        )?;
        Ok(id)
    }

    /// The first lock (other than `ours`) that conflicts with taking a lock
    /// of this kind. An unreadable lock object conflicts with everything:
    /// nobody can tell what it protects (doc/reliability.md G8).
    fn conflict(
        &self,
        listed: Vec<ListedLock>,
        exclusive: bool,
        ours: Option<&Lid>,
        stale: Duration,
    ) -> Result<Option<String>> {
        let now = super::now_ns();
        let host = super::hostname();
        for (id, info) in listed {
            if Some(&id) == ours {
                continue;
            }
            match info {
                Ok(l) if l.is_stale(now, stale, &host) => {}
                Ok(l) if exclusive || l.exclusive => return Ok(Some(l.describe(now))),
                Ok(_) => {}
                Err(e) if self.unreadable_lock_expired(&id, stale) => {
                    // Said once per attempt, not again on the re-check.
                    if ours.is_some() {
                        continue;
                    }
                    self.notice(&format!(
                        "ignoring an unreadable lock ({e}): unchanged for longer than the stale time ({}s), so no running coffer holds it; `coffer unlock` removes it",
                        stale.as_secs()
                    ));
                }
                Err(e) => {
                    return Ok(Some(format!(
                        "{e} (if no other coffer is running, remove it with `coffer unlock --remove-all`)"
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Take a shared or exclusive lock, waiting up to `wait` for a
    /// conflicting one to go away. Once held, every index segment, snapshot
    /// and deletion this repository writes first checks the lock is intact.
    pub fn lock(
        self: &std::sync::Arc<Self>,
        exclusive: bool,
        timeouts: LockTimeouts,
        wait: Duration,
    ) -> Result<LockGuard> {
        let mut listed = Some(self.remove_dead_own_locks()?);
        let start = boottime();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let now_listed = match listed.take() {
                Some(l) => l,
                None => self.list_locks()?,
            };
            let blocked = match self.conflict(now_listed, exclusive, None, timeouts.stale)? {
                Some(why) => Some(why),
                None => {
                    let now = super::now_ns();
                    let info = LockInfo {
                        exclusive,
                        created_ns: now,
                        refreshed_ns: now,
                        hostname: super::hostname(),
                        username: super::username(),
                        pid: std::process::id(),
                    };
                    let id = self.write_lock(&info)?;
                    // Someone may have locked at the same moment: look again,
                    // and back off if so. Both may back off; both never proceed.
                    let again = self.list_locks_except(Some(&id))?;
                    match self.conflict(again, exclusive, Some(&id), timeouts.stale)? {
                        None => return Ok(self.hold(id, info, timeouts)),
                        Some(why) => {
                            let _ = self.remove_lock(&id);
                            Some(why)
                        }
                    }
                }
            };
            let why = blocked.unwrap_or_default();
            if boottime().saturating_sub(start) >= wait {
                return Err(Error::Locked { holder: why });
            }
            // Jitter, so two waiters that collided do not collide again.
            let mut j = [0u8; 1];
            envelope::random_bytes(&mut j);
            let pause =
                Duration::from_millis(200 * u64::from(attempt.min(25)) + u64::from(j[0]) * 4);
            std::thread::sleep(
                pause
                    .min(wait.saturating_sub(boottime().saturating_sub(start)))
                    .max(Duration::from_millis(50)),
            );
        }
    }

    /// Leave at once (a signal): no new objects, this process's unfinished
    /// temporary objects removed, and its lock removed so that nobody has
    /// to `unlock` after it. What was already written stays; it is as safe
    /// as after a kill at the same moment.
    pub fn abandon(&self) {
        self.backend.abandon();
        let state = self
            .lock_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(state) = state {
            // The refresher stops rather than write a new lock object.
            state.lost.store(true, Ordering::SeqCst);
            let id = *state.id.lock().unwrap_or_else(|p| p.into_inner());
            let _ = self.remove_lock(&id);
        }
    }

    fn hold(
        self: &std::sync::Arc<Self>,
        id: Lid,
        info: LockInfo,
        timeouts: LockTimeouts,
    ) -> LockGuard {
        let state = Arc::new(LockState {
            id: Mutex::new(id),
            info: Mutex::new(info),
            last_refresh: Mutex::new(boottime()),
            lost: AtomicBool::new(false),
            timeouts,
        });
        self.set_lock_state(Some(state.clone()));
        let (r1, r2) = (self.clone(), self.clone());
        let refresh: RefreshFn = Box::new(move |st: &LockState| {
            let old = *st.id.lock().unwrap_or_else(|p| p.into_inner());
            // Our lock was removed (`unlock --remove-all`): it is lost.
            r1.backend().get(FileKind::Lock, &old.to_hex())?;
            let started = boottime();
            let mut info = st.info.lock().unwrap_or_else(|p| p.into_inner()).clone();
            info.refreshed_ns = super::now_ns();
            let new = r1.write_lock(&info)?;
            *st.id.lock().unwrap_or_else(|p| p.into_inner()) = new;
            *st.info.lock().unwrap_or_else(|p| p.into_inner()) = info;
            *st.last_refresh.lock().unwrap_or_else(|p| p.into_inner()) = started;
            let _ = r1.remove_lock(&old);
            Ok(())
        });
        let remove: Box<dyn Fn(&Lid) + Send + Sync> = Box::new(move |id: &Lid| {
            r2.set_lock_state(None);
            let _ = r2.remove_lock(id);
        });
        LockGuard::new(state, refresh, remove)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_round_trip_and_staleness() {
        let l = LockInfo {
            exclusive: true,
            created_ns: 1,
            refreshed_ns: 1_000_000_000_000,
            hostname: "h".into(),
            username: "u".into(),
            pid: std::process::id(),
        };
        assert_eq!(LockInfo::decode(&l.encode()).unwrap(), l);
        let stale = Duration::from_secs(30);
        assert!(!l.is_stale(l.refreshed_ns + 1, stale, "h"));
        assert!(l.is_stale(l.refreshed_ns + 31_000_000_000, stale, "h"));
        let dead = LockInfo {
            pid: u32::MAX - 1,
            ..l.clone()
        };
        assert!(dead.is_stale(dead.refreshed_ns, stale, "h"));
        assert!(!dead.is_stale(dead.refreshed_ns, stale, "other-host"));
        for n in 0..l.encode().len() {
            assert!(LockInfo::decode(&l.encode()[..n]).is_err());
        }
    }
}
