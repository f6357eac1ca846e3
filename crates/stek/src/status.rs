//! What an agent reports about itself: its ring by key name, slot and role (never key bytes),
//! its sync state and counters. Written to `DIR/status.json` on every change and served at
//! `/status` on the metrics endpoint; `stek status` prints it.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stek_core::{Encrypting, Origin, Ring};

/// The largest status document read (file or endpoint).
pub const MAX_STATUS: u64 = 4 << 20;

/// Why [`fetch`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FetchError {
    /// The endpoint could not be connected to.
    Connect {
        /// The endpoint (`HOST:PORT`).
        addr: String,
        /// The system's error.
        source: io::Error,
    },
    /// Sending the request or reading the reply failed or timed out.
    Io {
        /// The endpoint.
        addr: String,
        /// The system's error.
        source: io::Error,
    },
    /// The reply is not HTTP: no blank line ends its head.
    NotHttp {
        /// The endpoint.
        addr: String,
    },
    /// The endpoint answered with a status other than 200.
    Status {
        /// The endpoint.
        addr: String,
        /// The reply's status line (control characters replaced, at most 200 characters).
        status_line: String,
    },
    /// The reply's body is not a stek status.
    NotStatus {
        /// The endpoint.
        addr: String,
        /// The JSON decoder's error.
        source: serde_json::Error,
    },
    /// An agent's status was wanted, and the endpoint is a generator's.
    Generator {
        /// The endpoint.
        addr: String,
    },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Connect { addr, .. } => {
                write!(f, "cannot connect to the status endpoint {addr}")
            }
            FetchError::Io { addr, .. } => {
                write!(f, "status endpoint {addr}: the request failed")
            }
            FetchError::NotHttp { addr } => {
                write!(f, "status endpoint {addr}: malformed HTTP reply")
            }
            FetchError::Status { addr, status_line } => {
                write!(f, "status endpoint {addr} answered {status_line:?}")
            }
            FetchError::NotStatus { addr, .. } => {
                write!(f, "status endpoint {addr}: the reply is not a stek status")
            }
            FetchError::Generator { addr } => write!(
                f,
                "status endpoint {addr} is a generator's: it holds no ring (point at an agent's --metrics address)"
            ),
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FetchError::Connect { source, .. } | FetchError::Io { source, .. } => Some(source),
            FetchError::NotStatus { source, .. } => Some(source),
            FetchError::NotHttp { .. }
            | FetchError::Status { .. }
            | FetchError::Generator { .. } => None,
        }
    }
}

/// What a generator reports about itself: `GET /status` on its metrics endpoint, and
/// `stek status --endpoint` pointed at it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GeneratorStatus {
    /// Always `generator`: tells this document from an agent's.
    pub role: String,
    /// The groups it publishes for.
    pub groups: Vec<GroupReport>,
    /// Failed publishing rounds so far.
    pub publish_errors: u64,
    /// When this document was made, Unix seconds.
    pub updated_at: f64,
}

/// One group a generator publishes for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupReport {
    /// The group.
    pub group: String,
    /// The period in seconds.
    pub period: u64,
    /// The lifetime in seconds.
    pub lifetime: u64,
    /// The newest slot whose record the store held after a round of this generator (every
    /// slot up to it since the round's start too).
    pub published_through: Option<u64>,
    /// When the last round for this group succeeded, Unix seconds.
    pub last_success: Option<f64>,
    /// Why the group's rounds fail now, if they do.
    pub failing: Option<String>,
    /// Since when the rounds fail, Unix seconds.
    pub failing_since: Option<f64>,
    /// Keys this generator created (or repaired) for the group.
    pub keys_created: u64,
    /// Slot conflicts found in the group's slots, all reasons.
    pub slot_conflicts: u64,
}

