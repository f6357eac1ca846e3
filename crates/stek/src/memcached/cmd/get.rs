//! `get` and `gets`, and the binary protocol's GET, GETQ, GETK and GETKQ.

use super::reserve;
use crate::memcached::binary::{self, Body, Get, Header, Status, HEADER_LEN};
use crate::memcached::parse::Keys;
use crate::memcached::stats::Counters;
use crate::memcached::table::KeyTable;

/// Appends one `VALUE` block per served key, then `END`.
///
/// Keys before `skip` were answered by an earlier call. When the reply reaches `flush_at`
/// bytes with keys left, returns `Some(n)`: the first `n` keys are answered, the caller
/// writes the reply out and calls again with `skip = n`. At least one key is answered per
/// call, so a huge multi-get always progresses and never holds more than about `flush_at`
/// bytes of reply.
pub(crate) fn execute(
    keys: Keys<'_>,
    cas: bool,
    skip: usize,
    table: &KeyTable,
    counters: &mut Counters,
    out: &mut Vec<u8>,
    flush_at: usize,
) -> Option<usize> {
    for (i, key) in keys.enumerate().skip(skip) {
        if i > skip && out.len() >= flush_at {
            return Some(i);
        }
        counters.cmd_get += 1;
        match table.get(key) {
            Some(item) => {
                counters.get_hits += 1;
                let tail = item.tail(cas);
                let value = item.value();
                // With room for the closing `END\r\n` too.
                reserve(out, 6 + key.len() + tail.len() + value.len() + 2 + 5);
                out.extend_from_slice(b"VALUE ");
                out.extend_from_slice(key);
                out.extend_from_slice(tail);
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
            None => counters.get_misses += 1,
        }
    }
    out.extend_from_slice(b"END\r\n");
    None
}

/// The flags of every value (always 0), as a binary GET response's 4 bytes of extras.
const FLAGS: [u8; 4] = [0; 4];

/// Appends the binary response to a GET, GETQ, GETK or GETKQ of `key`: on a hit, the value
/// with the flags as extras and the item's cas (and the key for GETK, GETKQ); on a miss,
/// status 0x0001 with "Not found" (GET) or the key (GETK), as memcached 1.6 does, and nothing
/// for the quiet forms.
pub(crate) fn execute_binary(
    request: &Header,
    get: Get,
    key: &[u8],
    table: &KeyTable,
    counters: &mut Counters,
    out: &mut Vec<u8>,
) {
    counters.cmd_get += 1;
    let echoed: &[u8] = if get.with_key { key } else { &[] };
    match table.get(key) {
        Some(item) => {
            counters.get_hits += 1;
            let value = item.value();
            reserve(out, HEADER_LEN + FLAGS.len() + echoed.len() + value.len());
            let body = Body {
                extras: &FLAGS,
                key: echoed,
                value,
            };
            binary::write_response(request, Status::Ok, item.cas(), body, out);
        }
        None => {
            counters.get_misses += 1;
            if get.quiet {
                return;
            }
            reserve(out, HEADER_LEN + key.len() + 16);
            if get.with_key {
                let body = Body {
                    key: echoed,
                    ..Body::default()
                };
                binary::write_response(request, Status::NotFound, 0, body, out);
            } else {
                binary::write_error(request, Status::NotFound, "", out);
            }
        }
    }
}
