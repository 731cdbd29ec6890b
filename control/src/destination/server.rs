//! The discovery streams: one task per `Destination.Get`, which answers from the reflectors'
//! stores and answers again when something its answer was read from changes ([`Deps`]): the
//! Service the authority names or its slices, one of the pods its endpoints are, or the pod
//! owning the address it names. A change elsewhere in the cluster costs a stream a comparison,
//! not a recomputation, and a recomputation reads what it names through the [`super::Index`],
//! not every object of the cluster.

use std::{
    net::IpAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use futures::StreamExt;

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::reflector::Store;
use meshwork_destination_api::pb::{self, destination_server};
use meshwork_service_model::Key;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{resolve, Deps, Naming, Objects, SharedIndex};

/// What changed in the cluster, as the reflectors saw it (`app.rs` sends them).
#[derive(Clone, Debug)]
pub enum Changed {
    /// A Service applied or deleted.
    Service(Key),
    /// An EndpointSlice applied or deleted, with the Service its label names.
    Slice(Option<Key>),
    /// A pod applied or deleted, with its addresses.
    Pod { key: Key, ips: Vec<IpAddr> },
    /// A list completed: what changed meanwhile is not known object by object.
    All,
}

impl Changed {
    /// The change a pod's event is.
    pub fn pod(p: &Pod) -> Option<Changed> {
        let key = p.metadata.namespace.clone().zip(p.metadata.name.clone())?;
        Some(Changed::Pod {
            key,
            ips: super::index::addresses(p),
        })
    }
}

/// The reflectors the service reads and the changes they report.
#[derive(Clone)]
pub struct Server {
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub pods: Store<Pod>,
    /// Over the three stores, kept by the same callbacks that send `changes`.
    pub index: SharedIndex,
    pub changes: broadcast::Sender<Changed>,
    pub naming: Naming,
    pub streams: prometheus_client::metrics::gauge::Gauge,
    /// Answers computed (first ones and recomputations), over all streams.
    pub computed: prometheus_client::metrics::counter::Counter,
    /// Streams open, by caller address: at most [`MAX_STREAMS`] in all and
    /// [`MAX_STREAMS_PER_CALLER`] from one, shared fairly (`fair.rs`).
    pub callers: super::fair::Streams,
}

impl Server {
    fn update(&self, authority: &str) -> (pb::Update, Deps) {
        self.computed.inc();
        let objs = Objects {
            index: &self.index,
            services: &self.services,
            slices: &self.slices,
            pods: &self.pods,
        };
        resolve(authority, &objs, &self.naming)
    }
}

/// Streams open at once, over all callers. Past it, a caller holding less than its share
/// still gets one, ended for it on the caller holding the most (`fair.rs`).
pub const MAX_STREAMS: usize = 4096;

/// Streams open at once from one address (a pod, whose proxy follows at most 1,000
/// authorities, `proxy/src/outbound/resolve.rs`, with room for streams it reset that the
/// agent has not seen end yet).
pub const MAX_STREAMS_PER_CALLER: usize = 1536;

type UpdateStream = Pin<Box<dyn futures::Stream<Item = Result<pb::Update, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl destination_server::Destination for Server {
    type GetStream = UpdateStream;

    async fn get(
        &self,
        req: tonic::Request<pb::GetDestination>,
    ) -> Result<tonic::Response<UpdateStream>, tonic::Status> {
        // The caller's address (its pod's): None only on a transport without one.
        let caller = req.remote_addr().map(|a| a.ip());
        let authority = req.into_inner().authority;
        if !authority.contains(':') || authority.len() > 512 {
            return Err(tonic::Status::invalid_argument(
                "the authority is host:port (a ClusterIP or a Service's DNS name)",
            ));
        }
        // A transport without addresses is one caller.
        let ip = caller.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let held = self
            .callers
            .take(ip)
            .map_err(|e| tonic::Status::resource_exhausted(e.to_string()))?;
        let this = self.clone();
        let (tx, rx) = mpsc::channel(4);
        // Set when the stream was ended for another caller's: after what was sent, the
        // caller hears why (it keeps its last answer, and asks again after a back-off),
        // whatever room the channel has left.
        let preempted = Arc::new(AtomicBool::new(false));
        let why = preempted.clone();
        let ended = move || {
            preempted.store(true, Ordering::Release);
        };
        tokio::spawn(async move {
            // A partial view would tell a proxy that endpoints are gone.
            let ready = async {
                let _ = this.services.wait_until_ready().await;
                let _ = this.slices.wait_until_ready().await;
                let _ = this.pods.wait_until_ready().await;
            };
            // A caller that gave up meanwhile gives its stream (and its quota) back now,
            // not once the stores are ready.
            tokio::select! {
                _ = ready => {}
                _ = tx.closed() => return,
                _ = held.ended() => return ended(),
            }
            this.streams.inc();
            // Subscribed before the first answer is read: a change while it is read is not
            // missed.
            let mut changes = this.changes.subscribe();
            let mut last = None;
            'stream: loop {
                let (u, deps) = this.update(&authority);
                if last.as_ref() != Some(&u) {
                    last = Some(u.clone());
                    // A caller that stopped reading must not keep a stream whose place was
                    // given to another.
                    tokio::select! {
                        sent = tx.send(Ok(u)) => if sent.is_err() {
                            break;
                        },
                        _ = held.ended() => {
                            ended();
                            break;
                        }
                    }
                }
                loop {
                    tokio::select! {
                        c = changes.recv() => match c {
                            Ok(c) if deps.touched_by(&c) => break,
                            Ok(_) => {}
                            // Changes went by unread: any of them may have been ours.
                            Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => break 'stream,
                        },
                        _ = tx.closed() => break 'stream,
                        _ = held.ended() => {
                            ended();
                            break 'stream;
                        }
                    }
                }
                // A burst (a rollout's pods, a relist) answers once, with the last state:
                // whatever else is queued is read by the next answer anyway.
                while !matches!(
                    changes.try_recv(),
                    Err(broadcast::error::TryRecvError::Empty
                        | broadcast::error::TryRecvError::Closed)
                ) {}
            }
            this.streams.dec();
        });
        let reason = futures::stream::once(async move { why.load(Ordering::Acquire) }).filter_map(
            |ended| async move {
                ended.then(|| {
                    Err(tonic::Status::resource_exhausted(
                        "the node's discovery streams are all open: this one was ended for \
                         another caller's, which held fewer",
                    ))
                })
            },
        );
        Ok(tonic::Response::new(Box::pin(
            ReceiverStream::new(rx).chain(reason),
        )))
    }
}

