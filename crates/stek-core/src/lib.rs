//! The model of stek: the key schedule, keys and rings, per-server key formats and the record
//! that carries one slot's key through a store. No I/O, no clock, no async runtime: every
//! function that depends on time takes `now` (time since the Unix epoch).
//!
//! Which type do I use?
//! - [`Schedule`] answers "which slot is it, which keys must a host hold, when is a key erased".
//! - [`SlotKey`] is one slot's key (public [`KeyName`], zeroizing [`Secret`]).
//! - [`Ring`] is what a host holds at one moment, in the order servers want it.
//! - [`Format`] turns a key into the bytes nginx, HAProxy, Apache or a memcached client expects.
//! - [`Record`] is the versioned encoding of one slot's key for a store; [`Record::seal`] and
//!   [`Record::open_sealed`] make and check the sealed, signed records of shared stores
//!   ([`GroupIdentity`], [`GeneratorKey`]).
//! - With the `ticket` feature, `ticket::TicketKeys` seals and opens session tickets under a
//!   ring's keys, and `ticket::SharedTicketKeys` swaps them under a running server (the core of
//!   the `stek-rustls` ticketer).
//! - [`Backoff`] and [`jitter`] space out retries and polls (one backoff, one jitter range for
//!   the whole workspace).
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//! use stek_core::{Format, LocalKeys, Ring, Schedule, SlotKey};
//!
//! let schedule = Schedule::new(Duration::from_secs(3600), Duration::from_secs(18 * 3600))?;
//! let now = Duration::from_secs(1_800_000_000);
//! let current = schedule.slot_at(now);
//! let mut shared = BTreeMap::new();
//! for slot in [current, current.plus(1)] {
//!     shared.insert(slot, SlotKey::generate(slot)?);
//! }
//! let ring = Ring::build(&schedule, now, &shared, &mut LocalKeys::new(), 1)?;
//! assert_eq!(ring.entries().len(), 20);
//! let nginx_file = Format::Nginx80.encode(&ring.encrypting_entry().key);
//! assert_eq!(nginx_file.len(), 80);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod backoff;
pub mod format;
pub mod key;
pub mod record;
pub mod ring;
pub mod schedule;
pub mod seal;
#[cfg(feature = "ticket")]
pub mod ticket;

pub use backoff::{jitter, Backoff};
pub use format::Format;
pub use key::{KeyBytes, KeyName, RandomError, Secret, SlotKey};
pub use record::{Body, Record, RecordError, RecordHeader};
pub use ring::{Encrypting, LocalKeys, Origin, Ring, RingEntry};
pub use schedule::{Role, Schedule, ScheduleError, Slot, Window};
pub use seal::{
    GeneratorKey, GeneratorPublicKey, GroupIdentity, GroupPublicKey, KeyError, SealError,
};
