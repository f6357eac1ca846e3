//! The test harness's own guarantees, which every integration test relies on: server ports that
//! no other socket can take, and signals that reach only our own children.

mod util;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Command;

use util::port::free_port;
use util::terminate;

/// Ports are outside the kernel's ephemeral range (where outgoing connections take theirs),
/// never handed out twice, and a port another socket holds is skipped.
#[test]
fn ports_are_outside_the_ephemeral_range_distinct_and_free() {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let mut it = range.split_whitespace().map(|v| v.parse::<u16>().unwrap());
    let (lo, hi) = (it.next().unwrap(), it.next().unwrap());
    let mut seen = BTreeSet::new();
    let mut last = 0;
    for _ in 0..500 {
        last = free_port();
        assert!(
            !(lo..=hi).contains(&last),
            "{last} is in the ephemeral range {lo}-{hi}"
        );
        assert!(seen.insert(last), "{last} handed out twice");
    }
    // The walk is sequential (this is the binary's only test that takes ports): the port after
    // the last one is the next candidate. Held by a listener, it is skipped.
    let held = TcpListener::bind(("127.0.0.1", last + 1));
    let next = free_port();
    if held.is_ok() {
        assert_ne!(next, last + 1, "a port held by a listener was handed out");
    }
    assert!(
        TcpListener::bind(("127.0.0.1", next)).is_ok(),
        "{next} is free"
    );
}

/// A running child gets SIGTERM; one already waited for (its pid free for a stranger) gets
/// nothing, and `terminate` does not fail on it.
#[test]
fn only_a_child_not_yet_waited_for_is_signalled() {
    let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
    terminate(&mut child);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(15), "{status}");
    let mut done = Command::new("true").spawn().expect("true");
    assert!(done.wait().unwrap().success());
    terminate(&mut done);
    assert!(done.try_wait().unwrap().is_some());
}
