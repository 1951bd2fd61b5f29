//! Outbound connections per destination: a cap on how many are open at once, and idle ones
//! kept for the next message to the same destination.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::client::Connection;

/// Connections grouped by destination (a recipient domain or a fixed next hop).
pub(crate) struct Pool {
    destinations: Mutex<HashMap<String, Arc<Destination>>>,
    limit: usize,
    idle_timeout: Duration,
}

struct Destination {
    state: Mutex<DestinationState>,
    freed: Notify,
}

#[derive(Default)]
struct DestinationState {
    idle: Vec<(Connection, Instant)>,
    /// Connections counted against the limit: idle ones plus those checked out.
    open: usize,
}

/// The right to use one connection slot of a destination: either an idle connection to reuse,
/// or room to open a new one. Dropping it without [`Checkout::release`] frees the slot.
pub(crate) struct Checkout {
    destination: Arc<Destination>,
    /// An idle connection handed over for reuse, if there was one.
    pub(crate) reused: Option<Connection>,
    released: bool,
}

impl Pool {
    pub(crate) fn new(limit: usize, idle_timeout: Duration) -> Pool {
        Pool {
            destinations: Mutex::new(HashMap::new()),
            limit,
            idle_timeout,
        }
    }

    /// Waits for a slot at `key` (FIFO among waiters).
    pub(crate) async fn checkout(&self, key: &str) -> Checkout {
        let destination = {
            let mut map = lock(&self.destinations);
            Arc::clone(map.entry(key.to_string()).or_insert_with(|| {
                Arc::new(Destination {
                    state: Mutex::new(DestinationState::default()),
                    freed: Notify::new(),
                })
            }))
        };
        loop {
            let freed = destination.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = lock(&destination.state);
                while let Some((conn, since)) = state.idle.pop() {
                    if since.elapsed() < self.idle_timeout {
                        return Checkout {
                            destination: Arc::clone(&destination),
                            reused: Some(conn),
                            released: false,
                        };
                    }
                    state.open -= 1;
                    tokio::spawn(conn.quit());
                }
                if state.open < self.limit {
                    state.open += 1;
                    return Checkout {
                        destination: Arc::clone(&destination),
                        reused: None,
                        released: false,
                    };
                }
            }
            freed.await;
        }
    }

    /// Closes idle connections past their time and forgets destinations nobody uses.
    pub(crate) fn sweep(&self) {
        let mut map = lock(&self.destinations);
        map.retain(|_, destination| {
            let mut state = lock(&destination.state);
            let timeout = self.idle_timeout;
            let before = state.idle.len();
            let (keep, expired): (Vec<_>, Vec<_>) = std::mem::take(&mut state.idle)
                .into_iter()
                .partition(|(_, since)| since.elapsed() < timeout);
            state.idle = keep;
            state.open -= before - state.idle.len();
            for (conn, _) in expired {
                tokio::spawn(conn.quit());
            }
            if before != state.idle.len() {
                destination.freed.notify_one();
            }
            // Only the map holds it and nothing is open: nobody is waiting or using it.
            !(state.open == 0 && Arc::strong_count(destination) == 1)
        });
    }
}

impl Checkout {
    /// Gives the slot back; a connection that can carry more mail stays open for reuse.
    pub(crate) fn release(mut self, conn: Option<Connection>) {
        self.released = true;
        let mut state = lock(&self.destination.state);
        match conn {
            Some(conn) => state.idle.push((conn, Instant::now())),
            None => state.open -= 1,
        }
        drop(state);
        self.destination.freed.notify_one();
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if !self.released {
            lock(&self.destination.state).open -= 1;
            self.destination.freed.notify_one();
        }
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the state stays
/// consistent: every critical section above is panic-free).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
