//! Findings from observations, with time injected: days of sightings in microseconds.

use super::*;

const H: f64 = 3600.0;
const DAY: f64 = 86400.0;
const T0: f64 = 1_800_000_000.0;

fn opts() -> Options {
    Options {
        targets: vec!["127.0.0.1:443".into()],
        sni: None,
        observe: None,
        interval: None,
        max_rotation: Duration::from_secs(24 * 3600),
        max_acceptance: Duration::from_secs(24 * 3600),
        state: None,
        expect: None,
        timeout: Duration::from_secs(1),
        progress: false,
    }
}

fn target() -> TargetReport {
    let v = VersionReport {
        supported: true,
        outcome: super::report::Outcome::Assessed,
        tickets_issued: true,
        tickets_per_connection: 1,
        lifetime_hint: Some(300),
        ticket_resumption: Some(true),
        key_name: Some("00".repeat(16)),
        key_name_confirmed: true,
        tickets_seen: 2,
        ..VersionReport::default()
    };
    TargetReport {
        target: "127.0.0.1:443".into(),
        address: "127.0.0.1:443".into(),
        sni: None,
        server_family: super::report::ServerFamily::default(),
        error: None,
        tls12: v.clone(),
        tls13: v,
        keys: vec![],
        rotation_observed_secs: None,
        observed_secs: 0.0,
        acceptance: vec![],
        oldest_accepted_secs: None,
        youngest_refused_secs: None,
    }
}

fn ids(f: &[Finding]) -> Vec<&str> {
    f.iter().map(|f| f.id.as_str()).collect()
}

/// A daily cron run (one sample a day) against a server whose key never changes.
#[test]
fn a_static_key_seen_on_three_days_is_not_rotated() {
    let mut hist = EndpointState::default();
    for day in 0..3 {
        let at = T0 + f64::from(day) * DAY;
        hist.runs.push((at, at + 1.0));
        hist.saw("aa", "tls12", at);
        hist.saw("aa", "tls13", at + 0.5);
    }
    let mut t = target();
    let f = analyze(&mut t, &hist, &opts(), T0 + 2.0 * DAY + 1.0);
    assert!(ids(&f).contains(&"stek.not_rotated"), "{:?}", ids(&f));
    let nr = f.iter().find(|f| f.id == "stek.not_rotated").unwrap();
    assert_eq!(nr.severity, Severity::High);
    assert!(nr.evidence.contains("2.0 d"), "{}", nr.evidence);
    // Unknown software: a server-neutral fix that names no product.
    for product in ["nginx", "Apache", "HAProxy", "Caddy", "lighttpd", "h2o"] {
        assert!(!nr.remediation.contains(product), "{}", nr.remediation);
    }
    // The fix is the identified family's.
    for (family, says) in [
        ("nginx", "ssl_session_tickets off;"),
        ("haproxy", "no-tls-tickets"),
        ("apache", "SSLSessionTickets off"),
        ("go", "SetSessionTicketKeys"),
        ("caddy", "session_tickets"),
        ("lighttpd", "ssl.stek-file"),
        ("h2o", "ssl-session-resumption"),
    ] {
        let mut t = target();
        t.server_family.id = family.into();
        let f = analyze(&mut t, &hist, &opts(), T0 + 2.0 * DAY + 1.0);
        let nr = f.iter().find(|f| f.id == "stek.not_rotated").unwrap();
        assert!(
            nr.remediation.contains(says),
            "{family}: {}",
            nr.remediation
        );
    }
    // Two days of the same key is fine with a 3-day limit.
    let mut o = opts();
    o.max_rotation = Duration::from_secs(3 * 86400);
    assert!(!ids(&analyze(&mut target(), &hist, &o, T0 + 2.0 * DAY)).contains(&"stek.not_rotated"));
}

