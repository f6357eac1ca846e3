//! Sinks hand a ring to TLS servers: key files for nginx, HAProxy and Apache (in memory-backed
//! directories), HAProxy's runtime API ([`haproxy_runtime`]), and the table the
//! memcached-protocol server answers from.
//!
//! Files are written only when the ring changed, each atomically; a sink that fails leaves its
//! previous files in place and is reported, the others carry on.

pub mod files;
pub mod haproxy_runtime;

use std::path::{Path, PathBuf};

use stek_core::Ring;

pub use files::{ApacheSink, HaproxyKeys, HaproxySink, NginxSink};
pub use haproxy_runtime::HaproxyRuntime;

/// Which file sinks `stek up` and `stek agent` write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SinkKind {
    /// `DIR/nginx/tickets.conf` and one 80-byte file per key.
    Nginx,
    /// `DIR/haproxy/tickets.keys`.
    Haproxy,
    /// `DIR/apache/ticket.key`.
    Apache,
}

impl SinkKind {
    /// The sink's name on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Nginx => "nginx",
            SinkKind::Haproxy => "haproxy",
            SinkKind::Apache => "apache",
        }
    }
}

fn haproxy_sink(dir: &Path) -> HaproxySink {
    HaproxySink::new(dir.join("haproxy"))
}

/// The HAProxy keys file under the key directory `dir` (`DIR/haproxy/tickets.keys`).
pub fn haproxy_keys_path(dir: &Path) -> PathBuf {
    haproxy_sink(dir).keys_path()
}

/// A failed sink and why.
#[derive(Debug)]
pub struct SinkFailure {
    /// Which sink.
    pub sink: SinkKind,
    /// What went wrong.
    pub error: std::io::Error,
}

/// The file sinks of one key directory.
#[derive(Debug)]
pub struct FileSinks {
    nginx: Option<NginxSink>,
    haproxy: Option<HaproxySink>,
    apache: Option<ApacheSink>,
}

impl FileSinks {
    /// Sinks of the given kinds under `dir` (an absolute path on tmpfs or ramfs).
    pub fn new(dir: &Path, kinds: &[SinkKind]) -> FileSinks {
        let has = |k| kinds.contains(&k);
        FileSinks {
            nginx: has(SinkKind::Nginx).then(|| NginxSink::new(dir.join("nginx"))),
            haproxy: has(SinkKind::Haproxy).then(|| haproxy_sink(dir)),
            apache: has(SinkKind::Apache).then(|| ApacheSink::new(dir.join("apache"))),
        }
    }

    /// Writes every enabled sink's files for `ring`. Returns the files written and the sinks
    /// that failed.
    pub fn deliver(&mut self, ring: &Ring) -> (Vec<PathBuf>, Vec<SinkFailure>) {
        let mut written = Vec::new();
        let mut failed = Vec::new();
        let mut record = |sink, r: std::io::Result<PathBuf>| match r {
            Ok(p) => written.push(p),
            Err(error) => failed.push(SinkFailure { sink, error }),
        };
        if let Some(s) = &mut self.nginx {
            record(SinkKind::Nginx, s.write(ring));
        }
        if let Some(s) = &mut self.haproxy {
            record(SinkKind::Haproxy, s.write(ring));
        }
        if let Some(s) = &mut self.apache {
            record(SinkKind::Apache, s.write(ring));
        }
        (written, failed)
    }
}
