//! `--state FILE`: what earlier runs saw (key names with first and last sight, and a few
//! resumption ClientHellos that offer old tickets), so a daily run measures how long a key
//! encrypts and how long its tickets are accepted over days and weeks.
//!
//! The file holds tickets (the server's encryption of our scan sessions, never a server key)
//! and is written 0600, atomically. It is untrusted input when read back: capped, validated.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::report::AcceptanceCheck;

/// The largest state file read.
pub const MAX_STATE: u64 = 8 << 20;
/// Stored offers per endpoint.
const MAX_OFFERS: usize = 64;
/// Stored acceptance checks per endpoint.
const MAX_CHECKS: usize = 512;
/// Stored key names per endpoint.
const MAX_KEYS: usize = 4096;
/// The largest stored ClientHello.
const MAX_HELLO: usize = 16 * 1024;

/// Why the state file could not be read or written.
#[derive(Debug)]
#[non_exhaustive]
pub enum StateError {
    /// Opening or reading the file failed.
    Read {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// The file is larger than [`MAX_STATE`].
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a scan state.
    NotState {
        /// The file.
        path: PathBuf,
        /// The JSON decoder's error.
        source: serde_json::Error,
    },
    /// The file is in a format version this stek does not read.
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// The state could not be encoded (a bug in stek).
    Encode(serde_json::Error),
    /// Writing the file failed.
    Write {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Read { path, .. } => {
                write!(f, "state file {}: cannot read it", path.display())
            }
            StateError::TooLarge { path } => write!(
                f,
                "state file {}: larger than {MAX_STATE} bytes",
                path.display()
            ),
            StateError::NotState { path, .. } => {
                write!(f, "state file {}: not a stek scan state", path.display())
            }
            StateError::Version { path, version } => write!(
                f,
                "state file {}: format version {version} (this stek reads 1)",
                path.display()
            ),
            StateError::Encode(_) => f.write_str("cannot encode the scan state"),
            StateError::Write { path, .. } => {
                write!(f, "state file {}: cannot write it", path.display())
            }
        }
    }
}

impl std::error::Error for StateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateError::Read { source, .. } | StateError::Write { source, .. } => Some(source),
            StateError::NotState { source, .. } | StateError::Encode(source) => Some(source),
            StateError::TooLarge { .. } | StateError::Version { .. } => None,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Format version (1).
    pub version: u32,
    /// By endpoint key (`address|sni`).
    pub endpoints: BTreeMap<String, EndpointState>,
}

/// One endpoint's history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointState {
    /// Key names seen encrypting.
    pub keys: BTreeMap<String, KeySeen>,
    /// When sampling covered, as (from, to) Unix seconds per run.
    pub runs: Vec<(f64, f64)>,
    /// Tickets kept to offer again.
    pub offers: Vec<StoredOffer>,
    /// Past acceptance checks.
    pub checks: Vec<AcceptanceCheck>,
}

/// One key name's sightings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeySeen {
    /// Unix seconds.
    pub first_seen: f64,
    /// Unix seconds.
    pub last_seen: f64,
    /// Fresh tickets seen.
    pub samples: u64,
    /// `tls12`, `tls13`.
    pub versions: BTreeSet<String>,
}

/// A resumption ClientHello offering one ticket, made without sending it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredOffer {
    /// `tls12` or `tls13`.
    pub version: String,
    /// The ticket's key name, if the format has one.
    pub name: Option<String>,
    /// Unix seconds.
    pub issued_at: f64,
    /// The ClientHello record(s), base64.
    pub client_hello: String,
    /// Already offered to a server whose tickets are single-use.
    pub spent: bool,
    /// The "ticket" is a session-cache ID (stateful), not an encrypted ticket.
    #[serde(default)]
    pub cache_id: bool,
}

/// Drop offers until at most `max` remain, keeping the oldest and the newest and the spread
/// between: each step drops the inner offer closest in time to its older neighbour. The
/// remaining ages then bracket the oldest ticket a server accepts at any scale (seconds within
/// one run, days across runs).
pub fn thin(offers: &mut Vec<StoredOffer>, max: usize) {
    offers.sort_by(|a, b| a.issued_at.total_cmp(&b.issued_at));
    while offers.len() > max.max(2) {
        let drop = (1..offers.len() - 1)
            .min_by(|&a, &b| {
                let gap = |i: usize| offers[i].issued_at - offers[i - 1].issued_at;
                gap(a).total_cmp(&gap(b))
            })
            .unwrap_or(1);
        offers.remove(drop);
    }
}

impl StoredOffer {
    /// The ClientHello bytes, if the stored text is sane.
    pub fn hello(&self) -> Option<Vec<u8>> {
        let b = base64::engine::general_purpose::STANDARD
            .decode(&self.client_hello)
            .ok()?;
        (b.len() <= MAX_HELLO).then_some(b)
    }
}

