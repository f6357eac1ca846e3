//! The `stek` command: parse, build a typed config, run. Exit codes: 0 ok, 1 runtime failure,
//! 2 bad usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use stek::agent::{Agent, SealedOpener};
use stek::clock::{Clock, SystemClock};
use stek::config::FileConfig;
use stek::duration;
use stek::files::{self, DirCheck};
use stek::memcached::{self, Limits, Listener};
use stek::metrics::{self, Metrics};
use stek::service::{self, AgentOptions, GroupPlan};
use stek::sink::SinkKind;
use stek::status::Status;
use stek::store::AnyStore;
use stek::up;
use stek_core::schedule::MAX_LIFETIME;
use stek_core::{
    GeneratorKey, GeneratorPublicKey, GroupIdentity, GroupPublicKey, Record, Schedule, SlotKey,
};
use tracing::{info, warn};

const ABOUT: &str =
    "Rotating, fleet-wide TLS session ticket keys without giving up forward secrecy";

const LONG_ABOUT: &str = "\
Rotating, fleet-wide TLS session ticket keys without giving up forward secrecy.

A session ticket is the session's secrets encrypted under a session ticket encryption key
(STEK). Whoever obtains that key later can decrypt every recorded session it covered. stek
makes a fresh key every period, keeps the next period's key ready (decrypt-only) and past
keys for as long as tickets live, hands them to nginx, HAProxy, Apache and memcached-protocol
clients, and erases each key once no ticket may still use it. Keys never touch persistent
disk.

One machine: `stek up`. A fleet: `stek keygen` once, `stek generator` next to the store's
primary, `stek agent` on every TLS host.";

#[derive(Parser, Debug)]
#[command(name = "stek", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Rotate ticket keys for the TLS servers of this machine (generator, agent and store in one
    /// process).
    #[command(long_about = UP_LONG_ABOUT)]
    Up(UpArgs),
    /// Make a key pair: a host group's (X25519) or a generator's signing key (Ed25519).
    #[command(long_about = KEYGEN_LONG_ABOUT)]
    Keygen(KeygenArgs),
    /// Make, seal and sign every group's upcoming keys and publish them to a shared store.
    #[command(long_about = GENERATOR_LONG_ABOUT)]
    Generator(GeneratorArgs),
    /// Read this host's group keys from the local store copy and hand them to its TLS servers.
    #[command(long_about = AGENT_LONG_ABOUT)]
    Agent(AgentArgs),
    /// Print a running agent's ring by key name, slot and role.
    Status(StatusArgs),
    /// Audit any TLS server's session resumption from the outside: tickets, key names, how long
    /// a key encrypts, how long old tickets are accepted, guessable keys.
    #[command(long_about = SCAN_LONG_ABOUT)]
    Scan(ScanArgs),
}

const UP_LONG_ABOUT: &str = "\
Rotate ticket keys for the TLS servers of this machine: generator, agent and an embedded store
in one process.

Every PERIOD a new key starts encrypting; the next period's key is already installed
(decrypt-only) and past keys stay for LIFETIME, so tickets resume for LIFETIME and a key is
erased at most LIFETIME + 2*PERIOD after the last ticket it encrypted.

