//! Choosing an endpoint: power of two choices over peak-EWMA load (linkerd2-proxy's balancer,
//! tower's `PeakEwma`; ARCHITECTURE.md, "The proxy"). Each endpoint's load is its peak-EWMA
//! round-trip time times (pending requests + 1): a slow endpoint and a busy one both look
//! heavy. A new endpoint starts at the default RTT (Linkerd's 30 ms), so it is neither
//! flooded nor starved; an RTT above the average replaces it at once (the peak) and decays
//! back with the decay time (Linkerd's 10 s). Endpoints the breaker ejects are skipped; a
//! removed endpoint's in-flight requests finish on their own sessions. Pure: the caller passes
//! time and random numbers.

use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Config {
    pub default_rtt: Duration,
    pub decay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

/// The load estimate of one endpoint.
#[derive(Clone, Debug)]
pub struct PeakEwma {
    /// Nanoseconds.
    rtt: f64,
    at: Instant,
    pending: u32,
}

impl PeakEwma {
    pub fn new(cfg: &Config, now: Instant) -> Self {
        PeakEwma {
            rtt: cfg.default_rtt.as_nanos() as f64,
            at: now,
            pending: 0,
        }
    }

    /// The decayed RTT estimate at `now`, without recording anything.
    fn rtt_at(&self, cfg: &Config, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
        let decay = cfg.decay.as_nanos().max(1) as f64;
        // Towards zero while idle, as tower's PeakEwma: an endpoint not heard from in a while
        // gets tried again.
        self.rtt * (-elapsed / decay).exp()
    }

    pub fn load(&self, cfg: &Config, now: Instant) -> f64 {
        self.rtt_at(cfg, now) * f64::from(self.pending + 1)
    }

    pub fn start(&mut self) {
        self.pending += 1;
    }

    /// A request that ended without an answer to learn from (its caller went away).
    pub fn cancel(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// A response (or failure) after `rtt`.
    pub fn finish(&mut self, cfg: &Config, now: Instant, rtt: Duration) {
        self.pending = self.pending.saturating_sub(1);
        let rtt = rtt.as_nanos() as f64;
        self.rtt = if rtt > self.rtt_at(cfg, now) {
            rtt
        } else {
            // The stored estimate weighted by how long ago it was made (tower's PeakEwma):
            // not the decayed view, which would decay it twice.
            let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
            let w = (-elapsed / cfg.decay.as_nanos().max(1) as f64).exp();
            self.rtt * w + rtt * (1.0 - w)
        };
        self.at = now;
    }
}

/// Picks among `loads` (None: not available, e.g. ejected) by power of two choices: two
/// distinct candidates drawn with `r1`, `r2` in [0, 1), the lighter wins. One candidate: it.
pub fn p2c(loads: &[Option<f64>], r1: f64, r2: f64) -> Option<usize> {
    p2c_by(
        loads.len(),
        |i| loads[i].is_some(),
        |i| loads[i].unwrap_or(f64::INFINITY),
        r1,
        r2,
    )
}

/// `p2c` over `n` endpoints, `avail` saying which may be drawn and `load` their load (asked
/// of the two drawn only), without collecting anything: it runs on every request.
pub fn p2c_by(
    n: usize,
    avail: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> f64,
    r1: f64,
    r2: f64,
) -> Option<usize> {
    // The k-th available endpoint.
    let nth = |k: usize| (0..n).filter(|&i| avail(i)).nth(k);
    let up = (0..n).filter(|&i| avail(i)).count();
    match up {
        0 => None,
        1 => nth(0),
        up => {
            let a = ((r1 * up as f64) as usize).min(up - 1);
            // The second from the other up - 1, so the two differ.
            let mut b = ((r2 * (up - 1) as f64) as usize).min(up - 2);
            if b >= a {
                b += 1;
            }
            let (ia, ib) = (nth(a)?, nth(b)?);
            Some(if load(ib) < load(ia) { ib } else { ia })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for the simulations.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn peaks_count_at_once_and_decay_back() {
        let cfg = Config::default();
        let t0 = Instant::now();
        let mut e = PeakEwma::new(&cfg, t0);
        let ms = |x: f64| x * 1e6;
        assert!((e.load(&cfg, t0) - ms(30.0)).abs() < 1.0);
        e.start();
        e.finish(&cfg, t0, Duration::from_millis(100));
        assert!(
            (e.load(&cfg, t0) - ms(100.0)).abs() < 1.0,
            "a peak replaces the average"
        );
        // Fast answers pull it down with the decay: after one decay time, about 1/e of the way.
        let t1 = t0 + Duration::from_secs(10);
        e.start();
        e.finish(&cfg, t1, Duration::from_millis(1));
        let l = e.load(&cfg, t1);
        assert!(l > ms(1.0) && l < ms(40.0), "{l}");
        // Pending requests multiply the load.
        e.start();
        e.start();
        assert!((e.load(&cfg, t1) - 3.0 * l).abs() < 1.0);
    }

    #[test]
    fn p2c_picks_the_lighter_of_two_distinct_and_skips_the_unavailable() {
        assert_eq!(p2c(&[], 0.1, 0.2), None);
        assert_eq!(p2c(&[None, None], 0.1, 0.2), None);
        assert_eq!(p2c(&[None, Some(5.0)], 0.9, 0.9), Some(1));
        // Two candidates: always compared with each other, whatever the draws.
        for (r1, r2) in [(0.0, 0.0), (0.99, 0.99), (0.5, 0.1)] {
            assert_eq!(p2c(&[Some(2.0), Some(1.0)], r1, r2), Some(1));
        }
        // Three: draws 0 and (0 → skip past a) 1.
        assert_eq!(p2c(&[Some(3.0), Some(1.0), Some(0.5)], 0.0, 0.0), Some(1));
        assert_eq!(p2c(&[Some(3.0), Some(1.0), Some(0.5)], 0.0, 0.9), Some(2));
    }

    /// The scenario in simulation: of three endpoints, one 50 ms slower, it gets under
    /// 10% of the requests (the lab test checks the same through real proxies).
    #[test]
    fn a_slow_endpoint_gets_few_requests() {
        let cfg = Config::default();
        let mut now = Instant::now();
        let mut eps: Vec<PeakEwma> = (0..3).map(|_| PeakEwma::new(&cfg, now)).collect();
        let rtt = [1u64, 1, 51];
        let mut rng = Lcg(7);
        let mut count = [0u32; 3];
        for _ in 0..3000 {
            let loads: Vec<Option<f64>> = eps.iter().map(|e| Some(e.load(&cfg, now))).collect();
            let i = p2c(&loads, rng.next(), rng.next()).unwrap();
            count[i] += 1;
            eps[i].start();
            eps[i].finish(&cfg, now, Duration::from_millis(rtt[i]));
            now += Duration::from_millis(2);
        }
        let share = f64::from(count[2]) / 3000.0;
        assert!(share < 0.10, "slow endpoint share {share:.3} ({count:?})");
        assert!(count[0] > 1000 && count[1] > 1000, "{count:?}");
    }
}
