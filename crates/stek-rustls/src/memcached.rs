//! Feeding a [`Ticketer`] from a running stek agent's memcached interface.
//!
//! A stek agent (`stek up`, `stek agent`) serves its ring over a read-only memcached-protocol
//! server, on a unix socket by default. [`fetch`] asks it for two keys in one request, so both
//! come from the same ring:
//!
//! - `ticket-ring/rustls-48`: the ring's keys in the rustls-48 layout (name16 aead32), 48 bytes
//!   each, encrypting key first;
//! - `ticket-schedule`: `period=<s> lifetime=<s> slot=<n> start=<unix s> encrypting=<name hex>
//!   keys=<n> shared=<n> ahead=<n>` (no secrets), which gives the lifetime and tells when the
//!   ring goes out of date.
//!
//! [`Poller`] does that on a plain thread: right after every slot boundary, every `interval`
//! otherwise, and with backoff while the agent does not answer. It installs a ring only when it
//! differs from the current one. If the agent stays unreachable (or stops rotating) for longer
//! than a grace period past a slot boundary, the poller removes the keys: the ring it holds then
//! contains a key every host must already have erased, and forward secrecy comes first
//! (docs/DESIGN.md §5). rustls falls back to its per-process session cache until the agent is back.
//!
//! Only std is used: no async runtime, no memcached client crate. Poll the agent of your own
//! host: the grace logic compares the agent's slot with this host's clock.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stek_core::ticket::{TicketKeys, TicketKeysError, RUSTLS48_LEN};
use stek_core::{Backoff, KeyName};

use crate::Ticketer;

/// The memcached key of the ring in the rustls-48 layout.
pub const RING_KEY: &str = "ticket-ring/rustls-48";
/// The memcached key of the schedule summary.
pub const SCHEDULE_KEY: &str = "ticket-schedule";
/// The largest ring value accepted: 1 MiB, 21845 keys (a window of 18 h in 3-second slots).
pub const MAX_RING_LEN: usize = 1 << 20;
/// The longest reply line accepted (a `VALUE` header or an error line).
const MAX_LINE: usize = 512;
/// The largest `ticket-schedule` value accepted.
const MAX_SCHEDULE_LEN: usize = 1024;

/// Where an agent's memcached interface listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket path (stek's default: `/run/stek/memcached.sock`).
    #[cfg(unix)]
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl FromStr for Endpoint {
    type Err = std::convert::Infallible;

    /// A string containing `/` is a unix socket path (as stek's own `--memcached` flag reads
    /// it); anything else is `host:port`.
    fn from_str(s: &str) -> Result<Endpoint, Self::Err> {
        #[cfg(unix)]
        if s.contains('/') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        Ok(Endpoint::Tcp(s.to_owned()))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(unix)]
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => f.write_str(a),
        }
    }
}

/// Why a fetch failed. `Display` says what failed; the I/O or key error is the
/// [`source`](std::error::Error::source).
#[derive(Debug)]
#[non_exhaustive]
pub enum PollError {
    /// Connecting, writing or reading failed or timed out.
    Io(io::Error),
    /// The reply is not what a stek agent sends (the text says what was wrong).
    Protocol(String),
    /// The agent does not serve this key (yet): it has no ring, or predates rustls-48.
    NotServed(&'static str),
    /// The schedule summary does not describe the ring that came with it.
    Inconsistent(&'static str),
    /// The ring's keys could not be used.
    Keys(TicketKeysError),
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollError::Io(_) => f.write_str("talking to the agent failed"),
            PollError::Protocol(why) => write!(f, "unexpected reply from the agent: {why}"),
            PollError::NotServed(key) => write!(
                f,
                "the agent serves no {key} (no ring yet, or an agent without rustls support)"
            ),
            PollError::Inconsistent(what) => {
                write!(f, "the agent's schedule and ring disagree on {what}")
            }
            PollError::Keys(_) => f.write_str("the agent's ring is unusable"),
        }
    }
}

