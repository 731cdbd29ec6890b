//! The proxy pair against the direct path and an nginx mTLS pair, in the same run, interleaved
//! (BENCHMARKS.md, "The proxy pair"). Two pods on a lab node: a server pod whose app is nginx
//! answering 1 KB on :8080, and a client pod; both carry meshwork-proxy as injection will
//! (identity from the identity service, discovery from the node's agent). Three paths from the
//! client pod, each driven by `oha` in the client pod's network namespace:
//!
//! - direct: `http://<server pod>:8080/`;
//! - meshwork: the client's proxy (`127.0.0.1:4140`, Host `web.default.svc.cluster.local`) →
//!   mTLS HTTP/2 → the server's proxy → the app;
//! - nginx: an nginx in the client pod (`127.0.0.1:8081`) → TLS 1.3 with client certificates,
//!   keep-alive upstream → an nginx in the server pod (`:8443`) → the app (keep-alive).
//!
//! Open loop (`-q` with `--latency-correction`) at 500, 2000 and 10000 rps after a warm-up,
//! rounds interleaved by path; then each path's maximum at 16 connections. Reported: latency
//! added over direct (p50, p99, p99.9, max), CPU ms per request of the pair (utime + stime of
//! both proxies' processes from /proc, and the stime part alone), RSS idle (VmRSS; for the
//! proxies also anonymous, file-backed and PSS) and peak (VmHWM). Last, one bulk download
//! (`MESHWORK_BENCH_BULK_MB`, default 256) through each path, three rounds: MiB/s and the
//! pair's CPU per MiB.
//!
//! Run: `scripts/setup.sh --bench && cargo build --release --bins && cargo bench -p meshwork-e2e
//! --bench proxy` (root; `--bench` installs oha). `MESHWORK_BENCH_SECS` sets each run's length (default 10), `MESHWORK_BENCH_ROUNDS`
//! the rounds per rate (default 2), `MESHWORK_BENCH_RATES` the rates (`2000`; empty: only the
//! maximum).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a panic with its location is the failure report"
)]

#[path = "../tests/support/mesh.rs"]
mod mesh_lab;
#[path = "../tests/support/orch.rs"]
mod orch;

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use mesh_lab::Mesh;
use orch::pids_in;
use serde_json::{json, Value};

const WEB: &str = "web.default.svc.cluster.local";
/// The open-loop rates; `MESHWORK_BENCH_RATES` (comma-separated, empty for none) picks others.
const RATES: [u32; 3] = [500, 2000, 10_000];

