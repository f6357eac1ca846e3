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
        "--nginx-key-size",
        "--nghttpx-cipher",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
    // Why one would pick 48: the bytes of ticket-key/<slot>, which Cloudflare's client installs.
    for help in [out.clone(), stek(&["agent", "--help"]).1] {
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains("ticket-key/<slot start>") && flat.contains("lua-ssl-nginx-module"),
            "--help explains --nginx-key-size 48: {help}"
        );
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
        (&["up", "--nginx-key-size", "64"], "48 or 80"),
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

/// Completion scripts and manual pages come from the same clap definitions as --help: every
/// subcommand and flag is in them, and the shells accept the scripts.
#[test]
fn completions_and_man_pages_cover_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = stek(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        for word in ["scan", "agent", "generator", "observe", "haproxy-socket"] {
            assert!(out.contains(word), "{shell} completions lack {word}");
        }
    }
    // bash reads its script without a syntax error (bash is on every Debian machine).
    let (_, script, _) = stek(&["completions", "bash"]);
    let status = Command::new("bash")
        .args(["-n", "-c", &script])
        .status()
        .expect("run bash");
    assert!(status.success(), "bash -n rejects the completion script");
    let (code, _, err) = stek(&["completions", "ksh"]);
    assert_eq!(code, 2, "an unknown shell is a usage error: {err}");
    assert!(err.contains("ksh"), "{err}");

    let (code, page, _) = stek(&["man"]);
    assert_eq!(code, 0);
    assert!(page.contains(".TH stek 1"), "{page}");
    for sub in ["up", "keygen", "generator", "agent", "status", "scan"] {
        assert!(page.contains(sub), "the main page lists {sub}");
        let (code, page, err) = stek(&["man", sub]);
        assert_eq!(code, 0, "{sub}: {err}");
        assert!(page.contains(&format!(".TH stek-{sub} 1")), "{sub}: {page}");
    }
    let (_, scan, _) = stek(&["man", "scan"]);
    for flag in ["observe", "max\\-rotation", "html"] {
        assert!(scan.contains(flag), "stek-scan(1) lacks {flag}");
    }
    let (code, _, err) = stek(&["man", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("no subcommand \"nope\""), "{err}");
}

