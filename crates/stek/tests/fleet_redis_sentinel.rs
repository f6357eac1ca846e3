//! Redis Sentinel (issue 14): a generator given `redis+sentinel://` follows the elected primary
//! through a failover. Real `redis-server` nodes (a primary, two replicas) and three sentinels
//! (`redis-server --sentinel`, quorum 2, down after 1 s) on loopback, P = 4 s as in `fleet.rs`.
//! Two agents read a replica directly (`redis://`), as a site's agents read their local
//! replica; the third follows the sentinels too.

mod util;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use stek::store::{conformance, Created, RedisStore, Store, StoreAccess, StoreError};
use stek_core::Slot;
use tokio::task::block_in_place;

use util::fleet::{self, generated, keygen, shared, statuses_at, Agent, Names, GROUP, MID, P, R};
use util::redis_tls::{TlsFiles, TlsNode, GENERATOR_USER};
use util::sentinel::{SentinelFleet, TlsSentinel, MASTER};
use util::{shm_dir, sleep_into_next_slot, wait_for};

#[test]
fn a_generator_follows_the_primary_through_a_failover_and_no_slot_is_lost() {
    let dir = shm_dir();
    let root = dir.path();
    let mut fleet = SentinelFleet::start(root);
    let url = fleet.url();
    let old = fleet.primary.port;
    let (gk, gpub) = keygen(root, "generator", "gen.key");
    let (id, idpub) = keygen(root, "group", "web.identity");
    let gen = fleet::generator(root, "gen", &url, &idpub, &gk, &[]);
    let first = wait_for("the first records", Duration::from_secs(10), || {
        let keys = fleet.replicas[0].cli(&["KEYS", &format!("stek:{GROUP}:*")]);
        String::from_utf8_lossy(&keys)
            .lines()
            .filter_map(|k| k.rsplit(':').next()?.parse::<u64>().ok())
            .min()
    });
    assert!(
        gen.log_text()
            .contains(&format!("the sentinels name 127.0.0.1:{old}")),
        "{}",
        gen.log_text()
    );
    // Agents 0 and 1 read the replica that survives (both do: only the primary is killed);
    // agent 2 reads the primary the sentinels name.
    let replica = format!("redis://127.0.0.1:{}", fleet.replicas[0].port);
    let agents: Vec<Agent> = [(0, &replica), (1, &replica), (2, &url)]
        .into_iter()
        .map(|(i, u)| Agent::start(root, &format!("agent{i}"), u, GROUP, &id, &gpub, &[]))
        .collect();
    let refs: Vec<&Agent> = agents.iter().collect();

    // Panics if a slot ever shows two names (a fleet split).
    let mut names = Names::default();
    // Per agent, every shared key it held: slot -> name.
    let mut held: Vec<BTreeMap<u64, String>> = vec![BTreeMap::new(); agents.len()];
    let mut killed = None;
    let mut sampled = 0;
    let mut settled = 0;
    while settled < 4 {
        let slot = sleep_into_next_slot(P, MID);
        let st = statuses_at(&refs, slot);
        for ((a, s), h) in refs.iter().zip(&st).zip(&mut held) {
            names.add(&a.name, s);
            h.extend(shared(s));
        }
        if slot < first + R {
            continue;
        }
        match killed {
            // Before the kill and once the failover settled: identical rings of shared keys.
            None => fleet::assert_identical_shared(&refs, &st),
            Some((k, _)) if slot >= k + 2 => {
                fleet::assert_identical_shared(&refs, &st);
                settled += 1;
            }
            // During the failover: no key differs between agents (Names), a ring may lack the
            // next key for a moment.
            Some(_) => {}
        }
        sampled += 1;
        if sampled == 2 && killed.is_none() {
            fleet.primary.kill();
            eprintln!("sentinel: killed the primary 127.0.0.1:{old} (SIGKILL) in slot {slot}");
            killed = Some((slot, Instant::now()));
        }
    }
    let (kill_slot, kill_time) = killed.expect("the primary was killed");

    // Sentinel promoted a replica, and the generator followed it.
    let new = wait_for("the sentinels to agree", Duration::from_secs(5), || {
        fleet.agreed_primary()
    });
    assert_ne!(new, old, "no failover");
    assert!(
        fleet.replicas.iter().any(|r| r.port == new),
        "the new primary {new} is not one of the replicas"
    );
    let log = gen.log_text();
    assert!(
        log.contains(&format!(
            "following 127.0.0.1:{new}, the new primary the sentinels name (was 127.0.0.1:{old})"
        )),
        "the generator did not follow the new primary:\n{log}"
    );
    // With WAIT 1, every record the generator counted as published was on a replica: none
    // vanished with the old primary.
    assert!(!log.contains("vanished"), "{log}");
    let made = generated(&log);
    let last = *names.0.keys().next_back().expect("keys seen");
    for slot in kill_slot + 2..=last {
        assert!(
            made.contains_key(&slot),
            "slot {slot} after the failover was not published: {made:?}"
        );
    }
    // No slot lost: every slot from the first full window to the last seen was held by every
    // agent, under one name (Names checked that).
    for (a, h) in refs.iter().zip(&held) {
        for slot in first + R..=last {
            assert!(
                h.contains_key(&slot),
                "{} never held a key for slot {slot}: {h:?}",
                a.name
            );
        }
    }
    // No agent fell back to a local key once the failover settled (the final rings are all
    // shared: checked by assert_identical_shared above); none counted a conflicting record.
    for s in statuses_at(&refs, last - 1) {
        assert_eq!(s.slot_conflicts, 0, "{}", s.render());
    }
    for line in log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("primary"))
    {
        eprintln!("sentinel: gen: {line}");
    }
    eprintln!(
        "sentinel: failover from {old} to {new}; {} slots seen, generator made {:?}, {:?} after the kill",
        names.0.len(),
        made.keys().collect::<Vec<_>>(),
        kill_time.elapsed()
    );
}

