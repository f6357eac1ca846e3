//! One client connection: read what is there, answer all of it, write once.
//!
//! memcached 1.6 answers pipelined text `get`s with one write per reply; here every request
//! that one read brought is answered into one buffer and written with one call, so a client
//! that pipelines pays one system call per batch on each side.
//!
//! Three clocks end a connection that holds its slot without being served: the idle timeout
//! (nothing sent or read at all), the request timeout from a request's first byte to its last
//! (a client that trickles a line a byte at a time, slowloris), and the request timeout again
//! for each batch of replies to be taken (a client that reads a byte at a time). The request
//! timer costs nothing for whole requests: it is armed only when a read leaves a request
//! incomplete.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use zeroize::{Zeroize, Zeroizing};

use super::server::Limits;
use super::session::{Context, Session, Stop};
use super::stats::Stats;
use super::table::KeyTable;

/// The read buffer a connection starts with: enough for a deep pipeline of `get`s, small
/// enough that thousands of idle connections cost little.
const INITIAL_READ: usize = 4096;
/// The reply buffer a connection keeps between batches; a larger one (after a big reply) is
/// given back, so thousands of connections that once asked for a big reply do not keep it.
/// Four times the usual reply (a whole ring, 1.6 KiB) and its margin.
const KEEP_OUT: usize = 16 * 1024;

/// Why a connection ended on its own terms (I/O errors are returned as errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The client closed its side.
    Eof,
    /// The protocol asked to close (`quit`, a line too long, a bad data block).
    Closed,
    /// Nothing was received or sent for the idle timeout.
    Idle,
    /// A request did not arrive whole within the request timeout of its first byte.
    RequestTimeout,
}

/// What a connection shares with its server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) limits: Limits,
    pub(crate) stats: Arc<Stats>,
}

