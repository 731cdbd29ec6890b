//! The mesh identity service and its client library (see README.md and ARCHITECTURE.md):
//! ServiceAccount tokens in, short-lived SPIFFE X.509 certificates out, as Linkerd's identity
//! controller and Istio's istiod CA do it.

pub mod ca;
pub mod client;
pub mod metrics;
pub mod publish;
pub mod review;
pub mod server;
pub mod service;
pub mod spiffe;
pub mod token;
pub mod transport;
pub mod verify;

/// The generated gRPC code (proto/meshwork/identity/v1/identity.proto).
pub mod pb {
    #![allow(
        clippy::all,
        clippy::allow_attributes_without_reason,
        missing_docs,
        reason = "generated code"
    )]
    tonic::include_proto!("meshwork.identity.v1");
}

pub use spiffe::SpiffeId;

/// The token audience the service accepts (what pods' projected token volumes ask for).
pub const DEFAULT_AUDIENCE: &str = "identity.meshwork.io";
/// The trust domain of a cluster whose DNS domain is the default.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// `24h`, `90m`, `30s`, `1h30m` (`meshwork_daemon::parse_duration`), longer than zero.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = meshwork_daemon::parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be longer than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(super::parse_duration("24h").unwrap().as_secs(), 86400);
        assert!(super::parse_duration("soon").is_err());
        assert!(super::parse_duration("0s").is_err());
    }
}
