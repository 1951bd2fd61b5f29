//! Returned bounces: RFC 3464 delivery status notifications that come back to a bounce
//! address after the relay delivered a message, parsed into what `on_bounce` needs.
//!
//! mail-parser finds the MIME parts; the `message/delivery-status` fields themselves are
//! header-like blocks separated by blank lines (RFC 3464 2.1) and are parsed here, with
//! folding and case-insensitive names. Everything is bounded: a DSN is outside input.

use mail_parser::{MessageParser, MessagePart, MimeHeaders, PartType};

use crate::hooks;
use crate::policy::{BounceAction, BounceInput, FailureKind, Hook, PluginSet};
use crate::smtp::{EnhancedCode, Mailbox, Reply};
use crate::spool::MessageId;

/// Most recipient blocks taken from one DSN; the rest are ignored.
pub(crate) const MAX_RECIPIENTS: usize = 100;
/// Longest field value kept (RFC 5322 line limit); longer values are cut.
const MAX_FIELD: usize = 998;
/// Most fields read from one block.
const MAX_FIELDS_PER_BLOCK: usize = 64;
/// Most bytes of the delivery-status part read.
const MAX_STATUS_BYTES: usize = 256 * 1024;
/// Most bytes of the returned header section searched for the relay's id.
const MAX_RETURNED_HEADER_BYTES: usize = 64 * 1024;

/// Why a message to a bounce address was not a usable DSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DsnError {
    /// mail-parser could not make sense of the message at all.
    #[error("not a MIME message")]
    NotMime,
    /// No `message/delivery-status` part (RFC 3464 2): an auto-reply, spam, or a
    /// non-standard bounce.
    #[error("no message/delivery-status part")]
    NoDeliveryStatus,
    /// The delivery-status part has no recipient block with `Action: failed` or `delayed`.
    #[error("no failed or delayed recipient in the delivery-status part")]
    NoFailedRecipient,
}

/// What a returned DSN says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dsn {
    /// The relay's queue id of the original message (from our `Received:` field in the
    /// returned headers), else its `Message-ID`, else "".
    pub(crate) message_id: String,
    /// The failed and delayed recipients, at most [`MAX_RECIPIENTS`].
    pub(crate) recipients: Vec<DsnRecipient>,
}

/// The `Action` of a recipient block that the relay reports to plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DsnAction {
    /// `Action: failed`: the receiver gave up.
    Failed,
    /// `Action: delayed`: the receiver is still trying (never permanent).
    Delayed,
}

impl DsnAction {
    /// The action as written in RFC 3464, for logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
        }
    }
}

/// The `Diagnostic-Code` of a recipient block, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Diagnostic {
    /// The three-digit SMTP reply code, if the text starts with one (4xx or 5xx).
    pub(crate) code: Option<u16>,
    /// The enhanced status code after the reply code, if any.
    pub(crate) enhanced: Option<EnhancedCode>,
    /// The rest of the text, on one line.
    pub(crate) text: String,
}

/// One recipient block of the delivery-status part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DsnRecipient {
    /// `Final-Recipient` (else `Original-Recipient`) without its address type.
    pub(crate) recipient: String,
    /// What happened to it.
    pub(crate) action: DsnAction,
    /// `Status`, e.g. 5.1.1.
    pub(crate) status: Option<EnhancedCode>,
    /// `Diagnostic-Code` without its `smtp;` type.
    pub(crate) diagnostic: Option<Diagnostic>,
    /// `Remote-MTA` without its `dns;` type.
    pub(crate) remote_mta: Option<String>,
}

impl DsnRecipient {
    /// True when the receiver gave up for good: `Action: failed` with a 5.x.x status (or,
    /// without a status, a 5xx diagnostic).
    pub(crate) fn permanent(&self) -> bool {
        self.action == DsnAction::Failed && self.class() == Some(5)
    }

    /// The status class (4 or 5) from `Status`, else from the diagnostic.
    fn class(&self) -> Option<u8> {
        self.status.map(|s| s.0).or_else(|| {
            let d = self.diagnostic.as_ref()?;
            d.enhanced.map(|e| e.0).or(d.code.map(|c| (c / 100) as u8))
        })
    }

