//! Where an authority's requests go: a fixed table (`Static`, from the command line or a
//! test), and the control agent's discovery stream (`resolve.rs`), which fill the same
//! `Endpoint`s.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use meshwork_identity::spiffe::SpiffeId;

/// One backend of an authority.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The pod's address and target port.
    pub addr: SocketAddr,
    /// A meshed endpoint: its proxy's inbound port and the identity it must prove. None: not
    /// meshed, plaintext to `addr`.
    pub mesh: Option<Mesh>,
    /// An opaque port: its bytes are tunnelled, never detected.
    pub opaque: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mesh {
    pub proxy_port: u16,
    pub identity: SpiffeId,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("endpoint {0:?}: {1}")]
pub struct ParseError(String, &'static str);

/// A fixed authority → endpoints table.
#[derive(Clone, Debug, Default)]
/// Each set is shared as it is, like a set from discovery: the balancer sees the same set
/// until it changes (`outbound::Balancers`).
pub struct Static(HashMap<String, Arc<[Endpoint]>>);

impl Static {
    pub fn insert(&mut self, authority: &str, eps: Vec<Endpoint>) {
        self.0.insert(authority.to_ascii_lowercase(), eps.into());
    }

    /// `authority` in lower case, as the stack asks (no copy per request to fold it).
    pub fn get(&self, authority: &str) -> Option<&Arc<[Endpoint]>> {
        self.0.get(authority)
    }

    /// `AUTHORITY=ADDR[@PROXY_PORT@SPIFFE_ID][,ADDR...]`, e.g.
    /// `web.default.svc.cluster.local:80=10.244.1.5:8080@4143@spiffe://cluster.local/ns/default/sa/web`.
    pub fn parse_entry(&mut self, entry: &str) -> Result<(), ParseError> {
        let err = |why| ParseError(entry.to_string(), why);
        let (authority, eps) = entry.split_once('=').ok_or(err("no '='"))?;
        if authority.is_empty() || !authority.contains(':') {
            return Err(err("the authority is host:port"));
        }
        let mut out = Vec::new();
        for ep in eps.split(',') {
            let mut parts = ep.splitn(3, '@');
            let addr = parts
                .next()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .ok_or(err("an endpoint address is ip:port"))?;
            let mesh = match (parts.next(), parts.next()) {
                (None, _) => None,
                (Some(port), Some(id)) => Some(Mesh {
                    proxy_port: port.parse().map_err(|_| err("a proxy port is a number"))?,
                    identity: SpiffeId::parse(id).map_err(|_| err("not a SPIFFE ID"))?,
                }),
                (Some(_), None) => return Err(err("a meshed endpoint is ADDR@PORT@SPIFFE_ID")),
            };
            out.push(Endpoint {
                addr,
                mesh,
                opaque: false,
            });
        }
        self.insert(authority, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_bad_ones_say_why() {
        let mut s = Static::default();
        s.parse_entry(
            "Web.Default:80=10.0.0.1:8080@4143@spiffe://cluster.local/ns/default/sa/web,10.0.0.2:8080",
        )
        .unwrap();
        let eps = s.get("web.default:80").unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].mesh.as_ref().unwrap().proxy_port, 4143);
        assert_eq!(eps[1].mesh, None);
        for (bad, why) in [
            ("web:80", "no '='"),
            ("web=10.0.0.1:1", "the authority is host:port"),
            ("web:80=10.0.0.1", "an endpoint address is ip:port"),
            (
                "web:80=10.0.0.1:1@4143",
                "a meshed endpoint is ADDR@PORT@SPIFFE_ID",
            ),
            (
                "web:80=10.0.0.1:1@x@spiffe://a/b",
                "a proxy port is a number",
            ),
            ("web:80=10.0.0.1:1@1@https://a/b", "not a SPIFFE ID"),
        ] {
            assert_eq!(s.parse_entry(bad).unwrap_err().1, why, "{bad}");
        }
    }
}
