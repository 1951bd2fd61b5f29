//! The `[plugins.rate-limit]` table, read key by key so one bad entry only turns off its own limit.

use std::collections::BTreeMap;

use plugin_sdk::config::{normalize_domain, ConfigError, ConfigTable, ConfigValue, Problems, Rate};

/// The keys the table may hold, for the unknown-key message.
const KNOWN_KEYS: &[&str] = &[
    "per_user",
    "per_sender_domain",
    "per_client_ip",
    "sender_domains",
    "ipv6_prefix",
];

/// What happens when a rate key is bad.
const LIMIT_OFF: &str = "this limit is off";

/// The limits the plugin enforces, parsed from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Messages per authenticated user (`per_user`).
    pub per_user: Option<Rate>,
    /// Messages per MAIL FROM domain (`per_sender_domain`), unless overridden.
    pub per_sender_domain: Option<Rate>,
    /// Messages per client IP address (`per_client_ip`).
    pub per_client_ip: Option<Rate>,
    /// Per-domain overrides of `per_sender_domain` (`sender_domains`), keyed by the
    /// lower-case domain.
    pub sender_domains: BTreeMap<String, DomainLimit>,
    /// IPv6 clients are counted per network of this prefix length (`ipv6_prefix`, 128 = per
    /// address).
    pub ipv6_prefix: u8,
}

impl Default for Limits {
    /// No limits at all: what an empty table means.
    fn default() -> Self {
        Limits {
            per_user: None,
            per_sender_domain: None,
            per_client_ip: None,
            sender_domains: BTreeMap::new(),
            ipv6_prefix: 128,
        }
    }
}

/// A per-domain override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainLimit {
    /// This rate instead of `per_sender_domain`.
    Rate(Rate),
    /// `"unlimited"`: the domain is not limited at all.
    Unlimited,
}

impl Limits {
    /// The rate for sender domain `domain` (lower case): its override, else `per_sender_domain`.
    pub fn for_sender_domain(&self, domain: &str) -> Option<Rate> {
        match self.sender_domains.get(domain) {
            Some(DomainLimit::Rate(rate)) => Some(*rate),
            Some(DomainLimit::Unlimited) => None,
            None => self.per_sender_domain,
        }
    }

    /// True when some sender domain has a rate: `per_sender_domain`, or an override that is
    /// not `"unlimited"`. When false, the sender is not worth reading.
    pub fn may_limit_sender_domains(&self) -> bool {
        self.per_sender_domain.is_some()
            || self
                .sender_domains
                .values()
                .any(|limit| matches!(limit, DomainLimit::Rate(_)))
    }

    /// Parses the config JSON the relay hands over. Never fails: every problem is returned
    /// beside the limits, and the limit it concerns is left out (or, for a bad override, the
    /// domain falls back to `per_sender_domain`).
    pub fn from_json(text: &str) -> (Limits, Vec<ConfigError>) {
        let mut limits = Limits::default();
        let mut problems = Problems::default();
        let Some(table) = problems.check(ConfigTable::parse(text), "no limits apply") else {
            return (limits, problems.into_vec());
        };
        let mut rate = |key| {
            let rate = table.read(key, ConfigValue::as_rate);
            problems.check(rate, LIMIT_OFF).flatten()
        };
        limits.per_user = rate("per_user");
        limits.per_sender_domain = rate("per_sender_domain");
        limits.per_client_ip = rate("per_client_ip");
        if let Some(value) = table.get("sender_domains") {
            limits.sender_domains = domain_overrides(&value, &mut problems);
        }
        let prefix = table.read("ipv6_prefix", |value| value.as_integer(1..=128));
        if let Some(prefix) = problems.check(prefix, "counting per address").flatten() {
            limits.ipv6_prefix = prefix;
        }
        problems.extend(table.unknown_keys(KNOWN_KEYS), "ignored");
        (limits, problems.into_vec())
    }
}

