//! Flags over the config file over defaults, into typed settings. Pure: nothing here writes a
//! file, hardens the process, binds a socket or logs; what the machine must tell (the working
//! directory, the default key directory) comes in as a [`Place`], and warnings go out as values.
//! `main` does the side effects once, from these settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use stek::agent::verify::Target;
use stek::config::FileConfig;
use stek::duration;
use stek::memcached::{Limits, NghttpxCipher};
use stek::sink::{self, NginxKeySize, SinkKind};
use stek::store::StoreAccess;
use stek_core::{GeneratorPublicKey, GroupPublicKey, Schedule};

use crate::cli::{
    check_lifetime, check_period, check_request_timeout, parse_group, AgentArgs, GeneratorArgs,
    ScheduleArgs, SinkArgs, StoreAccessArgs, UpArgs,
};

/// The period when neither a flag nor the file gives one.
const DEFAULT_PERIOD: Duration = Duration::from_secs(3600);
/// The lifetime when neither a flag nor the file gives one.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(18 * 3600);
/// The group of `stek up` when neither a flag nor the file gives one.
const DEFAULT_GROUP: &str = "default";

/// What the merge needs to know about the machine, read by the caller.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    /// The working directory a relative `--dir` is taken against, or why it could not be read.
    pub(crate) cwd: Result<PathBuf, String>,
    /// The default key directory (`files::default_dir()`), if a candidate is memory-backed.
    pub(crate) default_dir: Option<PathBuf>,
}

/// How `stek up` and `stek agent` hand keys to TLS servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliverySettings {
    /// The key directory, absolute (not yet checked to be memory-backed, nor created).
    pub(crate) dir: PathBuf,
    /// Whether `dir` may lie on a persistent file system.
    pub(crate) allow_persistent: bool,
    /// Which key files to write.
    pub(crate) sinks: Vec<SinkKind>,
    /// The size (and bytes) of the nginx key files.
    pub(crate) nginx_key_size: NginxKeySize,
    /// Memcached-protocol addresses to serve (empty: none).
    pub(crate) memcached: Vec<String>,
    /// Whether `memcached` may hold non-loopback addresses.
    pub(crate) memcached_allow_remote: bool,
    /// Most concurrent memcached connections.
    pub(crate) memcached_max_connections: usize,
    /// Most concurrent memcached connections of one peer.
    pub(crate) memcached_max_connections_per_peer: usize,
    /// How long one memcached request (and the reading of its reply) may take.
    pub(crate) memcached_request_timeout: Duration,
    /// The group (name or gid, resolved at start) whose members may use the unix sockets.
    pub(crate) memcached_group: Option<String>,
    /// The directory stek makes for the default socket when a group is given (a sibling of
    /// `dir`, which the group cannot traverse).
    pub(crate) memcached_socket_dir: Option<PathBuf>,
    /// The layout of the keys served to nghttpx.
    pub(crate) nghttpx_cipher: NghttpxCipher,
    /// The command run after each change of the files.
    pub(crate) on_change: Option<String>,
    /// HAProxy admin sockets to push keys to.
    pub(crate) haproxy_sockets: Vec<PathBuf>,
    /// The TLS servers whose served key is checked (`--verify-tls`).
    pub(crate) verify_tls: Vec<Target>,
    /// Where to serve metrics and status.
    pub(crate) metrics: Option<String>,
    /// Whether `metrics` may be a non-loopback address.
    pub(crate) metrics_allow_remote: bool,
}

/// `stek up`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpSettings {
    pub(crate) schedule: Schedule,
    pub(crate) group: String,
    pub(crate) delivery: DeliverySettings,
    pub(crate) clock_offset_ms: i64,
}

/// `stek agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentSettings {
    pub(crate) store: String,
    pub(crate) store_access: StoreAccess,
    pub(crate) group: String,
    /// The group identity file (read when the agent starts).
    pub(crate) identity: PathBuf,
    pub(crate) trusted: Vec<GeneratorPublicKey>,
    pub(crate) max_stale: u64,
    pub(crate) schedule: Schedule,
    pub(crate) delivery: DeliverySettings,
    pub(crate) clock_offset_ms: i64,
}

/// `stek generator`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GeneratorSettings {
    pub(crate) store: String,
    pub(crate) store_access: StoreAccess,
    /// The signing key file (read when the generator starts).
    pub(crate) signing_key: PathBuf,
    /// At least one.
    pub(crate) groups: Vec<GroupSettings>,
    /// The peer generators whose records it expects (`--trust`; its own key is added when the
    /// plans are made). Records of other generators are reported, never replaced.
    pub(crate) trusted: Vec<GeneratorPublicKey>,
    pub(crate) metrics: Option<String>,
    pub(crate) metrics_allow_remote: bool,
    pub(crate) clock_offset_ms: i64,
}

/// One group a generator serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupSettings {
    pub(crate) name: String,
    pub(crate) schedule: Schedule,
    /// At least one.
    pub(crate) recipients: Vec<GroupPublicKey>,
}

/// A duration from the command line, else the config file (checked, naming `key`), else the
/// default.
fn pick_duration(
    flag: Option<Duration>,
    file: Option<Duration>,
    key: &str,
    check: fn(Duration) -> Result<Duration, String>,
    default: Duration,
) -> anyhow::Result<Duration> {
    match (flag, file) {
        (Some(d), _) => Ok(d),
        (None, Some(d)) => check(d).map_err(|e| anyhow!("config file: {key}: {e}")),
        (None, None) => Ok(default),
    }
}

/// A schedule: the flags' period and lifetime, else the file's, else `default`'s.
fn schedule_with(
    flags: &ScheduleArgs,
    file: (Option<Duration>, Option<Duration>),
    default: &Schedule,
) -> anyhow::Result<Schedule> {
    let period = pick_duration(
        flags.period,
        file.0,
        "period",
        check_period,
        default.period(),
    )?;
    let lifetime = pick_duration(
        flags.lifetime,
        file.1,
        "lifetime",
        check_lifetime,
        default.lifetime(),
    )?;
    Ok(Schedule::new(period, lifetime)?)
}

/// The schedule of up, agent and generator: flags, else the file, else 1h and 18h.
pub(crate) fn schedule(flags: &ScheduleArgs, file: &FileConfig) -> anyhow::Result<Schedule> {
    let default = Schedule::new(DEFAULT_PERIOD, DEFAULT_LIFETIME)?;
    schedule_with(flags, (file.period, file.lifetime), &default)
}

/// What one key of the window costs, measured with `stek up --period 1s` (every sink, the
/// memcached socket) at lifetimes of 10s and 1000s, the difference over 990 keys (README,
/// `stek up`): locked memory (`VmLck`, all resident: the key, its per-format
/// derivations in the ring, the memcached table's values, which hold every key of the ring in
/// five formats) and tmpfs written (`du`: an 80-byte nginx key file takes a whole page, plus
/// its line in tickets.conf). Stated in the refusal so the operator can weigh the override.
const KEY_LOCKED_BYTES: u64 = 1345;
const KEY_TMPFS_BYTES: u64 = 4390;

