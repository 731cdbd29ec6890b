//! Authorization: `system:masters` may do anything (kube's privileged-group authorizer, ahead
//! of RBAC); every other request is decided by RBAC over the Role, ClusterRole, RoleBinding and
//! ClusterRoleBinding objects in the store (`rbac.rs`), read through a cache that a store
//! watch keeps current — as kube's RBAC authorizer reads informers. A change to RBAC objects
//! takes effect once the watch delivers it (milliseconds), not within the write that made it.
//!
//! The default roles and bindings are written at start (`bootstrap.rs`).

pub mod attributes;
pub mod bootstrap;
pub mod rbac;

use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use meshwork_orchestrator_store::{AnyStore, Event, Store};
use tokio::sync::watch;

pub use attributes::Attributes;
pub use rbac::Policy;

use super::auth::User;

pub const MASTERS: &str = "system:masters";
const PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied; the reason kube appends to the message (`RBAC: ...`), often empty.
    Deny(String),
}

pub struct Authorizer {
    policy: RwLock<Arc<Policy>>,
    ready: watch::Sender<bool>,
}

/// (namespace, name) of a store key under `PREFIX`, and its plural.
fn parse_key(key: &str) -> Option<(&str, String, String)> {
    let rest = key.strip_prefix(PREFIX)?;
    let mut parts = rest.split('/');
    let plural = parts.next()?;
    let a = parts.next()?;
    match parts.next() {
        Some(name) => Some((plural, a.to_string(), name.to_string())),
        None => Some((plural, String::new(), a.to_string())),
    }
}

fn apply(p: &mut Policy, key: &str, value: Option<&[u8]>) {
    let Some((plural, ns, name)) = parse_key(key) else {
        return;
    };
    fn decode<T: serde::de::DeserializeOwned>(v: Option<&[u8]>) -> Option<T> {
        v.and_then(|v| serde_json::from_slice(v).ok())
    }
    match plural {
        "clusterroles" => match decode::<ClusterRole>(value) {
            Some(o) => drop(p.cluster_roles.insert(name, o)),
            None => drop(p.cluster_roles.remove(&name)),
        },
        "clusterrolebindings" => match decode::<ClusterRoleBinding>(value) {
            Some(o) => drop(p.cluster_bindings.insert(name, o)),
            None => drop(p.cluster_bindings.remove(&name)),
        },
        "roles" => match decode::<Role>(value) {
            Some(o) => drop(p.roles.insert((ns, name), o)),
            None => drop(p.roles.remove(&(ns, name))),
        },
        "rolebindings" => match decode::<RoleBinding>(value) {
            Some(o) => drop(p.bindings.insert((ns, name), o)),
            None => drop(p.bindings.remove(&(ns, name))),
        },
        _ => {}
    }
}

impl Authorizer {
    /// Starts the cache; it follows the store until `stop`.
    pub fn start(store: AnyStore, mut stop: watch::Receiver<bool>) -> Arc<Self> {
        let (ready, _) = watch::channel(false);
        let a = Arc::new(Authorizer {
            policy: RwLock::new(Arc::new(Policy::default())),
            ready,
        });
        let me = a.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = me.follow(&store) => {}
                _ = stop.changed() => {}
            }
        });
        a
    }

    async fn follow(&self, store: &AnyStore) {
        loop {
            let (items, rev) = match store.list(PREFIX).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "listing RBAC objects");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut p = Policy::default();
            for s in &items {
                apply(&mut p, &s.key, Some(&s.value));
            }
            self.set(p);
            self.ready.send_replace(true);
            let mut events = match store.watch(PREFIX, rev).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "watching RBAC objects");
                    continue;
                }
            };
            while let Some(ev) = events.next().await {
                let Ok(ev) = ev else { break };
                let mut p = (*self.policy()).clone();
                match &ev {
                    Event::Put { object, .. } => apply(&mut p, &object.key, Some(&object.value)),
                    Event::Delete { object, .. } => apply(&mut p, &object.key, None),
                }
                self.set(p);
            }
            tracing::debug!("RBAC watch ended; listing again");
            // A watch that keeps failing must not turn into a busy relist loop.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    fn set(&self, p: Policy) {
        if let Ok(mut g) = self.policy.write() {
            *g = Arc::new(p);
        }
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// Waits until the cache holds the store's RBAC objects.
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    pub fn authorize(&self, user: &User, a: &Attributes) -> Decision {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Decision::Allow;
        }
        let mut missing = Vec::new();
        if self.policy().allows(user, a, &mut missing) {
            return Decision::Allow;
        }
        if missing.is_empty() {
            Decision::Deny(String::new())
        } else {
            missing.sort();
            missing.dedup();
            Decision::Deny(format!("RBAC: {}", missing.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_kind_namespace_and_name() {
        assert_eq!(
            parse_key("/registry/rbac.authorization.k8s.io/rolebindings/app/read"),
            Some(("rolebindings", "app".into(), "read".into()))
        );
        assert_eq!(
            parse_key("/registry/rbac.authorization.k8s.io/clusterroles/view"),
            Some(("clusterroles", String::new(), "view".into()))
        );
    }
}
