//! Prometheus metrics: the relay's counters and gauges, and the `GET /metrics` HTTP endpoint.
//!
//! Hot paths count through [`global()`]: every handle is created once, with its labels, so an
//! event costs one relaxed atomic add and never allocates. Plugin metrics are not counted here
//! at all: they are read from the current plugin set when a scrape arrives
//! ([`PluginCollector`]), so hook calls carry no extra work for them.
//!
//! The endpoint is a deliberately small HTTP/1.1 responder (no HTTP library): it reads one
//! request head (at most [`MAX_HEAD`] bytes within [`HEAD_TIMEOUT`]), answers it and closes
//! the connection. Deciding the answer ([`route`]) is a plain function of the head's bytes.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use prometheus_client::registry::Unit;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::policy::Policy;
use crate::spool::Spool;

/// Longest request head (request line and headers) the endpoint reads; longer gets `431`.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head; then it gets `408`.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to write a response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the response, unread request bytes (a body) are read and dropped for at most this
/// long and [`LINGER_BYTES`], so closing does not reset the connection before the client has
/// read the response.
const LINGER: Duration = Duration::from_secs(1);
/// See [`LINGER`].
const LINGER_BYTES: usize = 64 * 1024;
/// Scrapes served at once; connections beyond it are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// What prometheus-client's text encoder produces.
const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label set of one fixed label (its series are created once, at start).
type Labels1 = [(&'static str, &'static str); 1];
/// A label set of two fixed labels (its series are created once, at start).
type Labels2 = [(&'static str, &'static str); 2];

/// The relay's own counters and gauges, registered once in their registry.
pub(crate) struct Metrics {
    registry: Registry,
    received: Counter,
    refused_mail_spool: Counter,
    refused_rcpt_policy: Counter,
    refused_data_policy: Counter,
    refused_data_spool: Counter,
    delivered: Counter,
    deferred: Counter,
    bounced: Counter,
    suppressed: Counter,
    delivered_plain: Counter,
    delivered_tls12: Counter,
    delivered_tls12_verified: Counter,
    delivered_tls13: Counter,
    delivered_tls13_verified: Counter,
    dsn_queued: Counter,
    bounces_returned: Counter,
    queue: Gauge,
    connections: Gauge,
    connections_refused: Counter,
    spool_writes: Counter,
    spool_syncs: Counter,
    tls_handshakes_ok: Counter,
    tls_handshakes_failed: Counter,
    auth_ok: Counter,
    auth_failed: Counter,
    auth_locked_out: Counter,
    rcpt_batches: Counter,
    rcpt_batch_questions: Counter,
    data_batches: Counter,
    data_batch_questions: Counter,
}

