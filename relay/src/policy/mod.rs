//! Policy plugins: sandboxed WebAssembly components that decide at four hooks (`on_rcpt`,
//! `on_data`, `choose_ip`, `on_bounce`), loaded from a directory and hot-reloaded.
//!
//! # Shape
//! - One wasmtime [`Engine`](wasmtime::Engine) per [`Policy`]: component model, cranelift,
//!   pooling allocator with copy-on-write memory images, epoch interruption (a background
//!   thread ticks every quarter of `time_budget`, at least every millisecond) and an on-disk
//!   compiled-code cache (`cache_dir`, keyed by the file's bytes and the engine
//!   configuration), so a restart does not recompile.
//! - Each `<dir>/NAME.wasm` becomes one plugin named `NAME`. Loading checks everything before
//!   mail sees the plugin: it is a component (not a core module), built for the interface
//!   version this relay binds, its imports are satisfiable ([`Linker::instantiate_pre`]) and its
//!   exports complete ([`PluginPre::new`](bindings::PluginPre)); then `describe()` runs once.
//! - Instances are pooled per plugin and reused across calls; one is discarded after any fault
//!   (a trap poisons it) and recycled after a fixed number of calls (linear memory never
//!   shrinks).
//! - Sessions that reach `on_rcpt` or `on_data` while their worker thread is busy with others
//!   are asked together, plugin by plugin, so each plugin answers several questions in a row
//!   with its instance and code in the CPU's caches ([`batch`]); each question still meets
//!   exactly the plugins it would meet alone.
//! - A [`PluginSet`] is an immutable, ordered snapshot. A transaction takes one at MAIL FROM and
//!   keeps it, so a hot reload never changes the plugins of a transaction in flight.
//!
//! # The sandbox
//! A plugin gets the `relay:policy/host` interface and nothing else of substance. WASI 0.2 is
//! linked because Rust's `std` for `wasm32-wasip2` imports it, but nothing is granted: no
//! preopened directories, no environment variables or arguments, stdin is empty, stdout and
//! stderr are discarded, sockets and name lookups are denied, and the WASI clocks are frozen at
//! zero (the only clock is `host.now-ms`). `wasi:random` works (std seeds its hash maps with it).
//! WASI calls that would block (`wasi:io/poll`, sleeping) trap instead: a hook must not wait.
//! Per call a plugin has `time_budget` (wall time, epoch deadline: at least the budget, at most
//! a quarter more), `memory_limit` bytes of linear memory, and at most 1 MiB of data per host
//! call.
//!
//! # Faults
//! A trap, a timeout or memory exhaustion gives that call the hook's fallback, a
//! `plugin_fault` log line and a count; `max_faults` within `fault_window` quarantines the
//! plugin (`plugin_quarantined`) until a new file replaces it.
//!
//! # Installing a plugin
//! Write the new file under another name in the same directory (e.g. `x.wasm.tmp`; only
//! names ending in `.wasm` and not starting with `.` are plugins) and `rename` it into place,
//! so the watcher never reads a half-written file. Files are read fully into memory before
//! compiling; nothing maps a plugin file.
//!
//! [`Linker::instantiate_pre`]: wasmtime::component::Linker::instantiate_pre

mod batch;
mod bindings;
mod check;
mod host;
mod plugin;
mod reuse;
mod runtime;
mod set;
mod shard;
mod state;
mod throttle;
mod watch;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub(crate) use batch::{on_data as on_data_batched, on_rcpt as on_rcpt_batched};
pub use check::{check_file, check_plugin, PluginReport};
pub(crate) use host::TransactionInfo;
pub(crate) use reuse::key as reuse_key;
pub(crate) use set::PluginSet;

#[allow(unused_imports)] // part of the API for other state/throttle backends and tests
pub(crate) use state::MemoryStateStore;
#[allow(unused_imports)] // part of the API for other throttle backends (e.g. Redis)
pub(crate) use throttle::{LocalThrottle, Throttle, ThrottleDecision};

#[allow(unused_imports)] // the whole WIT vocabulary, for the relay's side of the contract
pub(crate) use bindings::exports::relay::policy::hooks::{Hook, PluginInfo};
#[allow(unused_imports)]
pub(crate) use bindings::relay::policy::types::{
    BounceAction, BounceInput, BounceVerdict, ChooseInput, ChooseVerdict, DataAction, DataInput,
    DataVerdict, FailureKind, Header, IpChoice, MailFlags, MailFrom, MimePart, Pool, PoolMember,
    RcptInput, RcptVerdict, Session, SmtpReply, Source, Tag,
};