/// Whether the flags or the file allow a window above `MAX_WINDOW_KEYS`.
fn allow_large_window(flags: &ScheduleArgs, file: &FileConfig) -> bool {
    flags.allow_large_window || file.allow_large_window == Some(true)
}

/// `schedule` if its window is within `MAX_WINDOW_KEYS` or the operator allowed more; else the
/// refusal, one line with the window, its cost and the way out. `group` names a generator's
/// group.
fn bounded(schedule: Schedule, allow: bool, group: Option<&str>) -> anyhow::Result<Schedule> {
    let Err(e) = schedule.check_window() else {
        return Ok(schedule);
    };
    if allow {
        return Ok(schedule);
    }
    let keys = u64::try_from(schedule.window_len()).unwrap_or(u64::MAX);
    let kib = |bytes: u64| bytes as f64 / 1024.0;
    let mib = |per_key: u64| keys.saturating_mul(per_key).div_ceil(1 << 20);
    let whose = group.map(|g| format!("group {g}: ")).unwrap_or_default();
    bail!(
        "{whose}period {} and lifetime {}: {e}; each key costs about {:.1} KiB of locked memory and {:.1} KiB of tmpfs (here about {} MiB and {} MiB); choose a longer --period or a shorter --lifetime, or pass --allow-large-window (allow_large_window = true in --config) to accept the cost",
        duration::format(schedule.period()),
        duration::format(schedule.lifetime()),
        kib(KEY_LOCKED_BYTES),
        kib(KEY_TMPFS_BYTES),
        mib(KEY_LOCKED_BYTES),
        mib(KEY_TMPFS_BYTES),
    )
}

/// A group name from the file, checked.
fn file_group(name: &str) -> anyhow::Result<String> {
    parse_group(name).map_err(anyhow::Error::msg)
}

/// A list from the command line if it has any item, else the file's, else empty.
fn pick_list<T: Clone>(flag: &[T], file: Option<&Vec<T>>) -> Vec<T> {
    if flag.is_empty() {
        file.cloned().unwrap_or_default()
    } else {
        flag.to_vec()
    }
}

/// The delivery settings shared by up and agent.
pub(crate) fn delivery(
    a: &SinkArgs,
    c: &FileConfig,
    place: &Place,
) -> anyhow::Result<DeliverySettings> {
    let dir = match a.dir.as_ref().or(c.dir.as_ref()) {
        Some(d) => d.clone(),
        None => place.default_dir.clone().context(
            "none of /run/stek, $XDG_RUNTIME_DIR/stek, /dev/shm/stek is on tmpfs or ramfs; pass --dir on a memory-backed file system",
        )?,
    };
    let dir = if dir.is_absolute() {
        dir
    } else {
        match &place.cwd {
            Ok(cwd) => cwd.join(dir),
            Err(e) => bail!("cannot read the current directory: {e}"),
        }
    };
    let sinks = if !a.sinks.is_empty() {
        a.sinks.iter().map(|s| SinkKind::from(*s)).collect()
    } else if let Some(kinds) = &c.sinks {
        kinds.clone()
    } else {
        vec![SinkKind::Nginx, SinkKind::Haproxy, SinkKind::Apache]
    };
    let haproxy_sockets = pick_list(&a.haproxy_socket, c.haproxy_socket.as_ref());
    if !haproxy_sockets.is_empty() {
        check_haproxy_keys_path(&dir)?;
    }
    let verify_tls = pick_list(&a.verify_tls, c.verify_tls.as_ref())
        .iter()
        .map(|t| Target::parse(t.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::from)?;
    // --memcached beats the file's no_memcached, --no-memcached the file's addresses.
    let mut memcached = pick_list(&a.memcached, c.memcached.as_ref());
    let no_memcached = a.no_memcached || (a.memcached.is_empty() && c.no_memcached == Some(true));
    let memcached_group = a
        .memcached_group
        .clone()
        .or_else(|| c.memcached_group.clone());
    if memcached_group
        .as_deref()
        .is_some_and(|g| g.trim().is_empty())
    {
        bail!("--memcached-group: the group name is empty");
    }
    let mut memcached_socket_dir = None;
    if no_memcached {
        memcached.clear();
    } else if memcached.is_empty() {
        if memcached_group.is_some() {
            let socket_dir = memcached_socket_dir_for(&dir)?;
            memcached.push(socket_dir.join("memcached.sock").display().to_string());
            memcached_socket_dir = Some(socket_dir);
        } else {
            memcached.push(dir.join("memcached.sock").display().to_string());
        }
    }
    let limits = memcached_limits(a, c)?;
    Ok(DeliverySettings {
        allow_persistent: a.allow_persistent_dir || c.allow_persistent_dir.unwrap_or(false),
        sinks,
        nginx_key_size: a.nginx_key_size.or(c.nginx_key_size).unwrap_or_default(),
        memcached,
        memcached_allow_remote: a.memcached_allow_remote
            || c.memcached_allow_remote.unwrap_or(false),
        memcached_max_connections: limits.max_connections,
        memcached_max_connections_per_peer: limits.max_connections_per_peer,
        memcached_request_timeout: limits.request_timeout,
        memcached_group,
        memcached_socket_dir,
        nghttpx_cipher: a.nghttpx_cipher.or(c.nghttpx_cipher).unwrap_or_default(),
        on_change: a.on_change.clone().or_else(|| c.on_change.clone()),
        haproxy_sockets,
        verify_tls,
        metrics: a.metrics.clone().or_else(|| c.metrics.clone()),
        metrics_allow_remote: a.metrics_allow_remote || c.metrics_allow_remote.unwrap_or(false),
        dir,
    })
}

/// The memcached limits from the flags, else the file, else the defaults; checked
/// ([`Limits::validate`]) so that a nonsensical one stops the start with one line.
fn memcached_limits(a: &SinkArgs, c: &FileConfig) -> anyhow::Result<Limits> {
    let max_connections = a
        .memcached_max_connections
        .or(c.memcached_max_connections)
        .unwrap_or(Limits::default().max_connections);
    let per_peer = a
        .memcached_max_connections_per_peer
        .or(c.memcached_max_connections_per_peer);
    if let Some(p) = per_peer.filter(|p| *p > max_connections) {
        bail!(
            "memcached max connections per peer ({p}) is more than max connections ({max_connections})"
        );
    }
    let limits = Limits {
        max_connections,
        max_connections_per_peer: per_peer
            .unwrap_or_else(|| Limits::default_per_peer(max_connections)),
        request_timeout: pick_duration(
            a.memcached_request_timeout,
            c.memcached_request_timeout,
            "memcached_request_timeout",
            check_request_timeout,
            Limits::default().request_timeout,
        )?,
        ..Limits::default()
    };
    limits.validate()?;
    Ok(limits)
}

/// Where the default socket goes when a group must reach it: `DIR-memcached/` next to DIR
/// (DIR is 0700; a path inside it cannot be reached by the group whatever its own mode).
fn memcached_socket_dir_for(dir: &Path) -> anyhow::Result<PathBuf> {
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => {
            let mut name = name.to_os_string();
            name.push("-memcached");
            Ok(parent.join(name))
        }
        _ => bail!(
            "--memcached-group: the key directory {} has no parent to put the socket directory in; pass --memcached PATH",
            dir.display()
        ),
    }
}

