//! The rotator: the half of the agent driven by the clock alone. It holds the group's keys that
//! the syncer verified, builds the ring of the current slot, and erases keys that left the
//! window, at the slot boundary whatever the store is doing (docs/DESIGN.md §5: rotation and erasure
//! are the security promise). Everything here takes `now`; the loop in [`super::run`] reads
//! the clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use stek_core::{Encrypting, LocalKeys, RandomError, Ring, Schedule, Slot, SlotKey};
use tracing::{debug, info, warn};

use super::syncer::{fetch_window, SyncReport};
use crate::status::Status;

/// What the rotator knows about the store, from the syncer's reports.
#[derive(Debug, Default, Clone)]
pub struct SyncState {
    /// Whether the last read failed.
    pub down: bool,
    /// When the last successful read started.
    pub last_sync: Option<Duration>,
    /// Records rejected so far, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Held slots whose record later changed to another valid key, so far.
    pub slot_conflicts: u64,
    /// The last measured offset of this host's clock to the store's, in seconds.
    pub clock_offset: Option<f64>,
    /// Why the store holds nothing for this agent's slots, when the syncer could tell.
    pub diagnosis: Option<String>,
}

/// What a [`Rotator::rotate`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The keys TLS servers install: a new slot, a key that arrived for a slot of the window, a
    /// fallback. Every sink gets the ring.
    Ring,
    /// Only the keys held ahead of the window ([`Ring::ahead`]): the key of the slot after next
    /// arrived. Only the sinks that serve such keys get the ring
    /// ([`crate::sink::Sink::serves_ahead`]); for the others nothing changed (no file to
    /// rewrite, no server to reload).
    Ahead,
}

/// One group's keys, ring and store state on one host.
#[derive(Debug)]
pub struct Rotator {
    group: String,
    schedule: Schedule,
    max_stale: u64,
    shared: BTreeMap<Slot, SlotKey>,
    local: LocalKeys,
    ring: Option<Ring>,
    sync: SyncState,
}

impl Rotator {
    /// A rotator for `group` that lets an old shared key encrypt for at most `max_stale` periods
    /// when the current one is missing.
    pub fn new(group: String, schedule: Schedule, max_stale: u64) -> Self {
        Rotator {
            group,
            schedule,
            max_stale,
            shared: BTreeMap::new(),
            local: LocalKeys::new(),
            ring: None,
            sync: SyncState::default(),
        }
    }

    /// Takes one report of the syncer at `now`: new keys of the slots the agent reads (a key
    /// once held is kept), the store's state, rejections and the clock offset. Returns whether
    /// the read failed. The ring changes at the next [`Rotator::rotate`].
    pub fn take(&mut self, report: SyncReport, now: Duration) -> bool {
        if let Some(off) = report.clock_offset {
            self.sync.clock_offset = Some(off);
        }
        match report.result {
            Ok(synced) => {
                self.sync.diagnosis = report.diagnosis;
                if self.sync.down {
                    info!("group {}: the store is reachable again", self.group);
                    self.sync.down = false;
                }
                self.sync.last_sync = Some(report.at);
                for reason in synced.rejected {
                    *self.sync.rejected.entry(reason).or_default() += 1;
                }
                self.sync.slot_conflicts += synced.conflicts.len() as u64;
                let reads = fetch_window(&self.schedule, now);
                for key in synced.keys {
                    // A report made before a step of the clock may hold slots that are no longer
                    // wanted: only what the agent reads now is taken.
                    if reads.contains(key.slot()) {
                        self.shared.entry(key.slot()).or_insert(key);
                    }
                }
                false
            }
            Err(e) => {
                if !self.sync.down {
                    warn!(
                        "group {}: store unreachable, serving the keys we have: {}",
                        self.group,
                        crate::error::Chain(&e)
                    );
                    self.sync.down = true;
                }
                true
            }
        }
    }

