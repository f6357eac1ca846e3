//! Sinks hand a ring to TLS servers. Every way a key leaves the agent is one [`Sink`]:
//!
//! | sink | module | what it does with a ring |
//! |---|---|---|
//! | `nginx` | [`files`] | `DIR/nginx/tickets.conf` and one 80-byte (or 48-byte) file per key |
//! | `apache` | [`files`] | `DIR/apache/ticket.key`, the encrypting key |
//! | `h2o` | [`h2o`] | `DIR/h2o/tickets.yaml`, every key with the dates h2o encrypts by |
//! | `lighttpd` | [`lighttpd`] | `DIR/lighttpd/stek.key`, the key lighttpd should load next |
//! | `haproxy` | [`haproxy`] | `DIR/haproxy/tickets.keys`, then HAProxy's live rings over its runtime API |
//! | `memcached` | [`table`] | the table the memcached-protocol server answers from |
//! | `feed` | [`feed`] | in-process consumers (the rustls ticketer of `stek-rustls`) |
//! | `on-change` | [`onchange`] | the operator's reload command, after the files changed |
//!
//! The agent calls [`Sink::deliver`] with every ring that differs from the last one, in the
//! order the sinks were given (files first, the reload command last, so that it loads the new
//! files). A ring whose only change is a key held ahead of the window ([`Ring::ahead`]: the slot
//! after next, fetched early) goes only to the sinks that serve such keys
//! ([`Sink::serves_ahead`]: the memcached table); file sinks never see that change, so no file
//! is rewritten and no server reloaded for it, and they write the ring's entries only. A sink
//! that fails keeps its previous output in place (files are written atomically) and says why;
//! the agent logs and counts the failure and carries on with the other sinks.
//! Work that goes on after `deliver` returns (HAProxy's sockets, the reload command) reports
//! through [`Sink::health`]. Sinks never touch metrics or the status: the agent does. Sinks
//! whose output depends on the time as well as on the ring (h2o's file carries the agent's
//! clock as its modification time, lighttpd's changes within a slot) write in [`Sink::tick`],
//! which the agent calls right after every delivery and at least once a second.

pub mod feed;
pub mod files;
pub mod h2o;
pub mod haproxy;
pub mod haproxy_runtime;
pub mod lighttpd;
pub mod onchange;
pub mod table;

use std::path::{Path, PathBuf};
use std::time::Duration;

use stek_core::{Backoff, Ring};

use crate::status::HaproxySocketStatus;

pub use feed::RingFeed;
pub use files::{ApacheSink, HaproxyKeys, NginxKeySize, NginxSink};
pub use h2o::H2oSink;
pub use haproxy::HaproxySink;
pub use haproxy_runtime::HaproxyRuntime;
pub use lighttpd::LighttpdSink;
pub use onchange::OnChange;
pub use table::TableSink;

/// One way of handing rings to TLS servers. See the module documentation.
pub trait Sink: Send {
    /// The sink's name in logs, metrics (`sink="..."`) and the status.
    fn name(&self) -> &'static str;

    /// Hands `ring` over. Called once per changed ring, never concurrently. An error means
    /// this sink's previous output is still in place.
    fn deliver(&mut self, ring: &Ring) -> std::io::Result<Delivered>;

    /// Whether the sink hands out the keys held ahead of the window ([`Ring::ahead`]), and so
    /// wants a ring whose only change is one of those. Default: no. A sink that installs keys
    /// in a TLS server (files, a server's runtime API, an in-process ticketer) must keep the
    /// default and use [`Ring::entries`] only: a key installed before its slot is next would
    /// sit in the server a period longer than the schedule allows.
    fn serves_ahead(&self) -> bool {
        false
    }

    /// The state of work the sink does on its own time after `deliver` returned. Sinks that do
    /// all their work in `deliver` keep the default: healthy, nothing to add.
    fn health(&self) -> Health {
        Health::default()
    }

