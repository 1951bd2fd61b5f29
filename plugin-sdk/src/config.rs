//! Reading a plugin's config table: durations, rates, domains, and getters whose errors name the key.
//!
//! The relay hands a plugin its `[plugins.NAME]` table as JSON ([`crate::host::config`]). For a
//! table that should be all or nothing, `serde` with `deny_unknown_fields` is enough
//! ([`crate::host::config_as`]). This module is for the other kind: a table read key by key,
//! where one bad entry is reported and only what it concerns falls back, so bad config never
//! stops mail. It also holds the value types operators write in every plugin's table, so they
//! mean the same thing and fail with the same words everywhere:
//!
//! - [`TimeSpan`] (and [`parse_duration`]): `"30s"`, `"5m"`, `"4h"`, `"30d"`;
//! - [`Rate`]: `"100/1h"`, a count per window, as [`crate::host::throttle`] takes it;
//! - [`normalize_domain`]: how domains are compared;
//! - [`ConfigTable`] and [`ConfigValue`]: typed reads whose [`ConfigError`] names the key and
//!   what was found (`per_client_ip: expected a rate such as "100/1h", found a number`);
//! - [`Problems`]: collects those errors, each with what happens instead, for the log;
//! - [`load`]: runs your parser on the host's table and logs its problems once.
//!
//! ```
//! use plugin_sdk::config::{ConfigError, ConfigTable, ConfigValue, Problems, Rate, TimeSpan};
//!
//! struct Settings {
//!     ttl: TimeSpan,
//!     per_user: Option<Rate>,
//! }
//!
//! fn settings(json: &str) -> (Settings, Vec<ConfigError>) {
//!     let mut settings = Settings { ttl: TimeSpan::days(30), per_user: None };
//!     let mut problems = Problems::default();
//!     let Some(table) = problems.check(ConfigTable::parse(json), "using the defaults") else {
//!         return (settings, problems.into_vec());
//!     };
//!     let ttl = table.read("ttl", ConfigValue::as_time_span);
//!     if let Some(ttl) = problems.check(ttl, "using \"30d\"").flatten() {
//!         settings.ttl = ttl;
//!     }
//!     settings.per_user = problems
//!         .check(table.read("per_user", ConfigValue::as_rate), "this limit is off")
//!         .flatten();
//!     problems.extend(table.unknown_keys(&["ttl", "per_user"]), "ignored");
//!     (settings, problems.into_vec())
//! }
//!
//! let (settings, errors) = settings(r#"{"ttl": "5x", "per_user": "100/1h", "per_usr": 1}"#);
//! assert_eq!(settings.ttl.to_string(), "30d");
//! assert_eq!(settings.per_user.map(|rate| rate.count()), Some(100));
//! let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
//! assert_eq!(
//!     messages,
//!     [
//!         r#"ttl: "5x" is not a duration (e.g. "30s", "5m", "4h", "30d"); using "30d""#,
//!         r#"unknown key "per_usr" (known: ttl, per_user); ignored"#,
//!     ]
//! );
//! ```

use std::fmt;
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value};

/// The examples every duration error shows.
const DURATION_EXAMPLES: &str = r#"(e.g. "30s", "5m", "4h", "30d")"#;

/// Parses a duration as operators write it: a whole number above zero and a unit `s`, `m`,
/// `h` or `d` (`"30s"`, `"5m"`, `"4h"`, `"30d"`), with spaces around allowed.
///
/// The same as `text.parse::<TimeSpan>()` then [`TimeSpan::as_duration`]; keep the
/// [`TimeSpan`] instead when you want to show the value as the operator wrote it.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    text.parse::<TimeSpan>().map(|span| span.as_duration())
}

/// A unit a [`TimeSpan`] is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    /// `s`
    Seconds,
    /// `m`
    Minutes,
    /// `h`
    Hours,
    /// `d`, 24 hours (the relay's clock is UTC and has no daylight saving).
    Days,
}

impl TimeUnit {
    /// The unit for a suffix; units are lower case only, so `"5M"` is not five minutes (nor
    /// five months).
    fn from_suffix(suffix: &str) -> Option<TimeUnit> {
        match suffix {
            "s" => Some(TimeUnit::Seconds),
            "m" => Some(TimeUnit::Minutes),
            "h" => Some(TimeUnit::Hours),
            "d" => Some(TimeUnit::Days),
            _ => None,
        }
    }

