//! What an agent reports about itself: its ring by key name, slot and role (never key bytes),
//! its sync state and counters. Written to `DIR/status.json` on every change and served at
//! `/status` on the metrics endpoint; `stek status` prints it.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stek_core::{Encrypting, Origin, Ring};

/// The largest status document read (file or endpoint).
pub const MAX_STATUS: u64 = 4 << 20;

/// Why [`fetch`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FetchError {
    /// The endpoint could not be connected to.
    Connect {
        /// The endpoint (`HOST:PORT`).
        addr: String,
        /// The system's error.
        source: io::Error,
    },
    /// Sending the request or reading the reply failed or timed out.
    Io {
        /// The endpoint.
        addr: String,
        /// The system's error.
        source: io::Error,
    },
    /// The reply is not HTTP: no blank line ends its head.
    NotHttp {
        /// The endpoint.
        addr: String,
    },
    /// The endpoint answered with a status other than 200.
    Status {
        /// The endpoint.
        addr: String,
        /// The reply's status line (control characters replaced, at most 200 characters).
        status_line: String,
    },
    /// The reply's body is not a stek status.
    NotStatus {
        /// The endpoint.
        addr: String,
        /// The JSON decoder's error.
        source: serde_json::Error,
    },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Connect { addr, .. } => {
                write!(f, "cannot connect to the status endpoint {addr}")
            }
            FetchError::Io { addr, .. } => {
                write!(f, "status endpoint {addr}: the request failed")
            }
            FetchError::NotHttp { addr } => {
                write!(f, "status endpoint {addr}: malformed HTTP reply")
            }
            FetchError::Status { addr, status_line } => {
                write!(f, "status endpoint {addr} answered {status_line:?}")
            }
            FetchError::NotStatus { addr, .. } => {
                write!(f, "status endpoint {addr}: the reply is not a stek status")
            }
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FetchError::Connect { source, .. } | FetchError::Io { source, .. } => Some(source),
            FetchError::NotStatus { source, .. } => Some(source),
            FetchError::NotHttp { .. } | FetchError::Status { .. } => None,
        }
    }
}

/// `GET /status` from a running agent's metrics endpoint (`HOST:PORT`).
pub fn fetch(addr: &str) -> Result<Status, FetchError> {
    let io = |source| FetchError::Io {
        addr: addr.to_owned(),
        source,
    };
    let mut s = TcpStream::connect(addr).map_err(|source| FetchError::Connect {
        addr: addr.to_owned(),
        source,
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    s.write_all(
        format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(io)?;
    let mut buf = Vec::new();
    s.take(MAX_STATUS).read_to_end(&mut buf).map_err(io)?;
    parse_reply(addr, &buf)
}

/// The status in an HTTP reply from `addr`.
fn parse_reply(addr: &str, reply: &[u8]) -> Result<Status, FetchError> {
    let text = String::from_utf8_lossy(reply);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| FetchError::NotHttp {
            addr: addr.to_owned(),
        })?;
    if !head.starts_with("HTTP/1.1 200") {
        let line = head.lines().next().unwrap_or("");
        return Err(FetchError::Status {
            addr: addr.to_owned(),
            status_line: line
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(200)
                .collect(),
        });
    }
    serde_json::from_str(body).map_err(|source| FetchError::NotStatus {
        addr: addr.to_owned(),
        source,
    })
}

/// One key of the ring, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStatus {
    /// Slot number.
    pub slot: u64,
    /// Slot start, Unix seconds.
    pub start: u64,
    /// `encrypt`, `next` or `past-N`.
    pub role: String,
    /// The key's public name (hex): the first 16 bytes of the tickets it makes.
    pub name: String,
    /// `shared` (the group's key) or `local` (this host's stand-in).
    pub origin: String,
}

/// An agent's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The group.
    pub group: String,
    /// The period in seconds.
    pub period: u64,
    /// The lifetime in seconds.
    pub lifetime: u64,
    /// The current slot by this host's clock.
    pub slot: u64,
    /// `current`, `stale` or `local_fallback`.
    pub encrypting: String,
    /// The name of the encrypting key.
    pub encrypting_name: String,
    /// The ring in nginx order (encrypting first).
    pub keys: Vec<KeyStatus>,
    /// Unix seconds of the last successful store read.
    pub last_sync: Option<f64>,
    /// Seconds since the last successful store read.
    pub staleness: Option<f64>,
    /// This host's clock minus the store's, in seconds, if measured.
    pub clock_offset: Option<f64>,
    /// Records rejected, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Held slots whose record in the store later changed to another valid key (the held key
    /// was kept): the fleet disagrees on those slots. Absent from older status files.
    #[serde(default)]
    pub slot_conflicts: u64,
    /// Sink failures, by sink.
    pub sink_failures: BTreeMap<String, u64>,
    /// When this status was made, Unix seconds.
    pub updated_at: f64,
    /// HAProxy admin sockets (`--haproxy-socket`), by path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub haproxy: Vec<HaproxySocketStatus>,
}

