//! etcd clusters for the TLS, authentication and fail-over tests: N members of Debian's etcd 3.4
//! on loopback ports chosen at run time, data on tmpfs, clients over TLS (certificates made here
//! with rcgen) or plain HTTP, peers over plain HTTP. `etcdctl` sets up users and roles exactly as
//! the README tells operators to.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};

use super::{free_port, require, wait_for};

/// A CA and the certificates it signed, as PEM files in one directory.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate (no CommonName, see [`Pki::new`]) for etcd's `--client-cert-auth`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Another CA, which signed none of these: verifying with it must fail.
    pub other_ca: PathBuf,
}

fn ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// Writes a private file (mode 0600), as stek wants its password and key files.
pub fn write_private(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).expect("write private file");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        fs::create_dir_all(dir).expect("pki dir");
        let issuer = ca("stek test CA");
        let leaf = |cn: Option<&str>, sans: Vec<String>| {
            let mut params = CertificateParams::new(sans).expect("params");
            params.distinguished_name = DistinguishedName::new();
            if let Some(cn) = cn {
                params.distinguished_name.push(DnType::CommonName, cn);
            }
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            Some("localhost"),
            vec!["127.0.0.1".into(), "localhost".into()],
        );
        // No CommonName: etcd 3.4's JSON gateway refuses client certificates that have one
        // ("CommonName of client sending a request against gateway will be ignored"), since etcd
        // would take it for a user name.
        let (client_cert, client_key) = leaf(None, vec!["stek-client".into()]);
        let p = |name: &str| dir.join(name);
        fs::write(p("ca.pem"), issuer.pem()).expect("write");
        fs::write(p("other-ca.pem"), ca("another CA").pem()).expect("write");
        fs::write(p("server.pem"), server_cert).expect("write");
        write_private(&p("server.key"), server_key.as_bytes());
        fs::write(p("client.pem"), client_cert).expect("write");
        write_private(&p("client.key"), client_key.as_bytes());
        Pki {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            other_ca: p("other-ca.pem"),
        }
    }
}

/// One member: its ports, process and log.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Plain HTTP `/health` and `/metrics`, whatever the client port speaks.
    pub metrics_port: u16,
    pub child: Option<Child>,
    pub log: PathBuf,
}

/// The users [`EtcdCluster::enable_auth`] makes: name and password file.
pub struct Users {
    pub root_password: String,
    pub generator: (String, PathBuf),
    pub agent: (String, PathBuf),
}

/// An etcd cluster on loopback; every member is killed on drop.
pub struct EtcdCluster {
    pub dir: PathBuf,
    pub members: Vec<Member>,
    /// Client TLS, if the members serve `https://` (and, with `client_cert_auth`, want a client
    /// certificate).
    pub pki: Option<Pki>,
    pub client_cert_auth: bool,
    extra: Vec<String>,
    /// After [`EtcdCluster::enable_auth`]: etcdctl logs in as root.
    root_password: Option<String>,
}

