//! The repository: config, keys, blob reads, snapshots and index segments
//! over any [`Backend`]. Everything above this layer goes through it or
//! through the role traits it implements.
//!
//! Opening reads the plaintext config header (format version and repository
//! id) of `config` and of its copy `config.copy`, unwraps the master key
//! from a key slot, then decrypts the config body. Either of the two config
//! objects, and a slot's metadata, may be damaged without locking anyone
//! out (repo-format/README.md, "What survives one damaged byte"). The index is loaded lazily: listing snapshots does not pay for it.

pub(crate) mod audit;
pub mod blob_store;
pub mod config;
mod keys;
pub mod lock;
mod object_cache;
mod packs;
pub(crate) mod remote;
pub mod used;

use crate::backend::{Backend, FileKind};
use crate::blob::{BlobKind, BlobPlace, BlobSource, PackedBlobSource};
use crate::chunking::Chunker;
use crate::crypto::key_file::{KdfParams, KeyFileSecret, KeySlot, SlotKind, SlotMeta, Unlock};
use crate::crypto::{AadKind, KeySet, MasterKey, aad, envelope};
use crate::error::{Error, Result};
use crate::id::{BlobId, KeyId, PackId, RepoId, SegmentId, SnapshotId, content_hash};
use crate::index::Index;
use crate::index::segment::Segment;
use crate::snapshot::Snapshot;
use config::{CONFIG, CONFIG_COPY, Config, FORMAT_VERSION};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use zeroize::Zeroizing;

/// The secret a user opens a repository with.
pub enum Secret {
    Passphrase(Zeroizing<Vec<u8>>),
    KeyFile(KeyFileSecret),
}

/// How `init` protects the new master key.
pub enum InitSecret {
    Passphrase(Zeroizing<Vec<u8>>),
    /// A key file the caller generated (and saved) beforehand; its
    /// repository id becomes the new repository's id.
    KeyFile(KeyFileSecret),
}

/// A key slot as `key list` shows it: id, kind (if the slot parses), and
/// its metadata or why it cannot be read.
pub(crate) type KeyListing = (KeyId, Option<SlotKind>, Result<SlotMeta, String>);

/// Most passphrase slots tried when opening: each costs one Argon2id run, so
/// a repository with a thousand slots cannot stall every command (H-4).
const MAX_PASSPHRASE_SLOTS: usize = 32;

pub struct Repository {
    backend: Arc<dyn Backend>,
    repo_id: RepoId,
    keys: KeySet,
    /// The parameters a writer needs, or why neither `config` nor its copy
    /// gave them: reading needs none of them.
    config: std::result::Result<Config, String>,
    key_id: KeyId,
    /// Kept (zeroized on drop) so new key slots can wrap it: `key add`,
    /// `key passwd`, `key export`.
    master: MasterKey,
    cache_root: Option<PathBuf>,
    index: OnceLock<Index>,
    /// Damaged objects skipped so far, each naming the object.
    problems: std::sync::Mutex<Vec<String>>,
    /// The lock this process holds, if any: checked before every write of
    /// an index segment or snapshot and before every deletion.
    lock_state: std::sync::Mutex<Option<Arc<lock::LockState>>>,
    /// Held while a tree pack is fetched into the object cache, so that
    /// threads needing the same pack fetch it once.
    cache_fill: std::sync::Mutex<()>,
    /// The snapshot names last listed for resolving an id prefix, so that
    /// `forget A B C` lists once, not once per reference (a request each on
    /// a remote store). Dropped whenever this process adds or deletes a
    /// snapshot.
    snapshot_names: std::sync::Mutex<Option<Vec<String>>>,
    /// Where informational lines go (what the repository is doing that a
    /// user should see, e.g. adopting an interrupted backup's packs).
    notifier: OnceLock<Notifier>,
}

/// Receives informational lines; the CLI prints them on stderr.
pub(crate) type Notifier = Box<dyn Fn(&str) + Send + Sync>;

/// Who is writing, for key slot metadata and snapshots.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into a buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The user to record: `$USER` or `$LOGNAME` as a login shell sets them
/// (what `getpass.getuser()` also prefers), else the account of this
/// process's uid, which systemd units and containers leave unnamed in the
/// environment; the uid number when even that has no name.
pub fn username() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|u| !u.is_empty())
        .or_else(uid_name)
        .unwrap_or_else(|| {
            // SAFETY: getuid cannot fail and touches no memory.
            unsafe { libc::getuid() }.to_string()
        })
}

