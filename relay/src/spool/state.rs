//! Plugins' persistent key-value state and counters, in the spool's `plugin_state` column family.
//!
//! Keys are `<plugin>\0<key>`, so each plugin has its own namespace. Values are an 8-byte
//! big-endian expiry (Unix ms, 0 = never) followed by the data. Expired entries read as absent
//! and are deleted when met; the ones never read again are dropped by a compaction filter (see
//! [`cf_options`]). Writes go to the WAL without an fsync of their own: state survives a crash
//! of the relay, and only the last moments of it could be lost on a power cut.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rocksdb::{Cache, CompactionDecision, Options, ReadOptions, DB};

use super::{now_ms, CF_PLUGIN_STATE};
use crate::policy::StateStore;

/// How old an SST file of `plugin_state` may get before RocksDB rewrites it, running the
/// compaction filter over it. Ordinary compactions only run where writes pile up, so without
/// this a file holding entries that have since expired could sit untouched indefinitely.
/// RocksDB checks for such files every 12 hours even when nothing is written, so an expired
/// entry is gone at most about a day and a half after its expiry; rewriting the column family
/// once a day is cheap next to the message traffic the other column families see.
const PERIODIC_COMPACTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Options for the `plugin_state` column family: a compaction filter that drops expired
/// entries, and [`PERIODIC_COMPACTION`] so that every file meets the filter regularly.
///
/// Without it expired entries are deleted only when read, and keys that are never read again
/// (a suppressed address nobody writes to, a rate-limit window of a one-off sender) would stay
/// on disk forever. Removing one early is invisible: the reader treats it as absent already.
/// What is still in the memtable is filtered once it is flushed and compacted; the memtable
/// itself is bounded by the write buffer size.
pub(super) fn cf_options(cache: &Cache) -> Options {
    let mut options = Options::default();
    options.set_compaction_filter("relay-plugin-state-expiry", |_level, _key, value: &[u8]| {
        match expiry_of(value) {
            Some(expiry) if is_expired(expiry, now_ms()) => CompactionDecision::Remove,
            // Live, never expiring, or not in our format: never drop what we cannot judge.
            _ => CompactionDecision::Keep,
        }
    });
    options.set_periodic_compaction_seconds(PERIODIC_COMPACTION.as_secs());
    // Most reads ask for a key that is not there (a recipient that is not suppressed, a
    // counter not yet made): bloom filters answer those without searching the memtable's
    // skip list or reading index blocks of each file.
    let mut table = super::table_options(cache);
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(true);
    options.set_block_based_table_factory(&table);
    options.set_memtable_whole_key_filtering(true);
    options.set_memtable_prefix_bloom_ratio(0.05);
    options
}