/// The process-wide metrics (created on first use).
pub(crate) fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Holds one open inbound SMTP session in `relay_smtp_connections` until dropped.
pub(crate) struct OpenSession(&'static Metrics);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

impl Metrics {
    /// Registers every metric, with every label set pre-created (so all series show from the
    /// first scrape, at 0).
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();

        let received = Counter::default();
        registry.register(
            "relay_messages_received",
            "Messages accepted and queued (250 after DATA); DSNs the relay generates are not included",
            received.clone(),
        );

        let refused = Family::<Labels2, Counter>::default();
        registry.register(
            "relay_messages_refused",
            "Refusals by the relay's own decisions: stage=rcpt counts recipients refused by a plugin (reason=policy); stage=mail and stage=data count transactions refused because the spool could not take them (reason=spool) or, at data, refused by a plugin (reason=policy). SMTP syntax, relay-access and size limits are not counted here",
            refused.clone(),
        );
        let refusal = |stage: &'static str, reason: &'static str| {
            refused.get_or_create_owned(&[("stage", stage), ("reason", reason)])
        };

        let deliveries = Family::<Labels1, Counter>::default();
        registry.register(
            "relay_deliveries",
            "Delivery attempt outcomes per recipient: delivered; deferred (temporary failure, retried later); bounced (permanent failure or expired, a DSN goes to the sender); suppressed (given up by a plugin, no DSN). Holds by a plugin's throttle are not attempts",
            deliveries.clone(),
        );
        let result = |result: &'static str| deliveries.get_or_create_owned(&[("result", result)]);

        let delivered_tls = Family::<Labels2, Counter>::default();
        registry.register(
            "relay_delivered_tls",
            "Delivered recipients by the protection of their session: tls=none (plain text), TLSv1.2 or TLSv1.3; verified=true when the MX certificate was checked (tls policy verify)",
            delivered_tls.clone(),
        );
        let protection = |tls: &'static str, verified: &'static str| {
            delivered_tls.get_or_create_owned(&[("tls", tls), ("verified", verified)])
        };

        let dsn_queued = Counter::default();
        registry.register(
            "relay_dsn_queued",
            "Bounce reports (RFC 3464 DSNs) queued for senders",
            dsn_queued.clone(),
        );

        let bounces_returned = Counter::default();
        registry.register(
            "relay_bounces_returned",
            "Failed or delayed recipients reported by DSNs that came back to a [bounces] domain (each was shown to on_bounce)",
            bounces_returned.clone(),
        );

        let queue = Gauge::default();
        registry.register(
            "relay_queue_messages",
            "Messages in the queue on disk (not yet delivered or bounced for every recipient), DSNs included: counted when the relay starts, then kept by every arrival and every message leaving the queue",
            queue.clone(),
        );

        let connections = Gauge::default();
        registry.register(
            "relay_smtp_connections",
            "Inbound SMTP sessions open now (admitted within max_connections)",
            connections.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "relay_smtp_connections_refused",
            "Inbound connections turned away with 421 because max_connections or max_connections_per_ip was reached",
            connections_refused.clone(),
        );

        let spool_writes = Counter::default();
        registry.register(
            "relay_spool_writes",
            "Atomic writes to the spool (a queued message, a delivery outcome), many of which share one fsync",
            spool_writes.clone(),
        );
        let spool_syncs = Counter::default();
        registry.register(
            "relay_spool_syncs",
            "fsyncs of the spool's write-ahead log; relay_spool_writes divided by this is the group commit's batch size",
            spool_syncs.clone(),
        );

        let tls_handshakes = Family::<Labels1, Counter>::default();
        registry.register(
            "relay_tls_handshakes",
            "Inbound TLS handshakes (STARTTLS and implicit TLS) by result: ok or failed (including timeouts)",
            tls_handshakes.clone(),
        );
        let auth = Family::<Labels1, Counter>::default();
        registry.register(
            "relay_auth_attempts",
            "SMTP AUTH attempts by result: ok; failed (bad user name or password); locked_out (refused with 421 because the client address failed too often)",
            auth.clone(),
        );
        let batches = Family::<Labels1, Counter>::default();
        registry.register(
            "relay_plugin_batches",
            "Batches of on_rcpt or on_data questions (hook label) that the plugins answered one after the other, plugin by plugin: sessions that reach a hook while a worker thread is busy with others are asked together",
            batches.clone(),
        );
        let batch_questions = Family::<Labels1, Counter>::default();
        registry.register(
            "relay_plugin_batch_questions",
            "Questions (recipients for on_rcpt, messages for on_data) asked in those batches; divided by relay_plugin_batches_total it is the mean batch size",
            batch_questions.clone(),
        );
        let handshakes =
            |result: &'static str| tls_handshakes.get_or_create_owned(&[("result", result)]);
        let logins = |result: &'static str| auth.get_or_create_owned(&[("result", result)]);

        Metrics {
            tls_handshakes_ok: handshakes("ok"),
            tls_handshakes_failed: handshakes("failed"),
            auth_ok: logins("ok"),
            auth_failed: logins("failed"),
            auth_locked_out: logins("locked_out"),
            rcpt_batches: batches.get_or_create_owned(&[("hook", "on_rcpt")]),
            rcpt_batch_questions: batch_questions.get_or_create_owned(&[("hook", "on_rcpt")]),
            data_batches: batches.get_or_create_owned(&[("hook", "on_data")]),
            data_batch_questions: batch_questions.get_or_create_owned(&[("hook", "on_data")]),
            received,
            refused_mail_spool: refusal("mail", "spool"),
            refused_rcpt_policy: refusal("rcpt", "policy"),
            refused_data_policy: refusal("data", "policy"),
            refused_data_spool: refusal("data", "spool"),
            delivered: result("delivered"),
            deferred: result("deferred"),
            bounced: result("bounced"),
            suppressed: result("suppressed"),
            delivered_plain: protection("none", "false"),
            delivered_tls12: protection("TLSv1.2", "false"),
            delivered_tls12_verified: protection("TLSv1.2", "true"),
            delivered_tls13: protection("TLSv1.3", "false"),
            delivered_tls13_verified: protection("TLSv1.3", "true"),
            dsn_queued,
            bounces_returned,
            queue,
            connections,
            connections_refused,
            spool_writes,
            spool_syncs,
            registry,
        }
    }

    /// The spool wrote `writes` requests in one group, then synced `syncs` times (0 or 1).
    pub(crate) fn spool_written(&self, writes: usize, syncs: u64) {
        self.spool_writes.inc_by(writes as u64);
        self.spool_syncs.inc_by(syncs);
    }

    /// The plugins answered `questions` on_rcpt questions as one batch.
    pub(crate) fn rcpt_batch(&self, questions: usize) {
        self.rcpt_batches.inc();
        self.rcpt_batch_questions.inc_by(questions as u64);
    }

    /// The plugins answered `questions` on_data questions as one batch.
    pub(crate) fn data_batch(&self, questions: usize) {
        self.data_batches.inc();
        self.data_batch_questions.inc_by(questions as u64);
    }

    /// An inbound TLS handshake ended.
    pub(crate) fn tls_handshake(&self, ok: bool) {
        if ok {
            self.tls_handshakes_ok.inc();
        } else {
            self.tls_handshakes_failed.inc();
        }
    }

    /// An AUTH attempt ended: `"ok"`, `"failed"` or `"locked_out"`.
    pub(crate) fn auth_attempt(&self, result: &str) {
        match result {
            "ok" => self.auth_ok.inc(),
            "failed" => self.auth_failed.inc(),
            _ => self.auth_locked_out.inc(),
        };
    }

    /// A message was queued (after its 250): counted as received and in the queue.
    pub(crate) fn message_received(&self) {
        self.received.inc();
        self.queue.inc();
    }

    /// A message left the queue (every recipient delivered or bounced).
    pub(crate) fn message_completed(&self) {
        self.queue.dec();
    }

    /// Sets the queue size, counted on disk at start-up.
    pub(crate) fn set_queue_messages(&self, messages: usize) {
        self.queue.set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    /// MAIL FROM refused because the spool is short of space.
    pub(crate) fn mail_refused_spool(&self) {
        self.refused_mail_spool.inc();
    }

    /// A recipient refused by a plugin's on_rcpt verdict.
    pub(crate) fn rcpt_refused_policy(&self) {
        self.refused_rcpt_policy.inc();
    }

    /// A message refused by a plugin's on_data verdict.
    pub(crate) fn data_refused_policy(&self) {
        self.refused_data_policy.inc();
    }

    /// A message refused because the spool could not store it.
    pub(crate) fn data_refused_spool(&self) {
        self.refused_data_spool.inc();
    }

    /// A recipient was delivered.
    pub(crate) fn delivered(&self) {
        self.delivered.inc();
    }

    /// A delivered recipient's session protection: `None` for plain text.
    pub(crate) fn delivered_tls(&self, tls: Option<&crate::delivery::tls::TlsInfo>) {
        let counter = match tls {
            None => &self.delivered_plain,
            Some(t) => match (t.version, t.verified) {
                ("TLSv1.2", false) => &self.delivered_tls12,
                ("TLSv1.2", true) => &self.delivered_tls12_verified,
                (_, false) => &self.delivered_tls13,
                (_, true) => &self.delivered_tls13_verified,
            },
        };
        counter.inc();
    }

    /// A recipient's attempt failed temporarily; it will be retried.
    pub(crate) fn deferred(&self) {
        self.deferred.inc();
    }

    /// A recipient bounced (a DSN is queued if the message has a sender).
    pub(crate) fn bounced(&self) {
        self.bounced.inc();
    }

    /// A recipient was given up by a plugin without a DSN.
    pub(crate) fn suppressed(&self) {
        self.suppressed.inc();
    }

    /// A DSN was queued: counted, and in the queue.
    pub(crate) fn dsn_queued(&self) {
        self.dsn_queued.inc();
        self.queue.inc();
    }

    /// A recipient block of a returned DSN was reported to on_bounce.
    pub(crate) fn bounce_returned(&self) {
        self.bounces_returned.inc();
    }

    /// An inbound session was admitted; it counts as open until the guard is dropped.
    pub(crate) fn smtp_session(&'static self) -> OpenSession {
        self.connections.inc();
        OpenSession(self)
    }

    /// An inbound connection was turned away by a connection limit.
    pub(crate) fn smtp_connection_refused(&self) {
        self.connections_refused.inc();
    }
}

/// The plugins' metrics, read from the current plugin set at each scrape. Counts belong to one
/// version of a plugin: replacing its file starts them again at 0 (a counter reset, which
/// `rate()` handles), and a removed plugin's series disappear.
struct PluginCollector {
    policy: Option<Policy>,
}

impl fmt::Debug for PluginCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginCollector")
            .field("enabled", &self.policy.is_some())
            .finish()
    }
}

