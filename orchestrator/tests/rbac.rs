//! RBAC through real kubectl against the API server binary: the default ClusterRoles and
//! bindings; `kubectl create role|clusterrole|rolebinding|clusterrolebinding` (protobuf
//! bodies); enforcement on a plain user with kube's 403 wording; `kubectl auth can-i` (also
//! `--list`) and `auth whoami`; SubjectAccessReview for a delegating component; and the
//! escalation check (a user may not grant what it does not hold).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

mod common;

use std::time::Duration;

use common::{kubectl::Kubectl, ServerProc};
use serde_json::Value;

/// A kubeconfig for `user` in `groups`, written by the server's own command.
fn kubeconfig_for(
    data: &std::path::Path,
    url: &str,
    user: &str,
    groups: &[&str],
) -> std::path::PathBuf {
    let out = data.join(format!("{}.kubeconfig", user.replace(':', "_")));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_meshwork-orchestrator"));
    cmd.args(["kubeconfig", "--data-dir"]).arg(data);
    cmd.args(["--server", url, "--user", user, "--out"])
        .arg(&out);
    for g in groups {
        cmd.args(["--group", g]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Retries until `f` holds: RBAC reads a watch cache, a grant holds once it is delivered.
fn eventually(what: &str, f: impl FnMut() -> bool) {
    meshwork_lab::wait::eventually_true(what, Duration::from_secs(10), f)
}

#[test]
fn roles_bindings_can_i_and_escalation_through_kubectl() {
    let dir = tempfile::Builder::new()
        .prefix("mwapi-rbac-")
        .tempdir()
        .unwrap();
    let data = dir.path().join("data");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let server = ServerProc::start(&data, &[]);
    let admin = Kubectl {
        kubeconfig: &server.kubeconfig,
        home: &home,
    };
    let alice_kc = kubeconfig_for(&data, &server.url, "alice", &["devs"]);
    let alice = Kubectl {
        kubeconfig: &alice_kc,
        home: &home,
    };

    // The default policy kube users expect.
    let roles = admin.ok(&["get", "clusterroles", "-o", "name"], "");
    for r in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:discovery",
        "system:basic-user",
        "system:node",
        "system:auth-delegator",
    ] {
        assert!(
            roles
                .lines()
                .any(|l| l == format!("clusterrole.rbac.authorization.k8s.io/{r}")),
            "{r} missing:\n{roles}"
        );
    }
    let out = admin.ok(
        &["get", "clusterrolebinding", "cluster-admin", "-o", "wide"],
        "",
    );
    assert!(
        out.contains("ClusterRole/cluster-admin") && out.contains("system:masters"),
        "{out}"
    );

    // A user with no grant: discovery and who-am-I work, everything else is 403 in kube's words.
    let who = alice.ok(&["auth", "whoami", "-o", "json"], "");
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "alice");
    assert!(who["status"]["userInfo"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g == "devs"));
    let err = alice.fails(&["get", "pods", "-n", "default"], "");
    assert!(
        err.contains("pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
        "{err}"
    );
    let err = alice.fails(&["get", "deployment", "web", "-n", "default"], "");
    assert!(
        err.contains("deployments.apps \"web\" is forbidden: User \"alice\" cannot get resource \"deployments\" in API group \"apps\" in the namespace \"default\""),
        "{err}"
    );
    let err = alice.fails(&["get", "nodes"], "");
    assert!(err.contains("at the cluster scope"), "{err}");
    let (ok, out, _) = alice.run_in(&["auth", "can-i", "list", "pods"], "");
    assert!(!ok && out.trim() == "no", "{out}");

    // kubectl's generators (protobuf bodies) make a namespaced grant.
    admin.ok(&["create", "namespace", "team"], "");
    admin.ok(
        &[
            "create",
            "role",
            "pod-reader",
            "-n",
            "team",
            "--verb=get,list,watch",
            "--resource=pods,pods/log",
        ],
        "",
    );
    admin.ok(
        &[
            "create",
            "rolebinding",
            "alice-reads",
            "-n",
            "team",
            "--role=pod-reader",
            "--user=alice",
        ],
        "",
    );
    eventually("alice lists pods in team", || {
        alice.run_in(&["get", "pods", "-n", "team"], "").0
    });
    let yes = |args: &[&str]| {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        alice.run_in(&a, "").1.trim().to_string()
    };
    assert_eq!(yes(&["list", "pods", "-n", "team"]), "yes");
    assert_eq!(
        yes(&["get", "pods", "--subresource=log", "-n", "team"]),
        "yes"
    );
    assert_eq!(
        yes(&["get", "pods", "--subresource=exec", "-n", "team"]),
        "no"
    );
    assert_eq!(yes(&["delete", "pods", "-n", "team"]), "no");
    assert_eq!(yes(&["list", "pods", "-n", "default"]), "no");
    let list = alice.ok(&["auth", "can-i", "--list", "-n", "team"], "");
    assert!(
        list.lines()
            .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{list}"
    );
    let rb = admin.ok(
        &[
            "get",
            "rolebinding",
            "alice-reads",
            "-n",
            "team",
            "-o",
            "wide",
        ],
        "",
    );
    assert!(
        rb.contains("Role/pod-reader") && rb.contains("alice"),
        "{rb}"
    );

    // Group grants through a cluster-wide binding, and a ClusterRole used in one namespace.
    admin.ok(
        &[
            "create",
            "clusterrole",
            "node-viewer",
            "--verb=get,list",
            "--resource=nodes",
        ],
        "",
    );
    admin.ok(
        &[
            "create",
            "clusterrolebinding",
            "devs-nodes",
            "--clusterrole=node-viewer",
            "--group=devs",
        ],
        "",
    );
    eventually("devs list nodes", || alice.run_in(&["get", "nodes"], "").0);
    admin.ok(
        &[
            "create",
            "rolebinding",
            "alice-edit",
            "-n",
            "team",
            "--clusterrole=edit",
            "--user=alice",
        ],
        "",
    );
    eventually("alice edits in team", || {
        yes(&["create", "configmaps", "-n", "team"]) == "yes"
    });
    alice.ok(
        &[
            "create",
            "configmap",
            "c",
            "-n",
            "team",
            "--from-literal=k=v",
        ],
        "",
    );
    assert_eq!(yes(&["create", "configmaps", "-n", "default"]), "no");

    // Escalation: alice (edit in team, no RBAC rights beyond) may not write roles at all, and
    // an admin of the namespace may not grant what it does not hold.
    let err = alice.fails(
        &[
            "create",
            "role",
            "x",
            "-n",
            "team",
            "--verb=get",
            "--resource=pods",
        ],
        "",
    );
    assert!(err.contains("roles.rbac.authorization.k8s.io is forbidden: User \"alice\" cannot create resource \"roles\""), "{err}");
    admin.ok(
        &[
            "create",
            "rolebinding",
            "alice-admin",
            "-n",
            "team",
            "--clusterrole=admin",
            "--user=alice",
        ],
        "",
    );
    eventually("alice administers team", || {
        yes(&["create", "roles", "-n", "team"]) == "yes"
    });
    alice.ok(
        &[
            "create",
            "role",
            "cm-reader",
            "-n",
            "team",
            "--verb=get",
            "--resource=configmaps",
        ],
        "",
    );
    let err = alice.fails(
        &[
            "create",
            "role",
            "node-deleter",
            "-n",
            "team",
            "--verb=delete",
            "--resource=nodes",
        ],
        "",
    );
    assert!(
        err.contains(
            "roles.rbac.authorization.k8s.io \"node-deleter\" is forbidden: user \"alice\""
        ) && err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    let err = alice.fails(
        &[
            "create",
            "rolebinding",
            "bob-admin",
            "-n",
            "team",
            "--clusterrole=cluster-admin",
            "--user=bob",
        ],
        "",
    );
    assert!(
        err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    alice.ok(
        &[
            "create",
            "rolebinding",
            "bob-view",
            "-n",
            "team",
            "--clusterrole=view",
            "--user=bob",
        ],
        "",
    );
    // A binding to a role that does not exist (yet) would grant whatever it later holds.
    let err = alice.fails(
        &[
            "create",
            "rolebinding",
            "bob-later",
            "-n",
            "team",
            "--clusterrole=not-yet",
            "--user=bob",
        ],
        "",
    );
    assert!(
        err.contains("clusterroles.rbac.authorization.k8s.io \"not-yet\" not found"),
        "{err}"
    );
    // resourceNames allow a list or watch of that one name (what `get NAME -w` sends).
    admin.ok(
        &[
            "create",
            "configmap",
            "named",
            "-n",
            "team",
            "--from-literal=k=v",
        ],
        "",
    );
    admin.ok(
        &[
            "create",
            "role",
            "one-cm",
            "-n",
            "team",
            "--verb=get,list,watch",
            "--resource=configmaps",
            "--resource-name=named",
        ],
        "",
    );
    admin.ok(
        &[
            "create",
            "rolebinding",
            "carol-one-cm",
            "-n",
            "team",
            "--role=one-cm",
            "--user=carol",
        ],
        "",
    );
    let carol_kc = kubeconfig_for(&data, &server.url, "carol", &[]);
    let carol = Kubectl {
        kubeconfig: &carol_kc,
        home: &home,
    };
    let one = "/api/v1/namespaces/team/configmaps?fieldSelector=metadata.name%3Dnamed";
    eventually("carol lists the one configmap", || {
        carol.run_in(&["get", "--raw", one], "").0
    });
    let err = carol.fails(&["get", "--raw", "/api/v1/namespaces/team/configmaps"], "");
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );

    // Bad objects are refused with kube's causes and change nothing.
    let bad = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: bad\n  namespace: team\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Secret\n  name: x\nsubjects:\n- kind: Robot\n  name: r\n";
    let err = admin.fails(&["create", "-f", "-"], bad);
    assert!(
        err.contains("roleRef.kind: Unsupported value: \"Secret\"")
            && err.contains("subjects[0].kind: Unsupported value: \"Robot\""),
        "{err}"
    );
    let err = admin.fails(
        &[
            "patch",
            "rolebinding",
            "alice-reads",
            "-n",
            "team",
            "--type=merge",
            "-p",
            "{\"roleRef\":{\"name\":\"other\"}}",
        ],
        "",
    );
    assert!(err.contains("cannot change roleRef"), "{err}");

    // Revoking takes effect.
    admin.ok(
        &[
            "delete",
            "rolebinding",
            "alice-reads",
            "alice-edit",
            "alice-admin",
            "-n",
            "team",
        ],
        "",
    );
    eventually("alice loses team", || {
        !alice.run_in(&["get", "pods", "-n", "team"], "").0
    });

    // A delegating component asks about someone else (SubjectAccessReview).
    let sar = "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: bob\n  resourceAttributes:\n    namespace: team\n    verb: list\n    resource: pods\n";
    let out: Value =
        serde_json::from_str(&admin.ok(&["create", "-f", "-", "-o", "json"], sar)).unwrap();
    assert_eq!(out["status"]["allowed"], true, "{out}");
    let denied = sar.replace("namespace: team", "namespace: default");
    let out: Value =
        serde_json::from_str(&admin.ok(&["create", "-f", "-", "-o", "json"], &denied)).unwrap();
    assert_eq!(out["status"]["allowed"], false, "{out}");
}
