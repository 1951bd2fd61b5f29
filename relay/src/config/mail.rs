//! `[dkim]` and `[hygiene]`: what the relay does to a message before it queues it.

use std::path::PathBuf;

use serde::Deserialize;

use super::{find_array_key_line, find_key_line, format_error, ConfigDuration, ConfigError};
use crate::dkim::{is_dns_name, is_field_name};

/// `[dkim]`: signing keys per domain, and how the signing domain is chosen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// Sign with this domain's keys when neither the tag nor the From domain has keys.
    pub fallback_domain: Option<String>,
    /// A tag (set by a plugin in `on_data`) that names the signing domain; it wins over the
    /// From domain.
    #[serde(default = "default_dkim_tag")]
    pub tag: String,
    /// `[[dkim.key]]`: one signature each; a domain with two keys (RSA and Ed25519) gets two.
    #[serde(default, rename = "key")]
    pub keys: Vec<DkimKeyConfig>,
}

fn default_dkim_tag() -> String {
    "dkim_domain".to_string()
}

/// `[[dkim.key]]`: one signing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    /// The signing domain (`d=`), lower case.
    pub domain: String,
    /// The selector (`s=`): the key is published at `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// PEM private key: RSA (2048 bits or more) or Ed25519; `relay dkim keygen` writes one.
    pub key_file: PathBuf,
    /// Header fields to sign (those present are signed; From always is). Default: the usual
    /// set (From, To, Cc, Subject, Date, Message-ID, MIME and list headers...).
    pub headers: Option<Vec<String>>,
    /// `c=`: header/body canonicalization, `relaxed/relaxed` (default), `relaxed/simple`,
    /// `simple/relaxed` or `simple/simple`.
    #[serde(default = "default_canonicalization")]
    pub canonicalization: String,
    /// `x=`: signatures expire this long after signing (default: no expiry).
    pub expire: Option<ConfigDuration>,
}

fn default_canonicalization() -> String {
    "relaxed/relaxed".to_string()
}

/// `[hygiene]`: repairs before signing, for mail from trusted clients (every message the relay
/// queues comes from `relay_networks` or a logged-in client).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HygieneConfig {
    /// Add `Message-ID: <QUEUE-ID@hostname>` to a message without one.
    pub add_message_id: bool,
    /// Add `Date:` (the time the relay received the message) to a message without one.
    pub add_date: bool,
    /// A message whose `From:` is missing, repeated or has no valid address: `reject`
    /// (`550 5.6.0`), `repair` (a missing From becomes the envelope sender; a malformed one is
    /// still refused) or `accept` (passed on as it is, unsigned by a From-chosen key).
    pub from: FromPolicy,
}

impl Default for HygieneConfig {
    fn default() -> Self {
        HygieneConfig {
            add_message_id: true,
            add_date: true,
            from: FromPolicy::Reject,
        }
    }
}

/// What `[hygiene] from` does with a message without a usable `From:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FromPolicy {
    /// Refuse it.
    Reject,
    /// Add a missing From (the envelope sender); refuse a malformed one.
    Repair,
    /// Pass it on.
    Accept,
}

