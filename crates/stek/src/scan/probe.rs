//! One TLS connection at a time, with rustls as the client and the wire recorded: what the server
//! sent is parsed by [`super::wire`] (tickets, lifetimes, ServerHello), the sessions rustls keeps
//! are captured so a ticket can be offered again, and a resumption ClientHello can be built
//! without sending it, then replayed later (minutes or weeks) to ask only "is this ticket still
//! accepted?" from the ServerHello.
//!
//! The scanner authenticates nobody: any certificate is accepted. It only talks; it never sends
//! application data beyond one `HEAD /` (so a TLS 1.3 server's tickets arrive without waiting), or
//! on the first connection of each version `GET /`, whose answer's head tells the software.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls12Resumption,
    Tls13ClientSessionValue,
};
use rustls::crypto::{ring as provider, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, NamedGroup};
use rustls::{KeyLog, SignatureScheme};
use zeroize::Zeroizing;

use super::wire::{self, Secrets, ServerFlight, Ticket, MAX_FLIGHT};
use crate::{duration, lock};

/// The most bytes of our own first flight kept (the ClientHello).
const MAX_HELLO: usize = 16 * 1024;
/// The most TLS 1.3 tickets kept from one connection.
const MAX_TICKETS: usize = 8;
/// The most bytes kept of the server's answer to our `GET /` (enough for its headers).
pub const MAX_HTTP: usize = 8 * 1024;

/// A TLS version the scanner speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl Version {
    /// Both, in order.
    pub const ALL: [Version; 2] = [Version::Tls12, Version::Tls13];

    /// "TLS 1.2" / "TLS 1.3".
    pub fn label(self) -> &'static str {
        match self {
            Version::Tls12 => "TLS 1.2",
            Version::Tls13 => "TLS 1.3",
        }
    }

    /// "tls12" / "tls13": JSON keys and finding ids.
    pub fn id(self) -> &'static str {
        match self {
            Version::Tls12 => "tls12",
            Version::Tls13 => "tls13",
        }
    }
}

/// Why a probe failed. `Display` says what failed; the I/O, TLS or parse error is the
/// [`source`](std::error::Error::source).
#[derive(Debug)]
#[non_exhaustive]
pub enum ProbeError {
    /// The TLS client could not be set up for this version.
    Setup(rustls::Error),
    /// The server name to send is not a valid DNS name (given).
    ServerName(String),
    /// TCP connect failed.
    Connect(io::Error),
    /// Setting up the socket, or writing our ClientHello, failed.
    Io {
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// The server answered the ClientHello with an alert (its description), before any
    /// ServerHello: it does not speak this version, refuses our offer, or refuses the name.
    Alert(u8),
    /// The server ended the handshake with an alert (its description) after its ServerHello,
    /// before any ticket: e.g. it requires a client certificate. The version is spoken, but the
    /// handshake did not complete.
    Ended(u8),
    /// rustls found the server incompatible with this version (the error says how).
    Incompatible(io::Error),
    /// The server's first bytes are not TLS (given, non-printable bytes as `.`).
    NotTls(String),
    /// The server sent nothing back.
    NoAnswer(io::Error),
    /// The handshake failed for another reason.
    Handshake(io::Error),
    /// What the server sent cannot be parsed.
    Wire(wire::WireError),
    /// rustls would not offer the session in a ClientHello.
    NotOffered,
    /// The connection (connect, handshake and the server's flight together) took longer than
    /// the scan's `--timeout` (given).
    TimedOut(Duration),
    /// The TCP connect alone did not finish within the `--timeout` (given).
    ConnectTimedOut(Duration),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Setup(_) => f.write_str("cannot set up the TLS client"),
            ProbeError::ServerName(s) => write!(f, "{s:?} is not a valid server name"),
            ProbeError::Connect(_) => f.write_str("cannot connect"),
            ProbeError::Io { what, .. } => write!(f, "{what} failed"),
            ProbeError::Alert(desc) => write!(
                f,
                "the server answered the ClientHello with alert {}: {}",
                alert_name(*desc),
                alert_meaning(*desc)
            ),
            ProbeError::Ended(desc) => write!(
                f,
                "the handshake did not complete: after its ServerHello the server sent alert {}: {}",
                alert_name(*desc),
                alert_meaning(*desc)
            ),
            ProbeError::Incompatible(_) => f.write_str("not supported"),
            ProbeError::NotTls(text) => write!(f, "not a TLS server: it answered {text:?}"),
            ProbeError::NoAnswer(_) => f.write_str("no answer to the ClientHello"),
            ProbeError::Handshake(_) => f.write_str("handshake failed"),
            ProbeError::Wire(_) => f.write_str("cannot read what the server sent"),
            ProbeError::NotOffered => f.write_str("the session could not be offered"),
            ProbeError::TimedOut(d) => write!(f, "timed out after {}", duration::format(*d)),
            ProbeError::ConnectTimedOut(d) => {
                write!(
                    f,
                    "cannot connect: timed out after {}",
                    duration::format(*d)
                )
            }
        }
    }
}

