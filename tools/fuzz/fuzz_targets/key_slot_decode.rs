//! Key slots (repo-format/README.md, "Key slots"): arbitrary slot bytes,
//! and slot metadata plaintext sealed under the test key. A slot that
//! decodes re-encodes to the same bytes. Passphrase slots are not
//! unlocked: each try is an Argon2id run (its parameters are what the
//! decoder bounds, and that is fuzzed here).
#![no_main]
use coffer::crypto::key_file::{KdfParams, KeySlot, SlotKind, Unlock};
use coffer::crypto::{AadKind, aad, envelope};
use coffer::id::KeyId;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const ID: KeyId = KeyId([1; 32]);

fuzz_target!(|data: &[u8]| {
    let keys = common::keys();
    if let Ok(slot) = KeySlot::decode(data) {
        assert_eq!(slot.encode(), data, "decode/encode is not the identity");
        if slot.kind == SlotKind::Passphrase {
            slot.kdf
                .check()
                .expect("decoded KDF parameters out of bounds");
        }
        let _ = slot.meta(&common::REPO, &ID, &keys);
        if slot.kind == SlotKind::KeyFile {
            let _ = slot.unlock(&common::REPO, &ID, &Unlock::KeyFile(&[3; 32]));
        }
    }
    // The metadata decoder behind a valid envelope.
    let (how, plain) = data.split_at(data.len().min(3));
    let mut meta_sealed = envelope::seal(
        &keys.meta,
        &aad(&common::REPO, AadKind::KeyMeta, &ID.0),
        plain,
    );
    let changed = common::damage(&mut meta_sealed, how);
    let slot = KeySlot {
        kind: SlotKind::KeyFile,
        kdf: KdfParams {
            memory_kib: 0,
            iterations: 0,
            lanes: 0,
        },
        salt: [0; 16],
        wrapped: vec![0; 72],
        meta_sealed,
    };
    let r = slot.meta(&common::REPO, &ID, &keys);
    assert!(!(changed && r.is_ok()), "damaged slot metadata decoded");
    KeySlot::decode(&slot.encode()).expect("an encoded slot decodes");
});
