/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared basics: vendored uapi, wire headers, return codes. */
#ifndef MW_COMMON_H
#define MW_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MW_IPPROTO_TCP 6
#define MW_IPPROTO_UDP 17
#define MW_ETH_P_IP 0x0800

/* tc verdict: let the packet continue. */
#define MW_TC_ACT_OK 0
/* cgroup sock_addr verdicts. */
#define MW_SYS_REJECT 0
#define MW_SYS_PROCEED 1
/* tc verdict: drop (a half-rewritten packet must not leave). */
#define MW_TC_ACT_SHOT 2
#define MW_ECONNREFUSED 111

struct mw_ethhdr {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
} __attribute__((packed));

struct mw_iphdr {
	__u8 ihl_version;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

/* The first four bytes of TCP and UDP alike. */
struct mw_l4ports {
	__be16 source;
	__be16 dest;
};

#endif
