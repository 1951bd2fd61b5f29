//! What a plugin instance's Store holds, the `relay:policy/host` API, and the WASI surface with
//! nothing granted.
//!
//! WASI 0.2 is linked only because `std` for `wasm32-wasip2` imports it. Its synchronous
//! bindings run a few calls (blocking stream writes and reads, `wasi:io/poll`, UDP socket
//! creation) through `Handle::block_on` when a tokio runtime is current, which panics on a tokio
//! worker thread, where hooks are called. Those functions are shadowed here: stream operations
//! complete at once (stdout and stderr are sinks, stdin is empty), and waiting or opening a
//! socket traps or is denied, so no guest can block the relay or make it panic.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::bindings::sockets::network;
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::bindings::sync::sockets::{udp, udp_create_socket};
use wasmtime_wasi::p2::{DynPollable, SocketError, SocketResult, StreamResult, UdpSocket};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::relay::policy::{host, types};
use super::throttle::Throttle;
use super::StateStore;
use crate::inspect::MessageView;

/// Longest key for `kv-*`, `counter-add` and `throttle`.
const MAX_KEY_BYTES: usize = 512;
/// Largest value for `kv-set`.
const MAX_VALUE_BYTES: usize = 256 << 10;
/// Longest log line kept; the rest is cut.
const MAX_LOG_BYTES: usize = 2048;
/// Log lines per hook call; more are dropped (a plugin cannot flood the log).
const MAX_LOG_LINES_PER_CALL: u32 = 64;
/// WASI resources an instance may hold at once.
const MAX_WASI_RESOURCES: usize = 1024;
/// Table elements per table (what the pooling allocator allows too).
pub(super) const MAX_TABLE_ELEMENTS: usize = 20_000;

/// What every instance of one plugin shares: its name, its config and the host services.
pub(super) struct PluginContext {
    /// The plugin's name (the file stem), its namespace in the state store.
    pub name: String,
    /// `host.config()`.
    pub config_json: String,
    /// Persistent state.
    pub state: Arc<dyn StateStore>,
    /// The shared rate limiter.
    pub throttle: Arc<dyn Throttle>,
}

/// The data of one instance's Store.
pub(super) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// The memory and table limits, and whether the current call hit one.
    pub limits: Limits,
    ctx: Arc<PluginContext>,
    /// Per-call bookkeeping, reset by [`HostState::begin_call`].
    call: CallState,
}

#[derive(Default)]
struct CallState {
    log_lines: u32,
    /// The last error-level line the plugin logged during the call (the SDK logs panics so).
    last_error: Option<String>,
    /// The transaction lent to the call, if any.
    transaction: Option<Arc<TransactionInfo>>,
    /// The message lent to the call, if any.
    message: Option<Arc<MessageView>>,
}

impl HostState {
    /// A fresh state for a new instance of the plugin described by `ctx`.
    pub fn new(ctx: Arc<PluginContext>, memory_limit: usize) -> HostState {
        let wasi = WasiCtx::builder()
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(64 << 10)
            .build();
        // A plugin needs a handful of WASI resources (stdio streams); the cap stops a guest
        // from filling host memory with, say, clock pollables.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_WASI_RESOURCES);
        HostState {
            wasi,
            table,
            limits: Limits::new(memory_limit),
            ctx,
            call: CallState::default(),
        }
    }

    /// Resets the per-call state before a hook call.
    pub fn begin_call(&mut self) {
        self.call = CallState::default();
        self.limits.denied = false;
    }

