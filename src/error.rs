//! Library error kinds.
//!
//! Policy (DESIGN.md invariant 6): a *source* error (a user's file vanished,
//! could not be read, changed while read) is never an [`Error`]: the archiver
//! reports it as a [`crate::archiver::SourceWarning`] and carries on. Every
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
    /// The operation was interrupted (a signal or a stop request).
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// Build a [`Error::Corrupt`] naming `object`.
    pub fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }

    /// Map an I/O error on repository `object` to the right kind: ENOSPC and
    /// EDQUOT become [`Error::DiskFull`], a missing file [`Error::NotFound`].
    pub fn backend_io(op: &'static str, object: impl Into<String>, source: std::io::Error) -> Self {
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
