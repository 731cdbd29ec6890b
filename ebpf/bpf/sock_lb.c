/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-level load balancing on cgroup hooks: a connect()/sendmsg() to a frontend is rewritten
 * to a backend once, at the socket; recvmsg()/getpeername() show the frontend again. No
 * per-packet NAT, no conntrack. */
#include "lib/common.h"
#include "lib/lb_maps.h"
#include "lib/lb.h"

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

	if (!be) {
		/* connect()/sendmsg() fail at once (EPERM) instead of hanging on a dead VIP. */
		mw_count(svc->id, 1, 0);
		return MW_SYS_REJECT;
	}

	struct mw_revnat_key rk = { .cookie = cookie, .addr = be->addr, .port = be->port };
	struct mw_revnat_val rv = { .addr = key.addr, .port = key.port };

	bpf_map_update_elem(&mw_revnat, &rk, &rv, BPF_ANY);
	ctx->user_ip4 = be->addr;
	ctx->user_port = be->port;
	mw_count(svc->id, 0, 0);
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

char _license[] SEC("license") = "Dual BSD/GPL";
