//! The Redis store: records as string keys with an expiry, notifications over pub/sub.
//!
//! A fleet runs one Redis primary and a read replica in each site. Generators point at the
//! primary (only it accepts writes); agents point at their local replica, which both serves
//! their reads and relays the primary's pub/sub messages, so a site keeps its keys while the
//! link to the primary is down.
//!
//! Layout, shared by every stek process that talks to the same Redis:
//!
//! - the record of `(group, slot)` lives at the key `stek:<group>:<slot>` (slot in decimal), a
//!   plain string whose expiry is the record's erase time (`PXAT`), so Redis itself deletes every
//!   record when its key leaves every window;
//! - after a record is created, the slot number is published on the channel `stek:<group>`.
//!
//! The slot is the last `:`-separated field and is all digits, so two groups never share a key
//! even when a group name contains `:`.
//!
//! # Values are measured before they are sent
//!
//! Anyone who can write to Redis can put a value of any size (up to 512 MB) under a record's
//! key. Reads and creates therefore run as Lua scripts that look at each value's type and
//! length first and return the value only if it can be a record (at most [`MAX_RECORD_LEN`]
//! bytes), else its length, in the same atomic step (a `STRLEN` followed by a separate `GET`
//! could read a value swapped in between). Reads use `EVAL_RO` with the `no-writes` flag,
//! which read-only replicas accept; creates use `EVAL` on the primary.
//!
//! Requires Redis 7.0 or newer (`EVAL_RO`, script flags).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ErrorKind, RedisError, ServerErrorKind, Value};
use stek_core::record::MAX_RECORD_LEN;
use stek_core::{jitter, Backoff, Slot};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::{Created, Found, Replaced, Seen, Store, StoreError};
use crate::clock::{Clock, SystemClock};

/// The most slots one [`Store::read_window`] reads. An agent's window is `R + 2` slots (20 with
/// the defaults); the cap keeps a misconfigured caller from sending Redis one huge `MGET`.
pub const MAX_WINDOW_SLOTS: u64 = 10_000;

/// How long one connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command may wait for its reply. Generous for an `MGET` of a full window of
/// records, short enough that an agent learns quickly that its replica is gone.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnection attempts per failed command before its error reaches the caller. The caller
/// retries on its own schedule (and the next command starts a new round), so a command never
/// blocks the agent's loop for long while the store is down.
const RECONNECT_RETRIES: usize = 2;

/// How often a subscription that heard nothing checks its connection with `PING`, so that a
/// half-open connection (a replica that vanished without closing it) is noticed and replaced.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// First and largest delay between resubscription attempts (before jitter): doubling from the
/// first to the largest, each one jittered so that the many agents behind one replica do not all
/// resubscribe at the same instant when it comes back.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(5);

/// Reads the keys `KEYS` (one per slot, in order) and answers, for each, its value if it is a
/// string of at most `ARGV[1]` bytes, its length (an integer) if it is longer, and nil if it is
/// absent or not a string. The value of an oversize key never leaves Redis. `no-writes` lets a
/// read-only replica run it (with `EVAL_RO`).
const READ_SCRIPT: &str = r#"#!lua flags=no-writes
local cap = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('TYPE', key)['ok'] == 'string' then
    local n = redis.call('STRLEN', key)
    if n > cap then out[i] = n else out[i] = redis.call('GET', key) end
  else
    out[i] = false
  end
end
return out
"#;

/// Create-if-absent for `KEYS[1]`: if the key is absent, stores `ARGV[1]` expiring at `ARGV[2]`
/// (Unix milliseconds) and answers nil; else answers what [`READ_SCRIPT`] would (the value if at
/// most `ARGV[3]` bytes, else its length), or a `WRONGTYPE` error if it is not a string. One
/// atomic step, so a loser always gets the winner back even if it expires a moment later.
const CREATE_SCRIPT: &str = r#"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
  return false
end
if kind ~= 'string' then
  return redis.error_reply('WRONGTYPE the key holds a ' .. kind .. ', not a record')
end
local n = redis.call('STRLEN', KEYS[1])
if n > tonumber(ARGV[3]) then return n end
return redis.call('GET', KEYS[1])
"#;

