//! The mesh identity service against the real API server (both binaries), with the client
//! library over real gRPC and rustls:
//!
//! - pods' projected tokens for the mesh audience get SPIFFE certificates;
//! - refusals, each with its gRPC status, an audit line and a metric, and nothing issued:
//!   another pod's token, a token for another audience, an expired token, a revoked one (its
//!   pod deleted), a CSR for another identity, a malformed CSR;
//! - mutual TLS between two holders succeeds, each seeing the other's identity; a certificate
//!   from a foreign CA is refused, and so is a server of an unexpected identity;
//! - an issuer rotation, then an anchor rotation (bundle with both anchors, reissue, drop the
//!   old one), under a constant loop of handshakes: zero failed handshakes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

#[path = "support/procs.rs"]
mod procs;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    core::v1::{Pod, ServiceAccount},
};
use kube::{api::PostParams, Api};
use meshwork_identity::{
    ca, client,
    pb::{identity_client::IdentityClient, CertifyRequest},
    verify::{Bundle, Expect},
    SpiffeId,
};
use meshwork_lab::{cgroup::lab_binary, wait::eventually_async};
use procs::{start, Proc};
use serde_json::{json, Value};

const AUDIENCE: &str = "identity.meshwork.io";
const TD: &str = "cluster.local";

struct Cluster {
    dir: tempfile::TempDir,
    _api: Proc,
    client: kube::Client,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::Builder::new().prefix("mwid-").tempdir().unwrap();
        let data = dir.path().join("api");
        let (api, _) = start(
            "meshwork-orchestrator",
            &[
                "apiserver",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--sqlite-sync",
                "normal",
            ],
            &[],
            Some(&dir.path().join("apiserver.log")),
            1,
        );
        let client = meshwork_kube_watch::client(Some(&data.join("admin.kubeconfig")))
            .await
            .unwrap();
        Cluster {
            dir,
            _api: api,
            client,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    async fn workload(&self, ns: &str, sa: &str, pod: &str) -> Pod {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let _ = sas
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap(),
            )
            .await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": pod},
                "spec": {"serviceAccountName": sa, "containers": [{"name": "c", "image": "busybox"}]},
            }))
            .unwrap(),
        )
        .await
        .unwrap()
    }

    /// A token for `sa` bound to `pod`, for `audience`.
    async fn token(&self, ns: &str, sa: &str, pod: &Pod, audience: &str) -> String {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let req: TokenRequest = serde_json::from_value(json!({"spec": {
            "audiences": [audience], "expirationSeconds": 3600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid},
        }}))
        .unwrap();
        sas.create_token_request(sa, &PostParams::default(), &req)
            .await
            .unwrap()
            .status
            .unwrap()
            .token
    }
}

fn claims(jwt: &str) -> (Value, Value) {
    use base64::Engine;
    let part = |i: usize| -> Value {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(i).unwrap())
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    };
    (part(0), part(1))
}

/// The same token, signed again by the API server's key with its times moved `by` into the
/// past: a token that expired, as the server sees it.
fn expired(data: &Path, token: &str) -> String {
    let (h, mut c) = claims(token);
    let past = |k: &str, c: &mut Value| c[k] = json!(c[k].as_i64().unwrap() - 7200);
    for k in ["iat", "nbf", "exp"] {
        past(k, &mut c);
    }
    c["kubernetes.io"]["warnafter"] = Value::Null;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.typ = None;
    header.kid = h["kid"].as_str().map(str::to_string);
    let key = std::fs::read(data.join("api/pki/sa.key")).unwrap();
    jsonwebtoken::encode(
        &header,
        &c,
        &jsonwebtoken::EncodingKey::from_ec_pem(&key).unwrap(),
    )
    .unwrap()
}

struct IdentitySvc {
    _proc: Proc,
    addr: String,
    admin: String,
    log: PathBuf,
}

