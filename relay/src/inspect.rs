//! The message as `on_data` plugins see it: a [`MessageView`] over the received bytes that
//! parses only what a plugin asks for, once per message, with mail-parser.
//!
//! Header fields come from a scan of the header section (name and value ranges), so asking
//! for one field costs a scan and an unfolded copy. Structured answers (addresses, the
//! Message-ID, a decoded Subject) parse just the fields they need. The MIME structure of a
//! single-part message comes from its MIME fields and a count of its body; multipart and
//! nested messages, and the body text, get mail-parser's full parse.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;

use mail_parser::{
    Address, ContentType, Encoding, HeaderName, MessageParser, MessagePart, MimeHeaders, PartType,
};

use crate::policy::{Header, MimePart};

/// Most header fields handed to plugins; a message with more is still seen, truncated.
const MAX_HEADERS: usize = 500;
/// Most MIME parts listed.
const MAX_PARTS: usize = 500;
/// Longest body text handed to plugins that ask for it.
const MAX_BODY_TEXT: usize = 1024 * 1024;
/// Fields whose value is unstructured text with RFC 2047 encoded words, decoded for plugins
/// (the fields mail-parser reads as text).
const TEXT_FIELDS: [&str; 5] = [
    "subject",
    "comments",
    "content-description",
    "content-location",
    "content-transfer-encoding",
];

/// One top-level header field: where its name and value are in the message.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    /// The name, without the colon and trailing white space.
    pub name: Range<usize>,
    /// The value as written: after the colon up to the end of its last (folded) line.
    pub value: Range<usize>,
}

/// A received message, and what plugins have asked of it so far.
///
/// Every answer is computed on first use and kept, so several plugins asking the same costs
/// one parse. [`MessageView::into_bytes`] gives the bytes back when the hooks are done.
pub(crate) struct MessageView {
    raw: Vec<u8>,
    fields: OnceLock<Vec<Field>>,
    parts: OnceLock<Vec<MimePart>>,
    body_text: OnceLock<Option<String>>,
}

impl MessageView {
    /// A view of `raw`, the message as received; nothing is parsed yet.
    pub fn new(raw: Vec<u8>) -> MessageView {
        MessageView {
            raw,
            fields: OnceLock::new(),
            parts: OnceLock::new(),
            body_text: OnceLock::new(),
        }
    }

    /// The message's bytes, unchanged.
    pub fn into_bytes(self) -> Vec<u8> {
        self.raw
    }

    /// The message's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Size in bytes as received.
    pub fn size(&self) -> u64 {
        self.raw.len() as u64
    }

    fn fields(&self) -> &[Field] {
        self.fields.get_or_init(|| {
            // Room for a typical header section, so that it is not regrown field by field.
            let mut fields = Vec::with_capacity(32);
            fields.extend(header_fields(&self.raw));
            fields
        })
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Field> + 'a {
        self.fields()
            .iter()
            .filter(move |f| self.raw[f.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
    }

    /// The value of `field` as plugins see it: unfolded and, for text fields, decoded.
    fn value_of(&self, field: &Field) -> String {
        self.value_ref(field).into_owned()
    }

    /// [`MessageView::value_of`], borrowed from the message when it is one line of UTF-8
    /// (what most fields are).
    fn value_ref(&self, field: &Field) -> Cow<'_, str> {
        let raw = &self.raw[field.value.clone()];
        let name = &self.raw[field.name.clone()];
        let decode = TEXT_FIELDS
            .iter()
            .any(|t| name.eq_ignore_ascii_case(t.as_bytes()))
            && memchr::memmem::find(raw, b"=?").is_some();
        if decode {
            if let Some(text) = self.parse_fields(&[field], |m| {
                m.headers()
                    .first()
                    .and_then(|h| h.value().as_text().map(|t| unfold(t).into_owned()))
            }) {
                return Cow::Owned(text);
            }
        }
        match String::from_utf8_lossy(raw) {
            Cow::Borrowed(text) => unfold(text),
            Cow::Owned(text) => Cow::Owned(unfold(&text).into_owned()),
        }
    }

    /// The first top-level field called `name` (any case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.named(name).next().map(|f| self.value_of(f))
    }

