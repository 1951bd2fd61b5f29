//! Host bindings generated from `plugin-sdk/wit/relay-policy.wit`, the single source of truth.
//!
//! Every host import is `trappable`: a host function returns `wasmtime::Result`, and an `Err`
//! becomes a trap in the guest (used to refuse abusive arguments with a clear message). The
//! `message` resource of `on-data` is a [`super::host::MessageHandle`] in the Store's table.

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit",
    world: "plugin",
    imports: { default: trappable },
    additional_derives: [PartialEq, Eq],
});
