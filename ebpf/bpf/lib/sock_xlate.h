/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The socket LB's decision, apart from the hook's context: what a connect()/sendmsg() to
 * addr:port/proto from socket `cookie` in network namespace `netns_cookie` becomes, and what
 * recvmsg()/getpeername() show for a translated peer. sock_lb.c copies the hook's context in
 * and out; the BPF_PROG_RUN test object (bpf/tests/sock_lb_test.c) runs the same functions on
 * values the test chooses. */
#ifndef MW_SOCK_XLATE_H
#define MW_SOCK_XLATE_H

#include "common.h"
#include "drop.h"
#include "lb_maps.h"
#include "lb.h"

struct mw_sock4 {
	__u64 cookie;
	__u64 netns_cookie;
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct mw_sock6 {
	__u64 cookie;
	__u64 netns_cookie;
	__be32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* Forward: 0 with s->addr/port rewritten to a backend (or untouched: not a frontend);
 * -1: the frontend has no usable backend (counted; the hook refuses the connect). */
static __always_inline int mw_sock_fwd4(struct mw_sock4 *s)
{
	struct mw_svc_key key = { .addr = s->addr, .port = s->port, .proto = s->proto };
	struct mw_svc *svc = bpf_map_lookup_elem(&mw_services, &key);
	__u32 backend_id = 0;

	if (!svc)
		return 0;
	struct mw_backend *be = mw_pick(svc, s->netns_cookie, mw_hash64(s->cookie), &backend_id);

	if (!be) {
		mw_count(svc->id, 1);
		mw_drop(MW_DROP_NO_BACKEND);
		return -1;
	}
	struct mw_revnat_key rk = { .cookie = s->cookie, .addr = be->addr, .port = be->port };
	struct mw_revnat_val rv = { .addr = key.addr, .port = key.port };

	bpf_map_update_elem(&mw_revnat, &rk, &rv, BPF_ANY);
	s->addr = be->addr;
	s->port = be->port;
	mw_count(svc->id, 0);
	return 0;
}

/* Reverse: a translated peer shows as the frontend the socket asked for. */
static __always_inline void mw_sock_rev4(struct mw_sock4 *s)
{
	struct mw_revnat_key rk = { .cookie = s->cookie, .addr = s->addr, .port = s->port };
	struct mw_revnat_val *rv = bpf_map_lookup_elem(&mw_revnat, &rk);

	if (rv) {
		s->addr = rv->addr;
		s->port = rv->port;
	}
}

static __always_inline int mw_sock_fwd6(struct mw_sock6 *s)
{
	struct mw_svc6_key key = { .port = s->port, .proto = s->proto };
	__u32 backend_id = 0;

	__builtin_memcpy(key.addr, s->addr, sizeof(key.addr));
	struct mw_svc *svc = bpf_map_lookup_elem(&mw_services6, &key);

	if (!svc)
		return 0;
	struct mw_backend6 *be = MW_PICK(svc, s->netns_cookie, mw_hash64(s->cookie), &backend_id,
					 &mw_backends6);

	if (!be) {
		mw_count(svc->id, 1);
		mw_drop(MW_DROP_NO_BACKEND);
		return -1;
	}
	struct mw_revnat6_key rk = { .cookie = s->cookie, .port = be->port };
	struct mw_revnat6_val rv = { .port = key.port };

	__builtin_memcpy(rk.addr, be->addr, sizeof(rk.addr));
	__builtin_memcpy(rv.addr, key.addr, sizeof(rv.addr));
	bpf_map_update_elem(&mw_revnat6, &rk, &rv, BPF_ANY);
	__builtin_memcpy(s->addr, be->addr, sizeof(s->addr));
	s->port = be->port;
	mw_count(svc->id, 0);
	return 0;
}

static __always_inline void mw_sock_rev6(struct mw_sock6 *s)
{
	struct mw_revnat6_key rk = { .cookie = s->cookie, .port = s->port };

	__builtin_memcpy(rk.addr, s->addr, sizeof(rk.addr));
	struct mw_revnat6_val *rv = bpf_map_lookup_elem(&mw_revnat6, &rk);

	if (rv) {
		__builtin_memcpy(s->addr, rv->addr, sizeof(s->addr));
		s->port = rv->port;
	}
}

#endif
