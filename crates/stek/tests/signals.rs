//! Signals as a daemon takes them: SIGHUP, SIGUSR1 and SIGUSR2 are logged and change nothing
//! (rotation goes on), SIGPIPE is ignored, SIGTERM still ends `stek up` cleanly.

mod util;

use std::process::Command;
use std::time::Duration;

use util::*;

fn rotations(p: &Proc) -> usize {
    p.log_text().matches("rotated to slot").count()
}

fn kill(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

#[test]
fn hup_and_usr_signals_are_logged_and_rotation_goes_on_term_ends_cleanly() {
    let dir = shm_dir();
    let mut stek = stek_up(
        dir.path(),
        &[
            "--period",
            "2s",
            "--lifetime",
            "2s",
            "--no-memcached",
            "--sinks",
            "nginx",
        ],
    );
    let pid = stek.pid();
    wait_for("the first rotation", Duration::from_secs(20), || {
        (rotations(&stek) >= 1).then_some(())
    });

    // SIGPIPE is in the ignored set (Rust's runtime ignores it before main).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .expect("SigIgn");
    assert_ne!(ignored & (1 << (13 - 1)), 0, "SIGPIPE ignored: {ignored:x}");

    for (sig, line) in [
        (
            "HUP",
            "SIGHUP: stek does not reload its configuration; restart it to apply changes (keys and files are unchanged)",
        ),
        ("USR1", "SIGUSR1 ignored: stek has no use for it"),
        ("USR2", "SIGUSR2 ignored: stek has no use for it"),
    ] {
        kill(sig, pid);
        wait_for(&format!("the SIG{sig} log line"), Duration::from_secs(20), || {
            stek.log_text().contains(line).then_some(())
        });
        assert!(
            stek.log_text().lines().any(|l| l.contains("WARN") && l.contains(line)),
            "logged at WARN"
        );
        // Counted after the signal was handled: the next rotation proves the loop goes on.
        let before = rotations(&stek);
        wait_for(
            &format!("a rotation after SIG{sig}"),
            Duration::from_secs(20),
            || (rotations(&stek) > before).then_some(()),
        );
        assert!(
            stek.child.try_wait().expect("try_wait").is_none(),
            "stek up still runs after SIG{sig}"
        );
    }

    kill("TERM", pid);
    let exit = wait_for(
        "stek up to exit on SIGTERM",
        Duration::from_secs(20),
        || stek.child.try_wait().expect("try_wait"),
    );
    assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");
    assert!(stek.log_text().contains("terminated"), "logged");
}
