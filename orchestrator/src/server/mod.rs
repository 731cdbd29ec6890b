//! Transport: HTTPS (rustls, HTTP/1.1 and h2) with bearer-token authentication in front of
//! `api::Api`, plus the data-dir files a cluster needs (CA, service account key, tokens, admin
//! kubeconfig).

pub mod auth;
pub mod authz;
pub mod kubeconfig;
pub mod pki;
pub mod satoken;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use http::{header, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_orchestrator_store::{AnyStore, EtcdStore, SqliteStore, SqliteSync, DEFAULT_HISTORY};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;

use crate::api::{error_response, Api, ApiConfig, ApiError, Body};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("certificate: {0}")]
    Pki(#[source] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("store: {0}")]
    Store(#[from] meshwork_orchestrator_store::StoreError),
    #[error("listen on {0}: {1}")]
    Listen(SocketAddr, #[source] std::io::Error),
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    #[error("{0}")]
    Config(String),
}

/// Writes a file readable by its owner only (keys, tokens, kubeconfigs), atomically
/// (meshwork-daemon's `write_private`).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    meshwork_daemon::write_private(path, bytes).map_err(|e| Error::Io(path.to_path_buf(), e))
}

/// Which storage backend.
#[derive(Clone, Debug)]
pub enum StoreChoice {
    Sqlite { sync: SqliteSync },
    Etcd { endpoints: Vec<String> },
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub store: StoreChoice,
    /// Extra addresses for the serving certificate (a node's underlay address, ...).
    pub advertise: Vec<IpAddr>,
    pub history: i64,
    pub api: ApiConfig,
    /// `iss` of the service account tokens this server issues, and its own audience
    /// (kube-apiserver's `--service-account-issuer`).
    pub sa_issuer: String,
    /// Where the discovery document says the key set is; None: this server's external URL
    /// (first advertise address, else the listen address) + `/openid/v1/jwks`, as kube.
    pub sa_jwks_uri: Option<String>,
    /// Longest token a TokenRequest gets (`--service-account-max-token-expiration`).
    pub sa_max_expiration: Option<std::time::Duration>,
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        ServerConfig {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
            store: StoreChoice::Sqlite {
                sync: SqliteSync::Full,
            },
            advertise: Vec::new(),
            history: DEFAULT_HISTORY,
            api: ApiConfig::default(),
            sa_issuer: satoken::DEFAULT_ISSUER.to_string(),
            sa_jwks_uri: None,
            sa_max_expiration: Some(DEFAULT_MAX_TOKEN_EXPIRATION),
        }
    }
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }
    pub fn tokens_path(&self) -> PathBuf {
        self.data_dir.join("tokens.csv")
    }
}

/// The cap on TokenRequest expirations unless configured otherwise (48 h).
pub const DEFAULT_MAX_TOKEN_EXPIRATION: std::time::Duration =
    std::time::Duration::from_secs(48 * 3600);

/// A running server; dropping it (or `shutdown`) stops accepting connections.
pub struct Running {
    pub addr: SocketAddr,
    pub url: String,
    pub admin_kubeconfig: PathBuf,
    pub ca_pem: String,
    pub api: Arc<Api>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn open_store(cfg: &ServerConfig) -> Result<AnyStore, Error> {
    Ok(match &cfg.store {
        StoreChoice::Sqlite { sync } => {
            let path = cfg.data_dir.join("state.db");
            AnyStore::Sqlite(SqliteStore::open_with_history(&path, *sync, cfg.history)?)
        }
        StoreChoice::Etcd { endpoints } => {
            AnyStore::Etcd(Box::new(EtcdStore::connect(endpoints, cfg.history).await?))
        }
    })
}

/// The admin credential: issued on first start, reused afterwards (the kubeconfig is
/// rewritten each start so it names the current listen address).
fn admin_token(cfg: &ServerConfig) -> Result<String, Error> {
    let marker = cfg.data_dir.join("admin.token");
    match std::fs::read_to_string(&marker) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => {
            let token =
                auth::Tokens::issue(&cfg.tokens_path(), "admin", &["system:masters".into()])?;
            write_private(&marker, token.as_bytes())?;
            Ok(token)
        }
    }
}

/// Issues a credential for another user (a node agent: `system:node:<name>` in
/// `system:nodes`) and writes its kubeconfig.
pub fn issue_kubeconfig(
    data_dir: &Path,
    server: &str,
    user: &str,
    groups: &[String],
    out: &Path,
) -> Result<(), Error> {
    let cfg = ServerConfig::new(data_dir.to_path_buf());
    let pki = pki::Pki::ensure(data_dir, &[])?;
    let token = auth::Tokens::issue(&cfg.tokens_path(), user, groups)?;
    kubeconfig::write(out, server, &pki.ca_pem, user, &token)
}

/// The address the `kubernetes` Service's EndpointSlice names: kube's `--advertise-address`
/// (its first address here), else the listen address, else loopback.
fn endpoint_address(cfg: &ServerConfig, bound: SocketAddr) -> IpAddr {
    cfg.advertise
        .iter()
        .copied()
        .find(|ip| !ip.is_unspecified())
        .or_else(|| Some(bound.ip()).filter(|ip| !ip.is_unspecified()))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

fn url_of(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    format!("https://{host}:{}", addr.port())
}

/// Opens the store, prepares the data dir, binds and serves until shut down.
pub async fn start(cfg: ServerConfig) -> Result<Running, Error> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| Error::Io(cfg.data_dir.clone(), e))?;
    let store = open_store(&cfg).await?;
    start_with(cfg, store).await
}

/// `start` on a store the caller opened (tests share one etcd fixture this way).
pub async fn start_with(cfg: ServerConfig, store: AnyStore) -> Result<Running, Error> {
    start_with_listener(cfg, store, None).await
}

