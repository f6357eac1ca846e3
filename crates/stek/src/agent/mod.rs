//! The agent: one host's keys of one group, from the store to its TLS servers.
//!
//! ```text
//!  store ──read/notify──▶ syncer ──verified keys, store state──▶ rotator ──ring──▶ sinks
//!    (its own task; every read bounded)    (mpsc)     (driven by the clock)   (in order)
//! ```
//!
//! - The [`syncer`] is the only part that talks to the store. It runs in its own task, so a
//!   store that hangs for many periods stalls it alone.
//! - The [`rotator`] holds the keys. The loop in [`run`] wakes at every slot boundary (and at
//!   least once a second, so a stepped wall clock is followed within a second), erases the keys
//!   that left the window, rebuilds the ring and hands every changed ring to the sinks. It never
//!   awaits the store.
//! - The sinks ([`crate::sink`]) get the ring in the order given; the loop counts their
//!   failures, writes the status (`status.json` when asked, and [`Metrics`]) and logs.
//! - With `--verify-tls`, the [`verify`] task checks the key the servers actually serve after
//!   each change and every heartbeat; the loop hands it names and reads its verdicts, never
//!   waiting for it.
//!
//! `stek up`, `stek agent` ([`run_on_host`]: key files, memcached, HAProxy, reload command)
//! and the in-process embedding ([`crate::feed::run_embedded_agent`]: a ring feed) all run this
//! one loop.

pub mod rotator;
pub mod syncer;
pub mod verify;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use stek_core::{Ring, Schedule, Slot};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::clock::{Clock, ClockWatch};
use crate::files::{DirError, KeyDir};
use crate::memcached::{self, Access, Limits, Listener, NghttpxCipher, ServeOptions};
use crate::metrics::Metrics;
use crate::sink::{
    haproxy_keys_path, ApacheSink, Delivered, H2oSink, HaproxyRuntime, HaproxySink, Health,
    LighttpdSink, NginxKeySize, NginxSink, OnChange, Sink, SinkKind, TableSink,
};
use crate::status::{ServedStatus, Status};
use crate::store::Store;

pub use rotator::{Change, Rotator};
pub use syncer::{
    fetch_window, Opener, PlainOpener, SealedOpener, SyncError, SyncReport, Synced, Syncer,
};

/// How often the loop reads the wall clock when no boundary is due sooner: a clock stepped
/// forward past a boundary is followed within this long.
const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// How long the first ring waits for the store's first answer at most.
/// The status document in the key directory (read by `stek status`).
const STATUS_FILE: &str = "status.json";

const FIRST_READ_WAIT: Duration = Duration::from_secs(2);

/// What an agent is: its group, schedule and failure policy.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The group.
    pub group: String,
    /// The group's schedule (the generator's period and lifetime).
    pub schedule: Schedule,
    /// How many periods an old shared key may keep encrypting when the current one is missing.
    pub max_stale: u64,
    /// The safety-net poll interval of the syncer (jittered by ±20%).
    pub poll: Duration,
    /// The directory to write the status document (`status.json`) in after every change, if
    /// any.
    pub status_dir: Option<KeyDir>,
    /// The TLS servers whose served key is checked against the ring (`--verify-tls`).
    pub verify_tls: Vec<verify::Target>,
}

impl AgentConfig {
    /// An agent of `group` on `schedule` with the defaults: one stale period, the default
    /// poll, no status file.
    pub fn new(group: impl Into<String>, schedule: Schedule) -> AgentConfig {
        AgentConfig {
            group: group.into(),
            schedule,
            max_stale: 1,
            poll: default_poll(&schedule),
            status_dir: None,
            verify_tls: Vec::new(),
        }
    }
}

/// The default poll interval for `schedule`: a quarter period, at most 30 s, at least 250 ms.
pub fn default_poll(schedule: &Schedule) -> Duration {
    (schedule.period() / 4).clamp(Duration::from_millis(250), Duration::from_secs(30))
}

/// What one sink did with a delivery or a tick: the files it wrote join `written`; a failure is
/// counted and logged (the sink's previous files stay valid). Returns whether it succeeded.
fn took(
    result: std::io::Result<Option<Delivered>>,
    sink: &str,
    metrics: &Metrics,
    written: &mut Vec<PathBuf>,
) -> bool {
    match result {
        Ok(Some(Delivered::Files(files))) => {
            written.extend(files);
            true
        }
        Ok(_) => true,
        Err(e) => {
            metrics.sink_failed(sink);
            error!("could not write the {sink} files (the previous ones stay valid): {e}");
            false
        }
    }
}

