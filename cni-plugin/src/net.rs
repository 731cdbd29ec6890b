//! Kernel side of an attachment: node bridge, veth pair, container addresses and routes.

use std::net::IpAddr;

use ipnet::IpNet;
use meshwork_netlink::{Error, Link, Netlink, Netns, Route, VethSpec};

use crate::config::{Range, RouteConf, FALLBACK_MTU, VXLAN_OVERHEAD};

/// The host-side veth name: `mw` + 12 hex digits of a hash of container id and ifname. Stable
/// across calls (DEL and GC find it without state) and within IFNAMSIZ.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a: tiny, stable across releases (unlike std's SipHash keys).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("mw{:012x}", h >> 16)
}

/// The alias stamped on host veths so GC can find ours without any state file.
pub fn veth_alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("meshwork/{network}/{container_id}/{ifname}")
}

/// Parses [`veth_alias`] back into (container id, ifname) if it belongs to `network`.
pub fn parse_alias<'a>(network: &str, alias: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = alias.strip_prefix("meshwork/")?;
    let (net, rest) = rest.split_once('/')?;
    if net != network {
        return None;
    }
    rest.rsplit_once('/')
}

/// The pod MTU: configured, else the uplink's minus VXLAN overhead, else the overlay device's
/// (already sized by the overlay), else the default-route link's minus overhead.
pub async fn pod_mtu(
    nl: &Netlink,
    mtu: Option<u32>,
    uplink: Option<&str>,
    vxlan_device: &str,
) -> Result<u32, Error> {
    if let Some(m) = mtu {
        return Ok(m);
    }
    if let Some(name) = uplink {
        let link = nl
            .link_by_name(name)
            .await?
            .ok_or_else(|| Error::Invalid(format!("uplink {name:?} does not exist")))?;
        return Ok(link.mtu.saturating_sub(VXLAN_OVERHEAD));
    }
    if let Some(vx) = nl.link_by_name(vxlan_device).await? {
        return Ok(vx.mtu);
    }
    let default = nl
        .routes(false, 254)
        .await?
        .into_iter()
        .find(|r| r.dst.prefix_len() == 0)
        .and_then(|r| r.oif);
    if let Some(oif) = default {
        if let Some(link) = nl.link_by_index(oif).await? {
            return Ok(link.mtu.saturating_sub(VXLAN_OVERHEAD));
        }
    }
    Ok(FALLBACK_MTU)
}

/// Turns off IPv6 duplicate address detection on `ifname` in the calling thread's namespace.
///
/// Our addresses come from our IPAM (added NODAD), but the kernel still runs DAD on the link-local
/// address it generates at link-up, and until that finishes (~1 s) neighbour solicitations from
/// the interface cannot be answered: the first IPv6 SYN of a new pod would be lost. Must run
/// before the link goes up. A missing file (IPv6 disabled) is fine.
pub fn disable_dad(ifname: &str) -> std::io::Result<()> {
    match std::fs::write(format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad"), "0") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn has_v6(ranges: &[Range]) -> bool {
    ranges.iter().any(|r| r.gateway.is_ipv6())
}

/// Finds or creates the node bridge with each range's gateway address, up.
pub async fn ensure_bridge(
    nl: &Netlink,
    name: &str,
    mtu: u32,
    ranges: &[Range],
) -> Result<Link, Error> {
    let link = match nl.link_by_name(name).await? {
        Some(l) => l,
        None => {
            match nl
                .add_bridge(name, Some(mtu), Some(bridge_mac(ranges)))
                .await
            {
                // A concurrent ADD created it first: fine.
                Ok(()) => {}
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(e),
            }
            nl.link_by_name(name)
                .await?
                .ok_or_else(|| Error::Invalid(format!("bridge {name} vanished after creation")))?
        }
    };
    let have = nl.addresses(Some(link.index)).await?;
    for r in ranges {
        let gw = IpNet::new(r.gateway, r.subnet.prefix_len())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        if !have.iter().any(|(_, a)| *a == gw) {
            match nl.add_address(link.index, gw).await {
                Ok(()) => {}
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(e),
            }
        }
    }
    if !link.up {
        if has_v6(ranges) {
            disable_dad(name).map_err(|e| Error::Invalid(format!("accept_dad on {name}: {e}")))?;
        }
        nl.set_up(link.index).await?;
    }
    Ok(link)
}

/// A stable, locally administered bridge MAC: `0a:58` + the IPv4 gateway (the convention
/// ovn-kubernetes uses), or bytes of the IPv6 gateway on v6-only nodes.
pub fn bridge_mac(ranges: &[Range]) -> [u8; 6] {
    let tail: [u8; 4] = match ranges.iter().map(|r| r.gateway).next() {
        Some(IpAddr::V4(v4)) => v4.octets(),
        Some(IpAddr::V6(v6)) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
        None => [0; 4],
    };
    [0x0a, 0x58, tail[0], tail[1], tail[2], tail[3]]
}

/// Container-side settings.
pub struct ContainerSide<'a> {
    pub ifname: &'a str,
    pub addrs: &'a [IpNet],
    pub routes: &'a [RouteConf],
    pub ranges: &'a [Range],
}

