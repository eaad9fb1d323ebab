//! The AEAD envelope (repo-format/README.md, "Envelope"): arbitrary bytes
//! (shorter than the overhead, wrong tags), and a seal of fuzzer plaintext
//! that opens to itself and, damaged, never opens.
#![no_main]
use coffer::crypto::envelope::{open, seal};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const KEY: [u8; 32] = [4; 32];

fuzz_target!(|data: &[u8]| {
    let _ = open(&KEY, b"aad", data);
    let (how, plain) = data.split_at(data.len().min(3));
    let mut sealed = seal(&KEY, b"aad", plain);
    assert_eq!(open(&KEY, b"aad", &sealed).expect("opens"), plain);
    assert!(open(&KEY, b"other aad", &sealed).is_err());
    if common::damage(&mut sealed, how) {
        assert!(open(&KEY, b"aad", &sealed).is_err());
    }
});
