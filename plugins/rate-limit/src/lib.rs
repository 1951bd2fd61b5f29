//! The `rate-limit` policy plugin: message rates per authenticated user, per sender domain and
//! per client IP, enforced at the first `RCPT TO` of each transaction with `451 4.7.1`.
//!
//! Each limit is a GCRA rate from the host's shared limiter ([`plugin_sdk::host::throttle`]):
//! a burst of up to `count` messages, then one every `window / count`. See the README for the
//! config table. The limiter keys are `rate-limit:user:<name>`, `rate-limit:domain:<domain>`
//! and `rate-limit:ip:<address or network>`; they are shared with any plugin that uses the
//! same key and, with several relay nodes, across nodes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;

use std::cell::OnceCell;
use std::net::IpAddr;

use plugin_sdk::config::{normalize_domain, Rate};
use plugin_sdk::prelude::*;

use crate::config::Limits;

/// The longest subject (user, domain, IP) quoted in a reply, in bytes: the whole text must
/// stay under the 400 bytes the relay keeps of a plugin's reply text.
const MAX_SUBJECT_BYTES: usize = 100;

/// The plugin. One value per instance; the config is parsed on first use and kept.
#[derive(Default)]
pub struct RateLimit {
    limits: OnceCell<Limits>,
}

impl RateLimit {
    /// The parsed config; problems are logged once per instance, and each bad limit is off.
    fn limits(&self) -> &Limits {
        self.limits
            .get_or_init(|| plugin_sdk::config::load(Limits::from_json))
    }
}

impl Plugin for RateLimit {
    const NAME: &'static str = "rate-limit";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    /// Counts one message per transaction, at its first recipient, against each limit that
    /// applies; the first limit exceeded answers `451 4.7.1` with a retry hint. Later
    /// recipients of the transaction are never counted or refused here.
    fn on_rcpt(&self, input: &RcptInput) -> RcptVerdict {
        if input.accepted_so_far > 0 {
            return RcptVerdict::NoOpinion;
        }
        // One buffer holds each limiter key in turn: this runs for every message.
        let mut key = String::with_capacity(96);
        for check in checks(self.limits(), input) {
            check.write_key(&mut key);
            let result = host::throttle(&key, check.rate.count(), check.rate.window().as_ms());
            if !result.allowed {
                let text = check.refusal(result.retry_after_ms);
                // Only a refusal that is logged reads what the limits did not need.
                plugin_sdk::info!(
                    "tempfail from {} (MAIL FROM <{}>): {text}",
                    input.session().client_ip,
                    input.mail_from().address
                );
                return RcptVerdict::tempfail(451, "4.7.1", &text);
            }
        }
        RcptVerdict::NoOpinion
    }
}

plugin_sdk::export_plugin!(RateLimit, hooks: [on_rcpt]);

/// What a limit is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    User,
    SenderDomain,
    ClientIp,
}

impl Scope {
    /// The part of the limiter key naming the scope.
    fn key_part(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::SenderDomain => "domain",
            Scope::ClientIp => "ip",
        }
    }

    /// How the scope is named in the reply.
    fn label(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::SenderDomain => "sender domain",
            Scope::ClientIp => "client IP",
        }
    }
}

/// One limit that applies to this transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Check {
    scope: Scope,
    /// The user name, domain or IP (network) counted.
    subject: String,
    rate: Rate,
}

impl Check {
    /// The shared limiter key, written into `key` (cleared first).
    fn write_key(&self, key: &mut String) {
        key.clear();
        key.push_str("rate-limit:");
        key.push_str(self.scope.key_part());
        key.push(':');
        key.push_str(&self.subject);
    }

    /// The reply text when the limit is exceeded.
    fn refusal(&self, retry_after_ms: u64) -> String {
        let seconds = retry_after_ms.div_ceil(1000).max(1);
        format!(
            "Rate limit exceeded for {} {} ({} per {}); try again in {seconds} s",
            self.scope.label(),
            printable(&self.subject),
            self.rate.count(),
            self.rate.window()
        )
    }
}

