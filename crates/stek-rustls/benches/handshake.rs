//! Resumed TLS 1.3 handshakes per second with each ticketer, over in-memory connections on one
//! thread. Each iteration is one complete resumed handshake: the client offers a ticket (one
//! decrypt), the server accepts it and sends two new tickets (two encrypts), so the client's
//! store never runs dry.
//!
//! `cargo bench -p stek-rustls --bench handshake`; handshakes/s = 1 / time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::server::ProducesTickets;
use rustls::version::TLS13;
use rustls::HandshakeKind;
use stek_core::{LocalKeys, Ring, Schedule, SlotKey};
use stek_rustls::Ticketer;

#[allow(dead_code)]
#[path = "../tests/util.rs"]
mod util;

use util::{client_config, handshake, server_config, SimTime};

fn stek_ticketer() -> Arc<dyn ProducesTickets> {
    let schedule = Schedule::default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let shared: BTreeMap<_, _> = schedule
        .window_at(now)
        .slots()
        .map(|s| (s, SlotKey::generate(s).expect("random")))
        .collect();
    let ring = Ring::build(&schedule, now, &shared, &mut LocalKeys::new(), 1).expect("random");
    Arc::new(Ticketer::from_ring(&ring).expect("keys"))
}

fn resumed(c: &mut Criterion) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let time = SimTime::at(now);
    let ticketers: [(&str, Arc<dyn ProducesTickets>); 3] = [
        ("stek", stek_ticketer()),
        (
            "rustls-aws-lc-rs",
            rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer"),
        ),
        (
            "rustls-ring",
            rustls::crypto::ring::Ticketer::new().expect("ticketer"),
        ),
    ];
    let mut g = c.benchmark_group("resumed-tls13");
    for (name, ticketer) in ticketers {
        let server = server_config(ticketer, time.clone(), &TLS13);
        let client = client_config(time.clone(), &TLS13);
        assert_eq!(handshake(&client, &server), HandshakeKind::Full);
        g.bench_function(name, |b| {
            b.iter(|| assert_eq!(handshake(&client, &server), HandshakeKind::Resumed))
        });
    }
    g.finish();
}

criterion_group!(benches, resumed);
criterion_main!(benches);
