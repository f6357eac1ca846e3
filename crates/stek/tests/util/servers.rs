//! More real TLS servers for `stek scan`: Go crypto/tls (Debian's Go 1.19 and Go 1.23 from
//! bookworm-backports, through the `goticket` fixture), Caddy, lighttpd, h2o and
//! `openssl s_server`. Each runs in the foreground with its files under the test's own
//! directory, on a loopback port the OS chose (or, where the server cannot report the port it
//! bound, one that was free a moment ago, retried if the server could not bind it), is waited for
//! by polling, and is killed on drop with its log shown if the test failed.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash as _, Hasher as _};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{free_port, require, unix_now, wait_for, Cert, Proc};

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b
}

/// A self-signed certificate for `localhost` that also names 127.0.0.1, so that servers which
/// pick a certificate by the name asked for (Caddy) answer a client that sends no name.
pub fn make_cert_ip(dir: &Path) -> Cert {
    require("openssl");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args([
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-days", "2", "-keyout"])
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

/// The cargo target directory this test binary was built into (`target/debug/stek` -> `target`).
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_stek"))
        .ancestors()
        .nth(2)
        .expect("target dir above the stek binary")
        .to_owned()
}

/// Waits until `port` accepts connections while `proc` runs. `Err` when the process exited
/// first (e.g. it could not bind the port), with its log.
fn wait_listening(proc: &mut Proc, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Err(format!(
                "{} exited ({status}) before listening on port {port}:\n{}",
                proc.name,
                proc.log_text()
            ));
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "{} never listened on port {port}:\n{}",
            proc.name,
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a server that must be told its port (`start(port)`), on a port that was free a moment
/// ago; another test may take that port in between, so a start that exits early is retried on
/// another port.
fn start_on_free_port(mut start: impl FnMut(u16) -> Proc) -> (u16, Proc) {
    let mut why = String::new();
    for _ in 0..3 {
        let port = free_port();
        let mut proc = start(port);
        match wait_listening(&mut proc, port) {
            Ok(()) => return (port, proc),
            Err(e) => why = e,
        }
    }
    panic!("{why}")
}

// ---- Go crypto/tls ------------------------------------------------------------------------

/// The Go toolchains the tests build `goticket` with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Go {
    /// Debian bookworm's `golang-go` (Go 1.19): tickets begin with a 16-byte key name.
    V119,
    /// Go 1.23 (bookworm-backports, unpacked by scripts/test): tickets carry no key name.
    V123,
}

impl Go {
    /// The `go` command of this toolchain.
    pub fn command(self) -> PathBuf {
        match self {
            Go::V119 => {
                require("go");
                PathBuf::from("go")
            }
            Go::V123 => {
                let unpacked = target_dir().join("go-1.23/usr/lib/go-1.23/bin/go");
                std::env::var_os("STEK_TEST_GO123")
                    .map(PathBuf::from)
                    .or_else(|| unpacked.is_file().then_some(unpacked))
                    .unwrap_or_else(|| {
                        panic!(
                            "no Go 1.23: set STEK_TEST_GO123 or run ./scripts/test (it unpacks \
                             golang-1.23-go from bookworm-backports into target/go-1.23)"
                        )
                    })
            }
        }
    }

    /// `(major, minor)` the toolchain must have: the ticket format differs either side of 1.21.
    fn wanted(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Go::V119 => 19..=20,
            Go::V123 => 21..=u32::MAX,
        }
    }
}

/// The `go` environment for builds: caches under the target dir, no toolchain downloads, no
/// telemetry or settings written to the user's home.
fn go_env(cmd: &mut Command) -> &mut Command {
    let base = target_dir().join("goticket");
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOCACHE", base.join("cache"))
        .env("GOPATH", base.join("gopath"))
        .env("HOME", base.join("home"))
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0")
}

/// The `goticket` fixture built with `go`, once per test process and toolchain; across processes
/// the binary is cached under the target dir by toolchain version and source hash (built to a
/// temporary name and renamed, so a concurrent build never leaves a partial binary).
pub fn goticket(go: Go) -> PathBuf {
    static V119: OnceLock<PathBuf> = OnceLock::new();
    static V123: OnceLock<PathBuf> = OnceLock::new();
    let cell = match go {
        Go::V119 => &V119,
        Go::V123 => &V123,
    };
    cell.get_or_init(|| build_goticket(go)).clone()
}

fn build_goticket(go: Go) -> PathBuf {
    let gocmd = go.command();
    let out = go_env(&mut Command::new(&gocmd))
        .args(["env", "GOVERSION"])
        .output()
        .unwrap_or_else(|e| panic!("run {} env GOVERSION: {e}", gocmd.display()));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let minor: u32 = version
        .strip_prefix("go1.")
        .and_then(|v| v.split('.').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}: unexpected version {version:?}", gocmd.display()));
    assert!(
        go.wanted().contains(&minor),
        "{} is {version}, the test needs {go:?}",
        gocmd.display()
    );
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/goticket/main.go");
    let text = fs::read(&source).expect("read goticket/main.go");
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    let dir = target_dir()
        .join("goticket")
        .join(format!("{version}-{:016x}", h.finish()));
    let bin = dir.join("goticket");
    if bin.is_file() {
        return bin;
    }
    fs::create_dir_all(&dir).expect("goticket dir");
    let partial = dir.join(format!("goticket.{}.partial", std::process::id()));
    let out = go_env(&mut Command::new(&gocmd))
        .arg("build")
        .arg("-o")
        .arg(&partial)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("run {} build: {e}", gocmd.display()));
    assert!(
        out.status.success(),
        "{} build {}:\n{}{}",
        gocmd.display(),
        source.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::rename(&partial, &bin).expect("move the built goticket into place");
    bin
}

/// A Go crypto/tls server (`tests/fixtures/goticket/main.go`) serving net/http.
pub struct GoServer {
    pub port: u16,
    pub proc: Proc,
}

impl GoServer {
    /// `keys`: `default`, `static`, `zero`, or `rotate` with `rotate = Some("2s")`.
    pub fn start(go: Go, dir: &Path, cert: &Cert, keys: &str, rotate: Option<&str>) -> GoServer {
        let mut args = vec!["-keys", keys];
        if let Some(every) = rotate {
            args.extend(["-rotate", every]);
        }
        GoServer::start_args(go, dir, cert, &args)
    }

    /// With goticket's own flags (`-keys ...`, `-client-cert-tls13`; see its usage).
    pub fn start_args(go: Go, dir: &Path, cert: &Cert, args: &[&str]) -> GoServer {
        let bin = goticket(go);
        let mut cmd = Command::new(bin);
        cmd.args(["-listen", "127.0.0.1:0"])
            .args(args)
            .arg("-cert")
            .arg(&cert.cert)
            .arg("-key")
            .arg(&cert.key);
        let flags = args.join(" ");
        let mut proc = Proc::spawn(
            &format!("goticket ({go:?}, {flags})"),
            &mut cmd,
            dir.join(format!(
                "goticket-{go:?}-{}.log",
                flags.replace([' ', '/'], "_")
            )),
        );
        // The first line of the log is the port it bound (stdout), before anything else runs.
        let port = wait_for("goticket's port", Duration::from_secs(20), || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("goticket exited ({status}):\n{}", proc.log_text());
            }
            let log = proc.log_text();
            let line = log.lines().next().filter(|_| log.contains('\n'))?;
            Some(
                line.trim()
                    .parse::<u16>()
                    .unwrap_or_else(|_| panic!("goticket printed no port first:\n{log}")),
            )
        });
        wait_listening(&mut proc, port).unwrap_or_else(|e| panic!("{e}"));
        GoServer { port, proc }
    }
}

