//! SIGINT and SIGTERM. Readers that write into the user's files (restore,
//! drill) take them as a stop request and clean up as they unwind.
//! Commands that write to the repository are safe to kill at any point (a
//! backup's packs are reused by the next run, nothing is recorded half
//! done), so on a signal they say so and leave at once, after removing
//! their lock and their unfinished temporary objects
//! ([`abandon_on_signal`]).

use coffer::repository::Repository;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
    SIGNAL.store(sig, Ordering::Relaxed);
    // A second signal kills at once, for a user who will not wait for the
    // cleanup. SAFETY: signal() is async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Turn SIGINT and SIGTERM into the returned stop flag.
pub fn stop_on_signal() -> &'static AtomicBool {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to atomics and resets itself,
        // all async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
    &STOP
}

/// The exit code of a run stopped by a signal: 128 + its number, as a
/// shell reports a process the signal killed (130 for SIGINT).
pub fn exit_code() -> std::process::ExitCode {
    let sig = SIGNAL.load(Ordering::Relaxed).clamp(1, 127);
    std::process::ExitCode::from(128 + sig as u8)
}

/// For a command that writes to `repo`: on SIGINT or SIGTERM, print what
/// the interruption means (`outcome`), remove this process's unfinished
/// temporary objects and its lock, and exit with 128 + the signal. A
/// watcher thread does it, since a signal handler may do almost nothing.
pub fn abandon_on_signal(repo: Arc<Repository>, outcome: &'static str) {
    let stop = stop_on_signal();
    let watcher = std::thread::Builder::new()
        .name("coffer-signal".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            repo.abandon();
            let sig = SIGNAL.load(Ordering::Relaxed);
            let name = if sig == libc::SIGTERM { "SIGTERM" } else { "SIGINT" };
            crate::cli::output::notice(&format!(
                "coffer: interrupted by {name}: {outcome}; the lock and unfinished temporary files were removed"
            ));
            std::process::exit(128 + sig.clamp(1, 127));
        });
    if watcher.is_err() {
        // Without a watcher the default action stays: a kill is safe too.
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: restoring the default action is async-signal-safe.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}
