//! Fill an initialised repository with many small distinct blobs, for
//! `tools/scale-10m` (issue 6: prune and check memory at 10 million blobs).
//!
//!     COFFER_PASSWORD=… synth_repo REPO BLOBS [GROUPS] [KEEP_FROM]
//!
//! The blobs go through the real writer's pieces (seal, pack, verify
//! before upload, index segments every CHECKPOINT_BLOBS), but without a
//! chunker or a dedup lookup per blob: every blob is new by construction,
//! and reading ten million files from disk would make the run take hours.
//!
//! Blob j belongs to group j / (BLOBS / GROUPS). In each group one blob in
//! 50 is referenced by no tree (an interrupted backup's leftovers), half
//! of the rest are "scratch" and the others "main". Snapshot s
//! (0 ≤ s < GROUPS - 1) references main(s), main(s+1) and scratch(s+1), so
//! forgetting the oldest snapshots leaves whole groups unused (packs to
//! delete) and one group half used (packs to repack).

use anyhow::{Context, Result, bail};
use coffer::backend::local::LocalBackend;
use coffer::blob::BlobKind;
use coffer::id::BlobId;
use coffer::index::segment::Segment;
use coffer::pack::writer::{FinishedPack, PackWriter};
use coffer::pack::{SealedBlob, seal_blob};
use coffer::repository::blob_store::{CHECKPOINT_BLOBS, upload_pack};
use coffer::repository::{Repository, Secret};
use coffer::snapshot::Snapshot;
use coffer::snapshot::tree::{Node, NodeKind, Time, Tree};
use rayon::prelude::*;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Data blobs per file and files per directory tree.
const FILE_BLOBS: usize = 10;
const DIR_FILES: usize = 1000;
/// Blobs sealed in parallel between two appends to the pack writer.
const BATCH: usize = 1 << 14;
/// 2026-01-01, the first snapshot's day.
const DAY0_SEC: i64 = 1_767_225_600;

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Blob j's plaintext: 128..=255 incompressible bytes starting with j, so
/// every blob is distinct and zstd's probe skips it.
fn content(j: u64) -> Vec<u8> {
    let mut s = j ^ 0x5eed;
    let len = 128 + (splitmix(&mut s) % 128) as usize;
    let mut out = Vec::with_capacity(len + 8);
    out.extend_from_slice(&j.to_le_bytes());
    while out.len() < len {
        out.extend_from_slice(&splitmix(&mut s).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Orphan,
    Scratch,
    Main,
}

fn role(k: usize) -> Role {
    if k % 50 == 49 {
        Role::Orphan
    } else if k % 2 == 1 {
        Role::Scratch
    } else {
        Role::Main
    }
}

/// Hands finished packs to one upload thread, which verifies and writes
/// them and writes an index segment every CHECKPOINT_BLOBS blobs, like the
/// backup's uploader: sealing goes on while a pack is written.
struct Uploader {
    tx: Option<crossbeam_channel::Sender<FinishedPack>>,
    handle: Option<std::thread::JoinHandle<Result<(u64, u64)>>>,
}

impl Uploader {
    fn start(repo: Arc<Repository>) -> Uploader {
        let (tx, rx) = crossbeam_channel::bounded::<FinishedPack>(2);
        let handle = std::thread::spawn(move || -> Result<(u64, u64)> {
            let (mut packs, mut segments) = (0u64, 0u64);
            let mut seg = Segment::default();
            for mut p in rx.iter() {
                seg.packs.push(upload_pack(&repo, &mut p)?);
                packs += 1;
                if seg.blob_count() >= CHECKPOINT_BLOBS {
                    repo.save_segment(&std::mem::take(&mut seg))?;
                    segments += 1;
                }
            }
            if !seg.packs.is_empty() {
                repo.save_segment(&seg)?;
                segments += 1;
            }
            Ok((packs, segments))
        });
        Uploader {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    fn send(&self, p: FinishedPack) -> Result<()> {
        match &self.tx {
            Some(tx) if tx.send(p).is_ok() => Ok(()),
            _ => bail!("the upload thread stopped (see its error below)"),
        }
    }

    fn finish(mut self) -> Result<(u64, u64)> {
        drop(self.tx.take());
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            _ => bail!("the upload thread panicked"),
        }
    }
}

struct Packer<'a> {
    repo: &'a Repository,
    up: &'a Uploader,
    writer: PackWriter,
}

impl Packer<'_> {
    fn add(&mut self, b: SealedBlob) -> Result<()> {
        self.writer.add(b);
        if self.writer.len() >= self.repo.config()?.pack_size as usize {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.writer.is_empty() {
            let w = std::mem::take(&mut self.writer);
            self.up.send(w.finish(self.repo.keys(), self.repo.id()))?;
        }
        Ok(())
    }
}

fn file_node(name: String, content: &[BlobId], size: u64) -> Node {
    let mut n = Node::new(name.into_bytes(), NodeKind::File);
    n.mode = 0o644;
    n.links = 1;
    n.size = size;
    n.content = content.to_vec();
    n
}

fn dir_node(name: String, subtree: BlobId) -> Node {
    let mut n = Node::new(name.into_bytes(), NodeKind::Dir);
    n.mode = 0o755;
    n.subtree = Some(subtree);
    n
}

/// Store a tree blob; returns its id.
fn put_tree(repo: &Repository, trees: &mut Packer, mut t: Tree) -> Result<BlobId> {
    t.sort();
    let bytes = t.encode();
    let id = repo.keys().blob_id(&bytes);
    let level = repo.config()?.zstd_level;
    trees.add(seal_blob(
        repo.keys(),
        repo.id(),
        BlobKind::Tree,
        id,
        &bytes,
        level,
    ))?;
    Ok(id)
}

/// A directory of files of FILE_BLOBS blobs, DIR_FILES files per subdirectory.
fn put_dir(repo: &Repository, trees: &mut Packer, blobs: &[(BlobId, u32)]) -> Result<BlobId> {
    let mut top = Tree::default();
    for (d, dir) in blobs.chunks(FILE_BLOBS * DIR_FILES).enumerate() {
        let mut t = Tree::default();
        for (f, file) in dir.chunks(FILE_BLOBS).enumerate() {
            let ids: Vec<BlobId> = file.iter().map(|b| b.0).collect();
            let size = file.iter().map(|b| b.1 as u64).sum();
            t.nodes.push(file_node(format!("f{f:04}"), &ids, size));
        }
        let sub = put_tree(repo, trees, t)?;
        top.nodes.push(dir_node(format!("d{d:05}"), sub));
    }
    put_tree(repo, trees, top)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        bail!("usage: synth_repo REPO BLOBS [GROUPS]  (COFFER_PASSWORD set)");
    }
    let total: u64 = args[2].parse().context("BLOBS")?;
    let groups: u64 = args
        .get(3)
        .map_or(Ok(10), |g| g.parse())
        .context("GROUPS")?;
    if groups < 3 || total < groups * 100 {
        bail!("need at least 3 groups of 100 blobs");
    }
    let pw = std::env::var("COFFER_PASSWORD").context("COFFER_PASSWORD")?;
    let backend = Arc::new(LocalBackend::open(std::path::Path::new(&args[1])));
    let secret = Secret::Passphrase(Zeroizing::new(pw.into_bytes()));
    let repo = Arc::new(Repository::open(backend, &secret)?);
    let up = Uploader::start(repo.clone());
    let mut data = Packer {
        repo: &repo,
        up: &up,
        writer: PackWriter::new(),
    };
    let mut trees = Packer {
        repo: &repo,
        up: &up,
        writer: PackWriter::new(),
    };
    let group_size = total / groups;
    let level = repo.config()?.zstd_level;
    let (mut mains, mut scratches) = (Vec::new(), Vec::new());
    for g in 0..groups {
        let (start, end) = (
            g * group_size,
            if g + 1 == groups {
                total
            } else {
                (g + 1) * group_size
            },
        );
        let (mut main, mut scratch) = (Vec::new(), Vec::new());
        let mut j = start;
        while j < end {
            let stop = (j + BATCH as u64).min(end);
            let sealed: Vec<SealedBlob> = (j..stop)
                .into_par_iter()
                .map(|j| {
                    let c = content(j);
                    seal_blob(
                        repo.keys(),
                        repo.id(),
                        BlobKind::Data,
                        repo.keys().blob_id(&c),
                        &c,
                        level,
                    )
                })
                .collect();
            for (i, b) in sealed.into_iter().enumerate() {
                let entry = (b.id, b.raw_length);
                match role((j - start) as usize + i) {
                    Role::Main => main.push(entry),
                    Role::Scratch => scratch.push(entry),
                    Role::Orphan => {}
                }
                data.add(b)?;
            }
            j = stop;
        }
        mains.push(put_dir(&repo, &mut trees, &main)?);
        scratches.push(put_dir(&repo, &mut trees, &scratch)?);
        eprintln!("synth: group {}/{groups} sealed", g + 1);
    }
    let mut roots = Vec::new();
    for s in 0..groups as usize - 1 {
        let mut d = Tree::default();
        d.nodes.push(dir_node(format!("g{s:04}"), mains[s]));
        d.nodes
            .push(dir_node(format!("g{:04}", s + 1), mains[s + 1]));
        d.nodes
            .push(dir_node(format!("scratch{:04}", s + 1), scratches[s + 1]));
        let data_dir = put_tree(&repo, &mut trees, d)?;
        let mut root = Tree::default();
        root.nodes.push(dir_node("data".into(), data_dir));
        roots.push(put_tree(&repo, &mut trees, root)?);
    }
    data.flush()?;
    trees.flush()?;
    drop((data, trees));
    // Snapshots only once every pack and segment is durable.
    let (packs, segments) = up.finish()?;
    for (s, root) in roots.into_iter().enumerate() {
        let snap = Snapshot {
            time_ns: Time::new(DAY0_SEC + s as i64 * 86_400 + 3 * 3600, 0).as_ns(),
            tree: root,
            parent: None,
            hostname: "synth".into(),
            username: "synth".into(),
            uid: 0,
            gid: 0,
            paths: vec![b"/data".to_vec()],
            tags: Vec::new(),
            program_version: format!("synth_repo {}", env!("CARGO_PKG_VERSION")),
            summary: Default::default(),
        };
        repo.save_snapshot(&snap)?;
    }
    println!(
        "synth: {total} data blobs in {groups} groups, {packs} packs, {segments} index segments, {} snapshots",
        groups - 1
    );
    Ok(())
}