    /// The suffix the unit is written with.
    pub fn suffix(self) -> &'static str {
        match self {
            TimeUnit::Seconds => "s",
            TimeUnit::Minutes => "m",
            TimeUnit::Hours => "h",
            TimeUnit::Days => "d",
        }
    }

    /// One unit in milliseconds.
    pub fn ms(self) -> u64 {
        match self {
            TimeUnit::Seconds => 1_000,
            TimeUnit::Minutes => 60_000,
            TimeUnit::Hours => 3_600_000,
            TimeUnit::Days => 86_400_000,
        }
    }
}

/// A length of time as written in config: a whole number and a [`TimeUnit`], e.g. `"30d"`.
///
/// It keeps the unit, so it shows as the operator wrote it (`"120m"` stays `120m`, not `2h`).
/// Parsed spans are never zero and always fit in a `u64` of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeSpan {
    count: u64,
    unit: TimeUnit,
}

impl TimeSpan {
    /// `count` of `unit`. A `u32` count cannot overflow the milliseconds; a count of 0 gives an
    /// empty span, which parsing never does.
    pub const fn new(count: u32, unit: TimeUnit) -> TimeSpan {
        TimeSpan {
            count: count as u64,
            unit,
        }
    }

    /// `count` seconds.
    pub const fn seconds(count: u32) -> TimeSpan {
        TimeSpan::new(count, TimeUnit::Seconds)
    }

    /// `count` minutes.
    pub const fn minutes(count: u32) -> TimeSpan {
        TimeSpan::new(count, TimeUnit::Minutes)
    }

    /// `count` hours.
    pub const fn hours(count: u32) -> TimeSpan {
        TimeSpan::new(count, TimeUnit::Hours)
    }

    /// `count` days.
    pub const fn days(count: u32) -> TimeSpan {
        TimeSpan::new(count, TimeUnit::Days)
    }

    /// The number before the unit.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The unit.
    pub fn unit(&self) -> TimeUnit {
        self.unit
    }

    /// The length in milliseconds, as the host API takes it (`kv_set`, `throttle`, ...).
    pub fn as_ms(&self) -> u64 {
        // Parsing checks the product and `new` takes a u32, so this never saturates.
        self.count.saturating_mul(self.unit.ms())
    }

    /// The length as a [`Duration`].
    pub fn as_duration(&self) -> Duration {
        Duration::from_millis(self.as_ms())
    }
}

impl fmt::Display for TimeSpan {
    /// The span as written, without spaces or leading zeros: `30d`, `90s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.count, self.unit.suffix())
    }
}

impl FromStr for TimeSpan {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let not_a_duration = || DurationError::NotADuration(trimmed.to_owned());
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(not_a_duration)?;
        let (digits, suffix) = trimmed.split_at(digits_end);
        let unit = TimeUnit::from_suffix(suffix).ok_or_else(not_a_duration)?;
        if digits.is_empty() {
            return Err(not_a_duration());
        }
        let count: u64 = digits
            .parse()
            .map_err(|_| DurationError::TooLong(trimmed.to_owned()))?;
        if count == 0 {
            return Err(DurationError::Zero(trimmed.to_owned()));
        }
        if count.checked_mul(unit.ms()).is_none() {
            return Err(DurationError::TooLong(trimmed.to_owned()));
        }
        Ok(TimeSpan { count, unit })
    }
}

/// Why a duration could not be parsed. Each message quotes the text and shows examples.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a whole number followed by `s`, `m`, `h` or `d`.
    #[error("{0:?} is not a duration {DURATION_EXAMPLES}")]
    NotADuration(String),
    /// A duration of zero.
    #[error("{0:?} is zero; a duration is at least \"1s\"")]
    Zero(String),
    /// Longer than a `u64` of milliseconds (about 584 million years).
    #[error("{0:?} is too long a duration")]
    TooLong(String),
}

/// A limit of so many events per window, written `"<count>/<window>"`, e.g. `"100/1h"`.
///
/// It is what [`crate::host::throttle`] takes: `throttle(key, rate.count(),
/// rate.window().as_ms())`, a burst of up to `count` events, then one every `window / count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    count: u32,
    window: TimeSpan,
}

impl Rate {
    /// `count` events per `window`.
    pub const fn new(count: NonZeroU32, window: TimeSpan) -> Rate {
        Rate {
            count: count.get(),
            window,
        }
    }

    /// How many events the window allows (at least 1).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The window.
    pub fn window(&self) -> TimeSpan {
        self.window
    }
}

