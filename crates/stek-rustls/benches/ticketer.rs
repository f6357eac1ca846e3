//! Ticket encrypt + decrypt of a 160-byte plaintext, as rustls calls it (through
//! `dyn ProducesTickets`): stek's ticketer over a 20-key ring, rustls's own ticketers, and the
//! floor (one bare AES-256-GCM seal + open with a preset key and nonce).
//!
//! `cargo bench -p stek-rustls --bench ticketer`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use rustls::server::ProducesTickets;
use stek_core::{LocalKeys, Ring, Schedule, SlotKey};
use stek_rustls::Ticketer;

const PLAINTEXT: [u8; 160] = [0x42; 160];

/// The default schedule's ring (18 past keys + current + next = 20), every key shared.
fn ring() -> Ring {
    let schedule = Schedule::default();
    let now = Duration::from_secs(1_800_000_000);
    let shared: BTreeMap<_, _> = schedule
        .window_at(now)
        .slots()
        .map(|s| (s, SlotKey::generate(s).expect("random")))
        .collect();
    Ring::build(&schedule, now, &shared, &mut LocalKeys::new(), 1).expect("random")
}

fn round_trip(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, t: Arc<dyn ProducesTickets>) {
    let ticket = t.encrypt(&PLAINTEXT).expect("ticket");
    assert_eq!(t.decrypt(&ticket).expect("opens"), PLAINTEXT);
    g.bench_function(name, |b| {
        b.iter(|| {
            let ticket = t.encrypt(black_box(&PLAINTEXT)).expect("ticket");
            black_box(t.decrypt(black_box(&ticket)).expect("opens"))
        })
    });
}

fn ticketer(c: &mut Criterion) {
    let ring = ring();
    assert_eq!(ring.entries().len(), 20);
    let stek: Arc<dyn ProducesTickets> = Arc::new(Ticketer::from_ring(&ring).expect("keys"));
    let aws = rustls::crypto::aws_lc_rs::Ticketer::new().expect("aws-lc-rs ticketer");
    let ring_ticketer = rustls::crypto::ring::Ticketer::new().expect("ring ticketer");
    let floor_key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).expect("key"));

    let mut g = c.benchmark_group("ticketer");
    round_trip(&mut g, "stek", stek);
    round_trip(&mut g, "rustls-aws-lc-rs", aws);
    round_trip(&mut g, "rustls-ring", ring_ticketer);
    g.bench_function("floor", |b| {
        b.iter(|| {
            let mut buf = black_box(PLAINTEXT).to_vec();
            let aad = [0u8; 16];
            floor_key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key([9; 12]),
                    Aad::from(&aad),
                    &mut buf,
                )
                .expect("seal");
            let pt = floor_key
                .open_in_place(
                    Nonce::assume_unique_for_key([9; 12]),
                    Aad::from(&aad),
                    &mut buf,
                )
                .expect("open");
            black_box(pt.len())
        })
    });
    g.finish();
}

criterion_group!(benches, ticketer);
criterion_main!(benches);
