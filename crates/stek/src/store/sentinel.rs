//! Redis Sentinel: which Redis is the primary of a monitored master, asked of the sentinels.
//!
//! `redis+sentinel://H1:P1,H2:P2,.../MASTER` (`rediss+sentinel://` for TLS) names the sentinels
//! and the master they monitor. [`RedisStore`](super::RedisStore) asks them
//! (`SENTINEL get-master-addr-by-name MASTER`, each sentinel in turn until one answers) for the
//! primary's address, talks to that primary, and asks again after a failed command, a `READONLY`
//! refusal (a demoted primary) and every [`FOLLOW_EVERY`], moving to the new primary when the
//! answer changes.
//!
//! Sentinels are reached like the data nodes: with TLS for `rediss+sentinel://` (the same
//! `--store-ca` and client certificate). They are asked without `AUTH` first, as sentinels
//! usually run without a password (they hold no data); a sentinel that answers `NOAUTH` is
//! asked again with the same `--store-user`/`--store-password-file` as the data nodes.
//!
//! This module holds the URL parser and the ask-each-in-turn logic, both without I/O; the
//! connections live in `redis.rs`. The `redis` crate's own `sentinel` feature is not used: its
//! `SentinelClient` hands out connections to the primary of the moment, while the store keeps
//! one `ConnectionManager` per server and its subscriptions, which must all move together, ask
//! again before writes and on `READONLY`, retry a sentinel with credentials after `NOAUTH`, and
//! explain TLS failures like every other Redis connection.

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// The port of a sentinel named without one (Redis's default sentinel port).
pub const DEFAULT_PORT: u16 = 26379;

/// How often a store asks the sentinels for the primary even when every command succeeds: a
/// failover that left the old primary reachable as a replica is noticed at the latest by then
/// (a write on it is refused with `READONLY`, which asks at once).
pub const FOLLOW_EVERY: Duration = Duration::from_secs(5);

/// The least time between two questions to the sentinels, however many commands fail.
pub const ASK_GAP: Duration = Duration::from_millis(250);

/// A host and port, as written in the URL or answered by a sentinel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Addr {
    /// A name or an IP address (IPv6 without brackets).
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Addr {
    /// The `redis://` (or `rediss://`) URL of this address, for the client.
    pub fn url(&self, tls: bool) -> String {
        format!("{}://{self}", if tls { "rediss" } else { "redis" })
    }
}

/// A parsed sentinel URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// `rediss+sentinel://`: TLS to the sentinels and to the data nodes.
    pub tls: bool,
    /// The sentinels, in the URL's order (asked in this order).
    pub sentinels: Vec<Addr>,
    /// The name of the master the sentinels monitor (`sentinel monitor NAME ...`).
    pub master: String,
}

/// Whether `url` is a sentinel URL (`redis+sentinel://` or `rediss+sentinel://`).
pub fn is_sentinel_url(url: &str) -> bool {
    url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
}

impl SentinelUrl {
    /// Parses `redis+sentinel://H1[:P1],H2[:P2],.../MASTER` (`rediss+sentinel://` for TLS). The
    /// error is one line and never repeats the URL (a refused URL may carry a password).
    pub fn parse(url: &str) -> Result<SentinelUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("rediss+sentinel://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("redis+sentinel://") {
            (false, r)
        } else {
            return Err("not a redis+sentinel:// or rediss+sentinel:// URL".into());
        };
        let usage = "use redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER";
        let (hosts, master) = rest
            .split_once('/')
            .ok_or_else(|| format!("no master name after the sentinels: {usage}"))?;
        if hosts.contains('@') {
            return Err(
                "the URL carries credentials: give --store-user and --store-password-file instead"
                    .into(),
            );
        }
        let master = master.strip_suffix('/').unwrap_or(master);
        if master.is_empty() {
            return Err(format!("no master name after the sentinels: {usage}"));
        }
        if !master
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "the master name {master:?} may hold only letters, digits, '-', '_' and '.' (sentinel monitor NAME)"
            ));
        }
        if hosts.is_empty() {
            return Err(format!("no sentinel before the master name: {usage}"));
        }
        let sentinels = hosts
            .split(',')
            .map(parse_addr)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SentinelUrl {
            tls,
            sentinels,
            master: master.to_owned(),
        })
    }
}

/// `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`.
fn parse_addr(s: &str) -> Result<Addr, String> {
    if s.is_empty() {
        return Err("an empty sentinel in the list (two commas in a row?)".into());
    }
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("the sentinel {s:?} lacks its closing ']'"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("the sentinel {s:?}: ':' must follow ']'"))?,
                ),
            ),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || host.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(format!("the sentinel {s:?} has no usable host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("the sentinel {s:?} has no port from 1 to 65535"))?,
    };
    Ok(Addr {
        host: host.to_owned(),
        port,
    })
}