impl std::error::Error for PollError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PollError::Io(e) => Some(e),
            PollError::Keys(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for PollError {
    fn from(e: io::Error) -> Self {
        PollError::Io(e)
    }
}

/// One consistent read of an agent: its ring's ticket keys and where its schedule stands.
#[derive(Debug)]
pub struct Snapshot {
    /// The ring's ticket keys, the encrypting one first.
    pub keys: TicketKeys,
    /// The period `P`, in seconds.
    pub period: u64,
    /// The agent's current slot.
    pub slot: u64,
    /// When that slot started (Unix seconds).
    pub start: u64,
}

impl Snapshot {
    /// When the ring goes out of date: the start of the slot after [`Snapshot::slot`].
    pub fn next_rotation(&self) -> Duration {
        Duration::from_secs(self.start.saturating_add(self.period))
    }
}

/// Reads the ring and schedule of the agent at `endpoint` in one request. `timeout` bounds
/// connecting, and each read and write.
pub fn fetch(endpoint: &Endpoint, timeout: Duration) -> Result<Snapshot, PollError> {
    match endpoint {
        #[cfg(unix)]
        Endpoint::Unix(path) => {
            let s = UnixStream::connect(path)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            query(s)
        }
        Endpoint::Tcp(addr) => {
            let mut last = None;
            for a in std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())? {
                match TcpStream::connect_timeout(&a, timeout) {
                    Ok(s) => {
                        s.set_read_timeout(Some(timeout))?;
                        s.set_write_timeout(Some(timeout))?;
                        s.set_nodelay(true)?;
                        return query(s);
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(PollError::Io(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing")
            })))
        }
    }
}

/// Sends the request on `stream` and parses the reply.
fn query<S: Read + Write>(mut stream: S) -> Result<Snapshot, PollError> {
    stream.write_all(format!("get {RING_KEY} {SCHEDULE_KEY}\r\n").as_bytes())?;
    stream.flush()?;
    let mut reader = BufReader::new(stream);
    let mut ring: Option<Vec<u8>> = None;
    let mut schedule: Option<Vec<u8>> = None;
    loop {
        let line = read_line(&mut reader)?;
        if line == "END" {
            break;
        }
        let Some(header) = line.strip_prefix("VALUE ") else {
            return Err(PollError::Protocol(format!("{:?}", truncate(&line))));
        };
        let mut words = header.split(' ');
        let (Some(key), Some(_flags), Some(len)) = (words.next(), words.next(), words.next())
        else {
            return Err(PollError::Protocol(format!(
                "short VALUE line {:?}",
                truncate(&line)
            )));
        };
        let (slot, cap) = match key {
            RING_KEY => (&mut ring, MAX_RING_LEN),
            SCHEDULE_KEY => (&mut schedule, MAX_SCHEDULE_LEN),
            _ => {
                return Err(PollError::Protocol(format!(
                    "unasked key {:?}",
                    truncate(key)
                )))
            }
        };
        let len: usize = len
            .parse()
            .map_err(|_| PollError::Protocol(format!("bad length {:?}", truncate(len))))?;
        if len > cap {
            return Err(PollError::Protocol(format!(
                "{key} of {len} bytes exceeds {cap}"
            )));
        }
        if slot.is_some() {
            return Err(PollError::Protocol(format!("{key} sent twice")));
        }
        // The value, then CRLF.
        let mut value = vec![0u8; len + 2];
        reader.read_exact(&mut value)?;
        if value.get(len..) != Some(&b"\r\n"[..]) {
            return Err(PollError::Protocol(format!(
                "{key}: data block not ended by CRLF"
            )));
        }
        value.truncate(len);
        *slot = Some(value);
    }
    let schedule = schedule.ok_or(PollError::NotServed(SCHEDULE_KEY))?;
    let ring = ring.ok_or(PollError::NotServed(RING_KEY))?;
    let summary = parse_schedule(&schedule)?;
    if ring.len() != summary.keys.saturating_mul(RUSTLS48_LEN) {
        return Err(PollError::Inconsistent("the number of keys"));
    }
    let keys = TicketKeys::from_rustls48_ring(&ring, summary.lifetime).map_err(PollError::Keys)?;
    if keys.encrypting() != summary.encrypting {
        return Err(PollError::Inconsistent("the encrypting key"));
    }
    Ok(Snapshot {
        keys,
        period: summary.period,
        slot: summary.slot,
        start: summary.start,
    })
}

/// One reply line without its CRLF, at most [`MAX_LINE`] bytes.
fn read_line<R: BufRead>(reader: &mut R) -> Result<String, PollError> {
    let mut buf = Vec::new();
    let limit = u64::try_from(MAX_LINE + 2).unwrap_or(u64::MAX);
    let n = reader.by_ref().take(limit).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Err(PollError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the agent closed the connection mid-reply",
        )));
    }
    let Some(line) = buf.strip_suffix(b"\r\n") else {
        return Err(PollError::Protocol(
            "a reply line without CRLF, or too long".into(),
        ));
    };
    String::from_utf8(line.to_vec())
        .map_err(|_| PollError::Protocol("a reply line that is not UTF-8".into()))
}