impl GeneratorStatus {
    /// The verdict at `now` (Unix seconds): critical when a group's current slot has no
    /// record this generator saw (agents encrypt with a stale key, then a local one), warning
    /// when the next slot has none (agents reach the boundary without it) or rounds fail.
    pub fn verdict(&self, now: f64) -> Verdict {
        let mut problems = Vec::new();
        for g in &self.groups {
            let current = (now / g.period.max(1) as f64).floor() as u64;
            let failing = g
                .failing
                .as_deref()
                .map(|w| {
                    format!(
                        "; publishing fails since {} ({} ago): {w}",
                        g.failing_since.map_or_else(|| "?".to_owned(), stamp),
                        g.failing_since
                            .map_or_else(|| "?".to_owned(), |t| secs(now - t))
                    )
                })
                .unwrap_or_default();
            let through = g.published_through;
            if through.is_none_or(|t| t < current) {
                problems.push((
                    Level::Critical,
                    format!(
                        "group {}: no record of the current slot ({current}) published by this generator: agents encrypt with a stale key, then a local one{failing}",
                        g.group
                    ),
                ));
            } else if through.is_none_or(|t| t < current + 1) {
                problems.push((
                    Level::Warning,
                    format!(
                        "group {}: no record of the next slot ({}) published by this generator: agents reach {} without it{failing}",
                        g.group,
                        current + 1,
                        stamp(((current + 1) * g.period) as f64)
                    ),
                ));
            } else if !failing.is_empty() {
                problems.push((
                    Level::Warning,
                    format!(
                        "group {}: keys published through slot {}{failing}",
                        g.group,
                        through.unwrap_or(0)
                    ),
                ));
            }
        }
        problems.sort_by_key(|p| std::cmp::Reverse(p.0));
        Verdict {
            level: problems.first().map_or(Level::Ok, |p| p.0),
            problems,
        }
    }

    /// The verdict first, then one line per group.
    pub fn render_at(&self, now: f64) -> String {
        use std::fmt::Write as _;
        let v = self.verdict(now);
        let mut out = String::new();
        if v.problems.is_empty() {
            let _ = writeln!(
                out,
                "OK: generator publishing for {} group(s)",
                self.groups.len()
            );
        }
        for (level, what) in &v.problems {
            let _ = writeln!(out, "{}: {what}", level.word());
        }
        for g in &self.groups {
            let _ = writeln!(
                out,
                "group {}: period {}s, lifetime {}s; published through slot {}; last round ok {}; {} key(s) created, {} slot conflict(s)",
                g.group,
                g.period,
                g.lifetime,
                g.published_through.map_or_else(|| "none yet".to_owned(), |t| t.to_string()),
                g.last_success.map_or_else(|| "never".to_owned(), stamp),
                g.keys_created,
                g.slot_conflicts
            );
        }
        let _ = writeln!(out, "failed rounds so far: {}", self.publish_errors);
        out
    }
}

/// What a status endpoint reports: an agent's status or a generator's.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// An agent (or `stek up`).
    Agent(Box<Status>),
    /// A generator.
    Generator(GeneratorStatus),
}

impl Fetched {
    /// The verdict at `now` (Unix seconds).
    pub fn verdict(&self, now: f64) -> Verdict {
        match self {
            Fetched::Agent(s) => s.verdict(now),
            Fetched::Generator(g) => g.verdict(now),
        }
    }

    /// The verdict and the details, for people.
    pub fn render_at(&self, now: f64) -> String {
        match self {
            Fetched::Agent(s) => s.render_at(now),
            Fetched::Generator(g) => g.render_at(now),
        }
    }

    /// The document, for scripts.
    pub fn to_json(&self) -> serde_json::Result<String> {
        match self {
            Fetched::Agent(s) => serde_json::to_string_pretty(s),
            Fetched::Generator(g) => serde_json::to_string_pretty(g),
        }
    }
}

/// `GET /status` from a running agent's metrics endpoint (`HOST:PORT`).
pub fn fetch(addr: &str) -> Result<Status, FetchError> {
    match fetch_any(addr)? {
        Fetched::Agent(s) => Ok(*s),
        Fetched::Generator(_) => Err(FetchError::Generator {
            addr: addr.to_owned(),
        }),
    }
}

/// `GET /status` from a running agent's or generator's metrics endpoint (`HOST:PORT`).
pub fn fetch_any(addr: &str) -> Result<Fetched, FetchError> {
    let io = |source| FetchError::Io {
        addr: addr.to_owned(),
        source,
    };
    let mut s = TcpStream::connect(addr).map_err(|source| FetchError::Connect {
        addr: addr.to_owned(),
        source,
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    s.write_all(
        format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(io)?;
    let mut buf = Vec::new();
    s.take(MAX_STATUS).read_to_end(&mut buf).map_err(io)?;
    parse_reply(addr, &buf)
}

/// The status in an HTTP reply from `addr`.
fn parse_reply(addr: &str, reply: &[u8]) -> Result<Fetched, FetchError> {
    let text = String::from_utf8_lossy(reply);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| FetchError::NotHttp {
            addr: addr.to_owned(),
        })?;
    if !head.starts_with("HTTP/1.1 200") {
        let line = head.lines().next().unwrap_or("");
        return Err(FetchError::Status {
            addr: addr.to_owned(),
            status_line: line
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(200)
                .collect(),
        });
    }
    let not_status = |source| FetchError::NotStatus {
        addr: addr.to_owned(),
        source,
    };
    #[derive(Deserialize)]
    struct Role {
        #[serde(default)]
        role: Option<String>,
    }
    let role: Role = serde_json::from_str(body).map_err(not_status)?;
    if role.role.as_deref() == Some("generator") {
        serde_json::from_str(body)
            .map(Fetched::Generator)
            .map_err(not_status)
    } else {
        serde_json::from_str(body)
            .map(|s| Fetched::Agent(Box::new(s)))
            .map_err(not_status)
    }
}

/// One key of the ring, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStatus {
    /// Slot number.
    pub slot: u64,
    /// Slot start, Unix seconds.
    pub start: u64,
    /// `encrypt`, `next` or `past-N`.
    pub role: String,
    /// The key's public name (hex): the first 16 bytes of the tickets it makes.
    pub name: String,
    /// `shared` (the group's key) or `local` (this host's stand-in).
    pub origin: String,
    /// Whether this key encrypts new tickets (the first of the ring). The role is the slot's
    /// place in the schedule: when the current slot's shared key is missing, a past key
    /// encrypts and the current slot's local stand-in only decrypts. Absent from older files.
    #[serde(default)]
    pub encrypts: bool,
}

/// What a key of a ring is used for, in words: `encrypts` for the first (the key a server
/// encrypts with), `decrypts` for the others, whatever their slot's role.
pub fn key_use(index: usize) -> &'static str {
    if index == 0 {
        "encrypts"
    } else {
        "decrypts"
    }
}

