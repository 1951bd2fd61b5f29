//! The wasmtime engine and linker shared by all plugins, the epoch ticker, and the budget of
//! live instances in front of the pooling allocator.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, OptLevel,
    PoolingAllocationConfig, Store,
};

use super::bindings;
use super::host::{self, HostState, PluginContext};
use super::plugin::IdlePool;
use super::throttle::{LocalThrottle, Throttle};
use super::{PolicyError, PolicySettings, StateStore};

/// Ticks in one call's time budget: the epoch advances every `time_budget / 4` (at least every
/// [`MIN_TICK`]), so a call runs at least its budget and at most a quarter longer. Every tick
/// wakes a thread that preempts whatever runs on its core: at 1 ms ticks that cost about 1 µs
/// of CPU per message under load, for a precision nobody needs.
const TICKS_PER_BUDGET: u32 = 4;
/// The shortest tick.
const MIN_TICK: Duration = Duration::from_millis(1);
/// Component instances the pooling allocator holds (all plugins together).
const POOL_INSTANCES: u32 = 256;
/// Most bytes a guest may pass to the host in one host call (wasmtime's default: 128 MiB).
const HOSTCALL_FUEL: usize = 1 << 20;
/// Live component-model handles per Store (wasmtime's default: 100,000).
const MAX_COMPONENT_HANDLES: usize = 4096;
/// How long a call waits for a free instance slot before it takes its fallback.
const POOL_WAIT: Duration = Duration::from_secs(1);

/// How a [`Runtime`] is set up.
pub(super) struct RuntimeOptions {
    /// CPU time per hook call.
    pub time_budget: Duration,
    /// Linear memory per instance, in bytes.
    pub memory_limit: usize,
    /// Faults within `fault_window` before quarantine (0: never).
    pub max_faults: u32,
    /// The window for `max_faults`.
    pub fault_window: Duration,
    /// The compiled-code cache directory, if any.
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling allocator (the relay does; `plugin check` does not need to).
    pub pooling: bool,
}

impl RuntimeOptions {
    /// The options of the serving relay.
    pub fn serving(settings: &PolicySettings) -> RuntimeOptions {
        RuntimeOptions {
            time_budget: settings.time_budget,
            memory_limit: settings.memory_limit,
            max_faults: settings.max_faults,
            fault_window: settings.fault_window,
            cache_dir: Some(settings.cache_dir.clone()),
            pooling: true,
        }
    }

    /// The options of `relay plugin check`: default limits, no cache, no pool.
    pub fn checking() -> RuntimeOptions {
        let defaults = PolicySettings::new("", "");
        RuntimeOptions {
            time_budget: defaults.time_budget,
            memory_limit: defaults.memory_limit,
            max_faults: 0,
            fault_window: defaults.fault_window,
            cache_dir: None,
            pooling: false,
        }
    }
}

