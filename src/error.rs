//! Library error kinds.
//!
//! Policy (doc/design.md invariant 6): a *source* error (a user's file vanished,
//! could not be read, changed while read) is never an [`Error`]: the archiver
//! reports it as a [`crate::progress::SourceWarning`] and carries on. Every
//! [`Error`] is a repository or usage failure that aborts the operation and
//! records no snapshot. Keeping the two apart in the type system means no
//! handler can swallow a full repository disk as "could not read input"
//! (borg#1138).

use std::path::PathBuf;

/// The result type of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can abort a repository operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a repository object (write, read, list, delete).
    #[error("repository {op} failed for {object}: {source}")]
    Backend {
        op: &'static str,
        object: String,
        #[source]
        source: std::io::Error,
    },
    /// A remote store (S3) failed a request, or did not answer in time.
    /// `failure` says what a caller can do about it: retry a transient one
    /// (the retry layer already did, `tries` times), fix the credentials or
    /// the bucket for the others.
    #[error("repository {op} of {object} failed: {detail}{}", failure.remedy(*tries))]
    Remote {
        op: &'static str,
        object: String,
        failure: Failure,
        detail: String,
        tries: u32,
    },
    /// The repository disk is full: distinct because users act on it differently.
    #[error(
        "repository disk full while writing {object}: free some space and run the command again"
    )]
    DiskFull { object: String },
    /// An object requested from the backend does not exist.
    #[error("repository object {object} does not exist")]
    NotFound { object: String },
    /// A repository object failed authentication, hashing or parsing.
    #[error("repository object {object} is corrupt: {reason}")]
    Corrupt { object: String, reason: String },
    /// A directory inside the repository is a symbolic link (or not a
    /// directory at all): someone with write access could divert objects
    /// through it, so nothing is read, written or deleted there.
    #[error(
        "{path} in the repository is {what}: coffer never follows links inside a repository; replace it with the real directory"
    )]
    ForeignEntry { path: String, what: String },
    /// The given path holds no coffer repository.
    #[error(
        "{path} is not a coffer repository (no config object): check --repo or run `coffer init`"
    )]
    NotARepository { path: PathBuf },
    /// The location holds another program's repository: say so, rather
    /// than call it a damaged coffer repository.
    #[error("{path} is not a coffer repository: it looks like a {what} repository (check --repo)")]
    ForeignRepository { path: String, what: &'static str },
    /// The config body (chunker, compression and pack parameters) does not
    /// authenticate and no intact copy of it remains. Reading needs none of
    /// it; a writer would cut chunks the repository does not use.
    #[error(
        "repository object config is damaged ({reason}) and has no intact copy: {repo} can still be read (restore, copy from it) but not written, because the chunker parameters a writer needs are lost; to go on backing up, create a new repository (`coffer init --repo NEW`) and `coffer copy --repo NEW --from-repo {repo}`"
    )]
    ConfigDamaged { repo: String, reason: String },
    /// A repository location names a store coffer cannot write to.
    #[error(
        "repository {location}: {store} is not supported; a repository is a local directory (/mnt/backup/coffer, ./NAME, or local:NAME for a directory whose name has a colon) or an S3 bucket (s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX])"
    )]
    UnsupportedLocation {
        location: String,
        store: &'static str,
    },
    /// `init` on a location that already has a repository.
    #[error("{path} already holds a repository")]
    AlreadyExists { path: PathBuf },
    /// No key slot opens with the given password or key file. The reader
    /// cannot tell a wrong password from an altered slot or repository id,
    /// so the message says both; `damaged` names slots that could not even
    /// be parsed (empty, or `; key slots that cannot be read: …`).
    #[error(
        "the password or key file does not open repository {repo} (a wrong password or key file, or its config or key slots were altered){damaged}"
    )]
    WrongPassword { repo: String, damaged: String },
    /// The repository was written by an unknown format version.
    #[error(
        "repository format version {found} is not supported (this coffer reads version {supported}){}",
        if .found > .supported { ": use a newer coffer" } else { ": the config is damaged or was altered, and coffer never reads it as another version" }
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    /// The local SQLite index cache failed.
    #[error("local index cache {path}: {reason} (give another --cache-dir, or --no-cache)")]
    Cache { path: PathBuf, reason: String },
    /// A snapshot reference matched nothing or more than one snapshot.
    #[error("{0}")]
    SnapshotRef(String),
    /// A blob referenced by a tree is not in the index.
    #[error("blob {id} is not in the repository index (data lost: run `coffer check`)")]
    BlobMissing { id: String },
    /// Bad argument from the caller (not from the repository).
    #[error("{0}")]
    Usage(String),
    /// A key file being added to a repository was made for another one.
    #[error("the key file belongs to repository {theirs}, not to {ours}")]
    ForeignKeyFile { theirs: String, ours: String },
    /// Opening with a key file whose repository id is not the one the
    /// config names: a key file of another repository, or an altered config.
    #[error(
        "the key file belongs to repository {theirs}, but the config of {location} names repository {named} (a key file of another repository, or an altered config)"
    )]
    KeyFileMismatch {
        theirs: String,
        location: String,
        named: String,
    },
    /// `init` on a location with key or pack objects and no config.
    #[error(
        "{location} holds key or pack objects but no config (an interrupted init or a damaged repository): remove it or choose another location"
    )]
    InterruptedInit { location: String },
    /// An object larger than every reader accepts: it is never written.
    #[error(
        "a {kind} object of {size} bytes would exceed the {limit} byte limit readers enforce (too many paths or tags?)"
    )]
    ObjectTooLarge {
        kind: &'static str,
        size: u64,
        limit: u64,
    },
    /// One blob (a directory's tree, most likely) is larger than a pack
    /// may hold one.
    #[error(
        "a {kind} blob of {size} bytes exceeds the {limit} byte limit (a directory with too many entries?)"
    )]
    BlobTooLarge {
        kind: &'static str,
        size: u64,
        limit: u64,
    },
    /// Packs the index lists are gone or not what it records: a backup
    /// that deduplicated against them would commit a snapshot without its
    /// data. `remedy` is the repair command that rebuilds around them.
    #[error(
        "the index lists {count} packs that {what} ({packs}): their data is lost, and a backup now would reuse it. Run `coffer {remedy}` ({why}), then back up again to store the lost content anew"
    )]
    PacksLost {
        count: usize,
        what: &'static str,
        packs: String,
        remedy: &'static str,
        why: &'static str,
    },
    /// The input of a stream backup failed to read part way.
    #[error("reading the stream failed after {read} bytes: {source}; no snapshot was written")]
    StreamRead {
        read: u64,
        #[source]
        source: std::io::Error,
    },
    /// The restore target could not be written.
    #[error("cannot write {path}: {source}")]
    Target {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tar archive being imported is truncated, corrupt or not a tar
    /// archive. The whole import fails: a snapshot of half an archive would
    /// look complete (the per-member problems are warnings instead).
    #[error("cannot import archive {archive}: {reason}; no snapshot was written")]
    Archive { archive: String, reason: String },
    /// A time given on the command line is not a valid date and time.
    #[error(
        "{input:?} is not a valid time ({reason}): give YYYY-MM-DD[ HH:MM[:SS]] in local time, or RFC 3339 such as 2026-11-10T02:00:00Z or 2026-11-10T07:30:00+05:30"
    )]
    BadTime { input: String, reason: String },
    /// A stream backup read nothing: a dump whose producer failed before
    /// writing (`mysqldump -u wrong … |`) would otherwise be saved as the
    /// night's backup.
    #[error(
        "the stream for {name} was empty (0 bytes read), so no snapshot was written: if it came from a program, look at its messages; give --allow-empty to record an empty file"
    )]
    EmptyStream { name: String },
    /// The restore target lacks the space for what would be written.
    #[error(
        "not enough space in {path}: the restore needs {needed} bytes, {free} are free; free some space, restore less (--include), or pass --skip-space-check"
    )]
    NoSpace {
        path: PathBuf,
        needed: u64,
        free: u64,
    },
    /// The drill's scratch directory lacks the space for the sample: no
    /// verdict on the repository.
    #[error(
        "cannot drill in {path}: the sample needs {needed} bytes, {free} are free; give --scratch-dir on a larger filesystem, a smaller --sample or --largest-max"
    )]
    DrillScratch {
        path: PathBuf,
        needed: u64,
        free: u64,
    },
    /// The operation was interrupted (a signal or a stop request).
    #[error("interrupted")]
    Interrupted,
    /// Another process holds a conflicting lock; `holder` describes it.
    #[error(
        "the repository is locked: {holder}. Wait for it (--wait-lock), or if that process is gone, run `coffer unlock`"
    )]
    Locked { holder: String },
    /// This process's lock was not refreshed in time (stopped, suspended,
    /// cut off) or was removed: it stops before writing anything more.
    #[error(
        "the repository lock was lost (not refreshed for {secs}s; the process was stopped, suspended or cut off, or the lock was removed): aborting without writing anything more"
    )]
    LockLost { secs: u64 },
    /// A write that only an exclusive lock makes safe was attempted
    /// without one (a library caller that did not lock).
    #[error(
        "{action} needs an exclusive lock on the repository, and this process holds none: take one first (as `coffer repair` and `coffer prune` do)"
    )]
    ExclusiveLockRequired { action: &'static str },
    /// A backup's storage stopped at the first repository error one of its
    /// threads met; every later store fails with that same cause, which
    /// stays typed ([`Error::root`]: a full disk is still [`Error::DiskFull`]).
    #[error("backup aborted after a repository error: {0}")]
    Aborted(std::sync::Arc<Error>),
    /// prune found something that does not add up (a damaged snapshot or
    /// segment, a missing or resized pack) and deleted nothing.
    #[error("refusing to prune: {0}")]
    PruneRefused(String),
    /// A thread of coffer's own could not start or died (a bug, or the
    /// system out of threads): nothing is recorded.
    #[error("internal error: {0}; nothing was recorded")]
    Internal(String),
}

