//! The brute-force limiter: failed SMTP AUTH attempts counted per client address.
//!
//! Each client (an IPv4 address, or the /64 of an IPv6 address, since one host usually holds a
//! whole /64) has a fixed window that opens at its first failure. Within it, failures past
//! `delay_after` delay every later attempt (1 s, 2 s, 4 s, then 8 s), and reaching
//! `max_failures` locks the client out of AUTH for `lockout`. When the window (or the lockout)
//! has passed, the client starts afresh. A successful login clears the count.
//!
//! The limiter never reads the clock: callers pass `now`, so the schedule is tested without
//! sleeping. Memory is bounded: expired entries are swept, and at most [`MAX_TRACKED`] clients
//! are tracked (past that, new clients are not limited until entries expire, rather than
//! evicting a client that is locked out).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most client addresses (or IPv6 /64s) tracked at once: about 4 MB.
pub const MAX_TRACKED: usize = 100_000;

/// The first delay, after `delay_after` failures; each further failure doubles it.
const FIRST_DELAY: Duration = Duration::from_secs(1);

/// The longest delay before an attempt is answered.
const MAX_DELAY: Duration = Duration::from_secs(8);

/// How often, at most, failures sweep out expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How repeated failures are slowed down and then locked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterSettings {
    /// Failures within the window after which every attempt is delayed (0 acts as 1: from the
    /// first failure on).
    pub delay_after: u32,
    /// Failures within the window that lock the client out; at least 1.
    pub max_failures: u32,
    /// The window failures are counted in; it opens at a client's first failure.
    pub window: Duration,
    /// How long a locked-out client is refused.
    pub lockout: Duration,
}

impl Default for LimiterSettings {
    /// Delay after 3 failures, lock out for 15 minutes after 10 failures within 15 minutes.
    fn default() -> Self {
        LimiterSettings {
            delay_after: 3,
            max_failures: 10,
            window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(15 * 60),
        }
    }
}

/// What to do with an AUTH attempt from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Verify the credentials now.
    Allow,
    /// Wait this long, then verify the credentials.
    Delay(Duration),
    /// Refuse without verifying: the client failed too often.
    LockedOut {
        /// Until the lockout ends.
        remaining: Duration,
    },
}

/// Whom failures are counted for: an IPv4 address or the first 64 bits of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6Prefix(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> ClientKey {
        // An IPv4-mapped IPv6 address (a dual-stack listener) is the IPv4 client it maps.
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => ClientKey::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

/// One client's failures.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// Failures since `window_start`.
    failures: u32,
    /// The first failure of the current window.
    window_start: Instant,
    /// Set when `failures` reached `max_failures`.
    locked_until: Option<Instant>,
}

impl Record {
    /// True once neither the window nor a lockout applies any more.
    fn expired(&self, settings: &LimiterSettings, now: Instant) -> bool {
        match self.locked_until {
            Some(until) => now >= until,
            None => now.saturating_duration_since(self.window_start) >= settings.window,
        }
    }
}

struct State {
    clients: HashMap<ClientKey, Record>,
    last_sweep: Option<Instant>,
}

/// Counts failed AUTH attempts per client and says when to slow down or refuse one.
///
/// Internally synchronized: share it (or an `Arc` of it) between sessions.
pub struct AuthLimiter {
    settings: LimiterSettings,
    capacity: usize,
    state: Mutex<State>,
}

impl AuthLimiter {
    /// A limiter with nothing counted yet. A `max_failures` of 0 is taken as 1.
    pub fn new(settings: LimiterSettings) -> AuthLimiter {
        AuthLimiter::with_capacity(settings, MAX_TRACKED)
    }

