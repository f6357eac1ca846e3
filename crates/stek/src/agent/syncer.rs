//! The syncer: the half of the agent that talks to the store. It reads its group's records
//! (on the store's change notifications, at slot boundaries and on a jittered poll), checks and
//! opens them, and hands the keys to the rotator over a channel together with what it learnt
//! about the store (reachable or not, records rejected, the store's clock).
//!
//! Nothing here touches a sink, and nothing on the rotator's side waits for the store: a store
//! that hangs stalls this task only (each read is bounded by a timeout, so the outage is seen).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use stek_core::record::MAX_RECORD_LEN;
use stek_core::{jitter, KeyBytes, KeyName, Record, RecordError, Schedule, Slot, SlotKey, Window};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::clock::{Clock, ClockWatch};
use crate::store::{Found, Store, StoreError};

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

/// The rejection reason of a value larger than any record, which the store reports without
/// sending it (`stek_records_rejected_total{reason="oversize"}`).
pub const OVERSIZE: &str = "oversize";

/// What one read of the store brought.
#[derive(Debug, Default)]
pub struct Synced {
    /// Keys from records that passed every check, one per slot, for slots the rotator did not
    /// hold yet.
    pub keys: Vec<SlotKey>,
    /// The reasons of the records rejected in this read (each distinct record counted once).
    pub rejected: Vec<&'static str>,
    /// Held slots whose record in the store changed to another valid record with a different
    /// key (each distinct record counted once). The held key stays: see [`Syncer::sync`].
    pub conflicts: Vec<Slot>,
    /// How many values the store had for the slots read (records, rejected or not, and
    /// oversize values).
    pub found: usize,
}

/// Why a read of the store failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SyncError {
    /// The store answered with an error.
    Store(StoreError),
    /// The store did not answer in time (it may be hung, stopped or partitioned away).
    Timeout(Duration),
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::Store(_) => f.write_str("the store failed"),
            SyncError::Timeout(d) => write!(f, "the store did not answer within {d:?}"),
        }
    }
}

impl std::error::Error for SyncError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SyncError::Store(e) => Some(e),
            SyncError::Timeout(_) => None,
        }
    }
}

/// What the syncer tells the rotator after each read of the store.
#[derive(Debug)]
pub struct SyncReport {
    /// When the read started, by this host's clock.
    pub at: Duration,
    /// The read's outcome.
    pub result: Result<Synced, SyncError>,
    /// This host's clock minus the store's, in seconds, when it was measured with this read.
    pub clock_offset: Option<f64>,
    /// Why the store holds nothing for the slots this agent reads, when it has held nothing
    /// for a while and a survey of the store could tell (see [`Diagnosis`]).
    pub diagnosis: Option<String>,
}

/// An agent's account of a store that holds nothing for the slots it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// What stays the same while the cause does (logged again only when it changes).
    key: String,
    /// The finding and its fix, in words.
    pub text: String,
}

/// How long the store has held nothing for the slots read, and what a survey found.
#[derive(Debug, Default)]
struct Empty {
    since: Option<Instant>,
    surveyed: Option<Instant>,
    diagnosis: Option<Diagnosis>,
}

/// How often an agent whose slots stay empty surveys the store again: once a period, between
/// 10 seconds and 5 minutes.
fn resurvey(period: Duration) -> Duration {
    period.clamp(Duration::from_secs(10), Duration::from_secs(300))
}

/// Why a store that holds `survey` has nothing for the slots `group` reads at `now` under
/// `schedule`; `newest` is the header of the group's newest record, if it has one that decodes.
/// Group names and slots come from the store's key names (validated), so they are safe to log,
/// but they are what the store says: a hostile writer can mislead a diagnosis, never a key.
pub fn diagnose(
    group: &str,
    schedule: &Schedule,
    now: Duration,
    survey: &crate::store::Survey,
    newest: Option<&stek_core::record::RecordHeader>,
) -> Diagnosis {
    let fmt = crate::duration::format;
    let more = if survey.truncated {
        " (the listing stopped after its first keys)"
    } else {
        ""
    };
    let Some(slots) = survey.groups.get(group).filter(|s| !s.is_empty()) else {
        if survey.groups.is_empty() {
            return Diagnosis {
                key: "empty".into(),
                text: format!("the store holds no stek record of any group{more}: no generator publishes to this store (are the generators running, with this store's URL?)"),
            };
        }
        let mut others: Vec<String> = survey
            .groups
            .iter()
            .take(5)
            .map(|(g, s)| format!("{g} ({} record(s))", s.len()))
            .collect();
        if survey.groups.len() > 5 {
            others.push(format!("and {} more", survey.groups.len() - 5));
        }
        let names: Vec<&String> = survey.groups.keys().collect();
        return Diagnosis {
            key: format!("other groups {names:?}"),
            text: format!(
                "the store holds no record of group {group}, but records of group(s) {}{more}: this agent's --group must be the one its generators publish for",
                others.join(", ")
            ),
        };
    };
    let (first, last) = (slots[0], slots[slots.len() - 1]);
    let range = if first == last {
        format!("slot {first}")
    } else {
        format!("slots {first} to {last}")
    };
    if let Some(h) = newest {
        let ours = (
            schedule.period().as_secs(),
            u64::from(schedule.lifetime_hint()),
        );
        if (u64::from(h.period), u64::from(h.lifetime)) != ours {
            return Diagnosis {
                key: format!("schedule {} {}", h.period, h.lifetime),
                text: format!(
                    "group {group}'s records in the store ({range}) are made for period {}, lifetime {}; this agent's are period {}, lifetime {}: an agent's --period and --lifetime must equal its generator's",
                    fmt(Duration::from_secs(h.period.into())),
                    fmt(Duration::from_secs(h.lifetime.into())),
                    fmt(Duration::from_secs(ours.0)),
                    fmt(Duration::from_secs(ours.1)),
                ),
            };
        }
    }
    let reads = fetch_window(schedule, now);
    let period = schedule.period();
    if first > reads.last {
        let ahead = schedule
            .start(first)
            .saturating_sub(schedule.start(reads.last));
        Diagnosis {
            key: "ahead".into(),
            text: format!(
                "group {group}'s records in the store are for {range}, after the slots this agent reads ({} to {}): this host's clock is at least {} behind the generators' (fix NTP)",
                reads.first,
                reads.last,
                fmt(ahead.max(period))
            ),
        }
    } else if last < reads.first {
        Diagnosis {
            key: "behind".into(),
            text: format!(
                "group {group}'s newest record in the store is for slot {last}, which began {} ago, before the slots this agent reads ({} to {}): no generator has published since, or this host's clock is ahead of theirs",
                fmt(now.saturating_sub(schedule.start(last))),
                reads.first,
                reads.last
            ),
        }
    } else {
        // Records on both sides of the window but none in it, or the window filled in
        // between: nothing more to say than the facts.
        Diagnosis {
            key: "gap".into(),
            text: format!(
                "group {group}'s records in the store are for {range}, none for the slots this agent reads ({} to {})",
                reads.first, reads.last
            ),
        }
    }
}

