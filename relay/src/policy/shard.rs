//! Per-thread shards: each thread keeps to its own copy of a lock or counter, so the cores of
//! a busy relay do not pass the same cache line back and forth on every hook call.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Shards of each sharded value.
pub(super) const SHARDS: usize = 8;

/// This thread's shard: threads take shards round robin on first use.
pub(super) fn current() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

/// `T` alone on its cache lines (two, for the adjacent-line prefetcher).
#[derive(Default)]
#[repr(align(128))]
pub(super) struct Padded<T>(pub T);
