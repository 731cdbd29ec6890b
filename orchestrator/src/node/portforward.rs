//! `kubectl port-forward` on the node: the kubelet's `/portForward/<ns>/<pod>`.
//!
//! kubectl 1.33 speaks SPDY/3.1 streams (`portforward.k8s.io`): tunnelled over a WebSocket
//! with subprotocol `SPDY/3.1+portforward.k8s.io` by default, or after `Upgrade: SPDY/3.1`
//! when it falls back. For every local connection it opens an `error` stream, then a `data`
//! stream, both with headers `port` and `requestID`; the data stream is spliced to
//! 127.0.0.1:<port> (then [::1]) dialled inside the pod's network namespace, and a failure is
//! written to the error stream. Both streams end (FIN) once the pod side closed.

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{mpsc, oneshot},
};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};

use super::exec::normal_close;
use super::spdy::{self, Frame, HeaderReader, HeaderWriter, FLAG_FIN};

/// WebSocket subprotocol of the SPDY tunnel.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// X-Stream-Protocol-Version of the raw SPDY upgrade.
pub const PROTOCOL: &str = "portforward.k8s.io";

/// Dials 127.0.0.1:port (then [::1]:port) from inside a network namespace: a thread of its
/// own joins the namespace, connects and ends (the socket stays in the namespace).
pub async fn connect_in(netns: &Path, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let netns = netns.to_path_buf();
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let r = (|| {
            let f = std::fs::File::open(&netns)?;
            // SAFETY: setns on this thread only, with a namespace fd we hold open.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let timeout = std::time::Duration::from_secs(5);
            let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let s = match std::net::TcpStream::connect_timeout(&v4, timeout) {
                Ok(s) => s,
                Err(e) => {
                    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
                    std::net::TcpStream::connect_timeout(&v6, timeout).map_err(|_| e)?
                }
            };
            s.set_nonblocking(true)?;
            Ok(s)
        })();
        let _ = tx.send(r);
    });
    let s = rx
        .await
        .map_err(|_| std::io::Error::other("connect thread ended"))??;
    let _ = s.set_nodelay(true);
    tokio::net::TcpStream::from_std(s)
}

/// Turns a WebSocket carrying a byte stream in binary messages into an AsyncRead + AsyncWrite.
pub fn ws_bytes<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut r, mut w) = tokio::io::split(theirs);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        let up = async {
            while let Some(Ok(m)) = stream.next().await {
                let ok = match m {
                    Message::Binary(b) => w.write_all(&b).await.is_ok(),
                    Message::Close(_) => false,
                    _ => true,
                };
                if !ok {
                    break;
                }
            }
            let _ = w.shutdown().await;
        };
        let down = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let b = bytes::Bytes::copy_from_slice(&buf[..n]);
                        if sink.send(Message::Binary(b)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sink.send(Message::Close(Some(normal_close()))).await;
            let _ = sink.close().await;
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
    });
    ours
}

enum Out {
    Reply(u32),
    Frame(Vec<u8>),
}

#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<(u32, u16)>,
}

