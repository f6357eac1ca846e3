//! The generator: makes each upcoming slot's key, seals it into a record and publishes it with
//! create-if-absent, shortly before every slot boundary of every group it serves. It keeps no key
//! once the store has decided.
//!
//! Each round it also judges the values already in its slots ([`judge`]), so that a poisoned or
//! deleted slot is surfaced and repaired rather than skipped:
//!
//! - a value no generator could have written (undecodable, a header for another group, slot or
//!   schedule, a bad signature, an oversize value) is logged, counted by reason and replaced
//!   with a fresh record through [`Store::replace`] (compare-and-set: a value that changed since
//!   the read is left for the next round);
//! - a record correctly signed by *any* generator key is never replaced, even one this generator
//!   does not trust (it is reported once, `foreign_signer`): generators with different trust
//!   lists must not take turns replacing each other's records, which would give a slot a new
//!   key every round;
//! - a slot this generator won that is later found empty (or holding another key) is a fleet
//!   split: hosts that read the old record keep its key. It is recreated, logged at WARN and
//!   counted (`vanished`).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stek_core::{
    Backoff, GeneratorPublicKey, KeyBytes, KeyName, RandomError, Record, RecordError, Schedule,
    SealError, Slot, SlotKey,
};
use tracing::{debug, error, info, warn};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{Created, Found, Replaced, Seen, Store, StoreError};

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
    /// The slot held a value no generator could have written; our record replaced it.
    Repaired(KeyName),
    /// The slot held such a value, but it changed before our replace (another generator
    /// repaired it first, or its writer struck again): the next round judges it again.
    Contested,
}

/// Why a slot's value is reported. [`Conflict::reason`] is the `reason` label of
/// `stek_generator_slot_conflicts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Conflict {
    /// Not a record at all (does not decode).
    Garbage,
    /// A record filed under the wrong group or slot, or made for another period or lifetime,
    /// or of the wrong kind (plain where sealed records are expected, or the reverse).
    Mismatch,
    /// A sealed record whose signature does not verify under the key its header names.
    BadSignature,
    /// A value larger than any record.
    Oversize,
    /// A correctly signed record from a generator this one does not trust: left in place.
    ForeignSigner,
    /// A slot this generator won is gone from the store (or holds another key).
    Vanished,
}

impl Conflict {
    /// The stable metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Conflict::Garbage => "garbage",
            Conflict::Mismatch => "mismatch",
            Conflict::BadSignature => "bad_signature",
            Conflict::Oversize => "oversize",
            Conflict::ForeignSigner => "foreign_signer",
            Conflict::Vanished => "vanished",
        }
    }
}

/// What records a generator expects to find in its slots.
#[derive(Debug, Clone)]
pub enum RecordCheck {
    /// Plain records (the embedded store of `stek up`, where nothing leaves the process).
    Plain,
    /// Sealed records, signed by any generator; those of `trusted` are this generator's peers
    /// (its own key is always among them), others are reported.
    Signed {
        /// The generators whose records are expected.
        trusted: Vec<GeneratorPublicKey>,
    },
}

/// What [`judge`] thinks of one slot's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A record this generator expects (its own or a trusted peer's) with this key name.
    Sound(KeyName),
    /// A correctly signed record of a generator this one does not trust: never replaced (see
    /// the module documentation), only reported.
    Foreign {
        /// The key that signed it.
        signer: GeneratorPublicKey,
        /// Its key name.
        name: KeyName,
    },
    /// A value no generator could have written: to be replaced.
    Bad(Conflict, Option<RecordError>),
}

/// Judges the value found in `slot` of `group` (see the module documentation). Decoding is
/// size-capped and never panics; nothing is decrypted (a generator holds no group identity).
pub fn judge(
    found: &Found,
    schedule: &Schedule,
    group: &str,
    slot: Slot,
    check: &RecordCheck,
) -> Verdict {
    let bytes = match found {
        Found::Record(b) => b,
        Found::Oversize { .. } => return Verdict::Bad(Conflict::Oversize, None),
    };
    let record = match Record::decode(bytes) {
        Ok(r) => r,
        Err(e) => return Verdict::Bad(Conflict::Garbage, Some(e)),
    };
    if let Err(e) = record.header.check(schedule, group, slot) {
        return Verdict::Bad(Conflict::Mismatch, Some(e));
    }
    let name = record.header.name;
    match check {
        RecordCheck::Plain => match record.open_plain(schedule, group, slot) {
            Ok(_) => Verdict::Sound(name),
            Err(e) => Verdict::Bad(Conflict::Mismatch, Some(e)),
        },
        RecordCheck::Signed { trusted } => match record.verify_signature() {
            Ok(signer) if trusted.contains(&signer) => Verdict::Sound(name),
            Ok(signer) => Verdict::Foreign { signer, name },
            Err(e @ RecordError::Mismatch(_)) => Verdict::Bad(Conflict::Mismatch, Some(e)),
            Err(e) => Verdict::Bad(Conflict::BadSignature, Some(e)),
        },
    }
}

