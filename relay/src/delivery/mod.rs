//! Outbound delivery: one round per due message, recipients grouped by domain, each group sent
//! to its route or MX under the domain's TLS policy, outcomes written back to the spool (retry,
//! delivered, bounced + DSN).

pub(crate) mod client;
pub(crate) mod dsn;
pub(crate) mod mx;
mod pool;
mod source;
pub(crate) mod tls;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::{Config, NextHop, RouteDomain};
use crate::hooks;
use crate::policy::{
    BounceAction, BounceInput, ChooseInput, FailureKind, Hook, IpChoice, PluginSet, Policy,
};
use crate::signing::Signing;
use crate::smtp::{EnhancedCode, Mailbox, Reply, ReversePath};
use crate::spool::scheduler::Notifier;
use crate::spool::{now_ms, Durability, MessageId, QueueEntry, RcptState, Spool, SpoolError};

use client::{ClientSettings, Connection, RcptResult, SessionError, StartTlsError};
use mx::{DnsError, MxResolver};
use tls::{TlsFailure, TlsInfo, TlsPolicy, TlsSettings};

/// How delivery behaves, taken from the config once.
pub(crate) struct Settings {
    pub(crate) hostname: String,
    pub(crate) remote_port: u16,
    pub(crate) retry_schedule: Vec<Duration>,
    pub(crate) max_age: Duration,
    pub(crate) max_messages_per_connection: u32,
    pub(crate) routes: Vec<(RouteDomain, NextHop)>,
    pub(crate) client: ClientSettings,
    pub(crate) tls: TlsSettings,
}

impl Settings {
    pub(crate) fn from_config(config: &Config) -> Settings {
        let d = &config.delivery;
        Settings {
            hostname: config.server.hostname.0.clone(),
            remote_port: d.remote_port,
            retry_schedule: d.retry_schedule.iter().map(|x| x.0).collect(),
            max_age: d.max_age.0,
            max_messages_per_connection: d.max_messages_per_connection,
            routes: config
                .routes
                .iter()
                .map(|r| (r.domain.clone(), r.next_hop.clone()))
                .collect(),
            client: ClientSettings {
                helo_name: config.helo_name().0.clone(),
                connect_timeout: d.connect_timeout.0,
                greeting_timeout: d.command_timeout.0,
                command_timeout: d.command_timeout.0,
                data_timeout: d.data_timeout.0,
            },
            tls: TlsSettings::from_config(config),
        }
    }

    /// The wait after the `attempts`-th failed attempt; the schedule's last entry repeats.
    fn retry_delay(&self, attempts: u32) -> Duration {
        let index = (attempts.max(1) as usize - 1).min(self.retry_schedule.len() - 1);
        self.retry_schedule[index]
    }

    /// The fixed next hop for `domain`, if a route names it (exact match first, then `*`).
    fn route_for(&self, domain: &str) -> Option<&NextHop> {
        self.routes
            .iter()
            .find(|(d, _)| matches!(d, RouteDomain::Exact(x) if x == domain))
            .or_else(|| self.routes.iter().find(|(d, _)| *d == RouteDomain::Any))
            .map(|(_, hop)| hop)
    }
}

/// The delivery service. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Delivery(Arc<Inner>);

struct Inner {
    spool: Spool,
    notifier: Notifier,
    resolver: MxResolver,
    pool: pool::Pool,
    settings: Settings,
    sources: source::Sources,
    policy: Option<Policy>,
    /// DKIM keys: the relay's own bounce reports are signed like the mail it relays.
    signing: Option<Arc<Signing>>,
}

/// What happened to one recipient in one round.
enum Outcome {
    Delivered {
        reply: Reply,
        mx: String,
        /// The session's TLS; `None` in plain text.
        tls: Option<TlsInfo>,
    },
    Failed(Failure),
    /// A plugin held the delivery until this time (throttling); not an attempt.
    Held {
        until: u64,
    },
}

/// One failed attempt for one recipient.
#[derive(Clone)]
struct Failure {
    reply: Reply,
    mx: Option<String>,
    kind: FailureKind,
    source: Option<IpAddr>,
}

impl Failure {
    fn permanent(&self) -> bool {
        self.reply.code >= 500
    }
}

impl Outcome {
    fn failed(
        reply: Reply,
        mx: Option<String>,
        kind: FailureKind,
        source: Option<IpAddr>,
    ) -> Outcome {
        Outcome::Failed(Failure {
            reply,
            mx,
            kind,
            source,
        })
    }
}

