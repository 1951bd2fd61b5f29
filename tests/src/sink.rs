//! A recording SMTP server standing in for a destination MX: the referee, written independently of the relay.
//!
//! It is deliberately strict where the relay must be correct: end of data is
//! only `<CRLF>.<CRLF>`, dot-stuffing is undone, bare CR/LF in the data is
//! recorded, and commands after the end of data are read as commands (so a
//! relay that forwards an unstuffed `.` line would show up as a smuggled
//! transaction here).
//!
//! With [`SinkBuilder::starttls`] it offers STARTTLS (RFC 3207) and records, per
//! transaction, whether it came over TLS ([`Transaction::tls`]);
//! [`SinkBuilder::broken_starttls`] offers it and then fails every handshake.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::mime::ParsedMessage;
use crate::net::SharedPort;

/// Decides the RCPT reply: `(recipient, attempt number for this recipient starting at 1)`
/// -> `None` to accept, or `Some((code, text))`, e.g. `(451, "4.3.0 try later")`.
pub type RcptPolicy = Arc<dyn Fn(&str, u32) -> Option<(u16, String)> + Send + Sync>;

/// The name the sink gives in its greeting and EHLO reply.
pub const SINK_NAME: &str = "sink.test";

/// The largest message the sink takes (advertised with SIZE).
const MAX_SIZE: usize = 64 * 1024 * 1024;
const MAX_LINE: usize = 64 * 1024;

/// The TLS session a transaction came over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSession {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// The cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The name the client sent in SNI (none for an IP address).
    pub sni: Option<String>,
}

/// Whether and how the sink offers STARTTLS.
#[derive(Clone)]
enum StartTls {
    /// Not offered.
    Off,
    /// Offered, with this certificate and settings.
    On(Arc<ServerConfig>),
    /// Offered; the 220 is followed by bytes that are not TLS, and the connection closes.
    Broken,
}

/// One mail transaction that reached the end of DATA.
#[derive(Clone, Debug)]
pub struct Transaction {
    /// The client's address (the relay's source address).
    pub peer: SocketAddr,
    /// The sink address the client connected to.
    pub local: SocketAddr,
    /// The EHLO/HELO argument.
    pub helo: String,
    /// True after EHLO, false after HELO.
    pub esmtp: bool,
    /// The reverse path without angle brackets ("" for the null sender).
    pub mail_from: String,
    /// The MAIL FROM parameters as sent (e.g. "SIZE=123", "BODY=8BITMIME", "SMTPUTF8").
    pub mail_params: Vec<String>,
    /// Accepted recipients, without angle brackets, in order.
    pub rcpts: Vec<String>,
    /// Recipients the sink refused, with its reply code.
    pub refused_rcpts: Vec<(String, u16)>,
    /// The message, dot-unstuffed, with its CRLF line endings, without the final `.` line.
    pub data: Vec<u8>,
    /// True when the data contained a CR or LF that was not part of a CRLF.
    pub bare_line_endings: bool,
    /// The longest line of the data on the wire, including its CRLF.
    pub longest_line: usize,
    /// The sink's reply code to the end of data (2xx: accepted).
    pub reply_code: u16,
    /// When the end of data was received.
    pub at: Instant,
    /// The TLS session it came over; `None` in plain text.
    pub tls: Option<TlsSession>,
}

impl Transaction {
    /// True when the transaction came over TLS (after STARTTLS).
    pub fn over_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// True when the sink answered the end of data with 2xx.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.reply_code)
    }

    /// The message parsed into headers and body.
    pub fn message(&self) -> ParsedMessage {
        ParsedMessage::parse(&self.data)
    }

    /// The first header called `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        self.message().header(name).map(str::to_string)
    }

    /// The data as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// True when MAIL FROM carried `param` (case-insensitive, e.g. "SMTPUTF8", "BODY=8BITMIME").
    pub fn has_param(&self, param: &str) -> bool {
        self.mail_params
            .iter()
            .any(|p| p.eq_ignore_ascii_case(param))
    }
}

struct State {
    transactions: Vec<Transaction>,
    connections: usize,
    started: usize,
    rcpt_attempts: HashMap<String, u32>,
    rcpt_policy: Option<RcptPolicy>,
    data_reply: Option<(u16, String)>,
    data_delay: Duration,
    commands: Vec<String>,
    starttls: StartTls,
    tls_handshakes: usize,
    tls_failures: usize,
}

