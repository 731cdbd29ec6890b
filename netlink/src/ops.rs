use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::{
    link::{
        InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    },
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
        RouteProtocol, RouteScope, RouteType,
    },
    AddressFamily,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};

use crate::{Error, Netns};

/// A link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
    pub master: Option<u32>,
    pub kind: Option<LinkKind>,
    pub alias: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Veth,
    Bridge,
    Vxlan,
    Other(String),
}

/// A veth pair to create. The peer can be created directly inside another namespace, which
/// avoids a name clash when the pod-side name (`eth0`) also exists on the host.
#[derive(Clone, Debug)]
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub peer_name: &'a str,
    pub peer_netns: Option<&'a Netns>,
    pub mtu: Option<u32>,
    pub master: Option<u32>,
}

/// A VXLAN device in "external FDB" mode: no learning, no multicast group; remote VTEPs come
/// from FDB entries the control plane writes.
#[derive(Clone, Debug)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub underlay_index: u32,
    pub port: u16,
    pub mtu: u32,
    pub mac: [u8; 6],
}

/// A route in the main table (or `table`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    /// `scope link`: the destination is directly reachable on `oif`.
    pub link_scope: bool,
    pub mtu: Option<u32>,
    pub table: u32,
}

impl Route {
    pub fn new(dst: IpNet) -> Self {
        Route {
            dst,
            gateway: None,
            oif: None,
            onlink: false,
            link_scope: false,
            mtu: None,
            table: RouteHeader::RT_TABLE_MAIN as u32,
        }
    }
}

/// A permanent IP→MAC neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

/// A bridge FDB entry on a VXLAN device: frames for `mac` are sent to the VTEP at `dst`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fdb {
    pub index: u32,
    pub mac: [u8; 6],
    pub dst: IpAddr,
}

