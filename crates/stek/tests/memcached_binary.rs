//! The memcached binary protocol against a real client (Debian's `memccat --binary`) and a
//! raw-socket one: every opcode gets an answer or an error status and never a hang, quiet gets
//! pipeline until a NOOP, oversize bodies are refused unread, half-sent headers are timed out,
//! and the unix socket serves the same. The server runs in-process on 127.0.0.1:0 (and a unix
//! socket in a temporary directory).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stek::memcached::{self, KeyTable, Limits, Listener, ServeOptions, Stats, NGHTTPX_KEY};
use stek_core::{Format, LocalKeys, Ring, Schedule, Slot, SlotKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{oneshot, watch};

mod util;

use util::read_to_close;

/// Every wait is bounded: a hung server fails the test instead of hanging CI.
const PATIENCE: Duration = Duration::from_secs(20);

/// A ring with P = 1 h, L = 18 h at a fixed time, every slot shared.
fn ring() -> Ring {
    let schedule = Schedule::default();
    let now = Duration::from_secs(1_800_000_000);
    let shared: BTreeMap<Slot, SlotKey> = schedule
        .window_at(now)
        .slots()
        .map(|s| (s, SlotKey::generate(s).unwrap()))
        .collect();
    Ring::build(&schedule, now, &shared, &mut LocalKeys::new(), 1).unwrap()
}

struct Server {
    listener_addr: Option<std::net::SocketAddr>,
    stats: Arc<Stats>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _tx: watch::Sender<Arc<KeyTable>>,
}

impl Server {
    /// Serves `ring` on `listener`. Timeouts are far beyond PATIENCE unless `limits` says
    /// otherwise: a reply or a close can only come from the protocol handling.
    async fn start_on(listener: Listener, ring: &Ring, limits: Limits) -> Server {
        let listener_addr = listener.tcp_addr();
        let table = Arc::new(KeyTable::from_ring(ring));
        let (tx, rx) = watch::channel(table);
        let options = ServeOptions::new(limits);
        let stats = options.stats.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(memcached::serve_with(listener, rx, options, async move {
            let _ = stopped.await;
        }));
        Server {
            listener_addr,
            stats,
            stop,
            task,
            _tx: tx,
        }
    }

    async fn start(ring: &Ring, limits: Limits) -> Server {
        let listener = memcached::bind("127.0.0.1:0", false).await.unwrap();
        Server::start_on(listener, ring, limits).await
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.listener_addr.unwrap())
            .await
            .unwrap()
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

fn patient() -> Limits {
    Limits {
        request_timeout: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(600),
        ..Limits::default()
    }
}

/// A binary request (memcached's `protocol_binary_request_header`, then extras, key, value).
fn request(opcode: u8, opaque: u32, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut r = vec![0x80, opcode];
    r.extend_from_slice(&(key.len() as u16).to_be_bytes());
    r.push(extras.len() as u8);
    r.extend_from_slice(&[0, 0, 0]);
    r.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    r.extend_from_slice(&opaque.to_be_bytes());
    r.extend_from_slice(&[0; 8]);
    r.extend_from_slice(extras);
    r.extend_from_slice(key);
    r.extend_from_slice(value);
    r
}

/// One response as read from the wire.
#[derive(Debug)]
struct Response {
    opcode: u8,
    status: u16,
    opaque: u32,
    cas: u64,
    extras: Vec<u8>,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Reads one response, or `None` if the server closed first. Panics after PATIENCE (a hang).
async fn response<S: AsyncRead + Unpin>(s: &mut S) -> Option<Response> {
    tokio::time::timeout(PATIENCE, async {
        let mut h = [0u8; 24];
        s.read_exact(&mut h).await.ok()?;
        assert_eq!(h[0], 0x81, "response magic: {h:?}");
        let key_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let extras_len = usize::from(h[4]);
        let body_len = u32::from_be_bytes(h[8..12].try_into().unwrap()) as usize;
        assert!(body_len < 1 << 20, "{body_len}");
        let mut body = vec![0u8; body_len];
        s.read_exact(&mut body).await.ok()?;
        let value = body.split_off(extras_len + key_len);
        let key = body.split_off(extras_len);
        Some(Response {
            opcode: h[1],
            status: u16::from_be_bytes([h[6], h[7]]),
            opaque: u32::from_be_bytes(h[12..16].try_into().unwrap()),
            cas: u64::from_be_bytes(h[16..24].try_into().unwrap()),
            extras: body,
            key,
            value,
        })
    })
    .await
    .expect("a response or a close, never a hang")
}

/// What memcached's `protocol_binary.h` names each opcode, as far as this test cares.
fn expected_status(op: u8) -> u16 {
    match op {
        // Writes (and their quiet forms), VERBOSITY, TOUCH/GAT family, STAT: not supported.
        0x01..=0x06 | 0x08 | 0x0e..=0x16 | 0x18..=0x1e | 0x23 | 0x24 => 0x0083,
        // Everything else stek does not serve: SASL (as memcached without SASL), range
        // commands, unassigned.
        _ => 0x0081,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_opcode_gets_an_answer_or_an_error_never_a_hang() {
    let server = Server::start(&ring(), patient()).await;
    for op in 0..=u8::MAX {
        let mut s = server.connect().await;
        // The opcode with a 15-byte key, then a NOOP: a get finds the key, everything else is
        // answered with a status and its body dropped, so the NOOP is answered too (unless the
        // request closed the connection).
        let mut req = request(op, 0x0102_0304, &[], b"ticket-schedule", &[]);
        req.extend(request(0x0a, 77, &[], &[], &[]));
        s.write_all(&req).await.unwrap();
        let r = response(&mut s)
            .await
            .unwrap_or_else(|| panic!("{op:#x}: closed"));
        assert_eq!(r.opcode, op);
        assert_eq!(r.opaque, 0x0102_0304, "{op:#x}: the opaque is echoed");
        match op {
            0x00 | 0x09 | 0x0c | 0x0d => {
                assert_eq!(r.status, 0, "{op:#x}");
                assert_eq!(r.extras, [0; 4], "{op:#x}: the flags");
                assert!(r.value.starts_with(b"period=3600 lifetime=64800 "));
                let with_key = op == 0x0c || op == 0x0d;
                assert_eq!(r.key.is_empty(), !with_key, "{op:#x}");
                assert_ne!(r.cas, 0);
            }
            // NOOP, VERSION, QUIT, QUITQ take no body: memcached's protocol error, a close.
            0x0a | 0x0b | 0x07 | 0x17 => {
                assert_eq!(r.status, 0x0004, "{op:#x}");
                assert!(read_to_close(&mut s, PATIENCE).await.is_empty());
                continue;
            }
            _ => {
                assert_eq!(r.status, expected_status(op), "{op:#x}: {r:?}");
                assert!(!r.value.is_empty(), "{op:#x}: errors carry a text");
            }
        }
        let noop = response(&mut s).await.expect("the NOOP after it");
        assert_eq!((noop.opcode, noop.status, noop.opaque), (0x0a, 0, 77));
    }
    // The bare commands, bare.
    let mut s = server.connect().await;
    s.write_all(&request(0x0b, 1, &[], &[], &[])).await.unwrap();
    let v = response(&mut s).await.unwrap();
    assert_eq!(v.status, 0);
    assert!(v.value.starts_with(b"1.6.0-stek-"), "{v:?}");
    s.write_all(&request(0x07, 2, &[], &[], &[])).await.unwrap();
    let q = response(&mut s).await.unwrap();
    assert_eq!((q.opcode, q.status, q.opaque), (0x07, 0, 2));
    assert!(read_to_close(&mut s, PATIENCE).await.is_empty());
    let mut s = server.connect().await;
    s.write_all(&request(0x17, 3, &[], &[], &[])).await.unwrap();
    assert!(read_to_close(&mut s, PATIENCE).await.is_empty(), "QUITQ");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_gets_pipeline_until_a_noop() {
    let ring = ring();
    let server = Server::start(&ring, patient()).await;
    let current = format!(
        "ticket-key/{}",
        ring.schedule().start(ring.current()).as_secs()
    );
    let want = Format::Memcached48.encode(&ring.encrypting_entry().key);
    let mut s = server.connect().await;
    // Several rounds on one connection: it stays open between them.
    for round in 0..3u32 {
        let base = round * 10;
        let mut req = Vec::new();
        req.extend(request(0x09, base + 1, &[], b"no-such-key", &[]));
        req.extend(request(0x0d, base + 2, &[], current.as_bytes(), &[]));
        req.extend(request(0x0d, base + 3, &[], b"ticket-key/1", &[]));
        req.extend(request(0x09, base + 4, &[], NGHTTPX_KEY.as_bytes(), &[]));
        req.extend(request(0x0a, base + 5, &[], &[], &[]));
        s.write_all(&req).await.unwrap();
        let hit = response(&mut s).await.unwrap();
        assert_eq!((hit.opcode, hit.status, hit.opaque), (0x0d, 0, base + 2));
        assert_eq!(hit.key, current.as_bytes());
        assert_eq!(hit.value, &want[..]);
        let ng = response(&mut s).await.unwrap();
        assert_eq!((ng.opcode, ng.status, ng.opaque), (0x09, 0, base + 4));
        assert!(ng.key.is_empty());
        assert_eq!(ng.value[..4], [0, 0, 0, 1], "nghttpx's value version");
        // The first key of nghttpx's list is the encrypting key, in the 48-byte layout.
        assert_eq!(ng.value[4..6], [0, 48]);
        assert_eq!(ng.value[6..54], want[..]);
        let noop = response(&mut s).await.unwrap();
        assert_eq!((noop.opcode, noop.status, noop.opaque), (0x0a, 0, base + 5));
    }
    // A non-quiet miss is answered: GET with "Not found", GETK with its key.
    s.write_all(
        &[
            request(0x00, 1, &[], b"nope", &[]),
            request(0x0c, 2, &[], b"nope", &[]),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let miss = response(&mut s).await.unwrap();
    assert_eq!((miss.status, miss.value.as_slice()), (1, &b"Not found"[..]));
    let miss = response(&mut s).await.unwrap();
    assert_eq!((miss.status, miss.key.as_slice()), (1, &b"nope"[..]));
    let snap = server.stats.snapshot();
    assert_eq!((snap.get_hits, snap.get_misses), (6, 8));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_body_is_refused_without_being_read() {
    let server = Server::start(&ring(), patient()).await;
    let mut s = server.connect().await;
    // A SET announcing 50 MB (flags and expiry as extras, a key); only the header is sent.
    let mut req = request(0x01, 9, &[0; 8], b"ticket-key/1", &[]);
    req[8..12].copy_from_slice(&50_000_000u32.to_be_bytes());
    let started = Instant::now();
    s.write_all(&req).await.unwrap();
    let r = response(&mut s)
        .await
        .expect("an error before any body byte");
    assert_eq!((r.opcode, r.status, r.opaque), (0x01, 0x0003, 9));
    assert!(read_to_close(&mut s, PATIENCE).await.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A 1 MiB body (the cap) is dropped as it arrives, then refused; the connection goes on.
    let mut s = server.connect().await;
    let value = vec![b'x'; (1 << 20) - 8 - 12];
    let mut req = request(0x01, 10, &[0; 8], b"ticket-key/1", &value);
    req.extend(request(0x0a, 11, &[], &[], &[]));
    s.write_all(&req).await.unwrap();
    let r = response(&mut s).await.unwrap();
    assert_eq!((r.opcode, r.status, r.opaque), (0x01, 0x0083, 10));
    assert_eq!(r.value, b"read-only: stek serves ticket keys only");
    let noop = response(&mut s).await.unwrap();
    assert_eq!((noop.opcode, noop.opaque), (0x0a, 11));
    let snap = server.stats.snapshot();
    assert_eq!((snap.refused_writes, snap.client_errors), (1, 1));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_header_is_closed_at_the_request_timeout() {
    let timeout = Duration::from_secs(1);
    let server = Server::start(
        &ring(),
        Limits {
            request_timeout: timeout,
            idle_timeout: Duration::from_secs(600),
            ..Limits::default()
        },
    )
    .await;
    let mut s = server.connect().await;
    let req = request(0x00, 1, &[], NGHTTPX_KEY.as_bytes(), &[]);
    let started = Instant::now();
    s.write_all(&req[..10]).await.unwrap();
    let got = read_to_close(&mut s, PATIENCE).await;
    let lived = started.elapsed();
    assert!(
        got.is_empty(),
        "nothing is answered to half a header: {got:?}"
    );
    assert!(lived >= timeout, "closed after {lived:?}");
    assert!(lived < timeout + Duration::from_secs(5), "lived {lived:?}");
    // A header whose key never comes: the same.
    let mut s = server.connect().await;
    s.write_all(&req[..30]).await.unwrap();
    assert!(read_to_close(&mut s, PATIENCE).await.is_empty());
    assert_eq!(server.stats.snapshot().request_timeouts, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_serves_the_binary_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memcached.sock");
    let listener = memcached::bind(path.to_str().unwrap(), false)
        .await
        .unwrap();
    let ring = ring();
    let server = Server::start_on(listener, &ring, patient()).await;
    let mut s = UnixStream::connect(&path).await.unwrap();
    // nghttpx's request, as `MemcachedConnection::make_request` builds it.
    s.write_all(&request(0x00, 0, &[], NGHTTPX_KEY.as_bytes(), &[]))
        .await
        .unwrap();
    let r = response(&mut s).await.unwrap();
    assert_eq!(
        (r.opcode, r.status, r.extras.len(), r.key.len()),
        (0, 0, 4, 0)
    );
    let names: Vec<[u8; 16]> = nghttpx_names(&r.value, 48);
    let want: Vec<[u8; 16]> = ring.entries().iter().map(|e| e.key.name().0).collect();
    assert_eq!(names, want, "every key of the ring, nginx order");
    // The text protocol still answers on another connection of the same socket.
    let mut t = UnixStream::connect(&path).await.unwrap();
    t.write_all(b"version\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, t.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"VERSION "));
    drop((s, t));
    server.shutdown().await;
}

/// The key names in a value of nghttpx's format whose keys are `len` bytes.
fn nghttpx_names(value: &[u8], len: usize) -> Vec<[u8; 16]> {
    assert_eq!(value[..4], [0, 0, 0, 1]);
    value[4..]
        .chunks(2 + len)
        .map(|c| {
            assert_eq!(usize::from(u16::from_be_bytes([c[0], c[1]])), len);
            c[2..18].try_into().unwrap()
        })
        .collect()
}

/// Runs `memccat --binary` for `key` and returns the value it wrote, or `None` if it failed.
fn memccat_binary(addr: std::net::SocketAddr, key: &str) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("value");
    let out = Command::new("memccat")
        .arg("--binary")
        .arg(format!("--servers={addr}"))
        .arg(format!("--file={}", file.display()))
        .arg(key)
        .output()
        .expect("run memccat: run ./scripts/test (it installs libmemcached-tools)");
    out.status
        .success()
        .then(|| std::fs::read(&file).expect("memccat wrote its file"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_binary_client_reads_the_keys() {
    let ring = ring();
    let server = Server::start(&ring, patient()).await;
    let addr = server.listener_addr.unwrap();
    tokio::task::spawn_blocking(move || {
        let current = format!(
            "ticket-key/{}",
            ring.schedule().start(ring.current()).as_secs()
        );
        assert_eq!(
            memccat_binary(addr, &current).as_deref(),
            Some(&Format::Memcached48.encode(&ring.encrypting_entry().key)[..])
        );
        let schedule = memccat_binary(addr, "ticket-schedule").expect("ticket-schedule");
        assert!(schedule.starts_with(b"period=3600 lifetime=64800 "));
        let list = memccat_binary(addr, NGHTTPX_KEY).expect("nghttpx's list");
        assert_eq!(list.len(), 4 + 20 * 50);
        assert_eq!(memccat_binary(addr, "ticket-key/0"), None, "a miss fails");
    })
    .await
    .unwrap();
    assert!(server.stats.snapshot().get_hits >= 3);
    server.shutdown().await;
}
