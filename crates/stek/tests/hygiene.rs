//! Process hygiene, read back from `/proc` of a running `stek up` (the README's promise: no core
//! dumps, not dumpable, memory locked where the limit allows): what `sys::harden` asked for is
//! what the kernel holds.

mod util;

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use util::*;

/// `stek up` on loopback-free settings: keys for nginx only, no memcached.
const ARGS: &[&str] = &["--no-memcached", "--sinks", "nginx"];

/// A field of `/proc/PID/status` (`VmLck:     1234 kB` gives `1234 kB`).
fn status_field(pid: u32, field: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    text.lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {field} in:\n{text}"))
}

/// Whether process `pid` (or `self`) may lock any amount of memory (its soft RLIMIT_MEMLOCK).
fn memlock_unlimited(pid: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/limits"))
        .expect("/proc/PID/limits")
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .is_some_and(|l| l.split_whitespace().nth(3) == Some("unlimited"))
}

/// No core dumps; memory locked when stek may lock it (root, or RLIMIT_MEMLOCK unlimited), else
/// a warning says it is not (this test's user and limit decide which is checked; the test run as
/// nobody below checks the other side under a finite limit).
#[test]
fn no_core_dumps_and_memory_locked_or_said_not_to_be() {
    let dir = shm_dir();
    let stek = stek_up(dir.path(), ARGS);
    wait_nginx_conf(dir.path());
    let pid = stek.pid();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc/PID/limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    let words: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        &words[4..6],
        ["0", "0"],
        "soft and hard core limits: {core}"
    );
    let locked: u64 = status_field(pid, "VmLck:")
        .trim_end_matches(" kB")
        .parse()
        .expect("VmLck in kB");
    let unlimited = memlock_unlimited("self");
    let root = fs::metadata("/proc/self").expect("/proc/self").uid() == 0;
    let log = stek.log_text();
    if root || unlimited {
        assert!(
            locked > 0,
            "no memory locked under an unlimited memlock:\n{log}"
        );
        assert!(!log.contains("memory not locked"), "{log}");
    } else {
        assert_eq!(locked, 0, "{log}");
        assert!(
            log.contains("memory not locked"),
            "the warning is missing:\n{log}"
        );
    }
}

/// Not dumpable: the kernel makes a non-dumpable process's `/proc/PID` files root's, so another
/// process of the same user cannot read its memory or attach to it. Seen from a stek run as
/// `nobody`, against a plain process of `nobody` whose files stay nobody's.
#[test]
fn not_dumpable_even_for_its_own_user() {
    require("setpriv");
    let me = fs::metadata("/proc/self").expect("/proc/self").uid();
    assert_eq!(
        me, 0,
        "this test runs stek as nobody and must run as root (as CI does)"
    );
    let dir = shm_dir();
    let base = dir.path().join("nobody");
    fs::create_dir(&base).expect("dir");
    // nobody's own directory and its own copy of the binary (the build tree may not be
    // reachable by other users).
    let bin = base.join("stek");
    fs::copy(env!("CARGO_BIN_EXE_stek"), &bin).expect("copy stek");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let chown = Command::new("chown")
        .args(["-R", "nobody", base.to_str().unwrap()])
        .status()
        .expect("chown");
    assert!(chown.success());
    let as_nobody = |program: &Path| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(program);
        cmd
    };
    let mut cmd = as_nobody(&bin);
    cmd.arg("up").arg("--dir").arg(base.join("keys")).args(ARGS);
    let stek = Proc::spawn("stek up (nobody)", &mut cmd, dir.path().join("stek.log"));
    wait_for("stek's nginx include file", Duration::from_secs(20), || {
        base.join("keys/nginx/tickets.conf").exists().then_some(())
    });
    let mut cmd = as_nobody(Path::new("/bin/sleep"));
    cmd.arg("30");
    let control = Proc::spawn("sleep (nobody)", &mut cmd, dir.path().join("sleep.log"));
    // setpriv's change of uid makes it non-dumpable until it execs sleep: wait for the exec.
    wait_for("the control to exec sleep", Duration::from_secs(10), || {
        let comm = fs::read_to_string(format!("/proc/{}/comm", control.pid())).ok()?;
        (comm.trim() == "sleep").then_some(())
    });
    let owner = |pid: u32| {
        fs::metadata(format!("/proc/{pid}/environ"))
            .expect("/proc/PID/environ")
            .uid()
    };
    let nobody = owner(control.pid());
    assert_ne!(nobody, 0, "the control runs as nobody");
    assert_eq!(
        owner(stek.pid()),
        0,
        "stek's /proc files are root's (not dumpable):\n{}",
        stek.log_text()
    );
    assert_eq!(
        status_field(stek.pid(), "Uid:").split_whitespace().next(),
        Some(&*nobody.to_string()),
        "stek runs as nobody"
    );
    // Not root: memory is locked only under an unlimited RLIMIT_MEMLOCK, and said otherwise.
    let unlimited = memlock_unlimited(&stek.pid().to_string());
    if !unlimited {
        assert_eq!(status_field(stek.pid(), "VmLck:"), "0 kB");
        assert!(
            stek.log_text().contains("memory not locked"),
            "{}",
            stek.log_text()
        );
    }
}

/// Everything `stek up` writes is private to it: with every file sink and the default memcached
/// socket, each directory under DIR is 0700, each file 0600, the socket 0600, all owned by stek's
/// user; nothing is written beside DIR.
#[test]
fn everything_stek_up_writes_is_private() {
    use std::os::unix::fs::FileTypeExt as _;
    let dir = shm_dir();
    let stek = stek_up(
        dir.path(),
        &["--sinks", "nginx,apache,haproxy,h2o,lighttpd"],
    );
    let keys = dir.path().join("keys");
    let expected = [
        "status.json",
        "memcached.sock",
        "nginx/tickets.conf",
        "apache/ticket.key",
        "haproxy/tickets.keys",
        "h2o/tickets.yaml",
        "lighttpd/stek.key",
    ];
    wait_for("every file of every sink", Duration::from_secs(20), || {
        expected.iter().all(|f| keys.join(f).exists()).then_some(())
    });
    let me = fs::metadata("/proc/self").expect("/proc/self").uid();
    let mut seen = 0;
    let mut stack = vec![keys.clone()];
    while let Some(d) = stack.pop() {
        let meta = fs::symlink_metadata(&d).expect("dir");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700, "{}", d.display());
        assert_eq!(meta.uid(), me, "{}", d.display());
        for entry in fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            let kind = meta.file_type();
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            assert!(
                kind.is_file() || kind.is_socket(),
                "{} is neither a file nor a socket",
                path.display()
            );
            assert_eq!(
                meta.permissions().mode() & 0o7777,
                0o600,
                "{}",
                path.display()
            );
            assert_eq!(meta.uid(), me, "{}", path.display());
            seen += 1;
        }
    }
    assert!(
        seen >= expected.len() + 3,
        "only {seen} files: nginx's key files missing?"
    );
    let beside: Vec<String> = fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let mut beside = beside;
    beside.sort();
    assert_eq!(beside, ["keys", "stek.log"], "written beside DIR");
    drop(stek);
}
