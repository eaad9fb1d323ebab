//! The `config` object (repo-format/README.md, "Config"): the only object
//! with plaintext fields, and those are only what a reader needs before it
//! has a key: the format version and the repository id.
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

pub const CONFIG_MAGIC: &[u8; 8] = b"cofferC1";
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

impl Default for Config {
    fn default() -> Self {
        Config {
            chunker: ChunkerParams::default(),
            zstd_level: 3,
            pack_size: 16 * 1024 * 1024,
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
