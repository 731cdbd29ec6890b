//! Bearer-token authentication from `<data>/tokens.csv` (kube-apiserver's `--token-auth-file`
//! format: `token,user,uid,"group1,group2"`). The file is re-read when an unknown token is
//! presented and it changed, so credentials issued by `meshwork-orchestrator kubeconfig` while
//! the server runs are accepted without a restart.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    sync::RwLock,
    time::{Duration, Instant, SystemTime},
};

use super::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

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
        let _uid = fields.next();
        let groups = fields
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
                groups,
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
        let node = Tokens::issue(&path, "system:node:n1", &["system:nodes".into()]).unwrap();
        assert_eq!(
            tokens.authenticate(&node).unwrap().groups,
            vec!["system:nodes"]
        );
    }
}
