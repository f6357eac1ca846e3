//! `stek up` feeding two real nghttpx (Debian's `nghttp2-proxy`) over the memcached binary
//! protocol: `--tls-ticket-key-memcached=127.0.0.1,PORT`, polled every second. P = 4 s,
//! L = 4 s (R = 1: three keys per window: previous, current, next).
//!
//! Each nghttpx runs with `--conf=/dev/null` (ignoring Debian's /etc/nghttpx/nghttpx.conf), a
//! TLS frontend on a free loopback port and a backend port nobody listens on: the handshakes
//! and tickets are all the tests need (requests get a 502).

mod util;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use util::*;

const P: u64 = 4;
/// How far into a slot the tests act: stek rotates within milliseconds of the boundary and
/// nghttpx fetches the new list within its 1 s interval.
const SETTLE: Duration = Duration::from_millis(1500);
/// The binary memcached key nghttpx reads.
const NGHTTPX_KEY: &[u8] = b"nghttpx:tls-ticket-key";

/// nghttpx lives in /usr/sbin, which a test's PATH may lack.
fn nghttpx_bin() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nghttpx"))
        .find(|p| p.is_file());
    found.expect("nghttpx is not installed: run ./scripts/test (it installs nghttp2-proxy)")
}

/// A real nghttpx on a loopback port, fetching its ticket keys from stek.
struct Nghttpx {
    port: u16,
    errorlog: PathBuf,
    proc: Proc,
}

impl Nghttpx {
    fn start(dir: &Path, name: &str, cert: &Cert, memcached: u16, cipher: &str) -> Nghttpx {
        let port = free_port();
        let backend = free_port();
        let errorlog = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(nghttpx_bin());
        cmd.arg("--conf=/dev/null")
            .arg(format!("--frontend=127.0.0.1,{port}"))
            .arg(format!("--backend=127.0.0.1,{backend}"))
            .arg("--workers=1")
            .arg("--no-ocsp")
            .arg(format!("--tls-ticket-key-memcached=127.0.0.1,{memcached}"))
            .arg("--tls-ticket-key-memcached-interval=1s")
            .arg(format!("--tls-ticket-key-cipher={cipher}"))
            .arg(format!("--errorlog-file={}", errorlog.display()))
            .arg(&cert.key)
            .arg(&cert.cert);
        let proc = Proc::spawn("nghttpx", &mut cmd, dir.join(format!("{name}.out")));
        wait_port(port);
        Nghttpx {
            port,
            errorlog,
            proc,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.errorlog).unwrap_or_default()
    }

    /// Waits until nghttpx says it took a ticket key list from memcached.
    fn wait_keys(&self) {
        wait_for(
            "nghttpx to fetch its ticket keys",
            Duration::from_secs(10),
            || {
                self.log()
                    .contains("Memcached: tls ticket get success")
                    .then_some(())
            },
        );
    }
}

impl Drop for Nghttpx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- nghttpx error log ({}) ----\n{}\n---- its output ----\n{}",
                self.errorlog.display(),
                self.log(),
                self.proc.log_text()
            );
        }
    }
}

