//! Ring rebuild + per-format derivation: the work an agent does at every rotation.
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use stek_core::{Format, LocalKeys, Ring, Schedule, SlotKey};

fn ring(c: &mut Criterion) {
    let schedule = Schedule::default();
    let now = Duration::from_secs(1_800_000_000);
    let shared: BTreeMap<_, _> = schedule
        .window_at(now)
        .slots()
        .map(|s| (s, SlotKey::generate(s).expect("random")))
        .collect();
    let mut local = LocalKeys::new();
    let mut g = c.benchmark_group("ring");
    g.bench_function("rebuild-20", |b| {
        b.iter(|| Ring::build(&schedule, black_box(now), &shared, &mut local, 1).expect("random"))
    });
    let ring = Ring::build(&schedule, now, &shared, &mut local, 1).expect("random");
    g.bench_function("derive-one-key-all-formats", |b| {
        let key = &ring.encrypting_entry().key;
        b.iter(|| {
            for f in Format::ALL {
                black_box(f.encode(black_box(key)));
            }
        })
    });
    g.bench_function("rebuild-20-and-derive-all", |b| {
        b.iter(|| {
            let r = Ring::build(&schedule, black_box(now), &shared, &mut local, 1).expect("random");
            for e in r.entries() {
                black_box(Format::Nginx80.encode(&e.key));
                black_box(Format::Memcached48.encode(&e.key));
            }
            for e in r.haproxy_triple() {
                black_box(Format::Haproxy80.encode(&e.key));
            }
            black_box(Format::Apache48.encode(&r.encrypting_entry().key))
        })
    });
    g.finish();
}

criterion_group!(benches, ring);
criterion_main!(benches);
