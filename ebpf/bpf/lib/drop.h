/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Why the datapath refused a connect or dropped a packet, counted per reason (per CPU) in
 * mw_drops. The values are ABI, mirrored by abi::DropReason in Rust and checked by the
 * BPF_PROG_RUN tests (ebpf/tests/prog_run.rs): append only, never renumber. */
#ifndef MW_DROP_H
#define MW_DROP_H

#include "common.h"

enum mw_drop_reason {
	/* A frontend with no usable backend: the socket hook refuses the connect (ECONNREFUSED). */
	MW_DROP_NO_BACKEND = 1,
	/* tc: every SNAT source port tried for a new flow to a remote backend was taken. */
	MW_DROP_SNAT_EXHAUSTED = 2,
	/* tc: a checksum or store helper failed half way through a rewrite (the packet must not
	 * leave half translated). */
	MW_DROP_REWRITE_FAILED = 3,
	MW_DROP_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, MW_DROP_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_drops SEC(".maps");

static __always_inline void mw_drop(enum mw_drop_reason reason)
{
	__u32 k = reason;
	__u64 *n = bpf_map_lookup_elem(&mw_drops, &k);

	if (n)
		*n += 1;
}

#endif