/// What a generator remembers of a group between rounds: the slots it won (by key name) and
/// the foreign records it reported, until they leave the window.
#[derive(Debug, Default)]
struct Memory {
    won: BTreeMap<Slot, KeyName>,
    foreign: BTreeSet<Slot>,
}

impl Memory {
    fn forget_before(&mut self, oldest: Slot) {
        self.won = self.won.split_off(&oldest);
        self.foreign = self.foreign.split_off(&oldest);
    }
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
        let outcome = create(store, group, schedule, slot, &seal).await?;
        out.push((slot, outcome));
    }
    Ok(out)
}

/// Makes a fresh key for `slot` and seals it; the key is zeroized when dropped, once the store
/// has decided.
fn fresh(
    slot: Slot,
    seal: &impl Fn(&SlotKey) -> Result<KeyBytes, SealError>,
) -> Result<(SlotKey, KeyBytes), PublishError> {
    let key = SlotKey::generate(slot).map_err(PublishError::Random)?;
    let record = seal(&key).map_err(PublishError::Seal)?;
    Ok((key, record))
}

/// One generator round for one group: judges the value of every slot from the current one up to
/// [`Schedule::newest_needed`], repairs what no generator could have written, recreates slots it
/// won that vanished, reports foreign records once, and creates the missing ones (see the module
/// documentation). Each conflict is logged and counted in `metrics` as it is found, so a store
/// failure later in the round loses none. Returns what happened to each slot it wrote or tried
/// to write.
pub async fn publish_checked<S: Store>(
    store: &S,
    plan: &GroupPlan,
    now: Duration,
    metrics: &Metrics,
) -> Result<Vec<(Slot, Outcome)>, PublishError> {
    // Taken out for the round (a std mutex cannot be held across the store's awaits) and put
    // back whatever happens; rounds of one plan never overlap.
    let mut memory = std::mem::take(&mut *lock(&plan.memory));
    let result = publish_with(store, plan, now, metrics, &mut memory).await;
    *lock(&plan.memory) = memory;
    result
}

