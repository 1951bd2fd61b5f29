//! Builders for hook inputs with sensible defaults, so plugin tests stay short.

use crate::types::{
    BounceInput, ChooseInput, DataInput, FailureKind, Header, MailFlags, MailFrom, Message,
    MessageInfo, MimePart, Pool, PoolMember, RcptInput, Session, SmtpReply, Source, Tag,
    Transaction, TransactionInfo,
};

/// The default test message id used by [`choose`] and [`bounce`].
const MESSAGE_ID: &str = "test-message-1";
/// The default envelope sender used by [`choose`] and [`bounce`].
const SENDER: &str = "sender@example.test";

/// A plain session: client `192.0.2.1`, HELO `client.example.test`, no TLS, no AUTH.
pub fn session() -> Session {
    Session {
        client_ip: "192.0.2.1".to_owned(),
        helo: "client.example.test".to_owned(),
        tls: false,
        auth_user: None,
    }
}

/// A transaction on a [`session`]: `MAIL FROM:<mail_from>` without parameters, then
/// `recipients`. Turn it into the [`Transaction`] a hook reads with `Transaction::from`.
pub fn transaction(mail_from: &str, recipients: &[&str]) -> TransactionInfo {
    TransactionInfo {
        session: session(),
        mail_from: MailFrom {
            address: mail_from.to_owned(),
            size: None,
            flags: MailFlags::empty(),
        },
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
    }
}

/// Adjusts a test transaction. The builders only ever get one made from a
/// [`TransactionInfo`]; the relay's transaction is read-only and stays as it is.
fn edit(transaction: &mut Transaction<'_>, change: impl FnOnce(&mut TransactionInfo)) {
    if let Some(info) = transaction.info_mut() {
        change(info);
    }
}

/// The input of `on_rcpt` for `RCPT TO:<to>` after `MAIL FROM:<from>` on a [`session`], as
/// the first recipient of the transaction.
///
/// Adjust with the `with_*` methods or by setting fields:
/// `rcpt("a@x", "b@y").with_auth_user("alice").with_client_ip("198.51.100.7")`.
pub fn rcpt(from: &str, to: &str) -> RcptInput<'static> {
    RcptInput {
        recipient: to.to_owned(),
        accepted_so_far: 0,
        transaction: Transaction::from(transaction(from, &[])),
    }
}

impl RcptInput<'_> {
    /// Sets the client's IP address.
    pub fn with_client_ip(mut self, ip: &str) -> Self {
        edit(&mut self.transaction, |t| {
            t.session.client_ip = ip.to_owned()
        });
        self
    }

    /// Sets the authenticated user.
    pub fn with_auth_user(mut self, user: &str) -> Self {
        edit(&mut self.transaction, |t| {
            t.session.auth_user = Some(user.to_owned());
        });
        self
    }

    /// Sets the EHLO/HELO name.
    pub fn with_helo(mut self, helo: &str) -> Self {
        edit(&mut self.transaction, |t| t.session.helo = helo.to_owned());
        self
    }

    /// Marks the session as TLS-protected.
    pub fn with_tls(mut self) -> Self {
        edit(&mut self.transaction, |t| t.session.tls = true);
        self
    }

    /// Sets MAIL FROM's `SIZE=`.
    pub fn with_size(mut self, size: u64) -> Self {
        edit(&mut self.transaction, |t| t.mail_from.size = Some(size));
        self
    }

    /// Adds MAIL FROM flags, e.g. `MailFlags::EIGHT_BIT_MIME | MailFlags::SMTPUTF8`.
    pub fn with_mail_flags(mut self, flags: MailFlags) -> Self {
        edit(&mut self.transaction, |t| t.mail_from.flags |= flags);
        self
    }

    /// Sets how many recipients were already accepted in the transaction (the count only:
    /// [`RcptInput::with_accepted`] also gives their addresses).
    pub fn with_accepted_so_far(mut self, accepted: u32) -> Self {
        self.accepted_so_far = accepted;
        self
    }

    /// Sets the recipients already accepted in the transaction (what
    /// `input.transaction.recipients()` answers) and their count.
    pub fn with_accepted(mut self, recipients: &[&str]) -> Self {
        self.accepted_so_far = u32::try_from(recipients.len()).unwrap_or(u32::MAX);
        edit(&mut self.transaction, |t| {
            t.recipients = recipients.iter().map(|r| (*r).to_owned()).collect();
        });
        self
    }
}

/// Starts a message for [`data`]: add headers, a body and attachments, then pass it on.
///
/// `message().header("Subject", "x").attachment("a.exe", "application/octet-stream")`
pub fn message() -> MessageBuilder {
    MessageBuilder::default()
}

