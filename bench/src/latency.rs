//! Latency percentiles from every recorded sample (a sorted vector: exact, and
//! at 4 bytes a sample small enough for any run this machine can drive).

use std::time::Duration;

/// Recorded latencies in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    micros: Vec<u32>,
}

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Latencies {
    /// Records one sample; anything over 71 minutes is recorded as 71 minutes.
    pub fn record(&mut self, latency: Duration) {
        self.micros
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
    }

    /// Nearest-rank percentiles, or `None` without samples.
    pub fn summary(&mut self) -> Option<Summary> {
        if self.micros.is_empty() {
            return None;
        }
        self.micros.sort_unstable();
        let n = self.micros.len();
        let ms = |us: u32| f64::from(us) / 1000.0;
        let rank = |p: f64| {
            // Nearest rank: the smallest sample with at least p% of samples at or below it.
            let r = (p / 100.0 * n as f64).ceil() as usize;
            ms(self.micros[r.clamp(1, n) - 1])
        };
        let sum: u64 = self.micros.iter().map(|&us| u64::from(us)).sum();
        Some(Summary {
            count: n,
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: ms(self.micros[n - 1]),
            mean: sum as f64 / n as f64 / 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut l = Latencies::default();
        for ms in (1..=100).rev() {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary().unwrap();
        assert_eq!(
            (s.count, s.p50, s.p90, s.p99, s.max),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert!((s.mean - 50.5).abs() < 1e-9);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let mut l = Latencies::default();
        l.record(Duration::from_micros(1500));
        let s = l.summary().unwrap();
        assert_eq!((s.p50, s.p99, s.max), (1.5, 1.5, 1.5));
    }

    #[test]
    fn no_samples_no_summary() {
        assert_eq!(Latencies::default().summary(), None);
    }

    #[test]
    fn merged_samples_count_once_each() {
        let mut a = Latencies::default();
        let mut b = Latencies::default();
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(3));
        a.merge(b);
        assert_eq!(a.summary().unwrap().count, 2);
    }
}
