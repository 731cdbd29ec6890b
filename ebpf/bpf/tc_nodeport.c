/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* NodePort, ExternalIPs and ClusterIPs for traffic arriving from outside the node: tc on the
 * node's uplink. Ingress DNATs a packet for a frontend to a backend (the flow stays on its
 * backend through mw_np_fwd); egress rewrites a local backend's replies back to the frontend
 * through mw_np_rev. A flow to a backend on another node (MW_BACKEND_REMOTE) is also SNATed to
 * the node's address and an allocated port (mw_np_cfg, mw_np_snat), so the backend replies to
 * this node: that reply arrives on the uplink's ingress and is translated back to the client,
 * from the frontend. Local connects to NodeIP:nodePort never get here: the socket hooks
 * translate them. */
#include "lib/common.h"
#include "lib/lb_maps.h"
#include "lib/lb.h"
#include "lib/drop.h"

#define MW_ETH_LEN 14
#define MW_IP_CSUM_OFF (MW_ETH_LEN + 10)
#define MW_IP_SADDR_OFF (MW_ETH_LEN + 12)
#define MW_IP_DADDR_OFF (MW_ETH_LEN + 16)
#define MW_L4_OFF (MW_ETH_LEN + 20)
#define MW_TCP_CSUM_OFF (MW_L4_OFF + 16)
#define MW_UDP_CSUM_OFF (MW_L4_OFF + 6)

struct mw_pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u32 len;
};

/* IPv4 TCP/UDP without IP options or fragments; anything else is not ours. */
static __always_inline int mw_parse(struct __sk_buff *skb, struct mw_pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct mw_ethhdr *eth = data;
	struct mw_iphdr *ip;
	struct mw_l4ports *l4;

	if ((void *)(eth + 1) > end || eth->proto != bpf_htons(MW_ETH_P_IP))
		return -1;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl_version != 0x45)
		return -1;
	if (ip->frag_off & bpf_htons(0x3fff))
		return -1;
	if (ip->protocol != MW_IPPROTO_TCP && ip->protocol != MW_IPPROTO_UDP)
		return -1;
	l4 = (void *)(ip + 1);
	if ((void *)(l4 + 1) > end)
		return -1;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->sport = l4->source;
	p->dport = l4->dest;
	p->proto = ip->protocol;
	p->len = skb->len;
	return 0;
}

/* Rewrites one address and port (source or destination) with checksum fix-ups. */
static __always_inline int mw_rewrite(struct __sk_buff *skb, struct mw_pkt *p, int dst,
				      __be32 addr, __be16 port)
{
	__be32 old_addr = dst ? p->daddr : p->saddr;
	__be16 old_port = dst ? p->dport : p->sport;
	int addr_off = dst ? MW_IP_DADDR_OFF : MW_IP_SADDR_OFF;
	int port_off = MW_L4_OFF + (dst ? 2 : 0);
	int csum_off = p->proto == MW_IPPROTO_TCP ? MW_TCP_CSUM_OFF : MW_UDP_CSUM_OFF;
	/* UDP checksum 0 means "none" and must stay 0. */
	__u64 mangled = p->proto == MW_IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (bpf_l4_csum_replace(skb, csum_off, old_addr, addr, BPF_F_PSEUDO_HDR | mangled | 4))
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, old_port, port, mangled | 2))
		return -1;
	if (bpf_l3_csum_replace(skb, MW_IP_CSUM_OFF, old_addr, addr, 4))
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &addr, 4, 0))
		return -1;
	if (bpf_skb_store_bytes(skb, port_off, &port, 2, 0))
		return -1;
	return 0;
}

/* SNAT port candidates tried per new flow before it is dropped. */
#define MW_SNAT_TRIES 8

/* The node's SNAT settings, or NULL if SNAT is off. */
static __always_inline struct mw_np_cfg *mw_snat_cfg(void)
{
	__u32 zero = 0;
	struct mw_np_cfg *cfg = bpf_map_lookup_elem(&mw_np_cfg, &zero);

	if (!cfg || !cfg->snat_addr || cfg->snat_port_min == 0 ||
	    cfg->snat_port_max < cfg->snat_port_min)
		return NULL;
	return cfg;
}

