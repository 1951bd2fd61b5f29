//! The in-memory fake of the host API behind `plugin_sdk::host` on native targets.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;

use crate::types::{Level, ThrottleResult};

/// The fake clock's start: 2023-11-14T22:13:20Z as Unix milliseconds.
pub const DEFAULT_NOW_MS: u64 = 1_700_000_000_000;

/// One line a plugin logged through [`crate::host::log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The level it was logged at.
    pub level: Level,
    /// The message.
    pub message: String,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", level_name(self.level), self.message)
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "TRACE",
        Level::Debug => "DEBUG",
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
    }
}

/// A stored value with its expiry on the fake clock.
#[derive(Debug, Clone)]
struct Entry<T> {
    value: T,
    /// Unix ms at which the entry is gone; `None` keeps it forever.
    expires_at: Option<u64>,
}

impl<T> Entry<T> {
    fn live_at(&self, now_ms: u64) -> bool {
        self.expires_at.is_none_or(|at| now_ms < at)
    }
}

/// The state of one thread's fake host.
#[derive(Debug)]
struct State {
    config: String,
    now_ms: u64,
    kv: BTreeMap<String, Entry<Vec<u8>>>,
    counters: BTreeMap<String, Entry<i64>>,
    /// GCRA theoretical arrival time per key, in Unix nanoseconds.
    throttles: BTreeMap<String, u128>,
    logs: Vec<LogLine>,
    /// The least severe level written; lower ones read as disabled to the plugin.
    log_level: Level,
}

impl Default for State {
    fn default() -> Self {
        State {
            config: "{}".to_owned(),
            now_ms: DEFAULT_NOW_MS,
            kv: BTreeMap::new(),
            counters: BTreeMap::new(),
            throttles: BTreeMap::new(),
            logs: Vec::new(),
            log_level: Level::Trace,
        }
    }
}

impl State {
    fn expiry(&self, ttl_ms: Option<u64>) -> Option<u64> {
        ttl_ms.map(|ttl| self.now_ms.saturating_add(ttl))
    }

    fn kv_get(&mut self, key: &str) -> Option<Vec<u8>> {
        let now = self.now_ms;
        match self.kv.get(key) {
            Some(entry) if entry.live_at(now) => Some(entry.value.clone()),
            Some(_) => {
                self.kv.remove(key);
                None
            }
            None => None,
        }
    }

    fn kv_set(&mut self, key: &str, value: &[u8], ttl_ms: Option<u64>) {
        let entry = Entry {
            value: value.to_vec(),
            expires_at: self.expiry(ttl_ms),
        };
        self.kv.insert(key.to_owned(), entry);
    }

    fn counter_get(&mut self, key: &str) -> Option<i64> {
        let now = self.now_ms;
        match self.counters.get(key) {
            Some(entry) if entry.live_at(now) => Some(entry.value),
            Some(_) => {
                self.counters.remove(key);
                None
            }
            None => None,
        }
    }

    fn counter_add(&mut self, key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
        let now = self.now_ms;
        let expires_at = self.expiry(ttl_ms);
        let entry = self.counters.entry(key.to_owned()).or_insert(Entry {
            value: 0,
            expires_at,
        });
        if !entry.live_at(now) {
            // An expired counter starts a new window, with this call's TTL.
            *entry = Entry {
                value: 0,
                expires_at,
            };
        }
        entry.value = entry.value.saturating_add(delta);
        entry.value
    }

    /// GCRA: each event costs `window / limit`; an event is allowed while the theoretical
    /// arrival time stays within `window` of now, which allows bursts of `limit` events.
    fn throttle(&mut self, key: &str, limit: u32, window_ms: u64) -> ThrottleResult {
        if limit == 0 {
            return ThrottleResult {
                allowed: false,
                retry_after_ms: window_ms,
            };
        }
        const NANOS_PER_MS: u128 = 1_000_000;
        let now = u128::from(self.now_ms) * NANOS_PER_MS;
        let window = u128::from(window_ms) * NANOS_PER_MS;
        let interval = window / u128::from(limit);
        let tat = self.throttles.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat + interval;
        if new_tat <= now + window {
            self.throttles.insert(key.to_owned(), new_tat);
            ThrottleResult {
                allowed: true,
                retry_after_ms: 0,
            }
        } else {
            let wait = new_tat - now - window;
            let wait_ms = wait.div_ceil(NANOS_PER_MS);
            ThrottleResult {
                allowed: false,
                retry_after_ms: u64::try_from(wait_ms).unwrap_or(u64::MAX),
            }
        }
    }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|state| f(&mut state.borrow_mut()))
}

