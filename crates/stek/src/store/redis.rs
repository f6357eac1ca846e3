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
//! Requires Redis 7.0 or newer (`EVAL_RO`, script flags, `redis.acl_check_cmd`).
//!
//! # Redis Sentinel
//!
//! Given `redis+sentinel://S1,S2,.../MASTER`, the store talks to the primary the sentinels name
//! ([`super::sentinel`]) and moves to a new one when they name it: it asks them at start, before
//! every write, after an outage or a `READONLY` refusal, and every
//! [`FOLLOW_EVERY`](super::sentinel::FOLLOW_EVERY). Its connection and its subscriptions follow
//! one watched target. A won create or replace then waits for one replica (`WAIT 1`) before it
//! is announced, so that a failover after the primary dies does not lose a record the generator
//! counts as published.
//!
//! # TLS, credentials and rights
//!
//! `rediss://` speaks TLS through rustls with stek's crypto provider (ring): the server is
//! verified against the CA of `--store-ca`, else the system's roots, and a client certificate is
//! presented if one is given. A user and password are sent with `AUTH` on every connection
//! (a password alone authenticates Redis's `default` user); the password is never logged and
//! never part of the URL.
//!
//! Generators and agents need different rights; [`GENERATOR_ACL`] and [`AGENT_ACL`] are the
//! least that each needs (the README prints them as `redis.conf` lines).
//! [`RedisStore::rights`] asks Redis what the connected user may do under a group's keys without
//! doing any of it (`redis.acl_check_cmd` in a read-only script): an agent that could write says
//! so once, a generator that cannot write refuses to start.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    Client, ClientTlsConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError,
    ServerErrorKind, TlsCertificates, Value,
};
use stek_core::record::MAX_RECORD_LEN;
use stek_core::{jitter, Backoff, Slot};
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::sentinel::{
    first_answer, is_sentinel_url, master_addr, Addr, SentinelUrl, ASK_GAP, FOLLOW_EVERY,
};
use super::{Created, Found, LoadedAccess, Replaced, Seen, Store, StoreError};
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
/// How long a generator given a sentinel URL waits after a create for a replica to acknowledge
/// it (`WAIT 1`), so that a failover does not lose a record the generator counts as published.
const REPLICA_WAIT: Duration = Duration::from_millis(1000);
/// How long a write through Redis Sentinel waits for the sentinels to confirm the primary.
const CONFIRM_TIMEOUT: Duration = Duration::from_millis(1000);

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

/// What the connected user may do with the record key `KEYS[1]` and the channel `ARGV[1]`,
/// asked without doing it: 1 or 0 for `SET` (create and replace), `DEL` and `PUBLISH` on them,
/// and `SUBSCRIBE` to the channel. `no-writes`, so agents run it on their read replica with
/// `EVAL_RO`, the one script command they have.
const RIGHTS_SCRIPT: &str = r#"#!lua flags=no-writes
local function may(...) if redis.acl_check_cmd(...) then return 1 end return 0 end
return {may('set', KEYS[1], 'x'), may('del', KEYS[1]), may('publish', ARGV[1], 'x'),
  may('subscribe', ARGV[1])}
"#;

/// The rights of a generator's Redis user, as an ACL rule list (after `user NAME on >PASSWORD`):
/// the scripts it sends (`EVAL` to create and replace, `EVAL_RO` to read), the commands those
/// scripts call, `PUBLISH` of new slots, `TIME` and `PING`, on keys and channels under `stek:`
/// only, and `WAIT` (sent only through Redis Sentinel: a created record reaches a replica
/// before it is announced). No `DEL`, `KEYS` or `SCAN`: Redis expires every record by itself
/// (`PXAT`).
pub const GENERATOR_ACL: &str = "resetkeys ~stek:* resetchannels &stek:* -@all +eval +eval_ro +type +strlen +get +set +publish +time +ping +wait";

/// The rights of an agent's Redis user: read-only on keys under `stek:` (`%R~`), the read script
/// (`EVAL_RO`) and what it calls, `SUBSCRIBE` to `stek:*` channels, `TIME` (the clock check),
/// `SCAN` (the survey that tells an agent which groups and periods the store holds) and `PING`
/// (the subscription's keepalive). Nothing that writes.
pub const AGENT_ACL: &str = "resetkeys %R~stek:* resetchannels &stek:* -@all +eval_ro +type +strlen +get +subscribe +unsubscribe +time +scan +ping";

/// What a user may do under a group's keys, from [`RedisStore::rights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rights {
    /// `SET` on the group's record keys: create and replace records (a generator's right).
    pub write: bool,
    /// `DEL` on the group's record keys (no stek process needs it).
    pub delete: bool,
    /// `PUBLISH` on the group's channel (a generator's right).
    pub publish: bool,
    /// `SUBSCRIBE` to the group's channel (an agent's right).
    pub subscribe: bool,
}

