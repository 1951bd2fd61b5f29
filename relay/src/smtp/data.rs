//! The DATA and BDAT content decoder: end-of-data detection, dot-unstuffing and the
//! message checks (bare CR/LF, line length, size, hop count), streaming and split-independent.
//!
//! SMTP smuggling (SEC Consult, 2023) works when two servers disagree about
//! where a message ends. Here the only end of DATA is `<CRLF>.<CRLF>`: a line
//! that is exactly `.` terminated by a real CRLF, whose preceding line also
//! ended in a real CRLF (or which is the first line). Lines are split at LF
//! only; a CR that is not immediately followed by LF is a bare CR and is
//! always refused, and a bare LF is refused or (with
//! [`BareLineEnding::Normalize`]) stored as CRLF without ever taking part in an
//! end-of-data sequence. So `\n.\n`, `\n.\r\n`, `\r.\r`, `\r\n.\n`, `\r\n.\r\r\n`
//! and friends never end a message: at most they become content of a message
//! that is refused at its real end.
//!
//! The decoder keeps only a few bytes of state between calls, so the result
//! never depends on how the input is split into reads, and memory stays
//! bounded by the message size limit whatever the client sends.

use super::reply::Reply;

/// What to do with a bare LF or bare CR in message content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "server",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum BareLineEnding {
    /// Refuse the message at end of data with 550 5.6.0 (RFC 5321 2.3.8).
    #[default]
    Reject,
    /// Store a bare LF as CRLF (it still never ends the message); a bare CR is
    /// refused all the same.
    Normalize,
}

/// The limits a message is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataLimits {
    /// Maximum size of the stored message in octets.
    pub max_message_size: u64,
    /// Maximum line length in octets including the line ending.
    pub max_line_length: usize,
    /// Maximum number of `Received:` header fields.
    pub max_hops: u32,
    /// What to do with bare CR and LF.
    pub bare_line_ending: BareLineEnding,
}

/// Why a message was refused at the end of its content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// A bare CR, or a bare LF under [`BareLineEnding::Reject`].
    #[error("message contains a bare CR or LF")]
    BareLineEnding,
    /// A line longer than the limit, counting its line ending.
    #[error("line longer than {max} octets")]
    LineTooLong {
        /// The configured limit.
        max: usize,
    },
    /// The message is larger than the limit.
    #[error("message larger than {max} octets")]
    TooBig {
        /// The configured limit.
        max: u64,
    },
    /// More `Received:` fields than allowed: probably a mail loop.
    #[error("more than {max} Received header fields")]
    TooManyHops {
        /// The configured limit.
        max: u32,
    },
    /// `finish` was called on DATA content before `<CRLF>.<CRLF>` arrived.
    #[error("message content ended before <CRLF>.<CRLF>")]
    Incomplete,
}

impl DataError {
    /// The reply sent at the end of data.
    pub fn reply(&self) -> Reply {
        match self {
            DataError::BareLineEnding => Reply::enhanced(
                550,
                (5, 6, 0),
                "Message contains a bare <LF> or <CR>; lines must end with <CR><LF> (RFC 5321 2.3.8)",
            ),
            DataError::LineTooLong { max } => line_too_long(*max),
            DataError::TooBig { max } => too_big(*max),
            DataError::TooManyHops { .. } => {
                Reply::enhanced(554, (5, 4, 6), "Too many hops, possible mail loop")
            }
            DataError::Incomplete => Reply::enhanced(451, (4, 3, 0), "Message content incomplete"),
        }
    }
}

/// The reply for a line over the limit (commands and message content alike).
pub(crate) fn line_too_long(max: usize) -> Reply {
    Reply::enhanced(
        500,
        (5, 5, 2),
        format!("Line too long (max {max} bytes including CRLF)"),
    )
}

/// The reply for a message over the size limit (also used for MAIL FROM SIZE=).
pub(crate) fn too_big(max: u64) -> Reply {
    Reply::enhanced(
        552,
        (5, 3, 4),
        format!("Message size exceeds fixed maximum message size ({max} bytes)"),
    )
}

/// A complete, accepted message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedMessage {
    /// The message: CRLF line endings, dot-unstuffed, ending in CRLF unless empty.
    pub body: Vec<u8>,
    /// True if the body contains octets above 127.
    pub eight_bit: bool,
    /// The number of `Received:` fields in the header section.
    pub hops: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineState {
    /// At the start of a line.
    Start,
    /// DATA only: a `.` at the start of a line, not yet known to be stuffing.
    Dot,
    /// DATA only: `.` then CR at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, right after a CR that may or may not start CRLF.
    MidCr,
}

