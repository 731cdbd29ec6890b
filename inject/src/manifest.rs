//! `mesh-ctl inject` / `uninject` on manifests: multi-document YAML (or JSON) in, the same
//! documents out with each workload's pod template changed, everything else as it was.
//! A `List` is walked item by item. What happened to each object is reported to the caller
//! in kubectl's `kind/name verb` form.

use serde_json::Value;

use crate::{apply_to_object, Config, Error};

pub struct Outcome {
    /// The documents, as YAML, separated by `---`.
    pub yaml: String,
    /// One line per object: `deployment.apps/web injected`, `service/web skipped`, ...
    pub report: Vec<String>,
}

fn label(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or("object").to_lowercase();
    let group = obj["apiVersion"]
        .as_str()
        .and_then(|v| v.split_once('/'))
        .map(|(g, _)| format!(".{g}"))
        .unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or("<unnamed>");
    format!("{kind}{group}/{name}")
}

fn walk(obj: &mut Value, cfg: Option<&Config>, report: &mut Vec<String>) {
    if obj["kind"] == "List" {
        if let Some(items) = obj["items"].as_array_mut() {
            for item in items {
                walk(item, cfg, report);
            }
        }
        return;
    }
    let verb = match (apply_to_object(obj, cfg), cfg.is_some()) {
        (Ok(true), true) => "injected".to_string(),
        (Ok(true), false) => "uninjected".to_string(),
        (Ok(false), true) => "already injected".to_string(),
        (Ok(false), false) => "not injected; unchanged".to_string(),
        (Err(Error::NotAWorkload(_)), _) => "skipped".to_string(),
        (Err(e), _) => format!("skipped: {e}"),
    };
    report.push(format!("{} {verb}", label(obj)));
}

/// Injects (`cfg` Some) or uninjects (None) every workload in `input`.
pub fn process(input: &str, cfg: Option<&Config>) -> anyhow::Result<Outcome> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(input)
        .map_err(|e| anyhow::anyhow!("reading the manifest: {e}"))?;
    let mut report = Vec::new();
    let mut out = Vec::new();
    for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
        if !doc.is_object() {
            anyhow::bail!("reading the manifest: a document is not an object: {doc}");
        }
        walk(&mut doc, cfg, &mut report);
        out.push(
            serde_saphyr::to_string(&doc)
                .map_err(|e| anyhow::anyhow!("writing the manifest: {e}"))?,
        );
    }
    Ok(Outcome {
        yaml: out.join("---\n"),
        report,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    const TWO: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
  - port: 80
";

    #[test]
    fn multi_document_round_trip() {
        let cfg = Config::default();
        let once = process(TWO, Some(&cfg)).unwrap();
        assert_eq!(
            once.report,
            ["deployment.apps/web injected", "service/web skipped"]
        );
        let twice = process(&once.yaml, Some(&cfg)).unwrap();
        assert_eq!(twice.yaml, once.yaml, "inject is idempotent");
        assert_eq!(twice.report[0], "deployment.apps/web already injected");
        let back = process(&once.yaml, None).unwrap();
        let orig: Vec<Value> = serde_saphyr::from_multiple(TWO).unwrap();
        let mut got: Vec<Value> = serde_saphyr::from_multiple(&back.yaml).unwrap();
        // Uninject leaves the (now empty) template annotations map out again.
        assert_eq!(
            got[0]["spec"]["template"]["metadata"]["labels"]["app"],
            "web"
        );
        got[0]["spec"]["template"]["metadata"] = orig[0]["spec"]["template"]["metadata"].clone();
        assert_eq!(got, orig);
    }

    #[test]
    fn json_lists_and_bad_input() {
        let cfg = Config::default();
        let list = r#"{"kind": "List", "items": [{"kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}]}"#;
        let out = process(list, Some(&cfg)).unwrap();
        assert_eq!(out.report, ["pod/p injected"]);
        assert!(process("kind: [unclosed", Some(&cfg)).is_err());
        assert!(process("- just\n- a list\n", Some(&cfg)).is_err());
    }
}