/// The passwd entry's name for this process's uid.
fn uid_name() -> Option<String> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `pwd` and `buf` are ours and outlive the call;
        // getpwuid_r writes the entry's strings into `buf` (at most its
        // length) and sets `result` to `&pwd` on success or null.
        let (rc, name) = unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwuid_r(
                libc::getuid(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            );
            let name = (rc == 0 && !result.is_null() && !pwd.pw_name.is_null()).then(|| {
                std::ffi::CStr::from_ptr(pwd.pw_name)
                    .to_string_lossy()
                    .into_owned()
            });
            (rc, name)
        };
        // A huge entry (many groups in NSS) needs a bigger buffer.
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return name.filter(|n| !n.is_empty());
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Repository {
    /// Create a repository. Key slot first, config last: a repository
    /// exists exactly when its config does, so an interrupted `init` leaves
    /// nothing a later command would accept (doc/reliability.md A7).
    pub fn init(
        backend: Arc<dyn Backend>,
        secret: InitSecret,
        config: Config,
        kdf: KdfParams,
    ) -> Result<Repository> {
        Self::init_related(backend, secret, config, kdf, None)
    }

    /// [`Repository::init`], sharing `related`'s master key when given: the
    /// new repository then names blobs and cuts chunks exactly as `related`
    /// does, so `copy` between the two moves only the blobs the destination
    /// lacks and backups into either deduplicate alike. Objects still cannot
    /// move between them unnoticed: the repository id, which differs, is in
    /// every object's associated data (repo-format/SECURITY.md).
    pub fn init_related(
        backend: Arc<dyn Backend>,
        secret: InitSecret,
        mut config: Config,
        kdf: KdfParams,
        related: Option<&Repository>,
    ) -> Result<Repository> {
        config.validate().map_err(Error::Usage)?;
        for name in [CONFIG, CONFIG_COPY] {
            match backend.get(FileKind::Config, name) {
                Ok(_) => {
                    return Err(Error::AlreadyExists {
                        path: backend.location().into(),
                    });
                }
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if !backend.list(FileKind::Key)?.is_empty() || !backend.list(FileKind::Pack)?.is_empty() {
            return Err(Error::InterruptedInit {
                location: backend.location(),
            });
        }
        if config.created_ns == 0 {
            config.created_ns = now_ns();
        }
        let repo_id = match &secret {
            InitSecret::KeyFile(kf) => kf.repo,
            InitSecret::Passphrase(_) => new_repo_id(),
        };
        let master = match related {
            Some(r) => r.master.clone(),
            None => MasterKey::generate(),
        };
        let keys = KeySet::derive(&master);
        let unlock = match &secret {
            InitSecret::Passphrase(p) => Unlock::Passphrase(p),
            InitSecret::KeyFile(kf) => Unlock::KeyFile(&kf.secret),
        };
        let key_id = add_slot(backend.as_ref(), &repo_id, &master, &keys, &unlock, kdf)?;
        let bytes = config.encode(&repo_id, &keys);
        backend.put(FileKind::Config, CONFIG, &bytes)?;
        // After `config`: a copy exists only once the repository does.
        backend.put(FileKind::Config, CONFIG_COPY, &bytes)?;
        Ok(Repository {
            backend,
            repo_id,
            keys,
            config: Ok(config),
            key_id,
            master,
            cache_root: None,
            index: OnceLock::new(),
            problems: Default::default(),
            lock_state: Default::default(),
            cache_fill: Default::default(),
            snapshot_names: Default::default(),
            notifier: OnceLock::new(),
        })
    }

    /// Read the config's plaintext headers (of `config` and of its copy)
    /// and check the format version: what a reader must do before it asks
    /// for a passphrase or tries a key (repo-format/README.md,
    /// "Versioning"). Returns the repository id the first readable one
    /// names.
    pub fn check_format(backend: &dyn Backend) -> Result<RepoId> {
        Ok(Self::check_format_for_open(backend)?.id())
    }

    /// [`Repository::check_format`], keeping what was read for
    /// [`Repository::open_checked`]: on a remote store, two requests less.
    pub fn check_format_for_open(backend: &dyn Backend) -> Result<FormatChecked> {
        ConfigObjects::read(backend).map(FormatChecked)
    }

    /// Open with a passphrase or key file. One damaged object of the two
    /// that say how to open (`config` and its copy, or a slot's metadata)
    /// is a warning, not a lock-out (repo-format/README.md, "What survives
    /// one damaged byte").
    pub fn open(backend: Arc<dyn Backend>, secret: &Secret) -> Result<Repository> {
        let checked = Self::check_format_for_open(backend.as_ref())?;
        Self::open_checked(backend, checked, secret)
    }

    /// [`Repository::open`] with the config objects a format check read.
    pub fn open_checked(
        backend: Arc<dyn Backend>,
        checked: FormatChecked,
        secret: &Secret,
    ) -> Result<Repository> {
        let configs = checked.0;
        let named = configs.ids();
        let mut ids = named.clone();
        // A key file names its repository: that opens a repository whose
        // config lost its id, and a slot proves it (the id is in its AAD).
        let foreign_key_file = match secret {
            Secret::KeyFile(kf) if !named.contains(&kf.repo) => Some(kf.repo),
            _ => None,
        };
        ids.extend(foreign_key_file);
        let unlocked = match (
            unlock_master(backend.as_ref(), &ids, secret),
            foreign_key_file,
        ) {
            (Err(Error::WrongPassword { .. }), Some(theirs)) => {
                return Err(Error::KeyFileMismatch {
                    theirs: theirs.short(),
                    location: backend.location(),
                    named: named[0].short(),
                });
            }
            (r, _) => r?,
        };
        let keys = KeySet::derive(&unlocked.master);
        let (config, config_problems) = configs.open_body(&unlocked.repo, &keys);
        let repo = Repository {
            backend,
            repo_id: unlocked.repo,
            keys,
            config,
            key_id: unlocked.key_id,
            master: unlocked.master,
            cache_root: None,
            index: OnceLock::new(),
            problems: Default::default(),
            lock_state: Default::default(),
            cache_fill: Default::default(),
            snapshot_names: Default::default(),
            notifier: OnceLock::new(),
        };
        for p in unlocked.problem.into_iter().chain(config_problems) {
            repo.note_problem(p);
        }
        Ok(repo)
    }

    /// Make `config` and `config.copy` hold the intact config's bytes
    /// again: each one that is missing, damaged or different is replaced.
    /// Returns the names rewritten. A crash between a delete and its put
    /// leaves the other object, which opening falls back to.
    pub fn repair_config(&self) -> Result<Vec<&'static str>> {
        self.config()?;
        let configs = ConfigObjects::read(self.backend.as_ref())?;
        let good = configs
            .intact(&self.repo_id, &self.keys)
            .ok_or_else(|| Error::ConfigDamaged {
                repo: self.backend.location(),
                reason: "it changed since this command opened the repository".into(),
            })?
            .to_vec();
        let mut rewritten = Vec::new();
        for name in [CONFIG, CONFIG_COPY] {
            match self.backend.get(FileKind::Config, name) {
                Ok(b) if b == good => continue,
                // Different bytes, or refused unread (oversized, a link, a
                // FIFO): replaced either way.
                Ok(_) | Err(Error::Corrupt { .. }) => self.delete(FileKind::Config, name)?,
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            self.ensure_lock()?;
            self.backend.put(FileKind::Config, name, &good)?;
            rewritten.push(name);
        }
        // What opening said about the two objects is no longer true.
        let (_, repaired) = configs.open_body(&self.repo_id, &self.keys);
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| !repaired.contains(p));
        Ok(rewritten)
    }

    /// Keep the index cache under `root/<repository id>/`; without this the
    /// index lives in memory for the life of the process.
    pub fn with_cache_dir(mut self, root: Option<PathBuf>) -> Self {
        self.cache_root = root;
        self
    }

    pub fn id(&self) -> &RepoId {
        &self.repo_id
    }
    /// The chunker, compression and pack parameters: every writer needs
    /// them, and fails here, naming `config`, when they were lost.
    pub fn config(&self) -> Result<&Config> {
        self.config.as_ref().map_err(|reason| Error::ConfigDamaged {
            repo: self.backend.location(),
            reason: reason.clone(),
        })
    }
    /// Does `other` name blobs as this repository does (same master key,
    /// from `init --from-repo`)? Then a blob id means the same in both.
    pub fn shares_ids_with(&self, other: &Repository) -> bool {
        let probe = b"coffer: do these repositories name blobs alike?";
        self.keys.blob_id(probe) == other.keys.blob_id(probe)
            && self.keys.chunker_seed() == other.keys.chunker_seed()
    }

    pub fn keys(&self) -> &KeySet {
        &self.keys
    }
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }
    /// Private to the repository: every layer above goes through the
    /// verbs here, which check the lock before a write or delete.
    fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
    pub fn chunker(&self) -> Result<Chunker> {
        Ok(Chunker::new(
            self.config()?.chunker,
            self.keys.chunker_seed(),
        ))
    }

    /// Path of the SQLite index cache, if it is on disk.
    pub(crate) fn cache_path(&self) -> Option<PathBuf> {
        self.cache_dir().map(|d| d.join("index.sqlite"))
    }

    /// Full integrity check of the on-disk index cache (every page), which
    /// ordinary opens skip for speed. A damaged cache is removed and the next
    /// `index()` rebuilds it. Returns false when that happened. No-op once
    /// the index is open in this process.
    pub(crate) fn verify_index_cache(&self) -> Result<bool> {
        match (self.index.get(), self.cache_path()) {
            (None, Some(p)) => Index::verify_file(&p),
            _ => Ok(true),
        }
    }

    /// Close the index cache for good, once this process is done with the
    /// repository (see [`Index::close`]); later index queries fail.
    pub fn close_cache(&self) {
        if let Some(i) = self.index.get() {
            i.close();
        }
    }

    /// The index, synced with the repository's segments on first use.
    pub fn index(&self) -> Result<&Index> {
        if let Some(i) = self.index.get() {
            return Ok(i);
        }
        if let Some(root) = &self.cache_root {
            // Only a marker for other tools: the cache works without it,
            // and a root that cannot be created fails just below, named.
            let _ = tag_cache_dir(root);
        }
        let idx = match self.open_index() {
            // SQLite met damage while syncing and the cache file was
            // removed (see `Index::err`): build a new one now rather than
            // fail and ask for a rerun.
            Err(Error::Cache { .. }) if self.cache_path().is_some_and(|p| !p.exists()) => {
                self.open_index()?
            }
            r => r?,
        };
        Ok(self.index.get_or_init(|| idx))
    }

    fn open_index(&self) -> Result<Index> {
        let idx = match self.cache_path() {
            Some(p) => Index::open(&p, &self.repo_id, FORMAT_VERSION)?,
            None => Index::in_memory(&self.repo_id, FORMAT_VERSION)?,
        };
        self.sync_index(&idx)?;
        if let Some(c) = self.object_cache() {
            // Packs a prune (here or elsewhere) removed.
            c.retain(FileKind::Pack, |n| {
                PackId::from_hex(n).is_some_and(|p| idx.pack_size(&p).ok().flatten().is_some())
            });
        }
        Ok(idx)
    }

    /// The index segments the repository lists now.
    pub(crate) fn segment_ids(&self) -> Result<Vec<SegmentId>> {
        Ok(self
            .backend
            .list(FileKind::Index)?
            .into_iter()
            .filter_map(|o| SegmentId::from_hex(&o.name))
            .collect())
    }

    fn sync_index(&self, idx: &Index) -> Result<()> {
        let listed = self.segment_ids()?;
        idx.sync(&listed, |id| match self.load_segment(id) {
            Ok(s) => Ok(Some(s)),
            // A damaged segment only hides its blobs: a backup stores them
            // again, a restore that needs them fails naming them, and
            // `repair index` rebuilds the index from the packs.
            Err(e @ (Error::Corrupt { .. } | Error::NotFound { .. })) => {
                self.note_problem(format!(
                    "{e}; its blobs are ignored (run `coffer repair index`)"
                ));
                Ok(None)
            }
            Err(e) => Err(e),
        })?;
        Ok(())
    }

    /// Re-list the segments and bring the loaded index up to date.
    pub(crate) fn refresh_index(&self) -> Result<()> {
        match self.index.get() {
            Some(i) => self.sync_index(i),
            None => self.index().map(|_| ()),
        }
    }

    /// Seal `plain` and store it under the hash of the sealed bytes.
    fn save_named(
        &self,
        kind: FileKind,
        key: &[u8; 32],
        aad_kind: AadKind,
        plain: &[u8],
    ) -> Result<[u8; 32]> {
        self.ensure_lock()?;
        let sealed = envelope::seal(key, &aad(&self.repo_id, aad_kind, &[0; 32]), plain);
        // Every reader refuses a larger one: never write what cannot be read.
        if sealed.len() as u64 > kind.max_size() {
            return Err(Error::ObjectTooLarge {
                kind: kind.dir(),
                size: sealed.len() as u64,
                limit: kind.max_size(),
            });
        }
        let name = content_hash(&sealed);
        self.forget_snapshot_names(kind);
        self.backend.put(kind, &hex::encode(name), &sealed)?;
        if kind == FileKind::Snapshot
            && let Some(c) = self.object_cache()
        {
            // The next backup's parent: no request for it tomorrow.
            c.put(kind, &hex::encode(name), &sealed);
        }
        Ok(name)
    }

    /// Load an object named by its hash: check the name, then open it.
    fn load_named(
        &self,
        kind: FileKind,
        name: &[u8; 32],
        key: &[u8; 32],
        aad_kind: AadKind,
    ) -> Result<Vec<u8>> {
        let hexname = hex::encode(name);
        let cache = self.object_cache().filter(|_| kind == FileKind::Snapshot);
        if let Some(c) = &cache
            && let Some(sealed) = c.get(kind, &hexname)
        {
            match self.open_named(kind, name, key, aad_kind, &sealed) {
                Ok(plain) => return Ok(plain),
                Err(_) => c.remove(kind, &hexname),
            }
        }
        let sealed = self.backend.get(kind, &hexname)?;
        let plain = self.open_named(kind, name, key, aad_kind, &sealed)?;
        if let Some(c) = &cache {
            c.put(kind, &hexname, &sealed);
        }
        Ok(plain)
    }

    /// Check that `sealed` is the object named `name` and open it.
    fn open_named(
        &self,
        kind: FileKind,
        name: &[u8; 32],
        key: &[u8; 32],
        aad_kind: AadKind,
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        let obj = kind.path(&hex::encode(name));
        if sealed.len() < envelope::OVERHEAD {
            return Err(Error::corrupt(
                obj,
                format!("only {} bytes (empty or truncated)", sealed.len()),
            ));
        }
        if &content_hash(sealed) != name {
            return Err(Error::corrupt(
                obj,
                "content does not match its name (damaged or swapped)",
            ));
        }
        envelope::open(key, &aad(&self.repo_id, aad_kind, &[0; 32]), sealed)
            .map_err(|e| Error::corrupt(obj, e.to_string()))
    }

    pub fn save_segment(&self, seg: &Segment) -> Result<SegmentId> {
        let key = self.keys.index;
        self.save_named(FileKind::Index, &key, AadKind::IndexSegment, &seg.encode())
            .map(SegmentId)
    }

    pub fn load_segment(&self, id: &SegmentId) -> Result<Segment> {
        let key = self.keys.index;
        let plain = self.load_named(FileKind::Index, &id.0, &key, AadKind::IndexSegment)?;
        Segment::decode(&plain).map_err(|e| Error::corrupt(FileKind::Index.path(&id.to_hex()), e.0))
    }

    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<SnapshotId> {
        let key = self.keys.snapshot;
        self.save_named(FileKind::Snapshot, &key, AadKind::Snapshot, &snap.encode())
            .map(SnapshotId)
    }

    pub(crate) fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let key = self.keys.snapshot;
        let plain = self.load_named(FileKind::Snapshot, &id.0, &key, AadKind::Snapshot)?;
        Snapshot::decode(&plain)
            .map_err(|e| Error::corrupt(FileKind::Snapshot.path(&id.to_hex()), e.0))
    }

    pub(crate) fn set_lock_state(&self, s: Option<Arc<lock::LockState>>) {
        *self.lock_state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// `Ok` unless this process took a lock and has lost it.
    pub(crate) fn ensure_lock(&self) -> Result<()> {
        let s = self
            .lock_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match s {
            Some(s) => s.check(),
            None => Ok(()),
        }
    }

    /// Delete an object, only while this process's lock (if any) is intact.
    pub fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        self.ensure_lock()?;
        self.forget_snapshot_names(kind);
        self.backend.delete(kind, name)
    }

    /// Delete many objects of one kind (see [`Backend::delete_many`]), only
    /// while this process's lock (if any) is intact.
    pub fn delete_many(&self, kind: FileKind, names: &[String]) -> Result<()> {
        self.ensure_lock()?;
        self.forget_snapshot_names(kind);
        self.backend.delete_many(kind, names)
    }

    /// Send informational lines to `f` (the first notifier set stays).
    pub fn set_notifier(&self, f: Notifier) {
        let _ = self.notifier.set(f);
    }

    pub(crate) fn notice(&self, msg: &str) {
        if let Some(f) = self.notifier.get() {
            f(msg);
        }
    }

    fn note_problem(&self, msg: String) {
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(msg);
    }

    /// Damaged objects skipped since the last call, each naming the object.
    /// An operation with an outcome (restore, find, diff, stats, copy,
    /// check, drill) drains them into it ([`BlobSource::take_damaged`]);
    /// this is for the rest: what opening met (a damaged config copy or
    /// key slot) and what commands without an outcome met (a snapshot
    /// listing, or an operation that failed before it drained).
    pub fn take_problems(&self) -> Vec<String> {
        std::mem::take(&mut *self.problems.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every readable snapshot, oldest first. A damaged snapshot is skipped
    /// and recorded as a problem: one bad object must not hide the others.
    pub fn list_snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        let (out, damaged) = self.list_snapshots_and_damaged()?;
        for (_, e) in damaged {
            self.note_problem(format!("{e}; snapshot skipped"));
        }
        Ok(out)
    }

    /// Every readable snapshot, oldest first, and each snapshot file that
    /// does not read (damaged or vanished) with the reason.
    #[allow(clippy::type_complexity)]
    pub(crate) fn list_snapshots_and_damaged(
        &self,
    ) -> Result<(Vec<(SnapshotId, Snapshot)>, Vec<(SnapshotId, Error)>)> {
        let ids: Vec<SnapshotId> = self
            .backend
            .list(FileKind::Snapshot)?
            .into_iter()
            .filter_map(|o| SnapshotId::from_hex(&o.name))
            .collect();
        if let Some(c) = self.object_cache() {
            let listed: std::collections::HashSet<String> =
                ids.iter().map(|i| i.to_hex()).collect();
            c.retain(FileKind::Snapshot, |n| listed.contains(n));
        }
        let loaded: Vec<(SnapshotId, Result<Snapshot>)> = ids
            .par_iter()
            .map(|id| (*id, self.load_snapshot(id)))
            .collect();
        let mut out = Vec::with_capacity(loaded.len());
        let mut damaged = Vec::new();
        for (id, r) in loaded {
            match r {
                Ok(s) => out.push((id, s)),
                Err(e @ (Error::Corrupt { .. } | Error::NotFound { .. })) => damaged.push((id, e)),
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.1.time_ns.cmp(&b.1.time_ns).then(a.0.cmp(&b.0)));
        Ok((out, damaged))
    }

    /// Resolve `latest` or a unique id prefix.
    pub fn resolve_snapshot(&self, reference: &str) -> Result<(SnapshotId, Snapshot)> {
        if reference == "latest" {
            return self
                .list_snapshots()?
                .pop()
                .ok_or_else(|| Error::SnapshotRef("the repository has no snapshots yet".into()));
        }
        let r = reference.to_ascii_lowercase();
        if r.is_empty() || !r.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::SnapshotRef(format!(
                "{reference:?} is not a snapshot id: give `latest` or a hex id prefix"
            )));
        }
        let matches: Vec<SnapshotId> = self
            .snapshot_names()?
            .iter()
            .filter(|n| n.starts_with(&r))
            .filter_map(|n| SnapshotId::from_hex(n))
            .collect();
        match matches.as_slice() {
            [id] => Ok((*id, self.load_snapshot(id)?)),
            [] => Err(Error::SnapshotRef(format!(
                "no snapshot matches {reference:?}: run `coffer snapshots`"
            ))),
            _ => Err(Error::SnapshotRef(format!(
                "{reference:?} matches {} snapshots: give more digits",
                matches.len()
            ))),
        }
    }

    /// The names of the snapshot objects, listed once per process (until
    /// this process adds or deletes one).
    fn snapshot_names(&self) -> Result<Vec<String>> {
        let mut names = self
            .snapshot_names
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = names.as_ref() {
            return Ok(n.clone());
        }
        let listed: Vec<String> = self
            .backend
            .list(FileKind::Snapshot)?
            .into_iter()
            .map(|o| o.name)
            .collect();
        *names = Some(listed.clone());
        Ok(listed)
    }

    fn forget_snapshot_names(&self, kind: FileKind) {
        if kind == FileKind::Snapshot {
            *self
                .snapshot_names
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Read one blob, locating it through the index.
    pub(crate) fn read_blob_checked(&self, kind: BlobKind, id: &BlobId) -> Result<Vec<u8>> {
        self.with_sealed(kind, id, |entry, sealed| {
            crate::pack::open_blob(&self.keys, &self.repo_id, entry, sealed)
        })
    }

    /// Read one blob's body (`flag || payload`, still encoded) and the
    /// length it decodes to: what `copy` hands to a related repository.
    pub(crate) fn read_blob_body(&self, kind: BlobKind, id: &BlobId) -> Result<(Vec<u8>, u32)> {
        self.with_sealed(kind, id, |entry, sealed| {
            crate::pack::open_blob_body(&self.keys, &self.repo_id, entry, sealed)
                .map(|body| (body, entry.raw_length))
        })
    }

    /// Read a blob's sealed bytes and `open` them; a cached copy that does
    /// not open is dropped and the store asked instead.
    fn with_sealed<T, E: std::fmt::Display>(
        &self,
        kind: BlobKind,
        id: &BlobId,
        open: impl Fn(&crate::pack::PackEntry, &[u8]) -> std::result::Result<T, E>,
    ) -> Result<T> {
        let (entry, pack, sealed, cached) = self.read_sealed(kind, id, true)?;
        let corrupt = |e: E| Error::corrupt(FileKind::Pack.path(&pack.to_hex()), e.to_string());
        match open(&entry, &sealed) {
            Ok(v) => Ok(v),
            Err(_) if cached => {
                if let Some(c) = self.object_cache() {
                    c.remove(FileKind::Pack, &pack.to_hex());
                }
                let (entry, _, sealed, _) = self.read_sealed(kind, id, false)?;
                open(&entry, &sealed).map_err(corrupt)
            }
            Err(e) => Err(corrupt(e)),
        }
    }

    /// A blob's index entry, its pack, its sealed bytes, and whether they
    /// came from the object cache (tree blobs of a remote store, when
    /// `use_cache`).
    fn read_sealed(
        &self,
        kind: BlobKind,
        id: &BlobId,
        use_cache: bool,
    ) -> Result<(crate::pack::PackEntry, PackId, Vec<u8>, bool)> {
        let loc = self
            .index()?
            .lookup(id)?
            .ok_or_else(|| Error::BlobMissing { id: id.to_hex() })?;
        if loc.entry.kind != kind {
            return Err(Error::corrupt(
                FileKind::Pack.path(&loc.pack.to_hex()),
                format!(
                    "blob {id} is indexed as {:?}, expected {kind:?}",
                    loc.entry.kind
                ),
            ));
        }
        let name = loc.pack.to_hex();
        let (offset, len) = (loc.entry.offset as u64, loc.entry.length as usize);
        if use_cache
            && kind == BlobKind::Tree
            && let Some(c) = self.object_cache()
            && self.cache_tree_pack(&c, &loc.pack)?
            && let Some(sealed) = c.get_range(FileKind::Pack, &name, offset, len)
        {
            return Ok((loc.entry, loc.pack, sealed, true));
        }
        let sealed = self.backend.get_range(FileKind::Pack, &name, offset, len)?;
        Ok((loc.entry, loc.pack, sealed, false))
    }

    /// Check a pack's structure without reading its blobs: its size
    /// against the index's record, then its trailer (authenticated, parsed,
    /// tiling the pack). Catches bytes appended, cut or altered outside
    /// the blobs a reader uses (doc/reliability.md F1, F2, K9). Costs a stat
    /// and one small ranged read.
    pub(crate) fn check_pack(&self, pack: &PackId) -> Result<()> {
        let name = pack.to_hex();
        let obj = FileKind::Pack.path(&name);
        let indexed = self.index()?.pack_size(pack)?;
        // On a remote store a size request per pack is a round trip each:
        // the trailer read at the indexed size finds a pack cut short
        // (the range comes back short) and a replaced one (it does not
        // authenticate); only bytes appended after it, which no reader
        // uses, go unnoticed until `check`.
        if let Some(size) = indexed.filter(|_| self.backend.is_remote()) {
            return self.read_trailer(pack, size).map(|_| ());
        }
        let size = self.backend.size(FileKind::Pack, &name)?;
        if let Some(want) = indexed
            && want != size
        {
            return Err(Error::corrupt(
                obj,
                format!(
                    "the object is {size} bytes but the index records {want} (truncated, or bytes appended)"
                ),
            ));
        }
        self.read_trailer(pack, size).map(|_| ())
    }

    /// A pack's trailer entries, read by ranged reads from a pack of
    /// `size` bytes (authenticated, parsed, tiling the pack): what a reader
    /// needs without reading the blobs.
    pub(crate) fn read_trailer(
        &self,
        pack: &PackId,
        size: u64,
    ) -> Result<Vec<crate::pack::PackEntry>> {
        let name = pack.to_hex();
        let obj = FileKind::Pack.path(&name);
        if size < 4 {
            return Err(Error::corrupt(
                obj,
                format!("only {size} bytes (empty or truncated)"),
            ));
        }
        // Most trailers fit in the last 64 KiB: one read for both.
        let tail_len = size.min(64 * 1024);
        let tail =
            self.backend
                .get_range(FileKind::Pack, &name, size - tail_len, tail_len as usize)?;
        let mut last4 = [0u8; 4];
        last4.copy_from_slice(&tail[tail.len() - 4..]);
        let n = crate::pack::reader::trailer_len(last4, size)
            .map_err(|e| Error::corrupt(obj.clone(), e))?;
        let start = size - 4 - n as u64;
        let fetched;
        let sealed = if n as u64 + 4 <= tail_len {
            &tail[tail.len() - 4 - n..tail.len() - 4]
        } else {
            fetched = self.backend.get_range(FileKind::Pack, &name, start, n)?;
            &fetched[..]
        };
        crate::pack::reader::open_trailer(&self.keys, &self.repo_id, sealed, start)
            .map_err(|e| Error::corrupt(obj, e))
    }

    /// Metadata of every key slot (id, kind, metadata or the reason it is unreadable).
    pub fn list_keys(&self) -> Result<Vec<KeyListing>> {
        let mut out = Vec::new();
        for name in self
            .backend
            .list(FileKind::Key)?
            .into_iter()
            .map(|o| o.name)
        {
            let Some(id) = KeyId::from_hex(&name) else {
                continue;
            };
            match self
                .backend
                .get(FileKind::Key, &name)
                .map(|b| KeySlot::decode(&b))
            {
                Ok(Ok(slot)) => out.push((
                    id,
                    Some(slot.kind),
                    slot.meta(&self.repo_id, &id, &self.keys),
                )),
                Ok(Err(e)) => out.push((id, None, Err(e.0))),
                Err(e) => out.push((id, None, Err(e.to_string()))),
            }
        }
        Ok(out)
    }
}

impl BlobSource for Repository {
    fn read_blob(&self, kind: BlobKind, id: &BlobId) -> Result<Vec<u8>> {
        self.read_blob_checked(kind, id)
    }

    fn take_damaged(&self) -> Vec<String> {
        self.take_problems()
    }
}

impl PackedBlobSource for Repository {
    fn locate(&self, id: &BlobId) -> Result<Option<BlobPlace>> {
        Ok(self.locate_many(std::slice::from_ref(id))?.pop().flatten())
    }

    fn locate_many(&self, ids: &[BlobId]) -> Result<Vec<Option<BlobPlace>>> {
        Ok(self
            .index()?
            .lookup_many(ids)?
            .into_iter()
            .map(|l| {
                l.map(|l| BlobPlace {
                    kind: l.entry.kind,
                    pack: l.pack,
                    offset: l.entry.offset,
                    length: l.entry.length,
                    raw_length: l.entry.raw_length,
                })
            })
            .collect())
    }

    fn read_pack_range(&self, pack: &PackId, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.backend
            .get_range(FileKind::Pack, &pack.to_hex(), offset, len)
    }

    fn read_pack_range_into(
        &self,
        pack: &PackId,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.backend
            .get_range_into(FileKind::Pack, &pack.to_hex(), offset, len, buf)
    }

    fn requests_in_flight(&self) -> Option<usize> {
        self.requests_in_flight()
    }

    fn open_sealed(&self, id: &BlobId, place: &BlobPlace, sealed: &[u8]) -> Result<Vec<u8>> {
        let entry = crate::pack::PackEntry {
            kind: place.kind,
            id: *id,
            offset: place.offset,
            length: place.length,
            raw_length: place.raw_length,
        };
        crate::pack::open_blob(&self.keys, &self.repo_id, &entry, sealed)
            .map_err(|e| Error::corrupt(FileKind::Pack.path(&place.pack.to_hex()), e))
    }

    fn data_id(&self, data: &[u8]) -> BlobId {
        self.keys.blob_id(data)
    }

    fn check_pack(&self, pack: &PackId) -> Result<()> {
        Repository::check_pack(self, pack)
    }

    fn zero_chunk(&self) -> Option<(BlobId, u64)> {
        // A damaged config leaves no chunker: holes are then counted as data.
        let chunker = self.chunker().ok()?;
        let zeros = vec![0u8; chunker.params().max_size as usize];
        let len = chunker.next_cut(&zeros);
        Some((self.keys.blob_id(&zeros[..len]), len as u64))
    }
}

/// `config` and `config.copy` as read, in that order: `None` when the
/// object does not exist, else its header's repository id and its bytes,
/// or why it cannot be used (bad magic, unknown version, unreadable).
struct ConfigObjects([(&'static str, Option<Result<ConfigHeaderRead>>); 2]);

/// The config objects as a format check read them, for opening.
pub struct FormatChecked(ConfigObjects);

impl FormatChecked {
    /// The repository id the first usable config names.
    pub fn id(&self) -> RepoId {
        self.0.ids()[0]
    }
}

/// A config object whose header is usable: the repository id it names, and
/// all its bytes.
type ConfigHeaderRead = (RepoId, Vec<u8>);

impl ConfigObjects {
    /// Read both. `Ok` only when at least one header is usable (so
    /// [`ConfigObjects::ids`] is never empty); else the error that `config`
    /// (or, when it is missing, its copy) gives, and "not a repository"
    /// when neither exists.
    fn read(backend: &dyn Backend) -> Result<ConfigObjects> {
        let read = |name: &'static str| match backend.get(FileKind::Config, name) {
            Err(Error::NotFound { .. }) => None,
            got => Some(got.and_then(|raw| header_of(name, raw))),
        };
        // A store that cannot be reached, or refuses us, would only be
        // asked again (with every retry) for the copy: say why now.
        let main = match read(CONFIG) {
            Some(Err(e @ Error::Remote { .. })) => return Err(e),
            m => m,
        };
        if let Some(Err(Error::Corrupt { .. })) = &main
            && let Some(what) = foreign_format(backend)
        {
            return Err(Error::ForeignRepository {
                path: backend.location(),
                what,
            });
        }
        let mut objs = ConfigObjects([(CONFIG, main), (CONFIG_COPY, read(CONFIG_COPY))]);
        if !objs.ids().is_empty() {
            return Ok(objs);
        }
        let [(_, main), (_, copy)] = &mut objs.0;
        match main.take().or(copy.take()) {
            Some(Err(e)) => Err(e),
            _ => Err(Error::NotARepository {
                path: backend.location().into(),
            }),
        }
    }

    /// The distinct repository ids the usable headers name.
    fn ids(&self) -> Vec<RepoId> {
        let mut ids = Vec::new();
        for (_, o) in &self.0 {
            if let Some(Ok((id, _))) = o
                && !ids.contains(id)
            {
                ids.push(*id);
            }
        }
        ids
    }

    /// The bytes of the first object that is intact for `repo`.
    fn intact(&self, repo: &RepoId, keys: &KeySet) -> Option<&[u8]> {
        self.0.iter().find_map(|(name, o)| match o {
            Some(Ok((_, raw))) if body_of(name, raw, repo, keys).is_ok() => Some(&raw[..]),
            _ => None,
        })
    }

    /// The config the first intact object holds (or why none does), and a
    /// warning for each object that is damaged, naming it and the repair.
    fn open_body(
        &self,
        repo: &RepoId,
        keys: &KeySet,
    ) -> (std::result::Result<Config, String>, Vec<String>) {
        let mut config = None;
        let mut damaged = Vec::new();
        for (name, o) in &self.0 {
            let why = match o {
                None if *name == CONFIG_COPY => continue,
                None => "it is missing".to_string(),
                Some(Err(e)) => e.to_string(),
                Some(Ok((_, raw))) => match body_of(name, raw, repo, keys) {
                    Ok(c) => {
                        config.get_or_insert(c);
                        continue;
                    }
                    Err(why) => why,
                },
            };
            damaged.push((*name, why));
        }
        let problems = damaged
            .iter()
            .map(|(name, why)| match &config {
                Some(_) => format!(
                    "repository object {name} is damaged ({why}); the other copy is intact and was used: run `coffer repair config`"
                ),
                None => format!(
                    "repository object {name} is damaged ({why}) and has no intact copy: snapshots can still be read (and copied into a new repository), but nothing can be written here"
                ),
            })
            .collect();
        let config = config.ok_or_else(|| match damaged.as_slice() {
            [(_, why)] => why.clone(),
            both => both
                .iter()
                .map(|(name, why)| format!("{name}: {why}"))
                .collect::<Vec<_>>()
                .join("; "),
        });
        (config, problems)
    }
}

/// The repository id of a config object whose magic and format version
/// are right, and its bytes.
fn header_of(name: &str, raw: Vec<u8>) -> Result<ConfigHeaderRead> {
    let header = config::decode_header(&raw).map_err(|e| Error::corrupt(name, e.0))?;
    if header.version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: header.version,
            supported: FORMAT_VERSION,
        });
    }
    Ok((header.repo, raw))
}