/// Progress of matching `Received` WSP* `:` at the start of a header line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldMatch {
    /// This many octets of "received" matched so far.
    Name(u8),
    /// The name matched; waiting for optional WSP then `:`.
    Colon,
    /// Not a Received field, or already counted.
    Done,
}

const RECEIVED: &[u8; 8] = b"received";

/// Streaming decoder for DATA (dot-stuffed, ends at `<CRLF>.<CRLF>`) or BDAT
/// content (raw chunks, ends when the caller says so).
#[derive(Clone, Debug)]
pub struct DataDecoder {
    limits: DataLimits,
    dot_stuffed: bool,
    state: LineState,
    /// Whether the previous line ended in a real CRLF (true before the first line).
    prev_crlf: bool,
    /// Octets of the current line so far, without its line ending.
    line_len: usize,
    in_header: bool,
    field: FieldMatch,
    hops: u32,
    body: Vec<u8>,
    /// Octets of the message, counted even after storing stopped.
    size: u64,
    eight_bit: bool,
    /// Problems found so far; sticky, reported by fixed priority so the
    /// outcome does not depend on how the input was split.
    bare: bool,
    long: bool,
    big: bool,
    done: bool,
}

impl DataDecoder {
    /// A decoder for DATA content (RFC 5321 4.1.1.4 and 4.5.2).
    pub fn dot_stuffed(limits: DataLimits) -> DataDecoder {
        DataDecoder::new(limits, true)
    }

    /// A decoder for BDAT chunks (RFC 3030): no dot handling, no end marker.
    pub fn chunked(limits: DataLimits) -> DataDecoder {
        DataDecoder::new(limits, false)
    }

    fn new(limits: DataLimits, dot_stuffed: bool) -> DataDecoder {
        DataDecoder {
            limits,
            dot_stuffed,
            state: LineState::Start,
            prev_crlf: true,
            line_len: 0,
            in_header: true,
            field: FieldMatch::Name(0),
            hops: 0,
            body: Vec::new(),
            size: 0,
            eight_bit: false,
            bare: false,
            long: false,
            big: false,
            done: false,
        }
    }

    /// Reserves room for a message of about `size` octets (from MAIL FROM SIZE=),
    /// capped so a lying client cannot make us allocate much.
    pub fn reserve(&mut self, size: u64) {
        let cap = size.min(self.limits.max_message_size).min(1 << 20);
        self.body.reserve(usize::try_from(cap).unwrap_or(0));
    }

