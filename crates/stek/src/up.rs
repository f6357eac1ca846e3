//! `stek up`: generator, agent and embedded store in one process, for one machine.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use stek_core::{Encrypting, Record, Ring, Schedule, SlotKey};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::agent::{Agent, PlainOpener};
use crate::clock::Clock;
use crate::generator::publish_upcoming;
use crate::memcached::{self, KeyTable, Limits, Listener};
use crate::onchange::OnChange;
use crate::sink::{FileSinks, SinkKind};
use crate::store::MemoryStore;

/// Everything `stek up` needs, already validated.
#[derive(Debug, Clone)]
pub struct UpConfig {
    /// The group's schedule.
    pub schedule: Schedule,
    /// The group name (appears in records and logs).
    pub group: String,
    /// The key directory, absolute, already checked to be on tmpfs/ramfs (or overridden).
    pub dir: PathBuf,
    /// Which file sinks to write.
    pub sinks: Vec<SinkKind>,
    /// The command to run after each change of the files.
    pub on_change: Option<String>,
    /// Limits of the memcached-protocol server.
    pub memcached_limits: Limits,
}

/// Runs until `shutdown` resolves. `listeners` are the memcached-protocol endpoints, already
/// bound (so that address errors surface before anything runs).
pub async fn run(
    cfg: UpConfig,
    clock: Arc<dyn Clock>,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let schedule = cfg.schedule;
    let store = Arc::new(MemoryStore::new(clock.clone()));
    let mut agent = Agent::new(store.clone(), PlainOpener, cfg.group.clone(), schedule, 1);
    let mut sinks = FileSinks::new(&cfg.dir, &cfg.sinks);
    let on_change = cfg
        .on_change
        .clone()
        .map(|cmd| OnChange::spawn(cmd, (schedule.period() / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))));
    let (table_tx, table_rx) = watch::channel(Arc::new(KeyTable::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    for l in listeners {
        let rx = table_rx.clone();
        let mut stop = stop_rx.clone();
        let limits = cfg.memcached_limits.clone();
        servers.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = memcached::serve(l, rx, limits, shutdown).await {
                error!("memcached server stopped: {e}");
            }
        }));
    }

    let seal = |k: &SlotKey| Ok(Record::plain(&schedule, &cfg.group, k).encode());
    tokio::pin!(shutdown);
    loop {
        let now = clock.now();
        if let Err(e) = publish_upcoming(&*store, &schedule, &cfg.group, now, seal).await {
            // Only randomness can fail here (the embedded store cannot): keep serving the ring.
            error!("could not make the next key: {e}");
        }
        if let Err(e) = agent.sync(now).await {
            error!("could not read the embedded store: {e}");
        }
        match agent.rebuild(now) {
            Ok(Some(ring)) => {
                deliver(ring, &mut sinks, &table_tx, on_change.as_ref());
            }
            Ok(None) => {}
            Err(e) => error!("could not make a local key: {e}"),
        }
        // Sleep to the next slot boundary (re-reading the clock after, so a suspended machine or
        // a stepped clock is caught up at once), but at most a minute.
        let wake = schedule.next_rotation(now);
        let nap = wake.saturating_sub(clock.now()).min(Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(nap + Duration::from_millis(1)) => {}
            _ = &mut shutdown => break,
        }
    }
    info!("shutting down: key files stay in place (on memory-backed storage) so servers can still reload");
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    Ok(())
}

fn deliver(ring: &Ring, sinks: &mut FileSinks, table: &watch::Sender<Arc<KeyTable>>, on_change: Option<&OnChange>) {
    let enc = ring.encrypting_entry();
    match ring.encrypting() {
        Encrypting::Current => info!(
            "rotated to slot {}: key {} encrypts, {} keys decrypt",
            ring.current(),
            enc.key.name(),
            ring.entries().len()
        ),
        Encrypting::Stale { behind } => warn!(
            "slot {} has no key yet: key {} of {behind} period(s) ago keeps encrypting",
            ring.current(),
            enc.key.name()
        ),
        Encrypting::LocalFallback => warn!(
            "no recent shared key: a local random key {} encrypts; resumption works on this host only",
            enc.key.name()
        ),
    }
    table.send_replace(Arc::new(KeyTable::from_ring(ring)));
    let (written, failed) = sinks.deliver(ring);
    if !written.is_empty() {
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        info!("files written: {}", files.join(", "));
    }
    for f in &failed {
        error!("could not write the {} files (the previous ones stay valid): {}", f.sink.name(), f.error);
    }
    if let Some(oc) = on_change {
        if !written.is_empty() {
            oc.notify();
        }
    }
}
