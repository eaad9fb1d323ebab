//! coffer: a content-addressed, deduplicating, encrypted backup engine.
//!
//! Layers, lowest first; a module imports only from its own layer and the
//! layers below it (`doc/design.md`, `repo-format/README.md` for the bytes).
//! `tests/architecture` reads this map and every `crate::` path in `src/`,
//! and fails when a module reaches up, or when a module is not on the map:
//!
//! ```text
//! L6  cli                                        # the binary only: parse, print
//! L5  archiver  restorer                         # user files in and out
//!     retention  check  repair  drill            # forget/prune, verification
//!     diff  find  stats                          # reading snapshots
//!     mount                                      # snapshots as a read-only FUSE filesystem
//!     replicate                                  # copy to another repository
//! L4  repository                                 # config, keys, blob store, snapshots, cache audit
//! L3  backend  index                             # object store; SQLite index cache
//! L2  pack  snapshot                             # byte encodings of stored records
//! L1  chunking  crypto  compression  pattern     # pure primitives
//!     direct_io                                  # page-cache-bypassing file writes
//!     localtime                                  # times given and shown (local zone, RFC 3339)
//! L0  id  error  codec  blob                     # shared vocabulary
//!     progress  units                            # events reported up; parsed quantities
//! ```

// The project's own bans (clippy.toml lets tests unwrap): an unwrap or expect
// on I/O or parsing turns bad input into a panic instead of an error.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod archiver;
pub mod backend;
pub mod blob;
pub mod check;
pub mod chunking;
pub mod codec;
pub mod compression;
pub mod crypto;
pub mod diff;
pub mod direct_io;
pub mod drill;
pub mod error;
pub mod find;
pub mod id;
pub mod index;
pub mod localtime;
pub mod mount;
pub mod pack;
pub mod pattern;
pub mod progress;
pub mod repair;
pub mod replicate;
pub mod repository;
pub mod restorer;
pub mod retention;
pub mod snapshot;
pub mod stats;
pub mod units;

pub use error::{Error, Result};
