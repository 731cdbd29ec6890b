/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The sockmap experiment of BENCHMARKS.md ("The proxy pair", "Kernel socket redirection"):
 * not part of Meshwork's datapath. sockops files every established IPv4 TCP socket of the
 * cgroup it is attached to in a sockhash by its 4-tuple; sk_msg, on the sockhash, hands what a
 * socket sends straight to its peer's receive queue (BPF_F_INGRESS) when the peer is there
 * too, skipping the TCP/IP stack; otherwise the data goes the normal way.
 *
 * Default: loopback only, keyed with the network namespace (127.0.0.1 repeats in every pod).
 * -DPOD_TO_POD: any address, the namespace only for loopback (pod addresses are unique on a
 * node), so two pods' sockets on one node are joined as well. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct key {
	__u64 netns;
	__u32 sip, dip, sport, dport; /* ports in host order */
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct key);
	__type(value, __u32);
	__uint(max_entries, 65536);
} socks SEC(".maps");

static __always_inline int loopback(__u32 addr)
{
	return (bpf_ntohl(addr) >> 24) == 127;
}

SEC("sockops")
int ops(struct bpf_sock_ops *s)
{
	if (s->family != 2 || (s->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
			       s->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB))
		return 1;
#ifndef POD_TO_POD
	if (!loopback(s->remote_ip4))
		return 1;
#endif
	struct key k = {
		.netns = loopback(s->remote_ip4) ? bpf_get_netns_cookie(s) : 0,
		.sip = s->local_ip4,
		.dip = s->remote_ip4,
		.sport = s->local_port,
		.dport = bpf_ntohl(s->remote_port),
	};
	bpf_sock_hash_update(s, &socks, &k, BPF_NOEXIST);
	return 1;
}

SEC("sk_msg")
int msg(struct sk_msg_md *m)
{
	struct key peer = {
		.netns = loopback(m->remote_ip4) ? bpf_get_netns_cookie(m) : 0,
		.sip = m->remote_ip4,
		.dip = m->local_ip4,
		.sport = bpf_ntohl(m->remote_port),
		.dport = m->local_port,
	};
	/* Without the peer the helper answers SK_DROP; SK_PASS sends the data the normal way. */
	bpf_msg_redirect_hash(m, &socks, &peer, BPF_F_INGRESS);
	return SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
