//! Test messages of an exact size: realistic headers, text lines of at most 78
//! characters (RFC 5322 2.1.1), a unique Message-ID each, dot-stuffed for DATA.

use std::fmt::Write as _;

/// Longest body line in characters, without its CRLF (RFC 5322 2.1.1 "SHOULD").
pub const MAX_LINE: usize = 78;

/// Shortest generated body line, without its CRLF, except where the size forces a shorter last line.
const MIN_LINE: usize = 40;

/// Words the body is made of, so that it compresses and scans like text, not like noise.
const WORDS: &[&str] = &[
    "the",
    "relay",
    "queue",
    "message",
    "delivery",
    "server",
    "mail",
    "report",
    "weekly",
    "invoice",
    "account",
    "please",
    "find",
    "attached",
    "summary",
    "of",
    "and",
    "to",
    "for",
    "your",
    "order",
    "has",
    "been",
    "shipped",
    "thank",
    "you",
    "meeting",
    "tomorrow",
    "at",
    "noon",
    "agenda",
    "budget",
    "review",
    "project",
    "status",
    "update",
    "customer",
    "support",
    "ticket",
    "resolved",
    "password",
    "reset",
    "link",
    "expires",
    "in",
    "hours",
    "regards",
    "team",
    "notification",
    "payment",
    "received",
    "balance",
    "statement",
    "available",
    "online",
    "schedule",
    "changed",
    "confirm",
    "attendance",
    "newsletter",
    "edition",
    "latest",
    "news",
];

/// One in this many body lines starts with a dot, so every run exercises the
/// server's dot-unstuffing (RFC 5321 4.5.2).
const DOT_LINE_EVERY: u64 = 16;

/// What every message of a run shares; `render` adds the per-message parts.
#[derive(Debug, Clone)]
pub struct MessageTemplate {
    /// Target size of the message (headers, blank line and body, before
    /// dot-stuffing). Messages never get smaller than their headers.
    pub size: usize,
    /// The `From:` address (also the envelope sender in loadgen).
    pub from: String,
    /// Makes Message-IDs unique across runs, e.g. start time and process id in hex.
    pub run_id: String,
    /// The `Date:` header value (see `rfc5322_date`).
    pub date: String,
}

impl MessageTemplate {
    /// Writes message number `seq` addressed to `to` (the `To:` header) into `out`
    /// as DATA payload: dot-stuffed and ending with `<CRLF>.<CRLF>`.
    pub fn render(&self, seq: u64, to: &str, scratch: &mut Vec<u8>, out: &mut Vec<u8>) {
        scratch.clear();
        self.content(seq, to, scratch);
        stuff(scratch, out);
    }

    /// Writes the message itself (not dot-stuffed, no terminator) into `out`.
    pub fn content(&self, seq: u64, to: &str, out: &mut Vec<u8>) {
        let start = out.len();
        self.headers(seq, to, false, out);
        let header_len = out.len() - start;
        if self.size.saturating_sub(header_len) == 1 {
            // A body of one byte cannot end with CRLF: grow the headers by one instead.
            out.truncate(start);
            self.headers(seq, to, true, out);
        }
        let remaining = self.size.saturating_sub(out.len() - start);
        body(seq, remaining, out);
    }

    fn headers(&self, seq: u64, to: &str, pad: bool, out: &mut Vec<u8>) {
        let id_domain = self
            .from
            .rsplit_once('@')
            .map(|(_, domain)| domain)
            .filter(|domain| !domain.is_empty())
            .unwrap_or("loadgen.invalid");
        let mut h = String::with_capacity(400);
        // Writing to a String cannot fail.
        let _ = write!(
            h,
            "Date: {date}\r\n\
             From: Load Generator <{from}>\r\n\
             To: <{to}>\r\n\
             Subject: loadgen test message {hash}{seq}\r\n\
             Message-ID: <{seq}.{run}@{id_domain}>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             Content-Transfer-Encoding: 7bit\r\n\
             X-Mailer: relay-bench loadgen\r\n\
             \r\n",
            date = self.date,
            from = self.from,
            hash = if pad { "#" } else { "" },
            run = self.run_id,
        );
        out.extend_from_slice(h.as_bytes());
    }
}

/// Appends text lines totalling exactly `remaining` bytes (CRLFs included);
/// `remaining` must not be 1.
fn body(seq: u64, mut remaining: usize, out: &mut Vec<u8>) {
    let mut rng = Rng::new(seq);
    let full = MAX_LINE + 2;
    let mut line_no = 0u64;
    while remaining > 0 {
        let want = if remaining <= full {
            remaining
        } else if remaining < full + MIN_LINE + 2 {
            // Split what is left in two so the last line is not cut to a stub.
            remaining / 2
        } else {
            MIN_LINE + 2 + rng.below((MAX_LINE - MIN_LINE + 1) as u64) as usize
        };
        let dot = line_no % DOT_LINE_EVERY == DOT_LINE_EVERY / 2;
        text_line(&mut rng, want.saturating_sub(2), dot, out);
        out.extend_from_slice(b"\r\n");
        remaining -= want;
        line_no += 1;
    }
}