impl std::error::Error for ProbeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProbeError::Setup(e) => Some(e),
            ProbeError::Connect(e)
            | ProbeError::Io { source: e, .. }
            | ProbeError::Incompatible(e)
            | ProbeError::NoAnswer(e)
            | ProbeError::Handshake(e) => Some(e),
            ProbeError::Wire(e) => Some(e),
            ProbeError::ServerName(_)
            | ProbeError::Alert(_)
            | ProbeError::Ended(_)
            | ProbeError::NotTls(_)
            | ProbeError::NotOffered
            | ProbeError::TimedOut(_)
            | ProbeError::ConnectTimedOut(_) => None,
        }
    }
}

/// A session rustls made, to be offered again.
#[derive(Debug)]
pub enum Session {
    /// A TLS 1.2 session (ticket and/or session ID).
    Tls12(Tls12ClientSessionValue),
    /// One TLS 1.3 ticket.
    Tls13(Tls13ClientSessionValue),
}

/// One ticket and the session to offer it with.
#[derive(Debug)]
pub struct Issued {
    /// The ticket as sent.
    pub ticket: Ticket,
    /// rustls's session for it, if rustls kept it.
    pub session: Option<Session>,
}

/// What one connection showed.
#[derive(Debug)]
pub struct Connection {
    /// The server's side, parsed.
    pub flight: ServerFlight,
    /// rustls says the handshake resumed a session.
    pub resumed: bool,
    /// Tickets issued on this connection.
    pub issued: Vec<Issued>,
    /// TLS 1.2 session-ID-only mode: the session to resume by ID.
    pub session_id_session: Option<Session>,
    /// Our ClientHello as sent.
    pub client_hello: Vec<u8>,
    /// Wall time of the connection.
    pub took: Duration,
    /// The start of the server's answer to `GET /` (at most [`MAX_HTTP`] bytes), when asked
    /// for and received. Untrusted.
    pub http: Option<Vec<u8>>,
}

/// A TLS client for one target, one version and one resumption mode, used sequentially.
#[derive(Debug)]
pub struct Prober {
    config: Arc<ClientConfig>,
    store: Arc<Sessions>,
    keylog: Arc<Keys>,
    name: ServerName<'static>,
    version: Version,
    timeout: Duration,
    ticket_wait: Duration,
    /// TLS 1.3 tickets the server sent on the first full handshake (0 until known): later
    /// connections stop waiting once that many arrived.
    tickets_expected: AtomicUsize,
}

