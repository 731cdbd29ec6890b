//! The certificate authority, in Linkerd's shape: a long-lived trust anchor (root) that stays
//! offline in principle, and an issuer (intermediate) signed by it that signs the workloads'
//! short-lived certificates and is rotated on its own. The trust bundle may hold several
//! anchors: during an anchor rotation it holds the old and the new side by side.
//!
//! Leaves are SPIFFE X.509-SVIDs (the SPIFFE X509-SVID standard, github.com/spiffe/spiffe
//! `standards/X509-SVID.md`, section 4): exactly one URI SAN, the SPIFFE ID; `CA:false`; key
//! usage digitalSignature; extended key usage serverAuth and clientAuth. The CSR only
//! contributes its public key, after its signature has been checked: names, usages and
//! lifetime are the CA's.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, CertificateSigningRequestDer};

use crate::spiffe::SpiffeId;

/// Why a CSR was refused (each maps to a gRPC InvalidArgument and a metrics reason).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("the CSR is not a well-formed PKCS#10 request with a valid signature: {0}")]
    Malformed(String),
    #[error("the CSR's key is {0}; this CA signs ECDSA P-256 and Ed25519 keys")]
    KeyAlgorithm(String),
    #[error("the CSR asks for names other than {identity}: {asked}")]
    OtherNames { identity: String, asked: String },
    #[error("the CSR asks to be a CA")]
    WantsCa,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{what}: {why}")]
    Load { what: String, why: String },
    #[error("signing: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("the issuer certificate expires within {}s: rotate it", MIN_LEAF_LIFE.as_secs())]
    IssuerExpiring,
}

fn load(what: &str, why: impl std::fmt::Display) -> CaError {
    CaError::Load {
        what: what.into(),
        why: why.to_string(),
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// How far back a leaf's validity starts (clock skew between the CA and its clients).
const BACKDATE: Duration = Duration::from_secs(60);

/// The shortest life a leaf is issued with: an issuer closer to its own expiry than this
/// issues nothing (its leaves would be renewed again at once, and die with it).
pub const MIN_LEAF_LIFE: Duration = Duration::from_secs(300);

fn at(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix(t)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    // Positive, as X.509 wants it.
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

/// A freshly made key and self-signed (anchor) or anchor-signed (issuer) certificate, PEM.
pub struct Generated {
    pub cert_pem: String,
    pub key_pem: String,
}

fn ca_params(cn: &str, lifetime: Duration, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    p.not_before = at(now - Duration::from_secs(60));
    p.not_after = at(now + lifetime);
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    p
}

/// A new trust anchor for `trust_domain` (ECDSA P-256).
pub fn generate_anchor(trust_domain: &str, lifetime: Duration) -> Result<Generated, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = ca_params(&format!("root.{trust_domain}"), lifetime, None).self_signed(&key)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A new issuer signed by the anchor (`anchor_cert_pem`, `anchor_key_pem`).
pub fn generate_issuer(
    trust_domain: &str,
    anchor_cert_pem: &str,
    anchor_key_pem: &str,
    lifetime: Duration,
) -> Result<Generated, CaError> {
    let anchor_key = KeyPair::from_pem(anchor_key_pem).map_err(|e| load("anchor key", e))?;
    let anchor = Issuer::from_ca_cert_pem(anchor_cert_pem, anchor_key)
        .map_err(|e| load("anchor certificate", e))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = ca_params(&format!("identity.{trust_domain}"), lifetime, Some(0))
        .signed_by(&key, &anchor)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes a new issuer signed by the anchor into `dir` as `tls.crt` and `tls.key` (0600), the
/// names the service reads (server.rs); returns it. Each file is replaced whole; a crash
/// between the two leaves a certificate and key that do not match, which the service refuses
/// at load (`Ca::from_pem` signs and verifies a probe leaf) with the reason.
pub fn write_issuer(
    dir: &std::path::Path,
    trust_domain: &str,
    anchor_cert_pem: &str,
    anchor_key_pem: &str,
    lifetime: Duration,
) -> Result<Generated, CaError> {
    let issuer = generate_issuer(trust_domain, anchor_cert_pem, anchor_key_pem, lifetime)?;
    let io = |e: std::io::Error| load("writing the issuer", e);
    std::fs::create_dir_all(dir).map_err(io)?;
    meshwork_daemon::write_private(&dir.join("tls.crt"), issuer.cert_pem.as_bytes()).map_err(io)?;
    meshwork_daemon::write_private(&dir.join("tls.key"), issuer.key_pem.as_bytes()).map_err(io)?;
    Ok(issuer)
}

/// Writes a new trust anchor (`ca.crt`, `ca.key`) and an issuer from it (`tls.crt`,
/// `tls.key`) into `dir`; returns (anchor, issuer).
pub fn write_new_ca(
    dir: &std::path::Path,
    trust_domain: &str,
    anchor_lifetime: Duration,
    issuer_lifetime: Duration,
) -> Result<(Generated, Generated), CaError> {
    let anchor = generate_anchor(trust_domain, anchor_lifetime)?;
    let io = |e: std::io::Error| load("writing the trust anchor", e);
    std::fs::create_dir_all(dir).map_err(io)?;
    meshwork_daemon::write_private(&dir.join("ca.crt"), anchor.cert_pem.as_bytes()).map_err(io)?;
    meshwork_daemon::write_private(&dir.join("ca.key"), anchor.key_pem.as_bytes()).map_err(io)?;
    let issuer = write_issuer(
        dir,
        trust_domain,
        &anchor.cert_pem,
        &anchor.key_pem,
        issuer_lifetime,
    )?;
    Ok((anchor, issuer))
}

/// Every certificate of a PEM bundle, DER.
pub fn certs_from_pem(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load(what, e))?;
    if certs.is_empty() {
        return Err(load(what, "no certificate in it"));
    }
    Ok(certs)
}

/// `not_after` of a DER certificate.
pub fn not_after(der: &[u8]) -> Option<SystemTime> {
    use x509_parser::prelude::FromDer;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let t = c.validity().not_after.timestamp();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))
}

/// The trust anchors and the issuer in use.
pub struct Ca {
    pub anchors: Vec<CertificateDer<'static>>,
    /// The issuer first, then any certificates between it and an anchor.
    pub chain: Vec<CertificateDer<'static>>,
    issuer: Issuer<'static, KeyPair>,
    pub issuer_not_after: SystemTime,
}

/// A signed leaf.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub not_after: SystemTime,
    pub serial: String,
}