fn lock(m: &Mutex<Memory>) -> std::sync::MutexGuard<'_, Memory> {
    // Only whole-value swaps happen under the lock: a poisoned one still holds a valid memory.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn publish_with<S: Store>(
    store: &S,
    plan: &GroupPlan,
    now: Duration,
    metrics: &Metrics,
    memory: &mut Memory,
) -> Result<Vec<(Slot, Outcome)>, PublishError> {
    let (group, schedule) = (plan.name.as_str(), &plan.schedule);
    let seal = |k: &SlotKey| (plan.seal)(k);
    memory.forget_before(schedule.window_at(now).first);
    let first = schedule.slot_at(now);
    let last = schedule.newest_needed(now);
    let existing = store
        .read_window(group, first, last)
        .await
        .map_err(PublishError::Store)?;
    let conflict = |slot: Slot, c: Conflict| {
        metrics.slot_conflict(group, c.reason());
        debug!("group {group}: slot {slot}: conflict {}", c.reason());
    };
    let mut out = Vec::new();
    for slot in (first.0..=last.0).map(Slot) {
        let found = existing.iter().find(|(s, _)| *s == slot).map(|(_, f)| f);
        let Some(found) = found else {
            let vanished = memory.won.remove(&slot).is_some();
            let outcome = create(store, group, schedule, slot, &seal).await?;
            if vanished {
                conflict(slot, Conflict::Vanished);
                warn!(
                    "group {group}: slot {slot} vanished from the store: {}; hosts that read the old one disagree until it leaves the window",
                    match outcome {
                        Outcome::Created(_) => "recreated with a new key",
                        _ => "another writer filled it first",
                    }
                );
            }
            if let Outcome::Created(name) = outcome {
                memory.won.insert(slot, name);
            }
            out.push((slot, outcome));
            continue;
        };
        match judge(found, schedule, group, slot, &plan.check) {
            Verdict::Sound(name) => {
                if memory.won.get(&slot).is_some_and(|ours| *ours != name) {
                    memory.won.remove(&slot);
                    conflict(slot, Conflict::Vanished);
                    warn!(
                        "group {group}: slot {slot} vanished from the store: it now holds key {name} instead of ours; hosts that read the old one disagree until it leaves the window"
                    );
                }
            }
            Verdict::Foreign { signer, name } => {
                if memory.won.remove(&slot).is_some() {
                    conflict(slot, Conflict::Vanished);
                    warn!(
                        "group {group}: slot {slot} vanished from the store: it now holds key {name} of another generator; hosts that read the old one disagree until it leaves the window"
                    );
                }
                // Reported once per slot, never replaced: see the module documentation.
                if memory.foreign.insert(slot) {
                    conflict(slot, Conflict::ForeignSigner);
                    warn!(
                        "group {group}: slot {slot} holds key {name} signed by generator {signer}, which is not in this generator's --trust list: left in place (agents that do not trust it fall back to local keys for this slot)"
                    );
                }
            }
            Verdict::Bad(c, why) => {
                conflict(slot, c);
                let why = match (&why, found) {
                    (Some(e), _) => e.to_string(),
                    (None, Found::Oversize { len }) => {
                        format!("a value of {}", describe_len(*len))
                    }
                    (None, Found::Record(_)) => "not a record".to_owned(),
                };
                warn!(
                    "group {group}: slot {slot} holds a value no generator could have written ({}: {why}): replacing it",
                    c.reason()
                );
                let outcome = repair(store, group, schedule, slot, found, &seal).await?;
                if let Outcome::Repaired(name) = outcome {
                    memory.won.insert(slot, name);
                }
                out.push((slot, outcome));
            }
        }
    }
    Ok(out)
}

/// Create-if-absent of a fresh record for `slot`.
async fn create<S: Store>(
    store: &S,
    group: &str,
    schedule: &Schedule,
    slot: Slot,
    seal: &impl Fn(&SlotKey) -> Result<KeyBytes, SealError>,
) -> Result<Outcome, PublishError> {
    let (key, record) = fresh(slot, seal)?;
    Ok(
        match store
            .create(group, slot, &record, schedule.erase_at(slot))
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
                // A checked round (`publish_checked`) judges and replaces it next round.
                warn!(
                    "group {group}: slot {slot} was taken by a value of {} in the store, too large to be a record",
                    describe_len(len)
                );
                Outcome::Occupied
            }
        },
    )
}

/// Replaces the value `found` of `slot`, only if it is still there.
async fn repair<S: Store>(
    store: &S,
    group: &str,
    schedule: &Schedule,
    slot: Slot,
    found: &Found,
    seal: &impl Fn(&SlotKey) -> Result<KeyBytes, SealError>,
) -> Result<Outcome, PublishError> {
    let (key, record) = fresh(slot, seal)?;
    Ok(
        match store
            .replace(
                group,
                slot,
                &Seen::of(Some(found)),
                &record,
                schedule.erase_at(slot),
            )
            .await
            .map_err(PublishError::Store)?
        {
            Replaced::Won => {
                info!(
                    "group {group}: replaced the value of slot {slot} with key {}",
                    key.name()
                );
                Outcome::Repaired(key.name())
            }
            Replaced::Lost => {
                info!(
                    "group {group}: slot {slot} changed before it could be repaired: judged again next round"
                );
                Outcome::Contested
            }
        },
    )
}

/// Turns a key into record bytes (plain for the embedded store, sealed and signed otherwise).
pub type SealFn = Arc<dyn Fn(&SlotKey) -> Result<KeyBytes, SealError> + Send + Sync>;

/// One group a generator serves. Clones share what the generator remembers between rounds
/// (the slots it won), so a first round and the loop that follows it see the same history.
#[derive(Clone)]
pub struct GroupPlan {
    /// The group's name.
    pub name: String,
    /// The group's schedule.
    pub schedule: Schedule,
    /// How its records are made.
    pub seal: SealFn,
    /// How the values in its slots are judged.
    pub check: RecordCheck,
    memory: Arc<Mutex<Memory>>,
}

