//! The etcd store: one etcd key per record, held by a lease that expires with the record.
//!
//! # Why the JSON gateway
//!
//! etcd's Rust gRPC client needs `protoc` at build time, and `cargo build` must work on a machine
//! with nothing but Rust; and the gateway's streamed answers let every read stop at a size cap
//! (`docs/STORE-ETCD.md` weighs both for TLS, authentication, watch and fail-over). etcd (3.4
//! and later) serves the same v3 API as JSON over HTTP/1.1 through its built-in gRPC gateway at
//! `/v3/` (3.3 called it `/v3beta/`, 3.5 dropped that alias), so this module speaks that with a
//! plain HTTP client (hyper; rustls for `etcds://`). In that JSON, keys and values are base64 and 64-bit
//! integers are strings; fields at their default value (`false`, `0`, empty) are left out.
//!
//! Requests, all `POST` with a JSON body except the last:
//! - `/v3/lease/grant`, `/v3/kv/txn`, `/v3/lease/revoke`: [`Store::create`];
//! - `/v3/kv/range`: [`Store::read_window`], one request per slot of the window that the
//!   group's watch has not already told (see [`Mirror`]);
//! - `/v3/watch`: [`Store::changes`], a response streamed as one JSON message per line;
//! - `GET /version`: [`EtcdStore::server_time`] reads the `Date` header of the answer;
//! - `/v3/auth/authenticate`: a user's token, sent in `Authorization` with every request;
//! - `/v3/kv/deleterange` of `stek/.write-probe`: [`EtcdStore::can_write`].
//!
//! # Layout
//!
//! The record of `(group, slot)` lives at `stek/<group>/<slot as 20 zero-padded digits>`, so the
//! keys of a group sort in slot order (`remove_before` deletes the old ones with one range). A
//! window is read key by key, never as a range: anyone who can write to etcd could fill a range
//! with junk keys between the slots' keys and inflate its answer. Each record is written
//! once, by a transaction that puts it only if the key has never been created
//! (`create_revision == 0`): its etcd `version` stays 1 unless a generator repairs the slot
//! ([`Store::replace`]: a transaction on the key's `mod_revision`, for values no generator could
//! have written). It is attached to a lease whose TTL ends at the record's expiry, so etcd
//! deletes it by itself.
//!
//! # Untrusted answers
//!
//! etcd and the network are untrusted like every store: answers are read up to a size cap. An
//! answer about one slot is read only up to [`MAX_SLOT_ANSWER_LEN`], a little more than a record
//! of [`MAX_RECORD_LEN`] bytes encodes to; past it the transfer is abandoned and the slot is
//! reported as [`Found::Oversize`] (or [`Created::Oversize`]). Values that are not base64 and
//! keys that are not exactly the slot asked for are skipped, and error messages from etcd are shortened and stripped of control characters before
//! they reach a log line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::http::uri::Authority;
use hyper::{header, Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};
use stek_core::record::MAX_RECORD_LEN;

use crate::lock;
use stek_core::{jitter, Backoff, Slot};
use tokio::sync::watch;
use zeroize::{Zeroize, Zeroizing};

use super::{Created, Found, Replaced, Seen, Store, StoreError};
use crate::clock::{Clock, SystemClock};
use crate::error::Chain;

/// etcd's registered client port, used when a URL names a host without a port.
const DEFAULT_PORT: u16 = 2379;
/// How long one endpoint gets to accept a TCP connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one endpoint gets to answer a request in full (or, for a watch, to start answering).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one member gets to answer a request while other members remain to be tried; the last
/// one gets [`REQUEST_TIMEOUT`]. A follower that forwarded a write to a leader that then died
/// answers only when etcd's own timeout (about 6 s) fires, though a new leader is elected within
/// about a second: waiting that long for it would delay a generator's round by as much (seen with
/// the leader of a 3-member cluster killed just before a round). Healthy members answer in
/// milliseconds, and every request stek sends is safe to send again (create and replace know
/// their own lease, deletes are idempotent).
const FAILOVER_TIMEOUT: Duration = Duration::from_millis(1500);
/// The largest answer read from etcd where no tighter cap applies (slots are read with
/// [`MAX_SLOT_ANSWER_LEN`]): lease and delete answers, a few hundred bytes when honest.
const MAX_RESPONSE_LEN: usize = 32 * 1024 * 1024;
/// The largest answer read about one slot (a range of one key, or a create's transaction): the
/// base64 of a record of [`MAX_RECORD_LEN`] bytes plus room for the JSON around it (header, key,
/// revisions, lease: a few hundred bytes). A longer answer holds a value that cannot be a record.
const MAX_SLOT_ANSWER_LEN: usize = MAX_RECORD_LEN.div_ceil(3) * 4 + 4096;
/// How many slots of a window are read at once: bounds the memory of a read to this many
/// answers of [`MAX_SLOT_ANSWER_LEN`] and the connections opened to etcd.
const WINDOW_READS_IN_FLIGHT: usize = 8;
/// The most slots one [`Store::read_window`] reads (one request each), as for Redis.
pub const MAX_WINDOW_SLOTS: u64 = super::redis::MAX_WINDOW_SLOTS;
/// The largest answer read from an endpoint that is not answering a request successfully.
const MAX_ERROR_BODY_LEN: usize = 64 * 1024;
/// How much of etcd's error message is kept.
const MAX_ERROR_MESSAGE_CHARS: usize = 300;
/// The largest single message of a watch stream; a larger one ends the stream (it is then
/// reopened, which costs one spurious tick). A message carries the values put (etcd cannot
/// watch keys only), so anyone who writes a huge value under the group's prefix sends it to
/// every agent: the cap bounds what that costs. Honest messages hold a few records of at most
/// 64 KiB (88 KiB in base64) each: a generator creates at most a couple per group and round.
const MAX_WATCH_MESSAGE_LEN: usize = 1024 * 1024;
/// A watch asks etcd for progress notifications, sent every 10 minutes by default; a stream
/// silent for longer than this is presumed dead (a peer that vanished without closing TCP) and is
/// reopened.
const WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(11 * 60);
/// Backoff between attempts to reopen a watch: doubling from the first to the largest, each
/// delay jittered so that many agents whose watch broke at once do not reconnect in step.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The header that makes etcd refuse requests and end watches on a member without a leader.
const REQUIRE_LEADER: (&str, &str) = ("grpc-metadata-hasleader", "true");
/// etcd refuses leases longer than this (`etcdserver: too large lease TTL`).
const MAX_LEASE_TTL_SECS: u64 = 9_000_000_000;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;
type Watches = Arc<Mutex<HashMap<String, GroupWatch>>>;

/// The watch of one group: the channel its receivers tick on and what its stream has told.
struct GroupWatch {
    tx: watch::Sender<u64>,
    mirror: Arc<Mutex<Mirror>>,
}