/// The `[dkim]` checks beyond types: names, canonicalization, one key per domain and selector.
pub(super) fn validate(dkim: &DkimConfig, text: &str, file: &str) -> Result<(), ConfigError> {
    // Written out: format_error's path splitting knows one level of section, not dkim.key.
    let fail_at = |index: usize, field: &str, reason: &str| {
        let line = find_array_key_line(text, "dkim.key", index, field);
        let location = if line > 0 {
            format!("{file}:{line}")
        } else {
            file.to_string()
        };
        Err(ConfigError::Invalid(format!(
            "{location}: [[dkim.key]] {field}: {reason}"
        )))
    };
    let mut seen = std::collections::HashSet::new();
    for (index, key) in dkim.keys.iter().enumerate() {
        if !is_dns_name(&key.domain) {
            return fail_at(
                index,
                "domain",
                &format!("{:?} is not a domain name", key.domain),
            );
        }
        if !is_dns_name(&key.selector) {
            return fail_at(
                index,
                "selector",
                &format!(
                    "{:?} is not a selector (letters, digits, '-' and '_' in dot-separated labels)",
                    key.selector
                ),
            );
        }
        if !matches!(
            key.canonicalization.to_ascii_lowercase().as_str(),
            "relaxed/relaxed" | "relaxed/simple" | "simple/relaxed" | "simple/simple"
        ) {
            return fail_at(
                index,
                "canonicalization",
                &format!(
                    "{:?}: expected relaxed/relaxed, relaxed/simple, simple/relaxed or simple/simple",
                    key.canonicalization
                ),
            );
        }
        if let Some(headers) = &key.headers {
            if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
                return fail_at(index, "headers", "must include From (RFC 6376 5.4)");
            }
            if let Some(bad) = headers.iter().find(|h| !is_field_name(h)) {
                return fail_at(
                    index,
                    "headers",
                    &format!("{bad:?} is not a header field name"),
                );
            }
        }
        if key.expire.is_some_and(|e| e.0.as_secs() < 60) {
            return fail_at(index, "expire", "must be at least 1m");
        }
        let id = (
            key.domain.to_ascii_lowercase(),
            key.selector.to_ascii_lowercase(),
        );
        if !seen.insert(id) {
            return fail_at(
                index,
                "selector",
                &format!("{} is configured twice for {}", key.selector, key.domain),
            );
        }
    }
    if let Some(fallback) = &dkim.fallback_domain {
        let line = find_key_line(text, "dkim", "fallback_domain");
        let reason = if !dkim
            .keys
            .iter()
            .any(|k| k.domain.eq_ignore_ascii_case(fallback))
        {
            Some(format!("{fallback:?} has no [[dkim.key]]"))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(ConfigError::Invalid(format_error(
                file,
                line,
                "dkim.fallback_domain",
                &reason,
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn dkim_and_hygiene_parse_with_their_defaults() {
        let text = "[dkim]\nfallback_domain = \"relay.test\"\n\n[[dkim.key]]\ndomain = \"relay.test\"\n\
                    selector = \"s1\"\nkey_file = \"k.pem\"\n\n[[dkim.key]]\ndomain = \"relay.test\"\n\
                    selector = \"e1\"\nkey_file = \"e.pem\"\nexpire = \"7d\"\n";
        let config = Config::parse(text, "r.toml").expect("valid");
        let dkim = config.dkim.expect("dkim");
        assert_eq!(dkim.tag, "dkim_domain");
        assert_eq!(dkim.keys.len(), 2);
        assert_eq!(dkim.keys[0].canonicalization, "relaxed/relaxed");
        assert_eq!(dkim.keys[1].expire.map(|e| e.0.as_secs()), Some(7 * 86_400));
        assert_eq!(config.hygiene.from, FromPolicy::Reject);
        assert!(config.hygiene.add_date && config.hygiene.add_message_id);
    }

    #[test]
    fn dkim_errors_name_the_line_and_field() {
        let key = |extra: &str| {
            format!(
                "[[dkim.key]]\ndomain = \"x.test\"\nselector = \"s1\"\nkey_file = \"k\"\n{extra}"
            )
        };
        let cases = [
            (
                key("canonicalization = \"loose\"\n"),
                "r.toml:5: [[dkim.key]] canonicalization: \"loose\": expected relaxed/relaxed, relaxed/simple, simple/relaxed or simple/simple",
            ),
            (
                key("headers = [\"Subject\"]\n"),
                "r.toml:5: [[dkim.key]] headers: must include From (RFC 6376 5.4)",
            ),
            (
                key("expire = \"10s\"\n"),
                "r.toml:5: [[dkim.key]] expire: must be at least 1m",
            ),
            (
                format!("{}{}", key(""), key("")),
                "r.toml:7: [[dkim.key]] selector: s1 is configured twice for x.test",
            ),
            (
                format!("[dkim]\nfallback_domain = \"y.test\"\n{}", key("")),
                "r.toml:2: [dkim] fallback_domain: \"y.test\" has no [[dkim.key]]",
            ),
            (
                "[[dkim.key]]\ndomain = \"bad domain\"\nselector = \"s\"\nkey_file = \"k\"\n".to_string(),
                "r.toml:2: [[dkim.key]] domain: \"bad domain\" is not a domain name",
            ),
            (
                "[hygiene]\nfrom = \"fix\"\n".to_string(),
                "r.toml:2: [hygiene] from: unknown variant `fix`, expected one of `reject`, `repair`, `accept`",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(&text, "r.toml").expect_err(&text).to_string();
            assert_eq!(err, expected, "{text}");
        }
    }
}
