//! Failure accrual per endpoint, the state machine of linkerd2-proxy's breaker
//! (`app/outbound/src/http/breaker/`; ARCHITECTURE.md, "The proxy"): consecutive failures eject
//! an endpoint for an exponentially growing, jittered penalty; when it ends, one probe request
//! decides whether it comes back. A success-rate rule over a ring of time buckets ejects an
//! endpoint that fails often without failing in a row. Pure: time and randomness are passed
//! in, so the balancer drives it and the tests replay it exactly.

use std::time::{Duration, Instant};

/// Settings; the defaults are Linkerd's consecutive-failures breaker (max 7 failures, penalty
/// 1 s doubling to 1 min, jitter 0.5) and a success-rate rule of our own choosing, which
/// Linkerd's docs leave unset: under 50% success over 10 s with at least 20 requests.
#[derive(Clone, Debug)]
pub struct Config {
    pub max_failures: u32,
    pub min_penalty: Duration,
    pub max_penalty: Duration,
    /// Each penalty is stretched by a random factor in [1 - jitter, 1 + jitter].
    pub jitter: f64,
    /// Eject when the success rate over `window` falls below this (0 disables the rule).
    pub min_success_rate: f64,
    /// ... and at least this many requests completed in the window.
    pub min_requests: u32,
    pub window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_failures: 7,
            min_penalty: Duration::from_secs(1),
            max_penalty: Duration::from_secs(60),
            jitter: 0.5,
            min_success_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
        }
    }
}

/// Whether the balancer may send a request to the endpoint now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the one probe of an ejected endpoint; its outcome decides.
    Probe,
    No,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// The probe is in flight: nothing else until it answers.
    Probing,
}

/// Why an endpoint was ejected (for its metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ejected {
    ConsecutiveFailures,
    SuccessRate,
    FailedProbe,
}

const BUCKETS: usize = 10;

#[derive(Debug)]
pub struct Breaker {
    cfg: Config,
    state: State,
    consecutive: u32,
    /// Ejections in a row without a successful probe: the penalty's exponent.
    ejections: u32,
    /// (bucket start, successes, failures), ring over `window`.
    ring: [(Option<Instant>, u32, u32); BUCKETS],
}

impl Breaker {
    pub fn new(cfg: Config) -> Self {
        Breaker {
            cfg,
            state: State::Closed,
            consecutive: 0,
            ejections: 0,
            ring: [(None, 0, 0); BUCKETS],
        }
    }

    pub fn is_ejected(&self) -> bool {
        !matches!(self.state, State::Closed)
    }