/* A remote backend's reply to a SNATed flow (it arrives here because the backend replies to
 * the node address): back to the client, from the frontend. 1: translated, 0: not ours. */
static __always_inline int mw_snat_reply(struct __sk_buff *skb, struct mw_pkt *p,
					 struct mw_flow_key *k)
{
	struct mw_np_cfg *cfg = mw_snat_cfg();

	/* Only packets to the SNAT address can be replies: skip the lookup for the rest. */
	if (!cfg || p->daddr != cfg->snat_addr)
		return 0;
	struct mw_snat_val *sv = bpf_map_lookup_elem(&mw_np_snat, k);

	if (!sv)
		return 0;
	struct mw_snat_val v = *sv;

	if (mw_rewrite(skb, p, 1, v.client_addr, v.client_port) ||
	    mw_rewrite(skb, p, 0, v.front_addr, v.front_port))
		return -1;
	return 1;
}

/* The reverse entry of a SNATed flow, keyed as the backend's reply arrives. */
static __always_inline struct mw_flow_key mw_snat_key(struct mw_pkt *p, struct mw_flow_val *c)
{
	struct mw_flow_key rk = {
		.saddr = c->addr, .daddr = c->nat_addr, .sport = c->port, .dport = c->nat_port,
		.proto = p->proto,
	};
	return rk;
}

/* Allocates a source port on the node address for a new flow to a remote backend: a random
 * candidate in the range, reserved by inserting its reverse entry BPF_NOEXIST (the key holds
 * the backend, so ports are per backend address:port). -1: every try collided. */
static __always_inline int mw_snat_alloc(struct mw_pkt *p, struct mw_flow_val *c,
					 struct mw_np_cfg *cfg)
{
	struct mw_snat_val sv = {
		.client_addr = p->saddr, .front_addr = p->daddr,
		.client_port = p->sport, .front_port = p->dport, .svc = c->svc,
	};
	__u32 min = cfg->snat_port_min;
	__u32 range = (__u32)cfg->snat_port_max - min + 1;

	c->nat_addr = cfg->snat_addr;
	for (int i = 0; i < MW_SNAT_TRIES; i++) {
		c->nat_port = bpf_htons((__u16)(min + bpf_get_prandom_u32() % range));
		struct mw_flow_key rk = mw_snat_key(p, c);

		if (!bpf_map_update_elem(&mw_np_snat, &rk, &sv, BPF_NOEXIST))
			return 0;
	}
	c->nat_addr = 0;
	c->nat_port = 0;
	return -1;
}

/* A packet of an established SNATed flow: its reverse entry must still be there (the LRU may
 * have evicted it under pressure; the lookup also marks it used). */
static __always_inline void mw_snat_keep(struct mw_pkt *p, struct mw_flow_val *c)
{
	struct mw_flow_key rk = mw_snat_key(p, c);

	if (bpf_map_lookup_elem(&mw_np_snat, &rk))
		return;
	struct mw_snat_val sv = {
		.client_addr = p->saddr, .front_addr = p->daddr,
		.client_port = p->sport, .front_port = p->dport, .svc = c->svc,
	};

	bpf_map_update_elem(&mw_np_snat, &rk, &sv, BPF_NOEXIST);
}

