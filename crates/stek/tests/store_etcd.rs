//! The etcd store against a real etcd (Debian's etcd-server 3.4), one per test, started on
//! loopback ports chosen at run time and killed when the test ends.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::Value;
use stek::store::{conformance, Created, EtcdStore, Found, Store, StoreError};
use stek_core::record::MAX_RECORD_LEN;
use stek_core::Slot;
use tokio::sync::{watch, Barrier};

// Only tests/util's standalone port helper is included, so this binary does not depend on the
// rest of that module.
#[path = "util/port.rs"]
mod port;
use port::free_port;

fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
}

/// Fails the test (never skips it) when etcd or etcdctl is missing.
fn require_etcd() {
    for tool in ["etcd", "etcdctl"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "{tool} is not installed: run ./scripts/test (it installs etcd-server and etcd-client)"
        );
    }
}

/// A single-member etcd cluster on loopback; killed on drop.
struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    extra: Vec<String>,
}

impl Etcd {
    fn start(extra: &[&str]) -> Etcd {
        require_etcd();
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            client_port: free_port(),
            peer_port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        etcd.spawn();
        etcd
    }

    /// Starts etcd on the same data directory and ports, and waits until it is healthy.
    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let child = Command::new("etcd")
            .arg("--name=n1")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=n1={peer}"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let port = self.client_port;
        let log = self.log_path();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if healthy(port) {
                break;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "etcd exited with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "etcd on port {port} not healthy after 30 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -9`, then the same etcd again on the same data directory.
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    fn store(&self) -> EtcdStore {
        EtcdStore::connect(&self.url()).expect("connect")
    }

    fn etcdctl(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=http://127.0.0.1:{}", self.client_port))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcdctl");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(bytes) = stdin {
            input.write_all(bytes).expect("write etcdctl stdin");
        }
        drop(input);
        let out = child.wait_with_output().expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Every key under `prefix`, as etcdctl reports it (`get --write-out=json`).
    fn kvs(&self, prefix: &str) -> Vec<Value> {
        let out = self.etcdctl(&["get", "--prefix", prefix, "--write-out=json"], None);
        let v: Value = serde_json::from_slice(&out.stdout).expect("etcdctl json");
        v["kvs"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until etcd counts `n` open watch streams (its own metric).
    fn wait_watch_streams(&self, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = None;
        while std::time::Instant::now() < deadline {
            seen = http_get(self.client_port, "/metrics").and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watch_stream_total "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            });
            if seen == Some(n as f64) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd has {seen:?} watch streams open, expected {n}");
    }

    fn lease_count(&self) -> usize {
        let out = self.etcdctl(&["lease", "list", "--write-out=json"], None);
        let v: Value = serde_json::from_slice(&out.stdout).expect("etcdctl json");
        v["leases"].as_array().map_or(0, Vec::len)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The body of a plain HTTP GET on loopback, if it answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// POSTs `body` to the JSON gateway and returns the status line and body of the answer.
fn http_post(port: u16, path: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to etcd");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        format!(
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("etcd answers");
    answer
}

/// etcd's `/health` says `true`.
fn healthy(port: u16) -> bool {
    http_get(port, "/health").is_some_and(|a| a.contains("\"health\":\"true\""))
}

fn key_of(kv: &Value) -> String {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(kv["key"].as_str().expect("key"))
        .expect("base64 key");
    String::from_utf8(raw).expect("utf-8 key")
}

/// Every record under `stek/` was written once (version 1) with a lease.
fn assert_written_once_with_lease(etcd: &Etcd) -> usize {
    assert_written_with_lease(etcd, &[])
}

/// Every record under `stek/` has a lease and was written once (version 1), except the keys
/// named in `replaced` with the number of writes each had (a create and its won replaces).
fn assert_written_with_lease(etcd: &Etcd, replaced: &[(&str, i64)]) -> usize {
    let kvs = etcd.kvs("stek/");
    for kv in &kvs {
        let key = key_of(kv);
        let writes = replaced
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(1, |(_, n)| *n);
        assert_eq!(
            kv["version"].as_i64(),
            Some(writes),
            "{} was overwritten: {kv}",
            key_of(kv)
        );
        assert_ne!(
            kv["lease"].as_i64().unwrap_or(0),
            0,
            "{} has no lease: {kv}",
            key_of(kv)
        );
    }
    kvs.len()
}

/// Waits until `rx` ticks, or panics after `timeout` naming `what`.
async fn tick(rx: &mut watch::Receiver<u64>, timeout: Duration, what: &str) {
    tokio::time::timeout(timeout, rx.changed())
        .await
        .unwrap_or_else(|_| panic!("no tick within {timeout:?} {what}"))
        .expect("the watch stopped");
    rx.mark_unchanged();
}

/// Runs blocking test plumbing (process starts, etcdctl) without stalling the runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_with_real_leases() {
    let etcd = blocking(|| Etcd::start(&[]));
    let store = etcd.store();
    // Expiries of 10 s and 20 s; etcd's lease expiry lags by up to about a second, so every
    // advance waits 1.5 s more than asked.
    conformance::run_scaled(&store, unix_now(), Duration::from_secs(1), |d| {
        tokio::time::sleep(d + Duration::from_millis(1500))
    })
    .await;
    // What the suite left alive (the records that had not expired yet) was written once, leased,
    // but slot 9, which it created then replaced three times (each with a lease of its own).
    let n = blocking(|| {
        assert_written_with_lease(&etcd, &[("stek/conformance/00000000000000000009", 4)])
    });
    assert!(n > 0, "the suite leaves live records behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_values_are_not_downloaded_and_junk_keys_not_read() {
    // etcd refuses requests over 1.5 MiB by default; an attacker's cluster need not.
    let etcd = blocking(|| Etcd::start(&["--max-request-bytes", "16777216"]));
    let store = etcd.store();
    let port = etcd.client_port;
    let put = |key: String, value: &[u8]| {
        let body = serde_json::json!({"key": BASE64.encode(key), "value": BASE64.encode(value)});
        let answer = http_post(port, "/v3/kv/put", body.to_string().as_bytes());
        assert!(
            answer.starts_with("HTTP/1.0 200"),
            "{}",
            &answer[..answer.len().min(300)]
        );
    };
    conformance::run_oversize(&store, unix_now(), |g, slot, value, _| {
        blocking(|| put(format!("stek/{g}/{:020}", slot.0), &value));
        std::future::ready(())
    })
    .await;
    // 4,000 keys of 10 KB between the keys of slots 1 and 2 (40 MB in the range a prefix read
    // would cover): a read of the exact keys never sees them.
    blocking(|| {
        let junk = vec![b'j'; 10_000];
        for batch in 0..40 {
            let ops: Vec<_> = (0..100)
                .map(|i| {
                    serde_json::json!({"request_put": {
                        "key": BASE64.encode(format!("stek/oversize/{:020}-junk-{batch}-{i}", 1)),
                        "value": BASE64.encode(&junk)}})
                })
                .collect();
            let body = serde_json::json!({"success": ops});
            let answer = http_post(port, "/v3/kv/txn", body.to_string().as_bytes());
            assert!(
                answer.starts_with("HTTP/1.0 200"),
                "{}",
                &answer[..answer.len().min(300)]
            );
        }
    });
    let got = store
        .read_window("oversize", Slot(0), Slot(5))
        .await
        .expect("junk keys outside the slots' keys do not fail the read");
    let mut seen: Vec<(u64, bool)> = got
        .iter()
        .map(|(s, f)| (s.0, matches!(f, Found::Record(_))))
        .collect();
    seen.sort();
    assert_eq!(seen, vec![(1, true), (2, false), (3, false), (4, true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_generators_race_and_exactly_one_wins() {
    let etcd = blocking(|| Etcd::start(&[]));
    let url = etcd.url();
    let expires = unix_now() + Duration::from_secs(120);
    let barrier = Arc::new(Barrier::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16u8 {
        let (url, barrier) = (url.clone(), barrier.clone());
        tasks.spawn(async move {
            // Each generator has its own store and connections, as separate processes would.
            let store = EtcdStore::connect(&url).expect("connect");
            let record = vec![i; 100];
            barrier.wait().await;
            (
                record.clone(),
                store.create("race", Slot(42), &record, expires).await,
            )
        });
    }
    let mut winners = Vec::new();
    let mut lost = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("task") {
            (mine, Ok(Created::Won)) => winners.push(mine),
            (_, Ok(Created::Lost(theirs))) => lost.push(theirs.to_vec()),
            (_, Err(e)) => panic!("create failed: {e}"),
            (_, Ok(other)) => panic!("a racing create: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one generator wins");
    assert_eq!(lost.len(), 15);
    assert!(
        lost.iter().all(|r| *r == winners[0]),
        "every loser gets the winner's record"
    );
    let stored = etcd
        .store()
        .read_window("race", Slot(42), Slot(42))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].1.record().expect("a record").as_slice(),
        winners[0].as_slice()
    );

    blocking(|| {
        assert_eq!(assert_written_once_with_lease(&etcd), 1);
        // The losers revoked the leases they did not use.
        assert_eq!(etcd.lease_count(), 1, "unused leases were left behind");
        // The lease ends at the record's expiry (rounded up to whole seconds).
        let kv = &etcd.kvs("stek/race/")[0];
        assert_eq!(key_of(kv), "stek/race/00000000000000000042");
        let lease = format!("{:x}", kv["lease"].as_i64().unwrap());
        let out = etcd.etcdctl(&["lease", "timetolive", &lease, "--write-out=json"], None);
        let ttl: Value = serde_json::from_slice(&out.stdout).unwrap();
        let granted = ttl["granted-ttl"].as_i64().unwrap();
        assert!(
            (119..=121).contains(&granted),
            "granted TTL {granted} for a record due in 120 s"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_are_never_written() {
    let etcd = blocking(|| Etcd::start(&[]));
    let store = etcd.store();
    let now = unix_now();
    // Already expired, empty slot: reported as won (written and expired at once), nothing stored.
    assert!(matches!(
        store
            .create("g", Slot(1), b"old", now - Duration::from_secs(1))
            .await,
        Ok(Created::Won)
    ));
    assert!(blocking(|| etcd.kvs("stek/")).is_empty());
    // Already expired, live record in the slot: that record wins.
    assert!(matches!(
        store
            .create("g", Slot(2), b"live", now + Duration::from_secs(60))
            .await,
        Ok(Created::Won)
    ));
    match store
        .create("g", Slot(2), b"old", now - Duration::from_secs(1))
        .await
    {
        Ok(Created::Lost(w)) => assert_eq!(w.as_slice(), b"live"),
        other => panic!("expected the live record, got {other:?}"),
    }
    // Oversized records are refused before anything is sent.
    let big = vec![0u8; MAX_RECORD_LEN + 1];
    assert!(matches!(
        store
            .create("g", Slot(3), &big, now + Duration::from_secs(60))
            .await,
        Err(StoreError::TooLarge(n)) if n == MAX_RECORD_LEN + 1
    ));
    assert_eq!(blocking(|| assert_written_once_with_lease(&etcd)), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_reads_skip_what_is_not_a_record() {
    let etcd = blocking(|| Etcd::start(&[]));
    let store = etcd.store();
    let expires = unix_now() + Duration::from_secs(60);
    assert!(matches!(
        store.create("g", Slot(5), b"five", expires).await,
        Ok(Created::Won)
    ));
    blocking(|| {
        // A value over the record cap in a slot of the window, and keys inside the range that
        // are not slots: a hostile or confused writer, never a generator.
        let huge = vec![b'x'; MAX_RECORD_LEN + 10];
        etcd.etcdctl(&["put", "stek/g/00000000000000000003"], Some(&huge));
        etcd.etcdctl(&["put", "stek/g/00000000000000000005x", "junk"], None);
        etcd.etcdctl(&["put", "stek/g/0000000000000000007", "junk"], None);
    });
    let got = store.read_window("g", Slot(0), Slot(10)).await.unwrap();
    let mut got: Vec<(u64, Option<Vec<u8>>)> = got
        .into_iter()
        .map(|(s, r)| (s.0, r.record().map(|r| r.to_vec())))
        .collect();
    got.sort();
    // The oversized value is reported as such, without its bytes.
    assert_eq!(got, vec![(3, None), (5, Some(b"five".to_vec()))]);
    // The oversized value occupies the slot as far as create-if-absent goes: never replaced.
    match store.create("g", Slot(3), b"mine", expires).await {
        Ok(Created::Oversize { len: None }) => {}
        other => panic!("a create over an oversize value: {other:?}"),
    }
    // Windows at the ends of the slot range and empty windows.
    assert!(store
        .read_window("g", Slot(u64::MAX - 1), Slot(u64::MAX))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .read_window("g", Slot(6), Slot(5))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_tick_on_create_and_resume_after_an_etcd_restart() {
    let mut etcd = blocking(|| Etcd::start(&[]));
    let agent = etcd.store();
    let generator = etcd.store();
    let expires = unix_now() + Duration::from_secs(120);

    let mut rx = agent.changes("g").expect("etcd can notify");
    tick(
        &mut rx,
        Duration::from_secs(10),
        "when the watch was established",
    )
    .await;

    assert!(matches!(
        generator.create("g", Slot(1), b"one", expires).await,
        Ok(Created::Won)
    ));
    tick(&mut rx, Duration::from_secs(5), "after a create").await;

    // Other groups, lost creates and expiry are not news.
    assert!(matches!(
        generator.create("other", Slot(1), b"x", expires).await,
        Ok(Created::Won)
    ));
    assert!(matches!(
        generator.create("g", Slot(1), b"two", expires).await,
        Ok(Created::Lost(_))
    ));
    assert!(matches!(
        generator
            .create("g", Slot(9), b"brief", unix_now() + Duration::from_secs(1))
            .await,
        Ok(Created::Won)
    ));
    tick(&mut rx, Duration::from_secs(5), "after a create").await;
    let before = *rx.borrow_and_update();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !generator
        .read_window("g", Slot(9), Slot(9))
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot 9 did not expire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then a marker create and exactly one tick since before the expiry: had the expiry ticked,
    // the count would be higher (events arrive in order, so the marker's tick comes after any
    // the expiry caused). No fixed sleep decides it.
    assert!(matches!(
        generator.create("g", Slot(20), b"marker", expires).await,
        Ok(Created::Won)
    ));
    tick(&mut rx, Duration::from_secs(5), "after the marker create").await;
    assert_eq!(
        *rx.borrow_and_update(),
        before.wrapping_add(1),
        "only creates in the group tick"
    );

    // A second receiver of the same group shares the stream.
    let mut rx2 = agent.changes("g").expect("etcd can notify");
    rx2.mark_unchanged();

    blocking(|| etcd.restart());
    tick(
        &mut rx,
        Duration::from_secs(30),
        "when the watch was re-established after the restart",
    )
    .await;
    rx2.mark_unchanged();
    assert!(matches!(
        generator.create("g", Slot(2), b"two", expires).await,
        Ok(Created::Won)
    ));
    tick(
        &mut rx,
        Duration::from_secs(5),
        "after a create following the restart",
    )
    .await;
    tick(&mut rx2, Duration::from_secs(5), "on the second receiver").await;
    // The data directory survived: so did slot 1 and its lease.
    let mut slots: Vec<u64> = agent
        .read_window("g", Slot(0), Slot(10))
        .await
        .unwrap()
        .into_iter()
        .map(|(s, _)| s.0)
        .collect();
    slots.sort_unstable();
    assert_eq!(slots, vec![1, 2]);
    blocking(|| assert_written_once_with_lease(&etcd));

    // The two receivers share one watch stream; the generator never opened one.
    blocking(|| etcd.wait_watch_streams(1));
    // Dropping every receiver of a group closes its stream ...
    drop((rx, rx2));
    blocking(|| etcd.wait_watch_streams(0));
    // ... and a new receiver opens another.
    let mut rx = agent.changes("g").expect("etcd can notify");
    tick(
        &mut rx,
        Duration::from_secs(10),
        "when the watch was established again",
    )
    .await;
    blocking(|| etcd.wait_watch_streams(1));

    // Dropping the store stops its watch: receivers see the channel close.
    drop(agent);
    let closed = tokio::time::timeout(Duration::from_secs(5), rx.changed()).await;
    assert!(
        matches!(closed, Ok(Err(_))),
        "the watch must stop with its store"
    );
    blocking(|| etcd.wait_watch_streams(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_endpoint() {
    let etcd = blocking(|| Etcd::start(&[]));
    let dead = free_port();
    let url = format!("etcd://127.0.0.1:{dead},127.0.0.1:{}", etcd.client_port);
    let store = EtcdStore::connect(&url).unwrap();
    let expires = unix_now() + Duration::from_secs(60);
    assert!(matches!(
        store.create("g", Slot(1), b"one", expires).await,
        Ok(Created::Won)
    ));
    assert_eq!(
        store
            .read_window("g", Slot(1), Slot(1))
            .await
            .unwrap()
            .len(),
        1
    );
    let mut rx = store.changes("g").unwrap();
    tick(
        &mut rx,
        Duration::from_secs(10),
        "when the watch was established",
    )
    .await;

    // No endpoint answers: one error naming each of them.
    let nowhere = EtcdStore::connect(&format!(
        "etcd://127.0.0.1:{dead},127.0.0.1:{}",
        free_port()
    ))
    .unwrap();
    match nowhere.read_window("g", Slot(1), Slot(1)).await {
        Err(e @ StoreError::Unavailable { .. }) => {
            let m = stek::error::Chain(&e).to_string();
            assert!(
                m.contains(&format!("127.0.0.1:{dead}")) && m.matches("etcd at").count() == 2,
                "{m}"
            );
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(EtcdStore::connect("etcd://").is_err());
    assert!(EtcdStore::connect("redis://127.0.0.1:1").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_etcds_message_and_the_clock_is_etcds() {
    // A member that refuses requests over 1 KiB.
    let etcd = blocking(|| Etcd::start(&["--max-request-bytes=1024"]));
    let store = etcd.store();
    let err = store
        .create(
            "g",
            Slot(1),
            &[7u8; 2000],
            unix_now() + Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused { message, .. } if message.contains("etcdserver: request is too large")),
        "{err}"
    );
    // Nothing was written, and the lease granted for it was revoked.
    blocking(|| {
        assert!(etcd.kvs("stek/").is_empty());
        assert_eq!(etcd.lease_count(), 0);
    });

    let before = unix_now();
    let server = store.server_time().await.unwrap();
    let after = unix_now();
    // Same machine, same clock: within the Date header's half-second plus the round trip.
    assert!(
        server + Duration::from_millis(600) >= before
            && server <= after + Duration::from_millis(600),
        "etcd says {server:?}, local clock {before:?}..{after:?}"
    );
    let via_trait = Store::server_time(&store)
        .await
        .unwrap()
        .expect("etcd has a clock");
    assert!(via_trait.abs_diff(server) <= Duration::from_secs(2));
}

/// How many Range calls etcd has served (the JSON gateway's included).
fn ranges_served(etcd: &Etcd) -> u64 {
    let metrics = http_get(etcd.client_port, "/metrics").expect("etcd /metrics");
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("grpc_server_started_total{") && l.contains("grpc_method=\"Range\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_values_are_read_from_the_watch_without_a_range_request() {
    let mut etcd = blocking(|| Etcd::start(&[]));
    let agent = etcd.store();
    let generator = etcd.store();
    let expires = unix_now() + Duration::from_secs(120);
    let mut rx = agent.changes("g").expect("etcd can notify");
    tick(
        &mut rx,
        Duration::from_secs(10),
        "when the watch was established",
    )
    .await;
    let slots = |found: Vec<(Slot, Found)>| -> Vec<(u64, Option<Vec<u8>>)> {
        let mut v: Vec<_> = found
            .into_iter()
            .map(|(s, f)| match f {
                Found::Record(r) => (s.0, Some(r.to_vec())),
                Found::Oversize { .. } => (s.0, None),
            })
            .collect();
        v.sort();
        v
    };

    // The first read after the watch is established reads every slot.
    let before = ranges_served(&etcd);
    assert!(agent
        .read_window("g", Slot(1), Slot(4))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(ranges_served(&etcd) - before, 4);

    // A record the watch brings is read from it, and the slots read before are not read again.
    assert!(matches!(
        generator.create("g", Slot(3), b"three", expires).await,
        Ok(Created::Won)
    ));
    tick(&mut rx, Duration::from_secs(5), "after a create").await;
    let before = ranges_served(&etcd);
    let found = slots(agent.read_window("g", Slot(1), Slot(4)).await.unwrap());
    assert_eq!(found, [(3, Some(b"three".to_vec()))]);
    assert_eq!(ranges_served(&etcd) - before, 0, "no range request");

    // An oversize value put under a slot's key arrives in an event: it is reported as
    // oversize, never decoded or kept (the mirror holds values of at most MAX_RECORD_LEN).
    let huge = BASE64.encode(vec![7u8; MAX_RECORD_LEN + 1]);
    let key = BASE64.encode("stek/g/00000000000000000004");
    let put = format!(r#"{{"key":"{key}","value":"{huge}"}}"#);
    let answer = blocking(|| http_post(etcd.client_port, "/v3/kv/put", put.as_bytes()));
    assert!(answer.contains(" 200 "), "{answer}");
    tick(&mut rx, Duration::from_secs(5), "after a put").await;
    let before = ranges_served(&etcd);
    let found = agent.read_window("g", Slot(1), Slot(4)).await.unwrap();
    assert!(found
        .iter()
        .any(|(s, f)| *s == Slot(4) && matches!(f, Found::Oversize { .. })));
    assert_eq!(ranges_served(&etcd) - before, 0, "no range request");

    // A record whose lease expires leaves the mirror with the delete event.
    assert!(matches!(
        generator
            .create("g", Slot(2), b"brief", unix_now() + Duration::from_secs(1))
            .await,
        Ok(Created::Won)
    ));
    tick(&mut rx, Duration::from_secs(5), "after a create").await;
    let before = ranges_served(&etcd);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while slots(agent.read_window("g", Slot(2), Slot(2)).await.unwrap())
        == [(2, Some(b"brief".to_vec()))]
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the record never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ranges_served(&etcd) - before, 0, "no range request");

    // A lost watch empties the mirror: the read after it is established again reads all.
    blocking(|| etcd.restart());
    tick(
        &mut rx,
        Duration::from_secs(20),
        "when the watch was re-established",
    )
    .await;
    let before = ranges_served(&etcd);
    let found = slots(agent.read_window("g", Slot(1), Slot(4)).await.unwrap());
    assert_eq!(found, [(3, Some(b"three".to_vec())), (4, None)]);
    assert_eq!(ranges_served(&etcd) - before, 4);
}
