//! Which requests are retried, and with what (Linkerd's retries; ARCHITECTURE.md, "The
//! proxy"): a request whose body fits the replay cap (64 KiB, Linkerd's) is held. If its
//! method is idempotent (RFC 9110 §9.2.2) it may be sent again after a 5xx or a transport
//! failure, at most `limit` times, each retry withdrawn from a budget: 20% of requests plus
//! 10 per second, over a 10 s window (Linkerd's ServiceProfile budget, tower's `TpsBudget`),
//! one per authority (`balancers.rs`).
//! A retry goes to another endpoint when there is one. Whatever its method, a held request
//! is also sent again when the far side says it was not processed (a far proxy whose app is
//! gone refuses the stream, RFC 9113 §8.7): a small POST in a rollout is then not a 502.

use std::time::Duration;

use bytes::Bytes;
use http::{request::Parts, Method};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};

#[derive(Clone, Debug)]
pub struct Config {
    /// Retries per request.
    pub limit: u32,
    /// Largest body held for replay.
    pub max_body: usize,
    pub budget: BudgetConfig,
}

#[derive(Clone, Debug)]
pub struct BudgetConfig {
    pub ttl: Duration,
    pub min_per_sec: u32,
    /// Retries allowed per request, as a fraction (0.2: one per five).
    pub percent: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limit: 1,
            max_body: 64 * 1024,
            budget: BudgetConfig {
                ttl: Duration::from_secs(10),
                min_per_sec: 10,
                percent: 0.2,
            },
        }
    }
}

/// A request body: held (replayable) or passed through once.
pub enum Body {
    Replay(Held),
    Stream(Incoming),
    Failed(String),
}

/// A held body, with the trailers that ended it (an HTTP/2 client may send some after a body
/// of declared length): each attempt sends both.
#[derive(Clone, Debug)]
pub struct Held {
    pub data: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Held {
    /// The body of one attempt.
    pub fn body(&self) -> crate::http::Body {
        match &self.trailers {
            None => crate::http::full(self.data.clone()),
            Some(t) => {
                let t = t.clone();
                http_body_util::Full::new(self.data.clone())
                    .map_err(|never| match never {})
                    .with_trailers(async move { Some(Ok(t)) })
                    .boxed()
            }
        }
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Holds the body of a request whose declared length fits `cap` (a body without a declared
/// length, or larger, streams and is sent once: a gRPC stream, an upload). Which of the held
/// ones may be retried after a failure is [`retryable`]'s to say.
pub async fn replayable(head: &Parts, body: Incoming, cap: usize) -> Body {
    // The length hyper read from the framing (it parsed and checked the header already).
    let declared = hyper::body::Body::size_hint(&body).exact();
    let chunked = head.headers.contains_key(http::header::TRANSFER_ENCODING);
    let fits = match declared {
        Some(n) => usize::try_from(n).is_ok_and(|n| n <= cap),
        // HTTP/1 without a length or chunked framing has no body; HTTP/2 says so by ending
        // the stream with the headers.
        None => body.is_end_stream() || (!chunked && head.version < http::Version::HTTP_2),
    };
    if !fits {
        return Body::Stream(body);
    }
    match Limited::new(body, cap).collect().await {
        Ok(c) => {
            let trailers = c.trailers().cloned();
            Body::Replay(Held {
                data: c.to_bytes(),
                trailers,
            })
        }
        Err(e) => Body::Failed(e.to_string()),
    }
}

/// Whether an attempt's outcome may be retried: a transport failure or a 5xx.
pub fn retryable<B, E>(method: &Method, result: &Result<http::Response<B>, E>) -> bool {
    idempotent(method)
        && match result {
            Ok(r) => r.status().is_server_error(),
            Err(_) => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each attempt of a held body sends its data and the trailers that ended it.
    #[tokio::test]
    async fn a_held_body_keeps_its_trailers_for_every_attempt() {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        let held = Held {
            data: Bytes::from_static(b"payload"),
            trailers: Some(t),
        };
        for _ in 0..2 {
            let c = held.body().collect().await.unwrap();
            assert_eq!(
                c.trailers().map(|t| t["grpc-status"].clone()),
                Some(http::HeaderValue::from_static("0"))
            );
            assert_eq!(c.to_bytes(), Bytes::from_static(b"payload"));
        }
        let plain = Held {
            data: Bytes::from_static(b"x"),
            trailers: None,
        };
        assert!(plain.body().collect().await.unwrap().trailers().is_none());
    }

    #[test]
    fn only_idempotent_failures_are_retried() {
        let r = |s: u16| -> Result<http::Response<()>, String> {
            let mut x = http::Response::new(());
            *x.status_mut() = http::StatusCode::from_u16(s).unwrap();
            Ok(x)
        };
        assert!(retryable(&Method::GET, &r(503)));
        assert!(retryable(&Method::PUT, &r(500)));
        assert!(retryable::<(), String>(&Method::GET, &Err("reset".into())));
        assert!(!retryable(&Method::GET, &r(404)));
        assert!(!retryable(&Method::GET, &r(200)));
        assert!(!retryable(&Method::POST, &r(503)));
    }
}
