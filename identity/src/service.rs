//! The Certify call: who asks (the token, reviewed by the API server), for what (the SPIFFE
//! ID, which must be the token's ServiceAccount), with which key (the CSR, checked), then a
//! signed leaf. Every answer leaves an audit line (target `meshwork_identity::audit`) and a
//! metric; a refusal issues nothing and says why in its gRPC status:
//!
//! | refusal | status |
//! |---|---|
//! | malformed identity or CSR; CSR with other names, a CA flag or another key type | InvalidArgument |
//! | token missing, malformed, invalid, expired, revoked (its pod deleted), for another audience, unbound | Unauthenticated |
//! | token of another ServiceAccount than the identity asked for; pod gone | PermissionDenied |
//! | the API server unreachable; too many reviews at once | Unavailable |
//! | too many calls at once from one address | ResourceExhausted |
//! | the issuer expires within 5 minutes | FailedPrecondition |

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use tonic::{Request, Response, Status};

use crate::{
    ca::{check_csr, Ca, CsrError},
    metrics::Metrics,
    pb::{identity_server, CertifyRequest, CertifyResponse},
    review::{ReviewError, Reviewer},
    spiffe::SpiffeId,
};

/// How far a token's expiry may seem past before it is refused without a review.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The CA in use, replaced whole when the issuer or the anchors change.
#[derive(Clone)]
pub struct CaHandle(Arc<RwLock<Arc<Ca>>>);

impl CaHandle {
    pub fn new(ca: Ca) -> Self {
        CaHandle(Arc::new(RwLock::new(Arc::new(ca))))
    }
    pub fn get(&self) -> Arc<Ca> {
        self.0
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
    pub fn set(&self, ca: Ca) {
        match self.0.write() {
            Ok(mut g) => *g = Arc::new(ca),
            Err(p) => *p.into_inner() = Arc::new(ca),
        }
    }
}

pub struct Service {
    pub ca: CaHandle,
    pub reviewer: Reviewer,
    pub trust_domain: String,
    pub lifetime: Duration,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
}

/// What callers may make the service do at once. Each call costs a TokenReview (a POST to
/// the API server as this service's account, a webhook's call too where tokens go to one),
/// and a caller needs no valid token to ask: the API server's fairness would then throttle
/// this account's real reviews along with the flood. So calls are bounded per caller address
/// and reviews in all: past the first the caller is told to come back (its client retries),
/// the second makes calls wait their turn (at most [`REVIEW_WAIT`]).
#[derive(Clone)]
pub struct Limits {
    per_caller: usize,
    callers: meshwork_daemon::quota::PerAddress,
    reviews: Arc<tokio::sync::Semaphore>,
    wait: Duration,
}

/// Calls in progress at once from one address (a pod renews once per certificate life).
pub const MAX_CALLS_PER_CALLER: usize = 4;
/// TokenReviews in flight at once.
pub const MAX_REVIEWS: usize = 64;
/// How long a call waits for a review's place before it is told the service is busy: well
/// inside the client library's 10 s for the whole call, so the answer reaches it.
const REVIEW_WAIT: Duration = Duration::from_secs(3);

impl Default for Limits {
    fn default() -> Self {
        Limits::new(MAX_CALLS_PER_CALLER, MAX_REVIEWS)
    }
}

impl Limits {
    pub fn new(per_caller: usize, reviews: usize) -> Self {
        Limits {
            per_caller,
            callers: meshwork_daemon::quota::PerAddress::new(per_caller),
            reviews: Arc::new(tokio::sync::Semaphore::new(reviews)),
            wait: REVIEW_WAIT,
        }
    }

