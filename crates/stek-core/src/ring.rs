//! A host's ring: one key for every slot of its window, and which one encrypts.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::key::{RandomError, SlotKey};
use crate::schedule::{Role, Schedule, Slot, Window};

/// Where a ring entry's key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The group's key for the slot, as made by the generator and shared by every host.
    Shared,
    /// A random key made by this host alone for a slot whose shared key it does not have: it
    /// keeps files and key lists full-length without ever being shared (and, when the current
    /// slot has no shared key, encrypts: resumption then works on this host only, forward
    /// secrecy holds).
    Local,
}

/// Which key encrypts, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encrypting {
    /// The current slot's shared key, as the schedule says.
    Current,
    /// The current slot's key is missing; the newest shared key, `behind` periods old (at most
    /// `max_stale`), encrypts meanwhile.
    Stale {
        /// How many periods behind the current slot the encrypting key is.
        behind: u64,
    },
    /// No shared key recent enough: a local random key encrypts (docs/DESIGN.md §5).
    LocalFallback,
}

/// One key of a ring.
#[derive(Clone, Debug)]
pub struct RingEntry {
    /// The role the schedule gives the entry's slot.
    pub role: Role,
    /// Where the key came from.
    pub origin: Origin,
    /// The key itself.
    pub key: SlotKey,
}

impl RingEntry {
    /// The slot of the entry.
    pub fn slot(&self) -> Slot {
        self.key.slot()
    }
}

/// Random keys a host makes for slots without a shared key. They stay the same while their slot
/// is in the window (so files do not churn) and are erased when it leaves.
#[derive(Debug, Default)]
pub struct LocalKeys {
    keys: BTreeMap<Slot, SlotKey>,
}

impl LocalKeys {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn get_or_make(&mut self, slot: Slot) -> Result<&SlotKey, RandomError> {
        match self.keys.entry(slot) {
            Entry::Occupied(o) => Ok(o.into_mut()),
            Entry::Vacant(v) => Ok(v.insert(SlotKey::generate(slot)?)),
        }
    }

    /// Drops (and so zeroizes) every key outside `window` or whose slot now has a shared key.
    fn prune(&mut self, window: &Window, shared: &BTreeMap<Slot, SlotKey>) {
        self.keys
            .retain(|slot, _| window.contains(*slot) && !shared.contains_key(slot));
    }

    /// How many local keys are held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no local key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A host's keys at one moment: one per slot of the window, in nginx order (the encrypting key
/// first, then the next key, then past keys newest first), and apart from them the shared keys
/// the host already holds for slots after the window ([`Ring::ahead`]).
#[derive(Clone, Debug)]
pub struct Ring {
    schedule: Schedule,
    window: Window,
    encrypting: Encrypting,
    entries: Vec<RingEntry>,
    /// Shared keys of slots after the window, oldest first. Never installed: see [`Ring::ahead`].
    ahead: Vec<SlotKey>,
}

impl Ring {
    /// Builds the ring of a host whose clock reads `now` from the shared keys it holds.
    ///
    /// Shared keys before the window are ignored (the caller should drop them, as the agent's
    /// rotator does at every boundary); those after it are kept apart as [`Ring::ahead`], never
    /// among the entries. Slots without a shared key get a key from `local`. When the current
    /// slot has no shared key, the newest shared past key encrypts if it is at most `max_stale`
    /// periods old, otherwise the local key of the current slot does.
    pub fn build(
        schedule: &Schedule,
        now: Duration,
        shared: &BTreeMap<Slot, SlotKey>,
        local: &mut LocalKeys,
        max_stale: u64,
    ) -> Result<Ring, RandomError> {
        let window = schedule.window_at(now);
        let e = window.current;
        local.prune(&window, shared);

        let stale = shared
            .range(window.first..e)
            .next_back()
            .map(|(slot, _)| *slot)
            .filter(|n| e.0 - n.0 <= max_stale);
        let (first, encrypting) = if shared.contains_key(&e) {
            (e, Encrypting::Current)
        } else if let Some(n) = stale {
            (n, Encrypting::Stale { behind: e.0 - n.0 })
        } else {
            (e, Encrypting::LocalFallback)
        };

        let order = core::iter::once(first).chain(window.encrypt_first().filter(|s| *s != first));
        let mut entries = Vec::with_capacity(schedule.window_len());
        for slot in order {
            let (key, origin) = match shared.get(&slot) {
                Some(k) => (k.clone(), Origin::Shared),
                None => (local.get_or_make(slot)?.clone(), Origin::Local),
            };
            // Every slot of the window has a role.
            let role = schedule.role(e, slot).unwrap_or(Role::Encrypt);
            entries.push(RingEntry { role, origin, key });
        }
        let ahead = shared
            .range(window.last.plus(1)..)
            .map(|(_, k)| k.clone())
            .collect();
        Ok(Ring {
            schedule: *schedule,
            window,
            encrypting,
            entries,
            ahead,
        })
    }

