//! The embedded store: records in this process's memory, for `stek up` on one machine.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use stek_core::record::MAX_RECORD_LEN;
use stek_core::{KeyBytes, Slot};
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::{Created, Found, Replaced, Seen, Store, StoreError};
use crate::clock::Clock;

struct Entry {
    record: KeyBytes,
    expires_at: Duration,
}

#[derive(Default)]
struct Group {
    records: BTreeMap<Slot, Entry>,
    changes: Option<watch::Sender<u64>>,
}

impl Group {
    /// Stores `record` for `slot` (a previous entry is dropped, which zeroizes it) and tells the
    /// watchers.
    fn put(&mut self, slot: Slot, record: &[u8], expires_at: Duration) {
        self.records.insert(
            slot,
            Entry {
                record: Zeroizing::new(record.to_vec()),
                expires_at,
            },
        );
        if let Some(tx) = &self.changes {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// An in-process store. Records (which may hold plain secrets here) are zeroized when they
/// expire or the store is dropped. Expiry follows the injected clock.
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    groups: Mutex<HashMap<String, Group>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store whose expiry follows `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            clock,
            groups: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        // A panic while holding the lock cannot leave a map half-updated in a way that matters
        // (every operation is a single insert or retain), so a poisoned lock is still usable.
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `value` whatever its size and whatever the slot holds, as someone writing to a
    /// shared store behind the generators' back would.
    #[cfg(test)]
    pub(crate) fn plant(&self, group: &str, slot: Slot, value: Vec<u8>, expires_at: Duration) {
        self.lock()
            .entry(group.to_owned())
            .or_default()
            .records
            .insert(
                slot,
                Entry {
                    record: Zeroizing::new(value),
                    expires_at,
                },
            );
    }

    /// Deletes the value of a slot behind the generators' back, as an attacker would.
    #[cfg(test)]
    pub(crate) fn remove(&self, group: &str, slot: Slot) {
        if let Some(g) = self.lock().get_mut(group) {
            g.records.remove(&slot);
        }
    }

    fn expire(group: &mut Group, now: Duration) {
        group.records.retain(|_, e| e.expires_at > now);
    }
}

/// A stored value as the contract returns it. Only a test can store a value over the cap here
/// (`create` refuses one), but the embedded store keeps the contract like the shared ones.
fn found(value: &KeyBytes) -> Found {
    if value.len() > MAX_RECORD_LEN {
        Found::Oversize {
            len: Some(value.len() as u64),
        }
    } else {
        Found::Record(value.clone())
    }
}

impl Store for MemoryStore {
    async fn create(
        &self,
        group: &str,
        slot: Slot,
        record: &[u8],
        expires_at: Duration,
    ) -> Result<Created, StoreError> {
        if record.len() > MAX_RECORD_LEN {
            return Err(StoreError::TooLarge(record.len()));
        }
        let now = self.clock.now();
        let mut groups = self.lock();
        let g = groups.entry(group.to_owned()).or_default();
        Self::expire(g, now);
        if let Some(e) = g.records.get(&slot) {
            return Ok(match found(&e.record) {
                Found::Record(r) => Created::Lost(r),
                Found::Oversize { len } => Created::Oversize { len },
            });
        }
        g.put(slot, record, expires_at);
        Ok(Created::Won)
    }

    async fn replace(
        &self,
        group: &str,
        slot: Slot,
        seen: &Seen,
        record: &[u8],
        expires_at: Duration,
    ) -> Result<Replaced, StoreError> {
        if record.len() > MAX_RECORD_LEN {
            return Err(StoreError::TooLarge(record.len()));
        }
        let now = self.clock.now();
        if expires_at <= now {
            return Ok(Replaced::Lost);
        }
        let mut groups = self.lock();
        let g = groups.entry(group.to_owned()).or_default();
        Self::expire(g, now);
        let current = g.records.get(&slot).map(|e| found(&e.record));
        if !seen.matches(current.as_ref()) {
            return Ok(Replaced::Lost);
        }
        g.put(slot, record, expires_at);
        Ok(Replaced::Won)
    }

    async fn read_window(
        &self,
        group: &str,
        first: Slot,
        last: Slot,
    ) -> Result<Vec<(Slot, Found)>, StoreError> {
        let now = self.clock.now();
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            return Ok(Vec::new());
        };
        Self::expire(g, now);
        if first > last {
            return Ok(Vec::new());
        }
        Ok(g.records
            .range(first..=last)
            .map(|(s, e)| (*s, found(&e.record)))
            .collect())
    }

    async fn survey(&self) -> Result<Option<super::Survey>, StoreError> {
        let now = self.clock.now();
        let mut survey = super::Survey::default();
        for (name, g) in self.lock().iter_mut() {
            Self::expire(g, now);
            for slot in g.records.keys() {
                survey.add(name, &slot.0.to_string());
            }
        }
        Ok(Some(survey))
    }

    fn changes(&self, group: &str) -> Option<watch::Receiver<u64>> {
        let mut groups = self.lock();
        let g = groups.entry(group.to_owned()).or_default();
        Some(
            g.changes
                .get_or_insert_with(|| watch::channel(0).0)
                .subscribe(),
        )
    }

    /// The clock this store expires records by: in `stek up` the process's own, so the offset
    /// reads 0; in tests another one, to see offsets.
    async fn server_time(&self) -> Result<Option<Duration>, StoreError> {
        Ok(Some(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::manual::ManualClock;

    #[tokio::test]
    async fn conformance() {
        let clock = ManualClock::at(1_000);
        let store = MemoryStore::new(Arc::new(clock.clone()));
        let now = clock.now();
        super::super::conformance::run(&store, now, |d| clock.advance(d)).await;
        // Values over the cap can only be planted behind `create`'s back.
        super::super::conformance::run_oversize(&store, now, |g, slot, value, expires_at| {
            store.plant(g, slot, value, expires_at);
            std::future::ready(())
        })
        .await;
    }

    #[tokio::test]
    async fn notifies_on_create() {
        let clock = ManualClock::at(1_000);
        let store = MemoryStore::new(Arc::new(clock.clone()));
        let mut rx = store.changes("g").unwrap();
        store
            .create("g", Slot(1), b"x", Duration::from_secs(2_000))
            .await
            .unwrap();
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        store
            .create("g", Slot(1), b"y", Duration::from_secs(2_000))
            .await
            .unwrap();
        assert!(!rx.has_changed().unwrap(), "a lost create changes nothing");
    }
}
