//! Verifying mesh peers: the certificate chain up to a trust anchor of the current bundle
//! (webpki, as rustls itself does it), then the peer's identity from its one URI SAN — not a
//! DNS name, which is what rustls's own verifier would check (the SPIFFE X509-SVID standard,
//! github.com/spiffe/spiffe `standards/X509-SVID.md`, section 5: "validation of the SPIFFE ID").
//!
//! The bundle is shared and replaced as a whole when anchors rotate; verifiers read it on
//! every handshake.

use std::{
    fmt,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    DigitallySignedStruct, DistinguishedName, SignatureScheme,
};

use crate::spiffe::SpiffeId;

/// The trust anchors, shared by the verifiers of one workload.
#[derive(Clone, Default)]
pub struct Bundle(Arc<RwLock<Arc<Vec<CertificateDer<'static>>>>>);

impl Bundle {
    pub fn new(anchors: Vec<CertificateDer<'static>>) -> Self {
        Bundle(Arc::new(RwLock::new(Arc::new(anchors))))
    }
    pub fn get(&self) -> Arc<Vec<CertificateDer<'static>>> {
        self.0.read().map(|g| g.clone()).unwrap_or_default()
    }
    pub fn set(&self, anchors: Vec<CertificateDer<'static>>) {
        if let Ok(mut g) = self.0.write() {
            *g = Arc::new(anchors);
        }
    }
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bundle({} anchors)", self.get().len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("certificate chain: {0}")]
    Chain(String),
    #[error("the certificate has no single SPIFFE ID (one URI SAN)")]
    NoIdentity,
    #[error("peer is {got}, not {want}")]
    WrongIdentity { got: String, want: String },
    #[error("peer is in trust domain {got}, not {want}")]
    WrongTrustDomain { got: String, want: String },
}

/// Checks `leaf` (with `intermediates`) up to one of `anchors` at `now`, for a server
/// (`server`) or a client certificate.
pub fn verify_chain(
    anchors: &[CertificateDer<'_>],
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: SystemTime,
    server: bool,
) -> Result<(), VerifyError> {
    let anchors: Vec<_> = anchors
        .iter()
        .filter_map(|a| webpki::anchor_from_trusted_cert(a).ok())
        .collect();
    let ee =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| VerifyError::Chain(e.to_string()))?;
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| VerifyError::Chain(e.to_string()))?;
    let usage = if server {
        webpki::KeyUsage::server_auth()
    } else {
        webpki::KeyUsage::client_auth()
    };
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        UnixTime::since_unix_epoch(secs),
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| VerifyError::Chain(e.to_string()))
}

/// The SPIFFE ID of a certificate: its one URI SAN.
pub fn peer_identity(der: &[u8]) -> Result<SpiffeId, VerifyError> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| VerifyError::NoIdentity)?;
    let san = c
        .subject_alternative_name()
        .ok()
        .flatten()
        .ok_or(VerifyError::NoIdentity)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => SpiffeId::parse(one).map_err(|_| VerifyError::NoIdentity),
        _ => Err(VerifyError::NoIdentity),
    }
}

/// Who a verifier accepts.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Exactly this workload.
    Identity(SpiffeId),
    /// Anyone of this trust domain.
    TrustDomain(String),
}

impl Expect {
    fn check(&self, got: &SpiffeId) -> Result<(), VerifyError> {
        match self {
            Expect::Identity(want) if want != got => Err(VerifyError::WrongIdentity {
                got: got.to_string(),
                want: want.to_string(),
            }),
            Expect::TrustDomain(td) if td != got.trust_domain() => {
                Err(VerifyError::WrongTrustDomain {
                    got: got.trust_domain().into(),
                    want: td.clone(),
                })
            }
            _ => Ok(()),
        }
    }
}

fn algs() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn to_rustls(e: VerifyError) -> rustls::Error {
    match e {
        VerifyError::Chain(s) => rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(VerifyError::Chain(s)))),
        ),
        other => rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
            rustls::OtherError(Arc::new(other)),
        )),
    }
}

fn verify_peer(
    bundle: &Bundle,
    expect: &Expect,
    leaf: &CertificateDer<'_>,
    inter: &[CertificateDer<'_>],
    now: UnixTime,
    server: bool,
) -> Result<(), rustls::Error> {
    let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
    verify_chain(&bundle.get(), leaf, inter, now, server).map_err(to_rustls)?;
    let id = peer_identity(leaf).map_err(to_rustls)?;
    expect.check(&id).map_err(to_rustls)
}

/// A client's check of a mesh server: chain to the bundle, then its SPIFFE ID. The TLS
/// server name is not compared with the certificate (it has no DNS names).
#[derive(Debug)]
pub struct ServerVerifier {
    pub bundle: Bundle,
    pub expect: Expect,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_peer(
            &self.bundle,
            &self.expect,
            end_entity,
            intermediates,
            now,
            true,
        )?;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algs())
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algs())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algs().supported_schemes()
    }
}

/// A server's check of mesh clients (mutual TLS): a certificate is required.
#[derive(Debug)]
pub struct ClientVerifier {
    pub bundle: Bundle,
    pub expect: Expect,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_peer(
            &self.bundle,
            &self.expect,
            end_entity,
            intermediates,
            now,
            false,
        )?;
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algs())
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algs())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algs().supported_schemes()
    }
}
