//! The tokio side of inbound SMTP: accepts connections, enforces connection limits and
//! timeouts, and moves bytes between the socket and the sans-IO [`Session`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tokio_rustls::TlsAcceptor;

use super::{
    received_header, AuthOffer, AuthRequest, ClientInfo, EnhancedCode, IncomingMessage,
    MailRequest, Mailbox, RcptRequest, ReceivedInfo, Reply, Resolution, Session, SessionConfig,
    Step,
};
use crate::auth::{Admission, AuthLimiter, Users, Verified};
use crate::config::{HygieneConfig, Listener, ListenerTls};
use crate::hooks;
use crate::hygiene;
use crate::inspect::MessageView;
use crate::policy::{
    DataAction, DataInput, HeldSet, Hook, Policy, RcptInput, RcptVerdict, TransactionInfo,
};
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
    /// Check a login: `Resolution::Accept`, or a `Reject` with `535 5.7.8` (or `421` to end
    /// the session). Handlers of sessions that never offer AUTH keep the default.
    async fn authenticate(&mut self, _request: AuthRequest) -> Resolution {
        Resolution::Reject(Reply::new(
            454,
            Some(EnhancedCode(4, 7, 0)),
            "Temporary authentication failure",
        ))
    }
}

/// The byte stream under a session: TCP, or TLS over it.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// TLS for a session: the acceptor and how long a handshake may take.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) handshake_timeout: Duration,
}

/// Runs the server side of a TLS handshake on `stream`; `None` (logged) if it fails.
async fn handshake<S>(
    stream: S,
    peer: SocketAddr,
    tls: &TlsSetup,
) -> Option<(tokio_rustls::server::TlsStream<S>, String)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let description = crate::tls::describe(stream.get_ref().1);
            crate::metrics::global().tls_handshake(true);
            Some((stream, description))
        }
        Ok(Err(err)) => {
            tracing::info!(event = "tls_handshake_failed", client = %peer.ip(), error = %err, "TLS handshake failed");
            crate::metrics::global().tls_handshake(false);
            None
        }
        Err(_) => {
            tracing::info!(event = "tls_handshake_failed", client = %peer.ip(), error = "timed out", "TLS handshake failed");
            crate::metrics::global().tls_handshake(false);
            None
        }
    }
}

/// Read timeouts for one session.
#[derive(Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) command: Duration,
    pub(crate) data: Duration,
}

/// Runs one SMTP session to its end over `stream`; `tls` serves STARTTLS.
pub(crate) async fn drive<S, H>(
    stream: S,
    peer: SocketAddr,
    mut session: Session,
    handler: &mut H,
    timeouts: Timeouts,
    tls: Option<&TlsSetup>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let mut stream: Box<dyn Transport> = Box::new(stream);
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
            Step::Authenticate(request) => {
                let resolution = handler.authenticate(request).await;
                session.resolve(resolution, &mut out);
            }
            Step::StartTls => {
                stream.write_all(&out).await?;
                out.clear();
                // The session only asks for STARTTLS where it was offered, which needs `tls`.
                let Some(tls) = tls else {
                    return Ok(());
                };
                let Some((secured, description)) = handshake(stream, peer, tls).await else {
                    return Ok(());
                };
                tracing::debug!(event = "starttls", client = %peer.ip(), tls = %description);
                session.tls_started(description);
                stream = Box::new(secured);
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
    /// The server certificate, when `[tls]` is set.
    pub(crate) tls: Option<TlsSetup>,
    /// SMTP AUTH, when `[auth]` is set.
    pub(crate) auth: Option<AuthSetup>,
    /// Headers added, or messages refused, before queueing.
    pub(crate) hygiene: HygieneConfig,
    /// DKIM keys, when `[dkim]` is set.
    pub(crate) signing: Option<Arc<crate::signing::Signing>>,
}

/// A message that could not be signed is not sent unsigned: the client tries again later.
fn dkim_failed(error: &str) -> Resolution {
    tracing::error!(
        event = "dkim_sign_failed",
        error,
        "signing failed; message refused with 451"
    );
    Resolution::Reject(Reply::new(
        451,
        Some(EnhancedCode(4, 3, 0)),
        "Local error in processing (signing failed), message not queued; try again later",
    ))
}

/// The users who may log in and the brute-force limiter.
pub(crate) struct AuthSetup {
    pub(crate) users: Arc<Users>,
    pub(crate) limiter: AuthLimiter,
    /// Name the user in the Received header.
    pub(crate) received_shows_user: bool,
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

/// Accepts connections on `listener` (configured as `settings`) until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, inbound: Arc<Inbound>, settings: Arc<Listener>) {
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
        let settings = Arc::clone(&settings);
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            handle(stream, peer, &inbound, &settings).await;
        });
    }
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, inbound: &Inbound, settings: &Listener) {
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
    let tls = inbound
        .tls
        .as_ref()
        .filter(|_| settings.tls != ListenerTls::None);
    let auth = match &inbound.auth {
        None => AuthOffer::Never,
        Some(_) if settings.auth_in_clear_on_loopback && peer.ip().to_canonical().is_loopback() => {
            AuthOffer::Always
        }
        Some(_) => AuthOffer::WithTls,
    };
    let mut client = ClientInfo {
        peer: peer.ip(),
        relay_allowed,
        tls: None,
        starttls: settings.tls == ListenerTls::Starttls && tls.is_some(),
        auth,
        require_auth: settings.require_auth,
        require_tls: settings.require_tls,
    };
    let mut handler = RelayHandler {
        inbound,
        peer: peer.ip(),
        plugins: HeldSet::default(),
        accepted: 0,
        transactions: Transactions::default(),
    };
    let result = match (settings.tls, tls) {
        (ListenerTls::Implicit, Some(tls)) => {
            let Some((secured, description)) = handshake(stream, peer, tls).await else {
                return;
            };
            client.tls = Some(description);
            let session = Session::new(Arc::clone(&inbound.session), client);
            drive(secured, peer, session, &mut handler, inbound.timeouts, None).await
        }
        _ => {
            let session = Session::new(Arc::clone(&inbound.session), client);
            drive(stream, peer, session, &mut handler, inbound.timeouts, tls).await
        }
    };
    if let Err(err) = result {
        tracing::debug!(client = %peer.ip(), error = %err, "session ended with an I/O error");
    }
}