/// The body of a config object whose header reads, if it belongs to
/// `repo` and authenticates under its keys.
fn body_of(
    name: &str,
    raw: &[u8],
    repo: &RepoId,
    keys: &KeySet,
) -> std::result::Result<Config, String> {
    let header = config::decode_header(raw).map_err(|e| e.0)?;
    if header.repo != *repo {
        return Err(format!(
            "{name} names repository {}, but the key opens repository {}: its id was altered",
            header.repo.short(),
            repo.short()
        ));
    }
    config::decode_body(&header, keys)
}

/// What another backup program's repository at this location looks like,
/// from its bytes: restic's key objects are JSON naming their KDF (and its
/// `config` is ciphertext without a magic).
fn foreign_format(backend: &dyn Backend) -> Option<&'static str> {
    let name = backend.list(FileKind::Key).ok()?.into_iter().next()?.name;
    let key = backend.get(FileKind::Key, &name).ok()?;
    let json_kdf = key.first() == Some(&b'{') && key.windows(5).any(|w| w == b"\"kdf\"");
    json_kdf.then_some("restic")
}

/// A fresh random repository id.
pub fn new_repo_id() -> RepoId {
    let mut rid = [0u8; 32];
    envelope::random_bytes(&mut rid);
    RepoId(rid)
}

