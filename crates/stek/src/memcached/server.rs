//! The accept loop: limits, connection tasks, shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::connection::{self, Shared};
use super::shutdown::Connections;
use super::stats::Stats;
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most connections served at once; more are answered `SERVER_ERROR too many
    /// connections` and closed. The process needs about this many file descriptors
    /// (`ulimit -n`) on top of its own.
    pub max_connections: usize,
    /// A connection that neither sends nor reads anything for this long is closed. Zero
    /// disables the timeout (as memcached's `idle_timeout`).
    pub idle_timeout: Duration,
    /// The longest request line, without its `\r\n`; a longer one is answered
    /// `CLIENT_ERROR line too long` and the connection closed. At least [`MIN_LINE`].
    pub max_line: usize,
    /// Threads serving connections, each with its own event loop (memcached's `-t`); at
    /// least 1. The accept loop runs on the caller's runtime.
    pub threads: usize,
}

impl Default for Limits {
    /// 4096 connections (a thousand clients at once are all served), 5 minutes idle, 8 KiB
    /// lines (a multi-get of 30 ring keys, or of every `ticket-key/` of an 18-hour window,
    /// fits many times over), one thread per CPU up to 4.
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            idle_timeout: Duration::from_secs(300),
            max_line: 8192,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
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
                Ok((Stream::Unix(s), Peer::Unix))
            }
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Who connected, for logs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Peer {
    Tcp(SocketAddr),
    Unix,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Unix => f.write_str("unix socket"),
        }
    }
}

/// Serves the memcached text protocol on `listener` from the latest table of `table` until
/// `shutdown` resolves.
///
/// Each request batch is answered from the table current when it arrived (a new table takes
/// effect for the next batch; a multi-get is never split across two tables). On shutdown the
/// server stops accepting, closes every connection and returns once all are gone, so no key
/// outlives it in a connection's buffers.
///
/// Connections are served on [`Limits::threads`] threads of the server's own (see the
/// `workers` module); the accept loop and `shutdown` run on the caller's runtime.
///
/// Returns an error only if the worker threads cannot be started or the listener itself fails
/// (not for a client's errors, nor for running out of file descriptors, which pauses
/// accepting briefly).
pub async fn serve(
    listener: Listener,
    table: watch::Receiver<Arc<KeyTable>>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let limits = Limits {
        max_line: limits.max_line.max(MIN_LINE),
        ..limits
    };
    let max_connections = u64::try_from(limits.max_connections).unwrap_or(u64::MAX);
    let stats = Arc::new(Stats::new());
    let shared = Arc::new(Shared {
        limits,
        stats: stats.clone(),
    });
    let mut workers = Workers::start(shared.limits.threads, &table, &shared).await?;
    let rejecting = Arc::new(AtomicUsize::new(0));
    // Refused connections, on this runtime: they never reach a worker.
    let mut connections = Connections::default();
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

        if stats.open_connections() >= max_connections {
            stats.connection_rejected();
            debug!(%peer, "memcached connection refused: {max_connections} already open");
            if rejecting.load(Ordering::Relaxed) < MAX_REJECTING {
                rejecting.fetch_add(1, Ordering::Relaxed);
                let rejecting = rejecting.clone();
                connections.spawn(async move {
                    match stream {
                        Stream::Tcp(s) => reject(s).await,
                        Stream::Unix(s) => reject(s).await,
                    }
                    rejecting.fetch_sub(1, Ordering::Relaxed);
                });
            }
            continue;
        }

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
            }),
            Err(e) => debug!(%peer, "memcached connection dropped: {e}"),
        }
    };
    connections.close_all().await;
    workers.stop().await;
    result
}

/// Tells a refused client why, then closes (see [`connection::linger_close`]), all within
/// [`REJECT_GRACE`].
async fn reject<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let _ = tokio::time::timeout(REJECT_GRACE, async {
        if s.write_all(TOO_MANY_CONNECTIONS).await.is_ok() {
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