/// One HAProxy admin socket, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaproxySocketStatus {
    /// The socket's path.
    pub socket: String,
    /// Whether the last check found every managed ring holding stek's keys.
    pub ok: bool,
    /// The last check's error, if it failed.
    pub error: Option<String>,
    /// The files of the rings stek keeps in step (as HAProxy names them).
    pub rings: Vec<String>,
    /// Keys pushed so far.
    pub keys_pushed: u64,
    /// Checks that failed so far.
    pub failures: u64,
}

impl Status {
    /// The status of `ring` at `now`.
    pub fn of(ring: &Ring, group: &str, now: Duration) -> Status {
        let s = ring.schedule();
        Status {
            group: group.to_owned(),
            period: s.period().as_secs(),
            lifetime: s.lifetime().as_secs(),
            slot: ring.current().0,
            encrypting: match ring.encrypting() {
                Encrypting::Current => "current".into(),
                Encrypting::Stale { .. } => "stale".into(),
                Encrypting::LocalFallback => "local_fallback".into(),
            },
            encrypting_name: ring.encrypting_entry().key.name().to_hex(),
            keys: ring
                .entries()
                .iter()
                .map(|e| KeyStatus {
                    slot: e.slot().0,
                    start: s.start(e.slot()).as_secs(),
                    role: e.role.to_string(),
                    name: e.key.name().to_hex(),
                    origin: match e.origin {
                        Origin::Shared => "shared".into(),
                        Origin::Local => "local".into(),
                    },
                })
                .collect(),
            last_sync: None,
            staleness: None,
            clock_offset: None,
            rejected: BTreeMap::new(),
            slot_conflicts: 0,
            sink_failures: BTreeMap::new(),
            updated_at: now.as_secs_f64(),
            haproxy: Vec::new(),
        }
    }

    /// A human-readable table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "group {}: slot {}, period {}s, lifetime {}s, encrypting with {} ({})",
            self.group,
            self.slot,
            self.period,
            self.lifetime,
            self.encrypting_name,
            self.encrypting
        );
        if let Some(s) = self.staleness {
            let _ = writeln!(out, "last store sync {s:.1}s ago");
        }
        if let Some(o) = self.clock_offset {
            let _ = writeln!(out, "clock offset to the store {:+.3}s", o);
        }
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:<8} {:<32} origin",
            "slot", "start", "role", "key name"
        );
        for k in &self.keys {
            let _ = writeln!(
                out,
                "{:<12} {:<12} {:<8} {:<32} {}",
                k.slot, k.start, k.role, k.name, k.origin
            );
        }
        for (reason, n) in &self.rejected {
            let _ = writeln!(out, "records rejected ({reason}): {n}");
        }
        if self.slot_conflicts > 0 {
            let _ = writeln!(
                out,
                "slot conflicts (a held slot's record changed to another key; held key kept): {}",
                self.slot_conflicts
            );
        }
        for (sink, n) in &self.sink_failures {
            let _ = writeln!(out, "sink failures ({sink}): {n}");
        }
        for h in &self.haproxy {
            let state = match &h.error {
                None => format!("in step (rings {})", h.rings.join(", ")),
                Some(e) => format!("FAILING: {e}"),
            };
            let _ = writeln!(
                out,
                "HAProxy {}: {state}; {} key(s) pushed, {} failed check(s)",
                h.socket, h.keys_pushed, h.failures
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn status_files_without_slot_conflicts_still_parse_and_conflicts_are_shown() {
        let old = r#"{"group":"web","period":4,"lifetime":8,"slot":7,"encrypting":"current",
            "encrypting_name":"aa","keys":[],"last_sync":null,"staleness":null,
            "clock_offset":null,"rejected":{},"sink_failures":{},"updated_at":1.0}"#;
        let mut st: Status = serde_json::from_str(old).unwrap();
        assert_eq!(st.slot_conflicts, 0);
        assert!(!st.render().contains("slot conflicts"));
        st.slot_conflicts = 2;
        assert!(st.render().contains("slot conflicts"));
        let back: Status = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(back.slot_conflicts, 2);
    }

    #[test]
    fn fetch_errors_say_what_failed_and_keep_the_cause() {
        // Nothing listens on port 1.
        let e = fetch("127.0.0.1:1").unwrap_err();
        assert!(matches!(e, FetchError::Connect { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "cannot connect to the status endpoint 127.0.0.1:1"
        );
        assert!(e.source().unwrap().is::<io::Error>());

        let e = parse_reply(
            "h:1",
            b"HTTP/1.1 503 Service Unavailable\r\n\r\nno ring yet\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "status endpoint h:1 answered \"HTTP/1.1 503 Service Unavailable\""
        );
        assert!(e.source().is_none());
        assert!(matches!(
            parse_reply("h:1", b"garbage"),
            Err(FetchError::NotHttp { .. })
        ));
        let e = parse_reply("h:1", b"HTTP/1.1 200 OK\r\n\r\n{\"group\": 1}").unwrap_err();
        assert!(matches!(e, FetchError::NotStatus { .. }), "{e:?}");
        assert!(e.source().unwrap().is::<serde_json::Error>());
        assert_eq!(
            e.to_string(),
            "status endpoint h:1: the reply is not a stek status"
        );
    }
}
