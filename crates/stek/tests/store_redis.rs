//! The Redis store against a real `redis-server` primary and read replica on loopback ports
//! chosen at run time: the store conformance suite, replication to the replica, pub/sub relayed
//! by the replica, recovery after the replica restarts, expiry on every key, untrusted values.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use stek::store::{conformance, Created, Found, RedisStore, Store, StoreError};
use stek_core::record::MAX_RECORD_LEN;
use stek_core::Slot;

/// The conformance suite's time step on Redis: its expiries are 2 s to 12 s ahead and it waits
/// 2.2 s of real time for the first of them to pass (Redis expires with millisecond precision).
const UNIT: Duration = Duration::from_millis(200);

/// Fails the test (never skips it) when redis-server is missing.
fn require_redis_server() {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "redis-server is not installed: run ./scripts/test (it installs the servers the integration tests start)"
    );
}

#[path = "util/port.rs"]
mod port;
use port::free_port;

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
}

/// Polls `f` every 10 ms until it returns `Some`, or panics after `timeout` naming `what`.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `redis-server` killed on drop; its log is printed if the test failed.
struct Redis {
    port: u16,
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    replica_of: Option<u16>,
}

impl Redis {
    /// A primary that syncs replicas at once (the default delay would cost 5 s per replica).
    async fn primary(dir: &Path) -> Redis {
        Self::start(dir, "primary", free_port(), None).await
    }

    /// A read replica of `primary`, returned once its replication link is up.
    async fn replica(dir: &Path, primary: &Redis) -> Redis {
        Self::start(dir, "replica", free_port(), Some(primary.port)).await
    }

    async fn start(dir: &Path, name: &str, port: u16, replica_of: Option<u16>) -> Redis {
        require_redis_server();
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("redis dir");
        let log = dir.join("redis.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("redis log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir);
        match replica_of {
            Some(p) => cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]),
            None => cmd.args(["--repl-diskless-sync-delay", "0"]),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .expect("start redis-server");
        let redis = Redis {
            port,
            child,
            dir,
            log,
            replica_of,
        };
        redis.wait_ready().await;
        redis
    }

    async fn wait_ready(&self) {
        let what = format!("redis-server on port {} to be ready", self.port);
        wait_for(&what, Duration::from_secs(10), || async {
            let mut c = self.conn().await.ok()?;
            let pong: String = redis::cmd("PING").query_async(&mut c).await.ok()?;
            if pong != "PONG" {
                return None;
            }
            if self.replica_of.is_some() {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                info.contains("master_link_status:up").then_some(())
            } else {
                Some(())
            }
        })
        .await;
    }

    /// Kills the server (no clean shutdown, as a crash would) and starts it again on the same
    /// port with the same configuration.
    async fn restart(&mut self) {
        self.kill();
        let name = self.dir.file_name().expect("dir name").to_owned();
        let parent = self.dir.parent().expect("parent").to_owned();
        // Dropping the old guard kills nothing more: its process is gone already.
        *self = Redis::start(&parent, &name.to_string_lossy(), self.port, self.replica_of).await;
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain connection for the test's own checks.
    async fn conn(&self) -> redis::RedisResult<MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut c = self.conn().await.expect("connect to redis");
        cmd.query_async(&mut c).await.expect("redis command")
    }

    /// How many clients of this server subscribe to `channel`.
    async fn subscribers(&self, channel: &str) -> u64 {
        let (_, n): (String, u64) = self
            .cmd(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel))
            .await;
        n
    }

    async fn wait_subscribers(&self, channel: &str, n: u64) {
        let what = format!("{n} subscriber(s) of {channel} on port {}", self.port);
        wait_for(&what, Duration::from_secs(10), || async {
            (self.subscribers(channel).await == n).then_some(())
        })
        .await;
    }

    /// Asserts that every key of stek on this server expires, and returns how many there are.
    async fn assert_every_key_expires(&self) -> usize {
        let keys: Vec<String> = self.cmd(redis::cmd("KEYS").arg("stek:*")).await;
        for k in &keys {
            let pttl: i64 = self.cmd(redis::cmd("PTTL").arg(k)).await;
            assert!(pttl > 0, "key {k} on port {} has PTTL {pttl}", self.port);
        }
        keys.len()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "---- redis-server :{} log ({}) ----\n{log}",
                self.port,
                self.log.display()
            );
        }
    }
}

