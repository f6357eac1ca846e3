//! `--expect`: compare the key a server serves with the one a stek agent's schedule says it
//! should serve now (from `stek status --json` output, `DIR/status.json`, or the agent's metrics
//! endpoint). A host whose served key is not the agent's current key is not fed by stek, is
//! fed by a stale agent, or has a clock or reload problem.

use std::io::Read as _;

use super::probe::Version;
use super::report::{Finding, Severity, TargetReport};
use crate::status::Status;

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

/// Read a status from a file, or from a metrics endpoint given as `http://HOST:PORT[/status]`
/// or `HOST:PORT`.
pub fn load(spec: &str) -> Result<Expected, String> {
    let path = std::path::Path::new(spec);
    let status = if let Some(addr) = spec.strip_prefix("http://") {
        let addr = addr.trim_end_matches("/status").trim_end_matches('/');
        crate::status::fetch(addr).map_err(|e| crate::error::Chain(&e).to_string())?
    } else if path.exists() || !spec.contains(':') {
        let f = std::fs::File::open(path).map_err(|e| format!("--expect {spec}: {e}"))?;
        let mut text = Vec::new();
        f.take(MAX_STATUS)
            .read_to_end(&mut text)
            .map_err(|e| format!("--expect {spec}: {e}"))?;
        serde_json::from_slice(&text).map_err(|e| {
            format!("--expect {spec}: not a stek status ({e}); make one with `stek status --json`")
        })?
    } else {
        crate::status::fetch(spec).map_err(|e| crate::error::Chain(&e).to_string())?
    };
    if status.period == 0 {
        return Err(format!("--expect {spec}: the status has period 0"));
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
