//! Host bindings generated from `plugin-sdk/wit/relay-policy.wit`, the single source of truth.
//!
//! Every host import is `trappable`: a host function returns `wasmtime::Result`, and an `Err`
//! becomes a trap in the guest (used to refuse abusive arguments with a clear message). The
//! `transaction` and `message` resources are lent to one hook call at a time and answered from
//! the Store's per-call state (see [`super::host::HostState::lend_transaction`]).

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit",
    world: "plugin",
    imports: { default: trappable },
    additional_derives: [PartialEq, Eq],
});