/// The records of `store`'s window as `(slot, bytes)`, sorted; oversize values are left out.
async fn window(store: &RedisStore, group: &str, first: u64, last: u64) -> Vec<(u64, Vec<u8>)> {
    let mut got: Vec<_> = store
        .read_window(group, Slot(first), Slot(last))
        .await
        .expect("read_window")
        .into_iter()
        .filter_map(|(s, v)| Some((s.0, v.record()?.to_vec())))
        .collect();
    got.sort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_the_primary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Redis::primary(dir.path()).await;
    let store = RedisStore::connect(&primary.url()).await.expect("connect");
    // The store's clock is the one that expires records.
    let now = store.server_time().await.expect("TIME");
    conformance::run_scaled(&store, now, UNIT, tokio::time::sleep).await;
    assert!(primary.assert_every_key_expires().await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_values_stay_in_redis_on_the_primary_and_the_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Redis::primary(dir.path()).await;
    let replica = Redis::replica(dir.path(), &primary).await;
    let store = RedisStore::connect(&primary.url()).await.expect("connect");
    let now = store.server_time().await.expect("TIME");
    let p = &primary;
    conformance::run_oversize(&store, now, |g, slot, value, expires_at| async move {
        let key = format!("stek:{g}:{}", slot.0);
        let _: () = p
            .cmd(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(value)
                    .arg("PXAT")
                    .arg(expires_at.as_millis() as u64),
            )
            .await;
    })
    .await;
    // Agents read replicas, which are read-only: the read script (EVAL_RO, no-writes) runs
    // there too and reports the lengths without the values.
    let agent = RedisStore::connect(&replica.url())
        .await
        .expect("connect replica");
    let got = wait_for(
        "the planted values on the replica",
        Duration::from_secs(10),
        || async {
            let got = agent
                .read_window("oversize", Slot(1), Slot(4))
                .await
                .expect("read the replica");
            (got.len() == 4).then_some(got)
        },
    )
    .await;
    let mut lens: Vec<(u64, Option<u64>, Option<usize>)> = got
        .iter()
        .map(|(s, f)| match f {
            Found::Record(r) => (s.0, None, Some(r.len())),
            Found::Oversize { len } => (s.0, *len, None),
        })
        .collect();
    lens.sort();
    assert_eq!(
        lens,
        vec![
            (1, None, Some(MAX_RECORD_LEN)),
            (2, Some(MAX_RECORD_LEN as u64 + 1), None),
            (3, Some(4 * 1024 * 1024), None),
            (4, None, Some(6)),
        ]
    );
    // The values stayed in Redis; they expire like records.
    assert!(primary.assert_every_key_expires().await >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generators_racing_on_separate_connections_make_one_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Redis::primary(dir.path()).await;
    let mut stores = Vec::new();
    for _ in 0..16 {
        stores.push(RedisStore::connect(&primary.url()).await.expect("connect"));
    }
    let expires = unix_now() + Duration::from_secs(60);
    let tasks: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            tokio::spawn(async move {
                let record = format!("generator-{i}").into_bytes();
                let r = s.create("race", Slot(42), &record, expires).await;
                (record, r.expect("create"))
            })
        })
        .collect();
    let mut won = Vec::new();
    let mut lost = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            (record, Created::Won) => won.push(record),
            (_, Created::Lost(winner)) => lost.push(winner.to_vec()),
            (_, other) => panic!("a racing create: {other:?}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one generator wins the slot");
    assert_eq!(lost.len(), 15);
    assert!(
        lost.iter().all(|w| *w == won[0]),
        "every loser gets the winner back"
    );
    let stored: Vec<u8> = primary.cmd(redis::cmd("GET").arg("stek:race:42")).await;
    assert_eq!(stored, won[0]);
    assert_eq!(primary.assert_every_key_expires().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_in_the_past_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Redis::primary(dir.path()).await;
    let store = RedisStore::connect(&primary.url()).await.expect("connect");
    let past = unix_now() - Duration::from_secs(1);

    assert!(matches!(
        store.create("g", Slot(1), b"late", past).await,
        Ok(Created::Won)
    ));
    let exists: u64 = primary.cmd(redis::cmd("EXISTS").arg("stek:g:1")).await;
    assert_eq!(exists, 0, "a record past its expiry must not be stored");

    // With a live record in the slot, a late create loses to it, as on the embedded store.
    let future = unix_now() + Duration::from_secs(60);
    assert!(matches!(
        store.create("g", Slot(1), b"live", future).await,
        Ok(Created::Won)
    ));
    match store.create("g", Slot(1), b"late", past).await {
        Ok(Created::Lost(w)) => assert_eq!(w.as_slice(), b"live"),
        other => panic!("a late create must lose to the live record, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_values_are_skipped_and_windows_are_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Redis::primary(dir.path()).await;
    let store = RedisStore::connect(&primary.url()).await.expect("connect");

    // Anyone who can write to Redis can put anything under stek's keys.
    let too_big = vec![7u8; MAX_RECORD_LEN + 1];
    let largest = vec![8u8; MAX_RECORD_LEN];
    let _: () = primary
        .cmd(redis::cmd("SET").arg("stek:g:5").arg(&too_big[..]))
        .await;
    let _: () = primary
        .cmd(redis::cmd("SET").arg("stek:g:6").arg(&largest[..]))
        .await;
    let _: i64 = primary
        .cmd(redis::cmd("RPUSH").arg("stek:g:7").arg("not a string"))
        .await;
    let _: () = primary
        .cmd(redis::cmd("SET").arg("stek:g:8").arg("fine"))
        .await;
    assert_eq!(
        window(&store, "g", 0, 10).await,
        vec![(6, largest), (8, b"fine".to_vec())]
    );
    let oversize: Vec<(Slot, Option<u64>)> = store
        .read_window("g", Slot(0), Slot(10))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|(s, f)| match f {
            Found::Oversize { len } => Some((s, len)),
            Found::Record(_) => None,
        })
        .collect();
    assert_eq!(oversize, vec![(Slot(5), Some(MAX_RECORD_LEN as u64 + 1))]);

    // A slot holding a value of another type cannot be created; Redis says why.
    match store
        .create("g", Slot(7), b"x", unix_now() + Duration::from_secs(60))
        .await
    {
        Err(e @ StoreError::Refused { .. }) => assert!(e.to_string().contains("WRONGTYPE"), "{e}"),
        other => panic!("create over a list must fail, got {other:?}"),
    }

    // Windows are capped at 10,000 slots.
    assert_eq!(window(&store, "g", 0, 9_999).await.len(), 2);
    match store.read_window("g", Slot(0), Slot(10_000)).await {
        Err(e @ StoreError::WindowTooLarge { .. }) => {
            assert!(e.to_string().contains("10000"), "{e}")
        }
        other => panic!("a window of 10,001 slots must fail, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_serves_records_and_relays_notifications() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Redis::primary(dir.path()).await;
    let replica = Redis::replica(dir.path(), &primary).await;
    let generator = RedisStore::connect(&primary.url())
        .await
        .expect("connect primary");
    let agent = RedisStore::connect(&replica.url())
        .await
        .expect("connect replica");

    let mut changes = agent.changes("fleet").expect("redis notifies");
    replica.wait_subscribers("stek:fleet", 1).await;
    // A fresh replica's first writes can lag up to 1 s behind its initial sync (Redis holds the
    // primary's stream back briefly although INFO already says `online`): wait until one test
    // write came through, so the timing below measures steady-state replication.
    let warm = unix_now() + Duration::from_secs(60);
    generator
        .create("warmup", Slot(1), b"x", warm)
        .await
        .expect("warm-up write");
    wait_for(
        "the warm-up write on the replica",
        Duration::from_secs(10),
        || async { (!window(&agent, "warmup", 0, 2).await.is_empty()).then_some(()) },
    )
    .await;

    let start = Instant::now();
    let expires = unix_now() + Duration::from_secs(60);
    assert!(matches!(
        generator.create("fleet", Slot(9), b"sealed", expires).await,
        Ok(Created::Won)
    ));
    tokio::time::timeout(Duration::from_secs(1), changes.changed())
        .await
        .expect("a notification on the replica within 1 s")
        .expect("store alive");
    wait_for(
        "the record on the replica",
        Duration::from_secs(1),
        || async {
            (window(&agent, "fleet", 0, 20).await == vec![(9, b"sealed".to_vec())]).then_some(())
        },
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );

    // A lost create on the primary announces nothing.
    changes.mark_unchanged();
    assert!(matches!(
        generator.create("fleet", Slot(9), b"other", expires).await,
        Ok(Created::Lost(_))
    ));

    // Records (slot 9 and the warm-up one) expire on the primary and on the replica.
    assert_eq!(primary.assert_every_key_expires().await, 2);
    assert_eq!(replica.assert_every_key_expires().await, 2);

    // Replicas are read-only: the error carries Redis's own message.
    match agent.create("fleet", Slot(10), b"x", expires).await {
        Err(e @ StoreError::Refused { .. }) => assert!(e.to_string().contains("READONLY"), "{e}"),
        other => panic!("a create on a replica must fail, got {other:?}"),
    }

    // Both clocks are this host's clock here.
    for store in [&generator, &agent] {
        let t = store.server_time().await.expect("TIME");
        let now = unix_now();
        let offset = t.abs_diff(now);
        assert!(offset < Duration::from_secs(1), "offset {offset:?}");
        assert!(Store::server_time(store).await.expect("TIME").is_some());
    }
    assert!(
        !changes.has_changed().expect("store alive"),
        "a lost create changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_and_reads_resume_after_the_replica_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Redis::primary(dir.path()).await;
    let mut replica = Redis::replica(dir.path(), &primary).await;
    let generator = RedisStore::connect(&primary.url())
        .await
        .expect("connect primary");
    let agent = RedisStore::connect(&replica.url())
        .await
        .expect("connect replica");
    let mut changes = agent.changes("fleet").expect("redis notifies");
    replica.wait_subscribers("stek:fleet", 1).await;
    let expires = unix_now() + Duration::from_secs(60);

    // While the replica is down, reads fail promptly instead of hanging.
    replica.kill();
    let outage = tokio::time::timeout(
        Duration::from_secs(10),
        agent.read_window("fleet", Slot(0), Slot(20)),
    )
    .await
    .expect("read_window gives up while the replica is down");
    assert!(
        matches!(outage, Err(StoreError::Unavailable { .. })),
        "{outage:?}"
    );

    replica.restart().await;
    // The store resubscribes by itself and says that notifications may have been missed.
    tokio::time::timeout(Duration::from_secs(15), changes.changed())
        .await
        .expect("a tick after resubscribing")
        .expect("store alive");
    assert_eq!(replica.subscribers("stek:fleet").await, 1);

    changes.mark_unchanged();
    assert!(matches!(
        generator.create("fleet", Slot(3), b"after", expires).await,
        Ok(Created::Won)
    ));
    tokio::time::timeout(Duration::from_secs(1), changes.changed())
        .await
        .expect("a notification from the restarted replica within 1 s")
        .expect("store alive");
    wait_for(
        "reads from the restarted replica",
        Duration::from_secs(10),
        || async {
            let got = agent.read_window("fleet", Slot(0), Slot(20)).await.ok()?;
            (got.len() == 1 && got[0].1.record()?.as_slice() == b"after").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_ends_with_its_receivers_and_with_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Redis::primary(dir.path()).await;
    let store = RedisStore::connect(&primary.url()).await.expect("connect");

    // One subscription per group, shared by its receivers.
    let a = store.changes("g").expect("redis notifies");
    let b = store.changes("g").expect("redis notifies");
    primary.wait_subscribers("stek:g", 1).await;
    drop(a);
    assert_eq!(primary.subscribers("stek:g").await, 1);
    drop(b);
    primary.wait_subscribers("stek:g", 0).await;

    // A new receiver starts a new subscription; dropping the store ends it.
    let mut c = store.changes("g").expect("redis notifies");
    primary.wait_subscribers("stek:g", 1).await;
    drop(store);
    primary.wait_subscribers("stek:g", 0).await;
    let ended = tokio::time::timeout(Duration::from_secs(2), c.changed())
        .await
        .expect("the receiver learns that the store is gone");
    assert!(ended.is_err());
}