impl Rights {
    /// The rights an agent has and does not need, for the warning that says so ("`SET`, `DEL`").
    pub fn beyond_agent(&self) -> Vec<&'static str> {
        [
            ("SET", self.write),
            ("DEL", self.delete),
            ("PUBLISH", self.publish),
        ]
        .iter()
        .filter(|(_, has)| *has)
        .map(|(name, _)| *name)
        .collect()
    }

    /// The rights a generator needs and lacks ("`SET`", "`PUBLISH`").
    pub fn missing_for_generator(&self) -> Vec<&'static str> {
        [("SET", self.write), ("PUBLISH", self.publish)]
            .iter()
            .filter(|(_, has)| !*has)
            .map(|(name, _)| *name)
            .collect()
    }
}

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

/// The Redis client of `url` with `access`: TLS material for `rediss://` (refused for
/// `redis://`), the user and password for `AUTH`. Also the [`Endpoint`] that names it in errors.
fn client(url: &str, access: &LoadedAccess) -> Result<(Client, Arc<Endpoint>), StoreError> {
    let info = url.into_connection_info().map_err(invalid_url)?;
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let endpoint = Arc::new(Endpoint {
        name: format!("{REDIS} at {}", info.addr()),
        tls,
        ca: access.ca_pem.is_some(),
    });
    // `CLIENT SETINFO` would need a right of its own (its answer is ignored anyway).
    let mut settings = info.redis_settings().clone().set_skip_set_lib_name();
    if let Some(user) = &access.user {
        settings = settings.set_username(user);
    }
    if let Some(password) = &access.password {
        // The client keeps its own copy (not zeroized) for reconnections.
        settings = settings.set_password(password.as_str());
    }
    let info = info.set_redis_settings(settings);
    let has_tls_files = access.ca_pem.is_some() || access.cert_pem.is_some();
    if !tls {
        if has_tls_files {
            return Err(StoreError::BadUrl {
                reason: "a CA or client certificate was given for a redis:// URL: use rediss://"
                    .into(),
                source: None,
            });
        }
        return Ok((Client::open(info).map_err(invalid_url)?, endpoint));
    }
    install_crypto_provider();
    if let Some(ca) = &access.ca_pem {
        // The client would accept a bundle without a certificate and then trust nobody.
        use rustls::pki_types::{pem::PemObject as _, CertificateDer};
        let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(ca).collect();
        if !matches!(certs, Ok(c) if !c.is_empty()) {
            return Err(StoreError::BadUrl {
                reason:
                    "the --store-ca file holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                        .into(),
                source: None,
            });
        }
    }
    let client_tls = match (&access.cert_pem, &access.key_pem) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: cert.clone(),
            // The client parses it into its own key type at once; this copy is dropped with
            // the configuration.
            client_key: key.as_bytes().to_vec(),
        }),
        _ => None,
    };
    let certs = TlsCertificates {
        client_tls,
        root_cert: access.ca_pem.clone(),
    };
    let client = Client::build_with_tls(info, certs).map_err(|e| StoreError::BadUrl {
        reason: format!("the TLS settings for {} are unusable", endpoint.name),
        source: Some(Arc::new(RedisCause(e))),
    })?;
    Ok((client, endpoint))
}

/// Makes ring, the provider stek's rustls is built with, the process's default, which the
/// `redis` client uses for `rediss://`. If a provider is already installed it stays: either
/// way exactly one is the default, and rustls never has to guess between two compiled in
/// (a panic when another crate of the build enables aws-lc-rs too).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The Redis a store talks to, for its error messages: `Redis at HOST:PORT`, and how a failed
/// TLS handshake or a connection closed at once is explained.
#[derive(Debug, Clone)]
struct Endpoint {
    name: String,
    tls: bool,
    /// Whether the server is verified with `--store-ca` (else the system's roots).
    ca: bool,
}

impl Endpoint {
    /// A failed connection or command as a [`StoreError`] naming this endpoint.
    fn error(&self, e: RedisError) -> StoreError {
        if let Some(why) = self.explain(&e) {
            return StoreError::Unavailable {
                store: self.name.clone(),
                source: Arc::new(Explained(why)),
            };
        }
        unavailable(&self.name, e)
    }

    /// One line for the failures an operator must fix on one side or the other: TLS refused by
    /// either end, TLS spoken to a plain port, plain text to a TLS port.
    fn explain(&self, e: &RedisError) -> Option<String> {
        if let Some(tls) = find_rustls_error(e) {
            return Some(self.explain_tls(tls));
        }
        if self.tls && e.is_timeout() {
            // A plain port reads the ClientHello as a command that never ends.
            return Some(
                "timed out (a plain, non-TLS port also answers a TLS client with silence: if \
                 it is one, use redis://)"
                    .to_owned(),
            );
        }
        if e.kind() == ErrorKind::AuthenticationFailed {
            return Some(
                "AUTH failed: wrong user or password, or the user is disabled (check \
                 --store-user and --store-password-file)"
                    .to_owned(),
            );
        }
        if e.code() == Some("NOAUTH") {
            return Some(
                "the server requires a password (NOAUTH): give --store-password-file, and \
                 --store-user for an ACL user"
                    .to_owned(),
            );
        }
        if !self.tls && closed_at_once(e) {
            return Some(
                "the server closed the connection (a TLS port does that to a plain client: if \
                 it is one, use rediss://)"
                    .to_owned(),
            );
        }
        None
    }

