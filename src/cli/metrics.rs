//! `--metrics-file`: the outcome of a backup or a run in Prometheus text
//! format, for node_exporter's textfile collector. The file is replaced
//! whole (a temp file beside it, fsynced, renamed), so the collector never
//! reads half of it; the temp name does not end in `.prom`, so the
//! collector never reads it at all.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// What one backup or run measured. A value left `None` is not known (the
/// step that measures it did not run) and its metric is left out.
#[derive(Debug, Default)]
pub struct Metrics {
    pub profile: String,
    pub command: &'static str,
    pub exit_code: u8,
    pub duration_secs: f64,
    pub files_read: Option<u64>,
    pub bytes_read: Option<u64>,
    pub bytes_added: Option<u64>,
    pub warnings: Option<u64>,
    pub snapshots: Option<u64>,
    pub repository_bytes: Option<u64>,
}

const LAST_SUCCESS: &str = "coffer_last_success_timestamp_seconds";

/// Replace `path` with `m`. A failed run keeps the success time the file
/// had for the same profile and command, so an alert on its age fires.
pub fn write(path: &Path, m: &Metrics, now_secs: u64) -> Result<()> {
    let labels = format!(
        "{{profile=\"{}\",command=\"{}\"}}",
        escape(&m.profile),
        m.command
    );
    let success = if m.exit_code == 0 || m.exit_code == 3 {
        Some(now_secs as f64)
    } else {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|old| previous(&old, &format!("{LAST_SUCCESS}{labels}")))
    };
    let rows: [(&str, &str, Option<f64>); 9] = [
        (
            LAST_SUCCESS,
            "Unix time the last backup or run ended with exit code 0 or 3.",
            success,
        ),
        (
            "coffer_duration_seconds",
            "Wall time of the last backup or run.",
            Some(m.duration_secs),
        ),
        (
            "coffer_files_read",
            "Files the last backup read (new and changed; unchanged ones are not opened).",
            m.files_read.map(|v| v as f64),
        ),
        (
            "coffer_bytes_read",
            "Bytes the last backup read.",
            m.bytes_read.map(|v| v as f64),
        ),
        (
            "coffer_bytes_added",
            "Bytes the last backup added to the repository (after dedup and compression).",
            m.bytes_added.map(|v| v as f64),
        ),
        (
            "coffer_snapshots",
            "Snapshots in the repository afterwards.",
            m.snapshots.map(|v| v as f64),
        ),
        (
            "coffer_repository_bytes",
            "Bytes of the packs the repository's index lists afterwards.",
            m.repository_bytes.map(|v| v as f64),
        ),
        (
            "coffer_warnings",
            "Files or directories the last backup could not read completely.",
            m.warnings.map(|v| v as f64),
        ),
        (
            "coffer_exit_code",
            "Exit code of the last backup or run (0 ok, 1 failed, 3 warnings).",
            Some(f64::from(m.exit_code)),
        ),
    ];
    let mut text = String::new();
    for (name, help, value) in rows {
        if let Some(v) = value {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{labels} {v}\n"
            ));
        }
    }
    replace(path, text.as_bytes())
        .with_context(|| format!("cannot write the metrics file {}", path.display()))
}

/// The value of the line that starts with `series` (name and labels).
fn previous(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Label values escape `\`, `"` and newlines.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Write beside `path`, fsync, rename over it, fsync the directory.
fn replace(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_the_last_success_time() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("coffer.prom");
        let mut m = Metrics {
            profile: "a\"b".into(),
            command: "backup",
            ..Default::default()
        };
        write(&f, &m, 1000).unwrap();
        m.exit_code = 1;
        write(&f, &m, 2000).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains(
            "coffer_last_success_timestamp_seconds{profile=\"a\\\"b\",command=\"backup\"} 1000\n"
        ));
        assert!(text.contains("coffer_exit_code{profile=\"a\\\"b\",command=\"backup\"} 1\n"));
        assert!(!text.contains("coffer_files_read"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
