//! The long-running loops: the generator's and the agent's, shared by `stek up`,
//! `stek generator` and `stek agent`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use stek_core::{Encrypting, KeyBytes, Ring, Schedule, SlotKey};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::agent::{Agent, Opener};
use crate::clock::Clock;
use crate::generator::{publish_upcoming, Outcome};
use crate::memcached::{self, KeyTable, Limits, Listener};
use crate::metrics::Metrics;
use crate::onchange::OnChange;
use crate::sink::{haproxy_keys_path, FileSinks, HaproxyKeys, HaproxyRuntime, SinkKind};
use crate::status::Status;
use crate::store::Store;

/// Turns a key into record bytes (plain for the embedded store, sealed and signed otherwise).
pub type SealFn = Arc<dyn Fn(&SlotKey) -> Result<KeyBytes, String> + Send + Sync>;

/// One group a generator serves.
#[derive(Clone)]
pub struct GroupPlan {
    /// The group's name.
    pub name: String,
    /// The group's schedule.
    pub schedule: Schedule,
    /// How its records are made.
    pub seal: SealFn,
}

impl std::fmt::Debug for GroupPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupPlan")
            .field("name", &self.name)
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

/// Runs one publishing round for every group: makes the keys due at `now`. Returns whether every
/// group succeeded.
pub async fn generator_round<S: Store>(
    store: &S,
    groups: &[GroupPlan],
    now: Duration,
    metrics: &Metrics,
) -> bool {
    let mut ok = true;
    for g in groups {
        let seal = |k: &SlotKey| (g.seal)(k);
        // Records whose key left every window go now, whatever the store's expiry says.
        let oldest = g.schedule.window_at(now).first;
        match store.remove_before(&g.name, oldest).await {
            Ok(0) => {}
            Ok(n) => info!(
                "group {}: removed {n} expired record(s) from the store",
                g.name
            ),
            Err(e) => warn!("group {}: could not remove expired records: {e}", g.name),
        }
        match publish_upcoming(store, &g.schedule, &g.name, now, seal).await {
            Ok(done) => {
                for (_, outcome) in done {
                    if let Outcome::Created(_) = outcome {
                        metrics.key_created(&g.name, now);
                    }
                }
            }
            Err(e) => {
                ok = false;
                metrics.publish_error();
                error!("group {}: could not publish the upcoming keys: {e}", g.name);
            }
        }
    }
    if ok {
        metrics.published(now);
    }
    ok
}

/// How early a generator publishes the keys due at a slot boundary: an eighth of the shortest
/// period, at most 2 s. Agents then hold the next key before the boundary and rotate with a
/// single delivery (one reload) instead of two. It lengthens a key's existence by as much.
pub fn publish_margin(groups: &[GroupPlan]) -> Duration {
    groups
        .iter()
        .map(|g| g.schedule.period() / 8)
        .min()
        .unwrap_or_default()
        .min(Duration::from_secs(2))
}

