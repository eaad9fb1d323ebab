//! Shared helpers for the end-to-end tests: an isolated environment that runs
//! the `coffer` binary, a fixture tree builder, fast pseudo-random data and
//! `compare_trees`, which checks that a restored tree matches its source.

#![allow(dead_code)]

mod compare;
mod env;
mod faultproxy;
mod repo;
mod rng;
mod s3;
mod tree;
mod util;

pub use compare::*;
pub use env::*;
pub use faultproxy::*;
pub use repo::*;
pub use rng::*;
pub use s3::*;
pub use tree::*;
pub use util::*;
