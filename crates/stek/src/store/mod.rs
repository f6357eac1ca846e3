//! Where records live between the generator and the agents.
//!
//! # The contract every store keeps
//!
//! A store maps `(group, slot)` to at most one record, ever:
//!
//! - **Create-if-absent.** [`Store::create`] stores a record only if the slot has none; it is
//!   atomic across every process that talks to the store, so any number of generators may race
//!   and exactly one record per slot results. The caller learns whether it won and, if it lost,
//!   gets the winner's record back: it must never publish a second key for the slot.
//! - **Compare-and-set repair.** [`Store::replace`] overwrites a slot's value only if it is
//!   still the value the caller read ([`Seen`]: absent, these exact bytes, or an oversize value
//!   of that length), in one atomic step, with the new record's expiry. If anyone changed the
//!   slot in between (another generator repaired it first, an attacker swapped or deleted the
//!   value) nothing is written and the caller learns [`Replaced::Lost`]: it reads the slot again
//!   rather than assume its record is the slot's. So a repair never puts a second key in a slot
//!   that already has a record the caller has not judged. It is meant for values no generator
//!   could have written (junk, a forged or misfiled record, an oversize value); create-if-absent
//!   stays the only way a record of a healthy slot is written. An oversize value is identified
//!   only by its length (where the store tells it): one oversize value swapped for another of
//!   the same length between the read and the replace goes unnoticed, which is harmless, since
//!   neither can be a record.
//! - **Read a window.** [`Store::read_window`] returns the values of the slots `first..=last`
//!   that exist and have not expired, in any order. Slots without a record are simply absent.
//!   It reads exactly the keys of those slots (never a prefix or a range that others could fill
//!   with junk keys between them).
//! - **Size cap before transfer.** Anyone who can write to the store can put a value of any
//!   size under a slot's key. A store never downloads a value larger than
//!   [`MAX_RECORD_LEN`](stek_core::record::MAX_RECORD_LEN): it learns the size first (Redis) or
//!   stops reading the answer just past the largest encoding of a record (etcd), and reports the
//!   slot as [`Found::Oversize`] (from reads) or [`Created::Oversize`] (from a create that lost
//!   to such a value). Such a value still occupies the slot for create-if-absent. A value of
//!   exactly `MAX_RECORD_LEN` bytes is a record. So one read costs at most
//!   `slots × MAX_RECORD_LEN` of memory, whatever the store holds.
//! - **Expiry.** A record carries its expiry time (the moment its key leaves every window, see
//!   `Schedule::erase_at`); past it the store must stop returning it and should delete it (TTL,
//!   lease). Expiry may lag by the store's own granularity, never run early by more than clock
//!   skew: readers ignore out-of-window records anyway.
//! - **Untrusted content.** Whatever a store returns is untrusted: it may be truncated, forged,
//!   replayed from another slot or group, or stale. Readers decode with `Record::decode` (size
//!   capped) and check the header against their own expectations; stores do not validate.
//! - **Change notification (optional).** [`Store::changes`] may return a receiver that ticks
//!   when any record of a group appears; readers still poll, since notifications can be lost.
//!
//! Errors are [`StoreError`]: callers treat every error as "the store is unreachable for now"
//! and follow the failure policy (docs/DESIGN.md §5).

pub mod access;
pub mod any;
mod client_tls;
pub mod etcd;
pub mod memory;
pub mod redis;
pub mod sentinel;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use stek_core::{KeyBytes, Slot};
use tokio::sync::watch;

pub use access::{LoadedAccess, StoreAccess};
pub use any::AnyStore;
pub use etcd::EtcdStore;
pub use memory::MemoryStore;
pub use redis::RedisStore;

/// The outcome of [`Store::create`].
#[derive(Debug)]
pub enum Created {
    /// Our record was stored.
    Won,
    /// The slot already had a record; here it is.
    Lost(KeyBytes),
    /// The slot already holds a value larger than
    /// [`MAX_RECORD_LEN`](stek_core::record::MAX_RECORD_LEN), which no generator writes; it was
    /// not downloaded, and ours was not stored.
    Oversize {
        /// Its length in bytes, where the store tells it without sending the value (Redis).
        len: Option<u64>,
    },
}

