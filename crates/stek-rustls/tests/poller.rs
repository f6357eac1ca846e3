//! The memcached feed against stek's own memcached server (the one `stek up` and `stek agent`
//! run), on loopback TCP and a unix socket.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::server::ProducesTickets;
use stek::memcached::{self, KeyTable, Limits};
use stek_core::{LocalKeys, Ring, Schedule, Slot, SlotKey};
use stek_rustls::memcached::{fetch, Endpoint, PollError, PollOptions, Poller};
use stek_rustls::{TicketKeys, Ticketer};
use tokio::sync::{oneshot, watch};

const P: u64 = 60;
const NOW: u64 = 1_800_000_010;

/// A stek memcached server on its own runtime, serving whatever table the test sends.
struct Agent {
    rt: tokio::runtime::Runtime,
    table: watch::Sender<Arc<KeyTable>>,
    stop: Option<oneshot::Sender<()>>,
    endpoint: Endpoint,
}

impl Agent {
    fn start(addr: &str) -> Agent {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(memcached::bind(addr, false)).unwrap();
        let endpoint = match listener.tcp_addr() {
            Some(a) => Endpoint::Tcp(a.to_string()),
            None => Endpoint::Unix(addr.into()),
        };
        let (table, rx) = watch::channel(Arc::new(KeyTable::default()));
        let (stop, stopped) = oneshot::channel::<()>();
        rt.spawn(memcached::serve(listener, rx, Limits::default(), async {
            let _ = stopped.await;
        }));
        Agent {
            rt,
            table,
            stop: Some(stop),
            endpoint,
        }
    }

    fn serve(&self, ring: &Ring) {
        self.table.send_replace(Arc::new(KeyTable::from_ring(ring)));
    }

    fn kill(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.rt.shutdown_timeout(Duration::from_secs(2));
    }
}

fn schedule() -> Schedule {
    Schedule::new(Duration::from_secs(P), Duration::from_secs(3 * P)).unwrap()
}

fn shared() -> BTreeMap<Slot, SlotKey> {
    let first = NOW / P - 5;
    (first..first + 20)
        .map(|e| (Slot(e), SlotKey::generate(Slot(e)).unwrap()))
        .collect()
}

fn ring_at(now: u64, shared: &BTreeMap<Slot, SlotKey>) -> Ring {
    Ring::build(
        &schedule(),
        Duration::from_secs(now),
        shared,
        &mut LocalKeys::new(),
        1,
    )
    .unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn fetch_gets_the_ring_the_agent_holds() {
    let shared = shared();
    let ring = ring_at(NOW, &shared);
    let dir = std::env::temp_dir().join(format!("stek-rustls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("memcached.sock");
    for agent in [
        Agent::start("127.0.0.1:0"),
        Agent::start(sock.to_str().unwrap()),
    ] {
        // Before the first ring the agent serves nothing.
        let e = fetch(&agent.endpoint, Duration::from_secs(2)).unwrap_err();
        assert!(matches!(e, PollError::NotServed(_)), "{e}");

        agent.serve(&ring);
        let snap = fetch(&agent.endpoint, Duration::from_secs(2)).unwrap();
        assert_eq!(snap.slot, NOW / P);
        assert_eq!(snap.period, P);
        assert_eq!(snap.start, NOW / P * P);
        assert_eq!(snap.keys.lifetime(), 3 * P as u32);
        // The same keys, in the same order, as a host that holds the ring in process.
        let direct = TicketKeys::from_ring(&ring).unwrap();
        assert!(snap.keys.names().eq(direct.names()));
        let in_process = Ticketer::from_ring(&ring).unwrap();
        let polled = Ticketer::new();
        polled.install(snap.keys);
        assert_eq!(
            polled.decrypt(&in_process.encrypt(b"a").unwrap()).unwrap(),
            b"a"
        );
        assert_eq!(
            in_process.decrypt(&polled.encrypt(b"b").unwrap()).unwrap(),
            b"b"
        );
        agent.kill();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn poller_follows_rotations_and_drops_an_out_of_date_ring() {
    let shared = shared();
    let agent = Agent::start("127.0.0.1:0");
    let clock = Arc::new(AtomicU64::new(NOW));
    let c = clock.clone();
    let options = PollOptions {
        interval: Some(Duration::from_millis(20)),
        grace: Some(Duration::from_secs(5)),
        timeout: Duration::from_secs(2),
        clock: Arc::new(move || Duration::from_secs(c.load(Ordering::SeqCst))),
    };
    let ticketer = Ticketer::new();
    let poller = Poller::spawn(agent.endpoint.clone(), ticketer.clone(), options).unwrap();
    assert!(!ticketer.enabled());

    // The agent gets its first ring: the poller installs it.
    let first = ring_at(NOW, &shared);
    agent.serve(&first);
    let sealing = |r: &Ring| r.encrypting_entry().key.name();
    wait_until("the first ring is installed", || {
        ticketer.current().map(|k| k.encrypting()) == Some(sealing(&first))
    });
    let old_ticket = ticketer.encrypt(b"slot one").unwrap();
    // Polls before the first ring failed ("not served"); none may fail from now on.
    let failures_before = poller.status().failures;

    // Two rotations: the poller follows each.
    for k in 1..=2 {
        let t = NOW + k * P;
        clock.store(t, Ordering::SeqCst);
        let ring = ring_at(t, &shared);
        agent.serve(&ring);
        wait_until("the next ring is installed", || {
            ticketer.current().map(|k| k.encrypting()) == Some(sealing(&ring))
        });
        assert_eq!(ticketer.decrypt(&old_ticket).unwrap(), b"slot one");
    }
    let st = poller.status();
    assert_eq!(st.installs, 3, "{st:?}");
    assert_eq!(st.failures, failures_before, "{st:?}");
    assert!(st.polls >= 3 && !st.expired, "{st:?}");

    // The agent stops rotating: past the boundary plus the grace, the keys go.
    let last_start = (NOW + 2 * P) / P * P;
    // Within the grace the keys stay: checked after the poller has polled twice at that time
    // (so it has seen it), not after a fixed sleep.
    let polls = poller.status().polls;
    clock.store(last_start + P + 4, Ordering::SeqCst);
    wait_until("two polls at the new time", || {
        poller.status().polls >= polls + 2
    });
    assert!(ticketer.enabled(), "within the grace period the keys stay");
    clock.store(last_start + P + 6, Ordering::SeqCst);
    wait_until("the out-of-date keys are removed", || !ticketer.enabled());
    assert!(poller.status().expired);

    // It rotates again: keys are back.
    let t = last_start + P + 6;
    let ring = ring_at(t, &shared);
    agent.serve(&ring);
    wait_until("the keys are back", || ticketer.enabled());
    assert!(!poller.status().expired);

    // The agent goes away: the poller keeps the keys within the slot, counting failures...
    agent.kill();
    wait_until("fetches fail", || poller.status().failures >= 2);
    assert!(ticketer.enabled());
    assert!(poller
        .status()
        .last_error
        .unwrap()
        .contains("talking to the agent"));
    // ...and drops them once they are out of date.
    clock.store(t / P * P + P + 6, Ordering::SeqCst);
    wait_until("the keys of an unreachable agent are removed", || {
        !ticketer.enabled()
    });
    poller.stop();
}
