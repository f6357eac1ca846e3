//! `stek scan` against the TLS servers people run beyond nginx, Apache and HAProxy (issue 12):
//! Go crypto/tls built with Go 1.19 (tickets named by key) and Go 1.23 (no key name), Caddy 2.6,
//! lighttpd 1.4, h2o 2.2, `openssl s_server`, and nginx with tickets off. Every server is real,
//! on loopback, and each test cites where the server's own source or documentation says what
//! it does; the scan is run as a user runs it (`stek scan 127.0.0.1:PORT ... --json`).
//!
//! Each test checks the verdict, the finding ids, the exit code and the server family, and the
//! family's own mechanism in the fix where there is a fix.

mod util;

use std::process::Command;

use serde_json::{json, Value};
use util::scan::*;
use util::servers::*;
use util::*;

/// A scratch directory and a certificate for `localhost` and 127.0.0.1. The first call also
/// starts building the Go fixture with both toolchains in the background, so that the Go tests
/// (which wait for those builds) find them ready instead of building while the others idle.
fn setup() -> (tempfile::TempDir, Cert) {
    static BUILDS: std::sync::Once = std::sync::Once::new();
    BUILDS.call_once(|| {
        for go in [Go::V119, Go::V123] {
            // A failed build panics here unseen; the Go tests then build again and fail with why.
            std::thread::spawn(move || goticket(go));
        }
    });
    let dir = shm_dir();
    let cert = make_cert_ip(dir.path());
    (dir, cert)
}

