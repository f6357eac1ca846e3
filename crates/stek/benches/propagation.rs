//! Propagation benchmark: how long a new record takes to reach every agent of a fleet, and what
//! the fleet costs its store.
//!
//! For each store (Redis, then etcd) this starts real servers on free loopback ports in temporary
//! directories: for Redis a primary (the generator's) and read replicas (the agents', one per
//! 2,500 agents, spread round-robin: one single-threaded Redis would serve 20,000 TLS
//! connections of a 10,000-agent fleet alone), as in production; for etcd a cluster of one
//! member per 2,500 agents, the agents spread over the members the same way (a member holds two
//! connections per agent, and one process may hold only as many as its open-file limit allows).
//! With TLS (the default) the generator and the agents speak `rediss://` and `etcds://` to
//! servers whose certificates the benchmark makes with rcgen (server authentication only); the
//! benchmark's own monitoring uses plain ports. It then runs the agent sessions (1,000, then
//! 10,000) in worker processes (this benchmark's own binary, one process per 4,000 agents,
//! for the same open-file limit), each agent a
//! Tokio task with its own store connection (its own connection and pub/sub subscription for
//! Redis, its own HTTP connections and watch stream for etcd), each running the real agent parts
//! (`stek::agent::Syncer` with a `SealedOpener`, and `stek::agent::Rotator`): `sync` on every
//! change notification, at every slot boundary and on the jittered safety-net poll, plus one
//! clock-offset read per period, as `stek::agent::run` does (without sinks, and in one task so
//! that the bench can tell what woke the read that brought each key).
//!
//! The group uses P = 4 s and L = 8 s, and the production default poll, P/4 = 1 s jittered by
//! ±20%. A generator on the primary publishes one sealed, signed record per slot
//! (`publish_upcoming` + `Record::seal`, as `stek generator` does), at the middle of a slot, for
//! the next slot: a slot inside every agent's window, and half a period away from the boundary
//! wake-up, so only a notification (or failing that, a poll) can bring it. For each record, the
//! latency of an agent is the time from the store's `create` returning to the generator until
//! that agent's `sync` has returned with the key opened and its rotator's ring holds it.
//!
//! Load: the store's own counters over whole periods of steady state (Redis `INFO commandstats`
//! on the replicas; etcd's `/metrics` of every member), and the agents' requests counted in the
//! worker processes.
//!
//! A worker gets its part of the fleet (the store, the URLs, the CA, the trusted generator) as a
//! line of JSON on its stdin, then the group identity (never in a file or the environment). It
//! prints `ready N` once its N agents have synced, `held SLOT WOKE HELD WAKE` for each agent's
//! first holding of a slot's key (times in nanoseconds of `CLOCK_MONOTONIC`, which every process
//! of the machine shares), and `requests READS CLOCK_READS ERRORS` when sent `snapshot`; `stop`
//! or the end of its stdin ends it.
//!
//! Everything shares this machine's cores: the agents, the generator and the servers, so
//! latencies include every agent opening the record (an X25519 decapsulation and an Ed25519
//! check each) on the same CPUs as the store. A real fleet spreads that over its hosts.
//!
//! Beside the latencies it prints when the notification woke the agents, what woke the agent
//! for the `sync` that brought the key, the CPU seconds of each process and of the rest of the
//! machine over the measured periods, and what opening one record costs on one core: on a busy
//! machine the figures say how much of the latency was waiting for a CPU.
//!
//! `cargo bench -p stek --bench propagation` runs the full benchmark (a few minutes); run as a
//! test (`cargo test --benches`) it runs 10 agents over TLS and one record per store. A store
//! whose server is not installed is skipped with a note. Environment variables choose the runs:
//!
//! | variable | values | default (`cargo bench` / as a test) |
//! |---|---|---|
//! | `STEK_BENCH_AGENTS` | fleet sizes, comma-separated: `1000,10000` | `1000,10000` / `10` |
//! | `STEK_BENCH_TLS` | `on`, `off`, `both` | `on` |
//! | `STEK_BENCH_STORES` | `redis`, `etcd`, comma-separated | `redis,etcd` |
//! | `STEK_BENCH_RECORDS` | records measured per run | `6` / `1` |
//! | `STEK_BENCH_ENDPOINTS` | Redis replicas / etcd members (at most 8) | agents / 2,500, at least 1 |
//! | `STEK_BENCH_POLL` | the agents' safety-net poll, in ms | P/4 = 1,000 (the production default's ratio) |
//!
//! e.g. `STEK_BENCH_AGENTS=10000 STEK_BENCH_STORES=etcd cargo bench -p stek --bench propagation`.
//! With P compressed to 4 s, the default poll keeps production's ratio (P/4) but not its rate: a
//! fleet on the default 1 h period polls every 15 minutes, here every second, which for 10,000
//! agents is 10,000 reads a second beside every record's propagation. `STEK_BENCH_POLL=900000`
//! gives production's rate. Each run also prints the CPU every process spent from each record's
//! publication until the last agent held its key: on a machine where agents and servers share a
//! few cores, that CPU divided by the cores is a floor under the slowest agent's latency.
//! Each agent holds two connections (Redis) or a watch stream and a pooled connection (etcd):
//! every worker raises its open-file limit (soft, and hard where it may: root with
//! CAP_SYS_RESOURCE) to two per agent and some spare, and stops with an error naming the limit
//! otherwise; the servers inherit the driver's limit, raised as far as it goes (a hard limit of
//! 20,000, as in some containers, is enough: 4,000 agents per worker, 2,500 per server).
//! Agents start 100 at a time (subscribe and first read), as hosts of a fleet do not all start
//! in the same millisecond. Each run reports its wall time, the load average at its start and
//! end, and the resident memory of every process with the fleet connected.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[path = "../tests/util/port.rs"]
mod port;

