//! Arbitrary bytes from a memcached client: the line framer, the request parser, and a whole
//! session fed the bytes cut at arbitrary points, as a network would deliver them.
//!
//! Beyond "never panics", each layer's invariants are checked: a framed line is within the cap
//! and holds no newline; a parsed `get` has only valid keys; a session consumes no more than it
//! was given, always makes progress, and keeps its reply buffer bounded.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use stek::memcached::frame::{next_line, Frame};
use stek::memcached::parse::{parse_line, valid_key, Command, MAX_DATA_BLOCK};
use stek::memcached::session::{Context, Session, Stop, FLUSH_AT};
use stek::memcached::stats::Stats;
use stek::memcached::{KeyTable, Limits};
use stek_core::{KeyName, LocalKeys, Ring, Schedule, Secret, Slot, SlotKey};

/// A table from a fixed ring (P = 4 s, L = 12 s), every key shared and made from fixed bytes:
/// no randomness, so every run is reproducible.
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

fn check_frame(data: &[u8], max_line: usize) {
    match next_line(data, max_line) {
        Frame::Line { line, len } => {
            assert!(line.len() <= max_line);
            assert!(len <= data.len() && len > line.len());
            assert!(!line.contains(&b'\n'));
            assert_eq!(data[len - 1], b'\n');
        }
        Frame::Incomplete => assert!(data.len() < max_line + 2),
        Frame::TooLong => {}
    }
}

fn check_parse(line: &[u8]) {
    match parse_line(line) {
        Ok(Command::Get { keys, .. }) => {
            let mut n = 0;
            for k in keys {
                assert!(valid_key(k));
                n += 1;
            }
            assert!(n > 0);
        }
        Ok(Command::Store(s)) => assert!(s.data_len <= MAX_DATA_BLOCK),
        Ok(_) => {}
        Err(e) => {
            let mut out = Vec::new();
            e.write_reply(&mut out);
            assert!(out.ends_with(b"\r\n"));
        }
    }
}

fn check_session(data: &[u8], max_line: usize, cuts: &[u8]) {
    let limits = Limits {
        max_line,
        ..Limits::default()
    };
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
        // Deliver the next piece: 1 to 256 bytes, as the cut bytes say.
        let piece = usize::from(*cut.next().unwrap_or(&255)) + 1;
        let end = (fed + piece).min(data.len());
        buffered.extend_from_slice(&data[fed..end]);
        fed = end;
        let mut rounds = 0;
        loop {
            let mut out = Vec::new();
            let p = session.process(&buffered, &ctx, &mut out);
            assert!(p.consumed <= buffered.len());
            // One round holds at most a flush worth plus one value and its VALUE line.
            assert!(out.len() <= FLUSH_AT + 4096 + 1024, "{}", out.len());
            buffered.drain(..p.consumed);
            match p.stop {
                Stop::Flush => {
                    // A flush must come from replies made, so the next round progresses.
                    assert!(!out.is_empty());
                    rounds += 1;
                    assert!(rounds < 100_000, "no progress");
                }
                Stop::NeedInput => {
                    // What is kept is at most one unfinished line (or, on a connection whose
                    // first byte made it binary, one header and key: `memcached_binary`).
                    let bound = if data.first() == Some(&0x80) {
                        (max_line + 2).max(24 + 250)
                    } else {
                        max_line + 2
                    };
                    assert!(buffered.len() < bound, "{}", buffered.len());
                    break;
                }
                Stop::Close => break 'feed,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the line cap and how the rest is cut into pieces.
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max_line = if first & 1 == 0 { 64 } else { 8192 };
    let cuts_len = usize::from(first >> 1) % 8;
    let (cuts, input) = rest.split_at(cuts_len.min(rest.len()));

    check_frame(input, max_line);
    check_frame(input, 0);
    check_parse(input);
    if let Frame::Line { line, .. } = next_line(input, max_line) {
        check_parse(line);
    }
    check_session(input, max_line, if cuts.is_empty() { &[255] } else { cuts });
});