/// The outcome of [`Store::replace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// The slot still held what the caller had seen; it now holds the new record.
    Won,
    /// The slot changed since the caller read it (or holds something the caller cannot have
    /// seen, such as a key of another type): nothing was written. Read the slot again.
    Lost,
}

/// What a caller read in a slot, for [`Store::replace`] to check that it is still there.
#[derive(Debug, Clone)]
pub enum Seen {
    /// No value.
    Absent,
    /// A value of at most [`MAX_RECORD_LEN`](stek_core::record::MAX_RECORD_LEN) bytes, these
    /// exact bytes (compared in full: values are capped, and a digest would need a hash the
    /// store's scripting may lack, such as SHA-256 in Redis 7.0 Lua).
    Value(KeyBytes),
    /// A value over the cap, of this length where the store told it.
    Oversize {
        /// Its length in bytes, if known.
        len: Option<u64>,
    },
}

impl Seen {
    /// What a read returned for one slot (`None`: the slot had no value).
    pub fn of(found: Option<&Found>) -> Seen {
        match found {
            None => Seen::Absent,
            Some(Found::Record(r)) => Seen::Value(r.clone()),
            Some(Found::Oversize { len }) => Seen::Oversize { len: *len },
        }
    }

    /// Whether the value `now` (as a store found it) is still what was seen.
    pub fn matches(&self, now: Option<&Found>) -> bool {
        match (self, now) {
            (Seen::Absent, None) => true,
            (Seen::Value(a), Some(Found::Record(b))) => a.as_slice() == b.as_slice(),
            (Seen::Oversize { len: a }, Some(Found::Oversize { len: b })) => match (a, b) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            },
            _ => false,
        }
    }
}

/// What [`Store::read_window`] found in one slot.
#[derive(Debug, Clone)]
pub enum Found {
    /// A value of at most [`MAX_RECORD_LEN`](stek_core::record::MAX_RECORD_LEN) bytes:
    /// untrusted, to be decoded and checked like every record.
    Record(KeyBytes),
    /// A value larger than `MAX_RECORD_LEN`, which cannot be a record: it was not downloaded.
    /// Readers report it (an attacker or a confused writer has the store) and ignore it.
    Oversize {
        /// Its length in bytes, where the store tells it without sending the value (Redis).
        len: Option<u64>,
    },
}

impl Found {
    /// The record, unless the value was oversize.
    pub fn record(&self) -> Option<&KeyBytes> {
        match self {
            Found::Record(r) => Some(r),
            Found::Oversize { .. } => None,
        }
    }
}

