//! Shared helpers of the integration tests: real servers on loopback ports chosen at run time,
//! real clients (openssl s_client), and `stek` run as a user would run it.
#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Fails the test (never skips it) when a tool the test needs is missing.
/// Reads `s` until the peer closes it (or a read fails); panics if that takes longer than
/// `patience`. Returns what was read.
pub async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    patience: Duration,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(patience, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection");
    got
}

pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new(tool).is_file();
    assert!(
        found,
        "{tool} is not installed: run ./scripts/test (it installs nginx, apache2, haproxy, memcached, openssl)"
    );
}

pub use port::free_port;

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_port(port: u16) {
    wait_for(&format!("port {port}"), Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
}

/// Sleeps until `offset` after the start of the next period of length `period` (whole seconds),
/// and returns that slot number.
pub fn sleep_into_next_slot(period: u64, offset: Duration) -> u64 {
    let now = unix_now();
    let next = now.as_secs() / period + 1;
    let target = Duration::from_secs(next * period) + offset;
    std::thread::sleep(target.saturating_sub(now));
    next
}

/// Runs `act` from `offset` into the next slot and returns that slot with what `act` returned,
/// once `act` finished within the slot. On a machine too slow for that (the slot ended while
/// `act` ran, so what it made, a ticket say, may belong to the next slot's key), it starts over
/// in the next slot, up to 5 times. Tests that count rotations from the slot of what they made
/// begin with this rather than trusting a margin.
pub fn within_one_slot<T>(
    period: u64,
    offset: Duration,
    mut act: impl FnMut(u64) -> T,
) -> (u64, T) {
    for _ in 0..5 {
        let e = sleep_into_next_slot(period, offset);
        let out = act(e);
        let now = unix_now().as_secs() / period;
        if now == e {
            return (e, out);
        }
        eprintln!("slot {e} ended before the step meant for it did (now {now}): again");
    }
    panic!("5 slots in a row ended before the step meant for them did");
}

/// Sleeps until `offset` after the start of slot `slot`.
pub fn sleep_until_slot(period: u64, slot: u64, offset: Duration) {
    let target = Duration::from_secs(slot * period) + offset;
    std::thread::sleep(target.saturating_sub(unix_now()));
}

/// A scratch directory on tmpfs (key files must live in memory), removed on drop.
pub fn shm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("stek-test-")
        .tempdir_in("/dev/shm")
        .expect("tempdir in /dev/shm")
}

/// A self-signed certificate and key for `localhost`.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make_cert(dir: &Path) -> Cert {
    require("openssl");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=localhost", "-days", "2", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl req");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Cert { cert, key }
}

