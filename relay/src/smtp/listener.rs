//! The tokio side of inbound SMTP: accepts connections, enforces connection limits and
//! timeouts, and moves bytes between the socket and the sans-IO [`Session`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{
    received_header, ClientInfo, EnhancedCode, IncomingMessage, MailRequest, Mailbox, RcptRequest,
    ReceivedInfo, Reply, Resolution, Session, SessionConfig, Step,
};
use crate::hooks;
use crate::inspect;
use crate::policy::{DataAction, DataInput, Hook, PluginSet, Policy, RcptInput, RcptVerdict};
use crate::spool::scheduler::Notifier;
use crate::spool::{MessageId, NewMessage, Spool, SpoolError};

/// What the I/O loop asks of whoever consumes a session's transactions (the relay's spool,
/// or the `relay sink`).
pub(crate) trait Handler {
    /// Decide on MAIL FROM after the session's own checks passed. `helo` is the name the
    /// client gave in EHLO/HELO.
    async fn check_mail(&mut self, request: &MailRequest, helo: &str) -> Resolution;
    /// Decide on RCPT TO after the session's own checks passed.
    async fn check_rcpt(&mut self, request: &RcptRequest, helo: &str) -> Resolution;
    /// Take a complete message: `Resolution::Queued(id)` only once it is safe.
    async fn message(&mut self, message: IncomingMessage, peer: SocketAddr) -> Resolution;
}

/// Read timeouts for one session.
#[derive(Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) command: Duration,
    pub(crate) data: Duration,
}

/// Runs one SMTP session to its end over `stream`.
pub(crate) async fn drive<S, H>(
    mut stream: S,
    peer: SocketAddr,
    mut session: Session,
    handler: &mut H,
    timeouts: Timeouts,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut out = Vec::with_capacity(1024);
    session.greeting().write_to(&mut out);
    stream.write_all(&out).await?;
    out.clear();
    let mut input: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        match session.process(&mut input, &mut out) {
            Step::NeedInput => {
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                let limit = if session.expects_data() {
                    timeouts.data
                } else {
                    timeouts.command
                };
                input.reserve(16 * 1024);
                match tokio::time::timeout(limit, stream.read_buf(&mut input)).await {
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return Err(err),
                    Err(_) => {
                        session.timeout_reply().write_to(&mut out);
                        stream.write_all(&out).await?;
                        tracing::info!(event = "session_timeout", client = %peer.ip(), "closing idle session");
                        return Ok(());
                    }
                }
            }
            Step::CheckMail(request) => {
                let helo = session.helo().unwrap_or_default();
                let resolution = handler.check_mail(&request, helo).await;
                session.resolve(resolution, &mut out);
            }
            Step::CheckRcpt(request) => {
                let helo = session.helo().unwrap_or_default();
                let resolution = handler.check_rcpt(&request, helo).await;
                session.resolve(resolution, &mut out);
            }
            Step::Message(message) => {
                let resolution = handler.message(*message, peer).await;
                session.resolve(resolution, &mut out);
            }
            Step::Close => {
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                }
                let _ = stream.shutdown().await;
                return Ok(());
            }
        }
    }
}

/// Everything an inbound session of the relay needs, shared by all of them.
pub(crate) struct Inbound {
    pub(crate) session: Arc<SessionConfig>,
    pub(crate) relay_networks: Vec<IpNet>,
    pub(crate) timeouts: Timeouts,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) spool: Spool,
    pub(crate) notifier: Notifier,
    pub(crate) connections: Mutex<Connections>,
    /// The policy plugins, when `[plugins] dir` is set.
    pub(crate) policy: Option<Policy>,
}

/// Open inbound connections, in total and per client address.
#[derive(Default)]
pub(crate) struct Connections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Holds one connection's place in [`Connections`] until dropped.
struct Admitted<'a> {
    inbound: &'a Inbound,
    ip: IpAddr,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut c = lock(&self.inbound.connections);
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Inbound {
    fn admit(&self, ip: IpAddr) -> Option<Admitted<'_>> {
        let mut c = lock(&self.connections);
        let for_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if c.total >= self.max_connections || for_ip >= self.max_connections_per_ip {
            return None;
        }
        c.total += 1;
        c.per_ip.insert(ip, for_ip + 1);
        Some(Admitted { inbound: self, ip })
    }
}

