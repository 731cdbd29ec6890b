//! The apps the mesh end-to-end tests (tests/tests/mesh.rs) run in their pods, behind their
//! proxies:
//!
//!   mw-meshapp http ADDR        HTTP/1.1 keep-alive; answers every request with
//!                               `pod=<POD_NAME> client=<meshwork-client-id> traceparent=<..>`
//!   mw-meshapp first ADDR LEN   a server-speaks-first protocol: greets `220 mwlab ready`, reads
//!                               LEN bytes and checks them against the lab payload (seed 1),
//!                               says `intact` or where they differ, then sends LEN bytes of
//!                               the payload with seed 2
//!   mw-meshapp grpc ADDR        a gRPC server (the destination API's shape, reused as a
//!                               streaming service): three updates per call, then OK
//!   mw-meshapp ws ADDR          a WebSocket server (tungstenite): answers each text message
//!                               with `client=<meshwork-client-id of the handshake> <message>`
//!   mw-meshapp ws-client URL MSG...
//!                               a WebSocket client: sends each MSG, prints each answer, closes

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
};

use meshwork_destination_api::pb;

fn http_conn(s: TcpStream, pod: &str) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut client = String::new();
        let mut trace = String::new();
        let mut len = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "meshwork-client-id" => client = v.to_string(),
                    "traceparent" => trace = v.to_string(),
                    "content-length" => len = v.parse().unwrap_or(0),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        let reply = format!("pod={pod} client={client} traceparent={trace}\n");
        // One write: `write!` on a socket writes each piece, and Nagle holds the second until
        // the first is acknowledged (a delayed ACK: 40 ms per request).
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        w.write_all(resp.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

fn first_conn(mut s: TcpStream, len: usize) -> std::io::Result<()> {
    s.write_all(b"220 mwlab ready\r\n")?;
    let want = meshwork_lab::tcp::payload(len, 1);
    let mut got = vec![0u8; len];
    s.read_exact(&mut got)?;
    let verdict = match want.iter().zip(&got).position(|(a, b)| a != b) {
        None => "intact\n".to_string(),
        Some(i) => format!("differs at {i}\n"),
    };
    s.write_all(verdict.as_bytes())?;
    s.write_all(&meshwork_lab::tcp::payload(len, 2))?;
    s.shutdown(std::net::Shutdown::Write)
}

fn ws_conn(s: TcpStream) -> anyhow::Result<()> {
    // The handshake's callback may outlive this frame (a handshake can be resumed): it hands
    // the identity header over through a shared cell.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::from("none")));
    let cell = seen.clone();
    #[allow(
        clippy::result_large_err,
        reason = "the error type is tungstenite's handshake callback's"
    )]
    let cb = move |req: &tungstenite::handshake::server::Request,
                   resp: tungstenite::handshake::server::Response| {
        if let Some(v) = req
            .headers()
            .get("meshwork-client-id")
            .and_then(|v| v.to_str().ok())
        {
            *cell.lock().unwrap_or_else(|p| p.into_inner()) = v.to_string();
        }
        Ok(resp)
    };
    let mut ws = tungstenite::accept_hdr(s, cb)?;
    let client = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    loop {
        // A Close is answered by tungstenite itself, on the next read, which then ends.
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                ws.send(tungstenite::Message::text(format!("client={client} {t}")))?;
            }
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

fn ws_client(url: &str, msgs: &[&str]) -> anyhow::Result<()> {
    let (mut ws, resp) = tungstenite::connect(url)?;
    anyhow::ensure!(resp.status() == 101, "handshake answered {}", resp.status());
    for m in msgs {
        ws.send(tungstenite::Message::text(*m))?;
        match ws.read()? {
            tungstenite::Message::Text(t) => println!("{t}"),
            other => anyhow::bail!("expected a text answer, got {other:?}"),
        }
    }
    ws.close(None)?;
    // The close handshake: read until the server's Close comes back.
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

struct Grpc;

#[tonic::async_trait]
impl pb::destination_server::Destination for Grpc {
    type GetStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Update, tonic::Status>> + Send>>;

    async fn get(
        &self,
        req: tonic::Request<pb::GetDestination>,
    ) -> Result<tonic::Response<Self::GetStream>, tonic::Status> {
        let authority = req.into_inner().authority;
        let updates = (0..3u32).map(move |i| {
            Ok(pb::Update {
                unknown: false,
                endpoints: vec![pb::Endpoint {
                    addr: authority.clone(),
                    weight: i,
                    ..Default::default()
                }],
                ..Default::default()
            })
        });
        Ok(tonic::Response::new(Box::pin(futures::stream::iter(
            updates,
        ))))
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pod = std::env::var("POD_NAME").unwrap_or_default();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["http", addr] => {
            let l = TcpListener::bind(addr)?;
            for s in l.incoming().flatten() {
                let pod = pod.clone();
                std::thread::spawn(move || http_conn(s, &pod));
            }
        }
        ["first", addr, len] => {
            let len: usize = len.parse()?;
            let l = TcpListener::bind(addr)?;
            for s in l.incoming().flatten() {
                std::thread::spawn(move || first_conn(s, len));
            }
        }
        ["grpc", addr] => {
            let addr: std::net::SocketAddr = addr.parse()?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(
                    tonic::transport::Server::builder()
                        .add_service(pb::destination_server::DestinationServer::new(Grpc))
                        .serve(addr),
                )?;
        }
        ["ws", addr] => {
            let l = TcpListener::bind(addr)?;
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    if let Err(e) = ws_conn(s) {
                        eprintln!("ws: {e}");
                    }
                });
            }
        }
        ["ws-client", url, ref msgs @ ..] => ws_client(url, msgs)?,
        _ => anyhow::bail!(
            "usage: mw-meshapp http ADDR | first ADDR LEN | grpc ADDR | ws ADDR | ws-client URL MSG..."
        ),
    }
    Ok(())
}