/// A store kept in an etcd cluster (`etcd://HOST:PORT[,HOST:PORT...]`, `etcds://` for TLS),
/// spoken to through etcd's JSON gateway over HTTP/1.1. See the module documentation for the
/// layout.
///
/// Connections are made lazily and pooled. Requests go to the endpoint that last answered and
/// fail over to the others in URL order when it cannot be reached, does not answer in time (1.5 s
/// while other members remain, 5 s for the last), or answers that it is unavailable (no leader,
/// leader changed). Record expiry follows the injected clock ([`EtcdStore::with_clock`]), the
/// system clock by default.
pub struct EtcdStore {
    conn: Arc<Conn>,
    clock: Arc<dyn Clock>,
    /// One watch task per group with subscribers; see [`EtcdStore::changes`].
    watches: Watches,
    /// Dropped with the store, which tells every watch task to stop.
    shutdown: watch::Sender<()>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.conn.endpoints)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// A store for `etcd://HOST:PORT[,HOST:PORT...]` (the port defaults to 2379).
    ///
    /// Nothing is sent yet: the first operation connects, so a cluster that is down at start-up
    /// is reported by that operation, as every later outage is. Fails only on a malformed URL.
    /// Needs a Tokio runtime when operations run, not when called.
    pub fn connect(url: &str) -> Result<EtcdStore, StoreError> {
        Self::connect_with(url, &super::LoadedAccess::default())
    }

    /// [`EtcdStore::connect`] with TLS (`etcds://`: the server verified against the CA, or the
    /// system's roots; a client certificate if given) and an etcd user (authenticated on first
    /// use, again whenever etcd says the token is invalid: simple tokens expire).
    ///
    /// Fails on a malformed URL, on TLS files given for `etcd://`, and on TLS files that hold no
    /// usable certificate or key.
    pub fn connect_with(url: &str, access: &super::LoadedAccess) -> Result<EtcdStore, StoreError> {
        let (tls, endpoints) = parse_url(url)?;
        let tls_config = if tls {
            super::client_tls::client_config(access)?
        } else {
            if access.ca_pem.is_some() || access.cert_pem.is_some() || access.key_pem.is_some() {
                return Err(StoreError::BadUrl {
                    reason: "TLS files given for etcd://, which does not use TLS: use etcds://"
                        .into(),
                    source: None,
                });
            }
            super::client_tls::unused_config()
        };
        let auth = match (&access.user, &access.password) {
            (Some(user), Some(password)) => Some(Auth {
                user: user.clone(),
                password: password.clone(),
                token: tokio::sync::Mutex::new(None),
            }),
            (None, None) => None,
            _ => {
                return Err(StoreError::BadUrl {
                    reason: "an etcd user needs both --store-user and --store-password-file".into(),
                    source: None,
                })
            }
        };
        let mut connector = HttpConnector::new();
        // The TLS connector below chooses by the URI's scheme.
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        // Keepalive probes find a peer that vanished without closing the connection, which
        // matters for a watch stream that may legitimately stay silent for minutes.
        connector.set_keepalive(Some(Duration::from_secs(30)));
        connector.set_keepalive_interval(Some(Duration::from_secs(10)));
        connector.set_keepalive_retries(Some(3));
        let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_config);
        // etcds:// never falls back to plain HTTP; etcd:// never asks for TLS (its URIs are
        // http).
        let https = if tls {
            https.https_only()
        } else {
            https.https_or_http()
        };
        let https = https.enable_http1().wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            // Reads of a window open up to WINDOW_READS_IN_FLIGHT connections at once; one idle
            // connection is kept for the next request (agents mostly send one at a time: a clock
            // read per period, a read of a slot the watch did not bring). More would hold file
            // descriptors on both sides for every agent of a large fleet.
            .pool_max_idle_per_host(1)
            .build(https);
        Ok(EtcdStore {
            conn: Arc::new(Conn {
                endpoints,
                tls,
                auth,
                client,
                preferred: AtomicUsize::new(0),
            }),
            clock: Arc::new(SystemClock::new()),
            watches: Arc::default(),
            shutdown: watch::channel(()).0,
        })
    }

    /// Uses `clock` to turn expiry times into lease TTLs. Give it the clock that computes the
    /// `expires_at` passed to [`Store::create`].
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The etcd member's clock, as time since the Unix epoch, for measuring this host's clock
    /// offset.
    ///
    /// It comes from the HTTP `Date` header, which has a resolution of one second and is
    /// truncated; the result is the middle of that second, so it is within half a second of the
    /// member's clock at the moment it answered (add half the round trip for the caller's
    /// uncertainty). Good enough for the warning threshold of P/4 with periods of minutes or more.
    pub async fn server_time(&self) -> Result<Duration, StoreError> {
        let reply = self
            .conn
            .exchange(Method::GET, "/version", Bytes::new(), MAX_ERROR_BODY_LEN)
            .await?;
        if reply.status != StatusCode::OK {
            return Err(reply.refused("/version"));
        }
        let bad = |what: &str| StoreError::BadAnswer {
            store: at(&reply.endpoint, "/version"),
            what: what.to_owned(),
            source: None,
        };
        let date = reply.date.ok_or_else(|| bad("no Date header"))?;
        let since_epoch = date
            .duration_since(UNIX_EPOCH)
            .map_err(|_| bad("a Date before 1970"))?;
        Ok(since_epoch + Duration::from_millis(500))
    }

    /// The value of `(group, slot)`, if any, read only up to [`MAX_SLOT_ANSWER_LEN`].
    /// `Ok(None)` also for a value that is not base64 (which etcd never sends) or a key other
    /// than the one asked for.
    async fn get(&self, group: &str, slot: Slot) -> Result<Option<Found>, StoreError> {
        self.get_at(group, slot, None).await
    }

    /// [`EtcdStore::get`], only if the key was last modified at `mod_revision` (if given):
    /// `Ok(None)` if it was modified since or is gone.
    async fn get_at(
        &self,
        group: &str,
        slot: Slot,
        mod_revision: Option<i64>,
    ) -> Result<Option<Found>, StoreError> {
        self.range_slot(group, slot, mod_revision)
            .await
            .map(|(_, found)| found)
    }

    /// [`EtcdStore::get_at`], with the revision etcd answered at (`None` for an answer abandoned
    /// at the cap, or one without a header).
    async fn range_slot(
        &self,
        group: &str,
        slot: Slot,
        mod_revision: Option<i64>,
    ) -> Result<(Option<i64>, Option<Found>), StoreError> {
        let key = slot_key(group, slot);
        let req = RangeRequest {
            key: BASE64.encode(&key),
            range_end: None,
            min_mod_revision: mod_revision.map(|r| r.to_string()),
            max_mod_revision: mod_revision.map(|r| r.to_string()),
            ..Default::default()
        };
        let Some(resp) = self
            .conn
            .call_capped::<_, RangeResponse>("/v3/kv/range", &req, MAX_SLOT_ANSWER_LEN)
            .await?
        else {
            return Ok((None, Some(Found::Oversize { len: None })));
        };
        let revision = resp.header.as_ref().map(|h| h.revision).filter(|r| *r > 0);
        let Some(kv) = resp.kvs.first() else {
            return Ok((revision, None));
        };
        if parse_slot_key(group, &kv.key) != Some(slot) {
            tracing::debug!(
                "Skipped etcd key {} (base64): asked for {key}.",
                sanitize(&kv.key)
            );
            return Ok((revision, None));
        }
        let found = kv.found();
        if found.is_none() {
            tracing::debug!("Skipped the value at {key} in etcd: not base64.");
        }
        Ok((revision, found))
    }

    /// The mirror of `group`'s watch, if a watch task runs for it.
    fn mirror(&self, group: &str) -> Option<Arc<Mutex<Mirror>>> {
        lock(&self.watches).get(group).map(|w| w.mirror.clone())
    }

    async fn grant(&self, ttl_secs: u64) -> Result<i64, StoreError> {
        let resp: LeaseGrantResponse = self
            .conn
            .call(
                "/v3/lease/grant",
                &LeaseGrantRequest {
                    ttl: ttl_secs.to_string(),
                },
            )
            .await?;
        if !resp.error.is_empty() {
            return Err(StoreError::Refused {
                store: etcd("/v3/lease/grant"),
                message: sanitize(&resp.error),
            });
        }
        if resp.id == 0 {
            return Err(StoreError::BadAnswer {
                store: etcd("/v3/lease/grant"),
                what: "lease 0".to_owned(),
                source: None,
            });
        }
        Ok(resp.id)
    }

    /// Revokes a lease nothing uses. Failure only means the lease lives until its TTL.
    async fn revoke(&self, lease: i64) {
        let req = LeaseRevokeRequest {
            id: lease.to_string(),
        };
        if let Err(e) = self
            .conn
            .call::<_, IgnoredAny>("/v3/lease/revoke", &req)
            .await
        {
            tracing::debug!(
                "An unused etcd lease could not be revoked and will expire by itself: {}",
                Chain(&e)
            );
        }
    }
}

impl EtcdStore {
    /// Whether this store's credentials may write under `stek/`, found by deleting a key there
    /// that no stek process uses ([`WRITE_PROBE_KEY`], exactly that key, no range: records live at
    /// `stek/<group>/<slot>`, with a second '/'): etcd checks write permission on the key before it
    /// looks for it, so a read-only user gets `etcdserver: permission denied` and anyone who may
    /// write deletes nothing. An agent only reads and watches; one that can write warns that its
    /// credentials are broader than needed.
    pub async fn can_write(&self) -> Result<bool, StoreError> {
        let req = RangeRequest {
            key: BASE64.encode(WRITE_PROBE_KEY),
            ..Default::default()
        };
        match self
            .conn
            .call::<_, IgnoredAny>("/v3/kv/deleterange", &req)
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::Refused { message, .. }) if message.contains("permission denied") => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether an etcd user is configured (etcd authentication).
    pub fn has_user(&self) -> bool {
        self.conn.auth.is_some()
    }
}

/// The key [`EtcdStore::can_write`] deletes: under `stek/`, where an agent's role may read, but no
/// record's key (`stek/<group>/<20 digits>` has a second '/').
pub const WRITE_PROBE_KEY: &str = "stek/.write-probe";