/// The slots an agent reads at `now`: the window plus the slot after next. Generators publish
/// that one shortly before the boundary (see `generator::publish_margin`); fetching it on their
/// notification means the rotation itself needs no store read. The rotator holds it, never
/// installs it, until it enters the window; meanwhile the memcached table serves it by slot
/// ([`stek_core::Ring::ahead`]), for clients that ask for it at the boundary.
pub fn fetch_window(schedule: &Schedule, now: Duration) -> Window {
    let mut w = schedule.window_at(now);
    w.last = w.last.plus(1);
    w
}

/// Reads one group's records from a store and opens them.
pub struct Syncer<S, O> {
    store: Arc<S>,
    opener: O,
    group: String,
    schedule: Schedule,
    /// The digest of the last rejected record of each slot read, so that a rejected record read
    /// again at every poll is counted and logged once.
    rejected_seen: BTreeMap<Slot, [u8; 32]>,
    /// The digest and key name of the record accepted for each slot of the window, to notice
    /// when the store later holds another record for a slot the rotator holds.
    accepted: BTreeMap<Slot, ([u8; 32], KeyName)>,
    /// The digest of the last record examined as a conflict for each held slot (examined once).
    conflicts_seen: BTreeMap<Slot, [u8; 32]>,
}

impl<S, O> fmt::Debug for Syncer<S, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Syncer")
            .field("group", &self.group)
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

impl<S: Store, O: Opener> Syncer<S, O> {
    /// A syncer for `group` reading `store`, opening records with `opener`.
    pub fn new(store: Arc<S>, opener: O, group: String, schedule: Schedule) -> Self {
        Syncer {
            store,
            opener,
            group,
            schedule,
            rejected_seen: BTreeMap::new(),
            accepted: BTreeMap::new(),
            conflicts_seen: BTreeMap::new(),
        }
    }

    /// Reads the records of [`fetch_window`] at `now` and opens those of the slots not in
    /// `held` (the rotator's slots). Rejected records are logged and counted, never returned.
    /// One key per slot: the first record of a slot that passes wins.
    pub async fn sync(
        &mut self,
        now: Duration,
        held: &BTreeSet<Slot>,
    ) -> Result<Synced, StoreError> {
        let w = fetch_window(&self.schedule, now);
        let records = self.store.read_window(&self.group, w.first, w.last).await?;
        self.rejected_seen.retain(|slot, _| w.contains(*slot));
        self.accepted.retain(|slot, _| w.contains(*slot));
        self.conflicts_seen.retain(|slot, _| w.contains(*slot));
        let mut out = Synced {
            found: records.len(),
            ..Synced::default()
        };
        let mut taken = BTreeSet::new();
        for (slot, found) in records {
            let bytes = match found {
                Found::Record(bytes) => bytes,
                Found::Oversize { len } => {
                    // Reported even for a held slot: the key already held stays (a key once
                    // accepted is kept), but a value no generator writes where a record should
                    // be means someone else writes to the store.
                    self.oversize(slot, len, &w, &mut out);
                    continue;
                }
            };
            let digest: [u8; 32] = Sha256::digest(bytes.as_slice()).into();
            if held.contains(&slot) {
                self.held_changed(slot, &bytes, digest, &w, &mut out);
                continue;
            }
            if taken.contains(&slot) {
                continue;
            }
            if self.rejected_seen.get(&slot) == Some(&digest) {
                continue;
            }
            match self.accept(slot, &bytes, &w) {
                Ok(key) => {
                    self.rejected_seen.remove(&slot);
                    self.accepted.insert(slot, (digest, key.name()));
                    taken.insert(slot);
                    out.keys.push(key);
                }
                Err(e) => {
                    self.rejected_seen.insert(slot, digest);
                    out.rejected.push(e.reason());
                    warn!(
                        reason = e.reason(),
                        "group {}: rejected the record of slot {slot}: {e}{}",
                        self.group,
                        self.explain(&e, &bytes)
                    );
                }
            }
        }
        Ok(out)
    }

