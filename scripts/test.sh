#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests and the
# end-to-end tests that boot real microVMs (run scripts/setup.sh first).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# Tests that need root (network namespaces) fail rather than skip here.
export SKIFF_REQUIRE_PRIVILEGED=1

cargo fmt --all --check
scripts/build-agent.sh --quiet >/dev/null
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings
# VMs run under emulation on hosts without hardware KVM: two at a time keeps
# a 2-core machine responsive enough for the boot timeouts.
cargo test --workspace --locked -- --test-threads=2
# The fuzz targets (the guest's frames, copy streams, spec files): built,
# and run briefly; a longer run is scripts/fuzz.sh SECONDS.
scripts/fuzz.sh 20
# Each benchmark, a few iterations: fails on a broken benchmark, never on a
# slow machine.
scripts/bench-smoke.sh
# The Python SDK against a real daemon (the source tree, not an installed copy).
PYTHONPATH=sdk/python SKIFF_BIN=target/debug/skiff python3 -m pytest -q -p no:cacheprovider sdk/python/tests