/// What kind of failure a remote store's answer (or silence) was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 5xx, 429/503 SlowDown, a timeout, a reset, a body cut short: the
    /// same request may well succeed later.
    Transient,
    /// The request itself is wrong for this store (400, a missing bucket,
    /// an answer that makes no sense): retrying cannot help.
    Permanent,
    /// 401/403: the credentials or the bucket policy refuse it.
    Denied,
}

impl Failure {
    /// What the user should do, appended to the message.
    fn remedy(self, tries: u32) -> String {
        match self {
            Failure::Transient if tries > 1 => format!(
                " (still failing after {tries} tries: the store is unreachable or overloaded; run the command again later)"
            ),
            Failure::Transient => String::new(),
            Failure::Permanent => String::new(),
            Failure::Denied => " (access denied: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's policy)".into(),
        }
    }
}

impl Error {
    /// Is this a failure the same request may not meet again (a remote
    /// store's 5xx, SlowDown, timeout)? Local I/O errors are not: a disk
    /// that failed a read is not retried blindly.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Remote {
                failure: Failure::Transient,
                ..
            }
        )
    }

    /// The error that caused this one: through [`Error::Aborted`] to the
    /// repository error a backup thread met, else this error itself.
    pub fn root(&self) -> &Error {
        match self {
            Error::Aborted(cause) => cause.root(),
            e => e,
        }
    }

    /// A copy of this error of the same kind, for an error that must be
    /// reported both where it happened and to every later caller (a
    /// backup's first repository failure). I/O causes keep their OS error
    /// code; a kind no copy is made of keeps its message only.
    pub fn duplicate(&self) -> Error {
        let io = |e: &std::io::Error| match e.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(e.kind(), e.to_string()),
        };
        match self {
            Error::Backend { op, object, source } => Error::Backend {
                op,
                object: object.clone(),
                source: io(source),
            },
            Error::Remote {
                op,
                object,
                failure,
                detail,
                tries,
            } => Error::Remote {
                op,
                object: object.clone(),
                failure: *failure,
                detail: detail.clone(),
                tries: *tries,
            },
            Error::DiskFull { object } => Error::DiskFull {
                object: object.clone(),
            },
            Error::NotFound { object } => Error::NotFound {
                object: object.clone(),
            },
            Error::Corrupt { object, reason } => Error::corrupt(object.clone(), reason.clone()),
            Error::ForeignEntry { path, what } => Error::ForeignEntry {
                path: path.clone(),
                what: what.clone(),
            },
            Error::AlreadyExists { path } => Error::AlreadyExists { path: path.clone() },
            Error::Cache { path, reason } => Error::Cache {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::Locked { holder } => Error::Locked {
                holder: holder.clone(),
            },
            Error::LockLost { secs } => Error::LockLost { secs: *secs },
            Error::ExclusiveLockRequired { action } => Error::ExclusiveLockRequired { action },
            Error::Aborted(cause) => Error::Aborted(cause.clone()),
            Error::Internal(m) => Error::Internal(m.clone()),
            Error::Interrupted => Error::Interrupted,
            Error::ForeignKeyFile { theirs, ours } => Error::ForeignKeyFile {
                theirs: theirs.clone(),
                ours: ours.clone(),
            },
            Error::KeyFileMismatch {
                theirs,
                location,
                named,
            } => Error::KeyFileMismatch {
                theirs: theirs.clone(),
                location: location.clone(),
                named: named.clone(),
            },
            Error::InterruptedInit { location } => Error::InterruptedInit {
                location: location.clone(),
            },
            Error::BlobTooLarge { kind, size, limit } => Error::BlobTooLarge {
                kind,
                size: *size,
                limit: *limit,
            },
            Error::PacksLost {
                count,
                what,
                packs,
                remedy,
                why,
            } => Error::PacksLost {
                count: *count,
                what,
                packs: packs.clone(),
                remedy,
                why,
            },
            Error::ObjectTooLarge { kind, size, limit } => Error::ObjectTooLarge {
                kind,
                size: *size,
                limit: *limit,
            },
            Error::StreamRead { read, source } => Error::StreamRead {
                read: *read,
                source: io(source),
            },
            other => Error::Usage(other.to_string()),
        }
    }

    /// Build a [`Error::Corrupt`] naming `object`.
    pub fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }

    /// Damage to one object (corrupt, or missing from the repository or
    /// its index), which a reader can skip to go on with the others; not a
    /// repository that cannot be reached.
    pub(crate) fn is_damage(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::NotFound { .. } | Error::BlobMissing { .. }
        )
    }

    /// Map an I/O error on repository `object` to the right kind: ENOSPC and
    /// EDQUOT become [`Error::DiskFull`], a missing file [`Error::NotFound`].
    pub(crate) fn backend_io(
        op: &'static str,
        object: impl Into<String>,
        source: std::io::Error,
    ) -> Self {
        let object = object.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => return Error::DiskFull { object },
            _ => {}
        }
        if source.kind() == std::io::ErrorKind::NotFound {
            return Error::NotFound { object };
        }
        Error::Backend { op, object, source }
    }
}

#[cfg(test)]
mod typed_failure_tests {
    use super::*;
    use std::sync::Arc;

    /// A backup's first failure reaches every later caller as the same
    /// kind: a full disk stays a full disk, an I/O error keeps its code.
    #[test]
    fn an_aborted_store_keeps_its_cause_typed() {
        let full = Error::backend_io(
            "write",
            "packs/ab/abcd",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let aborted = Error::Aborted(Arc::new(full.duplicate()));
        assert!(matches!(aborted.root(), Error::DiskFull { object } if object == "packs/ab/abcd"));
        assert!(aborted.to_string().contains("repository disk full"));
        let eio = Error::backend_io(
            "write",
            "index/x",
            std::io::Error::from_raw_os_error(libc::EIO),
        );
        match Error::Aborted(Arc::new(eio.duplicate())).root() {
            Error::Backend { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::EIO)),
            other => panic!("not a backend error: {other:?}"),
        }
        let nested = Error::Aborted(Arc::new(Error::Aborted(Arc::new(Error::LockLost {
            secs: 9,
        }))));
        assert!(matches!(nested.root(), Error::LockLost { secs: 9 }));
    }
}
