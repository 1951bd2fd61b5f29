//! The `[plugins.suppression]` table, read key by key so one bad entry never turns the plugin off.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;
use thiserror::Error;

use crate::classify::EnhancedCode;

/// The keys the table may hold, for the unknown-key message.
const KNOWN_KEYS: &str = "ttl, extra_codes";

/// How long a suppression lasts when `ttl` is absent or bad.
pub const DEFAULT_TTL: &str = "30d";

/// The plugin's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// How long a suppressed address stays suppressed (`ttl`).
    pub ttl: Ttl,
    /// Enhanced codes that suppress besides the invalid-recipient ones (`extra_codes`).
    pub extra_codes: Vec<EnhancedCode>,
}

impl Config {
    /// Parses the config JSON the relay hands over. Never fails: every problem is returned
    /// beside the config, and the setting it concerns keeps its default.
    pub fn from_json(text: &str) -> (Config, Vec<ConfigError>) {
        let mut config = Config::default();
        let mut errors = Vec::new();
        let table = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(table)) => table,
            Ok(other) => {
                errors.push(ConfigError::NotATable {
                    found: kind_of(&other),
                });
                return (config, errors);
            }
            Err(err) => {
                errors.push(ConfigError::Json(err.to_string()));
                return (config, errors);
            }
        };
        for (key, value) in &table {
            match key.as_str() {
                "ttl" => match ttl(value) {
                    Ok(ttl) => config.ttl = ttl,
                    Err(err) => errors.push(err),
                },
                "extra_codes" => config.extra_codes = extra_codes(value, &mut errors),
                _ => errors.push(ConfigError::UnknownKey { key: key.clone() }),
            }
        }
        (config, errors)
    }
}

fn ttl(value: &Value) -> Result<Ttl, ConfigError> {
    let text = value.as_str().ok_or(ConfigError::TtlNotAString {
        found: kind_of(value),
    })?;
    text.parse()
}

/// The `extra_codes` list; bad entries are reported and left out.
fn extra_codes(value: &Value, errors: &mut Vec<ConfigError>) -> Vec<EnhancedCode> {
    let Some(items) = value.as_array() else {
        errors.push(ConfigError::CodesNotAList {
            found: kind_of(value),
        });
        return Vec::new();
    };
    let mut codes = Vec::new();
    for item in items {
        let parsed = item
            .as_str()
            .and_then(|text| text.parse::<EnhancedCode>().ok());
        match parsed {
            Some(code) if code.class == 5 => {
                if !codes.contains(&code) {
                    codes.push(code);
                }
            }
            Some(code) => errors.push(ConfigError::CodeNotPermanent {
                code: code.to_string(),
            }),
            None => errors.push(ConfigError::NotACode {
                found: item.to_string(),
            }),
        }
    }
    codes
}

/// How JSON values are named in messages.
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

/// How long a suppression lasts, written `<N><unit>` with unit `s`, `m`, `h` or `d`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ttl {
    ms: u64,
    text: String,
}

impl Ttl {
    /// The length in milliseconds (at least 1000).
    pub fn as_ms(&self) -> u64 {
        self.ms
    }
}

impl Default for Ttl {
    /// [`DEFAULT_TTL`], 30 days.
    fn default() -> Self {
        Ttl {
            ms: 30 * 86_400_000,
            text: DEFAULT_TTL.to_owned(),
        }
    }
}

impl fmt::Display for Ttl {
    /// As written, e.g. `30d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Ttl {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let bad = || ConfigError::Ttl {
            text: text.to_owned(),
        };
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(bad)?;
        let (digits, unit) = trimmed.split_at(split);
        let unit_ms: u64 = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let count: u64 = digits.parse().map_err(|_| bad())?;
        let ms = count
            .checked_mul(unit_ms)
            .filter(|ms| *ms > 0)
            .ok_or_else(bad)?;
        Ok(Ttl {
            ms,
            text: trimmed.to_owned(),
        })
    }
}