impl fmt::Display for Rate {
    /// The rate as written, normalised: `100/1h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.window)
    }
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (count, window) = text
            .split_once('/')
            .ok_or_else(|| RateError::NotARate(text.trim().to_owned()))?;
        let count = count.trim();
        // All digits: `u32::from_str` would also take a leading `+`.
        let parsed = if count.bytes().all(|b| b.is_ascii_digit()) {
            count.parse::<u32>().ok().filter(|count| *count > 0)
        } else {
            None
        };
        let count = parsed.ok_or_else(|| RateError::Count {
            text: text.trim().to_owned(),
            count: count.to_owned(),
        })?;
        let window = window
            .parse::<TimeSpan>()
            .map_err(|problem| RateError::Window {
                text: text.trim().to_owned(),
                problem,
            })?;
        Ok(Rate { count, window })
    }
}

/// Why a rate could not be parsed. Each message quotes the rate as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// No `/` between count and window.
    #[error("{0:?} is not a rate; expected \"<count>/<window>\" such as \"100/1h\"")]
    NotARate(String),
    /// The count is not a whole number from 1 to `u32::MAX`.
    #[error("{text:?}: the count {count:?} is not a whole number from 1 to 4294967295")]
    Count {
        /// The whole rate as written.
        text: String,
        /// The part before the `/`.
        count: String,
    },
    /// The window is not a duration.
    #[error("{text:?}: {problem}")]
    Window {
        /// The whole rate as written.
        text: String,
        /// What is wrong with the part after the `/`.
        problem: DurationError,
    },
}

/// A domain as plugins compare it: trimmed, lower case, without the trailing root dot.
///
/// `"Example.COM."` and `"example.com"` are one domain. Subdomains stay distinct: this does
/// not make `news.example.com` match `example.com`.
pub fn normalize_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_lowercase()
}

/// How a JSON value is named in messages: `"a number"`, `"a string"`, `"a table"`, ...
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// What is wrong with a config value, without saying where (a [`ConfigError`] adds the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The config text is not JSON (a relay bug, but never a reason to trap).
    #[error("the config is not valid JSON ({0})")]
    NotJson(String),
    /// The config is JSON but not a table.
    #[error("the config is {0}, not a table")]
    NotATable(&'static str),
    /// A value of the wrong kind or out of range.
    #[error("expected {expected}, found {found}")]
    Unexpected {
        /// What the key takes, e.g. `a rate such as "100/1h"`.
        expected: String,
        /// What it holds: its kind (`a number`), or the value itself when the kind was right
        /// but the value was not (`200`).
        found: String,
    },
    /// A string that is not a duration.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// A string that is not a rate.
    #[error(transparent)]
    Rate(#[from] RateError),
    /// A key the plugin does not know, probably a typo.
    #[error("unknown key {key:?} (known: {known})")]
    UnknownKey {
        /// The key.
        key: String,
        /// The keys the table takes, comma-separated.
        known: String,
    },
    /// Anything else, in the plugin's words (see [`ConfigValue::invalid`]).
    #[error("{0}")]
    Invalid(String),
}

/// A problem in a plugin's config table: where (the key), what, and what happens instead.
///
/// Shown as `key: problem; fallback`, e.g. `ttl: "5x" is not a duration (e.g. "30s", "5m",
/// "4h", "30d"); using "30d"`. Nested keys are written as in TOML (`sender_domains."a.example"`);
/// problems with the whole table or an unknown top-level key have no key in front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    key: String,
    problem: ValueError,
    fallback: Option<String>,
}

impl ConfigError {
    /// A problem with the value at `key` (a path such as `sender_domains."a.example"`; empty
    /// for the whole table).
    pub fn new(key: impl Into<String>, problem: impl Into<ValueError>) -> ConfigError {
        ConfigError {
            key: key.into(),
            problem: problem.into(),
            fallback: None,
        }
    }

    /// The same error saying what happens instead (`"this limit is off"`, `"using \"30d\""`),
    /// shown after the problem.
    #[must_use]
    pub fn with_fallback(mut self, fallback: impl Into<String>) -> ConfigError {
        self.fallback = Some(fallback.into());
        self
    }

    /// The key, as a path; empty for the whole table.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong.
    pub fn problem(&self) -> &ValueError {
        &self.problem
    }

    /// What happens instead, if the plugin said.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.problem)?;
        if let Some(fallback) = &self.fallback {
            write!(f, "; {fallback}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The path of `key` inside the table at `parent`, written as in TOML: a bare key when it is
/// one (`per_user`, `warmup.mta2`), else quoted (`sender_domains."bulk.example"`).
fn child_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (parent.is_empty(), bare) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{key:?}"),
        (false, true) => format!("{parent}.{key}"),
        (false, false) => format!("{parent}.{key:?}"),
    }
}

/// A config table: the plugin's whole `[plugins.NAME]` table, or one nested in it.
///
/// Reads return `Ok(None)` for an absent key and a [`ConfigError`] naming the key for a bad
/// one; nothing here panics, whatever the JSON holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigTable {
    path: String,
    entries: Map<String, Value>,
}

