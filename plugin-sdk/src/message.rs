//! The message `on_data` reads ([`Message`]) and the input it comes with ([`DataInput`]).
//!
//! In the relay a [`Message`] is a handle: each question is a host call, and the relay parses
//! only what is asked (a header field is a scan of the header section; the MIME structure or
//! the body text a parse). Answers that are lists or whole structures are kept in the
//! [`Message`] after the first call, so asking twice crosses into the host once. In native
//! tests a [`Message`] is plain data ([`MessageInfo`], built with
//! [`crate::testing::message`]).

use std::cell::OnceCell;

use crate::bindings::relay::policy::types::Message as HostMessage;
use crate::types::{Header, MailFrom, MimePart, Session, Tag, Transaction};

/// The input of [`crate::Plugin::on_data`]: the transaction after the end of `DATA`, before
/// the relay replies.
#[derive(Debug)]
pub struct DataInput<'a> {
    /// The session, MAIL FROM and the accepted recipients, read on demand.
    pub transaction: Transaction<'a>,
    /// The message, read on demand.
    pub message: Message<'a>,
    /// Tags set by plugins that ran earlier for this message.
    pub tags: Vec<Tag>,
}

impl DataInput<'_> {
    /// The value of the tag `key` set by plugins that ran earlier (the last value wins).
    pub fn tag(&self, key: &str) -> Option<&str> {
        crate::verdicts::find_tag(&self.tags, key)
    }

    /// The SMTP session the message arrived on (a host call the first time: see
    /// [`Transaction`]).
    pub fn session(&self) -> &Session {
        self.transaction.session()
    }

    /// MAIL FROM and its parameters (a host call the first time: see [`Transaction`]).
    pub fn mail_from(&self) -> &MailFrom {
        self.transaction.mail_from()
    }

    /// The accepted recipients (a host call the first time: see [`Transaction`]).
    pub fn recipients(&self) -> &[String] {
        self.transaction.recipients()
    }
}

/// Everything [`Message`] can answer, as plain data: what a native test gives `on_data`
/// (see [`crate::testing::message`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageInfo {
    /// Size in bytes as received.
    pub size: u64,
    /// All top-level header fields, in order (values unfolded; text fields decoded).
    pub headers: Vec<Header>,
    /// The Subject, decoded.
    pub subject: Option<String>,
    /// Addresses in From:.
    pub from: Vec<String>,
    /// Addresses in To:.
    pub to: Vec<String>,
    /// Addresses in Cc:.
    pub cc: Vec<String>,
    /// The Message-ID without angle brackets.
    pub message_id: Option<String>,
    /// The MIME structure, flattened in document order (the top level first).
    pub parts: Vec<MimePart>,
    /// The first text/plain (else text/html) part as text.
    pub body_text: Option<String>,
}

/// The message of one `on_data` call.
///
/// Header lookups ([`Message::header`], [`Message::headers_named`]) ask the relay each time
/// (cheap: no parse); the other answers are fetched once and kept. Ask for what the decision
/// needs, in the order that lets you stop early: reading a header field is far cheaper than
/// [`Message::parts`] of a multipart message, and [`Message::body_text`] decodes the body.
pub struct Message<'a> {
    source: Source<'a>,
    headers: OnceCell<Vec<Header>>,
    subject: OnceCell<Option<String>>,
    from: OnceCell<Vec<String>>,
    to: OnceCell<Vec<String>>,
    cc: OnceCell<Vec<String>>,
    message_id: OnceCell<Option<String>>,
    parts: OnceCell<Vec<MimePart>>,
    body_text: OnceCell<Option<String>>,
}

enum Source<'a> {
    /// The relay's message, for the duration of the call.
    Host(&'a HostMessage),
    /// A test's message.
    Info(MessageInfo),
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::Host(_) => f.write_str("Message(relay)"),
            Source::Info(info) => f.debug_tuple("Message").field(info).finish(),
        }
    }
}

impl<'a> Message<'a> {
    fn with_source(source: Source<'a>) -> Self {
        Message {
            source,
            headers: OnceCell::new(),
            subject: OnceCell::new(),
            from: OnceCell::new(),
            to: OnceCell::new(),
            cc: OnceCell::new(),
            message_id: OnceCell::new(),
            parts: OnceCell::new(),
            body_text: OnceCell::new(),
        }
    }

    /// The relay's message (used by [`crate::export_plugin!`]).
    #[doc(hidden)]
    pub fn from_host(message: &'a HostMessage) -> Self {
        Message::with_source(Source::Host(message))
    }

    /// Size in bytes as received.
    pub fn size(&self) -> u64 {
        match &self.source {
            Source::Host(host) => host.size(),
            Source::Info(info) => info.size,
        }
    }

