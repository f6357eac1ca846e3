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
        "--memcached-max-connections-per-peer",
        "--memcached-request-timeout",
        "--memcached-group",
        "--haproxy-socket",
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
        (&["up", "--memcached-max-connections", "0"], "between 1 and"),
        (
            &["up", "--memcached-max-connections", "99999999"],
            "between 1 and",
        ),
        (&["up", "--memcached-max-connections", "-1"], "-1"),
        (
            &["up", "--memcached-max-connections-per-peer", "0"],
            "between 1 and",
        ),
        (
            &["up", "--memcached-request-timeout", "0s"],
            "request timeout",
        ),
        (
            &["up", "--memcached-request-timeout", "2d"],
            "request timeout",
        ),
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
fn nonsensical_memcached_settings_stop_the_start_with_one_line() {
    let dir = util::shm_dir();
    let keys = dir.path().join("keys");
    let keys = keys.to_str().expect("utf-8");
    let config = dir.path().join("stek.toml");
    let cases: &[(&[&str], &str, &str)] = &[
        (&[], "memcached_max_connections = 0", "between 1 and"),
        (&[], "memcached_max_connections_per_peer = 0", "at least 1"),
        (
            &["--memcached-max-connections", "100"],
            "memcached_max_connections_per_peer = 200",
            "more than max connections",
        ),
        (
            &["--memcached-group", "no-such-group-stek"],
            "",
            "no group \"no-such-group-stek\"",
        ),
    ];
    for (args, file, needle) in cases {
        std::fs::write(&config, file).expect("config");
        let mut all = vec![
            "up",
            "--dir",
            keys,
            "--config",
            config.to_str().expect("utf-8"),
        ];
        all.extend_from_slice(args);
        let (code, _, err) = stek(&all);
        assert_eq!(code, 1, "{args:?} {file}: {err}");
        let last = err.trim_end().lines().last().unwrap_or_default();
        assert!(last.starts_with("stek: "), "{args:?} {file}: {err}");
        assert!(last.contains(needle), "{args:?} {file}: {err}");
        assert!(
            !err.contains("memory locked") && !err.contains("serving ticket keys"),
            "stopped before serving: {err}"
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
