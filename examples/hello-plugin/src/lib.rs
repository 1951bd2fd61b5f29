//! A walkthrough policy plugin: greets every message with an `X-Hello` header and refuses
//! one recipient. Read it top to bottom; every step a real plugin needs is here.
//!
//! Build it with `cargo build --target wasm32-wasip2 --release -p hello-plugin` and copy
//! `hello_plugin.wasm` into the relay's `[plugins] dir`. Its config table in `relay.toml`:
//!
//! ```toml
//! [plugins.hello]
//! greeting = "hi from the relay"      # the X-Hello value (default "hello")
//! blocked = ["blocked@example.test"]  # refused recipients (this is also the default)
//! ```
#![forbid(unsafe_code)]

use std::cell::OnceCell;

use plugin_sdk::prelude::*;
use serde::Deserialize;

/// The plugin's `[plugins.hello]` table. `deny_unknown_fields` turns a typo in the
/// operator's config into a logged error instead of a silently ignored setting.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// The value of the `X-Hello` header added to every message.
    greeting: String,
    /// Recipients refused at RCPT time (compared case-insensitively).
    blocked: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            greeting: "hello".to_owned(),
            blocked: vec!["blocked@example.test".to_owned()],
        }
    }
}

/// The plugin. The relay creates one value per instance with `Default` and reuses it for
/// many calls, so the parsed config is cached in a `OnceCell` and read once.
#[derive(Default)]
pub struct Hello {
    config: OnceCell<Config>,
}

impl Hello {
    fn config(&self) -> &Config {
        self.config.get_or_init(|| {
            // Bad config must not crash the plugin (a panic traps it and the relay counts a
            // fault): log the reason and fall back to the defaults.
            host::config_as::<Config>().unwrap_or_else(|err| {
                host::log_error(&format!("{err}; using the defaults"));
                Config::default()
            })
        })
    }
}

impl Plugin for Hello {
    const NAME: &'static str = "hello";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    /// Refuses the blocked recipients with a permanent 550 5.7.1; no opinion on the others,
    /// so later plugins and finally the relay decide.
    fn on_rcpt(&self, input: &RcptInput) -> RcptVerdict {
        let blocked = self
            .config()
            .blocked
            .iter()
            .any(|b| b.eq_ignore_ascii_case(&input.recipient));
        if blocked {
            // The session (like MAIL FROM) is read from the relay on demand, a host call the
            // first time: the common case above decides on the recipient alone and never pays
            // for it. `info!` formats, and so reads it, only when the line is written.
            plugin_sdk::info!(
                "refusing {} from {}",
                input.recipient,
                input.session().client_ip
            );
            return RcptVerdict::reject(550, "5.7.1", "This recipient does not accept mail here");
        }
        RcptVerdict::NoOpinion
    }

    /// Adds `X-Hello` and tags the message `hello=<subject or "none">`. The action stays "no
    /// opinion": headers and tags are kept whoever decides about the message.
    fn on_data(&self, input: &DataInput) -> DataVerdict {
        let subject = input.message.subject().unwrap_or("none");
        DataVerdict::no_opinion()
            .with_header("X-Hello", &self.config().greeting)
            .with_tag("hello", subject)
    }
}

// One line exports the plugin and names the hooks the relay should call.
plugin_sdk::export_plugin!(Hello, hooks: [on_rcpt, on_data]);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_sdk::testing::{self, TestHost};

    #[test]
    fn blocked_recipient_is_rejected_with_550() {
        let host = TestHost::new();
        let verdict =
            Hello::default().on_rcpt(&testing::rcpt("a@example.net", "blocked@example.test"));
        assert_eq!(
            verdict,
            RcptVerdict::reject(550, "5.7.1", "This recipient does not accept mail here")
        );
        assert!(host.logged_at(Level::Info, "refusing blocked@example.test from 192.0.2.1"));
    }

    #[test]
    fn other_recipients_get_no_opinion() {
        let _host = TestHost::new();
        let verdict = Hello::default().on_rcpt(&testing::rcpt("a@example.net", "ok@example.test"));
        assert_eq!(verdict, RcptVerdict::NoOpinion);
    }

    #[test]
    fn blocked_list_comes_from_config() {
        let _host = TestHost::new().with_config(r#"{"blocked": ["spam@example.org"]}"#);
        let plugin = Hello::default();
        let spam = plugin.on_rcpt(&testing::rcpt("a@example.net", "SPAM@example.org"));
        assert!(matches!(spam, RcptVerdict::Reject(reply) if reply.code == 550));
        let default_blocked =
            plugin.on_rcpt(&testing::rcpt("a@example.net", "blocked@example.test"));
        assert_eq!(default_blocked, RcptVerdict::NoOpinion);
    }

    #[test]
    fn message_gets_header_and_subject_tag() {
        let _host = TestHost::new().with_config(r#"{"greeting": "hi there"}"#);
        let input = testing::message()
            .subject("Quarterly report")
            .into_data("a@example.net", &["b@example.test"]);
        let verdict = Hello::default().on_data(&input);
        assert_eq!(verdict.action, DataAction::NoOpinion);
        assert_eq!(verdict.header("X-Hello"), Some("hi there"));
        assert_eq!(verdict.tag("hello"), Some("Quarterly report"));
    }

    #[test]
    fn bad_config_is_logged_and_defaults_apply() {
        let host = TestHost::new().with_config(r#"{"greetin": "typo"}"#);
        let verdict = Hello::default()
            .on_data(&testing::message().into_data("a@example.net", &["b@example.test"]));
        assert_eq!(verdict.header("X-Hello"), Some("hello"));
        assert_eq!(verdict.tag("hello"), Some("none"));
        assert!(host.logged_at(Level::Error, "unknown field `greetin`"));
    }
}
