//! What a scan found: the JSON document (a stable interface: field names and finding ids do not
//! change meaning) and the human report (verdict first, then findings with evidence and the fix).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A fact worth knowing.
    Info,
    /// Costs performance or resilience, not secrecy.
    Low,
    /// Weakens forward secrecy or breaks a standard.
    Medium,
    /// Recorded traffic is exposed far longer than it should be.
    High,
    /// Recorded traffic can be decrypted by anyone.
    Critical,
}

impl Severity {
    /// The lowercase word.
    pub fn word(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// One finding. `id` is stable; `title`, `evidence` and `remediation` are for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable identifier, e.g. `stek.not_rotated`.
    pub id: String,
    /// Severity.
    pub severity: Severity,
    /// The endpoint it is about (`host:port` or `host:port (address)`), or `fleet <sni>`.
    pub target: String,
    /// One line.
    pub title: String,
    /// What was observed, with figures.
    pub evidence: String,
    /// What to change, with the exact configuration lines.
    pub remediation: String,
}

/// How far the scan got with one TLS version of one endpoint. Only `assessed` says anything
/// about tickets: a handshake that did not complete is never read as "no tickets".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A handshake completed; the fields below describe this version.
    Assessed,
    /// The server does not speak this version: it answered the ClientHello with
    /// `protocol_version` or `handshake_failure`, or chose another version.
    NotOffered,
    /// The server refused the server name sent (`unrecognized_name`, or an alert that goes away
    /// without the name).
    NameRefused,
    /// The handshake began but did not complete (e.g. an alert after the ServerHello: a client
    /// certificate required); nothing is known of its tickets.
    Failed,
    /// No TLS handshake could start (connect failed or timed out, not TLS, no answer).
    #[default]
    Unreachable,
}

impl Outcome {
    /// The snake_case word used in JSON.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Assessed => "assessed",
            Outcome::NotOffered => "not_offered",
            Outcome::NameRefused => "name_refused",
            Outcome::Failed => "failed",
            Outcome::Unreachable => "unreachable",
        }
    }
}

/// What a server's tickets are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketFormat {
    /// Encrypted session state whose first 16 bytes name the key (OpenSSL, Go < 1.21, ...).
    Named,
    /// Encrypted session state without a stable key name (Go >= 1.21, rustls, ...).
    Nameless,
    /// Too short to hold encrypted session state: a key into the server's session cache
    /// (OpenSSL's stateful TLS 1.3 tickets when tickets are off). No ticket key is involved.
    CacheId,
}

/// The server software the scan believes it talked to, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFamily {
    /// Stable id: `nginx`, `apache`, `haproxy`, `go`, `caddy`, `lighttpd`, `h2o`, `rustls`,
    /// `openssl` (another OpenSSL-based server, e.g. `openssl s_server`), or `unknown`.
    pub id: String,
    /// For people: "nginx", "Go crypto/tls", ...
    pub name: String,
    /// What pointed to it, one observation per entry (empty for `unknown`).
    pub evidence: Vec<String>,
}

impl Default for ServerFamily {
    fn default() -> Self {
        ServerFamily {
            id: "unknown".into(),
            name: "unknown server".into(),
            evidence: Vec::new(),
        }
    }
}

/// One TLS version's resumption behaviour on one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionReport {
    /// A handshake at this version completed (`outcome` is `assessed`).
    pub supported: bool,
    /// How far the scan got.
    #[serde(default)]
    pub outcome: Outcome,
    /// The alert the server ended the handshake with, by name (`certificate_required`, ...).
    #[serde(default)]
    pub alert: Option<String>,
    /// Why not, when not.
    pub error: Option<String>,
    /// The negotiated cipher suite.
    pub cipher: Option<String>,
    /// Full handshake time, milliseconds.
    pub handshake_ms: Option<f64>,
    /// TLS 1.2 only: a session resumed by session ID (the server's session cache).
    pub session_id_resumption: Option<bool>,
    /// The server issued tickets.
    pub tickets_issued: bool,
    /// Tickets per full handshake.
    pub tickets_per_connection: usize,
    /// The lifetime hint (TLS 1.2; 0 = unspecified) or ticket lifetime (TLS 1.3), seconds.
    pub lifetime_hint: Option<u32>,
    /// A ticket resumed the session (a renewed ticket still counts).
    pub ticket_resumption: Option<bool>,
    /// The resumed handshake came with a new ticket.
    pub ticket_renewed: Option<bool>,
    /// TLS 1.3: a ticket is accepted only once.
    pub single_use: Option<bool>,
    /// TLS 1.3: the resumption used (EC)DHE (`psk_dhe_ke`); false = `psk_ke`, no forward secrecy.
    pub resumption_with_dhe: Option<bool>,
    /// TLS 1.3: the most 0-RTT data the server accepts per ticket.
    pub max_early_data: Option<u32>,
    /// The key name (hex) of the encrypting key, when the format has one.
    pub key_name: Option<String>,
    /// The name was the same on tickets from separate connections while the tickets differed.
    pub key_name_confirmed: bool,
    /// Tickets looked at.
    pub tickets_seen: usize,
    /// Ticket length, bytes.
    pub ticket_len: Option<usize>,
    /// What the tickets are, when any were issued.
    #[serde(default)]
    pub ticket_format: Option<TicketFormat>,
    /// A guessed key verified a ticket's MAC: how (see `stek.weak_key`, `stek.weak_mac_key`).
    pub weak_key: Option<String>,
    /// The guessed key also decrypted the ticket (`stek.weak_key`); false: only the MAC key.
    pub weak_key_decrypts: bool,
}

