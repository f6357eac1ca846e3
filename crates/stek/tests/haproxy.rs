//! `stek up --haproxy-socket` feeding a real HAProxy 2.6 over its runtime API, P = L = 4 s:
//! keys rotate in the running process (same pid, no reload), its ring always equals the keys
//! file, tickets live one to two periods, and HAProxy converges however it comes and goes.

mod util;

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use util::*;

const P: u64 = 4;
/// How far into a slot the tests act: well after stek rotated and pushed (a few ms).
const SETTLE: Duration = Duration::from_millis(1000);
/// How long a pushed key may take to show up on a loaded machine (stays within the slot).
const PATIENCE: Duration = Duration::from_millis(2500);

struct Setup {
    dir: tempfile::TempDir,
    cert: Cert,
    stek: Proc,
    keys: PathBuf,
    socket: PathBuf,
}

/// `stek up` with the HAProxy socket of `dir` (nobody listens yet) and its keys file written.
fn stek_first(extra: &[&str]) -> Setup {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let socket = dir.path().join("admin.sock");
    let mut args = vec!["--period", "4s", "--lifetime", "4s", "--no-memcached"];
    args.extend(["--haproxy-socket", socket.to_str().expect("utf-8")]);
    args.extend(extra);
    let stek = stek_up(dir.path(), &args);
    let keys = dir.path().join("keys/haproxy/tickets.keys");
    wait_for("stek's HAProxy keys file", Duration::from_secs(20), || {
        keys.exists().then_some(())
    });
    Setup {
        dir,
        cert,
        stek,
        keys,
        socket,
    }
}

impl Setup {
    fn haproxy(&self) -> Haproxy {
        Haproxy::start(
            &self.dir.path().join("haproxy"),
            &self.cert,
            &self.keys,
            &self.socket,
        )
    }

    fn file(&self) -> Vec<String> {
        fs::read_to_string(&self.keys)
            .expect("keys file")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until HAProxy's ring equals the keys file; returns the ring.
    fn wait_in_step(&self, h: &Haproxy, within: Duration) -> Vec<String> {
        wait_for("HAProxy's ring to equal the keys file", within, || {
            let file = self.file();
            (file.len() == 3 && h.ring(&self.keys) == file).then_some(file)
        })
    }
}

/// The key name (hex) of a base64 HAProxy key.
fn name(b64: &str) -> String {
    let k = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 key");
    assert_eq!(k.len(), 80, "HAProxy keys are 80 bytes");
    hex(&k[..16])
}

/// Lines of `log` at `level` (INFO, WARN...) containing `needle`.
fn count(log: &str, level: &str, needle: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(level) && l.contains(needle))
        .count()
}

#[test]
fn keys_rotate_in_the_running_haproxy_and_match_the_file() {
    let s = stek_first(&["--sinks", "haproxy"]);
    let h = s.haproxy();
    let pid = h.proc.pid();
    let sess = s.dir.path().join("probe.sess");
    let mut seen: Vec<String> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    let mut last: Option<Vec<String>> = None;
    for _ in 0..3 {
        sleep_into_next_slot(P, SETTLE);
        let ring = s.wait_in_step(&h, PATIENCE);
        let current = name(&ring[1]);
        for tls in [Tls::V12, Tls::V13] {
            assert_eq!(
                fresh_ticket(h.port, tls, &sess),
                current,
                "{tls:?}: HAProxy encrypts with the middle key"
            );
        }
        assert!(!seen.contains(&current), "key {current} encrypted twice");
        seen.push(current);
        if let Some(prev) = last {
            // One push: the ring moved by one key.
            assert_eq!(
                ring[..2],
                prev[1..],
                "the ring shifts by one key per period"
            );
            assert_ne!(ring[2], prev[2]);
        }
        keys.extend(ring.iter().cloned());
        last = Some(ring);
        assert_eq!(
            h.info_pid(),
            pid,
            "the same HAProxy process, never reloaded"
        );
    }
    let log = s.stek.log_text();
    assert!(
        count(&log, "INFO", "pushed 1 key(s)") >= 3,
        "stek pushed every rotation:\n{log}"
    );
    for k in &keys {
        assert!(!log.contains(k.as_str()), "a key in stek's log");
    }
}

