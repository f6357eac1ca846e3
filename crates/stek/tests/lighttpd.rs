//! `stek up --sinks lighttpd` feeding two real lighttpd 1.4.69 on loopback (`ssl.stek-file`).
//!
//! lighttpd looks at its key file only when its clock's second is a multiple of 64
//! (`src/mod_openssl.c`), so stek refuses periods of 64 s or less, and seeing a few rotations
//! in real time would take many minutes. Here time runs 20 times faster for stek and both
//! lighttpd: they run under libfaketime (`FAKETIME="+0 x20"`) on **one** shared fake clock (a
//! keeper process creates it, every other process joins it through `FAKETIME_SHARED` with
//! `FAKETIME_DONT_RESET=1`), so they agree on the time as hosts with synchronised clocks do.
//! Every decision under test is taken by these processes on their own clocks: stek's rotation
//! and the time it writes the next key, lighttpd's 64-second checks, activation and expiry
//! (libfaketime also shortens their sleeps and waits 20 times). Only durations are compressed,
//! never the order of events, and the TLS clients (openssl, on the real clock) see ordinary
//! servers. The fake period is 200 s (10 s of real time), the lifetime too. A third lighttpd
//! runs 60 s ahead of the shared clock, as a host whose clock is ahead.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use util::*;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const SPEED: f64 = 20.0;
/// The fake period and lifetime, in seconds.
const P: u64 = 200;
/// How far the clock of the third lighttpd runs ahead, in fake seconds: less than the 64 s
/// between its checks plus the slack of each slot, so that it loads every file stek writes on
/// the shared clock exactly once.
const AHEAD: u64 = 60;

/// One fake clock, shared by every process started through [`FakeClock::command`].
struct FakeClock {
    keeper: Option<Proc>,
    /// libfaketime's names for the shared clock (`/faketime_sem_N /faketime_shm_N`).
    shared: String,
}

impl FakeClock {
    fn start(dir: &Path) -> FakeClock {
        assert!(
            Path::new(LIBFAKETIME).is_file(),
            "libfaketime is not installed: run ./scripts/test (it installs libfaketime)"
        );
        // The keeper prints the names libfaketime gave the shared clock, then sleeps (its
        // sleep is fake too: 100000 fake seconds are more than an hour).
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo \"$FAKETIME_SHARED\"; exec sleep 100000"])
            .env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME", format!("+0 x{SPEED}"))
            .env("FAKETIME_DONT_RESET", "1");
        let keeper = Proc::spawn("faketime keeper", &mut cmd, dir.join("keeper.log"));
        let shared = wait_for("libfaketime's shared clock", Duration::from_secs(5), || {
            let log = keeper.log_text();
            let line = log.lines().next()?.trim().to_owned();
            line.contains("/faketime_shm_").then_some(line)
        });
        FakeClock {
            keeper: Some(keeper),
            shared,
        }
    }

    /// `program` on the shared fake clock.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.command_ahead(program, 0)
    }

    /// `program` on the shared fake clock shifted `ahead` fake seconds forward: a host whose
    /// clock runs ahead of the others'.
    fn command_ahead(&self, program: impl AsRef<std::ffi::OsStr>, ahead: u64) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME", format!("+{ahead} x{SPEED}"))
            .env("FAKETIME_DONT_RESET", "1")
            .env("FAKETIME_SHARED", &self.shared);
        cmd
    }

    /// The fake time, read as the processes under test read it.
    fn now(&self) -> f64 {
        let out = self
            .command("date")
            .arg("+%s.%N")
            .output()
            .expect("run date on the fake clock");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("date +%s.%N")
    }

    /// Sleeps until the fake clock reads `t`.
    fn sleep_until(&self, t: f64) {
        loop {
            let left = t - self.now();
            if left <= 0.0 {
                return;
            }
            std::thread::sleep(Duration::from_secs_f64((left / SPEED).max(0.01)));
        }
    }
}

impl Drop for FakeClock {
    fn drop(&mut self) {
        drop(self.keeper.take());
        // A killed keeper leaves libfaketime's shared memory behind (its README: clean
        // /dev/shm by hand), and a later process with the same pid would fail on it.
        for name in self.shared.split_whitespace() {
            let file = match name.strip_prefix("/faketime_sem_") {
                Some(n) => format!("/dev/shm/sem.faketime_sem_{n}"),
                None => format!("/dev/shm{name}"),
            };
            let _ = fs::remove_file(file);
        }
    }
}

/// A real lighttpd on the fake clock, reading `stek_file`.
struct Lighttpd {
    port: u16,
    _proc: Proc,
}

