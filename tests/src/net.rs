//! Loopback address blocks for tests and listeners that share one port on several 127.x addresses.
//!
//! The relay sends to every MX on one `remote_port`, so all the sinks of a test
//! listen on the same port, each on its own 127.x address. Addresses that must
//! have nothing listening ("the first MX is down") are reserved by binding a
//! socket without listening on it: connects are refused, and no other test or
//! process can take that address and port meanwhile.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::{TcpListener, TcpSocket};

static NEXT_BLOCK: AtomicU32 = AtomicU32::new(0);

/// A block of loopback addresses `127.A.B.1..=254` that no other test in this process uses.
///
/// `A` is derived from the process id, so two test processes running at the
/// same time (two engineers on one box) usually get different blocks too;
/// `B` counts the blocks handed out in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    a: u8,
    b: u8,
}

impl Net {
    /// A fresh block for one test.
    pub fn unique() -> Net {
        let n = NEXT_BLOCK.fetch_add(1, Ordering::Relaxed);
        let a = 1 + (std::process::id() % 250) as u8;
        Net {
            a,
            b: (n % 256) as u8,
        }
    }

    /// The address `127.A.B.host`.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.a, self.b, host)
    }
}

/// Listeners (and reserved, non-listening sockets) that all use the same port.
pub struct SharedPort {
    port: u16,
    listeners: HashMap<IpAddr, TcpListener>,
    // Bound but never listening: connects to these addresses are refused.
    _reserved: Vec<TcpSocket>,
}

impl SharedPort {
    /// Binds `listen` addresses as listeners and `reserve` addresses as refused
    /// ones, all on one OS-chosen port (retrying with another port on conflict).
    pub async fn bind(listen: &[Ipv4Addr], reserve: &[Ipv4Addr]) -> io::Result<SharedPort> {
        let all: Vec<(Ipv4Addr, bool)> = listen
            .iter()
            .map(|ip| (*ip, true))
            .chain(reserve.iter().map(|ip| (*ip, false)))
            .collect();
        let Some(first) = all.first() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no address to bind",
            ));
        };
        let mut last_error = None;
        for _ in 0..100 {
            // The first address picks the port.
            let first_socket = match bind_one(SocketAddr::new(first.0.into(), 0), first.1) {
                Ok(s) => s,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let port = first_socket.port()?;
            let mut bound = vec![(first.0, first_socket)];
            let mut conflict = None;
            for (ip, listening) in &all[1..] {
                match bind_one(SocketAddr::new((*ip).into(), port), *listening) {
                    Ok(s) => bound.push((*ip, s)),
                    Err(e) => {
                        conflict = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = conflict {
                last_error = Some(e);
                continue;
            }
            let mut listeners = HashMap::new();
            let mut reserved = Vec::new();
            for (ip, socket) in bound {
                match socket {
                    Bound::Listener(l) => {
                        listeners.insert(IpAddr::V4(ip), l);
                    }
                    Bound::Reserved(s) => reserved.push(s),
                }
            }
            return Ok(SharedPort {
                port,
                listeners,
                _reserved: reserved,
            });
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("could not bind a shared port")))
    }

    /// The shared port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Takes the listener bound on `ip` (to hand it to a [`crate::Sink`]).
    ///
    /// Panics if `ip` was not in the `listen` list or was already taken.
    pub fn take(&mut self, ip: Ipv4Addr) -> TcpListener {
        match self.listeners.remove(&IpAddr::V4(ip)) {
            Some(l) => l,
            None => panic!("no listener on {ip} in this SharedPort (not bound, or taken twice)"),
        }
    }
}

enum Bound {
    Listener(TcpListener),
    Reserved(TcpSocket),
}

impl Bound {
    fn port(&self) -> io::Result<u16> {
        match self {
            Bound::Listener(l) => l.local_addr().map(|a| a.port()),
            Bound::Reserved(s) => s.local_addr().map(|a| a.port()),
        }
    }
}

fn bind_one(addr: SocketAddr, listening: bool) -> io::Result<Bound> {
    let socket = TcpSocket::new_v4()?;
    if listening {
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(Bound::Listener(socket.listen(128)?))
    } else {
        socket.bind(addr)?;
        Ok(Bound::Reserved(socket))
    }
}

/// A port on `ip` that was free a moment ago (for programs that need a port
/// on their command line and cannot report an OS-assigned one).
pub fn free_port(ip: Ipv4Addr) -> io::Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0))?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn shared_port_listens_on_every_address_and_refuses_on_reserved_ones() {
        let net = Net::unique();
        let mut group = SharedPort::bind(&[net.ip(1), net.ip(2)], &[net.ip(3)])
            .await
            .expect("bind");
        let port = group.port();
        let l1 = group.take(net.ip(1));
        let l2 = group.take(net.ip(2));
        assert_eq!(l1.local_addr().expect("addr").port(), port);
        assert_eq!(l2.local_addr().expect("addr").port(), port);
        let mut c = TcpStream::connect((net.ip(2), port))
            .await
            .expect("connect");
        c.write_all(b"x").await.expect("write");
        let (_s, _peer) = l2.accept().await.expect("accept");
        let refused = TcpStream::connect((net.ip(3), port)).await;
        assert!(refused.is_err(), "reserved address must refuse connections");
        // Another process/test cannot take the reserved address meanwhile.
        assert!(std::net::TcpListener::bind((net.ip(3), port)).is_err());
    }

    #[test]
    fn unique_blocks_differ() {
        assert_ne!(Net::unique(), Net::unique());
    }
}