/// Write a new key slot for `unlock`; returns its id.
fn add_slot(
    backend: &dyn Backend,
    repo: &RepoId,
    master: &MasterKey,
    keys: &KeySet,
    unlock: &Unlock,
    kdf: KdfParams,
) -> Result<KeyId> {
    let mut kid = [0u8; 32];
    envelope::random_bytes(&mut kid);
    let key_id = KeyId(kid);
    let meta = SlotMeta {
        created_unix_ns: now_ns(),
        hostname: hostname(),
        username: username(),
    };
    let slot =
        KeySlot::create(repo, &key_id, master, keys, unlock, kdf, &meta).map_err(Error::Usage)?;
    backend.put(FileKind::Key, &key_id.to_hex(), &slot.encode())?;
    Ok(key_id)
}

/// What opening a key slot gave: the master key, the slot, the repository
/// id the slot belongs to, and a warning when the slot's metadata is damaged.
struct Unlocked {
    master: MasterKey,
    key_id: KeyId,
    repo: RepoId,
    problem: Option<String>,
}

/// Unwrap the master key from the first slot `secret` opens as a slot of
/// one of `repos`.
fn unlock_master(backend: &dyn Backend, repos: &[RepoId], secret: &Secret) -> Result<Unlocked> {
    let want = match secret {
        Secret::Passphrase(_) => SlotKind::Passphrase,
        Secret::KeyFile(_) => SlotKind::KeyFile,
    };
    let unlock = match secret {
        Secret::Passphrase(p) => Unlock::Passphrase(p),
        Secret::KeyFile(k) => Unlock::KeyFile(&k.secret),
    };
    let mut tried = 0;
    // Slots that could not be read or parsed, named in the final error.
    let mut damaged: Vec<String> = Vec::new();
    for name in backend.list(FileKind::Key)?.into_iter().map(|o| o.name) {
        let Some(id) = KeyId::from_hex(&name) else {
            continue;
        };
        let obj = FileKind::Key.path(&name);
        // An unreadable or malformed slot must not lock out the others (H-3).
        let bytes = match backend.get(FileKind::Key, &name) {
            Ok(b) => b,
            Err(e) => {
                damaged.push(format!("{obj} ({e})"));
                continue;
            }
        };
        let slot = match KeySlot::decode(&bytes) {
            Ok(s) => s,
            Err(e) => {
                damaged.push(format!("{obj} ({e})"));
                continue;
            }
        };
        if slot.kind != want {
            continue;
        }
        if want == SlotKind::Passphrase {
            tried += 1;
            if tried > MAX_PASSPHRASE_SLOTS {
                break;
            }
        }
        if let Some((master, repo)) = slot.unlock_any(repos, &id, &unlock) {
            // A wrapped key that authenticates under the secret's KEK is
            // the master key, whatever became of the metadata beside it:
            // no one without the secret can make one. Metadata that does
            // not authenticate was damaged after the slot was written.
            let problem = slot.meta(&repo, &id, &KeySet::derive(&master)).err().map(|e| {
                format!(
                    "key slot {obj} opens, but its metadata does not authenticate ({e}): the slot is damaged; replace it while it still opens (`coffer key passwd`, or `coffer key add`, then `coffer key remove {}` with the new key)",
                    id.short()
                )
            });
            return Ok(Unlocked {
                master,
                key_id: id,
                repo,
                problem,
            });
        }
    }
    Err(Error::WrongPassword {
        repo: backend.location(),
        damaged: if damaged.is_empty() {
            String::new()
        } else {
            format!("; key slots that cannot be read: {}", damaged.join(", "))
        },
    })
}