fn truncate(s: &str) -> &str {
    let end = s.char_indices().nth(64).map_or(s.len(), |(i, _)| i);
    s.get(..end).unwrap_or("")
}

struct Summary {
    period: u64,
    lifetime: u32,
    slot: u64,
    start: u64,
    encrypting: KeyName,
    keys: usize,
}

/// Parses `period=<s> lifetime=<s> slot=<n> start=<unix s> encrypting=<hex> keys=<n> ...`.
/// Unknown fields are ignored, so agents may add some.
fn parse_schedule(value: &[u8]) -> Result<Summary, PollError> {
    let text = std::str::from_utf8(value)
        .map_err(|_| PollError::Protocol("ticket-schedule is not UTF-8".into()))?;
    let mut period = None;
    let mut lifetime = None;
    let mut slot = None;
    let mut start = None;
    let mut encrypting = None;
    let mut keys = None;
    for field in text.split(' ') {
        let Some((name, v)) = field.split_once('=') else {
            continue;
        };
        let bad = || PollError::Protocol(format!("ticket-schedule: bad {name}"));
        match name {
            "period" => period = Some(v.parse::<u64>().map_err(|_| bad())?),
            "lifetime" => lifetime = Some(v.parse::<u32>().map_err(|_| bad())?),
            "slot" => slot = Some(v.parse::<u64>().map_err(|_| bad())?),
            "start" => start = Some(v.parse::<u64>().map_err(|_| bad())?),
            "encrypting" => encrypting = Some(KeyName::from_hex(v).ok_or_else(bad)?),
            "keys" => keys = Some(v.parse::<usize>().map_err(|_| bad())?),
            _ => {}
        }
    }
    let missing = |f: &str| PollError::Protocol(format!("ticket-schedule without {f}"));
    let period = period.filter(|p| *p > 0).ok_or_else(|| missing("period"))?;
    Ok(Summary {
        period,
        lifetime: lifetime.ok_or_else(|| missing("lifetime"))?,
        slot: slot.ok_or_else(|| missing("slot"))?,
        start: start.ok_or_else(|| missing("start"))?,
        encrypting: encrypting.ok_or_else(|| missing("encrypting"))?,
        keys: keys.ok_or_else(|| missing("keys"))?,
    })
}

/// A source of the current time since the Unix epoch (injectable for tests).
pub type Clock = Arc<dyn Fn() -> Duration + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    })
}

/// How a [`Poller`] polls.
#[derive(Clone)]
pub struct PollOptions {
    /// Poll at least this often. `None`: a quarter period, between 1 s and 30 s (the agent's own
    /// default).
    pub interval: Option<Duration>,
    /// How long the ring may stay out of date after a slot boundary before the keys are
    /// removed. `None`: a quarter period, between 1 s and 30 s.
    pub grace: Option<Duration>,
    /// Bounds connecting, and each read and write.
    pub timeout: Duration,
    /// The clock (the system clock unless a test injects one).
    pub clock: Clock,
}

