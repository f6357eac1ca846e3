//! `stek up` feeding a real Apache: one key, so tickets resume within a period and die at each
//! rotation (stek warns about it at start).

mod util;

use std::fs;
use std::time::Duration;

use util::*;

const P: u64 = 4;
const SETTLE: Duration = Duration::from_millis(1800);

#[test]
fn apache_tickets_resume_within_a_period_and_rotate() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let root = dir.path().join("apache");
    let stek = stek_up(
        dir.path(),
        &[
            "--period",
            "4s",
            "--lifetime",
            "4s",
            "--no-memcached",
            "--sinks",
            "apache",
            "--on-change",
            &Apache::graceful_cmd(&root),
        ],
    );
    let key = dir.path().join("keys/apache/ticket.key");
    wait_for("stek's Apache key file", Duration::from_secs(20), || {
        key.exists().then_some(())
    });
    let apache = Apache::start(&root, &cert, &key);
    // stek warns that Apache's tickets die at each rotation, naming the period: once, at
    // start (checked again after the rotations below).
    let warning = "Apache holds one key: its tickets stop resuming at every rotation (every 4s)";
    assert_eq!(
        stek.log_text().matches(warning).count(),
        1,
        "{}",
        stek.log_text()
    );

    let sess = dir.path().join("t.sess");
    let mut names = Vec::new();
    let (t12, t13) = (dir.path().join("a12.sess"), dir.path().join("a13.sess"));
    for _ in 0..3 {
        // The current key seen and both tickets made in slot e, however slow the machine.
        let (e, name) = within_one_slot(P, SETTLE, |_| {
            let file = fs::read(&key).expect("key file");
            assert_eq!(file.len(), 48);
            let want = hex(&file[..16]);
            let name = wait_for(
                "Apache to encrypt with the current key",
                Duration::from_secs(3),
                || {
                    let n = fresh_ticket(apache.port, Tls::V12, &sess);
                    (n == want).then_some(n)
                },
            );
            fresh_ticket(apache.port, Tls::V12, &t12);
            fresh_ticket(apache.port, Tls::V13, &t13);
            // Within the period both versions resume.
            let resumed = [
                handshake(apache.port, Tls::V12, Some(&t12), None),
                handshake(apache.port, Tls::V13, Some(&t13), None),
            ];
            (name, resumed)
        });
        let (name, resumed) = name;
        assert!(!names.contains(&name), "a new key every period");
        names.push(name);
        assert_eq!(resumed, [true, true], "TLS 1.2 and 1.3 within the period");
        // After the rotation they are gone: Apache holds one key.
        sleep_until_slot(P, e + 1, SETTLE);
        assert!(
            !handshake(apache.port, Tls::V12, Some(&t12), None),
            "old TLS 1.2 ticket after a rotation"
        );
        assert!(
            !handshake(apache.port, Tls::V13, Some(&t13), None),
            "old TLS 1.3 ticket after a rotation"
        );
    }
    assert_eq!(stek.log_text().matches(warning).count(), 1, "warned once");
    drop(apache);
}