/// Appends words up to exactly `len` characters, starting with a dot when `dot` is set.
fn text_line(rng: &mut Rng, len: usize, dot: bool, out: &mut Vec<u8>) {
    let mut written = 0;
    if dot && len > 0 {
        out.push(b'.');
        written = 1;
    }
    while written < len {
        let word = WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes();
        let sep = usize::from(written > usize::from(dot));
        let room = len - written;
        if room > sep {
            if sep == 1 {
                out.push(b' ');
            }
            let take = word.len().min(room - sep);
            out.extend_from_slice(&word[..take]);
            written += sep + take;
        } else {
            // One column left after a word: lengthen it rather than end with a space.
            out.push(b's');
            written += 1;
        }
    }
}

/// Dot-stuffs `content` (RFC 5321 4.5.2) into `out` and terminates it with
/// `<CRLF>.<CRLF>`. A last line without CRLF gets one.
pub fn stuff(content: &[u8], out: &mut Vec<u8>) {
    out.reserve(content.len() + content.len() / 64 + 5);
    let mut at_line_start = true;
    for line in content.split_inclusive(|&b| b == b'\n') {
        if at_line_start && line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        at_line_start = line.ends_with(b"\r\n");
    }
    if !content.is_empty() && !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// The relay's own RFC 5322 date formatter: generated messages carry the same `Date:` form.
pub use relay::smtp::rfc5322_date;

/// xorshift64*: deterministic per message, so a given `seq` always gives the same body.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(size: usize) -> MessageTemplate {
        MessageTemplate {
            size,
            from: "sender@bench.test".into(),
            run_id: "5f3a".into(),
            date: rfc5322_date(1_700_000_000),
        }
    }

    /// Undoes dot-stuffing and checks the terminator, as a receiving server would.
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        let body = wire
            .strip_suffix(b".\r\n")
            .expect("DATA payload ends with .CRLF");
        let mut out = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            assert_ne!(line, b".\r\n", "early end of data inside the message");
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        out
    }

    #[test]
    fn content_has_exactly_the_requested_size() {
        for size in (300..3000).chain([2048, 10_000, 100_000, 1_000_000]) {
            let mut out = Vec::new();
            template(size).content(7, "user1@example.test", &mut out);
            let header_len = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            assert_eq!(out.len(), size.max(header_len), "size {size}");
        }
    }

    #[test]
    fn size_one_above_headers_pads_the_headers_not_the_body() {
        let mut plain = Vec::new();
        template(0).content(3, "a@b.test", &mut plain);
        let mut out = Vec::new();
        template(plain.len() + 1).content(3, "a@b.test", &mut out);
        assert_eq!(out.len(), plain.len() + 1);
        assert!(out.ends_with(b"\r\n\r\n"));
    }

    #[test]
    fn body_lines_are_text_of_at_most_78_characters_with_crlf() {
        let mut out = Vec::new();
        template(50_000).content(11, "a@b.test", &mut out);
        assert!(out.ends_with(b"\r\n"));
        let body_start = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        for line in out[body_start..].split_inclusive(|&b| b == b'\n') {
            let text = line
                .strip_suffix(b"\r\n")
                .expect("every line ends with CRLF");
            assert!(text.len() <= MAX_LINE, "line of {} chars", text.len());
            assert!(!text.contains(&b'\r') && !text.contains(&b'\n'));
            assert!(text.iter().all(|b| b.is_ascii_graphic() || *b == b' '));
        }
    }

    #[test]
    fn lines_starting_with_a_dot_are_stuffed_and_round_trip() {
        let mut scratch = Vec::new();
        let mut wire = Vec::new();
        template(20_000).render(5, "a@b.test", &mut scratch, &mut wire);
        let mut content = Vec::new();
        template(20_000).content(5, "a@b.test", &mut content);
        let dot_lines = content
            .split_inclusive(|&b| b == b'\n')
            .filter(|line| line.starts_with(b"."))
            .count();
        assert!(dot_lines > 0, "the generator should produce dot lines");
        assert_eq!(wire.len(), content.len() + dot_lines + 3);
        assert!(wire.ends_with(b"\r\n.\r\n"));
        assert_eq!(unstuff(&wire), content);
    }

    #[test]
    fn stuff_doubles_leading_dots_only_at_line_start() {
        let mut out = Vec::new();
        stuff(b".hidden\r\na.b\r\n..\r\n.\r\nend", &mut out);
        assert_eq!(out, b"..hidden\r\na.b\r\n...\r\n..\r\nend\r\n.\r\n");
    }

    #[test]
    fn stuff_of_empty_content_is_just_the_terminator() {
        let mut out = Vec::new();
        stuff(b"", &mut out);
        assert_eq!(out, b".\r\n");
    }

    #[test]
    fn message_ids_differ_between_messages() {
        let id = |seq| {
            let mut out = Vec::new();
            template(1000).content(seq, "a@b.test", &mut out);
            let text = String::from_utf8(out).unwrap();
            text.lines()
                .find(|l| l.starts_with("Message-ID:"))
                .unwrap()
                .to_string()
        };
        assert_eq!(id(1), "Message-ID: <1.5f3a@bench.test>");
        assert_ne!(id(1), id(2));
    }
}
