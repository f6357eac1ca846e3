//! The generator: makes each upcoming slot's key, seals it into a record and publishes it with
//! create-if-absent, shortly before every slot boundary of every group it serves. It keeps no key
//! once the store has decided.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use stek_core::{Backoff, KeyBytes, KeyName, RandomError, Schedule, SealError, Slot, SlotKey};
use tracing::{debug, error, info, warn};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{Created, Found, Store, StoreError};

/// Why publishing failed.
#[derive(Debug)]
pub enum PublishError {
    /// The store failed.
    Store(StoreError),
    /// No randomness for a new key.
    Random(RandomError),
    /// The key could not be sealed into a record.
    Seal(SealError),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Store(_) => f.write_str("the store failed"),
            PublishError::Random(_) => f.write_str("no randomness for a new key"),
            PublishError::Seal(_) => f.write_str("cannot seal the key"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::Store(e) => Some(e),
            PublishError::Random(e) => Some(e),
            PublishError::Seal(e) => Some(e),
        }
    }
}

/// What happened to one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// We made the slot's key and the store took it.
    Created(KeyName),
    /// Another generator was first; its record stands.
    AlreadyThere,
    /// The slot holds a value larger than any record (someone else wrote to the store), which
    /// create-if-absent cannot replace: the slot has no shared key.
    Occupied,
}

/// "70000 bytes" or "more than 65536 bytes", for a log line about an oversize value.
fn describe_len(len: Option<u64>) -> String {
    match len {
        Some(n) => format!("{n} bytes"),
        None => format!("more than {} bytes", stek_core::record::MAX_RECORD_LEN),
    }
}

/// Makes sure every slot from the current one up to `A` periods ahead has a record in `group`.
/// `seal` turns a key into the record bytes (plain for the embedded store, sealed and signed
/// for shared stores). Returns what happened to each slot that lacked a record.
pub async fn publish_upcoming<S: Store>(
    store: &S,
    schedule: &Schedule,
    group: &str,
    now: Duration,
    seal: impl Fn(&SlotKey) -> Result<KeyBytes, SealError>,
) -> Result<Vec<(Slot, Outcome)>, PublishError> {
    let first = schedule.slot_at(now);
    let last = schedule.newest_needed(now);
    let existing = store
        .read_window(group, first, last)
        .await
        .map_err(PublishError::Store)?;
    let mut out = Vec::new();
    for slot in (first.0..=last.0).map(Slot) {
        match existing.iter().find(|(s, _)| *s == slot) {
            Some((_, Found::Record(_))) => continue,
            Some((_, Found::Oversize { len })) => {
                // Not a record: agents will reject it and encrypt with stand-ins for this slot.
                // create-if-absent cannot replace it; say so rather than skip it silently.
                warn!(
                    "group {group}: slot {slot} holds a value of {} in the store, too large to be a record: no key can be published there",
                    describe_len(*len)
                );
                out.push((slot, Outcome::Occupied));
                continue;
            }
            None => {}
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
            Created::Oversize { len } => {
                warn!(
                    "group {group}: slot {slot} was taken by a value of {} in the store, too large to be a record: no key can be published there",
                    describe_len(len)
                );
                Outcome::Occupied
            }
        };
        out.push((slot, outcome));
    }
    Ok(out)
}

/// Turns a key into record bytes (plain for the embedded store, sealed and signed otherwise).
pub type SealFn = Arc<dyn Fn(&SlotKey) -> Result<KeyBytes, SealError> + Send + Sync>;

/// One group a generator serves.
#[derive(Clone)]
pub struct GroupPlan {
    /// The group's name.
    pub name: String,
    /// The group's schedule.
    pub schedule: Schedule,
    /// How its records are made.
    pub seal: SealFn,
}

impl std::fmt::Debug for GroupPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupPlan")
            .field("name", &self.name)
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

/// Runs one publishing round for every group: makes the keys due at `now`. Returns whether every
/// group succeeded.
pub async fn generator_round<S: Store>(
    store: &S,
    groups: &[GroupPlan],
    now: Duration,
    metrics: &Metrics,
) -> bool {
    let mut ok = true;
    for g in groups {
        let seal = |k: &SlotKey| (g.seal)(k);
        // Records whose key left every window go now, whatever the store's expiry says.
        let oldest = g.schedule.window_at(now).first;
        match store.remove_before(&g.name, oldest).await {
            Ok(0) => {}
            Ok(n) => info!(
                "group {}: removed {n} expired record(s) from the store",
                g.name
            ),
            Err(e) => warn!(
                "group {}: could not remove expired records: {}",
                g.name,
                crate::error::Chain(&e)
            ),
        }
        match publish_upcoming(store, &g.schedule, &g.name, now, seal).await {
            Ok(done) => {
                for (_, outcome) in done {
                    if let Outcome::Created(_) = outcome {
                        metrics.key_created(&g.name, now);
                    }
                }
            }
            Err(e) => {
                ok = false;
                metrics.publish_error();
                error!(
                    "group {}: could not publish the upcoming keys: {}",
                    g.name,
                    crate::error::Chain(&e)
                );
            }
        }
    }
    if ok {
        metrics.published(now);
    }
    ok
}

/// How early a generator publishes the keys due at a slot boundary: an eighth of the shortest
/// period, at most 2 s. Agents then hold the next key before the boundary and rotate with a
/// single delivery (one reload) instead of two. It lengthens a key's existence by as much.
pub fn publish_margin(groups: &[GroupPlan]) -> Duration {
    groups
        .iter()
        .map(|g| g.schedule.period() / 8)
        .min()
        .unwrap_or_default()
        .min(Duration::from_secs(2))
}

/// The generator loop: a publishing round shortly before every slot boundary of every group
/// (see [`publish_margin`]), retried with backoff while the store fails.
pub async fn run_generator<S: Store>(
    store: Arc<S>,
    groups: Vec<GroupPlan>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let margin = publish_margin(&groups);
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        // Act as if it were `margin` later: the keys due at the coming boundary are made now.
        let now = clock.now() + margin;
        let ok = generator_round(&*store, &groups, now, &metrics).await;
        let next = groups
            .iter()
            .map(|g| g.schedule.next_rotation(now))
            .min()
            .unwrap_or(now + Duration::from_secs(60));
        let mut nap = next
            .saturating_sub(clock.now() + margin)
            .min(Duration::from_secs(60));
        if ok {
            backoff.reset();
        } else {
            nap = nap.min(backoff.next());
        }
        tokio::select! {
            _ = tokio::time::sleep(nap + Duration::from_millis(1)) => {}
            _ = &mut shutdown => return,
        }
    }
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
