//! systemd integration: the shipped units pass `systemd-analyze verify` (where the tool exists),
//! and `stek up` with `Type=notify` sends READY=1 only once its key files are in place.

mod util;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use util::*;

#[test]
fn the_shipped_units_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: units not verified here");
        return;
    };
    assert!(out.status.success());
    let contrib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../contrib");
    let dir = tempfile::tempdir().unwrap();
    for unit in [
        "stek-up.service",
        "stek-agent.service",
        "stek-generator.service",
    ] {
        // The units start /usr/local/bin/stek; verify with the binary just built in its place
        // (systemd-analyze checks that ExecStart is executable).
        let text = std::fs::read_to_string(contrib.join(unit))
            .unwrap()
            .replace("/usr/local/bin/stek", env!("CARGO_BIN_EXE_stek"));
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("run systemd-analyze");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Dependencies on units this machine lacks (nginx.service, ...) are not the unit's
        // fault; anything about the unit's own lines is.
        let own: Vec<&str> = said
            .lines()
            .filter(|l| l.contains(unit) && !l.contains("not found"))
            .collect();
        assert!(out.status.success() && own.is_empty(), "{unit}:\n{said}");
    }
}

#[test]
fn ready_is_sent_once_the_key_files_exist() {
    let dir = shm_dir();
    let socket = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&socket).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stek"));
    cmd.arg("up")
        .arg("--dir")
        .arg(dir.path().join("keys"))
        .args(["--period", "4s", "--lifetime", "4s", "--no-memcached"])
        .env("NOTIFY_SOCKET", &socket);
    let stek = Proc::spawn("stek up", &mut cmd, dir.path().join("stek.log"));
    let mut buf = [0u8; 256];
    let n = rx
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1 within 20 s: {e}\n{}", stek.log_text()));
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    // Ready means the files servers include are there.
    let keys = dir.path().join("keys");
    for f in [
        "nginx/tickets.conf",
        "haproxy/tickets.keys",
        "apache/ticket.key",
    ] {
        assert!(keys.join(f).exists(), "READY=1 before {f} existed");
    }
    // Once only: rotations do not repeat it.
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(rx.recv(&mut buf).is_err(), "a second notification arrived");
}