/// The engine, the linker and the host services every plugin of a [`super::Policy`] shares.
///
/// Plugins hold it by `Arc`, so the epoch keeps ticking while any plugin set is in use.
pub(super) struct Runtime {
    /// The one engine.
    pub engine: Engine,
    /// WASI (nothing granted) and the host API.
    pub linker: Linker<HostState>,
    /// The compiled-code cache, to tell hits from misses.
    pub cache: Option<Cache>,
    /// Limits and fault policy.
    pub options: RuntimeOptions,
    /// Plugin state.
    pub state: Arc<dyn StateStore>,
    /// The shared rate limiter.
    pub throttle: Arc<dyn Throttle>,
    /// Live instances, bounded by the pool.
    pub budget: Arc<InstanceBudget>,
    /// How often the epoch advances.
    tick: Duration,
    /// Epoch ticks from a call's start to its deadline.
    epoch_ticks: u64,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Builds the engine (and cache), the linker, and starts the epoch ticker.
    pub fn new(
        options: RuntimeOptions,
        state: Arc<dyn StateStore>,
    ) -> Result<Runtime, PolicyError> {
        let engine_error =
            |what: &str, err: wasmtime::Error| PolicyError::Engine(format!("{what}: {err:#}"));
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .parallel_compilation(true)
            .memory_init_cow(true);
        // RELAY_PLUGIN_PROFILER=perfmap writes /tmp/perf-PID.map, so `perf report` names the
        // plugins' compiled functions (for profiling plugins; it changes the cache key).
        if std::env::var_os("RELAY_PLUGIN_PROFILER").is_some_and(|v| v == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let capacity = if options.pooling {
            let mut pool = PoolingAllocationConfig::new();
            let max_memory = options.memory_limit.clamp(64 << 10, 4 << 30);
            pool.total_component_instances(POOL_INSTANCES)
                .total_core_instances(POOL_INSTANCES * 8)
                .total_memories(POOL_INSTANCES)
                .total_tables(POOL_INSTANCES * 8)
                .table_elements(host::MAX_TABLE_ELEMENTS)
                .max_memory_size(max_memory);
            // Each pool slot keeps wasmtime's default 4 GiB of address space (plus a guard), about
            // 1 TiB for the pool, reserved but never committed: with it, compiled code needs no
            // bounds check on a memory access, which made hook calls about 10% faster than
            // slots the size of the memory limit. `max_memory_size` and the Store's limits still
            // cap what an instance may use.
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            POOL_INSTANCES as usize
        } else {
            usize::MAX
        };
        let cache = match &options.cache_dir {
            Some(dir) => {
                let dir = std::path::absolute(dir).map_err(|source| PolicyError::Io {
                    path: dir.clone(),
                    source,
                })?;
                std::fs::create_dir_all(&dir).map_err(|source| PolicyError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let mut cache_config = CacheConfig::new();
                cache_config.with_directory(&dir);
                let cache = Cache::new(cache_config)
                    .map_err(|e| engine_error(&format!("code cache at {}", dir.display()), e))?;
                config.cache(Some(cache.clone()));
                Some(cache)
            }
            None => None,
        };
        let engine = Engine::new(&config).map_err(|e| engine_error("engine", e))?;
        let linker = linker(&engine).map_err(|e| engine_error("linker", e))?;
        let tick = tick_for(options.time_budget);
        let ticker =
            EpochTicker::start(engine.clone(), tick).map_err(|source| PolicyError::Io {
                path: PathBuf::from("<epoch ticker thread>"),
                source,
            })?;
        Ok(Runtime {
            tick,
            epoch_ticks: ticks_for(options.time_budget, tick),
            engine,
            linker,
            cache,
            options,
            state,
            throttle: Arc::new(LocalThrottle::new()),
            budget: Arc::new(InstanceBudget::new(capacity)),
            _ticker: ticker,
        })
    }

    /// Epoch ticks for one hook call.
    pub fn call_ticks(&self) -> u64 {
        self.epoch_ticks
    }

    /// Epoch ticks that give at least `budget` (for calls with a budget of their own).
    pub fn ticks_for(&self, budget: Duration) -> u64 {
        ticks_for(budget, self.tick)
    }

    /// A Store for a new instance of the plugin described by `ctx`, with its limits set.
    pub fn new_store(&self, ctx: Arc<PluginContext>) -> Store<HostState> {
        let mut store = Store::new(&self.engine, HostState::new(ctx, self.options.memory_limit));
        store.limiter(|state| &mut state.limits);
        store.set_hostcall_fuel(HOSTCALL_FUEL);
        store.set_max_component_handles(MAX_COMPONENT_HANDLES);
        store.set_epoch_deadline(self.epoch_ticks);
        store
    }
}

/// The epoch tick for calls of `budget`.
fn tick_for(budget: Duration) -> Duration {
    (budget / TICKS_PER_BUDGET).max(MIN_TICK)
}

/// Epoch ticks that give at least `budget` at one tick per `tick`: the first tick may come at
/// once.
fn ticks_for(budget: Duration, tick: Duration) -> u64 {
    let ticks = budget.as_nanos().div_ceil(tick.as_nanos().max(1));
    u64::try_from(ticks)
        .unwrap_or(u64::MAX / 2)
        .saturating_add(1)
        .max(2)
}

/// WASI with nothing granted, its blocking calls made non-blocking, and the host API.
fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    host::shadow_blocking_wasi(&mut linker)?;
    bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
    Ok(linker)
}

/// The thread that advances the engine's epoch every tick; stops when dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> std::io::Result<EpochTicker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("relay-plugin-epoch".to_string())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Counts live instances against the pool's capacity, so a full pool means a short wait (or
/// evicting an idle instance of another plugin), never a failed hook.
pub(super) struct InstanceBudget {
    capacity: usize,
    live: Mutex<usize>,
    freed: Condvar,
    /// Idle instances that may be evicted to make room.
    pools: Mutex<Vec<Weak<IdlePool>>>,
}

/// One live instance's place in the [`InstanceBudget`]; released on drop.
pub(super) struct Permit {
    budget: Arc<InstanceBudget>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut live = lock(&self.budget.live);
        *live = live.saturating_sub(1);
        drop(live);
        self.budget.freed.notify_one();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl InstanceBudget {
    fn new(capacity: usize) -> InstanceBudget {
        InstanceBudget {
            capacity,
            live: Mutex::new(0),
            freed: Condvar::new(),
            pools: Mutex::new(Vec::new()),
        }
    }

    /// Makes `pool`'s idle instances evictable when another plugin needs room.
    pub fn register(&self, pool: &Arc<IdlePool>) {
        let mut pools = lock(&self.pools);
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    /// A permit for one more instance: at once if there is room, else after evicting an idle
    /// instance, else after waiting up to [`POOL_WAIT`] for a call to finish.
    pub fn acquire(self: &Arc<Self>) -> Option<Permit> {
        let deadline = Instant::now() + POOL_WAIT;
        loop {
            {
                let mut live = lock(&self.live);
                if *live < self.capacity {
                    *live += 1;
                    return Some(Permit {
                        budget: Arc::clone(self),
                    });
                }
            }
            if self.evict_one() {
                continue;
            }
            let live = lock(&self.live);
            if *live < self.capacity {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let _unused = self.freed.wait_timeout(live, deadline - now);
        }
    }

    /// Drops one idle instance of any plugin; false when there is none.
    fn evict_one(&self) -> bool {
        let pools: Vec<Arc<IdlePool>> =
            lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
        pools.iter().any(|pool| pool.evict_one())
    }

    /// Drops every idle instance of every plugin (the pool ran out of something other than
    /// instance slots, e.g. tables).
    pub fn evict_all(&self) {
        let pools: Vec<Arc<IdlePool>> =
            lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
        for pool in pools {
            pool.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_round_up_to_whole_ticks_plus_one() {
        let ms = Duration::from_millis(1);
        assert_eq!(ticks_for(Duration::from_millis(10), ms), 11);
        assert_eq!(ticks_for(Duration::from_micros(10_500), ms), 12);
        assert_eq!(ticks_for(Duration::ZERO, ms), 2);
        // 200 ms at the default budget's 2.5 ms tick.
        assert_eq!(ticks_for(Duration::from_millis(200), tick_for(10 * ms)), 81);
    }

    #[test]
    fn the_tick_is_a_quarter_of_the_budget_but_at_least_a_millisecond() {
        let ms = Duration::from_millis(1);
        assert_eq!(tick_for(10 * ms), Duration::from_micros(2500));
        assert_eq!(tick_for(ms), ms);
        assert_eq!(tick_for(Duration::from_secs(1)), 250 * ms);
        // A call gets its budget and at most a quarter more.
        let budget = 10 * ms;
        let tick = tick_for(budget);
        let ticks = ticks_for(budget, tick);
        assert!(tick * (ticks as u32 - 1) >= budget);
        assert!(tick * ticks as u32 <= budget + budget / 4);
    }

    #[test]
    fn a_full_budget_times_out_instead_of_failing_at_once() {
        let budget = Arc::new(InstanceBudget::new(1));
        let first = budget.acquire();
        assert!(first.is_some());
        let started = Instant::now();
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || budget.acquire().is_some())
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(first);
        assert!(
            waiter.join().unwrap_or(false),
            "the waiter got the freed slot"
        );
        assert!(started.elapsed() < POOL_WAIT);
    }
}
