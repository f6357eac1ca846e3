//! [`KeyTable`]: the immutable snapshot of what the server answers.

use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;

use stek_core::{Format, KeyName, Origin, Ring, RingEntry, Slot};
use zeroize::Zeroizing;

use super::nghttpx::{self, NghttpxCipher, NGHTTPX_KEY};

/// The prefix of per-slot keys, as Cloudflare's lua-ssl-nginx-module expects
/// (`memc_key_prefix = "ticket-key/"`).
pub const TICKET_KEY_PREFIX: &str = "ticket-key/";
/// The prefix of per-format rings.
pub const TICKET_RING_PREFIX: &str = "ticket-ring/";
/// The key of the schedule summary.
pub const TICKET_SCHEDULE: &str = "ticket-schedule";

/// One served value.
pub(crate) struct Item {
    /// The value; key bytes for every item but `ticket-schedule`.
    value: Zeroizing<Vec<u8>>,
    /// `" <flags> <bytes>\r\n"`: the end of a `get` reply's `VALUE` line, made once.
    get_tail: Box<[u8]>,
    /// `" <flags> <bytes> <cas>\r\n"`: the same for `gets`.
    gets_tail: Box<[u8]>,
    /// The cas unique, for binary responses.
    cas: u64,
}

impl Item {
    fn new(value: Zeroizing<Vec<u8>>, cas: u64) -> Item {
        let len = value.len();
        Item {
            get_tail: format!(" 0 {len}\r\n").into_bytes().into_boxed_slice(),
            gets_tail: format!(" 0 {len} {cas}\r\n")
                .into_bytes()
                .into_boxed_slice(),
            value,
            cas,
        }
    }

    /// The cas unique (never 0).
    pub(crate) fn cas(&self) -> u64 {
        self.cas
    }

    /// The value bytes. Only the reply writer reads them.
    pub(crate) fn value(&self) -> &[u8] {
        &self.value
    }

    /// The end of the `VALUE` line, with or without the cas unique.
    pub(crate) fn tail(&self, cas: bool) -> &[u8] {
        if cas {
            &self.gets_tail
        } else {
            &self.get_tail
        }
    }
}

/// What the table was built from, for `stats` (no secrets: slots, counts, a public name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSummary {
    /// The current slot of the ring.
    pub slot: Slot,
    /// When the current slot started, in Unix seconds.
    pub start: u64,
    /// The name of the encrypting key.
    pub encrypting: KeyName,
    /// How many keys the ring holds (shared and local).
    pub keys: usize,
    /// How many of them are shared, i.e. served as `ticket-key/<start>`.
    pub shared: usize,
    /// How many shared keys of slots after the window are served as `ticket-key/<start>` too
    /// ([`Ring::ahead`]: the slot after next once it arrived).
    pub ahead: usize,
}

/// An immutable snapshot of everything the memcached-protocol server answers, built from one
/// ring ([`KeyTable::from_ring`]) and replaced whole when the ring changes, so a `get` of
/// several keys never mixes two rings.
///
/// Values are zeroized when the table is dropped. `Debug` shows key names, never values.
#[derive(Default)]
pub struct KeyTable {
    items: HashMap<Box<[u8]>, Item>,
    ring: Option<RingSummary>,
}

impl KeyTable {
    /// The table of `ring`, with nghttpx's value for its default cipher (aes-128-cbc); see the
    /// [module docs](super) for the key scheme.
    pub fn from_ring(ring: &Ring) -> KeyTable {
        KeyTable::from_ring_with(ring, NghttpxCipher::default())
    }