impl Store for EtcdStore {
    /// Grants a lease ending at `expires_at` (rounded up to whole seconds; etcd also raises TTLs
    /// below its minimum, 2 s by default), then puts the record with it in a transaction that
    /// succeeds only if the key was never created. On losing, reads the winner back in the same
    /// transaction and revokes the unused lease.
    ///
    /// A record already expired (`expires_at <= now`) is not written: a store that wrote it would
    /// have to hide it at once. The slot's live record is returned as the winner if there is one,
    /// and `Won` otherwise, exactly as if the record had been written and had expired.
    ///
    /// If etcd refuses the transaction, the lease is revoked and etcd's message returned. If the
    /// outcome is unknown (the connection broke), the error is returned and the lease is left to
    /// expire, since revoking it could delete a record that was written; a retry on another
    /// endpoint that finds the record written under its own lease knows it was its own write and
    /// reports `Won`.
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
        let key = slot_key(group, slot);
        let lost = |f: Found| match f {
            Found::Record(r) => Created::Lost(r),
            Found::Oversize { len } => Created::Oversize { len },
        };
        let Some(ttl) = lease_ttl(expires_at, self.clock.now()) else {
            return Ok(match self.get(group, slot).await? {
                Some(winner) => lost(winner),
                None => Created::Won,
            });
        };
        let lease = self.grant(ttl).await?;
        let key64 = BASE64.encode(&key);
        // The request body handed to the HTTP client cannot be zeroized after sending; records
        // are sealed to their recipients before they reach a store, so that copy is ciphertext.
        let value64 = Zeroizing::new(BASE64.encode(record));
        let txn = TxnRequest {
            compare: [Compare {
                target: "CREATE",
                result: "EQUAL",
                key: key64.clone(),
                create_revision: Some("0"),
                mod_revision: None,
            }],
            success: [RequestOp::Put(PutRequest {
                key: key64.clone(),
                value: &value64,
                lease: lease.to_string(),
            })],
            failure: [RequestOp::Range(RangeRequest {
                key: key64,
                range_end: None,
                ..Default::default()
            })],
        };
        // The answer is read only up to the size of a slot's answer: a success is tiny, and a
        // failure carries the slot's value, which is not downloaded if it cannot be a record.
        let resp: TxnResponse = match self
            .conn
            .try_call("/v3/kv/txn", &txn, MAX_SLOT_ANSWER_LEN)
            .await
        {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                // Only the failure branch can be that long: the slot holds an oversize value,
                // certainly not written by us, so the lease is unused.
                self.revoke(lease).await;
                return Ok(Created::Oversize { len: None });
            }
            Err(e) => {
                // Revoke the lease only when etcd certainly did not apply the put: revoking it
                // otherwise could delete a record we did write.
                if e.refused {
                    self.revoke(lease).await;
                }
                return Err(e.error);
            }
        };
        if resp.succeeded {
            return Ok(Created::Won);
        }
        // The failure branch is the range of the key, read in the same revision as the compare
        // that failed: the key exists there.
        let winner = resp
            .responses
            .iter()
            .filter_map(|r| r.response_range.as_ref())
            .flat_map(|r| r.kvs.first())
            .next()
            .ok_or_else(|| StoreError::BadAnswer {
                store: etcd("/v3/kv/txn"),
                what: format!("the transaction on {key} failed its compare but returned no record"),
                source: None,
            })?;
        if winner.lease == lease {
            // Our own put, applied by an attempt whose answer was lost before a fail-over.
            return Ok(Created::Won);
        }
        let value = winner.found();
        self.revoke(lease).await;
        value.map(lost).ok_or_else(|| StoreError::BadAnswer {
            store: etcd("/v3/kv/txn"),
            what: format!("the value at {key} is not base64"),
            source: None,
        })
    }

    /// Three steps, atomic where it matters: a keys-only range gives the slot's `mod_revision`
    /// (whatever its value's size); a range filtered on exactly that revision gives the value
    /// (capped like every read) to compare with `seen`; then a transaction puts the record under
    /// a new lease only if `mod_revision` is still the same (`create_revision == 0` for a slot
    /// seen empty). A value changed after the first step fails the second or the third.
    ///
    /// An expiry already past writes nothing (`Lost`). As for `create`, an outcome lost to a
    /// broken connection leaves the lease to expire, and a retry that finds the slot written
    /// under its own lease reports `Won`.
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
        let Some(ttl) = lease_ttl(expires_at, self.clock.now()) else {
            return Ok(Replaced::Lost);
        };
        let key = slot_key(group, slot);
        let key64 = BASE64.encode(&key);
        let head: RangeResponse = self
            .conn
            .call(
                "/v3/kv/range",
                &RangeRequest {
                    key: key64.clone(),
                    keys_only: true,
                    ..Default::default()
                },
            )
            .await?;
        let revision = head
            .kvs
            .first()
            .filter(|kv| parse_slot_key(group, &kv.key) == Some(slot))
            .map(|kv| kv.mod_revision);
        let compare = match revision {
            None => {
                if !seen.matches(None) {
                    return Ok(Replaced::Lost);
                }
                Compare {
                    target: "CREATE",
                    result: "EQUAL",
                    key: key64.clone(),
                    create_revision: Some("0"),
                    mod_revision: None,
                }
            }
            Some(rev) => {
                let current = self.get_at(group, slot, Some(rev)).await?;
                // Gone or modified since the first step: not what was seen, whatever it is now.
                if current.is_none() || !seen.matches(current.as_ref()) {
                    return Ok(Replaced::Lost);
                }
                Compare {
                    target: "MOD",
                    result: "EQUAL",
                    key: key64.clone(),
                    create_revision: None,
                    mod_revision: Some(rev.to_string()),
                }
            }
        };
        let lease = self.grant(ttl).await?;
        // Ciphertext, as in `create`: the request body cannot be zeroized after sending.
        let value64 = Zeroizing::new(BASE64.encode(record));
        let txn = TxnRequest {
            compare: [compare],
            success: [RequestOp::Put(PutRequest {
                key: key64.clone(),
                value: &value64,
                lease: lease.to_string(),
            })],
            // Who holds the slot now, without its value: our own lease means an earlier attempt
            // of this very request was applied.
            failure: [RequestOp::Range(RangeRequest {
                key: key64,
                keys_only: true,
                ..Default::default()
            })],
        };
        let resp: TxnResponse = match self
            .conn
            .try_call("/v3/kv/txn", &txn, MAX_RESPONSE_LEN)
            .await
        {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                return Err(StoreError::BadAnswer {
                    store: etcd("/v3/kv/txn"),
                    what: format!("an answer over {MAX_RESPONSE_LEN} bytes"),
                    source: None,
                })
            }
            Err(e) => {
                if e.refused {
                    self.revoke(lease).await;
                }
                return Err(e.error);
            }
        };
        if resp.succeeded {
            return Ok(Replaced::Won);
        }
        let holder = resp
            .responses
            .iter()
            .filter_map(|r| r.response_range.as_ref())
            .flat_map(|r| r.kvs.first())
            .next()
            .map(|kv| kv.lease);
        if holder == Some(lease) {
            return Ok(Replaced::Won);
        }
        self.revoke(lease).await;
        Ok(Replaced::Lost)
    }

    /// One range request per slot of `first..=last` (at most [`MAX_WINDOW_SLOTS`]) that the
    /// group's watch does not already answer for, at most [`WINDOW_READS_IN_FLIGHT`] at a time,
    /// each answer read up to [`MAX_SLOT_ANSWER_LEN`]: so junk keys under the group's prefix are
    /// never read, and an oversize value costs one abandoned transfer. Any failed request fails
    /// the read.
    ///
    /// While a watch of the group is established ([`Store::changes`] has receivers), a slot
    /// read since, or put or deleted since (the watch events carry the value), is answered from
    /// the [`Mirror`] without a request: after the first full read, a watch event costs the
    /// readers no request at all. A watch that ends or is reopened empties the mirror, so the
    /// read after its tick is a full re-read. The readers' safety-net polls are then answered
    /// from the mirror too: what they guard against, a lost notification, is a lost stream
    /// here, which empties the mirror; a stream that silently stops is caught by
    /// [`WATCH_IDLE_TIMEOUT`] and TCP keepalive.
    async fn read_window(
        &self,
        group: &str,
        first: Slot,
        last: Slot,
    ) -> Result<Vec<(Slot, Found)>, StoreError> {
        if first > last {
            return Ok(Vec::new());
        }
        if last.0 - first.0 >= MAX_WINDOW_SLOTS {
            return Err(StoreError::WindowTooLarge {
                first,
                last,
                max: MAX_WINDOW_SLOTS,
            });
        }
        let mirror = self.mirror(group);
        let mut out = Vec::new();
        let mut missing = Vec::new();
        let mut epoch = None;
        if let Some(m) = &mirror {
            let mut m = lock(m);
            m.forget_before(first);
            epoch = m.live.then_some(m.epoch);
            for slot in first.0..=last.0 {
                match m.get(Slot(slot)) {
                    Some(found) => out.extend(found.map(|f| (Slot(slot), f))),
                    None => missing.push(Slot(slot)),
                }
            }
        } else {
            missing.extend((first.0..=last.0).map(Slot));
        }
        let reads = futures_util::stream::iter(missing)
            .map(|slot| async move {
                let (revision, found) = self.range_slot(group, slot, None).await?;
                Ok::<_, StoreError>((slot, revision, found))
            })
            .buffered(WINDOW_READS_IN_FLIGHT);
        let mut reads = std::pin::pin!(reads);
        let mut read = Vec::new();
        while let Some(r) = reads.next().await {
            read.push(r?);
        }
        if let (Some(m), Some(epoch)) = (&mirror, epoch) {
            let mut m = lock(m);
            for (slot, revision, found) in &read {
                if let Some(revision) = revision {
                    m.learn(epoch, *slot, *revision, found.clone());
                }
            }
        }
        out.extend(
            read.into_iter()
                .filter_map(|(slot, _, found)| found.map(|f| (slot, f))),
        );
        Ok(out)
    }

    /// A receiver that ticks on every put under `stek/<group>/`, fed by one watch stream per
    /// group shared by all its receivers. The stream's events (puts with their values, capped
    /// like reads, and deletes) also feed the group's [`Mirror`], from which
    /// [`Store::read_window`] answers without a request while the stream lives.
    ///
    /// It also ticks each time the stream is (re)established, the first time included, because
    /// puts made while no stream was open are not replayed: a reader that re-reads on that tick
    /// misses nothing. A broken stream is reopened with exponential backoff (100 ms to 10 s,
    /// jittered), on any endpoint. The stream stops when the store is dropped (receivers then see
    /// the channel closed) or when the group's last receiver is dropped.
    ///
    /// Returns `None` outside a Tokio runtime, where no task can run the stream.
    fn changes(&self, group: &str) -> Option<watch::Receiver<u64>> {
        let mut watches = lock(&self.watches);
        // Invariant: an entry exists exactly while its task runs (the task removes it, under
        // this lock, before it stops for lack of receivers).
        if let Some(w) = watches.get(group) {
            return Some(w.tx.subscribe());
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("No Tokio runtime: etcd changes of group {group} are not watched.");
            return None;
        };
        let (tx, rx) = watch::channel(0);
        let mirror = Arc::new(Mutex::new(Mirror::default()));
        watches.insert(
            group.to_owned(),
            GroupWatch {
                tx: tx.clone(),
                mirror: mirror.clone(),
            },
        );
        runtime.spawn(watch_group(
            self.conn.clone(),
            group.to_owned(),
            tx,
            mirror,
            self.shutdown.subscribe(),
            self.watches.clone(),
        ));
        Some(rx)
    }

    async fn remove_before(&self, group: &str, slot: Slot) -> Result<u64, StoreError> {
        if slot.0 == 0 {
            return Ok(0);
        }
        // Keys sort by slot (20 zero-padded digits), so one range covers every older slot.
        let req = RangeRequest {
            key: BASE64.encode(slot_key(group, Slot(0))),
            range_end: Some(BASE64.encode(slot_key(group, slot))),
            ..Default::default()
        };
        let resp: DeleteRangeResponse = self.conn.call("/v3/kv/deleterange", &req).await?;
        Ok(resp.deleted)
    }

    /// One range over `stek/` for keys only, at most [`super::SURVEY_LIMIT`] of them.
    async fn survey(&self) -> Result<Option<super::Survey>, StoreError> {
        let req = RangeRequest {
            key: BASE64.encode("stek/"),
            range_end: Some(BASE64.encode("stek0")),
            keys_only: true,
            limit: Some(super::SURVEY_LIMIT.to_string()),
            ..Default::default()
        };
        let resp: RangeResponse = self.conn.call("/v3/kv/range", &req).await?;
        let mut survey = super::Survey {
            truncated: resp.more,
            ..Default::default()
        };
        for kv in &resp.kvs {
            if kv.key.len() > 4 * 1024 {
                continue;
            }
            let Ok(key) = BASE64.decode(&kv.key) else {
                continue;
            };
            let Some((group, slot)) = std::str::from_utf8(&key)
                .ok()
                .and_then(|k| k.strip_prefix("stek/"))
                .and_then(|k| k.split_once('/'))
            else {
                continue;
            };
            if slot.len() == 20 {
                survey.add(group, slot);
            }
        }
        Ok(Some(survey))
    }

    async fn server_time(&self) -> Result<Option<Duration>, StoreError> {
        EtcdStore::server_time(self).await.map(Some)
    }
}

/// How error messages name etcd when no single endpoint is meant (the request fails over).
fn etcd(path: &str) -> String {
    format!("etcd ({path})")
}

/// How error messages name one endpoint answering one request.
fn at(endpoint: &Authority, path: &str) -> String {
    format!("etcd at {endpoint} ({path})")
}

