/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Outbound interception for meshed pods, without iptables (Merbridge's shape): attached to a
 * meshed pod's cgroup,
 *
 * - connect4 sends the pod's TCP connections to its proxy's outbound port on 127.0.0.1 and
 *   keeps the original destination by socket cookie. Exempt: the proxy's own connections (its
 *   container's cgroup), loopback, UDP (the proxy carries TCP), DNS (port 53, over TCP too),
 *   and the ports and subnets the pod excludes. connect6 does the same for IPv4-mapped addresses on IPv6
 *   sockets, and refuses other IPv6 destinations (not carried yet: refused, not let past);
 * - sockops, when such a connection is established, files the original destination under
 *   (pod network namespace, the client's local port): what the proxy can see of it;
 * - getsockopt answers the proxy's SO_ORIGINAL_DST on the accepted socket from that entry,
 *   as netfilter's REDIRECT would.
 *
 * Which pods, their proxy, ports and subnets: mw_mesh_pods, mw_mesh_skip and
 * mw_mesh_skip_nets, written by the node
 * runtime (orchestrator/src/node/mesh.rs) before the pod's first container starts. A pod
 * without an entry is not intercepted. Inbound (sk_lookup, on the pod's network namespace)
 * is at the end of this file. IPv4 only: native IPv6 is refused outbound and dropped inbound. */
#include "lib/common.h"

#define MW_SOL_IP 0
#define MW_SO_ORIGINAL_DST 80
#define MW_AF_INET 2
#define MW_AF_INET6 10

/* A meshed pod, by its network namespace cookie. */
struct mw_mesh_pod {
	__u64 proxy_cgroup;   /* cgroup id of the proxy's container: not intercepted */
	__u16 outbound_port;  /* the proxy's outbound listener on 127.0.0.1, host order */
	__u16 pad[3];
};

/* An outbound port the pod excludes (config.meshwork.io/skip-outbound-ports). */
struct mw_mesh_skip_key {
	__u64 netns;
	__u16 port; /* host order */
	__u16 pad[3];
};

/* A subnet the pod excludes (config.meshwork.io/skip-subnets), as an LPM trie key: the
 * netns cookie's two halves always match in full (prefixlen = 64 + the subnet's length). */
struct mw_mesh_net_key {
	__u32 prefixlen;
	__u32 netns_lo;
	__u32 netns_hi;
	__be32 addr;
};

struct mw_mesh_orig {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* A redirected connection as the proxy sees it: the client's local port in its pod. */
struct mw_mesh_conn {
	__u64 netns;
	__u32 port; /* host order */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct mw_mesh_pod);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_mesh_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mw_mesh_skip_key);
	__type(value, __u8);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_mesh_skip SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct mw_mesh_net_key);
	__type(value, __u8);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_mesh_skip_nets SEC(".maps");

/* connect4 → sockops: by socket cookie, until the connection is established. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct mw_mesh_orig);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_mesh_pending SEC(".maps");

/* sockops → getsockopt: by (netns, client port), until the proxy asks. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mw_mesh_conn);
	__type(value, struct mw_mesh_orig);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_mesh_orig SEC(".maps");

#define MW_DNS_PORT 53

/* The pod's interception of this connect to `port` (host order), or NULL: not intercepted
 * (not a meshed pod, the proxy's own connection, not TCP, DNS, an excluded port). */
static __always_inline struct mw_mesh_pod *mw_mesh_target(struct bpf_sock_addr *ctx, __u64 netns,
							  __u16 port)
{
	struct mw_mesh_skip_key skip = {};
	struct mw_mesh_pod *pod;

	if (ctx->protocol != MW_IPPROTO_TCP || port == MW_DNS_PORT)
		return NULL;
	pod = bpf_map_lookup_elem(&mw_mesh_pods, &netns);
	if (!pod)
		return NULL;
	if (bpf_get_current_cgroup_id() == pod->proxy_cgroup)
		return NULL;
	skip.netns = netns;
	skip.port = port;
	if (bpf_map_lookup_elem(&mw_mesh_skip, &skip))
		return NULL;
	return pod;
}

/* Whether IPv4 `addr` is in a subnet the pod in `netns` excludes. */
static __always_inline int mw_mesh_skipped_net(__u64 netns, __be32 addr)
{
	struct mw_mesh_net_key k = {};

	k.prefixlen = 64 + 32;
	k.netns_lo = (__u32)netns;
	k.netns_hi = (__u32)(netns >> 32);
	k.addr = addr;
	return bpf_map_lookup_elem(&mw_mesh_skip_nets, &k) != NULL;
}

/* Files where the connect was going, by socket cookie; false when it cannot. */
static __always_inline int mw_mesh_keep(struct bpf_sock_addr *ctx, __be32 addr, __be16 port)
{
	struct mw_mesh_orig orig = {};
	__u64 cookie = bpf_get_socket_cookie(ctx);

	orig.addr = addr;
	orig.port = port;
	return bpf_map_update_elem(&mw_mesh_pending, &cookie, &orig, BPF_ANY) == 0;
}

SEC("cgroup/connect4")
int mw_mesh_connect4(struct bpf_sock_addr *ctx)
{
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct mw_mesh_pod *pod = mw_mesh_target(ctx, netns, port);

	if (!pod || (bpf_ntohl(ctx->user_ip4) >> 24) == 127 ||
	    mw_mesh_skipped_net(netns, ctx->user_ip4))
		return MW_SYS_PROCEED;
	if (!mw_mesh_keep(ctx, ctx->user_ip4, (__be16)ctx->user_port))
		return MW_SYS_REJECT; /* fail closed: never around the proxy */
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(pod->outbound_port);
	return MW_SYS_PROCEED;
}

/* ::ffff:a.b.c.d, as user_ip6 holds it (network order words). */
static __always_inline int mw_v4_mapped(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 &&
	       ctx->user_ip6[2] == bpf_htonl(0x0000ffff);
}

SEC("cgroup/connect6")
int mw_mesh_connect6(struct bpf_sock_addr *ctx)
{
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct mw_mesh_pod *pod = mw_mesh_target(ctx, netns, port);
	__u32 v4;

	if (!pod)
		return MW_SYS_PROCEED;
	/* ::1 */
	if (ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == 0 &&
	    ctx->user_ip6[3] == bpf_htonl(1))
		return MW_SYS_PROCEED;
	if (!mw_v4_mapped(ctx)) {
		/* Native IPv6 is not carried by the proxy yet: refused rather than let past it. */
		bpf_set_retval(-MW_ECONNREFUSED);
		return MW_SYS_REJECT;
	}
	v4 = ctx->user_ip6[3];
	if ((bpf_ntohl(v4) >> 24) == 127 || mw_mesh_skipped_net(netns, v4))
		return MW_SYS_PROCEED;
	if (!mw_mesh_keep(ctx, v4, (__be16)ctx->user_port))
		return MW_SYS_REJECT;
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
	ctx->user_ip6[3] = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(pod->outbound_port);
	return MW_SYS_PROCEED;
}

SEC("sockops")
int mw_mesh_sockops(struct bpf_sock_ops *skops)
{
	struct mw_mesh_orig *orig;
	struct mw_mesh_conn conn = {};
	__u64 cookie;

	/* A v6 socket to a v4-mapped address is filed the same way: the proxy's accepted socket
	 * sees the client's port either way. */
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB ||
	    (skops->family != MW_AF_INET && skops->family != MW_AF_INET6))
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	orig = bpf_map_lookup_elem(&mw_mesh_pending, &cookie);
	if (!orig)
		return 1;
	conn.netns = bpf_get_netns_cookie(skops);
	conn.port = skops->local_port;
	bpf_map_update_elem(&mw_mesh_orig, &conn, orig, BPF_ANY);
	bpf_map_delete_elem(&mw_mesh_pending, &cookie);
	return 1;
}

struct mw_sockaddr_in {
	__u16 family;
	__be16 port;
	__be32 addr;
	__u8 zero[8];
};

SEC("cgroup/getsockopt")
int mw_mesh_getsockopt(struct bpf_sockopt *ctx)
{
	struct mw_mesh_conn conn = {};
	struct mw_mesh_orig *orig;
	struct mw_sockaddr_in *sa;
	struct bpf_sock *sk;

	if (ctx->level != MW_SOL_IP || ctx->optname != MW_SO_ORIGINAL_DST)
		return 1;
	sk = ctx->sk;
	if (!sk)
		return 1;
	conn.netns = bpf_get_netns_cookie(ctx);
	conn.port = bpf_ntohs(sk->dst_port);
	orig = bpf_map_lookup_elem(&mw_mesh_orig, &conn);
	if (!orig)
		return 1;
	sa = ctx->optval;
	if ((void *)(sa + 1) > ctx->optval_end)
		return 1;
	sa->family = MW_AF_INET;
	sa->port = orig->port;
	sa->addr = orig->addr;
	__builtin_memset(sa->zero, 0, sizeof(sa->zero));
	/* Two 4-byte stores: clang would merge them into one 8-byte store the verifier refuses
	 * on this context. */
	ctx->optlen = sizeof(*sa);
	asm volatile("" ::: "memory");
	ctx->retval = 0;
	bpf_map_delete_elem(&mw_mesh_orig, &conn);
	return 1;
}

/* Inbound: a meshed pod's address, with its proxy's own ports (never steered). */
struct mw_mesh_in {
	__u16 inbound_port; /* host order */
	__u16 admin_port;
	__u32 pad;
};

/* An inbound port the pod excludes (config.meshwork.io/skip-inbound-ports). */
struct mw_mesh_in_skip_key {
	__be32 addr;
	__u16 port; /* host order */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, struct mw_mesh_in);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_mesh_in SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mw_mesh_in_skip_key);
	__type(value, __u8);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_mesh_in_skip SEC(".maps");