/// The cause of a [`StoreError`]: the client library's, the transport's or the decoder's error.
/// Shared, so that a `StoreError` stays cheap to clone.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Why a store operation failed. `Display` says what failed; [`std::error::Error::source`] says
/// why, where there is an underlying error (show the whole chain with
/// [`Chain`](crate::error::Chain) or `anyhow`'s `{:#}`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StoreError {
    /// The store URL is malformed or names no store stek knows.
    BadUrl {
        /// What is wrong with it (the URL itself only where it cannot carry a password).
        reason: String,
        /// The client library's verdict, if it gave one.
        source: Option<Cause>,
    },
    /// The store could not be reached, did not answer in time, broke the connection or said it
    /// is unavailable (no leader, loading). The request may or may not have been applied.
    Unavailable {
        /// The store (and, where known, the endpoint and request), e.g. `Redis` or
        /// `etcd (/v3/kv/range)`.
        store: String,
        /// Why: the transport's error, or each endpoint's failure.
        source: Cause,
    },
    /// The store refused the request and said why, e.g. `READONLY You can't write against a
    /// read only replica.` or `etcdserver: request is too large`.
    Refused {
        /// The store, endpoint and request.
        store: String,
        /// The store's own message, made fit for a log line.
        message: String,
    },
    /// The store answered something the protocol does not allow: a reply of the wrong type,
    /// malformed JSON, an oversized or undecodable value.
    BadAnswer {
        /// The store, endpoint and request.
        store: String,
        /// What was wrong with the answer.
        what: String,
        /// The decoder's error, if there is one.
        source: Option<Cause>,
    },
    /// stek could not encode its own request (a bug in stek, not a store problem).
    Encode {
        /// The store and request.
        store: String,
        /// The encoder's error.
        source: Cause,
    },
    /// The store access settings (`--store-ca`, `--store-cert`, `--store-key`) cannot be used:
    /// a file that holds no certificate or key, no system roots.
    Access {
        /// What is wrong, naming the setting.
        what: String,
        /// The parser's or TLS library's verdict, if it gave one.
        source: Option<Cause>,
    },
    /// A record is larger than the store accepts (the length is given).
    TooLarge(usize),
    /// A window read asks for more slots than the store reads at once.
    WindowTooLarge {
        /// The first slot asked for.
        first: Slot,
        /// The last slot asked for.
        last: Slot,
        /// The most slots one read may span.
        max: u64,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::BadUrl { reason, .. } => write!(f, "invalid store URL: {reason}"),
            StoreError::Unavailable { store, .. } => write!(f, "{store} is unavailable"),
            StoreError::Refused { store, message } => {
                write!(f, "{store} refused the request: {message}")
            }
            StoreError::BadAnswer { store, what, .. } => {
                write!(f, "{store} sent an unusable answer: {what}")
            }
            StoreError::Encode { store, .. } => write!(f, "cannot encode a request to {store}"),
            StoreError::Access { what, .. } => {
                write!(f, "the store access settings are unusable: {what}")
            }
            StoreError::TooLarge(n) => write!(f, "record of {n} bytes is too large for the store"),
            StoreError::WindowTooLarge { first, last, max } => {
                write!(f, "a window of slots {first}..={last} exceeds {max} slots")
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::BadUrl { source, .. }
            | StoreError::BadAnswer { source, .. }
            | StoreError::Access { source, .. } => source.as_deref().map(|e| e as _),
            StoreError::Unavailable { source, .. } | StoreError::Encode { source, .. } => {
                Some(&**source)
            }
            StoreError::Refused { .. }
            | StoreError::TooLarge(_)
            | StoreError::WindowTooLarge { .. } => None,
        }
    }
}

/// What a store holds, by key name only (values are never read): an agent that finds no record
/// in its window surveys the store to tell a group or schedule mismatch from an idle fleet.
/// Key names are untrusted like values: names that are not exactly a record's key are skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Survey {
    /// The groups with records, and their slots in ascending order.
    pub groups: BTreeMap<String, Vec<Slot>>,
    /// Whether the listing stopped at [`SURVEY_LIMIT`] keys before the end.
    pub truncated: bool,
}

/// The most keys a survey lists: it bounds its cost, and its memory, whatever the store holds.
pub const SURVEY_LIMIT: usize = 1000;

impl Survey {
    /// Counts the key `group`/`slot` (as the store spells them), if the group is a valid group
    /// name and the slot a number.
    pub fn add(&mut self, group: &str, slot: &str) {
        let Ok(n) = slot.parse::<u64>() else { return };
        if !stek_core::record::valid_group(group) || !slot.bytes().all(|b| b.is_ascii_digit()) {
            return;
        }
        let slots = self.groups.entry(group.to_owned()).or_default();
        if let Err(at) = slots.binary_search(&Slot(n)) {
            slots.insert(at, Slot(n));
        }
    }
}

