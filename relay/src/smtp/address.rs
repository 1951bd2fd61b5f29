//! RFC 5321 4.1.2 mailboxes and paths (with RFC 6531 UTF-8), parsed once at the protocol boundary.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An RFC 5321 mailbox: local-part @ domain.
///
/// The local part is kept verbatim, including the quotes if it was a quoted
/// string (RFC 5321 2.4: only the destination host may interpret it). The
/// domain is lower-cased; an address literal keeps its brackets and is written
/// in canonical form (`[192.0.2.1]`, `[IPv6:2001:db8::1]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "server", derive(serde::Serialize, serde::Deserialize))]
pub struct Mailbox {
    /// The local part, verbatim (dot-string or quoted-string).
    pub local: String,
    /// The lower-cased domain or canonical address literal.
    pub domain: String,
}

/// Why an address was refused. The text is shown to SMTP clients after
/// "Bad sender/recipient address syntax:".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing where an address was expected.
    #[error("empty address")]
    Empty,
    /// A path that is not enclosed in angle brackets (RFC 5321 4.1.2).
    #[error("the address must be enclosed in <>")]
    MissingBrackets,
    /// A mailbox without `@domain`.
    #[error("the address has no domain")]
    MissingDomain,
    /// The local part is neither a dot-string nor a quoted-string.
    #[error("invalid local part")]
    InvalidLocalPart,
    /// The domain is not a sequence of valid labels.
    #[error("invalid domain")]
    InvalidDomain,
    /// An address literal that is not `[IPv4]` or `[IPv6:...]`.
    #[error("invalid address literal (use [192.0.2.1] or [IPv6:2001:db8::1])")]
    InvalidAddressLiteral,
    /// A domain longer than DNS allows.
    #[error("domain longer than 255 octets")]
    DomainTooLong,
    /// A malformed `@a,@b:` source route.
    #[error("invalid source route")]
    InvalidSourceRoute,
    /// The null path `<>` where a mailbox is required.
    #[error("the null address <> is not allowed here")]
    NullNotAllowed,
    /// Characters after the end of the address.
    #[error("unexpected characters after the address")]
    TrailingCharacters,
}

