//! A link from the root namespace into the lab's underlay bridge, for a cluster the host uses
//! (`mesh-ctl up`): the host reaches node addresses on the link and the pod and Service ranges
//! through a node. Nothing routes from the lab out: nodes have no default route, and the host's
//! `ip_forward` is left as it is, so the host never forwards lab traffic anywhere. The link goes
//! away with the underlay namespace (deleting one end of a veth deletes both).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use meshwork_netlink::{Netlink, Netns, Route, VethSpec};

use crate::Lab;

/// What a host link is: its name in the root namespace, its address on the underlay, and the
/// routes through lab nodes (destination, node address).
#[derive(Clone, Debug)]
pub struct HostLink {
    pub name: String,
    pub addr: Ipv4Net,
    pub routes: Vec<(IpNet, IpAddr)>,
}

impl Lab {
    /// Creates `link` (its underlay end is a bridge port named `host`). Needs a tokio runtime.
    pub async fn add_host_link(&self, link: &HostLink) -> Result<(), meshwork_netlink::Error> {
        let root = Netns::current()?;
        let under = Netlink::connect_in(&self.open(&self.underlay))?;
        let br = under
            .link_by_name("br0")
            .await?
            .ok_or_else(|| meshwork_netlink::Error::Invalid("lab underlay has no br0".into()))?;
        under
            .add_veth(&VethSpec {
                name: "host",
                peer_name: &link.name,
                peer_netns: Some(&root),
                mtu: None,
                master: Some(br.index),
            })
            .await?;
        if let Some(l) = under.link_by_name("host").await? {
            under.set_up(l.index).await?;
        }
        let nl = Netlink::connect()?;
        let l = nl.link_by_name(&link.name).await?.ok_or_else(|| {
            meshwork_netlink::Error::Invalid(format!("{} vanished after creation", link.name))
        })?;
        nl.add_address(l.index, IpNet::V4(link.addr)).await?;
        nl.set_up(l.index).await?;
        for (dst, via) in &link.routes {
            let mut r = Route::new(*dst);
            r.gateway = Some(*via);
            r.oif = Some(l.index);
            nl.add_route(&r).await?;
        }
        Ok(())
    }
}
