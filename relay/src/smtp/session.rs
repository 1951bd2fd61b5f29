//! The inbound SMTP session state machine: bytes in, replies and steps out (no sockets, no clock).
//!
//! Contract with the I/O layer:
//! 1. write [`Session::greeting`];
//! 2. append what the socket gives to an input buffer and call
//!    [`Session::process`]; it consumes from the front of the buffer and
//!    appends replies to `out`;
//! 3. act on the returned [`Step`]: `NeedInput` (flush `out`, read more),
//!    `CheckMail`/`CheckRcpt`/`Message` (decide, then [`Session::resolve`]
//!    and call `process` again, even with no new input), or `Close` (flush
//!    `out`, close);
//! 4. while a step is pending the session consumes nothing, so replies come
//!    out in command order however many commands a client pipelines.
//!
//! Decisions that are not spelled out by the RFCs:
//! - A command line may end in a bare LF (lenient, like most servers); only
//!   message content is strict about line endings, because that is where
//!   smuggling happens (see [`super::data`]).
//! - RFC 2920 synchronisation: input buffered behind a command that must end
//!   a pipelined group, or behind any command before EHLO / after HELO, is a
//!   554 5.5.0 and the connection is closed. The same holds for input behind
//!   the end of DATA in a session without PIPELINING.
//! - A BDAT line whose size cannot be parsed gets 501 and the connection is
//!   closed: its chunk could not be skipped and would be read as commands.
//! - `RCPT TO:<postmaster>` without a domain is refused (550 5.1.3): a relay
//!   has no local postmaster to deliver to.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::address::{Mailbox, ReversePath};
use super::command::{parse_command, Command, MailParams, Verb};
use super::data::{line_too_long, too_big, BareLineEnding, DataDecoder, DataLimits};
use super::reply::Reply;

/// Limits and identity for inbound sessions, shared by all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our host name: greeting, EHLO reply, Received header.
    pub hostname: String,
    /// Largest message accepted, in octets (advertised as SIZE).
    pub max_message_size: u64,
    /// Recipients per message; more get 452 4.5.3.
    pub max_recipients: usize,
    /// Longest command or text line in octets including CRLF (RFC 5321 4.5.3.1).
    pub max_line_length: usize,
    /// Client-caused 4xx/5xx replies allowed before 421 4.7.0 and close.
    pub max_errors: u32,
    /// `Received:` fields allowed in a message before 554 5.4.6.
    pub max_hops: u32,
    /// What to do with bare CR/LF in message content.
    pub bare_line_ending: BareLineEnding,
    /// Bounce domains (lower-case): their addresses take returned DSNs from any client, in
    /// transactions of their own (see [`SessionConfig::is_bounce_address`]).
    pub bounce_domains: Vec<String>,
}

impl SessionConfig {
    /// True when `mailbox` is at one of the bounce domains: RCPT TO it is accepted from any
    /// client, and a transaction never mixes such addresses with others.
    pub fn is_bounce_address(&self, mailbox: &Mailbox) -> bool {
        self.bounce_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&mailbox.domain))
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hostname: "localhost".to_owned(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 1000,
            max_errors: 10,
            max_hops: 50,
            bare_line_ending: BareLineEnding::Reject,
            bounce_domains: Vec::new(),
        }
    }
}

impl From<&SessionConfig> for DataLimits {
    fn from(c: &SessionConfig) -> DataLimits {
        DataLimits {
            max_message_size: c.max_message_size,
            max_line_length: c.max_line_length,
            max_hops: c.max_hops,
            bare_line_ending: c.bare_line_ending,
        }
    }
}

/// What the I/O layer knows about the client and the listener it connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address.
    pub peer: IpAddr,
    /// True if the client may relay without logging in (its address is in `relay_networks`).
    pub relay_allowed: bool,
    /// Set while the connection is TLS-protected (implicit TLS, or after STARTTLS): the
    /// protocol version and cipher, e.g. `TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256`.
    pub tls: Option<String>,
    /// True when STARTTLS may be offered (the listener has a certificate).
    pub starttls: bool,
    /// When AUTH is offered.
    pub auth: AuthOffer,
    /// MAIL FROM needs a login first (`530 5.7.0`), whatever the client's address.
    pub require_auth: bool,
    /// MAIL FROM needs TLS first (`530 5.7.0`).
    pub require_tls: bool,
}

impl ClientInfo {
    /// A client on a plain listener without TLS or AUTH.
    pub fn new(peer: IpAddr, relay_allowed: bool) -> ClientInfo {
        ClientInfo {
            peer,
            relay_allowed,
            tls: None,
            starttls: false,
            auth: AuthOffer::Never,
            require_auth: false,
            require_tls: false,
        }
    }
}

/// When a session offers SMTP AUTH (PLAIN and LOGIN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOffer {
    /// Not at all (no users are configured).
    Never,
    /// Only over TLS: in the clear AUTH gets `538 5.7.11` and is not advertised.
    WithTls,
    /// Also in the clear (a listener that allows it, for loopback clients only).
    Always,
}

/// The SASL mechanisms the relay offers, as advertised.
const AUTH_MECHANISMS: &str = "PLAIN LOGIN";
/// `334` challenges of AUTH LOGIN: "Username:" and "Password:" in base64.
const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

/// What the I/O layer must do after [`Session::process`].
#[derive(Debug)]
pub enum Step {
    /// Flush `out`, read more bytes, then call `process` again.
    NeedInput,
    /// MAIL FROM passed every protocol check; the I/O layer may still refuse
    /// it (e.g. `452 4.3.1` when the spool disk is full). Answer with `resolve`.
    CheckMail(MailRequest),
    /// RCPT TO passed every protocol check (relaying clients, or any client for a bounce
    /// address; others got 554 5.7.1 from the session). Answer with `resolve`.
    CheckRcpt(RcptRequest),
    /// A complete message that passed all checks: spool it and answer
    /// `Resolution::Queued(id)` or `Resolution::Reject(reply)`.
    Message(Box<IncomingMessage>),
    /// Flush `out` (the `220` to STARTTLS), run the TLS handshake as the server, then call
    /// [`Session::tls_started`] (or close the connection if the handshake failed). Input the
    /// client sent behind STARTTLS was discarded (RFC 3207 4.2: it may have been injected).
    StartTls,
    /// A login to check: answer with `resolve` (`Resolution::Accept` for a good one,
    /// `Resolution::Reject` with `535 5.7.8` for a bad one, or with a `421` to end the session).
    Authenticate(AuthRequest),
    /// Flush `out`, then close the connection.
    Close,
}

/// Credentials from AUTH PLAIN or AUTH LOGIN, waiting for the I/O layer's check.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// `"PLAIN"` or `"LOGIN"`.
    pub mechanism: &'static str,
    /// The user name (authentication identity).
    pub user: String,
    /// The password as sent.
    pub password: Vec<u8>,
    /// True when the session is TLS-protected.
    pub tls: bool,
}

impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A MAIL FROM waiting for the I/O layer's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailRequest {
    /// The sender.
    pub from: ReversePath,
    /// Its ESMTP parameters.
    pub params: MailParams,
}

/// A RCPT TO waiting for the I/O layer's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcptRequest {
    /// The recipient.
    pub to: Mailbox,
    /// The transaction's sender.
    pub mail_from: ReversePath,
    /// The transaction's MAIL FROM parameters.
    pub params: MailParams,
    /// True when `to` is a bounce address ([`SessionConfig::is_bounce_address`]).
    pub bounce: bool,
    /// The user the client logged in as, if it did.
    pub auth_user: Option<String>,
    /// True when the session is TLS-protected.
    pub tls: bool,
}

/// The I/O layer's answer to a pending step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Go ahead: `250 2.1.0`/`250 2.1.5` (for a message: `250 2.0.0 Ok: queued`).
    Accept,
    /// Refuse with this reply; nothing changes in the transaction (a refused
    /// message ends it all the same, as any end of data does).
    Reject(Reply),
    /// The message is durably spooled under this id: `250 2.0.0 Ok: queued as ID`.
    /// For MAIL and RCPT it means the same as `Accept`.
    Queued(String),
    /// For RCPT: accept, but queue the message for this address instead (a policy
    /// rewrite). For MAIL and messages it means the same as `Accept`.
    AcceptAs(Mailbox),
}

/// A complete message with its envelope, ready to be spooled.
#[derive(Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The EHLO/HELO name.
    pub helo: String,
    /// True if the client used EHLO.
    pub esmtp: bool,
    /// The envelope sender.
    pub mail_from: ReversePath,
    /// The MAIL FROM parameters.
    pub params: MailParams,
    /// The accepted recipients, without duplicates, in order.
    pub recipients: Vec<Mailbox>,
    /// The exact message: CRLF line endings, dot-unstuffed, no Received added.
    pub body: Vec<u8>,
    /// True if the body contains octets above 127.
    pub eight_bit: bool,
    /// True if MAIL FROM carried SMTPUTF8.
    pub smtputf8: bool,
    /// `"SMTP"` or `"ESMTP"`, for the Received header's `with` clause.
    pub protocol: &'static str,
    /// True when every recipient is a bounce address: a returned DSN, not mail to relay.
    pub bounce: bool,
    /// The user the client logged in as, if it did.
    pub auth_user: Option<String>,
    /// The TLS protocol and cipher the message came over, if it came over TLS.
    pub tls: Option<String>,
}

impl fmt::Debug for IncomingMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingMessage")
            .field("helo", &self.helo)
            .field("mail_from", &self.mail_from)
            .field("recipients", &self.recipients)
            .field("body_len", &self.body.len())
            .field("eight_bit", &self.eight_bit)
            .field("smtputf8", &self.smtputf8)
            .field("protocol", &self.protocol)
            .field("bounce", &self.bounce)
            .field("auth_user", &self.auth_user)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Helo {
    name: String,
    esmtp: bool,
}

#[derive(Debug)]
struct Transaction {
    from: ReversePath,
    params: MailParams,
    rcpts: Vec<Mailbox>,
    chunks: Chunks,
}

/// BDAT progress of a transaction (RFC 3030).
#[derive(Debug)]
enum Chunks {
    /// No BDAT yet (DATA is still possible).
    None,
    /// Chunks so far were accepted.
    Receiving(DataDecoder),
    /// A chunk failed: later chunks get 503 until RSET or a LAST chunk.
    Failed,
}

