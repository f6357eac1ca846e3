//! `stek scan` against real nginx, Apache and HAProxy on loopback: static, all-zero and
//! stek-rotated keys, tickets off, TLS 1.3-only, state across runs, a fleet of two, `--expect`.

mod util;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use util::scan::*;
use util::*;

/// An nginx whose ticket key is the file `key` (never rotated).
fn nginx_with_key(root: &Path, cert: &Cert, name: &str, key: &[u8], protocols: &str) -> Nginx {
    let file = root.join(format!("{name}.key"));
    fs::write(&file, key).expect("key file");
    Nginx::start_with(
        &root.join(name),
        cert,
        &format!("ssl_session_ticket_key {};", file.display()),
        protocols,
    )
}

/// The ticket lifetime hint openssl s_client reports for a fresh session (`tls12`/`tls13`).
fn openssl_hint(port: u16, version: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let sess = dir.path().join("sess.pem");
    let tls = if version == "tls12" {
        Tls::V12
    } else {
        Tls::V13
    };
    fresh_ticket(port, tls, &sess);
    let out = Command::new("openssl")
        .args(["sess_id", "-noout", "-text", "-in"])
        .arg(&sess)
        .output()
        .expect("openssl sess_id");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("TLS session ticket lifetime hint: "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no lifetime hint in\n{text}"))
}

fn random_key() -> Vec<u8> {
    let mut key = vec![0u8; 80];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
        .expect("urandom");
    key
}

#[test]
fn a_static_key_is_not_rotated_also_on_tls13_only() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let key = random_key();
    let both = nginx_with_key(dir.path(), &cert, "both", &key, "TLSv1.2 TLSv1.3");
    let only13 = nginx_with_key(dir.path(), &cert, "only13", &key, "TLSv1.3");
    let a = format!("127.0.0.1:{}", both.port);
    let b = format!("127.0.0.1:{}", only13.port);
    let (code, r) = scan(&[&a, &b, "--observe", "6s", "--max-rotation", "3s"]);
    assert_verdict(code, &r, "fail", 1);
    assert_family(&r, "nginx");
    assert_fix(
        &r,
        "stek.not_rotated",
        "include /run/stek/nginx/tickets.conf",
    );
    assert_once_per_target(&r);
    let mut flagged: Vec<&str> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "stek.not_rotated")
        .map(|f| f["target"].as_str().unwrap())
        .collect();
    flagged.sort();
    let mut want = [a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(flagged, want, "{r:#}");
    let name = hex(&key[..16]);
    let t13 = &r["targets"][1];
    assert_eq!(t13["tls12"]["supported"], false);
    assert_eq!(t13["tls13"]["tickets_issued"], true);
    assert_eq!(t13["tls13"]["ticket_resumption"], true);
    assert_eq!(t13["tls13"]["key_name"], name.as_str());
    assert_eq!(t13["tls13"]["key_name_confirmed"], true);
    assert_eq!(t13["keys"][0]["name"], name.as_str());
    let span = t13["keys"][0]["last_seen"].as_f64().unwrap()
        - t13["keys"][0]["first_seen"].as_f64().unwrap();
    assert!(span > 3.0, "{span}");
    // The first tickets, 6 s old, still resume: the acceptance window is measured.
    assert!(
        t13["oldest_accepted_secs"].as_f64().unwrap() > 4.0,
        "{t13:#}"
    );
    assert!(!has(&r, "stek.weak_key"));
}

#[test]
fn an_all_zero_key_is_weak() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let zero80 = nginx_with_key(dir.path(), &cert, "zero80", &[0; 80], "TLSv1.2 TLSv1.3");
    let zero48 = nginx_with_key(dir.path(), &cert, "zero48", &[0; 48], "TLSv1.2 TLSv1.3");
    for port in [zero80.port, zero48.port] {
        let (code, r) = scan(&[&format!("127.0.0.1:{port}")]);
        assert_verdict(code, &r, "fail", 1);
        assert_eq!(r["findings"][0]["id"], "stek.weak_key", "{r:#}");
        assert_eq!(r["findings"][0]["severity"], "critical");
        assert_eq!(count(&r, "stek.weak_key"), 1, "{r:#}");
        assert_family(&r, "nginx");
        assert_fix(&r, "stek.weak_key", "include /run/stek/nginx/tickets.conf");
        for v in ["tls12", "tls13"] {
            let w = r["targets"][0][v]["weak_key"].as_str().expect("weak key");
            assert!(w.contains("all zero") && w.contains("decrypts"), "{w}");
            assert_eq!(r["targets"][0][v]["key_name"], "00".repeat(16));
        }
    }
}