use anyhow::{bail, Context};
use stek::agent::{Rotator, SealedOpener, SyncReport, Synced, Syncer};
use stek::clock::{Clock, SystemClock};
use stek::generator::{publish_upcoming, Outcome};
use stek::store::{Created, EtcdStore, LoadedAccess, RedisStore, Store, StoreError};
use stek_core::{
    GeneratorKey, GeneratorPublicKey, GroupIdentity, Origin, Record, Schedule, Slot, SlotKey,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use zeroize::Zeroizing;

const GROUP: &str = "bench";
const PERIOD: Duration = Duration::from_secs(4);
const LIFETIME: Duration = Duration::from_secs(8);
/// How many agents connect at once while the fleet starts.
const CONNECT_CONCURRENCY: usize = 100;
/// How long an agent may take to get a record before it counts as missed.
const MISS_AFTER: Duration = Duration::from_secs(8);
/// The target of the issue: p99 at most 1 s.
const TARGET_P99: Duration = Duration::from_secs(1);

/// One run: this many agents on this store, over TLS or not.
#[derive(Clone, Copy)]
struct Config {
    agents: usize,
    records: usize,
    tls: bool,
    /// Redis replicas the agents spread over; for etcd, the members of the cluster.
    endpoints: usize,
    /// The agents' safety-net poll (None: the production default for P).
    poll: Option<Duration>,
}

/// The agents one Redis replica (or one etcd member) serves.
const AGENTS_PER_ENDPOINT: usize = 2500;
/// The agents one worker process runs (two open files each).
const AGENTS_PER_WORKER: usize = 4000;
/// Set in a worker's environment: run agents for the driver (see the module documentation).
const WORKER_ENV: &str = "STEK_BENCH_WORKER";

/// What to run, from the environment (see the module documentation).
struct Plan {
    agents: Vec<usize>,
    tls: Vec<bool>,
    redis: bool,
    etcd: bool,
    records: usize,
    endpoints: Option<usize>,
    poll: Option<Duration>,
}

impl Plan {
    fn from_env(full: bool) -> anyhow::Result<Plan> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let agents = match var("STEK_BENCH_AGENTS") {
            Some(v) => v
                .split(',')
                .map(|n| {
                    n.trim()
                        .parse::<usize>()
                        .context("STEK_BENCH_AGENTS: a number")
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            None if full => vec![1000, 10_000],
            None => vec![10],
        };
        let tls = match var("STEK_BENCH_TLS").as_deref() {
            None | Some("on") => vec![true],
            Some("off") => vec![false],
            Some("both") => vec![false, true],
            Some(other) => bail!("STEK_BENCH_TLS={other}: expected on, off or both"),
        };
        let stores = var("STEK_BENCH_STORES").unwrap_or_else(|| "redis,etcd".to_owned());
        let stores: Vec<&str> = stores.split(',').map(str::trim).collect();
        if let Some(bad) = stores.iter().find(|s| !["redis", "etcd"].contains(s)) {
            bail!("STEK_BENCH_STORES: unknown store {bad:?} (redis, etcd)");
        }
        let records = match var("STEK_BENCH_RECORDS") {
            Some(v) => v.parse().context("STEK_BENCH_RECORDS: a number")?,
            None if full => 6,
            None => 1,
        };
        let endpoints = var("STEK_BENCH_ENDPOINTS")
            .map(|v| v.parse().context("STEK_BENCH_ENDPOINTS: a number"))
            .transpose()?;
        let poll = var("STEK_BENCH_POLL")
            .map(|v| {
                v.parse()
                    .map(Duration::from_millis)
                    .context("STEK_BENCH_POLL: milliseconds")
            })
            .transpose()?;
        Ok(Plan {
            agents,
            tls,
            redis: stores.contains(&"redis"),
            etcd: stores.contains(&"etcd"),
            records,
            endpoints,
            poll,
        })
    }
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os(WORKER_ENV).is_some() {
        return worker_main();
    }
    let full = std::env::args().any(|a| a == "--bench");
    let plan = Plan::from_env(full)?;
    // The servers run in their own processes and inherit the limit: a server holds two
    // connections per agent it serves (see `fd_need`).
    let needed = fd_need(AGENTS_PER_ENDPOINT);
    let limit = raise_fd_limit(needed);
    if limit < needed {
        bail!(
            "the open-file limit is {limit} and cannot be raised (hard limit, or not root); a server of {AGENTS_PER_ENDPOINT} agents needs about {needed}: raise it (ulimit -Hn / limits.conf)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let open = open_cost()?;
    let mut failed = Vec::new();
    let mut all = Vec::new();
    for &agents in &plan.agents {
        for &tls in &plan.tls {
            let cfg = Config {
                agents,
                records: plan.records,
                tls,
                endpoints: plan
                    .endpoints
                    .unwrap_or(agents.div_ceil(AGENTS_PER_ENDPOINT))
                    .max(1),
                poll: plan.poll,
            };
            let started = Instant::now();
            let mut reports: Vec<Report> = Vec::new();
            runtime.block_on(async {
                let stores = [
                    ("Redis", "redis-server", plan.redis),
                    ("etcd", "etcd", plan.etcd),
                ];
                for (store, server, wanted) in stores {
                    if !wanted {
                        continue;
                    }
                    if !on_path(server) {
                        println!("propagation: {server} is not installed: {store} skipped");
                        continue;
                    }
                    let report = match store {
                        "Redis" => bench_redis(&cfg).await,
                        _ => bench_etcd(&cfg).await,
                    };
                    match report {
                        Ok(r) => {
                            print_reports(&cfg, std::slice::from_ref(&r), open, started.elapsed());
                            reports.push(r);
                        }
                        Err(e) => failed.push(format!("{store}, {agents} agents: {e:#}")),
                    }
                }
            });
            all.extend(reports.into_iter().map(|r| (cfg, r)));
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    print_summary(&all);
    if !failed.is_empty() {
        bail!("failed: {}", failed.join("; "));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Store wrappers: timing the generator's creates, counting the agents' requests.

/// Requests the agents made, summed over the fleet.
#[derive(Debug, Default)]
struct Requests {
    reads: AtomicU64,
    clock_reads: AtomicU64,
    errors: AtomicU64,
}

impl Requests {
    fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.clock_reads.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// A store that counts requests and times creates, delegating everything to `inner`.
#[derive(Debug)]
struct Probed<S> {
    inner: S,
    requests: Arc<Requests>,
    /// Per slot won: when `create` was called and when it returned.
    created: Arc<Mutex<HashMap<Slot, (Instant, Instant)>>>,
}

impl<S> Probed<S> {
    fn new(inner: S, requests: Arc<Requests>) -> Self {
        Probed {
            inner,
            requests,
            created: Arc::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: Store> Store for Probed<S> {
    async fn create(
        &self,
        group: &str,
        slot: Slot,
        record: &[u8],
        expires_at: Duration,
    ) -> Result<Created, StoreError> {
        let called = Instant::now();
        let r = self.inner.create(group, slot, record, expires_at).await;
        let returned = Instant::now();
        if let Ok(Created::Won) = r {
            lock(&self.created).insert(slot, (called, returned));
        }
        r
    }

    async fn replace(
        &self,
        group: &str,
        slot: Slot,
        seen: &stek::store::Seen,
        record: &[u8],
        expires_at: Duration,
    ) -> Result<stek::store::Replaced, StoreError> {
        self.inner
            .replace(group, slot, seen, record, expires_at)
            .await
    }

    async fn read_window(
        &self,
        group: &str,
        first: Slot,
        last: Slot,
    ) -> Result<Vec<(Slot, stek::store::Found)>, StoreError> {
        self.requests.reads.fetch_add(1, Ordering::Relaxed);
        let r = self.inner.read_window(group, first, last).await;
        if r.is_err() {
            self.requests.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn changes(&self, group: &str) -> Option<watch::Receiver<u64>> {
        self.inner.changes(group)
    }

    async fn server_time(&self) -> Result<Option<Duration>, StoreError> {
        self.requests.clock_reads.fetch_add(1, Ordering::Relaxed);
        self.inner.server_time().await
    }
}

// ---------------------------------------------------------------------------------------------
// The agents.

/// Why an agent ran the `sync` that brought a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Start,
    Notified,
    Poll,
    Boundary,
}

/// An agent's first holding of a slot's key.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// When the agent woke for the `sync` that brought the key.
    woke: Instant,
    /// When that `sync` returned.
    held: Instant,
    /// What woke it.
    wake: Wake,
}

/// What the agents saw, shared with the driver.
#[derive(Debug, Default)]
struct Board {
    /// Per slot: each agent's first holding of its key.
    held: Mutex<HashMap<Slot, Vec<Held>>>,
    /// Agents that finished their first sync.
    ready: AtomicUsize,
}

/// One agent session: the syncer and rotator of `stek::agent::run` in one loop, without sinks,
/// status or metrics.
async fn agent_loop<S: Store>(
    mut syncer: Syncer<Probed<S>, SealedOpener>,
    mut rotator: Rotator,
    store: Arc<Probed<S>>,
    poll: Duration,
    board: Arc<Board>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let clock = SystemClock::new();
    let schedule = *rotator.schedule();
    // The fleet starts a bounded number of agents at a time, as hosts do: subscribing and the
    // first read (a TLS handshake per connection) of 10,000 agents at once would only measure
    // a connection storm.
    let mut starting = gate.acquire_owned().await.ok();
    let mut syncs = 0;
    let mut changes = store.changes(GROUP);
    let mut last_offset_check: Option<Duration> = None;
    let mut known = BTreeSet::new();
    let mut wake = Wake::Start;
    loop {
        let woke = Instant::now();
        let now = clock.now();
        let result = syncer.sync(now, &rotator.held()).await;
        let synced = result.is_ok();
        let keys = result.map_or_else(|_| Vec::new(), |r: Synced| r.keys);
        let synced_at = Instant::now();
        if synced && last_offset_check.is_none_or(|t| now.saturating_sub(t) >= schedule.period()) {
            last_offset_check = Some(now);
            let _ = store.server_time().await;
        }
        let report = SyncReport {
            at: now,
            result: Ok(Synced {
                keys,
                ..Synced::default()
            }),
            clock_offset: None,
            diagnosis: None,
        };
        rotator.take(report, now);
        let _ = rotator.rotate(now);
        if let Some(ring) = rotator.ring() {
            let window = ring.window();
            known.retain(|s| window.contains(*s));
            let new: Vec<Slot> = ring
                .entries()
                .iter()
                .filter(|e| e.origin == Origin::Shared && !known.contains(&e.slot()))
                .map(|e| e.slot())
                .collect();
            if !new.is_empty() {
                let mut held = lock(&board.held);
                for slot in new {
                    known.insert(slot);
                    held.entry(slot).or_default().push(Held {
                        woke,
                        held: synced_at,
                        wake,
                    });
                }
            }
        }
        if wake == Wake::Start {
            board.ready.fetch_add(1, Ordering::Relaxed);
        }
        // Started once its notifications are established too (the read on etcd's first watch
        // tick, or the next poll): the next agent may.
        syncs += 1;
        if syncs >= 2 {
            drop(starting.take());
        }

        let to_boundary = schedule.next_rotation(now).saturating_sub(clock.now());
        let next_poll = stek_core::jitter(poll);
        let nap = to_boundary.min(next_poll) + Duration::from_millis(1);
        wake = tokio::select! {
            _ = tokio::time::sleep(nap) => if to_boundary <= next_poll { Wake::Boundary } else { Wake::Poll },
            _ = async {
                match &mut changes {
                    Some(rx) => { if rx.changed().await.is_err() { std::future::pending::<()>().await } }
                    None => std::future::pending::<()>().await,
                }
            } => Wake::Notified,
            _ = stop.changed() => break,
        };
    }
}

// ---------------------------------------------------------------------------------------------
// Worker processes: the agents, a few thousand per process (see the module documentation).

/// Where the agents of a run connect, and how.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct FleetSpec {
    /// `redis` or `etcd`.
    store: String,
    /// The URLs the agents spread over, round-robin.
    urls: Vec<String>,
    /// The CA certificate (PEM) the servers' certificates chain to, with TLS.
    ca: Option<String>,
}

impl FleetSpec {
    fn access(&self) -> LoadedAccess {
        self.ca
            .as_deref()
            .map(|ca| tls_access(ca.as_bytes()))
            .unwrap_or_default()
    }

    fn url(&self, agent: usize) -> String {
        self.urls[agent % self.urls.len()].clone()
    }
}

/// One worker's part of the fleet: the first line of its stdin.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct WorkerSpec {
    fleet: FleetSpec,
    /// The fleet-wide index of its first agent (for the round-robin over URLs).
    first: usize,
    agents: usize,
    /// How many of its agents may connect at once.
    gate: usize,
    /// The generators the agents trust (text form).
    trusted: Vec<String>,
    /// The agents' safety-net poll, in ms.
    poll_ms: u64,
}

/// Instants as nanoseconds of `CLOCK_MONOTONIC`, which every process of the machine shares
/// (Rust's `Instant` reads that clock on Linux, but cannot cross a process boundary).
#[derive(Debug, Clone, Copy)]
struct Mono {
    instant: Instant,
    ns: u64,
}

impl Mono {
    fn new() -> Mono {
        Mono {
            instant: Instant::now(),
            ns: mono_ns(),
        }
    }

    fn ns(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.instant) {
            Some(d) => self.ns + d.as_nanos() as u64,
            None => self.ns - (self.instant - t).as_nanos() as u64,
        }
    }

    fn instant(&self, ns: u64) -> Instant {
        match ns.checked_sub(self.ns) {
            Some(d) => self.instant + Duration::from_nanos(d),
            None => self.instant - Duration::from_nanos(self.ns - ns),
        }
    }
}

#[allow(unsafe_code)]
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A worker process: reads its spec and the group identity from stdin, runs its agents and
/// reports to the driver on stdout until told to stop.
fn worker_main() -> anyhow::Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let spec: WorkerSpec = serde_json::from_str(&line).context("the worker's spec")?;
    let mut identity_text = Zeroizing::new(String::new());
    loop {
        let mut l = Zeroizing::new(String::new());
        if stdin.read_line(&mut l)? == 0 {
            bail!("stdin ended before the group identity");
        }
        if l.trim_end() == "." {
            break;
        }
        identity_text.push_str(&l);
    }
    drop(stdin);
    let needed = fd_need(spec.agents);
    let limit = raise_fd_limit(needed);
    if limit < needed {
        bail!(
            "the open-file limit is {limit} and cannot be raised (hard limit, or not root); {} agents need about {needed}",
            spec.agents
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let fleet = spec.fleet.clone();
    let store = fleet.store.clone();
    runtime.block_on(async move {
        match store.as_str() {
            "redis" => {
                let connect = move |i: usize| {
                    let (url, access) = (fleet.url(i), fleet.access());
                    async move { RedisStore::connect_with(&url, &access).await }
                };
                worker(spec, &identity_text, connect).await
            }
            "etcd" => {
                let connect = move |i: usize| {
                    let store = EtcdStore::connect_with(&fleet.url(i), &fleet.access());
                    async move { store }
                };
                worker(spec, &identity_text, connect).await
            }
            other => bail!("unknown store {other:?}"),
        }
    })
}

/// Runs a worker's agents: connects them (`connect` makes agent `i`'s store), starts their
/// sessions, and reports (see the module documentation).
async fn worker<S, F, Fut>(spec: WorkerSpec, identity_text: &str, connect: F) -> anyhow::Result<()>
where
    S: Store,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<S, StoreError>> + Send,
{
    let schedule = Schedule::new(PERIOD, LIFETIME)?;
    let poll = Duration::from_millis(spec.poll_ms);
    let trusted = spec
        .trusted
        .iter()
        .map(|t| GeneratorPublicKey::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let requests = Arc::new(Requests::default());
    let connect = Arc::new(connect);
    let gate = Arc::new(Semaphore::new(spec.gate.max(1)));
    let mut connects = JoinSet::new();
    for i in spec.first..spec.first + spec.agents {
        let (connect, gate) = (connect.clone(), gate.clone());
        connects.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let started = Instant::now();
            connect(i)
                .await
                .with_context(|| format!("agent {i} connecting (for {:?})", started.elapsed()))
        });
    }
    let mut stores = Vec::with_capacity(spec.agents);
    while let Some(r) = connects.join_next().await {
        stores.push(Arc::new(Probed::new(r??, requests.clone())));
    }
    let board = Arc::new(Board::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut agents = JoinSet::new();
    for store in stores {
        let opener = SealedOpener {
            identity: GroupIdentity::from_file_text(identity_text)?,
            trusted: trusted.clone(),
        };
        let syncer = Syncer::new(store.clone(), opener, GROUP.to_owned(), schedule);
        let rotator = Rotator::new(GROUP.to_owned(), schedule, 1);
        agents.spawn(agent_loop(
            syncer,
            rotator,
            store,
            poll,
            board.clone(),
            gate.clone(),
            stop_rx.clone(),
        ));
    }
    // The driver's commands, read by a thread (stdin has no async reader here); the end of
    // stdin (the driver gone) ends the worker.
    let (cmd_tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if cmd_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mono = Mono::new();
    let mut reported: HashMap<Slot, usize> = HashMap::new();
    let mut ready = false;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let outcome = loop {
        let mut text = String::new();
        tokio::select! {
            _ = tick.tick() => {}
            command = commands.recv() => match command.as_deref() {
                Some("snapshot") => {
                    let (reads, clock_reads, errors) = requests.snapshot();
                    let _ = writeln!(text, "requests {reads} {clock_reads} {errors}");
                }
                Some("stop") | None => break Ok(()),
                Some(other) => break Err(anyhow::anyhow!("unknown command {other:?}")),
            },
        }
        for (slot, list) in lock(&board.held).iter() {
            let from = reported.entry(*slot).or_default();
            for h in &list[*from..] {
                let _ = writeln!(
                    text,
                    "held {} {} {} {}",
                    slot.0,
                    mono.ns(h.woke),
                    mono.ns(h.held),
                    wake_name(h.wake)
                );
            }
            *from = list.len();
        }
        if !ready && board.ready.load(Ordering::Relaxed) >= spec.agents {
            ready = true;
            let _ = writeln!(text, "ready {}", spec.agents);
        }
        if !text.is_empty() {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                break Err(e.into());
            }
        }
    };
    let _ = stop_tx.send(true);
    while agents.join_next().await.is_some() {}
    outcome
}

/// Per worker: how many `requests` replies came, and the last one (reads, clock reads, errors).
type Replies = Arc<Mutex<Vec<(u64, (u64, u64, u64))>>>;

/// The driver's side of the worker processes.
struct Workers {
    children: Vec<(tokio::process::Child, tokio::process::ChildStdin)>,
    /// Filled from the workers' reports, as the agents' own board was in one process.
    board: Arc<Board>,
    replies: Replies,
    readers: JoinSet<anyhow::Result<()>>,
}

impl Workers {
    /// Starts one worker per [`AGENTS_PER_WORKER`] agents (at least one) with its share of the
    /// `agents`, and of the connection gate.
    async fn start(
        fleet: &FleetSpec,
        agents: usize,
        poll: Duration,
        trusted: &[GeneratorPublicKey],
        identity_text: &str,
    ) -> anyhow::Result<Workers> {
        let n = agents.div_ceil(AGENTS_PER_WORKER).max(1);
        let exe = std::env::current_exe().context("this benchmark's own binary")?;
        let mono = Mono::new();
        let mut w = Workers {
            children: Vec::new(),
            board: Arc::default(),
            replies: Arc::new(Mutex::new(vec![(0, (0, 0, 0)); n])),
            readers: JoinSet::new(),
        };
        for i in 0..n {
            let first = agents * i / n;
            let spec = WorkerSpec {
                fleet: fleet.clone(),
                first,
                agents: agents * (i + 1) / n - first,
                gate: CONNECT_CONCURRENCY.div_ceil(n),
                trusted: trusted.iter().map(ToString::to_string).collect(),
                poll_ms: poll.as_millis() as u64,
            };
            let mut child = tokio::process::Command::new(&exe)
                .env(WORKER_ENV, "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker process")?;
            let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                bail!("a worker without pipes");
            };
            let mut head = serde_json::to_string(&spec)?;
            head.push('\n');
            stdin.write_all(head.as_bytes()).await?;
            stdin.write_all(identity_text.as_bytes()).await?;
            stdin.write_all(b".\n").await?;
            stdin.flush().await?;
            w.readers.spawn(read_worker(
                i,
                stdout,
                w.board.clone(),
                w.replies.clone(),
                mono,
            ));
            w.children.push((child, stdin));
        }
        Ok(w)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(|(c, _)| c.id()).collect()
    }

    /// An error if a worker has ended (its own error is on stderr).
    fn check(&mut self) -> anyhow::Result<()> {
        match self.readers.try_join_next() {
            None => Ok(()),
            Some(Ok(Ok(()))) => bail!("a worker process ended early (see its error above)"),
            Some(Ok(Err(e))) => Err(e.context("reading a worker's reports")),
            Some(Err(e)) => bail!("a worker's reader failed: {e}"),
        }
    }

    /// The agents' requests so far, summed over the workers (each is asked, and answers).
    async fn requests(&mut self) -> anyhow::Result<(u64, u64, u64)> {
        let before: Vec<u64> = lock(&self.replies).iter().map(|r| r.0).collect();
        for (_, stdin) in &mut self.children {
            stdin.write_all(b"snapshot\n").await?;
            stdin.flush().await?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            {
                let replies = lock(&self.replies);
                if replies.iter().zip(&before).all(|(r, b)| r.0 > *b) {
                    return Ok(replies
                        .iter()
                        .fold((0, 0, 0), |s, (_, r)| (s.0 + r.0, s.1 + r.1, s.2 + r.2)));
                }
            }
            self.check()?;
            if Instant::now() > deadline {
                bail!("the workers did not report their requests in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Tells every worker to stop and waits for it (killed after 30 s).
    async fn stop(mut self) {
        for (_, stdin) in &mut self.children {
            let _ = stdin.write_all(b"stop\n").await;
            let _ = stdin.flush().await;
        }
        for (mut child, stdin) in self.children.drain(..) {
            drop(stdin);
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        self.readers.abort_all();
    }
}

/// Reads worker `i`'s reports into `board` and `replies` until it ends.
async fn read_worker(
    i: usize,
    stdout: tokio::process::ChildStdout,
    board: Arc<Board>,
    replies: Replies,
    mono: Mono,
) -> anyhow::Result<()> {
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        let bad = || anyhow::anyhow!("worker {i} reported {line:?}");
        let words: Vec<&str> = line.split(' ').collect();
        let num = |k: usize| -> anyhow::Result<u64> {
            words.get(k).and_then(|w| w.parse().ok()).ok_or_else(bad)
        };
        match words[0] {
            "held" => {
                let wake = match words.get(4).copied() {
                    Some("start") => Wake::Start,
                    Some("notified") => Wake::Notified,
                    Some("poll") => Wake::Poll,
                    Some("boundary") => Wake::Boundary,
                    _ => return Err(bad()),
                };
                let held = Held {
                    woke: mono.instant(num(2)?),
                    held: mono.instant(num(3)?),
                    wake,
                };
                lock(&board.held)
                    .entry(Slot(num(1)?))
                    .or_default()
                    .push(held);
            }
            "ready" => {
                board.ready.fetch_add(num(1)? as usize, Ordering::Relaxed);
            }
            "requests" => {
                let r = (num(1)?, num(2)?, num(3)?);
                let mut replies = lock(&replies);
                replies[i] = (replies[i].0 + 1, r);
            }
            _ => return Err(bad()),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run: start the fleet, publish records, measure.

/// The store-side counters of one moment.
type Counters = BTreeMap<String, u64>;

/// The counters of one moment: the store's, the agents' requests (reads, clock reads, errors),
/// when, and CPU seconds per process.
type Snapshot = (Counters, (u64, u64, u64), Instant, Vec<f64>);

/// How the driver reads the store's own counters.
enum Load {
    /// `INFO commandstats` and `PUBSUB NUMSUB` on the replicas, summed.
    Redis(Vec<redis::aio::MultiplexedConnection>),
    /// `/metrics` of the etcd members, summed.
    Etcd(Vec<SocketAddr>),
}

impl Load {
    async fn counters(&mut self) -> anyhow::Result<Counters> {
        match self {
            Load::Redis(conns) => {
                let mut sum = Counters::new();
                for conn in conns {
                    let info: String = redis::cmd("INFO")
                        .arg("commandstats")
                        .query_async(conn)
                        .await?;
                    for (k, v) in parse_commandstats(&info) {
                        *sum.entry(k).or_default() += v;
                    }
                }
                Ok(sum)
            }
            Load::Etcd(addrs) => {
                let mut sum = Counters::new();
                for addr in addrs {
                    for (k, v) in parse_etcd_metrics(&http_get(*addr, "/metrics").await?) {
                        *sum.entry(k).or_default() += v;
                    }
                }
                Ok(sum)
            }
        }
    }

    /// How many agents are subscribed to the group's notifications.
    async fn subscribers(&mut self) -> anyhow::Result<u64> {
        match self {
            Load::Redis(conns) => {
                let mut sum = 0;
                for conn in conns {
                    let reply: (String, u64) = redis::cmd("PUBSUB")
                        .arg("NUMSUB")
                        .arg(format!("stek:{GROUP}"))
                        .query_async(conn)
                        .await?;
                    sum += reply.1;
                }
                Ok(sum)
            }
            Load::Etcd(addrs) => {
                let mut sum = 0;
                for addr in addrs {
                    let m = http_get(*addr, "/metrics").await?;
                    sum += metric(&m, "etcd_debugging_mvcc_watcher_total").unwrap_or(0);
                }
                Ok(sum)
            }
        }
    }
}

fn parse_commandstats(info: &str) -> Counters {
    // cmdstat_mget:calls=4000,usec=...,
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (cmd, rest) = l.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((cmd.to_owned(), calls))
        })
        .collect()
}

fn parse_etcd_metrics(text: &str) -> Counters {
    let mut out = Counters::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("grpc_server_started_total{") {
            let Some(method) = rest
                .split("grpc_method=\"")
                .nth(1)
                .and_then(|m| m.split('"').next())
            else {
                continue;
            };
            let Some(n) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            *out.entry(format!("grpc {method}")).or_default() += n as u64;
        }
    }
    for name in [
        "etcd_debugging_mvcc_range_total",
        "etcd_debugging_mvcc_txn_total",
        "etcd_debugging_mvcc_put_total",
    ] {
        if let Some(n) = metric(text, name) {
            out.insert(name.trim_start_matches("etcd_debugging_").to_owned(), n);
        }
    }
    out
}

/// The value of an unlabelled metric.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// One record's propagation.
struct RecordResult {
    slot: Slot,
    /// How long the generator's `create` took.
    create: Duration,
    /// Per agent that got it: from `create` returning until the agent held the key (zero for an
    /// agent that held it before `create` returned to the generator).
    latencies: Vec<Duration>,
    /// Per agent brought the key by a notification: from `create` returning until it woke
    /// (sorted).
    notified: Vec<Duration>,
    /// Per agent brought the key by a notification: how long its `sync` took (read the window,
    /// open the record), sorted.
    syncs: Vec<Duration>,
    /// Agents that held it before `create` returned.
    early: usize,
    wakes: BTreeMap<&'static str, usize>,
}

struct Report {
    /// Resident memory per process (now, peak) in MiB, with the fleet connected.
    rss: Vec<(&'static str, (f64, f64))>,
    /// The load averages when the run began and ended.
    load: (String, String),
    /// How long the run took, servers' start and fleet's connection included.
    wall: Duration,
    store: &'static str,
    setup: String,
    connect: Duration,
    records: Vec<RecordResult>,
    missed: usize,
    periods: f64,
    /// Store counters' deltas over the measured periods.
    store_load: Counters,
    /// The agents' requests over the measured periods: reads, clock reads, errors.
    agent_requests: (u64, u64, u64),
    agents: usize,
    poll: Duration,
    /// CPU seconds per process over the measured periods.
    cpu: Vec<(&'static str, f64)>,
    /// CPU seconds per process from each record's publication until its last agent held it,
    /// summed over the records, and that time.
    burst_cpu: Vec<(&'static str, f64)>,
    burst_wall: Duration,
}

/// Labels CPU seconds measured as the servers, the agent processes, this process and the whole
/// machine (the order of `run`'s samples); the machine's become what the others do not explain.
fn cpu_by_process(
    servers: &[(&'static str, &Server)],
    seconds: impl IntoIterator<Item = f64>,
) -> Vec<(&'static str, f64)> {
    let mut cpu: Vec<(&'static str, f64)> = servers
        .iter()
        .map(|(n, _)| *n)
        .chain([
            "agent processes",
            "this process (generator)",
            "whole machine",
        ])
        .zip(seconds)
        .collect();
    let ours: f64 = cpu[..cpu.len() - 1].iter().map(|(_, c)| c).sum();
    let machine = cpu.pop().map_or(0.0, |(_, c)| c);
    cpu.push(("everything else on the machine", (machine - ours).max(0.0)));
    cpu
}

fn wake_name(w: Wake) -> &'static str {
    match w {
        Wake::Start => "start",
        Wake::Notified => "notified",
        Wake::Poll => "poll",
        Wake::Boundary => "boundary",
    }
}

/// Runs the fleet against one store. `connect` makes one agent's store connection; `generator`
/// is the generator's store.
async fn run<S: Store>(
    name: &'static str,
    setup: String,
    cfg: &Config,
    generator: S,
    fleet: FleetSpec,
    mut load: Load,
    servers: &[(&'static str, &Server)],
) -> anyhow::Result<Report> {
    let run_started = Instant::now();
    let load_before = loadavg();
    let clock = SystemClock::new();
    let schedule = Schedule::new(PERIOD, LIFETIME)?;
    let poll = cfg
        .poll
        .unwrap_or_else(|| stek::agent::default_poll(&schedule));
    let signer = GeneratorKey::generate()?;
    let identity = GroupIdentity::generate()?;
    let recipients = vec![identity.public()];
    let identity_text = identity.to_file_text();
    let trusted: Vec<GeneratorPublicKey> = vec![signer.public()];
    let seal =
        |k: &SlotKey| Record::seal(&schedule, GROUP, k, &recipients, &signer).map(|r| r.encode());

    let generator = Probed::new(generator, Arc::default());
    // The keys the fleet needs now, before any agent starts.
    publish_upcoming(&generator, &schedule, GROUP, clock.now(), seal)
        .await
        .context("the first publication")?;

    // Start the fleet: the workers connect their agents, a bounded number at a time.
    let connecting = Instant::now();
    let mut workers = Workers::start(&fleet, cfg.agents, poll, &trusted, &identity_text).await?;
    let board = workers.board.clone();
    // Every agent has synced once and listens for changes.
    let patience = Duration::from_secs(60) + Duration::from_millis(50) * cfg.agents as u32;
    let deadline = Instant::now() + patience;
    loop {
        let ready = board.ready.load(Ordering::Relaxed);
        // A server busy accepting the fleet may answer late: asked again at the next turn.
        let subscribed = load.subscribers().await.unwrap_or(0);
        if ready >= cfg.agents && subscribed >= cfg.agents as u64 {
            break;
        }
        workers.check()?;
        if Instant::now() > deadline {
            bail!("after {patience:?}, {ready} agents synced and {subscribed} listen for changes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_time = connecting.elapsed();
    eprintln!(
        "propagation: {name}: {} agents connected, synced and listening in {:.2} s",
        cfg.agents,
        connect_time.as_secs_f64()
    );
    // Catch up on the slots that began while the fleet connected (not measured).
    publish_upcoming(&generator, &schedule, GROUP, clock.now(), seal)
        .await
        .context("catching up")?;

    // One record per slot, published mid-slot for the next slot.
    let mut results = Vec::new();
    let mut missed = 0;
    let pids = workers.pids();
    let cpu = || -> Vec<f64> {
        servers
            .iter()
            .map(|(_, s)| s.cpu())
            .chain([
                pids.iter()
                    .map(|p| process_cpu(&format!("/proc/{p}/stat")))
                    .sum(),
                process_cpu("/proc/self/stat"),
                machine_busy_cpu(),
            ])
            .collect()
    };
    let mut first: Option<Snapshot> = None;
    // CPU seconds per process from each publication until its last agent held the key.
    let mut burst = vec![0.0; cpu().len()];
    let mut burst_wall = Duration::ZERO;
    let mut last = None;
    for i in 0..=cfg.records {
        let now = clock.now();
        let at = schedule.start(schedule.slot_at(now).plus(1)) + schedule.period() / 2;
        tokio::time::sleep(at.saturating_sub(now)).await;
        let snapshot: Snapshot = (
            load.counters()
                .await
                .context("reading the store's counters")?,
            workers.requests().await?,
            Instant::now(),
            cpu(),
        );
        if i == 0 {
            first = Some(snapshot);
        } else if i == cfg.records {
            last = Some(snapshot);
            break;
        }
        let (cpu_before, burst_started) = (cpu(), Instant::now());
        let made = publish_upcoming(&generator, &schedule, GROUP, clock.now(), seal)
            .await
            .context("publishing")?;
        // One new record: the next slot's. (Had this loop fallen a period behind, the current
        // slot's too; only the newest is measured.)
        let Some(&(slot, Outcome::Created(_))) = made.iter().max_by_key(|(s, _)| *s) else {
            bail!("expected a new record, the generator reports {made:?}");
        };
        if made.len() > 1 {
            eprintln!(
                "propagation: {name}: the generator caught up {} slots",
                made.len()
            );
        }
        let (called, returned) = lock(&generator.created)
            .get(&slot)
            .copied()
            .context("the create was not timed")?;
        // Wait until every agent holds the key, or gives up.
        let give_up = returned + MISS_AFTER;
        loop {
            let have = lock(&board.held).get(&slot).map_or(0, Vec::len);
            if have >= cfg.agents || Instant::now() > give_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        burst_wall += burst_started.elapsed();
        for (sum, (a, b)) in burst.iter_mut().zip(cpu_before.iter().zip(cpu())) {
            *sum += b - a;
        }
        let got = lock(&board.held).get(&slot).cloned().unwrap_or_default();
        missed += cfg.agents.saturating_sub(got.len());
        let mut wakes = BTreeMap::new();
        for h in &got {
            *wakes.entry(wake_name(h.wake)).or_default() += 1;
        }
        let early = got.iter().filter(|h| h.held < returned).count();
        let mut latencies: Vec<Duration> = got
            .iter()
            .map(|h| h.held.saturating_duration_since(returned))
            .collect();
        latencies.sort();
        let mut notified: Vec<Duration> = got
            .iter()
            .filter(|h| h.wake == Wake::Notified)
            .map(|h| h.woke.saturating_duration_since(returned))
            .collect();
        notified.sort();
        let mut syncs: Vec<Duration> = got
            .iter()
            .filter(|h| h.wake == Wake::Notified)
            .map(|h| h.held - h.woke)
            .collect();
        syncs.sort();
        eprintln!(
            "propagation: {name}: slot {slot}: {} of {} agents, p50 {} ms, p99 {} ms, max {} ms",
            latencies.len(),
            cfg.agents,
            ms(quantile(&latencies, 0.5)),
            ms(quantile(&latencies, 0.99)),
            ms(quantile(&latencies, 1.0))
        );
        results.push(RecordResult {
            slot,
            create: returned - called,
            latencies,
            notified,
            syncs,
            early,
            wakes,
        });
    }

    // Memory with the whole fleet connected, before it stops.
    let rss: Vec<(&'static str, (f64, f64))> = servers
        .iter()
        .map(|(n, s)| (*n, rss_mib(&format!("/proc/{}/status", s.child.id()))))
        .chain([
            ("agent processes", {
                let each = pids.iter().map(|p| rss_mib(&format!("/proc/{p}/status")));
                each.fold((0.0, 0.0), |(a, b), (c, d)| (a + c, b + d))
            }),
            ("this process (generator)", rss_mib("/proc/self/status")),
        ])
        .collect();
    workers.stop().await;

    let (Some((c0, r0, t0, u0)), Some((c1, r1, t1, u1))) = (first, last) else {
        bail!("no measurement");
    };
    let store_load = c1
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(c0.get(k).copied().unwrap_or(0))))
        .filter(|(_, v)| *v > 0)
        .collect();
    Ok(Report {
        rss,
        load: (load_before, loadavg()),
        wall: run_started.elapsed(),
        store: name,
        setup,
        connect: connect_time,
        records: results,
        missed,
        periods: (t1 - t0).as_secs_f64() / PERIOD.as_secs_f64(),
        store_load,
        agent_requests: (r1.0 - r0.0, r1.1 - r0.1, r1.2 - r0.2),
        agents: cfg.agents,
        poll,
        cpu: cpu_by_process(servers, u0.iter().zip(&u1).map(|(a, b)| b - a)),
        burst_cpu: cpu_by_process(servers, burst),
        burst_wall,
    })
}

// ---------------------------------------------------------------------------------------------
// The stores.

/// Names of the Redis replicas, as the report shows them.
const ETCD_MEMBER_NAMES: [&str; 8] = [
    "etcd member 1",
    "etcd member 2",
    "etcd member 3",
    "etcd member 4",
    "etcd member 5",
    "etcd member 6",
    "etcd member 7",
    "etcd member 8",
];

const ENDPOINT_NAMES: [&str; 8] = [
    "redis replica 1",
    "redis replica 2",
    "redis replica 3",
    "redis replica 4",
    "redis replica 5",
    "redis replica 6",
    "redis replica 7",
    "redis replica 8",
];

/// A CA and a server certificate for 127.0.0.1 (rcgen, as the TLS tests make them), as files in
/// `dir`: (CA PEM bytes, CA path, certificate path, key path).
fn make_tls(dir: &Path) -> anyhow::Result<(Vec<u8>, String, String, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "stek bench CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    let path = |name: &str| dir.join(name).display().to_string();
    std::fs::write(path("ca.pem"), ca.pem())?;
    std::fs::write(path("server.pem"), cert.pem())?;
    std::fs::write(path("server.key"), key.serialize_pem())?;
    Ok((
        ca.pem().into_bytes(),
        path("ca.pem"),
        path("server.pem"),
        path("server.key"),
    ))
}

fn tls_access(ca: &[u8]) -> LoadedAccess {
    LoadedAccess {
        ca_pem: Some(ca.to_vec()),
        ..LoadedAccess::default()
    }
}

async fn bench_redis(cfg: &Config) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let replicas = cfg.endpoints.min(ENDPOINT_NAMES.len());
    let tls = if cfg.tls {
        Some(make_tls(dir.path())?)
    } else {
        None
    };
    // Every server has a plain port (replication, and this benchmark's INFO and PUBSUB); with
    // TLS, the generator and the agents use its TLS port.
    let redis_args = |port: u16, tls_port: u16, sub: &str| -> anyhow::Result<Vec<String>> {
        let d = dir.path().join(sub);
        std::fs::create_dir(&d)?;
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "100000",
            "--dir",
            &d.display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some((_, ca, cert, key)) = &tls {
            args.extend(
                [
                    "--tls-port",
                    &tls_port.to_string(),
                    "--tls-cert-file",
                    cert,
                    "--tls-key-file",
                    key,
                    "--tls-ca-cert-file",
                    ca,
                    "--tls-auth-clients",
                    "no",
                ]
                .map(str::to_owned),
            );
        }
        Ok(args)
    };
    let (p0, t0) = (port::free_port(), port::free_port());
    let mut args = redis_args(p0, t0, "primary")?;
    args.extend(["--repl-diskless-sync-delay", "0"].map(str::to_owned));
    let primary = Server::spawn("redis-server", &args, &dir.path().join("primary.log"))?;
    let primary_url = format!("redis://127.0.0.1:{p0}");
    wait_redis(&primary_url, None).await?;
    let mut replica_servers = Vec::new();
    let mut conns = Vec::new();
    let mut agent_urls = Vec::new();
    for i in 0..replicas {
        let (p, t) = (port::free_port(), port::free_port());
        let mut args = redis_args(p, t, &format!("replica{i}"))?;
        args.extend(["--replicaof", "127.0.0.1", &p0.to_string()].map(str::to_owned));
        replica_servers.push(Server::spawn(
            "redis-server",
            &args,
            &dir.path().join(format!("replica{i}.log")),
        )?);
        let url = format!("redis://127.0.0.1:{p}");
        conns.push(wait_redis(&url, Some("master_link_status:up")).await?);
        agent_urls.push(if cfg.tls {
            format!("rediss://127.0.0.1:{t}")
        } else {
            url
        });
    }
    let version = redis_version(&primary_url).await.unwrap_or_default();
    let fleet = FleetSpec {
        store: "redis".to_owned(),
        urls: agent_urls,
        ca: tls
            .as_ref()
            .map(|t| String::from_utf8(t.0.clone()))
            .transpose()?,
    };
    let generator_url = if cfg.tls {
        format!("rediss://127.0.0.1:{t0}")
    } else {
        primary_url
    };
    let generator = RedisStore::connect_with(&generator_url, &fleet.access())
        .await
        .context("the generator connecting")?;
    let mut servers: Vec<(&'static str, &Server)> = vec![("redis primary", &primary)];
    servers.extend(ENDPOINT_NAMES.iter().copied().zip(&replica_servers));
    run(
        "Redis",
        format!(
            "Redis {version}{}: generator on the primary, agents on {replicas} replica(s) (1 connection + 1 pub/sub subscription each)",
            if cfg.tls { " over TLS" } else { "" }
        ),
        cfg,
        generator,
        fleet,
        Load::Redis(conns),
        &servers,
    )
    .await
}

async fn bench_etcd(cfg: &Config) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let tls = if cfg.tls {
        Some(make_tls(dir.path())?)
    } else {
        None
    };
    // One member per endpoint, each with a client port (TLS or not), a peer port and a plain
    // metrics port.
    let members = cfg.endpoints.min(ETCD_MEMBER_NAMES.len());
    let scheme = if cfg.tls { "https" } else { "http" };
    let mut ports = Vec::new();
    for _ in 0..members {
        ports.push((port::free_port(), port::free_port(), port::free_port()));
    }
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer, _))| format!("n{}=http://127.0.0.1:{peer}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut etcds = Vec::new();
    for (i, (client, peer, metrics)) in ports.iter().enumerate() {
        let peer_url = format!("http://127.0.0.1:{peer}");
        let client_url = format!("{scheme}://127.0.0.1:{client}");
        let mut args: Vec<String> = vec![
            "--name".into(),
            format!("n{}", i + 1),
            "--data-dir".into(),
            dir.path().join(format!("data{i}")).display().to_string(),
            "--listen-client-urls".into(),
            client_url.clone(),
            "--advertise-client-urls".into(),
            client_url,
            // /metrics and /health over plain HTTP, whatever the clients speak.
            "--listen-metrics-urls".into(),
            format!("http://127.0.0.1:{metrics}"),
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url,
            "--initial-cluster".into(),
            cluster.clone(),
            // Raft's timers for a machine whose cores the fleet saturates: with the defaults
            // (100 ms heartbeats, 1 s elections) a starved member loses its leader, which ends
            // every watch opened with `hasleader` (as stek's are), and the agents' resubscribing
            // starves it again.
            "--heartbeat-interval".into(),
            "500".into(),
            "--election-timeout".into(),
            "10000".into(),
        ];
        if let Some((_, _, cert, key)) = &tls {
            args.extend([
                "--cert-file".into(),
                cert.clone(),
                "--key-file".into(),
                key.clone(),
            ]);
        }
        etcds.push(Server::spawn(
            "etcd",
            &args,
            &dir.path().join(format!("etcd{i}.log")),
        )?);
    }
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|(_, _, m)| ([127, 0, 0, 1], *m).into())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in &addrs {
        loop {
            if let Ok(body) = http_get(*addr, "/health").await {
                if body.contains("\"health\":\"true\"") {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("the etcd cluster did not become healthy in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let version = etcd_version().unwrap_or_else(|| "?".to_owned());

    let scheme = if cfg.tls { "etcds" } else { "etcd" };
    let fleet = FleetSpec {
        store: "etcd".to_owned(),
        urls: ports
            .iter()
            .map(|(p, _, _)| format!("{scheme}://127.0.0.1:{p}"))
            .collect(),
        ca: tls
            .as_ref()
            .map(|t| String::from_utf8(t.0.clone()))
            .transpose()?,
    };
    let generator = EtcdStore::connect_with(&fleet.urls[0], &fleet.access())?;
    let servers: Vec<(&'static str, &Server)> =
        ETCD_MEMBER_NAMES.iter().copied().zip(&etcds).collect();
    run(
        "etcd",
        format!(
            "etcd {version}{}, {members} member(s): generator on the first, agents spread over all (own HTTP connections + 1 watch stream each, JSON gateway)",
            if cfg.tls { " over TLS" } else { "" },
        ),
        cfg,
        generator,
        fleet,
        Load::Etcd(addrs),
        &servers,
    )
    .await
}

/// etcd's version, from `etcd --version` (the member's `/version` may be TLS-only).
fn etcd_version() -> Option<String> {
    let out = Command::new("etcd").arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .map(|v| v.trim().to_owned())
}

// ---------------------------------------------------------------------------------------------
// Servers and small helpers.

/// A server process, killed when dropped.
struct Server {
    child: Child,
}

impl Server {
    /// CPU seconds (user + system) the process has used so far.
    fn cpu(&self) -> f64 {
        process_cpu(&format!("/proc/{}/stat", self.child.id()))
    }

    fn spawn(program: &str, args: &[String], log: &Path) -> anyhow::Result<Server> {
        let out = std::fs::File::create(log)?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        Ok(Server { child })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the Redis at `url` answers (and its `INFO replication` contains `want`).
async fn wait_redis(
    url: &str,
    want: Option<&str>,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The benchmark's own connection: a replica busy with thousands of TLS clients answers
        // INFO late, which is no failure of the run.
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        if let Ok(mut conn) = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            let info: redis::RedisResult<String> = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await;
            if let Ok(info) = info {
                if want.is_none_or(|w| info.contains(w)) {
                    return Ok(conn);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("{url} not ready in 20 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn redis_version(url: &str) -> anyhow::Result<String> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned())
}

/// The body of `GET path` over HTTP/1.0.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// Linux reports process CPU times in USER_HZ ticks, fixed at 100 by its ABI.
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) of the process whose `stat` file is `path`.
fn process_cpu(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / USER_HZ
}

/// CPU seconds the whole machine has spent busy (all CPUs, everything but idle and iowait).
fn machine_busy_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is included in user)
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    busy / USER_HZ
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Open files for `agents` agents (or a server of as many), with some spare: per agent 2
/// connections, Redis commands + notifications, or an etcd watch stream + one pooled connection
/// (more for a moment while a whole window is read).
fn fd_need(agents: usize) -> u64 {
    agents as u64 * 2 + 256
}

/// Raises the limit on open files to `wanted`: the soft limit up to the hard limit, and the hard
/// limit too where the process may (root). Returns the soft limit in force.
#[allow(unsafe_code)]
fn raise_fd_limit(wanted: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur >= wanted {
        return lim.rlim_cur;
    }
    for max in [lim.rlim_max.max(wanted), lim.rlim_max] {
        let raised = libc::rlimit {
            rlim_cur: wanted.min(max),
            rlim_max: max,
        };
        // SAFETY: setrlimit reads a valid rlimit struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// Resident memory of the process whose `status` file is `path`: now and at its peak, in MiB.
fn rss_mib(path: &str) -> (f64, f64) {
    let Ok(status) = std::fs::read_to_string(path) else {
        return (0.0, 0.0);
    };
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// The machine's load averages over 1, 5 and 15 minutes, as `uptime` prints them.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The report.

/// The `q` quantile of sorted `v` (nearest rank).
fn quantile(v: &[Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The latencies of every record of `r`, sorted.
fn gather(r: &Report, pick: impl Fn(&RecordResult) -> &[Duration]) -> Vec<Duration> {
    let mut all: Vec<Duration> = r
        .records
        .iter()
        .flat_map(|x| pick(x).iter().copied())
        .collect();
    all.sort();
    all
}

/// "p50/p99" of sorted `v`, in milliseconds.
fn p50_p99(v: &[Duration]) -> String {
    format!("{}/{}", ms(quantile(v, 0.5)), ms(quantile(v, 0.99)))
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// How long one agent takes to decode and open one sealed record, on one core.
fn open_cost() -> anyhow::Result<Duration> {
    const ROUNDS: u32 = 500;
    let schedule = Schedule::new(PERIOD, LIFETIME)?;
    let signer = GeneratorKey::generate()?;
    let identity = GroupIdentity::generate()?;
    let slot = schedule.slot_at(SystemClock::new().now());
    let key = SlotKey::generate(slot)?;
    let bytes = Record::seal(&schedule, GROUP, &key, &[identity.public()], &signer)?.encode();
    let trusted = [signer.public()];
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let record = Record::decode(&bytes)?;
        let opened = record.open_sealed(&schedule, GROUP, slot, &identity, &trusted)?;
        assert!(opened.name() == key.name());
    }
    Ok(started.elapsed() / ROUNDS)
}

fn print_reports(cfg: &Config, reports: &[Report], open: Duration, total: Duration) {
    println!();
    println!(
        "propagation: {} agents per store, TLS {}, P = {} s, L = {} s, {} record(s) per store; latency = create returned -> agent holds the opened key",
        cfg.agents,
        if cfg.tls { "on" } else { "off" },
        PERIOD.as_secs(),
        LIFETIME.as_secs(),
        cfg.records
    );
    println!(
        "CPUs: {} (agents, generator and servers share them); opening one record (decode + HPKE open + signature check) takes {:.0} us of one core: {} ms of CPU per record for {} agents",
        cores(),
        open.as_secs_f64() * 1e6,
        ms(open * cfg.agents as u32),
        cfg.agents
    );
    for r in reports {
        println!();
        println!("== {}: {}", r.store, r.setup);
        println!(
            "fleet connected, synced and subscribed in {:.2} s; poll {} ms +-20%, boundary wake-ups, 1 clock read per period",
            r.connect.as_secs_f64(),
            r.poll.as_millis()
        );
        println!(
            "{:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>15} {:>15}  woken by",
            "slot",
            "create ms",
            "min ms",
            "p50 ms",
            "p99 ms",
            "max ms",
            "agents",
            "early",
            "notify p50/p99",
            "sync p50/p99"
        );
        for rec in &r.records {
            let wakes: Vec<String> = rec.wakes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!(
                "{:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>15} {:>15}  {}",
                rec.slot.0,
                ms(rec.create),
                ms(quantile(&rec.latencies, 0.0)),
                ms(quantile(&rec.latencies, 0.5)),
                ms(quantile(&rec.latencies, 0.99)),
                ms(quantile(&rec.latencies, 1.0)),
                rec.latencies.len(),
                rec.early,
                p50_p99(&rec.notified),
                p50_p99(&rec.syncs),
                wakes.join(", ")
            );
        }
        let all = gather(r, |x| &x.latencies);
        println!(
            "{:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>15} {:>15}  missed (not held after {} s): {}",
            "all",
            "",
            ms(quantile(&all, 0.0)),
            ms(quantile(&all, 0.5)),
            ms(quantile(&all, 0.99)),
            ms(quantile(&all, 1.0)),
            all.len(),
            r.records.iter().map(|x| x.early).sum::<usize>(),
            p50_p99(&gather(r, |x| &x.notified)),
            p50_p99(&gather(r, |x| &x.syncs)),
            MISS_AFTER.as_secs(),
            r.missed
        );
        println!("(early: agents holding the key before create returned to the generator, counted as 0 ms; of the agents a notification woke: notify = create returned -> woken, sync = woken -> read and opened)");
        let per = |n: u64| n as f64 / r.agents as f64 / r.periods;
        let (reads, clock_reads, errors) = r.agent_requests;
        println!(
            "load over {:.2} periods: per agent per period {:.2} window reads + {:.2} clock reads ({} failed in all) = {:.2} store requests{}",
            r.periods,
            per(reads),
            per(clock_reads),
            errors,
            per(store_requests(r)),
            if r.store == "etcd" {
                " (etcd: the member's Range calls, the generator's few included, + clock reads; window reads the watch answered cost none)"
            } else {
                " (Redis: one EVAL_RO per window read + one TIME per clock read)"
            }
        );
        let counted: Vec<String> = r
            .store_load
            .iter()
            .map(|(k, v)| format!("{k} {v} ({:.2}/agent/period)", per(*v)))
            .collect();
        println!(
            "store's own counters ({}): {}",
            match r.store {
                "Redis" => "replica INFO commandstats deltas; includes this benchmark's INFO and replicated SET/PUBLISH",
                _ => "etcd /metrics deltas; gRPC calls include the generator's and the JSON gateway's",
            },
            counted.join(", ")
        );
        let rss: Vec<String> = r
            .rss
            .iter()
            .map(|(n, (now, peak))| format!("{n} {now:.0} MiB (peak {peak:.0})"))
            .collect();
        println!(
            "resident memory with the fleet connected: {}",
            rss.join(", ")
        );
        println!(
            "run wall time {:.1} s; load average (1 5 15 min) {} at start, {} at end",
            r.wall.as_secs_f64(),
            r.load.0,
            r.load.1
        );
        let cpu: Vec<String> = r.cpu.iter().map(|(n, c)| format!("{n} {c:.2} s")).collect();
        println!(
            "CPU over those {:.1} s (the machine has {:.1} CPU-s): {}",
            r.periods * PERIOD.as_secs_f64(),
            r.periods * PERIOD.as_secs_f64() * cores() as f64,
            cpu.join(", ")
        );
        let records = r.records.len().max(1) as f64;
        let ours: f64 = r.burst_cpu[..r.burst_cpu.len() - 1]
            .iter()
            .map(|(_, c)| c)
            .sum();
        let per: Vec<String> = r
            .burst_cpu
            .iter()
            .map(|(n, c)| format!("{n} {:.2} s", c / records))
            .collect();
        println!(
            "CPU per record, from its publication until its last agent held it ({:.0} ms on average): {}; {:.2} CPU-s of work for the fleet and the store, which {} cores cannot finish in less than {:.0} ms: a floor under the last agent's latency on this machine",
            r.burst_wall.as_secs_f64() * 1000.0 / records,
            per.join(", "),
            ours / records,
            cores(),
            ours / records / cores() as f64 * 1000.0
        );
    }
    println!("run time {:.1} s", total.as_secs_f64());
}

/// The requests the agents sent to the store over the measured periods: for Redis one command
/// per window read and per clock read; for etcd the member's Range calls (a window read answered
/// by the watch sends none) and the clock reads (`GET /version`).
fn store_requests(r: &Report) -> u64 {
    let (reads, clock_reads, _) = r.agent_requests;
    match r.store {
        "etcd" => r.store_load.get("grpc Range").copied().unwrap_or(0) + clock_reads,
        _ => reads + clock_reads,
    }
}

/// One line per run: the figures the issue asks for.
fn print_summary(all: &[(Config, Report)]) {
    println!();
    println!(
        "{:<6} {:>4} {:>7} {:>8} {:>9} {:>9} {:>9} {:>7} {:>28} {:>8} {:>9}  target p99 <= {} ms",
        "store",
        "TLS",
        "agents",
        "records",
        "p50 ms",
        "p99 ms",
        "max ms",
        "missed",
        "store requests/agent/period",
        "wall s",
        "RSS MiB",
        TARGET_P99.as_millis()
    );
    for (cfg, r) in all {
        let all = gather(r, |x| &x.latencies);
        let p99 = quantile(&all, 0.99);
        println!(
            "{:<6} {:>4} {:>7} {:>8} {:>9} {:>9} {:>9} {:>7} {:>28.2} {:>8.1} {:>9.0}  {}",
            r.store,
            if cfg.tls { "on" } else { "off" },
            r.agents,
            r.records.len(),
            ms(quantile(&all, 0.5)),
            ms(p99),
            ms(quantile(&all, 1.0)),
            r.missed,
            store_requests(r) as f64 / r.agents as f64 / r.periods,
            r.wall.as_secs_f64(),
            r.rss.iter().map(|(_, (now, _))| now).sum::<f64>(),
            if p99 <= TARGET_P99 && r.missed == 0 {
                "met"
            } else {
                "MISSED"
            }
        );
    }
}
