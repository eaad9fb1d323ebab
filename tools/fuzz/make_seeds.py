#!/usr/bin/env python3
"""Write seed inputs for the fuzz targets into OUT_DIR/<target>/.

Valid encodings of each record (repo-format/README.md), built from the spec
so the fuzzer starts past every magic and length check instead of having
to discover them. A seed that is stale after a format change only costs
coverage, never correctness. Usage: make_seeds.py OUT_DIR (run.sh passes
tools/fuzz/corpus, so the seeds join each target's corpus).
"""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")


def u8(v): return struct.pack("<B", v)
def u32(v): return struct.pack("<I", v)
def u64(v): return struct.pack("<Q", v)
def i64(v): return struct.pack("<q", v)
def bytes_(b): return u32(len(b)) + b
def ident(n): return bytes([n]) * 32


def write(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# Trees: node := name, kind, mode, uid, gid, user, group, mtime (sec, nsec),
# ctime (sec, nsec), size, inode, device, links, rdev, flags, link_target,
# xattrs, content, subtree.
def node(name, kind, content=(), subtree=None, target=b"", xattrs=(), size=0):
    b = bytes_(name) + u8(kind) + u32(0o644) + u32(1000) + u32(1000)
    b += bytes_(b"user") + bytes_(b"group")
    b += i64(1_700_000_000) + u32(5) + i64(1_700_000_001) + u32(6)
    b += u64(size) + u64(42) + u64(7) + u64(1) + u64(0) + u32(0)
    b += bytes_(target) + u32(len(xattrs))
    for k, v in xattrs:
        b += bytes_(k) + bytes_(v)
    b += u32(len(content)) + b"".join(content)
    b += (u8(1) + subtree) if subtree else u8(0)
    return b


def tree(nodes):
    return b"cofferT1" + u32(len(nodes)) + b"".join(nodes)


write("tree_decode", "empty", tree([]))
write("tree_decode", "all_kinds", tree([
    node(b"a.txt", 1, content=[ident(1), ident(2)], size=100, xattrs=[(b"user.k", b"v")]),
    node(b"dir", 2, subtree=ident(3)),
    node(b"fifo", 4),
    node(b"link", 3, target=b"../elsewhere"),
]))

# Snapshots.
summary = [(b"files_new", 3), (b"total_bytes", 1000)]
snap = (b"cofferS1" + i64(1_700_000_000_000_000_000) + ident(9) + u8(1) + ident(8)
        + bytes_(b"host") + bytes_(b"user") + u32(0) + u32(0)
        + u32(2) + bytes_(b"/home/u") + bytes_(b"/etc")
        + u32(1) + bytes_(b"nightly") + bytes_(b"coffer 0.1.0")
        + u32(len(summary)) + b"".join(bytes_(k) + u64(v) for k, v in summary))
write("snapshot_decode", "snapshot", snap)


# Pack entries, trailers and index segments.
def entry(kind, n, offset, length, raw):
    return u8(kind) + ident(n) + u32(offset) + u32(length) + u32(raw)


entries = entry(1, 1, 0, 100, 60) + entry(2, 2, 100, 41, 0)
trailer = b"cofferP1" + u32(2) + entries
write("pack_trailer", "trailer", trailer)
# The structure-aware half reads a u16 blob-region length first.
write("pack_trailer", "sealed_in_pack", struct.pack("<H", 141) + trailer)
segment = b"cofferI1" + u32(1) + ident(5) + u64(141 + 4 + 92 + 40) + u32(2) + entries
write("segment_decode", "segment", segment)
write("segment_decode", "empty", b"cofferI1" + u32(0))

# Key slots: magic, kind, KDF params, salt, wrapped (72), meta.
meta = i64(1_700_000_000_000_000_000) + bytes_(b"host") + bytes_(b"user")
slot = (b"cofferK1" + u8(1) + u32(65536) + u32(3) + u32(1) + bytes(range(16))
        + bytes_(bytes(72)) + bytes_(bytes(40 + len(meta))))
write("key_slot_decode", "passphrase_slot", slot)
write("key_slot_decode", "key_file_slot",
      b"cofferK1" + u8(2) + u32(0) * 3 + bytes(16) + bytes_(bytes(72)) + bytes_(bytes(50)))
# The structure-aware half: 3 damage bytes (op 3 = none), then the metadata.
write("key_slot_decode", "meta", b"\x03\x00\x00" + meta)

# Config: the stored object, and 3 damage bytes + a body.
body = u32(262144) + u32(1048576) + u32(4194304) + u32(3) + u32(16 << 20) + i64(1)
write("config_decode", "config", b"cofferC1" + u32(1) + ident(4) + bytes(68))
write("config_decode", "body", b"\x03\x00\x00" + body)

# Blob open: 8 header bytes (damage, mode, raw length), then the plaintext
# (mode 0) or the body (mode 1: flag byte + payload).
write("blob_open", "text", b"\x03\x00\x00\x00" + u32(0) + b"hello world " * 50)
write("blob_open", "raw_body", b"\x03\x00\x00\x02" + u32(5) + b"\x00hello")
write("blob_open", "zstd_flag", b"\x03\x00\x00\x02" + u32(64) + b"\x01(\xb5/\xfd")

write("envelope_open", "plain", b"\x03\x00\x00" + b"secret")
