//! Bearer-token authentication, as kube-apiserver's token authenticators:
//!
//! - static tokens from `<data>/tokens.csv` (kube-apiserver's `--token-auth-file` format:
//!   `token,user,uid,"group1,group2"`). The file is re-read when an unknown token is presented
//!   and it changed, so credentials issued by `meshwork-orchestrator kubeconfig` while the
//!   server runs are accepted without a restart;
//! - ServiceAccount tokens (JWTs this server signed, `satoken.rs`): valid while their times,
//!   audiences and the objects they are bound to hold — the ServiceAccount, and the Pod,
//!   Secret or Node of a bound token, read from the store on each use (kube's "bound token"
//!   validator, `pkg/serviceaccount/claims.go` upstream).
//!
//! Every authenticated user is also in `system:authenticated`, as kube's group adder makes it.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshwork_orchestrator_store::{AnyStore, Store};

use super::{
    satoken::{Claims, Signer, Verified, LEEWAY_SECONDS},
    Error,
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// kube's `user.Info.GetExtra()`: for service accounts the pod, node and credential id.
    pub extra: BTreeMap<String, Vec<String>>,
}

pub const AUTHENTICATED: &str = "system:authenticated";
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
/// The `extra` keys kube-apiserver sets for service account users
/// (`k8s.io/apiserver/pkg/authentication/serviceaccount`).
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
pub const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";
pub const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

pub struct Tokens {
    path: PathBuf,
    state: RwLock<State>,
}

struct State {
    mtime: Option<SystemTime>,
    checked: Instant,
    users: HashMap<String, User>,
}

/// How stale the token table may get: a token removed from the file stops working within this.
const RECHECK: Duration = Duration::from_secs(1);

fn parse(text: &str) -> HashMap<String, User> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut fields = line.splitn(4, ',');
        let (Some(token), Some(user)) = (fields.next(), fields.next()) else {
            continue;
        };
        let uid = fields.next().unwrap_or_default().to_string();
        let groups: Vec<String> = fields
            .next()
            .map(|g| {
                g.trim_matches('"')
                    .split(',')
                    .map(str::to_string)
                    .filter(|g| !g.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            token.to_string(),
            User {
                name: user.to_string(),
                uid,
                groups,
                extra: BTreeMap::new(),
            },
        );
    }
    out
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A new random token (256 bits, hex).
pub fn new_token() -> Result<String, Error> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).map_err(|e| Error::Tls(format!("random token: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl Tokens {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::Io(path.to_path_buf(), e)),
        };
        Ok(Tokens {
            path: path.to_path_buf(),
            state: RwLock::new(State {
                mtime: mtime(path),
                checked: Instant::now(),
                users: parse(&text),
            }),
        })
    }

    /// The user a token belongs to. The file is re-read when it changed (checked at most
    /// every `RECHECK`, and at once for an unknown token), so issued and revoked tokens take
    /// effect without a restart.
    pub fn authenticate(&self, token: &str) -> Option<User> {
        if let Ok(g) = self.state.read() {
            let fresh = g.checked.elapsed() < RECHECK;
            match g.users.get(token) {
                Some(u) if fresh => return Some(u.clone()),
                None if fresh && g.mtime == mtime(&self.path) => return None,
                _ => {}
            }
        }
        let mut g = self.state.write().ok()?;
        let now = mtime(&self.path);
        if now != g.mtime {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            g.users = parse(&text);
            g.mtime = now;
        }
        g.checked = Instant::now();
        g.users.get(token).cloned()
    }

    /// Appends a credential for `user` and returns its token.
    pub fn issue(path: &Path, user: &str, groups: &[String]) -> Result<String, Error> {
        if user.contains(',') || groups.iter().any(|g| g.contains(',') || g.contains('"')) {
            return Err(Error::Config(format!(
                "user and group names may not contain ',' or '\"': {user}"
            )));
        }
        let token = new_token()?;
        let uid = uuid::Uuid::new_v4();
        let line = format!("{token},{user},{uid},\"{}\"\n", groups.join(","));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode_private()
            .open(path)
            .map_err(|e| Error::Io(path.to_path_buf(), e))?;
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::Io(path.to_path_buf(), e))?;
        Ok(token)
    }
}

/// Why a bearer token did not authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No authenticator knows the token.
    Unknown,
    /// A service account token of ours that no longer (or never did) hold.
    Invalid(String),
}

impl Refused {
    /// The error kube-apiserver's request authenticator reports (and TokenReview's
    /// status.error): the bearer-token wrapper's "invalid bearer token", with the
    /// authenticator's reason aggregated after it.
    pub fn message(&self) -> String {
        match self {
            Refused::Unknown => "invalid bearer token".into(),
            Refused::Invalid(why) => format!("[invalid bearer token, {why}]"),
        }
    }
}

