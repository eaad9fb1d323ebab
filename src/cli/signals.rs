//! SIGINT and SIGTERM as a stop request, for the commands that clean up
//! after themselves when stopped (restore, drill). Other commands keep
//! the default action: they are safe to kill at any point (a backup's
//! packs are reused by the next run, nothing is recorded half-done).

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
