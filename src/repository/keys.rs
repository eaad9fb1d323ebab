//! Key management: add, verify, remove and replace the key slots that wrap
//! the master key (repo-format/README.md, "Key slots").
//!
//! Every slot wraps the same master key, so adding one needs the master key
//! of an open repository and changes nothing else. The rules that keep a
//! repository openable whatever happens (doc/reliability.md H-5, A8):
//! - a new slot is read back from the backend and opened with its secret
//!   before it counts as added; one that does not open is deleted again;
//! - the slot that opened this session and the last slot are never removed;
//! - changing a passphrase adds and verifies the new slot first and only
//!   then removes the old one, so a crash in between leaves both, never
//!   neither.

use super::{Repository, Secret, add_slot};
use crate::backend::FileKind;
use crate::crypto::key_file::{KdfParams, KeySlot, SlotKind, Unlock};
use crate::error::{Error, Result};
use crate::id::KeyId;

impl Repository {
    /// Add a key slot for `secret` and verify that it opens the repository.
    /// A key file must belong to this repository.
    pub fn add_key(&self, secret: &Secret, kdf: KdfParams) -> Result<KeyId> {
        let unlock = match secret {
            Secret::Passphrase(p) => Unlock::Passphrase(p),
            Secret::KeyFile(kf) => {
                if kf.repo != self.repo_id {
                    return Err(Error::ForeignKeyFile {
                        theirs: kf.repo.short(),
                        ours: self.repo_id.short(),
                    });
                }
                Unlock::KeyFile(&kf.secret)
            }
        };
        let id = add_slot(
            self.backend.as_ref(),
            &self.repo_id,
            &self.master,
            &self.keys,
            &unlock,
            kdf,
        )?;
        if let Err(e) = self.verify_key(&id, secret) {
            // Never leave a slot behind that its own secret cannot open.
            let _ = self.backend.delete(FileKind::Key, &id.to_hex());
            return Err(e);
        }
        Ok(id)
    }

    /// Read slot `id` back from the backend and check that `secret` unwraps
    /// this repository's master key from it.
    pub(crate) fn verify_key(&self, id: &KeyId, secret: &Secret) -> Result<()> {
        let obj = FileKind::Key.path(&id.to_hex());
        let bytes = self.backend.get(FileKind::Key, &id.to_hex())?;
        let slot = KeySlot::decode(&bytes).map_err(|e| Error::corrupt(&obj, e.0))?;
        let unlock = match secret {
            Secret::Passphrase(p) => Unlock::Passphrase(p),
            Secret::KeyFile(kf) => Unlock::KeyFile(&kf.secret),
        };
        match slot.unlock(&self.repo_id, id, &unlock) {
            Some(m) if m.0 == self.master.0 => Ok(()),
            Some(_) => Err(Error::corrupt(
                obj,
                "opens, but to another master key than this repository's",
            )),
            None => Err(Error::corrupt(
                obj,
                "was written but its secret does not open it",
            )),
        }
    }

