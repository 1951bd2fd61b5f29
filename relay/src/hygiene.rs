//! Message hygiene before signing: what the header section says about From, Date and
//! Message-ID, and the fields the relay adds or the reason it refuses the message.

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};

use crate::config::{FromPolicy, HygieneConfig};
use crate::inspect;
use crate::smtp::{rfc5322_date, EnhancedCode, Reply, ReversePath};

/// What the header section says about the fields hygiene cares for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderFacts {
    /// The From field.
    pub from: FromField,
    /// A Date field is present.
    pub has_date: bool,
    /// A Message-ID field is present.
    pub has_message_id: bool,
}

/// The state of a message's From field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FromField {
    /// There is none.
    Missing,
    /// There is one, or more, but not one usable address list; the reason.
    Malformed(&'static str),
    /// One From field with addresses; the domain of the first (lower case).
    Valid {
        /// The first author's domain: the default signing domain.
        domain: String,
    },
}

/// Reads the header section of `message` (it is not changed). Only the field names are looked
/// at, with one parse of the From field: this runs for every message.
pub(crate) fn header_facts(message: &[u8]) -> HeaderFacts {
    let mut from_fields = 0;
    let mut from = None;
    let mut has_date = false;
    let mut has_message_id = false;
    for field in inspect::header_fields(message) {
        let name = &message[field.name.clone()];
        if name.eq_ignore_ascii_case(b"from") {
            from_fields += 1;
            from = Some(field.name.start..field.value.end);
        }
        has_date |= name.eq_ignore_ascii_case(b"date");
        has_message_id |= name.eq_ignore_ascii_case(b"message-id");
    }
    let from = match (from_fields, from) {
        (0, _) | (_, None) => FromField::Missing,
        (1, Some(field)) => from_field(&message[field]),
        _ => FromField::Malformed("more than one From field"),
    };
    HeaderFacts {
        from,
        has_date,
        has_message_id,
    }
}

/// The state of one From field, given as it was written (name, value and folding).
fn from_field(field: &[u8]) -> FromField {
    let mut section = field.to_vec();
    if !section.ends_with(b"\n") {
        section.extend_from_slice(b"\r\n");
    }
    section.extend_from_slice(b"\r\n");
    let parsed = MessageParser::new().parse_headers(&section[..]);
    match parsed.as_ref().and_then(|p| p.header(HeaderName::From)) {
        Some(HeaderValue::Address(address)) => first_domain(address)
            .map(|domain| FromField::Valid { domain })
            .unwrap_or(FromField::Malformed("From has no address with a domain")),
        _ => FromField::Malformed("From is not an address list"),
    }
}

/// The domain of the first address in `address`, if every address has a local part and a domain.
fn first_domain(address: &Address<'_>) -> Option<String> {
    let mut domains = address.iter().map(|a| {
        let text = a.address.as_deref()?;
        let (local, domain) = text.rsplit_once('@')?;
        (!local.is_empty() && domain.contains('.') || domain == "localhost")
            .then(|| domain.trim_end_matches('.').to_ascii_lowercase())
    });
    let first = domains.next()??;
    domains.all(|d| d.is_some()).then_some(first)
}

/// What hygiene decided for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Repairs {
    /// Header fields to add at the top of the message (CRLF-terminated), possibly empty.
    pub fields: String,
    /// The domain of the message's (possibly added) From: the default signing domain.
    pub from_domain: Option<String>,
}

/// The fields to add to a message with `facts`, or the reply that refuses it. `id` is the queue
/// id (for Message-ID), `now` the Unix time of receipt (for Date).
pub(crate) fn repairs(
    facts: &HeaderFacts,
    config: &HygieneConfig,
    sender: &ReversePath,
    id: &str,
    hostname: &str,
    now: u64,
) -> Result<Repairs, Reply> {
    let mut fields = String::new();
    let from_domain = match (&facts.from, config.from) {
        (FromField::Valid { domain }, _) => Some(domain.clone()),
        (_, FromPolicy::Accept) => None,
        (FromField::Missing, FromPolicy::Repair) => match sender {
            ReversePath::Mailbox(mailbox) => {
                fields.push_str(&format!("From: <{mailbox}>\r\n"));
                Some(mailbox.domain.to_ascii_lowercase())
            }
            ReversePath::Null => {
                return Err(refusal(
                    "Message has no From header field (and no sender to repair it with)",
                ))
            }
        },
        (FromField::Missing, _) => {
            return Err(refusal("Message has no From header field (RFC 5322 3.6)"));
        }
        (FromField::Malformed(why), _) => {
            return Err(refusal(&format!("Malformed From header field: {why}")));
        }
    };
    if config.add_date && !facts.has_date {
        fields.push_str(&format!("Date: {}\r\n", rfc5322_date(now)));
    }
    if config.add_message_id && !facts.has_message_id {
        fields.push_str(&format!("Message-ID: <{id}@{hostname}>\r\n"));
    }
    Ok(Repairs {
        fields,
        from_domain,
    })
}