    fn with_capacity(mut settings: LimiterSettings, capacity: usize) -> AuthLimiter {
        settings.max_failures = settings.max_failures.max(1);
        AuthLimiter {
            settings,
            capacity,
            state: Mutex::new(State {
                clients: HashMap::new(),
                last_sweep: None,
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &LimiterSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the map consistent, so a panic elsewhere does not poison it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an attempt from `ip` may be verified now, after a delay, or not at all.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Admission {
        let key = ClientKey::of(ip);
        let mut state = self.lock();
        let Some(record) = state.clients.get(&key).copied() else {
            return Admission::Allow;
        };
        if record.expired(&self.settings, now) {
            state.clients.remove(&key);
            return Admission::Allow;
        }
        if let Some(until) = record.locked_until {
            return Admission::LockedOut {
                remaining: until.saturating_duration_since(now),
            };
        }
        self.delay_for(record.failures)
    }

    /// The answer for a client with `failures` failures in its window, not locked out.
    fn delay_for(&self, failures: u32) -> Admission {
        // 0 is taken as 1: with no failure yet there is nothing to slow down.
        let delay_after = self.settings.delay_after.max(1);
        if failures < delay_after {
            return Admission::Allow;
        }
        let doublings = (failures - delay_after).min(8);
        Admission::Delay(FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY))
    }

    /// Counts a failed attempt from `ip`; true when this failure started a lockout (so the
    /// caller logs it once).
    pub fn failure(&self, ip: IpAddr, now: Instant) -> bool {
        let key = ClientKey::of(ip);
        let settings = self.settings;
        let mut state = self.lock();
        self.sweep(&mut state, now);
        let full = state.clients.len() >= self.capacity;
        let fresh = Record {
            failures: 0,
            window_start: now,
            locked_until: None,
        };
        let record = match state.clients.entry(key) {
            Entry::Occupied(entry) => {
                let record = entry.into_mut();
                if record.expired(&settings, now) {
                    *record = fresh;
                }
                record
            }
            Entry::Vacant(_) if full => return false,
            Entry::Vacant(entry) => entry.insert(fresh),
        };
        if record.locked_until.is_some() {
            // Already locked out (a login admitted before the lockout began): no second start.
            return false;
        }
        record.failures = record.failures.saturating_add(1);
        if record.failures >= settings.max_failures {
            record.locked_until = Some(now + settings.lockout);
            return true;
        }
        false
    }

    /// Forgets the failures of `ip` after it logged in.
    pub fn success(&self, ip: IpAddr) {
        let key = ClientKey::of(ip);
        let mut state = self.lock();
        if state
            .clients
            .get(&key)
            .is_some_and(|r| r.locked_until.is_none())
        {
            state.clients.remove(&key);
        }
    }

    /// Drops expired entries, at most once a minute unless the table is full.
    fn sweep(&self, state: &mut State, now: Instant) {
        let due = state
            .last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= SWEEP_EVERY);
        if !due && state.clients.len() < self.capacity {
            return;
        }
        let settings = self.settings;
        state.clients.retain(|_, r| !r.expired(&settings, now));
        state.last_sweep = Some(now);
    }

    /// How many clients are tracked.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MINUTE: Duration = Duration::from_secs(60);

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn fail_times(limiter: &AuthLimiter, ip: IpAddr, now: Instant, n: u32) -> Vec<bool> {
        (0..n).map(|_| limiter.failure(ip, now)).collect()
    }

    #[test]
    fn defaults_delay_after_three_and_lock_out_after_ten_for_fifteen_minutes() {
        let s = LimiterSettings::default();
        assert_eq!((s.delay_after, s.max_failures), (3, 10));
        assert_eq!((s.window, s.lockout), (15 * MINUTE, 15 * MINUTE));
    }

    #[test]
    fn delay_grows_past_delay_after_and_caps_at_eight_seconds() {
        let limiter = AuthLimiter::new(LimiterSettings::default());
        let client = ip("192.0.2.7");
        let t0 = Instant::now();
        let mut schedule = Vec::new();
        for _ in 0..9 {
            schedule.push(limiter.check(client, t0));
            assert!(!limiter.failure(client, t0));
        }
        let secs = |s| Admission::Delay(Duration::from_secs(s));
        assert_eq!(
            schedule,
            vec![
                Admission::Allow,
                Admission::Allow,
                Admission::Allow,
                secs(1),
                secs(2),
                secs(4),
                secs(8),
                secs(8),
                secs(8),
            ]
        );
    }

    #[test]
    fn the_tenth_failure_starts_one_lockout_that_ends_after_the_lockout_time() {
        let limiter = AuthLimiter::new(LimiterSettings::default());
        let client = ip("192.0.2.8");
        let t0 = Instant::now();
        let started = fail_times(&limiter, client, t0, 10);
        assert_eq!(started.iter().filter(|s| **s).count(), 1);
        assert!(started[9], "the tenth failure starts the lockout");
        assert_eq!(
            limiter.check(client, t0 + MINUTE),
            Admission::LockedOut {
                remaining: 14 * MINUTE
            }
        );
        assert!(
            !limiter.failure(client, t0 + MINUTE),
            "a failure while locked out does not start another lockout"
        );
        assert_eq!(limiter.check(client, t0 + 15 * MINUTE), Admission::Allow);
        assert!(
            !limiter.failure(client, t0 + 15 * MINUTE),
            "counting starts afresh after the lockout"
        );
        assert_eq!(limiter.check(client, t0 + 15 * MINUTE), Admission::Allow);
    }

    #[test]
    fn failures_outside_the_window_start_a_new_count() {
        let limiter = AuthLimiter::new(LimiterSettings::default());
        let client = ip("192.0.2.9");
        let t0 = Instant::now();
        fail_times(&limiter, client, t0, 9);
        assert_eq!(
            limiter.check(client, t0 + 14 * MINUTE),
            Admission::Delay(MAX_DELAY)
        );
        let later = t0 + 15 * MINUTE;
        assert_eq!(limiter.check(client, later), Admission::Allow);
        assert_eq!(fail_times(&limiter, client, later, 9), vec![false; 9]);
        assert!(limiter.failure(client, later), "ten in the new window");
    }

    #[test]
    fn success_clears_the_count_but_not_a_lockout() {
        let limiter = AuthLimiter::new(LimiterSettings::default());
        let client = ip("192.0.2.10");
        let t0 = Instant::now();
        fail_times(&limiter, client, t0, 5);
        limiter.success(client);
        assert_eq!(limiter.check(client, t0), Admission::Allow);
        fail_times(&limiter, client, t0, 10);
        limiter.success(client);
        assert!(matches!(
            limiter.check(client, t0),
            Admission::LockedOut { .. }
        ));
    }

    #[test]
    fn clients_are_counted_separately() {
        let limiter = AuthLimiter::new(LimiterSettings::default());
        let t0 = Instant::now();
        fail_times(&limiter, ip("192.0.2.1"), t0, 10);
        assert_eq!(limiter.check(ip("192.0.2.2"), t0), Admission::Allow);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client_and_mapped_ipv4_is_the_ipv4_client() {
        let limiter = AuthLimiter::new(LimiterSettings::default());
        let t0 = Instant::now();
        fail_times(&limiter, ip("2001:db8:1:2::1"), t0, 10);
        assert!(matches!(
            limiter.check(ip("2001:db8:1:2:ffff::9"), t0),
            Admission::LockedOut { .. }
        ));
        assert_eq!(limiter.check(ip("2001:db8:1:3::1"), t0), Admission::Allow);

        let v4 = Ipv4Addr::new(198, 51, 100, 4);
        fail_times(&limiter, IpAddr::V6(v4.to_ipv6_mapped()), t0, 10);
        assert!(matches!(
            limiter.check(IpAddr::V4(v4), t0),
            Admission::LockedOut { .. }
        ));
    }

    #[test]
    fn delay_after_zero_delays_from_the_first_failure_and_not_before() {
        let limiter = AuthLimiter::new(LimiterSettings {
            delay_after: 0,
            max_failures: 5,
            window: MINUTE,
            lockout: MINUTE,
        });
        let client = ip("192.0.2.11");
        let t0 = Instant::now();
        assert_eq!(limiter.check(client, t0), Admission::Allow);
        limiter.failure(client, t0);
        assert_eq!(limiter.check(client, t0), Admission::Delay(FIRST_DELAY));
    }

    #[test]
    fn memory_is_bounded_and_expired_entries_are_swept() {
        let limiter = AuthLimiter::with_capacity(LimiterSettings::default(), 3);
        let t0 = Instant::now();
        for n in 1..=5u8 {
            limiter.failure(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)), t0);
        }
        assert_eq!(limiter.tracked(), 3, "no more than the capacity");
        assert_eq!(
            limiter.check(ip("10.0.0.5"), t0),
            Admission::Allow,
            "an untracked client is not limited"
        );
        let later = t0 + 16 * MINUTE;
        limiter.failure(IpAddr::V6(Ipv6Addr::LOCALHOST), later);
        assert_eq!(limiter.tracked(), 1, "expired entries were swept");
    }
}
