//! The checks on one message: blocked attachments, then From and Date, then the header and
//! the tag an accepted message gets.

use plugin_sdk::prelude::*;

use crate::config::Config;

/// Longest file name quoted in a reply; longer ones are cut with `...`.
const MAX_QUOTED_NAME: usize = 80;
/// Longest tag value taken from the tag header; longer values are cut.
const MAX_TAG_VALUE: usize = 256;

/// Judges one message with the checked config.
pub(crate) fn judge(config: &Config, input: &DataInput) -> DataVerdict {
    let message = &input.message;
    if let Some(text) = blocked_part(config, message) {
        return DataVerdict::reject(550, "5.7.1", &text);
    }
    // An address in From means there is a From field: the field itself is read only to tell
    // the two refusals apart.
    if config.require_from
        && !message
            .from_addresses()
            .iter()
            .any(|address| address.contains('@'))
    {
        let text = if message
            .header("From")
            .is_none_or(|value| value.trim().is_empty())
        {
            "Message has no From header (RFC 5322 3.6.2)"
        } else {
            "Message From header has no address (RFC 5322 3.6.2)"
        };
        return DataVerdict::reject(550, "5.6.0", text);
    }
    if config.require_date
        && message
            .header("Date")
            .is_none_or(|value| value.trim().is_empty())
    {
        return DataVerdict::reject(550, "5.6.0", "Message has no Date header (RFC 5322 3.6.1)");
    }

    let mut verdict = DataVerdict::no_opinion();
    if let Some((name, value)) = &config.add_header {
        verdict = verdict.with_header(name, value);
    }
    if let Some((header, key)) = &config.tag {
        if let Some(value) = message
            .header(header)
            .as_deref()
            .map(str::trim)
            .filter(|value| !value.is_empty())
        {
            verdict = verdict.with_tag(key, truncate(value, MAX_TAG_VALUE));
        }
    }
    verdict
}

/// The reply text for the first part whose file name or media type is blocked.
///
/// Every part with a file name is checked, not only those marked as attachments: an inline
/// `run.exe` is still a program on the recipient's disk.
fn blocked_part(config: &Config, message: &Message<'_>) -> Option<String> {
    for part in message.parts() {
        if let Some(filename) = &part.filename {
            if let Some(extension) = blocked_extension(config, filename) {
                return Some(format!(
                    "Attachment \"{}\" is not allowed (blocked type .{extension})",
                    quotable(filename)
                ));
            }
        }
        let media_type = part
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        // The relay gives media types in lower case; a test or another host may not.
        let lowered;
        let media_type = if media_type.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = media_type.to_ascii_lowercase();
            lowered.as_str()
        } else {
            media_type
        };
        if config
            .blocked_types
            .iter()
            .any(|blocked| blocked.matches(media_type))
        {
            let media_type = quotable(media_type);
            return Some(match &part.filename {
                Some(filename) => {
                    format!(
                        "Attachment \"{}\" is not allowed (blocked type {media_type})",
                        quotable(filename)
                    )
                }
                None => format!("Attachment is not allowed (blocked type {media_type})"),
            });
        }
    }
    None
}

/// The blocked extension `filename` ends with, if any.
///
/// The name is taken the way Windows would open it: the last path segment, without trailing
/// dots, spaces and control characters (`run.exe.` and `run.exe ` run `run.exe`), compared
/// without case. Only the end counts, so `invoice.pdf.exe` is blocked (it is a program)
/// while `example.com.pdf` is not (it is a PDF).
fn blocked_extension<'a>(config: &'a Config, filename: &str) -> Option<&'a str> {
    let name = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    let name = name.trim_end_matches(|c: char| c == '.' || c.is_whitespace() || c.is_control());
    let name = name.to_lowercase();
    config
        .blocked_extensions
        .iter()
        .find(|extension| {
            name.strip_suffix(extension.as_str())
                .is_some_and(|stem| stem.ends_with('.'))
        })
        .map(String::as_str)
}

/// Text safe inside a one-line SMTP reply: printable ASCII, no quotes or backslashes, short.
fn quotable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX_QUOTED_NAME)
        .collect();
    if text.chars().count() > MAX_QUOTED_NAME {
        out.push_str("...");
    }
    out
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_found_the_way_windows_reads_names() {
        let config = Config::parse(r#"{"blocked_extensions": ["exe", "tar.gz"]}"#).expect("valid");
        for name in [
            "run.exe",
            "RUN.EXE",
            "invoice.pdf.exe",
            "run.exe.",
            "run.exe  ",
            "C:\\tmp\\run.exe",
            "../run.Exe",
            ".exe",
        ] {
            assert_eq!(blocked_extension(&config, name), Some("exe"), "{name:?}");
        }
        assert_eq!(blocked_extension(&config, "backup.TAR.GZ"), Some("tar.gz"));
        for name in [
            "exe",
            "runexe",
            "run.exe.pdf",
            "run.exe/readme.txt",
            "archive.gz",
            "",
        ] {
            assert_eq!(blocked_extension(&config, name), None, "{name:?}");
        }
    }

    #[test]
    fn quoted_names_stay_on_one_printable_line() {
        assert_eq!(quotable("a \"b\"\r\n\\.exe"), "a ?b????.exe");
        assert_eq!(quotable("счёт.exe"), "????.exe");
        let long = "x".repeat(200);
        assert_eq!(quotable(&long).len(), MAX_QUOTED_NAME + 3);
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