impl Collector for PluginCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = match &self.policy {
            Some(policy) => policy.snapshot().stats(),
            None => Vec::new(),
        };

        let loaded = ConstGauge::new(i64::try_from(stats.len()).unwrap_or(i64::MAX));
        loaded.encode(encoder.encode_descriptor(
            "relay_plugins_loaded",
            "Policy plugins in the current plugin set (quarantined ones included).",
            None,
            loaded.metric_type(),
        )?)?;

        // An OpenMetrics info family: the sample is `relay_plugin_info{...} 1`.
        let mut info = encoder.encode_descriptor(
            "relay_plugin",
            "The version (from describe()) and file SHA-256 of each loaded plugin.",
            None,
            MetricType::Info,
        )?;
        for s in &stats {
            info.encode_info(&[
                ("plugin", s.name.as_str()),
                ("version", s.version.as_str()),
                ("sha256", s.sha256.as_str()),
            ])?;
        }

        let mut quarantined = encoder.encode_descriptor(
            "relay_plugin_quarantined",
            "1 while a plugin is quarantined after max_faults faults within fault_window (skipped until its file is replaced), else 0.",
            None,
            MetricType::Gauge,
        )?;
        for s in &stats {
            let labels = [("plugin", s.name.as_str())];
            ConstGauge::new(i64::from(s.quarantined))
                .encode(quarantined.encode_family(&labels)?)?;
        }

        let mut calls = encoder.encode_descriptor(
            "relay_plugin_calls",
            "Hook calls that ran the plugin (faulted ones included, calls skipped by quarantine not), per hook it implements, since this version of the plugin was loaded.",
            None,
            MetricType::Counter,
        )?;
        for s in &stats {
            for hook in &s.calls {
                let labels = [("plugin", s.name.as_str()), ("hook", hook.hook)];
                ConstCounter::new(hook.calls).encode(calls.encode_family(&labels)?)?;
            }
        }

        let mut seconds = encoder.encode_descriptor(
            "relay_plugin_call",
            "Wall time spent in those hook calls (taking an instance, marshalling the input and verdict, the plugin's code and its host calls); divided by relay_plugin_calls_total it is the mean cost of a call.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for s in &stats {
            for hook in &s.calls {
                let labels = [("plugin", s.name.as_str()), ("hook", hook.hook)];
                ConstCounter::new(hook.seconds).encode(seconds.encode_family(&labels)?)?;
            }
        }

        let mut reused = encoder.encode_descriptor(
            "relay_plugin_reused_verdicts",
            "choose_ip answers given without calling the plugin, because it allowed its verdict for the same sender domain, destination, MX host and tags to be reused (reuse-ms).",
            None,
            MetricType::Counter,
        )?;
        for s in &stats {
            for hook in s.calls.iter().filter(|h| h.hook == "choose_ip") {
                let labels = [("plugin", s.name.as_str()), ("hook", hook.hook)];
                ConstCounter::new(hook.reused).encode(reused.encode_family(&labels)?)?;
            }
        }

        let mut faults = encoder.encode_descriptor(
            "relay_plugin_faults",
            "Plugin faults by kind: trap (including a guest panic), timeout (ran past time_budget), memory (hit memory_limit); each call that faulted got the hook's fallback. Since this version of the plugin was loaded.",
            None,
            MetricType::Counter,
        )?;
        for s in &stats {
            for (kind, n) in [
                ("trap", s.faults.trap),
                ("timeout", s.faults.timeout),
                ("memory", s.faults.memory),
            ] {
                let labels = [("plugin", s.name.as_str()), ("kind", kind)];
                ConstCounter::new(n).encode(faults.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The spool's memory, read from RocksDB when a scrape arrives.
struct SpoolCollector {
    spool: Spool,
}

impl fmt::Debug for SpoolCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolCollector").finish()
    }
}

impl Collector for SpoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let memory = self.spool.memory();
        let mut family = encoder.encode_descriptor(
            "relay_spool_memory",
            "Memory RocksDB holds for the spool, by kind: memtables (all column families, bounded by a 64 MiB budget), block_cache (data, index and filter blocks, 32 MiB), table_readers (outside the cache)",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for (kind, bytes) in [
            ("memtables", memory.memtables),
            ("block_cache", memory.block_cache),
            ("table_readers", memory.table_readers),
        ] {
            let gauge = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
            gauge.encode(family.encode_family(&[("kind", kind)])?)?;
        }
        Ok(())
    }
}

