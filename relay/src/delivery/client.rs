//! Outbound SMTP client: one session to one remote host, carrying one or more transactions.
//!
//! The wire rules live in small sans-IO pieces ([`parse_reply`], [`DataEncoder`],
//! [`Extensions`]); [`Connection`] only moves bytes and applies timeouts (RFC 5321 4.5.3.2).
//! [`Connection::starttls`] upgrades a session to TLS (RFC 3207); which policy asks for it, and
//! the handshake, are in [`super::tls`].

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::tls::{self, StartTls, TlsFailure, TlsInfo};
use crate::smtp::{EnhancedCode, Mailbox, Reply, ReversePath};

/// Most bytes one server reply may take (all its lines together). A server sending more is
/// broken or hostile; the session ends with a protocol error.
pub(crate) const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Transactions one connection carries before [`Connection::reusable`] says no, so a long
/// queue to one destination still spreads over fresh connections now and then.
pub(crate) const MAX_TRANSACTIONS_PER_CONNECTION: u32 = 100;

/// How much of the message is encoded and written at a time.
const BODY_CHUNK: usize = 64 * 1024;

/// How long `quit` waits for the 221: the transaction results are already known, so there is
/// no point in waiting the full command timeout for a polite goodbye.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Timeouts and identity for outgoing sessions.
#[derive(Clone, Debug)]
pub(crate) struct ClientSettings {
    /// Name sent in EHLO/HELO (the relay's `[server] hostname`).
    pub helo_name: String,
    /// Limit for the TCP connect.
    pub connect_timeout: Duration,
    /// Limit for the 220 greeting (RFC 5321 4.5.3.2.1 suggests 5 minutes).
    pub greeting_timeout: Duration,
    /// Limit for each command's reply and for each write (RFC 5321: 5 minutes).
    pub command_timeout: Duration,
    /// Limit for the reply to the end of data (RFC 5321 4.5.3.2.6: 10 minutes).
    pub data_timeout: Duration,
}

/// The byte stream under a session: plain TCP, or the TLS stream over it after STARTTLS.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// What happened to one recipient of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RcptResult {
    /// The server took responsibility for the message (2xx to end of data).
    Delivered(Reply),
    /// The server refused the recipient: the RCPT reply, the DATA reply, or a synthesised reply
    /// when the transaction could not be attempted (SMTPUTF8 or SIZE not possible).
    Failed(Reply),
}

/// Why a session or transaction failed as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The TCP connection could not be made.
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// The server did not answer (or accept our data) in time, during the named stage.
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// The connection broke after it was established.
    #[error("connection error: {0}")]
    Io(#[source] io::Error),
    /// The server refused the session or transaction: a 421 greeting, a 5xx to MAIL, and so on.
    #[error("{stage} refused: {}", reply_summary(reply))]
    Reply {
        /// The command or phase that got the reply ("greeting", "EHLO", "MAIL FROM", ...).
        stage: &'static str,
        /// The server's reply.
        reply: Reply,
    },
    /// The server sent something that is not an SMTP reply.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// TLS could not be negotiated or verified, or the policy needs TLS the server lacks.
    #[error("{0}")]
    Tls(TlsFailure),
}

/// Why [`Connection::starttls`] did not give a TLS session.
#[derive(Debug)]
pub(crate) struct StartTlsError {
    /// What went wrong.
    pub error: SessionError,
    /// The session, still in plain text and able to carry mail, when the server refused
    /// STARTTLS with a reply (other than 421): RFC 3207 4 lets the client go on without TLS.
    pub plain: Option<Connection>,
}

impl SessionError {
    /// True only for a 5xx reply: everything else (connection trouble, timeouts, 4xx) may work
    /// on a later attempt or with another MX host.
    #[allow(
        dead_code,
        reason = "delivery/mod.rs classifies through to_reply().code; kept for callers that only need the verdict"
    )]
    pub fn is_permanent(&self) -> bool {
        matches!(self, SessionError::Reply { reply, .. } if reply.code >= 500)
    }

    /// The reply to record for the affected recipients: the server's own reply, or a
    /// synthesised 4xx with an RFC 3463 code: 4.4.1 (no answer from host) for connect
    /// failures, 4.4.2 (bad connection) for timeouts and broken connections after connect,
    /// 4.5.0 for protocol errors.
    pub fn to_reply(&self) -> Reply {
        match self {
            SessionError::Connect(err) => Reply::new(
                451,
                Some(EnhancedCode(4, 4, 1)),
                format!("Connection failed: {err}"),
            ),
            SessionError::Timeout("connect") => Reply::new(
                451,
                Some(EnhancedCode(4, 4, 1)),
                "Connection timed out: no answer from host",
            ),
            SessionError::Timeout(stage) => Reply::new(
                451,
                Some(EnhancedCode(4, 4, 2)),
                format!("Remote server timed out during {stage}"),
            ),
            SessionError::Io(err) => Reply::new(
                451,
                Some(EnhancedCode(4, 4, 2)),
                format!("Connection to remote server lost: {err}"),
            ),
            SessionError::Reply { reply, .. } => reply.clone(),
            SessionError::Protocol(detail) => Reply::new(
                451,
                Some(EnhancedCode(4, 5, 0)),
                format!("Remote server protocol error: {detail}"),
            ),
            SessionError::Tls(failure) => failure.to_reply(),
        }
    }
}

/// "550 5.1.1 text text" on one line, for error messages and logs.
fn reply_summary(reply: &Reply) -> String {
    let mut out = reply.code.to_string();
    if let Some(code) = &reply.enhanced {
        let _ = write!(out, " {code}");
    }
    for line in &reply.lines {
        if !line.is_empty() {
            out.push(' ');
            out.push_str(line);
        }
    }
    out
}

/// An open SMTP session, past the greeting and EHLO.
pub(crate) struct Connection {
    stream: Box<dyn Transport>,
    /// Bytes read from the server but not yet consumed as replies.
    rbuf: Vec<u8>,
    peer: SocketAddr,
    banner_host: String,
    extensions: Extensions,
    /// Set once STARTTLS succeeded.
    tls: Option<TlsInfo>,
    settings: ClientSettings,
    transactions: u32,
    /// False once the session is in an unknown state (I/O error, timeout, 421, protocol error,
    /// failed RSET): it must not carry another transaction.
    usable: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("banner_host", &self.banner_host)
            .field("tls", &self.tls)
            .field("transactions", &self.transactions)
            .field("usable", &self.usable)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `addr` (from `source` if given), reads the 220 greeting and sends EHLO,
    /// falling back to HELO when EHLO gets a 5xx (RFC 5321 3.2).
    pub async fn open(
        addr: SocketAddr,
        source: Option<IpAddr>,
        settings: &ClientSettings,
    ) -> Result<Connection, SessionError> {
        let stream = tokio::time::timeout(settings.connect_timeout, connect(addr, source))
            .await
            .map_err(|_| SessionError::Timeout("connect"))?
            .map_err(SessionError::Connect)?;
        // Commands are small and latency-bound; do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        Connection::start(Box::new(stream), addr, settings).await
    }