// ---- Caddy --------------------------------------------------------------------------------

/// A Caddy 2.6 (Debian `caddy`) with admin off and storage, HOME and XDG dirs under `dir`.
pub struct Caddy {
    pub port: u16,
    pub proc: Proc,
}

impl Caddy {
    fn run(dir: &Path, config: &Path, adapter: Option<&str>, port: u16) -> Proc {
        require("caddy");
        let mut cmd = Command::new("caddy");
        cmd.arg("run").arg("--config").arg(config);
        if let Some(a) = adapter {
            cmd.args(["--adapter", a]);
        }
        cmd.current_dir(dir)
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"));
        Proc::spawn("caddy", &mut cmd, dir.join(format!("caddy-{port}.log")))
    }

    /// From a Caddyfile: one site `localhost` with the certificate in `cert` and Caddy's
    /// defaults for everything else (a Caddyfile cannot configure session tickets).
    pub fn caddyfile(dir: &Path, cert: &Cert) -> Caddy {
        fs::create_dir_all(dir).expect("caddy dir");
        let (port, proc) = start_on_free_port(|port| {
            let file = dir.join("Caddyfile");
            let text = format!(
                "{{\n\tadmin off\n\tstorage file_system {storage}\n\tskip_install_trust\n\t\
                 auto_https disable_redirects\n\tservers {{\n\t\tprotocols h1 h2\n\t}}\n}}\n\
                 https://localhost:{port} {{\n\tbind 127.0.0.1\n\ttls {} {}\n\trespond \"ok\"\n}}\n",
                cert.cert.display(),
                cert.key.display(),
                storage = dir.join("storage").display(),
            );
            fs::write(&file, text).expect("Caddyfile");
            Caddy::run(dir, &file, Some("caddyfile"), port)
        });
        Caddy { port, proc }
    }