impl ConfigTable {
    /// Parses the JSON text the relay hands over. Text that is not JSON, or JSON that is not a
    /// table, is an error without a key.
    pub fn parse(json: &str) -> Result<ConfigTable, ConfigError> {
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(entries)) => Ok(ConfigTable {
                path: String::new(),
                entries,
            }),
            Ok(other) => Err(ConfigError::new("", ValueError::NotATable(kind_of(&other)))),
            Err(err) => Err(ConfigError::new("", ValueError::NotJson(err.to_string()))),
        }
    }

    /// The plugin's own table from the relay, [`crate::host::config`], parsed.
    pub fn from_host() -> Result<ConfigTable, ConfigError> {
        ConfigTable::parse(&crate::host::config())
    }

    /// Where this table is: empty for the plugin's table, else its path
    /// (`sender_domains`, `warmup."192.0.2.1"`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True when the table has no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value at `key`, if present.
    pub fn get(&self, key: &str) -> Option<ConfigValue<'_>> {
        self.entries
            .get_key_value(key)
            .map(|(key, value)| ConfigValue {
                path: child_path(&self.path, key),
                value,
            })
    }

    /// The value at `key` read with `read` (e.g. [`ConfigValue::as_rate`]); `Ok(None)` when
    /// the key is absent.
    pub fn read<'t, T>(
        &'t self,
        key: &str,
        read: impl FnOnce(&ConfigValue<'t>) -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        self.get(key).as_ref().map(read).transpose()
    }

    /// Every entry, in key order, for tables whose keys are data (domains, addresses).
    pub fn entries(&self) -> impl Iterator<Item = (&str, ConfigValue<'_>)> {
        self.entries.iter().map(|(key, value)| {
            let value = ConfigValue {
                path: child_path(&self.path, key),
                value,
            };
            (key.as_str(), value)
        })
    }

    /// An error for every key not in `known`, listing the known ones: typos should not be
    /// silent.
    pub fn unknown_keys(&self, known: &[&str]) -> Vec<ConfigError> {
        self.entries
            .keys()
            .filter(|key| !known.contains(&key.as_str()))
            .map(|key| {
                let problem = ValueError::UnknownKey {
                    key: key.clone(),
                    known: known.join(", "),
                };
                ConfigError::new(self.path.clone(), problem)
            })
            .collect()
    }
}

/// One value of a config table and where it is, for reads whose errors name the key.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigValue<'a> {
    path: String,
    value: &'a Value,
}

impl<'a> ConfigValue<'a> {
    /// Where the value is, e.g. `per_user` or `sender_domains."bulk.example"`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The value as JSON.
    pub fn json(&self) -> &'a Value {
        self.value
    }

    /// The kind of value it is, as named in messages ([`kind_of`]).
    pub fn kind(&self) -> &'static str {
        kind_of(self.value)
    }

    /// The error for a value of the wrong kind: `expected {expected}, found a number`.
    pub fn expected(&self, expected: &str) -> ConfigError {
        self.error(ValueError::Unexpected {
            expected: expected.to_owned(),
            found: self.kind().to_owned(),
        })
    }

    /// An error about this value in the plugin's own words, after the key:
    /// `value.invalid(format!("{} is not an enhanced status code", value.json()))`.
    pub fn invalid(&self, problem: impl Into<String>) -> ConfigError {
        self.error(ValueError::Invalid(problem.into()))
    }

    /// An error about this value.
    pub fn error(&self, problem: impl Into<ValueError>) -> ConfigError {
        ConfigError::new(self.path.clone(), problem)
    }

    /// A string.
    pub fn as_str(&self) -> Result<&'a str, ConfigError> {
        self.value.as_str().ok_or_else(|| self.expected("a string"))
    }

    /// `true` or `false`.
    pub fn as_bool(&self) -> Result<bool, ConfigError> {
        self.value
            .as_bool()
            .ok_or_else(|| self.expected("true or false"))
    }

    /// A whole number in `range`, as the type of the range (`as_integer(1u8..=128)` is a `u8`).
    pub fn as_integer<T>(&self, range: RangeInclusive<T>) -> Result<T, ConfigError>
    where
        T: TryFrom<u64> + PartialOrd + fmt::Display,
    {
        let expected = format!("a whole number from {} to {}", range.start(), range.end());
        let number = self
            .value
            .as_u64()
            .and_then(|number| T::try_from(number).ok())
            .filter(|number| range.contains(number));
        number.ok_or_else(|| {
            let found = match self.value {
                // The right kind but not a whole number in range: show it.
                Value::Number(number) => number.to_string(),
                other => kind_of(other).to_owned(),
            };
            self.error(ValueError::Unexpected { expected, found })
        })
    }

    /// A duration such as `"30d"` ([`TimeSpan`]).
    pub fn as_time_span(&self) -> Result<TimeSpan, ConfigError> {
        let text = self
            .value
            .as_str()
            .ok_or_else(|| self.expected(&format!("a duration {DURATION_EXAMPLES}")))?;
        text.parse()
            .map_err(|problem: DurationError| self.error(problem))
    }

    /// A duration such as `"30d"`, as a [`Duration`].
    pub fn as_duration(&self) -> Result<Duration, ConfigError> {
        self.as_time_span().map(|span| span.as_duration())
    }

    /// A rate such as `"100/1h"` ([`Rate`]).
    pub fn as_rate(&self) -> Result<Rate, ConfigError> {
        let text = self
            .value
            .as_str()
            .ok_or_else(|| self.expected("a rate such as \"100/1h\""))?;
        text.parse()
            .map_err(|problem: RateError| self.error(problem))
    }

    /// A nested table.
    pub fn as_table(&self) -> Result<ConfigTable, ConfigError> {
        match self.value {
            Value::Object(entries) => Ok(ConfigTable {
                path: self.path.clone(),
                entries: entries.clone(),
            }),
            _ => Err(self.expected("a table")),
        }
    }

    /// A list; its items carry the list's key.
    pub fn as_list(&self) -> Result<Vec<ConfigValue<'a>>, ConfigError> {
        let items = self
            .value
            .as_array()
            .ok_or_else(|| self.expected("a list"))?;
        Ok(items
            .iter()
            .map(|value| ConfigValue {
                path: self.path.clone(),
                value,
            })
            .collect())
    }
}

