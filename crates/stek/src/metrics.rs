//! A Prometheus text endpoint (`GET /metrics`), the status document (`GET /status`) and a
//! health verdict (`GET /healthz`, as `stek status` judges) on a
//! loopback address. Nothing secret is ever exposed: key names, slots and counters only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::debug;

use crate::memcached::{Refusal, Stats as MemcachedStats};
use crate::status::{HaproxySocketStatus, ServedState, Status};

/// The metrics of one process (agent, generator, or both for `stek up`).
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    status: Option<Status>,
    sink_failures: BTreeMap<String, u64>,
    store_errors: u64,
    created: BTreeMap<String, u64>,
    /// Generator slot conflicts by (group, reason).
    slot_conflicts: BTreeMap<(String, &'static str), u64>,
    publish_errors: u64,
    last_publish: Option<f64>,
    /// A generator's groups, by name (empty in an agent).
    generator: BTreeMap<String, crate::status::GroupReport>,
    clock_steps: u64,
    last_clock_step: Option<f64>,
    /// The counters of this process's memcached servers, read when rendered.
    memcached: Vec<Arc<MemcachedStats>>,
}

impl Metrics {
    /// Fresh, empty metrics.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the agent's latest status.
    pub fn set_status(&self, status: Status) {
        self.lock().status = Some(status);
    }

    /// The agent's latest status, with the sink failures counted so far.
    pub fn status(&self) -> Option<Status> {
        let g = self.lock();
        g.status.clone().map(|mut s| {
            s.sink_failures = g.sink_failures.clone();
            s
        })
    }

    /// Sink failures so far, by sink.
    pub fn sink_failures(&self) -> BTreeMap<String, u64> {
        self.lock().sink_failures.clone()
    }

    /// Counts a step of the wall clock of `secs` seconds (negative: back).
    pub fn clock_stepped(&self, secs: f64) {
        let mut g = self.lock();
        g.clock_steps += 1;
        g.last_clock_step = Some(secs);
    }

    /// Counts a sink failure.
    pub fn sink_failed(&self, sink: &str) {
        *self
            .lock()
            .sink_failures
            .entry(sink.to_owned())
            .or_default() += 1;
    }

    /// Shows the counters of a memcached server (refused connections, request timeouts) in the
    /// metrics, summed over every server added.
    pub fn add_memcached(&self, stats: Arc<MemcachedStats>) {
        self.lock().memcached.push(stats);
    }

    /// Counts a failed store operation.
    pub fn store_error(&self) {
        self.lock().store_errors += 1;
    }

    /// Counts a key a generator created for `group`, at `now`.
    pub fn key_created(&self, group: &str, now: Duration) {
        let mut g = self.lock();
        *g.created.entry(group.to_owned()).or_default() += 1;
        g.last_publish = Some(now.as_secs_f64());
    }

    /// Counts a slot conflict a generator found in `group` (`reason` is
    /// [`Conflict::reason`](crate::generator::Conflict::reason)).
    pub fn slot_conflict(&self, group: &str, reason: &'static str) {
        *self
            .lock()
            .slot_conflicts
            .entry((group.to_owned(), reason))
            .or_default() += 1;
    }

    /// Records a successful publishing round.
    pub fn published(&self, now: Duration) {
        self.lock().last_publish = Some(now.as_secs_f64());
    }

    /// Registers a group a generator publishes for (so that its status lists it before the
    /// first round ends).
    pub fn group_planned(&self, group: &str, schedule: &stek_core::Schedule) {
        self.lock()
            .generator
            .entry(group.to_owned())
            .or_insert_with(|| crate::status::GroupReport {
                group: group.to_owned(),
                period: schedule.period().as_secs(),
                lifetime: schedule.lifetime().as_secs(),
                published_through: None,
                last_success: None,
                failing: None,
                failing_since: None,
                keys_created: 0,
                slot_conflicts: 0,
            });
    }

    /// Records a successful round for a planned `group` at `now` (the round's time): the store
    /// held every record through `through`.
    pub fn group_published(&self, group: &str, through: stek_core::Slot, now: Duration) {
        let now = now.as_secs_f64();
        if let Some(g) = self.lock().generator.get_mut(group) {
            g.published_through = Some(g.published_through.unwrap_or(0).max(through.0));
            g.last_success = Some(now);
            g.failing = None;
            g.failing_since = None;
        }
    }