    /// Called by the agent right after every delivery and at least once a second, with the
    /// agent's clock, for sinks whose output depends on the time and not only on the ring: they
    /// take the ring in `deliver` and write here. `Ok(None)`: nothing written. An error has the
    /// meaning of `deliver`'s; a sink that fails here waits before it tries again
    /// ([`RetryGate`]), so that a broken directory is not reported every second. Sinks that
    /// write in `deliver` keep the default: nothing to do.
    fn tick(&mut self, _now: Duration) -> std::io::Result<Option<Delivered>> {
        Ok(None)
    }
}

/// When a sink that writes at the agent's ticks tries again after a failed write: after 1 s,
/// doubling up to a minute, back to at once after a success.
#[derive(Debug, Clone)]
pub(crate) struct RetryGate {
    backoff: Backoff,
    not_before: Option<Duration>,
}

impl RetryGate {
    pub(crate) fn new() -> Self {
        RetryGate {
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            not_before: None,
        }
    }

    /// Whether a write may be tried at `now`.
    pub(crate) fn ready(&self, now: Duration) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// Records the outcome of a write tried at `now`.
    pub(crate) fn record(&mut self, now: Duration, ok: bool) {
        if ok {
            self.backoff.reset();
            self.not_before = None;
        } else {
            self.not_before = Some(now.saturating_add(self.backoff.next()));
        }
    }
}

/// What one delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// These files were written (atomically).
    Files(Vec<PathBuf>),
    /// The ring was handed over in memory (or queued for a task of the sink).
    Handed,
}

/// A sink's state between deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Why the sink is failing now, if it is.
    pub failing: Option<String>,
    /// Failures since the start that `deliver` did not return (a reload command that failed, a
    /// HAProxy socket that refused).
    pub failures: u64,
    /// The HAProxy admin sockets the sink follows, for the status document.
    pub haproxy: Vec<HaproxySocketStatus>,
    /// The encrypting key the server has taken, for sinks that know (the reload command: the
    /// ring's encrypting key when the command last succeeded). `None`: unknown, or not yet.
    pub applied: Option<Applied>,
}

/// A key a server has taken, by public name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its slot.
    pub slot: u64,
    /// Its public name (hex).
    pub name: String,
    /// When the server took it, Unix seconds.
    pub since: u64,
}

/// Which file sinks `stek up` and `stek agent` write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SinkKind {
    /// `DIR/nginx/tickets.conf` and one 80-byte (or 48-byte, [`NginxKeySize`]) file per key.
    Nginx,
    /// `DIR/haproxy/tickets.keys`.
    Haproxy,
    /// `DIR/apache/ticket.key`.
    Apache,
    /// `DIR/h2o/tickets.yaml`.
    H2o,
    /// `DIR/lighttpd/stek.key`.
    Lighttpd,
}

impl SinkKind {
    /// The sink's name on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Nginx => "nginx",
            SinkKind::Haproxy => "haproxy",
            SinkKind::Apache => "apache",
            SinkKind::H2o => "h2o",
            SinkKind::Lighttpd => "lighttpd",
        }
    }

    /// Every sink, in delivery order.
    pub const ALL: [SinkKind; 5] = [
        SinkKind::Nginx,
        SinkKind::Haproxy,
        SinkKind::Apache,
        SinkKind::H2o,
        SinkKind::Lighttpd,
    ];

    /// The sink of a name as `--sinks` and the config file take it.
    pub fn from_name(name: &str) -> Option<SinkKind> {
        SinkKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The HAProxy keys file under the key directory `dir` (`DIR/haproxy/tickets.keys`).
pub fn haproxy_keys_path(dir: &Path) -> PathBuf {
    haproxy::keys_path(&dir.join("haproxy"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_names_round_trip() {
        for k in SinkKind::ALL {
            assert_eq!(SinkKind::from_name(k.name()), Some(k));
        }
        assert_eq!(SinkKind::from_name("iis"), None);
    }

    #[test]
    fn the_retry_gate_backs_off_and_reopens_after_a_success() {
        let s = Duration::from_secs;
        let mut g = RetryGate::new();
        assert!(g.ready(s(100)));
        g.record(s(100), false);
        assert!(!g.ready(s(100)) && g.ready(s(101)));
        g.record(s(101), false);
        assert!(!g.ready(s(102)) && g.ready(s(103)));
        g.record(s(103), true);
        assert!(g.ready(s(103)));
    }
}