    /// With `wait` for a review's place instead of [`REVIEW_WAIT`].
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
}

/// `s` for a log line or a status message: Debug-escaped (a client's line break cannot start
/// a forged audit line) and at most 256 characters.
fn shown(s: &str) -> String {
    let kept = meshwork_daemon::cut(s, 256);
    let more = if kept.len() < s.len() { "…" } else { "" };
    format!("{kept:?}{more}")
}

/// A refusal: the status, the metrics reason, and the identity asked for (for the audit).
struct Refusal {
    status: Status,
    reason: &'static str,
}

fn refuse(status: Status, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

fn csr_refusal(e: CsrError) -> Refusal {
    let reason = match e {
        CsrError::Malformed(_) => "csr_malformed",
        CsrError::KeyAlgorithm(_) => "csr_key",
        CsrError::OtherNames { .. } => "csr_names",
        CsrError::WantsCa => "csr_ca",
    };
    refuse(Status::invalid_argument(e.to_string()), reason)
}

fn review_refusal(e: ReviewError) -> Refusal {
    let reason = e.reason();
    let status = match &e {
        ReviewError::PodGone(_) => Status::permission_denied(e.to_string()),
        ReviewError::Unavailable(_) => Status::unavailable(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    };
    refuse(status, reason)
}

/// Who a certified request came from, for the audit line.
#[derive(Default)]
struct Who {
    pod: String,
    serial: String,
    not_after: i64,
}

impl Service {
    async fn certify_inner(
        &self,
        req: CertifyRequest,
        who: &mut Who,
    ) -> Result<CertifyResponse, Refusal> {
        let id = SpiffeId::parse(&req.identity).map_err(|e| {
            refuse(
                Status::invalid_argument(format!("identity {}: {e}", shown(&req.identity))),
                "identity_malformed",
            )
        })?;
        if id.trust_domain() != self.trust_domain {
            return Err(refuse(
                Status::invalid_argument(format!(
                    "identity {id}: this service issues for trust domain {}",
                    self.trust_domain
                )),
                "identity_trust_domain",
            ));
        }
        let Some((ns, sa)) = id.namespace_and_account() else {
            return Err(refuse(
                Status::invalid_argument(format!("identity {id}: not of the form spiffe://{}/ns/<namespace>/sa/<service-account>", self.trust_domain)),
                "identity_malformed",
            ));
        };
        let token = std::str::from_utf8(&req.token)
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                refuse(
                    Status::unauthenticated("no token (a ServiceAccount token in UTF-8)"),
                    "token_missing",
                )
            })?;
        // Garbage is refused here, without a TokenReview; the claims label the audit line.
        let peeked = crate::token::peek(token).map_err(|e| {
            refuse(
                Status::unauthenticated(format!("token: {e}")),
                "token_malformed",
            )
        })?;
        who.pod = format!("(claims {})", shown(&peeked.subject));
        // What the review would refuse anyway, refused without one (the claims are not
        // verified here: a forger passes these, which is what the limits are for).
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if peeked.expires < now - CLOCK_SKEW.as_secs() as i64 {
            // Labelled as the review would label it.
            return Err(refuse(
                Status::unauthenticated("token: expired"),
                "token_invalid",
            ));
        }
        if !peeked
            .audiences
            .iter()
            .any(|a| a == self.reviewer.audience())
        {
            return Err(review_refusal(ReviewError::Audience(
                self.reviewer.audience().to_string(),
            )));
        }
        let csr = check_csr(&req.certificate_signing_request, &id).map_err(csr_refusal)?;
        // A burst (a node's pods all starting) waits its turn; past the wait it is told.
        let Ok(Ok(_review)) =
            tokio::time::timeout(self.limits.wait, self.limits.reviews.acquire()).await
        else {
            return Err(refuse(
                Status::unavailable("busy: too many certificate requests at once; retry"),
                "busy",
            ));
        };
        let r = self.reviewer.review(token).await.map_err(review_refusal)?;
        who.pod = format!("{}/{}", r.namespace, r.pod);
        if (r.namespace.as_str(), r.service_account.as_str()) != (ns, sa) {
            return Err(refuse(
                Status::permission_denied(format!(
                    "the token is for service account {}/{}, not for {id}",
                    r.namespace, r.service_account
                )),
                "identity_mismatch",
            ));
        }
        let ca = self.ca.get();
        let leaf = ca.sign_csr(csr, &id, self.lifetime).map_err(|e| match e {
            crate::ca::CaError::IssuerExpiring => refuse(
                Status::failed_precondition(e.to_string()),
                "issuer_expiring",
            ),
            e => refuse(Status::internal(e.to_string()), "sign_failed"),
        })?;
        let until = leaf
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        who.serial = leaf.serial.clone();
        who.not_after = until;
        Ok(CertifyResponse {
            leaf_certificate: leaf.der.to_vec(),
            intermediate_certificates: ca.chain.iter().map(|c| c.to_vec()).collect(),
            valid_until: Some(prost_types::Timestamp {
                seconds: until,
                nanos: 0,
            }),
            trust_anchors: ca.anchors.iter().map(|c| c.to_vec()).collect(),
        })
    }
}

#[tonic::async_trait]
impl identity_server::Identity for Service {
    async fn certify(
        &self,
        req: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let t0 = Instant::now();
        let peer: Option<SocketAddr> = req.remote_addr();
        let req = req.into_inner();
        let asked = shown(&req.identity);
        let mut who = Who::default();
        // A transport without addresses is one caller.
        let ip = peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.ip());
        let r = match self.limits.callers.take(ip) {
            Some(_held) => self.certify_inner(req, &mut who).await,
            None => Err(refuse(
                Status::resource_exhausted(format!(
                    "{} certificate requests at once from {ip}; retry",
                    self.limits.per_caller
                )),
                "caller_limit",
            )),
        };
        self.metrics.latency.observe(t0.elapsed().as_secs_f64());
        match r {
            Ok(resp) => {
                self.metrics.issued.inc();
                tracing::info!(
                    target: "meshwork_identity::audit",
                    outcome = "issued",
                    identity = %asked,
                    pod = %who.pod,
                    serial = %who.serial,
                    not_after = who.not_after,
                    peer = ?peer,
                    "certificate issued"
                );
                Ok(Response::new(resp))
            }
            Err(f) => {
                self.metrics.reject(f.reason);
                tracing::warn!(
                    target: "meshwork_identity::audit",
                    outcome = "refused",
                    reason = f.reason,
                    identity = %asked,
                    pod = %who.pod,
                    peer = ?peer,
                    error = ?f.status.message(),
                    "certificate refused"
                );
                Err(f.status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use base64::Engine;

    use super::*;

    /// A token that passes the shape checks (not a real signature: the review is what
    /// would refuse it, and here it never answers).
    fn token(aud: &str, exp: i64) -> Vec<u8> {
        let b = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.c2ln",
            b(serde_json::json!({"alg": "ES256"})),
            b(serde_json::json!({"sub": "system:serviceaccount:app:web", "aud": [aud], "exp": exp}))
        )
        .into_bytes()
    }

    /// A service whose API server takes TokenReviews and never answers them, with `limits`.
    async fn stalled(limits: Limits) -> Arc<Service> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                held.push(l.accept().await.unwrap().0);
            }
        });
        let cfg = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = kube::Client::try_from(cfg).unwrap();
        Arc::new(Service {
            ca: CaHandle::new(crate::ca::tests::test_ca()),
            reviewer: Reviewer::new(client, "identity.meshwork.io".into()),
            trust_domain: "cluster.local".into(),
            lifetime: Duration::from_secs(3600),
            metrics: Metrics::new(),
            limits,
        })
    }

    fn request(token: Vec<u8>) -> Request<CertifyRequest> {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/app/sa/web").unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Request::new(CertifyRequest {
            identity: id.to_string(),
            token,
            certificate_signing_request: crate::ca::make_csr(&key, &id).unwrap(),
        })
    }

    fn far_future() -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 3600
    }

    /// Calls no token could pass: one caller's at once, and reviews in all, are bounded;
    /// past either the caller hears why at once, with nothing sent to the API server.
    #[tokio::test]
    async fn reviews_are_bounded_per_caller_and_in_all() {
        use identity_server::Identity as _;
        let svc = stalled(Limits::new(3, 2).with_wait(Duration::from_millis(100))).await;
        let mut pending = Vec::new();
        for _ in 0..2 {
            let s = svc.clone();
            pending.push(tokio::spawn(async move {
                s.certify(request(token("identity.meshwork.io", far_future())))
                    .await
            }));
        }
        // Both reviews hang; the third call of this caller is let in, and finds no review.
        tokio::task::yield_now().await;
        while svc.limits.reviews.available_permits() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let busy = svc
            .certify(request(token("identity.meshwork.io", far_future())))
            .await
            .unwrap_err();
        assert_eq!(busy.code(), tonic::Code::Unavailable, "{busy:?}");
        // A fourth, while three are in: refused before anything is read.
        let held = svc
            .limits
            .callers
            .take(std::net::IpAddr::from([0, 0, 0, 0]));
        let over = svc
            .certify(request(token("identity.meshwork.io", far_future())))
            .await
            .unwrap_err();
        assert_eq!(over.code(), tonic::Code::ResourceExhausted, "{over:?}");
        drop(held);
        for p in pending {
            p.abort();
        }
    }

    /// An expired token, or one for another audience, is refused without a review.
    #[tokio::test]
    async fn expired_and_foreign_tokens_are_refused_without_a_review() {
        use identity_server::Identity as _;
        // No review may be made at all.
        let svc = stalled(Limits::new(4, 0).with_wait(Duration::from_millis(100))).await;
        let st = svc
            .certify(request(token("identity.meshwork.io", 1)))
            .await
            .unwrap_err();
        assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
        assert!(st.message().contains("expired"), "{st:?}");
        let st = svc
            .certify(request(token(
                "https://kubernetes.default.svc",
                far_future(),
            )))
            .await
            .unwrap_err();
        assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
        assert!(st.message().contains("audience"), "{st:?}");
    }

    /// What a caller sent reaches a log line or a status escaped and cut: no line break of
    /// its own, no megabytes.
    #[test]
    fn shown_escapes_and_cuts() {
        let forged = "x\n2026-12-08T00:00:00Z  INFO meshwork_identity::audit: certificate issued";
        assert!(!shown(forged).contains('\n'));
        assert!(shown(&"é".repeat(10_000)).chars().count() < 300);
    }
}