    /// Records a failed round for a planned `group` at `now`, with why.
    pub fn group_failed(&self, group: &str, why: &str, now: Duration) {
        let now = now.as_secs_f64();
        if let Some(g) = self.lock().generator.get_mut(group) {
            g.failing = Some(why.to_owned());
            g.failing_since.get_or_insert(now);
        }
    }

    /// The generator's status at `now`, if this process runs a generator (and no agent).
    pub fn generator_status(&self, now: Duration) -> Option<crate::status::GeneratorStatus> {
        let g = self.lock();
        if g.generator.is_empty() || g.status.is_some() {
            return None;
        }
        let groups = g
            .generator
            .values()
            .map(|r| {
                let mut r = r.clone();
                r.keys_created = g.created.get(&r.group).copied().unwrap_or(0);
                r.slot_conflicts = g
                    .slot_conflicts
                    .iter()
                    .filter(|((group, _), _)| *group == r.group)
                    .map(|(_, n)| n)
                    .sum();
                r
            })
            .collect();
        Some(crate::status::GeneratorStatus {
            role: "generator".to_owned(),
            groups,
            publish_errors: g.publish_errors,
            updated_at: now.as_secs_f64(),
        })
    }

    /// Counts a failed publishing round.
    pub fn publish_error(&self) {
        self.lock().publish_errors += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(&self, now: Duration) -> String {
        let g = self.lock();
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP stek_build_info The stek build: version and commit.\n# TYPE stek_build_info gauge\nstek_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            env!("STEK_COMMIT")
        );
        let _ = writeln!(
            o,
            "# HELP stek_store_errors_total Failed store operations.\n# TYPE stek_store_errors_total counter\nstek_store_errors_total {}",
            g.store_errors
        );
        if g.clock_steps > 0 {
            let _ = writeln!(o, "# HELP stek_clock_steps_total Steps of the wall clock larger than P/4 (the monotonic clock disagreed).\n# TYPE stek_clock_steps_total counter\nstek_clock_steps_total {}", g.clock_steps);
        }
        if let Some(step) = g.last_clock_step {
            let _ = writeln!(o, "# HELP stek_clock_last_step_seconds The last step of the wall clock, in seconds (negative: back).\n# TYPE stek_clock_last_step_seconds gauge\nstek_clock_last_step_seconds {step:.3}");
        }
        if let Some(s) = &g.status {
            let l = format!("group=\"{}\"", s.group);
            let shared = s.keys.iter().filter(|k| k.origin == "shared").count();
            let _ = writeln!(o, "# HELP stek_current_slot The current slot by this host's clock.\n# TYPE stek_current_slot gauge\nstek_current_slot{{{l}}} {}", s.slot);
            let _ = writeln!(o, "# HELP stek_ring_keys Keys in the ring.\n# TYPE stek_ring_keys gauge\nstek_ring_keys{{{l}}} {}", s.keys.len());
            let _ = writeln!(o, "# HELP stek_ring_shared_keys Keys in the ring that are the group's shared keys.\n# TYPE stek_ring_shared_keys gauge\nstek_ring_shared_keys{{{l}}} {shared}");
            let fallback = u8::from(s.encrypting == "local_fallback");
            let stale = u8::from(s.encrypting == "stale");
            let _ = writeln!(o, "# HELP stek_encrypting_local_fallback 1 when a local random key encrypts (no recent shared key).\n# TYPE stek_encrypting_local_fallback gauge\nstek_encrypting_local_fallback{{{l}}} {fallback}");
            let _ = writeln!(o, "# HELP stek_forward_secrecy_at_risk 1 when a server may still encrypt with a key that has left the window (its reload fails): see stek status.\n# TYPE stek_forward_secrecy_at_risk gauge\nstek_forward_secrecy_at_risk{{{l}}} {}", u8::from(s.forward_secrecy_at_risk.is_some()));
            for sink in &s.sinks {
                if let Some(slot) = sink.applied_slot {
                    let _ = writeln!(
                        o,
                        "stek_sink_applied_slot{{{l},sink=\"{}\"}} {slot}",
                        sink.name
                    );
                }
            }
            // Always announced (so rules can rely on the name); one sample per endpoint
            // whose last check read the served key: 1 match, 0 mismatch.
            let _ = writeln!(o, "# HELP stek_served_key_match 1 when the server at endpoint (--verify-tls) issues tickets under the ring's encrypting key, 0 when under another key; no sample while it cannot be read (see stek_served_key_readable).\n# TYPE stek_served_key_match gauge");
            for sv in &s.served {
                let v = match sv.state {
                    ServedState::Match => 1,
                    ServedState::Mismatch => 0,
                    ServedState::Unverifiable | ServedState::Error => continue,
                };
                let _ = writeln!(
                    o,
                    "stek_served_key_match{{{l},endpoint=\"{}\"}} {v}",
                    label_value(&sv.endpoint)
                );
            }
            if !s.served.is_empty() {
                let _ = writeln!(o, "# HELP stek_served_key_readable 1 when the last --verify-tls check of endpoint read the key name on its tickets; 0 when it could not connect, or the server issues no ticket or no key name.\n# TYPE stek_served_key_readable gauge");
                for sv in &s.served {
                    let v = u8::from(matches!(
                        sv.state,
                        ServedState::Match | ServedState::Mismatch
                    ));
                    let _ = writeln!(
                        o,
                        "stek_served_key_readable{{{l},endpoint=\"{}\"}} {v}",
                        label_value(&sv.endpoint)
                    );
                }
            }
            let _ = writeln!(o, "# HELP stek_encrypting_stale 1 when an older shared key encrypts because the current one is missing.\n# TYPE stek_encrypting_stale gauge\nstek_encrypting_stale{{{l}}} {stale}");
            if let Some(t) = s.last_sync {
                let _ = writeln!(o, "# HELP stek_last_sync_timestamp_seconds Last successful store read.\n# TYPE stek_last_sync_timestamp_seconds gauge\nstek_last_sync_timestamp_seconds{{{l}}} {t:.3}");
                let _ = writeln!(o, "# HELP stek_staleness_seconds Seconds since the last successful store read.\n# TYPE stek_staleness_seconds gauge\nstek_staleness_seconds{{{l}}} {:.3}", (now.as_secs_f64() - t).max(0.0));
            }
            if let Some(off) = s.clock_offset {
                let _ = writeln!(o, "# HELP stek_clock_offset_seconds This host's clock minus the store's.\n# TYPE stek_clock_offset_seconds gauge\nstek_clock_offset_seconds{{{l}}} {off:.3}");
            }
            let _ = writeln!(o, "# HELP stek_slot_conflicts_total Held slots whose record in the store later changed to another valid key (the held key is kept; hosts disagree on the slot).\n# TYPE stek_slot_conflicts_total counter\nstek_slot_conflicts_total{{{l}}} {}", s.slot_conflicts);
            let _ = writeln!(o, "# HELP stek_records_rejected_total Records rejected, by reason.\n# TYPE stek_records_rejected_total counter");
            for (reason, n) in &s.rejected {
                let _ = writeln!(
                    o,
                    "stek_records_rejected_total{{{l},reason=\"{reason}\"}} {n}"
                );
            }
        }
        let _ = writeln!(o, "# HELP stek_sink_failures_total Sink failures, by sink.\n# TYPE stek_sink_failures_total counter");
        for (sink, n) in &g.sink_failures {
            let _ = writeln!(o, "stek_sink_failures_total{{sink=\"{sink}\"}} {n}");
        }
        type Field = fn(&HaproxySocketStatus) -> u64;
        let haproxy: [(&str, &str, &str, Field); 3] = [
            (
                "stek_haproxy_socket_up",
                "gauge",
                "1 when the last check found HAProxy's rings holding stek's keys.",
                |h| u64::from(h.ok),
            ),
            (
                "stek_haproxy_keys_pushed_total",
                "counter",
                "Keys pushed with `set ssl tls-key`.",
                |h| h.keys_pushed,
            ),
            (
                "stek_haproxy_check_failures_total",
                "counter",
                "Failed checks of HAProxy's admin socket.",
                |h| h.failures,
            ),
        ];
        let sockets = g.status.as_ref().map_or(&[][..], |s| &s.haproxy[..]);
        for (name, kind, help, field) in haproxy.iter().filter(|_| !sockets.is_empty()) {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for h in sockets {
                let _ = writeln!(
                    o,
                    "{name}{{socket=\"{}\"}} {}",
                    label_value(&h.socket),
                    field(h)
                );
            }
        }
        if !g.memcached.is_empty() {
            let snaps: Vec<_> = g.memcached.iter().map(|s| s.snapshot()).collect();
            let _ = writeln!(o, "# HELP stek_memcached_refused_total Memcached connections refused, by reason: forbidden (a unix peer neither root, stek's uid nor in --memcached-group), peer_limit (--memcached-max-connections-per-peer), max_connections.\n# TYPE stek_memcached_refused_total counter");
            for why in Refusal::ALL {
                let n: u64 = snaps.iter().map(|s| s.refused(why)).sum();
                let _ = writeln!(
                    o,
                    "stek_memcached_refused_total{{reason=\"{}\"}} {n}",
                    why.label()
                );
            }
            let timeouts: u64 = snaps.iter().map(|s| s.request_timeouts).sum();
            let _ = writeln!(o, "# HELP stek_memcached_request_timeouts_total Memcached connections closed because a request, or the reading of its reply, took longer than --memcached-request-timeout.\n# TYPE stek_memcached_request_timeouts_total counter\nstek_memcached_request_timeouts_total {timeouts}");
            let open: u64 = snaps.iter().map(|s| s.curr_connections).sum();
            let _ = writeln!(o, "# HELP stek_memcached_connections Open memcached connections.\n# TYPE stek_memcached_connections gauge\nstek_memcached_connections {open}");
        }
        if !g.created.is_empty()
            || g.publish_errors > 0
            || g.last_publish.is_some()
            || !g.slot_conflicts.is_empty()
        {
            let _ = writeln!(o, "# HELP stek_generator_keys_created_total Keys this generator created (won the slot), by group.\n# TYPE stek_generator_keys_created_total counter");
            for (group, n) in &g.created {
                let _ = writeln!(
                    o,
                    "stek_generator_keys_created_total{{group=\"{group}\"}} {n}"
                );
            }
            let _ = writeln!(o, "# HELP stek_generator_slot_conflicts_total Slot values this generator found wrong, by group and reason: garbage, mismatch, bad_signature, oversize (each replaced), foreign_signer (left in place), vanished (a slot it won was gone: recreated).\n# TYPE stek_generator_slot_conflicts_total counter");
            for ((group, reason), n) in &g.slot_conflicts {
                let _ = writeln!(
                    o,
                    "stek_generator_slot_conflicts_total{{group=\"{}\",reason=\"{reason}\"}} {n}",
                    label_value(group)
                );
            }
            let _ = writeln!(o, "# HELP stek_generator_publish_errors_total Failed publishing rounds.\n# TYPE stek_generator_publish_errors_total counter\nstek_generator_publish_errors_total {}", g.publish_errors);
            if let Some(t) = g.last_publish {
                let _ = writeln!(o, "# HELP stek_generator_last_publish_timestamp_seconds Last successful publishing round.\n# TYPE stek_generator_last_publish_timestamp_seconds gauge\nstek_generator_last_publish_timestamp_seconds {t:.3}");
            }
        }
        o
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Why the metrics endpoint could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum MetricsBindError {
    /// The address is neither `IP:PORT` nor `HOST:PORT`.
    NotAnAddress {
        /// The address as given.
        addr: String,
        /// The parser's error.
        source: std::net::AddrParseError,
    },
    /// A host name that does not resolve.
    Resolve {
        /// The address as given.
        addr: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The address is not a loopback address and `--metrics-allow-remote` was not given.
    NotLoopback {
        /// The address.
        addr: SocketAddr,
    },
    /// Binding the address failed.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The system's error.
        source: std::io::Error,
    },
}

impl std::fmt::Display for MetricsBindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsBindError::NotAnAddress { addr, .. } => {
                write!(f, "{addr:?} is not IP:PORT or HOST:PORT")
            }
            MetricsBindError::Resolve { addr, .. } => write!(f, "cannot resolve {addr:?}"),
            MetricsBindError::NotLoopback { addr } => write!(
                f,
                "{addr} is not a loopback address: the metrics endpoint listens on 127.0.0.0/8 \
                 or ::1 unless --metrics-allow-remote"
            ),
            MetricsBindError::Bind { addr, .. } => write!(f, "cannot listen on {addr}"),
        }
    }
}