/* The injected proxy's inbound and admin ports (inject/src/lib.rs), for IPv6 addresses
 * that have no entry below. */
#define MW_PROXY_INBOUND_PORT 4143
#define MW_PROXY_ADMIN_PORT 4191

/* A meshed pod's IPv6 address → its IPv4 one (the key of the maps above). The proxy's inbound
 * listener is IPv4, which sk_lookup cannot hand an IPv6 connection to: native IPv6 to an app
 * port is dropped, not let past the proxy (as outbound refuses it). */
struct mw_in6_key {
	__u32 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mw_in6_key);
	__type(value, __be32);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_mesh_in6 SEC(".maps");

/* The proxy's inbound listener, by pod address (put here by the node runtime once the proxy
 * listens; the kernel drops it when the socket closes). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, __be32);
	__type(value, __u32); /* a socket fd on update */
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_mesh_in_socks SEC(".maps");

/* The source address of the proxy's own connections to its app (proxy/src/inbound/mod.rs,
 * APP_SOURCE): 127.0.0.6, as Istio's. */
#define MW_PROXY_APP_SOURCE 0x7f000006

/* Inbound, attached to a meshed pod's network namespace: a TCP connection to the pod's
 * address on an app port is handed to the proxy's inbound listener, the original
 * destination kept as the accepted socket's local address. The proxy relays it to the app on
 * that same address, from MW_PROXY_APP_SOURCE, which passes here: so a port the app binds on
 * 127.0.0.1 only is out of reach from outside, as without the mesh (nothing outside the pod
 * can send from a loopback address). The proxy's own ports and excluded ports pass.
 * Meshed but no listener registered (the proxy not started, or restarting): dropped, so
 * nothing reaches the app around its proxy. */
