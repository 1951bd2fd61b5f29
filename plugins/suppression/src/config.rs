//! The `[plugins.suppression]` table, read key by key so one bad entry never turns the plugin off.

use plugin_sdk::config::{ConfigError, ConfigTable, ConfigValue, Problems, TimeSpan};

use crate::classify::EnhancedCode;

/// The keys the table may hold, for the unknown-key message.
const KNOWN_KEYS: &[&str] = &["ttl", "extra_codes"];

/// How long a suppression lasts when `ttl` is absent or bad.
pub const DEFAULT_TTL: TimeSpan = TimeSpan::days(30);

/// What happens to a bad `extra_codes` or entry, and to an unknown key.
const IGNORED: &str = "ignored";

/// The plugin's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How long a suppressed address stays suppressed (`ttl`).
    pub ttl: TimeSpan,
    /// Enhanced codes that suppress besides the invalid-recipient ones (`extra_codes`).
    pub extra_codes: Vec<EnhancedCode>,
}

impl Default for Config {
    /// What an empty table means: [`DEFAULT_TTL`] and no extra codes.
    fn default() -> Self {
        Config {
            ttl: DEFAULT_TTL,
            extra_codes: Vec::new(),
        }
    }
}

impl Config {
    /// Parses the config JSON the relay hands over. Never fails: every problem is returned
    /// beside the config, and the setting it concerns keeps its default.
    pub fn from_json(text: &str) -> (Config, Vec<ConfigError>) {
        let mut config = Config::default();
        let mut problems = Problems::default();
        let defaults = format!("using the defaults (ttl = \"{DEFAULT_TTL}\")");
        let Some(table) = problems.check(ConfigTable::parse(text), &defaults) else {
            return (config, problems.into_vec());
        };
        let ttl = table.read("ttl", ConfigValue::as_time_span);
        if let Some(ttl) = problems
            .check(ttl, &format!("using \"{DEFAULT_TTL}\""))
            .flatten()
        {
            config.ttl = ttl;
        }
        if let Some(value) = table.get("extra_codes") {
            config.extra_codes = extra_codes(&value, &mut problems);
        }
        problems.extend(table.unknown_keys(KNOWN_KEYS), IGNORED);
        (config, problems.into_vec())
    }
}

/// The `extra_codes` list; bad entries are reported and left out.
fn extra_codes(value: &ConfigValue<'_>, problems: &mut Problems) -> Vec<EnhancedCode> {
    let items = value
        .as_list()
        .map_err(|_| value.expected(r#"a list such as ["5.7.1"]"#));
    let Some(items) = problems.check(items, IGNORED) else {
        return Vec::new();
    };
    let mut codes = Vec::new();
    for item in items {
        let code = match item
            .as_str()
            .ok()
            .and_then(|text| text.parse::<EnhancedCode>().ok())
        {
            Some(code) if code.class == 5 => Ok(code),
            Some(code) => Err(item.invalid(format!(
                "{code} is not a permanent failure (5.x.x) and can never suppress"
            ))),
            None => Err(item.invalid(format!(
                "{} is not an enhanced status code such as \"5.7.1\"",
                item.json()
            ))),
        };
        if let Some(code) = problems.check(code, IGNORED) {
            if !codes.contains(&code) {
                codes.push(code);
            }
        }
    }
    codes
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
        let ttl = |text: &str| {
            let (config, errors) = Config::from_json(&format!(r#"{{"ttl": "{text}"}}"#));
            errors.is_empty().then_some(config.ttl.as_ms())
        };
        assert_eq!(ttl("90s"), Some(90_000));
        assert_eq!(ttl("15m"), Some(900_000));
        assert_eq!(ttl("12h"), Some(43_200_000));
        assert_eq!(ttl("1d"), Some(86_400_000));
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
            assert_eq!(ttl(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_entries_keep_the_defaults_and_are_reported() {
        let (config, errors) = Config::from_json(
            r#"{"ttl": "a month", "extra_codes": ["5.7.1", "4.2.2", "550", 5], "tll": "1d"}"#,
        );
        assert_eq!(config.ttl, DEFAULT_TTL);
        assert_eq!(config.extra_codes.len(), 1);
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 5, "{messages:#?}");
        let mentions = |needle: &str| messages.iter().any(|m| m.contains(needle));
        assert!(
            mentions(
                r#"ttl: "a month" is not a duration (e.g. "30s", "5m", "4h", "30d"); using "30d""#
            ),
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
