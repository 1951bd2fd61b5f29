//! UTC calendar days on the host clock: parsing and printing `yyyy-mm-dd`, day boundaries.
//!
//! A plugin has no clock or time-zone database of its own, and daily caps, dates in state
//! and the like want whole UTC days, so the proleptic Gregorian arithmetic lives here
//! (Howard Hinnant's `days_from_civil` / `civil_from_days`) instead of in a date crate:
//!
//! ```
//! use plugin_sdk::calendar::UtcDay;
//!
//! let day = UtcDay::from_unix_ms(1_795_132_800_000 + 3_600_000);
//! assert_eq!(day.to_string(), "2026-11-20");
//! assert_eq!(UtcDay::parse("2026-11-21"), Some(day.next()));
//! ```

use std::fmt;

/// Milliseconds in one UTC day (UTC days have no leap seconds in Unix time).
pub const MS_PER_DAY: u64 = 86_400_000;

/// One UTC calendar day, counted in days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UtcDay(i64);

impl UtcDay {
    /// The UTC day that contains `unix_ms`.
    pub fn from_unix_ms(unix_ms: u64) -> Self {
        // u64::MAX / MS_PER_DAY is far below i64::MAX.
        UtcDay(i64::try_from(unix_ms / MS_PER_DAY).unwrap_or(i64::MAX))
    }

    /// Parses a date written `yyyy-mm-dd` (four-digit year, real month and day).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return None;
        }
        let number = |range: std::ops::Range<usize>| -> Option<i64> {
            let digits = &bytes[range];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            Some(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
        };
        let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return None;
        }
        Some(UtcDay(days_from_civil(year, month, day)))
    }

    /// The day after this one.
    pub fn next(self) -> Self {
        UtcDay(self.0.saturating_add(1))
    }

    /// Whole days from `earlier` to this day (negative when `earlier` is later).
    pub fn days_since(self, earlier: UtcDay) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Unix milliseconds of this day's midnight (00:00 UTC); 0 for days before 1970.
    pub fn start_ms(self) -> u64 {
        u64::try_from(self.0).map_or(0, |days| days.saturating_mul(MS_PER_DAY))
    }
}

impl fmt::Display for UtcDay {
    /// `yyyy-mm-dd`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = civil_from_days(self.0);
        write!(f, "{year:04}-{month:02}-{day:02}")
    }
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (eras of 400 years start in March).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days.saturating_add(719_468);
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_map_to_their_day_numbers() {
        for (text, days) in [
            ("1970-01-01", 0),
            ("2000-03-01", 11_017),
            ("2024-02-29", 19_782),
            ("2026-11-20", 20_777),
        ] {
            let day = UtcDay::parse(text).expect(text);
            assert_eq!(day, UtcDay(days), "{text}");
            assert_eq!(day.to_string(), text);
        }
    }

    #[test]
    fn printing_and_parsing_round_trip_over_centuries() {
        // Years 0001..=9999 print as four digits and parse back.
        for days in (-719_162..2_932_897).step_by(37).chain([2_932_896]) {
            let day = UtcDay(days);
            assert_eq!(UtcDay::parse(&day.to_string()), Some(day), "{day}");
        }
        assert_eq!(UtcDay(-719_162).to_string(), "0001-01-01");
        assert_eq!(UtcDay(2_932_896).to_string(), "9999-12-31");
    }

    #[test]
    fn malformed_or_impossible_dates_are_refused() {
        for text in [
            "",
            "2026-11-2",
            "2026/11/20",
            "26-11-20xx",
            "2026-13-01",
            "2026-00-10",
            "2026-11-31",
            "2025-02-29",
            "1900-02-29",
            "2026-11-20T00:00:00Z",
            "+026-11-20",
            "２026-11-20",
        ] {
            assert_eq!(UtcDay::parse(text), None, "{text:?}");
        }
        assert!(UtcDay::parse("2000-02-29").is_some(), "2000 is a leap year");
    }

    #[test]
    fn the_clock_maps_to_days_and_midnights() {
        let noon = 1_795_132_800_000 + 12 * 3_600_000;
        let day = UtcDay::from_unix_ms(noon);
        assert_eq!(day.to_string(), "2026-11-20");
        assert_eq!(day.start_ms(), 1_795_132_800_000);
        assert_eq!(day.next().start_ms(), 1_795_132_800_000 + MS_PER_DAY);
        assert_eq!(
            UtcDay::from_unix_ms(day.next().start_ms() - 1),
            day,
            "23:59:59.999 is the same day"
        );
        assert_eq!(day.next().days_since(day), 1);
    }
}
