use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use meshwork_netlink::{LinkKind, Netlink, VxlanSpec};

use crate::plan::{plan, vtep_addr, vtep_mac, Desired, Observed, Op, RemoteNode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netlink(#[from] meshwork_netlink::Error),
    #[error("underlay link {0:?} does not exist")]
    NoUnderlay(String),
    #[error("{name} exists but is a {kind:?} link, not VXLAN; refusing to touch it")]
    NotVxlan {
        name: String,
        kind: Option<LinkKind>,
    },
}

/// This node's side of the overlay.
#[derive(Clone, Debug)]
pub struct OverlayConfig {
    pub device: String,
    pub vni: u32,
    pub port: u16,
    pub underlay_link: String,
    pub local_ip: Ipv4Addr,
    /// This node's pod CIDRs (one per family); their first address goes on the device.
    pub pod_cidrs: Vec<IpNet>,
    /// Device MTU; default: underlay MTU minus 50 (outer Ethernet, IPv4, UDP, VXLAN).
    pub mtu: Option<u32>,
}

impl OverlayConfig {
    pub const DEFAULT_DEVICE: &'static str = "mw.vxlan";
    pub const DEFAULT_VNI: u32 = 1;
    /// Linux's and flannel's VXLAN port.
    pub const DEFAULT_PORT: u16 = 8472;

    pub fn new(underlay_link: &str, local_ip: Ipv4Addr, pod_cidrs: Vec<IpNet>) -> Self {
        OverlayConfig {
            device: Self::DEFAULT_DEVICE.into(),
            vni: Self::DEFAULT_VNI,
            port: Self::DEFAULT_PORT,
            underlay_link: underlay_link.into(),
            local_ip,
            pod_cidrs,
            mtu: None,
        }
    }
}

/// A programmed VXLAN device.
pub struct Overlay {
    nl: Netlink,
    index: u32,
    pub mtu: u32,
}

impl Overlay {
    /// Creates the device if missing (adopting an existing one as is, so a restarted agent
    /// does not disturb traffic), sets its address and brings it up.
    pub async fn ensure(nl: Netlink, cfg: &OverlayConfig) -> Result<Overlay, Error> {
        let underlay = nl
            .link_by_name(&cfg.underlay_link)
            .await?
            .ok_or_else(|| Error::NoUnderlay(cfg.underlay_link.clone()))?;
        let mtu = cfg.mtu.unwrap_or(underlay.mtu.saturating_sub(50));
        let link = match nl.link_by_name(&cfg.device).await? {
            Some(l) if l.kind == Some(LinkKind::Vxlan) => l,
            Some(l) => {
                return Err(Error::NotVxlan {
                    name: l.name,
                    kind: l.kind,
                })
            }
            None => {
                nl.add_vxlan(&VxlanSpec {
                    name: &cfg.device,
                    vni: cfg.vni,
                    local: cfg.local_ip,
                    underlay_index: underlay.index,
                    port: cfg.port,
                    mtu,
                    mac: vtep_mac(cfg.local_ip),
                })
                .await?;
                nl.link_by_name(&cfg.device).await?.ok_or_else(|| {
                    Error::Netlink(meshwork_netlink::Error::Invalid(format!(
                        "{} vanished after creation",
                        cfg.device
                    )))
                })?
            }
        };
        if link.mtu != mtu {
            nl.set_mtu(link.index, mtu).await?;
        }
        let have = nl.addresses(Some(link.index)).await?;
        for cidr in &cfg.pod_cidrs {
            let host_len = if cidr.addr().is_ipv4() { 32 } else { 128 };
            let addr = IpNet::new(vtep_addr(cidr.trunc()), host_len)
                .map_err(|e| meshwork_netlink::Error::Invalid(e.to_string()))?;
            if !have.iter().any(|(_, a)| *a == addr) {
                match nl.add_address(link.index, addr).await {
                    Ok(()) => {}
                    Err(e) if e.is_exists() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if !link.up {
            nl.set_up(link.index).await?;
        }
        Ok(Overlay {
            nl,
            index: link.index,
            mtu,
        })
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Reads what the kernel has on the device.
    pub async fn observe(&self) -> Result<Observed, Error> {
        let mut o = Observed::default();
        for v6 in [false, true] {
            o.routes.extend(
                self.nl
                    .routes(v6, 254)
                    .await?
                    .into_iter()
                    .filter(|r| r.oif == Some(self.index) && r.gateway.is_some()),
            );
        }
        o.neighbours.extend(self.nl.neighbours(self.index).await?);
        o.fdb.extend(
            self.nl
                .fdb(self.index)
                .await?
                .into_iter()
                .filter(|f| !matches!(f.dst, IpAddr::V4(a) if a.is_unspecified())),
        );
        Ok(o)
    }

    /// Converges the device on `remotes`; returns the operations it applied.
    pub async fn sync(&self, remotes: &[RemoteNode]) -> Result<Vec<Op>, Error> {
        let desired = Desired::for_remotes(self.index, remotes);
        let observed = self.observe().await?;
        let ops = plan(&desired, &observed);
        for op in &ops {
            tracing::debug!(?op, "overlay");
            self.apply(op).await?;
        }
        Ok(ops)
    }

    async fn apply(&self, op: &Op) -> Result<(), Error> {
        let nl = &self.nl;
        let res = match op {
            Op::SetFdb(f) => nl.replace_fdb(f).await,
            Op::SetNeighbour(n) => nl.replace_neighbour(n).await,
            Op::AddRoute(r) => nl.replace_route(r).await,
            Op::DelRoute(r) => nl.del_route(r).await,
            Op::DelNeighbour(n) => nl.del_neighbour(n).await,
            Op::DelFdb(f) => nl.del_fdb(f).await,
        };
        match res {
            Ok(()) => Ok(()),
            // Deleting what is already gone is success: ops are retried.
            Err(e)
                if e.is_not_found()
                    && matches!(op, Op::DelRoute(_) | Op::DelNeighbour(_) | Op::DelFdb(_)) =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the device; its routes, neighbours and FDB entries go with it.
    pub async fn uninstall(self) -> Result<(), Error> {
        match self.nl.delete_link(self.index).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
