//! The key directory against a local attacker (issue 11): links planted inside it before start
//! or between rotations are never followed, unsafe directories are refused at start with one
//! line, and the normal case stays 0700 directories with 0600 files. `stek up`, P = 2 s.

mod util;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

const ARGS: &[&str] = &[
    "--period",
    "2s",
    "--lifetime",
    "4s",
    "--no-memcached",
    "--sinks",
    "nginx,haproxy,apache",
];

/// Long enough for a few rotations on a loaded machine; every wait ends on a positive signal.
const WAIT: Duration = Duration::from_secs(20);

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// The nginx include file's text once it differs from `before` (stek rotated).
fn next_conf(conf: &Path, before: &str) -> String {
    wait_for("a rotation", WAIT, || {
        fs::read_to_string(conf).ok().filter(|t| t != before)
    })
}

/// Waits until stek has logged `line`.
fn wait_log(stek: &Proc, line: &str) {
    wait_for(&format!("the log line {line:?}"), WAIT, || {
        stek.log_text().contains(line).then_some(())
    });
}

#[test]
fn the_normal_case_writes_0600_files_in_0700_dirs() {
    let base = shm_dir();
    let dir = base.path().join("keys");
    // A temporary file an earlier, killed stek left behind (key bytes no rotation would erase).
    fs::create_dir_all(dir.join("apache")).expect("mkdir");
    let stale = dir.join("apache/.ticket.key.4242.tmp");
    fs::write(&stale, [7u8; 48]).expect("stale tmp");
    let stek = stek_up(base.path(), ARGS);
    let conf = wait_nginx_conf(base.path());
    assert!(!stale.exists(), "erased at start");
    assert!(
        stek.log_text()
            .contains("erased 1 temporary file(s) left in"),
        "{}",
        stek.log_text()
    );
    // The files of a whole rotation, status.json included.
    let first = fs::read_to_string(&conf).expect("conf");
    next_conf(&conf, &first);
    wait_for("status.json", WAIT, || {
        dir.join("status.json").exists().then_some(())
    });
    for d in ["", "nginx", "nginx/keys", "haproxy", "apache"] {
        assert_eq!(mode(&dir.join(d)), 0o700, "DIR/{d}");
    }
    let mut files = vec![
        dir.join("nginx/tickets.conf"),
        dir.join("haproxy/tickets.keys"),
        dir.join("apache/ticket.key"),
        dir.join("status.json"),
    ];
    for e in fs::read_dir(dir.join("nginx/keys")).expect("keys dir") {
        files.push(e.expect("entry").path());
    }
    assert!(files.len() >= 4 + 4, "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    assert_eq!(nginx_conf_names(&conf).len(), 4);
    drop(stek);
}

#[test]
fn links_planted_between_rotations_are_not_followed() {
    let base = shm_dir();
    let dir = base.path().join("keys");
    let stek = stek_up(base.path(), ARGS);
    let conf = wait_nginx_conf(base.path());
    let pid = stek.pid();

    // A root-only file outside DIR that an attacker wants zeroed.
    let victim = base.path().join("victim");
    fs::write(&victim, b"root-only content").expect("victim");
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).expect("chmod");
    // Where an attacker would read keys written through a link at a temporary-file name.
    let leak = base.path().join("leaked");
    fs::create_dir(&leak).expect("leak dir");

    // Plant right after a rotation, assert at the next one.
    let before = fs::read_to_string(&conf).expect("conf");
    let text = next_conf(&conf, &before);
    let slot = text
        .lines()
        .find_map(|l| l.split("# slot ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|s| s.parse::<u64>().ok())
        .expect("the encrypting slot in tickets.conf");
    symlink(&victim, dir.join("nginx/keys/1000.key")).expect("plant 1000.key");
    // The temporary names the old code used (`.<name>.<pid>.tmp`), for every key file of the
    // next rings.
    let mut planted = Vec::new();
    let mut plant = |sub: &str, name: String| {
        let target = leak.join(format!("{}-{name}", sub.replace('/', "-")));
        symlink(&target, dir.join(sub).join(format!(".{name}.{pid}.tmp"))).expect("plant tmp");
        planted.push(target);
    };
    for s in slot.saturating_sub(3)..=slot + 4 {
        plant("nginx/keys", format!("{}.key", s * 2));
    }
    plant("nginx", "tickets.conf".into());
    plant("haproxy", "tickets.keys".into());
    plant("apache", "ticket.key".into());
    let haproxy = fs::read(dir.join("haproxy/tickets.keys")).expect("haproxy keys");
    let apache = fs::read(dir.join("apache/ticket.key")).expect("apache key");

    // The next rotation: every sink wrote again.
    next_conf(&conf, &text);
    wait_for("the next HAProxy and Apache keys", WAIT, || {
        (fs::read(dir.join("haproxy/tickets.keys")).ok()? != haproxy
            && fs::read(dir.join("apache/ticket.key")).ok()? != apache)
            .then_some(())
    });
    wait_log(&stek, "1000.key is a symbolic link: removed the link");
    assert_eq!(fs::read(&victim).expect("victim"), b"root-only content");
    assert!(
        fs::symlink_metadata(dir.join("nginx/keys/1000.key")).is_err(),
        "the link itself is gone"
    );
    assert_eq!(
        fs::read_dir(&leak).expect("leak dir").count(),
        0,
        "nothing written where the temporary-name links pointed: {planted:?}"
    );
    // The keys still rotate: the planted names did not stop the sinks.
    assert!(
        !stek.log_text().contains("could not write"),
        "{}",
        stek.log_text()
    );
}

#[test]
fn symlinked_subdirectories_are_refused_and_their_targets_untouched() {
    let base = shm_dir();
    let dir = base.path().join("keys");
    // Directories on the persistent root file system (/var/tmp), with something in them.
    let disk = tempfile::tempdir_in("/var/tmp").expect("tempdir in /var/tmp");
    let targets: Vec<PathBuf> = ["haproxy-target", "nginx-keys-target"]
        .iter()
        .map(|n| {
            let t = disk.path().join(n);
            fs::create_dir(&t).expect("target");
            fs::write(t.join("keep"), b"operator data").expect("keep");
            fs::set_permissions(&t, fs::Permissions::from_mode(0o755)).expect("chmod");
            t
        })
        .collect();

    // Before start: DIR/haproxy is a link. stek refuses to start, writing nothing through it.
    fs::create_dir(&dir).expect("DIR");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    symlink(&targets[0], dir.join("haproxy")).expect("plant haproxy");
    let (code, err) = run_to_exit(&dir, ARGS);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}: it is a symbolic link to {}",
            dir.join("haproxy").display(),
            targets[0].display()
        )),
        "{err}"
    );

    // Between rotations: DIR/nginx/keys becomes a link. The nginx sink fails and says why;
    // the other sinks carry on.
    fs::remove_file(dir.join("haproxy")).expect("unplant");
    let stek = stek_up(base.path(), ARGS);
    let conf = wait_nginx_conf(base.path());
    let before = fs::read_to_string(&conf).expect("conf");
    next_conf(&conf, &before);
    fs::remove_dir_all(dir.join("nginx/keys")).expect("rm keys");
    symlink(&targets[1], dir.join("nginx/keys")).expect("plant nginx/keys");
    let apache = fs::read(dir.join("apache/ticket.key")).expect("apache key");
    wait_log(
        &stek,
        &format!(
            "{}: it is a symbolic link to {}",
            dir.join("nginx/keys").display(),
            targets[1].display()
        ),
    );
    wait_for("the next Apache key", WAIT, || {
        (fs::read(dir.join("apache/ticket.key")).ok()? != apache).then_some(())
    });
    for t in &targets {
        assert_eq!(mode(t), 0o755, "{} not chmodded", t.display());
        let names: Vec<_> = fs::read_dir(t)
            .expect("target")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            ["keep"],
            "{}: nothing written or erased",
            t.display()
        );
        assert_eq!(fs::read(t.join("keep")).expect("keep"), b"operator data");
    }
    drop(stek);
}