    /// Erases the keys that left the window of `now` and rebuilds the ring. Returns the new ring
    /// and what changed, if it differs from the last one.
    ///
    /// The keys held for slots after the window (the slot after next, fetched early so that the
    /// rotation needs no store read) go into the ring apart from its entries, as
    /// [`Ring::ahead`]: a change of those alone is a [`Change::Ahead`].
    pub fn rotate(&mut self, now: Duration) -> Result<Option<(Change, &Ring)>, RandomError> {
        let first = self.schedule.window_at(now).first;
        // Keys of slots before the window go now (dropping a key zeroizes it). Keys after it stay:
        // the slot after next, fetched early, is needed at the next boundary (and after a step
        // of the clock back, the slots it had reached are needed again soon).
        let keep = self.shared.split_off(&first);
        let gone = std::mem::replace(&mut self.shared, keep);
        if !gone.is_empty() {
            let names: Vec<String> = gone
                .values()
                .map(|k| format!("{} (slot {})", k.name(), k.slot()))
                .collect();
            info!(
                "group {}: erased {} key(s) that left the window: {}",
                self.group,
                gone.len(),
                names.join(", ")
            );
        }
        drop(gone);
        let ring = Ring::build(
            &self.schedule,
            now,
            &self.shared,
            &mut self.local,
            self.max_stale,
        )?;
        let change = match &self.ring {
            Some(old) if old.same_as(&ring) && old.same_ahead(&ring) => return Ok(None),
            Some(old) if old.same_as(&ring) => Change::Ahead,
            _ => Change::Ring,
        };
        let ring: &Ring = self.ring.insert(ring);
        Ok(Some((change, ring)))
    }

    /// The slots whose shared key is held (the syncer does not read them again).
    pub fn held(&self) -> BTreeSet<Slot> {
        self.shared.keys().copied().collect()
    }

