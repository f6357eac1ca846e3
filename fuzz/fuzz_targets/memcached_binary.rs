//! Arbitrary bytes from a memcached binary-protocol client: the header reader, the decision
//! per header, and a whole binary session fed the bytes cut at arbitrary points.
//!
//! Beyond "never panics": a decision never lets a get wait for more than a 250-byte key, nor a
//! refused body exceed the cap; a session consumes no more than it was given, keeps at most one
//! header and key buffered, answers every non-quiet request it completes, and every byte it
//! writes is a well-framed response that echoes an opcode.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use stek::memcached::binary::{self, Action, HEADER_LEN, MAX_BODY, REQUEST_MAGIC, RESPONSE_MAGIC};
use stek::memcached::session::{Context, Session, Stop, FLUSH_AT};
use stek::memcached::stats::Stats;
use stek::memcached::{KeyTable, Limits};
use stek_core::{KeyName, LocalKeys, Ring, Schedule, Secret, Slot, SlotKey};

/// A table from a fixed ring (P = 4 s, L = 12 s), every key made from fixed bytes.
fn table() -> &'static KeyTable {
    static TABLE: OnceLock<KeyTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let schedule = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let now = Duration::from_secs(400);
        let shared: BTreeMap<Slot, SlotKey> = schedule
            .window_at(now)
            .slots()
            .map(|s| {
                let b = s.0 as u8;
                (
                    s,
                    SlotKey::new(s, KeyName([b; 16]), Secret::from_bytes([b; 32])),
                )
            })
            .collect();
        let ring = Ring::build(&schedule, now, &shared, &mut LocalKeys::new(), 1).unwrap();
        KeyTable::from_ring(&ring)
    })
}

fn check_decide(data: &[u8]) {
    let Some(h) = binary::header(data) else {
        assert!(data.len() < HEADER_LEN);
        return;
    };
    match binary::decide(&h) {
        Action::Get(_) => {
            assert_eq!(h.magic, REQUEST_MAGIC);
            assert!((1..=250).contains(&h.body_len));
            assert_eq!(h.body_len, u32::from(h.key_len));
            assert_eq!(h.extras_len, 0);
        }
        Action::Noop | Action::Version | Action::Quit { .. } => assert_eq!(h.body_len, 0),
        Action::Refuse { .. } => {
            assert_eq!(h.magic, REQUEST_MAGIC);
            assert!(h.body_len <= MAX_BODY);
        }
        Action::Close(_) => {}
    }
}

/// Walks the responses in `out`, checking each is framed and returns how many there were.
fn check_responses(out: &[u8]) -> usize {
    let mut rest = out;
    let mut n = 0;
    while !rest.is_empty() {
        assert!(rest.len() >= HEADER_LEN, "a partial response header");
        assert_eq!(rest[0], RESPONSE_MAGIC);
        let key_len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let extras_len = usize::from(rest[4]);
        let body = u32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
        assert!(key_len + extras_len <= body);
        assert!(rest.len() >= HEADER_LEN + body, "a partial response body");
        rest = &rest[HEADER_LEN + body..];
        n += 1;
    }
    n
}

fn check_session(data: &[u8], cuts: &[u8]) {
    let limits = Limits::default();
    let stats = Stats::new();
    let ctx = Context {
        table: table(),
        stats: &stats,
        limits: &limits,
    };
    let mut session = Session::new();
    let mut buffered: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut cut = cuts.iter().cycle();
    'feed: while fed < data.len() {
        let piece = usize::from(*cut.next().unwrap_or(&255)) + 1;
        let end = (fed + piece).min(data.len());
        buffered.extend_from_slice(&data[fed..end]);
        fed = end;
        let mut rounds = 0;
        loop {
            let mut out = Vec::new();
            let p = session.process(&buffered, &ctx, &mut out);
            assert!(p.consumed <= buffered.len());
            // One round holds at most a flush worth plus one value and its header.
            assert!(out.len() <= FLUSH_AT + 4096 + 1024, "{}", out.len());
            check_responses(&out);
            buffered.drain(..p.consumed);
            match p.stop {
                Stop::Flush => {
                    assert!(!out.is_empty());
                    rounds += 1;
                    assert!(rounds < 100_000, "no progress");
                }
                Stop::NeedInput => {
                    // What is kept is at most one header and a key; a body being dropped is
                    // never kept.
                    assert!(buffered.len() < HEADER_LEN + 250, "{}", buffered.len());
                    break;
                }
                Stop::Close => break 'feed,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the rest is cut into pieces.
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let cuts_len = usize::from(first) % 8;
    let (cuts, input) = rest.split_at(cuts_len.min(rest.len()));
    check_decide(input);
    // The session sees a binary connection: its first byte is the magic.
    let mut stream = vec![REQUEST_MAGIC];
    stream.extend_from_slice(input);
    check_session(&stream, if cuts.is_empty() { &[255] } else { cuts });
});