/// Builds the message that `on_data` sees ([`MessageInfo`], as a [`Message`]), the way the
/// relay's parser would answer for it.
///
/// Headers named Subject, From, To, Cc and Message-ID also fill the matching fields. The
/// MIME structure is a single `text/plain` part, or `multipart/mixed` with the text part
/// and the attachments when there are any. `size` is computed unless set.
#[derive(Debug, Clone, Default)]
pub struct MessageBuilder {
    headers: Vec<Header>,
    body: Option<String>,
    attachments: Vec<MimePart>,
    size: Option<u64>,
}

impl MessageBuilder {
    /// Adds a top-level header field (unfolded, decoded value).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }

    /// Adds a `Subject:` header.
    pub fn subject(self, subject: &str) -> Self {
        self.header("Subject", subject)
    }

    /// Adds a `From:` header.
    pub fn from(self, address: &str) -> Self {
        self.header("From", address)
    }

    /// Adds a `To:` header.
    pub fn to(self, address: &str) -> Self {
        self.header("To", address)
    }

    /// Sets the body text (a `text/plain` part, and what `body_text()` answers).
    pub fn body(mut self, text: &str) -> Self {
        self.body = Some(text.to_owned());
        self
    }

    /// Adds an attachment part named `filename` of media type `content_type` (size 1024).
    pub fn attachment(self, filename: &str, content_type: &str) -> Self {
        self.attachment_sized(filename, content_type, 1024)
    }

    /// Adds an attachment part with a decoded size in bytes.
    pub fn attachment_sized(mut self, filename: &str, content_type: &str, size: u64) -> Self {
        self.attachments.push(MimePart {
            content_type: content_type.to_ascii_lowercase(),
            filename: Some(filename.to_owned()),
            is_attachment: true,
            size,
        });
        self
    }

    /// Adds any MIME part as is (after the text part and earlier attachments).
    pub fn part(mut self, part: MimePart) -> Self {
        self.attachments.push(part);
        self
    }

    /// Sets the message size in bytes as received (otherwise it is estimated).
    pub fn size(mut self, size: u64) -> Self {
        self.size = Some(size);
        self
    }

    /// The finished [`MessageInfo`].
    pub fn build(self) -> MessageInfo {
        let first = |name: &str| {
            self.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.clone())
        };
        let addresses = |name: &str| -> Vec<String> {
            self.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .flat_map(|h| h.value.split(','))
                .filter_map(bare_address)
                .collect()
        };
        let body = self.body.clone().unwrap_or_default();
        let text_part = MimePart {
            content_type: "text/plain".to_owned(),
            filename: None,
            is_attachment: false,
            size: body.len() as u64,
        };
        let mut parts = Vec::new();
        if !self.attachments.is_empty() {
            let total = text_part.size + self.attachments.iter().map(|p| p.size).sum::<u64>();
            parts.push(MimePart {
                content_type: "multipart/mixed".to_owned(),
                filename: None,
                is_attachment: false,
                size: total,
            });
        }
        parts.push(text_part);
        parts.extend(self.attachments.iter().cloned());
        let estimated = self
            .headers
            .iter()
            .map(|h| (h.name.len() + h.value.len() + 4) as u64)
            .sum::<u64>()
            + parts
                .iter()
                .skip(usize::from(parts.len() > 1))
                .map(|p| p.size)
                .sum::<u64>()
            + 2;
        MessageInfo {
            size: self.size.unwrap_or(estimated),
            subject: first("Subject"),
            from: addresses("From"),
            to: addresses("To"),
            cc: addresses("Cc"),
            message_id: first("Message-ID"),
            parts,
            body_text: self.body.clone(),
            headers: self.headers,
        }
    }

    /// The `on_data` input for this message from `mail_from` to `recipients`; see [`data`].
    pub fn into_data(self, mail_from: &str, recipients: &[&str]) -> DataInput<'static> {
        data(mail_from, recipients, self)
    }
}

impl From<MessageBuilder> for MessageInfo {
    fn from(builder: MessageBuilder) -> Self {
        builder.build()
    }
}

impl From<MessageBuilder> for Message<'static> {
    fn from(builder: MessageBuilder) -> Self {
        Message::from(builder.build())
    }
}

/// `"Alice <alice@example.test>"` -> `alice@example.test`; `None` for an empty item.
fn bare_address(item: &str) -> Option<String> {
    let item = item.trim();
    let address = match (item.rfind('<'), item.rfind('>')) {
        (Some(open), Some(close)) if open < close => &item[open + 1..close],
        _ => item,
    };
    let address = address.trim();
    (!address.is_empty()).then(|| address.to_owned())
}

