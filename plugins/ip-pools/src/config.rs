//! The `[plugins.ip-pools]` table: parsed and checked once, then used by every `choose_ip`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use plugin_sdk::config::normalize_domain;
use serde::Deserialize;

use plugin_sdk::calendar::UtcDay;

/// Why the `[plugins.ip-pools]` table was refused; the text names the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not the expected shape: an unknown key, a wrong type, a negative cap, ...
    #[error("[plugins.ip-pools]: {0}")]
    Shape(#[from] serde_json::Error),
    /// A `tag_pools` key without `=`, or with an empty tag key.
    #[error("[plugins.ip-pools] tag_pools: \"{0}\" is not \"key=value\" (e.g. \"class=bulk\")")]
    TagPattern(String),
    /// A pool name that is empty.
    #[error("[plugins.ip-pools] {key}: the pool name is empty")]
    EmptyPool {
        /// Where the name appeared, e.g. `sender_domains."news.example"`.
        key: String,
    },
    /// An empty `sender_domains` key.
    #[error("[plugins.ip-pools] sender_domains: a domain is empty")]
    EmptyDomain,
    /// Two keys that differ only in case (domains) or spelling (IPv6), naming different pools.
    #[error("[plugins.ip-pools] {table}: \"{first}\" and \"{second}\" are the same entry")]
    Duplicate {
        /// `sender_domains` or `warmup`.
        table: &'static str,
        /// One spelling.
        first: String,
        /// The other.
        second: String,
    },
    /// A `warmup` start that is not a date.
    #[error("[plugins.ip-pools] warmup.\"{entry}\".start: {value} is not a UTC date like \"2026-11-20\"")]
    Start {
        /// The warm-up entry (source IP or name).
        entry: String,
        /// The value as written (JSON).
        value: String,
    },
}

/// The key TOML datetimes take when the relay turns its TOML config into JSON
/// (`start = 2026-11-20` without quotes): `{"$__toml_private_datetime": "2026-11-20"}`.
const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

/// The table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    default_pool: Option<String>,
    #[serde(default)]
    tag_pools: BTreeMap<String, String>,
    #[serde(default)]
    sender_domains: BTreeMap<String, String>,
    #[serde(default)]
    warmup: BTreeMap<String, RawWarmup>,
}

/// One `[plugins.ip-pools.warmup."IP"]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarmup {
    /// A string `"2026-11-20"`, or a TOML date (see [`TOML_DATETIME_KEY`]).
    start: serde_json::Value,
    daily: Vec<u64>,
}

/// A source's warm-up schedule: the daily cap for day N since `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Warmup {
    start: UtcDay,
    daily: Vec<u64>,
}

impl Warmup {
    /// Today's cap: `daily[today - start]`; the first cap before the start day (the address
    /// is not warm yet); `None` (no cap) once the schedule has run out.
    pub(crate) fn cap_on(&self, today: UtcDay) -> Option<u64> {
        let day = usize::try_from(today.days_since(self.start).max(0)).unwrap_or(usize::MAX);
        self.daily.get(day).copied()
    }
}

/// Why a pool was chosen, for the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reason {
    /// `tag_pools` matched this message tag.
    Tag { key: String, value: String },
    /// `sender_domains` matched the envelope sender's domain.
    SenderDomain(String),
    /// Nothing matched: `default_pool`.
    Default,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Tag { key, value } => write!(f, "tag_pools.\"{key}={value}\""),
            Reason::SenderDomain(domain) => write!(f, "sender_domains.\"{domain}\""),
            Reason::Default => f.write_str("default_pool"),
        }
    }
}

/// The checked configuration.
///
/// Maps are `BTreeMap`s: std's `HashMap` seeds itself from `wasi:random`, an import this
/// plugin has no other use for.
#[derive(Debug, Default)]
pub(crate) struct Config {
    default_pool: Option<String>,
    /// (tag key, tag value) -> pool.
    tag_pools: BTreeMap<(String, String), String>,
    /// Lower-case domain without a trailing dot -> pool.
    sender_domains: BTreeMap<String, String>,
    /// Canonical IP text (or source name) -> schedule.
    warmup: BTreeMap<String, Warmup>,
}