/// Compare-and-set for `KEYS[1]`: stores `ARGV[1]` expiring at `ARGV[2]` (Unix milliseconds)
/// only if the key still holds what the caller saw, described by `ARGV[3]`: `absent` (no key),
/// `value` (a string equal to `ARGV[4]`) or `oversize` (a string longer than `ARGV[5]` bytes, of
/// length `ARGV[4]` unless that is empty). Answers 1 if it wrote, 0 if not. The exact bytes are
/// compared (Redis 7.0 Lua has no SHA-256); the length is compared first so a large value is not
/// copied into Lua for nothing.
const REPLACE_SCRIPT: &str = r#"
local kind = redis.call('TYPE', KEYS[1])['ok']
local mode = ARGV[3]
local same = false
if kind == 'none' then
  same = (mode == 'absent')
elseif kind == 'string' then
  local n = redis.call('STRLEN', KEYS[1])
  if mode == 'oversize' then
    same = n > tonumber(ARGV[5]) and (ARGV[4] == '' or n == tonumber(ARGV[4]))
  elseif mode == 'value' then
    same = n == string.len(ARGV[4]) and redis.call('GET', KEYS[1]) == ARGV[4]
  end
end
if not same then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
return 1
"#;

/// One value answered by [`READ_SCRIPT`] or [`CREATE_SCRIPT`]: `None` for nil.
fn found(value: Value, what: &str) -> Result<Option<Found>, StoreError> {
    match value {
        Value::Nil => Ok(None),
        // Wrapped at once so that the copy is zeroized when dropped.
        Value::BulkString(v) if v.len() <= MAX_RECORD_LEN => {
            Ok(Some(Found::Record(Zeroizing::new(v))))
        }
        Value::BulkString(v) => {
            // The script never sends such a value; a server that did is not Redis as we know it.
            drop(Zeroizing::new(v));
            Err(bad_answer(format!(
                "{what} answered a value over {MAX_RECORD_LEN} bytes"
            )))
        }
        Value::Int(n) => match u64::try_from(n) {
            Ok(n) if n > MAX_RECORD_LEN as u64 => Ok(Some(Found::Oversize { len: Some(n) })),
            _ => Err(bad_answer(format!("{what} answered the length {n}"))),
        },
        other => Err(bad_answer(format!("{what} answered {}", kind(&other)))),
    }
}

/// `expires_at` in Unix milliseconds for `PXAT`. They fit an i64 for the next 292 million years;
/// saturate rather than wrap for an absurd expiry.
fn pxat(expires_at: Duration) -> u64 {
    u64::try_from(expires_at.as_millis())
        .unwrap_or(u64::MAX)
        .min(i64::MAX as u64)
}

/// Announces a new record of `(group, slot)`. Only a hint (agents also poll), so a failure must
/// not turn a stored record into an error the generator would retry.
async fn announce(conn: &mut ConnectionManager, group: &str, slot: Slot) {
    if let Err(e) = redis::cmd("PUBLISH")
        .arg(channel(group))
        .arg(slot.0)
        .query_async::<Value>(conn)
        .await
    {
        warn!("group {group}: stored slot {slot} but could not announce it: {e}");
    }
}

/// TLS and credentials are not spoken to Redis yet: refused rather than ignored.
fn refuse_access(access: &super::LoadedAccess) -> Result<(), StoreError> {
    if access.is_set() {
        return Err(StoreError::BadUrl {
            reason: "TLS and credentials for Redis are not supported by this build".into(),
            source: None,
        });
    }
    Ok(())
}

/// The key of the record of `(group, slot)`.
fn record_key(group: &str, slot: Slot) -> String {
    format!("stek:{group}:{}", slot.0)
}

/// The pub/sub channel that announces new records of `group`.
fn channel(group: &str) -> String {
    format!("stek:{group}")
}

/// A store in Redis. Cheap to share behind an `Arc`: commands from every task are multiplexed
/// over one connection, which reconnects by itself after a failure.
///
/// Records it returns are untrusted (anyone who can write to Redis can put anything there);
/// values larger than [`MAX_RECORD_LEN`] are skipped before anyone parses them.
pub struct RedisStore {
    client: Client,
    conn: ConnectionManager,
    /// The runtime that runs the notification tasks (`changes` is not async, so it cannot find
    /// one by itself when called from outside the runtime's threads).
    runtime: Handle,
    /// One subscription task per group, shared by every receiver of that group.
    notifiers: Mutex<HashMap<String, Notifier>>,
}

