//! `relay serve`: opens the spool, starts the scheduler and delivery, and listens for SMTP (and
//! for metrics scrapes, with `[metrics]`).

use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::auth::{AuthLimiter, LimiterSettings, Users};
use crate::config::Config;
use crate::config::ListenerTls;
use crate::delivery::mx::{DnsSettings, MxResolver};
use crate::delivery::Delivery;
use crate::metrics;
use crate::policy::{self, Policy};
use crate::smtp::listener::{self, AuthSetup, Inbound, Timeouts, TlsSetup};
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
    /// The plugin runtime could not start.
    #[error("plugins: {0}")]
    Plugins(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The `[tls]` certificate or key cannot be used.
    #[error("[tls]: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// A `[[dkim.key]]` cannot be used.
    #[error("{0}")]
    Dkim(String),
    /// The `[auth]` users file cannot be used.
    #[error("[auth] users_file: {0}")]
    Users(String),
    /// The `[metrics] listen` address could not be bound.
    #[error("[metrics] listen: cannot listen on {addr}: {source}")]
    MetricsListen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// Runs the relay until a shutdown signal (SIGINT or SIGTERM) arrives.
pub async fn run(config: Config) -> Result<(), StartError> {
    let spool = Spool::open(&config.spool.path, config.spool.min_free_space)?;
    let queued = spool.count().unwrap_or(0);
    metrics::global().set_queue_messages(queued);
    tracing::info!(event = "spool_opened", path = %config.spool.path.display(), queued, "spool opened");
    let resolver = MxResolver::new(&DnsSettings {
        nameservers: config.dns.nameservers.clone(),
        timeout: config.dns.timeout.0,
        attempts: config.dns.attempts,
        cache_size: config.dns.cache_size,
    })
    .map_err(|e| StartError::Dns(e.to_string()))?;

    let policy = match &config.plugins.dir {
        Some(_) => Some(
            Policy::start(
                policy_settings(&config),
                std::sync::Arc::new(spool.plugin_state()),
            )
            .map_err(|e| StartError::Plugins(e.to_string()))?,
        ),
        None => None,
    };

    // Before SMTP: once `listening` is logged, the metrics address is known too.
    if let Some(addr) = config.metrics.listen {
        let (listener, bound) = bind(addr)
            .await
            .map_err(|source| StartError::MetricsListen { addr, source })?;
        tracing::info!(event = "metrics_listening", addr = %bound, "serving GET /metrics");
        let endpoint = Arc::new(metrics::Endpoint::new(spool.clone(), policy.clone()));
        tokio::spawn(metrics::serve(listener, endpoint));
    }

    let (dispatch_tx, dispatch_rx) = mpsc::unbounded_channel();
    let (scheduler, notifier) =
        scheduler::new(spool.clone(), config.spool.max_in_flight, dispatch_tx);
    let signing = match &config.dkim {
        Some(dkim) => Some(Arc::new(
            crate::signing::Signing::load(dkim).map_err(StartError::Dkim)?,
        )),
        None => None,
    };
    let delivery = Delivery::new(
        spool.clone(),
        notifier.clone(),
        resolver,
        policy.clone(),
        signing.clone(),
        &config,
    );
    tokio::spawn(scheduler.run());
    tokio::spawn(delivery.run(dispatch_rx));

    let tls = match &config.tls {
        Some(tls) => {
            let store = crate::tls::CertStore::open(&tls.cert, &tls.key)?;
            store.watch();
            Some(TlsSetup {
                acceptor: tokio_rustls::TlsAcceptor::from(crate::tls::server_config(store)?),
                handshake_timeout: tls.handshake_timeout.0,
            })
        }
        None => None,
    };
    let auth = match &config.auth {
        Some(auth) => {
            let users =
                Users::load(&auth.users_file).map_err(|e| StartError::Users(e.to_string()))?;
            users.watch();
            Some(AuthSetup {
                users,
                limiter: AuthLimiter::new(LimiterSettings {
                    delay_after: auth.delay_after,
                    max_failures: auth.max_failures,
                    window: auth.failure_window.0,
                    lockout: auth.lockout.0,
                }),
                received_shows_user: auth.received_shows_user,
            })
        }
        None => None,
    };
    let inbound = Arc::new(Inbound {
        session: Arc::new(SessionConfig {
            hostname: config.server.hostname.0.clone(),
            max_message_size: config.server.max_message_size,
            max_recipients: config.server.max_recipients,
            max_line_length: config.server.max_line_length,
            max_errors: config.server.max_errors,
            max_hops: config.server.max_hops,
            bare_line_ending: config.server.bare_line_ending,
            bounce_domains: config.bounces.domains.iter().map(|d| d.0.clone()).collect(),
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
        policy,
        tls,
        auth,
        hygiene: config.hygiene.clone(),
        signing,
    });
    for settings in config.listeners() {
        let addr = settings.address;
        let (listener, bound) = bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        let tls = match settings.tls {
            ListenerTls::None => "none",
            ListenerTls::Starttls => "starttls",
            ListenerTls::Implicit => "implicit",
        };
        tracing::info!(event = "listening", addr = %bound, listener = %settings.name, tls, require_auth = settings.require_auth, "accepting SMTP");
        tokio::spawn(listener::serve(
            listener,
            Arc::clone(&inbound),
            Arc::new(settings),
        ));
    }
    shutdown_signal().await;
    tracing::info!(
        event = "shutdown",
        "signal received; stopping (queued mail is on disk)"
    );
    Ok(())
}

/// Binds a listen address from the config; returns the listener and the address it got (the
/// port picked, for port 0).
async fn bind(addr: std::net::SocketAddr) -> std::io::Result<(TcpListener, std::net::SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
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

/// The plugin runtime's settings from `[plugins]`.
pub(crate) fn policy_settings(config: &Config) -> policy::PolicySettings {
    let p = &config.plugins;
    let fallback = |mode: crate::config::FallbackMode| match mode {
        crate::config::FallbackMode::Accept => policy::Fallback::Accept,
        crate::config::FallbackMode::Tempfail => policy::Fallback::Tempfail,
    };
    policy::PolicySettings {
        dir: p.dir.clone().unwrap_or_default(),
        cache_dir: p.cache_dir.clone(),
        time_budget: p.time_budget.0,
        memory_limit: usize::try_from(p.memory_limit).unwrap_or(usize::MAX),
        max_faults: p.max_faults,
        fault_window: p.fault_window.0,
        poll_interval: std::time::Duration::from_millis(250),
        fallback: policy::Fallbacks {
            on_rcpt: fallback(p.fallback.on_rcpt),
            on_data: fallback(p.fallback.on_data),
        },
        plugins: p
            .tables
            .iter()
            .map(|(name, table)| {
                (
                    name.clone(),
                    policy::PluginTable {
                        priority: table.priority,
                        config_json: toml_to_json(&toml::Value::Table(table.config.clone()))
                            .to_string(),
                    },
                )
            })
            .collect(),
    }
}

/// TOML as plain JSON for plugins: dates and times become their RFC 3339 text (serde would
/// otherwise hand plugins toml's private `$__toml_private_datetime` wrapper).
fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => J::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_tables_reach_plugins_as_plain_json() {
        let config = Config::parse(
            "[plugins.ip-pools]\npriority = 5\n[plugins.ip-pools.warmup.\"127.0.0.3\"]\nstart = 2026-11-20\ndaily = [50, 100]\n",
            "t.toml",
        )
        .expect("valid");
        let settings = policy_settings(&config);
        let table = &settings.plugins["ip-pools"];
        assert_eq!(table.priority, 5);
        let json: serde_json::Value = serde_json::from_str(&table.config_json).expect("json");
        assert_eq!(json["warmup"]["127.0.0.3"]["start"], "2026-11-20");
        assert_eq!(json["warmup"]["127.0.0.3"]["daily"][1], 100);
        assert!(json.get("priority").is_none());
    }
}