    /// The ring last built.
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    /// What the syncer's reports said so far.
    pub fn sync_state(&self) -> &SyncState {
        &self.sync
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The status at `now` (without the sinks' part), once there is a ring.
    pub fn status(&self, now: Duration) -> Option<Status> {
        let ring = self.ring.as_ref()?;
        let mut st = Status::of(ring, &self.group, now);
        st.last_sync = self.sync.last_sync.map(|t| t.as_secs_f64());
        st.staleness = self
            .sync
            .last_sync
            .map(|t| now.saturating_sub(t).as_secs_f64());
        st.clock_offset = self.sync.clock_offset;
        st.slot_conflicts = self.sync.slot_conflicts;
        st.store_diagnosis = self.sync.diagnosis.clone();
        st.rejected = self
            .sync
            .rejected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        Some(st)
    }
}

/// Logs a newly delivered ring in plain words: which key encrypts and why. `verb` says whether
/// the slot changed ("rotated to") or only the ring ("updated the ring of"); `scope` says where
/// a local fallback key is valid ("this host", "this process").
pub(crate) fn log_ring(group: &str, ring: &Ring, verb: &str, scope: &str) {
    let enc = ring.encrypting_entry().key.name();
    match ring.encrypting() {
        Encrypting::Current => info!(
            "group {group}: {verb} slot {}: key {enc} encrypts, {} keys decrypt",
            ring.current(),
            ring.entries().len()
        ),
        Encrypting::Stale { behind } => warn!(
            "group {group}: {verb} slot {}: the slot has no key yet: key {enc} of {behind} period(s) ago keeps encrypting",
            ring.current()
        ),
        Encrypting::LocalFallback => warn!(
            "group {group}: {verb} slot {}: FALLBACK: no shared key recent enough (--max-stale) for the slot: local random key {enc} encrypts; resumption works on {scope} only until a shared key arrives (the store unreachable, no generator publishing, or this agent's --period, --lifetime or --group not the generator's: `stek status` shows the store's state and rejected records); a line says when it ends",
            ring.current()
        ),
    }
}

/// Logs the keys now held ahead of the ring's window, by name; `served` says whether a sink
/// hands them out by slot (the memcached table) or they only wait for their slot.
pub(crate) fn log_ahead(group: &str, ring: &Ring, served: bool) {
    let names: Vec<String> = ring
        .ahead()
        .iter()
        .map(|k| {
            let start = ring.schedule().start(k.slot()).as_secs();
            format!("key {} of slot {} (ticket-key/{start})", k.name(), k.slot())
        })
        .collect();
    let names = names.join(", ");
    if served && !names.is_empty() {
        info!("group {group}: serving {names} before its slot comes; TLS servers get it once its slot is next");
    } else {
        debug!(
            "group {group}: keys held ahead of slot {}: [{names}]",
            ring.current()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::agent::{PlainOpener, SyncError, Synced, Syncer};
    use crate::clock::manual::ManualClock;
    use crate::clock::Clock;
    use crate::generator::publish_upcoming;
    use crate::store::MemoryStore;
    use stek_core::{Origin, Record};

    fn report(at: Duration, keys: Vec<SlotKey>) -> SyncReport {
        SyncReport {
            at,
            result: Ok(Synced {
                keys,
                ..Synced::default()
            }),
            clock_offset: None,
            diagnosis: None,
        }
    }

    /// A rotator of group `g` (P = 4 s, L = 8 s) that took the shared keys of slots 98 to 101
    /// at t = 400 s (slot 100), and their names.
    fn holding_98_to_101() -> (Rotator, Vec<stek_core::KeyName>) {
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(8)).unwrap();
        let mut rotator = Rotator::new("g".into(), s, 1);
        let keys: Vec<SlotKey> = (98..=101)
            .map(|e| SlotKey::generate(Slot(e)).unwrap())
            .collect();
        let names = keys.iter().map(SlotKey::name).collect();
        let t = Duration::from_secs(400);
        rotator.take(report(t, keys), t);
        (rotator, names)
    }

    /// A key once held for a slot stays: a later report with another key for that slot (the
    /// store replaced the record) changes nothing, since the held key may already encrypt.
    #[test]
    fn a_held_key_is_never_replaced_by_a_later_report() {
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(8)).unwrap();
        let mut rotator = Rotator::new("g".into(), s, 1);
        let now = Duration::from_secs(400);
        let first = SlotKey::generate(Slot(100)).unwrap();
        let name = first.name();
        rotator.take(report(now, vec![first]), now);
        rotator.rotate(now).unwrap();
        rotator.take(
            report(now, vec![SlotKey::generate(Slot(100)).unwrap()]),
            now,
        );
        assert!(
            rotator.rotate(now).unwrap().is_none(),
            "the ring did not change"
        );
        assert_eq!(rotator.ring().unwrap().encrypting_entry().key.name(), name);
    }

    /// A whole day of 1-minute slots with injected time: the agent always holds the shared
    /// current and next keys, its ring is always full, and nothing older than the window stays.
    #[tokio::test]
    async fn a_day_of_rotation_in_milliseconds() {
        let clock = ManualClock::at(1_800_000_000);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let s = Schedule::new(Duration::from_secs(60), Duration::from_secs(600)).unwrap();
        let seal = |k: &SlotKey| Ok(Record::plain(&s, "g", k).encode());
        let mut syncer = Syncer::new(store.clone(), PlainOpener, "g".into(), s);
        let mut rotator = Rotator::new("g".into(), s, 1);
        let mut names = std::collections::HashSet::new();
        for _ in 0..(24 * 60) {
            let now = clock.now();
            publish_upcoming(&*store, &s, "g", now, seal).await.unwrap();
            let synced = syncer.sync(now, &rotator.held()).await.unwrap();
            assert!(!rotator.take(report(now, synced.keys), now));
            let (change, ring) = rotator
                .rotate(now)
                .unwrap()
                .expect("every slot changes the ring");
            assert_eq!(change, Change::Ring);
            let ring = ring.clone();
            assert_eq!(ring.encrypting(), Encrypting::Current);
            assert_eq!(ring.entries().len(), s.window_len());
            assert_eq!(ring.entries()[1].origin, Origin::Shared, "next key present");
            assert!(
                names.insert(ring.encrypting_entry().key.name()),
                "a fresh key every slot"
            );
            let held = rotator.held();
            assert!(held.len() <= s.window_len());
            assert!(*held.first().unwrap() >= s.window_at(now).first, "erased");
            assert!(
                rotator.rotate(now).unwrap().is_none(),
                "no change within a slot"
            );
            clock.advance(Duration::from_secs(60));
        }
    }

    /// A whole day of the default schedule (P = 1 h, L = 18 h) with the generator's timing
    /// (each key published `publish_margin` before the boundary of the slot before its own): the
    /// key of the slot after next is served at `ticket-key/<its start>` from the moment it is
    /// held, before its predecessor's slot begins, with the bytes served once it is the next
    /// key. It is never installed early: that change alone is a `Change::Ahead` (which reaches
    /// only the sinks that serve keys ahead), and the ring's entries stay the window.
    #[tokio::test]
    async fn the_slot_after_next_is_served_as_soon_as_it_is_held() {
        use crate::memcached::KeyTable;
        use stek_core::Format;

        let clock = ManualClock::at(1_800_000_000);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let s = Schedule::default();
        // The generator's lead for one group of this schedule: P/8 capped at 2 s.
        let margin = Duration::from_secs(2);
        let seal = |k: &SlotKey| Ok(Record::plain(&s, "g", k).encode());
        let mut syncer = Syncer::new(store.clone(), PlainOpener, "g".into(), s);
        let mut rotator = Rotator::new("g".into(), s, 1);
        let served = |ring: &Ring, slot: Slot| {
            let key = format!("ticket-key/{}", s.start(slot).as_secs());
            KeyTable::from_ring(ring)
                .get(key.as_bytes())
                .map(|item| item.value().to_vec())
        };
        let mut early: Option<(Slot, Vec<u8>)> = None;
        for _ in 0..24 {
            // The boundary: the generator's round a margin earlier made the new next key.
            let now = clock.now();
            let e = s.slot_at(now);
            publish_upcoming(&*store, &s, "g", now, seal).await.unwrap();
            let synced = syncer.sync(now, &rotator.held()).await.unwrap();
            rotator.take(report(now, synced.keys), now);
            let (change, ring) = rotator.rotate(now).unwrap().expect("a new slot");
            assert_eq!(change, Change::Ring);
            assert_eq!(ring.current(), e);
            assert_eq!(ring.window().last, e.plus(1));
            if let Some((slot, bytes)) = early.take() {
                // What was served early is what is served now that it is the next key.
                assert_eq!(slot, e.plus(1));
                // (assert!, not assert_eq!: a failure must not print key bytes)
                assert!(
                    served(ring, slot).as_deref() == Some(&bytes[..]),
                    "slot {slot}: other bytes served once it is the next key"
                );
                assert!(
                    Format::Memcached48.encode(ring.shared(slot).unwrap())[..] == bytes[..],
                    "slot {slot}: the early value is not the key's memcached-48 encoding"
                );
            }

            // The generator's round for the coming boundary, `margin` before it.
            clock.advance(s.period() - margin);
            let now = clock.now();
            publish_upcoming(&*store, &s, "g", now + margin, seal)
                .await
                .unwrap();
            let after_next = e.plus(2);
            let ring = rotator.ring().unwrap().clone();
            assert_eq!(served(&ring, after_next), None, "not held yet");
            let synced = syncer.sync(now, &rotator.held()).await.unwrap();
            rotator.take(report(now, synced.keys), now);
            assert!(rotator.held().contains(&after_next));
            let (change, ring) = rotator.rotate(now).unwrap().expect("a key arrived");
            assert_eq!(change, Change::Ahead, "nothing to install");
            assert_eq!(ring.current(), e, "still the same slot");
            assert_eq!(ring.ahead().len(), 1);
            assert_eq!(ring.ahead()[0].slot(), after_next);
            assert!(ring.get(after_next).is_none(), "not installed");
            let bytes = served(ring, after_next).expect("served before its predecessor begins");
            assert_eq!(bytes.len(), 48);
            // Rings for servers on this host stay the window.
            let table = KeyTable::from_ring(ring);
            let nginx = table.get(b"ticket-ring/nginx-80").unwrap().value();
            assert_eq!(nginx.len(), s.window_len() * 80);
            assert!(nginx
                .chunks(80)
                .all(|k| k[..16] != ring.ahead()[0].name().0));
            early = Some((after_next, bytes));
            assert!(rotator.rotate(now).unwrap().is_none(), "once");

            clock.advance(margin);
        }
    }

    /// With no report at all (the store hangs), keys still leave at the very boundary their
    /// slot leaves the window, and the ring moves on: stale, then a local key.
    #[test]
    fn erasure_and_rotation_need_no_store() {
        let (mut rotator, names) = holding_98_to_101();
        let at = |t: u64| Duration::from_secs(t);
        let first = names[0];
        assert_eq!(rotator.held(), [98, 99, 100, 101].map(Slot).into());
        rotator.rotate(at(400)).unwrap();
        // Slot 98 leaves the window [e-2, e+1] when slot 101 begins, at 404, not before; the
        // log says which key went, and only when one did.
        let (_, log) = crate::testlog::capture(|| {
            rotator
                .rotate(at(403) + Duration::from_millis(999))
                .unwrap();
        });
        assert!(rotator.held().contains(&Slot(98)));
        assert!(!log.contains("erased"), "{log}");
        let (encrypting, log) =
            crate::testlog::capture(|| rotator.rotate(at(404)).unwrap().unwrap().1.encrypting());
        assert_eq!(encrypting, Encrypting::Current);
        assert!(
            log.contains(&format!(
                "group g: erased 1 key(s) that left the window: {first} (slot 98)"
            )),
            "{log}"
        );
        assert_eq!(rotator.held(), [99, 100, 101].map(Slot).into());
        let ring = rotator.rotate(at(408)).unwrap().unwrap().1;
        assert_eq!(ring.encrypting(), Encrypting::Stale { behind: 1 });
        let ring = rotator.rotate(at(412)).unwrap().unwrap().1;
        assert_eq!(ring.encrypting(), Encrypting::LocalFallback);
        assert_eq!(rotator.held(), [101].map(Slot).into());
        rotator.rotate(at(416)).unwrap();
        assert!(rotator.held().is_empty(), "every shared key erased");
    }

    #[test]
    fn store_state_rejections_and_offset_come_from_reports() {
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(8)).unwrap();
        let mut rotator = Rotator::new("g".into(), s, 1);
        let now = Duration::from_secs(400);
        assert!(rotator.take(
            SyncReport {
                at: now,
                result: Err(SyncError::Timeout(Duration::from_secs(2))),
                clock_offset: None,
                diagnosis: None,
            },
            now
        ));
        assert!(rotator.sync_state().down);
        rotator.take(
            SyncReport {
                at: now,
                result: Ok(Synced {
                    keys: vec![SlotKey::generate(Slot(100)).unwrap()],
                    rejected: vec!["bad_signature", "bad_signature"],
                    conflicts: vec![Slot(100)],
                    found: 2,
                }),
                clock_offset: Some(-0.25),
                diagnosis: None,
            },
            now,
        );
        rotator.rotate(now).unwrap();
        let st = rotator.status(now + Duration::from_secs(3)).unwrap();
        assert!(!rotator.sync_state().down);
        assert_eq!(st.rejected["bad_signature"], 2);
        assert_eq!(st.slot_conflicts, 1);
        assert_eq!(
            (st.clock_offset, st.last_sync, st.staleness),
            (Some(-0.25), Some(400.0), Some(3.0))
        );
        // A key of a slot the agent no longer reads (a report from before a clock step) is not
        // taken; nor is a second key for a slot already held.
        let late = SlotKey::generate(Slot(90)).unwrap();
        let second = SlotKey::generate(Slot(100)).unwrap();
        let first_name = rotator.ring().unwrap().encrypting_entry().key.name();
        rotator.take(report(now, vec![late, second]), now);
        assert_eq!(rotator.held(), [100].map(Slot).into());
        rotator.rotate(now).unwrap();
        assert_eq!(
            rotator.ring().unwrap().encrypting_entry().key.name(),
            first_name
        );
    }

    /// The group and schedule it was made for: what the agent labels its status, metrics and
    /// sinks with.
    #[test]
    fn it_keeps_its_group_and_schedule() {
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(8)).unwrap();
        let rotator = Rotator::new("web".into(), s, 1);
        assert_eq!(rotator.group(), "web");
        assert_eq!(*rotator.schedule(), s);
        assert_ne!(*rotator.schedule(), Schedule::default());
    }

