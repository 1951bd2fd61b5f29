//! The plugin's view of a message (the WIT `message-info`), parsed once with mail-parser.

use mail_parser::{Address, MessageParser, MimeHeaders, PartType};

use crate::policy::{Header, MessageInfo, MimePart};

/// Most header fields handed to plugins; a message with more is still seen, truncated.
const MAX_HEADERS: usize = 500;
/// Most MIME parts listed.
const MAX_PARTS: usize = 500;
/// Longest body text handed to plugins that ask for it.
const MAX_BODY_TEXT: usize = 1024 * 1024;

/// Parses `raw` (the message as received) into what `on_data` sees. A message mail-parser
/// cannot make sense of still yields its size and no headers; plugins decide what that means.
pub(crate) fn message_info(raw: &[u8], with_body: bool) -> MessageInfo {
    let Some(message) = MessageParser::default().parse(raw) else {
        return MessageInfo {
            size: raw.len() as u64,
            headers: Vec::new(),
            subject: None,
            from: Vec::new(),
            to: Vec::new(),
            cc: Vec::new(),
            message_id: None,
            parts: Vec::new(),
            body_text: None,
        };
    };
    let headers = message
        .headers()
        .iter()
        .take(MAX_HEADERS)
        .map(|h| Header {
            name: h.name().to_string(),
            // Unstructured fields come unfolded and decoded; others as written.
            value: match h.value().as_text() {
                Some(text) => unfold(text),
                None => raw_value(raw, h.offset_start(), h.offset_end()),
            },
        })
        .collect();
    let parts = message
        .parts
        .iter()
        .take(MAX_PARTS)
        .map(|part| {
            let content_type = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_string(),
                })
                .unwrap_or_else(|| "text/plain".to_string())
                .to_ascii_lowercase();
            let filename = part.attachment_name().map(str::to_string);
            let disposition_attachment = part
                .content_disposition()
                .is_some_and(|cd| cd.is_attachment());
            let is_attachment = disposition_attachment
                || (filename.is_some()
                    && !matches!(part.body, PartType::Text(_) | PartType::Html(_)));
            MimePart {
                content_type,
                filename,
                is_attachment,
                size: part.body.len() as u64,
            }
        })
        .collect();
    let body_text = if with_body {
        message
            .body_text(0)
            .or_else(|| message.body_html(0))
            .map(|text| truncate(&text, MAX_BODY_TEXT))
    } else {
        None
    };
    MessageInfo {
        size: raw.len() as u64,
        headers,
        subject: message.subject().map(str::to_string),
        from: addresses(message.from()),
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        message_id: message.message_id().map(str::to_string),
        parts,
        body_text,
    }
}

/// A header's raw value, unfolded and trimmed (decoding stays with the plugin if it cares).
fn raw_value(raw: &[u8], start: u32, end: u32) -> String {
    let bytes = raw.get(start as usize..end as usize).unwrap_or_default();
    unfold(&String::from_utf8_lossy(bytes))
}

/// Undoes RFC 5322 2.2.3 folding: a line break followed by white space becomes one space.
fn unfold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        let line = line.trim_end_matches('\r');
        if i > 0 {
            out.push(' ');
        }
        out.push_str(line.trim());
    }
    out.trim().to_string()
}

fn addresses(address: Option<&Address<'_>>) -> Vec<String> {
    address
        .map(|a| {
            a.iter()
                .filter_map(|addr| addr.address().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &[u8] = b"From: Alice <alice@example.test>\r\n\
To: bob@example.org, carol@example.org\r\n\
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\
Message-ID: <m1@example.test>\r\n\
X-Campaign: spring\r\n\x20sale\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain\r\n\
\r\n\
hello there\r\n\
--b\r\n\
Content-Type: application/octet-stream\r\n\
Content-Disposition: attachment; filename=\"run.exe\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
TVqQAAMAAAAEAAAA\r\n\
--b--\r\n";

    #[test]
    fn headers_addresses_and_attachments_are_seen() {
        let info = message_info(MIXED, false);
        assert_eq!(info.subject.as_deref(), Some("Grüße"));
        assert_eq!(info.from, vec!["alice@example.test"]);
        assert_eq!(info.to, vec!["bob@example.org", "carol@example.org"]);
        assert_eq!(info.message_id.as_deref(), Some("m1@example.test"));
        let campaign = info
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("x-campaign"))
            .expect("header");
        assert_eq!(campaign.value, "spring sale", "folded values are unfolded");
        let attachment = info
            .parts
            .iter()
            .find(|p| p.is_attachment)
            .expect("attachment");
        assert_eq!(attachment.filename.as_deref(), Some("run.exe"));
        assert_eq!(attachment.content_type, "application/octet-stream");
        assert_eq!(info.parts[0].content_type, "multipart/mixed");
        assert!(info.body_text.is_none(), "body only on request");
    }

    #[test]
    fn body_text_is_given_only_when_asked() {
        let info = message_info(MIXED, true);
        assert_eq!(
            info.body_text.as_deref().map(str::trim),
            Some("hello there")
        );
    }

    #[test]
    fn unparsable_bytes_still_give_a_size() {
        let info = message_info(b"", false);
        assert_eq!(info.size, 0);
        assert!(info.headers.is_empty());
    }
}
