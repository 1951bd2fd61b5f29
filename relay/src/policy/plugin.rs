//! One loaded plugin: its checked, pre-instantiated component, its pool of reusable
//! instances, and its faults and quarantine.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{PoolConcurrencyLimitError, Store, Trap};

use super::bindings::{self, PluginPre};
use super::host::{one_line, HostState, PluginContext};
use super::reuse::VerdictCache;
use super::runtime::{Permit, Runtime};
use super::shard::{self, Padded, SHARDS};
use super::{ChooseVerdict, Hook, PluginInfo, PluginTable, PolicyError, INTERFACE};

/// Calls an instance serves before it is replaced by a fresh one (linear memory never
/// shrinks, so this bounds what a leaky plugin can hold).
const RECYCLE_AFTER_CALLS: u32 = 10_000;
/// Idle instances kept per plugin and thread shard.
const MAX_IDLE_PER_SHARD: usize = 4;
/// The time `describe()` gets at load (a cold instance's first call).
const DESCRIBE_BUDGET: Duration = Duration::from_millis(200);
/// Longest fault message logged.
const MAX_FAULT_MESSAGE: usize = 1000;

/// What went wrong in a plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FaultKind {
    /// A trap (including a guest panic, which the SDK turns into `unreachable`).
    Trap,
    /// The call ran past its time budget.
    Timeout,
    /// The instance hit its memory (or table) limit.
    Memory,
}

impl FaultKind {
    /// The `kind` field of `plugin_fault`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Timeout => "timeout",
            FaultKind::Memory => "memory",
        }
    }
}

/// A classified fault.
#[derive(Debug, Clone)]
pub(super) struct Fault {
    pub kind: FaultKind,
    pub message: String,
}

/// Why a call produced no verdict.
enum Failure {
    /// The plugin faulted (counted, may quarantine).
    Fault(Fault),
    /// No instance could be had in time (the pool is exhausted); not the plugin's fault.
    Unavailable,
}

/// The result of asking one plugin.
pub(super) enum Outcome<R> {
    /// The plugin answered.
    Done(R),
    /// The plugin faulted or could not run: the hook's fallback applies.
    Failed,
    /// The plugin is quarantined: it has no opinion.
    Skipped,
}

/// Fault counts of one plugin version, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FaultCounts {
    /// Traps.
    pub trap: u64,
    /// Timeouts.
    pub timeout: u64,
    /// Memory exhaustion.
    pub memory: u64,
}

/// A live instance with its Store.
struct Instance {
    store: Store<HostState>,
    plugin: bindings::Plugin,
    calls: u32,
    /// Declared after `store`, so the pool slot is free before the permit is returned.
    _permit: Permit,
}

/// A plugin's idle instances, ready for the next call, in one shard per thread: a thread takes
/// back the instance it used last, whose memory is still in its core's caches, without
/// touching another core's lock. A thread whose shard is empty takes one from another shard.
pub(super) struct IdlePool {
    shards: [Padded<Mutex<Vec<Instance>>>; SHARDS],
}