/// The generator loop: a publishing round shortly before every slot boundary of every group
/// (see [`publish_margin`]), retried with backoff while the store fails.
pub async fn run_generator<S: Store>(
    store: Arc<S>,
    groups: Vec<GroupPlan>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let margin = publish_margin(&groups);
    let mut backoff = Duration::from_millis(250);
    loop {
        // Act as if it were `margin` later: the keys due at the coming boundary are made now.
        let now = clock.now() + margin;
        let ok = generator_round(&*store, &groups, now, &metrics).await;
        let next = groups
            .iter()
            .map(|g| g.schedule.next_rotation(now))
            .min()
            .unwrap_or(now + Duration::from_secs(60));
        let mut nap = next
            .saturating_sub(clock.now() + margin)
            .min(Duration::from_secs(60));
        if ok {
            backoff = Duration::from_millis(250);
        } else {
            nap = nap.min(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        tokio::select! {
            _ = tokio::time::sleep(nap + Duration::from_millis(1)) => {}
            _ = &mut shutdown => return,
        }
    }
}

/// Whether the store answered, remembered across rounds so an outage is logged once when it
/// starts and once when it ends.
#[derive(Debug, Default)]
pub(crate) struct StoreState {
    down: bool,
}

impl StoreState {
    /// Records one sync's outcome; returns whether it failed.
    pub(crate) fn observe(
        &mut self,
        group: &str,
        result: Result<usize, crate::store::StoreError>,
    ) -> bool {
        match result {
            Ok(_) => {
                if self.down {
                    info!("group {group}: the store is reachable again");
                    self.down = false;
                }
                false
            }
            Err(e) => {
                if !self.down {
                    warn!("group {group}: store unreachable, serving the keys we have: {e}");
                    self.down = true;
                }
                true
            }
        }
    }

    /// Whether the last sync failed.
    pub(crate) fn is_down(&self) -> bool {
        self.down
    }
}

/// Logs a newly delivered ring in plain words: which key encrypts and why. `verb` says whether
/// the slot changed ("rotated to") or only the ring ("updated the ring of"); `scope` says where
/// a local fallback key is valid ("this host", "this process").
pub(crate) fn log_ring(group: &str, ring: &Ring, verb: &str, scope: &str) {
    let enc = ring.encrypting_entry().key.name();
    match ring.encrypting() {
        Encrypting::Current => info!(
            "group {group}: {verb} slot {}: key {enc} encrypts, {} keys decrypt",
            ring.current(),
            ring.entries().len()
        ),
        Encrypting::Stale { behind } => warn!(
            "group {group}: slot {} has no key yet: key {enc} of {behind} period(s) ago keeps encrypting",
            ring.current()
        ),
        Encrypting::LocalFallback => warn!(
            "group {group}: FALLBACK: no recent shared key for slot {}: local random key {enc} encrypts; resumption works on {scope} only until the store is back",
            ring.current()
        ),
    }
}

/// Sleeps until the next slot boundary, the jittered poll, or a store notification, whichever
/// comes first. Returns `true` if `shutdown` resolved instead.
pub(crate) async fn nap<F: Future<Output = ()>>(
    schedule: &Schedule,
    clock: &dyn Clock,
    now: Duration,
    poll: Duration,
    changes: &mut Option<watch::Receiver<u64>>,
    shutdown: &mut std::pin::Pin<&mut F>,
) -> bool {
    let to_boundary = schedule.next_rotation(now).saturating_sub(clock.now());
    let nap = to_boundary.min(jitter(poll)) + Duration::from_millis(1);
    tokio::select! {
        _ = tokio::time::sleep(nap) => false,
        _ = async {
            match changes {
                Some(rx) => { if rx.changed().await.is_err() { std::future::pending::<()>().await } }
                None => std::future::pending::<()>().await,
            }
        } => false,
        _ = shutdown.as_mut() => true,
    }
}

/// How an agent delivers and reports.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The key directory (absolute, memory-backed).
    pub dir: PathBuf,
    /// Which file sinks to write.
    pub sinks: Vec<SinkKind>,
    /// The command to run after each change of the files.
    pub on_change: Option<String>,
    /// Limits of the memcached-protocol server.
    pub memcached_limits: Limits,
    /// The safety-net poll interval (jittered by ±20%).
    pub poll: Duration,
    /// In-process consumers of every delivered ring (e.g. stek-rustls's ticketer).
    pub feed: crate::feed::RingFeed,
    /// HAProxy admin sockets whose rings follow the HAProxy keys file over the runtime API
    /// (implies the HAProxy file sink).
    pub haproxy_sockets: Vec<PathBuf>,
}

impl AgentOptions {
    /// The default poll interval for `schedule`: a quarter period, at most 30 s, at least 250 ms.
    pub fn default_poll(schedule: &Schedule) -> Duration {
        (schedule.period() / 4).clamp(Duration::from_millis(250), Duration::from_secs(30))
    }

    /// The longest wait between two attempts to reach a failing HAProxy socket: a quarter period,
    /// between 1 and 5 s, so a HAProxy that comes back is in step well within a period.
    pub fn haproxy_max_backoff(schedule: &Schedule) -> Duration {
        (schedule.period() / 4).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }
}

/// Delivers rings: files, the memcached table, the on-change command, status and metrics.
struct Delivery {
    feed: crate::feed::RingFeed,
    group: String,
    /// The slot of the last ring delivered (a change within a slot is an update, not a rotation).
    last_slot: Option<stek_core::Slot>,
    sinks: FileSinks,
    table: watch::Sender<Arc<KeyTable>>,
    on_change: Option<OnChange>,
    haproxy: Option<HaproxyRuntime>,
    metrics: Arc<Metrics>,
    status_path: PathBuf,
}

impl Delivery {
    fn deliver(&mut self, ring: &Ring) {
        let verb = if self.last_slot == Some(ring.current()) {
            "updated the ring of"
        } else {
            "rotated to"
        };
        self.last_slot = Some(ring.current());
        log_ring(&self.group, ring, verb, "this host");
        self.table.send_replace(Arc::new(KeyTable::from_ring(ring)));
        self.feed.deliver(ring);
        let (written, failed) = self.sinks.deliver(ring);
        if !written.is_empty() {
            let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
            info!("files written: {}", files.join(", "));
        }
        for f in &failed {
            self.metrics.sink_failed(f.sink.name());
            error!(
                "could not write the {} files (the previous ones stay valid): {}",
                f.sink.name(),
                f.error
            );
        }
        // HAProxy's live ring follows the keys file, never runs ahead of it: a reload must load
        // what HAProxy was running.
        if let Some(h) = &self.haproxy {
            if !failed.iter().any(|f| f.sink == SinkKind::Haproxy) {
                match HaproxyKeys::of(ring) {
                    Ok(keys) => h.deliver(keys),
                    Err(e) => error!("could not encode the HAProxy keys: {e}"),
                }
            }
        }
        if let Some(oc) = &self.on_change {
            if !written.is_empty() {
                oc.notify();
            }
        }
    }

    fn report(&self, mut status: Status) {
        status.haproxy = self.metrics.haproxy_sockets();
        match serde_json::to_vec_pretty(&status) {
            Ok(bytes) => {
                if let Err(e) = crate::files::write_atomic(&self.status_path, &bytes) {
                    warn!("could not write {}: {e}", self.status_path.display());
                }
            }
            Err(e) => warn!("could not encode the status: {e}"),
        }
        self.metrics.set_status(status);
    }
}

/// The agent loop: sync from the store on notifications, at slot boundaries and on a jittered
/// poll; deliver every changed ring. Serves what it has while the store is down (DESIGN.md §5).
#[allow(clippy::too_many_arguments)]
pub async fn run_agent<S: Store, O: Opener>(
    mut agent: Agent<S, O>,
    store: Arc<S>,
    opts: AgentOptions,
    clock: Arc<dyn Clock>,
    listeners: Vec<Listener>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let schedule = *agent.schedule();
    let group = agent.group().to_owned();
    let (table_tx, table_rx) = watch::channel(Arc::new(KeyTable::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    for l in listeners {
        let rx = table_rx.clone();
        let mut stop = stop_rx.clone();
        let limits = opts.memcached_limits.clone();
        servers.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = memcached::serve(l, rx, limits, shutdown).await {
                error!("memcached server stopped: {e}");
            }
        }));
    }
    let mut kinds = opts.sinks.clone();
    let haproxy = (!opts.haproxy_sockets.is_empty()).then(|| {
        // The runtime API pushes what the keys file holds: the file sink comes with it.
        if !kinds.contains(&SinkKind::Haproxy) {
            kinds.push(SinkKind::Haproxy);
        }
        HaproxyRuntime::spawn(
            &opts.haproxy_sockets,
            haproxy_keys_path(&opts.dir),
            AgentOptions::haproxy_max_backoff(&schedule),
            metrics.clone(),
        )
    });
    let mut delivery = Delivery {
        feed: opts.feed.clone(),
        group: group.clone(),
        last_slot: None,
        sinks: FileSinks::new(&opts.dir, &kinds),
        table: table_tx,
        on_change: opts.on_change.clone().map(|cmd| {
            OnChange::spawn(
                cmd,
                (schedule.period() / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            )
        }),
        haproxy,
        metrics: metrics.clone(),
        status_path: opts.dir.join("status.json"),
    };
    let mut changes = store.changes(&group);
    let mut store_state = StoreState::default();
    let mut clock_offset: Option<f64> = None;
    let mut last_offset_check: Option<Duration> = None;
    tokio::pin!(shutdown);
    loop {
        let now = clock.now();
        if store_state.observe(&group, agent.sync(now).await) {
            metrics.store_error();
        }
        // Measure the clock offset against the store once a period.
        if !store_state.is_down()
            && last_offset_check.is_none_or(|t| now.saturating_sub(t) >= schedule.period())
        {
            last_offset_check = Some(now);
            let t0 = clock.now();
            if let Ok(Some(server)) = store.server_time().await {
                let t1 = clock.now();
                let local = (t0 + t1) / 2;
                let off = local.as_secs_f64() - server.as_secs_f64();
                clock_offset = Some(off);
                if off.abs() > schedule.period().as_secs_f64() / 4.0 {
                    warn!("group {group}: this host's clock is {off:+.3}s off the store's, more than P/4: fix NTP; tickets may fail to resume across hosts");
                }
            }
        }
        match agent.rebuild(now) {
            Ok(Some(ring)) => delivery.deliver(ring),
            Ok(None) => {}
            Err(e) => error!("group {group}: could not make a local key: {e}"),
        }
        if let Some(ring) = agent.ring() {
            let mut st = Status::of(ring, &group, now);
            let stats = agent.stats();
            st.last_sync = stats.last_sync.map(|t| t.as_secs_f64());
            st.staleness = stats.last_sync.map(|t| now.saturating_sub(t).as_secs_f64());
            st.clock_offset = clock_offset;
            st.rejected = stats
                .rejected
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect();
            delivery.report(st);
        }

        if nap(
            &schedule,
            &*clock,
            now,
            opts.poll,
            &mut changes,
            &mut shutdown,
        )
        .await
        {
            break;
        }
    }
    info!("shutting down: key files stay in place (on memory-backed storage) so servers can still reload");
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
}

/// `d` scaled by a random factor in [0.8, 1.2), so a fleet's polls do not align.
pub fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if stek_core::key::fill_random(&mut b).is_ok() {
        f64::from(u16::from_le_bytes(b)) / 65536.0
    } else {
        0.5
    };
    d.mul_f64(0.8 + 0.4 * r)
}
