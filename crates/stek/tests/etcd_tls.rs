//! etcd with TLS and authentication (issue 14): Debian's etcd 3.4 serving `https://` with
//! certificates made by the test, wanting client certificates (`--client-cert-auth`), with
//! authentication enabled by `etcdctl` exactly as the README says (root, a `stek-generator` role
//! that reads and writes `stek/`, a `stek-agent` role that only reads it).

mod util;

use std::time::Duration;

use stek::error::Chain;
use stek::store::{conformance, Created, EtcdStore, LoadedAccess, Store, StoreError};
use stek_core::Slot;
use util::etcd_cluster::EtcdCluster;
use util::fleet::{self, Agent, GROUP};
use util::{shm_dir, unix_now, wait_for};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A record expiring in a minute.
fn later() -> Duration {
    unix_now() + Duration::from_secs(60)
}

#[test]
fn conformance_over_tls_with_client_certificates_as_the_generator_user() {
    let dir = shm_dir();
    let mut etcd = EtcdCluster::start(dir.path(), 1, true, true, &[]);
    let users = etcd.enable_auth();
    let store = etcd.store(Some(&users.generator));
    runtime().block_on(async {
        conformance::run_scaled(&store, unix_now(), Duration::from_secs(1), |d| {
            tokio::time::sleep(d + Duration::from_millis(1500))
        })
        .await;
        assert!(store.can_write().await.expect("probe"));
    });
}

