//! The command line: every clap type, its help text and value parsers. Binary-side, so the
//! library does not depend on clap; `settings` merges these flags over the config file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use stek::duration;
use stek::memcached;
use stek::sink::{NginxKeySize, SinkKind};
use stek_core::schedule::MAX_LIFETIME;

const ABOUT: &str =
    "Rotating, fleet-wide TLS session ticket keys without giving up forward secrecy";

const LONG_ABOUT: &str = "\
Rotating, fleet-wide TLS session ticket keys without giving up forward secrecy.

A session ticket is the session's secrets encrypted under a session ticket encryption key
(STEK). Whoever obtains that key later can decrypt every recorded session it covered. stek
makes a fresh key every period, keeps the next period's key ready (decrypt-only) and past
keys for as long as tickets live, hands them to nginx, HAProxy, Apache, h2o, lighttpd and
memcached-protocol clients, and erases each key once no ticket may still use it. Keys never touch persistent
disk.

One machine: `stek up`. A fleet: `stek keygen` once, `stek generator` next to the store's
primary, `stek agent` on every TLS host.";

#[derive(Parser, Debug)]
#[command(name = "stek", version, about = ABOUT, long_about = LONG_ABOUT)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Rotate ticket keys for the TLS servers of this machine (generator, agent and store in one
    /// process).
    #[command(long_about = UP_LONG_ABOUT)]
    Up(UpArgs),
    /// Make a key pair: a host group's (X25519) or a generator's signing key (Ed25519).
    #[command(long_about = KEYGEN_LONG_ABOUT)]
    Keygen(KeygenArgs),
    /// Make, seal and sign every group's upcoming keys and publish them to a shared store.
    #[command(long_about = GENERATOR_LONG_ABOUT)]
    Generator(Box<GeneratorArgs>),
    /// Read this host's group keys from the local store copy and hand them to its TLS servers.
    #[command(long_about = AGENT_LONG_ABOUT)]
    Agent(Box<AgentArgs>),
    /// Print a running agent's ring by key name, slot and role.
    Status(StatusArgs),
    /// Audit any TLS server's session resumption from the outside: tickets, key names, how long
    /// a key encrypts, how long old tickets are accepted, guessable keys.
    #[command(long_about = SCAN_LONG_ABOUT)]
    Scan(ScanArgs),
    /// Check a command's flags and config file as it would, without starting anything.
    #[command(long_about = CHECK_LONG_ABOUT)]
    Check(CheckArgs),
    /// Print a shell completion script for stek.
    #[command(long_about = COMPLETIONS_LONG_ABOUT)]
    Completions(CompletionsArgs),
    /// Print stek's manual page (roff), or one subcommand's, for `man -l -` or a man directory.
    #[command(long_about = MAN_LONG_ABOUT)]
    Man(ManArgs),
}

const CHECK_LONG_ABOUT: &str = "\
Check the flags and the config file of `stek up`, `stek agent` or `stek generator` exactly as
that command reads them, without starting anything: TOML keys and types, durations, the schedule,
private key files (owner, mode, contents), the key directory (tmpfs or ramfs), the store URL's
syntax, memcached addresses and group. Prints one line per problem and exits 2, or a one-line
summary and exits 0. Warnings (e.g. a lifetime above the period with HAProxy) do not fail.

Examples:
  stek check agent --config /etc/stek/agent.toml
  stek check generator --config /etc/stek/generator.toml
  stek check up --period 1h --lifetime 18h --dir /run/stek";

#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    #[command(subcommand)]
    pub(crate) command: CheckCommand,
}

/// The command whose settings `stek check` checks.
#[derive(Subcommand, Debug)]
pub(crate) enum CheckCommand {
    /// Check `stek up`'s flags and config.
    Up(Box<UpArgs>),
    /// Check `stek agent`'s flags and config.
    Agent(Box<AgentArgs>),
    /// Check `stek generator`'s flags and config.
    Generator(Box<GeneratorArgs>),
}

const COMPLETIONS_LONG_ABOUT: &str = "\
Print a shell completion script for stek, generated from the same definitions as --help.

Install:
  bash  stek completions bash > /etc/bash_completion.d/stek
        (or ~/.local/share/bash-completion/completions/stek)
  zsh   stek completions zsh > \"${fpath[1]}/_stek\"
  fish  stek completions fish > ~/.config/fish/completions/stek.fish";

