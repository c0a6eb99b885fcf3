#!/usr/bin/env bash
# Every benchmark with a few iterations: a broken benchmark (a failed step,
# bytes that differ, a figure that is missing) fails here. No figure is
# compared with a threshold, so a slow machine does not fail it. The full
# runs, whose figures docs/benchmarks.md reports, take their own arguments
# (see the header of each crates/skiff/benches/*.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

bench() {
  local name=$1
  shift
  echo "== bench smoke: $name $*"
  local start=$SECONDS
  cargo bench -p skiff --locked --quiet --bench "$name" -- "$@"
  echo "== $name: $((SECONDS - start)) s"
}

bench boot --runs 2
bench sandbox --runs 2 --density 2
bench copy --mib 8 --runs 2
bench net --mib 4 --runs 2
bench proxy --requests 40 --runs 1 --clients 2
bench fullos --runs 1 --execs 2
bench pull --layers 2 --mib 2 --runs 1
bench pause --runs 2

echo "== bench smoke: e2b_vs_skiff --runs 2"
start=$SECONDS
SKIFF_BIN="${SKIFF_BIN:-target/debug/skiff}" python3 sdk/python/bench/e2b_vs_skiff.py --runs 2
echo "== e2b_vs_skiff: $((SECONDS - start)) s"
