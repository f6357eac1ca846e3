//! Session tickets sealed under a ring's keys: the ticket format of stek's rustls ticketer
//! (crate `stek-rustls`). Only with the `ticket` feature.
//!
//! # Format
//!
//! ```text
//! ticket = name[16] || nonce[12] || ciphertext[len(plaintext)] || tag[16]
//! ```
//!
//! - `name` is the slot key's public [`KeyName`] (the first 16 bytes of every stek ticket, as in
//!   OpenSSL-style tickets, so an auditor maps a ticket to its slot).
//! - The AEAD is AES-256-GCM-SIV (RFC 8452) under the `aead32` part of [`Format::Rustls48`]:
//!   HKDF-SHA256 of the slot secret with the label `rustls-48`/`aead`, a key no other format
//!   shares. The name is the associated data.
//! - `nonce` is 96 bits from a per-thread ChaCha20 generator seeded once from the operating
//!   system (see below).
//! - A ticket is at most [`MAX_TICKET_LEN`] bytes, whoever issued it: every host of a fleet
//!   accepts what any other issued, and refuses anything longer before any other work.
//!
//! # Opening untrusted tickets
//!
//! [`TicketKeys::open`] takes attacker-controlled bytes. It checks the length first, then looks
//! the name up (a binary search over the ring's names: the names are public, printed in every
//! ticket, so the time the lookup takes tells nothing that is not already known), refuses an
//! unknown name without any cryptography, and hands the rest to aws-lc's AES-256-GCM-SIV open,
//! whose tag check is constant-time. Nothing is returned unless the tag verifies. No path
//! panics: slices are taken with `split_first_chunk`/`split_at_checked`, never by index.
//!
//! # Nonces, and why AES-256-GCM-SIV
//!
//! One slot key seals the tickets of a whole fleet for a period: take `n = 10^10 ≈ 2^33.2`
//! tickets per key, each at most `l = 2^10` AES blocks ([`MAX_TICKET_LEN`] = 16 KiB).
//!
//! - Random 96-bit nonces repeat somewhere among `n` tickets with probability about
//!   `n^2 / 2^97 ≈ 2^-30.6`. Under AES-GCM that is a break (a repeated nonce reuses the
//!   keystream and leaks the GHASH key, which forges tickets), and it exceeds the `2^-32` that
//!   NIST SP 800-38D allows; so plain AES-256-GCM with random nonces is ruled out.
//! - Counters need coordination a fleet does not have; per-ticket OS randomness costs a system
//!   call (~0.5 µs here) and does not survive `fork` or VM snapshots any better.
//! - AES-256-GCM-SIV derives a fresh key from the slot key for every nonce (RFC 8452 §4) and is
//!   nonce-misuse resistant: two tickets sealed under the same nonce reveal only whether their
//!   plaintexts are equal, and every rustls ticket plaintext carries a fresh resumption secret,
//!   so they never are. A nonce collision (`2^-30.6` at `10^10` tickets) therefore costs
//!   nothing. What remains, summed (conservatively, without the gains RFC 8452 gets from
//!   truncating the derived blocks):
//!   - key derivation, AES-256 as a PRF on at most `6n` distinct blocks: `(6n)^2 / 2^129 ≈ 2^-57.4`;
//!   - sealing under each derived key (synthetic-IV collisions, POLYVAL):
//!     `n (l + 1)^2 / 2^128 ≈ 2^-74.8` at the size cap, `≈ 2^-87` for 160-byte tickets;
//!   - forgery: each ticket an attacker presents under a known name verifies with probability
//!     at most `(l + 1) / 2^128`, i.e. `≤ 2^-78` after `2^40` attempts.
//!
//!   Total: below `2^-57` for `10^10` tickets per key, 25 bits under NIST's `2^-32`; the
//!   `2^-32` line is only reached near `6.5 * 10^13` tickets per key.
//!
//! Nonces come from a ChaCha20 generator per thread, seeded once from the operating system
//! (`getrandom`) on the thread's first ticket: a nonce costs ~10 ns instead of a system call.
//! Nonces are public (they travel in the ticket), so the generator's state is not a secret.
//! After `fork`, or when a VM snapshot is restored twice, two processes may continue the same
//! generator and emit identical nonces; under AES-GCM-SIV that only tells an observer that two
//! tickets with the same nonce have different plaintexts, which they always have: no keystream
//! reuse, no authentication-key leak. The seal+open of a 160-byte ticket costs ~0.45 µs here,
//! about 0.3x of rustls's own aws-lc-rs ticketer (see `cargo bench -p stek-rustls`).

