//! Fleet-wide session tickets for rustls servers, from stek's key schedule.
//!
//! rustls's own ticketers make random keys per process, so two rustls servers never resume each
//! other's tickets, and its `TicketRotator` cannot take external keys. [`Ticketer`] implements
//! [`rustls::server::ProducesTickets`] (rustls 0.23) over a *ring* of stek keys: every host of a
//! group seals with the current slot's key and opens tickets made with any key of its window
//! (`R` past slots, the current one, the next one), so any host resumes any other host's tickets
//! across rotations, while every key is erased `(R + 1) * P` after its slot began.
//!
//! # Which type do I use?
//!
//! - [`Ticketer`]: put it in [`rustls::ServerConfig::ticketer`] and keep a clone to feed.
//!   Cloning is cheap; all clones share one key set, swapped atomically.
//! - Feed it one of two ways:
//!   - **in process**, from a [`stek_core::Ring`]: [`Ticketer::install_ring`]. The `stek` crate
//!     runs an agent inside your server and calls you with every new ring
//!     (`stek::feed::RingFeed`, `stek::feed::run_embedded_agent`); see
//!     `examples/in_process.rs`.
//!   - **from the local agent's memcached interface**: [`memcached::Poller`] reads
//!     `ticket-ring/rustls-48` and `ticket-schedule` from a running `stek up` / `stek agent`
//!     (unix socket or TCP) on a plain thread, so your server embeds no agent, store client or
//!     async runtime; see `examples/memcached_poller.rs` and `examples/https_server.rs`.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use rustls::server::ProducesTickets;
//! use stek_core::{LocalKeys, Ring, Schedule, SlotKey};
//! use stek_rustls::Ticketer;
//!
//! // What an agent holds at `now` (here: made up on the spot).
//! let schedule = Schedule::new(Duration::from_secs(3600), Duration::from_secs(18 * 3600))?;
//! let now = Duration::from_secs(1_800_000_000);
//! let shared: BTreeMap<_, _> = schedule
//!     .window_at(now)
//!     .slots()
//!     .map(|s| (s, SlotKey::generate(s).unwrap()))
//!     .collect();
//! let ring = Ring::build(&schedule, now, &shared, &mut LocalKeys::new(), 1)?;
//!
//! let ticketer = Ticketer::new();
//! assert!(!ticketer.enabled(), "no keys yet: rustls falls back to its session cache");
//! ticketer.install_ring(&ring)?; // again on every new ring, while the server runs
//! assert_eq!(ticketer.lifetime(), 18 * 3600);
//!
//! // In the server: `server_config.ticketer = Arc::new(ticketer.clone());`
//! let server_side: Arc<dyn ProducesTickets> = Arc::new(ticketer.clone());
//! let ticket = server_side.encrypt(b"session state").unwrap();
//! assert_eq!(&ticket[..16], &ring.encrypting_entry().key.name().0);
//! assert_eq!(server_side.decrypt(&ticket).unwrap(), b"session state");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Tickets
//!
//! ```text
//! ticket = name[16] || nonce[12] || AES-256-GCM-SIV(key, nonce, aad = name, plaintext) (+ tag[16])
//! ```
//!
//! The key is the `aead32` part of the slot key's `rustls-48` format (HKDF-SHA256 of the slot
//! secret with its own label: no other server format shares it), the same whether the ring
//! came in process or over memcached. A ticket is at most [`MAX_TICKET_LEN`] (16 KiB) bytes on
//! every host: a fixed bound, not "the longest we issued", so a host accepts what any other
//! host issued. [`ProducesTickets::decrypt`](rustls::server::ProducesTickets::decrypt) takes
//! attacker-controlled bytes: it refuses wrong lengths first, then unknown names without any
//! cryptography (the lookup time depends only on the public name), then anything whose tag does
//! not verify (aws-lc's constant-time check); no input makes it panic.
//!
//! # Nonces: the bound at fleet scale
//!
//! One key seals the tickets of a whole fleet for one period. Target: `n = 10^10 ≈ 2^33.2`
//! tickets per key, each at most `l = 2^10` AES blocks.
//!
//! | scheme | nonce repeat among `n` | consequence of a repeat | cost per ticket |
//! |---|---|---|---|
//! | AES-256-GCM, random 96-bit nonce | `n^2/2^97 ≈ 2^-30.6` (> NIST SP 800-38D's `2^-32`) | keystream reuse, GHASH key leak: forgeable tickets | baseline |
//! | AES-256-GCM, nonce from the OS per ticket | same | same | + ~0.5 µs system call |
//! | XChaCha20-Poly1305, 192-bit nonce | `n^2/2^193 ≈ 2^-126.6` | as GCM, if it happens (fork!) | ~6 µs (RustCrypto; aws-lc-rs has no XChaCha) |
//! | **AES-256-GCM-SIV, random 96-bit nonce (chosen)** | `2^-30.6` | none: only "these two plaintexts differ" | ~0.45 µs seal+open |
//!
//! AES-256-GCM-SIV (RFC 8452) derives a fresh key from the slot key for every nonce and is
//! nonce-misuse resistant: two tickets under one nonce reveal only whether their plaintexts are
//! equal, and every rustls ticket carries a fresh resumption secret, so they never are. The
//! adversary's advantage against `10^10` tickets per key is bounded (conservatively, without
//! the gains RFC 8452 gets from truncating the derived blocks) by
//!
//! - key derivation, AES-256 as a PRF on at most `6n` distinct blocks: `(6n)^2/2^129 ≈ 2^-57.4`,
//! - synthetic-IV collisions and POLYVAL under the derived keys: `n (l+1)^2/2^128 ≈ 2^-74.8`,
//! - forgery: `(l+1)/2^128` per presented ticket, `≤ 2^-78` after `2^40` attempts,
//!
//! in total **below `2^-57`**, 25 bits under NIST's `2^-32`; that line is only reached near
//! `6.5 * 10^13` tickets per key.
//!
//! The nonces come from a ChaCha20 generator per thread, seeded once from the operating system:
//! ~10 ns instead of a ~0.5 µs system call per ticket. **Fork and VM snapshots**: a process that
//! forks (or a VM snapshot restored twice) may continue the same generator in two places and
//! emit the same nonces; under GCM-SIV that costs nothing more than the collision analysis
//! above already allows (no keystream reuse, no authentication-key leak), which is why the
//! generator needs no fork detection. Nonces are public, so the generator's state is no secret.
//!
//! # Failure behaviour
//!
//! Until keys are installed, [`Ticketer`] reports `enabled() == false`: rustls then issues no
//! tickets (TLS 1.3 uses its stateful session cache instead). The memcached poller keeps the
//! last keys while the agent is briefly unreachable and removes them once its ring is a slot
//! boundary plus a grace period out of date, so a key is never held past its erasure time by
//! more than that grace ([`memcached::PollOptions`]).