/// Runs `stek up --dir DIR ARGS` that must exit at start; returns its exit code and stderr.
fn run_to_exit(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stek"))
        .arg("up")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start stek");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "stek up --dir {} kept running: it must refuse at start",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    (status.code().unwrap_or(-1), err)
}

/// Asserts a refusal at start: exit 1, one line naming `dir`, `what` in it, nothing written.
fn assert_refused(dir: &Path, what: &[&str], args: &[&str]) {
    let (code, err) = run_to_exit(dir, args);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(&dir.display().to_string()), "{err}");
    for w in what {
        assert!(err.contains(w), "{w:?} in {err}");
    }
}

#[test]
fn unsafe_key_directories_are_refused_at_start() {
    let base = shm_dir();

    // Writable by everyone.
    let open = base.path().join("open");
    fs::create_dir(&open).expect("mkdir");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).expect("chmod");
    let me = fs::metadata(base.path()).expect("base").uid();
    assert_refused(&open, &[&format!("owner uid {me}"), "mode 0777"], ARGS);
    assert_eq!(
        fs::read_dir(&open).expect("open").count(),
        0,
        "nothing written"
    );
    assert_eq!(mode(&open), 0o777, "left as it was");

    // Owned by another user (nobody), private.
    let theirs = base.path().join("theirs");
    fs::create_dir(&theirs).expect("mkdir");
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o700)).expect("chmod");
    let chown = Command::new("chown")
        .args(["nobody:nogroup"])
        .arg(&theirs)
        .status()
        .expect("chown");
    assert!(chown.success(), "tests run as root: chown nobody must work");
    let nobody = fs::metadata(&theirs).expect("theirs").uid();
    assert_refused(
        &theirs,
        &[&format!("owner uid {nobody}"), "mode 0700"],
        ARGS,
    );
    assert_eq!(
        fs::read_dir(&theirs).expect("theirs").count(),
        0,
        "nothing written"
    );

    // A dangling symbolic link: named as such, its target not created.
    let dangling = base.path().join("dangling");
    let nowhere = base.path().join("nowhere");
    symlink(&nowhere, &dangling).expect("symlink");
    assert_refused(&dangling, &["symbolic link", "does not exist"], ARGS);
    assert!(!nowhere.exists());

    // A subdirectory a sink would write, pre-created writable by others: refused at start too.
    let sub = base.path().join("sub");
    fs::create_dir_all(sub.join("apache")).expect("mkdir");
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).expect("chmod");
    fs::set_permissions(sub.join("apache"), fs::Permissions::from_mode(0o777)).expect("chmod");
    let (code, err) = run_to_exit(&sub, ARGS);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("apache: owner uid") && err.contains("mode 0777"),
        "{err}"
    );
    assert_eq!(fs::read_dir(sub.join("apache")).expect("apache").count(), 0);
}