    /// Whether [`admit`](Self::admit) would let a request through at `now` (without taking
    /// the probe): what the balancer filters its candidates by.
    pub fn available(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } => now >= until,
            State::Probing => false,
        }
    }

    /// When [`available`](Self::available) holds again: now if closed, at the penalty's end
    /// if ejected, None while the probe is out (its answer decides).
    pub fn available_at(&self, now: Instant) -> Option<Instant> {
        match self.state {
            State::Closed => Some(now),
            State::Open { until } => Some(until),
            State::Probing => None,
        }
    }

    /// Asked before a request is sent to this endpoint.
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed => Admit::Yes,
            State::Open { until } if now >= until => {
                self.state = State::Probing;
                Admit::Probe
            }
            State::Open { .. } | State::Probing => Admit::No,
        }
    }

    /// A request that ended without an outcome (its caller went away): a probe (`probe`: it
    /// was the one [`admit`](Self::admit) let through as such) is handed back, so the next
    /// request probes instead of the endpoint staying out for good.
    pub fn cancel(&mut self, now: Instant, probe: bool) {
        if probe && self.state == State::Probing {
            self.state = State::Open { until: now };
        }
    }

    /// The probe was answered, but its outcome comes at its answer's end (a gRPC status in
    /// the trailers): the endpoint takes requests again, so that a streaming answer does not
    /// hold it out, but its penalty is not forgiven until [`Breaker::probe_ended`] says the
    /// answer ended well (else a Service failing in its trailers would be let back in at the
    /// shortest penalty every time).
    pub fn probe_answered(&mut self) {
        if self.state == State::Probing {
            self.state = State::Closed;
            self.consecutive = 0;
        }
    }

    /// The end of the answer to a probe let back in by [`Breaker::probe_answered`]: counted
    /// like any other request's outcome; a success also forgives past ejections.
    pub fn probe_ended(&mut self, now: Instant, success: bool, rand: f64) -> Option<Ejected> {
        let ejected = self.record(now, success, false, rand);
        if success && self.state == State::Closed {
            self.ejections = 0;
            self.ring = [(None, 0, 0); BUCKETS];
        }
        ejected
    }

    /// A response (or connection failure) of this endpoint; `probe`: the request was the one
    /// [`admit`](Self::admit) let through as the probe (only its outcome ends a probation);
    /// `rand` in [0, 1) jitters a new penalty. Returns the ejection it caused, if any.
    pub fn record(
        &mut self,
        now: Instant,
        success: bool,
        probe: bool,
        rand: f64,
    ) -> Option<Ejected> {
        self.count(now, success);
        match self.state {
            // Late answers of requests sent before the ejection change nothing.
            State::Probing | State::Open { .. } if !probe => None,
            State::Probing if success => {
                self.state = State::Closed;
                self.consecutive = 0;
                self.ejections = 0;
                self.ring = [(None, 0, 0); BUCKETS];
                None
            }
            State::Probing => {
                self.eject(now, rand);
                Some(Ejected::FailedProbe)
            }
            State::Open { .. } => None,
            State::Closed if success => {
                self.consecutive = 0;
                None
            }
            State::Closed => {
                self.consecutive += 1;
                if self.consecutive >= self.cfg.max_failures {
                    self.eject(now, rand);
                    Some(Ejected::ConsecutiveFailures)
                } else if self.success_rate_low(now) {
                    self.eject(now, rand);
                    Some(Ejected::SuccessRate)
                } else {
                    None
                }
            }
        }
    }

    /// The penalty of the next ejection: min_penalty · 2^ejections, capped, jittered.
    fn penalty(&self, rand: f64) -> Duration {
        let base = self
            .cfg
            .min_penalty
            .saturating_mul(1u32 << self.ejections.min(20))
            .min(self.cfg.max_penalty);
        let j = self.cfg.jitter.clamp(0.0, 1.0);
        base.mul_f64(1.0 - j + 2.0 * j * rand.clamp(0.0, 1.0))
    }

    fn eject(&mut self, now: Instant, rand: f64) {
        let until = now + self.penalty(rand);
        self.ejections = self.ejections.saturating_add(1);
        self.consecutive = 0;
        self.state = State::Open { until };
    }

    fn bucket_len(&self) -> Duration {
        (self.cfg.window / BUCKETS as u32).max(Duration::from_millis(1))
    }

    fn count(&mut self, now: Instant, success: bool) {
        let len = self.bucket_len();
        // The bucket this instant falls in: the newest if it is still current, else a fresh one
        // in place of the oldest.
        let newest = self
            .ring
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.0.map(|t| (t, i)))
            .max();
        let i = match newest {
            Some((t, i)) if now < t + len => i,
            _ => {
                let oldest = (0..BUCKETS)
                    .min_by_key(|&i| self.ring[i].0)
                    .unwrap_or_default();
                self.ring[oldest] = (Some(now), 0, 0);
                oldest
            }
        };
        if success {
            self.ring[i].1 += 1;
        } else {
            self.ring[i].2 += 1;
        }
    }

    fn success_rate_low(&self, now: Instant) -> bool {
        if self.cfg.min_success_rate <= 0.0 {
            return false;
        }
        let (ok, failed) = self
            .ring
            .iter()
            .filter(|b| b.0.is_some_and(|t| now < t + self.cfg.window))
            .fold((0u32, 0u32), |(o, f), b| (o + b.1, f + b.2));
        let total = ok + failed;
        total >= self.cfg.min_requests.max(1)
            && f64::from(ok) < self.cfg.min_success_rate * f64::from(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> Config {
        Config {
            jitter: 0.0,
            min_success_rate: 0.0,
            ..Config::default()
        }
    }

    #[test]
    fn seven_failures_in_a_row_eject_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(no_jitter());
        for _ in 0..6 {
            assert_eq!(b.record(t0, false, false, 0.5), None);
        }
        assert_eq!(
            b.record(t0, true, false, 0.5),
            None,
            "a success breaks the run"
        );
        for _ in 0..6 {
            assert_eq!(b.record(t0, false, false, 0.5), None);
        }
        assert_eq!(
            b.record(t0, false, false, 0.5),
            Some(Ejected::ConsecutiveFailures)
        );
        assert!(b.is_ejected());
        assert_eq!(b.admit(t0), Admit::No);
    }

    /// Waits out `b`'s penalty from `now` in steps of 250 ms: how long it lasted (in
    /// seconds), `now` moved to its end.
    fn wait_out(b: &mut Breaker, now: &mut Instant) -> f64 {
        let mut waited = Duration::ZERO;
        while b.admit(*now) == Admit::No {
            *now += Duration::from_millis(250);
            waited += Duration::from_millis(250);
        }
        waited.as_secs_f64()
    }

    #[test]
    fn penalties_double_to_the_cap_and_a_good_probe_restores() {
        let mut now = Instant::now();
        let mut b = Breaker::new(Config {
            max_failures: 1,
            ..no_jitter()
        });
        assert_eq!(
            b.record(now, false, false, 0.0),
            Some(Ejected::ConsecutiveFailures)
        );
        let mut penalties = Vec::new();
        for _ in 0..8 {
            penalties.push(wait_out(&mut b, &mut now));
            // The probe is the only request let through, and it fails.
            assert_eq!(b.admit(now), Admit::No, "one probe at a time");
            assert_eq!(b.record(now, false, true, 0.0), Some(Ejected::FailedProbe));
        }
        assert_eq!(penalties, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]);
        while b.admit(now) == Admit::No {
            now += Duration::from_secs(1);
        }
        assert_eq!(b.record(now, true, true, 0.0), None);
        assert!(!b.is_ejected());
        assert_eq!(b.admit(now), Admit::Yes);
        // Back to the first penalty after a recovery.
        assert_eq!(
            b.record(now, false, false, 0.0),
            Some(Ejected::ConsecutiveFailures)
        );
        assert!(b.admit(now + Duration::from_millis(999)) == Admit::No);
        assert_eq!(b.admit(now + Duration::from_secs(1)), Admit::Probe);
    }

    /// A probe whose outcome comes in its trailers lets the endpoint back in at its headers,
    /// but only a good end forgives its penalty: an endpoint failing in its trailers is
    /// kept out longer and longer, as one failing in its headers is.
    #[test]
    fn a_probe_judged_at_its_end_forgives_only_when_it_ended_well() {
        let mut now = Instant::now();
        let mut b = Breaker::new(Config {
            max_failures: 1,
            ..no_jitter()
        });
        assert_eq!(
            b.record(now, false, false, 0.0),
            Some(Ejected::ConsecutiveFailures)
        );
        let mut penalties = Vec::new();
        for _ in 0..3 {
            penalties.push(wait_out(&mut b, &mut now));
            b.probe_answered();
            assert!(!b.is_ejected(), "back in at its headers");
            assert_eq!(
                b.probe_ended(now, false, 0.0),
                Some(Ejected::ConsecutiveFailures)
            );
        }
        assert_eq!(penalties, [1.0, 2.0, 4.0], "each failed end doubles it");
        assert_eq!(wait_out(&mut b, &mut now), 8.0);
        b.probe_answered();
        assert_eq!(b.probe_ended(now, true, 0.0), None);
        // Forgiven: the next ejection starts at the shortest penalty again.
        assert_eq!(
            b.record(now, false, false, 0.0),
            Some(Ejected::ConsecutiveFailures)
        );
        assert_eq!(wait_out(&mut b, &mut now), 1.0);
    }

    #[test]
    fn jitter_spreads_the_penalty() {
        let t0 = Instant::now();
        let cfg = Config {
            max_failures: 1,
            min_success_rate: 0.0,
            ..Config::default()
        };
        for (rand, secs) in [(0.0, 0.5), (0.5, 1.0), (0.999, 1.499)] {
            let mut b = Breaker::new(cfg.clone());
            b.record(t0, false, false, rand);
            let until = t0 + Duration::from_secs_f64(secs);
            assert_eq!(
                b.admit(until - Duration::from_millis(1)),
                Admit::No,
                "{rand}"
            );
            assert_eq!(
                b.admit(until + Duration::from_millis(1)),
                Admit::Probe,
                "{rand}"
            );
        }
    }

    #[test]
    fn a_low_success_rate_ejects_without_failures_in_a_row() {
        let mut now = Instant::now();
        let mut b = Breaker::new(Config {
            jitter: 0.0,
            ..Config::default()
        });
        // 40% success, alternating: never 7 failures in a row.
        let mut ejected = None;
        for i in 0..40 {
            ejected = b.record(now, i % 5 < 2, false, 0.0);
            now += Duration::from_millis(100);
            if ejected.is_some() {
                break;
            }
        }
        assert_eq!(ejected, Some(Ejected::SuccessRate));
        // 80% success over the same span is left alone.
        let mut b = Breaker::new(Config {
            jitter: 0.0,
            ..Config::default()
        });
        for i in 0..100 {
            assert_eq!(b.record(now, i % 5 != 0, false, 0.0), None);
            now += Duration::from_millis(100);
        }
    }

    #[test]
    fn old_buckets_age_out_of_the_success_rate() {
        let mut now = Instant::now();
        let mut b = Breaker::new(Config {
            jitter: 0.0,
            ..Config::default()
        });
        // 18 requests, 15 failed (never 7 in a row): under the 20 the rule needs.
        for i in 0..18 {
            assert_eq!(b.record(now, i % 6 == 5, false, 0.0), None);
        }
        now += Duration::from_secs(30);
        // 5 more, 4 failed: with the old ones that would be 23 at 17% success, an ejection;
        // the old ones are past the window, so these 5 alone are too few to judge.
        for ok in [false, false, true, false, false] {
            assert_eq!(b.record(now, ok, false, 0.0), None);
        }
        assert!(!b.is_ejected());
    }

    #[test]
    fn a_cancelled_probe_is_handed_back() {
        let t0 = Instant::now();
        let mut b = Breaker::new(Config {
            max_failures: 1,
            ..no_jitter()
        });
        b.record(t0, false, false, 0.0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.admit(t1), Admit::No);
        // An old request cancelled meanwhile does not hand out a second probe.
        b.cancel(t1, false);
        assert_eq!(b.admit(t1), Admit::No);
        b.cancel(t1, true);
        assert_eq!(b.admit(t1), Admit::Probe, "the next request probes");
    }

    #[test]
    fn late_answers_after_an_ejection_change_nothing() {
        let t0 = Instant::now();
        let mut b = Breaker::new(Config {
            max_failures: 1,
            ..no_jitter()
        });
        b.record(t0, false, false, 0.0);
        assert_eq!(b.record(t0, true, false, 0.0), None);
        assert_eq!(b.record(t0, false, false, 0.0), None);
        assert_eq!(b.admit(t0 + Duration::from_millis(500)), Admit::No);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.admit(t1), Admit::Probe);
        // While the probe is out, an old request's answer neither closes nor re-ejects.
        assert_eq!(b.record(t1, true, false, 0.0), None);
        assert!(b.is_ejected());
        assert_eq!(b.record(t1, false, false, 0.0), None);
        assert_eq!(
            b.record(t1, true, true, 0.0),
            None,
            "the probe's answer decides"
        );
        assert!(!b.is_ejected());
    }
}
