//! The closed loop (`--verify-tls ADDR`): after each change of the ring and every heartbeat, the
//! agent connects to its own TLS servers as a client, reads the key name of the tickets they
//! issue (with the scanner's client, [`crate::scan::probe`]) and compares it with the name of the
//! ring's encrypting key.
//!
//! ```text
//!  agent loop ──Expected (names only)──▶ verifier task ──spawn_blocking──▶ Prober (TLS 1.3, 1.2)
//!      ▲                                      │
//!      └──────── Vec<ServedStatus> (watch) ───┘   read when the loop writes the status
//! ```
//!
//! - The loop never waits for the verifier: it sends the ring's names on a watch channel and
//!   reads the last verdicts when it writes the status. Probes run on the blocking pool; each
//!   connection is bounded by [`PROBE_TIMEOUT`], each check by [`CHECK_TIMEOUT`].
//! - Servers reload a while after the ring changed (the reload command runs after the files are
//!   written): a mismatch seen within [`grace`] of a change is retried, not reported. Past it, it
//!   is declared ([`Tracker`], time passed in).
//! - Each version is checked: TLS 1.3 and TLS 1.2, each that the server speaks. A version
//!   the server refuses is skipped; the verdicts of the others are combined, the worst first
//!   (mismatch, error, match, unverifiable), the versions named when they differ.
//! - A key name is the first 16 bytes of a ticket (the layout of OpenSSL-based servers and of
//!   stek's own formats). A name is trusted only when it is one of stek's, or when two tickets
//!   carry the same one: servers whose tickets carry no name (Go since 1.21 encrypts the whole
//!   ticket) are "unverifiable", never a mismatch.
//! - HAProxy encrypts with the middle of the three keys of its file; stek's HAProxy sink puts the
//!   ring's encrypting key there ([`stek_core::Ring::haproxy_triple`]), so one expected name holds
//!   for every server stek feeds.
//!
//! Only key names cross this module; no key bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stek_core::{Ring, Schedule};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::error::Chain;
use crate::scan::probe::{is_version_alert, ProbeError, Prober, Version};
use crate::scan::{self, TargetError};
use crate::status::{ServedState, ServedStatus};

/// How long one connection to a server may take (connect, handshake, the tickets).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one check of one server may take: two versions, two connections each.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(4 * 3 + 2);
/// The most key names remembered from rings that have passed (to tell an erased key of stek's
/// from a foreign one).
const MAX_HISTORY: usize = 4096;

/// How long after a change of the ring a mismatch is not yet declared: twice the heartbeat, at
/// least 5 s, but at most half a period (so that a server that never takes the new keys is
/// reported within each period). Period 1h: 20 s; period 4s: 2 s.
pub fn grace(period: Duration) -> Duration {
    let beat = crate::status::heartbeat(period);
    (beat * 2).max(Duration::from_secs(5)).min(period / 2)
}

/// How often a check is retried while a mismatch is within its grace.
fn retry(period: Duration) -> Duration {
    (grace(period) / 4).clamp(Duration::from_millis(250), Duration::from_secs(2))
}

/// One server to verify: `[NAME@]HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    given: String,
    host: String,
    port: u16,
    sni: Option<String>,
}

/// Why a `--verify-tls` address is not one.
#[derive(Debug)]
#[non_exhaustive]
pub enum VerifyTargetError {
    /// `HOST[:PORT]` is malformed.
    Address {
        /// The address as given.
        given: String,
        /// What is wrong with it (its words are in this error's message).
        source: TargetError,
    },
    /// The server name before `@` is not a DNS name.
    ServerName {
        /// The address as given.
        given: String,
    },
}

impl VerifyTargetError {
    /// What is wrong, without the address (for a parser that names it already).
    pub fn reason(&self) -> String {
        let why = match self {
            VerifyTargetError::ServerName { .. } => {
                return "the server name before '@' must be a DNS name".to_owned()
            }
            VerifyTargetError::Address { source, .. } => match source {
                TargetError::Empty => "empty",
                TargetError::NoClosingBracket { .. } => "no closing ]",
                TargetError::JunkAfterBracket { .. } => "junk after ]",
                TargetError::NoHost { .. } => "no host name",
                TargetError::BadPort { .. } => "bad port",
            },
        };
        format!(
            "{why} (expected [NAME@]HOST:PORT, e.g. 127.0.0.1:443 or www.example.com@127.0.0.1:443)"
        )
    }
}

impl fmt::Display for VerifyTargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (VerifyTargetError::Address { given, .. } | VerifyTargetError::ServerName { given }) =
            self;
        write!(f, "--verify-tls {given:?}: {}", self.reason())
    }
}

// The address's error is in the message already (one line, in the flag's terms).
impl std::error::Error for VerifyTargetError {}

