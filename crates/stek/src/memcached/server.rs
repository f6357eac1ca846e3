//! The accept loop: limits, connection tasks, shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::access::{Access, PeerCred};
use super::connection::{self, Shared};
use super::peers::{PeerKey, PeerSlot, Peers};
use super::shutdown::Connections;
use super::stats::{Refusal, Stats};
use super::table::KeyTable;
use super::workers::{Detached, Job, Workers};

/// The smallest `max_line` honoured: a `get` of one key of the longest allowed length (250
/// bytes) must always fit.
pub const MIN_LINE: usize = 512;

/// How many refused connections may be waiting for their error reply to be read at once;
/// past that, refused connections are closed at once (a flood must not cost tasks).
const MAX_REJECTING: usize = 64;
/// How long a refused connection gets to read its error reply.
const REJECT_GRACE: Duration = Duration::from_secs(1);
/// How long accepting pauses when the process is out of file descriptors or memory: long
/// enough not to spin, short enough that a freed descriptor is used soon.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The reply to a connection past `max_connections`.
pub const TOO_MANY_CONNECTIONS: &[u8] = b"SERVER_ERROR too many connections\r\n";

/// What one server allows its clients.
///
/// # Memory
///
/// A connection holds a read buffer of 4 KiB, grown up to `max_line + 2` bytes while one long
/// line arrives and given back after it; a reply buffer that is empty until the first reply and
/// keeps at most 16 KiB between batches (one batch is cut at 32 KiB plus one value, see
/// `session::FLUSH_AT`); its task and socket, about 2 KiB. With the defaults that is at most
/// about 60 KiB per connection while it works and 6 KiB idle, times `max_connections`
/// (4096): at most about 240 MiB in the worst case of every connection mid-reply at once,
/// about 25 MiB with 4096 idle or slowloris connections. Refused connections cost nothing
/// past their reply (at most 64 wait for it at once). One peer holds at most
/// `max_connections_per_peer` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most connections served at once; more are answered `SERVER_ERROR too many
    /// connections` and closed. The process needs about this many file descriptors
    /// (`ulimit -n`) on top of its own. 1 to [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Most connections one peer may hold at once (a uid on a unix socket, an IP address on
    /// TCP), so that one local user cannot take every slot; more are answered `SERVER_ERROR
    /// too many connections` and closed. At least 1; above `max_connections` it is
    /// `max_connections`. See [`Limits::default_per_peer`].
    pub max_connections_per_peer: usize,
    /// A connection that neither sends nor reads anything for this long is closed. Zero
    /// disables the timeout (as memcached's `idle_timeout`).
    pub idle_timeout: Duration,
    /// A request must arrive whole within this long of its first byte, and each batch of
    /// replies must be taken by the client within this long, else the connection is closed:
    /// a client sending (or reading) a byte at a time cannot hold its slot for ever. Not zero,
    /// at most [`MAX_REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// The longest request line, without its `\r\n`; a longer one is answered
    /// `CLIENT_ERROR line too long` and the connection closed. [`MIN_LINE`] (smaller values are
    /// raised to it) to [`MAX_LINE`].
    pub max_line: usize,
    /// Threads serving connections, each with its own event loop (memcached's `-t`); at
    /// least 1 (0 is taken as 1), at most [`MAX_THREADS`]. The accept loop runs on the
    /// caller's runtime.
    pub threads: usize,
}

/// The largest `max_connections`: past a million the system's file descriptor ceiling
/// (`fs.nr_open`) is reached anyway, so a larger value is a typo.
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// The longest `request_timeout`: a request of a few hundred bytes that takes longer is not
/// a client worth waiting for.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// The largest `max_line`: the longest line a connection may buffer.
pub const MAX_LINE: usize = 1 << 20;
/// The most worker threads.
pub const MAX_THREADS: usize = 1024;

impl Default for Limits {
    /// 4096 connections (a thousand clients at once are all served), 1024 per peer, 5 minutes
    /// idle, 5 s per request, 8 KiB lines (a multi-get of 30 ring keys, or of every
    /// `ticket-key/` of an 18-hour window, fits many times over), one thread per CPU up to 4.
    fn default() -> Self {
        let max_connections = 4096;
        Limits {
            max_connections,
            max_connections_per_peer: Limits::default_per_peer(max_connections),
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            max_line: 8192,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
        }
    }
}

