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
# One suite run at a time on a machine: the sweep below must never hit another run's state.
exec 9>/run/meshwork-test.lock
flock -n 9 || { echo "scripts/test.sh: another test run holds /run/meshwork-test.lock" >&2; exit 1; }

# Leftovers of an interrupted earlier run, by test prefixes only (tests also sweep their own
# prefix as they start). A user's `mesh-ctl up` cluster (lab name `mesh`: mwl-mesh-*) is not
# ours; test labs never use that prefix (mesh_ctl_up's is mwl-mesh_ctl_up-).
for ns in $(ip netns list 2>/dev/null | awk '/^mwl-/ && !/^mwl-mesh-/{print $1}'); do
  ip netns del "$ns" || true
done
for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^mwrt-'); do
  ip link del "$l" || true
done
for pin in /sys/fs/bpf/meshwork/mwl-*; do
  [[ -e $pin && $pin != /sys/fs/bpf/meshwork/mwl-mesh-* ]] || continue
  rm -rf "$pin" 2>/dev/null || true
done
rmdir /sys/fs/bpf/meshwork 2>/dev/null || true
cg2=$(findmnt -n -o TARGET -t cgroup2 | head -1)
for cg in "$cg2"/mwl-* /sys/fs/cgroup/mwrt /sys/fs/cgroup/*/mwrt; do
  [[ -d $cg && $cg != "$cg2"/mwl-mesh-* ]] || continue
  echo 1 > "$cg/cgroup.kill" 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do grep -q 'populated 1' "$cg/cgroup.events" 2>/dev/null || break; sleep 0.1; done
  find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done

cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# The lab finds the plugin next to the test binaries; the runtime tests call the installed one.
cargo build --locked --workspace --bins
install -D -m 0755 "${CARGO_TARGET_DIR:-target}/debug/meshwork-cni" /opt/cni/bin/meshwork
exec cargo nextest run --locked --workspace --no-fail-fast