impl Prober {
    /// A client speaking only `version` to `sni` (or to the bare address when `None`).
    /// `session_id_only` turns tickets off on our side (TLS 1.2 session-ID resumption).
    pub fn new(
        version: Version,
        sni: Option<&str>,
        addr: SocketAddr,
        timeout: Duration,
        session_id_only: bool,
    ) -> Result<Prober, ProbeError> {
        let provider = Arc::new(provider::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match version {
            Version::Tls12 => &[&rustls::version::TLS12],
            Version::Tls13 => &[&rustls::version::TLS13],
        };
        let store = Arc::new(Sessions::default());
        let keylog = Arc::new(Keys::default());
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(ProbeError::Setup)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        config.resumption = Resumption::store(store.clone()).tls12_resumption(if session_id_only {
            Tls12Resumption::SessionIdOnly
        } else {
            Tls12Resumption::SessionIdOrTickets
        });
        config.key_log = keylog.clone();
        let name = match sni {
            Some(s) => ServerName::try_from(s.to_owned())
                .map_err(|_| ProbeError::ServerName(s.to_owned()))?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        Ok(Prober {
            config: Arc::new(config),
            store,
            keylog,
            name,
            version,
            timeout,
            ticket_wait: timeout.min(Duration::from_millis(500)),
            tickets_expected: AtomicUsize::new(0),
        })
    }

    /// The version this prober speaks.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Connect, handshake (offering `offer` if given), collect tickets, close.
    pub fn connect(
        &self,
        addr: SocketAddr,
        offer: Option<Session>,
    ) -> Result<Connection, ProbeError> {
        self.connect_as(addr, offer, false)
    }

    /// A fresh full handshake that also keeps the start of the server's answer to `GET /`
    /// (its `Server` header tells the software), waiting for it a little longer.
    pub fn connect_asking_http(&self, addr: SocketAddr) -> Result<Connection, ProbeError> {
        self.connect_as(addr, None, true)
    }

    fn connect_as(
        &self,
        addr: SocketAddr,
        offer: Option<Session>,
        ask_http: bool,
    ) -> Result<Connection, ProbeError> {
        let started = Instant::now();
        let deadline = Deadline::new(started, self.timeout);
        self.store.arm(offer);
        self.keylog.clear();
        let tcp = connect(addr, &deadline)?;
        let mut io = Recorder::new(tcp, deadline);
        let mut conn = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(ProbeError::Setup)?;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut io) {
                if io.timed_out {
                    return Err(ProbeError::TimedOut(self.timeout));
                }
                return Err(self.explain(&io, e));
            }
        }
        let mut http = Vec::new();
        if self.version == Version::Tls13 || ask_http {
            // An HTTP server answers `GET /` about one round trip after the handshake: wait
            // for it a few handshakes' time, not the whole ticket wait (a server that does not
            // speak HTTP never will).
            let patience = (started.elapsed() * 3).max(Duration::from_millis(50));
            self.await_tickets(&mut conn, &mut io, ask_http.then_some(&mut http), patience);
            if ask_http {
                let n = self.store.tls13_count();
                self.tickets_expected.store(n, Ordering::Relaxed);
            }
        }
        let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
        conn.send_close_notify();
        let _ = conn.write_tls(&mut io);
        let secrets = self.keylog.take();
        let flight = wire::parse_server_flight(&io.read, &secrets).map_err(ProbeError::Wire)?;
        // rustls completes a TLS 1.3 handshake on its side before the server has read our
        // Finished; a server that then refuses us (no client certificate, ...) sends a fatal
        // alert instead of tickets. That handshake did not complete: never "no tickets".
        if let Some((2, desc)) = flight.alert {
            if flight.tickets.is_empty() && !flight.application_data && http.is_empty() {
                return Err(ProbeError::Ended(desc));
            }
        }
        let (tickets, session_id_session) = self.store.take_issued();
        let mut sessions = tickets.into_iter();
        let issued = flight
            .tickets
            .iter()
            .map(|t| Issued {
                ticket: t.clone(),
                session: sessions.next(),
            })
            .collect();
        Ok(Connection {
            resumed,
            issued,
            session_id_session,
            client_hello: io.hello,
            flight,
            took: started.elapsed(),
            http: (!http.is_empty()).then_some(http),
        })
    }

