//! The client library a workload uses to hold a mesh identity (the proxy, and the control
//! agent for its discovery listener):
//!
//! - a key made here (ECDSA P-256) that never leaves the process, and a CSR for the workload's
//!   SPIFFE ID;
//! - Certify over TLS, verifying the identity service by its own SPIFFE ID against the
//!   trust anchors the workload was given (Linkerd's proxy does the same with its
//!   `LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS`); the token is re-read from its file each time,
//!   as the node refreshes it;
//! - rotation at ~70% of the certificate's life; a failed attempt is retried with jittered
//!   exponential back-off while the current certificate stays in use;
//! - rustls configs built on it: a server resolver with the current certificate, a client
//!   config presenting it, both verifying peers with the SPIFFE verifier (`verify.rs`)
//!   against the trust bundle the identity service last sent.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rcgen::KeyPair;
use rustls::{
    client::ResolvesClientCert,
    pki_types::{CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    SignatureScheme,
};
use tokio::sync::watch;

use crate::{
    pb::{identity_client::IdentityClient, CertifyRequest},
    spiffe::SpiffeId,
    verify::{Bundle, ClientVerifier, Expect, ServerVerifier},
};

#[derive(Clone, Debug)]
pub struct Config {
    /// `host:port` of the identity service.
    pub addr: String,
    /// The identity service's own SPIFFE ID (what its serving certificate names).
    pub service_identity: SpiffeId,
    /// This workload's SPIFFE ID.
    pub identity: SpiffeId,
    /// The projected ServiceAccount token for the mesh audience.
    pub token_path: PathBuf,
    /// The trust anchors to start from (PEM).
    pub trust_anchors_pem: String,
    /// The file they came from, if any: read again after a failed Certify, so that a
    /// client that missed an anchor rotation (it was away while the service's issuer moved
    /// to the new anchor) verifies the service with what its file holds now, instead of
    /// retrying for good against anchors the service no longer chains to.
    pub trust_anchors_path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("trust anchors: {0}")]
    Anchors(String),
    #[error("key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("reading the token {0}: {1}")]
    Token(String, std::io::Error),
    #[error("connecting to the identity service: {0}")]
    Connect(String),
    #[error("Certify refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("the answer: {0}")]
    Answer(String),
}

/// The certificate in use.
#[derive(Clone, Debug)]
pub struct Current {
    pub key: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Current {
    /// When to rotate: at 70% of the life.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life.mul_f64(0.7)
    }
}

struct Inner {
    cfg: Config,
    key_der: Vec<u8>,
    csr: Vec<u8>,
    bundle: Bundle,
    current: RwLock<Option<Current>>,
    ready: watch::Sender<bool>,
    lookup: Option<Lookup>,
}

/// Finds the identity service's `host:port` at each connection, instead of `Config::addr`
/// (the control agent reads a Service's ClusterIP from its own store: it is what makes
/// Services reachable, and has no cluster DNS to ask). Err: why it is not known now.
pub type Lookup = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// A workload's identity; cheap to clone.
#[derive(Clone)]
pub struct Identity(Arc<Inner>);

impl Identity {
    pub fn new(cfg: Config) -> Result<Self, ClientError> {
        let anchors = crate::ca::certs_from_pem("trust anchors", &cfg.trust_anchors_pem)
            .map_err(|e| ClientError::Anchors(e.to_string()))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr = crate::ca::make_csr(&key, &cfg.identity)?;
        let (ready, _) = watch::channel(false);
        Ok(Identity(Arc::new(Inner {
            key_der: key.serialize_der(),
            csr,
            bundle: Bundle::new(anchors),
            current: RwLock::new(None),
            ready,
            cfg,
            lookup: None,
        })))
    }