/// The conformance suite's time step on Redis (as in `store_redis.rs`).
const UNIT: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_follows_a_switchover_and_so_does_its_subscription() {
    let dir = shm_dir();
    let fleet = block_in_place(|| SentinelFleet::start(dir.path()));
    let old = fleet.primary.port;
    let store = RedisStore::connect(&fleet.url()).await.expect("connect");
    assert_eq!(
        store.name(),
        format!("Redis at 127.0.0.1:{old} (primary of {MASTER})")
    );
    // The store contract holds through the sentinels (creates also wait for a replica).
    let now = store.server_time().await.expect("TIME");
    conformance::run_scaled(&store, now, UNIT, tokio::time::sleep).await;

    let mut changes = store.changes("g").expect("Redis notifies");
    let expires = store.server_time().await.unwrap() + Duration::from_secs(60);
    assert!(matches!(
        store.create("g", Slot(1), b"one", expires).await,
        Ok(Created::Won)
    ));
    tokio::time::timeout(Duration::from_secs(3), changes.changed())
        .await
        .expect("a notification")
        .unwrap();

    // A switchover: the old primary stays up as a replica and refuses writes (READONLY),
    // which sends the store back to the sentinels.
    let said = fleet.sentinels[0].cli(&["SENTINEL", "FAILOVER", MASTER]);
    assert_eq!(said, "OK");
    let new = block_in_place(|| {
        wait_for("the switchover", Duration::from_secs(15), || {
            fleet.agreed_primary().filter(|p| *p != old)
        })
    });
    // The old primary accepts writes until the sentinels reconfigure it, seconds after they
    // name the new one, and discards them then: a write asks the sentinels first, so the next
    // create goes to the new primary at once.
    let slot = 2;
    assert!(matches!(
        store.create("g", Slot(slot), b"two", expires).await,
        Ok(Created::Won)
    ));
    assert_eq!(
        store.name(),
        format!("Redis at 127.0.0.1:{new} (primary of {MASTER})")
    );
    let on_new = fleet
        .replicas
        .iter()
        .find(|r| r.port == new)
        .expect("a replica was promoted")
        .cli(&["GET", &format!("stek:g:{slot}")]);
    assert_eq!(on_new, b"two\n");
    // The subscription moved to the new primary (or hears it through the old one, now its
    // replica): the create above is announced.
    tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            changes.changed().await.unwrap();
            let seen = store.read_window("g", Slot(slot), Slot(slot)).await;
            if matches!(seen.as_deref(), Ok([_])) {
                break;
            }
        }
    })
    .await
    .expect("a notification after the switchover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_that_name_no_primary_fail_in_one_line() {
    let dir = shm_dir();
    let fleet = block_in_place(|| SentinelFleet::start(dir.path()));
    let url = fleet.url().replace(MASTER, "nope");
    let e = RedisStore::connect(&url).await.unwrap_err();
    let line = stek::error::Chain(&e).to_string();
    let s = &fleet.sentinels;
    assert_eq!(
        line,
        format!(
            "Redis primary of nope is unavailable: no sentinel named it: \
             127.0.0.1:{}: does not monitor a master named nope; \
             127.0.0.1:{}: does not monitor a master named nope; \
             127.0.0.1:{}: does not monitor a master named nope",
            s[0].port, s[1].port, s[2].port
        )
    );
    assert!(matches!(e, StoreError::Unavailable { .. }));
    // Lazily: the store starts; each command says the same.
    let lazy = RedisStore::connect_lazy(&url).expect("a lazy store starts");
    let e = lazy.read_window("g", Slot(0), Slot(1)).await.unwrap_err();
    assert!(
        stek::error::Chain(&e)
            .to_string()
            .starts_with("Redis primary of nope is unavailable: no sentinel named it"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_sentinel_that_wants_auth_gets_the_store_credentials() {
    let dir = shm_dir();
    let root = dir.path();
    let (tls, primary, replica, sentinel) = block_in_place(|| {
        let tls = TlsFiles::make(root);
        let primary = TlsNode::start(root, &tls, "redis-primary", None);
        let replica = TlsNode::start(root, &tls, "redis-replica", Some(primary.port));
        let sentinel = TlsSentinel::start(root, &tls, primary.port, &[GENERATOR_USER]);
        (tls, primary, replica, sentinel)
    });
    let url = format!("rediss+sentinel://127.0.0.1:{}/{MASTER}", sentinel.port);
    let generator = StoreAccess {
        ca: Some(tls.ca.clone()),
        user: Some(GENERATOR_USER.into()),
        password_file: Some(tls.password_file(GENERATOR_USER)),
        ..Default::default()
    };
    let store = RedisStore::connect_with(&url, &generator.load().unwrap())
        .await
        .expect("connect through the TLS sentinel");
    assert_eq!(
        store.name(),
        format!("Redis at 127.0.0.1:{} (primary of {MASTER})", primary.port)
    );
    // The README's generator ACL (with +wait) is enough: a create waits for the replica.
    assert_eq!(
        store.missing_generator_rights(GROUP).await.unwrap(),
        Vec::<&str>::new()
    );
    let expires = store.server_time().await.unwrap() + Duration::from_secs(60);
    assert!(matches!(
        store.create(GROUP, Slot(7), b"seven", expires).await,
        Ok(Created::Won)
    ));
    assert_eq!(
        replica.cli(&["GET", &format!("stek:{GROUP}:7")]),
        b"seven\n"
    );
    // Without credentials the sentinel refuses, in one line naming it.
    let anonymous = StoreAccess {
        ca: Some(tls.ca.clone()),
        ..Default::default()
    };
    let e = RedisStore::connect_with(&url, &anonymous.load().unwrap())
        .await
        .unwrap_err();
    let line = stek::error::Chain(&e).to_string();
    assert!(
        line.starts_with(&format!(
            "Redis primary of {MASTER} is unavailable: no sentinel named it: 127.0.0.1:{}: the server requires a password (NOAUTH)",
            sentinel.port
        )),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");
}
