//! The `stek` command: parse the command line ([`cli`]), load the config file, merge both over
//! the defaults into typed settings ([`settings`], pure), then do each command's side effects
//! once, in order, in its `run_*` function, and run the library's loop. Exit codes: 0 ok,
//! 1 runtime failure, 2 bad usage.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use stek::agent::{self, AgentConfig, HostOptions, SealedOpener};
use stek::clock::{Clock, SystemClock};
use stek::config::FileConfig;
use stek::duration;
use stek::files::{self, DirCheck, KeyDir};
use stek::generator::{self, GroupPlan};
use stek::keyfile;
use stek::memcached::{self, Access, BindOptions, Limits, Listener};
use stek::metrics::{self, Metrics};
use stek::status::Status;
use stek::store::AnyStore;
use stek_core::{GeneratorKey, GroupIdentity, Record, Schedule, SlotKey};
use tracing::{info, warn};

mod cli;
mod settings;

use cli::{
    AgentArgs, Command, GeneratorArgs, KeyKind, KeygenArgs, ProcessArgs, ScanArgs, StatusArgs,
    UpArgs,
};
use settings::{DeliverySettings, GroupSettings, Place};

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

/// `stek up`: settings, then the key directory, memcached and metrics, then [`stek::up::run`].
fn run_up(args: UpArgs) -> anyhow::Result<()> {
    let s = settings::up(&args, &load_config(&args.process)?, &place())?;
    let access = memcached_access(&s.delivery)?;
    let key_dir = prepare_key_dir(&s.delivery, &s.schedule)?;
    runtime()?.block_on(async move {
        let shutdown = shutdown_signal();
        let h = start_host(&s.delivery, key_dir, access, s.clock_offset_ms).await?;
        log_schedule("stek up", &s.schedule);
        stek::up::run(
            s.schedule,
            s.group,
            h.options,
            h.clock,
            h.listeners,
            h.metrics,
            shutdown,
        )
        .await;
        Ok(())
    })
}

/// `stek agent`: settings, the identity, then the key directory, memcached, the store and
/// metrics, then [`agent::run_on_host`].
fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let s = settings::agent(&args, &load_config(&args.process)?, &place())?;
    let identity = GroupIdentity::from_file_text(&keyfile::read_private(&s.identity)?)
        .with_context(|| format!("{}", s.identity.display()))?;
    let access = memcached_access(&s.delivery)?;
    let key_dir = prepare_key_dir(&s.delivery, &s.schedule)?;
    info!(
        "agent for group {} with identity {}, trusting {} generator(s)",
        s.group,
        identity.public(),
        s.trusted.len()
    );
    runtime()?.block_on(async move {
        let shutdown = shutdown_signal();
        let h = start_host(&s.delivery, key_dir, access, s.clock_offset_ms).await?;
        let store = Arc::new(
            AnyStore::connect_lazy(&s.store)
                .await
                .with_context(|| format!("cannot use the store {}", s.store))?,
        );
        log_schedule("stek agent", &s.schedule);
        let opener = SealedOpener {
            identity,
            trusted: s.trusted,
        };
        let config = AgentConfig {
            max_stale: s.max_stale,
            ..AgentConfig::new(s.group, s.schedule)
        };
        agent::run_on_host(
            store,
            opener,
            config,
            h.options,
            h.clock,
            h.listeners,
            h.metrics,
            shutdown,
        )
        .await;
        Ok(())
    })
}