/// Which key encrypts and why, in words (for the status and the comments of key files).
pub fn encrypting_words(ring: &Ring) -> String {
    match ring.encrypting() {
        Encrypting::Current => "the current slot's shared key".to_owned(),
        Encrypting::Stale { behind } => format!(
            "a stale shared key ({behind} period(s) old): the current slot's shared key has not arrived, its local stand-in only decrypts"
        ),
        Encrypting::LocalFallback => {
            "this host's local key (FALLBACK: no recent shared key; other hosts cannot resume its tickets)".to_owned()
        }
    }
}

/// An agent's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The group.
    pub group: String,
    /// The period in seconds.
    pub period: u64,
    /// The lifetime in seconds.
    pub lifetime: u64,
    /// The current slot by this host's clock.
    pub slot: u64,
    /// `current`, `stale` or `local_fallback`.
    pub encrypting: String,
    /// The name of the encrypting key.
    pub encrypting_name: String,
    /// The ring in nginx order (encrypting first).
    pub keys: Vec<KeyStatus>,
    /// Unix seconds of the last successful store read.
    pub last_sync: Option<f64>,
    /// Seconds since the last successful store read.
    pub staleness: Option<f64>,
    /// This host's clock minus the store's, in seconds, if measured.
    pub clock_offset: Option<f64>,
    /// Records rejected, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Held slots whose record in the store later changed to another valid key (the held key
    /// was kept): the fleet disagrees on those slots. Absent from older status files.
    #[serde(default)]
    pub slot_conflicts: u64,
    /// Sink failures, by sink.
    pub sink_failures: BTreeMap<String, u64>,
    /// When this status was made, Unix seconds.
    pub updated_at: f64,
    /// HAProxy admin sockets (`--haproxy-socket`), by path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub haproxy: Vec<HaproxySocketStatus>,
    /// The agent rewrites its status at least this often (seconds), even when nothing changed:
    /// a status older than [`Status::dead_after`] means the agent is not running or stuck.
    /// Absent (0) from older status files.
    #[serde(default)]
    pub heartbeat: f64,
    /// The sinks that report on their own (the reload command): failing or not, and the key
    /// their server took.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkStatus>,
    /// Why the store holds nothing for this agent's slots (a group or schedule mismatch, no
    /// generator publishing), when the agent could tell from a survey of the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_diagnosis: Option<String>,
    /// Why a server may still encrypt with a key that has left the window (erased here, so
    /// forward secrecy no longer holds for its tickets), if one may.
    #[serde(default)]
    pub forward_secrecy_at_risk: Option<String>,
    /// What `--verify-tls` found each server serving, in the order given. Absent without it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub served: Vec<ServedStatus>,
}

/// What the last `--verify-tls` check found at one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServedState {
    /// Its tickets carry the name of the ring's encrypting key.
    Match,
    /// Its tickets carry another key's name (`served_name`).
    Mismatch,
    /// Its tickets carry no key name that can be read, or it issues none: neither a match nor
    /// a mismatch.
    Unverifiable,
    /// It could not be checked: no connection, no handshake.
    Error,
}

impl ServedState {
    /// `match`, `mismatch`, `unverifiable`, `error`.
    pub fn word(self) -> &'static str {
        match self {
            ServedState::Match => "match",
            ServedState::Mismatch => "mismatch",
            ServedState::Unverifiable => "unverifiable",
            ServedState::Error => "error",
        }
    }
}