/// The example configs in contrib/ pass `stek check` once their placeholders hold real keys and
/// paths; broken variants fail with exit 2 and one line naming the problem (and the config line).
#[test]
fn stek_check_accepts_the_examples_and_names_each_problem() {
    let dir = util::shm_dir();
    let d = dir.path();
    let contrib = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../contrib");
    let keygen = |kind: &str, out: &str| -> String {
        let (code, stdout, err) = stek(&[
            "keygen",
            "--kind",
            kind,
            "--out",
            &d.join(out).to_string_lossy(),
        ]);
        assert_eq!(code, 0, "{err}");
        stdout.lines().last().unwrap().trim().to_owned()
    };
    let generator_pub = keygen("generator", "generator.key");
    let group_pub = keygen("group", "web.identity");
    let keys = d.join("keys");
    let fill = |name: &str| -> String {
        fs::read_to_string(contrib.join(name))
            .unwrap()
            .replace(
                "stek-generator1:REPLACE-WITH-YOUR-GENERATOR-PUBLIC-KEY",
                &generator_pub,
            )
            .replace("stek-group1:REPLACE-WITH-YOUR-GROUP-PUBLIC-KEY", &group_pub)
            .replace(
                "/etc/stek/generator.key",
                &d.join("generator.key").to_string_lossy(),
            )
            .replace(
                "/etc/stek/web.identity",
                &d.join("web.identity").to_string_lossy(),
            )
            .replace("/run/stek", &keys.to_string_lossy())
    };
    let check = |cmd: &str, text: &str| -> (i32, String) {
        let f = d.join(format!("{cmd}.toml"));
        fs::write(&f, text).unwrap();
        let (code, out, err) = stek(&["check", cmd, "--config", &f.to_string_lossy()]);
        (code, format!("{out}{err}"))
    };
    for cmd in ["up", "agent", "generator"] {
        let (code, out) = check(cmd, &fill(&format!("{cmd}.toml")));
        assert_eq!(code, 0, "contrib/{cmd}.toml: {out}");
        assert!(out.contains(&format!("ok: stek {cmd}")), "{out}");
        assert!(
            !keys.exists(),
            "stek check must not create the key directory"
        );
    }
    // The placeholders themselves are refused with the reason.
    let (code, out) = check(
        "agent",
        &fs::read_to_string(contrib.join("agent.toml")).unwrap(),
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("REPLACE-WITH-YOUR-GENERATOR-PUBLIC-KEY"),
        "{out}"
    );

    let agent = fill("agent.toml");
    let period_line = agent.lines().position(|l| l.starts_with("period")).unwrap() + 1;
    let at_line = format!("line {period_line} (`period = 3600");
    let broken: Vec<(&str, String, &str)> = vec![
        (
            "agent",
            agent.replace("period = \"1h\"", "period = 3600"),
            &at_line,
        ),
        (
            "agent",
            agent.replace("sinks = [\"nginx\"]", "sinks = \"nginx\""),
            "expected a sequence",
        ),
        (
            "agent",
            agent.replace("group = \"web\"", "groop = \"web\""),
            "unknown field `groop`",
        ),
        (
            "agent",
            agent.replace("lifetime = \"18h\"", "lifetime = \"8d\""),
            "lifetime",
        ),
        (
            "agent",
            agent.replace("redis://127.0.0.1:6379", "http://127.0.0.1:6379"),
            "unknown store URL scheme",
        ),
        (
            "agent",
            agent.replace(
                "redis://127.0.0.1:6379",
                "redis://agent:hunter2@127.0.0.1:6379",
            ),
            "carries credentials",
        ),
        (
            "agent",
            agent.replace(
                "store = \"redis://127.0.0.1:6379\"",
                "store = \"redis://127.0.0.1:6379\"\nstore_ca = \"/etc/stek/ca.pem\"",
            ),
            "--store-ca given, but redis:// does not use TLS: use rediss://",
        ),
        (
            "agent",
            agent.replace("sinks = [\"nginx\"]", "sinks = [\"ngnix\"]"),
            "unknown sink \"ngnix\"",
        ),
        (
            "generator",
            fill("generator.toml")
                .replace("[[groups]]\nname = \"web\"", "[[groups]]\nname = \"w b\""),
            "w b",
        ),
    ];
    for (cmd, text, says) in broken {
        let (code, out) = check(cmd, &text);
        assert_eq!(code, 2, "{says}: {out}");
        let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem: ")).collect();
        assert_eq!(problems.len(), 1, "one line per problem: {out}");
        assert!(problems[0].contains(says), "{says:?} not in {out}");
    }
    // A private key others can read is refused with the fix.
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(d.join("web.identity"), fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out) = check("agent", &agent);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("identity: ") && out.contains("chmod"), "{out}");
}

/// `STEK_LOG_FORMAT=json`: every log line is one JSON object with a level and a message.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = util::shm_dir();
    let child = Command::new(env!("CARGO_BIN_EXE_stek"))
        .args([
            "up",
            "--period",
            "2s",
            "--lifetime",
            "2s",
            "--no-memcached",
            "--dir",
        ])
        .arg(dir.path().join("keys"))
        .env("STEK_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run stek up");
    std::thread::sleep(Duration::from_secs(3));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(text.contains("rotated to slot"), "{text}");
}

#[test]
fn help_gives_the_h2o_and_lighttpd_config_lines() {
    for cmd in ["up", "agent"] {
        let (code, out, _) = stek(&[cmd, "--help"]);
        assert_eq!(code, 0);
        for line in [
            "ticket-file: DIR/h2o/tickets.yaml",
            "ticket-store: file",
            "ssl.stek-file = \"DIR/lighttpd/stek.key\"",
            "65s",
        ] {
            assert!(
                out.contains(line),
                "stek {cmd} --help lacks {line:?}:\n{out}"
            );
        }
    }
}
