//! A fleet of three rustls servers sharing one schedule, their clocks offset by -0.4 P, 0 and
//! +0.4 P (injected: each host's ring is rebuilt with `Ring::build` at its own simulated time,
//! and rustls reads the same simulated clocks).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, HandshakeKind, ServerConfig, SupportedProtocolVersion};
use stek_core::{LocalKeys, Ring, Schedule, Slot, SlotKey};

use crate::util::{client_config, handshake, server_config, Recording, SimTime};

const P: u64 = 600;
const L: u64 = 1800;
const STEP: u64 = P / 4;
/// A slot boundary (1.8e9 is a multiple of 600) plus a little, so steps fall inside slots.
const T0: u64 = 1_800_000_000 + 7;
/// ±0.4 P.
const OFFSETS: [i64; 3] = [-240, 0, 240];
const VERSIONS: [&SupportedProtocolVersion; 2] = [&TLS12, &TLS13];

struct Host {
    offset: i64,
    time: SimTime,
    local: LocalKeys,
    ticketer: Arc<Recording>,
    /// One server config per entry of `VERSIONS`.
    configs: Vec<Arc<ServerConfig>>,
    /// The encrypting key's name at each `Fleet::at`.
    encrypting: Vec<[u8; 16]>,
}

struct Fleet {
    schedule: Schedule,
    /// The generator's keys, by slot.
    shared: BTreeMap<Slot, SlotKey>,
    hosts: Vec<Host>,
    /// True time, which the clients read.
    now: SimTime,
}

impl Fleet {
    fn new() -> Fleet {
        let schedule = Schedule::new(Duration::from_secs(P), Duration::from_secs(L)).unwrap();
        let hosts = OFFSETS
            .iter()
            .map(|&offset| {
                let time = SimTime::default();
                let ticketer = Arc::new(Recording::default());
                let configs = VERSIONS
                    .iter()
                    .map(|v| server_config(ticketer.clone(), time.clone(), v))
                    .collect();
                Host {
                    offset,
                    time,
                    local: LocalKeys::new(),
                    ticketer,
                    configs,
                    encrypting: Vec::new(),
                }
            })
            .collect();
        Fleet {
            schedule,
            shared: BTreeMap::new(),
            hosts,
            now: SimTime::default(),
        }
    }

    /// Moves true time to `t` (never backwards): the generator makes every key due by then
    /// (one period ahead), and each host rebuilds its ring at its own clock.
    fn at(&mut self, t: u64) {
        assert!(t >= self.now.get());
        self.now.set(t);
        let first = self.schedule.window_at(Duration::from_secs(t - P)).first;
        let newest = self.schedule.newest_needed(Duration::from_secs(t));
        for e in first.0..=newest.0 {
            self.shared
                .entry(Slot(e))
                .or_insert_with(|| SlotKey::generate(Slot(e)).unwrap());
        }
        for h in &mut self.hosts {
            let local_t = t.checked_add_signed(h.offset).unwrap();
            h.time.set(local_t);
            let ring = Ring::build(
                &self.schedule,
                Duration::from_secs(local_t),
                &self.shared,
                &mut h.local,
                1,
            )
            .unwrap();
            h.ticketer.inner.install_ring(&ring).unwrap();
            h.encrypting.push(ring.encrypting_entry().key.name().0);
        }
    }

    fn server(&self, host: usize, version: usize) -> &Arc<ServerConfig> {
        &self.hosts[host].configs[version]
    }
}

/// A resumption to try later with a client that holds a ticket.
struct Check {
    due: u64,
    client: Arc<ClientConfig>,
    version: usize,
    resumer: usize,
    expect: HandshakeKind,
    what: String,
}

fn run_checks(fleet: &mut Fleet, mut checks: Vec<Check>) {
    checks.sort_by_key(|c| c.due);
    for c in checks {
        fleet.at(c.due);
        let kind = handshake(&c.client, fleet.server(c.resumer, c.version));
        assert_eq!(kind, c.expect, "{}", c.what);
    }
}