impl Default for PollOptions {
    fn default() -> Self {
        PollOptions {
            interval: None,
            grace: None,
            timeout: Duration::from_secs(2),
            clock: system_clock(),
        }
    }
}

impl fmt::Debug for PollOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollOptions")
            .field("interval", &self.interval)
            .field("grace", &self.grace)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What a [`Poller`] has done so far (no secrets).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollStatus {
    /// Fetches attempted.
    pub polls: u64,
    /// Fetches that failed.
    pub failures: u64,
    /// Rings installed (changes only).
    pub installs: u64,
    /// When the last fetch succeeded (time since the Unix epoch, by the poller's clock).
    pub last_success: Option<Duration>,
    /// Why the last fetch failed, with its causes, if the last fetch failed.
    pub last_error: Option<String>,
    /// The agent's slot at the last successful fetch.
    pub slot: Option<u64>,
    /// The key that seals now, if keys are installed.
    pub encrypting: Option<KeyName>,
    /// Whether the keys were removed because the ring went out of date.
    pub expired: bool,
}

/// Polls an agent's memcached interface on a thread and installs its rings into a
/// [`Ticketer`]. Dropping it (or [`Poller::stop`]) ends the thread; the installed keys stay.
pub struct Poller {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    status: Arc<Mutex<PollStatus>>,
    endpoint: Endpoint,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller")
            .field("endpoint", &self.endpoint)
            .field("status", &self.status())
            .finish()
    }
}

impl Poller {
    /// Starts polling `endpoint` for `ticketer`. The first fetch happens at once, on the
    /// poller's thread; until it succeeds the ticketer keeps whatever keys it had.
    pub fn spawn(
        endpoint: Endpoint,
        ticketer: Ticketer,
        options: PollOptions,
    ) -> io::Result<Poller> {
        let (stop, stopped) = mpsc::channel();
        let status = Arc::new(Mutex::new(PollStatus::default()));
        let shared = status.clone();
        let ep = endpoint.clone();
        let thread = std::thread::Builder::new()
            .name("stek-rustls-poller".into())
            .spawn(move || run(&ep, &ticketer, &options, &shared, &stopped))?;
        Ok(Poller {
            stop: Some(stop),
            thread: Some(thread),
            status,
            endpoint,
        })
    }

    /// What the poller has done so far.
    pub fn status(&self) -> PollStatus {
        lock(&self.status).clone()
    }

