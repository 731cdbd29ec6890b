/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every map of the load balancer, defined once and shared by all entry programs: each map is
 * pinned by name under the node's pin directory, so the socket and tc programs and the loader
 * all see the same instances, and they survive the loader.
 *
 * The key/value layouts are mirrored in Rust (src/abi.rs); a test checks sizes and offsets
 * against this object's BTF. */
#ifndef MW_LB_MAPS_H
#define MW_LB_MAPS_H

#include "common.h"

#define MW_ALGO_RANDOM 0
#define MW_ALGO_MAGLEV 1
/* Maglev lookup table size (prime); mirrored by maglev::DEFAULT_SIZE in Rust. */
#define MW_MAGLEV_SIZE 16381

/* A frontend: ClusterIP:port, NodeIP:nodePort or ExternalIP:port, per protocol. */
struct mw_svc_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* `table` names the slot table in use. Updates write a new table and then swap this value in a
 * single map update, so the datapath sees the old or the new backend set, never a mix. */
struct mw_svc {
	__u32 id;
	__u32 table;
	__u32 slots;    /* entries in the slot table (random) or MW_MAGLEV_SIZE (Maglev) */
	__u32 backends; /* 0: fail fast */
	__u32 affinity_secs;
	__u16 algo;
	__u16 flags;
};

struct mw_slot_key {
	__u32 table;
	__u32 slot;
};

/* A whole Maglev table in one value: one map update replaces it. */
struct mw_maglev {
	__u32 slot[MW_MAGLEV_SIZE];
};

/* The backend is not on this node: tc flows from outside to it are SNATed to the node (see
 * mw_np_cfg), so its replies come back through this node's uplink. */
#define MW_BACKEND_REMOTE 1

struct mw_backend {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 flags; /* MW_BACKEND_* (tc path only; socket LB ignores them) */
};

/* IPv6 frontends, backends and socket reverse translation. Service ids, slot tables, Maglev
 * tables, members, affinity and stats are shared with IPv4 (ids are global). */
struct mw_svc6_key {
	__be32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct mw_backend6 {
	__be32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 flags; /* MW_BACKEND_* (kept for the loader; no IPv6 tc path yet) */
};

struct mw_revnat6_key {
	__u64 cookie;
	__be32 addr[4];
	__be16 port;
	__u16 pad;
	__u32 pad2;
};

struct mw_revnat6_val {
	__be32 addr[4];
	__be16 port;
	__u16 pad;
};

struct mw_member_key {
	__u32 svc;
	__u32 backend;
};

/* Affinity per client: the netns cookie for sockets (one per pod), the address for tc. */
struct mw_aff_key {
	__u64 client;
	__u32 svc;
	__u32 pad;
};

struct mw_aff_val {
	__u64 last_ns;
	__u32 backend;
	__u32 pad;
};

/* Socket reverse translation: what a socket asked for, by what it really talks to. */
struct mw_revnat_key {
	__u64 cookie;
	__be32 addr;
	__be16 port;
	__u16 pad;
};

struct mw_revnat_val {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

struct mw_stats {
	__u64 connects;
	__u64 no_backend;
	__u64 packets;
	__u64 bytes;
};

/* tc NodePort: a flow from outside, seen from either side. */
struct mw_flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* mw_np_fwd: the backend, and the source the flow is SNATed to (nat_port 0: no SNAT).
 * mw_np_rev: the frontend the backend's replies must appear from (nat_* unused). */
struct mw_flow_val {
	__be32 addr;
	__be16 port;
	__be16 nat_port;
	__u32 svc;
	__be32 nat_addr;
};

/* mw_np_snat: a SNATed flow's reply (backend → node address:allocated port) back to the
 * client, from the frontend it asked for. */
struct mw_snat_val {
	__be32 client_addr;
	__be32 front_addr;
	__be16 client_port;
	__be16 front_port;
	__u32 svc;
};

/* The node's tc settings, written by the loader (one entry). snat_addr 0: no SNAT (remote
 * backends are DNATed only, as if local). Ports are host order, inclusive. */
struct mw_np_cfg {
	__be32 snat_addr;
	__u16 snat_port_min;
	__u16 snat_port_max;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mw_svc_key);
	__type(value, struct mw_svc);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mw_slot_key);
	__type(value, __u32);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct mw_maglev);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct mw_backend);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mw_svc6_key);
	__type(value, struct mw_svc);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_services6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct mw_backend6);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_backends6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mw_revnat6_key);
	__type(value, struct mw_revnat6_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_revnat6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mw_member_key);
	__type(value, __u8);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_members SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct mw_stats);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mw_aff_key);
	__type(value, struct mw_aff_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mw_revnat_key);
	__type(value, struct mw_revnat_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_revnat SEC(".maps");

/* NodePort forward: client→frontend flow to its backend (keeps a flow on one backend). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mw_flow_key);
	__type(value, struct mw_flow_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_np_fwd SEC(".maps");

/* NodePort reverse: backend→client flow to the frontend it must appear from. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mw_flow_key);
	__type(value, struct mw_flow_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_np_rev SEC(".maps");

/* NodePort SNAT reverse: a remote backend's reply to the allocated node port → client and
 * frontend. An entry is what reserves its port (inserted BPF_NOEXIST). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mw_flow_key);
	__type(value, struct mw_snat_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_np_snat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct mw_np_cfg);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mw_np_cfg SEC(".maps");

#endif
