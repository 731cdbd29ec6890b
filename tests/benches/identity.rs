//! Certificate issuance by the mesh identity service (release binaries: the API server and
//! `meshwork-identity serve`, both on loopback), in one run:
//! - the floor: checking and signing the same CSR in this process (no gRPC, no TLS, no token
//!   review), one thread;
//! - Certify over gRPC/TLS at 1, 16 and 64 concurrent callers (each with its own connection,
//!   opened beforehand), every call a full issuance: token shape, TokenReview and pod lookup
//!   at the API server, CSR check, signing;
//! - TokenReview alone at the API server (what each Certify waits for), one caller;
//! - 500 pods rotating at once: 500 clients of the client library, each opening its own TLS
//!   connection and certifying, all started together; the wall time until the last is done.
//!
//! Run: `cargo build --release --bins && cargo bench -p meshwork-e2e --bench identity`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a panic with its location is the failure report"
)]

#[path = "../tests/support/procs.rs"]
mod procs;

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenReview},
    core::v1::{Namespace, Pod, ServiceAccount},
};
use kube::{api::PostParams, Api};
use meshwork_identity::{
    ca, client,
    pb::{identity_client::IdentityClient, CertifyRequest},
    verify::Bundle,
    SpiffeId,
};
use meshwork_lab::{cgroup::lab_binary, stats::pct};
use procs::start;
use serde_json::json;

const TD: &str = "cluster.local";
const AUDIENCE: &str = "identity.meshwork.io";
const WORKLOADS: usize = 64;
const ROTATING: usize = 500;
const FLOOR_N: usize = 2000;
const REVIEWS: usize = 1000;

fn stats(what: &str, mut ms: Vec<f64>, wall: Duration) {
    let n = ms.len();
    let p50 = pct(&mut ms, 0.5);
    let p99 = pct(&mut ms, 0.99);
    println!(
        "{what:<34} n={n:<6} p50 {p50:>7.3} ms  p99 {p99:>7.3} ms  {:>8.0}/s",
        n as f64 / wall.as_secs_f64()
    );
}

struct Workload {
    id: SpiffeId,
    token: String,
    csr: Vec<u8>,
}

