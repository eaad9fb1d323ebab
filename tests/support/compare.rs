//! Tree comparison: does a restored tree match its source.

use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Other,
}

struct Entry {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    ino: (u64, u64),
    link: Option<PathBuf>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn scan(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut rels = vec![PathBuf::new()];
    walk_rel(root, Path::new(""), &mut rels);
    let mut out = BTreeMap::new();
    for rel in rels {
        let p = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Other
        };
        out.insert(
            rel,
            Entry {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                size: md.size(),
                ino: (md.dev(), md.ino()),
                link: (kind == Kind::Symlink).then(|| fs::read_link(&p).expect("readlink")),
                xattrs: user_xattrs(&p),
            },
        );
    }
    out
}

fn same_bytes(a: &Path, b: &Path) -> Result<(), String> {
    let mut fa = File::open(a).map_err(|e| format!("open {}: {e}", a.display()))?;
    let mut fb = File::open(b).map_err(|e| format!("open {}: {e}", b.display()))?;
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| format!("read {}: {e}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| format!("read {}: {e}", b.display()))?;
        if na != nb || ba[..na] != bb[..nb] {
            let first = ba[..na]
                .iter()
                .zip(&bb[..nb])
                .position(|(x, y)| x != y)
                .unwrap_or(na.min(nb));
            return Err(format!("content differs at byte {}", off + first as u64));
        }
        if na == 0 {
            return Ok(());
        }
        off += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Groups of paths sharing an inode (hardlinks), as sorted path lists.
fn link_groups(entries: &BTreeMap<PathBuf, Entry>) -> BTreeSet<Vec<PathBuf>> {
    let mut by_inode: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    for (rel, e) in entries {
        if e.kind != Kind::Dir {
            by_inode.entry(e.ino).or_default().push(rel.clone());
        }
    }
    by_inode.into_values().filter(|g| g.len() > 1).collect()
}

/// Assert that the trees at `a` and `b` are equal: the same entries, kinds,
/// file bytes, permission bits, mtimes (ns), symlink targets, `user.*`
/// xattrs, owners and hardlink groups. Nothing is followed through symlinks.
pub fn compare_trees(a: &Path, b: &Path) {
    let ea = scan(a);
    let eb = scan(b);
    let mut diffs: Vec<String> = Vec::new();
    let ka: BTreeSet<&PathBuf> = ea.keys().collect();
    let kb: BTreeSet<&PathBuf> = eb.keys().collect();
    for only in ka.difference(&kb) {
        diffs.push(format!("{}: only in {}", only.display(), a.display()));
    }
    for only in kb.difference(&ka) {
        diffs.push(format!("{}: only in {}", only.display(), b.display()));
    }
    for (rel, x) in &ea {
        let Some(y) = eb.get(rel) else { continue };
        let name = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel.as_path()
        };
        let mut d = |what: String| diffs.push(format!("{}: {what}", name.display()));
        if x.kind != y.kind {
            d(format!("kind {:?} vs {:?}", x.kind, y.kind));
            continue;
        }
        if x.kind != Kind::Symlink && x.mode != y.mode {
            d(format!("mode {:o} vs {:o}", x.mode, y.mode));
        }
        if x.mtime != y.mtime {
            d(format!(
                "mtime {}.{:09} vs {}.{:09}",
                x.mtime.0, x.mtime.1, y.mtime.0, y.mtime.1
            ));
        }
        if (x.uid, x.gid) != (y.uid, y.gid) {
            d(format!("owner {}:{} vs {}:{}", x.uid, x.gid, y.uid, y.gid));
        }
        if x.xattrs != y.xattrs {
            d(format!("user xattrs {:?} vs {:?}", x.xattrs, y.xattrs));
        }
        match x.kind {
            Kind::File => {
                if x.size != y.size {
                    d(format!("size {} vs {}", x.size, y.size));
                } else if let Err(e) = same_bytes(&a.join(rel), &b.join(rel)) {
                    d(e);
                }
            }
            Kind::Symlink if x.link != y.link => {
                d(format!("symlink target {:?} vs {:?}", x.link, y.link));
            }
            _ => {}
        }
    }
    let ga = link_groups(&ea);
    let gb = link_groups(&eb);
    if ga != gb {
        diffs.push(format!("hardlink groups differ:\n  {ga:?}\n  {gb:?}"));
    }
    if !diffs.is_empty() {
        let n = diffs.len();
        diffs.truncate(60);
        panic!(
            "trees differ ({n} differences)\n  a: {}\n  b: {}\n{}",
            a.display(),
            b.display(),
            diffs.join("\n")
        );
    }
}

/// Assert no restore temporary file (`.coffer-tmp-*`) is left under `dir`.
pub fn assert_no_temp_files(dir: &Path) {
    let mut rels = Vec::new();
    if dir.exists() {
        walk_rel(dir, Path::new(""), &mut rels);
    }
    let left: Vec<_> = rels
        .iter()
        .filter(|r| {
            r.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b".coffer-tmp-"))
        })
        .collect();
    assert!(
        left.is_empty(),
        "restore left temporary files behind: {left:?}"
    );
}
