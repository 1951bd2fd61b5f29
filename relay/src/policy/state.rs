//! An in-memory [`StateStore`], for `relay plugin check` and tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::StateStore;

/// Plugin state kept in memory: lost on restart.
#[derive(Default)]
pub(crate) struct MemoryStateStore {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> MemoryStateStore {
        MemoryStateStore::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<(String, String), Entry>) -> R) -> R {
        let mut guard = match self.entries.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

fn key(plugin: &str, key: &str) -> (String, String) {
    (plugin.to_string(), key.to_string())
}

fn live(entry: &Entry, now: Instant) -> bool {
    entry.expires.is_none_or(|at| at > now)
}

impl StateStore for MemoryStateStore {
    fn get(&self, plugin: &str, k: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.with(|map| {
            map.get(&key(plugin, k))
                .filter(|e| live(e, now))
                .map(|e| e.value.clone())
        })
    }

    fn set(&self, plugin: &str, k: &str, value: &[u8], ttl: Option<Duration>) {
        let expires = ttl.map(|ttl| Instant::now() + ttl);
        self.with(|map| {
            map.insert(
                key(plugin, k),
                Entry {
                    value: value.to_vec(),
                    expires,
                },
            )
        });
    }

    fn delete(&self, plugin: &str, k: &str) {
        self.with(|map| map.remove(&key(plugin, k)));
    }

    fn counter_add(&self, plugin: &str, k: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        let now = Instant::now();
        self.with(|map| {
            let entry = map
                .entry(key(plugin, k))
                .and_modify(|e| {
                    if !live(e, now) {
                        *e = Entry {
                            value: 0i64.to_be_bytes().to_vec(),
                            expires: ttl.map(|ttl| now + ttl),
                        };
                    }
                })
                .or_insert_with(|| Entry {
                    value: 0i64.to_be_bytes().to_vec(),
                    expires: ttl.map(|ttl| now + ttl),
                });
            let current = <[u8; 8]>::try_from(entry.value.as_slice())
                .map(i64::from_be_bytes)
                .unwrap_or(0);
            let next = current.saturating_add(delta);
            entry.value = next.to_be_bytes().to_vec();
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_namespaced_and_expire() {
        let s = MemoryStateStore::new();
        s.set("a", "k", b"1", None);
        s.set("b", "k", b"2", Some(Duration::ZERO));
        assert_eq!(s.get("a", "k").as_deref(), Some(&b"1"[..]));
        assert_eq!(s.get("b", "k"), None);
        s.delete("a", "k");
        assert_eq!(s.get("a", "k"), None);
    }

    #[test]
    fn counters_add_and_restart_after_their_window() {
        let s = MemoryStateStore::new();
        assert_eq!(s.counter_add("a", "n", 2, None), 2);
        assert_eq!(s.counter_add("a", "n", 3, None), 5);
        assert_eq!(s.counter_add("a", "w", 1, Some(Duration::ZERO)), 1);
        assert_eq!(s.counter_add("a", "w", 1, Some(Duration::ZERO)), 1);
    }
}