/// What SMTP-level failure this was, for on_bounce.
fn failure_kind(err: &SessionError) -> FailureKind {
    match err {
        SessionError::Timeout(_) => FailureKind::Timeout,
        SessionError::Reply { .. } => FailureKind::RemoteReply,
        SessionError::Connect(_) | SessionError::Io(_) | SessionError::Protocol(_) => {
            FailureKind::Connection
        }
        SessionError::Tls(_) => FailureKind::Tls,
    }
}

/// One destination's share of a delivery round.
struct Group {
    id: MessageId,
    domain: String,
    from: ReversePath,
    rcpts: Vec<(usize, Mailbox)>,
    body: Arc<Vec<u8>>,
    eight_bit: bool,
    smtputf8: bool,
    tags: Vec<(String, String)>,
    plugins: Option<Arc<PluginSet>>,
    tls_policy: TlsPolicy,
}

impl Delivery {
    pub(crate) fn new(
        spool: Spool,
        notifier: Notifier,
        resolver: MxResolver,
        policy: Option<Policy>,
        signing: Option<Arc<Signing>>,
        config: &Config,
    ) -> Delivery {
        Delivery(Arc::new(Inner {
            spool,
            notifier,
            resolver,
            pool: pool::Pool::new(
                config.delivery.max_connections_per_destination,
                config.delivery.idle_timeout.0,
            ),
            settings: Settings::from_config(config),
            sources: source::Sources::from_config(config),
            policy,
            signing,
        }))
    }

