//! The host API: what the relay offers a plugin, as plain functions.
//!
//! Inside the relay (on `wasm32`) each function calls the matching import of the
//! `relay:policy/host` interface. On native targets (your `cargo test`) they go to the
//! current thread's [`crate::testing::TestHost`], an in-memory fake you can read and set.
//! There is nothing else: a plugin has no files, sockets or clock of its own.
//!
//! Keys of the key-value store, counters and the rate limiter are namespaced per plugin by
//! the relay, except [`throttle`] keys, which are shared by every plugin that uses the same key.

use serde::de::DeserializeOwned;

pub use crate::types::{Level, ThrottleResult};

#[cfg(target_arch = "wasm32")]
use crate::bindings::relay::policy::host as imp;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::fake as imp;

/// Writes a line to the relay's structured log, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    imp::log(level, message);
}

/// True when a line logged at `level` would be written (the relay's log filter lets it
/// through). The [`debug!`](crate::debug) family of macros checks it before formatting, so
/// a debug line on every message costs a host call, not a `format!`, when debug is off.
pub fn log_enabled(level: Level) -> bool {
    imp::log_enabled(level)
}

/// Logs `message` at [`Level::Trace`].
pub fn log_trace(message: &str) {
    log(Level::Trace, message);
}

/// Logs `message` at [`Level::Debug`].
pub fn log_debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs `message` at [`Level::Info`].
pub fn log_info(message: &str) {
    log(Level::Info, message);
}

/// Logs `message` at [`Level::Warn`].
pub fn log_warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs `message` at [`Level::Error`].
pub fn log_error(message: &str) {
    log(Level::Error, message);
}

/// The plugin's own table from the relay config (`[plugins.NAME]`), as JSON text; `"{}"`
/// when there is none.
pub fn config() -> String {
    imp::config()
}

/// The plugin's config table deserialized into `T` with `serde_json`.
///
/// The error names the field and what was wrong, ready to log. Parse once and keep the result
/// (e.g. in a `OnceCell` field of your plugin): the config does not change during the life
/// of an instance.
pub fn config_as<T: DeserializeOwned>() -> Result<T, String> {
    let text = config();
    serde_json::from_str(&text).map_err(|err| format!("invalid plugin config: {err}"))
}

/// The relay's clock: Unix time in milliseconds.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// Reads a value from the plugin's persistent key-value state; `None` if absent or expired.
pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    imp::kv_get(key)
}

/// Stores a value; with `ttl_ms` it disappears that many milliseconds from now.
pub fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) {
    imp::kv_set(key, value, ttl_ms);
}

/// Removes a value (nothing happens if it is absent).
pub fn kv_delete(key: &str) {
    imp::kv_delete(key);
}

/// Adds `delta` to a persistent counter and returns the new value.
///
/// A missing or expired counter starts at 0. `ttl_ms` applies from the counter's creation:
/// the call that creates it sets its expiry, later calls do not move it (a fixed window).
pub fn counter_add(key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
    imp::counter_add(key, delta, ttl_ms)
}

/// The shared rate limiter (GCRA): at most `limit` events per `window_ms` for `key`.
///
/// An allowed event is counted; a refused one is not, and `retry_after_ms` says how long
/// until an event would be allowed. Bursts of up to `limit` events are allowed, after which
/// events are spaced `window_ms / limit` apart. With several relay nodes the limit is shared
/// across nodes.
pub fn throttle(key: &str, limit: u32, window_ms: u64) -> ThrottleResult {
    imp::throttle(key, limit, window_ms)
}

/// Logs a `format!`-style message at trace level: `plugin_sdk::trace!("x = {x}")`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => {
        if $crate::host::log_enabled($crate::types::Level::Trace) {
            $crate::host::log($crate::types::Level::Trace, &::std::format!($($arg)+))
        }
    };
}

/// Logs a `format!`-style message at debug level: `plugin_sdk::debug!("x = {x}")`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => {
        if $crate::host::log_enabled($crate::types::Level::Debug) {
            $crate::host::log($crate::types::Level::Debug, &::std::format!($($arg)+))
        }
    };
}

/// Logs a `format!`-style message at info level: `plugin_sdk::info!("x = {x}")`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => {
        if $crate::host::log_enabled($crate::types::Level::Info) {
            $crate::host::log($crate::types::Level::Info, &::std::format!($($arg)+))
        }
    };
}

/// Logs a `format!`-style message at warn level: `plugin_sdk::warn!("x = {x}")`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => {
        if $crate::host::log_enabled($crate::types::Level::Warn) {
            $crate::host::log($crate::types::Level::Warn, &::std::format!($($arg)+))
        }
    };
}

/// Logs a `format!`-style message at error level: `plugin_sdk::error!("x = {x}")`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => {
        if $crate::host::log_enabled($crate::types::Level::Error) {
            $crate::host::log($crate::types::Level::Error, &::std::format!($($arg)+))
        }
    };
}
