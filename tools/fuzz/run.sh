#!/bin/sh
# Build every fuzz target and run each for a while.
#
#   tools/fuzz/run.sh                 # all targets, 60 s each
#   tools/fuzz/run.sh 300             # all targets, 300 s each
#   tools/fuzz/run.sh 60 tree_decode  # one target
#   FUZZ_JOBS=2 tools/fuzz/run.sh     # fuzz each target with 2 processes (-fork)
#   FUZZ_SANITIZER=none tools/fuzz/run.sh 10   # what CI runs: coverage-guided,
#                                     # no AddressSanitizer (a cold build in ~4 CPU-min)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz passes nightly
# flags (-Zsanitizer=address); by default they are enabled on the project's
# own stable toolchain with RUSTC_BOOTSTRAP=1, so nothing else is needed.
# FUZZ_TOOLCHAIN=nightly uses `cargo +nightly fuzz` instead. Crashes land in tools/fuzz/artifacts/<target>/; turn each
# into a unit test in the module that owns the decoder (bytes inline), fix
# it, and keep the test.
set -eu
cd "$(dirname "$0")/../.."
secs=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-"config_decode key_slot_decode pack_trailer segment_decode tree_decode snapshot_decode blob_open envelope_open"}
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    fuzz="cargo +$FUZZ_TOOLCHAIN fuzz"
else
    export RUSTC_BOOTSTRAP=1
    fuzz="cargo fuzz"
fi
san="-s ${FUZZ_SANITIZER:-address}"
$fuzz build --fuzz-dir tools/fuzz $san
# Seeds: valid encodings built from the spec, written into the (ignored)
# corpus directories on each run; plus the magics as a dictionary.
python3 tools/fuzz/make_seeds.py tools/fuzz/corpus
fork=""
[ "${FUZZ_JOBS:-1}" -gt 1 ] && fork="-fork=$FUZZ_JOBS"
status=0
for t in $targets; do
    echo "== $t ($secs s)"
    mkdir -p "tools/fuzz/corpus/$t"
    if ! $fuzz run --fuzz-dir tools/fuzz $san "$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 \
        -dict=tools/fuzz/coffer.dict -print_final_stats=1 $fork; then
        echo "!! $t found a crash: see tools/fuzz/artifacts/$t/"
        status=1
    fi
done
exit $status
