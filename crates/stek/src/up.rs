//! `stek up`: generator, agent and embedded store in one process, for one machine. The same
//! loops as `stek generator` and `stek agent`, joined by an in-process store whose records hold
//! plain secrets (nothing leaves the process).

use std::future::Future;
use std::sync::Arc;

use stek_core::{Record, Schedule, SlotKey};
use tokio::sync::watch;

use crate::agent::{self, AgentConfig, HostOptions, PlainOpener};
use crate::clock::Clock;
use crate::generator::{generator_round, publish_margin, run_generator, GroupPlan, RecordCheck};
use crate::memcached::Listener;
use crate::metrics::Metrics;
use crate::store::MemoryStore;

/// Runs until `shutdown` resolves. `listeners` are the memcached-protocol endpoints, already
/// bound (so that address errors surface before anything runs).
pub async fn run(
    schedule: Schedule,
    group: String,
    host: HostOptions,
    clock: Arc<dyn Clock>,
    listeners: Vec<Listener>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let store = Arc::new(MemoryStore::new(clock.clone()));
    let g = group.clone();
    let plan = GroupPlan::new(
        group.clone(),
        schedule,
        Arc::new(move |k: &SlotKey| Ok(Record::plain(&schedule, &g, k).encode())),
        RecordCheck::Plain,
    );
    // The first keys exist before the agent's first look, so it never starts on a fallback.
    let plans = std::slice::from_ref(&plan);
    generator_round(
        &*store,
        plans,
        clock.now() + publish_margin(plans),
        &metrics,
    )
    .await;

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let generator = tokio::spawn(run_generator(
        store.clone(),
        vec![plan],
        clock.clone(),
        metrics.clone(),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let config = AgentConfig::new(group, schedule);
    agent::run_on_host(
        store,
        PlainOpener,
        config,
        host,
        clock,
        listeners,
        metrics,
        shutdown,
    )
    .await;
    let _ = stop_tx.send(true);
    let _ = generator.await;
}