impl std::error::Error for MetricsBindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MetricsBindError::NotAnAddress { source, .. } => Some(source),
            MetricsBindError::Bind { source, .. } => Some(source),
            MetricsBindError::Resolve { source, .. } => Some(source),
            MetricsBindError::NotLoopback { .. } => None,
        }
    }
}

/// Binds the metrics endpoint at `addr`: `IP:PORT`, or `HOST:PORT` resolved (`localhost:9155`).
/// Every address it stands for must be loopback unless `allow_remote` (the status names keys by
/// their public names; an operator who scrapes from elsewhere says so). The first address that
/// binds is used.
pub async fn bind(addr: &str, allow_remote: bool) -> Result<TcpListener, MetricsBindError> {
    let addrs: Vec<SocketAddr> = match addr.parse::<SocketAddr>() {
        Ok(sa) => vec![sa],
        Err(source) => {
            // Not an IP literal: a host name, which must come with a port.
            if addr
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(MetricsBindError::NotAnAddress {
                    addr: addr.to_owned(),
                    source,
                });
            }
            tokio::net::lookup_host(addr)
                .await
                .map_err(|source| MetricsBindError::Resolve {
                    addr: addr.to_owned(),
                    source,
                })?
                .collect()
        }
    };
    // IPv4 first: `localhost:9155` then listens where most scrapers look (127.0.0.1).
    let mut addrs = addrs;
    addrs.sort_by_key(SocketAddr::is_ipv6);
    if let Some(&far) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        if !allow_remote {
            return Err(MetricsBindError::NotLoopback { addr: far });
        }
    }
    let mut last = None;
    for sa in addrs {
        match TcpListener::bind(sa).await {
            Ok(l) => return Ok(l),
            Err(source) => last = Some(MetricsBindError::Bind { addr: sa, source }),
        }
    }
    Err(last.unwrap_or_else(|| MetricsBindError::Resolve {
        addr: addr.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
    }))
}

