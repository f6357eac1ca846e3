//! `stek status` tells the truth about the agent it reads, as a monitoring plugin: 0 while the
//! agent rotates on the shared key, 2 once it is dead (here: SIGKILLed, so it cannot clean up),
//! within two periods; the metrics endpoint's `/healthz` gives the same verdict.

mod util;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use util::*;

fn status(dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stek"))
        .args(["status", "--dir"])
        .arg(dir)
        .output()
        .expect("run stek status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn a_killed_agent_is_critical_within_two_periods() {
    const PERIOD: u64 = 4;
    let dir = shm_dir();
    let port = free_port();
    // A host name works (IPv4 first: 127.0.0.1).
    let metrics = format!("localhost:{port}");
    let stek = stek_up(
        dir.path(),
        &[
            "--period",
            &format!("{PERIOD}s"),
            "--lifetime",
            &format!("{PERIOD}s"),
            "--no-memcached",
            "--sinks",
            "nginx",
            "--metrics",
            &metrics,
        ],
    );
    let keys = dir.path().join("keys");
    // Alive: OK and exit 0, with the next rotation in words; /healthz answers 200 OK.
    let (code, text) = wait_for("an OK status", Duration::from_secs(20), || {
        let (code, text) = status(&keys);
        (code == 0).then_some((code, text))
    });
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("OK: group "), "{text}");
    assert!(text.contains("next rotation in"), "{text}");
    // The same status for scripts: JSON on stdout, from the file and from the endpoint.
    wait_port(port);
    for from in [
        vec!["--dir", keys.to_str().unwrap()],
        vec!["--endpoint", metrics.as_str()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_stek"))
            .arg("status")
            .arg("--json")
            .args(&from)
            .output()
            .expect("stek status --json");
        assert_eq!(out.status.code(), Some(0), "{from:?}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(doc["group"], "default", "{doc}");
        assert_eq!(doc["period"], PERIOD, "{doc}");
        assert_eq!(doc["encrypting"], "current", "{doc}");
        let keys = doc["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 3, "past, current, next: {doc}");
        assert_eq!(keys[0]["encrypts"], true, "{doc}");
        assert_eq!(keys[0]["name"], doc["encrypting_name"], "{doc}");
        assert!(doc["heartbeat"].as_f64().unwrap() > 0.0, "{doc}");
        let age = unix_now().as_secs_f64() - doc["updated_at"].as_f64().unwrap();
        assert!(age < 60.0, "{doc}");
    }
    let health = get(port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    assert!(health.ends_with("OK\n"), "{health}");
    // Alive for longer than the heartbeat's margin: still OK (the heartbeat keeps it fresh
    // between rotations).
    std::thread::sleep(Duration::from_secs(PERIOD + 2));
    let (code, text) = status(&keys);
    assert_eq!(
        code,
        0,
        "a live agent between rotations: {text}\n{}",
        stek.log_text()
    );

    let killed = Instant::now();
    let ok = Command::new("kill")
        .args(["-KILL", &stek.pid().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok);
    let text = wait_for(
        "stek status to call the killed agent critical",
        Duration::from_secs(2 * PERIOD + 2),
        || {
            let (code, text) = status(&keys);
            (code == 2).then_some(text)
        },
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(2 * PERIOD),
        "critical only after {took:?}:\n{text}"
    );
    assert!(
        text.contains("CRITICAL: agent not running or stuck"),
        "{text}"
    );

    // Nothing to read at all: critical too, with the reason.
    let (code, text) = status(&dir.path().join("nowhere"));
    assert_eq!(code, 2, "{text}");
    assert!(text.starts_with("CRITICAL: cannot read"), "{text}");
}

fn metric(port: u16, name: &str) -> Option<String> {
    get(port, "/metrics")
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
}

/// A reload that keeps failing leaves nginx encrypting with a key stek has erased: `stek status`
/// says so (exit 2, the sink named) and `stek_forward_secrecy_at_risk` is 1 as soon as that key
/// leaves the window; a reload that works again clears both.
#[test]
fn a_failing_reload_puts_forward_secrecy_at_risk_visibly() {
    const PERIOD: u64 = 2;
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let prefix = dir.path().join("nginx");
    let port = free_port();
    let _stek = stek_up(
        dir.path(),
        &[
            "--period",
            &format!("{PERIOD}s"),
            "--lifetime",
            &format!("{PERIOD}s"),
            "--no-memcached",
            "--sinks",
            "nginx",
            "--on-change",
            &Nginx::reload_cmd(&prefix),
            "--metrics",
            &format!("127.0.0.1:{port}"),
        ],
    );
    let include = wait_nginx_conf(dir.path());
    let nginx = Nginx::start(&prefix, &cert, &include);
    let keys = dir.path().join("keys");
    // nginx took a key: a reload succeeded after it started.
    wait_for("a reload nginx took", Duration::from_secs(20), || {
        let (code, text) = status(&keys);
        (code == 0 && text.contains("sink on_change: ok; server took")).then_some(())
    });
    assert_eq!(
        metric(port, "stek_forward_secrecy_at_risk").as_deref(),
        Some("0")
    );

    // Break nginx's config: every reload fails from now on; nginx keeps its old keys.
    let good = std::fs::read_to_string(&nginx.conf).unwrap();
    std::fs::write(&nginx.conf, format!("{good}\nbogus_directive on;\n")).unwrap();
    let broken_at = Instant::now();
    // The key nginx took leaves the window (past + current + next = 3 slots) within three
    // periods; the status says so at once.
    let text = wait_for(
        "stek status to report forward secrecy at risk",
        Duration::from_secs(4 * PERIOD + 4),
        || {
            let (code, text) = status(&keys);
            (code == 2).then_some(text)
        },
    );
    assert!(
        broken_at.elapsed() <= Duration::from_secs(3 * PERIOD + 3),
        "took {:?}:\n{text}",
        broken_at.elapsed()
    );
    assert!(text.contains("CRITICAL: forward secrecy at risk"), "{text}");
    assert!(text.contains("on_change sink"), "{text}");
    assert!(
        text.contains("bogus_directive"),
        "nginx's own error is shown: {text}"
    );
    assert_eq!(
        metric(port, "stek_forward_secrecy_at_risk").as_deref(),
        Some("1")
    );
    let failures: u64 = get(port, "/metrics")
        .lines()
        .find(|l| l.starts_with("stek_sink_failures_total{sink=\"on_change\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(failures >= 1, "on-change failures are counted");

    // Repaired: the next retry reloads, and both clear.
    std::fs::write(&nginx.conf, good).unwrap();
    wait_for(
        "the risk to clear",
        Duration::from_secs(4 * PERIOD + 4),
        || {
            let (code, _) = status(&keys);
            (code == 0 && metric(port, "stek_forward_secrecy_at_risk").as_deref() == Some("0"))
                .then_some(())
        },
    );
}