    /// The receiver's reply: the diagnostic's code and text when it has a code, otherwise
    /// one synthesised from `Status` (550/450). Its class always matches [`Self::permanent`].
    pub(crate) fn reply(&self) -> Reply {
        let permanent = self.permanent();
        let class = if permanent { 5 } else { 4 };
        let diagnostic = self.diagnostic.as_ref();
        let enhanced = diagnostic
            .and_then(|d| d.enhanced)
            .or(self.status)
            .filter(|e| e.0 == class)
            .unwrap_or(EnhancedCode(class, 0, 0));
        let code = diagnostic
            .and_then(|d| d.code)
            .filter(|c| (c / 100) as u8 == class)
            .unwrap_or(if permanent { 550 } else { 450 });
        let text = match diagnostic.map(|d| d.text.as_str()) {
            Some(text) if !text.is_empty() => text.to_string(),
            _ => match self.status {
                Some(status) => format!("Returned DSN: {} (status {status})", self.action.as_str()),
                None => format!("Returned DSN: {}", self.action.as_str()),
            },
        };
        Reply::new(code, Some(enhanced), text)
    }
}

/// Parses a message sent to a bounce address as an RFC 3464 DSN.
pub(crate) fn parse(raw: &[u8]) -> Result<Dsn, DsnError> {
    let message = MessageParser::default()
        .parse(raw)
        .ok_or(DsnError::NotMime)?;
    let mut status_part = None;
    let mut returned = None;
    for part in &message.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let ctype = ct.ctype();
        let subtype = ct.subtype().unwrap_or_default();
        if ctype.eq_ignore_ascii_case("message")
            && (subtype.eq_ignore_ascii_case("delivery-status")
                || subtype.eq_ignore_ascii_case("global-delivery-status"))
        {
            status_part.get_or_insert(part);
        } else if (ctype.eq_ignore_ascii_case("text")
            && subtype.eq_ignore_ascii_case("rfc822-headers"))
            || (ctype.eq_ignore_ascii_case("message")
                && (subtype.eq_ignore_ascii_case("rfc822")
                    || subtype.eq_ignore_ascii_case("global")
                    || subtype.eq_ignore_ascii_case("global-headers")))
        {
            returned.get_or_insert(part);
        }
    }
    let status_part = status_part.ok_or(DsnError::NoDeliveryStatus)?;
    let body = status_part.contents();
    let body = String::from_utf8_lossy(&body[..body.len().min(MAX_STATUS_BYTES)]);
    let recipients: Vec<DsnRecipient> = blocks(&body)
        .iter()
        .filter_map(recipient)
        .take(MAX_RECIPIENTS)
        .collect();
    if recipients.is_empty() {
        return Err(DsnError::NoFailedRecipient);
    }
    Ok(Dsn {
        message_id: returned.map(original_id).unwrap_or_default(),
        recipients,
    })
}

/// Handles a message sent to bounce address `to`: parses it as a DSN and shows each failed or
/// delayed recipient to `on_bounce`, logging the verdict (`bounce_returned`); a message that
/// is no DSN is logged (`bounce_unparsed`). Either way it is dropped: the caller answers 250
/// and never bounces it back (no backscatter).
pub(crate) fn handle_returned(raw: &[u8], to: &Mailbox, client: &str, plugins: Option<&PluginSet>) {
    let dsn = match parse(raw) {
        Ok(dsn) => dsn,
        Err(err) => {
            tracing::info!(event = "bounce_unparsed", to = %to, client = %client, size = raw.len(), error = %err, "message to a bounce address is not a usable DSN; dropped");
            return;
        }
    };
    let sender = to.to_string();
    let plugins = plugins.filter(|p| p.implements(Hook::OnBounce));
    for rcpt in &dsn.recipients {
        let reply = rcpt.reply();
        let verdict = plugins.map(|p| p.on_bounce(&bounce_input(&dsn, rcpt, &sender, &reply)));
        let (action, class) = match verdict {
            Some(v) => (v.action, v.class.unwrap_or_default()),
            None => (BounceAction::NoOpinion, String::new()),
        };
        // After delivery there is nothing to retry or bounce: only suppress (which the
        // plugin has already recorded in its own state) and the class mean something here.
        let action = match action {
            BounceAction::NoOpinion => "no-opinion",
            BounceAction::Suppress => "suppress",
            BounceAction::BounceNow => "bounce-now (ignored after delivery)",
            BounceAction::RetryAt(_) => "retry-at (ignored after delivery)",
        };
        let status = rcpt.status.map(|s| s.to_string()).unwrap_or_default();
        tracing::info!(
            event = "bounce_returned",
            msg_id = %dsn.message_id,
            rcpt = %rcpt.recipient,
            status = %status,
            dsn_action = rcpt.action.as_str(),
            permanent = rcpt.permanent(),
            mx = rcpt.remote_mta.as_deref().unwrap_or(""),
            reply = %crate::delivery::reply_text(&reply),
            class = %class,
            action,
            to = %to,
            client = %client,
            "returned DSN shown to on_bounce"
        );
        crate::metrics::global().bounce_returned();
    }
}