/// Serves `GET /metrics` and `GET /status` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    clock: Arc<dyn crate::clock::Clock>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (mut sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { debug!("metrics accept: {e}"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = &mut shutdown => return,
        };
        let metrics = metrics.clone();
        let clock = clock.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request head (capped at 4 KiB, 5 s).
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    let m = sock.read(&mut buf[n..]).await?;
                    if m == 0 {
                        break;
                    }
                    n += m;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let line = buf[..n].split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (code, ctype, body) = match (method, path) {
                ("GET", "/metrics") => (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    metrics.render(clock.now()),
                ),
                ("GET", "/status") => {
                    match (metrics.status(), metrics.generator_status(clock.now())) {
                        (Some(s), _) => (
                            "200 OK",
                            "application/json",
                            serde_json::to_string_pretty(&s).unwrap_or_default(),
                        ),
                        (None, Some(g)) => (
                            "200 OK",
                            "application/json",
                            serde_json::to_string_pretty(&g).unwrap_or_default(),
                        ),
                        (None, None) => (
                            "503 Service Unavailable",
                            "text/plain",
                            "no ring yet\n".into(),
                        ),
                    }
                }
                // The same verdict as `stek status`: 503 when critical (including a loop that
                // stopped rewriting its status), 200 otherwise, the problems in the body.
                ("GET", "/healthz") => match metrics
                    .status()
                    .map(|s| s.verdict(clock.now().as_secs_f64()))
                    .or_else(|| {
                        let now = clock.now();
                        metrics
                            .generator_status(now)
                            .map(|g| g.verdict(now.as_secs_f64()))
                    }) {
                    Some(v) => {
                        let mut body = format!("{}\n", v.level.word());
                        for (level, what) in &v.problems {
                            body.push_str(&format!("{}: {what}\n", level.word()));
                        }
                        let code = if v.level == crate::status::Level::Critical {
                            "503 Service Unavailable"
                        } else {
                            "200 OK"
                        };
                        (code, "text/plain", body)
                    }
                    None => (
                        "503 Service Unavailable",
                        "text/plain",
                        "CRITICAL\nno ring yet\n".into(),
                    ),
                },
                ("GET", _) => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics, /status or /healthz\n".into(),
                ),
                _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
            };
            let head = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_keys_are_one_sample_per_endpoint_read() {
        use crate::status::ServedStatus;
        let mut st: Status = serde_json::from_str(
            r#"{"group":"web","period":4,"lifetime":8,"slot":7,"encrypting":"current",
            "encrypting_name":"aa","keys":[],"last_sync":null,"staleness":null,
            "clock_offset":null,"rejected":{},"sink_failures":{},"updated_at":1.0}"#,
        )
        .unwrap();
        let m = Metrics::new();
        m.set_status(st.clone());
        let text = m.render(Duration::from_secs(2));
        // Announced without --verify-tls, with no sample.
        assert!(
            text.contains("# TYPE stek_served_key_match gauge"),
            "{text}"
        );
        assert!(!text.contains("stek_served_key_match{"), "{text}");
        assert!(!text.contains("# HELP stek_served_key_readable"), "{text}");
        let entry = |endpoint: &str, state| ServedStatus {
            endpoint: endpoint.into(),
            state,
            served_name: None,
            served_slot: None,
            expected_name: "aa".into(),
            since: 1.0,
            checked_at: 1.0,
            detail: None,
        };
        st.served = vec![
            entry("a:1", ServedState::Match),
            entry("b:2", ServedState::Mismatch),
            entry("c:3", ServedState::Error),
            entry("d\"@e:4", ServedState::Unverifiable),
        ];
        m.set_status(st);
        let text = m.render(Duration::from_secs(2));
        for line in [
            "stek_served_key_match{group=\"web\",endpoint=\"a:1\"} 1",
            "stek_served_key_match{group=\"web\",endpoint=\"b:2\"} 0",
            "stek_served_key_readable{group=\"web\",endpoint=\"a:1\"} 1",
            "stek_served_key_readable{group=\"web\",endpoint=\"b:2\"} 1",
            "stek_served_key_readable{group=\"web\",endpoint=\"c:3\"} 0",
            "stek_served_key_readable{group=\"web\",endpoint=\"d\\\"@e:4\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        assert!(!text.contains("stek_served_key_match{group=\"web\",endpoint=\"c:3\"}"));
    }

    #[tokio::test]
    async fn bind_errors_say_what_failed_and_keep_the_cause() {
        use std::error::Error as _;
        // Host names resolve: localhost is loopback.
        let l = bind("localhost:0", false).await.unwrap();
        assert_eq!(l.local_addr().unwrap().ip(), std::net::Ipv4Addr::LOCALHOST);
        let e = bind("localhost", false).await.unwrap_err();
        assert!(matches!(e, MetricsBindError::NotAnAddress { .. }), "{e:?}");
        assert!(e.source().unwrap().is::<std::net::AddrParseError>());
        let e = bind("no-such-host.invalid:9100", false).await.unwrap_err();
        assert!(matches!(e, MetricsBindError::Resolve { .. }), "{e:?}");
        assert!(e.source().unwrap().is::<std::io::Error>());
        let e = bind("0.0.0.0:0", false).await.unwrap_err();
        assert!(e.to_string().contains("not a loopback address"), "{e}");
        assert!(e.to_string().contains("--metrics-allow-remote"), "{e}");
        assert!(e.source().is_none());
        // Allowed when asked for (bound on every interface, so no traffic leaves the host here).
        let any = bind("0.0.0.0:0", true).await.unwrap();
        assert!(any.local_addr().unwrap().ip().is_unspecified());
        let taken = bind("127.0.0.1:0", false).await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = bind(&addr, false).await.unwrap_err();
        assert!(matches!(e, MetricsBindError::Bind { .. }), "{e:?}");
        assert_eq!(e.to_string(), format!("cannot listen on {addr}"));
        assert!(e.source().unwrap().is::<std::io::Error>());
    }

    /// Words of the README that start like a metric and are not one.
    const NOT_METRICS: &[&str] = &["stek_core", "stek_rustls"];

    /// Every metric stek can serve (an agent with every kind of sink and a memcached server,
    /// and a generator) is documented in the README.
    #[test]
    fn every_metric_served_is_in_the_readme() {
        let readme = include_str!("../../../README.md");
        let sched =
            stek_core::Schedule::new(Duration::from_secs(4), Duration::from_secs(4)).unwrap();
        let ring = stek_core::Ring::build(
            &sched,
            Duration::from_secs(400),
            &Default::default(),
            &mut stek_core::LocalKeys::new(),
            1,
        )
        .unwrap();
        let mut st = Status::of(&ring, "g", Duration::from_secs(400));
        st.last_sync = Some(399.0);
        st.clock_offset = Some(0.1);
        st.rejected.insert("oversize".into(), 1);
        st.haproxy = vec![HaproxySocketStatus {
            socket: "/run/h.sock".into(),
            ok: true,
            error: None,
            rings: vec![],
            keys_pushed: 1,
            failures: 0,
        }];
        st.sinks = vec![crate::status::SinkStatus {
            name: "on_change".into(),
            failing: None,
            applied_slot: Some(100),
            applied_name: Some("aa".into()),
            applied_since: Some(400.0),
        }];
        st.served = vec![crate::status::ServedStatus {
            endpoint: "127.0.0.1:443".into(),
            state: crate::status::ServedState::Match,
            served_name: Some("aa".into()),
            served_slot: Some(100),
            expected_name: "aa".into(),
            since: 400.0,
            checked_at: 400.0,
            detail: None,
        }];
        let agent = Metrics::new();
        agent.set_status(st);
        agent.sink_failed("on_change");
        agent.store_error();
        agent.clock_stepped(2.0);
        agent.add_memcached(Arc::new(MemcachedStats::new()));
        let generator = Metrics::new();
        generator.key_created("g", Duration::from_secs(400));
        generator.slot_conflict("g", "garbage");
        generator.published(Duration::from_secs(400));
        generator.publish_error();
        let mut names = std::collections::BTreeSet::new();
        for text in [
            agent.render(Duration::from_secs(400)),
            generator.render(Duration::from_secs(400)),
        ] {
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                names.insert(name.to_owned());
            }
        }
        assert!(names.len() > 25, "{names:?}");
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !readme.contains(n.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "metrics missing from the README: {missing:?}"
        );
        // And the other way: every metric the README names is one stek serves (a documented
        // name that no code makes is a promise nothing keeps).
        let documented: std::collections::BTreeSet<&str> = readme
            .match_indices("stek_")
            .map(|(at, _)| {
                let rest = &readme[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .filter(|n| !NOT_METRICS.contains(n))
            .collect();
        let unserved: Vec<&&str> = documented.iter().filter(|n| !names.contains(**n)).collect();
        assert!(
            unserved.is_empty(),
            "the README names metrics stek does not serve: {unserved:?}"
        );
    }

    #[test]
    fn memcached_refusals_are_summed_by_reason() {
        let m = Metrics::new();
        assert!(!m.render(Duration::ZERO).contains("stek_memcached"));
        let (a, b) = (
            Arc::new(MemcachedStats::new()),
            Arc::new(MemcachedStats::new()),
        );
        a.connection_refused(Refusal::Forbidden);
        b.connection_refused(Refusal::Forbidden);
        b.connection_refused(Refusal::PeerLimit);
        b.request_timed_out();
        m.add_memcached(a);
        m.add_memcached(b);
        let text = m.render(Duration::ZERO);
        for want in [
            "stek_memcached_refused_total{reason=\"forbidden\"} 2\n",
            "stek_memcached_refused_total{reason=\"peer_limit\"} 1\n",
            "stek_memcached_refused_total{reason=\"max_connections\"} 0\n",
            "stek_memcached_request_timeouts_total 1\n",
            "stek_memcached_connections 0\n",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
    }

    #[test]
    fn haproxy_sockets_in_metrics() {
        let m = Metrics::new();
        let ring = {
            let sched =
                stek_core::Schedule::new(Duration::from_secs(4), Duration::from_secs(4)).unwrap();
            stek_core::Ring::build(
                &sched,
                Duration::from_secs(400),
                &Default::default(),
                &mut stek_core::LocalKeys::new(),
                1,
            )
            .unwrap()
        };
        let mut st = Status::of(&ring, "g", Duration::from_secs(400));
        st.haproxy = vec![HaproxySocketStatus {
            socket: "/run/a \"b\".sock".into(),
            ok: false,
            error: Some("cannot connect".into()),
            rings: vec!["/run/stek/haproxy/tickets.keys".into()],
            keys_pushed: 3,
            failures: 1,
        }];
        m.set_status(st);
        m.sink_failed("haproxy");
        m.clock_stepped(-3600.0);
        let text = m.render(Duration::ZERO);
        let l = r#"socket="/run/a \"b\".sock""#;
        assert!(
            text.contains(&format!("stek_haproxy_socket_up{{{l}}} 0")),
            "{text}"
        );
        assert!(text.contains(&format!("stek_haproxy_keys_pushed_total{{{l}}} 3")));
        assert!(text.contains(&format!("stek_haproxy_check_failures_total{{{l}}} 1")));
        assert!(text.contains("stek_sink_failures_total{sink=\"haproxy\"} 1"));
        assert!(text.contains("stek_clock_steps_total 1"));
        assert!(text.contains("stek_clock_last_step_seconds -3600.000"));
        assert_eq!(m.status().unwrap().sink_failures["haproxy"], 1);
    }
}
