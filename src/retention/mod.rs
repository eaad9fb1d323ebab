//! Retention: which snapshots to keep ([`policy`]) and giving the space of
//! the others back ([`prune`]).
//!
//! `forget` never deletes data: it only removes snapshot objects. `prune`
//! deletes data, and only data no remaining snapshot references, in the
//! order that keeps every crash safe: new packs, then the new index, then
//! the old index segments, then the old packs.

pub mod policy;
pub mod prune;