/// One server checked by `--verify-tls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedStatus {
    /// The address as given (`[NAME@]HOST:PORT`).
    pub endpoint: String,
    /// What the last check found.
    pub state: ServedState,
    /// The key name on its tickets, when read.
    pub served_name: Option<String>,
    /// That key's slot, when it is one of stek's keys.
    pub served_slot: Option<u64>,
    /// The ring's encrypting key's name at the last check.
    pub expected_name: String,
    /// Since when (Unix seconds) this state (and served key) holds.
    pub since: f64,
    /// When the last check was judged, Unix seconds.
    pub checked_at: f64,
    /// Why, in words (per TLS version when they differ); none for a plain match.
    pub detail: Option<String>,
}

impl ServedStatus {
    /// If this server encrypts with a key of stek's that is not among `window` (slots): why
    /// forward secrecy is at risk, in words.
    pub fn at_risk(&self, window: &[u64]) -> Option<String> {
        if self.state != ServedState::Mismatch {
            return None;
        }
        let slot = self.served_slot?;
        if window.contains(&slot) {
            return None;
        }
        Some(format!(
            "the server at {} issues tickets under key {} (slot {slot}), which has left the window and was erased here",
            self.endpoint,
            self.served_name.as_deref().unwrap_or("?"),
        ))
    }
}

/// One sink's own report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkStatus {
    /// The sink (`on-change`, ...).
    pub name: String,
    /// Why it fails now, if it does.
    pub failing: Option<String>,
    /// The slot of the encrypting key its server took, if known.
    pub applied_slot: Option<u64>,
    /// That key's public name.
    pub applied_name: Option<String>,
    /// When the server took it, Unix seconds.
    pub applied_since: Option<f64>,
}

impl SinkStatus {
    /// If this sink's server took a key that is not among `window` (slots): why forward
    /// secrecy is at risk, in words.
    pub fn at_risk(&self, window: &[u64]) -> Option<String> {
        let slot = self.applied_slot?;
        if window.contains(&slot) {
            return None;
        }
        Some(format!(
            "the server behind the {} sink took key {} (slot {slot}) at {} and no newer key since{}: that key has left the window and was erased here, yet the server may still encrypt with it",
            self.name,
            self.applied_name.as_deref().unwrap_or("?"),
            self.applied_since.map_or_else(|| "?".to_owned(), stamp),
            self.failing
                .as_deref()
                .map(|w| format!(" (failing: {w})"))
                .unwrap_or_default()
        ))
    }
}

/// How often a running agent rewrites its status, for a period of `period`: a quarter period,
/// between 1 and 10 seconds.
pub fn heartbeat(period: Duration) -> Duration {
    (period / 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// How an agent is doing, as a monitoring plugin says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Nothing to do.
    Ok,
    /// Look soon: stale keys, a failing sink, a clock that disagrees with the store.
    Warning,
    /// Act now: the agent is down, or the host encrypts with a key no other host has.
    Critical,
}

impl Level {
    /// `OK`, `WARNING`, `CRITICAL`.
    pub fn word(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        }
    }

    /// The exit code of a monitoring plugin: 0, 1, 2.
    pub fn exit_code(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Warning => 1,
            Level::Critical => 2,
        }
    }
}

/// A status's verdict: the worst level and one sentence per problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The worst level found.
    pub level: Level,
    /// What is wrong, worst first; empty when all is well.
    pub problems: Vec<(Level, String)>,
}

/// One HAProxy admin socket, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaproxySocketStatus {
    /// The socket's path.
    pub socket: String,
    /// Whether the last check found every managed ring holding stek's keys.
    pub ok: bool,
    /// The last check's error, if it failed.
    pub error: Option<String>,
    /// The files of the rings stek keeps in step (as HAProxy names them).
    pub rings: Vec<String>,
    /// Keys pushed so far.
    pub keys_pushed: u64,
    /// Checks that failed so far.
    pub failures: u64,
}