/// Reads a sentinel's answer to `SENTINEL get-master-addr-by-name`: `[host, port]`, or `None`
/// (nil) if it does not monitor that master.
pub fn master_addr(answer: Option<(String, String)>, master: &str) -> Result<Addr, String> {
    let (host, port) = answer.ok_or_else(|| format!("does not monitor a master named {master}"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| "answered an invalid port".to_owned())?;
    if host.is_empty() || host.len() > 255 || host.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err("answered an invalid host".into());
    }
    Ok(Addr { host, port })
}

/// Asks each sentinel in turn with `ask` and returns the first address answered. If none
/// answers, one line naming each sentinel and why: `127.0.0.1:26379: refused; ...`.
pub async fn first_answer<F, Fut>(sentinels: &[Addr], mut ask: F) -> Result<Addr, String>
where
    F: FnMut(Addr) -> Fut,
    Fut: Future<Output = Result<Addr, String>>,
{
    let mut why = Vec::new();
    for s in sentinels {
        match ask(s.clone()).await {
            Ok(primary) => return Ok(primary),
            Err(e) => why.push(format!("{s}: {e}")),
        }
    }
    Err(why.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(host: &str, port: u16) -> Addr {
        Addr {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn sentinel_urls_parse_and_refuse_in_one_line() {
        let u = SentinelUrl::parse("redis+sentinel://a:1,b,[::1]:3/mymaster").unwrap();
        assert!(!u.tls);
        assert_eq!(
            u.sentinels,
            [addr("a", 1), addr("b", DEFAULT_PORT), addr("::1", 3)]
        );
        assert_eq!(u.master, "mymaster");
        assert_eq!(u.sentinels[2].url(true), "rediss://[::1]:3");
        let u = SentinelUrl::parse("rediss+sentinel://127.0.0.1:26379/m/").unwrap();
        assert!(u.tls);
        assert_eq!(u.master, "m");
        for (url, want) in [
            ("redis+sentinel://a:1", "no master name"),
            ("redis+sentinel://a:1/", "no master name"),
            ("redis+sentinel:///m", "no sentinel before the master name"),
            ("redis+sentinel://a:1,,b:2/m", "an empty sentinel"),
            ("redis+sentinel://a:0/m", "no port from 1 to 65535"),
            ("redis+sentinel://a:x/m", "no port from 1 to 65535"),
            ("redis+sentinel://:5/m", "no usable host"),
            ("redis+sentinel://[::1/m", "closing ']'"),
            ("redis+sentinel://a:1/m/0", "may hold only"),
            ("redis+sentinel://u:pw@a:1/m", "carries credentials"),
            ("redis://a:1/m", "not a redis+sentinel://"),
        ] {
            let e = SentinelUrl::parse(url).unwrap_err();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains('\n'), "{url}: {e}");
            assert!(!e.contains("pw"), "{url}: {e}");
        }
    }

    #[test]
    fn a_sentinel_answer_is_checked() {
        assert_eq!(
            master_addr(Some(("10.0.0.2".into(), "6380".into())), "m"),
            Ok(addr("10.0.0.2", 6380))
        );
        assert_eq!(
            master_addr(None, "m").unwrap_err(),
            "does not monitor a master named m"
        );
        assert!(master_addr(Some(("h".into(), "99999".into())), "m").is_err());
        assert!(master_addr(Some(("a b".into(), "1".into())), "m").is_err());
        assert!(master_addr(Some((String::new(), "1".into())), "m").is_err());
    }

    #[tokio::test]
    async fn sentinels_are_asked_in_turn_until_one_answers() {
        let sentinels = [addr("s1", 1), addr("s2", 2), addr("s3", 3)];
        let mut asked = Vec::new();
        let got = first_answer(&sentinels, |s| {
            asked.push(s.port);
            async move {
                match s.port {
                    1 => Err("refused".to_owned()),
                    _ => Ok(addr("primary", 6379 + s.port)),
                }
            }
        })
        .await;
        assert_eq!(got, Ok(addr("primary", 6381)));
        assert_eq!(asked, [1, 2], "the third sentinel is not asked");
        let none = first_answer(&sentinels, |s| async move {
            Err::<Addr, _>(format!("down {}", s.port))
        })
        .await
        .unwrap_err();
        assert_eq!(none, "s1:1: down 1; s2:2: down 2; s3:3: down 3");
        assert_eq!(
            first_answer(&[], |_| async { Ok(addr("x", 1)) }).await,
            Err(String::new())
        );
    }
}
