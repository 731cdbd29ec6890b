//! What a request asks to do, in the terms authorization decides on: kube-apiserver's
//! `RequestInfoFactory` (`k8s.io/apiserver/pkg/endpoints/request/requestinfo.go` upstream).
//!
//! `/api/v1/...` and `/apis/<group>/<version>/...` with a resource are resource requests;
//! everything else (discovery `/api`, `/apis/<group>/<version>`, `/version`, `/healthz`,
//! `/openapi/...`, issuer discovery) is a non-resource request decided on path and verb.

use http::Method;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// False: a non-resource request, decided on `path`.
    pub resource_request: bool,
    pub path: String,
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

/// Subresources of a namespace that are not resources in their own right.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

impl Attributes {
    pub fn from_request(method: &Method, path: &str, query: Option<&str>) -> Self {
        let mut a = Attributes {
            path: path.to_string(),
            verb: method.as_str().to_lowercase(),
            ..Default::default()
        };
        let trimmed = path.trim_matches('/');
        let parts: Vec<&str> = if trimmed.is_empty() {
            vec![]
        } else {
            trimmed.split('/').collect()
        };
        let rest: &[&str] = match parts.as_slice() {
            ["api", v, rest @ ..] => {
                a.api_version = v.to_string();
                rest
            }
            ["apis", g, v, rest @ ..] => {
                a.api_group = g.to_string();
                a.api_version = v.to_string();
                rest
            }
            _ => return a,
        };
        if rest.is_empty() {
            // /api/v1 and /apis/<g>/<v>: discovery.
            a.api_group.clear();
            a.api_version.clear();
            return a;
        }
        a.resource_request = true;
        let mut rest = rest;
        // The deprecated /watch/ prefix means a watch of what follows.
        let mut watch_path = false;
        if rest.first() == Some(&"watch") {
            watch_path = true;
            rest = &rest[1..];
        }
        if rest.first() == Some(&"namespaces") && rest.len() > 1 {
            a.namespace = rest[1].to_string();
            if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
                rest = &rest[2..];
            }
        }
        if let Some(r) = rest.first() {
            a.resource = r.to_string();
        }
        if let Some(n) = rest.get(1) {
            a.name = n.to_string();
        }
        if let Some(s) = rest.get(2) {
            a.subresource = s.to_string();
        }
        // The last value of a repeated parameter counts, as in the API's own query parsing.
        let param = |key: &str| {
            query.and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .filter(|(k, _)| k == key)
                    .last()
                    .map(|(_, v)| v.into_owned())
            })
        };
        let watch_query = matches!(param("watch").as_deref(), Some("true" | "1"));
        a.verb = match *method {
            Method::POST => "create",
            Method::GET | Method::HEAD if watch_path || watch_query => "watch",
            Method::GET | Method::HEAD if a.name.is_empty() => "list",
            Method::GET | Method::HEAD => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if a.name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            _ => a.verb.as_str(),
        }
        .to_string();
        // A list or watch of one name (`fieldSelector=metadata.name=x`, what `kubectl get x -w`
        // and reflectors of one object send) is about that name, as kube reads it, so that
        // resourceNames rules can allow it.
        if matches!(a.verb.as_str(), "list" | "watch") && a.name.is_empty() {
            if let Some(sel) = param("fieldSelector") {
                let one = sel
                    .strip_prefix("metadata.name==")
                    .or_else(|| sel.strip_prefix("metadata.name="))
                    .filter(|n| {
                        !n.contains(',') && crate::api::validation::path_segment(n).is_none()
                    });
                if let Some(n) = one {
                    a.name = n.to_string();
                }
            }
        }
        // exec, attach and port-forward are creates whatever the method: WebSocket clients
        // open them with GET, and kube (AuthorizePodWebsocketUpgradeCreatePermission, on
        // since 1.30) asks for `create` then too.
        if a.resource == "pods"
            && matches!(a.subresource.as_str(), "exec" | "attach" | "portforward")
        {
            a.verb = "create".into();
        }
        a
    }

    /// `pods/exec` or `pods`.
    pub fn full_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// The qualified resource kube names in a denial: `deployments.apps`, `pods`.
    pub fn qualified_resource(&self) -> String {
        if self.api_group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.api_group)
        }
    }

    /// kube's `forbiddenMessage`: who cannot do what.
    pub fn denial(&self, user: &str) -> String {
        if !self.resource_request {
            return format!("User {user:?} cannot {} path {:?}", self.verb, self.path);
        }
        let r = self.full_resource();
        if self.namespace.is_empty() {
            format!(
                "User {user:?} cannot {} resource {r:?} in API group {:?} at the cluster scope",
                self.verb, self.api_group
            )
        } else {
            format!(
                "User {user:?} cannot {} resource {r:?} in API group {:?} in the namespace {:?}",
                self.verb, self.api_group, self.namespace
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(m: Method, p: &str, q: Option<&str>) -> Attributes {
        Attributes::from_request(&m, p, q)
    }

    #[test]
    fn verbs_and_resources_as_kube_reads_them() {
        let a = at(Method::GET, "/api/v1/namespaces/d/pods", None);
        assert_eq!(
            (
                a.verb.as_str(),
                a.namespace.as_str(),
                a.resource.as_str(),
                a.resource_request
            ),
            ("list", "d", "pods", true)
        );
        let a = at(
            Method::GET,
            "/api/v1/namespaces/d/pods",
            Some("watch=true&x=1"),
        );
        assert_eq!(a.verb, "watch");
        let a = at(Method::GET, "/api/v1/watch/namespaces/d/pods/p", None);
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", "p"));
        let a = at(
            Method::PATCH,
            "/apis/apps/v1/namespaces/d/deployments/web/scale",
            None,
        );
        assert_eq!(
            (
                a.verb.as_str(),
                a.api_group.as_str(),
                a.full_resource().as_str(),
                a.name.as_str()
            ),
            ("patch", "apps", "deployments/scale", "web")
        );
        let a = at(Method::DELETE, "/api/v1/namespaces/d/configmaps", None);
        assert_eq!(a.verb, "deletecollection");
        let a = at(
            Method::GET,
            "/api/v1/namespaces/d/pods",
            Some("watch=true&watch=false"),
        );
        assert_eq!(a.verb, "list", "the last value counts");
        let a = at(
            Method::GET,
            "/api/v1/namespaces/d/secrets",
            Some("watch=1&fieldSelector=metadata.name%3Dissuer"),
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", "issuer"));
        let a = at(
            Method::GET,
            "/api/v1/namespaces/d/secrets",
            Some("fieldSelector=metadata.name%3Da,type%3Dx"),
        );
        assert_eq!(a.name, "", "only a selector of one name names it");
        let a = at(
            Method::GET,
            "/api/v1/namespaces/d/pods/p/exec",
            Some("command=ls"),
        );
        assert_eq!(
            (a.verb.as_str(), a.full_resource().as_str()),
            ("create", "pods/exec")
        );
        let a = at(
            Method::POST,
            "/api/v1/namespaces/d/serviceaccounts/x/token",
            None,
        );
        assert_eq!(
            (a.verb.as_str(), a.full_resource().as_str()),
            ("create", "serviceaccounts/token")
        );
    }

    #[test]
    fn namespaces_are_their_own_namespace() {
        let a = at(Method::GET, "/api/v1/namespaces/kube-system", None);
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.namespace.as_str()),
            ("namespaces", "kube-system", "kube-system")
        );
        let a = at(Method::PUT, "/api/v1/namespaces/x/finalize", None);
        assert_eq!(
            (a.full_resource().as_str(), a.name.as_str()),
            ("namespaces/finalize", "x")
        );
        let a = at(Method::GET, "/api/v1/namespaces", None);
        assert_eq!((a.verb.as_str(), a.namespace.as_str()), ("list", ""));
        let a = at(Method::GET, "/api/v1/nodes/n1", None);
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.namespace.as_str()),
            ("nodes", "n1", "")
        );
    }

    #[test]
    fn discovery_and_other_paths_are_non_resource() {
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/openapi/v3",
            "/.well-known/openid-configuration",
        ] {
            let a = at(Method::GET, p, None);
            assert!(!a.resource_request, "{p}");
            assert_eq!(a.verb, "get");
        }
    }

    #[test]
    fn denials_read_as_kube_apiserver_words_them() {
        let a = at(Method::GET, "/api/v1/namespaces/default/pods", None);
        assert_eq!(
            a.denial("alice"),
            "User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let a = at(Method::GET, "/api/v1/nodes", None);
        assert_eq!(
            a.denial("bob"),
            "User \"bob\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        );
        let a = at(Method::GET, "/metrics", None);
        assert_eq!(a.denial("c"), "User \"c\" cannot get path \"/metrics\"");
    }
}
