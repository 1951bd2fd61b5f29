//! The native test host: unit-test a plugin with plain `cargo test`, no Wasm, no relay.
//!
//! On native targets the functions of [`crate::host`] talk to an in-memory fake of the
//! relay's host API. Each thread has its own fake (`cargo test` runs each test on its own
//! thread), and [`TestHost::new`] resets the current thread's fake and hands you a handle to
//! read and set it: the config JSON, the clock, key-value entries, counters, the rate limiter
//! and the log lines. The builders ([`rcpt`], [`message`], [`data`], [`transaction`],
//! [`choose`], [`bounce`]) make hook inputs with sensible defaults in one line.
//!
//! ```
//! use plugin_sdk::prelude::*;
//! use plugin_sdk::testing::{self, TestHost};
//!
//! let host = TestHost::new().with_config(r#"{"limit": 2}"#);
//! assert_eq!(host::config(), r#"{"limit": 2}"#);
//!
//! host::kv_set("seen", b"1", Some(1_000));
//! host.advance_ms(1_000);
//! assert_eq!(host::kv_get("seen"), None); // the TTL ran out on the fake clock
//!
//! let input = testing::rcpt("alice@example.test", "bob@example.net").with_auth_user("alice");
//! assert_eq!(input.recipient, "bob@example.net");
//! assert_eq!(input.session().auth_user.as_deref(), Some("alice"));
//! ```
//!
//! This module exists only on native targets.

pub(crate) mod fake;
mod inputs;

pub use fake::{LogLine, TestHost, DEFAULT_NOW_MS};
pub use inputs::{bounce, choose, data, message, rcpt, session, transaction, MessageBuilder};