/// Sends `req` to stek's memcached port and reads until the reply ends with `until`.
fn ask(port: u16, req: &[u8], done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to stek's memcached");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) {
        let n = s.read(&mut buf).expect("stek answers within 5 s");
        assert!(n > 0, "stek closed the connection: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// stek's current slot and the name of its encrypting key, from `ticket-schedule`, checked
/// against `ticket-key/<slot start>` (the name every other sink serves for the slot).
fn stek_current(port: u16) -> (u64, String) {
    let reply = ask(port, b"get ticket-schedule\r\n", |g| {
        g.ends_with(b"END\r\n")
    });
    let text = String::from_utf8_lossy(&reply).into_owned();
    let field = |k: &str| -> String {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} in {text}"))
            .to_owned()
    };
    let slot: u64 = field("slot").parse().unwrap();
    let name = field("encrypting");
    let key = format!("ticket-key/{}", slot * P);
    let reply = ask(port, format!("get {key}\r\n").as_bytes(), |g| {
        g.ends_with(b"END\r\n")
    });
    let head = format!("VALUE {key} 0 48\r\n");
    assert!(reply.starts_with(head.as_bytes()), "{reply:?}");
    assert_eq!(hex(&reply[head.len()..head.len() + 16]), name);
    (slot, name)
}

/// The key names of nghttpx's list as a binary GET returns it (what nghttpx reads), in order.
fn nghttpx_list(port: u16, key_len: usize) -> Vec<String> {
    let mut req = vec![0x80, 0x00, 0, NGHTTPX_KEY.len() as u8, 0, 0, 0, 0];
    req.extend_from_slice(&(NGHTTPX_KEY.len() as u32).to_be_bytes());
    req.extend_from_slice(&[0; 12]);
    req.extend_from_slice(NGHTTPX_KEY);
    let reply = ask(port, &req, |g| {
        g.len() >= 24 && g.len() >= 24 + u32::from_be_bytes(g[8..12].try_into().unwrap()) as usize
    });
    assert_eq!(&reply[..2], &[0x81, 0x00]);
    assert_eq!(&reply[6..8], &[0, 0], "status");
    assert_eq!(reply[4], 4, "flags as extras");
    let value = &reply[28..];
    assert_eq!(value[..4], [0, 0, 0, 1], "version 1");
    value[4..]
        .chunks(2 + key_len)
        .map(|c| {
            assert_eq!(usize::from(u16::from_be_bytes([c[0], c[1]])), key_len);
            hex(&c[2..18])
        })
        .collect()
}

struct Setup {
    dir: tempfile::TempDir,
    stek: Proc,
    memcached: u16,
    nghttpx: Vec<Nghttpx>,
}

fn setup(stek_cipher: Option<&str>, nghttpx_cipher: &str) -> Setup {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let memcached = free_port();
    let addr = format!("127.0.0.1:{memcached}");
    let mut args = vec![
        "--period",
        "4s",
        "--lifetime",
        "4s",
        "--sinks",
        "nginx",
        "--memcached",
        &addr,
    ];
    if let Some(c) = stek_cipher {
        args.extend(["--nghttpx-cipher", c]);
    }
    let stek = stek_up(dir.path(), &args);
    wait_port(memcached);
    let nghttpx = ["a", "b"]
        .iter()
        .map(|n| Nghttpx::start(dir.path(), n, &cert, memcached, nghttpx_cipher))
        .collect();
    Setup {
        dir,
        stek,
        memcached,
        nghttpx,
    }
}

impl Setup {
    /// Waits until every nghttpx encrypts with stek's current key; returns its name.
    fn wait_current(&self, slot: u64) -> String {
        let sess = self.dir.path().join("probe.sess");
        let (now, want) = stek_current(self.memcached);
        assert_eq!(now, slot, "stek's current slot");
        for n in &self.nghttpx {
            wait_for(
                "nghttpx to encrypt with stek's current key",
                Duration::from_secs(3),
                || (fresh_ticket(n.port, Tls::V12, &sess) == want).then_some(()),
            );
        }
        want
    }
}

/// Two nghttpx fed by one stek resume each other's TLS 1.2 and 1.3 tickets in the same slot and
/// after a rotation, every ticket carries stek's key name for the slot, and tickets are refused
/// once their key left the window (and certainly after L + 2P).
fn resume_across_instances(cipher: &str, key_len: usize) {
    let s = setup(Some(cipher), cipher);
    for n in &s.nghttpx {
        n.wait_keys();
    }
    let (a, b) = (s.nghttpx[0].port, s.nghttpx[1].port);
    let d = s.dir.path();
    // Tickets made now, tried on the other instance at once, after one rotation and after their
    // key left the window: all made in slot e, under its key, however slow the machine.
    let (t12, t13) = (d.join("t12.sess"), d.join("t13.sess"));
    let ticket = |port: u16, tls: Tls| d.join(format!("{port}-{tls:?}.sess"));
    let (e, (current, list, names, minted)) = within_one_slot(P, SETTLE, |e| {
        let current = s.wait_current(e);
        let list = nghttpx_list(s.memcached, key_len);
        let mut names = Vec::new();
        for tls in [Tls::V12, Tls::V13] {
            for port in [a, b] {
                names.push((port, tls, fresh_ticket(port, tls, &ticket(port, tls))));
            }
        }
        let minted = unix_now();
        fresh_ticket(a, Tls::V12, &t12);
        fresh_ticket(b, Tls::V13, &t13);
        (current, list, names, minted)
    });
    // What nghttpx reads: the current key first, then the next and the previous one.
    assert_eq!(list.len(), 3, "R + 2 = 3 keys for P = L = 4 s: {list:?}");
    assert_eq!(list[0], current);
    for (port, tls, name) in &names {
        assert_eq!(name, &current, "{tls:?}: the name of {port}'s ticket");
    }
    for tls in [Tls::V12, Tls::V13] {
        assert!(
            handshake(b, tls, Some(&ticket(a, tls)), None),
            "{tls:?}: a's ticket on b"
        );
        assert!(
            handshake(a, tls, Some(&ticket(b, tls)), None),
            "{tls:?}: b's ticket on a"
        );
    }

    sleep_until_slot(P, e + 1, SETTLE);
    let next = s.wait_current(e + 1);
    assert_ne!(next, current, "a new key encrypts after the rotation");
    assert_eq!(list[1], next, "the next key was already in nghttpx's list");
    assert!(
        handshake(b, Tls::V12, Some(&t12), None),
        "a's TLS 1.2 ticket on b after a rotation"
    );
    assert!(
        handshake(a, Tls::V13, Some(&t13), None),
        "b's TLS 1.3 ticket on a after a rotation"
    );
    assert!(handshake(a, Tls::V12, Some(&t12), None));
    assert!(handshake(b, Tls::V13, Some(&t13), None));

    // R + 1 = 2 rotations later the key left the window: nghttpx dropped it within its interval.
    sleep_until_slot(P, e + 2, SETTLE);
    assert!(!nghttpx_list(s.memcached, key_len).contains(&current));
    for port in [a, b] {
        assert!(
            !handshake(port, Tls::V12, Some(&t12), None),
            "TLS 1.2 ticket after its key left the window"
        );
        assert!(
            !handshake(port, Tls::V13, Some(&t13), None),
            "TLS 1.3 ticket after its key left the window"
        );
    }
    // And once older than L + 2P = 12 s.
    std::thread::sleep((minted + Duration::from_secs(12)).saturating_sub(unix_now()));
    for port in [a, b] {
        assert!(!handshake(port, Tls::V12, Some(&t12), None));
        assert!(!handshake(port, Tls::V13, Some(&t13), None));
    }
    assert!(s.stek.log_text().contains("rotated to slot"));
}

#[test]
fn two_nghttpx_share_stek_keys_aes_128_cbc() {
    resume_across_instances("aes-128-cbc", 48);
}

#[test]
fn two_nghttpx_share_stek_keys_aes_256_cbc() {
    resume_across_instances("aes-256-cbc", 80);
}

#[test]
fn a_cipher_mismatch_is_refused_by_nghttpx_as_its_source_says() {
    // stek serves its default (aes-128-cbc, 48-byte keys); nghttpx wants 80-byte keys and
    // rejects the whole list (`memcached_get_ticket_key_cb`).
    let s = setup(None, "aes-256-cbc");
    let n = &s.nghttpx[0];
    wait_for(
        "nghttpx to reject the 48-byte keys",
        Duration::from_secs(10),
        || {
            n.log()
                .contains("Memcached: wrong tls ticket key size: want 80, got 48")
                .then_some(())
        },
    );
    assert!(!n.log().contains("Memcached: tls ticket get success"));
    assert_eq!(nghttpx_list(s.memcached, 48).len(), 3);
}
