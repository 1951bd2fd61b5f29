//! A small raw SMTP test client: exact bytes out, one (multi-line) reply in, every read bounded in time.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

/// One SMTP reply, possibly multi-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, after "NNN-" / "NNN ".
    pub lines: Vec<String>,
}

impl Reply {
    /// Panics unless this is `code` with the enhanced status `enhanced` (e.g. `550`, `"5.6.0"`).
    pub fn assert_is(&self, code: u16, enhanced: &str) {
        assert_eq!(
            (self.code, self.enhanced().as_deref()),
            (code, Some(enhanced)),
            "expected {code} {enhanced}, got: {self}"
        );
    }

    /// The enhanced status code ("5.7.1") at the start of the first line, if any.
    pub fn enhanced(&self) -> Option<String> {
        self.lines.first().and_then(|l| enhanced_of(l))
    }

    /// True when every line starts with an enhanced status code whose class matches the reply code.
    pub fn every_line_has_enhanced_code(&self) -> bool {
        let class = (self.code / 100).to_string();
        self.lines
            .iter()
            .all(|l| enhanced_of(l).is_some_and(|e| e.split('.').next() == Some(class.as_str())))
    }

    /// All lines joined with "\n".
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// For an EHLO reply: whether a line advertises `keyword` (case-insensitive, parameters ignored).
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.split_ascii_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }

    /// For "250 2.0.0 Ok: queued as ID": the ID (also tolerating `<ID>`).
    pub fn queue_id(&self) -> Option<String> {
        let text = self.text();
        let lower = text.to_ascii_lowercase();
        let at = lower.find("queued as")?;
        let id = text[at + "queued as".len()..]
            .split_ascii_whitespace()
            .next()?;
        Some(id.trim_matches(['<', '>']).to_string())
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == self.lines.len() { ' ' } else { '-' };
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}{sep}{line}", self.code)?;
        }
        Ok(())
    }
}

fn enhanced_of(line: &str) -> Option<String> {
    let word = line.split_ascii_whitespace().next()?;
    let parts: Vec<&str> = word.split('.').collect();
    let ok = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then(|| word.to_string())
}

/// Why [`SmtpClient::send_mail`] did not get a queue id.
#[derive(Debug)]
pub enum SendError {
    /// The connection failed or a reply did not come in time.
    Io(io::Error),
    /// The server refused a step (MAIL, a RCPT, DATA or the end of data).
    Rejected {
        /// The command that was refused ("MAIL", "RCPT TO:<x>", "DATA", "end of data").
        step: String,
        /// The refusal.
        reply: Reply,
    },
}

impl SendError {
    /// The refusal, when it was one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            SendError::Rejected { reply, .. } => Some(reply),
            SendError::Io(_) => None,
        }
    }
}

impl From<io::Error> for SendError {
    fn from(e: io::Error) -> Self {
        SendError::Io(e)
    }
}

/// A raw SMTP client over one TCP connection.
pub struct SmtpClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    // Kept across calls so a timed-out read loses nothing.
    partial: Vec<u8>,
    timeout: Duration,
    greeting: Option<Reply>,
    greeted: bool,
}