/// Whether `etcds://HOST:PORT[,HOST:PORT...]` (TLS) or `etcd://...` (plain), and the endpoints.
fn parse_url(url: &str) -> Result<(bool, Vec<Authority>), StoreError> {
    let bad = |why: &str| StoreError::BadUrl {
        reason: format!("etcd URL {url:?}: {why}"),
        source: None,
    };
    let (tls, rest) = match (url.strip_prefix("etcds://"), url.strip_prefix("etcd://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => {
            return Err(bad(
                "expected etcd://HOST:PORT[,HOST:PORT...] or etcds://HOST:PORT[,HOST:PORT...]",
            ))
        }
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut endpoints = Vec::new();
    for part in rest.split(',') {
        if part.is_empty() || part.contains(['@', '/', '?', '#']) {
            return Err(bad(&format!("endpoint {part:?} is not HOST:PORT")));
        }
        let not_host_port = |e: hyper::http::uri::InvalidUri| StoreError::BadUrl {
            reason: format!("etcd URL {url:?}: endpoint {part:?} is not HOST:PORT"),
            source: Some(Arc::new(e)),
        };
        let authority: Authority = part.parse().map_err(not_host_port)?;
        if authority.host().is_empty() {
            return Err(bad(&format!("endpoint {part:?} has no host")));
        }
        let authority = match authority.port_u16() {
            Some(_) => authority,
            None if part.ends_with(':') => {
                return Err(bad(&format!("endpoint {part:?} has no port")))
            }
            None => format!("{part}:{DEFAULT_PORT}")
                .parse()
                .map_err(not_host_port)?,
        };
        endpoints.push(authority);
    }
    Ok((tls, endpoints))
}

fn slot_key(group: &str, slot: Slot) -> String {
    format!("stek/{group}/{:020}", slot.0)
}

/// The end of the range of every key under `stek/<group>/` ('0' follows '/').
fn prefix_end(group: &str) -> String {
    format!("stek/{group}0")
}

/// The slot of a base64 key that is exactly `stek/<group>/` and 20 digits.
fn parse_slot_key(group: &str, key64: &str) -> Option<Slot> {
    // A key is at most a few dozen bytes; refuse to decode anything much longer.
    if key64.len() > 4 * 1024 {
        return None;
    }
    let key = BASE64.decode(key64).ok()?;
    let digits = key
        .strip_prefix(b"stek/")?
        .strip_prefix(group.as_bytes())?
        .strip_prefix(b"/")?;
    if digits.len() != 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // 20 digits can exceed u64::MAX; parse rejects those.
    std::str::from_utf8(digits).ok()?.parse().ok().map(Slot)
}

/// The lease TTL in whole seconds that ends no earlier than `expires_at`, or `None` if
/// `expires_at` has passed.
fn lease_ttl(expires_at: Duration, now: Duration) -> Option<u64> {
    let left = expires_at.checked_sub(now).filter(|d| !d.is_zero())?;
    let secs = left
        .as_secs()
        .saturating_add(u64::from(left.subsec_nanos() > 0));
    Some(secs.clamp(1, MAX_LEASE_TTL_SECS))
}

/// An untrusted message made fit for a log line: no control characters, bounded length.
fn sanitize(msg: &str) -> String {
    let mut out: String = msg
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_MESSAGE_CHARS)
        .collect();
    if msg.chars().nth(MAX_ERROR_MESSAGE_CHARS).is_some() {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// The endpoints and the connection pool, shared by the store and its watch tasks.
struct Conn {
    endpoints: Vec<Authority>,
    /// Whether the endpoints speak TLS (`etcds://`).
    tls: bool,
    /// The etcd user, if etcd has authentication enabled.
    auth: Option<Auth>,
    client: HttpClient,
    /// Index of the endpoint that answered last, tried first.
    preferred: AtomicUsize,
}

/// An etcd user's credentials and the token they were last given.
///
/// `/v3/auth/authenticate` answers a token that goes in the `Authorization` header of every
/// request (the watch included). etcd's simple tokens are cluster-wide but expire after
/// `--auth-token-ttl` (300 s by default) without use on a member, and a restarted member forgets
/// them all; JWT tokens expire after their TTL. Either way etcd then answers 401 (gRPC
/// `Unauthenticated`, `etcdserver: invalid auth token`) and the request is sent again once with a
/// new token obtained from the same endpoint. Neither the password nor the token is ever logged
/// (the header value is marked sensitive).
struct Auth {
    user: String,
    password: Zeroizing<String>,
    /// The current token. The lock is held while authenticating, so that requests in flight
    /// together authenticate once.
    token: tokio::sync::Mutex<Option<HeaderValue>>,
}

/// A complete answer from one endpoint.
struct Reply {
    endpoint: Authority,
    status: StatusCode,
    date: Option<std::time::SystemTime>,
    /// Zeroized on drop: it may hold records.
    body: Zeroizing<Vec<u8>>,
}

impl Reply {
    /// What etcd said about a request it did not carry out: its message if it sent an error
    /// body (`{"error": ..., "message": ..., "code": ...}`), else the HTTP status.
    fn refusal(&self) -> Refusal {
        let message = serde_json::from_slice::<GatewayError>(&self.body)
            .ok()
            .map(|e| {
                if e.message.is_empty() {
                    e.error
                } else {
                    e.message
                }
            })
            .filter(|m| !m.is_empty())
            .map(|m| sanitize(&m))
            .or_else(|| {
                // Not the gateway's JSON: etcd's HTTP layer answers some refusals in plain text
                // (e.g. 3.4's gateway refusing a client certificate that has a CommonName).
                let text = std::str::from_utf8(&self.body).ok()?.trim();
                (!text.is_empty() && !text.starts_with('<'))
                    .then(|| format!("HTTP {}: {}", self.status, sanitize(text)))
            });
        Refusal {
            status: self.status,
            message,
        }
    }

    /// The error for an answer that refuses the request to `path`.
    fn refused(&self, path: &str) -> StoreError {
        StoreError::Refused {
            store: at(&self.endpoint, path),
            message: self.refusal().to_string(),
        }
    }
}

/// An error answer: etcd's message (sanitized), else the HTTP status. Data from etcd, not a Rust
/// error: it becomes the message of [`StoreError::Refused`] or the reason of a failed attempt.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: Option<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m),
            None => write!(f, "HTTP {}", self.status),
        }
    }
}

/// Why one attempt at one endpoint failed; the request then fails over to the next endpoint.
#[derive(Debug)]
enum AttemptError {
    /// The HTTP library refused to build the request (a bug in stek).
    Request(hyper::http::Error),
    /// Connecting or sending the request failed.
    Send(hyper_util::client::legacy::Error),
    /// The connection broke while the answer was read.
    Read(hyper::Error),
    /// No complete answer (for a stream, no first answer) within this time.
    Timeout(Duration),
    /// The endpoint answered that it cannot serve for now (HTTP 503: no leader, stopping).
    Unavailable(Refusal),
    /// The endpoint refused to open a stream (the refusal, if it could be read).
    StreamRefused(Option<Refusal>),
    /// The TLS handshake failed: a certificate that does not verify, a handshake the server broke
    /// off (it wants a client certificate, or does not speak TLS).
    Tls(rustls::Error),
    /// An `etcd://` endpoint closed the connection without answering: most likely a TLS port.
    ClosedUnanswered(hyper_util::client::legacy::Error),
    /// An `etcds://` endpoint closed the connection right after the TLS handshake, before any
    /// answer: with TLS 1.3 a server that wants a client certificate says so only then (its
    /// alert may arrive after the client's side of the handshake is done).
    ClosedAfterTls(hyper_util::client::legacy::Error),
    /// etcd refused the user's credentials (wrong user or password, authentication not enabled).
    Auth(Refusal),
    /// etcd's token cannot be sent as a header.
    BadToken,
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Request(_) => f.write_str("cannot build the request"),
            AttemptError::Send(_) => f.write_str("the request failed"),
            AttemptError::Read(_) => f.write_str("the answer broke off"),
            AttemptError::Timeout(t) => write!(f, "no answer within {t:?}"),
            AttemptError::Unavailable(r) => write!(f, "unavailable: {r}"),
            AttemptError::StreamRefused(Some(r)) => write!(f, "refused the stream: {r}"),
            AttemptError::StreamRefused(None) => f.write_str("refused the stream"),
            AttemptError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            AttemptError::ClosedUnanswered(_) => f.write_str(
                "closed the connection without answering (a TLS port? then use etcds://)",
            ),
            AttemptError::ClosedAfterTls(_) => f.write_str(
                "closed the connection after the TLS handshake without answering (does it require a client certificate? then give --store-cert and --store-key)",
            ),
            AttemptError::Auth(r) => write!(f, "authentication failed: {r}"),
            AttemptError::BadToken => f.write_str("sent a token that is not a header value"),
        }
    }
}

impl std::error::Error for AttemptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AttemptError::Request(e) => Some(e),
            AttemptError::Send(e)
            | AttemptError::ClosedUnanswered(e)
            | AttemptError::ClosedAfterTls(e) => Some(e),
            AttemptError::Read(e) => Some(e),
            AttemptError::Timeout(_)
            | AttemptError::Unavailable(_)
            | AttemptError::StreamRefused(_)
            | AttemptError::Tls(_)
            | AttemptError::Auth(_)
            | AttemptError::BadToken => None,
        }
    }
}

/// Every endpoint failed: the cause of [`StoreError::Unavailable`]. With one endpoint it names
/// it and chains its error; with several, each endpoint's whole chain is listed (an error has
/// one source, and every endpoint's reason matters).
#[derive(Debug)]
struct Failover(Vec<(Authority, AttemptError)>);

impl fmt::Display for Failover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => f.write_str("no endpoint was tried"),
            [(endpoint, _)] => write!(f, "etcd at {endpoint}"),
            all => {
                for (i, (endpoint, e)) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "etcd at {endpoint}: {}", Chain(e))?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Failover {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self.0.as_slice() {
            [(_, e)] => Some(e),
            _ => None,
        }
    }
}

