//! 32-byte identifiers, one newtype per kind of thing they name, so a pack id
//! can never be passed where a blob id is expected.
//!
//! Printed as 64 lowercase hex digits (parsing also accepts uppercase) (repo-format/README.md, "Object naming").

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id as raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lowercase hex, 64 digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 8 hex digits, for display.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
            /// Parse 64 hex digits.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Self(out))
            }
            /// From a byte slice of exactly 32 bytes.
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                Some(Self(b.try_into().ok()?))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
    };
}

id_type!(
    /// A blob (file chunk or tree): keyed BLAKE3 of its plaintext.
    BlobId
);
id_type!(
    /// A pack object: BLAKE3 of its stored bytes.
    PackId
);
id_type!(
    /// An index segment object: BLAKE3 of its stored bytes.
    SegmentId
);
id_type!(
    /// A snapshot object: BLAKE3 of its stored bytes.
    SnapshotId
);
id_type!(
    /// A key slot object: random.
    KeyId
);
id_type!(
    /// A repository: random, chosen at init, stored in plaintext in the config.
    RepoId
);
id_type!(
    /// A lock object: random.
    LockId
);

/// Hash of stored bytes, the name of every content-named object.
pub fn content_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects() {
        let id = BlobId([0xab; 32]);
        assert_eq!(BlobId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(id.short(), "abababab");
        assert_eq!(BlobId::from_hex("abc"), None);
        assert_eq!(BlobId::from_hex(&"zz".repeat(32)), None);
    }
}
