//! The UDP query path on arbitrary bytes: the fast-path recogniser, the full decode and the
//! zone answer must never panic; a reply always carries the query's id, and a fast-path
//! packet's cached answer stamps back to exactly what the full path would send.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshwork_dns::{
    server::{decide_in, Decided},
    wire,
    zone::{EndpointView, ServiceKind, ServiceView, Zone, ZoneConfig},
};

fn zone() -> &'static Zone {
    static Z: OnceLock<Zone> = OnceLock::new();
    Z.get_or_init(|| {
        let cfg = ZoneConfig::new("cluster.local", 5).expect("zone");
        let svcs = vec![
            ServiceView {
                namespace: "default".into(),
                name: "web".into(),
                kind: ServiceKind::ClusterIp(vec!["10.96.0.10".parse().expect("ip"), "fd00::10".parse().expect("ip")]),
                ports: vec![("http".into(), "tcp".into(), 80)],
            },
            ServiceView {
                namespace: "default".into(),
                name: "db".into(),
                kind: ServiceKind::Headless(vec![EndpointView {
                    addresses: vec!["10.244.1.5".parse().expect("ip")],
                    hostname: Some("db-0".into()),
                    ports: vec![("pg".into(), "tcp".into(), 5432)],
                }]),
                ports: vec![],
            },
            ServiceView {
                namespace: "default".into(),
                name: "ext".into(),
                kind: ServiceKind::ExternalName("example.org".into()),
                ports: vec![],
            },
        ];
        Zone::build(cfg, &svcs, 1)
    })
}

fuzz_target!(|pkt: &[u8]| {
    let quick = wire::quick(pkt, 1232);
    match decide_in(zone(), pkt, None) {
        Decided::Reply(resp, cacheable) => {
            assert!(resp.len() >= 12);
            assert_eq!(&resp[..2], &pkt[..2], "reply carries the query id");
            if let (true, Some(q)) = (cacheable, quick) {
                let mut out = Vec::new();
                wire::stamp(&resp, pkt, q.question_end, &mut out);
                assert_eq!(out, resp, "stamping a fresh answer with its own query is a no-op");
            }
        }
        Decided::Forward(..) | Decided::Chase(..) | Decided::Drop => {}
    }
});
