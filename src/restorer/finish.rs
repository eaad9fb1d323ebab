//! After a batch's bytes are written: each complete file gets its length,
//! metadata and name (a file with any failed blob is removed, never left
//! with wrong bytes, doc/reliability.md F1); hardlinks are made once their
//! first name exists; directory metadata is applied last, deepest first.

use super::{FileTask, Overwrite, Restorer, Shared, data_size, file_writer};
use crate::error::Error;
use rayon::prelude::*;
use std::sync::atomic::Ordering;

/// How one file of a batch ended: restored (and whether it was verified),
/// or the error that names it.
pub(super) type FileOutcome = std::result::Result<bool, String>;

impl Shared<'_> {
    /// Finish each file, in parallel: metadata, then the rename that
    /// makes it visible (and, with --verify, a re-read).
    pub(super) fn finish_files(&self, tasks: &mut [FileTask]) -> Vec<FileOutcome> {
        tasks.par_iter_mut().map(|t| self.finish_file(t)).collect()
    }

    fn finish_file(&self, t: &mut FileTask) -> FileOutcome {
        if let Some(df) = t.direct.take()
            && !df.finish(&self.stager)
        {
            t.fail(format!(
                "{}: restore incomplete: some content never arrived",
                t.path.display()
            ));
        }
        let file = t.file.take();
        let err = t.error.lock().map(|e| e.clone()).unwrap_or(None);
        let file = match (file, err) {
            (Some(f), None) => f,
            (f, e) => {
                drop(f);
                let _ = std::fs::remove_file(&t.tmp);
                return Err(e.unwrap_or_else(|| format!("{}: not created", t.path.display())));
            }
        };
        // Short when the file ends in a hole; long when its last
        // direct write was padded to the block size.
        let end = t.written_end.load(Ordering::Relaxed);
        if end != t.node.size
            && let Err(e) = file.set_len(t.node.size)
        {
            drop(file);
            let _ = std::fs::remove_file(&t.tmp);
            return Err(format!("{}: {e}", t.path.display()));
        }
        match file_writer::commit(&t.node, file, &t.tmp, &t.path, self.as_root) {
            Ok(()) => {
                self.progress.file_done(&t.path, t.node.size, t.node.size);
                if self.opts.verify && !self.matches(&t.node, &t.path) {
                    return Err(format!(
                        "{}: verification failed: the restored file does not match the snapshot",
                        t.path.display()
                    ));
                }
                Ok(self.opts.verify)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&t.tmp);
                Err(e.to_string())
            }
        }
    }
}

impl Restorer<'_> {
    /// Count each file of a batch in the summary, restored or failed.
    pub(super) fn tally(&mut self, tasks: &[FileTask], outcomes: Vec<FileOutcome>) {
        for (t, r) in tasks.iter().zip(outcomes) {
            match r {
                Ok(verified) => {
                    self.summary.files += 1;
                    self.summary.bytes += t.node.size;
                    self.summary.data_bytes += data_size(&t.node, self.zero);
                    self.summary.files_verified += u64::from(verified);
                }
                Err(e) => self.summary.errors.push(e),
            }
        }
    }

    pub(super) fn finish_links(&mut self) {
        for (first, path) in std::mem::take(&mut self.pending_links) {
            if self.opts.dry_run {
                self.summary.planned.push(format!(
                    "link {} => {}",
                    path.display(),
                    first.display()
                ));
                continue;
            }
            // The name was free when its entry was walked; if something
            // took it since (the user, while this ran), `never` keeps it.
            if self.opts.overwrite == Overwrite::Never && std::fs::symlink_metadata(&path).is_ok() {
                self.summary.kept += 1;
                continue;
            }
            let r = file_writer::clear_non_dir(&path).and_then(|_| {
                std::fs::hard_link(&first, &path).map_err(|e| Error::Target {
                    path: path.clone(),
                    source: e,
                })
            });
            match r {
                Ok(()) => self.summary.files += 1,
                Err(e) => self.summary.errors.push(e.to_string()),
            }
        }
    }

    /// Directory metadata, after every entry is written (which would bump
    /// the times), deepest first, so a parent's mode cannot shut out the
    /// directories below it.
    pub(super) fn finish_dirs(&mut self) {
        if self.opts.dry_run {
            return;
        }
        for (path, node) in self.dirs.iter().rev() {
            if let Err(e) = file_writer::apply_metadata(node, path, self.as_root) {
                self.summary
                    .errors
                    .push(format!("{}: cannot set metadata: {e}", path.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::restorer::tests::from_memory::{Src, names};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn hardlinked_names_share_one_inode() {
        let mut src = Src::new();
        let linked = |name: &str, src: &Src| {
            let mut n = src.file(name, &[b"shared bytes"]);
            (n.links, n.device, n.inode) = (3, 5, 77);
            n
        };
        let root = src.tree(vec![
            linked("one", &src),
            src.dir("sub", vec![linked("two", &src)]),
            linked("zzz", &src),
            src.file("solo", &[b"shared bytes"]),
        ]);
        let tmp = tempfile::tempdir().unwrap();
        let s = src.restore(root, tmp.path());
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.files, 4);
        let ino = |p: &str| std::fs::metadata(tmp.path().join(p)).unwrap().ino();
        assert_eq!(ino("one"), ino("sub/two"));
        assert_eq!(ino("one"), ino("zzz"));
        assert_ne!(ino("one"), ino("solo"), "equal content is not a link");
        assert_eq!(
            std::fs::metadata(tmp.path().join("one")).unwrap().nlink(),
            3
        );
        assert_eq!(
            std::fs::read(tmp.path().join("sub/two")).unwrap(),
            b"shared bytes"
        );
    }

    /// When the first name of a hardlinked file cannot be restored,
    /// its other names fail too (each reported), and nothing is left.
    #[test]
    fn other_names_of_a_file_that_failed_are_reported_not_linked() {
        let mut src = Src::new();
        let linked = |name: &str, size: u64, src: &Src| {
            let mut n = src.file(name, &[b"bytes"]);
            (n.links, n.device, n.inode, n.size) = (2, 5, 78, size);
            n
        };
        let root = src.tree(vec![linked("a", 99, &src), linked("b", 99, &src)]);
        let tmp = tempfile::tempdir().unwrap();
        let s = src.restore(root, tmp.path());
        assert_eq!(s.files, 0);
        assert_eq!(s.errors.len(), 2, "{:?}", s.errors);
        assert!(
            s.errors[0].contains("content adds up to 5 bytes"),
            "{}",
            s.errors[0]
        );
        assert!(
            s.errors[1].contains(&tmp.path().join("b").display().to_string()),
            "{}",
            s.errors[1]
        );
        assert!(names(tmp.path()).is_empty());
    }
}
