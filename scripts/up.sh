#!/usr/bin/env bash
# The main job: build and install the CNI plugin, then `mesh-ctl up` — a two-node lab cluster
# whose pods talk over the VXLAN overlay, with the API server, a control agent per node and
# cluster DNS on it. Extra arguments go to `mesh-ctl up` (e.g. --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# mesh-ctl finds meshwork-control, meshwork-dns and mwlab-client next to itself.
cargo build --release --locked -p meshwork-cni -p mesh-ctl -p meshwork-control -p meshwork-dns -p meshwork-lab
install -D -m 0755 "${CARGO_TARGET_DIR:-target}/release/meshwork-cni" /opt/cni/bin/meshwork
exec "${CARGO_TARGET_DIR:-target}/release/mesh-ctl" up --cni-plugin /opt/cni/bin/meshwork "$@"