/// A store of records, one per `(group, slot)`. See the module documentation for the contract.
pub trait Store: Send + Sync + 'static {
    /// Stores `record` for `(group, slot)` unless the slot already has one; the record expires at
    /// `expires_at` (time since the Unix epoch).
    fn create(
        &self,
        group: &str,
        slot: Slot,
        record: &[u8],
        expires_at: Duration,
    ) -> impl Future<Output = Result<Created, StoreError>> + Send;

    /// Replaces the value of `(group, slot)` with `record`, expiring at `expires_at`, only if the
    /// slot still holds what `seen` describes; atomic across every process that talks to the
    /// store (see the module documentation). `record` must be at most `MAX_RECORD_LEN` bytes. An
    /// `expires_at` already past writes nothing and answers [`Replaced::Lost`]: such a record
    /// has left every window, so the slot needs no repair.
    fn replace(
        &self,
        group: &str,
        slot: Slot,
        seen: &Seen,
        record: &[u8],
        expires_at: Duration,
    ) -> impl Future<Output = Result<Replaced, StoreError>> + Send;

    /// The unexpired values of `group` for slots `first..=last`, each either a record or the
    /// mark of an oversize value (never downloaded).
    fn read_window(
        &self,
        group: &str,
        first: Slot,
        last: Slot,
    ) -> impl Future<Output = Result<Vec<(Slot, Found)>, StoreError>> + Send;

    /// A receiver that ticks whenever a record of `group` is created, if the store can notify.
    fn changes(&self, group: &str) -> Option<watch::Receiver<u64>>;

    /// Deletes every record of `group` for slots before `slot`, for stores whose expiry alone is
    /// not trustworthy (etcd renews every lease to its full TTL when a leader is elected, so a
    /// restart would keep sealed records far past their erasure). Generators call it each round
    /// with the oldest slot still in any window. Returns how many records were deleted; stores
    /// whose expiry is exact may do nothing.
    fn remove_before(
        &self,
        group: &str,
        slot: Slot,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = (group, slot);
        async { Ok(0) }
    }

    /// The groups and slots the store holds records for (at most [`SURVEY_LIMIT`] keys listed,
    /// no value read), or `Ok(None)` where the store cannot list them.
    fn survey(&self) -> impl Future<Output = Result<Option<Survey>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// The store's clock (time since the Unix epoch), if it has one to offer: agents measure
    /// their clock offset against it. `Ok(None)` when the store cannot tell.
    fn server_time(&self) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
        async { Ok(None) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn errors_keep_their_causes_and_say_them_once() {
        let e = StoreError::Unavailable {
            store: "Redis".into(),
            source: Arc::new(std::io::Error::other("Connection refused")),
        };
        assert_eq!(e.to_string(), "Redis is unavailable");
        assert_eq!(e.source().unwrap().to_string(), "Connection refused");
        assert_eq!(
            crate::error::Chain(&e).to_string(),
            "Redis is unavailable: Connection refused"
        );
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        let e = StoreError::BadAnswer {
            store: "etcd at h:1 (/v3/kv/range)".into(),
            what: "malformed JSON".into(),
            source: Some(Arc::new(json)),
        };
        assert!(e.source().unwrap().is::<serde_json::Error>());
        assert_eq!(
            e.to_string(),
            "etcd at h:1 (/v3/kv/range) sent an unusable answer: malformed JSON"
        );
        let e = StoreError::Refused {
            store: "Redis".into(),
            message: "READONLY You can't write against a read only replica.".into(),
        };
        assert!(e.source().is_none());
        assert!(e
            .to_string()
            .ends_with("READONLY You can't write against a read only replica."));
        assert!(StoreError::TooLarge(70_000).source().is_none());
        // Cheap to clone, causes included.
        let e2 = StoreError::Encode {
            store: "etcd (/v3/kv/txn)".into(),
            source: Arc::new(std::io::Error::other("x")),
        };
        assert!(e2.clone().source().is_some());
    }
}

#[doc(hidden)]
pub mod conformance {
    //! The suite every store passes: the embedded store's unit tests and the integration tests
    //! of the network stores (which cannot see `#[cfg(test)]` items) run the same checks. Not
    //! part of the API.
    use super::*;

    /// Runs the suite with time in seconds; `advance` moves the store's clock forward.
    pub async fn run<S: Store>(store: &S, now: Duration, advance: impl Fn(Duration)) {
        run_scaled(store, now, Duration::from_secs(1), |d| {
            advance(d);
            std::future::ready(())
        })
        .await
    }