    /// The last error-level line the plugin logged during this call.
    pub fn last_error(&self) -> Option<&str> {
        self.call.last_error.as_deref()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// [`StoreLimits`] that also remember whether a growth was refused during the call, so a trap
/// that follows (Rust aborts on allocation failure) is reported as `kind=memory`.
pub(super) struct Limits {
    inner: StoreLimits,
    /// A memory or table growth was refused since the last [`HostState::begin_call`].
    pub denied: bool,
}

impl Limits {
    fn new(memory_limit: usize) -> Limits {
        Limits {
            inner: StoreLimitsBuilder::new()
                .memory_size(memory_limit)
                .table_elements(MAX_TABLE_ELEMENTS)
                .instances(64)
                .tables(64)
                .memories(8)
                .build(),
            denied: false,
        }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        self.denied |= !allowed;
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.denied = true;
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.table_growing(current, desired, maximum)?;
        self.denied |= !allowed;
        Ok(allowed)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.denied = true;
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// The WASI clocks a plugin sees: always zero. The relay's clock is `host.now-ms`.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

fn check_key(function: &str, key: &str) -> wasmtime::Result<()> {
    if key.len() > MAX_KEY_BYTES {
        wasmtime::bail!(
            "host.{function}: a key of {} bytes is longer than the limit of {MAX_KEY_BYTES}",
            key.len()
        );
    }
    Ok(())
}

fn ttl(ttl_ms: Option<u64>) -> Option<Duration> {
    ttl_ms.map(Duration::from_millis)
}

/// One line of text for the log: control characters become spaces, at most `max` bytes.
pub(super) fn one_line(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > max {
        out.truncate(out.floor_char_boundary(max));
        out.push('…');
    }
    out
}

/// Whether the log filter lets a `plugin_log` line at `level` through (same module, so the
/// same target as the lines [`host::Host::log`] writes).
fn log_level_enabled(level: host::Level) -> bool {
    match level {
        host::Level::Trace => tracing::enabled!(tracing::Level::TRACE),
        host::Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
        host::Level::Info => tracing::enabled!(tracing::Level::INFO),
        host::Level::Warn => tracing::enabled!(tracing::Level::WARN),
        host::Level::Error => tracing::enabled!(tracing::Level::ERROR),
    }
}

impl host::Host for HostState {
    fn log_enabled(&mut self, level: host::Level) -> wasmtime::Result<bool> {
        Ok(log_level_enabled(level))
    }

    fn log(&mut self, level: host::Level, message: String) -> wasmtime::Result<()> {
        self.call.log_lines = self.call.log_lines.saturating_add(1);
        let plugin = &self.ctx.name;
        if self.call.log_lines > MAX_LOG_LINES_PER_CALL {
            if self.call.log_lines == MAX_LOG_LINES_PER_CALL + 1 {
                tracing::warn!(
                    event = "plugin_log_dropped",
                    plugin = %plugin,
                    "more than {MAX_LOG_LINES_PER_CALL} log lines in one call; dropping the rest"
                );
            }
            return Ok(());
        }
        // An error line is kept for the fault report even when the filter drops it.
        if level != host::Level::Error && !log_level_enabled(level) {
            return Ok(());
        }
        let message = one_line(&message, MAX_LOG_BYTES);
        match level {
            host::Level::Trace => {
                tracing::trace!(event = "plugin_log", plugin = %plugin, "{message}")
            }
            host::Level::Debug => {
                tracing::debug!(event = "plugin_log", plugin = %plugin, "{message}")
            }
            host::Level::Info => {
                tracing::info!(event = "plugin_log", plugin = %plugin, "{message}")
            }
            host::Level::Warn => {
                tracing::warn!(event = "plugin_log", plugin = %plugin, "{message}")
            }
            host::Level::Error => {
                tracing::error!(event = "plugin_log", plugin = %plugin, "{message}");
                self.call.last_error = Some(message);
            }
        }
        Ok(())
    }

    fn config(&mut self) -> wasmtime::Result<String> {
        Ok(self.ctx.config_json.clone())
    }

    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        check_key("kv-get", &key)?;
        Ok(self.ctx.state.get(&self.ctx.name, &key))
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> wasmtime::Result<()> {
        check_key("kv-set", &key)?;
        if value.len() > MAX_VALUE_BYTES {
            wasmtime::bail!(
                "host.kv-set: a value of {} bytes is larger than the limit of {MAX_VALUE_BYTES}",
                value.len()
            );
        }
        self.ctx
            .state
            .set(&self.ctx.name, &key, &value, ttl(ttl_ms));
        Ok(())
    }

    fn kv_delete(&mut self, key: String) -> wasmtime::Result<()> {
        check_key("kv-delete", &key)?;
        self.ctx.state.delete(&self.ctx.name, &key);
        Ok(())
    }

    fn counter_add(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<i64> {
        check_key("counter-add", &key)?;
        Ok(self
            .ctx
            .state
            .counter_add(&self.ctx.name, &key, delta, ttl(ttl_ms)))
    }

    fn throttle(
        &mut self,
        key: String,
        limit: u32,
        window_ms: u64,
    ) -> wasmtime::Result<host::ThrottleResult> {
        check_key("throttle", &key)?;
        let decision = self
            .ctx
            .throttle
            .check(&key, limit, Duration::from_millis(window_ms));
        Ok(host::ThrottleResult {
            allowed: decision.allowed,
            retry_after_ms: u64::try_from(decision.retry_after.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// The SMTP transaction of an `on-rcpt` or `on-data` call, as a `transaction` handle answers
/// for it. The relay builds it once per transaction and lends it to every call; a plugin gets
/// a copy of a part only when it asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransactionInfo {
    /// The session the transaction arrived on.
    pub session: types::Session,
    /// MAIL FROM and its parameters.
    pub mail_from: types::MailFrom,
    /// In `on-rcpt` the recipients accepted before the one asked about; in `on-data` all.
    pub recipients: Vec<String>,
}

/// The handle value ("rep") of the lent transaction and of the lent message. A call has at most
/// one of each, kept in [`CallState`], so the handle needs no table entry: lending costs no
/// allocation, and the guest's copy of the handle ends with the call (wasmtime checks that).
const TRANSACTION_REP: u32 = 1;
const MESSAGE_REP: u32 = 2;

/// The error for a handle that is not the one lent to the call in progress.
fn not_lent(what: &str) -> wasmtime::Error {
    wasmtime::format_err!("the {what} handle is valid only during the hook call it was given to")
}

impl HostState {
    /// Lends `transaction` to the instance for the call about to start; [`HostState::end_loans`]
    /// takes it back.
    pub fn lend_transaction(
        &mut self,
        transaction: &Arc<TransactionInfo>,
    ) -> Resource<types::Transaction> {
        self.call.transaction = Some(Arc::clone(transaction));
        Resource::new_borrow(TRANSACTION_REP)
    }

    /// Lends `message` to the instance for the `on-data` call about to start.
    pub fn lend_message(&mut self, message: &Arc<MessageView>) -> Resource<types::Message> {
        self.call.message = Some(Arc::clone(message));
        Resource::new_borrow(MESSAGE_REP)
    }

    /// Takes back what was lent for the call that just ended, so that the relay holds the only
    /// reference again (the message's bytes go back to it without a copy).
    pub fn end_loans(&mut self) {
        self.call.transaction = None;
        self.call.message = None;
    }

    fn message(&self, handle: &Resource<types::Message>) -> wasmtime::Result<&MessageView> {
        match &self.call.message {
            Some(message) if handle.rep() == MESSAGE_REP => Ok(message),
            _ => Err(not_lent("message")),
        }
    }

    fn transaction(
        &self,
        handle: &Resource<types::Transaction>,
    ) -> wasmtime::Result<&TransactionInfo> {
        match &self.call.transaction {
            Some(transaction) if handle.rep() == TRANSACTION_REP => Ok(transaction),
            _ => Err(not_lent("transaction")),
        }
    }
}

impl types::HostTransaction for HostState {
    fn envelope(
        &mut self,
        this: Resource<types::Transaction>,
    ) -> wasmtime::Result<types::Envelope> {
        let transaction = self.transaction(&this)?;
        Ok(types::Envelope {
            session: transaction.session.clone(),
            mail_from: transaction.mail_from.clone(),
        })
    }

    fn recipients(&mut self, this: Resource<types::Transaction>) -> wasmtime::Result<Vec<String>> {
        Ok(self.transaction(&this)?.recipients.clone())
    }

    fn drop(&mut self, _this: Resource<types::Transaction>) -> wasmtime::Result<()> {
        // The guest only ever borrows the transaction: there is no owned handle to drop.
        Ok(())
    }
}

impl types::HostMessage for HostState {
    fn size(&mut self, this: Resource<types::Message>) -> wasmtime::Result<u64> {
        Ok(self.message(&this)?.size())
    }

    fn header(
        &mut self,
        this: Resource<types::Message>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.message(&this)?.header(&name))
    }

    fn header_all(
        &mut self,
        this: Resource<types::Message>,
        name: String,
    ) -> wasmtime::Result<Vec<String>> {
        Ok(self.message(&this)?.header_all(&name))
    }

    fn headers(&mut self, this: Resource<types::Message>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(self.message(&this)?.headers())
    }

    fn subject(&mut self, this: Resource<types::Message>) -> wasmtime::Result<Option<String>> {
        Ok(self.message(&this)?.subject())
    }

    fn from(&mut self, this: Resource<types::Message>) -> wasmtime::Result<Vec<String>> {
        Ok(self.message(&this)?.from())
    }

    fn to(&mut self, this: Resource<types::Message>) -> wasmtime::Result<Vec<String>> {
        Ok(self.message(&this)?.to())
    }

    fn cc(&mut self, this: Resource<types::Message>) -> wasmtime::Result<Vec<String>> {
        Ok(self.message(&this)?.cc())
    }

    fn message_id(&mut self, this: Resource<types::Message>) -> wasmtime::Result<Option<String>> {
        Ok(self.message(&this)?.message_id())
    }

    fn parts(&mut self, this: Resource<types::Message>) -> wasmtime::Result<Vec<types::MimePart>> {
        Ok(self.message(&this)?.parts().to_vec())
    }

    fn body_text(&mut self, this: Resource<types::Message>) -> wasmtime::Result<Option<String>> {
        Ok(self.message(&this)?.body_text().map(str::to_string))
    }

    fn drop(&mut self, _this: Resource<types::Message>) -> wasmtime::Result<()> {
        // The guest only ever borrows the message: there is no owned handle to drop.
        Ok(())
    }
}

impl types::Host for HostState {}

/// Replaces the WASI functions that would block (and, on a tokio worker, panic) with ones that
/// never wait. Call after `wasmtime_wasi::p2::add_to_linker_sync`.
pub(super) fn shadow_blocking_wasi(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    streams::add_to_linker::<HostState, NonBlocking>(linker, |s| NonBlockingIo(&mut s.table))?;
    poll::add_to_linker::<HostState, NonBlocking>(linker, |s| NonBlockingIo(&mut s.table))?;
    udp_create_socket::add_to_linker::<HostState, NonBlocking>(linker, |s| {
        NonBlockingIo(&mut s.table)
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

struct NonBlocking;

impl HasData for NonBlocking {
    type Data<'a> = NonBlockingIo<'a>;
}

/// WASI streams and polls over the instance's resource table, without ever waiting.
struct NonBlockingIo<'a>(&'a mut ResourceTable);

fn would_block(function: &str) -> wasmtime::Error {
    wasmtime::format_err!(
        "{function}: plugins may not wait (blocking WASI calls are not available in the relay's sandbox)"
    )
}

fn borrow<T: 'static>(resource: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(resource.rep())
}

impl streams::Host for NonBlockingIo<'_> {
    fn convert_stream_error(
        &mut self,
        err: wasmtime_wasi::p2::StreamError,
    ) -> wasmtime::Result<streams::StreamError> {
        <ResourceTable as streams::Host>::convert_stream_error(self.0, err)
    }
}

impl streams::HostOutputStream for NonBlockingIo<'_> {
    fn drop(&mut self, stream: Resource<streams::OutputStream>) -> wasmtime::Result<()> {
        // The async version awaits the stream's cancellation; ours are sinks with nothing to
        // cancel, so deleting the entry is all there is.
        self.0.delete(stream)?;
        Ok(())
    }

    fn check_write(&mut self, stream: Resource<streams::OutputStream>) -> StreamResult<u64> {
        <ResourceTable as streams::HostOutputStream>::check_write(self.0, stream)
    }

    fn write(
        &mut self,
        stream: Resource<streams::OutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        <ResourceTable as streams::HostOutputStream>::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<streams::OutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        <ResourceTable as streams::HostOutputStream>::write(self.0, borrow(&stream), bytes)?;
        <ResourceTable as streams::HostOutputStream>::flush(self.0, stream)
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<streams::OutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        <ResourceTable as streams::HostOutputStream>::write_zeroes(self.0, borrow(&stream), len)?;
        <ResourceTable as streams::HostOutputStream>::flush(self.0, stream)
    }

    fn subscribe(
        &mut self,
        stream: Resource<streams::OutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        <ResourceTable as streams::HostOutputStream>::subscribe(self.0, stream)
    }

    fn write_zeroes(
        &mut self,
        stream: Resource<streams::OutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        <ResourceTable as streams::HostOutputStream>::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<streams::OutputStream>) -> StreamResult<()> {
        <ResourceTable as streams::HostOutputStream>::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<streams::OutputStream>) -> StreamResult<()> {
        <ResourceTable as streams::HostOutputStream>::flush(self.0, stream)
    }

    fn splice(
        &mut self,
        dst: Resource<streams::OutputStream>,
        src: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        <ResourceTable as streams::HostOutputStream>::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<streams::OutputStream>,
        src: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        <ResourceTable as streams::HostOutputStream>::splice(self.0, dst, src, len)
    }
}

impl streams::HostInputStream for NonBlockingIo<'_> {
    fn drop(&mut self, stream: Resource<streams::InputStream>) -> wasmtime::Result<()> {
        self.0.delete(stream)?;
        Ok(())
    }

    fn read(&mut self, stream: Resource<streams::InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        <ResourceTable as streams::HostInputStream>::read(self.0, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        <ResourceTable as streams::HostInputStream>::read(self.0, stream, len)
    }

    fn skip(&mut self, stream: Resource<streams::InputStream>, len: u64) -> StreamResult<u64> {
        <ResourceTable as streams::HostInputStream>::skip(self.0, stream, len)
    }

    fn blocking_skip(
        &mut self,
        stream: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        <ResourceTable as streams::HostInputStream>::skip(self.0, stream, len)
    }

    fn subscribe(
        &mut self,
        stream: Resource<streams::InputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        <ResourceTable as streams::HostInputStream>::subscribe(self.0, stream)
    }
}

impl poll::Host for NonBlockingIo<'_> {
    fn poll(&mut self, _pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        Err(would_block("wasi:io/poll.poll"))
    }
}

impl poll::HostPollable for NonBlockingIo<'_> {
    fn ready(&mut self, _pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        Err(would_block("wasi:io/poll.pollable.ready"))
    }

    fn block(&mut self, _pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        Err(would_block("wasi:io/poll.pollable.block"))
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        <ResourceTable as poll::HostPollable>::drop(self.0, pollable)
    }
}

impl network::Host for NonBlockingIo<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<network::ErrorCode> {
        error.downcast()
    }

    fn network_error_code(
        &mut self,
        _err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<network::ErrorCode>> {
        Ok(None)
    }
}

impl network::HostNetwork for NonBlockingIo<'_> {
    fn drop(&mut self, network: Resource<network::Network>) -> wasmtime::Result<()> {
        self.0.delete(network)?;
        Ok(())
    }
}

impl udp_create_socket::Host for NonBlockingIo<'_> {
    fn create_udp_socket(
        &mut self,
        _address_family: udp::IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        Err(network::ErrorCode::AccessDenied.into())
    }
}