/// HAProxy's runtime API names the keys file on its command line: DIR must allow that.
fn check_haproxy_keys_path(dir: &Path) -> anyhow::Result<()> {
    let keys = sink::haproxy_keys_path(dir);
    sink::haproxy_runtime::check_cli_word(&keys.display().to_string())
        .map_err(|e| anyhow!("--haproxy-socket: the keys file {e}; choose another --dir"))
}

/// Refuses sinks the schedule cannot serve: lighttpd looks at its key file once every 64 s
/// (`sink::lighttpd::CHECK_EVERY`), so with a shorter period it would miss keys, and with
/// exactly 64 s every boundary could fall between the write and the check.
fn check_sinks(schedule: &Schedule, d: &DeliverySettings) -> anyhow::Result<()> {
    let min = sink::lighttpd::MIN_PERIOD;
    if d.sinks.contains(&SinkKind::Lighttpd) && schedule.period() < min {
        bail!(
            "--sinks lighttpd needs a period of at least {} (got --period {}): lighttpd looks at its key file only every 64s (src/mod_openssl.c) and must load each slot's key before the slot begins",
            duration::format(min),
            duration::format(schedule.period())
        );
    }
    Ok(())
}

/// What the operator should know about these settings, to be logged as warnings.
pub(crate) fn warnings(schedule: &Schedule, d: &DeliverySettings) -> Vec<String> {
    let mut out = Vec::new();
    if d.sinks.contains(&SinkKind::Apache) {
        out.push(format!(
            "Apache holds one key: its tickets stop resuming at every rotation (every {}); use nginx, HAProxy or a longer period if that matters",
            duration::format(schedule.period())
        ));
    }
    for addr in &d.memcached {
        if !addr.contains('/') {
            out.push(format!(
                "memcached on {addr} (TCP): every local user can connect and read the ticket keys; serve them on a unix socket with --memcached-group instead"
            ));
        } else if d.memcached_group.is_some() && Path::new(addr).starts_with(&d.dir) {
            out.push(format!(
                "memcached socket {addr} is inside {} (mode 0700): --memcached-group cannot reach it; leave --memcached out for the default socket directory",
                d.dir.display()
            ));
        }
    }
    if let Some(g) = &d.memcached_group {
        if !d.memcached.iter().any(|a| a.contains('/')) {
            out.push(format!(
                "--memcached-group {g} applies to unix sockets only, and no memcached unix socket is served"
            ));
        }
    }
    let haproxy = d.sinks.contains(&SinkKind::Haproxy) || !d.haproxy_sockets.is_empty();
    if haproxy && schedule.lifetime() > schedule.period() {
        out.push(format!(
            "HAProxy holds 3 keys: its tickets stop resuming 1 to 2 periods after they were issued ({} to {}), not after the lifetime of {}; on HAProxy hosts choose --lifetime <= --period",
            duration::format(schedule.period()),
            duration::format(schedule.period() * 2),
            duration::format(schedule.lifetime())
        ));
    }
    let h2o_cap = sink::h2o::SESSION_TIMEOUT;
    if d.sinks.contains(&SinkKind::H2o) && schedule.lifetime() > h2o_cap {
        out.push(format!(
            "h2o keeps a session at most {} (OpenSSL's default timeout, the lifetime hint of its tickets): its tickets resume for at most {}, not for the lifetime of {}",
            duration::format(h2o_cap),
            duration::format(h2o_cap),
            duration::format(schedule.lifetime())
        ));
    }
    if d.sinks.contains(&SinkKind::Lighttpd) {
        let (min, max) = sink::lighttpd::ticket_life(schedule);
        if min < schedule.lifetime() {
            out.push(format!(
                "lighttpd holds 3 keys and keeps a session at most {}: its tickets resume for {} to {} after they were issued, not for the lifetime of {}; on lighttpd hosts choose --lifetime <= {}",
                duration::format(sink::lighttpd::SESSION_TIMEOUT),
                duration::format(min),
                duration::format(max),
                duration::format(schedule.lifetime()),
                duration::format(min)
            ));
        }
    }
    out
}

/// `stek up`'s settings.
pub(crate) fn up(a: &UpArgs, c: &FileConfig, place: &Place) -> anyhow::Result<UpSettings> {
    let schedule = bounded(
        schedule(&a.schedule, c)?,
        allow_large_window(&a.schedule, c),
        None,
    )?;
    let group = match (&a.group, &c.group) {
        (Some(g), _) => g.clone(),
        (None, Some(g)) => file_group(g)?,
        (None, None) => DEFAULT_GROUP.to_owned(),
    };
    let delivery = delivery(&a.sink, c, place)?;
    check_sinks(&schedule, &delivery)?;
    Ok(UpSettings {
        schedule,
        group,
        delivery,
        clock_offset_ms: a.process.clock_offset_ms,
    })
}

/// The store's TLS and credentials: each flag, else the file's key; checked against `url`.
fn store_access(a: &StoreAccessArgs, c: &FileConfig, url: &str) -> anyhow::Result<StoreAccess> {
    let access = StoreAccess {
        ca: a.store_ca.clone().or_else(|| c.store_ca.clone()),
        cert: a.store_cert.clone().or_else(|| c.store_cert.clone()),
        key: a.store_key.clone().or_else(|| c.store_key.clone()),
        user: a.store_user.clone().or_else(|| c.store_user.clone()),
        password_file: a
            .store_password_file
            .clone()
            .or_else(|| c.store_password_file.clone()),
    };
    access.check(url)?;
    Ok(access)
}

