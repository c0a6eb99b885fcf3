#!/usr/bin/env bash
# Build the fuzz targets with libFuzzer's coverage instrumentation on the
# stable toolchain (the flags cargo-fuzz passes, without a sanitizer), and
# run each for a while: scripts/fuzz.sh [SECONDS per target, default 20].
# Crashes are written to fuzz/artifacts/TARGET/ and fail the run.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-20}"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="$PWD/target"
# An explicit target keeps the flags off build scripts and proc macros.
triple="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --locked --quiet --bins --target "$triple"
for target in decode copy_extract spec_parse mux; do
    mkdir -p "corpus/$target" "artifacts/$target"
    echo "fuzz: $target for ${secs}s"
    "target/$triple/release/$target" -max_total_time="$secs" -print_final_stats=0 \
        -artifact_prefix="artifacts/$target/" "corpus/$target" 2>"target/$target.log" || {
        tail -n 40 "target/$target.log" >&2
        exit 1
    }
    grep -E "^Done|DONE" "target/$target.log" | tail -n 1 || true
done