/// The problems found while reading a table leniently, each with what happens instead.
///
/// [`check`](Problems::check) turns a read into an `Option`, keeping the error: the caller
/// keeps its default on `None`, and the plugin logs the list once ([`log_errors`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems {
    errors: Vec<ConfigError>,
}

impl Problems {
    /// The value of `result`, or `None` after keeping its error with `fallback`, what happens
    /// instead (`"this limit is off"`).
    pub fn check<T>(&mut self, result: Result<T, ConfigError>, fallback: &str) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.errors.push(err.with_fallback(fallback));
                None
            }
        }
    }

    /// Keeps `error` as it is.
    pub fn push(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    /// Keeps every error of `errors` with `fallback`, e.g. the [`ConfigTable::unknown_keys`]
    /// with `"ignored"`.
    pub fn extend(&mut self, errors: impl IntoIterator<Item = ConfigError>, fallback: &str) {
        self.errors
            .extend(errors.into_iter().map(|err| err.with_fallback(fallback)));
    }

    /// True when nothing was wrong.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The errors, in the order they were found.
    pub fn into_vec(self) -> Vec<ConfigError> {
        self.errors
    }
}

/// Reads the plugin's table from the host with `parse` (which returns the settings and the
/// problems it found) and logs the problems ([`log_errors`]). Call it once per instance and
/// keep the result:
/// `self.config.get_or_init(|| plugin_sdk::config::load(Settings::from_json))`.
pub fn load<T>(parse: impl FnOnce(&str) -> (T, Vec<ConfigError>)) -> T {
    let (settings, errors) = parse(&crate::host::config());
    log_errors(&errors);
    settings
}