fn refusal(text: &str) -> Reply {
    Reply::new(550, Some(EnhancedCode(5, 6, 0)), text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::Mailbox;

    fn facts(headers: &str) -> HeaderFacts {
        header_facts(format!("{headers}\r\nbody\r\n").as_bytes())
    }

    fn sender() -> ReversePath {
        ReversePath::Mailbox(Mailbox::parse("app@Sender.Example").unwrap())
    }

    #[test]
    fn from_date_and_message_id_are_found() {
        let f = facts("From: App <app@Example.COM>\r\nDate: Mon, 23 Nov 2026 13:45:00 +0000\r\nMessage-ID: <x@y>\r\n");
        assert_eq!(
            f,
            HeaderFacts {
                from: FromField::Valid {
                    domain: "example.com".into()
                },
                has_date: true,
                has_message_id: true
            }
        );
        let f = facts("Subject: no from\r\n");
        assert_eq!(f.from, FromField::Missing);
        assert!(!f.has_date && !f.has_message_id);
    }

    #[test]
    fn malformed_and_repeated_from_fields_are_told_apart() {
        assert_eq!(
            facts("From: a@x.test\r\nFrom: b@y.test\r\n").from,
            FromField::Malformed("more than one From field")
        );
        assert!(matches!(
            facts("From: not an address\r\n").from,
            FromField::Malformed(_)
        ));
        assert!(matches!(
            facts("From: <@x.test>\r\n").from,
            FromField::Malformed(_)
        ));
        assert_eq!(
            facts("From: a@x.test, B <b@y.test>\r\n").from,
            FromField::Valid {
                domain: "x.test".into()
            }
        );
    }

    #[test]
    fn folded_fields_odd_spacing_and_look_alike_names_are_read_right() {
        assert_eq!(
            facts("X-From: a@x.test\r\nFrom:\r\n\tApp\r\n <app@Folded.Test>\r\nX-Date: no\r\n")
                .from,
            FromField::Valid {
                domain: "folded.test".into()
            }
        );
        let f = facts("X-Date: 1\r\nX-Message-ID: 2\r\nFrom : a@x.test\r\n");
        assert_eq!(
            (f.from, f.has_date, f.has_message_id),
            (
                FromField::Valid {
                    domain: "x.test".into()
                },
                false,
                false
            )
        );
        // Headers only, no body; and a From in the body is not a header.
        assert!(matches!(
            header_facts(b"From: a@x.test\r\n").from,
            FromField::Valid { .. }
        ));
        assert_eq!(
            header_facts(b"Subject: s\r\n\r\nFrom: a@x.test\r\n").from,
            FromField::Missing
        );
    }

    #[test]
    fn missing_date_and_message_id_are_added() {
        let config = HygieneConfig::default();
        let r = repairs(
            &facts("From: a@x.test\r\n"),
            &config,
            &sender(),
            "ID1",
            "relay.test",
            1_795_441_500,
        )
        .unwrap();
        assert_eq!(
            r.fields,
            "Date: Mon, 23 Nov 2026 13:45:00 +0000\r\nMessage-ID: <ID1@relay.test>\r\n"
        );
        assert_eq!(r.from_domain.as_deref(), Some("x.test"));
        let off = HygieneConfig {
            add_date: false,
            add_message_id: false,
            ..HygieneConfig::default()
        };
        let r = repairs(&facts("From: a@x.test\r\n"), &off, &sender(), "ID1", "h", 0).unwrap();
        assert_eq!(r.fields, "");
    }

    #[test]
    fn a_missing_from_is_refused_repaired_or_accepted_as_configured() {
        let missing = facts("Date: Mon, 23 Nov 2026 13:45:00 +0000\r\nMessage-ID: <x@y>\r\n");
        let reject = HygieneConfig::default();
        let err = repairs(&missing, &reject, &sender(), "I", "h", 0).unwrap_err();
        assert_eq!((err.code, err.enhanced), (550, Some(EnhancedCode(5, 6, 0))));

        let repair = HygieneConfig {
            from: FromPolicy::Repair,
            ..HygieneConfig::default()
        };
        let r = repairs(&missing, &repair, &sender(), "I", "h", 0).unwrap();
        assert_eq!(r.fields, "From: <app@sender.example>\r\n");
        assert_eq!(r.from_domain.as_deref(), Some("sender.example"));
        assert!(repairs(&missing, &repair, &ReversePath::Null, "I", "h", 0).is_err());
        // A malformed From is not guessed at, even under repair.
        assert!(repairs(&facts("From: nobody\r\n"), &repair, &sender(), "I", "h", 0).is_err());

        let accept = HygieneConfig {
            from: FromPolicy::Accept,
            ..HygieneConfig::default()
        };
        let r = repairs(&missing, &accept, &sender(), "I", "h", 0).unwrap();
        assert_eq!((r.fields.as_str(), r.from_domain), ("", None));
    }
}