impl SmtpClient {
    /// Connects to `addr` and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> io::Result<SmtpClient> {
        let mut c = SmtpClient::connect_raw(addr).await?;
        let g = c.read_reply().await?;
        c.greeting = Some(g);
        Ok(c)
    }

    /// Connects from the source address `source` (e.g. 127.0.0.2) and reads the greeting.
    pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> io::Result<SmtpClient> {
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = bounded(crate::WAIT, socket.connect(addr)).await?;
        let mut c = SmtpClient::from_stream(stream)?;
        let g = c.read_reply().await?;
        c.greeting = Some(g);
        Ok(c)
    }

    /// Connects without reading the greeting.
    pub async fn connect_raw(addr: SocketAddr) -> io::Result<SmtpClient> {
        let stream = bounded(crate::WAIT, TcpStream::connect(addr)).await?;
        SmtpClient::from_stream(stream)
    }

    fn from_stream(stream: TcpStream) -> io::Result<SmtpClient> {
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(SmtpClient {
            reader: BufReader::new(r),
            writer: w,
            partial: Vec::new(),
            timeout: crate::WAIT,
            greeting: None,
            greeted: false,
        })
    }

    /// The greeting read by `connect`/`connect_from` (panics after `connect_raw`).
    pub fn greeting(&self) -> &Reply {
        match &self.greeting {
            Some(g) => g,
            None => panic!("no greeting was read (connect_raw)"),
        }
    }

    /// Sets the bound on each following read.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Writes raw bytes (one write call: they usually leave in one TCP segment).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        bounded(self.timeout, self.writer.write_all(bytes)).await?;
        self.writer.flush().await
    }

    /// Reads one reply; `TimedOut` after the timeout, `UnexpectedEof` if the server closed.
    pub async fn read_reply(&mut self) -> io::Result<Reply> {
        let mut code = None;
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let malformed = || {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not an SMTP reply line: {text:?}"),
                )
            };
            let c: u16 = text
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(malformed)?;
            if *code.get_or_insert(c) != c {
                return Err(malformed());
            }
            let sep = text.as_bytes().get(3).copied();
            lines.push(text.get(4..).unwrap_or("").to_string());
            match sep {
                Some(b'-') => continue,
                Some(b' ') | None => return Ok(Reply { code: c, lines }),
                Some(_) => return Err(malformed()),
            }
        }
    }

    async fn read_line(&mut self) -> io::Result<Vec<u8>> {
        let n = bounded(
            self.timeout,
            self.reader.read_until(b'\n', &mut self.partial),
        )
        .await?;
        if n == 0 && !self.partial.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        Ok(std::mem::take(&mut self.partial))
    }

    /// Sends `line` + CRLF and reads the reply.
    pub async fn command(&mut self, line: &str) -> io::Result<Reply> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply().await
    }

    /// Sends EHLO and reads the reply.
    pub async fn ehlo(&mut self, name: &str) -> io::Result<Reply> {
        let r = self.command(&format!("EHLO {name}")).await?;
        self.greeted = r.is_positive();
        Ok(r)
    }

    /// Reads replies until the server closes the connection or `wait` passes
    /// without a new one; returns them and whether the connection was closed.
    pub async fn read_until_closed(&mut self, wait: Duration) -> (Vec<Reply>, bool) {
        let saved = self.timeout;
        self.timeout = wait;
        let mut replies = Vec::new();
        let closed = loop {
            match self.read_reply().await {
                Ok(r) => replies.push(r),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => break false,
                Err(_) => break true,
            }
        };
        self.timeout = saved;
        (replies, closed)
    }

    /// Sends the message `body` (CRLF line endings) after a 354, dot-stuffed, then `.`; reads the reply.
    pub async fn data_body(&mut self, body: &[u8]) -> io::Result<Reply> {
        let mut wire = dot_stuff(body);
        if !wire.ends_with(b"\r\n") {
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        self.send(&wire).await?;
        self.read_reply().await
    }

    /// One transaction: EHLO if not done yet, MAIL, RCPT for each, DATA, the body; the queue id on 250.
    pub async fn send_mail(
        &mut self,
        from: &str,
        rcpts: &[&str],
        body: &[u8],
    ) -> Result<String, SendError> {
        self.send_mail_params(from, "", rcpts, body).await
    }

    /// Like [`SmtpClient::send_mail`] with MAIL FROM parameters (e.g. "SMTPUTF8 BODY=8BITMIME").
    pub async fn send_mail_params(
        &mut self,
        from: &str,
        params: &str,
        rcpts: &[&str],
        body: &[u8],
    ) -> Result<String, SendError> {
        if !self.greeted {
            let r = self.ehlo("client.test").await?;
            if !r.is_positive() {
                return Err(SendError::Rejected {
                    step: "EHLO".into(),
                    reply: r,
                });
            }
        }
        let mail = if params.is_empty() {
            format!("MAIL FROM:<{from}>")
        } else {
            format!("MAIL FROM:<{from}> {params}")
        };
        let r = self.command(&mail).await?;
        if !r.is_positive() {
            return Err(SendError::Rejected {
                step: mail,
                reply: r,
            });
        }
        for rcpt in rcpts {
            let cmd = format!("RCPT TO:<{rcpt}>");
            let r = self.command(&cmd).await?;
            if !r.is_positive() {
                self.command("RSET").await?;
                return Err(SendError::Rejected {
                    step: cmd,
                    reply: r,
                });
            }
        }
        let r = self.command("DATA").await?;
        if r.code != 354 {
            return Err(SendError::Rejected {
                step: "DATA".into(),
                reply: r,
            });
        }
        let r = self.data_body(body).await?;
        if !r.is_positive() {
            return Err(SendError::Rejected {
                step: "end of data".into(),
                reply: r,
            });
        }
        match r.queue_id() {
            Some(id) => Ok(id),
            None => Ok(r.text()),
        }
    }

    /// Sends QUIT and reads the reply.
    pub async fn quit(mut self) -> io::Result<Reply> {
        self.command("QUIT").await
    }
}

async fn bounded<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )),
    }
}

/// Doubles a leading dot on every line (RFC 5321 4.5.2).
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut line_start = true;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    out
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A Message-ID unique in this test run: `<N.PID.NANOS@tests.relay.test>` (without the brackets).
pub fn new_message_id() -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{n}.{}.{nanos}@tests.relay.test", std::process::id())
}

/// A minimal RFC 5322 message; `body` lines separated by "\n" become CRLF lines.
pub fn message(from: &str, to: &[&str], subject: &str, message_id: &str, body: &str) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        to.iter().map(|t| format!("<{t}>")).collect::<Vec<_>>().join(", ")
    );
    for line in body.split('\n') {
        m.push_str(line.trim_end_matches('\r'));
        m.push_str("\r\n");
    }
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_parses_enhanced_code_and_queue_id() {
        let r = Reply {
            code: 250,
            lines: vec!["2.0.0 Ok: queued as 01HXYZ".into()],
        };
        assert_eq!(r.enhanced().as_deref(), Some("2.0.0"));
        assert!(r.every_line_has_enhanced_code());
        assert_eq!(r.queue_id().as_deref(), Some("01HXYZ"));
        let r = Reply {
            code: 554,
            lines: vec!["5.7.1 a".into(), "no code here".into()],
        };
        assert!(!r.every_line_has_enhanced_code());
        let wrong_class = Reply {
            code: 550,
            lines: vec!["2.0.0 odd".into()],
        };
        assert!(!wrong_class.every_line_has_enhanced_code());
        assert_eq!(r.to_string(), "554-5.7.1 a\n554 no code here");
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_only() {
        assert_eq!(dot_stuff(b".a\r\nb.c\r\n..\r\n"), b"..a\r\nb.c\r\n...\r\n");
    }

    #[test]
    fn message_has_crlf_lines_and_headers() {
        let m = message("a@x.test", &["b@y.test"], "S", "id1@x", "one\ntwo");
        let text = String::from_utf8(m).expect("utf8");
        assert!(text.contains("Message-ID: <id1@x>\r\n"));
        assert!(text.ends_with("\r\n\r\none\r\ntwo\r\n"));
        assert!(!text.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn message_ids_are_unique() {
        assert_ne!(new_message_id(), new_message_id());
    }
}
