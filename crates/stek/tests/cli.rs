//! The command line, checked as a user would run it.

mod util;

use std::process::Command;

fn stek(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stek"))
        .args(args)
        .output()
        .expect("run stek");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_explains_every_flag() {
    let (code, out, _) = stek(&["up", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--period",
        "--lifetime",
        "--dir",
        "--allow-persistent-dir",
        "--memcached",
        "--memcached-allow-remote",
        "--no-memcached",
        "--on-change",
        "--sinks",
        "--group",
        "--memcached-max-connections",
        "--haproxy-socket",
        "--allow-large-window",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
    assert!(out.contains("tmpfs"), "--help says where keys may live");
    assert!(out.contains("nginx/tickets.conf"), "--help names the files");
    assert!(
        out.contains("set ssl tls-key"),
        "--help explains the HAProxy runtime API"
    );
}

#[test]
fn bad_flags_give_one_line_and_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["up", "--bogus"], "--bogus"),
        (&["up", "--period", "0s"], "longer than zero"),
        (&["up", "--period", "-4s"], "negative"),
        (&["up", "--period", "4"], "unit"),
        (&["up", "--lifetime", "8d"], "7d"),
        (&["up", "--sinks", "iis"], "iis"),
        (&["up", "--group", "a b"], "group"),
        (&["nope"], "nope"),
    ];
    for (args, needle) in cases {
        let (code, out, err) = stek(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed to stdout");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line, got {err:?}"
        );
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should mention {needle:?}"
        );
    }
}

#[test]
fn a_persistent_dir_is_refused_before_anything_is_written() {
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let dir = base.path().join("keys");
    let (code, _, err) = stek(&[
        "up",
        "--period",
        "4s",
        "--lifetime",
        "8s",
        "--dir",
        dir.to_str().expect("utf-8"),
    ]);
    if code == 1 {
        assert!(err.contains("persistent file system"), "{err}");
        assert!(
            err.contains("ext")
                || err.contains("xfs")
                || err.contains("btrfs")
                || err.contains("overlay"),
            "names the file system: {err}"
        );
        assert!(!dir.exists(), "nothing may be written");
    } else {
        panic!("stek up on a persistent dir must exit 1, got {code}: {err}");
    }
}

#[test]
fn a_large_window_is_refused_before_anything_is_written() {
    let base = util::shm_dir();
    let dir = base.path().join("keys");
    let dir_arg = dir.to_str().expect("utf-8");
    let (code, out, err) = stek(&["up", "--period", "1s", "--lifetime", "7d", "--dir", dir_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    for needle in [
        "604802 keys",
        "1000 keys",
        "KiB of locked memory",
        "--allow-large-window",
    ] {
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
    assert!(!dir.exists(), "nothing may be written");
    // The same refusal from the config file's schedule.
    let config = base.path().join("stek.toml");
    std::fs::write(&config, "period = \"1s\"\nlifetime = \"2h\"\n").expect("config");
    let (code, _, err) = stek(&["up", "--dir", dir_arg, "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("7202 keys"), "{err}");
    assert!(!dir.exists(), "nothing may be written");
}
