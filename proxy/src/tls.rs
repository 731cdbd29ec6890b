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
///
/// A service account's name may be 253 characters and its namespace 63, so the readable
/// name can exceed DNS's 253 (or, outside Kubernetes, a label's 63) and rustls would refuse
/// it as SNI: every connection to such a workload would fail. Such an ID answers to a hash
/// of itself instead; both sides compute the name, so they agree.
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
    let td = id.trust_domain();
    let readable = format!("{who}.identity.meshwork.{td}").to_ascii_lowercase();
    if dns_name_ok(&readable) {
        return readable;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, id.to_string().as_bytes());
    let hash: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let hashed = format!("h{hash}.identity.meshwork.{td}");
    if dns_name_ok(&hashed) {
        hashed
    } else {
        // A trust domain too long to be a DNS suffix (SPIFFE allows 255 characters).
        format!("h{hash}.identity.meshwork")
    }
}

fn dns_name_ok(name: &str) -> bool {
    rustls::pki_types::DnsName::try_from(name).is_ok()
}

/// When the peer's certificate expires, as a point on tokio's clock: the end of a mesh
/// session made with it (short lives are the mesh's revocation), on either side.
pub fn peer_not_after(conn: &rustls::CommonState) -> Option<tokio::time::Instant> {
    let leaf = conn.peer_certificates()?.first()?;
    let at = meshwork_identity::ca::not_after(leaf)?;
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    Some(tokio::time::Instant::now() + left)
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

    /// Kubernetes allows a 253-character service account name; its readable server name
    /// would be too long for SNI, and every connection to its pods would fail.
    #[test]
    fn long_identities_still_get_a_valid_distinct_server_name() {
        let sa = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(sa.len(), 253);
        let ns = "n".repeat(63);
        let long = SpiffeId::parse(&format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")).unwrap();
        let other = SpiffeId::parse(&format!("spiffe://cluster.local/ns/{ns}/sa/{sa}x")).unwrap();
        let segment = SpiffeId::parse(&format!("spiffe://example.org/{}", "s".repeat(64))).unwrap();
        let td = SpiffeId::parse(&format!("spiffe://{}/ns/a/sa/b", "t".repeat(250))).unwrap();
        let mut names = Vec::new();
        for id in [&long, &other, &segment, &td] {
            let name = mesh_server_name(id);
            assert!(
                rustls::pki_types::ServerName::try_from(name.as_str()).is_ok(),
                "{id} got {name}, which is no valid server name"
            );
            names.push(name);
        }
        assert_ne!(names[0], names[1], "two identities share a server name");
        assert!(names[0].ends_with(".identity.meshwork.cluster.local"));
    }
}