async fn workloads(client: &kube::Client, n: usize, prefix: &str) -> Vec<Workload> {
    let mut out = Vec::with_capacity(n);
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "app");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    for i in 0..n {
        let sa = format!("{prefix}{i}");
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap(),
        )
        .await
        .unwrap();
        let pod = pods
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": sa},
                    "spec": {"serviceAccountName": sa, "nodeName": "none", "containers": [{"name": "c", "image": "busybox"}]},
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        let req: TokenRequest = serde_json::from_value(json!({"spec": {
            "audiences": [AUDIENCE], "expirationSeconds": 3600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": sa, "uid": pod.metadata.uid},
        }}))
        .unwrap();
        let token = sas
            .create_token_request(&sa, &PostParams::default(), &req)
            .await
            .unwrap()
            .status
            .unwrap()
            .token;
        let id = SpiffeId::service_account(TD, "app", &sa).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = ca::make_csr(&key, &id).unwrap();
        out.push(Workload { id, token, csr });
    }
    out
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::Builder::new()
        .prefix("mwid-bench-")
        .tempdir()
        .unwrap();
    let data = dir.path().join("api");
    let (_api, _) = start(
        "meshwork-orchestrator",
        &[
            "apiserver",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--sqlite-sync",
            "normal",
            "--controllers=false",
        ],
        &[("MESHWORK_LOG", "warn")],
        None,
        1,
    );
    let kc = data.join("admin.kubeconfig");
    let kube = meshwork_kube_watch::client(Some(&kc)).await.unwrap();
    let cadir = dir.path().join("ca");
    let o = Command::new(lab_binary("meshwork-identity"))
        .args(["init", "--out", cadir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    let (_svc, lines) = start(
        "meshwork-identity",
        &[
            "serve",
            "--issuer-dir",
            cadir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--kubeconfig",
            kc.to_str().unwrap(),
            // Every caller here is on 127.0.0.1, where each would be a pod of its own.
            "--max-calls-per-caller",
            "1000",
        ],
        &[("MESHWORK_LOG", "warn")],
        None,
        2,
    );
    let addr = lines[1]
        .strip_prefix("identity service listening on ")
        .unwrap()
        .to_string();
    let nss: Api<Namespace> = Api::all(kube.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap(),
    )
    .await
    .unwrap();
    let ws = Arc::new(workloads(&kube, WORKLOADS, "w").await);
    let anchors_pem = std::fs::read_to_string(cadir.join("ca.crt")).unwrap();
    let bundle = Bundle::new(ca::certs_from_pem("anchors", &anchors_pem).unwrap());
    let svc_id = SpiffeId::service_account(TD, "meshwork-system", "meshwork-identity").unwrap();

    println!(
        "identity issuance — {} logical CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // The floor: the same CSR checked and signed here.
    let local = ca::Ca::from_pem(
        &anchors_pem,
        &std::fs::read_to_string(cadir.join("tls.crt")).unwrap(),
        &std::fs::read_to_string(cadir.join("tls.key")).unwrap(),
    )
    .unwrap();
    let mut ms = Vec::with_capacity(FLOOR_N);
    let t0 = Instant::now();
    for _ in 0..FLOOR_N {
        let t = Instant::now();
        let csr = ca::check_csr(&ws[0].csr, &ws[0].id).unwrap();
        local
            .sign_csr(csr, &ws[0].id, Duration::from_secs(86400))
            .unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stats("floor: check + sign in process", ms, t0.elapsed());

    // TokenReview alone.
    let reviews: Api<TokenReview> = Api::all(kube.clone());
    let mut ms = Vec::with_capacity(REVIEWS);
    let t0 = Instant::now();
    for i in 0..REVIEWS {
        let w = &ws[i % ws.len()];
        let r: TokenReview =
            serde_json::from_value(json!({"spec": {"token": w.token, "audiences": [AUDIENCE]}}))
                .unwrap();
        let t = Instant::now();
        let got = reviews.create(&PostParams::default(), &r).await.unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(got.status.unwrap().authenticated, Some(true));
    }
    stats("TokenReview (API server), 1 caller", ms, t0.elapsed());

    // Certify at 1, 16, 64 callers.
    for callers in [1usize, 16, 64] {
        let per = (3000 / callers).max(50);
        let mut tasks = Vec::new();
        let mut chans = Vec::new();
        for _ in 0..callers {
            chans.push(client::channel(&addr, &svc_id, &bundle).await.unwrap());
        }
        let go = Arc::new(tokio::sync::Barrier::new(callers + 1));
        for (c, ch) in chans.into_iter().enumerate() {
            let (ws, go) = (ws.clone(), go.clone());
            tasks.push(tokio::spawn(async move {
                let mut cl = IdentityClient::new(ch);
                let w = &ws[c % ws.len()];
                let mut ms = Vec::with_capacity(per);
                go.wait().await;
                for _ in 0..per {
                    let t = Instant::now();
                    cl.certify(CertifyRequest {
                        identity: w.id.to_string(),
                        token: w.token.as_bytes().to_vec(),
                        certificate_signing_request: w.csr.clone(),
                    })
                    .await
                    .unwrap();
                    ms.push(t.elapsed().as_secs_f64() * 1e3);
                }
                ms
            }));
        }
        go.wait().await;
        let t0 = Instant::now();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        stats(
            &format!("Certify (gRPC/TLS), {callers} callers"),
            all,
            t0.elapsed(),
        );
    }

    // 500 pods rotating at once.
    let many = workloads(&kube, ROTATING, "r").await;
    let mut ids = Vec::new();
    for (i, w) in many.iter().enumerate() {
        let path = dir.path().join(format!("token-{i}"));
        std::fs::write(&path, &w.token).unwrap();
        ids.push(
            client::Identity::new(client::Config {
                addr: addr.clone(),
                service_identity: svc_id.clone(),
                identity: w.id.clone(),
                token_path: path,
                trust_anchors_pem: anchors_pem.clone(),
                trust_anchors_path: None,
            })
            .unwrap(),
        );
    }
    let t0 = Instant::now();
    // Each pod as its client's `rotate` does: a refused attempt (the service closes
    // connections past its 256 handshakes under way, `identity/src/transport.rs`) is tried
    // again after 0.5 s doubling, ±25%.
    let tasks: Vec<_> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            tokio::spawn(async move {
                let t = Instant::now();
                let (mut backoff, mut retries) = (Duration::from_millis(500), 0u32);
                while let Err(e) = id.certify().await {
                    retries += 1;
                    assert!(retries < 10, "{e}");
                    // Spread by the pod's number, as the client's random jitter would.
                    let jitter = 0.75 + (i % 50) as f64 / 100.0;
                    tokio::time::sleep(backoff.mul_f64(jitter)).await;
                    backoff *= 2;
                }
                (t.elapsed().as_secs_f64() * 1e3, retries)
            })
        })
        .collect();
    let (mut ms, mut retried) = (Vec::new(), 0);
    for t in tasks {
        let (m, r) = t.await.unwrap();
        ms.push(m);
        retried += usize::from(r > 0);
    }
    let wall = t0.elapsed();
    stats(&format!("{ROTATING} pods rotating at once"), ms, wall);
    println!(
        "{ROTATING} pods rotating at once: all done in {:.3} s (goal < 2 s); {retried} pods \
         needed a second attempt",
        wall.as_secs_f64()
    );
}
