//! Which server software a scan talked to, and the fix written in that server's own terms.
//!
//! [`identify`] weighs what the scan saw (no I/O here): the server's answer to `GET / HTTP/1.1`
//! when the port speaks HTTP, the shape of its tickets, how many it sends, the lifetime it
//! announces, and which servers' key layouts a guessed key matched. [`fix`] gives the exact
//! configuration for one family and one kind of finding.
//!
//! Every default below was observed on loopback with Debian 12's packages (nginx 1.22.1,
//! Apache 2.4 mod_ssl, HAProxy 2.6.12, lighttpd 1.4.69, h2o 2.2.5, Caddy 2.6.2, Go 1.19.8 and
//! 1.23.5, OpenSSL 3.0 `s_server`) with `openssl s_client -tls1_2` / `-tls1_3`, which prints
//! every ticket with its lifetime, and checked against the source where one is named:
//!
//! | server | TLS 1.2 hint | TLS 1.3 tickets x lifetime | ticket body | HTTP answer |
//! |---|---|---|---|---|
//! | nginx | 300 | 2 x 300 | RFC 5077 (AES-CBC) | `Server: nginx/1.22.1` |
//! | Apache | 300 | 2 x 300 | RFC 5077 | `Server: Apache/2.4.71 (Debian) ...` |
//! | HAProxy | 7200 | 2 x 7200 | RFC 5077 | no `Server`; own error pages, lowercase names |
//! | lighttpd | 7200 | 2 x 7200 | RFC 5077 | `Server: lighttpd/1.4.69` |
//! | h2o | 3600 | 2 x 3600 | RFC 5077 | `Server: h2o/2.2.5` |
//! | `openssl s_server` | 7200 | 2 x 7200 | RFC 5077 | none to `HEAD` (`-www` answers `GET` only) |
//! | Go 1.19 / Caddy | 0 | 1 x 604800 | name, IV, AES-CTR, MAC | Caddy: `Server: Caddy`; Go: none |
//! | Go 1.23 | 0 | 1 x 604800 | IV, AES-CTR, MAC (no name) | none |
//! | rustls 0.23 `Ticketer` (source) | 43200 | 2 x 43200 | RFC 5077 (aws-lc-rs), AEAD (ring) | the application's |
//! | stek-rustls example | stek's L | 2 x L | name, nonce, AES-GCM-SIV | lowercase names, no `Server` |
//!
//! With tickets off, OpenSSL servers send two 32-byte session-cache ids as TLS 1.3 tickets,
//! with the session timeout as lifetime (nginx, Apache 300; HAProxy, lighttpd, s_server 7200;
//! h2o its `lifetime`); rustls without a ticketer does the same with 86400 s
//! (`server/tls13.rs` `emit_ticket`: `random_vec(32)`, "stateful_lifetime = 24 * 60 * 60").
//!
//! The `Server` header (and the pages only one server writes) wins over the ticket facts: it
//! names the software that answered. When the tickets point elsewhere, most often a proxy or
//! load balancer terminating TLS in front, the evidence says so. Header names all in lowercase
//! are how HAProxy 2.x writes HTTP/1 (captured: `server: nginx/1.22.1` through HAProxy 2.6), so
//! a known `Server` written that way names HAProxy in front of it; without a `Server` header
//! lowercase names are only a hint (Rust servers write them too). Ticket facts narrow the
//! candidates strongest first (shape, the weak-key layout, count, lifetime); one that would
//! leave none is set aside and stated as not fitting.
//!
//! Everything the server sent is untrusted: the HTTP answer is capped at [`MAX_HTTP`] bytes and
//! parsed without indexing past its end, and only cleaned, shortened excerpts of it (printable
//! ASCII, no backticks, at most 64 characters) reach the evidence.

use super::report::{Outcome, ServerFamily, TicketFormat, VersionReport};

/// The most of the HTTP answer looked at; the rest is ignored.
pub const MAX_HTTP: usize = 8192;

/// Header lines looked at (an answer with more is still read, only its first headers count).
const MAX_HEADERS: usize = 100;

/// The longest excerpt of server-sent text that goes into evidence, in characters.
const MAX_EXCERPT: usize = 64;

/// RFC 8446 §4.6.1: Go announces exactly this (`maxSessionTicketLifetime`, 7 days, in
/// crypto/tls `common.go`; set in `handshake_server_tls13.go` `sendSessionTickets`).
const GO_TLS13_LIFETIME: u32 = 604_800;

/// A server software family, as far as its TLS session resumption is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// nginx (and builds of it).
    Nginx,
    /// Apache httpd with mod_ssl.
    Apache,
    /// HAProxy terminating TLS.
    Haproxy,
    /// A Go program using crypto/tls.
    Go,
    /// Caddy (a Go server with its own ticket key rotation, configurable in JSON only).
    Caddy,
    /// lighttpd with mod_openssl.
    Lighttpd,
    /// h2o.
    H2o,
    /// A Rust server using rustls.
    Rustls,
    /// `openssl s_server` or another server on OpenSSL with no family of its own here.
    Openssl,
    /// Nothing pointed to a family.
    Unknown,
}

impl Family {
    /// Every family, [`Family::Unknown`] last.
    pub const ALL: [Family; 10] = [
        Family::Nginx,
        Family::Apache,
        Family::Haproxy,
        Family::Go,
        Family::Caddy,
        Family::Lighttpd,
        Family::H2o,
        Family::Rustls,
        Family::Openssl,
        Family::Unknown,
    ];

    /// The stable id used in JSON (`report::ServerFamily::id`).
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

    /// The name for people.
    pub fn name(self) -> &'static str {
        match self {
            Family::Nginx => "nginx",
            Family::Apache => "Apache httpd (mod_ssl)",
            Family::Haproxy => "HAProxy",
            Family::Go => "Go crypto/tls",
            Family::Caddy => "Caddy",
            Family::Lighttpd => "lighttpd",
            Family::H2o => "h2o",
            Family::Rustls => "rustls",
            Family::Openssl => "openssl s_server or another OpenSSL server",
            // The same words as `ServerFamily::default()`.
            Family::Unknown => "unknown server",
        }
    }

    /// The family with this id (`unknown` included); `None` for any other string.
    pub fn from_id(id: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.id() == id)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// What the scan saw of one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Signals<'a> {
    /// The raw start of the server's answer to `GET / HTTP/1.1` sent over TLS (at most
    /// [`MAX_HTTP`] bytes are looked at; maybe truncated, maybe not HTTP at all); `None` or empty
    /// when nothing came back.
    pub http: Option<&'a [u8]>,
    /// TLS 1.2 as scanned.
    pub tls12: &'a VersionReport,
    /// TLS 1.3 as scanned.
    pub tls13: &'a VersionReport,
    /// Families whose ticket key layout a guessed key matched (ids as [`Family::id`], plus
    /// `nghttpx`, which has no family here and is ignored).
    pub weak_families: &'a [&'a str],
}

/// A set of families, one bit per [`Family`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Set(u16);

impl Set {
    fn of(families: &[Family]) -> Set {
        Set(families.iter().fold(0, |m, f| m | f.bit()))
    }

    fn known() -> Set {
        Set::of(&Family::ALL[..Family::ALL.len() - 1])
    }

    fn and(self, o: Set) -> Set {
        Set(self.0 & o.0)
    }

