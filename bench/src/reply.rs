//! SMTP replies as the load generator reads them (RFC 5321 4.2): one or more
//! lines `NNN-text`, the last `NNN text`.

/// Longest reply the client buffers before calling the server broken.
pub const MAX_REPLY: usize = 64 * 1024;

/// One complete SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code, e.g. 250.
    pub code: u16,
    /// The text of each line, without code, separator or CRLF.
    pub lines: Vec<String>,
}

impl Reply {
    /// The class of the reply: 2 (success), 3 (intermediate), 4 (transient) or 5 (permanent).
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// True for 2xx.
    pub fn is_positive(&self) -> bool {
        self.class() == 2
    }

    /// True when an EHLO reply lists `keyword` (case-insensitive) as an extension;
    /// the first line is the greeting, not an extension.
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|line| {
            line.split_ascii_whitespace()
                .next()
                .is_some_and(|word| word.eq_ignore_ascii_case(keyword))
        })
    }

    /// The reply as one line for error messages, e.g. `550 5.1.1 no such user`.
    pub fn summary(&self) -> String {
        format!(
            "{} {}",
            self.code,
            self.lines.last().map_or("", String::as_str)
        )
    }
}

/// Why bytes from the server are not an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line that does not start with three digits and a space, hyphen or line end.
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    /// More than `MAX_REPLY` bytes without the end of a reply.
    #[error("reply longer than {MAX_REPLY} bytes")]
    TooLong,
}

/// Parses the first complete reply in `buf`. Returns the reply and how many bytes
/// it used, `None` when more bytes are needed, or an error. Lines end with CRLF;
/// a bare LF is tolerated.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut lines = Vec::new();
    while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
        let raw = &buf[pos..pos + nl];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos += nl + 1;
        let text = String::from_utf8_lossy(raw);
        let (code, last, rest) =
            split_line(&text).ok_or_else(|| ReplyError::Malformed(text.to_string()))?;
        lines.push(rest.to_string());
        if last {
            return Ok(Some((Reply { code, lines }, pos)));
        }
    }
    if buf.len() > MAX_REPLY {
        return Err(ReplyError::TooLong);
    }
    Ok(None)
}

/// `"250-PIPELINING"` -> `(250, false, "PIPELINING")`.
fn split_line(line: &str) -> Option<(u16, bool, &str)> {
    let digits = line.get(..3)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code = digits.parse().ok()?;
    match line.as_bytes().get(3) {
        None => Some((code, true, "")),
        Some(b' ') => Some((code, true, &line[4..])),
        Some(b'-') => Some((code, false, &line[4..])),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_ehlo_reply_is_one_reply_with_extensions() {
        let buf =
            b"250-sink.test hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n220 x";
        let (reply, used) = parse(buf).unwrap().unwrap();
        assert_eq!(reply.code, 250);
        assert_eq!(used, buf.len() - 5);
        assert!(reply.has_extension("pipelining"));
        assert!(reply.has_extension("SIZE"));
        assert!(!reply.has_extension("sink.test"));
        assert!(!reply.has_extension("CHUNKING"));
    }

    #[test]
    fn incomplete_reply_needs_more_bytes() {
        assert_eq!(parse(b"250-first\r\n250 sec").unwrap(), None);
        assert_eq!(parse(b"").unwrap(), None);
    }

    #[test]
    fn pipelined_replies_are_taken_one_at_a_time() {
        let buf = b"250 2.1.0 ok\r\n550 5.1.1 no\r\n354 go\r\n";
        let (first, used) = parse(buf).unwrap().unwrap();
        assert_eq!(first.code, 250);
        let (second, used2) = parse(&buf[used..]).unwrap().unwrap();
        assert_eq!(second.summary(), "550 5.1.1 no");
        assert_eq!(second.class(), 5);
        let (third, _) = parse(&buf[used + used2..]).unwrap().unwrap();
        assert_eq!(third.code, 354);
    }

    #[test]
    fn bare_code_and_bare_lf_are_accepted() {
        let (reply, used) = parse(b"221\n").unwrap().unwrap();
        assert_eq!((reply.code, used), (221, 4));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(
            parse(b"HTTP/1.1 400\r\n"),
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"25x ok\r\n"),
            Err(ReplyError::Malformed(_))
        ));
        assert_eq!(parse(&vec![b'2'; MAX_REPLY + 1]), Err(ReplyError::TooLong));
    }
}