    /// Stops polling and waits for the thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Dropping the sender wakes the thread at once.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock(status: &Mutex<PollStatus>) -> std::sync::MutexGuard<'_, PollStatus> {
    // The status is plain counters: a panic mid-update leaves nothing inconsistent that matters.
    status.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a quarter period is, clamped to 1..=30 s (the default interval and grace).
fn quarter_period(period: u64) -> Duration {
    (Duration::from_secs(period) / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// What the poller does after a fetch, given what it holds.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// Remove the installed keys: the ring is out of date past the grace period.
    expire: bool,
    /// Sleep this long before the next fetch.
    nap: Duration,
}

/// Just after a boundary the agent may not have rotated yet: poll this long after it.
const AFTER_BOUNDARY: Duration = Duration::from_millis(250);
/// The first retry delay after a failure; doubles up to the interval.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// The time between polls while fetches succeed: the configured interval, else a quarter of the
/// agent's period (once known), else 1 s.
fn interval(period: Option<u64>, options: &PollOptions) -> Duration {
    options
        .interval
        .or(period.map(quarter_period))
        .unwrap_or(Duration::from_secs(1))
}

/// The backoff of retries after failed fetches: from [`FIRST_RETRY`], doubling up to the
/// interval. Not jittered: each host polls its own agent, so a fleet does not retry in step
/// against one server.
fn retry_backoff(period: Option<u64>, options: &PollOptions) -> Backoff {
    Backoff::new(FIRST_RETRY, interval(period, options))
}

/// Decides what to do at `now`, holding a ring whose slot ends at `ring_ends` (if any). `retry`
/// is the backoff delay after a failed fetch (from [`retry_backoff`]), `None` after a successful
/// one.
fn plan(
    ring_ends: Option<Duration>,
    period: Option<u64>,
    now: Duration,
    retry: Option<Duration>,
    options: &PollOptions,
) -> Plan {
    let interval = interval(period, options);
    let grace = options
        .grace
        .or(period.map(quarter_period))
        .unwrap_or(Duration::from_secs(1));
    let expire = ring_ends.is_some_and(|end| now > end.saturating_add(grace));
    // The backoff is capped at the interval already, unless the interval is below FIRST_RETRY.
    let mut nap = retry.map_or(interval, |r| r.min(interval));
    if let Some(end) = ring_ends {
        let until = end.saturating_sub(now);
        if until > Duration::ZERO {
            // Be there right after the boundary.
            nap = nap.min(until + AFTER_BOUNDARY);
        } else if !expire {
            // Past the boundary with an old ring: come back soon, within the grace period.
            nap = nap.min(FIRST_RETRY.max(grace / 4));
        }
    }
    Plan { expire, nap }
}

/// An error and its causes on one line, joined by `": "`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

fn run(
    endpoint: &Endpoint,
    ticketer: &Ticketer,
    options: &PollOptions,
    status: &Mutex<PollStatus>,
    stopped: &mpsc::Receiver<()>,
) {
    let mut ring_ends: Option<Duration> = None;
    let mut period: Option<u64> = None;
    let mut backoff = retry_backoff(period, options);
    loop {
        let result = fetch(endpoint, options.timeout);
        let now = (options.clock)();
        let mut st = lock(status);
        st.polls += 1;
        let fetched = match result {
            Ok(snapshot) => {
                st.last_success = Some(now);
                st.last_error = None;
                st.slot = Some(snapshot.slot);
                ring_ends = Some(snapshot.next_rotation());
                period = Some(snapshot.period);
                // Failures start over from the first retry, capped at the (maybe new) interval.
                backoff = retry_backoff(period, options);
                Some(snapshot.keys)
            }
            Err(e) => {
                st.failures += 1;
                st.last_error = Some(chain(&e));
                None
            }
        };
        let retry = fetched.is_none().then(|| backoff.next());
        let p = plan(ring_ends, period, now, retry, options);
        if p.expire {
            // Out of date past the grace period (including a ring just fetched from an agent
            // that stopped rotating): hold no key any more.
            if ticketer.current().is_some() {
                ticketer.clear();
            }
        } else if let Some(keys) = fetched {
            let same = ticketer.current().is_some_and(|cur| {
                cur.lifetime() == keys.lifetime() && cur.names().eq(keys.names())
            });
            if !same {
                ticketer.install(keys);
                st.installs += 1;
            }
        }
        st.expired = p.expire;
        st.encrypting = ticketer.current().map(|k| k.encrypting());
        drop(st);
        match stopped.recv_timeout(p.nap) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use stek_core::Format;
    use stek_core::SlotKey;

    use super::*;

    /// A stream whose reads come from `reply` and whose writes are kept.
    struct Fake {
        reply: Cursor<Vec<u8>>,
        sent: Vec<u8>,
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reply.read(buf)
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sent.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn fake(reply: Vec<u8>) -> Fake {
        Fake {
            reply: Cursor::new(reply),
            sent: Vec::new(),
        }
    }

    fn keys(n: usize) -> (Vec<SlotKey>, Vec<u8>) {
        let ks: Vec<SlotKey> = (0..n)
            .map(|i| SlotKey::generate(stek_core::Slot(i as u64)).unwrap())
            .collect();
        let bytes = ks
            .iter()
            .flat_map(|k| Format::Rustls48.encode(k).to_vec())
            .collect();
        (ks, bytes)
    }

    fn reply(ring: &[u8], schedule: &str) -> Vec<u8> {
        let mut r = format!("VALUE {RING_KEY} 0 {} 77\r\n", ring.len()).into_bytes();
        r.extend_from_slice(ring);
        r.extend_from_slice(
            format!(
                "\r\nVALUE {SCHEDULE_KEY} 0 {}\r\n{schedule}\r\nEND\r\n",
                schedule.len()
            )
            .as_bytes(),
        );
        r
    }

    fn schedule_for(first: &SlotKey, n: usize) -> String {
        format!(
            "period=4 lifetime=12 slot=100 start=400 encrypting={} keys={n} shared={n}",
            first.name()
        )
    }

    #[test]
    fn parses_a_good_reply() {
        let (ks, ring) = keys(5);
        let mut f = fake(reply(&ring, &schedule_for(&ks[0], 5)));
        let snap = query(&mut f).unwrap();
        assert_eq!(f.sent, b"get ticket-ring/rustls-48 ticket-schedule\r\n");
        assert_eq!(snap.keys.len(), 5);
        assert_eq!(snap.keys.lifetime(), 12);
        assert_eq!(snap.period, 4);
        assert_eq!(snap.slot, 100);
        assert_eq!(snap.next_rotation(), Duration::from_secs(404));
        assert!(snap.keys.names().eq(ks.iter().map(|k| k.name())));
        // Values in the other order and unknown schedule fields are fine.
        let sched = format!("{} future=1", schedule_for(&ks[0], 5));
        let mut r = format!("VALUE {SCHEDULE_KEY} 0 {}\r\n{sched}\r\n", sched.len()).into_bytes();
        r.extend_from_slice(format!("VALUE {RING_KEY} 0 {}\r\n", ring.len()).as_bytes());
        r.extend_from_slice(&ring);
        r.extend_from_slice(b"\r\nEND\r\n");
        assert!(query(fake(r)).is_ok());
    }

    #[test]
    fn refuses_bad_replies() {
        let (ks, ring) = keys(3);
        let good = schedule_for(&ks[0], 3);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"END\r\n".to_vec(), "serves no ticket-schedule"),
            (b"SERVER_ERROR busy\r\n".to_vec(), "unexpected reply"),
            (b"ERROR\r\n".to_vec(), "unexpected reply"),
            (Vec::new(), "closed the connection"),
            (reply(&ring, &schedule_for(&ks[1], 3)), "encrypting key"),
            (reply(&ring, &schedule_for(&ks[0], 4)), "number of keys"),
            (reply(&ring[..100], &good), "number of keys"),
            (
                reply(&ring, &good.replace("period=4", "period=0")),
                "without period",
            ),
            (
                reply(&ring, &good.replace("lifetime=12", "lifetime=x")),
                "bad lifetime",
            ),
            (
                reply(&ring, &good.replace("lifetime=12", "lifetime=0")),
                "lifetime 0s",
            ),
            (reply(&ring, &good.replace(" slot=100", "")), "without slot"),
            (
                format!("VALUE {RING_KEY} 0 {}\r\n", MAX_RING_LEN + 1).into_bytes(),
                "exceeds",
            ),
            (format!("VALUE {RING_KEY} 0 2\r\nabXY").into_bytes(), "CRLF"),
            (b"VALUE other 0 2\r\nab\r\nEND\r\n".to_vec(), "unasked key"),
            (
                format!("VALUE {RING_KEY} 0\r\n").into_bytes(),
                "short VALUE",
            ),
            (
                format!("VALUE {RING_KEY} 0 -1\r\n").into_bytes(),
                "bad length",
            ),
            (vec![b'x'; 2000], "too long"),
            (b"END\n".to_vec(), "without CRLF"),
            (
                format!("VALUE {RING_KEY} 0 96\r\n").into_bytes(),
                "failed to fill",
            ),
        ];
        for (bytes, want) in cases {
            let e = chain(&query(fake(bytes.clone())).unwrap_err());
            assert!(
                e.contains(want),
                "{want:?} not in {e:?} for {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
        // A value sent twice.
        let mut twice = reply(&ring, &good);
        let end = twice.len() - 5;
        twice.truncate(end);
        twice.extend_from_slice(
            format!("VALUE {SCHEDULE_KEY} 0 {}\r\n{good}\r\nEND\r\n", good.len()).as_bytes(),
        );
        assert!(query(fake(twice))
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    fn opts(interval: u64, grace: u64) -> PollOptions {
        PollOptions {
            interval: Some(Duration::from_secs(interval)),
            grace: Some(Duration::from_secs(grace)),
            ..PollOptions::default()
        }
    }

    #[test]
    fn plans_polls_around_boundaries() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let o = opts(10, 2);
        // Mid-slot: the interval, or just past the boundary if that comes first.
        assert_eq!(
            plan(Some(s(404)), Some(4), s(401), None, &o),
            Plan {
                expire: false,
                nap: s(3) + ms(250)
            }
        );
        assert_eq!(
            plan(Some(s(1000)), Some(3600), s(401), None, &o),
            Plan {
                expire: false,
                nap: s(10)
            }
        );
        // Past the boundary with the old ring, within grace: soon.
        assert_eq!(
            plan(Some(s(404)), Some(4), s(405), None, &o),
            Plan {
                expire: false,
                nap: ms(500)
            }
        );
        assert_eq!(
            plan(Some(s(404)), Some(4), s(405), Some(FIRST_RETRY), &o),
            Plan {
                expire: false,
                nap: ms(250)
            }
        );
        // Past the grace: expire.
        assert!(plan(Some(s(404)), Some(4), s(406) + ms(1), Some(s(1)), &o).expire);
        assert!(!plan(Some(s(404)), Some(4), s(406), Some(s(1)), &o).expire);
        // Failures back off exponentially up to the interval.
        let mut backoff = retry_backoff(None, &o);
        let naps: Vec<Duration> = (1..8)
            .map(|_| plan(None, None, s(0), Some(backoff.next()), &o).nap)
            .collect();
        assert_eq!(naps, vec![ms(250), ms(500), s(1), s(2), s(4), s(8), s(10)]);
        // An interval below the first retry caps the retries too.
        let fast = PollOptions {
            interval: Some(ms(100)),
            ..opts(10, 2)
        };
        let mut backoff = retry_backoff(None, &fast);
        for _ in 0..3 {
            assert_eq!(
                plan(None, None, s(0), Some(backoff.next()), &fast).nap,
                ms(100)
            );
        }
        // Defaults: a quarter period clamped to 1..=30 s, 1 s until the period is known; the
        // retries follow it.
        let d = PollOptions::default();
        assert_eq!(retry_backoff(None, &d).max(), s(1));
        assert_eq!(retry_backoff(Some(3600), &d).max(), s(30));
        assert_eq!(plan(Some(s(10_000)), Some(3600), s(0), None, &d).nap, s(30));
        assert_eq!(plan(Some(s(10_000)), Some(8), s(0), None, &d).nap, s(2));
        assert!(plan(Some(s(3600)), Some(3600), s(3631), None, &d).expire);
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "/run/stek/memcached.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix(PathBuf::from("/run/stek/memcached.sock"))
        );
        let tcp = "127.0.0.1:11211".parse::<Endpoint>().unwrap();
        assert_eq!(tcp, Endpoint::Tcp("127.0.0.1:11211".into()));
        assert_eq!(tcp.to_string(), "127.0.0.1:11211");
    }

    #[test]
    fn unreachable_agent_is_an_io_error() {
        let dir = std::env::temp_dir().join(format!("stek-rustls-none-{}", std::process::id()));
        let e = fetch(
            &Endpoint::Unix(dir.join("nothing.sock")),
            Duration::from_millis(100),
        );
        assert!(matches!(e, Err(PollError::Io(_))), "{e:?}");
        let e = e.unwrap_err();
        assert_eq!(e.to_string(), "talking to the agent failed");
        let cause = std::error::Error::source(&e).unwrap();
        assert!(cause.is::<io::Error>());
        assert_eq!(chain(&e), format!("talking to the agent failed: {cause}"));
        let keys = PollError::Keys(TicketKeysError::Empty);
        assert!(std::error::Error::source(&keys)
            .unwrap()
            .is::<TicketKeysError>());
    }
}