/// Puts accepted messages into the spool, asking the policy plugins on the way.
struct RelayHandler<'a> {
    inbound: &'a Inbound,
    peer: IpAddr,
    /// The plugin set of the current transaction, refreshed at MAIL FROM (and only then): a
    /// hot reload never changes the plugins a transaction started with.
    plugins: HeldSet,
    /// Recipients accepted in the current transaction.
    accepted: u32,
    /// The transaction as plugins see it.
    transactions: Transactions,
}

/// The plugins' view of the current transaction ([`TransactionInfo`]), made at the first
/// hook call that needs it (the first RCPT that runs plugins, else the end of data) and kept
/// to the end of the transaction; it lists the recipients accepted so far. A finished one is
/// kept too, and renewed in place for the session's next transaction, so that a session
/// sending message after message does not build the view anew each time.
#[derive(Default)]
struct Transactions {
    current: Option<Arc<TransactionInfo>>,
    spare: Option<Arc<TransactionInfo>>,
}

impl Transactions {
    /// The current transaction's view; made (or renewed from the spare) if there is none.
    fn get(
        &mut self,
        peer: IpAddr,
        start: &hooks::TransactionStart<'_>,
    ) -> &mut Arc<TransactionInfo> {
        let spare = &mut self.spare;
        self.current.get_or_insert_with(|| {
            // A plugin call never keeps the view, so the spare is normally not shared.
            let renewed = spare.take().and_then(|mut info| {
                hooks::renew_transaction(Arc::get_mut(&mut info)?, start);
                Some(info)
            });
            renewed.unwrap_or_else(|| Arc::new(hooks::transaction(peer, start)))
        })
    }

    /// Ends the current transaction (keeping its view as the spare).
    fn finish(&mut self) {
        if let Some(done) = self.current.take() {
            self.spare = Some(done);
        }
    }
}

impl RelayHandler<'_> {
    /// Counts an accepted recipient and adds it (as it will be queued, once) to what later
    /// `on_rcpt` calls of the transaction see. No plugin holds the transaction between calls,
    /// so adding does not copy it.
    fn accept(&mut self, recipient: String) {
        self.accepted += 1;
        if let Some(transaction) = &mut self.transactions.current {
            let recipients = &mut Arc::make_mut(transaction).recipients;
            if !recipients.contains(&recipient) {
                recipients.push(recipient);
            }
        }
    }
}

