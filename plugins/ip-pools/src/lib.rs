//! `ip-pools`: a relay policy plugin (hook `choose_ip`) that picks the source pool by a
//! message tag or the sender's domain, and holds each source IP to a warm-up schedule.
//!
//! See the crate's README for the `[plugins.ip-pools]` table and the exact rules.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::cell::OnceCell;

use plugin_sdk::prelude::*;

mod choose;
mod config;

pub use config::ConfigError;

/// The plugin: its parsed config, read once per instance on the first call.
#[derive(Debug, Default)]
pub struct IpPools {
    config: OnceCell<Result<config::Config, ConfigError>>,
}

impl Plugin for IpPools {
    const NAME: &'static str = "ip-pools";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    /// Answers the pool (reusable for a minute) when none of its sources has a warm-up cap
    /// today; else the source (by `[[source]]` name) for this delivery, or a hold until the
    /// next UTC midnight when every source of the pool is at its warm-up cap.
    fn choose_ip(&self, input: &ChooseInput) -> ChooseVerdict {
        match self
            .config
            .get_or_init(|| config::Config::parse(&host::config()))
        {
            Ok(config) => choose::choose(config, input),
            Err(err) => {
                // Logged on every call: a broken table must not go unnoticed for long.
                plugin_sdk::error!(
                    "{err}; no opinion for message {} to {}",
                    input.message_id,
                    input.domain
                );
                ChooseVerdict::no_opinion()
            }
        }
    }
}

plugin_sdk::export_plugin!(IpPools, hooks: [choose_ip]);

#[cfg(test)]
mod tests;