impl IdentitySvc {
    fn metric(&self, name: &str) -> f64 {
        let out = Command::new("curl")
            .args(["-s", &format!("http://{}/metrics", self.admin)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find(|l| {
                l.starts_with(name) && l[name.len()..].starts_with([' ', '{']) && !l.contains("le=")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .unwrap_or(0.0)
    }
}

fn write(dir: &Path, name: &str, data: &str) {
    // By rename: the service reads whole files only.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

fn identity_client(
    c: &Cluster,
    svc: &IdentitySvc,
    ns: &str,
    sa: &str,
    token: &str,
) -> client::Identity {
    let path = c.path(&format!("token-{ns}-{sa}"));
    std::fs::write(&path, token).unwrap();
    client::Identity::new(client::Config {
        addr: svc.addr.clone(),
        service_identity: SpiffeId::service_account(TD, "meshwork-system", "meshwork-identity")
            .unwrap(),
        identity: SpiffeId::service_account(TD, ns, sa).unwrap(),
        token_path: path,
        trust_anchors_pem: std::fs::read_to_string(c.path("ca/ca.crt")).unwrap(),
        trust_anchors_path: None,
    })
    .unwrap()
}

/// One mutual-TLS handshake over loopback: server `srv` (accepting `accept`), client `cli`
/// (expecting `expect`); the identities each side saw, or the error.
async fn handshake(
    srv: Arc<rustls::ServerConfig>,
    cli: Arc<rustls::ClientConfig>,
) -> Result<(SpiffeId, SpiffeId), String> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let s = tokio_rustls::TlsAcceptor::from(srv)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let peer = s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no client certificate")?;
        meshwork_identity::verify::peer_identity(&peer).map_err(|e| e.to_string())
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("peer").unwrap();
    let client = tokio_rustls::TlsConnector::from(cli)
        .connect(name, tcp)
        .await;
    let client_saw = match client {
        Ok(s) => {
            let peer = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first().cloned())
                .unwrap();
            Ok(meshwork_identity::verify::peer_identity(&peer).unwrap())
        }
        Err(e) => Err(e.to_string()),
    };
    let server_saw = server.await.unwrap();
    let client_saw = client_saw?;
    Ok((server_saw?, client_saw))
}

/// Whether a handshake of `cli` with `srv` resumed an earlier session.
async fn resumed(srv: Arc<rustls::ServerConfig>, cli: Arc<rustls::ClientConfig>) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut s = tokio_rustls::TlsAcceptor::from(srv)
            .accept(tcp)
            .await
            .unwrap();
        // One byte each way, then the client's close.
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(b"y").await.unwrap();
        let _ = s.read(&mut b).await;
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("peer").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(cli)
        .connect(name, tcp)
        .await
        .unwrap();
    // The client reads after the handshake, so a session ticket the server sent is taken in
    // (and would be offered at the next handshake).
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    let kind = s.get_ref().1.handshake_kind();
    s.shutdown().await.unwrap();
    drop(s);
    server.await.unwrap();
    kind == Some(rustls::HandshakeKind::Resumed)
}

async fn refused(
    svc: &IdentitySvc,
    bundle: &Bundle,
    identity: &str,
    token: &str,
    csr: Vec<u8>,
) -> tonic::Status {
    let ch = client::channel(
        &svc.addr,
        &SpiffeId::service_account(TD, "meshwork-system", "meshwork-identity").unwrap(),
        bundle,
    )
    .await
    .unwrap();
    IdentityClient::new(ch)
        .certify(CertifyRequest {
            identity: identity.into(),
            token: token.as_bytes().to_vec(),
            certificate_signing_request: csr,
        })
        .await
        .expect_err("the call should be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_refuse_mtls_and_rotate_without_a_failed_handshake() {
    let c = Cluster::start().await;
    let out = Command::new(lab_binary("meshwork-identity"))
        .args([
            "init",
            "--out",
            c.path("ca").to_str().unwrap(),
            "--issuer-lifetime",
            "48h",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let issuer_dir = c.path("issuer");
    std::fs::create_dir_all(&issuer_dir).unwrap();
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::copy(c.path("ca").join(f), issuer_dir.join(f)).unwrap();
    }
    let log = c.path("identity.log");
    let (p, lines) = start(
        "meshwork-identity",
        &[
            "serve",
            "--issuer-dir",
            issuer_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--kubeconfig",
            c.path("api/admin.kubeconfig").to_str().unwrap(),
        ],
        &[],
        Some(&log),
        2,
    );
    let svc = IdentitySvc {
        _proc: p,
        admin: lines[0].strip_prefix("admin on ").unwrap().to_string(),
        addr: lines[1]
            .strip_prefix("identity service listening on ")
            .unwrap()
            .to_string(),
        log,
    };
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap(),
    )
    .await
    .unwrap();
    let web_pod = c.workload("app", "web", "web-0").await;
    let db_pod = c.workload("app", "db", "db-0").await;
    let web_token = c.token("app", "web", &web_pod, AUDIENCE).await;
    let db_token = c.token("app", "db", &db_pod, AUDIENCE).await;

    // Issued: a SPIFFE certificate for each, a day long.
    let web = identity_client(&c, &svc, "app", "web", &web_token);
    let db = identity_client(&c, &svc, "app", "db", &db_token);
    let cur = web.certify().await.unwrap();
    let life = cur.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(
        life > Duration::from_secs(24 * 3600 - 60) && life <= Duration::from_secs(24 * 3600),
        "{life:?}"
    );
    db.certify().await.unwrap();
    assert_eq!(
        svc.metric("meshwork_identity_certificates_issued_total"),
        2.0
    );

    // mTLS both ways, each seeing the other.
    let accept_td = Expect::TrustDomain(TD.into());
    let web_srv = Arc::new(web.server_config(accept_td.clone()));
    let db_cli = Arc::new(db.client_config(Expect::Identity(web.id().clone())));
    let (server_saw, client_saw) = handshake(web_srv.clone(), db_cli.clone()).await.unwrap();
    assert_eq!((&server_saw, &client_saw), (db.id(), web.id()));
    // Every handshake is a full one: a resumed session would carry a client certificate
    // that is not verified again (expired since, or of an anchor rotated out).
    for _ in 0..2 {
        assert!(
            !resumed(web_srv.clone(), db_cli.clone()).await,
            "a handshake resumed an earlier session"
        );
    }
    // A client expecting another identity refuses the server.
    let wrong = Arc::new(db.client_config(Expect::Identity(
        SpiffeId::service_account(TD, "app", "admin").unwrap(),
    )));
    let err = handshake(web_srv.clone(), wrong).await.unwrap_err();
    assert!(
        err.contains("WrongIdentity") && err.contains("spiffe://cluster.local/ns/app/sa/admin"),
        "{err}"
    );

    // A certificate from a foreign CA (same name, same trust domain) is refused.
    let fa = ca::generate_anchor(TD, Duration::from_secs(3600)).unwrap();
    let fi = ca::generate_issuer(TD, &fa.cert_pem, &fa.key_pem, Duration::from_secs(3600)).unwrap();
    let foreign = ca::Ca::from_pem(&fa.cert_pem, &fi.cert_pem, &fi.key_pem).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = foreign
        .sign_key(&key, db.id(), Duration::from_secs(600))
        .unwrap();
    let pk = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let forged = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(meshwork_identity::verify::ServerVerifier {
        bundle: web.bundle(),
        expect: Expect::Identity(web.id().clone()),
    }))
    .with_client_auth_cert(vec![leaf.der.clone(), foreign.chain[0].clone()], pk)
    .unwrap();
    let err = handshake(web_srv.clone(), Arc::new(forged))
        .await
        .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "{err}"
    );

    // Refusals, in gRPC's words, and nothing issued.
    let bundle = web.bundle();
    let web_id = web.id().to_string();
    let wkey = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = ca::make_csr(&wkey, web.id()).unwrap();
    let st = refused(&svc, &bundle, &web_id, &db_token, csr.clone()).await;
    assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
    assert!(
        st.message()
            .contains("the token is for service account app/db"),
        "{st:?}"
    );
    let api_token = c
        .token(
            "app",
            "web",
            &web_pod,
            "https://kubernetes.default.svc.cluster.local",
        )
        .await;
    let st = refused(&svc, &bundle, &web_id, &api_token, csr.clone()).await;
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    assert!(st.message().contains("audience"), "{st:?}");
    let st = refused(
        &svc,
        &bundle,
        &web_id,
        &expired(c.dir.path(), &web_token),
        csr.clone(),
    )
    .await;
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    assert!(st.message().contains("expired"), "{st:?}");
    let admin_csr = ca::make_csr(
        &wkey,
        &SpiffeId::service_account(TD, "app", "admin").unwrap(),
    )
    .unwrap();
    let st = refused(&svc, &bundle, &web_id, &web_token, admin_csr).await;
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
    assert!(
        st.message()
            .contains("asks for names other than spiffe://cluster.local/ns/app/sa/web"),
        "{st:?}"
    );
    let st = refused(&svc, &bundle, &web_id, "not.a-jwt", csr.clone()).await;
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    assert!(st.message().contains("not a JWT"), "{st:?}");
    let st = refused(
        &svc,
        &bundle,
        &web_id,
        &web_token,
        b"\x30\x03garbage".to_vec(),
    )
    .await;
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
    let st = refused(
        &svc,
        &bundle,
        "spiffe://other.domain/ns/app/sa/web",
        &web_token,
        csr.clone(),
    )
    .await;
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
    // Revoked: the pod the token is bound to is gone.
    let gone_pod = c.workload("app", "web", "web-gone").await;
    let gone_token = c.token("app", "web", &gone_pod, AUDIENCE).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "app");
    pods.delete(
        "web-gone",
        &kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let st = refused(&svc, &bundle, &web_id, &gone_token, csr.clone()).await;
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    assert_eq!(
        svc.metric("meshwork_identity_certificates_issued_total"),
        2.0,
        "a refusal issued something"
    );
    let text = String::from_utf8_lossy(
        &Command::new("curl")
            .args(["-s", &format!("http://{}/metrics", svc.admin)])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    for reason in [
        "identity_mismatch",
        "token_audience",
        "token_invalid",
        "token_malformed",
        "csr_names",
        "csr_malformed",
        "identity_trust_domain",
    ] {
        let line = format!("meshwork_identity_certificates_rejected_total{{reason=\"{reason}\"}} ");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&line) && !l.ends_with(" 0")),
            "no {reason} refusal counted:\n{text}"
        );
    }
    let audit = std::fs::read_to_string(&svc.log).unwrap();
    assert!(
        audit.contains("certificate refused") && audit.contains("reason=\"identity_mismatch\""),
        "{audit}"
    );
    assert!(
        audit.contains("certificate issued")
            && audit.contains("spiffe://cluster.local/ns/app/sa/web"),
        "{audit}"
    );
    assert!(svc.metric("meshwork_identity_issuer_expiry_seconds") > 47.0 * 3600.0);

    // Rotations under a constant handshake loop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let last_err = Arc::new(std::sync::Mutex::new(String::new()));
    let looper = {
        let (stop, ok, failed, last_err) =
            (stop.clone(), ok.clone(), failed.clone(), last_err.clone());
        let (srv, cli) = (web_srv.clone(), db_cli.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match handshake(srv.clone(), cli.clone()).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        *last_err.lock().unwrap() = e;
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    let issuer_of = |id: &client::Identity| id.current().unwrap().key.cert[1].clone();
    let wait_handshakes = |n: u64| {
        let ok = ok.clone();
        async move {
            let target = ok.load(Ordering::Relaxed) + n;
            eventually_async("handshakes go on", Duration::from_secs(20), async || {
                (ok.load(Ordering::Relaxed) >= target).then_some(())
            })
            .await;
        }
    };
    wait_handshakes(20).await;
    let anchor_dir = c.path("ca");
    let new_issuer = |anchor: &Path, out: &Path| {
        let o = Command::new(lab_binary("meshwork-identity"))
            .args([
                "issuer",
                "--anchor-cert",
                anchor.join("ca.crt").to_str().unwrap(),
                "--anchor-key",
                anchor.join("ca.key").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--lifetime",
                "48h",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    // Until both holders carry a certificate from the issuer now in the directory.
    let reissue_until_new = |want_issuer: rustls::pki_types::CertificateDer<'static>| {
        let (web, db) = (web.clone(), db.clone());
        async move {
            eventually_async(
                "the service picks up the new issuer",
                Duration::from_secs(10),
                async || {
                    web.certify().await.unwrap();
                    db.certify().await.unwrap();
                    (issuer_of(&web) == want_issuer && issuer_of(&db) == want_issuer).then_some(())
                },
            )
            .await;
        }
    };
    // 1. Issuer rotation: same anchor, new issuer. Old and new leaves verify side by side.
    let before = issuer_of(&web);
    let staged = c.path("staged");
    new_issuer(&anchor_dir, &staged);
    write(
        &issuer_dir,
        "tls.key",
        &std::fs::read_to_string(staged.join("tls.key")).unwrap(),
    );
    write(
        &issuer_dir,
        "tls.crt",
        &std::fs::read_to_string(staged.join("tls.crt")).unwrap(),
    );
    let want = ca::certs_from_pem(
        "new issuer",
        &std::fs::read_to_string(staged.join("tls.crt")).unwrap(),
    )
    .unwrap()[0]
        .clone();
    // web renews first and handshakes with db's old-issuer certificate for a while.
    eventually_async(
        "web uses the new issuer",
        Duration::from_secs(10),
        async || {
            (issuer_of(&web) == want || {
                web.certify().await.unwrap();
                issuer_of(&web) == want
            })
            .then_some(())
        },
    )
    .await;
    assert_ne!(issuer_of(&db), want);
    wait_handshakes(20).await;
    reissue_until_new(want).await;
    assert_ne!(issuer_of(&web), before);
    wait_handshakes(20).await;

    // 2. Anchor rotation: (a) the bundle holds old and new anchors; (b) an issuer from the
    // new anchor, everyone reissued; (c) the old anchor dropped.
    let new_anchor = c.path("ca2");
    let o = Command::new(lab_binary("meshwork-identity"))
        .args(["init", "--out", new_anchor.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    let old_pem = std::fs::read_to_string(anchor_dir.join("ca.crt")).unwrap();
    let new_pem = std::fs::read_to_string(new_anchor.join("ca.crt")).unwrap();
    write(&issuer_dir, "ca.crt", &format!("{old_pem}{new_pem}"));
    // Until both holders renewed and carry a bundle of `n` anchors.
    let bundles_of = |n: usize, what: &'static str| {
        let (web, db) = (web.clone(), db.clone());
        async move {
            eventually_async(what, Duration::from_secs(10), async || {
                web.certify().await.unwrap();
                db.certify().await.unwrap();
                (web.bundle().get().len() == n && db.bundle().get().len() == n).then_some(())
            })
            .await
        }
    };
    bundles_of(2, "the two-anchor bundle reaches the clients").await;
    wait_handshakes(20).await;
    let staged2 = c.path("staged2");
    new_issuer(&new_anchor, &staged2);
    write(
        &issuer_dir,
        "tls.key",
        &std::fs::read_to_string(staged2.join("tls.key")).unwrap(),
    );
    write(
        &issuer_dir,
        "tls.crt",
        &std::fs::read_to_string(staged2.join("tls.crt")).unwrap(),
    );
    let want2 = ca::certs_from_pem(
        "issuer 2",
        &std::fs::read_to_string(staged2.join("tls.crt")).unwrap(),
    )
    .unwrap()[0]
        .clone();
    reissue_until_new(want2).await;
    wait_handshakes(20).await;
    write(&issuer_dir, "ca.crt", &new_pem);
    bundles_of(1, "the old anchor dropped").await;
    wait_handshakes(20).await;
    stop.store(true, Ordering::Relaxed);
    looper.await.unwrap();
    let (n_ok, n_failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        n_failed,
        0,
        "{n_failed} of {} handshakes failed during rotation: {}",
        n_ok + n_failed,
        last_err.lock().unwrap()
    );
    assert!(n_ok >= 120, "{n_ok}");
    // A certificate of the old anchor is now refused.
    let old_holder = ca::Ca::from_pem(
        &old_pem,
        &std::fs::read_to_string(staged.join("tls.crt")).unwrap(),
        &std::fs::read_to_string(staged.join("tls.key")).unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = old_holder
        .sign_key(&key, db.id(), Duration::from_secs(600))
        .unwrap();
    let pk = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let stale = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(meshwork_identity::verify::ServerVerifier {
        bundle: web.bundle(),
        expect: Expect::Identity(web.id().clone()),
    }))
    .with_client_auth_cert(vec![leaf.der.clone(), old_holder.chain[0].clone()], pk)
    .unwrap();
    assert!(
        handshake(web_srv, Arc::new(stale)).await.is_err(),
        "a leaf of the dropped anchor was accepted"
    );
}
