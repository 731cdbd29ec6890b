use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::IpNet;
use meshwork_netlink::{Fdb, Neighbour, Route};

/// A node whose pods are reached through the overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    /// One per address family.
    pub pod_cidrs: Vec<IpNet>,
}

/// The VTEP MAC of a node: `0e:6d:` + its underlay IPv4 (locally administered, unicast).
pub fn vtep_mac(underlay: Ipv4Addr) -> [u8; 6] {
    let o = underlay.octets();
    [0x0e, 0x6d, o[0], o[1], o[2], o[3]]
}

/// The overlay address standing for a pod CIDR: its network address.
pub fn vtep_addr(cidr: IpNet) -> IpAddr {
    cidr.network()
}

/// What the VXLAN device at `index` should carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeSet<Route>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<Fdb>,
}

impl Desired {
    pub fn for_remotes(index: u32, remotes: &[RemoteNode]) -> Desired {
        let mut d = Desired::default();
        for r in remotes {
            let mac = vtep_mac(r.underlay_ip);
            d.fdb.insert(Fdb {
                index,
                mac,
                dst: IpAddr::V4(r.underlay_ip),
            });
            for cidr in &r.pod_cidrs {
                let cidr = cidr.trunc();
                let via = vtep_addr(cidr);
                let mut route = Route::new(cidr);
                route.gateway = Some(via);
                route.oif = Some(index);
                route.onlink = true;
                d.routes.insert(route);
                d.neighbours.insert(Neighbour {
                    index,
                    ip: via,
                    mac,
                });
            }
        }
        d
    }
}

/// What the kernel has on the device (routes through it, permanent neighbours, FDB).
pub type Observed = Desired;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    SetFdb(Fdb),
    SetNeighbour(Neighbour),
    AddRoute(Route),
    DelRoute(Route),
    DelNeighbour(Neighbour),
    DelFdb(Fdb),
}