#[test]
fn nginx_fed_by_stek_passes_and_matches_the_schedule() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let prefix = dir.path().join("nginx");
    let _stek = stek_up(
        dir.path(),
        &[
            "--period",
            "3s",
            "--lifetime",
            "6s",
            "--no-memcached",
            "--sinks",
            "nginx",
            "--on-change",
            &Nginx::reload_cmd(&prefix),
        ],
    );
    let conf = wait_nginx_conf(dir.path());
    let nginx = Nginx::start(&prefix, &cert, &conf);
    let target = format!("127.0.0.1:{}", nginx.port);
    // P = 3 s with a reload per period: the bounds leave a factor of two for a loaded machine
    // (a late reload makes a key look longer-lived than its period).
    let (code, r) = scan(&[&target, "--observe", "10s", "--max-rotation", "6s"]);
    assert_verdict(code, &r, "pass", 0);
    assert_family(&r, "nginx");
    assert!(
        ids(&r)
            .iter()
            .all(|i| i != "stek.not_rotated" && i != "stek.weak_key"),
        "{r:#}"
    );
    assert!(has(&r, "stek.rotation"), "{r:#}");
    let keys = r["targets"][0]["keys"].as_array().unwrap();
    assert!(keys.len() >= 3, "{keys:?}");
    let period = r["targets"][0]["rotation_observed_secs"]
        .as_f64()
        .expect("rotation measured");
    assert!((1.5..=6.0).contains(&period), "{period}");

    // The served key is the one stek's schedule says (from the agent's status.json), and a
    // static-key nginx is not.
    let status = dir.path().join("keys/status.json");
    let (code, r) = scan(&[&target, "--expect", status.to_str().unwrap()]);
    assert_eq!(code, 0, "{r:#}");
    assert!(has(&r, "expect.key_match"), "{r:#}");
    let other = nginx_with_key(
        dir.path(),
        &cert,
        "static",
        &random_key(),
        "TLSv1.2 TLSv1.3",
    );
    let (code, r) = scan(&[
        &format!("127.0.0.1:{}", other.port),
        "--expect",
        status.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{r:#}");
    let m = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "expect.key_mismatch")
        .expect("mismatch");
    assert!(
        m["evidence"]
            .as_str()
            .unwrap()
            .contains("not in the agent's ring"),
        "{m:#}"
    );
}

#[test]
fn tickets_off_gives_no_stek_finding() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let off = Nginx::start_with(
        &dir.path().join("off"),
        &cert,
        "ssl_session_tickets off;",
        "TLSv1.2 TLSv1.3",
    );
    let (code, r) = scan(&[&format!("127.0.0.1:{}", off.port)]);
    assert_verdict(code, &r, "pass", 0);
    assert_family(&r, "nginx");
    assert!(ids(&r).iter().all(|i| !i.starts_with("stek.")), "{r:#}");
    assert_eq!(r["targets"][0]["tls12"]["tickets_issued"], false);
    assert!(has(&r, "tickets.tls12") && has(&r, "session_id.resumption"));
}

#[test]
fn json_is_stable() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let n = nginx_with_key(dir.path(), &cert, "n", &random_key(), "TLSv1.2 TLSv1.3");
    let (_, r) = scan(&[&format!("127.0.0.1:{}", n.port)]);
    // serde_json's map sorts keys: the sets are compared.
    let top: Vec<&String> = r.as_object().unwrap().keys().collect();
    assert_eq!(
        top,
        [
            "duration_secs",
            "exit_code",
            "findings",
            "fleets",
            "scanner",
            "started_at",
            "summary",
            "targets",
            "verdict",
            "warnings"
        ]
    );
    for f in r["findings"].as_array().unwrap() {
        let keys: Vec<&String> = f.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "evidence",
                "id",
                "remediation",
                "severity",
                "target",
                "title"
            ]
        );
        assert!(["info", "low", "medium", "high", "critical"]
            .contains(&f["severity"].as_str().unwrap()));
    }
    let v: Vec<&String> = r["targets"][0]["tls12"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(r["targets"][0]["server_family"]["id"], "nginx", "{r:#}");
    assert_eq!(r["targets"][0]["tls12"]["outcome"], "assessed");
    assert_eq!(r["targets"][0]["tls13"]["ticket_format"], "named");
    for field in [
        "supported",
        "outcome",
        "alert",
        "ticket_format",
        "session_id_resumption",
        "tickets_issued",
        "lifetime_hint",
        "ticket_resumption",
        "key_name",
    ] {
        assert!(v.iter().any(|k| k.as_str() == field), "{field}");
    }
    // Two runs give the same shape and the same findings.
    let (_, again) = scan(&[&format!("127.0.0.1:{}", n.port)]);
    assert_eq!(ids(&r), ids(&again));
}