struct Notifier {
    tx: watch::Sender<u64>,
    task: AbortHandle,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The address only: the URL may carry a password.
        let info = self.client.get_connection_info();
        f.debug_struct("RedisStore")
            .field("addr", &info.addr().to_string())
            .field("db", &info.redis_settings().db())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://HOST:PORT`, optionally `redis://HOST:PORT/DB`,
    /// or any other URL the `redis` crate accepts, such as `redis+unix:///PATH`).
    ///
    /// Fails if the URL is invalid or the server cannot be reached now; once connected, the
    /// store reconnects by itself after failures. Must be called inside a Tokio runtime, which
    /// then runs the store's background tasks.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        Self::connect_with(url, &super::LoadedAccess::default()).await
    }

    /// [`RedisStore::connect`] with TLS and credentials.
    pub async fn connect_with(
        url: &str,
        access: &super::LoadedAccess,
    ) -> Result<RedisStore, StoreError> {
        refuse_access(access)?;
        let client = Client::open(url).map_err(invalid_url)?;
        let conn = ConnectionManager::new_with_config(client.clone(), manager_config())
            .await
            .map_err(unavailable)?;
        Ok(Self::with(client, conn))
    }

    /// Like [`RedisStore::connect`], but does not talk to the server until the first command,
    /// so a process can start while its store is down and follow the failure policy until it
    /// returns. Only an invalid URL fails. Must be called inside a Tokio runtime.
    pub fn connect_lazy(url: &str) -> Result<RedisStore, StoreError> {
        Self::connect_lazy_with(url, &super::LoadedAccess::default())
    }

    /// [`RedisStore::connect_lazy`] with TLS and credentials.
    pub fn connect_lazy_with(
        url: &str,
        access: &super::LoadedAccess,
    ) -> Result<RedisStore, StoreError> {
        refuse_access(access)?;
        let client = Client::open(url).map_err(invalid_url)?;
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config())
            .map_err(unavailable)?;
        Ok(Self::with(client, conn))
    }

    fn with(client: Client, conn: ConnectionManager) -> RedisStore {
        RedisStore {
            client,
            conn,
            runtime: Handle::current(),
            notifiers: Mutex::new(HashMap::new()),
        }
    }

    /// The server's clock (`TIME`), as time since the Unix epoch. Agents compare it with their
    /// own clock: the store's clock is the one that expires records, and every host's schedule
    /// must agree with it to within `P/4` (docs/DESIGN.md §5).
    pub async fn server_time(&self) -> Result<Duration, StoreError> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if micros >= 1_000_000 {
            return Err(bad_answer(format!("TIME answered {micros} microseconds")));
        }
        Ok(Duration::from_secs(secs) + Duration::from_micros(micros))
    }

    fn lock_notifiers(&self) -> MutexGuard<'_, HashMap<String, Notifier>> {
        // Every critical section is a lookup or a single insert, so a poisoned map is intact.
        self.notifiers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // The tasks hold no reference to the store; stop them with it, which closes their
        // pub/sub connections and, once the map's senders are gone too, ends every receiver.
        for n in self.lock_notifiers().values() {
            n.task.abort();
        }
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_max_delay(Duration::from_secs(1))
}

/// How error messages name the store.
const REDIS: &str = "Redis";

/// A failed connection or command. An error reply (`READONLY You can't write against a read only
/// replica.`, `NOAUTH ...`) is a refusal and keeps Redis's own words, except the replies of a
/// server that cannot serve for now (`LOADING`, `MASTERDOWN`, `TRYAGAIN`, `CLUSTERDOWN`), which
/// are an outage like a refused connection or a timeout.
fn unavailable(e: RedisError) -> StoreError {
    let store = REDIS.to_owned();
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown,
        ) => StoreError::Unavailable {
            store,
            source: Arc::new(RedisCause(e)),
        },
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreError::BadAnswer {
            store,
            what: "a reply the client cannot read".to_owned(),
            source: Some(Arc::new(RedisCause(e))),
        },
        _ => match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => StoreError::Refused {
                store,
                message: format!("{code} {detail}"),
            },
            (Some(code), None) => StoreError::Refused {
                store,
                message: code.to_owned(),
            },
            _ => StoreError::Unavailable {
                store,
                source: Arc::new(RedisCause(e)),
            },
        },
    }
}

