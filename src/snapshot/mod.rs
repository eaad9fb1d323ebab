//! Snapshots (repo-format/README.md, "Snapshots"): the root object that
//! makes a backup visible. Written last, after its packs and index segment.
//!
//! ```text
//! snapshot := "cofferS1"[8] || time_ns i64 || tree[32] || has_parent u8 || [parent[32]]
//!             || hostname str || username str || uid u32 || gid u32
//!             || path_count u32 || path bytes*      (absolute paths, raw bytes)
//!             || tag_count u32 || tag str*
//!             || program_version str
//!             || summary_count u32 || (key str || value u64)*
//! ```
//! The summary is a list of named counters so later versions can add
//! counters that older readers skip.

pub mod tree;
pub mod walk;

use crate::codec::{DecodeError, Reader, Writer};
use crate::id::{BlobId, SnapshotId};
use std::collections::BTreeMap;

pub(crate) const SNAPSHOT_MAGIC: &[u8; 8] = b"cofferS1";
pub(crate) const MAX_PATHS: usize = 100_000;
pub(crate) const MAX_TAGS: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub time_ns: i64,
    pub tree: BlobId,
    pub parent: Option<SnapshotId>,
    pub hostname: String,
    pub username: String,
    pub uid: u32,
    pub gid: u32,
    pub paths: Vec<Vec<u8>>,
    pub tags: Vec<String>,
    pub program_version: String,
    pub summary: BTreeMap<String, u64>,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(SNAPSHOT_MAGIC);
        w.i64(self.time_ns);
        w.raw(self.tree.as_bytes());
        match &self.parent {
            Some(p) => {
                w.u8(1);
                w.raw(p.as_bytes());
            }
            None => w.u8(0),
        }
        w.str(&self.hostname);
        w.str(&self.username);
        w.u32(self.uid);
        w.u32(self.gid);
        w.u32(self.paths.len() as u32);
        for p in &self.paths {
            w.bytes(p);
        }
        w.u32(self.tags.len() as u32);
        for t in &self.tags {
            w.str(t);
        }
        w.str(&self.program_version);
        w.u32(self.summary.len() as u32);
        for (k, v) in &self.summary {
            w.str(k);
            w.u64(*v);
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.take(8)? != SNAPSHOT_MAGIC {
            return Err(DecodeError("not a snapshot (bad magic)".into()));
        }
        let time_ns = r.i64()?;
        let tree = BlobId(r.array()?);
        let parent = match r.u8()? {
            0 => None,
            1 => Some(SnapshotId(r.array()?)),
            v => return Err(DecodeError(format!("bad parent flag {v}"))),
        };
        let hostname = r.string(1024, "hostname")?;
        let username = r.string(1024, "username")?;
        let uid = r.u32()?;
        let gid = r.u32()?;
        let np = r.count(MAX_PATHS, 4, "path")?;
        let mut paths = Vec::with_capacity(np);
        for _ in 0..np {
            paths.push(r.bytes(64 * 1024, "path")?.to_vec());
        }
        let nt = r.count(MAX_TAGS, 4, "tag")?;
        let mut tags = Vec::with_capacity(nt);
        for _ in 0..nt {
            tags.push(r.string(1024, "tag")?);
        }
        let program_version = r.string(256, "program version")?;
        let ns = r.count(1024, 12, "summary counter")?;
        let mut summary = BTreeMap::new();
        for _ in 0..ns {
            let k = r.string(256, "summary key")?;
            let v = r.u64()?;
            summary.insert(k, v);
        }
        r.finish()?;
        Ok(Snapshot {
            time_ns,
            tree,
            parent,
            hostname,
            username,
            uid,
            gid,
            paths,
            tags,
            program_version,
            summary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut summary = BTreeMap::new();
        summary.insert("files_new".to_string(), 3);
        let s = Snapshot {
            time_ns: 1_700_000_000_000_000_001,
            tree: BlobId([1; 32]),
            parent: Some(SnapshotId([2; 32])),
            hostname: "h".into(),
            username: "u".into(),
            uid: 1000,
            gid: 1000,
            paths: vec![b"/home/\xffx".to_vec()],
            tags: vec!["nightly".into()],
            program_version: "coffer 0.1.0".into(),
            summary,
        };
        let b = s.encode();
        assert_eq!(Snapshot::decode(&b).unwrap(), s);
        for n in 0..b.len() {
            assert!(Snapshot::decode(&b[..n]).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn encode_decode_round_trip(
            time_ns in proptest::prelude::any::<i64>(),
            tree in proptest::prelude::any::<[u8; 32]>(),
            parent in proptest::option::of(proptest::prelude::any::<[u8; 32]>()),
            hostname in "\\PC{0,40}",
            username in "\\PC{0,20}",
            ids in proptest::prelude::any::<(u32, u32)>(),
            paths in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..60), 0..6),
            tags in proptest::collection::vec("\\PC{0,16}", 0..5),
            program_version in "\\PC{0,30}",
            summary in proptest::collection::btree_map("[a-z_]{0,24}", proptest::prelude::any::<u64>(), 0..14),
        ) {
            let s = Snapshot {
                time_ns,
                tree: BlobId(tree),
                parent: parent.map(SnapshotId),
                hostname,
                username,
                uid: ids.0,
                gid: ids.1,
                paths,
                tags,
                program_version,
                summary,
            };
            let b = s.encode();
            let back = Snapshot::decode(&b).unwrap();
            proptest::prop_assert_eq!(&back, &s);
            proptest::prop_assert_eq!(back.encode(), b);
        }
    }
}
