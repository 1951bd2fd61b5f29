//! Rates as operators write them: `"100/1h"`, a count of messages per time window.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A limit of so many events per window, written `"<count>/<window>"`, e.g. `"100/1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    limit: u32,
    window: Window,
}

impl Rate {
    /// A rate of `limit` events per `window`.
    pub fn new(limit: u32, window: Window) -> Self {
        Rate { limit, window }
    }

    /// How many events the window allows (at least 1).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window.
    pub fn window(&self) -> Window {
        self.window
    }
}

impl fmt::Display for Rate {
    /// `1000 per 1h`, the form used in replies and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {}", self.limit, self.window)
    }
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (count, window) = text
            .split_once('/')
            .ok_or_else(|| RateError::Shape(text.to_owned()))?;
        let count = count.trim();
        let limit = if count.bytes().all(|b| b.is_ascii_digit()) {
            count.parse::<u32>().ok().filter(|limit| *limit > 0)
        } else {
            None
        };
        let limit = limit.ok_or_else(|| RateError::Count {
            text: text.to_owned(),
            count: count.to_owned(),
        })?;
        let window = window
            .parse::<Window>()
            .map_err(|problem| RateError::Window {
                text: text.to_owned(),
                problem,
            })?;
        Ok(Rate { limit, window })
    }
}

/// Why a rate could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RateError {
    /// No `/` between count and window.
    #[error("{0:?} is not a rate; expected \"<count>/<window>\" such as \"100/1h\"")]
    Shape(String),
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
        problem: WindowError,
    },
}

/// A time window written `<N><unit>` with unit `s`, `m`, `h` or `d`, e.g. `"30s"` or `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    count: u64,
    unit: Unit,
    ms: u64,
}

impl Window {
    /// The window's length in milliseconds (at least 1000).
    pub fn as_ms(&self) -> u64 {
        self.ms
    }
}

impl fmt::Display for Window {
    /// The window as written, normalised: `1h`, `30s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.count, self.unit.suffix())
    }
}

impl FromStr for Window {
    type Err = WindowError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let shape = || WindowError::Shape(text.to_owned());
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(shape)?;
        let (digits, suffix) = trimmed.split_at(digits_end);
        let unit = Unit::from_suffix(suffix).ok_or_else(shape)?;
        if digits.is_empty() {
            return Err(shape());
        }
        let count: u64 = digits
            .parse()
            .map_err(|_| WindowError::TooLong(text.to_owned()))?;
        if count == 0 {
            return Err(WindowError::Zero(text.to_owned()));
        }
        let ms = count
            .checked_mul(unit.ms())
            .ok_or_else(|| WindowError::TooLong(text.to_owned()))?;
        Ok(Window { count, unit, ms })
    }
}

/// Why a window could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WindowError {
    /// Not a number followed by a unit.
    #[error(
        "{0:?} is not a window; expected a whole number and a unit s, m, h or d, such as \"30s\", \"10m\", \"1h\" or \"1d\""
    )]
    Shape(String),
    /// A window of zero length.
    #[error("{0:?} is an empty window; use at least 1s")]
    Zero(String),
    /// A window too long to count in milliseconds.
    #[error("{0:?} is too long a window")]
    TooLong(String),
}

/// The units a window may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Seconds,
    Minutes,
    Hours,
    Days,
}

impl Unit {
    fn from_suffix(suffix: &str) -> Option<Self> {
        match suffix {
            "s" => Some(Unit::Seconds),
            "m" => Some(Unit::Minutes),
            "h" => Some(Unit::Hours),
            "d" => Some(Unit::Days),
            _ => None,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Unit::Seconds => "s",
            Unit::Minutes => "m",
            Unit::Hours => "h",
            Unit::Days => "d",
        }
    }

    fn ms(self) -> u64 {
        match self {
            Unit::Seconds => 1_000,
            Unit::Minutes => 60_000,
            Unit::Hours => 3_600_000,
            Unit::Days => 86_400_000,
        }
    }
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
    fn every_unit_parses_to_milliseconds() {
        assert_eq!(rate("5/30s").window().as_ms(), 30_000);
        assert_eq!(rate("5/10m").window().as_ms(), 600_000);
        assert_eq!(rate("5/1h").window().as_ms(), 3_600_000);
        assert_eq!(rate("5/2d").window().as_ms(), 172_800_000);
    }

    #[test]
    fn a_rate_reads_back_as_count_per_window() {
        let parsed = rate(" 1000 / 1h ");
        assert_eq!(parsed.limit(), 1000);
        assert_eq!(parsed.to_string(), "1000 per 1h");
    }

    #[test]
    fn malformed_rates_say_what_is_wrong() {
        let err = |text: &str| match text.parse::<Rate>() {
            Ok(rate) => panic!("{text:?} parsed as {rate}"),
            Err(err) => err,
        };
        assert!(matches!(err("100"), RateError::Shape(_)));
        assert!(matches!(err("0/1h"), RateError::Count { .. }));
        assert!(matches!(err("-5/1h"), RateError::Count { .. }));
        assert!(matches!(err("99999999999/1h"), RateError::Count { .. }));
        assert!(matches!(err("ten/1h"), RateError::Count { .. }));
        let window = |text: &str| match err(text) {
            RateError::Window { problem, .. } => problem,
            other => panic!("{text:?}: expected a window error, got {other}"),
        };
        assert!(matches!(window("5/1w"), WindowError::Shape(_)));
        assert!(matches!(window("5/h"), WindowError::Shape(_)));
        assert!(matches!(window("5/10"), WindowError::Shape(_)));
        assert!(matches!(window("5/0m"), WindowError::Zero(_)));
        assert!(matches!(
            window("5/99999999999999999d"),
            WindowError::TooLong(_)
        ));
        assert!(
            err("5/1w").to_string().contains("\"1h\""),
            "the message shows an example"
        );
    }
}
