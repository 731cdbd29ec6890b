//! Shared by the proxy's integration tests: plaintext backends on loopback and an outbound
//! proxy in front of them; mesh credentials signed by the identity service's CA code.
#![allow(dead_code, reason = "each test binary uses its own part")]

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use meshwork_identity::{
    ca::{self, Ca},
    spiffe::SpiffeId,
    verify::{Bundle, ClientVerifier, Expect, ServerVerifier},
};
use meshwork_proxy::tls::Credentials;
use meshwork_proxy::{
    drain::Watch,
    outbound::{self, discover::Static, Outbound},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

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

/// Serves HTTP/1.1 on `l` with `f` for every request, each connection in a task of its own,
/// until the runtime ends: the test apps and collectors.
pub fn serve_http1<F, Fut, E>(l: TcpListener, f: F)
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<http::Response<http_body_util::Full<bytes::Bytes>>, E>>
        + Send
        + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let f = f.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tcp),
                        hyper::service::service_fn(f),
                    )
                    .await;
            });
        }
    });
}

/// A backend that waits `delay`, then answers 200, or 503 for every `fail_every`th request
/// (0: never, 1: always).
pub async fn backend(
    delay: Duration,
    fail_every: Arc<AtomicUsize>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let (h, fail_every) = (h.clone(), fail_every.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let (h, fail_every) = (h.clone(), fail_every.clone());
                    async move {
                        let n = h.fetch_add(1, Ordering::Relaxed) + 1;
                        tokio::time::sleep(delay).await;
                        let mut r = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        ));
                        let every = fail_every.load(Ordering::Relaxed);
                        if every > 0 && n % every == 0 {
                            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

pub async fn proxy(cfg: outbound::Config, backends: &[SocketAddr]) -> SocketAddr {
    proxy_with(cfg, backends, meshwork_proxy::metrics::Metrics::new()).await
}

/// [`proxy`], counting in `metrics`.
pub async fn proxy_with(
    cfg: outbound::Config,
    backends: &[SocketAddr],
    metrics: Arc<meshwork_proxy::metrics::Metrics>,
) -> SocketAddr {
    let mut d = Static::default();
    let eps: Vec<String> = backends.iter().map(|a| a.to_string()).collect();
    d.parse_entry(&format!("web:80={}", eps.join(","))).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let resolver = outbound::resolve::Resolver::fixed(d, metrics.clone());
    // No mesh endpoints here: the credentials are never asked for.
    tokio::spawn(
        Outbound::with(cfg, Arc::new(NoCreds), resolver, metrics).serve(l, Watch::never()),
    );
    addr
}

/// One request through the proxy on a kept-alive connection: the status.
pub async fn get(conn: &mut TcpStream) -> u16 {
    conn.write_all(b"GET http://web:80/ HTTP/1.1\r\nHost: web:80\r\n\r\n")
        .await
        .unwrap();
    read_status(conn).await
}

/// The status of the next response on `conn` (read to the end of its body).
pub async fn read_status(conn: &mut TcpStream) -> u16 {
    // Small responses: read until the body has come.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the proxy closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return head.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
    }
}

/// Credentials from a certificate the mesh CA signed.
pub struct Creds {
    pub id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
    bundle: Bundle,
}

impl Creds {
    pub fn new(ca: &Ca, id: &str) -> Arc<Self> {
        Self::with_life(ca, id, Duration::from_secs(3600))
    }

    /// With a certificate good for `life` from now.
    pub fn with_life(ca: &Ca, id: &str, life: Duration) -> Arc<Self> {
        let id = SpiffeId::parse(id).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = ca.sign_key(&key, &id, life).unwrap();
        let mut chain = vec![leaf.der];
        chain.extend(ca.chain.iter().cloned());
        Arc::new(Creds {
            id,
            chain,
            key: key.serialize_der(),
            bundle: Bundle::new(ca.anchors.clone()),
        })
    }
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone().into())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Credentials for Creds {
    fn id(&self) -> &SpiffeId {
        &self.id
    }
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut c = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(Arc::new(ClientVerifier {
                bundle: self.bundle.clone(),
                expect: Expect::TrustDomain(self.id.trust_domain().into()),
            }))
            .with_single_cert(self.chain.clone(), self.key())
            .unwrap();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    }
    fn client_config(&self, peer: &SpiffeId) -> Arc<rustls::ClientConfig> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                bundle: self.bundle.clone(),
                expect: Expect::Identity(peer.clone()),
            }))
            .with_client_auth_cert(self.chain.clone(), self.key())
            .unwrap();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    }
}