impl Conn {
    fn request(
        &self,
        i: usize,
        method: &Method,
        path: &str,
        body: Bytes,
        token: Option<&HeaderValue>,
    ) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let uri = Uri::builder()
            .scheme(if self.tls { "https" } else { "http" })
            .authority(self.endpoints[i].clone())
            .path_and_query(path)
            .build()?;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            // gRPC metadata `hasleader: true` (the gateway forwards `Grpc-Metadata-*` headers):
            // a member cut off from its leader answers 503 `etcdserver: no leader` at once,
            // instead of hanging a request or, worse, accepting a watch that then delivers
            // nothing; and it ends a watch it holds when it loses its leader. Either way stek
            // fails over to a member that has one.
            .header(REQUIRE_LEADER.0, REQUIRE_LEADER.1);
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, token.clone());
        }
        req.body(Full::new(body))
    }

    /// What a failed send says: a TLS failure or an unanswered plain connection told apart.
    fn send_error(&self, e: hyper_util::client::legacy::Error) -> AttemptError {
        if let Some(tls) = super::client_tls::tls_cause(&e) {
            return AttemptError::Tls(tls.clone());
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if let Some(h) = c.downcast_ref::<hyper::Error>() {
                if h.is_incomplete_message() && !self.tls {
                    return AttemptError::ClosedUnanswered(e);
                }
                // The connection ended before it could carry the request ("connection was not
                // ready"), or before an answer: after a completed TLS handshake.
                if self.tls && (h.is_incomplete_message() || h.is_canceled()) {
                    return AttemptError::ClosedAfterTls(e);
                }
            }
            cause = c.source();
        }
        AttemptError::Send(e)
    }

    /// Sends one request to endpoint `i` and reads its answer (at most `cap` bytes).
    async fn send(
        &self,
        i: usize,
        method: &Method,
        path: &str,
        body: Bytes,
        token: Option<&HeaderValue>,
        cap: usize,
    ) -> Result<Result<Reply, ReadError>, AttemptError> {
        let req = self
            .request(i, method, path, body, token)
            .map_err(AttemptError::Request)?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| self.send_error(e))?;
        Ok(read_reply(self.endpoints[i].clone(), resp, cap).await)
    }

    /// The token to send to endpoint `i`: the current one, unless it is `stale` (etcd said it is
    /// invalid) or there is none yet, in which case the user authenticates at endpoint `i`.
    /// `None` without credentials.
    async fn authorization(
        &self,
        i: usize,
        stale: Option<&HeaderValue>,
    ) -> Result<Option<HeaderValue>, AttemptError> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let mut token = auth.token.lock().await;
        if let Some(current) = token.as_ref() {
            if Some(current) != stale {
                return Ok(Some(current.clone()));
            }
        }
        *token = None;
        let fresh = self.authenticate(i, auth).await?;
        *token = Some(fresh.clone());
        Ok(Some(fresh))
    }

    /// Drops the token if it is still `stale`, so that the next request authenticates.
    async fn forget_token(&self, stale: &HeaderValue) {
        if let Some(auth) = &self.auth {
            let mut token = auth.token.lock().await;
            if token.as_ref() == Some(stale) {
                *token = None;
            }
        }
    }

    async fn authenticate(&self, i: usize, auth: &Auth) -> Result<HeaderValue, AttemptError> {
        const PATH: &str = "/v3/auth/authenticate";
        #[derive(Serialize)]
        struct AuthenticateRequest<'a> {
            name: &'a str,
            password: &'a str,
        }
        #[derive(Deserialize)]
        struct AuthenticateResponse {
            #[serde(default)]
            token: String,
        }
        impl Drop for AuthenticateResponse {
            fn drop(&mut self) {
                self.token.zeroize();
            }
        }
        let body = Zeroizing::new(
            serde_json::to_vec(&AuthenticateRequest {
                name: &auth.user,
                password: &auth.password,
            })
            .map_err(|_| AttemptError::BadToken)?,
        );
        // The HTTP client takes its own copy of the body, which is not zeroized after sending:
        // the password lives on in freed memory until reused, as in any HTTP client.
        let reply = match self
            .send(
                i,
                &Method::POST,
                PATH,
                Bytes::copy_from_slice(&body),
                None,
                MAX_ERROR_BODY_LEN,
            )
            .await?
        {
            Ok(reply) => reply,
            Err(ReadError::Body(e)) => return Err(AttemptError::Read(e)),
            Err(ReadError::TooLarge) => return Err(AttemptError::BadToken),
        };
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            return Err(AttemptError::Unavailable(reply.refusal()));
        }
        if reply.status != StatusCode::OK {
            return Err(AttemptError::Auth(reply.refusal()));
        }
        let resp: AuthenticateResponse =
            serde_json::from_slice(&reply.body).map_err(|_| AttemptError::BadToken)?;
        if resp.token.is_empty() {
            return Err(AttemptError::BadToken);
        }
        let mut value = HeaderValue::from_str(&resp.token).map_err(|_| AttemptError::BadToken)?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// One request to endpoint `i` with the current token, sent again once with a new token if
    /// etcd answers 401 (the token expired, or the member restarted and forgot it).
    async fn send_authorized(
        &self,
        i: usize,
        method: &Method,
        path: &str,
        body: &Bytes,
        cap: usize,
    ) -> Result<Result<Reply, ReadError>, AttemptError> {
        let token = self.authorization(i, None).await?;
        let reply = self
            .send(i, method, path, body.clone(), token.as_ref(), cap)
            .await?;
        match (&reply, &token) {
            (Ok(r), Some(stale)) if r.status == StatusCode::UNAUTHORIZED => {
                tracing::debug!(
                    "etcd at {} refused the token; authenticating again.",
                    r.endpoint
                );
                let fresh = self.authorization(i, Some(stale)).await?;
                self.send(i, method, path, body.clone(), fresh.as_ref(), cap)
                    .await
            }
            _ => Ok(reply),
        }
    }

    /// The endpoints in the order to try them: the last one that answered, then the rest in
    /// URL order.
    fn order(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        (0..n).map(move |k| (start + k) % n)
    }

    /// Sends one request and reads the whole answer (at most `cap` bytes), failing over between
    /// endpoints on transport errors, timeouts and 503 (gRPC `Unavailable`: no leader, stopping).
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        cap: usize,
    ) -> Result<Reply, StoreError> {
        match self.exchange_capped(method, path, body, cap).await? {
            Ok(reply) => Ok(reply),
            Err(endpoint) => Err(StoreError::BadAnswer {
                store: at(&endpoint, path),
                what: format!("an answer over {cap} bytes"),
                source: None,
            }),
        }
    }

    /// [`Conn::exchange`], with a successful answer longer than `cap` told apart: `Ok(Err(the
    /// endpoint))`, its transfer abandoned at the cap.
    async fn exchange_capped(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        cap: usize,
    ) -> Result<Result<Reply, Authority>, StoreError> {
        let mut failures = Vec::new();
        let n = self.endpoints.len();
        for (k, i) in self.order().enumerate() {
            let endpoint = self.endpoints[i].clone();
            let limit = if k + 1 < n {
                FAILOVER_TIMEOUT
            } else {
                REQUEST_TIMEOUT
            };
            // Answers that cannot be read are told apart: an oversized one does not fail over.
            let once = self.send_authorized(i, &method, path, &body, cap);
            match tokio::time::timeout(limit, once).await {
                Ok(Ok(Ok(reply))) if reply.status != StatusCode::SERVICE_UNAVAILABLE => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(Ok(reply));
                }
                Ok(Ok(Ok(reply))) => {
                    failures.push((endpoint, AttemptError::Unavailable(reply.refusal())));
                }
                Ok(Ok(Err(ReadError::Body(e)))) => failures.push((endpoint, AttemptError::Read(e))),
                Ok(Ok(Err(ReadError::TooLarge))) => {
                    // Another member would send the same data: no fail-over.
                    return Ok(Err(endpoint));
                }
                Ok(Err(AttemptError::Auth(refusal))) => {
                    // Wrong credentials are wrong at every member: no fail-over.
                    return Err(StoreError::Refused {
                        store: at(&endpoint, "/v3/auth/authenticate"),
                        message: refusal.to_string(),
                    });
                }
                Ok(Err(e)) => failures.push((endpoint, e)),
                Err(_) => failures.push((endpoint, AttemptError::Timeout(limit))),
            }
        }
        Err(StoreError::Unavailable {
            store: etcd(path),
            source: Arc::new(Failover(failures)),
        })
    }

    /// POSTs `req` as JSON and parses a successful answer as `R`.
    async fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        req: &Q,
    ) -> Result<R, StoreError> {
        match self.try_call(path, req, MAX_RESPONSE_LEN).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(StoreError::BadAnswer {
                store: etcd(path),
                what: format!("an answer over {MAX_RESPONSE_LEN} bytes"),
                source: None,
            }),
            Err(e) => Err(e.error),
        }
    }

    /// [`Conn::call`] reading at most `cap` bytes of a successful answer: `Ok(None)` for a longer
    /// one (its transfer abandoned).
    async fn call_capped<Q: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        req: &Q,
        cap: usize,
    ) -> Result<Option<R>, StoreError> {
        self.try_call(path, req, cap).await.map_err(|e| e.error)
    }

    /// [`Conn::call_capped`], telling apart the errors after which the request certainly did not
    /// apply.
    async fn try_call<Q: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        req: &Q,
        cap: usize,
    ) -> Result<Option<R>, CallError> {
        let body = serde_json::to_vec(req).map_err(|e| CallError {
            error: StoreError::Encode {
                store: etcd(path),
                source: Arc::new(e),
            },
            refused: true,
        })?;
        let reply = match self
            .exchange_capped(Method::POST, path, Bytes::from(body), cap)
            .await
        {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Ok(None),
            Err(error) => {
                return Err(CallError {
                    error,
                    refused: false,
                })
            }
        };
        if reply.status != StatusCode::OK {
            // An error answer other than 503 (which `exchange` fails over on, and which etcd
            // also gives for a proposal that timed out but may still apply) refuses the request.
            return Err(CallError {
                error: reply.refused(path),
                refused: true,
            });
        }
        serde_json::from_slice(&reply.body)
            .map(Some)
            .map_err(|e| CallError {
                error: StoreError::BadAnswer {
                    store: at(&reply.endpoint, path),
                    what: "malformed JSON".to_owned(),
                    source: Some(Arc::new(e)),
                },
                refused: false,
            })
    }

    /// Opens a streamed POST: the first endpoint that answers 200 within the timeout keeps the
    /// stream. Also returns the token sent, if any: etcd checks it when the watch is created,
    /// inside the stream, and the caller forgets it if etcd cancels the watch for it.
    async fn open_stream(
        &self,
        path: &str,
        body: Bytes,
    ) -> Result<(Authority, Incoming, Option<HeaderValue>), Failover> {
        let mut failures = Vec::new();
        for i in self.order() {
            let endpoint = self.endpoints[i].clone();
            let once = async {
                let token = self.authorization(i, None).await?;
                let req = self
                    .request(i, &Method::POST, path, body.clone(), token.as_ref())
                    .map_err(AttemptError::Request)?;
                let resp = self
                    .client
                    .request(req)
                    .await
                    .map_err(|e| self.send_error(e))?;
                if resp.status() == StatusCode::UNAUTHORIZED {
                    if let Some(stale) = &token {
                        self.forget_token(stale).await;
                    }
                }
                Ok::<_, AttemptError>((resp, token))
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, once).await {
                Ok(Ok((resp, token))) if resp.status() == StatusCode::OK => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok((endpoint, resp.into_body(), token));
                }
                Ok(Ok((resp, _))) => {
                    let refusal = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        read_reply(endpoint.clone(), resp, MAX_ERROR_BODY_LEN),
                    )
                    .await;
                    let refusal = match refusal {
                        Ok(Ok(reply)) => Some(reply.refusal()),
                        _ => None,
                    };
                    failures.push((endpoint, AttemptError::StreamRefused(refusal)));
                }
                Ok(Err(e)) => failures.push((endpoint, e)),
                Err(_) => failures.push((endpoint, AttemptError::Timeout(REQUEST_TIMEOUT))),
            }
        }
        Err(Failover(failures))
    }
}

/// A failed call, and whether etcd certainly did not apply it.
#[derive(Debug)]
struct CallError {
    /// What failed, with its causes.
    error: StoreError,
    refused: bool,
}

/// Why an answer could not be read.
#[derive(Debug)]
enum ReadError {
    /// The connection broke while the answer was read.
    Body(hyper::Error),
    /// The answer is larger than the cap.
    TooLarge,
}

async fn read_reply(
    endpoint: Authority,
    resp: Response<Incoming>,
    cap: usize,
) -> Result<Reply, ReadError> {
    let status = resp.status();
    let date = resp
        .headers()
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s).ok());
    // Non-OK answers only matter for their message: read less of them.
    let cap = if status == StatusCode::OK {
        cap
    } else {
        cap.min(MAX_ERROR_BODY_LEN)
    };
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = resp.into_body();
    let mut buf = Zeroizing::new(Vec::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Body)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > cap {
                return Err(ReadError::TooLarge);
            }
            // A reallocation would leave the old copy behind unzeroized: reserve the declared
            // length (at most `cap`, checked above) up front. Chunked answers grow as they come.
            if buf.capacity() == 0 {
                if let Some(n) = declared {
                    buf.reserve_exact(n as usize);
                }
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Reply {
        endpoint,
        status,
        date,
        body: buf,
    })
}

