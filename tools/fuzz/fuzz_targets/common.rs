//! Shared by the fuzz targets: a fixed test key and repository id, and the
//! "seal what the fuzzer gave, then damage it" step (doc/reliability.md 5:
//! byte-level fuzzing of stored objects stops at the AEAD, so each target
//! fuzzes the plaintext decoder directly and, separately, the envelope).
#![allow(dead_code)]

use coffer::crypto::{KeySet, MasterKey};
use coffer::id::RepoId;

pub fn keys() -> KeySet {
    KeySet::derive(&MasterKey([7; 32]))
}

pub const REPO: RepoId = RepoId([9; 32]);

/// Damage `sealed` as `how` says: flip a byte, truncate, extend, or leave
/// it alone. Returns whether the bytes changed.
pub fn damage(sealed: &mut Vec<u8>, how: &[u8]) -> bool {
    let (op, arg) = match how {
        [op, a, b, ..] => (*op, u16::from_le_bytes([*a, *b]) as usize),
        _ => return false,
    };
    match op % 4 {
        0 if !sealed.is_empty() => {
            let i = arg % sealed.len();
            sealed[i] ^= 1 | (op >> 2);
            true
        }
        1 if !sealed.is_empty() => {
            let n = arg % sealed.len();
            sealed.truncate(n);
            true
        }
        2 => {
            sealed.extend(std::iter::repeat_n(op, 1 + arg % 64));
            true
        }
        _ => false,
    }
}
