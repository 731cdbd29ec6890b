#!/usr/bin/env bash
# The sockmap experiment of BENCHMARKS.md ("Kernel socket redirection"), on loopback: each
# measurement plain, then with sockmap.c attached to a cgroup of its own (cgroup v2) that the
# measured processes run in. Root; clang-19, bpftool, gcc. Removes what it made, also on error.
set -euo pipefail
cd "$(dirname "$0")"
work=
cg=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)/mwl-sockmap
pins=/sys/fs/bpf/mwl-sockmap
cleanup() {
	if [[ -d $cg ]]; then
		# A measurement that failed may leave its other half behind in the cgroup.
		echo 1 >"$cg/cgroup.kill" || true
		for _ in $(seq 50); do
			grep -q '^populated 0' "$cg/cgroup.events" && break
			sleep 0.1
		done
	fi
	for id in $(bpftool cgroup show "$cg" 2>/dev/null | awk '/sock_ops/ { print $1 }'); do
		bpftool cgroup detach "$cg" sock_ops id "$id" || true
	done
	if [[ -d $cg ]] && ! rmdir "$cg"; then
		echo "cannot remove $cg" >&2
	fi
	rm -rf "$pins" "$pins-maps" ${work:+"$work"}
}
trap cleanup EXIT
cleanup
work=$(mktemp -d)
clang-19 -target bpf -O2 -g -I/usr/include/"$(uname -m)"-linux-gnu -c sockmap.c -o "$work/sockmap.o"
gcc -O2 pingpong.c -o "$work/pingpong"
gcc -O2 backpressure.c -o "$work/backpressure"
mkdir "$cg"
bpftool prog loadall "$work/sockmap.o" "$pins" pinmaps "$pins-maps"
bpftool cgroup attach "$cg" sock_ops pinned "$pins/ops"
bpftool prog attach pinned "$pins/msg" msg_verdict pinned "$pins-maps/socks"
in_cgroup() { sh -c 'echo $$ > "$0/cgroup.procs"; exec "$@"' "$cg" "$@"; }
for round in 1 2 3; do
	echo "round $round, plain TCP:  $("$work/pingpong" 100000)"
	echo "round $round, sockmap:    $(in_cgroup "$work/pingpong" 100000)"
done
echo "plain TCP:"
"$work/backpressure"
echo "sockmap:"
in_cgroup "$work/backpressure"
