//! `get` and `gets`.

use super::reserve;
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