#![forbid(unsafe_code)]

pub mod memcached;

use std::sync::Arc;

pub use stek_core;
pub use stek_core::ticket::{
    SharedTicketKeys, TicketKey, TicketKeys, TicketKeysError, MAX_PLAINTEXT_LEN, MAX_TICKET_LEN,
    OVERHEAD,
};
use stek_core::Ring;

/// A [`rustls::server::ProducesTickets`] over stek's ring of keys, swappable while the server
/// runs.
///
/// All clones share one key set ([`SharedTicketKeys`]): install keys through any clone and every
/// server holding another clone uses them for its next ticket. Sealing and opening never take a
/// lock: each loads the current key set from an `arc-swap` cell.
#[derive(Clone, Debug, Default)]
pub struct Ticketer {
    keys: SharedTicketKeys,
}

impl Ticketer {
    /// A ticketer without keys: disabled until [`Ticketer::install_ring`] or
    /// [`Ticketer::install`].
    pub fn new() -> Ticketer {
        Ticketer::default()
    }

    /// A ticketer holding the ticket keys of `ring`.
    pub fn from_ring(ring: &Ring) -> Result<Ticketer, TicketKeysError> {
        let t = Ticketer::new();
        t.install_ring(ring)?;
        Ok(t)
    }

    /// A ticketer over an existing shared key set.
    pub fn with_keys(keys: SharedTicketKeys) -> Ticketer {
        Ticketer { keys }
    }

