//! `--config FILE`: a TOML file equivalent to the command-line flags of `stek up`, `stek agent`
//! and `stek generator`. A flag given on the command line wins over the file.
//!
//! ```toml
//! # stek up / stek agent
//! period = "1h"
//! lifetime = "18h"
//! allow_large_window = false   # true: allow more than 1,000 keys per window
//! dir = "/run/stek"
//! memcached = ["127.0.0.1:11211"]
//! memcached_group = "www-data"
//! memcached_max_connections = 4096
//! memcached_max_connections_per_peer = 1024
//! memcached_request_timeout = "5s"
//! nghttpx_cipher = "aes-128-cbc"   # or "aes-256-cbc": nghttpx's --tls-ticket-key-cipher
//! on_change = "nginx -s reload"
//! sinks = ["nginx", "haproxy"]
//! nginx_key_size = 80          # 48: the bytes of memcached ticket-key/<slot> (mixed fleets)
//! haproxy_socket = ["/run/haproxy/admin.sock"]
//! verify_tls = ["127.0.0.1:443"]   # [NAME@]HOST:PORT: check the key these servers serve
//! metrics = "127.0.0.1:9155"
//! # stek agent (store and trust: stek generator too)
//! store = "redis://127.0.0.1:6379"
//! group = "web"
//! identity = "/etc/stek/web.identity"
//! trust = ["stek-generator1:..."]   # agent: the generators whose records it accepts;
//!                                   # generator: the other generators (its own key is implied)
//! max_stale = 1
//! # stek generator
//! signing_key = "/etc/stek/generator.key"
//! [[groups]]
//! name = "web"
//! recipients = ["stek-group1:..."]
//! period = "1h"        # optional: this group's own period and lifetime
//! lifetime = "18h"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::duration;
use crate::memcached::NghttpxCipher;
use crate::sink::{NginxKeySize, SinkKind};

/// The largest config file read.
const MAX_CONFIG_LEN: u64 = 1 << 20;

/// Everything a config file may hold; unknown keys are an error (a typo must not be ignored).
/// Durations and sink names are checked as the file is read; an error names the key. Limits
/// that flags share (a period of at most 7d, ...) are checked where flags and file are merged.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--period`.
    #[serde(default, deserialize_with = "period")]
    pub period: Option<Duration>,
    /// `--lifetime`.
    #[serde(default, deserialize_with = "lifetime")]
    pub lifetime: Option<Duration>,
    /// `--allow-large-window`.
    pub allow_large_window: Option<bool>,
    /// `--dir`.
    pub dir: Option<PathBuf>,
    /// `--allow-persistent-dir`.
    pub allow_persistent_dir: Option<bool>,
    /// `--memcached` (several).
    pub memcached: Option<Vec<String>>,
    /// `--memcached-allow-remote`.
    pub memcached_allow_remote: Option<bool>,
    /// `--no-memcached`.
    pub no_memcached: Option<bool>,
    /// `--memcached-max-connections`.
    pub memcached_max_connections: Option<usize>,
    /// `--memcached-max-connections-per-peer`.
    pub memcached_max_connections_per_peer: Option<usize>,
    /// `--memcached-request-timeout`.
    #[serde(default, deserialize_with = "request_timeout")]
    pub memcached_request_timeout: Option<Duration>,
    /// `--memcached-group`.
    pub memcached_group: Option<String>,
    /// `--nghttpx-cipher`.
    #[serde(default, deserialize_with = "nghttpx_cipher")]
    pub nghttpx_cipher: Option<NghttpxCipher>,
    /// `--on-change`.
    pub on_change: Option<String>,
    /// `--sinks`.
    #[serde(default, deserialize_with = "sinks")]
    pub sinks: Option<Vec<SinkKind>>,
    /// `--nginx-key-size`: 48 or 80.
    #[serde(default, deserialize_with = "nginx_key_size")]
    pub nginx_key_size: Option<NginxKeySize>,
    /// `--haproxy-socket` (several).
    pub haproxy_socket: Option<Vec<PathBuf>>,
    /// `--verify-tls` (several).
    pub verify_tls: Option<Vec<String>>,
    /// `--metrics`.
    pub metrics: Option<String>,
    /// `--metrics-allow-remote`.
    pub metrics_allow_remote: Option<bool>,
    /// `--store`.
    pub store: Option<String>,
    /// `--store-ca`.
    pub store_ca: Option<PathBuf>,
    /// `--store-cert`.
    pub store_cert: Option<PathBuf>,
    /// `--store-key`.
    pub store_key: Option<PathBuf>,
    /// `--store-user`.
    pub store_user: Option<String>,
    /// `--store-password-file`.
    pub store_password_file: Option<PathBuf>,
    /// `--group` (agent, up).
    pub group: Option<String>,
    /// `--identity`.
    pub identity: Option<PathBuf>,
    /// `--trust` (several): for an agent, the generators whose records it accepts; for a
    /// generator, its peers, whose records it expects.
    pub trust: Option<Vec<String>>,
    /// `--max-stale`.
    pub max_stale: Option<u64>,
    /// `--signing-key`.
    pub signing_key: Option<PathBuf>,
    /// `--group NAME=PUB,...` of the generator, with optional per-group P and L.
    pub groups: Option<Vec<GroupConfig>>,
}