impl Ca {
    /// From PEM: the anchors bundle, the issuer certificate (optionally followed by its chain)
    /// and the issuer key. The issuer must chain to one of the anchors.
    pub fn from_pem(anchors_pem: &str, issuer_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        let anchors = certs_from_pem("trust anchors", anchors_pem)?;
        let chain = certs_from_pem("issuer certificate", issuer_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| load("issuer key", e))?;
        let issuer =
            Issuer::from_ca_cert_der(&chain[0], key).map_err(|e| load("issuer certificate", e))?;
        let issuer_not_after = not_after(&chain[0])
            .ok_or_else(|| load("issuer certificate", "unreadable validity"))?;
        // The issuer must lead to one of the anchors: checked as a peer will check a leaf.
        let ca = Ca {
            anchors,
            chain,
            issuer,
            issuer_not_after,
        };
        let probe = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let id =
            SpiffeId::parse("spiffe://probe.invalid/ns/x/sa/y").map_err(|e| load("probe", e))?;
        let leaf = ca.sign_key(&probe, &id, Duration::from_secs(60))?;
        crate::verify::verify_chain(&ca.anchors, &leaf.der, &ca.chain, SystemTime::now(), true)
            .map_err(|e| {
                load(
                    "issuer certificate",
                    format!("does not chain to the trust anchors: {e}"),
                )
            })?;
        Ok(ca)
    }

    fn leaf_params(
        &self,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<(CertificateParams, SystemTime), CaError> {
        let now = SystemTime::now();
        // Never past the issuer: a leaf outliving its issuer would fail verification early.
        let end = (now + lifetime).min(self.issuer_not_after);
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(
            id.to_string()
                .try_into()
                .map_err(|e: rcgen::Error| load("identity", e))?,
        )];
        p.is_ca = IsCa::ExplicitNoCa;
        // Signatures only: these are ECDSA and Ed25519 keys, which encipher nothing (RFC
        // 5480 §3, RFC 8410 §5).
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // Slack for clocks behind ours (Linkerd's identity backdates too): a node whose
        // clock is behind by more would find every new certificate not valid yet, and its
        // client refuses to install those.
        p.not_before = at(now - BACKDATE);
        p.not_after = at(end);
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        Ok((p, end))
    }

