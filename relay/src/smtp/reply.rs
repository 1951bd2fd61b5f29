//! SMTP replies: a code, an optional RFC 2034 enhanced status code and text lines.

use std::fmt;

/// An RFC 3463 enhanced status code such as `5.7.1` (class.subject.detail).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "server", derive(serde::Serialize, serde::Deserialize))]
pub struct EnhancedCode(pub u8, pub u16, pub u16);

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly multi-line.
///
/// On the wire every line is `CODE-X.Y.Z text\r\n` except the last, which is
/// `CODE X.Y.Z text\r\n` (RFC 5321 4.2.1); the enhanced code is left out when
/// `enhanced` is `None` (the 220 greeting, EHLO/HELO and 354 replies).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(serde::Serialize, serde::Deserialize))]
pub struct Reply {
    /// The three-digit reply code (RFC 5321 4.2).
    pub code: u16,
    /// The enhanced status code repeated on every line, if any.
    pub enhanced: Option<EnhancedCode>,
    /// Text lines, without CR/LF. An empty vector writes one line with no text.
    pub lines: Vec<String>,
}

impl Reply {
    /// A reply whose text is split into lines at `\n` (a trailing `\r` on each is dropped).
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Reply {
        let text = text.into();
        let lines = if text.contains('\n') {
            text.split('\n')
                .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
                .collect()
        } else {
            vec![text]
        };
        Reply {
            code,
            enhanced,
            lines,
        }
    }

    /// Shorthand for `Reply::new(code, Some(EnhancedCode(class, subject, detail)), text)`.
    pub fn enhanced(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Reply {
        Reply::new(code, Some(EnhancedCode(status.0, status.1, status.2)), text)
    }

    /// Appends the wire form of the reply to `out`.
    ///
    /// CR, LF and other control characters inside a line are written as spaces,
    /// so text taken from config or a plugin can never inject a reply line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let count = self.lines.len().max(1);
        for i in 0..count {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            self.write_line(out, text, i + 1 == count);
        }
    }

    fn write_line(&self, out: &mut Vec<u8>, text: &str, last: bool) {
        let code = self.code.min(999);
        out.push(b'0' + (code / 100) as u8);
        out.push(b'0' + (code / 10 % 10) as u8);
        out.push(b'0' + (code % 10) as u8);
        out.push(if last { b' ' } else { b'-' });
        if let Some(e) = self.enhanced {
            out.extend_from_slice(e.to_string().as_bytes());
            if !text.is_empty() {
                out.push(b' ');
            }
        }
        out.extend(
            text.bytes()
                .map(|b| if b < 0x20 || b == 0x7f { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    }

    /// The wire form as a byte vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    /// True for 2xx and 3xx replies.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// True for 4xx replies: the client may try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// True for 5xx replies: the client must not repeat the same request.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// True for 4xx and 5xx replies.
    pub fn is_error(&self) -> bool {
        self.is_transient() || self.is_permanent()
    }

    /// The text lines joined with a space, for logs.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

/// The wire form without CR: lines joined with `\n`, no trailing newline.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim_end_matches("\r\n").replace("\r\n", "\n");
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_reply_has_space_after_code_and_enhanced_code() {
        let r = Reply::enhanced(550, (5, 7, 1), "Relay access denied");
        assert_eq!(r.to_bytes(), b"550 5.7.1 Relay access denied\r\n");
        assert_eq!(r.to_string(), "550 5.7.1 Relay access denied");
    }

    #[test]
    fn multi_line_reply_uses_dash_on_all_but_last_line() {
        let r = Reply::new(250, None, "relay.test\nPIPELINING\nCHUNKING");
        assert_eq!(
            r.to_bytes(),
            b"250-relay.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
        );
        assert_eq!(
            r.to_string(),
            "250-relay.test\n250-PIPELINING\n250 CHUNKING"
        );
    }

    #[test]
    fn control_characters_in_text_cannot_inject_lines() {
        let r = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["a\r\n250 b\0".into()],
        };
        assert_eq!(r.to_bytes(), b"250 a  250 b \r\n");
    }

    #[test]
    fn empty_text_writes_code_and_enhanced_code_only() {
        let r = Reply {
            code: 250,
            enhanced: Some(EnhancedCode(2, 0, 0)),
            lines: vec![],
        };
        assert_eq!(r.to_bytes(), b"250 2.0.0\r\n");
    }

    #[test]
    fn classification_follows_first_digit() {
        assert!(Reply::new(354, None, "go").is_positive());
        assert!(Reply::enhanced(452, (4, 5, 3), "x").is_transient());
        assert!(Reply::enhanced(554, (5, 5, 0), "x").is_permanent());
        assert!(Reply::enhanced(421, (4, 7, 0), "x").is_error());
        assert!(!Reply::enhanced(250, (2, 0, 0), "x").is_error());
    }
}