impl Config {
    /// Parses the plugin's JSON config (`"{}"` gives a config with no opinion on anything).
    pub(crate) fn parse(json: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_json::from_str(json)?;
        let mut config = Config::default();

        if let Some(pool) = raw.default_pool {
            config.default_pool = Some(pool_name(pool, "default_pool")?);
        }
        for (pattern, pool) in raw.tag_pools {
            let (key, value) = pattern
                .split_once('=')
                .map(|(key, value)| (key.trim(), value.trim()))
                .filter(|(key, _)| !key.is_empty())
                .ok_or_else(|| ConfigError::TagPattern(pattern.clone()))?;
            let pool = pool_name(pool, &format!("tag_pools.\"{pattern}\""))?;
            config
                .tag_pools
                .insert((key.to_owned(), value.to_owned()), pool);
        }
        let mut spelled: BTreeMap<String, String> = BTreeMap::new();
        for (domain, pool) in raw.sender_domains {
            let key = normalize_domain(&domain);
            if key.is_empty() {
                return Err(ConfigError::EmptyDomain);
            }
            let pool = pool_name(pool, &format!("sender_domains.\"{domain}\""))?;
            if let Some(first) = spelled.insert(key.clone(), domain.clone()) {
                return Err(ConfigError::Duplicate {
                    table: "sender_domains",
                    first,
                    second: domain,
                });
            }
            config.sender_domains.insert(key, pool);
        }
        let mut spelled: BTreeMap<String, String> = BTreeMap::new();
        for (entry, raw) in raw.warmup {
            let start = start_day(&raw.start).ok_or_else(|| ConfigError::Start {
                entry: entry.clone(),
                value: raw.start.to_string(),
            })?;
            let key = canonical_source_key(&entry);
            if let Some(first) = spelled.insert(key.clone(), entry.clone()) {
                return Err(ConfigError::Duplicate {
                    table: "warmup",
                    first,
                    second: entry,
                });
            }
            config.warmup.insert(
                key,
                Warmup {
                    start,
                    daily: raw.daily,
                },
            );
        }
        Ok(config)
    }

    /// The pool for a delivery, and why: `tag_pools` (the message's latest tags first), then
    /// `sender_domains`, then `default_pool`; `None` when nothing applies.
    pub(crate) fn pool_for<'a>(
        &'a self,
        tags: &[plugin_sdk::types::Tag],
        sender: &str,
    ) -> Option<(&'a str, Reason)> {
        if !self.tag_pools.is_empty() {
            // A later tag with the same key replaces an earlier one: only the latest counts.
            let mut seen: Vec<&str> = Vec::new();
            for tag in tags.iter().rev() {
                if seen.contains(&tag.key.as_str()) {
                    continue;
                }
                seen.push(&tag.key);
                if let Some(pool) = self.tag_pools.get(&(tag.key.clone(), tag.value.clone())) {
                    let reason = Reason::Tag {
                        key: tag.key.clone(),
                        value: tag.value.clone(),
                    };
                    return Some((pool, reason));
                }
            }
        }
        if let Some((_, domain)) = sender.rsplit_once('@') {
            let domain = normalize_domain(domain);
            if let Some(pool) = self.sender_domains.get(&domain) {
                return Some((pool, Reason::SenderDomain(domain)));
            }
        }
        self.default_pool
            .as_deref()
            .map(|pool| (pool, Reason::Default))
    }

    /// The warm-up schedule of a source: by its IP first, else by its name.
    pub(crate) fn warmup_for(&self, ip: &str, name: &str) -> Option<&Warmup> {
        self.warmup
            .get(&canonical_source_key(ip))
            .or_else(|| self.warmup.get(name))
    }
}

/// A pool name from the config, refused when empty.
fn pool_name(name: String, key: &str) -> Result<String, ConfigError> {
    if name.trim().is_empty() {
        return Err(ConfigError::EmptyPool {
            key: key.to_owned(),
        });
    }
    Ok(name)
}

/// An IP in its canonical text (so `2001:DB8::0:1` and `2001:db8::1` are one key), or a
/// source name as is.
pub(crate) fn canonical_source_key(entry: &str) -> String {
    entry
        .parse::<IpAddr>()
        .map_or_else(|_| entry.to_owned(), |ip| ip.to_string())
}