/// One group a generator serves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name.
    pub name: String,
    /// The public keys (`stek-group1:...`) records are sealed to.
    pub recipients: Vec<String>,
    /// This group's period, if not the generator's.
    #[serde(default, deserialize_with = "period")]
    pub period: Option<Duration>,
    /// This group's lifetime, if not the generator's.
    #[serde(default, deserialize_with = "lifetime")]
    pub lifetime: Option<Duration>,
}

/// A duration as [`duration::parse`] reads it; an error names `key`.
fn duration_named<'de, D: Deserializer<'de>>(
    d: D,
    key: &str,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    duration::parse(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format_args!("{key}: {e}")))
}

fn period<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration_named(d, "period")
}

fn lifetime<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration_named(d, "lifetime")
}

fn request_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration_named(d, "memcached_request_timeout")
}

/// `aes-128-cbc` or `aes-256-cbc`, as `--nghttpx-cipher` takes them.
fn nghttpx_cipher<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NghttpxCipher>, D::Error> {
    String::deserialize(d)?
        .parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format_args!("nghttpx_cipher: {e}")))
}

/// Sink names as `--sinks` takes them: `nginx`, `haproxy`, `apache`, `h2o`, `lighttpd`.
fn sinks<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<SinkKind>>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|n| {
            SinkKind::from_name(n).ok_or_else(|| {
                serde::de::Error::custom(format_args!(
                    "sinks: unknown sink {n:?} (nginx, haproxy, apache, h2o, lighttpd)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `nginx_key_size`: the two sizes nginx takes.
fn nginx_key_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NginxKeySize>, D::Error> {
    let n = u64::deserialize(d)?;
    NginxKeySize::from_bytes(n).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format_args!(
            "nginx_key_size: {n} bytes: nginx takes 48 or 80"
        ))
    })
}

impl FileConfig {
    /// Reads and parses `path` (at most 1 MiB).
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        use anyhow::Context as _;
        use std::io::Read as _;
        let f = std::fs::File::open(path)
            .with_context(|| format!("cannot open config file {}", path.display()))?;
        let mut text = String::new();
        f.take(MAX_CONFIG_LEN + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        if text.len() as u64 > MAX_CONFIG_LEN {
            anyhow::bail!("config file {} is larger than 1 MiB", path.display());
        }
        FileConfig::parse(&text).map_err(|e| {
            anyhow::anyhow!(
                "config file {}{}: {}",
                path.display(),
                where_in(&text, &e),
                e.message().trim()
            )
        })
    }

    /// Parses the text of a config file.
    pub fn parse(text: &str) -> Result<FileConfig, toml::de::Error> {
        toml::from_str(text)
    }
}

/// `, line N (`the line`)` for a parse error, on one line: operators' logs and `stek check`
/// print one line per problem.
fn where_in(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return String::new();
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].bytes().filter(|&b| b == b'\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    let line: String = line.chars().take(80).collect();
    format!(", line {line_no} (`{line}`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_and_refuses_typos() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let c = FileConfig::parse(&example).unwrap();
        assert_eq!(c.period, Some(Duration::from_secs(3600)));
        assert_eq!(c.lifetime, Some(Duration::from_secs(18 * 3600)));
        assert_eq!(c.sinks, Some(vec![SinkKind::Nginx, SinkKind::Haproxy]));
        assert_eq!(c.nginx_key_size, Some(NginxKeySize::Bytes80));
        assert_eq!(c.nghttpx_cipher, Some(NghttpxCipher::Aes128Cbc));
        let groups = c.groups.unwrap();
        assert_eq!(groups[0].recipients.len(), 1);
        assert_eq!(groups[0].period, Some(Duration::from_secs(3600)));
        assert_eq!(
            c.haproxy_socket.unwrap(),
            [PathBuf::from("/run/haproxy/admin.sock")]
        );
        let c = FileConfig::parse("sinks = [\"h2o\", \"lighttpd\"]").unwrap();
        assert_eq!(c.sinks, Some(vec![SinkKind::H2o, SinkKind::Lighttpd]));
        assert!(FileConfig::parse("perod = \"1h\"").is_err());
        assert!(
            FileConfig::parse("[[groups]]\nname = \"a\"\nrecipients = []\nperod = \"1h\"").is_err()
        );
    }

    #[test]
    fn an_empty_file_sets_nothing() {
        let c = FileConfig::parse("").unwrap();
        assert_eq!((c.period, c.lifetime, c.sinks), (None, None, None));
        assert!(c.groups.is_none());
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, needle) in [
            ("period = \"x\"", "period: invalid duration \"x\""),
            ("lifetime = \"4\"", "lifetime: invalid duration \"4\""),
            ("period = 4", "invalid type"),
            (
                "nghttpx_cipher = \"aes-128-gcm\"",
                "nghttpx_cipher: unknown nghttpx cipher \"aes-128-gcm\"",
            ),
            (
                "sinks = [\"nginx\", \"iis\"]",
                "sinks: unknown sink \"iis\" (nginx, haproxy, apache, h2o, lighttpd)",
            ),
            (
                "nginx_key_size = 64",
                "nginx_key_size: 64 bytes: nginx takes 48 or 80",
            ),
            ("nginx_key_size = \"48\"", "invalid type"),
            (
                "[[groups]]\nname = \"web\"\nrecipients = []\nlifetime = \"1y\"",
                "lifetime: invalid duration \"1y\"",
            ),
        ] {
            let e = FileConfig::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn load_caps_the_size_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        let mut text = String::from("period = \"1h\"\n");
        while text.len() as u64 <= MAX_CONFIG_LEN {
            text.push_str("# padding padding padding padding padding padding padding padding\n");
        }
        std::fs::write(&big, &text).unwrap();
        let e = FileConfig::load(&big).unwrap_err().to_string();
        assert!(e.contains("larger than 1 MiB"), "{e}");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "period = \"x\"\n").unwrap();
        let e = format!("{:#}", FileConfig::load(&bad).unwrap_err());
        assert!(e.contains("bad.toml, line 1 (`period = \"x\"`)"), "{e}");
        assert!(e.contains("period: invalid duration"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");

        let e = format!(
            "{:#}",
            FileConfig::load(&dir.path().join("none.toml")).unwrap_err()
        );
        assert!(e.contains("cannot open config file"), "{e}");
    }
}