/// One key name seen encrypting, over this run and earlier ones (`--state`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyReport {
    /// The key name (hex).
    pub name: String,
    /// First time a fresh ticket carried it, Unix seconds.
    pub first_seen: f64,
    /// Last time a fresh ticket carried it, Unix seconds.
    pub last_seen: f64,
    /// Fresh tickets seen with it.
    pub samples: u64,
    /// Versions that carried it (`tls12`, `tls13`).
    pub versions: Vec<String>,
}

/// One old ticket offered again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceptanceCheck {
    /// `tls12` or `tls13`.
    pub version: String,
    /// The ticket's key name, if known.
    pub name: Option<String>,
    /// When the ticket was issued, Unix seconds.
    pub issued_at: f64,
    /// When it was offered again, Unix seconds.
    pub checked_at: f64,
    /// Its age then, seconds.
    pub age_secs: f64,
    /// The server resumed with it; `None` when the answer did not tell.
    pub accepted: Option<bool>,
    /// It was a session-cache ID (stateful TLS 1.3 ticket), not an encrypted ticket.
    #[serde(default)]
    pub cache_id: bool,
}

/// One endpoint: a target's address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    /// The target as given.
    pub target: String,
    /// The address scanned.
    pub address: String,
    /// The server name sent, if any.
    pub sni: Option<String>,
    /// The server software, as far as the scan can tell (it picks the fix text).
    #[serde(default)]
    pub server_family: ServerFamily,
    /// Why this endpoint could not be scanned.
    pub error: Option<String>,
    /// TLS 1.2.
    pub tls12: VersionReport,
    /// TLS 1.3.
    pub tls13: VersionReport,
    /// Key names seen encrypting (with `--observe` and `--state`).
    pub keys: Vec<KeyReport>,
    /// The median time one key encrypted before the next took over, when seen.
    pub rotation_observed_secs: Option<f64>,
    /// How long the sampling has covered (this run and the state), seconds.
    pub observed_secs: f64,
    /// Old tickets offered again.
    pub acceptance: Vec<AcceptanceCheck>,
    /// The oldest ticket accepted, seconds.
    pub oldest_accepted_secs: Option<f64>,
    /// The youngest ticket refused, seconds.
    pub youngest_refused_secs: Option<f64>,
}

impl TargetReport {
    /// How the endpoint is named in findings: the target, and the address when it differs.
    pub fn label(&self) -> String {
        if self.target == self.address {
            self.target.clone()
        } else {
            format!("{} ({})", self.target, self.address)
        }
    }
}

/// Several endpoints that answer to one name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetReport {
    /// The server name they share.
    pub sni: String,
    /// Their addresses.
    pub addresses: Vec<String>,
    /// They served the same key name.
    pub same_key_name: Option<bool>,
    /// Pairs (from, to, version) where a ticket from one resumed on the other.
    pub cross_resumption: Vec<CrossCheck>,
}

/// A ticket from one address offered to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossCheck {
    /// Where the ticket came from.
    pub from: String,
    /// Where it was offered.
    pub to: String,
    /// `tls12` or `tls13`.
    pub version: String,
    /// Resumed there.
    pub accepted: Option<bool>,
}

