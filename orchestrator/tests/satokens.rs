//! ServiceAccount tokens over HTTPS, as kube-apiserver serves them: TokenRequest
//! (`serviceaccounts/token`, also through `kubectl create token`, which sends protobuf),
//! TokenReview, the tokens as bearer credentials under RBAC (403 until a RoleBinding grants
//! reads; refused outright once the ServiceAccount or the bound object is gone), issuer
//! discovery and the JWKS verifying a token, bad input; then, against the binary with its
//! controllers: the `default` ServiceAccount of every namespace, the `kubernetes` Service and
//! its EndpointSlice, and the signing key surviving a restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: panics are the report"
)]

mod common;

use std::{path::Path, time::Duration};

use base64::Engine;
use common::{kubectl::Kubectl, Backend, Cluster, ServerProc};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, Service, ServiceAccount};
use kube::{
    api::{DeleteParams, ListParams, PostParams},
    Api, ResourceExt,
};
use serde_json::{json, Value};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn b64url(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

/// (header, payload) of a compact JWS, unverified.
fn jwt_parts(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.trim().split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS: {token}");
    (
        serde_json::from_slice(&b64url(parts[0])).unwrap(),
        serde_json::from_slice(&b64url(parts[1])).unwrap(),
    )
}

fn now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

/// A kube-rs client that presents `token` (built from a kubeconfig, as a workload's would be).
async fn client_with(dir: &Path, url: &str, token: &str) -> kube::Client {
    let ca = std::fs::read_to_string(dir.join("pki/ca.crt")).unwrap();
    let kc = dir.join(format!("sa-{}.kubeconfig", uuid::Uuid::new_v4()));
    meshwork_orchestrator::server::kubeconfig::write(&kc, url, &ca, "sa", token).unwrap();
    kube::Client::try_from(common::client_config(&kc).await).unwrap()
}

async fn create_sa(c: &Cluster, name: &str) -> ServiceAccount {
    let api: Api<ServiceAccount> = Api::namespaced(c.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
    )
    .await
    .unwrap()
}

/// POST a TokenRequest body; (status, warnings, answer).
async fn token_request(c: &Cluster, sa: &str, body: Value) -> (u16, Vec<String>, Value) {
    c.raw(
        "POST",
        &format!("/api/v1/namespaces/default/serviceaccounts/{sa}/token"),
        "application/json",
        serde_json::to_vec(&body).unwrap(),
    )
    .await
}

async fn mint(c: &Cluster, sa: &str, spec: Value) -> String {
    let (code, _, v) = token_request(c, sa, json!({"spec": spec})).await;
    assert_eq!(code, 201, "{v}");
    v["status"]["token"].as_str().unwrap().to_string()
}

async fn review_with(client: &kube::Client, token: &str, audiences: Option<&[&str]>) -> Value {
    let mut spec = json!({"token": token});
    if let Some(a) = audiences {
        spec["audiences"] = json!(a);
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec});
    let (code, _, v) = common::raw_with(
        client,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        "application/json",
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["kind"], "TokenReview");
    v["status"].clone()
}

async fn review(c: &Cluster, token: &str, audiences: Option<&[&str]>) -> Value {
    review_with(&c.client, token, audiences).await
}

fn refused(status: &Value, why: &str) {
    assert_ne!(status["authenticated"], true, "{status}");
    assert_eq!(status["error"], why, "{status}");
}

/// The status code of a request `client` makes (200, 401, 403, ...).
async fn code_of<T>(r: kube::Result<T>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("expected an API answer, got {e:?}"),
    }
}

