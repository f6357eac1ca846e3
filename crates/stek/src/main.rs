//! The `stek` command: parse, build a typed config, run. Exit codes: 0 ok, 1 runtime failure,
//! 2 bad usage.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
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
use stek_core::{
    GeneratorKey, GeneratorPublicKey, GroupIdentity, GroupPublicKey, Record, Schedule, SlotKey,
};
use tracing::{info, warn};

mod cli;

use cli::{
    check_lifetime, check_period, parse_group, AgentArgs, Command, GeneratorArgs, KeyKind,
    KeygenArgs, ScanArgs, ScheduleArgs, SinkArgs, StatusArgs, UpArgs,
};

fn main() -> ExitCode {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
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
    file: Option<Duration>,
    what: &str,
    check: fn(Duration) -> Result<Duration, String>,
    default: Duration,
) -> anyhow::Result<Duration> {
    match (flag, file) {
        (Some(d), _) => Ok(d),
        (None, Some(d)) => check(d).map_err(|e| anyhow::anyhow!("config file: {what}: {e}")),
        (None, None) => Ok(default),
    }
}

fn schedule_from(
    args: &ScheduleArgs,
    file_period: Option<Duration>,
    file_lifetime: Option<Duration>,
) -> anyhow::Result<Schedule> {
    let period = pick_duration(
        args.period,
        file_period,
        "period",
        check_period,
        Duration::from_secs(3600),
    )?;
    let lifetime = pick_duration(
        args.lifetime,
        file_lifetime,
        "lifetime",
        check_lifetime,
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
    } else if let Some(kinds) = &c.sinks {
        kinds.clone()
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
    let schedule = schedule_from(&args.schedule, c.period, c.lifetime)?;
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
    let default = schedule_from(&args.schedule, c.period, c.lifetime)?;
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
                pick_duration(None, g.period, "period", check_period, default.period())?,
                pick_duration(
                    None,
                    g.lifetime,
                    "lifetime",
                    check_lifetime,
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
    let schedule = schedule_from(&args.schedule, c.period, c.lifetime)?;
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
        stek::status::fetch(addr).map_err(anyhow::Error::msg)?
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
            eprintln!("stek scan: {e}");
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