    /// `addr` looked up by `f` at each connection (before the identity is first cloned).
    pub fn with_lookup(mut self, f: Lookup) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.lookup = Some(f),
            None => unreachable!("with_lookup on a shared identity"),
        }
        self
    }

    pub fn id(&self) -> &SpiffeId {
        &self.0.cfg.identity
    }

    pub fn bundle(&self) -> Bundle {
        self.0.bundle.clone()
    }

    pub fn current(&self) -> Option<Current> {
        self.0.current.read().ok().and_then(|g| g.clone())
    }

    /// Waits for the first certificate.
    pub async fn ready(&self) {
        let mut rx = self.0.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// A TLS connection to the identity service, which must prove its own SPIFFE ID.
    async fn channel(&self) -> Result<tonic::transport::Channel, ClientError> {
        let addr = match &self.0.lookup {
            None => self.0.cfg.addr.clone(),
            Some(f) => f().map_err(ClientError::Connect)?,
        };
        channel(&addr, &self.0.cfg.service_identity, &self.0.bundle).await
    }

    /// One Certify: a new certificate for the key held here, and the current trust bundle.
    pub async fn certify(&self) -> Result<Current, ClientError> {
        let path = &self.0.cfg.token_path;
        let token = tokio::fs::read(path)
            .await
            .map_err(|e| ClientError::Token(path.display().to_string(), e))?;
        let mut client = IdentityClient::new(self.channel().await?);
        let resp = client
            .certify(CertifyRequest {
                identity: self.0.cfg.identity.to_string(),
                token,
                certificate_signing_request: self.0.csr.clone(),
            })
            .await?
            .into_inner();
        let leaf = CertificateDer::from(resp.leaf_certificate);
        let got =
            crate::verify::peer_identity(&leaf).map_err(|e| ClientError::Answer(e.to_string()))?;
        if &got != self.id() {
            return Err(ClientError::Answer(format!(
                "a certificate for {got}, not {}",
                self.id()
            )));
        }
        let anchors: Vec<CertificateDer<'static>> = resp
            .trust_anchors
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let inter: Vec<CertificateDer<'static>> = resp
            .intermediate_certificates
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let now = SystemTime::now();
        let check_with = if anchors.is_empty() {
            self.0.bundle.get().to_vec()
        } else {
            anchors.clone()
        };
        // Good for both ends of a mesh connection (webpki checks the usage along the whole
        // chain: an issuer limited to serverAuth would make every peer refuse this one as a
        // client), and it must be for our own key: else the working certificate stays.
        for server in [true, false] {
            crate::verify::verify_chain(&check_with, &leaf, &inter, now, server)
                .map_err(|e| ClientError::Answer(e.to_string()))?;
        }
        let not_after = crate::ca::not_after(&leaf)
            .ok_or_else(|| ClientError::Answer("unreadable validity".into()))?;
        let key = PrivateKeyDer::try_from(self.0.key_der.clone())
            .map_err(|e| ClientError::Answer(e.to_string()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| ClientError::Answer(e.to_string()))?;
        let mut chain = vec![leaf];
        chain.extend(inter);
        let certified = CertifiedKey::new(chain, signer);
        certified
            .keys_match()
            .map_err(|e| ClientError::Answer(format!("the certificate is not for our key: {e}")))?;
        let cur = Current {
            key: Arc::new(certified),
            not_before: now,
            not_after,
        };
        if !anchors.is_empty() {
            self.0.bundle.set(anchors);
        }
        if let Ok(mut g) = self.0.current.write() {
            *g = Some(cur.clone());
        }
        self.0.ready.send_replace(true);
        Ok(cur)
    }

    /// Keeps the certificate fresh until the future is dropped: Certify now, then at ~70% of
    /// each certificate's life; failures back off (0.5 s doubling to 30 s, ±25% jitter) while
    /// the current certificate stays in use.
    pub async fn rotate(&self) {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.certify().await {
                Ok(cur) => {
                    backoff = Duration::from_millis(500);
                    tracing::info!(identity = %self.id(), not_after = ?cur.not_after, "certificate renewed");
                    let wait = cur
                        .refresh_at()
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tokio::time::sleep(jitter(wait, 0.05)).await;
                }
                Err(e) => {
                    tracing::warn!(identity = %self.id(), error = %e, retry_in = ?backoff, "certify failed; keeping the current certificate");
                    // Only when the service could not be reached or verified: a refusal
                    // (busy, a limit, the token) says nothing of the anchors, and the file,
                    // a kubelet's copy, may still hold one the service has just retired.
                    if matches!(e, ClientError::Connect(_)) {
                        self.add_anchors_from_file();
                    }
                    tokio::time::sleep(jitter(backoff, 0.25)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// The anchors of `Config::trust_anchors_path` added to the bundle (a union: the file's
    /// may be older than the service's last word), until the next Certify replaces it.
    /// Whether the bundle changed.
    pub fn add_anchors_from_file(&self) -> bool {
        let Some(path) = &self.0.cfg.trust_anchors_path else {
            return false;
        };
        let read = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| {
                crate::ca::certs_from_pem("trust anchors", &pem).map_err(|e| e.to_string())
            });
        let from_file = match read {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "trust anchors file");
                return false;
            }
        };
        let mut all = self.0.bundle.get().to_vec();
        let before = all.len();
        for a in from_file {
            if !all.contains(&a) {
                all.push(a);
            }
        }
        if all.len() == before {
            return false;
        }
        tracing::info!(path = %path.display(), added = all.len() - before, "trust anchors added from the file");
        self.0.bundle.set(all);
        true
    }

    /// [`rotate`](Self::rotate) in a task of its own, until the task is aborted.
    pub fn spawn_rotation(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.rotate().await })
    }

    /// A server config: the current certificate, mutual TLS with peers of `expect`.
    pub fn server_config(&self, expect: Expect) -> rustls::ServerConfig {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("TLS 1.3 is in the ring provider"))
        .with_client_cert_verifier(Arc::new(ClientVerifier {
            bundle: self.bundle(),
            expect,
        }))
        .with_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // No resumption: a resumed TLS 1.3 session carries its first handshake's client
        // certificate without verifying it again (rustls), so a client whose certificate
        // expired, or whose anchor was rotated out, could keep resuming. Every connection
        // proves a current certificate.
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        cfg
    }

    /// A client config: presents the current certificate, accepts a server of `expect`.
    pub fn client_config(&self, expect: Expect) -> rustls::ClientConfig {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("TLS 1.3 is in the ring provider"))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier {
            bundle: self.bundle(),
            expect,
        }))
        .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        // No resumption either way (see `server_config`): the server is verified afresh too.
        cfg.resumption = rustls::client::Resumption::disabled();
        cfg
    }
}

