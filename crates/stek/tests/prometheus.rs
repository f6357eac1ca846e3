//! contrib/prometheus/stek-alerts.yml: valid rules (`promtool check rules`), their unit tests
//! pass (`promtool test rules`), and every stek metric they use is one a real `stek up` serves.

mod util;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use util::*;

fn contrib() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../contrib/prometheus")
}

fn promtool(args: &[&str]) {
    require("promtool");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(contrib())
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_check_and_their_unit_tests_pass() {
    promtool(&["check", "rules", "stek-alerts.yml"]);
    promtool(&["test", "rules", "stek-alerts.test.yml"]);
}

#[test]
fn every_metric_the_rules_use_is_served() {
    let rules = std::fs::read_to_string(contrib().join("stek-alerts.yml")).unwrap();
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("stek_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 8, "{used:?}");

    let dir = shm_dir();
    let port = free_port();
    // --verify-tls to a port nobody serves TLS on: the served-key metrics are announced and the
    // endpoint's stek_served_key_readable is 0; stek_served_key_match gets a sample only once a
    // real server's key is read (tests/verify_tls.rs checks its 1 and 0 against nginx).
    let nobody = free_port();
    let verify = format!("127.0.0.1:{nobody}");
    let _stek = stek_up(
        dir.path(),
        &[
            "--period",
            "4s",
            "--lifetime",
            "4s",
            "--no-memcached",
            "--sinks",
            "nginx",
            "--metrics",
            &format!("127.0.0.1:{port}"),
            "--verify-tls",
            &verify,
        ],
    );
    wait_port(port);
    let scrape = || -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    };
    // A metric without samples yet still has its HELP line; some appear only after the first
    // store read or clock measurement: scrape until all are there or 20 s passed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (served, missing) = loop {
        let served = scrape().unwrap_or_default();
        let missing: Vec<&str> = used
            .iter()
            .copied()
            .filter(|m| !served.contains(&format!("# HELP {m} ")))
            .filter(|m| *m != "stek_haproxy_socket_up") // only with --haproxy-socket
            .collect();
        let unreadable =
            format!("stek_served_key_readable{{group=\"default\",endpoint=\"{verify}\"}} 0");
        let missing: Vec<&str> = missing
            .into_iter()
            .chain((!served.contains(&unreadable)).then_some("stek_served_key_readable"))
            .collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break (served, missing);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        missing.is_empty(),
        "rules use metrics stek does not serve: {missing:?}\n{served}"
    );
}