#[test]
fn a_ticket_resumes_after_one_rotation_and_not_after_two_or_three() {
    let s = stek_first(&["--sinks", "haproxy"]);
    let h = s.haproxy();
    let d = s.dir.path();
    let (t12, t13) = (d.join("t12.sess"), d.join("t13.sess"));
    // Both tickets made in slot e, under its key, however slow the machine.
    let (e, ()) = within_one_slot(P, SETTLE, |_| {
        s.wait_in_step(&h, PATIENCE);
        fresh_ticket(h.port, Tls::V12, &t12);
        fresh_ticket(h.port, Tls::V13, &t13);
    });
    assert!(
        handshake(h.port, Tls::V12, Some(&t12), None),
        "TLS 1.2 at once"
    );
    assert!(
        handshake(h.port, Tls::V13, Some(&t13), None),
        "TLS 1.3 at once"
    );

    // One rotation later the ticket's key is HAProxy's previous key.
    sleep_until_slot(P, e + 1, SETTLE);
    s.wait_in_step(&h, PATIENCE);
    assert!(
        handshake(h.port, Tls::V12, Some(&t12), None),
        "TLS 1.2 after one rotation"
    );
    assert!(
        handshake(h.port, Tls::V13, Some(&t13), None),
        "TLS 1.3 after one rotation"
    );
    // Two and three rotations later it left HAProxy's three keys.
    for later in [2, 3] {
        sleep_until_slot(P, e + later, SETTLE);
        s.wait_in_step(&h, PATIENCE);
        assert!(
            !handshake(h.port, Tls::V12, Some(&t12), None),
            "TLS 1.2 after {later} rotations"
        );
        assert!(
            !handshake(h.port, Tls::V13, Some(&t13), None),
            "TLS 1.3 after {later} rotations"
        );
    }
}

#[test]
fn haproxy_started_late_restarted_or_changed_converges_within_a_period() {
    let s = stek_first(&["--sinks", "haproxy"]);
    let period = Duration::from_secs(P);
    // Nobody listens on the socket yet: stek says so once and carries on.
    wait_for("the socket error in stek's log", period, || {
        s.stek
            .log_text()
            .contains("cannot connect to the admin socket")
            .then_some(())
    });

    // HAProxy started after stek: in step, then follows the next rotation.
    let e = sleep_into_next_slot(P, Duration::from_millis(500));
    let h = s.haproxy();
    s.wait_in_step(&h, period);
    sleep_until_slot(P, e + 1, SETTLE);
    let ring = s.wait_in_step(&h, PATIENCE);
    let pid = h.proc.pid();

    // Restarted mid-run: killed, down across a rotation, started again with a new pid.
    drop(h);
    sleep_until_slot(P, e + 2, SETTLE);
    let h = s.haproxy();
    assert_ne!(h.proc.pid(), pid, "a new HAProxy process");
    let after = s.wait_in_step(&h, period);
    assert_ne!(after, ring, "the ring moved on while HAProxy was down");
    sleep_until_slot(P, e + 3, SETTLE);
    s.wait_in_step(&h, PATIENCE);
    assert_eq!(h.info_pid(), h.proc.pid());

    // Holding a different ring (another client set a key): repaired by stek's next check.
    let junk = base64::engine::general_purpose::STANDARD.encode([7u8; 80]);
    // HAProxy's reply proves the foreign key went in; reading the ring back could race stek's
    // one-second check, which may already have repaired it. The repair itself is proven by a
    // push logged after the foreign key was set.
    let pushes = |log: &str| log.matches(": pushed ").count();
    let before = pushes(&s.stek.log_text());
    let t0 = Instant::now();
    let reply = h.cmd(&format!("set ssl tls-key {} {junk}", s.keys.display()));
    assert!(reply.starts_with("TLS ticket key updated!"), "{reply}");
    wait_for("stek to push its keys over the foreign one", period, || {
        (pushes(&s.stek.log_text()) > before).then_some(())
    });
    s.wait_in_step(&h, period);
    assert!(t0.elapsed() < period, "repaired within a period");

    let log = s.stek.log_text();
    assert!(
        log.contains("ring(s) ") && log.contains("in step"),
        "stek logs that HAProxy is in step:\n{log}"
    );
    // Each outage is logged when it starts, not at every retry (it lasted several retries).
    let outages = count(&log, "WARN", "cannot connect to the admin socket");
    assert!(
        (2..=3).contains(&outages),
        "{outages} socket warnings:\n{log}"
    );
}

/// Sends `request` to a loopback TCP port and reads the reply until the server closes.
fn tcp_request(port: u16, request: &str) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read");
    out
}

