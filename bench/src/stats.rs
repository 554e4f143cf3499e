//! Order statistics of a sample of durations.
//!
//! Why nearest-rank percentiles: with 20 launches a p95 is the 19th value, an observed time, not an
//! interpolation between two launches that never happened; with one launch every percentile is that launch.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What one system measured, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Nearest-rank percentile `p` (0 < p ≤ 100) of an ascending sample; `None` when it is empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    // rank = ceil(p/100 · n), clamped into 1..=n.
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    let idx = rank.clamp(1, n) - 1;
    sorted.get(idx).copied()
}

/// The summary of `samples`; `None` when there are none.
pub fn summarize(samples: &[Duration]) -> Option<Summary> {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    summarize_ms(&mut ms)
}

/// [`summarize`] of millisecond values (sorted in place).
pub fn summarize_ms(ms: &mut [f64]) -> Option<Summary> {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    Some(Summary {
        n,
        min_ms: *ms.first()?,
        p50_ms: percentile(ms, 50.0)?,
        p95_ms: percentile(ms, 95.0)?,
        p99_ms: percentile(ms, 99.0)?,
        max_ms: *ms.last()?,
        mean_ms: ms.iter().sum::<f64>() / n as f64,
    })
}

/// `a / b`, or `None` when either is missing or `b` is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_on_twenty_values() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 95.0), Some(19.0));
        assert_eq!(percentile(&v, 99.0), Some(20.0));
        assert_eq!(percentile(&v, 100.0), Some(20.0));
        assert_eq!(percentile(&v, 0.1), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let s = summarize(&[Duration::from_millis(7)]).unwrap();
        assert_eq!(
            (s.n, s.min_ms, s.p50_ms, s.p99_ms, s.max_ms),
            (1, 7.0, 7.0, 7.0, 7.0)
        );
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn summary_is_order_independent() {
        let a = summarize(&[3, 1, 2].map(Duration::from_millis)).unwrap();
        let b = summarize(&[1, 2, 3].map(Duration::from_millis)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.p50_ms, 2.0);
        assert!((a.mean_ms - 2.0).abs() < 1e-9);
    }

    #[test]
    fn ratios_refuse_missing_and_zero() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }
}