    /// The ClientHello that offers `session`, built without connecting. Replay it with
    /// [`replay`] to learn whether the server still accepts the ticket; the ticket is not
    /// spent until then.
    pub fn offer(&self, session: Session) -> Result<Vec<u8>, ProbeError> {
        self.store.arm(Some(session));
        let mut conn = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(ProbeError::Setup)?;
        let mut hello = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut hello)
                .map_err(|source| ProbeError::Io {
                    what: "writing the ClientHello",
                    source,
                })?;
        }
        match wire::offered_ticket(&hello) {
            Ok(Some(_)) => Ok(hello),
            _ => Err(ProbeError::NotOffered),
        }
    }

    /// TLS 1.3 tickets come after the handshake: ask for `/` so the server has a reason to
    /// write, and read until the answer (tickets precede it), the close, or a short wait.
    /// With `http`, keep the answer's start there (up to its headers' end or [`MAX_HTTP`]).
    fn await_tickets(
        &self,
        conn: &mut ClientConnection,
        io: &mut Recorder,
        mut http: Option<&mut Vec<u8>>,
        patience: Duration,
    ) {
        let host = match &self.name {
            ServerName::DnsName(d) => d.as_ref().to_owned(),
            _ => "localhost".to_owned(),
        };
        // `GET` when the answer is wanted: some servers answer only GET (`openssl s_server
        // -www`); only the answer's head is read.
        let method = if http.is_some() { "GET" } else { "HEAD" };
        let request = format!("{method} / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let _ = conn.writer().write_all(request.as_bytes());
        let mut deadline = Instant::now() + self.ticket_wait;
        if http.is_some() {
            deadline = deadline.min(Instant::now() + patience);
        }
        let expected = self.tickets_expected.load(Ordering::Relaxed);
        let mut buf = [0u8; 4096];
        // The connection's own deadline still bounds every read (Recorder); this one only ends
        // the wait for tickets early.
        loop {
            while conn.wants_write() {
                if conn.write_tls(io).is_err() {
                    return;
                }
            }
            match conn.reader().read(&mut buf) {
                // The answer or the close: every ticket came before it.
                Ok(0) => return,
                Ok(n) => {
                    let Some(h) = http.as_deref_mut() else { return };
                    let room = MAX_HTTP.saturating_sub(h.len());
                    h.extend_from_slice(&buf[..n.min(room)]);
                    if h.len() >= MAX_HTTP || h.windows(4).any(|w| w == b"\r\n\r\n") {
                        return;
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            let now = Instant::now();
            let got = self.store.tls13_count();
            if http.is_none() && expected > 0 && got >= expected {
                return; // as many as the server sent on the first handshake
            }
            if got > 0 && http.is_none() {
                // A second ticket usually follows in the same flight.
                deadline = deadline.min(now + Duration::from_millis(20));
            }
            if now >= deadline {
                return;
            }
            io.wait_until = Some(deadline);
            let read = conn.read_tls(io);
            io.wait_until = None;
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if conn.process_new_packets().is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn explain(&self, io: &Recorder, e: io::Error) -> ProbeError {
        let flight = match wire::parse_server_flight(&io.read, &Secrets::default()) {
            Ok(f) => Some(f),
            Err(_) if !io.read.is_empty() => {
                let text: String = io
                    .read
                    .iter()
                    .take(40)
                    .map(|&b| {
                        if b.is_ascii_graphic() || b == b' ' {
                            char::from(b)
                        } else {
                            '.'
                        }
                    })
                    .collect();
                return ProbeError::NotTls(text);
            }
            Err(_) => None,
        };
        let alert = flight.as_ref().and_then(|f| f.alert);
        let hello = flight.as_ref().and_then(|f| f.hello.clone());
        match (hello, alert) {
            (None, Some((_, desc))) => return ProbeError::Alert(desc),
            // A TLS 1.2 server that wants a client certificate alerts after our (empty)
            // Certificate: the version is spoken, the handshake did not complete.
            (Some(h), Some((_, desc))) if !h.retry_request => return ProbeError::Ended(desc),
            _ => {}
        }
        let msg = e.to_string();
        if msg.contains("PeerIncompatible") || msg.contains("protocol version") {
            return ProbeError::Incompatible(e);
        }
        if io.read.is_empty() && e.kind() != io::ErrorKind::InvalidData {
            return ProbeError::NoAnswer(e);
        }
        ProbeError::Handshake(e)
    }
}

/// Send a ClientHello made by [`Prober::offer`] on a new connection and read the server's
/// answer up to its decision: a TLS 1.3 ServerHello accepting the PSK, or a TLS 1.2 handshake
/// going on abbreviated, means the ticket was accepted.
pub fn replay(
    addr: SocketAddr,
    client_hello: &[u8],
    timeout: Duration,
) -> Result<ServerFlight, ProbeError> {
    let deadline = Deadline::new(Instant::now(), timeout);
    let tcp = connect(addr, &deadline)?;
    let mut io = Recorder::new(tcp, deadline);
    io.write_all(client_hello).map_err(|source| {
        if io.timed_out {
            ProbeError::TimedOut(timeout)
        } else {
            ProbeError::Io {
                what: "sending the ClientHello",
                source,
            }
        }
    })?;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let flight =
            wire::parse_server_flight(&got, &Secrets::default()).map_err(ProbeError::Wire)?;
        if flight.resumed().is_some()
            || flight.alert.is_some()
            || flight.hello.as_ref().is_some_and(|h| h.retry_request)
        {
            return Ok(flight);
        }
        if got.len() >= MAX_FLIGHT {
            return Ok(flight);
        }
        match io.read(&mut buf) {
            Ok(0) => return Ok(flight),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) if io.timed_out && got.is_empty() => return Err(ProbeError::TimedOut(timeout)),
            Err(e) if got.is_empty() => return Err(ProbeError::NoAnswer(e)),
            // Part of a flight, then the deadline or an error: what came is the answer (the
            // decision, if any, is in it).
            Err(_) => return Ok(flight),
        }
    }
}

/// When a connection must be over: `--timeout` bounds each connection as a whole (connect,
/// handshake, the server's flight), not each read, so a server that sends a byte now and then
/// cannot hold the scan.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    /// The timeout as given, for the error.
    timeout: Duration,
}

impl Deadline {
    fn new(start: Instant, timeout: Duration) -> Deadline {
        Deadline {
            at: start + timeout,
            timeout,
        }
    }

    /// The time left, if any.
    fn left(&self) -> Option<Duration> {
        self.at
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }
}

/// TCP connect within what is left of `deadline`.
fn connect(addr: SocketAddr, deadline: &Deadline) -> Result<TcpStream, ProbeError> {
    let left = deadline.left().unwrap_or(Duration::from_millis(1));
    let tcp = TcpStream::connect_timeout(&addr, left).map_err(|e| {
        if e.kind() == io::ErrorKind::TimedOut {
            ProbeError::ConnectTimedOut(deadline.timeout)
        } else {
            ProbeError::Connect(e)
        }
    })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A TLS alert's name (RFC 8446 §6, RFC 5246 §7.2), or its number when unknown.
pub fn alert_id(desc: u8) -> String {
    let name = match desc {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        111 => "certificate_unobtainable",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        114 => "bad_certificate_hash_value",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => return format!("{desc}"),
    };
    name.to_owned()
}

/// A TLS alert's name with its number: `internal_error (80)`.
pub fn alert_name(desc: u8) -> String {
    format!("{} ({desc})", alert_id(desc))
}

/// What an alert usually means when a server sends it during the handshake, for people.
pub fn alert_meaning(desc: u8) -> &'static str {
    match desc {
        40 => "no parameters in common, or the server wants something the client did not send (a client certificate)",
        41 | 42 | 116 => "the server requires a client certificate, which the scanner does not present",
        43..=46 | 48 => "the server rejected the client certificate",
        49 => "the server refuses this client (access control)",
        70 => "the server does not speak this TLS version",
        71 => "the server wants stronger parameters than offered",
        80 => "an internal error; Go servers (Caddy among them) send it for a server name they have no certificate for",
        86 => "the server saw a version downgrade",
        109 | 110 | 47 | 50 | 51 | 10 => "the server did not accept something in the handshake",
        112 => "the server does not serve this server name",
        120 => "the server requires an ALPN protocol the scanner did not offer",
        0 | 90 => "the server closed the connection",
        _ => "the server ended the handshake",
    }
}

/// Alerts that, in answer to a ClientHello, mean "not this version" (or no common suite).
pub fn is_version_alert(desc: u8) -> bool {
    matches!(desc, 40 | 70 | 71)
}

/// The socket, recording what the server sent (capped) and our first flight. Every read and
/// write waits at most until the connection's deadline (the socket timeout is recomputed before
/// each call); past it they fail with `TimedOut` and `timed_out` is set.
struct Recorder {
    inner: TcpStream,
    read: Vec<u8>,
    hello: Vec<u8>,
    deadline: Deadline,
    /// An earlier end for reads only (the wait for TLS 1.3 tickets): past it a read fails with
    /// `WouldBlock`, which is not a timeout of the connection.
    wait_until: Option<Instant>,
    /// The connection's deadline passed.
    timed_out: bool,
}

impl Recorder {
    fn new(inner: TcpStream, deadline: Deadline) -> Recorder {
        Recorder {
            inner,
            read: Vec::new(),
            hello: Vec::new(),
            deadline,
            wait_until: None,
            timed_out: false,
        }
    }

    /// How long the next call may wait: an error once the deadline (or `soft`) passed.
    fn budget(&mut self, soft: Option<Instant>) -> io::Result<Duration> {
        let Some(left) = self.deadline.left() else {
            return Err(self.elapsed());
        };
        match soft.map(|w| w.checked_duration_since(Instant::now())) {
            Some(None | Some(Duration::ZERO)) => Err(io::ErrorKind::WouldBlock.into()),
            Some(Some(w)) => Ok(w.min(left)),
            None => Ok(left),
        }
    }

    fn elapsed(&mut self) -> io::Error {
        self.timed_out = true;
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the connection took longer than {}",
                duration::format(self.deadline.timeout)
            ),
        )
    }

    /// A socket timeout that fired at (or after) the deadline is the connection's timeout.
    fn check(&mut self, e: io::Error) -> io::Error {
        let timeout = matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        );
        if timeout && self.deadline.left().is_none() {
            self.elapsed()
        } else {
            e
        }
    }
}

