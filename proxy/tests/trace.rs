//! Spans to an OpenTelemetry collector (`otlp.rs`), through an outbound and an inbound proxy
//! over mutual TLS: a request with a sampled `traceparent` gets a CLIENT span from the
//! client's proxy and a SERVER span from the server's, chained (the app's parent is the
//! server proxy's span, whose parent is the client proxy's, whose parent is the caller's), in
//! OTLP/HTTP JSON that the OpenTelemetry protobuf types read as an ExportTraceServiceRequest;
//! an unsampled request, or one without a trace, gets no span and keeps its header; spans
//! leave in batches of at most 256, and a burst past the queue is dropped and counted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::BodyExt;
use meshwork_proxy::{
    drain::Watch,
    inbound::{self, Inbound},
    metrics::Metrics,
    otlp::Exporter,
    outbound::{discover::Static, Outbound},
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use support::{test_ca, Creds};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A collector's OTLP/HTTP receiver on loopback: the bodies POSTed to /v1/traces.
async fn collector() -> (SocketAddr, Arc<Mutex<Vec<(String, Bytes)>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    support::serve_http1(l, move |req: http::Request<hyper::body::Incoming>| {
        let g = g.clone();
        async move {
            let what = format!(
                "{} {} {}",
                req.method(),
                req.uri().path(),
                req.headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
            );
            let body = req.into_body().collect().await?.to_bytes();
            g.lock().unwrap().push((what, body));
            Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                Bytes::from_static(b"{}"),
            )))
        }
    });
    (addr, got)
}

/// An app answering with the `traceparent` it received ("none").
async fn app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    support::serve_http1(l, |req: http::Request<hyper::body::Incoming>| async move {
        let tp = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            Bytes::from(tp),
        )))
    });
    addr
}

/// A GET through the outbound proxy with `traceparent` (if any): the app's answer.
async fn get(proxy: SocketAddr, traceparent: Option<&str>) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let tp = traceparent.map_or(String::new(), |t| {
        format!("traceparent: {t}\r\ntracestate: vendor=abc\r\n")
    });
    let req = format!(
        "GET http://web.default.svc.cluster.local:80/books/7 HTTP/1.1\r\n\
         Host: web.default.svc.cluster.local:80\r\n{tp}Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_become_chained_spans_at_the_collector() {
    let ca = test_ca();
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let (collector_addr, got) = collector().await;
    let app_addr = app().await;
    let exporter = |m: &Metrics, side: &str| {
        Exporter::spawn(
            &collector_addr.to_string(),
            vec![("service.name".into(), format!("meshwork-proxy-{side}"))],
            m.otlp.clone(),
        )
    };

    let server_metrics = Metrics::new();
    let (l, inbound_addr) = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    };
    let inbound_cfg = inbound::Config {
        tracer: Some(exporter(&server_metrics, "server")),
        ..Default::default()
    };
    tokio::spawn(Inbound::with(inbound_cfg, web, server_metrics.clone()).serve(l, Watch::never()));
    let mut d = Static::default();
    d.parse_entry(&format!(
        "web.default.svc.cluster.local:80={app_addr}@{}@spiffe://cluster.local/ns/default/sa/web",
        inbound_addr.port()
    ))
    .unwrap();
    let client_metrics = Metrics::new();
    let outbound_cfg = meshwork_proxy::outbound::Config {
        tracer: Some(exporter(&client_metrics, "client")),
        ..Default::default()
    };
    let resolver = meshwork_proxy::outbound::resolve::Resolver::fixed(d, client_metrics.clone());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound_addr = l.local_addr().unwrap();
    tokio::spawn(
        Outbound::with(outbound_cfg, client, resolver, client_metrics.clone())
            .serve(l, Watch::never()),
    );

    // Not traced: no trace, or one not sampled (flags 00): the header passes as it came.
    assert_eq!(get(outbound_addr, None).await, "none");
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    assert_eq!(get(outbound_addr, Some(unsampled)).await, unsampled);

    // Sampled: the app's parent is a new span of the same trace.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let seen = get(outbound_addr, Some(&format!("00-{trace}-{caller_span}-01"))).await;
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", trace, "01"),
        "{seen}"
    );
    let app_parent = parts[2].to_string();
    assert_ne!(
        app_parent, caller_span,
        "the app's parent is the caller's own span"
    );

    // Both proxies export within their flush interval (2 s).
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let bodies = got.lock().unwrap().clone();
        let mut spans = Vec::new();
        for (what, body) in &bodies {
            assert_eq!(what, "POST /v1/traces application/json");
            let req: ExportTraceServiceRequest = serde_json::from_slice(body).unwrap_or_else(|e| {
                panic!(
                    "not an OTLP JSON ExportTraceServiceRequest ({e}): {}",
                    String::from_utf8_lossy(body)
                )
            });
            for rs in req.resource_spans {
                let service = rs
                    .resource
                    .unwrap()
                    .attributes
                    .iter()
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.clone())
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        spans.push((service.clone(), s));
                    }
                }
            }
        }
        // The exporters count a batch once the collector's answer is read, which may come
        // just after the collector has the spans: wait for both.
        let exported = |m: &meshwork_proxy::metrics::Metrics| {
            support::metric(m, "meshwork_proxy_trace_spans_exported_total") == Some(1)
        };
        let counted = exported(&client_metrics) && exported(&server_metrics);
        if (spans.len() >= 2 && counted) || tokio::time::Instant::now() > until {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        spans.len(),
        2,
        "one span per proxy for the sampled request only: {spans:?}"
    );
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let (client_span, server_span) = {
        let c = spans
            .iter()
            .find(|(svc, _)| svc.contains("client"))
            .expect("the client proxy's span");
        let s = spans
            .iter()
            .find(|(svc, _)| svc.contains("server"))
            .expect("the server proxy's span");
        (&c.1, &s.1)
    };
    for s in [client_span, server_span] {
        assert_eq!(hex(&s.trace_id), trace);
        assert_eq!(s.trace_state, "vendor=abc", "the tracestate as it came");
        assert!(
            s.attributes.iter().any(|a| a.key == "server.address"
                && format!("{:?}", a.value).contains("web.default.svc.cluster.local")),
            "{s:?}"
        );
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0);
        assert!(
            s.attributes
                .iter()
                .any(|a| a.key == "http.response.status_code"
                    && format!("{:?}", a.value).contains("200")),
            "{s:?}"
        );
    }
    // SPAN_KIND_CLIENT = 3, SPAN_KIND_SERVER = 2; the chain caller → client proxy → server
    // proxy → app.
    assert_eq!((client_span.kind, server_span.kind), (3, 2));
    assert_eq!(hex(&client_span.parent_span_id), caller_span);
    assert_eq!(hex(&server_span.parent_span_id), hex(&client_span.span_id));
    assert_eq!(hex(&server_span.span_id), app_parent);
    assert!(
        server_span
            .attributes
            .iter()
            .any(|a| a.key == "meshwork.peer.identity"
                && format!("{:?}", a.value).contains("sa/client")),
        "the server proxy's span names the verified client: {server_span:?}"
    );
    assert_eq!(
        support::metric(&client_metrics, "meshwork_proxy_trace_spans_exported_total"),
        Some(1)
    );
    assert_eq!(
        support::metric(&server_metrics, "meshwork_proxy_trace_spans_exported_total"),
        Some(1)
    );
}

