//! The fleet tests (issue 3): real Redis and etcd servers on loopback, `stek generator` and
//! `stek agent` run as an operator would run them, and the scenarios both stores must pass.
//!
//! The scenarios are written once against [`Backend`] (what a test needs to see and do in a
//! store: list records, forge one, dump what the store keeps, stop the node the agents read) and
//! run by `fleet_redis.rs` and `fleet_etcd.rs`.
//!
//! Timing: P = 4 s, L = 8 s, so R = 2 and a window is 4 keys. A generator publishes the keys due
//! at a boundary P/8 = 0.5 s early, so slot `e`'s record exists from 3.5 s into slot `e - 2` (the
//! lead of one period plus that margin). Agents fetch one slot beyond their window, so they read
//! it at once (on the store's notification) and install it when slot `e - 1` starts (it enters
//! the window as the next key). Rings are sampled at [`MID`], long after every agent rotated and
//! before the generator's next round.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use stek::status::Status;

use super::{
    free_port, handshake, make_cert, require, sleep_into_next_slot, sleep_until_slot, ticket_name,
    unix_now, wait_for, Nginx, Proc, Tls,
};

/// The period, in seconds.
pub const P: u64 = 4;
/// The lifetime, in seconds.
pub const L: u64 = 8;
/// Past keys per window: ceil(L / P).
pub const R: u64 = 2;
/// The group every scenario uses.
pub const GROUP: &str = "web";
/// Where in a slot rings are sampled: every agent rotated at the boundary (plus a reload), and
/// the generators' next round is 3.5 s into the slot.
pub const MID: Duration = Duration::from_millis(1800);
/// How early a generator publishes the keys due at a boundary (P/8).
pub const MARGIN: Duration = Duration::from_millis(500);

/// The start of `slot`.
pub fn slot_start(slot: u64) -> Duration {
    Duration::from_secs(slot * P)
}

/// When the record of `slot` must be gone: the start of slot `slot + R + 1`.
pub fn erase_at(slot: u64) -> Duration {
    slot_start(slot + R + 1)
}

/// The current slot by the test's clock.
pub fn current_slot() -> u64 {
    unix_now().as_secs() / P
}

/// The longest a record may live from its creation: (lead + R + 1) periods plus the margin.
pub fn record_lifetime_bound() -> Duration {
    Duration::from_secs((1 + R + 1) * P) + MARGIN
}

// ---- identities -------------------------------------------------------------------------------

/// `stek keygen --kind KIND --out ROOT/NAME`: the private key file and the public key.
pub fn keygen(root: &Path, kind: &str, name: &str) -> (PathBuf, String) {
    let out = root.join(name);
    let o = Command::new(env!("CARGO_BIN_EXE_stek"))
        .args(["keygen", "--kind", kind, "--out"])
        .arg(&out)
        .output()
        .expect("run stek keygen");
    assert!(
        o.status.success(),
        "stek keygen: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let public = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .expect("a public key on stdout")
        .trim()
        .to_owned();
    let prefix = if kind == "group" {
        "stek-group1:"
    } else {
        "stek-generator1:"
    };
    assert!(public.starts_with(prefix), "public key {public:?}");
    (out, public)
}

// ---- stek processes ---------------------------------------------------------------------------

/// Store flags (TLS, credentials) that every generator and agent given a URL also gets, set by
/// backends whose URLs need them (`redis_tls.rs`), so the scenarios stay as they are.
static STORE_FLAGS: std::sync::Mutex<BTreeMap<String, Vec<String>>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Gives every stek process started with `url` these store flags too.
pub fn set_store_flags(url: &str, flags: Vec<String>) {
    STORE_FLAGS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(url.to_owned(), flags);
}

fn store_flags(url: &str) -> Vec<String> {
    STORE_FLAGS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(url)
        .cloned()
        .unwrap_or_default()
}

/// `stek generator` for [`GROUP`] with recipients `recipients` (comma-separated public keys).
pub fn generator(
    root: &Path,
    name: &str,
    url: &str,
    recipients: &str,
    key: &Path,
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stek"));
    cmd.args([
        "generator",
        "--store",
        url,
        "--group",
        &format!("{GROUP}={recipients}"),
        "--signing-key",
    ])
    .arg(key)
    .args(["--period", "4s"])
    .args(default_lifetime(extra))
    .args(store_flags(url))
    .args(extra);
    Proc::spawn(name, &mut cmd, root.join(format!("{name}.log")))
}

/// `--period 4s` ([`P`]) unless `extra` sets its own.
fn default_period(extra: &[&str]) -> &'static [&'static str] {
    if extra.contains(&"--period") {
        &[]
    } else {
        &["--period", "4s"]
    }
}

/// `--lifetime 8s` ([`L`]) unless `extra` sets its own.
fn default_lifetime(extra: &[&str]) -> &'static [&'static str] {
    if extra.contains(&"--lifetime") {
        &[]
    } else {
        &["--lifetime", "8s"]
    }
}

/// The keys a generator's log says it created: slot -> key name.
pub fn generated(log: &str) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("generated key ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some("for"), Some("slot"), Some(slot)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        if let Ok(slot) = slot.trim_end_matches(|c: char| !c.is_ascii_digit()).parse() {
            out.insert(slot, name.to_owned());
        }
    }
    out
}

/// A running `stek agent` with its key directory.
pub struct Agent {
    pub name: String,
    pub dir: PathBuf,
    pub proc: Proc,
}