/// What `GET /metrics` serves: the relay's metrics and the plugins' state.
pub(crate) struct Endpoint {
    metrics: &'static Metrics,
    /// Collectors read at scrape time: the plugins' state and the spool's memory.
    collectors: Registry,
}

impl Endpoint {
    /// An endpoint for the global metrics, the spool's memory and `policy`'s plugins (none
    /// without plugins).
    pub(crate) fn new(spool: Spool, policy: Option<Policy>) -> Endpoint {
        let mut endpoint = Endpoint::with_metrics(global(), policy);
        endpoint
            .collectors
            .register_collector(Box::new(SpoolCollector { spool }));
        endpoint
    }

    fn with_metrics(metrics: &'static Metrics, policy: Option<Policy>) -> Endpoint {
        let mut collectors = Registry::default();
        collectors.register_collector(Box::new(PluginCollector { policy }));
        Endpoint {
            metrics,
            collectors,
        }
    }

    /// The exposition in the OpenMetrics text format.
    fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        encode_registry(&mut out, &self.metrics.registry)?;
        encode_registry(&mut out, &self.collectors)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// What the endpoint answers to one request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (`body`) or `HEAD /metrics` (no body).
    Metrics { body: bool },
    /// Another path.
    NotFound,
    /// `/metrics` with a method other than GET or HEAD.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line.
    BadRequest,
}

