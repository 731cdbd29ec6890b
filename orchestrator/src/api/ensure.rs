//! Objects the server itself keeps in shape (the `kubernetes` Service, the default RBAC
//! policy): created when missing, or brought back by a `fix` of the stored object, through
//! the usual pipeline (defaults, validation, ClusterIP allocation).

use bytes::Bytes;
use serde_json::Value;

use super::{
    error::ApiError,
    kind::{KindOps, Sub},
    validation::FieldValidation,
    verbs::Ctx,
    Api, Query, Target,
};

impl Api {
    /// `want` created, or the stored object with `fix(stored, want)` applied when that changes
    /// it (a fix that leaves it as is writes nothing).
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site per kept object; all are needed"
    )]
    pub(crate) async fn ensure(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: Option<&str>,
        name: &str,
        want: Value,
        fix: impl Fn(&mut Value, &Value),
    ) -> Result<(), ApiError> {
        let kind: &'static dyn KindOps = self
            .registry
            .find(group, version, plural)
            .ok_or(ApiError::UnknownPath)?;
        let target = |name: Option<&str>| Target {
            kind,
            ns: ns.map(str::to_string),
            name: name.map(str::to_string),
            sub: None,
            user: None,
        };
        match self.current(&target(Some(name))).await {
            Err(ApiError::NotFound { .. }) => {
                let ctx = Ctx {
                    target: target(None),
                    query: Query::parse(None),
                    accept: None,
                    content_type: "application/json".into(),
                    body: Bytes::from(
                        serde_json::to_vec(&want).map_err(|e| ApiError::Internal(e.to_string()))?,
                    ),
                };
                match self.create(ctx).await {
                    Ok(_) => return Ok(()),
                    // Another server on the same store made it first: reconcile below.
                    Err(ApiError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let t = target(Some(name));
        self.update_with(&t, false, |cur| {
            let mut v: Value = serde_json::from_slice(&cur.value)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            fix(&mut v, &want);
            Ok((
                kind.update(&cur.value, v, Sub::Main, FieldValidation::Ignore)?,
                None,
            ))
        })
        .await
        .map(|_| ())
    }
}
