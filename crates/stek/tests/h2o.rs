//! `stek up --sinks h2o` feeding real h2o 2.2.5 servers on loopback (`ticket-store: file`).
//!
//! h2o looks at its ticket file every 10 s (`src/ssl.c`, `ticket_file_updater`), so the period
//! is 12 s: each file is loaded within its slot. P = L = 12 s (R = 1): a key is in the file for
//! two slots and h2o drops it at most 10 s after stek did.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use util::*;

const P: u64 = 12;
/// How far into a slot the tests act: well after stek wrote the slot's file (h2o itself
/// switches to the next key at the boundary, from the file it already has).
const SETTLE: Duration = Duration::from_millis(1500);
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A real h2o in the foreground reading `ticket_file`, optionally with its clock shifted by
/// libfaketime (`FAKETIME="+5"`: a host whose clock is 5 s ahead).
struct H2o {
    port: u16,
    proc: Option<Proc>,
    faked: bool,
}

impl Drop for H2o {
    fn drop(&mut self) {
        let pid = self.proc.as_ref().map(Proc::pid);
        drop(self.proc.take());
        // libfaketime leaves the shared memory it made for the process behind when the process
        // is killed (its README: clean /dev/shm by hand); a later process with the same pid
        // would fail on it.
        if let (true, Some(pid)) = (self.faked, pid) {
            let _ = fs::remove_file(format!("/dev/shm/faketime_shm_{pid}"));
            let _ = fs::remove_file(format!("/dev/shm/sem.faketime_sem_{pid}"));
        }
    }
}

impl H2o {
    fn start(root: &Path, cert: &Cert, ticket_file: &Path, faketime: Option<&str>) -> H2o {
        require("h2o");
        fs::create_dir_all(root.join("www")).expect("h2o root");
        fs::write(root.join("www/index.html"), "ok\n").expect("index");
        let port = free_port();
        let conf = root.join("h2o.conf");
        // Started as root, h2o switches to `nobody` unless told otherwise, and nobody cannot
        // read stek's 0700 key directory (h2o reads the ticket file after dropping privileges).
        let user = if rustix::process::geteuid().is_root() {
            "user: root\n"
        } else {
            ""
        };
        let text = format!(
            "{user}pid-file: {r}/h2o.pid\nlisten:\n  host: 127.0.0.1\n  port: {port}\n  ssl:\n    \
             certificate-file: {c}\n    key-file: {k}\n\
             ssl-session-resumption:\n  mode: ticket\n  ticket-store: file\n  ticket-file: {f}\n\
             hosts:\n  default:\n    paths:\n      /:\n        file.dir: {r}/www\n",
            r = root.display(),
            c = cert.cert.display(),
            k = cert.key.display(),
            f = ticket_file.display()
        );
        fs::write(&conf, text).expect("h2o.conf");
        let mut cmd = Command::new("h2o");
        cmd.arg("-c").arg(&conf);
        if let Some(f) = faketime {
            assert!(
                Path::new(LIBFAKETIME).is_file(),
                "libfaketime is not installed: run ./scripts/test"
            );
            cmd.env("LD_PRELOAD", LIBFAKETIME).env("FAKETIME", f);
        }
        let proc = Proc::spawn("h2o", &mut cmd, root.join("h2o.log"));
        let h2o = H2o {
            port,
            proc: Some(proc),
            faked: faketime.is_some(),
        };
        wait_port(port);
        h2o
    }
}

