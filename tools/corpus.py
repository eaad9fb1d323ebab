#!/usr/bin/env python3
"""Reproducible backup corpus for tools/compare.

    corpus.py generate --root DIR --gb 2 [--seed 1]
    corpus.py mutate   --root DIR --day 1 [--seed 1]

`generate` builds, from a seeded PRNG (never /dev/urandom), a tree of about
`gb` GiB:

    src/      tens of thousands of small source-like text files, nested
    lib/      shared libraries copied from /usr/lib/x86_64-linux-gnu
              (a deterministic selection: sorted by a hash of the name)
    data/     compressible CSV and log-like files
    blobs/    incompressible PRNG bytes
    vm/disk.img    a 256 MiB file (a disk image: mostly incompressible)
    db/big.dat     one big file, ~25% of the corpus (database-like pages)

`mutate` applies "the next day" (a different change set per day number):
~1% of files changed, a few new files, a few deleted, a few bytes inserted
in the middle of db/big.dat and one byte inserted near the start of
vm/disk.img. Big files are rewritten in place (same inode), like a database.

Everything printed is a summary; the exit status is non-zero on error.
"""

import argparse
import hashlib
import os
import random
import shutil
import sys

GIB = 1 << 30
MIB = 1 << 20
KIB = 1 << 10

TEXT_SUFFIXES = (".c", ".h", ".py", ".rs", ".go", ".md", ".txt", ".csv", ".log", ".json")