/// Default location of the SQLite cache root: `$XDG_CACHE_HOME/coffer` or
/// `~/.cache/coffer`.
/// The signature a valid `CACHEDIR.TAG` starts with (bford.info/cachedir).
pub(crate) const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Create the cache root `root` if needed and mark it with a
/// `CACHEDIR.TAG`, so that backup tools (coffer's `--exclude-caches`,
/// restic's, borg's, tar's) leave out what can be rebuilt from the
/// repository.
pub fn tag_cache_dir(root: &Path) -> std::io::Result<()> {
    let tag = root.join("CACHEDIR.TAG");
    if tag.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(root)?;
    let mut text = CACHEDIR_SIGNATURE.to_vec();
    text.extend_from_slice(
        b"\n# This file is a cache directory tag created by coffer: its index caches\n# are rebuilt from the repository when missing.\n# For information about cache directory tags see https://bford.info/cachedir/\n",
    );
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tag)
    {
        Ok(mut f) => std::io::Write::write_all(&mut f, &text),
        // Another coffer process tagged it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn default_cache_root() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(Path::new(&x).join("coffer"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache").join("coffer"))
}

/// A repository in memory with a cheap KDF, for unit tests.
#[cfg(test)]
pub(crate) fn memory_repo() -> (Arc<crate::backend::memory::MemoryBackend>, Repository) {
    let backend = Arc::new(crate::backend::memory::MemoryBackend::new());
    let repo = Repository::init(
        backend.clone(),
        InitSecret::Passphrase(zeroize::Zeroizing::new(b"pw".to_vec())),
        config::Config::default(),
        crate::crypto::key_file::KdfParams {
            memory_kib: 64,
            iterations: 1,
            lanes: 1,
        },
    )
    .expect("init a memory repository");
    (backend, repo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::blob::BlobSink;
    use crate::repository::blob_store::BlobStore;
    use crate::repository::lock::LockTimeouts;
    use std::time::Duration;

    fn reopen(backend: &Arc<MemoryBackend>, pw: &[u8]) -> Result<Repository> {
        let backend: Arc<dyn Backend> = backend.clone();
        Repository::open(backend, &Secret::Passphrase(Zeroizing::new(pw.to_vec())))
    }

    fn snapshot(tree: BlobId, host: &str, time_ns: i64) -> Snapshot {
        Snapshot {
            time_ns,
            tree,
            parent: None,
            hostname: host.into(),
            username: "u".into(),
            uid: 1,
            gid: 2,
            paths: vec![b"/data".to_vec()],
            tags: vec!["t".into()],
            program_version: "coffer test".into(),
            summary: Default::default(),
        }
    }

    /// Store `blobs` in one run and make them durable and indexed.
    fn store(repo: &Arc<Repository>, blobs: &[(BlobKind, &[u8])]) -> Vec<BlobId> {
        let store = BlobStore::new(repo.clone()).unwrap();
        let ids = blobs
            .iter()
            .map(|(kind, data)| {
                let id = store.blob_id(data);
                store.store_blob(*kind, id, data).unwrap();
                id
            })
            .collect();
        store.finish().unwrap();
        ids
    }

    #[test]
    fn open_finds_the_same_repository_and_refuses_a_wrong_passphrase() {
        let (backend, repo) = memory_repo();
        let again = reopen(&backend, b"pw").unwrap();
        assert_eq!(again.id(), repo.id());
        assert_eq!(again.key_id(), repo.key_id());
        assert_eq!(
            again.keys().blob_id(b"x"),
            repo.keys().blob_id(b"x"),
            "the same master key"
        );
        assert!(matches!(
            reopen(&backend, b"not it"),
            Err(Error::WrongPassword { .. })
        ));
    }

    #[test]
    fn blobs_written_are_read_back_by_a_fresh_open() {
        let (backend, repo) = memory_repo();
        let repo = Arc::new(repo);
        let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let ids = store(
            &repo,
            &[
                (BlobKind::Data, b"hello"),
                (BlobKind::Data, &big),
                (BlobKind::Tree, b"tree"),
            ],
        );
        let again = reopen(&backend, b"pw").unwrap();
        assert_eq!(again.read_blob(BlobKind::Data, &ids[0]).unwrap(), b"hello");
        assert_eq!(again.read_blob(BlobKind::Data, &ids[1]).unwrap(), big);
        assert_eq!(again.read_blob(BlobKind::Tree, &ids[2]).unwrap(), b"tree");
        // A blob asked for as the wrong kind is refused, naming its pack.
        let e = again.read_blob(BlobKind::Tree, &ids[0]).unwrap_err();
        assert!(e.to_string().contains("packs/"), "{e}");
        assert!(matches!(
            again.read_blob(BlobKind::Data, &BlobId([3; 32])),
            Err(Error::BlobMissing { .. })
        ));
        let place = again.locate(&ids[1]).unwrap().unwrap();
        assert_eq!(place.raw_length as usize, big.len());
        assert_eq!(place.kind, BlobKind::Data);
        again.check_pack(&place.pack).unwrap();
    }

    #[test]
    fn an_altered_pack_byte_fails_the_read_naming_the_pack() {
        let (backend, repo) = memory_repo();
        let repo = Arc::new(repo);
        let ids = store(&repo, &[(BlobKind::Data, b"precious bytes")]);
        let place = repo.locate(&ids[0]).unwrap().unwrap();
        let name = place.pack.to_hex();
        let mut bytes = backend.get(FileKind::Pack, &name).unwrap();
        bytes[place.offset as usize + place.length as usize / 2] ^= 1;
        backend.delete(FileKind::Pack, &name).unwrap();
        backend.put(FileKind::Pack, &name, &bytes).unwrap();

        let again = reopen(&backend, b"pw").unwrap();
        let e = again.read_blob(BlobKind::Data, &ids[0]).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
        assert!(e.to_string().contains(&name), "{e}");
        // The trailer is intact: only the blob fails.
        again.check_pack(&place.pack).unwrap();
    }

    #[test]
    fn snapshots_are_listed_loaded_and_resolved_by_prefix() {
        let (backend, repo) = memory_repo();
        let tree = BlobId([9; 32]);
        let a = repo.save_snapshot(&snapshot(tree, "alpha", 1_000)).unwrap();
        let b = repo.save_snapshot(&snapshot(tree, "beta", 2_000)).unwrap();
        let again = reopen(&backend, b"pw").unwrap();
        let mut listed = again.list_snapshots().unwrap();
        listed.sort_by_key(|(_, s)| s.time_ns);
        let hosts: Vec<_> = listed
            .iter()
            .map(|(id, s)| (*id, s.hostname.as_str()))
            .collect();
        assert_eq!(hosts, vec![(a, "alpha"), (b, "beta")]);
        assert_eq!(
            again.load_snapshot(&a).unwrap(),
            snapshot(tree, "alpha", 1_000)
        );
        let (found, snap) = again.resolve_snapshot(&b.to_hex()[..12]).unwrap();
        assert_eq!((found, snap.hostname.as_str()), (b, "beta"));
        assert!(matches!(
            again.resolve_snapshot("ffffffffffffffff"),
            Err(Error::SnapshotRef(_))
        ));
    }

    #[test]
    fn an_exclusive_lock_excludes_others_until_dropped() {
        let (backend, repo) = memory_repo();
        let repo = Arc::new(repo);
        let other = Arc::new(reopen(&backend, b"pw").unwrap());
        let t = LockTimeouts::default();
        let held = repo.lock(true, t, Duration::ZERO).unwrap();
        assert_eq!(backend.list(FileKind::Lock).unwrap().len(), 1);
        repo.ensure_lock().unwrap();
        assert!(matches!(
            other.lock(false, t, Duration::ZERO),
            Err(Error::Locked { .. })
        ));
        let listed = other.list_locks().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].1.as_ref().unwrap().exclusive);
        drop(held);
        assert!(backend.list(FileKind::Lock).unwrap().is_empty());
        // Shared locks coexist; an exclusive one waits for both to go.
        let s1 = repo.lock(false, t, Duration::ZERO).unwrap();
        let s2 = other.lock(false, t, Duration::ZERO).unwrap();
        assert!(matches!(
            repo.lock(true, t, Duration::ZERO),
            Err(Error::Locked { .. })
        ));
        drop((s1, s2));
        drop(repo.lock(true, t, Duration::ZERO).unwrap());
    }
}
