//! Pack trailers (repo-format/README.md, "Packs"): the trailer plaintext
//! decoder, whole packs as stored (arbitrary bytes), and fuzzer trailers
//! sealed into a pack whose blob region has a fuzzer-chosen length, so the
//! tiling check sees every shape of entry list.
#![no_main]
use coffer::crypto::{AadKind, aad, envelope};
use coffer::pack::reader::{check_tiling, decode_trailer, parse_pack};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let keys = common::keys();
    if let Ok(entries) = decode_trailer(data) {
        let end = entries
            .iter()
            .map(|e| e.offset as u64 + e.length as u64)
            .max()
            .unwrap_or(0);
        let _ = check_tiling(&entries, end);
    }
    let _ = parse_pack(&keys, &common::REPO, data);

    if data.len() < 2 {
        return;
    }
    let blob_len = u16::from_le_bytes([data[0], data[1]]) as usize;
    let sealed = envelope::seal(
        &keys.data,
        &aad(&common::REPO, AadKind::PackTrailer, &[0; 32]),
        &data[2..],
    );
    let mut pack = vec![0u8; blob_len];
    pack.extend_from_slice(&sealed);
    pack.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    if let Ok(entries) = parse_pack(&keys, &common::REPO, &pack) {
        let mut pos = 0u64;
        for e in &entries {
            assert_eq!(e.offset as u64, pos, "entries do not tile");
            pos += e.length as u64;
        }
        assert_eq!(pos, blob_len as u64, "entries do not end at the trailer");
    }
});
