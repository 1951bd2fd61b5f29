//! Non-delivery reports: RFC 3464 delivery status notifications in an RFC 6522 multipart/report.

use std::fmt::Write as _;

use crate::smtp::{rfc5322_date, EnhancedCode, Mailbox, Reply};

/// Longest line we write, CRLF excluded (RFC 5322 2.1.1).
const MAX_LINE: usize = 998;
/// Where text we generate (explanations, folded diagnostics) is wrapped.
const WRAP: usize = 76;
/// Most characters of a remote diagnostic kept in a report; replies are outside input.
const MAX_DIAGNOSTIC: usize = 1500;

/// One recipient the report is about.
#[derive(Clone, Debug)]
pub(crate) struct FailedRecipient {
    /// The recipient as given in RCPT TO.
    pub rcpt: Mailbox,
    /// RFC 3463 status for the `Status:` field (5.x.y for a failure).
    pub status: EnhancedCode,
    /// The remote server's reply, if a server refused the recipient.
    pub diagnostic: Option<Reply>,
    /// The host that gave `diagnostic`, for `Remote-MTA:`.
    pub remote_mta: Option<String>,
    /// A sentence for people: why the message could not be delivered.
    pub reason: String,
}

/// Everything a bounce is built from.
#[derive(Clone, Debug)]
pub(crate) struct BounceInput<'a> {
    /// Our host name: `Reporting-MTA`, `MAILER-DAEMON@` and the Message-ID domain.
    pub reporting_mta: &'a str,
    /// Our queue id of the failed message; reported as `X-Relay-Queue-ID` (an
    /// `Original-Envelope-Id` field is only allowed for a client-given ENVID, RFC 3464 2.2.1).
    pub original_envelope_id: &'a str,
    /// When the failed message was received, in Unix seconds.
    pub arrival_date: u64,
    /// Now, in Unix seconds: the report's `Date`.
    pub now: u64,
    /// The envelope sender of the failed message: the report's recipient.
    pub original_sender: &'a Mailbox,
    /// The recipients the report is about (at least one).
    pub failed: &'a [FailedRecipient],
    /// The failed message as spooled; only its header section is returned.
    pub original_message: &'a [u8],
}

/// Builds the complete report (RFC 5322 message, CRLF line endings) to be sent from `<>` to
/// the original sender: a text/plain explanation, a message/delivery-status part and the
/// original header section as text/rfc822-headers, in a multipart/report (RFC 6522). Marked
/// `Auto-Submitted: auto-replied` (RFC 3834). Every line stays within 998 octets; remote
/// diagnostics are cleaned of control characters, trimmed and folded.
///
/// The report is 7-bit unless the original header section carried 8-bit bytes or an
/// address is non-ASCII; then it needs 8BITMIME (and SMTPUTF8 for such addresses) to travel.
pub(crate) fn build_bounce(input: &BounceInput) -> Vec<u8> {
    let token = random_token();
    build_bounce_with_token(input, &token)
}

