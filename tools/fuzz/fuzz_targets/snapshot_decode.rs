//! Snapshots (repo-format/README.md, "Snapshots"): plaintext decoder. A
//! snapshot that decodes survives encode/decode unchanged (the summary may
//! be reordered or deduplicated, so bytes are not compared).
#![no_main]
use coffer::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::decode(data) {
        let again = Snapshot::decode(&s.encode()).expect("an encoded snapshot decodes");
        assert_eq!(again, s);
    }
});
