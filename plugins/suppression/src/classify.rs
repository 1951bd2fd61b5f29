//! Classifies a failed delivery attempt into a class label from its kind, its RFC 3463
//! enhanced status code, its basic reply code and, when those say too little, its text.

use std::fmt;
use std::str::FromStr;

use plugin_sdk::types::{FailureKind, SmtpReply};

/// What kind of failure a bounce was, as the label `on_bounce` returns in `class`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BounceClass {
    /// The address does not exist or is disabled (x.1.1, x.1.2, x.1.3, x.1.6, x.1.10, x.2.1,
    /// or "user unknown"-like text).
    InvalidRecipient,
    /// The mailbox is over quota (x.2.2, or 452/552 with "full"/"quota"/"storage" text).
    MailboxFull,
    /// Refused as spam or by a block list or policy (5.7.x, or 5xx with spam/block text).
    SpamBlock,
    /// The receiver throttles us (4.7.x, 421, or rate/throttle text).
    RateLimited,
    /// DNS gave no usable answer for the destination.
    Dns,
    /// TLS could not be negotiated or verified.
    Tls,
    /// A connection could not be made, broke, or timed out.
    Connection,
    /// The message was queued longer than the relay's max age.
    Expired,
    /// Anything else.
    Other,
}

impl BounceClass {
    /// Every class, for tests and docs.
    pub const ALL: [BounceClass; 9] = [
        BounceClass::InvalidRecipient,
        BounceClass::MailboxFull,
        BounceClass::SpamBlock,
        BounceClass::RateLimited,
        BounceClass::Dns,
        BounceClass::Tls,
        BounceClass::Connection,
        BounceClass::Expired,
        BounceClass::Other,
    ];

    /// The label as logged: `invalid-recipient`, `mailbox-full`, `spam-block`, `rate-limited`,
    /// `dns`, `tls`, `connection`, `expired` or `other`.
    pub fn label(self) -> &'static str {
        match self {
            BounceClass::InvalidRecipient => "invalid-recipient",
            BounceClass::MailboxFull => "mailbox-full",
            BounceClass::SpamBlock => "spam-block",
            BounceClass::RateLimited => "rate-limited",
            BounceClass::Dns => "dns",
            BounceClass::Tls => "tls",
            BounceClass::Connection => "connection",
            BounceClass::Expired => "expired",
            BounceClass::Other => "other",
        }
    }
}

impl fmt::Display for BounceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// An RFC 3463 enhanced status code, `class.subject.detail`, e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (temporary) or 5 (permanent).
    pub class: u8,
    /// 0 to 999; 1 is addressing, 2 mailbox, 7 security or policy.
    pub subject: u16,
    /// 0 to 999.
    pub detail: u16,
}

impl EnhancedCode {
    /// The code of a reply: its `enhanced` field, else a code at the start of its text (some
    /// servers' codes reach the relay only as text, e.g. `"#5.1.1 user unknown"`).
    pub fn of_reply(reply: &SmtpReply) -> Option<Self> {
        if !reply.enhanced.trim().is_empty() {
            return reply.enhanced.parse().ok();
        }
        let first = reply.text.split_whitespace().next()?;
        first
            .trim_start_matches('#')
            .trim_end_matches([',', ';', ':'])
            .parse()
            .ok()
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl FromStr for EnhancedCode {
    type Err = ();

    /// `class "." subject "." detail` with class 2, 4 or 5 and subject and detail of one to
    /// three digits (RFC 3463 section 2).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.trim().split('.');
        let (Some(class), Some(subject), Some(detail), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(());
        };
        let number = |part: &str| -> Result<u16, ()> {
            if (1..=3).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit()) {
                part.parse().map_err(|_| ())
            } else {
                Err(())
            }
        };
        let class = match class {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return Err(()),
        };
        Ok(EnhancedCode {
            class,
            subject: number(subject)?,
            detail: number(detail)?,
        })
    }
}

/// The class of a failed attempt.
pub fn classify(kind: FailureKind, reply: &SmtpReply) -> BounceClass {
    match kind {
        FailureKind::RemoteReply => classify_reply(reply),
        FailureKind::Timeout | FailureKind::Connection => BounceClass::Connection,
        FailureKind::Tls => BounceClass::Tls,
        FailureKind::Dns => BounceClass::Dns,
        FailureKind::Expired => BounceClass::Expired,
    }
}