SEC("classifier")
int mw_nodeport_in(struct __sk_buff *skb)
{
	struct mw_pkt p = {};
	__u32 backend_id = 0;

	if (mw_parse(skb, &p))
		return MW_TC_ACT_OK;

	struct mw_flow_key fk = {
		.saddr = p.saddr, .daddr = p.daddr, .sport = p.sport, .dport = p.dport, .proto = p.proto,
	};
	int reply = mw_snat_reply(skb, &p, &fk);

	if (reply < 0) {
		mw_drop(MW_DROP_REWRITE_FAILED);
		return MW_TC_ACT_SHOT;
	}
	if (reply)
		return MW_TC_ACT_OK;

	struct mw_flow_val *fv = bpf_map_lookup_elem(&mw_np_fwd, &fk);
	struct mw_flow_val chosen = {};

	if (fv) {
		chosen = *fv;
		if (chosen.nat_port)
			mw_snat_keep(&p, &chosen);
	} else {
		struct mw_svc_key key = { .addr = p.daddr, .port = p.dport, .proto = p.proto };
		struct mw_svc *svc = bpf_map_lookup_elem(&mw_services, &key);

		if (!svc)
			return MW_TC_ACT_OK;
		/* Maglev key: the whole flow, so a flow keeps its backend across backend churn. */
		__u64 h = ((__u64)p.saddr << 32 | p.daddr) ^ ((__u64)p.sport << 16 | p.dport) ^ p.proto;
		struct mw_backend *be = mw_pick(svc, p.saddr, mw_hash64(h), &backend_id);

		if (!be) {
			mw_count(svc->id, 1);
			return MW_TC_ACT_OK;
		}
		chosen.addr = be->addr;
		chosen.port = be->port;
		chosen.svc = svc->id;
		/* A backend on another node would reply to the client directly, past this node's
		 * reverse NAT: SNAT the flow to the node (externalTrafficPolicy Cluster). Local
		 * backends see the client's address. */
		if (be->flags & MW_BACKEND_REMOTE) {
			struct mw_np_cfg *cfg = mw_snat_cfg();

			if (cfg && mw_snat_alloc(&p, &chosen, cfg)) {
				/* No free port: counted as a failed connect, and dropped. */
				mw_count(chosen.svc, 1);
				mw_drop(MW_DROP_SNAT_EXHAUSTED);
				return MW_TC_ACT_SHOT;
			}
		}
		/* First packets of one flow on two CPUs: the first pick wins and records the reverse
		 * entry and the connect; the other follows the winner's choice. */
		if (!bpf_map_update_elem(&mw_np_fwd, &fk, &chosen, BPF_NOEXIST)) {
			if (!chosen.nat_port) {
				struct mw_flow_key rk = {
					.saddr = chosen.addr, .daddr = p.saddr, .sport = chosen.port,
					.dport = p.sport, .proto = p.proto,
				};
				struct mw_flow_val rv = {
					.addr = p.daddr, .port = p.dport, .svc = chosen.svc,
				};

				bpf_map_update_elem(&mw_np_rev, &rk, &rv, BPF_ANY);
			}
			mw_count(chosen.svc, 0);
		} else {
			fv = bpf_map_lookup_elem(&mw_np_fwd, &fk);
			if (fv) {
				/* The loser gives its SNAT port back. */
				if (chosen.nat_port) {
					struct mw_flow_key rk = mw_snat_key(&p, &chosen);

					bpf_map_delete_elem(&mw_np_snat, &rk);
				}
				chosen = *fv;
			}
		}
	}
	mw_count_bytes(chosen.svc, p.len);
	if (mw_rewrite(skb, &p, 1, chosen.addr, chosen.port) ||
	    (chosen.nat_port && mw_rewrite(skb, &p, 0, chosen.nat_addr, chosen.nat_port))) {
		mw_drop(MW_DROP_REWRITE_FAILED);
		return MW_TC_ACT_SHOT;
	}
	return MW_TC_ACT_OK;
}

SEC("classifier")
int mw_nodeport_out(struct __sk_buff *skb)
{
	struct mw_pkt p = {};

	if (mw_parse(skb, &p))
		return MW_TC_ACT_OK;

	struct mw_flow_key rk = {
		.saddr = p.saddr, .daddr = p.daddr, .sport = p.sport, .dport = p.dport, .proto = p.proto,
	};
	struct mw_flow_val *rv = bpf_map_lookup_elem(&mw_np_rev, &rk);

	if (!rv)
		return MW_TC_ACT_OK;
	__be32 addr = rv->addr;
	__be16 port = rv->port;

	if (mw_rewrite(skb, &p, 0, addr, port)) {
		mw_drop(MW_DROP_REWRITE_FAILED);
		return MW_TC_ACT_SHOT;
	}
	return MW_TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
