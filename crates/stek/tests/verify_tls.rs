//! `--verify-tls`: the agent connects to its own servers, reads the key name of the tickets they
//! issue and compares it with the ring's encrypting key. With a real nginx (P = L = 4 s): a match
//! while nginx includes stek's keys; a mismatch naming the endpoint and the foreign key (exit 1,
//! stek_served_key_match 0) once nginx is handed a static key file behind stek's back; a match
//! again once restored. With a real HAProxy fed over its runtime API: a match, which holds
//! because HAProxy encrypts with the middle of its three keys and stek puts its encrypting key
//! there.

mod util;

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use util::*;

/// Long enough for a rotation, the grace (2 s at P = 4 s), a check and a status write on a
/// loaded machine.
const PATIENCE: Duration = Duration::from_secs(25);

fn status(dir: &Path) -> (i32, String) {
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

fn status_json(dir: &Path) -> Option<serde_json::Value> {
    let text = fs::read_to_string(dir.join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The `served` entry of `endpoint` in the status file.
fn served(dir: &Path, endpoint: &str) -> Option<serde_json::Value> {
    status_json(dir)?["served"]
        .as_array()?
        .iter()
        .find(|s| s["endpoint"] == endpoint)
        .cloned()
}

fn scrape(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// The value of the sample that starts with `series`, if served.
fn sample(port: u16, series: &str) -> Option<String> {
    scrape(port)
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
}

fn reload(prefix: &Path) {
    let out = Command::new("sh")
        .args(["-c", &Nginx::reload_cmd(prefix)])
        .output()
        .expect("run nginx -s reload");
    assert!(
        out.status.success(),
        "nginx reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rewrites the `ssl_session_ticket_key`/`include` line of nginx's config to `tickets` and
/// reloads nginx.
fn hand_nginx(nginx: &Nginx, tickets: &str) {
    let text = fs::read_to_string(&nginx.conf).expect("nginx.conf");
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("ssl_session_ticket_key ") || t.starts_with("include ") {
            out.push_str("    ");
            out.push_str(tickets);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    fs::write(&nginx.conf, out).expect("write nginx.conf");
    reload(&nginx.prefix);
}

#[test]
fn nginx_match_then_a_static_key_behind_steks_back_then_match_again() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let prefix = dir.path().join("nginx");
    // A static key of the test's own: 80 random bytes, as an operator's would be.
    let static_key = dir.path().join("static.key");
    let bytes = util::servers::random_bytes(80);
    fs::write(&static_key, &bytes).expect("static key");
    let foreign = hex(&bytes[..16]);
    let static_line = format!("ssl_session_ticket_key {};", static_key.display());
    // nginx first (its port goes on stek's command line), on the static key.
    let nginx = Nginx::start_with(&prefix, &cert, &static_line, "TLSv1.2 TLSv1.3");
    let endpoint = format!("127.0.0.1:{}", nginx.port);
    let metrics = free_port();
    let stek = stek_up(
        dir.path(),
        &[
            "--period",
            "4s",
            "--lifetime",
            "4s",
            "--no-memcached",
            "--sinks",
            "nginx",
            "--on-change",
            &Nginx::reload_cmd(&prefix),
            "--metrics",
            &format!("127.0.0.1:{metrics}"),
            "--verify-tls",
            &endpoint,
        ],
    );
    let keys = dir.path().join("keys");
    let include = wait_nginx_conf(dir.path());
    let match_series =
        format!("stek_served_key_match{{group=\"default\",endpoint=\"{endpoint}\"}}");

    // nginx includes stek's keys: a match, exit 0, metric 1.
    hand_nginx(&nginx, &format!("include {};", include.display()));
    let text = wait_for("a match", PATIENCE, || {
        let s = served(&keys, &endpoint)?;
        let (code, text) = status(&keys);
        let metric = sample(metrics, &match_series);
        (s["state"] == "match" && code == 0 && metric.as_deref() == Some("1")).then_some(text)
    });
    assert!(
        text.contains(&format!("served by {endpoint}: match: key ")),
        "{text}"
    );
    // (Before nginx took stek's keys its static key may have been reported: counted from here.)
    let logged = stek.log_text().len();
    assert_eq!(
        sample(
            metrics,
            &format!("stek_served_key_readable{{group=\"default\",endpoint=\"{endpoint}\"}}")
        )
        .as_deref(),
        Some("1")
    );

    // A static key file behind stek's back: a mismatch naming the endpoint and the key.
    hand_nginx(&nginx, &static_line);
    let (code, text) = wait_for("a mismatch", PATIENCE, || {
        let s = served(&keys, &endpoint)?;
        let (code, text) = status(&keys);
        let metric = sample(metrics, &match_series);
        (s["state"] == "mismatch" && code != 0 && metric.as_deref() == Some("0"))
            .then_some((code, text))
    });
    let s = served(&keys, &endpoint).expect("served entry");
    assert_eq!(s["served_name"], foreign.as_str(), "{s}");
    assert_eq!(code, 1, "a foreign key is a warning:\n{text}");
    assert!(
        text.starts_with(&format!(
            "WARNING: the server at {endpoint} issues tickets under key {foreign}, not the encrypting key "
        )),
        "{text}"
    );
    assert!(
        text.contains(
            "a key stek did not issue: something else configures this server's ticket keys"
        ),
        "{text}"
    );
    assert!(
        text.contains("TLS 1.3 and TLS 1.2"),
        "both versions checked: {text}"
    );

    // Restored: a match again.
    hand_nginx(&nginx, &format!("include {};", include.display()));
    wait_for("a match again", PATIENCE, || {
        let s = served(&keys, &endpoint)?;
        let (code, _) = status(&keys);
        let metric = sample(metrics, &match_series);
        (s["state"] == "match" && code == 0 && metric.as_deref() == Some("1")).then_some(())
    });

    // The mismatch was logged once when it began and once when it ended, not at every check.
    let log = stek.log_text()[logged..].to_owned();
    let began = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&format!("under key {foreign}")))
        .count();
    assert_eq!(began, 1, "{log}");
    let ended = log.lines().filter(|l| l.contains("mismatch ended")).count();
    assert_eq!(ended, 1, "{log}");
    // Names only: neither the static key's bytes nor any hex of them past the name.
    assert!(!log.contains(&hex(&bytes[16..])), "key bytes in the log");
}

/// nginx stops taking stek's keys (every reload fails): once the ring moved on, the server is
/// said to be still encrypting with the previous key.
#[test]
fn a_server_that_misses_the_rotation_is_said_to_serve_the_previous_key() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let prefix = dir.path().join("nginx");
    // stek's include path is known before stek runs; nginx starts on an empty include, which
    // stek's first reload replaces.
    let include = dir.path().join("keys/nginx/tickets.conf");
    let empty = dir.path().join("empty.conf");
    fs::write(&empty, "").expect("empty.conf");
    let nginx = Nginx::start_with(
        &prefix,
        &cert,
        &format!("include {};", empty.display()),
        "TLSv1.2 TLSv1.3",
    );
    let endpoint = format!("127.0.0.1:{}", nginx.port);
    let stek = stek_up(
        dir.path(),
        &[
            "--period",
            "4s",
            "--lifetime",
            "4s",
            "--no-memcached",
            "--sinks",
            "nginx",
            "--on-change",
            &Nginx::reload_cmd(&prefix),
            "--verify-tls",
            &endpoint,
        ],
    );
    let keys = dir.path().join("keys");
    wait_nginx_conf(dir.path());
    hand_nginx(&nginx, &format!("include {};", include.display()));
    wait_for("a match", PATIENCE, || {
        (served(&keys, &endpoint)?["state"] == "match").then_some(())
    });
    // Break nginx's config: stek's reloads fail from now on; nginx keeps the keys it has.
    let good = fs::read_to_string(&nginx.conf).unwrap();
    fs::write(&nginx.conf, format!("{good}\nbogus_directive on;\n")).unwrap();
    // The mismatch's start is logged once, with the words `stek status` shows while it lasts
    // (the log, not a status poll: the key stays "previous" for less than a period).
    let line = wait_for("the previous key to be named", PATIENCE, || {
        stek.log_text()
            .lines()
            .find(|l| l.contains("still encrypting with the previous key"))
            .map(str::to_owned)
    });
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&endpoint), "{line}");
    assert!(
        line.contains("the server did not take the new keys"),
        "{line}"
    );
    // A rotation later that key has left the window: critical, and said so.
    let text = wait_for("the erased key to be named", PATIENCE, || {
        let s = served(&keys, &endpoint)?;
        let detail = s["detail"].as_str()?.to_owned();
        let (code, text) = status(&keys);
        (code == 2 && detail.contains("left the window and was erased here")).then_some(text)
    });
    assert!(text.contains("CRITICAL: forward secrecy at risk"), "{text}");
}

/// HAProxy holds three keys and encrypts with the middle one: stek's runtime API pushes put its
/// encrypting key there, and the served name is the ring's encrypting name (TLS 1.2 and 1.3).
#[test]
fn haproxy_serves_the_rings_encrypting_key_from_the_middle() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    // HAProxy first (its port goes on stek's command line), on a keys file of the test's own
    // where stek will write its own: stek then pushes its keys over the admin socket.
    let haproxy_dir = dir.path().join("keys/haproxy");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&haproxy_dir)
        .expect("keys/haproxy");
    let keys_file = haproxy_dir.join("tickets.keys");
    let b64 = base64::engine::general_purpose::STANDARD;
    let lines: String = (0..3)
        .map(|_| format!("{}\n", b64.encode(util::servers::random_bytes(80))))
        .collect();
    fs::write(&keys_file, lines).expect("keys file");
    let socket = dir.path().join("admin.sock");
    let h = Haproxy::start(&dir.path().join("haproxy"), &cert, &keys_file, &socket);
    let endpoint = format!("localhost@127.0.0.1:{}", h.port);
    let _stek = stek_up(
        dir.path(),
        &[
            "--period",
            "4s",
            "--lifetime",
            "4s",
            "--no-memcached",
            "--sinks",
            "haproxy",
            "--haproxy-socket",
            socket.to_str().expect("utf-8"),
            "--verify-tls",
            &endpoint,
        ],
    );
    let keys = dir.path().join("keys");
    // One status document: its ring's encrypting key is the name HAProxy's tickets carry.
    let s = wait_for("a match on the ring's encrypting key", PATIENCE, || {
        let st = status_json(&keys)?;
        let s = st["served"].as_array()?.first()?.clone();
        (s["state"] == "match" && s["served_name"] == st["encrypting_name"]).then_some(s)
    });
    assert_eq!(s["endpoint"], endpoint.as_str());
    assert!(s["detail"].is_null(), "both versions match: {s}");
}