/// The input of `on_data`: `message` from `mail_from` to `recipients` on a [`session`],
/// without tags from earlier plugins (add them with [`DataInput::with_tag`]).
pub fn data(
    mail_from_address: &str,
    recipients: &[&str],
    message: impl Into<MessageInfo>,
) -> DataInput<'static> {
    DataInput {
        transaction: Transaction::from(transaction(mail_from_address, recipients)),
        message: Message::from(message.into()),
        tags: Vec::new(),
    }
}

impl DataInput<'_> {
    /// Adds a tag as if an earlier plugin had set it.
    pub fn with_tag(mut self, key: &str, value: &str) -> Self {
        self.tags.push(Tag::new(key, value));
        self
    }

    /// Sets the client's IP address.
    pub fn with_client_ip(mut self, ip: &str) -> Self {
        edit(&mut self.transaction, |t| {
            t.session.client_ip = ip.to_owned()
        });
        self
    }

    /// Sets the authenticated user.
    pub fn with_auth_user(mut self, user: &str) -> Self {
        edit(&mut self.transaction, |t| {
            t.session.auth_user = Some(user.to_owned());
        });
        self
    }
}

/// The input of `choose_ip` for a delivery of message `test-message-1` from
/// `sender@example.test` to one recipient at `domain` via `mx.<domain>`, with no sources or
/// pools (add them with [`ChooseInput::with_source`] and [`ChooseInput::with_pool`]).
pub fn choose(domain: &str) -> ChooseInput {
    ChooseInput {
        message_id: MESSAGE_ID.to_owned(),
        tags: Vec::new(),
        sender: SENDER.to_owned(),
        domain: domain.to_owned(),
        mx_host: format!("mx.{domain}"),
        recipients: 1,
        sources: Vec::new(),
        pools: Vec::new(),
    }
}

impl ChooseInput {
    /// Adds a configured source (`[[source]]`): name, IP and EHLO name.
    pub fn with_source(mut self, name: &str, ip: &str, ehlo: &str) -> Self {
        self.sources.push(Source {
            name: name.to_owned(),
            ip: ip.to_owned(),
            ehlo: ehlo.to_owned(),
        });
        self
    }

    /// Adds a pool (`[[pool]]`) of `(source name, weight)` members.
    pub fn with_pool(mut self, name: &str, members: &[(&str, u32)]) -> Self {
        let members = members
            .iter()
            .map(|(source, weight)| PoolMember {
                source: (*source).to_owned(),
                weight: *weight,
            })
            .collect();
        self.pools.push(Pool {
            name: name.to_owned(),
            members,
        });
        self
    }

    /// Adds a tag kept with the message.
    pub fn with_tag(mut self, key: &str, value: &str) -> Self {
        self.tags.push(Tag::new(key, value));
        self
    }

    /// Sets the envelope sender.
    pub fn with_sender(mut self, sender: &str) -> Self {
        self.sender = sender.to_owned();
        self
    }
}

/// The input of `on_bounce` for the first failed attempt to `recipient` of message
/// `test-message-1` from `sender@example.test`: the remote server replied `code enhanced
/// text`, permanent when `code` is 5xx.
pub fn bounce(recipient: &str, code: u16, enhanced: &str, text: &str) -> BounceInput {
    let reply = SmtpReply::new(code, enhanced, text);
    BounceInput {
        message_id: MESSAGE_ID.to_owned(),
        recipient: recipient.to_owned(),
        sender: SENDER.to_owned(),
        attempt: 1,
        kind: FailureKind::RemoteReply,
        permanent: reply.is_permanent(),
        reply,
        source_ip: None,
        mx_host: None,
        tags: Vec::new(),
    }
}