/// The whole scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `stek <version>`.
    pub scanner: String,
    /// Unix seconds.
    pub started_at: f64,
    /// Seconds.
    pub duration_secs: f64,
    /// `pass` (no finding of medium or higher), `fail`, or `error` (could not scan).
    pub verdict: String,
    /// One sentence.
    pub summary: String,
    /// The exit code.
    pub exit_code: u8,
    /// Each endpoint.
    pub targets: Vec<TargetReport>,
    /// Endpoints sharing a name.
    pub fleets: Vec<FleetReport>,
    /// Findings, worst first.
    pub findings: Vec<Finding>,
    /// Things about the scan itself a user should know (an option ignored, ...).
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Report {
    /// Sort findings worst first, set verdict, summary and exit code.
    pub fn conclude(&mut self) {
        self.findings.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| a.target.cmp(&b.target))
                .then_with(|| a.id.cmp(&b.id))
        });
        let errors: Vec<String> = self
            .targets
            .iter()
            .filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.label())))
            .collect();
        let serious = self
            .findings
            .iter()
            .filter(|f| f.severity >= Severity::Medium)
            .count();
        let worst = self.findings.first().map(|f| f.severity);
        (self.verdict, self.exit_code, self.summary) = if !errors.is_empty() {
            (
                "error".into(),
                2,
                format!("could not scan {}", errors.join("; ")),
            )
        } else if serious > 0 {
            let first = &self.findings[0];
            (
                "fail".into(),
                1,
                format!(
                    "{serious} finding(s) of medium severity or worse (worst: {}, {}: {})",
                    worst.map_or("", Severity::word),
                    first.id,
                    first.title
                ),
            )
        } else {
            (
                "pass".into(),
                0,
                "no finding of medium severity or worse".into(),
            )
        };
    }

    /// The human report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} ({} endpoint(s), {:.2} s)",
            self.verdict.to_uppercase(),
            self.summary,
            self.targets.len(),
            self.duration_secs
        );
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let shown: Vec<&Finding> = self
            .findings
            .iter()
            .filter(|f| f.severity > Severity::Info)
            .collect();
        if !shown.is_empty() {
            let _ = writeln!(out, "\nFindings:");
        }
        for f in &shown {
            let _ = writeln!(
                out,
                "\n[{}] {}  {}",
                f.severity.word().to_uppercase(),
                f.id,
                f.title
            );
            let _ = writeln!(out, "  target:   {}", f.target);
            let _ = writeln!(out, "  evidence: {}", f.evidence);
            for (i, line) in f.remediation.lines().enumerate() {
                let _ = writeln!(
                    out,
                    "  {} {line}",
                    if i == 0 { "fix:     " } else { "         " }
                );
            }
        }
        for t in &self.targets {
            let _ = writeln!(
                out,
                "\n{}, {}",
                t.label(),
                t.sni
                    .as_ref()
                    .map_or_else(|| "no SNI".to_owned(), |s| format!("SNI {s}"))
            );
            if let Some(e) = &t.error {
                let _ = writeln!(out, "  error: {e}");
                continue;
            }
            if t.server_family.evidence.is_empty() {
                let _ = writeln!(out, "  server: {}", t.server_family.name);
            } else {
                let _ = writeln!(
                    out,
                    "  server: {} ({})",
                    t.server_family.name,
                    t.server_family.evidence.join("; ")
                );
            }
            for (label, v) in [("TLS 1.2", &t.tls12), ("TLS 1.3", &t.tls13)] {
                let _ = writeln!(out, "  {label}: {}", describe(v));
            }
            for k in &t.keys {
                let _ = writeln!(
                    out,
                    "  key {}: encrypting for at least {} ({} sample(s), {})",
                    k.name,
                    human(k.last_seen - k.first_seen),
                    k.samples,
                    k.versions.join("+")
                );
            }
            if let Some(r) = t.rotation_observed_secs {
                let _ = writeln!(out, "  rotation observed: every {}", human(r));
            }
            if let Some(a) = t.oldest_accepted_secs {
                let _ = writeln!(out, "  oldest ticket still accepted: {}", human(a));
            }
            if let Some(r) = t.youngest_refused_secs {
                let _ = writeln!(out, "  youngest ticket refused: {}", human(r));
            }
        }
        for f in &self.fleets {
            let accepted = f
                .cross_resumption
                .iter()
                .filter(|c| c.accepted == Some(true))
                .count();
            let _ = writeln!(
                out,
                "\nfleet {} ({}): same key name: {}; cross-address resumption {}/{}",
                f.sni,
                f.addresses.join(", "),
                f.same_key_name
                    .map_or("unknown", |b| if b { "yes" } else { "no" }),
                accepted,
                f.cross_resumption.len()
            );
        }
        let infos: Vec<&Finding> = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Info)
            .collect();
        if !infos.is_empty() {
            let _ = writeln!(out, "\nNotes:");
            for f in infos {
                let _ = writeln!(out, "  {} ({}): {}", f.id, f.target, f.evidence);
            }
        }
        out
    }
}

