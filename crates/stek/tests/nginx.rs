//! `stek up` feeding a real nginx on loopback, P = 4 s, L = 8 s (R = 2: four keys per window):
//! 80-byte key files by default, and 48-byte ones that nginx hosts fed over memcached share.

mod util;

use std::fs;
use std::time::Duration;

use util::*;

const P: u64 = 4;
/// How far into a slot the tests act: well after stek rotated and nginx reloaded (~150 ms).
const SETTLE: Duration = Duration::from_millis(1500);

struct Setup {
    dir: tempfile::TempDir,
    stek: Proc,
    conf: std::path::PathBuf,
    nginx: Vec<Nginx>,
}

fn setup(instances: usize) -> Setup {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let prefixes: Vec<_> = (0..instances)
        .map(|i| dir.path().join(format!("nginx{i}")))
        .collect();
    let reload = prefixes
        .iter()
        .map(|p| Nginx::reload_cmd(p))
        .collect::<Vec<_>>()
        .join(" && ");
    let stek = stek_up(
        dir.path(),
        &[
            "--period",
            "4s",
            "--lifetime",
            "8s",
            "--no-memcached",
            "--sinks",
            "nginx",
            "--on-change",
            &reload,
        ],
    );
    let conf = wait_nginx_conf(dir.path());
    let nginx = prefixes
        .iter()
        .map(|p| Nginx::start(p, &cert, &conf))
        .collect();
    Setup {
        dir,
        stek,
        conf,
        nginx,
    }
}

impl Setup {
    /// Waits until every nginx encrypts with the key stek's include file puts first.
    fn wait_current(&self, tls: Tls) -> String {
        let sess = self.dir.path().join("probe.sess");
        let want = nginx_conf_names(&self.conf)[0].clone();
        for n in &self.nginx {
            wait_for(
                "nginx to encrypt with stek's current key",
                Duration::from_secs(3),
                || (fresh_ticket(n.port, tls, &sess) == want).then_some(()),
            );
        }
        want
    }
}

#[test]
fn ticket_names_change_at_every_period_boundary() {
    let s = setup(1);
    let mut seen = Vec::new();
    for _ in 0..3 {
        sleep_into_next_slot(P, SETTLE);
        let names = nginx_conf_names(&s.conf);
        assert_eq!(names.len(), 4, "R + 2 = 4 keys for P = 4s, L = 8s");
        let name = s.wait_current(Tls::V12);
        assert_eq!(
            s.wait_current(Tls::V13),
            name,
            "TLS 1.3 tickets use the same key"
        );
        assert!(!seen.contains(&name), "key {name} encrypted in two periods");
        if let Some(prev) = seen.last() {
            // The previous encrypting key is still held, right after the next key.
            assert_eq!(&names[2], prev, "the previous key is the first past key");
        }
        seen.push(name);
    }
    // The log names each key nginx was seen encrypting with, and a reload for each rotation.
    let log = s.stek.log_text();
    for name in &seen {
        assert!(
            log.contains(&format!("key {name} encrypts")),
            "stek's log does not name key {name}:\n{log}"
        );
    }
    assert!(
        log.matches("reload ok").count() >= seen.len(),
        "a reload logged per rotation:\n{log}"
    );
}

