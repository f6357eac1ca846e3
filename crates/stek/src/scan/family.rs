//! Which server software answered, and that software's fix. (Stand-in with the interface the
//! full module implements: Server header only.)

use super::report::{self, ServerFamily, VersionReport};

/// A server family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// nginx.
    Nginx,
    /// Apache httpd.
    Apache,
    /// HAProxy.
    Haproxy,
    /// Go crypto/tls.
    Go,
    /// Caddy.
    Caddy,
    /// lighttpd.
    Lighttpd,
    /// h2o.
    H2o,
    /// rustls.
    Rustls,
    /// Another OpenSSL server.
    Openssl,
    /// Unknown.
    Unknown,
}

impl Family {
    /// The stable id.
    pub fn id(self) -> &'static str {
        match self {
            Family::Nginx => "nginx",
            Family::Apache => "apache",
            Family::Haproxy => "haproxy",
            Family::Go => "go",
            Family::Caddy => "caddy",
            Family::Lighttpd => "lighttpd",
            Family::H2o => "h2o",
            Family::Rustls => "rustls",
            Family::Openssl => "openssl",
            Family::Unknown => "unknown",
        }
    }

    /// From the stable id.
    pub fn from_id(id: &str) -> Family {
        [
            Family::Nginx,
            Family::Apache,
            Family::Haproxy,
            Family::Go,
            Family::Caddy,
            Family::Lighttpd,
            Family::H2o,
            Family::Rustls,
            Family::Openssl,
        ]
        .into_iter()
        .find(|f| f.id() == id)
        .unwrap_or(Family::Unknown)
    }
}

/// What the scan saw.
#[derive(Debug)]
pub struct Signals<'a> {
    /// The start of the answer to `HEAD /`.
    pub http: Option<&'a [u8]>,
    /// TLS 1.2.
    pub tls12: &'a VersionReport,
    /// TLS 1.3.
    pub tls13: &'a VersionReport,
    /// Families whose key derivation matched a guessed key.
    pub weak_families: &'a [&'a str],
}

/// The family and why.
pub fn identify(s: &Signals<'_>) -> (Family, ServerFamily) {
    let text = String::from_utf8_lossy(s.http.unwrap_or_default()).to_ascii_lowercase();
    let server = text
        .lines()
        .find_map(|l| l.strip_prefix("server:"))
        .map(str::trim)
        .unwrap_or("");
    let f = if server.starts_with("nginx") {
        Family::Nginx
    } else if server.starts_with("apache") {
        Family::Apache
    } else if server.starts_with("caddy") {
        Family::Caddy
    } else {
        Family::Unknown
    };
    (
        f,
        ServerFamily {
            id: f.id().into(),
            name: f.id().into(),
            evidence: Vec::new(),
        },
    )
}

/// A kind of fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    /// Rotate the key.
    Rotate,
    /// Shorten acceptance.
    Shorten,
    /// Weak MAC key.
    WeakMac,
    /// Lifetime above 7 days.
    Hint7Days,
    /// 0-RTT on.
    EarlyData,
    /// psk_ke.
    PskKe,
    /// Session cache lifetime.
    CacheLifetime,
    /// Share one key across a fleet.
    ShareKey,
}

/// That family's fix.
pub fn fix(_family: Family, fix: Fix) -> String {
    match fix {
        Fix::Rotate | Fix::ShareKey => report::ROTATE,
        Fix::Shorten | Fix::CacheLifetime => report::SHORTEN,
        Fix::WeakMac => report::WEAK_MAC,
        Fix::Hint7Days | Fix::EarlyData | Fix::PskKe => report::HINT_7_DAYS,
    }
    .into()
}
