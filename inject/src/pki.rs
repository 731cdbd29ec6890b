//! The webhook's serving certificate: a CA of its own (the `caBundle` of the webhook
//! configuration) and a leaf for the names the API server dials. kube-apiserver calls a
//! webhook Service as `<name>.<namespace>.svc` and checks the certificate for that name;
//! a URL webhook by its host. Kept apart from the mesh's CA: the API server trusts this one
//! for admission only, and workloads never see it.

use std::{net::IpAddr, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// PEM: the CA certificate (the bundle), the serving chain (leaf, CA) and the leaf's key.
#[derive(Clone, Debug)]
pub struct ServingPki {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// A new CA and a serving certificate for `names` and `ips`, both valid for `life` from
/// an hour ago (clock skew between the API server's host and this one).
pub fn serving_pki(
    names: &[&str],
    ips: &[IpAddr],
    life: Duration,
) -> Result<ServingPki, rcgen::Error> {
    let from = time::OffsetDateTime::now_utc() - time::Duration::HOUR;
    let until = from + time::Duration::HOUR + life;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(vec![])?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "meshwork webhook CA");
    (ca.not_before, ca.not_after) = (from, until);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    leaf.subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("meshwork webhook"),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    (leaf.not_before, leaf.not_after) = (from, until);
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(ServingPki {
        ca: ca_cert.pem(),
        cert: format!("{}{}", cert.pem(), ca_cert.pem()),
        key: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn the_leaf_names_the_service_and_chains_to_the_bundle() {
        let p = super::serving_pki(
            &["meshwork-injector.meshwork-system.svc"],
            &["127.0.0.1".parse().unwrap()],
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(p.ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(p.cert.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(chain.len(), 2);
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.into(),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let now = rustls_pki_types::UnixTime::now();
        for name in ["meshwork-injector.meshwork-system.svc", "127.0.0.1"] {
            let sn = rustls_pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &sn, &[], now)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls_pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(verifier
            .verify_server_cert(&chain[0], &chain[1..], &other, &[], now)
            .is_err());
    }
}