    /// The line for each ring says which key encrypts and why, in the operator's words: the
    /// current key, a stale one (how many periods old), or the local fallback (loud).
    #[test]
    fn each_ring_is_logged_with_why_its_key_encrypts() {
        let (mut rotator, names) = holding_98_to_101();
        let at = |t: u64| Duration::from_secs(t);
        let (current, next) = (names[2], names[3]);
        let mut logged = |t: u64| {
            let ring = rotator.rotate(at(t)).unwrap().unwrap().1.clone();
            crate::testlog::capture(|| log_ring("g", &ring, "rotated to", "this host")).1
        };
        let log = logged(400);
        assert!(
            log.contains(&format!(
                "INFO group g: rotated to slot 100: key {current} encrypts, 4 keys decrypt"
            )),
            "{log}"
        );
        // Slot 102 has no key: slot 101's keeps encrypting, one period old.
        let log = logged(408);
        assert!(
            log.contains(&format!(
                "WARN group g: rotated to slot 102: the slot has no key yet: key {next} of 1 period(s) ago keeps encrypting"
            )),
            "{log}"
        );
        let log = logged(412);
        assert!(
            log.contains(
                "WARN group g: rotated to slot 103: FALLBACK: no shared key recent enough"
            ) && log.contains("resumption works on this host only"),
            "{log}"
        );
    }

