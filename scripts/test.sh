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
# Leftovers of an interrupted earlier run (tests also sweep their own prefixes as they start).
for ns in $(ip netns list 2>/dev/null | awk '/^mwl-/{print $1}'); do ip netns del "$ns" || true; done
for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^mwrt-'); do
  ip link del "$l" || true
done
rm -rf /sys/fs/bpf/meshwork 2>/dev/null || true
for cg in /sys/fs/cgroup/unified/mwl-* /sys/fs/cgroup/*/mwrt; do
  [[ -d $cg ]] && { echo 1 > "$cg/cgroup.kill" 2>/dev/null || true; find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true; }
done

cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# The lab finds the plugin next to the test binaries; the runtime tests call the installed one.
cargo build --locked --workspace --bins
install -D -m 0755 "${CARGO_TARGET_DIR:-target}/debug/meshwork-cni" /opt/cni/bin/meshwork
exec cargo nextest run --locked --workspace --no-fail-fast