/// Brings up `lo` and the pod interface, adds addresses then routes (the gateway must be
/// on-link before a route can use it). Returns the pod interface as the kernel sees it.
pub async fn configure_container(
    nl: &Netlink,
    netns: &Netns,
    c: &ContainerSide<'_>,
) -> Result<Link, Error> {
    // lo is ifindex 1 in every network namespace.
    nl.set_up(1).await?;
    let link = nl
        .link_by_name(c.ifname)
        .await?
        .ok_or_else(|| Error::Invalid(format!("{} missing after veth creation", c.ifname)))?;
    if has_v6(c.ranges) {
        netns
            .run(|| disable_dad(c.ifname))?
            .map_err(|e| Error::Invalid(format!("accept_dad on {}: {e}", c.ifname)))?;
    }
    nl.set_up(link.index).await?;
    for a in c.addrs {
        nl.add_address(link.index, *a).await?;
    }
    for rc in c.routes {
        let gw = rc.gw.or_else(|| gateway_for(c.ranges, rc.dst.addr()));
        let mut r = Route::new(rc.dst);
        r.gateway = gw;
        r.oif = Some(link.index);
        match nl.add_route(&r).await {
            Ok(()) => {}
            // A route to the pod subnet itself duplicates the prefix route: fine.
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(link)
}

pub fn gateway_for(ranges: &[Range], dst: IpAddr) -> Option<IpAddr> {
    ranges
        .iter()
        .find(|r| r.gateway.is_ipv4() == dst.is_ipv4())
        .map(|r| r.gateway)
}

/// Creates the veth pair: host side up, on the bridge, aliased; pod side created directly in
/// the container namespace under its final name (no rename, no clash with host names).
pub async fn create_veth(
    host: &Netlink,
    host_name: &str,
    ifname: &str,
    netns: &Netns,
    mtu: u32,
    alias: &str,
    bridge: u32,
) -> Result<Link, Error> {
    host.add_veth(&VethSpec {
        name: host_name,
        peer_name: ifname,
        peer_netns: Some(netns),
        mtu: Some(mtu),
        master: Some(bridge),
    })
    .await?;
    // The pair exists now; if finishing it fails, remove it here so the caller never has to
    // guess whether a failed create left something behind.
    let finish = async {
        let link = host
            .link_by_name(host_name)
            .await?
            .ok_or_else(|| Error::Invalid(format!("{host_name} missing after creation")))?;
        host.set_up_with_alias(link.index, alias).await?;
        Ok(link)
    };
    match finish.await {
        Ok(link) => Ok(link),
        Err(e) => {
            let _ = delete_veth(host, host_name).await;
            Err(e)
        }
    }
}

/// Deletes the host veth (and with it the pod side) if present.
pub async fn delete_veth(host: &Netlink, host_name: &str) -> Result<bool, Error> {
    match host.link_by_name(host_name).await? {
        Some(l) => match host.delete_link(l.index).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        },
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc123", "eth0");
        assert_eq!(a, host_veth_name("abc123", "eth0"));
        assert!(a.len() <= 15 && a.starts_with("mw"), "{a}");
        assert_ne!(a, host_veth_name("abc124", "eth0"));
        assert_ne!(a, host_veth_name("abc123", "net1"));
        // Pinned: a change would orphan veths of pods created by the previous release.
        assert_eq!(host_veth_name("c1", "eth0"), "mw9e27a0abdbb0");
    }

    #[test]
    fn alias_round_trip_and_network_scoping() {
        let a = veth_alias("net", "cid-1", "eth0");
        assert_eq!(parse_alias("net", &a), Some(("cid-1", "eth0")));
        assert_eq!(parse_alias("other", &a), None);
        assert_eq!(parse_alias("net", "something else"), None);
    }
}