impl EtcdCluster {
    /// Starts `n` members under `dir` and waits until every one is healthy. `tls`: clients
    /// speak TLS; `client_cert_auth`: members want a client certificate signed by the CA.
    pub fn start(
        dir: &Path,
        n: usize,
        tls: bool,
        client_cert_auth: bool,
        extra: &[&str],
    ) -> EtcdCluster {
        require("etcd");
        require("etcdctl");
        let pki = tls.then(|| Pki::new(&dir.join("pki")));
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                child: None,
                log: dir.join(format!("etcd-m{i}.log")),
            })
            .collect();
        let mut c = EtcdCluster {
            dir: dir.to_path_buf(),
            members,
            pki,
            client_cert_auth,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            root_password: None,
        };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_healthy(i);
        }
        c.check_membership();
        c
    }

    /// Every member answers on its own client port, all in one cluster, each a different
    /// member, and every process still runs. A health answer alone does not prove that: a
    /// member that lost a port to another process exits, and that process may be another
    /// test's etcd that answers "healthy" in its place.
    pub fn check_membership(&mut self) {
        use std::collections::BTreeSet;
        let n = self.members.len();
        let out = self.etcdctl_at(&[], &["endpoint", "status", "--write-out=json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        // (cluster id, member id) of each endpoint that answered.
        let ids: Vec<(u64, u64)> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let h = &s["Status"]["header"];
                Some((h["cluster_id"].as_u64()?, h["member_id"].as_u64()?))
            })
            .collect();
        let clusters: BTreeSet<u64> = ids.iter().map(|id| id.0).collect();
        let members: BTreeSet<u64> = ids.iter().map(|id| id.1).collect();
        assert!(
            ids.len() == n && clusters.len() == 1 && members.len() == n,
            "etcd members are not {n} distinct members of one cluster: {ids:?}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 0..n {
            self.assert_running(i);
        }
    }

    /// Panics with member `i`'s log if its process has exited.
    fn assert_running(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!(
                "etcd {} exited with {status}:\n{}",
                m.name,
                fs::read_to_string(&m.log).unwrap_or_default()
            );
        }
    }

    fn scheme(&self) -> &'static str {
        if self.pki.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` (again, on the same data directory and ports).
    pub fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let scheme = self.scheme();
        let m = &self.members[i];
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("etcd log");
        let mut cmd = Command::new("etcd");
        cmd.arg(format!("--name={}", m.name))
            .arg(format!(
                "--data-dir={}",
                self.dir.join(format!("data-{}", m.name)).display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial}"))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                m.metrics_port
            ))
            .arg("--initial-cluster-token=stek-test")
            // Quick elections after a member dies (defaults: 100 ms heartbeat, 1 s election).
            .args(["--heartbeat-interval=50", "--election-timeout=500"]);
        if let Some(pki) = &self.pki {
            cmd.arg("--cert-file")
                .arg(&pki.server_cert)
                .arg("--key-file")
                .arg(&pki.server_key);
            if self.client_cert_auth {
                cmd.arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(&pki.ca);
            }
        }
        cmd.args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    /// Waits until member `i` says it is healthy (it has a leader).
    pub fn wait_healthy(&mut self, i: usize) {
        let port = self.members[i].metrics_port;
        wait_for(
            &format!("etcd member {i} healthy"),
            Duration::from_secs(30),
            || {
                self.assert_running(i);
                http_get(port, "/health").filter(|b| b.contains("\"health\":\"true\""))
            },
        );
    }

    /// `kill -9` member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The store URL naming every member: `etcds://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.pki.is_some() { "etcds" } else { "etcd" };
        let eps: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        format!("{scheme}://{}", eps.join(","))
    }

    /// The `stek` flags that reach this cluster as `user` (None: no credentials).
    pub fn stek_args(&self, user: Option<&(String, PathBuf)>) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(pki) = &self.pki {
            out.push("--store-ca".into());
            out.push(pki.ca.display().to_string());
            if self.client_cert_auth {
                out.push("--store-cert".into());
                out.push(pki.client_cert.display().to_string());
                out.push("--store-key".into());
                out.push(pki.client_key.display().to_string());
            }
        }
        if let Some((name, file)) = user {
            out.push("--store-user".into());
            out.push(name.clone());
            out.push("--store-password-file".into());
            out.push(file.display().to_string());
        }
        out
    }

    /// The same access for the library.
    pub fn access(&self, user: Option<&(String, PathBuf)>) -> stek::store::LoadedAccess {
        let mut a = stek::store::StoreAccess::default();
        if let Some(pki) = &self.pki {
            a.ca = Some(pki.ca.clone());
            if self.client_cert_auth {
                a.cert = Some(pki.client_cert.clone());
                a.key = Some(pki.client_key.clone());
            }
        }
        if let Some((name, file)) = user {
            a.user = Some(name.clone());
            a.password_file = Some(file.clone());
        }
        a.load().expect("load store access")
    }

    /// A store on every member as `user`.
    pub fn store(&self, user: Option<&(String, PathBuf)>) -> stek::store::EtcdStore {
        stek::store::EtcdStore::connect_with(&self.url(), &self.access(user)).expect("connect")
    }

    /// etcdctl against the members `endpoints` (all if empty), as root once auth is on.
    pub fn etcdctl_at(&self, endpoints: &[usize], args: &[&str]) -> Output {
        let scheme = self.scheme();
        let eps: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| endpoints.is_empty() || endpoints.contains(i))
            .map(|(_, m)| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect();
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", eps.join(",")))
            .arg("--command-timeout=5s")
            .arg("--dial-timeout=2s");
        if let Some(pki) = &self.pki {
            cmd.arg("--cacert").arg(&pki.ca);
            if self.client_cert_auth {
                cmd.arg("--cert")
                    .arg(&pki.client_cert)
                    .arg("--key")
                    .arg(&pki.client_key);
            }
        }
        if let Some(pw) = &self.root_password {
            cmd.arg(format!("--user=root:{pw}"));
        }
        cmd.args(args).output().expect("run etcdctl")
    }

    /// etcdctl on every member; panics on failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl_at(&[], args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Turns authentication on exactly as the README says: root, a `stek-generator` role that
    /// may read and write under `stek/`, a `stek-agent` role that may only read there, a user of
    /// each. Password files (0600) are written under the cluster's directory.
    pub fn enable_auth(&mut self) -> Users {
        let users = Users {
            root_password: "root-pw".into(),
            generator: ("stek-gen".into(), self.dir.join("gen.password")),
            agent: ("stek-agent".into(), self.dir.join("agent.password")),
        };
        write_private(&users.generator.1, b"gen-secret-pw\n");
        write_private(&users.agent.1, b"agent-secret-pw\n");
        for args in [
            &["user", "add", "root:root-pw"][..],
            &["user", "grant-role", "root", "root"],
            &["role", "add", "stek-generator"],
            &[
                "role",
                "grant-permission",
                "stek-generator",
                "--prefix=true",
                "readwrite",
                "stek/",
            ],
            &["role", "add", "stek-agent"],
            &[
                "role",
                "grant-permission",
                "stek-agent",
                "--prefix=true",
                "read",
                "stek/",
            ],
            &["user", "add", "stek-gen:gen-secret-pw"],
            &["user", "grant-role", "stek-gen", "stek-generator"],
            &["user", "add", "stek-agent:agent-secret-pw"],
            &["user", "grant-role", "stek-agent", "stek-agent"],
            &["auth", "enable"],
        ] {
            self.etcdctl(args);
        }
        self.root_password = Some(users.root_password.clone());
        users
    }

    /// The index of the member that is the leader now, by `etcdctl endpoint status`.
    pub fn leader(&self) -> usize {
        wait_for("an etcd leader", Duration::from_secs(10), || {
            let alive: Vec<usize> = (0..self.members.len())
                .filter(|i| self.members[*i].child.is_some())
                .collect();
            let out = self.etcdctl_at(&alive, &["endpoint", "status", "--write-out=json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v.as_array()?.iter().find_map(|s| {
                let member = s["Status"]["header"]["member_id"].as_u64()?;
                let leader = s["Status"]["leader"].as_u64()?;
                let port: u16 = s["Endpoint"].as_str()?.rsplit(':').next()?.parse().ok()?;
                (member == leader)
                    .then(|| self.members.iter().position(|m| m.client_port == port))
                    .flatten()
            })
        })
    }
}

/// The answer (head and body) of a plain HTTP GET on loopback, if it answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        // A failing test shows what each member said: an election, a crash, a refused peer.
        if std::thread::panicking() {
            for m in &self.members {
                let log = fs::read_to_string(&m.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "---- etcd {} (client port {}, peer port {}): last {} lines of {} ----\n{}",
                    m.name,
                    m.client_port,
                    m.peer_port,
                    tail.len(),
                    m.log.display(),
                    tail.join("\n")
                );
            }
        }
    }
}
