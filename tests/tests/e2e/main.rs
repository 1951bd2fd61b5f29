//! End-to-end tests: the real `relay` binary, recording SMTP sinks as the MXes and
//! a DNS server on loopback, all over real sockets (see `relay_tests` for the scaffolding).
//!
//! Build the relay first: `cargo build -p relay` (or set `RELAY_BIN`). Each test
//! uses its own 127.A.B.x block ([`relay_tests::Net::unique`]), temp dirs and
//! OS-assigned ports, so the tests run in parallel threads of this one binary.
//! `RELAY_TEST_ECHO=1` echoes the relays' log lines as they come.
#![forbid(unsafe_code)]

mod bounces;
mod cli;
mod cli_dkim;
mod cli_users;
mod crash;
mod delivery;
mod dkim;
mod inbound;
mod metrics;
mod outbound_tls;
mod plugins;
mod returned_bounces;
mod smuggling;
mod spool;
mod submission;