/// Serves port-forward streams on one SPDY connection until the client goes away.
pub async fn serve_spdy<S>(io: S, netns: PathBuf, pod: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);
    let writer = tokio::spawn(async move {
        let mut hw = HeaderWriter::default();
        while let Some(o) = out_rx.recv().await {
            let bytes = match o {
                Out::Frame(f) => f,
                Out::Reply(id) => {
                    let Ok(block) = hw.write(&[]) else { return };
                    let mut body = id.to_be_bytes().to_vec();
                    body.extend_from_slice(&block);
                    spdy::control(spdy::TYPE_SYN_REPLY, 0, &body)
                }
            };
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut hr = HeaderReader::default();
    let mut streams: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // The connections of this session: closed with it (a pod may keep its side open).
    let mut forwards = Vec::new();
    loop {
        let frame = match spdy::read_frame(&mut rd).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "port-forward connection");
                break;
            }
        };
        match frame {
            Frame::Control { kind, body, .. } if kind == spdy::TYPE_SYN_STREAM => {
                if body.len() < 10 {
                    break;
                }
                let id = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) & 0x7fff_ffff;
                let headers = match hr.read(&body[10..]) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::debug!(error = %e, "port-forward headers");
                        break;
                    }
                };
                let get = |k: &str| {
                    headers
                        .iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                if out_tx.send(Out::Reply(id)).await.is_err() {
                    break;
                }
                let request = get("requestid");
                let pair = pairs.entry(request.clone()).or_default();
                match get("streamtype").as_str() {
                    "error" => pair.error = Some(id),
                    "data" => {
                        let port = get("port").parse::<u16>().unwrap_or(0);
                        pair.data = Some((id, port));
                    }
                    _ => continue,
                }
                if let Some((data, port)) = pair.data {
                    if pair.error.is_none() && !request.is_empty() {
                        continue;
                    }
                    let error = pair.error;
                    pairs.remove(&request);
                    let (tx, rx) = mpsc::channel(16);
                    streams.insert(data, tx);
                    forwards.retain(|h: &tokio::task::AbortHandle| !h.is_finished());
                    forwards.push(
                        tokio::spawn(forward(
                            netns.clone(),
                            pod.clone(),
                            port,
                            data,
                            error,
                            rx,
                            out_tx.clone(),
                        ))
                        .abort_handle(),
                    );
                }
            }
            Frame::Control { kind, body, .. } if kind == spdy::TYPE_RST_STREAM => {
                if body.len() >= 4 {
                    let id = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) & 0x7fff_ffff;
                    streams.remove(&id);
                }
            }
            Frame::Control { kind, body, .. } if kind == spdy::TYPE_PING => {
                let _ = out_tx
                    .send(Out::Frame(spdy::control(spdy::TYPE_PING, 0, &body)))
                    .await;
            }
            Frame::Control { kind, .. } if kind == spdy::TYPE_GOAWAY => break,
            Frame::Control { .. } => {}
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                let fin = flags & FLAG_FIN != 0;
                if let Some(tx) = streams.get(&stream) {
                    if !data.is_empty() && tx.send(Some(data)).await.is_err() {
                        streams.remove(&stream);
                    } else if fin {
                        let _ = tx.send(None).await;
                        streams.remove(&stream);
                    }
                }
            }
        }
    }
    drop(streams);
    drop(out_tx);
    for f in forwards {
        f.abort();
    }
    let _ = writer.await;
}

async fn forward(
    netns: PathBuf,
    pod: String,
    port: u16,
    data: u32,
    error: Option<u32>,
    mut from_client: mpsc::Receiver<Option<Vec<u8>>>,
    out: mpsc::Sender<Out>,
) {
    let fin = |id: u32| Out::Frame(spdy::data(id, FLAG_FIN, &[]));
    let tcp = if port == 0 {
        Err(std::io::Error::other("invalid port"))
    } else {
        connect_in(&netns, port).await
    };
    let tcp = match tcp {
        Ok(t) => t,
        Err(e) => {
            if let Some(err) = error {
                let msg = format!(
                    "error forwarding port {port} to pod {pod}: failed to connect to localhost:{port} inside the pod's network namespace: {e}"
                );
                let _ = out
                    .send(Out::Frame(spdy::data(err, 0, msg.as_bytes())))
                    .await;
                let _ = out.send(fin(err)).await;
            }
            let _ = out.send(fin(data)).await;
            return;
        }
    };
    let (mut r, mut w) = tcp.into_split();
    tokio::spawn(async move {
        while let Some(Some(b)) = from_client.recv().await {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out
                    .send(Out::Frame(spdy::data(data, 0, &buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = out.send(fin(data)).await;
    if let Some(err) = error {
        let _ = out.send(fin(err)).await;
    }
}
