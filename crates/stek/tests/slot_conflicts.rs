//! Slot conflicts surfaced and repaired (issue 11) on the real Redis and etcd: junk planted on
//! future slots, a record deleted after the generator made it, two generators that do not trust
//! each other. The scenario lives in `util/fleet.rs` (`slot_conflicts_repaired`).
//!
//! A test binary of its own, one store at a time: `fleet_redis.rs` and `fleet_etcd.rs` measure
//! timing and must not run beside other scenarios.

mod util;

use std::sync::Mutex;

use util::fleet::{self, EtcdNode, RedisFleet};
use util::shm_dir;

/// One scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn redis_junk_is_replaced_deleted_slots_recreated_foreign_records_left() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = shm_dir();
    let mut store = RedisFleet::start(dir.path());
    fleet::slot_conflicts_repaired(&mut store, dir.path());
}

#[test]
fn etcd_junk_is_replaced_deleted_slots_recreated_foreign_records_left() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = shm_dir();
    let mut store = EtcdNode::start(dir.path());
    fleet::slot_conflicts_repaired(&mut store, dir.path());
}
