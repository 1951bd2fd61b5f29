//! loadgen: an SMTP load generator for any SMTP server.
//!
//! Runs `--sessions` concurrent SMTP connections that send generated messages
//! until `--messages` have been tried or `--duration` has passed, then reports
//! accepted/rejected/errors, throughput, and the latency from the end of DATA
//! (`<CRLF>.<CRLF>` written) to the server's reply.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use relay_bench::latency::Latencies;
use relay_bench::message::{rfc5322_date, MessageTemplate};
use relay_bench::reply::{self, Reply, ReplyError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The last bytes of a message, written separately so that latency is measured
/// from the end of the data and not from the start of a large transfer. Messages
/// up to this size go in one write.
const LAST_WRITE: usize = 16 * 1024;

/// An SMTP load generator: concurrent sessions sending generated messages, with
/// accept throughput and end-of-DATA latency percentiles.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The SMTP server, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    server: String,
    /// Concurrent SMTP connections.
    #[arg(long, value_name = "N", default_value_t = 1)]
    sessions: u32,
    /// Messages to try in total (stops at this or --duration, whichever comes first).
    #[arg(long, value_name = "N", required_unless_present = "duration")]
    messages: Option<u64>,
    /// Stop starting messages after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Message size in bytes (headers and body, before dot-stuffing; at least the headers).
    #[arg(long, value_name = "BYTES", default_value_t = 2048)]
    size: usize,
    /// Recipients per message.
    #[arg(long, value_name = "N", default_value_t = 1)]
    rcpts: u32,
    /// Envelope sender and From: address.
    #[arg(long, value_name = "ADDR", default_value = "loadgen@bench.test")]
    from: String,
    /// Recipients are user<i>@DOMAIN, i counting up across the run.
    #[arg(long, value_name = "DOMAIN", default_value = "bench.test")]
    to_domain: String,
    /// Send to these addresses instead of --to-domain (repeatable; used round-robin).
    #[arg(long, value_name = "ADDR", conflicts_with = "to_domain")]
    to: Vec<String>,
    /// Offered load: start at most this many messages per second in all (message i is not
    /// started before i/RATE seconds into the run), so that latency can be measured below
    /// saturation. Default: as fast as the server answers (a closed loop).
    #[arg(long, value_name = "MSGS_PER_S")]
    rate: Option<f64>,
    /// Messages per connection before QUIT and reconnect (default: unlimited).
    #[arg(long, value_name = "N")]
    per_connection: Option<u64>,
    /// Send MAIL, RCPT and DATA in one write when the server offers PIPELINING.
    #[arg(long, value_enum, default_value_t = Pipelining::Auto)]
    pipelining: Pipelining,
    /// Name given in EHLO.
    #[arg(long, value_name = "NAME", default_value = "loadgen.bench")]
    helo: String,
    /// Limit on every network wait (connect, each reply, each write), in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    timeout: f64,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Exit 0 even if some messages were rejected or failed.
    #[arg(long)]
    allow_failures: bool,
    /// TLS: none, starttls (after the first EHLO, then EHLO again) or implicit (from the first
    /// byte, port 465 style). The server's certificate is not verified.
    #[arg(long, value_enum, default_value_t = Tls::None)]
    tls: Tls,
    /// Log in with AUTH PLAIN on every connection, as USER:PASSWORD.
    #[arg(long, value_name = "USER:PASSWORD")]
    auth: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Tls {
    /// Plain SMTP.
    None,
    /// STARTTLS after EHLO.
    Starttls,
    /// TLS before the greeting.
    Implicit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Pipelining {
    /// Use it when the EHLO reply offers it.
    Auto,
    /// One command, one reply.
    Off,
}

/// What every session shares: the settings and the message counter.
struct Plan {
    server: SocketAddr,
    template: MessageTemplate,
    from: String,
    helo: String,
    to: Recipients,
    rcpts: u32,
    per_connection: Option<u64>,
    /// With `--rate`: when message 0 may start, and the gap between starts.
    pacing: Option<(tokio::time::Instant, Duration)>,
    pipelining: Pipelining,
    timeout: Duration,
    messages: Option<u64>,
    deadline: Option<Instant>,
    next: AtomicU64,
    tls: Tls,
    connector: Option<tokio_rustls::TlsConnector>,
    /// The AUTH PLAIN initial response, base64.
    auth: Option<String>,
}

enum Recipients {
    Domain(String),
    List(Vec<String>),
}

impl Plan {
    /// The sequence number of the next message to send, or `None` when the run is over.
    fn claim(&self) -> Option<u64> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        if self.messages.is_some_and(|m| seq >= m) {
            return None;
        }
        Some(seq)
    }

    fn recipient(&self, seq: u64, index: u32) -> String {
        let n = seq * u64::from(self.rcpts) + u64::from(index);
        match &self.to {
            Recipients::Domain(domain) => format!("user{n}@{domain}"),
            Recipients::List(list) => list[(n % list.len() as u64) as usize].clone(),
        }
    }
}

/// The step of the SMTP dialogue a reply or an error belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Connect,
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    EndOfData,
    Rset,
    Quit,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
            Stage::EndOfData => "end of data",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
        })
    }
}

