//! The ServiceAccount admission of pods, as kube-apiserver's `ServiceAccount` plugin
//! (`plugin/pkg/admission/serviceaccount/admission.go` upstream) does it on create:
//!
//! - a pod naming no service account runs as `default`;
//! - the service account must exist — except `default`, which the ServiceAccount controller
//!   creates moments after its namespace: kube refuses such a pod and its controllers retry,
//!   a bare `kubectl run` right after `create namespace` would fail instead. The node's token
//!   request waits for the account (the kubelet retries), so nothing runs unidentified;
//! - unless the pod or else its account sets `automountServiceAccountToken: false`, the pod gets
//!   the `kube-api-access-<random>` projected volume (a bound token of 3607 s, the cluster CA
//!   from the `kube-root-ca.crt` ConfigMap, the namespace) mounted read-only at
//!   `/var/run/secrets/kubernetes.io/serviceaccount` in every container that mounts nothing
//!   there itself. The node runtime (`node/volumes.rs`) fills and refreshes it.

use serde_json::{json, Value};

use super::{error::ApiError, kind::random_suffix, Api};

pub const TOKEN_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// kube's default for the automounted token: an hour, plus 7 s so that a token's life tells
/// it apart from user-requested ones.
pub const AUTOMOUNT_EXPIRATION: i64 = 3607;
const VOLUME_PREFIX: &str = "kube-api-access-";
const DEFAULT_SA: &str = "default";

/// The projected volume kube's admission adds.
pub fn api_access_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": AUTOMOUNT_EXPIRATION, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// Adds the token volume and mounts to a pod (JSON) whose automount is on; `volume` is the
/// name to use. Containers that already mount something at the token path keep theirs.
pub fn mount_token(pod: &mut Value, volume: &str) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let mounts = c
                .as_object_mut()
                .map(|c| c.entry("volumeMounts").or_insert_with(|| json!([])));
            let Some(mounts) = mounts.and_then(Value::as_array_mut) else {
                continue;
            };
            if mounts
                .iter()
                .any(|m| m["mountPath"].as_str() == Some(TOKEN_MOUNT))
            {
                continue;
            }
            mounts.push(json!({"name": volume, "readOnly": true, "mountPath": TOKEN_MOUNT}));
            mounted = true;
        }
    }
    if mounted {
        let vols = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(v) = vols.as_array_mut() {
            v.push(api_access_volume(volume));
        }
    }
}

impl Api {
    /// Admits a new pod (its JSON, already defaulted and validated) in `ns`.
    pub(crate) async fn admit_pod(&self, bytes: Vec<u8>, ns: &str) -> Result<Vec<u8>, ApiError> {
        let mut pod: Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::Internal(e.to_string()))?;
        // serviceAccountName, else the deprecated serviceAccount, else default (kube's order).
        let name = pod["spec"]["serviceAccountName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                pod["spec"]["serviceAccount"]
                    .as_str()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or(DEFAULT_SA)
            .to_string();
        let sa: Option<Value> = match self.core_json("serviceaccounts", Some(ns), &name).await {
            Ok(v) => Some(v),
            Err(ApiError::NotFound { .. }) if name == DEFAULT_SA => None,
            Err(ApiError::NotFound { .. }) => {
                let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
                return Err(ApiError::Forbidden(format!(
                    "pods \"{pod_name}\" is forbidden: error looking up service account {ns}/{name}: serviceaccount \"{name}\" not found"
                )));
            }
            Err(e) => return Err(e),
        };
        pod["spec"]["serviceAccountName"] = json!(name);
        pod["spec"]["serviceAccount"] = json!(name);
        let automount = pod["spec"]["automountServiceAccountToken"]
            .as_bool()
            .or_else(|| sa.as_ref()?["automountServiceAccountToken"].as_bool())
            .unwrap_or(true);
        if automount {
            mount_token(&mut pod, &format!("{VOLUME_PREFIX}{}", random_suffix()));
        }
        serde_json::to_vec(&pod).map_err(|e| ApiError::Internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_in_every_container_not_mounting_the_path_itself() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "i"}],
            "containers": [
                {"name": "a", "volumeMounts": [{"name": "x", "mountPath": "/x"}]},
                {"name": "b", "volumeMounts": [{"name": "mine", "mountPath": TOKEN_MOUNT}]},
            ],
        }});
        mount_token(&mut pod, "kube-api-access-abcde");
        let s = &pod["spec"];
        assert_eq!(s["volumes"][0]["name"], "kube-api-access-abcde");
        assert_eq!(
            s["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        assert_eq!(
            s["initContainers"][0]["volumeMounts"][0]["mountPath"],
            TOKEN_MOUNT
        );
        assert_eq!(s["containers"][0]["volumeMounts"][1]["readOnly"], true);
        assert_eq!(
            s["containers"][1]["volumeMounts"].as_array().unwrap().len(),
            1
        );
    }

    #[test]
    fn no_volume_when_every_container_mounts_its_own() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "b", "volumeMounts": [{"name": "mine", "mountPath": TOKEN_MOUNT}]},
        ]}});
        mount_token(&mut pod, "kube-api-access-abcde");
        assert!(pod["spec"].get("volumes").is_none());
    }
}