/// One line for the files written by one delivery or tick, if any.
fn log_written(written: &[PathBuf]) {
    if !written.is_empty() {
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        info!("files written: {}", files.join(", "));
    }
}

#[allow(clippy::too_many_arguments)]
/// Runs one agent until `shutdown` resolves: the syncer in a task of its own, the rotator and
/// the sinks here. `metrics` gets the status and the counters (and so `/status`, `/metrics`).
pub async fn run<S: Store, O: Opener + 'static>(
    store: Arc<S>,
    opener: O,
    config: AgentConfig,
    sinks: Vec<Box<dyn Sink>>,
    scope: &str,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let AgentConfig {
        group,
        schedule,
        max_stale,
        poll,
        status_dir,
        verify_tls,
    } = config;
    let (reports_tx, mut reports) = mpsc::channel(4);
    let (held_tx, held_rx) = watch::channel(BTreeSet::<Slot>::new());
    let syncer = Syncer::new(store, opener, group.clone(), schedule);
    let syncing = tokio::spawn(syncer.run(clock.clone(), poll, held_rx, reports_tx));
    let mut rotator = Rotator::new(group.clone(), schedule, max_stale);
    let verifier = (!verify_tls.is_empty())
        .then(|| verify::Verifier::spawn(group.clone(), verify_tls, &schedule, clock.clone()));
    // Verdicts that change are reported at once (the verifier never blocks this loop).
    let mut served = verifier.as_ref().map(verify::Verifier::subscribe);
    let mut out = Outlet {
        group,
        scope: scope.to_owned(),
        sinks,
        last_slot: None,
        health: Vec::new(),
        metrics,
        status_dir,
        last_risk: std::cell::RefCell::new(None),
        in_fallback: false,
        verifier,
    };
    let mut steps = ClockWatch::new(schedule.period() / 4);
    let mut reported = false;
    let heartbeat = crate::status::heartbeat(schedule.period());
    // Monotonic: a wall clock stepped back must not stop the heartbeat.
    let mut last_status: Option<Instant> = None;
    let mut syncer_alive = true;
    tokio::pin!(shutdown);
    // The first ring waits for the first read of the store, briefly: a store that answers at
    // once spares the servers a ring of local keys and a second delivery right after it; one that
    // does not answer gets local keys now and the shared ones when it does.
    let first_wait = FIRST_READ_WAIT.min(
        schedule
            .next_rotation(clock.now())
            .saturating_sub(clock.now()),
    );
    tokio::select! {
        report = reports.recv() => {
            reported = true;
            syncer_alive = out.take(&mut rotator, report, clock.now());
        }
        _ = tokio::time::sleep(first_wait) => {}
        _ = &mut shutdown => {
            syncing.abort();
            return;
        }
    }
    loop {
        let now = clock.now();
        if let Some(j) = steps.observe(now, Instant::now()) {
            out.metrics.clock_stepped(j.secs_f64());
            warn!(
                "group {}: the wall clock jumped {} by {}: the ring follows it; resumption across hosts needs their clocks to agree",
                out.group,
                if j.forward { "forward" } else { "back" },
                crate::duration::format(j.size)
            );
        }
        let changed = match rotator.rotate(now) {
            Ok(Some((change, ring))) => {
                out.deliver(ring, change);
                if let (Some(v), Change::Ring) = (&out.verifier, change) {
                    v.ring_changed(ring, now);
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                error!(
                    "group {}: could not make a local key: {}",
                    out.group,
                    crate::error::Chain(&e)
                );
                false
            }
        };
        out.tick(now);
        held_tx.send_if_modified(|held| {
            let now_held = rotator.held();
            let differs = *held != now_held;
            *held = now_held;
            differs
        });
        let health_changed = out.poll_health();
        // A heartbeat even when nothing changed: `stek status` tells a live agent from a dead
        // one by the age of what it reads.
        let beat = last_status.is_none_or(|t| t.elapsed() >= heartbeat);
        if changed || reported || health_changed || beat {
            if let Some(status) = rotator.status(now) {
                out.report(status);
                last_status = Some(Instant::now());
            }
        }
        reported = false;

        let wake = schedule
            .next_rotation(now)
            .saturating_sub(clock.now())
            .min(CLOCK_CHECK)
            + Duration::from_millis(1);
        tokio::select! {
            _ = tokio::time::sleep(wake) => {}
            true = served_changed(served.as_mut()) => reported = true,
            report = reports.recv(), if syncer_alive => {
                reported = true;
                syncer_alive = out.take(&mut rotator, report, clock.now());
            }
            _ = &mut shutdown => break,
        }
    }
    syncing.abort();
}