/// The limits that apply to this transaction, in the order they are counted: user, sender
/// domain, client IP.
///
/// The host's limiter counts an allowed event at once and has no way to take it back, so when
/// a later limit refuses, the earlier ones have already counted the message. Stopping at the
/// first refusal keeps that to the limits checked before it.
///
/// The session and MAIL FROM are each a host call the first time they are read, so each is
/// read only when a configured limit needs it.
fn checks(limits: &Limits, input: &RcptInput) -> Vec<Check> {
    let mut checks = Vec::with_capacity(3);
    if let Some(rate) = limits.per_user {
        if let Some(user) = input.session().auth_user.as_deref() {
            if !user.is_empty() {
                checks.push(Check {
                    scope: Scope::User,
                    subject: user.to_owned(),
                    rate,
                });
            }
        }
    }
    if limits.may_limit_sender_domains() {
        if let Some(domain) = sender_domain(&input.mail_from().address) {
            if let Some(rate) = limits.for_sender_domain(&domain) {
                checks.push(Check {
                    scope: Scope::SenderDomain,
                    subject: domain,
                    rate,
                });
            }
        }
    }
    if let Some(rate) = limits.per_client_ip {
        let subject = client_key(&input.session().client_ip, limits.ipv6_prefix);
        if !subject.is_empty() {
            checks.push(Check {
                scope: Scope::ClientIp,
                subject,
                rate,
            });
        }
    }
    checks
}

/// The domain of a MAIL FROM address in lower case; `None` for the null sender `<>` or an
/// address without a domain.
fn sender_domain(address: &str) -> Option<String> {
    let (_, domain) = address.trim().rsplit_once('@')?;
    let domain = normalize_domain(domain);
    (!domain.is_empty()).then_some(domain)
}

/// The client address as counted: canonical text, IPv4-mapped IPv6 as IPv4, and IPv6 cut to
/// its `/prefix` network when `ipv6_prefix` is below 128. Text that is not an IP address is
/// counted as given.
fn client_key(client_ip: &str, ipv6_prefix: u8) -> String {
    let text = client_ip.trim();
    let Ok(ip) = text.parse::<IpAddr>() else {
        return text.to_owned();
    };
    match ip.to_canonical() {
        // IPv4 text that parses is already canonical (four decimal octets, no leading zeros),
        // so the usual case needs no formatting.
        IpAddr::V4(_) if ip.is_ipv4() => text.to_owned(),
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) if ipv6_prefix >= 128 => v6.to_string(),
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix))
                .unwrap_or(0);
            let network = std::net::Ipv6Addr::from(u128::from(v6) & mask);
            format!("{network}/{ipv6_prefix}")
        }
    }
}