/// Decides the answer from a complete request head (RFC 9112 section 3: `method SP
/// request-target SP HTTP-version`). Headers are not needed and not looked at.
fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = &head[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    // The absolute form (`http://host/metrics`, RFC 9112 3.2.2) names the same path.
    let target = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    if !is_token(method)
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
        || !target.starts_with('/')
        || target.bytes().any(|b| !b.is_ascii_graphic())
    {
        return Route::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { body: true },
        "HEAD" => Route::Metrics { body: false },
        _ => Route::MethodNotAllowed,
    }
}

/// How reading a request head ended.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The head is complete (up to and including the empty line).
    Complete(Vec<u8>),
    /// More than [`MAX_HEAD`] bytes came without the empty line that ends a head.
    TooLarge,
    /// The client closed the connection (or it failed) before the head was complete.
    Closed,
    /// The head did not arrive in time.
    TimedOut,
}

/// The offset just past the empty line that ends a head (CRLF CRLF, or LF LF from lenient
/// clients), if `buf` has one.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reads one request head of at most `max` bytes within `timeout`.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, max: usize, timeout: Duration) -> Head {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Head::Closed,
                Ok(n) => n,
            };
            // Only the new bytes (and the three before them) can complete the terminator.
            let from = buf.len().saturating_sub(3);
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = head_end(&buf[from..]) {
                let end = from + end;
                if end > max {
                    return Head::TooLarge;
                }
                buf.truncate(end);
                return Head::Complete(std::mem::take(&mut buf));
            }
            if buf.len() > max {
                return Head::TooLarge;
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Head::TimedOut)
}

/// An HTTP/1.1 response that closes the connection.
fn response(
    status: &str,
    content_type: &str,
    extra: &str,
    body: &[u8],
    send_body: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if send_body {
        out.extend_from_slice(body);
    }
    out
}

/// A plain-text error response.
fn error_response(status: &str, extra: &str, text: &str) -> Vec<u8> {
    response(
        status,
        "text/plain; charset=utf-8",
        extra,
        text.as_bytes(),
        true,
    )
}