/// Resolves with `true` when the verifier's verdicts change; at once with `false` when there is
/// no verifier or it ended (the loop's branch is then skipped).
async fn served_changed(rx: Option<&mut watch::Receiver<Vec<ServedStatus>>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => false,
    }
}

/// The loop's outputs: the sinks, the status file and the metrics.
struct Outlet {
    group: String,
    /// Where a local fallback key is valid ("this host", "this process"), for the logs.
    scope: String,
    sinks: Vec<Box<dyn Sink>>,
    /// The slot of the last ring delivered (a change within a slot is an update, not a rotation).
    last_slot: Option<Slot>,
    /// The sinks' health at the last look.
    health: Vec<Health>,
    metrics: Arc<Metrics>,
    status_dir: Option<KeyDir>,
    /// The last ring delivered encrypted with a local key (to log the end of a fallback).
    in_fallback: bool,
    /// The forward-secrecy risk last reported (logged once per change).
    last_risk: std::cell::RefCell<Option<String>>,
    /// The `--verify-tls` task, if asked for.
    verifier: Option<verify::Verifier>,
}

impl Outlet {
    /// Hands a syncer report to the rotator and counts a failed read. Returns whether the syncer
    /// is still there (`None`: it ended, which only a panic does).
    fn take(&self, rotator: &mut Rotator, report: Option<SyncReport>, now: Duration) -> bool {
        let Some(report) = report else {
            error!("group {}: the store reader stopped; rotating on the keys held (restart stek to read the store again)", self.group);
            return false;
        };
        if rotator.take(report, now) {
            self.metrics.store_error();
        }
        true
    }

    fn deliver(&mut self, ring: &Ring, change: Change) {
        match change {
            Change::Ring => {
                let verb = if self.last_slot == Some(ring.current()) {
                    "updated the ring of"
                } else {
                    "rotated to"
                };
                self.last_slot = Some(ring.current());
                rotator::log_ring(&self.group, ring, verb, &self.scope);
                let fallback = ring.encrypting() == stek_core::Encrypting::LocalFallback;
                if self.in_fallback && !fallback {
                    info!(
                        "group {}: FALLBACK ended: shared key {} encrypts again; tickets resume across hosts",
                        self.group,
                        ring.encrypting_entry().key.name()
                    );
                }
                self.in_fallback = fallback;
            }
            Change::Ahead => {
                let served = self.sinks.iter().any(|s| s.serves_ahead());
                rotator::log_ahead(&self.group, ring, served);
            }
        }
        let mut written = Vec::new();
        let mut complete = true;
        // A change of the keys ahead alone is nothing to install: only the sinks that serve
        // those keys hear of it (the others would rewrite the same files and reload for it).
        let sinks = self
            .sinks
            .iter_mut()
            .filter(|s| change == Change::Ring || s.serves_ahead());
        for sink in sinks {
            let name = sink.name();
            complete &= took(
                sink.deliver(ring).map(Some),
                name,
                &self.metrics,
                &mut written,
            );
        }
        log_written(&written);
        if complete && change == Change::Ring {
            // The first complete set of files: servers ordered after this service may start.
            // (A change of the keys ahead reaches no file sink: it completes no set of files.)
            crate::notify::ready();
        }
    }

    /// Gives every sink the time (`Sink::tick`): the sinks whose files depend on it write now.
    fn tick(&mut self, now: Duration) {
        let mut written = Vec::new();
        for sink in &mut self.sinks {
            let name = sink.name();
            took(sink.tick(now), name, &self.metrics, &mut written);
        }
        log_written(&written);
    }

    /// Looks at the sinks' health; counts failures they had on their own time. Returns whether
    /// anything changed since the last look.
    fn poll_health(&mut self) -> bool {
        let now: Vec<Health> = self.sinks.iter().map(|s| s.health()).collect();
        if now == self.health {
            return false;
        }
        for (i, (sink, h)) in self.sinks.iter().zip(&now).enumerate() {
            let before = self.health.get(i).map_or(0, |b| b.failures);
            for _ in before..h.failures {
                self.metrics.sink_failed(sink.name());
            }
        }
        self.health = now;
        true
    }

