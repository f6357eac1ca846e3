//! Fleet mode on a 3-member etcd cluster (issue 14): TLS and authentication on, a generator and
//! three agents each given every member, P = 4 s. The leader is killed (SIGKILL) mid-run, just
//! before a generator round: the generator carries on through the election on the other members, the agents' watches and
//! reads move to the survivors, and no slot is lost.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use util::etcd_cluster::EtcdCluster;
use util::fleet::{self, Agent, Names, GROUP, MID, P, R};
use util::{shm_dir, sleep_into_next_slot, wait_for};

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn the_leader_is_killed_mid_run_and_no_slot_is_lost() {
    let dir = shm_dir();
    let root = dir.path();
    let mut etcd = EtcdCluster::start(root, 3, true, false, &[]);
    let users = etcd.enable_auth();
    let url = etcd.url();
    let (gk, gpub) = fleet::keygen(root, "generator", "gen.key");
    let (id, idpub) = fleet::keygen(root, "group", "web.identity");
    let gen_args = etcd.stek_args(Some(&users.generator));
    let agent_args = etcd.stek_args(Some(&users.agent));
    let gen = fleet::generator(root, "gen", &url, &idpub, &gk, &strs(&gen_args));
    let first = wait_for("the generator's first key", Duration::from_secs(10), || {
        fleet::generated(&gen.log_text()).keys().next().copied()
    });
    let agents = Agent::start_many(3, root, &url, GROUP, &id, &gpub, &strs(&agent_args));
    let refs: Vec<&Agent> = agents.iter().collect();
    let mut names = Names::default();
    let mut held: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); refs.len()];
    let (mut sampled, mut killed) = (0, None);
    let mut last = first;
    while sampled < 6 {
        let slot = sleep_into_next_slot(P, MID);
        let st = fleet::statuses_at(&refs, slot);
        for (i, (a, s)) in refs.iter().zip(&st).enumerate() {
            names.add(&a.name, s);
            held[i].extend(fleet::shared(s).keys());
        }
        if slot < first + R {
            continue;
        }
        fleet::assert_identical_shared(&refs, &st);
        last = slot + 1;
        sampled += 1;
        if sampled == 2 {
            // Just before the generator's round (3.5 s into the slot, P/8 before the next
            // boundary): the round meets the election (no leader, then a new one).
            let leader = etcd.leader();
            util::sleep_until_slot(P, slot, Duration::from_millis(3300));
            etcd.kill(leader);
            eprintln!("killed the etcd leader m{leader} (SIGKILL) in slot {slot}");
            killed = Some(slot);
        }
    }
    let kill_slot = killed.expect("the leader was killed");
    let made: BTreeMap<u64, String> = fleet::generated(&gen.log_text());
    for slot in first..=last {
        let name = made.get(&slot).unwrap_or_else(|| {
            panic!(
                "the generator did not create slot {slot} (leader killed in slot {kill_slot}):\n{}",
                gen.log_text()
            )
        });
        assert_eq!(names.0.get(&slot), Some(name), "slot {slot}");
        for (i, a) in refs.iter().enumerate() {
            assert!(
                held[i].contains(&slot),
                "{} never held slot {slot} (leader killed in slot {kill_slot}):\n{}",
                a.name,
                a.proc.log_text()
            );
        }
    }
    let log = gen.log_text();
    for secret in ["gen-secret-pw", "agent-secret-pw"] {
        assert!(!log.contains(secret), "a password in the generator's log");
    }
    eprintln!(
        "slots {first}..={last} all created and held; leader killed in slot {kill_slot}; generator log:\n{log}"
    );
}