fn invalid_url(e: RedisError) -> StoreError {
    // The URL itself is left out: it may carry a password.
    StoreError::BadUrl {
        reason: "not a Redis URL the client accepts".to_owned(),
        source: Some(Arc::new(RedisCause(e))),
    }
}

fn bad_answer(what: String) -> StoreError {
    StoreError::BadAnswer {
        store: REDIS.to_owned(),
        what,
        source: None,
    }
}

/// A [`RedisError`] as the cause of a [`StoreError`]. A `RedisError` prints its inner error and
/// also returns it from `source()`; this skips that repeated level, so that a chain reads
/// `Redis is unavailable: Connection refused (os error 111)` with the OS error once.
#[derive(Debug)]
struct RedisCause(RedisError);

impl fmt::Display for RedisCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for RedisCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let inner = self.0.source()?;
        if inner.to_string() == self.0.to_string() {
            inner.source()
        } else {
            Some(inner)
        }
    }
}

/// The kind of a reply, for error messages that must not echo untrusted content.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a string",
        Value::Array(_) => "an array",
        Value::SimpleString(_) | Value::Okay => "a status",
        _ => "an unexpected type",
    }
}

impl Store for RedisStore {
    /// [`CREATE_SCRIPT`]: Redis stores the record only if the key is absent and, in the same
    /// atomic step, returns the value that was there, or only its length if it is over
    /// [`MAX_RECORD_LEN`] (`Created::Oversize`). So a loser always gets the winner back, even if
    /// the winner expires a moment later (a separate `GET` after a failed `SET NX` could find
    /// nothing). The winner then announces the slot on `stek:<group>`.
    ///
    /// An `expires_at` already past (by this host's clock) writes nothing: such a record has
    /// left every window and must not be stored, not even for the instant before Redis would
    /// drop it. The result is what the embedded store reports for it: `Lost` with the record
    /// still live in the slot if there is one, else `Won` (stored and expired at once: nobody
    /// will ever read it).
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
        let key = record_key(group, slot);
        let mut conn = self.conn.clone();
        let lost = |f: Found| match f {
            Found::Record(r) => Created::Lost(r),
            Found::Oversize { len } => Created::Oversize { len },
        };
        if expires_at <= SystemClock::new().now() {
            let reply: Value = redis::cmd("EVAL_RO")
                .arg(READ_SCRIPT)
                .arg(1)
                .arg(&key)
                .arg(MAX_RECORD_LEN)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let Value::Array(mut values) = reply else {
                return Err(bad_answer(format!(
                    "the read of {key} answered {}",
                    kind(&reply)
                )));
            };
            if values.len() != 1 {
                return Err(bad_answer(format!(
                    "the read of {key} answered {} values",
                    values.len()
                )));
            }
            return Ok(match found(values.remove(0), &key)? {
                None => Created::Won,
                Some(f) => lost(f),
            });
        }
        let pxat = pxat(expires_at);
        let previous: Value = redis::cmd("EVAL")
            .arg(CREATE_SCRIPT)
            .arg(1)
            .arg(&key)
            .arg(record)
            .arg(pxat)
            .arg(MAX_RECORD_LEN)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if let Some(f) = found(previous, &format!("the create of {key}"))? {
            return Ok(lost(f));
        }
        announce(&mut conn, group, slot).await;
        Ok(Created::Won)
    }

    /// [`REPLACE_SCRIPT`] on the primary: the comparison with what the caller saw and the `SET`
    /// are one atomic step. A won replace is announced like a created record.
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
        // A record past its expiry has left every window: nothing to repair (and `SET PXAT` in
        // the past would delete the value rather than store ours).
        if expires_at <= SystemClock::new().now() {
            return Ok(Replaced::Lost);
        }
        let key = record_key(group, slot);
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(REPLACE_SCRIPT)
            .arg(1)
            .arg(&key)
            .arg(record)
            .arg(pxat(expires_at));
        match seen {
            Seen::Absent => cmd.arg("absent").arg(""),
            Seen::Value(v) => cmd.arg("value").arg(v.as_slice()),
            Seen::Oversize { len: Some(n) } => cmd.arg("oversize").arg(*n),
            Seen::Oversize { len: None } => cmd.arg("oversize").arg(""),
        };
        cmd.arg(MAX_RECORD_LEN);
        let wrote: Value = cmd.query_async(&mut conn).await.map_err(unavailable)?;
        match wrote {
            Value::Int(1) => {
                announce(&mut conn, group, slot).await;
                Ok(Replaced::Won)
            }
            Value::Int(0) => Ok(Replaced::Lost),
            other => Err(bad_answer(format!(
                "the replace of {key} answered {}",
                kind(&other)
            ))),
        }
    }

    /// One [`READ_SCRIPT`] (`EVAL_RO`) over the keys of `first..=last` (at most
    /// [`MAX_WINDOW_SLOTS`] of them): exact keys, so junk keys elsewhere under `stek:<group>:`
    /// cost nothing. Absent keys and keys of another type are skipped; values longer than
    /// [`MAX_RECORD_LEN`] come back as [`Found::Oversize`] with their length, never their bytes.
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
        let slots: Vec<Slot> = (first.0..=last.0).map(Slot).collect();
        let mut read = redis::cmd("EVAL_RO");
        read.arg(READ_SCRIPT).arg(slots.len());
        for &slot in &slots {
            read.arg(record_key(group, slot));
        }
        read.arg(MAX_RECORD_LEN);
        let reply: Value = read
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let Value::Array(values) = reply else {
            return Err(bad_answer(format!(
                "the window read answered {}",
                kind(&reply)
            )));
        };
        if values.len() != slots.len() {
            return Err(bad_answer(format!(
                "the window read answered {} values for {} keys",
                values.len(),
                slots.len()
            )));
        }
        let mut out = Vec::new();
        for (slot, value) in slots.into_iter().zip(values) {
            if let Some(f) = found(value, "the window read")? {
                out.push((slot, f));
            }
        }
        Ok(out)
    }

    /// A receiver that ticks on every message of `stek:<group>`, and once more after each
    /// resubscription (messages published while the subscription was down are lost, so the
    /// reader should look again). A background task holds a pub/sub connection of its own and
    /// resubscribes with backoff after any failure, so notifications resume when the server
    /// returns. The task ends when every receiver of the group is dropped or the store is;
    /// after the store is dropped, `changed()` on a receiver returns an error.
    fn changes(&self, group: &str) -> Option<watch::Receiver<u64>> {
        let mut notifiers = self.lock_notifiers();
        if let Some(n) = notifiers.get(group) {
            // A sender with no receivers left belongs to a task that has ended or is ending;
            // receivers are handed out only here, so a live one keeps its task running.
            if !n.tx.is_closed() {
                return Some(n.tx.subscribe());
            }
        }
        let tx = watch::Sender::new(0u64);
        // Subscribe before the task starts: a sender without receivers counts as closed.
        let rx = tx.subscribe();
        let task = self
            .runtime
            .spawn(notify(self.client.clone(), group.to_owned(), tx.clone()))
            .abort_handle();
        if let Some(old) = notifiers.insert(group.to_owned(), Notifier { tx, task }) {
            old.task.abort();
        }
        Some(rx)
    }

    /// `SCAN ... MATCH stek:*` until the cursor ends or [`super::SURVEY_LIMIT`] keys were listed
    /// (at most 32 round trips). A user without the right to SCAN gets the store's error.
    async fn survey(&self) -> Result<Option<super::Survey>, StoreError> {
        let mut survey = super::Survey::default();
        let mut cursor = 0u64;
        let mut listed = 0usize;
        for _ in 0..32 {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("stek:*")
                .arg("COUNT")
                .arg(super::SURVEY_LIMIT)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            for key in &keys {
                let Some(key) = std::str::from_utf8(key)
                    .ok()
                    .and_then(|k| k.strip_prefix("stek:"))
                else {
                    continue;
                };
                if let Some((group, slot)) = key.rsplit_once(':') {
                    survey.add(group, slot);
                }
            }
            listed += keys.len();
            cursor = next;
            if cursor == 0 {
                return Ok(Some(survey));
            }
            if listed >= super::SURVEY_LIMIT {
                break;
            }
        }
        survey.truncated = true;
        Ok(Some(survey))
    }

    /// Always `Some`: Redis has a clock (`TIME`), the one that expires records.
    async fn server_time(&self) -> Result<Option<Duration>, StoreError> {
        RedisStore::server_time(self).await.map(Some)
    }
}