    fn minus(self, o: Set) -> Set {
        Set(self.0 & !o.0)
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn contains(self, f: Family) -> bool {
        self.0 & f.bit() != 0
    }

    fn members(self) -> Vec<Family> {
        Family::ALL
            .into_iter()
            .filter(|f| self.contains(*f))
            .collect()
    }

    fn single(self) -> Option<Family> {
        match self.members().as_slice() {
            [f] => Some(*f),
            _ => None,
        }
    }

    fn names(self) -> String {
        let names: Vec<&str> = self.members().into_iter().map(Family::name).collect();
        match names.split_last() {
            Some((last, [])) => (*last).to_owned(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => "nothing".to_owned(),
        }
    }
}

/// Go and Caddy (Caddy is a Go program: same tickets; only its `Server` header tells it apart).
fn go_like() -> Set {
    Set::of(&[Family::Go, Family::Caddy])
}

/// Servers whose tickets come from OpenSSL's RFC 5077 machinery.
fn openssl_like() -> Set {
    Set::of(&[
        Family::Nginx,
        Family::Apache,
        Family::Haproxy,
        Family::Lighttpd,
        Family::H2o,
        Family::Openssl,
    ])
}

/// Servers that answer every request over HTTP (they have no other mode).
fn http_only() -> Set {
    Set::of(&[Family::Apache, Family::Lighttpd, Family::H2o, Family::Caddy])
}

/// One observation and the families it fits.
#[derive(Debug)]
struct Clue {
    fits: Set,
    why: String,
}

/// Ticket length `name(16) | IV(16) | AES-CBC | HMAC-SHA256(32)`: the RFC 5077 §4 layout that
/// OpenSSL's servers and rustls's aws-lc-rs `Ticketer` use (`crypto/aws_lc_rs/ticketer.rs`).
fn cbc_shaped(len: usize) -> bool {
    len >= 64 && (len - 64) % 16 == 0
}

/// What each version's tickets say: their shape, then the rest (count, lifetime).
fn ticket_clues(s: &Signals<'_>) -> (Vec<Clue>, Vec<Clue>, Vec<Clue>) {
    let mut shape = Vec::new();
    let mut count = Vec::new();
    let mut life = Vec::new();
    for (label, v, tls13) in [("TLS 1.2", s.tls12, false), ("TLS 1.3", s.tls13, true)] {
        if v.outcome != Outcome::Assessed || !v.tickets_issued {
            continue;
        }
        let len = v.ticket_len.unwrap_or(0);
        match v.ticket_format {
            Some(TicketFormat::CacheId) => shape.push(Clue {
                fits: Set(openssl_like().0 | Family::Rustls.bit()),
                why: format!(
                    "{label} tickets are {len}-byte session-cache ids, not encrypted state \
                     (an OpenSSL server with tickets off, or rustls without a ticketer)"
                ),
            }),
            Some(TicketFormat::Nameless) => shape.push(Clue {
                fits: go_like(),
                why: format!(
                    "{label} tickets carry no key name (Go >= 1.21 crypto/tls: IV, AES-CTR, MAC)"
                ),
            }),
            Some(TicketFormat::Named) if cbc_shaped(len) => shape.push(Clue {
                // Go's AES-CTR body has any length, so one ticket in 16 looks like this too.
                fits: Set(openssl_like().0 | go_like().0 | Family::Rustls.bit()),
                why: format!(
                    "{label} tickets of {len} bytes: key name, IV, whole AES-CBC blocks, \
                     HMAC-SHA256 (the RFC 5077 layout of OpenSSL-based servers)"
                ),
            }),
            Some(TicketFormat::Named) if len > 0 => shape.push(Clue {
                fits: Set(go_like().0 | Family::Rustls.bit()),
                why: format!(
                    "{label} tickets of {len} bytes: a key name, then no whole number of AES \
                     blocks (Go < 1.21 AES-CTR, or an AEAD ticket such as rustls's)"
                ),
            }),
            _ => {}
        }
        if tls13 {
            // OpenSSL sends 2 by default (SSL_CTX_set_num_tickets(3)), rustls 2
            // (`send_tls13_tickets: 2`, server/builder.rs), Go 1 (`sendSessionTickets`).
            match v.tickets_per_connection {
                1 => count.push(Clue {
                    fits: go_like(),
                    why: "1 TLS 1.3 ticket per connection (Go sends 1; OpenSSL and rustls 2)"
                        .into(),
                }),
                2 => count.push(Clue {
                    fits: Set::known().minus(go_like()),
                    why: "2 TLS 1.3 tickets per connection (OpenSSL's and rustls's default)".into(),
                }),
                _ => {}
            }
        }
        let cache = v.ticket_format == Some(TicketFormat::CacheId);
        let by_life: Option<(Set, &str)> = match (v.lifetime_hint, tls13) {
            (Some(GO_TLS13_LIFETIME), true) => Some((go_like(), "Go's fixed TLS 1.3 lifetime")),
            // Go leaves the TLS 1.2 hint at 0 (`newSessionTicketMsg.marshal` writes none);
            // OpenSSL puts its session timeout there on a full handshake.
            (Some(0), false) => Some((go_like(), "Go sends no TLS 1.2 hint")),
            // nginx `ssl_session_timeout` and Apache `SSLSessionCacheTimeout` default to 300 s.
            (Some(300), _) => Some((
                Set::of(&[Family::Nginx, Family::Apache]),
                "nginx's and Apache's default session timeout",
            )),
            // h2o `ssl-session-resumption` `lifetime`, 3600 by default (mode `all`).
            (Some(3600), _) => Some((Set::of(&[Family::H2o]), "h2o's default lifetime")),
            // OpenSSL's default session timeout, left alone by HAProxy (unless
            // `tune.ssl.lifetime`), lighttpd and s_server.
            (Some(7200), _) => Some((
                Set::of(&[Family::Haproxy, Family::Lighttpd, Family::Openssl]),
                "OpenSSL's default session timeout (HAProxy, lighttpd, s_server)",
            )),
            // rustls's `Ticketer` reports twice its 6 h rotation (ticketer.rs `lifetime`).
            (Some(43_200), _) if !cache => Some((
                Set::of(&[Family::Rustls]),
                "rustls's Ticketer lifetime (12 h)",
            )),
            (Some(86_400), true) if cache => Some((
                Set::of(&[Family::Rustls]),
                "rustls's session-cache ticket lifetime (24 h)",
            )),
            _ => None,
        };
        if let (Some((fits, what)), Some(l)) = (by_life, v.lifetime_hint) {
            life.push(Clue {
                fits,
                why: format!("{label} lifetime {l} s: {what}"),
            });
        }
    }
    (shape, count, life)
}

/// The weak-key check's families as a clue.
fn weak_clue(weak: &[&str]) -> Option<Clue> {
    let families: Vec<Family> = weak
        .iter()
        .filter_map(|id| Family::from_id(id))
        .filter(|f| *f != Family::Unknown)
        .collect();
    if families.is_empty() {
        return None;
    }
    let fits = Set::of(&families);
    Some(Clue {
        fits,
        why: format!("a guessed key fits the key layout of {}", fits.names()),
    })
}

/// The answer to `GET /`, as far as it parsed.
#[derive(Debug)]
struct Http<'a> {
    status: &'a [u8],
    headers: Vec<(&'a [u8], &'a [u8])>,
    body: &'a [u8],
}

impl<'a> Http<'a> {
    /// Status line, headers and whatever body came, from at most [`MAX_HTTP`] bytes. `None`
    /// when it does not start like an HTTP response.
    fn parse(raw: &'a [u8]) -> Option<Http<'a>> {
        let raw = raw.get(..MAX_HTTP).unwrap_or(raw);
        if !raw.starts_with(b"HTTP/") {
            return None;
        }
        let (head, body) = match find(raw, b"\r\n\r\n") {
            Some(i) => raw.split_at(i + 4),
            None => match find(raw, b"\n\n") {
                Some(i) => raw.split_at(i + 2),
                // Truncated (or never ended): everything is head.
                None => (raw, &raw[raw.len()..]),
            },
        };
        let mut lines = head.split(|&b| b == b'\n').map(trim);
        let status = lines.next().unwrap_or_default();
        let headers = lines
            .filter(|l| !l.is_empty())
            .take(MAX_HEADERS)
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                let (name, value) = (&line[..colon], &line[colon + 1..]);
                // RFC 9110 §5.1: a field name is a token; anything else is not a header.
                let token = !name.is_empty()
                    && name
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
                token.then(|| (name, trim(value)))
            })
            .collect();
        Some(Http {
            status,
            headers,
            body,
        })
    }

    fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| *v)
    }

    fn header_is(&self, name: &str, value: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.eq_ignore_ascii_case(value.as_bytes()))
    }

    /// Every field name in lowercase, as HAProxy 2.x writes HTTP/1 headers (its own error
    /// pages and what it forwards: `server: nginx/1.22.1` was captured through HAProxy 2.6).
    /// nginx, Apache, lighttpd, Caddy/Go and h2o write at least `Server` or `Date` capitalised.
    fn all_lowercase(&self) -> bool {
        self.headers.len() >= 2
            && self
                .headers
                .iter()
                .all(|(n, _)| !n.iter().any(u8::is_ascii_uppercase))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    b.get(start..end).unwrap_or_default()
}

/// Server-sent bytes made safe for evidence: control characters dropped, anything outside
/// printable ASCII shown as `?`, backticks (which quote the excerpt) as `'`, at most
/// [`MAX_EXCERPT`] characters.
fn excerpt(raw: &[u8]) -> String {
    let mut out = String::new();
    for (i, &b) in raw.iter().filter(|b| !b.is_ascii_control()).enumerate() {
        if i == MAX_EXCERPT {
            out.push_str("...");
            break;
        }
        out.push(match b {
            b'`' => '\'',
            b' ' => ' ',
            _ if b.is_ascii_graphic() => char::from(b),
            _ => '?',
        });
    }
    out
}

/// What the HTTP answer says.
#[derive(Debug, Default)]
struct HttpView {
    /// A family named outright, with why.
    family: Option<(Family, String)>,
    /// Other observations worth stating.
    notes: Vec<String>,
    /// The port answered with HTTP.
    spoke_http: bool,
    /// A hint too weak to name a family alone, weighed with the tickets.
    clue: Option<Clue>,
}

/// The product a `Server` header names, from its first token (`nginx/1.22.1` -> nginx).
fn server_product(value: &[u8]) -> Option<Family> {
    let end = value
        .iter()
        .position(|&b| b == b'/' || b == b' ')
        .unwrap_or(value.len());
    let product = &value[..end];
    // Each captured on loopback: `nginx/1.22.1`, `Apache/2.4.71 (Debian) OpenSSL/3.0.19`,
    // `lighttpd/1.4.69`, `h2o/2.2.5`, `Caddy` (caddyhttp sets it); HAProxy sends none itself.
    [
        ("nginx", Family::Nginx),
        ("apache", Family::Apache),
        ("lighttpd", Family::Lighttpd),
        ("h2o", Family::H2o),
        ("caddy", Family::Caddy),
        ("haproxy", Family::Haproxy),
    ]
    .into_iter()
    .find(|(p, _)| product.eq_ignore_ascii_case(p.as_bytes()))
    .map(|(_, f)| f)
}

