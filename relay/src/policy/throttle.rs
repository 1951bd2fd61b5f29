//! The shared rate limiter behind `host.throttle`: GCRA (the generic cell rate algorithm).
//!
//! Keys are shared by every plugin that uses the same key, by design: two plugins limiting
//! `domain:example.com` count against one budget. [`LocalThrottle`] keeps the state in this
//! process; a backend shared by several relay nodes (Redis with a small Lua script doing the
//! same arithmetic on the stored TAT) implements the same [`Throttle`] trait.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The answer of the rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ThrottleDecision {
    /// The event is within the limit and was counted.
    pub allowed: bool,
    /// When refused: how long until an event would be allowed.
    pub retry_after: Duration,
}

/// A rate limiter: at most `limit` events per `window` for `key`, bursts of up to `limit`.
pub(crate) trait Throttle: Send + Sync {
    /// Counts one event for `key` if it is within the limit.
    fn check(&self, key: &str, limit: u32, window: Duration) -> ThrottleDecision;
}

const SHARDS: usize = 16;
/// New keys in a shard between two sweeps of expired entries.
const SWEEP_EVERY: u32 = 1024;

/// An in-process GCRA limiter.
///
/// Per key it stores one number, the theoretical arrival time (TAT) of the next event. An event
/// at `now` with emission interval `T = window / limit` is allowed when
/// `max(TAT, now) + T - now <= window`, and then moves TAT to `max(TAT, now) + T`. An entry whose
/// TAT has passed carries no information and is swept.
pub(crate) struct LocalThrottle {
    epoch: Instant,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    /// Theoretical arrival time per key, in nanoseconds since `epoch`.
    tat: HashMap<String, u64>,
    inserted: u32,
}

impl Default for LocalThrottle {
    fn default() -> Self {
        LocalThrottle::new()
    }
}

impl LocalThrottle {
    /// An empty limiter.
    pub fn new() -> LocalThrottle {
        LocalThrottle {
            epoch: Instant::now(),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    /// [`Throttle::check`] at a given time (nanoseconds since this limiter was made).
    fn check_at(&self, key: &str, limit: u32, window: Duration, now: u64) -> ThrottleDecision {
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        if limit == 0 {
            return ThrottleDecision {
                allowed: false,
                retry_after: window,
            };
        }
        if window_ns == 0 {
            return ThrottleDecision {
                allowed: true,
                retry_after: Duration::ZERO,
            };
        }
        let interval = (window_ns / u64::from(limit)).max(1);
        let index = (self.hasher.hash_one(key) as usize) % self.shards.len();
        let mut shard = match self.shards[index].lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let tat = shard.tat.get(key).copied().unwrap_or(0).max(now);
        let next = tat.saturating_add(interval);
        if next - now > window_ns {
            return ThrottleDecision {
                allowed: false,
                retry_after: Duration::from_nanos(next - now - window_ns),
            };
        }
        match shard.tat.get_mut(key) {
            Some(slot) => *slot = next,
            None => {
                shard.tat.insert(key.to_string(), next);
                shard.inserted += 1;
                if shard.inserted >= SWEEP_EVERY {
                    shard.inserted = 0;
                    shard.tat.retain(|_, tat| *tat > now);
                }
            }
        }
        ThrottleDecision {
            allowed: true,
            retry_after: Duration::ZERO,
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Throttle for LocalThrottle {
    fn check(&self, key: &str, limit: u32, window: Duration) -> ThrottleDecision {
        self.check_at(key, limit, window, self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_up_to_the_limit_passes_then_one_per_interval() {
        let t = LocalThrottle::new();
        let w = Duration::from_secs(10);
        for _ in 0..5 {
            assert!(t.check_at("k", 5, w, 100 * SEC).allowed);
        }
        let refused = t.check_at("k", 5, w, 100 * SEC);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(2));
        assert!(!t.check_at("k", 5, w, 101 * SEC).allowed);
        assert!(t.check_at("k", 5, w, 102 * SEC).allowed);
        assert!(!t.check_at("k", 5, w, 102 * SEC).allowed);
    }

    #[test]
    fn keys_are_independent_and_shared_by_name() {
        let t = LocalThrottle::new();
        let w = Duration::from_secs(1);
        assert!(t.check_at("a", 1, w, SEC).allowed);
        assert!(t.check_at("b", 1, w, SEC).allowed);
        assert!(!t.check_at("a", 1, w, SEC).allowed);
    }

    #[test]
    fn zero_limit_refuses_and_zero_window_allows() {
        let t = LocalThrottle::new();
        assert!(!t.check_at("k", 0, Duration::from_secs(1), SEC).allowed);
        assert!(t.check_at("k", 1, Duration::ZERO, SEC).allowed);
        assert!(t.check_at("k", 1, Duration::ZERO, SEC).allowed);
    }

    #[test]
    fn expired_entries_are_swept() {
        let t = LocalThrottle::new();
        let w = Duration::from_millis(1);
        for i in 0..(SWEEP_EVERY as u64 * SHARDS as u64 * 2) {
            t.check_at(&format!("k{i}"), 1, w, i * SEC);
        }
        let total: usize = t
            .shards
            .iter()
            .map(|s| s.lock().map(|s| s.tat.len()).unwrap_or(0))
            .sum();
        assert!(
            total < SWEEP_EVERY as usize * SHARDS,
            "{total} entries kept"
        );
    }
}
