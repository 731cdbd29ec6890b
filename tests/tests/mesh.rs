//! The mesh data path end to end (issue 14), on a lab cluster: the API server, its
//! controllers, a node runtime and a control agent per node (which serves the proxies'
//! discovery), the identity service on node 1, and pods that run `meshwork-proxy` as the
//! injector puts it in (a native sidecar with a projected token for the identity audience,
//! the trust roots ConfigMap, the downward API). Until interception
//! (issue 15) the client app addresses its proxy explicitly: HTTP by absolute URI, opaque TCP
//! by CONNECT, gRPC by its authority.
//!
//! - On the wire between two pods: a TLS 1.3 ServerHello and no plaintext HTTP; the server
//!   app sees the client's SPIFFE ID, never a forged one; plaintext at a proxy's inbound port
//!   is refused and counted.
//! - A server-speaks-first protocol and a byte-exact 100 MiB transfer each way pass a CONNECT
//!   tunnel untouched; a tonic server stream passes with its trailers.
//! - The control agent killed: traffic goes on over the last endpoints (a new pod is not
//!   seen); restarted: updates resume (the new pod gets traffic).
//! - Certificates rotating every few seconds, a proxy drained by `POST /shutdown` and by
//!   SIGTERM, and a rolling update of the meshed Deployment (`kubectl rollout restart`), under
//!   constant load: zero failed requests.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

#[path = "support/mesh.rs"]
mod mesh_lab;
#[path = "support/orch.rs"]
mod orch;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use meshwork_lab::capture::server_hello_version;
use orch::pids_in;
use serde_json::{json, Value};

const WEB: &str = "web.default.svc.cluster.local";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
/// What the node agents prove on their discovery port (the proxies' default
/// `--destination-identity`).
const AGENT_ID: &str = "spiffe://cluster.local/ns/kube-system/sa/meshwork-control";
const OPAQUE_LEN: usize = 100 << 20;
/// The web Service's routes (its clients' proxies name requests by them) and the web pods' own
/// (their proxies name what they receive).
const OUTBOUND_ROUTES: &str = "GET /; POST /{service}/{method}";
const INBOUND_ROUTES: &str = "/healthz; GET /";

use mesh_lab::Mesh;

