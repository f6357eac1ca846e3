//! Redis over TLS with ACL users (issue 14): a TLS-only primary and read replica (`port 0`,
//! `tls-port`, replication over TLS), certificates made by `openssl` for the test, and the users
//! of the README's "Authentication and TLS" part, whose rights are stek's own
//! [`GENERATOR_ACL`] and [`AGENT_ACL`]. [`RedisTlsFleet`] runs the fleet scenarios of
//! `fleet.rs` over it: generators log in as `stek-generator`, agents as `stek-agent`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use stek::store::redis::{AGENT_ACL, GENERATOR_ACL};

use super::fleet::{set_store_flags, Backend as _, RedisPair, RedisServer};
use super::{free_port, require, unix_now, wait_for, Proc};

/// The users of the test servers, with their passwords.
pub const GENERATOR_USER: &str = "stek-generator";
pub const AGENT_USER: &str = "stek-agent";
/// Replication (the README's line) and the test's own administration (`+@all`).
pub const REPLICA_USER: &str = "stek-replica";
pub const ADMIN_USER: &str = "stek-admin";

/// The CA, the server's certificate (for 127.0.0.1 and localhost), a client certificate, another
/// CA that signed none of them, and one private password file per user.
pub struct TlsFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub acl: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn private(path: &Path, text: &str) {
    fs::write(path, text).expect("write a private file");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

impl TlsFiles {
    /// Makes everything under `ROOT/tls`.
    pub fn make(root: &Path) -> TlsFiles {
        require("openssl");
        let dir = root.join("tls");
        fs::create_dir_all(&dir).expect("tls dir");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for (name, cn) in [("ca", "stek test CA"), ("other-ca", "another CA")] {
            let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
            let subject = format!("/CN={cn}");
            let mut a = vec!["req", "-x509"];
            a.extend(ec);
            a.extend(["-subj", &subject, "-days", "2"]);
            a.extend(["-keyout", &key, "-out", &pem]);
            openssl(&a, &dir);
        }
        fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("ext.cnf");
        for name in ["server", "client"] {
            let (key, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let subject = format!("/CN={name}");
            let mut a = vec!["req"];
            a.extend(ec);
            a.extend(["-subj", &subject, "-keyout", &key, "-out", &csr]);
            openssl(&a, &dir);
            openssl(
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    "ext.cnf",
                    "-out",
                    &pem,
                ],
                &dir,
            );
            // redis-server reads its key as whoever runs the test; stek wants 0600.
            fs::set_permissions(dir.join(&key), fs::Permissions::from_mode(0o600))
                .expect("chmod the key");
        }
        for user in [GENERATOR_USER, AGENT_USER, REPLICA_USER, ADMIN_USER] {
            private(
                &dir.join(format!("{user}.pw")),
                &format!("{}\n", password(user)),
            );
        }
        private(&dir.join("wrong.pw"), "not-the-password\n");
        let acl = dir.join("users.acl");
        fs::write(
            &acl,
            format!(
                "user default off\n\
                 user {GENERATOR_USER} on >{} {GENERATOR_ACL}\n\
                 user {AGENT_USER} on >{} {AGENT_ACL}\n\
                 user {REPLICA_USER} on >{} -@all +psync +replconf +ping\n\
                 user {ADMIN_USER} on >{} ~* &* +@all\n",
                password(GENERATOR_USER),
                password(AGENT_USER),
                password(REPLICA_USER),
                password(ADMIN_USER),
            ),
        )
        .expect("acl file");
        TlsFiles {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            acl,
            dir,
        }
    }

    /// The password file of `user` (or `wrong.pw`).
    pub fn password_file(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{user}.pw"))
    }

    /// The store flags of a stek process logging in as `user`.
    pub fn flags(&self, user: &str) -> Vec<String> {
        vec![
            "--store-ca".into(),
            self.ca.display().to_string(),
            "--store-user".into(),
            user.into(),
            "--store-password-file".into(),
            self.password_file(user).display().to_string(),
        ]
    }
}

/// Each user's password (test servers only).
pub fn password(user: &str) -> String {
    format!("{user}-secret-7f3a")
}

/// One TLS-only redis-server.
pub struct TlsNode {
    pub name: String,
    pub port: u16,
    pub dir: PathBuf,
    pub replicaof: Option<u16>,
    pub proc: Option<Proc>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    acl: PathBuf,
}

impl TlsNode {
    pub fn start(root: &Path, tls: &TlsFiles, name: &str, replicaof: Option<u16>) -> TlsNode {
        require("redis-server");
        require("redis-cli");
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("redis dir");
        let mut n = TlsNode {
            name: name.to_owned(),
            port: free_port(),
            dir,
            replicaof,
            proc: None,
            ca: tls.ca.clone(),
            cert: tls.server_cert.clone(),
            key: tls.server_key.clone(),
            acl: tls.acl.clone(),
        };
        n.spawn();
        n
    }

