//! coffer: a content-addressed, deduplicating, encrypted backup engine.
//!
//! Layers, lowest first; a module imports only from layers below it
//! (`../shared/DESIGN.md`, `repo-format/README.md` for the bytes):
//!
//! ```text
//! L6  cli (binary only)
//! L5  archiver  restorer                         user files in and out
//!     retention  check  repair  drill            forget/prune, verification
//!     diff  find  stats                          reading snapshots
//!     replicate                                  copy to another repository
//! L4  repository                                 config, keys, blob store, snapshots, cache audit
//! L3  backend  index                             object store; SQLite index cache
//! L2  pack  snapshot                             byte encodings of stored records
//! L1  chunking  crypto  compression  pattern     pure primitives
//! L0  id  error  codec  blob                     shared vocabulary
//! ```

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