    /// Replaces the keys by those of `ring`: every entry, in ring order (the encrypting key
    /// seals, all open), with lifetime `L`. Call it on every new ring.
    pub fn install_ring(&self, ring: &Ring) -> Result<(), TicketKeysError> {
        self.keys.install_ring(ring)
    }

    /// Replaces the keys.
    pub fn install(&self, keys: TicketKeys) {
        self.keys.install(keys);
    }

    /// Removes every key: the ticketer is disabled until keys are installed again.
    pub fn clear(&self) {
        self.keys.clear();
    }

    /// The keys in use now, if any (names, lifetime; never key bytes).
    pub fn current(&self) -> Option<Arc<TicketKeys>> {
        self.keys.current()
    }

    /// The shared key set behind this ticketer.
    pub fn shared_keys(&self) -> &SharedTicketKeys {
        &self.keys
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    /// Whether keys are installed. While none are, rustls issues no tickets.
    fn enabled(&self) -> bool {
        self.keys.is_installed()
    }

    /// The lifetime `L` of the schedule, in seconds (0 while no keys are installed).
    fn lifetime(&self) -> u32 {
        self.keys.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys.seal(plain)
    }

    /// `cipher` is attacker-controlled: see the crate docs.
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.keys.open(cipher)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use rustls::server::ProducesTickets;
    use stek_core::{LocalKeys, Schedule, Slot, SlotKey};

    use super::*;

    fn ring_at(now: u64, shared: &BTreeMap<Slot, SlotKey>) -> Ring {
        let s = Schedule::new(Duration::from_secs(10), Duration::from_secs(30)).unwrap();
        Ring::build(
            &s,
            Duration::from_secs(now),
            shared,
            &mut LocalKeys::new(),
            1,
        )
        .unwrap()
    }

    #[test]
    fn disabled_until_fed_then_follows_the_ring() {
        let shared: BTreeMap<Slot, SlotKey> = (0..20)
            .map(|e| (Slot(e), SlotKey::generate(Slot(e)).unwrap()))
            .collect();
        let t = Ticketer::new();
        let server: Arc<dyn ProducesTickets> = Arc::new(t.clone());
        assert!(!server.enabled());
        assert_eq!(server.lifetime(), 0);
        assert!(server.encrypt(b"x").is_none());
        assert!(server.decrypt(&[0; 64]).is_none());

        t.install_ring(&ring_at(100, &shared)).unwrap();
        assert!(server.enabled());
        assert_eq!(server.lifetime(), 30);
        let old = server.encrypt(b"slot 10").unwrap();
        assert_eq!(&old[..16], &shared[&Slot(10)].name().0);
        // Three periods later slot 10 is still in the window (R = 3)...
        t.install_ring(&ring_at(130, &shared)).unwrap();
        assert_eq!(server.decrypt(&old).unwrap(), b"slot 10");
        assert_eq!(
            &server.encrypt(b"y").unwrap()[..16],
            &shared[&Slot(13)].name().0
        );
        // ...one more and it is gone.
        t.install_ring(&ring_at(140, &shared)).unwrap();
        assert!(server.decrypt(&old).is_none());
        t.clear();
        assert!(!server.enabled());
        let dbg = format!("{t:?}");
        assert!(dbg.contains("Ticketer"), "{dbg}");
    }

    #[test]
    fn from_ring_is_ready() {
        let shared: BTreeMap<Slot, SlotKey> = (8..=11)
            .map(|e| (Slot(e), SlotKey::generate(Slot(e)).unwrap()))
            .collect();
        let t = Ticketer::from_ring(&ring_at(100, &shared)).unwrap();
        assert!(t.enabled());
        assert_eq!(t.current().unwrap().len(), 5);
        let other = Ticketer::with_keys(t.shared_keys().clone());
        assert_eq!(other.decrypt(&t.encrypt(b"z").unwrap()).unwrap(), b"z");
    }
}
