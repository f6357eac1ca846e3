//! The memcached-protocol server against a real client (Debian's `memccat`) and hostile ones:
//! huge lines, binary junk, a thousand connections at once, write commands, the connection cap,
//! idle clients, table updates and shutdown. The server runs in-process on 127.0.0.1:0.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use stek::memcached::{self, KeyTable, Limits, Listener};
use stek_core::{Format, LocalKeys, Origin, Ring, Schedule, Slot, SlotKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

mod util;

use util::read_to_close;

const READ_ONLY: &[u8] = b"SERVER_ERROR read-only: stek serves ticket keys only\r\n";
/// Every wait of these tests is bounded: a hung server fails the test instead of hanging CI.
const PATIENCE: Duration = Duration::from_secs(20);

/// A ring at a fixed time with P = 1 h, L = 18 h (20 keys): every slot shared except the
/// oldest, which gets a local key (never served as `ticket-key/`).
fn ring() -> Ring {
    let schedule = Schedule::default();
    let now = Duration::from_secs(1_800_000_000);
    let window = schedule.window_at(now);
    let shared: BTreeMap<Slot, SlotKey> = window
        .slots()
        .skip(1)
        .map(|s| (s, SlotKey::generate(s).unwrap()))
        .collect();
    Ring::build(&schedule, now, &shared, &mut LocalKeys::new(), 1).unwrap()
}

/// Fails (never skips) when Debian's memcached clients are missing.
fn require_memccat() {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("memccat").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "memccat is not installed: run ./scripts/test (it installs libmemcached-tools)"
    );
}

fn start_of(ring: &Ring, slot: Slot) -> u64 {
    ring.schedule().start(slot).as_secs()
}