    /// Runs the suite with every expiry a multiple of `unit` after `now` (the store's current
    /// time), up to 60 units. `advance` lets that much store time pass: a store that follows the
    /// real clock (Redis, etcd) must really wait, so such stores pass a short `unit`.
    pub async fn run_scaled<S, F>(
        store: &S,
        now: Duration,
        unit: Duration,
        advance: impl Fn(Duration) -> F,
    ) where
        S: Store,
        F: Future<Output = ()>,
    {
        let g = "conformance";
        let (a, b) = (b"record-a".to_vec(), b"record-b".to_vec());
        let expires = now + unit * 10;

        // Create-if-absent: the first write wins, the second gets the winner back.
        assert!(matches!(
            store.create(g, Slot(7), &a, expires).await,
            Ok(Created::Won)
        ));
        match store.create(g, Slot(7), &b, expires).await {
            Ok(Created::Lost(winner)) => assert_eq!(winner.as_slice(), a.as_slice()),
            other => panic!("second create must lose, got {other:?}"),
        }
        // Groups are separate namespaces.
        assert!(matches!(
            store.create("other", Slot(7), &b, expires).await,
            Ok(Created::Won)
        ));

        // Read a window: only existing slots, only this group.
        assert!(matches!(
            store.create(g, Slot(9), &b, expires + unit * 10).await,
            Ok(Created::Won)
        ));
        let mut got = store.read_window(g, Slot(6), Slot(9)).await.unwrap();
        got.sort_by_key(|(s, _)| *s);
        let got: Vec<(u64, Vec<u8>)> = got.into_iter().map(|(s, r)| (s.0, bytes(&r))).collect();
        assert_eq!(got, vec![(7, a.clone()), (9, b.clone())]);
        assert!(store
            .read_window(g, Slot(10), Slot(20))
            .await
            .unwrap()
            .is_empty());

        // A survey (where the store offers one) lists groups and slots, never values.
        if let Some(survey) = store.survey().await.unwrap() {
            assert_eq!(
                survey.groups.get(g).map(Vec::as_slice),
                Some(&[Slot(7), Slot(9)][..]),
                "{survey:?}"
            );
            assert_eq!(
                survey.groups.get("other").map(Vec::as_slice),
                Some(&[Slot(7)][..]),
                "{survey:?}"
            );
            assert!(!survey.truncated);
        }

        // Concurrent creators: exactly one wins.
        let results = futures_join_all(
            (0..16u8).map(|i| async move { store.create(g, Slot(100), &[i], expires).await }),
        )
        .await;
        let wins = results
            .iter()
            .filter(|r| matches!(r, Ok(Created::Won)))
            .count();
        assert_eq!(wins, 1);
        let stored = store.read_window(g, Slot(100), Slot(100)).await.unwrap();
        assert_eq!(stored.len(), 1);
        for r in results {
            if let Ok(Created::Lost(w)) = r {
                assert_eq!(w.to_vec(), bytes(&stored[0].1));
            }
        }

        // Compare-and-set: a replace wins only over the value it saw, and a loser writes nothing.
        let c = b"record-c".to_vec();
        match store
            .replace(g, Slot(9), &Seen::Value(a.clone().into()), &c, expires)
            .await
        {
            Ok(Replaced::Lost) => {}
            other => panic!("a replace of a value never seen must lose, got {other:?}"),
        }
        let nine = store.read_window(g, Slot(9), Slot(9)).await.unwrap();
        assert_eq!(bytes(&nine[0].1), b, "a lost replace wrote");
        // Two generators saw the same value: the first replace wins, the second finds it
        // changed and leaves the winner's record alone (no second key in the slot).
        let seen = Seen::of(Some(&nine[0].1));
        assert!(seen.matches(Some(&nine[0].1)));
        assert!(matches!(
            store
                .replace(g, Slot(9), &seen, &c, expires + unit * 10)
                .await,
            Ok(Replaced::Won)
        ));
        assert!(matches!(
            store
                .replace(g, Slot(9), &seen, &a, expires + unit * 10)
                .await,
            Ok(Replaced::Lost)
        ));
        let nine = store.read_window(g, Slot(9), Slot(9)).await.unwrap();
        assert_eq!(bytes(&nine[0].1), c);
        // Racing replacers of one seen value: exactly one wins.
        let seen = Seen::Value(c.clone().into());
        let results = futures_join_all((0..8u8).map(|i| {
            let seen = &seen;
            async move {
                let r = store
                    .replace(g, Slot(9), seen, &[b'r', i], expires + unit * 10)
                    .await;
                (i, r)
            }
        }))
        .await;
        let won: Vec<u8> = results
            .iter()
            .filter(|(_, r)| matches!(r, Ok(Replaced::Won)))
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
        let nine = store.read_window(g, Slot(9), Slot(9)).await.unwrap();
        assert_eq!(bytes(&nine[0].1), vec![b'r', won[0]]);
        // Restore slot 9's record for the expiry checks below (its expiry stays the same).
        let seen = Seen::of(Some(&nine[0].1));
        assert!(matches!(
            store
                .replace(g, Slot(9), &seen, &b, expires + unit * 10)
                .await,
            Ok(Replaced::Won)
        ));
        // "Absent" is a seen state too: it loses once the slot is taken, and over a vanished
        // slot it writes like create-if-absent.
        assert!(matches!(
            store.replace(g, Slot(9), &Seen::Absent, &c, expires).await,
            Ok(Replaced::Lost)
        ));
        assert!(matches!(
            store
                .replace(g, Slot(8), &Seen::Value(a.clone().into()), &c, expires)
                .await,
            Ok(Replaced::Lost)
        ));
        assert!(store
            .read_window(g, Slot(8), Slot(8))
            .await
            .unwrap()
            .is_empty());
        assert!(matches!(
            store.replace(g, Slot(8), &Seen::Absent, &c, expires).await,
            Ok(Replaced::Won)
        ));

        // Expiry: slots 7 and 8 expire at `expires`, slot 9 ten units later (its replaced
        // record carries the new expiry).
        advance(unit * 11).await;
        let left: Vec<u64> = store
            .read_window(g, Slot(0), Slot(200))
            .await
            .unwrap()
            .into_iter()
            .map(|(s, _)| s.0)
            .collect();
        assert_eq!(left, vec![9]);
        // An expired slot can be created again (a new record after expiry is a new epoch of the
        // store, never a second live key).
        assert!(matches!(
            store.create(g, Slot(7), &b, expires + unit * 60).await,
            Ok(Created::Won)
        ));
    }