    fn leaf(der: CertificateDer<'static>, not_after: SystemTime, p: &CertificateParams) -> Leaf {
        let serial = p
            .serial_number
            .as_ref()
            .map(|s| s.to_bytes().iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default();
        Leaf {
            der,
            not_after,
            serial,
        }
    }

    /// Signs a leaf for a key held here (the service's own serving certificate, tests).
    pub fn sign_key(
        &self,
        key: &KeyPair,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Leaf, CaError> {
        let (p, end) = self.leaf_params(id, lifetime)?;
        let cert = p.signed_by(key, &self.issuer)?;
        Ok(Self::leaf(cert.der().clone(), end, &p))
    }

    /// Signs the caller's CSR for `id` (already authorized), after checking it (`check_csr`).
    pub fn sign_csr(
        &self,
        csr: CertificateSigningRequestParams,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Leaf, CaError> {
        // Checked here, not in `leaf_params`: loading an issuer close to its end still works
        // (its probe leaf, `from_pem`), so the service runs and says why it issues nothing.
        if self.issuer_not_after < SystemTime::now() + MIN_LEAF_LIFE {
            return Err(CaError::IssuerExpiring);
        }
        let (p, end) = self.leaf_params(id, lifetime)?;
        let csr = CertificateSigningRequestParams {
            params: p,
            public_key: csr.public_key,
        };
        let cert = csr.signed_by(&self.issuer)?;
        Ok(Self::leaf(cert.der().clone(), end, &csr.params))
    }
}

/// Parses a CSR (verifying its signature) and checks it asks for nothing but `id`.
pub fn check_csr(der: &[u8], id: &SpiffeId) -> Result<CertificateSigningRequestParams, CsrError> {
    let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    // rcgen names the key by the CSR's signature algorithm; the certificate carries the key
    // as the SubjectPublicKeyInfo has it. So both are checked, and must agree: a P-384 key
    // signed "with SHA-256" would otherwise pass as P-256 and be issued a certificate
    // whose key is not what it says.
    let alg = rcgen::PublicKeyData::algorithm(&csr.public_key);
    let spki =
        spki_kind(der).ok_or_else(|| CsrError::KeyAlgorithm("not P-256 or Ed25519".into()))?;
    let agrees = match spki {
        Spki::P256 => alg == &rcgen::PKCS_ECDSA_P256_SHA256,
        Spki::Ed25519 => alg == &rcgen::PKCS_ED25519,
    };
    if !agrees {
        return Err(CsrError::KeyAlgorithm(format!(
            "{spki:?}, signed as {alg:?}"
        )));
    }
    let want = id.to_string();
    let other: Vec<String> = csr
        .params
        .subject_alt_names
        .iter()
        .filter(|s| !matches!(s, SanType::URI(u) if u.as_str() == want))
        .map(|s| format!("{s:?}"))
        .collect();
    if !other.is_empty() {
        return Err(CsrError::OtherNames {
            identity: want,
            asked: other.join(", "),
        });
    }
    if matches!(csr.params.is_ca, IsCa::Ca(_)) {
        return Err(CsrError::WantsCa);
    }
    Ok(csr)
}

#[derive(Debug, Clone, Copy)]
enum Spki {
    P256,
    Ed25519,
}

/// The key a CSR's SubjectPublicKeyInfo holds, if one this CA signs: an uncompressed P-256
/// point (RFC 5480) or an Ed25519 key (RFC 8410).
fn spki_kind(der: &[u8]) -> Option<Spki> {
    use x509_parser::{
        certification_request::X509CertificationRequest,
        oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519},
        prelude::FromDer,
    };
    let (_, req) = X509CertificationRequest::from_der(der).ok()?;
    let spki = &req.certification_request_info.subject_pki;
    let key = &spki.subject_public_key.data;
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
        (curve == OID_EC_P256 && key.len() == 65 && key[0] == 4).then_some(Spki::P256)
    } else if *alg == OID_SIG_ED25519 {
        (spki.algorithm.parameters.is_none() && key.len() == 32).then_some(Spki::Ed25519)
    } else {
        None
    }
}

/// A CSR for `id` with `key` (what the client library sends).
pub fn make_csr(key: &KeyPair, id: &SpiffeId) -> Result<Vec<u8>, rcgen::Error> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    Ok(p.serialize_request(key)?.der().to_vec())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn test_ca() -> Ca {
        let a = generate_anchor("cluster.local", Duration::from_secs(3600 * 24)).unwrap();
        let i = generate_issuer(
            "cluster.local",
            &a.cert_pem,
            &a.key_pem,
            Duration::from_secs(3600 * 12),
        )
        .unwrap();
        Ca::from_pem(&a.cert_pem, &i.cert_pem, &i.key_pem).unwrap()
    }

