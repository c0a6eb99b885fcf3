#!/usr/bin/env bash
# Build the guest agent as a static binary. The guest has no dynamic loader,
# so glibc is linked statically (crt-static); an explicit --target keeps the
# flag away from build scripts and proc-macros, which must stay dynamic.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p skiff-agent --target x86_64-unknown-linux-gnu "$@"
echo "built target/x86_64-unknown-linux-gnu/release/skiff-agent"