    pub fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--tls-port", &self.port.to_string()])
            .arg("--tls-cert-file")
            .arg(&self.cert)
            .arg("--tls-key-file")
            .arg(&self.key)
            .arg("--tls-ca-cert-file")
            .arg(&self.ca)
            .args(["--tls-auth-clients", "optional", "--tls-replication", "yes"])
            .arg("--aclfile")
            .arg(&self.acl)
            .args(["--save", "", "--appendonly", "no", "--rdbcompression", "no"])
            .arg("--dir")
            .arg(&self.dir);
        match self.replicaof {
            Some(p) => cmd
                .args(["--replicaof", "127.0.0.1", &p.to_string()])
                .args(["--masteruser", REPLICA_USER])
                .args(["--masterauth", &password(REPLICA_USER)]),
            None => cmd.args(["--repl-diskless-sync-delay", "0"]),
        };
        let log = self
            .dir
            .join(format!("{}-{}.log", self.name, unix_now().as_millis()));
        self.proc = Some(Proc::spawn(&self.name, &mut cmd, log));
        wait_for(
            &format!("{} to answer PING over TLS", self.name),
            Duration::from_secs(10),
            || (self.cli(&["PING"]) == b"PONG\n").then_some(()),
        );
        if let Some(primary) = self.replicaof {
            wait_for(
                &format!("{} to sync with its primary over TLS", self.name),
                Duration::from_secs(10),
                || {
                    String::from_utf8_lossy(&self.cli(&["INFO", "replication"]))
                        .contains("master_link_status:up")
                        .then_some(())
                },
            );
            // As in fleet.rs: wait until a write reaches the replica.
            let probe = format!("probe:{}", self.port);
            let r = cli_as(
                primary,
                &self.ca,
                ADMIN_USER,
                &["SET", &probe, "1", "PX", "60000"],
                None,
            );
            assert_eq!(r.stdout, b"OK\n", "SET {probe}");
            wait_for(
                &format!("writes to reach {}", self.name),
                Duration::from_secs(10),
                || (self.cli(&["GET", &probe]) == b"1\n").then_some(()),
            );
            cli_as(primary, &self.ca, ADMIN_USER, &["DEL", &probe], None);
        }
    }

    /// `redis-cli --tls --raw ARGS` as the administrator: its stdout.
    pub fn cli(&self, args: &[&str]) -> Vec<u8> {
        self.cli_in(args, None)
    }

    pub fn cli_in(&self, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
        cli_as(self.port, &self.ca, ADMIN_USER, args, input).stdout
    }

    /// `redis-cli --tls --raw ARGS` as `user`: its whole output.
    pub fn cli_user(&self, user: &str, args: &[&str]) -> String {
        output_text(&cli_as(self.port, &self.ca, user, args, None))
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn tls_args(port: u16, ca: &Path, user: &str) -> Vec<String> {
    vec![
        "--tls".into(),
        "--cacert".into(),
        ca.display().to_string(),
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "--user".into(),
        user.into(),
        "--pass".into(),
        password(user),
        "--no-auth-warning".into(),
    ]
}

/// `redis-cli --tls -p PORT --user USER --raw [-x] ARGS` (with `input` as the last argument).
pub fn cli_as(port: u16, ca: &Path, user: &str, args: &[&str], input: Option<&[u8]>) -> Output {
    let mut cmd = Command::new("redis-cli");
    cmd.args(tls_args(port, ca, user)).arg("--raw");
    if input.is_some() {
        cmd.arg("-x");
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    let mut stdin = child.stdin.take().expect("stdin");
    if let Some(b) = input {
        stdin.write_all(b).expect("write to redis-cli");
    }
    drop(stdin);
    child.wait_with_output().expect("redis-cli output")
}

fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A TLS-only primary (generators write, as `stek-generator`) and read replica (agents read,
/// as `stek-agent`), replicating over TLS.
pub struct RedisTlsFleet {
    pub tls: TlsFiles,
    pub primary: TlsNode,
    pub replica: TlsNode,
}

impl RedisTlsFleet {
    pub fn start(root: &Path) -> RedisTlsFleet {
        let tls = TlsFiles::make(root);
        let primary = TlsNode::start(root, &tls, "redis-tls-primary", None);
        let replica = TlsNode::start(root, &tls, "redis-tls-replica", Some(primary.port));
        let f = RedisTlsFleet {
            tls,
            primary,
            replica,
        };
        set_store_flags(&f.generator_url(), f.tls.flags(GENERATOR_USER));
        set_store_flags(&f.agent_url(), f.tls.flags(AGENT_USER));
        f
    }
}

impl RedisPair for RedisTlsFleet {
    type Server = TlsNode;
    const KIND: &'static str = "redis-tls";
    const SCHEME: &'static str = "rediss";

    fn primary(&self) -> &TlsNode {
        &self.primary
    }

    fn replica(&self) -> &TlsNode {
        &self.replica
    }

    fn replica_mut(&mut self) -> &mut TlsNode {
        &mut self.replica
    }

    fn port(server: &TlsNode) -> u16 {
        server.port
    }
}

impl RedisServer for TlsNode {
    fn cli(&self, args: &[&str]) -> Vec<u8> {
        TlsNode::cli(self, args)
    }

    fn cli_in(&self, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
        TlsNode::cli_in(self, args, input)
    }

    fn rdb(&self) -> Vec<u8> {
        let file = self.dir.join(format!("dump-{}.rdb", unix_now().as_nanos()));
        let o = Command::new("redis-cli")
            .args(tls_args(self.port, &self.ca, ADMIN_USER))
            .arg("--rdb")
            .arg(&file)
            .output()
            .expect("run redis-cli --rdb");
        assert!(o.status.success(), "redis-cli --rdb: {}", output_text(&o));
        let bytes = fs::read(&file).expect("read the dump");
        let _ = fs::remove_file(&file);
        assert!(bytes.starts_with(b"REDIS"), "not an RDB file");
        bytes
    }

    fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    fn kill(&mut self) {
        TlsNode::kill(self);
    }

    fn spawn(&mut self) {
        TlsNode::spawn(self);
    }
}
