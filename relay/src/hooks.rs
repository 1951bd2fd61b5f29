//! The relay's side of the hook contract: builds WIT inputs from the relay's own types and
//! turns plugin verdicts back into SMTP replies, never trusting what a plugin returns.

use std::net::IpAddr;

use crate::policy::{MailFlags, MailFrom, Session, SmtpReply, Tag, TransactionInfo};
use crate::smtp::{Body, EnhancedCode, MailParams, Reply, ReversePath};

/// Longest reply text taken from a plugin.
const MAX_TEXT: usize = 400;

/// What the plugins' view of a transaction is made from: the session's HELO, TLS state and
/// login, and MAIL FROM with its parameters.
pub(crate) struct TransactionStart<'a> {
    pub helo: &'a str,
    pub tls: bool,
    pub auth_user: Option<&'a str>,
    pub from: &'a ReversePath,
    pub params: &'a MailParams,
}

/// A transaction as plugins see it (the `transaction` handle), before any recipient: from a
/// session with the client at `peer`.
pub(crate) fn transaction(peer: IpAddr, start: &TransactionStart<'_>) -> TransactionInfo {
    let mut info = TransactionInfo {
        session: Session {
            client_ip: ip_text(peer),
            helo: String::new(),
            tls: start.tls,
            auth_user: None,
        },
        mail_from: MailFrom {
            address: String::new(),
            size: None,
            flags: MailFlags::empty(),
        },
        recipients: Vec::new(),
    };
    renew_transaction(&mut info, start);
    info
}

/// Makes `info`, the view of an earlier transaction of the same session (same client IP), the
/// view of a new one, as [`transaction`] would make it, in the buffers it already has.
pub(crate) fn renew_transaction(info: &mut TransactionInfo, start: &TransactionStart<'_>) {
    let TransactionStart {
        helo,
        tls,
        auth_user,
        from,
        params,
    } = *start;
    let session = &mut info.session;
    if session.helo != helo {
        session.helo.clear();
        session.helo.push_str(helo);
    }
    session.tls = tls;
    if session.auth_user.as_deref() != auth_user {
        session.auth_user = auth_user.map(str::to_string);
    }
    let mut flags = MailFlags::empty();
    match params.body {
        Some(Body::SevenBit) => flags |= MailFlags::SEVEN_BIT,
        Some(Body::EightBitMime) => flags |= MailFlags::EIGHT_BIT_MIME,
        None => {}
    }
    if params.smtputf8 {
        flags |= MailFlags::SMTPUTF8;
    }
    info.mail_from.address.clear();
    if let Some(mailbox) = from.mailbox() {
        mailbox.write_address(&mut info.mail_from.address);
    }
    info.mail_from.size = params.size;
    info.mail_from.flags = flags;
    info.recipients.clear();
}

/// `ip` as text, in one allocation (`to_string()` grows its string as it writes).
pub(crate) fn ip_text(ip: IpAddr) -> String {
    use std::fmt::Write;
    // The longest form: an IPv6 address with an embedded IPv4 one.
    let mut text = String::with_capacity(45);
    let _ = write!(text, "{ip}");
    text
}

/// Tags in WIT form.
pub(crate) fn tags(tags: &[(String, String)]) -> Vec<Tag> {
    tags.iter()
        .map(|(key, value)| Tag {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

/// Merges `new` into `tags`: a later value for the same key replaces the earlier one.
pub(crate) fn merge_tags(tags: &mut Vec<(String, String)>, new: Vec<Tag>) {
    for tag in new {
        let key = clean_line(&tag.key, 64);
        let value = clean_line(&tag.value, 256);
        if key.is_empty() {
            continue;
        }
        match tags.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => tags.push((key, value)),
        }
    }
}

/// A relay reply as plugins see it.
pub(crate) fn smtp_reply(reply: &Reply) -> SmtpReply {
    SmtpReply {
        code: reply.code,
        enhanced: reply.enhanced.map(|e| e.to_string()).unwrap_or_default(),
        text: reply.lines.join(" "),
    }
}

/// Turns a plugin's reply into a safe one of the right class: `permanent` wants 5xx,
/// otherwise 4xx. A code of the wrong class, an enhanced code that does not match, or text
/// with control characters (reply injection) are corrected, not trusted.
pub(crate) fn reply_from_plugin(reply: &SmtpReply, permanent: bool, plugin_hint: &str) -> Reply {
    let class = if permanent { 5 } else { 4 };
    let code = if reply.code / 100 == class && reply.code % 100 < 60 {
        reply.code
    } else if permanent {
        550
    } else {
        451
    };
    let enhanced = parse_enhanced(&reply.enhanced)
        .filter(|e| e.0 == class as u8)
        .unwrap_or(if permanent {
            EnhancedCode(5, 7, 1)
        } else {
            EnhancedCode(4, 7, 1)
        });
    let mut text = clean_line(&reply.text, MAX_TEXT);
    if text.is_empty() {
        text = format!("Refused by policy ({plugin_hint})");
    }
    Reply::new(code, Some(enhanced), text)
}

/// A header field from a plugin as a CRLF-terminated line, or `None` when the name is not a
/// valid field name (RFC 5322 2.2). The value cannot contain line breaks.
pub(crate) fn header_line(name: &str, value: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= 76
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    valid.then(|| {
        let mut line = String::with_capacity(name.len() + 4 + value.len().min(900));
        line.push_str(name);
        line.push_str(": ");
        push_clean_line(&mut line, value, 900);
        line.push_str("\r\n");
        line
    })
}

/// An RFC 3463 enhanced status code such as "5.1.1" (class 2, 4 or 5), from text that may
/// come from a plugin or a returned DSN.
pub(crate) fn parse_enhanced(text: &str) -> Option<EnhancedCode> {
    let mut parts = text.trim().split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && matches!(class, 2 | 4 | 5) && subject < 1000 && detail < 1000)
        .then_some(EnhancedCode(class, subject, detail))
}

/// One line of text: control characters become spaces, at most `max` bytes.
fn clean_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    push_clean_line(&mut out, text, max);
    out
}