pub fn test_ca() -> Ca {
    let a = ca::generate_anchor("cluster.local", Duration::from_secs(24 * 3600)).unwrap();
    let i = ca::generate_issuer(
        "cluster.local",
        &a.cert_pem,
        &a.key_pem,
        Duration::from_secs(12 * 3600),
    )
    .unwrap();
    Ca::from_pem(&a.cert_pem, &i.cert_pem, &i.key_pem).unwrap()
}

/// The value of `series` (its name and labels as exposed) in `metrics`' text exposition.
pub fn metric(metrics: &meshwork_proxy::metrics::Metrics, series: &str) -> Option<i64> {
    let prefix = format!("{series} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().parse().unwrap())
}

/// An app answering every request with the client identity header it received ("none"),
/// counting requests.
pub async fn app(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let h = h.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        h.fetch_add(1, Ordering::Relaxed);
                        let id = client_ids(req.headers());
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(id)),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// A GET carrying a forged identity header on `io`, and the whole answer.
/// An HTTP/1.1 CONNECT to `authority` through the proxy at `proxy`: the tunnel, once its
/// answer's head (a 200) has been read.
pub async fn connect_tunnel(proxy: SocketAddr, authority: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "{head:?}");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    s
}

/// What an app reads as the client's identity: the identity header under any spelling a
/// framework takes for it (underscores too, as CGI, WSGI and Rack do), every value, comma
/// separated; `none` without one.
pub fn client_ids(h: &http::HeaderMap) -> String {
    let ids: Vec<&str> = h
        .iter()
        .filter(|(n, _)| n.as_str().replace('_', "-") == "meshwork-client-id")
        .filter_map(|(_, v)| v.to_str().ok())
        .collect();
    if ids.is_empty() {
        "none".to_string()
    } else {
        ids.join(",")
    }
}

/// The body of a whole HTTP/1 answer (after its head).
pub fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

pub async fn forged_get<S: AsyncReadExt + AsyncWriteExt + Unpin>(io: &mut S) -> String {
    io.write_all(
        b"GET / HTTP/1.1\r\nHost: web\r\n\
          meshwork-client-id: spiffe://cluster.local/ns/kube-system/sa/admin\r\n\
          meshwork_client_id: spiffe://cluster.local/ns/kube-system/sa/admin\r\n\
          Connection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = io.read_to_string(&mut out).await;
    out
}

/// A mesh connection made by hand, as a peer proxy would: mTLS to `to` proving `creds`,
/// expecting `server`, then a transport header for `port` and `protocol`.
pub async fn raw_mesh(
    creds: &Creds,
    to: SocketAddr,
    server: &SpiffeId,
    header: meshwork_proxy::transport_header::TransportHeader,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let name =
        rustls::pki_types::ServerName::try_from(meshwork_proxy::tls::mesh_server_name(server))
            .unwrap();
    let tcp = TcpStream::connect(to).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(creds.client_config(server))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(&header.encode()).await.unwrap();
    tls
}

/// A client proxy and a server proxy on loopback, mutual TLS between them: the client
/// proxy's `authority` is `app` behind the server proxy (run with `inbound`).
pub struct MeshPair {
    /// The client proxy's outbound listener.
    pub outbound: SocketAddr,
    pub outbound_metrics: Arc<meshwork_proxy::metrics::Metrics>,
    pub inbound_metrics: Arc<meshwork_proxy::metrics::Metrics>,
}

pub async fn mesh_pair(
    app: SocketAddr,
    authority: &str,
    inbound: meshwork_proxy::inbound::Config,
) -> MeshPair {
    let ca = test_ca();
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound_port = l.local_addr().unwrap().port();
    let inbound_metrics = meshwork_proxy::metrics::Metrics::new();
    tokio::spawn(
        meshwork_proxy::inbound::Inbound::with(inbound, web, inbound_metrics.clone())
            .serve(l, Watch::never()),
    );
    let mut d = Static::default();
    d.parse_entry(&format!(
        "{authority}={app}@{inbound_port}@spiffe://cluster.local/ns/default/sa/web"
    ))
    .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound = l.local_addr().unwrap();
    let out = Outbound::new(Default::default(), client, d);
    let outbound_metrics = out.metrics.clone();
    tokio::spawn(out.serve(l, Watch::never()));
    MeshPair {
        outbound,
        outbound_metrics,
        inbound_metrics,
    }
}