impl Status {
    /// The status of `ring` at `now`.
    pub fn of(ring: &Ring, group: &str, now: Duration) -> Status {
        let s = ring.schedule();
        Status {
            group: group.to_owned(),
            period: s.period().as_secs(),
            lifetime: s.lifetime().as_secs(),
            slot: ring.current().0,
            encrypting: match ring.encrypting() {
                Encrypting::Current => "current".into(),
                Encrypting::Stale { .. } => "stale".into(),
                Encrypting::LocalFallback => "local_fallback".into(),
            },
            encrypting_name: ring.encrypting_entry().key.name().to_hex(),
            keys: ring
                .entries()
                .iter()
                .enumerate()
                .map(|(i, e)| KeyStatus {
                    slot: e.slot().0,
                    start: s.start(e.slot()).as_secs(),
                    role: e.role.to_string(),
                    name: e.key.name().to_hex(),
                    origin: match e.origin {
                        Origin::Shared => "shared".into(),
                        Origin::Local => "local".into(),
                    },
                    encrypts: i == 0,
                })
                .collect(),
            last_sync: None,
            staleness: None,
            clock_offset: None,
            rejected: BTreeMap::new(),
            slot_conflicts: 0,
            sink_failures: BTreeMap::new(),
            updated_at: now.as_secs_f64(),
            haproxy: Vec::new(),
            heartbeat: heartbeat(s.period()).as_secs_f64(),
            sinks: Vec::new(),
            store_diagnosis: None,
            forward_secrecy_at_risk: None,
            served: Vec::new(),
        }
    }

    /// How old this status may grow before its agent counts as down: three heartbeats and
    /// two seconds of slack (older files without a heartbeat: a period and two seconds).
    pub fn dead_after(&self) -> f64 {
        if self.heartbeat > 0.0 {
            3.0 * self.heartbeat + 2.0
        } else {
            self.period as f64 + 2.0
        }
    }

    /// Judge this status at `now` (Unix seconds): is the agent alive, does the host encrypt with
    /// the group's key, are its sinks and clock in order.
    pub fn verdict(&self, now: f64) -> Verdict {
        let mut problems = Vec::new();
        let age = now - self.updated_at;
        if age > self.dead_after() {
            problems.push((
                Level::Critical,
                format!(
                    "agent not running or stuck: its status was last written {} ago ({}); a running agent rewrites it every {}",
                    secs(age),
                    stamp(self.updated_at),
                    secs(self.heartbeat.max(1.0))
                ),
            ));
        }
        if let Some(why) = &self.forward_secrecy_at_risk {
            problems.push((Level::Critical, format!("forward secrecy at risk: {why}")));
        }
        for sink in &self.sinks {
            if let Some(why) = &sink.failing {
                problems.push((
                    Level::Warning,
                    format!("the {} sink fails: {why}", sink.name),
                ));
            }
        }
        for s in &self.served {
            let detail = s.detail.as_deref().unwrap_or("no detail");
            match s.state {
                ServedState::Mismatch => problems.push((
                    Level::Warning,
                    format!(
                        "the server at {} issues tickets under key {}, not the encrypting key {} (since {}): {detail}",
                        s.endpoint,
                        s.served_name.as_deref().unwrap_or("?"),
                        s.expected_name,
                        stamp(s.since)
                    ),
                )),
                ServedState::Error => problems.push((
                    Level::Warning,
                    format!(
                        "cannot check the key the server at {} serves: {detail}",
                        s.endpoint
                    ),
                )),
                ServedState::Match | ServedState::Unverifiable => {}
            }
        }
        match self.encrypting.as_str() {
            "local_fallback" => problems.push((
                Level::Critical,
                "encrypting with a local key no other host has (no shared key for this slot): tickets do not resume across hosts".into(),
            )),
            "stale" => problems.push((
                Level::Warning,
                format!(
                    "encrypting with a stale shared key (no record for the current slot yet; last store sync {})",
                    self.staleness.map_or_else(|| "never".to_owned(), |s| format!("{} ago", secs(s)))
                ),
            )),
            _ => {}
        }
        if let Some(why) = &self.store_diagnosis {
            problems.push((Level::Warning, why.clone()));
        }
        for h in self.haproxy.iter().filter(|h| !h.ok) {
            problems.push((
                Level::Warning,
                format!(
                    "HAProxy {} is not in step: {}",
                    h.socket,
                    h.error.as_deref().unwrap_or("unknown error")
                ),
            ));
        }
        if let Some(o) = self.clock_offset {
            // Clocks further apart than a quarter period make hosts switch keys visibly apart.
            if o.abs() > (self.period as f64 / 4.0).max(1.0) {
                problems.push((
                    Level::Warning,
                    format!("this host's clock is {o:+.1} s off the store's"),
                ));
            }
        }
        problems.sort_by_key(|p| std::cmp::Reverse(p.0));
        Verdict {
            level: problems.first().map_or(Level::Ok, |p| p.0),
            problems,
        }
    }