fn target(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

// ---- Go crypto/tls ------------------------------------------------------------------------
//
// Ground truth: Go's crypto/tls, in the sources of each toolchain
// (/usr/lib/go-1.19/src/crypto/tls and target/go-1.23/usr/lib/go-1.23/src/crypto/tls):
// - common.go: without SetSessionTicketKeys a server makes its own key every ticketKeyRotation
//   (24 h) and decrypts with each for ticketKeyLifetime (7 days);
// - common.go, SetSessionTicketKeys: "The first key will be used when creating new tickets,
//   while all keys can be used for decrypting tickets"; ticketKeyFromBytes derives the name
//   (SHA-512 bytes 0..16), the AES-128 key (16..32) and the HMAC-SHA256 key (32..64) from 32 bytes;
// - ticket.go: Go 1.19 tickets are keyName(16) | IV | AES-CTR | HMAC; Go 1.23 encryptTicket
//   writes IV | AES-CTR | HMAC, no name, and decryptTicket tries every key.

fn go_family_format(r: &Value, go: Go) {
    assert_family(r, "go");
    let format = match go {
        Go::V119 => "named",
        Go::V123 => "nameless",
    };
    for v in ["tls12", "tls13"] {
        assert_eq!(
            r["targets"][0][v]["ticket_format"], format,
            "{go:?} {v}: {r:#}"
        );
    }
    match go {
        Go::V119 => assert_eq!(count(r, "stek.no_key_name"), 0, "{r:#}"),
        Go::V123 => assert_eq!(count(r, "stek.no_key_name"), 1, "{r:#}"),
    }
}

fn go_default_keys_pass(go: Go) {
    let (dir, cert) = setup();
    let server = GoServer::start(go, dir.path(), &cert, "default", None);
    let (code, r) = scan(&[&target(server.port)]);
    // Go's own keys rotate daily and live 7 days: nothing to flag against the 24 h defaults.
    assert_verdict(code, &r, "pass", 0);
    assert!(!has(&r, "stek.weak_key") && !has(&r, "stek.not_rotated"));
    go_family_format(&r, go);
    assert_once_per_target(&r);
}

fn go_static_key_is_not_rotated(go: Go) {
    let (dir, cert) = setup();
    let server = GoServer::start(go, dir.path(), &cert, "static", None);
    let (code, r) = scan(&[
        &target(server.port),
        "--observe",
        "6s",
        "--interval",
        "1s",
        "--max-rotation",
        "2s",
        "--max-acceptance",
        "2s",
    ]);
    // One key set once never changes (SetSessionTicketKeys turns Go's own rotation off). On
    // Go 1.23 there is no name to follow: the key's life shows as 6 s old tickets resuming.
    assert_verdict(code, &r, "fail", 1);
    assert!(has(&r, "stek.not_rotated"), "{r:#}");
    assert_fix(&r, "stek.not_rotated", "SetSessionTicketKeys");
    assert!(!has(&r, "stek.weak_key"), "{r:#}");
    go_family_format(&r, go);
    assert_once_per_target(&r);
}

fn go_zero_key_is_weak(go: Go) {
    let (dir, cert) = setup();
    let server = GoServer::start(go, dir.path(), &cert, "zero", None);
    let (code, r) = scan(&[&target(server.port)]);
    // SetSessionTicketKeys([zero]): the MAC key is SHA-512(32 zero bytes)[32..64], anyone can
    // compute it (issue 12, rule 2), with or without a name in the ticket.
    assert_verdict(code, &r, "fail", 1);
    assert_eq!(count(&r, "stek.weak_key"), 1, "{r:#}");
    assert_fix(&r, "stek.weak_key", "SetSessionTicketKeys");
    go_family_format(&r, go);
    assert_once_per_target(&r);
}

fn go_rotating_keys_pass(go: Go) {
    let (dir, cert) = setup();
    // A new key every 2 s, the previous one still decrypting: tickets live at most 4 s.
    let server = GoServer::start(go, dir.path(), &cert, "rotate", Some("2s"));
    let (code, r) = scan(&[
        &target(server.port),
        "--observe",
        "8s",
        "--interval",
        "1s",
        "--max-rotation",
        "4s",
        "--max-acceptance",
        "10s",
    ]);
    assert_verdict(code, &r, "pass", 0);
    assert!(!has(&r, "stek.not_rotated"), "{r:#}");
    assert!(!has(&r, "stek.old_ticket_accepted"), "{r:#}");
    if go == Go::V119 {
        // The name changes every 2 s.
        assert!(has(&r, "stek.rotation"), "{r:#}");
    }
    go_family_format(&r, go);
    assert_once_per_target(&r);
}

#[test]
fn go119_default_keys_pass() {
    go_default_keys_pass(Go::V119);
}

#[test]
fn go123_default_keys_pass() {
    go_default_keys_pass(Go::V123);
}

#[test]
fn go119_static_key_is_not_rotated() {
    go_static_key_is_not_rotated(Go::V119);
}

#[test]
fn go123_static_key_is_not_rotated_measured_by_acceptance() {
    go_static_key_is_not_rotated(Go::V123);
}

#[test]
fn go119_zero_key_is_weak() {
    go_zero_key_is_weak(Go::V119);
}

#[test]
fn go123_zero_key_is_weak_without_a_name() {
    go_zero_key_is_weak(Go::V123);
}

#[test]
fn go119_rotating_keys_pass() {
    go_rotating_keys_pass(Go::V119);
}

#[test]
fn go123_rotating_keys_pass() {
    go_rotating_keys_pass(Go::V123);
}

/// Issue 12, rule 3: a Go 1.23 server rotating every 8 s keeps the previous key, so tickets up
/// to 16 s old resume; offering only the oldest ticket once is not enough to see it.
#[test]
fn go123_previous_key_accepts_tickets_older_than_allowed() {
    let (dir, cert) = setup();
    let server = GoServer::start(Go::V123, dir.path(), &cert, "rotate", Some("8s"));
    let (code, r) = scan(&[
        &target(server.port),
        "--observe",
        "20s",
        "--max-acceptance",
        "10s",
    ]);
    assert_verdict(code, &r, "fail", 1);
    assert!(has(&r, "stek.old_ticket_accepted"), "{r:#}");
    assert_fix(&r, "stek.old_ticket_accepted", "SetSessionTicketKeys");
    let oldest = r["targets"][0]["oldest_accepted_secs"].as_f64();
    assert!(oldest.is_some_and(|a| a > 10.0), "{r:#}");
    go_family_format(&r, Go::V123);
    assert_once_per_target(&r);
}

/// Issue 12, rule 1, when one version completes: goticket `-client-cert-tls13` requires a
/// client certificate from TLS 1.3 clients only (GetConfigForClient sees the offered versions,
/// ClientHelloInfo.SupportedVersions in common.go), and Go 1.19's TLS 1.3 server answers a
/// client without one with bad_certificate (processCertsFromClient, handshake_server.go), before
/// any ticket (handshake_server_tls13.go sends tickets after the client's Finished when it
/// asked for a certificate). TLS 1.2 is assessed; TLS 1.3 is reported as not assessed, with
/// the alert and its meaning, never as "no tickets".
#[test]
fn go_requiring_a_certificate_on_tls13_only_is_assessed_on_tls12_only() {
    let (dir, cert) = setup();
    let server = GoServer::start_args(
        Go::V119,
        dir.path(),
        &cert,
        &["-keys", "default", "-client-cert-tls13"],
    );
    let (code, r) = scan(&[&target(server.port)]);
    // The assessed part passes; the missing part is a finding of its own, not an error.
    assert_verdict(code, &r, "pass", 0);
    let t = &r["targets"][0];
    assert_eq!(t["tls12"]["outcome"], "assessed", "{r:#}");
    assert_eq!(t["tls12"]["tickets_issued"], true, "{r:#}");
    assert_eq!(t["tls13"]["outcome"], "failed", "{r:#}");
    assert_eq!(t["tls13"]["alert"], "bad_certificate", "{r:#}");
    assert!(
        has(&r, "tickets.tls12") && !has(&r, "tickets.tls13"),
        "{r:#}"
    );
    let incomplete = finding(&r, "scan.incomplete");
    let evidence = incomplete["evidence"].as_str().unwrap();
    assert!(
        incomplete["title"] == "TLS 1.3 was not assessed"
            && evidence.contains("bad_certificate")
            && evidence.contains("requires a client certificate"),
        "{incomplete:#}"
    );
    assert_family(&r, "go");
    assert_once_per_target(&r);
    let (code, text) = scan_text(&[&target(server.port)]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("TLS 1.3: not assessed"), "{text}");
    assert!(!text.contains("TLS 1.3: no tickets"), "{text}");
}

// ---- Caddy 2.6 ----------------------------------------------------------------------------
//
// Ground truth: Caddy's JSON documentation of apps.tls.session_tickets
// (https://caddyserver.com/docs/json/apps/tls/session_tickets/) and its source,
// modules/caddytls/sessiontickets.go: `rotation_interval` (default 12h), `max_keys` (default 4;
// RotateSTEKs prepends a new key and drops the oldest), `disabled`; `register` hands the keys to
// Go's SetSessionTicketKeys, and connpolicy.go sets Go's SessionTicketsDisabled from `disabled`.
// The Caddyfile has no option for them (https://caddyserver.com/docs/caddyfile/options): a
// Caddyfile site rotates by those defaults or Go's (24 h), well inside stek's 24 h default.

#[test]
fn caddy_caddyfile_defaults_pass() {
    let (dir, cert) = setup();
    let caddy = Caddy::caddyfile(&dir.path().join("caddy"), &cert);
    let (code, r) = scan(&[&target(caddy.port)]);
    assert_verdict(code, &r, "pass", 0);
    assert!(!has(&r, "stek.weak_key") && !has(&r, "stek.not_rotated"));
    assert_family(&r, "caddy");
    assert_once_per_target(&r);
}

#[test]
fn caddy_json_daily_rotation_is_not_rotated_with_caddys_fix() {
    let (dir, cert) = setup();
    let caddy = Caddy::json(
        &dir.path().join("caddy"),
        &cert,
        json!({"rotation_interval": "24h", "max_keys": 4}),
    );
    let (code, r) = scan(&[
        &target(caddy.port),
        "--observe",
        "6s",
        "--interval",
        "1s",
        "--max-rotation",
        "2s",
    ]);
    assert_verdict(code, &r, "fail", 1);
    assert!(has(&r, "stek.not_rotated"), "{r:#}");
    // Issue 12, rule 5: Caddy's own setting, not nginx's include.
    assert_fix(&r, "stek.not_rotated", "session_tickets");
    let fix = finding(&r, "stek.not_rotated")["remediation"]
        .as_str()
        .unwrap();
    assert!(!fix.contains("nginx"), "{fix}");
    assert_family(&r, "caddy");
    assert_once_per_target(&r);
}

#[test]
fn caddy_json_two_second_rotation_is_seen() {
    let (dir, cert) = setup();
    let caddy = Caddy::json(
        &dir.path().join("caddy"),
        &cert,
        json!({"rotation_interval": "2s", "max_keys": 4}),
    );
    let (code, r) = scan(&[
        &target(caddy.port),
        "--observe",
        "6s",
        "--interval",
        "1s",
        "--max-rotation",
        "4s",
    ]);
    assert_verdict(code, &r, "pass", 0);
    assert!(
        has(&r, "stek.rotation") && !has(&r, "stek.not_rotated"),
        "{r:#}"
    );
    assert!(
        r["targets"][0]["keys"].as_array().unwrap().len() >= 3,
        "{r:#}"
    );
    assert_family(&r, "caddy");
    assert_once_per_target(&r);
}

#[test]
fn caddy_json_tickets_disabled_pass_with_no_tickets() {
    let (dir, cert) = setup();
    // `disabled: true` sets Go's SessionTicketsDisabled: no NewSessionTicket in either version.
    let caddy = Caddy::json(&dir.path().join("caddy"), &cert, json!({"disabled": true}));
    let (code, r) = scan(&[&target(caddy.port)]);
    assert_verdict(code, &r, "pass", 0);
    for v in ["tls12", "tls13"] {
        let t = &r["targets"][0][v];
        assert_eq!(t["outcome"], "assessed", "{v}: {r:#}");
        assert_eq!(t["tickets_issued"], false, "{v}: {r:#}");
    }
    assert!(
        has(&r, "tickets.tls12") && has(&r, "tickets.tls13"),
        "{r:#}"
    );
    no_stek_finding(&r);
    assert_family(&r, "caddy");
    assert_once_per_target(&r);
}

/// Issue 12, rule 6. Caddy answers a name it has no certificate for with an alert
/// (certmagic's GetCertificate fails: "no certificate available for 'other.example'").
#[test]
fn caddy_refusing_the_name_is_not_unsupported() {
    let (dir, cert) = setup();
    let caddy = Caddy::caddyfile(&dir.path().join("caddy"), &cert);
    let (code, r) = scan(&[&target(caddy.port), "--sni", "other.example"]);
    assert_verdict(code, &r, "error", 2);
    for v in ["tls12", "tls13"] {
        assert_eq!(r["targets"][0][v]["outcome"], "name_refused", "{v}: {r:#}");
    }
    assert_eq!(r["targets"][0]["sni"], "other.example");
    assert!(r.to_string().contains("refused the name"), "{r:#}");
    // The alert by name and what it means for a Go server.
    assert!(r.to_string().contains("internal_error"), "{r:#}");
    assert!(r.to_string().contains("no certificate for"), "{r:#}");
    // An endpoint that could not be scanned has no findings, so no fix; nothing was seen to
    // name its family by.
    assert!(ids(&r).is_empty(), "{r:#}");
    assert_eq!(r["targets"][0]["server_family"]["id"], "unknown", "{r:#}");
}

// ---- lighttpd 1.4.69 ----------------------------------------------------------------------
//
// Ground truth: lighttpd's mod_openssl documentation (https://wiki.lighttpd.net/Docs_SSL,
// `ssl.stek-file`) and src/mod_openssl.c (mod_openssl_session_ticket_key_file: 92 bytes, i32
// version 0, i32 activation, i32 expiry, then name(16) HMAC(32) AES(32); read at start and then
// only when the file changes. Without a file it makes its own key every 8 h, each valid 24 h).

#[test]
fn lighttpd_defaults_pass() {
    let (dir, cert) = setup();
    let server = Lighttpd::start(&dir.path().join("lighttpd"), &cert, None);
    let (code, r) = scan(&[&target(server.port)]);
    assert_verdict(code, &r, "pass", 0);
    assert!(!has(&r, "stek.weak_key") && !has(&r, "stek.not_rotated"));
    assert_family(&r, "lighttpd");
    assert_once_per_target(&r);
}

#[test]
fn lighttpd_static_stek_file_is_not_rotated_with_its_fix() {
    let (dir, cert) = setup();
    let key = random_bytes(80);
    let file = dir.path().join("stek.bin");
    lighttpd_stek_file(&file, &key);
    let server = Lighttpd::start(&dir.path().join("lighttpd"), &cert, Some(&file));
    let (code, r) = scan(&[
        &target(server.port),
        "--observe",
        "6s",
        "--interval",
        "1s",
        "--max-rotation",
        "2s",
    ]);
    // The tickets carry the file's name: the file is what encrypts.
    for v in ["tls12", "tls13"] {
        assert_eq!(r["targets"][0][v]["key_name"], hex(&key[..16]), "{v}");
    }
    assert_verdict(code, &r, "fail", 1);
    assert!(has(&r, "stek.not_rotated"), "{r:#}");
    assert_fix(&r, "stek.not_rotated", "ssl.stek-file");
    assert_family(&r, "lighttpd");
    assert_once_per_target(&r);
}

// ---- h2o 2.2.5 ----------------------------------------------------------------------------
//
// Ground truth: h2o's documentation of `ssl-session-resumption`
// (https://h2o.examp1e.net/configure/base_directives.html#ssl-session-resumption: mode ticket,
// ticket-store file, ticket-file: YAML entries name, cipher, hash, key, not_before, not_after;
// the newest entry valid now encrypts) and src/ssl.c (the internal store makes a key every
// lifetime/4 = 900 s, each valid 3600 s).

#[test]
fn h2o_defaults_pass() {
    let (dir, cert) = setup();
    let server = H2o::start(&dir.path().join("h2o"), &cert, None);
    let (code, r) = scan(&[&target(server.port)]);
    assert_verdict(code, &r, "pass", 0);
    assert!(!has(&r, "stek.weak_key") && !has(&r, "stek.not_rotated"));
    assert_family(&r, "h2o");
    assert_once_per_target(&r);
}

#[test]
fn h2o_static_ticket_file_is_not_rotated_with_its_fix() {
    let (dir, cert) = setup();
    let name = random_bytes(16);
    let file = dir.path().join("tickets.yaml");
    h2o_ticket_file(&file, &name, &random_bytes(96));
    let server = H2o::start(&dir.path().join("h2o"), &cert, Some(&file));
    let (code, r) = scan(&[
        &target(server.port),
        "--observe",
        "6s",
        "--interval",
        "1s",
        "--max-rotation",
        "2s",
    ]);
    for v in ["tls12", "tls13"] {
        assert_eq!(r["targets"][0][v]["key_name"], hex(&name), "{v}");
    }
    assert_verdict(code, &r, "fail", 1);
    assert!(has(&r, "stek.not_rotated"), "{r:#}");
    assert_fix(&r, "stek.not_rotated", "ssl-session-resumption");
    assert_family(&r, "h2o");
    assert_once_per_target(&r);
}

/// Issue 12, rule 4, on a server with tickets off whose TLS 1.3 tickets are session-cache ids,
/// scanned with `--observe 6s --max-acceptance 2s`: a pass without any stek.* finding, the ids
/// told apart from tickets, and the old sessions that resumed reported as the cache's (low),
/// with the family's `knob` for the cache in both fixes.
fn assert_cache_ids_are_not_tickets(code: i32, r: &Value, family: &str, knob: &str) {
    assert_verdict(code, r, "pass", 0);
    assert_eq!(
        r["targets"][0]["tls13"]["ticket_format"], "cache_id",
        "{r:#}"
    );
    assert!(has(r, "session_cache.tls13"), "{r:#}");
    no_stek_finding(r);
    assert_eq!(
        finding(r, "session_cache.old_session_accepted")["severity"],
        "low",
        "{r:#}"
    );
    assert_fix(r, "session_cache.old_session_accepted", knob);
    assert_fix(r, "session_cache.tls13", knob);
    assert_family(r, family);
    assert_once_per_target(r);
}

// ---- openssl s_server ---------------------------------------------------------------------
//
// Ground truth: openssl-s_server(1) (-www, -no_ticket, -Verify) and SSL_CTX_set_num_tickets(3):
// with SSL_OP_NO_TICKET a TLS 1.3 server still sends tickets, stateful ones: an id into its
// session cache (default timeout 7200 s, SSL_CTX_set_timeout(3)), no ticket key involved.

#[test]
fn s_server_with_tickets_is_openssl() {
    let (dir, cert) = setup();
    let server = SServer::start(dir.path(), &cert, &[]);
    let (code, r) = scan(&[&target(server.port)]);
    // One random key per process, made at start: nothing to flag in a short scan.
    assert_verdict(code, &r, "pass", 0);
    for v in ["tls12", "tls13"] {
        assert_eq!(r["targets"][0][v]["ticket_format"], "named", "{v}: {r:#}");
    }
    let mut got = ids(&r);
    got.sort();
    assert_eq!(
        got,
        [
            "session_id.resumption",
            "stek.rotation_unmeasured",
            "tickets.tls12",
            "tickets.tls13",
            "tls13.ticket_reuse"
        ],
        "{r:#}"
    );
    assert_family(&r, "openssl");
    assert_once_per_target(&r);
}

/// Issue 12, rule 4: session-cache ids are not ticket-key tickets; their lifetime is the cache's.
#[test]
fn s_server_no_ticket_cache_ids_are_not_stek_tickets() {
    let (dir, cert) = setup();
    let server = SServer::start(dir.path(), &cert, &["-no_ticket"]);
    let (code, r) = scan(&[
        &target(server.port),
        "--observe",
        "6s",
        "--max-acceptance",
        "2s",
    ]);
    // 6 s old cache entries still resume (the cache keeps them 2 h): a cache finding, low,
    // with OpenSSL's own knob for the cache, not a ticket key's.
    assert_cache_ids_are_not_tickets(code, &r, "openssl", "SSL_CTX_set_timeout");
}

/// Issue 12, rule 1: `-Verify 1` ends the handshake of a client without a certificate with an
/// alert (TLS 1.3: certificate_required, RFC 8446 §4.4.2.4); a client with one gets tickets. No
/// version completes, so the scan cannot say anything about tickets: exit 2, never "no tickets".
#[test]
fn s_server_requiring_a_client_certificate_is_not_no_tickets() {
    let (dir, cert) = setup();
    let server = SServer::start(dir.path(), &cert, &["-Verify", "1"]);
    // The ground truth, checked: a client with a certificate receives tickets on both versions.
    let client_dir = dir.path().join("client");
    std::fs::create_dir_all(&client_dir).unwrap();
    let client = make_cert(&client_dir);
    for flag in ["-tls1_2", "-tls1_3"] {
        let sess = dir.path().join(format!("sess{flag}.pem"));
        let mut s_client = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &target(server.port),
                flag,
                "-ign_eof",
            ])
            .arg("-cert")
            .arg(&client.cert)
            .arg("-key")
            .arg(&client.key)
            .arg("-sess_out")
            .arg(&sess)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl s_client");
        use std::io::Write as _;
        s_client
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .unwrap();
        let out = s_client.wait_with_output().unwrap();
        assert!(
            ticket_name(&sess).is_some(),
            "{flag} with a client certificate: no ticket\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let (code, r) = scan(&[&target(server.port)]);
    assert_verdict(code, &r, "error", 2);
    let t = &r["targets"][0];
    for v in ["tls12", "tls13"] {
        assert_eq!(t[v]["outcome"], "failed", "{v}: {r:#}");
        assert!(t[v]["alert"].is_string(), "{v}: the alert by name: {r:#}");
    }
    assert_eq!(t["tls13"]["alert"], "certificate_required", "{r:#}");
    // Whatever is said about tickets, it is not that there are none.
    for f in findings(&r) {
        let words = format!("{} {}", f["title"], f["evidence"]).to_lowercase();
        assert!(
            !words.contains("no ticket") && !words.contains("without a newsessionticket"),
            "{f:#}"
        );
    }
    let (code, text) = scan_text(&[&target(server.port)]);
    assert_eq!(code, 2, "{text}");
    assert!(
        !text.contains("no tickets") && !text.contains("not offered"),
        "{text}"
    );
    assert!(text.contains("certificate_required"), "{text}");
    // What the alert means, not only its name.
    assert!(text.contains("requires a client certificate"), "{text}");
    assert!(ids(&r).is_empty(), "{r:#}");
    assert_eq!(t["server_family"]["id"], "unknown", "{r:#}");
}

// ---- SNI, nginx with tickets off ------------------------------------------------------------

/// Issue 12, rule 7: RFC 6066 §3, "Literal IPv4 and IPv6 addresses are not permitted in
/// "HostName"": asked for `--sni 127.0.0.1`, stek sends none, and says so.
#[test]
fn an_ip_literal_sni_is_not_sent_and_the_scan_says_so() {
    let (dir, cert) = setup();
    let key = dir.path().join("ticket.key");
    std::fs::write(&key, random_bytes(80)).unwrap();
    let nginx = Nginx::start_with(
        &dir.path().join("nginx"),
        &cert,
        &format!("ssl_session_ticket_key {};", key.display()),
        "TLSv1.2 TLSv1.3",
    );
    let (code, r) = scan(&[&target(nginx.port), "--sni", "127.0.0.1"]);
    assert_verdict(code, &r, "pass", 0);
    assert!(r["targets"][0]["sni"].is_null(), "{r:#}");
    let warnings = r["warnings"].as_array().expect("warnings");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("SNI"))),
        "{r:#}"
    );
    assert_family(&r, "nginx");
    // The endpoint's heading names no SNI (it read "127.0.0.1:PORT, SNI 127.0.0.1").
    let (_, text) = scan_text(&[&target(nginx.port), "--sni", "127.0.0.1"]);
    let heading = text
        .lines()
        .find(|l| l.starts_with(&target(nginx.port)))
        .unwrap_or_else(|| panic!("no heading for the endpoint in\n{text}"));
    assert!(!heading.contains("SNI 127.0.0.1"), "{text}");
    assert_once_per_target(&r);
}

/// Issue 12, rule 4: nginx with `ssl_session_tickets off;` and a session cache (nginx's
/// ssl_session_tickets and ssl_session_cache documentation,
/// https://nginx.org/en/docs/http/ngx_http_ssl_module.html) sends TLS 1.3 tickets that are ids
/// into that cache. An old one resuming is the cache's timeout (1 h here), not a ticket key.
#[test]
fn nginx_tickets_off_cache_ids_are_not_old_tickets() {
    let (dir, cert) = setup();
    let nginx = Nginx::start_with_cache(
        &dir.path().join("nginx"),
        &cert,
        "ssl_session_tickets off;",
        "TLSv1.2 TLSv1.3",
        "shared:SSL:1m",
    );
    let (code, r) = scan(&[
        &target(nginx.port),
        "--observe",
        "6s",
        "--interval",
        "1s",
        "--max-acceptance",
        "2s",
    ]);
    // 6 s old sessions resume from the cache (ssl_session_timeout defaults to 5 min): the
    // cache's finding, with nginx's knob for it.
    assert_cache_ids_are_not_tickets(code, &r, "nginx", "ssl_session_timeout");
}