/// Subscribes to `stek:<group>` and ticks `tx` on every message, until every receiver is gone.
async fn notify(client: Client, group: String, tx: watch::Sender<u64>) {
    let channel = channel(&group);
    let tick = || tx.send_modify(|n| *n = n.wrapping_add(1));
    let mut backoff = Backoff::new(RESUBSCRIBE_MIN, RESUBSCRIBE_MAX);
    // Whether messages may have been missed since the receivers were handed out.
    let mut missed = false;
    loop {
        let subscribed = async {
            let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| "timed out connecting".to_owned())?
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(RESPONSE_TIMEOUT, pubsub.subscribe(&channel))
                .await
                .map_err(|_| "timed out subscribing".to_owned())?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(pubsub)
        };
        let pubsub = tokio::select! {
            () = tx.closed() => return,
            r = subscribed => r,
        };
        match pubsub {
            Ok(pubsub) => {
                backoff.reset();
                if missed {
                    info!("group {group}: subscribed to {channel} again");
                    tick();
                }
                let (mut sink, mut messages) = pubsub.split();
                let why = loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        m = messages.next() => match m {
                            Some(_) => tick(),
                            None => break "the connection closed".to_owned(),
                        },
                        () = tokio::time::sleep(KEEPALIVE) => {
                            match tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<Value>()).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(e)) => break e.to_string(),
                                Err(_) => break "PING timed out".to_owned(),
                            }
                        }
                    }
                };
                warn!("group {group}: lost the subscription to {channel}: {why}; resubscribing");
            }
            Err(why) => debug!("group {group}: cannot subscribe to {channel}: {why}"),
        }
        missed = true;
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(jitter(backoff.next())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_channels() {
        assert_eq!(record_key("web", Slot(481_234)), "stek:web:481234");
        assert_eq!(channel("web"), "stek:web");
        // A group name with ':' cannot reach another group's key: the slot is the last field
        // and is all digits.
        assert_ne!(record_key("a:1", Slot(2)), record_key("a", Slot(12)));
    }

    #[test]
    fn resubscription_delays_grow_to_their_cap_with_jitter() {
        let mut b = Backoff::new(RESUBSCRIBE_MIN, RESUBSCRIBE_MAX);
        let mut step = RESUBSCRIBE_MIN;
        for _ in 0..20 {
            let d = jitter(b.next());
            assert!(
                d >= step.mul_f64(0.8) && d < step.mul_f64(1.2),
                "{d:?} outside 0.8..1.2 × {step:?}"
            );
            step = (step * 2).min(RESUBSCRIBE_MAX);
        }
        assert_eq!(b.peek(), RESUBSCRIBE_MAX);
    }

    #[tokio::test]
    async fn invalid_urls_and_oversized_records_fail_without_a_server() {
        let bad = RedisStore::connect_lazy("http://example").unwrap_err();
        assert!(matches!(bad, StoreError::BadUrl { .. }), "{bad:?}");
        assert!(std::error::Error::source(&bad).is_some(), "{bad:?}");
        // Nothing listens on port 1: the lazy store starts anyway and reports the outage per
        // command.
        let store = RedisStore::connect_lazy("redis://127.0.0.1:1").unwrap();
        let big = vec![0u8; MAX_RECORD_LEN + 1];
        assert!(matches!(
            store.create("g", Slot(1), &big, Duration::MAX).await,
            Err(StoreError::TooLarge(n)) if n == MAX_RECORD_LEN + 1
        ));
        assert!(matches!(
            store
                .read_window("g", Slot(0), Slot(MAX_WINDOW_SLOTS))
                .await,
            Err(StoreError::WindowTooLarge { .. })
        ));
        assert!(store
            .read_window("g", Slot(5), Slot(4))
            .await
            .unwrap()
            .is_empty());
        // The outage keeps the client's error as its cause, the OS error once.
        let down = store.read_window("g", Slot(0), Slot(1)).await.unwrap_err();
        assert!(matches!(down, StoreError::Unavailable { .. }), "{down:?}");
        let why = std::error::Error::source(&down)
            .expect("a cause")
            .to_string();
        assert!(!why.is_empty());
        let chain = crate::error::Chain(&down).to_string();
        assert!(chain.starts_with("Redis is unavailable: "), "{chain}");
        assert!(chain.contains("refused"), "{chain}");
        assert_eq!(chain.matches("os error").count(), 1, "{chain}");
        assert!(format!("{store:?}").contains("127.0.0.1:1"));
    }
}
