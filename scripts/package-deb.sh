#!/usr/bin/env bash
# Build the Debian package: target/debian/skiff_VERSION-1_amd64.deb, with
# cargo-deb (installed by scripts/setup.sh). It holds skiff, the static
# guest agent, the vhost-user helpers (vhost-device-vsock, virtiofsd) under
# /usr/lib/skiff, the systemd units and sysusers entry from contrib/, shell
# completions and man pages. Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

for tool in cargo-deb vhost-device-vsock virtiofsd; do
  command -v "$tool" >/dev/null || {
    echo "package-deb: $tool is missing: run scripts/setup.sh first" >&2
    exit 1
  }
done

scripts/build-agent.sh --quiet >/dev/null
cargo build --release --locked --quiet -p skiff

# Everything the package takes from outside cargo's own output, staged.
stage=target/package
rm -rf "$stage"
mkdir -p "$stage/systemd" "$stage/lib" "$stage/completions" "$stage/man"
# The units name the package's paths, not a hand install's /usr/local.
for unit in skiff.service skiff.socket; do
  sed -e 's#/usr/local/bin/skiff#/usr/bin/skiff#g' -e 's#/usr/local/lib/skiff#/usr/lib/skiff#g' \
    "contrib/$unit" >"$stage/systemd/$unit"
done
cp contrib/skiff.sysusers "$stage/systemd/skiff.sysusers"
cp contrib/skiff.tmpfiles "$stage/systemd/skiff.tmpfile"
cp target/x86_64-unknown-linux-gnu/release/skiff-agent "$(command -v vhost-device-vsock)" "$(command -v virtiofsd)" "$stage/lib/"
target/release/skiff completions bash >"$stage/completions/skiff"
target/release/skiff completions zsh >"$stage/completions/_skiff"
target/release/skiff completions fish >"$stage/completions/skiff.fish"
target/release/skiff man "$stage/man" >/dev/null
gzip -9n "$stage"/man/*.1

cargo deb --quiet --no-build -p skiff --output target/debian/
