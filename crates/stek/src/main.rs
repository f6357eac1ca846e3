//! The `stek` command: parse the command line ([`cli`]), load the config file, merge both over
//! the defaults into typed settings ([`settings`], pure), then do each command's side effects
//! once, in order, in its `run_*` function, and run the library's loop. Exit codes: 0 ok,
//! 1 runtime failure, 2 bad usage.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use stek::agent::{self, AgentConfig, SealedOpener};
use stek::config::FileConfig;
use stek::duration;
use stek::files;
use stek::generator::{self, GroupPlan, RecordCheck};
use stek::keyfile;
use stek::store::AnyStore;
use stek_core::{GeneratorKey, GeneratorPublicKey, GroupIdentity, Record, Schedule, SlotKey};
use tracing::{debug, info, warn};

mod cli;
mod settings;
mod setup;

use cli::{
    AgentArgs, Command, GeneratorArgs, KeyKind, KeygenArgs, ProcessArgs, ScanArgs, StatusArgs,
    UpArgs,
};
use settings::{GroupSettings, Place};
use setup::{
    clock_and_metrics, harden, memcached_access, prepare_key_dir, start_host, start_metrics,
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
        Command::Generator(a) => run_generator(*a),
        Command::Agent(a) => run_agent(*a),
        Command::Status(a) => return run_status(a),
        Command::Scan(a) => return run_scan(a),
        Command::Completions(a) => {
            let mut script = Vec::new();
            clap_complete::generate(a.shell, &mut cli::command(), "stek", &mut script);
            print_out(&script)
        }
        Command::Man(a) => run_man(a),
        Command::Check(a) => return run_check(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stek: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Write `bytes` to stdout; a reader that went away (`stek man | head`) is not an error.
fn print_out(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write to standard output: {e}"))
        }
        _ => Ok(()),
    }
}

/// `stek check up|agent|generator ...`: every check the command makes before it starts, none of
/// its effects (no directory created, no socket bound, no store contacted).
fn run_check(args: cli::CheckArgs) -> ExitCode {
    let (what, problems, warnings) = match &args.command {
        cli::CheckCommand::Up(a) => check_up(a),
        cli::CheckCommand::Agent(a) => check_agent(a),
        cli::CheckCommand::Generator(a) => check_generator(a),
    };
    for w in &warnings {
        println!("warning: {w}");
    }
    if problems.is_empty() {
        println!("ok: {what}");
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
        ExitCode::from(2)
    }
}

/// The key directory and memcached settings of `up` and `agent`, checked without side effects.
fn check_delivery(
    d: &settings::DeliverySettings,
    schedule: &stek_core::Schedule,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    if let Err(e) = files::check_dir(&d.dir, d.allow_persistent) {
        problems.push(format!("key directory: {e}"));
    }
    if let Err(e) = memcached_access(d) {
        problems.push(format!("{e:#}"));
    }
    warnings.extend(settings::warnings(schedule, d));
}

/// The store URL's syntax and the store access files (nothing is contacted).
fn check_store(url: &str, access: &stek::store::StoreAccess, problems: &mut Vec<String>) {
    let loaded = match access.load() {
        Ok(l) => l,
        Err(e) => {
            problems.push(format!("store access: {}", stek::error::Chain(&e)));
            return;
        }
    };
    let parsed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                AnyStore::connect_lazy_with(url, &loaded).await.map(drop)?;
                Ok(())
            })
        });
    if let Err(e) = parsed {
        problems.push(format!("store: {e:#}"));
    }
}

type Checked = (String, Vec<String>, Vec<String>);

fn check_up(a: &UpArgs) -> Checked {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let what = match load_config(&a.process).and_then(|c| settings::up(a, &c, &place())) {
        Ok(s) => {
            check_delivery(&s.delivery, &s.schedule, &mut problems, &mut warnings);
            format!(
                "stek up: period {}, lifetime {}, key directory {}",
                duration::format(s.schedule.period()),
                duration::format(s.schedule.lifetime()),
                s.delivery.dir.display()
            )
        }
        Err(e) => {
            problems.push(format!("{e:#}"));
            String::new()
        }
    };
    (what, problems, warnings)
}

fn check_agent(a: &AgentArgs) -> Checked {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let what = match load_config(&a.process).and_then(|c| settings::agent(a, &c, &place())) {
        Ok(s) => {
            match keyfile::read_private(&s.identity)
                .map_err(anyhow::Error::from)
                .and_then(|t| {
                    GroupIdentity::from_file_text(&t)
                        .with_context(|| format!("{}", s.identity.display()))
                }) {
                Ok(_) => {}
                Err(e) => problems.push(format!("identity: {e:#}")),
            }
            check_store(&s.store, &s.store_access, &mut problems);
            check_delivery(&s.delivery, &s.schedule, &mut problems, &mut warnings);
            format!(
                "stek agent: group {}, period {}, lifetime {}, {} trusted generator(s), key directory {}",
                s.group,
                duration::format(s.schedule.period()),
                duration::format(s.schedule.lifetime()),
                s.trusted.len(),
                s.delivery.dir.display()
            )
        }
        Err(e) => {
            problems.push(format!("{e:#}"));
            String::new()
        }
    };
    (what, problems, warnings)
}