/// What these tests deploy on the mesh.
impl Mesh {
    /// The web Deployment (HTTP on 8080, a server-speaks-first protocol on 5432, gRPC on
    /// 9090) and its Service, and a client pod on the other node.
    fn deploy(&self, replicas: usize) {
        let web = self.meshed(
            json!({
                "serviceAccountName": "web",
                "terminationGracePeriodSeconds": 2,
                "containers": [
                    {"name": "http", "image": "meshapp", "args": ["http", "0.0.0.0:8080"],
                     "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
                    {"name": "first", "image": "meshapp", "args": ["first", "0.0.0.0:5432", OPAQUE_LEN.to_string()]},
                    {"name": "grpc", "image": "meshapp", "args": ["grpc", "0.0.0.0:9090"]},
                ],
            }),
            // The pod's routes for its inbound metrics (the injector's env for
            // `config.meshwork.io/routes` on the pod).
            &[("MESHWORK_PROXY_INBOUND_ROUTES", INBOUND_ROUTES)],
        );
        let client = self.meshed(
            json!({
                "serviceAccountName": "client",
                "nodeName": self.o.nodes[1].name,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "tools", "command": ["sleep", "100000"]}],
            }),
            &[],
        );
        let mesh_annotations = json!({"meshwork.io/proxy-inbound-port": "4143"});
        self.o.apply(&json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "web", "namespace": "default"},
             "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                      "template": {"metadata": {"labels": {"app": "web"}, "annotations": mesh_annotations},
                                   "spec": web}}},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "web", "namespace": "default",
                          "annotations": {meshwork_destination_api::routes::ROUTES: OUTBOUND_ROUTES}},
             "spec": {"selector": {"app": "web"}, "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "first", "port": 5432},
                {"name": "grpc", "port": 9090}]}},
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "client", "namespace": "default", "annotations": mesh_annotations},
             "spec": client},
        ]}));
        self.wait_ready(replicas);
    }

    fn wait_ready(&self, replicas: usize) {
        self.o
            .wait_long("web and client pods ready", Duration::from_secs(90), || {
                let web = self.o.pods("default", "app=web");
                let client = self.o.json(&["get", "pod", "client"]);
                let client_ready = client["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (web.iter().filter(|p| p.ready).count() == replicas && client_ready).then_some(())
            });
    }

    /// The client pod's network namespace.
    fn client_netns(&self) -> String {
        let uid = self
            .o
            .kubectl(&["get", "pod", "client", "-o", "jsonpath={.metadata.uid}"]);
        self.o.pod_netns(1, &uid)
    }

    /// A connection from the client pod to its proxy's outbound port.
    fn to_proxy(&self) -> std::net::TcpStream {
        let s = self
            .o
            .lab
            .tcp_connect(&self.client_netns(), "127.0.0.1:4140".parse().unwrap())
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    /// A metric of the proxy of the pod at `ip` (its admin port), from node 1.
    fn metric(&self, ip: &str, needle: &str) -> f64 {
        let out = self.o.lab.exec(
            &self.o.nodes[0].netns,
            &["curl", "-s", &format!("http://{ip}:4191/metrics")],
        );
        out.lines()
            .filter(|l| l.starts_with("meshwork_proxy_") && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// The client pod's node agent's discovery port, from the client pod: a TLS 1.3 handshake
/// verifying the agent as the proxies do (the agent's SPIFFE ID against the mesh's anchors),
/// presenting a workload certificate of the mesh when `cert`, then HTTP/2's preface. Ok: the
/// agent's identity and its first frame's type (4: SETTINGS); Err: why it failed.
fn discovery_tls(m: &Mesh, cert: bool) -> Result<(String, u8), String> {
    use meshwork_identity::verify::{Bundle, Expect, ServerVerifier};
    let dir = m.o.lab.dir().join("ca");
    let pem = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let ca = meshwork_identity::ca::Ca::from_pem(&pem("ca.crt"), &pem("tls.crt"), &pem("tls.key"))
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(ServerVerifier {
        bundle: Bundle::new(ca.anchors.clone()),
        expect: Expect::Identity(meshwork_identity::SpiffeId::parse(AGENT_ID).unwrap()),
    }));
    let mut cfg = if cert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let id = meshwork_identity::SpiffeId::parse(CLIENT_ID).unwrap();
        let leaf = ca.sign_key(&key, &id, Duration::from_secs(600)).unwrap();
        let mut chain = vec![leaf.der];
        chain.extend(ca.chain.iter().cloned());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let agent = format!("{}:8086", m.o.nodes[1].underlay_ip);
    let tcp =
        m.o.lab
            .tcp_connect(&m.client_netns(), agent.parse().unwrap())
            .unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        rustls::pki_types::ServerName::try_from("meshwork-control").unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    tls.write_all(&preface).map_err(|e| e.to_string())?;
    let mut frame = [0u8; 9];
    tls.read_exact(&mut frame).map_err(|e| e.to_string())?;
    let leaf = tls.conn.peer_certificates().unwrap()[0].clone();
    let id = meshwork_identity::verify::peer_identity(&leaf).unwrap();
    Ok((id.to_string(), frame[3]))
}

/// A metric of the client's node agent (its /metrics), by name.
fn agent_metric(m: &Mesh, name: &str) -> f64 {
    let out = m.o.lab.exec(
        &m.o.nodes[0].netns,
        &[
            "curl",
            "-s",
            &format!("http://{}:10256/metrics", m.o.nodes[1].underlay_ip),
        ],
    );
    out.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the agent's metrics:\n{out}"))
}

/// The handshakes the client's node agent refused so far.
fn agent_refused(m: &Mesh) -> f64 {
    agent_metric(m, "meshwork_control_destination_handshake_failures_total")
}

/// HTTP/1.1 through the client's proxy on one keep-alive connection.
struct Client {
    rt: tokio::runtime::Runtime,
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Client {
    fn new(m: &Mesh) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tcp = m.to_proxy();
        tcp.set_nonblocking(true).unwrap();
        let send = rt.block_on(async {
            let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
            let (send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            send
        });
        Client { rt, send }
    }

    /// GET `http://<authority><path>` with `headers`: status and body.
    fn get(&mut self, authority: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut req = http::Request::get(format!("http://{authority}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new()).unwrap();
        self.rt.block_on(async {
            let r = tokio::time::timeout(Duration::from_secs(10), async {
                self.send.ready().await?;
                let resp = self.send.send_request(req).await?;
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, String::from_utf8_lossy(&body).to_string()))
            })
            .await;
            match r {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => (0, format!("transport: {e}")),
                Err(_) => (0, "timed out".into()),
            }
        })
    }
}

/// `pod=<name> client=<id>` → (name, id).
fn who(body: &str) -> (String, String) {
    let mut pod = String::new();
    let mut client = String::new();
    for part in body.split_whitespace() {
        if let Some(p) = part.strip_prefix("pod=") {
            pod = p.to_string();
        }
        if let Some(c) = part.strip_prefix("client=") {
            client = c.to_string();
        }
    }
    (pod, client)
}

/// Requests back to back on two connections until stopped: every answer's status and pod.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    pods: Arc<Mutex<BTreeMap<String, u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(m: &Mesh) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let pods = Arc::new(Mutex::new(BTreeMap::new()));
        let threads = (0..2)
            .map(|_| {
                let mut c = Client::new(m);
                let (stop, ok, failed, pods) =
                    (stop.clone(), ok.clone(), failed.clone(), pods.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let (status, body) = c.get(WEB, "/", &[]);
                        if status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                            *pods.lock().unwrap().entry(who(&body).0).or_default() += 1;
                        } else {
                            failed.lock().unwrap().push(format!("{status} {body}"));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            pods,
            threads,
        }
    }

    /// Pods answering from now on.
    fn reset_pods(&self) {
        self.pods.lock().unwrap().clear();
    }

    fn pods(&self) -> BTreeMap<String, u64> {
        self.pods.lock().unwrap().clone()
    }

    fn assert_no_failures(&self, during: &str) {
        let f = self.failed.lock().unwrap();
        assert!(
            f.is_empty(),
            "{} of {} requests failed during {during}: {:?}",
            f.len(),
            f.len() as u64 + self.ok.load(Ordering::Relaxed),
            &f[..f.len().min(5)]
        );
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.ok.load(Ordering::Relaxed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_head(s: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).to_string()
}

#[test]
fn mtls_on_the_wire_identity_opaque_and_grpc() {
    // Not "mesh": `mesh-ctl up`'s lab is mwl-mesh-*, which the suite never sweeps.
    let m = Mesh::start("meshdp", "24h");
    m.deploy(2);
    let web = m.o.pods("default", "app=web");
    let target = web[0].clone();
    let target_node = m.o.node_index(&target.node);
    let target_ns = m.o.pod_netns(target_node, &target.uid);

    // mTLS on the wire, the client's identity at the server, a forged one stripped.
    let cap = m.o.lab.capture(&target_ns, "eth0");
    let mut c = Client::new(&m);
    let mut seen = BTreeMap::<String, u32>::new();
    for _ in 0..40 {
        let (status, body) = c.get(
            WEB,
            "/",
            &[(
                "meshwork-client-id",
                "spiffe://cluster.local/ns/kube-system/sa/admin",
            )],
        );
        assert_eq!(status, 200, "{body}");
        let (pod, client) = who(&body);
        assert_eq!(client, CLIENT_ID, "the server app saw {body:?}");
        *seen.entry(pod).or_default() += 1;
    }
    let segments = cap.stop();
    assert_eq!(seen.len(), 2, "both backends answered: {seen:?}");
    let to_proxy: Vec<_> = segments
        .iter()
        .filter(|s| s.dst.port() == 4143 || s.src.port() == 4143)
        .collect();
    assert!(
        !to_proxy.is_empty(),
        "no mesh traffic captured at {}",
        target.ip
    );
    let hello = to_proxy
        .iter()
        .find(|s| s.src.port() == 4143)
        .expect("the inbound proxy's first bytes");
    assert_eq!(
        server_hello_version(&hello.payload),
        Some(0x0304),
        "the session is not TLS 1.3: {:02x?}",
        &hello.payload[..hello.payload.len().min(16)]
    );
    // Everything but the admin port (the kubelet's readiness probes, plaintext by design).
    mesh_lab::assert_nothing_in_clear(&segments);
    for s in segments
        .iter()
        .filter(|s| s.src.port() != 4191 && s.dst.port() != 4191)
    {
        assert_ne!(
            s.dst.port(),
            8080,
            "the app port on the wire: {} -> {}",
            s.src,
            s.dst
        );
    }

    // Discovery is mutual TLS: the agent proves its identity and answers a workload of the
    // mesh; a pod without a certificate, or speaking plaintext, is refused in the handshake.
    assert_eq!(
        discovery_tls(&m, true),
        Ok((AGENT_ID.to_string(), 4)),
        "a meshed client's discovery handshake"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expiry = agent_metric(
        &m,
        "meshwork_control_destination_certificate_expiry_timestamp_seconds",
    );
    assert!(
        expiry > now,
        "the agent's certificate expiry {expiry} is not in the future ({now})"
    );
    let refused_before = agent_refused(&m);
    let no_cert = discovery_tls(&m, false);
    assert!(
        no_cert.is_err(),
        "the agent answered a client without a certificate: {no_cert:?}"
    );
    let mut plain =
        m.o.lab
            .tcp_connect(
                &m.client_netns(),
                format!("{}:8086", m.o.nodes[1].underlay_ip)
                    .parse()
                    .unwrap(),
            )
            .unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        answer.len() < 9 || answer[3] != 4,
        "the agent answered plaintext HTTP/2: {answer:02x?}"
    );
    let refused = agent_refused(&m) - refused_before;
    assert!(
        refused >= 2.0,
        "the agent counted {refused} refused handshakes for the two"
    );

    // The requests counted at each end, by authority, route (the Service's for the client's
    // proxy, the pod's own for the web proxies), status class and peer identity.
    let client_ip =
        m.o.kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.podIP}"]);
    let out = m.metric(
        &client_ip,
        "requests_total{direction=\"outbound\",authority=\"web.default.svc.cluster.local:80\",route=\"GET /\",status_class=\"2xx\",peer=\"spiffe://cluster.local/ns/default/sa/web\",grpc_status=\"\"}",
    );
    assert!(
        out >= 40.0,
        "the client's proxy counted {out} outbound requests"
    );
    let inb: f64 = web
        .iter()
        .map(|p| {
            m.metric(
                &p.ip,
                &format!("requests_total{{direction=\"inbound\",authority=\"{WEB}\",route=\"GET /\",status_class=\"2xx\",peer=\"{CLIENT_ID}\",grpc_status=\"\"}}"),
            )
        })
        .sum();
    assert!(
        inb >= 40.0,
        "the web proxies counted {inb} inbound requests from the client"
    );

    // The tap shows a request as it happens, with its trace id; the app gets the trace
    // context as the client sent it (no trace collector here: the proxies add no span).
    // Only from the pod's own loopback: paths can carry secrets.
    let mut refused =
        m.o.lab
            .tcp_connect(
                &m.o.nodes[0].netns,
                format!("{}:4191", target.ip).parse().unwrap(),
            )
            .unwrap();
    refused
        .write_all(b"GET /tap HTTP/1.1\r\nHost: tap\r\n\r\n")
        .unwrap();
    let head = read_head(&mut refused);
    assert!(
        head.starts_with("HTTP/1.1 403"),
        "tap from outside the pod: {head}"
    );
    let mut tap =
        m.o.lab
            .tcp_connect(&target_ns, "127.0.0.1:4191".parse().unwrap())
            .unwrap();
    tap.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tap.write_all(b"GET /tap?direction=inbound HTTP/1.1\r\nHost: tap\r\n\r\n")
        .unwrap();
    let head = read_head(&mut tap);
    if !head.starts_with("HTTP/1.1 200") {
        let mut body = [0u8; 512];
        let n = tap.read(&mut body).unwrap_or(0);
        panic!("tap: {head}{}", String::from_utf8_lossy(&body[..n]));
    }
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut app_saw = String::new();
    let mut tapped = String::new();
    let started = Instant::now();
    // Requests until one lands on the tapped pod (the balancer picks).
    while tapped.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "no tap line");
        let (status, body) = c.get(WEB, "/traced", &[("traceparent", sent)]);
        assert_eq!(status, 200);
        if who(&body).0 != target.name {
            continue;
        }
        app_saw = body
            .split_whitespace()
            .find_map(|p| p.strip_prefix("traceparent="))
            .unwrap_or("")
            .to_string();
        let mut buf = vec![0u8; 8192];
        let mut got = String::new();
        while !got.contains("/traced") {
            let n = tap.read(&mut buf).unwrap();
            assert!(n > 0, "the tap stream ended");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        tapped = got;
    }
    let line = tapped
        .lines()
        .find(|l| l.contains("/traced"))
        .unwrap()
        .to_string();
    let json_start = line.find('{').unwrap();
    let event: Value = serde_json::from_str(&line[json_start..]).unwrap();
    assert_eq!(event["direction"], "inbound", "{event}");
    assert_eq!(event["status"], 200, "{event}");
    assert_eq!(event["peer"], CLIENT_ID, "{event}");
    assert_eq!(
        event["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{event}"
    );
    assert_eq!(app_saw, sent, "the traceparent the app got");
    drop(tap);

    // Plaintext at the inbound port is refused before the app, and counted.
    let refused_before = m.metric(&target.ip, "reason=\"no_app_port\"");
    let mut s =
        m.o.lab
            .tcp_connect(
                &m.client_netns(),
                format!("{}:4143", target.ip).parse().unwrap(),
            )
            .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nmeshwork-client-id: spiffe://cluster.local/ns/default/sa/client\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert!(
        reply.is_empty(),
        "plaintext got an answer: {:?}",
        String::from_utf8_lossy(&reply)
    );
    m.o.wait("the refusal counted", || {
        (m.metric(&target.ip, "reason=\"no_app_port\"") > refused_before).then_some(())
    });

    // A server-speaks-first protocol and 100 MiB each way through a CONNECT tunnel.
    let mut t = m.to_proxy();
    write!(t, "CONNECT {WEB}:5432 HTTP/1.1\r\nHost: {WEB}:5432\r\n\r\n").unwrap();
    let head = read_head(&mut t);
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT: {head}");
    // The server speaks first: its greeting must not wait for a client byte (5432 is an
    // opaque port, relayed without detection; detection would hold it for 10 s).
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 17];
    t.read_exact(&mut greeting)
        .expect("the server's greeting within 5 s");
    t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(&greeting, b"220 mwlab ready\r\n");
    let started = Instant::now();
    let up = meshwork_lab::tcp::payload(OPAQUE_LEN, 1);
    let mut w = t.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&up));
    let mut verdict = [0u8; 7];
    t.read_exact(&mut verdict).unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(&verdict, b"intact\n", "the server's check of what it got");
    let mut down = Vec::with_capacity(OPAQUE_LEN);
    t.read_to_end(&mut down).unwrap();
    assert!(
        down == meshwork_lab::tcp::payload(OPAQUE_LEN, 2),
        "the 100 MiB back differ (got {} bytes)",
        down.len()
    );
    eprintln!(
        "100 MiB each way through the tunnel in {:?}",
        started.elapsed()
    );

    // gRPC (tonic), a server stream with its trailers, through both proxies.
    let netns = m.client_netns();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let updates = rt.block_on(async {
        let lab_ns = m.o.lab.open(&netns);
        let tcp = lab_ns
            .run(|| std::net::TcpStream::connect("127.0.0.1:4140"))
            .unwrap()
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let tcp = Arc::new(Mutex::new(Some(tcp)));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{WEB}:9090"))
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let tcp = tcp.lock().unwrap().take();
                async move {
                    let tcp = tcp.ok_or_else(|| std::io::Error::other("one connection only"))?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::TcpStream::from_std(tcp)?,
                    ))
                }
            }))
            .await
            .unwrap();
        let mut client =
            meshwork_destination_api::pb::destination_client::DestinationClient::new(channel);
        let mut stream = client
            .get(meshwork_destination_api::pb::GetDestination {
                authority: "grpc-through-the-mesh".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(u) = stream.message().await.unwrap() {
            got.push(u.endpoints[0].weight);
            assert_eq!(u.endpoints[0].addr, "grpc-through-the-mesh");
        }
        got
    });
    assert_eq!(
        updates,
        vec![0, 1, 2],
        "the server stream, then its OK trailers"
    );
    // Named by the Service's gRPC route in the client's proxy.
    let grpc = m.metric(
        &client_ip,
        &format!("requests_total{{direction=\"outbound\",authority=\"{WEB}:9090\",route=\"POST /{{service}}/{{method}}\",status_class=\"2xx\""),
    );
    assert_eq!(grpc, 1.0, "the gRPC call by its route");
    // And by its status, from the trailers that ended its stream.
    let ok = m.metric(
        &client_ip,
        &format!("requests_total{{direction=\"outbound\",authority=\"{WEB}:9090\",route=\"POST /{{service}}/{{method}}\",status_class=\"2xx\",peer=\"spiffe://cluster.local/ns/default/sa/web\",grpc_status=\"0\"}}"),
    );
    assert_eq!(ok, 1.0, "the gRPC call by its status");
}