    /// The table of `ring`, with nghttpx's value ([`NGHTTPX_KEY`]) in the layout of `cipher`.
    pub fn from_ring_with(ring: &Ring, cipher: NghttpxCipher) -> KeyTable {
        let schedule = ring.schedule();
        let start_of = |slot: Slot| schedule.start(slot).as_secs();
        let mut items = HashMap::new();

        // Only shared keys: a local key is this host's alone, and a client that installed it
        // elsewhere would make tickets that no other host can resume.
        let shared: Vec<&RingEntry> = ring
            .entries()
            .iter()
            .filter(|e| e.origin == Origin::Shared)
            .collect();
        // And the shared keys held ahead of the window, the slot after next above all: a client
        // that asks for the new next key right at the boundary (Cloudflare's, within 100 ms of
        // it, caching a miss) finds it even if it asks before this host rotated. Rings below
        // never hold them: servers install a key only once its slot is next.
        let by_slot = shared.iter().map(|e| &e.key).chain(ring.ahead());
        for k in by_slot {
            let key = format!("{TICKET_KEY_PREFIX}{}", start_of(k.slot()));
            let value = Format::Memcached48.encode(k);
            let cas = cas_of(&key, [k.name()]);
            items.insert(key.into_bytes().into_boxed_slice(), Item::new(value, cas));
        }

        // Whole rings, shared and local entries alike: a client of this host's server is a TLS
        // server on this host, which needs a full-length ring whether or not every slot's
        // shared key has arrived (the same keys the file sinks write).
        for format in Format::ALL {
            let entries: Vec<&RingEntry> = match format {
                Format::Haproxy80 => ring.haproxy_triple().to_vec(),
                Format::Apache48 => vec![ring.encrypting_entry()],
                _ => ring.entries().iter().collect(),
            };
            let mut value = Zeroizing::new(Vec::with_capacity(entries.len() * format.key_len()));
            for e in &entries {
                value.extend_from_slice(&format.encode(&e.key));
            }
            let key = format!("{TICKET_RING_PREFIX}{}", format.id());
            let cas = cas_of(&key, entries.iter().map(|e| e.key.name()));
            items.insert(key.into_bytes().into_boxed_slice(), Item::new(value, cas));
        }

        // nghttpx's whole list, as the `ticket-ring/` values: every key of the ring.
        let (value, n) = nghttpx::value(ring, cipher);
        // The cipher is in the hash too: the same keys in the other layout are another value.
        let cas = cas_of(
            &format!("{NGHTTPX_KEY} {cipher}"),
            ring.entries().iter().take(n).map(|e| e.key.name()),
        );
        items.insert(NGHTTPX_KEY.as_bytes().into(), Item::new(value, cas));

        let enc = ring.encrypting_entry();
        let summary = RingSummary {
            slot: ring.current(),
            start: start_of(ring.current()),
            encrypting: enc.key.name(),
            keys: ring.entries().len(),
            shared: shared.len(),
            ahead: ring.ahead().len(),
        };
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            text,
            "period={} lifetime={} slot={} start={} encrypting={} keys={} shared={} ahead={}",
            schedule.period().as_secs(),
            schedule.lifetime().as_secs(),
            summary.slot,
            summary.start,
            summary.encrypting,
            summary.keys,
            summary.shared,
            summary.ahead,
        );
        let cas = fnv1a(FNV_OFFSET, text.as_bytes()) | 1;
        items.insert(
            TICKET_SCHEDULE.as_bytes().into(),
            Item::new(Zeroizing::new(text.into_bytes()), cas),
        );

        KeyTable {
            items,
            ring: Some(summary),
        }
    }

    /// The item served under `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Item> {
        self.items.get(key)
    }

    /// How many keys are served.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is served (the table before the first ring).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The served keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .items
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        keys.sort();
        keys
    }

    /// What the table was built from, if it was built from a ring.
    pub fn ring(&self) -> Option<&RingSummary> {
        self.ring.as_ref()
    }
}

