//! Outbound connections per destination: a cap on how many are open at once, and idle ones
//! kept for the next message to the same destination under the same TLS policy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::client::Connection;
use super::tls::TlsPolicy;

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
    idle: Vec<Idle>,
    /// Connections counted against the limit: idle ones plus those checked out.
    open: usize,
}

/// A connection kept open for reuse.
struct Idle {
    conn: Connection,
    /// The TLS policy it was opened under. It is only reused under the same one: a `verify`
    /// delivery must not ride on a session whose certificate nobody checked, and a `none`
    /// delivery must not get TLS it was configured to avoid.
    policy: TlsPolicy,
    since: Instant,
}

/// The right to use one connection slot of a destination: either an idle connection to reuse,
/// or room to open a new one. Dropping it without [`Checkout::release`] frees the slot.
pub(crate) struct Checkout {
    destination: Arc<Destination>,
    /// An idle connection handed over for reuse, if there was one.
    pub(crate) reused: Option<Connection>,
    /// The policy the connection is used under; it stays with the connection when released.
    policy: TlsPolicy,
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

    /// Waits for a slot at `key` (FIFO among waiters), handing over an idle connection opened
    /// under `policy` if there is one. When every slot is taken but some are idle connections
    /// of another policy, one of them is closed to make room.
    pub(crate) async fn checkout(&self, key: &str, policy: TlsPolicy) -> Checkout {
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
                let checkout = |reused| Checkout {
                    destination: Arc::clone(&destination),
                    reused,
                    policy,
                    released: false,
                };
                let expired = take_expired(&mut state, self.idle_timeout);
                state.open -= expired;
                // The most recently used connection first: the likeliest to be still alive.
                if let Some(index) = state.idle.iter().rposition(|idle| idle.policy == policy) {
                    let idle = state.idle.remove(index);
                    return checkout(Some(idle.conn));
                }
                if state.open < self.limit {
                    state.open += 1;
                    return checkout(None);
                }
                if !state.idle.is_empty() {
                    // The slot passes from the closed connection to the new one.
                    let idle = state.idle.remove(0);
                    tokio::spawn(idle.conn.quit());
                    return checkout(None);
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
            let expired = take_expired(&mut state, self.idle_timeout);
            state.open -= expired;
            if expired > 0 {
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
            Some(conn) => state.idle.push(Idle {
                conn,
                policy: self.policy,
                since: Instant::now(),
            }),
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

/// Closes (in the background) the idle connections older than `timeout`; returns how many.
fn take_expired(state: &mut DestinationState, timeout: Duration) -> usize {
    let before = state.idle.len();
    let (keep, expired): (Vec<_>, Vec<_>) = std::mem::take(&mut state.idle)
        .into_iter()
        .partition(|idle| idle.since.elapsed() < timeout);
    state.idle = keep;
    for idle in expired {
        tokio::spawn(idle.conn.quit());
    }
    before - state.idle.len()
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the state stays
/// consistent: every critical section above is panic-free).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;
    use crate::delivery::client::ClientSettings;

    /// A server that greets, answers EHLO and QUIT, and otherwise listens, on every connection.
    async fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    let _ = stream.get_mut().write_all(b"220 mx.test\r\n").await;
                    let mut line = String::new();
                    while stream.read_line(&mut line).await.unwrap_or(0) > 0 {
                        let reply: &[u8] = if line.starts_with("QUIT") {
                            b"221 bye\r\n"
                        } else {
                            b"250 mx.test\r\n"
                        };
                        let _ = stream.get_mut().write_all(reply).await;
                        line.clear();
                    }
                });
            }
        });
        addr
    }

    async fn open(addr: SocketAddr) -> Connection {
        let settings = ClientSettings {
            helo_name: "relay.test".into(),
            connect_timeout: Duration::from_secs(2),
            greeting_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            data_timeout: Duration::from_secs(2),
        };
        Connection::open(addr, None, &settings).await.unwrap()
    }

    #[tokio::test]
    async fn idle_connections_are_reused_only_under_the_policy_they_were_opened_with() {
        let addr = server().await;
        let pool = Pool::new(3, Duration::from_secs(60));
        let first = pool.checkout("dest", TlsPolicy::Opportunistic).await;
        assert!(first.reused.is_none());
        first.release(Some(open(addr).await));

        let verify = pool.checkout("dest", TlsPolicy::Verify).await;
        assert!(
            verify.reused.is_none(),
            "a verify delivery must not ride on a session opened without verification"
        );
        let none = pool.checkout("dest", TlsPolicy::None).await;
        assert!(none.reused.is_none());
        let again = pool.checkout("dest", TlsPolicy::Opportunistic).await;
        assert!(again.reused.is_some());
        let other = pool.checkout("elsewhere", TlsPolicy::Opportunistic).await;
        assert!(other.reused.is_none());
    }

    #[tokio::test]
    async fn a_full_destination_closes_an_idle_connection_of_another_policy_for_room() {
        let addr = server().await;
        let pool = Pool::new(1, Duration::from_secs(60));
        let first = pool.checkout("dest", TlsPolicy::Opportunistic).await;
        first.release(Some(open(addr).await));
        let verify = tokio::time::timeout(
            Duration::from_secs(2),
            pool.checkout("dest", TlsPolicy::Verify),
        )
        .await
        .expect("the idle opportunistic connection makes room");
        assert!(verify.reused.is_none());
        // The slot is the verify delivery's now: another must wait for it.
        assert!(tokio::time::timeout(
            Duration::from_millis(200),
            pool.checkout("dest", TlsPolicy::Opportunistic)
        )
        .await
        .is_err());
        verify.release(None);
        let next = tokio::time::timeout(
            Duration::from_secs(2),
            pool.checkout("dest", TlsPolicy::Opportunistic),
        )
        .await
        .expect("the slot was freed");
        assert!(next.reused.is_none());
    }
}