/// Hourly rotation sampled every 10 minutes for two days.
#[test]
fn hourly_rotation_is_measured_and_not_flagged() {
    let mut hist = EndpointState::default();
    hist.runs.push((T0, T0 + 2.0 * DAY));
    let mut at = T0;
    while at < T0 + 2.0 * DAY {
        let slot = ((at - T0) / H).floor() as u64;
        hist.saw(&format!("{slot:032x}"), "tls13", at);
        at += 600.0;
    }
    let mut t = target();
    let f = analyze(&mut t, &hist, &opts(), T0 + 2.0 * DAY);
    assert!(!ids(&f).contains(&"stek.not_rotated"), "{:?}", ids(&f));
    assert!(ids(&f).contains(&"stek.rotation"));
    assert_eq!(t.rotation_observed_secs, Some(H));
    assert_eq!(t.keys.len(), 48);
}

#[test]
fn old_tickets_accepted_beyond_the_limit() {
    let mut hist = EndpointState::default();
    for (age, accepted) in [(2.0 * H, true), (30.0 * H, true), (40.0 * H, false)] {
        hist.checks.push(AcceptanceCheck {
            version: "tls12".into(),
            name: Some("aa".into()),
            issued_at: T0,
            checked_at: T0 + age,
            age_secs: age,
            accepted: Some(accepted),
            cache_id: false,
        });
    }
    let mut t = target();
    let f = analyze(&mut t, &hist, &opts(), T0 + 40.0 * H);
    let old = f
        .iter()
        .find(|f| f.id == "stek.old_ticket_accepted")
        .expect("flagged");
    assert!(old.evidence.contains("30.0 h"), "{}", old.evidence);
    assert_eq!(t.oldest_accepted_secs, Some(30.0 * H));
    assert_eq!(t.youngest_refused_secs, Some(40.0 * H));
    hist.checks.remove(1);
    assert!(!ids(&analyze(&mut target(), &hist, &opts(), T0)).contains(&"stek.old_ticket_accepted"));
}

#[test]
fn version_level_findings() {
    let mut t = target();
    t.tls13.lifetime_hint = Some(SEVEN_DAYS + 1);
    t.tls13.resumption_with_dhe = Some(false);
    t.tls13.single_use = Some(false);
    t.tls12.weak_key = Some("all zero".into());
    t.tls12.weak_key_decrypts = true;
    t.tls13.weak_key = Some("all zero".into());
    t.tls12.lifetime_hint = Some(0);
    t.tls12.session_id_resumption = Some(false);
    let f = analyze(&mut t, &EndpointState::default(), &opts(), T0);
    let got = ids(&f);
    for id in [
        "stek.weak_key",
        "hint.exceeds_7_days",
        "tls13.psk_ke",
        "tls13.ticket_reuse",
        "hint.unspecified",
        "session_id.resumption",
        "tickets.tls12",
        "tickets.tls13",
    ] {
        assert!(got.contains(&id), "{id} missing from {got:?}");
    }
    assert_eq!(
        f.iter().find(|f| f.id == "stek.weak_key").unwrap().severity,
        Severity::Critical
    );
    // One finding per endpoint: the version that decrypts wins over the MAC-only one.
    assert!(!got.contains(&"stek.weak_mac_key"), "{got:?}");
}

#[test]
fn tickets_off_gives_no_stek_finding() {
    let mut t = target();
    for v in [&mut t.tls12, &mut t.tls13] {
        *v = VersionReport {
            supported: true,
            outcome: Outcome::Assessed,
            ..VersionReport::default()
        };
    }
    let f = analyze(&mut t, &EndpointState::default(), &opts(), T0);
    assert!(
        f.iter().all(|f| !f.id.starts_with("stek.")),
        "{:?}",
        ids(&f)
    );
    assert!(f.iter().all(|f| f.severity == Severity::Info));
}