impl Target {
    /// `[NAME@]HOST[:PORT]`: PORT defaults to 443; NAME is the server name sent (SNI), by
    /// default HOST when it is a name (an IP address sends none).
    pub fn parse(given: &str) -> Result<Target, VerifyTargetError> {
        let (sni, addr) = match given.split_once('@') {
            Some((name, addr)) => {
                let ok = !name.is_empty()
                    && name.parse::<std::net::IpAddr>().is_err()
                    && rustls::pki_types::ServerName::try_from(name).is_ok();
                if !ok {
                    return Err(VerifyTargetError::ServerName {
                        given: given.to_owned(),
                    });
                }
                (Some(name.to_owned()), addr)
            }
            None => (None, given),
        };
        let (host, port) =
            scan::parse_target(addr).map_err(|source| VerifyTargetError::Address {
                given: given.to_owned(),
                source,
            })?;
        let sni = sni.or_else(|| {
            let literal = host.parse::<std::net::IpAddr>().is_ok();
            (!literal).then(|| host.clone())
        });
        Ok(Target {
            given: given.to_owned(),
            host,
            port,
            sni,
        })
    }

    /// The first address of the host (IPv4 first), resolved now.
    fn resolve(&self) -> Result<SocketAddr, String> {
        let mut addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .collect();
        addrs.sort_by_key(SocketAddr::is_ipv6);
        addrs
            .first()
            .copied()
            .ok_or_else(|| format!("{} has no address", self.host))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.given)
    }
}

/// What the servers should serve: the ring's keys by name (never their bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The encrypting key's slot.
    pub slot: u64,
    /// The encrypting key's name (hex).
    pub name: String,
    /// Every key of the ring: name, slot, role.
    pub ring: Vec<(String, u64, String)>,
    /// When the ring changed last, by the agent's clock.
    pub changed_at: Duration,
}

impl Expected {
    /// The names of `ring`, delivered at `now`.
    pub fn of(ring: &Ring, now: Duration) -> Expected {
        let enc = ring.encrypting_entry();
        Expected {
            slot: enc.slot().0,
            name: enc.key.name().to_hex(),
            ring: ring
                .entries()
                .iter()
                .map(|e| (e.key.name().to_hex(), e.slot().0, e.role.to_string()))
                .collect(),
            changed_at: now,
        }
    }
}

/// What one version's connections showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Nothing accepts a TCP connection there (why): no version is worth trying.
    Unreachable(String),
    /// The server does not speak this version (why).
    NotSpoken(String),
    /// The connection or handshake failed (why).
    Failed(String),
    /// The key names of the tickets issued, in order (`None`: a ticket too short to carry a
    /// name). Empty: no ticket.
    Tickets(Vec<Option<String>>),
}

/// One version's verdict, or the combined verdict of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The state.
    pub state: ServedState,
    /// The key name served, when read (and its slot, when it is one of stek's keys).
    pub served: Option<(String, Option<u64>)>,
    /// Why, in words (none for a plain match).
    pub detail: Option<String>,
}

impl Check {
    fn new(state: ServedState, served: Option<(String, Option<u64>)>, detail: &str) -> Check {
        Check {
            state,
            served,
            detail: (!detail.is_empty()).then(|| detail.to_owned()),
        }
    }
}

/// Names of keys from rings that have passed, with their slots, bounded.
#[derive(Debug, Default, Clone)]
pub struct History(BTreeMap<String, u64>);

impl History {
    /// Remembers the names of `e`'s ring.
    pub fn add(&mut self, e: &Expected) {
        for (name, slot, _) in &e.ring {
            self.0.insert(name.clone(), *slot);
        }
        while self.0.len() > MAX_HISTORY {
            let oldest = self
                .0
                .iter()
                .min_by_key(|(_, s)| **s)
                .map(|(n, _)| n.clone());
            match oldest {
                Some(n) => self.0.remove(&n),
                None => break,
            };
        }
    }

    fn slot(&self, name: &str) -> Option<u64> {
        self.0.get(name).copied()
    }
}

