//! What the commands above this layer do to stored objects directly: list
//! and read packs, set damaged ones aside, delete under an exclusive lock,
//! and look at temporary objects. The backend stays private to the
//! repository, so every write and delete passes the lock checks here.

use super::Repository;
use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::id::PackId;
use std::time::Duration;

impl Repository {
    /// Every object under `packs/`: its name (not necessarily a valid pack
    /// id: a stray file is listed too) and its size in bytes.
    pub(crate) fn list_packs(&self) -> Result<Vec<(String, u64)>> {
        Ok(self
            .backend
            .list(FileKind::Pack)?
            .into_iter()
            .map(|o| (o.name, o.size))
            .collect())
    }

    /// A pack's bytes, whole and unverified.
    pub fn read_pack(&self, pack: &PackId) -> Result<Vec<u8>> {
        self.backend.get(FileKind::Pack, &pack.to_hex())
    }

    /// `len` bytes of a pack from `offset`, unverified.
    pub(crate) fn read_pack_range(
        &self,
        pack: &PackId,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        self.backend
            .get_range(FileKind::Pack, &pack.to_hex(), offset, len)
    }

    /// Temporary objects left in the repository: (count, bytes).
    pub(crate) fn temp_usage(&self) -> Result<(u64, u64)> {
        self.backend.temp_usage()
    }

    /// Remove temporary objects older than `min_age` (the caller holds
    /// an exclusive lock, so no put of another process is live), while
    /// this process's lock is intact; returns how many.
    pub(crate) fn remove_stale_temps(&self, min_age: Duration) -> Result<usize> {
        self.ensure_lock()?;
        self.backend.remove_stale_temps(min_age)
    }

    /// Where the repository is, as a user would name it.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Requests sent to a remote store so far (`None` on a disk).
    pub fn requests(&self) -> Option<crate::backend::Requests> {
        self.backend.requests()
    }

    /// See [`crate::backend::Backend::probe_create_once`].
    pub fn probe_create_once(&self) -> Result<Option<bool>> {
        self.backend.probe_create_once()
    }

    /// How many requests the store wants in flight.
    pub fn connections(&self) -> usize {
        self.backend.connections()
    }

    /// [`Repository::connections`] for a remote store, `None` for a local
    /// disk: what [`crate::backend::in_io_pool`] takes.
    pub(crate) fn requests_in_flight(&self) -> Option<usize> {
        self.backend.is_remote().then(|| self.backend.connections())
    }

    /// Move damaged packs to `damaged/`: copied there first, then deleted
    /// from `packs/`, so a crash in between leaves both and a rerun
    /// finishes. Their bytes are the only copy of the blobs that did not
    /// verify, kept for a later attempt or a forensic look.
    pub(crate) fn quarantine_packs(&self, packs: &[PackId]) -> Result<()> {
        let names: Vec<String> = packs.iter().map(PackId::to_hex).collect();
        for name in &names {
            self.ensure_exclusive_lock("moving a damaged pack aside")?;
            let bytes = self.backend.get(FileKind::Pack, name)?;
            match self.backend.put(FileKind::Damaged, name, &bytes) {
                // A rerun after a crash between the copy and the delete.
                Ok(()) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.delete_exclusively(FileKind::Pack, &names)
    }

    /// Delete objects of one kind, only while this process holds an
    /// intact exclusive lock: what a repair deletes may be what a
    /// concurrent backup is about to reference.
    pub(crate) fn delete_exclusively(&self, kind: FileKind, names: &[String]) -> Result<()> {
        self.ensure_exclusive_lock("deleting")?;
        self.forget_snapshot_names(kind);
        self.backend.delete_many(kind, names)
    }

    /// `Ok` only while this process holds an exclusive lock that is intact.
    pub(crate) fn ensure_exclusive_lock(&self, action: &'static str) -> Result<()> {
        let state = self
            .lock_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(state) = state else {
            return Err(Error::ExclusiveLockRequired { action });
        };
        if !state
            .info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .exclusive
        {
            return Err(Error::ExclusiveLockRequired { action });
        }
        state.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::blob::BlobKind;
    use crate::repository::blob_store::store_in_own_pack;
    use crate::repository::lock::LockTimeouts;
    use std::sync::Arc;

    /// A pack moves to `damaged/` only under an exclusive lock: without
    /// one, or under a shared one, nothing is copied or deleted.
    #[test]
    fn quarantine_needs_an_exclusive_lock() {
        let (backend, repo) = crate::repository::memory_repo();
        let repo = Arc::new(repo);
        store_in_own_pack(&repo, &[(BlobKind::Data, b"x".to_vec())]);
        let packs: Vec<PackId> = repo
            .list_packs()
            .unwrap()
            .iter()
            .map(|(n, _)| PackId::from_hex(n).unwrap())
            .collect();
        let refused = |r: Result<()>| matches!(r, Err(Error::ExclusiveLockRequired { .. }));
        assert!(refused(repo.quarantine_packs(&packs)));
        let wait = Duration::ZERO;
        let shared = repo.lock(false, LockTimeouts::default(), wait).unwrap();
        assert!(refused(repo.quarantine_packs(&packs)));
        assert!(refused(
            repo.delete_exclusively(FileKind::Pack, &[packs[0].to_hex()])
        ));
        drop(shared);
        assert_eq!(backend.list(FileKind::Damaged).unwrap().len(), 0);
        assert_eq!(repo.list_packs().unwrap().len(), 1);
        let _exclusive = repo.lock(true, LockTimeouts::default(), wait).unwrap();
        repo.quarantine_packs(&packs).unwrap();
        assert_eq!(repo.list_packs().unwrap().len(), 0);
        assert_eq!(backend.list(FileKind::Damaged).unwrap().len(), 1);
    }
}