/// Signs `claims` with the key in `pem` (the server's `pki/sa.key`, or another).
fn sign(pem: &[u8], kid: &str, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.typ = None;
    h.kid = Some(kid.into());
    jsonwebtoken::encode(
        &h,
        claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(pem).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn token_requests_reviews_bearer_use_and_discovery() {
    let c = Cluster::start(Backend::Sqlite).await;
    let robot = create_sa(&c, "robot").await;
    let robot_uid = robot.uid().unwrap();

    // TokenRequest with defaults: the API server's audience, an hour, kube's claims.
    let (code, warnings, tr) = token_request(
        &c,
        "robot",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
    )
    .await;
    assert_eq!(code, 201, "{tr}");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(tr["kind"], "TokenRequest");
    assert_eq!(tr["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(tr["metadata"]["name"], "robot");
    assert_eq!(tr["spec"]["audiences"], json!([ISSUER]));
    assert_eq!(tr["spec"]["expirationSeconds"], 3600);
    let token = tr["status"]["token"].as_str().unwrap().to_string();
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["alg"], "ES256");
    let kid = header["kid"].as_str().unwrap().to_string();
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "system:serviceaccount:default:robot");
    assert_eq!(claims["aud"], json!([ISSUER]));
    let iat = claims["iat"].as_i64().unwrap();
    assert!((iat - now()).abs() < 30, "{claims}");
    assert_eq!(claims["nbf"], iat);
    assert_eq!(claims["exp"].as_i64().unwrap() - iat, 3600);
    let jti = claims["jti"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&jti).is_ok(), "{jti}");
    assert_eq!(
        claims["kubernetes.io"],
        json!({"namespace": "default", "serviceaccount": {"name": "robot", "uid": robot_uid}})
    );
    let expires: k8s_openapi::jiff::Timestamp = tr["status"]["expirationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(expires.as_second(), iat + 3600);

    // TokenReview of the good token: kube's user, groups, extra and audiences.
    let st = review(&c, &token, None).await;
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(
        st["user"],
        json!({
            "username": "system:serviceaccount:default:robot",
            "uid": robot_uid,
            "groups": ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/credential-id": [format!("JTI={jti}")]},
        })
    );
    assert_eq!(st["audiences"], json!([ISSUER]));
    assert!(st.get("error").is_none(), "{st}");

    // Another audience: refused for the API server, accepted when that audience is asked.
    let mesh = mint(&c, "robot", json!({"audiences": ["mesh", "other"]})).await;
    refused(
        &review(&c, &mesh, None).await,
        &format!("[invalid bearer token, token audiences [\"mesh\" \"other\"] is invalid for the target audiences [\"{ISSUER}\"]]"),
    );
    let st = review(&c, &mesh, Some(&["mesh"])).await;
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(st["audiences"], json!(["mesh"]));
    let mesh_client = client_with(c.dir.path(), &c.running.url, &mesh).await;
    let pods: Api<Pod> = Api::namespaced(mesh_client, "default");
    assert_eq!(
        code_of(pods.list(&ListParams::default()).await).await,
        401,
        "not a credential for the API server"
    );

    // Expired (signed here with the server's own key: the API's minimum is 10 minutes),
    // garbage, and a token of our issuer signed by another key.
    let key = std::fs::read(c.dir.path().join("pki/sa.key")).unwrap();
    let mut old = claims.clone();
    old["iat"] = json!(now() - 7200);
    old["nbf"] = old["iat"].clone();
    old["exp"] = json!(now() - 3600);
    let expired = sign(&key, &kid, &old);
    refused(
        &review(&c, &expired, None).await,
        "[invalid bearer token, service account token has expired]",
    );
    let mut early = claims.clone();
    early["nbf"] = json!(now() + 3600);
    refused(
        &review(&c, &sign(&key, &kid, &early), None).await,
        "[invalid bearer token, service account token is not valid yet]",
    );
    refused(
        &review(&c, "not-a-token", None).await,
        "invalid bearer token",
    );
    refused(&review(&c, "a.b.c", None).await, "invalid bearer token");
    let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
    refused(
        &review(&c, &sign(other.as_bytes(), &kid, &claims), None).await,
        "[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]",
    );
    // A tampered payload fails the signature too.
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged_claims = claims.clone();
    forged_claims["sub"] = json!("system:serviceaccount:kube-system:default");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&forged_claims).unwrap()),
        parts[2]
    );
    refused(
        &review(&c, &forged, None).await,
        "[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]",
    );

    // Static tokens review too, for the API server's audience only.
    let admin = std::fs::read_to_string(c.dir.path().join("admin.token")).unwrap();
    let st = review(&c, admin.trim(), None).await;
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(st["user"]["username"], "admin");
    assert_eq!(
        st["user"]["groups"],
        json!(["system:masters", "system:authenticated"])
    );
    refused(
        &review(&c, admin.trim(), Some(&["mesh"])).await,
        "invalid bearer token",
    );

    // As a bearer credential: a user RBAC knows as the service account. Nothing is granted
    // to it at first (kube's wording on the 403); a RoleBinding to `view` lets it read, one
    // to system:auth-delegator lets it review tokens (the delegating-authenticator role).
    let sa_client = client_with(c.dir.path(), &c.running.url, &token).await;
    let pods: Api<Pod> = Api::namespaced(sa_client.clone(), "default");
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
            assert_eq!(
                e.message,
                "pods is forbidden: User \"system:serviceaccount:default:robot\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
            );
        }
        other => panic!("a service account with no role listed pods: {other:?}"),
    }
    let grant = |kind: &str, name: &str, role: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "default"}],
        })
    };
    let rb: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(c.client.clone(), "default");
    rb.create(
        &PostParams::default(),
        &serde_json::from_value(grant("RoleBinding", "robot-view", "view")).unwrap(),
    )
    .await
    .unwrap();
    let crb: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(c.client.clone());
    crb.create(
        &PostParams::default(),
        &serde_json::from_value(grant(
            "ClusterRoleBinding",
            "robot-delegator",
            "system:auth-delegator",
        ))
        .unwrap(),
    )
    .await
    .unwrap();
    // RBAC reads a watch cache: the grant holds once the watch delivers it.
    let t = std::time::Instant::now();
    while code_of(pods.list(&ListParams::default()).await).await != 200 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "the RoleBinding never took effect"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let cms: Api<ConfigMap> = Api::namespaced(sa_client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    assert_eq!(
        code_of(cms.create(&PostParams::default(), &cm).await).await,
        403
    );
    let (code, _, _) = token_request(&c, "robot", json!({})).await;
    assert_eq!(code, 201, "the admin mints");
    let (code, _, st) = common::raw_with(
        &sa_client,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts/robot/token",
        "application/json",
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(code, 403, "a service account does not mint tokens: {st}");
    assert_eq!(
        review_with(&sa_client, &mesh, Some(&["mesh"])).await["authenticated"],
        true
    );
    let anon = kube::Client::try_from({
        let mut cfg = c.config.clone();
        cfg.auth_info = Default::default();
        cfg
    })
    .unwrap();
    let (code, _, _) = common::raw_with(
        &anon,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        "application/json",
        serde_json::to_vec(&json!({"spec": {"token": token}})).unwrap(),
    )
    .await;
    assert_eq!(code, 401);

    // Bound to a Secret, a Node, a Pod: valid while the object is; kube's extra.
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    let s = secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap(),
        )
        .await
        .unwrap();
    let to_secret = mint(&c, "robot", json!({"boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": "s", "uid": s.uid().unwrap()}})).await;
    assert_eq!(
        jwt_parts(&to_secret).1["kubernetes.io"]["secret"],
        json!({"name": "s", "uid": s.uid().unwrap()})
    );
    assert_eq!(review(&c, &to_secret, None).await["authenticated"], true);
    secrets.delete("s", &DeleteParams::default()).await.unwrap();
    refused(
        &review(&c, &to_secret, None).await,
        "[invalid bearer token, service account token has been invalidated]",
    );

    let nodes: Api<Node> = Api::all(c.client.clone());
    let n = nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap(),
        )
        .await
        .unwrap();
    let to_node = mint(
        &c,
        "robot",
        json!({"boundObjectRef": {"kind": "Node", "apiVersion": "v1", "name": "n1"}}),
    )
    .await;
    let st = review(&c, &to_node, None).await;
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(
        st["user"]["extra"]["authentication.kubernetes.io/node-name"],
        json!(["n1"])
    );
    assert_eq!(
        st["user"]["extra"]["authentication.kubernetes.io/node-uid"],
        json!([n.uid().unwrap()])
    );
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    refused(
        &review(&c, &to_node, None).await,
        "[invalid bearer token, service account token has been invalidated]",
    );

    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pod = |name: &str, extra: Value| -> Pod {
        let mut v = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        v["spec"]
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    };
    let p = pods
        .create(
            &PostParams::default(),
            &pod(
                "p",
                json!({"serviceAccountName": "robot", "nodeName": "n9"}),
            ),
        )
        .await
        .unwrap();
    let to_pod = mint(
        &c,
        "robot",
        json!({"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p"}}),
    )
    .await;
    // The pod's node goes in by name (that node is not registered, so without a uid).
    assert_eq!(
        jwt_parts(&to_pod).1["kubernetes.io"],
        json!({"namespace": "default", "serviceaccount": {"name": "robot", "uid": robot_uid},
               "pod": {"name": "p", "uid": p.uid().unwrap()}, "node": {"name": "n9"}})
    );
    let st = review(&c, &to_pod, None).await;
    assert_eq!(st["authenticated"], true, "{st}");
    let extra = &st["user"]["extra"];
    assert_eq!(extra["authentication.kubernetes.io/pod-name"], json!(["p"]));
    assert_eq!(
        extra["authentication.kubernetes.io/pod-uid"],
        json!([p.uid().unwrap()])
    );
    assert_eq!(
        extra["authentication.kubernetes.io/node-name"],
        json!(["n9"])
    );
    assert!(
        extra.get("authentication.kubernetes.io/node-uid").is_none(),
        "{extra}"
    );

    // The ServiceAccount gone, then back with another uid: its old tokens stay dead.
    let sas: Api<ServiceAccount> = Api::namespaced(c.client.clone(), "default");
    sas.delete("robot", &DeleteParams::default()).await.unwrap();
    refused(
        &review(&c, &token, None).await,
        "[invalid bearer token, serviceaccounts \"robot\" not found]",
    );
    assert_eq!(
        code_of(
            Api::<Pod>::namespaced(sa_client.clone(), "default")
                .list(&ListParams::default())
                .await
        )
        .await,
        401
    );
    let again = create_sa(&c, "robot").await;
    refused(
        &review(&c, &token, None).await,
        &format!(
            "[invalid bearer token, service account UID ({}) does not match claim ({robot_uid})]",
            again.uid().unwrap()
        ),
    );

    // Issuer discovery, for authenticated callers; the JWKS verifies a minted token.
    let cfg: Value = c
        .client
        .request(
            http::Request::get("/.well-known/openid-configuration")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        cfg,
        json!({
            "issuer": ISSUER,
            "jwks_uri": format!("{}/openid/v1/jwks", c.running.url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    );
    let jwks: Value = c
        .client
        .request(
            http::Request::get("/openid/v1/jwks")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(
        (&k["kty"], &k["crv"], &k["alg"], &k["use"], &k["kid"]),
        (
            &json!("EC"),
            &json!("P-256"),
            &json!("ES256"),
            &json!("sig"),
            &json!(kid)
        )
    );
    let fresh = mint(&c, "robot", json!({})).await;
    let dec = jsonwebtoken::DecodingKey::from_ec_components(
        k["x"].as_str().unwrap(),
        k["y"].as_str().unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[ISSUER]);
    v.set_issuer(&[ISSUER]);
    let verified = jsonwebtoken::decode::<Value>(&fresh, &dec, &v).unwrap();
    assert_eq!(
        verified.claims["sub"],
        "system:serviceaccount:default:robot"
    );
    assert!(
        jsonwebtoken::decode::<Value>(&sign(other.as_bytes(), &kid, &claims), &dec, &v).is_err()
    );
    let (code, _, _) = common::raw_with(&anon, "GET", "/openid/v1/jwks", "", Vec::new()).await;
    assert_eq!(code, 401);

    // Discovery lists serviceaccounts/token and tokenreviews as kube does.
    let core = c.client.list_core_api_resources("v1").await.unwrap();
    let tok = core
        .resources
        .iter()
        .find(|r| r.name == "serviceaccounts/token")
        .unwrap();
    assert_eq!(
        (
            tok.kind.as_str(),
            tok.group.as_deref(),
            tok.version.as_deref()
        ),
        ("TokenRequest", Some("authentication.k8s.io"), Some("v1"))
    );
    assert_eq!(tok.verbs, ["create"]);
    let groups = c.client.list_api_groups().await.unwrap();
    assert!(groups
        .groups
        .iter()
        .any(|g| g.name == "authentication.k8s.io"));
    let authn = c
        .client
        .list_api_group_resources("authentication.k8s.io/v1")
        .await
        .unwrap();
    let tr = authn
        .resources
        .iter()
        .find(|r| r.name == "tokenreviews")
        .unwrap();
    assert_eq!(
        (tr.kind.as_str(), tr.namespaced, tr.verbs.clone()),
        ("TokenReview", false, vec!["create".to_string()])
    );
}

#[tokio::test]
async fn token_requests_refuse_bad_input_in_kubes_words() {
    let c = Cluster::start(Backend::Sqlite).await;
    let sa = create_sa(&c, "robot").await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
    let p = pods.create(&PostParams::default(), &p).await.unwrap();
    let pr: Pod = serde_json::from_value(json!({"metadata": {"name": "pr"}, "spec": {"serviceAccountName": "robot", "containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
    pods.create(&PostParams::default(), &pr).await.unwrap();

    let (code, _, st) =
        token_request(&c, "robot", json!({"spec": {"expirationSeconds": 10}})).await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (422, Some("Invalid")),
        "{st}"
    );
    assert_eq!(
        st["message"],
        "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: 10: may not specify a duration less than 10 minutes"
    );
    assert_eq!(
        st["details"]["causes"][0]["field"],
        "spec.expirationSeconds"
    );
    let (code, _, st) = token_request(
        &c,
        "robot",
        json!({"spec": {"expirationSeconds": 5_000_000_000_i64}}),
    )
    .await;
    assert_eq!(code, 422, "{st}");
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .ends_with("may not specify a duration larger than 2^32 seconds"),
        "{st}"
    );
    // Over the 48 h cap: shortened, with kube's warning.
    let (code, warnings, tr) =
        token_request(&c, "robot", json!({"spec": {"expirationSeconds": 200_000}})).await;
    assert_eq!(code, 201, "{tr}");
    assert_eq!(tr["spec"]["expirationSeconds"], 172_800);
    assert_eq!(
        warnings,
        ["299 - \"requested expiration of 200000 seconds shortened to 172800 seconds\""]
    );
    let (_, claims) = jwt_parts(tr["status"]["token"].as_str().unwrap());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        172_800
    );

    let (code, _, st) = token_request(&c, "nope", json!({})).await;
    assert_eq!(
        (code, st["message"].as_str()),
        (404, Some("serviceaccounts \"nope\" not found")),
        "{st}"
    );
    // kube answers an unsupported bound kind with 400 (BadRequest), not 422.
    let (code, _, st) = token_request(
        &c,
        "robot",
        json!({"spec": {"boundObjectRef": {"kind": "ConfigMap", "apiVersion": "v1", "name": "x"}}}),
    )
    .await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (400, Some("BadRequest")),
        "{st}"
    );
    assert_eq!(
        st["message"],
        "cannot bind token to object of type /v1, Kind=ConfigMap"
    );
    let (code, _, st) = token_request(
        &c,
        "robot",
        json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "apps/v1", "name": "p"}}}),
    )
    .await;
    assert_eq!(code, 400, "{st}");
    let (code, _, st) = token_request(
        &c,
        "robot",
        json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "missing"}}}),
    )
    .await;
    assert_eq!(
        (code, st["message"].as_str()),
        (404, Some("pods \"missing\" not found")),
        "{st}"
    );
    let (code, _, st) = token_request(&c, "robot", json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "pr", "uid": "not-its-uid"}}})).await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (409, Some("Conflict")),
        "{st}"
    );
    assert!(
        st["message"].as_str().unwrap().contains(
            "the UID in the bound object reference (not-its-uid) does not match the UID in record"
        ),
        "{st}"
    );
    // The pod runs as `default` (none named), not as robot.
    let (code, _, st) = token_request(&c, "robot", json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": p.uid().unwrap()}}})).await;
    assert_eq!(code, 400, "{st}");
    assert_eq!(st["message"], "cannot bind token for serviceaccount \"robot\" to pod running with different serviceaccount name.");
    let (code, _, st) = token_request(
        &c,
        "robot",
        json!({"metadata": {"name": "other"}, "spec": {}}),
    )
    .await;
    assert_eq!(code, 422, "{st}");
    assert_eq!(st["details"]["causes"][0]["field"], "metadata.name");
    let (code, _, st) =
        token_request(&c, "robot", json!({"spec": {"expirationSeconds": "soon"}})).await;
    assert_eq!(code, 400, "{st}");
    assert!(st["message"].as_str().unwrap().starts_with("TokenRequest in version \"v1\" cannot be handled as a TokenRequest: spec.expirationSeconds"), "{st}");
    let (code, _, st) =
        token_request(&c, "robot", json!({"apiVersion": "v1", "kind": "Pod"})).await;
    assert_eq!(code, 400, "{st}");
    let (code, _, _) = c
        .raw(
            "POST",
            "/api/v1/namespaces/default/serviceaccounts/robot/token",
            "application/json",
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(code, 400);
    let (code, _, _) = c
        .raw(
            "GET",
            "/api/v1/namespaces/default/serviceaccounts/robot/token",
            "",
            Vec::new(),
        )
        .await;
    assert_eq!(code, 405);
    let (code, _, _) = c
        .raw(
            "POST",
            "/api/v1/namespaces/default/configmaps/x/token",
            "application/json",
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(code, 404, "only serviceaccounts have tokens");

    let (code, _, st) = c
        .raw(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            "application/json",
            br#"{"spec":{}}"#.to_vec(),
        )
        .await;
    assert_eq!(
        (code, st["message"].as_str()),
        (
            400,
            Some("token is required for TokenReview in authentication")
        ),
        "{st}"
    );
    let (code, _, _) = c
        .raw(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            "application/json",
            br#"{"kind":"TokenRequest","spec":{"token":"x"}}"#.to_vec(),
        )
        .await;
    assert_eq!(code, 400);
    let (code, _, _) = c
        .raw(
            "GET",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            "",
            Vec::new(),
        )
        .await;
    assert_eq!(code, 405);
    let (code, _, _) = c
        .raw(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews/x",
            "application/json",
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(code, 404);

    // Still serving, and the account is untouched.
    let sas: Api<ServiceAccount> = Api::namespaced(c.client.clone(), "default");
    assert_eq!(sas.get("robot").await.unwrap().uid(), sa.uid());
}

#[tokio::test]
async fn the_kubernetes_service_points_at_the_api_server() {
    let c = Cluster::start(Backend::Sqlite).await;
    let svcs: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let s = svcs.get("kubernetes").await.unwrap();
    let spec = s.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.1"));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert!(spec.selector.is_none());
    let port = &spec.ports.unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("https"), 443, Some("TCP"))
    );
    assert_eq!(
        port.target_port,
        Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(
                c.running.addr.port().into()
            )
        )
    );
    let labels = s.metadata.labels.unwrap();
    assert_eq!(
        (labels["component"].as_str(), labels["provider"].as_str()),
        ("apiserver", "kubernetes")
    );
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(c.client.clone(), "default");
    let es = slices.get("kubernetes").await.unwrap();
    assert_eq!(es.address_type, "IPv4");
    assert_eq!(
        es.endpoints[0].addresses,
        ["127.0.0.1"],
        "the listen address, there being no advertise address"
    );
    let ep = &es.ports.unwrap()[0];
    assert_eq!(
        (ep.name.as_deref(), ep.port),
        (Some("https"), Some(i32::from(c.running.addr.port())))
    );
    let labels = es.metadata.labels.unwrap();
    assert_eq!(labels["kubernetes.io/service-name"], "kubernetes");
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "meshwork-apiserver"
    );
    // A random clusterIP never lands on the reserved first address.
    let api_svc: Service = serde_json::from_value(json!({"metadata": {"name": "again"}, "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 1}]}})).unwrap();
    let (code, _) = match svcs
        .create(&PostParams::default(), &api_svc)
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => (s.code, s.reason),
        e => panic!("{e:?}"),
    };
    assert_eq!(code, 422, "10.96.0.1 is the kubernetes Service's");
}

/// Polls `f` for up to 20 s (controllers run at their own pace).
fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    meshwork_lab::wait::eventually(what, Duration::from_secs(20), f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_token_and_the_cluster_objects() {
    let dir = tempfile::Builder::new()
        .prefix("mwapi-satoken-")
        .tempdir()
        .unwrap();
    let data = dir.path().join("data");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // 192.0.2.10 (TEST-NET-1) is only written into objects, never dialled.
    let mut server = ServerProc::start(&data, &["--advertise-address", "192.0.2.10"]);
    let kc = server.kubeconfig.clone();
    let k = Kubectl {
        kubeconfig: &kc,
        home: &home,
    };

    // The ServiceAccount controller gives `default` (and every namespace) its account.
    let sa_uid = eventually("the default ServiceAccount", || {
        let (ok, out, _) = k.run_in(
            &["get", "sa", "default", "-o", "jsonpath={.metadata.uid}"],
            "",
        );
        (ok && !out.is_empty()).then_some(out)
    });

    // kubectl sends its TokenRequest as protobuf and takes the answer so.
    let (ok, token, trace) = k.run_in(&["create", "token", "default", "-v=8"], "");
    assert!(ok, "{trace}");
    assert_eq!(
        trace
            .matches("Content-Type: application/vnd.kubernetes.protobuf")
            .count(),
        2,
        "request and answer: {trace}"
    );
    let token = token.trim().to_string();
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "system:serviceaccount:default:default");
    assert_eq!(claims["aud"], json!([ISSUER]));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
    assert_eq!(
        claims["kubernetes.io"],
        json!({"namespace": "default", "serviceaccount": {"name": "default", "uid": sa_uid}})
    );

    k.ok(&["run", "p", "--image=busybox", "--restart=Never"], "");
    let pod_uid = k.ok(&["get", "pod", "p", "-o", "jsonpath={.metadata.uid}"], "");
    let bound = k.ok(
        &[
            "create",
            "token",
            "default",
            "--audience=mesh",
            "--duration=10m",
            "--bound-object-kind=Pod",
            "--bound-object-name=p",
        ],
        "",
    );
    let (_, claims) = jwt_parts(&bound);
    assert_eq!(claims["aud"], json!(["mesh"]));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );
    assert_eq!(
        claims["kubernetes.io"]["pod"],
        json!({"name": "p", "uid": pod_uid})
    );

    // A pod-bound token for the API server: reads, cannot write, dies with the pod.
    let for_api = k
        .ok(
            &[
                "create",
                "token",
                "default",
                "--bound-object-kind=Pod",
                "--bound-object-name=p",
            ],
            "",
        )
        .trim()
        .to_string();
    let client = client_with(&data, &server.url, &for_api).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    assert_eq!(code_of(pods.list(&ListParams::default()).await).await, 403);
    k.ok(
        &[
            "create",
            "rolebinding",
            "default-view",
            "--clusterrole=view",
            "--serviceaccount=default:default",
        ],
        "",
    );
    // RBAC reads a watch cache: the binding holds once the watch delivers it.
    let t = std::time::Instant::now();
    let listed = loop {
        if let Ok(l) = pods.list(&ListParams::default()).await {
            break l;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "the RoleBinding never took effect"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(listed.items.len(), 1);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    assert_eq!(
        code_of(cms.create(&PostParams::default(), &cm).await).await,
        403
    );
    let review_yaml = format!(
        "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: {for_api}\n"
    );
    let st: Value =
        serde_json::from_str(&k.ok(&["create", "-f", "-", "-o", "json"], &review_yaml)).unwrap();
    assert_eq!(st["status"]["authenticated"], true, "{st}");
    assert_eq!(
        st["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["p"])
    );
    k.ok(&["delete", "pod", "p", "--wait"], "");
    assert_eq!(code_of(pods.list(&ListParams::default()).await).await, 401);
    let st: Value =
        serde_json::from_str(&k.ok(&["create", "-f", "-", "-o", "json"], &review_yaml)).unwrap();
    assert_ne!(st["status"]["authenticated"], true, "{st}");
    assert_eq!(
        st["status"]["error"],
        "[invalid bearer token, service account token has been invalidated]"
    );

    // kubectl's errors, worded by the server.
    let err = k.fails(&["create", "token", "default", "--duration=10s"], "");
    assert!(err.contains("TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: 10: may not specify a duration less than 10 minutes"), "{err}");
    let err = k.fails(&["create", "token", "nope"], "");
    assert!(err.contains("serviceaccounts \"nope\" not found"), "{err}");
    let err = k.fails(
        &[
            "create",
            "token",
            "default",
            "--bound-object-kind=Pod",
            "--bound-object-name=gone",
        ],
        "",
    );
    assert!(err.contains("pods \"gone\" not found"), "{err}");

    // The kubernetes Service and its EndpointSlice, which the EndpointSlice controller leaves.
    let out = k.ok(&["get", "svc", "kubernetes"], "");
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..5],
        ["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"],
        "{out}"
    );
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    let es = k.json(&["get", "endpointslice", "kubernetes"]);
    assert_eq!(es["endpoints"][0]["addresses"], json!(["192.0.2.10"]));
    assert_eq!(
        es["ports"],
        json!([{"name": "https", "port": port, "protocol": "TCP"}])
    );
    let rv = es["metadata"]["resourceVersion"].clone();
    // A selector Service gets its slice from the controller; ours is untouched meanwhile.
    k.ok(
        &["create", "service", "clusterip", "web", "--tcp=80:8080"],
        "",
    );
    eventually("the controller's slice for web", || {
        let (ok, out, _) = k.run_in(
            &[
                "get",
                "endpointslice",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "name",
            ],
            "",
        );
        (ok && !out.trim().is_empty()).then_some(())
    });
    assert_eq!(
        k.json(&["get", "endpointslice", "kubernetes"])["metadata"]["resourceVersion"],
        rv
    );

    // Namespaces get their default ServiceAccount, and get it back when it is deleted.
    k.ok(&["create", "namespace", "team"], "");
    let first = eventually("default in team", || {
        let (ok, out, _) = k.run_in(
            &[
                "get",
                "sa",
                "default",
                "-n",
                "team",
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            "",
        );
        (ok && !out.is_empty()).then_some(out)
    });
    k.ok(&["delete", "sa", "default", "-n", "team"], "");
    eventually("default back in team", || {
        let (ok, out, _) = k.run_in(
            &[
                "get",
                "sa",
                "default",
                "-n",
                "team",
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            "",
        );
        (ok && !out.is_empty() && out != first).then_some(())
    });

    // A restart keeps the key (0600) and so the tokens, and brings the Service to the new port.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("pki/sa.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    server.kill9();
    let server = ServerProc::start(&data, &["--advertise-address", "192.0.2.10"]);
    let st: Value = serde_json::from_str(&k.ok(
        &["create", "-f", "-", "-o", "json"],
        &format!(
            "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: {token}\n"
        ),
    ))
    .unwrap();
    assert_eq!(st["status"]["authenticated"], true, "{st}");
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(
        k.json(&["get", "endpointslice", "kubernetes"])["ports"][0]["port"],
        port
    );
    assert_eq!(
        k.json(&["get", "svc", "kubernetes"])["spec"]["ports"][0]["targetPort"],
        port
    );
    assert_eq!(
        k.ok(&["get", "svc", "-o", "name"], "")
            .lines()
            .filter(|l| l.contains("kubernetes"))
            .count(),
        1
    );
}
