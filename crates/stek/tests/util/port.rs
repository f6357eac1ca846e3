//! Loopback ports for the servers the tests start.
//!
//! A port found by binding port 0 comes from the kernel's ephemeral range, the range every
//! outgoing connection takes its local port from. Between the moment such a port is released
//! and the moment the server binds it, an outgoing connection of a sibling test (an etcd peer, a
//! Redis replica, a thousand memcached clients) may take it, and the server exits with "address
//! already in use". So ports come from outside the ephemeral range, where the kernel never
//! assigns one on its own; each is handed out once per process and checked free by binding it.
//!
//! Standalone (only `std`), so that a test binary or bench can include it with `#[path]` without
//! the rest of `tests/util`.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Ports below this are left to the system's own services.
const LOWEST: u16 = 10_000;

/// The kernel's ephemeral range, `lo..=hi` (Linux's default when it cannot be read).
fn ephemeral() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// The larger stretch of ports outside the ephemeral range (at or above [`LOWEST`]).
fn pool() -> Range<u16> {
    let (lo, hi) = ephemeral();
    let below = LOWEST..lo.max(LOWEST);
    let above = hi.saturating_add(1).max(LOWEST)..u16::MAX;
    let pool = if below.len() >= above.len() {
        below
    } else {
        above
    };
    assert!(
        pool.len() >= 1_000,
        "the ephemeral port range {lo}-{hi} leaves fewer than 1,000 ports for test servers \
         (set /proc/sys/net/ipv4/ip_local_port_range to leave room, e.g. 32768 60999)"
    );
    pool
}

/// A loopback port outside the ephemeral range, free a moment ago and never handed out before
/// by this process.
pub fn free_port() -> u16 {
    static POOL: OnceLock<Range<u16>> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let pool = POOL.get_or_init(pool);
    let span = pool.len() as u32;
    // Two processes started side by side (a test binary and a bench) walk different stretches.
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = pool.start + ((offset + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {pool:?}");
}