    /// A held slot whose value in the store is not the record this syncer accepted for it: a
    /// generator recreated a deleted record, or repaired one. If the new value is a valid record
    /// with a different key, the fleet is split for this slot (hosts that read the old record
    /// hold the old key); it is logged and counted once per value, and the held key stays:
    /// switching a key that may already encrypt would strand the tickets it issued here, and
    /// hosts that kept the old key would disagree with this one all the same.
    fn held_changed(
        &mut self,
        slot: Slot,
        bytes: &KeyBytes,
        digest: [u8; 32],
        window: &Window,
        out: &mut Synced,
    ) {
        let Some((ours, held_name)) = self.accepted.get(&slot).copied() else {
            return; // held since before this syncer read it (a stand-in, or another read)
        };
        if ours == digest || self.conflicts_seen.get(&slot) == Some(&digest) {
            return;
        }
        self.conflicts_seen.insert(slot, digest);
        if let Ok(key) = self.accept(slot, bytes, window) {
            if key.name() != held_name {
                out.conflicts.push(slot);
                warn!(
                    "group {}: slot {slot} now holds another valid key ({}) than the one this host holds ({held_name}): the store lost or replaced the record; keeping the held key, so hosts disagree on this slot until it leaves the window",
                    self.group,
                    key.name()
                );
            }
        }
    }

    /// Counts and logs an oversize value of `slot` once (until the slot's value changes).
    fn oversize(&mut self, slot: Slot, len: Option<u64>, window: &Window, out: &mut Synced) {
        if !window.contains(slot) {
            return;
        }
        // A digest no record can have (a record is hashed whole; this is the hash of a label
        // and the length), so a record that replaces the value later is examined afresh.
        let mut h = Sha256::new();
        h.update(b"stek oversize value ");
        h.update(len.unwrap_or(u64::MAX).to_be_bytes());
        let digest: [u8; 32] = h.finalize().into();
        if self.rejected_seen.get(&slot) == Some(&digest) {
            return;
        }
        self.rejected_seen.insert(slot, digest);
        out.rejected.push(OVERSIZE);
        let size = match len {
            Some(n) => format!("{n} bytes"),
            None => format!("more than {MAX_RECORD_LEN} bytes"),
        };
        warn!(
            reason = OVERSIZE,
            "group {}: rejected the value of slot {slot}: {size}, larger than any record (not downloaded); someone other than a generator writes to the store",
            self.group
        );
    }

