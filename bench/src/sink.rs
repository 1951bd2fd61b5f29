//! The counting sink's SMTP server session, without I/O: bytes in, replies and
//! counts out. It keeps no message data, only where it is in the DATA stream.
//!
//! Only `<CRLF>.<CRLF>` ends message data (RFC 5321 4.1.1.4); a bare LF or CR
//! never does. Commands pipelined behind DATA, or behind the end of data, are
//! read from the same input (RFC 2920).

/// Name in the greeting and EHLO reply.
pub const HOSTNAME: &str = "countsink";

/// Largest message taken, advertised with SIZE (RFC 1870); larger ones get 552.
pub const MAX_SIZE: u64 = 100 * 1024 * 1024;

/// Longest command line, CRLF included. RFC 5321 4.5.3.1.4 says 512; extensions
/// make real ones longer, and a sink should not be the strict one.
const MAX_COMMAND: usize = 4096;

/// What one `feed` call completed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Messages accepted (end of data answered with 250).
    pub messages: u64,
    /// Recipients of those messages.
    pub recipients: u64,
    /// MAIL commands accepted: transactions begun.
    pub transactions: u64,
    /// Message bytes seen as sent, dot-stuffing and terminator included.
    pub data_bytes: u64,
    /// The session is over (QUIT): close the connection after writing the replies.
    pub close: bool,
}

/// Where the session is between commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No EHLO/HELO yet.
    Greeted,
    /// EHLO/HELO done, no transaction.
    Ready,
    /// MAIL accepted; `rcpts` recipients so far.
    Mail { rcpts: u64 },
    /// Reading message data for `rcpts` recipients.
    Data { rcpts: u64 },
}

/// One SMTP server session of the counting sink.
#[derive(Debug)]
pub struct SinkSession {
    phase: Phase,
    /// The command line received so far (without its end).
    line: Vec<u8>,
    /// The current command line is too long: skip to its end, then say 500.
    discarding: bool,
    scanner: DataScanner,
    data_bytes: u64,
}

impl Default for SinkSession {
    fn default() -> Self {
        Self::new()
    }
}

impl SinkSession {
    /// A session waiting for EHLO; send `greeting()` first.
    pub fn new() -> Self {
        SinkSession {
            phase: Phase::Greeted,
            line: Vec::with_capacity(256),
            discarding: false,
            scanner: DataScanner::default(),
            data_bytes: 0,
        }
    }

