//! Constructors and accessors on the WIT types, so hooks read and answer in one line.
//!
//! [`Default`] on every verdict means "no opinion": leave the decision to the next plugin and
//! finally to the relay.

use std::fmt;

use crate::types::{
    BounceAction, BounceInput, BounceVerdict, ChooseInput, ChooseVerdict, DataAction, DataVerdict,
    Header, IpChoice, MailFlags, MailFrom, RcptVerdict, SmtpReply, Tag,
};

/// The value of the last tag named `key` (a later value for the same key wins).
pub(crate) fn find_tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .rev()
        .find(|tag| tag.key == key)
        .map(|tag| tag.value.as_str())
}

impl SmtpReply {
    /// A reply: `code` (4xx temporary, 5xx permanent), RFC 3463 `enhanced` code such as
    /// `"5.7.1"` (empty lets the relay pick one) and one line of text.
    pub fn new(code: u16, enhanced: &str, text: &str) -> Self {
        SmtpReply {
            code,
            enhanced: enhanced.to_owned(),
            text: text.to_owned(),
        }
    }

    /// True for a permanent (5xx) reply.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
}

impl fmt::Display for SmtpReply {
    /// `550 5.1.1 text`, as it goes on the wire (without an empty enhanced code).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.enhanced.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.enhanced, self.text)
        }
    }
}

impl Tag {
    /// A `key=value` tag.
    pub fn new(key: &str, value: &str) -> Self {
        Tag {
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }
}

impl Header {
    /// A header field `name: value`.
    pub fn new(name: &str, value: &str) -> Self {
        Header {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }
}

impl Default for RcptVerdict {
    /// [`RcptVerdict::NoOpinion`].
    fn default() -> Self {
        RcptVerdict::NoOpinion
    }
}

impl RcptVerdict {
    /// Refuse the recipient permanently, e.g. `RcptVerdict::reject(550, "5.1.1", "no such user")`.
    pub fn reject(code: u16, enhanced: &str, text: &str) -> Self {
        RcptVerdict::Reject(SmtpReply::new(code, enhanced, text))
    }

    /// Refuse the recipient temporarily, e.g. `RcptVerdict::tempfail(451, "4.7.1", "slow down")`.
    pub fn tempfail(code: u16, enhanced: &str, text: &str) -> Self {
        RcptVerdict::Tempfail(SmtpReply::new(code, enhanced, text))
    }

    /// Accept, but queue the message for `address` instead.
    pub fn rewrite(address: &str) -> Self {
        RcptVerdict::AcceptRewritten(address.to_owned())
    }

    /// True for [`RcptVerdict::NoOpinion`].
    pub fn is_no_opinion(&self) -> bool {
        matches!(self, RcptVerdict::NoOpinion)
    }
}

impl Default for DataAction {
    /// [`DataAction::NoOpinion`].
    fn default() -> Self {
        DataAction::NoOpinion
    }
}

impl Default for DataVerdict {
    /// No opinion, no headers, no tags.
    fn default() -> Self {
        DataVerdict {
            action: DataAction::NoOpinion,
            add_headers: Vec::new(),
            tags: Vec::new(),
        }
    }
}

impl DataVerdict {
    /// No opinion on the message (headers and tags may still be added).
    pub fn no_opinion() -> Self {
        DataVerdict::default()
    }

    /// Accept the message.
    pub fn accept() -> Self {
        DataVerdict {
            action: DataAction::Accept,
            ..DataVerdict::default()
        }
    }

    /// Refuse the message permanently.
    pub fn reject(code: u16, enhanced: &str, text: &str) -> Self {
        let reply = SmtpReply::new(code, enhanced, text);
        DataVerdict {
            action: DataAction::Reject(reply),
            ..DataVerdict::default()
        }
    }

    /// Refuse the message temporarily.
    pub fn tempfail(code: u16, enhanced: &str, text: &str) -> Self {
        let reply = SmtpReply::new(code, enhanced, text);
        DataVerdict {
            action: DataAction::Tempfail(reply),
            ..DataVerdict::default()
        }
    }