/// Serves the API on the connections of `incoming` (the agent's are mutual TLS:
/// `meshwork_identity::transport::incoming`) until the task is dropped.
pub async fn serve<IO>(
    server: Server,
    incoming: impl futures::Stream<Item = std::io::Result<IO>> + Send + 'static,
) where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    // Streams are long-lived (one per authority a proxy follows: up to 1,000 on its one
    // connection), so no timeout or connection age; but hyper's guard against streams reset by
    // their own errors stays on (tonic turns it off), dead peers are found by pings, and a
    // request (an authority) is small.
    if let Err(e) = tonic::transport::Server::builder()
        // Past the per-caller quota, so that a stream beyond it is refused with the reason
        // (`fair.rs`) rather than left waiting for a slot.
        .max_concurrent_streams(Some(2 * MAX_STREAMS_PER_CALLER as u32))
        .http2_max_local_error_reset_streams(Some(1024))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(
            destination_server::DestinationServer::new(server).max_decoding_message_size(4 << 10),
        )
        .serve_with_incoming(incoming)
        .await
    {
        tracing::error!(error = %e, "destination API stopped");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::time::Duration;

    use kube::runtime::{reflector, watcher};
    use meshwork_destination_api::pb::destination_client::DestinationClient;
    use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
    use serde_json::json;

    use super::*;

    fn slice(service: &str, ips: &[&str]) -> EndpointSlice {
        let eps: Vec<_> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-1"), "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps,
        }))
        .unwrap()
    }

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }))
        .unwrap()
    }

    type Stores = (Store<Service>, Store<EndpointSlice>, Store<Pod>);
    type Writers = (
        reflector::store::Writer<Service>,
        reflector::store::Writer<EndpointSlice>,
        reflector::store::Writer<Pod>,
    );

    /// Empty stores that have not listed yet (an agent just started), and their writers.
    fn unready_stores() -> (Stores, Writers) {
        let (services, sw) = reflector::store::<Service>();
        let (slices, lw) = reflector::store::<EndpointSlice>();
        let (pods, pw) = reflector::store::<Pod>();
        ((services, slices, pods), (sw, lw, pw))
    }

    /// Empty stores that have listed (ready), and their writers.
    fn ready_stores() -> (Stores, Writers) {
        let ((services, slices, pods), (mut sw, mut lw, mut pw)) = unready_stores();
        sw.apply_watcher_event(&watcher::Event::InitDone);
        lw.apply_watcher_event(&watcher::Event::InitDone);
        pw.apply_watcher_event(&watcher::Event::InitDone);
        ((services, slices, pods), (sw, lw, pw))
    }

    /// The service over `stores`, on a loopback port (plaintext), answering as `changes` say
    /// and counting its answers in `computed`.
    async fn serve_on_loopback(
        stores: Stores,
        changes: broadcast::Sender<Changed>,
        computed: Counter,
    ) -> std::net::SocketAddr {
        let callers = super::super::fair::Streams::new(MAX_STREAMS, MAX_STREAMS_PER_CALLER);
        serve_limited(stores, changes, computed, callers).await
    }

    /// [`serve_on_loopback`] with stream limits of the test's own.
    async fn serve_limited(
        (services, slices, pods): Stores,
        changes: broadcast::Sender<Changed>,
        computed: Counter,
        callers: super::super::fair::Streams,
    ) -> std::net::SocketAddr {
        let server = Server {
            services,
            slices,
            pods,
            index: Default::default(),
            changes,
            naming: Naming {
                cluster_domain: "cluster.local".into(),
                trust_domain: "cluster.local".into(),
                node: "node-a".into(),
            },
            streams: Gauge::default(),
            computed,
            callers,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            server,
            tokio_stream::wrappers::TcpListenerStream::new(listener),
        ));
        addr
    }

    /// Through the real gRPC service on loopback: two streams, each answered again for a
    /// change to its own Service's endpoints and not for the other's, nor for a pod neither
    /// reads. The count of answers computed says which streams did work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_answers_again_only_for_changes_it_depends_on() {
        let ((services, slices, pods), (mut sw, mut lw, _pw)) = ready_stores();
        for (name, ip) in [("web", "10.96.0.7"), ("api", "10.96.0.8")] {
            sw.apply_watcher_event(&watcher::Event::Apply(service(name, ip)));
        }
        lw.apply_watcher_event(&watcher::Event::Apply(slice("web", &["10.244.1.5"])));
        lw.apply_watcher_event(&watcher::Event::Apply(slice("api", &["10.244.1.6"])));
        let (changes, _) = broadcast::channel(16);
        let computed = Counter::default();
        let addr =
            serve_on_loopback((services, slices, pods), changes.clone(), computed.clone()).await;
        let mut client = DestinationClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut open = async |authority: &str| {
            let mut s = client
                .get(pb::GetDestination {
                    authority: authority.into(),
                })
                .await
                .unwrap()
                .into_inner();
            let first = s.message().await.unwrap().unwrap();
            (s, first)
        };
        let (mut web, first) = open("web.shop.svc.cluster.local:80").await;
        assert_eq!(first.endpoints.len(), 1);
        let (mut api, first) = open("api.shop.svc.cluster.local:80").await;
        assert_eq!(first.endpoints.len(), 1);
        assert_eq!(computed.get(), 2);

        // api's endpoints change: its stream answers; web's only reads the change.
        lw.apply_watcher_event(&watcher::Event::Apply(slice(
            "api",
            &["10.244.1.6", "10.244.1.7"],
        )));
        changes
            .send(Changed::Slice(Some(("shop".into(), "api".into()))))
            .unwrap();
        assert_eq!(api.message().await.unwrap().unwrap().endpoints.len(), 2);
        // A pod neither reads.
        changes
            .send(Changed::Pod {
                key: ("shop".into(), "batch-1".into()),
                ips: vec!["10.244.3.3".parse().unwrap()],
            })
            .unwrap();
        // Then web's: its stream reads the changes in order, so by its answer it has passed
        // over the two before.
        lw.apply_watcher_event(&watcher::Event::Apply(slice(
            "web",
            &["10.244.1.5", "10.244.1.9"],
        )));
        changes
            .send(Changed::Slice(Some(("shop".into(), "web".into()))))
            .unwrap();
        assert_eq!(web.message().await.unwrap().unwrap().endpoints.len(), 2);
        assert_eq!(
            computed.get(),
            4,
            "two first answers, then one for each stream's own change"
        );
    }

    /// A channel to the service at `addr` from the local address `from` (a pod of its own).
    fn channel_from(addr: std::net::SocketAddr, from: &str) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .local_address(Some(from.parse().unwrap()))
            .connect_lazy()
    }

    /// A stream for `web.shop`'s port 80 on `c`.
    async fn get(
        c: tonic::transport::Channel,
    ) -> Result<tonic::Response<tonic::Streaming<pb::Update>>, tonic::Status> {
        DestinationClient::new(c)
            .get(pb::GetDestination {
                authority: "web.shop.svc.cluster.local:80".into(),
            })
            .await
    }

    /// One address may hold at most MAX_STREAMS_PER_CALLER streams; another is still served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_caller_cannot_take_every_stream_of_the_node() {
        let ((services, slices, pods), _) = ready_stores();
        let addr = serve_on_loopback(
            (services, slices, pods),
            broadcast::channel(16).0,
            Counter::default(),
        )
        .await;
        let client = |from: &str| channel_from(addr, from);
        let one = client("127.0.0.1");
        let mut open = Vec::new();
        for i in 0..MAX_STREAMS_PER_CALLER {
            let s = get(one.clone())
                .await
                .unwrap_or_else(|e| panic!("stream {i}: {e}"));
            open.push(s.into_inner());
        }
        let refused = get(one.clone()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
        assert!(refused.message().contains("127.0.0.1"), "{refused}");
        // Another pod on the node is still answered.
        let mut other = get(client("127.0.0.2")).await.unwrap().into_inner();
        assert!(other.message().await.unwrap().unwrap().unknown);
    }

    /// With the node's streams all open, a pod holding fewer than its share still gets one:
    /// the newest stream of the pod holding the most is ended for it, with the reason; a pod
    /// holding its share is refused. (Limits of 8 streams, 6 from one address.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pod_under_its_share_is_answered_when_the_node_is_full() {
        let addr = serve_limited(
            ready_stores().0,
            broadcast::channel(16).0,
            Counter::default(),
            super::super::fair::Streams::new(8, 6),
        )
        .await;
        let client = |from: &str| channel_from(addr, from);
        // Each stream's first answer read: it is open at the agent.
        let open = async |c: &tonic::transport::Channel, n: usize| {
            let mut v = Vec::new();
            for _ in 0..n {
                let mut s = get(c.clone()).await.unwrap().into_inner();
                assert!(s.message().await.unwrap().unwrap().unknown);
                v.push(s);
            }
            v
        };
        let (heavy, light, late) = (
            client("127.0.0.1"),
            client("127.0.0.2"),
            client("127.0.0.3"),
        );
        let mut heavy_streams = open(&heavy, 6).await;
        let _light_streams = open(&light, 2).await;
        let _late_streams = open(&late, 1).await;
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            heavy_streams.pop().unwrap().message(),
        )
        .await
        .expect("the heaviest caller's newest stream was not ended")
        .unwrap_err();
        assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended}");
        assert!(ended.message().contains("another caller"), "{ended}");
        // 127.0.0.2 holds its share (8 over 3 callers): refused, not taking from another.
        let refused = get(light.clone()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
        assert!(refused.message().contains("holds its share"), "{refused}");
    }

    /// Streams a caller gave up while the agent's stores were still listing give their quota
    /// back then, not once the stores are ready (which may be never, with the API server
    /// away): else a proxy's reconnects during an outage would lock its pod out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_given_up_before_the_stores_are_ready_give_their_quota_back() {
        let (stores, _writers) = unready_stores();
        let addr = serve_on_loopback(stores, broadcast::channel(16).0, Counter::default()).await;
        let mut client = DestinationClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut get = async || {
            client
                .get(pb::GetDestination {
                    authority: "web.shop.svc.cluster.local:80".into(),
                })
                .await
        };
        let mut open = Vec::new();
        for i in 0..MAX_STREAMS_PER_CALLER {
            let s = get().await.unwrap_or_else(|e| panic!("stream {i}: {e}"));
            open.push(s.into_inner());
        }
        let refused = get().await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
        // The caller resets them all (tonic's client does when a stream is dropped).
        drop(open);
        tokio::time::timeout(Duration::from_secs(10), async {
            while get().await.is_err() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the streams given up still hold the caller's quota");
    }
}