/// [`build_bounce`] with a given unique token (used in Message-ID and the MIME boundary).
fn build_bounce_with_token(input: &BounceInput, token: &str) -> Vec<u8> {
    let host = clean_line(input.reporting_mta, 255);
    let headers = original_headers(input.original_message);
    let explanation = explanation(input, &host);
    let status = delivery_status(input, &host);

    // The boundary must not occur in any part (RFC 2046 5.1.1); the token makes a clash all
    // but impossible, and a clash is still checked for.
    let mut boundary = format!("=_relay_bounce_{token}");
    let mut suffix = 0u32;
    while [
        explanation.as_bytes(),
        status.as_bytes(),
        headers.as_slice(),
    ]
    .iter()
    .any(|part| contains(part, boundary.as_bytes()))
    {
        suffix += 1;
        boundary = format!("=_relay_bounce_{token}_{suffix}");
    }

    let mut out = String::new();
    let _ = write!(
        out,
        "From: \"Mail Delivery System\" <MAILER-DAEMON@{host}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{now}.{token}@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         {explanation}\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         {status}\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Undelivered Message Headers\r\n\
         Content-Type: text/rfc822-headers\r\n",
        sender = clean_address(&input.original_sender.to_string()),
        date = rfc5322_date(input.now),
        now = input.now,
    );
    if !headers.is_ascii() {
        out.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&headers);
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The human-readable part, in the style people know from Postfix.
fn explanation(input: &BounceInput, host: &str) -> String {
    let mut text = format!(
        "This is the mail system at host {host}.\r\n\
         \r\n\
         I'm sorry to have to inform you that your message could not\r\n\
         be delivered to one or more recipients. It's attached below.\r\n\
         \r\n\
         For further assistance, please send mail to postmaster.\r\n\
         \r\n\
         If you do so, please include this problem report.\r\n\
         \r\n"
    );
    for failed in input.failed {
        let rcpt = clean_address(&failed.rcpt.to_string());
        let paragraph = match &failed.diagnostic {
            Some(reply) => {
                let summary = reply_summary(reply);
                let remote = failed
                    .remote_mta
                    .as_deref()
                    .map(|mta| format!("host {mta}"))
                    .unwrap_or_else(|| "the remote server".to_owned());
                if failed.reason.trim() == summary || failed.reason.trim().is_empty() {
                    format!("<{rcpt}>: {remote} said: {summary}")
                } else {
                    format!("<{rcpt}>: {} ({remote} said: {summary})", failed.reason)
                }
            }
            None => format!("<{rcpt}>: {}", failed.reason),
        };
        for line in wrap(&clean_line(&paragraph, MAX_DIAGNOSTIC), WRAP) {
            text.push_str(&line);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
    }
    text
}

/// The message/delivery-status body (RFC 3464 2.2 and 2.3).
fn delivery_status(input: &BounceInput, host: &str) -> String {
    let mut text = String::new();
    let _ = write!(
        text,
        "Reporting-MTA: dns; {host}\r\n\
         X-Relay-Queue-ID: {}\r\n\
         Arrival-Date: {}\r\n",
        clean_line(input.original_envelope_id, 200),
        rfc5322_date(input.arrival_date),
    );
    for failed in input.failed {
        let rcpt = clean_address(&failed.rcpt.to_string());
        // RFC 6533 3: "utf-8" address type for internationalised addresses.
        let addr_type = if failed.rcpt.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        let _ = write!(
            text,
            "\r\n\
             Final-Recipient: {addr_type}; {rcpt}\r\n\
             Action: failed\r\n\
             Status: {}\r\n",
            failed.status
        );
        if let Some(mta) = &failed.remote_mta {
            let _ = write!(text, "Remote-MTA: dns; {}\r\n", clean_line(mta, 255));
        }
        let diagnostic = match &failed.diagnostic {
            Some(reply) => format!("smtp; {}", reply_summary(reply)),
            // No remote reply (DNS failure, expiry): an extension diagnostic type
            // (RFC 3464 2.3.6) carries our own reason.
            None => format!("X-Relay; {}", failed.reason),
        };
        fold_field(
            &mut text,
            "Diagnostic-Code",
            &clean_line(&diagnostic, MAX_DIAGNOSTIC),
        );
    }
    text
}

/// A reply as one line: "550 5.1.1 first line second line".
fn reply_summary(reply: &Reply) -> String {
    let mut out = reply.code.to_string();
    if let Some(code) = &reply.enhanced {
        let _ = write!(out, " {code}");
    }
    for line in &reply.lines {
        let line = line.trim();
        if !line.is_empty() {
            out.push(' ');
            out.push_str(line);
        }
    }
    out
}

/// Writes `name: value` folded at spaces (RFC 5322 2.2.3) so lines stay near [`WRAP`].
fn fold_field(out: &mut String, name: &str, value: &str) {
    let mut lines = wrap(value, WRAP.saturating_sub(name.len() + 2)).into_iter();
    let _ = write!(out, "{name}: {}\r\n", lines.next().unwrap_or_default());
    for line in lines {
        let _ = write!(out, " {line}\r\n");
    }
}

/// Splits text at spaces into lines of at most `width` characters where words allow; a word
/// longer than [`MAX_LINE`] / 2 is cut, so no line can pass the RFC 5322 limit.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(20);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut word = word;
        while word.len() > MAX_LINE / 2 {
            // Text is ASCII here (clean_line), so any byte index is a char boundary.
            let (head, tail) = word.split_at(MAX_LINE / 2);
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            lines.push(head.to_owned());
            word = tail;
        }
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// Printable ASCII only: control characters (CR, LF, TAB, ...) become spaces and other
/// characters `?`, runs of spaces collapse, and the result is cut at `max` characters.
/// Remote replies and reasons come from outside; they must not break the report's structure.
fn clean_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    let mut last_space = true;
    for c in text.chars() {
        let c = match c {
            ' '..='~' => c,
            c if c.is_control() => ' ',
            _ => '?',
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if out.len() >= max {
            out.push_str("...");
            break;
        }
        out.push(c);
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

/// An address for a header or field: kept as it is (it may be UTF-8), minus control
/// characters and angle brackets that could break the line structure.
fn clean_address(addr: &str) -> String {
    addr.chars()
        .filter(|c| !c.is_control() && *c != '<' && *c != '>')
        .take(MAX_LINE / 2)
        .collect()
}

/// The header section of the original message (up to the first empty line), with CRLF line
/// endings and over-long lines folded.
fn original_headers(message: &[u8]) -> Vec<u8> {
    let end = header_end(message);
    let mut out = Vec::with_capacity(end + 64);
    let mut line_len = 0;
    let mut iter = message[..end].iter().peekable();
    while let Some(&byte) = iter.next() {
        match byte {
            b'\r' | b'\n' => {
                if byte == b'\r' && iter.peek() == Some(&&b'\n') {
                    iter.next();
                }
                out.extend_from_slice(b"\r\n");
                line_len = 0;
            }
            _ => {
                if line_len >= MAX_LINE - 1 {
                    // Fold: the rest continues on a new line starting with a space.
                    out.extend_from_slice(b"\r\n ");
                    line_len = 1;
                }
                out.push(byte);
                line_len += 1;
            }
        }
    }
    if line_len > 0 {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Index just past the line ending that precedes the first empty line, or the whole message
/// when it has no body.
fn header_end(message: &[u8]) -> usize {
    let mut line_start = 0;
    let mut i = 0;
    while i < message.len() {
        if message[i] == b'\n' {
            let line = &message[line_start..i];
            if line.is_empty() || line == b"\r" {
                return line_start;
            }
            line_start = i + 1;
        }
        i += 1;
    }
    message.len()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// 20 random alphanumeric characters.
fn random_token() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 20)
}

#[cfg(test)]
mod tests {
    use mail_parser::{MessageParser, MimeHeaders};

    use super::*;

    const ORIGINAL: &[u8] = b"From: Sender <sender@origin.test>\r\n\
To: a@dest.test\r\n\
Subject: Quarterly report\r\n\
Message-ID: <orig-1@origin.test>\r\n\
\r\n\
Body text that must not be returned.\r\n";

    fn sender() -> Mailbox {
        Mailbox::parse("sender@origin.test").unwrap()
    }

    fn failed_remote() -> FailedRecipient {
        FailedRecipient {
            rcpt: Mailbox::parse("a@dest.test").unwrap(),
            status: EnhancedCode(5, 1, 1),
            diagnostic: Some(Reply::new(
                550,
                Some(EnhancedCode(5, 1, 1)),
                "<a@dest.test>: Recipient address rejected:\nUser unknown in virtual mailbox table",
            )),
            remote_mta: Some("mx.dest.test".into()),
            reason: "host mx.dest.test refused the recipient".into(),
        }
    }

    fn failed_dns() -> FailedRecipient {
        FailedRecipient {
            rcpt: Mailbox::parse("b@nomail.test").unwrap(),
            status: EnhancedCode(5, 1, 10),
            diagnostic: None,
            remote_mta: None,
            reason: "Recipient address has null MX".into(),
        }
    }

    fn input<'a>(
        sender: &'a Mailbox,
        failed: &'a [FailedRecipient],
        original: &'a [u8],
    ) -> BounceInput<'a> {
        BounceInput {
            reporting_mta: "relay.test",
            original_envelope_id: "0000017f-abc",
            arrival_date: 1_700_000_000,
            now: 1_700_003_600,
            original_sender: sender,
            failed,
            original_message: original,
        }
    }

    fn part_text<'a>(message: &'a mail_parser::Message<'a>, id: u32) -> String {
        String::from_utf8_lossy(message.part(id).unwrap().contents()).into_owned()
    }

    #[test]
    fn bounce_parses_as_multipart_report_with_three_parts() {
        let sender = sender();
        let failed = [failed_remote(), failed_dns()];
        let bytes = build_bounce(&input(&sender, &failed, ORIGINAL));
        let message = MessageParser::default().parse(&bytes).unwrap();

        assert_eq!(
            message.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
        let from = message.from().unwrap().first().unwrap();
        assert_eq!(from.name(), Some("Mail Delivery System"));
        assert_eq!(from.address(), Some("MAILER-DAEMON@relay.test"));
        assert_eq!(
            message.to().unwrap().first().unwrap().address(),
            Some("sender@origin.test")
        );
        assert_eq!(
            message.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert!(message.date().is_some());
        assert!(message.message_id().unwrap().ends_with("@relay.test"));

        let content_type = message.content_type().unwrap();
        assert_eq!(content_type.ctype(), "multipart");
        assert_eq!(content_type.subtype(), Some("report"));
        assert_eq!(
            content_type.attribute("report-type"),
            Some("delivery-status")
        );

        let parts = message.root_part().sub_parts().unwrap().to_vec();
        assert_eq!(parts.len(), 3);
        let types: Vec<String> = parts
            .iter()
            .map(|id| {
                let ct = message.part(*id).unwrap().content_type().unwrap();
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
            })
            .collect();
        assert_eq!(
            types,
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );

        let human = part_text(&message, parts[0]);
        assert!(human.contains("<a@dest.test>: host mx.dest.test refused the recipient"));
        assert!(human.contains("<b@nomail.test>: Recipient address has null MX"));

        let status = part_text(&message, parts[1]);
        assert!(
            status.starts_with("Reporting-MTA: dns; relay.test\r\n"),
            "{status}"
        );
        assert!(status.contains("X-Relay-Queue-ID: 0000017f-abc\r\n"));
        assert!(status.contains("Arrival-Date: "));
        assert!(
            status.contains(
                "\r\n\r\nFinal-Recipient: rfc822; a@dest.test\r\n\
             Action: failed\r\n\
             Status: 5.1.1\r\n\
             Remote-MTA: dns; mx.dest.test\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 <a@dest.test>: Recipient address rejected:\r\n \
             User unknown in virtual mailbox table\r\n"
            ),
            "{status}"
        );
        assert!(
            status.contains(
                "\r\n\r\nFinal-Recipient: rfc822; b@nomail.test\r\n\
             Action: failed\r\n\
             Status: 5.1.10\r\n\
             Diagnostic-Code: X-Relay; Recipient address has null MX\r\n"
            ),
            "{status}"
        );

        let headers = part_text(&message, parts[2]);
        assert!(headers.contains("Subject: Quarterly report\r\n"));
        assert!(headers.contains("Message-ID: <orig-1@origin.test>\r\n"));
        assert!(!headers.contains("Body text"));
    }

    #[test]
    fn every_line_ends_in_crlf_and_fits_998_octets() {
        let sender = sender();
        let mut failed = failed_remote();
        failed.diagnostic = Some(Reply::new(
            550,
            Some(EnhancedCode(5, 7, 1)),
            format!(
                "{}\r\nX-Injected: yes\twith\0controls {}",
                "word ".repeat(600),
                "x".repeat(3000)
            ),
        ));
        failed.reason = "r".repeat(5000);
        let mut original = b"Subject: ".to_vec();
        original.extend(std::iter::repeat_n(b'h', 3000));
        original.extend_from_slice(b"\nX-Bare: lf\n\nbody\n");
        let bytes = build_bounce(&input(&sender, std::slice::from_ref(&failed), &original));

        for line in bytes.split(|&b| b == b'\n') {
            assert!(line.len() <= MAX_LINE + 1, "line of {} octets", line.len());
        }
        assert!(!bytes.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        assert!(!bytes.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n'));
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("\r\nX-Injected"),
            "a remote reply must not add fields"
        );
        assert!(text.contains("X-Bare: lf\r\n"));
        assert!(!text.contains("body\r\n"));
        assert!(MessageParser::default().parse(&bytes).is_some());
    }

    #[test]
    fn headers_only_message_is_returned_whole() {
        let sender = sender();
        let failed = [failed_dns()];
        let bytes = build_bounce(&input(&sender, &failed, b"Subject: no body"));
        let message = MessageParser::default().parse(&bytes).unwrap();
        let parts = message.root_part().sub_parts().unwrap().to_vec();
        assert_eq!(part_text(&message, parts[2]).trim_end(), "Subject: no body");
    }

    #[test]
    fn boundary_never_occurs_inside_the_parts() {
        let sender = sender();
        let failed = [failed_dns()];
        let original = b"X-Trap: --=_relay_bounce_fixed\r\n\r\nbody";
        let bytes = build_bounce_with_token(&input(&sender, &failed, original), "fixed");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("boundary=\"=_relay_bounce_fixed_1\""),
            "{text}"
        );
        let message = MessageParser::default().parse(&bytes).unwrap();
        assert_eq!(message.root_part().sub_parts().unwrap().len(), 3);
    }

    #[test]
    fn utf8_headers_are_marked_8bit_and_utf8_recipients_use_utf8_type() {
        let sender = sender();
        let mut failed = failed_dns();
        failed.rcpt = Mailbox::parse("j\u{f6}rg@dest.test").unwrap();
        let original = "Subject: Gr\u{fc}\u{df}e\r\n\r\nbody".as_bytes();
        let bytes = build_bounce(&input(&sender, std::slice::from_ref(&failed), original));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("Final-Recipient: utf-8; j\u{f6}rg@dest.test\r\n"));
        assert!(text
            .contains("Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: 8bit\r\n"));
        let message = MessageParser::default().parse(&bytes).unwrap();
        let parts = message.root_part().sub_parts().unwrap().to_vec();
        assert!(part_text(&message, parts[2]).contains("Gr\u{fc}\u{df}e"));
    }

    #[test]
    fn reason_that_repeats_the_remote_reply_is_not_shown_twice() {
        let sender = sender();
        let mut failed = failed_remote();
        failed.diagnostic = Some(Reply::new(550, Some(EnhancedCode(5, 1, 1)), "No such user"));
        failed.reason = "550 5.1.1 No such user".into();
        let bytes = build_bounce(&input(&sender, std::slice::from_ref(&failed), ORIGINAL));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("<a@dest.test>: host mx.dest.test said: 550 5.1.1 No such user\r\n"));
        assert_eq!(
            text.matches("No such user").count(),
            2,
            "text part and Diagnostic-Code"
        );
    }

    #[test]
    fn wrap_keeps_lines_short_and_cuts_giant_words() {
        let lines = wrap(&format!("short words {} tail", "y".repeat(1200)), 40);
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE / 2));
        assert_eq!(lines[0], "short words");
        let n = lines.len();
        assert_eq!(lines[n - 2], "y".repeat(1200 - MAX_LINE / 2 * 2));
        assert_eq!(lines[n - 1], "tail");
    }
}