/// Serves one connection: one request, one response, then close.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    endpoint: &Endpoint,
    max_head: usize,
    head_timeout: Duration,
) {
    let reply = match read_head(&mut stream, max_head, head_timeout).await {
        Head::Closed => return,
        Head::TimedOut => error_response(
            "408 Request Timeout",
            "",
            "the request head did not arrive in time\n",
        ),
        Head::TooLarge => error_response(
            "431 Request Header Fields Too Large",
            "",
            "the request head is too large\n",
        ),
        Head::Complete(head) => match route(&head) {
            Route::BadRequest => error_response(
                "400 Bad Request",
                "",
                "not an HTTP/1.x request; try GET /metrics\n",
            ),
            Route::NotFound => error_response(
                "404 Not Found",
                "",
                "not found; the metrics are at /metrics\n",
            ),
            Route::MethodNotAllowed => error_response(
                "405 Method Not Allowed",
                "Allow: GET, HEAD\r\n",
                "only GET and HEAD are served\n",
            ),
            Route::Metrics { body } => match endpoint.render() {
                Ok(text) => response("200 OK", OPENMETRICS_TYPE, "", text.as_bytes(), body),
                Err(_) => {
                    tracing::warn!(event = "metrics_failed", "encoding the metrics failed");
                    error_response(
                        "500 Internal Server Error",
                        "",
                        "the metrics could not be encoded\n",
                    )
                }
            },
        },
    };
    let write = async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    };
    if !matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(()))) {
        return;
    }
    let linger = async {
        let mut scratch = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, linger).await;
}

