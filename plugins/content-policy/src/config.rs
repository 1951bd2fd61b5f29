//! The `[plugins.content-policy]` table: defaults, normalisation and checks, done once.

use std::collections::BTreeSet;

use serde::Deserialize;

/// Attachment extensions refused when `blocked_extensions` is absent: programs and scripts
/// Windows runs on a double click.
pub const DEFAULT_BLOCKED_EXTENSIONS: &[&str] =
    &["exe", "bat", "cmd", "com", "scr", "pif", "js", "vbs", "jar"];

/// Media types refused when `blocked_types` is absent: Windows executables.
pub const DEFAULT_BLOCKED_TYPES: &[&str] = &["application/x-msdownload", "application/x-dosexec"];

/// The header whose value becomes a tag when `tag_header` is absent.
pub const DEFAULT_TAG_HEADER: &str = "X-Campaign";

/// The tag's key when `tag_key` is absent.
pub const DEFAULT_TAG_KEY: &str = "campaign";

/// Why the `[plugins.content-policy]` table was refused; the text names the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not the expected shape: an unknown key, a wrong type, ...
    #[error("[plugins.content-policy]: {0}")]
    Shape(#[from] serde_json::Error),
    /// An empty entry in `blocked_extensions`.
    #[error("[plugins.content-policy] blocked_extensions: an entry is empty (write \"exe\" or \".exe\")")]
    EmptyExtension,
    /// A `blocked_types` entry that is not `type/subtype` (or `type/*`).
    #[error("[plugins.content-policy] blocked_types: \"{0}\" is not a media type like \"application/x-msdownload\"")]
    MediaType(String),
    /// `add_header` that is not `Name: value`.
    #[error("[plugins.content-policy] add_header: \"{0}\" is not \"Name: value\" (e.g. \"X-Content-Policy: checked\")")]
    AddHeader(String),
    /// `tag_header` that is not a header field name.
    #[error("[plugins.content-policy] tag_header: \"{0}\" is not a header field name (e.g. \"X-Campaign\")")]
    TagHeader(String),
    /// An empty `tag_key` while tagging is on.
    #[error("[plugins.content-policy] tag_key: the tag key is empty (set one, or tag_header = \"\" to turn tagging off)")]
    TagKey,
}

/// The table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    blocked_extensions: Option<Vec<String>>,
    #[serde(default)]
    blocked_types: Option<Vec<String>>,
    #[serde(default = "yes")]
    require_from: bool,
    #[serde(default = "yes")]
    require_date: bool,
    #[serde(default)]
    add_header: Option<String>,
    #[serde(default)]
    tag_header: Option<String>,
    #[serde(default)]
    tag_key: Option<String>,
}

fn yes() -> bool {
    true
}

/// A blocked media type: exact, or a whole top-level type (`application/*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum BlockedType {
    /// `type/subtype`, lower case.
    Exact(String),
    /// `type/*`: the `type/` prefix, lower case.
    Prefix(String),
}

impl BlockedType {
    /// True when `content_type` (lower case, without parameters) is blocked.
    pub(crate) fn matches(&self, content_type: &str) -> bool {
        match self {
            BlockedType::Exact(blocked) => content_type == blocked,
            BlockedType::Prefix(prefix) => content_type.starts_with(prefix.as_str()),
        }
    }
}

/// The checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// Lower case, without the leading dot; may contain dots (`tar.gz`).
    pub(crate) blocked_extensions: BTreeSet<String>,
    pub(crate) blocked_types: BTreeSet<BlockedType>,
    pub(crate) require_from: bool,
    pub(crate) require_date: bool,
    /// (name, value) of the header added to accepted messages.
    pub(crate) add_header: Option<(String, String)>,
    /// (header name, tag key); `None` when `tag_header = ""`.
    pub(crate) tag: Option<(String, String)>,
}

impl Config {
    /// Parses the plugin's JSON config; `"{}"` gives the defaults.
    pub(crate) fn parse(json: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_json::from_str(json)?;

        let extensions = raw
            .blocked_extensions
            .unwrap_or_else(|| owned(DEFAULT_BLOCKED_EXTENSIONS));
        let mut blocked_extensions = BTreeSet::new();
        for extension in extensions {
            let extension = extension.trim().trim_start_matches('.').to_lowercase();
            if extension.is_empty() {
                return Err(ConfigError::EmptyExtension);
            }
            blocked_extensions.insert(extension);
        }

        let types = raw
            .blocked_types
            .unwrap_or_else(|| owned(DEFAULT_BLOCKED_TYPES));
        let mut blocked_types = BTreeSet::new();
        for media_type in types {
            blocked_types
                .insert(blocked_type(&media_type).ok_or(ConfigError::MediaType(media_type))?);
        }

        let add_header = match raw.add_header {
            None => None,
            Some(line) => Some(header_line(&line).ok_or(ConfigError::AddHeader(line))?),
        };

        let tag_header = raw
            .tag_header
            .unwrap_or_else(|| DEFAULT_TAG_HEADER.to_owned());
        let tag_header = tag_header.trim();
        let tag = if tag_header.is_empty() {
            None
        } else {
            if !is_field_name(tag_header) {
                return Err(ConfigError::TagHeader(tag_header.to_owned()));
            }
            let key = raw.tag_key.unwrap_or_else(|| DEFAULT_TAG_KEY.to_owned());
            let key = key.trim();
            if key.is_empty() {
                return Err(ConfigError::TagKey);
            }
            Some((tag_header.to_owned(), key.to_owned()))
        };

        Ok(Config {
            blocked_extensions,
            blocked_types,
            require_from: raw.require_from,
            require_date: raw.require_date,
            add_header,
            tag,
        })
    }
}

