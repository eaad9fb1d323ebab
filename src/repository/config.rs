//! The `config` object (repo-format/README.md, "Config"): the only object
//! with plaintext fields, and those are only what a reader needs before it
//! has a key: the format version and the repository id. `init` writes the
//! same bytes again as `config.copy` ([`CONFIG_COPY`]).
//!
//! ```text
//! config := "cofferC1"[8] || format_version u32 || repo_id[32] || envelope(body)
//! body   := chunk_min u32 || chunk_avg u32 || chunk_max u32 || zstd_level i32
//!           || pack_size u32 || created_ns i64
//! ```
//! The body is sealed with the metadata key, aad = repo || Config || 0^32.

use crate::chunking::ChunkerParams;
use crate::codec::{DecodeError, Reader, Writer};
use crate::crypto::{AadKind, KeySet, aad, envelope};
use crate::id::RepoId;

pub(crate) const CONFIG_MAGIC: &[u8; 8] = b"cofferC1";
/// The object name of the config.
pub const CONFIG: &str = "config";
/// The name of the config's copy: the same bytes, written by `init` right
/// after `config` (repo-format/README.md, "Config copy"). A reader falls
/// back to it when `config` is missing or damaged. Repositories made
/// before 2026-12 lack it; `repair config` adds it.
pub const CONFIG_COPY: &str = "config.copy";
/// The repository format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub chunker: ChunkerParams,
    pub zstd_level: i32,
    /// Target pack size in bytes.
    pub pack_size: u32,
    pub created_ns: i64,
}

/// The default target pack size. 8 MiB rather than restic's 16: a backup
/// holds about two packs in memory (the one filling, the one being
/// verified and written), and with the fsyncs off the upload thread twice
/// as many packs cost no time. Measured on a 1 GiB mixed corpus, 5 warm
/// pairs: peak RSS 122 -> 95 MiB, wall 0.95x; 4 MiB packs saved 14 MiB
/// more but cost 20% more system time.
pub const DEFAULT_PACK_SIZE: u32 = 8 * 1024 * 1024;

/// zstd level 1, not 3: compressing is most of a backup's CPU (57% of a
/// database dump's at level 3), and level 1 costs 45% less CPU on a
/// 440 MB `pg_dump` (and stores 11% less: its hex text suits level 1),
/// 22% less on a 1.3 GB home tree (+3% stored) and 33% less on
/// /usr/lib (+9% stored). A nightly dump competes for the same cores as
/// the database producing it. `init --compression 3` (or higher) trades
/// CPU for space; the level is the writer's choice, so a repository's
/// blobs may mix levels.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

impl Default for Config {
    fn default() -> Self {
        Config {
            chunker: ChunkerParams::default(),
            zstd_level: DEFAULT_ZSTD_LEVEL,
            pack_size: DEFAULT_PACK_SIZE,
            created_ns: 0,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        self.chunker.validate()?;
        if !(-7..=22).contains(&self.zstd_level) {
            return Err(format!("zstd level {} is outside -7..=22", self.zstd_level));
        }
        if !(1024 * 1024..=1024 * 1024 * 1024).contains(&self.pack_size) {
            return Err(format!(
                "pack size {} is outside 1 MiB..1 GiB",
                self.pack_size
            ));
        }
        Ok(())
    }

    pub fn encode(&self, repo: &RepoId, keys: &KeySet) -> Vec<u8> {
        let mut body = Writer::new();
        body.u32(self.chunker.min_size);
        body.u32(self.chunker.avg_size);
        body.u32(self.chunker.max_size);
        body.u32(self.zstd_level as u32);
        body.u32(self.pack_size);
        body.i64(self.created_ns);
        let sealed = envelope::seal(
            &keys.meta,
            &aad(repo, AadKind::Config, &[0; 32]),
            &body.finish(),
        );
        let mut w = Writer::new();
        w.raw(CONFIG_MAGIC);
        w.u32(FORMAT_VERSION);
        w.raw(repo.as_bytes());
        w.raw(&sealed);
        w.finish()
    }
}

/// The plaintext header: readable without a key.
pub struct ConfigHeader<'a> {
    pub version: u32,
    pub repo: RepoId,
    pub sealed_body: &'a [u8],
}

pub fn decode_header(bytes: &[u8]) -> Result<ConfigHeader<'_>, DecodeError> {
    let mut r = Reader::new(bytes);
    if r.take(8)? != CONFIG_MAGIC {
        return Err(DecodeError("not a coffer config (bad magic)".into()));
    }
    let version = r.u32()?;
    let repo = RepoId(r.array()?);
    let sealed_body = r.take(r.remaining())?;
    Ok(ConfigHeader {
        version,
        repo,
        sealed_body,
    })
}

pub fn decode_body(header: &ConfigHeader, keys: &KeySet) -> Result<Config, String> {
    let plain = envelope::open(
        &keys.meta,
        &aad(&header.repo, AadKind::Config, &[0; 32]),
        header.sealed_body,
    )
    .map_err(|e| e.to_string())?;
    let mut r = Reader::new(&plain);
    let c = (|| -> Result<Config, DecodeError> {
        let chunker = ChunkerParams {
            min_size: r.u32()?,
            avg_size: r.u32()?,
            max_size: r.u32()?,
        };
        let zstd_level = r.u32()? as i32;
        let pack_size = r.u32()?;
        let created_ns = r.i64()?;
        Ok(Config {
            chunker,
            zstd_level,
            pack_size,
            created_ns,
        })
    })()
    .map_err(|e| e.0)?;
    r.finish().map_err(|e| e.0)?;
    c.validate()?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use proptest::prelude::*;

    /// Valid configs: even chunk sizes within FastCDC's bounds, ordered.
    fn config() -> impl Strategy<Value = Config> {
        (32u32..=524_288)
            .prop_flat_map(|min2| {
                let min = min2 * 2;
                (Just(min), (min.max(256) / 2)..=2_097_152)
            })
            .prop_flat_map(|(min, avg2)| {
                let avg = avg2 * 2;
                (Just(min), Just(avg), (avg.max(1024) / 2)..=8_388_608)
            })
            .prop_flat_map(|(min, avg, max2)| {
                (
                    Just(ChunkerParams {
                        min_size: min,
                        avg_size: avg,
                        max_size: max2 * 2,
                    }),
                    -7i32..=22,
                    (1u32 << 20)..=(1 << 30),
                    any::<i64>(),
                )
            })
            .prop_map(|(chunker, zstd_level, pack_size, created_ns)| Config {
                chunker,
                zstd_level,
                pack_size,
                created_ns,
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(c in config(), master in any::<[u8; 32]>(), repo in any::<[u8; 32]>()) {
            prop_assert!(c.validate().is_ok());
            let keys = KeySet::derive(&MasterKey(master));
            let repo = RepoId(repo);
            let bytes = c.encode(&repo, &keys);
            prop_assert_eq!(bytes.len(), 112);
            let h = decode_header(&bytes).unwrap();
            prop_assert_eq!(h.version, FORMAT_VERSION);
            prop_assert_eq!(h.repo, repo);
            prop_assert_eq!(decode_body(&h, &keys).unwrap(), c);
            // Another repository id or key never opens it.
            let other = ConfigHeader { version: 1, repo: RepoId([!repo.0[0]; 32]), sealed_body: h.sealed_body };
            prop_assert!(decode_body(&other, &keys).is_err());
        }
    }
}