impl Lighttpd {
    fn start(clock: &FakeClock, root: &Path, cert: &Cert, stek_file: &Path) -> Lighttpd {
        Self::start_ahead(clock, root, cert, stek_file, 0)
    }

    /// A lighttpd whose clock runs `ahead` fake seconds ahead of the shared clock.
    fn start_ahead(
        clock: &FakeClock,
        root: &Path,
        cert: &Cert,
        stek_file: &Path,
        ahead: u64,
    ) -> Lighttpd {
        require("lighttpd");
        fs::create_dir_all(root.join("www")).expect("lighttpd root");
        let port = free_port();
        let conf = root.join("lighttpd.conf");
        let text = format!(
            "server.modules = (\"mod_openssl\")\nserver.document-root = \"{r}/www\"\n\
             server.bind = \"127.0.0.1\"\nserver.port = {port}\nssl.engine = \"enable\"\n\
             ssl.pemfile = \"{c}\"\nssl.privkey = \"{k}\"\nssl.stek-file = \"{f}\"\n",
            r = root.display(),
            c = cert.cert.display(),
            k = cert.key.display(),
            f = stek_file.display()
        );
        fs::write(&conf, text).expect("lighttpd.conf");
        let mut cmd = clock.command_ahead("lighttpd", ahead);
        cmd.arg("-D").arg("-f").arg(&conf);
        let proc = Proc::spawn("lighttpd", &mut cmd, root.join("lighttpd.log"));
        wait_port(port);
        Lighttpd { port, _proc: proc }
    }
}

