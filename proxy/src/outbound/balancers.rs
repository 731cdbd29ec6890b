//! Per authority, the state its balancer keeps for each endpoint (load estimate, breaker,
//! reconnect back-off), the P2C pick over it, and the recording of each request's outcome.
//!
//! The state is laid out beside the endpoint set it was built for and rebuilt only when
//! discovery hands over a new set (a different `Arc`): a request finds its authority's
//! balancer by name and its endpoints by position, without copying a name or an endpoint
//! (BENCHMARKS.md, "The proxy pair": the per-request copies were a measurable share of the
//! pair's CPU).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tower::retry::budget::TpsBudget;

use super::{
    balance::{self, PeakEwma},
    breaker::{self, Breaker},
    discover::Endpoint,
    Outbound,
};

/// One authority's endpoints and, position for position, their state.
pub(super) struct Balancer {
    set: Arc<[Endpoint]>,
    states: Vec<EndpointState>,
    /// A request waited the fail-fast timeout for an endpoint in vain: until one succeeds
    /// here or discovery changes the set, requests that find none are answered at once
    /// (Linkerd's failfast) instead of each waiting again.
    failfast: bool,
    /// The authority's retry budget: Linkerd's ServiceProfile budget is per Service, so one
    /// Service's healthy traffic never pays for retries to another that is failing.
    pub budget: Arc<TpsBudget>,
}

/// What the stack keeps per endpoint of an authority: its load, breaker and reconnect back-off.
struct EndpointState {
    ewma: PeakEwma,
    breaker: Breaker,
    reconnect: Reconnect,
}

impl EndpointState {
    fn up(&self, now: Instant) -> bool {
        self.breaker.available(now) && self.reconnect.ready(now)
    }

    /// When it may take requests again: the later end of its reconnect back-off and its
    /// ejection (None: not known by a clock — its probe is out).
    fn up_at(&self, now: Instant) -> Option<Instant> {
        let ejected = self.breaker.available_at(now)?;
        Some(ejected.max(self.reconnect.until.unwrap_or(now)))
    }
}

/// Every authority's balancer, and when those of authorities discovery let go were last
/// dropped (with the sessions no other authority needs: a proxy keeps no state, and no
/// connection, for what it was asked once and never again).
#[derive(Default)]
pub(super) struct Balancers {
    by_authority: HashMap<String, Balancer>,
}

/// How often discovery's streams and the balancers are checked for authorities let go.
pub(super) const SWEEP: Duration = Duration::from_secs(10);

impl std::ops::Deref for Balancers {
    type Target = HashMap<String, Balancer>;
    fn deref(&self) -> &Self::Target {
        &self.by_authority
    }
}

impl std::ops::DerefMut for Balancers {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.by_authority
    }
}

/// The endpoint a request was given: the set it was picked from, its place there, and
/// whether it is the endpoint's probe after an ejection.
#[derive(Clone)]
pub(super) struct Picked {
    set: Arc<[Endpoint]>,
    i: usize,
    pub probe: bool,
}

impl Picked {
    pub fn ep(&self) -> &Endpoint {
        &self.set[self.i]
    }
}

impl Balancer {
    fn empty(out: &Outbound) -> Self {
        let b = &out.cfg.retry.budget;
        Balancer {
            set: Arc::from(Vec::new()),
            states: Vec::new(),
            failfast: false,
            budget: Arc::new(TpsBudget::new(b.ttl, b.min_per_sec, b.percent)),
        }
    }

    /// Moves to `set`: endpoints still listed keep their state, new ones start fresh.
    /// Returns the endpoints no longer listed.
    fn update(&mut self, set: Arc<[Endpoint]>, out: &Outbound, now: Instant) -> Vec<Endpoint> {
        let mut old: HashMap<Endpoint, EndpointState> = self
            .set
            .iter()
            .cloned()
            .zip(std::mem::take(&mut self.states))
            .collect();
        self.states = set
            .iter()
            .map(|e| {
                old.remove(e).unwrap_or_else(|| EndpointState {
                    ewma: PeakEwma::new(&out.cfg.balance, now),
                    breaker: Breaker::new(out.cfg.breaker.clone()),
                    reconnect: Reconnect::default(),
                })
            })
            .collect();
        self.set = set;
        self.failfast = false;
        old.into_keys().collect()
    }