/// What happens to the transaction when a refused chunk has been skipped.
#[derive(Debug, Clone, Copy)]
enum TxnEffect {
    Keep,
    Fail,
    End,
}

#[derive(Debug)]
struct ChunkState {
    remaining: u64,
    size: u64,
    last: bool,
    /// Set when the chunk is skipped and answered with this reply.
    refusal: Option<(Reply, TxnEffect)>,
}

#[derive(Debug)]
enum Phase {
    /// Reading command lines.
    Command,
    /// A command line went over the limit: discard up to the next LF.
    DiscardLine,
    /// After 354: message content up to `<CRLF>.<CRLF>`.
    Data(DataDecoder),
    /// After BDAT: exactly `remaining` more octets of chunk.
    Chunk(ChunkState),
}

#[derive(Debug)]
enum Pending {
    Mail(ReversePath, MailParams),
    Rcpt(Mailbox),
    Message,
    Auth(String),
}

/// Where an AUTH exchange stands: the next line from the client is a SASL response.
#[derive(Debug)]
enum AuthStage {
    /// AUTH PLAIN without an initial response: the `authzid NUL authcid NUL passwd` comes next.
    Plain,
    /// AUTH LOGIN: the user name comes next.
    LoginUser,
    /// AUTH LOGIN: the password for this user comes next.
    LoginPassword(String),
}

/// One inbound SMTP session. See the module documentation for the contract.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    client: ClientInfo,
    helo: Option<Helo>,
    txn: Option<Transaction>,
    phase: Phase,
    pending: Option<Pending>,
    errors: u32,
    closed: bool,
    /// The user this session logged in as.
    auth_user: Option<String>,
    /// Set while the client is in the middle of an AUTH exchange.
    auth_stage: Option<AuthStage>,
}