    /// A key held ahead of the window is announced (by name, slot and memcached key) only by
    /// an agent that serves it, and only when there is one.
    #[test]
    fn keys_ahead_are_announced_only_when_served() {
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(8)).unwrap();
        let mut rotator = Rotator::new("g".into(), s, 1);
        let now = Duration::from_secs(400);
        let ahead = SlotKey::generate(Slot(102)).unwrap();
        let name = ahead.name();
        rotator.take(report(now, vec![ahead]), now);
        let ring = rotator.rotate(now).unwrap().unwrap().1.clone();
        assert_eq!(ring.ahead().len(), 1);
        let log = |ring: &Ring, served| crate::testlog::capture(|| log_ahead("g", ring, served)).1;
        let served = log(&ring, true);
        assert!(
            served.contains(&format!(
                "INFO group g: serving key {name} of slot 102 (ticket-key/408) before its slot comes"
            )),
            "{served}"
        );
        let kept = log(&ring, false);
        assert!(!kept.contains("INFO"), "{kept}");
        assert!(
            kept.contains(&format!(
                "DEBUG group g: keys held ahead of slot 100: [key {name}"
            )),
            "{kept}"
        );
        let mut bare = Rotator::new("g".into(), s, 1);
        let ring = bare.rotate(now).unwrap().unwrap().1.clone();
        assert!(ring.ahead().is_empty());
        let none = log(&ring, true);
        assert!(!none.contains("INFO"), "{none}");
        assert!(
            none.contains("DEBUG group g: keys held ahead of slot 100: []"),
            "{none}"
        );
    }
}