fn read_http(raw: Option<&[u8]>) -> HttpView {
    let mut view = HttpView::default();
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        view.notes.push("no HTTP answer to GET / over TLS".into());
        return view;
    };
    let Some(http) = Http::parse(raw) else {
        view.notes.push(format!(
            "the answer to GET / is not HTTP ({} bytes)",
            raw.len()
        ));
        return view;
    };
    view.spoke_http = true;
    let server = http.header("server");
    let lower = http.all_lowercase();
    // HAProxy's built-in error pages (src/http.c `http_err_msgs`; the 503 captured from 2.6.12:
    // `content-length: 107`, `cache-control: no-cache`, `content-type: text/html`, no date;
    // the body, sent for GET only, says "No server is available to handle this request.").
    let haproxy_page = lower
        && server.is_none()
        && http.header_is("cache-control", "no-cache")
        && http.header_is("content-type", "text/html")
        && http.header("date").is_none();
    let haproxy_body = find(http.body, b"No server is available to handle this request.").is_some();
    // `openssl s_server -www` answers GET (never HEAD) with this status line and page
    // (apps/s_server.c `www_body`), captured from OpenSSL 3.0.
    let s_server = http.status == b"HTTP/1.0 200 ok"
        && (find(http.body, b"<HTML><BODY BGCOLOR=\"#ffffff\">").is_some()
            || find(http.body, b"s_server").is_some());
    // Go net/http's `Error` (server.go) sets exactly these two headers; `NotFound` adds the
    // 19-byte body "404 page not found\n". Go writes canonical names and no Server header.
    let go_error = server.is_none()
        && http.header_is("content-type", "text/plain; charset=utf-8")
        && http.header_is("x-content-type-options", "nosniff");
    let status = excerpt(http.status);

    if let Some(value) = server {
        let shown = excerpt(value);
        match server_product(value) {
            Some(f) if lower && f != Family::Haproxy => {
                view.family = Some((
                    Family::Haproxy,
                    format!(
                        "Server header `{shown}` written with every header name in lowercase, \
                         as HAProxy 2.x forwards answers: HAProxy (or another proxy that \
                         lowercases names) terminates TLS in front of {}",
                        f.name()
                    ),
                ));
            }
            Some(f) => view.family = Some((f, format!("Server header `{shown}`"))),
            None => view.notes.push(format!(
                "Server header `{shown}` names no server stek has a fix for"
            )),
        }
    } else if haproxy_page || haproxy_body {
        view.family = Some((
            Family::Haproxy,
            format!("HAProxy's own error page (`{status}`, lowercase headers, no Server header)"),
        ));
    } else if s_server {
        view.family = Some((
            Family::Openssl,
            format!("openssl s_server -www's status page (`{status}`)"),
        ));
    } else if go_error {
        let page = if find(http.body, b"404 page not found").is_some()
            || (http.status.starts_with(b"HTTP/1.1 404") && http.header_is("content-length", "19"))
        {
            " (its \"404 page not found\")"
        } else {
            ""
        };
        view.family = Some((
            Family::Go,
            format!(
                "Go net/http's error answer{page}: `{status}`, text/plain; charset=utf-8 with \
                 X-Content-Type-Options: nosniff, no Server header"
            ),
        ));
    } else if lower {
        // Not decisive: HAProxy 2.x writes names this way, and so do Rust servers on hyper (the
        // `http` crate keeps header names in lowercase and hyper writes them as they are) or
        // hand-written ones (stek-rustls's example server).
        view.clue = Some(Clue {
            fits: Set::of(&[Family::Haproxy, Family::Rustls]),
            why: format!(
                "`{status}` with every header name in lowercase and no Server header (HAProxy 2.x, \
                 or a Rust server)"
            ),
        });
    } else {
        view.notes.push(format!(
            "the HTTP answer (`{status}`) has no Server header and no page stek knows"
        ));
    }
    view
}

/// Which family this endpoint is, with the evidence in words (see the module docs for the
/// signals and their sources).
pub fn identify(s: &Signals<'_>) -> (Family, ServerFamily) {
    let view = read_http(s.http);
    // Strongest first: a later clue that contradicts the earlier ones is set aside, not
    // allowed to override them. The weak-key layout is as telling as the ticket shape.
    let (mut clues, rest, life) = ticket_clues(s);
    clues.extend(weak_clue(s.weak_families));
    clues.extend(rest);
    // A lifetime is one setting away from any value: it can name a server that sent nothing
    // else, but it never contradicts a Server header (nginx with `ssl_session_timeout 1h` is
    // still nginx).
    let header = view.family.as_ref().map(|(f, _)| *f);
    clues.extend(
        life.into_iter()
            .filter(|c| header.is_none_or(|f| c.fits.contains(f))),
    );
    clues.extend(view.clue);
    let mut candidates = Set::known();
    let mut fits = Vec::new();
    let mut misfits = Vec::new();
    for c in clues {
        let narrowed = candidates.and(c.fits);
        if narrowed.is_empty() {
            misfits.push(c.why);
        } else {
            candidates = narrowed;
            fits.push(c.why);
        }
    }
    let told = !fits.is_empty();

    let (family, mut evidence) = if let Some((f, why)) = view.family {
        let mut ev = vec![why];
        if told && candidates.contains(f) {
            ev.push(format!("the tickets agree: {}", fits.join("; ")));
        } else if told {
            ev.push(format!(
                "but the tickets look like {}'s ({}): a proxy or load balancer in front of {} \
                 may terminate TLS; the fix given is {}'s",
                candidates.names(),
                fits.join("; "),
                f.name(),
                f.name()
            ));
        }
        (f, ev)
    } else {
        let mut ev = Vec::new();
        let go = told && candidates.minus(go_like()).is_empty();
        if !view.spoke_http && !go {
            let not_http = candidates.minus(http_only());
            if !not_http.is_empty() && not_http != candidates {
                candidates = not_http;
            }
        }
        let family = if go {
            // Only the Server header tells Caddy from another Go program.
            ev.push(
                "Go crypto/tls (Caddy or another Go server; Caddy would say `Server: Caddy`)"
                    .into(),
            );
            Family::Go
        } else if let Some(f) = candidates.single() {
            f
        } else if !view.spoke_http
            && told
            && candidates.contains(Family::Openssl)
            && candidates.minus(openssl_like()).is_empty()
        {
            ev.push(format!(
                "an OpenSSL-based server that does not answer HTTP ({} look the same here)",
                candidates.minus(Set::of(&[Family::Openssl])).names()
            ));
            Family::Openssl
        } else {
            if told {
                ev.push(format!("could be {}", candidates.names()));
            }
            Family::Unknown
        };
        ev.extend(fits);
        (family, ev)
    };
    if !misfits.is_empty() {
        evidence.push(format!("does not fit: {}", misfits.join("; ")));
    }
    if family != Family::Unknown || !evidence.is_empty() {
        evidence.extend(view.notes);
    }
    (
        family,
        ServerFamily {
            id: family.id().into(),
            name: family.name().into(),
            evidence,
        },
    )
}

/// What a finding asks to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fix {
    /// The ticket key lives too long or is guessable: rotate it (or turn tickets off).
    Rotate,
    /// Old tickets are still accepted: make them expire sooner.
    Shorten,
    /// Only the ticket MAC key is guessable.
    WeakMac,
    /// The TLS 1.3 ticket lifetime exceeds 7 days.
    Hint7Days,
    /// TLS 1.3 0-RTT is on.
    EarlyData,
    /// TLS 1.3 resumption without (EC)DHE (`psk_ke`).
    PskKe,
    /// An old session-cache entry (a stateful TLS 1.3 ticket or session ID) still resumes.
    CacheLifetime,
    /// The addresses of one name do not resume each other's tickets.
    ShareKey,
}

impl Fix {
    /// Every kind of fix.
    pub const ALL: [Fix; 8] = [
        Fix::Rotate,
        Fix::Shorten,
        Fix::WeakMac,
        Fix::Hint7Days,
        Fix::EarlyData,
        Fix::PskKe,
        Fix::CacheLifetime,
        Fix::ShareKey,
    ];
}

/// The exact configuration for `fix` on a server of `family`, as true for the versions in
/// Debian 12 (bookworm). Where stek can feed the server (nginx, Apache, HAProxy, rustls through
/// stek-rustls), the text says how; elsewhere it gives the server's own mechanism.
pub fn fix(family: Family, fix: Fix) -> String {
    text(family, fix).to_owned()
}

