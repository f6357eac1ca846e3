//! `stek scan`: audit a TLS server's session resumption from the outside.
//!
//! For each address of each target and each of TLS 1.2 and 1.3: session-ID resumption, ticket
//! issuance and resumption, lifetime hints, TLS 1.3 single use and `psk_ke`, the key name on the
//! tickets (confirmed across connections), and guessable keys. With `--observe` it samples for a
//! while and measures how long each key encrypts and whether early tickets are still accepted;
//! with `--state` it carries those measurements across runs (days, weeks). Several addresses of
//! one name are checked for a shared key; `--expect` compares the served key with a stek agent's
//! schedule. [`analyze`] turns observations into findings and takes the time as an argument.

pub mod expect;
pub mod family;
pub mod html;
pub mod probe;
pub mod report;
pub mod state;
pub mod weak;
pub mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{IsTerminal as _, Write as _};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::error::Chain;

pub use expect::ExpectError;
use family::{Family, Fix};
use probe::{Connection, ProbeError, Prober, Version};
use report::{
    AcceptanceCheck, CrossCheck, Finding, FleetReport, KeyReport, Outcome, Report, Severity,
    TargetReport, TicketFormat, VersionReport,
};
pub use state::StateError;
use state::{EndpointState, State, StoredOffer};

/// Tickets kept per endpoint and version during one run, to offer again.
const MAX_RUN_OFFERS: usize = 32;

/// RFC 8446 §4.6.1: the longest TLS 1.3 ticket lifetime.
const SEVEN_DAYS: u32 = 604_800;

/// The shortest ticket that can carry session state: a resumption secret (32 bytes for
/// SHA-256 suites) and an authentication tag (16 bytes at least). Shorter "tickets" are keys
/// into the server's session cache (OpenSSL's stateful TLS 1.3 tickets are 32-byte session IDs).
const MIN_ENCRYPTED_TICKET: usize = 48;

/// What to scan and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// `host[:port]` (default port 443); IPv6 as `[addr]:port`.
    pub targets: Vec<String>,
    /// The server name to send (default: the target's host name; none for an address).
    pub sni: Option<String>,
    /// Keep sampling this long.
    pub observe: Option<Duration>,
    /// Time between samples (default: observe/60, between 1 s and 5 min).
    pub interval: Option<Duration>,
    /// The longest acceptable life of one encrypting key.
    pub max_rotation: Duration,
    /// The oldest acceptable ticket that still resumes.
    pub max_acceptance: Duration,
    /// Keep observations across runs.
    pub state: Option<PathBuf>,
    /// A stek agent's status (file or metrics endpoint) to compare the served key with.
    pub expect: Option<String>,
    /// How long one connection may take as a whole (connect, handshake, the server's flight).
    pub timeout: Duration,
    /// Show progress on stderr.
    pub progress: bool,
}

/// One address of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The target as given.
    pub target: String,
    /// The address.
    pub addr: SocketAddr,
    /// The server name to send.
    pub sni: Option<String>,
}

impl Endpoint {
    fn key(&self) -> String {
        format!("{}|{}", self.addr, self.sni.as_deref().unwrap_or(""))
    }
}

/// Why a scan could not start. Endpoints that cannot be reached are not errors: they are
/// reported in the [`Report`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ScanError {
    /// A target is not `host[:port]`.
    Target(TargetError),
    /// A target's host name could not be resolved.
    Resolve {
        /// The target as given.
        target: String,
        /// Its host name.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// A target's host name resolved to no address.
    NoAddress {
        /// The target as given.
        target: String,
        /// Its host name.
        host: String,
    },
    /// The `--state` file could not be read or written.
    State(StateError),
    /// The `--expect` status could not be read.
    Expect(ExpectError),
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The wrapped errors say what failed themselves.
            ScanError::Target(e) => e.fmt(f),
            ScanError::State(e) => e.fmt(f),
            ScanError::Expect(e) => e.fmt(f),
            ScanError::Resolve { target, host, .. } => {
                write!(f, "target {target:?}: cannot resolve {host}")
            }
            ScanError::NoAddress { target, host } => {
                write!(f, "target {target:?}: {host} has no address")
            }
        }
    }
}

impl std::error::Error for ScanError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: the wrapped error's Display is this one's, so its source comes next.
            ScanError::Target(e) => e.source(),
            ScanError::State(e) => e.source(),
            ScanError::Expect(e) => e.source(),
            ScanError::Resolve { source, .. } => Some(source),
            ScanError::NoAddress { .. } => None,
        }
    }
}

impl From<TargetError> for ScanError {
    fn from(e: TargetError) -> Self {
        ScanError::Target(e)
    }
}

impl From<StateError> for ScanError {
    fn from(e: StateError) -> Self {
        ScanError::State(e)
    }
}

impl From<ExpectError> for ScanError {
    fn from(e: ExpectError) -> Self {
        ScanError::Expect(e)
    }
}

/// Why a target is not `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetError {
    /// The target is empty.
    Empty,
    /// An IPv6 literal opens `[` and never closes it.
    NoClosingBracket {
        /// The target as given.
        target: String,
    },
    /// Something other than `:PORT` follows `]`.
    JunkAfterBracket {
        /// The target as given.
        target: String,
    },
    /// The host is empty or holds `/` or white space.
    NoHost {
        /// The target as given.
        target: String,
    },
    /// The port is not a number from 1 to 65535.
    BadPort {
        /// The target as given.
        target: String,
    },
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (target, why) = match self {
            TargetError::Empty => ("", "empty"),
            TargetError::NoClosingBracket { target } => (target.as_str(), "no closing ]"),
            TargetError::JunkAfterBracket { target } => (target.as_str(), "junk after ]"),
            TargetError::NoHost { target } => (target.as_str(), "no host name"),
            TargetError::BadPort { target } => (target.as_str(), "bad port"),
        };
        write!(
            f,
            "target {target:?}: {why} (expected host[:port], e.g. example.com:443 or [::1]:8443)"
        )
    }
}

impl std::error::Error for TargetError {}