/// A child process killed on drop, with its stderr in a file for post-mortems.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let f = fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            log,
            name: name.to_owned(),
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// SIGTERM to `child` while it is still ours. A child not yet waited for keeps its pid (as a
/// zombie if it has exited); once waited for, its pid may already be a stranger's, so it gets
/// no signal.
pub fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let pid = rustix::process::Pid::from_child(child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first, so servers stop their children (a SIGKILLed nginx master leaves its
        // workers running and holding the port); SIGKILL after 3 s.
        terminate(&mut self.child);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ({}) ----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// `stek up` run as a user would, with its files under `dir`.
pub fn stek_up(dir: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stek"));
    cmd.arg("up").arg("--dir").arg(dir.join("keys")).args(args);
    cmd.env("STEK_LOG", "debug");
    Proc::spawn("stek up", &mut cmd, dir.join("stek.log"))
}

/// Waits until stek wrote its first nginx include file and returns its path.
pub fn wait_nginx_conf(dir: &Path) -> PathBuf {
    let conf = dir.join("keys/nginx/tickets.conf");
    wait_for("stek's nginx include file", Duration::from_secs(20), || {
        conf.exists().then_some(())
    });
    conf
}

/// The key names referenced by an nginx include file, in order (read from the key files).
pub fn nginx_conf_names(conf: &Path) -> Vec<String> {
    fs::read_to_string(conf)
        .expect("read tickets.conf")
        .lines()
        .filter_map(|l| l.strip_prefix("ssl_session_ticket_key "))
        .map(|l| {
            let path = l.split(';').next().expect("path");
            let bytes = fs::read(path).expect("key file");
            assert_eq!(bytes.len(), 80, "{path}");
            hex(&bytes[..16])
        })
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A real nginx on a loopback port, including stek's key file.
pub struct Nginx {
    pub port: u16,
    pub prefix: PathBuf,
    pub conf: PathBuf,
    pub proc: Proc,
}

impl Nginx {
    pub fn start(prefix: &Path, cert: &Cert, include: &Path) -> Nginx {
        Self::start_with(
            prefix,
            cert,
            &format!("include {};", include.display()),
            "TLSv1.2 TLSv1.3",
        )
    }

    pub fn start_with(prefix: &Path, cert: &Cert, tickets: &str, protocols: &str) -> Nginx {
        Self::start_with_cache(prefix, cert, tickets, protocols, "off")
    }

    /// As [`Nginx::start_with`], with `ssl_session_cache CACHE;` (e.g. `shared:SSL:1m`).
    pub fn start_with_cache(
        prefix: &Path,
        cert: &Cert,
        tickets: &str,
        protocols: &str,
        cache: &str,
    ) -> Nginx {
        require("nginx");
        fs::create_dir_all(prefix.join("tmp")).expect("nginx prefix");
        let port = free_port();
        let p = prefix.display();
        let conf = prefix.join("nginx.conf");
        let text = format!(
            "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\n\
             events {{ worker_connections 128; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n  \
             fastcgi_temp_path {p}/tmp/fastcgi;\n  uwsgi_temp_path {p}/tmp/uwsgi;\n  scgi_temp_path {p}/tmp/scgi;\n  \
             server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    \
             ssl_protocols {protocols};\n    ssl_session_cache {cache};\n    ssl_session_timeout 1h;\n    {tickets}\n    \
             location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
            cert.cert.display(),
            cert.key.display()
        );
        fs::write(&conf, text).expect("nginx.conf");
        let mut cmd = Command::new("nginx");
        cmd.arg("-p").arg(prefix).arg("-c").arg(&conf);
        let proc = Proc::spawn("nginx", &mut cmd, prefix.join("nginx.out"));
        wait_port(port);
        Nginx {
            port,
            prefix: prefix.to_owned(),
            conf,
            proc,
        }
    }

    /// The command stek's --on-change runs to reload this nginx.
    pub fn reload_cmd(prefix: &Path) -> String {
        format!(
            "nginx -p {p} -c {p}/nginx.conf -s reload",
            p = prefix.display()
        )
    }
}

/// TLS versions the tests use.
#[derive(Clone, Copy, Debug)]
pub enum Tls {
    V12,
    V13,
}

impl Tls {
    fn flag(self) -> &'static str {
        match self {
            Tls::V12 => "-tls1_2",
            Tls::V13 => "-tls1_3",
        }
    }
}

/// One handshake with openssl s_client: whether the session was resumed.
pub fn handshake(port: u16, tls: Tls, sess_in: Option<&Path>, sess_out: Option<&Path>) -> bool {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "localhost",
        tls.flag(),
        "-ign_eof",
    ]);
    if let Some(p) = sess_in {
        cmd.arg("-sess_in").arg(p);
    }
    if let Some(p) = sess_out {
        cmd.arg("-sess_out").arg(p);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    // A request makes the server answer and close, after which TLS 1.3 tickets have arrived.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("write request");
    let out: Output = child.wait_with_output().expect("s_client output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Cipher is") || text.contains("Reused"),
        "handshake with 127.0.0.1:{port} failed:\n{}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().any(|l| l.starts_with("Reused,"))
}

/// The key name (first 16 bytes of the ticket) of a session saved by s_client, if it has a ticket.
pub fn ticket_name(sess: &Path) -> Option<String> {
    let out = Command::new("openssl")
        .args(["sess_id", "-noout", "-text", "-in"])
        .arg(sess)
        .output()
        .expect("run openssl sess_id");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text
        .lines()
        .skip_while(|l| !l.contains("TLS session ticket:"));
    lines.next()?;
    let first = lines.next()?;
    // "    0000 - 8f 3e ... 07-a1 ...   ........"
    let bytes = first.split_once(" - ")?.1;
    let hexes: String = bytes
        .split([' ', '-'])
        .filter(|t| t.len() == 2 && t.chars().all(|c| c.is_ascii_hexdigit()))
        .take(16)
        .collect();
    (hexes.len() == 32).then_some(hexes)
}

/// A fresh session (and its ticket's key name) from `port`.
pub fn fresh_ticket(port: u16, tls: Tls, sess: &Path) -> String {
    let _ = fs::remove_file(sess);
    handshake(port, tls, None, Some(sess));
    ticket_name(sess).unwrap_or_else(|| panic!("no ticket in the session from port {port}"))
}

/// A real Apache (mod_ssl) on a loopback port, reading stek's 48-byte key file.
pub struct Apache {
    pub port: u16,
    pub conf: PathBuf,
    pub proc: Proc,
}

impl Apache {
    pub fn start(root: &Path, cert: &Cert, key_file: &Path) -> Apache {
        require("apache2");
        fs::create_dir_all(root.join("htdocs")).expect("apache root");
        let port = free_port();
        let r = root.display();
        let m = "/usr/lib/apache2/modules";
        let conf = root.join("httpd.conf");
        let text = format!(
            "ServerRoot {r}\nPidFile {r}/httpd.pid\nMutex file:{r} default\nErrorLog {r}/error.log\nLogLevel info\n\
             LoadModule mpm_event_module {m}/mod_mpm_event.so\nLoadModule authz_core_module {m}/mod_authz_core.so\n\
             LoadModule socache_shmcb_module {m}/mod_socache_shmcb.so\nLoadModule ssl_module {m}/mod_ssl.so\n\
             ServerLimit 2\nServerName localhost\nListen 127.0.0.1:{port}\nDocumentRoot {r}/htdocs\n\
             SSLSessionCache none\n\
             <VirtualHost 127.0.0.1:{port}>\n  ServerName localhost\n  SSLEngine on\n  SSLProtocol -all +TLSv1.2 +TLSv1.3\n  \
             SSLCertificateFile {}\n  SSLCertificateKeyFile {}\n  SSLSessionTicketKeyFile {}\n</VirtualHost>\n",
            cert.cert.display(),
            cert.key.display(),
            key_file.display()
        );
        fs::write(&conf, text).expect("httpd.conf");
        let mut cmd = Command::new("apache2");
        cmd.arg("-f").arg(&conf).arg("-DFOREGROUND");
        let proc = Proc::spawn("apache2", &mut cmd, root.join("apache.out"));
        wait_port(port);
        Apache { port, conf, proc }
    }

    /// The command stek's --on-change runs for a graceful restart.
    pub fn graceful_cmd(root: &Path) -> String {
        format!("apache2 -f {}/httpd.conf -k graceful", root.display())
    }
}
pub mod etcd_cluster;
pub mod fleet;
pub mod port;
pub mod redis_tls;
pub mod scan;
pub mod sentinel;
pub mod servers;

/// A real HAProxy on a loopback port in the foreground (`-db`), with an admin socket and one
/// `tls-ticket-keys` ring. Its own session cache is off, so resumption comes from tickets only.
pub struct Haproxy {
    pub port: u16,
    pub socket: PathBuf,
    pub proc: Proc,
}

impl Haproxy {
    pub fn start(root: &Path, cert: &Cert, keys_file: &Path, socket: &Path) -> Haproxy {
        require("haproxy");
        fs::create_dir_all(root).expect("haproxy root");
        let pem = root.join("site.pem");
        let mut both = fs::read(&cert.cert).expect("cert");
        both.extend(fs::read(&cert.key).expect("key"));
        fs::write(&pem, both).expect("site.pem");
        let port = free_port();
        let conf = root.join("haproxy.cfg");
        let text = format!(
            "global\n  stats socket {} mode 600 level admin\n  tune.ssl.cachesize 0\n\
             defaults\n  mode http\n  timeout client 5s\n  timeout server 5s\n  timeout connect 5s\n\
             frontend tls\n  bind 127.0.0.1:{port} ssl crt {} tls-ticket-keys {}\n  \
             http-request return status 200 content-type text/plain string ok\n",
            socket.display(),
            pem.display(),
            keys_file.display()
        );
        fs::write(&conf, text).expect("haproxy.cfg");
        let mut cmd = Command::new("haproxy");
        cmd.arg("-f").arg(&conf).arg("-db");
        let proc = Proc::spawn(
            "haproxy",
            &mut cmd,
            root.join(format!("haproxy-{port}.out")),
        );
        wait_port(port);
        let h = Haproxy {
            port,
            socket: socket.to_owned(),
            proc,
        };
        wait_for("HAProxy's admin socket", Duration::from_secs(10), || {
            h.try_cmd("show info")
                .filter(|r| r.contains(&format!("Pid: {}", h.proc.pid())))
        });
        h
    }

    /// One command on the admin socket: HAProxy's reply, or `None` if nobody answers.
    pub fn try_cmd(&self, line: &str) -> Option<String> {
        use std::io::Read as _;
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("{line}\n").as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    pub fn cmd(&self, line: &str) -> String {
        self.try_cmd(line)
            .unwrap_or_else(|| panic!("HAProxy did not answer {line:?}"))
    }

    /// The ring of `file` as HAProxy holds it, from the dump of every ring (`show tls-keys *`):
    /// base64 keys, oldest first (the middle encrypts).
    pub fn ring(&self, file: &Path) -> Vec<String> {
        let reply = self.cmd("show tls-keys *");
        assert!(reply.starts_with("# id secret"), "show tls-keys: {reply}");
        let header = format!("({})", file.display());
        reply
            .lines()
            .skip_while(|l| !(l.starts_with("# ") && l.ends_with(&header)))
            .skip(1)
            .take_while(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split_once(' ').expect("ID.N KEY").1.to_owned())
            .collect()
    }

    /// The pid HAProxy reports (`show info`).
    pub fn info_pid(&self) -> u32 {
        self.cmd("show info")
            .lines()
            .find_map(|l| l.strip_prefix("Pid: "))
            .and_then(|p| p.trim().parse().ok())
            .expect("Pid in show info")
    }
}

/// One text-protocol `get` of `key` on `stream` (TCP or unix socket): the value, or `None` on a
/// miss. Panics on anything but a well-formed reply: these tests talk to stek only.
pub fn memcached_get<S: std::io::Read + Write>(stream: &mut S, key: &str) -> Option<Vec<u8>> {
    stream
        .write_all(format!("get {key}\r\n").as_bytes())
        .expect("send get");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut read_more = |got: &mut Vec<u8>| {
        let n = stream.read(&mut buf).expect("read the reply");
        assert!(n > 0, "the server closed during a get of {key}: {got:?}");
        got.extend_from_slice(&buf[..n]);
    };
    let header_end = loop {
        if let Some(i) = got.windows(2).position(|w| w == b"\r\n") {
            break i;
        }
        read_more(&mut got);
    };
    if &got[..header_end] == b"END" {
        assert_eq!(got.len(), 5, "nothing after END");
        return None;
    }
    let header = String::from_utf8_lossy(&got[..header_end]).into_owned();
    let len: usize = header
        .strip_prefix(&format!("VALUE {key} 0 "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reply to get {key}: {header:?}"));
    let end = header_end + 2 + len;
    while got.len() < end + 7 {
        read_more(&mut got);
    }
    assert_eq!(&got[end..], b"\r\nEND\r\n", "one value");
    Some(got[header_end + 2..end].to_vec())
}

/// The key files an nginx include file references, in order, with their bytes.
pub fn nginx_conf_keys(conf: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fs::read_to_string(conf)
        .expect("read tickets.conf")
        .lines()
        .filter_map(|l| l.strip_prefix("ssl_session_ticket_key "))
        .map(|l| {
            let path = PathBuf::from(l.split(';').next().expect("path"));
            let bytes = fs::read(&path).expect("key file");
            (path, bytes)
        })
        .collect()
}
