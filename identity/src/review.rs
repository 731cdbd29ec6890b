//! Who presents a token: asked of the API server with a TokenReview (so the service works the
//! same on any Kubernetes cluster, with the system:auth-delegator role), then whether the pod
//! the token is bound to still exists with the same uid — from a watch cache of pods (what
//! Linkerd's controllers keep too), asking the API server only when the cache does not have
//! it as the token says (a pod created a moment ago).

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    core::v1::Pod,
};
use kube::{
    api::PostParams,
    runtime::reflector::{ObjectRef, Store},
    Api, Client,
};

/// The workload a valid token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reviewed {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub pod_uid: String,
}

/// Why a token was refused; `reason()` is the metrics label.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the token did not authenticate: {0}")]
    Unauthenticated(String),
    #[error("the token is not for audience {0}")]
    Audience(String),
    #[error("the token does not name a service account: {0}")]
    NotServiceAccount(String),
    #[error("the token is not bound to a pod (use a projected serviceAccountToken volume)")]
    Unbound,
    #[error("pod {0} no longer exists")]
    PodGone(String),
    #[error("the API server could not be asked: {0}")]
    Unavailable(String),
}

impl ReviewError {
    pub fn reason(&self) -> &'static str {
        match self {
            ReviewError::Unauthenticated(_) => "token_invalid",
            ReviewError::Audience(_) => "token_audience",
            ReviewError::NotServiceAccount(_) => "token_not_service_account",
            ReviewError::Unbound => "token_unbound",
            ReviewError::PodGone(_) => "pod_gone",
            ReviewError::Unavailable(_) => "review_unavailable",
        }
    }
}

#[derive(Clone)]
pub struct Reviewer {
    client: Client,
    audience: String,
    pods: Option<Store<Pod>>,
}

impl Reviewer {
    /// Checks pods with a GET each time.
    pub fn new(client: Client, audience: String) -> Self {
        Reviewer {
            client,
            audience,
            pods: None,
        }
    }

    /// Checks pods in a watch cache first (list/watch on pods needed); ready once listed.
    pub async fn with_pod_cache(client: Client, audience: String) -> Self {
        let (pods, _task) = meshwork_kube_watch::reflect(
            Api::<Pod>::all(client.clone()),
            kube::runtime::watcher::Config::default(),
            meshwork_kube_watch::Changes::new(),
        );
        let _ = pods.wait_until_ready().await;
        Reviewer {
            client,
            audience,
            pods: Some(pods),
        }
    }

    /// The audience tokens must be for.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub async fn review(&self, token: &str) -> Result<Reviewed, ReviewError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let req = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let got = api
            .create(&PostParams::default(), &req)
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let st = got.status.unwrap_or_default();
        if st.authenticated != Some(true) {
            let why = st.error.unwrap_or_else(|| "not authenticated".into());
            // kube words a token for another audience as "token audiences ... is invalid for
            // the target audiences": told apart for the metrics.
            if why.contains("audience") {
                return Err(ReviewError::Audience(self.audience.clone()));
            }
            return Err(ReviewError::Unauthenticated(why));
        }
        if !st.audiences.iter().flatten().any(|a| *a == self.audience) {
            return Err(ReviewError::Audience(self.audience.clone()));
        }
        let user = st.user.unwrap_or_default();
        let name = user.username.unwrap_or_default();
        let mut parts = name
            .strip_prefix("system:serviceaccount:")
            .map(|r| r.splitn(2, ':'));
        let (Some(ns), Some(sa)) = (
            parts.as_mut().and_then(|p| p.next()),
            parts.as_mut().and_then(|p| p.next()),
        ) else {
            return Err(ReviewError::NotServiceAccount(name));
        };
        let extra = user.extra.unwrap_or_default();
        let one = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let (Some(pod), Some(pod_uid)) = (
            one("authentication.kubernetes.io/pod-name"),
            one("authentication.kubernetes.io/pod-uid"),
        ) else {
            return Err(ReviewError::Unbound);
        };
        let live = |p: &Pod| {
            p.metadata.uid.as_deref() == Some(pod_uid.as_str())
                && p.metadata.deletion_timestamp.is_none()
        };
        let cached = self
            .pods
            .as_ref()
            .and_then(|s| s.get(&ObjectRef::new(&pod).within(ns)))
            .is_some_and(|p| live(&p));
        if !cached {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            match pods.get_opt(&pod).await {
                Ok(Some(p)) if live(&p) => {}
                Ok(_) => return Err(ReviewError::PodGone(format!("{ns}/{pod}"))),
                Err(e) => return Err(ReviewError::Unavailable(e.to_string())),
            }
        }
        Ok(Reviewed {
            namespace: ns.to_string(),
            service_account: sa.to_string(),
            pod,
            pod_uid,
        })
    }
}