impl fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyTable")
            .field("ring", &self.ring)
            .field("keys", &self.keys())
            .finish_non_exhaustive()
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64: a cheap, stable hash for cas uniques (not a security boundary: it only tells a
/// client whether a value changed).
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The cas unique of an item: a hash of its key and of the public names of the keys in its
/// value, so it is stable while the value is and changes when any key in it does (a restart
/// with new keys for the same slot included). Never 0, which some clients treat as "no cas".
fn cas_of(key: &str, names: impl IntoIterator<Item = KeyName>) -> u64 {
    let mut h = fnv1a(FNV_OFFSET, key.as_bytes());
    for name in names {
        h = fnv1a(h, &name.0);
    }
    h | 1
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use stek_core::{LocalKeys, Schedule, SlotKey};

    use super::*;

    /// A ring with P = 4 s, L = 12 s at t = 400 s (slot 100, window 97..=101) whose shared keys
    /// are `shared_slots`; the rest are local.
    pub(crate) fn ring_with(shared_slots: &[u64]) -> Ring {
        let schedule = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let shared: BTreeMap<Slot, SlotKey> = shared_slots
            .iter()
            .map(|s| (Slot(*s), SlotKey::generate(Slot(*s)).unwrap()))
            .collect();
        Ring::build(
            &schedule,
            Duration::from_secs(400),
            &shared,
            &mut LocalKeys::new(),
            1,
        )
        .unwrap()
    }

    fn value<'t>(t: &'t KeyTable, key: &str) -> &'t [u8] {
        t.get(key.as_bytes())
            .unwrap_or_else(|| panic!("{key} missing"))
            .value()
    }

    #[test]
    fn serves_shared_keys_rings_and_schedule() {
        let ring = ring_with(&[98, 99, 100, 101]);
        let t = KeyTable::from_ring(&ring);
        assert_eq!(
            t.keys(),
            vec![
                "nghttpx:tls-ticket-key",
                "ticket-key/392",
                "ticket-key/396",
                "ticket-key/400",
                "ticket-key/404",
                "ticket-ring/apache-48",
                "ticket-ring/haproxy-80",
                "ticket-ring/memcached-48",
                "ticket-ring/nginx-48",
                "ticket-ring/nginx-80",
                "ticket-ring/rustls-48",
                "ticket-schedule",
            ]
        );
        // Slot 97 has a local key: never served alone.
        assert!(t.get(b"ticket-key/388").is_none());
        for slot in [98u64, 99, 100, 101] {
            let key = ring.shared(Slot(slot)).unwrap();
            assert_eq!(
                value(&t, &format!("ticket-key/{}", slot * 4)),
                &Format::Memcached48.encode(key)[..]
            );
        }
        // Rings: nginx order, every entry (local 97 included).
        for f in [Format::Nginx80, Format::Nginx48, Format::Memcached48] {
            let want: Vec<u8> = ring
                .entries()
                .iter()
                .flat_map(|e| f.encode(&e.key).to_vec())
                .collect();
            assert_eq!(value(&t, &format!("ticket-ring/{}", f.id())), &want[..]);
            assert_eq!(want.len(), 5 * f.key_len());
        }
        let want: Vec<u8> = ring
            .haproxy_triple()
            .iter()
            .flat_map(|e| Format::Haproxy80.encode(&e.key).to_vec())
            .collect();
        assert_eq!(value(&t, "ticket-ring/haproxy-80"), &want[..]);
        assert_eq!(
            value(&t, "ticket-ring/apache-48"),
            &Format::Apache48.encode(&ring.encrypting_entry().key)[..]
        );
        let text = String::from_utf8(value(&t, "ticket-schedule").to_vec()).unwrap();
        assert_eq!(
            text,
            format!(
                "period=4 lifetime=12 slot=100 start=400 encrypting={} keys=5 shared=4 ahead=0",
                ring.encrypting_entry().key.name()
            )
        );
        assert_eq!(t.ring().unwrap().shared, 4);
        // nghttpx's list: every key of the ring, its own framing (see `nghttpx`).
        let (want, n) = nghttpx::value(&ring, NghttpxCipher::Aes128Cbc);
        assert_eq!(n, 5);
        assert_eq!(value(&t, NGHTTPX_KEY), &want[..]);
        let t256 = KeyTable::from_ring_with(&ring, NghttpxCipher::Aes256Cbc);
        assert_eq!(
            value(&t256, NGHTTPX_KEY),
            &nghttpx::value(&ring, NghttpxCipher::Aes256Cbc).0[..]
        );
        assert_eq!(value(&t256, NGHTTPX_KEY).len(), 4 + 5 * 82);
    }

    /// The slot after next (102 at t = 400) is served by slot as soon as the ring holds it, in
    /// the bytes it is served with once it is the next key; it is in no ring value and counted
    /// as `ahead`, not `shared`.
    #[test]
    fn serves_the_key_held_ahead_by_slot_only() {
        let ring = ring_with(&[99, 100, 101, 102]);
        let t = KeyTable::from_ring(&ring);
        let ahead = &ring.ahead()[0];
        assert_eq!(ahead.slot(), Slot(102));
        // assert!, not assert_eq!: a failure must not print key bytes.
        assert!(value(&t, "ticket-key/408") == &Format::Memcached48.encode(ahead)[..]);
        for f in Format::ALL {
            let ring_value = value(&t, &format!("ticket-ring/{}", f.id()));
            assert!(
                ring_value
                    .chunks(f.key_len())
                    .all(|k| k[..16] != ahead.name().0),
                "{f:?} ring holds the key ahead"
            );
        }
        let text = String::from_utf8(value(&t, "ticket-schedule").to_vec()).unwrap();
        assert!(text.ends_with(" keys=5 shared=3 ahead=1"), "{text}");
        assert_eq!(t.ring().unwrap().ahead, 1);
        // The cas of the early entry is the one it keeps once it is the next key.
        let schedule = *ring.schedule();
        let shared: BTreeMap<Slot, SlotKey> = [99u64, 100, 101]
            .iter()
            .map(|s| (Slot(*s), ring.shared(Slot(*s)).unwrap().clone()))
            .chain([(Slot(102), ahead.clone())])
            .collect();
        let next = Ring::build(
            &schedule,
            Duration::from_secs(404),
            &shared,
            &mut LocalKeys::new(),
            1,
        )
        .unwrap();
        let later = KeyTable::from_ring(&next);
        assert!(next.ahead().is_empty());
        assert!(value(&later, "ticket-key/408") == value(&t, "ticket-key/408"));
        assert_eq!(
            later.get(b"ticket-key/408").unwrap().tail(true),
            t.get(b"ticket-key/408").unwrap().tail(true)
        );
    }

    #[test]
    fn cas_is_stable_and_follows_the_keys() {
        let ring = ring_with(&[100, 101]);
        let a = KeyTable::from_ring(&ring);
        let b = KeyTable::from_ring(&ring);
        let other = KeyTable::from_ring(&ring_with(&[100, 101]));
        for key in a.keys() {
            let tail = |t: &KeyTable| t.get(key.as_bytes()).unwrap().tail(true).to_vec();
            assert_eq!(tail(&a), tail(&b), "{key}");
            assert_ne!(tail(&a), tail(&other), "{key}");
        }
        let item = a.get(b"ticket-key/400").unwrap();
        assert_eq!(item.tail(false), b" 0 48\r\n");
        assert!(item.tail(true).starts_with(b" 0 48 "));
    }

    #[test]
    fn debug_shows_no_value() {
        let t = KeyTable::from_ring(&ring_with(&[100, 101]));
        let dbg = format!("{t:?}");
        assert!(dbg.contains("ticket-key/400"));
        let v = t.get(b"ticket-key/400").unwrap().value();
        let hex: String = v[16..24].iter().map(|b| format!("{b:02x}")).collect();
        assert!(!dbg.contains(&hex));
        assert!(KeyTable::default().is_empty());
        assert!(KeyTable::default().ring().is_none());
    }
}