/// A netlink handle bound to one network namespace.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Connects in the calling thread's namespace. Needs a tokio runtime.
    pub fn connect() -> Result<Self, Error> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Connects inside `ns`. The socket is opened on a helper thread that joined `ns`; a netlink
    /// socket stays in the namespace it was created in, so the caller's thread never moves.
    pub fn connect_in(ns: &Netns) -> Result<Self, Error> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = ns.run(move || {
            let _enter = rt.enter();
            rtnetlink::new_connection().map_err(Error::Socket)
        })??;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    // === links ===

    pub async fn links(&self) -> Result<Vec<Link>, Error> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::request("listing links", e))?;
        Ok(msgs.iter().map(parse_link).collect())
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, Error> {
        let res: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_collect()
            .await;
        match res {
            Ok(msgs) => Ok(msgs.first().map(parse_link)),
            Err(e) => {
                let err = Error::request(format!("getting link {name}"), e);
                if err.is_not_found() {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, Error> {
        let res: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await;
        match res {
            Ok(msgs) => Ok(msgs.first().map(parse_link)),
            Err(e) => {
                let err = Error::request(format!("getting link #{index}"), e);
                if err.is_not_found() {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    pub async fn add_veth(&self, spec: &VethSpec<'_>) -> Result<(), Error> {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new().name(spec.peer_name);
        if let Some(ns) = spec.peer_netns {
            peer = peer.setns_by_fd(ns.fd());
        }
        if let Some(mtu) = spec.mtu {
            peer = peer.mtu(mtu);
        }
        let mut msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(spec.name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(mtu) = spec.mtu {
            msg = msg.mtu(mtu);
        }
        if let Some(master) = spec.master {
            msg = msg.controller(master);
        }
        self.handle
            .link()
            .add(msg.build())
            .execute()
            .await
            .map_err(|e| Error::request(format!("adding veth {}", spec.name), e))
    }

    /// Adds a bridge. A fixed `mac` keeps the bridge's address from changing as ports come and
    /// go (Linux otherwise adopts the lowest port MAC).
    pub async fn add_bridge(
        &self,
        name: &str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
    ) -> Result<(), Error> {
        let mut msg =
            LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Bridge).name(name);
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        if let Some(mac) = mac {
            msg = msg.address(mac.to_vec());
        }
        self.handle
            .link()
            .add(msg.build())
            .execute()
            .await
            .map_err(|e| Error::request(format!("adding bridge {name}"), e))
    }

    pub async fn add_vxlan(&self, spec: &VxlanSpec<'_>) -> Result<(), Error> {
        let info = vec![
            InfoVxlan::Id(spec.vni),
            InfoVxlan::Local(spec.local),
            InfoVxlan::Link(spec.underlay_index),
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(false),
        ];
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Vxlan)
            .name(spec.name)
            .mtu(spec.mtu)
            .address(spec.mac.to_vec())
            .set_info_data(InfoData::Vxlan(info));
        self.handle
            .link()
            .add(msg.build())
            .execute()
            .await
            .map_err(|e| Error::request(format!("adding vxlan {}", spec.name), e))
    }

    pub async fn set_up(&self, index: u32) -> Result<(), Error> {
        let msg = LinkUnspec::new_with_index(index).up();
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|e| Error::request(format!("setting link #{index} up"), e))
    }

    /// Sets the link up and stamps `alias` in one request (the kernel ignores IFLA_IFALIAS when
    /// a link is created, so it has to be a set).
    pub async fn set_up_with_alias(&self, index: u32, alias: &str) -> Result<(), Error> {
        let msg = LinkUnspec::new_with_index(index).up().alias(alias);
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|e| Error::request(format!("setting link #{index} up"), e))
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), Error> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu);
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|e| Error::request(format!("setting mtu of link #{index}"), e))
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), Error> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| Error::request(format!("deleting link #{index}"), e))
    }

    // === addresses ===

    /// Addresses on `index` (all links when `None`), as `(link index, address/prefix)`.
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>, Error> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let msgs: Vec<_> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::request("listing addresses", e))?;
        let mut out = Vec::new();
        for m in msgs {
            use netlink_packet_route::address::AddressAttribute;
            // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS
            // otherwise. Prefer LOCAL when present.
            let mut addr = None;
            for a in &m.attributes {
                match a {
                    AddressAttribute::Local(ip) => addr = Some(*ip),
                    AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = addr {
                if index.is_none_or(|i| i == m.header.index) {
                    if let Ok(net) = IpNet::new(ip, m.header.prefix_len) {
                        out.push((m.header.index, net));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Adds `net` to link `index`. IPv6 addresses skip duplicate address detection: pod
    /// addresses come from our own IPAM, and DAD would leave them unusable ("tentative") for
    /// the first second of the pod's life.
    pub async fn add_address(&self, index: u32, net: IpNet) -> Result<(), Error> {
        use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
        let mut req = self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len());
        if net.addr().is_ipv6() {
            let m = req.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|e| Error::request(format!("adding address {net} to link #{index}"), e))
    }

    // === routes ===

    /// Routes of one family in `table` (unicast, any protocol).
    pub async fn routes(&self, v6: bool, table: u32) -> Result<Vec<Route>, Error> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::request("listing routes", e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.kind == RouteType::Unicast)
            .filter_map(parse_route)
            .filter(|r| r.table == table)
            .collect())
    }

    pub async fn add_route(&self, route: &Route) -> Result<(), Error> {
        self.handle
            .route()
            .add(route_message(route))
            .execute()
            .await
            .map_err(|e| Error::request(format!("adding route {}", route.dst), e))
    }

    pub async fn replace_route(&self, route: &Route) -> Result<(), Error> {
        self.handle
            .route()
            .add(route_message(route))
            .replace()
            .execute()
            .await
            .map_err(|e| Error::request(format!("replacing route {}", route.dst), e))
    }

    pub async fn del_route(&self, route: &Route) -> Result<(), Error> {
        self.handle
            .route()
            .del(route_message(route))
            .execute()
            .await
            .map_err(|e| Error::request(format!("deleting route {}", route.dst), e))
    }

    // === neighbours and FDB ===

    /// Permanent neighbour entries on `index`.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>, Error> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::request("listing neighbours", e))?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.ifindex == index
                    && m.header.state == NeighbourState::Permanent
                    && matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6)
            })
            .filter_map(|m| {
                Some(Neighbour {
                    index,
                    ip: neigh_dst(m)?,
                    mac: neigh_lladdr(m)?,
                })
            })
            .collect())
    }

    pub async fn replace_neighbour(&self, n: &Neighbour) -> Result<(), Error> {
        self.handle
            .neighbours()
            .add(n.index, n.ip)
            .link_layer_address(&n.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::request(format!("setting neighbour {}", n.ip), e))
    }

    pub async fn del_neighbour(&self, n: &Neighbour) -> Result<(), Error> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = match n.ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.ifindex = n.index;
        msg.attributes
            .push(NeighbourAttribute::Destination(neigh_addr(n.ip)));
        self.handle
            .neighbours()
            .del(msg)
            .execute()
            .await
            .map_err(|e| Error::request(format!("deleting neighbour {}", n.ip), e))
    }

    /// Permanent FDB entries with a remote destination on `index` (a VXLAN device).
    pub async fn fdb(&self, index: u32) -> Result<Vec<Fdb>, Error> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::request("listing fdb", e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
            .filter_map(|m| {
                Some(Fdb {
                    index,
                    mac: neigh_lladdr(m)?,
                    dst: neigh_dst(m)?,
                })
            })
            .collect())
    }

    pub async fn replace_fdb(&self, f: &Fdb) -> Result<(), Error> {
        let mut req = self
            .handle
            .neighbours()
            .add_bridge(f.index, &f.mac)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace();
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::Destination(neigh_addr(f.dst)));
        req.execute().await.map_err(|e| {
            Error::request(
                format!("setting fdb {} → {}", crate::fmt_mac(&f.mac), f.dst),
                e,
            )
        })
    }

    pub async fn del_fdb(&self, f: &Fdb) -> Result<(), Error> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = f.index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(f.mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(neigh_addr(f.dst)));
        self.handle
            .neighbours()
            .del(msg)
            .execute()
            .await
            .map_err(|e| Error::request(format!("deleting fdb {}", crate::fmt_mac(&f.mac)), e))
    }
}

