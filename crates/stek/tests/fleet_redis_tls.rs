//! Redis over TLS with least-privilege ACL users (issue 14): a TLS-only primary and read replica
//! (`port 0`, `tls-port`, replication over TLS), generators logged in as `stek-generator` and
//! agents as `stek-agent` with the README's rights ([`GENERATOR_ACL`], [`AGENT_ACL`]). The
//! fleet scenarios of `util/fleet.rs`, the store conformance suite, what each user may not do,
//! and the one line each misconfiguration gets from the real `stek` binary.

mod util;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use stek::store::redis::{AGENT_ACL, GENERATOR_ACL};
use stek::store::{
    conformance, Created, Found, RedisStore, Replaced, Seen, Store, StoreAccess, StoreError,
};
use stek_core::Slot;
use tokio::sync::watch;
use util::fleet::{self, keygen, Agent, Backend, GROUP};
use util::redis_tls::{
    password, RedisTlsFleet, TlsFiles, TlsNode, ADMIN_USER, AGENT_USER, GENERATOR_USER,
};
use util::{shm_dir, wait_for, Proc};

#[test]
fn agents_hold_identical_rings_and_survive_a_generator_kill_over_tls() {
    let dir = shm_dir();
    let mut store = RedisTlsFleet::start(dir.path());
    fleet::identical_rings_and_generator_kill(&mut store, dir.path());
}

#[test]
fn outsiders_and_forged_records_install_nothing_over_tls() {
    let dir = shm_dir();
    let mut store = RedisTlsFleet::start(dir.path());
    fleet::outsiders_and_forgeries_are_rejected(&mut store, dir.path());
}

#[test]
fn the_readme_grants_exactly_the_rights_stek_documents() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    for line in [
        format!("user stek-generator on >GENERATOR-PASSWORD {GENERATOR_ACL}"),
        format!("user stek-agent on >AGENT-PASSWORD {AGENT_ACL}"),
        "user stek-replica on >REPLICA-PASSWORD -@all +psync +replconf +ping".to_owned(),
        "tls-replication yes".to_owned(),
        "port 0".to_owned(),
    ] {
        assert!(readme.contains(&line), "the README lacks {line:?}");
    }
}

/// Creates and replaces as the generator user; surveys (`SCAN`) as the agent user, the role
/// that surveys (a generator never lists keys, and its user may not).
struct ByRole {
    generator: RedisStore,
    agent: RedisStore,
}

impl Store for ByRole {
    async fn create(
        &self,
        group: &str,
        slot: Slot,
        record: &[u8],
        expires_at: Duration,
    ) -> Result<Created, StoreError> {
        self.generator.create(group, slot, record, expires_at).await
    }

    async fn replace(
        &self,
        group: &str,
        slot: Slot,
        seen: &Seen,
        record: &[u8],
        expires_at: Duration,
    ) -> Result<Replaced, StoreError> {
        self.generator
            .replace(group, slot, seen, record, expires_at)
            .await
    }

    async fn read_window(
        &self,
        group: &str,
        first: Slot,
        last: Slot,
    ) -> Result<Vec<(Slot, Found)>, StoreError> {
        self.generator.read_window(group, first, last).await
    }

    fn changes(&self, group: &str) -> Option<watch::Receiver<u64>> {
        self.agent.changes(group)
    }

    async fn survey(&self) -> Result<Option<stek::store::Survey>, StoreError> {
        self.agent.survey().await
    }

    async fn server_time(&self) -> Result<Option<Duration>, StoreError> {
        self.generator.server_time().await.map(Some)
    }
}