#[test]
fn state_carries_old_tickets_across_runs() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let n = nginx_with_key(dir.path(), &cert, "n", &random_key(), "TLSv1.2 TLSv1.3");
    let target = format!("127.0.0.1:{}", n.port);
    let state = dir.path().join("scan-state.json");
    let s = state.to_str().unwrap();
    let (code, r) = scan(&[
        &target,
        "--state",
        s,
        "--max-acceptance",
        "2s",
        "--max-rotation",
        "2s",
    ]);
    assert_eq!(code, 0, "first run: nothing old yet {r:#}");
    std::thread::sleep(Duration::from_millis(3000));
    let (code, r) = scan(&[
        &target,
        "--state",
        s,
        "--max-acceptance",
        "2s",
        "--max-rotation",
        "2s",
    ]);
    assert_eq!(code, 1, "{r:#}");
    // nginx's session timeout is 1 h here: a 3 s old ticket resumes, and the key has been seen
    // for 3 s across the two runs.
    assert!(has(&r, "stek.old_ticket_accepted"), "{r:#}");
    assert!(has(&r, "stek.not_rotated"), "{r:#}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn addresses_of_one_name_are_compared_as_a_fleet() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let key = random_key();
    let a = nginx_with_key(dir.path(), &cert, "a", &key, "TLSv1.2 TLSv1.3");
    let b = nginx_with_key(dir.path(), &cert, "b", &key, "TLSv1.2 TLSv1.3");
    let c = nginx_with_key(dir.path(), &cert, "c", &random_key(), "TLSv1.2 TLSv1.3");
    let (ta, tb, tc) = (
        format!("127.0.0.1:{}", a.port),
        format!("127.0.0.1:{}", b.port),
        format!("127.0.0.1:{}", c.port),
    );
    let (_, r) = scan(&[&ta, &tb, "--sni", "localhost"]);
    assert!(has(&r, "fleet.shared_key"), "{r:#}");
    assert_eq!(r["fleets"][0]["same_key_name"], true);
    let (_, r) = scan(&[&ta, &tc, "--sni", "localhost"]);
    assert!(has(&r, "fleet.split_keys"), "{r:#}");
    assert_eq!(r["fleets"][0]["same_key_name"], false);
}

#[test]
fn apache_and_haproxy_tickets_and_hints_read_correctly() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    // Apache: a 48-byte key (name, HMAC, AES-128). Lifetime hints as openssl s_client reads them.
    let key48 = &random_key()[..48];
    let apache_key = dir.path().join("apache.key");
    fs::write(&apache_key, key48).unwrap();
    let apache = Apache::start(&dir.path().join("apache"), &cert, &apache_key);
    let (code, r) = scan(&[&format!("127.0.0.1:{}", apache.port)]);
    // mod_ssl on OpenSSL 3 MACs its tickets with an all-zero HMAC key whatever the key file
    // says (its AES key is the file's): reported as a guessable MAC key, not a guessable key,
    // once for the endpoint, in Apache's layout (issue 12, rule 8).
    assert_verdict(code, &r, "fail", 1);
    assert_eq!(count(&r, "stek.weak_mac_key"), 1, "{r:#}");
    assert!(!has(&r, "stek.weak_key"), "{r:#}");
    let evidence = finding(&r, "stek.weak_mac_key")["evidence"]
        .as_str()
        .unwrap();
    assert!(
        evidence.contains("Apache httpd (mod_ssl)'s layout, 48-byte key file")
            && !evidence.contains("80-byte"),
        "{evidence}"
    );
    assert_family(&r, "apache");
    assert_fix(&r, "stek.weak_mac_key", "SSLSessionTicketKeyFile");
    assert_once_per_target(&r);
    for v in ["tls12", "tls13"] {
        let t = &r["targets"][0][v];
        assert_eq!(t["ticket_resumption"], true, "apache {v}: {t:#}");
        assert_eq!(t["key_name"], hex(&key48[..16]), "apache {v}");
        assert_eq!(
            t["lifetime_hint"],
            openssl_hint(apache.port, v),
            "apache {v}"
        );
    }
    // HAProxy: three 80-byte keys (name, AES-256, HMAC), the middle one encrypts.
    let keys: Vec<Vec<u8>> = (0..3).map(|_| random_key()).collect();
    // A HAProxy whose ring file holds `keys` (base64 lines).
    let haproxy_with = |name: &str, keys: &[Vec<u8>]| {
        use base64::Engine as _;
        let file = dir.path().join(format!("{name}.keys"));
        let lines: String = keys
            .iter()
            .map(|k| base64::engine::general_purpose::STANDARD.encode(k) + "\n")
            .collect();
        fs::write(&file, lines).unwrap();
        Haproxy::start(
            &dir.path().join(name),
            &cert,
            &file,
            &dir.path().join(format!("{name}.sock")),
        )
    };
    let haproxy = haproxy_with("haproxy", &keys);
    let (code, r) = scan(&[&format!("127.0.0.1:{}", haproxy.port)]);
    assert_verdict(code, &r, "pass", 0);
    assert_family(&r, "haproxy");
    assert_once_per_target(&r);
    for v in ["tls12", "tls13"] {
        let t = &r["targets"][0][v];
        assert_eq!(t["ticket_resumption"], true, "haproxy {v}: {t:#}");
        assert_eq!(t["key_name"], hex(&keys[1][..16]), "haproxy {v}");
        assert_eq!(
            t["lifetime_hint"],
            openssl_hint(haproxy.port, v),
            "haproxy {v}"
        );
    }
    // An all-zero HAProxy ring is weak in HAProxy's own layout.
    let hz = haproxy_with("haproxy-zero", &[vec![0; 80], vec![0; 80], vec![0; 80]]);
    let (code, r) = scan(&[&format!("127.0.0.1:{}", hz.port)]);
    assert_verdict(code, &r, "fail", 1);
    assert_eq!(r["findings"][0]["id"], "stek.weak_key", "{r:#}");
    assert_eq!(count(&r, "stek.weak_key"), 1, "{r:#}");
    let evidence = finding(&r, "stek.weak_key")["evidence"].as_str().unwrap();
    assert!(evidence.contains("HAProxy"), "{evidence}");
    assert_family(&r, "haproxy");
    assert_fix(&r, "stek.weak_key", "tls-ticket-keys");
}

