//! `dig` against the `meshwork-dns` binary, which watches a real (bundled) API server: every
//! record kind of the spec, updates within 1 s, not-ready endpoints left out, forwarding to
//! upstreams the test starts on loopback (never the machine's resolver), TCP, truncation,
//! and malformed packets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: panics are the report"
)]

use std::{
    io::BufRead,
    net::{SocketAddr, UdpSocket},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{rdata::SOA, Name, RData, Record, RecordType},
    serialize::binary::BinDecodable,
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    api::{DeleteParams, Patch, PatchParams, PostParams},
    Api,
};
use meshwork_orchestrator::server::{self, ServerConfig};
use meshwork_orchestrator_store::{AnyStore, SqliteStore, SqliteSync};
use serde_json::json;

struct Dns {
    child: Child,
    port: u16,
    admin: SocketAddr,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dns {
    fn start(kubeconfig: &std::path::Path, extra: &[String]) -> Dns {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshwork-dns"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--udp-workers",
                "2",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("meshwork-dns runs");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a first line").unwrap();
        let addr: SocketAddr = first
            .strip_prefix("DNS listening on ")
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected: {first}"))
            .parse()
            .unwrap();
        let second = lines.next().expect("a second line").unwrap();
        let admin: SocketAddr = second
            .strip_prefix("admin on http://")
            .unwrap_or_else(|| panic!("unexpected: {second}"))
            .parse()
            .unwrap();
        std::thread::spawn(move || lines.for_each(drop));
        Dns {
            child,
            port: addr.port(),
            admin,
        }
    }

    fn dig(&self, args: &str) -> String {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "+time=2",
                "+tries=1",
            ])
            .args(args.split_whitespace())
            .output()
            .expect("dig (bind9-dnsutils; scripts/setup.sh installs it)");
        // Runs of blanks as one space, so expectations read like dig's columns.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn short(&self, args: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .dig(&format!("+short {args}"))
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    /// GET on the admin listener: (status line, body).
    fn admin(&self, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.admin).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            head.lines().next().unwrap_or_default().to_string(),
            body.to_string(),
        )
    }

    fn raw(&self, pkt: &[u8]) -> Option<Vec<u8>> {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s.send_to(pkt, ("127.0.0.1", self.port)).unwrap();
        let mut buf = [0u8; 4096];
        s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    }
}

/// A loopback upstream: `<name>` A → `addr`, anything else NXDOMAIN with an SOA; counts queries.
fn upstream(answers: &'static [(&'static str, &'static str)]) -> (SocketAddr, Arc<AtomicUsize>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let Ok(q) = Message::from_bytes(&buf[..n]) else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let mut r = Message::new();
            r.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_recursion_available(true);
            r.add_queries(q.queries().iter().cloned());
            let name = q.queries()[0].name().to_ascii().to_lowercase();
            match answers
                .iter()
                .find(|(n, _)| name.trim_end_matches('.') == *n)
            {
                Some((_, ip)) if q.queries()[0].query_type() == RecordType::A => {
                    r.add_answer(Record::from_rdata(
                        q.queries()[0].name().clone(),
                        60,
                        RData::A(ip.parse::<std::net::Ipv4Addr>().unwrap().into()),
                    ));
                }
                _ => {
                    r.set_response_code(ResponseCode::NXDomain);
                    let soa = SOA::new(
                        Name::from_ascii("ns.test.").unwrap(),
                        Name::from_ascii("h.test.").unwrap(),
                        1,
                        60,
                        60,
                        60,
                        30,
                    );
                    r.add_name_server(Record::from_rdata(
                        Name::from_ascii("test.").unwrap(),
                        30,
                        RData::SOA(soa),
                    ));
                }
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), peer);
        }
    });
    (addr, count)
}

fn within_1s(mut ok: impl FnMut() -> bool, what: &str) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "not within 1 s: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