    /// The state of what `p` names, if its authority still lists it.
    fn state(&mut self, p: &Picked) -> Option<&mut EndpointState> {
        let i = if Arc::ptr_eq(&self.set, &p.set) {
            p.i
        } else {
            self.set.iter().position(|e| e == p.ep())?
        };
        self.states.get_mut(i)
    }
}

impl Outbound {
    /// P2C over the endpoints the breaker lets through; the chosen one counts a request in
    /// flight. An ejected endpoint whose penalty is over gets the next request as its probe
    /// whatever its load: otherwise P2C, which always prefers the lighter, might never try it
    /// again.
    pub(super) fn pick(
        &self,
        authority: &str,
        eps: &Arc<[Endpoint]>,
        tried: &[Endpoint],
    ) -> Option<Picked> {
        // The latest set, not the one the request started with: a request that waited (a
        // slow upload, a retry) must not bring back an endpoint discovery has since dropped,
        // nor prune one it has since added.
        let latest = self
            .resolver
            .current(authority)
            .unwrap_or_else(|| eps.clone());
        let now = Instant::now();
        let mut all = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if !all.contains_key(authority) {
            all.insert(authority.to_string(), Balancer::empty(self));
        }
        let b = all.get_mut(authority)?;
        if !Arc::ptr_eq(&b.set, &latest) {
            let dropped = b.update(latest, self, now);
            self.release(&all, dropped);
        }
        let b = all.get_mut(authority)?;
        // Discovery says there is none: nothing to pick, and the request waits for a set.
        // (Moved to the empty set first: the old set's state would tell the wait that an
        // endpoint is due now, and it would pick again at every tick; its sessions go.)
        if b.set.is_empty() {
            return None;
        }
        let cfg = &self.cfg.balance;
        let due = b
            .states
            .iter()
            .position(|s| s.breaker.is_ejected() && s.up(now));
        let i = match due {
            Some(i) => i,
            None => {
                let avail = |i: usize, skip_tried: bool| {
                    b.states[i].up(now) && !(skip_tried && tried.contains(&b.set[i]))
                };
                // Loads only of the two drawn.
                let load = |i: usize| b.states[i].ewma.load(cfg, now);
                let n = b.set.len();
                let (r1, r2) = (rand::random(), rand::random());
                // A retry goes elsewhere when there is anywhere else to go.
                balance::p2c_by(n, |i| avail(i, true), load, r1, r2)
                    .or_else(|| balance::p2c_by(n, |i| avail(i, false), load, r1, r2))?
            }
        };
        let s = &mut b.states[i];
        let probe = match s.breaker.admit(now) {
            breaker::Admit::No => return None,
            breaker::Admit::Probe => true,
            breaker::Admit::Yes => false,
        };
        s.ewma.start();
        Some(Picked {
            set: b.set.clone(),
            i,
            probe,
        })
    }

    /// The retry budget of `authority`.
    pub(super) fn budget(&self, authority: &str) -> Arc<TpsBudget> {
        let mut all = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = all.get(authority) {
            return b.budget.clone();
        }
        let b = Balancer::empty(self);
        let budget = b.budget.clone();
        all.insert(authority.to_string(), b);
        budget
    }

    /// A connect to the picked endpoint failed: it sits out its reconnect back-off.
    pub(super) fn reconnect_failed(&self, authority: &str, p: &Picked) {
        let mut all = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = all.get_mut(authority).and_then(|b| b.state(p)) {
            s.reconnect.failed(Instant::now());
        }
    }

