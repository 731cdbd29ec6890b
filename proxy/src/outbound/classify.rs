//! What an answer says about its endpoint, for the breaker and the balancer (Linkerd's
//! response classification): a 5xx, or one of the server's gRPC errors, is a failure. A gRPC
//! server tells its status in the trailers after a body as often as in the headers (a
//! trailers-only answer); such a response is judged when its stream ends ([`judged`]), and
//! until then counts toward neither side of the breaker.

use std::sync::Arc;

use super::{balancers::Picked, Outbound};
use crate::http::{Body, End};

/// The server's gRPC errors — UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS. The client's
/// (NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED...) are answers, as a 4xx is: a Service
/// answering mostly NOT_FOUND must not have its endpoints ejected.
fn grpc_failure(status: &http::HeaderValue) -> bool {
    matches!(crate::http::grpc_code(status), "2" | "13" | "14" | "15")
}

/// Whether the response's headers already say it failed: a 5xx, or a gRPC error in a
/// trailers-only answer (how a gRPC server says UNAVAILABLE without a body).
pub(super) fn failed<B>(r: &http::Response<B>) -> bool {
    r.status().is_server_error() || r.headers().get("grpc-status").is_some_and(grpc_failure)
}

/// Whether the response is gRPC whose status is still to come, in its trailers.
pub(super) fn status_in_trailers<B>(r: &http::Response<B>) -> bool {
    crate::http::grpc_status_now(r.status(), r.headers()).is_none()
}

/// `body`, a gRPC response's, whose end tells its endpoint's breaker the outcome: the status
/// in its trailers, or a failure if the stream broke or ended with no status (a gRPC client
/// takes both as errors). Dropped before its end (the client went away), it tells nothing.
pub(super) fn judged(body: Body, out: Arc<Outbound>, authority: &str, picked: Picked) -> Body {
    let authority = authority.to_string();
    crate::http::on_end(body, move |how| {
        let ok = match how {
            End::Trailers(t) => t.get("grpc-status").is_some_and(|s| !grpc_failure(s)),
            End::Without => false,
            End::Dropped => return,
        };
        out.judged_late(&authority, &picked, ok);
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    #[test]
    fn server_errors_fail_and_client_errors_answer() {
        let resp = |status: u16, grpc: Option<&str>, ct: Option<&str>| {
            let mut b = http::Response::builder().status(status);
            if let Some(g) = grpc {
                b = b.header("grpc-status", g);
            }
            if let Some(c) = ct {
                b = b.header("content-type", c);
            }
            b.body(()).unwrap()
        };
        assert!(failed(&resp(503, None, None)));
        assert!(!failed(&resp(404, None, None)));
        for code in ["2", "13", "14", "15"] {
            assert!(failed(&resp(200, Some(code), None)), "{code}");
        }
        for code in ["0", "1", "3", "5", "7", "16"] {
            assert!(!failed(&resp(200, Some(code), None)), "{code}");
        }
        let trailers = |status, ct| status_in_trailers(&resp(status, None, Some(ct)));
        assert!(trailers(200, "application/grpc"));
        assert!(trailers(200, "application/grpc+proto"));
        assert!(!status_in_trailers(&resp(
            200,
            Some("0"),
            Some("application/grpc")
        )));
        assert!(!trailers(200, "application/json"));
        // gRPC-Web's status is in its body; a 429 from a gateway is an HTTP answer.
        assert!(!trailers(200, "application/grpc-web+proto"));
        assert!(!trailers(429, "application/grpc"));
    }
}