/// `stek agent`'s settings.
pub(crate) fn agent(a: &AgentArgs, c: &FileConfig, place: &Place) -> anyhow::Result<AgentSettings> {
    let store = a
        .store
        .clone()
        .or_else(|| c.store.clone())
        .context("--store is required")?;
    let store_access = store_access(&a.store_access, c, &store)?;
    let group = match (&a.group, &c.group) {
        (Some(g), _) => g.clone(),
        (None, Some(g)) => file_group(g)?,
        (None, None) => bail!("--group is required"),
    };
    let identity = a
        .identity
        .clone()
        .or_else(|| c.identity.clone())
        .context("--identity is required")?;
    let trusted = pick_list(&a.trust, c.trust.as_ref())
        .iter()
        .map(|t| GeneratorPublicKey::parse(t).with_context(|| format!("--trust {t:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if trusted.is_empty() {
        bail!("--trust is required: the public key(s) of the generator(s) whose records to accept");
    }
    let schedule = bounded(
        schedule(&a.schedule, c)?,
        allow_large_window(&a.schedule, c),
        None,
    )?;
    let delivery = delivery(&a.sink, c, place)?;
    check_sinks(&schedule, &delivery)?;
    Ok(AgentSettings {
        store,
        store_access,
        group,
        identity,
        trusted,
        max_stale: a.max_stale.or(c.max_stale).unwrap_or(1),
        schedule,
        delivery,
        clock_offset_ms: a.process.clock_offset_ms,
    })
}

/// `stek generator`'s settings. The groups are `--group NAME=PUB[,PUB...]` (with the schedule of
/// the flags and file), else the file's `[[groups]]`, each with its own period and lifetime if
/// it gives them.
pub(crate) fn generator(a: &GeneratorArgs, c: &FileConfig) -> anyhow::Result<GeneratorSettings> {
    let store = a
        .store
        .clone()
        .or_else(|| c.store.clone())
        .context("--store is required")?;
    let store_access = store_access(&a.store_access, c, &store)?;
    let signing_key = a
        .signing_key
        .clone()
        .or_else(|| c.signing_key.clone())
        .context("--signing-key is required")?;
    let default = schedule(&a.schedule, c)?;
    let allow = allow_large_window(&a.schedule, c);
    let mut groups = Vec::new();
    for spec in &a.groups {
        let (name, recipients) = parse_group_spec(spec)?;
        let schedule = bounded(default, allow, Some(&name))?;
        groups.push(GroupSettings {
            name,
            schedule,
            recipients,
        });
    }
    if a.groups.is_empty() {
        for g in c.groups.iter().flatten() {
            let name = file_group(&g.name)?;
            let none = ScheduleArgs::default();
            let schedule = bounded(
                schedule_with(&none, (g.period, g.lifetime), &default)?,
                allow,
                Some(&name),
            )?;
            let recipients = parse_recipients(&name, g.recipients.iter().map(String::as_str))?;
            groups.push(GroupSettings {
                name,
                schedule,
                recipients,
            });
        }
    }
    if groups.is_empty() {
        bail!("no group to serve: give --group NAME=PUB[,PUB...] (or [[groups]] in --config)");
    }
    let trusted = pick_list(&a.trust, c.trust.as_ref())
        .iter()
        .map(|t| GeneratorPublicKey::parse(t).with_context(|| format!("--trust {t:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(GeneratorSettings {
        store,
        store_access,
        signing_key,
        groups,
        trusted,
        metrics: a.metrics.clone().or_else(|| c.metrics.clone()),
        metrics_allow_remote: a.metrics_allow_remote || c.metrics_allow_remote.unwrap_or(false),
        clock_offset_ms: a.process.clock_offset_ms,
    })
}

/// `--group NAME=PUB[,PUB...]` of the generator.
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use stek_core::{GeneratorKey, GroupIdentity};

    use super::*;
    use crate::cli::{Cli, Command};

    fn command(args: &[&str]) -> Command {
        let argv = std::iter::once("stek").chain(args.iter().copied());
        Cli::try_parse_from(argv).expect("valid flags").command
    }

    fn up_args(args: &[&str]) -> UpArgs {
        match command(&[&["up"], args].concat()) {
            Command::Up(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(text).expect("valid config")
    }

    fn place() -> Place {
        Place {
            cwd: Ok(PathBuf::from("/work")),
            default_dir: Some(PathBuf::from("/run/stek")),
        }
    }

    fn up(args: &[&str], config: &str) -> anyhow::Result<UpSettings> {
        super::up(&up_args(args), &file(config), &place())
    }

    fn err<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    const H: u64 = 3600;

    #[test]
    fn defaults() {
        let s = up(&[], "").unwrap();
        assert_eq!(
            s.schedule,
            Schedule::new(DEFAULT_PERIOD, DEFAULT_LIFETIME).unwrap()
        );
        assert_eq!(s.group, "default");
        assert_eq!(s.clock_offset_ms, 0);
        assert_eq!(
            s.delivery,
            DeliverySettings {
                dir: PathBuf::from("/run/stek"),
                allow_persistent: false,
                sinks: vec![SinkKind::Nginx, SinkKind::Haproxy, SinkKind::Apache],
                nginx_key_size: NginxKeySize::Bytes80,
                memcached: vec!["/run/stek/memcached.sock".to_owned()],
                memcached_allow_remote: false,
                memcached_max_connections: Limits::default().max_connections,
                memcached_max_connections_per_peer: 1024,
                memcached_request_timeout: Duration::from_secs(5),
                memcached_group: None,
                memcached_socket_dir: None,
                nghttpx_cipher: NghttpxCipher::Aes128Cbc,
                on_change: None,
                haproxy_sockets: vec![],
                verify_tls: vec![],
                metrics: None,
                metrics_allow_remote: false,
            }
        );
    }

    #[test]
    fn verify_tls_flag_beats_file_and_a_bad_address_is_one_line() {
        let file = "verify_tls = [\"127.0.0.1:443\", \"www.example.com@127.0.0.1:8443\"]";
        let d = up(&[], file).unwrap().delivery;
        let given: Vec<String> = d.verify_tls.iter().map(ToString::to_string).collect();
        assert_eq!(given, ["127.0.0.1:443", "www.example.com@127.0.0.1:8443"]);
        let d = up(&["--verify-tls", "127.0.0.1:1,[::1]:2"], file)
            .unwrap()
            .delivery;
        let given: Vec<String> = d.verify_tls.iter().map(ToString::to_string).collect();
        assert_eq!(given, ["127.0.0.1:1", "[::1]:2"]);
        assert_eq!(
            // (On the command line clap refuses it first: tests/cli.rs.)
            err(up(&[], "verify_tls = [\"127.0.0.1:x\"]")),
            "--verify-tls \"127.0.0.1:x\": bad port (expected [NAME@]HOST:PORT, e.g. 127.0.0.1:443 or www.example.com@127.0.0.1:443)"
        );
        let e = err(up(&[], "verify_tls = [\"10.0.0.1@h:1\"]"));
        assert_eq!(
            e,
            "--verify-tls \"10.0.0.1@h:1\": the server name before '@' must be a DNS name"
        );
    }

    #[test]
    fn durations_flag_beats_file_beats_default() {
        let file = "period = \"2h\"\nlifetime = \"3h\"";
        let s = up(&["--period", "30m"], file).unwrap().schedule;
        assert_eq!(s.period(), Duration::from_secs(1800));
        assert_eq!(s.lifetime(), Duration::from_secs(3 * H));
        let s = up(&["--lifetime", "4s"], file).unwrap().schedule;
        assert_eq!(s.period(), Duration::from_secs(2 * H));
        assert_eq!(s.lifetime(), Duration::from_secs(4));
        let s = up(&[], "period = \"2h\"").unwrap().schedule;
        assert_eq!(s.period(), Duration::from_secs(2 * H));
        assert_eq!(s.lifetime(), DEFAULT_LIFETIME);
    }

    #[test]
    fn lists_flag_beats_file_beats_default() {
        let file = "sinks = [\"apache\"]\nmemcached = [\"127.0.0.1:11211\"]\n\
                    haproxy_socket = [\"/run/haproxy/a.sock\"]";
        let d = up(&["--sinks", "nginx,haproxy"], file).unwrap().delivery;
        assert_eq!(d.sinks, [SinkKind::Nginx, SinkKind::Haproxy]);
        assert_eq!(d.memcached, ["127.0.0.1:11211"]);
        assert_eq!(d.haproxy_sockets, [PathBuf::from("/run/haproxy/a.sock")]);
        let d = up(
            &["--memcached", "[::1]:11211", "--memcached", "m.sock"],
            file,
        )
        .unwrap()
        .delivery;
        assert_eq!(d.sinks, [SinkKind::Apache]);
        assert_eq!(d.memcached, ["[::1]:11211", "m.sock"]);
        let d = up(&["--haproxy-socket", "/h.sock"], file).unwrap().delivery;
        assert_eq!(d.haproxy_sockets, [PathBuf::from("/h.sock")]);
    }

    #[test]
    fn nginx_key_size_flag_beats_file_beats_80() {
        let size = |args: &[&str], file: &str| up(args, file).unwrap().delivery.nginx_key_size;
        assert_eq!(size(&[], ""), NginxKeySize::Bytes80);
        assert_eq!(size(&[], "nginx_key_size = 48"), NginxKeySize::Bytes48);
        assert_eq!(
            size(&["--nginx-key-size", "80"], "nginx_key_size = 48"),
            NginxKeySize::Bytes80
        );
        assert_eq!(size(&["--nginx-key-size", "48"], ""), NginxKeySize::Bytes48);
        let g = GeneratorKey::generate().unwrap().public().to_string();
        let minimal = ["--store", "redis://x", "--group", "web", "--identity", "id"];
        let a = agent(
            &[&minimal[..], &["--nginx-key-size", "48"]].concat(),
            &format!("trust = [\"{g}\"]"),
        )
        .unwrap();
        assert_eq!(a.delivery.nginx_key_size, NginxKeySize::Bytes48);
        for bad in ["64", "0", "x", "480"] {
            let argv = ["stek", "up", "--nginx-key-size", bad];
            let e = Cli::try_parse_from(argv).unwrap_err().to_string();
            assert!(e.contains("48 or 80"), "{bad}: {e}");
        }
    }

    #[test]
    fn nghttpx_cipher_flag_beats_file_beats_default() {
        let file = "nghttpx_cipher = \"aes-256-cbc\"";
        assert_eq!(
            up(&[], file).unwrap().delivery.nghttpx_cipher,
            NghttpxCipher::Aes256Cbc
        );
        let d = up(&["--nghttpx-cipher", "aes-128-cbc"], file)
            .unwrap()
            .delivery;
        assert_eq!(d.nghttpx_cipher, NghttpxCipher::Aes128Cbc);
        assert_eq!(
            up(&[], "").unwrap().delivery.nghttpx_cipher,
            NghttpxCipher::Aes128Cbc
        );
    }

    #[test]
    fn bools_flag_or_file() {
        let d = up(&[], "").unwrap().delivery;
        assert!(!d.allow_persistent && !d.memcached_allow_remote);
        let d = up(
            &[],
            "allow_persistent_dir = true\nmemcached_allow_remote = true",
        )
        .unwrap()
        .delivery;
        assert!(d.allow_persistent && d.memcached_allow_remote);
        let d = up(
            &["--allow-persistent-dir", "--memcached-allow-remote"],
            "allow_persistent_dir = false\nmemcached_allow_remote = false",
        )
        .unwrap()
        .delivery;
        assert!(d.allow_persistent && d.memcached_allow_remote);
    }

    #[test]
    fn scalars_flag_beats_file_beats_default() {
        let file = "on_change = \"apache2ctl graceful\"\nmetrics = \"127.0.0.1:9155\"\n\
                    memcached_max_connections = 10\ngroup = \"web\"";
        let s = up(&[], file).unwrap();
        assert_eq!(s.group, "web");
        assert_eq!(s.delivery.on_change.as_deref(), Some("apache2ctl graceful"));
        assert_eq!(s.delivery.metrics.as_deref(), Some("127.0.0.1:9155"));
        assert_eq!(s.delivery.memcached_max_connections, 10);
        let s = up(
            &[
                "--group",
                "api",
                "--on-change",
                "nginx -s reload",
                "--metrics",
                "127.0.0.1:1",
                "--memcached-max-connections",
                "20",
            ],
            file,
        )
        .unwrap();
        assert_eq!(s.group, "api");
        assert_eq!(s.delivery.on_change.as_deref(), Some("nginx -s reload"));
        assert_eq!(s.delivery.metrics.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(s.delivery.memcached_max_connections, 20);
    }

    #[test]
    fn dir_flag_beats_file_beats_default_and_is_made_absolute() {
        let file = "dir = \"/dev/shm/from-file\"";
        assert_eq!(
            up(&["--dir", "/dev/shm/flag"], file).unwrap().delivery.dir,
            Path::new("/dev/shm/flag")
        );
        assert_eq!(
            up(&[], file).unwrap().delivery.dir,
            Path::new("/dev/shm/from-file")
        );
        assert_eq!(up(&[], "").unwrap().delivery.dir, Path::new("/run/stek"));
        let d = up(&["--dir", "keys"], "").unwrap().delivery;
        assert_eq!(d.dir, Path::new("/work/keys"));
        assert_eq!(d.memcached, ["/work/keys/memcached.sock"]);
        let d = up(&[], "dir = \"rel\"").unwrap().delivery;
        assert_eq!(d.dir, Path::new("/work/rel"));
    }

    #[test]
    fn the_machine_is_asked_only_when_needed() {
        let lost = Place {
            cwd: Err("No such file or directory (os error 2)".into()),
            default_dir: None,
        };
        let a = up_args(&["--dir", "/dev/shm/k"]);
        assert!(super::up(&a, &file(""), &lost).is_ok());
        let e = err(super::up(&up_args(&["--dir", "k"]), &file(""), &lost));
        assert_eq!(
            e,
            "cannot read the current directory: No such file or directory (os error 2)"
        );
        let e = err(super::up(&up_args(&[]), &file(""), &lost));
        assert!(
            e.starts_with(
                "none of /run/stek, $XDG_RUNTIME_DIR/stek, /dev/shm/stek is on tmpfs or ramfs"
            ),
            "{e}"
        );
    }

    #[test]
    fn memcached_default_socket_and_no_memcached() {
        let d = up(&["--dir", "/dev/shm/k"], "").unwrap().delivery;
        assert_eq!(d.memcached, ["/dev/shm/k/memcached.sock"]);
        // --no-memcached clears the file's addresses and the default.
        let file = "memcached = [\"127.0.0.1:11211\"]";
        assert!(up(&["--no-memcached"], file)
            .unwrap()
            .delivery
            .memcached
            .is_empty());
        assert!(up(&["--no-memcached"], "")
            .unwrap()
            .delivery
            .memcached
            .is_empty());
        // The file's no_memcached clears its own addresses and the default...
        let file = "memcached = [\"127.0.0.1:11211\"]\nno_memcached = true";
        assert!(up(&[], file).unwrap().delivery.memcached.is_empty());
        // ...but not addresses given as flags.
        let d = up(&["--memcached", "127.0.0.1:1"], file).unwrap().delivery;
        assert_eq!(d.memcached, ["127.0.0.1:1"]);
        let d = up(&[], "no_memcached = false").unwrap().delivery;
        assert_eq!(d.memcached, ["/run/stek/memcached.sock"]);
    }

    #[test]
    fn a_large_window_is_refused_unless_allowed() {
        let e = err(up(&["--period", "1s", "--lifetime", "7d"], ""));
        assert_eq!(
            e,
            "period 1s and lifetime 7d: a window of 604802 keys (604800 past + current + next) exceeds the bound of 1000 keys; each key costs about 1.3 KiB of locked memory and 4.3 KiB of tmpfs (here about 776 MiB and 2533 MiB); choose a longer --period or a shorter --lifetime, or pass --allow-large-window (allow_large_window = true in --config) to accept the cost"
        );
        // The bound itself: 998 past + current + next = 1000 keys pass, 1001 do not.
        assert!(up(&["--period", "1s", "--lifetime", "998s"], "").is_ok());
        assert!(err(up(&["--period", "1s", "--lifetime", "999s"], ""))
            .starts_with("period 1s and lifetime 16m39s: a window of 1001 keys"));
        // The same schedule from the file, refused the same way.
        let file = "period = \"1s\"\nlifetime = \"7d\"";
        assert!(err(up(&[], file)).contains("--allow-large-window"));
        // The flag or the file's key allows it; the flag wins over the file's false.
        let allowed = up(
            &["--period", "1s", "--lifetime", "7d", "--allow-large-window"],
            "",
        );
        assert_eq!(allowed.unwrap().schedule.window_len(), 604_802);
        assert!(up(&[], &format!("{file}\nallow_large_window = true")).is_ok());
        assert!(up(
            &["--allow-large-window"],
            &format!("{file}\nallow_large_window = false")
        )
        .is_ok());
        assert!(up(&[], &format!("{file}\nallow_large_window = false")).is_err());
    }

    #[test]
    fn bad_values_in_the_file_name_the_key() {
        for (config, want) in [
            ("period = \"0s\"", "config file: period: the period must be longer than zero"),
            ("period = \"8d\"", "config file: period: the period must be at most 7d: rotate at least weekly"),
            ("lifetime = \"0s\"", "config file: lifetime: the lifetime must be longer than zero"),
            ("lifetime = \"8d\"", "config file: lifetime: the lifetime must be at most 7d, the longest ticket lifetime TLS 1.3 allows (RFC 8446 4.6.1)"),
            ("group = \"a b\"", "invalid group name \"a b\": a group name is 1 to 64 letters, digits, '.', '_' or '-'"),
        ] {
            assert_eq!(err(up(&[], config)), want, "{config}");
        }
        // A flag replaces a bad file value without looking at it.
        assert!(up(&["--period", "1h"], "period = \"0s\"").is_ok());
    }

    #[test]
    fn the_haproxy_keys_path_must_fit_haproxys_command_line() {
        let e = err(up(
            &["--dir", "/dev/shm/a b", "--haproxy-socket", "/h.sock"],
            "",
        ));
        assert_eq!(
            e,
            "--haproxy-socket: the keys file \"/dev/shm/a b/haproxy/tickets.keys\" cannot be named on HAProxy's command line (spaces, ';', '\\' or non-ASCII characters); choose another --dir"
        );
        let e = err(up(
            &["--dir", "/dev/shm/a;b"],
            "haproxy_socket = [\"/h.sock\"]",
        ));
        assert!(e.starts_with("--haproxy-socket: the keys file"), "{e}");
        // Without a socket, such a directory is fine.
        assert!(up(&["--dir", "/dev/shm/a b"], "").is_ok());
        assert!(up(&["--dir", "/dev/shm/ok", "--haproxy-socket", "/h.sock"], "").is_ok());
    }

    #[test]
    fn warnings_depend_on_sinks_and_schedule() {
        let w = |args: &[&str]| {
            let s = up(args, "").unwrap();
            warnings(&s.schedule, &s.delivery)
        };
        assert_eq!(
            w(&["--sinks", "apache", "--period", "1h"]),
            ["Apache holds one key: its tickets stop resuming at every rotation (every 1h); use nginx, HAProxy or a longer period if that matters"]
        );
        assert_eq!(
            w(&["--sinks", "haproxy", "--period", "1h", "--lifetime", "18h"]),
            ["HAProxy holds 3 keys: its tickets stop resuming 1 to 2 periods after they were issued (1h to 2h), not after the lifetime of 18h; on HAProxy hosts choose --lifetime <= --period"]
        );
        assert!(w(&["--sinks", "haproxy", "--period", "1h", "--lifetime", "1h"]).is_empty());
        assert!(w(&["--sinks", "nginx"]).is_empty());
        // A HAProxy socket implies the HAProxy keys file.
        assert_eq!(
            w(&["--sinks", "nginx", "--haproxy-socket", "/h.sock"]).len(),
            1
        );
        assert_eq!(w(&[]).len(), 2);
    }

    #[test]
    fn lighttpd_needs_periods_above_64s_and_its_ticket_life_is_stated() {
        let e = err(up(
            &[
                "--sinks",
                "lighttpd",
                "--period",
                "64s",
                "--lifetime",
                "64s",
            ],
            "",
        ));
        assert_eq!(
            e,
            "--sinks lighttpd needs a period of at least 1m5s (got --period 1m4s): lighttpd looks at its key file only every 64s (src/mod_openssl.c) and must load each slot's key before the slot begins"
        );
        // From the file too, and for the agent.
        let file = "sinks = [\"lighttpd\"]";
        assert!(err(up(&["--period", "30s", "--lifetime", "1m"], file))
            .starts_with("--sinks lighttpd needs"));
        let g = GeneratorKey::generate().unwrap().public().to_string();
        let agent_args = [
            "--store",
            "redis://x",
            "--group",
            "web",
            "--identity",
            "id",
            "--trust",
            &g,
            "--sinks",
            "nginx,lighttpd",
            "--period",
            "10s",
            "--lifetime",
            "10s",
        ];
        assert!(err(agent(&agent_args, "")).starts_with("--sinks lighttpd needs"));
        // Other sinks take any period.
        assert!(up(
            &["--sinks", "h2o,nginx", "--period", "4s", "--lifetime", "8s"],
            ""
        )
        .is_ok());

        let w = |args: &[&str]| {
            let s = up(args, "").unwrap();
            warnings(&s.schedule, &s.delivery)
        };
        // L <= P: lighttpd honours the lifetime.
        assert!(w(&["--sinks", "lighttpd", "--period", "1h", "--lifetime", "1h"]).is_empty());
        assert!(w(&[
            "--sinks",
            "lighttpd",
            "--period",
            "65s",
            "--lifetime",
            "65s"
        ])
        .is_empty());
        // The defaults: 3 keys and OpenSSL's 2 h session timeout.
        let got = w(&["--sinks", "lighttpd"]);
        let (min, max) =
            sink::lighttpd::ticket_life(&Schedule::new(DEFAULT_PERIOD, DEFAULT_LIFETIME).unwrap());
        assert_eq!(
            got,
            [format!(
                "lighttpd holds 3 keys and keeps a session at most 2h: its tickets resume for {} to {} after they were issued, not for the lifetime of 18h; on lighttpd hosts choose --lifetime <= {}",
                duration::format(min),
                duration::format(max),
                duration::format(min)
            )]
        );
        assert!(got[0].contains("to 2h after"), "{got:?}");
        assert!(w(&["--sinks", "h2o", "--lifetime", "2h"]).is_empty());
        assert_eq!(
            w(&["--sinks", "h2o"]),
            ["h2o keeps a session at most 2h (OpenSSL's default timeout, the lifetime hint of its tickets): its tickets resume for at most 2h, not for the lifetime of 18h"]
        );
    }

    #[test]
    fn memcached_group_moves_the_default_socket_out_of_dir() {
        let d = up(&["--memcached-group", "www-data"], "").unwrap().delivery;
        assert_eq!(d.memcached_group.as_deref(), Some("www-data"));
        assert_eq!(d.memcached, ["/run/stek-memcached/memcached.sock"]);
        assert_eq!(
            d.memcached_socket_dir,
            Some(PathBuf::from("/run/stek-memcached"))
        );
        // From the file; an explicit socket is the operator's: no directory made.
        let d = up(
            &["--memcached", "/run/web/mc.sock"],
            "memcached_group = \"web\"",
        )
        .unwrap()
        .delivery;
        assert_eq!(d.memcached_group.as_deref(), Some("web"));
        assert_eq!(d.memcached_socket_dir, None);
        assert!(err(up(&["--memcached-group", " "], "")).contains("empty"));
        assert!(err(up(&["--dir", "/", "--memcached-group", "web"], "")).contains("no parent"));
    }

    #[test]
    fn memcached_warnings_name_what_others_can_reach() {
        let w = |args: &[&str]| {
            let s = up(&[&["--sinks", "nginx"], args].concat(), "").unwrap();
            warnings(&s.schedule, &s.delivery)
        };
        assert!(w(&[]).is_empty());
        assert!(w(&["--memcached-group", "web"]).is_empty());
        let tcp = w(&["--memcached", "127.0.0.1:11211"]);
        assert_eq!(tcp.len(), 1);
        assert!(tcp[0].contains("every local user"), "{tcp:?}");
        let tcp_group = w(&["--memcached", "127.0.0.1:11211", "--memcached-group", "web"]);
        assert_eq!(tcp_group.len(), 2, "{tcp_group:?}");
        assert!(tcp_group[1].contains("unix sockets only"), "{tcp_group:?}");
        let inside = w(&[
            "--memcached",
            "/run/stek/mc.sock",
            "--memcached-group",
            "web",
        ]);
        assert_eq!(inside.len(), 1);
        assert!(inside[0].contains("cannot reach it"), "{inside:?}");
    }

    #[test]
    fn memcached_limits_flag_beats_file_and_nonsense_is_refused() {
        let d = up(&["--memcached-max-connections", "100"], "")
            .unwrap()
            .delivery;
        assert_eq!(d.memcached_max_connections_per_peer, 25, "a quarter");
        let d = up(&["--memcached-max-connections", "20"], "")
            .unwrap()
            .delivery;
        assert_eq!(d.memcached_max_connections_per_peer, 16, "at least 16");
        let d = up(&["--memcached-max-connections", "10"], "")
            .unwrap()
            .delivery;
        assert_eq!(d.memcached_max_connections_per_peer, 10, "at most the cap");
        let file = "memcached_max_connections_per_peer = 7
memcached_request_timeout = \"2s\"";
        let d = up(&[], file).unwrap().delivery;
        assert_eq!(d.memcached_max_connections_per_peer, 7);
        assert_eq!(d.memcached_request_timeout, Duration::from_secs(2));
        let d = up(
            &[
                "--memcached-max-connections-per-peer",
                "9",
                "--memcached-request-timeout",
                "3s",
            ],
            file,
        )
        .unwrap()
        .delivery;
        assert_eq!(d.memcached_max_connections_per_peer, 9);
        assert_eq!(d.memcached_request_timeout, Duration::from_secs(3));
        // The file is checked as the flags are.
        for (file, needle) in [
            ("memcached_max_connections = 0", "between 1 and"),
            ("memcached_max_connections = 2000000", "between 1 and"),
            ("memcached_max_connections_per_peer = 0", "at least 1"),
            ("memcached_max_connections_per_peer = 5000", "more than max"),
            ("memcached_request_timeout = \"0s\"", "request timeout"),
            ("memcached_request_timeout = \"2h\"", "request timeout"),
        ] {
            let e = err(up(&[], file));
            assert!(e.contains(needle), "{file}: {e}");
        }
        let e = err(up(
            &[
                "--memcached-max-connections",
                "64",
                "--memcached-max-connections-per-peer",
                "65",
            ],
            "",
        ));
        assert!(e.contains("more than max connections (64)"), "{e}");
    }

    fn agent(args: &[&str], config: &str) -> anyhow::Result<AgentSettings> {
        let a = match command(&[&["agent"], args].concat()) {
            Command::Agent(a) => a,
            other => panic!("{other:?}"),
        };
        super::agent(&a, &file(config), &place())
    }

    #[test]
    fn agent_settings() {
        let g1 = GeneratorKey::generate().unwrap().public().to_string();
        let g2 = GeneratorKey::generate().unwrap().public().to_string();
        let file = format!(
            "store = \"redis://127.0.0.1:6379\"\ngroup = \"web\"\nidentity = \"/etc/stek/web.identity\"\n\
             trust = [\"{g1}\"]\nmax_stale = 3\nperiod = \"2h\""
        );
        let s = agent(&[], &file).unwrap();
        assert_eq!(s.store, "redis://127.0.0.1:6379");
        assert_eq!(s.group, "web");
        assert_eq!(s.identity, Path::new("/etc/stek/web.identity"));
        assert_eq!(s.trusted, [GeneratorPublicKey::parse(&g1).unwrap()]);
        assert_eq!(s.max_stale, 3);
        assert_eq!(s.schedule.period(), Duration::from_secs(2 * H));
        assert_eq!(s.delivery.dir, Path::new("/run/stek"));
        let s = agent(
            &[
                "--store",
                "etcd://127.0.0.1:2379",
                "--group",
                "api",
                "--identity",
                "id",
                "--trust",
                &format!("{g1},{g2}"),
                "--max-stale",
                "0",
            ],
            &file,
        )
        .unwrap();
        assert_eq!(s.store, "etcd://127.0.0.1:2379");
        assert_eq!(s.group, "api");
        assert_eq!(s.identity, Path::new("id"));
        assert_eq!(s.trusted.len(), 2);
        assert_eq!(s.max_stale, 0);

        let minimal = ["--store", "redis://x", "--group", "web", "--identity", "id"];
        assert_eq!(
            agent(&minimal, &format!("trust = [\"{g1}\"]"))
                .unwrap()
                .max_stale,
            1
        );
        assert_eq!(err(agent(&[], "")), "--store is required");
        assert_eq!(err(agent(&minimal[..2], "")), "--group is required");
        assert_eq!(err(agent(&minimal[..4], "")), "--identity is required");
        assert_eq!(
            err(agent(&minimal, "")),
            "--trust is required: the public key(s) of the generator(s) whose records to accept"
        );
        assert!(err(agent(&minimal, "trust = [\"nope\"]")).starts_with("--trust \"nope\""));
    }

    fn generator(args: &[&str], config: &str) -> anyhow::Result<GeneratorSettings> {
        let a = match command(&[&["generator"], args].concat()) {
            Command::Generator(a) => a,
            other => panic!("{other:?}"),
        };
        super::generator(&a, &file(config))
    }

    #[test]
    fn generator_groups_from_flags_or_the_file_with_their_own_schedule() {
        let p1 = GroupIdentity::generate().unwrap().public().to_string();
        let p2 = GroupIdentity::generate().unwrap().public().to_string();
        let file = format!(
            "store = \"redis://127.0.0.1:6379\"\nsigning_key = \"/etc/stek/generator.key\"\n\
             period = \"2h\"\nlifetime = \"6h\"\nmetrics = \"127.0.0.1:9155\"\n\
             [[groups]]\nname = \"web\"\nrecipients = [\"{p1}\", \"{p2}\"]\n\
             [[groups]]\nname = \"api\"\nrecipients = [\"{p1}\"]\nperiod = \"30m\"\n\
             [[groups]]\nname = \"mail\"\nrecipients = [\"{p2}\"]\nperiod = \"1h\"\nlifetime = \"1h\"\n"
        );
        let sched =
            |p: u64, l: u64| Schedule::new(Duration::from_secs(p), Duration::from_secs(l)).unwrap();
        let s = generator(&[], &file).unwrap();
        assert_eq!(s.store, "redis://127.0.0.1:6379");
        assert_eq!(s.signing_key, Path::new("/etc/stek/generator.key"));
        assert_eq!(s.metrics.as_deref(), Some("127.0.0.1:9155"));
        let got: Vec<_> = s
            .groups
            .iter()
            .map(|g| (g.name.as_str(), g.schedule, g.recipients.len()))
            .collect();
        assert_eq!(
            got,
            [
                ("web", sched(2 * H, 6 * H), 2),
                ("api", sched(1800, 6 * H), 1),
                ("mail", sched(H, H), 1),
            ]
        );
        // The flags' schedule is every group's default; a group's own values still win.
        let s = generator(&["--period", "4h", "--lifetime", "12h"], &file).unwrap();
        let got: Vec<_> = s.groups.iter().map(|g| g.schedule).collect();
        assert_eq!(
            got,
            [sched(4 * H, 12 * H), sched(1800, 12 * H), sched(H, H)]
        );
        // --group replaces the file's groups.
        let spec = format!("edge={p1},{p2}");
        let s = generator(&["--group", &spec, "--store", "etcd://e:2379"], &file).unwrap();
        assert_eq!(s.store, "etcd://e:2379");
        assert_eq!(s.groups.len(), 1);
        assert_eq!(s.groups[0].name, "edge");
        assert_eq!(s.groups[0].schedule, sched(2 * H, 6 * H));
        assert_eq!(
            s.groups[0].recipients,
            [
                GroupPublicKey::parse(&p1).unwrap(),
                GroupPublicKey::parse(&p2).unwrap()
            ]
        );
    }

    #[test]
    fn generator_trust_from_flags_or_the_file_and_optional() {
        let p1 = GroupIdentity::generate().unwrap().public().to_string();
        let (g1, g2) = (
            GeneratorKey::generate().unwrap().public().to_string(),
            GeneratorKey::generate().unwrap().public().to_string(),
        );
        let spec = format!("web={p1}");
        let base = [
            "--store",
            "redis://x",
            "--signing-key",
            "k",
            "--group",
            &spec,
        ];
        // None by default: the generator trusts only itself.
        assert!(generator(&base, "").unwrap().trusted.is_empty());
        let s = generator(&base, &format!("trust = [\"{g1}\"]")).unwrap();
        assert_eq!(s.trusted, [GeneratorPublicKey::parse(&g1).unwrap()]);
        // The flags win over the file, comma-separated or repeated.
        let both = format!("{g1},{g2}");
        let s = generator(
            &[&base[..], &["--trust", &both]].concat(),
            &format!("trust = [\"{g2}\"]"),
        )
        .unwrap();
        assert_eq!(s.trusted.len(), 2);
        assert!(
            err(generator(&[&base[..], &["--trust", "nope"]].concat(), ""))
                .starts_with("--trust \"nope\"")
        );
    }

    #[test]
    fn agent_and_generator_bound_the_window_too() {
        let g = GeneratorKey::generate().unwrap().public().to_string();
        let minimal = ["--store", "redis://x", "--group", "web", "--identity", "id"];
        let trust = format!("trust = [\"{g}\"]");
        let big = [&minimal[..], &["--period", "1s", "--lifetime", "1h"]].concat();
        assert!(err(agent(&big, &trust))
            .starts_with("period 1s and lifetime 1h: a window of 3602 keys"));
        let allowed = [&big[..], &["--allow-large-window"]].concat();
        assert_eq!(agent(&allowed, &trust).unwrap().schedule.window_len(), 3602);

        // The generator checks each group's own schedule and names the group.
        let p = GroupIdentity::generate().unwrap().public().to_string();
        let file = format!(
            "store = \"redis://x\"\nsigning_key = \"k\"\n\
             [[groups]]\nname = \"web\"\nrecipients = [\"{p}\"]\n\
             [[groups]]\nname = \"fast\"\nrecipients = [\"{p}\"]\nperiod = \"1s\"\n"
        );
        assert!(err(generator(&[], &file))
            .starts_with("group fast: period 1s and lifetime 18h: a window of 64802 keys"));
        assert_eq!(
            generator(&["--allow-large-window"], &file)
                .unwrap()
                .groups
                .len(),
            2
        );
        let allowed = format!("allow_large_window = true\n{file}");
        assert_eq!(generator(&[], &allowed).unwrap().groups.len(), 2);
        let spec = format!("edge={p}");
        let flags = ["--group", &spec, "--period", "1s", "--lifetime", "7d"];
        assert!(err(generator(&flags, &file)).starts_with("group edge: period 1s and lifetime 7d"));
    }

    #[test]
    fn generator_errors() {
        let p1 = GroupIdentity::generate().unwrap().public().to_string();
        let base = "store = \"redis://x\"\nsigning_key = \"k\"\n";
        assert_eq!(err(generator(&[], "")), "--store is required");
        assert_eq!(
            err(generator(&[], "store = \"redis://x\"")),
            "--signing-key is required"
        );
        assert_eq!(
            err(generator(&[], base)),
            "no group to serve: give --group NAME=PUB[,PUB...] (or [[groups]] in --config)"
        );
        assert_eq!(
            err(generator(&["--group", "web"], base)),
            "--group \"web\": expected NAME=PUB[,PUB...]"
        );
        assert_eq!(
            err(generator(&["--group", "web="], base)),
            "group web: no recipient public keys"
        );
        assert!(err(generator(&["--group", "web=nope"], base))
            .starts_with("group web: bad recipient \"nope\""));
        let group = |extra: &str| {
            format!("{base}[[groups]]\nname = \"web\"\nrecipients = [\"{p1}\"]\n{extra}")
        };
        assert_eq!(
            err(generator(&[], &group("period = \"0s\""))),
            "config file: period: the period must be longer than zero"
        );
        assert_eq!(
            err(generator(&[], &group("lifetime = \"8d\""))),
            "config file: lifetime: the lifetime must be at most 7d, the longest ticket lifetime TLS 1.3 allows (RFC 8446 4.6.1)"
        );
        assert!(err(generator(
            &[],
            &format!("{base}[[groups]]\nname = \"a b\"\nrecipients = []")
        ))
        .starts_with("invalid group name"));
    }
}