/// A handle on the current thread's fake host, the one [`crate::host`] uses on native targets.
///
/// [`TestHost::new`] resets the fake (config `"{}"`, clock at [`DEFAULT_NOW_MS`], empty store
/// and logs). The handle is tied to its thread: a plugin under test must run on the thread
/// that set the host up. Expiry (TTL) of key-value entries and counters follows the fake
/// clock, which only moves when you move it.
#[derive(Debug)]
pub struct TestHost {
    /// The state lives in a thread-local: keep the handle on its thread.
    _not_send: PhantomData<*const ()>,
}

impl Default for TestHost {
    fn default() -> Self {
        TestHost::new()
    }
}

impl TestHost {
    /// Resets this thread's fake host to its defaults and returns a handle to it.
    pub fn new() -> Self {
        with_state(|state| *state = State::default());
        TestHost {
            _not_send: PhantomData,
        }
    }

    /// Sets the plugin's config JSON (what [`crate::host::config`] returns), builder style.
    pub fn with_config(self, json: &str) -> Self {
        self.set_config(json);
        self
    }

    /// Sets the plugin's config JSON (what [`crate::host::config`] returns).
    ///
    /// The text is passed through as is, so a test can also feed invalid JSON.
    pub fn set_config(&self, json: &str) {
        with_state(|state| state.config = json.to_owned());
    }

    /// Sets the plugin's config from any serializable value, e.g. `serde_json::json!({..})`.
    ///
    /// Fails only if `value` cannot be represented as JSON (e.g. a map with non-string keys).
    pub fn set_config_value<T: Serialize>(&self, value: &T) -> Result<(), String> {
        let json = serde_json::to_string(value).map_err(|err| format!("config value: {err}"))?;
        self.set_config(&json);
        Ok(())
    }

