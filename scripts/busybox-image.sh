#!/usr/bin/env bash
# Builds an offline busybox image for the runtime integration tests, without any registry.
#
#   scripts/busybox-image.sh OUTDIR
#
# Produces OUTDIR/busybox-oci.tar (OCI archive, `podman save --format oci-archive`) holding the image
# $IMAGE_NAME (default localhost/meshwork-busybox:latest), and prints its path on stdout.
#   containerd: ctr --address SOCK -n k8s.io images import OUTDIR/busybox-oci.tar
#   podman:     podman --root R --runroot RR load -i OUTDIR/busybox-oci.tar
# Image: /bin/busybox (busybox-static) + every applet as a symlink, minimal /etc, no ENTRYPOINT,
# CMD = a pause-like loop that sleeps forever and exits 0 on SIGTERM/SIGINT (usable as the CRI
# sandbox_image; normal containers pass their own command).
# Podman runs with private storage (vfs) under OUTDIR/.podman, removed afterwards: nothing is
# written to /var/lib/containers or /run/containers. Idempotent: a stamp (busybox hash + this
# script's hash + image name) short-circuits a rebuild.
set -euo pipefail

OUT=${1:?usage: busybox-image.sh OUTDIR}
NAME=${IMAGE_NAME:-localhost/meshwork-busybox:latest}
BUSYBOX=${BUSYBOX:-/bin/busybox}
[[ -x $BUSYBOX ]] || { echo "busybox-image: $BUSYBOX missing (apt-get install busybox-static)" >&2; exit 1; }
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "busybox-image: $BUSYBOX is dynamically linked; need busybox-static" >&2; exit 1
fi
command -v podman >/dev/null || { echo "busybox-image: podman missing" >&2; exit 1; }

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ARCHIVE="$OUT/busybox-oci.tar"; STAMP="$ARCHIVE.stamp"
want="$(sha256sum "$BUSYBOX" | cut -d' ' -f1) $(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1) $NAME"
if [[ -s $ARCHIVE && -f $STAMP && "$(cat "$STAMP")" == "$want" ]]; then
  echo "$ARCHIVE"; exit 0
fi

WORK="$OUT/.build"
PODMAN_DIR="$OUT/.podman"
# containers/image keeps a blob-info cache in /var/lib/containers/cache for root whatever --root
# says (podman import and save both create it): remove it again if it was not there before.
[[ -e /var/lib/containers ]] && had_varlib=1 || had_varlib=0
cleanup() {
  rm -rf "$WORK" "$PODMAN_DIR"
  if ((!had_varlib)); then rm -rf /var/lib/containers; fi
}
trap cleanup EXIT
rm -rf "$WORK" "$PODMAN_DIR"
mkdir -p "$WORK/rootfs"

# --- rootfs -----------------------------------------------------------------------------------
R="$WORK/rootfs"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,var/tmp,root,home}
install -d -m 1777 "$R/tmp"
install -m 0755 "$BUSYBOX" "$R/bin/busybox"
# --list-full prints e.g. "usr/bin/nc"; link each applet to /bin/busybox.
"$BUSYBOX" --list-full | while read -r applet; do
  [[ $applet == bin/busybox ]] && continue
  mkdir -p "$R/$(dirname "$applet")"
  ln -sf /bin/busybox "$R/$applet"
done
cat > "$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$R/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo 'hosts: files dns' > "$R/etc/nsswitch.conf"
tar --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 -C "$R" -cf "$WORK/rootfs.tar" .

# --- podman import + save, private storage ----------------------------------------------------
mkdir -p "$PODMAN_DIR"/{root,run,tmp}
printf '[storage]\ndriver = "vfs"\nrunroot = "%s"\ngraphroot = "%s"\n' \
  "$PODMAN_DIR/run" "$PODMAN_DIR/root" > "$PODMAN_DIR/storage.conf"
# lock_type=file: else /dev/shm/libpod_lock; network_config_dir: else /etc/cni/net.d/cni.lock.
mkdir -p "$PODMAN_DIR/net.d"
cat > "$PODMAN_DIR/containers.conf" <<EOF
[network]
network_backend = "cni"
network_config_dir = "$PODMAN_DIR/net.d"
[engine]
tmp_dir = "$PODMAN_DIR/tmp"
events_logger = "none"
cgroup_manager = "cgroupfs"
runtime = "runc"
lock_type = "file"
EOF
pm() {
  CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf" CONTAINERS_CONF="$PODMAN_DIR/containers.conf" \
    podman --root "$PODMAN_DIR/root" --runroot "$PODMAN_DIR/run" --storage-driver vfs \
    --tmpdir "$PODMAN_DIR/tmp" --events-backend none "$@"
}
pm import --quiet \
  --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'WORKDIR /' \
  --change 'CMD ["/bin/sh", "-c", "trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"]' \
  "$WORK/rootfs.tar" "$NAME" >/dev/null
rm -f "$ARCHIVE.tmp"
pm save --quiet --format oci-archive -o "$ARCHIVE.tmp" "$NAME"
mv "$ARCHIVE.tmp" "$ARCHIVE"
echo "$want" > "$STAMP"
echo "$ARCHIVE"