/// The idle timer: one timer per connection that is re-armed only when it fires, not at
/// every request (re-arming costs a trip through the timer wheel; reading the clock does not).
struct Idle {
    timeout: Duration,
    last: Instant,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Idle {
    fn new(timeout: Duration) -> Idle {
        // Zero disables the timeout, as in memcached; a year stands in for "never".
        let timeout = if timeout.is_zero() {
            Duration::from_secs(365 * 24 * 3600)
        } else {
            timeout
        };
        let last = Instant::now();
        Idle {
            timeout,
            last,
            sleep: Box::pin(sleep_until(last + timeout)),
        }
    }

    fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Resolves when the connection has been idle for the timeout.
    async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            let deadline = self.last + self.timeout;
            if Instant::now() >= deadline {
                return;
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// The request timer: armed when a read leaves a request incomplete, from the time of that
/// read, and disarmed when the request completes. One timer per connection, made on first use
/// and reset after.
struct Deadline {
    timeout: Duration,
    armed: bool,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    fn new(timeout: Duration) -> Deadline {
        Deadline {
            timeout,
            armed: false,
            sleep: None,
        }
    }

    /// Starts the timer at `from` unless it runs already (the request started earlier).
    fn arm(&mut self, from: Instant) {
        if self.armed {
            return;
        }
        self.armed = true;
        let at = from + self.timeout;
        match &mut self.sleep {
            Some(s) => s.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(sleep_until(at))),
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Resolves when an armed timer runs out; poll only while armed.
    async fn expired(&mut self) {
        match &mut self.sleep {
            Some(s) => s.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

/// Serves one client until it leaves, the protocol closes, or it idles out.
pub(crate) async fn run<S>(
    mut stream: S,
    table: watch::Receiver<Arc<KeyTable>>,
    shared: &Shared,
) -> io::Result<End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &shared.limits;
    // Room for the longest line allowed plus its `\r\n`, so a line that fits always fits.
    let max_buf = INITIAL_READ.max(limits.max_line.saturating_add(2));
    let mut buf = vec![0u8; INITIAL_READ];
    let (mut start, mut end) = (0, 0);
    // Replies hold key bytes: zeroed after each write, and whole on drop (an aborted task
    // included).
    let mut out = Zeroizing::new(Vec::new());
    let mut session = Session::new();
    let mut idle = Idle::new(limits.idle_timeout);
    let mut deadline = Deadline::new(limits.request_timeout);
    // The table a multi-get cut in pieces keeps answering from.
    let mut held: Option<Arc<KeyTable>> = None;

    loop {
        if end == buf.len() {
            if start > 0 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            } else {
                // The session left an incomplete line filling the buffer: it is shorter than
                // the cap (else the session would have closed), so growing to max_buf makes
                // room.
                let grown = (buf.len() * 2).min(max_buf);
                buf.resize(grown, 0);
            }
        }
        let n = tokio::select! {
            biased;
            r = stream.read(&mut buf[end..]) => r?,
            () = idle.expired() => return Ok(End::Idle),
            () = deadline.expired(), if deadline.armed => {
                shared.stats.request_timed_out();
                return Ok(End::RequestTimeout);
            }
        };
        if n == 0 {
            return Ok(End::Eof);
        }
        let read_at = Instant::now();
        end += n;
        idle.touch();

        let current = match &held {
            Some(t) => t.clone(),
            None => table.borrow().clone(),
        };
        let ctx = Context {
            table: &current,
            stats: &shared.stats,
            limits,
        };
        loop {
            let p = session.process(&buf[start..end], &ctx, &mut out);
            start += p.consumed;
            held = session.mid_request().then(|| current.clone());
            if !out.is_empty() {
                write_out(&mut stream, &mut out, &mut idle, shared).await?;
            }
            match p.stop {
                Stop::Flush => {}
                Stop::NeedInput => break,
                Stop::Close => {
                    linger_close(&mut stream).await;
                    return Ok(End::Closed);
                }
            }
        }
        drop(current);
        // Bytes of a request are left (or a data block is owed): its time runs from the read
        // that brought its first byte.
        if start < end || session.awaiting_data() {
            deadline.arm(read_at);
        } else {
            deadline.disarm();
        }
        if start == end {
            start = 0;
            end = 0;
            if buf.len() > INITIAL_READ {
                // A long line is done with: give the memory back.
                buf = vec![0u8; INITIAL_READ];
            }
        }
    }
}

/// How long a closing connection waits for the client to read its last reply and leave.
const LINGER: Duration = Duration::from_secs(1);
/// How much a closing connection reads and drops meanwhile (the rest of a 200 kB line...).
const LINGER_MAX: usize = 1024 * 1024;

/// Closes a connection without destroying its last reply: sends FIN, then reads and drops what
/// the client still sends until it closes too, for at most [`LINGER`] and [`LINGER_MAX`]
/// bytes. Closing with unread input makes the kernel send a reset, which can discard the reply
/// (`CLIENT_ERROR line too long`, `SERVER_ERROR too many connections`) before the client
/// reads it. Nothing read here is kept.
pub(crate) async fn linger_close<S>(stream: &mut S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Best effort throughout: the client may already be gone.
    if stream.shutdown().await.is_err() {
        return;
    }
    // On the heap, made only now: an array here would sit in every connection's future (the
    // largest state counts), 4 KiB more for each of thousands of idle connections.
    let mut sink = vec![0u8; 4096];
    let mut left = LINGER_MAX;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Writes the whole reply buffer, then zeroes and empties it. A client that takes no byte for
/// the idle timeout, or does not take the whole batch within the request timeout, is dropped
/// (it would otherwise hold its connection slot, and the reply's memory, for ever).
async fn write_out<S>(
    stream: &mut S,
    out: &mut Zeroizing<Vec<u8>>,
    idle: &mut Idle,
    shared: &Shared,
) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut written = 0;
    // Made only when one write did not take everything: a batch the socket buffer takes at
    // once (nearly all of them) costs no timer.
    let mut limit: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    while written < out.len() {
        let n = tokio::select! {
            biased;
            r = stream.write(&out[written..]) => r?,
            () = idle.expired() => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"));
            }
            () = async { limit.as_mut().expect("polled only when set").as_mut().await }, if limit.is_some() => {
                shared.stats.request_timed_out();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client did not read its replies within the request timeout",
                ));
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
        idle.touch();
        if written < out.len() && limit.is_none() {
            limit = Some(Box::pin(tokio::time::sleep(shared.limits.request_timeout)));
        }
    }
    out.as_mut_slice().zeroize();
    out.clear();
    if out.capacity() > KEEP_OUT {
        // Every byte ever written to it was zeroed after its write, and growth zeroes the
        // buffer it leaves (`cmd::reserve`): dropping it leaves nothing behind.
        **out = Vec::with_capacity(INITIAL_READ);
    }
    Ok(())
}
