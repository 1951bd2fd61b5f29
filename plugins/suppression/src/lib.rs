//! The `suppression` policy plugin: `on_bounce` classifies every failed delivery attempt and
//! puts hard-bounced recipients on a suppression list in the plugin's key-value state;
//! `on_rcpt` refuses suppressed recipients with `550 5.1.1` until their entry expires.
//!
//! A recipient is suppressed after a permanent failure from the remote server that is an
//! invalid recipient (x.1.1, x.1.2, x.1.3, x.1.6, x.1.10, x.2.1, or "user unknown"-like text)
//! or carries one of the configured `extra_codes`. The bounce itself still goes to the sender
//! as a DSN: the plugin answers "no opinion" with a class label. See the README for the config.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod classify;
pub mod config;
pub mod list;

use std::cell::OnceCell;

use plugin_sdk::prelude::*;

use crate::classify::{classify, BounceClass, EnhancedCode};
use crate::config::Config;
use crate::list::{Entry, Lookup};

/// The longest recipient address quoted in a reply, in bytes (a valid address has at most
/// 254).
const MAX_ADDRESS_BYTES: usize = 254;

/// The relay keeps at most this many bytes of a plugin's reply text; the refusal is built to
/// fit, so its end ("remove it from your list") is never cut off.
const MAX_REPLY_TEXT_BYTES: usize = 400;

/// A reason shorter than this is not worth quoting: the reply leaves it out instead.
const MIN_REASON_BYTES: usize = 24;

/// The plugin. One value per instance; the config is parsed on first use and kept.
#[derive(Default)]
pub struct Suppression {
    config: OnceCell<Config>,
}

impl Suppression {
    /// The parsed config; problems are logged once per instance, and each bad setting keeps
    /// its default.
    fn config(&self) -> &Config {
        self.config
            .get_or_init(|| plugin_sdk::config::load(Config::from_json))
    }

    /// True when this failure puts the recipient on the list: a permanent failure answered by
    /// the remote server that is an invalid recipient or has one of the extra codes. Failures
    /// the relay diagnosed itself (DNS, TLS, connection, expiry) never suppress: they say
    /// nothing reliable about one mailbox.
    fn suppresses(&self, input: &BounceInput, class: BounceClass) -> bool {
        if !input.permanent
            || !input.reply.is_permanent()
            || !matches!(input.kind, FailureKind::RemoteReply)
        {
            return false;
        }
        class == BounceClass::InvalidRecipient
            || EnhancedCode::of_reply(&input.reply)
                .is_some_and(|code| self.config().extra_codes.contains(&code))
    }
}

impl Plugin for Suppression {
    const NAME: &'static str = "suppression";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    /// Refuses a suppressed recipient with `550 5.1.1`, saying why and since when.
    fn on_rcpt(&self, input: &RcptInput) -> RcptVerdict {
        // Parse (and report problems in) the config on the first call, whichever hook it is.
        self.config();
        let Some(address) = list::normalize(&input.recipient) else {
            return RcptVerdict::NoOpinion;
        };
        let shown = || list::one_line(&address_as_given(&input.recipient), MAX_ADDRESS_BYTES);
        let text = match list::lookup(&address) {
            Lookup::Clear => return RcptVerdict::NoOpinion,
            Lookup::Suppressed(entry) => refusal_text(&shown(), Some(&entry)),
            Lookup::Unreadable(err) => {
                plugin_sdk::warn!(
                    "suppression entry for <{address}> is unreadable ({err}); refusing anyway"
                );
                refusal_text(&shown(), None)
            }
        };
        plugin_sdk::info!(
            "refused suppressed recipient <{address}> from {}",
            input.session().client_ip
        );
        RcptVerdict::reject(550, "5.1.1", &text)
    }

    /// Labels the failure with its class and suppresses the recipient after a hard bounce.
    /// Always "no opinion" on what happens to this message: the relay retries or bounces it
    /// (with a DSN) as usual.
    fn on_bounce(&self, input: &BounceInput) -> BounceVerdict {
        let class = classify(input.kind, &input.reply);
        if self.suppresses(input, class) {
            suppress(input, class, self.config());
        }
        BounceVerdict::no_opinion().with_class(class.label())
    }
}