#[test]
fn tickets_resume_across_rotations_until_the_key_is_erased() {
    let s = setup(1);
    let port = s.nginx[0].port;
    let d = s.dir.path();
    let (t12, t13) = (d.join("t12.sess"), d.join("t13.sess"));
    // Both tickets made in slot e, under its key, however slow the machine.
    let (e, minted) = within_one_slot(P, SETTLE, |_| {
        s.wait_current(Tls::V12);
        let minted = unix_now();
        fresh_ticket(port, Tls::V12, &t12);
        fresh_ticket(port, Tls::V13, &t13);
        minted
    });
    assert!(
        handshake(port, Tls::V12, Some(&t12), None),
        "TLS 1.2 ticket resumes at once"
    );
    assert!(
        handshake(port, Tls::V13, Some(&t13), None),
        "TLS 1.3 ticket resumes at once"
    );

    // One and two rotations later: the key is a past key, both still resume.
    for later in [1, 2] {
        sleep_until_slot(P, e + later, SETTLE);
        assert!(
            handshake(port, Tls::V12, Some(&t12), None),
            "TLS 1.2 ticket after {later} rotation(s)"
        );
        assert!(
            handshake(port, Tls::V13, Some(&t13), None),
            "TLS 1.3 ticket after {later} rotation(s)"
        );
    }
    // R + 1 = 3 rotations later the key left every window and was erased.
    sleep_until_slot(P, e + 3, SETTLE);
    assert!(
        !handshake(port, Tls::V12, Some(&t12), None),
        "TLS 1.2 ticket after its key was erased"
    );
    assert!(
        !handshake(port, Tls::V13, Some(&t13), None),
        "TLS 1.3 ticket after its key was erased"
    );
    // And certainly once older than L + 2P = 16 s (nginx's own timeout is 1 h: it is the key's
    // erasure that refuses the ticket).
    std::thread::sleep((minted + Duration::from_secs(16)).saturating_sub(unix_now()));
    assert!(!handshake(port, Tls::V12, Some(&t12), None));
    assert!(!handshake(port, Tls::V13, Some(&t13), None));
}

#[test]
fn two_nginx_sharing_the_files_resume_each_others_tickets() {
    let s = setup(2);
    let (a, b) = (s.nginx[0].port, s.nginx[1].port);
    let e = sleep_into_next_slot(P, SETTLE);
    s.wait_current(Tls::V12);
    let d = s.dir.path();
    for tls in [Tls::V12, Tls::V13] {
        let (ta, tb) = (d.join("a.sess"), d.join("b.sess"));
        fresh_ticket(a, tls, &ta);
        fresh_ticket(b, tls, &tb);
        assert!(
            handshake(b, tls, Some(&ta), None),
            "{tls:?}: a's ticket on b"
        );
        assert!(
            handshake(a, tls, Some(&tb), None),
            "{tls:?}: b's ticket on a"
        );
    }
    // Across a rotation as well.
    let (ta, tb) = (d.join("a12.sess"), d.join("b13.sess"));
    fresh_ticket(a, Tls::V12, &ta);
    fresh_ticket(b, Tls::V13, &tb);
    sleep_until_slot(P, e + 1, SETTLE);
    assert!(
        handshake(b, Tls::V12, Some(&ta), None),
        "a's TLS 1.2 ticket on b after a rotation"
    );
    assert!(
        handshake(a, Tls::V13, Some(&tb), None),
        "b's TLS 1.3 ticket on a after a rotation"
    );
}