    fn explain_tls(&self, e: &rustls::Error) -> String {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let roots = if self.ca {
            "the CA given with --store-ca"
        } else {
            "any CA of the system's roots (give the store's CA with --store-ca)"
        };
        let why = match e {
            E::InvalidCertificate(C::UnknownIssuer) => {
                format!("the server's certificate is not signed by {roots} (UnknownIssuer)")
            }
            E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                "the server's certificate does not name the host of the URL (NotValidForName)"
                    .to_owned()
            }
            E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                "the server's certificate has expired (Expired)".to_owned()
            }
            E::InvalidCertificate(other) => {
                format!("the server's certificate is refused ({other:?})")
            }
            E::InvalidMessage(_) => {
                "the server does not speak TLS on this port: if it is a plain port, use redis://"
                    .to_owned()
            }
            E::AlertReceived(
                a @ (A::CertificateRequired
                | A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::HandshakeFailure),
            ) => format!(
                "the server refused the handshake ({a:?}): does it require a client certificate \
                 (--store-cert, --store-key) signed by its tls-ca-cert-file?"
            ),
            other => other.to_string(),
        };
        format!("TLS: {why}")
    }
}

/// The rustls error behind a failed connection, if a TLS handshake failed.
fn find_rustls_error(e: &RedisError) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = io_error(err)
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = err.source();
    }
    None
}

/// `err` as an I/O error, also when the client holds it behind an `Arc<dyn Error>` (its
/// `source()` is then the `Arc`, and the `Arc`'s own `source()` skips the I/O error's payload).
fn io_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    err.downcast_ref::<std::io::Error>().or_else(|| {
        err.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
            .and_then(|a| a.downcast_ref::<std::io::Error>())
    })
}

/// Whether the server hung up on a new connection: what a TLS port does to a plain client. (A
/// refused connection is not this: nothing listens.)
fn closed_at_once(e: &RedisError) -> bool {
    use std::io::ErrorKind as Io;
    let io = std::error::Error::source(e).and_then(io_error);
    match io {
        Some(io) => matches!(
            io.kind(),
            Io::ConnectionReset | Io::BrokenPipe | Io::UnexpectedEof | Io::ConnectionAborted
        ),
        // The client's own "connection dropped" errors carry no I/O error.
        None => e.kind() == ErrorKind::Io,
    }
}

/// A cause explained in stek's words (the client's own error would not say what to fix).
#[derive(Debug)]
struct Explained(String);

impl fmt::Display for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Explained {}

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
    /// The server commands go to now: for `redis://` always the same; for a sentinel URL the
    /// primary the sentinels named last, `None` until one did. The notification tasks watch it
    /// to follow a new primary.
    target: Arc<watch::Sender<Option<Arc<Target>>>>,
    /// For a sentinel URL: the task that follows the primary.
    follow: Option<Follow>,
    /// The runtime that runs the notification tasks (`changes` is not async, so it cannot find
    /// one by itself when called from outside the runtime's threads).
    runtime: Handle,
    /// One subscription task per group, shared by every receiver of that group.
    notifiers: Mutex<HashMap<String, Notifier>>,
}

/// One Redis server and a connection to it.
struct Target {
    /// Shared with the notification tasks (and boxed: with TLS settings it is large).
    client: Arc<Client>,
    /// Commands from every task are multiplexed over it; it reconnects by itself.
    conn: ConnectionManager,
    /// Names the server in errors and explains TLS failures.
    endpoint: Arc<Endpoint>,
    /// The address a sentinel named (compared with the next answer), if one did.
    named: Option<Addr>,
}

/// What a store given a sentinel URL keeps to follow the primary.
struct Follow {
    master: String,
    sentinels: Arc<Sentinels>,
    /// Asks the follower to ask the sentinels now (after a failed command).
    kick: Arc<Notify>,
    task: AbortHandle,
    /// Why no sentinel named a primary, the last time none did.
    last_error: Arc<Mutex<Option<String>>>,
}