plugin_sdk::export_plugin!(Suppression, hooks: [on_rcpt, on_bounce]);

/// Puts the bounce's recipient on the list for the configured TTL and logs it.
fn suppress(input: &BounceInput, class: BounceClass, config: &Config) {
    let Some(address) = list::normalize(&input.recipient) else {
        return;
    };
    let entry = Entry::new(&input.reply.to_string(), host::now_ms());
    match list::add(&address, &entry, config.ttl.as_ms()) {
        Ok(()) => plugin_sdk::info!(
            "suppressed <{address}> for {} ({class}, message {}): {}",
            config.ttl,
            input.message_id,
            entry.reason
        ),
        Err(err) => plugin_sdk::error!("could not suppress <{address}>: {err}"),
    }
}

/// The text refusing a suppressed recipient: the bounce it got and when, cut to fit the
/// relay's limit; without the entry (unreadable), just that it is suppressed.
fn refusal_text(shown: &str, entry: Option<&Entry>) -> String {
    let short =
        format!("Recipient <{shown}> is suppressed after a hard bounce; remove it from your list");
    let Some(entry) = entry else {
        return short;
    };
    let date = list::utc_date(entry.at_ms);
    let frame = |reason: &str| {
        format!(
            "Recipient <{shown}> is suppressed: it hard-bounced ({reason}) on {date}; \
             remove it from your list"
        )
    };
    let room = MAX_REPLY_TEXT_BYTES.saturating_sub(frame("").len());
    let reason = list::one_line(&entry.reason, room.min(list::MAX_REASON_BYTES));
    if reason.len() < MIN_REASON_BYTES.min(entry.reason.len()) || reason.is_empty() {
        return short;
    }
    frame(&reason)
}