/// A mixed fleet: nginx A reads stek's files written with `--nginx-key-size 48`; nginx B holds
/// what Cloudflare's lua-ssl-nginx-module installs, the values of `ticket-key/<slot start>`
/// fetched over memcached (the current slot's key first: it encrypts). A's files hold exactly
/// those bytes, and tickets from A resume on B and from B on A, in TLS 1.2 and 1.3. A control,
/// nginx C, holds keys with the same names and layout but other bytes (`ticket-ring/nginx-48`):
/// A's tickets do not resume there, so the resumption above comes from the shared bytes.
#[test]
fn nginx_48_files_and_hosts_fed_by_ticket_key_resume_each_other() {
    let dir = shm_dir();
    let d = dir.path();
    let cert = make_cert(d);
    let port = free_port();
    let a_prefix = d.join("a");
    let _stek = stek_up(
        d,
        &[
            "--period",
            "4s",
            "--lifetime",
            "8s",
            "--sinks",
            "nginx",
            "--nginx-key-size",
            "48",
            "--memcached",
            &format!("127.0.0.1:{port}"),
            "--on-change",
            &Nginx::reload_cmd(&a_prefix),
        ],
    );
    let conf = wait_nginx_conf(d);
    let a = Nginx::start(&a_prefix, &cert, &conf);
    wait_port(port);
    let e = sleep_into_next_slot(P, SETTLE);
    let files = nginx_conf_keys(&conf);
    assert_eq!(files.len(), 4, "R + 2 = 4 keys for P = 4s, L = 8s");
    assert!(files.iter().all(|(_, k)| k.len() == 48), "48-byte files");
    let current = hex(&files[0].1[..16]);
    let sess = d.join("probe.sess");
    wait_for(
        "nginx A to encrypt with stek's current key",
        Duration::from_secs(3),
        || (fresh_ticket(a.port, Tls::V12, &sess) == current).then_some(()),
    );

    // What the Lua client does at start: get ticket-key/<start> of the current slot, the past
    // ones and the next one; a miss (a slot stek had no shared key for) is skipped.
    let mut mc = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut served = std::collections::BTreeMap::new();
    for slot in [e, e + 1, e - 1, e - 2] {
        if let Some(v) = memcached_get(&mut mc, &format!("ticket-key/{}", slot * P)) {
            served.insert(slot, v);
        }
    }
    assert!(
        served.contains_key(&e) && served.contains_key(&(e + 1)),
        "current and next served"
    );
    // A's files are those values, byte for byte.
    for (path, bytes) in &files {
        let start: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        if let Some(v) = served.get(&(start / P)) {
            // assert!, not assert_eq!: a failure must not print key bytes.
            assert!(bytes == v, "{}: not the ticket-key value", path.display());
        }
    }
    let key_lines = |name: &str, keys: &[&[u8]]| {
        let kd = d.join(name).join("keys");
        fs::create_dir_all(&kd).unwrap();
        keys.iter()
            .enumerate()
            .map(|(i, k)| {
                let f = kd.join(format!("{i}.key"));
                fs::write(&f, k).unwrap();
                format!("ssl_session_ticket_key {};", f.display())
            })
            .collect::<Vec<_>>()
            .join("\n    ")
    };
    // B: the current key first (it encrypts), then the rest, as the Lua client installs them.
    let mut order: Vec<&[u8]> = vec![served[&e].as_slice()];
    order.extend(served.iter().filter(|(s, _)| **s != e).map(|(_, v)| &v[..]));
    let b = Nginx::start_with(
        &d.join("b"),
        &cert,
        &key_lines("b", &order),
        "TLSv1.2 TLSv1.3",
    );
    // C: the same names in the same layout, other bytes.
    let ring = memcached_get(&mut mc, "ticket-ring/nginx-48").unwrap();
    let control: Vec<&[u8]> = ring.chunks(48).collect();
    assert_eq!(hex(&control[0][..16]), current);
    let c = Nginx::start_with(
        &d.join("c"),
        &cert,
        &key_lines("c", &control),
        "TLSv1.2 TLSv1.3",
    );

    let names: Vec<String> = served.values().map(|v| hex(&v[..16])).collect();
    for tls in [Tls::V12, Tls::V13] {
        let (ta, tb) = (d.join("a.sess"), d.join("b.sess"));
        let from_a = fresh_ticket(a.port, tls, &ta);
        let from_b = fresh_ticket(b.port, tls, &tb);
        assert!(
            names.contains(&from_a) && names.contains(&from_b),
            "{tls:?}: shared keys"
        );
        assert!(
            handshake(b.port, tls, Some(&ta), None),
            "{tls:?}: A's ticket on B"
        );
        assert!(
            handshake(a.port, tls, Some(&tb), None),
            "{tls:?}: B's ticket on A"
        );
        assert!(
            !handshake(c.port, tls, Some(&ta), None),
            "{tls:?}: A's ticket on C, whose keys have the names but not the bytes"
        );
    }
}
