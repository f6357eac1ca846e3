//! stek: rotating, fleet-wide TLS session ticket keys without giving up forward secrecy.
//!
//! This crate is the `stek` binary's library: the clock edge, the store trait and its embedded
//! implementation, the generator and agent loops, the sinks that hand keys to TLS servers
//! (nginx, HAProxy and Apache files, a read-only memcached-protocol server) and process hygiene.
//! The model itself (schedule, keys, formats, records) lives in `stek-core`.

pub mod agent;
pub mod clock;
pub mod config;
pub mod duration;
pub mod error;
pub mod feed;
pub mod files;
pub mod generator;
pub mod memcached;
pub mod metrics;
pub mod onchange;
pub mod scan;
pub mod service;
pub mod sink;
pub mod status;
pub mod store;
pub mod sys;
pub mod up;

/// Locks `m`, also when a panic elsewhere poisoned it. Sound for the crate's mutexes: every
/// critical section is a single lookup, insert, remove or replace, so none is left half-done.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