/// A collector that is not there costs requests nothing: spans are dropped and counted.
#[tokio::test]
async fn spans_for_an_absent_collector_are_dropped_and_counted() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = l.local_addr().unwrap();
    drop(l);
    let m = Metrics::new();
    let e = Exporter::spawn(&gone.to_string(), vec![], m.otlp.clone());
    let mut h = http::HeaderMap::new();
    h.insert(
        "traceparent",
        http::HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    let t = e.start(&mut h).expect("a sampled request is traced");
    assert_ne!(
        h["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "the proxy's span replaces the parent"
    );
    let o = meshwork_proxy::metrics::Observed {
        direction: meshwork_proxy::metrics::Direction::Outbound,
        authority: "web:80",
        route: None,
        routed: false,
        method: "GET",
        path: "/",
        status: Some(http::StatusCode::OK),
        peer: "",
        elapsed: Duration::from_millis(1),
        trace_id: "",
    };
    e.finish(t, &o);
    let dropped = || support::metric(&m, "meshwork_proxy_trace_spans_dropped_total").unwrap_or(0);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while dropped() == 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "the span was never counted as dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dropped(), 1);
    assert_eq!(
        support::metric(&m, "meshwork_proxy_trace_export_failures_total"),
        Some(1)
    );
}

/// Batches: a burst of spans leaves in exports of at most `BATCH`; past the queue's bound,
/// spans are dropped and counted, never waited for.
// One thread: the exporter's task cannot take spans off the queue while the burst is sent.
#[tokio::test]
async fn spans_leave_in_bounded_batches_and_a_full_queue_drops() {
    use meshwork_proxy::otlp::{Span, BATCH, QUEUE};
    let (addr, got) = collector().await;
    let m = Metrics::new();
    let e = Exporter::spawn(&addr.to_string(), vec![], m.otlp.clone());
    let span = |i: u8| Span {
        trace_id: [i.max(1); 16],
        span_id: [i.max(1); 8],
        parent_id: [1; 8],
        direction: meshwork_proxy::metrics::Direction::Outbound,
        method: "GET".into(),
        path: "/".into(),
        route: None,
        authority: "web:80".into(),
        status: Some(200),
        peer: String::new(),
        trace_state: String::new(),
        start: std::time::SystemTime::now(),
        end: std::time::SystemTime::now(),
    };
    // More than the queue holds, at once: the excess is dropped, the rest exported.
    let sent = QUEUE + 2 * BATCH;
    for i in 0..sent {
        e.record(span((i % 250) as u8));
    }
    let exported = || support::metric(&m, "meshwork_proxy_trace_spans_exported_total").unwrap_or(0);
    let dropped = || support::metric(&m, "meshwork_proxy_trace_spans_dropped_total").unwrap_or(0);
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while exported() + dropped() < sent as i64 {
        assert!(
            tokio::time::Instant::now() < until,
            "{} exported, {} dropped of {sent}",
            exported(),
            dropped()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dropped(), 2 * BATCH as i64);
    assert_eq!(exported(), QUEUE as i64);
    let bodies = got.lock().unwrap().clone();
    let mut total = 0;
    for (_, body) in &bodies {
        let req: ExportTraceServiceRequest = serde_json::from_slice(body).unwrap();
        let n: usize = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        assert!(n <= BATCH, "an export of {n} spans");
        total += n;
    }
    assert_eq!(total as i64, exported());
    assert_eq!(bodies.len(), QUEUE / BATCH, "full batches");
}
