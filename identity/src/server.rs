//! Running the service: where the CA comes from and how a new one is picked up, the service's
//! own serving certificate, and the TLS listener in front of the gRPC service.
//!
//! The CA is three PEM items with the names a `kubernetes.io/tls` Secret uses, as Linkerd's
//! `linkerd-identity-issuer` does: `ca.crt` (the trust anchors bundle), `tls.crt` (the
//! issuer), `tls.key`. They come from a directory or a Secret; either is re-read when it
//! changes (every second for files, by watch for the Secret). A new issuer serves the next
//! Certify call; leaves already issued keep verifying, since peers send their issuer along
//! and it chains to the same anchors — the reason an issuer rotation fails no handshake.
//!
//! The service serves TLS with a leaf of its own identity
//! (`spiffe://<td>/ns/<ns>/sa/<sa>`), re-signed whenever the CA changes and before it expires;
//! clients verify it against the trust anchors they were given (client.rs).

use std::{
    path::PathBuf,
    sync::{atomic::Ordering, Arc, RwLock},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{api::Api, runtime::watcher, Client};
use rcgen::KeyPair;
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::net::TcpListener;

use crate::{ca::Ca, metrics::Metrics, service::CaHandle, spiffe::SpiffeId};

/// Where the CA comes from.
#[derive(Clone, Debug)]
pub enum Source {
    Dir(PathBuf),
    Secret { namespace: String, name: String },
}

/// The three PEM items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub anchors: String,
    pub issuer: String,
    pub key: String,
}

impl Material {
    pub fn ca(&self) -> Result<Ca, crate::ca::CaError> {
        Ca::from_pem(&self.anchors, &self.issuer, &self.key)
    }
}

fn read_dir(dir: &std::path::Path) -> anyhow::Result<Material> {
    let r = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(f).display()))
    };
    Ok(Material {
        anchors: r("ca.crt")?,
        issuer: r("tls.crt")?,
        key: r("tls.key")?,
    })
}

fn from_secret(s: &Secret) -> anyhow::Result<Material> {
    let data = s.data.clone().unwrap_or_default();
    let r = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| anyhow::anyhow!("secret has no {k}"))
    };
    Ok(Material {
        anchors: r("ca.crt")?,
        issuer: r("tls.crt")?,
        key: r("tls.key")?,
    })
}

impl Source {
    pub async fn load(&self, client: &Client) -> anyhow::Result<Material> {
        match self {
            Source::Dir(d) => read_dir(d),
            Source::Secret { namespace, name } => {
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                from_secret(&api.get(name).await?)
            }
        }
    }

    /// Calls `apply` with every new, valid material (and the CA made of it) until the
    /// process ends; a bad one is logged and the current CA stays.
    pub async fn follow(
        self,
        client: Client,
        mut current: Material,
        apply: impl Fn(Ca, &Material) + Send,
    ) {
        let mut consider = |m: Material| {
            if m == current {
                return;
            }
            match m.ca() {
                Ok(ca) => {
                    tracing::info!(issuer_not_after = ?ca.issuer_not_after, anchors = ca.anchors.len(), "new CA loaded");
                    apply(ca, &m);
                    current = m;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the new CA material is not usable; keeping the current CA")
                }
            }
        };
        match self {
            Source::Dir(d) => loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match read_dir(&d) {
                    Ok(m) => consider(m),
                    Err(e) => tracing::warn!(error = %e, "reading the CA"),
                }
            },
            Source::Secret { namespace, name } => {
                let api: Api<Secret> = Api::namespaced(client, &namespace);
                let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
                let mut events = watcher::watcher(api, cfg).boxed();
                while let Some(ev) = events.next().await {
                    match ev {
                        Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                            match from_secret(&s) {
                                Ok(m) => consider(m),
                                Err(e) => tracing::error!(error = %e, "the CA secret"),
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "watching the CA secret"),
                    }
                }
            }
        }
    }
}

/// The service's own serving certificate, swapped when re-signed.
#[derive(Debug, Default)]
pub struct OwnCert(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for OwnCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().and_then(|g| g.clone())
    }
}

impl OwnCert {
    /// Signs a fresh leaf for `id` from `ca` (a new key each time).
    pub fn renew(&self, ca: &Ca, id: &SpiffeId, lifetime: Duration) -> anyhow::Result<()> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let leaf = ca.sign_key(&key, id, lifetime)?;
        let mut chain = vec![leaf.der.clone()];
        chain.extend(ca.chain.iter().cloned());
        let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| anyhow::anyhow!(e))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&der)?;
        if let Ok(mut g) = self.0.write() {
            *g = Some(Arc::new(CertifiedKey::new(chain, signer)));
        }
        Ok(())
    }
}

/// Everything `run` needs.
pub struct Running {
    pub ca: CaHandle,
    pub own: Arc<OwnCert>,
    pub metrics: Arc<Metrics>,
    pub own_id: SpiffeId,
    pub lifetime: Duration,
}

impl Running {
    /// Installs a new CA: the handle, the metrics, a new serving certificate.
    pub fn install(&self, ca: Ca) {
        let not_after = ca
            .issuer_not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.metrics
            .issuer_not_after
            .store(not_after, Ordering::Relaxed);
        if let Err(e) = self.own.renew(&ca, &self.own_id, self.lifetime) {
            tracing::error!(error = %e, "signing the service's own certificate");
        }
        self.ca.set(ca);
    }
}

/// The TLS server config in front of the gRPC service: its own certificate, no client
/// certificates (callers prove themselves with their token), HTTP/2.
pub fn tls_config(own: Arc<OwnCert>) -> anyhow::Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(own);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// The largest Certify request taken: a token (at most 16 KiB, `token.rs`), a CSR and an ID.
pub const MAX_REQUEST: usize = 64 << 10;

/// Serves the gRPC `svc` over TLS on `listener` until the future is dropped.
pub async fn serve_grpc(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    svc: crate::service::Service,
) -> anyhow::Result<()> {
    // A call is one small message (a token and a CSR) and one answer: whatever a caller
    // sends past that is refused, not buffered (tonic's defaults: 4 MiB a message, streams
    // unlimited, and hyper's guard against streams reset by their own errors turned off).
    // Connections are pinged and end after a while, so a caller that went quiet, or that
    // keeps one open, holds no slot for long.
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(16))
        .http2_max_local_error_reset_streams(Some(1024))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .max_connection_age(std::time::Duration::from_secs(300))
        .max_connection_age_grace(std::time::Duration::from_secs(30))
        .timeout(std::time::Duration::from_secs(30))
        .add_service(
            crate::pb::identity_server::IdentityServer::new(svc)
                .max_decoding_message_size(MAX_REQUEST),
        )
        .serve_with_incoming(crate::transport::incoming(listener, tls, |_| {}))
        .await?;
    Ok(())
}
