//! The proxy's mesh credentials: what it presents and whom it accepts, from the identity
//! service's client library (`identity/src/client.rs`), behind a trait so that the stacks do
//! not care where a certificate came from. Mesh connections are told from the app's own TLS
//! by their server name: a proxy answers to its identity as a DNS name (`mesh_server_name`),
//! as Linkerd's proxies answer to `<sa>.<ns>.serviceaccount.identity.linkerd.<domain>`.

use std::sync::Arc;

use meshwork_identity::{
    client::Identity,
    spiffe::SpiffeId,
    verify::{peer_identity, Expect},
};

pub trait Credentials: Send + Sync + 'static {
    /// This proxy's identity.
    fn id(&self) -> &SpiffeId;
    /// The server side of mesh connections: TLS 1.3, a client certificate of the trust domain
    /// required.
    fn server_config(&self) -> Arc<rustls::ServerConfig>;
    /// The client side towards a peer that must prove `peer`.
    fn client_config(&self, peer: &SpiffeId) -> Arc<rustls::ClientConfig>;
}

impl Credentials for Identity {
    fn id(&self) -> &SpiffeId {
        Identity::id(self)
    }
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let td = self.id().trust_domain().to_string();
        Arc::new(Identity::server_config(self, Expect::TrustDomain(td)))
    }
    fn client_config(&self, peer: &SpiffeId) -> Arc<rustls::ClientConfig> {
        let mut c = Identity::client_config(self, Expect::Identity(peer.clone()));
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    }
}

/// The DNS name a proxy of `id` answers to on mesh connections (SNI). IDs not of the
/// `ns/<ns>/sa/<sa>` shape get a name from their path's segments.
pub fn mesh_server_name(id: &SpiffeId) -> String {
    let who = match id.namespace_and_account() {
        Some((ns, sa)) => format!("{sa}.{ns}.serviceaccount"),
        None => id
            .path()
            .trim_matches('/')
            .split('/')
            .rev()
            .collect::<Vec<_>>()
            .join("."),
    };
    format!("{who}.identity.meshwork.{}", id.trust_domain()).to_ascii_lowercase()
}

/// The SPIFFE ID the peer of an established mesh connection proved.
pub fn peer_id(conn: &rustls::CommonState) -> Option<SpiffeId> {
    let certs = conn.peer_certificates()?;
    peer_identity(certs.first()?.as_ref()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_follow_the_account() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        assert_eq!(
            mesh_server_name(&id),
            "web.default.serviceaccount.identity.meshwork.cluster.local"
        );
        let id = SpiffeId::parse("spiffe://example.org/Gateway/east").unwrap();
        assert_eq!(
            mesh_server_name(&id),
            "east.gateway.identity.meshwork.example.org"
        );
    }
}
