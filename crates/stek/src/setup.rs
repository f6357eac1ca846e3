//! The side effects of `stek up`, `stek agent` and `stek generator`, done once, in order: the
//! key directory (checked before anything is written), process hygiene, the memcached sockets,
//! the metrics endpoint. Everything before this is pure ([`crate::settings`]); everything after
//! is the library's loop.

use std::sync::Arc;

use anyhow::Context as _;
use stek::agent::HostOptions;
use stek::clock::{Clock, SystemClock};
use stek::files::{DirCheck, KeyDir};
use stek::memcached::{self, Access, BindOptions, Limits, Listener};
use stek::metrics::{self, Metrics};
use stek_core::Schedule;
use tracing::{info, warn};

use crate::settings::{self, DeliverySettings};

/// How the agent delivers on this host, from the delivery settings: the one place that builds it.
fn host_options(d: &DeliverySettings, dir: KeyDir, memcached_access: Access) -> HostOptions {
    HostOptions {
        dir,
        sinks: d.sinks.clone(),
        nginx_key_size: d.nginx_key_size,
        on_change: d.on_change.clone(),
        haproxy_sockets: d.haproxy_sockets.clone(),
        verify_tls: d.verify_tls.clone(),
        memcached_limits: Limits {
            max_connections: d.memcached_max_connections,
            max_connections_per_peer: d.memcached_max_connections_per_peer,
            request_timeout: d.memcached_request_timeout,
            ..Limits::default()
        },
        memcached_access,
        nghttpx_cipher: d.nghttpx_cipher,
    }
}

/// Before anything is written: opens the key directory (creating it 0700 if absent) and checks
/// through the handle that it is memory-backed, ours and private (`KeyDir::open`); then hardens
/// the process and logs the settings' warnings.
pub(crate) fn prepare_key_dir(d: &DeliverySettings, schedule: &Schedule) -> anyhow::Result<KeyDir> {
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
pub(crate) struct Host {
    /// The memcached endpoints, bound (so that address errors surface before anything runs).
    pub(crate) listeners: Vec<Listener>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Also served on the metrics endpoint, if asked.
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) options: HostOptions,
}

/// Who may use the memcached unix sockets. The group is resolved once, before anything is
/// written: an unknown name stops the start.
pub(crate) fn memcached_access(d: &DeliverySettings) -> anyhow::Result<Access> {
    Ok(match &d.memcached_group {
        Some(g) => Access::with_group(g).with_context(|| format!("--memcached-group {g}"))?,
        None => Access::owner(),
    })
}

pub(crate) async fn start_host(
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
    start_metrics(
        d.metrics.as_deref(),
        d.metrics_allow_remote,
        &metrics,
        &clock,
    )
    .await?;
    Ok(Host {
        listeners,
        clock,
        metrics,
        options: host,
    })
}

pub(crate) fn clock_and_metrics(offset_ms: i64) -> (Arc<dyn Clock>, Arc<Metrics>) {
    (
        Arc::new(SystemClock::with_offset_ms(offset_ms)),
        Metrics::new(),
    )
}

pub(crate) async fn start_metrics(
    addr: Option<&str>,
    allow_remote: bool,
    m: &Arc<Metrics>,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<()> {
    if let Some(addr) = addr {
        let l = metrics::bind(addr, allow_remote).await?;
        let at = l
            .local_addr()
            .map_or_else(|_| addr.to_owned(), |a| a.to_string());
        info!("metrics on http://{at}/metrics, status on http://{at}/status, health on http://{at}/healthz");
        tokio::spawn(metrics::serve(
            l,
            m.clone(),
            clock.clone(),
            std::future::pending(),
        ));
    }
    Ok(())
}

/// Locks memory, refuses core dumps, makes the process not dumpable, raises the open-file limit;
/// says what could not be done.
pub(crate) fn harden() {
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
