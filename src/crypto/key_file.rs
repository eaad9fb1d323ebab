//! Key slots and key files (repo-format/README.md, "Key slots").
//!
//! A key slot is the object `keys/<key id>`:
//!
//! ```text
//! magic "cofferK1"[8]
//! kind u8                       1 = passphrase, 2 = key file
//! argon2_memory_kib u32         passphrase slots; all three are 0 for key files
//! argon2_iterations u32
//! argon2_lanes u32
//! salt[16]
//! wrapped_len u32 || wrapped    envelope(master key[32]) under the KEK,
//!                               aad = repo || KeyWrap || key id
//! meta_len u32 || meta          envelope(slot metadata) under the master
//!                               metadata key, aad = repo || KeyMeta || key id
//! ```
//!
//! KEK: Argon2id(passphrase, salt, params) for passphrase slots;
//! keyed-BLAKE3(key = secret, salt) for key-file slots (the secret is
//! already 256 random bits, so no stretching is needed).
//! KDF parameters are bounded before the KDF runs (doc/reliability.md H-2).

use super::envelope::{self, OpenError};
use super::{AadKind, KeySet, MasterKey, aad};
use crate::codec::{DecodeError, Reader, Writer};
use crate::id::{KeyId, RepoId};
use zeroize::{Zeroize, Zeroizing};

pub(crate) const SLOT_MAGIC: &[u8; 8] = b"cofferK1";
pub(crate) const SALT_LEN: usize = 16;

/// Upper bounds on KDF parameters read from a slot (inclusive): a hostile
/// slot asking for terabytes of memory or millions of passes would make
/// every open a denial of service (doc/reliability.md H-2).
pub(crate) const MAX_MEMORY_KIB: u32 = 2 * 1024 * 1024;
pub(crate) const MAX_ITERATIONS: u32 = 64;
pub(crate) const MAX_LANES: u32 = 16;

/// Argon2id parameters recorded in a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 4 lanes: RFC 9106's second recommended setting.
    /// An attacker pays the same memory and work per guess as with one
    /// lane, but we compute the lanes on all cores: about 0.1 s instead of
    /// 0.2 s on this project's 2-core reference machine, paid by every
    /// command that opens the repository (repo-format/SECURITY.md).
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            lanes: 4,
        }
    }
}