    /// Delivers every id the scheduler dispatches, each in its own task.
    pub(crate) async fn run(self, mut dispatched: mpsc::UnboundedReceiver<MessageId>) {
        let sweeper = {
            let this = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    this.0.pool.sweep();
                }
            })
        };
        while let Some(id) = dispatched.recv().await {
            let this = self.clone();
            tokio::spawn(async move {
                let next = match this.round(id).await {
                    Ok(next) => next,
                    Err(err) => {
                        tracing::error!(event = "delivery_error", msg_id = %id, error = %err, "delivery round failed; will retry");
                        Some(now_ms() + 60_000)
                    }
                };
                this.0.notifier.done(id, next).await;
            });
        }
        sweeper.abort();
    }

    /// One delivery round for a message: every due recipient is tried once. Returns when the
    /// message is next due, or `None` when it has left the queue.
    async fn round(&self, id: MessageId) -> Result<Option<u64>, SpoolError> {
        let spool = self.0.spool.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<_, SpoolError> {
            let Some(entry) = spool.entry(id)? else {
                return Ok(None);
            };
            let body = spool.body(id)?;
            Ok(Some((entry, body)))
        })
        .await
        .map_err(|e| SpoolError::Io(e.to_string()))??;
        let Some((mut entry, body)) = loaded else {
            return Ok(None);
        };
        let Some(body) = body else {
            return Err(SpoolError::Corrupt {
                id,
                reason: "queue entry without a body".into(),
            });
        };
        let body = Arc::new(body);
        let now = now_ms();
        let old_due = entry.due_ms;
        let expires_ms = entry.arrival_ms + self.0.settings.max_age.as_millis() as u64;

        // The plugin set for this round; a reload mid-round does not change it.
        let plugins = self.0.policy.as_ref().map(Policy::snapshot);
        let mut outcomes: Vec<(usize, Outcome)> = Vec::new();
        {
            // One transaction per destination: a domain, or a route's next hop shared by
            // every domain it serves that has the same TLS policy.
            type Destination = (String, TlsPolicy, Vec<(usize, Mailbox)>);
            let mut by_destination: BTreeMap<String, Destination> = BTreeMap::new();
            for (i, r) in entry.recipients.iter().enumerate() {
                if r.is_due(now) {
                    let policy = self.0.settings.tls.policy_for(&r.addr.domain);
                    let key = match self.0.settings.route_for(&r.addr.domain) {
                        Some(hop) => format!("route:{hop}|tls:{policy}"),
                        None => r.addr.domain.clone(),
                    };
                    by_destination
                        .entry(key)
                        .or_insert_with(|| (r.addr.domain.clone(), policy, Vec::new()))
                        .2
                        .push((i, r.addr.clone()));
                }
            }
            let mut groups = JoinSet::new();
            for (_, (domain, tls_policy, rcpts)) in by_destination {
                let this = self.clone();
                let group = Group {
                    id,
                    domain,
                    from: entry.mail_from.clone(),
                    rcpts,
                    body: Arc::clone(&body),
                    eight_bit: entry.eight_bit,
                    smtputf8: entry.smtputf8,
                    tags: entry.tags.clone(),
                    plugins: plugins.clone(),
                    tls_policy,
                };
                groups.spawn(async move { this.deliver_group(group).await });
            }
            while let Some(done) = groups.join_next().await {
                match done {
                    Ok(results) => outcomes.extend(results),
                    Err(err) => {
                        tracing::error!(event = "delivery_error", msg_id = %id, error = %err, "delivery task failed")
                    }
                }
            }
        }

        let bounced = self.apply(
            id,
            &mut entry,
            outcomes,
            now,
            expires_ms,
            plugins.as_deref(),
        );
        // A schedule key is never written in the past: the scheduler's scans start a few
        // seconds before their last start (spool::scheduler), and would miss it.
        entry.due_ms = entry.due_ms.max(now_ms());
        let mut ops = Spool::update_ops(id, old_due, &entry)?;
        let mut dsn_id = None;
        if !bounced.is_empty() {
            if let ReversePath::Mailbox(sender) = &entry.mail_from {
                let mut report = dsn::build_bounce(&dsn::BounceInput {
                    reporting_mta: &self.0.settings.hostname,
                    original_envelope_id: &id.to_string(),
                    arrival_date: entry.arrival_ms / 1000,
                    now: now / 1000,
                    original_sender: sender,
                    failed: &bounced,
                    original_message: &body,
                });
                if let Some(signing) = &self.0.signing {
                    report = sign_report(signing, report, now / 1000).await;
                }
                let (new_id, _, more) =
                    Spool::new_message_ops(ReversePath::Null, sender.clone(), report)?;
                ops.extend(more);
                dsn_id = Some(new_id);
            }
        }
        // The outcome need not be on disk before the next attempt or the next message: a
        // power failure before its sync can only repeat a delivery (see spool::Durability).
        self.0.spool.commit(ops, Durability::Soon).await?;
        if let Some(dsn_id) = dsn_id {
            tracing::info!(event = "dsn_queued", msg_id = %id, dsn_id = %dsn_id, "bounce report queued for the sender");
            crate::metrics::global().dsn_queued();
            self.0.notifier.queued(dsn_id);
        }
        Ok(if entry.is_done() {
            tracing::info!(event = "completed", msg_id = %id, "message left the queue");
            crate::metrics::global().message_completed();
            None
        } else {
            Some(entry.due_ms)
        })
    }

    /// Records outcomes in the entry, asks on_bounce about failures, logs, and returns the
    /// recipients that bounced with a DSN.
    fn apply(
        &self,
        id: MessageId,
        entry: &mut QueueEntry,
        outcomes: Vec<(usize, Outcome)>,
        now: u64,
        expires_ms: u64,
        plugins: Option<&PluginSet>,
    ) -> Vec<dsn::FailedRecipient> {
        let mut bounced = Vec::new();
        let tags = hooks::tags(&entry.tags);
        let sender = entry.mail_from.to_string();
        for (i, outcome) in outcomes {
            let Some(rcpt) = entry.recipients.get_mut(i) else {
                continue;
            };
            let failure = match outcome {
                Outcome::Held { until } => {
                    tracing::info!(event = "held", msg_id = %id, rcpt = %rcpt.addr, until, "delivery held by policy (throttle)");
                    rcpt.state = RcptState::Deferred {
                        next_ms: until.min(expires_ms.max(now + 1)),
                    };
                    continue;
                }
                Outcome::Delivered { reply, mx, tls } => {
                    rcpt.attempts += 1;
                    let text = reply_text(&reply);
                    let (version, cipher) = tls
                        .as_ref()
                        .map_or(("none", "none"), |t| (t.version, t.cipher));
                    let verified = tls.as_ref().is_some_and(|t| t.verified);
                    tracing::info!(event = "delivered", msg_id = %id, rcpt = %rcpt.addr, mx = %mx, reply = %text, attempts = rcpt.attempts, tls = version, cipher, tls_verified = verified, "delivered");
                    crate::metrics::global().delivered();
                    crate::metrics::global().delivered_tls(tls.as_ref());
                    rcpt.state = RcptState::Delivered;
                    rcpt.last_reply = Some(text);
                    continue;
                }
                Outcome::Failed(failure) => failure,
            };
            rcpt.attempts += 1;
            let expired = now >= expires_ms && !failure.permanent();
            let verdict = plugins.filter(|p| p.implements(Hook::OnBounce)).map(|p| {
                p.on_bounce(&BounceInput {
                    message_id: id.to_string(),
                    recipient: rcpt.addr.to_string(),
                    sender: sender.clone(),
                    attempt: rcpt.attempts,
                    kind: if expired {
                        FailureKind::Expired
                    } else {
                        failure.kind
                    },
                    reply: hooks::smtp_reply(&failure.reply),
                    permanent: failure.permanent() || expired,
                    source_ip: failure.source.map(|ip| ip.to_string()),
                    mx_host: failure.mx.clone(),
                    tags: tags.clone(),
                })
            });
            let (action, class) = match verdict {
                Some(v) => (v.action, v.class.unwrap_or_default()),
                None => (BounceAction::NoOpinion, String::new()),
            };
            let text = reply_text(&failure.reply);
            match action {
                BounceAction::Suppress => {
                    tracing::info!(event = "suppressed", msg_id = %id, rcpt = %rcpt.addr, reply = %text, class = %class, attempts = rcpt.attempts, "recipient suppressed by policy; no DSN");
                    crate::metrics::global().suppressed();
                    rcpt.state = RcptState::Bounced;
                    rcpt.last_reply = Some(text);
                }
                BounceAction::BounceNow => {
                    let reply = if failure.permanent() {
                        failure.reply
                    } else {
                        Reply::new(
                            554,
                            Some(EnhancedCode(5, 0, 0)),
                            format!("Given up by policy; last error: {text}"),
                        )
                    };
                    bounced.push(self.bounce(id, rcpt, reply, failure.mx, &class));
                }
                BounceAction::RetryAt(at) if !expired && at > now => {
                    let next = at.min(expires_ms);
                    tracing::info!(event = "deferred", msg_id = %id, rcpt = %rcpt.addr, mx = failure.mx.as_deref().unwrap_or(""), reply = %text, class = %class, attempts = rcpt.attempts, next_attempt = next, retry_in_s = (next - now) / 1000, "deferred (retry time from policy)");
                    crate::metrics::global().deferred();
                    rcpt.state = RcptState::Deferred { next_ms: next };
                    rcpt.last_reply = Some(text);
                }
                BounceAction::RetryAt(_) | BounceAction::NoOpinion if failure.permanent() => {
                    bounced.push(self.bounce(id, rcpt, failure.reply, failure.mx, &class));
                }
                BounceAction::RetryAt(_) | BounceAction::NoOpinion if expired => {
                    // Past max_age: this was the last try (RFC 5321 4.5.4.1 give-up time).
                    let reply = Reply::new(
                        554,
                        Some(EnhancedCode(5, 4, 7)),
                        format!(
                            "Delivery time expired after {} attempts; last error: {text}",
                            rcpt.attempts
                        ),
                    );
                    bounced.push(self.bounce(id, rcpt, reply, failure.mx, &class));
                }
                BounceAction::RetryAt(_) | BounceAction::NoOpinion => {
                    // The last try happens at the expiry time itself.
                    let next = (now
                        + self.0.settings.retry_delay(rcpt.attempts).as_millis() as u64)
                        .min(expires_ms);
                    tracing::info!(event = "deferred", msg_id = %id, rcpt = %rcpt.addr, mx = failure.mx.as_deref().unwrap_or(""), reply = %text, class = %class, attempts = rcpt.attempts, next_attempt = next, retry_in_s = (next - now) / 1000, "deferred");
                    crate::metrics::global().deferred();
                    rcpt.state = RcptState::Deferred { next_ms: next };
                    rcpt.last_reply = Some(text);
                }
            }
        }
        if let Some(due) = entry.next_due_ms() {
            entry.due_ms = due;
        }
        bounced
    }

    fn bounce(
        &self,
        id: MessageId,
        rcpt: &mut crate::spool::RecipientEntry,
        reply: Reply,
        mx: Option<String>,
        class: &str,
    ) -> dsn::FailedRecipient {
        let text = reply_text(&reply);
        tracing::info!(event = "bounced", msg_id = %id, rcpt = %rcpt.addr, mx = mx.as_deref().unwrap_or(""), reply = %text, class = %class, attempts = rcpt.attempts, "bounced");
        crate::metrics::global().bounced();
        rcpt.state = RcptState::Bounced;
        rcpt.last_reply = Some(text.clone());
        let status = match reply.enhanced {
            Some(code) => code,
            None if reply.code >= 500 => EnhancedCode(5, 0, 0),
            None => EnhancedCode(4, 0, 0),
        };
        dsn::FailedRecipient {
            rcpt: rcpt.addr.clone(),
            status,
            diagnostic: Some(reply),
            remote_mta: mx,
            reason: text,
        }
    }

    /// Sends one message to the recipients of one destination (`domain` picks the route or
    /// MX), from the source address choose_ip (or the default pool) picks.
    async fn deliver_group(&self, group: Group) -> Vec<(usize, Outcome)> {
        let Group {
            id,
            domain,
            from,
            rcpts,
            body,
            eight_bit,
            smtputf8,
            tags,
            plugins,
            tls_policy,
        } = group;
        let all = |make: &dyn Fn() -> Outcome| -> Vec<(usize, Outcome)> {
            rcpts.iter().map(|(i, _)| (*i, make())).collect()
        };
        let (key, targets) = match self.targets(&domain).await {
            Ok(found) => found,
            Err(err) => {
                let reply = err.to_reply();
                return all(&|| Outcome::failed(reply.clone(), None, FailureKind::Dns, None));
            }
        };

        let id_text = id.to_string();
        let mut choice = IpChoice::NoOpinion;
        if let Some(plugins) = plugins.as_ref().filter(|p| p.implements(Hook::ChooseIp)) {
            let mx_host = targets.first().map(|(h, _)| h.as_str()).unwrap_or_default();
            let key = crate::policy::reuse_key(
                from.mailbox().map_or("", |m| m.domain.as_str()),
                &domain,
                mx_host,
                tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            );
            // Built only when a plugin has to be called, not for a reused answer.
            let verdict = plugins.choose_ip(&key, || {
                let (sources, pools) = self.0.sources.for_plugins();
                ChooseInput {
                    message_id: id_text.clone(),
                    tags: hooks::tags(&tags),
                    sender: from.address(),
                    domain: domain.clone(),
                    mx_host: mx_host.to_owned(),
                    recipients: rcpts.len() as u32,
                    sources,
                    pools,
                }
            });
            if let Some(until) = verdict.not_before.filter(|t| *t > now_ms()) {
                return all(&|| Outcome::Held { until });
            }
            choice = verdict.choice;
        }
        let source = if self.0.sources.is_empty() {
            None
        } else {
            self.0
                .sources
                .pick(&choice, source::spread_seed(&id_text, &domain))
        };
        let source_ip = source.as_ref().map(|s| s.ip);
        // Only a source with its own EHLO name needs settings of its own.
        let own_settings;
        let settings = match &source {
            Some(s) if s.ehlo != self.0.settings.client.helo_name => {
                own_settings = ClientSettings {
                    helo_name: s.ehlo.clone(),
                    ..self.0.settings.client.clone()
                };
                &own_settings
            }
            _ => &self.0.settings.client,
        };
        // Connections are pooled per destination and source address.
        let key = match source_ip {
            Some(ip) => format!("{key}|{ip}"),
            None => key,
        };
        let mut checkout = self.0.pool.checkout(&key, tls_policy).await;
        let addrs: Vec<Mailbox> = rcpts.iter().map(|(_, r)| r.clone()).collect();

        // A kept-alive connection may have been closed by the other side meanwhile: if it fails
        // before any reply, fall through to a fresh connection.
        if let Some(mut conn) = checkout.reused.take() {
            let mx = conn.peer().to_string();
            match conn.send(&from, &addrs, &body, eight_bit, smtputf8).await {
                Ok(results) => return self.finish(checkout, conn, &rcpts, results, mx, source_ip),
                Err(err) if is_stale(&err) => {
                    tracing::debug!(msg_id = %id, mx = %mx, error = %err.to_reply().lines.join(" "), "reused connection failed; opening a new one");
                }
                Err(err) => {
                    checkout.release(None);
                    let reply = err.to_reply();
                    let kind = failure_kind(&err);
                    return all(&|| {
                        Outcome::failed(reply.clone(), Some(mx.clone()), kind, source_ip)
                    });
                }
            }
        }

        let mut last_error: Option<(Reply, FailureKind)> = None;
        for (host, addr) in &targets {
            if source_ip.is_some_and(|ip| ip.is_ipv4() != addr.is_ipv4()) {
                continue;
            }
            let opened = self
                .open(&id_text, host, *addr, source_ip, settings, tls_policy)
                .await;
            match opened {
                Ok(mut conn) => {
                    let mx = format!("{host}[{}]", addr.ip());
                    return match conn.send(&from, &addrs, &body, eight_bit, smtputf8).await {
                        Ok(results) => self.finish(checkout, conn, &rcpts, results, mx, source_ip),
                        Err(err) => {
                            checkout.release(None);
                            let reply = err.to_reply();
                            let kind = failure_kind(&err);
                            all(&|| {
                                Outcome::failed(reply.clone(), Some(mx.clone()), kind, source_ip)
                            })
                        }
                    };
                }
                Err(err @ SessionError::Tls(_)) => {
                    let reply = err.to_reply();
                    tracing::info!(event = "tls_failed", msg_id = %id, mx = %host, addr = %addr, source = ?source_ip, tls_policy = %tls_policy, error = %reply_text(&reply), "TLS policy not met; trying the next MX");
                    last_error = Some((reply, failure_kind(&err)));
                }
                Err(err) => {
                    let reply = err.to_reply();
                    tracing::info!(event = "connect_failed", msg_id = %id, mx = %host, addr = %addr, source = ?source_ip, error = %reply_text(&reply), "trying the next MX");
                    last_error = Some((reply, failure_kind(&err)));
                }
            }
        }
        checkout.release(None);
        // Every MX was unreachable: that is temporary even if one of them refused with a 5xx
        // greeting (RFC 5321 5.1: try the others, then queue).
        let (reply, kind) = match last_error {
            Some((r, kind)) if r.code < 500 => (r, kind),
            Some((r, kind)) => (
                Reply::new(451, Some(EnhancedCode(4, 4, 0)), reply_text(&r)),
                kind,
            ),
            None => (
                Reply::new(
                    451,
                    Some(EnhancedCode(4, 4, 4)),
                    "No MX host to try from this source address",
                ),
                FailureKind::Connection,
            ),
        };
        all(&|| Outcome::failed(reply.clone(), None, kind, source_ip))
    }

    fn finish(
        &self,
        checkout: pool::Checkout,
        conn: Connection,
        rcpts: &[(usize, Mailbox)],
        results: Vec<RcptResult>,
        mx: String,
        source: Option<IpAddr>,
    ) -> Vec<(usize, Outcome)> {
        let keep =
            conn.reusable() && conn.transactions() < self.0.settings.max_messages_per_connection;
        let tls = conn.tls().cloned();
        if keep {
            checkout.release(Some(conn));
        } else {
            checkout.release(None);
            tokio::spawn(conn.quit());
        }
        rcpts
            .iter()
            .zip(results)
            .map(|((i, _), result)| {
                let outcome = match result {
                    RcptResult::Delivered(reply) => Outcome::Delivered {
                        reply,
                        mx: mx.clone(),
                        tls: tls.clone(),
                    },
                    RcptResult::Failed(reply) => {
                        Outcome::failed(reply, Some(mx.clone()), FailureKind::RemoteReply, source)
                    }
                };
                (*i, outcome)
            })
            .collect()
    }

    /// Opens a session to one MX address and applies the TLS policy: STARTTLS when the policy
    /// wants it and the server offers it (EHLO again over TLS). `required` and `verify` fail
    /// with [`SessionError::Tls`] when TLS is not offered or fails; `opportunistic` then goes on
    /// in plain text, on a new connection if the failed handshake took the old one.
    async fn open(
        &self,
        id: &str,
        host: &str,
        addr: SocketAddr,
        source: Option<IpAddr>,
        settings: &ClientSettings,
        policy: TlsPolicy,
    ) -> Result<Connection, SessionError> {
        let conn = Connection::open(addr, source, settings).await?;
        let request = match self.0.settings.tls.request(policy, host, addr.ip()) {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(conn),
            Err(failure) => {
                tokio::spawn(conn.quit());
                return Err(SessionError::Tls(failure));
            }
        };
        if !conn.extensions().starttls {
            if policy.requires_tls() {
                tokio::spawn(conn.quit());
                return Err(SessionError::Tls(TlsFailure::NotOffered {
                    peer: request.peer,
                }));
            }
            return Ok(conn);
        }
        let (error, plain) = match conn.starttls(&request).await {
            Ok(conn) => return Ok(conn),
            Err(StartTlsError { error, plain }) => (error, plain),
        };
        if policy.requires_tls() || !matches!(error, SessionError::Tls(_)) {
            if let Some(conn) = plain {
                tokio::spawn(conn.quit());
            }
            return Err(error);
        }
        // RFC 7435: opportunistic TLS that fails must not cost the delivery.
        tracing::warn!(event = "tls_fallback", msg_id = %id, mx = %host, addr = %addr, error = %error, reconnect = plain.is_none(), "TLS failed; delivering without TLS (opportunistic policy)");
        match plain {
            Some(conn) => Ok(conn),
            None => Connection::open(addr, source, settings).await,
        }
    }

    /// Where mail for `domain` goes: the pool key and the addresses to try, in order.
    async fn targets(&self, domain: &str) -> Result<(String, Vec<(String, SocketAddr)>), DnsError> {
        if let Some(hop) = self.0.settings.route_for(domain) {
            let key = format!("route:{hop}");
            let addrs = match hop.ip() {
                Some(ip) => vec![ip],
                // A next hop that does not resolve is the operator's mistake, not the
                // recipient's: keep the mail queued instead of bouncing it.
                None => self.0.resolver.host_addrs(&hop.host).await.map_err(|e| {
                    DnsError::Temporary {
                        domain: hop.host.clone(),
                        detail: format!("route next hop: {e}"),
                    }
                })?,
            };
            let targets = addrs
                .into_iter()
                .map(|ip| (hop.host.clone(), SocketAddr::new(ip, hop.port)))
                .collect();
            return Ok((key, targets));
        }
        let port = self.0.settings.remote_port;
        let targets = self
            .0
            .resolver
            .targets(domain)
            .await?
            .into_iter()
            .flat_map(|t| {
                let host = t.host;
                t.addrs
                    .into_iter()
                    .map(move |ip| (host.clone(), SocketAddr::new(ip, port)))
            })
            .collect();
        Ok((domain.to_string(), targets))
    }
}