fn access(tls: &TlsFiles, user: &str) -> StoreAccess {
    StoreAccess {
        ca: Some(tls.ca.clone()),
        user: Some(user.to_owned()),
        password_file: Some(tls.password_file(user)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_tls_with_the_generator_user() {
    let dir = shm_dir();
    let tls = TlsFiles::make(dir.path());
    let primary = TlsNode::start(dir.path(), &tls, "primary", None);
    let url = format!("rediss://127.0.0.1:{}", primary.port);
    let connect = |user: &str| {
        let loaded = access(&tls, user).load().expect("load the access files");
        let url = url.clone();
        async move { RedisStore::connect_with(&url, &loaded).await }
    };
    let store = ByRole {
        generator: connect(GENERATOR_USER)
            .await
            .expect("connect as the generator"),
        agent: connect(AGENT_USER).await.expect("connect as the agent"),
    };
    let now = store.generator.server_time().await.expect("TIME");
    conformance::run_scaled(&store, now, Duration::from_millis(200), tokio::time::sleep).await;
    // The rights each user has under a group, asked without writing.
    let g = store.generator.rights(GROUP).await.expect("rights");
    assert!(g.write && g.publish && !g.delete && !g.subscribe, "{g:?}");
    let a = store.agent.rights(GROUP).await.expect("rights");
    assert!(!a.write && !a.delete && !a.publish && a.subscribe, "{a:?}");
    // The agent's user reads, and nothing else.
    let refused = store
        .agent
        .create(GROUP, Slot(1), b"x", now + Duration::from_secs(60))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("NOPERM"), "{refused}");
    drop(primary);
}

/// `stek generator` for [`GROUP`] at `url` with `flags`, for a run that is expected to end.
fn generator_once(root: &Path, url: &str, flags: &[String]) -> (bool, String) {
    let (key, _) = keygen(root, "generator", &format!("g{}.key", rand_name()));
    let (_, idpub) = keygen(root, "group", &format!("i{}.identity", rand_name()));
    let o = Command::new(env!("CARGO_BIN_EXE_stek"))
        .args(["generator", "--store", url, "--group"])
        .arg(format!("{GROUP}={idpub}"))
        .arg("--signing-key")
        .arg(&key)
        .args(["--period", "4s", "--lifetime", "8s"])
        .args(flags)
        .output()
        .expect("run stek generator");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn rand_name() -> u128 {
    util::unix_now().as_nanos()
}

/// The single `stek: ...` line a failed start prints, checked to name the server.
fn error_line(out: &str, port: u16) -> String {
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("stek: ")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{out}");
    assert!(
        lines[0].contains(&format!("Redis at 127.0.0.1:{port}")),
        "the line names the server: {}",
        lines[0]
    );
    lines[0].to_owned()
}

#[test]
fn least_privilege_and_one_line_per_misconfiguration() {
    let dir = shm_dir();
    let root = dir.path();
    let f = RedisTlsFleet::start(root);
    let (p, r) = (f.primary.port, f.replica.port);
    let tls_url = format!("rediss://127.0.0.1:{p}");

    // The agent's credentials cannot set, delete, replace by script or announce a record, on
    // the primary or the replica; the generator's cannot delete one or touch keys outside
    // stek:*.
    f.put(
        GROUP,
        1,
        b"a record",
        util::unix_now() + Duration::from_secs(60),
    );
    for node in [&f.primary, &f.replica] {
        for args in [
            vec!["SET", "stek:web:1", "forged"],
            vec!["DEL", "stek:web:1"],
            vec![
                "EVAL",
                "return redis.call('SET', KEYS[1], 'x')",
                "1",
                "stek:web:1",
            ],
            vec!["PUBLISH", "stek:web", "1"],
        ] {
            let out = node.cli_user(AGENT_USER, &args);
            assert!(out.starts_with("NOPERM"), "{AGENT_USER} {args:?}: {out}");
        }
    }
    for args in [
        vec!["DEL", "stek:web:1"],
        vec!["SET", "other:1", "x"],
        vec!["GET", "other:1"],
        vec!["KEYS", "*"],
    ] {
        let out = f.primary.cli_user(GENERATOR_USER, &args);
        assert!(
            out.starts_with("NOPERM"),
            "{GENERATOR_USER} {args:?}: {out}"
        );
    }
    assert_eq!(f.primary.cli(&["GET", "stek:web:1"]), b"a record\n");
    // ... and the agent's still reads, on the replica, what it needs.
    let out = f
        .replica
        .cli_user(AGENT_USER, &["SCAN", "0", "MATCH", "stek:*"]);
    assert!(out.contains("stek:web:1"), "{out}");

    // A wrong CA, a wrong password, a plain client at a TLS port, a user without the rights:
    // `stek generator` refuses to start, in one line naming the server and the reason.
    let gen_flags = f.tls.flags(GENERATOR_USER);
    let mut wrong_ca = gen_flags.clone();
    wrong_ca[1] = f.tls.other_ca.display().to_string();
    let (ok, out) = generator_once(root, &tls_url, &wrong_ca);
    assert!(!ok, "{out}");
    let line = error_line(&out, p);
    assert!(
        line.contains(
            "TLS: the server's certificate is not signed by the CA given with --store-ca (UnknownIssuer)"
        ),
        "{line}"
    );
    let mut wrong_pw = gen_flags.clone();
    wrong_pw[5] = f.tls.password_file("wrong").display().to_string();
    let (ok, out) = generator_once(root, &tls_url, &wrong_pw);
    assert!(!ok, "{out}");
    let line = error_line(&out, p);
    assert!(
        line.contains("AUTH failed: wrong user or password"),
        "{line}"
    );
    let (ok, out) = generator_once(
        root,
        &format!("redis://127.0.0.1:{p}"),
        &gen_flags[2..], // no --store-ca: not for redis://
    );
    assert!(!ok, "{out}");
    let line = error_line(&out, p);
    assert!(
        line.contains(
            "the server closed the connection (a TLS port does that to a plain client: if it is one, use rediss://)"
        ),
        "{line}"
    );
    let (ok, out) = generator_once(root, &tls_url, &f.tls.flags(AGENT_USER));
    assert!(!ok, "{out}");
    let line = error_line(&out, p);
    assert!(
        line.contains("NOPERM: this generator's user may not run SET, PUBLISH on stek:web:*"),
        "{line}"
    );

    // A client certificate, where the server verifies one: the generator publishes.
    let (gk, gpub) = keygen(root, "generator", "cert-gen.key");
    let (id, idpub) = keygen(root, "group", "web.identity");
    let mut with_cert = gen_flags.clone();
    with_cert.extend([
        "--store-cert".into(),
        f.tls.client_cert.display().to_string(),
        "--store-key".into(),
        f.tls.client_key.display().to_string(),
    ]);
    let with_cert: Vec<&str> = with_cert.iter().map(String::as_str).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stek"));
    cmd.args(["generator", "--store", &tls_url, "--group"])
        .arg(format!("{GROUP}={idpub}"))
        .arg("--signing-key")
        .arg(&gk)
        .args(["--period", "4s", "--lifetime", "8s"])
        .args(&with_cert);
    let gen = Proc::spawn("gen-cert", &mut cmd, root.join("gen-cert.log"));
    wait_for(
        "the generator with a client certificate to publish",
        Duration::from_secs(10),
        || gen.log_text().contains("generated key ").then_some(()),
    );

    // An agent given the generator's credentials says once that they are broader than needed;
    // one with its own says nothing of the kind; one with the wrong CA says why it reads
    // nothing, naming the replica. No log holds a password.
    // The replica's URL with its database (`/0`, the default) spelled out: the fleet helpers
    // give the bare URL the agent's flags, and these agents get their own.
    let replica_url = format!("rediss://127.0.0.1:{r}/0");
    let broad_flags = f.tls.flags(GENERATOR_USER);
    let broad_flags: Vec<&str> = broad_flags.iter().map(String::as_str).collect();
    let broad = Agent::start(root, "broad", &replica_url, GROUP, &id, &gpub, &broad_flags);
    let own_flags = f.tls.flags(AGENT_USER);
    let own_flags: Vec<&str> = own_flags.iter().map(String::as_str).collect();
    let own = Agent::start(root, "own", &replica_url, GROUP, &id, &gpub, &own_flags);
    let mut bad_ca = f.tls.flags(AGENT_USER);
    bad_ca[1] = f.tls.other_ca.display().to_string();
    let bad_ca: Vec<&str> = bad_ca.iter().map(String::as_str).collect();
    let lost = Agent::start(root, "lost", &replica_url, GROUP, &id, &gpub, &bad_ca);
    let warning = "credentials broader than needed: this agent's Redis user can write under stek:*";
    wait_for("the broad agent's warning", Duration::from_secs(10), || {
        broad.proc.log_text().contains(warning).then_some(())
    });
    let tls_failure = format!(
        "Redis at 127.0.0.1:{r} is unavailable: TLS: the server's certificate is not signed by the CA given with --store-ca (UnknownIssuer)"
    );
    wait_for(
        "the agent with the wrong CA to say why",
        Duration::from_secs(10),
        || lost.proc.log_text().contains(&tls_failure).then_some(()),
    );
    // The own agent reads shared keys (it was never refused), and a rotation passes.
    wait_for(
        "the agent to hold a shared key",
        Duration::from_secs(12),
        || {
            own.status()
                .filter(|s| s.keys.iter().any(|k| k.origin == "shared"))
                .map(|_| ())
        },
    );
    std::thread::sleep(Duration::from_secs(fleet::P));
    let log = broad.proc.log_text();
    assert_eq!(log.matches(warning).count(), 1, "{log}");
    assert!(log.contains("SET, PUBLISH on stek:web:*"), "{log}");
    let own_log = own.proc.log_text();
    assert!(!own_log.contains("broader than needed"), "{own_log}");
    assert!(!own_log.contains("NOPERM"), "{own_log}");
    for (name, text) in [
        ("broad", log),
        ("own", own_log),
        ("lost", lost.proc.log_text()),
        ("gen-cert", gen.log_text()),
    ] {
        for user in [GENERATOR_USER, AGENT_USER, ADMIN_USER] {
            assert!(
                !text.contains(&password(user)),
                "{name}'s log holds a password"
            );
        }
    }
}