    /// The fake clock, Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        with_state(|state| state.now_ms)
    }

    /// Sets the fake clock (it may go backwards).
    pub fn set_now_ms(&self, unix_ms: u64) {
        with_state(|state| state.now_ms = unix_ms);
    }

    /// Moves the fake clock forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: u64) {
        with_state(|state| state.now_ms = state.now_ms.saturating_add(ms));
    }

    /// Moves the fake clock forward by `by` (whole milliseconds).
    pub fn advance(&self, by: Duration) {
        self.advance_ms(u64::try_from(by.as_millis()).unwrap_or(u64::MAX));
    }

    /// Reads a key-value entry as the plugin would (`None` if absent or expired).
    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        with_state(|state| state.kv_get(key))
    }

    /// Reads a key-value entry as UTF-8 text (`None` if absent, expired or not UTF-8).
    pub fn kv_get_str(&self, key: &str) -> Option<String> {
        self.kv_get(key)
            .and_then(|bytes| String::from_utf8(bytes).ok())
    }

    /// Stores a key-value entry, e.g. to start a test with some plugin state.
    pub fn kv_set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) {
        with_state(|state| state.kv_set(key, value, ttl_ms));
    }

    /// Removes a key-value entry.
    pub fn kv_delete(&self, key: &str) {
        with_state(|state| {
            state.kv.remove(key);
        });
    }

    /// The keys of the live (not expired) key-value entries, sorted.
    pub fn kv_keys(&self) -> Vec<String> {
        with_state(|state| {
            let now = state.now_ms;
            state
                .kv
                .iter()
                .filter(|(_, e)| e.live_at(now))
                .map(|(k, _)| k.clone())
                .collect()
        })
    }

    /// When a live key-value entry expires (Unix ms); `None` if absent, expired or without TTL.
    pub fn kv_expires_at(&self, key: &str) -> Option<u64> {
        with_state(|state| {
            let now = state.now_ms;
            state
                .kv
                .get(key)
                .filter(|e| e.live_at(now))
                .and_then(|e| e.expires_at)
        })
    }

    /// A counter's value (`None` if absent or expired).
    pub fn counter(&self, key: &str) -> Option<i64> {
        with_state(|state| state.counter_get(key))
    }

    /// Sets a counter, starting a new window with `ttl_ms` from now.
    pub fn set_counter(&self, key: &str, value: i64, ttl_ms: Option<u64>) {
        with_state(|state| {
            let expires_at = state.expiry(ttl_ms);
            state
                .counters
                .insert(key.to_owned(), Entry { value, expires_at });
        });
    }

    /// The keys of the live (not expired) counters, sorted.
    pub fn counter_keys(&self) -> Vec<String> {
        with_state(|state| {
            let now = state.now_ms;
            state
                .counters
                .iter()
                .filter(|(_, e)| e.live_at(now))
                .map(|(k, _)| k.clone())
                .collect()
        })
    }

    /// Runs the rate limiter as the plugin would (an allowed event is counted).
    pub fn throttle(&self, key: &str, limit: u32, window_ms: u64) -> ThrottleResult {
        with_state(|state| state.throttle(key, limit, window_ms))
    }

    /// Forgets the rate limiter's state for `key`.
    pub fn reset_throttle(&self, key: &str) {
        with_state(|state| {
            state.throttles.remove(key);
        });
    }

    /// Sets the least severe level the fake writes, as the relay's `[log] level` would:
    /// [`host::log_enabled`](crate::host::log_enabled) answers false below it, and the SDK's
    /// logging macros then skip their line. The default is [`Level::Trace`] (everything).
    pub fn set_log_level(&self, level: Level) {
        with_state(|state| state.log_level = level);
    }

    /// Every line logged since the host was set up (or since [`TestHost::take_logs`]).
    pub fn logs(&self) -> Vec<LogLine> {
        with_state(|state| state.logs.clone())
    }

    /// Returns the logged lines and clears them.
    pub fn take_logs(&self) -> Vec<LogLine> {
        with_state(|state| std::mem::take(&mut state.logs))
    }

    /// True if a logged line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        with_state(|state| state.logs.iter().any(|line| line.message.contains(needle)))
    }

    /// True if a line logged at `level` contains `needle`.
    pub fn logged_at(&self, level: Level, needle: &str) -> bool {
        with_state(|state| {
            state
                .logs
                .iter()
                .any(|line| line.level == level && line.message.contains(needle))
        })
    }
}

// The host API on native targets: same signatures as the WIT imports on wasm32.

pub(crate) fn log(level: Level, message: &str) {
    let line = LogLine {
        level,
        message: message.to_owned(),
    };
    // Captured by the test harness and shown for failing tests.
    eprintln!("plugin log: {line}");
    with_state(|state| state.logs.push(line));
}

pub(crate) fn log_enabled(level: Level) -> bool {
    with_state(|state| severity(level) >= severity(state.log_level))
}

/// Orders levels from trace (0) to error (4).
fn severity(level: Level) -> u8 {
    match level {
        Level::Trace => 0,
        Level::Debug => 1,
        Level::Info => 2,
        Level::Warn => 3,
        Level::Error => 4,
    }
}

pub(crate) fn config() -> String {
    with_state(|state| state.config.clone())
}

pub(crate) fn now_ms() -> u64 {
    with_state(|state| state.now_ms)
}

pub(crate) fn kv_get(key: &str) -> Option<Vec<u8>> {
    with_state(|state| state.kv_get(key))
}

pub(crate) fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) {
    with_state(|state| state.kv_set(key, value, ttl_ms));
}

pub(crate) fn kv_delete(key: &str) {
    with_state(|state| {
        state.kv.remove(key);
    });
}

pub(crate) fn counter_add(key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
    with_state(|state| state.counter_add(key, delta, ttl_ms))
}