/// The `sender_domains` table; bad entries are reported and left out.
fn domain_overrides(
    value: &ConfigValue<'_>,
    problems: &mut Problems,
) -> BTreeMap<String, DomainLimit> {
    let mut overrides = BTreeMap::new();
    let expected = "a table of domain = \"count/window\"";
    let table = value.as_table().map_err(|_| value.expected(expected));
    let Some(table) = problems.check(table, "no overrides apply") else {
        return overrides;
    };
    for (domain, value) in table.entries() {
        let limit = if value.as_str().is_ok_and(|text| text.trim() == "unlimited") {
            Ok(DomainLimit::Unlimited)
        } else {
            value.as_rate().map(DomainLimit::Rate)
        };
        if let Some(limit) = problems.check(limit, "using per_sender_domain") {
            overrides.insert(normalize_domain(domain), limit);
        }
    }
    overrides
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> Rate {
        text.parse()
            .unwrap_or_else(|err| panic!("{text:?} should parse: {err}"))
    }

    #[test]
    fn the_documented_table_parses_without_errors() {
        let (limits, errors) = Limits::from_json(
            r#"{"per_user": "100/1h", "per_sender_domain": "1000/1h", "per_client_ip": "500/1h",
                "sender_domains": {"Bulk.Example.": "10000/1h", "free.example": "unlimited"},
                "ipv6_prefix": 64}"#,
        );
        assert_eq!(errors, []);
        assert_eq!(limits.per_user, Some(rate("100/1h")));
        assert_eq!(limits.per_client_ip, Some(rate("500/1h")));
        assert_eq!(
            limits.for_sender_domain("example.com"),
            Some(rate("1000/1h"))
        );
        assert_eq!(
            limits.for_sender_domain("bulk.example"),
            Some(rate("10000/1h"))
        );
        assert_eq!(limits.for_sender_domain("free.example"), None);
        assert_eq!(limits.ipv6_prefix, 64);
    }

    #[test]
    fn an_empty_table_means_no_limits() {
        let (limits, errors) = Limits::from_json("{}");
        assert_eq!(errors, []);
        assert_eq!(limits, Limits::default());
    }

    #[test]
    fn a_bad_key_turns_off_only_its_own_limit() {
        let (limits, errors) = Limits::from_json(
            r#"{"per_user": "100/1w", "per_client_ip": 500, "per_sender_domain": "10/1m",
                "sender_domains": {"bad.example": "lots", "good.example": "5/1s"},
                "per_ip": "1/1s", "ipv6_prefix": 200}"#,
        );
        assert_eq!(limits.per_user, None);
        assert_eq!(limits.per_client_ip, None);
        assert_eq!(limits.per_sender_domain, Some(rate("10/1m")));
        assert_eq!(limits.for_sender_domain("bad.example"), Some(rate("10/1m")));
        assert_eq!(limits.for_sender_domain("good.example"), Some(rate("5/1s")));
        assert_eq!(limits.ipv6_prefix, 128);
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 5, "{messages:#?}");
        let mentions = |needle: &str| messages.iter().any(|m| m.contains(needle));
        assert!(
            mentions(
                r#"per_user: "100/1w": "1w" is not a duration (e.g. "30s", "5m", "4h", "30d"); this limit is off"#
            ),
            "{messages:#?}"
        );
        assert!(mentions(
            "per_client_ip: expected a rate such as \"100/1h\", found a number"
        ));
        assert!(
            mentions("sender_domains.\"bad.example\": \"lots\" is not a rate"),
            "{messages:#?}"
        );
        assert!(mentions("; using per_sender_domain"), "{messages:#?}");
        assert!(mentions("unknown key \"per_ip\""), "{messages:#?}");
        assert!(
            mentions(
                "ipv6_prefix: expected a whole number from 1 to 128, found 200; counting per address"
            ),
            "{messages:#?}"
        );
    }

    #[test]
    fn sender_domains_are_limited_only_by_a_rate() {
        let limited = |json: &str| Limits::from_json(json).0.may_limit_sender_domains();
        assert!(!limited("{}"));
        assert!(!limited(r#"{"per_user": "1/1h", "per_client_ip": "1/1h"}"#));
        assert!(!limited(
            r#"{"sender_domains": {"free.example": "unlimited"}}"#
        ));
        assert!(limited(r#"{"per_sender_domain": "1/1h"}"#));
        assert!(limited(r#"{"sender_domains": {"bulk.example": "5/1h"}}"#));
    }

    #[test]
    fn config_that_is_not_a_table_means_no_limits() {
        for text in ["[1, 2]", "not json", ""] {
            let (limits, errors) = Limits::from_json(text);
            assert_eq!(limits, Limits::default());
            assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
        }
    }
}
