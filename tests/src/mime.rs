//! Just enough RFC 5322 / MIME parsing to check what arrived: headers, Content-Type, multipart parts.
//!
//! Written here rather than taken from the relay so the check does not share
//! the relay's bugs.

/// A message (or a MIME part): its unfolded headers and its raw body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedMessage {
    /// (name as written, value unfolded and trimmed), in order.
    pub headers: Vec<(String, String)>,
    /// Everything after the blank line that ends the headers.
    pub body: Vec<u8>,
}

/// A parsed Content-Type value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentType {
    /// "type/subtype", lower-cased.
    pub mime_type: String,
    /// Parameters, names lower-cased, values unquoted.
    pub params: Vec<(String, String)>,
}

impl ContentType {
    /// Parses `multipart/report; report-type=delivery-status; boundary="x"`.
    pub fn parse(value: &str) -> ContentType {
        let mut pieces = Vec::new();
        let mut current = String::new();
        let mut quoted = false;
        let mut escaped = false;
        for c in value.chars() {
            if escaped {
                current.push(c);
                escaped = false;
            } else if quoted && c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = !quoted;
            } else if c == ';' && !quoted {
                pieces.push(std::mem::take(&mut current));
            } else {
                current.push(c);
            }
        }
        pieces.push(current);
        let mime_type = pieces
            .first()
            .map(|s| s.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let params = pieces
            .iter()
            .skip(1)
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        ContentType { mime_type, params }
    }

    /// A parameter's value (name case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl ParsedMessage {
    /// Splits `data` at the first empty line; unfolds header continuation lines.
    pub fn parse(data: &[u8]) -> ParsedMessage {
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let end = data[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |i| pos + i + 1);
            let raw = &data[pos..end];
            let line = String::from_utf8_lossy(raw);
            let line = line.trim_end_matches(['\r', '\n']);
            pos = end;
            if line.is_empty() {
                return ParsedMessage {
                    headers,
                    body: data[pos..].to_vec(),
                };
            }
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            match line.split_once(':') {
                Some((name, value)) => {
                    headers.push((name.trim().to_string(), value.trim().to_string()))
                }
                None => headers.push((line.to_string(), String::new())),
            }
        }
        ParsedMessage {
            headers,
            body: Vec::new(),
        }
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header called `name`, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The Content-Type (text/plain when absent, RFC 2045 5.2).
    pub fn content_type(&self) -> ContentType {
        ContentType::parse(self.header("content-type").unwrap_or("text/plain"))
    }

    /// The body as text (lossy UTF-8).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The parts of a multipart body (RFC 2046 5.1.1); empty if not multipart.
    pub fn parts(&self) -> Vec<ParsedMessage> {
        let ct = self.content_type();
        if !ct.mime_type.starts_with("multipart/") {
            return Vec::new();
        }
        let Some(boundary) = ct.param("boundary") else {
            return Vec::new();
        };
        let delimiter = format!("--{boundary}");
        let close = format!("--{boundary}--");
        let mut parts = Vec::new();
        let mut current: Option<Vec<u8>> = None;
        for line in self.body.split_inclusive(|&b| b == b'\n') {
            let text = String::from_utf8_lossy(line);
            let trimmed = text.trim_end();
            if trimmed == delimiter || trimmed == close {
                if let Some(mut part) = current.take() {
                    // The line break before a delimiter belongs to the delimiter.
                    if part.ends_with(b"\r\n") {
                        part.truncate(part.len() - 2);
                    } else if part.ends_with(b"\n") {
                        part.truncate(part.len() - 1);
                    }
                    parts.push(ParsedMessage::parse(&part));
                }
                if trimmed == close {
                    break;
                }
                current = Some(Vec::new());
            } else if let Some(part) = current.as_mut() {
                part.extend_from_slice(line);
            }
        }
        parts
    }

    /// The first part (searching nested multiparts) whose type is `mime_type`.
    pub fn find_part(&self, mime_type: &str) -> Option<ParsedMessage> {
        for part in self.parts() {
            if part
                .content_type()
                .mime_type
                .eq_ignore_ascii_case(mime_type)
            {
                return Some(part);
            }
            if let Some(inner) = part.find_part(mime_type) {
                return Some(inner);
            }
        }
        None
    }
}

/// The fields of a message/delivery-status body (RFC 3464): every `Name: value`, groups flattened.
pub fn status_fields(body: &[u8]) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in String::from_utf8_lossy(body).lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "From: MAILER-DAEMON@relay.test\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\
\tboundary=\"b1;x\"\r\n\
\r\n\
preamble\r\n\
--b1;x\r\n\
Content-Type: text/plain\r\n\
\r\n\
Your message could not be delivered.\r\n\
--b1;x\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; relay.test\r\n\
\r\n\
Final-Recipient: rfc822; nobody@dest.test\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 no such\r\n\
\x20 user\r\n\
--b1;x\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
Subject: original\r\n\
--b1;x--\r\n\
epilogue\r\n";

    #[test]
    fn parses_multipart_report_parts_and_status_fields() {
        let m = ParsedMessage::parse(DSN.as_bytes());
        let ct = m.content_type();
        assert_eq!(ct.mime_type, "multipart/report");
        assert_eq!(ct.param("report-type"), Some("delivery-status"));
        assert_eq!(ct.param("boundary"), Some("b1;x"));
        let parts = m.parts();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].body_text(), "Your message could not be delivered.");
        let status = m.find_part("message/delivery-status").expect("status part");
        let fields = status_fields(&status.body);
        assert!(fields.contains(&("Status".into(), "5.1.1".into())));
        assert!(fields.contains(&(
            "Diagnostic-Code".into(),
            "smtp; 550 5.1.1 no such user".into()
        )));
        let headers = m.find_part("text/rfc822-headers").expect("headers part");
        assert_eq!(headers.body_text(), "Subject: original");
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_unfolds() {
        let m =
            ParsedMessage::parse(b"Received: from a\r\n by b\r\nreceived: second\r\n\r\nbody\r\n");
        assert_eq!(m.header("RECEIVED"), Some("from a by b"));
        assert_eq!(m.headers_named("received").len(), 2);
        assert_eq!(m.body, b"body\r\n");
    }
}