/// One version's verdict from the tickets' names.
pub fn judge(expected: &Expected, history: &History, names: &[Option<String>]) -> Check {
    if names.is_empty() {
        return Check::new(
            ServedState::Unverifiable,
            None,
            "the server issued no ticket (tickets off, or a session cache only): nothing to compare",
        );
    }
    let named: Vec<&str> = names.iter().flatten().map(String::as_str).collect();
    if named.is_empty() {
        return Check::new(
            ServedState::Unverifiable,
            None,
            "its tickets are too short to carry a key name (session cache IDs): nothing to compare",
        );
    }
    if named.contains(&expected.name.as_str()) {
        return Check::new(
            ServedState::Match,
            Some((expected.name.clone(), Some(expected.slot))),
            "",
        );
    }
    // One of stek's keys, held or past: a 16-byte name is never one of those by chance.
    for n in &named {
        if let Some((_, slot, role)) = expected.ring.iter().find(|(name, _, _)| name == n) {
            let why = if *slot + 1 == expected.slot {
                format!("still encrypting with the previous key {n} (slot {slot}): the server did not take the new keys")
            } else if *slot < expected.slot {
                format!("still encrypting with an older key {n} (slot {slot}, {role}): the server did not take the new keys")
            } else {
                format!("encrypting with key {n} of a later slot ({slot}, {role}): its keys are ahead of this agent's clock")
            };
            return Check::new(
                ServedState::Mismatch,
                Some(((*n).to_owned(), Some(*slot))),
                &why,
            );
        }
        if let Some(slot) = history.slot(n) {
            let why = format!("still encrypting with key {n} (slot {slot}), which has left the window and was erased here: the server has not taken new keys since, and its tickets outlive stek's forward-secrecy bound");
            return Check::new(
                ServedState::Mismatch,
                Some(((*n).to_owned(), Some(slot))),
                &why,
            );
        }
    }
    // A name stek does not know: trusted only if two tickets carry it.
    let first = named[0];
    if named.len() >= 2 && named.iter().all(|n| *n == first) {
        return Check::new(
            ServedState::Mismatch,
            Some((first.to_owned(), None)),
            "a key stek did not issue: something else configures this server's ticket keys",
        );
    }
    if named.len() >= 2 {
        return Check::new(
            ServedState::Unverifiable,
            None,
            "its tickets carry no stable key name (the first 16 bytes differ on every ticket, as with Go >= 1.21): which key encrypts cannot be read",
        );
    }
    Check::new(
        ServedState::Unverifiable,
        None,
        "one ticket only, whose first bytes are no key stek knows: its key name could not be confirmed",
    )
}

/// The order of severity of the combined verdict: mismatch, error, match, unverifiable.
fn rank(s: ServedState) -> u8 {
    match s {
        ServedState::Mismatch => 3,
        ServedState::Error => 2,
        ServedState::Match => 1,
        ServedState::Unverifiable => 0,
    }
}

/// The endpoint's verdict from each version's observation.
pub fn combine(expected: &Expected, history: &History, seen: &[(Version, Observed)]) -> Check {
    let mut checks: Vec<(Version, Check)> = Vec::new();
    let mut not_spoken = Vec::new();
    for (v, o) in seen {
        match o {
            Observed::NotSpoken(why) => not_spoken.push(format!("{}: {why}", v.label())),
            Observed::Failed(why) | Observed::Unreachable(why) => {
                checks.push((*v, Check::new(ServedState::Error, None, why)));
            }
            Observed::Tickets(names) => checks.push((*v, judge(expected, history, names))),
        }
    }
    if checks.is_empty() {
        return Check::new(
            ServedState::Error,
            None,
            &format!(
                "the server speaks neither TLS 1.2 nor TLS 1.3 ({})",
                not_spoken.join("; ")
            ),
        );
    }
    let worst = checks
        .iter()
        .max_by_key(|(_, c)| rank(c.state))
        .map(|(_, c)| c.clone())
        .unwrap_or_else(|| Check::new(ServedState::Error, None, "no check"));
    let all_same = checks.iter().all(|(_, c)| *c == checks[0].1);
    let detail = if all_same {
        worst.detail.clone().map(|d| {
            let versions: Vec<&str> = checks.iter().map(|(v, _)| v.label()).collect();
            format!("{}: {d}", versions.join(" and "))
        })
    } else {
        let parts: Vec<String> = checks
            .iter()
            .map(|(v, c)| {
                let state = c.state.word();
                match &c.detail {
                    Some(d) => format!("{}: {state}: {d}", v.label()),
                    None => format!("{}: {state}", v.label()),
                }
            })
            .collect();
        Some(parts.join("; "))
    };
    Check { detail, ..worst }
}

/// One endpoint's reported state across checks: the grace after a ring change, `since`, and
/// what to log (once when a mismatch or an error starts, once when it ends).
#[derive(Debug, Clone)]
pub struct Tracker {
    endpoint: String,
    reported: Option<ServedStatus>,
}

/// What [`Tracker::observe`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// A mismatch within the grace: not reported; check again soon.
    pub settling: bool,
    /// A line to log, if the state changed: (is a warning, text).
    pub log: Option<(bool, String)>,
}

impl Tracker {
    /// A tracker for `endpoint`, with nothing reported yet.
    pub fn new(endpoint: impl Into<String>) -> Tracker {
        Tracker {
            endpoint: endpoint.into(),
            reported: None,
        }
    }

    /// The state reported now, if any.
    pub fn reported(&self) -> Option<&ServedStatus> {
        self.reported.as_ref()
    }

