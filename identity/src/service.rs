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
//! | the API server unreachable | Unavailable |

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
                Status::invalid_argument(format!("identity {:?}: {e}", req.identity)),
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
        who.pod = format!("(claims {})", peeked.subject);
        let csr = check_csr(&req.certificate_signing_request, &id).map_err(csr_refusal)?;
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
        let leaf = ca
            .sign_csr(csr, &id, self.lifetime)
            .map_err(|e| refuse(Status::internal(e.to_string()), "sign_failed"))?;
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
        let asked = req.identity.clone();
        let mut who = Who::default();
        let r = self.certify_inner(req, &mut who).await;
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
                    error = %f.status.message(),
                    "certificate refused"
                );
                Err(f.status)
            }
        }
    }
}