/// A failure that ends the connection.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{stage}: no reply within {secs} s")]
    Timeout { stage: Stage, secs: f64 },
    #[error("{stage}: {source}")]
    Io { stage: Stage, source: io::Error },
    #[error("{stage}: connection closed by the server")]
    Closed { stage: Stage },
    #[error("{stage}: {source}")]
    Malformed { stage: Stage, source: ReplyError },
    #[error("{stage}: unexpected reply {reply}")]
    Unexpected { stage: Stage, reply: String },
}

impl SessionError {
    /// A short key for counting errors by kind (no addresses, no free text).
    fn kind(&self) -> String {
        match self {
            SessionError::Timeout { stage, .. } => format!("{stage}: timeout"),
            SessionError::Io { stage, source } => format!("{stage}: {}", source.kind()),
            SessionError::Closed { stage } => format!("{stage}: closed"),
            SessionError::Malformed { stage, .. } => format!("{stage}: malformed reply"),
            SessionError::Unexpected { stage, reply } => {
                format!("{stage}: unexpected {}", reply.get(..3).unwrap_or(reply))
            }
        }
    }
}

/// Why a message was not accepted.
enum Failure {
    /// The server said 4xx or 5xx.
    Rejected { stage: Stage, reply: Reply },
    /// The connection broke or the server made no sense.
    Error(SessionError),
}

impl From<SessionError> for Failure {
    fn from(err: SessionError) -> Self {
        Failure::Error(err)
    }
}

impl Failure {
    /// True when the connection cannot be used for another message.
    fn ends_connection(&self) -> bool {
        match self {
            Failure::Rejected { stage, reply } => {
                reply.code == 421 || matches!(stage, Stage::Greeting | Stage::Ehlo)
            }
            Failure::Error(_) => true,
        }
    }
}

/// What one session counted; merged at the end.
#[derive(Default)]
struct Stats {
    attempted: u64,
    accepted: u64,
    rejected_4xx: u64,
    rejected_5xx: u64,
    /// "stage code" -> count, e.g. "RCPT 550".
    rejections: BTreeMap<String, u64>,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    first_error: Option<String>,
    rcpts_accepted: u64,
    rcpts_rejected: u64,
    bytes_sent: u64,
    connections: u64,
    pipelined_connections: u64,
    latencies: Latencies,
}

impl Stats {
    fn failed(&mut self, failure: Failure) {
        match failure {
            Failure::Rejected { stage, reply } => {
                if reply.class() == 4 {
                    self.rejected_4xx += 1;
                } else {
                    self.rejected_5xx += 1;
                }
                *self
                    .rejections
                    .entry(format!("{stage} {}", reply.code))
                    .or_default() += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{stage}: {}", reply.summary()));
                }
            }
            Failure::Error(err) => {
                self.errors += 1;
                *self.error_kinds.entry(err.kind()).or_default() += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(err.to_string());
                }
            }
        }
    }

    fn merge(&mut self, other: Stats) {
        self.attempted += other.attempted;
        self.accepted += other.accepted;
        self.rejected_4xx += other.rejected_4xx;
        self.rejected_5xx += other.rejected_5xx;
        for (k, v) in other.rejections {
            *self.rejections.entry(k).or_default() += v;
        }
        self.errors += other.errors;
        for (k, v) in other.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.rcpts_accepted += other.rcpts_accepted;
        self.rcpts_rejected += other.rcpts_rejected;
        self.bytes_sent += other.bytes_sent;
        self.connections += other.connections;
        self.pipelined_connections += other.pipelined_connections;
        self.latencies.merge(other.latencies);
    }
}