/// A gRPC channel to the identity service at `addr` (`host:port`) over TLS, the server
/// proving `service_identity` against `bundle`.
pub async fn channel(
    addr: &str,
    service_identity: &SpiffeId,
    bundle: &Bundle,
) -> Result<tonic::transport::Channel, ClientError> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Connect(e.to_string()))?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(ServerVerifier {
        bundle: bundle.clone(),
        expect: Expect::Identity(service_identity.clone()),
    }))
    .with_no_client_auth();
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ClientError::Connect(e.to_string()))?
        .timeout(Duration::from_secs(10))
        .connect_with_connector(crate::transport::connector(
            Some(tls),
            "meshwork-identity",
            Duration::from_secs(5),
        ))
        .await
        .map_err(|e| ClientError::Connect(format!("{addr}: {e}")))
}

fn jitter(d: Duration, frac: f64) -> Duration {
    let f = 1.0 + frac * (rand::random::<f64>() * 2.0 - 1.0);
    d.mul_f64(f.max(0.0))
}

/// Hands rustls the certificate in use at each handshake.
#[derive(Clone)]
struct Resolver(Identity);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resolver({})", self.0.id())
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.key)
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.key)
    }
    fn has_certs(&self) -> bool {
        self.0.current().is_some()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    /// A client whose service moved to a new anchor while it was away takes the anchors its
    /// file holds now, beside those it had, and only once.
    #[test]
    fn anchors_from_the_file_join_the_bundle() {
        let old = crate::ca::generate_anchor("cluster.local", Duration::from_secs(3600)).unwrap();
        let new = crate::ca::generate_anchor("cluster.local", Duration::from_secs(3600)).unwrap();
        let dir = std::env::temp_dir().join(format!("meshwork-anchors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.crt");
        std::fs::write(&file, format!("{}{}", old.cert_pem, new.cert_pem)).unwrap();
        let id = Identity::new(Config {
            addr: "127.0.0.1:1".into(),
            service_identity: SpiffeId::parse("spiffe://cluster.local/ns/s/sa/identity").unwrap(),
            identity: SpiffeId::parse("spiffe://cluster.local/ns/app/sa/web").unwrap(),
            token_path: dir.join("token"),
            trust_anchors_pem: old.cert_pem.clone(),
            trust_anchors_path: Some(file.clone()),
        })
        .unwrap();
        assert_eq!(id.bundle().get().len(), 1);
        assert!(id.add_anchors_from_file());
        assert_eq!(id.bundle().get().len(), 2);
        assert!(!id.add_anchors_from_file(), "nothing new the second time");
        std::fs::write(&file, "not PEM").unwrap();
        assert!(!id.add_anchors_from_file());
        assert_eq!(
            id.bundle().get().len(),
            2,
            "an unreadable file changes nothing"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