    fn report(&self, mut status: Status) {
        status.sink_failures = self.metrics.sink_failures();
        status.sinks = self
            .sinks
            .iter()
            .zip(&self.health)
            // HAProxy's sockets have their own section.
            .filter(|(_, h)| h.haproxy.is_empty() && (h.failing.is_some() || h.applied.is_some()))
            .map(|(sink, h)| crate::status::SinkStatus {
                name: sink.name().to_owned(),
                failing: h.failing.clone(),
                applied_slot: h.applied.as_ref().map(|a| a.slot),
                applied_name: h.applied.as_ref().map(|a| a.name.clone()),
                applied_since: h.applied.as_ref().map(|a| a.since as f64),
            })
            .collect();
        if let Some(v) = &self.verifier {
            status.served = v.served();
        }
        let window: Vec<u64> = status.keys.iter().map(|k| k.slot).collect();
        status.forward_secrecy_at_risk = status
            .sinks
            .iter()
            .find_map(|s| s.at_risk(&window))
            .or_else(|| status.served.iter().find_map(|s| s.at_risk(&window)));
        if let Some(why) = &status.forward_secrecy_at_risk {
            // Logged at every status while it lasts would flood: once per change of text.
            if self.last_risk.borrow().as_deref() != Some(why.as_str()) {
                error!("group {}: forward secrecy at risk: {why}", self.group);
            }
        } else if self.last_risk.borrow().is_some() {
            info!("group {}: forward secrecy no longer at risk: every server took a key in the window", self.group);
        }
        self.last_risk
            .replace(status.forward_secrecy_at_risk.clone());
        status.haproxy = self
            .health
            .iter()
            .flat_map(|h| h.haproxy.iter().cloned())
            .collect();
        if let Some(dir) = &self.status_dir {
            match serde_json::to_vec_pretty(&status) {
                Ok(bytes) => {
                    if let Err(e) = dir.write_atomic(STATUS_FILE, &bytes) {
                        warn!(
                            "could not write {}: {e}",
                            dir.path().join(STATUS_FILE).display()
                        );
                    }
                }
                Err(e) => warn!("could not encode the status: {e}"),
            }
        }
        self.metrics.set_status(status);
    }
}

/// How an agent delivers on its host (`stek up`, `stek agent`): key files, the memcached
/// table, HAProxy's runtime API, the reload command.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The key directory (absolute, memory-backed, created, opened and checked).
    pub dir: KeyDir,
    /// Which file sinks to write.
    pub sinks: Vec<SinkKind>,
    /// The size (and so the bytes) of the nginx key files.
    pub nginx_key_size: NginxKeySize,
    /// The command to run after each change of the files.
    pub on_change: Option<String>,
    /// Limits of the memcached-protocol server.
    pub memcached_limits: Limits,
    /// Who is served on the memcached unix sockets.
    pub memcached_access: Access,
    /// The layout of the keys served to nghttpx (`nghttpx:tls-ticket-key`).
    pub nghttpx_cipher: NghttpxCipher,
    /// HAProxy admin sockets whose rings follow the HAProxy keys file over the runtime API
    /// (implies the HAProxy file sink).
    pub haproxy_sockets: Vec<PathBuf>,
    /// The host's TLS servers whose served key is checked against the ring (`--verify-tls`).
    pub verify_tls: Vec<verify::Target>,
}

impl HostOptions {
    /// The longest wait between two attempts to reach a failing HAProxy socket: a quarter period,
    /// between 1 and 5 s, so a HAProxy that comes back is in step well within a period.
    pub fn haproxy_max_backoff(schedule: &Schedule) -> Duration {
        (schedule.period() / 4).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }

    /// Opens (creating them 0700 if absent) and checks the subdirectories of the key directory
    /// that the host's file sinks write, so that an unsafe one (a symbolic link, another owner,
    /// writable by others) stops `stek up` and `stek agent` at start instead of failing every
    /// delivery. The sinks open and check them again at every write.
    ///
    /// Then erases the temporary files a crashed stek may have left in them
    /// ([`KeyDir::erase_temporaries`]).
    pub fn open_dirs(&self) -> Result<(), DirError> {
        let mut dirs = vec![self.dir.clone()];
        if self.sinks.contains(&SinkKind::Nginx) {
            let nginx = self.dir.subdir("nginx")?;
            dirs.push(nginx.subdir("keys")?);
            dirs.push(nginx);
        }
        if self.sinks.contains(&SinkKind::Haproxy) || !self.haproxy_sockets.is_empty() {
            dirs.push(self.dir.subdir("haproxy")?);
        }
        if self.sinks.contains(&SinkKind::Apache) {
            dirs.push(self.dir.subdir("apache")?);
        }
        if self.sinks.contains(&SinkKind::H2o) {
            dirs.push(self.dir.subdir("h2o")?);
        }
        if self.sinks.contains(&SinkKind::Lighttpd) {
            dirs.push(self.dir.subdir("lighttpd")?);
        }
        for d in &dirs {
            match d.erase_temporaries() {
                Ok(0) => {}
                Ok(n) => info!(
                    "erased {n} temporary file(s) left in {} by an earlier run",
                    d.path().display()
                ),
                Err(e) => return Err(DirError::Io(d.path().to_owned(), e)),
            }
        }
        Ok(())
    }