use core::fmt;
use std::cell::RefCell;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV};
use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::format::Format;
use crate::key::{fill_random, KeyName, SlotKey, NAME_LEN};
use crate::ring::Ring;
use crate::schedule::MAX_LIFETIME;

/// Length of a ticket's nonce.
pub const NONCE_LEN: usize = 12;
/// Length of a ticket's authentication tag.
pub const TAG_LEN: usize = 16;
/// What a ticket adds to its plaintext: name, nonce and tag (44 bytes).
pub const OVERHEAD: usize = NAME_LEN + NONCE_LEN + TAG_LEN;
/// The longest ticket any host of a fleet issues or accepts (16 KiB: room for rustls session
/// values that carry a client certificate chain).
pub const MAX_TICKET_LEN: usize = 16 * 1024;
/// The longest plaintext a ticket can hold.
pub const MAX_PLAINTEXT_LEN: usize = MAX_TICKET_LEN - OVERHEAD;
/// Length of one key in the [`Format::Rustls48`] layout: name16 aead32.
pub const RUSTLS48_LEN: usize = 48;

const AEAD_KEY_LEN: usize = RUSTLS48_LEN - NAME_LEN;

/// Why a set of ticket keys could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TicketKeysError {
    /// No key at all: a ticketer needs one to encrypt.
    Empty,
    /// Key bytes in the [`Format::Rustls48`] layout whose length is not a non-zero multiple of
    /// 48 (the length is given).
    BadLength(usize),
    /// A lifetime of zero or above the 7 days TLS 1.3 allows (in seconds).
    BadLifetime(u32),
    /// The AEAD implementation refused a key (only if aws-lc fails internally).
    Crypto,
}

impl fmt::Display for TicketKeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TicketKeysError::Empty => f.write_str("no ticket key given"),
            TicketKeysError::BadLength(n) => write!(
                f,
                "{n} bytes of rustls-48 keys: not a non-zero multiple of {RUSTLS48_LEN}"
            ),
            TicketKeysError::BadLifetime(s) => write!(
                f,
                "ticket lifetime {s}s: must be between 1s and 7 days (604800s)"
            ),
            TicketKeysError::Crypto => f.write_str("the AEAD implementation refused the key"),
        }
    }
}

impl std::error::Error for TicketKeysError {}

/// One slot's ticket key: its public name and its AES-256-GCM-SIV key. The key schedule lives
/// in aws-lc, which erases it when the key is dropped; `Debug` shows the name only.
pub struct TicketKey {
    name: KeyName,
    aead: LessSafeKey,
}

impl TicketKey {
    /// The ticket key of a slot key.
    pub fn from_slot_key(key: &SlotKey) -> Result<TicketKey, TicketKeysError> {
        TicketKey::from_rustls48(&Format::Rustls48.encode(key))
    }

    /// A ticket key from its 48 bytes in the [`Format::Rustls48`] layout (name16 aead32), as an
    /// agent's memcached server serves them under `ticket-ring/rustls-48`.
    pub fn from_rustls48(bytes: &[u8]) -> Result<TicketKey, TicketKeysError> {
        let (name, aead) = bytes
            .split_first_chunk::<NAME_LEN>()
            .filter(|(_, aead)| aead.len() == AEAD_KEY_LEN)
            .ok_or(TicketKeysError::BadLength(bytes.len()))?;
        let unbound =
            UnboundKey::new(&AES_256_GCM_SIV, aead).map_err(|_| TicketKeysError::Crypto)?;
        Ok(TicketKey {
            name: KeyName(*name),
            aead: LessSafeKey::new(unbound),
        })
    }