fn ok(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Reply {
    Reply::enhanced(code, status, text)
}

fn bad_sequence(text: &str) -> Reply {
    Reply::enhanced(503, (5, 5, 1), format!("Bad sequence of commands: {text}"))
}

impl Session {
    /// A new session for a freshly accepted connection.
    pub fn new(config: Arc<SessionConfig>, client: ClientInfo) -> Session {
        Session {
            config,
            client,
            helo: None,
            txn: None,
            phase: Phase::Command,
            pending: None,
            errors: 0,
            closed: false,
            auth_user: None,
            auth_stage: None,
        }
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 4.2:
    /// the client's EHLO, and anything else learnt in the clear, is forgotten).
    pub fn tls_started(&mut self, description: String) {
        self.client.tls = Some(description);
        self.helo = None;
        self.txn = None;
        self.auth_user = None;
        self.auth_stage = None;
        self.phase = Phase::Command;
    }

    /// The user the client logged in as, once it has.
    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    /// True when AUTH may be used now.
    fn auth_available(&self) -> bool {
        match self.client.auth {
            AuthOffer::Never => false,
            AuthOffer::WithTls => self.client.tls.is_some(),
            AuthOffer::Always => true,
        }
    }

    /// The 220 greeting to send first.
    pub fn greeting(&self) -> Reply {
        Reply::new(220, None, format!("{} ESMTP ready", self.config.hostname))
    }

    /// The 421 reply to send before closing a connection that timed out.
    pub fn timeout_reply(&self) -> Reply {
        Reply::enhanced(
            421,
            (4, 4, 2),
            format!(
                "{} Timeout exceeded; closing connection",
                self.config.hostname
            ),
        )
    }

    /// The 421 reply for a connection refused over the connection limits.
    pub fn too_busy(config: &SessionConfig) -> Reply {
        Reply::enhanced(
            421,
            (4, 7, 0),
            format!("{} Too many connections; try again later", config.hostname),
        )
    }

    /// The 421 reply for connections closed because the server is shutting down.
    pub fn shutdown_reply(&self) -> Reply {
        Reply::enhanced(
            421,
            (4, 3, 2),
            format!(
                "{} Service shutting down; try again later",
                self.config.hostname
            ),
        )
    }

    /// True while message content (DATA or a BDAT chunk) is expected, so the
    /// I/O layer applies the data timeout rather than the command timeout.
    pub fn expects_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Chunk(_))
    }

    /// True once the session has ended (QUIT, 421, synchronisation error).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The EHLO/HELO name, once given.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_ref().map(|h| h.name.as_str())
    }

    /// The client this session talks to.
    pub fn client(&self) -> &ClientInfo {
        &self.client
    }

    /// Consumes as much of `input` as possible, draining consumed bytes from
    /// its front and appending replies to `out`. Bytes left in `input` are an
    /// incomplete command line (always shorter than `max_line_length`) or
    /// input after a returned step, to be processed by the next call.
    pub fn process(&mut self, input: &mut Vec<u8>, out: &mut Vec<u8>) -> Step {
        let mut pos = 0;
        let step = self.advance(input, &mut pos, out);
        if matches!(step, Step::StartTls) {
            // Whatever came behind STARTTLS was sent in the clear before the handshake: a
            // man in the middle may have put it there (CVE-2011-0411). It is dropped.
            let dropped = input.len() - pos;
            if dropped > 0 {
                tracing::warn!(event = "starttls_input_discarded", peer = %self.client.peer, bytes = dropped, "discarded input pipelined behind STARTTLS");
            }
            input.clear();
        } else {
            input.drain(..pos);
        }
        step
    }

    /// Answers the pending `CheckMail`, `CheckRcpt` or `Message` step, writing
    /// its reply to `out`. Call `process` afterwards (it returns `Close` if
    /// this reply used up the error budget).
    pub fn resolve(&mut self, resolution: Resolution, out: &mut Vec<u8>) {
        let Some(pending) = self.pending.take() else {
            tracing::warn!(
                event = "smtp_resolve_without_step",
                peer = %self.client.peer,
                "resolve called with no pending step"
            );
            return;
        };
        let reply = match (pending, resolution) {
            (_, Resolution::Reject(reply)) => {
                // 5xx from policy counts toward the error budget (dictionary
                // attacks); 4xx means trouble on our side, not the client's.
                if reply.is_permanent() {
                    self.reply_error(reply, out);
                } else {
                    if reply.code == 421 {
                        self.closed = true;
                    }
                    reply.write_to(out);
                }
                return;
            }
            (Pending::Auth(user), _) => {
                self.auth_user = Some(user);
                ok(235, (2, 7, 0), "Authentication successful")
            }
            (Pending::Mail(from, params), _) => {
                self.txn = Some(Transaction {
                    from,
                    params,
                    rcpts: Vec::new(),
                    chunks: Chunks::None,
                });
                ok(250, (2, 1, 0), "Ok")
            }
            (Pending::Rcpt(requested), resolution) => {
                let to = match resolution {
                    Resolution::AcceptAs(rewritten) => rewritten,
                    _ => requested,
                };
                if let Some(txn) = &mut self.txn {
                    if !txn.rcpts.contains(&to) {
                        txn.rcpts.push(to);
                    }
                }
                ok(250, (2, 1, 5), "Ok")
            }
            (Pending::Message, Resolution::Queued(id)) => {
                ok(250, (2, 0, 0), format!("Ok: queued as {id}"))
            }
            (Pending::Message, _) => ok(250, (2, 0, 0), "Ok: queued"),
        };
        reply.write_to(out);
    }

    fn pipelining(&self) -> bool {
        self.helo.as_ref().is_some_and(|h| h.esmtp)
    }

    fn advance(&mut self, input: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Step {
        if self.closed {
            return Step::Close;
        }
        if self.pending.is_some() {
            tracing::error!(
                event = "smtp_process_while_pending",
                peer = %self.client.peer,
                "process called before the pending step was resolved"
            );
            Reply::enhanced(421, (4, 3, 0), "Internal error; closing connection").write_to(out);
            self.closed = true;
            return Step::Close;
        }
        loop {
            let avail = &input[*pos..];
            match &mut self.phase {
                Phase::Command => {
                    if avail.is_empty() {
                        return Step::NeedInput;
                    }
                    let max = self.config.max_line_length;
                    let window = &avail[..avail.len().min(max)];
                    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
                        if avail.len() < max {
                            return Step::NeedInput;
                        }
                        // No LF within the limit: never buffer more of this line.
                        // (The LF may be right behind the window: only skip the window.)
                        *pos += window.len();
                        self.phase = Phase::DiscardLine;
                        continue;
                    };
                    let line = &avail[..lf];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    *pos += lf + 1;
                    let after = input.len() - *pos;
                    let step = match self.auth_stage.take() {
                        Some(stage) => self.auth_response(stage, line, out),
                        None => self.command(line, after, out),
                    };
                    if let Some(step) = step {
                        return step;
                    }
                }
                Phase::DiscardLine => match avail.iter().position(|&b| b == b'\n') {
                    None => {
                        *pos = input.len();
                        return Step::NeedInput;
                    }
                    Some(lf) => {
                        *pos += lf + 1;
                        self.phase = Phase::Command;
                        let reply = line_too_long(self.config.max_line_length);
                        if let Some(step) = self.reply_error(reply, out) {
                            return step;
                        }
                    }
                },
                Phase::Data(decoder) => {
                    *pos += decoder.feed(avail);
                    if !decoder.is_done() {
                        return Step::NeedInput;
                    }
                    if let Phase::Data(decoder) = std::mem::replace(&mut self.phase, Phase::Command)
                    {
                        let leftover = *pos < input.len();
                        if let Some(step) = self.end_of_data(decoder, leftover, out) {
                            return step;
                        }
                    }
                }
                Phase::Chunk(chunk) => {
                    let take = usize::try_from(chunk.remaining)
                        .unwrap_or(usize::MAX)
                        .min(avail.len());
                    if take > 0 {
                        if chunk.refusal.is_none() {
                            if let Some(Transaction {
                                chunks: Chunks::Receiving(decoder),
                                ..
                            }) = &mut self.txn
                            {
                                decoder.feed(&avail[..take]);
                            }
                        }
                        chunk.remaining -= take as u64;
                        *pos += take;
                    }
                    if chunk.remaining > 0 {
                        return Step::NeedInput;
                    }
                    if let Phase::Chunk(chunk) = std::mem::replace(&mut self.phase, Phase::Command)
                    {
                        if let Some(step) = self.chunk_done(chunk, out) {
                            return step;
                        }
                    }
                }
            }
        }
    }

    /// Handles one command line; `after` is how many input bytes are buffered behind it.
    fn command(&mut self, line: &[u8], after: usize, out: &mut Vec<u8>) -> Option<Step> {
        let verb = Verb::of_line(line);
        let parsed = parse_command(line);
        let leftover = match &parsed {
            // Chunk data right behind BDAT is expected, not pipelined input.
            Ok(Command::Bdat { size, .. }) => after as u64 > *size,
            // Accepted, STARTTLS drops what follows it (see `process`); refused, it is an
            // ordinary command that ends a pipelined group.
            Ok(Command::StartTls) if self.starttls_refusal().is_none() => false,
            // RFC 4954 4: AUTH PLAIN with its initial response completes in one round trip
            // and may be followed by pipelined commands.
            Ok(Command::Auth {
                mechanism,
                initial: Some(_),
            }) if mechanism == "PLAIN" => false,
            Err(e) if verb == Verb::Bdat => {
                // Without a size the chunk cannot be skipped; its octets would be
                // taken for commands, so end the session here.
                let mut reply = e.reply();
                reply.lines = vec![format!("{}; closing connection", reply.text())];
                reply.write_to(out);
                self.closed = true;
                return Some(Step::Close);
            }
            _ => after > 0,
        };
        if leftover && (!self.pipelining() || verb.ends_pipeline_group()) {
            return Some(self.sync_error(out));
        }
        match parsed {
            Err(e) => {
                let reply = self.sequence_error(e.verb).unwrap_or_else(|| e.reply());
                self.reply_error(reply, out)
            }
            Ok(cmd) => self.execute(cmd, out),
        }
    }

    fn sync_error(&mut self, out: &mut Vec<u8>) -> Step {
        tracing::debug!(event = "smtp_sync_error", peer = %self.client.peer);
        Reply::enhanced(
            554,
            (5, 5, 0),
            "Protocol synchronization error (command sent before the previous reply)",
        )
        .write_to(out);
        self.closed = true;
        Step::Close
    }

    /// Writes a client-caused error reply; past the budget adds 421 and closes.
    fn reply_error(&mut self, reply: Reply, out: &mut Vec<u8>) -> Option<Step> {
        reply.write_to(out);
        self.errors = self.errors.saturating_add(1);
        if self.errors > self.config.max_errors {
            tracing::debug!(event = "smtp_too_many_errors", peer = %self.client.peer);
            Reply::enhanced(
                421,
                (4, 7, 0),
                format!(
                    "{} Too many errors; closing connection",
                    self.config.hostname
                ),
            )
            .write_to(out);
            self.closed = true;
            return Some(Step::Close);
        }
        None
    }

    /// The 503/554 for a command that comes at the wrong point of the dialogue.
    fn sequence_error(&self, verb: Verb) -> Option<Reply> {
        match verb {
            Verb::Mail if self.helo.is_none() => Some(bad_sequence("send EHLO or HELO first")),
            Verb::Mail if self.txn.is_some() => Some(bad_sequence("nested MAIL command")),
            Verb::Rcpt | Verb::Data => match &self.txn {
                None => Some(bad_sequence("send MAIL first")),
                Some(t) if !matches!(t.chunks, Chunks::None) => {
                    Some(bad_sequence("not allowed during a BDAT transfer"))
                }
                Some(t) if verb == Verb::Data && t.rcpts.is_empty() => {
                    Some(Reply::enhanced(554, (5, 5, 1), "No valid recipients"))
                }
                Some(_) => None,
            },
            _ => None,
        }
    }

    fn execute(&mut self, cmd: Command, out: &mut Vec<u8>) -> Option<Step> {
        let verb = match &cmd {
            Command::Mail(..) => Verb::Mail,
            Command::Rcpt(_) => Verb::Rcpt,
            Command::Data => Verb::Data,
            _ => Verb::Unknown,
        };
        if let Some(reply) = self.sequence_error(verb) {
            return self.reply_error(reply, out);
        }
        let reply = match cmd {
            Command::Ehlo(name) => {
                self.txn = None;
                self.helo = Some(Helo { name, esmtp: true });
                let c = &self.config;
                let mut lines = format!(
                    "{}\nPIPELINING\nSIZE {}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nCHUNKING",
                    c.hostname, c.max_message_size
                );
                if self.client.starttls && self.client.tls.is_none() {
                    lines.push_str("\nSTARTTLS");
                }
                if self.auth_available() {
                    lines.push_str("\nAUTH ");
                    lines.push_str(AUTH_MECHANISMS);
                }
                Reply::new(250, None, lines)
            }
            Command::Helo(name) => {
                self.txn = None;
                self.helo = Some(Helo { name, esmtp: false });
                Reply::new(250, None, self.config.hostname.clone())
            }
            Command::Mail(from, params) => return self.mail(from, params, out),
            Command::Rcpt(to) => return self.rcpt(to, out),
            Command::Data => {
                let mut decoder = DataDecoder::dot_stuffed(DataLimits::from(&*self.config));
                if let Some(size) = self.txn.as_ref().and_then(|t| t.params.size) {
                    decoder.reserve(size);
                }
                self.phase = Phase::Data(decoder);
                Reply::new(354, None, "End data with <CR><LF>.<CR><LF>")
            }
            Command::Bdat { size, last } => {
                self.bdat(size, last);
                return None;
            }
            Command::Rset => {
                self.txn = None;
                ok(250, (2, 0, 0), "Ok")
            }
            Command::Noop => ok(250, (2, 0, 0), "Ok"),
            Command::StartTls => {
                if let Some(reply) = self.starttls_refusal() {
                    return self.reply_error(reply, out);
                }
                ok(220, (2, 0, 0), "Ready to start TLS").write_to(out);
                return Some(Step::StartTls);
            }
            Command::Auth { mechanism, initial } => return self.auth(&mechanism, initial, out),
            Command::Quit => {
                ok(
                    221,
                    (2, 0, 0),
                    format!("{} closing connection", self.config.hostname),
                )
                .write_to(out);
                self.closed = true;
                return Some(Step::Close);
            }
            Command::Vrfy => ok(
                252,
                (2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Command::Help => ok(
                214,
                (2, 0, 0),
                "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
            ),
        };
        reply.write_to(out);
        None
    }

    fn mail(&mut self, from: ReversePath, params: MailParams, out: &mut Vec<u8>) -> Option<Step> {
        if self.client.require_tls && self.client.tls.is_none() {
            let reply = Reply::enhanced(530, (5, 7, 0), "Must issue a STARTTLS command first");
            return self.reply_error(reply, out);
        }
        if self.client.require_auth && self.auth_user.is_none() {
            let reply = Reply::enhanced(530, (5, 7, 0), "Authentication required");
            return self.reply_error(reply, out);
        }
        if params.auth.is_some() && !self.auth_available() {
            // RFC 4954 5: the parameter exists only where AUTH is offered.
            let reply = Reply::enhanced(555, (5, 5, 4), "Unsupported parameter AUTH");
            return self.reply_error(reply, out);
        }
        if params.any() && !self.pipelining() {
            let reply = Reply::enhanced(555, (5, 5, 4), "MAIL parameters require EHLO");
            return self.reply_error(reply, out);
        }
        if params
            .size
            .is_some_and(|s| s > self.config.max_message_size)
        {
            return self.reply_error(too_big(self.config.max_message_size), out);
        }
        self.pending = Some(Pending::Mail(from.clone(), params.clone()));
        Some(Step::CheckMail(MailRequest { from, params }))
    }

    fn rcpt(&mut self, to: Mailbox, out: &mut Vec<u8>) -> Option<Step> {
        let txn = self.txn.as_ref()?;
        if !to.is_ascii() && !txn.params.smtputf8 {
            let reply = Reply::enhanced(
                553,
                (5, 6, 7),
                "Non-ASCII address requires the SMTPUTF8 parameter on MAIL FROM",
            );
            return self.reply_error(reply, out);
        }
        if txn.rcpts.len() >= self.config.max_recipients {
            // Not an error budget matter: RFC 5321 4.5.3.1.10 expects the client
            // to send the rest in another transaction.
            Reply::enhanced(452, (4, 5, 3), "Too many recipients").write_to(out);
            return None;
        }
        let bounce = self.config.is_bounce_address(&to);
        if !self.client.relay_allowed && self.auth_user.is_none() && !bounce {
            let reply = Reply::enhanced(554, (5, 7, 1), "Relay access denied");
            return self.reply_error(reply, out);
        }
        if txn
            .rcpts
            .first()
            .is_some_and(|first| self.config.is_bounce_address(first) != bounce)
        {
            // A returned DSN is dropped after parsing and other mail is queued: one
            // transaction cannot be both. Like too many recipients, the client sends the
            // rest in another transaction (RFC 5321 4.5.3.1.10), so no error budget.
            Reply::enhanced(
                452,
                (4, 5, 3),
                "Bounce addresses and other recipients need separate transactions",
            )
            .write_to(out);
            return None;
        }
        let request = RcptRequest {
            to: to.clone(),
            mail_from: txn.from.clone(),
            params: txn.params.clone(),
            bounce,
            auth_user: self.auth_user.clone(),
            tls: self.client.tls.is_some(),
        };
        self.pending = Some(Pending::Rcpt(to));
        Some(Step::CheckRcpt(request))
    }

    /// Why STARTTLS cannot be used now, if it cannot.
    fn starttls_refusal(&self) -> Option<Reply> {
        if self.client.tls.is_some() {
            Some(bad_sequence("TLS is already active"))
        } else if !self.client.starttls {
            Some(Reply::enhanced(502, (5, 5, 1), "STARTTLS not available"))
        } else if !self.pipelining() {
            Some(bad_sequence("send EHLO first"))
        } else if self.txn.is_some() {
            Some(bad_sequence("not allowed during a mail transaction"))
        } else {
            None
        }
    }

    /// `AUTH mechanism [initial-response]` (RFC 4954).
    fn auth(
        &mut self,
        mechanism: &str,
        initial: Option<String>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let refusal = if self.client.auth == AuthOffer::Never {
            Some(Reply::enhanced(
                502,
                (5, 5, 1),
                "Authentication not available",
            ))
        } else if !self.pipelining() {
            Some(bad_sequence("send EHLO first"))
        } else if self.auth_user.is_some() {
            Some(bad_sequence("already authenticated"))
        } else if self.txn.is_some() {
            Some(bad_sequence("not allowed during a mail transaction"))
        } else if !self.auth_available() {
            Some(Reply::enhanced(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism (use STARTTLS)",
            ))
        } else if mechanism != "PLAIN" && mechanism != "LOGIN" {
            Some(Reply::enhanced(
                504,
                (5, 5, 4),
                "Unrecognized authentication type",
            ))
        } else {
            None
        };
        if let Some(reply) = refusal {
            return self.reply_error(reply, out);
        }
        let stage = if mechanism == "PLAIN" {
            AuthStage::Plain
        } else {
            AuthStage::LoginUser
        };
        match initial {
            // "=" is an empty initial response (RFC 4954 4).
            Some(response) => self.auth_response(stage, response.as_bytes(), out),
            None => {
                let challenge = match stage {
                    AuthStage::Plain => "",
                    _ => LOGIN_USERNAME,
                };
                Reply::new(334, None, challenge).write_to(out);
                self.auth_stage = Some(stage);
                None
            }
        }
    }

    /// One SASL response line of an AUTH exchange.
    fn auth_response(&mut self, stage: AuthStage, line: &[u8], out: &mut Vec<u8>) -> Option<Step> {
        if line == b"*" {
            let reply = Reply::enhanced(501, (5, 0, 0), "Authentication cancelled");
            return self.reply_error(reply, out);
        }
        let decoded = if line == b"=" {
            Some(Vec::new())
        } else {
            decode_base64(line)
        };
        let Some(decoded) = decoded else {
            let reply = Reply::enhanced(501, (5, 5, 2), "Invalid base64 data in SASL response");
            return self.reply_error(reply, out);
        };
        let request = match stage {
            AuthStage::Plain => match parse_plain(&decoded) {
                Some((user, password)) => AuthRequest {
                    mechanism: "PLAIN",
                    user,
                    password,
                    tls: self.client.tls.is_some(),
                },
                None => {
                    let reply = Reply::enhanced(
                        501,
                        (5, 5, 2),
                        "Malformed AUTH PLAIN response (expected authzid NUL user NUL password)",
                    );
                    return self.reply_error(reply, out);
                }
            },
            AuthStage::LoginUser => match String::from_utf8(decoded) {
                Ok(user) if valid_user_name(&user) => {
                    Reply::new(334, None, LOGIN_PASSWORD).write_to(out);
                    self.auth_stage = Some(AuthStage::LoginPassword(user));
                    return None;
                }
                _ => {
                    let reply = Reply::enhanced(501, (5, 5, 2), "Malformed user name");
                    return self.reply_error(reply, out);
                }
            },
            AuthStage::LoginPassword(user) => AuthRequest {
                mechanism: "LOGIN",
                user,
                password: decoded,
                tls: self.client.tls.is_some(),
            },
        };
        self.pending = Some(Pending::Auth(request.user.clone()));
        Some(Step::Authenticate(request))
    }

    /// Starts reading a BDAT chunk; a refused chunk is still read, then answered.
    fn bdat(&mut self, size: u64, last: bool) {
        let txn_effect = if last {
            TxnEffect::End
        } else {
            TxnEffect::Fail
        };
        let limits = DataLimits::from(&*self.config);
        let refusal = match (&self.helo, &mut self.txn) {
            (None, _) => Some((bad_sequence("send EHLO first"), TxnEffect::Keep)),
            (Some(h), _) if !h.esmtp => Some((
                Reply::enhanced(
                    502,
                    (5, 5, 1),
                    "BDAT requires EHLO (CHUNKING is not offered after HELO)",
                ),
                TxnEffect::Keep,
            )),
            (_, None) => Some((bad_sequence("send MAIL first"), TxnEffect::Keep)),
            (_, Some(t)) => match t.chunks {
                Chunks::Failed => Some((
                    bad_sequence("a previous BDAT chunk failed; send RSET"),
                    txn_effect,
                )),
                _ if t.rcpts.is_empty() => Some((
                    Reply::enhanced(554, (5, 5, 1), "No valid recipients"),
                    txn_effect,
                )),
                Chunks::None => {
                    let mut decoder = DataDecoder::chunked(limits);
                    decoder.reserve(t.params.size.unwrap_or(size));
                    t.chunks = Chunks::Receiving(decoder);
                    None
                }
                Chunks::Receiving(_) => None,
            },
        };
        self.phase = Phase::Chunk(ChunkState {
            remaining: size,
            size,
            last,
            refusal,
        });
    }

    fn chunk_done(&mut self, chunk: ChunkState, out: &mut Vec<u8>) -> Option<Step> {
        if let Some((reply, effect)) = chunk.refusal {
            match effect {
                TxnEffect::Keep => {}
                TxnEffect::Fail => {
                    if let Some(t) = &mut self.txn {
                        t.chunks = Chunks::Failed;
                    }
                }
                TxnEffect::End => self.txn = None,
            }
            return self.reply_error(reply, out);
        }
        let txn = self.txn.as_mut()?;
        let Chunks::Receiving(decoder) = &mut txn.chunks else {
            return None;
        };
        if let Some(e) = decoder.error() {
            if chunk.last {
                self.txn = None;
            } else {
                txn.chunks = Chunks::Failed;
            }
            return self.reply_error(e.reply(), out);
        }
        if !chunk.last {
            ok(250, (2, 0, 0), format!("{} octets received", chunk.size)).write_to(out);
            return None;
        }
        let txn = self.txn.take()?;
        let Chunks::Receiving(decoder) = txn.chunks else {
            return None;
        };
        let txn = Transaction {
            chunks: Chunks::None,
            ..txn
        };
        self.finish_message(txn, decoder, out)
    }

    fn end_of_data(
        &mut self,
        decoder: DataDecoder,
        leftover: bool,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        // The transaction ends here whatever happens to the message.
        let txn = self.txn.take();
        if leftover && !self.pipelining() {
            return Some(self.sync_error(out));
        }
        self.finish_message(txn?, decoder, out)
    }

    fn finish_message(
        &mut self,
        txn: Transaction,
        decoder: DataDecoder,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let decoded = match decoder.finish() {
            Ok(d) => d,
            Err(e) => return self.reply_error(e.reply(), out),
        };
        let (helo, esmtp) = match &self.helo {
            Some(h) => (h.name.clone(), h.esmtp),
            None => (String::new(), false),
        };
        self.pending = Some(Pending::Message);
        let bounce =
            !txn.rcpts.is_empty() && txn.rcpts.iter().all(|r| self.config.is_bounce_address(r));
        Some(Step::Message(Box::new(IncomingMessage {
            helo,
            esmtp,
            smtputf8: txn.params.smtputf8,
            mail_from: txn.from,
            params: txn.params,
            recipients: txn.rcpts,
            body: decoded.body,
            eight_bit: decoded.eight_bit,
            protocol: protocol_name(esmtp, self.client.tls.is_some(), self.auth_user.is_some()),
            bounce,
            auth_user: self.auth_user.clone(),
            tls: self.client.tls.clone(),
        })))
    }
}

/// The `with` protocol name of the Received field (RFC 3848): ESMTP, plus S over TLS, plus A
/// after a login.
fn protocol_name(esmtp: bool, tls: bool, auth: bool) -> &'static str {
    match (esmtp, tls, auth) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    }
}