/// The tag that carries the logged-in user to later hooks (`choose_ip`, `on_bounce`) and logs.
pub(crate) const AUTH_USER_TAG: &str = "auth_user";

impl Handler for RelayHandler<'_> {
    async fn authenticate(&mut self, request: AuthRequest) -> Resolution {
        let Some(auth) = &self.inbound.auth else {
            return Resolution::Reject(Reply::new(
                454,
                Some(EnhancedCode(4, 7, 0)),
                "Temporary authentication failure",
            ));
        };
        let ip = self.peer;
        match auth.limiter.check(ip, Instant::now()) {
            Admission::Allow => {}
            Admission::Delay(delay) => tokio::time::sleep(delay).await,
            Admission::LockedOut { remaining } => {
                tracing::info!(event = "auth_refused", client = %ip, user = %request.user, reason = "locked out", "login refused: too many failures from this address");
                crate::metrics::global().auth_attempt("locked_out");
                return Resolution::Reject(Reply::new(
                    421,
                    Some(EnhancedCode(4, 7, 0)),
                    format!(
                        "Too many failed logins; try again in {} minutes",
                        remaining.as_secs().div_ceil(60).max(1)
                    ),
                ));
            }
        }
        match auth.users.verify(&request.user, &request.password).await {
            Verified::Ok => {
                auth.limiter.success(ip);
                tracing::info!(event = "auth_ok", client = %ip, user = %request.user, mechanism = request.mechanism, tls = request.tls, "client logged in");
                crate::metrics::global().auth_attempt("ok");
                Resolution::Accept
            }
            Verified::BadCredentials => {
                let locked = auth.limiter.failure(ip, Instant::now());
                tracing::info!(event = "auth_failed", client = %ip, user = %request.user, mechanism = request.mechanism, "login failed");
                crate::metrics::global().auth_attempt("failed");
                if locked {
                    tracing::warn!(event = "auth_lockout", client = %ip, "too many failed logins: address locked out");
                }
                Resolution::Reject(Reply::new(
                    535,
                    Some(EnhancedCode(5, 7, 8)),
                    "Authentication credentials invalid",
                ))
            }
        }
    }

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
        if let Some(policy) = &self.inbound.policy {
            policy.refresh(&mut self.plugins);
        }
        self.accepted = 0;
        self.transactions.finish();
        Resolution::Accept
    }

    async fn check_rcpt(&mut self, request: &RcptRequest, helo: &str) -> Resolution {
        if request.bounce {
            // A returned DSN: on_rcpt is for mail the relay sends on, not for its own bounces.
            self.accept(request.to.address());
            return Resolution::Accept;
        }
        // The fields one by one: the set is used while the transaction is updated.
        let Some(plugins) = self
            .plugins
            .get()
            .filter(|set| set.implements(Hook::OnRcpt))
        else {
            self.accepted += 1;
            return Resolution::Accept;
        };
        let input = RcptInput {
            recipient: request.to.address(),
            accepted_so_far: self.accepted,
        };
        let transaction = self.transactions.get(
            self.peer,
            &hooks::TransactionStart {
                helo,
                tls: request.tls,
                auth_user: request.auth_user.as_deref(),
                from: &request.mail_from,
                params: &request.params,
            },
        );
        let (verdict, recipient) =
            match crate::policy::on_rcpt_batched(plugins, input, Arc::clone(transaction)).await {
                Some((verdict, input)) => (verdict, input.recipient),
                None => (plugins.rcpt_fallback(), request.to.address()),
            };
        let resolution = match verdict {
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
            Resolution::AcceptAs(to) => self.accept(to.address()),
            _ => self.accept(recipient),
        }
        resolution
    }

    async fn message(&mut self, mut message: IncomingMessage, peer: SocketAddr) -> Resolution {
        let plugins = self.plugins.get();
        if message.bounce {
            // Parsed for on_bounce and dropped, never queued; 250 whatever it is, so a
            // bounce address never causes backscatter. on_data does not run.
            if let Some(to) = message.recipients.first() {
                crate::bounce::handle_returned(
                    &message.body,
                    to,
                    &peer.ip().to_string(),
                    plugins.map(|set| &**set),
                );
            }
            return Resolution::Accept;
        }
        let mut added_headers = String::new();
        let mut tags: Vec<(String, String)> = Vec::new();
        if let Some(plugins) = plugins.filter(|set| set.implements(Hook::OnData)) {
            let input = DataInput { tags: Vec::new() };
            // The on_rcpt plugins' view of the transaction if they ran, with every recipient.
            let transaction = self.transactions.get(
                peer.ip(),
                &hooks::TransactionStart {
                    helo: &message.helo,
                    tls: message.tls.is_some(),
                    auth_user: message.auth_user.as_deref(),
                    from: &message.mail_from,
                    params: &message.params,
                },
            );
            // on_rcpt kept the list as the recipients were accepted; it is remade only if that
            // is not what is queued (no on_rcpt plugin ran, or the lists differ).
            let queued = &message.recipients;
            let kept = &transaction.recipients;
            if kept.len() != queued.len()
                || !kept.iter().zip(queued).all(|(k, q)| q.is_written_as(k))
            {
                let recipients = &mut Arc::make_mut(transaction).recipients;
                recipients.clear();
                recipients.extend(queued.iter().map(Mailbox::address));
            }
            // The plugins read the message through a view that parses what they ask for; the
            // bytes come back unchanged (copied only if a plugin instance still held them).
            let view = Arc::new(MessageView::new(std::mem::take(&mut message.body)));
            let verdict = crate::policy::on_data_batched(
                plugins,
                input,
                Arc::clone(transaction),
                Arc::clone(&view),
            )
            .await
            .unwrap_or_else(|| plugins.data_fallback());
            self.transactions.finish();
            message.body = Arc::try_unwrap(view)
                .map(MessageView::into_bytes)
                .unwrap_or_else(|view| view.bytes().to_vec());
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
        // The login is the relay's fact, not a plugin's: a plugin's tag of that name is replaced.
        tags.retain(|(key, _)| key != AUTH_USER_TAG);
        if let Some(user) = &message.auth_user {
            tags.push((AUTH_USER_TAG.to_string(), user.clone()));
        }

        let id = MessageId::generate();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut facts = hygiene::header_facts(&message.body);
        for line in added_headers.lines() {
            let name = line.split(':').next().unwrap_or_default();
            facts.has_date |= name.eq_ignore_ascii_case("Date");
            facts.has_message_id |= name.eq_ignore_ascii_case("Message-ID");
        }
        let repairs = match hygiene::repairs(
            &facts,
            &self.inbound.hygiene,
            &message.mail_from,
            &id.to_string(),
            &self.inbound.session.hostname,
            now,
        ) {
            Ok(repairs) => repairs,
            Err(reply) => {
                tracing::info!(event = "message_refused", from = %message.mail_from, rcpts = message.recipients.len(), client = %peer.ip(), reply = %reply.text(), "message refused by [hygiene]");
                crate::metrics::global().data_refused_policy();
                return Resolution::Reject(reply);
            }
        };
        let mut prefix = received_header(&ReceivedInfo {
            helo: &message.helo,
            peer: peer.ip(),
            hostname: &self.inbound.session.hostname,
            protocol: message.protocol,
            tls: message.tls.as_deref(),
            auth_user: message.auth_user.as_deref().filter(|_| {
                self.inbound
                    .auth
                    .as_ref()
                    .is_some_and(|a| a.received_shows_user)
            }),
            id: &id.to_string(),
            recipients: &message.recipients,
            timestamp: now,
        });
        prefix.push_str(&added_headers);
        prefix.push_str(&repairs.fields);
        // Signed last, so the signatures cover the message as it will leave: the plugins'
        // headers and the repairs included.
        let mut signed_by = None;
        if let Some(keys) = self
            .inbound
            .signing
            .as_ref()
            .and_then(|signing| signing.keys_for(&tags, repairs.from_domain.as_deref()))
        {
            signed_by = keys.first().map(|k| k.domain.clone());
            let mut whole = Vec::with_capacity(prefix.len() + message.body.len());
            whole.extend_from_slice(prefix.as_bytes());
            whole.extend_from_slice(&message.body);
            match crate::signing::sign_off_thread(keys, whole, now).await {
                Ok(fields) => prefix.insert_str(0, &fields),
                Err(err) => return dkim_failed(&err),
            }
        }
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
                tracing::info!(event = "received", msg_id = %id, from = %from, rcpts, size = message.body.len() + prefix.len(), client = %peer.ip(), helo = %message.helo, auth_user = message.auth_user.as_deref().unwrap_or(""), tls = message.tls.as_deref().unwrap_or("none"), dkim = signed_by.as_deref().unwrap_or(""), tags = %tag_text, "message queued");
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
