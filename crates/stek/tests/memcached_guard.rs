//! The memcached interface against hostile local users: who may read the keys on the unix
//! socket (a group, checked by peer credentials), one uid holding thousands of connections,
//! slowloris writers and readers (binary-protocol clients: `memcached_binary.rs`).
//!
//! Clients of other uids run as `setpriv --reuid=... --regid=... --clear-groups python3`; the
//! tests run as root (as in CI), which they check.

mod util;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stek::memcached::{self, KeyTable, Limits, ServeOptions, Stats};
use stek_core::{LocalKeys, Ring, Schedule, Slot, SlotKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use util::{free_port, read_to_close, shm_dir, stek_up, wait_for};

/// Every wait is bounded: a hung server fails the test instead of hanging CI.
const PATIENCE: Duration = Duration::from_secs(20);
/// The group the tests let in: Debian's `daemon` (gid 1), whose only member is the user
/// `daemon` by its primary group; `nobody` is not in it.
const GROUP: &str = "daemon";
const PYTHON: &str = "/usr/bin/python3";

/// A unix socket memcached client: sends one request `tries` times on fresh connections and
/// prints the fastest round trip (connect to last byte, measured inside the client so that
/// process start-up does not count) and the last reply in hex.
const CLIENT: &str = r#"
import socket, sys, time
path, req, tries = sys.argv[1], sys.argv[2], int(sys.argv[3])
best, reply = None, b""
for _ in range(tries):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    t = time.monotonic()
    try:
        s.connect(path)
    except OSError as e:
        print("CONNECT", e.errno)
        sys.exit(3)
    s.sendall(req.encode() + b"\r\n")
    data = b""
    while not (data.endswith(b"END\r\n") or (data.startswith(b"SERVER_ERROR") and data.endswith(b"\r\n"))):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    ms = (time.monotonic() - t) * 1000
    best = ms if best is None else min(best, ms)
    reply = data
    s.close()
print("MS", best)
print("REPLY", reply.hex())
"#;

/// What the client saw.
#[derive(Debug)]
enum Seen {
    /// connect(2) failed with this errno.
    Connect(i32),
    /// The reply, and the fastest of the tries in milliseconds.
    Reply(Vec<u8>, f64),
}

fn require_root() {
    assert!(
        rustix_uid_is_root(),
        "these tests check other uids and groups and must run as root (as CI does)"
    );
    util::require(PYTHON);
    util::require("setpriv");
}

fn rustix_uid_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Runs the client as `user`:`group` with no supplementary groups.
fn client_as(user: &str, group: &str, sock: &Path, req: &str, tries: u32) -> Seen {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={user}"))
        .arg(format!("--regid={group}"))
        .arg("--clear-groups")
        .args([PYTHON, "-c", CLIENT])
        .arg(sock)
        .arg(req)
        .arg(tries.to_string())
        .output()
        .expect("run setpriv");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    if let Some(errno) = field("CONNECT ") {
        return Seen::Connect(errno.parse().expect("errno"));
    }
    let (Some(ms), Some(hex)) = (field("MS "), field("REPLY")) else {
        panic!(
            "client as {user}:{group} failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let reply = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    Seen::Reply(reply, ms.parse().expect("ms"))
}

/// A `get` reply as root reads it on a fresh connection.
fn get_as_root(sock: &Path, req: &str) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).expect("connect as root");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(format!("{req}\r\n").as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"END\r\n") {
        let n = s.read(&mut buf).expect("reply");
        assert_ne!(n, 0, "closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

fn metrics(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// The value of the metric line that starts with `name` (labels included).
fn metric(port: u16, name: &str) -> Option<u64> {
    metrics(port)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// `stek up` on the default socket with `--memcached-group daemon`, its scratch directory
/// open to other users (the key directory inside stays 0700), and the socket's path.
fn up_with_group(
    dir: &Path,
    metrics_port: u16,
    extra: &[&str],
) -> (util::Proc, std::path::PathBuf) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = format!("127.0.0.1:{metrics_port}");
    let mut args = vec![
        "--sinks",
        "nginx",
        "--memcached-group",
        GROUP,
        "--metrics",
        &m,
    ];
    args.extend_from_slice(extra);
    let up = stek_up(dir, &args);
    let sock = dir.join("keys-memcached/memcached.sock");
    wait_for("the memcached socket serving the ring", PATIENCE, || {
        UnixStream::connect(&sock).ok()?;
        let reply = get_as_root(&sock, "get ticket-ring/nginx-80");
        reply.starts_with(b"VALUE ").then_some(())
    });
    (up, sock)
}

#[test]
fn the_group_is_served_and_everyone_else_refused() {
    require_root();
    let dir = shm_dir();
    let port = free_port();
    let (_up, sock) = up_with_group(dir.path(), port, &[]);

    // Where things are: DIR 0700, the socket's own directory 0750 and the socket 0660, both in
    // the group.
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    let gid = |p: &Path| std::fs::symlink_metadata(p).unwrap().gid();
    let sock_dir = sock.parent().unwrap();
    assert_eq!(mode(&dir.path().join("keys")), 0o700);
    assert_eq!((mode(sock_dir), gid(sock_dir)), (0o750, 1));
    assert_eq!((mode(&sock), gid(&sock)), (0o660, 1));

    let req = "get ticket-ring/nginx-80";
    let root = get_as_root(&sock, req);
    // A member by its gid (nginx workers after `user www-data;`) reads the same ring.
    match client_as("nobody", GROUP, &sock, req, 1) {
        Seen::Reply(r, _) => assert_eq!(r, root, "the group's client reads the ring"),
        other => panic!("nobody:daemon: {other:?}"),
    }
    // Anyone else cannot even reach the socket.
    match client_as("nobody", "nogroup", &sock, req, 1) {
        Seen::Connect(errno) => assert_eq!(errno, 13, "EACCES"),
        other => panic!("nobody:nogroup was served: {other:?}"),
    }

    // An operator's mistake opens the directory and the socket to everyone: the peer's
    // credentials still decide.
    std::fs::set_permissions(sock_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    match client_as("nobody", "nogroup", &sock, req, 1) {
        Seen::Reply(r, _) => assert_eq!(r, b"SERVER_ERROR forbidden\r\n"),
        other => panic!("nobody:nogroup: {other:?}"),
    }
    // The user `daemon` belongs by its primary group in /etc/passwd, whatever its gid now.
    match client_as("daemon", "nogroup", &sock, req, 1) {
        Seen::Reply(r, _) => assert_eq!(r, root, "a member by the group database"),
        other => panic!("daemon:nogroup: {other:?}"),
    }
    wait_for("the refusal in the metrics", PATIENCE, || {
        (metric(port, "stek_memcached_refused_total{reason=\"forbidden\"}")? == 1).then_some(())
    });
    assert_eq!(
        metric(port, "stek_memcached_refused_total{reason=\"peer_limit\"}"),
        Some(0)
    );
}

#[test]
fn one_uid_holding_5000_connections_does_not_starve_another() {
    require_root();
    // The test's 5,000 client sockets, on top of the harness.
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let nofile: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        nofile >= 6000,
        "this test needs `ulimit -n` of at least 6000 (it is {nofile}): run ./scripts/test"
    );
    let dir = shm_dir();
    let port = free_port();
    let (up, sock) = up_with_group(dir.path(), port, &[]);
    wait_for("no connection open", PATIENCE, || {
        (metric(port, "stek_memcached_connections ")? == 0).then_some(())
    });

    // Root (the default cap: 4096 connections, 1024 per peer) opens 5,000 and holds them.
    let held: Vec<UnixStream> = (0..5000)
        .map(|i| UnixStream::connect(&sock).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    wait_for("every connection admitted or refused", PATIENCE, || {
        let refused = metric(port, "stek_memcached_refused_total{reason=\"peer_limit\"}")?;
        let open = metric(port, "stek_memcached_connections ")?;
        (refused == 5000 - 1024 && open == 1024).then_some(())
    });

    // Another uid of the group gets its key, quickly.
    let req = "get ticket-ring/nginx-80";
    match client_as("nobody", GROUP, &sock, req, 3) {
        Seen::Reply(r, ms) => {
            assert!(r.starts_with(b"VALUE ticket-ring/nginx-80 0 "), "{r:?}");
            assert!(ms < 100.0, "the fastest of 3 tries took {ms} ms");
        }
        other => panic!("nobody:daemon: {other:?}"),
    }
    // The flood's own admitted connections still work.
    let mut first = &held[0];
    first.write_all(b"version\r\n").unwrap();
    let mut buf = [0u8; 64];
    first.set_read_timeout(Some(PATIENCE)).unwrap();
    let n = first.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"VERSION "), "{:?}", &buf[..n]);
    drop(held);
    wait_for("the flood's connections closed", PATIENCE, || {
        (metric(port, "stek_memcached_connections ")? == 0).then_some(())
    });
    drop(up);
}

// In-process servers: the request timeout.

fn ring() -> Ring {
    let schedule = Schedule::default();
    let now = Duration::from_secs(1_800_000_000);
    let shared: std::collections::BTreeMap<Slot, SlotKey> = schedule
        .window_at(now)
        .slots()
        .map(|s| (s, SlotKey::generate(s).unwrap()))
        .collect();
    Ring::build(&schedule, now, &shared, &mut LocalKeys::new(), 1).unwrap()
}

struct Server {
    addr: std::net::SocketAddr,
    stats: Arc<Stats>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _table: watch::Sender<Arc<KeyTable>>,
}

impl Server {
    async fn start(limits: Limits) -> Server {
        let listener = memcached::bind("127.0.0.1:0", false).await.unwrap();
        let addr = listener.tcp_addr().unwrap();
        let (table, rx) = watch::channel(Arc::new(KeyTable::from_ring(&ring())));
        let options = ServeOptions::new(limits);
        let stats = options.stats.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(memcached::serve_with(listener, rx, options, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stats,
            stop,
            task,
            _table: table,
        }
    }

    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("shutdown in time")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_is_closed_at_the_request_timeout() {
    let timeout = Duration::from_secs(1);
    let server = Server::start(Limits {
        request_timeout: timeout,
        ..Limits::default()
    })
    .await;
    // A connection that sends nothing is left to the idle timeout (5 minutes).
    let mut quiet = TcpStream::connect(server.addr).await.unwrap();

    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let (mut r, mut w) = slow.split();
    let started = Instant::now();
    let trickle = async {
        // A byte every 100 ms, a line that never ends, until the server closes.
        for b in b"get ticket-key/".iter().cycle() {
            if w.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let closed = async {
        let mut buf = [0u8; 64];
        let got = tokio::time::timeout(PATIENCE, r.read(&mut buf)).await;
        let lived = started.elapsed();
        assert!(
            matches!(got, Ok(Ok(0)) | Ok(Err(_))),
            "closed without a reply: {got:?}"
        );
        lived
    };
    let lived = tokio::select! {
        lived = closed => lived,
        () = trickle => panic!("the trickle stopped before the read saw the close"),
    };
    // Closed once the request timeout passed since its first byte, and not much later (the
    // bound is loose for a loaded machine; without the timeout it would live 5 minutes).
    assert!(lived >= timeout, "closed after {lived:?}");
    assert!(lived < timeout + Duration::from_secs(5), "lived {lived:?}");
    assert_eq!(server.stats.snapshot().request_timeouts, 1);

    // The quiet connection is still served.
    quiet.write_all(b"version\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, quiet.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"VERSION "));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_closed_at_the_request_timeout() {
    let server = Server::start(Limits {
        request_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    // A small receive buffer, so that the replies fill the socket soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(server.addr).await.unwrap();
    let mut line = b"get".to_vec();
    for _ in 0..100 {
        line.extend_from_slice(b" ticket-ring/nginx-80");
    }
    line.extend_from_slice(b"\r\n");
    // 64 lines ask for 10 MB of replies; none is read.
    for _ in 0..64 {
        s.write_all(&line).await.unwrap();
    }
    let stats = server.stats.clone();
    tokio::time::timeout(PATIENCE, async {
        while stats.snapshot().request_timeouts == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stalled reader is timed out");
    // What was written before is still readable, then the connection ends.
    let got = read_to_close(&mut s, PATIENCE).await;
    assert!(got.len() < 64 * 100 * 1700, "{} bytes", got.len());
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_limits_are_refused_by_the_server() {
    let listener = memcached::bind("127.0.0.1:0", false).await.unwrap();
    let (_tx, rx) = watch::channel(Arc::new(KeyTable::from_ring(&ring())));
    let limits = Limits {
        max_connections: 0,
        ..Limits::default()
    };
    let e = memcached::serve(listener, rx, limits, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let inner = e.get_ref().expect("the LimitsError");
    assert!(inner.is::<memcached::LimitsError>(), "{inner}");
    assert!(e.to_string().contains("between 1 and"), "{e}");
}
