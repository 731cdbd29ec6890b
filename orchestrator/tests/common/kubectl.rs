//! kubectl 1.33 (the path scripts/setup.sh installs) against a test server, with its own HOME
//! and cache so runs do not share discovery caches.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use meshwork_lab::kubectl::KUBECTL;
use serde_json::Value;

pub struct Kubectl<'a> {
    pub kubeconfig: &'a Path,
    pub home: &'a Path,
}

impl Kubectl<'_> {
    pub fn command(&self, args: &[&str]) -> Command {
        assert!(
            Path::new(KUBECTL).exists(),
            "{KUBECTL} (kubectl 1.33) is missing: scripts/setup.sh installs it"
        );
        let mut c = Command::new(KUBECTL);
        c.arg("--kubeconfig")
            .arg(self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.home.join("cache"))
            .args(args)
            .env("HOME", self.home)
            .env_remove("KUBECONFIG");
        c
    }

    /// Runs kubectl with `stdin`; returns (success, stdout, stderr).
    pub fn run_in(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn ok(&self, args: &[&str], stdin: &str) -> String {
        let (ok, out, err) = self.run_in(args, stdin);
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }

    pub fn fails(&self, args: &[&str], stdin: &str) -> String {
        let (ok, out, err) = self.run_in(args, stdin);
        assert!(!ok, "kubectl {args:?} should fail:\n{out}");
        err
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a, "")).unwrap()
    }
}
