//! Arbitrary bytes as a TLS client would send them back as a ticket (TLS 1.2 SessionTicket or a
//! TLS 1.3 PSK identity): the rustls ticketer's decryption.
//!
//! Beyond "never panics": nothing the fuzzer makes may open (it does not know the keys), and a
//! genuine ticket changed in any byte the fuzzer picks never opens either.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use stek_core::ticket::TicketKeys;
use stek_core::{LocalKeys, Ring, Schedule, SlotKey};

struct World {
    keys: TicketKeys,
    genuine: Vec<u8>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let schedule = Schedule::new(Duration::from_secs(3600), Duration::from_secs(18 * 3600)).expect("schedule");
        let now = Duration::from_secs(1_800_000_000);
        let shared: BTreeMap<_, _> = schedule
            .window_at(now)
            .slots()
            .map(|s| (s, SlotKey::generate(s).expect("random")))
            .collect();
        let ring = Ring::build(&schedule, now, &shared, &mut LocalKeys::new(), 1).expect("ring");
        let keys = TicketKeys::from_ring(&ring).expect("keys");
        let genuine = keys.seal(&[7u8; 160]).expect("seal");
        World { keys, genuine }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    assert!(w.keys.open(data).is_none() || data == w.genuine.as_slice(), "a forged ticket opened");
    // Flip the genuine ticket where the input says, and extend or cut it.
    if let Some((&first, rest)) = data.split_first() {
        let mut t = w.genuine.clone();
        let i = usize::from(first) % t.len();
        t[i] ^= rest.first().copied().unwrap_or(1) | 1;
        assert!(w.keys.open(&t).is_none(), "a modified ticket opened");
        let cut = &w.genuine[..usize::from(first) % w.genuine.len()];
        assert!(w.keys.open(cut).is_none(), "a truncated ticket opened");
        let mut long = w.genuine.clone();
        long.extend_from_slice(rest);
        assert!(rest.is_empty() || w.keys.open(&long).is_none(), "an extended ticket opened");
    }
});