    /// Drops every shared key outside the window of `now` from `shared` (zeroizing them) and
    /// returns how many were dropped.
    pub fn retain_window(
        schedule: &Schedule,
        now: Duration,
        shared: &mut BTreeMap<Slot, SlotKey>,
    ) -> usize {
        let window = schedule.window_at(now);
        let before = shared.len();
        shared.retain(|slot, _| window.contains(*slot));
        before - shared.len()
    }

    /// The schedule the ring follows.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The window the ring covers.
    pub fn window(&self) -> Window {
        self.window
    }

    /// The current slot.
    pub fn current(&self) -> Slot {
        self.window.current
    }

    /// Which key encrypts, and why.
    pub fn encrypting(&self) -> Encrypting {
        self.encrypting
    }

    /// The encrypting entry.
    pub fn encrypting_entry(&self) -> &RingEntry {
        // A window always holds its current slot, so a ring is never empty.
        &self.entries[0]
    }

    /// All entries in nginx order: the encrypting key first, then the next key, then past keys
    /// newest first.
    pub fn entries(&self) -> &[RingEntry] {
        &self.entries
    }

    /// The shared keys this host already holds for slots after the window, oldest first: the
    /// slot after next from the moment its key arrives (generators publish it shortly before
    /// the next slot begins), and more only after the clock was stepped back.
    ///
    /// They are in no entry and no format a TLS server installs: the window is what the
    /// schedule lets a server hold (docs/DESIGN.md §1), and a key handed over earlier would sit
    /// in its files and memory a period longer than the design's figures say. They exist for
    /// clients that fetch a key by its slot around the boundary and cache the answer, a miss
    /// included (Cloudflare's client asks for the new next key within 100 ms after each
    /// boundary, possibly before this host rotated).
    pub fn ahead(&self) -> &[SlotKey] {
        &self.ahead
    }

    /// The entry of `slot`, if it is in the window.
    pub fn get(&self, slot: Slot) -> Option<&RingEntry> {
        self.entries.iter().find(|e| e.slot() == slot)
    }

    /// The shared key of `slot`, if the host holds it.
    pub fn shared(&self, slot: Slot) -> Option<&SlotKey> {
        self.get(slot)
            .filter(|e| e.origin == Origin::Shared)
            .map(|e| &e.key)
    }

    /// The three keys HAProxy holds, in its file order: a previous key (decrypt-only), the
    /// encrypting key, the next key (decrypt-only). HAProxy encrypts with the penultimate line.
    pub fn haproxy_triple(&self) -> [&RingEntry; 3] {
        let enc = self.encrypting_entry();
        let next = self
            .get(self.window.last)
            .filter(|n| n.slot() != enc.slot());
        let next = next.unwrap_or(enc);
        let previous = self
            .entries
            .iter()
            .filter(|x| x.slot() < enc.slot())
            .max_by_key(|x| x.slot())
            .or_else(|| {
                self.entries
                    .iter()
                    .find(|x| x.slot() != enc.slot() && x.slot() != next.slot())
            })
            .unwrap_or(enc);
        [previous, enc, next]
    }

    /// Whether `other` holds the same keys in the same order with the same roles: if so, no
    /// server needs to install anything (the keys held ahead aside: [`Ring::same_ahead`]).
    pub fn same_as(&self, other: &Ring) -> bool {
        self.encrypting == other.encrypting
            && self.entries.len() == other.entries.len()
            && self.entries.iter().zip(&other.entries).all(|(a, b)| {
                a.role == b.role && a.origin == b.origin && a.key.name() == b.key.name()
            })
    }