struct Shared {
    state: Mutex<State>,
    paused: watch::Sender<bool>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn wait_unpaused(&self) {
        let mut rx = self.paused.subscribe();
        let _ = rx.wait_for(|paused| !*paused).await;
    }
}

/// Options for a [`Sink`] before it starts.
pub struct SinkBuilder {
    rcpt_policy: Option<RcptPolicy>,
    data_reply: Option<(u16, String)>,
    data_delay: Duration,
    paused: bool,
    starttls: StartTls,
}

impl SinkBuilder {
    /// Answers RCPT by `policy(rcpt, attempt)`; `None` accepts. Attempts count per recipient, from 1.
    pub fn rcpt_policy(
        mut self,
        policy: impl Fn(&str, u32) -> Option<(u16, String)> + Send + Sync + 'static,
    ) -> SinkBuilder {
        self.rcpt_policy = Some(Arc::new(policy));
        self
    }

    /// Answers every end of data with `code text` instead of 250.
    pub fn data_reply(mut self, code: u16, text: &str) -> SinkBuilder {
        self.data_reply = Some((code, text.to_string()));
        self
    }

    /// Waits this long before answering the end of data (the message is recorded first).
    pub fn data_delay(mut self, delay: Duration) -> SinkBuilder {
        self.data_delay = delay;
        self
    }

    /// Starts paused: connections are accepted but get no reply until [`Sink::release`].
    pub fn paused(mut self) -> SinkBuilder {
        self.paused = true;
        self
    }

    /// Offers STARTTLS in EHLO and, when asked, runs the handshake with `config` (e.g.
    /// [`crate::tls::TestCa::server_config`]); then the session starts over (RFC 3207 4.2).
    pub fn starttls(mut self, config: Arc<ServerConfig>) -> SinkBuilder {
        self.starttls = StartTls::On(config);
        self
    }

    /// Offers STARTTLS, answers it 220, then answers the client's first handshake bytes with
    /// bytes that are not TLS and closes: every handshake fails. Sessions that do not ask for STARTTLS work as usual.
    pub fn broken_starttls(mut self) -> SinkBuilder {
        self.starttls = StartTls::Broken;
        self
    }

    /// Starts on `ip` with an OS-assigned port.
    pub async fn start(self, ip: impl Into<IpAddr>) -> Sink {
        let listener = match TcpListener::bind(SocketAddr::new(ip.into(), 0)).await {
            Ok(l) => l,
            Err(e) => panic!("sink: cannot bind: {e}"),
        };
        self.start_on(listener)
    }

    /// Starts on an already bound listener (e.g. from [`crate::net::SharedPort`]).
    pub fn start_on(self, listener: TcpListener) -> Sink {
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("sink: listener has no address: {e}"),
        };
        let (paused, _) = watch::channel(self.paused);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                transactions: Vec::new(),
                connections: 0,
                started: 0,
                rcpt_attempts: HashMap::new(),
                rcpt_policy: self.rcpt_policy,
                data_reply: self.data_reply,
                data_delay: self.data_delay,
                commands: Vec::new(),
                starttls: self.starttls,
                tls_handshakes: 0,
                tls_failures: 0,
            }),
            paused,
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Sink {
            addr,
            shared,
            task: Some(task),
        }
    }
}

