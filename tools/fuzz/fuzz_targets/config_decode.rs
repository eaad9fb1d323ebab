//! The config object (repo-format/README.md, "Config"): the plaintext
//! header as stored, and the body plaintext sealed under the test key, then
//! damaged. A damaged envelope must never decode; a decoded body must
//! survive an encode/decode round trip.
#![no_main]
use coffer::crypto::{AadKind, aad, envelope};
use coffer::repository::config::{ConfigHeader, decode_body, decode_header};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let keys = common::keys();
    if let Ok(h) = decode_header(data) {
        let _ = decode_body(&h, &keys);
    }
    let (how, plain) = data.split_at(data.len().min(3));
    let mut sealed = envelope::seal(
        &keys.meta,
        &aad(&common::REPO, AadKind::Config, &[0; 32]),
        plain,
    );
    let changed = common::damage(&mut sealed, how);
    let header = ConfigHeader {
        version: 1,
        repo: common::REPO,
        sealed_body: &sealed,
    };
    match decode_body(&header, &keys) {
        Ok(_) if changed => panic!("a damaged config body decoded"),
        Ok(c) => {
            let bytes = c.encode(&common::REPO, &keys);
            let h = decode_header(&bytes).expect("header of an encoded config");
            assert_eq!(decode_body(&h, &keys).expect("re-decode"), c);
        }
        Err(_) => {}
    }
});
