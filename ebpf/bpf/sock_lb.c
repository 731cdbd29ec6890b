/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-level load balancing on cgroup hooks, IPv4 and IPv6: a connect()/sendmsg() to a
 * frontend is rewritten to a backend once, at the socket; recvmsg()/getpeername() show the
 * frontend again. No per-packet NAT, no conntrack. (IPv4-mapped addresses on v6 sockets are not
 * translated: a v4 frontend is reached from v4 sockets.) */
#include "lib/common.h"
#include "lib/lb_maps.h"
#include "lib/lb.h"
#include "lib/sock_xlate.h"

/* A frontend with no usable backend: connect()/sendmsg() fail at once with ECONNREFUSED (what
 * kube-proxy's REJECT gives applications) instead of hanging on a dead VIP. */
static __always_inline int mw_reject(void)
{
	bpf_set_retval(-MW_ECONNREFUSED);
	return MW_SYS_REJECT;
}

/* The hooks copy their context into the decision's arguments and back (lib/sock_xlate.h). */
static __always_inline struct mw_sock4 mw_sock4_of(struct bpf_sock_addr *ctx)
{
	struct mw_sock4 s = {
		.cookie = bpf_get_socket_cookie(ctx),
		.netns_cookie = bpf_get_netns_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
		.proto = (__u8)ctx->protocol,
	};
	return s;
}

static __always_inline int mw_xlate_fwd(struct bpf_sock_addr *ctx)
{
	struct mw_sock4 s = mw_sock4_of(ctx);
	__be32 addr = s.addr;
	__be16 port = s.port;

	if (mw_sock_fwd4(&s))
		return mw_reject();
	if (s.addr != addr || s.port != port) {
		ctx->user_ip4 = s.addr;
		ctx->user_port = s.port;
	}
	return MW_SYS_PROCEED;
}

static __always_inline int mw_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct mw_sock4 s = mw_sock4_of(ctx);
	__be32 addr = s.addr;
	__be16 port = s.port;

	mw_sock_rev4(&s);
	if (s.addr != addr || s.port != port) {
		ctx->user_ip4 = s.addr;
		ctx->user_port = s.port;
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

static __always_inline struct mw_sock6 mw_sock6_of(struct bpf_sock_addr *ctx)
{
	struct mw_sock6 s = {
		.cookie = bpf_get_socket_cookie(ctx),
		.netns_cookie = bpf_get_netns_cookie(ctx),
		.port = (__be16)ctx->user_port,
		.proto = (__u8)ctx->protocol,
	};

	s.addr[0] = ctx->user_ip6[0];
	s.addr[1] = ctx->user_ip6[1];
	s.addr[2] = ctx->user_ip6[2];
	s.addr[3] = ctx->user_ip6[3];
	return s;
}

/* The context's user_ip6 takes 4-byte writes only. */
static __always_inline void mw_sock6_to(struct bpf_sock_addr *ctx, struct mw_sock6 *s)
{
	ctx->user_ip6[0] = s->addr[0];
	ctx->user_ip6[1] = s->addr[1];
	ctx->user_ip6[2] = s->addr[2];
	ctx->user_ip6[3] = s->addr[3];
	ctx->user_port = s->port;
}

static __always_inline int mw_xlate_fwd6(struct bpf_sock_addr *ctx)
{
	struct mw_sock6 s = mw_sock6_of(ctx);
	__u32 svc_port = s.port;

	if (mw_sock_fwd6(&s))
		return mw_reject();
	/* Unchanged port and address: not a frontend (a backend never is one). */
	if (s.port != svc_port || s.addr[0] != ctx->user_ip6[0] || s.addr[1] != ctx->user_ip6[1] ||
	    s.addr[2] != ctx->user_ip6[2] || s.addr[3] != ctx->user_ip6[3])
		mw_sock6_to(ctx, &s);
	return MW_SYS_PROCEED;
}

static __always_inline int mw_xlate_rev6(struct bpf_sock_addr *ctx)
{
	struct mw_sock6 s = mw_sock6_of(ctx);
	__u32 port = s.port;

	mw_sock_rev6(&s);
	if (s.port != port || s.addr[0] != ctx->user_ip6[0] || s.addr[1] != ctx->user_ip6[1] ||
	    s.addr[2] != ctx->user_ip6[2] || s.addr[3] != ctx->user_ip6[3])
		mw_sock6_to(ctx, &s);
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