impl IdlePool {
    fn new() -> IdlePool {
        IdlePool {
            shards: Default::default(),
        }
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Vec<Instance>> {
        match self.shards[index].0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// This thread's most recently used instance, else any idle one.
    fn pop(&self) -> Option<Instance> {
        let mine = shard::current();
        (0..SHARDS).find_map(|step| self.shard((mine + step) % SHARDS).pop())
    }

    fn push(&self, instance: Instance) {
        let mut shard = self.shard(shard::current());
        if shard.len() < MAX_IDLE_PER_SHARD {
            shard.push(instance);
        }
    }

    /// Drops one idle instance (outside the lock); false when there is none.
    pub fn evict_one(&self) -> bool {
        let evicted = (0..SHARDS).find_map(|index| self.shard(index).pop());
        evicted.is_some()
    }

    /// Drops every idle instance.
    pub fn clear(&self) {
        for index in 0..SHARDS {
            let evicted = std::mem::take(&mut *self.shard(index));
            drop(evicted);
        }
    }
}

/// Calls into one plugin and the time they took, by [`hook_index`]; one per shard.
#[derive(Default)]
struct CallCounts {
    calls: [AtomicU64; 4],
    nanos: [AtomicU64; 4],
}

/// One plugin file, loaded and checked.
pub(super) struct LoadedPlugin {
    /// The plugin's name: the file stem.
    pub name: String,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// SHA-256 of the file, hex.
    pub hash: String,
    /// What `describe()` said.
    pub info: PluginInfo,
    /// Lower runs first.
    pub priority: i64,
    hooks: u8,
    pre: PluginPre<HostState>,
    ctx: Arc<PluginContext>,
    runtime: Arc<Runtime>,
    idle: Arc<IdlePool>,
    faults: Mutex<VecDeque<Instant>>,
    quarantined: AtomicBool,
    counts: [AtomicU64; 3],
    /// Calls that ran the plugin (not skipped by quarantine), and the wall time spent in them
    /// in nanoseconds (taking an instance, marshalling, running the guest and its host calls),
    /// counted per thread shard.
    call_counts: [Padded<CallCounts>; SHARDS],
    /// `choose_ip` verdicts the plugin allowed to be reused.
    choices: VerdictCache,
    /// `choose_ip` answers given from `choices` instead of a call.
    reused_choices: AtomicU64,
}

/// One hook's calls into one plugin, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HookCalls {
    /// The hook's snake_case name.
    pub hook: &'static str,
    /// Calls that ran the plugin (faulted ones included).
    pub calls: u64,
    /// Wall time spent in them, in seconds.
    pub seconds: f64,
    /// Answers given without a call, from a verdict the plugin allowed to be reused.
    pub reused: u64,
}

/// A plugin file to load.
pub(super) struct Candidate<'a> {
    /// The plugin's name (the file stem).
    pub name: &'a str,
    /// The file, for messages.
    pub file: &'a Path,
    /// The file's bytes, read fully before compiling.
    pub bytes: &'a [u8],
    /// SHA-256 of `bytes`, hex.
    pub hash: String,
    /// `[plugins.NAME]`.
    pub table: PluginTable,
}

/// How a load went, for the `plugin_loaded` line.
pub(super) struct LoadStats {
    /// Whether the compiled code came from the cache (`None` without a cache).
    pub cache_hit: Option<bool>,
    /// Compiling (or loading from the cache).
    pub compile: Duration,
}

fn hook_bit(hook: Hook) -> u8 {
    match hook {
        Hook::OnRcpt => 1,
        Hook::OnData => 2,
        Hook::ChooseIp => 4,
        Hook::OnBounce => 8,
    }
}

/// A hook's slot in [`LoadedPlugin`]'s call counters.
fn hook_index(hook: Hook) -> usize {
    match hook {
        Hook::OnRcpt => 0,
        Hook::OnData => 1,
        Hook::ChooseIp => 2,
        Hook::OnBounce => 3,
    }
}

/// The snake_case name of a hook, as in logs and the config.
pub(super) fn hook_name(hook: Hook) -> &'static str {
    match hook {
        Hook::OnRcpt => "on_rcpt",
        Hook::OnData => "on_data",
        Hook::ChooseIp => "choose_ip",
        Hook::OnBounce => "on_bounce",
    }
}

/// SHA-256 of `bytes` in lower-case hex.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses what is not a component before the compiler sees it, with a clear reason.
fn check_header(file: &Path, bytes: &[u8]) -> Result<(), PolicyError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PolicyError::NotWasm {
            file: file.to_path_buf(),
        });
    }
    // Bytes 6..8 are the layer: 0 for a core module, 1 for a component.
    if bytes[6..8] == [0, 0] {
        return Err(PolicyError::CoreModule {
            file: file.to_path_buf(),
        });
    }
    Ok(())
}

/// `relay:policy@X` versions are compatible when Cargo's rules say so: same major, and for
/// 0.x the same minor.
fn compatible(found: &str, expected: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(found), parse(expected)) {
        (Some((fmaj, fmin)), Some((emaj, emin))) => fmaj == emaj && (emaj != 0 || fmin == emin),
        _ => false,
    }
}