IDENT = [
    "buf", "len", "ctx", "req", "resp", "idx", "node", "tree", "chunk", "pack", "blob", "key",
    "value", "count", "offset", "size", "path", "name", "user", "cfg", "state", "err", "res",
    "item", "list", "map", "iter", "next", "prev", "head", "tail", "data", "meta", "hash", "id",
]
KEYWORDS = {
    ".c": ["int", "char", "static", "const", "struct", "return", "if", "for", "while", "void", "sizeof"],
    ".h": ["#define", "#include", "typedef", "struct", "extern", "int", "unsigned", "const"],
    ".py": ["def", "return", "if", "for", "in", "import", "from", "class", "self", "None", "with"],
    ".rs": ["fn", "let", "mut", "impl", "pub", "struct", "match", "Some", "None", "Ok", "Err", "use"],
    ".go": ["func", "return", "if", "for", "range", "package", "import", "struct", "nil", "err"],
    ".md": ["the", "backup", "restore", "a", "of", "to", "and", "in", "is", "repository", "file"],
    ".txt": ["the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "he", "was", "for"],
    ".json": ['"id":', '"name":', '"value":', '"tags":', "true", "false", "null", "{", "}", "[", "]"],
}
SRC_SUFFIXES = [".c", ".h", ".py", ".rs", ".go", ".md", ".txt", ".json"]


def log(msg):
    print(f"corpus: {msg}", file=sys.stderr, flush=True)


def line_pool(rng, suffix, n):
    """n distinct source-like lines for one language."""
    kw = KEYWORDS[suffix]
    pool = []
    for _ in range(n):
        indent = " " * (4 * rng.randrange(4))
        words = []
        for _ in range(rng.randrange(2, 12)):
            r = rng.random()
            if r < 0.35:
                words.append(rng.choice(kw))
            elif r < 0.8:
                words.append(rng.choice(IDENT) + (str(rng.randrange(100)) if rng.random() < 0.3 else ""))
            elif r < 0.9:
                words.append(str(rng.randrange(100000)))
            else:
                words.append(rng.choice(["=", "==", "+", "-", "(", ")", "{", "}", ";", ",", "->", "::"]))
        pool.append(indent + " ".join(words) + "\n")
    return pool


def text_bytes(rng, pool, size):
    """About `size` bytes of lines drawn from `pool`."""
    avg = max(1, sum(len(x) for x in pool[:200]) // min(len(pool), 200))
    out = "".join(rng.choices(pool, k=size // avg + 1))
    return out.encode()[:size]


def log_lines(rng, size, start_ts, csv):
    """CSV rows or log lines with increasing timestamps: compressible ~5-10x."""
    hosts = [f"host{i:02d}.example.net" for i in range(24)]
    levels = ["INFO"] * 12 + ["DEBUG"] * 6 + ["WARN"] * 2 + ["ERROR"]
    msgs = [
        "request completed", "cache miss", "connection reset by peer", "retrying upload",
        "snapshot saved", "query took longer than expected", "user logged in", "session expired",
        "flushed write-ahead log", "compaction finished", "checkpoint written", "health check ok",
    ]
    paths = [f"/api/v{v}/{r}" for v in (1, 2) for r in ("items", "users", "orders", "metrics", "auth")]
    parts = []
    total = 0
    ts = start_ts
    if csv:
        header = "timestamp,host,metric,value,count,status\n"
        parts.append(header)
        total += len(header)
    while total < size:
        ts += rng.randrange(1, 2000)
        if csv:
            line = "%d,%s,%s,%.3f,%d,%s\n" % (
                ts, rng.choice(hosts), rng.choice(("cpu", "mem", "disk_io", "net_rx", "net_tx", "latency")),
                rng.random() * 100, rng.randrange(10000), rng.choice(("ok", "ok", "ok", "degraded")))
        else:
            line = "%d.%03d %s %-5s [%s] %s %s %d %dms\n" % (
                ts // 1000, ts % 1000, rng.choice(hosts), rng.choice(levels), rng.choice(("api", "db", "worker")),
                rng.choice(msgs), rng.choice(paths), rng.choice((200, 200, 200, 204, 304, 404, 500)),
                rng.randrange(2000))
        parts.append(line)
        total += len(line)
    return "".join(parts).encode()[:size]


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def gen_small_text(root, rng, budget):
    """Many small files in nested project directories; returns bytes written."""
    pools = {s: line_pool(rng, s, 20000) for s in SRC_SUFFIXES}
    written = files = 0
    proj = 0
    while written < budget:
        pdir = os.path.join(root, "src", f"proj{proj:02d}")
        for m in range(rng.randrange(5, 15)):
            for sub in range(rng.randrange(1, 6)):
                d = os.path.join(pdir, f"module{m:02d}", f"pkg{sub}")
                for i in range(rng.randrange(10, 60)):
                    suffix = rng.choice(SRC_SUFFIXES)
                    # Mostly 1-8 KiB, a tail up to ~64 KiB.
                    size = int(rng.lognormvariate(8.2, 0.9))
                    size = max(64, min(size, 64 * KIB))
                    written += write(os.path.join(d, f"file{i:03d}{suffix}"), text_bytes(rng, pools[suffix], size))
                    files += 1
                    if written >= budget:
                        return written, files
        proj += 1
    return written, files


def gen_libs(root, budget):
    """Copy existing shared libraries, a deterministic selection."""
    src = "/usr/lib/x86_64-linux-gnu"
    try:
        names = [n for n in os.listdir(src) if ".so" in n]
    except OSError:
        return 0, 0
    cands = []
    for n in names:
        p = os.path.join(src, n)
        if os.path.isfile(p) and not os.path.islink(p):
            cands.append(n)
    cands.sort(key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    written = files = 0
    for n in cands:
        p = os.path.join(src, n)
        size = os.path.getsize(p)
        if size == 0 or written + size > budget:
            continue
        os.makedirs(os.path.join(root, "lib"), exist_ok=True)
        shutil.copyfile(p, os.path.join(root, "lib", n))
        written += size
        files += 1
    return written, files


def gen_compressible(root, rng, budget):
    written = files = 0
    ts = 1_700_000_000_000
    while written < budget:
        csv = files % 2 == 0
        size = min(rng.randrange(1 * MIB, 24 * MIB), budget - written)
        sub = "csv" if csv else "logs"
        ext = "csv" if csv else "log"
        written += write(os.path.join(root, "data", sub, f"part{files:04d}.{ext}"), log_lines(rng, size, ts, csv))
        ts += 86_400_000
        files += 1
    return written, files


def gen_incompressible(root, rng, budget):
    written = files = 0
    while written < budget:
        size = min(rng.randrange(256 * KIB, 48 * MIB), budget - written)
        written += write(os.path.join(root, "blobs", f"b{files // 16:02d}", f"blob{files:04d}.bin"), rng.randbytes(size))
        files += 1
    return written, files


def gen_big(path, rng, size):
    """Database-like: 1 MiB extents, alternating text pages and random pages."""
    pool = line_pool(rng, ".json", 20000)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    written = 0
    with open(path, "wb") as f:
        while written < size:
            n = min(MIB, size - written)
            data = text_bytes(rng, pool, n) if rng.random() < 0.5 else rng.randbytes(n)
            f.write(data)
            written += n
    return written


def gen_disk(path, rng, size):
    """A disk image: mostly incompressible, some zeroed and text extents."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pool = line_pool(rng, ".txt", 5000)
    written = 0
    with open(path, "wb") as f:
        while written < size:
            n = min(4 * MIB, size - written)
            r = rng.random()
            if r < 0.1:
                data = bytes(n)
            elif r < 0.25:
                data = text_bytes(rng, pool, n)
            else:
                data = rng.randbytes(n)
            f.write(data)
            written += n
    return written


def generate(args):
    root = os.path.abspath(args.root)
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(root)
    total = int(args.gb * GIB)
    rng = random.Random(args.seed)
    big = total // 4
    disk = min(256 * MIB, total // 4)
    rest = total - big - disk
    stats = {}
    log(f"big file {big / MIB:.0f} MiB")
    stats["big"] = (gen_big(os.path.join(root, "db", "big.dat"), random.Random(args.seed * 7 + 1), big), 1)
    log(f"disk image {disk / MIB:.0f} MiB")
    stats["disk"] = (gen_disk(os.path.join(root, "vm", "disk.img"), random.Random(args.seed * 7 + 2), disk), 1)
    log("small text files")
    stats["small_text"] = gen_small_text(root, random.Random(args.seed * 7 + 3), rest * 24 // 100)
    log("shared libraries")
    stats["binaries"] = gen_libs(root, rest * 16 // 100)
    log("compressible data")
    stats["compressible"] = gen_compressible(root, random.Random(args.seed * 7 + 4), rest * 30 // 100)
    done = sum(v[0] for v in stats.values())
    log("incompressible data")
    stats["incompressible"] = gen_incompressible(root, random.Random(args.seed * 7 + 5), max(0, total - done))
    del rng
    for k, (b, n) in stats.items():
        print(f"{k:15s} {n:7d} files {b / MIB:10.1f} MiB")
    print(f"{'total':15s} {sum(v[1] for v in stats.values()):7d} files "
          f"{sum(v[0] for v in stats.values()) / MIB:10.1f} MiB")


def all_files(root):
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            out.append(os.path.join(d, f))
    return out


def insert_in_place(path, inserts):
    """Insert bytes at offsets (ascending), rewriting the file in place."""
    with open(path, "r+b") as f:
        data = f.read()
        parts = []
        prev = 0
        for off, b in inserts:
            parts.append(data[prev:off])
            parts.append(b)
            prev = off
        parts.append(data[prev:])
        f.seek(0)
        f.write(b"".join(parts))
        f.truncate()


def mutate(args):
    root = os.path.abspath(args.root)
    rng = random.Random(args.seed * 1000 + args.day)
    big = os.path.join(root, "db", "big.dat")
    disk = os.path.join(root, "vm", "disk.img")
    files = [p for p in all_files(root) if p not in (big, disk)]
    if not files:
        sys.exit(f"corpus: no files under {root}")
    n_change = max(1, len(files) // 100)
    n_delete = max(1, len(files) // 2000)
    picked = rng.sample(files, n_change + n_delete)
    changed, deleted = picked[:n_change], picked[n_change:]
    pool = line_pool(rng, ".rs", 2000)
    changed_bytes = 0
    for p in changed:
        size = os.path.getsize(p)
        if p.endswith(".log"):
            # Logs grow.
            with open(p, "ab") as f:
                f.write(log_lines(rng, 64 * KIB, 1_800_000_000_000 + args.day, False))
        elif p.endswith(TEXT_SUFFIXES):
            # Edit a few lines somewhere in the file.
            with open(p, "rb") as f:
                data = f.read()
            at = rng.randrange(len(data) + 1)
            data = data[:at] + text_bytes(rng, pool, rng.randrange(20, 400)) + data[at:]
            with open(p, "wb") as f:
                f.write(data)
        else:
            # A binary patched in place.
            with open(p, "r+b") as f:
                f.seek(rng.randrange(max(1, size - 64)))
                f.write(rng.randbytes(64))
        changed_bytes += size
    for p in deleted:
        os.remove(p)
    new_dir = os.path.join(root, "src", "proj00", f"new-day{args.day:03d}")
    new_bytes = 0
    for i in range(20):
        new_bytes += write(os.path.join(new_dir, f"new{i:02d}.rs"), text_bytes(rng, pool, rng.randrange(500, 20000)))
    new_bytes += write(os.path.join(root, "data", "logs", f"day{args.day:03d}.log"),
                       log_lines(rng, 4 * MIB, 1_900_000_000_000 + args.day, False))
    new_bytes += write(os.path.join(root, "blobs", f"new-day{args.day:03d}.bin"), rng.randbytes(8 * MIB))
    if os.path.exists(big):
        size = os.path.getsize(big)
        offs = sorted(size * k // 100 + rng.randrange(4096) for k in (40, 50, 60))
        insert_in_place(big, [(o, rng.randbytes(rng.randrange(3, 9))) for o in offs])
    if os.path.exists(disk):
        insert_in_place(disk, [(4096 + rng.randrange(4096), b"\x01")])
    print(f"day {args.day}: changed {len(changed)} files ({changed_bytes / MIB:.1f} MiB), "
          f"deleted {len(deleted)}, new 22 files ({new_bytes / MIB:.1f} MiB), "
          f"3 small insertions in db/big.dat, 1 byte inserted near the start of vm/disk.img")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--root", required=True)
    g.add_argument("--gb", type=float, default=2.0)
    g.add_argument("--seed", type=int, default=1)
    m = sub.add_parser("mutate")
    m.add_argument("--root", required=True)
    m.add_argument("--day", type=int, default=1)
    m.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.cmd == "generate":
        if args.gb <= 0:
            sys.exit("corpus: --gb must be positive")
        generate(args)
    else:
        mutate(args)


if __name__ == "__main__":
    main()