    /// Every top-level field called `name` (any case), in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.named(name).map(|f| self.value_of(f)).collect()
    }

    /// All top-level header fields, in order (at most [`MAX_HEADERS`]).
    pub fn headers(&self) -> Vec<Header> {
        self.fields()
            .iter()
            .take(MAX_HEADERS)
            .map(|f| Header {
                name: String::from_utf8_lossy(&self.raw[f.name.clone()]).into_owned(),
                value: self.value_of(f),
            })
            .collect()
    }

    /// Parses only the fields `fields` (a header section of their own) and reads it with `f`.
    fn parse_fields<R>(
        &self,
        fields: &[&Field],
        f: impl FnOnce(&mail_parser::Message<'_>) -> Option<R>,
    ) -> Option<R> {
        let mut section = Vec::new();
        for field in fields {
            section.extend_from_slice(&self.raw[field.name.start..field.value.end]);
            if !section.ends_with(b"\n") {
                section.extend_from_slice(b"\r\n");
            }
        }
        section.extend_from_slice(b"\r\n");
        MessageParser::default()
            .parse_headers(&section[..])
            .and_then(|m| f(&m))
    }

    /// The fields called `name` parsed as mail-parser parses that field.
    fn parse_named<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mail_parser::Message<'_>) -> Option<R>,
    ) -> Option<R> {
        let fields: Vec<&Field> = self.named(name).collect();
        if fields.is_empty() {
            return None;
        }
        self.parse_fields(&fields, f)
    }

    /// The Subject, decoded.
    pub fn subject(&self) -> Option<String> {
        self.parse_named("subject", |m| m.subject().map(str::to_string))
    }

    /// Addresses in the fields called `name` (From, To or Cc).
    fn addresses(&self, name: &str, header: HeaderName<'static>) -> Vec<String> {
        let mut fields = self.named(name);
        if let (Some(only), None) = (fields.next(), fields.next()) {
            let value = self.value_ref(only);
            if let Some(address) = simple_address(&value) {
                return vec![address.to_string()];
            }
        }
        self.parse_named(name, |m| {
            let mut all = Vec::new();
            for h in m.headers().iter().filter(|h| h.name == header) {
                all.extend(addresses(h.value().as_address()));
            }
            Some(all)
        })
        .unwrap_or_default()
    }

    /// Addresses in From:.
    pub fn from(&self) -> Vec<String> {
        self.addresses("from", HeaderName::From)
    }

    /// Addresses in To:.
    pub fn to(&self) -> Vec<String> {
        self.addresses("to", HeaderName::To)
    }

    /// Addresses in Cc:.
    pub fn cc(&self) -> Vec<String> {
        self.addresses("cc", HeaderName::Cc)
    }

    /// The Message-ID without angle brackets.
    pub fn message_id(&self) -> Option<String> {
        self.parse_named("message-id", |m| m.message_id().map(str::to_string))
    }

    /// The MIME structure, flattened in document order (at most [`MAX_PARTS`]).
    ///
    /// A single-part message (most transactional mail) has only its MIME fields parsed: its
    /// one part is measured, not decoded. Multipart and nested messages get the full parse.
    pub fn parts(&self) -> &[MimePart] {
        self.parts.get_or_init(|| {
            let body_at = body_offset(&self.raw);
            let (header, body) = self.raw.split_at(body_at);
            if !may_be_container(header) {
                if let Some(part) = self.simple_part(body) {
                    return vec![part];
                }
                let mime: Vec<&Field> = self
                    .fields()
                    .iter()
                    .filter(|f| {
                        let name = &self.raw[f.name.clone()];
                        is_mime_field(name)
                    })
                    .collect();
                let single = self.parse_fields(&mime, |m| {
                    let root = m.parts.first()?;
                    if root.content_type().is_some_and(is_container) {
                        return None;
                    }
                    Some(vec![mime_part(
                        root,
                        decoded_len(body, transfer_encoding(root)),
                    )])
                });
                // No MIME fields at all: plain text, as mail-parser reads it too.
                let single = single.or_else(|| mime.is_empty().then(|| plain_text(body)));
                if let Some(parts) = single {
                    return parts;
                }
            }
            MessageParser::default()
                .parse(&self.raw[..])
                .map(|message| {
                    message
                        .parts
                        .iter()
                        .take(MAX_PARTS)
                        .map(|part| {
                            let body = self
                                .raw
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
                })
                .unwrap_or_default()
        })
    }

    /// The one part of a single-part message whose MIME fields say no more than a media type
    /// without a name and a transfer encoding (most transactional mail), read without a
    /// parser; `None` when there is more to read (a disposition, a name, comments, encoded
    /// words, a field given twice), which mail-parser then reads.
    fn simple_part(&self, body: &[u8]) -> Option<MimePart> {
        let mut content_type = None;
        let mut encoding = None;
        for field in self.fields() {
            let name = &self.raw[field.name.clone()];
            let value = &self.raw[field.value.clone()];
            let slot = if name.eq_ignore_ascii_case(b"content-type") {
                &mut content_type
            } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
                &mut encoding
            } else if is_mime_field(name) {
                // Content-Disposition, Content-ID, ...: mail-parser's reading decides.
                if name.eq_ignore_ascii_case(b"content-disposition") {
                    return None;
                }
                continue;
            } else {
                continue;
            };
            if slot.is_some() || value.iter().any(|b| matches!(b, b'(' | b'\\')) {
                return None;
            }
            *slot = Some(std::str::from_utf8(value).ok()?.trim());
        }
        let media_type = match content_type {
            None => "text/plain".to_string(),
            Some(value) => {
                let (media_type, params) = value.split_once(';').unwrap_or((value, ""));
                if contains_ignore_case(params.as_bytes(), b"name")
                    || memchr::memmem::find(params.as_bytes(), b"=?").is_some()
                {
                    return None;
                }
                let (kind, sub) = media_type.trim().split_once('/')?;
                let token = |t: &str| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
                };
                if !token(kind) || !token(sub) {
                    return None;
                }
                let mut media_type = String::with_capacity(kind.len() + 1 + sub.len());
                media_type.push_str(kind);
                media_type.push('/');
                media_type.push_str(sub);
                media_type.make_ascii_lowercase();
                media_type
            }
        };
        let encoding = match encoding {
            None => Encoding::None,
            Some(value) if value.eq_ignore_ascii_case("base64") => Encoding::Base64,
            Some(value) if value.eq_ignore_ascii_case("quoted-printable") => {
                Encoding::QuotedPrintable
            }
            Some(value) if value.contains("=?") => return None,
            Some(_) => Encoding::None,
        };
        Some(MimePart {
            content_type: media_type,
            filename: None,
            is_attachment: false,
            size: decoded_len(body, encoding),
        })
    }

    /// The first text/plain (else text/html) part as text, at most [`MAX_BODY_TEXT`] bytes.
    pub fn body_text(&self) -> Option<&str> {
        self.body_text
            .get_or_init(|| {
                let message = MessageParser::default().parse(&self.raw[..])?;
                message
                    .body_text(0)
                    .or_else(|| message.body_html(0))
                    .map(|text| truncate(&text, MAX_BODY_TEXT))
            })
            .as_deref()
    }
}