    /// Whether `other` holds the same keys ahead of its window ([`Ring::ahead`]).
    pub fn same_ahead(&self, other: &Ring) -> bool {
        self.ahead.len() == other.ahead.len()
            && self
                .ahead
                .iter()
                .zip(&other.ahead)
                .all(|(a, b)| a.slot() == b.slot() && a.name() == b.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn sched() -> Schedule {
        Schedule::new(secs(4), secs(12)).unwrap()
    }

    fn shared_for(slots: impl IntoIterator<Item = u64>) -> BTreeMap<Slot, SlotKey> {
        slots
            .into_iter()
            .map(|s| (Slot(s), SlotKey::generate(Slot(s)).unwrap()))
            .collect()
    }

    #[test]
    fn full_ring_in_nginx_order() {
        let s = sched();
        let shared = shared_for(97..=101);
        let mut local = LocalKeys::new();
        let r = Ring::build(&s, secs(400), &shared, &mut local, 1).unwrap();
        let slots: Vec<u64> = r.entries().iter().map(|e| e.slot().0).collect();
        assert_eq!(slots, vec![100, 101, 99, 98, 97]);
        assert_eq!(r.encrypting(), Encrypting::Current);
        assert!(local.is_empty());
        assert!(r.entries().iter().all(|e| e.origin == Origin::Shared));
        let h: Vec<u64> = r.haproxy_triple().iter().map(|e| e.slot().0).collect();
        assert_eq!(h, vec![99, 100, 101]);
    }

    #[test]
    fn missing_slots_get_stable_local_keys() {
        let s = sched();
        let shared = shared_for([100, 101]);
        let mut local = LocalKeys::new();
        let a = Ring::build(&s, secs(400), &shared, &mut local, 1).unwrap();
        assert_eq!(a.entries().len(), 5);
        assert_eq!(local.len(), 3);
        let b = Ring::build(&s, secs(401), &shared, &mut local, 1).unwrap();
        assert!(a.same_as(&b));
        assert!(a.shared(Slot(99)).is_none());
        assert!(a.shared(Slot(100)).is_some());
        // The next slot: 97 leaves, its local key is erased.
        let shared = shared_for([100, 101, 102]);
        let c = Ring::build(&s, secs(404), &shared, &mut local, 1).unwrap();
        assert!(!a.same_as(&c));
        assert_eq!(local.len(), 2);
    }

    /// A local stand-in lives only until its slot's shared key arrives: then it is dropped
    /// (zeroized) at the next build, within the same slot, and never comes back.
    #[test]
    fn a_stand_in_goes_when_its_shared_key_arrives() {
        let s = sched();
        let mut shared = shared_for([100]);
        let mut local = LocalKeys::new();
        let a = Ring::build(&s, secs(400), &shared, &mut local, 1).unwrap();
        assert_eq!(local.len(), 4, "stand-ins for 101, 99, 98, 97");
        let stand_in = a.entries()[1].key.name();
        assert_eq!(a.entries()[1].slot(), Slot(101));
        shared.insert(Slot(101), SlotKey::generate(Slot(101)).unwrap());
        let b = Ring::build(&s, secs(401), &shared, &mut local, 1).unwrap();
        assert_eq!(local.len(), 3, "the stand-in of 101 was dropped");
        assert_eq!(b.entries()[1].origin, Origin::Shared);
        assert_eq!(b.entries()[1].key.name(), shared[&Slot(101)].name());
        assert!(b.entries().iter().all(|e| e.key.name() != stand_in));
    }

    /// A stale key that is the oldest of the window (R = 1): HAProxy's previous slot, which
    /// no older key can fill, gets the current slot's stand-in, never the encrypting key twice.
    #[test]
    fn haproxy_triple_when_the_oldest_key_encrypts() {
        let s = Schedule::new(secs(4), secs(4)).unwrap();
        let shared = shared_for([99]);
        let mut local = LocalKeys::new();
        let r = Ring::build(&s, secs(400), &shared, &mut local, 1).unwrap();
        assert!(!local.is_empty() && local.len() == 2);
        assert_eq!(r.encrypting(), Encrypting::Stale { behind: 1 });
        let h: Vec<u64> = r.haproxy_triple().iter().map(|e| e.slot().0).collect();
        assert_eq!(h, vec![100, 99, 101]);
    }

    /// Rings are the same only if every key is: the same roles and origins with other local
    /// keys (another host's stand-ins) are another ring.
    #[test]
    fn rings_with_other_keys_are_not_the_same() {
        let s = sched();
        let shared = shared_for([100]);
        let a = Ring::build(&s, secs(400), &shared, &mut LocalKeys::new(), 1).unwrap();
        let b = Ring::build(&s, secs(400), &shared, &mut LocalKeys::new(), 1).unwrap();
        assert!(a.same_as(&a.clone()));
        assert!(!a.same_as(&b), "other stand-ins, same roles and origins");
    }

    #[test]
    fn stale_then_fallback() {
        let s = sched();
        let shared = shared_for([99]);
        let mut local = LocalKeys::new();
        let r = Ring::build(&s, secs(400), &shared, &mut local, 1).unwrap();
        assert_eq!(r.encrypting(), Encrypting::Stale { behind: 1 });
        assert_eq!(r.encrypting_entry().slot(), Slot(99));
        assert_eq!(r.encrypting_entry().role, Role::Past { age: 1 });
        let h: Vec<u64> = r.haproxy_triple().iter().map(|e| e.slot().0).collect();
        assert_eq!(h, vec![98, 99, 101]);
        let r = Ring::build(&s, secs(404), &shared, &mut local, 1).unwrap();
        assert_eq!(r.encrypting(), Encrypting::LocalFallback);
        assert_eq!(r.encrypting_entry().slot(), Slot(101));
        assert_eq!(r.encrypting_entry().origin, Origin::Local);
        assert_eq!(r.entries().len(), 5);
    }

    #[test]
    fn keys_after_the_window_are_held_apart() {
        let s = sched();
        // Window of 400: 97..=101. 102 is the slot after next; 104 only after a clock step.
        let shared = shared_for([99, 100, 101, 102, 104]);
        let mut local = LocalKeys::new();
        let r = Ring::build(&s, secs(400), &shared, &mut local, 1).unwrap();
        let ahead: Vec<u64> = r.ahead().iter().map(|k| k.slot().0).collect();
        assert_eq!(ahead, [102, 104]);
        assert!(r.entries().iter().all(|e| e.slot() <= Slot(101)));
        assert!(r.get(Slot(102)).is_none() && r.shared(Slot(102)).is_none());
        // The same installed keys without the key ahead: same_as, not same_ahead.
        let without = shared_for([]);
        let mut fewer = shared.clone();
        fewer.remove(&Slot(102));
        fewer.remove(&Slot(104));
        let q = Ring::build(&s, secs(400), &fewer, &mut local, 1).unwrap();
        assert!(r.same_as(&q) && q.same_as(&r));
        assert!(!r.same_ahead(&q));
        assert!(r.same_ahead(&r.clone()));
        // Another key for the same slot ahead is a change too.
        let mut other = shared.clone();
        other.insert(Slot(102), SlotKey::generate(Slot(102)).unwrap());
        let o = Ring::build(&s, secs(400), &other, &mut local, 1).unwrap();
        assert!(r.same_as(&o) && !r.same_ahead(&o));
        // At the boundary the slot after next becomes the next key: an entry, no longer ahead.
        let n = Ring::build(&s, secs(404), &shared, &mut local, 1).unwrap();
        assert_eq!(
            n.shared(Slot(102)).unwrap().name(),
            shared[&Slot(102)].name()
        );
        let ahead: Vec<u64> = n.ahead().iter().map(|k| k.slot().0).collect();
        assert_eq!(ahead, [104]);
        assert!(Ring::build(&s, secs(400), &without, &mut local, 1)
            .unwrap()
            .ahead()
            .is_empty());
    }

    #[test]
    fn retain_window_drops_old_keys() {
        let s = sched();
        let mut shared = shared_for(90..=101);
        assert_eq!(Ring::retain_window(&s, secs(400), &mut shared), 7);
        assert_eq!(shared.keys().next(), Some(&Slot(97)));
    }
}
