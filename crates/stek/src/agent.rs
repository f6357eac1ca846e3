//! The agent: reads its group's records, checks and opens them, keeps the shared keys of its
//! window, and builds the ring its sinks deliver.

use std::collections::BTreeMap;
use std::time::Duration;

use sha2::{Digest, Sha256};
use stek_core::{
    KeyBytes, LocalKeys, RandomError, Record, RecordError, Ring, Schedule, Slot, SlotKey, Window,
};
use tracing::{info, warn};

use crate::store::{Store, StoreError};

/// How an agent turns a record into a key.
pub trait Opener: Send + Sync {
    /// Opens `record` (already decoded) filed under `slot`: checks it against the agent's group
    /// and schedule and returns the key, or the reason it is rejected.
    fn open(
        &self,
        record: &Record,
        schedule: &Schedule,
        group: &str,
        slot: Slot,
    ) -> Result<SlotKey, RecordError>;
}

impl<O: Opener + ?Sized> Opener for std::sync::Arc<O> {
    fn open(
        &self,
        record: &Record,
        schedule: &Schedule,
        group: &str,
        slot: Slot,
    ) -> Result<SlotKey, RecordError> {
        (**self).open(record, schedule, group, slot)
    }
}

/// Opens plain records: only for the embedded store of `stek up`, where generator and agent
/// share one process and nothing crosses a trust boundary.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainOpener;

impl Opener for PlainOpener {
    fn open(
        &self,
        record: &Record,
        schedule: &Schedule,
        group: &str,
        slot: Slot,
    ) -> Result<SlotKey, RecordError> {
        record.open_plain(schedule, group, slot)
    }
}

/// Opens sealed, signed records from a shared store: the agent's group identity opens them,
/// and only generators in `trusted` may have signed them.
#[derive(Debug)]
pub struct SealedOpener {
    /// This host's group identity.
    pub identity: stek_core::GroupIdentity,
    /// The generators whose records are accepted.
    pub trusted: Vec<stek_core::GeneratorPublicKey>,
}

impl Opener for SealedOpener {
    fn open(
        &self,
        record: &Record,
        schedule: &Schedule,
        group: &str,
        slot: Slot,
    ) -> Result<SlotKey, RecordError> {
        record.open_sealed(schedule, group, slot, &self.identity, &self.trusted)
    }
}

/// Counters an agent keeps (exported as metrics and in status).
#[derive(Debug, Default, Clone)]
pub struct AgentStats {
    /// Records rejected, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// When the last successful read of the store happened.
    pub last_sync: Option<Duration>,
    /// How many rings were delivered.
    pub rotations: u64,
}

/// One host's agent for one group.
pub struct Agent<S, O> {
    store: std::sync::Arc<S>,
    opener: O,
    group: String,
    schedule: Schedule,
    max_stale: u64,
    shared: BTreeMap<Slot, SlotKey>,
    local: LocalKeys,
    ring: Option<Ring>,
    stats: AgentStats,
    /// The digest of the last rejected record of each slot in the window.
    rejected_seen: BTreeMap<Slot, [u8; 32]>,
}