/// The operations that turn `observed` into `desired`. Additions are ordered FDB → neighbour →
/// route, so a route never points at a next hop that cannot be resolved yet; removals run the
/// other way round. Every op is idempotent (replace / delete-if-present) so a retried sync is
/// safe. Routes are keyed by destination and neighbours by address, as the kernel keys them: a
/// changed entry is replaced, never deleted after its replacement.
pub fn plan(desired: &Desired, observed: &Observed) -> Vec<Op> {
    let mut ops = Vec::new();
    ops.extend(
        desired
            .fdb
            .difference(&observed.fdb)
            .cloned()
            .map(Op::SetFdb),
    );
    ops.extend(
        desired
            .neighbours
            .difference(&observed.neighbours)
            .cloned()
            .map(Op::SetNeighbour),
    );
    ops.extend(
        desired
            .routes
            .difference(&observed.routes)
            .cloned()
            .map(Op::AddRoute),
    );
    let wanted_dst: BTreeSet<(IpNet, u32)> =
        desired.routes.iter().map(|r| (r.dst, r.table)).collect();
    ops.extend(
        observed
            .routes
            .iter()
            .filter(|r| !wanted_dst.contains(&(r.dst, r.table)))
            .cloned()
            .map(Op::DelRoute),
    );
    let wanted_ip: BTreeSet<IpAddr> = desired.neighbours.iter().map(|n| n.ip).collect();
    ops.extend(
        observed
            .neighbours
            .iter()
            .filter(|n| !wanted_ip.contains(&n.ip))
            .cloned()
            .map(Op::DelNeighbour),
    );
    ops.extend(
        observed
            .fdb
            .difference(&desired.fdb)
            .cloned()
            .map(Op::DelFdb),
    );
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8, cidrs: &[&str]) -> RemoteNode {
        RemoteNode {
            name: format!("n{n}"),
            underlay_ip: Ipv4Addr::new(198, 18, 0, n),
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn desired_entries_for_a_dual_stack_node() {
        let d = Desired::for_remotes(7, &[node(2, &["10.244.2.0/24", "fd00:244:2::/64"])]);
        assert_eq!(d.fdb.len(), 1, "one VTEP per node whatever its families");
        let fdb = d.fdb.iter().next().unwrap();
        assert_eq!(fdb.mac, [0x0e, 0x6d, 198, 18, 0, 2]);
        assert_eq!(fdb.dst, "198.18.0.2".parse::<IpAddr>().unwrap());
        let gws: Vec<_> = d
            .routes
            .iter()
            .map(|r| r.gateway.unwrap().to_string())
            .collect();
        assert_eq!(gws, vec!["10.244.2.0", "fd00:244:2::"]);
        assert!(d.routes.iter().all(|r| r.onlink && r.oif == Some(7)));
        assert_eq!(d.neighbours.len(), 2);
    }

    #[test]
    fn empty_to_two_nodes_adds_in_dependency_order() {
        let d = Desired::for_remotes(
            3,
            &[node(2, &["10.244.2.0/24"]), node(3, &["10.244.3.0/24"])],
        );
        let ops = plan(&d, &Observed::default());
        assert_eq!(ops.len(), 6);
        let kinds: Vec<&str> = ops
            .iter()
            .map(|o| match o {
                Op::SetFdb(_) => "fdb",
                Op::SetNeighbour(_) => "neigh",
                Op::AddRoute(_) => "route",
                _ => "del",
            })
            .collect();
        assert_eq!(kinds, ["fdb", "fdb", "neigh", "neigh", "route", "route"]);
    }

    #[test]
    fn converged_state_plans_nothing() {
        let d = Desired::for_remotes(3, &[node(2, &["10.244.2.0/24"])]);
        assert!(plan(&d, &d.clone()).is_empty());
    }

    #[test]
    fn node_leaving_removes_only_its_entries_routes_first() {
        let before = Desired::for_remotes(
            3,
            &[node(2, &["10.244.2.0/24"]), node(3, &["10.244.3.0/24"])],
        );
        let after = Desired::for_remotes(3, &[node(2, &["10.244.2.0/24"])]);
        let ops = plan(&after, &before);
        assert_eq!(ops.len(), 3);
        assert!(matches!(&ops[0], Op::DelRoute(r) if r.dst.to_string() == "10.244.3.0/24"));
        assert!(matches!(&ops[1], Op::DelNeighbour(n) if n.ip.to_string() == "10.244.3.0"));
        assert!(matches!(&ops[2], Op::DelFdb(f) if f.dst.to_string() == "198.18.0.3"));
    }

    #[test]
    fn node_moving_underlay_ip_replaces_fdb_and_neighbour() {
        let before = Desired::for_remotes(3, &[node(2, &["10.244.2.0/24"])]);
        let mut moved = node(9, &["10.244.2.0/24"]);
        moved.name = "n2".into();
        let after = Desired::for_remotes(3, &[moved]);
        let ops = plan(&after, &before);
        assert!(ops.contains(&Op::SetFdb(after.fdb.iter().next().unwrap().clone())));
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::SetNeighbour(n) if n.mac[5] == 9)));
        assert!(
            !ops.iter().any(|o| matches!(o, Op::DelNeighbour(_))),
            "the replaced neighbour must not be deleted afterwards: {ops:?}"
        );
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::DelFdb(f) if f.mac[5] == 2)));
        // The route itself is unchanged (same CIDR, same gateway): no churn on it.
        assert!(!ops
            .iter()
            .any(|o| matches!(o, Op::AddRoute(_) | Op::DelRoute(_))));
    }

    #[test]
    fn changed_route_gateway_is_replaced_not_deleted() {
        let before = Desired::for_remotes(3, &[node(2, &["10.244.2.0/24"])]);
        let mut after = before.clone();
        let mut r = after.routes.pop_first().unwrap();
        r.gateway = Some("10.244.2.1".parse().unwrap());
        after.routes.insert(r.clone());
        assert_eq!(plan(&after, &before), vec![Op::AddRoute(r)]);
    }

    #[test]
    fn unaligned_cidr_is_truncated() {
        let d = Desired::for_remotes(1, &[node(2, &["10.244.2.7/24"])]);
        assert_eq!(
            d.routes.iter().next().unwrap().dst.to_string(),
            "10.244.2.0/24"
        );
    }
}