fn check_generator(a: &GeneratorArgs) -> Checked {
    let mut problems = Vec::new();
    let what = match load_config(&a.process).and_then(|c| settings::generator(a, &c)) {
        Ok(s) => {
            match keyfile::read_private(&s.signing_key)
                .map_err(anyhow::Error::from)
                .and_then(|t| {
                    GeneratorKey::from_file_text(&t)
                        .with_context(|| format!("{}", s.signing_key.display()))
                }) {
                Ok(_) => {}
                Err(e) => problems.push(format!("signing key: {e:#}")),
            }
            check_store(&s.store, &s.store_access, &mut problems);
            let groups: Vec<&str> = s.groups.iter().map(|g| g.name.as_str()).collect();
            format!("stek generator: groups {}", groups.join(", "))
        }
        Err(e) => {
            problems.push(format!("{e:#}"));
            String::new()
        }
    };
    (what, problems, Vec::new())
}

/// `stek man [COMMAND]`: the manual page of stek or of one subcommand, from the clap types.
fn run_man(args: cli::ManArgs) -> anyhow::Result<()> {
    let stek = cli::command();
    let cmd = match &args.command {
        None => stek,
        Some(name) => {
            let Some(sub) = stek.find_subcommand(name) else {
                let names: Vec<&str> = stek.get_subcommands().map(|c| c.get_name()).collect();
                anyhow::bail!("no subcommand {name:?}: one of {}", names.join(", "));
            };
            let page = format!("stek-{name}");
            sub.clone()
                .name(page)
                .bin_name(format!("stek {name}"))
                .version(env!("CARGO_PKG_VERSION"))
        }
    };
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut page)
        .map_err(|e| anyhow::anyhow!("cannot render the manual page: {e}"))?;
    print_out(&page)
}

/// `stek up`: settings, then the key directory, memcached and metrics, then [`stek::up::run`].
fn run_up(args: UpArgs) -> anyhow::Result<()> {
    stek::notify::enable();
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
    stek::notify::enable();
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
        let access = s.store_access.load().context("store access")?;
        let store = Arc::new(
            AnyStore::connect_lazy_with(&s.store, &access)
                .await
                .with_context(|| format!("cannot use the store {}", s.store))?,
        );
        // Given credentials, say once if they could write (an agent only reads).
        match &*store {
            AnyStore::Redis(_) if access.user.is_some() || access.password.is_some() => {
                let (store, group) = (store.clone(), s.group.clone());
                tokio::spawn(async move {
                    if let AnyStore::Redis(r) = &*store {
                        r.warn_if_broader_than_agent(&group).await;
                    }
                });
            }
            AnyStore::Etcd(_) => {
                tokio::spawn(warn_if_store_writable(store.clone()));
            }
            AnyStore::Redis(_) => {}
        }
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

/// An agent only reads the store: warns once if its credentials could also write (see
/// [`AnyStore::can_write_needlessly`]). Asks until the store answers, backing off.
async fn warn_if_store_writable(store: Arc<AnyStore>) {
    let mut backoff = stek_core::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        match store.can_write_needlessly().await {
            Ok(Some(true)) => {
                warn!(
                    "the agent's store user can write under stek/, and an agent only reads: give it a read-only role (README, \"Authentication and TLS\")"
                );
                return;
            }
            Ok(_) => return,
            Err(e) => {
                debug!(
                    "Cannot check the agent's store permissions yet: {}",
                    stek::error::Chain(&e)
                );
                tokio::time::sleep(stek_core::jitter(backoff.next())).await;
            }
        }
    }
}

/// `stek generator`: settings, the signing key, hardening, then the store and metrics, then
/// [`generator::run_generator`].
fn run_generator(args: GeneratorArgs) -> anyhow::Result<()> {
    let s = settings::generator(&args, &load_config(&args.process)?)?;
    let signer = Arc::new(
        GeneratorKey::from_file_text(&keyfile::read_private(&s.signing_key)?)
            .with_context(|| format!("{}", s.signing_key.display()))?,
    );
    let groups: Vec<String> = s.groups.iter().map(|g| g.name.clone()).collect();
    let plans: Vec<GroupPlan> = s
        .groups
        .into_iter()
        .map(|g| group_plan(g, &signer, &s.trusted))
        .collect();
    harden();
    info!("generator {} publishing to {}", signer.public(), s.store);
    runtime()?.block_on(async move {
        let shutdown = shutdown_signal();
        let access = s.store_access.load().context("store access")?;
        let store = Arc::new(
            AnyStore::connect_with(&s.store, &access)
                .await
                .with_context(|| format!("cannot use the store {}", s.store))?,
        );
        if let AnyStore::Redis(r) = &*store {
            require_generator_rights(r, &groups).await?;
        }
        let (clock, m) = clock_and_metrics(s.clock_offset_ms);
        start_metrics(s.metrics.as_deref(), s.metrics_allow_remote, &m, &clock).await?;
        generator::run_generator(store, plans, clock, m, shutdown).await;
        Ok(())
    })
}