/// `start_with` on a listening socket the caller bound (a lab test binds it inside a node's
/// network namespace); None binds `cfg.listen`.
pub async fn start_with_listener(
    cfg: ServerConfig,
    store: AnyStore,
    listener: Option<std::net::TcpListener>,
) -> Result<Running, Error> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| Error::Io(cfg.data_dir.clone(), e))?;
    let mut sans = cfg.advertise.clone();
    sans.push(cfg.listen.ip());
    // In-cluster clients dial the `kubernetes` Service's address.
    sans.push(crate::api::kubernetes_service::cluster_ip(&cfg.api.services).into());
    let pki = pki::Pki::ensure(&cfg.data_dir, &sans)?;
    let tls = TlsAcceptor::from(Arc::new(pki.tls_config()?));
    let token = admin_token(&cfg)?;
    let tokens = auth::Tokens::open(&cfg.tokens_path())?;
    // Bound before the API exists (nothing is accepted until the end), so the discovery
    // document and the `kubernetes` Service can name the actual port.
    let listener = match listener {
        Some(l) => {
            l.set_nonblocking(true)
                .map_err(|e| Error::Listen(cfg.listen, e))?;
            TcpListener::from_std(l).map_err(|e| Error::Listen(cfg.listen, e))?
        }
        None => TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| Error::Listen(cfg.listen, e))?,
    };
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Listen(cfg.listen, e))?;
    let url = url_of(addr);
    let external = cfg
        .advertise
        .iter()
        .find(|ip| !ip.is_unspecified())
        .map_or_else(
            || url.clone(),
            |ip| url_of(SocketAddr::new(*ip, addr.port())),
        );
    let jwks_uri = cfg
        .sa_jwks_uri
        .clone()
        .unwrap_or_else(|| format!("{external}/openid/v1/jwks"));
    let signer = Arc::new(satoken::Signer::ensure(
        &cfg.data_dir,
        &cfg.sa_issuer,
        &jwks_uri,
    )?);
    let authn = Arc::new(auth::Authenticator::new(
        tokens,
        signer,
        cfg.sa_max_expiration,
    ));
    let (stop, mut stopped) = watch::channel(false);
    let authz = authz::Authorizer::start(store.clone(), stopped.clone());
    let rbac_store = store.clone();
    let api = Arc::new(
        Api::new(store, cfg.api.clone())
            .with_authenticator(authn.clone())
            .with_authorizer(authz.clone()),
    );
    api.bootstrap()
        .await
        .map_err(|e| Error::Bootstrap(e.to_string()))?;
    authz::bootstrap::ensure(&api)
        .await
        .map_err(|e| Error::Bootstrap(format!("the default RBAC policy: {e}")))?;
    authz
        .synced_with(&rbac_store)
        .await
        .map_err(|e| Error::Bootstrap(format!("the default RBAC policy: {e}")))?;
    api.ensure_kubernetes_service(endpoint_address(&cfg, addr), addr.port())
        .await
        .map_err(|e| Error::Bootstrap(format!("the kubernetes Service: {e}")))?;
    kubeconfig::write(&cfg.admin_kubeconfig(), &url, &pki.ca_pem, "admin", &token)?;
    let served = api.clone();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => { tracing::warn!(error = %e, "accept"); continue; }
                },
                _ = stopped.changed() => return,
            };
            let (tls, api, authn, authz, stop) = (
                tls.clone(),
                served.clone(),
                authn.clone(),
                authz.clone(),
                stopped.clone(),
            );
            tokio::spawn(serve_conn(tcp, peer, tls, api, authn, authz, stop));
        }
    });
    tracing::info!(%url, kubeconfig = %cfg.admin_kubeconfig().display(), "API server listening");
    Ok(Running {
        addr,
        url,
        admin_kubeconfig: cfg.admin_kubeconfig(),
        ca_pem: pki.ca_pem,
        api,
        stop,
        task: Some(task),
    })
}

async fn serve_conn(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
    api: Arc<Api>,
    authn: Arc<auth::Authenticator>,
    authz: Arc<authz::Authorizer>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tls.accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake");
            return;
        }
    };
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (api, authn, authz) = (api.clone(), authn.clone(), authz.clone());
        async move { Ok::<_, std::convert::Infallible>(authenticated(api, &authn, &authz, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Upgrades: pods/exec, attach and portforward (api/stream.rs).
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection") },
        _ = stop.changed() => {}
    }
}

/// Health, readiness and version are public (kube-apiserver's system:public-info-viewer);
/// everything else needs a bearer token that authenticates for the API server's audience.
async fn authenticated(
    api: Arc<Api>,
    authn: &auth::Authenticator,
    authz: &authz::Authorizer,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path();
    let public = matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
        || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/");
    if !public {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return error_response(&ApiError::Unauthorized);
        };
        let user = match authn.authenticate(api.store(), token, None).await {
            Ok(a) => a.user,
            Err(refused) => {
                tracing::debug!(%path, error = %refused.message(), "unable to authenticate the request");
                return error_response(&ApiError::Unauthorized);
            }
        };
        let a = authz::Attributes::from_request(req.method(), path, req.uri().query());
        if let authz::Decision::Deny(reason) = authz.authorize(&user, &a) {
            let mut why = a.denial(&user.name);
            if !reason.is_empty() {
                why = format!("{why}: {reason}");
            }
            let resource = if a.resource_request {
                a.qualified_resource()
            } else {
                String::new()
            };
            return error_response(&ApiError::Denied {
                resource,
                name: a.name.clone(),
                why,
            });
        }
        req.extensions_mut().insert(Arc::new(user));
    }
    api.handle(req).await
}