    /// Takes the verdict of a check made against `expected` at `now`.
    pub fn observe(
        &mut self,
        check: Check,
        expected: &Expected,
        now: Duration,
        grace: Duration,
    ) -> Step {
        // A new mismatch may be a server still reloading: held back within the grace. One
        // already declared is updated (its key and words may change as the ring moves on).
        let declared = self
            .reported
            .as_ref()
            .is_some_and(|r| r.state == ServedState::Mismatch);
        if check.state == ServedState::Mismatch && !declared && now < expected.changed_at + grace {
            return Step {
                settling: true,
                log: None,
            };
        }
        let served_name = check.served.as_ref().map(|(n, _)| n.clone());
        let prev = self.reported.take();
        let same = prev
            .as_ref()
            .is_some_and(|p| p.state == check.state && p.served_name == served_name);
        let since = match &prev {
            Some(p) if same => p.since,
            _ => now.as_secs_f64(),
        };
        let new = ServedStatus {
            endpoint: self.endpoint.clone(),
            state: check.state,
            served_name,
            served_slot: check.served.and_then(|(_, s)| s),
            expected_name: expected.name.clone(),
            since,
            checked_at: now.as_secs_f64(),
            detail: check.detail,
        };
        let log = transition(prev.as_ref(), &new);
        self.reported = Some(new);
        Step {
            settling: false,
            log,
        }
    }
}

/// The line to log when an endpoint's state changes: (is a warning, text).
fn transition(prev: Option<&ServedStatus>, new: &ServedStatus) -> Option<(bool, String)> {
    let was = prev.map(|p| (p.state, p.served_name.as_deref()));
    if was == Some((new.state, new.served_name.as_deref())) {
        return None;
    }
    let ep = &new.endpoint;
    let detail = new.detail.as_deref().unwrap_or("");
    match new.state {
        ServedState::Mismatch => Some((
            true,
            format!(
                "--verify-tls {ep}: the server issues tickets under key {}, not the encrypting key {}: {detail}",
                new.served_name.as_deref().unwrap_or("?"),
                new.expected_name
            ),
        )),
        ServedState::Error => Some((true, format!("--verify-tls {ep}: cannot check the key the server serves: {detail}"))),
        ServedState::Unverifiable => Some((
            false,
            format!("--verify-tls {ep}: the served key cannot be verified: {detail}"),
        )),
        ServedState::Match => Some((
            false,
            match prev.map(|p| p.state) {
                Some(ServedState::Mismatch) => format!(
                    "--verify-tls {ep}: the server encrypts with the ring's key {} again: mismatch ended",
                    new.expected_name
                ),
                Some(ServedState::Error) => format!(
                    "--verify-tls {ep}: reachable again; it encrypts with the ring's key {}",
                    new.expected_name
                ),
                _ => format!(
                    "--verify-tls {ep}: the server encrypts with the ring's key {}",
                    new.expected_name
                ),
            },
        )),
    }
}

/// Connects to `target` with each version (TLS 1.3 first) and reads its tickets' key names;
/// an error that concerns no version in particular (the name does not resolve) is `Err`.
/// Blocking: run it on the blocking pool. Stops early once `stop` is set.
fn observe_target(target: &Target, stop: &AtomicBool) -> Result<Vec<(Version, Observed)>, String> {
    let addr = target.resolve()?;
    let mut out = Vec::new();
    for v in [Version::Tls13, Version::Tls12] {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match observe_version(v, target, addr, stop) {
            Observed::Unreachable(why) => return Err(why),
            seen => out.push((v, seen)),
        }
    }
    Ok(out)
}

/// One version: a connection, and a second one when the first gave fewer than two tickets (a
/// name stek does not know is trusted only when two tickets carry it).
fn observe_version(v: Version, target: &Target, addr: SocketAddr, stop: &AtomicBool) -> Observed {
    let prober = match Prober::new(v, target.sni.as_deref(), addr, PROBE_TIMEOUT, false) {
        Ok(p) => p,
        Err(e) => return Observed::Failed(Chain(&e).to_string()),
    };
    // The address connected to, when the endpoint as given does not say it already.
    let at = if target.given == addr.to_string() {
        String::new()
    } else {
        format!("{addr}: ")
    };
    let mut names = Vec::new();
    for attempt in 0..2 {
        if attempt > 0 && stop.load(Ordering::Relaxed) {
            break;
        }
        match prober.connect(addr, None) {
            Ok(c) => names.extend(c.issued.iter().map(|i| scan::name_of(&i.ticket.bytes))),
            Err(e) if attempt == 0 => {
                return match &e {
                    ProbeError::Alert(d) if is_version_alert(*d) => {
                        Observed::NotSpoken(e.to_string())
                    }
                    ProbeError::Incompatible(_) => Observed::NotSpoken(Chain(&e).to_string()),
                    ProbeError::Connect(_) | ProbeError::ConnectTimedOut(_) => {
                        Observed::Unreachable(format!("{at}{}", Chain(&e)))
                    }
                    _ => Observed::Failed(format!("{at}{}", Chain(&e))),
                }
            }
            Err(_) => break,
        }
        if names.is_empty() || names.len() >= 2 {
            break;
        }
    }
    Observed::Tickets(names)
}