    /// The first top-level header field named `name` (any case), unfolded; Subject,
    /// Comments, Content-Description, Content-Location and Content-Transfer-Encoding are
    /// also decoded (RFC 2047).
    pub fn header(&self, name: &str) -> Option<String> {
        if let Some(headers) = self.cached_headers() {
            return headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case(name))
                .map(|header| header.value.clone());
        }
        match &self.source {
            Source::Host(host) => host.header(name),
            Source::Info(_) => None,
        }
    }

    /// Every top-level field named `name` (any case), in order, as [`Message::header`] gives
    /// them.
    pub fn headers_named(&self, name: &str) -> Vec<String> {
        if let Some(headers) = self.cached_headers() {
            return headers
                .iter()
                .filter(|header| header.name.eq_ignore_ascii_case(name))
                .map(|header| header.value.clone())
                .collect();
        }
        match &self.source {
            Source::Host(host) => host.header_all(name),
            Source::Info(_) => Vec::new(),
        }
    }

    /// The headers when they are at hand without a host call: a test's, or the relay's once
    /// [`Message::headers`] fetched them.
    fn cached_headers(&self) -> Option<&[Header]> {
        match &self.source {
            Source::Info(info) => Some(&info.headers),
            Source::Host(_) => self.headers.get().map(Vec::as_slice),
        }
    }

    /// All top-level header fields, in order (at most 500).
    pub fn headers(&self) -> &[Header] {
        match &self.source {
            Source::Info(info) => &info.headers,
            Source::Host(host) => self.headers.get_or_init(|| host.headers()),
        }
    }

    /// The Subject, decoded.
    pub fn subject(&self) -> Option<&str> {
        match &self.source {
            Source::Info(info) => info.subject.as_deref(),
            Source::Host(host) => self.subject.get_or_init(|| host.subject()).as_deref(),
        }
    }

    /// Addresses in From:.
    pub fn from_addresses(&self) -> &[String] {
        match &self.source {
            Source::Info(info) => &info.from,
            Source::Host(host) => self.from.get_or_init(|| host.from()),
        }
    }

    /// Addresses in To:.
    pub fn to_addresses(&self) -> &[String] {
        match &self.source {
            Source::Info(info) => &info.to,
            Source::Host(host) => self.to.get_or_init(|| host.to()),
        }
    }

    /// Addresses in Cc:.
    pub fn cc_addresses(&self) -> &[String] {
        match &self.source {
            Source::Info(info) => &info.cc,
            Source::Host(host) => self.cc.get_or_init(|| host.cc()),
        }
    }

    /// The Message-ID without angle brackets.
    pub fn message_id(&self) -> Option<&str> {
        match &self.source {
            Source::Info(info) => info.message_id.as_deref(),
            Source::Host(host) => self.message_id.get_or_init(|| host.message_id()).as_deref(),
        }
    }

    /// The MIME structure, flattened in document order (the top level first; at most 500).
    pub fn parts(&self) -> &[MimePart] {
        match &self.source {
            Source::Info(info) => &info.parts,
            Source::Host(host) => self.parts.get_or_init(|| host.parts()),
        }
    }

    /// The MIME parts that are attachments.
    pub fn attachments(&self) -> impl Iterator<Item = &MimePart> + '_ {
        self.parts().iter().filter(|part| part.is_attachment)
    }

    /// The first text/plain (else text/html) part as text, at most 1 MiB. The relay decodes
    /// the body for this: ask only when the answer matters.
    pub fn body_text(&self) -> Option<&str> {
        match &self.source {
            Source::Info(info) => info.body_text.as_deref(),
            Source::Host(host) => self.body_text.get_or_init(|| host.body_text()).as_deref(),
        }
    }
}

impl From<MessageInfo> for Message<'static> {
    fn from(info: MessageInfo) -> Self {
        Message::with_source(Source::Info(info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> MessageInfo {
        MessageInfo {
            size: 42,
            headers: vec![
                Header::new("Received", "a"),
                Header::new("Subject", "Hi"),
                Header::new("received", "b"),
            ],
            subject: Some("Hi".into()),
            from: vec!["a@x.test".into()],
            parts: vec![
                MimePart {
                    content_type: "text/plain".into(),
                    filename: None,
                    is_attachment: false,
                    size: 2,
                },
                MimePart {
                    content_type: "application/pdf".into(),
                    filename: Some("q.pdf".into()),
                    is_attachment: true,
                    size: 9,
                },
            ],
            ..MessageInfo::default()
        }
    }

    #[test]
    fn a_test_message_answers_from_its_data() {
        let message = Message::from(info());
        assert_eq!(message.size(), 42);
        assert_eq!(message.header("SUBJECT").as_deref(), Some("Hi"));
        assert_eq!(message.header("Date"), None);
        assert_eq!(message.headers_named("Received"), ["a", "b"]);
        assert_eq!(message.headers().len(), 3);
        assert_eq!(message.subject(), Some("Hi"));
        assert_eq!(message.from_addresses(), ["a@x.test"]);
        assert!(message.to_addresses().is_empty() && message.cc_addresses().is_empty());
        assert_eq!(message.message_id(), None);
        let names: Vec<_> = message
            .attachments()
            .filter_map(|p| p.filename.as_deref())
            .collect();
        assert_eq!(names, ["q.pdf"]);
        assert_eq!(message.body_text(), None);
    }
}