    async fn start(
        stream: Box<dyn Transport>,
        peer: SocketAddr,
        settings: &ClientSettings,
    ) -> Result<Connection, SessionError> {
        let mut conn = Connection {
            stream,
            rbuf: Vec::with_capacity(4096),
            peer,
            banner_host: String::new(),
            extensions: Extensions::default(),
            tls: None,
            settings: settings.clone(),
            transactions: 0,
            usable: true,
        };
        let greeting = conn
            .read_reply("greeting", settings.greeting_timeout)
            .await?;
        if greeting.code != 220 {
            return Err(SessionError::Reply {
                stage: "greeting",
                reply: greeting,
            });
        }
        conn.banner_host = greeting
            .lines
            .first()
            .and_then(|line| line.split_ascii_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        conn.hello().await?;
        Ok(conn)
    }

    /// Upgrades the session to TLS (RFC 3207): STARTTLS, the handshake `request` describes,
    /// then EHLO again, whose extensions replace the ones from before TLS (RFC 3207 4.2).
    ///
    /// A refusal other than 421 leaves the plain session usable ([`StartTlsError::plain`]);
    /// after a failed handshake the connection is gone.
    pub async fn starttls(mut self, request: &StartTls) -> Result<Connection, StartTlsError> {
        let lost = |error: SessionError| StartTlsError { error, plain: None };
        let limit = self.settings.command_timeout;
        self.write(b"STARTTLS\r\n", "STARTTLS")
            .await
            .map_err(lost)?;
        let reply = self.read_reply("STARTTLS", limit).await.map_err(lost)?;
        if reply.code == 421 {
            return Err(lost(SessionError::Reply {
                stage: "STARTTLS",
                reply,
            }));
        }
        if reply.code != 220 {
            let error = SessionError::Tls(TlsFailure::Refused {
                peer: request.peer.clone(),
                reply: reply_summary(&reply),
            });
            let plain = self.usable.then_some(self);
            return Err(StartTlsError { error, plain });
        }
        if !self.rbuf.is_empty() {
            return Err(lost(SessionError::Tls(TlsFailure::Injected {
                peer: request.peer.clone(),
            })));
        }
        let (stream, info) = tls::handshake(self.stream, request, limit)
            .await
            .map_err(|failure| lost(SessionError::Tls(failure)))?;
        self.stream = Box::new(stream);
        self.tls = Some(info);
        self.extensions = Extensions::default();
        self.hello().await.map_err(lost)?;
        Ok(self)
    }

    async fn hello(&mut self) -> Result<(), SessionError> {
        let timeout = self.settings.command_timeout;
        let ehlo = format!("EHLO {}\r\n", self.settings.helo_name);
        self.write(ehlo.as_bytes(), "EHLO").await?;
        let reply = self.read_reply("EHLO", timeout).await?;
        if is_positive(&reply) {
            self.extensions = Extensions::from_ehlo(&reply);
            return Ok(());
        }
        if reply.code < 500 {
            return Err(SessionError::Reply {
                stage: "EHLO",
                reply,
            });
        }
        let helo = format!("HELO {}\r\n", self.settings.helo_name);
        self.write(helo.as_bytes(), "HELO").await?;
        let reply = self.read_reply("HELO", timeout).await?;
        if is_positive(&reply) {
            self.extensions = Extensions::default();
            Ok(())
        } else {
            Err(SessionError::Reply {
                stage: "HELO",
                reply,
            })
        }
    }

    /// Runs one mail transaction and returns one result per recipient, in order.
    ///
    /// Uses PIPELINING when offered (MAIL, every RCPT and DATA in one write, RFC 2920),
    /// `SIZE=` when offered, `BODY=8BITMIME` for an 8-bit message when offered, and
    /// `SMTPUTF8` when `smtputf8` is set. A message that needs SMTPUTF8 where it is not
    /// offered (RFC 6531 3.4), or that exceeds the server's SIZE, fails every recipient
    /// permanently without a transaction. The body is sent dot-stuffed with every bare CR or LF
    /// turned into CRLF, so no byte sequence in it can end the data early.
    ///
    /// A recipient whose RCPT was accepted but whose data got a 4xx/5xx fails with the data
    /// reply. An error of the whole transaction (MAIL refused, timeout, broken connection) is
    /// an `Err`: no recipient can be assumed delivered.
    pub async fn send(
        &mut self,
        mail_from: &ReversePath,
        rcpts: &[Mailbox],
        body: &[u8],
        eight_bit: bool,
        smtputf8: bool,
    ) -> Result<Vec<RcptResult>, SessionError> {
        if !self.usable {
            return Err(SessionError::Protocol(
                "the connection cannot carry another transaction".to_owned(),
            ));
        }
        if rcpts.is_empty() {
            return Ok(Vec::new());
        }
        if smtputf8 && !self.extensions.smtputf8 {
            let reply = Reply::new(
                553,
                Some(EnhancedCode(5, 6, 7)),
                format!(
                    "Message needs SMTPUTF8, which {} does not support",
                    self.describe_peer()
                ),
            );
            return Ok(vec![RcptResult::Failed(reply); rcpts.len()]);
        }
        if let Some(limit) = self.extensions.size_limit {
            if u64::try_from(body.len()).unwrap_or(u64::MAX) > limit {
                let reply = Reply::new(
                    552,
                    Some(EnhancedCode(5, 3, 4)),
                    format!(
                        "Message size {} exceeds the limit of {limit} bytes of {}",
                        body.len(),
                        self.describe_peer()
                    ),
                );
                return Ok(vec![RcptResult::Failed(reply); rcpts.len()]);
            }
        }
        let sender = mail_from.to_string();
        if has_control_chars(&sender) {
            return Err(SessionError::Protocol(format!(
                "refusing to send sender address with control characters: {sender:?}"
            )));
        }
        self.transactions += 1;

        let mail = self.mail_command(&sender, body.len(), eight_bit, smtputf8);
        // Recipients whose address could inject commands are never sent.
        let rcpt_commands: Vec<Option<String>> = rcpts
            .iter()
            .map(|rcpt| {
                let addr = rcpt.to_string();
                (!has_control_chars(&addr)).then(|| format!("RCPT TO:<{addr}>\r\n"))
            })
            .collect();

        let (mail_reply, rcpt_replies, data_reply) = if self.extensions.pipelining {
            let mut batch = mail;
            for command in rcpt_commands.iter().flatten() {
                batch.push_str(command);
            }
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes(), "MAIL FROM").await?;
            let mail_reply = self.read_transaction_reply("MAIL FROM").await?;
            let mut rcpt_replies = Vec::with_capacity(rcpts.len());
            for command in &rcpt_commands {
                rcpt_replies.push(match command {
                    Some(_) => self.read_transaction_reply("RCPT TO").await?,
                    None => bad_address_reply(),
                });
            }
            let data_reply = self.read_transaction_reply("DATA").await?;
            (mail_reply, rcpt_replies, Some(data_reply))
        } else {
            self.write(mail.as_bytes(), "MAIL FROM").await?;
            let mail_reply = self.read_transaction_reply("MAIL FROM").await?;
            let mut rcpt_replies = Vec::with_capacity(rcpts.len());
            if is_positive(&mail_reply) {
                for command in &rcpt_commands {
                    rcpt_replies.push(match command {
                        Some(command) => {
                            self.write(command.as_bytes(), "RCPT TO").await?;
                            self.read_transaction_reply("RCPT TO").await?
                        }
                        None => bad_address_reply(),
                    });
                }
            }
            let data_reply = if rcpt_replies.iter().any(is_positive) {
                self.write(b"DATA\r\n", "DATA").await?;
                Some(self.read_transaction_reply("DATA").await?)
            } else {
                None
            };
            (mail_reply, rcpt_replies, data_reply)
        };

        if !is_positive(&mail_reply) {
            self.discard_data(data_reply.as_ref()).await;
            self.reset().await;
            return Err(SessionError::Reply {
                stage: "MAIL FROM",
                reply: mail_reply,
            });
        }

        let accepted: Vec<bool> = rcpt_replies.iter().map(is_positive).collect();
        let data_reply = match data_reply {
            Some(reply) if accepted.contains(&true) => reply,
            other => {
                // Every recipient was refused. With PIPELINING the DATA went out anyway and got
                // 503/554 (RFC 2920 3.1); a server that still said 354 gets an empty data
                // section ended at once, and its reply is ignored.
                self.discard_data(other.as_ref()).await;
                self.reset().await;
                return Ok(rcpt_replies.into_iter().map(RcptResult::Failed).collect());
            }
        };

        let final_reply = if data_reply.code == 354 {
            self.write_body(body).await?;
            self.read_reply("end of data", self.settings.data_timeout)
                .await?
        } else {
            data_reply
        };
        let delivered = is_positive(&final_reply);
        let results: Vec<RcptResult> = rcpt_replies
            .into_iter()
            .zip(accepted)
            .map(|(rcpt_reply, accepted)| match (accepted, delivered) {
                (true, true) => RcptResult::Delivered(final_reply.clone()),
                (true, false) => RcptResult::Failed(final_reply.clone()),
                (false, _) => RcptResult::Failed(rcpt_reply),
            })
            .collect();
        if results
            .iter()
            .any(|result| matches!(result, RcptResult::Failed(_)))
        {
            self.reset().await;
        }
        Ok(results)
    }