impl Agent {
    /// Starts an agent of `group` writing the nginx files under `ROOT/NAME`, and waits for its
    /// first status.
    pub fn start(
        root: &Path,
        name: &str,
        url: &str,
        group: &str,
        identity: &Path,
        trust: &str,
        extra: &[&str],
    ) -> Agent {
        let dir = root.join(name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stek"));
        cmd.args(["agent", "--store", url, "--group", group, "--identity"])
            .arg(identity)
            .args(["--trust", trust, "--dir"])
            .arg(&dir)
            .args(["--no-memcached", "--sinks", "nginx"])
            .args(default_period(extra))
            .args(default_lifetime(extra))
            .args(store_flags(url))
            .args(extra);
        let proc = Proc::spawn(name, &mut cmd, root.join(format!("{name}.log")));
        let a = Agent {
            name: name.to_owned(),
            dir,
            proc,
        };
        wait_for(
            &format!("{name}'s first status.json"),
            Duration::from_secs(10),
            || a.status(),
        );
        a
    }

    /// `n` agents named `agent0`, `agent1`, ... of `group`, all with the same identity, trust
    /// and extra flags.
    pub fn start_many(
        n: usize,
        root: &Path,
        url: &str,
        group: &str,
        identity: &Path,
        trust: &str,
        extra: &[&str],
    ) -> Vec<Agent> {
        (0..n)
            .map(|i| {
                Agent::start(
                    root,
                    &format!("agent{i}"),
                    url,
                    group,
                    identity,
                    trust,
                    extra,
                )
            })
            .collect()
    }

    /// The agent's last status, if it wrote one.
    pub fn status(&self) -> Option<Status> {
        let bytes = fs::read(self.dir.join("status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits for the agent's status of `slot` (written at the slot's first sync).
    pub fn status_at(&self, slot: u64) -> Status {
        wait_for(
            &format!("{}'s status of slot {slot}", self.name),
            Duration::from_secs(3),
            || self.status().filter(|s| s.slot >= slot),
        )
    }

    /// The 80-byte nginx key files the agent holds now.
    /// The secret parts of every key the agent wrote, in each format's layout (the name, public,
    /// left out), labelled: nginx 80 (hmac32, aes32), Apache 48 (hmac16, aes16, when the agent
    /// writes it), HAProxy 80 (aes32, hmac32, when it writes it). Each format derives its own
    /// bytes from the slot secret, so each is looked for.
    pub fn secret_parts(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut add = |format: &str, k: &[u8], parts: &[(&str, std::ops::Range<usize>)]| {
            let name = super::hex(&k[..16]);
            for (label, r) in parts {
                out.push((
                    format!("the {format} {label} key of {name}"),
                    k[r.clone()].to_vec(),
                ));
            }
        };
        for k in self.key_files() {
            add("nginx", &k, &[("hmac", 16..48), ("aes", 48..80)]);
        }
        if let Ok(k) = fs::read(self.dir.join("apache/ticket.key")) {
            assert_eq!(k.len(), 48, "Apache's key file");
            add("Apache", &k, &[("hmac", 16..32), ("aes", 32..48)]);
        }
        if let Ok(text) = fs::read_to_string(self.dir.join("haproxy/tickets.keys")) {
            for line in text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
            {
                let k = BASE64
                    .decode(line.trim())
                    .expect("HAProxy's keys are base64");
                assert_eq!(k.len(), 80, "a HAProxy key");
                add("HAProxy", &k, &[("aes", 16..48), ("hmac", 48..80)]);
            }
        }
        out
    }

    pub fn key_files(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.dir.join("nginx/keys")) else {
            return out;
        };
        for e in rd.flatten() {
            if let Ok(b) = fs::read(e.path()) {
                assert_eq!(b.len(), 80, "{}", e.path().display());
                out.push(b);
            }
        }
        out
    }
}

/// Waits until an agent wrote its nginx include file and returns its path.
pub fn wait_nginx_conf_in(dir: &Path) -> PathBuf {
    let conf = dir.join("nginx/tickets.conf");
    wait_for(
        "the agent's nginx include file",
        Duration::from_secs(10),
        || conf.exists().then_some(()),
    );
    conf
}

/// The statuses of every agent for `slot`.
pub fn statuses_at(agents: &[&Agent], slot: u64) -> Vec<Status> {
    agents.iter().map(|a| a.status_at(slot)).collect()
}

/// A ring as the tests compare it: (slot, role, name, origin) in nginx order.
pub type RingView = Vec<(u64, String, String, String)>;

pub fn ring(s: &Status) -> RingView {
    s.keys
        .iter()
        .map(|k| (k.slot, k.role.clone(), k.name.clone(), k.origin.clone()))
        .collect()
}

/// The shared keys of a status: slot -> name.
pub fn shared(s: &Status) -> BTreeMap<u64, String> {
    s.keys
        .iter()
        .filter(|k| k.origin == "shared")
        .map(|k| (k.slot, k.name.clone()))
        .collect()
}

fn describe(agents: &[&Agent], st: &[Status]) -> String {
    agents
        .iter()
        .zip(st)
        .map(|(a, s)| format!("{}: {}", a.name, s.render()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that every agent holds the same ring, made only of the group's keys, encrypting with
/// the current slot's key.
pub fn assert_identical_shared(agents: &[&Agent], st: &[Status]) {
    let first = ring(&st[0]);
    for s in st {
        assert_eq!(ring(s), first, "rings differ:\n{}", describe(agents, st));
        assert_eq!(s.encrypting, "current", "{}", describe(agents, st));
        assert_eq!(s.keys.len() as u64, R + 2, "{}", describe(agents, st));
        assert!(
            s.keys.iter().all(|k| k.origin == "shared"),
            "a local key in the ring:\n{}",
            describe(agents, st)
        );
    }
}

/// Slot -> name of every shared key seen so far; panics if a slot ever shows two names.
#[derive(Debug, Default)]
pub struct Names(pub BTreeMap<u64, String>);

impl Names {
    pub fn add(&mut self, who: &str, s: &Status) {
        for (slot, name) in shared(s) {
            let seen = self.0.entry(slot).or_insert_with(|| name.clone());
            assert_eq!(
                *seen, name,
                "{who}: slot {slot} changed its key from {seen} to {name}"
            );
        }
        let names: BTreeSet<&String> = self.0.values().collect();
        assert_eq!(
            names.len(),
            self.0.len(),
            "one key name serves two slots: {:?}",
            self.0
        );
    }

    pub fn contains_name(&self, name: &str) -> bool {
        self.0.values().any(|n| n == name)
    }
}

// ---- what a test needs from a store -----------------------------------------------------------

/// A store as the tests see it, beside the product's own client.
pub trait Backend {
    /// `redis` or `etcd`.
    fn kind(&self) -> &'static str;
    /// The URL generators write to.
    fn generator_url(&self) -> String;
    /// The URL agents read from.
    fn agent_url(&self) -> String;
    /// The live records of `group` (where the generators write): slot -> raw value.
    fn records(&self, group: &str) -> BTreeMap<u64, Vec<u8>>;
    /// The slots of `group` that any node of the store still returns.
    fn live_slots(&self, group: &str) -> BTreeSet<u64>;
    /// Writes `value` under `(group, slot)`, replacing whatever is there, expiring at `expires_at`.
    fn put(&self, group: &str, slot: u64, value: &[u8], expires_at: Duration);
    /// Writes `value` under `(group, slot)` with no expiry at all (no TTL, no lease), replacing
    /// whatever is there, as a careless or hostile writer would.
    fn put_forever(&self, group: &str, slot: u64, value: &[u8]);
    /// Deletes the value of `(group, slot)`, as an attacker who deletes records would.
    fn delete(&self, group: &str, slot: u64);
    /// Writes `count` keys of `size` bytes under the group's prefix that are not slot keys, placed
    /// where a prefix or range read of the window around `slot` would return them.
    fn put_junk(&self, group: &str, slot: u64, count: usize, size: usize);
    /// Checks the record's store-side metadata (expiry, and for etcd version and lease) and
    /// returns how long it has left to live.
    fn check_record(&self, group: &str, slot: u64) -> Duration;
    /// Everything the store keeps that an attacker could read: (what, bytes, whether it is a
    /// whole-store dump or file rather than one raw value).
    fn dumps(&self) -> Vec<(String, Vec<u8>, bool)>;
    /// How late past its erase time a record may still be returned: the store's expiry
    /// granularity plus the test's polling.
    fn expiry_slack(&self) -> Duration;
    /// Stops the node the agents read (SIGKILL).
    fn stop(&mut self);
    /// Starts it again on the same address.
    fn restart(&mut self);
    /// The process id of the node the agents read (to SIGSTOP it).
    fn agent_store_pid(&self) -> u32;
}

fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---- Redis ------------------------------------------------------------------------------------

/// One redis-server on a loopback port.
pub struct RedisNode {
    pub name: String,
    pub port: u16,
    pub dir: PathBuf,
    pub replicaof: Option<u16>,
    pub proc: Option<Proc>,
}

impl RedisNode {
    /// Starts a node with its files under `ROOT/NAME` (a replica of `replicaof` if given) and
    /// waits until it serves (a replica: until its link to the primary is up).
    pub fn start(root: &Path, name: &str, replicaof: Option<u16>) -> RedisNode {
        require("redis-server");
        require("redis-cli");
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("redis dir");
        let mut n = RedisNode {
            name: name.to_owned(),
            port: free_port(),
            dir,
            replicaof,
            proc: None,
        };
        n.spawn();
        n
    }

    pub fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        // Uncompressed dumps: the key-material check reads them byte for byte.
        .args(["--rdbcompression", "no", "--dir"])
        .arg(&self.dir);
        match self.replicaof {
            Some(p) => cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]),
            None => cmd.args(["--repl-diskless-sync-delay", "0"]),
        };
        let log = self
            .dir
            .join(format!("{}-{}.log", self.name, unix_now().as_millis()));
        self.proc = Some(Proc::spawn(&self.name, &mut cmd, log));
        wait_for(
            &format!("{} to answer PING", self.name),
            Duration::from_secs(10),
            || (self.cli(&["PING"]) == b"PONG\n").then_some(()),
        );
        if let Some(primary) = self.replicaof {
            wait_for(
                &format!("{} to sync with its primary", self.name),
                Duration::from_secs(10),
                || {
                    String::from_utf8_lossy(&self.cli(&["INFO", "replication"]))
                        .contains("master_link_status:up")
                        .then_some(())
                },
            );
            // After a diskless sync the primary streams writes to the replica only once it
            // acknowledged the dump (its first REPLCONF ACK, up to a second later; INFO already
            // says online): until then new records reach the replica late. Wait for a write.
            let probe = format!("probe:{}", self.port);
            let r = cli_port(primary, &["SET", &probe, "1", "PX", "60000"], None);
            assert_eq!(r, b"OK\n", "SET {probe}");
            wait_for(
                &format!("writes to reach {}", self.name),
                Duration::from_secs(10),
                || (self.cli(&["GET", &probe]) == b"1\n").then_some(()),
            );
            cli_port(primary, &["DEL", &probe], None);
        }
    }

    /// `redis-cli --raw ARGS`: its stdout.
    pub fn cli(&self, args: &[&str]) -> Vec<u8> {
        self.cli_in(args, None)
    }

    /// `redis-cli --raw -x ARGS` with `input` as the last argument.
    pub fn cli_in(&self, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
        cli_port(self.port, args, input)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// `redis-cli -p PORT --raw [-x] ARGS` (with `input` as the last argument): its stdout.
fn cli_port(port: u16, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-p", &port.to_string(), "--raw"]);
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
    child.wait_with_output().expect("redis-cli output").stdout
}

/// A Redis primary (where generators write) and a read replica (where agents read).
pub struct RedisFleet {
    pub primary: RedisNode,
    pub replica: RedisNode,
}

impl RedisFleet {
    pub fn start(root: &Path) -> RedisFleet {
        let primary = RedisNode::start(root, "redis-primary", None);
        let replica = RedisNode::start(root, "redis-replica", Some(primary.port));
        RedisFleet { primary, replica }
    }
}

fn redis_key(group: &str, slot: u64) -> String {
    format!("stek:{group}:{slot}")
}

/// One Redis server as the Redis backends use it: plain ([`RedisNode`]) or over TLS with ACL
/// users (`redis_tls::TlsNode`).
pub trait RedisServer {
    /// `redis-cli --raw ARGS` as the test's administrator.
    fn cli(&self, args: &[&str]) -> Vec<u8>;
    /// The same with `input` as the last argument (`-x`).
    fn cli_in(&self, args: &[&str], input: Option<&[u8]>) -> Vec<u8>;
    /// The slots of `group` that have a record.
    fn keys(&self, group: &str) -> BTreeSet<u64> {
        String::from_utf8_lossy(&self.cli(&["KEYS", &format!("stek:{group}:*")]))
            .lines()
            .filter_map(|k| k.rsplit(':').next()?.parse().ok())
            .collect()
    }
    /// The value of `key`.
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut v = self.cli(&["GET", key]);
        // --raw ends every reply with a newline; a missing key is an empty line.
        assert_eq!(v.pop(), Some(b'\n'), "GET {key}");
        (!v.is_empty()).then_some(v)
    }
    /// A fresh RDB dump of the whole server.
    fn rdb(&self) -> Vec<u8>;
    /// Its process, while it runs.
    fn pid(&self) -> Option<u32>;
    /// SIGKILL.
    fn kill(&mut self);
    /// Starts it again on the same port.
    fn spawn(&mut self);
}

/// A Redis primary (where generators write) and a read replica (where agents read), as a fleet
/// [`Backend`]: [`RedisFleet`] and `redis_tls::RedisTlsFleet` differ only in their servers.
pub trait RedisPair {
    type Server: RedisServer;
    /// [`Backend::kind`].
    const KIND: &'static str;
    /// `redis` or `rediss`.
    const SCHEME: &'static str;
    fn primary(&self) -> &Self::Server;
    fn replica(&self) -> &Self::Server;
    fn replica_mut(&mut self) -> &mut Self::Server;
    fn port(server: &Self::Server) -> u16;
}

impl RedisPair for RedisFleet {
    type Server = RedisNode;
    const KIND: &'static str = "redis";
    const SCHEME: &'static str = "redis";

    fn primary(&self) -> &RedisNode {
        &self.primary
    }

    fn replica(&self) -> &RedisNode {
        &self.replica
    }

    fn replica_mut(&mut self) -> &mut RedisNode {
        &mut self.replica
    }

    fn port(server: &RedisNode) -> u16 {
        server.port
    }
}

impl RedisServer for RedisNode {
    fn cli(&self, args: &[&str]) -> Vec<u8> {
        RedisNode::cli(self, args)
    }

    fn cli_in(&self, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
        RedisNode::cli_in(self, args, input)
    }

    fn rdb(&self) -> Vec<u8> {
        let file = self.dir.join(format!("dump-{}.rdb", unix_now().as_nanos()));
        let o = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--rdb"])
            .arg(&file)
            .output()
            .expect("run redis-cli --rdb");
        assert!(
            o.status.success(),
            "redis-cli --rdb on {}: {}",
            self.name,
            output_text(&o)
        );
        let bytes = fs::read(&file).expect("read the dump");
        let _ = fs::remove_file(&file);
        assert!(
            bytes.starts_with(b"REDIS"),
            "{} is not an RDB file",
            file.display()
        );
        bytes
    }

    fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    fn kill(&mut self) {
        RedisNode::kill(self);
    }

    fn spawn(&mut self) {
        RedisNode::spawn(self);
    }
}

impl<T: RedisPair> Backend for T {
    fn kind(&self) -> &'static str {
        T::KIND
    }

    fn generator_url(&self) -> String {
        format!("{}://127.0.0.1:{}", T::SCHEME, T::port(self.primary()))
    }

    fn agent_url(&self) -> String {
        format!("{}://127.0.0.1:{}", T::SCHEME, T::port(self.replica()))
    }

    fn records(&self, group: &str) -> BTreeMap<u64, Vec<u8>> {
        let primary = self.primary();
        primary
            .keys(group)
            .into_iter()
            .filter_map(|s| Some((s, primary.get(&redis_key(group, s))?)))
            .collect()
    }

    fn live_slots(&self, group: &str) -> BTreeSet<u64> {
        let mut s = self.primary().keys(group);
        if self.replica().pid().is_some() {
            s.extend(self.replica().keys(group));
        }
        s
    }

    fn put(&self, group: &str, slot: u64, value: &[u8], expires_at: Duration) {
        let key = redis_key(group, slot);
        let r = self.primary().cli_in(&["SET", &key], Some(value));
        assert_eq!(r, b"OK\n", "SET {key}");
        let r = self
            .primary()
            .cli(&["PEXPIREAT", &key, &expires_at.as_millis().to_string()]);
        assert_eq!(r, b"1\n", "PEXPIREAT {key}");
    }

    fn put_forever(&self, group: &str, slot: u64, value: &[u8]) {
        let key = redis_key(group, slot);
        let r = self.primary().cli_in(&["SET", &key], Some(value));
        assert_eq!(r, b"OK\n", "SET {key}");
    }

    fn delete(&self, group: &str, slot: u64) {
        let key = redis_key(group, slot);
        let r = self.primary().cli(&["DEL", &key]);
        assert_eq!(r, b"1\n", "DEL {key}");
    }

    fn put_junk(&self, group: &str, slot: u64, count: usize, size: usize) {
        // One script on the primary writes them all (a command line could not carry 40 MB).
        let script = "for i = 1, tonumber(ARGV[1]) do \
            redis.call('SET', KEYS[1] .. i, string.rep('j', tonumber(ARGV[2])), 'EX', 600) end";
        let prefix = format!("{}-junk-", redis_key(group, slot));
        let r = self.primary().cli(&[
            "EVAL",
            script,
            "1",
            &prefix,
            &count.to_string(),
            &size.to_string(),
        ]);
        assert_eq!(r, b"\n", "the junk script: {}", String::from_utf8_lossy(&r));
    }

    fn check_record(&self, group: &str, slot: u64) -> Duration {
        let key = redis_key(group, slot);
        let text = String::from_utf8_lossy(&self.primary().cli(&["PTTL", &key]))
            .trim()
            .to_owned();
        let ms: i64 = text
            .parse()
            .unwrap_or_else(|_| panic!("PTTL {key}: {text:?}"));
        // -2: gone since it was listed (it expired); -1 would be a record without expiry.
        assert!(ms != -1, "{key} has no expiry");
        Duration::from_millis(ms.max(0) as u64)
    }

    fn dumps(&self) -> Vec<(String, Vec<u8>, bool)> {
        let mut out = vec![
            (
                "the primary's RDB dump".to_owned(),
                self.primary().rdb(),
                true,
            ),
            (
                "the replica's RDB dump".to_owned(),
                self.replica().rdb(),
                true,
            ),
        ];
        for (slot, v) in self.records(GROUP) {
            out.push((format!("GET {}", redis_key(GROUP, slot)), v, false));
        }
        out
    }

    /// Redis expires keys to the millisecond (reads check the expiry; replicas too).
    fn expiry_slack(&self) -> Duration {
        Duration::from_millis(500)
    }

    fn stop(&mut self) {
        self.replica_mut().kill();
    }

    fn restart(&mut self) {
        self.replica_mut().spawn();
    }

    fn agent_store_pid(&self) -> u32 {
        self.replica().pid().expect("the replica runs")
    }
}

// ---- etcd -------------------------------------------------------------------------------------

/// One etcd member on loopback ports, its data on tmpfs.
pub struct EtcdNode {
    pub client_port: u16,
    pub peer_port: u16,
    pub data: PathBuf,
    pub root: PathBuf,
    pub proc: Option<Proc>,
}

impl EtcdNode {
    pub fn start(root: &Path) -> EtcdNode {
        require("etcd");
        let mut n = EtcdNode {
            client_port: free_port(),
            peer_port: free_port(),
            data: root.join("etcd-data"),
            root: root.to_owned(),
            proc: None,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "n1", "--data-dir"])
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("n1={peer}")])
            // Requests up to 100 MiB (the default is 1.5 MiB): a hostile writer's cluster may be
            // configured so, and the scenarios plant values of 50 MB.
            .args(["--max-request-bytes", "104857600"]);
        let log = self
            .root
            .join(format!("etcd-{}.log", unix_now().as_millis()));
        self.proc = Some(Proc::spawn("etcd", &mut cmd, log));
        wait_for("etcd to be healthy", Duration::from_secs(20), || {
            let (code, body) = self.http("GET", "/health", None)?;
            (code == 200 && body.contains("true")).then_some(())
        });
    }