/// A generator whose Redis user may not write a group's records fails at start, not at every
/// round.
async fn require_generator_rights(
    r: &stek::store::RedisStore,
    groups: &[String],
) -> anyhow::Result<()> {
    for group in groups {
        let missing = r
            .missing_generator_rights(group)
            .await
            .with_context(|| format!("cannot check the rights of the user at {}", r.name()))?;
        if !missing.is_empty() {
            anyhow::bail!(
                "{}: NOPERM: this generator's user may not run {} on stek:{group}:*; give it the generator's ACL (README, Authentication and TLS)",
                r.name(),
                missing.join(", ")
            );
        }
    }
    Ok(())
}

/// A generator's plan for one group: its records sealed to the group's recipients and signed.
fn group_plan(
    g: GroupSettings,
    signer: &Arc<GeneratorKey>,
    trusted: &[GeneratorPublicKey],
) -> GroupPlan {
    info!(
        "group {}: {} recipient key(s), period {}, lifetime {}",
        g.name,
        g.recipients.len(),
        duration::format(g.schedule.period()),
        duration::format(g.schedule.lifetime())
    );
    // Its own key is always trusted; the others are the peers named by --trust.
    let mut trusted = trusted.to_vec();
    if !trusted.contains(&signer.public()) {
        trusted.push(signer.public());
    }
    let (signer, schedule, name) = (signer.clone(), g.schedule, g.name.clone());
    GroupPlan::new(
        g.name,
        schedule,
        Arc::new(move |k: &SlotKey| {
            Record::seal(&schedule, &name, k, &g.recipients, &signer).map(|r| r.encode())
        }),
        RecordCheck::Signed { trusted },
    )
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

/// Logs on stderr, one line per event: `STEK_LOG` sets the level (`debug`, `info`, ...);
/// `STEK_LOG_FORMAT=json` makes each line one JSON object (timestamp, level, fields, message).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STEK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("STEK_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        log.json().flatten_event(true).init();
    } else {
        log.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
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

/// `stek status`: the agent's status with a verdict first; exits like a monitoring plugin
/// (0 ok, 1 warning, 2 critical: the agent is down or cannot be read, or encrypts alone).
fn run_status(args: StatusArgs) -> ExitCode {
    match read_status(&args) {
        Ok(status) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            let verdict = status.verdict(now);
            if args.json {
                match status.to_json() {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("stek status: {e}");
                        return ExitCode::from(2);
                    }
                }
                for (level, what) in &verdict.problems {
                    eprintln!("stek status: {}: {what}", level.word());
                }
            } else {
                print!("{}", status.render_at(now));
            }
            ExitCode::from(verdict.level.exit_code())
        }
        Err(e) => {
            println!("CRITICAL: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read_status(args: &StatusArgs) -> anyhow::Result<stek::status::Fetched> {
    if let Some(addr) = &args.endpoint {
        return Ok(stek::status::fetch_any(addr)?);
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => files::default_dir().context("no default key directory found; pass --dir")?,
    };
    let path = dir.join("status.json");
    let mut text = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| {
            use std::io::Read as _;
            f.take(stek::status::MAX_STATUS + 1).read_to_end(&mut text)
        })
        .with_context(|| {
            format!(
                "cannot read {} (is an agent running with --dir {}?)",
                path.display(),
                dir.display()
            )
        })?;
    anyhow::ensure!(
        text.len() as u64 <= stek::status::MAX_STATUS,
        "{} is larger than {} bytes: not a stek status",
        path.display(),
        stek::status::MAX_STATUS
    );
    serde_json::from_slice(&text)
        .map(|s| stek::status::Fetched::Agent(Box::new(s)))
        .with_context(|| format!("{} is not a stek status", path.display()))
}

fn run_scan(args: ScanArgs) -> ExitCode {
    // Before the scan, which may observe for hours: a report that cannot be written is known now.
    if let Some(path) = &args.html {
        if let Err(e) = stek::scan::html::check_writable(path) {
            return html_error(path, &e);
        }
    }
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
    if let Some(path) = &args.html {
        if let Err(e) = stek::scan::html::write(path, &stek::scan::html::render(&report)) {
            return html_error(path, &e);
        }
        if !args.json {
            println!("\nHTML report: {}", path.display());
        }
    }
    ExitCode::from(report.exit_code)
}

fn html_error(path: &std::path::Path, e: &std::io::Error) -> ExitCode {
    eprintln!(
        "stek scan: cannot write the HTML report to {}: {e}",
        path.display()
    );
    ExitCode::from(2)
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
