//! Fleet mode on a real Redis (issue 3): a primary where the generators write, a read replica
//! where the agents read, P = 4 s, L = 8 s. The scenarios live in `util/fleet.rs`, shared with
//! `fleet_etcd.rs`.

mod util;

use util::fleet::{self, RedisFleet};
use util::shm_dir;

#[test]
fn agents_hold_identical_rings_and_survive_a_generator_kill() {
    let dir = shm_dir();
    let mut store = RedisFleet::start(dir.path());
    fleet::identical_rings_and_generator_kill(&mut store, dir.path());
}

#[test]
fn the_store_holds_no_key_material_and_every_record_expires() {
    let dir = shm_dir();
    let mut store = RedisFleet::start(dir.path());
    fleet::no_key_material_and_every_record_expires(&mut store, dir.path());
}

#[test]
fn outsiders_and_forged_records_install_nothing() {
    let dir = shm_dir();
    let mut store = RedisFleet::start(dir.path());
    fleet::outsiders_and_forgeries_are_rejected(&mut store, dir.path());
}

#[test]
fn agents_ride_out_a_store_outage_of_three_periods() {
    let dir = shm_dir();
    let mut store = RedisFleet::start(dir.path());
    fleet::store_outage(&mut store, dir.path());
}

#[test]
fn tickets_resume_across_hosts_with_skewed_clocks() {
    let dir = shm_dir();
    let mut store = RedisFleet::start(dir.path());
    fleet::clock_offsets_with_nginx(&mut store, dir.path());
}

#[test]
fn a_stalled_store_never_delays_rotation_or_erasure() {
    let dir = shm_dir();
    let mut store = RedisFleet::start(dir.path());
    fleet::stalled_store(&mut store, dir.path());
}

#[test]
fn agents_with_another_group_or_period_are_told_why() {
    let dir = shm_dir();
    let mut store = RedisFleet::start(dir.path());
    fleet::mismatched_agents_are_told_why(&mut store, dir.path());
}

#[test]
fn a_generator_reports_a_missing_next_key() {
    let dir = shm_dir();
    let store = std::cell::RefCell::new(RedisFleet::start(dir.path()));
    let url = format!("redis://127.0.0.1:{}", store.borrow().primary.port);
    fleet::generator_status_tells_a_missing_next_key(
        &url,
        dir.path(),
        || store.borrow_mut().primary.kill(),
        || store.borrow_mut().primary.spawn(),
    );
}
