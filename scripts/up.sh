#!/usr/bin/env bash
# The main job: build the release binaries, install the CNI plugin, then `mesh-ctl up` — a
# local cluster (lab nodes in network namespaces, API server, a node runtime and a control
# agent per node, cluster DNS, the mesh identity service, the proxy injector) that keeps
# running until `mesh-ctl down`. Extra arguments go to `mesh-ctl up` (e.g. --nodes 3, --monitoring).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# mesh-ctl finds the binaries it runs next to itself (mesh-ctl/src/addons.rs, IMAGES).
cargo build --release --locked -p meshwork-cni -p mesh-ctl -p meshwork-orchestrator \
  -p meshwork-control -p meshwork-dns -p meshwork-identity -p meshwork-inject -p meshwork-proxy
target=${CARGO_TARGET_DIR:-target}/release
install -D -m 0755 "$target/meshwork-cni" /opt/cni/bin/meshwork
# `mesh-ctl status|logs|down` from any directory (the link resolves to the build dir).
ln -sfn "$(realpath "$target/mesh-ctl")" /usr/local/bin/mesh-ctl
exec "$target/mesh-ctl" up --cni-plugin /opt/cni/bin/meshwork "$@"
