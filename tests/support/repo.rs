//! Repository-level helpers (crash, retention, locks, repair modules).

use super::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

impl Env {
    /// Full snapshot ids, oldest first.
    pub fn snapshot_ids(&self) -> Vec<String> {
        let v = self
            .coffer()
            .args(["--json", "snapshots"])
            .run()
            .ok()
            .json();
        v.as_array()
            .unwrap_or_else(|| panic!("snapshots --json is not an array: {v}"))
            .iter()
            .map(|s| s["id"].as_str().expect("snapshot id").to_string())
            .collect()
    }

    /// Restore `snap` into a fresh directory and return where `root` (an
    /// absolute path that was backed up) landed in it.
    pub fn restore_of(&self, snap: &str, root: &Path) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let target = self.path(format!("restore-{n}"));
        self.coffer()
            .args(["restore", snap, "--target"])
            .arg(&target)
            .run()
            .ok();
        restored(&target, root)
    }

    /// `check --read-data --json`, which must exit 0; returns the summary.
    pub fn check_clean(&self) -> serde_json::Value {
        let r = self.coffer().args(["--json", "check", "--read-data"]).run();
        assert_eq!(
            r.code, 0,
            "check --read-data failed\nstdout:\n{}\nstderr:\n{}",
            r.stdout, r.stderr
        );
        r.json()
    }

    /// Every object under the repository except locks, with its size.
    pub fn repo_listing(&self) -> BTreeMap<PathBuf, u64> {
        if self.s3.is_some() {
            return s3_listing(&*self.backend());
        }
        let mut files = Vec::new();
        collect_files(&self.repo, &mut files);
        files
            .into_iter()
            .filter(|f| !f.starts_with(self.repo.join("locks")))
            .map(|f| {
                let len = fs::metadata(&f).expect("stat").len();
                (
                    f.strip_prefix(&self.repo).expect("in repo").to_path_buf(),
                    len,
                )
            })
            .collect()
    }
}

/// Copy a directory tree of regular files (a repository) to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create copy target");
    for e in fs::read_dir(from).expect("read_dir for copy") {
        let e = e.expect("dir entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            fs::copy(e.path(), &dst).expect("copy file");
        }
    }
}
