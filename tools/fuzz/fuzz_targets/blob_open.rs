//! Blob open (repo-format/README.md, "Blob encoding"): the flag byte,
//! zstd under a raw-length cap, the length and id checks.
//!
//! Mode 0: fuzzer plaintext sealed by the writer (compressed when it
//! shrinks) opens to itself; damaged, it never opens.
//! Mode 1: a fuzzer *body* (flag + payload, so any zstd frame, including
//! bombs) sealed under the blob AAD with a fuzzer raw length: must not
//! panic, must not return more than the raw length, and what it returns
//! hashes to the id.
//!
//! In both, the piecewise check run before upload (`verify_blob`) must
//! accept exactly what `open_blob` opens.
#![no_main]
use coffer::blob::BlobKind;
use coffer::crypto::{AadKind, aad, envelope};
use coffer::id::BlobId;
use coffer::pack::{PackEntry, open_blob, seal_blob, verify_blob};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let keys = common::keys();
    let (head, rest) = data.split_at(8);
    let how = &head[..3];
    let kind = if head[3] & 1 == 0 {
        BlobKind::Data
    } else {
        BlobKind::Tree
    };
    if head[3] & 2 == 0 {
        let id = keys.blob_id(rest);
        let blob = seal_blob(&keys, &common::REPO, kind, id, rest, 1);
        let mut sealed = blob.bytes;
        let entry = PackEntry {
            kind,
            id,
            offset: 0,
            length: sealed.len() as u32,
            raw_length: blob.raw_length,
        };
        assert_eq!(
            open_blob(&keys, &common::REPO, &entry, &sealed).expect("a sealed blob opens"),
            rest
        );
        verify_blob(&keys, &common::REPO, &entry, &sealed).expect("a sealed blob verifies");
        if common::damage(&mut sealed, how) {
            assert!(open_blob(&keys, &common::REPO, &entry, &sealed).is_err());
            assert!(verify_blob(&keys, &common::REPO, &entry, &sealed).is_err());
        }
    } else {
        // Raw lengths up to 16 MiB (the cap itself is 256 MiB; larger only
        // costs allocation time per run).
        let raw_length = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) % (16 << 20);
        let id = if rest.first() == Some(&0) {
            keys.blob_id(&rest[1..])
        } else {
            BlobId([5; 32])
        };
        let ak = if kind == BlobKind::Data {
            AadKind::DataBlob
        } else {
            AadKind::TreeBlob
        };
        let sealed = envelope::seal(&keys.data, &aad(&common::REPO, ak, &id.0), rest);
        let entry = PackEntry {
            kind,
            id,
            offset: 0,
            length: sealed.len() as u32,
            raw_length,
        };
        let opened = open_blob(&keys, &common::REPO, &entry, &sealed);
        if let Ok(p) = &opened {
            assert_eq!(p.len(), raw_length as usize);
            assert_eq!(keys.blob_id(p), id);
        }
        assert_eq!(
            verify_blob(&keys, &common::REPO, &entry, &sealed).is_ok(),
            opened.is_ok(),
            "verify and open disagree"
        );
    }
});
