//! A hostile store writer (issue 11) on the real Redis and etcd: three 50 MB values over records of
//! the agents' window and 4,000 junk keys of 10 KB under the group's prefix. The scenario lives in
//! `util/fleet.rs` (`hostile_values_and_junk_keys`).
//!
//! A test binary of its own, and one store at a time: writing 150 MB into a store takes seconds of
//! a CPU (etcd answers no reads meanwhile), which would disturb the timing the fleet scenarios
//! measure if they ran beside it.

mod util;

use std::sync::Mutex;

use util::fleet::{self, EtcdNode, RedisFleet};
use util::shm_dir;

/// One scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn redis_oversize_values_and_junk_keys_cost_the_agents_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = shm_dir();
    let mut store = RedisFleet::start(dir.path());
    fleet::hostile_values_and_junk_keys(&mut store, dir.path());
}

#[test]
fn etcd_oversize_values_and_junk_keys_cost_the_agents_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = shm_dir();
    let mut store = EtcdNode::start(dir.path());
    fleet::hostile_values_and_junk_keys(&mut store, dir.path());
}
