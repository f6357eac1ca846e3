//! Server-wide counters for `stats`. No secrets: counts, times and slot numbers only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counters shared by every connection of one server.
///
/// Connections count in private counters and add them here once per batch of requests,
/// so the hot path does not bounce these cache lines between threads on every `get`.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    curr_connections: AtomicU64,
    total_connections: AtomicU64,
    rejected_connections: AtomicU64,
    refused_forbidden: AtomicU64,
    refused_peer_limit: AtomicU64,
    request_timeouts: AtomicU64,
    cmd_get: AtomicU64,
    get_hits: AtomicU64,
    get_misses: AtomicU64,
    refused_writes: AtomicU64,
    client_errors: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Seconds since the server started.
    pub uptime: u64,
    /// Open connections (rejected ones not included).
    pub curr_connections: u64,
    /// Connections accepted and served since the start.
    pub total_connections: u64,
    /// Connections refused because `max_connections` were open.
    pub rejected_connections: u64,
    /// Unix socket connections refused because the peer is neither root, stek's uid nor in the
    /// allowed group.
    pub refused_forbidden: u64,
    /// Connections refused because their peer (uid, or IP address for TCP) had
    /// `max_connections_per_peer` open.
    pub refused_peer_limit: u64,
    /// Connections closed because a request was not complete within `request_timeout` of its
    /// first byte, or its reply not read within it.
    pub request_timeouts: u64,
    /// Keys requested by `get`/`gets` (memcached counts keys, not commands).
    pub cmd_get: u64,
    /// Requested keys that were served.
    pub get_hits: u64,
    /// Requested keys that are not served.
    pub get_misses: u64,
    /// Commands refused because they would change data.
    pub refused_writes: u64,
    /// Requests answered with `ERROR` or `CLIENT_ERROR`.
    pub client_errors: u64,
}

impl Stats {
    /// Fresh counters; uptime starts now.
    pub fn new() -> Stats {
        Stats {
            started: Instant::now(),
            curr_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            refused_forbidden: AtomicU64::new(0),
            refused_peer_limit: AtomicU64::new(0),
            request_timeouts: AtomicU64::new(0),
            cmd_get: AtomicU64::new(0),
            get_hits: AtomicU64::new(0),
            get_misses: AtomicU64::new(0),
            refused_writes: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
        }
    }

    /// The counters now. Relaxed loads: each counter is exact, the set is not a transaction.
    pub fn snapshot(&self) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            uptime: self.started.elapsed().as_secs(),
            curr_connections: load(&self.curr_connections),
            total_connections: load(&self.total_connections),
            rejected_connections: load(&self.rejected_connections),
            refused_forbidden: load(&self.refused_forbidden),
            refused_peer_limit: load(&self.refused_peer_limit),
            request_timeouts: load(&self.request_timeouts),
            cmd_get: load(&self.cmd_get),
            get_hits: load(&self.get_hits),
            get_misses: load(&self.get_misses),
            refused_writes: load(&self.refused_writes),
            client_errors: load(&self.client_errors),
        }
    }

    /// Open connections.
    pub(crate) fn open_connections(&self) -> u64 {
        self.curr_connections.load(Ordering::Relaxed)
    }

    /// Counts an accepted connection; the guard counts it closed when dropped (also when its
    /// task is aborted at shutdown).
    pub(crate) fn connection_opened(self: &std::sync::Arc<Self>) -> ConnectionGuard {
        self.curr_connections.fetch_add(1, Ordering::Relaxed);
        self.total_connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    /// Counts a refused connection.
    pub(crate) fn connection_refused(&self, why: Refusal) {
        let c = match why {
            Refusal::MaxConnections => &self.rejected_connections,
            Refusal::Forbidden => &self.refused_forbidden,
            Refusal::PeerLimit => &self.refused_peer_limit,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed for a request or reply past `request_timeout`.
    pub(crate) fn request_timed_out(&self) {
        self.request_timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// `max_connections` were open.
    MaxConnections,
    /// The unix socket peer is not allowed (see `Access`).
    Forbidden,
    /// The peer had `max_connections_per_peer` open.
    PeerLimit,
}

impl Refusal {
    /// Every reason, for metrics that show each one even at zero.
    pub const ALL: [Refusal; 3] = [
        Refusal::Forbidden,
        Refusal::PeerLimit,
        Refusal::MaxConnections,
    ];

    /// The reason's label in metrics (`stek_memcached_refused_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::Forbidden => "forbidden",
            Refusal::PeerLimit => "peer_limit",
        }
    }
}

impl Snapshot {
    /// Connections refused for `why`.
    pub fn refused(&self, why: Refusal) -> u64 {
        match why {
            Refusal::MaxConnections => self.rejected_connections,
            Refusal::Forbidden => self.refused_forbidden,
            Refusal::PeerLimit => self.refused_peer_limit,
        }
    }
}

/// Keeps `curr_connections` right: decrements it on drop.
#[derive(Debug)]
pub(crate) struct ConnectionGuard(std::sync::Arc<Stats>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.curr_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection's counts since its last [`Counters::flush`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) cmd_get: u64,
    pub(crate) get_hits: u64,
    pub(crate) get_misses: u64,
    pub(crate) refused_writes: u64,
    pub(crate) client_errors: u64,
}

impl Counters {
    /// Adds the counts to `stats` and resets them.
    pub(crate) fn flush(&mut self, stats: &Stats) {
        let add = |c: &AtomicU64, n: u64| {
            if n != 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&stats.cmd_get, self.cmd_get);
        add(&stats.get_hits, self.get_hits);
        add(&stats.get_misses, self.get_misses);
        add(&stats.refused_writes, self.refused_writes);
        add(&stats.client_errors, self.client_errors);
        *self = Counters::default();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn guards_and_flushes_count() {
        let stats = Arc::new(Stats::new());
        let a = stats.connection_opened();
        let b = stats.connection_opened();
        stats.connection_refused(Refusal::MaxConnections);
        stats.connection_refused(Refusal::Forbidden);
        stats.connection_refused(Refusal::Forbidden);
        stats.connection_refused(Refusal::PeerLimit);
        stats.request_timed_out();
        drop(a);
        let mut c = Counters {
            cmd_get: 3,
            get_hits: 2,
            get_misses: 1,
            refused_writes: 4,
            client_errors: 5,
        };
        c.flush(&stats);
        assert_eq!(c, Counters::default());
        c.cmd_get = 1;
        c.flush(&stats);
        let s = stats.snapshot();
        assert_eq!(
            (
                s.curr_connections,
                s.total_connections,
                s.rejected_connections
            ),
            (1, 2, 1)
        );
        assert_eq!((s.cmd_get, s.get_hits, s.get_misses), (4, 2, 1));
        assert_eq!((s.refused_writes, s.client_errors), (4, 5));
        assert_eq!(
            Refusal::ALL.map(|r| s.refused(r)),
            [2, 1, 1],
            "forbidden, peer_limit, max_connections"
        );
        assert_eq!(s.request_timeouts, 1);
        drop(b);
        assert_eq!(stats.open_connections(), 0);
    }
}
