//! The plugin's view of a message (the WIT `message-info`), parsed once with mail-parser.

use mail_parser::{
    Address, ContentType, Encoding, MessageParser, MessagePart, MimeHeaders, PartType,
};

use crate::policy::{Header, MessageInfo, MimePart};

/// Most header fields handed to plugins; a message with more is still seen, truncated.
const MAX_HEADERS: usize = 500;
/// Most MIME parts listed.
const MAX_PARTS: usize = 500;
/// Longest body text handed to plugins that ask for it.
const MAX_BODY_TEXT: usize = 1024 * 1024;

/// Parses `raw` (the message as received) into what `on_data` sees. A message mail-parser
/// cannot make sense of still yields its size and no headers; plugins decide what that means.
///
/// A single-part message (most transactional mail) has only its header section parsed: its
/// one part is measured, not decoded. Multipart and nested messages, and plugins that asked
/// for the text, get mail-parser's full parse.
pub(crate) fn message_info(raw: &[u8], with_body: bool) -> MessageInfo {
    let parser = MessageParser::default();
    let (header, body) = raw.split_at(body_offset(raw));
    let header_only = if with_body || may_be_container(header) {
        None
    } else {
        parser
            .parse_headers(raw)
            .filter(|m| !m.content_type().is_some_and(is_container))
    };
    let single_part = header_only.is_some();
    let Some(message) = header_only.or_else(|| parser.parse(raw)) else {
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
    let parts = if single_part {
        message
            .parts
            .first()
            .map(|root| vec![mime_part(root, decoded_len(body, transfer_encoding(root)))])
            .unwrap_or_default()
    } else {
        message
            .parts
            .iter()
            .take(MAX_PARTS)
            .map(|part| {
                let body = raw
                    .get(part.offset_body as usize..part.offset_end as usize)
                    .unwrap_or_default();
                let size = match &part.body {
                    PartType::Multipart(_) => 0,
                    PartType::Message(_) => body.len() as u64,
                    _ => decoded_len(body, part.encoding),
                };
                mime_part(part, size)
            })
            .collect()
    };
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

/// False only when the header section cannot declare a multipart or message type: a quick
/// scan for `multipart/` and `message/` that spares a multipart message a header parse before
/// its full parse.
fn may_be_container(header: &[u8]) -> bool {
    let ends_with = |end: usize, word: &[u8]| {
        end >= word.len() && header[end - word.len()..end].eq_ignore_ascii_case(word)
    };
    memchr::memchr_iter(b'/', header)
        .any(|at| ends_with(at, b"multipart") || ends_with(at, b"message"))
}

/// Multipart bodies and nested messages have a structure to walk: the full parse.
fn is_container(ct: &ContentType<'_>) -> bool {
    ct.ctype().eq_ignore_ascii_case("multipart") || ct.ctype().eq_ignore_ascii_case("message")
}

/// One part's entry: type, file name, attachment or not, and its decoded `size`.
fn mime_part(part: &MessagePart<'_>, size: u64) -> MimePart {
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
    // A named part is a file unless it is text meant to be read inline.
    let is_attachment =
        disposition_attachment || (filename.is_some() && !content_type.starts_with("text/"));
    MimePart {
        content_type,
        filename,
        is_attachment,
        size,
    }
}

/// The part's Content-Transfer-Encoding, as mail-parser names it.
fn transfer_encoding(part: &MessagePart<'_>) -> Encoding {
    match part.content_transfer_encoding() {
        Some(cte) if cte.eq_ignore_ascii_case("base64") => Encoding::Base64,
        Some(cte) if cte.eq_ignore_ascii_case("quoted-printable") => Encoding::QuotedPrintable,
        _ => Encoding::None,
    }
}

/// Where the body starts: after the first empty line (RFC 5322 2.1), or the end when there
/// is none.
fn body_offset(raw: &[u8]) -> usize {
    let mut offset = 0;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        offset += line.len();
        if line == b"\r\n" || line == b"\n" {
            return offset;
        }
    }
    raw.len()
}

/// Bytes `body` holds once its transfer encoding is undone (RFC 2045 6.7, 6.8), counted
/// without decoding. Charsets are not converted: this is the size of the part's content.
fn decoded_len(body: &[u8], encoding: Encoding) -> u64 {
    match encoding {
        Encoding::None => body.len() as u64,
        Encoding::Base64 => {
            let symbols = body
                .iter()
                .filter(|b| b.is_ascii_alphanumeric() || **b == b'+' || **b == b'/')
                .count() as u64;
            symbols / 4 * 3 + [0, 0, 1, 2][(symbols % 4) as usize]
        }
        Encoding::QuotedPrintable => {
            // Everything counts once except `=XX` (three characters, one byte) and a soft
            // line break (`=` at the end of a line, with its line break).
            let mut dropped = 0;
            for at in memchr::memchr_iter(b'=', body) {
                match body.get(at + 1..at + 3) {
                    Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => dropped += 2,
                    Some(b"\r\n") => dropped += 3,
                    Some([b'\n', ..]) => dropped += 2,
                    None if body.get(at + 1) == Some(&b'\n') => dropped += 2,
                    None if at + 1 == body.len() => dropped += 1,
                    _ => {}
                }
            }
            body.len().saturating_sub(dropped) as u64
        }
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
    text[..text.floor_char_boundary(max)].to_string()
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
    fn part_sizes_are_decoded_sizes() {
        let info = message_info(MIXED, false);
        let attachment = info
            .parts
            .iter()
            .find(|p| p.is_attachment)
            .expect("attachment");
        assert_eq!(attachment.size, 12, "16 base64 symbols are 12 bytes");
        // The CRLF before a boundary belongs to the boundary (RFC 2046 5.1.1).
        assert_eq!(info.parts[1].size, "hello there".len() as u64);
        assert_eq!(
            info.parts[0].size, 0,
            "a multipart container has no content of its own"
        );
    }

    #[test]
    fn a_single_part_message_is_described_from_its_header_section() {
        let raw = b"From: a@example.test\r\n\
Subject: report\r\n\
Content-Type: application/pdf; name=\"q3.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQK\r\n\
JVBERi0x\r\n";
        let info = message_info(raw, false);
        assert_eq!(info.subject.as_deref(), Some("report"));
        assert_eq!(info.from, vec!["a@example.test"]);
        assert_eq!(info.parts.len(), 1);
        let part = &info.parts[0];
        assert_eq!(part.content_type, "application/pdf");
        assert_eq!(part.filename.as_deref(), Some("q3.pdf"));
        assert!(part.is_attachment, "a named non-text part is a file");
        assert_eq!(part.size, 9 + 6);
        // The full parse (asked for by a plugin that wants the text) agrees.
        assert_eq!(message_info(raw, true).parts[0], *part);
    }

    #[test]
    fn quoted_printable_sizes_follow_rfc_2045() {
        let qp = |s: &str| decoded_len(s.as_bytes(), Encoding::QuotedPrintable);
        assert_eq!(qp("caf=C3=A9\r\n"), 5 + 2);
        assert_eq!(qp("soft=\r\nbreak"), 9, "a soft line break is not content");
        assert_eq!(
            qp("soft=\nbreak="),
            9,
            "bare LF and a final `=` are soft breaks too"
        );
        assert_eq!(qp("=ZZ"), 3, "a bad escape is kept as written");
        assert_eq!(decoded_len(b"QUJD\r\nRA==\r\n", Encoding::Base64), 4);
    }

    #[test]
    fn the_body_starts_after_the_first_empty_line() {
        assert_eq!(body_offset(b"A: b\r\n\r\nbody"), 8);
        assert_eq!(body_offset(b"\r\nbody"), 2);
        assert_eq!(body_offset(b"A: b\r\n"), 6);
    }

    #[test]
    fn unparsable_bytes_still_give_a_size() {
        let info = message_info(b"", false);
        assert_eq!(info.size, 0);
        assert!(info.headers.is_empty());
    }
}