/// The interface version this relay binds (the WIT package of `plugin-sdk/wit`).
pub const INTERFACE: &str = "relay:policy@0.4.0";

/// Plugins' persistent state (key-value with TTL, counters), namespaced by plugin name.
///
/// Called synchronously from inside a hook call, so it must be quick (a local store such as
/// RocksDB, not a network round trip).
pub(crate) trait StateStore: Send + Sync {
    /// The value of `key` in `plugin`'s namespace, or `None` when absent or expired.
    fn get(&self, plugin: &str, key: &str) -> Option<Vec<u8>>;
    /// Stores `value`; with a TTL it disappears after that long.
    fn set(&self, plugin: &str, key: &str, value: &[u8], ttl: Option<Duration>);
    /// Removes `key`.
    fn delete(&self, plugin: &str, key: &str);
    /// Adds `delta` to a counter and returns the new value; a new counter starts at 0 and its
    /// TTL runs from its creation (a fixed window).
    fn counter_add(&self, plugin: &str, key: &str, delta: i64, ttl: Option<Duration>) -> i64;
}

/// What a hook answers for a plugin that faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// Fail open: the faulting plugin has no opinion; later plugins still decide.
    Accept,
    /// Fail closed: `451 4.3.0` (policy unavailable), so the client retries later.
    Tempfail,
}

/// The fallback per hook. `choose_ip` and `on_bounce` faults always mean "no opinion" (the
/// default pool, the relay's own retry schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fallbacks {
    /// For `on_rcpt`.
    pub on_rcpt: Fallback,
    /// For `on_data`.
    pub on_data: Fallback,
}

impl Default for Fallbacks {
    fn default() -> Self {
        Fallbacks {
            on_rcpt: Fallback::Accept,
            on_data: Fallback::Accept,
        }
    }
}

/// One plugin's `[plugins.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PluginTable {
    /// Lower runs first; ties run in name order. Default 100.
    pub priority: i64,
    /// The plugin's configuration as JSON text, returned by `host.config()`.
    pub config_json: String,
}

impl Default for PluginTable {
    fn default() -> Self {
        PluginTable {
            priority: 100,
            config_json: "{}".to_string(),
        }
    }
}

/// The plugin runtime's settings (`[plugins]` in the config).
#[derive(Debug, Clone)]
pub(crate) struct PolicySettings {
    /// The directory of `*.wasm` files.
    pub dir: PathBuf,
    /// Where compiled code is cached (created if missing; made absolute).
    pub cache_dir: PathBuf,
    /// CPU time per hook call (default 10 ms).
    pub time_budget: Duration,
    /// Linear memory per instance in bytes (default 32 MiB).
    pub memory_limit: usize,
    /// Faults within `fault_window` before a plugin is quarantined (default 5; 0 = never).
    pub max_faults: u32,
    /// The window for `max_faults` (default 60 s).
    pub fault_window: Duration,
    /// How often the directory is checked for changes (default 250 ms).
    pub poll_interval: Duration,
    /// What `on_rcpt` and `on_data` answer when a plugin faults.
    pub fallback: Fallbacks,
    /// `[plugins.NAME]` tables by plugin name (the file stem).
    pub plugins: BTreeMap<String, PluginTable>,
}