const MAN_LONG_ABOUT: &str = "\
Print stek's manual page in roff, generated from the same definitions as --help: the command, its
subcommands and every flag.

Read it now:   stek man | man -l -          stek man scan | man -l -
Install them:  for c in \"\" up keygen generator agent status scan; do
                 stek man $c > /usr/local/share/man/man1/stek${c:+-$c}.1
               done; mandb";

#[derive(Args, Debug)]
pub(crate) struct ManArgs {
    /// A subcommand (up, keygen, generator, agent, status, scan, ...): its own page, stek-NAME(1).
    pub(crate) command: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

/// The whole command line as clap sees it (for completions and the manual page).
pub(crate) fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

const UP_LONG_ABOUT: &str = "\
Rotate ticket keys for the TLS servers of this machine: generator, agent and an embedded store
in one process.

Every PERIOD a new key starts encrypting; the next period's key is already installed
(decrypt-only) and past keys stay for LIFETIME, so tickets resume for LIFETIME and a key is
erased at most LIFETIME + 2*PERIOD after the last ticket it encrypted.

Files written under DIR (0600, in 0700 directories, atomically):
  nginx/tickets.conf     include it in a server block: one ssl_session_ticket_key line per key
  nginx/keys/*.key       the key files it references (80 bytes; 48 with --nginx-key-size 48)
  haproxy/tickets.keys   for `bind ... tls-ticket-keys FILE` (previous, current, next)
  apache/ticket.key      for `SSLSessionTicketKeyFile FILE` (the current key, 48 bytes)
  h2o/tickets.yaml       with --sinks h2o, for h2o's
                           ssl-session-resumption:
                             mode: ticket
                             ticket-store: file
                             ticket-file: DIR/h2o/tickets.yaml
                         (every key, dated so h2o encrypts with the current one; h2o re-reads
                         it within 10s, no reload)
  lighttpd/stek.key      with --sinks lighttpd, for lighttpd's
                           ssl.stek-file = \"DIR/lighttpd/stek.key\"
                         (the next key, written early enough for lighttpd's 64s checks; no
                         reload; needs --period of at least 65s)
  status.json            the ring by key name, slot and role (no key bytes)
and a read-only memcached-protocol server, text and binary protocols (ticket-key/<slot start>
in Cloudflare's layout, the slot after next included as soon as its key is held, for clients
that fetch it at the boundary; nghttpx:tls-ticket-key for nghttpx's --tls-ticket-key-memcached,
in the layout of --nghttpx-cipher). h2o's `ticket-store: memcached` cannot use it: h2o writes
its own keys there.

With --haproxy-socket PATH (HAProxy's `stats socket PATH mode 600 level admin`), every rotation
also reaches the running HAProxy through its runtime API (`set ssl tls-key`), with no reload:
stek keeps the rings whose file is DIR/haproxy/tickets.keys identical to that file, checks them
every second, and brings back a HAProxy that was restarted, started late or changed.

SIGTERM or SIGINT stops stek. SIGHUP, SIGUSR1 and SIGUSR2 are logged and ignored: stek does not
reload its configuration (restart it to apply a changed --config); rotation carries on.

Example:
  stek up --period 1h --lifetime 18h --on-change 'nginx -s reload'
  stek up --period 1h --lifetime 1h --sinks h2o,lighttpd";

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

Each round it also checks the values already in its upcoming slots. Junk, oversize values and
records with a wrong header or a bad signature are replaced (compare-and-set, so racing
generators make one record); a slot it created that vanished is recreated, with a warning:
hosts that read the old key disagree with the others until it leaves the window. Records
correctly signed by a generator outside --trust are left alone and reported. All of these are
counted in stek_generator_slot_conflicts_total{group,reason}.

  stek generator --store redis://10.0.0.1:6379 --signing-key generator.key \\
      --group web=stek-group1:AAAA...,stek-group1:BBBB... --period 1h --lifetime 18h \\
      --trust stek-generator1:DDDD...   # the fleet's other generator

Across sites, with TLS and a least-privilege user (README, \"Authentication and TLS\"):
  stek generator --store rediss+sentinel://10.0.0.5:26379,10.0.0.6:26379/stekmaster \\
      --store-ca /etc/stek/redis-ca.pem --store-user stek-generator \\
      --store-password-file /etc/stek/redis.password ...";

const AGENT_LONG_ABOUT: &str = "\
Read this host's group records from the local store copy (a Redis read replica, or etcd),
check the generator's signature, open them with the group identity, and deliver the ring to
the TLS servers exactly like `stek up` (same files, memcached interface and --on-change).
With --sinks h2o and lighttpd (no reload needed: both re-read their files):
  h2o:      ssl-session-resumption: {mode: ticket, ticket-store: file,
                                     ticket-file: DIR/h2o/tickets.yaml}
  lighttpd: ssl.stek-file = \"DIR/lighttpd/stek.key\"     (needs --period of at least 65s)
Follows the store by notification plus a jittered poll; serves what it has while the store is
down, and past --max-stale periods without a current key encrypts with a local random key
(resumption then works on this host only; forward secrecy holds) until the store is back.
SIGHUP, SIGUSR1 and SIGUSR2 are logged and ignored (no reload: restart to apply changes).

  stek agent --store redis://127.0.0.1:6379 --group web --identity web.identity \\
      --trust stek-generator1:CCCC... --on-change 'nginx -s reload'";

/// The schedule flags shared by up, agent and generator.
#[derive(Args, Debug, Default)]
pub(crate) struct ScheduleArgs {
    /// How long each key encrypts before the next takes over (e.g. 1h, 30m, 4s). Default 1h.
    #[arg(long, value_name = "DUR", value_parser = parse_period, allow_hyphen_values = true)]
    pub(crate) period: Option<Duration>,

    /// How long a ticket stays valid: past keys are kept this long, and servers are told this
    /// lifetime. At most 7d (TLS 1.3). May be shorter than the period. Default 18h.
    #[arg(long, value_name = "DUR", value_parser = parse_lifetime, allow_hyphen_values = true)]
    pub(crate) lifetime: Option<Duration>,

    /// Allow a window of more than 1,000 keys (ceil(LIFETIME / PERIOD) past + current + next).
    /// Every key of the window is held in locked memory and written to every key file at each
    /// rotation, so e.g. --period 1s --lifetime 7d (604,802 keys) takes gigabytes of tmpfs and
    /// locked memory; without this flag such a schedule is refused before anything is written.
    #[arg(long)]
    pub(crate) allow_large_window: bool,
}

/// The delivery flags shared by up and agent.
#[derive(Args, Debug)]
pub(crate) struct SinkArgs {
    /// Directory for the key files. Must be on tmpfs or ramfs. Default: the first of /run/stek,
    /// $XDG_RUNTIME_DIR/stek and /dev/shm/stek whose file system is tmpfs or ramfs (the log
    /// names the one chosen: "key directory DIR is on tmpfs"). Created 0700 if absent. DIR and its
    /// subdirectories must be owned by stek's user and not writable by group or others, and
    /// must not be symbolic links (give the real directory): stek refuses to start otherwise,
    /// naming the path, its owner and mode. Links found inside DIR are never followed.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,

    /// Allow DIR on a persistent file system. Keys written there can be recovered from the disk
    /// long after they were erased, which defeats forward secrecy: use only for testing.
    #[arg(long)]
    pub(crate) allow_persistent_dir: bool,

    /// Serve keys over the memcached text and binary protocols on ADDR: 127.0.0.1:PORT, [::1]:PORT, or a
    /// path for a unix socket (mode 0600; 0660 with --memcached-group). Repeatable. Default:
    /// DIR/memcached.sock, or DIR-memcached/memcached.sock with --memcached-group. On TCP every
    /// local user can connect and read the keys; a unix socket serves only root, stek's uid and
    /// --memcached-group (checked by the peer's credentials).
    #[arg(long = "memcached", value_name = "ADDR")]
    pub(crate) memcached: Vec<String>,

    /// Let the members of GROUP (name or gid) read the keys over the memcached unix socket,
    /// e.g. the user your nginx workers run as (`www-data`). The default socket then moves to
    /// its own directory next to DIR (DIR-memcached/, mode 0750, group GROUP; DIR stays 0700)
    /// and gets mode 0660, group GROUP. A client is served if it is root, stek's uid, runs with
    /// GROUP as its gid, or has GROUP as primary or supplementary group in /etc/passwd,
    /// /etc/group; anyone else gets `SERVER_ERROR forbidden` (counted in
    /// stek_memcached_refused_total{reason="forbidden"}). With --memcached PATH, the directory
    /// of PATH must let GROUP through.
    #[arg(long, value_name = "GROUP")]
    pub(crate) memcached_group: Option<String>,

    /// Allow --memcached on a non-loopback address. Anyone who can reach it can read the keys.
    #[arg(long)]
    pub(crate) memcached_allow_remote: bool,

    /// Do not serve the memcached protocol at all.
    #[arg(long, conflicts_with = "memcached")]
    pub(crate) no_memcached: bool,

    /// Most concurrent memcached connections; more are refused with an error reply. Each
    /// costs a file descriptor and 6 to 60 KiB of locked memory. Default 4096.
    #[arg(long, value_name = "N", value_parser = parse_connections)]
    pub(crate) memcached_max_connections: Option<usize>,

    /// Most concurrent memcached connections of one peer (a uid on the unix socket, an IP
    /// address on TCP: all local users share 127.0.0.1), so that one user cannot take every
    /// connection; more are refused with an error reply. Default: a quarter of
    /// --memcached-max-connections, at least 16.
    #[arg(long, value_name = "N", value_parser = parse_connections)]
    pub(crate) memcached_max_connections_per_peer: Option<usize>,

    /// A memcached request must arrive whole within DUR of its first byte, and its reply be
    /// read within DUR, else the connection is closed (a client trickling bytes cannot hold a
    /// connection). Connections that send nothing are closed after 5 minutes. Default 5s.
    #[arg(long, value_name = "DUR", value_parser = parse_request_timeout)]
    pub(crate) memcached_request_timeout: Option<Duration>,

    /// The layout of the keys served to nghttpx at `nghttpx:tls-ticket-key` (binary memcached
    /// protocol): aes-128-cbc (48-byte keys) or aes-256-cbc (80-byte keys). Give the same value
    /// as nghttpx's --tls-ticket-key-cipher: nghttpx rejects the whole key list when the length
    /// differs, and then runs without tickets. nghttpx connects over TCP only: serve
    /// --memcached 127.0.0.1:PORT and give it --tls-ticket-key-memcached=127.0.0.1,PORT.
    /// Default aes-128-cbc, as nghttpx.
    #[arg(long, value_name = "CIPHER", value_parser = parse_nghttpx_cipher)]
    pub(crate) nghttpx_cipher: Option<memcached::NghttpxCipher>,

    /// Run CMD with `sh -c` after every change of the key files, e.g. 'nginx -s reload' or
    /// 'apache2ctl graceful'. A failure is logged and retried with backoff; the previous files
    /// stay valid meanwhile.
    #[arg(long, value_name = "CMD")]
    pub(crate) on_change: Option<String>,

    /// Which key files to write (comma-separated: nginx, haproxy, apache, h2o, lighttpd).
    /// Default: nginx, haproxy, apache. h2o and lighttpd re-read their files by themselves (no
    /// --on-change needed); lighttpd needs a period of at least 65s (it looks at its file every
    /// 64s).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub(crate) sinks: Vec<SinkArg>,

    /// The size of the nginx key files: 80 or 48 bytes. 80 (name16 hmac32 aes32) gives
    /// AES-256-CBC tickets. 48 (name16 aes16 hmac16, AES-128-CBC) writes in every file exactly
    /// the bytes served over memcached at ticket-key/<slot start>: pick it when nginx hosts that
    /// read these files share a group with hosts that fetch that key themselves, such as nginx
    /// with Cloudflare's lua-ssl-nginx-module, which installs those 48 bytes as they are. Both
    /// kinds of host then resume each other's tickets; with 80 they share key names, not key
    /// bytes, and never do. 48 bytes is also the layout of nghttpx's default keys
    /// (aes-128-cbc). Default 80.
    #[arg(long, value_name = "BYTES", value_parser = parse_nginx_key_size)]
    pub(crate) nginx_key_size: Option<NginxKeySize>,

    /// HAProxy's admin socket (`stats socket PATH mode 600 level admin`): push every new key to
    /// the running HAProxy with `set ssl tls-key`, no reload. Manages the rings whose file is
    /// DIR/haproxy/tickets.keys (implies the haproxy sink). Repeatable, one per HAProxy process.
    #[arg(long = "haproxy-socket", value_name = "PATH")]
    pub(crate) haproxy_socket: Vec<PathBuf>,

    /// Check the key this host's TLS servers actually serve: after each rotation and every
    /// quarter period (1 to 10 s), connect to each ADDR (TLS 1.3 and 1.2), read the key name of
    /// the tickets it issues and compare it with the ring's encrypting key. ADDR is
    /// [NAME@]HOST:PORT (NAME: the server name to send; default HOST when it is a name). A
    /// mismatch that outlasts the reload after a rotation (2 to 20 s, at most half a period) is
    /// logged, shown by `stek status` (WARNING) and in stek_served_key_match{endpoint}.
    /// Comma-separated or repeated.
    #[arg(long = "verify-tls", value_name = "ADDR", value_delimiter = ',', value_parser = check_verify_tls)]
    pub(crate) verify_tls: Vec<String>,

    /// Serve Prometheus metrics at http://ADDR/metrics, the status at /status and a health
    /// verdict at /healthz. ADDR is IP:PORT or HOST:PORT (localhost:9155); loopback only unless
    /// --metrics-allow-remote.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<String>,

    /// Allow --metrics on a non-loopback address (a central Prometheus scraping this host). The
    /// endpoint names keys by their public names and shows the schedule; it never shows key
    /// bytes. Put a firewall in front of it.
    #[arg(long)]
    pub(crate) metrics_allow_remote: bool,
}

/// Flags every long-running command takes.
#[derive(Args, Debug)]
pub(crate) struct ProcessArgs {
    /// Read settings from a TOML file; flags given on the command line win. The keys are the
    /// flag names with `_` (e.g. `on_change`); a generator's `[[groups]]` may give a group its own
    /// period and lifetime (see the README).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Shift this process's clock by MS milliseconds (negative: behind). For testing how hosts
    /// with skewed clocks interoperate.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        allow_hyphen_values = true,
        hide = true
    )]
    pub(crate) clock_offset_ms: i64,
}

#[derive(Args, Debug)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    pub(crate) schedule: ScheduleArgs,

    #[command(flatten)]
    pub(crate) sink: SinkArgs,

    /// The group name recorded with each key (letters, digits, '.', '_', '-'). Default: default.
    #[arg(long, value_name = "NAME", value_parser = parse_group)]
    pub(crate) group: Option<String>,

    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

#[derive(Args, Debug)]
pub(crate) struct KeygenArgs {
    /// Which key pair: `group` (X25519, for the TLS hosts of a group) or `generator` (Ed25519
    /// signing key).
    #[arg(long, value_name = "KIND")]
    pub(crate) kind: KeyKind,

    /// Where to write the private key (mode 0600; never overwritten).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum KeyKind {
    Group,
    Generator,
}

/// How to reach a shared store across sites: TLS and credentials (never in the URL).
#[derive(Args, Debug, Default)]
pub(crate) struct StoreAccessArgs {
    /// Verify the store's TLS certificate with this CA bundle (PEM) instead of the system's
    /// roots. Needs a TLS URL: rediss:// or etcds://.
    #[arg(long, value_name = "FILE")]
    pub(crate) store_ca: Option<PathBuf>,

    /// Present this client certificate chain (PEM) to the store; needs --store-key.
    #[arg(long, value_name = "FILE")]
    pub(crate) store_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM): a file of this user (or root), mode 0600.
    #[arg(long, value_name = "FILE")]
    pub(crate) store_key: Option<PathBuf>,

    /// The store user: a Redis ACL user or an etcd user, with the least rights its role needs
    /// (the README gives them).
    #[arg(long, value_name = "NAME")]
    pub(crate) store_user: Option<String>,

    /// A file (of this user or root, mode 0600) whose first line is the store password. A
    /// password in the URL is refused: it would show in `ps`.
    #[arg(long, value_name = "FILE")]
    pub(crate) store_password_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct GeneratorArgs {
    /// The store: redis://HOST:PORT (the primary), redis+sentinel://H:P[,H:P...]/MASTER (the
    /// primary Redis Sentinel names, followed through failovers) or
    /// etcd://HOST:PORT[,HOST:PORT...]; rediss://, rediss+sentinel:// and etcds:// speak TLS
    /// (see --store-ca). Credentials never go in the URL: --store-user, --store-password-file.
    #[arg(long, value_name = "URL")]
    pub(crate) store: Option<String>,

    #[command(flatten)]
    pub(crate) store_access: StoreAccessArgs,

    /// A group and its recipients' public keys: NAME=PUB[,PUB...]. Repeat for several groups.
    #[arg(long = "group", value_name = "NAME=PUB[,PUB...]")]
    pub(crate) groups: Vec<String>,

    /// The generator's signing key file (from `stek keygen --kind generator`). Must be a regular
    /// file owned by this user (or root) with mode 0600 or stricter, like an ssh private key.
    #[arg(long, value_name = "FILE")]
    pub(crate) signing_key: Option<PathBuf>,

    /// Public keys of the other generators of the fleet (stek-generator1:...), comma-separated
    /// or repeated; this generator's own key is always trusted. Each round the generator checks
    /// the records in its upcoming slots: a value no generator could have written (junk, a
    /// misfiled or forged record, an oversize value) is replaced; a record correctly signed by a
    /// generator not listed here is left in place and reported (reason foreign_signer), so that
    /// generators with different lists never overwrite each other.
    #[arg(long, value_name = "PUB[,PUB...]", value_delimiter = ',')]
    pub(crate) trust: Vec<String>,

    #[command(flatten)]
    pub(crate) schedule: ScheduleArgs,

    /// Serve Prometheus metrics at http://ADDR/metrics, the status at /status and a health
    /// verdict at /healthz. ADDR is IP:PORT or HOST:PORT; loopback only unless
    /// --metrics-allow-remote.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<String>,

    /// Allow --metrics on a non-loopback address (a central Prometheus scraping this host).
    #[arg(long)]
    pub(crate) metrics_allow_remote: bool,

    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

#[derive(Args, Debug)]
pub(crate) struct AgentArgs {
    /// The store: redis://HOST:PORT (this site's read replica) or
    /// etcd://HOST:PORT[,HOST:PORT...]; rediss:// and etcds:// speak TLS (see --store-ca).
    /// Credentials never go in the URL: --store-user, --store-password-file.
    #[arg(long, value_name = "URL")]
    pub(crate) store: Option<String>,

    #[command(flatten)]
    pub(crate) store_access: StoreAccessArgs,

    /// This host's group.
    #[arg(long, value_name = "NAME", value_parser = parse_group)]
    pub(crate) group: Option<String>,

    /// The group identity file (from `stek keygen --kind group`). Must be a regular file owned
    /// by this user (or root) with mode 0600 or stricter, like an ssh private key.
    #[arg(long, value_name = "FILE")]
    pub(crate) identity: Option<PathBuf>,

    /// Public keys of the generators whose records are accepted (stek-generator1:...),
    /// comma-separated or repeated.
    #[arg(long, value_name = "PUB[,PUB...]", value_delimiter = ',')]
    pub(crate) trust: Vec<String>,

    /// How many periods an old shared key may keep encrypting when the current one is missing;
    /// past that a local random key encrypts. Default 1.
    #[arg(long, value_name = "N")]
    pub(crate) max_stale: Option<u64>,

    #[command(flatten)]
    pub(crate) schedule: ScheduleArgs,

    #[command(flatten)]
    pub(crate) sink: SinkArgs,

    #[command(flatten)]
    pub(crate) process: ProcessArgs,
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// The agent's key directory (reads DIR/status.json). Default: as for `stek up`.
    #[arg(long, value_name = "DIR", conflicts_with = "endpoint")]
    pub(crate) dir: Option<PathBuf>,

    /// Ask a running agent's or generator's metrics endpoint instead (ADDR as given to its
    /// --metrics). A generator's verdict: CRITICAL when it has not published a group's current
    /// slot (agents encrypt with a stale key, then a local one), WARNING when it has not
    /// published the next one or its rounds fail.
    #[arg(long, value_name = "ADDR")]
    pub(crate) endpoint: Option<String>,

    /// Print the status as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

const SCAN_LONG_ABOUT: &str = "\
Audit any TLS server's session resumption from the outside.

For each address of each TARGET and each of TLS 1.2 and 1.3, stek scan checks session-ID
resumption, ticket issuance and resumption (a renewed ticket still counts), the lifetime hint
(0 means unspecified, not \"no tickets\"), TLS 1.3 lifetimes above 7 days, single-use TLS 1.3
tickets and psk_ke; reads the key name at the front of the tickets (confirmed on several
tickets); and tries guessable keys (all zero, one repeated byte, counting, ASCII) on the ticket
itself, in the key layouts of nginx, Apache, HAProxy, nghttpx, lighttpd, h2o, OpenSSL and Go
(with or without a key name).

A version whose handshake did not complete is never read as \"no tickets\": the report says what
happened (the alert by name, a refused server name) and the scan exits 2 unless another version
was assessed. Tickets shorter than 48 bytes are session-cache IDs, not encrypted tickets
(session_cache.* findings). Tickets without a key name (Go >= 1.21) are measured through
acceptance. The server family (from its answer to GET / and its tickets) picks the fix text.

A key's life and the acceptance window take time to see:
  --observe 2h               sample for two hours; report every key name with first and last
                             sight, the rotation period, and whether the first tickets still
                             resume at the end
  --state /var/lib/stek-scan/example.json
                             keep names, times and a few tickets across runs: a daily cron run
                             measures key life and acceptance over days and weeks

A report to look at or pass on:
  --html report.html         also write the report as one self-contained web page: verdict,
                             findings with their fixes, each endpoint, and with --observe or
                             --state a timeline of key names and old tickets accepted or refused

Exit codes: 0 no finding of medium severity or worse, 1 findings, 2 the scan could not run.

Examples:
  stek scan example.com
  stek scan 127.0.0.1:8443 --observe 6s --max-rotation 3s
  stek scan 192.0.2.10 192.0.2.11 --sni www.example.com --json
  stek scan example.com --observe 10m --html report.html
  stek scan example.com --expect http://127.0.0.1:9100/status";

#[derive(Args, Debug)]
pub(crate) struct ScanArgs {
    /// host[:port] to audit (default port 443; IPv6 as [addr]:port). A name is scanned at each
    /// of its addresses.
    #[arg(value_name = "TARGET", required = true)]
    pub(crate) targets: Vec<String>,

    /// The server name to send (default: the target's host name; none for an IP address).
    /// With several targets, one name for all: they are compared as one fleet.
    #[arg(long, value_name = "NAME")]
    pub(crate) sni: Option<String>,

    /// Print one JSON document (stable field names and finding ids) instead of the report.
    #[arg(long)]
    pub(crate) json: bool,

    /// Also write the report as one HTML page to FILE: the verdict, the findings with their
    /// fixes, each endpoint, and with --observe or --state a timeline of key names and of old
    /// tickets accepted or refused. Self-contained: no script, nothing fetched, safe to open or
    /// mail. FILE is replaced whole (a temporary file renamed over it). Works with --json.
    #[arg(long, value_name = "FILE")]
    pub(crate) html: Option<PathBuf>,

    /// Keep sampling for DUR (e.g. 6s, 2h) to measure key rotation and acceptance.
    #[arg(long, value_name = "DUR", value_parser = parse_positive)]
    pub(crate) observe: Option<Duration>,

    /// Time between samples while observing (default: DUR/60, between 1s and 5m).
    #[arg(long, value_name = "DUR", value_parser = parse_positive, requires = "observe")]
    pub(crate) interval: Option<Duration>,

    /// The longest acceptable life of one encrypting key (finding stek.not_rotated).
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = parse_positive)]
    pub(crate) max_rotation: Duration,

    /// The oldest acceptable ticket that still resumes (finding stek.old_ticket_accepted).
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = parse_positive)]
    pub(crate) max_acceptance: Duration,

    /// Keep observations (key names, times, a few tickets) in FILE across runs (written 0600).
    #[arg(long, value_name = "FILE")]
    pub(crate) state: Option<PathBuf>,

    /// A stek agent's status to check the served key against: a file from `stek status --json`
    /// (or DIR/status.json), or the agent's metrics endpoint (http://127.0.0.1:9100/status).
    #[arg(long, value_name = "STATUS")]
    pub(crate) expect: Option<String>,

    /// How long one connection may take as a whole: connect, handshake and reading the
    /// server's flight. A server that stalls, or sends a byte now and then, is cut off at DUR
    /// and reported as "timed out after DUR". Connections run one after another per endpoint
    /// and version, so a scan takes a few DUR at most against servers that do not answer.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_positive)]
    pub(crate) timeout: Duration,
}

/// A connection count: at least 1 (0 would refuse every client), at most
/// [`memcached::MAX_CONNECTIONS`].
fn parse_connections(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of connections"))?;
    if !(1..=memcached::MAX_CONNECTIONS).contains(&n) {
        return Err(format!(
            "{n} connections: must be between 1 and {}",
            memcached::MAX_CONNECTIONS
        ));
    }
    Ok(n)
}

pub(crate) fn check_request_timeout(d: Duration) -> Result<Duration, String> {
    if d.is_zero() || d > memcached::MAX_REQUEST_TIMEOUT {
        return Err(format!(
            "the request timeout must be longer than zero and at most {}",
            duration::format(memcached::MAX_REQUEST_TIMEOUT)
        ));
    }
    Ok(d)
}

fn parse_request_timeout(s: &str) -> Result<Duration, String> {
    check_request_timeout(duration::parse(s).map_err(|e| e.to_string())?)
}

fn parse_nginx_key_size(s: &str) -> Result<NginxKeySize, String> {
    s.parse()
        .ok()
        .and_then(NginxKeySize::from_bytes)
        .ok_or_else(|| format!("{s:?}: nginx key files are 48 or 80 bytes"))
}

fn parse_positive(s: &str) -> Result<Duration, String> {
    let d = duration::parse(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("the duration must be longer than zero".into());
    }
    Ok(d)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum SinkArg {
    Nginx,
    Haproxy,
    Apache,
    H2o,
    Lighttpd,
}

impl From<SinkArg> for SinkKind {
    fn from(s: SinkArg) -> Self {
        match s {
            SinkArg::Nginx => SinkKind::Nginx,
            SinkArg::Haproxy => SinkKind::Haproxy,
            SinkArg::Apache => SinkKind::Apache,
            SinkArg::H2o => SinkKind::H2o,
            SinkArg::Lighttpd => SinkKind::Lighttpd,
        }
    }
}

fn parse_nghttpx_cipher(s: &str) -> Result<memcached::NghttpxCipher, String> {
    s.parse()
        .map_err(|e: memcached::UnknownCipher| e.to_string())
}

fn parse_period(s: &str) -> Result<Duration, String> {
    check_period(duration::parse(s).map_err(|e| e.to_string())?)
}

fn parse_lifetime(s: &str) -> Result<Duration, String> {
    check_lifetime(duration::parse(s).map_err(|e| e.to_string())?)
}

/// The limits of a period, from a flag or the config file.
pub(crate) fn check_period(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        return Err("the period must be longer than zero".into());
    }
    if d > MAX_LIFETIME {
        return Err("the period must be at most 7d: rotate at least weekly".into());
    }
    Ok(d)
}

/// The limits of a lifetime, from a flag or the config file.
pub(crate) fn check_lifetime(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        return Err("the lifetime must be longer than zero".into());
    }
    if d > MAX_LIFETIME {
        return Err("the lifetime must be at most 7d, the longest ticket lifetime TLS 1.3 allows (RFC 8446 4.6.1)".into());
    }
    Ok(d)
}

pub(crate) fn parse_group(s: &str) -> Result<String, String> {
    if stek_core::record::valid_group(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid group name {s:?}: a group name is 1 to 64 letters, digits, '.', '_' or '-'"
        ))
    }
}

/// A `--verify-tls` address, checked here so a bad one is a usage error (the settings parse it
/// again, with the config file's).
fn check_verify_tls(s: &str) -> Result<String, String> {
    stek::agent::verify::Target::parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.reason())
}

/// Parses the command line. On a bad one, prints one line (clap's first, plus where to look)
/// and gives exit code 2; `--help` and `--version` print and give 0.
pub(crate) fn parse() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
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
        ExitCode::from(2)
    })
}