struct Notifier {
    tx: watch::Sender<u64>,
    task: AbortHandle,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The address and user only: never the password.
        let mut d = f.debug_struct("RedisStore");
        if let Some(master) = self.follow.as_ref().map(|f| &f.master) {
            d.field("sentinel_master", master);
        }
        if let Some(t) = self.target.borrow().as_ref() {
            let info = t.client.get_connection_info();
            d.field("addr", &info.addr().to_string())
                .field("tls", &t.endpoint.tls)
                .field("user", &info.redis_settings().username())
                .field("db", &info.redis_settings().db());
        }
        d.finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://HOST:PORT`, `rediss://HOST:PORT` for TLS with
    /// the system's roots, optionally `/DB`, `redis+sentinel://H1:P1,H2:P2/MASTER` for the
    /// primary that Redis Sentinel names (see [`super::sentinel`]), or any other URL the `redis`
    /// crate accepts, such as `redis+unix:///PATH`).
    ///
    /// Fails if the URL is invalid or the server cannot be reached now; once connected, the
    /// store reconnects by itself after failures. Must be called inside a Tokio runtime, which
    /// then runs the store's background tasks.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        Self::connect_with(url, &super::LoadedAccess::default()).await
    }

    /// [`RedisStore::connect`] with TLS (`rediss://`: the CA, a client certificate) and
    /// credentials (`AUTH`). The connection is checked with a `PING`, so a refused certificate,
    /// a wrong password or a plain client at a TLS port fails here, in one line naming the
    /// server. For a sentinel URL, a sentinel must name the primary now.
    pub async fn connect_with(url: &str, access: &LoadedAccess) -> Result<RedisStore, StoreError> {
        let (target, sentinels) = if is_sentinel_url(url) {
            let sentinels = Sentinels::new(url, access)?;
            let primary = sentinels
                .primary()
                .await
                .map_err(|why| sentinels.unnamed(why))?;
            info!(
                "Redis primary of {}: the sentinels name {primary}",
                sentinels.url.master
            );
            (sentinels.target(&primary)?, Some(sentinels))
        } else {
            let (client, endpoint) = client(url, access)?;
            let conn = ConnectionManager::new_with_config(client.clone(), manager_config())
                .await
                .map_err(|e| endpoint.error(e))?;
            (Target::new(client, conn, endpoint, None), None)
        };
        let t = Arc::new(target);
        redis::cmd("PING")
            .query_async::<Value>(&mut t.conn.clone())
            .await
            .map_err(|e| t.endpoint.error(e))?;
        Ok(Self::with(Some(t), sentinels))
    }

    /// Like [`RedisStore::connect`], but does not talk to the server until the first command,
    /// so a process can start while its store is down and follow the failure policy until it
    /// returns. Only an invalid URL fails. Must be called inside a Tokio runtime.
    pub fn connect_lazy(url: &str) -> Result<RedisStore, StoreError> {
        Self::connect_lazy_with(url, &super::LoadedAccess::default())
    }

    /// [`RedisStore::connect_lazy`] with TLS and credentials. Only settings that cannot work
    /// fail here (an invalid URL, unreadable PEM); TLS and `AUTH` failures come with each
    /// command, in one line naming the server. For a sentinel URL the sentinels are asked in
    /// the background; commands fail as unavailable until one named the primary.
    pub fn connect_lazy_with(url: &str, access: &LoadedAccess) -> Result<RedisStore, StoreError> {
        if is_sentinel_url(url) {
            return Ok(Self::with(None, Some(Sentinels::new(url, access)?)));
        }
        let (client, endpoint) = client(url, access)?;
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config())
            .map_err(|e| endpoint.error(e))?;
        Ok(Self::with(
            Some(Arc::new(Target::new(client, conn, endpoint, None))),
            None,
        ))
    }

    fn with(target: Option<Arc<Target>>, sentinels: Option<Sentinels>) -> RedisStore {
        let target = Arc::new(watch::Sender::new(target));
        let follow = sentinels.map(|sentinels| {
            let kick = Arc::new(Notify::new());
            let last_error = Arc::new(Mutex::new(None));
            let master = sentinels.url.master.clone();
            let sentinels = Arc::new(sentinels);
            let task = tokio::spawn(follow_primary(
                sentinels.clone(),
                target.clone(),
                kick.clone(),
                last_error.clone(),
            ))
            .abort_handle();
            Follow {
                master,
                sentinels,
                kick,
                task,
                last_error,
            }
        });
        RedisStore {
            target,
            follow,
            runtime: Handle::current(),
            notifiers: Mutex::new(HashMap::new()),
        }
    }

    /// The server to send a command to; for a sentinel URL before any sentinel named the
    /// primary, an outage that says why.
    fn target(&self) -> Result<Arc<Target>, StoreError> {
        if let Some(t) = self.target.borrow().as_ref() {
            return Ok(t.clone());
        }
        let Some(f) = &self.follow else {
            // Only a sentinel store starts without a target, and a target is never taken away.
            return Err(bad_answer("no Redis server to talk to".into()));
        };
        f.kick.notify_one();
        let why = lock(&f.last_error)
            .clone()
            .unwrap_or_else(|| "the sentinels have not answered yet".into());
        Err(StoreError::Unavailable {
            store: format!("{REDIS} primary of {}", f.master),
            source: Arc::new(Explained(format!("no sentinel named it: {why}"))),
        })
    }

    /// The server to send a write to. For a sentinel URL the sentinels are asked first (one
    /// question, a few milliseconds; generators write a few records per period): in a
    /// switchover they name the new primary at once, while the old one keeps accepting writes,
    /// which it then discards, until the sentinels reconfigure it seconds later. If no sentinel
    /// answers within [`CONFIRM_TIMEOUT`] (sentinels behind a partition must not stall every
    /// write for their connect timeouts), the write goes to the primary named last.
    async fn writable_target(&self) -> Result<Arc<Target>, StoreError> {
        if let Some(f) = &self.follow {
            match tokio::time::timeout(CONFIRM_TIMEOUT, f.sentinels.primary()).await {
                Ok(Ok(addr)) => adopt(&f.sentinels, &self.target, addr),
                Ok(Err(why)) => debug!(
                    "Redis primary of {}: no sentinel confirmed it before a write: {why}",
                    f.master
                ),
                Err(_) => debug!(
                    "Redis primary of {}: no sentinel confirmed it within {CONFIRM_TIMEOUT:?} before a write",
                    f.master
                ),
            }
        }
        self.target()
    }

    /// A failed command on `t` as a [`StoreError`]. For a sentinel URL, an outage or a
    /// `READONLY` refusal (the primary was demoted) also asks the sentinels again at once.
    fn failed(&self, t: &Target, e: RedisError) -> StoreError {
        let err = t.endpoint.error(e);
        if let Some(f) = &self.follow {
            let demoted = matches!(&err, StoreError::Refused { message, .. }
                if message.starts_with("READONLY"));
            if demoted || matches!(err, StoreError::Unavailable { .. }) {
                f.kick.notify_one();
            }
        }
        err
    }

    /// For a sentinel URL, after a won create or replace: `WAIT 1` so that the record is on a
    /// replica before the generator counts it as published and announces it (a record only on
    /// the primary is lost if the primary dies and a replica is promoted). Never an error: the
    /// record is stored; without an acknowledgement this says so.
    async fn wait_for_replica(&self, conn: &mut ConnectionManager, group: &str, slot: Slot) {
        if self.follow.is_none() {
            return;
        }
        let ms = REPLICA_WAIT.as_millis() as u64;
        match redis::cmd("WAIT")
            .arg(1)
            .arg(ms)
            .query_async::<i64>(conn)
            .await
        {
            Ok(n) if n >= 1 => {}
            Ok(_) => warn!(
                "group {group}: stored slot {slot} on the primary, but no replica acknowledged it within {ms} ms (WAIT 1): a failover now would lose it"
            ),
            Err(e) => warn!(
                "group {group}: stored slot {slot} on the primary, but WAIT 1 failed: {e} (give the generator's Redis user +wait)"
            ),
        }
    }

    /// The server's clock (`TIME`), as time since the Unix epoch. Agents compare it with their
    /// own clock: the store's clock is the one that expires records, and every host's schedule
    /// must agree with it to within `P/4` (docs/DESIGN.md §5).
    pub async fn server_time(&self) -> Result<Duration, StoreError> {
        let t = self.target()?;
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut t.conn.clone())
            .await
            .map_err(|e| self.failed(&t, e))?;
        if micros >= 1_000_000 {
            return Err(bad_answer(format!("TIME answered {micros} microseconds")));
        }
        Ok(Duration::from_secs(secs) + Duration::from_micros(micros))
    }

    /// What this connection's user may do under `group`'s keys and channel, asked without
    /// doing it ([`RIGHTS_SCRIPT`], `EVAL_RO`: nothing is written, a replica answers too). A
    /// user without `EVAL_RO` gets `NOPERM` as [`StoreError::Refused`].
    pub async fn rights(&self, group: &str) -> Result<Rights, StoreError> {
        let t = self.target()?;
        let answer: Vec<i64> = redis::cmd("EVAL_RO")
            .arg(RIGHTS_SCRIPT)
            .arg(1)
            .arg(record_key(group, Slot(0)))
            .arg(channel(group))
            .query_async(&mut t.conn.clone())
            .await
            .map_err(|e| self.failed(&t, e))?;
        let [write, delete, publish, subscribe] = answer[..] else {
            return Err(bad_answer(format!(
                "the rights check answered {} values",
                answer.len()
            )));
        };
        Ok(Rights {
            write: write == 1,
            delete: delete == 1,
            publish: publish == 1,
            subscribe: subscribe == 1,
        })
    }

    /// For an agent: asks [`RedisStore::rights`] once the store answers (retrying while it is
    /// unavailable) and warns once if this user can do more than read, or cannot subscribe.
    /// Runs until it has an answer; spawn it beside the agent.
    pub async fn warn_if_broader_than_agent(&self, group: &str) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let rights = loop {
            match self.rights(group).await {
                Ok(r) => break r,
                Err(e @ StoreError::Unavailable { .. }) => {
                    debug!(
                        "cannot check the rights of this agent's Redis user yet: {}",
                        crate::error::Chain(&e)
                    );
                    tokio::time::sleep(jitter(backoff.next())).await;
                }
                Err(e) => {
                    warn!(
                        "cannot check the rights of this agent's Redis user: {} (an agent needs the ACL of the README, Authentication and TLS)",
                        crate::error::Chain(&e)
                    );
                    return;
                }
            }
        };
        let beyond = rights.beyond_agent();
        if !beyond.is_empty() {
            warn!(
                "credentials broader than needed: this agent's Redis user can write under stek:* ({} on stek:{group}:*): an agent only reads; give it the agent's ACL (README, Authentication and TLS)",
                beyond.join(", ")
            );
        }
        if !rights.subscribe {
            warn!(
                "this agent's Redis user may not SUBSCRIBE to {}: new keys are seen only by polling; add &stek:* and +subscribe to its ACL",
                channel(group)
            );
        }
    }

    /// For a generator: the rights it needs under `group` and lacks (`SET`, `PUBLISH`), empty
    /// if it has them all. A user that may not even run the check gets `NOPERM` as
    /// [`StoreError::Refused`].
    pub async fn missing_generator_rights(
        &self,
        group: &str,
    ) -> Result<Vec<&'static str>, StoreError> {
        Ok(self.rights(group).await?.missing_for_generator())
    }

    /// `Redis at HOST:PORT`, as errors name this store.
    /// For a sentinel URL: `Redis at HOST:PORT (primary of MASTER)` for the primary named
    /// last, or `Redis primary of MASTER` before any was.
    pub fn name(&self) -> String {
        match (self.target.borrow().as_ref(), &self.follow) {
            (Some(t), _) => t.endpoint.name.clone(),
            (None, Some(f)) => format!("{REDIS} primary of {}", f.master),
            (None, None) => REDIS.to_owned(),
        }
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
        if let Some(f) = &self.follow {
            f.task.abort();
        }
    }
}