/// `yes`, `no`, `n/a`.
pub fn yes(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "n/a",
    }
}

fn describe(v: &VersionReport) -> String {
    let why = v.error.as_deref().unwrap_or("no handshake");
    match v.outcome {
        Outcome::Assessed => {}
        Outcome::NotOffered => return format!("not offered ({why})"),
        Outcome::NameRefused => return format!("not assessed: {why}"),
        Outcome::Failed | Outcome::Unreachable => return format!("not assessed: {why}"),
    }
    if v.ticket_format == Some(TicketFormat::CacheId) {
        return format!(
            "{}session-cache IDs of {} bytes as tickets (no ticket key), {}/connection, lifetime {}; resumption {}",
            v.cipher.as_ref().map(|c| format!("{c}; ")).unwrap_or_default(),
            v.ticket_len.unwrap_or(0),
            v.tickets_per_connection,
            v.lifetime_hint.map_or_else(|| "?".to_owned(), |l| human(f64::from(l))),
            yes(v.ticket_resumption)
        );
    }
    let mut s = String::new();
    if let Some(c) = &v.cipher {
        let _ = write!(s, "{c}; ");
    }
    if v.session_id_resumption.is_some() {
        let _ = write!(
            s,
            "session-ID resumption {}; ",
            yes(v.session_id_resumption)
        );
    }
    if !v.tickets_issued {
        s.push_str("no tickets");
        return s;
    }
    let _ = write!(
        s,
        "tickets {}/connection, lifetime {}; ticket resumption {}",
        v.tickets_per_connection,
        match v.lifetime_hint {
            Some(0) => "unspecified (0)".to_owned(),
            Some(l) => human(f64::from(l)),
            None => "?".into(),
        },
        yes(v.ticket_resumption)
    );
    if v.ticket_renewed == Some(true) {
        s.push_str(" (renewed)");
    }
    if v.single_use.is_some() {
        let _ = write!(s, "; single-use {}", yes(v.single_use));
    }
    match (&v.key_name, v.key_name_confirmed) {
        (Some(n), true) => {
            let _ = write!(
                s,
                "; key name {n} (confirmed on {} tickets)",
                v.tickets_seen
            );
        }
        (Some(n), false) => {
            let _ = write!(s, "; key name {n}?");
        }
        (None, _) => s.push_str("; no key name in the tickets"),
    }
    s
}

/// Seconds as `45 s`, `12 min`, `3.5 h`, `2.0 d`.
pub fn human(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 120.0 {
        format!("{secs:.1} s")
    } else if secs < 7200.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 172_800.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} d", secs / 86400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(id: &str, severity: Severity) -> Finding {
        Finding {
            id: id.into(),
            severity,
            target: "t".into(),
            title: id.into(),
            evidence: String::new(),
            remediation: String::new(),
        }
    }

    fn report(findings: Vec<Finding>) -> Report {
        Report {
            scanner: "stek".into(),
            started_at: 0.0,
            duration_secs: 0.0,
            verdict: String::new(),
            summary: String::new(),
            exit_code: 0,
            targets: vec![],
            fleets: vec![],
            findings,
            warnings: vec![],
        }
    }

    #[test]
    fn exit_code_follows_the_worst_finding() {
        let mut r = report(vec![
            finding("tickets.tls12", Severity::Info),
            finding("x", Severity::Low),
        ]);
        r.conclude();
        assert_eq!((r.exit_code, r.verdict.as_str()), (0, "pass"));
        let mut r = report(vec![
            finding("a", Severity::Info),
            finding("stek.weak_key", Severity::Critical),
        ]);
        r.conclude();
        assert_eq!((r.exit_code, r.verdict.as_str()), (1, "fail"));
        assert_eq!(r.findings[0].id, "stek.weak_key");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(3.04), "3.0 s");
        assert_eq!(human(300.0), "5 min");
        assert_eq!(human(86400.0), "24.0 h");
        assert_eq!(human(30.0 * 86400.0), "30.0 d");
    }
}