impl Mailbox {
    /// Parses `local@domain` (no angle brackets). UTF-8 is accepted in both
    /// parts (RFC 6531); use [`Mailbox::is_ascii`] to check it was not used.
    pub fn parse(s: &str) -> Result<Mailbox, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        let mut c = Cursor::new(s);
        let mailbox = parse_mailbox(&mut c)?;
        if !c.at_end() {
            return Err(AddressError::TrailingCharacters);
        }
        Ok(mailbox)
    }

    /// True if neither part contains non-ASCII characters (no SMTPUTF8 needed).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// The IP address of an address-literal domain (`user@[192.0.2.1]`), if it is one.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        let inner = self.domain.strip_prefix('[')?.strip_suffix(']')?;
        match inner.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                inner[5..].parse::<Ipv6Addr>().ok().map(IpAddr::V6)
            }
            _ => inner.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        }
    }

    /// `local@domain` as a new string: what `to_string()` gives, in one allocation of the
    /// right size (the hook paths make one per recipient).
    pub fn address(&self) -> String {
        let mut text = String::with_capacity(self.local.len() + 1 + self.domain.len());
        self.write_address(&mut text);
        text
    }

    /// Appends `local@domain` to `out`.
    pub fn write_address(&self, out: &mut String) {
        out.push_str(&self.local);
        out.push('@');
        out.push_str(&self.domain);
    }

    /// True when `text` is exactly `local@domain` (what [`Mailbox::address`] gives).
    pub fn is_written_as(&self, text: &str) -> bool {
        let text = text.as_bytes();
        let (local, domain) = (self.local.as_bytes(), self.domain.as_bytes());
        text.len() == local.len() + 1 + domain.len()
            && text.starts_with(local)
            && text[local.len()] == b'@'
            && text.ends_with(domain)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl FromStr for Mailbox {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Mailbox, AddressError> {
        Mailbox::parse(s)
    }
}

/// The MAIL FROM path: the null sender `<>` (bounces, DSNs) or a mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "server", derive(serde::Serialize, serde::Deserialize))]
pub enum ReversePath {
    /// `MAIL FROM:<>`: no bounce may be sent for this message.
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// True for the null sender `<>`.
    pub fn is_null(&self) -> bool {
        matches!(self, ReversePath::Null)
    }

    /// The sender mailbox, unless this is the null sender.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }

    /// True if the path needs no SMTPUTF8 (the null path is ASCII).
    pub fn is_ascii(&self) -> bool {
        self.mailbox().is_none_or(Mailbox::is_ascii)
    }

    /// `""` for the null sender, else [`Mailbox::address`].
    pub fn address(&self) -> String {
        self.mailbox().map(Mailbox::address).unwrap_or_default()
    }
}

/// `""` for the null sender, else `local@domain`.
impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// Parses a `<...>` path at the start of `s`: `<>` (returned as `None`), a
/// mailbox, or a mailbox behind a source route `<@a,@b:user@dom>` whose route
/// is dropped (RFC 5321 3.6.1 and appendix C). Returns the mailbox and the
/// number of bytes of `s` the path took.
pub(crate) fn parse_path(s: &str) -> Result<(Option<Mailbox>, usize), AddressError> {
    let mut c = Cursor::new(s);
    if c.at_end() {
        return Err(AddressError::Empty);
    }
    if !c.eat(b'<') {
        return Err(AddressError::MissingBrackets);
    }
    if c.eat(b'>') {
        return Ok((None, c.pos));
    }
    if c.peek() == Some(b'@') {
        // A-d-l = At-domain *( "," At-domain ) ":"
        loop {
            if !c.eat(b'@') {
                return Err(AddressError::InvalidSourceRoute);
            }
            parse_domain_or_literal(&mut c).map_err(|_| AddressError::InvalidSourceRoute)?;
            if c.eat(b',') {
                continue;
            }
            if c.eat(b':') {
                break;
            }
            return Err(AddressError::InvalidSourceRoute);
        }
    }
    let mailbox = parse_mailbox(&mut c)?;
    if !c.eat(b'>') {
        return Err(AddressError::TrailingCharacters);
    }
    Ok((Some(mailbox), c.pos))
}

/// A byte cursor over a `&str`. Every position it stops at is next to an
/// ASCII delimiter or at an end, so slicing there is always on a char boundary.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn slice(&self, start: usize) -> Option<&'a str> {
        self.s.get(start..self.pos)
    }
}

/// RFC 5322 atext plus RFC 6531 UTF8-non-ascii.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

/// RFC 5321 qtextSMTP plus RFC 6531 UTF8-non-ascii.
fn is_qtext(b: u8) -> bool {
    matches!(b, 32..=33 | 35..=91 | 93..=126) || b >= 0x80
}

fn parse_mailbox(c: &mut Cursor<'_>) -> Result<Mailbox, AddressError> {
    let local = parse_local_part(c)?;
    if !c.eat(b'@') {
        return Err(match c.peek() {
            None | Some(b'>') => AddressError::MissingDomain,
            Some(_) => AddressError::InvalidLocalPart,
        });
    }
    let domain = parse_domain_or_literal(c)?;
    Ok(Mailbox {
        local: local.to_owned(),
        domain,
    })
}

/// Local-part = Dot-string / Quoted-string
fn parse_local_part<'a>(c: &mut Cursor<'a>) -> Result<&'a str, AddressError> {
    let start = c.pos;
    let bytes = c.s.as_bytes();
    if c.eat(b'"') {
        loop {
            match c.peek() {
                Some(b'"') => {
                    c.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    c.pos += 1;
                    match c.peek() {
                        Some(32..=126) => c.pos += 1,
                        _ => return Err(AddressError::InvalidLocalPart),
                    }
                }
                Some(b) if is_qtext(b) => c.pos += 1,
                _ => return Err(AddressError::InvalidLocalPart),
            }
        }
    } else {
        // Dot-string = Atom *("." Atom)
        loop {
            let atom_start = c.pos;
            while bytes.get(c.pos).is_some_and(|&b| is_atext(b)) {
                c.pos += 1;
            }
            if c.pos == atom_start {
                return Err(if c.pos == start && matches!(c.peek(), None | Some(b'>')) {
                    AddressError::Empty
                } else {
                    AddressError::InvalidLocalPart
                });
            }
            if !c.eat(b'.') {
                break;
            }
        }
    }
    c.slice(start).ok_or(AddressError::InvalidLocalPart)
}

