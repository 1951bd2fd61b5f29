//! `content-policy`: a relay policy plugin (hook `on_data`) that refuses blocked attachments
//! and messages without From or Date, adds a header, and tags messages by a header's value.
//!
//! See the crate's README for the `[plugins.content-policy]` table and the exact rules.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::cell::OnceCell;

use plugin_sdk::prelude::*;

mod config;
mod rules;

pub use config::{
    ConfigError, DEFAULT_BLOCKED_EXTENSIONS, DEFAULT_BLOCKED_TYPES, DEFAULT_TAG_HEADER,
    DEFAULT_TAG_KEY,
};

/// The plugin: its parsed config, read once per instance on the first call.
#[derive(Debug, Default)]
pub struct ContentPolicy {
    config: OnceCell<Result<config::Config, ConfigError>>,
}

impl Plugin for ContentPolicy {
    const NAME: &'static str = "content-policy";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    /// Rejects (550) a blocked attachment or a message without From/Date; otherwise no
    /// opinion, with the configured header and the campaign tag.
    fn on_data(&self, input: &DataInput) -> DataVerdict {
        match self
            .config
            .get_or_init(|| config::Config::parse(&host::config()))
        {
            Ok(config) => {
                let verdict = rules::judge(config, input);
                if let DataAction::Reject(reply) = &verdict.action {
                    plugin_sdk::info!(
                        "rejected message from <{}>: {reply}",
                        input.mail_from().address
                    );
                }
                verdict
            }
            Err(err) => {
                // Logged on every message: a broken table means nothing is being checked.
                plugin_sdk::error!(
                    "{err}; message from <{}> not checked",
                    input.mail_from().address
                );
                DataVerdict::no_opinion()
            }
        }
    }
}

plugin_sdk::export_plugin!(ContentPolicy, hooks: [on_data]);

#[cfg(test)]
mod tests;