/// A running recording SMTP server. Dropping it stops it.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Sink {
    /// Options for a new sink.
    pub fn builder() -> SinkBuilder {
        SinkBuilder {
            rcpt_policy: None,
            data_reply: None,
            data_delay: Duration::ZERO,
            paused: false,
            starttls: StartTls::Off,
        }
    }

    /// A sink accepting everything on `ip` with an OS-assigned port.
    pub async fn start(ip: impl Into<IpAddr>) -> Sink {
        Sink::builder().start(ip).await
    }

    /// Where the sink listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the sink listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Transactions that the sink accepted at the end of data, in order.
    pub fn messages(&self) -> Vec<Transaction> {
        self.shared
            .state()
            .transactions
            .iter()
            .filter(|t| t.accepted())
            .cloned()
            .collect()
    }

    /// Every transaction that reached the end of data, accepted or not.
    pub fn transactions(&self) -> Vec<Transaction> {
        self.shared.state().transactions.clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.state().connections
    }

    /// Transactions started (MAIL FROM accepted) so far.
    pub fn transactions_started(&self) -> usize {
        self.shared.state().started
    }

    /// How many times RCPT TO named `rcpt`.
    pub fn rcpt_attempts(&self, rcpt: &str) -> u32 {
        self.shared
            .state()
            .rcpt_attempts
            .get(rcpt)
            .copied()
            .unwrap_or(0)
    }

    /// Every command line received, in order (for diagnostics).
    pub fn commands(&self) -> Vec<String> {
        self.shared.state().commands.clone()
    }

    /// TLS handshakes that succeeded after STARTTLS.
    pub fn tls_handshakes(&self) -> usize {
        self.shared.state().tls_handshakes
    }

    /// TLS handshakes that failed after STARTTLS (the client gave up on the certificate, or
    /// [`SinkBuilder::broken_starttls`]).
    pub fn tls_failures(&self) -> usize {
        self.shared.state().tls_failures
    }

    /// Replaces the RCPT policy.
    pub fn set_rcpt_policy(
        &self,
        policy: impl Fn(&str, u32) -> Option<(u16, String)> + Send + Sync + 'static,
    ) {
        self.shared.state().rcpt_policy = Some(Arc::new(policy));
    }

    /// Sets (or with `None` clears) the reply to the end of data.
    pub fn set_data_reply(&self, reply: Option<(u16, &str)>) {
        self.shared.state().data_reply = reply.map(|(c, t)| (c, t.to_string()));
    }

    /// Holds every connection: nothing more is answered until [`Sink::release`].
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Lets held connections go on.
    pub fn release(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Waits until at least `count` messages were accepted; `None` on timeout.
    pub async fn try_wait_for(&self, count: usize, timeout: Duration) -> Option<Vec<Transaction>> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return Some(messages);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until at least `count` messages were accepted; panics with what arrived on timeout.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Transaction> {
        match self.try_wait_for(count, timeout).await {
            Some(m) => m,
            None => panic!(
                "sink {}: expected {count} messages within {timeout:?}, got {}: {:#?}\ncommands: {:#?}",
                self.addr,
                self.messages().len(),
                self.transactions(),
                self.commands()
            ),
        }
    }

    /// Stops listening and drops every connection; returns once the port is closed.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Several sinks sharing one port on different 127.x addresses (the relay uses one
/// `remote_port` for every MX), plus addresses on that port where nothing listens.
pub struct SinkGroup {
    /// The shared port: the relay's `[delivery] remote_port`.
    pub port: u16,
    /// The sinks, in the order they were given.
    pub sinks: Vec<Sink>,
    // Holds the refused addresses until the group is dropped.
    _reserved: SharedPort,
}

impl SinkGroup {
    /// Starts one sink per `(address, options)` on one shared port; connections to
    /// the `refused` addresses on that port are refused (a down MX).
    pub async fn start(sinks: Vec<(Ipv4Addr, SinkBuilder)>, refused: &[Ipv4Addr]) -> SinkGroup {
        let ips: Vec<Ipv4Addr> = sinks.iter().map(|(ip, _)| *ip).collect();
        let mut shared = match SharedPort::bind(&ips, refused).await {
            Ok(s) => s,
            Err(e) => panic!("cannot bind a shared port on {ips:?} + {refused:?}: {e}"),
        };
        let port = shared.port();
        let sinks = sinks
            .into_iter()
            .map(|(ip, builder)| builder.start_on(shared.take(ip)))
            .collect();
        SinkGroup {
            port,
            sinks,
            _reserved: shared,
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connection tasks live in this set, so aborting the sink aborts them too.
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, peer)) = accepted {
                    shared.state().connections += 1;
                    sessions.spawn(session(stream, peer, Arc::clone(&shared)));
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// The current mail transaction.
struct Open {
    mail_from: String,
    mail_params: Vec<String>,
    rcpts: Vec<String>,
    refused: Vec<(String, u16)>,
}

/// The byte stream of a session: TCP, or TLS over it after STARTTLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn reply<W: AsyncWrite + Unpin + ?Sized>(
    shared: &Shared,
    w: &mut W,
    code: u16,
    lines: &[&str],
) -> io::Result<()> {
    shared.wait_unpaused().await;
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.push_str(&format!("{code}{sep}{line}\r\n"));
    }
    w.write_all(out.as_bytes()).await
}

/// Splits "FROM:<path> PARAMS" into the path (without brackets) and parameters.
fn parse_path(arg: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let path = rest[..end].to_string();
    let params = rest[end + 1..]
        .split_ascii_whitespace()
        .map(str::to_string)
        .collect();
    Some((path, params))
}

async fn session(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = run_session(stream, peer, &shared).await;
}

async fn run_session(stream: TcpStream, peer: SocketAddr, shared: &Shared) -> io::Result<()> {
    let local = stream.local_addr()?;
    let starttls = shared.state().starttls.clone();
    // Reads go through the buffer; replies are written to the stream under it.
    let mut io: BufReader<Box<dyn Io>> = BufReader::new(Box::new(stream));
    let mut tls: Option<TlsSession> = None;
    reply(
        shared,
        io.get_mut(),
        220,
        &[&format!("{SINK_NAME} ESMTP recording sink")],
    )
    .await?;
    let mut helo: Option<(String, bool)> = None;
    let mut open: Option<Open> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut io)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let command = text.trim_end_matches(['\r', '\n']).to_string();
        shared.state().commands.push(command.clone());
        let (verb, arg) = match command.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
            None => (command.to_ascii_uppercase(), String::new()),
        };
        match verb.as_str() {
            "EHLO" => {
                helo = Some((arg, true));
                open = None;
                let size = format!("SIZE {MAX_SIZE}");
                let mut lines = vec![
                    SINK_NAME,
                    "PIPELINING",
                    "8BITMIME",
                    size.as_str(),
                    "SMTPUTF8",
                    "ENHANCEDSTATUSCODES",
                ];
                if tls.is_none() && !matches!(starttls, StartTls::Off) {
                    lines.push("STARTTLS");
                }
                reply(shared, io.get_mut(), 250, &lines).await?;
            }
            "STARTTLS" if !matches!(starttls, StartTls::Off) => {
                if tls.is_some() {
                    reply(shared, io.get_mut(), 503, &["5.5.1 TLS already active"]).await?;
                    continue;
                }
                // RFC 3207 4: commands pipelined behind STARTTLS are not taken.
                let pending = io.buffer().len();
                io.consume(pending);
                reply(shared, io.get_mut(), 220, &["2.0.0 ready to start TLS"]).await?;
                let config = match &starttls {
                    StartTls::On(config) => Arc::clone(config),
                    _ => {
                        // After the ClientHello, so that the garbage cannot arrive with the 220.
                        let mut hello = [0u8; 512];
                        let wait = Duration::from_secs(5);
                        let _ = tokio::time::timeout(wait, io.get_mut().read(&mut hello)).await;
                        let _ = io
                            .get_mut()
                            .write_all(b"\x15\x03\x03 this is not TLS\r\n")
                            .await;
                        shared.state().tls_failures += 1;
                        return Ok(());
                    }
                };
                let stream = io.into_inner();
                let accepted = tokio_rustls::TlsAcceptor::from(config).accept(stream).await;
                let stream = match accepted {
                    Ok(stream) => stream,
                    Err(_) => {
                        shared.state().tls_failures += 1;
                        return Ok(());
                    }
                };
                shared.state().tls_handshakes += 1;
                tls = Some(tls_session(stream.get_ref().1));
                io = BufReader::new(Box::new(stream));
                helo = None;
                open = None;
            }
            "HELO" => {
                helo = Some((arg, false));
                open = None;
                reply(shared, io.get_mut(), 250, &[SINK_NAME]).await?;
            }
            "MAIL" => {
                if helo.is_none() {
                    reply(shared, io.get_mut(), 503, &["5.5.1 EHLO first"]).await?;
                } else if open.is_some() {
                    reply(shared, io.get_mut(), 503, &["5.5.1 nested MAIL"]).await?;
                } else if let Some((path, params)) = parse_path(&arg, "FROM:") {
                    shared.state().started += 1;
                    open = Some(Open {
                        mail_from: path,
                        mail_params: params,
                        rcpts: Vec::new(),
                        refused: Vec::new(),
                    });
                    reply(shared, io.get_mut(), 250, &["2.1.0 ok"]).await?;
                } else {
                    reply(shared, io.get_mut(), 501, &["5.5.4 bad MAIL syntax"]).await?;
                }
            }
            "RCPT" => {
                let Some(tx) = open.as_mut() else {
                    reply(shared, io.get_mut(), 503, &["5.5.1 MAIL first"]).await?;
                    continue;
                };
                let Some((rcpt, _)) = parse_path(&arg, "TO:") else {
                    reply(shared, io.get_mut(), 501, &["5.5.4 bad RCPT syntax"]).await?;
                    continue;
                };
                let verdict = {
                    let mut st = shared.state();
                    let attempts = st.rcpt_attempts.entry(rcpt.clone()).or_insert(0);
                    *attempts += 1;
                    let attempt = *attempts;
                    st.rcpt_policy.clone().and_then(|p| p(&rcpt, attempt))
                };
                match verdict {
                    None => {
                        tx.rcpts.push(rcpt);
                        reply(shared, io.get_mut(), 250, &["2.1.5 ok"]).await?;
                    }
                    Some((code, text)) => {
                        tx.refused.push((rcpt, code));
                        reply(shared, io.get_mut(), code, &[&text]).await?;
                    }
                }
            }
            "DATA" => {
                let Some(tx) = open.take() else {
                    reply(shared, io.get_mut(), 503, &["5.5.1 MAIL first"]).await?;
                    continue;
                };
                if tx.rcpts.is_empty() {
                    reply(shared, io.get_mut(), 554, &["5.5.1 no valid recipients"]).await?;
                    continue;
                }
                reply(shared, io.get_mut(), 354, &["end with <CRLF>.<CRLF>"]).await?;
                let data = read_data(&mut io).await?;
                let (helo_name, esmtp) = helo.clone().unwrap_or_default();
                let (code, text, delay) = {
                    let st = shared.state();
                    match &st.data_reply {
                        Some((c, t)) => (*c, t.clone(), st.data_delay),
                        None => (250, "2.0.0 recorded".to_string(), st.data_delay),
                    }
                };
                let code = if data.too_big { 552 } else { code };
                shared.state().transactions.push(Transaction {
                    peer,
                    local,
                    helo: helo_name,
                    esmtp,
                    mail_from: tx.mail_from,
                    mail_params: tx.mail_params,
                    rcpts: tx.rcpts,
                    refused_rcpts: tx.refused,
                    data: data.bytes,
                    bare_line_endings: data.bare,
                    longest_line: data.longest_line,
                    reply_code: code,
                    at: Instant::now(),
                    tls: tls.clone(),
                });
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if data.too_big {
                    reply(shared, io.get_mut(), 552, &["5.3.4 message too big"]).await?;
                } else {
                    reply(shared, io.get_mut(), code, &[&text]).await?;
                }
            }
            "RSET" => {
                open = None;
                reply(shared, io.get_mut(), 250, &["2.0.0 ok"]).await?;
            }
            "NOOP" => reply(shared, io.get_mut(), 250, &["2.0.0 ok"]).await?,
            "QUIT" => {
                reply(shared, io.get_mut(), 221, &["2.0.0 bye"]).await?;
                return Ok(());
            }
            _ => reply(shared, io.get_mut(), 500, &["5.5.2 unknown command"]).await?,
        }
    }
}

