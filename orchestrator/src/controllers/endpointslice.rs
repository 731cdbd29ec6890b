//! EndpointSlice: for each Service with a selector, slices listing the matching pods that have
//! an address — ready/serving/terminating conditions, named target ports resolved per pod (pods
//! resolving to different ports land in different slices), nodeName, targetRef, hostname when
//! the pod's subdomain is the Service — at most 100 endpoints per slice.

use std::collections::BTreeMap;

use anyhow::Context;
use k8s_openapi::{
    api::{
        core::v1::{ObjectReference, Pod, Service},
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    api::{Api, DeleteParams, PostParams},
    Client, ResourceExt,
};
use meshwork_service_model::{target_port, Conditions, SERVICE_NAME_LABEL};

use super::{
    runner::{keys, Event, Key, Obj, Reconcile},
    util::{controller_ref, pod_ready, template_hash},
    Caches,
};

pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub const MAX_ENDPOINTS: usize = 100;

pub struct Controller {
    client: Client,
    caches: Caches,
}

/// The slices a Service should have, by name.
pub fn desired(svc: &Service, pods: &[&Pod]) -> BTreeMap<String, EndpointSlice> {
    let mut out = BTreeMap::new();
    let Some(spec) = &svc.spec else { return out };
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    if spec.selector.as_ref().is_none_or(|s| s.is_empty())
        || spec.type_.as_deref() == Some("ExternalName")
    {
        return out;
    }
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    // Group endpoints by the ports they resolve to.
    let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    let mut sorted: Vec<&&Pod> = pods.iter().collect();
    sorted.sort_by_key(|p| p.name_any());
    for pod in sorted {
        if !selects(svc, pod) {
            continue;
        }
        let st = pod.status.clone().unwrap_or_default();
        if matches!(st.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(ip) = st.pod_ip.clone().filter(|i| !i.is_empty()) else {
            continue;
        };
        let pspec = pod.spec.clone().unwrap_or_default();
        let mut ports = Vec::new();
        for sp in spec.ports.iter().flatten() {
            if let Some(port) = target_port(sp, pod) {
                ports.push(EndpointPort {
                    name: Some(sp.name.clone().unwrap_or_default()),
                    port: Some(port),
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: sp.app_protocol.clone(),
                });
            }
        }
        let conditions = Conditions::for_pod(
            pod_ready(pod),
            pod.metadata.deletion_timestamp.is_some(),
            publish_not_ready,
        );
        let hostname = pspec
            .hostname
            .clone()
            .filter(|_| pspec.subdomain.as_deref() == Some(name.as_str()));
        let ep = Endpoint {
            addresses: vec![ip],
            conditions: Some(conditions.to_api()),
            hostname,
            node_name: pspec.node_name.clone(),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                namespace: Some(ns.clone()),
                uid: pod.uid(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let key = serde_json::to_string(&ports).unwrap_or_default();
        groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(ep);
    }
    let base: String = name.chars().take(50).collect();
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let slice =
        |slice_name: String, ports: Option<Vec<EndpointPort>>, eps: Vec<Endpoint>| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(slice_name),
                namespace: Some(ns.clone()),
                labels: Some(labels.clone()),
                owner_references: Some(vec![controller_ref("v1", "Service", &svc.metadata)]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps,
            ports,
        };
    if groups.is_empty() {
        let n = format!("{base}-{}", &template_hash(&serde_json::json!([]))[..5]);
        out.insert(n.clone(), slice(n, None, Vec::new()));
    }
    for (key, (ports, eps)) in groups {
        let h = template_hash(&serde_json::Value::String(key));
        for (i, chunk) in eps.chunks(MAX_ENDPOINTS).enumerate() {
            let n = format!("{base}-{}{i}", &h[..5]);
            out.insert(n.clone(), slice(n, Some(ports.clone()), chunk.to_vec()));
        }
    }
    out
}

fn same(a: &EndpointSlice, b: &EndpointSlice) -> bool {
    a.endpoints == b.endpoints
        && a.ports == b.ports
        && a.address_type == b.address_type
        && a.metadata.labels == b.metadata.labels
        && a.metadata.owner_references == b.metadata.owner_references
}

impl Controller {
    pub fn new(client: Client, caches: Caches) -> Self {
        Controller { client, caches }
    }
}

/// Whether `svc` selects `pod` (same namespace, every selector label).
fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    let labels = pod.metadata.labels.as_ref();
    !sel.is_empty()
        && svc.namespace() == pod.namespace()
        && sel
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

impl Reconcile for Controller {
    type Key = Key;
    const NAME: &'static str = "endpointslice";

    fn all(&self) -> Vec<Key> {
        keys(&self.caches.services)
    }

    /// The Service itself; a slice's Service; for a pod, the Services that select it now and
    /// those whose slices list it (its labels may have just changed).
    fn triggers(&self, ev: &Event, out: &mut Vec<Key>) {
        match ev.obj() {
            Some(Obj::Service(svc)) => out.push(Key::of(svc.as_ref())),
            Some(Obj::Slice(sl))
                if sl.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY) =>
            {
                if let Some(svc) = sl.labels().get(SERVICE_NAME_LABEL) {
                    out.push(Key::new(sl.namespace().unwrap_or_default(), svc.clone()));
                }
            }
            Some(Obj::Pod(p)) => {
                let ns = p.namespace();
                let name = p.name_any();
                for svc in self.caches.services.state() {
                    if selects(&svc, p) {
                        out.push(Key::of(svc.as_ref()));
                    }
                }
                for sl in self.caches.slices.state() {
                    if sl.namespace() != ns {
                        continue;
                    }
                    let lists = sl.endpoints.iter().any(|e| {
                        e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(&name)
                    });
                    if lists {
                        if let Some(svc) = sl.labels().get(SERVICE_NAME_LABEL) {
                            out.push(Key::new(sl.namespace().unwrap_or_default(), svc.clone()));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    async fn reconcile(&mut self, key: &Key) -> anyhow::Result<Option<std::time::Duration>> {
        // Slices of Services that are gone go with the garbage collector (ownerReferences).
        let Some(svc) = key.live(&self.caches.services) else {
            return Ok(None);
        };
        let pods = self.caches.pods.state();
        let in_ns: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(key.ns.as_str()))
            .map(|p| p.as_ref())
            .collect();
        let want = desired(&svc, &in_ns);
        let have: Vec<std::sync::Arc<EndpointSlice>> = self
            .caches
            .slices
            .state()
            .into_iter()
            .filter(|s| {
                s.namespace().as_deref() == Some(key.ns.as_str())
                    && s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
                    && s.labels().get(SERVICE_NAME_LABEL) == Some(&key.name)
            })
            .collect();
        self.apply(&key.ns, want, have).await?;
        Ok(None)
    }
}

impl Controller {
    async fn apply(
        &self,
        ns: &str,
        want: BTreeMap<String, EndpointSlice>,
        have: Vec<std::sync::Arc<EndpointSlice>>,
    ) -> anyhow::Result<()> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        for old in &have {
            if !want.contains_key(&old.name_any()) {
                match api.delete(&old.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e).context("deleting slice"),
                }
            }
        }
        for (name, mut slice) in want {
            match have.iter().find(|s| s.name_any() == name) {
                Some(old) if same(old, &slice) => {}
                Some(old) => {
                    slice.metadata.resource_version = old.resource_version();
                    match api.replace(&name, &PostParams::default(), &slice).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                        Err(e) => return Err(e).context("updating slice"),
                    }
                }
                None => match api.create(&PostParams::default(), &slice).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e).context("creating slice"),
                },
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i32) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("d".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(
                    [("app".to_string(), "web".to_string())]
                        .into_iter()
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some(port_name.into()),
                        container_port: port,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn svc() -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("d".into()),
                uid: Some("svc-uid".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(
                    [("app".to_string(), "web".to_string())]
                        .into_iter()
                        .collect(),
                ),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::String("http".into())),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn named_ports_resolve_per_pod_and_split_slices() {
        let a = pod("a", "10.0.0.1", true, "http", 8080);
        let b = pod("b", "10.0.0.2", false, "http", 9090);
        let c = pod("c", "10.0.0.3", true, "http", 8080);
        let out = desired(&svc(), &[&a, &b, &c]);
        assert_eq!(out.len(), 2, "{out:#?}");
        let by_port: BTreeMap<i32, &EndpointSlice> = out
            .values()
            .map(|s| (s.ports.as_ref().unwrap()[0].port.unwrap(), s))
            .collect();
        assert_eq!(by_port[&8080].endpoints.len(), 2);
        let b_ep = &by_port[&9090].endpoints[0];
        assert_eq!(b_ep.conditions.as_ref().unwrap().ready, Some(false));
        assert_eq!(b_ep.target_ref.as_ref().unwrap().name.as_deref(), Some("b"));
        let s = by_port[&8080];
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL],
            "web"
        );
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].uid,
            "svc-uid"
        );
    }

    #[test]
    fn at_most_100_endpoints_per_slice() {
        let pods: Vec<Pod> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &format!("10.0.{}.{}", i / 200, i % 200 + 1),
                    true,
                    "http",
                    80,
                )
            })
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let out = desired(&svc(), &refs);
        let sizes: Vec<usize> = out.values().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 250);
        assert!(sizes.iter().all(|n| *n <= MAX_ENDPOINTS), "{sizes:?}");
    }

    #[test]
    fn terminating_pods_are_not_ready_but_serving() {
        let mut a = pod("a", "10.0.0.1", true, "http", 80);
        a.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            crate::api::kind::now_seconds(),
        ));
        let out = desired(&svc(), &[&a]);
        let c = out.values().next().unwrap().endpoints[0]
            .conditions
            .clone()
            .unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );
    }
}
