//! The `stek` command: parse, build a typed config, run. Exit codes: 0 ok, 1 runtime failure,
//! 2 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use stek::clock::SystemClock;
use stek::duration;
use stek::files::{self, DirCheck};
use stek::memcached::{self, Limits};
use stek::sink::SinkKind;
use stek::up::{self, UpConfig};
use stek_core::schedule::MAX_LIFETIME;
use stek_core::Schedule;
use tracing::{info, warn};

const ABOUT: &str = "Rotating, fleet-wide TLS session ticket keys without giving up forward secrecy";

const LONG_ABOUT: &str = "\
Rotating, fleet-wide TLS session ticket keys without giving up forward secrecy.

A session ticket is the session's secrets encrypted under a session ticket encryption key
(STEK). Whoever obtains that key later can decrypt every recorded session it covered. stek
makes a fresh key every period, keeps the next period's key ready (decrypt-only) and past
keys for as long as tickets live, hands them to nginx, HAProxy, Apache and memcached-protocol
clients, and erases each key once no ticket may still use it. Keys never touch persistent
disk.";

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
and a read-only memcached-protocol server (ticket-key/<slot start> in Cloudflare's layout).

Example:
  stek up --period 1h --lifetime 18h --on-change 'nginx -s reload'";

#[derive(Args, Debug)]
struct UpArgs {
    /// How long each key encrypts before the next takes over (e.g. 1h, 30m, 4s).
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = parse_period, allow_hyphen_values = true)]
    period: Duration,

    /// How long a ticket stays valid: past keys are kept this long, and servers are told this
    /// lifetime. At most 7d (TLS 1.3). May be shorter than the period.
    #[arg(long, value_name = "DUR", default_value = "18h", value_parser = parse_lifetime, allow_hyphen_values = true)]
    lifetime: Duration,

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
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    memcached_max_connections: usize,

    /// Run CMD with `sh -c` after every change of the key files, e.g. 'nginx -s reload' or
    /// 'apache2ctl graceful'. A failure is logged and retried with backoff; the previous files
    /// stay valid meanwhile.
    #[arg(long, value_name = "CMD")]
    on_change: Option<String>,

    /// Which key files to write (comma-separated).
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "nginx,haproxy,apache")]
    sinks: Vec<SinkArg>,

    /// The group name recorded with each key (letters, digits, '.', '_', '-').
    #[arg(long, value_name = "NAME", default_value = "default", value_parser = parse_group)]
    group: String,

    /// Shift this process's clock by MS milliseconds (negative: behind). For testing how hosts
    /// with skewed clocks interoperate.
    #[arg(long, value_name = "MS", default_value_t = 0, allow_hyphen_values = true, hide = true)]
    clock_offset_ms: i64,
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
        Err("a group name is 1 to 64 letters, digits, '.', '_' or '-'".into())
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
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
        Command::Up(args) => run_up(args),
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

fn run_up(args: UpArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let schedule = Schedule::new(args.period, args.lifetime)?;

    // The directory: checked before anything is written.
    let dir = match args.dir {
        Some(d) => d,
        None => files::default_dir().context(
            "none of /run/stek, $XDG_RUNTIME_DIR/stek, /dev/shm/stek is on tmpfs or ramfs; pass --dir on a memory-backed file system",
        )?,
    };
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir().context("cannot read the current directory")?.join(dir)
    };
    match files::check_dir(&dir, args.allow_persistent_dir)? {
        DirCheck::Memory(fs) => info!("key directory {} is on {fs}", dir.display()),
        DirCheck::PersistentAllowed(fs) => warn!(
            "DANGER: key directory {} is on {fs}, a persistent file system (--allow-persistent-dir): erased keys may be recovered from the disk, which defeats forward secrecy",
            dir.display()
        ),
    }

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

    files::ensure_private_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let sinks: Vec<SinkKind> = args.sinks.iter().map(|s| SinkKind::from(*s)).collect();
    if sinks.contains(&SinkKind::Apache) {
        warn!(
            "Apache holds one key: its tickets stop resuming at every rotation (every {}); use nginx, HAProxy or a longer period if that matters",
            duration::format(schedule.period())
        );
    }
    if sinks.contains(&SinkKind::Haproxy) && schedule.lifetime() > schedule.period() {
        warn!(
            "HAProxy holds 3 keys: its tickets stop resuming 1 to 2 periods after they were issued ({} to {}), not after the lifetime of {}; on HAProxy hosts choose --lifetime <= --period",
            duration::format(schedule.period()),
            duration::format(schedule.period() * 2),
            duration::format(schedule.lifetime())
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut addrs = args.memcached.clone();
        if addrs.is_empty() && !args.no_memcached {
            addrs.push(dir.join("memcached.sock").display().to_string());
        }
        let mut listeners = Vec::new();
        for a in &addrs {
            let l = memcached::bind(a, args.memcached_allow_remote)
                .await
                .with_context(|| format!("cannot serve memcached on {a}"))?;
            info!("serving ticket keys over the memcached protocol on {a}");
            listeners.push(l);
        }
        info!(
            "stek up: period {}, lifetime {}: {} keys per window ({} past + current + next); a key is erased at most {} after its last ticket was made",
            duration::format(schedule.period()),
            duration::format(schedule.lifetime()),
            schedule.window_len(),
            schedule.past_keys(),
            duration::format(schedule.exposure_bound())
        );
        let cfg = UpConfig {
            schedule,
            group: args.group,
            dir,
            sinks,
            on_change: args.on_change,
            memcached_limits: Limits {
                max_connections: args.memcached_max_connections,
                ..Limits::default()
            },
        };
        let clock = Arc::new(SystemClock::with_offset_ms(args.clock_offset_ms));
        up::run(cfg, clock, listeners, shutdown_signal()).await
    })
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
