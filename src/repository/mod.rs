//! The repository: config, keys, blob reads, snapshots and index segments
//! over any [`Backend`]. Everything above this layer goes through it or
//! through the role traits it implements.
//!
//! Opening reads the plaintext config header (format version and repository
//! id), unwraps the master key from a key slot, then decrypts the config
//! body. The index is loaded lazily: listing snapshots does not pay for it.

pub mod audit;
pub mod blob_store;
pub mod config;
mod keys;
pub mod lock;
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
use config::{Config, FORMAT_VERSION};
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
pub type KeyListing = (KeyId, Option<SlotKind>, Result<SlotMeta, String>);

/// Most passphrase slots tried when opening: each costs one Argon2id run, so
/// a repository with a thousand slots cannot stall every command (H-4).
const MAX_PASSPHRASE_SLOTS: usize = 32;

pub struct Repository {
    backend: Arc<dyn Backend>,
    repo_id: RepoId,
    keys: KeySet,
    config: Config,
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
}

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

pub fn username() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
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
    /// nothing a later command would accept (RELIABILITY.md A7).
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
        match backend.get(FileKind::Config, "config") {
            Ok(_) => {
                return Err(Error::AlreadyExists {
                    path: backend.location().into(),
                });
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        if !backend.list(FileKind::Key)?.is_empty() || !backend.list(FileKind::Pack)?.is_empty() {
            return Err(Error::Usage(format!(
                "{} holds key or pack objects but no config (an interrupted init or a damaged repository): remove it or choose another location",
                backend.location()
            )));
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
        backend.put(FileKind::Config, "config", &config.encode(&repo_id, &keys))?;
        Ok(Repository {
            backend,
            repo_id,
            keys,
            config,
            key_id,
            master,
            cache_root: None,
            index: OnceLock::new(),
            problems: Default::default(),
            lock_state: Default::default(),
        })
    }

    /// The config object's bytes, once its header names a known format
    /// version; a missing config means "not a repository".
    fn config_bytes(backend: &dyn Backend) -> Result<Vec<u8>> {
        let raw = match backend.get(FileKind::Config, "config") {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => {
                return Err(Error::NotARepository {
                    path: backend.location().into(),
                });
            }
            Err(e) => return Err(e),
        };
        let header = config::decode_header(&raw).map_err(|e| Error::corrupt("config", e.0))?;
        if header.version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                found: header.version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(raw)
    }

    /// Read the config's plaintext header and check its format version:
    /// what a reader must do before it asks for a passphrase or tries a key
    /// (repo-format/README.md, "Versioning"). Returns the repository id.
    pub fn check_format(backend: &dyn Backend) -> Result<RepoId> {
        let raw = Self::config_bytes(backend)?;
        let header = config::decode_header(&raw).map_err(|e| Error::corrupt("config", e.0))?;
        Ok(header.repo)
    }

    /// Open with a passphrase or key file.
    pub fn open(backend: Arc<dyn Backend>, secret: &Secret) -> Result<Repository> {
        let raw = Self::config_bytes(backend.as_ref())?;
        let header = config::decode_header(&raw).map_err(|e| Error::corrupt("config", e.0))?;
        let repo_id = header.repo;
        if let Secret::KeyFile(kf) = secret
            && kf.repo != repo_id
        {
            return Err(Error::Usage(format!(
                "the key file belongs to repository {}, but the config of {} names repository {} (a key file of another repository, or an altered config)",
                kf.repo.short(),
                backend.location(),
                repo_id.short()
            )));
        }
        let (master, key_id) = unlock_master(backend.as_ref(), &repo_id, secret)?;
        let keys = KeySet::derive(&master);
        let config =
            config::decode_body(&header, &keys).map_err(|e| Error::corrupt("config", e))?;
        Ok(Repository {
            backend,
            repo_id,
            keys,
            config,
            key_id,
            master,
            cache_root: None,
            index: OnceLock::new(),
            problems: Default::default(),
            lock_state: Default::default(),
        })
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
    pub fn config(&self) -> &Config {
        &self.config
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
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
    pub fn chunker(&self) -> Chunker {
        Chunker::new(self.config.chunker, self.keys.chunker_seed())
    }

    /// Path of the SQLite index cache, if it is on disk.
    pub fn cache_path(&self) -> Option<PathBuf> {
        self.cache_root
            .as_ref()
            .map(|r| r.join(self.repo_id.to_hex()).join("index.sqlite"))
    }

    /// Full integrity check of the on-disk index cache (every page), which
    /// ordinary opens skip for speed. A damaged cache is removed and the next
    /// `index()` rebuilds it. Returns false when that happened. No-op once
    /// the index is open in this process.
    pub fn verify_index_cache(&self) -> Result<bool> {
        match (self.index.get(), self.cache_path()) {
            (None, Some(p)) => Index::verify_file(&p),
            _ => Ok(true),
        }
    }

    /// The index, synced with the repository's segments on first use.
    pub fn index(&self) -> Result<&Index> {
        if let Some(i) = self.index.get() {
            return Ok(i);
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
        Ok(idx)
    }

    /// The index segments the repository lists now.
    pub fn segment_ids(&self) -> Result<Vec<SegmentId>> {
        Ok(self
            .backend
            .list(FileKind::Index)?
            .into_iter()
            .filter_map(|(n, _)| SegmentId::from_hex(&n))
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
    pub fn refresh_index(&self) -> Result<()> {
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
        let name = content_hash(&sealed);
        self.backend.put(kind, &hex::encode(name), &sealed)?;
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
        let obj = kind.path(&hexname);
        let sealed = self.backend.get(kind, &hexname)?;
        if sealed.len() < envelope::OVERHEAD {
            return Err(Error::corrupt(
                obj,
                format!("only {} bytes (empty or truncated)", sealed.len()),
            ));
        }
        if &content_hash(&sealed) != name {
            return Err(Error::corrupt(
                obj,
                "content does not match its name (damaged or swapped)",
            ));
        }
        envelope::open(key, &aad(&self.repo_id, aad_kind, &[0; 32]), &sealed)
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

    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let key = self.keys.snapshot;
        let plain = self.load_named(FileKind::Snapshot, &id.0, &key, AadKind::Snapshot)?;
        Snapshot::decode(&plain)
            .map_err(|e| Error::corrupt(FileKind::Snapshot.path(&id.to_hex()), e.0))
    }

    pub(crate) fn set_lock_state(&self, s: Option<Arc<lock::LockState>>) {
        *self.lock_state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// `Ok` unless this process took a lock and has lost it.
    pub fn ensure_lock(&self) -> Result<()> {
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
        self.backend.delete(kind, name)
    }

    /// Delete many objects of one kind (see [`Backend::delete_many`]), only
    /// while this process's lock (if any) is intact.
    pub fn delete_many(&self, kind: FileKind, names: &[String]) -> Result<()> {
        self.ensure_lock()?;
        self.backend.delete_many(kind, names)
    }

    fn note_problem(&self, msg: String) {
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(msg);
    }

    /// Damaged objects skipped since the last call, each naming the object.
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
    pub fn list_snapshots_and_damaged(
        &self,
    ) -> Result<(Vec<(SnapshotId, Snapshot)>, Vec<(SnapshotId, Error)>)> {
        let ids: Vec<SnapshotId> = self
            .backend
            .list(FileKind::Snapshot)?
            .into_iter()
            .filter_map(|(n, _)| SnapshotId::from_hex(&n))
            .collect();
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
            .backend
            .list(FileKind::Snapshot)?
            .into_iter()
            .filter(|(n, _)| n.starts_with(&r))
            .filter_map(|(n, _)| SnapshotId::from_hex(&n))
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

    /// Read one blob, locating it through the index.
    pub fn read_blob_checked(&self, kind: BlobKind, id: &BlobId) -> Result<Vec<u8>> {
        let (entry, pack, sealed) = self.read_sealed(kind, id)?;
        crate::pack::open_blob(&self.keys, &self.repo_id, &entry, &sealed)
            .map_err(|e| Error::corrupt(FileKind::Pack.path(&pack.to_hex()), e))
    }

    /// Read one blob's body (`flag || payload`, still encoded) and the
    /// length it decodes to: what `copy` hands to a related repository.
    pub fn read_blob_body(&self, kind: BlobKind, id: &BlobId) -> Result<(Vec<u8>, u32)> {
        let (entry, pack, sealed) = self.read_sealed(kind, id)?;
        let body = crate::pack::open_blob_body(&self.keys, &self.repo_id, &entry, &sealed)
            .map_err(|e| Error::corrupt(FileKind::Pack.path(&pack.to_hex()), e))?;
        Ok((body, entry.raw_length))
    }

    /// A blob's index entry, its pack and its sealed bytes.
    fn read_sealed(
        &self,
        kind: BlobKind,
        id: &BlobId,
    ) -> Result<(crate::pack::PackEntry, PackId, Vec<u8>)> {
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
        let sealed = self.backend.get_range(
            FileKind::Pack,
            &loc.pack.to_hex(),
            loc.entry.offset as u64,
            loc.entry.length as usize,
        )?;
        Ok((loc.entry, loc.pack, sealed))
    }

    /// Check a pack's structure without reading its blobs: its size
    /// against the index's record, then its trailer (authenticated, parsed,
    /// tiling the pack). Catches bytes appended, cut or altered outside
    /// the blobs a reader uses (RELIABILITY.md F1, F2, K9). Costs a stat
    /// and one small ranged read.
    pub fn check_pack(&self, pack: &PackId) -> Result<()> {
        let name = pack.to_hex();
        let obj = FileKind::Pack.path(&name);
        let size = self.backend.size(FileKind::Pack, &name)?;
        if let Some(want) = self.index()?.pack_size(pack)?
            && want != size
        {
            return Err(Error::corrupt(
                obj,
                format!(
                    "the object is {size} bytes but the index records {want} (truncated, or bytes appended)"
                ),
            ));
        }
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
            .map_err(|e| Error::corrupt(obj, e))?;
        Ok(())
    }

    /// Metadata of every key slot (id, kind, metadata or the reason it is unreadable).
    pub fn list_keys(&self) -> Result<Vec<KeyListing>> {
        let mut out = Vec::new();
        for (name, _) in self.backend.list(FileKind::Key)? {
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

fn unlock_master(
    backend: &dyn Backend,
    repo: &RepoId,
    secret: &Secret,
) -> Result<(MasterKey, KeyId)> {
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
    // A slot that opened but whose metadata does not authenticate: it was
    // altered (or damaged) after it was written.
    let mut altered: Option<Error> = None;
    for (name, _) in backend.list(FileKind::Key)? {
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
        if let Some(m) = slot.unlock(repo, &id, &unlock) {
            // The slot's metadata is sealed under a key derived from the
            // master key: checking it proves the slot is as it was written.
            match slot.meta(repo, &id, &KeySet::derive(&m)) {
                Ok(_) => return Ok((m, id)),
                Err(e) => {
                    altered.get_or_insert(Error::corrupt(
                        obj,
                        format!("the key opens it but its metadata does not authenticate ({e}): the slot was altered; open the repository with another key and replace this one (`coffer key add`, then `coffer key remove`)"),
                    ));
                }
            }
        }
    }
    if let Some(e) = altered {
        return Err(e);
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