    /// True if the connection can carry another transaction: no error has left the session in
    /// an unknown state, the server has not said 421, and it has carried fewer than
    /// [`MAX_TRANSACTIONS_PER_CONNECTION`].
    pub fn reusable(&self) -> bool {
        self.usable && self.transactions < MAX_TRANSACTIONS_PER_CONNECTION
    }

    /// Ends the session politely (QUIT, RFC 5321 4.1.1.10) and closes the connection. Errors
    /// are ignored: every transaction's outcome is already known.
    pub async fn quit(mut self) {
        if self.usable && self.write(b"QUIT\r\n", "QUIT").await.is_ok() {
            let limit = self.settings.command_timeout.min(QUIT_TIMEOUT);
            let _ = self.read_reply("QUIT", limit).await;
        }
        let _ = tokio::time::timeout(QUIT_TIMEOUT, self.stream.shutdown()).await;
    }

    /// The remote address of the session.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The service extensions of the last EHLO (after STARTTLS: the ones offered over TLS).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The TLS session's version and cipher, once STARTTLS succeeded; `None` in plain text.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The host name the server announced in its greeting (first word after 220).
    pub fn remote_banner_host(&self) -> &str {
        &self.banner_host
    }

    /// How many transactions this connection has started.
    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    fn describe_peer(&self) -> String {
        match self.remote_banner_host() {
            "" => self.peer.to_string(),
            host => format!("{host} [{}]", self.peer),
        }
    }

    fn mail_command(&self, sender: &str, size: usize, eight_bit: bool, smtputf8: bool) -> String {
        let mut command = format!("MAIL FROM:<{sender}>");
        if self.extensions.size {
            // RFC 1870 allows an estimate; the stored size is the message as received.
            let _ = write!(command, " SIZE={size}");
        }
        if eight_bit && self.extensions.eight_bit_mime {
            command.push_str(" BODY=8BITMIME");
        }
        // Without 8BITMIME an 8-bit message is still sent as it is, as Postfix and most MTAs
        // do; downgrading to 7 bit would break DKIM signatures.
        if smtputf8 {
            command.push_str(" SMTPUTF8");
        }
        command.push_str("\r\n");
        command
    }

    /// Writes the data section: the body encoded chunk by chunk, then `.` CRLF.
    async fn write_body(&mut self, body: &[u8]) -> Result<(), SessionError> {
        let mut encoder = DataEncoder::new();
        let mut out = Vec::with_capacity(BODY_CHUNK + BODY_CHUNK / 8);
        for chunk in body.chunks(BODY_CHUNK) {
            out.clear();
            encoder.encode(chunk, &mut out);
            self.write(&out, "DATA body").await?;
        }
        out.clear();
        encoder.finish(&mut out);
        self.write(&out, "DATA body").await
    }

    /// After a DATA that should not have been accepted (no valid recipient, or MAIL refused):
    /// if the server said 354 anyway, end the data section empty and ignore the reply.
    async fn discard_data(&mut self, data_reply: Option<&Reply>) {
        if data_reply.is_some_and(|reply| reply.code == 354)
            && self.write(b".\r\n", "DATA").await.is_ok()
        {
            let _ = self
                .read_reply("end of data", self.settings.data_timeout)
                .await;
        }
    }

    /// Reads the reply to MAIL, RCPT or DATA. A 421 there means the server is closing the
    /// session (RFC 5321 3.8): the transaction is over for every recipient, so it is an error
    /// of the whole session, and the caller may retry on a fresh connection.
    async fn read_transaction_reply(&mut self, stage: &'static str) -> Result<Reply, SessionError> {
        let reply = self
            .read_reply(stage, self.settings.command_timeout)
            .await?;
        if reply.code == 421 {
            return Err(SessionError::Reply { stage, reply });
        }
        Ok(reply)
    }

    /// Sends RSET after an aborted or partly failed transaction; a session whose RSET is not
    /// answered 250 is not reused.
    async fn reset(&mut self) {
        if !self.usable || self.write(b"RSET\r\n", "RSET").await.is_err() {
            return;
        }
        match self.read_reply("RSET", self.settings.command_timeout).await {
            Ok(reply) if is_positive(&reply) => {}
            _ => self.usable = false,
        }
    }

    async fn write(&mut self, bytes: &[u8], stage: &'static str) -> Result<(), SessionError> {
        let stream = &mut self.stream;
        let result = tokio::time::timeout(self.settings.command_timeout, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                self.usable = false;
                Err(SessionError::Io(err))
            }
            Err(_) => {
                self.usable = false;
                Err(SessionError::Timeout(stage))
            }
        }
    }

    /// Reads one complete reply within `limit`. Any failure, and a 421 (the server is closing
    /// the channel, RFC 5321 3.8), makes the session unusable.
    async fn read_reply(
        &mut self,
        stage: &'static str,
        limit: Duration,
    ) -> Result<Reply, SessionError> {
        let result = match tokio::time::timeout(limit, self.read_reply_inner()).await {
            Ok(result) => result,
            Err(_) => Err(SessionError::Timeout(stage)),
        };
        match &result {
            Ok(reply) if reply.code != 421 => {}
            _ => self.usable = false,
        }
        result
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, SessionError> {
        loop {
            match parse_reply(&self.rbuf) {
                Ok(Some((reply, used))) => {
                    self.rbuf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(err) => return Err(SessionError::Protocol(err.to_string())),
            }
            self.rbuf.reserve(4096);
            let read = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(SessionError::Io)?;
            if read == 0 {
                return Err(SessionError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by the remote server",
                )));
            }
        }
    }
}

async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(source) = source {
        if source.is_ipv4() != addr.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("source address {source} cannot reach {addr}: different address family"),
            ));
        }
        socket.bind(SocketAddr::new(source, 0))?;
    }
    socket.connect(addr).await
}

fn is_positive(reply: &Reply) -> bool {
    (200..300).contains(&reply.code)
}

fn has_control_chars(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// The result for a recipient whose address cannot be written into a command safely.
fn bad_address_reply() -> Reply {
    Reply::new(
        553,
        Some(EnhancedCode(5, 1, 3)),
        "Recipient address contains control characters",
    )
}

/// The service extensions a server announced in its EHLO reply (RFC 5321 4.1.1.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    /// RFC 2920 PIPELINING.
    pub pipelining: bool,
    /// RFC 1870 SIZE: `Some(limit)` when announced with a limit; `None` when not announced or
    /// announced without one (then `SIZE=` is still sent).
    pub size_limit: Option<u64>,
    /// SIZE was announced (with or without a limit).
    pub size: bool,
    /// RFC 6152 8BITMIME.
    pub eight_bit_mime: bool,
    /// RFC 6531 SMTPUTF8.
    pub smtputf8: bool,
    /// RFC 3207 STARTTLS.
    pub starttls: bool,
}

impl Extensions {
    /// Reads the keywords from the lines after the first of a 250 EHLO reply.
    pub fn from_ehlo(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => {
                    ext.size = true;
                    // "SIZE 0" (or no number) means no fixed limit (RFC 1870 4).
                    ext.size_limit = words
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .filter(|n| *n > 0);
                }
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                _ => {}
            }
        }
        ext
    }
}

/// Why bytes from the server are not a valid reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReplyError {
    /// A line does not start with a three-digit reply code followed by space, `-` or the end.
    #[error("reply line is not \"<3-digit code> text\": {0:?}")]
    BadLine(String),
    /// The lines of a multi-line reply carry different codes (RFC 5321 4.2.1 requires one).
    #[error("multi-line reply mixes codes {first} and {other}")]
    MixedCodes {
        /// Code of the first line.
        first: u16,
        /// The differing code.
        other: u16,
    },
    /// The reply is longer than [`MAX_REPLY_BYTES`].
    #[error("reply longer than {MAX_REPLY_BYTES} bytes")]
    TooLong,
}

