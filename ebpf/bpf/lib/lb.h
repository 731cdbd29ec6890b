/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Backend selection: affinity, then random or Maglev over the service's slot table. */
#ifndef MW_LB_H
#define MW_LB_H

#include "lb_maps.h"

static __always_inline __u32 mw_hash64(__u64 v)
{
	/* splitmix64 finaliser: cheap, well mixed. */
	v ^= v >> 30;
	v *= 0xbf58476d1ce4e5b9ULL;
	v ^= v >> 27;
	v *= 0x94d049bb133111ebULL;
	v ^= v >> 31;
	return (__u32)v;
}

/* A new connection (or datagram flow) was translated, or could not be (no backend). */
static __always_inline void mw_count(__u32 svc, int failed)
{
	struct mw_stats *st = bpf_map_lookup_elem(&mw_stats, &svc);

	if (!st)
		return;
	if (failed)
		__sync_fetch_and_add(&st->no_backend, 1);
	else
		__sync_fetch_and_add(&st->connects, 1);
}

/* A packet of a translated flow (tc path, where bytes are visible). */
static __always_inline void mw_count_bytes(__u32 svc, __u64 bytes)
{
	struct mw_stats *st = bpf_map_lookup_elem(&mw_stats, &svc);

	if (!st)
		return;
	__sync_fetch_and_add(&st->packets, 1);
	__sync_fetch_and_add(&st->bytes, bytes);
}

/* Picks a backend id for `client` (affinity identity) with `hash` (Maglev key); the caller
 * looks the id up in its family's backend map. -1: no usable backend, fail fast. */
static __always_inline int mw_pick_id(struct mw_svc *svc, __u64 client, __u32 hash, __u32 *backend_id)
{
	struct mw_aff_key ak = { .client = client, .svc = svc->id };
	__u64 now = 0;
	__u32 bid;

	if (svc->backends == 0 || svc->slots == 0)
		return -1;

	if (svc->affinity_secs) {
		struct mw_aff_val *av = bpf_map_lookup_elem(&mw_affinity, &ak);

		now = bpf_ktime_get_ns();
		if (av && now - av->last_ns < (__u64)svc->affinity_secs * 1000000000ULL) {
			struct mw_member_key mk = { .svc = svc->id, .backend = av->backend };

						/* Still a member of this service? Affinity never resurrects a removed backend.
			 * (If the member's backend itself is gone, MW_PICK picks again without
			 * affinity.) */
			if (bpf_map_lookup_elem(&mw_members, &mk)) {
				av->last_ns = now;
				*backend_id = av->backend;
				return 0;
			}
		}
	}

	if (svc->algo == MW_ALGO_MAGLEV) {
		__u32 table = svc->table;
		struct mw_maglev *t = bpf_map_lookup_elem(&mw_maglev, &table);
		__u32 idx = hash % MW_MAGLEV_SIZE;

		/* The compiler knows `%` bounds idx and would drop the check below; the verifier
		 * does not, and needs it. The empty asm hides idx from the optimiser. */
		asm volatile("" : "+r"(idx));
		if (!t || idx >= MW_MAGLEV_SIZE)
			return -1;
		bid = t->slot[idx];
	} else {
		struct mw_slot_key sk = { .table = svc->table, .slot = bpf_get_prandom_u32() % svc->slots };
		__u32 *id = bpf_map_lookup_elem(&mw_slots, &sk);

		if (!id)
			return -1;
		bid = *id;
	}
	if (svc->affinity_secs) {
		struct mw_aff_val nv = { .last_ns = now, .backend = bid };

		bpf_map_update_elem(&mw_affinity, &ak, &nv, BPF_ANY);
	}
	*backend_id = bid;
	return 0;
}

/* Picks and resolves a backend in `backends` (mw_backends or mw_backends6). If the affinity
 * entry names a backend that is gone (a crash between an update's switch and its cleanup), it
 * picks once more without affinity. Old slot tables and backends are freed by userspace only
 * after a grace period, so a pick from a service entry read just before an update still finds
 * them. Arguments are evaluated once. */
#define MW_PICK(svc, client, hash, backend_id, backends)                                  \
	({                                                                                 \
		struct mw_svc *__svc = (svc);                                              \
		__u64 __client = (client);                                                 \
		__u32 __hash = (hash);                                                     \
		void *__be = NULL;                                                         \
		if (!mw_pick_id(__svc, __client, __hash, backend_id))                     \
			__be = bpf_map_lookup_elem(backends, backend_id);                  \
		if (!__be && __svc->affinity_secs) {                                       \
			struct mw_svc __tmp = *__svc;                                      \
			__tmp.affinity_secs = 0;                                           \
			if (!mw_pick_id(&__tmp, __client, __hash, backend_id))             \
				__be = bpf_map_lookup_elem(backends, backend_id);          \
		}                                                                          \
		__be;                                                                      \
	})

/* IPv4 convenience: pick and resolve in mw_backends. */
static __always_inline struct mw_backend *mw_pick(struct mw_svc *svc, __u64 client, __u32 hash,
						   __u32 *backend_id)
{
	return MW_PICK(svc, client, hash, backend_id, &mw_backends);
}

#endif