/// `stek generator`: settings, the signing key, hardening, then the store and metrics, then
/// [`generator::run_generator`].
fn run_generator(args: GeneratorArgs) -> anyhow::Result<()> {
    let s = settings::generator(&args, &load_config(&args.process)?)?;
    let signer = Arc::new(
        GeneratorKey::from_file_text(&keyfile::read_private(&s.signing_key)?)
            .with_context(|| format!("{}", s.signing_key.display()))?,
    );
    let plans: Vec<GroupPlan> = s
        .groups
        .into_iter()
        .map(|g| group_plan(g, &signer))
        .collect();
    harden();
    info!("generator {} publishing to {}", signer.public(), s.store);
    runtime()?.block_on(async move {
        let shutdown = shutdown_signal();
        let store = Arc::new(
            AnyStore::connect(&s.store)
                .await
                .with_context(|| format!("cannot use the store {}", s.store))?,
        );
        let (clock, m) = clock_and_metrics(s.clock_offset_ms);
        start_metrics(s.metrics.as_deref(), &m, &clock).await?;
        generator::run_generator(store, plans, clock, m, shutdown).await;
        Ok(())
    })
}

/// How the agent delivers on this host, from the delivery settings: the one place that builds it.
fn host_options(d: &DeliverySettings, dir: KeyDir, memcached_access: Access) -> HostOptions {
    HostOptions {
        dir,
        sinks: d.sinks.clone(),
        on_change: d.on_change.clone(),
        haproxy_sockets: d.haproxy_sockets.clone(),
        memcached_limits: Limits {
            max_connections: d.memcached_max_connections,
            max_connections_per_peer: d.memcached_max_connections_per_peer,
            request_timeout: d.memcached_request_timeout,
            ..Limits::default()
        },
        memcached_access,
    }
}

/// A generator's plan for one group: its records sealed to the group's recipients and signed.
fn group_plan(g: GroupSettings, signer: &Arc<GeneratorKey>) -> GroupPlan {
    info!(
        "group {}: {} recipient key(s), period {}, lifetime {}",
        g.name,
        g.recipients.len(),
        duration::format(g.schedule.period()),
        duration::format(g.schedule.lifetime())
    );
    let (signer, schedule, name) = (signer.clone(), g.schedule, g.name.clone());
    GroupPlan {
        name: g.name,
        schedule,
        seal: Arc::new(move |k: &SlotKey| {
            Record::seal(&schedule, &name, k, &g.recipients, &signer).map(|r| r.encode())
        }),
    }
}

/// What the settings need from this machine: the working directory and the default key
/// directory.
fn place() -> Place {
    Place {
        cwd: std::env::current_dir().map_err(|e| e.to_string()),
        default_dir: files::default_dir(),
    }
}

fn load_config(p: &ProcessArgs) -> anyhow::Result<FileConfig> {
    p.config
        .as_deref()
        .map(FileConfig::load)
        .transpose()
        .map(Option::unwrap_or_default)
}

/// Before anything is written: opens the key directory (creating it 0700 if absent) and checks
/// through the handle that it is memory-backed, ours and private (`KeyDir::open`); then hardens
/// the process and logs the settings' warnings.
fn prepare_key_dir(d: &DeliverySettings, schedule: &Schedule) -> anyhow::Result<KeyDir> {
    let (dir, check) = KeyDir::open(&d.dir, d.allow_persistent)?;
    match check {
        DirCheck::Memory(fs) => info!("key directory {} is on {fs}", d.dir.display()),
        DirCheck::PersistentAllowed(fs) => warn!(
            "DANGER: key directory {} is on {fs}, a persistent file system (--allow-persistent-dir): erased keys may be recovered from the disk, which defeats forward secrecy",
            d.dir.display()
        ),
    }
    harden();
    for w in settings::warnings(schedule, d) {
        warn!("{w}");
    }
    Ok(dir)
}

/// What `stek up` and `stek agent` start on this host before their loop.
struct Host {
    /// The memcached endpoints, bound (so that address errors surface before anything runs).
    listeners: Vec<Listener>,
    clock: Arc<dyn Clock>,
    /// Also served on the metrics endpoint, if asked.
    metrics: Arc<Metrics>,
    options: HostOptions,
}

/// Who may use the memcached unix sockets. The group is resolved once, before anything is
/// written: an unknown name stops the start.
fn memcached_access(d: &DeliverySettings) -> anyhow::Result<Access> {
    Ok(match &d.memcached_group {
        Some(g) => Access::with_group(g).with_context(|| format!("--memcached-group {g}"))?,
        None => Access::owner(),
    })
}

