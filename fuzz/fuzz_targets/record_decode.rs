//! Arbitrary bytes from a store, as an agent reads them: record decoding, then the full check of
//! a sealed record (header, trusted generator, signature, HPKE open) by a group member.
//!
//! Beyond "never panics": nothing the fuzzer makes may open, since it cannot sign for the
//! pinned generator (a forged record that opened would be a break of the whole fleet); and a
//! decoded record re-encodes to exactly the input bytes (the encoding is canonical, so a
//! signature covers one meaning only).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use stek_core::{GeneratorKey, GeneratorPublicKey, GroupIdentity, Record, Schedule, Slot};

struct World {
    schedule: Schedule,
    member: GroupIdentity,
    trusted: Vec<GeneratorPublicKey>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| World {
        schedule: Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).expect("schedule"),
        member: GroupIdentity::generate().expect("identity"),
        trusted: vec![GeneratorKey::generate().expect("generator").public()],
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let Ok(record) = Record::decode(data) else {
        return;
    };
    assert_eq!(record.encode().as_slice(), data, "decoding is canonical");
    let slot = record.header.slot;
    if let Ok(_key) = record.open_sealed(&w.schedule, &record.header.group.clone(), slot, &w.member, &w.trusted) {
        panic!("a record nobody trusted signed was accepted");
    }
    let _ = record.open_sealed(&w.schedule, "web", Slot(100), &w.member, &w.trusted);
});
