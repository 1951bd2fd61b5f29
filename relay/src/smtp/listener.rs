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
    received_header, ClientInfo, EnhancedCode, IncomingMessage, MailRequest, RcptRequest,
    ReceivedInfo, Reply, Resolution, Session, SessionConfig, Step,
};
use crate::spool::scheduler::Notifier;
use crate::spool::{MessageId, NewMessage, Spool, SpoolError};

/// What the I/O loop asks of whoever consumes a session's transactions (the relay's spool,
/// or the `relay sink`).
pub(crate) trait Handler {
    /// Decide on MAIL FROM after the session's own checks passed.
    async fn check_mail(&mut self, request: &MailRequest) -> Resolution;
    /// Decide on RCPT TO after the session's own checks passed.
    async fn check_rcpt(&mut self, request: &RcptRequest) -> Resolution;
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
                let resolution = handler.check_mail(&request).await;
                session.resolve(resolution, &mut out);
            }
            Step::CheckRcpt(request) => {
                let resolution = handler.check_rcpt(&request).await;
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
        return;
    };
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
    let mut handler = RelayHandler { inbound };
    if let Err(err) = drive(stream, peer, session, &mut handler, inbound.timeouts).await {
        tracing::debug!(client = %peer.ip(), error = %err, "session ended with an I/O error");
    }
}

/// Puts accepted messages into the spool.
struct RelayHandler<'a> {
    inbound: &'a Inbound,
}

impl Handler for RelayHandler<'_> {
    async fn check_mail(&mut self, _request: &MailRequest) -> Resolution {
        if self.inbound.spool.has_free_space() {
            Resolution::Accept
        } else {
            tracing::warn!(
                event = "spool_full",
                "refusing mail: spool below min_free_space"
            );
            Resolution::Reject(Reply::new(
                452,
                Some(EnhancedCode(4, 3, 1)),
                "Insufficient system storage, try again later",
            ))
        }
    }

    async fn check_rcpt(&mut self, _request: &RcptRequest) -> Resolution {
        Resolution::Accept
    }

    async fn message(&mut self, message: IncomingMessage, peer: SocketAddr) -> Resolution {
        let id = MessageId::generate();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = received_header(&ReceivedInfo {
            helo: &message.helo,
            peer: peer.ip(),
            hostname: &self.inbound.session.hostname,
            protocol: message.protocol,
            id: &id.to_string(),
            recipients: &message.recipients,
            timestamp: now,
        });
        let rcpts = message.recipients.len();
        let from = message.mail_from.to_string();
        let result = self
            .inbound
            .spool
            .insert(
                id,
                NewMessage {
                    mail_from: message.mail_from,
                    recipients: message.recipients,
                    prefix: header.as_bytes(),
                    body: &message.body,
                    client: Some(peer.ip()),
                    eight_bit: message.eight_bit,
                    smtputf8: message.smtputf8,
                },
            )
            .await;
        match result {
            Ok(_) => {
                tracing::info!(event = "received", msg_id = %id, from = %from, rcpts, size = message.body.len() + header.len(), client = %peer.ip(), helo = %message.helo, "message queued");
                self.inbound.notifier.queued(id);
                Resolution::Queued(id.to_string())
            }
            Err(SpoolError::Full(reason)) => {
                tracing::error!(event = "spool_write_failed", error = %reason, "refusing message: spool full");
                Resolution::Reject(Reply::new(
                    452,
                    Some(EnhancedCode(4, 3, 1)),
                    "Insufficient system storage, try again later",
                ))
            }
            Err(err) => {
                tracing::error!(event = "spool_write_failed", error = %err, "refusing message: spool write failed");
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