/// The byte stream of a connection: TCP, or TLS over it.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// One SMTP connection after a successful EHLO (and STARTTLS and AUTH, when asked for).
struct Connection {
    stream: Box<dyn Transport>,
    /// Bytes read and not yet parsed as replies.
    buf: Vec<u8>,
    pipelining: bool,
    size_extension: bool,
    sent: u64,
    timeout: Duration,
}

impl Connection {
    async fn open(plan: &Plan) -> Result<Connection, Failure> {
        let stream = match tokio::time::timeout(plan.timeout, TcpStream::connect(plan.server)).await
        {
            Err(_) => Err(timeout_error(Stage::Connect, plan.timeout)),
            Ok(Err(source)) => Err(SessionError::Io {
                stage: Stage::Connect,
                source,
            }),
            Ok(Ok(stream)) => Ok(stream),
        }?;
        // Commands and the end of data are small writes the server waits for.
        let _ = stream.set_nodelay(true);
        let stream: Box<dyn Transport> = if plan.tls == Tls::Implicit {
            Box::new(handshake(plan, stream).await?)
        } else {
            Box::new(stream)
        };
        let mut conn = Connection {
            stream,
            buf: Vec::with_capacity(4096),
            pipelining: false,
            size_extension: false,
            sent: 0,
            timeout: plan.timeout,
        };
        expect(Stage::Greeting, conn.reply(Stage::Greeting).await?, 220)?;
        conn.hello(plan).await?;
        if plan.tls == Tls::Starttls {
            conn.write(Stage::StartTls, b"STARTTLS\r\n").await?;
            expect(Stage::StartTls, conn.reply(Stage::StartTls).await?, 220)?;
            let placeholder = Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink()));
            let plain = std::mem::replace(&mut conn.stream, placeholder);
            conn.stream = Box::new(handshake(plan, plain).await?);
            // RFC 3207: the session starts over after the handshake.
            conn.hello(plan).await?;
        }
        if let Some(response) = &plan.auth {
            conn.write(Stage::Auth, format!("AUTH PLAIN {response}\r\n").as_bytes())
                .await?;
            expect(Stage::Auth, conn.reply(Stage::Auth).await?, 235)?;
        }
        Ok(conn)
    }

    /// EHLO (HELO for a server without ESMTP), noting PIPELINING and SIZE.
    async fn hello(&mut self, plan: &Plan) -> Result<(), Failure> {
        let conn = self;
        conn.write(Stage::Ehlo, format!("EHLO {}\r\n", plan.helo).as_bytes())
            .await?;
        let ehlo = conn.reply(Stage::Ehlo).await?;
        if ehlo.code / 100 == 5 && ehlo.code != 554 {
            // An old server without ESMTP (RFC 5321 3.2): fall back to HELO.
            conn.write(Stage::Ehlo, format!("HELO {}\r\n", plan.helo).as_bytes())
                .await?;
            expect(Stage::Ehlo, conn.reply(Stage::Ehlo).await?, 250)?;
        } else {
            expect(Stage::Ehlo, ehlo.clone(), 250)?;
            conn.pipelining =
                plan.pipelining == Pipelining::Auto && ehlo.has_extension("PIPELINING");
            conn.size_extension = ehlo.has_extension("SIZE");
        }
        Ok(())
    }

    /// Sends one message; on success returns the end-of-data latency.
    async fn send(
        &mut self,
        plan: &Plan,
        rcpts: &[String],
        message: &[u8],
        stats: &mut Stats,
    ) -> Result<Duration, Failure> {
        let mut mail = format!("MAIL FROM:<{}>", plan.from);
        if self.size_extension {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        mail.push_str("\r\n");
        let rcpt_commands: Vec<String> =
            rcpts.iter().map(|r| format!("RCPT TO:<{r}>\r\n")).collect();
        let pipelining = self.pipelining;

        if pipelining {
            // RFC 2920: MAIL, the RCPTs and DATA in one write, then read every reply in order.
            let mut batch = mail;
            rcpt_commands.iter().for_each(|c| batch.push_str(c));
            batch.push_str("DATA\r\n");
            self.write(Stage::Mail, batch.as_bytes()).await?;
        } else {
            self.write(Stage::Mail, mail.as_bytes()).await?;
        }
        let mail_reply = self.reply_or_closing(Stage::Mail).await?;
        let mail_ok = mail_reply.is_positive();
        if !pipelining && !mail_ok {
            return Err(rejected(Stage::Mail, mail_reply)?);
        }
        let mut accepted = 0u64;
        let mut last_refusal = None;
        for command in &rcpt_commands {
            if !pipelining {
                self.write(Stage::Rcpt, command.as_bytes()).await?;
            }
            let reply = self.reply_or_closing(Stage::Rcpt).await?;
            if reply.is_positive() {
                accepted += 1;
            } else {
                last_refusal = Some(reply);
            }
        }
        stats.rcpts_accepted += accepted;
        stats.rcpts_rejected += rcpt_commands.len() as u64 - accepted;
        let refusal = if !mail_ok {
            Some((Stage::Mail, mail_reply))
        } else if accepted == 0 {
            last_refusal.map(|reply| (Stage::Rcpt, reply))
        } else {
            None
        };

        if !pipelining {
            if let Some((stage, reply)) = refusal {
                self.rset().await?;
                return Err(rejected(stage, reply)?);
            }
            self.write(Stage::Data, b"DATA\r\n").await?;
        }
        let data_reply = self.reply_or_closing(Stage::Data).await?;
        if data_reply.code != 354 {
            if mail_ok {
                self.rset().await?;
            }
            let (stage, reply) = refusal.unwrap_or((Stage::Data, data_reply));
            return Err(rejected(stage, reply)?);
        }
        if let Some((stage, reply)) = refusal {
            // A server that said 354 with no transaction: end the empty data, then report the refusal.
            self.write(Stage::EndOfData, b".\r\n").await?;
            self.reply_or_closing(Stage::EndOfData).await?;
            return Err(rejected(stage, reply)?);
        }

        // The clock starts before the write that carries <CRLF>.<CRLF>, not after it:
        // on loopback the server often runs and answers inside that write call.
        let (head, tail) = message.split_at(message.len().saturating_sub(LAST_WRITE));
        if !head.is_empty() {
            self.write(Stage::EndOfData, head).await?;
        }
        let sent_at = Instant::now();
        self.write(Stage::EndOfData, tail).await?;
        let end = self.reply(Stage::EndOfData).await?;
        let latency = sent_at.elapsed();
        stats.bytes_sent += message.len() as u64;
        if end.is_positive() {
            Ok(latency)
        } else {
            Err(rejected(Stage::EndOfData, end)?)
        }
    }

    /// The next reply; 421 (the server is closing the connection) is a rejection at once.
    async fn reply_or_closing(&mut self, stage: Stage) -> Result<Reply, Failure> {
        let reply = self.reply(stage).await?;
        if reply.code == 421 {
            return Err(Failure::Rejected { stage, reply });
        }
        Ok(reply)
    }

    /// Ends a refused transaction so the connection can carry the next message.
    async fn rset(&mut self) -> Result<(), SessionError> {
        self.write(Stage::Rset, b"RSET\r\n").await?;
        let reply = self.reply(Stage::Rset).await?;
        if reply.is_positive() {
            Ok(())
        } else {
            Err(SessionError::Unexpected {
                stage: Stage::Rset,
                reply: reply.summary(),
            })
        }
    }

    /// Says QUIT and waits briefly for 221; a failure here changes nothing.
    async fn quit(mut self) {
        self.timeout = self.timeout.min(Duration::from_secs(5));
        if self.write(Stage::Quit, b"QUIT\r\n").await.is_ok() {
            let _ = self.reply(Stage::Quit).await;
        }
    }

    async fn write(&mut self, stage: Stage, bytes: &[u8]) -> Result<(), SessionError> {
        match tokio::time::timeout(self.timeout, self.stream.write_all(bytes)).await {
            Err(_) => Err(timeout_error(stage, self.timeout)),
            Ok(Err(source)) => Err(SessionError::Io { stage, source }),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// The next reply, reading as needed, each read bounded by the timeout.
    async fn reply(&mut self, stage: Stage) -> Result<Reply, SessionError> {
        loop {
            match reply::parse(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(source) => return Err(SessionError::Malformed { stage, source }),
            }
            self.buf.reserve(4096);
            match tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(timeout_error(stage, self.timeout)),
                Ok(Err(source)) => return Err(SessionError::Io { stage, source }),
                Ok(Ok(0)) => return Err(SessionError::Closed { stage }),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// The client side of a TLS handshake (the certificate is not verified: a benchmark measures
/// the server, whatever certificate it has).
async fn handshake<S>(
    plan: &Plan,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(connector) = &plan.connector else {
        return Err(SessionError::Io {
            stage: Stage::StartTls,
            source: io::Error::other("TLS was not set up"),
        });
    };
    let name = rustls::pki_types::ServerName::IpAddress(plan.server.ip().into());
    match tokio::time::timeout(plan.timeout, connector.connect(name, stream)).await {
        Err(_) => Err(timeout_error(Stage::StartTls, plan.timeout)),
        Ok(Err(source)) => Err(SessionError::Io {
            stage: Stage::StartTls,
            source,
        }),
        Ok(Ok(stream)) => Ok(stream),
    }
}

/// Accepts any server certificate; the handshake signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client configuration, when `--tls` asks for TLS. No session resumption: every
/// connection costs the server a full handshake, as new clients do.
fn connector(tls: Tls) -> anyhow::Result<Option<tokio_rustls::TlsConnector>> {
    if tls == Tls::None {
        return Ok(None);
    }
    // ring, like the relay (see relay::tls::crypto_provider).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(config))))
}

fn timeout_error(stage: Stage, limit: Duration) -> SessionError {
    SessionError::Timeout {
        stage,
        secs: limit.as_secs_f64(),
    }
}

/// A 4xx/5xx reply is a rejection; anything else where a refusal was expected is a protocol error.
fn rejected(stage: Stage, reply: Reply) -> Result<Failure, SessionError> {
    if matches!(reply.class(), 4 | 5) {
        Ok(Failure::Rejected { stage, reply })
    } else {
        Err(SessionError::Unexpected {
            stage,
            reply: reply.summary(),
        })
    }
}

/// Checks that `reply` has code `want`; 4xx/5xx are rejections, anything else an error.
fn expect(stage: Stage, reply: Reply, want: u16) -> Result<(), Failure> {
    if reply.code == want {
        return Ok(());
    }
    Err(rejected(stage, reply).unwrap_or_else(Failure::Error))
}

/// The AUTH PLAIN initial response for `USER:PASSWORD`.
fn auth_plain(credentials: &str) -> anyhow::Result<String> {
    use base64::Engine as _;
    let (user, password) = credentials
        .split_once(':')
        .context("--auth wants USER:PASSWORD")?;
    Ok(base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}")))
}

/// One session: connect, send messages while the plan has some, reconnect as needed.
async fn session(plan: Arc<Plan>) -> Stats {
    let mut stats = Stats::default();
    let mut conn: Option<Connection> = None;
    let mut scratch = Vec::new();
    let mut message = Vec::new();
    while let Some(seq) = plan.claim() {
        if let Some((start, gap)) = plan.pacing {
            let offset = gap.mul_f64(seq as f64);
            tokio::time::sleep_until(start + offset).await;
        }
        stats.attempted += 1;
        let mut current = match conn.take() {
            Some(c) => c,
            None => match Connection::open(&plan).await {
                Ok(c) => {
                    stats.connections += 1;
                    stats.pipelined_connections += u64::from(c.pipelining);
                    c
                }
                Err(failure) => {
                    stats.failed(failure);
                    // The server is down or full: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let rcpts: Vec<String> = (0..plan.rcpts).map(|i| plan.recipient(seq, i)).collect();
        message.clear();
        plan.template
            .render(seq, &rcpts[0], &mut scratch, &mut message);
        current.sent += 1;
        match current.send(&plan, &rcpts, &message, &mut stats).await {
            Ok(latency) => {
                stats.accepted += 1;
                stats.latencies.record(latency);
            }
            Err(failure) => {
                let ends = failure.ends_connection();
                stats.failed(failure);
                if ends {
                    continue;
                }
            }
        }
        if plan.per_connection.is_some_and(|n| current.sent >= n) {
            current.quit().await;
        } else {
            conn = Some(current);
        }
    }
    if let Some(c) = conn {
        c.quit().await;
    }
    stats
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.sessions == 0 || args.rcpts == 0 || args.per_connection == Some(0) {
        anyhow::bail!("--sessions, --rcpts and --per-connection must be at least 1");
    }
    if args.duration.is_some_and(|d| !(d > 0.0 && d.is_finite())) {
        anyhow::bail!("--duration must be a positive number of seconds");
    }
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    let server = tokio::net::lookup_host(&args.server)
        .await
        .with_context(|| format!("--server {}: not a reachable HOST:PORT", args.server))?
        .next()
        .with_context(|| format!("--server {}: no address", args.server))?;

    let start_wall = SystemTime::now();
    let run_id = format!(
        "{:x}.{:x}",
        start_wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        std::process::id()
    );
    let started = Instant::now();
    let plan = Arc::new(Plan {
        server,
        template: MessageTemplate {
            size: args.size,
            from: args.from.clone(),
            run_id,
            date: rfc5322_date(
                start_wall
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            ),
        },
        from: args.from.clone(),
        helo: args.helo.clone(),
        to: if args.to.is_empty() {
            Recipients::Domain(args.to_domain.clone())
        } else {
            Recipients::List(args.to.clone())
        },
        rcpts: args.rcpts,
        per_connection: args.per_connection,
        pacing: match args.rate {
            Some(rate) if rate > 0.0 && rate.is_finite() => Some((
                tokio::time::Instant::now(),
                Duration::from_secs_f64(1.0 / rate),
            )),
            Some(_) => anyhow::bail!("--rate must be a positive number of messages per second"),
            None => None,
        },
        pipelining: args.pipelining,
        timeout: Duration::from_secs_f64(args.timeout),
        messages: args.messages,
        deadline: args.duration.map(|d| started + Duration::from_secs_f64(d)),
        next: AtomicU64::new(0),
        tls: args.tls,
        connector: connector(args.tls)?,
        auth: args.auth.as_deref().map(auth_plain).transpose()?,
    });

    let tasks: Vec<_> = (0..args.sessions)
        .map(|_| tokio::spawn(session(Arc::clone(&plan))))
        .collect();
    let mut stats = Stats::default();
    for task in tasks {
        match task.await {
            Ok(s) => stats.merge(s),
            Err(err) => anyhow::bail!("a session task failed: {err}"),
        }
    }
    let elapsed = started.elapsed();
    let end_wall = SystemTime::now();
    report(&args, &mut stats, elapsed, start_wall, end_wall);

    let failed = stats.rejected_4xx + stats.rejected_5xx + stats.errors;
    Ok(if failed > 0 && !args.allow_failures {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn report(args: &Args, stats: &mut Stats, elapsed: Duration, start: SystemTime, end: SystemTime) {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        stats.accepted as f64 / secs
    } else {
        0.0
    };
    let latency = stats.latencies.summary();
    let unix_us = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    };
    if args.json {
        let latency_ms = latency.map(|l| {
            serde_json::json!({
                "count": l.count, "p50": l.p50, "p90": l.p90, "p99": l.p99, "max": l.max, "mean": l.mean,
            })
        });
        let result = serde_json::json!({
            "server": args.server,
            "sessions": args.sessions,
            "size": args.size,
            "rcpts": args.rcpts,
            "attempted": stats.attempted,
            "accepted": stats.accepted,
            "rejected": stats.rejected_4xx + stats.rejected_5xx,
            "rejected_4xx": stats.rejected_4xx,
            "rejected_5xx": stats.rejected_5xx,
            "rejections": stats.rejections,
            "errors": stats.errors,
            "error_kinds": stats.error_kinds,
            "first_error": stats.first_error,
            "rcpts_accepted": stats.rcpts_accepted,
            "rcpts_rejected": stats.rcpts_rejected,
            "bytes_sent": stats.bytes_sent,
            "connections": stats.connections,
            "pipelined_connections": stats.pipelined_connections,
            "elapsed_s": secs,
            "accepted_per_s": rate,
            "latency_ms": latency_ms,
            "start_unix_us": unix_us(start),
            "end_unix_us": unix_us(end),
        });
        println!("{result}");
        return;
    }
    println!(
        "loadgen: {} with {} sessions, {}-byte messages, {} rcpt(s), {} of {} connections pipelined",
        args.server, args.sessions, args.size, args.rcpts, stats.pipelined_connections, stats.connections
    );
    println!("  attempted {:>9} in {secs:.3} s", stats.attempted);
    println!("  accepted  {:>9}  {rate:.1} msgs/s", stats.accepted);
    println!(
        "  rejected  {:>9}  (4xx {}, 5xx {}){}",
        stats.rejected_4xx + stats.rejected_5xx,
        stats.rejected_4xx,
        stats.rejected_5xx,
        breakdown(&stats.rejections)
    );
    println!(
        "  errors    {:>9}{}",
        stats.errors,
        breakdown(&stats.error_kinds)
    );
    if stats.rcpts_rejected > 0 {
        println!(
            "  recipients refused: {} of {}",
            stats.rcpts_rejected,
            stats.rcpts_rejected + stats.rcpts_accepted
        );
    }
    if let Some(l) = latency {
        println!(
            "  latency (end of DATA -> reply, ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.max
        );
    }
    if let Some(first) = &stats.first_error {
        println!("  first failure: {first}");
    }
}

fn breakdown(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("  [{}]", parts.join(", "))
}
