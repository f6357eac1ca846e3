//! Redis Sentinel on loopback (issue 14): a primary, two replicas and three sentinels
//! (`redis-server --sentinel`, no separate package) that monitor it with quorum 2 and fail over
//! one second after the primary stops answering; and one TLS-only sentinel with ACL users.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::fleet::RedisNode;
use super::redis_tls::{cli_as, password, TlsFiles, ADMIN_USER};
use super::{free_port, require, unix_now, wait_for, Proc};

/// The master name the sentinels monitor.
pub const MASTER: &str = "stekmaster";
/// How long the primary must be silent before a sentinel calls it down.
pub const DOWN_AFTER_MS: u64 = 1000;

/// One `redis-server --sentinel` with its config file (sentinels rewrite it, so it is theirs).
pub struct SentinelNode {
    pub port: u16,
    pub dir: PathBuf,
    pub proc: Proc,
}

impl SentinelNode {
    /// Starts a sentinel that monitors the primary at `primary` as [`MASTER`], and waits until
    /// it answers.
    pub fn start(root: &Path, name: &str, primary: u16) -> SentinelNode {
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("sentinel dir");
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {MASTER} 4000\n\
                 sentinel parallel-syncs {MASTER} 2\n",
                dir = dir.display()
            ),
        )
        .expect("write sentinel.conf");
        let mut cmd = Command::new("redis-server");
        cmd.arg(&conf).arg("--sentinel");
        let proc = Proc::spawn(name, &mut cmd, dir.join(format!("{name}.log")));
        let n = SentinelNode { port, dir, proc };
        wait_for(
            &format!("{name} to answer PING"),
            Duration::from_secs(10),
            || (n.cli(&["PING"]) == "PONG").then_some(()),
        );
        n
    }

    /// `redis-cli -p PORT --raw ARGS`, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let o = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    /// The port of the primary this sentinel names now.
    pub fn primary_port(&self) -> Option<u16> {
        let answer = self.cli(&["SENTINEL", "get-master-addr-by-name", MASTER]);
        answer.lines().nth(1)?.trim().parse().ok()
    }
}

/// A primary, two replicas and three sentinels.
pub struct SentinelFleet {
    pub primary: RedisNode,
    pub replicas: [RedisNode; 2],
    pub sentinels: Vec<SentinelNode>,
}

impl SentinelFleet {
    /// Starts the data nodes, then the sentinels, and waits until the sentinels see each other
    /// and both replicas (`SENTINEL CKQUORUM` with 3 usable sentinels), so that a failover can
    /// be authorised as soon as the test needs one.
    pub fn start(root: &Path) -> SentinelFleet {
        require("redis-server");
        require("redis-cli");
        let primary = RedisNode::start(root, "redis-primary", None);
        let replicas = [
            RedisNode::start(root, "redis-replica-a", Some(primary.port)),
            RedisNode::start(root, "redis-replica-b", Some(primary.port)),
        ];
        let sentinels: Vec<SentinelNode> = (0..3)
            .map(|i| SentinelNode::start(root, &format!("sentinel{i}"), primary.port))
            .collect();
        let started = unix_now();
        for s in &sentinels {
            wait_for(
                &format!("sentinel at {} to see 3 sentinels and 2 replicas", s.port),
                Duration::from_secs(20),
                || {
                    let quorum = s.cli(&["SENTINEL", "CKQUORUM", MASTER]);
                    let master = s.cli(&["SENTINEL", "MASTER", MASTER]);
                    (quorum.starts_with("OK 3 usable") && field(&master, "num-slaves") == Some("2"))
                        .then_some(())
                },
            );
        }
        eprintln!(
            "sentinel: 3 sentinels agree on {MASTER} at 127.0.0.1:{} after {:?}",
            primary.port,
            unix_now() - started
        );
        SentinelFleet {
            primary,
            replicas,
            sentinels,
        }
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/MASTER`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The primary every sentinel names, once they agree.
    pub fn agreed_primary(&self) -> Option<u16> {
        let first = self.sentinels[0].primary_port()?;
        self.sentinels[1..]
            .iter()
            .all(|s| s.primary_port() == Some(first))
            .then_some(first)
    }
}

/// The value after the line `key` in `redis-cli --raw` output of a map (a line per key, then
/// a line per value).
pub fn field<'a>(raw: &'a str, key: &str) -> Option<&'a str> {
    let mut lines = raw.lines();
    while let Some(l) = lines.next() {
        if l == key {
            return lines.next();
        }
    }
    None
}

/// One TLS-only sentinel (`port 0`, `tls-port`) that monitors a TLS-only primary of
/// `redis_tls.rs` with quorum 1, logs in there as the administrator, and itself refuses clients
/// without `AUTH`: only the users of `users` (ACL lines) may ask it anything.
pub struct TlsSentinel {
    pub port: u16,
    pub proc: Proc,
    ca: PathBuf,
}

impl TlsSentinel {
    pub fn start(root: &Path, tls: &TlsFiles, primary: u16, users: &[&str]) -> TlsSentinel {
        let dir = root.join("tls-sentinel");
        fs::create_dir_all(&dir).expect("sentinel dir");
        let port = free_port();
        let mut conf = format!(
            "port 0\ntls-port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
             tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
             tls-auth-clients optional\ntls-replication yes\n\
             user default off\n",
            dir = dir.display(),
            cert = tls.server_cert.display(),
            key = tls.server_key.display(),
            ca = tls.ca.display(),
        );
        for user in users.iter().chain([&ADMIN_USER]) {
            conf.push_str(&format!("user {user} on >{} +@all\n", password(user)));
        }
        conf.push_str(&format!(
            "sentinel monitor {MASTER} 127.0.0.1 {primary} 1\n\
             sentinel auth-user {MASTER} {ADMIN_USER}\n\
             sentinel auth-pass {MASTER} {}\n\
             sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n",
            password(ADMIN_USER)
        ));
        let file = dir.join("sentinel.conf");
        fs::write(&file, conf).expect("write sentinel.conf");
        let mut cmd = Command::new("redis-server");
        cmd.arg(&file).arg("--sentinel");
        let proc = Proc::spawn("tls-sentinel", &mut cmd, dir.join("tls-sentinel.log"));
        let s = TlsSentinel {
            port,
            proc,
            ca: tls.ca.clone(),
        };
        wait_for(
            "the TLS sentinel to see its primary",
            Duration::from_secs(10),
            || {
                let master = s.cli(&["SENTINEL", "MASTER", MASTER]);
                (field(&master, "flags") == Some("master")
                    && field(&master, "num-slaves").is_some_and(|n| n != "0"))
                .then_some(())
            },
        );
        s
    }

    /// `redis-cli --tls ... --raw ARGS` as the administrator, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let o = cli_as(self.port, &self.ca, ADMIN_USER, args, None);
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }
}
