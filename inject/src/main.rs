//! `meshwork-injector`: the proxy injector as an HTTPS admission webhook, registered with a
//! MutatingWebhookConfiguration (`POST /inject`); `/live` and `/ready` for its probes. It
//! reads Namespaces (for their `meshwork.io/inject` annotation) with its kubeconfig or
//! in-cluster credentials.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::Namespace;
use meshwork_inject::{webhook, Config};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

#[derive(Parser, Debug)]
#[command(
    name = "meshwork-injector",
    version,
    about = "Meshwork's proxy injector webhook"
)]
struct Args {
    #[arg(long, env = "MESHWORK_INJECTOR_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Serving certificate (PEM chain); the webhook configuration's caBundle must verify it.
    #[arg(long, env = "MESHWORK_INJECTOR_TLS_CERT")]
    tls_cert: PathBuf,
    #[arg(long, env = "MESHWORK_INJECTOR_TLS_KEY")]
    tls_key: PathBuf,
    /// For reading Namespaces; in-cluster credentials when absent.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    #[arg(
        long,
        env = "MESHWORK_INJECTOR_PROXY_IMAGE",
        default_value = "meshwork-proxy"
    )]
    proxy_image: String,
    #[arg(long, env = "MESHWORK_INJECTOR_IDENTITY_ADDR", default_value_t = Config::default().identity_addr)]
    identity_addr: String,
    #[arg(long, env = "MESHWORK_INJECTOR_PROXY_LOG", default_value = "info")]
    proxy_log_level: String,
}

/// kube-apiserver sends at most its own request limit.
const MAX_BODY: usize = 3 * 1024 * 1024;

struct State {
    cfg: Config,
    namespaces: kube::Api<Namespace>,
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())));
    *r.status_mut() = status;
    r
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method().as_str(), req.uri().path()) {
        // Any method: probes; and a POST here is what "a webhook answering garbage" looks like
        // in the API server's tests.
        (_, "/live" | "/ready") => return text(StatusCode::OK, "ok\n"),
        ("POST", "/inject") => {}
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")),
    };
    let review: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("not JSON: {e}\n")),
    };
    let ns_meta = match webhook::namespace_needed(&review) {
        None => None,
        Some(ns) => match st.namespaces.get_metadata(&ns).await {
            Ok(n) => Some(serde_json::to_value(n.metadata).unwrap_or_default()),
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "reading the namespace");
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("reading namespace {ns}: {e}\n"),
                );
            }
        },
    };
    match webhook::review(&review, ns_meta.as_ref(), &st.cfg) {
        Ok(answer) => {
            let injected = answer["response"]["patch"].is_string();
            tracing::info!(
                namespace = review["request"]["namespace"].as_str().unwrap_or(""),
                name = review["request"]["name"].as_str().unwrap_or(""),
                injected,
                "admission review"
            );
            let mut r = Response::new(Full::new(Bytes::from(answer.to_string())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(refusal) => text(
            StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST),
            format!("{}\n", refusal.message),
        ),
    }
}

async fn run(a: Args) -> anyhow::Result<()> {
    let certs = CertificateDer::pem_file_iter(&a.tls_cert)
        .with_context(|| format!("reading {}", a.tls_cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", a.tls_cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&a.tls_key)
        .with_context(|| format!("reading {}", a.tls_key.display()))?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the serving certificate")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    // In a pod its own ServiceAccount, before any kubeconfig the host root image has.
    let client = meshwork_kube_watch::client(a.kubeconfig.as_deref()).await?;
    let st = Arc::new(State {
        cfg: Config {
            proxy_image: a.proxy_image,
            identity_addr: a.identity_addr,
            log: a.proxy_log_level,
        },
        namespaces: kube::Api::all(client),
    });
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    tracing::info!(addr = %a.listen, "injector serving");
    let serve = async {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    continue;
                }
            };
            let (acceptor, st) = (acceptor.clone(), st.clone());
            tokio::spawn(async move {
                let Ok(tls) =
                    tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                        .await
                else {
                    return;
                };
                let tls = match tls {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake");
                        return;
                    }
                };
                let svc = hyper::service::service_fn(move |req| {
                    let st = st.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(st, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    };
    tokio::select! {
        _ = serve => Ok(()),
        _ = meshwork_daemon::shutdown_signal() => Ok(()),
    }
}

fn main() -> std::process::ExitCode {
    meshwork_daemon::init_logging();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshwork-injector: {e}");
            return std::process::ExitCode::from(70);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshwork-injector: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