    /// Decodes as much of `input` as belongs to the message and returns how many
    /// octets were used. DATA decoding stops right after `<CRLF>.<CRLF>`
    /// ([`DataDecoder::is_done`] turns true); BDAT decoding uses everything.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let mut i = 0;
        while i < input.len() && !self.done {
            let b = input[i];
            match self.state {
                LineState::Start => {
                    if self.dot_stuffed && b == b'.' {
                        self.state = LineState::Dot;
                        i += 1;
                    } else {
                        self.state = LineState::Mid;
                    }
                }
                LineState::Dot => match b {
                    b'\r' => {
                        self.state = LineState::DotCr;
                        i += 1;
                    }
                    b'\n' => {
                        // ".\n": a bare LF, never an end of data.
                        self.content(b".");
                        self.end_line(false);
                        i += 1;
                    }
                    _ => {
                        // RFC 5321 4.5.2: a leading dot followed by more text is dropped.
                        self.state = LineState::Mid;
                    }
                },
                LineState::DotCr => {
                    if b == b'\n' {
                        i += 1;
                        if self.prev_crlf {
                            self.done = true;
                        } else {
                            // "." after a bare LF line: content, not an end marker.
                            self.content(b".");
                            self.end_line(true);
                        }
                    } else {
                        // ".\r" then more: the dot was stuffing, the CR is bare.
                        self.bare_cr();
                        self.content(b"\r");
                        self.state = LineState::Mid;
                    }
                }
                LineState::Mid => {
                    let rest = &input[i..];
                    let run = find_cr_or_lf(rest).unwrap_or(rest.len());
                    if run > 0 {
                        self.content(&rest[..run]);
                        i += run;
                    }
                    match input.get(i) {
                        Some(b'\r') => {
                            self.state = LineState::MidCr;
                            i += 1;
                        }
                        Some(b'\n') => {
                            self.end_line(false);
                            i += 1;
                        }
                        _ => {}
                    }
                }
                LineState::MidCr => {
                    if b == b'\n' {
                        self.end_line(true);
                        i += 1;
                    } else {
                        self.bare_cr();
                        self.content(b"\r");
                        self.state = LineState::Mid;
                    }
                }
            }
        }
        i
    }

    /// True once DATA content reached `<CRLF>.<CRLF>`.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The problem found so far, if any (BDAT reports it per chunk). With
    /// several, the first of: bare line ending, line too long, too big, too
    /// many hops.
    pub fn error(&self) -> Option<DataError> {
        if self.bare {
            Some(DataError::BareLineEnding)
        } else if self.long {
            Some(DataError::LineTooLong {
                max: self.limits.max_line_length,
            })
        } else if self.big {
            Some(DataError::TooBig {
                max: self.limits.max_message_size,
            })
        } else if self.hops > self.limits.max_hops {
            Some(DataError::TooManyHops {
                max: self.limits.max_hops,
            })
        } else {
            None
        }
    }

    /// Octets of message content so far (after unstuffing), counted even
    /// after the message was refused and storing stopped.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn rejected(&self) -> bool {
        self.bare || self.long || self.big || self.hops > self.limits.max_hops
    }

    /// Ends the message: the accepted body, or the first problem found.
    ///
    /// For BDAT content a final line without line ending gets CRLF appended
    /// and a trailing CR counts as bare; DATA content must be done.
    pub fn finish(mut self) -> Result<DecodedMessage, DataError> {
        if self.dot_stuffed && !self.done {
            return Err(DataError::Incomplete);
        }
        match self.state {
            LineState::MidCr => self.bare_cr(),
            LineState::Mid => {
                // A BDAT message whose last line has no CRLF.
                self.check_line_len(2);
                self.emit(b"\r\n");
            }
            _ => {}
        }
        match self.error() {
            Some(e) => Err(e),
            None => Ok(DecodedMessage {
                body: self.body,
                eight_bit: self.eight_bit,
                hops: self.hops,
            }),
        }
    }

    fn bare_cr(&mut self) {
        self.bare = true;
    }

    fn check_line_len(&mut self, ending: usize) {
        if self.line_len.saturating_add(ending) > self.limits.max_line_length {
            self.long = true;
        }
    }

    /// Octets inside a line (after unstuffing).
    fn content(&mut self, bytes: &[u8]) {
        self.line_len = self.line_len.saturating_add(bytes.len());
        // Whatever the line ending turns out to be, it adds at least one octet.
        self.check_line_len(1);
        if self.in_header && self.field != FieldMatch::Done {
            self.match_received(bytes);
        }
        self.emit(bytes);
    }

    fn end_line(&mut self, crlf: bool) {
        self.state = LineState::Start;
        self.prev_crlf = crlf;
        self.check_line_len(if crlf { 2 } else { 1 });
        if !crlf && self.limits.bare_line_ending == BareLineEnding::Reject {
            self.bare = true;
        }
        self.emit(b"\r\n");
        if self.line_len == 0 {
            // The empty line ends the header section (RFC 5322 2.1).
            self.in_header = false;
        }
        self.line_len = 0;
        self.field = FieldMatch::Name(0);
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.size > self.limits.max_message_size {
            self.big = true;
        }
        if self.rejected() {
            // Nothing more is stored; the content is only scanned to its end.
            if self.body.capacity() > 0 {
                self.body = Vec::new();
            }
            return;
        }
        if !self.eight_bit {
            self.eight_bit = bytes.iter().fold(0u8, |acc, &b| acc | b) >= 0x80;
        }
        self.body.extend_from_slice(bytes);
    }

    /// Counts header lines that start `Received` WSP* `:` (case-insensitive).
    fn match_received(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.field = match self.field {
                FieldMatch::Name(n) if usize::from(n) < RECEIVED.len() => {
                    if b.to_ascii_lowercase() == RECEIVED[usize::from(n)] {
                        if usize::from(n) + 1 == RECEIVED.len() {
                            FieldMatch::Colon
                        } else {
                            FieldMatch::Name(n + 1)
                        }
                    } else {
                        FieldMatch::Done
                    }
                }
                FieldMatch::Colon if b == b' ' || b == b'\t' => FieldMatch::Colon,
                FieldMatch::Colon if b == b':' => {
                    self.hops = self.hops.saturating_add(1);
                    FieldMatch::Done
                }
                _ => FieldMatch::Done,
            };
            if self.field == FieldMatch::Done {
                return;
            }
        }
    }
}