#[test]
fn skewed_servers_resume_each_others_tickets_across_rotations() {
    let mut fleet = Fleet::new();
    // 25 steps of P/4: six periods, so every host rotates at least five times.
    let steps = 25u64;
    let mut later = Vec::new();
    let mut resumed_now = 0;
    for k in 0..steps {
        let t = T0 + k * STEP;
        // Tickets of earlier steps first, while time moves forward.
        let (due, rest): (Vec<Check>, Vec<Check>) =
            later.into_iter().partition(|c: &Check| c.due <= t);
        later = rest;
        run_checks(&mut fleet, due);
        fleet.at(t);
        for (v, version) in VERSIONS.iter().enumerate() {
            for i in 0..OFFSETS.len() {
                // Every host resumes a ticket every host just issued.
                for j in 0..OFFSETS.len() {
                    let client = client_config(fleet.now.clone(), version);
                    assert_eq!(handshake(&client, fleet.server(i, v)), HandshakeKind::Full);
                    assert_eq!(
                        handshake(&client, fleet.server(j, v)),
                        HandshakeKind::Resumed,
                        "{version:?}: host {j} refused host {i}'s fresh ticket at t = T0 + {}",
                        t - T0
                    );
                    resumed_now += 1;
                }
                // And tickets one and two periods old, on the other hosts.
                for (periods, j) in [(1, (i + 1) % 3), (2, (i + 2) % 3)] {
                    let due = t + periods * P;
                    if due >= T0 + steps * STEP {
                        continue;
                    }
                    let client = client_config(fleet.now.clone(), version);
                    assert_eq!(handshake(&client, fleet.server(i, v)), HandshakeKind::Full);
                    later.push(Check {
                        due,
                        client,
                        version: v,
                        resumer: j,
                        expect: HandshakeKind::Resumed,
                        what: format!(
                            "{version:?}: host {j} refused host {i}'s ticket of t = T0 + {} {periods} period(s) later",
                            t - T0
                        ),
                    });
                }
            }
        }
    }
    assert!(later.is_empty());
    assert_eq!(resumed_now, steps * 2 * 9);

    // Rotations really happened: every host sealed with at least 5 keys (4 rotations)...
    for (n, h) in fleet.hosts.iter().enumerate() {
        let sealing: BTreeSet<_> = h.encrypting.iter().collect();
        assert!(
            sealing.len() >= 5,
            "host {n} sealed with {} keys",
            sealing.len()
        );
        assert!(h.ticketer.issued_names.lock().unwrap().len() >= 5);
    }
    // ...and the skew mattered: often the hosts sealed with different keys at the same moment.
    let apart = (0..fleet.hosts[0].encrypting.len())
        .filter(|&k| {
            let names: BTreeSet<_> = fleet.hosts.iter().map(|h| h.encrypting[k]).collect();
            names.len() > 1
        })
        .count();
    assert!(
        apart >= 10,
        "hosts disagreed on the sealing key only {apart} times"
    );
}

#[test]
fn tickets_older_than_lifetime_plus_two_periods_are_refused() {
    let mut fleet = Fleet::new();
    let mut checks = Vec::new();
    // Issue at several points of a slot; the clients' clocks stay at the issue time so that
    // they keep offering the old ticket (a real client would drop it after L itself).
    for k in 0..4u64 {
        let t = T0 + k * STEP;
        fleet.at(t);
        for (v, version) in VERSIONS.iter().enumerate() {
            for i in 0..OFFSETS.len() {
                let frozen = SimTime::at(t);
                // Control: the issuing host still resumes it at age L (the lifetime promised).
                let client = client_config(frozen.clone(), version);
                assert_eq!(handshake(&client, fleet.server(i, v)), HandshakeKind::Full);
                checks.push(Check {
                    due: t + L,
                    client,
                    version: v,
                    resumer: i,
                    expect: HandshakeKind::Resumed,
                    what: format!("{version:?}: host {i} refused its own ticket at age L"),
                });
                // At age L + 2P no host accepts it any more: its key is erased everywhere.
                for j in 0..OFFSETS.len() {
                    let client = client_config(frozen.clone(), version);
                    assert_eq!(handshake(&client, fleet.server(i, v)), HandshakeKind::Full);
                    checks.push(Check {
                        due: t + L + 2 * P,
                        client,
                        version: v,
                        resumer: j,
                        expect: HandshakeKind::Full,
                        what: format!(
                            "{version:?}: host {j} resumed host {i}'s ticket at age L + 2P"
                        ),
                    });
                }
            }
        }
    }
    run_checks(&mut fleet, checks);
}