fn rates() -> Vec<u32> {
    match std::env::var("MESHWORK_BENCH_RATES") {
        Ok(v) => v
            .split(',')
            .filter(|r| !r.trim().is_empty())
            .map(|r| {
                r.trim()
                    .parse()
                    .expect("MESHWORK_BENCH_RATES: rates in rps")
            })
            .collect(),
        Err(_) => RATES.to_vec(),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of a process, in seconds.
/// User and system CPU seconds of `pid` (utime, stime): the system part is the kernel's
/// share (the sockets, and the TCP receive path of the peer it wakes), which no user-space
/// change removes.
fn cpu_secs(pid: i32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return (0.0, 0.0);
    };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks = |i: usize| f[i].parse::<f64>().unwrap() / hz;
    (ticks(11), ticks(12))
}

/// The pair's (user, system) CPU seconds.
fn pair_cpu(pids: &[i32]) -> (f64, f64) {
    pids.iter()
        .map(|&p| cpu_secs(p))
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// A /proc/<pid>/status field in MB.
fn status_mb(pid: i32, field: &str) -> f64 {
    proc_mb(pid, "status", field)
}

/// A field of a /proc/<pid>/<file> whose values are in kB, in MB.
fn proc_mb(pid: i32, file: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn pgrep(args: &[&str]) -> Vec<i32> {
    let out = Command::new("pgrep").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A CA, a server certificate for `server` and a client certificate, for nginx (PEM files).
fn nginx_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(vec![]).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: a leaf named like its issuer reads as self-signed to OpenSSL.
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "meshwork bench CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    for name in ["server", "client"] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
}

/// Every nginx this bench starts has this in its config path, so a crashed run's are found.
const MARK: &str = "mw-bench-proxy-nginx";

/// An nginx in the foreground; stopped with SIGTERM (its master then stops its workers).
struct Nginx(orch::Proc);

impl Drop for Nginx {
    fn drop(&mut self) {
        self.0.kill(libc::SIGTERM);
    }
}

/// nginx with `conf` in `netns`.
fn nginx(o: &orch::Orch, netns: &str, name: &str, conf: &str) -> Nginx {
    let dir = o.lab.dir().join(MARK).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nginx.conf");
    std::fs::write(
        &path,
        format!(
            "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
             events {{ worker_connections 4096; }}\nhttp {{\n access_log off;\n \
             client_body_temp_path {dir}; proxy_temp_path {dir};\n{conf}\n}}\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", netns, "nginx", "-c"])
        .arg(&path)
        .args(["-e", &dir.join("error.log").display().to_string()])
        .spawn()
        .unwrap();
    Nginx(orch::Proc::from(child))
}

/// The master of the nginx named `name` and its workers.
fn nginx_pids(o: &orch::Orch, name: &str) -> Vec<i32> {
    let conf = o.lab.dir().join(MARK).join(name).join("nginx.conf");
    let masters = pgrep(&["-f", &conf.display().to_string()]);
    let workers = masters.iter().flat_map(|m| pgrep(&["-P", &m.to_string()]));
    masters.iter().copied().chain(workers).collect()
}

/// One oha run from the client pod: its JSON summary.
fn oha(
    netns: &str,
    url: &str,
    host: Option<&str>,
    secs: u64,
    rate: Option<u32>,
    conns: u32,
) -> Value {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        netns,
        "oha",
        "--no-tui",
        "--output-format",
        "json",
    ])
    .args(["-z", &format!("{secs}s"), "-c", &conns.to_string()]);
    if let Some(q) = rate {
        cmd.args(["-q", &q.to_string(), "--latency-correction"]);
    }
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("oha (scripts/setup.sh --bench installs it)");
    assert!(
        out.status.success(),
        "oha: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // oha counts any answer as a success: every one must be a 200.
    let codes = v["statusCodeDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        codes.keys().all(|c| c == "200"),
        "{url}: answers other than 200: {codes:?}"
    );
    v
}

struct Path3 {
    name: &'static str,
    url: String,
    host: Option<&'static str>,
    /// The processes of the pair (none for direct).
    pids: Vec<i32>,
}

/// `perf -p`'s list: `1,2,3`.
fn pid_list(pids: &[i32]) -> String {
    pids.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn ms(v: &Value, p: &str) -> f64 {
    v["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN) * 1e3
}

fn main() {
    let secs = env_u64("MESHWORK_BENCH_SECS", 10);
    let rounds = env_u64("MESHWORK_BENCH_ROUNDS", 2);
    // A crashed run's nginx processes (their namespaces are swept by the lab).
    let _ = Command::new("pkill").args(["-f", MARK]).status();
    let m = Mesh::start("bench_proxy", "24h");
    let node = m.o.nodes[0].name.clone();
    let annotations = json!({"meshwork.io/proxy-inbound-port": "4143"});
    let pod = |name: &str, sa: &str, labels: Value| {
        let spec = m.meshed(
            json!({
                "serviceAccountName": sa, "nodeName": node,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "tools", "command": ["sleep", "100000"]}],
            }),
            // The injector's default log level (`info`), as pods run it.
            &[],
        );
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "default", "labels": labels, "annotations": annotations},
               "spec": spec})
    };
    m.o.apply(&json!({"apiVersion": "v1", "kind": "List", "items": [
        pod("server", "web", json!({"app": "web"})),
        pod("client", "client", json!({})),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
    ]}));
    m.o.wait_long("both pods ready", Duration::from_secs(90), || {
        let ready = |p: &str| {
            m.o.json(&["get", "pod", p])["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        };
        (ready("server") && ready("client")).then_some(())
    });
    let info = |p: &str| {
        let v = m.o.json(&["get", "pod", p]);
        (
            v["metadata"]["uid"].as_str().unwrap().to_string(),
            v["status"]["podIP"].as_str().unwrap().to_string(),
        )
    };
    let (server_uid, server_ip) = info("server");
    let (client_uid, _) = info("client");
    let server_ns = m.o.pod_netns(0, &server_uid);
    let client_ns = m.o.pod_netns(0, &client_uid);

    // The app, and the nginx pair around it.
    let dir = m.o.lab.dir().join("nginx-pki");
    std::fs::create_dir_all(&dir).unwrap();
    nginx_pki(&dir);
    let d = dir.display();
    let body = "x".repeat(1024);
    // The bulk download's file (sparse: the page cache serves it, no disk).
    let bulk_mb = env_u64("MESHWORK_BENCH_BULK_MB", 256);
    let bulk = m.o.lab.dir().join(MARK).join("bulk");
    std::fs::create_dir_all(bulk.parent().unwrap()).unwrap();
    std::fs::File::create(&bulk)
        .unwrap()
        .set_len(bulk_mb << 20)
        .unwrap();
    let _app = nginx(
        &m.o,
        &server_ns,
        "app",
        &format!(
            "server {{ listen 0.0.0.0:8080 reuseport; keepalive_requests 1000000;\n\
             location = /bulk {{ alias {}; }}\n\
             location / {{ return 200 '{body}'; }} }}",
            bulk.display()
        ),
    );
    let _nginx_server = nginx(
        &m.o,
        &server_ns,
        "nginx-server",
        &format!(
            "upstream app {{ server 127.0.0.1:8080; keepalive 64; }}\n\
             server {{ listen 0.0.0.0:8443 ssl; keepalive_requests 1000000;\n\
             ssl_protocols TLSv1.3; ssl_certificate {d}/server.crt; ssl_certificate_key {d}/server.key;\n\
             ssl_verify_client on; ssl_client_certificate {d}/ca.crt;\n\
             location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        ),
    );
    let _nginx_client = nginx(
        &m.o,
        &client_ns,
        "nginx-client",
        &format!(
            "upstream server {{ server {server_ip}:8443; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:8081; keepalive_requests 1000000;\n\
             location / {{ proxy_pass https://server; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
             proxy_ssl_protocols TLSv1.3; proxy_ssl_certificate {d}/client.crt; proxy_ssl_certificate_key {d}/client.key;\n\
             proxy_ssl_trusted_certificate {d}/ca.crt; proxy_ssl_verify on; proxy_ssl_name server; proxy_ssl_session_reuse on; }} }}"
        ),
    );
    for (ns, addr) in [
        (&server_ns, format!("{server_ip}:8080")),
        (&server_ns, format!("{server_ip}:8443")),
        (&client_ns, "127.0.0.1:8081".to_string()),
    ] {
        let addr = addr.parse().unwrap();
        m.o.wait("nginx listening", || {
            m.o.lab.tcp_connect(ns, addr).ok().map(|_| ())
        });
    }
    let cg = |uid: &str| {
        m.o.lab
            .cgroup(&m.o.nodes[0])
            .join("pods")
            .join(format!("pod{uid}"))
    };
    let mut proxies = pids_in(&cg(&server_uid), "meshwork-proxy");
    proxies.extend(pids_in(&cg(&client_uid), "meshwork-proxy"));
    assert_eq!(proxies.len(), 2, "the two proxies: {proxies:?}");
    let nginx_pair: Vec<i32> = ["nginx-server", "nginx-client"]
        .iter()
        .flat_map(|n| nginx_pids(&m.o, n))
        .collect();
    assert_eq!(
        nginx_pair.len(),
        4,
        "the nginx pair's masters and workers: {nginx_pair:?}"
    );
    let paths = [
        Path3 {
            name: "direct",
            url: format!("http://{server_ip}:8080/"),
            host: None,
            pids: vec![],
        },
        Path3 {
            name: "meshwork",
            url: "http://127.0.0.1:4140/".into(),
            host: Some(WEB),
            pids: proxies.clone(),
        },
        Path3 {
            name: "nginx",
            url: "http://127.0.0.1:8081/".into(),
            host: None,
            pids: nginx_pair.clone(),
        },
    ];
    // Idle RSS, and what it is made of: heap and stacks (anonymous) or the binary's and libc's
    // pages (file-backed: shared by every proxy on the node), since the two shrink by
    // different means; and PSS, which charges each process its share of the shared pages.
    let idle_rss: Vec<(String, f64)> = proxies
        .iter()
        .map(|p| (format!("meshwork {p}"), status_mb(*p, "VmRSS:")))
        .chain(
            nginx_pair
                .iter()
                .map(|p| (format!("nginx {p}"), status_mb(*p, "VmRSS:"))),
        )
        .collect();
    let idle_split: Vec<(String, f64, f64, f64)> = proxies
        .iter()
        .map(|p| {
            (
                format!("meshwork {p}"),
                status_mb(*p, "RssAnon:"),
                status_mb(*p, "RssFile:"),
                proc_mb(*p, "smaps_rollup", "Pss:"),
            )
        })
        .collect();

    // Warm-up: connections, sessions, TLS, discovery.
    for p in &paths {
        let w = oha(&client_ns, &p.url, p.host, 3, Some(500), 32);
        assert_eq!(w["summary"]["successRate"], 1.0, "{} warm-up: {w}", p.name);
    }
    // The nginx pair must reuse its upstream connections (else it measures TLS handshakes).
    let conns = |ns: &str, port: &str| {
        let out = m.o.lab.exec(
            ns,
            &[
                "ss",
                "-Htn",
                "state",
                "established",
                &format!("( dport = :{port} )"),
            ],
        );
        out.lines().count()
    };
    eprintln!(
        "upstream connections after the warm-up: nginx pair {} (to :8443), meshwork pair {} (to :4143)",
        conns(&client_ns, "8443"),
        conns(&client_ns, "4143"),
    );
    for n in ["nginx-server", "nginx-client"] {
        let log = std::fs::read_to_string(m.o.lab.dir().join(MARK).join(n).join("error.log"))
            .unwrap_or_default();
        if !log.is_empty() {
            eprintln!(
                "{n} error.log:\n{}",
                log.lines().take(5).collect::<Vec<_>>().join("\n")
            );
        }
    }
    // rate → path → [(oha's summary, CPU ms per request, of which system)]
    type Runs<'a> = BTreeMap<u32, BTreeMap<&'a str, Vec<(Value, f64, f64)>>>;
    let mut results: Runs = BTreeMap::new();
    for rate in rates() {
        for _ in 0..rounds {
            for p in &paths {
                let cpu0 = pair_cpu(&p.pids);
                let r = oha(&client_ns, &p.url, p.host, secs, Some(rate), 64);
                let cpu1 = pair_cpu(&p.pids);
                let done = r["summary"]["requestsPerSec"].as_f64().unwrap()
                    * r["summary"]["total"].as_f64().unwrap();
                let per_req = |secs: f64| secs * 1e3 / done.max(1.0);
                let sys_ms_per_req = per_req(cpu1.1 - cpu0.1);
                let cpu_ms_per_req = per_req(cpu1.0 - cpu0.0) + sys_ms_per_req;
                eprintln!(
                    "{rate:>6} rps {:<9} ok {:.4} p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms; {cpu_ms_per_req:.4} CPU ms/req ({sys_ms_per_req:.4} system)",
                    p.name,
                    r["summary"]["successRate"].as_f64().unwrap_or(0.0),
                    ms(&r, "p50"),
                    ms(&r, "p99"),
                    ms(&r, "p99.9"),
                    r["summary"]["slowest"].as_f64().unwrap_or(f64::NAN) * 1e3,
                );
                results
                    .entry(rate)
                    .or_default()
                    .entry(p.name)
                    .or_default()
                    .push((r, cpu_ms_per_req, sys_ms_per_req));
            }
        }
    }
    let mut max_rps = BTreeMap::new();
    let mut per_request = BTreeMap::new();
    for p in &paths {
        // MESHWORK_BENCH_PERF=<file>: a perf profile of the meshwork pair at full load.
        let perf = std::env::var("MESHWORK_BENCH_PERF")
            .ok()
            .filter(|_| p.name == "meshwork")
            .map(|out| {
                let pids = pid_list(&proxies);
                Command::new("perf")
                    .args([
                        // DWARF unwinding: the release build has no frame pointers.
                        "record",
                        "-F",
                        "499",
                        "--call-graph",
                        "dwarf,16384",
                        "-o",
                        &out,
                        "-p",
                        &pids,
                        "--",
                        "sleep",
                    ])
                    .arg(secs.to_string())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            });
        // The pair's system calls and context switches over the same window: per request,
        // they say what the kernel's share of the CPU figures is made of, noise or not.
        let stat = (!p.pids.is_empty()).then(|| {
            let pids = pid_list(&p.pids);
            Command::new("perf")
                .args([
                    "stat",
                    "-x",
                    ",",
                    "-e",
                    "raw_syscalls:sys_enter,context-switches",
                ])
                .args(["-p", &pids, "--", "sleep"])
                .arg(secs.to_string())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("perf (scripts/setup.sh --bench installs it)")
        });
        let r = oha(&client_ns, &p.url, p.host, secs, None, 16);
        if let Some(mut perf) = perf {
            let _ = perf.wait();
        }
        if let Some(stat) = stat {
            let out = stat.wait_with_output().unwrap();
            let done = r["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0)
                * r["summary"]["total"].as_f64().unwrap_or(0.0);
            let count = |event: &str| {
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .find(|l| l.contains(event))
                    .and_then(|l| l.split(',').next()?.parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
            };
            let per = (
                count("raw_syscalls:sys_enter") / done.max(1.0),
                count("context-switches") / done.max(1.0),
            );
            per_request.insert(p.name, per);
        }
        max_rps.insert(
            p.name,
            r["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        );
    }
    let peak_rss: Vec<(String, f64)> = proxies
        .iter()
        .map(|p| (format!("meshwork {p}"), status_mb(*p, "VmHWM:")))
        .chain(
            nginx_pair
                .iter()
                .map(|p| (format!("nginx {p}"), status_mb(*p, "VmHWM:"))),
        )
        .collect();

    // The median run of each (rate, path) by p99; added latency is over direct.
    println!("\n| rate | path | success | p50 ms | p99 ms | p99.9 ms | max ms | added p50 / p99 / p99.9 / max ms | CPU ms/req (pair) | of which system |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (rate, by_path) in &results {
        let pick = |runs: &Vec<(Value, f64, f64)>| {
            let mut v: Vec<&(Value, f64, f64)> = runs.iter().collect();
            v.sort_by(|a, b| ms(&a.0, "p99").total_cmp(&ms(&b.0, "p99")));
            v[v.len() / 2].clone()
        };
        let direct = pick(&by_path["direct"]);
        let slowest = |v: &Value| v["summary"]["slowest"].as_f64().unwrap_or(f64::NAN) * 1e3;
        for name in ["direct", "meshwork", "nginx"] {
            let (r, cpu, sys) = pick(&by_path[name]);
            let added = if name == "direct" {
                "—".to_string()
            } else {
                format!(
                    "+{:.3} / +{:.3} / +{:.3} / +{:.3}",
                    ms(&r, "p50") - ms(&direct.0, "p50"),
                    ms(&r, "p99") - ms(&direct.0, "p99"),
                    ms(&r, "p99.9") - ms(&direct.0, "p99.9"),
                    slowest(&r) - slowest(&direct.0),
                )
            };
            println!(
                "| {rate} | {name} | {:.4} | {:.3} | {:.3} | {:.3} | {:.3} | {added} | {} | {} |",
                r["summary"]["successRate"].as_f64().unwrap_or(0.0),
                ms(&r, "p50"),
                ms(&r, "p99"),
                ms(&r, "p99.9"),
                slowest(&r),
                if name == "direct" {
                    "—".into()
                } else {
                    format!("{cpu:.4}")
                },
                if name == "direct" {
                    "—".into()
                } else {
                    format!("{sys:.4}")
                },
            );
        }
    }
    println!("\nmax rps at 16 connections: {max_rps:?}");
    for (name, (sys, cs)) in &per_request {
        println!("{name} pair per request at the maximum: {sys:.1} system calls, {cs:.2} context switches");
    }
    if let (Some(mw), Some(ng)) = (max_rps.get("meshwork"), max_rps.get("nginx")) {
        println!("meshwork pair / nginx pair throughput: {:.2}x", mw / ng);
    }
    println!("RSS idle (MB): {idle_rss:?}");
    println!("RSS idle (MB; anonymous, file-backed, PSS): {idle_split:?}");
    println!("RSS peak (MB): {peak_rss:?}");

    // One bulk download through each path (curl from the client pod, rounds interleaved):
    // what a single stream carries when the HTTP/2 windows (`proxy/src/accept.rs`), not the
    // request rate, bound it; and the pair's CPU per MiB.
    let mut bulk_runs: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for _ in 0..3 {
        for p in &paths {
            let url = format!("{}bulk", p.url);
            let mut args = vec![
                "curl",
                "-sS",
                "--fail",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download} %{speed_download}",
            ];
            let host = p.host.map(|h| format!("Host: {h}"));
            if let Some(h) = &host {
                args.extend(["-H", h.as_str()]);
            }
            args.push(&url);
            let cpu0 = pair_cpu(&p.pids);
            let out = m.o.lab.exec(&client_ns, &args);
            let cpu1 = pair_cpu(&p.pids);
            let mut f = out.split_whitespace().map(|v| v.parse::<f64>().unwrap());
            let (size, speed) = (f.next().unwrap(), f.next().unwrap());
            assert_eq!(size as u64, bulk_mb << 20, "{}: a short download", p.name);
            let cpu_ms_per_mib = (cpu1.0 + cpu1.1 - cpu0.0 - cpu0.1) * 1e3 / bulk_mb as f64;
            eprintln!(
                "bulk {:<9} {:.0} MiB/s; {cpu_ms_per_mib:.2} CPU ms/MiB",
                p.name,
                speed / f64::from(1 << 20)
            );
            bulk_runs
                .entry(p.name)
                .or_default()
                .push((speed / f64::from(1 << 20), cpu_ms_per_mib));
        }
    }
    println!("\n| bulk download of {bulk_mb} MiB | MiB/s (median of 3) | CPU ms per MiB (pair) |");
    println!("|---|---|---|");
    for name in ["direct", "meshwork", "nginx"] {
        let mut v = bulk_runs[name].clone();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (speed, cpu) = v[v.len() / 2];
        let cpu = if name == "direct" {
            "—".into()
        } else {
            format!("{cpu:.2}")
        };
        println!("| {name} | {speed:.0} | {cpu} |");
    }
}