    /// Adds a header field at the top of the message (kept whoever decides).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.add_headers.push(Header::new(name, value));
        self
    }

    /// Sets a tag kept with the message (kept whoever decides).
    pub fn with_tag(mut self, key: &str, value: &str) -> Self {
        self.tags.push(Tag::new(key, value));
        self
    }

    /// The value of the last tag this verdict sets for `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        find_tag(&self.tags, key)
    }

    /// The value of the first header this verdict adds named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.add_headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value.as_str())
    }
}

impl Default for IpChoice {
    /// [`IpChoice::NoOpinion`].
    fn default() -> Self {
        IpChoice::NoOpinion
    }
}

impl Default for ChooseVerdict {
    /// No opinion, no hold.
    fn default() -> Self {
        ChooseVerdict {
            choice: IpChoice::NoOpinion,
            not_before: None,
            reuse_ms: 0,
        }
    }
}

impl ChooseVerdict {
    /// No opinion: the next plugin decides, finally the relay's default.
    pub fn no_opinion() -> Self {
        ChooseVerdict::default()
    }

    /// Use one source, by its config name or its IP.
    pub fn source(name_or_ip: &str) -> Self {
        ChooseVerdict {
            choice: IpChoice::Source(name_or_ip.to_owned()),
            not_before: None,
            reuse_ms: 0,
        }
    }

    /// Use a pool by name; the relay picks a member by weight.
    pub fn pool(name: &str) -> Self {
        ChooseVerdict {
            choice: IpChoice::Pool(name.to_owned()),
            not_before: None,
            reuse_ms: 0,
        }
    }

    /// Hold the delivery until `unix_ms`, with no opinion on the source.
    pub fn hold_until(unix_ms: u64) -> Self {
        ChooseVerdict {
            choice: IpChoice::NoOpinion,
            not_before: Some(unix_ms),
            reuse_ms: 0,
        }
    }

    /// Also hold the delivery until `unix_ms` (throttling).
    pub fn with_not_before(mut self, unix_ms: u64) -> Self {
        self.not_before = Some(unix_ms);
        self
    }

    /// Lets the relay give this same verdict, without calling the plugin, to other deliveries
    /// with the same sender domain, destination domain, MX host and tags for `ms`
    /// milliseconds (at most an hour is kept). Use it only for an answer that depends on
    /// nothing else: not the message id, the sender's local part, the recipient count, the
    /// clock, or the plugin's state and counters. It saves a plugin call per delivery.
    pub fn reuse_for(mut self, ms: u32) -> Self {
        self.reuse_ms = ms;
        self
    }
}

impl Default for BounceAction {
    /// [`BounceAction::NoOpinion`].
    fn default() -> Self {
        BounceAction::NoOpinion
    }
}

impl Default for BounceVerdict {
    /// No opinion, no class.
    fn default() -> Self {
        BounceVerdict {
            action: BounceAction::NoOpinion,
            class: None,
        }
    }
}

impl BounceVerdict {
    /// The relay's own choice (retry 4xx on its schedule, bounce 5xx).
    pub fn no_opinion() -> Self {
        BounceVerdict::default()
    }

    /// Try again at `unix_ms`.
    pub fn retry_at(unix_ms: u64) -> Self {
        BounceVerdict {
            action: BounceAction::RetryAt(unix_ms),
            class: None,
        }
    }

    /// Give up now and send a DSN to the sender.
    pub fn bounce_now() -> Self {
        BounceVerdict {
            action: BounceAction::BounceNow,
            class: None,
        }
    }

    /// Give up now without a DSN (the address is suppressed).
    pub fn suppress() -> Self {
        BounceVerdict {
            action: BounceAction::Suppress,
            class: None,
        }
    }

    /// Sets the class label for the logs, e.g. `"invalid-recipient"` or `"mailbox-full"`.
    pub fn with_class(mut self, class: &str) -> Self {
        self.class = Some(class.to_owned());
        self
    }
}