/// Parses one complete reply from the front of `buf` (RFC 5321 4.2): lines of
/// `<code>-text` ending with `<code> text`. Returns the reply and how many bytes it used, or
/// `None` if `buf` does not hold a complete reply yet. Lines may end in CRLF or bare LF. An
/// RFC 3463 enhanced code at the start of the first line is taken out of every line that
/// repeats it.
pub(crate) fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code: Option<u16> = None;
    let mut enhanced: Option<(EnhancedCode, String)> = None;
    let mut lines = Vec::new();
    loop {
        let Some(newline) = buf
            .get(pos..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        else {
            return if buf.len() > MAX_REPLY_BYTES {
                Err(ReplyError::TooLong)
            } else {
                Ok(None)
            };
        };
        let end = pos + newline + 1;
        if end > MAX_REPLY_BYTES {
            return Err(ReplyError::TooLong);
        }
        let raw = &buf[pos..pos + newline];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos = end;

        let line_code = match raw.get(..3) {
            Some(digits) if digits.iter().all(u8::is_ascii_digit) => digits
                .iter()
                .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0')),
            _ => return Err(ReplyError::BadLine(lossy_prefix(raw))),
        };
        if !(200..600).contains(&line_code) {
            return Err(ReplyError::BadLine(lossy_prefix(raw)));
        }
        let last = match raw.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(ReplyError::BadLine(lossy_prefix(raw))),
        };
        match code {
            None => code = Some(line_code),
            Some(first) if first != line_code => {
                return Err(ReplyError::MixedCodes {
                    first,
                    other: line_code,
                })
            }
            Some(_) => {}
        }
        let text = String::from_utf8_lossy(raw.get(4..).unwrap_or_default()).into_owned();
        let text = if lines.is_empty() {
            match parse_enhanced(&text, line_code) {
                Some((status, written, rest)) => {
                    let rest = rest.to_owned();
                    enhanced = Some((status, written.to_owned()));
                    rest
                }
                None => text,
            }
        } else {
            match &enhanced {
                // Servers repeat the enhanced code on every line; keep it out of the text.
                Some((_, prefix)) => match text.strip_prefix(prefix.as_str()) {
                    Some(rest) if rest.is_empty() || rest.starts_with(' ') => {
                        rest.trim_start_matches(' ').to_owned()
                    }
                    _ => text,
                },
                None => text,
            }
        };
        lines.push(text);
        if last {
            let reply = Reply {
                code: line_code,
                enhanced: enhanced.map(|(status, _)| status),
                lines,
            };
            return Ok(Some((reply, pos)));
        }
    }
}

/// An RFC 3463 status code at the start of `text` ("5.1.1 rest"), if its class matches the
/// reply code's first digit. Returns the code, the code as written and the text after it.
fn parse_enhanced(text: &str, code: u16) -> Option<(EnhancedCode, &str, &str)> {
    let (candidate, rest) = match text.find(' ') {
        Some(space) => (&text[..space], text[space + 1..].trim_start_matches(' ')),
        None => (text, ""),
    };
    let mut parts = candidate.split('.');
    let class = parse_status_number(parts.next()?)?;
    let subject = parse_status_number(parts.next()?)?;
    let detail = parse_status_number(parts.next()?)?;
    if parts.next().is_some() || class != code / 100 {
        return None;
    }
    let class = u8::try_from(class).ok()?;
    Some((EnhancedCode(class, subject, detail), candidate, rest))
}