impl BounceInput {
    /// Sets why the attempt failed (timeout, DNS, TLS, ...).
    pub fn with_kind(mut self, kind: FailureKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the attempt number (1 for the first).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Adds a tag kept with the message.
    pub fn with_tag(mut self, key: &str, value: &str) -> Self {
        self.tags.push(Tag::new(key, value));
        self
    }

    /// Sets the source IP the attempt used.
    pub fn with_source_ip(mut self, ip: &str) -> Self {
        self.source_ip = Some(ip.to_owned());
        self
    }

    /// Sets the MX host tried.
    pub fn with_mx_host(mut self, host: &str) -> Self {
        self.mx_host = Some(host.to_owned());
        self
    }

    /// Sets the envelope sender.
    pub fn with_sender(mut self, sender: &str) -> Self {
        self.sender = sender.to_owned();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rcpt_has_plain_session_and_adjustments() {
        let input = rcpt("a@x.test", "b@y.test")
            .with_auth_user("alice")
            .with_client_ip("198.51.100.7")
            .with_size(10)
            .with_mail_flags(MailFlags::EIGHT_BIT_MIME)
            .with_tls()
            .with_accepted_so_far(2);
        assert_eq!(input.recipient, "b@y.test");
        assert_eq!(input.mail_from().address, "a@x.test");
        assert_eq!(input.session().auth_user.as_deref(), Some("alice"));
        assert_eq!(input.session().client_ip, "198.51.100.7");
        assert_eq!(input.session().helo, "client.example.test");
        assert!(input.session().tls);
        assert_eq!(input.mail_from().size, Some(10));
        assert!(input.mail_from().is_8bitmime());
        assert_eq!(input.accepted_so_far, 2);
        assert!(input.transaction.recipients().is_empty());
    }

    #[test]
    fn rcpt_is_the_first_recipient_until_others_are_accepted() {
        let first = rcpt("a@x.test", "b@y.test").with_helo("mx.x.test");
        assert_eq!(first.accepted_so_far, 0);
        assert!(first.transaction.recipients().is_empty());
        assert_eq!(first.session().helo, "mx.x.test");

        let third = first.with_accepted(&["c@y.test", "d@y.test"]);
        assert_eq!(third.accepted_so_far, 2);
        assert_eq!(third.transaction.recipients(), ["c@y.test", "d@y.test"]);
        assert_eq!(third.session().helo, "mx.x.test", "other fields are kept");
    }

    #[test]
    fn transaction_builds_the_plain_data_a_hook_reads() {
        let info = transaction("a@x.test", &["b@y.test"]);
        assert_eq!(info.session, session());
        assert_eq!(info.mail_from.address, "a@x.test");
        assert_eq!(info.mail_from.size, None);
        assert!(info.mail_from.flags.is_empty());
        let read = Transaction::from(info.clone());
        assert_eq!(read.recipients(), info.recipients);
    }

    #[test]
    fn message_headers_fill_the_parsed_fields() {
        let info = message()
            .subject("Hi")
            .from("Alice <alice@x.test>")
            .to("bob@y.test, Carol <carol@y.test>")
            .header("Cc", "dan@y.test")
            .header("Message-ID", "<1@x.test>")
            .build();
        assert_eq!(info.subject.as_deref(), Some("Hi"));
        assert_eq!(info.from, ["alice@x.test"]);
        assert_eq!(info.to, ["bob@y.test", "carol@y.test"]);
        assert_eq!(info.cc, ["dan@y.test"]);
        assert_eq!(info.message_id.as_deref(), Some("<1@x.test>"));
        assert_eq!(
            Message::from(info.clone()).header("subject").as_deref(),
            Some("Hi")
        );
        assert_eq!(info.parts.len(), 1);
        assert_eq!(info.parts[0].content_type, "text/plain");
        assert!(info.size > 0);
    }

    #[test]
    fn attachments_make_a_multipart_message() {
        let info = message()
            .body("see attached")
            .attachment("a.exe", "Application/Octet-Stream")
            .attachment_sized("b.pdf", "application/pdf", 10)
            .size(5_000)
            .build();
        let types: Vec<&str> = info.parts.iter().map(|p| p.content_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "multipart/mixed",
                "text/plain",
                "application/octet-stream",
                "application/pdf"
            ]
        );
        let message = Message::from(info.clone());
        let names: Vec<&str> = message
            .attachments()
            .filter_map(|p| p.filename.as_deref())
            .collect();
        assert_eq!(names, ["a.exe", "b.pdf"]);
        assert_eq!(message.body_text(), Some("see attached"));
        assert_eq!(info.size, 5_000);
    }

    #[test]
    fn data_choose_and_bounce_inputs() {
        let input = message()
            .subject("x")
            .into_data("a@x.test", &["b@y.test", "c@y.test"])
            .with_tag("k", "v")
            .with_client_ip("2001:db8::1")
            .with_auth_user("alice");
        assert_eq!(input.recipients(), ["b@y.test", "c@y.test"]);
        assert_eq!(input.mail_from().address, "a@x.test");
        assert_eq!(input.session().client_ip, "2001:db8::1");
        assert_eq!(input.session().auth_user.as_deref(), Some("alice"));
        assert_eq!(input.tag("k"), Some("v"));

        let choose = choose("y.test")
            .with_source("mta1", "127.0.0.2", "mta1.x.test")
            .with_pool("warm", &[("mta1", 3)]);
        assert_eq!(choose.mx_host, "mx.y.test");
        assert_eq!(
            choose.pools[0].members[0],
            PoolMember {
                source: "mta1".into(),
                weight: 3
            }
        );

        let hard = bounce("b@y.test", 550, "5.1.1", "No such user");
        assert!(hard.permanent);
        assert_eq!(hard.kind, FailureKind::RemoteReply);
        let soft = bounce("b@y.test", 451, "4.7.1", "Slow down")
            .with_kind(FailureKind::Timeout)
            .with_attempt(3);
        assert!(!soft.permanent);
        assert_eq!(soft.attempt, 3);
    }
}