    /// The 220 greeting to send on connect.
    pub fn greeting() -> &'static [u8] {
        b"220 countsink ESMTP counting sink\r\n"
    }

    /// Consumes `input`, appends the replies to `out` and tells what completed.
    /// Input after QUIT is ignored.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Progress {
        let mut progress = Progress::default();
        while !input.is_empty() && !progress.close {
            if let Phase::Data { rcpts } = self.phase {
                let (used, ended) = self.scanner.scan(input);
                input = &input[used..];
                self.data_bytes += used as u64;
                progress.data_bytes += used as u64;
                if ended {
                    self.phase = Phase::Ready;
                    if self.data_bytes > MAX_SIZE {
                        out.extend_from_slice(b"552 5.3.4 message too big\r\n");
                    } else {
                        out.extend_from_slice(b"250 2.0.0 counted\r\n");
                        progress.messages += 1;
                        progress.recipients += rcpts;
                    }
                }
                continue;
            }
            match input.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.take_line_part(&input[..nl]);
                    input = &input[nl + 1..];
                    if std::mem::take(&mut self.discarding) {
                        out.extend_from_slice(b"500 5.5.2 line too long\r\n");
                    } else {
                        let line = std::mem::take(&mut self.line);
                        let text = line.strip_suffix(b"\r").unwrap_or(&line);
                        self.command(text, out, &mut progress);
                        self.line = line;
                    }
                    self.line.clear();
                }
                None => {
                    self.take_line_part(input);
                    input = &[];
                }
            }
        }
        progress
    }

    fn take_line_part(&mut self, part: &[u8]) {
        if self.discarding {
            return;
        }
        if self.line.len() + part.len() + 1 > MAX_COMMAND {
            self.discarding = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(part);
        }
    }

    fn command(&mut self, line: &[u8], out: &mut Vec<u8>, progress: &mut Progress) {
        let (verb, arg) = match line.iter().position(|&b| b == b' ') {
            Some(sp) => (&line[..sp], &line[sp + 1..]),
            None => (line, &[][..]),
        };
        let verb = verb.to_ascii_uppercase();
        let reply: &[u8] = match verb.as_slice() {
            b"EHLO" | b"HELO" if arg.iter().all(u8::is_ascii_whitespace) => {
                b"501 5.5.4 EHLO needs a domain\r\n"
            }
            b"EHLO" => {
                self.phase = Phase::Ready;
                out.extend_from_slice(b"250-countsink hello\r\n250-PIPELINING\r\n250-8BITMIME\r\n");
                out.extend_from_slice(format!("250-SIZE {MAX_SIZE}\r\n").as_bytes());
                b"250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n"
            }
            b"HELO" => {
                self.phase = Phase::Ready;
                b"250 countsink hello\r\n"
            }
            b"MAIL" => match self.phase {
                Phase::Greeted => b"503 5.5.1 send EHLO first\r\n",
                Phase::Mail { .. } | Phase::Data { .. } => b"503 5.5.1 nested MAIL\r\n",
                Phase::Ready if !starts_with_ignore_case(arg, b"FROM:") => {
                    b"501 5.5.4 syntax: MAIL FROM:<address>\r\n"
                }
                Phase::Ready if declared_size(arg).is_some_and(|size| size > MAX_SIZE) => {
                    b"552 5.3.4 message too big\r\n"
                }
                Phase::Ready => {
                    self.phase = Phase::Mail { rcpts: 0 };
                    progress.transactions += 1;
                    b"250 2.1.0 sender ok\r\n"
                }
            },
            b"RCPT" => match self.phase {
                Phase::Mail { rcpts } if starts_with_ignore_case(arg, b"TO:") => {
                    self.phase = Phase::Mail { rcpts: rcpts + 1 };
                    b"250 2.1.5 recipient ok\r\n"
                }
                Phase::Mail { .. } => b"501 5.5.4 syntax: RCPT TO:<address>\r\n",
                _ => b"503 5.5.1 MAIL first\r\n",
            },
            b"DATA" => match self.phase {
                Phase::Mail { rcpts: 0 } => b"554 5.5.1 no valid recipients\r\n",
                Phase::Mail { rcpts } => {
                    self.phase = Phase::Data { rcpts };
                    self.scanner = DataScanner::default();
                    self.data_bytes = 0;
                    b"354 end data with <CRLF>.<CRLF>\r\n"
                }
                _ => b"503 5.5.1 MAIL first\r\n",
            },
            b"RSET" => {
                if self.phase != Phase::Greeted {
                    self.phase = Phase::Ready;
                }
                b"250 2.0.0 reset\r\n"
            }
            b"NOOP" => b"250 2.0.0 ok\r\n",
            b"VRFY" => b"252 2.5.0 cannot verify\r\n",
            b"QUIT" => {
                progress.close = true;
                b"221 2.0.0 bye\r\n"
            }
            _ => b"502 5.5.1 command not implemented\r\n",
        };
        out.extend_from_slice(reply);
    }
}

