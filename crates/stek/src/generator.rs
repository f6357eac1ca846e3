//! The generator: makes each upcoming slot's key, seals it into a record and publishes it with
//! create-if-absent. It keeps no key once the store has decided.

use std::time::Duration;

use stek_core::{KeyBytes, KeyName, RandomError, Schedule, Slot, SlotKey};
use tracing::{debug, info};

use crate::store::{Created, Store, StoreError};

/// Why publishing failed.
#[derive(Debug)]
pub enum PublishError {
    /// The store failed.
    Store(StoreError),
    /// No randomness for a new key.
    Random(RandomError),
    /// The key could not be sealed into a record.
    Seal(String),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Store(e) => e.fmt(f),
            PublishError::Random(e) => e.fmt(f),
            PublishError::Seal(e) => write!(f, "cannot seal the key: {e}"),
        }
    }
}

impl std::error::Error for PublishError {}

/// What happened to one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// We made the slot's key and the store took it.
    Created(KeyName),
    /// Another generator was first; its record stands.
    AlreadyThere,
}

/// Makes sure every slot from the current one up to `A` periods ahead has a record in `group`.
/// `seal` turns a key into the record bytes (plain for the embedded store, sealed and signed
/// for shared stores). Returns what happened to each slot that lacked a record.
pub async fn publish_upcoming<S: Store>(
    store: &S,
    schedule: &Schedule,
    group: &str,
    now: Duration,
    seal: impl Fn(&SlotKey) -> Result<KeyBytes, String>,
) -> Result<Vec<(Slot, Outcome)>, PublishError> {
    let first = schedule.slot_at(now);
    let last = schedule.newest_needed(now);
    let existing = store
        .read_window(group, first, last)
        .await
        .map_err(PublishError::Store)?;
    let mut out = Vec::new();
    for slot in (first.0..=last.0).map(Slot) {
        if existing.iter().any(|(s, _)| *s == slot) {
            continue;
        }
        // The key lives only until the store has decided; it is zeroized when dropped.
        let key = SlotKey::generate(slot).map_err(PublishError::Random)?;
        let record = seal(&key).map_err(PublishError::Seal)?;
        let expires_at = schedule.erase_at(slot);
        let outcome = match store
            .create(group, slot, &record, expires_at)
            .await
            .map_err(PublishError::Store)?
        {
            Created::Won => {
                info!(
                    "group {group}: generated key {} for slot {slot}",
                    key.name()
                );
                Outcome::Created(key.name())
            }
            Created::Lost(_) => {
                debug!("group {group}: slot {slot} already had a key from another generator");
                Outcome::AlreadyThere
            }
        };
        out.push((slot, outcome));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::manual::ManualClock;
    use crate::store::MemoryStore;
    use std::sync::Arc;
    use stek_core::Record;

    #[tokio::test]
    async fn makes_current_and_next_once() {
        let clock = ManualClock::at(400);
        let store = MemoryStore::new(Arc::new(clock.clone()));
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let seal = |k: &SlotKey| Ok(Record::plain(&s, "g", k).encode());
        let now = Duration::from_secs(400);
        let made = publish_upcoming(&store, &s, "g", now, seal).await.unwrap();
        assert_eq!(
            made.iter().map(|(s, _)| s.0).collect::<Vec<_>>(),
            vec![100, 101]
        );
        assert!(publish_upcoming(&store, &s, "g", now, seal)
            .await
            .unwrap()
            .is_empty());
        let made = publish_upcoming(&store, &s, "g", now + Duration::from_secs(4), seal)
            .await
            .unwrap();
        assert_eq!(made.iter().map(|(s, _)| s.0).collect::<Vec<_>>(), vec![102]);
    }
}
