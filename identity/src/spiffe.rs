//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`), checked as the SPIFFE ID standard
//! (github.com/spiffe/spiffe `standards/SPIFFE-ID.md`, sections 2.1-2.3) says: lowercase trust
//! domain of `[a-z0-9.-_]`, path segments of `[A-Za-z0-9.-_]` that are neither empty nor
//! `.`/`..`, no query, fragment, port or user info, at most 2048 bytes. The mesh names a
//! workload after its ServiceAccount:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("a SPIFFE ID starts with spiffe://")]
    Scheme,
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error("the trust domain may hold only lowercase letters, digits, '.', '-' and '_'")]
    TrustDomainChars,
    #[error("path segments may not be empty, '.' or '..'")]
    Segment,
    #[error("path segments may hold only letters, digits, '.', '-' and '_'")]
    PathChars,
    #[error("a SPIFFE ID is at most 2048 bytes")]
    TooLong,
}

fn trust_domain_ok(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(SpiffeIdError::TrustDomainChars);
    }
    Ok(())
}

fn segment_ok(s: &str) -> Result<(), SpiffeIdError> {
    if s.is_empty() || s == "." || s == ".." {
        return Err(SpiffeIdError::Segment);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(SpiffeIdError::PathChars);
    }
    Ok(())
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > 2048 {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        trust_domain_ok(td)?;
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                segment_ok(seg)?;
            }
        }
        Ok(SpiffeId {
            trust_domain: td.to_string(),
            path: path.to_string(),
        })
    }

    /// `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn service_account(trust_domain: &str, ns: &str, sa: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// (namespace, service account) of a mesh workload ID.
    pub fn namespace_and_account(&self) -> Option<(&str, &str)> {
        let mut it = self.path.strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_round_trip() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/app/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace_and_account(), Some(("app", "web")));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/app/sa/web");
        assert_eq!(
            SpiffeId::service_account("cluster.local", "app", "web").unwrap(),
            id
        );
        assert!(SpiffeId::parse("spiffe://example.org").is_ok());
    }

    #[test]
    fn what_the_standard_refuses() {
        for (bad, why) in [
            ("http://cluster.local/ns/a/sa/b", SpiffeIdError::Scheme),
            ("spiffe:///ns/a", SpiffeIdError::EmptyTrustDomain),
            (
                "spiffe://Cluster.local/ns/a",
                SpiffeIdError::TrustDomainChars,
            ),
            (
                "spiffe://cluster.local:8080/ns/a",
                SpiffeIdError::TrustDomainChars,
            ),
            (
                "spiffe://user@cluster.local/ns/a",
                SpiffeIdError::TrustDomainChars,
            ),
            ("spiffe://cluster.local/ns//sa/b", SpiffeIdError::Segment),
            ("spiffe://cluster.local/ns/../sa/b", SpiffeIdError::Segment),
            ("spiffe://cluster.local/ns/a/", SpiffeIdError::Segment),
            ("spiffe://cluster.local/ns/a?x=1", SpiffeIdError::PathChars),
            ("spiffe://cluster.local/ns/a#f", SpiffeIdError::PathChars),
            ("spiffe://cluster.local/ns/a%20b", SpiffeIdError::PathChars),
        ] {
            assert_eq!(SpiffeId::parse(bad), Err(why), "{bad}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(2048));
        assert_eq!(SpiffeId::parse(&long), Err(SpiffeIdError::TooLong));
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b/extra").unwrap();
        assert_eq!(id.namespace_and_account(), None);
    }
}