#[test]
fn targets_parse() {
    assert_eq!(
        parse_target("example.com").unwrap(),
        ("example.com".into(), 443)
    );
    assert_eq!(
        parse_target("127.0.0.1:8443").unwrap(),
        ("127.0.0.1".into(), 8443)
    );
    assert_eq!(parse_target("[::1]:8443").unwrap(), ("::1".into(), 8443));
    assert_eq!(parse_target("::1").unwrap(), ("::1".into(), 443));
    for bad in [
        "",
        "host:",
        "host:0",
        "host:99999",
        "[::1",
        "[::1]x",
        ":443",
        "a b:1",
    ] {
        assert!(parse_target(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn stamps_are_utc() {
    assert_eq!(stamp(0.0), "Thu, 01 Jan 1970 00:00:00 GMT");
}

#[test]
fn scan_errors_say_what_failed_and_keep_their_causes() {
    use std::error::Error as _;
    let opts = |state: Option<PathBuf>, expect: Option<&str>| Options {
        targets: Vec::new(),
        sni: None,
        observe: None,
        interval: None,
        max_rotation: Duration::from_secs(86_400),
        max_acceptance: Duration::from_secs(86_400),
        state,
        expect: expect.map(str::to_owned),
        timeout: Duration::from_secs(1),
        progress: false,
    };

    let e = resolve(&["host:notaport".into()], None).unwrap_err();
    assert!(
        matches!(e, ScanError::Target(TargetError::BadPort { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("bad port"), "{e}");
    assert!(e.source().is_none());

    let e = ScanError::Resolve {
        target: "example.invalid".into(),
        host: "example.invalid".into(),
        source: std::io::Error::other("failed to lookup address information"),
    };
    assert_eq!(
        crate::error::Chain(&e).to_string(),
        "target \"example.invalid\": cannot resolve example.invalid: failed to lookup address information"
    );

    // A state file that is not one: the state error speaks, the JSON error is its cause.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    std::fs::write(&path, b"garbage").unwrap();
    let e = run(&opts(Some(path), None)).unwrap_err();
    assert!(
        matches!(e, ScanError::State(StateError::NotState { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("not a stek scan state"), "{e}");
    assert!(e.source().unwrap().is::<serde_json::Error>());

    // An --expect endpoint that does not answer: the fetch error is the cause.
    let e = run(&opts(None, Some("http://127.0.0.1:1/status"))).unwrap_err();
    assert!(matches!(e, ScanError::Expect(_)), "{e:?}");
    let fetch = e.source().unwrap();
    assert!(fetch.is::<crate::status::FetchError>());
    assert_eq!(
        crate::error::Chain(&e)
            .to_string()
            .matches("127.0.0.1:1")
            .count(),
        2,
        "the spec and the endpoint, each once: {}",
        crate::error::Chain(&e)
    );
}

#[test]
fn probe_errors_keep_their_causes() {
    use std::error::Error as _;
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    let e = probe::ProbeError::Connect(refused);
    assert_eq!(e.to_string(), "cannot connect");
    assert!(e.source().unwrap().is::<std::io::Error>());
    let e = probe::ProbeError::Wire(wire::WireError::Truncated("ServerHello"));
    assert_eq!(
        crate::error::Chain(&e).to_string(),
        "cannot read what the server sent: truncated ServerHello"
    );
    assert!(probe::ProbeError::Alert(70).source().is_none());
}

fn check(age: f64, accepted: bool, cache_id: bool) -> AcceptanceCheck {
    AcceptanceCheck {
        version: "tls13".into(),
        name: None,
        issued_at: T0,
        checked_at: T0 + age,
        age_secs: age,
        accepted: Some(accepted),
        cache_id,
    }
}

fn nameless() -> TargetReport {
    let mut t = target();
    for v in [&mut t.tls12, &mut t.tls13] {
        v.key_name = None;
        v.key_name_confirmed = false;
        v.ticket_format = Some(TicketFormat::Nameless);
    }
    t
}

#[test]
fn nameless_rotation_is_measured_through_acceptance() {
    let mut o = opts();
    o.max_rotation = Duration::from_secs(2);
    o.max_acceptance = Duration::from_secs(2);
    // Tickets 1..6 s old all resume: the key that made the 6 s ticket lived 6 s > 2 + 2.
    let mut hist = EndpointState {
        checks: (1..=6).map(|a| check(f64::from(a), true, false)).collect(),
        ..EndpointState::default()
    };
    let mut t = nameless();
    let f = analyze(&mut t, &hist, &o, T0 + 6.0);
    assert_eq!(
        ids(&f).iter().filter(|i| **i == "stek.not_rotated").count(),
        1,
        "{:?}",
        ids(&f)
    );
    assert!(ids(&f).contains(&"stek.old_ticket_accepted"));
    assert_eq!(
        ids(&f).iter().filter(|i| **i == "stek.no_key_name").count(),
        1,
        "once per endpoint"
    );
    let no_name = f.iter().find(|f| f.id == "stek.no_key_name").unwrap();
    assert!(
        no_name.title.contains("TLS 1.2 and TLS 1.3"),
        "{}",
        no_name.title
    );

    // Accepted up to 3 s, refused at 5 s: rotation seen, within policy (3 < 2 + 2).
    hist.checks = vec![
        check(1.0, true, false),
        check(3.0, true, false),
        check(5.0, false, false),
    ];
    let f = analyze(&mut nameless(), &hist, &o, T0 + 5.0);
    assert!(!ids(&f).contains(&"stek.not_rotated"), "{:?}", ids(&f));
    assert!(ids(&f).contains(&"stek.rotation"), "{:?}", ids(&f));

    // Nothing refused yet, young tickets only: not measured yet.
    hist.checks = vec![check(1.0, true, false)];
    let f = analyze(&mut nameless(), &hist, &o, T0 + 1.0);
    assert!(
        ids(&f).contains(&"stek.rotation_unmeasured"),
        "{:?}",
        ids(&f)
    );
}

#[test]
fn session_cache_ids_are_not_ticket_keys() {
    let mut t = target();
    t.tls13.ticket_format = Some(TicketFormat::CacheId);
    t.tls13.ticket_len = Some(32);
    t.tls13.key_name = None;
    t.tls13.key_name_confirmed = false;
    t.tls12.tickets_issued = false;
    t.tls12.ticket_resumption = None;
    t.tls12.key_name = None;
    let mut o = opts();
    o.max_acceptance = Duration::from_secs(2);
    let hist = EndpointState {
        checks: vec![check(6.0, true, true)],
        ..EndpointState::default()
    };
    let f = analyze(&mut t, &hist, &o, T0 + 6.0);
    let ids = ids(&f);
    assert!(ids.contains(&"session_cache.tls13"), "{ids:?}");
    assert!(
        ids.contains(&"session_cache.old_session_accepted"),
        "{ids:?}"
    );
    assert!(!ids.iter().any(|i| i.starts_with("stek.")), "{ids:?}");
    let old = f
        .iter()
        .find(|f| f.id == "session_cache.old_session_accepted")
        .unwrap();
    assert!(
        old.severity < Severity::Medium,
        "a cache entry is no key: it does not fail the scan"
    );
}

#[test]
fn a_weak_key_on_both_versions_is_one_finding() {
    let mut t = target();
    for v in [&mut t.tls12, &mut t.tls13] {
        v.weak_key = Some("all zero (Apache 48-byte; HMAC key guessed)".into());
    }
    let f = analyze(&mut t, &EndpointState::default(), &opts(), T0);
    let weak: Vec<&Finding> = f.iter().filter(|f| f.id.starts_with("stek.weak")).collect();
    assert_eq!(weak.len(), 1, "{:?}", ids(&f));
    assert!(
        weak[0].evidence.contains("TLS 1.2 and TLS 1.3"),
        "{}",
        weak[0].evidence
    );
    assert!(
        weak[0].evidence.contains("Apache 48-byte"),
        "{}",
        weak[0].evidence
    );
    assert_eq!(
        f.iter()
            .filter(|f| f.remediation == weak[0].remediation)
            .count(),
        1
    );
}

#[test]
fn a_version_not_assessed_is_never_no_tickets() {
    let mut t = target();
    t.tls12 = VersionReport {
        outcome: Outcome::Failed,
        alert: Some("certificate_required".into()),
        error: Some("the handshake did not complete".into()),
        ..VersionReport::default()
    };
    let f = analyze(&mut t, &EndpointState::default(), &opts(), T0);
    let ids = ids(&f);
    assert!(!ids.contains(&"tickets.tls12"), "{ids:?}");
    assert!(ids.contains(&"scan.incomplete"), "{ids:?}");
    let mut r = Report {
        scanner: String::new(),
        started_at: 0.0,
        duration_secs: 0.0,
        verdict: String::new(),
        summary: String::new(),
        exit_code: 0,
        targets: vec![t],
        fleets: vec![],
        findings: f,
        warnings: vec!["w".into()],
    };
    r.conclude();
    let text = r.render();
    assert!(
        text.contains("TLS 1.2: not assessed: the handshake did not complete"),
        "{text}"
    );
    assert!(text.contains("warning: w"), "{text}");
    assert!(text.contains("no SNI"), "{text}");
}

#[test]
fn an_ip_address_is_never_sent_as_sni() {
    let (eps, warnings) = resolve(&["127.0.0.1:443".into()], Some("127.0.0.1")).unwrap();
    assert_eq!(eps[0].sni, None);
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("no SNI was sent"), "{warnings:?}");
    let (eps, warnings) = resolve(&["127.0.0.1:443".into()], Some("::1")).unwrap();
    assert_eq!((eps[0].sni.clone(), warnings.len()), (None, 1));
    let (eps, warnings) = resolve(&["127.0.0.1:443".into()], Some("example.com")).unwrap();
    assert_eq!(
        (eps[0].sni.as_deref(), warnings.len()),
        (Some("example.com"), 0)
    );
}

#[test]
fn offers_thin_evenly() {
    let offer = |at: f64| StoredOffer {
        version: "tls13".into(),
        name: None,
        issued_at: at,
        client_hello: String::new(),
        spent: false,
        cache_id: false,
    };
    let mut offers: Vec<StoredOffer> = (0..100).map(|i| offer(f64::from(i))).collect();
    state::thin(&mut offers, 10);
    assert_eq!(offers.len(), 10);
    assert_eq!((offers[0].issued_at, offers[9].issued_at), (0.0, 99.0));
    assert!(
        offers
            .windows(2)
            .all(|w| w[1].issued_at - w[0].issued_at <= 16.0),
        "{:?}",
        offers.iter().map(|o| o.issued_at).collect::<Vec<_>>()
    );
}

/// Issue 12, rule 8: the evidence of a guessed key names the layout of the server identified,
/// as that server's, and only lists other servers' layouts when the server is not known.
#[test]
fn a_weak_key_names_the_identified_servers_layout() {
    let m = |layout, families, session_len: Option<usize>| weak::Match {
        layout,
        families,
        hmac_len: 16,
        aes_bits: session_len.map(|_| 128),
        session_len,
    };
    let nginx80 = "80-byte key file: name, HMAC-SHA256 key (32), AES-256 key";
    let apache48 = "48-byte key file: name, HMAC-SHA256 key (16), AES-128 key";
    let w = weak::WeakKey {
        pattern: "all zero".into(),
        matches: vec![
            m(nginx80, &["nginx", "lighttpd"], None),
            m(apache48, &["apache"], None),
        ],
    };
    let (text, decrypts) = weak_text(&w, Family::Apache);
    assert!(!decrypts);
    assert!(
        text.contains(&format!("Apache httpd (mod_ssl)'s layout, {apache48}")),
        "{text}"
    );
    assert!(!text.contains("80-byte"), "{text}");
    // Not identified: the first candidate, and every other one the guess fits.
    let (text, _) = weak_text(&w, Family::Unknown);
    assert!(text.starts_with(&format!("all zero ({nginx80};")), "{text}");
    assert!(
        text.contains(&format!("the same MAC key also fits: {apache48}")),
        "{text}"
    );
    // A layout that decrypts the ticket is proof, whatever was identified, and stands alone.
    let w = weak::WeakKey {
        pattern: "all zero".into(),
        matches: vec![
            m(apache48, &["apache"], Some(120)),
            m(nginx80, &["nginx"], None),
        ],
    };
    let (text, decrypts) = weak_text(&w, Family::Nginx);
    assert!(decrypts);
    assert!(
        text.contains(&format!(
            "({apache48}; HMAC key guessed, AES-128 key guessed too"
        )),
        "{text}"
    );
    assert!(!text.contains("also fits"), "{text}");
}