fn http_get(port: u16, path: &str) -> String {
    tcp_request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

fn encrypting_names(dir: &Path) -> (String, String) {
    let nginx = nginx_conf_names(&dir.join("keys/nginx/tickets.conf"))[0].clone();
    let apache = fs::read(dir.join("keys/apache/ticket.key")).expect("apache key");
    (nginx, hex(&apache[..16]))
}

#[test]
fn a_dead_socket_does_not_stop_the_other_sinks() {
    let dir = shm_dir();
    let (mc, metrics) = (free_port(), free_port());
    // The socket comes from the config file, like every other sink setting.
    let dead = dir.path().join("nobody-listens.sock");
    let config = dir.path().join("stek.toml");
    fs::write(
        &config,
        format!("haproxy_socket = [{:?}]\n", dead.display().to_string()),
    )
    .expect("config");
    let mc_addr = format!("127.0.0.1:{mc}");
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let stek = stek_up(
        dir.path(),
        &[
            "--period",
            "4s",
            "--lifetime",
            "8s",
            "--sinks",
            "nginx,apache",
            "--memcached",
            &mc_addr,
            "--metrics",
            &metrics_addr,
            "--config",
            config.to_str().expect("utf-8"),
        ],
    );
    wait_nginx_conf(dir.path());
    wait_port(mc);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let e = sleep_into_next_slot(P, SETTLE);
        let names = encrypting_names(dir.path());
        assert_eq!(
            names.0, names.1,
            "nginx and Apache encrypt with the same key"
        );
        assert!(!seen.contains(&names.0), "the files rotate");
        seen.push(names.0);
        let schedule = tcp_request(mc, "get ticket-schedule\r\nquit\r\n");
        assert!(
            schedule.contains(&format!("slot={e} ")),
            "memcached serves slot {e}: {schedule}"
        );
        assert!(
            dir.path().join("keys/haproxy/tickets.keys").exists(),
            "the HAProxy keys file is written all the same"
        );
    }
    let log = stek.log_text();
    assert_eq!(
        count(&log, "WARN", "cannot connect to the admin socket"),
        1,
        "the dead socket is logged once, not at every retry:\n{log}"
    );
    assert!(
        log.contains("HAProxy holds 3 keys"),
        "--haproxy-socket brings the L > P warning"
    );
    let m = http_get(metrics, "/metrics");
    let label = format!("socket=\"{}\"", dead.display());
    assert!(
        m.contains(&format!("stek_haproxy_socket_up{{{label}}} 0")),
        "{m}"
    );
    let status = http_get(metrics, "/status");
    assert!(
        status.contains("\"ok\": false") && status.contains("No such file"),
        "{status}"
    );
}

#[test]
fn stek_agent_warns_when_haproxy_shortens_the_lifetime() {
    let dir = shm_dir();
    let stek = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stek"))
            .args(args)
            .output()
            .expect("run stek");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let id = dir.path().join("web.identity");
    let gen = dir.path().join("generator.key");
    stek(&[
        "keygen",
        "--kind",
        "group",
        "--out",
        id.to_str().expect("utf-8"),
    ]);
    let trust = stek(&[
        "keygen",
        "--kind",
        "generator",
        "--out",
        gen.to_str().expect("utf-8"),
    ]);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stek"));
    cmd.args(["agent", "--store", "redis://127.0.0.1:1", "--group", "web"])
        .arg("--identity")
        .arg(&id)
        .args(["--trust", &trust, "--period", "1h", "--lifetime", "2h"])
        .args(["--sinks", "nginx", "--no-memcached", "--dir"])
        .arg(dir.path().join("keys"))
        .arg("--haproxy-socket")
        .arg(dir.path().join("admin.sock"));
    let agent = Proc::spawn("stek agent", &mut cmd, dir.path().join("agent.log"));
    let warning = "HAProxy holds 3 keys: its tickets stop resuming 1 to 2 periods after they were issued (1h to 2h), not after the lifetime of 2h; on HAProxy hosts choose --lifetime <= --period";
    // A warning, not a refusal: the agent goes on to deliver keys (its own, the store being
    // unreachable) to its sinks, HAProxy's file among them (a socket implies it).
    let haproxy_file = dir.path().join("keys/haproxy/tickets.keys");
    wait_for(
        "the agent's HAProxy lifetime warning and its first files",
        Duration::from_secs(20),
        || {
            (agent.log_text().contains(warning)
                && dir.path().join("keys/nginx/tickets.conf").exists()
                && haproxy_file.exists())
            .then_some(())
        },
    );
    assert_eq!(
        std::fs::read_to_string(&haproxy_file)
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert_eq!(
        agent.log_text().matches(warning).count(),
        1,
        "{}",
        agent.log_text()
    );
}
