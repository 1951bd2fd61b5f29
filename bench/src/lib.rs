//! Benchmark tools for the relay: the sans-IO parts of `loadgen` and `countsink`.
//!
//! The binaries in `src/bin/` only move bytes and wait; everything that can be
//! tested without a socket lives here:
//! - `message`: generates test messages of an exact size, dot-stuffed for DATA;
//! - `reply`: parses SMTP replies for the load generator;
//! - `sink`: the counting sink's SMTP session, bytes in, replies and counts out;
//! - `latency`: percentiles of recorded latencies.
#![forbid(unsafe_code)]

pub mod latency;
pub mod message;
pub mod reply;
pub mod sink;