struct Server {
    addr: std::net::SocketAddr,
    table: watch::Sender<Arc<KeyTable>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(ring: &Ring, limits: Limits) -> Server {
        let listener = memcached::bind("127.0.0.1:0", false).await.unwrap();
        let addr = listener.tcp_addr().unwrap();
        let (table, rx) = watch::channel(Arc::new(KeyTable::from_ring(ring)));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(memcached::serve(listener, rx, limits, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            table,
            stop: Some(stop),
            task,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

/// Sends `req`, then reads until the reply ends with `until` or the server closes.
async fn ask(s: &mut TcpStream, req: &[u8], until: &[u8]) -> Vec<u8> {
    s.write_all(req).await.unwrap();
    read_until(s, until).await
}

async fn read_until(s: &mut TcpStream, until: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        while !got.ends_with(until) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("reply in time");
    got
}

fn value_reply(key: &str, value: &[u8]) -> Vec<u8> {
    let mut v = format!("VALUE {key} 0 {}\r\n", value.len()).into_bytes();
    v.extend_from_slice(value);
    v.extend_from_slice(b"\r\nEND\r\n");
    v
}

/// Runs `memccat` for `key` and returns the value it wrote, or `None` if it failed.
fn memccat(addr: std::net::SocketAddr, key: &str) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("value");
    let out = Command::new("memccat")
        .arg(format!("--servers={addr}"))
        .arg(format!("--file={}", file.display()))
        .arg(key)
        .output()
        .expect("run memccat");
    out.status
        .success()
        .then(|| std::fs::read(&file).expect("memccat wrote its file"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_reads_every_shared_key_and_the_rings() {
    require_memccat();
    let ring = ring();
    let server = Server::start(&ring, Limits::default()).await;
    let addr = server.addr;
    let ring2 = ring.clone();
    tokio::task::spawn_blocking(move || {
        let ring = ring2;
        let mut served = 0;
        for e in ring.entries() {
            let key = format!("ticket-key/{}", start_of(&ring, e.slot()));
            let got = memccat(addr, &key);
            match e.origin {
                Origin::Shared => {
                    let want = Format::Memcached48.encode(&e.key);
                    assert_eq!(got.as_deref(), Some(&want[..]), "{key}");
                    served += 1;
                }
                Origin::Local => assert_eq!(got, None, "local key {key} must not be served"),
            }
        }
        assert_eq!(served, 19);
        let nginx: Vec<u8> = ring
            .entries()
            .iter()
            .flat_map(|e| Format::Nginx80.encode(&e.key).to_vec())
            .collect();
        assert_eq!(memccat(addr, "ticket-ring/nginx-80"), Some(nginx));
        assert_eq!(
            memccat(addr, "ticket-ring/apache-48"),
            Some(
                Format::Apache48
                    .encode(&ring.encrypting_entry().key)
                    .to_vec()
            )
        );
        let schedule = String::from_utf8(memccat(addr, "ticket-schedule").unwrap()).unwrap();
        assert!(
            schedule.starts_with("period=3600 lifetime=64800 slot=500000 start=1800000000 "),
            "{schedule}"
        );
        assert_eq!(memccat(addr, "ticket-key/0"), None);
    })
    .await
    .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_huge_lines_and_binary_junk() {
    let ring = ring();
    let server = Server::start(&ring, Limits::default()).await;
    let key = format!("ticket-key/{}", start_of(&ring, ring.current()));
    let want = value_reply(
        &key,
        &Format::Memcached48.encode(&ring.encrypting_entry().key),
    );

    // A 200 kB line: refused once 8 KiB arrived, connection closed, the rest never buffered.
    let mut s = server.connect().await;
    let line = vec![b'g'; 200_000];
    // The server may close before all of it is sent: a write error is expected then.
    let _ = s.write_all(&line).await;
    let got = read_to_close(&mut s, PATIENCE).await;
    assert_eq!(got, b"CLIENT_ERROR line too long\r\n");

    // A 200 kB get line, with valid keys: the same.
    let mut s = server.connect().await;
    let mut line = b"get".to_vec();
    while line.len() < 200_000 {
        line.extend_from_slice(b" ticket-ring/nginx-80");
    }
    line.extend_from_slice(b"\r\n");
    let _ = s.write_all(&line).await;
    assert_eq!(
        read_to_close(&mut s, PATIENCE).await,
        b"CLIENT_ERROR line too long\r\n"
    );

    // Binary junk, with and without newlines, from several connections at once.
    let mut junk_tasks = Vec::new();
    for seed in 0..8u64 {
        let mut s = server.connect().await;
        junk_tasks.push(tokio::spawn(async move {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let junk: Vec<u8> = (0..300_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Some seeds get many newlines (many short bad requests), some none.
                    if seed % 2 == 0 && x % 61 == 0 {
                        b'\n'
                    } else {
                        (x >> 24) as u8
                    }
                })
                .collect();
            let (mut r, mut w) = s.split();
            let binary = junk[0] == 0x80;
            let reader = async {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    // The first megabyte is enough to judge.
                    if got.len() < 1 << 20 {
                        got.extend_from_slice(&buf[..n]);
                    }
                }
                got
            };
            let writer = async {
                let _ = w.write_all(&junk).await;
                let _ = w.shutdown().await;
            };
            let (got, ()) = tokio::join!(reader, writer);
            (binary, got)
        }));
    }
    for t in junk_tasks {
        let (binary, got) = tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap();
        assert!(!got.is_empty(), "junk gets error replies");
        if binary {
            // The binary protocol's responses (magic 0x81), never text.
            assert_eq!(got[0], 0x81, "{:?}", &got[..got.len().min(64)]);
            continue;
        }
        // Text: only error lines, never a value, a STORED or an END.
        let text = String::from_utf8_lossy(&got);
        for line in text.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(
                line == "ERROR"
                    || line.starts_with("CLIENT_ERROR ")
                    || line.starts_with("SERVER_ERROR "),
                "a reply to junk that is not an error: {line:?}"
            );
        }
    }

    // Still serving.
    let mut s = server.connect().await;
    let got = ask(&mut s, format!("get {key}\r\n").as_bytes(), b"END\r\n").await;
    assert_eq!(got, want);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_clients_are_all_served() {
    // Client and server share this process: 2,000 sockets plus the test harness.
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let nofile: Option<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok());
    if let Some(n) = nofile {
        assert!(
            n >= 2100,
            "this test needs `ulimit -n` of at least 2100 (it is {n}): run ./scripts/test"
        );
    }
    let ring = ring();
    // An odd number of worker threads: connections are dealt to each in turn.
    let server_limits = Limits {
        threads: 3,
        ..Limits::default()
    };
    let server = Server::start(&ring, server_limits).await;
    let key = format!("ticket-key/{}", start_of(&ring, ring.current()));
    let want = value_reply(
        &key,
        &Format::Memcached48.encode(&ring.encrypting_entry().key),
    );

    // Open all 1,000 first, so they are all open at once, then ask on each.
    let mut conns = Vec::new();
    for _ in 0..1000 {
        conns.push(server.connect().await);
    }
    let mut tasks = Vec::new();
    for mut s in conns {
        let req = format!("get {key}\r\n");
        tasks.push(tokio::spawn(async move {
            ask(&mut s, req.as_bytes(), b"END\r\n").await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), want);
    }
    let mut s = server.connect().await;
    let stats = String::from_utf8(ask(&mut s, b"stats\r\n", b"END\r\n").await).unwrap();
    assert!(stats.contains("STAT total_connections 1001\r\n"), "{stats}");
    assert!(stats.contains("STAT get_hits 1000\r\n"), "{stats}");
    assert!(stats.contains("STAT rejected_connections 0\r\n"), "{stats}");
    assert!(stats.contains("STAT threads 3\r\n"), "{stats}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_and_nothing_changes() {
    require_memccat();
    let ring = ring();
    let server = Server::start(&ring, Limits::default()).await;
    let key = format!("ticket-key/{}", start_of(&ring, ring.current()));
    let value = Format::Memcached48.encode(&ring.encrypting_entry().key);
    let mut s = server.connect().await;

    let mut req = format!("set {key} 0 0 48\r\n").into_bytes();
    req.extend_from_slice(&[0xAA; 48]);
    req.extend_from_slice(b"\r\n");
    assert_eq!(ask(&mut s, &req, b"\r\n").await, READ_ONLY);
    for cmd in [
        format!("add {key} 0 0 1\r\nx\r\n"),
        format!("replace {key} 0 0 1\r\nx\r\n"),
        format!("append {key} 0 0 1\r\nx\r\n"),
        format!("prepend {key} 0 0 1\r\nx\r\n"),
        format!("cas {key} 0 0 1 1\r\nx\r\n"),
        format!("delete {key}\r\n"),
        format!("incr {key} 1\r\n"),
        format!("decr {key} 1\r\n"),
        format!("touch {key} 1\r\n"),
        "flush_all\r\n".to_owned(),
        "verbosity 1\r\n".to_owned(),
    ] {
        assert_eq!(
            ask(&mut s, cmd.as_bytes(), b"\r\n").await,
            READ_ONLY,
            "{cmd}"
        );
    }
    // noreply: nothing comes back; the next reply is the get's.
    let got = ask(
        &mut s,
        format!("set {key} 0 0 1 noreply\r\nx\r\ndelete {key} noreply\r\nget {key}\r\n").as_bytes(),
        b"END\r\n",
    )
    .await;
    assert_eq!(got, value_reply(&key, &value));
    assert_eq!(ask(&mut s, b"shutdown\r\n", b"\r\n").await, b"ERROR\r\n");

    // A real client's write is refused too, and the value is unchanged.
    let addr = server.addr;
    let k = key.clone();
    let (rm, cat) = tokio::task::spawn_blocking(move || {
        let rm = Command::new("memcrm")
            .arg(format!("--servers={addr}"))
            .arg(&k)
            .output()
            .expect("run memcrm");
        (rm.status.success(), memccat(addr, &k))
    })
    .await
    .unwrap();
    assert!(!rm, "memcrm must fail");
    assert_eq!(cat.as_deref(), Some(&value[..]));

    // An absurd data length: CLIENT_ERROR and closed.
    let mut s = server.connect().await;
    s.write_all(b"set k 0 0 99999999999\r\n").await.unwrap();
    let got = read_to_close(&mut s, PATIENCE).await;
    assert!(got.starts_with(b"CLIENT_ERROR "), "{got:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_refuses_with_a_reply() {
    let ring = ring();
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let server = Server::start(&ring, limits).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    // Both are served (and so counted) before the third arrives.
    assert!(ask(&mut a, b"version\r\n", b"\r\n")
        .await
        .starts_with(b"VERSION "));
    assert!(ask(&mut b, b"version\r\n", b"\r\n")
        .await
        .starts_with(b"VERSION "));
    let mut c = server.connect().await;
    let _ = c.write_all(b"version\r\n").await;
    assert_eq!(
        read_to_close(&mut c, PATIENCE).await,
        b"SERVER_ERROR too many connections\r\n"
    );
    drop(a);
    // The slot frees once the server sees the close.
    let mut served = false;
    for _ in 0..100 {
        let mut d = server.connect().await;
        if ask(&mut d, b"version\r\n", b"\r\n")
            .await
            .starts_with(b"VERSION ")
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served);
    let stats = String::from_utf8(ask(&mut b, b"stats\r\n", b"END\r\n").await).unwrap();
    assert!(
        !stats.contains("STAT rejected_connections 0\r\n"),
        "{stats}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    // Margins a loaded machine cannot eat: activity every 500 ms against a 2 s timeout (a
    // stall of 1.5 s would be needed to close it early), and the close awaited for 10 s.
    const IDLE: Duration = Duration::from_secs(2);
    let ring = ring();
    let limits = Limits {
        idle_timeout: IDLE,
        ..Limits::default()
    };
    let server = Server::start(&ring, limits).await;
    let mut s = server.connect().await;
    // Activity keeps it open past the timeout.
    for _ in 0..6 {
        tokio::time::sleep(IDLE / 4).await;
        assert!(ask(&mut s, b"version\r\n", b"\r\n")
            .await
            .starts_with(b"VERSION "));
    }
    let t = std::time::Instant::now();
    assert!(read_to_close(&mut s, Duration::from_secs(10))
        .await
        .is_empty());
    let waited = t.elapsed();
    // Closed for idleness, not for anything earlier.
    assert!(waited >= IDLE - IDLE / 4, "{waited:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_table_is_served_at_once_and_old_keys_are_gone() {
    let old = ring();
    let server = Server::start(&old, Limits::default()).await;
    let mut s = server.connect().await;
    let key = format!("ticket-key/{}", start_of(&old, old.current()));
    let first = ask(&mut s, format!("gets {key}\r\n").as_bytes(), b"END\r\n").await;
    assert!(first.starts_with(format!("VALUE {key} 0 48 ").as_bytes()));

    let new = ring();
    server
        .table
        .send_replace(Arc::new(KeyTable::from_ring(&new)));
    let got = ask(&mut s, format!("get {key}\r\n").as_bytes(), b"END\r\n").await;
    assert_eq!(
        got,
        value_reply(
            &key,
            &Format::Memcached48.encode(&new.encrypting_entry().key)
        )
    );
    let again = ask(&mut s, format!("gets {key}\r\n").as_bytes(), b"END\r\n").await;
    let cas = |r: &[u8]| {
        String::from_utf8_lossy(r)
            .lines()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_ne!(cas(&first), cas(&again), "the cas unique follows the key");

    // An empty table (before the first ring) serves nothing but answers.
    server.table.send_replace(Arc::new(KeyTable::default()));
    assert_eq!(
        ask(&mut s, format!("get {key}\r\n").as_bytes(), b"END\r\n").await,
        b"END\r\n"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_open_connections() {
    let ring = ring();
    let server = Server::start(&ring, Limits::default()).await;
    let mut s = server.connect().await;
    assert!(ask(&mut s, b"version\r\n", b"\r\n")
        .await
        .starts_with(b"VERSION "));
    let addr = server.addr;
    server.shutdown().await;
    assert!(read_to_close(&mut s, PATIENCE).await.is_empty());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_serves_the_same() {
    let ring = ring();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memcached.sock");
    let listener = memcached::bind(path.to_str().unwrap(), false)
        .await
        .unwrap();
    assert!(matches!(listener, Listener::Unix(_)));
    let (_tx, rx) = watch::channel(Arc::new(KeyTable::from_ring(&ring)));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(memcached::serve(
        listener,
        rx,
        Limits::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    let key = format!("ticket-key/{}", start_of(&ring, ring.current()));
    s.write_all(format!("get {key}\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"END\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert_ne!(n, 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        got,
        value_reply(
            &key,
            &Format::Memcached48.encode(&ring.encrypting_entry().key)
        )
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// `stek up` serves `ticket-key/<start of the slot after next>` over memcached, on TCP and on
/// the unix socket, from the moment the generator published it, before the boundary after
/// which Cloudflare's client asks for it (at that boundary + 0-100 ms, caching a miss); a fetch
/// after the boundary gets the same bytes. Meanwhile the nginx files hold the window only: the
/// key arrives in them at the boundary, as the next key. P = 4 s, so generators publish 0.5 s
/// ahead (P/8); three boundaries are watched.
#[test]
fn the_slot_after_next_is_served_before_its_predecessor_begins() {
    use std::os::unix::net::UnixStream;
    use util::{memcached_get, nginx_conf_keys, unix_now, wait_for, wait_port};

    const P: u64 = 4;
    let dir = util::shm_dir();
    let port = util::free_port();
    let sock = dir.path().join("mc.sock");
    let _stek = util::stek_up(
        dir.path(),
        &[
            "--period",
            "4s",
            "--lifetime",
            "8s",
            "--sinks",
            "nginx",
            "--memcached",
            &format!("127.0.0.1:{port}"),
            "--memcached",
            sock.to_str().unwrap(),
        ],
    );
    wait_port(port);
    let conf = util::wait_nginx_conf(dir.path());
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut unix = wait_for("the unix socket", PATIENCE, || {
        UnixStream::connect(&sock).ok()
    });
    let mut leads = Vec::new();
    while leads.len() < 3 {
        // The next boundary at least a second away, so that stek ran through the publication.
        let boundary =
            Duration::from_secs(((unix_now() + Duration::from_secs(1)).as_secs() / P + 1) * P);
        let after_next = boundary.as_secs() + P;
        let key = format!("ticket-key/{after_next}");
        let early = loop {
            let asked = unix_now();
            assert!(
                asked < boundary,
                "{key} not served before the boundary at {boundary:?}"
            );
            if let Some(v) = memcached_get(&mut tcp, &key) {
                assert!(unix_now() < boundary, "the answer came after the boundary");
                leads.push(boundary - asked);
                break v;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(early.len(), 48);
        // assert!, not assert_eq!: a failure must not print key bytes.
        let same = |got: Option<Vec<u8>>| got.as_deref() == Some(&early[..]);
        assert!(same(memcached_get(&mut unix, &key)), "{key}: unix socket");
        // Still before the boundary: the files hold the window, not the key ahead.
        let files = nginx_conf_keys(&conf);
        assert!(unix_now() < boundary, "checked the files too late");
        assert!(
            files
                .iter()
                .all(|(p, k)| k[..16] != early[..16] && !p.ends_with(format!("{after_next}.key"))),
            "the key of the slot after next is in the nginx files before its time"
        );
        std::thread::sleep((boundary + Duration::from_millis(500)).saturating_sub(unix_now()));
        assert!(
            same(memcached_get(&mut tcp, &key)),
            "{key} after the boundary, TCP"
        );
        assert!(
            same(memcached_get(&mut unix, &key)),
            "{key} after the boundary, unix"
        );
        // Now it is the next key: the second line of nginx's include file.
        let files = nginx_conf_keys(&conf);
        assert!(
            files[1].0.ends_with(format!("{after_next}.key")),
            "{files:?}"
        );
        assert_eq!(files[1].1[..16], early[..16]);
    }
    eprintln!("ticket-key/<slot after next> first served {leads:?} before the boundary");
}
