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
use meshwork_orchestrator_store::{AnyStore, Event, Store, StoreError};
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
    /// The store revision the cache reflects (None until the first list).
    seen: watch::Sender<Option<meshwork_orchestrator_store::Revision>>,
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
        let (seen, _) = watch::channel(None);
        let a = Arc::new(Authorizer {
            policy: RwLock::new(Arc::new(Policy::default())),
            seen,
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
            self.seen.send_replace(Some(rev));
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
                self.seen.send_replace(Some(ev.revision()));
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

    /// Waits until the cache holds every RBAC write the store had made when this was called.
    /// The server's start waits on this after writing the default policy: the first list may
    /// have run before those writes, and a node's first request (its `system:node` role) must
    /// not race the watch that brings them (a 403 seen under load).
    pub async fn synced_with(&self, store: &AnyStore) -> Result<(), StoreError> {
        let (items, _) = store.list(PREFIX).await?;
        let last = items.iter().map(|s| s.mod_revision).max().unwrap_or(0);
        self.caught_up(last).await;
        Ok(())
    }

    async fn caught_up(&self, rev: meshwork_orchestrator_store::Revision) {
        let mut rx = self.seen.subscribe();
        let _ = rx.wait_for(|r| r.is_some_and(|seen| seen >= rev)).await;
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
    use meshwork_orchestrator_store::{SqliteStore, SqliteSync};

    /// What the server's start waits on: a role written after the cache's first list is in
    /// force once `synced_with` returns, with nothing else awaited in between (one thread:
    /// the watch task gets a turn only if the wait gives it one).
    #[tokio::test(flavor = "current_thread")]
    async fn synced_with_waits_for_writes_after_the_first_list() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let store = AnyStore::Sqlite(
            SqliteStore::open(&dir.path().join("s.db"), SqliteSync::Normal)
                .unwrap_or_else(|e| panic!("store: {e}")),
        );
        let (_stop, stop) = watch::channel(false);
        let authz = Authorizer::start(store.clone(), stop);
        authz
            .synced_with(&store)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let alice = User {
            name: "alice".into(),
            uid: String::new(),
            groups: vec![],
            extra: Default::default(),
        };
        let list = Attributes::from_request(&http::Method::GET, "/api/v1/namespaces/d/pods", None);
        assert!(matches!(authz.authorize(&alice, &list), Decision::Deny(_)));
        let role = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "read"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]});
        let binding = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "read"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "read"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]});
        // Written from another thread while this one is blocked: the cache's watch task gets
        // no turn before the wait below (the old start's `ready()` returned here at once).
        let writer = store.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap_or_else(|e| panic!("runtime: {e}"));
            for (key, v) in [
                ("clusterroles/read", role),
                ("clusterrolebindings/read", binding),
            ] {
                rt.block_on(writer.create(&format!("{PREFIX}{key}"), v.to_string().into_bytes()))
                    .unwrap_or_else(|e| panic!("{key}: {e}"));
            }
        })
        .join()
        .unwrap_or_else(|_| panic!("writer thread"));
        authz
            .synced_with(&store)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(authz.authorize(&alice, &list), Decision::Allow);
    }

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