/// Accepts scrapes on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(event = "metrics_accept_failed", error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(client = %peer, "too many metrics connections; closing");
            continue;
        };
        let endpoint = Arc::clone(&endpoint);
        tokio::spawn(async move {
            handle(stream, &endpoint, MAX_HEAD, HEAD_TIMEOUT).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint::with_metrics(Box::leak(Box::new(Metrics::new())), None)
    }

    #[test]
    fn deliveries_are_counted_by_tls_version_and_verification() {
        use crate::delivery::tls::TlsInfo;
        let metrics = Metrics::new();
        let tls = |version, verified| TlsInfo {
            version,
            cipher: "TLS13_AES_256_GCM_SHA384",
            verified,
        };
        metrics.delivered_tls(None);
        metrics.delivered_tls(Some(&tls("TLSv1.3", true)));
        metrics.delivered_tls(Some(&tls("TLSv1.3", true)));
        metrics.delivered_tls(Some(&tls("TLSv1.2", false)));
        let mut out = String::new();
        encode_registry(&mut out, &metrics.registry).unwrap();
        for series in [
            "relay_delivered_tls_total{tls=\"none\",verified=\"false\"} 1",
            "relay_delivered_tls_total{tls=\"TLSv1.3\",verified=\"true\"} 2",
            "relay_delivered_tls_total{tls=\"TLSv1.2\",verified=\"false\"} 1",
            "relay_delivered_tls_total{tls=\"TLSv1.2\",verified=\"true\"} 0",
            "relay_delivered_tls_total{tls=\"TLSv1.3\",verified=\"false\"} 0",
        ] {
            assert!(out.contains(series), "{series} in\n{out}");
        }
    }

    /// Sends `request` to a fresh connection and returns the whole response as text.
    async fn exchange(endpoint: &Endpoint, request: &[u8], max_head: usize) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = handle(server, endpoint, max_head, Duration::from_secs(5));
        let talking = async move {
            // The server may answer (and close) before it read everything.
            let _ = client.write_all(request).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
            out
        };
        let ((), out) = tokio::join!(serving, talking);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn status_line(response: &str) -> &str {
        response.lines().next().unwrap_or_default()
    }

    #[test]
    fn routes_follow_method_and_path() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { body: false }
        );
        assert_eq!(
            route(b"GET http://127.0.0.1:9090/metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            route(b"GET http://127.0.0.1:9090 HTTP/1.1\r\n\r\n"),
            Route::NotFound
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metrics/x HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"DELETE /other HTTP/1.1\r\n\r\n"), Route::NotFound);
    }

    #[test]
    fn malformed_request_lines_are_bad_requests() {
        for bad in [
            &b"\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET /metrics SMTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
            b"GET /m\xffetrics HTTP/1.1\r\n\r\n",
            b"GET /metrics\x00 HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n",
        ] {
            assert_eq!(
                route(bad),
                Route::BadRequest,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn head_end_finds_crlf_and_lf_terminators() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[tokio::test]
    async fn get_metrics_answers_200_with_the_openmetrics_exposition() {
        let endpoint = endpoint();
        endpoint.metrics.message_received();
        endpoint.metrics.delivered();
        endpoint.metrics.delivered();
        let response = exchange(
            &endpoint,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            MAX_HEAD,
        )
        .await;
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK", "{response}");
        assert!(
            response.contains(&format!("Content-Type: {OPENMETRICS_TYPE}\r\n")),
            "{response}"
        );
        assert!(response.contains("Connection: close\r\n"), "{response}");
        let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
        for line in [
            "relay_messages_received_total 1",
            "relay_deliveries_total{result=\"delivered\"} 2",
            "relay_deliveries_total{result=\"bounced\"} 0",
            "relay_messages_refused_total{stage=\"rcpt\",reason=\"policy\"} 0",
            "relay_queue_messages 1",
            "relay_smtp_connections 0",
            "relay_plugins_loaded 0",
            "# TYPE relay_plugin_faults counter",
        ] {
            assert!(body.lines().any(|l| l == line), "{line:?} missing:\n{body}");
        }
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    #[tokio::test]
    async fn head_metrics_answers_headers_without_a_body() {
        let response = exchange(&endpoint(), b"HEAD /metrics HTTP/1.1\r\n\r\n", MAX_HEAD).await;
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK", "{response}");
        assert!(response.ends_with("\r\n\r\n"), "{response}");
    }

    #[tokio::test]
    async fn a_bad_request_line_gets_400() {
        let response = exchange(&endpoint(), b"hello there\r\n\r\n", MAX_HEAD).await;
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 400 Bad Request",
            "{response}"
        );
        let response = exchange(&endpoint(), b"\xff\xfe\x00\x01\n\n", MAX_HEAD).await;
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 400 Bad Request",
            "{response}"
        );
    }

    #[tokio::test]
    async fn an_oversize_head_gets_431() {
        let mut request = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while request.len() <= 200 {
            request.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        // Without the empty line: the server must stop reading at the limit, not wait for it.
        let response = exchange(&endpoint(), &request, 200).await;
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 431 Request Header Fields Too Large",
            "{response}"
        );
        // With it, but past the limit.
        request.extend_from_slice(b"\r\n");
        let response = exchange(&endpoint(), &request, 200).await;
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 431 Request Header Fields Too Large",
            "{response}"
        );
    }

    #[tokio::test]
    async fn another_path_gets_404() {
        let response = exchange(&endpoint(), b"GET /admin HTTP/1.1\r\n\r\n", MAX_HEAD).await;
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 404 Not Found",
            "{response}"
        );
    }

    #[tokio::test]
    async fn another_method_gets_405_with_allow() {
        let response = exchange(
            &endpoint(),
            b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            MAX_HEAD,
        )
        .await;
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 405 Method Not Allowed",
            "{response}"
        );
        assert!(response.contains("Allow: GET, HEAD\r\n"), "{response}");
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_head_gets_408() {
        let (mut client, server) = tokio::io::duplex(1024);
        let endpoint = endpoint();
        let serving = handle(server, &endpoint, MAX_HEAD, Duration::from_millis(50));
        let talking = async move {
            client
                .write_all(b"GET /metrics HTTP/1.1\r\n")
                .await
                .expect("write");
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
            out
        };
        let ((), out) = tokio::join!(serving, talking);
        let response = String::from_utf8_lossy(&out);
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 408 Request Timeout",
            "{response}"
        );
    }

    #[tokio::test]
    async fn a_client_that_closes_early_gets_nothing_and_nothing_panics() {
        let response = exchange(&endpoint(), b"GET /met", MAX_HEAD).await;
        assert_eq!(response, "");
    }

    #[test]
    fn session_guard_counts_open_sessions() {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let first = metrics.smtp_session();
        let second = metrics.smtp_session();
        assert_eq!(metrics.connections.get(), 2);
        drop(first);
        assert_eq!(metrics.connections.get(), 1);
        drop(second);
        assert_eq!(metrics.connections.get(), 0);
    }
}