/// Checks the interface version in the component's import and export names, and that it
/// exports the hooks at all, so a wrong plugin gets a message better than the linker's.
fn check_interface(
    file: &Path,
    component: &Component,
    runtime: &Runtime,
) -> Result<(), PolicyError> {
    let expected_version = INTERFACE.rsplit_once('@').map_or("", |(_, v)| v);
    let ty = component.component_type();
    let engine = &runtime.engine;
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    for name in exports.iter().chain(imports.iter()) {
        if let Some(rest) = name.strip_prefix("relay:policy/") {
            let found = rest.split_once('@').map_or("", |(_, v)| v);
            if !compatible(found, expected_version) {
                let found = if found.is_empty() {
                    "relay:policy (unversioned)".to_string()
                } else {
                    format!("relay:policy@{found}")
                };
                return Err(PolicyError::InterfaceVersion {
                    file: file.to_path_buf(),
                    found,
                    expected: INTERFACE,
                });
            }
        }
    }
    if !exports
        .iter()
        .any(|name| name.starts_with("relay:policy/hooks"))
    {
        let list = if exports.is_empty() {
            "it exports nothing".to_string()
        } else {
            format!("its exports are: {}", exports.join(", "))
        };
        return Err(PolicyError::MissingInterface {
            file: file.to_path_buf(),
            reason: format!("{list}; build it with plugin-sdk's export_plugin!"),
            expected: INTERFACE,
        });
    }
    Ok(())
}

/// Compiles (or loads from the cache), checks and describes one plugin.
pub(super) fn load(
    runtime: &Arc<Runtime>,
    candidate: Candidate<'_>,
) -> Result<(LoadedPlugin, LoadStats), PolicyError> {
    let file = candidate.file;
    check_header(file, candidate.bytes)?;
    let counts_before = runtime
        .cache
        .as_ref()
        .map(|c| (c.cache_hits(), c.cache_misses()));
    let started = Instant::now();
    let component = Component::from_binary(&runtime.engine, candidate.bytes).map_err(|e| {
        PolicyError::Compile {
            file: file.to_path_buf(),
            reason: format!("{e:#}"),
        }
    })?;
    let compile = started.elapsed();
    let cache_hit = match (runtime.cache.as_ref(), counts_before) {
        (Some(cache), Some((hits, misses))) => {
            if cache.cache_hits() > hits {
                Some(true)
            } else if cache.cache_misses() > misses {
                Some(false)
            } else {
                None
            }
        }
        _ => None,
    };
    check_interface(file, &component, runtime)?;
    let instance_pre =
        runtime
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PolicyError::Imports {
                file: file.to_path_buf(),
                reason: format!("{e:#}"),
            })?;
    let pre = PluginPre::new(instance_pre).map_err(|e| PolicyError::MissingInterface {
        file: file.to_path_buf(),
        reason: format!("{e:#}"),
        expected: INTERFACE,
    })?;
    let idle = Arc::new(IdlePool::new());
    runtime.budget.register(&idle);
    let mut plugin = LoadedPlugin {
        name: candidate.name.to_string(),
        file: file.to_path_buf(),
        hash: candidate.hash,
        info: PluginInfo {
            name: String::new(),
            version: String::new(),
            hooks: Vec::new(),
        },
        priority: candidate.table.priority,
        hooks: 0,
        pre,
        ctx: Arc::new(PluginContext {
            name: candidate.name.to_string(),
            config_json: candidate.table.config_json,
            state: Arc::clone(&runtime.state),
            throttle: Arc::clone(&runtime.throttle),
        }),
        runtime: Arc::clone(runtime),
        idle,
        faults: Mutex::new(VecDeque::new()),
        quarantined: AtomicBool::new(false),
        counts: Default::default(),
        call_counts: Default::default(),
        choices: VerdictCache::default(),
        reused_choices: AtomicU64::new(0),
    };
    let info = plugin
        .run(runtime.ticks_for(DESCRIBE_BUDGET), |p, store| {
            p.relay_policy_hooks().call_describe(store)
        })
        .map_err(|failure| PolicyError::Describe {
            file: file.to_path_buf(),
            reason: match failure {
                Failure::Fault(fault) => format!("{} ({})", fault.message, fault.kind.as_str()),
                Failure::Unavailable => {
                    "no instance slot is free (the instance pool is exhausted)".to_string()
                }
            },
        })?;
    plugin.hooks = info
        .hooks
        .iter()
        .fold(0, |bits, hook| bits | hook_bit(*hook));
    plugin.info = info;
    Ok((plugin, LoadStats { cache_hit, compile }))
}