    /// The verdict first, then the times in words, then the table (see [`Status::render`]).
    pub fn render_at(&self, now: f64) -> String {
        let v = self.verdict(now);
        let mut out = String::new();
        match v.problems.as_slice() {
            [] => {
                let _ = writeln!(out, "OK: group {} rotating on the shared key", self.group);
            }
            problems => {
                for (level, what) in problems {
                    let _ = writeln!(out, "{}: {what}", level.word());
                }
            }
        }
        let next = (self.slot + 1) * self.period;
        let _ = writeln!(
            out,
            "status written {} ago ({}); next rotation {}",
            secs(now - self.updated_at),
            stamp(self.updated_at),
            if (next as f64) >= now {
                format!("in {} ({})", secs(next as f64 - now), stamp(next as f64))
            } else {
                format!(
                    "was due {} (the agent has not rotated since)",
                    stamp(next as f64)
                )
            }
        );
        out.push_str(&self.render());
        out
    }

    /// A human-readable table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "group {}: slot {}, period {}s, lifetime {}s, encrypting with {} ({})",
            self.group,
            self.slot,
            self.period,
            self.lifetime,
            self.encrypting_name,
            self.encrypting
        );
        if let Some(s) = self.staleness {
            let _ = writeln!(out, "last store sync {s:.1}s ago");
        }
        if let Some(o) = self.clock_offset {
            let _ = writeln!(out, "clock offset to the store {:+.3}s", o);
        }
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:<8} {:<32} {:<8} use",
            "slot", "start", "role", "key name", "origin"
        );
        for (i, k) in self.keys.iter().enumerate() {
            // Older files do not say which key encrypts: the first one does.
            let encrypts = k.encrypts || (i == 0 && !self.keys.iter().any(|k| k.encrypts));
            let _ = writeln!(
                out,
                "{:<12} {:<12} {:<8} {:<32} {:<8} {}",
                k.slot,
                k.start,
                k.role,
                k.name,
                k.origin,
                key_use(if encrypts { 0 } else { 1 })
            );
        }
        for (reason, n) in &self.rejected {
            let _ = writeln!(out, "records rejected ({reason}): {n}");
        }
        if self.slot_conflicts > 0 {
            let _ = writeln!(
                out,
                "slot conflicts (a held slot's record changed to another key; held key kept): {}",
                self.slot_conflicts
            );
        }
        for (sink, n) in &self.sink_failures {
            let _ = writeln!(out, "sink failures ({sink}): {n}");
        }
        for sink in &self.sinks {
            let applied = match (&sink.applied_name, sink.applied_slot, sink.applied_since) {
                (Some(n), Some(slot), Some(at)) => {
                    format!("server took {n} (slot {slot}) at {}", stamp(at))
                }
                _ => "server's key unknown (not applied yet)".to_owned(),
            };
            let state = match &sink.failing {
                Some(w) => format!("FAILING: {w}"),
                None => "ok".to_owned(),
            };
            let _ = writeln!(out, "sink {}: {state}; {applied}", sink.name);
        }
        for s in &self.served {
            let what = match (s.state, &s.served_name) {
                (ServedState::Match, _) => format!("match: key {}", s.expected_name),
                (ServedState::Mismatch, Some(n)) => {
                    format!("MISMATCH: key {n}, expected {}", s.expected_name)
                }
                (state, _) => state.word().to_uppercase(),
            };
            let detail = s
                .detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "served by {}: {what} since {}{detail}",
                s.endpoint,
                stamp(s.since)
            );
        }
        for h in &self.haproxy {
            let state = match &h.error {
                None => format!("in step (rings {})", h.rings.join(", ")),
                Some(e) => format!("FAILING: {e}"),
            };
            let _ = writeln!(
                out,
                "HAProxy {}: {state}; {} key(s) pushed, {} failed check(s)",
                h.socket, h.keys_pushed, h.failures
            );
        }
        out
    }
}

/// Seconds in words: `4.0 s`, `12 min`, `3.5 h`.
pub(crate) fn secs(s: f64) -> String {
    crate::duration::format(Duration::from_secs_f64(s.max(0.0)))
}

