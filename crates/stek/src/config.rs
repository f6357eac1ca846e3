//! `--config FILE`: a TOML file equivalent to the command-line flags of `stek up`, `stek agent`
//! and `stek generator`. A flag given on the command line wins over the file.
//!
//! ```toml
//! # stek up / stek agent
//! period = "1h"
//! lifetime = "18h"
//! dir = "/run/stek"
//! memcached = ["127.0.0.1:11211"]
//! on_change = "nginx -s reload"
//! sinks = ["nginx", "haproxy"]
//! haproxy_socket = ["/run/haproxy/admin.sock"]
//! metrics = "127.0.0.1:9155"
//! # stek agent
//! store = "redis://127.0.0.1:6379"
//! group = "web"
//! identity = "/etc/stek/web.identity"
//! trust = ["stek-generator1:..."]
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

use serde::Deserialize;

/// The largest config file read.
const MAX_CONFIG_LEN: u64 = 1 << 20;

/// Everything a config file may hold; unknown keys are an error (a typo must not be ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--period`.
    pub period: Option<String>,
    /// `--lifetime`.
    pub lifetime: Option<String>,
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
    /// `--on-change`.
    pub on_change: Option<String>,
    /// `--sinks`.
    pub sinks: Option<Vec<String>>,
    /// `--haproxy-socket` (several).
    pub haproxy_socket: Option<Vec<PathBuf>>,
    /// `--metrics`.
    pub metrics: Option<String>,
    /// `--store`.
    pub store: Option<String>,
    /// `--group` (agent, up).
    pub group: Option<String>,
    /// `--identity`.
    pub identity: Option<PathBuf>,
    /// `--trust` (several).
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
    pub period: Option<String>,
    /// This group's lifetime, if not the generator's.
    pub lifetime: Option<String>,
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
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
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
        let c: FileConfig = toml::from_str(&example).unwrap();
        assert_eq!(c.period.as_deref(), Some("1h"));
        assert_eq!(c.groups.unwrap()[0].recipients.len(), 1);
        assert_eq!(
            c.haproxy_socket.unwrap(),
            [PathBuf::from("/run/haproxy/admin.sock")]
        );
        assert!(toml::from_str::<FileConfig>("perod = \"1h\"").is_err());
    }
}