#[test]
fn dig_every_record_kind_updates_and_forwarding() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::Builder::new().prefix("mwdns-").tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("state.db"), SqliteSync::Normal).unwrap();
    let mut cfg = ServerConfig::new(dir.path().to_path_buf());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let api = rt
        .block_on(server::start_with(cfg, AnyStore::Sqlite(store)))
        .unwrap();
    let client = rt
        .block_on(meshwork_kube_watch::client(Some(&api.admin_kubeconfig)))
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    rt.block_on(async {
        services.create(&pp, &svc(json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.10",
            "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}, {"port": 8080, "name": "x"}]}}))).await.unwrap();
        services.create(&pp, &svc(json!({"metadata": {"name": "v6"}, "spec": {"clusterIP": "fd00::10", "clusterIPs": ["fd00::10"], "ports": [{"port": 80}]}}))).await.unwrap();
        services.create(&pp, &svc(json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}))).await.unwrap();
        services.create(&pp, &svc(json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "example.org"}}))).await.unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "db-abc", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.7"], "hostname": "db-2", "conditions": {"ready": false}}
            ]})).unwrap();
        slices.create(&pp, &slice).await.unwrap();
    });

    let (up, up_count) = upstream(&[("example.org", "203.0.113.7")]);
    let (stub, stub_count) = upstream(&[("host.corp.test", "203.0.113.9")]);
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // closed at once
    let dns = Dns::start(
        &api.admin_kubeconfig,
        &[
            "--upstream".into(),
            up.to_string(),
            "--stub".into(),
            format!("corp.test={stub}"),
            "--stub".into(),
            format!("dead.test={dead}"),
            "--dns-ip".into(),
            "10.96.0.10".into(),
        ],
    );

    // ClusterIP: A, AAAA NODATA, case-insensitive, SRV for named ports only, PTR.
    assert_eq!(dns.short("web.default.svc.cluster.local A"), ["10.96.0.10"]);
    assert_eq!(dns.short("WeB.DeFault.SVC.Cluster.Local A"), ["10.96.0.10"]);
    let nodata = dns.dig("web.default.svc.cluster.local AAAA");
    assert!(
        nodata.contains("status: NOERROR")
            && nodata.contains("ANSWER: 0")
            && nodata.contains("AUTHORITY: 1"),
        "{nodata}"
    );
    assert!(
        nodata.contains("SOA ns.dns.cluster.local. hostmaster.cluster.local."),
        "{nodata}"
    );
    assert!(nodata.contains("flags: qr aa rd ra"), "{nodata}");
    assert_eq!(
        dns.short("_http._tcp.web.default.svc.cluster.local SRV"),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        dns.short("_dns._udp.web.default.svc.cluster.local SRV"),
        ["0 100 53 web.default.svc.cluster.local."]
    );
    let srv = dns.dig("_http._tcp.web.default.svc.cluster.local SRV");
    assert!(
        srv.contains("ADDITIONAL SECTION")
            && srv.contains("web.default.svc.cluster.local. 5 IN A 10.96.0.10"),
        "{srv}"
    );
    assert_eq!(
        dns.short("-x 10.96.0.10"),
        ["web.default.svc.cluster.local."]
    );
    // IPv6: AAAA and the nibble-form PTR.
    assert_eq!(dns.short("v6.default.svc.cluster.local AAAA"), ["fd00::10"]);
    assert_eq!(dns.short("-x fd00::10"), ["v6.default.svc.cluster.local."]);
    // Headless: ready endpoints only, hostnames, SRV per endpoint, PTR per endpoint.
    assert_eq!(
        dns.short("db.default.svc.cluster.local A"),
        ["10.244.1.5", "10.244.1.6"]
    );
    assert_eq!(
        dns.short("db-0.db.default.svc.cluster.local A"),
        ["10.244.1.5"]
    );
    assert_eq!(
        dns.short("10-244-1-6.db.default.svc.cluster.local A"),
        ["10.244.1.6"]
    );
    assert!(
        dns.dig("db-2.db.default.svc.cluster.local A")
            .contains("status: NXDOMAIN"),
        "not-ready endpoint has no name"
    );
    assert_eq!(
        dns.short("_pg._tcp.db.default.svc.cluster.local SRV"),
        [
            "0 50 5432 10-244-1-6.db.default.svc.cluster.local.",
            "0 50 5432 db-0.db.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        dns.short("-x 10.244.1.5"),
        ["db-0.db.default.svc.cluster.local."]
    );
    // ExternalName: the CNAME, followed through the forwarder (stub resolvers do not chase).
    let cname = dns.dig("ext.default.svc.cluster.local A");
    assert!(
        cname.contains("ext.default.svc.cluster.local. 5 IN CNAME example.org."),
        "{cname}"
    );
    assert!(
        cname.contains("example.org. 60 IN A 203.0.113.7"),
        "{cname}"
    );
    // Spec version, apex, pods, NXDOMAIN with the SOA minimum.
    assert_eq!(dns.short("dns-version.cluster.local TXT"), ["\"1.1.0\""]);
    assert_eq!(dns.short("ns.dns.cluster.local A"), ["10.96.0.10"]);
    assert_eq!(
        dns.short("10-244-1-5.default.pod.cluster.local A"),
        ["10.244.1.5"]
    );
    let nx = dns.dig("nope.default.svc.cluster.local A");
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("86400 5"),
        "{nx}"
    );
    assert!(
        dns.dig("default.svc.cluster.local A")
            .contains("status: NOERROR"),
        "an empty non-terminal is NODATA"
    );
    assert!(
        dns.dig("other.pod.cluster.local A")
            .contains("status: NOERROR"),
        "pod names live below <ns>.pod"
    );
    let rev = dns.dig("10.0.96.10.in-addr.arpa A");
    assert!(
        rev.contains("status: NOERROR") && rev.contains("in-addr.arpa. 5 IN SOA"),
        "reverse NODATA carries the reverse apex SOA: {rev}"
    );

    // Updates reach answers within 1 s.
    rt.block_on(
        slices.patch(
            "db-abc",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
        {"op": "replace", "path": "/endpoints/1/conditions/ready", "value": false}]))
                .unwrap(),
            ),
        ),
    )
    .unwrap();
    within_1s(
        || dns.short("db.default.svc.cluster.local A") == ["10.244.1.5"],
        "endpoint turned not ready",
    );
    rt.block_on(services.create(&pp, &svc(json!({"metadata": {"name": "late"}, "spec": {"clusterIP": "10.96.0.99", "ports": [{"port": 80}]}})))).unwrap();
    within_1s(
        || dns.short("late.default.svc.cluster.local A") == ["10.96.0.99"],
        "new service",
    );
    rt.block_on(services.delete("late", &DeleteParams::default()))
        .unwrap();
    within_1s(
        || {
            dns.dig("late.default.svc.cluster.local A")
                .contains("NXDOMAIN")
        },
        "deleted service",
    );

    // Forwarding: upstream answers, then the cache (positive and negative); stub domains;
    // a dead upstream is a quick SERVFAIL.
    assert_eq!(dns.short("example.org A"), ["203.0.113.7"]);
    let before = up_count.load(Ordering::SeqCst);
    assert_eq!(dns.short("example.org A"), ["203.0.113.7"]);
    assert_eq!(
        up_count.load(Ordering::SeqCst),
        before,
        "second answer from the cache"
    );
    let upper = dns.dig("EXAMPLE.ORG A");
    assert!(
        upper.contains("EXAMPLE.ORG. ")
            && upper.contains("203.0.113.7")
            && !upper.contains("mismatch"),
        "cached answers carry the asker's question: {upper}"
    );
    let plain = dns.dig("+noedns example.org A");
    assert!(
        !plain.contains("OPT PSEUDOSECTION") && plain.contains("203.0.113.7"),
        "no OPT for a query without EDNS: {plain}"
    );
    assert!(dns.dig("missing.test A").contains("NXDOMAIN"));
    let before = up_count.load(Ordering::SeqCst);
    assert!(dns.dig("missing.test A").contains("NXDOMAIN"));
    assert_eq!(
        up_count.load(Ordering::SeqCst),
        before,
        "negative answer from the cache"
    );
    assert_eq!(dns.short("host.corp.test A"), ["203.0.113.9"]);
    assert_eq!(stub_count.load(Ordering::SeqCst), 1);
    let t = Instant::now();
    assert!(dns.dig("x.dead.test A").contains("status: SERVFAIL"));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "SERVFAIL took {:?}",
        t.elapsed()
    );

    // TCP, and truncation for a large headless answer over UDP without EDNS.
    assert_eq!(
        dns.short("+tcp web.default.svc.cluster.local A"),
        ["10.96.0.10"]
    );
    rt.block_on(async {
        services.create(&pp, &svc(json!({"metadata": {"name": "big"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}))).await.unwrap();
        let eps: Vec<_> = (1..=100).map(|i| json!({"addresses": [format!("10.244.9.{i}")]})).collect();
        let slice: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "big-1", "labels": {"kubernetes.io/service-name": "big"}}, "addressType": "IPv4", "endpoints": eps})).unwrap();
        slices.create(&pp, &slice).await.unwrap();
    });
    within_1s(
        || dns.short("+tcp big.default.svc.cluster.local A").len() == 100,
        "100 endpoints over TCP",
    );
    let udp = dns.dig("+noedns +ignore big.default.svc.cluster.local A");
    assert!(udp.contains(" tc") && udp.contains("ANSWER: 0"), "{udp}");
    let edns = dns.dig("+bufsize=4096 +ignore big.default.svc.cluster.local A");
    assert!(edns.contains(" tc") && edns.contains("udp: 1232"), "{edns}");
    assert_eq!(
        dns.short("big.default.svc.cluster.local A").len(),
        100,
        "dig retries over TCP"
    );

    // Malformed packets: FORMERR, NOTIMP, dropped responses, and the server keeps answering.
    let q = |opcode: u8, qd: u8| {
        let mut p = vec![0xbe, 0xef, opcode << 3, 0, 0, qd, 0, 0, 0, 0, 0, 0];
        for _ in 0..qd {
            p.extend_from_slice(&[3, b'w', b'e', b'b', 0, 0, 1, 0, 1]);
        }
        p
    };
    let rcode = |r: Option<Vec<u8>>| r.map(|r| (r[0], r[1], r[3] & 0x0f));
    assert_eq!(
        rcode(dns.raw(&[0xbe, 0xef, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, 1])),
        Some((0xbe, 0xef, 1)),
        "truncated question: FORMERR"
    );
    assert_eq!(
        rcode(dns.raw(&q(2, 1))),
        Some((0xbe, 0xef, 4)),
        "STATUS opcode: NOTIMP"
    );
    assert_eq!(
        rcode(dns.raw(&q(0, 2))),
        Some((0xbe, 0xef, 1)),
        "two questions: FORMERR"
    );
    assert_eq!(dns.raw(&[1, 2, 3]), None, "no header: dropped");
    let mut resp = q(0, 1);
    resp[2] |= 0x80;
    assert_eq!(dns.raw(&resp), None, "responses are not answered");
    assert_eq!(
        rcode(dns.raw(&vec![0xab; 3000])).map(|r| r.2),
        None,
        "garbage with QR set: dropped"
    );
    // The zone cache is per UDP worker (SO_REUSEPORT spreads queries by source port) and
    // cleared by every zone change: more identical queries than workers, with no change in
    // between, must reach some worker twice (the suite once saw no hit with fewer).
    for _ in 0..9 {
        assert_eq!(dns.short("web.default.svc.cluster.local A"), ["10.96.0.10"]);
    }

    // Health, readiness and metrics (queries by type, rcodes, latency, caches, forwards).
    assert!(dns.admin("/health").0.contains("200"));
    assert!(dns.admin("/ready").0.contains("200"));
    let (status, metrics) = dns.admin("/metrics");
    assert!(status.contains("200"), "{status}");
    for needle in [
        "meshwork_dns_requests_total{proto=\"Udp\",qtype=\"SRV\"}",
        "meshwork_dns_requests_total{proto=\"Tcp\",qtype=\"A\"}",
        "meshwork_dns_responses_total{rcode=\"NXDOMAIN\"}",
        "meshwork_dns_responses_total{rcode=\"SERVFAIL\"}",
        "meshwork_dns_request_duration_seconds_bucket",
        "meshwork_dns_cache_hits_total{cache=\"Zone\"}",
        "meshwork_dns_cache_hits_total{cache=\"Forward\"}",
        "meshwork_dns_forward_requests_total",
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
    drop(dns);
    drop(api);
}
