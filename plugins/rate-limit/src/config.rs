//! The `[plugins.rate-limit]` table, read key by key so one bad entry only turns off its own limit.

use std::collections::BTreeMap;

use serde_json::Value;
use thiserror::Error;

use crate::rate::{Rate, RateError};

/// The keys the table may hold, for the unknown-key message.
const KNOWN_KEYS: &str = "per_user, per_sender_domain, per_client_ip, sender_domains, ipv6_prefix";

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

    /// Parses the config JSON the relay hands over. Never fails: every problem is returned
    /// beside the limits, and the limit it concerns is left out (or, for a bad override, the
    /// domain falls back to `per_sender_domain`).
    pub fn from_json(text: &str) -> (Limits, Vec<ConfigError>) {
        let mut limits = Limits::default();
        let mut errors = Vec::new();
        let table = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(table)) => table,
            Ok(other) => {
                errors.push(ConfigError::NotATable {
                    found: kind_of(&other),
                });
                return (limits, errors);
            }
            Err(err) => {
                errors.push(ConfigError::Json(err.to_string()));
                return (limits, errors);
            }
        };
        for (key, value) in &table {
            let result = match key.as_str() {
                "per_user" => rate_value(key, value).map(|rate| limits.per_user = Some(rate)),
                "per_sender_domain" => {
                    rate_value(key, value).map(|rate| limits.per_sender_domain = Some(rate))
                }
                "per_client_ip" => {
                    rate_value(key, value).map(|rate| limits.per_client_ip = Some(rate))
                }
                "sender_domains" => {
                    limits.sender_domains = domain_overrides(value, &mut errors);
                    Ok(())
                }
                "ipv6_prefix" => ipv6_prefix(value).map(|prefix| limits.ipv6_prefix = prefix),
                _ => Err(ConfigError::UnknownKey { key: key.clone() }),
            };
            if let Err(err) = result {
                errors.push(err);
            }
        }
        (limits, errors)
    }
}

/// A rate given as a string, e.g. `"100/1h"`.
fn rate_value(key: &str, value: &Value) -> Result<Rate, ConfigError> {
    let text = value.as_str().ok_or_else(|| ConfigError::NotARate {
        key: key.to_owned(),
        found: kind_of(value),
    })?;
    text.parse().map_err(|problem| ConfigError::Rate {
        key: key.to_owned(),
        problem,
    })
}

/// The `sender_domains` table; bad entries are reported and left out.
fn domain_overrides(value: &Value, errors: &mut Vec<ConfigError>) -> BTreeMap<String, DomainLimit> {
    let mut overrides = BTreeMap::new();
    let Some(table) = value.as_object() else {
        errors.push(ConfigError::DomainsNotATable {
            found: kind_of(value),
        });
        return overrides;
    };
    for (domain, value) in table {
        let key = format!("sender_domains.{domain:?}");
        let limit = if value
            .as_str()
            .is_some_and(|text| text.trim() == "unlimited")
        {
            Ok(DomainLimit::Unlimited)
        } else {
            rate_value(&key, value).map(DomainLimit::Rate)
        };
        match limit {
            Ok(limit) => {
                overrides.insert(normalize_domain(domain), limit);
            }
            Err(err) => errors.push(err),
        }
    }
    overrides
}

fn ipv6_prefix(value: &Value) -> Result<u8, ConfigError> {
    value
        .as_u64()
        .and_then(|prefix| u8::try_from(prefix).ok())
        .filter(|prefix| (1..=128).contains(prefix))
        .ok_or_else(|| ConfigError::Ipv6Prefix {
            found: value.to_string(),
        })
}

/// A domain as the plugin compares it: lower case, without a trailing dot.
pub fn normalize_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_lowercase()
}

/// How a JSON value is named in messages.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// A problem in the plugin's config table; the message names the key and what happens now.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The relay handed over text that is not JSON (a relay bug, but never a trap).
    #[error("the config is not valid JSON ({0}); no limits apply")]
    Json(String),
    /// The config is JSON but not a table.
    #[error("the config is {found}, not a table; no limits apply")]
    NotATable {
        /// What it is instead.
        found: &'static str,
    },
    /// A rate key holds something other than a string.
    #[error("{key}: expected a rate such as \"100/1h\", found {found}; this limit is off")]
    NotARate {
        /// The key, e.g. `per_user` or `sender_domains."bulk.example"`.
        key: String,
        /// What it holds instead.
        found: &'static str,
    },
    /// A rate key holds a string that is not a rate.
    #[error("{key}: {problem}; this limit is off")]
    Rate {
        /// The key, e.g. `per_user` or `sender_domains."bulk.example"`.
        key: String,
        /// What is wrong with the rate.
        problem: RateError,
    },
    /// `sender_domains` is not a table.
    #[error(
        "sender_domains: expected a table of domain = \"count/window\", found {found}; no overrides apply"
    )]
    DomainsNotATable {
        /// What it is instead.
        found: &'static str,
    },
    /// `ipv6_prefix` is not a prefix length.
    #[error(
        "ipv6_prefix: expected a whole number from 1 to 128, found {found}; counting per address"
    )]
    Ipv6Prefix {
        /// The value as JSON.
        found: String,
    },
    /// A key the plugin does not know, probably a typo.
    #[error("unknown key {key:?} (known: {KNOWN_KEYS}); ignored")]
    UnknownKey {
        /// The key.
        key: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> Rate {
        match text.parse() {
            Ok(rate) => rate,
            Err(err) => panic!("{text:?} should parse: {err}"),
        }
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
        assert!(mentions("per_user: \"100/1w\""), "{messages:#?}");
        assert!(mentions(
            "per_client_ip: expected a rate such as \"100/1h\", found a number"
        ));
        assert!(mentions("sender_domains.\"bad.example\""), "{messages:#?}");
        assert!(mentions("unknown key \"per_ip\""), "{messages:#?}");
        assert!(mentions("ipv6_prefix"), "{messages:#?}");
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
