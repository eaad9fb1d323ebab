//! Index segments (repo-format/README.md, "Index segments"): plaintext
//! decoder. A segment that decodes re-encodes to the same bytes, and every
//! pack's entries tile inside the pack's declared size.
#![no_main]
use coffer::index::segment::Segment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(seg) = Segment::decode(data) {
        assert_eq!(seg.encode(), data, "decode/encode is not the identity");
        for p in &seg.packs {
            let end = p
                .entries
                .last()
                .map(|e| e.offset as u64 + e.length as u64)
                .unwrap_or(0);
            assert!(end + 4 <= p.size, "entries past the pack's size");
        }
    }
});