impl LoadedPlugin {
    /// True when the plugin implements `hook` and is not quarantined.
    pub fn implements(&self, hook: Hook) -> bool {
        self.hooks & hook_bit(hook) != 0 && !self.is_quarantined()
    }

    /// The hooks `describe()` listed, in snake_case.
    pub fn hook_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for hook in [Hook::OnRcpt, Hook::OnData, Hook::ChooseIp, Hook::OnBounce] {
            if self.hooks & hook_bit(hook) != 0 {
                names.push(hook_name(hook));
            }
        }
        names
    }

    /// True after too many faults; the plugin is skipped until a new file replaces it.
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Faults so far, by kind.
    pub fn fault_counts(&self) -> FaultCounts {
        FaultCounts {
            trap: self.counts[0].load(Ordering::Relaxed),
            timeout: self.counts[1].load(Ordering::Relaxed),
            memory: self.counts[2].load(Ordering::Relaxed),
        }
    }

    /// Calls so far (including faulted ones) and the time they took, by hook, for the hooks
    /// the plugin implements.
    pub fn call_counts(&self) -> Vec<HookCalls> {
        [Hook::OnRcpt, Hook::OnData, Hook::ChooseIp, Hook::OnBounce]
            .into_iter()
            .filter(|hook| self.hooks & hook_bit(*hook) != 0)
            .map(|hook| {
                let index = hook_index(hook);
                let sum = |field: fn(&CallCounts) -> &[AtomicU64; 4]| -> u64 {
                    self.call_counts
                        .iter()
                        .map(|shard| field(&shard.0)[index].load(Ordering::Relaxed))
                        .sum()
                };
                HookCalls {
                    hook: hook_name(hook),
                    calls: sum(|c| &c.calls),
                    seconds: sum(|c| &c.nanos) as f64 / 1e9,
                    reused: if hook == Hook::ChooseIp {
                        self.reused_choices.load(Ordering::Relaxed)
                    } else {
                        0
                    },
                }
            })
            .collect()
    }

    /// A `choose_ip` verdict this plugin gave earlier for the same `key` (see
    /// [`super::reuse::key`]) and allowed to be reused until after `now`.
    pub fn reused_choice(&self, key: &str, now: Instant) -> Option<ChooseVerdict> {
        let verdict = self.choices.get(key, now)?;
        self.reused_choices.fetch_add(1, Ordering::Relaxed);
        Some(verdict)
    }

    /// Keeps a `choose_ip` verdict for `key` if the plugin allowed reuse.
    pub fn keep_choice(&self, key: String, verdict: &ChooseVerdict, now: Instant) {
        self.choices.put(key, verdict, now);
    }

    /// Calls `hook` through `f` on a pooled instance, within the time budget; a fault is
    /// logged and counted and gives [`Outcome::Failed`].
    pub fn call<R>(
        &self,
        hook: Hook,
        f: impl FnOnce(&bindings::Plugin, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Outcome<R> {
        if self.is_quarantined() {
            return Outcome::Skipped;
        }
        let index = hook_index(hook);
        let counts = &self.call_counts[shard::current()].0;
        counts.calls[index].fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = self.run(self.runtime.call_ticks(), f);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counts.nanos[index].fetch_add(nanos, Ordering::Relaxed);
        match result {
            Ok(verdict) => Outcome::Done(verdict),
            Err(Failure::Fault(fault)) => {
                self.record_fault(hook_name(hook), &fault);
                Outcome::Failed
            }
            Err(Failure::Unavailable) => {
                tracing::warn!(event = "plugin_unavailable", plugin = %self.name, hook = hook_name(hook), "no instance slot became free in time; the call got the hook's fallback");
                Outcome::Failed
            }
        }
    }

    fn run<R>(
        &self,
        ticks: u64,
        f: impl FnOnce(&bindings::Plugin, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let mut instance = match self.idle.pop() {
            Some(instance) => instance,
            None => self.instantiate()?,
        };
        instance.store.data_mut().begin_call();
        instance.store.set_epoch_deadline(ticks);
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            f(&instance.plugin, &mut instance.store)
        }));
        match result {
            Ok(Ok(verdict)) => {
                instance.calls += 1;
                if instance.calls < RECYCLE_AFTER_CALLS && !self.is_quarantined() {
                    self.idle.push(instance);
                }
                Ok(verdict)
            }
            // The instance is dropped: after a trap it is poisoned.
            Ok(Err(err)) => Err(Failure::Fault(classify(&err, instance.store.data()))),
            Err(payload) => {
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                Err(Failure::Fault(Fault {
                    kind: FaultKind::Trap,
                    message: format!(
                        "a host function panicked during the call: {}",
                        one_line(&text, MAX_FAULT_MESSAGE)
                    ),
                }))
            }
        }
    }

    /// A new instance in a new Store, within the instance budget.
    fn instantiate(&self) -> Result<Instance, Failure> {
        let runtime = &self.runtime;
        let permit = runtime.budget.acquire().ok_or(Failure::Unavailable)?;
        let mut retried = false;
        loop {
            let mut store = runtime.new_store(Arc::clone(&self.ctx));
            match self.pre.instantiate(&mut store) {
                Ok(plugin) => {
                    return Ok(Instance {
                        store,
                        plugin,
                        calls: 0,
                        _permit: permit,
                    })
                }
                Err(err) if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() => {
                    if retried {
                        return Err(Failure::Unavailable);
                    }
                    drop(store);
                    runtime.budget.evict_all();
                    retried = true;
                }
                Err(err) => return Err(Failure::Fault(classify(&err, store.data()))),
            }
        }
    }

    fn record_fault(&self, hook: &str, fault: &Fault) {
        let index = match fault.kind {
            FaultKind::Trap => 0,
            FaultKind::Timeout => 1,
            FaultKind::Memory => 2,
        };
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            event = "plugin_fault",
            plugin = %self.name,
            hook,
            kind = fault.kind.as_str(),
            message = %fault.message,
        );
        let max = self.runtime.options.max_faults as usize;
        if max == 0 {
            return;
        }
        let window = self.runtime.options.fault_window;
        let now = Instant::now();
        let mut faults = match self.faults.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        while faults
            .front()
            .is_some_and(|at| now.duration_since(*at) > window)
        {
            faults.pop_front();
        }
        faults.push_back(now);
        let recent = faults.len();
        drop(faults);
        if recent >= max && !self.quarantined.swap(true, Ordering::SeqCst) {
            tracing::error!(
                event = "plugin_quarantined",
                plugin = %self.name,
                file = %self.file.display(),
                faults = recent,
                window_secs = window.as_secs_f64(),
                "plugin quarantined after repeated faults; it is skipped until a new file replaces it"
            );
            self.idle.clear();
        }
    }
}