/// The expiry stored at the front of a value; `None` for a value too short to hold one.
fn expiry_of(value: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = value.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// True when an entry with this expiry (0 = never) is gone at `now` (Unix ms).
fn is_expired(expiry: u64, now: u64) -> bool {
    expiry != 0 && expiry <= now
}

/// The RocksDB-backed [`StateStore`].
pub(crate) struct PluginState {
    db: Arc<DB>,
    /// The options of every read, made once: RocksDB's `get_cf` makes and frees a set per
    /// read, and plugins read on every hook call that looks at state.
    read_options: ReadOptions,
    /// Serialises read-modify-write of counters.
    counters: Mutex<()>,
}

/// Keys up to this length are built on the stack.
const STACK_KEY: usize = 256;

/// Calls `f` with `<plugin>\0<key>`, built on the stack when it is short (it is for most).
fn with_key<R>(plugin: &str, key: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    let len = plugin.len() + 1 + key.len();
    if len <= STACK_KEY {
        let mut buf = [0u8; STACK_KEY];
        buf[..plugin.len()].copy_from_slice(plugin.as_bytes());
        buf[plugin.len() + 1..len].copy_from_slice(key.as_bytes());
        f(&buf[..len])
    } else {
        let mut long = Vec::with_capacity(len);
        long.extend_from_slice(plugin.as_bytes());
        long.push(0);
        long.extend_from_slice(key.as_bytes());
        f(&long)
    }
}

impl PluginState {
    pub(crate) fn new(db: Arc<DB>) -> PluginState {
        PluginState {
            db,
            read_options: ReadOptions::default(),
            counters: Mutex::new(()),
        }
    }

    /// The live value and its expiry, or `None` when absent or expired.
    fn read(&self, full_key: &[u8]) -> Option<(u64, Vec<u8>)> {
        let cf = self.db.cf_handle(CF_PLUGIN_STATE)?;
        let raw = match self.db.get_pinned_cf_opt(cf, full_key, &self.read_options) {
            Ok(v) => v?,
            Err(err) => {
                tracing::warn!(event = "plugin_state_error", error = %err, "reading plugin state failed");
                return None;
            }
        };
        let expiry = expiry_of(&raw)?;
        if is_expired(expiry, now_ms()) {
            let _ = self.db.delete_cf(cf, full_key);
            return None;
        }
        Some((expiry, raw[8..].to_vec()))
    }

    fn write(&self, full_key: &[u8], expiry: u64, data: &[u8]) {
        let Some(cf) = self.db.cf_handle(CF_PLUGIN_STATE) else {
            return;
        };
        let mut value = Vec::with_capacity(8 + data.len());
        value.extend_from_slice(&expiry.to_be_bytes());
        value.extend_from_slice(data);
        if let Err(err) = self.db.put_cf(cf, full_key, value) {
            tracing::warn!(event = "plugin_state_error", error = %err, "writing plugin state failed");
        }
    }
}

fn expiry_for(ttl: Option<Duration>) -> u64 {
    match ttl {
        Some(ttl) => now_ms().saturating_add(ttl.as_millis() as u64).max(1),
        None => 0,
    }
}

impl StateStore for PluginState {
    fn get(&self, plugin: &str, key: &str) -> Option<Vec<u8>> {
        with_key(plugin, key, |full_key| self.read(full_key)).map(|(_, data)| data)
    }

    fn set(&self, plugin: &str, key: &str, value: &[u8], ttl: Option<Duration>) {
        with_key(plugin, key, |full_key| {
            self.write(full_key, expiry_for(ttl), value)
        });
    }

    fn delete(&self, plugin: &str, key: &str) {
        if let Some(cf) = self.db.cf_handle(CF_PLUGIN_STATE) {
            with_key(plugin, key, |full_key| {
                let _ = self.db.delete_cf(cf, full_key);
            });
        }
    }

    fn counter_add(&self, plugin: &str, key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        with_key(plugin, key, |full_key| {
            self.add_to_counter(full_key, delta, ttl)
        })
    }
}

impl PluginState {
    /// [`StateStore::counter_add`] on a whole key.
    fn add_to_counter(&self, full_key: &[u8], delta: i64, ttl: Option<Duration>) -> i64 {
        let _guard = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let (expiry, current) = match self.read(full_key) {
            Some((expiry, data)) => {
                let value = data
                    .as_slice()
                    .try_into()
                    .map(i64::from_be_bytes)
                    .unwrap_or(0);
                (expiry, value)
            }
            // A new counter: its TTL runs from now (a fixed window).
            None => (expiry_for(ttl), 0),
        };
        let next = current.saturating_add(delta);
        self.write(full_key, expiry, &next.to_be_bytes());
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Spool;

    #[test]
    fn state_is_namespaced_per_plugin_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let spool = Spool::open(dir.path(), 0).expect("open");
            let state = spool.plugin_state();
            state.set("a", "k", b"one", None);
            state.set("b", "k", b"two", None);
            assert_eq!(state.counter_add("a", "n", 5, None), 5);
            assert_eq!(state.counter_add("a", "n", -2, None), 3);
        }
        let spool = Spool::open(dir.path(), 0).expect("reopen");
        let state = spool.plugin_state();
        assert_eq!(state.get("a", "k").as_deref(), Some(&b"one"[..]));
        assert_eq!(state.get("b", "k").as_deref(), Some(&b"two"[..]));
        // A key too long for the stack buffer of reads, and one that just fits.
        for len in [STACK_KEY - 2, STACK_KEY - 1, STACK_KEY * 2] {
            let long = "k".repeat(len);
            state.set("a", &long, long.as_bytes(), None);
            assert_eq!(state.get("a", &long).as_deref(), Some(long.as_bytes()));
            assert_eq!(state.get("b", &long), None);
        }
        assert_eq!(state.counter_add("a", "n", 0, None), 3);
        state.delete("a", "k");
        assert_eq!(state.get("a", "k"), None);
    }

    #[test]
    fn values_and_counters_expire_after_their_ttl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), 0).expect("open");
        let state = spool.plugin_state();
        state.set("p", "short", b"x", Some(Duration::from_millis(30)));
        assert_eq!(
            state.counter_add("p", "c", 1, Some(Duration::from_millis(30))),
            1
        );
        // The window is fixed at creation: a later add does not extend it.
        assert_eq!(
            state.counter_add("p", "c", 1, Some(Duration::from_secs(60))),
            2
        );
        assert!(state.get("p", "short").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(state.get("p", "short"), None);
        assert_eq!(
            state.counter_add("p", "c", 1, None),
            1,
            "a new window starts from zero"
        );
    }

    #[test]
    fn compaction_drops_expired_entries_that_are_never_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), 0).expect("open");
        let state = spool.plugin_state();
        let short = Some(Duration::from_millis(20));
        state.set("p", "short", b"x", short);
        state.counter_add("p", "window", 1, short);
        state.set("p", "long", b"y", Some(Duration::from_secs(3600)));
        state.set("p", "forever", b"z", None);
        std::thread::sleep(Duration::from_millis(60));

        // Read the raw column family: the expiry-aware reader would delete on its own.
        let cf = spool.db.cf_handle(CF_PLUGIN_STATE).expect("plugin_state");
        let raw = |key: &str| {
            with_key("p", key, |full_key| spool.db.get_cf(cf, full_key)).expect("raw read")
        };
        assert!(raw("short").is_some(), "expired but not yet compacted");
        spool.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        assert_eq!(raw("short"), None);
        assert_eq!(raw("window"), None);
        assert!(raw("long").is_some(), "a live entry stays");
        assert!(raw("forever").is_some(), "an entry without TTL stays");
        assert_eq!(state.get("p", "forever").as_deref(), Some(&b"z"[..]));
    }

    #[test]
    fn only_entries_past_their_expiry_count_as_expired() {
        assert_eq!(expiry_of(&[0, 0, 0, 0, 0, 0, 0, 5, b'x']), Some(5));
        assert_eq!(expiry_of(b"short"), None);
        assert!(is_expired(5, 5));
        assert!(!is_expired(6, 5));
        assert!(!is_expired(0, u64::MAX), "0 means never");
    }
}