fn owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|item| (*item).to_owned()).collect()
}

/// `type/subtype` or `type/*`, lower-cased; parameters are not allowed.
fn blocked_type(text: &str) -> Option<BlockedType> {
    let text = text.trim().to_ascii_lowercase();
    let (top, sub) = text.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
    };
    if !token(top) {
        return None;
    }
    if sub == "*" {
        return Some(BlockedType::Prefix(format!("{top}/")));
    }
    token(sub).then_some(BlockedType::Exact(text.clone()))
}

/// `Name: value` with a valid field name and a one-line value.
fn header_line(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once(':')?;
    let (name, value) = (name.trim(), value.trim());
    if !is_field_name(name) || value.chars().any(|c| c == '\r' || c == '\n') {
        return None;
    }
    Some((name.to_owned(), value.to_owned()))
}

/// RFC 5322 3.6.8: printable US-ASCII except colon.
fn is_field_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_table_gives_the_documented_defaults() {
        let config = Config::parse("{}").expect("valid");
        assert_eq!(
            config.blocked_extensions,
            DEFAULT_BLOCKED_EXTENSIONS
                .iter()
                .map(|e| (*e).to_owned())
                .collect()
        );
        assert_eq!(
            config.blocked_types,
            DEFAULT_BLOCKED_TYPES
                .iter()
                .map(|t| BlockedType::Exact((*t).to_owned()))
                .collect()
        );
        assert!(config.require_from && config.require_date);
        assert_eq!(config.add_header, None);
        assert_eq!(
            config.tag,
            Some(("X-Campaign".to_owned(), "campaign".to_owned()))
        );
    }

    #[test]
    fn entries_are_normalised() {
        let json = r#"{"blocked_extensions": [".EXE", " Tar.GZ "], "blocked_types": ["Application/Zip", "video/*"],
                      "add_header": "X-Checked :  yes ", "tag_header": "X-Mailer-Job", "tag_key": "job"}"#;
        let config = Config::parse(json).expect("valid");
        assert_eq!(
            config.blocked_extensions,
            ["exe".to_owned(), "tar.gz".to_owned()].into()
        );
        assert!(config
            .blocked_types
            .contains(&BlockedType::Exact("application/zip".to_owned())));
        assert!(config
            .blocked_types
            .contains(&BlockedType::Prefix("video/".to_owned())));
        assert_eq!(
            config.add_header,
            Some(("X-Checked".to_owned(), "yes".to_owned()))
        );
        assert_eq!(
            config.tag,
            Some(("X-Mailer-Job".to_owned(), "job".to_owned()))
        );
    }

    #[test]
    fn an_empty_tag_header_turns_tagging_off() {
        let config = Config::parse(r#"{"tag_header": ""}"#).expect("valid");
        assert_eq!(config.tag, None);
    }

    #[test]
    fn bad_entries_are_refused_with_the_key() {
        for (json, needle) in [
            (
                r#"{"blocked_extension": ["exe"]}"#,
                "unknown field `blocked_extension`",
            ),
            (
                r#"{"blocked_extensions": ["."]}"#,
                "blocked_extensions: an entry is empty",
            ),
            (
                r#"{"blocked_types": ["exe"]}"#,
                "blocked_types: \"exe\" is not a media type",
            ),
            (
                r#"{"blocked_types": ["text/plain; charset=x"]}"#,
                "is not a media type",
            ),
            (
                r#"{"add_header": "no colon"}"#,
                "add_header: \"no colon\" is not \"Name: value\"",
            ),
            (r#"{"add_header": "Bad Name: x"}"#, "add_header"),
            (r#"{"add_header": "X-A: one\r\nX-B: two"}"#, "add_header"),
            (
                r#"{"tag_header": "X Campaign"}"#,
                "tag_header: \"X Campaign\"",
            ),
            (r#"{"tag_key": " "}"#, "tag_key: the tag key is empty"),
            (r#"{"require_from": "yes"}"#, "invalid type"),
        ] {
            let err = Config::parse(json).expect_err(json).to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