/// Logs each error at error level as `config: <error>`, the form the shipped plugins use.
/// Call it once per instance, where the parsed config is cached.
pub fn log_errors(errors: &[ConfigError]) {
    for err in errors {
        crate::host::log_error(&format!("config: {err}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` parsed; fails the test when it does not parse.
    fn parsed<T: FromStr<Err: fmt::Display>>(text: &str) -> T {
        text.parse()
            .unwrap_or_else(|err| panic!("{text:?} should parse: {err}"))
    }

    fn span(text: &str) -> TimeSpan {
        parsed(text)
    }

    fn rate(text: &str) -> Rate {
        parsed(text)
    }

    fn table(json: &str) -> ConfigTable {
        ConfigTable::parse(json).unwrap_or_else(|err| panic!("{json} should parse: {err}"))
    }

    /// The errors as they are logged.
    fn messages(errors: &[ConfigError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_unit_parses_to_milliseconds() {
        assert_eq!(span("90s").as_ms(), 90_000);
        assert_eq!(span("15m").as_ms(), 900_000);
        assert_eq!(span("12h").as_ms(), 43_200_000);
        assert_eq!(span("2d").as_ms(), 172_800_000);
        assert_eq!(parse_duration(" 5m "), Ok(Duration::from_secs(300)));
        assert_eq!(span("30d"), TimeSpan::days(30));
        assert_eq!(span("30d").as_duration(), Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn a_span_shows_as_written_without_spaces_or_leading_zeros() {
        assert_eq!(span(" 120m ").to_string(), "120m");
        assert_eq!(span("007d").to_string(), "7d");
        assert_eq!(span("7d").count(), 7);
        assert_eq!(span("7d").unit(), TimeUnit::Days);
    }

    #[test]
    fn malformed_durations_say_what_is_wrong() {
        let err = |text: &str| match text.parse::<TimeSpan>() {
            Ok(span) => panic!("{text:?} parsed as {span}"),
            Err(err) => err,
        };
        for bad in [
            "", "30", "d", "1w", "-1d", "+1d", "1.5d", "5 m", "5M", "1d2h",
        ] {
            assert!(
                matches!(err(bad), DurationError::NotADuration(_)),
                "{bad:?}"
            );
        }
        assert!(matches!(err("0d"), DurationError::Zero(_)));
        assert!(matches!(err("0s"), DurationError::Zero(_)));
        assert!(matches!(
            err("99999999999999999999d"),
            DurationError::TooLong(_)
        ));
        assert!(matches!(
            err("99999999999999999d"),
            DurationError::TooLong(_)
        ));
        assert_eq!(
            err("5x").to_string(),
            r#""5x" is not a duration (e.g. "30s", "5m", "4h", "30d")"#
        );
        assert_eq!(
            err(" 0m ").to_string(),
            r#""0m" is zero; a duration is at least "1s""#
        );
    }

    #[test]
    fn a_rate_is_a_count_per_window_and_reads_back() {
        let parsed = rate(" 1000 / 1h ");
        assert_eq!(parsed.count(), 1000);
        assert_eq!(parsed.window(), TimeSpan::hours(1));
        assert_eq!(parsed.window().as_ms(), 3_600_000);
        assert_eq!(parsed.to_string(), "1000/1h");
        assert_eq!(rate(&parsed.to_string()), parsed);
        assert_eq!(rate("5/30s").window().as_ms(), 30_000);
        assert_eq!(rate("5/2d").window().as_ms(), 172_800_000);
        assert_eq!(rate("4294967295/1s").count(), u32::MAX);
        let one = NonZeroU32::MIN;
        assert_eq!(Rate::new(one, TimeSpan::minutes(1)), rate("1/1m"));
    }

    #[test]
    fn malformed_rates_say_what_is_wrong() {
        let err = |text: &str| match text.parse::<Rate>() {
            Ok(rate) => panic!("{text:?} parsed as {rate}"),
            Err(err) => err,
        };
        assert!(matches!(err("100"), RateError::NotARate(_)));
        assert!(matches!(err("0/1h"), RateError::Count { .. }));
        assert!(matches!(err("-5/1h"), RateError::Count { .. }));
        assert!(matches!(err("+5/1h"), RateError::Count { .. }));
        assert!(matches!(err("99999999999/1h"), RateError::Count { .. }));
        assert!(matches!(err("ten/1h"), RateError::Count { .. }));
        assert!(matches!(err("/1h"), RateError::Count { .. }));
        let window = |text: &str| match err(text) {
            RateError::Window { problem, .. } => problem,
            other => panic!("{text:?}: expected a window error, got {other}"),
        };
        assert!(matches!(window("5/1w"), DurationError::NotADuration(_)));
        assert!(matches!(window("5/h"), DurationError::NotADuration(_)));
        assert!(matches!(window("5/10"), DurationError::NotADuration(_)));
        assert!(matches!(window("5/1h/2"), DurationError::NotADuration(_)));
        assert!(matches!(window("5/0m"), DurationError::Zero(_)));
        assert!(matches!(
            window("5/99999999999999999d"),
            DurationError::TooLong(_)
        ));
        assert_eq!(
            err("100/1w").to_string(),
            r#""100/1w": "1w" is not a duration (e.g. "30s", "5m", "4h", "30d")"#
        );
        assert_eq!(
            err("0/1h").to_string(),
            r#""0/1h": the count "0" is not a whole number from 1 to 4294967295"#
        );
        assert_eq!(
            err("100").to_string(),
            r#""100" is not a rate; expected "<count>/<window>" such as "100/1h""#
        );
    }

    #[test]
    fn domains_compare_in_lower_case_without_the_root_dot() {
        assert_eq!(normalize_domain(" Example.COM. "), "example.com");
        assert_eq!(normalize_domain("ÄRGER.example"), "ärger.example");
        assert_eq!(normalize_domain("news.example.com"), "news.example.com");
        assert_eq!(normalize_domain("."), "");
    }

    #[test]
    fn every_json_kind_has_a_name() {
        let kinds: Vec<&str> = [
            Value::Null,
            Value::Bool(true),
            serde_json::json!(1.5),
            serde_json::json!("x"),
            serde_json::json!([]),
            serde_json::json!({}),
        ]
        .iter()
        .map(kind_of)
        .collect();
        assert_eq!(
            kinds,
            [
                "nothing",
                "a boolean",
                "a number",
                "a string",
                "a list",
                "a table"
            ]
        );
    }

    #[test]
    fn config_that_is_not_a_json_table_is_an_error_without_a_key() {
        for (text, needle) in [
            ("[1, 2]", "the config is a list, not a table"),
            ("\"x\"", "the config is a string, not a table"),
            ("per_user = 1", "the config is not valid JSON ("),
            ("", "the config is not valid JSON ("),
        ] {
            let err = ConfigTable::parse(text).expect_err(text);
            assert_eq!(err.key(), "");
            assert!(err.to_string().starts_with(needle), "{text:?}: {err}");
        }
        assert!(table("{}").is_empty());
    }

    #[test]
    fn reads_name_the_key_and_what_was_found() {
        let table = table(
            r#"{"per_user": "100/1h", "per_client_ip": 500, "ttl": "7d", "bad_ttl": true,
                "prefix": 64, "big_prefix": 200, "text_prefix": "64", "on": false,
                "name": "x", "codes": ["5.7.1", 5]}"#,
        );
        let message = |err: ConfigError| err.to_string();
        assert_eq!(
            table.read("per_user", ConfigValue::as_rate),
            Ok(Some(rate("100/1h")))
        );
        assert_eq!(table.read("absent", ConfigValue::as_rate), Ok(None));
        assert_eq!(
            table
                .read("per_client_ip", ConfigValue::as_rate)
                .map_err(message),
            Err(r#"per_client_ip: expected a rate such as "100/1h", found a number"#.to_owned())
        );
        assert_eq!(
            table.read("ttl", ConfigValue::as_duration),
            Ok(Some(Duration::from_secs(7 * 86_400)))
        );
        assert_eq!(
            table
                .read("bad_ttl", ConfigValue::as_time_span)
                .map_err(message),
            Err(
                r#"bad_ttl: expected a duration (e.g. "30s", "5m", "4h", "30d"), found a boolean"#
                    .to_owned()
            )
        );
        assert_eq!(
            table
                .read("name", ConfigValue::as_time_span)
                .map_err(message),
            Err(r#"name: "x" is not a duration (e.g. "30s", "5m", "4h", "30d")"#.to_owned())
        );
        let prefix = |v: &ConfigValue<'_>| v.as_integer(1u8..=128);
        assert_eq!(table.read("prefix", prefix), Ok(Some(64)));
        assert_eq!(
            table.read("big_prefix", prefix).map_err(message),
            Err("big_prefix: expected a whole number from 1 to 128, found 200".to_owned())
        );
        assert_eq!(
            table.read("big_prefix", |v| v.as_integer(0u64..=1000)),
            Ok(Some(200))
        );
        let negative = self::table(r#"{"n": -1, "f": 1.5, "huge": 300}"#);
        for (key, found) in [("n", "-1"), ("f", "1.5"), ("huge", "300")] {
            let err = negative
                .read(key, |v| v.as_integer(0u8..=255))
                .map_err(message);
            assert_eq!(
                err,
                Err(format!(
                    "{key}: expected a whole number from 0 to 255, found {found}"
                ))
            );
        }
        assert_eq!(
            table.read("text_prefix", prefix).map_err(message),
            Err("text_prefix: expected a whole number from 1 to 128, found a string".to_owned())
        );
        assert_eq!(table.read("on", ConfigValue::as_bool), Ok(Some(false)));
        assert_eq!(table.read("name", ConfigValue::as_str), Ok(Some("x")));
        assert_eq!(
            table.read("prefix", ConfigValue::as_str).map_err(message),
            Err("prefix: expected a string, found a number".to_owned())
        );
        assert_eq!(
            table.read("name", ConfigValue::as_table).map_err(message),
            Err("name: expected a table, found a string".to_owned())
        );
        let codes = table.read("codes", ConfigValue::as_list);
        let codes = codes.ok().flatten().unwrap_or_default();
        assert_eq!(codes.len(), 2);
        assert_eq!(codes[1].path(), "codes");
        assert_eq!(
            codes[1]
                .invalid(format!("{} is not a code", codes[1].json()))
                .to_string(),
            "codes: 5 is not a code"
        );
    }

    #[test]
    fn nested_keys_are_written_as_in_toml() {
        let table = table(
            r#"{"sender_domains": {"bulk.example": 5, "localhost": "1/1s", "a\"b": 1},
                "warmup": {"192.0.2.1": {"start": 1, "daly": []}}}"#,
        );
        let domains = table
            .read("sender_domains", ConfigValue::as_table)
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(domains.path(), "sender_domains");
        let paths: Vec<String> = domains
            .entries()
            .map(|(_, value)| value.path().to_owned())
            .collect();
        assert_eq!(
            paths,
            [
                r#"sender_domains."a\"b""#,
                r#"sender_domains."bulk.example""#,
                "sender_domains.localhost",
            ]
        );
        let err = domains
            .read("bulk.example", ConfigValue::as_rate)
            .expect_err("a number is not a rate");
        assert_eq!(err.key(), r#"sender_domains."bulk.example""#);

        let warmup = table
            .get("warmup")
            .and_then(|w| w.as_table().ok())
            .unwrap_or_default();
        let warmup = warmup
            .get("192.0.2.1")
            .and_then(|entry| entry.as_table().ok())
            .unwrap_or_default();
        assert_eq!(
            warmup.get("start").map(|v| v.path().to_owned()).as_deref(),
            Some(r#"warmup."192.0.2.1".start"#)
        );
        assert_eq!(
            messages(&warmup.unknown_keys(&["start", "daily"])),
            [r#"warmup."192.0.2.1": unknown key "daly" (known: start, daily)"#]
        );
    }

    #[test]
    fn unknown_keys_list_the_known_ones() {
        let table = table(r#"{"per_user": "1/1h", "per_ip": "1/1s", "tll": "1d"}"#);
        assert_eq!(
            messages(&table.unknown_keys(&["per_user", "ttl"])),
            [
                r#"unknown key "per_ip" (known: per_user, ttl)"#,
                r#"unknown key "tll" (known: per_user, ttl)"#,
            ]
        );
    }

    #[test]
    fn problems_keep_each_error_with_its_fallback() {
        let table = table(r#"{"per_user": 1, "ttl": "1d", "typo": 0}"#);
        let mut problems = Problems::default();
        let per_user = problems.check(table.read("per_user", ConfigValue::as_rate), "off");
        let ttl = problems.check(table.read("ttl", ConfigValue::as_time_span), "30d");
        problems.extend(table.unknown_keys(&["per_user", "ttl"]), "ignored");
        assert_eq!(per_user, None);
        assert_eq!(ttl, Some(Some(TimeSpan::days(1))));
        assert!(!problems.is_empty());
        let errors = problems.into_vec();
        assert_eq!(errors[0].fallback(), Some("off"));
        assert!(matches!(errors[0].problem(), ValueError::Unexpected { .. }));
        assert_eq!(
            messages(&errors),
            [
                r#"per_user: expected a rate such as "100/1h", found a number; off"#,
                r#"unknown key "typo" (known: per_user, ttl); ignored"#,
            ]
        );
    }

    #[test]
    fn load_parses_the_host_config_and_logs_each_problem() {
        use crate::testing::TestHost;
        use crate::types::Level;

        let host = TestHost::new().with_config(r#"{"a": 1, "b": 2}"#);
        let keys = load(|json| {
            let table = ConfigTable::parse(json).unwrap_or_default();
            let errors = table.unknown_keys(&["a"]);
            (table.entries().count(), errors)
        });
        assert_eq!(keys, 2);
        assert!(host.logged_at(Level::Error, r#"config: unknown key "b" (known: a)"#));
        assert_eq!(host.logs().len(), 1, "{:?}", host.logs());
    }

    #[test]
    fn errors_are_logged_once_each_at_error_level() {
        use crate::testing::TestHost;
        use crate::types::Level;

        let host = TestHost::new().with_config(r#"{"ttl": "5x"}"#);
        let table = ConfigTable::from_host().expect("a table");
        let mut problems = Problems::default();
        problems.check(
            table.read("ttl", ConfigValue::as_time_span),
            "using \"30d\"",
        );
        log_errors(&problems.into_vec());
        let logs = host.take_logs();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0].level, Level::Error);
        assert_eq!(
            logs[0].message,
            r#"config: ttl: "5x" is not a duration (e.g. "30s", "5m", "4h", "30d"); using "30d""#
        );
    }
}