/// on_bounce's input for one recipient of a returned DSN: a remote reply, attempt 0 (after
/// delivery), the bounce address as sender, the Remote-MTA as MX, no source IP or tags.
fn bounce_input(dsn: &Dsn, rcpt: &DsnRecipient, sender: &str, reply: &Reply) -> BounceInput {
    BounceInput {
        message_id: dsn.message_id.clone(),
        recipient: rcpt.recipient.clone(),
        sender: sender.to_string(),
        attempt: 0,
        kind: FailureKind::RemoteReply,
        reply: hooks::smtp_reply(reply),
        permanent: rcpt.permanent(),
        source_ip: None,
        mx_host: rcpt.remote_mta.clone(),
        tags: Vec::new(),
    }
}

/// One block of fields: (lower-case name, unfolded value) in order.
type Block = Vec<(String, String)>;

/// Splits the delivery-status text into blocks at blank lines and each block into fields,
/// joining folded lines (RFC 3464 2.1, RFC 5322 2.2.3).
fn blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut block: Block = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
            if blocks.len() > MAX_RECIPIENTS + 1 {
                break;
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = block.last_mut() {
                if value.len() < MAX_FIELD {
                    value.push(' ');
                    value.push_str(line.trim());
                    cut(value, MAX_FIELD);
                }
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            // Not a field: RFC 3464 has no such lines; skip it rather than guess.
            continue;
        };
        if block.len() < MAX_FIELDS_PER_BLOCK {
            let mut value = value.trim().to_string();
            cut(&mut value, MAX_FIELD);
            block.push((name.trim().to_ascii_lowercase(), value));
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
}

/// A recipient block with `Action: failed` or `delayed`; other blocks (the per-message one,
/// delivered/relayed/expanded recipients) give `None`.
fn recipient(block: &Block) -> Option<DsnRecipient> {
    let field = |name: &str| {
        block
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let action = match field("action")?.trim().to_ascii_lowercase().as_str() {
        "failed" => DsnAction::Failed,
        "delayed" => DsnAction::Delayed,
        _ => return None,
    };
    let recipient = field("final-recipient")
        .or_else(|| field("original-recipient"))
        .map(without_type)
        .map(|r| {
            r.trim_start_matches('<')
                .trim_end_matches('>')
                .trim()
                .to_string()
        })
        .filter(|r| !r.is_empty())?;
    let status = field("status").and_then(|s| {
        // "5.1.1 (comment)" happens; the code is the first word.
        s.split_whitespace().next().and_then(hooks::parse_enhanced)
    });
    let diagnostic = field("diagnostic-code")
        .map(without_type)
        .map(diagnostic)
        .filter(|d| d.code.is_some() || !d.text.is_empty());
    let remote_mta = field("remote-mta")
        .map(without_type)
        .map(str::to_string)
        .filter(|m| !m.is_empty());
    Some(DsnRecipient {
        recipient,
        action,
        status,
        diagnostic,
        remote_mta,
    })
}

/// The value after its `type;` prefix (`rfc822;`, `smtp;`, `dns;`); as is without one.
fn without_type(value: &str) -> &str {
    match value.split_once(';') {
        Some((kind, rest))
            if !kind.is_empty()
                && kind
                    .trim()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            rest.trim()
        }
        _ => value.trim(),
    }
}

/// Splits `550-5.1.1 text 550 5.1.1 more text` into code, enhanced code and text, dropping
/// the code prefixes that multi-line replies repeat on every line.
fn diagnostic(text: &str) -> Diagnostic {
    let bytes = text.as_bytes();
    let code = (bytes.len() >= 3
        && bytes[..3].iter().all(u8::is_ascii_digit)
        && matches!(bytes[0], b'4' | b'5')
        && bytes.get(3).is_none_or(|b| matches!(b, b' ' | b'-')))
    .then(|| text[..3].parse::<u16>().ok())
    .flatten();
    let rest = match code {
        Some(_) => text.get(4..).unwrap_or_default(),
        None => text,
    };
    let first = rest.split_whitespace().next().unwrap_or_default();
    let enhanced = code.and(hooks::parse_enhanced(first));
    let (code_text, enhanced_text) = (
        code.map(|c| c.to_string()).unwrap_or_default(),
        enhanced.map(|e| e.to_string()).unwrap_or_default(),
    );
    let words: Vec<&str> = rest
        .split_whitespace()
        .filter(|w| {
            code.is_none()
                || (*w != code_text
                    && *w != enhanced_text
                    && *w != format!("{code_text}-{enhanced_text}")
                    && *w != format!("{code_text}-"))
        })
        .collect();
    let mut text = words.join(" ");
    cut(&mut text, MAX_FIELD);
    Diagnostic {
        code,
        enhanced,
        text,
    }
}

/// The original message's id from the returned headers: our own `Received: ... (relay)
/// with ... id ID` field first (the relay's queue id), else `Message-ID`, else "".
fn original_id(part: &MessagePart<'_>) -> String {
    let raw: &[u8] = match &part.body {
        PartType::Message(message) => message.raw_message(),
        _ => part.contents(),
    };
    let raw = &raw[..raw.len().min(MAX_RETURNED_HEADER_BYTES)];
    let text = String::from_utf8_lossy(raw);
    // The header section ends at the first blank line (text/rfc822-headers may have none).
    let header: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).collect();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in header {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                if value.len() < MAX_FIELD {
                    value.push(' ');
                    value.push_str(line.trim());
                }
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let ours = fields
        .iter()
        .filter(|(name, value)| name == "received" && value.contains("(relay)"))
        .find_map(|(_, value)| {
            let mut words = value.split_whitespace();
            while let Some(word) = words.next() {
                if word.eq_ignore_ascii_case("id") {
                    let id = words.next()?.trim_end_matches(';');
                    return id.parse::<MessageId>().ok().map(|id| id.to_string());
                }
            }
            None
        });
    ours.or_else(|| {
        fields
            .iter()
            .find(|(name, _)| name == "message-id")
            .map(|(_, value)| {
                let mut value = value.clone();
                cut(&mut value, MAX_FIELD);
                value
            })
    })
    .unwrap_or_default()
}

/// Cuts `text` to at most `max` bytes at a character boundary.
fn cut(text: &mut String, max: usize) {
    text.truncate(text.floor_char_boundary(max));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Postfix bounce of a message the relay sent (our Received field in the headers).
    fn postfix_dsn(id: &str) -> String {
        format!(
            "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n\
             To: b@bounces.example.com\r\n\
             Subject: Undelivered Mail Returned to Sender\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status;\r\n\
             \tboundary=\"B1\"\r\n\
             \r\n\
             --B1\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             \r\n\
             I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients.\r\n\
             \r\n\
             --B1\r\n\
             Content-Type: message/delivery-status\r\n\
             \r\n\
             Reporting-MTA: dns; mx.example.net\r\n\
             X-Postfix-Queue-ID: 4Fabc123\r\n\
             Arrival-Date: Mon, 23 Nov 2026 13:45:00 +0000 (UTC)\r\n\
             \r\n\
             Final-Recipient: rfc822; gone@example.net\r\n\
             Original-Recipient: rfc822;gone@example.net\r\n\
             Action: failed\r\n\
             Status: 5.1.1\r\n\
             Remote-MTA: dns; mailstore.example.net\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 <gone@example.net>: Recipient address\r\n\
             \x20   rejected: User unknown in local recipient table\r\n\
             \r\n\
             --B1\r\n\
             Content-Type: text/rfc822-headers\r\n\
             \r\n\
             Received: from relay.test (relay.test [192.0.2.1])\r\n\
             \tby mx.example.net (Postfix) with ESMTPS id 4Fabc123\r\n\
             \tfor <gone@example.net>; Mon, 23 Nov 2026 13:45:00 +0000 (UTC)\r\n\
             Received: from client.test ([127.0.0.1])\r\n\
             \tby relay.test (relay) with ESMTP id {id}\r\n\
             \tfor <gone@example.net>; Mon, 23 Nov 2026 13:44:59 +0000\r\n\
             Message-ID: <orig-1@client.test>\r\n\
             Subject: hello\r\n\
             \r\n\
             --B1--\r\n"
        )
    }

    #[test]
    fn postfix_dsn_yields_recipient_status_diagnostic_and_our_queue_id() {
        let id = MessageId::generate().to_string();
        let dsn = parse(postfix_dsn(&id).as_bytes()).unwrap();
        assert_eq!(dsn.message_id, id);
        assert_eq!(dsn.recipients.len(), 1);
        let r = &dsn.recipients[0];
        assert_eq!(r.recipient, "gone@example.net");
        assert_eq!(r.action, DsnAction::Failed);
        assert_eq!(r.status, Some(EnhancedCode(5, 1, 1)));
        assert_eq!(r.remote_mta.as_deref(), Some("mailstore.example.net"));
        let d = r.diagnostic.as_ref().unwrap();
        assert_eq!(d.code, Some(550));
        assert_eq!(d.enhanced, Some(EnhancedCode(5, 1, 1)));
        assert_eq!(
            d.text,
            "<gone@example.net>: Recipient address rejected: User unknown in local recipient table"
        );
        assert!(r.permanent());
        let reply = r.reply();
        assert_eq!(
            (reply.code, reply.enhanced),
            (550, Some(EnhancedCode(5, 1, 1)))
        );
    }

    #[test]
    fn gmail_dsn_with_multiline_diagnostic_and_returned_message() {
        let raw = "From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r\n\
             To: b@bounces.example.com\r\n\
             Subject: Delivery Status Notification (Failure)\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; boundary=\"000000000000abc\"; report-type=delivery-status\r\n\
             \r\n\
             --000000000000abc\r\n\
             Content-Type: multipart/related; boundary=\"000000000000def\"\r\n\
             \r\n\
             --000000000000def\r\n\
             Content-Type: text/plain; charset=\"UTF-8\"\r\n\
             \r\n\
             Address not found\r\n\
             --000000000000def--\r\n\
             --000000000000abc\r\n\
             Content-Type: message/delivery-status\r\n\
             \r\n\
             Reporting-MTA: dns; googlemail.com\r\n\
             Received-From-MTA: dns; relay.test\r\n\
             Arrival-Date: Mon, 23 Nov 2026 05:49:28 -0800 (PST)\r\n\
             X-Original-Message-ID: <orig-2@client.test>\r\n\
             \r\n\
             Final-Recipient: rfc822; nobody@gmail.com\r\n\
             Action: failed\r\n\
             Status: 5.1.1\r\n\
             Remote-MTA: dns; gmail-smtp-in.l.google.com. (142.250.1.27, the server for the\r\n\
             \x20domain gmail.com.)\r\n\
             Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does\r\n\
             \x20not exist. Please try\r\n\
             \x20550-5.1.1 double-checking the recipient's email address for typos or\r\n\
             \x20550 5.1.1 https://support.google.com/mail/?p=NoSuchUser a1si2\r\n\
             Last-Attempt-Date: Mon, 23 Nov 2026 05:49:29 -0800 (PST)\r\n\
             \r\n\
             --000000000000abc\r\n\
             Content-Type: message/rfc822\r\n\
             \r\n\
             Message-ID: <orig-2@client.test>\r\n\
             Subject: hi\r\n\
             From: a@client.test\r\n\
             \r\n\
             body\r\n\
             --000000000000abc--\r\n";
        let dsn = parse(raw.as_bytes()).unwrap();
        assert_eq!(dsn.message_id, "<orig-2@client.test>");
        let r = &dsn.recipients[0];
        assert_eq!(r.recipient, "nobody@gmail.com");
        assert_eq!(
            r.remote_mta.as_deref(),
            Some(
                "gmail-smtp-in.l.google.com. (142.250.1.27, the server for the domain gmail.com.)"
            )
        );
        let d = r.diagnostic.as_ref().unwrap();
        assert_eq!(
            (d.code, d.enhanced),
            (Some(550), Some(EnhancedCode(5, 1, 1)))
        );
        assert_eq!(
            d.text,
            "The email account that you tried to reach does not exist. Please try \
             double-checking the recipient's email address for typos or \
             https://support.google.com/mail/?p=NoSuchUser a1si2"
        );
    }

    #[test]
    fn folded_fields_and_odd_case_are_understood_and_delayed_is_not_permanent() {
        let raw = "Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\
             \r\n\
             --x\r\n\
             Content-Type: Message/Delivery-Status\r\n\
             \r\n\
             reporting-mta: dns;\r\n\
             \tmx.example.org\r\n\
             \r\n\
             FINAL-RECIPIENT:\r\n\
             \trfc822;\r\n\
             \tfull@example.org\r\n\
             ACTION: Delayed\r\n\
             status: 4.2.2\r\n\
             diagnostic-code: SMTP; 452 4.2.2\r\n\
             \tMailbox full\r\n\
             \r\n\
             Final-Recipient: rfc822; ok@example.org\r\n\
             Action: delivered\r\n\
             Status: 2.0.0\r\n\
             \r\n\
             --x--\r\n";
        let dsn = parse(raw.as_bytes()).unwrap();
        assert_eq!(dsn.message_id, "");
        assert_eq!(dsn.recipients.len(), 1, "delivered recipients are left out");
        let r = &dsn.recipients[0];
        assert_eq!(r.recipient, "full@example.org");
        assert_eq!(r.action, DsnAction::Delayed);
        assert!(!r.permanent());
        let reply = r.reply();
        assert_eq!(
            (reply.code, reply.enhanced),
            (452, Some(EnhancedCode(4, 2, 2)))
        );
        assert_eq!(reply.lines, vec!["Mailbox full".to_string()]);
    }

    #[test]
    fn a_status_without_diagnostic_gets_a_synthesised_reply() {
        let raw = "Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\
             \r\n\
             --x\r\n\
             Content-Type: message/delivery-status\r\n\
             \r\n\
             Final-Recipient: rfc822; <who@example.org>\r\n\
             Action: failed\r\n\
             Status: 5.2.1 (mailbox disabled)\r\n\
             \r\n\
             --x--\r\n";
        let r = &parse(raw.as_bytes()).unwrap().recipients[0];
        assert_eq!(r.recipient, "who@example.org");
        let reply = r.reply();
        assert_eq!(
            (reply.code, reply.enhanced),
            (550, Some(EnhancedCode(5, 2, 1)))
        );
        assert!(r.permanent());
    }

    #[test]
    fn bounce_input_is_a_remote_reply_after_delivery_from_the_bounce_address() {
        let id = MessageId::generate().to_string();
        let dsn = parse(postfix_dsn(&id).as_bytes()).unwrap();
        let rcpt = &dsn.recipients[0];
        let input = bounce_input(&dsn, rcpt, "b@bounces.example.com", &rcpt.reply());
        assert_eq!(input.message_id, id);
        assert_eq!(input.recipient, "gone@example.net");
        assert_eq!(input.sender, "b@bounces.example.com");
        assert_eq!(input.attempt, 0);
        assert!(matches!(input.kind, FailureKind::RemoteReply));
        assert!(input.permanent);
        assert_eq!(
            (input.reply.code, input.reply.enhanced.as_str()),
            (550, "5.1.1")
        );
        assert_eq!(input.mx_host.as_deref(), Some("mailstore.example.net"));
        assert_eq!(input.source_ip, None);
        assert!(input.tags.is_empty());
    }

    #[test]
    fn malformed_reports_are_errors_not_panics() {
        assert_eq!(
            parse(b"Subject: out of office\r\n\r\nI am away.\r\n"),
            Err(DsnError::NoDeliveryStatus)
        );
        let no_action = "Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\n\
             Content-Type: message/delivery-status\r\n\r\n\
             garbage without colon\r\n\
             Final-Recipient: rfc822; a@b\r\n\
             Action\r\n\
             Status: 5.1.1\r\n--x--\r\n";
        assert_eq!(
            parse(no_action.as_bytes()),
            Err(DsnError::NoFailedRecipient)
        );
        let no_recipient = "Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\n\
             Content-Type: message/delivery-status\r\n\r\n\
             Action: failed\r\nStatus: 9.9\r\nDiagnostic-Code: smtp; 5\r\n--x--\r\n";
        assert_eq!(
            parse(no_recipient.as_bytes()),
            Err(DsnError::NoFailedRecipient)
        );
        for junk in [
            &b""[..],
            b"\xff\xfe\x00",
            b"Content-Type: message/delivery-status\r\n\r\n:\r\n \r\n\t",
        ] {
            let _ = parse(junk);
        }
    }

    #[test]
    fn recipient_blocks_and_field_lengths_are_bounded() {
        let mut raw = String::from(
            "Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\n\
             Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; a\r\n",
        );
        for i in 0..(MAX_RECIPIENTS + 50) {
            raw.push_str(&format!(
                "\r\nFinal-Recipient: rfc822; u{i}@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\
                 Diagnostic-Code: smtp; 550 {}\r\n",
                "x".repeat(2000)
            ));
        }
        raw.push_str("--x--\r\n");
        let dsn = parse(raw.as_bytes()).unwrap();
        assert_eq!(dsn.recipients.len(), MAX_RECIPIENTS);
        assert!(dsn
            .recipients
            .iter()
            .all(|r| r.diagnostic.as_ref().unwrap().text.len() <= MAX_FIELD));
    }
}
