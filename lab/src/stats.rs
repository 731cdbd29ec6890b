//! Percentiles for the benchmarks' reports (nearest rank on a sorted copy).

/// The `p` quantile (0..=1) of `v`, sorting it in place; NaN when empty.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}