impl MailFrom {
    /// True for `BODY=8BITMIME`.
    pub fn is_8bitmime(&self) -> bool {
        self.flags.contains(MailFlags::EIGHT_BIT_MIME)
    }

    /// True for `SMTPUTF8`.
    pub fn is_smtputf8(&self) -> bool {
        self.flags.contains(MailFlags::SMTPUTF8)
    }
}

impl ChooseInput {
    /// The value of the message's tag `key` (the last value wins).
    pub fn tag(&self, key: &str) -> Option<&str> {
        find_tag(&self.tags, key)
    }
}

impl BounceInput {
    /// The value of the message's tag `key` (the last value wins).
    pub fn tag(&self, key: &str) -> Option<&str> {
        find_tag(&self.tags, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_no_opinion() {
        assert_eq!(RcptVerdict::default(), RcptVerdict::NoOpinion);
        assert_eq!(DataVerdict::default().action, DataAction::NoOpinion);
        assert_eq!(
            ChooseVerdict::default(),
            ChooseVerdict {
                choice: IpChoice::NoOpinion,
                not_before: None,
                reuse_ms: 0
            }
        );
        assert_eq!(
            BounceVerdict::default(),
            BounceVerdict {
                action: BounceAction::NoOpinion,
                class: None
            }
        );
        assert!(RcptVerdict::default().is_no_opinion());
    }

    #[test]
    fn reply_displays_like_the_wire() {
        assert_eq!(
            SmtpReply::new(550, "5.1.1", "No such user").to_string(),
            "550 5.1.1 No such user"
        );
        assert_eq!(
            SmtpReply::new(451, "", "Try later").to_string(),
            "451 Try later"
        );
        assert!(SmtpReply::new(554, "", "").is_permanent());
        assert!(!SmtpReply::new(421, "", "").is_permanent());
    }

    #[test]
    fn data_verdict_builders_keep_headers_and_tags() {
        let verdict = DataVerdict::reject(550, "5.7.1", "blocked attachment")
            .with_header("X-Policy", "content")
            .with_tag("campaign", "a")
            .with_tag("campaign", "b");
        assert_eq!(
            verdict.action,
            DataAction::Reject(SmtpReply::new(550, "5.7.1", "blocked attachment"))
        );
        assert_eq!(verdict.header("x-policy"), Some("content"));
        assert_eq!(verdict.tag("campaign"), Some("b"));
        assert_eq!(verdict.tags.len(), 2);
    }

    #[test]
    fn choose_and_bounce_builders() {
        assert_eq!(
            ChooseVerdict::pool("warm").with_not_before(7).not_before,
            Some(7)
        );
        assert_eq!(
            ChooseVerdict::pool("warm").reuse_ms,
            0,
            "ask every time by default"
        );
        assert_eq!(
            ChooseVerdict::pool("warm").reuse_for(60_000).reuse_ms,
            60_000
        );
        assert_eq!(
            ChooseVerdict::source("mta1").choice,
            IpChoice::Source("mta1".into())
        );
        assert_eq!(ChooseVerdict::hold_until(9).choice, IpChoice::NoOpinion);
        let bounce = BounceVerdict::suppress().with_class("invalid-recipient");
        assert_eq!(bounce.action, BounceAction::Suppress);
        assert_eq!(bounce.class.as_deref(), Some("invalid-recipient"));
        assert_eq!(BounceVerdict::retry_at(5).action, BounceAction::RetryAt(5));
        assert_eq!(BounceVerdict::bounce_now().action, BounceAction::BounceNow);
    }

    #[test]
    fn lookups_are_case_insensitive_and_last_tag_wins() {
        let from = MailFrom {
            address: "a@x.test".into(),
            size: Some(12),
            flags: MailFlags::SMTPUTF8,
        };
        assert!(from.is_smtputf8());
        assert!(!from.is_8bitmime());
        let tags = [Tag::new("k", "1"), Tag::new("k", "2")];
        assert_eq!(find_tag(&tags, "k"), Some("2"));
        assert_eq!(find_tag(&tags, "K"), None);
    }
}