impl KdfParams {
    pub fn check(&self) -> Result<(), String> {
        // Lanes first: `8 * lanes` overflowed a u32 for a hostile slot with
        // lanes >= 2^29 (found by the key_slot_decode fuzz target).
        if self.lanes == 0
            || self.lanes > MAX_LANES
            || self.memory_kib < self.lanes.saturating_mul(8)
            || self.memory_kib > MAX_MEMORY_KIB
            || self.iterations == 0
            || self.iterations > MAX_ITERATIONS
        {
            return Err(format!(
                "Argon2id parameters out of bounds (memory {} KiB, {} passes, {} lanes)",
                self.memory_kib, self.iterations, self.lanes
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotKind {
    Passphrase = 1,
    KeyFile = 2,
}

/// Descriptive metadata of a slot, readable by anyone holding the master key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotMeta {
    pub created_unix_ns: i64,
    pub hostname: String,
    pub username: String,
}

/// A decoded (still locked) key slot.
#[derive(Clone, Debug)]
pub struct KeySlot {
    pub kind: SlotKind,
    pub kdf: KdfParams,
    pub salt: [u8; SALT_LEN],
    pub wrapped: Vec<u8>,
    pub meta_sealed: Vec<u8>,
}

/// A secret that unlocks a slot.
pub enum Unlock<'a> {
    Passphrase(&'a [u8]),
    KeyFile(&'a [u8; 32]),
}

fn kek(
    slot_kind: SlotKind,
    kdf: &KdfParams,
    salt: &[u8; SALT_LEN],
    secret: &Unlock,
) -> Option<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    match (slot_kind, secret) {
        (SlotKind::Passphrase, Unlock::Passphrase(p)) => {
            let params =
                argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.lanes, Some(32)).ok()?;
            let a =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            match super::kdf_memory::KdfMemory::new(a.params().block_count()) {
                Some(mut mem) => {
                    let r = a.hash_password_into_with_memory(p, salt, &mut out[..], mem.blocks());
                    mem.release();
                    r
                }
                None => a.hash_password_into(p, salt, &mut out[..]),
            }
            .ok()?;
        }
        (SlotKind::KeyFile, Unlock::KeyFile(s)) => {
            out.copy_from_slice(blake3::keyed_hash(s, salt).as_bytes());
        }
        _ => return None,
    }
    Some(out)
}

impl KeySlot {
    /// Create a slot wrapping `master` for `secret`.
    pub fn create(
        repo: &RepoId,
        id: &KeyId,
        master: &MasterKey,
        keys: &KeySet,
        secret: &Unlock,
        kdf: KdfParams,
        meta: &SlotMeta,
    ) -> Result<KeySlot, String> {
        let kind = match secret {
            Unlock::Passphrase(_) => SlotKind::Passphrase,
            Unlock::KeyFile(_) => SlotKind::KeyFile,
        };
        let kdf = if kind == SlotKind::KeyFile {
            KdfParams {
                memory_kib: 0,
                iterations: 0,
                lanes: 0,
            }
        } else {
            // A slot its own reader would refuse must never be written.
            kdf.check()?;
            kdf
        };
        let mut salt = [0u8; SALT_LEN];
        envelope::random_bytes(&mut salt);
        let kek = kek(kind, &kdf, &salt, secret).ok_or("Argon2id refused the parameters")?;
        let wrapped = envelope::seal(&kek, &aad(repo, AadKind::KeyWrap, &id.0), &master.0);
        let mut w = Writer::new();
        w.i64(meta.created_unix_ns);
        w.str(&meta.hostname);
        w.str(&meta.username);
        let meta_sealed =
            envelope::seal(&keys.meta, &aad(repo, AadKind::KeyMeta, &id.0), &w.finish());
        Ok(KeySlot {
            kind,
            kdf,
            salt,
            wrapped,
            meta_sealed,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(SLOT_MAGIC);
        w.u8(self.kind as u8);
        w.u32(self.kdf.memory_kib);
        w.u32(self.kdf.iterations);
        w.u32(self.kdf.lanes);
        w.raw(&self.salt);
        w.bytes(&self.wrapped);
        w.bytes(&self.meta_sealed);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<KeySlot, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.take(8)? != SLOT_MAGIC {
            return Err(DecodeError("not a coffer key slot (bad magic)".into()));
        }
        let kind = match r.u8()? {
            1 => SlotKind::Passphrase,
            2 => SlotKind::KeyFile,
            k => return Err(DecodeError(format!("unknown key slot kind {k}"))),
        };
        let kdf = KdfParams {
            memory_kib: r.u32()?,
            iterations: r.u32()?,
            lanes: r.u32()?,
        };
        if kind == SlotKind::Passphrase {
            kdf.check().map_err(DecodeError)?;
        }
        let salt = r.array::<SALT_LEN>()?;
        let wrapped = r.bytes(32 + envelope::OVERHEAD, "wrapped key")?.to_vec();
        if wrapped.len() != 32 + envelope::OVERHEAD {
            return Err(DecodeError("wrapped key has the wrong length".into()));
        }
        let meta_sealed = r.bytes(64 * 1024, "slot metadata")?.to_vec();
        r.finish()?;
        Ok(KeySlot {
            kind,
            kdf,
            salt,
            wrapped,
            meta_sealed,
        })
    }

    /// Try to unwrap the master key. `None`: this secret does not open this slot.
    pub fn unlock(&self, repo: &RepoId, id: &KeyId, secret: &Unlock) -> Option<MasterKey> {
        self.unlock_any(std::slice::from_ref(repo), id, secret)
            .map(|(m, _)| m)
    }

    /// Try to unwrap the master key as a slot of any of `repos`; returns
    /// the key and the repository id it opened under. When `config` and
    /// its copy disagree about the id (one was damaged), the id the slot
    /// was written for is the one that opens it. The KEK, an Argon2id run
    /// for a passphrase, is derived once for all of them.
    pub(crate) fn unlock_any(
        &self,
        repos: &[RepoId],
        id: &KeyId,
        secret: &Unlock,
    ) -> Option<(MasterKey, RepoId)> {
        let kek = kek(self.kind, &self.kdf, &self.salt, secret)?;
        repos
            .iter()
            .find_map(|r| open_wrapped(&kek, r, id, &self.wrapped).map(|m| (m, *r)))
    }

    /// Read the slot's metadata with the repository's keys.
    pub fn meta(&self, repo: &RepoId, id: &KeyId, keys: &KeySet) -> Result<SlotMeta, String> {
        let plain = envelope::open(
            &keys.meta,
            &aad(repo, AadKind::KeyMeta, &id.0),
            &self.meta_sealed,
        )
        .map_err(|e: OpenError| e.to_string())?;
        let mut r = Reader::new(&plain);
        let m = (|| -> Result<SlotMeta, DecodeError> {
            let created_unix_ns = r.i64()?;
            let hostname = r.string(1024, "hostname")?;
            let username = r.string(1024, "username")?;
            Ok(SlotMeta {
                created_unix_ns,
                hostname,
                username,
            })
        })()
        .map_err(|e| e.0)?;
        r.finish().map_err(|e| e.0)?;
        Ok(m)
    }
}

/// Open a slot's `wrapped` envelope with `kek` as a slot of `repo`.
fn open_wrapped(kek: &[u8; 32], repo: &RepoId, id: &KeyId, wrapped: &[u8]) -> Option<MasterKey> {
    let mut plain = envelope::open(kek, &aad(repo, AadKind::KeyWrap, &id.0), wrapped).ok()?;
    let mut k = [0u8; 32];
    if plain.len() != 32 {
        plain.zeroize();
        return None;
    }
    k.copy_from_slice(&plain);
    plain.zeroize();
    Some(MasterKey(k))
}

/// The text of a key file a user keeps:
///
/// ```text
/// coffer key file v1
/// repository <repo id hex>
/// secret <64 hex digits>
/// ```
pub struct KeyFileSecret {
    pub repo: RepoId,
    pub secret: Zeroizing<[u8; 32]>,
}

impl KeyFileSecret {
    pub fn generate(repo: RepoId) -> Self {
        let mut s = Zeroizing::new([0u8; 32]);
        envelope::random_bytes(&mut s[..]);
        KeyFileSecret { repo, secret: s }
    }

    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "coffer key file v1\nrepository {}\nsecret {}\n",
            self.repo.to_hex(),
            hex::encode(&self.secret[..])
        ))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some("coffer key file v1") {
            return Err("not a coffer key file (first line must be `coffer key file v1`)".into());
        }
        let mut repo = None;
        let mut secret = None;
        for l in lines {
            match l.split_once(' ') {
                Some(("repository", v)) => repo = RepoId::from_hex(v.trim()),
                Some(("secret", v)) => {
                    let mut s = Zeroizing::new([0u8; 32]);
                    if hex::decode_to_slice(v.trim(), &mut s[..]).is_ok() {
                        secret = Some(s);
                    }
                }
                _ => return Err("unexpected line in key file".into()),
            }
        }
        match (repo, secret) {
            (Some(repo), Some(secret)) => Ok(KeyFileSecret { repo, secret }),
            _ => Err("key file lacks a valid `repository` or `secret` line".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weak() -> KdfParams {
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            lanes: 1,
        }
    }

    fn meta() -> SlotMeta {
        SlotMeta {
            created_unix_ns: 5,
            hostname: "h".into(),
            username: "u".into(),
        }
    }

    #[test]
    fn passphrase_slot_round_trip() {
        let repo = RepoId([1; 32]);
        let id = KeyId([2; 32]);
        let master = MasterKey([9; 32]);
        let keys = KeySet::derive(&master);
        let slot = KeySlot::create(
            &repo,
            &id,
            &master,
            &keys,
            &Unlock::Passphrase(b"pw"),
            weak(),
            &meta(),
        )
        .unwrap();
        let back = KeySlot::decode(&slot.encode()).unwrap();
        assert_eq!(
            back.unlock(&repo, &id, &Unlock::Passphrase(b"pw"))
                .unwrap()
                .0,
            master.0
        );
        assert!(
            back.unlock(&repo, &id, &Unlock::Passphrase(b"wrong"))
                .is_none()
        );
        assert!(
            back.unlock(&repo, &KeyId([3; 32]), &Unlock::Passphrase(b"pw"))
                .is_none()
        );
        assert_eq!(back.meta(&repo, &id, &keys).unwrap(), meta());
    }

    #[test]
    fn key_file_slot_and_text() {
        let repo = RepoId([1; 32]);
        let id = KeyId([2; 32]);
        let master = MasterKey([9; 32]);
        let keys = KeySet::derive(&master);
        let kf = KeyFileSecret::generate(repo);
        let slot = KeySlot::create(
            &repo,
            &id,
            &master,
            &keys,
            &Unlock::KeyFile(&kf.secret),
            weak(),
            &meta(),
        )
        .unwrap();
        let parsed = KeyFileSecret::parse(&kf.to_text()).unwrap();
        assert_eq!(parsed.repo, repo);
        let got = slot
            .unlock(&repo, &id, &Unlock::KeyFile(&parsed.secret))
            .unwrap();
        assert_eq!(got.0, master.0);
        assert!(slot.unlock(&repo, &id, &Unlock::Passphrase(b"x")).is_none());
        assert!(KeyFileSecret::parse("hello").is_err());
    }

    #[test]
    fn out_of_bounds_params_are_never_written() {
        let master = MasterKey([9; 32]);
        let keys = KeySet::derive(&master);
        let bad = KdfParams {
            memory_kib: 64,
            iterations: 1,
            lanes: 0,
        };
        let r = KeySlot::create(
            &RepoId([1; 32]),
            &KeyId([2; 32]),
            &master,
            &keys,
            &Unlock::Passphrase(b"p"),
            bad,
            &meta(),
        );
        assert!(r.is_err());
    }

    #[test]
    fn hostile_kdf_params_rejected_before_kdf() {
        let repo = RepoId([1; 32]);
        let id = KeyId([2; 32]);
        let master = MasterKey([9; 32]);
        let keys = KeySet::derive(&master);
        let slot = KeySlot::create(
            &repo,
            &id,
            &master,
            &keys,
            &Unlock::Passphrase(b"pw"),
            weak(),
            &meta(),
        )
        .unwrap();
        let mut bytes = slot.encode();
        bytes[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(KeySlot::decode(&bytes).is_err());
        let mut bytes = slot.encode();
        bytes[13..17].copy_from_slice(&0u32.to_le_bytes());
        assert!(KeySlot::decode(&bytes).is_err());
        let good = slot.encode();
        for n in 0..good.len() {
            assert!(KeySlot::decode(&good[..n]).is_err());
        }
    }

    /// Fuzz regression (tools/fuzz key_slot_decode): a passphrase slot
    /// declaring 2^30 Argon2 lanes made the bounds check itself overflow
    /// (`8 * lanes`), a panic in debug builds, before the lane bound was
    /// looked at. It must be refused as malformed.
    #[test]
    fn fuzz_regression_lanes_overflow_in_kdf_bounds() {
        let crash = hex::decode(
            "636f666665724b3101000001000300000000000040000000000000000001000000000102030405060708090a0b0c0d0e0f48000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000400000000000000000000000000000000000000000000000000000010000000000000000000000010000000000000000000000320000000000000000000000000000000000000000000000",
        )
        .unwrap();
        assert!(KeySlot::decode(&crash).is_err());
        for lanes in [1 << 29, 1 << 30, u32::MAX] {
            let p = KdfParams {
                memory_kib: 65536,
                iterations: 3,
                lanes,
            };
            assert!(p.check().is_err(), "lanes {lanes}");
        }
    }

    /// Slots as a writer could make them: passphrase slots with in-bound
    /// KDF parameters, key-file slots with zeros; any salt and bytes.
    fn slot() -> impl proptest::strategy::Strategy<Value = KeySlot> {
        use proptest::prelude::*;
        let kdf = (1u32..=MAX_LANES, 1u32..=MAX_ITERATIONS).prop_flat_map(|(lanes, iterations)| {
            (8 * lanes..=MAX_MEMORY_KIB).prop_map(move |memory_kib| KdfParams {
                memory_kib,
                iterations,
                lanes,
            })
        });
        (
            proptest::option::of(kdf),
            any::<[u8; SALT_LEN]>(),
            proptest::collection::vec(any::<u8>(), 72),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(kdf, salt, wrapped, meta_sealed)| KeySlot {
                kind: if kdf.is_some() {
                    SlotKind::Passphrase
                } else {
                    SlotKind::KeyFile
                },
                kdf: kdf.unwrap_or(KdfParams {
                    memory_kib: 0,
                    iterations: 0,
                    lanes: 0,
                }),
                salt,
                wrapped,
                meta_sealed,
            })
    }

    proptest::proptest! {
        #[test]
        fn slot_encode_decode_round_trip(s in slot()) {
            let b = s.encode();
            let back = KeySlot::decode(&b).unwrap();
            proptest::prop_assert_eq!(back.kind, s.kind);
            proptest::prop_assert_eq!(back.kdf, s.kdf);
            proptest::prop_assert_eq!(back.salt, s.salt);
            proptest::prop_assert_eq!(&back.wrapped, &s.wrapped);
            proptest::prop_assert_eq!(&back.meta_sealed, &s.meta_sealed);
            proptest::prop_assert_eq!(back.encode(), b);
        }

        #[test]
        fn key_file_slot_and_metadata_round_trip(
            master in proptest::prelude::any::<[u8; 32]>(),
            created_unix_ns in proptest::prelude::any::<i64>(),
            hostname in "\\PC{0,64}",
            username in "\\PC{0,32}",
        ) {
            let repo = RepoId([1; 32]);
            let id = KeyId([2; 32]);
            let master = MasterKey(master);
            let keys = KeySet::derive(&master);
            let kf = KeyFileSecret::generate(repo);
            let meta = SlotMeta { created_unix_ns, hostname, username };
            let slot = KeySlot::create(&repo, &id, &master, &keys, &Unlock::KeyFile(&kf.secret), weak(), &meta).unwrap();
            let back = KeySlot::decode(&slot.encode()).unwrap();
            proptest::prop_assert_eq!(back.meta(&repo, &id, &keys).unwrap(), meta);
            let got = back.unlock(&repo, &id, &Unlock::KeyFile(&kf.secret)).unwrap();
            proptest::prop_assert_eq!(got.0, master.0);
            let text = KeyFileSecret::parse(&kf.to_text()).unwrap();
            proptest::prop_assert_eq!(text.repo, repo);
            proptest::prop_assert_eq!(&text.secret[..], &kf.secret[..]);
        }
    }
}
