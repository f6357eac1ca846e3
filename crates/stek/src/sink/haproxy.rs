//! HAProxy as one sink: the keys file `DIR/haproxy/tickets.keys` (read at start and reload), then,
//! with `--haproxy-socket`, the same three keys pushed into the running HAProxy over its runtime
//! API ([`super::haproxy_runtime`]).
//!
//! The live ring follows the file and never runs ahead of it: when the file cannot be written,
//! nothing is pushed, so a reload always loads what HAProxy was running.

use std::io;
use std::path::{Path, PathBuf};

use stek_core::Ring;

use super::files::HaproxyKeys;
use super::{Delivered, HaproxyRuntime, Health, Sink};
use crate::files::KeyDir;

/// The keys file's name in `DIR/haproxy`.
const KEYS_FILE: &str = "tickets.keys";

/// The keys file under `dir` (`DIR/haproxy`).
pub(crate) fn keys_path(dir: &Path) -> PathBuf {
    dir.join(KEYS_FILE)
}

/// HAProxy: `haproxy/tickets.keys`, three base64 80-byte keys, oldest first (previous,
/// encrypting, next: HAProxy encrypts with the penultimate line), and optionally the runtime API.
#[derive(Debug)]
pub struct HaproxySink {
    /// The key directory DIR; `haproxy/` is opened (and checked) at every write.
    dir: KeyDir,
    runtime: Option<HaproxyRuntime>,
}

impl HaproxySink {
    /// A sink writing under `DIR/haproxy`, `dir` being the key directory DIR, and, if given,
    /// pushing through `runtime` (started on this sink's keys file, [`HaproxySink::keys_path`]).
    pub fn new(dir: KeyDir, runtime: Option<HaproxyRuntime>) -> Self {
        HaproxySink { dir, runtime }
    }

    /// The keys file HAProxy's `tls-ticket-keys` points at.
    pub fn keys_path(&self) -> PathBuf {
        keys_path(&self.dir.path().join("haproxy"))
    }

    /// Writes the keys file; returns its path.
    pub fn write(&mut self, ring: &Ring) -> io::Result<PathBuf> {
        self.write_keys(ring).map(|(path, _)| path)
    }

    fn write_keys(&mut self, ring: &Ring) -> io::Result<(PathBuf, HaproxyKeys)> {
        let haproxy = self.dir.subdir("haproxy")?;
        let keys = HaproxyKeys::of(ring)?;
        haproxy.write_atomic(KEYS_FILE, keys.file_text().as_bytes())?;
        Ok((self.keys_path(), keys))
    }
}

impl Sink for HaproxySink {
    fn name(&self) -> &'static str {
        "haproxy"
    }

    fn deliver(&mut self, ring: &Ring) -> io::Result<Delivered> {
        let (path, keys) = self.write_keys(ring)?;
        if let Some(rt) = &self.runtime {
            rt.deliver(keys);
        }
        Ok(Delivered::Files(vec![path]))
    }

    fn health(&self) -> Health {
        let Some(rt) = &self.runtime else {
            return Health::default();
        };
        let sockets = rt.sockets();
        let failing: Vec<String> = sockets
            .iter()
            .filter_map(|h| h.error.as_ref().map(|e| format!("{}: {e}", h.socket)))
            .collect();
        Health {
            failing: (!failing.is_empty()).then(|| failing.join("; ")),
            failures: sockets.iter().map(|h| h.failures).sum(),
            haproxy: sockets,
            // The runtime API keeps HAProxy's ring equal to the file: its state is in `haproxy`.
            applied: None,
        }
    }
}