/// Locks a mutex whose critical sections each leave it consistent (a single assignment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Target {
    fn new(
        client: Client,
        conn: ConnectionManager,
        endpoint: Arc<Endpoint>,
        named: Option<Addr>,
    ) -> Target {
        Target {
            client: Arc::new(client),
            conn,
            endpoint,
            named,
        }
    }
}

/// The sentinels of a sentinel URL, and what it takes to reach them and the data nodes.
struct Sentinels {
    url: SentinelUrl,
    /// TLS material and credentials for the data nodes (the sentinels get them without the
    /// credentials first: see [`super::sentinel`]).
    access: LoadedAccess,
}

impl Sentinels {
    fn new(url: &str, access: &LoadedAccess) -> Result<Sentinels, StoreError> {
        let url = SentinelUrl::parse(url).map_err(|reason| StoreError::BadUrl {
            reason,
            source: None,
        })?;
        let s = Sentinels {
            url,
            access: access.clone(),
        };
        // TLS settings that cannot work fail now, not at every question.
        let first = &s.url.sentinels[0];
        client(&first.url(s.url.tls), &s.access)?;
        Ok(s)
    }

    /// The primary's address, from the first sentinel that names it.
    async fn primary(&self) -> Result<Addr, String> {
        first_answer(&self.url.sentinels, |s| self.ask(s)).await
    }

