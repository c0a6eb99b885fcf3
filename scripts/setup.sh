#!/usr/bin/env bash
# Install everything skiff needs on a Debian (12+) machine, build skiff, and
# prepare the default guest image. Safe to run again: it only does what is
# missing. Needs root or sudo for the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

VHOST_DEVICE_VSOCK_VERSION=0.3.0
VIRTIOFSD_VERSION=1.14.0
CARGO_DEB_VERSION=3.8.0
# libseccomp-dev and libcap-ng-dev are build dependencies of virtiofsd.
PACKAGES=(qemu-system-x86 qemu-utils openssh-client busybox-static cpio e2fsprogs kmod ca-certificates libseccomp-dev libcap-ng-dev debootstrap nftables iproute2 curl openssl docker-registry skopeo umoci apache2-utils systemd)

say() { printf 'setup: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Debian packages: QEMU, a static busybox for the guest, cpio (tests),
#    e2fsprogs (drive images), kmod (depmod indexes the guest kernel's modules),
#    debootstrap (skiff image build), nftables (NAT and isolation of managed
#    networks), qemu-utils (qemu-img: copy-on-write root disks), openssh-client
#    (the dev box test logs in with ssh), iproute2 and curl (the network tests build namespaces with
#    `ip netns` and fetch from guests with curl), docker-registry, skopeo,
#    umoci and apache2-utils (the OCI tests run a real registry on loopback,
#    with htpasswd credentials, and build and push their images with umoci
#    and skopeo), systemd (systemd-socket-activate hands the daemon its socket
#    in the socket-activation test; nothing starts systemd itself).
find_missing() {
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
}
# A package dpkg lists whose program is gone is installed again.
reinstall=()
command -v qemu-img >/dev/null || reinstall+=(qemu-utils)
find_missing
have_lists=$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' 2>/dev/null | head -n1)
if [ ${#missing[@]} -gt 0 ] || [ ${#reinstall[@]} -gt 0 ] || [ -z "$have_lists" ]; then
  say "installing Debian packages: ${missing[*]:-(refreshing package lists)}"
  as_root apt-get update -qq
  # Twice at most: an install may remove a package it conflicts with (a
  # backported qemu-utils goes when Debian's qemu-system-x86 comes in, seen
  # on a fresh machine), and the second pass puts back the version that fits.
  if [ ${#reinstall[@]} -gt 0 ] && [[ " ${missing[*]} " != *" qemu-utils "* ]]; then
    say "installing again: ${reinstall[*]} (a program of it is missing)"
    as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends --reinstall "${reinstall[@]}" >/dev/null
  fi
  for pass in 1 2; do
    [ ${#missing[@]} -eq 0 ] && break
    as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    find_missing
    if [ ${#missing[@]} -gt 0 ] && [ "$pass" = 1 ]; then
      say "installing again what that install removed: ${missing[*]}"
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: these Debian packages are still not installed: ${missing[*]}" >&2
    exit 1
  fi
fi
for tool in qemu-system-x86_64 qemu-img; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is missing after the package install" >&2; exit 1; }
done

# 2. Rust toolchain (rustup) must already be there.
if ! command -v cargo >/dev/null; then
  say "cargo not found: install Rust with rustup (https://rustup.rs) and run this again"
  exit 1
fi
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# 3. The vhost-user vsock backend (built once, cached in ~/.cargo/bin).
if ! vhost-device-vsock --version 2>/dev/null | grep -q "$VHOST_DEVICE_VSOCK_VERSION"; then
  say "building vhost-device-vsock $VHOST_DEVICE_VSOCK_VERSION (once; about a minute)"
  cargo install --locked --quiet vhost-device-vsock --version "$VHOST_DEVICE_VSOCK_VERSION"
fi

# 3b. virtiofsd, for host folders shared into VMs (built once, about 2 minutes).
if ! virtiofsd --version 2>/dev/null | grep -q "$VIRTIOFSD_VERSION"; then
  say "building virtiofsd $VIRTIOFSD_VERSION (once; about 2 minutes)"
  cargo install --locked --quiet virtiofsd --version "$VIRTIOFSD_VERSION"
fi

# 3d. cargo-deb, which scripts/package-deb.sh builds the Debian package with.
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  say "building cargo-deb $CARGO_DEB_VERSION (once; about 2 minutes)"
  cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi

# 3c. The Python SDK (sdk/python) and pytest, which its tests use; the proxy
#     test parses /metrics with prometheus-client; E2B's own SDK, pinned,
#     drives the E2B-compatible API (sdk/python/tests/test_e2b.py), and
#     the MCP SDK's client drives `skiff mcp` (test_mcp.py).
E2B_SDK_VERSION=2.63.0
MCP_SDK_VERSION=2.3.0
if ! python3 -c 'import pytest, skiff_sdk, prometheus_client' 2>/dev/null \
   || [ "$(python3 -c 'import importlib.metadata as m; print(m.version("e2b"), m.version("mcp"))' 2>/dev/null)" != "$E2B_SDK_VERSION $MCP_SDK_VERSION" ]; then
  say "installing the Python SDK, pytest, e2b $E2B_SDK_VERSION and mcp $MCP_SDK_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore ./sdk/python pytest prometheus-client "e2b==$E2B_SDK_VERSION" "mcp==$MCP_SDK_VERSION"
fi

# 3e. E2B's JavaScript SDK (the `e2b` npm package, pinned by sdk/js's
#     package-lock.json), which sdk/js/test/e2b.test.mjs drives against the
#     E2B-compatible API: the TypeScript client skiff supports is E2B's own.
if ! command -v node >/dev/null || ! command -v npm >/dev/null \
   || ! node -e 'const [a,b,c]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&(b>18||(b==18&&c>=1)))?0:1)'; then
  echo "setup: Node.js 20.18.1 or newer, with npm, is needed for sdk/js (E2B's JavaScript SDK); Debian 12's nodejs is older: install it from nodejs.org or NodeSource" >&2
  exit 1
fi
if ! cmp -s sdk/js/package-lock.json sdk/js/node_modules/.skiff-installed-lock 2>/dev/null; then
  say "installing E2B's JavaScript SDK into sdk/js/node_modules"
  (cd sdk/js && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  cp sdk/js/package-lock.json sdk/js/node_modules/.skiff-installed-lock
fi

# 4. skiff and its static guest agent.
say "building the guest agent and skiff"
scripts/build-agent.sh --quiet >/dev/null
cargo build --release --locked --quiet -p skiff

# 4b. Shell completions (bash, zsh, fish) and man pages, generated from the
#     command line's own definition, under /usr/local/share.
say "installing shell completions and man pages"
share=/usr/local/share
completions=$(mktemp -d)
target/release/skiff completions bash >"$completions/skiff"
target/release/skiff completions zsh >"$completions/_skiff"
target/release/skiff completions fish >"$completions/skiff.fish"
target/release/skiff man "$completions/man" >/dev/null
as_root install -D -m 0644 "$completions/skiff" "$share/bash-completion/completions/skiff"
as_root install -D -m 0644 "$completions/_skiff" "$share/zsh/site-functions/_skiff"
as_root install -D -m 0644 "$completions/skiff.fish" "$share/fish/vendor_completions.d/skiff.fish"
as_root install -d "$share/man/man1"
as_root install -m 0644 "$completions"/man/*.1 "$share/man/man1/"
rm -rf "$completions"

# 4c. The Debian package (target/debian/skiff_VERSION-1_amd64.deb), which
#     the README installs; tests/package.rs installs and removes it.
say "building the Debian package"
deb=$(scripts/package-deb.sh)

# 5. The default guest image: Debian's cloud kernel plus an initramfs with the agent.
say "preparing the default guest image"
target/release/skiff image prepare
say "ready: sudo apt-get install ./$deb (then: skiff run -- uname -a), or without it: target/release/skiff run -- uname -a"
