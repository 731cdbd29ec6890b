#!/usr/bin/env bash
# The whole suite: lints, then every test (unit, lab, real runtimes) under nextest. Needs root:
# the lab builds network namespaces and the runtime tests start containerd and podman.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [[ $(id -u) != 0 ]]; then
  echo "scripts/test.sh: the suite builds network namespaces and needs root" >&2
  exit 1
fi
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# The lab finds the plugin next to the test binaries; the runtime tests call the installed one.
cargo build --locked --workspace --bins
install -D -m 0755 "${CARGO_TARGET_DIR:-target}/debug/meshwork-cni" /opt/cni/bin/meshwork
exec cargo nextest run --locked --workspace --no-fail-fast