/// The top-level header fields of `raw`, in order: a line that starts with a name and a colon
/// starts a field, a line that starts with white space continues it (RFC 5322 2.2.3), and the
/// first empty line ends the section. Lines that are neither (no colon) are skipped, as
/// mail-parser skips them, and so are the continuation lines after them.
///
/// It allocates nothing: [`crate::hygiene`] walks it for every message, and a [`MessageView`]
/// keeps it when a plugin asks for a header field.
pub(crate) fn header_fields(raw: &[u8]) -> impl Iterator<Item = Field> + '_ {
    let mut pos = 0;
    // The field being read, returned once the next line shows it has no more continuations.
    let mut open: Option<Field> = None;
    std::iter::from_fn(move || loop {
        let Some(rest) = raw.get(pos..).filter(|rest| !rest.is_empty()) else {
            return open.take();
        };
        let end = memchr::memchr(b'\n', rest).map_or(raw.len(), |lf| pos + lf + 1);
        let line = &raw[pos..end];
        if line == b"\r\n" || line == b"\n" {
            pos = raw.len();
            return open.take();
        }
        let start = pos;
        pos = end;
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some(field) = open.as_mut() {
                field.value.end = end;
            }
            continue;
        }
        let next = memchr::memchr(b':', line).and_then(|colon| {
            let name = line[..colon].trim_ascii_end();
            (!name.is_empty() && !name.iter().any(|b| b.is_ascii_whitespace())).then(|| Field {
                name: start..start + name.len(),
                value: start + colon + 1..end,
            })
        });
        if let Some(done) = std::mem::replace(&mut open, next) {
            return Some(done);
        }
    })
}