/// An authenticated token: who, and for which of the requested audiences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub user: User,
    pub audiences: Vec<String>,
}

/// The token authenticators of the API server (static tokens, then service account tokens)
/// and what TokenRequest needs to issue the latter.
pub struct Authenticator {
    tokens: Tokens,
    signer: Arc<Signer>,
    /// The API server's own audiences (kube's `--api-audiences`, which defaults to the issuer):
    /// what a token must be for when no other audience is asked.
    audiences: Vec<String>,
    /// `--service-account-max-token-expiration`: longer requests are shortened to it.
    max_expiration: Option<Duration>,
}

/// Go's `%q` of a string slice: `["a" "b"]`, as kube's audience message prints them.
fn go_quoted(v: &[String]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", items.join(" "))
}

/// The metadata of a stored core/v1 object, if it exists.
async fn stored_meta(
    store: &AnyStore,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<ObjectMeta>, String> {
    #[derive(serde::Deserialize)]
    struct Partial {
        #[serde(default)]
        metadata: ObjectMeta,
    }
    let kind = crate::api::registry::REGISTRY
        .find("", "v1", plural)
        .ok_or_else(|| format!("{plural} are not served"))?;
    let Some(stored) = store
        .get(&kind.info().key(ns, name))
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    serde_json::from_slice::<Partial>(&stored.value)
        .map(|p| Some(p.metadata))
        .map_err(|e| e.to_string())
}

/// kube's `deletedBefore`: deleted (deletionTimestamp set) longer ago than the leeway.
fn deleted_before(meta: &ObjectMeta, now: i64) -> bool {
    meta.deletion_timestamp
        .as_ref()
        .is_some_and(|t| t.0.as_second() < now - LEEWAY_SECONDS)
}

impl Authenticator {
    pub fn new(
        tokens: Tokens,
        signer: Arc<Signer>,
        max_expiration: Option<Duration>,
    ) -> Authenticator {
        Authenticator {
            audiences: vec![signer.issuer().to_string()],
            tokens,
            signer,
            max_expiration,
        }
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The API server's audiences (the default of TokenRequest and TokenReview).
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    pub fn max_expiration(&self) -> Option<Duration> {
        self.max_expiration
    }

    /// Authenticates `token` for `audiences` (None: the API server's own). The store is read
    /// for service account tokens, whose ServiceAccount and bound object must still exist.
    pub async fn authenticate(
        &self,
        store: &AnyStore,
        token: &str,
        audiences: Option<&[String]>,
    ) -> Result<Authenticated, Refused> {
        let requested = audiences
            .filter(|a| !a.is_empty())
            .unwrap_or(&self.audiences);
        let claims = match self.signer.verify(token) {
            Verified::Valid(c) => c,
            Verified::Invalid(why) => return Err(Refused::Invalid(why)),
            Verified::NotOurs => {
                // Static tokens know no audience: kube's audience-agnostic wrapper accepts
                // them for the API server's own audiences only.
                let user = self.tokens.authenticate(token).ok_or(Refused::Unknown)?;
                let auds: Vec<String> = requested
                    .iter()
                    .filter(|a| self.audiences.contains(a))
                    .cloned()
                    .collect();
                if auds.is_empty() {
                    return Err(Refused::Unknown);
                }
                return Ok(Authenticated {
                    user: with_authenticated(user),
                    audiences: auds,
                });
            }
        };
        // A token without audiences is a legacy one, meant for the API server.
        let token_auds = if claims.aud.is_empty() {
            self.audiences.clone()
        } else {
            claims.aud.clone()
        };
        let auds: Vec<String> = token_auds
            .iter()
            .filter(|a| requested.contains(a))
            .cloned()
            .collect();
        if auds.is_empty() {
            return Err(Refused::Invalid(format!(
                "token audiences {} is invalid for the target audiences {}",
                go_quoted(&token_auds),
                go_quoted(requested)
            )));
        }
        let now = jiff::Timestamp::now().as_second();
        claims
            .check_time(now)
            .map_err(|why| Refused::Invalid(why.into()))?;
        let user = bound_user(store, &claims, now)
            .await
            .map_err(Refused::Invalid)?;
        Ok(Authenticated {
            user,
            audiences: auds,
        })
    }
}

fn with_authenticated(mut user: User) -> User {
    if !user.groups.iter().any(|g| g == AUTHENTICATED) {
        user.groups.push(AUTHENTICATED.into());
    }
    user
}

/// kube's bound-token validator: the ServiceAccount (name and uid), then the Secret, Pod or
/// Node the token is bound to, must still exist and not have been deleted longer ago than the
/// leeway; the result is the service account user with kube's `extra`.
async fn bound_user(store: &AnyStore, claims: &Claims, now: i64) -> Result<User, String> {
    let k = &claims.kubernetes;
    let ns = k.namespace.as_str();
    let sa = &k.serviceaccount;
    let invalidated = || "service account token has been invalidated".to_string();
    let meta = stored_meta(store, "serviceaccounts", Some(ns), &sa.name)
        .await?
        .ok_or_else(|| format!("serviceaccounts \"{}\" not found", sa.name))?;
    let uid = meta.uid.clone().unwrap_or_default();
    if uid != sa.uid {
        return Err(format!(
            "service account UID ({uid}) does not match claim ({})",
            sa.uid
        ));
    }
    if deleted_before(&meta, now) {
        return Err(format!("service account {ns}/{} has been deleted", sa.name));
    }
    if let Some(secret) = &k.secret {
        let meta = stored_meta(store, "secrets", Some(ns), &secret.name)
            .await?
            .ok_or_else(invalidated)?;
        let uid = meta.uid.clone().unwrap_or_default();
        if uid != secret.uid {
            return Err(format!(
                "secret UID ({uid}) does not match service account secret ref claim ({})",
                secret.uid
            ));
        }
        if deleted_before(&meta, now) {
            return Err(invalidated());
        }
    }
    let mut extra = BTreeMap::new();
    if let Some(pod) = &k.pod {
        let meta = stored_meta(store, "pods", Some(ns), &pod.name)
            .await?
            .ok_or_else(invalidated)?;
        let uid = meta.uid.clone().unwrap_or_default();
        if uid != pod.uid {
            return Err(format!(
                "pod UID ({uid}) does not match service account pod ref claim ({})",
                pod.uid
            ));
        }
        if deleted_before(&meta, now) {
            return Err(invalidated());
        }
        extra.insert(EXTRA_POD_NAME.to_string(), vec![pod.name.clone()]);
        extra.insert(EXTRA_POD_UID.to_string(), vec![pod.uid.clone()]);
    }
    if let Some(node) = &k.node {
        // For a pod-bound token the node is information only; a node-bound token needs it.
        if k.pod.is_none() {
            let meta = stored_meta(store, "nodes", None, &node.name)
                .await?
                .ok_or_else(invalidated)?;
            let uid = meta.uid.clone().unwrap_or_default();
            if uid != node.uid {
                return Err(format!(
                    "node UID ({uid}) does not match service account node ref claim ({})",
                    node.uid
                ));
            }
            if deleted_before(&meta, now) {
                return Err(invalidated());
            }
        }
        extra.insert(EXTRA_NODE_NAME.to_string(), vec![node.name.clone()]);
        if !node.uid.is_empty() {
            extra.insert(EXTRA_NODE_UID.to_string(), vec![node.uid.clone()]);
        }
    }
    if let Some(jti) = claims.jti.as_deref().filter(|j| !j.is_empty()) {
        extra.insert(EXTRA_CREDENTIAL_ID.to_string(), vec![format!("JTI={jti}")]);
    }
    Ok(User {
        name: format!("system:serviceaccount:{ns}:{}", sa.name),
        uid: sa.uid.clone(),
        groups: vec![
            SERVICE_ACCOUNTS.to_string(),
            format!("{SERVICE_ACCOUNTS}:{ns}"),
            AUTHENTICATED.to_string(),
        ],
        extra,
    })
}

trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_format() {
        let m = parse("# comment\nabc,admin,1,\"system:masters\"\ndef,system:node:n1,2,\"system:nodes,x\"\nbad\n");
        assert_eq!(m["abc"].name, "admin");
        assert_eq!(m["def"].groups, vec!["system:nodes", "x"]);
        assert_eq!(m["def"].uid, "2");
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn issued_tokens_authenticate_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        let first = Tokens::issue(&path, "admin", &["system:masters".into()]).unwrap();
        let tokens = Tokens::open(&path).unwrap();
        assert_eq!(tokens.authenticate(&first).unwrap().name, "admin");
        assert!(tokens.authenticate("nope").is_none());
        assert!(!tokens.authenticate(&first).unwrap().uid.is_empty());
        let node = Tokens::issue(&path, "system:node:n1", &["system:nodes".into()]).unwrap();
        assert_eq!(
            tokens.authenticate(&node).unwrap().groups,
            vec!["system:nodes"]
        );
    }
}