Files written under DIR (0600, in 0700 directories, atomically):
  nginx/tickets.conf     include it in a server block: one ssl_session_ticket_key line per key
  nginx/keys/*.key       the 80-byte key files it references
  haproxy/tickets.keys   for `bind ... tls-ticket-keys FILE` (previous, current, next)
  apache/ticket.key      for `SSLSessionTicketKeyFile FILE` (the current key, 48 bytes)
  status.json            the ring by key name, slot and role (no key bytes)
and a read-only memcached-protocol server (ticket-key/<slot start> in Cloudflare's layout).

With --haproxy-socket PATH (HAProxy's `stats socket PATH mode 600 level admin`), every rotation
also reaches the running HAProxy through its runtime API (`set ssl tls-key`), with no reload:
stek keeps the rings whose file is DIR/haproxy/tickets.keys identical to that file, checks them
every second, and brings back a HAProxy that was restarted, started late or changed.

Example:
  stek up --period 1h --lifetime 18h --on-change 'nginx -s reload'";

const KEYGEN_LONG_ABOUT: &str = "\
Make a key pair. The private key goes to FILE (mode 0600; an existing file is never
overwritten); the public key is printed on stdout as the last line, ready for the command line.

  stek keygen --kind group --out web.identity        # every TLS host of group `web` gets this file
  stek keygen --kind generator --out generator.key   # only generators hold this one

Give the group's public key (stek-group1:...) to the generator with --group web=PUB, and the
generator's public key (stek-generator1:...) to every agent with --trust PUB.";

const GENERATOR_LONG_ABOUT: &str = "\
Make each upcoming slot's key for every group, seal it to the group's public keys (HPKE),
sign it, and publish it with create-if-absent: any number of generators may run, the store
decides which key a slot gets. No key is kept after sealing; records expire when their key
leaves every window.

  stek generator --store redis://10.0.0.1:6379 --signing-key generator.key \\
      --group web=stek-group1:AAAA...,stek-group1:BBBB... --period 1h --lifetime 18h";

const AGENT_LONG_ABOUT: &str = "\
Read this host's group records from the local store copy (a Redis read replica, or etcd),
check the generator's signature, open them with the group identity, and deliver the ring to
the TLS servers exactly like `stek up` (same files, memcached interface and --on-change).
Follows the store by notification plus a jittered poll; serves what it has while the store is
down, and past --max-stale periods without a current key encrypts with a local random key
(resumption then works on this host only; forward secrecy holds) until the store is back.

  stek agent --store redis://127.0.0.1:6379 --group web --identity web.identity \\
      --trust stek-generator1:CCCC... --on-change 'nginx -s reload'";

/// The schedule flags shared by up, agent and generator.
#[derive(Args, Debug)]
struct ScheduleArgs {
    /// How long each key encrypts before the next takes over (e.g. 1h, 30m, 4s). Default 1h.
    #[arg(long, value_name = "DUR", value_parser = parse_period, allow_hyphen_values = true)]
    period: Option<Duration>,

    /// How long a ticket stays valid: past keys are kept this long, and servers are told this
    /// lifetime. At most 7d (TLS 1.3). May be shorter than the period. Default 18h.
    #[arg(long, value_name = "DUR", value_parser = parse_lifetime, allow_hyphen_values = true)]
    lifetime: Option<Duration>,
}

/// The delivery flags shared by up and agent.
#[derive(Args, Debug)]
struct SinkArgs {
    /// Directory for the key files. Must be on tmpfs or ramfs. Default: the first of /run/stek,
    /// $XDG_RUNTIME_DIR/stek, /dev/shm/stek that is.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Allow DIR on a persistent file system. Keys written there can be recovered from the disk
    /// long after they were erased, which defeats forward secrecy: use only for testing.
    #[arg(long)]
    allow_persistent_dir: bool,

    /// Serve keys over the memcached text protocol on ADDR: 127.0.0.1:PORT, [::1]:PORT, or a
    /// path for a unix socket (mode 0600). Repeatable. Default: DIR/memcached.sock.
    #[arg(long = "memcached", value_name = "ADDR")]
    memcached: Vec<String>,

    /// Allow --memcached on a non-loopback address. Anyone who can reach it can read the keys.
    #[arg(long)]
    memcached_allow_remote: bool,

    /// Do not serve the memcached protocol at all.
    #[arg(long, conflicts_with = "memcached")]
    no_memcached: bool,

    /// Most concurrent memcached connections; more are refused with an error reply.
    #[arg(long, value_name = "N")]
    memcached_max_connections: Option<usize>,

    /// Run CMD with `sh -c` after every change of the key files, e.g. 'nginx -s reload' or
    /// 'apache2ctl graceful'. A failure is logged and retried with backoff; the previous files
    /// stay valid meanwhile.
    #[arg(long, value_name = "CMD")]
    on_change: Option<String>,

    /// Which key files to write (comma-separated: nginx, haproxy, apache). Default: all three.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    sinks: Vec<SinkArg>,

    /// HAProxy's admin socket (`stats socket PATH mode 600 level admin`): push every new key to
    /// the running HAProxy with `set ssl tls-key`, no reload. Manages the rings whose file is
    /// DIR/haproxy/tickets.keys (implies the haproxy sink). Repeatable, one per HAProxy process.
    #[arg(long = "haproxy-socket", value_name = "PATH")]
    haproxy_socket: Vec<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics and the status at /status (loopback only).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

/// Flags every long-running command takes.
#[derive(Args, Debug)]
struct ProcessArgs {
    /// Read settings from a TOML file; flags given on the command line win. The keys are the
    /// flag names with `_` (e.g. `on_change`); a generator's `[[groups]]` may give a group its own
    /// period and lifetime (see the README).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Shift this process's clock by MS milliseconds (negative: behind). For testing how hosts
    /// with skewed clocks interoperate.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        allow_hyphen_values = true,
        hide = true
    )]
    clock_offset_ms: i64,
}

#[derive(Args, Debug)]
struct UpArgs {
    #[command(flatten)]
    schedule: ScheduleArgs,

    #[command(flatten)]
    sink: SinkArgs,

    /// The group name recorded with each key (letters, digits, '.', '_', '-'). Default: default.
    #[arg(long, value_name = "NAME", value_parser = parse_group)]
    group: Option<String>,

    #[command(flatten)]
    process: ProcessArgs,
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// Which key pair: `group` (X25519, for the TLS hosts of a group) or `generator` (Ed25519
    /// signing key).
    #[arg(long, value_name = "KIND")]
    kind: KeyKind,

    /// Where to write the private key (mode 0600; never overwritten).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyKind {
    Group,
    Generator,
}

#[derive(Args, Debug)]
struct GeneratorArgs {
    /// The store: redis://HOST:PORT (the primary) or etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, value_name = "URL")]
    store: Option<String>,

    /// A group and its recipients' public keys: NAME=PUB[,PUB...]. Repeat for several groups.
    #[arg(long = "group", value_name = "NAME=PUB[,PUB...]")]
    groups: Vec<String>,

    /// The generator's signing key file (from `stek keygen --kind generator`).
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,

    #[command(flatten)]
    schedule: ScheduleArgs,

    /// Serve Prometheus metrics at http://ADDR/metrics (loopback only).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,

    #[command(flatten)]
    process: ProcessArgs,
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// The store: redis://HOST:PORT (this site's read replica) or etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, value_name = "URL")]
    store: Option<String>,

    /// This host's group.
    #[arg(long, value_name = "NAME", value_parser = parse_group)]
    group: Option<String>,

    /// The group identity file (from `stek keygen --kind group`).
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,

    /// Public keys of the generators whose records are accepted (stek-generator1:...),
    /// comma-separated or repeated.
    #[arg(long, value_name = "PUB[,PUB...]", value_delimiter = ',')]
    trust: Vec<String>,

    /// How many periods an old shared key may keep encrypting when the current one is missing;
    /// past that a local random key encrypts. Default 1.
    #[arg(long, value_name = "N")]
    max_stale: Option<u64>,

    #[command(flatten)]
    schedule: ScheduleArgs,

    #[command(flatten)]
    sink: SinkArgs,

    #[command(flatten)]
    process: ProcessArgs,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The agent's key directory (reads DIR/status.json). Default: as for `stek up`.
    #[arg(long, value_name = "DIR", conflicts_with = "endpoint")]
    dir: Option<PathBuf>,

    /// Ask a running agent's metrics endpoint instead (ADDR as given to --metrics).
    #[arg(long, value_name = "ADDR")]
    endpoint: Option<String>,

    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

const SCAN_LONG_ABOUT: &str = "\
Audit any TLS server's session resumption from the outside.

For each address of each TARGET and each of TLS 1.2 and 1.3, stek scan checks session-ID
resumption, ticket issuance and resumption (a renewed ticket still counts), the lifetime hint
(0 means unspecified, not \"no tickets\"), TLS 1.3 lifetimes above 7 days, single-use TLS 1.3
tickets and psk_ke; reads the key name at the front of the tickets (confirmed on several
tickets); and tries guessable keys (all zero, one repeated byte, counting, ASCII) on the ticket
itself, for the 48- and 80-byte key files of nginx, Apache and HAProxy.

A key's life and the acceptance window take time to see:
  --observe 2h               sample for two hours; report every key name with first and last
                             sight, the rotation period, and whether the first tickets still
                             resume at the end
  --state /var/lib/stek-scan/example.json
                             keep names, times and a few tickets across runs: a daily cron run
                             measures key life and acceptance over days and weeks

Exit codes: 0 no finding of medium severity or worse, 1 findings, 2 the scan could not run.

Examples:
  stek scan example.com
  stek scan 127.0.0.1:8443 --observe 6s --max-rotation 3s
  stek scan 192.0.2.10 192.0.2.11 --sni www.example.com --json
  stek scan example.com --expect http://127.0.0.1:9100/status";

#[derive(Args, Debug)]
struct ScanArgs {
    /// host[:port] to audit (default port 443; IPv6 as [addr]:port). A name is scanned at each
    /// of its addresses.
    #[arg(value_name = "TARGET", required = true)]
    targets: Vec<String>,

    /// The server name to send (default: the target's host name; none for an IP address).
    /// With several targets, one name for all: they are compared as one fleet.
    #[arg(long, value_name = "NAME")]
    sni: Option<String>,

    /// Print one JSON document (stable field names and finding ids) instead of the report.
    #[arg(long)]
    json: bool,

    /// Keep sampling for DUR (e.g. 6s, 2h) to measure key rotation and acceptance.
    #[arg(long, value_name = "DUR", value_parser = parse_positive)]
    observe: Option<Duration>,

    /// Time between samples while observing (default: DUR/60, between 1s and 5m).
    #[arg(long, value_name = "DUR", value_parser = parse_positive, requires = "observe")]
    interval: Option<Duration>,

    /// The longest acceptable life of one encrypting key (finding stek.not_rotated).
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = parse_positive)]
    max_rotation: Duration,

    /// The oldest acceptable ticket that still resumes (finding stek.old_ticket_accepted).
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = parse_positive)]
    max_acceptance: Duration,

    /// Keep observations (key names, times, a few tickets) in FILE across runs (written 0600).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,

    /// A stek agent's status to check the served key against: a file from `stek status --json`
    /// (or DIR/status.json), or the agent's metrics endpoint (http://127.0.0.1:9100/status).
    #[arg(long, value_name = "STATUS")]
    expect: Option<String>,

    /// Per-connection timeout.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_positive)]
    timeout: Duration,
}

fn parse_positive(s: &str) -> Result<Duration, String> {
    let d = duration::parse(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("the duration must be longer than zero".into());
    }
    Ok(d)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SinkArg {
    Nginx,
    Haproxy,
    Apache,
}

impl From<SinkArg> for SinkKind {
    fn from(s: SinkArg) -> Self {
        match s {
            SinkArg::Nginx => SinkKind::Nginx,
            SinkArg::Haproxy => SinkKind::Haproxy,
            SinkArg::Apache => SinkKind::Apache,
        }
    }
}

fn parse_period(s: &str) -> Result<Duration, String> {
    let d = duration::parse(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("the period must be longer than zero".into());
    }
    if d > MAX_LIFETIME {
        return Err("the period must be at most 7d: rotate at least weekly".into());
    }
    Ok(d)
}

fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let d = duration::parse(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("the lifetime must be longer than zero".into());
    }
    if d > MAX_LIFETIME {
        return Err("the lifetime must be at most 7d, the longest ticket lifetime TLS 1.3 allows (RFC 8446 4.6.1)".into());
    }
    Ok(d)
}

fn parse_group(s: &str) -> Result<String, String> {
    if stek_core::record::valid_group(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid group name {s:?}: a group name is 1 to 64 letters, digits, '.', '_' or '-'"
        ))
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    return ExitCode::SUCCESS;
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    return ExitCode::from(2);
                }
                _ => {}
            }
            // One line: clap's first line, plus where to look.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("stek: {first} (see stek --help)");
            return ExitCode::from(2);
        }
    };
    init_logging();
    let result = match cli.command {
        Command::Up(a) => run_up(a),
        Command::Keygen(a) => run_keygen(a),
        Command::Generator(a) => run_generator(a),
        Command::Agent(a) => run_agent(a),
        Command::Status(a) => run_status(a),
        Command::Scan(a) => return run_scan(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stek: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn load_config(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    path.map(FileConfig::load)
        .transpose()
        .map(Option::unwrap_or_default)
}

/// A duration from the command line, else the config file, else the default.
fn pick_duration(
    flag: Option<Duration>,
    file: Option<&str>,
    what: &str,
    parse: fn(&str) -> Result<Duration, String>,
    default: Duration,
) -> anyhow::Result<Duration> {
    match (flag, file) {
        (Some(d), _) => Ok(d),
        (None, Some(text)) => parse(text).map_err(|e| anyhow::anyhow!("config file: {what}: {e}")),
        (None, None) => Ok(default),
    }
}

fn schedule_from(
    args: &ScheduleArgs,
    file_period: Option<&str>,
    file_lifetime: Option<&str>,
) -> anyhow::Result<Schedule> {
    let period = pick_duration(
        args.period,
        file_period,
        "period",
        parse_period,
        Duration::from_secs(3600),
    )?;
    let lifetime = pick_duration(
        args.lifetime,
        file_lifetime,
        "lifetime",
        parse_lifetime,
        Duration::from_secs(18 * 3600),
    )?;
    Ok(Schedule::new(period, lifetime)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn harden() {
    let hygiene = stek::sys::harden();
    if let Err(e) = &hygiene.no_core {
        warn!("could not disable core dumps: {e}");
    }
    if let Err(e) = &hygiene.not_dumpable {
        warn!("could not mark the process not dumpable: {e}");
    }
    match &hygiene.locked {
        Ok(()) => info!("memory locked: keys are never swapped out"),
        Err(e) => warn!("memory not locked, keys could be swapped to disk: {e}"),
    }
    match &hygiene.files {
        Ok(n) if *n < 2048 => warn!("only {n} open files allowed: the memcached interface serves fewer clients (raise LimitNOFILE)"),
        Ok(_) => {}
        Err(e) => warn!("could not raise the open-file limit: {e}"),
    }
}

/// Delivery settings after merging flags and config, checked, with the key directory made.
struct Delivery {
    opts: AgentOptions,
    memcached: Vec<String>,
    memcached_allow_remote: bool,
    metrics: Option<String>,
}

fn prepare_delivery(a: SinkArgs, c: &FileConfig, schedule: &Schedule) -> anyhow::Result<Delivery> {
    let dir = match a.dir.or_else(|| c.dir.clone()) {
        Some(d) => d,
        None => files::default_dir().context(
            "none of /run/stek, $XDG_RUNTIME_DIR/stek, /dev/shm/stek is on tmpfs or ramfs; pass --dir on a memory-backed file system",
        )?,
    };
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(dir)
    };
    let allow_persistent = a.allow_persistent_dir || c.allow_persistent_dir.unwrap_or(false);
    // Checked before anything is written.
    match files::check_dir(&dir, allow_persistent)? {
        DirCheck::Memory(fs) => info!("key directory {} is on {fs}", dir.display()),
        DirCheck::PersistentAllowed(fs) => warn!(
            "DANGER: key directory {} is on {fs}, a persistent file system (--allow-persistent-dir): erased keys may be recovered from the disk, which defeats forward secrecy",
            dir.display()
        ),
    }
    harden();
    files::ensure_private_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let sinks: Vec<SinkKind> = if !a.sinks.is_empty() {
        a.sinks.iter().map(|s| SinkKind::from(*s)).collect()
    } else if let Some(names) = &c.sinks {
        names
            .iter()
            .map(|n| match n.as_str() {
                "nginx" => Ok(SinkKind::Nginx),
                "haproxy" => Ok(SinkKind::Haproxy),
                "apache" => Ok(SinkKind::Apache),
                other => bail!("config file: unknown sink {other:?} (nginx, haproxy, apache)"),
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        vec![SinkKind::Nginx, SinkKind::Haproxy, SinkKind::Apache]
    };
    if sinks.contains(&SinkKind::Apache) {
        warn!(
            "Apache holds one key: its tickets stop resuming at every rotation (every {}); use nginx, HAProxy or a longer period if that matters",
            duration::format(schedule.period())
        );
    }
    let haproxy_sockets = if a.haproxy_socket.is_empty() {
        c.haproxy_socket.clone().unwrap_or_default()
    } else {
        a.haproxy_socket
    };
    if !haproxy_sockets.is_empty() {
        let keys = stek::sink::haproxy_keys_path(&dir);
        stek::sink::haproxy_runtime::check_cli_word(&keys.display().to_string()).map_err(|e| {
            anyhow::anyhow!("--haproxy-socket: the keys file {e}; choose another --dir")
        })?;
    }
    let haproxy = sinks.contains(&SinkKind::Haproxy) || !haproxy_sockets.is_empty();
    if haproxy && schedule.lifetime() > schedule.period() {
        warn!(
            "HAProxy holds 3 keys: its tickets stop resuming 1 to 2 periods after they were issued ({} to {}), not after the lifetime of {}; on HAProxy hosts choose --lifetime <= --period",
            duration::format(schedule.period()),
            duration::format(schedule.period() * 2),
            duration::format(schedule.lifetime())
        );
    }
    let no_memcached = a.no_memcached || c.no_memcached.unwrap_or(false);
    let mut memcached = if a.memcached.is_empty() {
        c.memcached.clone().unwrap_or_default()
    } else {
        a.memcached
    };
    if memcached.is_empty() && !no_memcached {
        memcached.push(dir.join("memcached.sock").display().to_string());
    }
    if no_memcached {
        memcached.clear();
    }
    Ok(Delivery {
        opts: AgentOptions {
            poll: AgentOptions::default_poll(schedule),
            feed: Default::default(),
            dir,
            sinks,
            on_change: a.on_change.or_else(|| c.on_change.clone()),
            haproxy_sockets,
            memcached_limits: Limits {
                max_connections: a
                    .memcached_max_connections
                    .or(c.memcached_max_connections)
                    .unwrap_or(Limits::default().max_connections),
                ..Limits::default()
            },
        },
        memcached,
        memcached_allow_remote: a.memcached_allow_remote
            || c.memcached_allow_remote.unwrap_or(false),
        metrics: a.metrics.or_else(|| c.metrics.clone()),
    })
}

async fn bind_memcached(d: &Delivery) -> anyhow::Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    for a in &d.memcached {
        let l = memcached::bind(a, d.memcached_allow_remote)
            .await
            .with_context(|| format!("cannot serve memcached on {a}"))?;
        info!("serving ticket keys over the memcached protocol on {a}");
        listeners.push(l);
    }
    Ok(listeners)
}

async fn start_metrics(
    addr: Option<&str>,
    m: &Arc<Metrics>,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<()> {
    if let Some(addr) = addr {
        let l = metrics::bind(addr).await?;
        info!("metrics on http://{addr}/metrics, status on http://{addr}/status");
        tokio::spawn(metrics::serve(
            l,
            m.clone(),
            clock.clone(),
            std::future::pending(),
        ));
    }
    Ok(())
}

fn log_schedule(what: &str, schedule: &Schedule) {
    info!(
        "{what}: period {}, lifetime {}: {} keys per window ({} past + current + next); a key is erased at most {} after its last ticket was made",
        duration::format(schedule.period()),
        duration::format(schedule.lifetime()),
        schedule.window_len(),
        schedule.past_keys(),
        duration::format(schedule.exposure_bound())
    );
}

fn run_up(args: UpArgs) -> anyhow::Result<()> {
    let c = load_config(args.process.config.as_deref())?;
    let schedule = schedule_from(&args.schedule, c.period.as_deref(), c.lifetime.as_deref())?;
    let group = match args.group.or_else(|| c.group.clone()) {
        Some(g) => parse_group(&g).map_err(anyhow::Error::msg)?,
        None => "default".to_owned(),
    };
    let d = prepare_delivery(args.sink, &c, &schedule)?;
    runtime()?.block_on(async move {
        let listeners = bind_memcached(&d).await?;
        let clock: Arc<dyn Clock> =
            Arc::new(SystemClock::with_offset_ms(args.process.clock_offset_ms));
        let m = Metrics::new();
        start_metrics(d.metrics.as_deref(), &m, &clock).await?;
        log_schedule("stek up", &schedule);
        up::run(
            schedule,
            group,
            d.opts,
            clock,
            listeners,
            m,
            shutdown_signal(),
        )
        .await;
        Ok(())
    })
}

fn run_keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let (text, public) = match args.kind {
        KeyKind::Group => {
            let id = GroupIdentity::generate()?;
            (id.to_file_text(), id.public().to_string())
        }
        KeyKind::Generator => {
            let k = GeneratorKey::generate()?;
            (k.to_file_text(), k.public().to_string())
        }
    };
    files::create_new_private(&args.out, text.as_bytes())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "private key written to {} (mode 0600); public key:",
        args.out.display()
    );
    println!("{public}");
    Ok(())
}

fn read_secret_file(path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = zeroize::Zeroizing::new(String::new());
    f.take(64 * 1024)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text)
}

fn parse_group_spec(spec: &str) -> anyhow::Result<(String, Vec<GroupPublicKey>)> {
    let (name, pubs) = spec
        .split_once('=')
        .with_context(|| format!("--group {spec:?}: expected NAME=PUB[,PUB...]"))?;
    let name = parse_group(name).map_err(anyhow::Error::msg)?;
    let keys = parse_recipients(&name, pubs.split(','))?;
    Ok((name, keys))
}

fn parse_recipients<'a>(
    group: &str,
    pubs: impl Iterator<Item = &'a str>,
) -> anyhow::Result<Vec<GroupPublicKey>> {
    let keys = pubs
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            GroupPublicKey::parse(p).with_context(|| format!("group {group}: bad recipient {p:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if keys.is_empty() {
        bail!("group {group}: no recipient public keys");
    }
    Ok(keys)
}

fn run_generator(args: GeneratorArgs) -> anyhow::Result<()> {
    let c = load_config(args.process.config.as_deref())?;
    let store_url = args
        .store
        .or_else(|| c.store.clone())
        .context("--store is required")?;
    let key_path = args
        .signing_key
        .or_else(|| c.signing_key.clone())
        .context("--signing-key is required")?;
    let signer = Arc::new(
        GeneratorKey::from_file_text(&read_secret_file(&key_path)?)
            .with_context(|| format!("{}", key_path.display()))?,
    );
    let default = schedule_from(&args.schedule, c.period.as_deref(), c.lifetime.as_deref())?;
    let mut plans = Vec::new();
    let mut add = |name: String, schedule: Schedule, recipients: Vec<GroupPublicKey>| {
        let signer = signer.clone();
        let g = name.clone();
        info!(
            "group {name}: {} recipient key(s), period {}, lifetime {}",
            recipients.len(),
            duration::format(schedule.period()),
            duration::format(schedule.lifetime())
        );
        plans.push(GroupPlan {
            name,
            schedule,
            seal: Arc::new(move |k: &SlotKey| {
                Record::seal(&schedule, &g, k, &recipients, &signer)
                    .map(|r| r.encode())
                    .map_err(|e| e.to_string())
            }),
        });
    };
    for spec in &args.groups {
        let (name, keys) = parse_group_spec(spec)?;
        add(name, default, keys);
    }
    if args.groups.is_empty() {
        for g in c.groups.iter().flatten() {
            let name = parse_group(&g.name).map_err(anyhow::Error::msg)?;
            let schedule = Schedule::new(
                pick_duration(
                    None,
                    g.period.as_deref(),
                    "period",
                    parse_period,
                    default.period(),
                )?,
                pick_duration(
                    None,
                    g.lifetime.as_deref(),
                    "lifetime",
                    parse_lifetime,
                    default.lifetime(),
                )?,
            )?;
            add(
                name.clone(),
                schedule,
                parse_recipients(&name, g.recipients.iter().map(String::as_str))?,
            );
        }
    }
    if plans.is_empty() {
        bail!("no group to serve: give --group NAME=PUB[,PUB...] (or [[groups]] in --config)");
    }
    harden();
    info!("generator {} publishing to {store_url}", signer.public());
    let metrics_addr = args.metrics.or_else(|| c.metrics.clone());
    runtime()?.block_on(async move {
        let store = Arc::new(
            AnyStore::connect(&store_url)
                .await
                .with_context(|| format!("cannot use the store {store_url}"))?,
        );
        let clock: Arc<dyn Clock> =
            Arc::new(SystemClock::with_offset_ms(args.process.clock_offset_ms));
        let m = Metrics::new();
        start_metrics(metrics_addr.as_deref(), &m, &clock).await?;
        service::run_generator(store, plans, clock, m, shutdown_signal()).await;
        Ok(())
    })
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let c = load_config(args.process.config.as_deref())?;
    let store_url = args
        .store
        .or_else(|| c.store.clone())
        .context("--store is required")?;
    let group = args
        .group
        .or_else(|| c.group.clone())
        .context("--group is required")?;
    let group = parse_group(&group).map_err(anyhow::Error::msg)?;
    let id_path = args
        .identity
        .or_else(|| c.identity.clone())
        .context("--identity is required")?;
    let identity = GroupIdentity::from_file_text(&read_secret_file(&id_path)?)
        .with_context(|| format!("{}", id_path.display()))?;
    let trust_text = if args.trust.is_empty() {
        c.trust.clone().unwrap_or_default()
    } else {
        args.trust
    };
    let trusted = trust_text
        .iter()
        .map(|t| GeneratorPublicKey::parse(t).with_context(|| format!("--trust {t:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if trusted.is_empty() {
        bail!("--trust is required: the public key(s) of the generator(s) whose records to accept");
    }
    let max_stale = args.max_stale.or(c.max_stale).unwrap_or(1);
    let schedule = schedule_from(&args.schedule, c.period.as_deref(), c.lifetime.as_deref())?;
    let d = prepare_delivery(args.sink, &c, &schedule)?;
    info!(
        "agent for group {group} with identity {}, trusting {} generator(s)",
        identity.public(),
        trusted.len()
    );
    runtime()?.block_on(async move {
        let listeners = bind_memcached(&d).await?;
        let store = Arc::new(
            AnyStore::connect_lazy(&store_url)
                .await
                .with_context(|| format!("cannot use the store {store_url}"))?,
        );
        let clock: Arc<dyn Clock> =
            Arc::new(SystemClock::with_offset_ms(args.process.clock_offset_ms));
        let m = Metrics::new();
        start_metrics(d.metrics.as_deref(), &m, &clock).await?;
        log_schedule("stek agent", &schedule);
        let agent = Agent::new(
            store.clone(),
            SealedOpener { identity, trusted },
            group,
            schedule,
            max_stale,
        );
        service::run_agent(agent, store, d.opts, clock, listeners, m, shutdown_signal()).await;
        Ok(())
    })
}

fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let status: Status = if let Some(addr) = &args.endpoint {
        stek::status::fetch(addr)?
    } else {
        let dir = match args.dir {
            Some(d) => d,
            None => files::default_dir().context("no default key directory found; pass --dir")?,
        };
        let path = dir.join("status.json");
        let text = std::fs::read(&path).with_context(|| {
            format!(
                "cannot read {} (is an agent running with --dir {}?)",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a stek status", path.display()))?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(())
}

fn run_scan(args: ScanArgs) -> ExitCode {
    let opts = stek::scan::Options {
        targets: args.targets,
        sni: args.sni,
        observe: args.observe,
        interval: args.interval,
        max_rotation: args.max_rotation,
        max_acceptance: args.max_acceptance,
        state: args.state,
        expect: args.expect,
        timeout: args.timeout,
        progress: !args.json,
    };
    let report = match stek::scan::run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stek scan: {}", stek::error::Chain(&e));
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("stek scan: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", report.render());
    }
    ExitCode::from(report.exit_code)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupted"),
        _ = term.recv() => info!("terminated"),
    }
}