    /// From JSON, with `apps.tls.session_tickets` set to `session_tickets` (see
    /// <https://caddyserver.com/docs/json/apps/tls/session_tickets/>).
    pub fn json(dir: &Path, cert: &Cert, session_tickets: serde_json::Value) -> Caddy {
        fs::create_dir_all(dir).expect("caddy dir");
        let (port, proc) = start_on_free_port(|port| {
            let config = serde_json::json!({
                "admin": {"disabled": true, "config": {"persist": false}},
                "storage": {"module": "file_system", "root": dir.join("storage")},
                "apps": {
                    "http": {"servers": {"s": {
                        "listen": [format!("127.0.0.1:{port}")],
                        "protocols": ["h1", "h2"],
                        "routes": [{"handle": [{"handler": "static_response", "body": "ok"}]}],
                        "tls_connection_policies": [{}],
                        "automatic_https": {"disable": true}
                    }}},
                    "tls": {
                        "certificates": {"load_files": [{
                            "certificate": cert.cert, "key": cert.key
                        }]},
                        "session_tickets": session_tickets
                    }
                }
            });
            let file = dir.join("caddy.json");
            fs::write(&file, config.to_string()).expect("caddy.json");
            Caddy::run(dir, &file, None, port)
        });
        Caddy { port, proc }
    }
}

// ---- lighttpd -----------------------------------------------------------------------------

/// A lighttpd 1.4.69 with mod_openssl, in the foreground (`-D`), logging to stderr.
pub struct Lighttpd {
    pub port: u16,
    pub proc: Proc,
}

/// lighttpd's `ssl.stek-file` holding one key, active for the next hour: i32 version 0, i32
/// activation time, i32 expiry time (host byte order), then name(16) HMAC(32) AES(32).
pub fn lighttpd_stek_file(path: &Path, key80: &[u8]) {
    assert_eq!(key80.len(), 80);
    let now = i32::try_from(unix_now().as_secs()).expect("time fits i32");
    let mut b = Vec::with_capacity(92);
    b.extend(0i32.to_ne_bytes());
    b.extend((now - 60).to_ne_bytes());
    b.extend((now + 3600).to_ne_bytes());
    b.extend(key80);
    fs::write(path, b).expect("stek file");
}

impl Lighttpd {
    pub fn start(dir: &Path, cert: &Cert, stek_file: Option<&Path>) -> Lighttpd {
        require("lighttpd");
        fs::create_dir_all(dir.join("www")).expect("lighttpd dir");
        let (port, proc) = start_on_free_port(|port| {
            let conf = dir.join("lighttpd.conf");
            let mut text = format!(
                "server.modules = (\"mod_openssl\")\nserver.document-root = \"{}\"\n\
                 server.bind = \"127.0.0.1\"\nserver.port = {port}\nssl.engine = \"enable\"\n\
                 ssl.pemfile = \"{}\"\nssl.privkey = \"{}\"\n",
                dir.join("www").display(),
                cert.cert.display(),
                cert.key.display()
            );
            if let Some(f) = stek_file {
                text += &format!("ssl.stek-file = \"{}\"\n", f.display());
            }
            fs::write(&conf, text).expect("lighttpd.conf");
            let mut cmd = Command::new("lighttpd");
            cmd.arg("-D").arg("-f").arg(&conf);
            Proc::spawn(
                "lighttpd",
                &mut cmd,
                dir.join(format!("lighttpd-{port}.log")),
            )
        });
        Lighttpd { port, proc }
    }
}

