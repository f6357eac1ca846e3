//! `stats`: counters, times and the served ring. Never key bytes: the encrypting key's name is
//! public (it is the first 16 bytes of every ticket the host issues).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::version::VERSION;
use crate::memcached::parse::{StatsGroup, MAX_DATA_BLOCK, MAX_KEY_LEN};
use crate::memcached::session::Context;

/// Appends the reply to `stats [group]`.
pub(crate) fn execute(group: StatsGroup, ctx: &Context<'_>, out: &mut Vec<u8>) {
    let mut s = String::with_capacity(768);
    let mut stat = |name: &str, value: &dyn std::fmt::Display| {
        // Writing to a String cannot fail.
        let _ = write!(s, "STAT {name} {value}\r\n");
    };
    match group {
        StatsGroup::General => {
            let snap = ctx.stats.snapshot();
            // The wall clock is read here, the one place that reports it.
            let time = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            stat("pid", &std::process::id());
            stat("uptime", &snap.uptime);
            stat("time", &time);
            stat("version", &VERSION);
            stat("pointer_size", &(usize::BITS));
            stat("threads", &ctx.limits.threads);
            stat("curr_connections", &snap.curr_connections);
            stat("total_connections", &snap.total_connections);
            stat("rejected_connections", &snap.rejected_connections);
            stat("refused_forbidden", &snap.refused_forbidden);
            stat("refused_peer_limit", &snap.refused_peer_limit);
            stat("request_timeouts", &snap.request_timeouts);
            stat("cmd_get", &snap.cmd_get);
            stat("get_hits", &snap.get_hits);
            stat("get_misses", &snap.get_misses);
            stat("refused_writes", &snap.refused_writes);
            stat("client_errors", &snap.client_errors);
            stat("curr_items", &ctx.table.len());
            if let Some(r) = ctx.table.ring() {
                stat("ring_slot", &r.slot);
                stat("ring_start", &r.start);
                stat("ring_keys", &r.keys);
                stat("ring_shared_keys", &r.shared);
                stat("ring_ahead_keys", &r.ahead);
                stat("ring_encrypting", &r.encrypting);
            }
        }
        StatsGroup::Settings => {
            stat("maxconns", &ctx.limits.max_connections);
            stat("num_threads", &ctx.limits.threads);
            stat("idle_timeout", &ctx.limits.idle_timeout.as_secs());
            stat("maxconns_per_peer", &ctx.limits.peer_cap());
            stat(
                "request_timeout_ms",
                &ctx.limits.request_timeout.as_millis(),
            );
            stat("max_line", &ctx.limits.max_line);
            stat("key_max_length", &MAX_KEY_LEN);
            stat("max_data_block", &MAX_DATA_BLOCK);
            stat("read_only", &"yes");
        }
        StatsGroup::Empty => {}
    }
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"END\r\n");
}