/// `text` safe for one line of an SMTP reply: control characters become `?`, and it is cut
/// (at a character boundary, marked `...`) to [`MAX_SUBJECT_BYTES`].
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_SUBJECT_BYTES + 3));
    for c in text.chars() {
        if out.len() + c.len_utf8() > MAX_SUBJECT_BYTES {
            out.push_str("...");
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_sdk::testing::{rcpt, TestHost};

    const HOUR_MS: u64 = 3_600_000;

    fn host(config: &str) -> TestHost {
        TestHost::new().with_config(config)
    }

    /// The reply of a tempfail verdict; panics (failing the test) on anything else.
    fn tempfail(verdict: RcptVerdict) -> SmtpReply {
        match verdict {
            RcptVerdict::Tempfail(reply) => reply,
            other => panic!("expected a tempfail, got {other:?}"),
        }
    }

    /// Sends `count` messages (first recipients) and asserts each is let through.
    fn send_allowed(plugin: &RateLimit, input: &RcptInput, count: usize) {
        for n in 0..count {
            let verdict = plugin.on_rcpt(input);
            assert_eq!(
                verdict,
                RcptVerdict::NoOpinion,
                "message {} of {count}",
                n + 1
            );
        }
    }

    #[test]
    fn per_user_limit_tempfails_with_451_and_resets_after_the_window() {
        let host = host(r#"{"per_user": "3/1h"}"#);
        let plugin = RateLimit::default();
        let input = rcpt("alice@example.com", "bob@example.net").with_auth_user("alice");
        send_allowed(&plugin, &input, 3);

        let reply = tempfail(plugin.on_rcpt(&input));
        assert_eq!(reply.code, 451);
        assert_eq!(reply.enhanced, "4.7.1");
        assert_eq!(
            reply.text,
            "Rate limit exceeded for user alice (3 per 1h); try again in 1200 s"
        );
        assert!(host.logged_at(
            Level::Info,
            "tempfail from 192.0.2.1 (MAIL FROM <alice@example.com>): Rate limit exceeded for \
             user alice"
        ));

        host.advance_ms(HOUR_MS);
        send_allowed(&plugin, &input, 3);
        tempfail(plugin.on_rcpt(&input));
    }

    #[test]
    fn the_retry_hint_counts_down_with_the_clock() {
        let host = host(r#"{"per_user": "2/1m"}"#);
        let plugin = RateLimit::default();
        let input = rcpt("a@example.com", "b@example.net").with_auth_user("alice");
        send_allowed(&plugin, &input, 2);
        host.advance_ms(12_500);
        let reply = tempfail(plugin.on_rcpt(&input));
        assert!(reply.text.ends_with("try again in 18 s"), "{}", reply.text);
        // One slot frees up every window / count = 30 s.
        host.advance_ms(17_500);
        send_allowed(&plugin, &input, 1);
        tempfail(plugin.on_rcpt(&input));
    }

    #[test]
    fn users_are_counted_separately_and_unauthenticated_sessions_not_at_all() {
        let _host = host(r#"{"per_user": "1/1h"}"#);
        let plugin = RateLimit::default();
        let alice = rcpt("a@example.com", "x@example.net").with_auth_user("alice");
        let bob = rcpt("a@example.com", "x@example.net").with_auth_user("bob");
        let anonymous = rcpt("a@example.com", "x@example.net");
        send_allowed(&plugin, &alice, 1);
        send_allowed(&plugin, &bob, 1);
        send_allowed(&plugin, &anonymous, 5);
        tempfail(plugin.on_rcpt(&alice));
        tempfail(plugin.on_rcpt(&bob));
    }

    #[test]
    fn per_sender_domain_limit_names_the_domain_case_insensitively() {
        let _host = host(r#"{"per_sender_domain": "2/1h"}"#);
        let plugin = RateLimit::default();
        send_allowed(&plugin, &rcpt("a@Example.COM", "x@example.net"), 1);
        send_allowed(&plugin, &rcpt("b@example.com", "x@example.net"), 1);
        let reply = tempfail(plugin.on_rcpt(&rcpt("c@example.com.", "x@example.net")));
        assert_eq!(
            reply.text,
            "Rate limit exceeded for sender domain example.com (2 per 1h); try again in 1800 s"
        );
        send_allowed(&plugin, &rcpt("a@other.example", "x@example.net"), 2);
    }

    #[test]
    fn a_domain_override_replaces_the_default_rate() {
        let _host = host(
            r#"{"per_sender_domain": "2/1h",
                "sender_domains": {"bulk.example": "5/1h", "trusted.example": "unlimited"}}"#,
        );
        let plugin = RateLimit::default();
        let bulk = rcpt("news@BULK.example", "x@example.net");
        send_allowed(&plugin, &bulk, 5);
        let reply = tempfail(plugin.on_rcpt(&bulk));
        assert!(
            reply.text.contains("sender domain bulk.example (5 per 1h)"),
            "{}",
            reply.text
        );

        send_allowed(&plugin, &rcpt("a@trusted.example", "x@example.net"), 50);

        let plain = rcpt("a@plain.example", "x@example.net");
        send_allowed(&plugin, &plain, 2);
        tempfail(plugin.on_rcpt(&plain));
    }

    #[test]
    fn an_override_limits_its_domain_even_without_a_default() {
        let _host = host(r#"{"sender_domains": {"bulk.example": "1/1h"}}"#);
        let plugin = RateLimit::default();
        send_allowed(&plugin, &rcpt("a@bulk.example", "x@example.net"), 1);
        tempfail(plugin.on_rcpt(&rcpt("a@bulk.example", "x@example.net")));
        send_allowed(&plugin, &rcpt("a@other.example", "x@example.net"), 10);
    }

    #[test]
    fn the_null_sender_is_never_limited_by_domain() {
        let _host = host(r#"{"per_sender_domain": "1/1h"}"#);
        let plugin = RateLimit::default();
        send_allowed(&plugin, &rcpt("", "x@example.net"), 20);
        send_allowed(&plugin, &rcpt("postmaster", "x@example.net"), 20);
    }

    #[test]
    fn the_null_sender_still_counts_against_the_client_ip() {
        let _host = host(r#"{"per_sender_domain": "1/1h", "per_client_ip": "2/1h"}"#);
        let plugin = RateLimit::default();
        send_allowed(&plugin, &rcpt("", "x@example.net"), 2);
        let reply = tempfail(plugin.on_rcpt(&rcpt("", "x@example.net")));
        assert!(
            reply.text.contains("client IP 192.0.2.1 (2 per 1h)"),
            "{}",
            reply.text
        );
    }

    #[test]
    fn only_the_first_recipient_of_a_transaction_counts() {
        let _host = host(r#"{"per_client_ip": "2/1h"}"#);
        let plugin = RateLimit::default();
        let first = rcpt("a@example.com", "x@example.net");
        // Message 1: the first recipient counts, the next 49 do not.
        send_allowed(&plugin, &first, 1);
        for n in 1..50 {
            send_allowed(&plugin, &first.clone().with_accepted_so_far(n), 1);
        }
        // Message 2 still fits, message 3 does not.
        send_allowed(&plugin, &first, 1);
        tempfail(plugin.on_rcpt(&first));
        // Once a recipient is accepted, the plugin leaves the rest of the transaction alone
        // even over the limit.
        send_allowed(&plugin, &first.clone().with_accepted_so_far(1), 5);
    }

    #[test]
    fn per_client_ip_limit_counts_each_address() {
        let host = host(r#"{"per_client_ip": "1/1d"}"#);
        let plugin = RateLimit::default();
        let v4 = rcpt("a@example.com", "x@example.net").with_client_ip("198.51.100.7");
        send_allowed(&plugin, &v4, 1);
        // The same client through an IPv4-mapped IPv6 socket is the same client.
        let mapped = rcpt("a@example.com", "x@example.net").with_client_ip("::ffff:198.51.100.7");
        let reply = tempfail(plugin.on_rcpt(&mapped));
        assert!(
            reply.text.contains("client IP 198.51.100.7 (1 per 1d)"),
            "{}",
            reply.text
        );
        send_allowed(&plugin, &rcpt("a@example.com", "x@example.net"), 1);
        host.advance_ms(24 * HOUR_MS);
        send_allowed(&plugin, &v4, 1);
    }

    #[test]
    fn ipv6_clients_can_be_counted_per_network() {
        let _host = host(r#"{"per_client_ip": "2/1h", "ipv6_prefix": 64}"#);
        let plugin = RateLimit::default();
        let one = rcpt("a@example.com", "x@example.net").with_client_ip("2001:db8:1:2::1");
        let two = rcpt("a@example.com", "x@example.net").with_client_ip("2001:DB8:1:2:ffff::9");
        let elsewhere = rcpt("a@example.com", "x@example.net").with_client_ip("2001:db8:1:3::1");
        send_allowed(&plugin, &one, 1);
        send_allowed(&plugin, &two, 1);
        let reply = tempfail(plugin.on_rcpt(&one));
        assert!(
            reply.text.contains("client IP 2001:db8:1:2::/64"),
            "{}",
            reply.text
        );
        send_allowed(&plugin, &elsewhere, 2);
    }

    #[test]
    fn limits_are_checked_user_then_domain_then_ip() {
        let _host =
            host(r#"{"per_user": "1/1h", "per_sender_domain": "1/1h", "per_client_ip": "1/1h"}"#);
        let plugin = RateLimit::default();
        let input = rcpt("a@example.com", "x@example.net").with_auth_user("alice");
        send_allowed(&plugin, &input, 1);
        let reply = tempfail(plugin.on_rcpt(&input));
        assert!(reply.text.contains("for user alice"), "{}", reply.text);
        let other_user = input.clone().with_auth_user("bob");
        let reply = tempfail(plugin.on_rcpt(&other_user));
        assert!(
            reply.text.contains("for sender domain example.com"),
            "{}",
            reply.text
        );
        let other_domain = rcpt("a@example.org", "x@example.net").with_auth_user("carol");
        let reply = tempfail(plugin.on_rcpt(&other_domain));
        assert!(
            reply.text.contains("for client IP 192.0.2.1"),
            "{}",
            reply.text
        );
    }

    #[test]
    fn limiter_keys_are_namespaced_and_shared_through_the_host() {
        let host = host(r#"{"per_sender_domain": "1/1h"}"#);
        let plugin = RateLimit::default();
        send_allowed(&plugin, &rcpt("a@example.com", "x@example.net"), 1);
        // Another plugin (or relay node) using the same key sees the same budget.
        assert!(
            !host
                .throttle("rate-limit:domain:example.com", 1, HOUR_MS)
                .allowed
        );
        host.reset_throttle("rate-limit:domain:example.com");
        send_allowed(&plugin, &rcpt("a@example.com", "x@example.net"), 1);
    }

    #[test]
    fn no_config_means_no_limits() {
        let host = host("{}");
        let plugin = RateLimit::default();
        let input = rcpt("a@example.com", "x@example.net").with_auth_user("alice");
        send_allowed(&plugin, &input, 100);
        assert!(host.logs().is_empty(), "{:?}", host.logs());
    }

    #[test]
    fn bad_config_is_logged_once_and_that_limit_is_off() {
        let host = host(r#"{"per_user": "100 an hour", "per_client_ip": "1/1h"}"#);
        let plugin = RateLimit::default();
        let input = rcpt("a@example.com", "x@example.net").with_auth_user("alice");
        send_allowed(&plugin, &input, 1);
        tempfail(plugin.on_rcpt(&input));
        let errors: Vec<_> = host
            .logs()
            .into_iter()
            .filter(|l| l.level == Level::Error)
            .collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].message.contains("per_user: \"100 an hour\""),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn config_that_is_not_json_never_traps() {
        let host = host("per_user = 1/1h");
        let plugin = RateLimit::default();
        let input = rcpt("a@example.com", "x@example.net").with_auth_user("alice");
        send_allowed(&plugin, &input, 10);
        assert!(host.logged_at(Level::Error, "not valid JSON"));
    }

    #[test]
    fn odd_subjects_stay_on_one_line_in_the_reply() {
        let _host = host(r#"{"per_user": "1/1h"}"#);
        let plugin = RateLimit::default();
        let long = "x".repeat(300);
        let input =
            rcpt("a@example.com", "x@example.net").with_auth_user(&format!("ev\r\nil{long}"));
        send_allowed(&plugin, &input, 1);
        let reply = tempfail(plugin.on_rcpt(&input));
        assert!(!reply.text.contains(['\r', '\n']), "{}", reply.text);
        assert!(reply.text.contains("user ev??il"), "{}", reply.text);
        assert!(reply.text.len() < 200, "{}", reply.text);

        let wide = rcpt("a@example.com", "x@example.net").with_auth_user(&"\u{1F600}".repeat(300));
        send_allowed(&plugin, &wide, 1);
        let reply = tempfail(plugin.on_rcpt(&wide));
        assert!(reply.text.len() <= 400, "{} bytes", reply.text.len());
        assert!(
            reply.text.ends_with(" s"),
            "the retry hint survives: {}",
            reply.text
        );
    }

    #[test]
    fn client_keys_are_canonical() {
        assert_eq!(client_key("192.0.2.1", 128), "192.0.2.1");
        assert_eq!(client_key(" 0.0.0.0 ", 128), "0.0.0.0");
        assert_eq!(client_key("::FFFF:192.0.2.1", 64), "192.0.2.1");
        assert_eq!(client_key("2001:DB8:0::1", 128), "2001:db8::1");
        assert_eq!(
            client_key("2001:db8:aaaa:bbbb:cccc::1", 48),
            "2001:db8:aaaa::/48"
        );
        assert_eq!(client_key("2001:db8::1", 1), "::/1");
        assert_eq!(client_key(" unix-socket ", 128), "unix-socket");
    }

    #[test]
    fn sender_domains_are_found_after_the_last_at() {
        assert_eq!(
            sender_domain("\"a@b\"@Example.COM"),
            Some("example.com".to_owned())
        );
        assert_eq!(sender_domain(""), None);
        assert_eq!(sender_domain("user@"), None);
        assert_eq!(sender_domain("postmaster"), None);
    }
}
