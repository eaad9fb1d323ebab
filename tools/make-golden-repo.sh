#!/usr/bin/env bash
# Make the frozen format-v1 vector repository under repo-format/vectors/.
#
# Run ONCE per format version, deliberately: the output is the compatibility
# promise that tests/format_vectors.rs checks on every commit. Regenerating
# it for an existing version defeats its purpose; refuse unless FORCE=1.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/repo-format/vectors/repo-v1"
if [ -e "$out" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "refusing: $out exists (it is frozen; FORCE=1 only when starting a new format version)" >&2
    exit 1
fi
rm -rf "$out"
cargo build --release --manifest-path "$top/Cargo.toml" >/dev/null
bin="$top/target/release/coffer"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A fixed source path, so the snapshot records the same absolute paths on every machine.
src=/tmp/coffer-vector-src
rm -rf "$src"
mkdir -p "$src/docs/empty" "$src/data"
printf 'hello, coffer\n' > "$src/docs/hello.txt"
: > "$src/docs/empty-file"
python3 - "$src" <<'PY'
import os, sys
src = sys.argv[1]
# 5 MiB of compressible text: several chunks, a small pack.
line = b"".join(b"line %06d of the coffer format vector, some text to compress\n" % i for i in range(90000))
open(os.path.join(src, "data", "big.txt"), "wb").write(line[: 5 * 1024 * 1024])
# A non-UTF-8 name.
open(os.path.join(src.encode(), b"data", b"caf\xe9.bin"), "wb").write(bytes(range(256)) * 4)
PY
ln -s ../docs/hello.txt "$src/data/link-to-hello"
ln "$src/docs/hello.txt" "$src/docs/hello-hardlink.txt"
chmod 0640 "$src/docs/hello.txt"
chmod 0755 "$src/data/big.txt"
find "$src" -exec touch -h -d '2024-02-29 12:34:56.123456789 UTC' {} +
export COFFER_PASSWORD='coffer format v1 vector'
export COFFER_CACHE_DIR="$work/cache"
"$bin" --repo "$out" init --pack-size 1M
"$bin" --repo "$out" backup --host vector-host --tag v1 "$src"
# A second snapshot after a change, so parent and dedup are exercised.
printf 'changed\n' >> "$src/docs/empty-file"
touch -d '2024-03-01 00:00:00 UTC' "$src/docs/empty-file" "$src/docs"
"$bin" --repo "$out" backup --host vector-host --tag v1 "$src"
printf '%s\n' "$COFFER_PASSWORD" > "$top/repo-format/vectors/repo-v1.password"
# Manifest of the second snapshot: path, type, mode, size, mtime_ns, blake3 (or link target).
python3 - "$src" > "$top/repo-format/vectors/repo-v1.manifest" <<'PY'
import os, stat, sys, hashlib
src = sys.argv[1].encode()
rows = []
for root, dirs, files in os.walk(src):
    for name in sorted(dirs + files):
        p = os.path.join(root, name)
        st = os.lstat(p)
        rel = os.path.relpath(p, src).hex()
        if stat.S_ISLNK(st.st_mode):
            kind, extra = "symlink", os.readlink(p).hex()
        elif stat.S_ISDIR(st.st_mode):
            kind, extra = "dir", "-"
        else:
            kind, extra = "file", hashlib.sha256(open(p, "rb").read()).hexdigest()
        size = st.st_size if kind == "file" else 0
        rows.append(f"{rel} {kind} {stat.S_IMODE(st.st_mode):o} {size} {st.st_mtime_ns} {extra}")
print("# hex(relative path) type mode(octal) size mtime_ns sha256|hex(link target)|-")
print("source", src.decode())
for r in sorted(rows):
    print(r)
PY
rm -rf "$src"
echo "made $out"