/// Unix seconds as a UTC date.
pub(crate) fn stamp(at: f64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs_f64(at.max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;
    use stek_core::{LocalKeys, Schedule, Slot, SlotKey};

    fn status(updated_at: f64) -> Status {
        serde_json::from_str::<Status>(&format!(
            r#"{{"group":"web","period":4,"lifetime":8,"slot":7,"encrypting":"current",
            "encrypting_name":"aa","keys":[],"last_sync":null,"staleness":null,
            "clock_offset":null,"rejected":{{}},"sink_failures":{{}},"updated_at":{updated_at},
            "heartbeat":1.0}}"#
        ))
        .unwrap()
    }

    #[test]
    fn the_table_says_which_key_encrypts_when_a_stale_key_does() {
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let shared = BTreeMap::from([(Slot(99), SlotKey::generate(Slot(99)).unwrap())]);
        let ring = Ring::build(
            &s,
            Duration::from_secs(400),
            &shared,
            &mut LocalKeys::new(),
            1,
        )
        .unwrap();
        let st = Status::of(&ring, "web", Duration::from_secs(400));
        assert_eq!(st.encrypting, "stale");
        let uses: Vec<(u64, &str, bool)> = st
            .keys
            .iter()
            .map(|k| (k.slot, k.role.as_str(), k.encrypts))
            .collect();
        assert_eq!(uses[0], (99, "past-1", true));
        assert!(uses[1..].iter().all(|u| !u.2), "{uses:?}");
        let table = st.render();
        let row = |slot: &str| {
            table
                .lines()
                .find(|l| l.starts_with(slot))
                .unwrap_or_else(|| panic!("{table}"))
                .to_owned()
        };
        assert!(row("99 ").ends_with("shared   encrypts"), "{table}");
        assert!(
            row("100 ").contains(" encrypt ") && row("100 ").ends_with("local    decrypts"),
            "{table}"
        );
    }

    #[test]
    fn the_verdict_tells_a_dead_agent_a_fallback_and_a_stale_key() {
        let st = status(28.0);
        assert_eq!(st.verdict(29.0).level, Level::Ok);
        assert!(
            st.render_at(29.0).starts_with("OK: group web"),
            "{}",
            st.render_at(29.0)
        );
        // Three heartbeats and 2 s later the agent is down: within two periods (8 s).
        assert_eq!(st.dead_after(), 5.0);
        let v = st.verdict(28.0 + 5.1);
        assert_eq!(v.level, Level::Critical);
        assert!(
            v.problems[0].1.contains("agent not running or stuck"),
            "{v:?}"
        );
        assert_eq!(v.level.exit_code(), 2);
        let mut fb = status(28.0);
        fb.encrypting = "local_fallback".into();
        assert_eq!(fb.verdict(29.0).level, Level::Critical);
        let mut stale = status(28.0);
        stale.encrypting = "stale".into();
        stale.staleness = Some(12.0);
        let v = stale.verdict(29.0);
        assert_eq!((v.level, v.level.exit_code()), (Level::Warning, 1));
        assert!(v.problems[0].1.contains("12s ago"), "{v:?}");
        let mut off = status(28.0);
        off.clock_offset = Some(-3.0);
        assert_eq!(off.verdict(29.0).level, Level::Warning);
        // Worst first.
        let mut both = stale.clone();
        both.encrypting = "local_fallback".into();
        let v = both.verdict(40.0);
        assert_eq!(v.problems.len(), 2);
        assert!(v.problems.iter().all(|p| p.0 == Level::Critical));
        // An old file without a heartbeat: a period and 2 s.
        let mut old = status(28.0);
        old.heartbeat = 0.0;
        assert_eq!(old.dead_after(), 6.0);
    }

    #[test]
    fn status_files_without_slot_conflicts_still_parse_and_conflicts_are_shown() {
        let old = r#"{"group":"web","period":4,"lifetime":8,"slot":7,"encrypting":"current",
            "encrypting_name":"aa","keys":[],"last_sync":null,"staleness":null,
            "clock_offset":null,"rejected":{},"sink_failures":{},"updated_at":1.0}"#;
        let mut st: Status = serde_json::from_str(old).unwrap();
        assert_eq!(st.slot_conflicts, 0);
        assert!(!st.render().contains("slot conflicts"));
        st.slot_conflicts = 2;
        assert!(st.render().contains("slot conflicts"));
        let back: Status = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(back.slot_conflicts, 2);
    }

    #[test]
    fn served_keys_are_judged_and_shown_and_older_files_parse() {
        let mut st = status(28.0);
        assert!(st.served.is_empty());
        assert!(!serde_json::to_string(&st).unwrap().contains("served"));
        let entry = |state, served: Option<&str>, detail: Option<&str>| ServedStatus {
            endpoint: "127.0.0.1:8443".into(),
            state,
            served_name: served.map(str::to_owned),
            served_slot: None,
            expected_name: "aa".into(),
            since: 20.0,
            checked_at: 28.0,
            detail: detail.map(str::to_owned),
        };
        st.served = vec![entry(ServedState::Match, Some("aa"), None)];
        assert_eq!(st.verdict(29.0).level, Level::Ok);
        assert!(st
            .render()
            .contains("served by 127.0.0.1:8443: match: key aa since"));
        // Unverifiable is shown, not a problem.
        st.served = vec![entry(ServedState::Unverifiable, None, Some("no ticket"))];
        assert_eq!(st.verdict(29.0).level, Level::Ok);
        assert!(
            st.render().contains("UNVERIFIABLE since"),
            "{}",
            st.render()
        );
        // A mismatch and an error are warnings, each with its endpoint and words.
        st.served = vec![entry(
            ServedState::Mismatch,
            Some("bb"),
            Some("a key stek did not issue"),
        )];
        let v = st.verdict(29.0);
        assert_eq!(v.level, Level::Warning);
        assert!(v.problems[0].1.starts_with("the server at 127.0.0.1:8443 issues tickets under key bb, not the encrypting key aa"), "{v:?}");
        assert!(
            v.problems[0].1.ends_with(": a key stek did not issue"),
            "{v:?}"
        );
        st.served = vec![entry(ServedState::Error, None, Some("cannot connect"))];
        let v = st.verdict(29.0);
        assert_eq!(v.level, Level::Warning);
        assert_eq!(
            v.problems[0].1,
            "cannot check the key the server at 127.0.0.1:8443 serves: cannot connect"
        );
        let back: Status = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(back, st);
        assert!(serde_json::to_string(&st)
            .unwrap()
            .contains("\"state\":\"error\""));
    }

    #[test]
    fn fetch_errors_say_what_failed_and_keep_the_cause() {
        // Nothing listens on port 1.
        let e = fetch("127.0.0.1:1").unwrap_err();
        assert!(matches!(e, FetchError::Connect { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "cannot connect to the status endpoint 127.0.0.1:1"
        );
        assert!(e.source().unwrap().is::<io::Error>());

        let e = parse_reply(
            "h:1",
            b"HTTP/1.1 503 Service Unavailable\r\n\r\nno ring yet\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "status endpoint h:1 answered \"HTTP/1.1 503 Service Unavailable\""
        );
        assert!(e.source().is_none());
        assert!(matches!(
            parse_reply("h:1", b"garbage"),
            Err(FetchError::NotHttp { .. })
        ));
        let e = parse_reply("h:1", b"HTTP/1.1 200 OK\r\n\r\n{\"group\": 1}").unwrap_err();
        assert!(matches!(e, FetchError::NotStatus { .. }), "{e:?}");
        assert!(e.source().unwrap().is::<serde_json::Error>());
        assert_eq!(
            e.to_string(),
            "status endpoint h:1: the reply is not a stek status"
        );
    }

    /// A generator's status endpoint is read by `stek status --endpoint`, and refused where an
    /// agent's ring is needed (`stek scan --expect-from`).
    #[test]
    fn a_generator_status_is_told_from_an_agent_status() {
        let body = r#"{"role":"generator","groups":[{"group":"web","period":4,"lifetime":8,
            "published_through":101,"last_success":399.5,"failing":null,"failing_since":null,
            "keys_created":2,"slot_conflicts":0}],"publish_errors":0,"updated_at":400.0}"#;
        let reply = format!("HTTP/1.1 200 OK\r\n\r\n{body}");
        let Ok(Fetched::Generator(g)) = parse_reply("h:1", reply.as_bytes()) else {
            panic!("not read as a generator's status");
        };
        // Slot 100 (400 s to 404 s): the next slot, 101, is published.
        assert_eq!(g.verdict(401.0).level, Level::Ok);
        assert!(g
            .render_at(401.0)
            .starts_with("OK: generator publishing for 1 group(s)"));
        // At 404 s slot 102 is next and has no record: a warning; at 408 s the current one.
        let v = g.verdict(404.5);
        assert_eq!(v.level, Level::Warning);
        assert!(
            v.problems[0]
                .1
                .contains("group web: no record of the next slot (102)"),
            "{v:?}"
        );
        let v = g.verdict(408.5);
        assert_eq!(v.level, Level::Critical);
        assert!(
            v.problems[0]
                .1
                .contains("group web: no record of the current slot (102)"),
            "{v:?}"
        );
        let mut failing = g.clone();
        failing.groups[0].failing = Some("Redis is unavailable".into());
        failing.groups[0].failing_since = Some(400.0);
        let v = failing.verdict(401.0);
        assert_eq!(v.level, Level::Warning);
        assert!(
            v.problems[0].1.contains("publishing fails since")
                && v.problems[0].1.ends_with("Redis is unavailable"),
            "{v:?}"
        );
        let v = failing.verdict(408.5);
        assert_eq!(v.level, Level::Critical);
        assert!(v.problems[0].1.ends_with(": Redis is unavailable"), "{v:?}");
        // An agent's status is still read as one.
        let agent = serde_json::to_string(&status(1.0)).unwrap();
        let reply = format!("HTTP/1.1 200 OK\r\n\r\n{agent}");
        assert!(matches!(
            parse_reply("h:1", reply.as_bytes()),
            Ok(Fetched::Agent(_))
        ));
    }
}
