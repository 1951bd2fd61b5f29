//! The relay: SMTP in, durable RocksDB spool, delivery to each recipient's MX.
//!
//! See ARCHITECTURE.md at the repository root for the map of modules and their invariants.
#![forbid(unsafe_code)]

pub mod smtp;

#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub(crate) mod bounce;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub(crate) mod delivery;
#[cfg(feature = "server")]
pub mod dkim;
#[cfg(feature = "server")]
pub(crate) mod hooks;
#[cfg(feature = "server")]
pub(crate) mod hygiene;
#[cfg(feature = "server")]
pub(crate) mod inspect;
#[cfg(feature = "server")]
pub(crate) mod metrics;
#[cfg(feature = "server")]
pub mod observe;
#[cfg(feature = "server")]
pub mod policy;
#[cfg(feature = "server")]
pub mod serve;
#[cfg(feature = "server")]
pub(crate) mod signing;
#[cfg(feature = "server")]
pub mod sink;
#[cfg(feature = "server")]
pub mod spool;
#[cfg(feature = "server")]
pub mod tls;