fn text(family: Family, fix: Fix) -> &'static str {
    use Family as F;
    use Fix as X;
    match (family, fix) {
        // nginx: https://nginx.org/en/docs/http/ngx_http_ssl_module.html (ssl_session_ticket_key:
        // the first key encrypts, all decrypt; ssl_session_timeout default 5m; ssl_early_data
        // default off; ssl_conf_command since 1.19.4, accepted by Debian's 1.22.1 `nginx -t`);
        // the include file is stek's nginx sink (README, "nginx").
        (F::Nginx, X::Rotate) => {
            "nginx: run `stek up --on-change 'nginx -s reload'` and put\n\
             `include /run/stek/nginx/tickets.conf;` in the server block (one `ssl_session_ticket_key`\n\
             per key: the first encrypts, the others only decrypt, expired ones leave the file);\n\
             or turn tickets off: `ssl_session_tickets off;`"
        }
        (F::Nginx, X::Shorten) => {
            "nginx: `ssl_session_timeout 18h;` (or less: it is the ticket lifetime announced and\n\
             enforced), with keys rotated by stek (`stek up --lifetime 18h`) so older keys leave\n\
             the included file and are erased"
        }
        (F::Nginx, X::WeakMac) => {
            "nginx: replace the key files with stek's random 80-byte keys\n\
             (`include /run/stek/nginx/tickets.conf;` with `stek up --on-change 'nginx -s reload'`);\n\
             or turn tickets off: `ssl_session_tickets off;`"
        }
        (F::Nginx, X::Hint7Days) => {
            "RFC 8446 §4.6.1 caps ticket_lifetime at 604800 s (7 days); clients ignore longer tickets.\n\
             nginx: `ssl_session_timeout 18h;` (at most 7d: it is the TLS 1.3 ticket lifetime)"
        }
        (F::Nginx, X::EarlyData) => {
            "nginx: `ssl_early_data off;` (the default) in every server block that listens with ssl"
        }
        (F::Nginx, X::PskKe) => {
            "nginx: OpenSSL resumes without (EC)DHE only when `AllowNoDHEKEX` is set: remove it, or\n\
             add `ssl_conf_command Options -AllowNoDHEKEX;` (look for it in openssl.cnf `Options` too)"
        }
        (F::Nginx, X::CacheLifetime) => {
            "nginx: `ssl_session_timeout 1h;` (or the longest you accept) bounds how long a cached\n\
             session resumes; `ssl_session_cache off;` stops resumption from the session cache"
        }
        // Cross-host resumption between two nginx needs the same keys and certificate
        // (shared/notes/real-servers.md, verified on loopback).
        (F::Nginx, X::ShareKey) => {
            "nginx: give every host the same rotating keys: `stek generator` + `stek agent` on each\n\
             (README, fleet) writing /run/stek/nginx/tickets.conf, included in every server block,\n\
             and the same certificate on every host"
        }

        // Apache: https://httpd.apache.org/docs/2.4/mod/mod_ssl.html (SSLSessionTicketKeyFile:
        // one 48-byte key; SSLSessionCacheTimeout default 300, applies to RFC 5077 tickets since
        // 2.4.10; SSLSessionTickets; SSLOpenSSLConfCmd); the all-zero MAC key and the session
        // context from ServerName: shared/notes/real-servers.md. Debian's mod_ssl.so imports no
        // OpenSSL early-data function (`strings`), so it never enables 0-RTT.
        (F::Apache, X::Rotate) => {
            "Apache: `SSLSessionTicketKeyFile /run/stek/apache/ticket.key` (stek's 48-byte key) with\n\
             `stek up --on-change 'apachectl graceful'` (Apache holds one key: each rotation ends all\n\
             earlier tickets); or turn tickets off: `SSLSessionTickets off`\n\
             (`SSLOpenSSLConfCmd Options -SessionTicket` on builds without it)"
        }
        (F::Apache, X::Shorten) => {
            "Apache: `SSLSessionCacheTimeout 64800` (or less, seconds; since 2.4.10 it also limits\n\
             ticket resumption), with the key rotated by stek\n\
             (`SSLSessionTicketKeyFile /run/stek/apache/ticket.key`)"
        }
        (F::Apache, X::WeakMac) => {
            "Apache 2.4 mod_ssl on OpenSSL 3 MACs its tickets with an all-zero key whatever\n\
             `SSLSessionTicketKeyFile` holds (only the AES half is used): keep the key rotating with\n\
             stek so each AES key lives briefly (`stek up --on-change 'apachectl graceful'`), or turn\n\
             tickets off: `SSLSessionTickets off`"
        }
        (F::Apache, X::Hint7Days) => {
            "RFC 8446 §4.6.1 caps ticket_lifetime at 604800 s (7 days); clients ignore longer tickets.\n\
             Apache: `SSLSessionCacheTimeout 64800` (at most 604800: it is the announced lifetime)"
        }
        (F::Apache, X::EarlyData) => {
            "Apache: mod_ssl 2.4 has no 0-RTT setting and never enables it: a server in front of\n\
             Apache terminates TLS with 0-RTT on; turn it off there"
        }
        (F::Apache, X::PskKe) => {
            "Apache: `SSLOpenSSLConfCmd Options -AllowNoDHEKEX` (OpenSSL resumes without (EC)DHE\n\
             only with that option; look for `AllowNoDHEKEX` in openssl.cnf `Options` too)"
        }
        (F::Apache, X::CacheLifetime) => {
            "Apache: `SSLSessionCacheTimeout 300` (or the longest you accept, seconds) bounds how long\n\
             a session from the `SSLSessionCache` or OpenSSL's own cache resumes"
        }
        (F::Apache, X::ShareKey) => {
            "Apache: the same `SSLSessionTicketKeyFile` on every host (`stek agent` writes\n\
             /run/stek/apache/ticket.key) and the same `ServerName` in the virtual host (the session\n\
             context is derived from it)"
        }

        // HAProxy 2.6: https://docs.haproxy.org/2.6/configuration.html (tls-ticket-keys,
        // no-tls-tickets, allow-0rtt, tune.ssl.lifetime, tune.ssl.cachesize), all accepted by
        // `haproxy -c`; `tune.ssl.lifetime 600` gave 600 s hints on loopback, without it 7200 s;
        // with `tune.ssl.cachesize 0` a TLS 1.2 session ID no longer resumed (it did without).
        // The 2.6 binary holds no keyword about (EC)DHE-less resumption. Runtime rotation:
        // README, "HAProxy 2.6".
        (F::Haproxy, X::Rotate) => {
            "HAProxy: `bind ... tls-ticket-keys /run/stek/haproxy/tickets.keys` with\n\
             `stek up --haproxy-socket /run/haproxy/admin.sock` (runtime rotation, no reload);\n\
             or turn tickets off: `no-tls-tickets` on the bind line"
        }
        (F::Haproxy, X::Shorten) => {
            "HAProxy: `tune.ssl.lifetime 1h` in `global` (it becomes the announced ticket lifetime),\n\
             and stek's runtime rotation with `--lifetime` = `--period` (a key leaves HAProxy's ring of\n\
             3 keys two periods after it last encrypted)"
        }
        (F::Haproxy, X::WeakMac) => {
            "HAProxy: load random keys: `tls-ticket-keys /run/stek/haproxy/tickets.keys` with\n\
             `stek up --haproxy-socket /run/haproxy/admin.sock`; or `no-tls-tickets` on the bind line"
        }
        (F::Haproxy, X::Hint7Days) => {
            "RFC 8446 §4.6.1 caps ticket_lifetime at 604800 s (7 days); clients ignore longer tickets.\n\
             HAProxy: `tune.ssl.lifetime 18h` in `global` (at most 7d)"
        }
        (F::Haproxy, X::EarlyData) => {
            "HAProxy: remove `allow-0rtt` from the bind line (0-RTT is off without it)"
        }
        (F::Haproxy, X::PskKe) => {
            "HAProxy: OpenSSL resumes without (EC)DHE only when `AllowNoDHEKEX` is set, and HAProxy\n\
             2.6 has no keyword for it: remove `AllowNoDHEKEX` from the `Options` of the openssl.cnf\n\
             HAProxy loads"
        }
        (F::Haproxy, X::CacheLifetime) => {
            "HAProxy: `tune.ssl.lifetime 300` in `global` (how long a cached session resumes), or\n\
             `tune.ssl.cachesize 0` to turn the session cache off"
        }
        (F::Haproxy, X::ShareKey) => {
            "HAProxy: the same `tls-ticket-keys` ring on every host: `stek agent` (fed by\n\
             `stek generator`) with `--haproxy-socket` on each"
        }

        // Go: https://pkg.go.dev/crypto/tls#Config.SetSessionTicketKeys and
        // /usr/lib/go-1.19/src/crypto/tls: common.go (ticketKeyRotation 24 h, ticketKeyLifetime
        // 7 days, maxSessionTicketLifetime), handshake_server_tls13.go (only pskModeDHE is
        // accepted; no early data is ever accepted over TCP). No server-side session cache.
        (F::Go, X::Rotate) => {
            "Go crypto/tls: automatic keys rotate every 24 h and stay valid 7 days. To rotate faster,\n\
             call `tls.Config.SetSessionTicketKeys(keys)` every period with a new 32-byte key from\n\
             crypto/rand first (it encrypts) and the previous keys after it (decrypt only), dropping\n\
             each once its tickets should no longer resume; or set `SessionTicketsDisabled: true`"
        }
        (F::Go, X::Shorten) => {
            "Go crypto/tls: automatic keys decrypt for 7 days and cannot be shortened: manage keys\n\
             with `SetSessionTicketKeys`, keeping each in the list only as long as its tickets may\n\
             resume, or set `SessionTicketsDisabled: true`"
        }
        (F::Go, X::WeakMac) => {
            "Go crypto/tls: the keys given to `SetSessionTicketKeys` are guessable: fill each 32-byte\n\
             key from crypto/rand (`rand.Read(key[:])`) and rotate them; or set\n\
             `SessionTicketsDisabled: true`"
        }
        (F::Go, X::Hint7Days) => {
            "Go crypto/tls always announces 604800 s, never more (`maxSessionTicketLifetime`): a\n\
             longer lifetime comes from another server terminating TLS in front of the Go program;\n\
             fix it there"
        }
        (F::Go, X::EarlyData) => {
            "Go crypto/tls accepts no 0-RTT data over TCP: another server terminates TLS in front of\n\
             the Go program; turn 0-RTT off there"
        }
        (F::Go, X::PskKe) => {
            "Go crypto/tls resumes TLS 1.3 only with psk_dhe_ke: another server terminates TLS in\n\
             front of the Go program; fix it there"
        }
        (F::Go, X::CacheLifetime) => {
            "Go crypto/tls keeps no server-side session cache (its tickets are encrypted state): a\n\
             session-cache id comes from another server terminating TLS in front of the Go program"
        }
        (F::Go, X::ShareKey) => {
            "Go crypto/tls: call `SetSessionTicketKeys` with the same keys, in the same order, on every\n\
             server of this name, and rotate them together"
        }

        // Caddy 2.6: https://caddyserver.com/docs/json/apps/tls/session_tickets/
        // (`rotation_interval` default 12h, `max_keys` default 4, `disabled`, `key_source`
        // with modules `tls.stek.standard` / `tls.stek.distributed`, both in `caddy
        // list-modules`); Caddy rejects unknown JSON fields, and accepted these on loopback.
        // caddytls/sessiontickets.go `RotateSTEKs`: each rotation prepends a new key and drops
        // the oldest past `max_keys`, so a ticket resumes for about interval x max_keys.
        // The Caddyfile has no session_tickets option (shared/notes/real-servers.md).
        (F::Caddy, X::Rotate) => {
            "Caddy: in the JSON config, `\"apps\": {\"tls\": {\"session_tickets\": {\"rotation_interval\":\n\
             \"1h\", \"max_keys\": 4}}}` (defaults 12h and 4), or `\"session_tickets\": {\"disabled\": true}`.\n\
             The Caddyfile cannot set it: convert it with `caddy adapt --config Caddyfile`, add the\n\
             block and run Caddy with the JSON"
        }
        (F::Caddy, X::Shorten) => {
            "Caddy: a ticket resumes while its key is among the `max_keys` kept, about\n\
             `rotation_interval` x `max_keys`: lower them in `apps.tls.session_tickets` (JSON config\n\
             only), e.g. `\"rotation_interval\": \"1h\", \"max_keys\": 4`"
        }
        (F::Caddy, X::WeakMac) => {
            "Caddy: the `key_source` of `apps.tls.session_tickets` hands out guessable keys: use the\n\
             default `{\"provider\": \"standard\"}` (random keys), or `distributed` with storage only\n\
             Caddy can read; or `\"session_tickets\": {\"disabled\": true}`"
        }
        (F::Caddy, X::Hint7Days) => {
            "Caddy (Go crypto/tls) always announces 604800 s, never more: a longer lifetime comes from\n\
             another server terminating TLS in front of Caddy; fix it there"
        }
        (F::Caddy, X::EarlyData) => {
            "Caddy (Go crypto/tls) accepts no 0-RTT data over TCP: another server terminates TLS in\n\
             front of Caddy; turn 0-RTT off there"
        }
        (F::Caddy, X::PskKe) => {
            "Caddy (Go crypto/tls) resumes TLS 1.3 only with psk_dhe_ke: another server terminates\n\
             TLS in front of Caddy; fix it there"
        }
        (F::Caddy, X::CacheLifetime) => {
            "Caddy (Go crypto/tls) keeps no server-side session cache: a session-cache id comes from\n\
             another server terminating TLS in front of Caddy"
        }
        (F::Caddy, X::ShareKey) => {
            "Caddy: `\"session_tickets\": {\"key_source\": {\"provider\": \"distributed\", \"storage\":\n\
             {...}}}` in `apps.tls` (JSON config), with storage every instance shares"
        }

        // lighttpd 1.4.69: ssl.stek-file format, the 64 s check, 3 keys and the built-in 8 h /
        // 1 day rotation from the commit that added it
        // (https://git.lighttpd.net/lighttpd/lighttpd1.4/commit/5bbf0d34cacabd936a2a602d0fccc609077e7440),
        // the key name read back from tickets on loopback; `Options -SessionTicket` turned
        // tickets off on loopback; the session cache is the feature flag "ssl.session-cache",
        // off by default (mod_openssl.c `config_feature_bool(srv, "ssl.session-cache", 0)`).
        // Debian's mod_openssl.so imports neither OpenSSL's early-data functions nor
        // SSL_CTX_set_timeout (`strings`): no 0-RTT, and OpenSSL's 7200 s session timeout.
        (F::Lighttpd, X::Rotate) => {
            "lighttpd: `ssl.stek-file = \"/dev/shm/lighttpd/stek\"`, 92 bytes: int32 version 0, int32\n\
             activation, int32 expiry (host byte order, Unix seconds), key name 16, HMAC key 32, AES\n\
             key 32. Write a new random one (temporary file + rename) every period: lighttpd checks\n\
             its mtime every 64 s and keeps 3 keys. Or turn tickets off:\n\
             `ssl.openssl.ssl-conf-cmd = (\"Options\" => \"-SessionTicket\")`"
        }
        (F::Lighttpd, X::Shorten) => {
            "lighttpd: a ticket resumes while its key is among the 3 lighttpd keeps: rewrite\n\
             `ssl.stek-file` every L/3 (L = the oldest ticket you accept) with expiry = activation + L\n\
             (without the file lighttpd makes a key every 8 h and accepts tickets for a day)"
        }
        (F::Lighttpd, X::WeakMac) => {
            "lighttpd: fill the 80 key bytes of `ssl.stek-file` from a random source (after the\n\
             12-byte header) and rewrite it every period; or\n\
             `ssl.openssl.ssl-conf-cmd = (\"Options\" => \"-SessionTicket\")`"
        }
        (F::Lighttpd, X::Hint7Days) => {
            "lighttpd 1.4.69 announces OpenSSL's default 7200 s and never sets a session timeout of\n\
             its own: a longer lifetime comes from another server terminating TLS in front of\n\
             lighttpd; fix it there"
        }
        (F::Lighttpd, X::EarlyData) => {
            "lighttpd 1.4.69 (mod_openssl) never enables 0-RTT: another server terminates TLS in front\n\
             of lighttpd; turn 0-RTT off there"
        }
        (F::Lighttpd, X::PskKe) => {
            "lighttpd: `ssl.openssl.ssl-conf-cmd = (\"Options\" => \"-AllowNoDHEKEX\")` (OpenSSL resumes\n\
             without (EC)DHE only with that option; several options go in one comma-separated value,\n\
             e.g. \"-SessionTicket,-AllowNoDHEKEX\")"
        }
        (F::Lighttpd, X::CacheLifetime) => {
            "lighttpd keeps no session cache unless\n\
             `server.feature-flags += (\"ssl.session-cache\" => \"enable\")`: remove that flag to stop\n\
             resumption from the session cache"
        }
        (F::Lighttpd, X::ShareKey) => {
            "lighttpd: write the same `ssl.stek-file` (same bytes, activation in the future) to every\n\
             host at each rotation"
        }

        // h2o 2.2.5: https://h2o.examp1e.net/configure/base_directives.html#ssl-session-resumption
        // (`mode` off|all|cache|ticket, `ticket-store` internal|file, `ticket-file`, `lifetime`:
        // the error messages in Debian's binary list the same). On loopback: a ticket-file entry
        // needs a 192-hex-digit `key`, its `name` comes back on the tickets; `lifetime: 1800`
        // gave 1800 s hints with mode all, 7200 s with mode ticket; `mode: cache` sent 32-byte
        // ids; no directive about early data in the binary, and tickets allow none.
        (F::H2o, X::Rotate) => {
            "h2o: `ssl-session-resumption: {mode: ticket, ticket-store: file, ticket-file:\n\
             /dev/shm/h2o/tickets.yaml}`: a YAML list of `name` (32 hex digits), `cipher: aes-256-cbc`,\n\
             `hash: sha256`, `key` (192 hex digits: AES key, then HMAC key), `not_before`, `not_after`.\n\
             Rewrite it every period (h2o rereads it when it changes and encrypts with the newest\n\
             entry valid now). Or no tickets: `mode: cache`"
        }
        (F::H2o, X::Shorten) => {
            "h2o: drop `ticket-file` entries once their tickets should no longer resume; with the\n\
             built-in store (`mode: all`, the default) set `lifetime:` under `ssl-session-resumption`\n\
             (seconds, 3600 by default)"
        }
        (F::H2o, X::WeakMac) => {
            "h2o: random `key` values (192 hex digits each) in the `ssl-session-resumption`\n\
             `ticket-file`, rewritten every period; or `mode: cache`"
        }
        (F::H2o, X::Hint7Days) => {
            "RFC 8446 §4.6.1 caps ticket_lifetime at 604800 s (7 days); clients ignore longer tickets.\n\
             h2o: `ssl-session-resumption: {lifetime: 64800}` (seconds, at most 604800)"
        }
        (F::H2o, X::EarlyData) => {
            "h2o 2.2.5 has no directive for 0-RTT and its tickets allow no early data: another server\n\
             terminates TLS in front of h2o; turn 0-RTT off there"
        }
        (F::H2o, X::PskKe) => {
            "h2o: OpenSSL resumes without (EC)DHE only when `AllowNoDHEKEX` is set, and h2o 2.2.5 has\n\
             no directive for it: remove `AllowNoDHEKEX` from the `Options` of the openssl.cnf h2o\n\
             loads"
        }
        (F::H2o, X::CacheLifetime) => {
            "h2o: `ssl-session-resumption: {mode: all, lifetime: 300}` (seconds: how long a cached\n\
             session resumes; 3600 by default), or `mode: ticket` to resume from tickets only"
        }
        (F::H2o, X::ShareKey) => {
            "h2o: the same `ssl-session-resumption` `ticket-file` on every host (same entries,\n\
             written before their `not_before`)"
        }

        // rustls 0.23 (server/server_conn.rs `ticketer`, `max_early_data_size`,
        // `session_storage`; crypto/aws_lc_rs/ticketer.rs: 6 h rotation, 12 h lifetime;
        // server/tls13.rs: psk_dhe_ke only, stateful tickets announced for 24 h;
        // server/handy.rs `NoServerSessionStorage`) and stek-rustls (crates/stek-rustls docs).
        (F::Rustls, X::Rotate) => {
            "rustls: set `ServerConfig::ticketer` to `stek_rustls::Ticketer`, fed by `stek up` over its\n\
             memcached socket (`stek_rustls::memcached::Poller`); or rustls's own\n\
             `rustls::crypto::aws_lc_rs::Ticketer::new()` (a new key every 6 h, 12 h lifetime, per\n\
             process); or no ticketer (the default: no tickets)"
        }
        (F::Rustls, X::Shorten) => {
            "rustls: tickets resume for `ProducesTickets::lifetime()`: with stek-rustls that is stek's\n\
             `--lifetime` (e.g. `stek up --lifetime 6h`); rustls's own `Ticketer` keeps keys 12 h"
        }
        (F::Rustls, X::WeakMac) => {
            "rustls: use `stek_rustls::Ticketer` or rustls's `Ticketer::new()` (random keys); a\n\
             `ProducesTickets` of your own must draw its keys from a CSPRNG and rotate them"
        }
        (F::Rustls, X::Hint7Days) => {
            "RFC 8446 §4.6.1 caps ticket_lifetime at 604800 s (7 days); clients ignore longer tickets.\n\
             rustls announces `ProducesTickets::lifetime()`: stek-rustls reports stek's `--lifetime`\n\
             (at most 7 d); fix the ticketer that reports more"
        }
        (F::Rustls, X::EarlyData) => {
            "rustls: `ServerConfig::max_early_data_size = 0` (the default)"
        }
        (F::Rustls, X::PskKe) => {
            "rustls resumes TLS 1.3 only with psk_dhe_ke: another server terminates TLS in front of\n\
             the rustls program; fix it there"
        }
        (F::Rustls, X::CacheLifetime) => {
            "rustls: without a ticketer, TLS 1.3 tickets are ids into `ServerConfig::session_storage`\n\
             (`ServerSessionMemoryCache`, announced for 24 h): set a ticketer (stek-rustls), or\n\
             `session_storage = Arc::new(rustls::server::NoServerSessionStorage {})`"
        }
        (F::Rustls, X::ShareKey) => {
            "rustls: `stek_rustls::Ticketer` on every host, each fed by the `stek agent` of the same\n\
             group"
        }

        // OpenSSL 3.0: SSL_CTX_set_tlsext_ticket_key_cb(3) (the evp variant), SSL_CTX_set_timeout(3)
        // (default 7200, seen as s_server's hint), SSL_CTX_set_max_early_data(3),
        // SSL_CTX_set_options(3) (SSL_OP_NO_TICKET, SSL_OP_ALLOW_NO_DHE_KEX),
        // SSL_CTX_set_session_cache_mode(3); `openssl s_server -help` (-no_ticket, -no_cache,
        // -early_data, -max_early_data, -allow_no_dhe_kex; no session timeout option).
        (F::Openssl, X::Rotate) => {
            "OpenSSL server: with no key configured OpenSSL makes one random ticket key per SSL_CTX for\n\
             the life of the process. Rotate it with `SSL_CTX_set_tlsext_ticket_key_evp_cb` (a new\n\
             random key encrypts each period, older keys only decrypt until their tickets expire), or\n\
             turn tickets off: `SSL_OP_NO_TICKET` (`openssl s_server -no_ticket`)"
        }
        (F::Openssl, X::Shorten) => {
            "OpenSSL server: `SSL_CTX_set_timeout(ctx, seconds)` (default 7200) bounds the announced and\n\
             accepted lifetime (s_server has no option for it), and erase old ticket keys in the\n\
             `SSL_CTX_set_tlsext_ticket_key_evp_cb` callback"
        }
        (F::Openssl, X::WeakMac) => {
            "OpenSSL server: the keys handed to `SSL_CTX_set_tlsext_ticket_key_evp_cb` (or\n\
             `SSL_CTX_set_tlsext_ticket_keys`) are guessable: draw them with `RAND_bytes` and rotate\n\
             them; or `SSL_OP_NO_TICKET`"
        }
        (F::Openssl, X::Hint7Days) => {
            "RFC 8446 §4.6.1 caps ticket_lifetime at 604800 s (7 days); clients ignore longer tickets.\n\
             OpenSSL server: `SSL_CTX_set_timeout(ctx, 64800)` (at most 604800)"
        }
        (F::Openssl, X::EarlyData) => {
            "OpenSSL server: `SSL_CTX_set_max_early_data(ctx, 0)` (the default; s_server: drop\n\
             `-early_data` and `-max_early_data`)"
        }
        (F::Openssl, X::PskKe) => {
            "OpenSSL server: clear `SSL_OP_ALLOW_NO_DHE_KEX` (s_server: drop `-allow_no_dhe_kex`;\n\
             openssl.cnf: no `AllowNoDHEKEX` in `Options`)"
        }
        (F::Openssl, X::CacheLifetime) => {
            "OpenSSL server: `SSL_CTX_set_timeout(ctx, seconds)` bounds how long a cached session\n\
             resumes; `SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF)` (s_server:\n\
             `-no_cache`) stops it"
        }
        (F::Openssl, X::ShareKey) => {
            "OpenSSL servers: the same keys on every host through\n\
             `SSL_CTX_set_tlsext_ticket_key_evp_cb` (or `SSL_CTX_set_tlsext_ticket_keys`), rotated\n\
             together, and the same `SSL_CTX_set_session_id_context`"
        }

        // What to achieve, whatever the server: no product's settings named.
        (F::Unknown, X::Rotate) => {
            "Rotate the session ticket key every period P (an hour, say): a fresh random key encrypts\n\
             new tickets, earlier keys only decrypt for the ticket lifetime L and are then erased;\n\
             every server behind this name needs the same keys. If the server cannot rotate its key,\n\
             turn session tickets off. (The server software was not identified: look for its\n\
             session ticket key setting.)"
        }
        (F::Unknown, X::Shorten) => {
            "Make tickets expire sooner: lower the server's session (ticket) lifetime to what you\n\
             accept, and keep an old ticket key for decryption no longer than that before erasing it"
        }
        (F::Unknown, X::WeakMac) => {
            "The ticket MAC key is guessable: give the server ticket keys drawn from a random source\n\
             and rotate them, or turn session tickets off"
        }
        (F::Unknown, X::Hint7Days) => {
            "RFC 8446 §4.6.1 caps ticket_lifetime at 604800 s (7 days); clients ignore longer tickets.\n\
             Lower the server's session (ticket) lifetime to at most that"
        }
        (F::Unknown, X::EarlyData) => {
            "Turn TLS 1.3 early data (0-RTT) off in the server's TLS settings: early data can be\n\
             replayed"
        }
        (F::Unknown, X::PskKe) => {
            "Allow only the psk_dhe_ke mode for TLS 1.3 resumption in the server's TLS settings: with\n\
             psk_ke a resumed session has no forward secrecy"
        }
        (F::Unknown, X::CacheLifetime) => {
            "Lower the server's session-cache lifetime (how long a cached session may resume) to what\n\
             you accept, or turn the session cache off"
        }
        (F::Unknown, X::ShareKey) => {
            "Give every server of this name the same rotating ticket keys (one key generator, every\n\
             host installs the same key set), or accept full handshakes when clients move between\n\
             addresses"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Answers to `HEAD / HTTP/1.1` (Host, Connection: close) over TLS, captured on loopback from
    // Debian 12's packages with Python's ssl module (`sock.sendall(request); sock.recv(8192)`
    // until EOF), each server in its default configuration with a self-signed certificate.
    const NGINX: &[u8] = b"HTTP/1.1 403 Forbidden\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 09:37:33 GMT\r\nContent-Type: text/html\r\nContent-Length: 153\r\nConnection: close\r\n\r\n";
    const APACHE: &[u8] = b"HTTP/1.1 404 Not Found\r\nDate: Mon, 07 Dec 2026 09:37:44 GMT\r\nServer: Apache/2.4.71 (Debian) OpenSSL/3.0.19\r\nConnection: close\r\nContent-Type: text/html; charset=iso-8859-1\r\n\r\n";
    // HAProxy 2.6.12, a frontend whose backend has no server.
    const HAPROXY_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 107\r\ncache-control: no-cache\r\ncontent-type: text/html\r\nconnection: close\r\n\r\n";
    // The same HAProxy with nginx 1.22.1 (plain HTTP) as its backend.
    const HAPROXY_NGINX: &[u8] = b"HTTP/1.1 403 Forbidden\r\nserver: nginx/1.22.1\r\ndate: Mon, 07 Dec 2026 09:43:31 GMT\r\ncontent-type: text/html\r\ncontent-length: 153\r\nconnection: close\r\n\r\n";
    // Caddy 2.6.2 from a Caddyfile with a site and no handler.
    const CADDY: &[u8] = b"HTTP/1.1 200 OK\r\nAlt-Svc: h3=\":53909\"; ma=2592000\r\nServer: Caddy\r\nDate: Mon, 07 Dec 2026 09:38:00 GMT\r\nConnection: close\r\n\r\n";
    // `http.ServeTLS(ln, nil, cert, key)` built with Go 1.19.8 (Go 1.23.5 answered the same).
    const GO: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nDate: Mon, 07 Dec 2026 09:38:22 GMT\r\nContent-Length: 19\r\nConnection: close\r\n\r\n";
    const LIGHTTPD: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: 341\r\nConnection: close\r\nDate: Mon, 07 Dec 2026 09:38:34 GMT\r\nServer: lighttpd/1.4.69\r\n\r\n";
    const H2O: &[u8] = b"HTTP/1.1 404 File Not Found\r\nDate: Mon, 07 Dec 2026 09:38:41 GMT\r\nConnection: close\r\nContent-Length: 9\r\nServer: h2o/2.2.5\r\ncontent-type: text/plain; charset=utf-8\r\n\r\n";
    // `openssl s_server -www` never answers HEAD; this is its answer to `GET / HTTP/1.1`, cut.
    const S_SERVER_GET: &[u8] = b"HTTP/1.0 200 ok\r\nContent-type: text/html\r\n\r\n<HTML><BODY BGCOLOR=\"#ffffff\">\n<pre>\n\ns_server -accept 127.0.0.1:47223 -cert cert.pem -key key.pem -www -quiet \nSecure Renegotiation IS supported\n";

    fn tickets(format: TicketFormat, len: usize, per_conn: usize, life: u32) -> VersionReport {
        VersionReport {
            supported: true,
            outcome: Outcome::Assessed,
            tickets_issued: true,
            tickets_per_connection: per_conn,
            lifetime_hint: Some(life),
            ticket_len: Some(len),
            ticket_format: Some(format),
            ticket_resumption: Some(true),
            ..VersionReport::default()
        }
    }

    fn no_tickets() -> VersionReport {
        VersionReport {
            supported: true,
            outcome: Outcome::Assessed,
            ..VersionReport::default()
        }
    }

    use TicketFormat::{CacheId, Named, Nameless};

    // Ticket facts seen with `openssl s_client -tls1_2` / `-tls1_3` against the same servers:
    // (TLS 1.2, TLS 1.3) as (format, length, tickets per connection, lifetime).
    fn nginx() -> (VersionReport, VersionReport) {
        (tickets(Named, 192, 1, 300), tickets(Named, 240, 2, 300))
    }
    fn apache() -> (VersionReport, VersionReport) {
        (tickets(Named, 208, 1, 300), tickets(Named, 240, 2, 300))
    }
    fn haproxy() -> (VersionReport, VersionReport) {
        (tickets(Named, 192, 1, 7200), tickets(Named, 224, 2, 7200))
    }
    fn lighttpd() -> (VersionReport, VersionReport) {
        (tickets(Named, 176, 1, 7200), tickets(Named, 208, 2, 7200))
    }
    fn h2o() -> (VersionReport, VersionReport) {
        (tickets(Named, 160, 1, 3600), tickets(Named, 208, 2, 3600))
    }
    fn s_server() -> (VersionReport, VersionReport) {
        (tickets(Named, 176, 1, 7200), tickets(Named, 208, 2, 7200))
    }
    fn s_server_no_ticket() -> (VersionReport, VersionReport) {
        (no_tickets(), tickets(CacheId, 32, 2, 7200))
    }
    // Go 1.19 and Caddy 2.6 (built with Go 1.19): TLS 1.2 hint 0 (s_client prints none).
    fn go119() -> (VersionReport, VersionReport) {
        (tickets(Named, 129, 1, 0), tickets(Named, 113, 1, 604_800))
    }
    fn go123() -> (VersionReport, VersionReport) {
        (
            tickets(Nameless, 121, 1, 0),
            tickets(Nameless, 105, 1, 604_800),
        )
    }

    fn id(
        http: Option<&[u8]>,
        (t12, t13): (VersionReport, VersionReport),
        weak: &[&str],
    ) -> (Family, ServerFamily) {
        let (f, sf) = identify(&Signals {
            http,
            tls12: &t12,
            tls13: &t13,
            weak_families: weak,
        });
        assert_eq!(sf.id, f.id());
        assert_eq!(sf.name, f.name());
        for e in &sf.evidence {
            assert!(
                !e.chars().any(char::is_control),
                "control character in {e:?}"
            );
            assert!(e.len() < 600, "evidence too long: {e}");
        }
        (f, sf)
    }

    /// What, the HTTP answer, the tickets, the family expected, words of its evidence.
    type Case = (
        &'static str,
        &'static [u8],
        (VersionReport, VersionReport),
        Family,
        &'static str,
    );

    fn has(sf: &ServerFamily, needle: &str) -> bool {
        sf.evidence.iter().any(|e| e.contains(needle))
    }

    #[test]
    fn ids_round_trip_and_match_the_report() {
        let ids: Vec<&str> = Family::ALL.iter().map(|f| f.id()).collect();
        assert_eq!(
            ids,
            [
                "nginx", "apache", "haproxy", "go", "caddy", "lighttpd", "h2o", "rustls",
                "openssl", "unknown"
            ]
        );
        for f in Family::ALL {
            assert_eq!(Family::from_id(f.id()), Some(f));
        }
        assert_eq!(Family::from_id("nghttpx"), None);
        assert_eq!(Family::from_id("NGINX"), None);
        assert_eq!(Family::Unknown.name(), ServerFamily::default().name);
        assert_eq!(Family::Go.name(), "Go crypto/tls");
    }

    #[test]
    fn each_server_from_its_own_answer_and_tickets() {
        let cases: [Case; 11] = [
            ("nginx", NGINX, nginx(), Family::Nginx, "`nginx/1.22.1`"),
            ("apache", APACHE, apache(), Family::Apache, "Apache/2.4.71"),
            (
                "haproxy",
                HAPROXY_503,
                haproxy(),
                Family::Haproxy,
                "error page",
            ),
            (
                "haproxy+nginx",
                HAPROXY_NGINX,
                haproxy(),
                Family::Haproxy,
                "in front of nginx",
            ),
            ("caddy", CADDY, go119(), Family::Caddy, "`Caddy`"),
            ("go 1.19", GO, go119(), Family::Go, "404 page not found"),
            ("go 1.23", GO, go123(), Family::Go, "nosniff"),
            (
                "lighttpd",
                LIGHTTPD,
                lighttpd(),
                Family::Lighttpd,
                "lighttpd/1.4.69",
            ),
            ("h2o", H2O, h2o(), Family::H2o, "h2o/2.2.5"),
            (
                "s_server",
                S_SERVER_GET,
                s_server(),
                Family::Openssl,
                "s_server -www",
            ),
            (
                "s_server -no_ticket",
                S_SERVER_GET,
                s_server_no_ticket(),
                Family::Openssl,
                "s_server",
            ),
        ];
        for (what, http, t, want, why) in cases {
            let (f, sf) = id(Some(http), t, &[]);
            assert_eq!(f, want, "{what}: {sf:?}");
            assert!(has(&sf, why), "{what}: {why:?} not in {sf:?}");
            assert!(has(&sf, "the tickets agree"), "{what}: {sf:?}");
        }
    }

    #[test]
    fn tickets_alone() {
        // No HTTP answer at all: the tickets decide.
        let (f, sf) = id(None, go123(), &[]);
        assert_eq!(f, Family::Go);
        assert!(has(&sf, "Caddy or another Go server"), "{sf:?}");
        assert!(has(&sf, "no key name"), "{sf:?}");
        let (f, sf) = id(None, go119(), &[]);
        assert_eq!(f, Family::Go, "{sf:?}");
        assert!(has(&sf, "1 TLS 1.3 ticket per connection"), "{sf:?}");
        // `openssl s_server` without -www, with and without tickets.
        let (f, sf) = id(None, s_server(), &[]);
        assert_eq!(f, Family::Openssl, "{sf:?}");
        assert!(has(&sf, "does not answer HTTP"), "{sf:?}");
        let (f, sf) = id(None, s_server_no_ticket(), &[]);
        assert_eq!(f, Family::Openssl, "{sf:?}");
        assert!(has(&sf, "session-cache ids"), "{sf:?}");
        // h2o's 3600 s is its own.
        assert_eq!(id(None, h2o(), &[]).0, Family::H2o);
        // 300 s over HTTP with a Server header stek does not know: nginx or Apache.
        let cdn = b"HTTP/1.1 200 OK\r\nServer: cloudflare\r\nDate: x\r\n\r\n";
        let (f, sf) = id(Some(cdn), nginx(), &[]);
        assert_eq!(f, Family::Unknown);
        assert!(
            has(&sf, "could be nginx or Apache httpd (mod_ssl)"),
            "{sf:?}"
        );
        assert!(has(&sf, "`cloudflare` names no server"), "{sf:?}");
        // rustls without a ticketer: 2 x 32-byte ids announced for 24 h (server/tls13.rs).
        let stateful = (no_tickets(), tickets(CacheId, 32, 2, 86_400));
        assert_eq!(id(None, stateful, &[]).0, Family::Rustls);
        // rustls's aws-lc-rs Ticketer: RFC 5077 layout, 12 h (crypto/aws_lc_rs/ticketer.rs).
        let ticketer = (
            tickets(Named, 176, 1, 43_200),
            tickets(Named, 208, 2, 43_200),
        );
        assert_eq!(id(None, ticketer, &[]).0, Family::Rustls);
    }

    #[test]
    fn the_weak_key_layout_narrows() {
        // nginx and Apache share 300 s; only Apache's layout matched the guessed key.
        let cdn = b"HTTP/1.1 200 OK\r\nServer: cloudflare\r\nDate: x\r\n\r\n";
        let (f, sf) = id(Some(cdn), apache(), &["apache"]);
        assert_eq!(f, Family::Apache, "{sf:?}");
        assert!(has(&sf, "key layout of Apache"), "{sf:?}");
        // Go's derivation matched: Go, and nghttpx (no family here) is ignored.
        assert_eq!(id(None, go119(), &["go", "caddy", "nghttpx"]).0, Family::Go);
        assert_eq!(
            id(None, (no_tickets(), no_tickets()), &["nghttpx"]).0,
            Family::Unknown
        );
    }

    #[test]
    fn conflicts_are_stated_and_the_server_header_wins() {
        let (f, sf) = id(Some(NGINX), go119(), &[]);
        assert_eq!(f, Family::Nginx);
        assert!(
            has(&sf, "but the tickets look like Go crypto/tls or Caddy's"),
            "{sf:?}"
        );
        assert!(has(&sf, "the fix given is nginx's"), "{sf:?}");
        // Caddy is a Go program: no conflict.
        let (f, sf) = id(Some(CADDY), go123(), &[]);
        assert_eq!(f, Family::Caddy);
        assert!(!has(&sf, "but the tickets"), "{sf:?}");
        // A lifetime is a setting: with a Server header it never makes a conflict (nginx with
        // `ssl_session_timeout 1h` hints 3600 s, h2o's default).
        for life in [604_800, 3600, 7200] {
            let odd = (no_tickets(), tickets(Named, 240, 2, life));
            let (f, sf) = id(Some(NGINX), odd, &[]);
            assert_eq!(f, Family::Nginx);
            assert!(!has(&sf, "but the tickets"), "{sf:?}");
            assert!(!has(&sf, "does not fit"), "{sf:?}");
        }
        // Without a header, a lifetime that contradicts the ticket shape is set aside and said.
        let odd = (no_tickets(), tickets(Named, 240, 2, 604_800));
        let (_, sf) = id(None, odd, &[]);
        assert!(
            has(&sf, "does not fit: TLS 1.3 lifetime 604800 s"),
            "{sf:?}"
        );
    }

    #[test]
    fn unknown_when_nothing_points_anywhere() {
        let (f, sf) = id(None, (no_tickets(), no_tickets()), &[]);
        assert_eq!((f, sf.evidence.len()), (Family::Unknown, 0), "{sf:?}");
        // Versions that were not assessed say nothing, whatever their fields hold.
        let mut failed = go123().1;
        failed.outcome = Outcome::Failed;
        let (f, _) = id(Some(b""), (no_tickets(), failed), &[]);
        assert_eq!(f, Family::Unknown);
        // A configured lifetime and a shape many servers share: unknown, with the candidates.
        let (f, sf) = id(None, (no_tickets(), tickets(Named, 240, 2, 64_800)), &[]);
        assert_eq!(f, Family::Unknown);
        assert!(has(&sf, "could be"), "{sf:?}");
    }

    #[test]
    fn lowercase_names_alone_are_only_a_hint() {
        // stek-rustls's example server (`cargo run -p stek-rustls --example https_server --
        // --embedded`), captured like the others: lowercase names, no Server header. Its tickets
        // per s_client: 125 bytes in both versions (name, nonce, AES-256-GCM-SIV: no whole
        // number of AES blocks), 2 per TLS 1.3 connection, lifetime 64800 (stek's 18 h).
        let rust = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 104\r\nconnection: close\r\n\r\nserved by https_server\nTLSv1_3, full handshake\ntickets sealed with key 24fb815e7823276f040471aebadf3a98\n";
        let stek_rustls = (
            tickets(Named, 125, 1, 64_800),
            tickets(Named, 125, 2, 64_800),
        );
        assert_eq!(id(Some(rust), stek_rustls, &[]).0, Family::Rustls);
        // With OpenSSL-default tickets it is HAProxy's way of writing headers.
        assert_eq!(id(Some(rust), haproxy(), &[]).0, Family::Haproxy);
    }

    #[test]
    fn garbage_answers() {
        let go = || go119();
        // Binary junk, 8 KiB and more.
        let junk: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let (f, sf) = id(Some(&junk), go(), &[]);
        assert_eq!(f, Family::Go);
        assert!(has(&sf, "not HTTP"), "{sf:?}");
        // An 8 KiB Server header: cut, cleaned, never echoed in full.
        let mut long = b"HTTP/1.1 200 OK\r\nServer: ".to_vec();
        long.extend(std::iter::repeat_n(b'A', 9000));
        long.extend_from_slice(b"\r\n\r\n");
        let (f, sf) = id(Some(&long), go(), &[]);
        assert_eq!(f, Family::Go);
        assert!(
            has(&sf, &format!("`{}...`", "A".repeat(MAX_EXCERPT))),
            "{sf:?}"
        );
        // Control characters and non-ASCII bytes in a header value.
        let evil = b"HTTP/1.1 200 OK\r\nServer: \x1b[31mnginx\x07\xff\xfe`\r\nDate: x\r\n\r\n";
        let (f, sf) = id(Some(evil), go(), &[]);
        assert_eq!(f, Family::Go, "{sf:?}");
        assert!(has(&sf, "`[31mnginx??'`"), "{sf:?}");
        // No line break at all: a status line, no headers.
        let (f, _) = id(Some(b"HTTP/1.1 200 OK Server: nginx/1.22.1"), go(), &[]);
        assert_eq!(f, Family::Go);
        // Bare LF line ends are read too.
        let lf = b"HTTP/1.1 200 OK\nServer: nginx/1.22.1\nDate: x\n\n";
        assert_eq!(id(Some(lf), nginx(), &[]).0, Family::Nginx);
        // Cut off in the middle of a header name.
        assert_eq!(id(Some(&HAPROXY_503[..40]), go(), &[]).0, Family::Go);
        // A Server header beyond the first 8 KiB is not looked at.
        let mut late = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..400 {
            late.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "p".repeat(20)).as_bytes());
        }
        late.extend_from_slice(b"Server: nginx/1.22.1\r\n\r\n");
        assert!(late.len() > MAX_HTTP);
        assert_eq!(id(Some(&late), go(), &[]).0, Family::Go);
        // Headers whose names are not tokens are not headers.
        let bad = b"HTTP/1.1 200 OK\r\nSer ver: nginx\r\n: nginx\r\nDate: x\r\n\r\n";
        assert_eq!(id(Some(bad), go(), &[]).0, Family::Go);
    }

    #[test]
    fn no_input_panics_or_leaks_control_characters() {
        // A small deterministic generator: HTTP-looking prefixes followed by random bytes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let prefixes: [&[u8]; 4] = [b"HTTP/1.1 ", b"HTTP/1.0 200 ok\r\n", b"HTTP/", b""];
        for round in 0..2000 {
            let mut buf = prefixes[round % prefixes.len()].to_vec();
            let n = (next() % 300) as usize;
            for _ in 0..n {
                let r = next();
                buf.push(match r % 8 {
                    0 => b'\r',
                    1 => b'\n',
                    2 => b':',
                    _ => (r >> 8) as u8,
                });
            }
            let t = if round % 2 == 0 { haproxy() } else { go123() };
            id(Some(&buf), t, &["apache"]);
        }
    }

    /// Words that belong to one family's configuration: a fix for another family must not
    /// contain them, and a family's own fixes contain at least one of them.
    fn own_words(f: Family) -> &'static [&'static str] {
        match f {
            Family::Nginx => &[
                "nginx",
                "ssl_session_t",
                "ssl_early_data",
                "ssl_conf_command",
            ],
            Family::Apache => &[
                "Apache",
                "SSLSession",
                "SSLOpenSSLConfCmd",
                "mod_ssl",
                "apachectl",
            ],
            Family::Haproxy => &[
                "HAProxy",
                "tls-ticket-keys",
                "tune.ssl",
                "no-tls-tickets",
                "allow-0rtt",
            ],
            Family::Go => &[
                "Go crypto/tls",
                "SetSessionTicketKeys",
                "SessionTicketsDisabled",
            ],
            Family::Caddy => &["Caddy", "apps.tls", "rotation_interval"],
            Family::Lighttpd => &["lighttpd", "ssl.stek-file", "ssl.openssl.ssl-conf-cmd"],
            Family::H2o => &["h2o", "ssl-session-resumption", "ticket-file"],
            Family::Rustls => &["rustls", "ProducesTickets", "ServerConfig"],
            Family::Openssl => &["OpenSSL server", "s_server", "SSL_CTX_", "SSL_OP_"],
            Family::Unknown => &[],
        }
    }

    #[test]
    fn every_fix_speaks_its_own_server_and_no_other() {
        for f in Family::ALL {
            for x in Fix::ALL {
                let t = fix(f, x);
                assert!(!t.trim().is_empty(), "{f:?} {x:?}");
                for line in t.lines() {
                    assert!(
                        line.chars().count() <= 100,
                        "{f:?} {x:?}: long line {line:?}"
                    );
                }
                if f != Family::Unknown {
                    assert!(
                        own_words(f).iter().any(|w| t.contains(w)),
                        "{f:?} {x:?} names nothing of its own: {t}"
                    );
                }
                for other in Family::ALL {
                    // Caddy is a Go program: its texts may say "Go crypto/tls".
                    if other == f || (f == Family::Caddy && other == Family::Go) {
                        continue;
                    }
                    for w in own_words(other) {
                        if f == Family::Caddy && *w == "Go crypto/tls" {
                            continue;
                        }
                        assert!(
                            !t.contains(w),
                            "{f:?} {x:?} mentions {other:?}'s {w:?}: {t}"
                        );
                    }
                }
            }
        }
        let caddy = fix(Family::Caddy, Fix::Rotate);
        assert!(caddy.contains("session_tickets") && caddy.contains("rotation_interval"));
        assert!(fix(Family::Go, Fix::Rotate).contains("SetSessionTicketKeys"));
        assert!(fix(Family::Go, Fix::Rotate).contains("SessionTicketsDisabled: true"));
        assert!(fix(Family::Lighttpd, Fix::Rotate).contains("ssl.stek-file"));
        assert!(fix(Family::H2o, Fix::Rotate).contains("ticket-store: file"));
        assert!(fix(Family::Rustls, Fix::Rotate).contains("stek_rustls::Ticketer"));
        assert!(fix(Family::Openssl, Fix::Rotate).contains("-no_ticket"));
        assert!(fix(Family::Nginx, Fix::CacheLifetime).contains("ssl_session_timeout"));
        assert!(fix(Family::Apache, Fix::CacheLifetime).contains("SSLSessionCacheTimeout"));
        assert!(fix(Family::Haproxy, Fix::CacheLifetime).contains("tune.ssl.lifetime"));
    }
}