/// Accepts connections on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, inbound: Arc<Inbound>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(event = "accept_failed", error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let inbound = Arc::clone(&inbound);
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            handle(stream, peer, &inbound).await;
        });
    }
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, inbound: &Inbound) {
    let Some(_admitted) = inbound.admit(peer.ip()) else {
        let mut out = Vec::new();
        Session::too_busy(&inbound.session).write_to(&mut out);
        let _ = stream.write_all(&out).await;
        tracing::info!(event = "connection_refused", client = %peer.ip(), reason = "too many connections", "connection limit reached");
        crate::metrics::global().smtp_connection_refused();
        return;
    };
    let _open = crate::metrics::global().smtp_session();
    let relay_allowed = inbound
        .relay_networks
        .iter()
        .any(|n| n.contains(&peer.ip()));
    let session = Session::new(
        Arc::clone(&inbound.session),
        ClientInfo {
            peer: peer.ip(),
            relay_allowed,
        },
    );
    let mut handler = RelayHandler {
        inbound,
        peer: peer.ip(),
        plugins: None,
        accepted: 0,
    };
    if let Err(err) = drive(stream, peer, session, &mut handler, inbound.timeouts).await {
        tracing::debug!(client = %peer.ip(), error = %err, "session ended with an I/O error");
    }
}

/// Puts accepted messages into the spool, asking the policy plugins on the way.
struct RelayHandler<'a> {
    inbound: &'a Inbound,
    peer: IpAddr,
    /// The plugin set of the current transaction, taken at MAIL FROM: a hot reload never
    /// changes the plugins a transaction started with.
    plugins: Option<Arc<PluginSet>>,
    /// Recipients accepted in the current transaction.
    accepted: u32,
}

impl RelayHandler<'_> {
    fn plugins_for(&self, hook: Hook) -> Option<&Arc<PluginSet>> {
        self.plugins.as_ref().filter(|set| set.implements(hook))
    }
}