/// The key names stek's status gives each slot, and the encrypting one.
fn status(dir: &Path) -> (Vec<(u64, String)>, String) {
    let text = fs::read_to_string(dir.join("keys/status.json")).expect("status.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("status JSON");
    let keys = v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            (
                k["slot"].as_u64().expect("slot"),
                k["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect();
    (
        keys,
        v["encrypting_name"].as_str().expect("name").to_owned(),
    )
}

/// The name stek gives `slot`, waiting for the status of that slot.
fn name_of(dir: &Path, slot: u64) -> String {
    wait_for(
        &format!("stek's status for slot {slot}"),
        Duration::from_secs(5),
        || {
            status(dir)
                .0
                .into_iter()
                .find(|(s, _)| *s == slot)
                .map(|(_, n)| n)
        },
    )
}

struct Setup {
    dir: tempfile::TempDir,
    stek: Proc,
    file: PathBuf,
    cert: Cert,
}

fn setup() -> Setup {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let stek = stek_up(
        dir.path(),
        &[
            "--period",
            "12s",
            "--lifetime",
            "12s",
            "--no-memcached",
            "--sinks",
            "h2o",
        ],
    );
    let file = dir.path().join("keys/h2o/tickets.yaml");
    wait_for("stek's h2o ticket file", Duration::from_secs(20), || {
        file.exists().then_some(())
    });
    Setup {
        dir,
        stek,
        file,
        cert,
    }
}

impl Setup {
    fn h2o(&self, name: &str, faketime: Option<&str>) -> H2o {
        H2o::start(
            &self.dir.path().join(name),
            &self.cert,
            &self.file,
            faketime,
        )
    }

    fn sess(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn two_h2o_resume_each_others_tickets_across_a_rotation_until_the_key_is_erased() {
    let s = setup();
    let (a, b) = (s.h2o("a", None), s.h2o("b", None));
    // Every ticket below is made within one slot, e; should the slot end first (a slow
    // machine), the tickets are made again in the next one.
    let probe = s.sess("probe.sess");
    let (e, (name, issued, kept, minted)) = within_one_slot(P, SETTLE, |e| {
        let name = name_of(s.dir.path(), e);
        wait_for(
            &format!("stek to encrypt with slot {e}'s key"),
            Duration::from_secs(5),
            || (status(s.dir.path()).1 == name).then_some(()),
        );
        // h2o read the file at its start; every fresh ticket carries the slot's key name.
        let mut issued = Vec::new();
        for h in [&a, &b] {
            for tls in [Tls::V12, Tls::V13] {
                issued.push((h.port, tls, fresh_ticket(h.port, tls, &probe)));
            }
        }
        let minted = unix_now();
        let mut kept = Vec::new();
        for tls in [Tls::V12, Tls::V13] {
            let (ta, tb) = (s.sess(&format!("a{tls:?}")), s.sess(&format!("b{tls:?}")));
            issued.push((a.port, tls, fresh_ticket(a.port, tls, &ta)));
            issued.push((b.port, tls, fresh_ticket(b.port, tls, &tb)));
            kept.push((tls, ta, tb));
        }
        (name, issued, kept, minted)
    });
    for (port, tls, got) in &issued {
        assert_eq!(*got, name, "port {port} {tls:?}: a ticket of slot {e}");
    }
    for (tls, ta, tb) in &kept {
        assert!(
            handshake(b.port, *tls, Some(ta), None),
            "{tls:?}: a's ticket on b"
        );
        assert!(
            handshake(a.port, *tls, Some(tb), None),
            "{tls:?}: b's ticket on a"
        );
    }

    // The next slot: h2o encrypts with the next key (from the dates of the file it already
    // had, or from the new file), and the tickets of the last slot still resume everywhere.
    sleep_until_slot(P, e + 1, SETTLE);
    let next = name_of(s.dir.path(), e + 1);
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

    // L + 2P after the tickets were made their key is gone from stek's file (at the start of
    // slot e + 2) and from both h2o (re-read within 10 s).
    std::thread::sleep((minted + Duration::from_secs(3 * P)).saturating_sub(unix_now()));
    for (tls, ta, tb) in &kept {
        for (h, t) in [(&a, ta), (&b, ta), (&a, tb), (&b, tb)] {
            assert!(
                !handshake(h.port, *tls, Some(t), None),
                "{tls:?}: a ticket older than L + 2P resumed on port {}",
                h.port
            );
        }
    }
    let text = fs::read_to_string(&s.file).unwrap();
    assert!(
        !text.contains(&name),
        "slot {e}'s key is erased from the file"
    );
    assert!(
        s.stek.log_text().contains("h2o/tickets.yaml"),
        "stek logs the file it writes"
    );
}

/// h2o decrypts with an entry whose `not_before` is still ahead (`src/ssl.c`: decryption finds
/// the entry by name whatever its dates): a host whose clock runs 5 s ahead encrypts with the
/// next key 5 s before the boundary, and a host on time resumes its tickets.
#[test]
fn an_h2o_whose_clock_is_ahead_uses_the_next_key_and_the_others_resume_it() {
    let s = setup();
    let on_time = s.h2o("on-time", None);
    let ahead = s.h2o("ahead", Some("+5"));
    // From 2.5 s before the boundary (2.5 s past it for the host ahead), within that slot:
    // should the boundary pass first (a slow machine), the step is made again a slot later.
    // The host ahead read the file of slot e (which holds the next key) within 10 s of the
    // slot's start.
    let before = Duration::from_millis(P * 1000 - 2500);
    let (e, (current, next, seen)) = within_one_slot(P, before, |e| {
        let (current, next) = (name_of(s.dir.path(), e), name_of(s.dir.path(), e + 1));
        let mut seen = Vec::new();
        for tls in [Tls::V12, Tls::V13] {
            let t = s.sess(&format!("ahead{tls:?}"));
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut from_ahead = fresh_ticket(ahead.port, tls, &t);
            while from_ahead != next && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                from_ahead = fresh_ticket(ahead.port, tls, &t);
            }
            let resumed = handshake(on_time.port, tls, Some(&t), None);
            let from_on_time = fresh_ticket(on_time.port, tls, &s.sess("probe"));
            seen.push((tls, from_ahead, resumed, from_on_time));
        }
        (current, next, seen)
    });
    for (tls, from_ahead, resumed, from_on_time) in seen {
        assert_eq!(
            from_ahead,
            next,
            "{tls:?}: the host ahead encrypts with slot {}'s key",
            e + 1
        );
        assert!(
            resumed,
            "{tls:?}: the next key's ticket on the host on time"
        );
        assert_eq!(
            from_on_time, current,
            "{tls:?}: the host on time still encrypts with the current key"
        );
    }
}