    fn bytes(f: &Found) -> Vec<u8> {
        match f {
            Found::Record(r) => r.to_vec(),
            Found::Oversize { .. } => panic!("an oversize value where a record was stored"),
        }
    }

    /// Checks the size cap before transfer. `plant(group, slot, value, expires_at)` writes a
    /// value of any size under a slot's key behind the store's back, as an attacker with write
    /// access to the store would; `now` is the store's current time.
    pub async fn run_oversize<S, F>(
        store: &S,
        now: Duration,
        plant: impl Fn(&'static str, Slot, Vec<u8>, Duration) -> F,
    ) where
        S: Store,
        F: Future<Output = ()>,
    {
        use stek_core::record::MAX_RECORD_LEN;
        let g = "oversize";
        let expires = now + Duration::from_secs(600);
        // The largest record, one byte more, and a value far past the cap (a store that
        // downloaded it would still pass a check made afterwards: the other tests measure the
        // memory of an agent that reads such values).
        plant(g, Slot(1), vec![1; MAX_RECORD_LEN], expires).await;
        plant(g, Slot(2), vec![2; MAX_RECORD_LEN + 1], expires).await;
        plant(g, Slot(3), vec![3; 4 * 1024 * 1024], expires).await;
        assert!(matches!(
            store.create(g, Slot(4), b"record", expires).await,
            Ok(Created::Won)
        ));
        let mut got = store.read_window(g, Slot(0), Slot(5)).await.unwrap();
        got.sort_by_key(|(s, _)| *s);
        let seen: Vec<(u64, String)> = got
            .iter()
            .map(|(s, f)| {
                let what = match f {
                    Found::Record(r) => format!("record of {}", r.len()),
                    Found::Oversize { len: Some(n) } => format!("oversize {n}"),
                    Found::Oversize { len: None } => "oversize".to_owned(),
                };
                (s.0, what)
            })
            .collect();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert_eq!(seen[0], (1, format!("record of {MAX_RECORD_LEN}")));
        assert_eq!(seen[3], (4, "record of 6".to_owned()));
        for (i, slot, len) in [(1, 2, MAX_RECORD_LEN + 1), (2, 3, 4 * 1024 * 1024)] {
            assert_eq!(got[i].0, Slot(slot), "{seen:?}");
            match got[i].1 {
                // A store that tells the length must tell the right one.
                Found::Oversize { len: Some(n) } => assert_eq!(n, len as u64),
                Found::Oversize { len: None } => {}
                Found::Record(_) => panic!("slot {slot} returned an oversize value"),
            }
        }
        // An oversize value occupies its slot: create-if-absent neither replaces it nor
        // downloads it.
        for slot in [2, 3] {
            match store.create(g, Slot(slot), b"mine", expires).await {
                Ok(Created::Oversize { len }) => {
                    assert!(len.is_none_or(|n| n > MAX_RECORD_LEN as u64), "{len:?}")
                }
                other => panic!("create over an oversize value of slot {slot}: {other:?}"),
            }
        }
        match store.create(g, Slot(1), b"mine", expires).await {
            Ok(Created::Lost(r)) => assert_eq!(r.len(), MAX_RECORD_LEN),
            other => panic!("create over the largest record: {other:?}"),
        }
        // A repair replaces an oversize value it saw, by its length where known; a replace that
        // saw a record there, or nothing, loses. (Slot 6, so the slots above keep their values
        // for the callers' own checks.)
        let big = MAX_RECORD_LEN + 100;
        plant(g, Slot(6), vec![6; big], expires).await;
        let got6 = store.read_window(g, Slot(6), Slot(6)).await.unwrap();
        assert_eq!(got6.len(), 1);
        assert!(got6[0].1.record().is_none(), "{:?}", got6[0].1);
        let mut wrongs = vec![Seen::Value(b"mine".to_vec().into()), Seen::Absent];
        // A store that tells lengths (Redis) tells an oversize value from another; one that
        // does not (etcd stops reading) can only tell it is oversize.
        if let Found::Oversize { len: Some(n) } = got6[0].1 {
            assert_eq!(n, big as u64);
            wrongs.push(Seen::Oversize { len: Some(n + 1) });
        }
        for wrong in wrongs {
            match store.replace(g, Slot(6), &wrong, b"mine", expires).await {
                Ok(Replaced::Lost) => {}
                other => panic!("a replace that saw {wrong:?} over an oversize value: {other:?}"),
            }
        }
        assert!(matches!(
            store
                .replace(g, Slot(6), &Seen::of(Some(&got6[0].1)), b"mine", expires)
                .await,
            Ok(Replaced::Won)
        ));
        let got6 = store.read_window(g, Slot(6), Slot(6)).await.unwrap();
        assert_eq!(bytes(&got6[0].1), b"mine");
        // A window made only of oversize values reads as marks, not as an error.
        let marks = store.read_window(g, Slot(2), Slot(3)).await.unwrap();
        assert_eq!(marks.len(), 2);
        assert!(marks.iter().all(|(_, f)| f.record().is_none()));
    }

    async fn futures_join_all<F: Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut out = Vec::new();
        let futs: Vec<_> = futs.map(Box::pin).collect();
        // Poll them together so the creates interleave.
        let mut set = futs.into_iter().map(Some).collect::<Vec<_>>();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for slot in set.iter_mut() {
                if let Some(f) = slot {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => {
                            out.push(v);
                            *slot = None;
                        }
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        out
    }
}
