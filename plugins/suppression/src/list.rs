//! The suppression list, kept in the plugin's key-value state: one entry per address under
//! `suppressed:<address in lower case>`, expiring with the configured TTL.

use plugin_sdk::calendar::UtcDay;
use plugin_sdk::host;
use serde::{Deserialize, Serialize};

/// The prefix of every suppression key.
pub const KEY_PREFIX: &str = "suppressed:";

/// The longest failure reply kept in an entry, in bytes.
pub const MAX_REASON_BYTES: usize = 200;

/// One suppressed address, stored as JSON: `{"reason": "550 5.1.1 ...", "at_ms": 1700000000000}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The failure reply that suppressed the address, on one line.
    pub reason: String,
    /// When it was suppressed, Unix milliseconds.
    pub at_ms: u64,
}

impl Entry {
    /// An entry for a failure reply (`550 5.1.1 text`) seen at `at_ms`; the reply is put on
    /// one line and cut to a sane length.
    pub fn new(reply: &str, at_ms: u64) -> Self {
        Entry {
            reason: one_line(reply, MAX_REASON_BYTES),
            at_ms,
        }
    }
}

/// What the list says about an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Not on the list (or its entry expired).
    Clear,
    /// On the list.
    Suppressed(Entry),
    /// On the list, but the entry could not be read (written by another version?).
    Unreadable(String),
}

/// An address as the list keys it: without surrounding `<>` and spaces, in lower case;
/// `None` when nothing is left.
pub fn normalize(address: &str) -> Option<String> {
    let trimmed = address.trim();
    let bare = trimmed
        .strip_prefix('<')
        .and_then(|inner| inner.strip_suffix('>'))
        .unwrap_or(trimmed)
        .trim();
    (!bare.is_empty()).then(|| bare.to_lowercase())
}

/// The key-value key of a normalized address.
pub fn key(normalized: &str) -> String {
    format!("{KEY_PREFIX}{normalized}")
}

/// Puts a normalized address on the list for `ttl_ms` (replacing an older entry, so a new
/// hard bounce restarts the TTL).
pub fn add(normalized: &str, entry: &Entry, ttl_ms: u64) -> Result<(), serde_json::Error> {
    let value = serde_json::to_vec(entry)?;
    host::kv_set(&key(normalized), &value, Some(ttl_ms));
    Ok(())
}

/// Looks a normalized address up.
pub fn lookup(normalized: &str) -> Lookup {
    match host::kv_get(&key(normalized)) {
        None => Lookup::Clear,
        Some(value) => match serde_json::from_slice::<Entry>(&value) {
            Ok(entry) => Lookup::Suppressed(entry),
            Err(err) => Lookup::Unreadable(err.to_string()),
        },
    }
}

/// `text` on one line of at most `max_bytes` bytes: control characters and runs of white
/// space become one space, and a cut (at a character boundary) is marked with `...`.
pub fn one_line(text: &str, max_bytes: usize) -> String {
    let words: Vec<&str> = text
        .split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    let joined = words.join(" ");
    if joined.len() <= max_bytes {
        return joined;
    }
    let limit = max_bytes.saturating_sub(3);
    let mut out = String::with_capacity(max_bytes);
    for c in joined.chars() {
        if out.len() + c.len_utf8() > limit {
            break;
        }
        out.push(c);
    }
    out.push_str("...");
    out
}

/// The UTC calendar date of a Unix time in milliseconds, `YYYY-MM-DD`.
pub fn utc_date(unix_ms: u64) -> String {
    UtcDay::from_unix_ms(unix_ms).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_sdk::testing::TestHost;

    #[test]
    fn addresses_are_keyed_in_lower_case_without_brackets() {
        assert_eq!(
            normalize(" <Bob@Example.NET> ").as_deref(),
            Some("bob@example.net")
        );
        assert_eq!(
            normalize("ÄRGER@Example.de").as_deref(),
            Some("ärger@example.de")
        );
        assert_eq!(normalize("<>"), None);
        assert_eq!(normalize("  "), None);
        assert_eq!(key("bob@example.net"), "suppressed:bob@example.net");
    }

    #[test]
    fn entries_round_trip_through_the_store_as_json() {
        let host = TestHost::new();
        let entry = Entry::new("550 5.1.1 user\r\nunknown", 1_700_000_000_000);
        assert_eq!(entry.reason, "550 5.1.1 user unknown");
        assert!(add("bob@example.net", &entry, 1_000).is_ok());
        assert_eq!(
            host.kv_get_str("suppressed:bob@example.net").as_deref(),
            Some(r#"{"reason":"550 5.1.1 user unknown","at_ms":1700000000000}"#)
        );
        assert_eq!(lookup("bob@example.net"), Lookup::Suppressed(entry));
        host.advance_ms(1_000);
        assert_eq!(lookup("bob@example.net"), Lookup::Clear);
    }

    #[test]
    fn an_unreadable_entry_is_reported_not_trapped() {
        let host = TestHost::new();
        host.kv_set("suppressed:bob@example.net", b"\xff not json", None);
        assert!(matches!(lookup("bob@example.net"), Lookup::Unreadable(_)));
    }

    #[test]
    fn long_replies_are_cut() {
        let long = format!("550 5.1.1 {}", "x".repeat(500));
        let reason = Entry::new(&long, 0).reason;
        assert_eq!(reason.len(), MAX_REASON_BYTES);
        assert!(reason.ends_with("..."));
        let wide = one_line(&"\u{e9}".repeat(300), 20);
        assert_eq!(wide, format!("{}...", "\u{e9}".repeat(8)));
        assert_eq!(one_line("a  b\r\n c", 5), "a b c");
        assert_eq!(one_line("abc defgh", 8), "abc d...");
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
        assert_eq!(utc_date(1_700_000_000_000), "2023-11-14");
        assert_eq!(utc_date(1_795_392_000_000 - 1), "2026-11-22");
        assert_eq!(utc_date(1_795_392_000_000), "2026-11-23");
        assert_eq!(utc_date(4_107_542_399_999), "2100-02-28");
        assert_eq!(utc_date(4_107_542_400_000), "2100-03-01");
    }
}