    /// One HTTP/1.0 request to the member's client port: (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.client_port)).ok()?;
        // Generous: etcd takes seconds to store a 50 MB value, longer on a loaded machine (seen:
        // 7.7 s for one put, then no answer within 5 s for the next). A call that never answers
        // still fails the test, after a minute.
        s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    }

    /// A gateway call that must succeed.
    pub fn call(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let (code, text) = self
            .http("POST", path, Some(&body))
            .unwrap_or_else(|| panic!("etcd {path}: no answer"));
        assert_eq!(code, 200, "etcd {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("etcd {path}: {e}: {text}"))
    }

    /// The key-value pairs under `stek/<group>/`.
    pub fn range(&self, group: &str) -> Vec<serde_json::Value> {
        let prefix = format!("stek/{group}/");
        let end = format!("stek/{group}0");
        let r = self.call(
            "/v3/kv/range",
            serde_json::json!({"key": BASE64.encode(&prefix), "range_end": BASE64.encode(&end)}),
        );
        r.get("kvs")
            .and_then(|k| k.as_array())
            .cloned()
            .unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn etcd_key(group: &str, slot: u64) -> String {
    format!("stek/{group}/{slot:020}")
}

/// A field of the gateway's JSON that holds a 64-bit integer (as a string), 0 when left out.
pub fn int_field(v: &serde_json::Value, field: &str) -> i64 {
    match v.get(field) {
        None => 0,
        Some(serde_json::Value::String(s)) => {
            s.parse().unwrap_or_else(|_| panic!("{field}: {s:?}"))
        }
        Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or_else(|| panic!("{field}: {n}")),
        Some(other) => panic!("{field}: {other}"),
    }
}

fn kv_slot(kv: &serde_json::Value) -> Option<u64> {
    let key = BASE64.decode(kv.get("key")?.as_str()?).ok()?;
    String::from_utf8(key)
        .ok()?
        .rsplit('/')
        .next()?
        .parse()
        .ok()
}

fn kv_value(kv: &serde_json::Value) -> Vec<u8> {
    kv.get("value")
        .and_then(|v| v.as_str())
        .map(|v| BASE64.decode(v).expect("base64 value"))
        .unwrap_or_default()
}

fn files_under(dir: &Path, out: &mut Vec<(String, Vec<u8>, bool)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if let Ok(b) = fs::read(&p) {
            out.push((format!("etcd's file {}", p.display()), b, true));
        }
    }
}

impl Backend for EtcdNode {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn generator_url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    fn agent_url(&self) -> String {
        self.generator_url()
    }

    fn records(&self, group: &str) -> BTreeMap<u64, Vec<u8>> {
        self.range(group)
            .iter()
            .filter_map(|kv| Some((kv_slot(kv)?, kv_value(kv))))
            .collect()
    }

    fn live_slots(&self, group: &str) -> BTreeSet<u64> {
        self.range(group).iter().filter_map(kv_slot).collect()
    }

    fn put(&self, group: &str, slot: u64, value: &[u8], expires_at: Duration) {
        let ttl = expires_at.saturating_sub(unix_now()).as_secs() + 1;
        let lease = self.call(
            "/v3/lease/grant",
            serde_json::json!({"TTL": ttl.to_string()}),
        );
        let id = int_field(&lease, "ID");
        self.call(
            "/v3/kv/put",
            serde_json::json!({"key": BASE64.encode(etcd_key(group, slot)), "value": BASE64.encode(value), "lease": id.to_string()}),
        );
    }

    fn put_forever(&self, group: &str, slot: u64, value: &[u8]) {
        self.call(
            "/v3/kv/put",
            serde_json::json!({"key": BASE64.encode(etcd_key(group, slot)), "value": BASE64.encode(value)}),
        );
    }

    fn delete(&self, group: &str, slot: u64) {
        let r = self.call(
            "/v3/kv/deleterange",
            serde_json::json!({"key": BASE64.encode(etcd_key(group, slot))}),
        );
        assert_eq!(
            int_field(&r, "deleted"),
            1,
            "delete {}: {r}",
            etcd_key(group, slot)
        );
    }

    fn put_junk(&self, group: &str, slot: u64, count: usize, size: usize) {
        // Keys that sort right after the slot's own key, inside any range over the window.
        // etcd takes at most 128 operations per transaction.
        let junk = BASE64.encode(vec![b'j'; size]);
        let keys: Vec<String> = (0..count)
            .map(|i| format!("{}-junk-{i}", etcd_key(group, slot)))
            .collect();
        for batch in keys.chunks(100) {
            let ops: Vec<serde_json::Value> = batch
                .iter()
                .map(|k| serde_json::json!({"request_put": {"key": BASE64.encode(k), "value": junk}}))
                .collect();
            self.call("/v3/kv/txn", serde_json::json!({ "success": ops }));
        }
    }

    /// Every record is written once (version 1) and held by a lease that is still running.
    fn check_record(&self, group: &str, slot: u64) -> Duration {
        let key = etcd_key(group, slot);
        let r = self.call(
            "/v3/kv/range",
            serde_json::json!({"key": BASE64.encode(&key)}),
        );
        let Some(kv) = r
            .get("kvs")
            .and_then(|k| k.as_array())
            .and_then(|k| k.first())
            .cloned()
        else {
            return Duration::ZERO; // expired since it was listed
        };
        assert_eq!(int_field(&kv, "version"), 1, "{key} was overwritten: {kv}");
        let lease = int_field(&kv, "lease");
        assert_ne!(lease, 0, "{key} has no lease: {kv}");
        let t = self.call(
            "/v3/lease/timetolive",
            serde_json::json!({"ID": lease.to_string()}),
        );
        let ttl = int_field(&t, "TTL");
        assert!(
            ttl != -1,
            "the lease of {key} is gone but the key is not: {t}"
        );
        Duration::from_secs(ttl.max(0) as u64)
    }

    /// The member's files on disk (WAL and the bolt database keep history, deleted keys too)
    /// and the raw values.
    fn dumps(&self) -> Vec<(String, Vec<u8>, bool)> {
        let mut out = Vec::new();
        files_under(&self.data, &mut out);
        assert!(
            !out.is_empty(),
            "no etcd files under {}",
            self.data.display()
        );
        for (slot, v) in self.records(GROUP) {
            out.push((format!("the value of {}", etcd_key(GROUP, slot)), v, false));
        }
        out
    }

    /// Lease TTLs are whole seconds (the product rounds up) and etcd revokes expired leases
    /// in a loop every 500 ms.
    fn expiry_slack(&self) -> Duration {
        Duration::from_millis(2500)
    }

    fn stop(&mut self) {
        self.kill();
    }

    fn restart(&mut self) {
        self.spawn();
    }

    fn agent_store_pid(&self) -> u32 {
        self.proc.as_ref().expect("etcd runs").pid()
    }
}

// ---- scenarios --------------------------------------------------------------------------------

/// Many byte strings (2 to [`Needles::MAX`] bytes) looked for at once, each with a description.
/// Fast enough for etcd's 64 MB preallocated WAL in a debug build: all-zero blocks are skipped
/// with a memcmp and other positions are filtered by their first two bytes.
pub struct Needles {
    by_prefix: Vec<Vec<(Vec<u8>, String)>>,
}

impl Needles {
    const MAX: usize = 128;
    const BLOCK: usize = 4096;

    pub fn new() -> Needles {
        Needles {
            by_prefix: vec![Vec::new(); 1 << 16],
        }
    }

    pub fn add(&mut self, needle: &[u8], what: String) {
        assert!(
            (2..=Self::MAX).contains(&needle.len()),
            "needle of {} bytes",
            needle.len()
        );
        self.by_prefix[usize::from(u16::from_be_bytes([needle[0], needle[1]]))]
            .push((needle.to_vec(), what));
    }

    /// The description of a needle found in `hay`, if any.
    pub fn find(&self, hay: &[u8]) -> Option<&str> {
        static ZERO: [u8; Needles::BLOCK] = [0; Needles::BLOCK];
        let blocks: Vec<bool> = hay
            .chunks(Self::BLOCK)
            .map(|c| c != &ZERO[..c.len()])
            .collect();
        for (b, nonzero) in blocks.iter().enumerate() {
            let start = b * Self::BLOCK;
            let end = (start + Self::BLOCK).min(hay.len().saturating_sub(1));
            // A match starting in a zero block must reach into the next one.
            let from = if *nonzero {
                start
            } else if blocks.get(b + 1) == Some(&true) {
                end.saturating_sub(Self::MAX).max(start)
            } else {
                continue;
            };
            for i in from..end {
                let candidates =
                    &self.by_prefix[usize::from(u16::from_be_bytes([hay[i], hay[i + 1]]))];
                for (n, what) in candidates {
                    if hay[i..].starts_with(n) {
                        return Some(what);
                    }
                }
            }
        }
        None
    }
}

impl Default for Needles {
    fn default() -> Self {
        Self::new()
    }
}

/// Done when: three agents on the store's read side and two generators on the write side hold
/// identical rings between rotations; `kill -9` of one generator changes nothing; every slot has
/// exactly one key.
pub fn identical_rings_and_generator_kill(b: &mut dyn Backend, root: &Path) {
    let (k1, pub1) = keygen(root, "generator", "gen1.key");
    let (k2, pub2) = keygen(root, "generator", "gen2.key");
    let (id, idpub) = keygen(root, "group", "web.identity");
    let mut gens = [
        Some(generator(
            root,
            "gen1",
            &b.generator_url(),
            &idpub,
            &k1,
            &[],
        )),
        Some(generator(
            root,
            "gen2",
            &b.generator_url(),
            &idpub,
            &k2,
            &[],
        )),
    ];
    // The first slot with a record (the generators make the current and the next slot, as of
    // half a second from now).
    let first = wait_for("the first records", Duration::from_secs(10), || {
        b.records(GROUP).keys().next().copied()
    });
    let trust = format!("{pub1},{pub2}");
    let agents = Agent::start_many(3, root, &b.agent_url(), GROUP, &id, &trust, &[]);
    let refs: Vec<&Agent> = agents.iter().collect();
    let mut names = Names::default();
    let (mut sampled, mut killed) = (0, None);
    while sampled < 7 {
        let slot = sleep_into_next_slot(P, MID);
        let st = statuses_at(&refs, slot);
        for (a, s) in refs.iter().zip(&st) {
            names.add(&a.name, s);
        }
        // Slots before the generators started have no record: the window is all shared from
        // first + R on.
        if slot < first + R {
            continue;
        }
        assert_identical_shared(&refs, &st);
        sampled += 1;
        if sampled == 3 {
            // Kill the generator that made the newest key: the other must carry on alone.
            let logs: Vec<BTreeMap<u64, String>> = gens
                .iter()
                .map(|g| generated(&g.as_ref().expect("running").log_text()))
                .collect();
            let newest = |m: &BTreeMap<u64, String>| m.keys().next_back().copied().unwrap_or(0);
            let victim = usize::from(newest(&logs[1]) > newest(&logs[0]));
            let mut g = gens[victim].take().expect("running");
            g.child.kill().expect("kill -9 the generator");
            let _ = g.child.wait();
            eprintln!(
                "{}: killed gen{} (SIGKILL) in slot {slot}",
                b.kind(),
                victim + 1
            );
            killed = Some((slot, victim, g));
        }
    }
    let (kill_slot, victim, dead) = killed.expect("a generator was killed");
    let survivor = gens[1 - victim].as_ref().expect("the survivor runs");
    // Exactly one key per slot: no slot was created by both generators, and each created key is
    // the one the agents hold.
    let made_dead = generated(&dead.log_text());
    let made_alive = generated(&survivor.log_text());
    for (slot, name) in &made_dead {
        assert!(
            !made_alive.contains_key(slot),
            "both generators created slot {slot}"
        );
        assert!(
            *slot <= kill_slot + 1,
            "the killed generator created slot {slot} after its death"
        );
        if let Some(n) = names.0.get(slot) {
            assert_eq!(n, name, "slot {slot}");
        }
    }
    for (slot, name) in &made_alive {
        if let Some(n) = names.0.get(slot) {
            assert_eq!(n, name, "slot {slot}");
        }
    }
    let last = *names.0.keys().next_back().expect("keys seen");
    for slot in kill_slot + 2..=last {
        assert!(
            made_alive.contains_key(&slot),
            "slot {slot} after the kill was not made by the survivor"
        );
    }
    eprintln!(
        "{}: {} slots, gen{} made {:?}, the survivor made {:?}",
        b.kind(),
        names.0.len(),
        victim + 1,
        made_dead.keys().collect::<Vec<_>>(),
        made_alive.keys().collect::<Vec<_>>()
    );
}

/// Done when: the store holds no key material in any readable form (its dumps and raw values
/// against every agent's key files); every record has an expiry (and for etcd version 1 and a
/// lease) and really expires once the generators are gone.
pub fn no_key_material_and_every_record_expires(b: &mut dyn Backend, root: &Path) {
    let (gk, gpub) = keygen(root, "generator", "gen.key");
    let (id, idpub) = keygen(root, "group", "web.identity");
    let gens = vec![
        generator(root, "gen1", &b.generator_url(), &idpub, &gk, &[]),
        generator(root, "gen2", &b.generator_url(), &idpub, &gk, &[]),
    ];
    // Apache's and HAProxy's files too: each format derives its own bytes from the secret.
    let sinks = ["--sinks", "apache,haproxy"];
    let agents = Agent::start_many(3, root, &b.agent_url(), GROUP, &id, &gpub, &sinks);
    let refs: Vec<&Agent> = agents.iter().collect();
    let mut names = Names::default();
    let mut checked_keys = BTreeSet::new();
    let mut checked_records = 0;
    for _ in 0..3 {
        let slot = sleep_into_next_slot(P, MID);
        let st = statuses_at(&refs, slot);
        for (a, s) in refs.iter().zip(&st) {
            names.add(&a.name, s);
        }
        let keys: BTreeSet<Vec<u8>> = agents.iter().flat_map(Agent::key_files).collect();
        assert!(
            keys.len() >= (R + 2) as usize,
            "the agents hold {} key files",
            keys.len()
        );
        // Every live record: an expiry within the bound.
        let records = b.records(GROUP);
        assert!(
            records.len() >= 2,
            "the store holds {} records",
            records.len()
        );
        for s in records.keys() {
            let left = b.check_record(GROUP, *s);
            assert!(
                left <= record_lifetime_bound() + Duration::from_secs(1),
                "slot {s} lives {left:?} more"
            );
            checked_records += 1;
        }
        // The secret parts of every key in every format the agents write (the name is public):
        // any 16 bytes of them, or the whole part in hex, HEX or base64.
        let mut secret = Needles::new();
        let parts: BTreeMap<String, Vec<u8>> =
            agents.iter().flat_map(Agent::secret_parts).collect();
        assert!(
            ["nginx", "Apache", "HAProxy"]
                .iter()
                .all(|f| parts.keys().any(|l| l.starts_with(&format!("the {f} ")))),
            "every format's keys are searched for: {:?}",
            parts.keys().collect::<Vec<_>>()
        );
        for (label, part) in &parts {
            for (i, w) in part.windows(16).enumerate() {
                secret.add(w, format!("bytes {i}..{} of {label}", i + 16));
            }
            let hex = super::hex(part);
            secret.add(hex.as_bytes(), format!("{label} in hex"));
            secret.add(hex.to_uppercase().as_bytes(), format!("{label} in HEX"));
            secret.add(BASE64.encode(part).as_bytes(), format!("{label} in base64"));
        }
        // Not vacuous: whole-store dumps do hold the records, whose headers carry the key names.
        let mut public = Needles::new();
        for k in st[0].keys.iter().filter(|k| k.origin == "shared") {
            let name: Vec<u8> = (0..16)
                .map(|i| u8::from_str_radix(&k.name[2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            public.add(&name, k.name.clone());
        }
        // The search finds what it looks for, also across a block of zeros.
        let probe = keys.iter().next().expect("a key");
        let mut hay = vec![0u8; 3 * Needles::BLOCK];
        hay[2 * Needles::BLOCK - 7..2 * Needles::BLOCK + 9].copy_from_slice(&probe[20..36]);
        assert!(
            secret.find(&hay).is_some() && secret.find(probe).is_some(),
            "the search is broken"
        );
        for (what, bytes, whole) in b.dumps() {
            if let Some(found) = secret.find(&bytes) {
                panic!("{what} holds key material: {found}");
            }
            // (etcd preallocates its next WAL file: all zeros.)
            if whole && bytes.iter().any(|&x| x != 0) {
                assert!(
                    public.find(&bytes).is_some(),
                    "{what} holds no record's key name: is it a dump of the records at all?"
                );
            }
        }
        checked_keys.extend(keys);
    }
    eprintln!(
        "{}: {} agent keys checked against the store's dumps; {checked_records} record checks (expiry; etcd: version 1 and a lease)",
        b.kind(),
        checked_keys.len()
    );

    // Stop the generators: every record must disappear, each by its erase time (give or take
    // the store's granularity: etcd rounds lease TTLs up to whole seconds and checks them every
    // 500 ms).
    drop(gens);
    let stopped = Instant::now();
    let slack = b.expiry_slack();
    let mut last_seen: BTreeMap<u64, Duration> = BTreeMap::new();
    wait_for(
        "the store to drop every record",
        record_lifetime_bound() + Duration::from_secs(5),
        || {
            let now = unix_now();
            let live = b.live_slots(GROUP);
            for s in &live {
                assert!(
                    now < erase_at(*s) + slack,
                    "slot {s}'s record outlived its erase time {:?}",
                    erase_at(*s)
                );
                last_seen.insert(*s, now);
            }
            live.is_empty().then_some(())
        },
    );
    let late = last_seen
        .iter()
        .map(|(s, t)| t.saturating_sub(erase_at(*s)))
        .max()
        .unwrap_or_default();
    eprintln!(
        "{}: the store was empty {:?} after the generators stopped; a record outlived its erase time by at most {late:?}",
        b.kind(),
        stopped.elapsed()
    );
}

/// An nginx stopped with SIGTERM when dropped, so that its master stops its workers: SIGKILL
/// alone (what `Proc` does) leaves the workers running, orphaned, holding the port.
pub struct GracefulNginx(pub Nginx);

impl std::ops::Deref for GracefulNginx {
    type Target = Nginx;

    fn deref(&self) -> &Nginx {
        &self.0
    }
}

impl Drop for GracefulNginx {
    fn drop(&mut self) {
        super::terminate(&mut self.0.proc.child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.proc.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The record of slot `from` in `records`, its header moved to slot `to` (slot and validity
/// rewritten, the signature kept): a record that matches every header check for `to` and fails
/// only its signature.
fn moved_to(records: &BTreeMap<u64, Vec<u8>>, from: u64, to: u64) -> Vec<u8> {
    let bytes = records
        .get(&from)
        .unwrap_or_else(|| panic!("the record of slot {from}"));
    let mut record = stek_core::Record::decode(bytes).expect("a genuine record decodes");
    let shift = (to - from) * P;
    let h = &mut record.header;
    h.slot = stek_core::Slot(to);
    h.not_before += shift;
    h.not_after += shift;
    record.encode().as_slice().to_vec()
}

/// Agents stopped with SIGSTOP until dropped (then SIGCONT).
pub struct Paused(Vec<u32>);

impl Paused {
    pub fn new(agents: &[&Agent]) -> Paused {
        Paused::pids(agents.iter().map(|a| a.proc.pid()).collect())
    }

    /// Any processes.
    pub fn pids(pids: Vec<u32>) -> Paused {
        signal("-STOP", &pids);
        Paused(pids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

fn signal(sig: &str, pids: &[u32]) {
    let st = Command::new("kill")
        .arg(sig)
        .args(pids.iter().map(|p| p.to_string()))
        .status()
        .expect("run kill");
    assert!(st.success(), "kill {sig} {pids:?}");
}

/// Done when: an agent whose identity is outside the group and one trusting another generator
/// install none of the group's keys; records that are garbage, truncated, replayed into another
/// slot or group, or corrupted are rejected and counted; the good agents keep serving shared keys.
pub fn outsiders_and_forgeries_are_rejected(b: &mut dyn Backend, root: &Path) {
    let (gk, gpub) = keygen(root, "generator", "gen.key");
    let (_, rogue_pub) = keygen(root, "generator", "rogue.key");
    let (id, idpub) = keygen(root, "group", "web.identity");
    let (outsider_id, _) = keygen(root, "group", "outsider.identity");
    // The generator runs 1.5 s ahead: it publishes the keys due at a boundary 2 s early, away
    // from the boundaries where the test samples.
    let gen = generator(
        root,
        "gen",
        &b.generator_url(),
        &idpub,
        &gk,
        &["--clock-offset-ms", "1500"],
    );
    let url = b.agent_url();
    let good = [
        Agent::start(root, "good0", &url, GROUP, &id, &gpub, &[]),
        Agent::start(root, "good1", &url, GROUP, &id, &gpub, &[]),
    ];
    let outsider = Agent::start(root, "outsider", &url, GROUP, &outsider_id, &gpub, &[]);
    let wrong_trust = Agent::start(root, "wrong-trust", &url, GROUP, &id, &rogue_pub, &[]);
    // Group "api" gets copies of web's records: replays into another group.
    let api = Agent::start(root, "api", &url, "api", &id, &gpub, &[]);
    let goods: Vec<&Agent> = good.iter().collect();
    let bad: Vec<&Agent> = vec![&outsider, &wrong_trust, &api];
    let everyone: Vec<&Agent> = goods.iter().chain(bad.iter()).copied().collect();
    let mut names = Names::default();
    let mut forged: BTreeSet<u64> = BTreeSet::new();

    let replay_into_api = || {
        let have = b.live_slots("api");
        for (slot, v) in b.records(GROUP) {
            if !have.contains(&slot) {
                b.put("api", slot, &v, erase_at(slot));
            }
        }
    };
    let rejected = |a: &Agent, reason: &str| {
        a.status()
            .and_then(|s| s.rejected.get(reason).copied())
            .unwrap_or(0)
    };
    // Every check made at a sample: the outsiders never hold a group key, the good ones agree,
    // and a forged slot holds, if anything, the key the generator repaired it with.
    let check = |slot: u64, names: &mut Names, forged: &BTreeSet<u64>| -> Vec<Status> {
        let st = statuses_at(&goods, slot);
        let fixed = repaired(&gen.log_text());
        for (a, s) in goods.iter().zip(&st) {
            names.add(&a.name, s);
            assert!(
                s.encrypting != "local_fallback",
                "{} fell back:\n{}",
                a.name,
                s.render()
            );
            assert_eq!(
                s.keys[0].origin,
                "shared",
                "{} encrypts with a local key:\n{}",
                a.name,
                s.render()
            );
            for k in &s.keys {
                assert!(
                    !(forged.contains(&k.slot)
                        && k.origin == "shared"
                        && fixed.get(&k.slot) != Some(&k.name)),
                    "{} installed the forged slot {}:\n{}",
                    a.name,
                    k.slot,
                    s.render()
                );
            }
        }
        assert_eq!(
            shared(&st[0]),
            shared(&st[1]),
            "the good agents disagree:\n{}",
            describe(&goods, &st)
        );
        for a in &bad {
            let s = a.status().expect("status");
            for k in &s.keys {
                assert_eq!(
                    k.origin,
                    "local",
                    "{} installed a key:\n{}",
                    a.name,
                    s.render()
                );
                assert!(
                    !names.contains_name(&k.name),
                    "{} holds the group's key {}",
                    a.name,
                    k.name
                );
            }
        }
        st
    };

    for a in &goods {
        wait_for(
            &format!("{} to hold the current key", a.name),
            Duration::from_secs(2 * P),
            || a.status().filter(|s| s.encrypting == "current").map(|_| ()),
        );
    }
    let e = sleep_into_next_slot(P, Duration::from_millis(300));
    // 1. Garbage, then a truncated record, then a real record replayed from another slot, all
    //    under slot e + 2 before the generator makes it (it makes it 2 s into slot e). Agents
    //    read each at once (they fetch slot e + 2 already, to hold it ready) and would install
    //    it when slot e + 1 starts. The generator is paused from here (before its round, however
    //    slow this machine): it repairs forged slots (issue 11), and the agents must see every
    //    variant first.
    let paused_generator = Paused::pids(vec![gen.pid()]);
    replay_into_api();
    check(e, &mut names, &forged);
    let f1 = e + 2;
    assert!(
        !b.live_slots(GROUP).contains(&f1),
        "slot {f1} already exists: the test is late"
    );
    let real = b
        .records(GROUP)
        .remove(&(e + 1))
        .expect("the record of slot e + 1");
    forged.insert(f1);
    let variants: [(&str, Vec<u8>); 3] = [
        (
            "bad_magic",
            b"this is not a stek record, just some garbage bytes".to_vec(),
        ),
        ("truncated", real[..real.len() / 2].to_vec()),
        ("header_mismatch", real.clone()),
    ];
    for (reason, value) in &variants {
        let before: Vec<u64> = everyone.iter().map(|a| rejected(a, reason)).collect();
        b.put(GROUP, f1, value, erase_at(f1));
        for (a, n) in everyone.iter().zip(before) {
            if a.name == "api" {
                continue; // reads group api only
            }
            wait_for(
                &format!("{} to reject the {reason} record", a.name),
                Duration::from_secs(2 * P),
                || (rejected(a, reason) > n).then_some(()),
            );
        }
        eprintln!(
            "{}: every agent rejected the forged record ({reason})",
            b.kind()
        );
    }
    // Resumed, the generator finds the replayed record (a header for another slot) and
    // replaces it: when slot e + 2 comes the agents encrypt with that new key, never a forgery.
    drop(paused_generator);
    sleep_until_slot(P, e + 2, Duration::from_millis(1200));
    // Paused again at once, before its round of 2 s into slot e + 2 (step 2 below).
    let paused_generator = Paused::pids(vec![gen.pid()]);
    let st = check(e + 2, &mut names, &forged);
    let fixed = repaired(&gen.log_text());
    for s in &st {
        assert_eq!(s.encrypting, "current", "{}", s.render());
        assert_eq!(Some(&s.encrypting_name), fixed.get(&f1), "{}", s.render());
    }
    replay_into_api();
    // 2. Corruption: the genuine record of slot e + 3 with its header moved to slot e + 4 (the
    //    slot and validity fields rewritten), put under e + 4 before the generator makes it (2 s
    //    into slot e + 2). Every header field is what the agents expect there; only the signature
    //    gives it away: what they would see if the store altered a record before they read it.
    //    The generator is paused (since the start of slot e + 2) so that the agents see the
    //    altered record first.
    let f2 = e + 4;
    forged.insert(f2);
    let before: Vec<u64> = everyone
        .iter()
        .map(|a| rejected(a, "bad_signature"))
        .collect();
    assert!(
        !b.live_slots(GROUP).contains(&f2),
        "slot {f2} already exists: the test is late"
    );
    b.put(
        GROUP,
        f2,
        &moved_to(&b.records(GROUP), e + 3, f2),
        erase_at(f2),
    );
    // The untrusting agent stops at the signer, before the signature; group api does not read
    // web's records.
    for (a, n) in everyone.iter().zip(&before) {
        if a.name == "wrong-trust" || a.name == "api" {
            continue;
        }
        wait_for(
            &format!("{} to reject the corrupted record", a.name),
            Duration::from_secs(2 * P),
            || (rejected(a, "bad_signature") > *n).then_some(()),
        );
    }
    eprintln!(
        "{}: every agent rejected the corrupted record (bad_signature)",
        b.kind()
    );
    drop(paused_generator);
    sleep_until_slot(P, e + 3, MID);
    let st = check(e + 3, &mut names, &forged);
    for s in &st {
        assert_eq!(s.encrypting, "current", "{}", s.render());
    }
    // The generator's round, resumed, found the bad signature and replaced the record: slot
    // e + 4 has a key after all.
    sleep_until_slot(P, e + 4, MID);
    let st = check(e + 4, &mut names, &forged);
    let fixed = repaired(&gen.log_text());
    for s in &st {
        assert_eq!(s.encrypting, "current", "{}", s.render());
        assert_eq!(Some(&s.encrypting_name), fixed.get(&f2), "{}", s.render());
    }
    sleep_until_slot(P, e + 5, MID);
    let st = check(e + 5, &mut names, &forged);
    for s in &st {
        assert_eq!(s.encrypting, "current", "{}", s.render());
    }
    // The outsiders said why.
    for (a, reason) in [
        (&outsider, "not_a_recipient"),
        (&wrong_trust, "untrusted_generator"),
        (&api, "header_mismatch"),
    ] {
        let s = a.status().expect("status");
        assert!(
            s.rejected.get(reason).copied().unwrap_or(0) > 0,
            "{} counted no {reason}:\n{}",
            a.name,
            s.render()
        );
    }
    for a in &goods {
        let s = a.status().expect("status");
        for reason in ["not_a_recipient", "untrusted_generator"] {
            assert!(
                !s.rejected.contains_key(reason),
                "{} rejected a genuine record:\n{}",
                a.name,
                s.render()
            );
        }
    }
    let s = good[0].status().expect("status");
    eprintln!(
        "{}: good agent's rejections {:?}; outsider {:?}; wrong-trust {:?}; api {:?}",
        b.kind(),
        s.rejected,
        outsider.status().expect("status").rejected,
        wrong_trust.status().expect("status").rejected,
        api.status().expect("status").rejected
    );
}

/// Done when: through a store outage of 3 periods the agents keep their ring, encrypt with the
/// Agents that can never find their keys (another --group, another --period) are told why by a
/// survey of the store, in their log (once, not at every read) and in `stek status`, while a
/// well-configured agent beside them is told nothing of the kind.
pub fn mismatched_agents_are_told_why(b: &mut dyn Backend, root: &Path) {
    let (gk, gpub) = keygen(root, "generator", "gen.key");
    let (id, idpub) = keygen(root, "group", "web.identity");
    let _gen = generator(root, "gen", &b.generator_url(), &idpub, &gk, &[]);
    let url = b.agent_url();
    let good = Agent::start(root, "good", &url, GROUP, &id, &gpub, &[]);
    let group = Agent::start(root, "wrong-group", &url, "api", &id, &gpub, &[]);
    let hourly = ["--period", "1h", "--lifetime", "18h"];
    let period = Agent::start(root, "wrong-period", &url, GROUP, &id, &gpub, &hourly);
    let said = |a: &Agent, what: &[&str]| {
        wait_for(
            &format!(
                "{}'s status to say why its store holds nothing for it",
                a.name
            ),
            Duration::from_secs(40),
            || {
                let d = a.status()?.store_diagnosis?;
                what.iter().all(|w| d.contains(w)).then_some(d)
            },
        )
    };
    said(
        &group,
        &[
            "no record of group api, but records of group(s) web (",
            "--group",
        ],
    );
    said(
        &period,
        &[
            "made for period 4s, lifetime 8s; this agent's are period 1h, lifetime 18h",
            "must equal its generator's",
        ],
    );
    // `stek status` puts the cause under the fallback it explains.
    let out = Command::new(env!("CARGO_BIN_EXE_stek"))
        .args(["status", "--dir"])
        .arg(&period.dir)
        .output()
        .expect("stek status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.starts_with("CRITICAL: ") && text.contains("WARNING: group web's records"),
        "{text}"
    );
    // The wrong group's agent surveyed again (every 10 s) with the same finding: logged once.
    std::thread::sleep(Duration::from_secs(12));
    let log = group.proc.log_text();
    assert_eq!(
        log.matches("no record of group api").count(),
        1,
        "the finding is logged once:\n{log}"
    );
    let st = good.status().expect("good's status");
    assert!(
        st.store_diagnosis.is_none() && st.encrypting == "current",
        "{}",
        st.render()
    );
}

/// A generator answers `stek status --endpoint` (and `/healthz`): OK while it publishes,
/// CRITICAL with the store's error once the next slot's record is missing, OK again after.
/// `stop` and `restart` act on the store the generator writes to.
pub fn generator_status_tells_a_missing_next_key(
    url: &str,
    root: &Path,
    mut stop: impl FnMut(),
    mut restart: impl FnMut(),
) {
    let (gk, _) = keygen(root, "generator", "gen.key");
    let (_, idpub) = keygen(root, "group", "web.identity");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let gen = generator(root, "gen", url, &idpub, &gk, &["--metrics", &addr]);
    let status = || {
        let out = Command::new(env!("CARGO_BIN_EXE_stek"))
            .args(["status", "--endpoint", &addr])
            .output()
            .expect("stek status");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), text)
    };
    let (code, text) = wait_for(
        "the generator's first round",
        Duration::from_secs(10),
        || {
            let (code, text) = status();
            (code == Some(0)).then_some((code, text))
        },
    );
    assert!(
        text.starts_with("OK: generator publishing for 1 group(s)")
            && text.contains("group web: period 4s, lifetime 8s; published through slot "),
        "{code:?} {text}"
    );
    stop();
    // The next slot's record was published up to P + P/8 ahead: the current one is missing
    // within two periods.
    let text = wait_for(
        "the generator's status to turn critical",
        Duration::from_secs(4 * P),
        || {
            let (code, text) = status();
            (code == Some(2)).then_some(text)
        },
    );
    assert!(
        text.starts_with("CRITICAL: group web: no record of the current slot (")
            && text.contains("publishing fails since"),
        "{text}\n{}",
        gen.log_text()
    );
    restart();
    wait_for(
        "the generator to recover",
        Duration::from_secs(3 * P),
        || (status().0 == Some(0)).then_some(()),
    );
    // An agent's view is refused where a ring is needed.
    let out = Command::new(env!("CARGO_BIN_EXE_stek"))
        .args(["status", "--json", "--endpoint", &addr])
        .output()
        .expect("stek status --json");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["role"], "generator", "{doc}");
    assert_eq!(doc["groups"][0]["group"], "web", "{doc}");
}

/// newest key while it is at most max-stale behind, then fall back to a local key, and recover
/// by themselves when the store returns.
pub fn store_outage(b: &mut dyn Backend, root: &Path) {
    let (gk, gpub) = keygen(root, "generator", "gen.key");
    let (id, idpub) = keygen(root, "group", "web.identity");
    let _gen = generator(root, "gen", &b.generator_url(), &idpub, &gk, &[]);
    let agents = Agent::start_many(
        3,
        root,
        &b.agent_url(),
        GROUP,
        &id,
        &gpub,
        &["--max-stale", "1"],
    );
    let refs: Vec<&Agent> = agents.iter().collect();
    let mut names = Names::default();
    // One rotation with the store up.
    let k = sleep_into_next_slot(P, MID);
    let st = statuses_at(&refs, k);
    for (a, s) in refs.iter().zip(&st) {
        names.add(&a.name, s);
        assert_eq!(s.encrypting, "current", "{}", s.render());
    }
    let held = shared(&st[0]);
    assert!(
        held.contains_key(&(k + 1)),
        "the next key is held before the outage:\n{}",
        st[0].render()
    );
    b.stop();
    let down = Instant::now();
    eprintln!("{}: stopped the agents' store in slot {k}", b.kind());
    let same_keys = |s: &Status| {
        for (slot, name) in &held {
            if s.keys.iter().any(|x| x.slot == *slot) {
                assert!(
                    s.keys
                        .iter()
                        .any(|x| x.slot == *slot && &x.name == name && x.origin == "shared"),
                    "lost slot {slot}:\n{}",
                    s.render()
                );
            }
        }
    };
    // k + 1: its key was fetched before the outage.
    sleep_until_slot(P, k + 1, MID);
    for s in statuses_at(&refs, k + 1) {
        assert_eq!(s.encrypting, "current", "{}", s.render());
        assert_eq!(s.encrypting_name, held[&(k + 1)], "{}", s.render());
        same_keys(&s);
    }
    // k + 2: no key for the slot; the one of k + 1 keeps encrypting (max-stale 1).
    sleep_until_slot(P, k + 2, MID);
    for s in statuses_at(&refs, k + 2) {
        assert_eq!(s.encrypting, "stale", "{}", s.render());
        assert_eq!(s.encrypting_name, held[&(k + 1)], "{}", s.render());
        assert!(s.staleness.unwrap_or(0.0) > P as f64, "{}", s.render());
        same_keys(&s);
    }
    // k + 3: two periods behind: a local key encrypts.
    sleep_until_slot(P, k + 3, MID);
    let st = statuses_at(&refs, k + 3);
    let mut locals = BTreeSet::new();
    for s in &st {
        assert_eq!(s.encrypting, "local_fallback", "{}", s.render());
        assert_eq!(s.keys[0].origin, "local", "{}", s.render());
        assert!(!names.contains_name(&s.encrypting_name), "{}", s.render());
        assert!(
            locals.insert(s.encrypting_name.clone()),
            "two agents share a local key"
        );
        same_keys(s);
    }
    // Three periods after the outage began: the store returns on the same address.
    sleep_until_slot(P, k + 3, MID + Duration::from_millis(200));
    b.restart();
    let outage = down.elapsed();
    let back = Instant::now();
    // Recovered: every agent encrypts with the current slot's shared key and holds every key of
    // its window that the store has (with etcd down, the generator could not make the slots of
    // the outage either: those stay local).
    let st = wait_for(
        "the agents to recover by themselves",
        Duration::from_secs(2 * P),
        || {
            let st: Vec<Status> = refs.iter().map(|a| a.status().expect("status")).collect();
            let slot = current_slot();
            let records = b.records(GROUP);
            let ok = st.iter().all(|s| {
                s.encrypting == "current"
                    && s.slot == slot
                    && s.keys
                        .iter()
                        .all(|k| (k.origin == "shared") == records.contains_key(&k.slot))
                    && shared(s) == shared(&st[0])
            });
            ok.then_some(st)
        },
    );
    let took = back.elapsed();
    for (a, s) in refs.iter().zip(&st) {
        names.add(&a.name, s);
    }
    eprintln!(
        "{}: outage of {outage:?}; the agents recovered {took:?} after the store returned",
        b.kind()
    );
}

/// Sleeps until a clock `offset_ms` off the real one is at least 0.8 s away from a slot boundary.
fn away_from_boundary(offset_ms: i64) {
    let p = i64::try_from(P * 1000).expect("P fits");
    let now = i64::try_from(unix_now().as_millis()).expect("now fits") + offset_ms;
    let phase = now.rem_euclid(p);
    let wait = if phase < 800 {
        800 - phase
    } else if phase > p - 800 {
        p - phase + 800
    } else {
        0
    };
    std::thread::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0)));
}

/// Done when: agents with clock offsets of -0.4 P, 0 and +0.4 P, each feeding a real nginx:
/// a ticket minted on any host resumes on every host, through several rotations, TLS 1.2 and 1.3.
pub fn clock_offsets_with_nginx(b: &mut dyn Backend, root: &Path) {
    require("nginx");
    require("openssl");
    let (gk, gpub) = keygen(root, "generator", "gen.key");
    let (id, idpub) = keygen(root, "group", "web.identity");
    let cert = make_cert(root);
    let _gen = generator(root, "gen", &b.generator_url(), &idpub, &gk, &[]);
    wait_for("the first records", Duration::from_secs(10), || {
        (b.records(GROUP).len() >= 2).then_some(())
    });
    let offsets = [-1600i64, 0, 1600];
    let mut hosts = Vec::new();
    for (i, off_ms) in offsets.iter().enumerate() {
        let prefix = root.join(format!("nginx{i}"));
        let off = off_ms.to_string();
        let agent = Agent::start(
            root,
            &format!("agent{i}"),
            &b.agent_url(),
            GROUP,
            &id,
            &gpub,
            &[
                "--clock-offset-ms",
                &off,
                "--on-change",
                &Nginx::reload_cmd(&prefix),
            ],
        );
        let conf = wait_nginx_conf_in(&agent.dir);
        // nginx opens every key file the include names: started right at this agent's
        // boundary, it could read the list before the rotation and open a file the rotation
        // erased (as a real nginx would; the reload that follows every rotation reads the new
        // list).
        away_from_boundary(*off_ms);
        let nginx = Nginx::start(&prefix, &cert, &conf);
        hosts.push((agent, GracefulNginx(nginx)));
    }
    let sess = root.join("t.sess");
    // Every host encrypts with its current shared key, and its nginx has loaded it.
    for (a, n) in &hosts {
        wait_for(
            &format!("{}'s nginx to encrypt with a shared key", a.name),
            Duration::from_secs(3 * P),
            || {
                let s = a.status().filter(|s| s.encrypting == "current")?;
                let _ = fs::remove_file(&sess);
                handshake(n.port, Tls::V12, None, Some(&sess));
                (ticket_name(&sess)? == s.encrypting_name).then_some(())
            },
        );
    }
    let start = Instant::now();
    let first_slots: Vec<u64> = hosts
        .iter()
        .map(|(a, _)| a.status().expect("status").slot)
        .collect();
    let (mut rounds, mut resumes, mut retries) = (0, 0, 0);
    let mut seen = BTreeSet::new();
    // Three rotations of every host, whatever its clock: 3 P plus the spread of the clocks.
    while start.elapsed() < Duration::from_millis(3 * P * 1000 + 3200 + 400) {
        for (mint, (ma, mn)) in hosts.iter().enumerate() {
            for tls in [Tls::V12, Tls::V13] {
                let _ = fs::remove_file(&sess);
                handshake(mn.port, tls, None, Some(&sess));
                let name =
                    ticket_name(&sess).unwrap_or_else(|| panic!("no ticket from {}", ma.name));
                let statuses: Vec<Status> = hosts
                    .iter()
                    .map(|(a, _)| a.status().expect("status"))
                    .collect();
                let all_shared: BTreeSet<String> = statuses
                    .iter()
                    .flat_map(|s| shared(s).into_values())
                    .collect();
                assert!(
                    all_shared.contains(&name),
                    "{} minted a ticket under {name}, not a group key",
                    ma.name
                );
                seen.insert(name.clone());
                for (ra, rn) in &hosts {
                    resumes += 1;
                    if handshake(rn.port, tls, Some(&sess), None) {
                        continue;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                    retries += 1;
                    eprintln!(
                        "{}: retry: {tls:?} ticket {name} from {} on {} (host {mint})",
                        b.kind(),
                        ma.name,
                        ra.name
                    );
                    if !handshake(rn.port, tls, Some(&sess), None) {
                        let now: Vec<String> = hosts
                            .iter()
                            .map(|(a, _)| a.status().expect("status").render())
                            .collect();
                        panic!(
                            "{tls:?} ticket {name} minted by {} does not resume on {}:\n{}",
                            ma.name,
                            ra.name,
                            now.join("\n")
                        );
                    }
                }
            }
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(700));
    }
    for ((a, _), first) in hosts.iter().zip(first_slots) {
        let last = a.status().expect("status").slot;
        assert!(
            last >= first + 3,
            "{} rotated only from slot {first} to {last}",
            a.name
        );
    }
    assert!(
        seen.len() >= 4,
        "tickets used only {} keys: did the hosts rotate?",
        seen.len()
    );
    // A retry covers a resumption that met an nginx between its reload's old and new workers:
    // a rare event. Failures that only a retry hides, at more than one in ten, are a bug.
    assert!(
        retries * 10 <= resumes,
        "{retries} of {resumes} resumptions needed a retry"
    );
    // Each host measured its offset to the store's clock (the status, and so the metric
    // stek_clock_offset_seconds); the two skewed beyond P/4 warned, once, the other did not.
    for ((a, _), off_ms) in hosts.iter().zip(offsets) {
        let measured = a
            .status()
            .and_then(|s| s.clock_offset)
            .unwrap_or_else(|| panic!("{} measured no clock offset", a.name));
        let want = off_ms as f64 / 1000.0;
        assert!(
            (measured - want).abs() < 0.5,
            "{}: offset {measured:+.3} s, its clock is {want:+.3} s off",
            a.name
        );
        let warned = a
            .proc
            .log_text()
            .matches("off the store's, more than P/4")
            .count();
        let skewed = off_ms.unsigned_abs() * 4 > P * 1000;
        assert_eq!(
            warned,
            usize::from(skewed),
            "{}: {warned} clock warnings for an offset of {off_ms} ms",
            a.name
        );
    }
    eprintln!(
        "{}: {rounds} rounds, {resumes} resumptions across hosts, {retries} retried once, tickets under {} keys",
        b.kind(),
        seen.len()
    );
}

// ---- a stalled store --------------------------------------------------------------------------

/// The time at the start of a log line (`2026-12-07T06:40:00.123456Z ...`, tracing's default),
/// as time since the Unix epoch.
pub fn log_time(line: &str) -> Option<Duration> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let nanos: u64 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some(
        Duration::from_secs(days * 86_400 + hh * 3600 + mm * 60 + ss) + Duration::from_nanos(nanos),
    )
}

/// Done when (issue 10): the store the agent reads is SIGSTOPped for three periods (P = 2 s):
/// the agent still rotates at every boundary within 100 ms of its clock and erases each key the
/// moment it leaves the window (both read from its log's timestamps), and once the store resumes
/// it takes the records it missed and encrypts with the group's key again.
pub fn stalled_store(b: &mut dyn Backend, root: &Path) {
    const P2: u64 = 2;
    let (gk, gpub) = keygen(root, "generator", "gen.key");
    let (id, idpub) = keygen(root, "group", "web.identity");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stek"));
    cmd.args(["generator", "--store", &b.generator_url(), "--group"])
        .arg(format!("{GROUP}={idpub}"))
        .arg("--signing-key")
        .arg(&gk)
        .args(["--period", "2s", "--lifetime", "4s"]);
    let gen = Proc::spawn("gen", &mut cmd, root.join("gen.log"));
    let dir = root.join("agent");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stek"));
    cmd.args([
        "agent",
        "--store",
        &b.agent_url(),
        "--group",
        GROUP,
        "--identity",
    ])
    .arg(&id)
    .args(["--trust", &gpub, "--dir"])
    .arg(&dir)
    .args([
        "--period",
        "2s",
        "--lifetime",
        "4s",
        "--no-memcached",
        "--sinks",
        "nginx",
    ]);
    let agent = Agent {
        name: "agent".into(),
        proc: Proc::spawn("agent", &mut cmd, root.join("agent.log")),
        dir,
    };
    // A whole window of shared keys, so that a key leaves the window at each boundary.
    wait_for("a window of shared keys", Duration::from_secs(15), || {
        agent
            .status()
            .filter(|s| s.encrypting == "current" && s.keys.iter().all(|k| k.origin == "shared"))
    });
    let k = sleep_into_next_slot(P2, Duration::from_millis(300));
    let frozen = Paused::pids(vec![b.agent_store_pid()]);
    eprintln!("{}: SIGSTOP in slot {k}", b.kind());
    sleep_until_slot(P2, k + 3, Duration::from_millis(300));
    drop(frozen);
    eprintln!("{}: SIGCONT in slot {}", b.kind(), current_slot_of(P2));
    // The store is back: the agent takes what it missed and encrypts with the group's key.
    let st = wait_for(
        "the agent to encrypt with the group's key again",
        Duration::from_secs(4 * P2),
        || {
            let st = agent.status()?;
            let made = generated(&gen.log_text());
            (st.encrypting == "current"
                && st.slot == current_slot_of(P2)
                && made.get(&st.slot) == Some(&st.encrypting_name))
            .then_some(st)
        },
    );
    eprintln!("{}: recovered:\n{}", b.kind(), st.render());
    if current_slot_of(P2) < k + 4 {
        sleep_until_slot(P2, k + 4, Duration::from_millis(300));
    }
    let log = agent.proc.log_text();
    let at = |what: &str, slot: u64| -> Duration {
        log.lines()
            .find(|l| l.contains(&format!("{what}{slot}")))
            .and_then(log_time)
            .unwrap_or_else(|| panic!("no {what:?}{slot} in the log:\n{log}"))
    };
    // Boundaries k+1 ..= k+3 passed while the store was stopped, k+4 after it resumed.
    for slot in k + 1..=k + 4 {
        let start = Duration::from_secs(slot * P2);
        let rotated = at("rotated to slot ", slot);
        assert!(
            rotated >= start && rotated - start < Duration::from_millis(100),
            "slot {slot} began at {start:?}, the agent rotated at {rotated:?}:\n{log}"
        );
        // R = 2: the key of slot - 3 leaves the window at the start of `slot`.
        let erased = at("(slot ", slot - 3);
        assert!(
            erased >= start && erased - start < Duration::from_millis(100),
            "the key of slot {} had to go at {start:?}, it went at {erased:?}:\n{log}",
            slot - 3
        );
    }
}

fn current_slot_of(period: u64) -> u64 {
    unix_now().as_secs() / period
}

/// The resident set of process `pid`, in KiB (`VmRSS` of /proc/PID/status).
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// How much an agent's resident set may grow while the store holds three 50 MB values in its
/// window and 40 MB of junk keys under its prefix. A store client that downloaded one such value
/// once would exceed it (50 MB); what the agent does hold meanwhile is a window of capped answers
/// and, for etcd, a watch message cut off at 1 MiB (measured: +0 KiB on Redis, about +9 MiB on
/// etcd, where the agent's mlocked heap keeps the pages of its aborted transfers).
pub const RSS_GROWTH_BOUND_KIB: u64 = 16 * 1024;

/// How long the store may take to answer the agents again after the values and junk keys went
/// in: a loaded etcd digesting 190 MB answered no read for over 30 s (seen under
/// `stress-ng --cpu 2`). 20 periods, well inside the 42 the values stay in the window; a lasting
/// outage still fails.
const STORE_DIGESTS: Duration = Duration::from_secs(20 * P);

/// Done when (issue 11, part 4): with three 50 MB values planted over the records of three slots
/// of the agents' window and 4,000 junk keys of 10 KB under the group's prefix, every agent keeps
/// the same shared keys, encrypts with the current one, reports each value once as an
/// `oversize` rejection, keeps reading the store (no "store unreachable": junk outside the exact
/// slot keys is never read) and grows its resident set by less than [`RSS_GROWTH_BOUND_KIB`].
///
/// L = 60 s here (R = 15): etcd takes seconds to store a 50 MB value (over ten on a loaded
/// machine, and it answers no reads meanwhile), and each value must still be in the window when
/// it lands.
pub fn hostile_values_and_junk_keys(b: &mut dyn Backend, root: &Path) {
    let (gk, gpub) = keygen(root, "generator", "gen.key");
    let (id, idpub) = keygen(root, "group", "web.identity");
    // A long window (R = 45 periods): the three values go over past slots, which must still be
    // in the window when the agents read them, however long etcd takes to store 150 MB on a
    // loaded machine (seen: 66 s for the values and the junk together).
    let long = ["--lifetime", "180s"];
    let gen = generator(root, "gen", &b.generator_url(), &idpub, &gk, &long);
    let agents = Agent::start_many(2, root, &b.agent_url(), GROUP, &id, &gpub, &long);
    let refs: Vec<&Agent> = agents.iter().collect();
    let mut names = Names::default();
    // Identical rings, encrypting with the shared key of the slot; slots from before the
    // generator started have local stand-ins.
    let check = |slot: u64, names: &mut Names| {
        let st = statuses_at(&refs, slot);
        for (a, s) in refs.iter().zip(&st) {
            names.add(&a.name, s);
            assert_eq!(s.encrypting, "current", "{}", describe(&refs, &st));
            // The same shared keys for the current and past slots; the next slot's key may
            // still be on its way to one of them while etcd, storing 50 MB values, answers no
            // reads (a stalled store, which the failure policy covers), but a key both hold
            // is the same key.
            let (mine, first) = (shared(s), shared(&st[0]));
            let upto = |m: &BTreeMap<u64, String>| {
                m.range(..=slot)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect::<BTreeMap<_, _>>()
            };
            assert_eq!(upto(&mine), upto(&first), "{}", describe(&refs, &st));
            for (k, v) in &mine {
                assert!(
                    first.get(k).is_none_or(|w| w == v),
                    "slot {k}: two keys\n{}",
                    describe(&refs, &st)
                );
            }
            let staleness = s.staleness.expect("a successful read");
            // Two periods: etcd itself answers no reads for seconds while it stores a 50 MB
            // value; what must not happen is a lasting outage (junk read, values downloaded).
            assert!(
                staleness < 2.0 * P as f64,
                "the store reads failed for {staleness}s:\n{}",
                s.render()
            );
        }
        st
    };
    // The generator's first records are those of the slot it started in and the next one.
    let k = sleep_into_next_slot(P, MID) + 3;
    sleep_until_slot(P, k, MID);
    let st = check(k, &mut names);
    let before: Vec<u64> = refs.iter().map(|a| vm_rss_kib(a.proc.pid())).collect();
    let held = shared(&st[0]);
    assert!(held.len() >= 3, "{}", st[0].render());

    // Over the records of the three past slots k - 3, k - 2, k - 1 (the first to leave the
    // window first): every agent holds their keys, and they stay in the window for R - 3 = 42
    // more periods however long the store takes.
    let big = vec![b'x'; 50 * 1024 * 1024];
    for slot in [k - 3, k - 2, k - 1] {
        assert!(held.contains_key(&slot), "slot {slot} has no shared key");
        let t = Instant::now();
        b.put(GROUP, slot, &big, unix_now() + Duration::from_secs(120));
        eprintln!("{}: 50 MB over slot {slot} in {:?}", b.kind(), t.elapsed());
    }
    drop(big);
    let t = Instant::now();
    b.put_junk(GROUP, k, 4_000, 10_000);
    eprintln!(
        "{}: 4,000 junk keys of 10 KB in {:?}",
        b.kind(),
        t.elapsed()
    );
    let oversize = |a: &Agent| {
        a.status()
            .and_then(|s| s.rejected.get("oversize").copied())
            .unwrap_or(0)
    };
    for a in &refs {
        let deadline = Instant::now() + STORE_DIGESTS;
        while oversize(a) < 3 {
            assert!(
                Instant::now() < deadline,
                "{} did not reject the three values as oversize:\n{}\n{}\ngenerator:\n{}",
                a.name,
                a.status().map(|s| s.render()).unwrap_or_default(),
                a.proc.log_text(),
                gen.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Two more rotations: the agents keep reading (at least every P/4), so a client that
    // downloaded the values would do it again and again. (One rotation is left out first: a
    // generator that could not write while etcd stored the values retries with backoff.) On a
    // loaded machine etcd may still answer no reads for several seconds after storing the
    // values: the agents then encrypt with the last shared key ("stale"), as the failure policy
    // says. Each sample is therefore the first slot, within a bound that still fails a lasting
    // outage, in which both agents read the store again.
    let mut slot = current_slot() + 2;
    for _ in 0..2 {
        let deadline = Instant::now() + STORE_DIGESTS;
        loop {
            sleep_until_slot(P, slot, MID);
            let st = statuses_at(&refs, slot);
            let fresh = |s: &Status| s.staleness.is_some_and(|t| t < P as f64);
            if st.iter().all(|s| s.encrypting == "current" && fresh(s)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the agents read nothing from the store for {STORE_DIGESTS:?}:\n{}",
                describe(&refs, &st)
            );
            slot += 1;
        }
        let st = check(slot, &mut names);
        for x in &st[0].keys {
            if let Some(name) = held.get(&x.slot) {
                assert_eq!(&x.name, name, "{}", st[0].render());
            }
        }
        slot += 1;
    }
    for (a, before) in refs.iter().zip(before) {
        assert_eq!(oversize(a), 3, "each value is reported once");
        let after = vm_rss_kib(a.proc.pid());
        eprintln!(
            "{}: {} VmRSS {before} KiB before, {after} KiB after",
            b.kind(),
            a.name
        );
        assert!(
            after <= before + RSS_GROWTH_BOUND_KIB,
            "{}: VmRSS grew from {before} to {after} KiB",
            a.name
        );
        let log = a.proc.log_text();
        assert!(
            log.contains("oversize") && log.contains("not downloaded"),
            "{log}"
        );
    }
}

// ---- slot conflicts (issue 11) ----------------------------------------------------------------

/// The slots a generator's log says it repaired: slot -> the new key's name.
pub fn repaired(log: &str) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("replaced the value of slot ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(slot), Some("with"), Some("key"), Some(name)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        if let Ok(slot) = slot.parse() {
            out.insert(slot, name.to_owned());
        }
    }
    out
}

/// `stek_generator_slot_conflicts_total{group="web",reason=REASON}` at `http://ADDR/metrics`
/// (0 while the series does not exist).
pub fn conflicts_metric(addr: &str, reason: &str) -> u64 {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the metrics");
    let series =
        format!("stek_generator_slot_conflicts_total{{group=\"{GROUP}\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|n| n.trim().parse().expect("a counter"))
        .unwrap_or(0)
}

/// Done when (issue 11): two generators that each trust only themselves, and two agents that
/// trust both, share one store where
/// (a) junk without expiry is planted on the next two future slots before the generators reach
///     them: they are replaced with sound records (counted `garbage`), the agents hold shared
///     keys for those slots when they come (no local fallback), and the junk's missing expiry
///     does not outlive the record's erase time;
/// (b) a record a generator created is deleted from the store: its creator recreates it, says so
///     at WARN and counts `vanished`;
/// (c) each generator finds records signed by the other, which it does not trust: it counts
///     `foreign_signer` and leaves them, so every slot the test did not touch is written once.
pub fn slot_conflicts_repaired(b: &mut dyn Backend, root: &Path) {
    let (ka, pub_a) = keygen(root, "generator", "gen-a.key");
    let (kb, pub_b) = keygen(root, "generator", "gen-b.key");
    let (id, idpub) = keygen(root, "group", "web.identity");
    let url = b.generator_url();
    let (ma, mb) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let gens = [
        generator(root, "gen-a", &url, &idpub, &ka, &["--metrics", &ma]),
        generator(root, "gen-b", &url, &idpub, &kb, &["--metrics", &mb]),
    ];
    let addrs = [ma.as_str(), mb.as_str()];
    let trust = format!("{pub_a},{pub_b}");
    let agents = Agent::start_many(2, root, &b.agent_url(), GROUP, &id, &trust, &[]);
    let refs: Vec<&Agent> = agents.iter().collect();
    let total = |reason: &str| -> u64 { addrs.iter().map(|a| conflicts_metric(a, reason)).sum() };
    let logs = || -> Vec<String> { gens.iter().map(|g| g.log_text()).collect() };
    let explain = || -> String {
        let l = logs();
        format!("gen-a:\n{}\ngen-b:\n{}", l[0], l[1])
    };
    // Every agent holds the same ring of shared keys and encrypts with the slot's own.
    let check = |slot: u64| {
        let st = statuses_at(&refs, slot);
        assert_identical_shared(&refs, &st);
        st
    };

    // The generators' first records are those of the slot they started in and the next one; by
    // k the whole window was made by them.
    let k = sleep_into_next_slot(P, MID) + 3;
    sleep_until_slot(P, k, MID);
    // (a) Slots k + 2 and k + 3 are made 3.5 s into slots k and k + 1: junk, no expiry, now.
    //     The generators are paused meanwhile (before their round, however slow this machine).
    let paused = Paused::pids(gens.iter().map(|g| g.pid()).collect());
    check(k);
    let live = b.live_slots(GROUP);
    assert!(
        !live.contains(&(k + 2)) && !live.contains(&(k + 3)),
        "slots {} and {} exist already: the test is late ({live:?})",
        k + 2,
        k + 3
    );
    for slot in [k + 2, k + 3] {
        b.put_forever(
            GROUP,
            slot,
            b"junk written by someone who is not a generator",
        );
    }
    drop(paused);
    for slot in [k + 1, k + 2, k + 3] {
        sleep_until_slot(P, slot, MID);
        let st = check(slot);
        assert!(
            st.iter().all(|s| s.encrypting == "current"),
            "{}",
            st[0].render()
        );
    }
    // Each junk slot was repaired once (a generator that lost the race found the winner's
    // record), and the agents hold the repairing key.
    let fixed: BTreeMap<u64, String> = logs().iter().flat_map(|l| repaired(l)).collect();
    let count_fixed = |slot: u64| -> usize {
        logs()
            .iter()
            .filter(|l| repaired(l).contains_key(&slot))
            .count()
    };
    let st = check(k + 3);
    for slot in [k + 2, k + 3] {
        assert_eq!(count_fixed(slot), 1, "slot {slot}:\n{}", explain());
        assert_eq!(
            shared(&st[0]).get(&slot),
            fixed.get(&slot),
            "the agents hold another key for slot {slot}:\n{}\n{}",
            st[0].render(),
            explain()
        );
    }
    let garbage = total("garbage");
    assert!(
        (2..=4).contains(&garbage),
        "garbage {garbage}:\n{}",
        explain()
    );

    // (b) Slot k + 4 was made 3.5 s into slot k + 2: delete it before the round of 3.5 s into
    // slot k + 3, which finds it missing.
    let before = b
        .records(GROUP)
        .remove(&(k + 4))
        .expect("the record of slot k + 4");
    let made: Vec<BTreeMap<u64, String>> = logs().iter().map(|l| generated(l)).collect();
    let owner = made
        .iter()
        .position(|m| m.contains_key(&(k + 4)))
        .unwrap_or_else(|| panic!("no generator says it made slot {}:\n{}", k + 4, explain()));
    b.delete(GROUP, k + 4);
    let vanished = format!("slot {} vanished from the store", k + 4);
    wait_for(
        "the creator of the deleted slot to notice",
        Duration::from_secs(2 * P),
        || gens[owner].log_text().contains(&vanished).then_some(()),
    );
    let line = gens[owner]
        .log_text()
        .lines()
        .find(|l| l.contains(&vanished))
        .expect("the line")
        .to_owned();
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("hosts that read the old one disagree until it leaves the window"),
        "{line}"
    );
    let after = wait_for("slot k + 4 to be recreated", Duration::from_secs(P), || {
        b.records(GROUP).remove(&(k + 4))
    });
    assert_ne!(after, before, "slot {} was not recreated", k + 4);
    assert_eq!(total("vanished"), 1, "{}", explain());
    // The agents had read the deleted record: they keep its key and report the new one.
    for a in &refs {
        wait_for(
            &format!("{} to report the slot conflict", a.name),
            Duration::from_secs(P),
            || a.status().filter(|s| s.slot_conflicts == 1).map(|_| ()),
        );
        assert!(
            a.proc
                .log_text()
                .contains(&format!("slot {} now holds another valid key", k + 4)),
            "{}",
            a.proc.log_text()
        );
    }
    let st = check(k + 3);
    assert_eq!(
        shared(&st[0]).get(&(k + 4)),
        made[owner].get(&(k + 4)),
        "the agents switched to the recreated key:\n{}",
        st[0].render()
    );

    // (c) Both generators ran the same rounds over the same slots: whichever lost a slot found
    // the other's record, reported it and left it.
    assert!(total("foreign_signer") >= 1, "{}", explain());
    // Written once: no slot but the junk ones was repaired, and no slot but the deleted one was
    // created twice.
    let fixed: BTreeSet<u64> = logs()
        .iter()
        .flat_map(|l| repaired(l).into_keys())
        .collect();
    assert_eq!(fixed, BTreeSet::from([k + 2, k + 3]), "{}", explain());
    let made: Vec<BTreeMap<u64, String>> = logs().iter().map(|l| generated(l)).collect();
    for (slot, name) in &made[0] {
        if let Some(other) = made[1].get(slot) {
            assert_eq!(
                *slot,
                k + 4,
                "slot {slot} was created twice ({name}, {other})"
            );
        }
    }
    for reason in ["mismatch", "bad_signature", "oversize"] {
        assert_eq!(total(reason), 0, "{reason}:\n{}", explain());
    }

    // The junk had no expiry; the record that replaced it has the slot's.
    let gone = erase_at(k + 2) + b.expiry_slack();
    wait_for(
        "the repaired record of slot k + 2 to expire",
        gone.saturating_sub(unix_now()) + Duration::from_secs(2),
        || (!b.live_slots(GROUP).contains(&(k + 2))).then_some(()),
    );
    // Not long before either: the generators delete records as they leave the window of their
    // clock, which runs MARGIN ahead (etcd), and Redis expires them at the erase time.
    assert!(
        unix_now() + MARGIN + Duration::from_millis(200) >= erase_at(k + 2),
        "slot {} expired before its erase time",
        k + 2
    );
    // The agents never fell back, and still agree.
    let now = current_slot();
    sleep_until_slot(P, now + 1, MID);
    let st = check(now + 1);
    for s in &st {
        assert!(
            !s.rejected.contains_key("untrusted_generator"),
            "{}",
            s.render()
        );
    }
    eprintln!(
        "{}: garbage {garbage}, vanished 1, foreign_signer {}",
        b.kind(),
        total("foreign_signer")
    );
}
