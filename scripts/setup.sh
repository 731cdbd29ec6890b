#!/usr/bin/env bash
# Installs what Meshwork needs on Debian 12, idempotently. Called by scripts/up.sh and
# scripts/test.sh; safe to run again (installs only what is missing).
set -euo pipefail

PACKAGES=(
  iproute2 iputils-ping iptables nftables kmod util-linux procps psmisc
  busybox-static              # offline images for lab pods and the runtime tests
  containernetworking-plugins # reference bridge/host-local/portmap: chaining test and benchmark peer
  containerd runc             # CRI path (the kubelet's) calling our plugin
  podman                      # `podman run --network` calling our plugin
  hyperfine jq                # benchmarks
  protobuf-compiler           # protoc for the CRI API client (k8s-cri) in the runtime tests
  clang-19 llvm-19 libbpf-dev bpftool  # eBPF datapath: C programs compiled at build time
  etcd-server                 # the API server's etcd store is tested against a real etcd
  bind9-dnsutils              # dig: the cluster DNS tests
  dnsperf knot                # the DNS benchmark and its peer
  nginx                       # the node runtime's catalog image "nginx" (Debian's, offline)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# kubectl: the API server tests and benchmark drive the versioned binary of the minor the server
# reports (1.33). These machines carry it in the google-cloud-cli kubectl package; Debian has no
# kubectl package, so a missing one is reported, not improvised.
KUBECTL=/usr/lib/google-cloud-sdk/bin/kubectl.1.33
[[ -x $KUBECTL ]] || { echo "setup: $KUBECTL missing (google-cloud-cli 'kubectl' package)" >&2; exit 1; }

# Rust toolchain pieces the suite uses.
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust 1.95 via rustup" >&2; exit 1; }
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

# podman/containerd install may enable services we don't want racing our tests.
systemctl disable --now containerd.service >/dev/null 2>&1 || true
# nginx's package starts a host nginx on :80; pods run their own, the host needs none.
systemctl disable --now nginx.service >/dev/null 2>&1 || true
# (without systemd the package's init script may have started it: its pid file is the host's)
[[ -s /run/nginx.pid ]] && kill "$(cat /run/nginx.pid)" 2>/dev/null || true