    /// Records a request's outcome on its endpoint — (success, whether a failure was the
    /// transport's: no answer at all); None: it was dropped before it had one (the client
    /// went away), which ends its pending count and hands back a probe.
    /// `judge`: whether the breaker hears it now (not for an answer whose status comes in
    /// its trailers: [`Outbound::judged_late`]).
    fn done(&self, f: &InFlight<'_>, outcome: Option<(bool, bool)>, judge: bool) {
        let ok = outcome.map(|(ok, _)| ok);
        let transport = outcome.is_some_and(|(_, t)| t);
        let now = Instant::now();
        let mut all = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = all.get_mut(f.authority) else {
            return;
        };
        if ok == Some(true) {
            b.failfast = false;
        }
        let Some(s) = b.state(&f.picked) else {
            return;
        };
        let before = (s.up(now), s.up_at(now).is_some());
        match ok {
            Some(ok) => {
                if ok {
                    s.reconnect.ok();
                } else if transport && s.reconnect.failing() {
                    // An endpoint that could not be connected proves itself with an answer
                    // before it takes requests again: a peer that resets every new connection
                    // fails as a connect or as a request, by a race with the reset, and either
                    // way sits out. An answer, even a 5xx, is the breaker's to judge.
                    s.reconnect.failed(now);
                }
                s.ewma.finish(&self.cfg.balance, now, now - f.started);
                if judge {
                    if let Some(why) = s.breaker.record(now, ok, f.picked.probe, rand::random()) {
                        self.metrics.ejections.inc();
                        tracing::info!(authority = %f.authority, endpoint = %f.picked.ep().addr, reason = ?why, "endpoint ejected");
                    }
                } else if f.picked.probe {
                    s.breaker.probe_answered();
                }
            }
            None => {
                s.ewma.cancel();
                s.breaker.cancel(now, f.picked.probe);
            }
        }
        // A probe's answer makes the endpoint available, or gives it a new penalty, with no
        // clock the waiting requests knew of: they look again.
        let after = (s.up(now), s.up_at(now).is_some());
        if before != after && (after.0 || after.1) {
            self.available.notify_waiters();
        }
    }

    /// The breaker's outcome of an answer whose gRPC status came in its trailers (`ok`: not
    /// one of the server's errors), told when its stream ended (`classify.rs`). A probe's
    /// headers already let its endpoint back in (an ejected endpoint is not held out for as
    /// long as a streaming answer runs); its end decides whether its penalty is forgiven.
    pub(super) fn judged_late(&self, authority: &str, p: &Picked, ok: bool) {
        let now = Instant::now();
        let mut all = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = all.get_mut(authority).and_then(|b| b.state(p)) else {
            return;
        };
        let ejected = if p.probe {
            s.breaker.probe_ended(now, ok, rand::random())
        } else {
            s.breaker.record(now, ok, false, rand::random())
        };
        if let Some(why) = ejected {
            self.metrics.ejections.inc();
            tracing::info!(%authority, endpoint = %p.ep().addr, reason = ?why, "endpoint ejected");
        }
    }

    /// How a request that found no endpoint of `authority` available should wait: Ok(the
    /// earliest time one may be, None if no clock says), or Err if the authority is failing
    /// fast.
    pub(super) fn next_up(&self, authority: &str) -> Result<Option<Instant>, ()> {
        let now = Instant::now();
        let all = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = all.get(authority) else {
            return Ok(None);
        };
        if b.failfast {
            return Err(());
        }
        Ok(b.states.iter().filter_map(|s| s.up_at(now)).min())
    }

    /// Drops the balancers of authorities discovery no longer follows, and the sessions no
    /// other authority needs (`serve`'s clock, every [`SWEEP`]).
    pub(super) fn sweep_balancers(&self) {
        let mut all = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let idle: Vec<String> = all
            .keys()
            .filter(|a| !self.resolver.follows(a))
            .cloned()
            .collect();
        let dropped: Vec<Endpoint> = idle
            .iter()
            .filter_map(|a| all.remove(a))
            .flat_map(|b| b.set.iter().cloned().collect::<Vec<_>>())
            .collect();
        self.release(&all, dropped);
    }

    /// Lets go of the sessions to `dropped` endpoints that no authority in `all` lists any
    /// more (their in-flight requests finish on them regardless). A session is an address
    /// with its proxy port and identity (outside the mesh, the address alone): an address
    /// listed again under another identity (a reused pod IP) still lets the old session go.
    fn release(&self, all: &Balancers, dropped: Vec<Endpoint>) {
        let gone: Vec<_> = dropped
            .into_iter()
            .filter(|e| {
                !all.values().any(|other| {
                    other
                        .set
                        .iter()
                        .any(|o| o.addr == e.addr && o.mesh == e.mesh)
                })
            })
            .map(|e| (e.addr, e.mesh))
            .collect();
        if !gone.is_empty() {
            self.pool.forget(gone);
        }
    }