/// The address of a From/To/Cc value in one of the two plain forms, `local@domain` and
/// `Display Name <local@domain>`, read without a parser; `None` for anything else (quotes,
/// comments, groups, several addresses, encoded words, address literals), which
/// mail-parser then reads.
fn simple_address(value: &str) -> Option<&str> {
    if value.bytes().any(|b| {
        matches!(
            b,
            b'"' | b'(' | b')' | b',' | b':' | b';' | b'\\' | b'[' | b']'
        )
    }) || value.contains("=?")
    {
        return None;
    }
    let address = match value.split_once('<') {
        Some((display, rest)) => {
            let inner = rest.strip_suffix('>')?;
            if display.contains(['@', '>']) || inner.contains(['<', '>']) {
                return None;
            }
            inner
        }
        None => value,
    };
    let (local, domain) = address.split_once('@')?;
    let plain = |part: &str| {
        !part.is_empty()
            && !part.contains('@')
            && !part
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'<' || b == b'>')
    };
    (plain(local) && plain(domain)).then_some(address)
}

/// True for a MIME field of a part: `Content-*` (RFC 2045 9).
fn is_mime_field(name: &[u8]) -> bool {
    name.len() > 8 && name[..8].eq_ignore_ascii_case(b"content-")
}

/// True when `haystack` holds `needle` (ASCII, lower case) in any case.
fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

