//! `relay serve`: opens the spool, starts the scheduler and delivery, and listens for SMTP.

use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::delivery::mx::{DnsSettings, MxResolver};
use crate::delivery::Delivery;
use crate::smtp::listener::{self, Inbound, Timeouts};
use crate::smtp::SessionConfig;
use crate::spool::{scheduler, Spool};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    /// The resolver could not be set up.
    #[error("DNS resolver: {0}")]
    Dns(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// Runs the relay until a shutdown signal (SIGINT or SIGTERM) arrives.
pub async fn run(config: Config) -> Result<(), StartError> {
    let spool = Spool::open(&config.spool.path, config.spool.min_free_space)?;
    tracing::info!(event = "spool_opened", path = %config.spool.path.display(), queued = spool.count().unwrap_or(0), "spool opened");
    let resolver = MxResolver::new(&DnsSettings {
        nameservers: config.dns.nameservers.clone(),
        timeout: config.dns.timeout.0,
        attempts: config.dns.attempts,
        cache_size: config.dns.cache_size,
    })
    .map_err(|e| StartError::Dns(e.to_string()))?;

    let (dispatch_tx, dispatch_rx) = mpsc::unbounded_channel();
    let (scheduler, notifier) =
        scheduler::new(spool.clone(), config.spool.max_in_flight, dispatch_tx);
    let delivery = Delivery::new(spool.clone(), notifier.clone(), resolver, &config);
    tokio::spawn(scheduler.run());
    tokio::spawn(delivery.run(dispatch_rx));

    let inbound = Arc::new(Inbound {
        session: Arc::new(SessionConfig {
            hostname: config.server.hostname.0.clone(),
            max_message_size: config.server.max_message_size,
            max_recipients: config.server.max_recipients,
            max_line_length: config.server.max_line_length,
            max_errors: config.server.max_errors,
            max_hops: config.server.max_hops,
            bare_line_ending: config.server.bare_line_ending,
        }),
        relay_networks: config.server.relay_networks.clone(),
        timeouts: Timeouts {
            command: config.server.command_timeout.0,
            data: config.server.data_timeout.0,
        },
        max_connections: config.server.max_connections,
        max_connections_per_ip: config.server.max_connections_per_ip,
        spool,
        notifier,
        connections: Mutex::new(Default::default()),
    });
    for addr in &config.server.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen {
                addr: *addr,
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| StartError::Listen {
            addr: *addr,
            source,
        })?;
        tracing::info!(event = "listening", addr = %bound, "accepting SMTP");
        tokio::spawn(listener::serve(listener, Arc::clone(&inbound)));
    }
    shutdown_signal().await;
    tracing::info!(
        event = "shutdown",
        "signal received; stopping (queued mail is on disk)"
    );
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