    /// For a schedule mismatch, both schedules in words: the record's and this reader's (the
    /// usual cause: an agent started without the generator's --period or --lifetime).
    fn explain(&self, e: &RecordError, bytes: &KeyBytes) -> String {
        let RecordError::Mismatch("period" | "lifetime" | "not_before" | "not_after") = e else {
            return String::new();
        };
        let Ok(record) = Record::decode(bytes) else {
            return String::new();
        };
        let h = &record.header;
        let fmt = |s: u64| crate::duration::format(Duration::from_secs(s));
        format!(
            " (the record: period {}, lifetime {}; this agent: period {}, lifetime {}): an agent's --period and --lifetime must equal its generator's",
            fmt(u64::from(h.period)),
            fmt(u64::from(h.lifetime)),
            fmt(self.schedule.period().as_secs()),
            fmt(u64::from(self.schedule.lifetime_hint()))
        )
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

    /// Follows how long the store has held nothing for the slots read (`found`: values in the
    /// last read, `None` when it failed): once that lasts [`heartbeat`](crate::status::heartbeat)
    /// it surveys the store (again every [`resurvey`] while it lasts) and logs what it found
    /// once per finding. Returns the standing finding.
    async fn watch_empty<'a>(
        &self,
        empty: &'a mut Empty,
        found: Option<usize>,
        now: Duration,
        timeout: Duration,
    ) -> Option<&'a Diagnosis> {
        match found {
            None => return empty.diagnosis.as_ref(),
            Some(0) => {}
            Some(_) => {
                if let Some(d) = empty.diagnosis.take() {
                    info!(
                        "group {}: the store holds records for this agent's slots again (it did not: {})",
                        self.group, d.text
                    );
                }
                *empty = Empty::default();
                return None;
            }
        }
        let since = *empty.since.get_or_insert_with(Instant::now);
        let due = empty
            .surveyed
            .is_none_or(|t| t.elapsed() >= resurvey(self.schedule.period()));
        if since.elapsed() < crate::status::heartbeat(self.schedule.period()) || !due {
            return empty.diagnosis.as_ref();
        }
        empty.surveyed = Some(Instant::now());
        let found = match tokio::time::timeout(timeout, self.survey(now)).await {
            Ok(Ok(Some(d))) => d,
            Ok(Ok(None)) => return empty.diagnosis.as_ref(),
            Ok(Err(e)) => {
                debug!(
                    "group {}: cannot survey the store: {}",
                    self.group,
                    crate::error::Chain(&e)
                );
                return empty.diagnosis.as_ref();
            }
            Err(_) => return empty.diagnosis.as_ref(),
        };
        if empty.diagnosis.as_ref().is_none_or(|d| d.key != found.key) {
            warn!("group {}: {}", self.group, found.text);
        }
        empty.diagnosis = Some(found);
        empty.diagnosis.as_ref()
    }

    /// Lists the store's records and, if this group has some, reads the header of the newest
    /// (its schedule is plain text in the record): what [`diagnose`] needs.
    async fn survey(&self, now: Duration) -> Result<Option<Diagnosis>, StoreError> {
        let Some(survey) = self.store.survey().await? else {
            return Ok(None);
        };
        let mut newest = None;
        if let Some(&slot) = survey.groups.get(&self.group).and_then(|s| s.last()) {
            for (_, found) in self.store.read_window(&self.group, slot, slot).await? {
                if let Found::Record(bytes) = found {
                    newest = Record::decode(&bytes).ok().map(|r| r.header);
                }
            }
        }
        Ok(Some(diagnose(
            &self.group,
            &self.schedule,
            now,
            &survey,
            newest.as_ref(),
        )))
    }

    /// This host's clock minus the store's, in seconds, if the store tells its time: the local
    /// time is taken halfway through the request.
    async fn clock_offset(&self, clock: &dyn Clock, timeout: Duration) -> Option<f64> {
        let t0 = clock.now();
        let server = match tokio::time::timeout(timeout, self.store.server_time()).await {
            Ok(Ok(Some(t))) => t,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                debug!(
                    "group {}: cannot read the store's clock: {}",
                    self.group,
                    crate::error::Chain(&e)
                );
                return None;
            }
            Err(_) => return None,
        };
        let local = (t0 + clock.now()) / 2;
        Some(local.as_secs_f64() - server.as_secs_f64())
    }

    /// Runs until the rotator goes away (`reports` closed): a read at every slot boundary, on
    /// the store's notifications and on a poll jittered around `poll`; the clock offset measured
    /// once a period by the monotonic clock, and at once after the wall clock stepped.
    pub async fn run(
        mut self,
        clock: Arc<dyn Clock>,
        poll: Duration,
        held: watch::Receiver<BTreeSet<Slot>>,
        reports: mpsc::Sender<SyncReport>,
    ) {
        let mut changes = self.store.changes(&self.group);
        let timeout = read_timeout(poll);
        let period = self.schedule.period();
        let mut steps = ClockWatch::new(period / 4);
        let mut offset_due = Instant::now();
        let mut empty = Empty::default();
        let mut skewed = false;
        loop {
            let now = clock.now();
            if steps.observe(now, Instant::now()).is_some() {
                offset_due = Instant::now();
            }
            let slots = held.borrow().clone();
            let result = match tokio::time::timeout(timeout, self.sync(now, &slots)).await {
                Ok(r) => r.map_err(SyncError::Store),
                Err(_) => Err(SyncError::Timeout(timeout)),
            };
            let mut clock_offset = None;
            if result.is_ok() && Instant::now() >= offset_due {
                offset_due = Instant::now() + period;
                clock_offset = self.clock_offset(&*clock, timeout).await;
                // Logged when the offset crosses P/4, either way; the metric follows every
                // measurement (once a period).
                if let Some(off) = clock_offset {
                    let now_skewed = off.abs() > period.as_secs_f64() / 4.0;
                    if now_skewed && !skewed {
                        warn!("group {}: this host's clock is {off:+.3}s off the store's, more than P/4: fix NTP; tickets may fail to resume across hosts (logged again when it is back within P/4)", self.group);
                    } else if !now_skewed && skewed {
                        info!("group {}: this host's clock is back within P/4 of the store's ({off:+.3}s)", self.group);
                    }
                    skewed = now_skewed;
                }
            }
            let found = result.as_ref().ok().map(|s| s.found);
            let diagnosis = self
                .watch_empty(&mut empty, found, now, timeout)
                .await
                .map(|d| d.text.clone());
            let report = SyncReport {
                at: now,
                result,
                clock_offset,
                diagnosis,
            };
            if reports.send(report).await.is_err() {
                return;
            }
            let to_boundary = self.schedule.next_rotation(now).saturating_sub(clock.now());
            let nap = to_boundary.min(jitter(poll)) + Duration::from_millis(1);
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = async {
                    match &mut changes {
                        Some(rx) => { if rx.changed().await.is_err() { std::future::pending::<()>().await } }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        }
    }
}

/// How long one read of the store may take: the poll interval, between 2 and 10 s.
fn read_timeout(poll: Duration) -> Duration {
    poll.clamp(Duration::from_secs(2), Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::manual::ManualClock;
    use crate::generator::publish_upcoming;
    use crate::store::MemoryStore;

    fn plain(s: &Schedule, group: &str, k: &SlotKey) -> Vec<u8> {
        Record::plain(s, group, k).encode().to_vec()
    }

    /// An agent whose slots the store never fills learns why from a survey: no record at all,
    /// only other groups', its group's under another schedule, or its clock far behind.
    #[tokio::test]
    async fn an_empty_window_is_explained_by_a_survey_of_the_store() {
        let clock = ManualClock::at(36_000);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let hourly =
            Schedule::new(Duration::from_secs(3600), Duration::from_secs(18 * 3600)).unwrap();
        let fast = Schedule::new(Duration::from_secs(10), Duration::from_secs(180)).unwrap();
        let now = clock.now();
        let syncer =
            |group: &str, s: Schedule| Syncer::new(store.clone(), PlainOpener, group.to_owned(), s);
        let text = |d: Option<Diagnosis>| d.expect("a diagnosis").text;

        let empty = text(syncer("web", hourly).survey(now).await.unwrap());
        assert!(empty.contains("no stek record of any group"), "{empty}");

        // A generator of group "api" on a 10 s period.
        for slot in [3600, 3601, 3602] {
            let k = SlotKey::generate(Slot(slot)).unwrap();
            store
                .create(
                    "api",
                    Slot(slot),
                    &plain(&fast, "api", &k),
                    now + fast.lifetime(),
                )
                .await
                .unwrap();
        }
        let group = text(syncer("web", fast).survey(now).await.unwrap());
        assert!(
            group.contains("no record of group web, but records of group(s) api (3 record(s))")
                && group.contains("--group"),
            "{group}"
        );
        let mut period = syncer("api", hourly);
        assert!(period.sync(now, &BTreeSet::new()).await.unwrap().found == 0);
        let period = text(period.survey(now).await.unwrap());
        assert!(
            period.contains("slots 3600 to 3602")
                && period.contains("made for period 10s, lifetime 3m")
                && period.contains("this agent's are period 1h, lifetime 18h")
                && period.contains("must equal its generator's"),
            "{period}"
        );
        // The same schedule, but this host's clock two hours behind the generator's.
        let behind = Duration::from_secs(36_000 - 7200);
        let late = text(syncer("api", fast).survey(behind).await.unwrap());
        assert!(
            late.contains("this host's clock is at least 1h59m40s behind")
                && late.contains("fix NTP"),
            "{late}"
        );
        // Junk keys are not groups.
        let mut survey = crate::store::Survey::default();
        for (g, slot) in [
            ("a b", "1"),
            ("ok", "x1"),
            ("ok", "+1"),
            ("ok", "7"),
            ("", "1"),
        ] {
            survey.add(g, slot);
        }
        assert_eq!(survey.groups.len(), 1);
        assert_eq!(survey.groups["ok"], vec![Slot(7)]);
    }

    /// The survey waits for a heartbeat of emptiness, is logged once per finding (not once per
    /// read), repeats at most once a period, and clears when records arrive.
    #[tokio::test(start_paused = true)]
    async fn the_empty_window_finding_waits_and_clears() {
        let clock = ManualClock::at(400);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let syncer = Syncer::new(store.clone(), PlainOpener, "g".into(), s);
        let mut empty = Empty::default();
        let t = Duration::from_secs(1);
        let logs = crate::testlog::start();
        let warnings = || logs.text().matches("WARN").count();
        let now = clock.now();
        assert!(syncer
            .watch_empty(&mut empty, Some(0), now, t)
            .await
            .is_none());
        // A failed read says nothing new.
        assert!(syncer.watch_empty(&mut empty, None, now, t).await.is_none());
        tokio::time::advance(crate::status::heartbeat(s.period())).await;
        let d = syncer
            .watch_empty(&mut empty, Some(0), now, t)
            .await
            .cloned();
        assert!(d.unwrap().text.contains("no stek record"));
        let surveyed = empty.surveyed;
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(syncer
            .watch_empty(&mut empty, Some(0), now, t)
            .await
            .is_some());
        assert_eq!(
            empty.surveyed, surveyed,
            "not surveyed again within a period"
        );
        assert_eq!(warnings(), 1, "{}", logs.text());
        // A period on (at least 10 s), surveyed again: the same finding is not logged again;
        // another one is.
        tokio::time::advance(resurvey(s.period())).await;
        assert!(syncer
            .watch_empty(&mut empty, Some(0), now, t)
            .await
            .is_some());
        assert_ne!(empty.surveyed, surveyed, "surveyed again");
        assert_eq!(warnings(), 1, "{}", logs.text());
        store
            .create("other", Slot(7), b"x", Duration::from_secs(999))
            .await
            .unwrap();
        tokio::time::advance(resurvey(s.period())).await;
        let d = syncer
            .watch_empty(&mut empty, Some(0), now, t)
            .await
            .cloned();
        assert!(d.unwrap().text.contains("records of group(s) other"));
        assert_eq!(warnings(), 2, "{}", logs.text());
        assert!(syncer
            .watch_empty(&mut empty, Some(2), now, t)
            .await
            .is_none());
        assert!(empty.diagnosis.is_none() && empty.since.is_none());
    }

    #[tokio::test]
    async fn rejects_records_of_other_groups_and_slots_once() {
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
        // Filed under our group but made for another; a replay into the wrong slot; garbage.
        put(100, plain(&s, "h", &k)).await;
        put(101, plain(&s, "g", &k)).await;
        put(99, b"garbage".to_vec()).await;
        let mut syncer = Syncer::new(store, PlainOpener, "g".into(), s);
        let held = BTreeSet::new();
        let got = syncer.sync(now, &held).await.unwrap();
        assert!(got.keys.is_empty());
        let mut reasons = got.rejected.clone();
        reasons.sort();
        assert_eq!(reasons, ["bad_magic", "header_mismatch", "header_mismatch"]);
        // Read again, the same records are not reported again.
        let again = syncer.sync(now, &held).await.unwrap();
        assert!(
            again.keys.is_empty() && again.rejected.is_empty(),
            "{again:?}"
        );
    }

    /// A record made under another lifetime is rejected with both schedules in words.
    #[test]
    fn a_schedule_mismatch_names_both_schedules() {
        let clock = ManualClock::at(400);
        let store = Arc::new(MemoryStore::new(Arc::new(clock)));
        let ours = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let theirs = Schedule::new(Duration::from_secs(4), Duration::from_secs(40)).unwrap();
        let k = SlotKey::generate(Slot(100)).unwrap();
        let syncer = Syncer::new(store, PlainOpener, "g".into(), ours);
        let bytes = KeyBytes::from(plain(&theirs, "g", &k));
        let e = syncer
            .accept(Slot(100), &bytes, &ours.window(Slot(100)))
            .unwrap_err();
        assert_eq!(e, RecordError::Mismatch("lifetime"));
        let why = syncer.explain(&e, &bytes);
        assert!(why.contains("the record: period 4s, lifetime 40s"), "{why}");
        assert!(why.contains("this agent: period 4s, lifetime 12s"), "{why}");
        assert!(why.contains("must equal its generator's"), "{why}");
        // Other reasons need no schedule.
        assert_eq!(syncer.explain(&RecordError::BadMagic, &bytes), "");
    }

    /// A held slot whose record is replaced by another valid record (a generator recreated a
    /// deleted one) is reported once, and no key is returned for it; the same record again, or
    /// the one accepted, is not a conflict; an invalid replacement is not one either.
    #[tokio::test]
    async fn a_held_slot_that_changes_key_is_reported_once_and_kept() {
        let clock = ManualClock::at(400);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let now = clock.now();
        let exp = Duration::from_secs(999);
        let first = SlotKey::generate(Slot(100)).unwrap();
        store.plant("g", Slot(100), plain(&s, "g", &first), exp);
        let mut syncer = Syncer::new(store.clone(), PlainOpener, "g".into(), s);
        let got = syncer.sync(now, &BTreeSet::new()).await.unwrap();
        assert_eq!(got.keys.len(), 1);
        let held: BTreeSet<Slot> = [Slot(100)].into();
        // Unchanged: nothing to say.
        let got = syncer.sync(now, &held).await.unwrap();
        assert!(got.conflicts.is_empty() && got.keys.is_empty(), "{got:?}");
        // Junk over the held slot is not a conflict of keys (the generators repair it).
        store.plant("g", Slot(100), b"junk".to_vec(), exp);
        let got = syncer.sync(now, &held).await.unwrap();
        assert!(got.conflicts.is_empty() && got.keys.is_empty(), "{got:?}");
        // Another valid key: reported once, never handed to the rotator.
        let second = SlotKey::generate(Slot(100)).unwrap();
        store.plant("g", Slot(100), plain(&s, "g", &second), exp);
        let got = syncer.sync(now, &held).await.unwrap();
        assert_eq!(got.conflicts, [Slot(100)]);
        assert!(got.keys.is_empty(), "{got:?}");
        let again = syncer.sync(now, &held).await.unwrap();
        assert!(again.conflicts.is_empty(), "{again:?}");
        // The original record back: the held key again, no conflict.
        store.plant("g", Slot(100), plain(&s, "g", &first), exp);
        let got = syncer.sync(now, &held).await.unwrap();
        assert!(got.conflicts.is_empty(), "{got:?}");
    }

    #[tokio::test]
    async fn oversize_values_are_rejected_once_held_keys_kept() {
        let clock = ManualClock::at(400);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let now = clock.now();
        let exp = Duration::from_secs(999);
        let big = || vec![0u8; stek_core::record::MAX_RECORD_LEN + 1];
        // Slot 99 is held (its record was overwritten), slot 100 never had a record; slot 104
        // lies outside the window read.
        store.plant("g", Slot(99), big(), exp);
        store.plant("g", Slot(100), big(), exp);
        store.plant("g", Slot(104), big(), exp);
        let mut syncer = Syncer::new(store.clone(), PlainOpener, "g".into(), s);
        let held: BTreeSet<Slot> = [Slot(99)].into();
        let got = syncer.sync(now, &held).await.unwrap();
        assert!(got.keys.is_empty());
        assert_eq!(got.rejected, [OVERSIZE, OVERSIZE]);
        let again = syncer.sync(now, &held).await.unwrap();
        assert!(again.rejected.is_empty(), "{again:?}");
        // A record that replaces the value is examined afresh and accepted.
        let k = SlotKey::generate(Slot(100)).unwrap();
        store.plant("g", Slot(100), plain(&s, "g", &k), exp);
        let got = syncer.sync(now, &held).await.unwrap();
        assert!(got.rejected.is_empty(), "{got:?}");
        assert_eq!(got.keys.len(), 1);
        assert_eq!(got.keys[0].name(), k.name());
        // And another oversize value there later is reported again.
        store.plant("g", Slot(100), vec![0u8; 5_000_000], exp);
        let got = syncer.sync(now, &held).await.unwrap();
        assert_eq!(got.rejected, [OVERSIZE]);
    }

    #[tokio::test]
    async fn opens_what_the_rotator_lacks_and_nothing_else() {
        let clock = ManualClock::at(402);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let seal = |k: &SlotKey| Ok(Record::plain(&s, "g", k).encode());
        // Current, next and the one after next (published early by the generator).
        for t in [402, 404] {
            publish_upcoming(&*store, &s, "g", Duration::from_secs(t), seal)
                .await
                .unwrap();
        }
        let mut syncer = Syncer::new(store.clone(), PlainOpener, "g".into(), s);
        let got = syncer.sync(clock.now(), &BTreeSet::new()).await.unwrap();
        let slots: Vec<u64> = got.keys.iter().map(|k| k.slot().0).collect();
        assert_eq!(slots, [100, 101, 102]);
        let held: BTreeSet<Slot> = [Slot(100), Slot(102)].into();
        let got = syncer.sync(clock.now(), &held).await.unwrap();
        let slots: Vec<u64> = got.keys.iter().map(|k| k.slot().0).collect();
        assert_eq!(slots, [101]);
        // Nothing beyond the slot after next is read, however early it was published.
        let far = SlotKey::generate(Slot(103)).unwrap();
        store
            .create(
                "g",
                Slot(103),
                &plain(&s, "g", &far),
                Duration::from_secs(999),
            )
            .await
            .unwrap();
        let got = syncer.sync(clock.now(), &BTreeSet::new()).await.unwrap();
        assert!(got.keys.iter().all(|k| k.slot() <= Slot(102)));
    }

    #[test]
    fn the_read_window_is_the_ring_window_and_the_slot_after_next() {
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let w = fetch_window(&s, Duration::from_secs(401));
        assert_eq!((w.first, w.last), (Slot(97), Slot(102)));
    }

    /// A failed read says what failed, and keeps the store's own error as its cause.
    #[test]
    fn sync_errors_say_what_failed_and_keep_their_cause() {
        use crate::error::Chain;
        let timeout = SyncError::Timeout(Duration::from_millis(1500));
        assert_eq!(
            Chain(&timeout).to_string(),
            "the store did not answer within 1.5s"
        );
        let refused = SyncError::Store(crate::store::StoreError::Refused {
            store: "Redis (GET)".into(),
            message: "NOPERM no permission".into(),
        });
        let text = Chain(&refused).to_string();
        assert!(
            text.starts_with("the store failed: ") && text.contains("NOPERM no permission"),
            "{text}"
        );
    }

    /// Where the group's records lie against the slots read tells the cause apart: all before
    /// them (no generator since, or a clock ahead), all after (a clock behind), or around them;
    /// other groups are listed, five at most.
    #[test]
    fn a_diagnosis_places_the_records_against_the_slots_read() {
        let s = Schedule::new(Duration::from_secs(10), Duration::from_secs(180)).unwrap();
        let now = Duration::from_secs(36_000);
        let reads = fetch_window(&s, now);
        let diagnose_slots = |slots: &[u64]| {
            let mut survey = crate::store::Survey::default();
            for slot in slots {
                survey.add("g", &slot.to_string());
            }
            diagnose("g", &s, now, &survey, None)
        };
        let (first, last) = (reads.first.0, reads.last.0);
        // The newest record is the slot just before the first one read, or long before.
        for newest in [first - 1, first - 50] {
            let d = diagnose_slots(&[newest - 2, newest]);
            assert_eq!(d.key, "behind", "{}", d.text);
            assert!(
                d.text
                    .contains(&format!("newest record in the store is for slot {newest}"))
                    && d.text.contains("or this host's clock is ahead of theirs"),
                "{}",
                d.text
            );
        }
        let d = diagnose_slots(&[last + 1, last + 3]);
        assert_eq!(d.key, "ahead", "{}", d.text);
        // Records on both sides, or one in the first or the last slot read (the window filled in
        // since): a gap, not a clock.
        for slots in [[first - 1, last + 1], [first - 2, first], [last, last + 2]] {
            let d = diagnose_slots(&slots);
            assert_eq!(d.key, "gap", "{slots:?}: {}", d.text);
            assert!(
                d.text.contains(&format!(
                    "none for the slots this agent reads ({first} to {last})"
                )),
                "{}",
                d.text
            );
        }

        let others = |n: usize| {
            let mut survey = crate::store::Survey::default();
            for i in 0..n {
                survey.add(&format!("other{i}"), "7");
            }
            diagnose("g", &s, now, &survey, None).text
        };
        let five = others(5);
        assert!(five.contains("other4 (1 record(s))"), "{five}");
        assert!(!five.contains("more"), "{five}");
        let six = others(6);
        assert!(
            six.contains("other4 (1 record(s)), and 1 more") && !six.contains("other5"),
            "{six}"
        );
    }

    /// A read counts every value the store had for the slots read, accepted or not; the
    /// syncer's debug form names its group and schedule, never what it read.
    #[tokio::test]
    async fn a_read_counts_what_it_found_and_its_debug_shows_no_record() {
        let clock = ManualClock::at(400);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let k = SlotKey::generate(Slot(100)).unwrap();
        let until = Duration::from_secs(999);
        store
            .create("g", Slot(100), &plain(&s, "g", &k), until)
            .await
            .unwrap();
        store.create("g", Slot(101), b"junk", until).await.unwrap();
        let mut syncer = Syncer::new(store, PlainOpener, "g".into(), s);
        let synced = syncer.sync(clock.now(), &BTreeSet::new()).await.unwrap();
        assert_eq!(
            (synced.found, synced.keys.len(), synced.rejected.len()),
            (2, 1, 1)
        );
        let text = format!("{syncer:?}");
        assert!(
            text.starts_with("Syncer {")
                && text.contains("group: \"g\"")
                && text.contains("schedule"),
            "{text}"
        );
        assert!(
            !text.contains("accepted") && !text.contains(&k.name().to_string()),
            "{text}"
        );
    }

    /// The clock offset to the store is measured once a period, and at once after this host's
    /// clock steps by P/4 or more; it is logged when it crosses P/4 (strictly more), either
    /// way, once per crossing. Whole periods of tokio's paused clock, two wall clocks.
    #[tokio::test(start_paused = true)]
    async fn the_clock_offset_is_measured_once_a_period_and_at_once_after_a_step() {
        use crate::clock::manual::TokioClock;
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let store_clock = TokioClock::at(1_800_000_000);
        let store = Arc::new(MemoryStore::new(Arc::new(store_clock)));
        let clock = TokioClock::at(1_800_000_000);
        clock.step_ms(500);
        let syncer = Syncer::new(store, PlainOpener, "g".into(), s);
        let (_held, held_rx) = watch::channel(BTreeSet::new());
        let (tx, mut rx) = mpsc::channel(1);
        let logs = crate::testlog::start();
        let start = Instant::now();
        tokio::spawn(syncer.run(
            Arc::new(clock.clone()),
            Duration::from_millis(500),
            held_rx,
            tx,
        ));
        // The next measurement: (seconds since the start, offset), and how many reads before it.
        // A period holds at most 9 reads: none measured in 20 is a failure, not a hang (the
        // paused clock would otherwise run on forever).
        async fn next(rx: &mut mpsc::Receiver<SyncReport>, start: Instant) -> (f64, f64, usize) {
            for reads in 0..20 {
                let r = rx.recv().await.expect("the syncer runs");
                assert!(r.result.is_ok());
                if let Some(off) = r.clock_offset {
                    return ((Instant::now() - start).as_secs_f64(), off, reads);
                }
            }
            panic!("no clock offset measured in 20 reads");
        }
        let warned = || logs.text().matches("more than P/4").count();
        let back = || logs.text().matches("back within P/4 of the store").count();

        // At once, then a period later (the first read after it: reads come at least every
        // 0.601 s, the 500 ms poll jittered up to 1.2x, plus 1 ms), with reads between: 0.5 s,
        // then exactly P/4, is not too far.
        let (t0, off, _) = next(&mut rx, start).await;
        assert_eq!((t0, off), (0.0, 0.5));
        clock.step_ms(500);
        let (t1, off, reads) = next(&mut rx, start).await;
        assert!(
            (3.999..=4.61).contains(&t1) && reads >= 4,
            "{t1} after {reads} reads"
        );
        assert_eq!(off, 1.0);
        assert_eq!((warned(), back()), (0, 0), "{}", logs.text());

        // A step of 1.5 s (more than P/4) a second into the period: measured at the next read.
        tokio::time::sleep(Duration::from_secs(1)).await;
        clock.step_ms(1500);
        let (t2, off, _) = next(&mut rx, start).await;
        assert!(
            t2 - t1 < 2.5,
            "measured at {t2}, the step was at {}",
            t1 + 1.0
        );
        assert_eq!(off, 2.5);
        assert_eq!((warned(), back()), (1, 0), "{}", logs.text());
        // Still off a period later: not logged again.
        let (t3, off, _) = next(&mut rx, start).await;
        assert!((3.999..=4.61).contains(&(t3 - t2)), "{t2} {t3}");
        assert_eq!(off, 2.5);
        assert_eq!((warned(), back()), (1, 0), "{}", logs.text());

        // Set right: measured at once, said once.
        clock.step_ms(-2500);
        let (_, off, _) = next(&mut rx, start).await;
        assert_eq!(off, 0.0);
        assert_eq!((warned(), back()), (1, 1), "{}", logs.text());
        let (_, off, _) = next(&mut rx, start).await;
        assert_eq!(off, 0.0);
        assert_eq!((warned(), back()), (1, 1), "{}", logs.text());
    }

    /// A read may take the poll interval, but at least 2 s (a store across a WAN) and at most
    /// 10 s (a hung store must not hold the agent's view for long).
    #[test]
    fn a_read_may_take_the_poll_interval_within_bounds() {
        let ms = |m| read_timeout(Duration::from_millis(m)).as_millis();
        assert_eq!(
            [ms(100), ms(2000), ms(5500), ms(10_000), ms(60_000)],
            [2000, 2000, 5500, 10_000, 10_000]
        );
    }
}
