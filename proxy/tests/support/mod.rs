//! Shared by the proxy's integration tests.

use std::sync::Arc;

use meshwork_identity::spiffe::SpiffeId;

/// Credentials for tests whose endpoints are all outside the mesh: never asked for.
pub struct NoCreds;

impl meshwork_proxy::tls::Credentials for NoCreds {
    fn id(&self) -> &SpiffeId {
        unreachable!("plaintext endpoints only")
    }
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        unreachable!("plaintext endpoints only")
    }
    fn client_config(&self, _: &SpiffeId) -> Arc<rustls::ClientConfig> {
        unreachable!("plaintext endpoints only")
    }
}