impl<S, O> std::fmt::Debug for Agent<S, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("group", &self.group)
            .field("schedule", &self.schedule)
            .field("slots", &self.shared.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<S: Store, O: Opener> Agent<S, O> {
    /// An agent for `group` reading `store`, opening records with `opener`.
    pub fn new(
        store: std::sync::Arc<S>,
        opener: O,
        group: String,
        schedule: Schedule,
        max_stale: u64,
    ) -> Self {
        Agent {
            store,
            opener,
            group,
            schedule,
            max_stale,
            shared: BTreeMap::new(),
            local: LocalKeys::new(),
            ring: None,
            stats: AgentStats::default(),
            rejected_seen: BTreeMap::new(),
        }
    }

    /// Reads the window of `now` from the store and takes every new, valid key. Rejected
    /// records are logged and counted, never installed.
    pub async fn sync(&mut self, now: Duration) -> Result<usize, StoreError> {
        let w = self.fetch_window(now);
        let records = self.store.read_window(&self.group, w.first, w.last).await?;
        self.stats.last_sync = Some(now);
        let mut added = 0;
        for (slot, bytes) in records {
            if self.shared.contains_key(&slot) {
                // Each slot has exactly one record; a key once accepted is kept. (A different
                // record under the same slot can only come from a store that broke its
                // contract; issue #3's signed records make that detectable.)
                continue;
            }
            // A rejected record is read again at every poll: count and log each one once.
            let digest: [u8; 32] = Sha256::digest(bytes.as_slice()).into();
            if self.rejected_seen.get(&slot) == Some(&digest) {
                continue;
            }
            match self.accept(slot, &bytes, &w) {
                Ok(key) => {
                    self.rejected_seen.remove(&slot);
                    self.shared.insert(slot, key);
                    added += 1;
                }
                Err(e) => {
                    self.rejected_seen.insert(slot, digest);
                    *self.stats.rejected.entry(e.reason()).or_default() += 1;
                    warn!(
                        reason = e.reason(),
                        "group {}: rejected the record of slot {slot}: {e}", self.group
                    );
                }
            }
        }
        Ok(added)
    }

    /// The slots an agent reads: its window plus the slot after `next`. Generators publish that
    /// one shortly before the boundary (see `service::publish_margin`); fetching it on their
    /// notification means the rotation itself needs no store read. It is held, never installed,
    /// until it enters the window.
    fn fetch_window(&self, now: Duration) -> Window {
        let mut w = self.schedule.window_at(now);
        w.last = w.last.plus(1);
        w
    }

    fn accept(
        &self,
        slot: Slot,
        bytes: &KeyBytes,
        window: &Window,
    ) -> Result<SlotKey, RecordError> {
        // The store is untrusted: it may answer with slots we did not ask for.
        if !window.contains(slot) {
            return Err(RecordError::Mismatch("slot"));
        }
        let record = Record::decode(bytes)?;
        self.opener.open(&record, &self.schedule, &self.group, slot)
    }

    /// Drops keys that left the window of `now` and rebuilds the ring. Returns the new ring if it
    /// differs from the last one delivered.
    pub fn rebuild(&mut self, now: Duration) -> Result<Option<&Ring>, RandomError> {
        let keep = self.fetch_window(now);
        let before = self.shared.len();
        self.shared.retain(|slot, _| keep.contains(*slot));
        let dropped = before - self.shared.len();
        self.rejected_seen.retain(|slot, _| keep.contains(*slot));
        if dropped > 0 {
            info!(
                "group {}: erased {dropped} key(s) that left the window",
                self.group
            );
        }
        let ring = Ring::build(
            &self.schedule,
            now,
            &self.shared,
            &mut self.local,
            self.max_stale,
        )?;
        let changed = self.ring.as_ref().is_none_or(|old| !old.same_as(&ring));
        if !changed {
            return Ok(None);
        }
        self.stats.rotations += 1;
        self.ring = Some(ring);
        Ok(self.ring.as_ref())
    }

    /// The agent's schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The agent's group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The ring last built.
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    /// The agent's counters.
    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::manual::ManualClock;
    use crate::clock::Clock;
    use crate::generator::publish_upcoming;
    use crate::store::MemoryStore;
    use std::sync::Arc;
    use stek_core::{Encrypting, Origin};

    /// A whole day of 1-minute slots with injected time: the agent always holds the shared
    /// current and next keys, its ring is always full, and nothing older than the window stays.
    #[tokio::test]
    async fn a_day_of_rotation_in_milliseconds() {
        let clock = ManualClock::at(1_800_000_000);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let s = Schedule::new(Duration::from_secs(60), Duration::from_secs(600)).unwrap();
        let seal = |k: &SlotKey| Ok(Record::plain(&s, "g", k).encode());
        let mut agent = Agent::new(store.clone(), PlainOpener, "g".into(), s, 1);
        let mut names = std::collections::HashSet::new();
        for _ in 0..(24 * 60) {
            let now = clock.now();
            publish_upcoming(&*store, &s, "g", now, seal).await.unwrap();
            agent.sync(now).await.unwrap();
            let ring = agent
                .rebuild(now)
                .unwrap()
                .expect("every slot changes the ring")
                .clone();
            assert_eq!(ring.encrypting(), Encrypting::Current);
            assert_eq!(ring.entries().len(), s.window_len());
            assert_eq!(ring.entries()[1].origin, Origin::Shared, "next key present");
            assert!(
                names.insert(ring.encrypting_entry().key.name()),
                "a fresh key every slot"
            );
            assert!(agent.shared.len() <= s.window_len());
            assert!(
                agent.rebuild(now).unwrap().is_none(),
                "no change within a slot"
            );
            clock.advance(Duration::from_secs(60));
        }
    }

    #[tokio::test]
    async fn rejects_records_of_other_groups_and_slots() {
        let clock = ManualClock::at(400);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let now = clock.now();
        let k = SlotKey::generate(Slot(100)).unwrap();
        let put = |slot: u64, bytes: Vec<u8>| {
            let store = store.clone();
            async move {
                store
                    .create("g", Slot(slot), &bytes, Duration::from_secs(999))
                    .await
                    .unwrap()
            }
        };
        // Filed under our group but made for another; and a replay into the wrong slot.
        put(100, Record::plain(&s, "h", &k).encode().to_vec()).await;
        put(101, Record::plain(&s, "g", &k).encode().to_vec()).await;
        put(99, b"garbage".to_vec()).await;
        let mut agent = Agent::new(store, PlainOpener, "g".into(), s, 1);
        assert_eq!(agent.sync(now).await.unwrap(), 0);
        assert_eq!(agent.stats().rejected.get("header_mismatch"), Some(&2));
        assert_eq!(agent.stats().rejected.get("bad_magic"), Some(&1));
        // Read again, the same records are not counted again.
        assert_eq!(agent.sync(now).await.unwrap(), 0);
        assert_eq!(agent.stats().rejected.get("header_mismatch"), Some(&2));
        assert_eq!(agent.stats().rejected.get("bad_magic"), Some(&1));
        let ring = agent.rebuild(now).unwrap().unwrap();
        assert_eq!(ring.encrypting(), Encrypting::LocalFallback);
        assert!(ring.entries().iter().all(|e| e.origin == Origin::Local));
    }
}