/// True for failures of a reused connection that happened before the server said anything
/// about this transaction (closed socket, reset), so a fresh connection may succeed.
fn is_stale(err: &client::SessionError) -> bool {
    matches!(err, client::SessionError::Io(_))
        || matches!(err, client::SessionError::Reply { reply, .. } if reply.code == 421)
}

/// One-line form of a reply for logs and queue state.
pub(crate) fn reply_text(reply: &Reply) -> String {
    let text = reply.lines.join(" ");
    match reply.enhanced {
        Some(code) => format!("{} {} {}", reply.code, code, text),
        None => format!("{} {}", reply.code, text),
    }
}

/// A bounce report with DKIM signatures by the keys its From domain (the relay's host name)
/// or the fallback domain has; unsigned, with an error logged, if signing fails: a bounce
/// that reaches the sender unsigned is better than none.
async fn sign_report(signing: &Arc<Signing>, report: Vec<u8>, now: u64) -> Vec<u8> {
    let facts = crate::hygiene::header_facts(&report);
    let from_domain = match &facts.from {
        crate::hygiene::FromField::Valid { domain } => Some(domain.as_str()),
        _ => None,
    };
    let Some(keys) = signing.keys_for(&[], from_domain) else {
        return report;
    };
    // Signed from a copy: whatever happens to the signing task, the report itself is kept.
    match crate::signing::sign_off_thread(keys, report.clone(), now).await {
        Ok(fields) => [fields.as_bytes(), &report].concat(),
        Err(err) => {
            tracing::error!(event = "dkim_sign_failed", error = %err, "a bounce report goes out unsigned");
            report
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_reach_on_bounce_as_kind_tls() {
        let err = SessionError::Tls(TlsFailure::NotOffered {
            peer: "mx.example.test [192.0.2.1]".into(),
        });
        assert!(matches!(failure_kind(&err), FailureKind::Tls));
        assert_eq!(
            reply_text(&err.to_reply()),
            "451 4.7.5 TLS required by policy but mx.example.test [192.0.2.1] offered no STARTTLS"
        );
        let io = SessionError::Io(std::io::Error::other("reset"));
        assert!(matches!(failure_kind(&io), FailureKind::Connection));
    }
}