SEC("sk_lookup")
int mw_mesh_inbound(struct bpf_sk_lookup *ctx)
{
	struct mw_mesh_in_skip_key skip = {};
	struct mw_in6_key k6 = {};
	struct mw_mesh_in *cfg;
	struct bpf_sock *sk;
	__be32 addr, *v4;
	int native6 = 0;
	__u16 port;
	long err;

	if (ctx->protocol != MW_IPPROTO_TCP)
		return SK_PASS;
	if (ctx->family == MW_AF_INET && ctx->remote_ip4 == bpf_htonl(MW_PROXY_APP_SOURCE))
		return SK_PASS;
	if (ctx->family == MW_AF_INET6) {
		k6.addr[0] = ctx->local_ip6[0];
		k6.addr[1] = ctx->local_ip6[1];
		k6.addr[2] = ctx->local_ip6[2];
		k6.addr[3] = ctx->local_ip6[3];
		v4 = bpf_map_lookup_elem(&mw_mesh_in6, &k6);
		if (!v4) {
			/* This program runs only in meshed pods' namespaces: an IPv6 address
			 * without an entry (link-local, one added later) is still the pod's, and
			 * must not reach an app around the proxy. Loopback (the proxy's own hop)
			 * and the injected proxy's ports pass. */
			port = (__u16)ctx->local_port;
			if ((k6.addr[0] == 0 && k6.addr[1] == 0 && k6.addr[2] == 0 &&
			     k6.addr[3] == bpf_htonl(1)) ||
			    port == MW_PROXY_INBOUND_PORT || port == MW_PROXY_ADMIN_PORT)
				return SK_PASS;
			return SK_DROP;
		}
		/* The barriers keep clang from merging this load and the one below into one
		 * through a pointer chosen per branch: the verifier refuses a load through a
		 * ctx pointer plus an offset. */
		addr = *v4;
		asm volatile("" : "+r"(addr));
		native6 = 1;
	} else if (ctx->family == MW_AF_INET) {
		addr = ctx->local_ip4;
		asm volatile("" : "+r"(addr));
	} else {
		return SK_PASS;
	}
	cfg = bpf_map_lookup_elem(&mw_mesh_in, &addr);
	if (!cfg)
		return SK_PASS;
	port = (__u16)ctx->local_port;
	if (port == cfg->inbound_port || port == cfg->admin_port)
		return SK_PASS;
	skip.addr = addr;
	skip.port = port;
	if (bpf_map_lookup_elem(&mw_mesh_in_skip, &skip))
		return SK_PASS;
	if (native6)
		return SK_DROP;
	sk = bpf_map_lookup_elem(&mw_mesh_in_socks, &addr);
	if (!sk)
		return SK_DROP;
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
