//! Map keys and values, `#[repr(C)]` mirrors of `bpf/lib/lb_maps.h`. A test compares sizes and
//! field offsets with the BTF of the compiled objects, so the two cannot drift apart silently.
//! Addresses and ports are stored in network byte order, as the datapath reads them.

pub const ALGO_RANDOM: u16 = 0;
pub const ALGO_MAGLEV: u16 = 1;
/// `BackendVal::flags`: the backend is on another node (tc flows to it are SNATed).
pub const BACKEND_REMOTE: u8 = 1;

/// Why the datapath refused a connect or dropped a packet: `enum mw_drop_reason` in
/// `bpf/lib/drop.h`, the index of the per-CPU counters in `mw_drops`. Values are ABI (the
/// BPF_PROG_RUN tests check each one against what the C counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    NoBackend = 1,
    SnatExhausted = 2,
    RewriteFailed = 3,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::NoBackend,
        DropReason::SnatExhausted,
        DropReason::RewriteFailed,
    ];
    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoBackend => "no_backend",
            DropReason::SnatExhausted => "snat_exhausted",
            DropReason::RewriteFailed => "rewrite_failed",
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SvcKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Svc {
    pub id: u32,
    pub table: u32,
    pub slots: u32,
    pub backends: u32,
    pub affinity_secs: u32,
    pub algo: u16,
    pub flags: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub table: u32,
    pub slot: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    pub slot: [u32; crate::maglev::DEFAULT_SIZE as usize],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendVal {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_*` flags.
    pub flags: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Svc6Key {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend6Val {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_*` flags.
    pub flags: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemberKey {
    pub svc: u32,
    pub backend: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsVal {
    pub connects: u64,
    pub no_backend: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// tc NodePort: a flow as one direction sees it (`mw_np_fwd`, `mw_np_rev`, `mw_np_snat` keys).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// `mw_np_fwd`: backend and SNAT source (`nat_port` 0: none); `mw_np_rev`: the frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowVal {
    pub addr: u32,
    pub port: u16,
    pub nat_port: u16,
    pub svc: u32,
    pub nat_addr: u32,
}

/// `mw_np_snat`: a SNATed flow's client and frontend, by the backend's reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatVal {
    pub client_addr: u32,
    pub front_addr: u32,
    pub client_port: u16,
    pub front_port: u16,
    pub svc: u32,
}

/// `mw_np_cfg[0]`: the node's SNAT source address (0: off) and port range (host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NpCfg {
    pub snat_addr: u32,
    pub snat_port_min: u16,
    pub snat_port_max: u16,
}

// SAFETY: plain `#[repr(C)]` integers with explicit padding fields: every bit pattern is valid
// and there are no implicit padding bytes.
unsafe impl aya::Pod for SvcKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Svc {}
// SAFETY: as above.
unsafe impl aya::Pod for SlotKey {}
// SAFETY: as above.
unsafe impl aya::Pod for BackendVal {}
// SAFETY: as above (an array of u32).
unsafe impl aya::Pod for MaglevTable {}
// SAFETY: as above.
unsafe impl aya::Pod for Svc6Key {}
// SAFETY: as above.
unsafe impl aya::Pod for Backend6Val {}
// SAFETY: as above.
unsafe impl aya::Pod for MemberKey {}
// SAFETY: as above.
unsafe impl aya::Pod for StatsVal {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowVal {}
// SAFETY: as above.
unsafe impl aya::Pod for SnatVal {}
// SAFETY: as above.
unsafe impl aya::Pod for NpCfg {}

/// One struct's layout: (name in C, size, [(field, byte offset)]).
pub type Layout = (&'static str, usize, Vec<(&'static str, usize)>);

/// Every shared struct's layout, for the check against BTF.
pub fn layouts() -> Vec<Layout> {
    use std::mem::{offset_of, size_of};
    vec![
        (
            "mw_svc_key",
            size_of::<SvcKey>(),
            vec![
                ("addr", offset_of!(SvcKey, addr)),
                ("port", offset_of!(SvcKey, port)),
                ("proto", offset_of!(SvcKey, proto)),
            ],
        ),
        (
            "mw_svc6_key",
            size_of::<Svc6Key>(),
            vec![
                ("addr", offset_of!(Svc6Key, addr)),
                ("port", offset_of!(Svc6Key, port)),
                ("proto", offset_of!(Svc6Key, proto)),
            ],
        ),
        (
            "mw_svc",
            size_of::<Svc>(),
            vec![
                ("id", offset_of!(Svc, id)),
                ("table", offset_of!(Svc, table)),
                ("slots", offset_of!(Svc, slots)),
                ("backends", offset_of!(Svc, backends)),
                ("affinity_secs", offset_of!(Svc, affinity_secs)),
                ("algo", offset_of!(Svc, algo)),
                ("flags", offset_of!(Svc, flags)),
            ],
        ),
        (
            "mw_slot_key",
            size_of::<SlotKey>(),
            vec![
                ("table", offset_of!(SlotKey, table)),
                ("slot", offset_of!(SlotKey, slot)),
            ],
        ),
        (
            "mw_backend",
            size_of::<BackendVal>(),
            vec![
                ("addr", offset_of!(BackendVal, addr)),
                ("port", offset_of!(BackendVal, port)),
                ("proto", offset_of!(BackendVal, proto)),
                ("flags", offset_of!(BackendVal, flags)),
            ],
        ),
        (
            "mw_backend6",
            size_of::<Backend6Val>(),
            vec![
                ("addr", offset_of!(Backend6Val, addr)),
                ("port", offset_of!(Backend6Val, port)),
                ("proto", offset_of!(Backend6Val, proto)),
                ("flags", offset_of!(Backend6Val, flags)),
            ],
        ),
        (
            "mw_maglev",
            size_of::<MaglevTable>(),
            vec![("slot", offset_of!(MaglevTable, slot))],
        ),
        (
            "mw_member_key",
            size_of::<MemberKey>(),
            vec![
                ("svc", offset_of!(MemberKey, svc)),
                ("backend", offset_of!(MemberKey, backend)),
            ],
        ),
        (
            "mw_stats",
            size_of::<StatsVal>(),
            vec![
                ("connects", offset_of!(StatsVal, connects)),
                ("no_backend", offset_of!(StatsVal, no_backend)),
                ("packets", offset_of!(StatsVal, packets)),
                ("bytes", offset_of!(StatsVal, bytes)),
            ],
        ),
        (
            "mw_flow_key",
            size_of::<FlowKey>(),
            vec![
                ("saddr", offset_of!(FlowKey, saddr)),
                ("daddr", offset_of!(FlowKey, daddr)),
                ("sport", offset_of!(FlowKey, sport)),
                ("dport", offset_of!(FlowKey, dport)),
                ("proto", offset_of!(FlowKey, proto)),
            ],
        ),
        (
            "mw_flow_val",
            size_of::<FlowVal>(),
            vec![
                ("addr", offset_of!(FlowVal, addr)),
                ("port", offset_of!(FlowVal, port)),
                ("nat_port", offset_of!(FlowVal, nat_port)),
                ("svc", offset_of!(FlowVal, svc)),
                ("nat_addr", offset_of!(FlowVal, nat_addr)),
            ],
        ),
        (
            "mw_snat_val",
            size_of::<SnatVal>(),
            vec![
                ("client_addr", offset_of!(SnatVal, client_addr)),
                ("front_addr", offset_of!(SnatVal, front_addr)),
                ("client_port", offset_of!(SnatVal, client_port)),
                ("front_port", offset_of!(SnatVal, front_port)),
                ("svc", offset_of!(SnatVal, svc)),
            ],
        ),
        (
            "mw_np_cfg",
            size_of::<NpCfg>(),
            vec![
                ("snat_addr", offset_of!(NpCfg, snat_addr)),
                ("snat_port_min", offset_of!(NpCfg, snat_port_min)),
                ("snat_port_max", offset_of!(NpCfg, snat_port_max)),
            ],
        ),
    ]
}