impl Handler for RelayHandler<'_> {
    async fn check_mail(&mut self, _request: &MailRequest, _helo: &str) -> Resolution {
        if !self.inbound.spool.has_free_space() {
            tracing::warn!(
                event = "spool_full",
                "refusing mail: spool below min_free_space"
            );
            crate::metrics::global().mail_refused_spool();
            return Resolution::Reject(Reply::new(
                452,
                Some(EnhancedCode(4, 3, 1)),
                "Insufficient system storage, try again later",
            ));
        }
        self.plugins = self.inbound.policy.as_ref().map(Policy::snapshot);
        self.accepted = 0;
        Resolution::Accept
    }

    async fn check_rcpt(&mut self, request: &RcptRequest, helo: &str) -> Resolution {
        if request.bounce {
            // A returned DSN: on_rcpt is for mail the relay sends on, not for its own bounces.
            self.accepted += 1;
            return Resolution::Accept;
        }
        let Some(plugins) = self.plugins_for(Hook::OnRcpt) else {
            self.accepted += 1;
            return Resolution::Accept;
        };
        let input = RcptInput {
            session: hooks::session(self.peer, helo),
            mail_from: hooks::mail_from(&request.mail_from, &request.params),
            recipient: request.to.to_string(),
            accepted_so_far: self.accepted,
        };
        let resolution = match plugins.on_rcpt(&input) {
            RcptVerdict::NoOpinion | RcptVerdict::Accept => Resolution::Accept,
            RcptVerdict::AcceptRewritten(address) => match Mailbox::parse(&address) {
                Ok(mailbox) => {
                    tracing::info!(event = "rcpt_rewritten", rcpt = %request.to, to = %mailbox, "recipient rewritten by policy");
                    Resolution::AcceptAs(mailbox)
                }
                Err(err) => {
                    tracing::warn!(event = "plugin_bad_output", hook = "on_rcpt", address = %address, error = %err, "ignoring an invalid rewritten recipient");
                    Resolution::Accept
                }
            },
            RcptVerdict::Reject(reply) => {
                Resolution::Reject(hooks::reply_from_plugin(&reply, true, "on_rcpt"))
            }
            RcptVerdict::Tempfail(reply) => {
                Resolution::Reject(hooks::reply_from_plugin(&reply, false, "on_rcpt"))
            }
        };
        match &resolution {
            Resolution::Reject(reply) => {
                tracing::info!(event = "rcpt_refused", rcpt = %request.to, from = %request.mail_from, reply = %reply.text(), "recipient refused by policy");
                crate::metrics::global().rcpt_refused_policy();
            }
            _ => self.accepted += 1,
        }
        resolution
    }

    async fn message(&mut self, message: IncomingMessage, peer: SocketAddr) -> Resolution {
        let plugins = self.plugins.take();
        if message.bounce {
            // Parsed for on_bounce and dropped, never queued; 250 whatever it is, so a
            // bounce address never causes backscatter. on_data does not run.
            if let Some(to) = message.recipients.first() {
                crate::bounce::handle_returned(
                    &message.body,
                    to,
                    &peer.ip().to_string(),
                    plugins.as_deref(),
                );
            }
            return Resolution::Accept;
        }
        let mut added_headers = String::new();
        let mut tags: Vec<(String, String)> = Vec::new();
        if let Some(plugins) = plugins.as_ref().filter(|set| set.implements(Hook::OnData)) {
            let input = DataInput {
                session: hooks::session(peer.ip(), &message.helo),
                mail_from: hooks::mail_from(&message.mail_from, &message.params),
                recipients: message.recipients.iter().map(|r| r.to_string()).collect(),
                message: inspect::message_info(&message.body, plugins.wants_body()),
                tags: Vec::new(),
            };
            let verdict = plugins.on_data(&input);
            let refused = match &verdict.action {
                DataAction::Reject(reply) => Some(hooks::reply_from_plugin(reply, true, "on_data")),
                DataAction::Tempfail(reply) => {
                    Some(hooks::reply_from_plugin(reply, false, "on_data"))
                }
                DataAction::NoOpinion | DataAction::Accept => None,
            };
            if let Some(reply) = refused {
                tracing::info!(event = "message_refused", from = %message.mail_from, rcpts = message.recipients.len(), client = %peer.ip(), reply = %reply.text(), "message refused by policy");
                crate::metrics::global().data_refused_policy();
                return Resolution::Reject(reply);
            }
            for header in &verdict.add_headers {
                match hooks::header_line(&header.name, &header.value) {
                    Some(line) => added_headers.push_str(&line),
                    None => {
                        tracing::warn!(event = "plugin_bad_output", hook = "on_data", header = %header.name, "ignoring a header with an invalid name")
                    }
                }
            }
            hooks::merge_tags(&mut tags, verdict.tags);
        }

        let id = MessageId::generate();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut prefix = received_header(&ReceivedInfo {
            helo: &message.helo,
            peer: peer.ip(),
            hostname: &self.inbound.session.hostname,
            protocol: message.protocol,
            id: &id.to_string(),
            recipients: &message.recipients,
            timestamp: now,
        });
        prefix.push_str(&added_headers);
        let rcpts = message.recipients.len();
        let from = message.mail_from.to_string();
        let tag_text = tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let result = self
            .inbound
            .spool
            .insert(
                id,
                NewMessage {
                    mail_from: message.mail_from,
                    recipients: message.recipients,
                    prefix: prefix.as_bytes(),
                    body: &message.body,
                    client: Some(peer.ip()),
                    eight_bit: message.eight_bit,
                    smtputf8: message.smtputf8,
                    tags,
                },
            )
            .await;
        match result {
            Ok(_) => {
                tracing::info!(event = "received", msg_id = %id, from = %from, rcpts, size = message.body.len() + prefix.len(), client = %peer.ip(), helo = %message.helo, tags = %tag_text, "message queued");
                crate::metrics::global().message_received();
                self.inbound.notifier.queued(id);
                Resolution::Queued(id.to_string())
            }
            Err(SpoolError::Full(reason)) => {
                tracing::error!(event = "spool_write_failed", error = %reason, "refusing message: spool full");
                crate::metrics::global().data_refused_spool();
                Resolution::Reject(Reply::new(
                    452,
                    Some(EnhancedCode(4, 3, 1)),
                    "Insufficient system storage, try again later",
                ))
            }
            Err(err) => {
                tracing::error!(event = "spool_write_failed", error = %err, "refusing message: spool write failed");
                crate::metrics::global().data_refused_spool();
                Resolution::Reject(Reply::new(
                    451,
                    Some(EnhancedCode(4, 3, 0)),
                    "Local error in processing, message not queued; try again later",
                ))
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
