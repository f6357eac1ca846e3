//! The ticketer as rustls sees it: untrusted tickets, the fixed size bound, swaps under load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rustls::server::ProducesTickets;
use rustls::version::TLS13;
use rustls::HandshakeKind;
use stek_core::{LocalKeys, Ring, Schedule, Slot, SlotKey};
use stek_rustls::{Ticketer, MAX_PLAINTEXT_LEN, MAX_TICKET_LEN};

use crate::util::{client_config, handshake, server_config, SimTime};

/// The default schedule's 20-key ring at `now`, from keys for every slot.
fn ring_at(now: u64, shared: &BTreeMap<Slot, SlotKey>) -> Ring {
    Ring::build(
        &Schedule::default(),
        Duration::from_secs(now),
        shared,
        &mut LocalKeys::new(),
        1,
    )
    .unwrap()
}

fn keys_around(now: u64, extra_slots: u64) -> BTreeMap<Slot, SlotKey> {
    let w = Schedule::default().window_at(Duration::from_secs(now));
    (w.first.0..=w.last.0 + extra_slots)
        .map(|e| (Slot(e), SlotKey::generate(Slot(e)).unwrap()))
        .collect()
}

const NOW: u64 = 1_800_000_000;

fn ticketer() -> Ticketer {
    let t = Ticketer::from_ring(&ring_at(NOW, &keys_around(NOW, 0))).unwrap();
    assert_eq!(t.current().unwrap().len(), 20);
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn flipped_bits_are_refused(pt in proptest::collection::vec(any::<u8>(), 0..400), bit in any::<usize>()) {
        let t = ticketer();
        let mut ticket = t.encrypt(&pt).unwrap();
        prop_assert_eq!(t.decrypt(&ticket).unwrap(), pt);
        let bit = bit % (ticket.len() * 8);
        ticket[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(t.decrypt(&ticket).is_none());
    }

    #[test]
    fn truncated_and_extended_tickets_are_refused(
        pt in proptest::collection::vec(any::<u8>(), 0..400),
        cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 1..100),
    ) {
        let t = ticketer();
        let ticket = t.encrypt(&pt).unwrap();
        prop_assert!(t.decrypt(&ticket[..cut % ticket.len()]).is_none());
        let mut longer = ticket.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(t.decrypt(&longer).is_none());
    }

    #[test]
    fn random_bytes_are_refused(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..600),
        key in 0usize..20,
        use_known_name in any::<bool>(),
    ) {
        let t = ticketer();
        if use_known_name && bytes.len() >= 16 {
            let name = t.current().unwrap().names().nth(key).unwrap();
            bytes[..16].copy_from_slice(&name.0);
        }
        prop_assert!(t.decrypt(&bytes).is_none());
    }
}

#[test]
fn the_size_bound_is_the_same_on_every_host() {
    let shared = keys_around(NOW, 0);
    let a = Ticketer::from_ring(&ring_at(NOW, &shared)).unwrap();
    let b = Ticketer::from_ring(&ring_at(NOW, &shared)).unwrap();
    // b never issued anything this long, yet accepts it: the bound is fixed, not learned.
    let big = vec![0x5a; MAX_PLAINTEXT_LEN];
    let ticket = a.encrypt(&big).unwrap();
    assert_eq!(ticket.len(), MAX_TICKET_LEN);
    assert_eq!(b.decrypt(&ticket).unwrap(), big);
    assert!(a.encrypt(&[0; MAX_PLAINTEXT_LEN + 1]).is_none());
    let mut too_long = ticket;
    too_long.push(0);
    assert!(b.decrypt(&too_long).is_none());
}

/// Rings are swapped while clients handshake on other threads: every handshake completes, and
/// every ticket resumes (each ring keeps the previous keys, as a window does).
#[test]
fn swapping_rings_under_load_breaks_nothing() {
    let shared = keys_around(NOW, 12);
    let ticketer = Ticketer::from_ring(&ring_at(NOW, &shared)).unwrap();
    let time = SimTime::at(NOW);
    let server = server_config(Arc::new(ticketer.clone()), time.clone(), &TLS13);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let server = server.clone();
                let time = time.clone();
                let stop = &stop;
                s.spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) || n < 10 {
                        let client = client_config(time.clone(), &TLS13);
                        assert_eq!(handshake(&client, &server), HandshakeKind::Full);
                        assert_eq!(handshake(&client, &server), HandshakeKind::Resumed);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        // Twelve rotations, one period each, while the workers run.
        for k in 1..=12u64 {
            std::thread::sleep(Duration::from_millis(20));
            ticketer
                .install_ring(&ring_at(NOW + k * 3600, &shared))
                .unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            assert!(w.join().unwrap() >= 10);
        }
    });
    let now_sealing = ticketer.current().unwrap().encrypting();
    assert_eq!(
        now_sealing,
        shared[&Schedule::default().slot_at(Duration::from_secs(NOW + 12 * 3600))].name()
    );
}
