//! The mesh identity service and its client library (see README.md and ARCHITECTURE.md):
//! ServiceAccount tokens in, short-lived SPIFFE X.509 certificates out, as Linkerd's identity
//! controller and Istio's istiod CA do it.

pub mod ca;
pub mod client;
pub mod metrics;
pub mod review;
pub mod server;
pub mod service;
pub mod spiffe;
pub mod token;
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

/// `24h`, `90m`, `30s`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?}: a number before each unit"))?;
        num.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(format!("{s:?}: units are h, m and s")),
        };
    }
    if !num.is_empty() {
        return Err(format!("{s:?}: a unit after each number (h, m, s)"));
    }
    if total == 0 {
        return Err(format!("{s:?}: must be longer than zero"));
    }
    Ok(std::time::Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(super::parse_duration("24h").unwrap().as_secs(), 86400);
        assert!(super::parse_duration("10").is_err());
        assert!(super::parse_duration("1d").is_err());
        assert!(super::parse_duration("0s").is_err());
    }
}
