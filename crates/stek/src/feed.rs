//! In-process delivery of rings: an agent inside a server process hands every new ring to
//! consumers in the same process, above all the rustls ticketer of the `stek-rustls` crate.
//!
//! - [`RingFeed`] is a list of callbacks, each called with every ring the agent delivers (a
//!   new slot, a key arriving from the store, a fallback), synchronously, in the agent's loop.
//! - [`run_embedded_agent`] is the agent loop for a process that only wants rings in memory:
//!   no key files, no memcached server, no status file. It follows the same rules as
//!   [`crate::service::run_agent`]: a sync at every slot boundary, on store notifications and
//!   on a jittered poll, and it keeps serving (and rotating onto local keys) while the store is
//!   unreachable (DESIGN.md §5).
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
//! tokio::spawn(run_embedded_agent(agent, store, clock, feed, poll, shutdown));
//! ```
//!
//! `crates/stek-rustls/examples/in_process.rs` runs that end to end.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use stek_core::Ring;
use tracing::error;

use crate::agent::{Agent, Opener};
use crate::clock::Clock;
use crate::service::{log_ring, nap, StoreState};
use crate::store::Store;

/// A consumer of rings.
pub type RingListener = Arc<dyn Fn(&Ring) + Send + Sync>;

/// The consumers of an agent's rings, called in order with every delivered ring.
///
/// Listeners run inside the agent loop: keep them short (installing ticket keys takes tens of
/// microseconds) and never block on the agent.
#[derive(Clone, Default)]
pub struct RingFeed {
    listeners: Vec<RingListener>,
}

impl RingFeed {
    /// A feed without listeners.
    pub fn new() -> RingFeed {
        RingFeed::default()
    }

    /// The same feed with one more listener.
    pub fn with(mut self, listener: impl Fn(&Ring) + Send + Sync + 'static) -> RingFeed {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Adds a listener.
    pub fn push(&mut self, listener: RingListener) {
        self.listeners.push(listener);
    }

    /// Calls every listener with `ring`.
    pub fn deliver(&self, ring: &Ring) {
        for l in &self.listeners {
            l(ring);
        }
    }

    /// How many listeners there are.
    pub fn len(&self) -> usize {
        self.listeners.len()
    }

    /// Whether there is no listener.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

impl fmt::Debug for RingFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingFeed")
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

/// Runs `agent` in this process until `shutdown` resolves, handing every new ring to `feed`.
///
/// `poll` is the safety-net interval (jittered by ±20%; `AgentOptions::default_poll` gives the
/// agent's default); syncs also happen at every slot boundary and on the store's change
/// notifications.
pub async fn run_embedded_agent<S: Store, O: Opener>(
    mut agent: Agent<S, O>,
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    feed: RingFeed,
    poll: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let schedule = *agent.schedule();
    let group = agent.group().to_owned();
    let mut changes = store.changes(&group);
    let mut store_state = StoreState::default();
    tokio::pin!(shutdown);
    loop {
        let now = clock.now();
        store_state.observe(&group, agent.sync(now).await);
        match agent.rebuild(now) {
            Ok(Some(ring)) => {
                log_ring(&group, ring, "delivered", "this process");
                feed.deliver(ring);
            }
            Ok(None) => {}
            Err(e) => error!("group {group}: could not make a local key: {e}"),
        }
        if nap(&schedule, &*clock, now, poll, &mut changes, &mut shutdown).await {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use stek_core::{Origin, Record, Schedule, Slot, SlotKey};

    use super::*;
    use crate::agent::PlainOpener;
    use crate::clock::manual::ManualClock;
    use crate::generator::publish_upcoming;
    use crate::store::MemoryStore;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Seen {
        slot: Slot,
        encrypting: Slot,
        shared: usize,
    }

    async fn wait_for(seen: &Mutex<Vec<Seen>>, n: usize) {
        for _ in 0..500 {
            if seen.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no ring #{n} within 5 s: {:?}", seen.lock().unwrap());
    }

    /// An embedded agent over the in-process store, time injected: every slot boundary reaches
    /// the feed exactly once (the store's notification wakes the loop), with the shared keys
    /// the generator published.
    #[tokio::test]
    async fn feeds_every_rotation_once() {
        let clock = ManualClock::at(1_800_000_030);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let s = Schedule::new(Duration::from_secs(60), Duration::from_secs(300)).unwrap();
        let seal = |k: &SlotKey| Ok(Record::plain(&s, "g", k).encode());
        publish_upcoming(&*store, &s, "g", clock.now(), seal)
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let sink = seen.clone();
        let feed = RingFeed::new()
            .with(move |ring| {
                sink.lock().unwrap().push(Seen {
                    slot: ring.current(),
                    encrypting: ring.encrypting_entry().slot(),
                    shared: ring
                        .entries()
                        .iter()
                        .filter(|e| e.origin == Origin::Shared)
                        .count(),
                })
            })
            .with(|_| {});
        assert_eq!(feed.len(), 2);
        let agent = Agent::new(store.clone(), PlainOpener, "g".into(), s, 1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(run_embedded_agent(
            agent,
            store.clone(),
            Arc::new(clock.clone()),
            feed,
            Duration::from_secs(3600),
            async {
                let _ = stopped.await;
            },
        ));
        wait_for(&seen, 1).await;
        for k in 1..=4 {
            clock.advance(Duration::from_secs(60));
            publish_upcoming(&*store, &s, "g", clock.now(), seal)
                .await
                .unwrap();
            wait_for(&seen, k + 1).await;
        }
        let _ = stop.send(());
        run.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        let first = s.slot_at(Duration::from_secs(1_800_000_030)).0;
        let slots: Vec<u64> = seen.iter().map(|x| x.slot.0).collect();
        assert_eq!(slots, (first..=first + 4).collect::<Vec<_>>(), "{seen:?}");
        for (i, x) in seen.iter().enumerate() {
            assert_eq!(x.encrypting, x.slot, "the current key encrypts: {x:?}");
            // Shared: the keys published since the start (current + next), up to the window.
            assert_eq!(x.shared, (i + 2).min(s.window_len()), "{seen:?}");
        }
    }

    #[test]
    fn an_empty_feed_does_nothing() {
        let f = RingFeed::new();
        assert!(f.is_empty());
        assert_eq!(format!("{f:?}"), "RingFeed { listeners: 0 }");
    }
}