impl Limits {
    /// The per-peer cap that goes with `max_connections`: a quarter of it, so at least four
    /// peers always fit, but at least 16 (a client's pool) and at most `max_connections`.
    pub fn default_per_peer(max_connections: usize) -> usize {
        (max_connections / 4).max(16).min(max_connections)
    }

    /// The per-peer cap in force.
    pub(crate) fn peer_cap(&self) -> usize {
        self.max_connections_per_peer.min(self.max_connections)
    }

    /// Checks that the limits make sense: none refuses every client or is beyond what the
    /// system can do.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(LimitsError::MaxConnections(self.max_connections));
        }
        if self.max_connections_per_peer == 0 {
            return Err(LimitsError::MaxConnectionsPerPeer(0));
        }
        if self.request_timeout.is_zero() || self.request_timeout > MAX_REQUEST_TIMEOUT {
            return Err(LimitsError::RequestTimeout(self.request_timeout));
        }
        if self.max_line > MAX_LINE {
            return Err(LimitsError::MaxLine(self.max_line));
        }
        if self.threads > MAX_THREADS {
            return Err(LimitsError::Threads(self.threads));
        }
        Ok(())
    }
}

/// A limit that makes no sense (see [`Limits::validate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitsError {
    /// `max_connections` is 0 or above [`MAX_CONNECTIONS`].
    MaxConnections(usize),
    /// `max_connections_per_peer` is 0.
    MaxConnectionsPerPeer(usize),
    /// `request_timeout` is 0 or above [`MAX_REQUEST_TIMEOUT`].
    RequestTimeout(Duration),
    /// `max_line` is above [`MAX_LINE`].
    MaxLine(usize),
    /// `threads` is above [`MAX_THREADS`].
    Threads(usize),
}

impl std::fmt::Display for LimitsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitsError::MaxConnections(n) => write!(
                f,
                "memcached max connections {n} must be between 1 and {MAX_CONNECTIONS}"
            ),
            LimitsError::MaxConnectionsPerPeer(n) => write!(
                f,
                "memcached max connections per peer {n} must be at least 1"
            ),
            LimitsError::RequestTimeout(d) => write!(
                f,
                "memcached request timeout {d:?} must be more than 0 and at most {MAX_REQUEST_TIMEOUT:?}"
            ),
            LimitsError::MaxLine(n) => {
                write!(f, "memcached max line {n} must be at most {MAX_LINE} bytes")
            }
            LimitsError::Threads(n) => {
                write!(f, "memcached threads {n} must be at most {MAX_THREADS}")
            }
        }
    }
}

impl std::error::Error for LimitsError {}

/// How one server runs: its limits, who is served on a unix socket, where it counts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// The limits.
    pub limits: Limits,
    /// Who is served on a unix socket (TCP peers have no credentials to check).
    pub access: Access,
    /// The server's counters; pass a clone in to read them from outside (metrics).
    pub stats: Arc<Stats>,
}

impl ServeOptions {
    /// `limits`, unix peers limited to root and this process's uid, fresh counters.
    pub fn new(limits: Limits) -> ServeOptions {
        ServeOptions {
            limits,
            access: Access::owner(),
            stats: Arc::new(Stats::new()),
        }
    }
}

/// A bound endpoint to serve on. Use [`bind`](super::bind) to make one from an address, or
/// wrap a listener bound by the caller (tests bind `127.0.0.1:0`).
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener (loopback unless remote access was asked for).
    Tcp(TcpListener),
    /// A unix stream socket listener.
    Unix(UnixListener),
}

impl Listener {
    /// The TCP address bound (with the port the system chose for port 0), or `None` for a
    /// unix socket.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }

    async fn accept(&self) -> io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, addr) = l.accept().await?;
                Ok((Stream::Tcp(s), Peer::Tcp(addr)))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                // Fails only if the socket is already broken; such a peer is not served.
                let cred = PeerCred::of(&s).ok();
                Ok((Stream::Unix(s), Peer::Unix(cred)))
            }
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Who connected: for the per-peer cap, access and logs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Peer {
    Tcp(SocketAddr),
    /// `None` when the credentials could not be read.
    Unix(Option<PeerCred>),
}