fn tls_session(conn: &rustls::ServerConnection) -> TlsSession {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        other => format!("{other:?}"),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("unknown")
        .to_string();
    TlsSession {
        version,
        cipher,
        sni: conn.server_name().map(str::to_string),
    }
}

struct Data {
    bytes: Vec<u8>,
    bare: bool,
    longest_line: usize,
    too_big: bool,
}

/// Reads DATA up to the `<CRLF>.<CRLF>` terminator (RFC 5321 4.1.1.4), undoing dot-stuffing (4.5.2).
///
/// A `.` line only ends the data when the line before it ended in CRLF (or it
/// is the first line): `<LF>.<CRLF>` is not an end of data.
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Data> {
    let mut data = Data {
        bytes: Vec::new(),
        bare: false,
        longest_line: 0,
        too_big: false,
    };
    let mut line = Vec::new();
    let mut after_crlf = true;
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in DATA"));
        }
        data.longest_line = data.longest_line.max(line.len());
        if after_crlf && line == b".\r\n" {
            return Ok(data);
        }
        let ends_crlf = line.ends_with(b"\r\n");
        let body_len = if ends_crlf {
            line.len() - 2
        } else {
            line.len()
        };
        // A CR not followed by LF, or an LF not preceded by CR.
        if !ends_crlf || line[..body_len].contains(&b'\r') || line[..body_len].contains(&b'\n') {
            data.bare = true;
        }
        let content = if after_crlf && line.first() == Some(&b'.') {
            &line[1..]
        } else {
            &line[..]
        };
        if data.bytes.len() + content.len() > MAX_SIZE {
            data.too_big = true;
        } else {
            data.bytes.extend_from_slice(content);
        }
        after_crlf = ends_crlf;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::SmtpClient;
    use crate::net::Net;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn records_transaction_with_envelope_and_unstuffed_data() {
        let sink = Sink::start(Ipv4Addr::LOCALHOST).await;
        let mut c = SmtpClient::connect(sink.addr()).await.expect("connect");
        assert_eq!(c.greeting().code, 220);
        let ehlo = c.ehlo("client.test").await.expect("ehlo");
        for ext in ["PIPELINING", "8BITMIME", "SIZE", "SMTPUTF8"] {
            assert!(ehlo.has_extension(ext), "{ext} missing in {ehlo}");
        }
        let id = c
            .send_mail_params(
                "a@x.test",
                "BODY=8BITMIME",
                &["b@y.test", "c@y.test"],
                b"Subject: hi\r\n\r\n.leading dot\r\nline\r\n",
            )
            .await
            .expect("accepted");
        // No "queued as" in the sink's reply: send_mail hands back its text.
        assert_eq!(id, "2.0.0 recorded");
        let m = sink.wait_for(1, T).await;
        assert_eq!(m[0].helo, "client.test");
        assert!(m[0].esmtp);
        assert_eq!(m[0].mail_from, "a@x.test");
        assert!(m[0].has_param("body=8bitmime"));
        assert_eq!(m[0].rcpts, vec!["b@y.test", "c@y.test"]);
        assert_eq!(m[0].data, b"Subject: hi\r\n\r\n.leading dot\r\nline\r\n");
        assert!(!m[0].bare_line_endings);
        assert_eq!(m[0].peer.ip(), IpAddr::from(Ipv4Addr::LOCALHOST));
        assert_eq!(m[0].local, sink.addr());
        assert_eq!(m[0].header("subject").as_deref(), Some("hi"));
        assert_eq!(sink.connections(), 1);
        assert_eq!(sink.transactions_started(), 1);
    }

    #[tokio::test]
    async fn rcpt_policy_sees_attempt_numbers() {
        let sink = Sink::builder()
            .rcpt_policy(|rcpt, attempt| {
                (rcpt == "later@y.test" && attempt == 1).then(|| (451, "4.3.0 later".to_string()))
            })
            .start(Ipv4Addr::LOCALHOST)
            .await;
        let mut c = SmtpClient::connect(sink.addr()).await.expect("connect");
        c.ehlo("c.test").await.expect("ehlo");
        let r = c.command("MAIL FROM:<a@x.test>").await.expect("mail");
        assert_eq!(r.code, 250);
        let r = c.command("RCPT TO:<later@y.test>").await.expect("rcpt");
        assert_eq!((r.code, r.enhanced().as_deref()), (451, Some("4.3.0")));
        let r = c.command("RCPT TO:<later@y.test>").await.expect("rcpt");
        assert_eq!(r.code, 250);
        assert_eq!(sink.rcpt_attempts("later@y.test"), 2);
    }

    #[tokio::test]
    async fn data_reply_override_is_recorded_but_not_a_message() {
        let sink = Sink::builder()
            .data_reply(554, "5.7.1 no thanks")
            .start(Ipv4Addr::LOCALHOST)
            .await;
        let mut c = SmtpClient::connect(sink.addr()).await.expect("connect");
        let err = c
            .send_mail("a@x.test", &["b@y.test"], b"Subject: x\r\n\r\nbody\r\n")
            .await
            .expect_err("rejected");
        assert_eq!(err.reply().map(|r| r.code), Some(554));
        assert!(sink.messages().is_empty());
        assert_eq!(sink.transactions().len(), 1);
        sink.set_data_reply(None);
        c.send_mail("a@x.test", &["b@y.test"], b"Subject: y\r\n\r\nbody\r\n")
            .await
            .expect("accepted now");
        assert_eq!(sink.messages().len(), 1);
    }

    #[tokio::test]
    async fn only_crlf_dot_crlf_ends_data() {
        let sink = Sink::start(Ipv4Addr::LOCALHOST).await;
        let mut c = SmtpClient::connect(sink.addr()).await.expect("connect");
        c.ehlo("c.test").await.expect("ehlo");
        for cmd in ["MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>", "DATA"] {
            c.command(cmd).await.expect("cmd");
        }
        c.send(b"Subject: s\r\n\r\nA\n.\nMAIL FROM:<evil@x.test>\r\nB\r\n.\r\n")
            .await
            .expect("send");
        let r = c.read_reply().await.expect("reply");
        assert_eq!(r.code, 250);
        let m = sink.wait_for(1, T).await;
        assert_eq!(m.len(), 1);
        assert!(m[0].bare_line_endings);
        assert_eq!(m[0].mail_from, "a@x.test");
        assert!(m[0].text().contains("MAIL FROM:<evil@x.test>"));
        assert_eq!(sink.transactions_started(), 1);
    }

    #[tokio::test]
    async fn pipelined_commands_are_answered_in_order() {
        let sink = Sink::start(Ipv4Addr::LOCALHOST).await;
        let mut c = SmtpClient::connect(sink.addr()).await.expect("connect");
        c.ehlo("c.test").await.expect("ehlo");
        c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n")
            .await
            .expect("send");
        let codes: Vec<u16> = [
            c.read_reply().await,
            c.read_reply().await,
            c.read_reply().await,
            c.read_reply().await,
        ]
        .into_iter()
        .map(|r| r.expect("reply").code)
        .collect();
        assert_eq!(codes, vec![250, 250, 250, 354]);
    }

    #[tokio::test]
    async fn paused_sink_answers_only_after_release() {
        let sink = Sink::builder().paused().start(Ipv4Addr::LOCALHOST).await;
        let mut c = SmtpClient::connect_raw(sink.addr()).await.expect("connect");
        c.set_timeout(Duration::from_millis(300));
        assert!(c.read_reply().await.is_err(), "no greeting while paused");
        assert_eq!(sink.connections(), 1);
        sink.release();
        c.set_timeout(T);
        assert_eq!(c.read_reply().await.expect("greeting").code, 220);
        sink.pause();
        c.send(b"NOOP\r\n").await.expect("send");
        c.set_timeout(Duration::from_millis(300));
        assert!(c.read_reply().await.is_err(), "no reply while paused");
        sink.release();
        c.set_timeout(T);
        assert_eq!(c.read_reply().await.expect("noop").code, 250);
    }

    #[tokio::test]
    async fn wait_for_gives_up_after_timeout() {
        let sink = Sink::start(Ipv4Addr::LOCALHOST).await;
        let started = Instant::now();
        assert!(sink
            .try_wait_for(1, Duration::from_millis(200))
            .await
            .is_none());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn stopped_sink_refuses_connections() {
        let sink = Sink::start(Ipv4Addr::LOCALHOST).await;
        let addr = sink.addr();
        sink.stop().await;
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn delayed_data_reply_records_before_answering() {
        let sink = Sink::builder()
            .data_delay(Duration::from_millis(500))
            .start(Ipv4Addr::LOCALHOST)
            .await;
        let mut c = SmtpClient::connect(sink.addr()).await.expect("connect");
        c.ehlo("c.test").await.expect("ehlo");
        for cmd in ["MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>", "DATA"] {
            c.command(cmd).await.expect("cmd");
        }
        c.send(b"Subject: s\r\n\r\nbody\r\n.\r\n")
            .await
            .expect("send");
        let m = sink.wait_for(1, T).await;
        assert_eq!(m.len(), 1);
        c.set_timeout(Duration::from_millis(100));
        assert!(c.read_reply().await.is_err(), "reply is held back");
        c.set_timeout(T);
        assert_eq!(c.read_reply().await.expect("reply").code, 250);
    }

    /// Sends `command` and reads one reply (all its lines) over any stream.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        io: &mut BufReader<S>,
        command: &str,
    ) -> String {
        if !command.is_empty() {
            io.get_mut()
                .write_all(format!("{command}\r\n").as_bytes())
                .await
                .expect("write");
        }
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            assert!(
                io.read_line(&mut line).await.expect("read") > 0,
                "EOF after {reply:?}"
            );
            reply.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return reply;
            }
        }
    }

    #[tokio::test]
    async fn starttls_sink_records_transactions_over_tls_with_version_and_sni() {
        let ca = crate::tls::TestCa::new();
        let sink = Sink::builder()
            .starttls(ca.server_config(&["mx.sink.test"]))
            .start(Ipv4Addr::LOCALHOST)
            .await;
        let stream = TcpStream::connect(sink.addr()).await.expect("connect");
        let mut plain = BufReader::new(stream);
        assert!(exchange(&mut plain, "").await.starts_with("220"));
        assert!(exchange(&mut plain, "EHLO c.test")
            .await
            .contains("250 STARTTLS"));
        // Before TLS: a plain transaction is recorded as such.
        for command in ["MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>", "DATA"] {
            exchange(&mut plain, command).await;
        }
        assert!(exchange(&mut plain, "Subject: plain\r\n\r\nx\r\n.")
            .await
            .starts_with("250"));
        assert!(exchange(&mut plain, "STARTTLS").await.starts_with("220"));
        let name = rustls::pki_types::ServerName::try_from("mx.sink.test").expect("name");
        let tls = tokio_rustls::TlsConnector::from(ca.client_config())
            .connect(name, plain.into_inner())
            .await
            .expect("handshake");
        let mut tls = BufReader::new(tls);
        let ehlo = exchange(&mut tls, "EHLO c.test").await;
        assert!(!ehlo.contains("STARTTLS"), "not offered twice: {ehlo}");
        assert!(exchange(&mut tls, "MAIL FROM:<a@x.test>")
            .await
            .starts_with("250"));
        for command in ["RCPT TO:<b@y.test>", "DATA"] {
            exchange(&mut tls, command).await;
        }
        assert!(exchange(&mut tls, "Subject: tls\r\n\r\nx\r\n.")
            .await
            .starts_with("250"));
        let m = sink.wait_for(2, T).await;
        assert!(!m[0].over_tls());
        let session = m[1].tls.clone().expect("over TLS");
        assert_eq!(session.version, "TLSv1.3");
        assert!(session.cipher.starts_with("TLS13_"), "{}", session.cipher);
        assert_eq!(session.sni.as_deref(), Some("mx.sink.test"));
        assert_eq!(sink.tls_handshakes(), 1);
    }

    #[tokio::test]
    async fn broken_starttls_fails_the_handshake_but_plain_sessions_work() {
        let ca = crate::tls::TestCa::new();
        let sink = Sink::builder()
            .broken_starttls()
            .start(Ipv4Addr::LOCALHOST)
            .await;
        let stream = TcpStream::connect(sink.addr()).await.expect("connect");
        let mut plain = BufReader::new(stream);
        exchange(&mut plain, "").await;
        assert!(exchange(&mut plain, "EHLO c.test")
            .await
            .contains("STARTTLS"));
        assert!(exchange(&mut plain, "STARTTLS").await.starts_with("220"));
        let name = rustls::pki_types::ServerName::try_from("mx.sink.test").expect("name");
        let handshake = tokio_rustls::TlsConnector::from(ca.client_config())
            .connect(name, plain.into_inner())
            .await;
        assert!(handshake.is_err());
        assert_eq!(sink.tls_failures(), 1);
        let mut c = SmtpClient::connect(sink.addr()).await.expect("connect");
        c.send_mail("a@x.test", &["b@y.test"], b"Subject: x\r\n\r\nbody\r\n")
            .await
            .expect("accepted in plain text");
        assert!(!sink.wait_for(1, T).await[0].over_tls());
    }

    #[tokio::test]
    async fn group_shares_one_port_and_refuses_on_down_addresses() {
        let net = Net::unique();
        let group = SinkGroup::start(
            vec![(net.ip(1), Sink::builder()), (net.ip(2), Sink::builder())],
            &[net.ip(3)],
        )
        .await;
        assert_eq!(group.sinks[0].port(), group.port);
        assert_eq!(group.sinks[1].port(), group.port);
        assert_eq!(group.sinks[1].addr().ip(), IpAddr::from(net.ip(2)));
        let c = SmtpClient::connect(SocketAddr::from((net.ip(2), group.port))).await;
        assert_eq!(c.expect("connect").greeting().code, 220);
        assert!(TcpStream::connect((net.ip(3), group.port)).await.is_err());
        assert_eq!(group.sinks[1].connections(), 1);
        assert_eq!(group.sinks[0].connections(), 0);
    }
}
