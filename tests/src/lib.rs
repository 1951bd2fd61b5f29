//! Shared end-to-end scaffolding: DNS server, recording SMTP sink, relay launcher, SMTP client.
//!
//! Everything here talks over real loopback sockets. The sink and the DNS
//! server are written independently of the relay's code: they are the referee.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod dns;
pub mod metrics;
pub mod mime;
pub mod net;
pub mod plugins;
pub mod relay;
pub mod sink;
pub mod tls;

pub use client::{message, new_message_id};
pub use client::{Reply, SmtpClient};
pub use config::RelayConfig;
pub use dns::{DnsServer, RecordType, Zone};
pub use net::{Net, SharedPort};
pub use relay::{
    check_config, field, is_event, run_relay, run_relay_with_input, RelayProcess, SinkProcess,
};
pub use sink::{Sink, SinkBuilder, SinkGroup, Transaction};

use std::time::Duration;

/// The default bound on any single wait in the tests (a reply, a log line, a delivery).
pub const WAIT: Duration = Duration::from_secs(20);

/// A recording sink on a fresh loopback block, an empty DNS zone, and a relay that routes every
/// domain to the sink, with `tune` applied to the test config.
pub async fn relay_with_sink(
    tune: impl FnOnce(RelayConfig) -> RelayConfig,
) -> (Sink, DnsServer, RelayProcess) {
    let net = Net::unique();
    let sink = Sink::start(net.ip(1)).await;
    let dns = DnsServer::start(Zone::new()).await;
    let relay = RelayProcess::routed_to(&sink, &dns, tune).await;
    (sink, dns, relay)
}