/// The one part of a message without MIME fields: plain text (RFC 2045 5.2).
fn plain_text(body: &[u8]) -> Vec<MimePart> {
    vec![MimePart {
        content_type: "text/plain".to_string(),
        filename: None,
        is_attachment: false,
        size: body.len() as u64,
    }]
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

/// Undoes RFC 5322 2.2.3 folding: a line break followed by white space becomes one space.
fn unfold(text: &str) -> Cow<'_, str> {
    let trimmed = text.trim();
    if !trimmed.contains('\n') {
        return Cow::Borrowed(trimmed);
    }
    let mut out = String::with_capacity(trimmed.len());
    for (i, line) in trimmed.split('\n').enumerate() {
        let line = line.trim_end_matches('\r');
        if i > 0 {
            out.push(' ');
        }
        out.push_str(line.trim());
    }
    Cow::Owned(out)
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

    fn view(raw: &[u8]) -> MessageView {
        MessageView::new(raw.to_vec())
    }

    #[test]
    fn headers_addresses_and_attachments_are_seen() {
        let message = view(MIXED);
        assert_eq!(message.subject().as_deref(), Some("Grüße"));
        assert_eq!(message.header("subject").as_deref(), Some("Grüße"));
        assert_eq!(message.from(), vec!["alice@example.test"]);
        assert_eq!(message.to(), vec!["bob@example.org", "carol@example.org"]);
        assert!(message.cc().is_empty());
        assert_eq!(message.message_id().as_deref(), Some("m1@example.test"));
        assert_eq!(
            message.header("X-CAMPAIGN").as_deref(),
            Some("spring sale"),
            "folded values are unfolded"
        );
        assert_eq!(
            message.header("from").as_deref(),
            Some("Alice <alice@example.test>"),
            "structured fields come as written"
        );
        let names: Vec<String> = message.headers().into_iter().map(|h| h.name).collect();
        assert_eq!(
            names,
            [
                "From",
                "To",
                "Subject",
                "Message-ID",
                "X-Campaign",
                "MIME-Version",
                "Content-Type"
            ]
        );
        let attachment = message
            .parts()
            .iter()
            .find(|p| p.is_attachment)
            .expect("attachment");
        assert_eq!(attachment.filename.as_deref(), Some("run.exe"));
        assert_eq!(attachment.content_type, "application/octet-stream");
        assert_eq!(message.parts()[0].content_type, "multipart/mixed");
        assert_eq!(
            message.header("Content-Type").as_deref(),
            Some("multipart/mixed; boundary=\"b\""),
            "the top level only: a part's fields are not the message's"
        );
        assert_eq!(message.size(), MIXED.len() as u64);
    }

    #[test]
    fn every_field_of_a_name_is_listed_and_missing_ones_are_none() {
        let message =
            view(b"Received: a\r\nReceived: b\r\n\tc\r\nX-Odd:\r\n\r\nReceived: body\r\n");
        assert_eq!(message.header_all("received"), ["a", "b c"]);
        assert_eq!(message.header("x-odd").as_deref(), Some(""));
        assert_eq!(message.header("subject"), None);
        assert_eq!(message.subject(), None);
        assert!(message.from().is_empty());
        assert_eq!(message.message_id(), None);
    }

    #[test]
    fn fields_end_at_the_empty_line_or_the_end_of_the_input() {
        let raw = b"A: 1\r\n 2\r\nno colon\r\n lost\r\nB:3\r\n\tfolded";
        let fields: Vec<(&[u8], &[u8])> = header_fields(raw)
            .map(|f| (&raw[f.name], &raw[f.value]))
            .collect();
        assert_eq!(
            fields,
            [
                (&b"A"[..], &b" 1\r\n 2\r\n"[..]),
                (&b"B"[..], &b"3\r\n\tfolded"[..])
            ],
            "a continuation after a line that is no field belongs to nothing"
        );
        assert_eq!(header_fields(b"\r\nA: body\r\n").count(), 0);
        assert_eq!(header_fields(b"").count(), 0);
    }

    #[test]
    fn lines_that_are_not_fields_are_skipped() {
        let message = view(b" leading fold\r\nno colon here\r\nBad Name: x\r\nGood: y\r\n\r\n");
        let headers = message.headers();
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert_eq!(headers[0].name, "Good");
        assert_eq!(headers[0].value, "y");
    }

    #[test]
    fn body_text_is_decoded_on_request() {
        assert_eq!(view(MIXED).body_text().map(str::trim), Some("hello there"));
    }

    #[test]
    fn part_sizes_are_decoded_sizes() {
        let message = view(MIXED);
        let parts = message.parts();
        let attachment = parts.iter().find(|p| p.is_attachment).expect("attachment");
        assert_eq!(attachment.size, 12, "16 base64 symbols are 12 bytes");
        // The CRLF before a boundary belongs to the boundary (RFC 2046 5.1.1).
        assert_eq!(parts[1].size, "hello there".len() as u64);
        assert_eq!(
            parts[0].size, 0,
            "a multipart container has no content of its own"
        );
    }

    #[test]
    fn a_single_part_message_is_described_from_its_mime_fields() {
        let raw = b"From: a@example.test\r\n\
Subject: report\r\n\
Content-Type: application/pdf;\r\n\tname=\"q3.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQK\r\n\
JVBERi0x\r\n";
        let message = view(raw);
        assert_eq!(message.subject().as_deref(), Some("report"));
        assert_eq!(message.from(), vec!["a@example.test"]);
        let parts = message.parts();
        assert_eq!(parts.len(), 1);
        let part = &parts[0];
        assert_eq!(part.content_type, "application/pdf");
        assert_eq!(part.filename.as_deref(), Some("q3.pdf"));
        assert!(part.is_attachment, "a named non-text part is a file");
        assert_eq!(part.size, 9 + 6);
        // mail-parser's full parse agrees.
        let full = MessageParser::default().parse(&raw[..]).expect("parses");
        let root = &full.parts[0];
        assert_eq!(mime_part(root, part.size), *part);
    }

    /// What mail-parser makes of the top-level part and the From field of `raw`.
    fn parsed(raw: &[u8]) -> (MimePart, Vec<String>) {
        let full = MessageParser::default().parse(raw).expect("parses");
        let body = &raw[body_offset(raw)..];
        let root = &full.parts[0];
        (
            mime_part(root, decoded_len(body, transfer_encoding(root))),
            addresses(full.from()),
        )
    }

    #[test]
    fn the_plain_readings_agree_with_mail_parser() {
        let cases: &[&str] = &[
            "From: a@example.test\r\n",
            "From: Load Generator <loadgen@example.test>\r\nContent-Type: text/plain; charset=us-ascii\r\n",
            "From: <x@y.example>\r\nContent-Type: TEXT/HTML; charset=\"UTF-8\"\r\nContent-Transfer-Encoding: Quoted-Printable\r\n",
            "From: \"Quoted, Name\" <q@example.test>\r\nContent-Type: application/pdf; name=\"q.pdf\"\r\n",
            "From: a@example.test, b@example.test\r\nContent-Type: text/plain (comment)\r\n",
            "From: =?utf-8?q?J=C3=B6rg?= <j@example.test>\r\nContent-Disposition: attachment; filename=x.txt\r\n",
            "From: Group: a@example.test;\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n",
            "From: a@[192.0.2.1]\r\nContent-Type: text/plain;\r\n\tcharset=utf-8\r\n",
            "From: undisclosed\r\nContent-Type: text/plain; format=flowed\r\nContent-Transfer-Encoding: 8bit\r\n",
            "From: Name <a@b@c>\r\n",
            "From: a@example.test (Alice)\r\n",
        ];
        for case in cases {
            let raw = format!("{case}Subject: x\r\n\r\nSGVsbG8gd29ybGQh\r\n=41=\r\n");
            let message = view(raw.as_bytes());
            let (part, from) = parsed(raw.as_bytes());
            assert_eq!(message.parts(), [part], "{case:?}");
            assert_eq!(message.from(), from, "{case:?}");
        }
    }

    #[test]
    fn the_plain_readings_take_only_the_plain_forms() {
        assert_eq!(simple_address("a@example.test"), Some("a@example.test"));
        assert_eq!(
            simple_address("Alice Example <alice@example.test>"),
            Some("alice@example.test")
        );
        for odd in [
            "\"a\"@example.test",
            "a@example.test (c)",
            "a@b.test, c@d.test",
            "g: a@b.test;",
            "a@[192.0.2.1]",
            "x <a@b.test> y",
            "<a@b.test",
            "a b@c.test",
            "x@y <a@b.test>",
            "undisclosed",
            "=?utf-8?q?x?= <a@b.test>",
        ] {
            assert_eq!(simple_address(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn a_message_without_mime_fields_is_plain_text() {
        let message = view(b"Subject: hi\r\n\r\nhello\r\n");
        assert_eq!(
            message.parts(),
            [MimePart {
                content_type: "text/plain".to_string(),
                filename: None,
                is_attachment: false,
                size: 7,
            }]
        );
    }

    #[test]
    fn answers_are_kept_and_the_bytes_come_back_unchanged() {
        let message = view(MIXED);
        let first = message.parts().as_ptr();
        assert_eq!(message.parts().as_ptr(), first, "parsed once");
        assert_eq!(message.into_bytes(), MIXED);
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
        let message = view(b"");
        assert_eq!(message.size(), 0);
        assert!(message.headers().is_empty());
        assert_eq!(message.body_text(), None);
        let garbage = view(b"\x00\xff\xfe no header section");
        assert!(garbage.headers().is_empty());
        assert!(garbage.parts().len() <= 1);
    }
}