/// Domain / address-literal, returned lower-cased or in canonical literal form.
fn parse_domain_or_literal(c: &mut Cursor<'_>) -> Result<String, AddressError> {
    if c.peek() == Some(b'[') {
        return parse_address_literal(c);
    }
    let start = c.pos;
    let bytes = c.s.as_bytes();
    // Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str] / U-label
    loop {
        let label_start = c.pos;
        while bytes
            .get(c.pos)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80)
        {
            c.pos += 1;
        }
        let label = &bytes[label_start..c.pos];
        let (Some(&first), Some(&last)) = (label.first(), label.last()) else {
            return Err(AddressError::InvalidDomain);
        };
        if first == b'-' || last == b'-' || (label.is_ascii() && label.len() > 63) {
            return Err(AddressError::InvalidDomain);
        }
        if !c.eat(b'.') {
            break;
        }
    }
    let domain = c.slice(start).ok_or(AddressError::InvalidDomain)?;
    if domain.len() > 255 {
        return Err(AddressError::DomainTooLong);
    }
    Ok(domain.to_lowercase())
}

/// address-literal = "[" ( IPv4-address-literal / IPv6-address-literal ) "]".
/// General-address-literal tags are refused: none is registered that we could deliver to.
fn parse_address_literal(c: &mut Cursor<'_>) -> Result<String, AddressError> {
    let rest =
        c.s.get(c.pos..)
            .ok_or(AddressError::InvalidAddressLiteral)?;
    let close = rest.find(']').ok_or(AddressError::InvalidAddressLiteral)?;
    let inner = &rest[1..close];
    let canonical = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            let ip: Ipv6Addr = inner[5..]
                .parse()
                .map_err(|_| AddressError::InvalidAddressLiteral)?;
            format!("[IPv6:{ip}]")
        }
        _ => {
            let ip: Ipv4Addr = inner
                .parse()
                .map_err(|_| AddressError::InvalidAddressLiteral)?;
            format!("[{ip}]")
        }
    };
    c.pos += close + 1;
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn parses_plain_mailbox_and_lowercases_domain_only() {
        assert_eq!(
            Mailbox::parse("John.Doe@Example.COM"),
            Ok(mb("John.Doe", "example.com"))
        );
    }

    #[test]
    fn keeps_quoted_local_part_verbatim() {
        let m = Mailbox::parse(r#""john \"x\" doe"@example.com"#).unwrap();
        assert_eq!(m.local, r#""john \"x\" doe""#);
        assert_eq!(m.to_string(), r#""john \"x\" doe"@example.com"#);
        assert_eq!(m.address(), m.to_string());
        assert!(m.is_written_as(&m.to_string()));
        assert!(!m.is_written_as(r#""john \"x\" doe"@example.co"#));
        assert!(!m.is_written_as(r#""john \"x\" doe"#));
        assert!(!m.is_written_as(r#""john \"x\" doe"xexample.com"#));
    }

    #[test]
    fn accepts_empty_quoted_local_part_and_special_atext() {
        assert!(Mailbox::parse(r#"""@example.com"#).is_ok());
        assert!(Mailbox::parse("a+b!#$%&'*/=?^_`{|}~-c@x.y").is_ok());
    }

    #[test]
    fn rejects_bad_dot_strings() {
        for bad in [
            ".a@x", "a.@x", "a..b@x", "a b@x", "a\"b@x", "a(b)@x", "a,b@x",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_quoted_strings() {
        for bad in ["\"abc@x", "\"a\\\u{7}\"@x", "\"a\tb\"@x"] {
            assert_eq!(
                Mailbox::parse(bad),
                Err(AddressError::InvalidLocalPart),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reports_missing_domain() {
        assert_eq!(
            Mailbox::parse("postmaster"),
            Err(AddressError::MissingDomain)
        );
        assert_eq!(parse_path("<postmaster>"), Err(AddressError::MissingDomain));
    }

    #[test]
    fn rejects_bad_domains() {
        for bad in [
            "a@",
            "a@-x.com",
            "a@x-.com",
            "a@x..com",
            "a@x.com.",
            "a@.x",
            "a@x_y.com",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "{bad}");
        }
        let long_label = format!("a@{}.com", "x".repeat(64));
        assert_eq!(
            Mailbox::parse(&long_label),
            Err(AddressError::InvalidDomain)
        );
        let long_domain = format!("a@{}x", "x.".repeat(128));
        assert_eq!(
            Mailbox::parse(&long_domain),
            Err(AddressError::DomainTooLong)
        );
    }

    #[test]
    fn address_literals_are_canonicalised() {
        assert_eq!(Mailbox::parse("a@[192.0.2.1]"), Ok(mb("a", "[192.0.2.1]")));
        assert_eq!(
            Mailbox::parse("a@[ipv6:2001:DB8:0:0::1]"),
            Ok(mb("a", "[IPv6:2001:db8::1]"))
        );
        assert_eq!(
            Mailbox::parse("a@[IPv6:2001:db8::1]").unwrap().literal_ip(),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            Mailbox::parse("a@[192.0.2.1]").unwrap().literal_ip(),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(Mailbox::parse("a@x.com").unwrap().literal_ip(), None);
    }

    #[test]
    fn rejects_bad_address_literals() {
        for bad in [
            "a@[1.2.3]",
            "a@[256.1.1.1]",
            "a@[IPv6:1.2.3.4]",
            "a@[tag:xyz]",
            "a@[1.2.3.4",
            "a@[]",
        ] {
            assert_eq!(
                Mailbox::parse(bad),
                Err(AddressError::InvalidAddressLiteral),
                "{bad}"
            );
        }
    }

    #[test]
    fn utf8_is_parsed_and_flagged_non_ascii() {
        let m = Mailbox::parse("jörg@Bücher.example").unwrap();
        assert_eq!(m.domain, "bücher.example");
        assert!(!m.is_ascii());
        assert!(Mailbox::parse("a@b.c").unwrap().is_ascii());
    }

    #[test]
    fn path_parses_null_and_reports_length() {
        assert_eq!(parse_path("<> SIZE=1"), Ok((None, 2)));
        assert_eq!(parse_path("<a@b.c> X"), Ok((Some(mb("a", "b.c")), 7)));
    }

    #[test]
    fn path_drops_source_route() {
        assert_eq!(
            parse_path("<@hosta.int,@jkl.org:userc@d.bar.org>"),
            Ok((Some(mb("userc", "d.bar.org")), 37))
        );
        assert_eq!(parse_path("<@a:u@b>"), Ok((Some(mb("u", "b")), 8)));
        for bad in ["<@a,u@b>", "<@:u@b>", "<@a;u@b>", "<@a,:u@b>"] {
            assert_eq!(
                parse_path(bad),
                Err(AddressError::InvalidSourceRoute),
                "{bad}"
            );
        }
    }

    #[test]
    fn path_requires_brackets_and_nothing_inside_after_mailbox() {
        assert_eq!(parse_path("a@b"), Err(AddressError::MissingBrackets));
        assert_eq!(parse_path(""), Err(AddressError::Empty));
        assert_eq!(parse_path("<a@b"), Err(AddressError::TrailingCharacters));
        assert_eq!(parse_path("<a@b c>"), Err(AddressError::TrailingCharacters));
        assert_eq!(parse_path("< a@b>"), Err(AddressError::InvalidLocalPart));
    }

    #[test]
    fn quoted_local_part_may_contain_angle_bracket_and_at() {
        assert_eq!(
            parse_path(r#"<"a>b@c"@d.e>"#),
            Ok((Some(mb(r#""a>b@c""#, "d.e")), 13))
        );
    }

    #[test]
    fn reverse_path_display_and_helpers() {
        assert_eq!(ReversePath::Null.to_string(), "");
        assert_eq!(ReversePath::Null.address(), "");
        assert!(ReversePath::Null.is_null() && ReversePath::Null.is_ascii());
        let p = ReversePath::Mailbox(mb("a", "b"));
        assert_eq!(p.to_string(), "a@b");
        assert_eq!(p.address(), "a@b");
        assert_eq!(p.mailbox(), Some(&mb("a", "b")));
    }
}