/// The running verifier of one agent: tell it each new ring, read its verdicts. Dropping it
/// stops the task (a probe under way ends within [`PROBE_TIMEOUT`]).
#[derive(Debug)]
pub struct Verifier {
    ring: watch::Sender<Option<Expected>>,
    served: watch::Receiver<Vec<ServedStatus>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Verifier {
    /// Starts checking `targets` for the agent of `group` on `schedule`. Call within a runtime.
    pub fn spawn(
        group: String,
        targets: Vec<Target>,
        schedule: &Schedule,
        clock: Arc<dyn Clock>,
    ) -> Verifier {
        let (ring, ring_rx) = watch::channel(None);
        let (served_tx, served) = watch::channel(Vec::new());
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(
            group,
            targets,
            schedule.period(),
            clock,
            ring_rx,
            served_tx,
            stop.clone(),
        ));
        Verifier {
            ring,
            served,
            stop,
            task,
        }
    }

    /// The ring changed (delivered at `now`): check again now, with its names.
    pub fn ring_changed(&self, ring: &Ring, now: Duration) {
        self.ring.send_replace(Some(Expected::of(ring, now)));
    }

    /// The verdicts so far, one per endpoint checked, in the order given.
    pub fn served(&self) -> Vec<ServedStatus> {
        self.served.borrow().clone()
    }