/// The class of a remote server's reply: the enhanced code when it is specific, else the
/// basic code and the text.
fn classify_reply(reply: &SmtpReply) -> BounceClass {
    if let Some(class) = EnhancedCode::of_reply(reply).and_then(class_of_enhanced) {
        return class;
    }
    let text = reply.text.to_lowercase();
    let says = |phrases: &[&str]| phrases.iter().any(|phrase| text.contains(phrase));
    let code = reply.code;
    // A "user unknown" about the sender (Postfix: "Sender address rejected: User unknown")
    // says nothing about the recipient.
    if says(INVALID_RECIPIENT) && !text.contains("sender") {
        return BounceClass::InvalidRecipient;
    }
    if says(RATE) {
        return BounceClass::RateLimited;
    }
    if says(MAILBOX_FULL) || (matches!(code, 452 | 552) && says(&["full", "quota", "storage"])) {
        return BounceClass::MailboxFull;
    }
    // 421 closes the connection: receivers use it to shed load and to throttle senders.
    if code == 421 {
        return BounceClass::RateLimited;
    }
    if (400..600).contains(&code) && says(SPAM_BLOCK) {
        return BounceClass::SpamBlock;
    }
    BounceClass::Other
}

/// The class an enhanced code names on its own; `None` for generic codes (`5.0.0`, `4.4.1`)
/// that need the rest of the reply.
fn class_of_enhanced(code: EnhancedCode) -> Option<BounceClass> {
    match (code.class, code.subject, code.detail) {
        // x.1.1 bad mailbox, x.1.2 bad system, x.1.3 bad mailbox syntax, x.1.6 moved without
        // forwarding address, x.1.10 null MX (RFC 7505), x.2.1 mailbox disabled. Not x.1.7 and
        // x.1.8: those are about the sender.
        (4 | 5, 1, 1 | 2 | 3 | 6 | 10) | (4 | 5, 2, 1) => Some(BounceClass::InvalidRecipient),
        (4 | 5, 2, 2) => Some(BounceClass::MailboxFull),
        (5, 7, _) => Some(BounceClass::SpamBlock),
        (4, 7, _) => Some(BounceClass::RateLimited),
        _ => None,
    }
}

/// Text of replies about a recipient that does not exist (compared in lower case).
const INVALID_RECIPIENT: &[&str] = &[
    "user unknown",
    "unknown user",
    "unknown recipient",
    "recipient unknown",
    "address unknown",
    "unknown address",
    "no such user",
    "no such mailbox",
    "no such recipient",
    "no such address",
    "no such account",
    "no such person",
    "no mailbox here",
    "user not found",
    "recipient not found",
    "mailbox not found",
    "address not found",
    "does not exist",
    "doesn't exist",
    "invalid recipient",
    "invalid mailbox",
    "not a valid mailbox",
    "mailbox disabled",
    "mailbox is disabled",
    "account disabled",
    "account has been disabled",
    "account is disabled",
    "unrouteable address",
    "this user doesn't have",
    "bad destination mailbox",
];

/// Text of replies from a receiver throttling us.
const RATE: &[&str] = &[
    "rate limit",
    "rate-limit",
    "ratelimit",
    "rate exceeded",
    "unusual rate",
    "sending rate",
    "throttl",
    "too many connections",
    "too many concurrent",
    "too many messages",
    "too many mails",
    "too many emails",
    "sending quota",
    "sending limit",
    "slow down",
];

/// Text of replies about a full mailbox.
const MAILBOX_FULL: &[&str] = &[
    "mailbox full",
    "mailbox is full",
    "mailbox quota",
    "mailbox has exceeded",
    "over quota",
    "overquota",
    "quota exceeded",
    "exceeded quota",
    "exceeds quota",
    "storage allocation",
];