#[test]
fn the_agent_role_reads_and_watches_but_cannot_write() {
    let dir = shm_dir();
    let mut etcd = EtcdCluster::start(dir.path(), 1, true, true, &[]);
    let users = etcd.enable_auth();
    let generator = etcd.store(Some(&users.generator));
    let agent = etcd.store(Some(&users.agent));
    runtime().block_on(async {
        let mut changes = agent.changes("g").expect("a watch");
        // The first tick: etcd accepted the agent's watch (read permission on the prefix).
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("the watch is established")
            .expect("open");
        assert!(matches!(
            generator.create("g", Slot(7), b"rec", later()).await,
            Ok(Created::Won)
        ));
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("the agent's watch sees the put")
            .expect("open");
        let window = agent
            .read_window("g", Slot(6), Slot(8))
            .await
            .expect("read");
        assert_eq!(window.len(), 1);

        let denied = |r: Result<(), StoreError>, what: &str| {
            let e = r.expect_err(what);
            assert!(matches!(e, StoreError::Refused { .. }), "{what}: {e:?}");
            let line = Chain(&e).to_string();
            assert!(line.contains("etcdserver: permission denied"), "{line}");
            assert!(!line.contains('\n'), "{line}");
        };
        denied(
            agent.create("g", Slot(8), b"rec", later()).await.map(drop),
            "the agent creates",
        );
        denied(
            agent.remove_before("g", Slot(100)).await.map(drop),
            "the agent deletes",
        );
        assert_eq!(
            generator
                .read_window("g", Slot(6), Slot(8))
                .await
                .unwrap()
                .len(),
            1,
            "nothing was deleted"
        );
        assert!(!agent.can_write().await.expect("probe"));
        assert!(generator.can_write().await.expect("probe"));
    });

    // stek itself: an agent with the generator's credentials warns once, one with its own does
    // not; a generator with the agent's credentials fails with etcd's message.
    let root = dir.path();
    let (gk, gpub) = fleet::keygen(root, "generator", "gen.key");
    let (id, idpub) = fleet::keygen(root, "group", "web.identity");
    let url = etcd.url();
    let as_agent = etcd.stek_args(Some(&users.agent));
    let as_generator = etcd.stek_args(Some(&users.generator));
    let weak_gen = fleet::generator(root, "weak-gen", &url, &idpub, &gk, &strs(&as_agent));
    let line = wait_for("the generator's refusal", Duration::from_secs(15), || {
        weak_gen
            .log_text()
            .lines()
            .find(|l| l.contains("could not publish"))
            .map(str::to_owned)
    });
    assert!(line.contains("etcdserver: permission denied"), "{line}");
    drop(weak_gen);
    let broad = Agent::start(root, "broad", &url, GROUP, &id, &gpub, &strs(&as_generator));
    let narrow = Agent::start(root, "narrow", &url, GROUP, &id, &gpub, &strs(&as_agent));
    let warning = "the agent's store user can write under stek/";
    wait_for("the broad agent's warning", Duration::from_secs(15), || {
        broad.proc.log_text().contains(warning).then_some(())
    });
    // The narrow agent probed at the same time; give it as long again.
    std::thread::sleep(Duration::from_secs(2));
    let broad_log = broad.proc.log_text();
    assert_eq!(broad_log.matches(warning).count(), 1, "{broad_log}");
    let narrow_log = narrow.proc.log_text();
    assert!(!narrow_log.contains(warning), "{narrow_log}");
    for log in [&broad_log, &narrow_log] {
        for secret in ["gen-secret-pw", "agent-secret-pw"] {
            assert!(!log.contains(secret), "a password in a log:\n{log}");
        }
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The first error of one read through a store made with `access`, as one line.
fn first_error(url: &str, access: &LoadedAccess) -> String {
    let store = EtcdStore::connect_with(url, access).expect("connect");
    let e = runtime()
        .block_on(store.read_window("g", Slot(1), Slot(2)))
        .expect_err("the read fails");
    let line = Chain(&e).to_string();
    assert!(!line.contains('\n'), "one line: {line}");
    line
}

#[test]
fn wrong_ca_wrong_password_missing_client_certificate_and_plain_http_are_one_clear_line() {
    let dir = shm_dir();
    let mut etcd = EtcdCluster::start(dir.path(), 1, true, true, &[]);
    let users = etcd.enable_auth();
    let pki = etcd.pki.as_ref().expect("TLS");
    let endpoint = format!("127.0.0.1:{}", etcd.members[0].client_port);

    let mut wrong_ca = etcd.access(Some(&users.agent));
    wrong_ca.ca_pem = Some(std::fs::read(&pki.other_ca).unwrap());
    let line = first_error(&etcd.url(), &wrong_ca);
    eprintln!("wrong CA: {line}");
    assert!(
        line.contains(&endpoint)
            && line.contains("TLS handshake failed: invalid peer certificate: UnknownIssuer"),
        "{line}"
    );

    let mut no_client_cert = etcd.access(Some(&users.agent));
    no_client_cert.cert_pem = None;
    no_client_cert.key_pem = None;
    let line = first_error(&etcd.url(), &no_client_cert);
    eprintln!("no client certificate: {line}");
    assert!(line.contains(&endpoint) && line.contains("TLS"), "{line}");

    let wrong_pw = dir.path().join("wrong.password");
    util::etcd_cluster::write_private(&wrong_pw, b"not-the-password\n");
    let line = first_error(
        &etcd.url(),
        &etcd.access(Some(&(users.agent.0.clone(), wrong_pw))),
    );
    eprintln!("wrong password: {line}");
    assert!(
        line.contains(&endpoint)
            && line.contains("authentication failed, invalid user ID or password"),
        "{line}"
    );
    assert!(!line.contains("not-the-password"), "{line}");

    let plain = format!("etcd://{endpoint}");
    let line = first_error(
        &plain,
        &stek::store::StoreAccess {
            user: Some(users.agent.0.clone()),
            password_file: Some(users.agent.1.clone()),
            ..Default::default()
        }
        .load()
        .unwrap(),
    );
    eprintln!("etcd:// to a TLS port: {line}");
    assert!(
        line.contains(&endpoint) && line.contains("use etcds://"),
        "{line}"
    );
}

#[test]
fn an_expired_or_forgotten_token_is_replaced_for_requests_and_the_watch() {
    let dir = shm_dir();
    let mut etcd = EtcdCluster::start(dir.path(), 1, true, false, &["--auth-token-ttl=2"]);
    let users = etcd.enable_auth();
    let generator = etcd.store(Some(&users.generator));
    let agent = etcd.store(Some(&users.agent));
    let rt = runtime();
    let mut changes = rt.block_on(async {
        let mut changes = agent.changes("g").expect("a watch");
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("the watch is established")
            .expect("open");
        generator
            .create("g", Slot(1), b"one", later())
            .await
            .expect("create 1");
        // The simple token expires after 2 s without use.
        tokio::time::sleep(Duration::from_secs(4)).await;
        generator
            .create("g", Slot(2), b"two", later())
            .await
            .expect("create 2 with a new token");
        assert_eq!(
            agent
                .read_window("g", Slot(1), Slot(2))
                .await
                .expect("read")
                .len(),
            2
        );
        changes
    });
    // A restarted member forgets every token, and its watch streams break: the agent's watch
    // comes back (it is refused with the old token, then authenticates again).
    etcd.kill(0);
    etcd.spawn(0);
    etcd.wait_healthy(0);
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut n = 0;
        loop {
            let created = generator
                .create("g", Slot(10 + n), b"more", later())
                .await
                .expect("create after the restart");
            assert!(matches!(created, Created::Won));
            n += 1;
            // Ticks keep coming once the watch is back: the put above, or the re-established
            // stream itself (which the agent re-reads on).
            if tokio::time::timeout(Duration::from_secs(1), changes.changed())
                .await
                .is_ok()
            {
                // Drain, then prove the watch is live: one more put, one more tick.
                changes.borrow_and_update();
                generator
                    .create("g", Slot(100), b"last", later())
                    .await
                    .expect("create");
                tokio::time::timeout(Duration::from_secs(15), changes.changed())
                    .await
                    .expect("the re-established watch sees a put")
                    .expect("open");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watch never came back"
            );
        }
        assert!(agent.read_window("g", Slot(1), Slot(2)).await.is_ok());
    });
}