fn starts_with_ignore_case(text: &[u8], prefix: &[u8]) -> bool {
    text.len() >= prefix.len() && text[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The `SIZE=n` parameter of a MAIL command, if any and numeric.
fn declared_size(arg: &[u8]) -> Option<u64> {
    arg.split(|&b| b == b' ')
        .find(|param| starts_with_ignore_case(param, b"SIZE="))
        .and_then(|param| std::str::from_utf8(&param[5..]).ok())
        .and_then(|digits| digits.parse().ok())
}

/// Finds `<CRLF>.<CRLF>` in a DATA stream fed in pieces of any size.
/// The CRLF of the DATA command counts as the first CRLF, so an empty message
/// is just `.<CRLF>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum DataScanner {
    /// Just after a CRLF.
    #[default]
    LineStart,
    /// `.` at the start of a line.
    Dot,
    /// `.<CR>` at the start of a line.
    DotCr,
    /// Inside a line.
    Middle,
    /// A CR inside a line (or after a CR).
    Cr,
}

impl DataScanner {
    /// Scans `input`; returns how many bytes belong to the message (the
    /// terminator included) and whether the terminator was found.
    fn scan(&mut self, input: &[u8]) -> (usize, bool) {
        use DataScanner::*;
        let mut i = 0;
        while i < input.len() {
            if *self == Middle {
                // The common case: skip the rest of the line in one search.
                match input[i..].iter().position(|&b| b == b'\r') {
                    Some(cr) => {
                        i += cr + 1;
                        *self = Cr;
                        continue;
                    }
                    None => return (input.len(), false),
                }
            }
            let byte = input[i];
            i += 1;
            *self = match (*self, byte) {
                (LineStart, b'.') => Dot,
                (Dot, b'\r') => DotCr,
                (DotCr, b'\n') => {
                    *self = LineStart;
                    return (i, true);
                }
                (Cr, b'\n') => LineStart,
                (_, b'\r') => Cr,
                _ => Middle,
            };
        }
        (i, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in one piece; returns the replies and the progress.
    fn run(session: &mut SinkSession, input: &[u8]) -> (String, Progress) {
        let mut out = Vec::new();
        let progress = session.feed(input, &mut out);
        (String::from_utf8(out).unwrap(), progress)
    }

    fn ready() -> SinkSession {
        let mut s = SinkSession::new();
        run(&mut s, b"EHLO client.test\r\n");
        s
    }

    fn codes(replies: &str) -> Vec<&str> {
        replies.lines().map(|l| &l[..3]).collect()
    }

    #[test]
    fn pipelined_transaction_is_counted_once_with_its_recipients() {
        let mut s = ready();
        let (out, p) = run(
            &mut s,
            b"MAIL FROM:<a@x.test> SIZE=20\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n",
        );
        assert_eq!(codes(&out), ["250", "250", "250", "354", "250", "221"]);
        assert_eq!(
            (p.messages, p.recipients, p.transactions, p.close),
            (1, 2, 1, true)
        );
        assert_eq!(
            p.data_bytes,
            b"Subject: hi\r\n\r\nbody\r\n.\r\n".len() as u64
        );
    }

    #[test]
    fn terminator_split_across_every_boundary_is_found() {
        let stream: &[u8] =
            b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nline one\r\n..dot\r\n.\r\nNOOP\r\n";
        for cut in 0..stream.len() {
            let mut s = ready();
            let (mut out, first) = run(&mut s, &stream[..cut]);
            let (rest, second) = run(&mut s, &stream[cut..]);
            out.push_str(&rest);
            assert_eq!(
                codes(&out),
                ["250", "250", "354", "250", "250"],
                "cut at {cut}"
            );
            assert_eq!(first.messages + second.messages, 1, "cut at {cut}");
        }
    }

    #[test]
    fn byte_at_a_time_input_works() {
        let mut s = ready();
        let mut out = String::new();
        let mut messages = 0;
        for &b in b"MAIL FROM:<>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\n".iter() {
            let (o, p) = run(&mut s, &[b]);
            out.push_str(&o);
            messages += p.messages;
        }
        assert_eq!(codes(&out), ["250", "250", "354", "250"]);
        assert_eq!(messages, 1);
    }

    #[test]
    fn stuffed_dot_lines_do_not_end_the_data() {
        let mut s = ready();
        let (out, p) = run(
            &mut s,
            b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n..\r\n...\r\n.a\r\n. \r\n",
        );
        assert_eq!(codes(&out), ["250", "250", "354"]);
        assert_eq!(p.messages, 0);
        let (out, p) = run(&mut s, b".\r\n");
        assert_eq!(codes(&out), ["250"]);
        assert_eq!(p.messages, 1);
    }

    #[test]
    fn smuggled_lf_dot_does_not_end_the_data() {
        let mut s = ready();
        let (out, p) = run(
            &mut s,
            b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\n.\nMAIL FROM:<e@v>\r\nx\r.\rx\r\n.\n\r\nz\r\r\n.\r\n",
        );
        assert_eq!(codes(&out), ["250", "250", "354", "250"]);
        assert_eq!((p.messages, p.transactions), (1, 1));
    }

    #[test]
    fn empty_message_is_just_the_dot_line() {
        let mut s = ready();
        let (out, p) = run(&mut s, b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n.\r\n");
        assert_eq!(codes(&out), ["250", "250", "354", "250"]);
        assert_eq!(p.messages, 1);
    }

    #[test]
    fn ehlo_offers_pipelining_8bitmime_and_size() {
        let mut s = SinkSession::new();
        let (out, _) = run(&mut s, b"ehlo client.test\r\n");
        assert!(out.contains("250-PIPELINING\r\n"));
        assert!(out.contains("250-8BITMIME\r\n"));
        assert!(out.contains(&format!("250-SIZE {MAX_SIZE}\r\n")));
        assert!(out.ends_with("250 SMTPUTF8\r\n"));
    }

    #[test]
    fn commands_out_of_sequence_get_503() {
        let mut s = SinkSession::new();
        let (out, _) = run(&mut s, b"MAIL FROM:<a@x>\r\n");
        assert_eq!(codes(&out), ["503"]);
        let mut s = ready();
        let (out, p) = run(
            &mut s,
            b"RCPT TO:<b@y>\r\nDATA\r\nMAIL FROM:<a@x>\r\nDATA\r\nMAIL FROM:<a@x>\r\n",
        );
        assert_eq!(codes(&out), ["503", "503", "250", "554", "503"]);
        assert_eq!(p.messages, 0);
    }

    #[test]
    fn rset_ends_the_transaction_without_counting() {
        let mut s = ready();
        let (out, p) = run(
            &mut s,
            b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRSET\r\nDATA\r\n",
        );
        assert_eq!(codes(&out), ["250", "250", "250", "503"]);
        assert_eq!(p.messages, 0);
    }

    #[test]
    fn declared_size_over_the_limit_is_refused_at_mail() {
        let mut s = ready();
        let cmd = format!("MAIL FROM:<a@x> SIZE={}\r\n", MAX_SIZE + 1);
        let (out, _) = run(&mut s, cmd.as_bytes());
        assert_eq!(codes(&out), ["552"]);
    }

    #[test]
    fn overlong_command_line_gets_500_and_the_session_goes_on() {
        let mut s = ready();
        let mut input = vec![b'A'; MAX_COMMAND * 3];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let (out, p) = run(&mut s, &input);
        assert_eq!(codes(&out), ["500", "250"]);
        assert!(!p.close);
    }

    #[test]
    fn input_after_quit_is_ignored() {
        let mut s = ready();
        let (out, p) = run(&mut s, b"QUIT\r\nNOOP\r\n");
        assert_eq!(codes(&out), ["221"]);
        assert!(p.close);
    }

    #[test]
    fn unknown_and_bdat_commands_get_502() {
        let mut s = ready();
        let (out, _) = run(&mut s, b"BDAT 10 LAST\r\nSTARTTLS\r\nVRFY x\r\n");
        assert_eq!(codes(&out), ["502", "502", "252"]);
    }
}
