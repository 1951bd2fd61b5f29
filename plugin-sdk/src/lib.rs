//! Placeholder for the plugin SDK; the Wasm plugin issue fills it in.
#![forbid(unsafe_code)]
