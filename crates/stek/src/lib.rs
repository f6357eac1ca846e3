//! stek: rotating, fleet-wide TLS session ticket keys without giving up forward secrecy.
//!
//! This crate is the `stek` binary's library. Data flows one way:
//!
//! ```text
//! generator ──▶ store ──▶ agent::syncer ──▶ agent::rotator ──▶ sink::*
//! ```
//!
//! - [`generator`]: makes, seals and publishes each slot's key;
//! - [`store`]: the `Store` trait, the embedded store, Redis and etcd;
//! - [`agent`]: one host's agent, a syncer (store side) and a rotator (clock side);
//! - [`sink`]: one `Sink` trait; key files, HAProxy, the memcached table, the in-process feed,
//!   the reload command; [`memcached`] is the protocol server the table feeds;
//! - [`feed`]: the agent embedded in a Rust server; [`up`]: `stek up` in one process;
//! - [`status`], [`metrics`]: what an agent reports; [`scan`]: the auditor;
//! - [`clock`] (the one place that reads the wall clock), [`files`], [`sys`], [`config`];
//!   [`keyfile`]: private key files, checked like OpenSSH checks its keys.
//!
//! The model itself (schedule, keys, formats, records) lives in `stek-core`.

pub mod agent;
pub mod clock;
pub mod config;
pub mod duration;
pub mod error;
pub mod feed;
pub mod files;
pub mod generator;
pub mod keyfile;
pub mod memcached;
pub mod metrics;
pub mod notify;
pub mod scan;
pub mod sink;
pub mod status;
pub mod store;
pub mod sys;
#[cfg(test)]
mod testlog;
pub mod up;

/// Locks `m`, also when a panic elsewhere poisoned it. Sound for the crate's mutexes: every
/// critical section is a single lookup, insert, remove or replace, so none is left half-done.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
