//! The command line, checked as a user would run it.

mod util;

use std::fs;
use std::process::Command;
use std::time::Duration;

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
        "--allow-large-window",
        "--nghttpx-cipher",
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
        (
            &["up", "--nghttpx-cipher", "aes-128-gcm"],
            "aes-128-cbc or aes-256-cbc",
        ),
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

/// `stek keygen --kind KIND --out PATH`: the public key.
fn keygen(kind: &str, out: &std::path::Path) -> String {
    let (code, public, err) = stek(&["keygen", "--kind", kind, "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    public.trim().to_owned()
}

/// Private keys are checked like OpenSSH checks its own: a key that group or others may read, a
/// key of another user, a link, a directory are each refused with one line naming the file and
/// the fix, before anything is written or connected; a 0600 key goes on to the store.
#[test]
fn private_keys_must_be_private_regular_files_of_this_user() {
    use std::os::unix::fs::PermissionsExt as _;
    let base = util::shm_dir();
    let root = base.path();
    let gen_pub = keygen("generator", &root.join("generator.key"));
    let group_pub = keygen("group", &root.join("web.identity"));
    let dir = root.join("keys");
    let store = format!("redis://127.0.0.1:{}", util::free_port());
    let group_spec = format!("web={group_pub}");
    let agent = |identity: &std::path::Path| {
        stek(&[
            "agent",
            "--store",
            &store,
            "--group",
            "web",
            "--identity",
            identity.to_str().unwrap(),
            "--trust",
            &gen_pub,
            "--dir",
            dir.to_str().unwrap(),
        ])
    };
    let generator = |key: &std::path::Path| {
        stek(&[
            "generator",
            "--store",
            &store,
            "--signing-key",
            key.to_str().unwrap(),
            "--group",
            &group_spec,
        ])
    };
    for (kind, good) in [
        ("identity", "web.identity"),
        ("signing key", "generator.key"),
    ] {
        let run = |p: &std::path::Path| {
            if kind == "identity" {
                agent(p)
            } else {
                generator(p)
            }
        };
        let text = fs::read(root.join(good)).unwrap();
        let case = |name: &str, mode: u32| {
            let p = root.join(name);
            fs::write(&p, &text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let p644 = case("k644", 0o644);
        let p640 = case("k640", 0o640);
        let nobody = case("nobody", 0o600);
        std::os::unix::fs::chown(&nobody, Some(65534), None).expect("chown (tests run as root)");
        let link = root.join("link");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(root.join(good), &link).unwrap();
        let subdir = root.join("subdir");
        let _ = fs::create_dir(&subdir);
        let cases: Vec<(&std::path::PathBuf, String)> = vec![
            (
                &p644,
                format!(
                    "private key {0} (owner uid 0) has mode 0644: group or others may read it; run `chmod 600 {0}`",
                    p644.display()
                ),
            ),
            (
                &p640,
                format!(
                    "private key {0} (owner uid 0) has mode 0640: group or others may read it; run `chmod 600 {0}`",
                    p640.display()
                ),
            ),
            (
                &nobody,
                format!(
                    "private key {0} is owned by uid 65534 (mode 0600), not by uid 0 running stek or root: run `chown 0 {0}`",
                    nobody.display()
                ),
            ),
            (
                &link,
                format!(
                    "private key {} is a symbolic link: stek does not follow links to private keys; give the file itself",
                    link.display()
                ),
            ),
            (
                &subdir,
                format!(
                    "private key {} is a directory, not a regular file",
                    subdir.display()
                ),
            ),
        ];
        for (path, want) in &cases {
            let (code, out, err) = run(path);
            assert_eq!(code, 1, "{kind} {}: {err}", path.display());
            assert!(out.is_empty(), "{out}");
            assert_eq!(err.trim_end(), format!("stek: {want}"), "{kind}");
            assert!(!dir.exists(), "{kind}: nothing may be written");
        }
        fs::remove_file(&p644).unwrap();
        fs::remove_file(&p640).unwrap();
        fs::remove_file(&nobody).unwrap();
    }
    // 0600 (as `stek keygen` writes it): the generator reads its key and goes on to the store,
    // which does not answer.
    let (code, _, err) = generator(&root.join("generator.key"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("publishing to {store}")), "{err}");
    assert!(err.contains("cannot use the store"), "{err}");
    // The agent opens its identity and runs (serving local keys while the store is down).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stek"));
    cmd.args(["agent", "--store", &store, "--group", "web", "--identity"])
        .arg(root.join("web.identity"))
        .args(["--trust", &gen_pub, "--dir"])
        .arg(&dir);
    let agent = util::Proc::spawn("stek agent", &mut cmd, root.join("agent.log"));
    util::wait_for(
        "the agent to open its identity",
        Duration::from_secs(20),
        || {
            agent
                .log_text()
                .contains(&format!("agent for group web with identity {group_pub}"))
                .then_some(())
        },
    );
}