    /// The key's public name.
    pub fn name(&self) -> KeyName {
        self.name
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The ticket keys of one ring, immutable: the first key seals, every key opens.
///
/// Build one with [`TicketKeys::from_ring`] (in process) or [`TicketKeys::from_rustls48_ring`]
/// (from an agent's memcached server), then [`SharedTicketKeys::install`] it.
pub struct TicketKeys {
    lifetime: u32,
    /// Ring order: `keys[0]` seals.
    keys: Vec<TicketKey>,
    /// `(name, index into keys)`, sorted by name, one entry per distinct name.
    by_name: Vec<(KeyName, usize)>,
}

impl TicketKeys {
    /// Keys in ring order (the first one seals) with a ticket lifetime hint in seconds. A key
    /// whose name repeats an earlier key's is dropped (names are random 16 bytes: a repeat is
    /// a fault upstream, and the earlier key, the one that seals, wins).
    pub fn new(keys: Vec<TicketKey>, lifetime: u32) -> Result<TicketKeys, TicketKeysError> {
        if keys.is_empty() {
            return Err(TicketKeysError::Empty);
        }
        if lifetime == 0 || u64::from(lifetime) > MAX_LIFETIME.as_secs() {
            return Err(TicketKeysError::BadLifetime(lifetime));
        }
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        let keys: Vec<TicketKey> = keys.into_iter().filter(|k| seen.insert(k.name)).collect();
        let mut by_name: Vec<(KeyName, usize)> =
            keys.iter().enumerate().map(|(i, k)| (k.name, i)).collect();
        by_name.sort_unstable_by_key(|(name, _)| *name);
        Ok(TicketKeys {
            lifetime,
            keys,
            by_name,
        })
    }

    /// The ticket keys of a ring: every entry, shared and local alike, in ring order (the
    /// encrypting key first), with the lifetime `L` of the ring's schedule.
    pub fn from_ring(ring: &Ring) -> Result<TicketKeys, TicketKeysError> {
        let keys = ring
            .entries()
            .iter()
            .map(|e| TicketKey::from_slot_key(&e.key))
            .collect::<Result<Vec<_>, _>>()?;
        TicketKeys::new(keys, ring.schedule().lifetime_hint())
    }

    /// The ticket keys in the value of an agent's `ticket-ring/rustls-48` memcached key: 48-byte
    /// keys in ring order, concatenated; `lifetime` comes from its `ticket-schedule` key.
    pub fn from_rustls48_ring(bytes: &[u8], lifetime: u32) -> Result<TicketKeys, TicketKeysError> {
        if bytes.is_empty() || bytes.len() % RUSTLS48_LEN != 0 {
            return Err(TicketKeysError::BadLength(bytes.len()));
        }
        let keys = bytes
            .chunks_exact(RUSTLS48_LEN)
            .map(TicketKey::from_rustls48)
            .collect::<Result<Vec<_>, _>>()?;
        TicketKeys::new(keys, lifetime)
    }

    /// The ticket lifetime hint, in seconds (`L`).
    pub fn lifetime(&self) -> u32 {
        self.lifetime
    }

    /// The name of the key that seals.
    pub fn encrypting(&self) -> KeyName {
        // `new` refuses an empty list.
        self.keys
            .first()
            .map(|k| k.name)
            .unwrap_or(KeyName([0; NAME_LEN]))
    }

    /// The key names in ring order, the sealing one first.
    pub fn names(&self) -> impl Iterator<Item = KeyName> + '_ {
        self.keys.iter().map(|k| k.name)
    }

    /// How many keys open tickets.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a set holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Seals `plaintext` into a ticket under the first key. `None` if the plaintext is longer
    /// than [`MAX_PLAINTEXT_LEN`], or if this thread's nonce generator could not be seeded.
    pub fn seal(&self, plaintext: &[u8]) -> Option<Vec<u8>> {
        self.seal_with(fresh_nonce()?, plaintext)
    }

    fn seal_with(&self, nonce: [u8; NONCE_LEN], plaintext: &[u8]) -> Option<Vec<u8>> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return None;
        }
        let key = self.keys.first()?;
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.extend_from_slice(&key.name.0);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let (_, body) = out.split_at_mut_checked(NAME_LEN + NONCE_LEN)?;
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name.0),
                body,
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    /// Opens a ticket (untrusted bytes). `None` unless it is at most [`MAX_TICKET_LEN`] bytes,
    /// names a key of this set and authenticates under it.
    pub fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < OVERHEAD || ticket.len() > MAX_TICKET_LEN {
            return None;
        }
        let (name, rest) = ticket.split_first_chunk::<NAME_LEN>()?;
        // Unknown names end here, before any cryptography.
        let key = self.find(name)?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        let (ciphertext, tag) = sealed.split_at_checked(sealed.len().checked_sub(TAG_LEN)?)?;
        let mut plaintext = vec![0u8; ciphertext.len()];
        key.aead
            .open_separate_gather(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(name),
                ciphertext,
                tag,
                &mut plaintext,
            )
            .ok()?;
        Some(plaintext)
    }

    fn find(&self, name: &[u8; NAME_LEN]) -> Option<&TicketKey> {
        let i = self.by_name.binary_search_by(|(n, _)| n.0.cmp(name)).ok()?;
        let (_, index) = self.by_name.get(i)?;
        self.keys.get(*index)
    }
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("lifetime", &self.lifetime)
            .field(
                "names",
                &self.keys.iter().map(|k| k.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

thread_local! {
    /// This thread's nonce generator, seeded from the OS on first use.
    static NONCES: RefCell<Option<ChaCha20Rng>> = const { RefCell::new(None) };
}

/// A fresh 96-bit nonce from this thread's generator; `None` only if the OS refused the seed
/// (or the thread is being torn down).
fn fresh_nonce() -> Option<[u8; NONCE_LEN]> {
    NONCES
        .try_with(|cell| {
            let mut rng = cell.try_borrow_mut().ok()?;
            if rng.is_none() {
                // Nonces are public, so neither the seed nor the state is a secret.
                let mut seed = [0u8; 32];
                fill_random(&mut seed).ok()?;
                *rng = Some(ChaCha20Rng::from_seed(seed));
            }
            let mut nonce = [0u8; NONCE_LEN];
            rng.as_mut()?.fill_bytes(&mut nonce);
            Some(nonce)
        })
        .ok()
        .flatten()
}

/// The ticket keys a server uses right now, swapped whole while it runs.
///
/// Clones share one cell: keep one clone in the TLS server (stek-rustls's `Ticketer` does) and
/// one where rings arrive. [`SharedTicketKeys::seal`] and [`SharedTicketKeys::open`] never take
/// a lock: they load the current set with one atomic read (`arc-swap`) and keep it for the one
/// operation, so a swap never blocks or tears a handshake. A replaced set is freed (and its key
/// schedules erased by aws-lc) as soon as the last operation that loaded it returns.
#[derive(Clone, Default)]
pub struct SharedTicketKeys {
    current: Arc<ArcSwapOption<TicketKeys>>,
}

impl SharedTicketKeys {
    /// An empty cell: nothing seals or opens until keys are installed.
    pub fn new() -> SharedTicketKeys {
        SharedTicketKeys::default()
    }

    /// Replaces the current keys by `keys`, atomically.
    pub fn install(&self, keys: TicketKeys) {
        self.current.store(Some(Arc::new(keys)));
    }

    /// Installs the ticket keys of `ring` (see [`TicketKeys::from_ring`]).
    pub fn install_ring(&self, ring: &Ring) -> Result<(), TicketKeysError> {
        self.install(TicketKeys::from_ring(ring)?);
        Ok(())
    }

    /// Removes every key: nothing seals or opens any more.
    pub fn clear(&self) {
        self.current.store(None);
    }

    /// The keys installed now, if any.
    pub fn current(&self) -> Option<Arc<TicketKeys>> {
        self.current.load_full()
    }

    /// Whether keys are installed.
    pub fn is_installed(&self) -> bool {
        self.current.load().is_some()
    }

    /// The lifetime hint of the installed keys in seconds, 0 if none are installed.
    pub fn lifetime(&self) -> u32 {
        self.current
            .load()
            .as_ref()
            .map_or(0, |keys| keys.lifetime())
    }

    /// Seals a ticket with the installed keys (see [`TicketKeys::seal`]).
    pub fn seal(&self, plaintext: &[u8]) -> Option<Vec<u8>> {
        self.current.load().as_ref()?.seal(plaintext)
    }

    /// Opens a ticket with the installed keys (see [`TicketKeys::open`]).
    pub fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.current.load().as_ref()?.open(ticket)
    }
}

impl fmt::Debug for SharedTicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedTicketKeys")
            .field(&self.current.load().as_deref())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::key::Secret;
    use crate::ring::LocalKeys;
    use crate::schedule::{Schedule, Slot};

    fn key(n: u8) -> SlotKey {
        SlotKey::new(
            Slot(u64::from(n)),
            KeyName([n; NAME_LEN]),
            Secret::from_bytes([n.wrapping_add(100); 32]),
        )
    }

    fn keys(ns: &[u8]) -> TicketKeys {
        let ks = ns
            .iter()
            .map(|n| TicketKey::from_slot_key(&key(*n)).unwrap())
            .collect();
        TicketKeys::new(ks, 3600).unwrap()
    }

    #[test]
    fn round_trip_and_layout() {
        let k = keys(&[1, 2, 3]);
        let pt = b"a rustls session value";
        let t = k.seal(pt).unwrap();
        assert_eq!(t.len(), pt.len() + OVERHEAD);
        assert_eq!(&t[..16], &[1u8; 16]);
        assert_eq!(k.open(&t).unwrap(), pt);
        // Any key of the set opens, whichever position it holds.
        assert_eq!(keys(&[3, 2, 1]).open(&t).unwrap(), pt);
        assert_eq!(keys(&[9, 1]).open(&t).unwrap(), pt);
        // A set without the key refuses.
        assert!(keys(&[2, 3]).open(&t).is_none());
        // Empty plaintexts work; the cap is exact.
        assert_eq!(k.open(&k.seal(b"").unwrap()).unwrap(), b"");
        let max = vec![7u8; MAX_PLAINTEXT_LEN];
        let t = k.seal(&max).unwrap();
        assert_eq!(t.len(), MAX_TICKET_LEN);
        assert_eq!(k.open(&t).unwrap(), max);
        assert!(k.seal(&[0u8; MAX_PLAINTEXT_LEN + 1]).is_none());
    }

    /// Pinned: a ticket sealed by one version must open under every later one, or a rolling
    /// upgrade breaks resumption across the fleet. Never edit to make a test pass.
    #[test]
    fn pinned_ticket_opens() {
        let k = keys(&[5]);
        let nonce = [
            0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb,
        ];
        let sealed = k.seal_with(nonce, b"stek ticket v1").unwrap();
        assert_eq!(crate::key::hex(&sealed), PINNED_TICKET);
        assert_eq!(
            k.open(&hex_decode(PINNED_TICKET)).unwrap(),
            b"stek ticket v1"
        );
    }

    const PINNED_TICKET: &str = "0505050505050505050505050505050500112233445566778899aabb930c9c91befdde477acbcbfe9500e8124f95e556dbd79576f1e848679ddf";

    fn hex_decode(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn nonces_differ() {
        let k = keys(&[1]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let t = k.seal(b"same plaintext").unwrap();
            assert!(seen.insert(t[16..28].to_vec()), "nonce repeated");
        }
        // Other threads have their own generators, seeded separately.
        let other: Vec<Vec<u8>> = std::thread::scope(|s| {
            (0..4)
                .map(|_| s.spawn(|| k.seal(b"same plaintext").unwrap()[16..28].to_vec()))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect()
        });
        for n in other {
            assert!(seen.insert(n), "nonce repeated across threads");
        }
    }

    #[test]
    fn name_is_bound_as_associated_data() {
        // Two keys with the same AEAD key bytes but different names: a ticket moved from one
        // name to the other must fail, because the name is authenticated.
        let mut a = [0u8; RUSTLS48_LEN];
        a[..16].copy_from_slice(&[1; 16]);
        a[16..].copy_from_slice(&[42; 32]);
        let mut b = a;
        b[..16].copy_from_slice(&[2; 16]);
        let ka = TicketKeys::from_rustls48_ring(&a, 60).unwrap();
        let kb = TicketKeys::from_rustls48_ring(&b, 60).unwrap();
        let mut t = ka.seal(b"bound").unwrap();
        assert!(ka.open(&t).is_some());
        t[..16].copy_from_slice(&[2; 16]);
        assert!(kb.open(&t).is_none());
    }

    #[test]
    fn from_ring_matches_the_memcached_bytes() {
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let shared: BTreeMap<Slot, SlotKey> = (97..=101)
            .map(|e| (Slot(e), SlotKey::generate(Slot(e)).unwrap()))
            .collect();
        let ring = Ring::build(
            &s,
            Duration::from_secs(400),
            &shared,
            &mut LocalKeys::new(),
            1,
        )
        .unwrap();
        let direct = TicketKeys::from_ring(&ring).unwrap();
        assert_eq!(direct.lifetime(), 12);
        assert_eq!(direct.len(), 5);
        assert_eq!(direct.encrypting(), ring.encrypting_entry().key.name());
        let bytes: Vec<u8> = ring
            .entries()
            .iter()
            .flat_map(|e| Format::Rustls48.encode(&e.key).to_vec())
            .collect();
        let polled = TicketKeys::from_rustls48_ring(&bytes, 12).unwrap();
        assert!(direct.names().eq(polled.names()));
        // Either one opens what the other sealed: in-process and memcached-fed hosts agree.
        assert_eq!(polled.open(&direct.seal(b"x").unwrap()).unwrap(), b"x");
        assert_eq!(direct.open(&polled.seal(b"y").unwrap()).unwrap(), b"y");
    }

    #[test]
    fn rejects_bad_key_sets() {
        assert_eq!(
            TicketKeys::new(Vec::new(), 60).unwrap_err(),
            TicketKeysError::Empty
        );
        let one = || vec![TicketKey::from_slot_key(&key(1)).unwrap()];
        assert_eq!(
            TicketKeys::new(one(), 0).unwrap_err(),
            TicketKeysError::BadLifetime(0)
        );
        assert_eq!(
            TicketKeys::new(one(), 604_801).unwrap_err(),
            TicketKeysError::BadLifetime(604_801)
        );
        assert!(TicketKeys::new(one(), 604_800).is_ok());
        for len in [0, 47, 49, 95] {
            assert_eq!(
                TicketKeys::from_rustls48_ring(&vec![1; len], 60).unwrap_err(),
                TicketKeysError::BadLength(len)
            );
        }
        assert!(TicketKey::from_rustls48(&[0; 47]).is_err());
    }

    #[test]
    fn duplicate_names_keep_the_first_key() {
        let mut a = [0u8; 2 * RUSTLS48_LEN];
        a[..16].copy_from_slice(&[1; 16]);
        a[16..48].copy_from_slice(&[10; 32]);
        a[48..64].copy_from_slice(&[1; 16]);
        a[64..].copy_from_slice(&[20; 32]);
        let k = TicketKeys::from_rustls48_ring(&a, 60).unwrap();
        assert_eq!(k.len(), 1);
        let first = TicketKeys::from_rustls48_ring(&a[..48], 60).unwrap();
        assert_eq!(first.open(&k.seal(b"z").unwrap()).unwrap(), b"z");
    }

    #[test]
    fn shared_keys_swap() {
        let shared = SharedTicketKeys::new();
        assert!(!shared.is_installed());
        assert_eq!(shared.lifetime(), 0);
        assert!(shared.seal(b"p").is_none());
        shared.install(keys(&[1, 2]));
        let reader = shared.clone();
        let t1 = reader.seal(b"p").unwrap();
        assert_eq!(reader.lifetime(), 3600);
        // Rotate: 3 encrypts, 1 still opens.
        shared.install(keys(&[3, 1]));
        let t3 = reader.seal(b"q").unwrap();
        assert_eq!(&t3[..16], &[3u8; 16]);
        assert_eq!(reader.open(&t1).unwrap(), b"p");
        // 1 leaves the window.
        shared.install(keys(&[4, 3]));
        assert!(reader.open(&t1).is_none());
        assert_eq!(reader.open(&t3).unwrap(), b"q");
        let dbg = format!("{reader:?}");
        assert!(dbg.contains(&KeyName([4; 16]).to_hex()), "{dbg}");
        shared.clear();
        assert!(reader.open(&t3).is_none());
        assert!(!reader.is_installed());
    }

    #[test]
    fn swaps_under_concurrent_use() {
        let shared = SharedTicketKeys::new();
        shared.install(keys(&[1]));
        std::thread::scope(|s| {
            for _ in 0..2 {
                let r = shared.clone();
                s.spawn(move || {
                    for _ in 0..2000 {
                        let t = r.seal(b"concurrent").unwrap();
                        // Every set installed below keeps all earlier keys, so whatever
                        // happened between the two calls, the ticket opens.
                        assert_eq!(r.open(&t).unwrap(), b"concurrent");
                    }
                });
            }
            for i in 2..120u8 {
                let ring: Vec<u8> = (1..=i).rev().collect();
                shared.install(keys(&ring));
            }
        });
    }

    #[test]
    fn debug_shows_names_only() {
        let k = TicketKey::from_slot_key(&key(7)).unwrap();
        let aead = Format::Rustls48.encode(&key(7));
        let d = format!("{k:?} {:?}", keys(&[7]));
        assert!(d.contains(&KeyName([7; 16]).to_hex()), "{d}");
        assert!(!d.contains(&crate::key::hex(&aead[16..24])), "{d}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any single bit flipped anywhere in a ticket makes it fail.
        #[test]
        fn any_bit_flip_is_refused(pt in proptest::collection::vec(any::<u8>(), 0..300), bit in any::<usize>()) {
            let k = keys(&[1, 2]);
            let mut t = k.seal(&pt).unwrap();
            let bit = bit % (t.len() * 8);
            t[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(k.open(&t).is_none());
        }

        /// Truncated tickets fail.
        #[test]
        fn truncation_is_refused(pt in proptest::collection::vec(any::<u8>(), 0..300), cut in any::<usize>()) {
            let k = keys(&[1, 2]);
            let t = k.seal(&pt).unwrap();
            let len = cut % t.len();
            prop_assert!(k.open(&t[..len]).is_none());
        }

        /// Extended tickets fail, whatever is appended.
        #[test]
        fn extension_is_refused(pt in proptest::collection::vec(any::<u8>(), 0..300), extra in proptest::collection::vec(any::<u8>(), 1..64)) {
            let k = keys(&[1, 2]);
            let mut t = k.seal(&pt).unwrap();
            t.extend_from_slice(&extra);
            prop_assert!(k.open(&t).is_none());
        }

        /// Random bytes fail, with a random name or a valid one.
        #[test]
        fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..400), known_name in any::<bool>()) {
            let k = keys(&[1, 2]);
            let mut t = bytes;
            if known_name && t.len() >= 16 {
                t[..16].copy_from_slice(&[2; 16]);
            }
            prop_assert!(k.open(&t).is_none());
        }
    }

    #[test]
    fn oversized_tickets_are_refused_before_lookup() {
        let k = keys(&[1]);
        let mut t = vec![0u8; MAX_TICKET_LEN + 1];
        t[..16].copy_from_slice(&[1; 16]);
        assert!(k.open(&t).is_none());
    }
}