impl State {
    /// Read `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State, StateError> {
        let read = |source| StateError::Read {
            path: path.to_owned(),
            source,
        };
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    version: 1,
                    ..State::default()
                })
            }
            Err(e) => return Err(read(e)),
        };
        let mut text = String::new();
        f.take(MAX_STATE + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_STATE {
            return Err(StateError::TooLarge {
                path: path.to_owned(),
            });
        }
        let state: State = serde_json::from_str(&text).map_err(|source| StateError::NotState {
            path: path.to_owned(),
            source,
        })?;
        if state.version != 1 {
            return Err(StateError::Version {
                path: path.to_owned(),
                version: state.version,
            });
        }
        Ok(state)
    }

    /// Write `path` atomically, mode 0600.
    pub fn save(&mut self, path: &Path) -> Result<(), StateError> {
        for e in self.endpoints.values_mut() {
            e.trim();
        }
        let text = serde_json::to_vec_pretty(self).map_err(StateError::Encode)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            StateError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }
}

impl EndpointState {
    /// Record a fresh ticket's key name at `at`.
    pub fn saw(&mut self, name: &str, version: &str, at: f64) {
        let k = self.keys.entry(name.to_owned()).or_insert(KeySeen {
            first_seen: at,
            last_seen: at,
            samples: 0,
            versions: BTreeSet::new(),
        });
        k.first_seen = k.first_seen.min(at);
        k.last_seen = k.last_seen.max(at);
        k.samples += 1;
        k.versions.insert(version.to_owned());
    }

    /// Keep the newest entries within the caps; the oldest offer always stays (it measures the
    /// acceptance window).
    fn trim(&mut self) {
        self.offers.retain(|o| o.hello().is_some());
        thin(&mut self.offers, MAX_OFFERS);
        if self.checks.len() > MAX_CHECKS {
            let drop = self.checks.len() - MAX_CHECKS;
            self.checks.drain(..drop);
        }
        if self.keys.len() > MAX_KEYS {
            let mut by_age: Vec<(f64, String)> = self
                .keys
                .iter()
                .map(|(n, k)| (k.last_seen, n.clone()))
                .collect();
            by_age.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (_, n) in by_age.into_iter().take(self.keys.len() - MAX_KEYS) {
                self.keys.remove(&n);
            }
        }
        if self.runs.len() > MAX_CHECKS {
            let drop = self.runs.len() - MAX_CHECKS;
            self.runs.drain(..drop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = State::load(&path).unwrap();
        let e = s.endpoints.entry("127.0.0.1:443|a".into()).or_default();
        e.saw("00", "tls12", 10.0);
        e.saw("00", "tls13", 5.0);
        for i in 0..100 {
            e.offers.push(StoredOffer {
                version: "tls12".into(),
                name: None,
                issued_at: f64::from(i),
                client_hello: "AAAA".into(),
                spent: false,
                cache_id: false,
            });
        }
        s.save(&path).unwrap();
        let back = State::load(&path).unwrap();
        let e = &back.endpoints["127.0.0.1:443|a"];
        assert_eq!(e.keys["00"].first_seen, 5.0);
        assert_eq!(e.keys["00"].samples, 2);
        assert_eq!(e.offers.len(), MAX_OFFERS);
        assert_eq!(e.offers[0].issued_at, 0.0, "the oldest offer stays");
        assert_eq!(
            e.offers[MAX_OFFERS - 1].issued_at,
            99.0,
            "the newest offer stays"
        );
        // Spread evenly: no two kept offers more than 2 apart (100 over 64).
        assert!(e
            .offers
            .windows(2)
            .all(|w| w[1].issued_at - w[0].issued_at <= 2.0));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn bad_files_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{\"version\": 7, \"endpoints\": {}}").unwrap();
        let e = State::load(&path).unwrap_err();
        assert!(matches!(e, StateError::Version { version: 7, .. }), "{e:?}");
        assert!(e.to_string().contains("format version 7"), "{e}");
        std::fs::write(&path, b"garbage").unwrap();
        let e = State::load(&path).unwrap_err();
        assert!(e.to_string().contains("not a stek scan state"), "{e}");
        assert!(std::error::Error::source(&e)
            .unwrap()
            .is::<serde_json::Error>());
        // A directory cannot be read as a file, nor written over.
        let e = State::load(dir.path()).unwrap_err();
        assert!(matches!(e, StateError::Read { .. }), "{e:?}");
        assert!(std::error::Error::source(&e).unwrap().is::<io::Error>());
        let e = State::default().save(dir.path()).unwrap_err();
        assert!(matches!(e, StateError::Write { .. }), "{e:?}");
        assert!(std::error::Error::source(&e).unwrap().is::<io::Error>());
    }
}