#[test]
fn unreachable_and_bad_targets_exit_2_with_why() {
    let port = free_port();
    let (code, r) = scan(&[&format!("127.0.0.1:{port}")]);
    assert_eq!(code, 2);
    assert_eq!(r["verdict"], "error");
    assert!(
        r["summary"].as_str().unwrap().contains("cannot connect"),
        "{r:#}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_stek"))
        .args(["scan", "host:notaport"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad port") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn haproxy_rotated_by_stek_over_its_runtime_api_passes() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let socket = dir.path().join("admin.sock");
    let _stek = stek_up(
        dir.path(),
        &[
            "--period",
            "2s",
            "--lifetime",
            "2s",
            "--no-memcached",
            "--sinks",
            "haproxy",
            "--haproxy-socket",
            socket.to_str().unwrap(),
        ],
    );
    let keys = dir.path().join("keys/haproxy/tickets.keys");
    wait_for("stek's HAProxy keys file", Duration::from_secs(20), || {
        keys.exists().then_some(())
    });
    let haproxy = Haproxy::start(&dir.path().join("haproxy"), &cert, &keys, &socket);
    let pid = haproxy.proc.pid();
    let target = format!("127.0.0.1:{}", haproxy.port);
    let (code, r) = scan(&[&target, "--observe", "6s", "--max-rotation", "3s"]);
    assert_verdict(code, &r, "pass", 0);
    assert_family(&r, "haproxy");
    assert!(
        has(&r, "stek.rotation") && !has(&r, "stek.not_rotated"),
        "{r:#}"
    );
    assert!(
        r["targets"][0]["keys"].as_array().unwrap().len() >= 3,
        "{r:#}"
    );
    assert_eq!(haproxy.info_pid(), pid, "no reload, no restart");
}

/// A server that accepts, sends a TLS record header announcing 16 KiB of handshake, then one
/// byte per second (for at most a minute, so a failing scan cannot hold the test forever).
/// Every read the scanner makes gets a byte well within a per-read timeout.
fn slow_drip_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                use std::io::Write as _;
                if conn.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]).is_err() {
                    return;
                }
                for _ in 0..60 {
                    std::thread::sleep(Duration::from_secs(1));
                    if conn.write_all(&[0x02]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn timeout_bounds_each_connection_not_each_read() {
    let port = slow_drip_server();
    let target = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_stek"))
        .args(["scan", &target, "--timeout", "2s"])
        .output()
        .expect("run stek scan");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    // Against an endpoint whose first connection fails, the scan makes one connection per
    // version and runs the versions side by side: one timeout in all, two if they ran one after
    // the other. 2 x 2 s + 4 s of margin for a loaded machine is still far below the minute
    // the server would drip for.
    assert!(took < Duration::from_secs(8), "took {took:?}:\n{text}");
    // Both versions timed out: one reason, said once for both.
    assert!(
        text.contains("TLS 1.2 and TLS 1.3: timed out after 2s"),
        "{text}"
    );
}
