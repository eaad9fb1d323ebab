//! Progress display: an indicatif line on a terminal, restic-style JSON
//! status lines with `--json`, nothing otherwise (not a terminal, `-q`).

use coffer::progress::{Progress, SourceWarning};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Counters {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub warnings: AtomicU64,
    pub start: Instant,
}

impl Counters {
    fn new() -> Self {
        Counters {
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            warnings: AtomicU64::new(0),
            start: Instant::now(),
        }
    }
}

/// What a command's progress counts, and what it does to the bytes:
/// backup reads files, check verifies packs, copy copies snapshots.
#[derive(Clone, Copy, Debug)]
pub struct Units {
    pub noun: &'static str,
    pub verb: &'static str,
}

pub enum Display {
    Bar(ProgressBar),
    Json(Mutex<Instant>),
    Silent,
}

pub struct CliProgress {
    pub counters: Counters,
    display: Display,
    total_files: AtomicU64,
    /// The file being read, named again by updates that come from its
    /// bytes (one big file is read for hours between its start and end).
    current: Mutex<String>,
    /// Print JSON status lines as bytes are read, not only per file.
    json_per_bytes: bool,
    units: Units,
    /// `-v`: name each file read or written; `-vv`: unchanged ones too.
    list: u8,
}

impl CliProgress {
    pub fn new(json: bool, quiet: bool) -> Self {
        use std::io::IsTerminal;
        let display = if json && !quiet {
            Display::Json(Mutex::new(Instant::now()))
        } else if !quiet && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Display::Bar(bar)
        } else {
            Display::Silent
        };
        CliProgress {
            counters: Counters::new(),
            display,
            total_files: AtomicU64::new(0),
            current: Mutex::new(String::new()),
            json_per_bytes: false,
            units: Units {
                noun: "files",
                verb: "read",
            },
            list: 0,
        }
    }

    /// Name files as they are done, on stderr: at `verbose` 1 those read
    /// or written, at 2 the unchanged ones too. `-q` names none.
    pub fn listing(mut self, verbose: u8, quiet: bool) -> Self {
        self.list = if quiet { 0 } else { verbose };
        self
    }

    /// Count `noun` (packs, snapshots) instead of files, and name what is
    /// done to their bytes (`verified`, `copied`).
    pub fn counting(mut self, noun: &'static str, verb: &'static str) -> Self {
        self.units = Units { noun, verb };
        self
    }

    /// JSON status lines also while a file is being read (a backup's
    /// output is a stream of lines; check's and repair's `--json` stay one
    /// document).
    pub fn with_json_status_per_bytes(mut self) -> Self {
        self.json_per_bytes = true;
        self
    }

    /// Show the counts; `started` names a file that just started or ended.
    fn status(&self, started: Option<&Path>) {
        if matches!(self.display, Display::Silent) {
            return;
        }
        let cur = {
            let mut c = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = started {
                *c = p.display().to_string();
            }
            c.clone()
        };
        let files = self.counters.files.load(Ordering::Relaxed);
        let bytes = self.counters.bytes.load(Ordering::Relaxed);
        let secs = self.counters.start.elapsed().as_secs_f64().max(0.001);
        match &self.display {
            Display::Bar(b) => {
                let total = self.total_files.load(Ordering::Relaxed);
                b.set_message(status_line(files, total, self.units, bytes, secs, &cur));
            }
            Display::Json(last) => {
                let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
                if l.elapsed() >= Duration::from_secs(1) {
                    *l = Instant::now();
                    super::output::json(&serde_json::json!({
                        "message_type": "status",
                        "seconds_elapsed": secs as u64,
                        "files_done": files,
                        "bytes_done": bytes,
                        "current_files": if cur.is_empty() { vec![] } else { vec![cur] },
                    }));
                }
            }
            Display::Silent => {}
        }
    }

    /// Run `f`, which prints, with the bar out of its way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.display {
            Display::Bar(b) => b.suspend(f),
            _ => f(),
        }
    }

    pub fn finish(&self) {
        if let Display::Bar(b) = &self.display {
            b.finish_and_clear();
        }
    }
}

impl Progress for CliProgress {
    fn wants_totals(&self) -> bool {
        matches!(self.display, Display::Bar(_))
    }