/// A warm-up start: `"2026-11-20"`, or the same as a TOML date.
fn start_day(value: &serde_json::Value) -> Option<UtcDay> {
    let text = match value {
        serde_json::Value::String(text) => text.as_str(),
        serde_json::Value::Object(map) if map.len() == 1 => map.get(TOML_DATETIME_KEY)?.as_str()?,
        _ => return None,
    };
    UtcDay::parse(text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_sdk::types::Tag;

    #[test]
    fn an_empty_table_has_no_opinion() {
        let config = Config::parse("{}").expect("valid");
        assert_eq!(config.pool_for(&[], "a@news.example"), None);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key() {
        for (json, needle) in [
            (r#"{"default_pol": "x"}"#, "unknown field `default_pol`"),
            (
                r#"{"tag_pools": {"class": "bulk"}}"#,
                "\"class\" is not \"key=value\"",
            ),
            (r#"{"tag_pools": {"=bulk": "bulk"}}"#, "\"=bulk\" is not"),
            (
                r#"{"sender_domains": {"a.example": ""}}"#,
                "sender_domains.\"a.example\": the pool name is empty",
            ),
            (
                r#"{"sender_domains": {"A.example": "x", "a.example.": "y"}}"#,
                "are the same entry",
            ),
            (
                r#"{"warmup": {"127.0.0.3": {"start": "20-11-2026", "daily": [1]}}}"#,
                "warmup.\"127.0.0.3\".start: \"20-11-2026\"",
            ),
            (
                r#"{"warmup": {"127.0.0.3": {"start": "2026-11-20", "daily": [-1]}}}"#,
                "[plugins.ip-pools]",
            ),
            (
                r#"{"warmup": {"127.0.0.3": {"daily": [1]}}}"#,
                "missing field `start`",
            ),
            (
                r#"{"warmup": {"::1": {"start": "2026-11-20", "daily": [1]}, "0::1": {"start": "2026-11-20", "daily": [1]}}}"#,
                "are the same entry",
            ),
        ] {
            let err = Config::parse(json).expect_err(json).to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn a_toml_date_is_accepted_as_the_start() {
        let json = r#"{"warmup": {"mta2": {"start": {"$__toml_private_datetime": "2026-11-20"}, "daily": [5]}}}"#;
        let config = Config::parse(json).expect("valid");
        let warmup = config.warmup_for("192.0.2.9", "mta2").expect("by name");
        assert_eq!(
            warmup.cap_on(UtcDay::parse("2026-11-20").expect("date")),
            Some(5)
        );
    }

    #[test]
    fn the_latest_tag_wins_over_an_earlier_value_for_the_same_key() {
        let json = r#"{"tag_pools": {"class=bulk": "bulk", "class=vip": "vip"}}"#;
        let config = Config::parse(json).expect("valid");
        let tags = [Tag::new("class", "bulk"), Tag::new("class", "other")];
        assert_eq!(config.pool_for(&tags, ""), None, "class is now \"other\"");
        let tags = [Tag::new("class", "other"), Tag::new("class", "vip")];
        assert_eq!(
            config.pool_for(&tags, "").map(|(pool, _)| pool),
            Some("vip")
        );
    }

    #[test]
    fn sender_domains_ignore_case_and_the_root_dot() {
        let json = r#"{"sender_domains": {"News.Example": "bulk"}}"#;
        let config = Config::parse(json).expect("valid");
        let (pool, reason) = config.pool_for(&[], "Alice@NEWS.example.").expect("match");
        assert_eq!(
            (pool, reason.to_string()),
            ("bulk", "sender_domains.\"news.example\"".to_owned())
        );
        assert_eq!(
            config.pool_for(&[], ""),
            None,
            "the null sender has no domain"
        );
        assert_eq!(
            config.pool_for(&[], "a@sub.news.example"),
            None,
            "no subdomain match"
        );
        let json = r#"{"sender_domains": {"ÄRGER.example": "bulk"}}"#;
        let config = Config::parse(json).expect("valid");
        assert_eq!(
            config
                .pool_for(&[], "a@ärger.example")
                .map(|(pool, _)| pool),
            Some("bulk"),
            "internationalised domains compare without case too, as in rate-limit"
        );
    }

    #[test]
    fn the_local_part_never_chooses_the_pool() {
        // `choose` lets the relay reuse uncapped answers whatever the local part.
        let json = r#"{"sender_domains": {"news.example": "bulk"}, "default_pool": "shared"}"#;
        let config = Config::parse(json).expect("valid");
        for sender in [
            "a@news.example",
            "other@News.Example",
            "\"x@vip.example\"@news.example",
        ] {
            assert_eq!(
                config.pool_for(&[], sender).map(|(pool, _)| pool),
                Some("bulk"),
                "{sender}"
            );
        }
        assert_eq!(
            config
                .pool_for(&[], "news.example@other.example")
                .map(|(pool, _)| pool),
            Some("shared"),
            "a local part that looks like the domain does not match"
        );
    }

    #[test]
    fn warmup_caps_follow_the_schedule_and_end_with_it() {
        let json = r#"{"warmup": {"2001:DB8::0:1": {"start": "2026-11-20", "daily": [50, 100]}}}"#;
        let config = Config::parse(json).expect("valid");
        let warmup = config
            .warmup_for("2001:db8::1", "mta6")
            .expect("canonical IPv6");
        let day = |text| UtcDay::parse(text).expect("date");
        assert_eq!(
            warmup.cap_on(day("2026-11-19")),
            Some(50),
            "before the start: the first cap"
        );
        assert_eq!(warmup.cap_on(day("2026-11-20")), Some(50));
        assert_eq!(warmup.cap_on(day("2026-11-21")), Some(100));
        assert_eq!(warmup.cap_on(day("2026-11-22")), None, "warm: no cap");
    }
}