/// Text of replies refusing mail as spam or by a block list or policy.
const SPAM_BLOCK: &[&str] = &[
    "spam",
    "block",
    "blacklist",
    "denylist",
    "reputation",
    "policy",
    "junk",
    "abuse",
    "banned",
    "denied",
    "dnsbl",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(code: u16, enhanced: &str, text: &str) -> BounceClass {
        classify(
            FailureKind::RemoteReply,
            &SmtpReply::new(code, enhanced, text),
        )
    }

    #[test]
    fn enhanced_codes_parse_strictly() {
        let code = |text: &str| text.parse::<EnhancedCode>();
        assert_eq!(
            code("5.1.10"),
            Ok(EnhancedCode {
                class: 5,
                subject: 1,
                detail: 10
            })
        );
        assert_eq!(
            code(" 4.7.0 ").map(|c| c.to_string()),
            Ok("4.7.0".to_owned())
        );
        for bad in ["", "5.1", "5.1.1.1", "3.1.1", "5.x.1", "5.1.1000", "5..1"] {
            assert_eq!(code(bad), Err(()), "{bad:?}");
        }
    }

    #[test]
    fn a_code_at_the_start_of_the_text_counts_when_the_field_is_empty() {
        let reply = SmtpReply::new(550, "", "#5.1.1 mailbox unavailable");
        assert_eq!(
            EnhancedCode::of_reply(&reply).map(|c| c.to_string()),
            Some("5.1.1".into())
        );
        assert_eq!(
            remote(550, "", "5.1.1: mailbox unavailable"),
            BounceClass::InvalidRecipient
        );
    }

    #[test]
    fn invalid_recipients_by_enhanced_code() {
        for enhanced in [
            "5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1", "4.1.1",
        ] {
            assert_eq!(
                remote(550, enhanced, "Requested action not taken"),
                BounceClass::InvalidRecipient,
                "{enhanced}"
            );
        }
    }

    #[test]
    fn invalid_recipients_by_text() {
        for text in [
            "<bob@example.net>: Recipient address rejected: User unknown in local recipient table",
            "No such user here",
            "The email account that you tried to reach does not exist",
            "mailbox unavailable: no mailbox here by that name",
        ] {
            assert_eq!(
                remote(550, "", text),
                BounceClass::InvalidRecipient,
                "{text}"
            );
            assert_eq!(
                remote(550, "5.0.0", text),
                BounceClass::InvalidRecipient,
                "{text}"
            );
        }
    }

    #[test]
    fn sender_problems_are_not_invalid_recipients() {
        let text =
            "<a@example.com>: Sender address rejected: User unknown in local recipient table";
        assert_eq!(remote(550, "5.1.0", text), BounceClass::Other);
        assert_eq!(
            remote(553, "5.1.8", "bad sender's system address"),
            BounceClass::Other
        );
    }

    #[test]
    fn mailbox_full() {
        assert_eq!(remote(452, "4.2.2", "over quota"), BounceClass::MailboxFull);
        assert_eq!(
            remote(552, "5.2.2", "Mailbox full"),
            BounceClass::MailboxFull
        );
        assert_eq!(
            remote(452, "", "Insufficient system storage"),
            BounceClass::MailboxFull
        );
        assert_eq!(
            remote(
                552,
                "",
                "Requested action aborted: exceeded storage allocation"
            ),
            BounceClass::MailboxFull
        );
        assert_eq!(
            remote(550, "", "The user's mailbox is full"),
            BounceClass::MailboxFull
        );
        assert_eq!(
            remote(552, "5.3.4", "Message size exceeds fixed limit"),
            BounceClass::Other
        );
    }

    #[test]
    fn spam_and_blocks() {
        assert_eq!(
            remote(550, "5.7.1", "Service unavailable, client host blocked"),
            BounceClass::SpamBlock
        );
        assert_eq!(
            remote(550, "5.7.26", "Unauthenticated email is not accepted"),
            BounceClass::SpamBlock
        );
        assert_eq!(
            remote(554, "", "Message rejected as spam"),
            BounceClass::SpamBlock
        );
        assert_eq!(
            remote(554, "5.0.0", "IP listed on a block list, see spamhaus"),
            BounceClass::SpamBlock
        );
        assert_eq!(remote(554, "", "Transaction failed"), BounceClass::Other);
    }

    #[test]
    fn rate_limits() {
        assert_eq!(
            remote(450, "4.7.0", "Try again later"),
            BounceClass::RateLimited
        );
        assert_eq!(
            remote(421, "4.7.28", "unusual rate of unsolicited mail"),
            BounceClass::RateLimited
        );
        assert_eq!(
            remote(421, "", "Too many concurrent SMTP connections"),
            BounceClass::RateLimited
        );
        assert_eq!(
            remote(421, "4.3.2", "Service shutting down"),
            BounceClass::RateLimited
        );
        assert_eq!(
            remote(451, "", "Throttled: too many messages from your IP"),
            BounceClass::RateLimited
        );
        assert_eq!(
            remote(450, "4.2.0", "rate limit exceeded, slow down"),
            BounceClass::RateLimited
        );
        assert_eq!(
            remote(550, "5.4.5", "Daily user sending quota exceeded"),
            BounceClass::RateLimited
        );
    }

    #[test]
    fn failures_without_a_remote_reply_are_classed_by_kind() {
        let reply = SmtpReply::new(451, "4.4.1", "synthesised by the relay");
        let class = |kind| classify(kind, &reply);
        assert_eq!(class(FailureKind::Dns), BounceClass::Dns);
        assert_eq!(class(FailureKind::Tls), BounceClass::Tls);
        assert_eq!(class(FailureKind::Timeout), BounceClass::Connection);
        assert_eq!(class(FailureKind::Connection), BounceClass::Connection);
        assert_eq!(class(FailureKind::Expired), BounceClass::Expired);
        // The kind wins even over a specific code in a synthesised reply.
        let expired = SmtpReply::new(550, "5.1.1", "user unknown");
        assert_eq!(
            classify(FailureKind::Expired, &expired),
            BounceClass::Expired
        );
    }

    #[test]
    fn anything_else_is_other() {
        assert_eq!(
            remote(451, "4.3.0", "Temporary local problem"),
            BounceClass::Other
        );
        assert_eq!(remote(554, "5.4.6", "Too many hops"), BounceClass::Other);
        assert_eq!(remote(500, "", ""), BounceClass::Other);
    }

    #[test]
    fn labels_are_distinct_and_kebab_case() {
        let labels: Vec<&str> = BounceClass::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(
            labels,
            [
                "invalid-recipient",
                "mailbox-full",
                "spam-block",
                "rate-limited",
                "dns",
                "tls",
                "connection",
                "expired",
                "other"
            ]
        );
    }
}