// ---------------------------------------------------------------------------------------------
// Watch

/// The most slots a [`Mirror`] holds. A window is a handful of slots; only junk keys under the
/// group's prefix (far-off slots anyone who can write there can put) fill it further, and then
/// it is emptied and filled again by reads: so it never holds more than this many values of at
/// most [`MAX_RECORD_LEN`] bytes.
const MAX_MIRROR_SLOTS: usize = 64;

/// What an established watch stream of a group has told about its slots: for each slot read
/// or changed since the stream was established, its value (`None`: no record) and the revision
/// it is known at.
///
/// Why it is exact: etcd delivers every event after a watch's creation, in revision order, on
/// that stream. A read sent after the creation was confirmed answers at a revision at least the
/// creation's; the events after it follow. So a slot's newest entry, read or event, by
/// revision, is the slot's value (up to the delay of the stream, like any notification). Reads
/// are recorded only in the epoch they began in: one sent before the stream was established, or
/// across its end, may predate events the stream no longer delivers. Values are capped like
/// every read ([`KeyValue::found`]).
#[derive(Default)]
struct Mirror {
    /// Bumped whenever the stream is established or lost and whenever the mirror is emptied.
    epoch: u64,
    /// Whether a stream is established and every event since is applied.
    live: bool,
    slots: BTreeMap<Slot, (i64, Option<Found>)>,
    /// Slots below this have left the window: never recorded again.
    floor: u64,
}

impl Mirror {
    /// The stream is established: from now on, what is learned is exact.
    fn establish(&mut self) {
        self.epoch += 1;
        self.live = true;
        self.slots.clear();
    }

    /// The stream ended (or is about to be opened): events may be missed.
    fn lose(&mut self) {
        self.epoch += 1;
        self.live = false;
        self.slots.clear();
    }

    /// What `slot` holds, if known: `Some(None)` for no record.
    fn get(&self, slot: Slot) -> Option<Option<Found>> {
        if !self.live {
            return None;
        }
        self.slots.get(&slot).map(|(_, found)| found.clone())
    }

    /// Drops the slots before `first`, which readers no longer ask for.
    fn forget_before(&mut self, first: Slot) {
        if first.0 > self.floor {
            self.floor = first.0;
            self.slots = self.slots.split_off(&first);
        }
    }

    /// Records that `slot` holds `found` at `revision`, learned in `epoch`, unless newer is
    /// known.
    fn learn(&mut self, epoch: u64, slot: Slot, revision: i64, found: Option<Found>) {
        if !self.live || epoch != self.epoch || slot.0 < self.floor {
            return;
        }
        if self
            .slots
            .get(&slot)
            .is_some_and(|(known, _)| *known >= revision)
        {
            return;
        }
        self.slots.insert(slot, (revision, found));
        if self.slots.len() > MAX_MIRROR_SLOTS {
            // Junk slots under the prefix. Emptied rather than trimmed: a trimmed slot could be
            // filled again by a read older than the event that was trimmed.
            self.epoch += 1;
            self.slots.clear();
        }
    }
}

