//! Shared helpers for the end-to-end tests: an isolated environment that runs
//! the `coffer` binary, a fixture tree builder, fast pseudo-random data and
//! `compare_trees`, which checks that a restored tree matches its source.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod compare;
mod env;
mod repo;
mod rng;
mod tree;
mod util;

pub use compare::*;
pub use env::*;
pub use repo::*;
pub use rng::*;
pub use tree::*;
pub use util::*;