/// 1 to 3 digits (RFC 3463 2: subject and detail are at most three digits).
fn parse_status_number(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The start of a bad line, for error messages (bounded: the line came from outside).
fn lossy_prefix(raw: &[u8]) -> String {
    String::from_utf8_lossy(&raw[..raw.len().min(80)]).into_owned()
}

/// Encodes a message for the DATA section (RFC 5321 4.5.2): dot-stuffs lines starting with
/// `.`, turns every bare CR and bare LF into CRLF, and ends with CRLF `.` CRLF. Because no line
/// break reaches the wire except as CRLF and every line-initial dot is doubled, no sequence in
/// the body can end the data early at the receiver, however it treats bare line endings.
#[derive(Debug)]
pub(crate) struct DataEncoder {
    at_line_start: bool,
    pending_cr: bool,
}

impl DataEncoder {
    /// An encoder at the start of the message.
    pub fn new() -> DataEncoder {
        DataEncoder {
            at_line_start: true,
            pending_cr: false,
        }
    }

    /// Appends the encoding of the next piece of the message to `out`. Pieces may split the
    /// message anywhere, even between a CR and its LF.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        // Line breaks are rare next to text: find each with memchr and copy the text between
        // them in one piece. Room for a CRLF per 40 bytes covers ordinary mail without a regrow.
        out.reserve(input.len() + input.len() / 40 + 4);
        let mut rest = input;
        if self.pending_cr {
            self.pending_cr = false;
            self.line_break(out);
            if let Some(after_lf) = rest.strip_prefix(b"\n") {
                rest = after_lf;
            }
        }
        while let Some(&first) = rest.first() {
            if self.at_line_start && first == b'.' {
                out.push(b'.');
            }
            let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
            if end > 0 {
                out.extend_from_slice(&rest[..end]);
                self.at_line_start = false;
            }
            match rest.get(end) {
                None => return,
                Some(b'\n') => rest = &rest[end + 1..],
                // CR: with its LF one line break; alone (bare CR) a line break of its own.
                Some(_) => match rest.get(end + 1) {
                    Some(b'\n') => rest = &rest[end + 2..],
                    Some(_) => rest = &rest[end + 1..],
                    None => {
                        // The LF, if any, is in the next piece.
                        self.pending_cr = true;
                        return;
                    }
                },
            }
            self.line_break(out);
        }
    }

    fn line_break(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.at_line_start = true;
    }

    /// Appends the end of the data section: a CRLF if the message did not end with one, then
    /// `.` CRLF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            self.pending_cr = false;
            self.line_break(out);
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;

    // ---- reply parser ----

    fn parse_all(input: &[u8]) -> Reply {
        let (reply, used) = parse_reply(input).unwrap().unwrap();
        assert_eq!(used, input.len());
        reply
    }

    #[test]
    fn single_line_reply_with_enhanced_code() {
        let reply = parse_all(b"550 5.1.1 User unknown\r\n");
        assert_eq!(reply.code, 550);
        assert_eq!(reply.enhanced, Some(EnhancedCode(5, 1, 1)));
        assert_eq!(reply.lines, vec!["User unknown"]);
    }

    #[test]
    fn multi_line_reply_strips_repeated_enhanced_code() {
        let reply = parse_all(b"452-4.2.2 Mailbox full\r\n452-4.2.2 try later\r\n452 4.2.2\r\n");
        assert_eq!(reply.code, 452);
        assert_eq!(reply.enhanced, Some(EnhancedCode(4, 2, 2)));
        assert_eq!(reply.lines, vec!["Mailbox full", "try later", ""]);
    }

    #[test]
    fn reply_without_enhanced_code_keeps_its_text() {
        let reply = parse_all(b"250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
        assert_eq!(reply.enhanced, None);
        assert_eq!(reply.lines, vec!["mx.example", "PIPELINING", "8BITMIME"]);
        // A number that is not an enhanced code of the reply's class stays text.
        let reply = parse_all(b"250 5.1.1 looks like a code but the class differs\r\n");
        assert_eq!(reply.enhanced, None);
        assert_eq!(
            reply.lines[0],
            "5.1.1 looks like a code but the class differs"
        );
    }

    #[test]
    fn bare_code_and_bare_lf_are_accepted() {
        let reply = parse_all(b"354\n");
        assert_eq!(reply.code, 354);
        assert_eq!(reply.lines, vec![""]);
    }

    #[test]
    fn incomplete_reply_asks_for_more_bytes() {
        assert_eq!(parse_reply(b"").unwrap(), None);
        assert_eq!(parse_reply(b"250 o").unwrap(), None);
        assert_eq!(parse_reply(b"250-first\r\n250 sec").unwrap(), None);
    }

    #[test]
    fn pipelined_replies_are_taken_one_at_a_time() {
        let input = b"250 2.1.0 Ok\r\n550 5.1.1 No\r\n354 go\r\n";
        let (first, used) = parse_reply(input).unwrap().unwrap();
        assert_eq!(first.code, 250);
        let (second, used2) = parse_reply(&input[used..]).unwrap().unwrap();
        assert_eq!(second.code, 550);
        let (third, _) = parse_reply(&input[used + used2..]).unwrap().unwrap();
        assert_eq!(third.code, 354);
    }

    #[test]
    fn non_digit_codes_are_protocol_errors() {
        assert!(matches!(
            parse_reply(b"2x0 hello\r\n"),
            Err(ReplyError::BadLine(_))
        ));
        assert!(matches!(
            parse_reply(b"HTTP/1.1 400 Bad Request\r\n"),
            Err(ReplyError::BadLine(_))
        ));
        assert!(matches!(
            parse_reply(b"25\r\n"),
            Err(ReplyError::BadLine(_))
        ));
        assert!(matches!(
            parse_reply(b"250_ok\r\n"),
            Err(ReplyError::BadLine(_))
        ));
        assert!(matches!(
            parse_reply(b"150 not smtp\r\n"),
            Err(ReplyError::BadLine(_))
        ));
        assert!(matches!(parse_reply(b"\r\n"), Err(ReplyError::BadLine(_))));
    }

    #[test]
    fn mixed_codes_in_one_reply_are_protocol_errors() {
        assert_eq!(
            parse_reply(b"250-ok\r\n550 no\r\n"),
            Err(ReplyError::MixedCodes {
                first: 250,
                other: 550
            })
        );
    }

    #[test]
    fn overlong_reply_is_refused_even_without_a_line_end() {
        let endless = vec![b'a'; MAX_REPLY_BYTES + 1];
        let mut line = b"250 ".to_vec();
        line.extend_from_slice(&endless);
        assert_eq!(parse_reply(&line), Err(ReplyError::TooLong));

        let mut many = Vec::new();
        while many.len() <= MAX_REPLY_BYTES {
            many.extend_from_slice(b"250-line line line line line line line\r\n");
        }
        many.extend_from_slice(b"250 end\r\n");
        assert_eq!(parse_reply(&many), Err(ReplyError::TooLong));
    }

    #[test]
    fn non_utf8_text_is_kept_lossily() {
        let reply = parse_all(b"550 5.7.1 bad \xff byte\r\n");
        assert_eq!(reply.lines, vec!["bad \u{fffd} byte"]);
    }

    // ---- DATA encoding ----

    fn encode(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = DataEncoder::new();
        encoder.encode(body, &mut out);
        encoder.finish(&mut out);
        out
    }

    #[test]
    fn leading_dots_are_doubled() {
        assert_eq!(
            encode(b".hidden\r\n..two\r\nmid.dle\r\n.\r\n"),
            b"..hidden\r\n...two\r\nmid.dle\r\n..\r\n.\r\n"
        );
    }

    #[test]
    fn bare_lf_and_bare_cr_become_crlf() {
        assert_eq!(
            encode(b"a\n.\nb\r.\rc\r\r\nd"),
            b"a\r\n..\r\nb\r\n..\r\nc\r\n\r\nd\r\n.\r\n"
        );
    }

    #[test]
    fn final_line_break_is_added_when_missing() {
        assert_eq!(encode(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(encode(b"ends in cr\r"), b"ends in cr\r\n.\r\n");
        assert_eq!(encode(b""), b".\r\n");
    }

    #[test]
    fn chunk_boundaries_do_not_change_the_encoding() {
        let body = b"x\r\n.y\r\n\r\n.\r\nz\n.\r";
        let whole = encode(body);
        for split in 0..body.len() {
            let mut out = Vec::new();
            let mut encoder = DataEncoder::new();
            encoder.encode(&body[..split], &mut out);
            encoder.encode(&body[split..], &mut out);
            encoder.finish(&mut out);
            assert_eq!(out, whole, "split at {split}");
        }
    }

    /// The rules of [`DataEncoder`] applied one byte at a time: what the run-copying encoder
    /// must produce.
    fn encode_bytewise(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut line_start = true;
        let mut bytes = body.iter().peekable();
        while let Some(&byte) = bytes.next() {
            match byte {
                b'\r' | b'\n' => {
                    if byte == b'\r' && bytes.peek() == Some(&&b'\n') {
                        bytes.next();
                    }
                    out.extend_from_slice(b"\r\n");
                    line_start = true;
                }
                _ => {
                    if line_start && byte == b'.' {
                        out.push(b'.');
                    }
                    out.push(byte);
                    line_start = false;
                }
            }
        }
        if !line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn encoding_matches_the_bytewise_rules_for_any_text_and_split() {
        // Bodies drawn from the bytes that matter, plus text, from a fixed-seed generator.
        let alphabet = b"..\r\n\nab";
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for round in 0..2000 {
            let len = round % 24;
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    alphabet[(seed >> 33) as usize % alphabet.len()]
                })
                .collect();
            let want = encode_bytewise(&body);
            assert_eq!(encode(&body), want, "{body:?}");
            for split in 0..=body.len() {
                let mut out = Vec::new();
                let mut encoder = DataEncoder::new();
                encoder.encode(&body[..split], &mut out);
                encoder.encode(&body[split..], &mut out);
                encoder.finish(&mut out);
                assert_eq!(out, want, "{body:?} split at {split}");
            }
        }
    }

    #[test]
    fn encoded_body_never_contains_an_early_end_of_data() {
        let nasty: &[&[u8]] = &[
            b"a\n.\nb",
            b"a\r\n.\nb",
            b"a\n.\r\nb",
            b"a\r.\rb",
            b"a\r\n.\r\nb",
            b".\r\nb",
        ];
        for body in nasty {
            let out = encode(body);
            let end = out.len() - 3;
            assert!(
                !out[..end].windows(5).any(|w| w == b"\r\n.\r\n"),
                "{body:?} -> {out:?}"
            );
            assert!(!out.starts_with(b".\r\n"), "{body:?}");
            assert!(!out.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        }
    }

    // ---- EHLO extensions ----

    #[test]
    fn ehlo_keywords_are_recognised_case_insensitively() {
        let reply = parse_all(
            b"250-mx.test greets you\r\n250-pipelining\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n",
        );
        let ext = Extensions::from_ehlo(&reply);
        assert_eq!(
            ext,
            Extensions {
                pipelining: true,
                size_limit: Some(1000),
                size: true,
                eight_bit_mime: true,
                smtputf8: true,
                starttls: true,
            }
        );
        let reply = parse_all(b"250-mx.test\r\n250 SIZE\r\n");
        let ext = Extensions::from_ehlo(&reply);
        assert!(ext.size);
        assert_eq!(ext.size_limit, None);
    }

    // ---- sessions against a scripted server ----

    /// How the fake server answers. Each reply is raw wire text.
    #[derive(Clone)]
    struct Script {
        greeting: &'static str,
        ehlo: &'static str,
        mail: &'static str,
        rcpt: fn(&str) -> &'static str,
        data: &'static str,
        end_of_data: &'static str,
        /// Accept the connection and never say anything.
        silent: bool,
    }

    const ESMTP: &str = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n";
    const ESMTP_NO_PIPELINING: &str = "250-mx.test\r\n250-SIZE 10000\r\n250 8BITMIME\r\n";

    impl Default for Script {
        fn default() -> Script {
            Script {
                greeting: "220 mx.test ESMTP ready\r\n",
                ehlo: ESMTP,
                mail: "250 2.1.0 Ok\r\n",
                rcpt: |_| "250 2.1.5 Ok\r\n",
                data: "354 End data with <CR><LF>.<CR><LF>\r\n",
                end_of_data: "250 2.0.0 Ok: queued as ABC\r\n",
                silent: false,
            }
        }
    }

    /// What the fake server saw.
    #[derive(Debug, Default)]
    struct Seen {
        commands: Vec<String>,
        /// Each data section as it came over the wire, up to and including `.` CRLF.
        data: Vec<Vec<u8>>,
        /// A command arrived while the server still owed a reply to an earlier one.
        pipelined: bool,
    }

    async fn serve(script: Script) -> (SocketAddr, JoinHandle<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut seen = Seen::default();
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            if script.silent {
                let mut sink = Vec::new();
                let _ = reader.read_to_end(&mut sink).await;
                return seen;
            }
            write.write_all(script.greeting.as_bytes()).await.unwrap();
            if !script.greeting.starts_with("220") {
                return seen;
            }
            let (mut mail_ok, mut accepted) = (false, 0);
            loop {
                let mut line = Vec::new();
                if reader.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                    return seen;
                }
                if !reader.buffer().is_empty() {
                    seen.pipelined = true;
                }
                let command = String::from_utf8_lossy(&line).trim_end().to_owned();
                seen.commands.push(command.clone());
                let verb = command
                    .split([' ', ':'])
                    .next()
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                let reply: String = match verb.as_str() {
                    "EHLO" => script.ehlo.into(),
                    "HELO" => "250 mx.test\r\n".into(),
                    "MAIL" => {
                        mail_ok = script.mail.starts_with('2');
                        script.mail.into()
                    }
                    "RCPT" if !mail_ok => "503 5.5.1 MAIL first\r\n".into(),
                    "RCPT" => {
                        let addr = command
                            .split('<')
                            .nth(1)
                            .and_then(|rest| rest.split('>').next())
                            .unwrap_or_default();
                        let reply = (script.rcpt)(addr);
                        if reply.starts_with('2') {
                            accepted += 1;
                        }
                        reply.into()
                    }
                    "DATA" if accepted == 0 => "554 5.5.1 No valid recipients\r\n".into(),
                    "DATA" => {
                        write.write_all(script.data.as_bytes()).await.unwrap();
                        if !script.data.starts_with("354") {
                            continue;
                        }
                        let mut data = Vec::new();
                        loop {
                            let mut line = Vec::new();
                            if reader.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                                seen.data.push(data);
                                return seen;
                            }
                            data.extend_from_slice(&line);
                            if line == b".\r\n" {
                                break;
                            }
                        }
                        seen.data.push(data);
                        mail_ok = false;
                        accepted = 0;
                        script.end_of_data.into()
                    }
                    "RSET" => {
                        mail_ok = false;
                        accepted = 0;
                        "250 2.0.0 Ok\r\n".into()
                    }
                    "QUIT" => {
                        let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
                        return seen;
                    }
                    _ => "500 5.5.2 What?\r\n".into(),
                };
                if write.write_all(reply.as_bytes()).await.is_err() {
                    return seen;
                }
            }
        });
        (addr, task)
    }

    fn settings() -> ClientSettings {
        ClientSettings {
            helo_name: "relay.test".into(),
            connect_timeout: Duration::from_secs(2),
            greeting_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            data_timeout: Duration::from_secs(2),
        }
    }

    fn mailbox(addr: &str) -> Mailbox {
        Mailbox::parse(addr).unwrap()
    }

    fn sender() -> ReversePath {
        ReversePath::Mailbox(mailbox("sender@origin.test"))
    }

    fn delivered(result: &RcptResult) -> bool {
        matches!(result, RcptResult::Delivered(_))
    }

    fn failed_code(result: &RcptResult) -> Option<u16> {
        match result {
            RcptResult::Failed(reply) => Some(reply.code),
            RcptResult::Delivered(_) => None,
        }
    }

    #[tokio::test]
    async fn pipelining_server_gets_envelope_in_one_batch() {
        let (addr, server) = serve(Script::default()).await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        assert_eq!(conn.remote_banner_host(), "mx.test");
        assert_eq!(conn.peer(), addr);
        let rcpts = [mailbox("a@dest.test"), mailbox("b@dest.test")];
        let results = conn
            .send(
                &sender(),
                &rcpts,
                b"Subject: hi\r\n\r\nhello\r\n",
                false,
                false,
            )
            .await
            .unwrap();
        assert!(results.iter().all(delivered), "{results:?}");
        assert_eq!(conn.transactions(), 1);
        assert!(conn.reusable());
        conn.quit().await;

        let seen = server.await.unwrap();
        assert!(seen.pipelined, "MAIL, RCPT and DATA should arrive together");
        assert_eq!(
            seen.commands,
            vec![
                "EHLO relay.test",
                "MAIL FROM:<sender@origin.test> SIZE=22",
                "RCPT TO:<a@dest.test>",
                "RCPT TO:<b@dest.test>",
                "DATA",
                "QUIT",
            ]
        );
        assert_eq!(
            seen.data,
            vec![b"Subject: hi\r\n\r\nhello\r\n.\r\n".to_vec()]
        );
    }

    #[tokio::test]
    async fn server_without_pipelining_gets_one_command_at_a_time() {
        let (addr, server) = serve(Script {
            ehlo: ESMTP_NO_PIPELINING,
            ..Script::default()
        })
        .await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        let rcpts = [mailbox("a@dest.test"), mailbox("b@dest.test")];
        let results = conn
            .send(&sender(), &rcpts, b"x\r\n", false, false)
            .await
            .unwrap();
        assert!(results.iter().all(delivered));
        conn.quit().await;
        let seen = server.await.unwrap();
        assert!(!seen.pipelined, "{:?}", seen.commands);
        assert_eq!(seen.commands.len(), 6);
    }

    #[tokio::test]
    async fn temporary_rcpt_failure_fails_only_that_recipient() {
        let (addr, server) = serve(Script {
            rcpt: |addr| {
                if addr.starts_with("full") {
                    "450 4.2.2 Mailbox full\r\n"
                } else {
                    "250 2.1.5 Ok\r\n"
                }
            },
            ..Script::default()
        })
        .await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        let rcpts = [mailbox("full@dest.test"), mailbox("ok@dest.test")];
        let results = conn
            .send(&sender(), &rcpts, b"x\r\n", false, false)
            .await
            .unwrap();
        match &results[0] {
            RcptResult::Failed(reply) => {
                assert_eq!(reply.code, 450);
                assert_eq!(reply.enhanced, Some(EnhancedCode(4, 2, 2)));
                assert_eq!(reply.lines, vec!["Mailbox full"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(delivered(&results[1]));
        assert!(conn.reusable());
        conn.quit().await;
        let seen = server.await.unwrap();
        assert_eq!(seen.data.len(), 1);
        assert!(seen.commands.contains(&"RSET".to_owned()));
    }

    #[tokio::test]
    async fn all_recipients_refused_with_pipelining_skips_data_and_resets() {
        let (addr, server) = serve(Script {
            rcpt: |_| "550 5.1.1 No such user\r\n",
            ..Script::default()
        })
        .await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        let rcpts = [mailbox("x@dest.test"), mailbox("y@dest.test")];
        let results = conn
            .send(&sender(), &rcpts, b"x\r\n", false, false)
            .await
            .unwrap();
        assert_eq!(
            results.iter().map(failed_code).collect::<Vec<_>>(),
            vec![Some(550), Some(550)]
        );
        assert!(conn.reusable());
        // The connection carries the next transaction fine.
        let results = conn
            .send(&sender(), &rcpts, b"x\r\n", false, false)
            .await
            .unwrap();
        assert_eq!(results.len(), 2);
        conn.quit().await;
        let seen = server.await.unwrap();
        assert!(seen.data.is_empty());
        assert_eq!(
            seen.commands.iter().filter(|c| *c == "RSET").count(),
            2,
            "{:?}",
            seen.commands
        );
    }

    #[tokio::test]
    async fn all_recipients_refused_without_pipelining_sends_no_data() {
        let (addr, server) = serve(Script {
            ehlo: ESMTP_NO_PIPELINING,
            rcpt: |_| "550 5.1.1 No such user\r\n",
            ..Script::default()
        })
        .await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        let results = conn
            .send(&sender(), &[mailbox("x@dest.test")], b"x\r\n", false, false)
            .await
            .unwrap();
        assert_eq!(failed_code(&results[0]), Some(550));
        conn.quit().await;
        let seen = server.await.unwrap();
        assert!(!seen.commands.contains(&"DATA".to_owned()));
    }

    #[tokio::test]
    async fn refused_data_fails_the_accepted_recipients() {
        let (addr, server) = serve(Script {
            end_of_data: "554 5.6.0 Message rejected as spam\r\n",
            rcpt: |addr| {
                if addr.starts_with("bad") {
                    "550 5.1.1 No such user\r\n"
                } else {
                    "250 2.1.5 Ok\r\n"
                }
            },
            ..Script::default()
        })
        .await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        let rcpts = [mailbox("ok@dest.test"), mailbox("bad@dest.test")];
        let results = conn
            .send(&sender(), &rcpts, b"x\r\n", false, false)
            .await
            .unwrap();
        match &results[0] {
            RcptResult::Failed(reply) => {
                assert_eq!(reply.code, 554);
                assert_eq!(reply.enhanced, Some(EnhancedCode(5, 6, 0)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(failed_code(&results[1]), Some(550));
        conn.quit().await;
        server.await.unwrap();
    }

    #[tokio::test]
    async fn permanent_mail_from_refusal_is_a_permanent_session_error() {
        let (addr, server) = serve(Script {
            mail: "550 5.7.1 Sender blocked\r\n",
            ..Script::default()
        })
        .await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        let err = conn
            .send(&sender(), &[mailbox("a@dest.test")], b"x\r\n", false, false)
            .await
            .unwrap_err();
        match &err {
            SessionError::Reply { stage, reply } => {
                assert_eq!(*stage, "MAIL FROM");
                assert_eq!(reply.code, 550);
            }
            other => panic!("{other:?}"),
        }
        assert!(err.is_permanent());
        assert_eq!(err.to_reply().enhanced, Some(EnhancedCode(5, 7, 1)));
        conn.quit().await;
        let seen = server.await.unwrap();
        assert!(seen.data.is_empty());
    }

    #[tokio::test]
    async fn greeting_421_is_a_temporary_session_error() {
        let (addr, _server) = serve(Script {
            greeting: "421 4.3.2 mx.test busy, try later\r\n",
            ..Script::default()
        })
        .await;
        let err = Connection::open(addr, None, &settings()).await.unwrap_err();
        assert!(
            matches!(&err, SessionError::Reply { stage: "greeting", reply } if reply.code == 421),
            "{err:?}"
        );
        assert!(!err.is_permanent());
    }

    #[tokio::test]
    async fn rcpt_421_ends_the_session_with_an_error() {
        let (addr, _server) = serve(Script {
            rcpt: |_| "421 4.3.2 Shutting down\r\n",
            ..Script::default()
        })
        .await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        let err = conn
            .send(&sender(), &[mailbox("a@dest.test")], b"x\r\n", false, false)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SessionError::Reply { stage: "RCPT TO", reply } if reply.code == 421),
            "{err:?}"
        );
        assert!(!err.is_permanent());
        assert!(!conn.reusable());
    }

    #[tokio::test]
    async fn ehlo_refusal_falls_back_to_helo() {
        let (addr, server) = serve(Script {
            ehlo: "502 5.5.1 Command not implemented\r\n",
            ..Script::default()
        })
        .await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        let results = conn
            .send(&sender(), &[mailbox("a@dest.test")], b"x\r\n", true, false)
            .await
            .unwrap();
        assert!(delivered(&results[0]));
        conn.quit().await;
        let seen = server.await.unwrap();
        assert_eq!(seen.commands[0], "EHLO relay.test");
        assert_eq!(seen.commands[1], "HELO relay.test");
        // No extensions after HELO: no SIZE, no BODY, one command at a time.
        assert_eq!(seen.commands[2], "MAIL FROM:<sender@origin.test>");
        assert!(!seen.pipelined);
    }

    #[tokio::test]
    async fn lines_starting_with_a_dot_are_stuffed_on_the_wire() {
        let (addr, server) = serve(Script::default()).await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        conn.send(
            &sender(),
            &[mailbox("a@dest.test")],
            b"Subject: dots\r\n\r\n.\r\n.leading\r\n..double\r\n",
            false,
            false,
        )
        .await
        .unwrap();
        conn.quit().await;
        let seen = server.await.unwrap();
        assert_eq!(
            seen.data[0],
            b"Subject: dots\r\n\r\n..\r\n..leading\r\n...double\r\n.\r\n".to_vec()
        );
    }

    #[tokio::test]
    async fn bare_line_endings_are_sent_as_crlf_and_cannot_end_data_early() {
        let (addr, server) = serve(Script::default()).await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        let results = conn
            .send(
                &sender(),
                &[mailbox("a@dest.test")],
                b"Subject: lf\n\nline\n.\nMAIL FROM:<evil@x>\nend",
                false,
                false,
            )
            .await
            .unwrap();
        assert!(delivered(&results[0]));
        conn.quit().await;
        let seen = server.await.unwrap();
        assert_eq!(
            seen.data,
            vec![b"Subject: lf\r\n\r\nline\r\n..\r\nMAIL FROM:<evil@x>\r\nend\r\n.\r\n".to_vec()]
        );
        assert!(!seen.commands.iter().any(|c| c.contains("evil")));
    }

    #[tokio::test]
    async fn eight_bit_and_utf8_parameters_are_sent_when_offered() {
        let (addr, server) = serve(Script::default()).await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        let body = "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n".as_bytes();
        conn.send(
            &sender(),
            &[mailbox("j\u{f6}rg@dest.test")],
            body,
            true,
            true,
        )
        .await
        .unwrap();
        conn.quit().await;
        let seen = server.await.unwrap();
        assert_eq!(
            seen.commands[1],
            format!(
                "MAIL FROM:<sender@origin.test> SIZE={} BODY=8BITMIME SMTPUTF8",
                body.len()
            )
        );
    }

    #[tokio::test]
    async fn smtputf8_needed_but_not_offered_fails_everyone_with_5_6_7() {
        let (addr, server) = serve(Script {
            ehlo: ESMTP_NO_PIPELINING,
            ..Script::default()
        })
        .await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        let rcpts = [mailbox("j\u{f6}rg@dest.test"), mailbox("b@dest.test")];
        let results = conn
            .send(&sender(), &rcpts, b"x\r\n", false, true)
            .await
            .unwrap();
        for result in &results {
            match result {
                RcptResult::Failed(reply) => {
                    assert!(reply.code >= 500);
                    assert_eq!(reply.enhanced, Some(EnhancedCode(5, 6, 7)));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(conn.reusable());
        conn.quit().await;
        let seen = server.await.unwrap();
        assert!(!seen.commands.iter().any(|c| c.starts_with("MAIL")));
    }

    #[tokio::test]
    async fn message_over_the_announced_size_is_not_sent() {
        let (addr, server) = serve(Script::default()).await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        let body = vec![b'a'; 10_001];
        let results = conn
            .send(&sender(), &[mailbox("a@dest.test")], &body, false, false)
            .await
            .unwrap();
        match &results[0] {
            RcptResult::Failed(reply) => {
                assert_eq!(
                    (reply.code, reply.enhanced),
                    (552, Some(EnhancedCode(5, 3, 4)))
                )
            }
            other => panic!("{other:?}"),
        }
        conn.quit().await;
        let seen = server.await.unwrap();
        assert!(!seen.commands.iter().any(|c| c.starts_with("MAIL")));
    }

    #[tokio::test]
    async fn null_sender_is_sent_as_empty_path() {
        let (addr, server) = serve(Script::default()).await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        conn.send(
            &ReversePath::Null,
            &[mailbox("a@dest.test")],
            b"x\r\n",
            false,
            false,
        )
        .await
        .unwrap();
        conn.quit().await;
        let seen = server.await.unwrap();
        assert_eq!(seen.commands[1], "MAIL FROM:<> SIZE=3");
    }

    #[tokio::test]
    async fn one_connection_carries_several_transactions() {
        let (addr, server) = serve(Script::default()).await;
        let mut conn = Connection::open(addr, None, &settings()).await.unwrap();
        for _ in 0..3 {
            assert!(conn.reusable());
            let results = conn
                .send(&sender(), &[mailbox("a@dest.test")], b"x\r\n", false, false)
                .await
                .unwrap();
            assert!(delivered(&results[0]));
        }
        assert_eq!(conn.transactions(), 3);
        conn.quit().await;
        assert_eq!(server.await.unwrap().data.len(), 3);
    }

    #[tokio::test]
    async fn source_address_is_bound() {
        let (addr, server) = serve(Script::default()).await;
        let conn = Connection::open(addr, Some("127.0.0.1".parse().unwrap()), &settings())
            .await
            .unwrap();
        conn.quit().await;
        server.await.unwrap();
        let err = Connection::open(addr, Some("::1".parse().unwrap()), &settings())
            .await
            .unwrap_err();
        assert!(matches!(err, SessionError::Connect(_)), "{err:?}");
    }

    #[tokio::test]
    async fn closed_port_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = Connection::open(addr, None, &settings()).await.unwrap_err();
        assert!(matches!(err, SessionError::Connect(_)), "{err:?}");
        assert!(!err.is_permanent());
        let reply = err.to_reply();
        assert_eq!(
            (reply.code, reply.enhanced),
            (451, Some(EnhancedCode(4, 4, 1)))
        );
    }

    #[tokio::test]
    async fn silent_server_times_out_at_the_greeting() {
        let (addr, _server) = serve(Script {
            silent: true,
            ..Script::default()
        })
        .await;
        let settings = ClientSettings {
            greeting_timeout: Duration::from_millis(200),
            ..settings()
        };
        let started = std::time::Instant::now();
        let err = Connection::open(addr, None, &settings).await.unwrap_err();
        assert!(matches!(err, SessionError::Timeout("greeting")), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let reply = err.to_reply();
        assert_eq!(
            (reply.code, reply.enhanced),
            (451, Some(EnhancedCode(4, 4, 2)))
        );
    }

    #[tokio::test]
    async fn server_that_stalls_after_data_times_out_and_is_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream
                .write_all(b"220 mx.test\r\n250 mx.test\r\n250 ok\r\n250 ok\r\n354 go\r\n")
                .await
                .unwrap();
            // Read everything, answer nothing more.
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        });
        let settings = ClientSettings {
            data_timeout: Duration::from_millis(200),
            ..settings()
        };
        // The server's replies all arrive before the commands: the client reads them in order.
        let mut conn = Connection::open(addr, None, &settings).await.unwrap();
        let err = conn
            .send(&sender(), &[mailbox("a@dest.test")], b"x\r\n", false, false)
            .await
            .unwrap_err();
        assert!(
            matches!(err, SessionError::Timeout("end of data")),
            "{err:?}"
        );
        assert!(!conn.reusable());
        conn.quit().await;
        server.await.unwrap();
    }

    // ---- STARTTLS ----

    /// What the STARTTLS server does when STARTTLS arrives.
    enum AfterStartTls {
        /// 220, the handshake, then EHLO and QUIT over TLS.
        Handshake(std::sync::Arc<rustls::ServerConfig>),
        /// 454; the session goes on in plain text.
        Refuse,
        /// 220 with another reply stuck behind it.
        Inject,
    }

    /// A server whose EHLO offers STARTTLS; returns the commands it saw, plain and over TLS.
    async fn serve_starttls(after: AfterStartTls) -> (SocketAddr, JoinHandle<Vec<String>>) {
        async fn line<S: tokio::io::AsyncBufRead + Unpin>(reader: &mut S) -> Option<String> {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(String::from_utf8_lossy(&line).trim_end().to_owned()),
            }
        }
        /// Answers EHLO with `ehlo` and QUIT with 221 until the client leaves.
        async fn converse<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
            stream: S,
            ehlo: &str,
            seen: &mut Vec<String>,
        ) {
            let mut stream = BufReader::new(stream);
            while let Some(command) = line(&mut stream).await {
                seen.push(command.clone());
                let reply = match command.as_str() {
                    "QUIT" => "221 2.0.0 bye\r\n",
                    c if c.starts_with("EHLO") => ehlo,
                    _ => "500 5.5.2 what?\r\n",
                };
                let _ = stream.get_mut().write_all(reply.as_bytes()).await;
                if command == "QUIT" {
                    let _ = stream.get_mut().shutdown().await;
                    return;
                }
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = BufReader::new(stream);
            stream
                .get_mut()
                .write_all(b"220 mx.test ESMTP\r\n")
                .await
                .unwrap();
            for reply in ["250-mx.test\r\n250-SIZE 100\r\n250 STARTTLS\r\n", ""] {
                let Some(command) = line(&mut stream).await else {
                    return seen;
                };
                seen.push(command);
                if !reply.is_empty() {
                    stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
                }
            }
            let plain_ehlo = "250-mx.test\r\n250 STARTTLS\r\n";
            match after {
                AfterStartTls::Handshake(config) => {
                    stream
                        .get_mut()
                        .write_all(b"220 2.0.0 go ahead\r\n")
                        .await
                        .unwrap();
                    assert!(
                        stream.buffer().is_empty(),
                        "the client sent nothing after STARTTLS"
                    );
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let Ok(tls) = acceptor.accept(stream.into_inner()).await else {
                        return seen;
                    };
                    let ehlo = "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 5000\r\n";
                    converse(tls, ehlo, &mut seen).await;
                }
                AfterStartTls::Refuse => {
                    stream
                        .get_mut()
                        .write_all(b"454 4.7.0 TLS not available\r\n")
                        .await
                        .unwrap();
                    converse(stream, plain_ehlo, &mut seen).await;
                }
                AfterStartTls::Inject => {
                    stream
                        .get_mut()
                        .write_all(b"220 go ahead\r\n250 injected\r\n")
                        .await
                        .unwrap();
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest).await;
                }
            }
            seen
        });
        (addr, task)
    }

    fn starttls_request(addr: SocketAddr) -> StartTls {
        tls::testing::settings("")
            .request(tls::TlsPolicy::Opportunistic, "mx.test", addr.ip())
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn starttls_upgrades_the_session_and_takes_the_extensions_of_the_second_ehlo() {
        let ca = tls::testing::TestCa::new("CA");
        let (addr, server) =
            serve_starttls(AfterStartTls::Handshake(ca.server_config(&["mx.test"]))).await;
        let conn = Connection::open(addr, None, &settings()).await.unwrap();
        assert!(conn.extensions().starttls);
        assert!(conn.tls().is_none());
        let conn = conn.starttls(&starttls_request(addr)).await.unwrap();
        let info = conn.tls().expect("TLS");
        assert_eq!(info.version, "TLSv1.3");
        assert!(!info.verified);
        // RFC 3207 4.2: what was offered before TLS is forgotten.
        assert!(!conn.extensions().starttls);
        assert!(conn.extensions().pipelining);
        assert_eq!(conn.extensions().size_limit, Some(5000));
        assert!(conn.reusable());
        conn.quit().await;
        assert_eq!(
            server.await.unwrap(),
            vec!["EHLO relay.test", "STARTTLS", "EHLO relay.test", "QUIT"]
        );
    }

    #[tokio::test]
    async fn refused_starttls_leaves_the_plain_session_usable() {
        let (addr, server) = serve_starttls(AfterStartTls::Refuse).await;
        let conn = Connection::open(addr, None, &settings()).await.unwrap();
        let err = conn.starttls(&starttls_request(addr)).await.unwrap_err();
        match &err.error {
            SessionError::Tls(TlsFailure::Refused { reply, .. }) => {
                assert_eq!(reply, "454 4.7.0 TLS not available")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.error.to_reply().enhanced, Some(EnhancedCode(4, 7, 5)));
        let plain = err.plain.expect("the plain session goes on");
        assert!(plain.reusable());
        assert!(plain.tls().is_none());
        plain.quit().await;
        assert_eq!(
            server.await.unwrap(),
            vec!["EHLO relay.test", "STARTTLS", "QUIT"]
        );
    }

    #[tokio::test]
    async fn bytes_after_the_starttls_reply_end_the_session() {
        let (addr, _server) = serve_starttls(AfterStartTls::Inject).await;
        let conn = Connection::open(addr, None, &settings()).await.unwrap();
        // Both lines may arrive in one read: the second must not be taken as sent over TLS.
        let err = conn.starttls(&starttls_request(addr)).await.unwrap_err();
        assert!(
            matches!(err.error, SessionError::Tls(TlsFailure::Injected { .. })),
            "{:?}",
            err.error
        );
        assert!(err.plain.is_none());
    }

    #[tokio::test]
    async fn garbage_from_the_server_is_a_protocol_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        });
        let err = Connection::open(addr, None, &settings()).await.unwrap_err();
        assert!(matches!(err, SessionError::Protocol(_)), "{err:?}");
        assert_eq!(err.to_reply().code, 451);
    }
}