impl Read for Recorder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let wait = self.budget(self.wait_until)?;
        self.inner.set_read_timeout(Some(wait))?;
        let n = self.inner.read(buf).map_err(|e| self.check(e))?;
        let room = MAX_FLIGHT.saturating_sub(self.read.len());
        self.read.extend_from_slice(&buf[..n.min(room)]);
        Ok(n)
    }
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let wait = self.budget(None)?;
        self.inner.set_write_timeout(Some(wait))?;
        let n = self.inner.write(buf).map_err(|e| self.check(e))?;
        if self.read.is_empty() && self.hello.len() + n <= MAX_HELLO {
            self.hello.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The session store: offers exactly the session we arm, keeps what the server issues.
#[derive(Debug, Default)]
struct Sessions {
    offer12: Mutex<Option<Tls12ClientSessionValue>>,
    offer13: Mutex<Option<Tls13ClientSessionValue>>,
    got12: Mutex<Option<Tls12ClientSessionValue>>,
    got13: Mutex<Vec<Tls13ClientSessionValue>>,
    kx: Mutex<Option<NamedGroup>>,
}

impl Sessions {
    fn arm(&self, offer: Option<Session>) {
        let (a, b) = match offer {
            Some(Session::Tls12(s)) => (Some(s), None),
            Some(Session::Tls13(s)) => (None, Some(s)),
            None => (None, None),
        };
        *lock(&self.offer12) = a;
        *lock(&self.offer13) = b;
        *lock(&self.got12) = None;
        lock(&self.got13).clear();
    }

    fn tls13_count(&self) -> usize {
        lock(&self.got13).len()
    }

    /// (ticket sessions in issue order, the TLS 1.2 session when it has no ticket).
    fn take_issued(&self) -> (Vec<Session>, Option<Session>) {
        let mut tickets: Vec<Session> = lock(&self.got13).drain(..).map(Session::Tls13).collect();
        let mut by_id = None;
        if let Some(s) = lock(&self.got12).take() {
            if tickets.is_empty() {
                by_id = Some(Session::Tls12(s.clone()));
            }
            tickets.push(Session::Tls12(s));
        }
        (tickets, by_id)
    }
}

impl ClientSessionStore for Sessions {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        *lock(&self.kx) = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        *lock(&self.kx)
    }

    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        *lock(&self.got12) = Some(value);
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        lock(&self.offer12).clone()
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut got = lock(&self.got13);
        if got.len() < MAX_TICKETS {
            got.push(value);
        }
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        lock(&self.offer13).take()
    }
}

/// Our own connection's server traffic secrets, to read the tickets the server encrypts.
#[derive(Debug, Default)]
struct Keys(Mutex<Secrets>);

impl Keys {
    fn clear(&self) {
        *lock(&self.0) = Secrets::default();
    }

    fn take(&self) -> Secrets {
        std::mem::take(&mut *lock(&self.0))
    }
}

impl KeyLog for Keys {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let mut s = lock(&self.0);
        match label {
            "SERVER_HANDSHAKE_TRAFFIC_SECRET" => {
                s.handshake = Some(Zeroizing::new(secret.to_vec()))
            }
            "SERVER_TRAFFIC_SECRET_0" => s.application = Some(Zeroizing::new(secret.to_vec())),
            _ => {}
        }
    }

    fn will_log(&self, label: &str) -> bool {
        matches!(
            label,
            "SERVER_HANDSHAKE_TRAFFIC_SECRET" | "SERVER_TRAFFIC_SECRET_0"
        )
    }
}

/// Accepts any certificate: an audit of session resumption must reach servers with private,
/// self-signed or expired certificates. Nothing the scanner sends is secret.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