/// The address as the client wrote it, without surrounding spaces and `<>`.
fn address_as_given(address: &str) -> String {
    let trimmed = address.trim();
    trimmed
        .strip_prefix('<')
        .and_then(|inner| inner.strip_suffix('>'))
        .unwrap_or(trimmed)
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_sdk::testing::{bounce, rcpt, TestHost, DEFAULT_NOW_MS};

    const DAY_MS: u64 = 86_400_000;

    fn rejected(verdict: RcptVerdict) -> SmtpReply {
        match verdict {
            RcptVerdict::Reject(reply) => reply,
            other => panic!("expected a reject, got {other:?}"),
        }
    }

    fn hard_bounce(recipient: &str) -> BounceInput {
        bounce(
            recipient,
            550,
            "5.1.1",
            "<bob@example.net>: Recipient address rejected: User unknown",
        )
    }

    #[test]
    fn a_5_1_1_bounce_suppresses_the_recipient_and_rcpt_gets_550() {
        let host = TestHost::new();
        let plugin = Suppression::default();
        let to = rcpt("alice@example.com", "bob@example.net");
        assert_eq!(plugin.on_rcpt(&to), RcptVerdict::NoOpinion);

        let verdict = plugin.on_bounce(&hard_bounce("bob@example.net"));
        assert_eq!(
            verdict,
            BounceVerdict::no_opinion().with_class("invalid-recipient")
        );
        assert!(host.logged_at(Level::Info, "suppressed <bob@example.net> for 30d"));

        let reply = rejected(plugin.on_rcpt(&to));
        assert_eq!(reply.code, 550);
        assert_eq!(reply.enhanced, "5.1.1");
        assert_eq!(
            reply.text,
            "Recipient <bob@example.net> is suppressed: it hard-bounced (550 5.1.1 \
             <bob@example.net>: Recipient address rejected: User unknown) on 2023-11-14; \
             remove it from your list"
        );
        assert!(host.logged_at(
            Level::Info,
            "refused suppressed recipient <bob@example.net> from 192.0.2.1"
        ));
    }

    #[test]
    fn the_entry_is_json_with_reason_and_time_under_a_lower_case_key() {
        let host = TestHost::new();
        let plugin = Suppression::default();
        plugin.on_bounce(&bounce("Bob@Example.NET", 550, "5.1.1", "no such user"));
        assert_eq!(host.kv_keys(), ["suppressed:bob@example.net"]);
        let value = host
            .kv_get_str("suppressed:bob@example.net")
            .unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&value).unwrap_or_default();
        assert_eq!(json["reason"], "550 5.1.1 no such user");
        assert_eq!(json["at_ms"], DEFAULT_NOW_MS);
        assert_eq!(
            host.kv_expires_at("suppressed:bob@example.net"),
            Some(DEFAULT_NOW_MS + 30 * DAY_MS)
        );
    }

    #[test]
    fn suppression_matches_the_address_in_any_case() {
        let _host = TestHost::new();
        let plugin = Suppression::default();
        plugin.on_bounce(&hard_bounce("bob@example.net"));
        let reply = rejected(plugin.on_rcpt(&rcpt("a@example.com", "<BOB@example.NET>")));
        assert!(
            reply
                .text
                .starts_with("Recipient <BOB@example.NET> is suppressed"),
            "{}",
            reply.text
        );
        let other = rcpt("a@example.com", "carol@example.net");
        assert_eq!(plugin.on_rcpt(&other), RcptVerdict::NoOpinion);
    }

    #[test]
    fn the_suppression_expires_after_the_ttl() {
        let host = TestHost::new().with_config(r#"{"ttl": "2d"}"#);
        let plugin = Suppression::default();
        plugin.on_bounce(&hard_bounce("bob@example.net"));
        let to = rcpt("a@example.com", "bob@example.net");
        host.advance_ms(2 * DAY_MS - 1);
        rejected(plugin.on_rcpt(&to));
        host.advance_ms(1);
        assert_eq!(plugin.on_rcpt(&to), RcptVerdict::NoOpinion);
    }

    #[test]
    fn a_new_hard_bounce_restarts_the_ttl() {
        let host = TestHost::new().with_config(r#"{"ttl": "1d"}"#);
        let plugin = Suppression::default();
        plugin.on_bounce(&hard_bounce("bob@example.net"));
        host.advance_ms(DAY_MS / 2);
        plugin.on_bounce(&hard_bounce("bob@example.net"));
        host.advance_ms(DAY_MS / 2 + 1);
        let reply = rejected(plugin.on_rcpt(&rcpt("a@example.com", "bob@example.net")));
        assert!(reply.text.contains("on 2023-11-15"), "{}", reply.text);
    }

    #[test]
    fn temporary_failures_never_suppress() {
        let host = TestHost::new();
        let plugin = Suppression::default();
        let verdict = plugin.on_bounce(&bounce(
            "bob@example.net",
            450,
            "4.1.1",
            "user unknown (try later)",
        ));
        assert_eq!(verdict.class.as_deref(), Some("invalid-recipient"));
        let verdict = plugin.on_bounce(&bounce(
            "bob@example.net",
            451,
            "",
            "no such user, temporarily",
        ));
        assert_eq!(verdict.class.as_deref(), Some("invalid-recipient"));
        // A 5xx the relay decided to treat as temporary does not suppress either.
        let mut soft = hard_bounce("bob@example.net");
        soft.permanent = false;
        plugin.on_bounce(&soft);
        assert!(host.kv_keys().is_empty(), "{:?}", host.kv_keys());
    }

    #[test]
    fn other_permanent_failures_do_not_suppress() {
        let host = TestHost::new();
        let plugin = Suppression::default();
        let cases = [
            (
                bounce("bob@example.net", 552, "5.2.2", "mailbox full"),
                "mailbox-full",
            ),
            (
                bounce("bob@example.net", 554, "5.7.1", "rejected as spam"),
                "spam-block",
            ),
            (
                bounce(
                    "bob@example.net",
                    550,
                    "5.1.0",
                    "Sender address rejected: User unknown",
                ),
                "other",
            ),
            (
                hard_bounce("bob@example.net").with_kind(FailureKind::Dns),
                "dns",
            ),
            (
                hard_bounce("bob@example.net").with_kind(FailureKind::Expired),
                "expired",
            ),
        ];
        for (input, class) in cases {
            assert!(input.permanent);
            assert_eq!(plugin.on_bounce(&input).class.as_deref(), Some(class));
        }
        assert!(host.kv_keys().is_empty(), "{:?}", host.kv_keys());
        assert_eq!(
            plugin.on_rcpt(&rcpt("a@example.com", "bob@example.net")),
            RcptVerdict::NoOpinion
        );
    }

    #[test]
    fn user_unknown_text_without_an_enhanced_code_suppresses() {
        let host = TestHost::new();
        let plugin = Suppression::default();
        let verdict = plugin.on_bounce(&bounce(
            "bob@example.net",
            550,
            "",
            "Mailbox unavailable: user unknown",
        ));
        assert_eq!(verdict.class.as_deref(), Some("invalid-recipient"));
        assert_eq!(host.kv_keys(), ["suppressed:bob@example.net"]);
    }

    #[test]
    fn extra_codes_also_suppress() {
        let host = TestHost::new().with_config(r#"{"extra_codes": ["5.7.1"]}"#);
        let plugin = Suppression::default();
        let verdict = plugin.on_bounce(&bounce(
            "bob@example.net",
            550,
            "5.7.1",
            "recipient refuses mail from you",
        ));
        assert_eq!(
            verdict,
            BounceVerdict::no_opinion().with_class("spam-block")
        );
        plugin.on_bounce(&bounce("carol@example.net", 550, "5.7.26", "DMARC failure"));
        assert_eq!(host.kv_keys(), ["suppressed:bob@example.net"]);
        let reply = rejected(plugin.on_rcpt(&rcpt("a@example.com", "bob@example.net")));
        assert!(
            reply
                .text
                .contains("(550 5.7.1 recipient refuses mail from you)"),
            "{}",
            reply.text
        );
    }

    #[test]
    fn every_class_label_comes_back_with_no_opinion() {
        let _host = TestHost::new();
        let plugin = Suppression::default();
        let cases = [
            (
                bounce("a@example.net", 550, "5.1.1", "no such user"),
                "invalid-recipient",
            ),
            (
                bounce("a@example.net", 550, "5.2.1", "mailbox disabled"),
                "invalid-recipient",
            ),
            (
                bounce("a@example.net", 550, "5.1.10", "null MX"),
                "invalid-recipient",
            ),
            (
                bounce("a@example.net", 452, "4.2.2", "mailbox full"),
                "mailbox-full",
            ),
            (
                bounce("a@example.net", 552, "", "quota exceeded"),
                "mailbox-full",
            ),
            (
                bounce("a@example.net", 554, "5.7.1", "blocked"),
                "spam-block",
            ),
            (
                bounce("a@example.net", 554, "", "spam detected"),
                "spam-block",
            ),
            (
                bounce("a@example.net", 451, "4.7.1", "slow down"),
                "rate-limited",
            ),
            (
                bounce("a@example.net", 421, "", "come back later"),
                "rate-limited",
            ),
            (
                bounce("a@example.net", 450, "", "throttling in effect"),
                "rate-limited",
            ),
            (
                bounce("a@example.net", 451, "4.4.3", "").with_kind(FailureKind::Dns),
                "dns",
            ),
            (
                bounce("a@example.net", 451, "4.7.5", "").with_kind(FailureKind::Tls),
                "tls",
            ),
            (
                bounce("a@example.net", 451, "4.4.2", "").with_kind(FailureKind::Timeout),
                "connection",
            ),
            (
                bounce("a@example.net", 451, "4.4.1", "").with_kind(FailureKind::Connection),
                "connection",
            ),
            (
                bounce("a@example.net", 554, "5.4.7", "").with_kind(FailureKind::Expired),
                "expired",
            ),
            (
                bounce("a@example.net", 451, "4.3.0", "local problem"),
                "other",
            ),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (input, class) in cases {
            let verdict = plugin.on_bounce(&input);
            assert_eq!(verdict.action, BounceAction::NoOpinion, "{}", input.reply);
            assert_eq!(verdict.class.as_deref(), Some(class), "{}", input.reply);
            seen.insert(class);
        }
        let all: std::collections::BTreeSet<_> =
            BounceClass::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(seen, all);
    }

    #[test]
    fn bad_config_is_logged_once_and_the_defaults_apply() {
        let host = TestHost::new().with_config(r#"{"ttl": "forever", "extra_codes": "5.7.1"}"#);
        let plugin = Suppression::default();
        plugin.on_rcpt(&rcpt("a@example.com", "bob@example.net"));
        plugin.on_bounce(&hard_bounce("bob@example.net"));
        plugin.on_bounce(&bounce("carol@example.net", 550, "5.7.1", "no"));
        rejected(plugin.on_rcpt(&rcpt("a@example.com", "bob@example.net")));
        let errors: Vec<String> = host
            .logs()
            .into_iter()
            .filter(|l| l.level == Level::Error)
            .map(|l| l.message)
            .collect();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors.iter().any(|e| e.contains("ttl: \"forever\"")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("extra_codes: expected a list")),
            "{errors:#?}"
        );
        assert_eq!(host.kv_keys(), ["suppressed:bob@example.net"]);
        assert_eq!(
            host.kv_expires_at("suppressed:bob@example.net"),
            Some(DEFAULT_NOW_MS + 30 * DAY_MS)
        );
    }

    #[test]
    fn an_unreadable_entry_still_refuses_the_recipient() {
        let host = TestHost::new();
        host.kv_set("suppressed:bob@example.net", b"garbage", None);
        let plugin = Suppression::default();
        let reply = rejected(plugin.on_rcpt(&rcpt("a@example.com", "bob@example.net")));
        assert_eq!(
            reply.text,
            "Recipient <bob@example.net> is suppressed after a hard bounce; remove it from your list"
        );
        assert!(host.logged_at(Level::Warn, "unreadable"));
    }

    #[test]
    fn the_reply_stays_on_one_line_whatever_the_stored_reason() {
        let host = TestHost::new();
        let entry = format!(
            r#"{{"reason":"550 5.1.1 bad\r\nMAIL FROM:<x> {}","at_ms":0}}"#,
            "y".repeat(600)
        );
        host.kv_set("suppressed:bob@example.net", entry.as_bytes(), None);
        let plugin = Suppression::default();
        let reply = rejected(plugin.on_rcpt(&rcpt("a@example.com", "bob@example.net")));
        assert!(!reply.text.contains(['\r', '\n']), "{}", reply.text);
        assert!(reply.text.len() <= 400, "{} bytes", reply.text.len());
        assert!(
            reply.text.contains("(550 5.1.1 bad MAIL FROM:<x> yyy"),
            "{}",
            reply.text
        );
        assert!(
            reply
                .text
                .ends_with("...) on 1970-01-01; remove it from your list"),
            "{}",
            reply.text
        );
    }

    #[test]
    fn the_reply_fits_the_relay_limit_even_for_a_very_long_address() {
        let _host = TestHost::new();
        let plugin = Suppression::default();
        let long = format!("{}@{}.example", "\u{e9}".repeat(60), "d".repeat(120));
        let reason = format!("user unknown {}", "z".repeat(300));
        plugin.on_bounce(&bounce(&long, 550, "5.1.1", &reason));
        let reply = rejected(plugin.on_rcpt(&rcpt("a@example.com", &long)));
        assert!(
            reply.text.len() <= MAX_REPLY_TEXT_BYTES,
            "{} bytes",
            reply.text.len()
        );
        assert!(
            reply.text.ends_with("; remove it from your list"),
            "{}",
            reply.text
        );
        assert!(
            reply.text.contains("(550 5.1.1 user unknown z"),
            "{}",
            reply.text
        );

        let longer = format!("{}@{}.example", "\u{e9}".repeat(60), "d".repeat(160));
        plugin.on_bounce(&bounce(&longer, 550, "5.1.1", &reason));
        let reply = rejected(plugin.on_rcpt(&rcpt("a@example.com", &longer)));
        assert!(
            reply.text.len() <= MAX_REPLY_TEXT_BYTES,
            "{} bytes",
            reply.text.len()
        );
        assert!(
            reply.text.starts_with("Recipient <\u{e9}"),
            "{}",
            reply.text
        );
        assert!(
            reply.text.contains("ddd...> is suppressed"),
            "{}",
            reply.text
        );
        assert!(
            reply.text.ends_with("; remove it from your list"),
            "{}",
            reply.text
        );
    }

    #[test]
    fn an_empty_recipient_is_left_alone() {
        let host = TestHost::new();
        let plugin = Suppression::default();
        plugin.on_bounce(&hard_bounce(""));
        assert!(host.kv_keys().is_empty());
        assert_eq!(
            plugin.on_rcpt(&rcpt("a@example.com", "")),
            RcptVerdict::NoOpinion
        );
    }
}