pub(crate) fn throttle(key: &str, limit: u32, window_ms: u64) -> ThrottleResult {
    with_state(|state| state.throttle(key, limit, window_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host;

    #[test]
    fn new_host_starts_empty_with_default_config_and_clock() {
        host::kv_set("left-over", b"x", None);
        let test_host = TestHost::new();
        assert_eq!(host::config(), "{}");
        assert_eq!(host::now_ms(), DEFAULT_NOW_MS);
        assert_eq!(host::kv_get("left-over"), None);
        assert!(test_host.logs().is_empty());
    }

    #[test]
    fn config_as_parses_and_names_the_bad_field() {
        #[derive(Debug, serde::Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct Config {
            limit: u32,
        }
        let test_host = TestHost::new().with_config(r#"{"limit": 5}"#);
        assert_eq!(host::config_as::<Config>(), Ok(Config { limit: 5 }));
        test_host.set_config(r#"{"limit": "five"}"#);
        let err = host::config_as::<Config>().unwrap_err();
        assert!(err.contains("invalid type: string \"five\""), "{err}");
        test_host
            .set_config_value(&serde_json::json!({"limit": 7}))
            .unwrap();
        assert_eq!(host::config_as::<Config>(), Ok(Config { limit: 7 }));
    }

    #[test]
    fn kv_entry_with_ttl_expires_on_the_fake_clock() {
        let test_host = TestHost::new();
        host::kv_set("k", b"v", Some(1_000));
        test_host.advance_ms(999);
        assert_eq!(host::kv_get("k"), Some(b"v".to_vec()));
        assert_eq!(test_host.kv_expires_at("k"), Some(DEFAULT_NOW_MS + 1_000));
        test_host.advance_ms(1);
        assert_eq!(host::kv_get("k"), None);
        assert!(test_host.kv_keys().is_empty());
    }

    #[test]
    fn kv_entry_without_ttl_stays_and_can_be_deleted() {
        let test_host = TestHost::new();
        host::kv_set("k", b"v", None);
        test_host.advance(Duration::from_secs(365 * 24 * 3600));
        assert_eq!(test_host.kv_get_str("k").as_deref(), Some("v"));
        host::kv_delete("k");
        assert_eq!(host::kv_get("k"), None);
    }

    #[test]
    fn kv_set_replaces_value_and_ttl() {
        let test_host = TestHost::new();
        host::kv_set("k", b"old", Some(10));
        host::kv_set("k", b"new", None);
        test_host.advance_ms(100);
        assert_eq!(host::kv_get("k"), Some(b"new".to_vec()));
    }

    #[test]
    fn test_can_seed_state_the_plugin_reads() {
        let test_host = TestHost::new();
        test_host.kv_set("suppressed:a@example.test", b"1", None);
        test_host.set_counter("sent", 41, None);
        assert_eq!(
            host::kv_get("suppressed:a@example.test"),
            Some(b"1".to_vec())
        );
        assert_eq!(host::counter_add("sent", 1, None), 42);
        assert_eq!(test_host.counter_keys(), ["sent"]);
    }

    #[test]
    fn counter_adds_and_keeps_its_window_from_creation() {
        let test_host = TestHost::new();
        assert_eq!(host::counter_add("c", 1, Some(1_000)), 1);
        test_host.advance_ms(600);
        // A later TTL does not move the window.
        assert_eq!(host::counter_add("c", 2, Some(1_000)), 3);
        assert_eq!(host::counter_add("c", -1, None), 2);
        test_host.advance_ms(400);
        assert_eq!(test_host.counter("c"), None);
        // An expired counter starts over, with the new call's TTL.
        assert_eq!(host::counter_add("c", 5, Some(50)), 5);
        test_host.advance_ms(49);
        assert_eq!(test_host.counter("c"), Some(5));
        test_host.advance_ms(1);
        assert_eq!(test_host.counter("c"), None);
    }

    #[test]
    fn counter_without_ttl_never_expires() {
        let test_host = TestHost::new();
        host::counter_add("c", 3, None);
        test_host.advance_ms(u64::MAX / 2);
        assert_eq!(test_host.counter("c"), Some(3));
    }

    #[test]
    fn throttle_allows_a_burst_of_limit_then_refuses_with_retry_after() {
        let _test_host = TestHost::new();
        for _ in 0..3 {
            assert_eq!(
                host::throttle("ip:1", 3, 3_000),
                ThrottleResult {
                    allowed: true,
                    retry_after_ms: 0
                }
            );
        }
        let refused = host::throttle("ip:1", 3, 3_000);
        assert_eq!(
            refused,
            ThrottleResult {
                allowed: false,
                retry_after_ms: 1_000
            }
        );
        // Other keys have their own budget.
        assert!(host::throttle("ip:2", 3, 3_000).allowed);
    }

    #[test]
    fn throttle_allows_again_after_retry_after_and_refusals_are_not_counted() {
        let test_host = TestHost::new();
        for _ in 0..2 {
            assert!(host::throttle("k", 2, 1_000).allowed);
        }
        for _ in 0..5 {
            assert_eq!(host::throttle("k", 2, 1_000).retry_after_ms, 500);
        }
        test_host.advance_ms(499);
        assert_eq!(host::throttle("k", 2, 1_000).retry_after_ms, 1);
        test_host.advance_ms(1);
        assert!(host::throttle("k", 2, 1_000).allowed);
        assert!(!host::throttle("k", 2, 1_000).allowed);
    }

    #[test]
    fn throttle_spaces_events_evenly_after_an_idle_period() {
        let test_host = TestHost::new();
        for _ in 0..10 {
            assert!(host::throttle("k", 10, 1_000).allowed);
        }
        test_host.advance_ms(10_000);
        // A long pause does not bank more than one burst.
        let allowed = (0..20)
            .filter(|_| host::throttle("k", 10, 1_000).allowed)
            .count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn throttle_rounds_retry_after_up_to_whole_milliseconds() {
        let _test_host = TestHost::new();
        for _ in 0..3 {
            assert!(host::throttle("k", 3, 1_000).allowed);
        }
        // The interval is 333.33 ms: waiting 333 ms would be too early.
        assert_eq!(host::throttle("k", 3, 1_000).retry_after_ms, 334);
    }

    #[test]
    fn throttle_with_zero_limit_refuses_everything() {
        let test_host = TestHost::new();
        assert_eq!(
            host::throttle("k", 0, 60_000),
            ThrottleResult {
                allowed: false,
                retry_after_ms: 60_000
            }
        );
        test_host.reset_throttle("k");
        assert!(test_host.throttle("k", 1, 60_000).allowed);
        assert!(!host::throttle("k", 1, 60_000).allowed);
    }

    #[test]
    fn logs_are_recorded_with_level_and_can_be_taken() {
        let test_host = TestHost::new();
        host::log_info("hello");
        crate::warn!("over limit: {}", 3);
        assert_eq!(
            test_host.logs(),
            [
                LogLine {
                    level: Level::Info,
                    message: "hello".into()
                },
                LogLine {
                    level: Level::Warn,
                    message: "over limit: 3".into()
                },
            ]
        );
        assert!(test_host.logged("limit"));
        assert!(test_host.logged_at(Level::Warn, "over"));
        assert!(!test_host.logged_at(Level::Error, "over"));
        assert_eq!(test_host.take_logs().len(), 2);
        assert!(test_host.logs().is_empty());
    }

    #[test]
    fn macros_skip_lines_below_the_log_level_without_formatting_them() {
        struct Loud<'a>(&'a std::cell::Cell<u32>);
        impl std::fmt::Display for Loud<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.set(self.0.get() + 1);
                f.write_str("loud")
            }
        }
        let test_host = TestHost::new();
        let formatted = std::cell::Cell::new(0);
        test_host.set_log_level(Level::Info);
        assert!(!host::log_enabled(Level::Debug));
        assert!(host::log_enabled(Level::Info) && host::log_enabled(Level::Error));
        crate::debug!("{}", Loud(&formatted));
        crate::trace!("{}", Loud(&formatted));
        assert_eq!(formatted.get(), 0, "a disabled line is never formatted");
        crate::info!("{}", Loud(&formatted));
        assert_eq!(formatted.get(), 1);
        assert_eq!(test_host.logs().len(), 1);
        assert!(test_host.logged_at(Level::Info, "loud"));
    }

    #[test]
    fn each_thread_has_its_own_host() {
        let test_host = TestHost::new();
        host::kv_set("k", b"main", None);
        test_host.set_now_ms(5);
        std::thread::spawn(|| {
            assert_eq!(host::kv_get("k"), None);
            assert_eq!(host::now_ms(), DEFAULT_NOW_MS);
        })
        .join()
        .unwrap();
        assert_eq!(host::kv_get("k"), Some(b"main".to_vec()));
        assert_eq!(host::now_ms(), 5);
    }
}