impl Peer {
    /// What the per-peer cap counts by: the IP address (every local user shares 127.0.0.1, so
    /// on TCP the cap only keeps remote hosts apart), the uid on a unix socket.
    fn key(&self) -> Option<PeerKey> {
        match self {
            Peer::Tcp(a) => Some(PeerKey::Ip(a.ip().to_canonical())),
            Peer::Unix(c) => c.map(|c| PeerKey::Uid(c.uid)),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Unix(Some(c)) => write!(f, "uid {} gid {}", c.uid, c.gid),
            Peer::Unix(None) => f.write_str("unix socket peer without credentials"),
        }
    }
}

/// The reply to a unix socket peer that is not allowed to read the keys.
pub const FORBIDDEN: &[u8] = b"SERVER_ERROR forbidden\r\n";

/// How often at most a refused unix peer is logged as a warning (each is counted, and logged
/// at debug level): often enough to diagnose a missing group, rarely enough that a flood of
/// refused connections does not flood the log.
const FORBIDDEN_LOG_EVERY: Duration = Duration::from_secs(60);

/// Serves the memcached text protocol on `listener` from the latest table of `table` until
/// `shutdown` resolves, with `limits`, unix peers limited to root and this process's uid
/// ([`serve_with`] for more).
pub async fn serve(
    listener: Listener,
    table: watch::Receiver<Arc<KeyTable>>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, table, ServeOptions::new(limits), shutdown).await
}

