//! The SMTP command-line parser: one line (without its line ending) in, a typed command out.

use super::address::{parse_path, AddressError, Mailbox, ReversePath};
use super::reply::Reply;

/// The command verb, recognised case-insensitively from the first word of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `EHLO` (RFC 5321 4.1.1.1).
    Ehlo,
    /// `HELO`: plain SMTP, no extensions.
    Helo,
    /// `MAIL FROM:`.
    Mail,
    /// `RCPT TO:`.
    Rcpt,
    /// `DATA`.
    Data,
    /// `BDAT` (RFC 3030 CHUNKING).
    Bdat,
    /// `RSET`.
    Rset,
    /// `NOOP`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY`.
    Vrfy,
    /// `EXPN` (not implemented).
    Expn,
    /// `HELP`.
    Help,
    /// `ETRN` (not implemented).
    Etrn,
    /// `TURN` (not implemented).
    Turn,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH` (RFC 4954).
    Auth,
    /// Anything else.
    Unknown,
}

impl Verb {
    /// Identifies the verb of a command line.
    pub fn of_line(line: &[u8]) -> Verb {
        let word = line.split(|&b| b == b' ').next().unwrap_or(line);
        let mut buf = [0u8; 8];
        if word.len() > buf.len() {
            return Verb::Unknown;
        }
        for (d, s) in buf.iter_mut().zip(word) {
            *d = s.to_ascii_uppercase();
        }
        match &buf[..word.len()] {
            b"EHLO" => Verb::Ehlo,
            b"HELO" => Verb::Helo,
            b"MAIL" => Verb::Mail,
            b"RCPT" => Verb::Rcpt,
            b"DATA" => Verb::Data,
            b"BDAT" => Verb::Bdat,
            b"RSET" => Verb::Rset,
            b"NOOP" => Verb::Noop,
            b"QUIT" => Verb::Quit,
            b"VRFY" => Verb::Vrfy,
            b"EXPN" => Verb::Expn,
            b"HELP" => Verb::Help,
            b"ETRN" => Verb::Etrn,
            b"TURN" => Verb::Turn,
            b"STARTTLS" => Verb::StartTls,
            b"AUTH" => Verb::Auth,
            _ => Verb::Unknown,
        }
    }

    /// Commands that may only be the last of a pipelined group (RFC 2920 3.1),
    /// so no input may be buffered behind them.
    pub fn ends_pipeline_group(self) -> bool {
        matches!(
            self,
            Verb::Ehlo
                | Verb::Helo
                | Verb::Data
                | Verb::Quit
                | Verb::Noop
                | Verb::Vrfy
                | Verb::Expn
                | Verb::Help
                | Verb::Turn
                | Verb::StartTls
                | Verb::Auth
        )
    }
}

/// The BODY= parameter of MAIL FROM (RFC 6152).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "server", derive(serde::Serialize, serde::Deserialize))]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// The ESMTP parameters of MAIL FROM that this server offers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "server", derive(serde::Serialize, serde::Deserialize))]
pub struct MailParams {
    /// `SIZE=n` (RFC 1870): the client's estimate of the message size in octets.
    pub size: Option<u64>,
    /// `BODY=7BIT|8BITMIME` (RFC 6152).
    pub body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531): UTF-8 addresses and headers may follow.
    pub smtputf8: bool,
    /// `AUTH=<mailbox>` or `AUTH=<>` (RFC 4954 5): who submitted the message originally,
    /// as xtext. Accepted and recorded, never trusted: the session's own login decides.
    pub auth: Option<String>,
}

impl MailParams {
    /// True if any parameter was given (they require EHLO).
    pub fn any(&self) -> bool {
        self.size.is_some() || self.body.is_some() || self.smtputf8 || self.auth.is_some()
    }
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `EHLO name`.
    Ehlo(String),
    /// `HELO name`.
    Helo(String),
    /// `MAIL FROM:<path> [params]`.
    Mail(ReversePath, MailParams),
    /// `RCPT TO:<path>` (no parameters are offered yet).
    Rcpt(Mailbox),
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]`: `size` octets of message content follow the line.
    Bdat {
        /// The number of octets that follow the command line.
        size: u64,
        /// True if this is the final chunk of the message.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [text]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY text`.
    Vrfy,
    /// `HELP [topic]`.
    Help,
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]`.
    Auth {
        /// The SASL mechanism name, upper-cased.
        mechanism: String,
        /// The initial response (base64, or `=` for an empty one), if given.
        initial: Option<String>,
    },
}

/// Why a command line was refused, with the verb it started with (the session
/// reports a sequence error for the verb before any syntax error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct CommandError {
    /// The verb of the refused line.
    pub verb: Verb,
    /// What was wrong with it.
    pub kind: CommandErrorKind,
}

/// The kinds of command errors; each maps to one reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandErrorKind {
    /// Unknown verb: 500 5.5.2.
    #[error("command not recognized")]
    Unknown,
    /// A known verb this server does not implement: 502 5.5.1.
    #[error("command not implemented")]
    NotImplemented,
    /// Wrong arguments: 501 5.5.4 with the expected syntax.
    #[error("syntax: {0}")]
    Syntax(&'static str),
    /// Bad MAIL FROM path: 501 5.1.7.
    #[error("bad sender address syntax: {0}")]
    Sender(AddressError),
    /// Bad RCPT TO path: 501 5.1.3, or 550 5.1.3 for a mailbox without domain.
    #[error("bad recipient address syntax: {0}")]
    Recipient(AddressError),
    /// A non-ASCII sender without the SMTPUTF8 parameter: 553 5.6.7.
    #[error("non-ASCII address without SMTPUTF8")]
    NeedsSmtpUtf8,
    /// A malformed ESMTP parameter: 501 5.5.4.
    #[error("invalid parameter: {0}")]
    BadParam(&'static str),
    /// A parameter this server does not offer: 555 5.5.4.
    #[error("unsupported parameter {0}")]
    UnsupportedParam(String),
}

impl CommandError {
    fn new(verb: Verb, kind: CommandErrorKind) -> CommandError {
        CommandError { verb, kind }
    }

    /// The reply that tells the client what was wrong.
    pub fn reply(&self) -> Reply {
        use CommandErrorKind as K;
        match &self.kind {
            K::Unknown => Reply::enhanced(500, (5, 5, 2), "Command not recognized"),
            K::NotImplemented => Reply::enhanced(502, (5, 5, 1), "Command not implemented"),
            K::Syntax(s) => Reply::enhanced(501, (5, 5, 4), format!("Syntax: {s}")),
            K::Sender(e) => {
                Reply::enhanced(501, (5, 1, 7), format!("Bad sender address syntax: {e}"))
            }
            K::Recipient(AddressError::MissingDomain) => Reply::enhanced(
                550,
                (5, 1, 3),
                "Recipient address must include a domain (user@domain)",
            ),
            K::Recipient(e) => {
                Reply::enhanced(501, (5, 1, 3), format!("Bad recipient address syntax: {e}"))
            }
            K::NeedsSmtpUtf8 => Reply::enhanced(
                553,
                (5, 6, 7),
                "Non-ASCII address requires the SMTPUTF8 parameter on MAIL FROM",
            ),
            K::BadParam(s) => Reply::enhanced(501, (5, 5, 4), format!("Invalid parameter: {s}")),
            K::UnsupportedParam(p) => {
                Reply::enhanced(555, (5, 5, 4), format!("Unsupported parameter {p}"))
            }
        }
    }
}

const MAIL_SYNTAX: &str = "MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8]";
const RCPT_SYNTAX: &str = "RCPT TO:<address>";
const BDAT_SYNTAX: &str = "BDAT <size> [LAST]";

/// Parses one command line, given without its line ending.
///
/// Verbs and keywords are case-insensitive; trailing spaces and tabs are
/// ignored; one or more spaces may follow `MAIL FROM:` and `RCPT TO:`.
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let verb = Verb::of_line(line);
    let err = |kind| Err(CommandError::new(verb, kind));
    let end = line
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |p| p + 1);
    let line = &line[..end];
    // Everything after the verb and the space that follows it.
    let args: &[u8] = match line.iter().position(|&b| b == b' ') {
        Some(sp) => &line[sp + 1..],
        None => &[],
    };
    let no_args = |cmd: Command, syntax: &'static str| {
        if args.is_empty() {
            Ok(cmd)
        } else {
            err(CommandErrorKind::Syntax(syntax))
        }
    };
    match verb {
        Verb::Unknown => err(CommandErrorKind::Unknown),
        Verb::Expn | Verb::Etrn | Verb::Turn => err(CommandErrorKind::NotImplemented),
        Verb::StartTls => no_args(Command::StartTls, "STARTTLS"),
        Verb::Auth => {
            let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
            let mechanism = words.next();
            let initial = words.next();
            match (mechanism, initial, words.next()) {
                (Some(m), initial, None)
                    if m.len() <= 20
                        && m.iter()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
                        && initial.is_none_or(|i| i.iter().all(u8::is_ascii_graphic)) =>
                {
                    Ok(Command::Auth {
                        mechanism: String::from_utf8_lossy(m).to_ascii_uppercase(),
                        initial: initial.map(|i| String::from_utf8_lossy(i).into_owned()),
                    })
                }
                _ => err(CommandErrorKind::Syntax(
                    "AUTH mechanism [initial-response]",
                )),
            }
        }
        Verb::Ehlo | Verb::Helo => {
            // Lenient: the first word is the name; anything after it is ignored.
            let name = args.split(|&b| b == b' ').find(|w| !w.is_empty());
            match name {
                Some(n) if n.iter().all(|b| b.is_ascii_graphic()) => {
                    let name = String::from_utf8_lossy(n).into_owned();
                    Ok(if verb == Verb::Ehlo {
                        Command::Ehlo(name)
                    } else {
                        Command::Helo(name)
                    })
                }
                _ if verb == Verb::Ehlo => err(CommandErrorKind::Syntax("EHLO hostname")),
                _ => err(CommandErrorKind::Syntax("HELO hostname")),
            }
        }
        Verb::Mail => parse_mail(args).map_err(|k| CommandError::new(verb, k)),
        Verb::Rcpt => parse_rcpt(args).map_err(|k| CommandError::new(verb, k)),
        Verb::Data => no_args(Command::Data, "DATA"),
        Verb::Rset => no_args(Command::Rset, "RSET"),
        Verb::Quit => no_args(Command::Quit, "QUIT"),
        Verb::Noop => Ok(Command::Noop),
        Verb::Help => Ok(Command::Help),
        Verb::Vrfy if args.iter().all(|&b| b == b' ') => {
            err(CommandErrorKind::Syntax("VRFY address"))
        }
        Verb::Vrfy => Ok(Command::Vrfy),
        Verb::Bdat => parse_bdat(args).map_err(|k| CommandError::new(verb, k)),
    }
}

/// Strips a case-insensitive keyword such as `FROM:` and the spaces after it.
fn strip_keyword<'a>(args: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = &args[keyword.len()..];
    let skip = rest.iter().take_while(|&&b| b == b' ').count();
    Some(&rest[skip..])
}

/// Splits `<path> params` into the path and the parameter words.
fn split_path(rest: &[u8]) -> Result<(Option<Mailbox>, &str), AddressError> {
    let text = std::str::from_utf8(rest).map_err(|_| AddressError::InvalidLocalPart)?;
    let (mailbox, used) = parse_path(text)?;
    let params = &text[used..];
    if !params.is_empty() && !params.starts_with(' ') {
        return Err(AddressError::TrailingCharacters);
    }
    Ok((mailbox, params))
}

fn parse_mail(args: &[u8]) -> Result<Command, CommandErrorKind> {
    let rest = strip_keyword(args, b"FROM:").ok_or(CommandErrorKind::Syntax(MAIL_SYNTAX))?;
    let (mailbox, params_text) = split_path(rest).map_err(CommandErrorKind::Sender)?;
    let mut params = MailParams::default();
    for param in params_text.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = split_param(param)?;
        if key.eq_ignore_ascii_case("SIZE") {
            let v = value.ok_or(CommandErrorKind::BadParam("SIZE needs a value"))?;
            if params.size.is_some() {
                return Err(CommandErrorKind::BadParam("duplicate SIZE"));
            }
            if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CommandErrorKind::BadParam("SIZE must be a number"));
            }
            // 20 digits can overflow u64; such a size is over any limit anyway.
            params.size = Some(v.parse().unwrap_or(u64::MAX));
        } else if key.eq_ignore_ascii_case("BODY") {
            let v = value.ok_or(CommandErrorKind::BadParam("BODY needs a value"))?;
            if params.body.is_some() {
                return Err(CommandErrorKind::BadParam("duplicate BODY"));
            }
            params.body = Some(if v.eq_ignore_ascii_case("7BIT") {
                Body::SevenBit
            } else if v.eq_ignore_ascii_case("8BITMIME") {
                Body::EightBitMime
            } else if v.eq_ignore_ascii_case("BINARYMIME") {
                return Err(CommandErrorKind::UnsupportedParam("BODY=BINARYMIME".into()));
            } else {
                return Err(CommandErrorKind::BadParam("BODY must be 7BIT or 8BITMIME"));
            });
        } else if key.eq_ignore_ascii_case("SMTPUTF8") {
            if value.is_some() {
                return Err(CommandErrorKind::BadParam("SMTPUTF8 takes no value"));
            }
            if params.smtputf8 {
                return Err(CommandErrorKind::BadParam("duplicate SMTPUTF8"));
            }
            params.smtputf8 = true;
        } else if key.eq_ignore_ascii_case("AUTH") {
            let v = value.ok_or(CommandErrorKind::BadParam("AUTH needs a value"))?;
            if params.auth.is_some() {
                return Err(CommandErrorKind::BadParam("duplicate AUTH"));
            }
            if v.len() > 500 {
                return Err(CommandErrorKind::BadParam("AUTH value too long"));
            }
            params.auth = Some(v.to_owned());
        } else {
            return Err(CommandErrorKind::UnsupportedParam(truncate(key)));
        }
    }
    let from = match mailbox {
        None => ReversePath::Null,
        Some(m) => {
            if !m.is_ascii() && !params.smtputf8 {
                return Err(CommandErrorKind::NeedsSmtpUtf8);
            }
            ReversePath::Mailbox(m)
        }
    };
    Ok(Command::Mail(from, params))
}

fn parse_rcpt(args: &[u8]) -> Result<Command, CommandErrorKind> {
    let rest = strip_keyword(args, b"TO:").ok_or(CommandErrorKind::Syntax(RCPT_SYNTAX))?;
    let (mailbox, params_text) = split_path(rest).map_err(CommandErrorKind::Recipient)?;
    let mailbox = mailbox.ok_or(CommandErrorKind::Recipient(AddressError::NullNotAllowed))?;
    if let Some(param) = params_text.split(' ').find(|p| !p.is_empty()) {
        let (key, _) = split_param(param)?;
        return Err(CommandErrorKind::UnsupportedParam(truncate(key)));
    }
    Ok(Command::Rcpt(mailbox))
}

/// esmtp-param = esmtp-keyword ["=" esmtp-value] (RFC 5321 4.1.2).
fn split_param(param: &str) -> Result<(&str, Option<&str>), CommandErrorKind> {
    let (key, value) = match param.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (param, None),
    };
    let key_ok = key
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !key_ok {
        return Err(CommandErrorKind::BadParam("malformed keyword"));
    }
    if let Some(v) = value {
        // esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 (RFC 6531).
        if v.is_empty() || v.bytes().any(|b| b < 33 || b == b'=' || b == 127) {
            return Err(CommandErrorKind::BadParam("malformed value"));
        }
    }
    Ok((key, value))
}

fn truncate(key: &str) -> String {
    key.chars()
        .take(32)
        .collect::<String>()
        .to_ascii_uppercase()
}

fn parse_bdat(args: &[u8]) -> Result<Command, CommandErrorKind> {
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words.next().ok_or(CommandErrorKind::Syntax(BDAT_SYNTAX))?;
    if size.len() > 19 || !size.iter().all(u8::is_ascii_digit) {
        return Err(CommandErrorKind::Syntax(BDAT_SYNTAX));
    }
    let size = size.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(CommandErrorKind::Syntax(BDAT_SYNTAX)),
    };
    if words.next().is_some() {
        return Err(CommandErrorKind::Syntax(BDAT_SYNTAX));
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, CommandError> {
        parse_command(s.as_bytes())
    }

    fn kind(s: &str) -> CommandErrorKind {
        parse(s).unwrap_err().kind
    }

    fn code(s: &str) -> String {
        let r = parse(s).unwrap_err().reply();
        format!(
            "{} {}",
            r.code,
            r.enhanced.map(|e| e.to_string()).unwrap_or_default()
        )
    }

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(parse("noop"), Ok(Command::Noop));
        assert_eq!(parse("QuIt"), Ok(Command::Quit));
        assert_eq!(
            parse("ehlo Client.Example"),
            Ok(Command::Ehlo("Client.Example".into()))
        );
        assert_eq!(parse("helo x"), Ok(Command::Helo("x".into())));
        assert_eq!(parse("rset  "), Ok(Command::Rset));
        assert_eq!(parse("data"), Ok(Command::Data));
    }

    #[test]
    fn ehlo_needs_a_printable_name_and_ignores_extra_words() {
        assert_eq!(code("EHLO"), "501 5.5.4");
        assert_eq!(code("HELO "), "501 5.5.4");
        assert_eq!(code("EHLO h\u{e9}llo"), "501 5.5.4");
        assert_eq!(
            parse("EHLO [127.0.0.1] extra"),
            Ok(Command::Ehlo("[127.0.0.1]".into()))
        );
    }

    #[test]
    fn unknown_and_unimplemented_verbs() {
        assert_eq!(code("FOO bar"), "500 5.5.2");
        assert_eq!(code(""), "500 5.5.2");
        assert_eq!(code("MAILFROM:<a@b>"), "500 5.5.2");
        for v in ["EXPN list", "ETRN example.com", "TURN"] {
            assert_eq!(code(v), "502 5.5.1", "{v}");
        }
    }

    #[test]
    fn starttls_and_auth_are_parsed() {
        assert_eq!(parse("starttls"), Ok(Command::StartTls));
        assert_eq!(code("STARTTLS now"), "501 5.5.4");
        assert_eq!(
            parse("auth plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            })
        );
        assert_eq!(
            parse("AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
        assert_eq!(code("AUTH"), "501 5.5.4");
        assert_eq!(code("AUTH PLAIN a b"), "501 5.5.4");
    }

    #[test]
    fn commands_without_arguments_refuse_arguments() {
        assert_eq!(code("DATA now"), "501 5.5.4");
        assert_eq!(code("RSET x"), "501 5.5.4");
        assert_eq!(code("QUIT x"), "501 5.5.4");
        assert_eq!(parse("NOOP anything"), Ok(Command::Noop));
        assert_eq!(parse("HELP me"), Ok(Command::Help));
    }

    #[test]
    fn vrfy_requires_an_argument() {
        assert_eq!(parse("VRFY root"), Ok(Command::Vrfy));
        assert_eq!(code("VRFY"), "501 5.5.4");
    }

    #[test]
    fn mail_from_accepts_null_and_optional_space() {
        assert_eq!(
            parse("MAIL FROM:<>"),
            Ok(Command::Mail(ReversePath::Null, MailParams::default()))
        );
        assert_eq!(
            parse("mail from: <a@b.c>"),
            Ok(Command::Mail(
                ReversePath::Mailbox(mb("a", "b.c")),
                MailParams::default()
            ))
        );
        assert_eq!(
            parse("MAIL From:<@x.y:a@b.c>"),
            Ok(Command::Mail(
                ReversePath::Mailbox(mb("a", "b.c")),
                MailParams::default()
            ))
        );
    }

    #[test]
    fn mail_from_syntax_errors() {
        assert_eq!(code("MAIL"), "501 5.5.4");
        assert_eq!(code("MAIL TO:<a@b>"), "501 5.5.4");
        assert_eq!(code("MAIL FROM :<a@b>"), "501 5.5.4");
        assert_eq!(code("MAIL FROM:a@b"), "501 5.1.7");
        assert_eq!(code("MAIL FROM:<a@b>SIZE=1"), "501 5.1.7");
        assert_eq!(code("MAIL FROM:<a@@b>"), "501 5.1.7");
        assert_eq!(code("MAIL FROM:<user>"), "501 5.1.7");
        assert_eq!(
            parse_command(b"MAIL FROM:<a\xff@b>").unwrap_err().kind,
            CommandErrorKind::Sender(AddressError::InvalidLocalPart)
        );
    }

    #[test]
    fn mail_params_are_parsed() {
        let Ok(Command::Mail(_, p)) = parse("MAIL FROM:<a@b> size=1000 Body=8bitmime SMTPUTF8")
        else {
            panic!("not parsed");
        };
        assert_eq!(
            p,
            MailParams {
                size: Some(1000),
                body: Some(Body::EightBitMime),
                smtputf8: true,
                auth: None,
            }
        );
        let Ok(Command::Mail(_, p)) = parse("MAIL FROM:<a@b> AUTH=<>") else {
            panic!("not parsed");
        };
        assert_eq!(p.auth.as_deref(), Some("<>"));
        assert!(parse("MAIL FROM:<a@b> AUTH=<> AUTH=<>").is_err());
        let Ok(Command::Mail(_, p)) = parse("MAIL FROM:<> BODY=7BIT  SIZE=99999999999999999999")
        else {
            panic!("not parsed");
        };
        assert_eq!(p.body, Some(Body::SevenBit));
        assert_eq!(p.size, Some(u64::MAX));
    }

    #[test]
    fn mail_param_errors() {
        assert_eq!(code("MAIL FROM:<a@b> BODY=BINARYMIME"), "555 5.5.4");
        assert_eq!(code("MAIL FROM:<a@b> RET=HDRS"), "555 5.5.4");
        assert_eq!(code("MAIL FROM:<a@b> RET=FULL"), "555 5.5.4");
        assert_eq!(code("MAIL FROM:<a@b> SIZE=abc"), "501 5.5.4");
        assert_eq!(code("MAIL FROM:<a@b> SIZE"), "501 5.5.4");
        assert_eq!(code("MAIL FROM:<a@b> SIZE=1 SIZE=2"), "501 5.5.4");
        assert_eq!(code("MAIL FROM:<a@b> BODY=9BIT"), "501 5.5.4");
        assert_eq!(code("MAIL FROM:<a@b> SMTPUTF8=yes"), "501 5.5.4");
        assert_eq!(code("MAIL FROM:<a@b> =x"), "501 5.5.4");
        assert_eq!(code("MAIL FROM:<a@b> SIZE="), "501 5.5.4");
        assert_eq!(
            kind("MAIL FROM:<a@b> x-custom=1"),
            CommandErrorKind::UnsupportedParam("X-CUSTOM".into())
        );
    }

    #[test]
    fn utf8_sender_requires_smtputf8() {
        assert_eq!(
            code("MAIL FROM:<j\u{f6}rg@b\u{fc}cher.example>"),
            "553 5.6.7"
        );
        assert!(parse("MAIL FROM:<j\u{f6}rg@b\u{fc}cher.example> SMTPUTF8").is_ok());
    }

    #[test]
    fn rcpt_to_parses_paths_and_refuses_params() {
        assert_eq!(parse("RCPT TO:<A@B.C>"), Ok(Command::Rcpt(mb("A", "b.c"))));
        assert_eq!(
            parse("rcpt to: <a@[10.0.0.1]>"),
            Ok(Command::Rcpt(mb("a", "[10.0.0.1]")))
        );
        assert_eq!(
            parse("RCPT TO:<@hosta.int,@jkl.org:userc@d.bar.org>"),
            Ok(Command::Rcpt(mb("userc", "d.bar.org")))
        );
        assert_eq!(code("RCPT TO:<a@b> NOTIFY=NEVER"), "555 5.5.4");
        assert_eq!(code("RCPT TO:<a@b> ="), "501 5.5.4");
    }

    #[test]
    fn rcpt_to_errors() {
        assert_eq!(code("RCPT TO:<>"), "501 5.1.3");
        assert_eq!(code("RCPT TO:<postmaster>"), "550 5.1.3");
        assert_eq!(code("RCPT TO:<a@b"), "501 5.1.3");
        assert_eq!(code("RCPT TO:a@b"), "501 5.1.3");
        assert_eq!(code("RCPT FROM:<a@b>"), "501 5.5.4");
        assert_eq!(code("RCPT TO:<a@-b>"), "501 5.1.3");
        // A UTF-8 recipient parses; the session checks SMTPUTF8 for the transaction.
        assert!(parse("RCPT TO:<\u{fc}@b>").is_ok());
    }

    #[test]
    fn bdat_parses_size_and_last() {
        assert_eq!(
            parse("BDAT 0 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(
            parse("bdat 1000 last"),
            Ok(Command::Bdat {
                size: 1000,
                last: true
            })
        );
        assert_eq!(
            parse("BDAT 12"),
            Ok(Command::Bdat {
                size: 12,
                last: false
            })
        );
        for bad in [
            "BDAT",
            "BDAT x",
            "BDAT -1",
            "BDAT 1 FIRST",
            "BDAT 1 LAST x",
            "BDAT 99999999999999999999",
        ] {
            assert_eq!(code(bad), "501 5.5.4", "{bad}");
        }
    }

    #[test]
    fn error_carries_verb_for_sequence_checks() {
        assert_eq!(parse("RCPT TO:junk").unwrap_err().verb, Verb::Rcpt);
        assert_eq!(parse("MAIL FROM:junk").unwrap_err().verb, Verb::Mail);
    }

    #[test]
    fn group_ending_verbs_follow_rfc_2920() {
        for v in [
            Verb::Ehlo,
            Verb::Helo,
            Verb::Data,
            Verb::Quit,
            Verb::Noop,
            Verb::Vrfy,
            Verb::Expn,
            Verb::Help,
        ] {
            assert!(v.ends_pipeline_group(), "{v:?}");
        }
        for v in [
            Verb::Mail,
            Verb::Rcpt,
            Verb::Rset,
            Verb::Bdat,
            Verb::Unknown,
        ] {
            assert!(!v.ends_pipeline_group(), "{v:?}");
        }
    }
}