    /// The key slot whose id starts with `prefix` (hex, at least 4 digits).
    pub fn resolve_key(&self, prefix: &str) -> Result<KeyId> {
        let p = prefix.to_ascii_lowercase();
        if p.len() < 4 || p.len() > 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Usage(format!(
                "{prefix:?} is not a key id: give at least 4 hex digits (see `coffer key list`)"
            )));
        }
        let matches: Vec<KeyId> = self
            .backend
            .list(FileKind::Key)?
            .into_iter()
            .filter(|o| o.name.starts_with(&p))
            .filter_map(|o| KeyId::from_hex(&o.name))
            .collect();
        match matches.as_slice() {
            [id] => Ok(*id),
            [] => Err(Error::Usage(format!(
                "no key matches {prefix:?}: run `coffer key list`"
            ))),
            _ => Err(Error::Usage(format!(
                "{prefix:?} matches {} keys: give more digits",
                matches.len()
            ))),
        }
    }

    /// Remove key slot `id`. Refuses the slot that opened this repository
    /// (open it with another key to remove it) and the last slot.
    pub fn remove_key(&self, id: &KeyId) -> Result<()> {
        if *id == self.key_id {
            return Err(Error::Usage(format!(
                "key {} is the one in use: open the repository with another key to remove it",
                id.short()
            )));
        }
        let slots: Vec<KeyId> = self
            .backend
            .list(FileKind::Key)?
            .into_iter()
            .filter_map(|o| KeyId::from_hex(&o.name))
            .collect();
        if !slots.contains(id) {
            return Err(Error::Usage(format!(
                "no key {} in this repository: run `coffer key list`",
                id.short()
            )));
        }
        if slots.len() <= 1 {
            return Err(Error::Usage(format!(
                "key {} is the repository's last key: removing it would make the repository unreadable",
                id.short()
            )));
        }
        self.backend.delete(FileKind::Key, &id.to_hex())
    }

    /// Replace the passphrase slot in use by a new one: add the new slot,
    /// verify it, and only then delete the old one. Returns the new id; this
    /// handle then counts it as the key in use.
    pub fn change_passphrase(&mut self, new: &Secret, kdf: KdfParams) -> Result<KeyId> {
        if !matches!(new, Secret::Passphrase(_)) {
            return Err(Error::Usage(
                "a passphrase change needs a new passphrase".into(),
            ));
        }
        let old = self.key_id;
        let bytes = self.backend.get(FileKind::Key, &old.to_hex())?;
        let slot = KeySlot::decode(&bytes)
            .map_err(|e| Error::corrupt(FileKind::Key.path(&old.to_hex()), e.0))?;
        if slot.kind != SlotKind::Passphrase {
            return Err(Error::Usage(format!(
                "key {} is a key file, not a passphrase: use `coffer key add` and `coffer key remove`",
                old.short()
            )));
        }
        let new_id = self.add_key(new, kdf)?;
        self.key_id = new_id;
        self.backend.delete(FileKind::Key, &old.to_hex())?;
        Ok(new_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::memory::MemoryBackend;
    use crate::crypto::key_file::KeyFileSecret;
    use crate::repository::InitSecret;
    use crate::repository::config::Config;
    use std::sync::Arc;
    use zeroize::Zeroizing;

    fn weak() -> KdfParams {
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            lanes: 1,
        }
    }

    fn pw(s: &str) -> Secret {
        Secret::Passphrase(Zeroizing::new(s.as_bytes().to_vec()))
    }

    fn new_repo() -> (Arc<MemoryBackend>, Repository) {
        let b = Arc::new(MemoryBackend::new());
        let r = Repository::init(
            b.clone(),
            InitSecret::Passphrase(Zeroizing::new(b"one".to_vec())),
            Config::default(),
            weak(),
        )
        .unwrap();
        (b, r)
    }

    fn slots(b: &MemoryBackend) -> usize {
        b.list(FileKind::Key).unwrap().len()
    }

    #[test]
    fn add_remove_and_refusals() {
        let (b, repo) = new_repo();
        let first = *repo.key_id();
        // The only key, and the key in use, cannot be removed.
        assert!(repo.remove_key(&first).is_err());
        let second = repo.add_key(&pw("two"), weak()).unwrap();
        assert_eq!(slots(&b), 2);
        assert!(repo.remove_key(&first).is_err(), "key in use removed");
        // The new passphrase opens the repository on its own.
        let other = Repository::open(b.clone(), &pw("two")).unwrap();
        assert_eq!(*other.key_id(), second);
        // From the second session the first key can go, but not the second.
        other.remove_key(&first).unwrap();
        assert!(other.remove_key(&second).is_err());
        assert!(Repository::open(b.clone(), &pw("one")).is_err());
        assert_eq!(slots(&b), 1);
        let prefix = &second.to_hex()[..8];
        assert_eq!(other.resolve_key(prefix).unwrap(), second);
        assert!(other.resolve_key("zz").is_err());
        assert!(other.remove_key(&KeyId([0; 32])).is_err());
    }

    #[test]
    fn key_file_slots_belong_to_one_repository() {
        let (b, repo) = new_repo();
        let kf = KeyFileSecret::generate(*repo.id());
        let text = kf.to_text();
        let id = repo.add_key(&Secret::KeyFile(kf), weak()).unwrap();
        let back = KeyFileSecret::parse(&text).unwrap();
        let r = Repository::open(b.clone(), &Secret::KeyFile(back)).unwrap();
        assert_eq!(*r.key_id(), id);
        // Another secret for the same repository does not verify against it.
        let wrong = KeyFileSecret::generate(*repo.id());
        assert!(repo.verify_key(&id, &Secret::KeyFile(wrong)).is_err());
        // A key file of another repository is refused and leaves no slot.
        let foreign = KeyFileSecret::generate(crate::repository::new_repo_id());
        assert!(repo.add_key(&Secret::KeyFile(foreign), weak()).is_err());
        assert_eq!(slots(&b), 2);
    }

    #[test]
    fn change_passphrase_replaces_the_slot_in_use() {
        let (b, mut repo) = new_repo();
        let old = *repo.key_id();
        let new = repo.change_passphrase(&pw("new"), weak()).unwrap();
        assert_ne!(old, new);
        assert_eq!(*repo.key_id(), new);
        assert_eq!(slots(&b), 1);
        assert!(Repository::open(b.clone(), &pw("one")).is_err());
        let r = Repository::open(b.clone(), &pw("new")).unwrap();
        assert_eq!(r.id(), repo.id());
        // Out-of-bounds parameters: nothing is written, the old key stays.
        let bad = KdfParams {
            memory_kib: 64,
            iterations: 0,
            lanes: 1,
        };
        assert!(repo.change_passphrase(&pw("x"), bad).is_err());
        assert_eq!(slots(&b), 1);
        assert!(Repository::open(b.clone(), &pw("new")).is_ok());
    }
}