/// Index of the first CR or LF, eight octets at a time.
fn find_cr_or_lf(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const CR: u64 = LO * b'\r' as u64;
    const LF: u64 = LO * b'\n' as u64;
    let mut start = 0;
    for chunk in s.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let (x, y) = (w ^ CR, w ^ LF);
        // Classic "has a zero byte" test: exact about whether one exists.
        if ((x.wrapping_sub(LO) & !x) | (y.wrapping_sub(LO) & !y)) & HI != 0 {
            break;
        }
        start += 8;
    }
    s[start..]
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map(|p| p + start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(mode: BareLineEnding) -> DataLimits {
        DataLimits {
            max_message_size: 1 << 20,
            max_line_length: 1000,
            max_hops: 50,
            bare_line_ending: mode,
        }
    }

    /// Feeds `input` in one piece; returns (octets used, result).
    fn decode_with(l: DataLimits, input: &[u8]) -> (usize, Result<DecodedMessage, DataError>) {
        let mut d = DataDecoder::dot_stuffed(l);
        let used = d.feed(input);
        (used, d.finish())
    }

    fn decode(input: &[u8]) -> (usize, Result<Vec<u8>, DataError>) {
        let (used, r) = decode_with(limits(BareLineEnding::Reject), input);
        (used, r.map(|m| m.body))
    }

    fn decode_normalized(input: &[u8]) -> (usize, Result<Vec<u8>, DataError>) {
        let (used, r) = decode_with(limits(BareLineEnding::Normalize), input);
        (used, r.map(|m| m.body))
    }

    #[test]
    fn finds_end_of_data_and_leaves_the_rest() {
        let input = b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
        let (used, body) = decode(input);
        assert_eq!(&input[used..], b"QUIT\r\n");
        assert_eq!(body.unwrap(), b"Subject: x\r\n\r\nhello\r\n");
    }

    #[test]
    fn dot_on_first_line_is_an_empty_message() {
        assert_eq!(decode(b".\r\nX"), (3, Ok(Vec::new())));
    }

    #[test]
    fn dot_unstuffing_removes_one_leading_dot() {
        let (_, body) = decode(b"..\r\n...x\r\n.y\r\n a.\r\n.\r\n");
        assert_eq!(body.unwrap(), b".\r\n..x\r\ny\r\n a.\r\n");
    }

    #[test]
    fn stuffed_dot_line_does_not_end_data() {
        let (used, body) = decode(b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(used, 13);
        assert_eq!(body.unwrap(), b"a\r\n.\r\nb\r\n");
    }

    #[test]
    fn incomplete_data_is_reported() {
        let mut d = DataDecoder::dot_stuffed(limits(BareLineEnding::Reject));
        assert_eq!(d.feed(b"a\r\n.\r"), 5);
        assert!(!d.is_done());
        assert_eq!(d.finish(), Err(DataError::Incomplete));
    }

    /// Every published end-of-data variant (SEC Consult 2023 and follow-ups):
    /// none of them ends the message, in either mode. (`\r\r\n.\r\n` is not
    /// among them: it contains a genuine `<CRLF>.<CRLF>`, which every server,
    /// including the one before us, treats as the end.)
    const SMUGGLING_SEQUENCES: &[&[u8]] = &[
        b"\n.\n",
        b"\n.\r\n",
        b"\r.\r",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n.\n",
        b"\n.\r",
        b"\r.\n",
        b"\r\n\x00.\r\n",
        b"\r\n.\x00\r\n",
        b"\r\r\n.\r\r\n",
        b"\r\n.\r\r\n",
        b"\n\n.\n\n",
    ];

    #[test]
    fn smuggling_sequences_never_end_data() {
        for seq in SMUGGLING_SEQUENCES {
            let mut input = b"Subject: a\r\n\r\nbody".to_vec();
            input.extend_from_slice(seq);
            input.extend_from_slice(b"MAIL FROM:<x@y>\r\n");
            for mode in [BareLineEnding::Reject, BareLineEnding::Normalize] {
                let mut d = DataDecoder::dot_stuffed(limits(mode));
                assert_eq!(d.feed(&input), input.len(), "{seq:?} {mode:?}");
                assert!(!d.is_done(), "{seq:?} ended data in {mode:?}");
            }
        }
    }

    #[test]
    fn bare_lf_is_rejected_by_default() {
        assert_eq!(decode(b"a\nb\r\n.\r\n").1, Err(DataError::BareLineEnding));
    }

    #[test]
    fn bare_cr_is_rejected_in_both_modes() {
        assert_eq!(decode(b"a\rb\r\n.\r\n").1, Err(DataError::BareLineEnding));
        assert_eq!(
            decode_normalized(b"a\rb\r\n.\r\n").1,
            Err(DataError::BareLineEnding)
        );
        assert_eq!(
            decode_normalized(b"a\r\r\n.\r\n").1,
            Err(DataError::BareLineEnding)
        );
        assert_eq!(
            decode_normalized(b".\rx\r\n.\r\n").1,
            Err(DataError::BareLineEnding)
        );
    }

    #[test]
    fn normalize_turns_bare_lf_into_crlf_but_never_ends_data_there() {
        let (used, body) = decode_normalized(b"a\n.\nb\n.\r\nc\r\n.\r\nNEXT");
        assert_eq!(used, 15);
        assert_eq!(body.unwrap(), b"a\r\n.\r\nb\r\n.\r\nc\r\n");
    }

    #[test]
    fn normalize_unstuffs_after_bare_lf() {
        let (_, body) = decode_normalized(b"a\n..b\r\n.\r\n");
        assert_eq!(body.unwrap(), b"a\r\n.b\r\n");
    }

    #[test]
    fn rejected_message_is_consumed_to_its_real_end() {
        let input = b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\nRSET\r\n";
        let (used, body) = decode(input);
        assert_eq!(&input[used..], b"RSET\r\n");
        assert_eq!(body, Err(DataError::BareLineEnding));
    }

    #[test]
    fn line_length_counts_crlf() {
        let mut l = limits(BareLineEnding::Reject);
        l.max_line_length = 10;
        let ok = b"12345678\r\n.\r\n";
        assert!(decode_with(l, ok).1.is_ok());
        let long = b"123456789\r\n.\r\n";
        assert_eq!(
            decode_with(l, long).1,
            Err(DataError::LineTooLong { max: 10 })
        );
        // The stuffing dot is not counted.
        assert!(decode_with(l, b"..2345678\r\n.\r\n").1.is_ok());
    }

    #[test]
    fn long_line_is_consumed_without_buffering() {
        let mut l = limits(BareLineEnding::Reject);
        l.max_line_length = 100;
        let mut d = DataDecoder::dot_stuffed(l);
        for _ in 0..1000 {
            d.feed(&[b'x'; 1000]);
        }
        assert!(d.body.capacity() == 0);
        d.feed(b"\r\n.\r\n");
        assert!(d.is_done());
        assert_eq!(d.finish(), Err(DataError::LineTooLong { max: 100 }));
    }

    #[test]
    fn size_limit_counts_stored_octets_and_keeps_consuming() {
        let mut l = limits(BareLineEnding::Reject);
        l.max_message_size = 10;
        assert!(decode_with(l, b"12345678\r\n.\r\n").1.is_ok());
        let input = b"123456789\r\nmore\r\n.\r\nNEXT";
        let (used, r) = decode_with(l, input);
        assert_eq!(&input[used..], b"NEXT");
        assert_eq!(r, Err(DataError::TooBig { max: 10 }));
    }

    #[test]
    fn counts_received_fields_in_header_only() {
        let input = b"Received: a\r\nreceived : b\r\nRECEIVED:\r\n c\r\nX-Received: d\r\nReceivedX: e\r\n\r\nReceived: body\r\n.\r\n";
        let (_, r) = decode_with(limits(BareLineEnding::Reject), input);
        assert_eq!(r.unwrap().hops, 3);
    }

    #[test]
    fn too_many_hops_is_refused() {
        let mut l = limits(BareLineEnding::Reject);
        l.max_hops = 2;
        let two = b"Received: a\r\nReceived: b\r\n\r\nx\r\n.\r\n";
        assert!(decode_with(l, two).1.is_ok());
        let three = b"Received: a\r\nReceived: b\r\nReceived: c\r\n\r\nx\r\n.\r\n";
        assert_eq!(
            decode_with(l, three).1,
            Err(DataError::TooManyHops { max: 2 })
        );
    }

    #[test]
    fn eight_bit_content_is_flagged() {
        let (_, r) = decode_with(
            limits(BareLineEnding::Reject),
            "h\u{e9}\r\n.\r\n".as_bytes(),
        );
        assert!(r.unwrap().eight_bit);
        let (_, r) = decode_with(limits(BareLineEnding::Reject), b"plain\r\n.\r\n");
        assert!(!r.unwrap().eight_bit);
    }

    #[test]
    fn decoding_is_independent_of_input_splits() {
        let inputs: &[&[u8]] = &[
            b"Received: a\r\nSubject: b\r\n\r\n..x\r\n.y\r\nz\r\n.\r\nREST",
            b"a\n.\r\nb\r\r\n.\r\n\r\n.\r\nREST",
            b"\r\n.\r\r\n.\n.\r\n",
            b"x\r\n.\n.\r\n\r\n.\r\nREST",
        ];
        for input in inputs {
            for mode in [BareLineEnding::Reject, BareLineEnding::Normalize] {
                let mut whole = DataDecoder::dot_stuffed(limits(mode));
                let used = whole.feed(input);
                let expected = (used, whole.finish());
                for split in 1..=input.len() {
                    let mut d = DataDecoder::dot_stuffed(limits(mode));
                    let mut used = 0;
                    for piece in input.chunks(split) {
                        let n = d.feed(piece);
                        used += n;
                        if n < piece.len() {
                            break;
                        }
                    }
                    assert_eq!((used, d.finish()), expected, "{input:?} split {split}");
                }
            }
        }
    }

    #[test]
    fn chunked_content_has_no_dot_handling() {
        let mut d = DataDecoder::chunked(limits(BareLineEnding::Reject));
        assert_eq!(d.feed(b"a\r\n.\r\n..b\r\n"), 11);
        assert!(!d.is_done());
        assert_eq!(d.finish().unwrap().body, b"a\r\n.\r\n..b\r\n");
    }

    #[test]
    fn chunked_crlf_may_span_chunks() {
        let mut d = DataDecoder::chunked(limits(BareLineEnding::Reject));
        d.feed(b"a\r");
        assert!(d.error().is_none());
        d.feed(b"\nb\r\n");
        assert_eq!(d.finish().unwrap().body, b"a\r\nb\r\n");
    }

    #[test]
    fn chunked_bare_line_endings_are_checked() {
        let mut d = DataDecoder::chunked(limits(BareLineEnding::Reject));
        d.feed(b"a\nb\r\n");
        assert_eq!(d.error(), Some(DataError::BareLineEnding));
        let mut d = DataDecoder::chunked(limits(BareLineEnding::Normalize));
        d.feed(b"a\nb\r\n");
        assert_eq!(d.finish().unwrap().body, b"a\r\nb\r\n");
        let mut d = DataDecoder::chunked(limits(BareLineEnding::Normalize));
        d.feed(b"a\r\n\r");
        assert_eq!(d.finish(), Err(DataError::BareLineEnding));
    }

    #[test]
    fn chunked_message_without_final_crlf_gets_one() {
        let mut d = DataDecoder::chunked(limits(BareLineEnding::Reject));
        d.feed(b"a\r\nb");
        assert_eq!(d.finish().unwrap().body, b"a\r\nb\r\n");
        let d = DataDecoder::chunked(limits(BareLineEnding::Reject));
        assert_eq!(d.finish().unwrap().body, b"");
    }

    #[test]
    fn finder_matches_naive_search() {
        let mut buf = vec![b'a'; 40];
        assert_eq!(find_cr_or_lf(&buf), None);
        for pos in 0..40 {
            for b in [b'\r', b'\n'] {
                buf[pos] = b;
                assert_eq!(find_cr_or_lf(&buf), Some(pos));
                buf[pos] = 0x8d; // high bit set, low bits equal to CR
                assert_eq!(find_cr_or_lf(&buf), None);
                buf[pos] = b'a';
            }
        }
    }

    #[test]
    fn error_replies_have_the_documented_codes() {
        let text = |e: DataError| e.reply().to_string();
        assert_eq!(
            text(DataError::BareLineEnding),
            "550 5.6.0 Message contains a bare <LF> or <CR>; lines must end with <CR><LF> (RFC 5321 2.3.8)"
        );
        assert_eq!(
            text(DataError::LineTooLong { max: 1000 }),
            "500 5.5.2 Line too long (max 1000 bytes including CRLF)"
        );
        assert!(text(DataError::TooBig { max: 5 }).starts_with("552 5.3.4 "));
        assert_eq!(
            text(DataError::TooManyHops { max: 5 }),
            "554 5.4.6 Too many hops, possible mail loop"
        );
    }
}