    /// Changes whenever a verdict does.
    pub fn subscribe(&self) -> watch::Receiver<Vec<ServedStatus>> {
        self.served.clone()
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

async fn run(
    group: String,
    targets: Vec<Target>,
    period: Duration,
    clock: Arc<dyn Clock>,
    mut ring: watch::Receiver<Option<Expected>>,
    served: watch::Sender<Vec<ServedStatus>>,
    stop: Arc<AtomicBool>,
) {
    let interval = crate::status::heartbeat(period);
    let (grace, retry) = (grace(period), retry(period));
    let mut trackers: Vec<Tracker> = targets
        .iter()
        .map(|t| Tracker::new(t.to_string()))
        .collect();
    let mut history = History::default();
    if ring.wait_for(Option::is_some).await.is_err() {
        return;
    }
    loop {
        let mut handles = Vec::new();
        for t in &targets {
            let (t, stop) = (t.clone(), stop.clone());
            handles.push(tokio::task::spawn_blocking(move || {
                observe_target(&t, &stop)
            }));
        }
        let deadline = tokio::time::Instant::now() + CHECK_TIMEOUT;
        let mut seen = Vec::new();
        for h in handles {
            seen.push(match tokio::time::timeout_at(deadline, h).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => Err(format!("the check failed: {e}")),
                Err(_) => Err(format!(
                    "no verdict within {}",
                    crate::duration::format(CHECK_TIMEOUT)
                )),
            });
        }
        // Judged against the newest ring: one that changed during the check is within its
        // grace, so a server that has not reloaded yet is retried, not reported.
        let Some(expected) = ring.borrow_and_update().clone() else {
            return;
        };
        history.add(&expected);
        let now = clock.now();
        let mut settling = false;
        for (tracker, seen) in trackers.iter_mut().zip(&seen) {
            let check = match seen {
                Ok(seen) => combine(&expected, &history, seen),
                Err(why) => Check::new(ServedState::Error, None, why),
            };
            let step = tracker.observe(check, &expected, now, grace);
            settling |= step.settling;
            match step.log {
                Some((true, line)) => warn!("group {group}: {line}"),
                Some((false, line)) => info!("group {group}: {line}"),
                None => {}
            }
        }
        served.send_replace(
            trackers
                .iter()
                .filter_map(|t| t.reported().cloned())
                .collect(),
        );
        let wait = if settling { retry } else { interval };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = ring.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use stek_core::{LocalKeys, Slot, SlotKey};

    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn name(c: char) -> String {
        c.to_string().repeat(32)
    }

    /// A ring of slots 8 (past), 9 (past), 10 (encrypting), 11 (next), named a, b, c, d;
    /// changed at 100 s.
    fn expected() -> Expected {
        Expected {
            slot: 10,
            name: name('c'),
            ring: vec![
                (name('c'), 10, "encrypt".into()),
                (name('d'), 11, "next".into()),
                (name('b'), 9, "past-1".into()),
                (name('a'), 8, "past-2".into()),
            ],
            changed_at: secs(100),
        }
    }

    fn tickets(names: &[Option<char>]) -> Vec<Option<String>> {
        names.iter().map(|n| n.map(name)).collect()
    }

    #[test]
    fn targets_parse_with_an_optional_name_and_errors_are_one_line() {
        let t = Target::parse("127.0.0.1:8443").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.sni.as_deref()),
            ("127.0.0.1", 8443, None)
        );
        assert_eq!(t.to_string(), "127.0.0.1:8443");
        let t = Target::parse("www.example.com@127.0.0.1:443").unwrap();
        assert_eq!(t.sni.as_deref(), Some("www.example.com"));
        let t = Target::parse("localhost:8443").unwrap();
        assert_eq!(t.sni.as_deref(), Some("localhost"));
        let t = Target::parse("[::1]:8443").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8443));
        assert_eq!(Target::parse("localhost").unwrap().port, 443);
        for bad in [
            "",
            "127.0.0.1:0",
            "127.0.0.1:x",
            "[::1",
            "a b:1",
            "@127.0.0.1:1",
        ] {
            let e = Target::parse(bad).unwrap_err();
            let text = Chain(&e).to_string();
            assert!(text.starts_with("--verify-tls "), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
        let e = Target::parse("10.0.0.1@127.0.0.1:1").unwrap_err();
        assert!(e.to_string().contains("must be a DNS name"), "{e}");
    }

    #[test]
    fn the_served_name_is_compared_with_the_encrypting_key() {
        let e = expected();
        let h = History::default();
        // Match: the encrypting key's name on the tickets.
        let c = judge(&e, &h, &tickets(&[Some('c'), Some('c')]));
        assert_eq!(c.state, ServedState::Match);
        assert_eq!(c.served, Some((name('c'), Some(10))));
        // The previous slot's key: a server that did not reload.
        let c = judge(&e, &h, &tickets(&[Some('b')]));
        assert_eq!(c.state, ServedState::Mismatch);
        assert_eq!(c.served, Some((name('b'), Some(9))));
        let d = c.detail.unwrap();
        assert!(
            d.contains(&format!(
                "still encrypting with the previous key {} (slot 9)",
                name('b')
            )),
            "{d}"
        );
        assert!(d.contains("did not take the new keys"), "{d}");
        // An older key of the ring.
        let c = judge(&e, &h, &tickets(&[Some('a')]));
        assert!(c.detail.unwrap().contains("older key"));
        // The next key: ahead.
        let c = judge(&e, &h, &tickets(&[Some('d')]));
        assert_eq!(c.state, ServedState::Mismatch);
        assert!(c.detail.unwrap().contains("later slot"));
        // A foreign key, seen on two tickets: mismatch, not one of stek's.
        let c = judge(&e, &h, &tickets(&[Some('f'), Some('f')]));
        assert_eq!(c.state, ServedState::Mismatch);
        assert_eq!(c.served, Some((name('f'), None)));
        assert!(c.detail.unwrap().contains(
            "a key stek did not issue: something else configures this server's ticket keys"
        ));
        // One foreign ticket cannot be told from a nameless one.
        let c = judge(&e, &h, &tickets(&[Some('f')]));
        assert_eq!(c.state, ServedState::Unverifiable);
        // Different first bytes on every ticket: no key name (Go >= 1.21).
        let c = judge(&e, &h, &tickets(&[Some('f'), Some('e')]));
        assert_eq!(c.state, ServedState::Unverifiable);
        assert!(c.detail.unwrap().contains("no stable key name"));
        // No ticket; cache IDs.
        assert_eq!(judge(&e, &h, &[]).state, ServedState::Unverifiable);
        assert!(judge(&e, &h, &[]).detail.unwrap().contains("no ticket"));
        let c = judge(&e, &h, &tickets(&[None, None]));
        assert_eq!(c.state, ServedState::Unverifiable);
        assert!(c.detail.unwrap().contains("too short"));
    }

    #[test]
    fn an_erased_key_of_stek_is_told_from_a_foreign_one() {
        let mut h = History::default();
        let mut old = expected();
        old.ring.push((name('9'), 3, "past-7".into()));
        h.add(&old);
        let c = judge(&expected(), &h, &tickets(&[Some('9')]));
        assert_eq!(c.state, ServedState::Mismatch);
        assert_eq!(c.served, Some((name('9'), Some(3))));
        assert!(c
            .detail
            .unwrap()
            .contains("left the window and was erased here"));
        let st = ServedStatus {
            endpoint: "x".into(),
            state: c.state,
            served_name: Some(name('9')),
            served_slot: Some(3),
            expected_name: name('c'),
            since: 1.0,
            checked_at: 1.0,
            detail: None,
        };
        assert!(st.at_risk(&[8, 9, 10, 11]).unwrap().contains("x"));
        assert!(st.at_risk(&[3, 4]).is_none());
    }

    #[test]
    fn versions_are_combined_worst_first_and_named_when_they_differ() {
        let e = expected();
        let h = History::default();
        let both = [
            (
                Version::Tls13,
                Observed::Tickets(tickets(&[Some('c'), Some('c')])),
            ),
            (
                Version::Tls12,
                Observed::Tickets(tickets(&[Some('c'), Some('c')])),
            ),
        ];
        let c = combine(&e, &h, &both);
        assert_eq!((c.state, c.detail), (ServedState::Match, None));
        let differ = [
            (
                Version::Tls13,
                Observed::Tickets(tickets(&[Some('c'), Some('c')])),
            ),
            (Version::Tls12, Observed::Tickets(tickets(&[Some('b')]))),
        ];
        let c = combine(&e, &h, &differ);
        assert_eq!(c.state, ServedState::Mismatch);
        assert_eq!(c.served, Some((name('b'), Some(9))));
        let d = c.detail.unwrap();
        assert!(
            d.starts_with("TLS 1.3: match; TLS 1.2: mismatch: still encrypting"),
            "{d}"
        );
        // A version the server does not speak is left out.
        let only13 = [
            (
                Version::Tls13,
                Observed::Tickets(tickets(&[Some('b'), Some('b')])),
            ),
            (Version::Tls12, Observed::NotSpoken("not supported".into())),
        ];
        let c = combine(&e, &h, &only13);
        assert_eq!(c.state, ServedState::Mismatch);
        assert!(c.detail.unwrap().starts_with("TLS 1.3: still encrypting"));
        // Nothing answers: an error, distinct from a mismatch.
        let down = [
            (Version::Tls13, Observed::Failed("cannot connect".into())),
            (Version::Tls12, Observed::Failed("cannot connect".into())),
        ];
        let c = combine(&e, &h, &down);
        assert_eq!(c.state, ServedState::Error);
        assert_eq!(
            c.detail.as_deref(),
            Some("TLS 1.3 and TLS 1.2: cannot connect")
        );
        let neither = [
            (Version::Tls13, Observed::NotSpoken("a".into())),
            (Version::Tls12, Observed::NotSpoken("b".into())),
        ];
        assert_eq!(combine(&e, &h, &neither).state, ServedState::Error);
        // A match on one version and nothing to read on the other: a match.
        let half = [
            (
                Version::Tls13,
                Observed::Tickets(tickets(&[Some('c'), Some('c')])),
            ),
            (Version::Tls12, Observed::Tickets(vec![])),
        ];
        assert_eq!(combine(&e, &h, &half).state, ServedState::Match);
    }

    fn check(state: ServedState, served: Option<char>) -> Check {
        Check {
            state,
            served: served.map(|c| (name(c), None)),
            detail: Some("why".into()),
        }
    }

    #[test]
    fn a_mismatch_is_declared_only_past_the_grace_and_logged_once_each_way() {
        let e = expected(); // changed at 100 s
        let grace = secs(5);
        let mut t = Tracker::new("127.0.0.1:8443");
        let m = Step {
            settling: false,
            log: None,
        };
        // The ring changed; the server has not reloaded yet: retried, not reported.
        let s = t.observe(
            check(ServedState::Mismatch, Some('b')),
            &e,
            secs(101),
            grace,
        );
        assert_eq!(
            s,
            Step {
                settling: true,
                log: None
            }
        );
        assert!(t.reported().is_none());
        // It reloaded within the grace: a match, logged once.
        let s = t.observe(check(ServedState::Match, Some('c')), &e, secs(102), grace);
        assert!(!s.settling);
        assert!(s.log.unwrap().1.contains("encrypts with the ring's key"));
        assert_eq!(
            t.observe(check(ServedState::Match, Some('c')), &e, secs(103), grace),
            m
        );
        assert_eq!(t.reported().unwrap().since, 102.0);
        // A mismatch past the grace: declared at once, logged once as a warning.
        let s = t.observe(
            check(ServedState::Mismatch, Some('f')),
            &e,
            secs(105),
            grace,
        );
        assert!(!s.settling);
        let (warning, line) = s.log.unwrap();
        assert!(warning);
        assert!(
            line.contains(&format!(
                "under key {}, not the encrypting key {}",
                name('f'),
                name('c')
            )),
            "{line}"
        );
        let r = t.reported().unwrap();
        assert_eq!((r.state, r.since), (ServedState::Mismatch, 105.0));
        assert_eq!(
            t.observe(
                check(ServedState::Mismatch, Some('f')),
                &e,
                secs(106),
                grace
            ),
            m
        );
        assert_eq!(t.reported().unwrap().since, 105.0);
        assert_eq!(t.reported().unwrap().checked_at, 106.0);
        // A new ring: a mismatch already declared is not held back by its grace but updated
        // (and not logged again while the served key stays the same).
        let mut e2 = e.clone();
        e2.changed_at = secs(107);
        e2.name = name('d');
        let s = t.observe(
            check(ServedState::Mismatch, Some('f')),
            &e2,
            secs(108),
            grace,
        );
        assert_eq!(s, m);
        let r = t.reported().unwrap();
        assert_eq!((r.state, r.since), (ServedState::Mismatch, 105.0));
        assert_eq!(r.expected_name, name('d'));
        // It ends: logged once.
        let s = t.observe(check(ServedState::Match, Some('c')), &e2, secs(109), grace);
        let (warning, line) = s.log.unwrap();
        assert!(!warning);
        assert!(line.contains("mismatch ended"), "{line}");
        // Errors are not held back by the grace, and logged once.
        let s = t.observe(check(ServedState::Error, None), &e2, secs(110), grace);
        assert!(s.log.unwrap().0);
        assert_eq!(
            t.observe(check(ServedState::Error, None), &e2, secs(111), grace),
            m
        );
    }

    #[test]
    fn the_grace_is_a_few_seconds_and_less_than_half_a_period() {
        assert_eq!(grace(secs(3600)), secs(20));
        assert_eq!(grace(secs(60)), secs(20));
        assert_eq!(grace(secs(8)), secs(4));
        assert_eq!(grace(secs(4)), secs(2));
        assert!(retry(secs(4)) >= Duration::from_millis(250));
    }

    /// A server that accepts connections and never answers: every probe runs into its
    /// timeout, and the agent still rotates on time (the loop never waits for the verifier);
    /// the hang is reported as an error, not a mismatch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hanging_server_never_delays_a_rotation() {
        use crate::agent::tests::{recording_feed, start_generator, until_set};
        use crate::agent::{run, AgentConfig, PlainOpener};
        use crate::clock::manual::TokioClock;
        use crate::metrics::Metrics;
        use crate::store::MemoryStore;

        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let clock = TokioClock::at(1_800_000_001);
        let s = Schedule::new(secs(2), secs(2)).unwrap();
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let (stop, _) = watch::channel(false);
        start_generator(&store, s, &clock, &stop).await;
        let (feed, seen) = recording_feed(&clock);
        let metrics = Metrics::new();
        let mut config = AgentConfig::new("g", s);
        config.verify_tls = vec![Target::parse(&addr.to_string()).unwrap()];
        let agent = tokio::spawn(run(
            store,
            PlainOpener,
            config,
            vec![Box::new(feed)],
            "this process",
            Arc::new(clock.clone()),
            metrics.clone(),
            until_set(&stop),
        ));
        // Two probes of 3 s each (TLS 1.3, then 1.2): an error after about 6 s.
        let deadline = tokio::time::Instant::now() + secs(20);
        let served = loop {
            let served = metrics.status().map(|st| st.served).unwrap_or_default();
            if !served.is_empty() || tokio::time::Instant::now() > deadline {
                break served;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        stop.send_replace(true);
        agent.await.unwrap();
        drop(silent);
        assert_eq!(served.len(), 1, "{served:?}");
        assert_eq!(served[0].state, ServedState::Error, "{served:?}");
        assert!(
            served[0]
                .detail
                .as_deref()
                .unwrap_or("")
                .contains("timed out"),
            "{served:?}"
        );
        let seen = seen.lock().unwrap().clone();
        assert!(seen.len() >= 3, "rotations went on: {seen:?}");
        for x in &seen[1..] {
            let late = x.at - s.start(x.slot);
            assert!(
                late < Duration::from_millis(500),
                "slot {} {late:?} late",
                x.slot.0
            );
        }
    }

    /// HAProxy encrypts with the middle of its three keys: stek's HAProxy file puts the ring's
    /// encrypting key there, in every state of the ring (current, stale, local fallback), so the
    /// one expected name holds for HAProxy too.
    #[test]
    fn haproxys_encrypting_key_is_the_rings() {
        let s = Schedule::new(secs(4), secs(4)).unwrap();
        let now = secs(400);
        let cases: Vec<BTreeMap<Slot, SlotKey>> = vec![
            (99..=101)
                .map(|x| (Slot(x), SlotKey::generate(Slot(x)).unwrap()))
                .collect(),
            // Stale: no key for the current slot (100).
            [99].iter()
                .map(|&x| (Slot(x), SlotKey::generate(Slot(x)).unwrap()))
                .collect(),
            BTreeMap::new(),
        ];
        for shared in cases {
            let ring = Ring::build(&s, now, &shared, &mut LocalKeys::new(), 3).unwrap();
            let keys = crate::sink::HaproxyKeys::of(&ring).unwrap();
            assert_eq!(
                keys.names()[1].to_hex(),
                Expected::of(&ring, now).name,
                "{:?}",
                ring.encrypting()
            );
        }
    }
}