/// Split `host[:port]`; IPv6 literals as `[::1]:443` or bare `::1`.
pub fn parse_target(target: &str) -> Result<(String, u16), TargetError> {
    let t = || target.to_owned();
    if target.is_empty() {
        return Err(TargetError::Empty);
    }
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| TargetError::NoClosingBracket { target: t() })?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(TargetError::JunkAfterBracket { target: t() }),
        }
    } else if target.matches(':').count() == 1 {
        let (h, p) = target.split_once(':').unwrap_or((target, ""));
        (h, Some(p))
    } else {
        (target, None)
    };
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(TargetError::NoHost { target: t() });
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| TargetError::BadPort { target: t() })?,
        None => 443,
    };
    Ok((host.to_owned(), port))
}

/// Every address of every target (all A and AAAA records of a name), and warnings about the
/// options (an IP address given as `--sni` is not sent: RFC 6066 §3 allows only host names).
pub fn resolve(
    targets: &[String],
    sni: Option<&str>,
) -> Result<(Vec<Endpoint>, Vec<String>), ScanError> {
    let mut warnings = Vec::new();
    let sni = match sni {
        Some(s)
            if s.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok() =>
        {
            warnings.push(format!(
                "--sni {s}: an IP address is not a server name (RFC 6066 §3 forbids IP literals in SNI); no SNI was sent"
            ));
            None
        }
        other => other,
    };
    let mut out: Vec<Endpoint> = Vec::new();
    for t in targets {
        let (host, port) = parse_target(t)?;
        let literal = host.parse::<std::net::IpAddr>().is_ok();
        let addrs: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|source| ScanError::Resolve {
                target: t.clone(),
                host: host.clone(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(ScanError::NoAddress {
                target: t.clone(),
                host,
            });
        }
        let name = sni.map(str::to_owned).or((!literal).then(|| host.clone()));
        for addr in addrs {
            let ep = Endpoint {
                target: t.clone(),
                addr,
                sni: name.clone(),
            };
            if !out.contains(&ep) {
                out.push(ep);
            }
        }
    }
    Ok((out, warnings))
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The key name of a ticket (hex): its first 16 bytes, when the ticket is long enough to carry
/// one. Whether those bytes are a name at all (not the start of a ticket encrypted whole) only
/// several tickets tell. Also used by the agent's `--verify-tls` ([`crate::agent::verify`]).
pub(crate) fn name_of(ticket: &[u8]) -> Option<String> {
    let name: [u8; 16] = ticket.get(..16)?.try_into().ok()?;
    (ticket.len() >= 48).then(|| stek_core::KeyName(name).to_hex())
}

fn cipher_name(suite: u16) -> String {
    rustls::CipherSuite::from(suite)
        .as_str()
        .map_or_else(|| format!("{suite:#06x}"), str::to_owned)
}

/// One endpoint and version while scanning.
#[derive(Debug)]
struct Live {
    version: Version,
    report: VersionReport,
    /// Tickets carry a key name (confirmed).
    named: bool,
    prober: Option<Prober>,
    /// (name, time) of fresh tickets.
    sightings: Vec<(String, f64)>,
    offers: Vec<StoredOffer>,
    connect_error: bool,
    /// The start of the server's answer to `GET /` (untrusted).
    http: Option<Vec<u8>>,
    /// A guessed key that opened one of the tickets.
    weak: Option<weak::WeakKey>,
}

impl Live {
    fn new(version: Version) -> Live {
        Live {
            version,
            report: VersionReport::default(),
            named: false,
            prober: None,
            sightings: Vec::new(),
            offers: Vec::new(),
            connect_error: false,
            http: None,
            weak: None,
        }
    }

    /// Keep a ClientHello offering the ticket of `conn`'s last session, for acceptance checks.
    /// Offers are kept from every sample and thinned evenly, so the ages offered at the end
    /// bracket the oldest ticket the server still accepts.
    fn keep_offer(&mut self, conn: Connection, at: f64) {
        let Some(prober) = &self.prober else { return };
        let Some(issued) = conn.issued.into_iter().rev().find(|i| i.session.is_some()) else {
            return;
        };
        let name = if self.named {
            name_of(&issued.ticket.bytes)
        } else {
            None
        };
        let cache_id = issued.ticket.bytes.len() < MIN_ENCRYPTED_TICKET;
        if let Some(Ok(hello)) = issued.session.map(|s| prober.offer(s)) {
            self.offers.push(StoredOffer {
                version: self.version.id().into(),
                name,
                issued_at: at,
                client_hello: base64::engine::general_purpose::STANDARD.encode(hello),
                spent: false,
                cache_id,
            });
            state::thin(&mut self.offers, MAX_RUN_OFFERS);
        }
    }

    /// One fresh full handshake: note the key name; keep an offer.
    fn sample(&mut self, ep: &Endpoint) {
        let Some(prober) = &self.prober else { return };
        let at = unix(SystemTime::now());
        let Ok(conn) = prober.connect(ep.addr, None) else {
            return;
        };
        if self.named {
            if let Some(n) = conn.issued.first().and_then(|i| name_of(&i.ticket.bytes)) {
                self.sightings.push((n, at));
            }
        }
        self.keep_offer(conn, at);
    }

    /// Record why the first handshake failed, and how far it got.
    fn refused(&mut self, ep: &Endpoint, e: &ProbeError, timeout: Duration) {
        let r = &mut self.report;
        r.error = Some(Chain(e).to_string());
        self.connect_error = matches!(e, ProbeError::Connect(_) | ProbeError::ConnectTimedOut(_));
        r.outcome = match e {
            ProbeError::Alert(d) if probe::is_version_alert(*d) => Outcome::NotOffered,
            ProbeError::Incompatible(_) => Outcome::NotOffered,
            ProbeError::Alert(d) => match &ep.sni {
                // An alert in answer to a ClientHello that carried a name, other than "not this
                // version": the name is what the server refuses (Go servers such as Caddy answer
                // internal_error for a name they have no certificate for).
                Some(name) => {
                    let without = match Prober::new(self.version, None, ep.addr, timeout, false)
                        .and_then(|p| p.connect(ep.addr, None))
                    {
                        Ok(_) => "without a name the handshake completes".to_owned(),
                        Err(ProbeError::Alert(d2)) if d2 == *d => {
                            "without a name it sends the same alert; scan with a name it serves (--sni NAME)".to_owned()
                        }
                        Err(e2) => format!("without a name: {e2}"),
                    };
                    r.error = Some(format!(
                        "the server refused the name {name:?}: it answered the ClientHello with alert {}: {}; {without}",
                        probe::alert_name(*d),
                        probe::alert_meaning(*d)
                    ));
                    Outcome::NameRefused
                }
                None => Outcome::Failed,
            },
            ProbeError::Ended(_) => Outcome::Failed,
            ProbeError::Connect(_)
            | ProbeError::ConnectTimedOut(_)
            | ProbeError::NotTls(_)
            | ProbeError::NoAnswer(_)
            | ProbeError::TimedOut(_) => Outcome::Unreachable,
            _ => Outcome::Failed,
        };
        if let ProbeError::Alert(d) | ProbeError::Ended(d) = e {
            r.alert = Some(probe::alert_id(*d));
        }
    }
}

/// The plain audit of one endpoint at one version.
fn audit(ep: &Endpoint, version: Version, timeout: Duration) -> Live {
    let mut live = Live::new(version);
    let prober = match Prober::new(version, ep.sni.as_deref(), ep.addr, timeout, false) {
        Ok(p) => p,
        Err(e) => {
            live.report.outcome = Outcome::Failed;
            live.report.error = Some(Chain(&e).to_string());
            return live;
        }
    };
    let at = unix(SystemTime::now());
    let mut first = match prober.connect_asking_http(ep.addr) {
        Ok(c) => c,
        Err(e) => {
            live.refused(ep, &e, timeout);
            return live;
        }
    };
    live.http = first.http.take();
    let r = &mut live.report;
    r.supported = true;
    r.outcome = Outcome::Assessed;
    r.handshake_ms = Some(first.took.as_secs_f64() * 1000.0);
    r.cipher = first.flight.hello.as_ref().map(|h| cipher_name(h.cipher));
    r.tickets_issued = !first.issued.is_empty();
    r.tickets_per_connection = first.issued.len();
    if let Some(t) = first.issued.first() {
        r.lifetime_hint = Some(t.ticket.lifetime);
        r.ticket_len = Some(t.ticket.bytes.len());
        r.max_early_data = t.ticket.max_early_data;
        r.ticket_format = Some(if t.ticket.bytes.len() < MIN_ENCRYPTED_TICKET {
            TicketFormat::CacheId
        } else {
            TicketFormat::Nameless
        });
    }
    if version == Version::Tls12 {
        r.session_id_resumption = Some(session_id_resumes(ep, timeout));
    }
    if r.tickets_issued {
        let second = prober.connect(ep.addr, None).ok();
        identify(&mut live, &prober, ep, &first, second.as_ref(), at);
        resume(&mut live, &prober, ep, first, timeout);
        live.prober = Some(prober);
        if let Some(c) = second {
            live.keep_offer(c, at);
        }
    } else {
        live.prober = Some(prober);
    }
    live
}

/// Confirm the key name from several tickets: the same 16 bytes on tickets of separate
/// connections while the tickets themselves differ. Check each ticket for a guessable key.
fn identify(
    live: &mut Live,
    prober: &Prober,
    ep: &Endpoint,
    first: &Connection,
    second: Option<&Connection>,
    at: f64,
) {
    let mut tickets: Vec<&[u8]> = first
        .issued
        .iter()
        .map(|i| i.ticket.bytes.as_slice())
        .collect();
    tickets.extend(
        second
            .iter()
            .flat_map(|c| c.issued.iter().map(|i| i.ticket.bytes.as_slice())),
    );
    let third;
    let names: Vec<Option<String>> = tickets.iter().map(|t| name_of(t)).collect();
    let mut name = names.first().cloned().flatten();
    let all_same = names.iter().all(|n| n.is_some() && *n == name);
    let distinct = tickets.windows(2).all(|w| w[0] != w[1]);
    let mut confirmed = all_same && distinct && tickets.len() >= 2;
    if !all_same && names.iter().all(Option::is_some) {
        // A rotation between the two connections, or no name at all: a third ticket decides.
        if let Ok(c) = prober.connect(ep.addr, None) {
            third = c;
            let n3 = third.issued.first().and_then(|i| name_of(&i.ticket.bytes));
            confirmed = n3.is_some() && names.last() == Some(&n3);
            name = if confirmed { n3 } else { None };
            tickets.extend(third.issued.iter().map(|i| i.ticket.bytes.as_slice()));
        } else {
            name = None;
        }
    }
    let r = &mut live.report;
    r.tickets_seen = tickets.len();
    r.key_name_confirmed = confirmed;
    r.key_name = name.clone();
    if confirmed {
        r.ticket_format = Some(TicketFormat::Named);
    }
    live.named = confirmed;
    if confirmed {
        if let Some(n) = name {
            live.sightings.push((n, at));
        }
    }
    if r.ticket_format == Some(TicketFormat::CacheId) {
        return; // a cache ID holds no key to guess
    }
    // A name-less format changes the first bytes on every ticket: check each ticket; a named
    // one only once per name.
    let mut checked = Vec::new();
    for t in tickets {
        let n = name_of(t).filter(|_| confirmed);
        if n.is_some() && checked.contains(&n) {
            continue;
        }
        checked.push(n);
        if let Some(w) = weak::check(t) {
            live.weak = Some(w);
            break;
        }
    }
}

/// Resume with the first connection's ticket; for TLS 1.3 offer the same ticket once more to
/// learn whether tickets are single-use.
fn resume(live: &mut Live, prober: &Prober, ep: &Endpoint, first: Connection, timeout: Duration) {
    let Some(session) = first.issued.into_iter().find_map(|i| i.session) else {
        return;
    };
    let Ok(again) = prober.connect(ep.addr, Some(session)) else {
        live.report.ticket_resumption = Some(false);
        return;
    };
    let r = &mut live.report;
    let resumed = again.resumed || again.flight.resumed() == Some(true);
    r.ticket_resumption = Some(resumed);
    if !resumed {
        return;
    }
    r.ticket_renewed = Some(!again.issued.is_empty());
    if live.version == Version::Tls13 {
        r.resumption_with_dhe = again.flight.hello.as_ref().map(|h| h.key_share);
        r.single_use = probe::replay(ep.addr, &again.client_hello, timeout)
            .ok()
            .and_then(|f| f.resumed())
            .map(|accepted| !accepted);
    }
}

/// TLS 1.2 resumption by session ID alone (no ticket offered).
fn session_id_resumes(ep: &Endpoint, timeout: Duration) -> bool {
    let Ok(p) = Prober::new(Version::Tls12, ep.sni.as_deref(), ep.addr, timeout, true) else {
        return false;
    };
    let Ok(first) = p.connect(ep.addr, None) else {
        return false;
    };
    if first
        .flight
        .hello
        .as_ref()
        .is_none_or(|h| h.session_id.is_empty())
    {
        return false;
    }
    match first.session_id_session {
        Some(s) => p.connect(ep.addr, Some(s)).is_ok_and(|c| c.resumed),
        None => false,
    }
}

/// Progress on stderr, one rewritten line, only on a terminal.
#[derive(Debug)]
struct Progress {
    on: bool,
}

impl Progress {
    fn show(&self, line: &str) {
        if self.on {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K{line}");
            let _ = e.flush();
        }
    }

    fn done(&self) {
        if self.on {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}

/// Run a scan. `Err` only when it cannot start (bad target, unreadable state or expectation);
/// endpoints that cannot be reached are reported in the [`Report`] (exit code 2).
pub fn run(opts: &Options) -> Result<Report, ScanError> {
    let (endpoints, warnings) = resolve(&opts.targets, opts.sni.as_deref())?;
    let mut state = match &opts.state {
        Some(p) => State::load(p)?,
        None => State {
            version: 1,
            ..State::default()
        },
    };
    let expected = opts.expect.as_deref().map(expect::load).transpose()?;
    let progress = Progress {
        on: opts.progress && std::io::stderr().is_terminal(),
    };
    let started = SystemTime::now();
    let clock = Instant::now();
    progress.show(&format!("scanning {} endpoint(s)", endpoints.len()));

    let mut lives: Vec<Vec<Live>> = std::thread::scope(|s| {
        let handles: Vec<Vec<_>> = endpoints
            .iter()
            .map(|ep| {
                Version::ALL
                    .iter()
                    .map(|&v| s.spawn(move || audit(ep, v, opts.timeout)))
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|hs| {
                hs.into_iter()
                    .map(|h| h.join().expect("audit thread"))
                    .collect()
            })
            .collect()
    });
    let families: Vec<(Family, report::ServerFamily)> =
        lives.iter_mut().map(|v| identify_family(v)).collect();

    if let Some(observe) = opts.observe {
        let interval = opts.interval.unwrap_or_else(|| {
            (observe / 60).clamp(Duration::from_secs(1), Duration::from_secs(300))
        });
        let end = clock + observe;
        let mut n = 0u64;
        while Instant::now() < end {
            let next = (Instant::now() + interval).min(end);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            n += 1;
            std::thread::scope(|s| {
                for (ep, versions) in endpoints.iter().zip(lives.iter_mut()) {
                    for live in versions.iter_mut() {
                        s.spawn(move || live.sample(ep));
                    }
                }
            });
            let names: usize = lives
                .iter()
                .map(|versions| {
                    let mut v: Vec<&String> = versions
                        .iter()
                        .flat_map(|l| l.sightings.iter().map(|(n, _)| n))
                        .collect();
                    v.sort();
                    v.dedup();
                    v.len()
                })
                .sum();
            progress.show(&format!(
                "observing: sample {n}, {:.0}/{:.0} s, {names} key name(s) seen",
                clock.elapsed().as_secs_f64(),
                observe.as_secs_f64()
            ));
        }
    }
    let observed = opts.observe.is_some();
    let run_start = unix(started);
    let now = unix(SystemTime::now());

    progress.show("offering old tickets again");
    let mut targets = Vec::new();
    let mut findings = Vec::new();
    for (ep, versions) in endpoints.iter().zip(lives.iter_mut()) {
        let hist = state.endpoints.entry(ep.key()).or_default();
        let mut t = TargetReport {
            target: ep.target.clone(),
            address: ep.addr.to_string(),
            sni: ep.sni.clone(),
            server_family: families[targets.len()].1.clone(),
            error: None,
            tls12: VersionReport::default(),
            tls13: VersionReport::default(),
            keys: Vec::new(),
            rotation_observed_secs: None,
            observed_secs: 0.0,
            acceptance: Vec::new(),
            oldest_accepted_secs: None,
            youngest_refused_secs: None,
        };
        if versions.iter().all(|l| !l.report.supported) {
            // One line per distinct reason: "TLS 1.2 and TLS 1.3: ..." when both agree.
            let mut reasons: Vec<(Vec<Version>, &str)> = Vec::new();
            for l in versions.iter() {
                let why = l.report.error.as_deref().unwrap_or("no handshake");
                match reasons.iter_mut().find(|(_, w)| *w == why) {
                    Some((vs, _)) => vs.push(l.version),
                    None => reasons.push((vec![l.version], why)),
                }
            }
            t.error = Some(
                reasons
                    .iter()
                    .map(|(vs, why)| format!("{}: {why}", labels(vs)))
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        } else {
            hist.runs.push((run_start, now));
        }
        for live in versions.iter_mut() {
            for (name, at) in &live.sightings {
                hist.saw(name, live.version.id(), *at);
            }
            // Offers of this run are checked now only when the run lasted (--observe); a plain
            // run keeps one per version for the next run.
            if observed {
                hist.offers.append(&mut live.offers);
            }
            let single_use = live.report.single_use == Some(true);
            for o in hist
                .offers
                .iter_mut()
                .filter(|o| o.version == live.version.id() && !o.spent)
            {
                let Some(hello) = o.hello() else { continue };
                let checked_at = unix(SystemTime::now());
                let accepted = probe::replay(ep.addr, &hello, opts.timeout)
                    .ok()
                    .and_then(|f| f.resumed());
                o.spent = single_use;
                hist.checks.push(AcceptanceCheck {
                    version: o.version.clone(),
                    name: o.name.clone(),
                    issued_at: o.issued_at,
                    checked_at,
                    age_secs: checked_at - o.issued_at,
                    accepted,
                    cache_id: o.cache_id,
                });
            }
            hist.offers.extend(live.offers.drain(..).take(1));
            match live.version {
                Version::Tls12 => t.tls12 = live.report.clone(),
                Version::Tls13 => t.tls13 = live.report.clone(),
            }
        }
        findings.extend(analyze(&mut t, hist, opts, now));
        if let (Some(exp), None) = (&expected, &t.error) {
            let served = versions
                .iter()
                .filter(|l| l.named)
                .filter_map(|l| {
                    l.sightings
                        .last()
                        .map(|(n, at)| (l.version, n.clone(), *at))
                })
                .collect::<Vec<_>>();
            findings.extend(expect::check(exp, &t, &served));
        }
        targets.push(t);
    }

    progress.show("checking addresses that share a name");
    let fleet_families: Vec<Family> = families.iter().map(|f| f.0).collect();
    let fleets = fleets(
        &endpoints,
        &lives,
        &fleet_families,
        opts.timeout,
        &mut findings,
    );
    progress.done();

    if let Some(p) = &opts.state {
        state.save(p)?;
    }
    let mut report = Report {
        scanner: format!("stek {}", env!("CARGO_PKG_VERSION")),
        started_at: run_start,
        duration_secs: clock.elapsed().as_secs_f64(),
        verdict: String::new(),
        summary: String::new(),
        exit_code: 0,
        targets,
        fleets,
        findings,
        warnings,
    };
    report.conclude();
    Ok(report)
}

/// Which software answered one endpoint (from its HTTP answer and its tickets); fill in the
/// weak-key evidence with the layout of that software, when one matched.
fn identify_family(versions: &mut [Live]) -> (Family, report::ServerFamily) {
    let http = versions.iter().find_map(|l| l.http.clone());
    let weak_families: Vec<&str> = versions
        .iter()
        .filter_map(|l| l.weak.as_ref())
        .flat_map(weak_families)
        .collect();
    let (tls12, tls13) = match versions {
        [a, b] => (&a.report, &b.report),
        _ => return (Family::Unknown, report::ServerFamily::default()),
    };
    let found = family::identify(&family::Signals {
        http: http.as_deref(),
        tls12,
        tls13,
        weak_families: &weak_families,
    });
    for l in versions.iter_mut() {
        if let Some(w) = &l.weak {
            let (text, decrypts) = weak_text(w, found.0);
            l.report.weak_key = Some(text);
            l.report.weak_key_decrypts = decrypts;
        }
    }
    found
}

/// The families whose key layout the guessed key matched.
fn weak_families(w: &weak::WeakKey) -> Vec<&'static str> {
    w.families()
}

/// The weak key in words, with the layout of `family` when it is one that matched (a zero
/// HMAC key fits every layout: the server tells which file it came from); and whether the
/// ticket decrypted.
fn weak_text(w: &weak::WeakKey, family: Family) -> (String, bool) {
    let fits = |m: &&weak::Match| m.families.contains(&family.id());
    // A layout that decrypts is proof; among equals, the identified server's layout.
    let decrypts = |m: &&weak::Match| m.session_len.is_some();
    let best = w
        .matches
        .iter()
        .find(|m| decrypts(m) && fits(m))
        .or_else(|| w.matches.iter().find(decrypts))
        .or_else(|| w.matches.iter().find(fits))
        .or(w.matches.first());
    let Some(m) = best else {
        return (w.pattern.clone(), false);
    };
    // The identified server's own layout is named as its own, and other servers' layouts the
    // same guess fits are beside the point (issue 12, rule 8); for a server not identified (or
    // none of whose layouts fit) they are every candidate.
    let own = fits(&m);
    let others: Vec<&str> = w
        .matches
        .iter()
        .filter(|o| o.layout != m.layout && !own)
        .map(|o| o.layout)
        .collect();
    let layout = if own {
        format!("{}'s layout, {}", family.name(), m.layout)
    } else {
        m.layout.to_owned()
    };
    (
        format!(
            "{} ({}; HMAC key guessed{}{})",
            w.pattern,
            layout,
            match (m.aes_bits, m.session_len) {
                (Some(bits), Some(len)) => format!(
                    ", AES-{bits} key guessed too: the ticket decrypts to a {len}-byte session"
                ),
                _ => String::new(),
            },
            if others.is_empty() || m.session_len.is_some() {
                String::new()
            } else {
                format!("; the same MAC key also fits: {}", others.join(", "))
            }
        ),
        m.session_len.is_some(),
    )
}

/// Endpoints that share a server name: does a ticket from one resume on the others, and do
/// they serve the same key name?
fn fleets(
    endpoints: &[Endpoint],
    lives: &[Vec<Live>],
    families: &[Family],
    timeout: Duration,
    findings: &mut Vec<Finding>,
) -> Vec<FleetReport> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, ep) in endpoints.iter().enumerate() {
        if let Some(sni) = &ep.sni {
            groups.entry(sni).or_default().push(i);
        }
    }
    let mut out = Vec::new();
    for (sni, members) in groups.into_iter().filter(|(_, m)| m.len() >= 2) {
        let mut cross = Vec::new();
        for &a in &members {
            for &b in members.iter().filter(|&&b| b != a) {
                for live in lives[a].iter().filter(|l| l.report.tickets_issued) {
                    let Some(prober) = &live.prober else { continue };
                    let offer = prober
                        .connect(endpoints[a].addr, None)
                        .ok()
                        .and_then(|c| c.issued.into_iter().find_map(|i| i.session))
                        .and_then(|s| prober.offer(s).ok());
                    let accepted = offer
                        .and_then(|h| probe::replay(endpoints[b].addr, &h, timeout).ok())
                        .and_then(|f| f.resumed());
                    cross.push(CrossCheck {
                        from: endpoints[a].addr.to_string(),
                        to: endpoints[b].addr.to_string(),
                        version: live.version.id().into(),
                        accepted,
                    });
                }
            }
        }
        let names: Vec<Option<String>> = members
            .iter()
            .map(|&i| {
                lives[i]
                    .iter()
                    .find(|l| l.named)
                    .and_then(|l| l.report.key_name.clone())
            })
            .collect();
        let same = names
            .iter()
            .all(Option::is_some)
            .then(|| names.windows(2).all(|w| w[0] == w[1]));
        let addresses: Vec<String> = members
            .iter()
            .map(|&i| endpoints[i].addr.to_string())
            .collect();
        let ok = cross.iter().filter(|c| c.accepted == Some(true)).count();
        let target = format!("fleet {sni}");
        if !cross.is_empty() && ok == cross.len() {
            findings.push(Finding {
                id: "fleet.shared_key".into(),
                severity: Severity::Info,
                target,
                title: "one ticket key serves every address".into(),
                evidence: format!(
                    "tickets from each of {} resumed on every other ({ok}/{} offers); key names {}",
                    addresses.join(", "),
                    cross.len(),
                    if same == Some(true) { "identical" } else { "not comparable" }
                ),
                remediation: "Nothing to change; rotate this shared key fleet-wide (stek generator + agents).".into(),
            });
        } else if !cross.is_empty() {
            findings.push(Finding {
                id: "fleet.split_keys".into(),
                severity: Severity::Low,
                target,
                title: "tickets do not resume across the addresses of one name".into(),
                evidence: format!(
                    "{ok}/{} cross-address offers resumed; key names {}",
                    cross.len(),
                    match same {
                        Some(true) => "identical (the session context differs)".to_owned(),
                        Some(false) => format!(
                            "differ: {}",
                            names
                                .iter()
                                .flatten()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        None => "unknown".into(),
                    }
                ),
                remediation: format!(
                    "Clients moving between addresses do full handshakes.\n{}",
                    family::fix(families[members[0]], Fix::ShareKey)
                ),
            });
        }
        out.push(FleetReport {
            sni: sni.to_owned(),
            addresses,
            same_key_name: same,
            cross_resumption: cross,
        });
    }
    out
}

fn finding(
    t: &TargetReport,
    id: &str,
    severity: Severity,
    title: String,
    evidence: String,
    remediation: &str,
) -> Finding {
    Finding {
        id: id.into(),
        severity,
        target: t.label(),
        title,
        evidence,
        remediation: remediation.into(),
    }
}

/// "TLS 1.2", "TLS 1.2 and TLS 1.3".
fn labels(versions: &[Version]) -> String {
    versions
        .iter()
        .map(|v| v.label())
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Findings for one endpoint from this run's reports and the history (which includes this run),
/// as of `now` (Unix seconds). Fills the report's keys, rotation and acceptance fields. Each
/// finding id appears once per endpoint; the fix is that of the server family identified.
pub fn analyze(
    t: &mut TargetReport,
    hist: &EndpointState,
    opts: &Options,
    now: f64,
) -> Vec<Finding> {
    let mut out = Vec::new();
    if t.error.is_some() {
        return out;
    }
    let fam = Family::from_id(&t.server_family.id).unwrap_or(Family::Unknown);
    let fix = |f: Fix| family::fix(fam, f);
    let max_rot = opts.max_rotation.as_secs_f64();
    let max_acc = opts.max_acceptance.as_secs_f64();
    let versions = [(Version::Tls12, &t.tls12), (Version::Tls13, &t.tls13)];

    for (v, r) in versions {
        let id = format!("tickets.{}", v.id());
        match r.outcome {
            Outcome::Assessed => {}
            Outcome::NotOffered => continue,
            Outcome::NameRefused | Outcome::Failed | Outcome::Unreachable => {
                // The other version was assessed (else the endpoint is an error): say which
                // part of the report is missing.
                out.push(finding(
                    t,
                    "scan.incomplete",
                    Severity::Low,
                    format!("{} was not assessed", v.label()),
                    format!(
                        "{}: {}; nothing is known of its tickets",
                        v.label(),
                        r.error
                            .as_deref()
                            .unwrap_or("the handshake did not complete")
                    ),
                    "Scan again with what the server expects (`--sni NAME` for a name it serves); \
                     a server that requires client certificates cannot be assessed by stek scan.",
                ));
                continue;
            }
        }
        if r.ticket_format == Some(TicketFormat::CacheId) {
            out.push(finding(
                t,
                &format!("session_cache.{}", v.id()),
                Severity::Info,
                format!("{} tickets are session-cache IDs, not encrypted tickets", v.label()),
                format!(
                    "{} ticket(s) per connection of {} bytes: too short to carry encrypted session state, so they name sessions the server keeps in memory (OpenSSL does this when tickets are off); lifetime {} s, resumption {}. No ticket key is involved: session secrets live as long as the cache keeps them.",
                    r.tickets_per_connection,
                    r.ticket_len.unwrap_or(0),
                    r.lifetime_hint.unwrap_or(0),
                    report::yes(r.ticket_resumption)
                ),
                &format!("Nothing to change. To bound how long session secrets stay in memory:\n{}", fix(Fix::CacheLifetime)),
            ));
        } else if !r.tickets_issued {
            out.push(finding(
                t,
                &id,
                Severity::Info,
                format!("no {} session tickets", v.label()),
                format!(
                    "{} handshakes complete without a NewSessionTicket",
                    v.label()
                ),
                "Nothing to change.",
            ));
        } else if r.ticket_resumption == Some(false) {
            out.push(finding(t, &id, Severity::Low, format!("{} tickets are issued but never accepted", v.label()),
                format!("a ticket offered a moment after it was issued did not resume (lifetime hint {} s)", r.lifetime_hint.unwrap_or(0)),
                &format!("Every reconnect costs a full handshake: give all servers of this name the same ticket keys, or turn tickets off.\n{}", fix(Fix::ShareKey))));
        } else {
            out.push(finding(
                t,
                &id,
                Severity::Info,
                format!("{} session tickets resume", v.label()),
                format!(
                    "{} ticket(s) per connection, lifetime {} s{}, resumption {}{}",
                    r.tickets_per_connection,
                    r.lifetime_hint.unwrap_or(0),
                    if r.lifetime_hint == Some(0) {
                        " (0 = unspecified)"
                    } else {
                        ""
                    },
                    if r.ticket_resumption == Some(true) {
                        "yes"
                    } else {
                        "not checked"
                    },
                    if r.ticket_renewed == Some(true) {
                        ", with a new ticket"
                    } else {
                        ""
                    }
                ),
                "Nothing to change if the key rotates (see stek.* findings).",
            ));
        }
        if v == Version::Tls12 && r.tickets_issued && r.lifetime_hint == Some(0) {
            out.push(finding(t, "hint.unspecified", Severity::Info, "TLS 1.2 lifetime hint is 0 (unspecified)".into(),
                "RFC 5077 §3.3: 0 means the lifetime is unspecified, not that tickets are off; the hint says nothing about key rotation".into(),
                "Nothing to change."));
        }
        if v == Version::Tls13 {
            if r.lifetime_hint.is_some_and(|l| l > SEVEN_DAYS) {
                out.push(finding(
                    t,
                    "hint.exceeds_7_days",
                    Severity::Medium,
                    "TLS 1.3 ticket lifetime above 7 days".into(),
                    format!(
                        "ticket_lifetime {} s > 604800 s: RFC 8446 §4.6.1 violation",
                        r.lifetime_hint.unwrap_or(0)
                    ),
                    &fix(Fix::Hint7Days),
                ));
            }
            if r.resumption_with_dhe == Some(false) {
                out.push(finding(t, "tls13.psk_ke", Severity::High,
                    "TLS 1.3 resumption without (EC)DHE".into(),
                    "the resumed ServerHello had no key_share: the session keys derive from the ticket alone, so a leaked ticket key decrypts resumed traffic too".into(),
                    &fix(Fix::PskKe)));
            }
            if let Some(single) = r.single_use {
                out.push(finding(
                    t,
                    "tls13.ticket_reuse",
                    Severity::Info,
                    if single {
                        "TLS 1.3 tickets are single-use".into()
                    } else {
                        "TLS 1.3 tickets can be used more than once".into()
                    },
                    format!(
                        "the same resumption ClientHello offered twice was {}",
                        if single {
                            "refused the second time"
                        } else {
                            "accepted both times"
                        }
                    ),
                    "Nothing to change (single use matters only for 0-RTT).",
                ));
            }
            if r.max_early_data.is_some_and(|m| m > 0) {
                out.push(finding(
                    t,
                    "tls13.early_data",
                    Severity::Low,
                    "TLS 1.3 0-RTT is enabled".into(),
                    format!(
                        "tickets allow {} bytes of early data, which an attacker can replay",
                        r.max_early_data.unwrap_or(0)
                    ),
                    &fix(Fix::EarlyData),
                ));
            }
        }
    }

    // Per endpoint, once: a guessable key, tickets without a name.
    let weak: Vec<(Version, &VersionReport)> = versions
        .iter()
        .filter(|(_, r)| r.outcome == Outcome::Assessed && r.weak_key.is_some())
        .map(|&(v, r)| (v, r))
        .collect();
    if let Some((_, r)) = weak
        .iter()
        .find(|(_, r)| r.weak_key_decrypts)
        .or(weak.first())
    {
        let which = labels(&weak.iter().map(|(v, _)| *v).collect::<Vec<_>>());
        let w = r.weak_key.as_deref().unwrap_or_default();
        let name = r.key_name.as_deref().unwrap_or("none in the ticket");
        if r.weak_key_decrypts {
            out.push(finding(t, "stek.weak_key", Severity::Critical,
                "the session ticket key is guessable".into(),
                format!("{which} tickets (key name {name}) open under a guessed key: {w}. Anyone with a recording of this server's traffic can decrypt it."),
                &fix(Fix::Rotate)));
        } else {
            out.push(finding(t, "stek.weak_mac_key", Severity::Medium,
                "tickets are authenticated with a guessable HMAC key".into(),
                format!("the HMAC-SHA256 of {which} tickets (key name {name}) verifies under a guessed key: {w}; the AES key was not guessed. Anyone can forge the MAC, so the ticket's integrity rests on AES-CBC alone (unauthenticated, open to padding-oracle and bit-flipping attempts)."),
                &fix(Fix::WeakMac)));
        }
    }
    let nameless: Vec<Version> = versions
        .iter()
        .filter(|(_, r)| {
            r.outcome == Outcome::Assessed
                && r.ticket_format == Some(TicketFormat::Nameless)
                && r.ticket_resumption == Some(true)
                && r.tickets_seen >= 2
        })
        .map(|(v, _)| *v)
        .collect();
    if !nameless.is_empty() {
        out.push(finding(t, "stek.no_key_name", Severity::Info, format!("{} tickets carry no stable key name", labels(&nameless)),
            "the first 16 bytes differ on every ticket (Go >= 1.21, rustls, or another format without a name): rotation is measured by acceptance only (how old a ticket still resumes)".into(),
            "Nothing to change."));
    }
    if let Some(sid) = t.tls12.session_id_resumption {
        out.push(finding(
            t,
            "session_id.resumption",
            Severity::Info,
            format!(
                "TLS 1.2 session-ID resumption: {}",
                if sid { "yes" } else { "no" }
            ),
            if sid {
                "a session resumed by session ID alone (server-side cache)".into()
            } else {
                "a session offered by ID alone was not resumed".into()
            },
            "Nothing to change.",
        ));
    }

    // Key life, from every sighting of this run and earlier ones.
    let mut keys: Vec<KeyReport> = hist
        .keys
        .iter()
        .map(|(n, k)| KeyReport {
            name: n.clone(),
            first_seen: k.first_seen,
            last_seen: k.last_seen,
            samples: k.samples,
            versions: k.versions.iter().cloned().collect(),
        })
        .collect();
    keys.sort_by(|a, b| a.first_seen.total_cmp(&b.first_seen));
    let mut gaps: Vec<f64> = keys
        .windows(2)
        .skip(1)
        .map(|w| w[1].first_seen - w[0].first_seen)
        .collect();
    gaps.sort_by(f64::total_cmp);
    t.rotation_observed_secs = gaps.get(gaps.len() / 2).copied();
    let first_run = hist.runs.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
    t.observed_secs = if first_run.is_finite() {
        (now - first_run).max(0.0)
    } else {
        0.0
    };
    let span = |k: &KeyReport| k.last_seen - k.first_seen;
    let stale: Vec<&KeyReport> = keys.iter().filter(|k| span(k) > max_rot).collect();
    if let Some(k) = stale.iter().max_by(|a, b| span(a).total_cmp(&span(b))) {
        out.push(finding(t, "stek.not_rotated", Severity::High,
            "the session ticket key is not rotated".into(),
            format!("key {} made every fresh ticket from {} to {} ({} over {} sample(s), {}); the longest acceptable is {}: whoever obtains this key decrypts every session of that span{}",
                k.name, stamp(k.first_seen), stamp(k.last_seen), report::human(span(k)), k.samples, k.versions.join("+"), report::human(max_rot),
                if stale.len() > 1 { format!(" ({} keys lived too long)", stale.len()) } else { String::new() }),
            &fix(Fix::Rotate)));
    }
    let longest = keys
        .iter()
        .map(|k| k.last_seen - k.first_seen)
        .fold(0.0, f64::max);
    if !keys.is_empty() && keys.len() >= 2 {
        out.push(finding(
            t,
            "stek.rotation",
            Severity::Info,
            "the ticket key rotates".into(),
            format!(
                "{} key names over {}; {}",
                keys.len(),
                report::human(t.observed_secs),
                match t.rotation_observed_secs {
                    Some(r) => format!("a new key every {}", report::human(r)),
                    None => "one change seen".into(),
                }
            ),
            "Nothing to change.",
        ));
    } else if longest <= max_rot && (t.tls12.key_name.is_some() || t.tls13.key_name.is_some()) {
        out.push(finding(t, "stek.rotation_unmeasured", Severity::Info, "key rotation not measured yet".into(),
            format!("one key name seen over {}; the rotation limit is {}: observe longer (--observe {}) or run daily with --state FILE",
                report::human(longest), report::human(max_rot), report::human(max_rot * 1.5)),
            "Nothing to change yet."));
    }
    t.keys = keys;

    // Acceptance: old tickets offered again. Session-cache IDs are judged apart: no key.
    t.acceptance = hist.checks.clone();
    let tickets = || hist.checks.iter().filter(|c| !c.cache_id);
    t.oldest_accepted_secs = tickets()
        .filter(|c| c.accepted == Some(true))
        .map(|c| c.age_secs)
        .reduce(f64::max);
    t.youngest_refused_secs = tickets()
        .filter(|c| c.accepted == Some(false))
        .map(|c| c.age_secs)
        .reduce(f64::min);
    if let Some(old) = tickets()
        .filter(|c| c.accepted == Some(true) && c.age_secs > max_acc)
        .max_by(|a, b| a.age_secs.total_cmp(&b.age_secs))
    {
        out.push(finding(t, "stek.old_ticket_accepted", Severity::High,
            "old session tickets are still accepted".into(),
            format!("a {} ticket issued {} (key {}) resumed at {}, {} old; the longest acceptable is {}",
                old.version, stamp(old.issued_at), old.name.as_deref().unwrap_or("unnamed"), stamp(old.checked_at), report::human(old.age_secs), report::human(max_acc)),
            &fix(Fix::Shorten)));
    }
    if !nameless.is_empty() && t.keys.is_empty() {
        out.extend(nameless_rotation(
            t,
            hist,
            max_rot,
            max_acc,
            &fix(Fix::Rotate),
        ));
    }
    if let Some(old) = hist
        .checks
        .iter()
        .filter(|c| c.cache_id && c.accepted == Some(true) && c.age_secs > max_acc)
        .max_by(|a, b| a.age_secs.total_cmp(&b.age_secs))
    {
        out.push(finding(t, "session_cache.old_session_accepted", Severity::Low,
            "old cached sessions are still resumed".into(),
            format!("a {} session-cache ID issued {} resumed at {}, {} old; the longest acceptable is {}. The session's secrets stayed in the server's memory that long (no ticket key is involved).",
                old.version, stamp(old.issued_at), stamp(old.checked_at), report::human(old.age_secs), report::human(max_acc)),
            &fix(Fix::CacheLifetime)));
    }
    out
}

/// Rotation of a server whose tickets carry no key name, measured through acceptance: a ticket
/// that resumes at age A was decrypted by the key that made it, so that key lived at least A.
/// A key within policy encrypts at most `max_rot` and decrypts at most `max_acc` after its last
/// ticket, so A > max_rot + max_acc proves a key outlived the policy.
fn nameless_rotation(
    t: &TargetReport,
    hist: &EndpointState,
    max_rot: f64,
    max_acc: f64,
    rotate: &str,
) -> Vec<Finding> {
    let checks = || {
        hist.checks
            .iter()
            .filter(|c| !c.cache_id && c.name.is_none())
    };
    let Some(oldest) = checks()
        .filter(|c| c.accepted == Some(true))
        .max_by(|a, b| a.age_secs.total_cmp(&b.age_secs))
    else {
        return Vec::new();
    };
    let refused = checks()
        .filter(|c| c.accepted == Some(false) && c.age_secs > oldest.age_secs)
        .map(|c| c.age_secs)
        .reduce(f64::min);
    let a = oldest.age_secs;
    let offered = checks().count();
    if a > max_rot + max_acc {
        return vec![finding(t, "stek.not_rotated", Severity::High,
            "the session ticket key is not rotated".into(),
            format!("the tickets carry no key name, so rotation is measured through acceptance: a {} ticket issued {} still resumed {} later, so the key that made it has lived at least {}, more than the longest acceptable encrypting ({}) plus decrypting ({}) life; {} of {} old tickets offered, none refused older than that",
                oldest.version, stamp(oldest.issued_at), report::human(a), report::human(a), report::human(max_rot), report::human(max_acc),
                checks().filter(|c| c.accepted == Some(true)).count(), offered),
            rotate)];
    }
    match refused {
        Some(r) => vec![finding(t, "stek.rotation", Severity::Info, "old tickets stop resuming".into(),
            format!("tickets carry no key name; measured through acceptance: tickets up to {} old resume, one {} old was refused: keys (or sessions) retire between those ages", report::human(a), report::human(r)),
            "Nothing to change.")],
        None => vec![finding(t, "stek.rotation_unmeasured", Severity::Info, "key rotation not measured yet".into(),
            format!("tickets carry no key name; measured through acceptance: every ticket offered resumed, the oldest {} old; a key is shown to outlive the policy once a ticket older than {} resumes: observe longer (--observe {}) or run daily with --state FILE",
                report::human(a), report::human(max_rot + max_acc), report::human((max_rot + max_acc) * 1.2)),
            "Nothing to change yet.")],
    }
}

/// Unix seconds as an HTTP date (UTC).
fn stamp(secs: f64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0)))
}

#[cfg(test)]
mod tests;