    fn scan_total(&self, files: u64, bytes: u64) {
        self.total_files.store(files, Ordering::Relaxed);
        // Without a byte total (copy learns what to copy as it walks)
        // the spinner stays: a bar and ETA would be guesses.
        if let (Display::Bar(b), true) = (&self.display, bytes > 0) {
            b.set_length(bytes);
            b.set_style(
                ProgressStyle::with_template(
                    "[{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}\n{msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
        }
    }

    fn file_started(&self, path: &Path, _size: u64) {
        self.status(Some(path));
    }

    fn file_done(&self, path: &Path, size: u64, read: u64) {
        self.counters.files.fetch_add(1, Ordering::Relaxed);
        if let Some(line) = listed(self.list, self.units, path, size, read) {
            self.suspend(|| super::output::notice(&line));
        }
        if read == 0 {
            // Unchanged files count as done for the bar and its ETA.
            if let Display::Bar(b) = &self.display {
                b.inc(size);
            }
        }
        self.status(Some(path));
    }

    fn unchanged_done(&self, files: u64, bytes: u64) {
        self.counters.files.fetch_add(files, Ordering::Relaxed);
        if let Display::Bar(b) = &self.display {
            b.inc(bytes);
        }
    }

    fn names_unchanged(&self) -> bool {
        self.list >= 2
    }

    fn item_done(&self) {
        self.counters.files.fetch_add(1, Ordering::Relaxed);
        if matches!(self.display, Display::Bar(_)) || self.json_per_bytes {
            self.status(None);
        }
    }

    fn bytes_done(&self, n: u64) {
        self.counters.bytes.fetch_add(n, Ordering::Relaxed);
        if let Display::Bar(b) = &self.display {
            b.inc(n);
        }
        // Bytes count as they are read, not when their file is done.
        if matches!(self.display, Display::Bar(_)) || self.json_per_bytes {
            self.status(None);
        }
    }

    fn warning(&self, w: &SourceWarning) {
        self.counters.warnings.fetch_add(1, Ordering::Relaxed);
        match &self.display {
            Display::Json(_) => super::output::json(&serde_json::json!({
                "message_type": "error",
                "item": w.path.display().to_string(),
                "error": w.message,
            })),
            Display::Bar(b) => b.suspend(|| super::output::warn(&w.to_string())),
            // Warnings are errors' little siblings: --quiet still shows them.
            Display::Silent => super::output::warn(&w.to_string()),
        }
    }
}

/// The line under the bar: `3/10 packs, 1.50 MiB verified (512.00 KiB/s)`
/// and the file at work; `total` 0 when not known.
fn status_line(
    done: u64,
    total: u64,
    units: Units,
    bytes: u64,
    secs: f64,
    current: &str,
) -> String {
    let of = if total > 0 {
        format!("/{total}")
    } else {
        String::new()
    };
    let rate = (bytes as f64 / secs.max(0.001)) as u64;
    let line = format!(
        "{done}{of} {}, {} {} ({}/s)",
        units.noun,
        super::output::bytes(bytes),
        units.verb,
        super::output::bytes(rate)
    );
    if current.is_empty() {
        line
    } else {
        format!("{line} {current}")
    }
}

/// The `-v` line for a finished file, if `list` asks for it:
/// `read /srv/a.db (1.50 MiB)`, or at `-vv` `unchanged /srv/b.db`.
fn listed(list: u8, units: Units, path: &Path, size: u64, read: u64) -> Option<String> {
    match (list, read) {
        (0, _) | (1, 0) => None,
        (_, 0) => Some(format!("unchanged {}", path.display())),
        _ => Some(format!(
            "{} {} ({})",
            units.verb,
            path.display(),
            super::output::bytes(size)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKS: Units = Units {
        noun: "packs",
        verb: "verified",
    };

    #[test]
    fn status_line_shows_done_of_total_bytes_and_rate() {
        assert_eq!(
            status_line(3, 10, PACKS, 3 << 20, 2.0, ""),
            "3/10 packs, 3.00 MiB verified (1.50 MiB/s)"
        );
        // No total known yet: the count alone; a file at work follows.
        let files = Units {
            noun: "files",
            verb: "read",
        };
        assert_eq!(
            status_line(7, 0, files, 512, 1.0, "/srv/a.db"),
            "7 files, 512 B read (512 B/s) /srv/a.db"
        );
        // A status before any time has passed divides by no zero.
        assert!(status_line(0, 1, PACKS, 0, 0.0, "").starts_with("0/1 packs, 0 B verified"));
    }

    #[test]
    fn verbose_names_files_read_and_very_verbose_unchanged_ones() {
        let p = Path::new("/srv/a.db");
        let units = Units {
            noun: "files",
            verb: "restored",
        };
        assert_eq!(listed(0, units, p, 10, 10), None);
        assert_eq!(
            listed(1, units, p, 1536, 1536).as_deref(),
            Some("restored /srv/a.db (1.50 KiB)")
        );
        assert_eq!(listed(1, units, p, 10, 0), None);
        assert_eq!(
            listed(2, units, p, 10, 0).as_deref(),
            Some("unchanged /srv/a.db")
        );
    }

    #[test]
    fn nothing_is_drawn_when_quiet_or_stderr_is_not_a_terminal() {
        use std::io::IsTerminal;
        let p = CliProgress::new(false, false);
        assert_eq!(
            matches!(p.display, Display::Bar(_)),
            std::io::stderr().is_terminal()
        );
        p.finish();
        let p = CliProgress::new(false, true);
        assert!(matches!(p.display, Display::Silent));
        assert!(!p.wants_totals());
        let p = CliProgress::new(true, true);
        assert!(matches!(p.display, Display::Silent));
    }
}