#[test]
fn control_restart_rotation_drain_and_rollout_lose_no_request() {
    // Certificates of 6 s: each proxy renews about every 4 s.
    let mut m = Mesh::start("meshres", "6s");
    m.deploy(2);
    let client_ip =
        m.o.kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.podIP}"]);
    let load = Load::start(&m);
    m.o.wait("load flowing", || {
        (load.ok.load(Ordering::Relaxed) > 20).then_some(())
    });

    // The client node's agent killed: the last endpoints stay in use; a new pod is not seen.
    // procs: the API server, then the agents of n1 and n2 (the client's node).
    m.o.procs[2].kill(libc::SIGKILL);
    m.o.kubectl(&["scale", "deployment/web", "--replicas=3"]);
    m.wait_ready(3);
    load.reset_pods();
    let until = load.ok.load(Ordering::Relaxed) + 200;
    m.o.wait("200 requests with the agent down", || {
        (load.ok.load(Ordering::Relaxed) > until).then_some(())
    });
    let answered = load.pods();
    assert_eq!(
        answered.len(),
        2,
        "only the two known pods answer: {answered:?}"
    );
    load.assert_no_failures("the agent's absence");

    // Restarted: the third pod joins.
    let a = m.o.start_agent(1);
    m.o.procs.push(a);
    m.o.wait_long("the third pod answering", Duration::from_secs(30), || {
        (load.pods().len() == 3).then_some(())
    });
    load.assert_no_failures("the agent's restart");

    // Rotation: both ends renew at least twice more while the load runs.
    let renewals = |pod: &str| {
        m.o.kubectl(&["logs", pod, "-c", "meshwork-proxy"])
            .matches("certificate renewed")
            .count()
    };
    let web0 = m.o.pods("default", "app=web")[0].name.clone();
    let (c0, w0) = (renewals("client"), renewals(&web0));
    m.o.wait_long(
        "two more renewals at each end",
        Duration::from_secs(30),
        || (renewals("client") >= c0 + 2 && renewals(&web0) >= w0 + 2).then_some(()),
    );
    load.assert_no_failures("certificate rotation");

    // Drain by POST /shutdown (from the pod's own loopback), then by SIGTERM.
    let pods = m.o.pods("default", "app=web");
    let shut = &pods[0];
    let out = m.o.kubectl(&[
        "exec",
        &shut.name,
        "-c",
        "meshwork-proxy",
        "--",
        "curl",
        "-s",
        "-X",
        "POST",
        "http://127.0.0.1:4191/shutdown",
    ]);
    assert_eq!(out.trim(), "draining");
    let term = &pods[1];
    let cg =
        m.o.lab
            .cgroup(&m.o.nodes[m.o.node_index(&term.node)])
            .join("pods")
            .join(format!("pod{}", term.uid));
    let pids = pids_in(&cg, "meshwork-proxy");
    assert_eq!(pids.len(), 1, "the proxy of {}: {pids:?}", term.name);
    // SAFETY: a pid read from the pod's own cgroup.
    unsafe { libc::kill(pids[0], libc::SIGTERM) };
    let done = load.ok.load(Ordering::Relaxed) + 300;
    m.o.wait_long(
        "300 more requests after the drains",
        Duration::from_secs(60),
        || (load.ok.load(Ordering::Relaxed) > done).then_some(()),
    );
    load.assert_no_failures("two proxies draining");
    // Each drained proxy said so before it exited (the kubelet then restarted it).
    for p in [&shut.name, &term.name] {
        m.o.wait_long(
            &format!("{p}'s proxy drained"),
            Duration::from_secs(30),
            || {
                let out =
                    m.o.kubectl_out(&["logs", p, "-c", "meshwork-proxy", "--previous"]);
                String::from_utf8_lossy(&out.stdout)
                    .contains("drained")
                    .then_some(())
            },
        );
    }
    // A rolling update of the meshed Deployment under the same load: every pod replaced (each
    // old one's app stopped before its proxy, its endpoint withdrawn), no request lost.
    let old: std::collections::BTreeSet<String> =
        m.o.pods("default", "app=web")
            .into_iter()
            .map(|p| p.name)
            .collect();
    m.o.kubectl(&["rollout", "restart", "deployment/web"]);
    m.o.kubectl(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    load.reset_pods();
    let until = load.ok.load(Ordering::Relaxed) + 200;
    m.o.wait("200 requests after the rollout", || {
        (load.ok.load(Ordering::Relaxed) > until).then_some(())
    });
    let answered = load.pods();
    assert!(
        !answered.is_empty() && answered.keys().all(|p| !old.contains(p)),
        "only new pods answer after the rollout: {answered:?} (old {old:?})"
    );
    load.assert_no_failures("a rolling update");
    let total = load.finish();
    let retries = m.metric(&client_ip, "meshwork_proxy_retries_total");
    eprintln!("{total} requests, none failed; the client's proxy retried {retries}");
}