impl GroupPlan {
    /// A plan with an empty memory.
    pub fn new(name: String, schedule: Schedule, seal: SealFn, check: RecordCheck) -> GroupPlan {
        GroupPlan {
            name,
            schedule,
            seal,
            check,
            memory: Arc::default(),
        }
    }
}

impl std::fmt::Debug for GroupPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupPlan")
            .field("name", &self.name)
            .field("schedule", &self.schedule)
            .field("check", &self.check)
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
        match publish_checked(store, g, now, metrics).await {
            Ok(done) => {
                for (_, outcome) in done {
                    if let Outcome::Created(_) | Outcome::Repaired(_) = outcome {
                        metrics.key_created(&g.name, now);
                    }
                }
                metrics.group_published(&g.name, g.schedule.window_at(now).current.plus(1), now);
            }
            Err(e) => {
                ok = false;
                metrics.publish_error();
                metrics.group_failed(&g.name, &crate::error::Chain(&e).to_string(), now);
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
    for g in &groups {
        metrics.group_planned(&g.name, &g.schedule);
    }
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

    use stek_core::{GeneratorKey, GroupIdentity, RecordHeader};

    fn sched(p: u64, l: u64) -> Schedule {
        Schedule::new(Duration::from_secs(p), Duration::from_secs(l)).unwrap()
    }

    fn sealed(s: &Schedule, group: &str, slot: Slot, signer: &GeneratorKey) -> Found {
        let member = GroupIdentity::generate().unwrap();
        let key = SlotKey::generate(slot).unwrap();
        let r = Record::seal(s, group, &key, &[member.public()], signer).unwrap();
        Found::Record(r.encode())
    }

    fn reason(v: &Verdict) -> &'static str {
        match v {
            Verdict::Sound(_) => "sound",
            Verdict::Foreign { .. } => "foreign_signer",
            Verdict::Bad(c, _) => c.reason(),
        }
    }

    #[test]
    fn the_verification_rules() {
        let s = sched(4, 12);
        let me = GeneratorKey::generate().unwrap();
        let peer = GeneratorKey::generate().unwrap();
        let stranger = GeneratorKey::generate().unwrap();
        let check = RecordCheck::Signed {
            trusted: vec![me.public(), peer.public()],
        };
        let slot = Slot(100);
        let judged = |f: &Found| reason(&judge(f, &s, "web", slot, &check));
        // Its own and a trusted peer's records are sound, with their key names.
        assert_eq!(judged(&sealed(&s, "web", slot, &me)), "sound");
        assert_eq!(judged(&sealed(&s, "web", slot, &peer)), "sound");
        // Correctly signed by an untrusted generator: reported, not replaced.
        match judge(&sealed(&s, "web", slot, &stranger), &s, "web", slot, &check) {
            Verdict::Foreign { signer, .. } => assert_eq!(signer, stranger.public()),
            other => panic!("{other:?}"),
        }
        // Junk, empty, truncated.
        assert_eq!(judged(&Found::Record(b"junk".to_vec().into())), "garbage");
        assert_eq!(judged(&Found::Record(Vec::new().into())), "garbage");
        let Found::Record(good) = sealed(&s, "web", slot, &me) else {
            unreachable!()
        };
        let cut = good[..good.len() - 10].to_vec();
        assert_eq!(judged(&Found::Record(cut.into())), "garbage");
        // Filed under the wrong slot or group, or made for another period or lifetime: even
        // correctly signed by this very generator, it cannot be this slot's record.
        assert_eq!(judged(&sealed(&s, "web", Slot(101), &me)), "mismatch");
        assert_eq!(judged(&sealed(&s, "api", slot, &me)), "mismatch");
        assert_eq!(judged(&sealed(&sched(8, 12), "web", slot, &me)), "mismatch");
        assert_eq!(judged(&sealed(&s, "web", slot, &me)), "sound");
        assert_eq!(judged(&sealed(&sched(4, 24), "web", slot, &me)), "mismatch");
        // A plain record where sealed ones are expected.
        let plain = Record::plain(&s, "web", &SlotKey::generate(slot).unwrap()).encode();
        assert_eq!(judged(&Found::Record(plain.clone())), "mismatch");
        // A bad signature: one flipped bit, or a header that claims a trusted generator.
        let mut flipped = good.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(judged(&Found::Record(flipped.into())), "bad_signature");
        let mut forged = Record::decode(&good).unwrap();
        forged.header.generator = peer.public().to_bytes();
        assert_eq!(judged(&Found::Record(forged.encode())), "bad_signature");
        // Oversize values are never records.
        assert_eq!(judged(&Found::Oversize { len: Some(70_000) }), "oversize");
        assert_eq!(judged(&Found::Oversize { len: None }), "oversize");
        // The embedded store's plain records: sound when they fit, and a sealed one is not.
        let plain_check = RecordCheck::Plain;
        assert!(matches!(
            judge(&Found::Record(plain), &s, "web", slot, &plain_check),
            Verdict::Sound(_)
        ));
        assert_eq!(
            reason(&judge(
                &sealed(&s, "web", slot, &me),
                &s,
                "web",
                slot,
                &plain_check
            )),
            "mismatch"
        );
        // The header a generator writes is the one it checks.
        let key = SlotKey::generate(slot).unwrap();
        assert!(RecordHeader::new(&s, "web", &key, me.public().to_bytes())
            .check(&s, "web", slot)
            .is_ok());
    }

    fn signed_plan(s: Schedule, group: &str, me: &Arc<GeneratorKey>) -> GroupPlan {
        let member = GroupIdentity::generate().unwrap().public();
        let (signer, name) = (me.clone(), group.to_owned());
        GroupPlan::new(
            group.to_owned(),
            s,
            Arc::new(move |k: &SlotKey| {
                Record::seal(&s, &name, k, &[member], &signer).map(|r| r.encode())
            }),
            RecordCheck::Signed {
                trusted: vec![me.public()],
            },
        )
    }

    fn value(store: &MemoryStore, slot: Slot) -> Option<Vec<u8>> {
        let got = futures_util::FutureExt::now_or_never(store.read_window("g", slot, slot))
            .expect("the memory store answers at once")
            .unwrap();
        got.first().map(|(_, f)| match f {
            Found::Record(r) => r.to_vec(),
            Found::Oversize { .. } => b"<oversize>".to_vec(),
        })
    }

    fn conflicts(m: &Metrics, now: Duration) -> Vec<String> {
        m.render(now)
            .lines()
            .filter(|l| l.starts_with("stek_generator_slot_conflicts_total{"))
            .map(str::to_owned)
            .collect()
    }

    /// Junk and an oversize value in upcoming slots are replaced by sound records and counted;
    /// a foreign record is left alone and counted once; a sound slot is untouched.
    #[tokio::test]
    async fn a_round_repairs_poisoned_slots_and_leaves_foreign_records() {
        let clock = ManualClock::at(400);
        let store = MemoryStore::new(Arc::new(clock.clone()));
        let s = sched(4, 12);
        let me = Arc::new(GeneratorKey::generate().unwrap());
        let stranger = GeneratorKey::generate().unwrap();
        let plan = signed_plan(s, "g", &me);
        let metrics = Metrics::new();
        let now = Duration::from_secs(400);
        // Slots 100 (current) and 101 (next).
        assert_eq!(s.slot_at(now), Slot(100));
        assert_eq!(s.newest_needed(now), Slot(101));
        store.plant("g", Slot(100), b"junk".to_vec(), Duration::MAX);
        let Found::Record(foreign) = sealed(&s, "g", Slot(101), &stranger) else {
            unreachable!()
        };
        store.plant("g", Slot(101), foreign.to_vec(), s.erase_at(Slot(101)));
        let done = publish_checked(&store, &plan, now, &metrics).await.unwrap();
        assert!(
            matches!(done[..], [(Slot(100), Outcome::Repaired(_))]),
            "{done:?}"
        );
        let v = value(&store, Slot(100)).unwrap();
        assert!(matches!(
            judge(
                &Found::Record(v.clone().into()),
                &s,
                "g",
                Slot(100),
                &plan.check
            ),
            Verdict::Sound(_)
        ));
        assert_eq!(value(&store, Slot(101)).unwrap(), foreign.to_vec());
        assert_eq!(
            conflicts(&metrics, now),
            [
                "stek_generator_slot_conflicts_total{group=\"g\",reason=\"foreign_signer\"} 1",
                "stek_generator_slot_conflicts_total{group=\"g\",reason=\"garbage\"} 1",
            ]
        );
        // The next round finds nothing to do: the foreign record is reported once, ours stays.
        let done = publish_checked(&store, &plan, now, &metrics).await.unwrap();
        assert!(done.is_empty(), "{done:?}");
        assert_eq!(value(&store, Slot(100)).unwrap(), v);
        assert_eq!(conflicts(&metrics, now).len(), 2);
        // An oversize value in the next slot when the time comes.
        let later = now + Duration::from_secs(4);
        store.plant("g", Slot(102), vec![0; 70_000], Duration::MAX);
        let ok = generator_round(&store, std::slice::from_ref(&plan), later, &metrics).await;
        assert!(ok);
        assert!(matches!(
            judge(
                &Found::Record(value(&store, Slot(102)).unwrap().into()),
                &s,
                "g",
                Slot(102),
                &plan.check
            ),
            Verdict::Sound(_)
        ));
        assert!(conflicts(&metrics, later).contains(
            &"stek_generator_slot_conflicts_total{group=\"g\",reason=\"oversize\"} 1".to_owned()
        ));
        // The round's repair counts as a key this generator created (the rounds above ran
        // `publish_checked` alone, which counts conflicts only).
        assert!(metrics
            .render(later)
            .contains("stek_generator_keys_created_total{group=\"g\"} 1"));
    }

    /// A slot this generator won that disappears is recreated and counted as vanished; one that
    /// it never won (another generator's) is simply created.
    #[tokio::test]
    async fn a_vanished_slot_is_recreated_and_counted() {
        let clock = ManualClock::at(400);
        let store = MemoryStore::new(Arc::new(clock.clone()));
        let s = sched(4, 12);
        let me = Arc::new(GeneratorKey::generate().unwrap());
        let plan = signed_plan(s, "g", &me);
        let metrics = Metrics::new();
        let now = Duration::from_secs(400);
        let done = publish_checked(&store, &plan, now, &metrics).await.unwrap();
        assert_eq!(done.len(), 2);
        let before = value(&store, Slot(101)).unwrap();
        store.remove("g", Slot(101));
        // A clone of the plan shares its memory (the first round and the loop are clones).
        let done = publish_checked(&store, &plan.clone(), now, &metrics)
            .await
            .unwrap();
        assert!(
            matches!(done[..], [(Slot(101), Outcome::Created(_))]),
            "{done:?}"
        );
        assert_ne!(value(&store, Slot(101)).unwrap(), before);
        assert_eq!(
            conflicts(&metrics, now),
            ["stek_generator_slot_conflicts_total{group=\"g\",reason=\"vanished\"} 1"]
        );
        // A fresh generator (no memory) that finds a slot empty just creates it.
        let other = signed_plan(s, "g", &me);
        store.remove("g", Slot(100));
        let m2 = Metrics::new();
        publish_checked(&store, &other, now, &m2).await.unwrap();
        assert!(conflicts(&m2, now).is_empty());
        // Memory ends with the window: a slot that left it is not missed.
        let far = now + s.period() * 10;
        let m3 = Metrics::new();
        publish_checked(&store, &plan, far, &m3).await.unwrap();
        assert!(conflicts(&m3, far).is_empty());
    }

    /// Two generators with different trust lists do not take turns replacing each other's
    /// records: each slot is written once.
    #[tokio::test]
    async fn generators_that_distrust_each_other_write_each_slot_once() {
        let clock = ManualClock::at(400);
        let store = MemoryStore::new(Arc::new(clock.clone()));
        let s = sched(4, 12);
        let a = signed_plan(s, "g", &Arc::new(GeneratorKey::generate().unwrap()));
        let b = signed_plan(s, "g", &Arc::new(GeneratorKey::generate().unwrap()));
        let (ma, mb) = (Metrics::new(), Metrics::new());
        let mut t = Duration::from_secs(400);
        let mut written = 0;
        for _ in 0..6 {
            for (plan, m) in [(&a, &ma), (&b, &mb)] {
                let done = publish_checked(&store, plan, t, m).await.unwrap();
                for (_, o) in &done {
                    assert!(
                        matches!(o, Outcome::Created(_)),
                        "nothing is replaced: {done:?}"
                    );
                    written += 1;
                }
            }
            t += s.period();
        }
        // Slots 100..=106, each written once by whichever generator came first.
        assert_eq!(written, 7);
        let text = [ma.render(t), mb.render(t)].concat();
        assert!(!text.contains("reason=\"garbage\""));
        assert!(!text.contains("reason=\"bad_signature\""));
        assert!(text.contains("reason=\"foreign_signer\""));
    }
}
