//! Authorization, the small fixed policy of a single-machine cluster:
//! `system:masters` may do anything; `system:nodes` (node agents) may read everything and
//! write Nodes, Pods (with their status) and Events; any other authenticated user may read.
//! exec, attach and port-forward into pods are for `system:masters` only. Service accounts
//! (`system:serviceaccounts`) are such other users: they read until RBAC lands.
//!
//! TokenReview is a create that nodes and service accounts may also make: kube grants it to
//! `system:auth-delegator`, which is how a delegating component (the planned mesh identity
//! service, with its own service account token) checks the tokens presented to it.

use http::Method;

use super::auth::User;

pub fn allowed(user: &User, method: &Method, path: &str) -> bool {
    if user.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    // exec, attach and port-forward are `create` on their subresource whatever the method
    // (WebSocket clients send GET): only system:masters, as no other group may write pods'
    // subresources of that kind.
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if matches!(
        segs.as_slice(),
        [
            "api",
            "v1",
            "namespaces",
            _,
            "pods",
            _,
            "exec" | "attach" | "portforward"
        ]
    ) {
        return false;
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    if *method == Method::POST
        && segs.as_slice() == ["apis", "authentication.k8s.io", "v1", "tokenreviews"]
    {
        return user
            .groups
            .iter()
            .any(|g| g == "system:nodes" || g == "system:serviceaccounts");
    }
    if user.groups.iter().any(|g| g == "system:nodes") {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        return matches!(
            segs.as_slice(),
            ["api", "v1", "nodes", ..] | ["api", "v1", "namespaces", _, "pods" | "events", ..]
        );
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(groups: &[&str]) -> User {
        User {
            name: "u".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..User::default()
        }
    }

    #[test]
    fn policy() {
        let node = user(&["system:nodes"]);
        let admin = user(&["system:masters"]);
        let other = user(&[]);
        let sa = user(&[
            "system:serviceaccounts",
            "system:serviceaccounts:d",
            "system:authenticated",
        ]);
        let review = "/apis/authentication.k8s.io/v1/tokenreviews";
        let cases = [
            (&admin, Method::DELETE, "/api/v1/namespaces/x", true),
            (&node, Method::GET, "/apis/apps/v1/deployments", true),
            (
                &node,
                Method::PATCH,
                "/api/v1/namespaces/d/pods/p/status",
                true,
            ),
            (&node, Method::PUT, "/api/v1/nodes/n1/status", true),
            (&node, Method::POST, "/api/v1/namespaces/d/events", true),
            (&node, Method::POST, "/api/v1/namespaces/d/services", false),
            (&node, Method::DELETE, "/api/v1/namespaces/d", false),
            (&other, Method::GET, "/api/v1/pods", true),
            (
                &other,
                Method::GET,
                "/api/v1/namespaces/d/pods/p/exec",
                false,
            ),
            (
                &node,
                Method::POST,
                "/api/v1/namespaces/d/pods/p/portforward",
                false,
            ),
            (
                &admin,
                Method::GET,
                "/api/v1/namespaces/d/pods/p/exec",
                true,
            ),
            (
                &other,
                Method::POST,
                "/api/v1/namespaces/d/configmaps",
                false,
            ),
            (&sa, Method::GET, "/api/v1/namespaces/d/pods", true),
            (&sa, Method::POST, "/api/v1/namespaces/d/configmaps", false),
            (
                &sa,
                Method::POST,
                "/api/v1/namespaces/d/serviceaccounts/x/token",
                false,
            ),
            (&sa, Method::POST, review, true),
            (&node, Method::POST, review, true),
            (&admin, Method::POST, review, true),
            (&other, Method::POST, review, false),
            (&sa, Method::DELETE, review, false),
        ];
        for (u, m, p, want) in cases {
            assert_eq!(allowed(u, &m, p), want, "{:?} {m} {p}", u.groups);
        }
    }
}
