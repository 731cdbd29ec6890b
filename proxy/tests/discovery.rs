//! An authority no Service answers to (the agent says `unknown`): the request gets its 503 at
//! once, not after the fail-fast wait, and the proxy keeps no stream open for it on the agent
//! (an app reaching many addresses outside the cluster must not hold one per address); a
//! request to it right after is answered from that answer, without asking again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

mod support;

use meshwork_destination_api::pb;
use meshwork_proxy::{
    drain::Watch,
    outbound::{self, discover::Static, resolve::Resolver, Outbound},
};
use support::NoCreds;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// Discovery where nothing is known: every `Get` is counted, answered `unknown`, and its
/// stream reported on `closed` once the proxy lets go of it.
struct Nothing {
    gets: Arc<AtomicUsize>,
    closed: mpsc::UnboundedSender<()>,
}

type Updates =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Update, tonic::Status>> + Send>>;

/// Reports on its channel when dropped (tonic drops a stream the client reset).
struct OnDrop(mpsc::UnboundedSender<()>);
impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[tonic::async_trait]
impl pb::destination_server::Destination for Nothing {
    type GetStream = Updates;

    async fn get(
        &self,
        _: tonic::Request<pb::GetDestination>,
    ) -> Result<tonic::Response<Updates>, tonic::Status> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let guard = OnDrop(self.closed.clone());
        // The answer, then a stream that would stay open for ever (as the agent's does).
        let first = futures::stream::once(async {
            Ok(pb::Update {
                unknown: true,
                ..Default::default()
            })
        });
        let rest = futures::stream::unfold(guard, |g| async move {
            std::future::pending::<()>().await;
            Some((Err(tonic::Status::internal("unreachable")), g))
        });
        use futures::StreamExt;
        Ok(tonic::Response::new(Box::pin(first.chain(rest))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_no_service_answers_to_gets_503_at_once_and_keeps_no_stream() {
    let gets = Arc::new(AtomicUsize::new(0));
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let dl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daddr = dl.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::destination_server::DestinationServer::new(Nothing {
                gets: gets.clone(),
                closed: closed_tx,
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(dl)),
    );
    let metrics = meshwork_proxy::metrics::Metrics::new();
    // A fail-fast wait far longer than the test allows an answer: a 503 within it is one
    // given at once.
    let resolver = Resolver::api(
        Static::default(),
        &daddr.to_string(),
        None,
        Duration::from_secs(60),
        metrics.clone(),
    )
    .unwrap();
    let out = Outbound::with(
        outbound::Config::default(),
        Arc::new(NoCreds),
        resolver,
        metrics,
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    tokio::spawn(out.serve(l, Watch::never()));

    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: nowhere.default.svc.cluster.local\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
            .await
            .expect("answered within 10 s (the fail-fast wait is 60)")
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    }
    // The proxy let go of the stream the answer came on.
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the proxy kept the stream of an unknown authority open")
        .unwrap();
    assert_eq!(
        gets.load(Ordering::SeqCst),
        1,
        "the second request was answered from the first answer"
    );
}
