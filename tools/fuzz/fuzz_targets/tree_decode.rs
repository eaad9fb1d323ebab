//! Trees (repo-format/README.md, "Trees"): plaintext decoder. A tree that
//! decodes holds only valid, strictly sorted names and re-encodes to the
//! same bytes (the encoding is canonical: tree ids must be stable).
#![no_main]
use coffer::snapshot::tree::{Tree, valid_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Tree::decode(data) {
        assert!(
            t.nodes.iter().all(|n| valid_name(&n.name)),
            "invalid name decoded"
        );
        assert!(
            t.nodes.windows(2).all(|w| w[0].name < w[1].name),
            "unsorted tree decoded"
        );
        assert_eq!(t.encode(), data, "decode/encode is not the identity");
    }
});