/// Serves the memcached text protocol on `listener` from the latest table of `table` until
/// `shutdown` resolves.
///
/// Each request batch is answered from the table current when it arrived (a new table takes
/// effect for the next batch; a multi-get is never split across two tables). On shutdown the
/// server stops accepting, closes every connection and returns once all are gone, so no key
/// outlives it in a connection's buffers.
///
/// Each connection is checked as it is accepted, in this order: a unix socket peer must be
/// allowed by [`ServeOptions::access`] (else `SERVER_ERROR forbidden`); the server must hold
/// fewer than [`Limits::max_connections`], and its peer fewer than
/// [`Limits::max_connections_per_peer`] (else `SERVER_ERROR too many connections`). Refusals are
/// counted by reason in [`ServeOptions::stats`].
///
/// Connections are served on [`Limits::threads`] threads of the server's own (see the
/// `workers` module); the accept loop and `shutdown` run on the caller's runtime.
///
/// Returns an error if the limits are invalid ([`Limits::validate`], as an
/// `InvalidInput` error whose source is the [`LimitsError`]), or if the worker threads cannot
/// be started or the listener itself fails (not for a client's errors, nor for running out of
/// file descriptors, which pauses accepting briefly).
pub async fn serve_with(
    listener: Listener,
    table: watch::Receiver<Arc<KeyTable>>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    options
        .limits
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let ServeOptions {
        limits,
        access,
        stats,
    } = options;
    let limits = Limits {
        max_line: limits.max_line.max(MIN_LINE),
        ..limits
    };
    let max_connections = u64::try_from(limits.max_connections).unwrap_or(u64::MAX);
    let peer_cap = limits.peer_cap();
    let peers = Arc::new(Peers::default());
    let shared = Arc::new(Shared {
        limits,
        stats: stats.clone(),
    });
    let mut workers = Workers::start(shared.limits.threads, &table, &shared).await?;
    let rejecting = Arc::new(AtomicUsize::new(0));
    // Refused connections, on this runtime: they never reach a worker.
    let mut connections = Connections::default();
    let mut last_forbidden_log: Option<Instant> = None;
    tokio::pin!(shutdown);

    let result = loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            r = listener.accept() => r,
            () = connections.reap() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => match classify(&e) {
                AcceptError::Transient => {
                    debug!("memcached accept: {e}");
                    continue;
                }
                AcceptError::Exhausted => {
                    warn!("memcached server cannot accept connections for now: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        () = &mut shutdown => break Ok(()),
                    }
                }
                AcceptError::Fatal => break Err(e),
            },
        };

        let admitted = admit(&peer, &access, &peers, peer_cap, &stats, max_connections);
        let slot = match admitted {
            Ok(slot) => slot,
            Err(why) => {
                stats.connection_refused(why);
                debug!(%peer, "memcached connection refused: {}", why.label());
                if why == Refusal::Forbidden
                    && last_forbidden_log.is_none_or(|t| t.elapsed() >= FORBIDDEN_LOG_EVERY)
                {
                    last_forbidden_log = Some(Instant::now());
                    warn!(
                        "memcached: refused a connection from {peer}: only root, stek's own uid{} may read the keys ({} refused so far; at most one such warning a minute)",
                        access
                            .group_name()
                            .map(|g| format!(" and members of group {g}"))
                            .unwrap_or_else(|| " (see --memcached-group)".to_owned()),
                        stats.snapshot().refused_forbidden
                    );
                }
                let reply = match why {
                    Refusal::Forbidden => FORBIDDEN,
                    _ => TOO_MANY_CONNECTIONS,
                };
                if rejecting.load(Ordering::Relaxed) < MAX_REJECTING {
                    rejecting.fetch_add(1, Ordering::Relaxed);
                    let rejecting = rejecting.clone();
                    connections.spawn(async move {
                        match stream {
                            Stream::Tcp(s) => reject(s, reply).await,
                            Stream::Unix(s) => reject(s, reply).await,
                        }
                        rejecting.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                continue;
            }
        };

        let stream = match stream {
            Stream::Tcp(s) => {
                // Replies are whole batches: Nagle would only delay them.
                if let Err(e) = s.set_nodelay(true) {
                    debug!(%peer, "TCP_NODELAY: {e}");
                }
                s.into_std().map(Detached::Tcp)
            }
            Stream::Unix(s) => s.into_std().map(Detached::Unix),
        };
        match stream {
            Ok(stream) => workers.dispatch(Job {
                stream,
                peer,
                guard: stats.connection_opened(),
                slot,
            }),
            Err(e) => debug!(%peer, "memcached connection dropped: {e}"),
        }
    };
    connections.close_all().await;
    workers.stop().await;
    result
}

/// Whether a new connection from `peer` is served: allowed (unix peers), under the server's
/// cap, under its peer's cap. The slot counts it against its peer until dropped.
fn admit(
    peer: &Peer,
    access: &Access,
    peers: &Arc<Peers>,
    peer_cap: usize,
    stats: &Stats,
    max_connections: u64,
) -> Result<PeerSlot, Refusal> {
    if let Peer::Unix(cred) = peer {
        if !cred.is_some_and(|c| access.allows(c)) {
            return Err(Refusal::Forbidden);
        }
    }
    if stats.open_connections() >= max_connections {
        return Err(Refusal::MaxConnections);
    }
    let key = peer.key().ok_or(Refusal::Forbidden)?;
    peers.open(key, peer_cap).ok_or(Refusal::PeerLimit)
}

/// Tells a refused client why, then closes (see [`connection::linger_close`]), all within
/// [`REJECT_GRACE`].
async fn reject<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, reply: &[u8]) {
    let _ = tokio::time::timeout(REJECT_GRACE, async {
        if s.write_all(reply).await.is_ok() {
            connection::linger_close(&mut s).await;
        }
    })
    .await;
}

enum AcceptError {
    /// One connection failed before it was accepted: go on.
    Transient,
    /// The process is out of descriptors or memory: pause, then go on.
    Exhausted,
    /// The listener is broken.
    Fatal,
}

fn classify(e: &io::Error) -> AcceptError {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) {
        return AcceptError::Transient;
    }
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => AcceptError::Exhausted,
        // accept(2): Linux reports a new connection's pending network errors from accept;
        // they concern that connection only.
        Some(
            libc::ENETDOWN
            | libc::EPROTO
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::ETIMEDOUT,
        ) => AcceptError::Transient,
        _ => AcceptError::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_classified() {
        let os = io::Error::from_raw_os_error;
        assert!(matches!(
            classify(&os(libc::EMFILE)),
            AcceptError::Exhausted
        ));
        assert!(matches!(
            classify(&os(libc::ECONNABORTED)),
            AcceptError::Transient
        ));
        assert!(matches!(
            classify(&os(libc::EPROTO)),
            AcceptError::Transient
        ));
        assert!(matches!(classify(&os(libc::EBADF)), AcceptError::Fatal));
        assert!(matches!(classify(&os(libc::EINVAL)), AcceptError::Fatal));
    }
}