/// Appends [`clean_line`] of `text` to `out`.
fn push_clean_line(out: &mut String, text: &str, max: usize) {
    let start = out.len();
    out.extend(text.chars().map(|c| if c.is_control() { ' ' } else { c }));
    let kept = out[start..].floor_char_boundary(max);
    out.truncate(start + out[start..start + kept].trim_end().len());
    let leading = out[start..].len() - out[start..].trim_start().len();
    out.drain(start..start + leading);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin_reply(code: u16, enhanced: &str, text: &str) -> SmtpReply {
        SmtpReply {
            code,
            enhanced: enhanced.to_string(),
            text: text.to_string(),
        }
    }

    #[test]
    fn a_plugin_cannot_inject_lines_into_the_reply() {
        let reply = reply_from_plugin(
            &plugin_reply(550, "5.7.1", "no\r\n250 2.0.0 fake"),
            true,
            "p",
        );
        let mut wire = Vec::new();
        reply.write_to(&mut wire);
        assert_eq!(wire, b"550 5.7.1 no  250 2.0.0 fake\r\n");
    }

    #[test]
    fn codes_of_the_wrong_class_are_corrected() {
        let r = reply_from_plugin(&plugin_reply(250, "2.0.0", "ok?"), true, "p");
        assert_eq!((r.code, r.enhanced), (550, Some(EnhancedCode(5, 7, 1))));
        let r = reply_from_plugin(&plugin_reply(550, "5.1.1", "x"), false, "p");
        assert_eq!((r.code, r.enhanced), (451, Some(EnhancedCode(4, 7, 1))));
        let r = reply_from_plugin(&plugin_reply(451, "4.7.1", "slow down"), false, "p");
        assert_eq!((r.code, r.enhanced), (451, Some(EnhancedCode(4, 7, 1))));
        let r = reply_from_plugin(&plugin_reply(554, "", ""), true, "rate-limit");
        assert_eq!(r.lines, vec!["Refused by policy (rate-limit)".to_string()]);
    }

    #[test]
    fn header_names_are_validated_and_values_kept_on_one_line() {
        assert_eq!(
            header_line("X-Policy", "ok\r\nBcc: evil@x").as_deref(),
            Some("X-Policy: ok  Bcc: evil@x\r\n")
        );
        assert_eq!(header_line("Bad Name", "v"), None);
        assert_eq!(header_line("", "v"), None);
        assert_eq!(header_line("A:B", "v"), None);
    }

    #[test]
    fn clean_lines_are_cut_then_trimmed() {
        // Control characters (C0 and the two-byte C1 ones) become spaces before the cut, and
        // the cut never splits a character.
        assert_eq!(clean_line("\t\u{85} ab\u{1}c  ", 100), "ab c");
        assert_eq!(clean_line("  abcdef", 5), "abc");
        assert_eq!(clean_line("ab\u{e9}d", 3), "ab");
        assert_eq!(clean_line("\u{85}\u{85}x", 3), "x");
        assert_eq!(clean_line("", 10), "");
        assert_eq!(
            header_line("X-A", &format!(" {} ", "v".repeat(1000))).as_deref(),
            Some(format!("X-A: {}\r\n", "v".repeat(899)).as_str())
        );
    }

    #[test]
    fn later_tags_replace_earlier_values() {
        let mut t = vec![("campaign".to_string(), "a".to_string())];
        merge_tags(
            &mut t,
            vec![
                Tag {
                    key: "campaign".into(),
                    value: "b".into(),
                },
                Tag {
                    key: "pool".into(),
                    value: "bulk\n".into(),
                },
                Tag {
                    key: " ".into(),
                    value: "ignored".into(),
                },
            ],
        );
        assert_eq!(
            t,
            vec![
                ("campaign".to_string(), "b".to_string()),
                ("pool".to_string(), "bulk".to_string())
            ]
        );
    }
}