/// A problem in the plugin's config table; the message names the key and what happens now.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The relay handed over text that is not JSON (a relay bug, but never a trap).
    #[error("the config is not valid JSON ({0}); using the defaults (ttl = \"{DEFAULT_TTL}\")")]
    Json(String),
    /// The config is JSON but not a table.
    #[error("the config is {found}, not a table; using the defaults (ttl = \"{DEFAULT_TTL}\")")]
    NotATable {
        /// What it is instead.
        found: &'static str,
    },
    /// `ttl` is not a string.
    #[error("ttl: expected a duration such as \"30d\", found {found}; using \"{DEFAULT_TTL}\"")]
    TtlNotAString {
        /// What it holds instead.
        found: &'static str,
    },
    /// `ttl` is not a duration.
    #[error(
        "ttl: {text:?} is not a duration; expected a whole number above 0 and a unit s, m, h or d, such as \"12h\" or \"30d\"; using \"{DEFAULT_TTL}\""
    )]
    Ttl {
        /// The value as written.
        text: String,
    },
    /// `extra_codes` is not a list.
    #[error("extra_codes: expected a list such as [\"5.7.1\"], found {found}; ignored")]
    CodesNotAList {
        /// What it is instead.
        found: &'static str,
    },
    /// An `extra_codes` entry is not an enhanced status code.
    #[error("extra_codes: {found} is not an enhanced status code such as \"5.7.1\"; ignored")]
    NotACode {
        /// The entry as JSON.
        found: String,
    },
    /// An `extra_codes` entry is a temporary (4.x.x) or success code.
    #[error(
        "extra_codes: {code} is not a permanent failure (5.x.x) and can never suppress; ignored"
    )]
    CodeNotPermanent {
        /// The code.
        code: String,
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

    #[test]
    fn the_documented_table_parses_without_errors() {
        let (config, errors) =
            Config::from_json(r#"{"ttl": "7d", "extra_codes": ["5.7.1", "5.4.1", "5.7.1"]}"#);
        assert_eq!(errors, []);
        assert_eq!(config.ttl.as_ms(), 7 * 86_400_000);
        assert_eq!(config.ttl.to_string(), "7d");
        let codes: Vec<String> = config.extra_codes.iter().map(ToString::to_string).collect();
        assert_eq!(codes, ["5.7.1", "5.4.1"]);
    }

    #[test]
    fn an_empty_table_means_thirty_days_and_no_extra_codes() {
        let (config, errors) = Config::from_json("{}");
        assert_eq!(errors, []);
        assert_eq!(config.ttl.as_ms(), 30 * 86_400_000);
        assert!(config.extra_codes.is_empty());
    }

    #[test]
    fn every_unit_parses() {
        let ms = |text: &str| text.parse::<Ttl>().map(|ttl| ttl.as_ms());
        assert_eq!(ms("90s"), Ok(90_000));
        assert_eq!(ms("15m"), Ok(900_000));
        assert_eq!(ms("12h"), Ok(43_200_000));
        assert_eq!(ms("1d"), Ok(86_400_000));
        for bad in [
            "",
            "30",
            "d",
            "0d",
            "1w",
            "-1d",
            "1.5d",
            "99999999999999999999d",
        ] {
            assert!(ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_entries_keep_the_defaults_and_are_reported() {
        let (config, errors) = Config::from_json(
            r#"{"ttl": "a month", "extra_codes": ["5.7.1", "4.2.2", "550", 5], "tll": "1d"}"#,
        );
        assert_eq!(config.ttl, Ttl::default());
        assert_eq!(config.extra_codes.len(), 1);
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 5, "{messages:#?}");
        let mentions = |needle: &str| messages.iter().any(|m| m.contains(needle));
        assert!(
            mentions("ttl: \"a month\" is not a duration"),
            "{messages:#?}"
        );
        assert!(
            mentions("4.2.2 is not a permanent failure"),
            "{messages:#?}"
        );
        assert!(
            mentions("\"550\" is not an enhanced status code"),
            "{messages:#?}"
        );
        assert!(
            mentions("5 is not an enhanced status code"),
            "{messages:#?}"
        );
        assert!(mentions("unknown key \"tll\""), "{messages:#?}");
    }

    #[test]
    fn config_that_is_not_a_table_keeps_the_defaults() {
        for text in ["[]", "ttl = 30d", ""] {
            let (config, errors) = Config::from_json(text);
            assert_eq!(config, Config::default());
            assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
        }
    }
}