/// Standard base64 with padding, as SASL uses it (RFC 4954 4); `None` if it is not.
fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// `[authzid] NUL authcid NUL passwd` (RFC 4616). An authorization identity other than the
/// user's own is refused: nobody may act for another user.
fn parse_plain(decoded: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut fields = decoded.splitn(3, |&b| b == 0);
    let authzid = fields.next()?;
    let user = std::str::from_utf8(fields.next()?).ok()?;
    let password = fields.next()?;
    if !valid_user_name(user) || (!authzid.is_empty() && authzid != user.as_bytes()) {
        return None;
    }
    Some((user.to_owned(), password.to_vec()))
}

/// A user name as the relay stores them: 1-254 bytes, no spaces, controls or colons.
fn valid_user_name(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 254
        && user
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a session like the I/O layer would, answering every step.
    struct Client {
        session: Session,
        input: Vec<u8>,
        out: Vec<u8>,
        messages: Vec<IncomingMessage>,
        mails: Vec<MailRequest>,
        rcpts: Vec<RcptRequest>,
        closed: bool,
        mail_answer: Resolution,
        rcpt_answer: Resolution,
        message_answer: Option<Resolution>,
        /// Logins asked for, and the answer they get.
        logins: Vec<AuthRequest>,
        login_answer: Resolution,
        /// STARTTLS handshakes the client went through.
        handshakes: u32,
    }

    fn config() -> SessionConfig {
        SessionConfig {
            hostname: "relay.test".into(),
            max_message_size: 10_000,
            max_recipients: 3,
            max_line_length: 100,
            max_errors: 5,
            max_hops: 3,
            bare_line_ending: BareLineEnding::Reject,
            bounce_domains: vec!["bounces.test".into()],
        }
    }

    impl Client {
        fn with(config: SessionConfig, relay_allowed: bool) -> Client {
            let client = ClientInfo::new("127.0.0.1".parse().unwrap(), relay_allowed);
            Client::with_client(config, client)
        }

        fn with_client(config: SessionConfig, client: ClientInfo) -> Client {
            Client {
                session: Session::new(Arc::new(config), client),
                input: Vec::new(),
                out: Vec::new(),
                messages: Vec::new(),
                mails: Vec::new(),
                rcpts: Vec::new(),
                closed: false,
                mail_answer: Resolution::Accept,
                rcpt_answer: Resolution::Accept,
                message_answer: None,
                logins: Vec::new(),
                login_answer: Resolution::Accept,
                handshakes: 0,
            }
        }

        fn new() -> Client {
            Client::with(config(), true)
        }

        /// A client that has already said EHLO.
        fn ehlo() -> Client {
            let mut c = Client::new();
            c.send("EHLO client.test\r\n");
            c
        }

        /// A client inside a transaction with one recipient.
        fn in_transaction() -> Client {
            let mut c = Client::ehlo();
            c.send("MAIL FROM:<a@example.com>\r\n");
            c.send("RCPT TO:<b@example.net>\r\n");
            c
        }

        /// Sends bytes in one read and returns the replies they produced.
        fn send(&mut self, data: impl AsRef<[u8]>) -> String {
            self.input.extend_from_slice(data.as_ref());
            self.drive();
            String::from_utf8_lossy(&std::mem::take(&mut self.out)).into_owned()
        }

        /// Sends bytes one read per byte.
        fn send_bytewise(&mut self, data: impl AsRef<[u8]>) -> String {
            for &b in data.as_ref() {
                self.input.push(b);
                self.drive();
            }
            String::from_utf8_lossy(&std::mem::take(&mut self.out)).into_owned()
        }

        fn drive(&mut self) {
            loop {
                match self.session.process(&mut self.input, &mut self.out) {
                    Step::NeedInput => return,
                    Step::Close => {
                        self.closed = true;
                        return;
                    }
                    Step::CheckMail(m) => {
                        self.mails.push(m);
                        self.session
                            .resolve(self.mail_answer.clone(), &mut self.out);
                    }
                    Step::CheckRcpt(r) => {
                        self.rcpts.push(r);
                        self.session
                            .resolve(self.rcpt_answer.clone(), &mut self.out);
                    }
                    Step::StartTls => {
                        self.handshakes += 1;
                        self.session
                            .tls_started("TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256".into());
                    }
                    Step::Authenticate(request) => {
                        self.logins.push(request);
                        self.session
                            .resolve(self.login_answer.clone(), &mut self.out);
                    }
                    Step::Message(m) => {
                        self.messages.push(*m);
                        let answer = self.message_answer.clone().unwrap_or_else(|| {
                            Resolution::Queued(format!("Q{}", self.messages.len()))
                        });
                        self.session.resolve(answer, &mut self.out);
                    }
                }
            }
        }
    }

    fn codes(replies: &str) -> Vec<String> {
        replies
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut words = l.splitn(3, ' ');
                let code = words.next().unwrap_or("");
                match words.next() {
                    Some(w)
                        if w.chars().next().is_some_and(|c| c.is_ascii_digit())
                            && w.contains('.') =>
                    {
                        format!("{code} {w}")
                    }
                    _ => code.to_owned(),
                }
            })
            .collect()
    }

    // ---- greeting, EHLO, HELO ----

    #[test]
    fn rcpt_accepted_as_a_rewritten_address_is_queued_for_the_new_one() {
        let mut c = Client::ehlo();
        c.rcpt_answer = Resolution::AcceptAs(Mailbox::parse("new@example.org").unwrap());
        c.send("MAIL FROM:<a@example.com>\r\n");
        let reply = c.send("RCPT TO:<old@example.net>\r\n");
        assert!(reply.starts_with("250 2.1.5"), "{reply}");
        c.send("DATA\r\n");
        c.send("Subject: x\r\n\r\nbody\r\n.\r\n");
        assert_eq!(c.messages.len(), 1);
        assert_eq!(
            c.messages[0].recipients,
            vec![Mailbox::parse("new@example.org").unwrap()]
        );
    }

    #[test]
    fn greeting_names_the_host_without_enhanced_code() {
        let c = Client::new();
        assert_eq!(
            c.session.greeting().to_string(),
            "220 relay.test ESMTP ready"
        );
    }

    #[test]
    fn ehlo_advertises_the_extensions() {
        let mut c = Client::new();
        assert_eq!(
            c.send("EHLO client.test\r\n"),
            "250-relay.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
        );
        assert_eq!(c.session.helo(), Some("client.test"));
    }

    #[test]
    fn helo_offers_no_extensions() {
        let mut c = Client::new();
        assert_eq!(c.send("HELO client.test\r\n"), "250 relay.test\r\n");
    }

    #[test]
    fn ehlo_without_name_is_a_syntax_error() {
        let mut c = Client::new();
        assert_eq!(c.send("EHLO\r\n"), "501 5.5.4 Syntax: EHLO hostname\r\n");
    }

    // ---- simple commands ----

    #[test]
    fn simple_commands_have_the_documented_replies() {
        let mut c = Client::ehlo();
        assert_eq!(c.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
        assert_eq!(c.send("RSET\r\n"), "250 2.0.0 Ok\r\n");
        assert_eq!(
            c.send("VRFY postmaster\r\n"),
            "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
        );
        assert!(c.send("HELP\r\n").starts_with("214 2.0.0 "));
        assert_eq!(
            c.send("EXPN staff\r\n"),
            "502 5.5.1 Command not implemented\r\n"
        );
        assert_eq!(
            c.send("ETRN example.com\r\n"),
            "502 5.5.1 Command not implemented\r\n"
        );
        assert_eq!(c.send("TURN\r\n"), "502 5.5.1 Command not implemented\r\n");
        assert_eq!(c.send("XYZZY\r\n"), "500 5.5.2 Command not recognized\r\n");
        assert!(!c.closed);
    }

    #[test]
    fn quit_says_goodbye_and_closes() {
        let mut c = Client::ehlo();
        assert_eq!(
            c.send("QUIT\r\n"),
            "221 2.0.0 relay.test closing connection\r\n"
        );
        assert!(c.closed && c.session.is_closed());
        assert_eq!(c.send("NOOP\r\n"), "");
    }

    #[test]
    fn command_ending_in_bare_lf_is_accepted() {
        let mut c = Client::new();
        assert!(c.send("EHLO x\n").starts_with("250-relay.test"));
        assert_eq!(c.send("NOOP\n"), "250 2.0.0 Ok\r\n");
    }

    #[test]
    fn partial_command_waits_for_the_rest() {
        let mut c = Client::ehlo();
        assert_eq!(c.send("NO"), "");
        assert_eq!(c.input, b"NO");
        assert_eq!(c.send("OP\r\n"), "250 2.0.0 Ok\r\n");
        assert!(c.input.is_empty());
    }

    // ---- sequence errors ----

    #[test]
    fn mail_before_ehlo_is_a_sequence_error() {
        let mut c = Client::new();
        assert_eq!(
            c.send("MAIL FROM:<a@b.c>\r\n"),
            "503 5.5.1 Bad sequence of commands: send EHLO or HELO first\r\n"
        );
        // Sequence errors win over syntax errors.
        assert_eq!(codes(&c.send("MAIL FROM:junk\r\n")), ["503 5.5.1"]);
    }

    #[test]
    fn rcpt_before_mail_is_a_sequence_error() {
        let mut c = Client::ehlo();
        assert_eq!(
            c.send("RCPT TO:<a@b.c>\r\n"),
            "503 5.5.1 Bad sequence of commands: send MAIL first\r\n"
        );
        assert_eq!(codes(&c.send("RCPT TO:junk\r\n")), ["503 5.5.1"]);
    }

    #[test]
    fn data_without_mail_or_recipients_is_refused() {
        let mut c = Client::ehlo();
        assert_eq!(codes(&c.send("DATA\r\n")), ["503 5.5.1"]);
        c.send("MAIL FROM:<a@b.c>\r\n");
        assert_eq!(c.send("DATA\r\n"), "554 5.5.1 No valid recipients\r\n");
        assert!(!c.session.expects_data());
    }

    #[test]
    fn nested_mail_is_a_sequence_error() {
        let mut c = Client::ehlo();
        assert_eq!(c.send("MAIL FROM:<a@b.c>\r\n"), "250 2.1.0 Ok\r\n");
        assert_eq!(
            c.send("MAIL FROM:<a@b.c>\r\n"),
            "503 5.5.1 Bad sequence of commands: nested MAIL command\r\n"
        );
    }

    #[test]
    fn rset_and_ehlo_reset_the_transaction() {
        let mut c = Client::in_transaction();
        c.send("RSET\r\n");
        assert_eq!(codes(&c.send("RCPT TO:<x@y.z>\r\n")), ["503 5.5.1"]);
        c.send("MAIL FROM:<a@b.c>\r\n");
        c.send("EHLO again\r\n");
        assert_eq!(codes(&c.send("RCPT TO:<x@y.z>\r\n")), ["503 5.5.1"]);
        assert_eq!(c.send("MAIL FROM:<a@b.c>\r\n"), "250 2.1.0 Ok\r\n");
    }

    // ---- MAIL and RCPT ----

    #[test]
    fn mail_step_carries_sender_and_params() {
        let mut c = Client::ehlo();
        let r = c.send("MAIL FROM:<a@b.c> SIZE=500 BODY=8BITMIME\r\n");
        assert_eq!(r, "250 2.1.0 Ok\r\n");
        assert_eq!(c.mails[0].from.to_string(), "a@b.c");
        assert_eq!(c.mails[0].params.size, Some(500));
    }

    #[test]
    fn mail_size_over_limit_is_refused_before_the_check() {
        let mut c = Client::ehlo();
        assert_eq!(
            c.send("MAIL FROM:<a@b.c> SIZE=10001\r\n"),
            "552 5.3.4 Message size exceeds fixed maximum message size (10000 bytes)\r\n"
        );
        assert!(c.mails.is_empty());
    }

    #[test]
    fn mail_params_require_ehlo() {
        let mut c = Client::new();
        c.send("HELO x\r\n");
        assert_eq!(
            codes(&c.send("MAIL FROM:<a@b.c> SIZE=10\r\n")),
            ["555 5.5.4"]
        );
        assert_eq!(
            codes(&c.send("MAIL FROM:<a@b.c> BODY=BINARYMIME\r\n")),
            ["555 5.5.4"]
        );
        assert_eq!(c.send("MAIL FROM:<a@b.c>\r\n"), "250 2.1.0 Ok\r\n");
    }

    #[test]
    fn refused_mail_starts_no_transaction() {
        let mut c = Client::ehlo();
        c.mail_answer = Resolution::Reject(Reply::enhanced(
            452,
            (4, 3, 1),
            "Insufficient system storage",
        ));
        assert_eq!(
            c.send("MAIL FROM:<a@b.c>\r\n"),
            "452 4.3.1 Insufficient system storage\r\n"
        );
        assert_eq!(codes(&c.send("RCPT TO:<x@y.z>\r\n")), ["503 5.5.1"]);
    }

    #[test]
    fn rcpt_step_carries_envelope() {
        let mut c = Client::ehlo();
        c.send("MAIL FROM:<> SMTPUTF8\r\n");
        assert_eq!(c.send("RCPT TO:<B@Example.NET>\r\n"), "250 2.1.5 Ok\r\n");
        assert_eq!(c.rcpts[0].to.to_string(), "B@example.net");
        assert!(c.rcpts[0].mail_from.is_null());
        assert!(c.rcpts[0].params.smtputf8);
    }

    #[test]
    fn refused_rcpt_is_passed_through_and_not_added() {
        let mut c = Client::ehlo();
        c.send("MAIL FROM:<a@b.c>\r\n");
        c.rcpt_answer = Resolution::Reject(Reply::enhanced(550, (5, 1, 1), "No such user"));
        assert_eq!(c.send("RCPT TO:<x@y.z>\r\n"), "550 5.1.1 No such user\r\n");
        assert_eq!(c.send("DATA\r\n"), "554 5.5.1 No valid recipients\r\n");
    }

    #[test]
    fn non_relay_client_gets_relay_denied_without_a_step() {
        let mut c = Client::with(config(), false);
        c.send("EHLO x\r\n");
        c.send("MAIL FROM:<a@b.c>\r\n");
        assert_eq!(
            c.send("RCPT TO:<x@y.z>\r\n"),
            "554 5.7.1 Relay access denied\r\n"
        );
        assert!(c.rcpts.is_empty());
        assert_eq!(c.mails.len(), 1);
    }

    #[test]
    fn bounce_address_is_accepted_from_a_non_relay_client_as_a_bounce_transaction() {
        let mut c = Client::with(config(), false);
        c.send("EHLO mx.example.net\r\n");
        c.send("MAIL FROM:<>\r\n");
        assert_eq!(c.send("RCPT TO:<b@Bounces.Test>\r\n"), "250 2.1.5 Ok\r\n");
        assert!(c.rcpts[0].bounce);
        assert_eq!(
            c.send("RCPT TO:<x@y.z>\r\n"),
            "554 5.7.1 Relay access denied\r\n"
        );
        c.send("DATA\r\n");
        c.send("Subject: dsn\r\n\r\nx\r\n.\r\n");
        assert_eq!(c.messages.len(), 1);
        assert!(c.messages[0].bounce);
    }

    #[test]
    fn bounce_and_other_recipients_are_never_mixed_in_one_transaction() {
        let mut c = Client::ehlo();
        c.send("MAIL FROM:<a@b.c>\r\n");
        assert_eq!(c.send("RCPT TO:<x@y.z>\r\n"), "250 2.1.5 Ok\r\n");
        assert_eq!(
            c.send("RCPT TO:<b@bounces.test>\r\n"),
            "452 4.5.3 Bounce addresses and other recipients need separate transactions\r\n"
        );
        c.send("RSET\r\nMAIL FROM:<>\r\n");
        assert_eq!(c.send("RCPT TO:<b@bounces.test>\r\n"), "250 2.1.5 Ok\r\n");
        assert_eq!(codes(&c.send("RCPT TO:<x@y.z>\r\n")), ["452 4.5.3"]);
        c.send("DATA\r\n");
        c.send("x\r\n.\r\n");
        assert!(c.messages[0].bounce);
        assert_eq!(c.messages[0].recipients.len(), 1);
    }

    #[test]
    fn ordinary_messages_are_not_bounce_transactions() {
        let mut c = Client::in_transaction();
        c.send("DATA\r\n");
        c.send("x\r\n.\r\n");
        assert!(!c.messages[0].bounce);
        assert!(!c.rcpts[0].bounce);
    }

    #[test]
    fn too_many_recipients_get_452_without_using_the_error_budget() {
        let mut c = Client::ehlo();
        c.send("MAIL FROM:<a@b.c>\r\n");
        for i in 0..3 {
            assert_eq!(
                c.send(format!("RCPT TO:<r{i}@y.z>\r\n")),
                "250 2.1.5 Ok\r\n"
            );
        }
        for i in 0..10 {
            assert_eq!(
                c.send(format!("RCPT TO:<s{i}@y.z>\r\n")),
                "452 4.5.3 Too many recipients\r\n"
            );
        }
        assert!(!c.closed);
    }

    #[test]
    fn duplicate_recipient_is_kept_once() {
        let mut c = Client::in_transaction();
        assert_eq!(c.send("RCPT TO:<b@example.net>\r\n"), "250 2.1.5 Ok\r\n");
        c.send("DATA\r\n");
        c.send("x\r\n.\r\n");
        assert_eq!(c.messages[0].recipients.len(), 1);
    }

    #[test]
    fn recipient_without_domain_is_refused() {
        let mut c = Client::ehlo();
        c.send("MAIL FROM:<a@b.c>\r\n");
        assert_eq!(codes(&c.send("RCPT TO:<postmaster>\r\n")), ["550 5.1.3"]);
        assert_eq!(codes(&c.send("RCPT TO:<a@@b>\r\n")), ["501 5.1.3"]);
        assert_eq!(codes(&c.send("MAIL FROM:<a@@b>\r\n")), ["503 5.5.1"]);
        c.send("RSET\r\n");
        assert_eq!(codes(&c.send("MAIL FROM:<a@@b>\r\n")), ["501 5.1.7"]);
    }

    #[test]
    fn utf8_recipient_needs_smtputf8_on_mail() {
        let mut c = Client::ehlo();
        c.send("MAIL FROM:<a@b.c>\r\n");
        assert_eq!(
            codes(&c.send("RCPT TO:<j\u{f6}rg@b\u{fc}cher.example>\r\n")),
            ["553 5.6.7"]
        );
        c.send("RSET\r\n");
        c.send("MAIL FROM:<a@b.c> SMTPUTF8\r\n");
        assert_eq!(
            c.send("RCPT TO:<j\u{f6}rg@b\u{fc}cher.example>\r\n"),
            "250 2.1.5 Ok\r\n"
        );
        c.send("DATA\r\n");
        c.send("x\r\n.\r\n");
        assert!(c.messages[0].smtputf8);
    }

    #[test]
    fn unknown_params_get_555() {
        let mut c = Client::ehlo();
        assert_eq!(
            codes(&c.send("MAIL FROM:<a@b.c> RET=FULL\r\n")),
            ["555 5.5.4"]
        );
        c.send("MAIL FROM:<a@b.c>\r\n");
        assert_eq!(
            codes(&c.send("RCPT TO:<x@y.z> NOTIFY=NEVER\r\n")),
            ["555 5.5.4"]
        );
    }

    // ---- DATA ----

    #[test]
    fn data_transaction_produces_a_message() {
        let mut c = Client::in_transaction();
        assert_eq!(
            c.send("DATA\r\n"),
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        );
        assert!(c.session.expects_data());
        assert_eq!(
            c.send("Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n"),
            "250 2.0.0 Ok: queued as Q1\r\n"
        );
        let m = &c.messages[0];
        assert_eq!(m.helo, "client.test");
        assert!(m.esmtp);
        assert_eq!(m.protocol, "ESMTP");
        assert_eq!(m.mail_from.to_string(), "a@example.com");
        assert_eq!(m.recipients[0].to_string(), "b@example.net");
        assert_eq!(m.body, b"Subject: hi\r\n\r\n.dot\r\nbody\r\n");
        assert!(!m.eight_bit && !m.smtputf8);
        // The transaction is over; the session goes on.
        assert_eq!(codes(&c.send("RCPT TO:<x@y.z>\r\n")), ["503 5.5.1"]);
        assert_eq!(c.send("MAIL FROM:<a@b.c>\r\n"), "250 2.1.0 Ok\r\n");
    }

    #[test]
    fn helo_session_is_plain_smtp() {
        let mut c = Client::new();
        c.send("HELO old.client\r\n");
        c.send("MAIL FROM:<a@b.c>\r\n");
        c.send("RCPT TO:<x@y.z>\r\n");
        c.send("DATA\r\n");
        c.send("h\u{e9}\r\n.\r\n");
        let m = &c.messages[0];
        assert!(!m.esmtp);
        assert_eq!(m.protocol, "SMTP");
        assert!(m.eight_bit);
    }

    #[test]
    fn refused_message_reply_is_passed_through_and_ends_the_transaction() {
        let mut c = Client::in_transaction();
        c.message_answer = Some(Resolution::Reject(Reply::enhanced(
            451,
            (4, 3, 0),
            "Spool error",
        )));
        c.send("DATA\r\n");
        assert_eq!(c.send("x\r\n.\r\n"), "451 4.3.0 Spool error\r\n");
        assert_eq!(codes(&c.send("DATA\r\n")), ["503 5.5.1"]);
    }

    #[test]
    fn accept_without_id_still_confirms_queueing() {
        let mut c = Client::in_transaction();
        c.message_answer = Some(Resolution::Accept);
        c.send("DATA\r\n");
        assert_eq!(c.send("x\r\n.\r\n"), "250 2.0.0 Ok: queued\r\n");
    }

    #[test]
    fn message_over_size_limit_is_refused_after_its_end() {
        let mut c = Client::in_transaction();
        c.send("DATA\r\n");
        let line = format!("{}\r\n", "x".repeat(90));
        for _ in 0..200 {
            assert_eq!(c.send(&line), "");
        }
        assert_eq!(
            c.send(".\r\n"),
            "552 5.3.4 Message size exceeds fixed maximum message size (10000 bytes)\r\n"
        );
        assert!(c.messages.is_empty());
        assert_eq!(c.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
    }

    #[test]
    fn data_line_over_limit_is_refused_after_the_end() {
        let mut c = Client::in_transaction();
        c.send("DATA\r\n");
        assert_eq!(c.send("x".repeat(5000)), "");
        assert!(c.input.is_empty(), "content is never buffered");
        assert_eq!(
            c.send("\r\n.\r\n"),
            "500 5.5.2 Line too long (max 100 bytes including CRLF)\r\n"
        );
        assert!(c.messages.is_empty());
    }

    #[test]
    fn too_many_hops_is_refused() {
        let mut c = Client::in_transaction();
        c.send("DATA\r\n");
        let r =
            c.send("Received: a\r\nReceived: b\r\nReceived: c\r\nReceived: d\r\n\r\nx\r\n.\r\n");
        assert_eq!(r, "554 5.4.6 Too many hops, possible mail loop\r\n");
        let mut c = Client::in_transaction();
        c.send("DATA\r\n");
        let r = c.send("Received: a\r\nReceived: b\r\nReceived: c\r\n\r\nx\r\n.\r\n");
        assert_eq!(codes(&r), ["250 2.0.0"]);
    }

    #[test]
    fn bare_lf_in_data_is_refused_by_default() {
        let mut c = Client::in_transaction();
        c.send("DATA\r\n");
        assert_eq!(
            c.send("a\nb\r\n.\r\n"),
            "550 5.6.0 Message contains a bare <LF> or <CR>; lines must end with <CR><LF> (RFC 5321 2.3.8)\r\n"
        );
        assert!(c.messages.is_empty());
    }

    #[test]
    fn bare_lf_in_data_is_normalized_when_configured() {
        let mut cfg = config();
        cfg.bare_line_ending = BareLineEnding::Normalize;
        let mut c = Client::with(cfg, true);
        c.send(
            "EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n"
                .split_inclusive("\r\n")
                .collect::<Vec<_>>()[0],
        );
        c.send("MAIL FROM:<a@b.c>\r\n");
        c.send("RCPT TO:<d@e.f>\r\n");
        c.send("DATA\r\n");
        assert_eq!(codes(&c.send("a\nb\r\n.\r\n")), ["250 2.0.0"]);
        assert_eq!(c.messages[0].body, b"a\r\nb\r\n");
        c.send("MAIL FROM:<a@b.c>\r\n");
        c.send("RCPT TO:<d@e.f>\r\n");
        c.send("DATA\r\n");
        assert_eq!(codes(&c.send("a\rb\r\n.\r\n")), ["550 5.6.0"]);
    }

    #[test]
    fn data_decoding_is_independent_of_read_sizes() {
        let content: &[u8] = b"Subject: x\r\n\r\n..a\r\nb\n.\r\nc\r\n.\r\n";
        let mut expected = None;
        for split in 1..content.len() {
            let mut c = Client::in_transaction();
            c.send("DATA\r\n");
            let mut out = String::new();
            for piece in content.chunks(split) {
                out.push_str(&c.send(piece));
            }
            let result = (
                out,
                c.messages
                    .iter()
                    .map(|m| m.body.clone())
                    .collect::<Vec<_>>(),
            );
            match &expected {
                None => expected = Some(result),
                Some(e) => assert_eq!(&result, e, "split {split}"),
            }
        }
    }

    // ---- command line length ----

    #[test]
    fn long_command_line_is_refused_and_discarded() {
        let mut c = Client::ehlo();
        let long = format!("NOOP {}", "x".repeat(300));
        assert_eq!(c.send(&long), "");
        assert!(c.input.len() < 100, "never buffers past the limit");
        assert_eq!(
            c.send("\r\n"),
            "500 5.5.2 Line too long (max 100 bytes including CRLF)\r\n"
        );
        assert_eq!(c.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
    }

    #[test]
    fn command_line_of_exactly_the_limit_is_accepted() {
        let mut c = Client::ehlo();
        let line = format!("NOOP {}\r\n", "x".repeat(100 - 7));
        assert_eq!(line.len(), 100);
        assert_eq!(c.send(&line), "250 2.0.0 Ok\r\n");
        let line = format!("NOOP {}\r\n", "x".repeat(100 - 6));
        assert_eq!(codes(&c.send(&line)), ["500 5.5.2"]);
    }

    // ---- pipelining and synchronisation ----

    #[test]
    fn pipelined_commands_are_answered_in_order() {
        let mut c = Client::ehlo();
        let r = c.send(
            "MAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nRCPT TO:<bad>\r\nRCPT TO:<w@y.z>\r\nDATA\r\n",
        );
        assert_eq!(
            codes(&r),
            ["250 2.1.0", "250 2.1.5", "550 5.1.3", "250 2.1.5", "354"]
        );
        assert_eq!(
            c.send("x\r\n.\r\nQUIT\r\n"),
            "250 2.0.0 Ok: queued as Q1\r\n221 2.0.0 relay.test closing connection\r\n"
        );
        assert_eq!(c.messages[0].recipients.len(), 2);
    }

    #[test]
    fn pipelined_messages_after_end_of_data_are_fine_with_pipelining() {
        let mut c = Client::in_transaction();
        c.send("DATA\r\n");
        let r = c.send("one\r\n.\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\n");
        assert_eq!(codes(&r), ["250 2.0.0", "250 2.1.0", "250 2.1.5", "354"]);
        assert_eq!(codes(&c.send("two\r\n.\r\n")), ["250 2.0.0"]);
        assert_eq!(c.messages.len(), 2);
    }

    #[test]
    fn input_before_ehlo_reply_is_a_sync_error() {
        let mut c = Client::new();
        assert_eq!(
            c.send("EHLO x\r\nMAIL FROM:<a@b.c>\r\n"),
            "554 5.5.0 Protocol synchronization error (command sent before the previous reply)\r\n"
        );
        assert!(c.closed);
    }

    #[test]
    fn pipelining_without_ehlo_is_a_sync_error() {
        let mut c = Client::new();
        assert_eq!(codes(&c.send("NOOP\r\nNOOP\r\n")), ["554 5.5.0"]);
        let mut c = Client::new();
        c.send("HELO x\r\n");
        assert_eq!(
            codes(&c.send("MAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\n")),
            ["554 5.5.0"]
        );
        assert!(c.mails.is_empty());
    }

    #[test]
    fn group_ending_commands_with_input_behind_them_are_sync_errors() {
        for cmd in [
            "NOOP", "VRFY x", "HELP", "EHLO y", "HELO y", "QUIT", "EXPN x",
        ] {
            let mut c = Client::ehlo();
            assert_eq!(
                codes(&c.send(format!("{cmd}\r\nRSET\r\n"))),
                ["554 5.5.0"],
                "{cmd}"
            );
            assert!(c.closed);
        }
    }

    #[test]
    fn message_content_sent_with_data_is_a_sync_error() {
        let mut c = Client::in_transaction();
        assert_eq!(
            codes(&c.send("DATA\r\nSubject: early\r\n\r\nx\r\n.\r\n")),
            ["554 5.5.0"]
        );
        assert!(c.messages.is_empty());
    }

    #[test]
    fn input_after_end_of_data_without_pipelining_is_a_sync_error() {
        let mut c = Client::new();
        c.send("HELO x\r\n");
        c.send("MAIL FROM:<a@b.c>\r\n");
        c.send("RCPT TO:<x@y.z>\r\n");
        c.send("DATA\r\n");
        assert_eq!(codes(&c.send("x\r\n.\r\nQUIT\r\n")), ["554 5.5.0"]);
        assert!(c.messages.is_empty());
    }

    #[test]
    fn process_while_a_step_is_pending_closes() {
        let mut c = Client::ehlo();
        c.input.extend_from_slice(b"MAIL FROM:<a@b.c>\r\n");
        assert!(matches!(
            c.session.process(&mut c.input, &mut c.out),
            Step::CheckMail(_)
        ));
        assert!(matches!(
            c.session.process(&mut c.input, &mut c.out),
            Step::Close
        ));
        assert!(String::from_utf8_lossy(&c.out).starts_with("421 4.3.0"));
    }

    #[test]
    fn nothing_is_consumed_while_a_step_is_pending() {
        let mut c = Client::ehlo();
        c.input
            .extend_from_slice(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\n");
        assert!(matches!(
            c.session.process(&mut c.input, &mut c.out),
            Step::CheckMail(_)
        ));
        assert_eq!(c.input, b"RCPT TO:<x@y.z>\r\n");
        c.session.resolve(Resolution::Accept, &mut c.out);
        assert!(matches!(
            c.session.process(&mut c.input, &mut c.out),
            Step::CheckRcpt(_)
        ));
        assert!(c.input.is_empty());
    }

    // ---- error budget and I/O-layer replies ----

    #[test]
    fn too_many_errors_closes_with_421() {
        let mut c = Client::ehlo();
        for _ in 0..5 {
            assert_eq!(codes(&c.send("BOGUS\r\n")), ["500 5.5.2"]);
        }
        assert_eq!(
            c.send("BOGUS\r\n"),
            "500 5.5.2 Command not recognized\r\n421 4.7.0 relay.test Too many errors; closing connection\r\n"
        );
        assert!(c.closed);
    }

    #[test]
    fn permanent_policy_rejections_count_as_errors() {
        let mut c = Client::ehlo();
        c.send("MAIL FROM:<a@b.c>\r\n");
        c.rcpt_answer = Resolution::Reject(Reply::enhanced(550, (5, 1, 1), "No such user"));
        for i in 0..5 {
            c.send(format!("RCPT TO:<u{i}@y.z>\r\n"));
        }
        assert!(!c.closed);
        assert_eq!(
            codes(&c.send("RCPT TO:<last@y.z>\r\n")),
            ["550 5.1.1", "421 4.7.0"]
        );
        assert!(c.closed);
    }

    #[test]
    fn io_layer_replies() {
        let c = Client::new();
        assert_eq!(
            c.session.timeout_reply().to_string(),
            "421 4.4.2 relay.test Timeout exceeded; closing connection"
        );
        assert_eq!(
            Session::too_busy(&config()).to_string(),
            "421 4.7.0 relay.test Too many connections; try again later"
        );
        assert_eq!(
            codes(&c.session.shutdown_reply().to_string()),
            ["421 4.3.2"]
        );
    }

    // ---- BDAT ----

    #[test]
    fn bdat_chunks_build_one_message() {
        let mut c = Client::in_transaction();
        assert_eq!(
            c.send("BDAT 12\r\nSubject: x\r\n"),
            "250 2.0.0 12 octets received\r\n"
        );
        assert_eq!(
            c.send("BDAT 9 LAST\r\n\r\n.body\r\n"),
            "250 2.0.0 Ok: queued as Q1\r\n"
        );
        assert_eq!(c.messages[0].body, b"Subject: x\r\n\r\n.body\r\n");
    }

    #[test]
    fn bdat_zero_last_ends_the_message() {
        let mut c = Client::in_transaction();
        c.send("BDAT 3\r\nab\n");
        let mut cfg = config();
        cfg.bare_line_ending = BareLineEnding::Normalize;
        let mut c2 = Client::with(cfg, true);
        c2.send("EHLO x\r\n");
        c2.send("MAIL FROM:<a@b.c>\r\n");
        c2.send("RCPT TO:<x@y.z>\r\n");
        assert_eq!(codes(&c2.send("BDAT 4\r\nab\r\n")), ["250 2.0.0"]);
        assert_eq!(c2.send("BDAT 0 LAST\r\n"), "250 2.0.0 Ok: queued as Q1\r\n");
        assert_eq!(c2.messages[0].body, b"ab\r\n");
        // The Reject-mode client's chunk had a bare LF.
        assert!(c.messages.is_empty());
    }

    #[test]
    fn bdat_zero_last_alone_is_an_empty_message() {
        let mut c = Client::in_transaction();
        assert_eq!(codes(&c.send("BDAT 0 LAST\r\n")), ["250 2.0.0"]);
        assert_eq!(c.messages[0].body, b"");
    }

    #[test]
    fn bdat_chunk_may_arrive_in_many_reads() {
        let mut c = Client::in_transaction();
        assert_eq!(c.send("BDAT 10 LAST\r\n"), "");
        assert!(c.session.expects_data());
        assert_eq!(c.send("01234"), "");
        assert_eq!(
            codes(&c.send("567\r\nNOOP\r\n")),
            ["250 2.0.0", "250 2.0.0"]
        );
        assert_eq!(c.messages[0].body, b"01234567\r\n");
    }

    #[test]
    fn bdat_chunk_data_with_pipelined_commands_behind_it_is_fine() {
        let mut c = Client::ehlo();
        let r = c.send(
            "MAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nBDAT 3\r\nab\rBDAT 1 LAST\r\n\nRSET\r\n",
        );
        assert_eq!(
            codes(&r),
            [
                "250 2.1.0",
                "250 2.1.5",
                "250 2.0.0",
                "250 2.0.0",
                "250 2.0.0"
            ]
        );
        assert_eq!(c.messages[0].body, b"ab\r\n");
    }

    #[test]
    fn bdat_without_mail_is_consumed_then_refused() {
        let mut c = Client::ehlo();
        assert_eq!(
            c.send("BDAT 6\r\nNOOP\r\n"),
            "503 5.5.1 Bad sequence of commands: send MAIL first\r\n"
        );
        assert_eq!(c.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
    }

    #[test]
    fn bdat_before_ehlo_or_after_helo_is_consumed_then_refused() {
        let mut c = Client::new();
        assert_eq!(codes(&c.send("BDAT 6\r\nNOOP\r\n")), ["503 5.5.1"]);
        assert!(!c.closed);
        let mut c = Client::new();
        c.send("HELO x\r\n");
        c.send("MAIL FROM:<a@b.c>\r\n");
        c.send("RCPT TO:<x@y.z>\r\n");
        assert_eq!(codes(&c.send("BDAT 6\r\nQUIT\r\n")), ["502 5.5.1"]);
        assert!(!c.closed);
        assert_eq!(c.send("RSET\r\n"), "250 2.0.0 Ok\r\n");
    }

    #[test]
    fn bdat_without_recipients_fails_the_transaction() {
        let mut c = Client::ehlo();
        c.send("MAIL FROM:<a@b.c>\r\n");
        assert_eq!(codes(&c.send("BDAT 2\r\nab")), ["554 5.5.1"]);
        assert_eq!(codes(&c.send("BDAT 2 LAST\r\nab")), ["503 5.5.1"]);
        assert_eq!(c.send("MAIL FROM:<a@b.c>\r\n"), "250 2.1.0 Ok\r\n");
    }

    #[test]
    fn data_inside_a_bdat_transaction_is_refused() {
        let mut c = Client::in_transaction();
        c.send("BDAT 2\r\nab");
        assert_eq!(codes(&c.send("DATA\r\n")), ["503 5.5.1"]);
        assert_eq!(codes(&c.send("RCPT TO:<z@y.z>\r\n")), ["503 5.5.1"]);
        assert!(!c.session.expects_data());
    }

    #[test]
    fn chunks_after_a_failed_chunk_get_503_until_rset() {
        let mut c = Client::in_transaction();
        assert_eq!(codes(&c.send("BDAT 3\r\na\nb")), ["550 5.6.0"]);
        assert_eq!(codes(&c.send("BDAT 3\r\nabc")), ["503 5.5.1"]);
        assert_eq!(codes(&c.send("BDAT 3\r\nabc")), ["503 5.5.1"]);
        c.send("RSET\r\n");
        c.send("MAIL FROM:<a@b.c>\r\n");
        c.send("RCPT TO:<x@y.z>\r\n");
        assert_eq!(codes(&c.send("BDAT 3 LAST\r\nabc")), ["250 2.0.0"]);
        assert_eq!(c.messages.len(), 1);
    }

    #[test]
    fn bdat_size_limit_fails_the_chunk() {
        let mut c = Client::in_transaction();
        let chunk = format!("{}\r\n", "x".repeat(90)).repeat(120);
        let r = c.send(format!("BDAT {}\r\n{chunk}", chunk.len()));
        assert_eq!(codes(&r), ["552 5.3.4"]);
        assert_eq!(codes(&c.send("BDAT 0 LAST\r\n")), ["503 5.5.1"]);
        // The LAST chunk ended the failed transaction.
        assert_eq!(c.send("MAIL FROM:<a@b.c>\r\n"), "250 2.1.0 Ok\r\n");
    }

    #[test]
    fn bdat_checks_line_length_across_chunks() {
        let mut c = Client::in_transaction();
        let half = "x".repeat(60);
        assert_eq!(codes(&c.send(format!("BDAT 60\r\n{half}"))), ["250 2.0.0"]);
        assert_eq!(
            codes(&c.send(format!("BDAT 62 LAST\r\n{half}\r\n"))),
            ["500 5.5.2"]
        );
        assert!(c.messages.is_empty());
    }

    #[test]
    fn bdat_with_bad_size_closes_the_connection() {
        let mut c = Client::in_transaction();
        assert_eq!(
            c.send("BDAT x\r\n"),
            "501 5.5.4 Syntax: BDAT <size> [LAST]; closing connection\r\n"
        );
        assert!(c.closed);
    }

    #[test]
    fn bdat_with_input_beyond_the_chunk_needs_pipelining() {
        let mut c = Client::new();
        assert_eq!(codes(&c.send("BDAT 2\r\nabNOOP\r\n")), ["554 5.5.0"]);
    }

    // ---- SMTP smuggling ----

    /// The end-of-data variants published by SEC Consult (2023) and later
    /// scanners; none may end a message and start another.
    const SMUGGLING: &[&str] = &[
        "\n.\n",
        "\n.\r\n",
        "\r.\r",
        "\r.\r\n",
        "\r\n.\r",
        "\r\n.\n",
        "\n.\r",
        "\r.\n",
        "\r\n\0.\r\n",
        "\r\n.\0\r\n",
        "\r\r\n.\r\r\n",
        "\r\n.\r\r\n",
        "\n\n.\n\n",
        "\r\n\r.\r\n",
    ];

    /// Message content that hides a second transaction behind `seq`.
    fn smuggling_payload(seq: &str) -> String {
        format!(
            "From: a@example.com\r\nSubject: one\r\n\r\nfirst{seq}MAIL FROM:<admin@bank.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nFrom: admin@bank.example\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n"
        )
    }

    fn run_smuggling(seq: &str, mode: BareLineEnding, esmtp: bool, bytewise: bool) -> Client {
        let mut cfg = config();
        cfg.bare_line_ending = mode;
        let mut c = Client::with(cfg, true);
        c.send(if esmtp { "EHLO x\r\n" } else { "HELO x\r\n" });
        c.send("MAIL FROM:<a@example.com>\r\n");
        c.send("RCPT TO:<b@example.net>\r\n");
        c.send("DATA\r\n");
        let payload = smuggling_payload(seq);
        if bytewise {
            c.send_bytewise(&payload);
        } else {
            c.send(&payload);
        }
        c
    }

    #[test]
    fn smuggling_sequences_yield_at_most_one_message() {
        for seq in SMUGGLING {
            for mode in [BareLineEnding::Reject, BareLineEnding::Normalize] {
                for esmtp in [true, false] {
                    for bytewise in [false, true] {
                        let c = run_smuggling(seq, mode, esmtp, bytewise);
                        let ctx = format!("{seq:?} {mode:?} esmtp={esmtp} bytewise={bytewise}");
                        assert!(c.messages.len() <= 1, "{ctx}");
                        // The smuggled MAIL FROM was never taken as a command.
                        assert_eq!(c.mails.len(), 1, "{ctx}");
                        assert_eq!(c.rcpts.len(), 1, "{ctx}");
                        for m in &c.messages {
                            assert!(m.body.starts_with(b"From: a@example.com\r\n"), "{ctx}");
                            assert_eq!(m.recipients[0].to_string(), "b@example.net", "{ctx}");
                        }
                        assert!(!c.closed, "{ctx}");
                    }
                }
            }
        }
    }

    #[test]
    fn smuggling_with_bare_line_endings_is_rejected_in_reject_mode() {
        for seq in SMUGGLING.iter().filter(|s| !s.contains('\0')) {
            let c = run_smuggling(seq, BareLineEnding::Reject, true, false);
            assert!(c.messages.is_empty(), "{seq:?}");
        }
    }

    #[test]
    fn smuggled_lf_dot_lf_stays_inside_the_first_message_when_normalizing() {
        let c = run_smuggling("\n.\n", BareLineEnding::Normalize, true, false);
        assert_eq!(c.messages.len(), 1);
        let body = String::from_utf8_lossy(&c.messages[0].body).into_owned();
        assert!(
            body.contains("first\r\n.\r\nMAIL FROM:<admin@bank.example>\r\n"),
            "{body}"
        );
        assert!(body.contains("Subject: smuggled"));
    }

    #[test]
    fn smuggled_bare_cr_is_rejected_even_when_normalizing() {
        for seq in ["\r.\r", "\r\n.\r", "\r.\r\n", "\r\r\n.\r\r\n"] {
            let c = run_smuggling(seq, BareLineEnding::Normalize, true, false);
            assert!(c.messages.is_empty(), "{seq:?}");
        }
    }

    /// STARTTLS and AUTH (in smtp/session/tests/tls_auth.rs).
    mod tls_auth;

    #[test]
    fn nul_before_dot_is_ordinary_content() {
        let c = run_smuggling("\r\n\0.\r\n", BareLineEnding::Reject, true, false);
        assert_eq!(c.messages.len(), 1);
        assert!(c.messages[0].body.windows(3).any(|w| w == b"\0.\r"));
    }
}
