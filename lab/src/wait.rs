//! The one polling helper of the tests: for state that can only be observed by asking (an API
//! object's status, a kernel counter, a runtime's container state). Where a signal exists
//! (a watch event, a process exit, a metric), tests poll that signal with this, never a fixed
//! sleep.

use std::time::{Duration, Instant};

/// How much longer than their stated timeouts tests wait: `MESHWORK_TEST_PATIENCE` (a factor,
/// 1 when unset). A slower machine raises it once instead of every test growing its own.
pub fn patience() -> f64 {
    std::env::var("MESHWORK_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| *f > 0.0)
        .unwrap_or(1.0)
}

fn scaled(timeout: Duration) -> Duration {
    timeout.mul_f64(patience())
}

/// Polls `f` until it returns Some, for up to `timeout` (times [`patience`]); then panics
/// naming `what` and what `detail` says about the state (a dump of the objects involved).
/// Polls quickly at first (20 ms) and backs off to 250 ms.
pub fn eventually_or<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    detail: impl FnOnce() -> String,
) -> T {
    let timeout = scaled(timeout);
    let deadline = Instant::now() + timeout;
    let mut every = Duration::from_millis(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("not within {timeout:?}: {what}\n{}", detail());
        }
        std::thread::sleep(every);
        every = (every * 2).min(Duration::from_millis(250));
    }
}

/// [`eventually_or`] without a state dump.
pub fn eventually<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    eventually_or(what, timeout, f, String::new)
}

/// [`eventually`] for a condition.
pub fn eventually_true(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    eventually(what, timeout, || f().then_some(()))
}

/// [`eventually`] for async probes (a gRPC or API call per try).
pub async fn eventually_async<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let timeout = scaled(timeout);
    let deadline = Instant::now() + timeout;
    let mut every = Duration::from_millis(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() <= deadline, "not within {timeout:?}: {what}");
        tokio::time::sleep(every).await;
        every = (every * 2).min(Duration::from_millis(250));
    }
}