/// Classifies a failed call: an epoch interrupt is a timeout, a refused growth is memory,
/// anything else a trap.
fn classify(err: &wasmtime::Error, state: &HostState) -> Fault {
    let trap = err.downcast_ref::<Trap>().copied();
    let kind = if trap == Some(Trap::Interrupt) {
        FaultKind::Timeout
    } else if state.limits.denied {
        FaultKind::Memory
    } else {
        FaultKind::Trap
    };
    let mut message = match (kind, trap) {
        (FaultKind::Timeout, _) => "ran past its time budget".to_string(),
        (_, Some(trap)) => trap.to_string(),
        (_, None) => format!("{err:#}"),
    };
    if kind == FaultKind::Memory {
        message.push_str(" (a memory growth past the limit was refused)");
    }
    if let Some(logged) = state.last_error() {
        message.push_str("; the plugin logged: ");
        message.push_str(logged);
    }
    Fault {
        kind,
        message: one_line(&message, MAX_FAULT_MESSAGE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_versions_follow_cargo_compatibility() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.3", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(compatible("1.4.0", "1.0.0"));
        assert!(!compatible("2.0.0", "1.0.0"));
        assert!(!compatible("", "0.1.0"));
    }

    #[test]
    fn headers_tell_text_core_modules_and_components_apart() {
        let file = Path::new("p/x.wasm");
        assert!(matches!(
            check_header(file, b"hello world"),
            Err(PolicyError::NotWasm { .. })
        ));
        assert!(matches!(
            check_header(file, b"\0asm\x01\0\0\0"),
            Err(PolicyError::CoreModule { .. })
        ));
        assert!(check_header(file, b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn the_bound_interface_is_the_wit_package() {
        let wit = include_str!("../../../plugin-sdk/wit/relay-policy.wit");
        assert!(
            wit.contains(&format!("package {INTERFACE};")),
            "INTERFACE must match the WIT package line"
        );
    }
}
