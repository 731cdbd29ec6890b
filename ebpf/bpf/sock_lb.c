/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-level load balancing on cgroup hooks, IPv4 and IPv6: a connect()/sendmsg() to a
 * frontend is rewritten to a backend once, at the socket; recvmsg()/getpeername() show the
 * frontend again. No per-packet NAT, no conntrack. (IPv4-mapped addresses on v6 sockets are not
 * translated: a v4 frontend is reached from v4 sockets.) */
#include "lib/common.h"
#include "lib/lb_maps.h"
#include "lib/lb.h"

/* A frontend with no usable backend: connect()/sendmsg() fail at once with ECONNREFUSED (what
 * kube-proxy's REJECT gives applications) instead of hanging on a dead VIP. */
static __always_inline int mw_reject(__u32 svc)
{
	mw_count(svc, 1);
	bpf_set_retval(-MW_ECONNREFUSED);
	return MW_SYS_REJECT;
}

static __always_inline int mw_xlate_fwd(struct bpf_sock_addr *ctx)
{
	struct mw_svc_key key = {
		.addr = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
		.proto = (__u8)ctx->protocol,
	};
	struct mw_svc *svc = bpf_map_lookup_elem(&mw_services, &key);
	__u32 backend_id = 0;

	if (!svc)
		return MW_SYS_PROCEED;

	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct mw_backend *be = mw_pick(svc, bpf_get_netns_cookie(ctx), mw_hash64(cookie), &backend_id);

	if (!be)
		return mw_reject(svc->id);

	struct mw_revnat_key rk = { .cookie = cookie, .addr = be->addr, .port = be->port };
	struct mw_revnat_val rv = { .addr = key.addr, .port = key.port };

	bpf_map_update_elem(&mw_revnat, &rk, &rv, BPF_ANY);
	ctx->user_ip4 = be->addr;
	ctx->user_port = be->port;
	mw_count(svc->id, 0);
	return MW_SYS_PROCEED;
}

static __always_inline int mw_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct mw_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct mw_revnat_val *rv = bpf_map_lookup_elem(&mw_revnat, &rk);

	if (rv) {
		ctx->user_ip4 = rv->addr;
		ctx->user_port = rv->port;
	}
	return MW_SYS_PROCEED;
}

SEC("cgroup/connect4")
int mw_connect4(struct bpf_sock_addr *ctx)
{
	return mw_xlate_fwd(ctx);
}

SEC("cgroup/sendmsg4")
int mw_sendmsg4(struct bpf_sock_addr *ctx)
{
	return mw_xlate_fwd(ctx);
}

SEC("cgroup/recvmsg4")
int mw_recvmsg4(struct bpf_sock_addr *ctx)
{
	return mw_xlate_rev(ctx);
}

SEC("cgroup/getpeername4")
int mw_getpeername4(struct bpf_sock_addr *ctx)
{
	return mw_xlate_rev(ctx);
}

static __always_inline int mw_xlate_fwd6(struct bpf_sock_addr *ctx)
{
	struct mw_svc6_key key = {
		.port = (__be16)ctx->user_port,
		.proto = (__u8)ctx->protocol,
	};
	__u32 backend_id = 0;

	key.addr[0] = ctx->user_ip6[0];
	key.addr[1] = ctx->user_ip6[1];
	key.addr[2] = ctx->user_ip6[2];
	key.addr[3] = ctx->user_ip6[3];
	struct mw_svc *svc = bpf_map_lookup_elem(&mw_services6, &key);

	if (!svc)
		return MW_SYS_PROCEED;

	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct mw_backend6 *be = NULL;

	be = MW_PICK(svc, bpf_get_netns_cookie(ctx), mw_hash64(cookie), &backend_id, &mw_backends6);
	if (!be)
		return mw_reject(svc->id);

	struct mw_revnat6_key rk = { .cookie = cookie, .port = be->port };
	struct mw_revnat6_val rv = { .port = key.port };

	__builtin_memcpy(rk.addr, be->addr, sizeof(rk.addr));
	__builtin_memcpy(rv.addr, key.addr, sizeof(rv.addr));
	bpf_map_update_elem(&mw_revnat6, &rk, &rv, BPF_ANY);
	ctx->user_ip6[0] = be->addr[0];
	ctx->user_ip6[1] = be->addr[1];
	ctx->user_ip6[2] = be->addr[2];
	ctx->user_ip6[3] = be->addr[3];
	ctx->user_port = be->port;
	mw_count(svc->id, 0);
	return MW_SYS_PROCEED;
}

static __always_inline int mw_xlate_rev6(struct bpf_sock_addr *ctx)
{
	struct mw_revnat6_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.port = (__be16)ctx->user_port,
	};

	rk.addr[0] = ctx->user_ip6[0];
	rk.addr[1] = ctx->user_ip6[1];
	rk.addr[2] = ctx->user_ip6[2];
	rk.addr[3] = ctx->user_ip6[3];
	struct mw_revnat6_val *rv = bpf_map_lookup_elem(&mw_revnat6, &rk);

	if (rv) {
		ctx->user_ip6[0] = rv->addr[0];
		ctx->user_ip6[1] = rv->addr[1];
		ctx->user_ip6[2] = rv->addr[2];
		ctx->user_ip6[3] = rv->addr[3];
		ctx->user_port = rv->port;
	}
	return MW_SYS_PROCEED;
}

SEC("cgroup/connect6")
int mw_connect6(struct bpf_sock_addr *ctx)
{
	return mw_xlate_fwd6(ctx);
}

SEC("cgroup/sendmsg6")
int mw_sendmsg6(struct bpf_sock_addr *ctx)
{
	return mw_xlate_fwd6(ctx);
}

SEC("cgroup/recvmsg6")
int mw_recvmsg6(struct bpf_sock_addr *ctx)
{
	return mw_xlate_rev6(ctx);
}

SEC("cgroup/getpeername6")
int mw_getpeername6(struct bpf_sock_addr *ctx)
{
	return mw_xlate_rev6(ctx);
}

char _license[] SEC("license") = "Dual BSD/GPL";