async fn start_host(
    d: &DeliverySettings,
    dir: KeyDir,
    access: Access,
    clock_offset_ms: i64,
) -> anyhow::Result<Host> {
    let (gid, group) = (access.gid(), access.group_name().map(str::to_owned));
    // Before memcached's socket or anything else is created in the directory.
    let host = host_options(d, dir, access);
    host.open_dirs()?;
    if let (Some(dir), Some(gid)) = (&d.memcached_socket_dir, gid) {
        memcached::prepare_socket_dir(dir, gid)?;
    }
    let mut options = BindOptions::new();
    options.allow_remote = d.memcached_allow_remote;
    options.group = gid;
    let mut listeners = Vec::new();
    for a in &d.memcached {
        let l = memcached::bind_with(a, options)
            .await
            .with_context(|| format!("cannot serve memcached on {a}"))?;
        match (&l, group.as_deref()) {
            (Listener::Unix(_), Some(g)) => info!(
                "serving ticket keys over the memcached protocol on {a} to root, this uid and group {g}"
            ),
            _ => info!("serving ticket keys over the memcached protocol on {a}"),
        }
        listeners.push(l);
    }
    let (clock, metrics) = clock_and_metrics(clock_offset_ms);
    start_metrics(d.metrics.as_deref(), &metrics, &clock).await?;
    Ok(Host {
        listeners,
        clock,
        metrics,
        options: host,
    })
}

fn clock_and_metrics(offset_ms: i64) -> (Arc<dyn Clock>, Arc<Metrics>) {
    (
        Arc::new(SystemClock::with_offset_ms(offset_ms)),
        Metrics::new(),
    )
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

/// The stack of each runtime thread. `mlockall` makes every page of every mapped stack resident,
/// so the default 2 MiB per thread would cost 2 MiB of locked memory each; measured use is under
/// 40 KiB (debug build, every command), so 512 KiB leaves a wide margin.
const RUNTIME_STACK: usize = 512 * 1024;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(RUNTIME_STACK)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
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

/// Resolves when stek should shut down: SIGINT or SIGTERM. Registered when called (inside the
/// runtime, before the command's loop starts), so the handlers are in place from then on.
///
/// SIGHUP, SIGUSR1 and SIGUSR2 end a process silently by default, and a stray `kill -HUP` (the
/// usual "reload" of other daemons, or a closed terminal) must not stop key rotation without a
/// word: they are caught and logged at WARN, and stek carries on. stek does not reload its
/// configuration: a reload that applied only part of the settings would be harder to reason
/// about than a restart. SIGPIPE needs nothing here: Rust's runtime ignores it at startup, so a
/// peer that closed a socket is an EPIPE error on that socket only.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let listen = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("cannot listen for {name}: {e}");
            None
        }
    };
    let mut int = listen(SignalKind::interrupt(), "SIGINT");
    let mut term = listen(SignalKind::terminate(), "SIGTERM");
    let mut hup = listen(SignalKind::hangup(), "SIGHUP");
    let mut usr1 = listen(SignalKind::user_defined1(), "SIGUSR1");
    let mut usr2 = listen(SignalKind::user_defined2(), "SIGUSR2");
    // A signal that could not be registered never arrives (and keeps its default action).
    async fn next(s: &mut Option<Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    async move {
        loop {
            tokio::select! {
                () = next(&mut int) => {
                    info!("interrupted");
                    return;
                }
                () = next(&mut term) => {
                    info!("terminated");
                    return;
                }
                () = next(&mut hup) => warn!(
                    "SIGHUP: stek does not reload its configuration; restart it to apply changes (keys and files are unchanged)"
                ),
                () = next(&mut usr1) => warn!(
                    "SIGUSR1 ignored: stek has no use for it (keys and files are unchanged)"
                ),
                () = next(&mut usr2) => warn!(
                    "SIGUSR2 ignored: stek has no use for it (keys and files are unchanged)"
                ),
            }
        }
    }
}
