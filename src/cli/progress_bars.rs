//! Progress display: an indicatif line on a terminal, restic-style JSON
//! status lines with `--json`, nothing otherwise.

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
        }
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
                let of = if total > 0 {
                    format!("/{total}")
                } else {
                    String::new()
                };
                b.set_message(format!(
                    "{files}{of} files, {} read ({}/s) {cur}",
                    super::output::bytes(bytes),
                    super::output::bytes((bytes as f64 / secs) as u64)
                ));
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
        if let Display::Bar(b) = &self.display {
            b.set_length(bytes.max(1));
            b.set_style(
                ProgressStyle::with_template(
                    "[{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}\n{msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            self.total_files.store(files, Ordering::Relaxed);
        }
    }

    fn file_started(&self, path: &Path, _size: u64) {
        self.status(Some(path));
    }

    fn file_done(&self, path: &Path, size: u64, read: u64) {
        self.counters.files.fetch_add(1, Ordering::Relaxed);
        if read == 0 {
            // Unchanged files count as done for the bar and its ETA.
            if let Display::Bar(b) = &self.display {
                b.inc(size);
            }
        }
        self.status(Some(path));
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