// ---- h2o ----------------------------------------------------------------------------------

/// An h2o 2.2.5 in the foreground, logging to stderr.
pub struct H2o {
    pub port: u16,
    pub proc: Proc,
}

/// h2o's `ticket-file` holding one key valid for the next hour, named `name` (16 bytes):
/// AES-256-CBC and HMAC-SHA256, `key` = hex(AES key (32) ‖ HMAC key (64, the hash's block
/// size)), as h2o's `ssl-session-resumption` documentation describes.
pub fn h2o_ticket_file(path: &Path, name: &[u8], key96: &[u8]) {
    assert_eq!((name.len(), key96.len()), (16, 96));
    let now = unix_now().as_secs();
    let text = format!(
        "- name: {}\n  cipher: aes-256-cbc\n  hash: sha256\n  key: {}\n  not_before: {}\n  not_after: {}\n",
        super::hex(name),
        super::hex(key96),
        now - 60,
        now + 3600
    );
    fs::write(path, text).expect("ticket file");
}

impl H2o {
    pub fn start(dir: &Path, cert: &Cert, ticket_file: Option<&Path>) -> H2o {
        require("h2o");
        fs::create_dir_all(dir.join("www")).expect("h2o dir");
        let (port, proc) = start_on_free_port(|port| {
            let conf = dir.join("h2o.conf");
            // Started as root, h2o switches to `nobody` unless told otherwise, and nobody cannot
            // read the test's files.
            let user = if rustix::process::geteuid().is_root() {
                "user: root\n"
            } else {
                ""
            };
            let mut text = format!(
                "{user}pid-file: {}\nlisten:\n  host: 127.0.0.1\n  port: {port}\n  ssl:\n    \
                 certificate-file: {}\n    key-file: {}\nhosts:\n  default:\n    paths:\n      /:\n        \
                 file.dir: {}\n",
                dir.join("h2o.pid").display(),
                cert.cert.display(),
                cert.key.display(),
                dir.join("www").display()
            );
            if let Some(f) = ticket_file {
                text += &format!(
                    "ssl-session-resumption:\n  mode: ticket\n  ticket-store: file\n  ticket-file: {}\n",
                    f.display()
                );
            }
            fs::write(&conf, text).expect("h2o.conf");
            let mut cmd = Command::new("h2o");
            cmd.arg("-c").arg(&conf);
            Proc::spawn("h2o", &mut cmd, dir.join(format!("h2o-{port}.log")))
        });
        H2o { port, proc }
    }
}

// ---- openssl s_server -----------------------------------------------------------------------

/// `openssl s_server -www` on a port the OS chose (it prints `ACCEPT 127.0.0.1:PORT`).
pub struct SServer {
    pub port: u16,
    pub proc: Proc,
}

impl SServer {
    pub fn start(dir: &Path, cert: &Cert, extra: &[&str]) -> SServer {
        require("openssl");
        let mut cmd = Command::new("openssl");
        cmd.args(["s_server", "-accept", "127.0.0.1:0", "-www", "-cert"])
            .arg(&cert.cert)
            .arg("-key")
            .arg(&cert.key)
            .args(extra);
        let mut proc = Proc::spawn(
            &format!("openssl s_server {}", extra.join(" ")),
            &mut cmd,
            dir.join(format!("s_server{}.log", extra.join(""))),
        );
        let port = wait_for("s_server's ACCEPT line", Duration::from_secs(20), || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("s_server exited ({status}):\n{}", proc.log_text());
            }
            proc.log_text().lines().find_map(|l| {
                l.strip_prefix("ACCEPT 127.0.0.1:")
                    .and_then(|p| p.trim().parse::<u16>().ok())
            })
        });
        wait_listening(&mut proc, port).unwrap_or_else(|e| panic!("{e}"));
        SServer { port, proc }
    }
}