/// Runs the watch of one group until the store is dropped or the group has no receivers.
async fn watch_group(
    conn: Arc<Conn>,
    group: String,
    tx: watch::Sender<u64>,
    mirror: Arc<Mutex<Mirror>>,
    mut shutdown: watch::Receiver<()>,
    watches: Watches,
) {
    let mut backoff = Backoff::new(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX);
    loop {
        let ended = tokio::select! {
            _ = shutdown.changed() => return,
            _ = tx.closed() => {
                lock(&mirror).lose();
                if unregister(&watches, &group, &tx) {
                    return;
                }
                continue;
            }
            ended = watch_stream(&conn, &group, &tx, &mirror) => ended,
        };
        // Whatever ended the stream, events may be missed from now on.
        lock(&mirror).lose();
        if ended.established {
            backoff.reset();
        }
        let pause = jitter(backoff.next());
        tracing::debug!(
            "The etcd watch of group {group} ended ({}); reopening in {pause:?}.",
            ended.why
        );
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tx.closed() => {
                if unregister(&watches, &group, &tx) {
                    return;
                }
            }
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Removes the group's entry if it still has no receivers; then its task may stop. Under the
/// lock, so that `changes` either subscribes before (and the task goes on) or creates a new entry
/// and task after.
fn unregister(watches: &Watches, group: &str, tx: &watch::Sender<u64>) -> bool {
    let mut watches = lock(watches);
    if tx.receiver_count() > 0 {
        return false;
    }
    if watches.get(group).is_some_and(|w| w.tx.same_channel(tx)) {
        watches.remove(group);
    }
    true
}

struct StreamEnd {
    /// Whether etcd confirmed the watch before the stream ended.
    established: bool,
    why: String,
}

/// Opens one watch stream and ticks `tx` until the stream ends, telling `mirror` what the
/// stream's events say (before each tick, so that the reader it wakes finds it).
async fn watch_stream(
    conn: &Conn,
    group: &str,
    tx: &watch::Sender<u64>,
    mirror: &Mutex<Mirror>,
) -> StreamEnd {
    lock(mirror).lose();
    let mut established = false;
    let end = |established, why: String| StreamEnd { established, why };
    let prefix = format!("stek/{group}/");
    let req = WatchRequest {
        create_request: WatchCreateRequest {
            key: BASE64.encode(&prefix),
            range_end: BASE64.encode(prefix_end(group)),
            // Deletes (lease expiry) are watched too, for the mirror; only puts tick.
            progress_notify: true,
        },
    };
    let body = match serde_json::to_vec(&req) {
        Ok(b) => Bytes::from(b),
        Err(e) => return end(false, e.to_string()),
    };
    let (endpoint, mut stream, token) = match conn.open_stream("/v3/watch", body).await {
        Ok(s) => s,
        Err(why) => return end(false, Chain(&why).to_string()),
    };
    // The gateway sends one JSON message per line.
    let mut buf = Zeroizing::new(Vec::new());
    let mut scanned = 0;
    loop {
        let frame = match tokio::time::timeout(WATCH_IDLE_TIMEOUT, stream.frame()).await {
            Err(_) => {
                return end(
                    established,
                    format!("{endpoint} sent nothing for {WATCH_IDLE_TIMEOUT:?}"),
                )
            }
            Ok(None) => return end(established, format!("{endpoint} closed the stream")),
            Ok(Some(Err(e))) => return end(established, format!("{endpoint}: {}", Chain(&e))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf[scanned..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|p| scanned + p)
        {
            let outcome = watch_message(group, &buf[..nl]);
            buf.drain(..=nl);
            scanned = 0;
            match outcome {
                Ok(WatchEvent::Created) => {
                    established = true;
                    lock(mirror).establish();
                    tx.send_modify(|n| *n = n.wrapping_add(1));
                }
                Ok(WatchEvent::Changes { put, slots }) => {
                    let mut m = lock(mirror);
                    let epoch = m.epoch;
                    for (slot, revision, found) in slots {
                        m.learn(epoch, slot, revision, found);
                    }
                    drop(m);
                    if put {
                        tx.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
                Ok(WatchEvent::Nothing) => {}
                Err(why) => {
                    // A token that expired since it was last used is refused only here, when
                    // the watch is created: the next attempt authenticates again.
                    if why.contains("invalid auth token") {
                        if let Some(stale) = &token {
                            conn.forget_token(stale).await;
                        }
                    }
                    return end(established, format!("{endpoint}: {why}"));
                }
            }
        }
        scanned = buf.len();
        if buf.len() > MAX_WATCH_MESSAGE_LEN {
            return end(
                established,
                format!("{endpoint} sent a watch message over {MAX_WATCH_MESSAGE_LEN} bytes"),
            );
        }
    }
}

#[derive(Debug)]
enum WatchEvent {
    /// etcd confirmed the watch.
    Created,
    /// Keys were put or deleted: whether any was put (news for readers), and what each slot
    /// key now holds, with the revision of the change (`None`: deleted, or not base64, which a
    /// read would also report as no record).
    Changes {
        put: bool,
        slots: Vec<(Slot, i64, Option<Found>)>,
    },
    /// A progress notification or an empty line.
    Nothing,
}

/// Interprets one message of the watch stream of `group`; `Err` ends the stream. A value is
/// decoded only up to [`MAX_RECORD_LEN`] ([`KeyValue::found`]); keys that are not exactly a
/// slot's key of the group are skipped.
fn watch_message(group: &str, line: &[u8]) -> Result<WatchEvent, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(WatchEvent::Nothing);
    }
    let msg: WatchMessage =
        serde_json::from_slice(line).map_err(|e| format!("malformed watch message: {e}"))?;
    if let Some(e) = msg.error {
        return Err(format!("watch failed: {}", sanitize(&e.message)));
    }
    let Some(r) = msg.result else {
        return Ok(WatchEvent::Nothing);
    };
    if r.canceled {
        let why = if r.compact_revision != 0 {
            format!("compacted at revision {}", r.compact_revision)
        } else {
            sanitize(&r.cancel_reason)
        };
        return Err(format!("etcd canceled the watch: {why}"));
    }
    if !r.events.is_empty() {
        // Confirmation and events never share a message, but a tick covers both anyway.
        let put = r.created || r.events.iter().any(|e| e.kind != "DELETE");
        let slots = r
            .events
            .iter()
            .filter_map(|e| {
                let kv = e.kv.as_ref()?;
                let slot = parse_slot_key(group, &kv.key)?;
                // A delete event's key-value carries the revision of the delete.
                let revision = kv
                    .mod_revision
                    .max(r.header.as_ref().map_or(0, |h| h.revision));
                let found = if e.kind == "DELETE" { None } else { kv.found() };
                Some((slot, revision, found))
            })
            .collect();
        return Ok(WatchEvent::Changes { put, slots });
    }
    Ok(if r.created {
        WatchEvent::Created
    } else {
        WatchEvent::Nothing
    })
}

// ---------------------------------------------------------------------------------------------
// The gateway's JSON (etcdserverpb in proto3 JSON, original field names).

#[derive(Serialize, Default)]
struct RangeRequest {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    range_end: Option<String>,
    /// Keys and revisions only, no values: a cheap look at a slot whatever its value's size.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    keys_only: bool,
    /// Only a key last modified exactly at this revision (min and max `mod_revision`), read at
    /// the current revision so that compaction cannot make the read fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    min_mod_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_mod_revision: Option<String>,
    /// At most this many keys (int64 as a string, as the gateway writes them).
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<String>,
}

/// The gateway's answer to `/v3/kv/deleterange` (`deleted` is a 64-bit integer as a string, left
/// out when zero).
#[derive(Deserialize)]
struct DeleteRangeResponse {
    #[serde(default, deserialize_with = "uint64")]
    deleted: u64,
}

fn uint64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = int64(d)?;
    u64::try_from(v).map_err(serde::de::Error::custom)
}

#[derive(Serialize)]
struct PutRequest<'a> {
    key: String,
    value: &'a str,
    lease: String,
}

#[derive(Serialize)]
struct Compare {
    target: &'static str,
    result: &'static str,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    create_revision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mod_revision: Option<String>,
}

#[derive(Serialize)]
enum RequestOp<'a> {
    #[serde(rename = "request_put")]
    Put(PutRequest<'a>),
    #[serde(rename = "request_range")]
    Range(RangeRequest),
}

#[derive(Serialize)]
struct TxnRequest<'a> {
    compare: [Compare; 1],
    success: [RequestOp<'a>; 1],
    failure: [RequestOp<'a>; 1],
}

#[derive(Serialize)]
struct LeaseGrantRequest {
    #[serde(rename = "TTL")]
    ttl: String,
}

#[derive(Serialize)]
struct LeaseRevokeRequest {
    #[serde(rename = "ID")]
    id: String,
}

#[derive(Serialize)]
struct WatchRequest {
    create_request: WatchCreateRequest,
}

#[derive(Serialize)]
struct WatchCreateRequest {
    key: String,
    range_end: String,
    progress_notify: bool,
}

#[derive(Deserialize)]
struct GatewayError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct LeaseGrantResponse {
    #[serde(rename = "ID", default, deserialize_with = "int64")]
    id: i64,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
struct KeyValue {
    #[serde(default)]
    key: String,
    /// Base64 of the record; zeroized on drop.
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int64")]
    lease: i64,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
}

impl Drop for KeyValue {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl KeyValue {
    /// The record, or `None` if it is not base64 or exceeds `MAX_RECORD_LEN`.
    #[cfg(test)]
    fn decode_value(&self) -> Option<stek_core::KeyBytes> {
        match self.found()? {
            Found::Record(r) => Some(r),
            Found::Oversize { .. } => None,
        }
    }

    /// The value as the store contract returns it: a record, or the mark of a value too long to
    /// be one (not decoded). `None` if it is not base64.
    fn found(&self) -> Option<Found> {
        // Check the encoded length first: never decode a huge value only to throw it away.
        if self.value.len() > base64::encoded_len(MAX_RECORD_LEN, true)? {
            return Some(Found::Oversize { len: None });
        }
        // Decoded into a buffer reserved in full up front, so no reallocation leaves a copy.
        let mut out = Zeroizing::new(Vec::with_capacity(base64::decoded_len_estimate(
            self.value.len(),
        )));
        BASE64.decode_vec(&self.value, &mut out).ok()?;
        // The base64 of up to two bytes more than the cap is no longer than the cap's.
        Some(if out.len() > MAX_RECORD_LEN {
            Found::Oversize {
                len: Some(out.len() as u64),
            }
        } else {
            Found::Record(out)
        })
    }
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Option<ResponseHeader>,
    #[serde(default)]
    kvs: Vec<KeyValue>,
    /// Whether keys beyond the request's limit remain.
    #[serde(default)]
    more: bool,
}

#[derive(Deserialize)]
struct ResponseOp {
    #[serde(default)]
    response_range: Option<RangeResponse>,
}

#[derive(Deserialize)]
struct TxnResponse {
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<ResponseOp>,
}

#[derive(Deserialize)]
struct WatchMessage {
    #[serde(default)]
    result: Option<WatchResult>,
    #[serde(default)]
    error: Option<GatewayError>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default, deserialize_with = "int64")]
    compact_revision: i64,
    #[serde(default)]
    header: Option<ResponseHeader>,
    #[serde(default)]
    events: Vec<WatchEventJson>,
}

/// One event of a watch message: `type` is left out for a put (proto3's default), `DELETE`
/// for a delete.
#[derive(Deserialize)]
struct WatchEventJson {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    kv: Option<KeyValue>,
}

#[derive(Deserialize)]
struct ResponseHeader {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

/// A proto3 JSON int64: a string ("123"), though a number is accepted too.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int64 {
        Text(String),
        Number(i64),
    }
    match Int64::deserialize(d)? {
        Int64::Number(n) => Ok(n),
        Int64::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (tls, eps) = parse_url("etcd://127.0.0.1:2379,etcd-b:2380,[::1]:1,h").unwrap();
        assert!(!tls);
        let eps: Vec<String> = eps.iter().map(|a| a.to_string()).collect();
        assert_eq!(eps, ["127.0.0.1:2379", "etcd-b:2380", "[::1]:1", "h:2379"]);
        assert_eq!(parse_url("etcd://h:1/").unwrap().1.len(), 1);
        let (tls, eps) = parse_url("etcds://a:1,b").unwrap();
        assert!(tls);
        assert_eq!(eps[1].to_string(), "b:2379");
        for bad in [
            "redis://h:1",
            "etcd://",
            "etcd://h:1,",
            "etcd://u@h:1",
            "etcd://h:1/path",
            "etcd://h:99999",
            "etcd://h:",
            "etcd://h:x",
            "http://h:1",
            "etcds://",
            "etcdss://h:1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn keys_sort_by_slot_and_parse_back_strictly() {
        assert_eq!(slot_key("g", Slot(7)), "stek/g/00000000000000000007");
        assert_eq!(slot_key("g", Slot(u64::MAX)), "stek/g/18446744073709551615");
        assert!(slot_key("g", Slot(9)) < slot_key("g", Slot(10)));
        assert!(slot_key("g", Slot(u64::MAX)) < prefix_end("g"));
        let b = |s: &str| BASE64.encode(s);
        assert_eq!(
            parse_slot_key("g", &b("stek/g/00000000000000000007")),
            Some(Slot(7))
        );
        assert_eq!(
            parse_slot_key("g", &b("stek/g/18446744073709551615")),
            Some(Slot(u64::MAX))
        );
        for bad in [
            "stek/g/18446744073709551616",
            "stek/g/0000000000000000007",
            "stek/g/000000000000000000070",
            "stek/g/0000000000000000000x",
            "stek/h/00000000000000000007",
            "stek/g/1/00000000000000007",
            "stek/g00000000000000000007",
        ] {
            assert_eq!(parse_slot_key("g", &b(bad)), None, "{bad}");
        }
        assert_eq!(parse_slot_key("g", "!!"), None);
    }

    #[test]
    fn lease_ttls_round_up_and_refuse_the_past() {
        let s = Duration::from_secs;
        assert_eq!(lease_ttl(s(100), s(90)), Some(10));
        assert_eq!(
            lease_ttl(s(100), s(90) + Duration::from_millis(1)),
            Some(10)
        );
        assert_eq!(
            lease_ttl(s(100) + Duration::from_millis(1), s(90)),
            Some(11)
        );
        assert_eq!(lease_ttl(s(100), s(100) - Duration::from_nanos(1)), Some(1));
        assert_eq!(lease_ttl(s(100), s(100)), None);
        assert_eq!(lease_ttl(s(100), s(101)), None);
        assert_eq!(lease_ttl(Duration::MAX, s(0)), Some(MAX_LEASE_TTL_SECS));
    }

    #[test]
    fn values_are_capped() {
        let kv = |v: String| KeyValue {
            key: String::new(),
            value: v,
            lease: 0,
            mod_revision: 0,
        };
        let ok = vec![1u8; MAX_RECORD_LEN];
        assert_eq!(
            kv(BASE64.encode(&ok)).decode_value().unwrap().as_slice(),
            ok.as_slice()
        );
        assert!(kv(BASE64.encode(vec![1u8; MAX_RECORD_LEN + 1]))
            .decode_value()
            .is_none());
        // The base64 of one byte over the cap is as long as the cap's: told apart once decoded.
        assert!(matches!(
            kv(BASE64.encode(vec![1u8; MAX_RECORD_LEN + 1])).found(),
            Some(Found::Oversize { len: Some(n) }) if n == MAX_RECORD_LEN as u64 + 1
        ));
        assert!(matches!(
            kv(BASE64.encode(vec![1u8; MAX_RECORD_LEN + 3])).found(),
            Some(Found::Oversize { len: None })
        ));
        assert!(kv("not base64!".to_owned()).decode_value().is_none());
        assert_eq!(kv(String::new()).decode_value().unwrap().len(), 0);
    }

    #[test]
    fn gateway_json_is_read_as_etcd_writes_it() {
        // Captured from etcd 3.4.23.
        let txn: TxnResponse = serde_json::from_str(
            r#"{"header":{"revision":"2"},"responses":[{"response_range":{"header":{"revision":"2"},
            "kvs":[{"key":"c3Rlay9nLzAwMDAwMDAwMDAwMDAwMDAwMDA3","create_revision":"2","mod_revision":"2",
            "version":"1","value":"aGVsbG8=","lease":"4111120285325677068"}],"count":"1"}}]}"#,
        )
        .unwrap();
        assert!(!txn.succeeded);
        let kv = &txn.responses[0].response_range.as_ref().unwrap().kvs[0];
        assert_eq!(kv.lease, 4111120285325677068);
        assert_eq!(kv.decode_value().unwrap().as_slice(), b"hello");
        let won: TxnResponse = serde_json::from_str(
            r#"{"header":{},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"2"}}}]}"#,
        )
        .unwrap();
        assert!(won.succeeded);
        let grant: LeaseGrantResponse =
            serde_json::from_str(r#"{"header":{},"ID":"4111120285325677064","TTL":"5"}"#).unwrap();
        assert_eq!(grant.id, 4111120285325677064);
    }

    #[test]
    fn txn_request_is_written_as_the_gateway_reads_it() {
        let txn = TxnRequest {
            compare: [Compare {
                target: "CREATE",
                result: "EQUAL",
                key: "aw==".into(),
                create_revision: Some("0"),
                mod_revision: None,
            }],
            success: [RequestOp::Put(PutRequest {
                key: "aw==".into(),
                value: "dg==",
                lease: "5".into(),
            })],
            failure: [RequestOp::Range(RangeRequest {
                key: "aw==".into(),
                range_end: None,
                ..Default::default()
            })],
        };
        assert_eq!(
            serde_json::to_string(&txn).unwrap(),
            r#"{"compare":[{"target":"CREATE","result":"EQUAL","key":"aw==","create_revision":"0"}],"success":[{"request_put":{"key":"aw==","value":"dg==","lease":"5"}}],"failure":[{"request_range":{"key":"aw=="}}]}"#
        );
    }

    #[test]
    fn replace_requests_are_written_as_the_gateway_reads_them() {
        let cmp = Compare {
            target: "MOD",
            result: "EQUAL",
            key: "aw==".into(),
            create_revision: None,
            mod_revision: Some("42".into()),
        };
        assert_eq!(
            serde_json::to_string(&cmp).unwrap(),
            r#"{"target":"MOD","result":"EQUAL","key":"aw==","mod_revision":"42"}"#
        );
        let head = RangeRequest {
            key: "aw==".into(),
            keys_only: true,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&head).unwrap(),
            r#"{"key":"aw==","keys_only":true}"#
        );
        let at = RangeRequest {
            key: "aw==".into(),
            min_mod_revision: Some("42".into()),
            max_mod_revision: Some("42".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&at).unwrap(),
            r#"{"key":"aw==","min_mod_revision":"42","max_mod_revision":"42"}"#
        );
    }

    #[test]
    fn watch_messages() {
        let created = watch_message(
            "g",
            br#"{"result":{"header":{"revision":"3"},"created":true}}"#,
        );
        assert!(matches!(created, Ok(WatchEvent::Created)), "{created:?}");
        // Captured from etcd 3.4.23: a put (no "type"), then a delete of the same key.
        let key = BASE64.encode("stek/g/00000000000000000007");
        let put = format!(
            r#"{{"result":{{"header":{{"revision":"5"}},"events":[{{"kv":{{"key":"{key}","create_revision":"5","mod_revision":"5","version":"1","value":"aGVsbG8=","lease":"7"}}}},{{"kv":{{"key":"eA==","mod_revision":"5","value":"eA=="}}}}]}}}}"#
        );
        let Ok(WatchEvent::Changes { put: true, slots }) = watch_message("g", put.as_bytes())
        else {
            panic!("a put");
        };
        // The junk key is skipped.
        assert_eq!(slots.len(), 1);
        assert!(
            matches!(&slots[0], (Slot(7), 5, Some(Found::Record(r))) if r.as_slice() == b"hello")
        );
        let delete = format!(
            r#"{{"result":{{"header":{{"revision":"6"}},"events":[{{"type":"DELETE","kv":{{"key":"{key}","mod_revision":"6"}}}}]}}}}"#
        );
        let Ok(WatchEvent::Changes { put: false, slots }) = watch_message("g", delete.as_bytes())
        else {
            panic!("a delete");
        };
        assert!(matches!(slots.as_slice(), [(Slot(7), 6, None)]));
        // An oversize value is marked, not decoded.
        let huge = format!(
            r#"{{"result":{{"events":[{{"kv":{{"key":"{key}","mod_revision":"8","value":"{}"}}}}]}}}}"#,
            BASE64.encode(vec![1u8; MAX_RECORD_LEN + 3])
        );
        let Ok(WatchEvent::Changes { slots, .. }) = watch_message("g", huge.as_bytes()) else {
            panic!("a put");
        };
        assert!(matches!(
            slots.as_slice(),
            [(Slot(7), 8, Some(Found::Oversize { len: None }))]
        ));
        assert!(matches!(
            watch_message("g", br#"{"result":{"header":{"revision":"9"}}}"#),
            Ok(WatchEvent::Nothing)
        ));
        assert!(matches!(watch_message("g", b"  "), Ok(WatchEvent::Nothing)));
        let compacted = watch_message(
            "g",
            br#"{"result":{"canceled":true,"compact_revision":"7"}}"#,
        );
        assert!(compacted.unwrap_err().contains("compacted at revision 7"));
        let err = watch_message(
            "g",
            br#"{"error":{"grpc_code":14,"http_code":503,"message":"no leader\u001b[31m"}}"#,
        );
        assert_eq!(err.unwrap_err(), "watch failed: no leader [31m");
        assert!(watch_message("g", b"{not json").is_err());
    }

    #[test]
    fn the_mirror_keeps_the_newest_and_forgets_what_may_be_stale() {
        let rec = |b: &[u8]| Some(Found::Record(Zeroizing::new(b.to_vec())));
        let is = |f: Option<Option<Found>>, want: Option<&[u8]>| match (f, want) {
            (Some(Some(Found::Record(r))), Some(w)) => r.as_slice() == w,
            (Some(None), None) => true,
            _ => false,
        };
        let mut m = Mirror::default();
        // Nothing is learned or served before the stream is established.
        m.learn(m.epoch, Slot(1), 5, rec(b"a"));
        assert!(m.get(Slot(1)).is_none());
        m.establish();
        let e = m.epoch;
        m.learn(e, Slot(1), 5, rec(b"a"));
        m.learn(e, Slot(2), 5, None);
        assert!(is(m.get(Slot(1)), Some(b"a")));
        assert!(is(m.get(Slot(2)), None));
        assert!(m.get(Slot(3)).is_none());
        // An event newer than a read wins; a read older than an event does not undo it.
        m.learn(e, Slot(2), 7, rec(b"b"));
        m.learn(e, Slot(2), 6, None);
        assert!(is(m.get(Slot(2)), Some(b"b")));
        m.learn(e, Slot(2), 9, None);
        assert!(is(m.get(Slot(2)), None));
        // A read begun in another epoch is not recorded.
        m.learn(e - 1, Slot(3), 10, rec(b"c"));
        assert!(m.get(Slot(3)).is_none());
        // Slots that left the window are dropped and never learned again.
        m.forget_before(Slot(2));
        assert!(m.get(Slot(1)).is_none());
        m.learn(e, Slot(1), 11, rec(b"a"));
        assert!(m.get(Slot(1)).is_none());
        // Junk slots beyond the cap empty the mirror; reads then fill it again.
        for s in 0..MAX_MIRROR_SLOTS as u64 {
            m.learn(m.epoch, Slot(1000 + s), 20, None);
        }
        assert!(m.slots.len() <= MAX_MIRROR_SLOTS);
        assert!(m.get(Slot(2)).is_none());
        // A lost stream forgets everything.
        m.establish();
        m.learn(m.epoch, Slot(5), 30, rec(b"e"));
        m.lose();
        assert!(m.get(Slot(5)).is_none());
        m.learn(m.epoch, Slot(5), 31, rec(b"e"));
        assert!(m.get(Slot(5)).is_none());
    }

    #[test]
    fn error_messages_are_etcds_own_and_tamed() {
        let reply = |body: &str| Reply {
            endpoint: "127.0.0.1:1".parse().unwrap(),
            status: StatusCode::NOT_FOUND,
            date: None,
            body: Zeroizing::new(body.as_bytes().to_vec()),
        };
        assert_eq!(
            reply(r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#)
                .refused("/v3/kv/txn")
                .to_string(),
            "etcd at 127.0.0.1:1 (/v3/kv/txn) refused the request: etcdserver: requested lease not found"
        );
        assert_eq!(
            reply("<html>").refused("/x").to_string(),
            "etcd at 127.0.0.1:1 (/x) refused the request: HTTP 404 Not Found"
        );
        let long = format!(r#"{{"message":"{}"}}"#, "a".repeat(1000));
        let msg = reply(&long).refusal().to_string();
        assert!(msg.chars().count() <= MAX_ERROR_MESSAGE_CHARS + 1, "{msg}");
        assert!(msg.ends_with('…'));
    }

    #[test]
    fn failures_chain_each_endpoints_cause() {
        use std::error::Error as _;
        let one = Failover(vec![(
            "127.0.0.1:1".parse().unwrap(),
            AttemptError::Timeout(REQUEST_TIMEOUT),
        )]);
        assert_eq!(one.to_string(), "etcd at 127.0.0.1:1");
        assert_eq!(
            one.source().unwrap().to_string(),
            format!("no answer within {REQUEST_TIMEOUT:?}")
        );
        let e = StoreError::Unavailable {
            store: etcd("/v3/kv/range"),
            source: Arc::new(one),
        };
        assert_eq!(e.source().unwrap().to_string(), "etcd at 127.0.0.1:1");
        assert_eq!(
            Chain(&e).to_string(),
            format!("etcd (/v3/kv/range) is unavailable: etcd at 127.0.0.1:1: no answer within {REQUEST_TIMEOUT:?}")
        );
        let two = Failover(vec![
            (
                "a:1".parse().unwrap(),
                AttemptError::Timeout(FAILOVER_TIMEOUT),
            ),
            (
                "b:2".parse().unwrap(),
                AttemptError::Unavailable(Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: Some("etcdserver: no leader".into()),
                }),
            ),
        ]);
        assert!(two.source().is_none());
        assert_eq!(
            two.to_string(),
            format!("etcd at a:1: no answer within {FAILOVER_TIMEOUT:?}; etcd at b:2: unavailable: etcdserver: no leader")
        );
    }

    #[tokio::test]
    async fn a_refused_connection_keeps_the_transport_error() {
        use std::error::Error as _;
        // Nothing listens on port 1.
        let store = EtcdStore::connect("etcd://127.0.0.1:1").unwrap();
        let e = store.read_window("g", Slot(1), Slot(2)).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        let attempt = e.source().and_then(|f| f.source()).expect("the attempt");
        assert_eq!(attempt.to_string(), "the request failed");
        assert!(attempt.source().is_some(), "the HTTP client's error");
        let chain = Chain(&e).to_string();
        assert!(chain.contains("Connection refused"), "{chain}");
        let bad = EtcdStore::connect("etcd://h:").unwrap_err();
        assert!(matches!(bad, StoreError::BadUrl { .. }), "{bad:?}");
    }

    #[test]
    fn every_request_requires_a_leader_and_carries_the_token_unlogged() {
        let store = EtcdStore::connect("etcds://127.0.0.1:1,127.0.0.1:2").unwrap();
        let mut token = HeaderValue::from_static("secret-token");
        token.set_sensitive(true);
        let req = store
            .conn
            .request(1, &Method::POST, "/v3/watch", Bytes::new(), Some(&token))
            .unwrap();
        assert_eq!(req.uri().to_string(), "https://127.0.0.1:2/v3/watch");
        assert_eq!(req.headers()["grpc-metadata-hasleader"], "true");
        assert!(req.headers()[header::AUTHORIZATION].is_sensitive());
        assert!(!format!("{:?}", req.headers()).contains("secret-token"));
    }

    #[test]
    fn watch_reconnections_back_off_to_their_cap_with_jitter() {
        let mut backoff = Backoff::new(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX);
        let mut step = WATCH_BACKOFF_MIN;
        for _ in 0..20 {
            let pause = jitter(backoff.next());
            assert!(
                pause >= step.mul_f64(0.8) && pause < step.mul_f64(1.2),
                "{pause:?} outside 0.8..1.2 × {step:?}"
            );
            step = (step * 2).min(WATCH_BACKOFF_MAX);
        }
        assert_eq!(backoff.peek(), WATCH_BACKOFF_MAX);
    }
}