    /// A request waited the fail-fast timeout in vain: `authority` fails fast from now on.
    pub(super) fn fail_fast(&self, authority: &str) {
        let mut all = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if !all.contains_key(authority) {
            // A set that stayed empty: no balancer was made for it yet.
            all.insert(authority.to_string(), Balancer::empty(self));
        }
        if let Some(b) = all.get_mut(authority) {
            if !b.failfast {
                tracing::info!(%authority, "no endpoint available within the fail-fast timeout: failing fast");
            }
            b.failfast = true;
        }
    }
}

/// After a failed connect an endpoint sits out, 100 ms doubling to 5 s at each transport
/// failure (no answer), until a request to it succeeds again: an endpoint that cannot be reached is not
/// offered requests (Linkerd's reconnect back-off), well before the breaker's seven failures
/// would eject it.
#[derive(Debug, Default)]
struct Reconnect {
    until: Option<Instant>,
    next: Duration,
}

impl Reconnect {
    fn ready(&self, now: Instant) -> bool {
        self.until.is_none_or(|u| now >= u)
    }

    /// Failed since its last success after a failed connect.
    fn failing(&self) -> bool {
        !self.next.is_zero()
    }

    /// A failure: the next back-off starts, unless one is running (failures of requests sent
    /// before it began, or the same failure told twice, take one step).
    fn failed(&mut self, now: Instant) {
        if self.until.is_some_and(|u| u > now) {
            return;
        }
        let d = if self.next.is_zero() {
            Duration::from_millis(100)
        } else {
            self.next
        };
        self.until = Some(now + d);
        self.next = (d * 2).min(Duration::from_secs(5));
    }

    fn ok(&mut self) {
        self.until = None;
        self.next = Duration::ZERO;
    }
}

/// A request in flight on an endpoint: its outcome is recorded exactly once, also when the
/// request future is dropped first.
pub(super) struct InFlight<'a> {
    out: &'a Outbound,
    authority: &'a str,
    picked: Picked,
    started: Instant,
    done: bool,
}

impl<'a> InFlight<'a> {
    pub fn new(out: &'a Outbound, authority: &'a str, picked: &Picked) -> Self {
        InFlight {
            out,
            authority,
            picked: picked.clone(),
            started: Instant::now(),
            done: false,
        }
    }

    /// An answer came (`ok`: not a 5xx), or none did: a timeout, the breaker's alone to
    /// count (`ok` false, not the transport's).
    pub fn finish(mut self, ok: bool) {
        self.done = true;
        self.out.done(&self, Some((ok, false)), true);
    }

    /// An answer came whose outcome its trailers will tell: timed and counted as an answer
    /// now (a probe's lets its endpoint back in), judged by the breaker when its stream ends.
    pub fn finish_judged_later(mut self) {
        self.done = true;
        self.out.done(&self, Some((true, false)), false);
    }

    /// No answer came: the connection or stream failed.
    pub fn failed_transport(mut self) {
        self.done = true;
        self.out.done(&self, Some((false, true)), true);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.out.done(self, None, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step per failure, not per report of it; from the first failed connect, any failure
    /// is a step; a success ends it.
    #[test]
    fn the_reconnect_back_off_steps_once_per_failure_until_a_success() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut r = Reconnect::default();
        assert!(!r.failing() && r.ready(t0));
        r.failed(t0);
        // The same failure told again (the request's outcome, then its connect).
        r.failed(t0);
        assert!(r.failing());
        assert!(!r.ready(ms(99)) && r.ready(ms(100)));
        r.failed(ms(100));
        assert!(!r.ready(ms(299)) && r.ready(ms(300)));
        r.failed(ms(300));
        assert!(!r.ready(ms(699)) && r.ready(ms(700)));
        r.ok();
        assert!(!r.failing() && r.ready(ms(700)));
        r.failed(ms(800));
        assert!(r.ready(ms(900)), "back to the first step after a success");
    }
}
