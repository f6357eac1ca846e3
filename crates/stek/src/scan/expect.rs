//! `--expect`: compare the key a server serves with the one a stek agent's schedule says it
//! should serve now (from `stek status --json` output, `DIR/status.json`, or the agent's metrics
//! endpoint). A host whose served key is not the agent's current key is not fed by stek, is
//! fed by a stale agent, or has a clock or reload problem.

use std::fmt;
use std::io::{self, Read as _};

use super::probe::Version;
use super::report::{Finding, Severity, TargetReport};
use crate::status::{FetchError, Status};

/// The largest status document read.
const MAX_STATUS: u64 = crate::status::MAX_STATUS;

/// An agent's status and where it came from.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The status.
    pub status: Status,
    /// The file or endpoint.
    pub source: String,
}

/// Why the `--expect` status could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExpectError {
    /// The agent's metrics endpoint did not give its status.
    Fetch {
        /// `--expect` as given.
        spec: String,
        /// What went wrong with the endpoint.
        source: FetchError,
    },
    /// The status file could not be read.
    Read {
        /// `--expect` as given.
        spec: String,
        /// The system's error.
        source: io::Error,
    },
    /// The file is not a stek status.
    NotStatus {
        /// `--expect` as given.
        spec: String,
        /// The JSON decoder's error.
        source: serde_json::Error,
    },
    /// The status has period 0, so it schedules nothing.
    ZeroPeriod {
        /// `--expect` as given.
        spec: String,
    },
}

impl fmt::Display for ExpectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectError::Fetch { spec, .. } => {
                write!(f, "--expect {spec}: cannot fetch the agent's status")
            }
            ExpectError::Read { spec, .. } => write!(f, "--expect {spec}: cannot read the file"),
            ExpectError::NotStatus { spec, .. } => write!(
                f,
                "--expect {spec}: not a stek status (make one with `stek status --json`)"
            ),
            ExpectError::ZeroPeriod { spec } => {
                write!(f, "--expect {spec}: the status has period 0")
            }
        }
    }
}

impl std::error::Error for ExpectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExpectError::Fetch { source, .. } => Some(source),
            ExpectError::Read { source, .. } => Some(source),
            ExpectError::NotStatus { source, .. } => Some(source),
            ExpectError::ZeroPeriod { .. } => None,
        }
    }
}

/// Read a status from a file, or from a metrics endpoint given as `http://HOST:PORT[/status]`
/// or `HOST:PORT`.
pub fn load(spec: &str) -> Result<Expected, ExpectError> {
    let path = std::path::Path::new(spec);
    let fetch = |addr: &str| {
        crate::status::fetch(addr).map_err(|source| ExpectError::Fetch {
            spec: spec.to_owned(),
            source,
        })
    };
    let status = if let Some(addr) = spec.strip_prefix("http://") {
        fetch(addr.trim_end_matches("/status").trim_end_matches('/'))?
    } else if path.exists() || !spec.contains(':') {
        let read = |source| ExpectError::Read {
            spec: spec.to_owned(),
            source,
        };
        let f = std::fs::File::open(path).map_err(read)?;
        let mut text = Vec::new();
        f.take(MAX_STATUS).read_to_end(&mut text).map_err(read)?;
        serde_json::from_slice(&text).map_err(|source| ExpectError::NotStatus {
            spec: spec.to_owned(),
            source,
        })?
    } else {
        fetch(spec)?
    };
    if status.period == 0 {
        return Err(ExpectError::ZeroPeriod {
            spec: spec.to_owned(),
        });
    }
    Ok(Expected {
        status,
        source: spec.to_owned(),
    })
}

/// Compare what `t` served (`(version, key name, Unix seconds)` of fresh tickets) with the
/// schedule.
pub fn check(exp: &Expected, t: &TargetReport, served: &[(Version, String, f64)]) -> Vec<Finding> {
    let s = &exp.status;
    let period = s.period as f64;
    // The agent publishes early and hosts' clocks differ: near a boundary both keys are right.
    let tolerance = (period / 4.0).clamp(1.0, 30.0);
    let covering = |at: f64| {
        s.keys
            .iter()
            .find(|k| (k.start as f64) <= at && at < k.start as f64 + period)
    };
    let target = t.label();
    let mut out = Vec::new();
    for (v, name, at) in served {
        let Some(want) = covering(*at) else {
            let newest = s.keys.iter().map(|k| k.start).max().unwrap_or(0);
            out.push(Finding {
                id: "expect.status_outdated".into(),
                severity: Severity::Medium,
                target: target.clone(),
                title: "the agent's status does not cover the time of the scan".into(),
                evidence: format!(
                    "{} was written at Unix {:.0}; its newest slot starts at {newest}, the scan ran at {at:.0}: the agent is not updating it",
                    exp.source, s.updated_at
                ),
                remediation: "Check the agent (`stek status`), then scan again with a fresh status.".into(),
            });
            continue;
        };
        let allowed: Vec<&str> = [*at - tolerance, *at, *at + tolerance]
            .into_iter()
            .filter_map(covering)
            .map(|k| k.name.as_str())
            .collect();
        if allowed.contains(&name.as_str()) {
            out.push(Finding {
                id: "expect.key_match".into(),
                severity: Severity::Info,
                target: target.clone(),
                title: "the served key is the scheduled one".into(),
                evidence: format!(
                    "{} tickets carry {name}, the key of slot {} in {}",
                    v.label(),
                    want.slot,
                    exp.source
                ),
                remediation: "Nothing to change.".into(),
            });
            continue;
        }
        let role = s.keys.iter().find(|k| k.name == *name).map_or_else(
            || format!("is not in the agent's ring at all (group {}): this host is not fed by that agent", s.group),
            |k| format!("is the ring's {} key (slot {}): the server did not load the current key (reload or clock problem)", k.role, k.slot),
        );
        out.push(Finding {
            id: "expect.key_mismatch".into(),
            severity: Severity::High,
            target: target.clone(),
            title: "the served key is not the one the schedule says".into(),
            evidence: format!(
                "{} tickets at Unix {at:.0} carry {name}; {} expects {} (slot {}); {name} {role}",
                v.label(),
                exp.source,
                want.name,
                want.slot
            ),
            remediation: "Point the server at the agent's files (nginx: `include DIR/nginx/tickets.conf;`, Apache: \
                          `SSLSessionTicketKeyFile DIR/apache/ticket.key`, HAProxy: `tls-ticket-keys DIR/haproxy/tickets.keys`) \
                          and make the agent reload it on change (`--on-change`, or `--haproxy-socket`)."
                .into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn load_errors_keep_their_causes() {
        // Nothing listens on port 1.
        let e = load("http://127.0.0.1:1/status").unwrap_err();
        assert!(matches!(e, ExpectError::Fetch { .. }), "{e:?}");
        assert!(e.source().unwrap().is::<FetchError>());
        assert_eq!(
            e.to_string(),
            "--expect http://127.0.0.1:1/status: cannot fetch the agent's status"
        );

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("status.json");
        let e = load(missing.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, ExpectError::Read { .. }), "{e:?}");
        assert!(e.source().unwrap().is::<io::Error>());

        std::fs::write(&missing, b"{}").unwrap();
        let e = load(missing.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, ExpectError::NotStatus { .. }), "{e:?}");
        assert!(e.source().unwrap().is::<serde_json::Error>());
        assert!(e.to_string().contains("stek status --json"), "{e}");
    }
}