    /// `SENTINEL get-master-addr-by-name MASTER` on one sentinel: without `AUTH`, then with the
    /// store's credentials if it answers `NOAUTH` and there are any.
    async fn ask(&self, sentinel: Addr) -> Result<Addr, String> {
        let anonymous = LoadedAccess {
            user: None,
            password: None,
            ..self.access.clone()
        };
        match self.ask_as(&sentinel, &anonymous).await {
            Err((true, _)) if self.access.password.is_some() => {
                self.ask_as(&sentinel, &self.access).await.map_err(|e| e.1)
            }
            r => r.map_err(|e| e.1),
        }
    }

    /// One question; the error says whether the sentinel wants `AUTH`.
    async fn ask_as(&self, sentinel: &Addr, access: &LoadedAccess) -> Result<Addr, (bool, String)> {
        let (client, endpoint) =
            client(&sentinel.url(self.url.tls), access).map_err(|e| (false, e.to_string()))?;
        let why = |e: RedisError| {
            let noauth = e.code() == Some("NOAUTH");
            let why = match endpoint.explain(&e) {
                Some(why) => why,
                None => crate::error::Chain(&RedisCause(e)).to_string(),
            };
            (noauth, why)
        };
        let asked = async {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(why)?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.url.master)
                .query_async::<Option<(String, String)>>(&mut conn)
                .await
                .map_err(why)
        };
        let answer = tokio::time::timeout(CONNECT_TIMEOUT + RESPONSE_TIMEOUT, asked)
            .await
            .map_err(|_| (false, "timed out".to_owned()))??;
        master_addr(answer, &self.url.master).map_err(|e| (false, e))
    }

    /// A lazy connection to the primary at `addr`, named in errors as the master's primary.
    fn target(&self, addr: &Addr) -> Result<Target, StoreError> {
        let (client, endpoint) = client(&addr.url(self.url.tls), &self.access)?;
        let endpoint = Arc::new(Endpoint {
            name: format!("{} (primary of {})", endpoint.name, self.url.master),
            ..Arc::unwrap_or_clone(endpoint)
        });
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config())
            .map_err(|e| endpoint.error(e))?;
        Ok(Target::new(client, conn, endpoint, Some(addr.clone())))
    }

    /// The outage of a store whose sentinels named no primary.
    fn unnamed(&self, why: String) -> StoreError {
        StoreError::Unavailable {
            store: format!("{REDIS} primary of {}", self.url.master),
            source: Arc::new(Explained(format!("no sentinel named it: {why}"))),
        }
    }
}