// === conversions ===

fn parse_link(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        master: None,
        kind: None,
        alias: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(mac) => link.mac = mac.as_slice().try_into().ok(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Controller(i) => link.master = Some(*i),
            LinkAttribute::IfAlias(s) => link.alias = Some(s.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(match kind {
                            InfoKind::Veth => LinkKind::Veth,
                            InfoKind::Bridge => LinkKind::Bridge,
                            InfoKind::Vxlan => LinkKind::Vxlan,
                            other => LinkKind::Other(other.to_string()),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn route_message(r: &Route) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = match r.dst {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    m.header.destination_prefix_length = r.dst.prefix_len();
    m.header.protocol = RouteProtocol::Static;
    m.header.kind = RouteType::Unicast;
    m.header.scope = if r.link_scope {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    if r.table < 256 {
        m.header.table = r.table as u8;
    } else {
        m.header.table = RouteHeader::RT_TABLE_UNSPEC;
        m.attributes.push(RouteAttribute::Table(r.table));
    }
    if r.onlink {
        m.header.flags = RouteFlags::Onlink;
    }
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            r.dst.network(),
        )));
    if let Some(gw) = r.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(oif) = r.oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(mtu) = r.mtu {
        m.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    m
}

fn parse_route(m: &RouteMessage) -> Option<Route> {
    let v6 = m.header.address_family == AddressFamily::Inet6;
    let mut dst_ip: Option<IpAddr> = None;
    let mut route = Route::new(IpNet::default());
    route.table = m.header.table as u32;
    route.onlink = m.header.flags.contains(RouteFlags::Onlink);
    route.link_scope = m.header.scope == RouteScope::Link;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(addr) => dst_ip = route_ip(addr),
            RouteAttribute::Gateway(addr) => route.gateway = route_ip(addr),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Metrics(ms) => {
                for metric in ms {
                    if let RouteMetric::Mtu(mtu) = metric {
                        route.mtu = Some(*mtu);
                    }
                }
            }
            _ => {}
        }
    }
    let ip = dst_ip.unwrap_or(if v6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    route.dst = IpNet::new(ip, m.header.destination_prefix_length).ok()?;
    Some(route)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn neigh_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn neigh_dst(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        // FDB entries (AF_BRIDGE) carry their VTEP address as raw bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    })
}

fn neigh_lladdr(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(mac) => mac.as_slice().try_into().ok(),
        _ => None,
    })
}