/// The key name stek's status gives `slot`.
fn name_of(dir: &Path, slot: u64) -> String {
    wait_for(
        &format!("stek's status for slot {slot}"),
        Duration::from_secs(5),
        || {
            let text = fs::read_to_string(dir.join("keys/status.json")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v["keys"]
                .as_array()?
                .iter()
                .find(|k| k["slot"].as_u64() == Some(slot))
                .and_then(|k| k["name"].as_str())
                .map(str::to_owned)
        },
    )
}

#[test]
fn two_lighttpd_resume_each_others_tickets_across_a_rotation_until_the_key_expires() {
    let dir = shm_dir();
    let d = dir.path();
    let cert = make_cert(d);
    let clock = FakeClock::start(d);
    let mut cmd = clock.command(env!("CARGO_BIN_EXE_stek"));
    cmd.arg("up")
        .arg("--dir")
        .arg(d.join("keys"))
        .args(["--period", "200s", "--lifetime", "200s", "--no-memcached"])
        .args(["--sinks", "lighttpd"])
        .env("STEK_LOG", "debug");
    let stek = Proc::spawn("stek up", &mut cmd, d.join("stek.log"));
    let file: PathBuf = d.join("keys/lighttpd/stek.key");
    wait_for("stek's lighttpd key file", Duration::from_secs(20), || {
        file.exists().then_some(())
    });
    assert_eq!(fs::read(&file).unwrap().len(), 92);
    let a = Lighttpd::start(&clock, &d.join("a"), &cert, &file);
    let b = Lighttpd::start(&clock, &d.join("b"), &cert, &file);
    // A third lighttpd whose clock runs 60 s ahead: it activates each next key 60 s early.
    // (It reads the file stek writes on the shared clock, which a real host's own stek would
    // not: with P = 200 s it still loads each file once, its checks falling at least 64 s after
    // its previous load.)
    let ahead = Lighttpd::start_ahead(&clock, &d.join("ahead"), &cert, &file, AHEAD);

    // 20 fake seconds into the slot after next: the next key of that slot is written after
    // both lighttpd started (one written in the very second a lighttpd started would carry the
    // time of its first load and not be loaded again).
    let e = (clock.now() as u64) / P + 2;
    clock.sleep_until((e * P + 20) as f64);
    let name = name_of(d, e);
    let probe = d.join("probe.sess");
    for h in [&a, &b] {
        for tls in [Tls::V12, Tls::V13] {
            assert_eq!(
                fresh_ticket(h.port, tls, &probe),
                name,
                "{tls:?}: slot {e}'s key"
            );
        }
    }
    let minted = clock.now();
    let mut kept = Vec::new();
    for tls in [Tls::V12, Tls::V13] {
        let (ta, tb) = (d.join(format!("a{tls:?}")), d.join(format!("b{tls:?}")));
        assert_eq!(fresh_ticket(a.port, tls, &ta), name);
        assert_eq!(fresh_ticket(b.port, tls, &tb), name);
        assert!(
            handshake(b.port, tls, Some(&ta), None),
            "{tls:?}: a's ticket on b"
        );
        assert!(
            handshake(a.port, tls, Some(&tb), None),
            "{tls:?}: b's ticket on a"
        );
        kept.push((tls, ta, tb));
    }

    // 55 s before the boundary (5 s past it for the host ahead): the host ahead encrypts with
    // the next key, which the hosts on time hold (stek wrote it 65 to 128 s before the
    // boundary) and decrypt, though it is not active for them yet. lighttpd looks at the file
    // only in a second of its clock that is a multiple of 64, and its loop, waking about once a
    // second (50 ms of real time here), may sleep through that second under load; it then loads
    // the file at its next check, which may still come before the boundary. So the hosts on time
    // are asked until 12 s before the boundary (time left for the checks that follow).
    let next = name_of(d, e + 1);
    let boundary = ((e + 1) * P) as f64;
    clock.sleep_until(boundary - 55.0);
    let ahead_tickets = [Tls::V12, Tls::V13].map(|tls| {
        let t = d.join(format!("ahead{tls:?}"));
        assert_eq!(
            fresh_ticket(ahead.port, tls, &t),
            next,
            "{tls:?}: the host ahead"
        );
        (tls, t)
    });
    for h in [&a, &b] {
        let (tls, t) = &ahead_tickets[0];
        let mut tries = 1;
        while !handshake(h.port, *tls, Some(t), None) {
            assert!(
                clock.now() < boundary - 12.0,
                "lighttpd on port {} did not load the next key before its slot",
                h.port
            );
            std::thread::sleep(Duration::from_millis(100));
            tries += 1;
        }
        if tries > 1 {
            eprintln!(
                "lighttpd on port {} took the next key at a later check ({tries} tries)",
                h.port
            );
        }
    }
    for (tls, t) in &ahead_tickets {
        let tls = *tls;
        assert!(
            handshake(a.port, tls, Some(t), None),
            "{tls:?}: the next key's ticket on a"
        );
        assert!(
            handshake(b.port, tls, Some(t), None),
            "{tls:?}: the next key's ticket on b"
        );
        assert_eq!(
            fresh_ticket(a.port, tls, &probe),
            name,
            "{tls:?}: a is still on slot {e}"
        );
    }
    assert!(
        clock.now() < boundary,
        "too slow: the boundary passed before the check was done"
    );

    // The next slot: lighttpd loaded the next key before the boundary and activated it at the
    // boundary; the last slot's tickets still resume on both.
    clock.sleep_until(((e + 1) * P + 20) as f64);
    assert_ne!(next, name);
    for h in [&a, &b] {
        for tls in [Tls::V12, Tls::V13] {
            assert_eq!(
                fresh_ticket(h.port, tls, &probe),
                next,
                "{tls:?} after the rotation"
            );
        }
    }
    for (tls, ta, tb) in &kept {
        assert!(
            handshake(b.port, *tls, Some(ta), None),
            "{tls:?}: a's ticket on b after a rotation"
        );
        assert!(
            handshake(a.port, *tls, Some(tb), None),
            "{tls:?}: b's ticket on a after a rotation"
        );
    }

    // L + 2P after they were made, the tickets' key expired in both lighttpd (its expiry is the
    // end of its window in stek's schedule) and was erased by stek.
    clock.sleep_until(minted + (3 * P) as f64);
    for (tls, ta, tb) in &kept {
        for (h, t) in [(&a, ta), (&b, ta), (&a, tb), (&b, tb)] {
            assert!(
                !handshake(h.port, *tls, Some(t), None),
                "{tls:?}: a ticket older than L + 2P resumed on port {}",
                h.port
            );
        }
    }
    let log = stek.log_text();
    assert!(
        log.contains("lighttpd/stek.key"),
        "stek logs the file it writes"
    );
    assert!(
        !log.contains("lighttpd holds 3 keys"),
        "with L = P lighttpd honours the lifetime: no warning"
    );
}

#[test]
fn stek_refuses_periods_lighttpd_cannot_follow() {
    let dir = shm_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_stek"))
        .arg("up")
        .arg("--dir")
        .arg(dir.path().join("keys"))
        .args(["--period", "60s", "--lifetime", "60s"])
        .args(["--sinks", "lighttpd", "--no-memcached"])
        .output()
        .expect("run stek up");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--sinks lighttpd needs a period of at least 1m5s (got --period 1m)"),
        "{err}"
    );
    assert!(
        !dir.path().join("keys/lighttpd").exists(),
        "nothing written"
    );
}