/// Asks the sentinels for the primary at once, then every [`FOLLOW_EVERY`] and whenever a
/// command failed (`kick`), at most once per [`ASK_GAP`], and moves `target` to the primary
/// they name when it changes.
async fn follow_primary(
    sentinels: Arc<Sentinels>,
    target: Arc<watch::Sender<Option<Arc<Target>>>>,
    kick: Arc<Notify>,
    last_error: Arc<Mutex<Option<String>>>,
) {
    loop {
        match sentinels.primary().await {
            Ok(addr) => {
                *lock(&last_error) = None;
                adopt(&sentinels, &target, addr);
            }
            Err(why) => {
                debug!(
                    "Redis primary of {}: no sentinel named it: {why}",
                    sentinels.url.master
                );
                *lock(&last_error) = Some(why);
            }
        }
        tokio::select! {
            () = kick.notified() => {}
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        tokio::time::sleep(ASK_GAP).await;
    }
}

/// Moves `target` to the primary at `addr` the sentinels named, unless it is there already.
fn adopt(sentinels: &Sentinels, target: &watch::Sender<Option<Arc<Target>>>, addr: Addr) {
    let master = &sentinels.url.master;
    let was = target.borrow().as_ref().and_then(|t| t.named.clone());
    if was.as_ref() == Some(&addr) {
        return;
    }
    let t = match sentinels.target(&addr) {
        Ok(t) => t,
        Err(e) => {
            warn!(
                "Redis primary of {master}: cannot use {addr}: {}",
                crate::error::Chain(&e)
            );
            return;
        }
    };
    // Two callers may learn of the same change at once: only the first moves (and logs).
    let moved = target.send_if_modified(|now| {
        if now.as_ref().and_then(|t| t.named.as_ref()) == Some(&addr) {
            return false;
        }
        *now = Some(Arc::new(t));
        true
    });
    if !moved {
        return;
    }
    match was {
        Some(was) => info!(
            "Redis primary of {master}: following {addr}, the new primary the sentinels name (was {was})"
        ),
        None => info!("Redis primary of {master}: the sentinels name {addr}"),
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
fn unavailable(store: &str, e: RedisError) -> StoreError {
    let store = store.to_owned();
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
/// `Redis at 127.0.0.1:6379 is unavailable: Connection refused (os error 111)` with the OS error
/// once.
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
        let t = self.writable_target().await?;
        let mut conn = t.conn.clone();
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
                .map_err(|e| self.failed(&t, e))?;
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
            .map_err(|e| self.failed(&t, e))?;
        if let Some(f) = found(previous, &format!("the create of {key}"))? {
            return Ok(lost(f));
        }
        self.wait_for_replica(&mut conn, group, slot).await;
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
        let t = self.writable_target().await?;
        let mut conn = t.conn.clone();
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
        let wrote: Value = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(&t, e))?;
        match wrote {
            Value::Int(1) => {
                self.wait_for_replica(&mut conn, group, slot).await;
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
        let t = self.target()?;
        let mut read = redis::cmd("EVAL_RO");
        read.arg(READ_SCRIPT).arg(slots.len());
        for &slot in &slots {
            read.arg(record_key(group, slot));
        }
        read.arg(MAX_RECORD_LEN);
        let reply: Value = read
            .query_async(&mut t.conn.clone())
            .await
            .map_err(|e| self.failed(&t, e))?;
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
            .spawn(notify(
                self.target.subscribe(),
                group.to_owned(),
                tx.clone(),
            ))
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
        let t = self.target()?;
        for _ in 0..32 {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("stek:*")
                .arg("COUNT")
                .arg(super::SURVEY_LIMIT)
                .query_async(&mut t.conn.clone())
                .await
                .map_err(|e| self.failed(&t, e))?;
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
///
/// The subscription is on the server of `target` (for a sentinel URL, the primary named last)
/// and moves when `target` changes. Subscribers on a replica need not move: a `PUBLISH` on the
/// primary is replicated and delivered to the replica's subscribers too.
async fn notify(
    mut target: watch::Receiver<Option<Arc<Target>>>,
    group: String,
    tx: watch::Sender<u64>,
) {
    let channel = channel(&group);
    let tick = || tx.send_modify(|n| *n = n.wrapping_add(1));
    let mut backoff = Backoff::new(RESUBSCRIBE_MIN, RESUBSCRIBE_MAX);
    // Whether messages may have been missed since the receivers were handed out.
    let mut missed = false;
    loop {
        let now = target.borrow_and_update().clone();
        let subscribed = async {
            let t = now.ok_or_else(|| "no sentinel named the primary yet".to_owned())?;
            let why = |e: RedisError| crate::error::Chain(&t.endpoint.error(e)).to_string();
            let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, t.client.get_async_pubsub())
                .await
                .map_err(|_| "timed out connecting".to_owned())?
                .map_err(why)?;
            tokio::time::timeout(RESPONSE_TIMEOUT, pubsub.subscribe(&channel))
                .await
                .map_err(|_| "timed out subscribing".to_owned())?
                .map_err(why)?;
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
                let mut moved_on = false;
                let why = loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        m = messages.next() => match m {
                            Some(_) => tick(),
                            None => break "the connection closed".to_owned(),
                        },
                        moved = target.changed() => match moved {
                            Ok(()) => {
                                moved_on = true;
                                break "the sentinels named a new primary".to_owned();
                            }
                            // The store is gone.
                            Err(_) => return,
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
                if moved_on {
                    info!("group {group}: {why}: subscribing to {channel} there");
                } else {
                    warn!(
                        "group {group}: lost the subscription to {channel}: {why}; resubscribing"
                    );
                }
            }
            Err(why) => debug!("group {group}: cannot subscribe to {channel}: {why}"),
        }
        missed = true;
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(jitter(backoff.next())) => {}
            // A new primary: subscribe there at once.
            moved = target.changed() => if moved.is_err() { return },
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
    async fn tls_settings_that_cannot_work_fail_before_any_connection() {
        let access = |ca: &[u8]| LoadedAccess {
            ca_pem: Some(ca.to_vec()),
            user: Some("agent".into()),
            password: Some(Zeroizing::new("s3cret".into())),
            ..Default::default()
        };
        let e = RedisStore::connect_lazy_with("rediss://127.0.0.1:1", &access(b"garbage"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = RedisStore::connect_lazy_with("redis://127.0.0.1:1", &access(b"x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("use rediss://"), "{e}");
        // Credentials alone over plain TCP: the user shows, the password never does.
        let store = RedisStore::connect_lazy_with(
            "redis://127.0.0.1:1",
            &LoadedAccess {
                ca_pem: None,
                ..access(b"")
            },
        )
        .unwrap();
        let shown = format!("{store:?}");
        assert!(
            shown.contains("agent") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert_eq!(store.name(), "Redis at 127.0.0.1:1");
    }

    #[tokio::test]
    async fn sentinel_urls_are_checked_and_silent_sentinels_named_in_one_line() {
        let chain = |e: StoreError| crate::error::Chain(&e).to_string();
        assert_eq!(
            chain(RedisStore::connect_lazy("redis+sentinel://127.0.0.1:1").unwrap_err()),
            "invalid store URL: no master name after the sentinels: use redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER"
        );
        let ca = LoadedAccess {
            ca_pem: Some(b"x".to_vec()),
            ..Default::default()
        };
        let e = RedisStore::connect_lazy_with("redis+sentinel://127.0.0.1:1/m", &ca).unwrap_err();
        assert!(chain(e).contains("use rediss://"));
        // Nothing listens on ports 1 and 2: each sentinel is named with its failure.
        let e = RedisStore::connect("redis+sentinel://127.0.0.1:1,127.0.0.1:2/m")
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        assert_eq!(
            chain(e),
            "Redis primary of m is unavailable: no sentinel named it: \
             127.0.0.1:1: Connection refused (os error 111); \
             127.0.0.1:2: Connection refused (os error 111)"
        );
        // A lazy store starts, says why per command, and shows no password.
        let store = RedisStore::connect_lazy_with(
            "redis+sentinel://127.0.0.1:1/m",
            &LoadedAccess {
                password: Some(Zeroizing::new("s3cret".into())),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(store.name(), "Redis primary of m");
        let e = store.read_window("g", Slot(0), Slot(1)).await.unwrap_err();
        assert!(chain(e).starts_with("Redis primary of m is unavailable: no sentinel named it: "),);
        let shown = format!("{store:?}");
        assert!(
            shown.contains("\"m\"") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn the_rights_an_agent_should_not_have_and_a_generator_needs() {
        let agent = Rights {
            write: false,
            delete: false,
            publish: false,
            subscribe: true,
        };
        assert!(agent.beyond_agent().is_empty());
        assert_eq!(agent.missing_for_generator(), ["SET", "PUBLISH"]);
        let all = Rights {
            write: true,
            delete: true,
            publish: true,
            subscribe: true,
        };
        assert_eq!(all.beyond_agent(), ["SET", "DEL", "PUBLISH"]);
        assert!(all.missing_for_generator().is_empty());
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
        assert!(
            chain.starts_with("Redis at 127.0.0.1:1 is unavailable: "),
            "{chain}"
        );
        assert!(chain.contains("refused"), "{chain}");
        assert_eq!(chain.matches("os error").count(), 1, "{chain}");
        assert!(format!("{store:?}").contains("127.0.0.1:1"));
    }
}
