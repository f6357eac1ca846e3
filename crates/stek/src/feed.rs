//! In-process delivery of rings: an agent inside a server process hands every new ring to
//! consumers in the same process, above all the rustls ticketer of the `stek-rustls` crate.
//!
//! - [`RingFeed`] is a list of callbacks, each called with every ring the agent delivers (a
//!   new slot, a key arriving from the store, a fallback), synchronously, in the agent's loop.
//! - [`run_embedded_agent`] runs the agent loop of `stek agent` ([`crate::agent::run`]) with
//!   the feed as its only sink: no key files, no memcached server, no status file, but the same
//!   rotation on the clock, the same store reads, clock checks and status (in [`Metrics`]). It
//!   keeps serving (and rotating onto local keys) while the store is unreachable.
//!
//! With `stek-rustls` (which does not depend on this crate; your server depends on both):
//!
//! ```ignore
//! let ticketer = stek_rustls::Ticketer::new();
//! server_config.ticketer = Arc::new(ticketer.clone());
//! let feed = RingFeed::new().with(move |ring| {
//!     if let Err(e) = ticketer.install_ring(ring) {
//!         tracing::error!("could not install the ticket keys: {e}");
//!     }
//! });
//! let config = AgentConfig::new("web", schedule);
//! let metrics = Metrics::new(); // metrics.status(): the ring by name, sync state, clock offset
//! tokio::spawn(run_embedded_agent(store, opener, config, clock, feed, metrics.clone(), shutdown));
//! ```
//!
//! `crates/stek-rustls/examples/in_process.rs` runs that end to end.

use std::future::Future;
use std::sync::Arc;

use crate::agent::{self, AgentConfig, Opener};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::store::Store;

pub use crate::sink::feed::{RingFeed, RingListener};

/// Runs an agent in this process until `shutdown` resolves, handing every new ring to `feed`.
///
/// It is the same loop as `stek agent` ([`crate::agent::run`]): the store is read by a task of its
/// own, rotation follows the clock alone, the clock offset to the store is measured every period
/// and a stepped clock is logged. Its status (the ring by name, sync state, clock offset,
/// rejected records) is in `metrics` ([`Metrics::status`], [`Metrics::render`]); serve it with
/// [`crate::metrics::serve`] if you like. There are no key files and no memcached server.
pub async fn run_embedded_agent<S: Store, O: Opener + 'static>(
    store: Arc<S>,
    opener: O,
    config: AgentConfig,
    clock: Arc<dyn Clock>,
    feed: RingFeed,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(feed)];
    agent::run(
        store,
        opener,
        config,
        sinks,
        "this process",
        clock,
        metrics,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use stek_core::{Encrypting, Schedule};
    use tokio::sync::watch;

    use super::*;
    use crate::agent::tests::{recording_feed, start_generator, until_set};
    use crate::agent::PlainOpener;
    use crate::clock::manual::TokioClock;
    use crate::store::MemoryStore;

    /// An embedded agent with the generator's loop over the in-process store, on tokio's paused
    /// clock: every slot boundary reaches the feed exactly once (the slot after next arrives
    /// before its boundary), the current and next keys shared.
    #[tokio::test(start_paused = true)]
    async fn feeds_every_rotation_once() {
        let clock = TokioClock::at(1_800_000_030);
        let s = Schedule::new(Duration::from_secs(60), Duration::from_secs(300)).unwrap();
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let (stop, _) = watch::channel(false);
        start_generator(&store, s, &clock, &stop).await;
        let (feed, seen) = recording_feed(&clock);
        let feed = feed.with(|_| {});
        assert_eq!(feed.len(), 2);
        let run = tokio::spawn(run_embedded_agent(
            store,
            PlainOpener,
            AgentConfig::new("g", s),
            Arc::new(clock.clone()),
            feed,
            Metrics::new(),
            until_set(&stop),
        ));
        tokio::time::sleep(Duration::from_secs(4 * 60 + 10)).await;
        stop.send_replace(true);
        run.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        let first = s.slot_at(Duration::from_secs(1_800_000_030)).0;
        let slots: Vec<u64> = seen.iter().map(|x| x.slot.0).collect();
        assert_eq!(slots, (first..=first + 4).collect::<Vec<_>>(), "{seen:?}");
        for (i, x) in seen.iter().enumerate() {
            assert_eq!(x.encrypting, Encrypting::Current, "{x:?}");
            // Shared: the keys published since the start (current + next), up to the window.
            assert_eq!(x.shared, (i + 2).min(s.window_len()), "{seen:?}");
        }
    }

    /// The embedded agent reports what `stek agent` reports: the same status document (ring by
    /// name, sync state, clock offset to the store) and the same metrics, and warns about skew.
    #[tokio::test(start_paused = true)]
    async fn reports_status_and_clock_offset_like_the_binary() {
        let logs = crate::agent::tests::Logs::default();
        let _guard = logs.capture();
        let store_clock = TokioClock::at(1_800_000_030);
        let host = TokioClock::at(1_800_000_030);
        host.step_ms(20_000); // 20 s ahead of the store: more than P/4 = 15 s
        let s = Schedule::new(Duration::from_secs(60), Duration::from_secs(300)).unwrap();
        let store = Arc::new(MemoryStore::new(Arc::new(store_clock.clone())));
        let (stop, _) = watch::channel(false);
        start_generator(&store, s, &store_clock, &stop).await;
        let metrics = Metrics::new();
        let run = tokio::spawn(run_embedded_agent(
            store,
            PlainOpener,
            AgentConfig::new("g", s),
            Arc::new(host.clone()),
            RingFeed::new(),
            metrics.clone(),
            until_set(&stop),
        ));
        tokio::time::sleep(Duration::from_secs(90)).await;
        let st = metrics.status().expect("a status");
        assert_eq!(st.group, "g");
        assert_eq!((st.period, st.lifetime), (60, 300));
        assert_eq!(st.slot, s.slot_at(host.now()).0);
        assert_eq!(st.encrypting, "current");
        assert_eq!(st.keys.len(), s.window_len());
        assert_eq!(st.clock_offset, Some(20.0));
        assert!(
            st.last_sync.is_some() && st.staleness.unwrap() <= 15.0,
            "{st:?}"
        );
        let text = metrics.render(host.now());
        for series in [
            "stek_clock_offset_seconds{group=\"g\"} 20.000",
            "stek_current_slot{group=\"g\"}",
            "stek_ring_shared_keys{group=\"g\"}",
            "stek_last_sync_timestamp_seconds{group=\"g\"}",
            "stek_encrypting_local_fallback{group=\"g\"} 0",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
        assert!(
            logs.text()
                .contains("this host's clock is +20.000s off the store's"),
            "{}",
            logs.text()
        );
        stop.send_replace(true);
        run.await.unwrap();
    }
}