    /// The host's sinks in delivery order (files, the memcached table, the reload command last,
    /// once the files are written; h2o and lighttpd need no reload: they re-read their files).
    /// Starts the HAProxy socket tasks: call within a runtime.
    pub fn sinks(&self, schedule: &Schedule, table: TableSink) -> Vec<Box<dyn Sink>> {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if self.sinks.contains(&SinkKind::Nginx) {
            sinks.push(Box::new(NginxSink::new(
                self.dir.clone(),
                self.nginx_key_size,
            )));
        }
        if self.sinks.contains(&SinkKind::Haproxy) || !self.haproxy_sockets.is_empty() {
            // The runtime API pushes what the keys file holds: the file comes with it.
            let runtime = (!self.haproxy_sockets.is_empty()).then(|| {
                HaproxyRuntime::spawn(
                    &self.haproxy_sockets,
                    haproxy_keys_path(self.dir.path()),
                    Self::haproxy_max_backoff(schedule),
                )
            });
            sinks.push(Box::new(HaproxySink::new(self.dir.clone(), runtime)));
        }
        if self.sinks.contains(&SinkKind::Apache) {
            sinks.push(Box::new(ApacheSink::new(self.dir.clone())));
        }
        if self.sinks.contains(&SinkKind::H2o) {
            sinks.push(Box::new(H2oSink::new(self.dir.clone())));
        }
        if self.sinks.contains(&SinkKind::Lighttpd) {
            sinks.push(Box::new(LighttpdSink::new(self.dir.clone())));
        }
        sinks.push(Box::new(table));
        if let Some(cmd) = &self.on_change {
            sinks.push(Box::new(OnChange::spawn(
                cmd.clone(),
                (schedule.period() / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            )));
        }
        sinks
    }
}

/// Runs an agent on this host until `shutdown` resolves: [`run`] with the host's sinks, the
/// status in `DIR/status.json`, and a memcached-protocol server on each of `listeners` (already
/// bound, so that address errors surface before anything runs).
#[allow(clippy::too_many_arguments)]
pub async fn run_on_host<S: Store, O: Opener + 'static>(
    store: Arc<S>,
    opener: O,
    mut config: AgentConfig,
    host: HostOptions,
    clock: Arc<dyn Clock>,
    listeners: Vec<Listener>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let (table, table_rx) = TableSink::new(host.nghttpx_cipher);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    for l in listeners {
        let rx = table_rx.clone();
        let mut stop = stop_rx.clone();
        let mut options = ServeOptions::new(host.memcached_limits.clone());
        options.access = host.memcached_access.clone();
        metrics.add_memcached(options.stats.clone());
        servers.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = memcached::serve_with(l, rx, options, shutdown).await {
                error!("memcached server stopped: {}", crate::error::Chain(&e));
            }
        }));
    }
    let sinks = host.sinks(&config.schedule, table);
    config.status_dir = Some(host.dir.clone());
    config.verify_tls = host.verify_tls.clone();
    run(
        store,
        opener,
        config,
        sinks,
        "this host",
        clock,
        metrics,
        shutdown,
    )
    .await;
    info!("shutting down: key files stay in place (on memory-backed storage) so servers can still reload");
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use stek_core::{Encrypting, Origin, Record, SlotKey};

    use super::*;
    use crate::clock::manual::TokioClock;
    use crate::generator::{
        generator_round, publish_margin, run_generator, GroupPlan, RecordCheck,
    };
    use crate::sink::RingFeed;
    use crate::store::{Created, MemoryStore, StoreError};

    /// What a feed saw of one ring, and when (by the agent's clock).
    #[derive(Debug, Clone)]
    pub(crate) struct Seen {
        pub(crate) at: Duration,
        pub(crate) slot: Slot,
        pub(crate) encrypting: Encrypting,
        pub(crate) shared: usize,
    }

    pub(crate) fn recording_feed(clock: &TokioClock) -> (RingFeed, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, clock) = (seen.clone(), clock.clone());
        let feed = RingFeed::new().with(move |ring| {
            log.lock().unwrap().push(Seen {
                at: clock.now(),
                slot: ring.current(),
                encrypting: ring.encrypting(),
                shared: ring
                    .entries()
                    .iter()
                    .filter(|e| e.origin == Origin::Shared)
                    .count(),
            })
        });
        (feed, seen)
    }

    /// Starts a generator for group `g` on `store` (first round done before it returns), with
    /// `store_clock`; it stops when `stop` is set.
    pub(crate) async fn start_generator(
        store: &Arc<MemoryStore>,
        schedule: Schedule,
        store_clock: &TokioClock,
        stop: &watch::Sender<bool>,
    ) {
        let plan = GroupPlan::new(
            "g".into(),
            schedule,
            Arc::new(move |k: &SlotKey| Ok(Record::plain(&schedule, "g", k).encode())),
            RecordCheck::Plain,
        );
        let plans = vec![plan];
        let metrics = Metrics::new();
        let now = store_clock.now() + publish_margin(&plans);
        generator_round(&**store, &plans, now, &metrics).await;
        tokio::spawn(run_generator(
            store.clone(),
            plans,
            Arc::new(store_clock.clone()),
            metrics,
            until_set(stop),
        ));
    }

    /// Resolves once `stop` is set.
    pub(crate) fn until_set(stop: &watch::Sender<bool>) -> impl Future<Output = ()> + 'static {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// A store that stops answering reads while stalled, as a SIGSTOPped Redis does; writes
    /// (the generator's) go straight through.
    struct Stalling {
        inner: Arc<MemoryStore>,
        stalled: watch::Sender<bool>,
        reads: AtomicU64,
    }

    impl Stalling {
        async fn gate(&self) {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let mut rx = self.stalled.subscribe();
            let _ = rx.wait_for(|s| !*s).await;
        }
    }

    impl Store for Stalling {
        async fn create(
            &self,
            group: &str,
            slot: Slot,
            record: &[u8],
            expires_at: Duration,
        ) -> Result<Created, StoreError> {
            self.inner.create(group, slot, record, expires_at).await
        }

        async fn replace(
            &self,
            group: &str,
            slot: Slot,
            seen: &crate::store::Seen,
            record: &[u8],
            expires_at: Duration,
        ) -> Result<crate::store::Replaced, StoreError> {
            self.inner
                .replace(group, slot, seen, record, expires_at)
                .await
        }

        async fn read_window(
            &self,
            group: &str,
            first: Slot,
            last: Slot,
        ) -> Result<Vec<(Slot, crate::store::Found)>, StoreError> {
            self.gate().await;
            self.inner.read_window(group, first, last).await
        }

        fn changes(&self, group: &str) -> Option<watch::Receiver<u64>> {
            self.inner.changes(group)
        }

        async fn server_time(&self) -> Result<Option<Duration>, StoreError> {
            self.gate().await;
            self.inner.server_time().await
        }
    }

    /// The store stops answering for four periods: every boundary still reaches the sinks on
    /// time (the clock is tokio's, so "on time" is exact here; the Redis and etcd integration
    /// tests measure it with real processes), the ring goes stale then local, the store errors
    /// are counted, and the keys published meanwhile are taken once the store answers again.
    #[tokio::test(start_paused = true)]
    async fn a_hung_store_never_delays_a_rotation() {
        let clock = TokioClock::at(1_800_000_001);
        let s = Schedule::new(Duration::from_secs(2), Duration::from_secs(6)).unwrap();
        let inner = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let (stop, _) = watch::channel(false);
        start_generator(&inner, s, &clock, &stop).await;
        let store = Arc::new(Stalling {
            inner,
            stalled: watch::channel(false).0,
            reads: AtomicU64::new(0),
        });
        let (feed, seen) = recording_feed(&clock);
        let metrics = Metrics::new();
        let agent = tokio::spawn(run(
            store.clone(),
            PlainOpener,
            AgentConfig::new("g", s),
            vec![Box::new(feed)],
            "this process",
            Arc::new(clock.clone()),
            metrics.clone(),
            until_set(&stop),
        ));
        tokio::time::sleep(Duration::from_secs(6)).await;
        let before = seen.lock().unwrap().len();
        store.stalled.send_replace(true);
        let reads = store.reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(
            store.reads.load(Ordering::SeqCst) > reads,
            "the agent kept trying"
        );
        store.stalled.send_replace(false);
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.send_replace(true);
        agent.await.unwrap();

        let seen = seen.lock().unwrap().clone();
        let first = seen[0].slot.0;
        let last = seen.last().unwrap().slot.0;
        assert_eq!(last, s.slot_at(clock.now()).0);
        for slot in first + 1..=last {
            let ring = seen.iter().find(|x| x.slot.0 == slot).unwrap();
            let late = ring.at - s.start(Slot(slot));
            assert!(
                late < Duration::from_millis(100),
                "slot {slot} {late:?} late: {seen:?}"
            );
        }
        let stalled = &seen[before..];
        assert!(
            stalled
                .iter()
                .any(|x| x.encrypting == Encrypting::LocalFallback),
            "four periods without the store end in a local key: {stalled:?}"
        );
        let end = seen.last().unwrap();
        assert_eq!(end.encrypting, Encrypting::Current, "{seen:?}");
        assert!(
            end.shared >= 2,
            "current and next are shared again: {end:?}"
        );
        let text = metrics.render(clock.now());
        assert!(!text.contains("stek_store_errors_total 0"), "{text}");
    }

    /// A sink that records its deliveries and ticks (with the clock reading of each tick).
    struct Ticks(Arc<Mutex<Vec<(&'static str, Duration)>>>);

    impl Sink for Ticks {
        fn name(&self) -> &'static str {
            "ticks"
        }

        fn deliver(&mut self, _ring: &Ring) -> std::io::Result<Delivered> {
            self.0.lock().unwrap().push(("deliver", Duration::ZERO));
            Ok(Delivered::Handed)
        }

        fn tick(&mut self, now: Duration) -> std::io::Result<Option<Delivered>> {
            self.0.lock().unwrap().push(("tick", now));
            Ok(None)
        }
    }

    /// The contract of `Sink::tick` (h2o and lighttpd write there): right after every delivery,
    /// and at least once a second in between.
    #[tokio::test(start_paused = true)]
    async fn sinks_are_ticked_after_every_delivery_and_at_least_once_a_second() {
        let clock = TokioClock::at(1_800_000_001);
        let s = Schedule::new(Duration::from_secs(2), Duration::from_secs(6)).unwrap();
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let (stop, _) = watch::channel(false);
        start_generator(&store, s, &clock, &stop).await;
        let log = Arc::new(Mutex::new(Vec::new()));
        let agent = tokio::spawn(run(
            store,
            PlainOpener,
            AgentConfig::new("g", s),
            vec![Box::new(Ticks(log.clone()))],
            "this process",
            Arc::new(clock.clone()),
            Metrics::new(),
            until_set(&stop),
        ));
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.send_replace(true);
        agent.await.unwrap();
        let log = log.lock().unwrap().clone();
        let deliveries = log.iter().filter(|x| x.0 == "deliver").count();
        assert!(deliveries >= 5, "a rotation every 2 s: {log:?}");
        for (i, x) in log.iter().enumerate() {
            if x.0 == "deliver" {
                assert_eq!(log.get(i + 1).map(|t| t.0), Some("tick"), "{log:?}");
            }
        }
        let ticks: Vec<Duration> = log.iter().filter(|x| x.0 == "tick").map(|x| x.1).collect();
        assert!(ticks.len() >= 10, "{ticks:?}");
        for w in ticks.windows(2) {
            assert!(
                w[1] >= w[0] && w[1] - w[0] <= Duration::from_millis(1001),
                "{ticks:?}"
            );
        }
    }

    /// With the generator's timing (each key published 2 s before the boundary of the slot
    /// before its own), the memcached table serves the key of the slot after next 100 ms before
    /// that boundary, with the bytes it serves after it; the feed, which installs keys, still
    /// gets exactly one ring per slot and never a key ahead of the window.
    #[tokio::test(start_paused = true)]
    async fn the_table_serves_the_slot_after_next_before_the_boundary() {
        let clock = TokioClock::at(1_800_000_030);
        let s = Schedule::new(Duration::from_secs(60), Duration::from_secs(300)).unwrap();
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let (stop, _) = watch::channel(false);
        start_generator(&store, s, &clock, &stop).await;
        let (feed, seen) = recording_feed(&clock);
        let installed = Arc::new(Mutex::new(Vec::new()));
        let log = installed.clone();
        let feed = feed.with(move |ring| {
            let window = ring.window();
            log.lock()
                .unwrap()
                .extend(ring.entries().iter().map(|e| (window, e.slot())));
        });
        let (table, tables) =
            crate::sink::TableSink::new(crate::memcached::NghttpxCipher::default());
        let agent = tokio::spawn(run(
            store,
            PlainOpener,
            AgentConfig::new("g", s),
            vec![Box::new(feed), Box::new(table)],
            "this host",
            Arc::new(clock.clone()),
            Metrics::new(),
            until_set(&stop),
        ));
        let first = s.slot_at(clock.now());
        let sleep_until = |t: Duration| tokio::time::sleep(t.saturating_sub(clock.now()));
        for e in (first.0..first.0 + 4).map(Slot) {
            let boundary = s.start(e.plus(1));
            let key = format!("ticket-key/{}", s.start(e.plus(2)).as_secs());
            sleep_until(boundary - Duration::from_millis(100)).await;
            let before = tables.borrow().clone();
            assert_eq!(before.ring().unwrap().slot, e);
            assert_eq!(before.ring().unwrap().ahead, 1);
            let early = before
                .get(key.as_bytes())
                .unwrap_or_else(|| panic!("{key} not served 100 ms before slot {}", e.plus(1)))
                .value()
                .to_vec();
            sleep_until(boundary + Duration::from_millis(100)).await;
            let after = tables.borrow().clone();
            assert_eq!(after.ring().unwrap().slot, e.plus(1));
            // assert!, not assert_eq!: a failure must not print key bytes.
            assert!(
                after.get(key.as_bytes()).unwrap().value() == &early[..],
                "{key}: other bytes after the boundary"
            );
        }
        stop.send_replace(true);
        agent.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        let slots: Vec<u64> = seen.iter().map(|x| x.slot.0).collect();
        assert_eq!(
            slots,
            (first.0..=first.0 + 4).collect::<Vec<_>>(),
            "{seen:?}"
        );
        for (window, slot) in installed.lock().unwrap().iter() {
            assert!(
                window.contains(*slot),
                "slot {slot} installed outside {window:?}"
            );
        }
    }

    /// A log sink for tests: every line the subscriber prints.
    #[derive(Clone, Default)]
    pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Logs {
        pub(crate) fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }

        /// Captures this thread's logs (a current-thread runtime's tasks included) until the
        /// guard drops.
        pub(crate) fn capture(&self) -> tracing::subscriber::DefaultGuard {
            let logs = self.clone();
            let sub = tracing_subscriber::fmt()
                .with_writer(move || logs.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_default(sub)
        }
    }

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The host's wall clock is stepped an hour forward, back, and back again while the store's
    /// clock runs on: each step is logged once with its size and counted, the offset to the
    /// store is measured again within a poll and follows, and the ring is always the one of the
    /// slot the host's clock is in.
    #[tokio::test(start_paused = true)]
    async fn clock_steps_both_ways_are_seen_and_the_offset_follows() {
        let logs = Logs::default();
        let _guard = logs.capture();
        let store_clock = TokioClock::at(1_800_000_010);
        let host = TokioClock::at(1_800_000_010);
        let s = Schedule::new(Duration::from_secs(60), Duration::from_secs(300)).unwrap();
        let store = Arc::new(MemoryStore::new(Arc::new(store_clock.clone())));
        let (stop, _) = watch::channel(false);
        start_generator(&store, s, &store_clock, &stop).await;
        let metrics = Metrics::new();
        let agent = tokio::spawn(run(
            store,
            PlainOpener,
            AgentConfig::new("g", s),
            Vec::new(),
            "this process",
            Arc::new(host.clone()),
            metrics.clone(),
            until_set(&stop),
        ));
        let check = |steps: u64, offset: f64, encrypting: &str| {
            let st = metrics.status().unwrap();
            let text = metrics.render(host.now());
            assert_eq!(
                st.slot,
                s.slot_at(host.now()).0,
                "the ring follows the clock"
            );
            assert_eq!(st.encrypting, encrypting, "{st:?}");
            let off = st.clock_offset.unwrap();
            assert!((off - offset).abs() < 1.0, "offset {off}, want {offset}");
            assert!(
                text.contains(&format!(
                    "stek_clock_offset_seconds{{group=\"g\"}} {offset:.3}"
                )),
                "{text}"
            );
            if steps > 0 {
                assert!(
                    text.contains(&format!("stek_clock_steps_total {steps}")),
                    "{text}"
                );
            }
        };
        tokio::time::sleep(Duration::from_secs(130)).await;
        check(0, 0.0, "current");
        let mut logged = 0;
        for (step, total, offset, encrypting, words) in [
            (3_600_000, 1, 3600.0, "local_fallback", "forward by 1h"),
            (-3_600_000, 2, 0.0, "current", "back by 1h"),
            (-3_600_000, 3, -3600.0, "local_fallback", "back by 1h"),
        ] {
            host.step_ms(step);
            // One poll (a quarter period) is enough for the offset; a period to be sure.
            tokio::time::sleep(Duration::from_secs(60)).await;
            check(total, offset, encrypting);
            let text = logs.text();
            let jumps = text.matches("the wall clock jumped").count();
            assert_eq!(jumps, logged + 1, "each step logged once:\n{text}");
            logged = jumps;
            assert!(
                text.lines()
                    .rev()
                    .find(|l| l.contains("the wall clock jumped"))
                    .unwrap()
                    .contains(words),
                "{text}"
            );
        }
        let text = logs.text();
        assert!(
            text.contains("this host's clock is +3600.000s off the store's"),
            "{text}"
        );
        assert!(
            text.contains("this host's clock is -3600.000s off the store's"),
            "{text}"
        );
        stop.send_replace(true);
        agent.await.unwrap();
    }
}