impl PolicySettings {
    /// Settings with the defaults for everything but the two directories.
    #[allow(dead_code)] // used by tests; the relay builds its settings from the config
    pub fn new(dir: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> PolicySettings {
        PolicySettings {
            dir: dir.into(),
            cache_dir: cache_dir.into(),
            time_budget: Duration::from_millis(10),
            memory_limit: 32 << 20,
            max_faults: 5,
            fault_window: Duration::from_secs(60),
            poll_interval: Duration::from_millis(250),
            fallback: Fallbacks::default(),
            plugins: BTreeMap::new(),
        }
    }
}

/// Why the plugin runtime could not start, or why a plugin file was refused.
///
/// Each refusal names the file and says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The WebAssembly engine could not be set up.
    #[error("plugin runtime: {0}")]
    Engine(String),
    /// The file is not WebAssembly at all.
    #[error("{}: not a WebAssembly file (no \\0asm header); plugins are Wasm components built with plugin-sdk", file.display())]
    NotWasm {
        /// The refused file.
        file: PathBuf,
    },
    /// The file is a core module, not a component.
    #[error("{}: a core WebAssembly module, not a component; build the plugin with plugin-sdk for wasm32-wasip2 (which makes a component)", file.display())]
    CoreModule {
        /// The refused file.
        file: PathBuf,
    },
    /// The component does not compile.
    #[error("{}: invalid WebAssembly component: {reason}", file.display())]
    Compile {
        /// The refused file.
        file: PathBuf,
        /// The compiler's reason.
        reason: String,
    },
    /// The component was built for an incompatible interface version.
    #[error("{}: built for {found}, this relay binds {expected}; rebuild the plugin with a matching plugin-sdk", file.display())]
    InterfaceVersion {
        /// The refused file.
        file: PathBuf,
        /// The version the plugin was built for, e.g. `relay:policy@0.3.0`.
        found: String,
        /// The version this relay binds.
        expected: &'static str,
    },
    /// The component does not implement the interface (missing or wrong exports).
    #[error("{}: does not implement {expected} (export relay:policy/hooks): {reason}", file.display())]
    MissingInterface {
        /// The refused file.
        file: PathBuf,
        /// What is missing or wrong.
        reason: String,
        /// The interface expected.
        expected: &'static str,
    },
    /// The component imports something the relay does not offer.
    #[error("{}: imports what the relay does not offer (plugins get relay:policy/host and WASI with nothing granted): {reason}", file.display())]
    Imports {
        /// The refused file.
        file: PathBuf,
        /// The linker's reason.
        reason: String,
    },
    /// Instantiating the plugin or calling `describe()` failed.
    #[error("{}: describe() failed: {reason}", file.display())]
    Describe {
        /// The refused file.
        file: PathBuf,
        /// The trap or error.
        reason: String,
    },
}

/// The plugin runtime: the engine, the current [`PluginSet`] and the directory watcher.
///
/// Cheap to clone; the watcher stops when the last clone is dropped (sets in use keep working).
#[derive(Clone)]
pub(crate) struct Policy {
    shared: Arc<Shared>,
}

/// What the [`Policy`] handles and the watcher thread share.
struct Shared {
    current: RwLock<Arc<PluginSet>>,
    /// Bumped after every change of `current`.
    generation: AtomicU64,
    stop: Arc<AtomicBool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Policy {
    /// Loads every `*.wasm` in `settings.dir` (a refused file is logged, not fatal), then starts
    /// the epoch ticker thread and the directory watcher thread.
    ///
    /// Fails when the directory cannot be read or the engine or its code cache cannot be set up.
    pub fn start(
        settings: PolicySettings,
        state: Arc<dyn StateStore>,
    ) -> Result<Policy, PolicyError> {
        if let Err(source) = std::fs::read_dir(&settings.dir) {
            return Err(PolicyError::Io {
                path: settings.dir.clone(),
                source,
            });
        }
        let runtime = runtime::Runtime::new(runtime::RuntimeOptions::serving(&settings), state)?;
        let mut loader = watch::Loader::new(Arc::new(runtime), settings.clone());
        loader.scan();
        let set = loader.build_set();
        tracing::info!(
            event = "plugins_ready",
            dir = %settings.dir.display(),
            plugins = ?set.names(),
            "plugin set ready"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            current: RwLock::new(Arc::new(set)),
            generation: AtomicU64::new(0),
            stop: Arc::clone(&stop),
        });
        watch::spawn(
            loader,
            Arc::downgrade(&shared),
            stop,
            settings.poll_interval,
        )?;
        Ok(Policy { shared })
    }

    /// The current plugin set. A transaction takes one at MAIL FROM and uses it to the end.
    pub fn snapshot(&self) -> Arc<PluginSet> {
        match self.shared.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Makes `held` the current plugin set, taking a new snapshot only when the set changed
    /// since `held` was taken. A session keeps its set this way from one transaction to the
    /// next: checking is one atomic load, where a snapshot writes to the lock and the set's
    /// reference count, lines every core serving mail would otherwise pass around.
    pub fn refresh(&self, held: &mut HeldSet) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if held.set.is_none() || held.generation != generation {
            held.set = Some(self.snapshot());
            held.generation = generation;
        }
    }
}

/// A plugin set a session holds between transactions; see [`Policy::refresh`].
#[derive(Default)]
pub(crate) struct HeldSet {
    generation: u64,
    set: Option<Arc<PluginSet>>,
}

impl HeldSet {
    /// The set held, if any.
    pub fn get(&self) -> Option<&Arc<PluginSet>> {
        self.set.as_ref()
    }
}

impl Shared {
    /// Swaps in a new plugin set; sets already handed out stay as they are.
    fn replace(&self, set: PluginSet) {
        let set = Arc::new(set);
        match self.current.write() {
            Ok(mut guard) => *guard = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
        self.generation.fetch_add(1, Ordering::Release);
    }
}