    #[test]
    fn signs_a_csr_as_an_svid() {
        let ca = test_ca();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/app/sa/web").unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = check_csr(&make_csr(&key, &id).unwrap(), &id).unwrap();
        let leaf = ca
            .sign_csr(csr, &id, Duration::from_secs(24 * 3600))
            .unwrap();
        // The issuer lives 12 h: the leaf may not outlive it.
        assert_eq!(leaf.not_after, ca.issuer_not_after);
        use x509_parser::prelude::FromDer;
        let (_, c) = x509_parser::certificate::X509Certificate::from_der(&leaf.der).unwrap();
        let san = c.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
        assert_eq!(
            format!("{:?}", san.value.general_names[0]),
            "URI(\"spiffe://cluster.local/ns/app/sa/web\")"
        );
        let eku = c.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && eku.value.client_auth);
        assert!(!c.is_ca());
        assert_eq!(
            c.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        crate::verify::verify_chain(&ca.anchors, &leaf.der, &ca.chain, SystemTime::now(), true)
            .unwrap();
    }

    /// The leaf starts a minute back (clients whose clock is behind take it), is for
    /// signatures only (ECDSA and Ed25519 keys encipher nothing), and an issuer about to
    /// expire issues nothing.
    #[test]
    fn leaves_are_backdated_signing_only_and_not_from_a_dying_issuer() {
        use x509_parser::prelude::FromDer;
        let ca = test_ca();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/app/sa/web").unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let csr = check_csr(&make_csr(&key, &id).unwrap(), &id).unwrap();
        let leaf = ca.sign_csr(csr, &id, Duration::from_secs(3600)).unwrap();
        let (_, c) = x509_parser::certificate::X509Certificate::from_der(&leaf.der).unwrap();
        let start = c.validity().not_before.timestamp();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - 61..=now - 59).contains(&start), "{start} vs {now}");
        let ku = c.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_encipherment());

        let a = generate_anchor("cluster.local", Duration::from_secs(3600)).unwrap();
        let i = generate_issuer(
            "cluster.local",
            &a.cert_pem,
            &a.key_pem,
            Duration::from_secs(120),
        )
        .unwrap();
        let dying = Ca::from_pem(&a.cert_pem, &i.cert_pem, &i.key_pem).unwrap();
        let csr = check_csr(&make_csr(&key, &id).unwrap(), &id).unwrap();
        assert!(matches!(
            dying.sign_csr(csr, &id, Duration::from_secs(3600)),
            Err(CaError::IssuerExpiring)
        ));
    }

    #[test]
    fn csrs_that_are_refused() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/app/sa/web").unwrap();
        let other = SpiffeId::parse("spiffe://cluster.local/ns/app/sa/admin").unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(matches!(
            check_csr(b"not a csr", &id),
            Err(CsrError::Malformed(_))
        ));
        let mut csr = make_csr(&key, &id).unwrap();
        let n = csr.len();
        csr[n - 3] ^= 0x55; // the signature no longer matches
        assert!(matches!(check_csr(&csr, &id), Err(CsrError::Malformed(_))));
        assert!(matches!(
            check_csr(&make_csr(&key, &other).unwrap(), &id),
            Err(CsrError::OtherNames { .. })
        ));
        let mut p = CertificateParams::new(vec!["web.example.com".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::URI(id.to_string().try_into().unwrap()));
        let dns = p.serialize_request(&key).unwrap();
        assert!(matches!(
            check_csr(dns.der(), &id),
            Err(CsrError::OtherNames { .. })
        ));
        let rsa_like = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(matches!(
            check_csr(&make_csr(&rsa_like, &id).unwrap(), &id),
            Err(CsrError::KeyAlgorithm(_))
        ));
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(check_csr(&make_csr(&ed, &id).unwrap(), &id).is_ok());
    }

    #[test]
    fn an_issuer_from_another_anchor_is_refused() {
        let a = generate_anchor("cluster.local", Duration::from_secs(3600)).unwrap();
        let b = generate_anchor("cluster.local", Duration::from_secs(3600)).unwrap();
        let i = generate_issuer(
            "cluster.local",
            &b.cert_pem,
            &b.key_pem,
            Duration::from_secs(600),
        )
        .unwrap();
        let err = Ca::from_pem(&a.cert_pem, &i.cert_pem, &i.key_pem)
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not chain"), "{err}");
        // With both anchors in the bundle (a rotation), it loads.
        Ca::from_pem(
            &format!("{}{}", a.cert_pem, b.cert_pem),
            &i.cert_pem,
            &i.key_pem,
        )
        .unwrap();
    }
}
