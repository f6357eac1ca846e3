//! `stek scan --html FILE`: the [`Report`] as one self-contained page a person reads in a
//! browser or receives by mail.
//!
//! The page is the verdict, the warnings, the findings with their fixes, and per endpoint what
//! each TLS version does. With observation data (`--observe`, or earlier runs kept by
//! `--state`) each endpoint gets a timeline drawn in inline SVG: one bar per key name from its
//! first to its last fresh ticket, and one line per old ticket offered again, from its issue to
//! the offer, ending in the server's answer.
//!
//! Invariants, each tested below:
//! - Everything in a report may come from the server (errors, alert names, the `Server` header,
//!   key names) or from the command line: every string goes through [`Esc`] before it reaches
//!   the page, in text and in attribute values alike.
//! - The page fetches nothing: no scripts at all, inline CSS and SVG only, no `src`, no `url()`,
//!   and the only links point inside the page. A Content-Security-Policy of `default-src
//!   'none'` makes a browser refuse any fetch that slipped in anyway.
//! - Nothing depends on colour alone: every mark has a shape and a word (accepted, refused,
//!   no answer), every severity its name.

use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::path::Path;

use super::report::{
    self, AcceptanceCheck, Finding, KeyReport, Outcome, Report, Severity, TargetReport,
    TicketFormat, VersionReport,
};

/// Key bars drawn per endpoint; `--state` over months can hold hundreds of names. The most
/// recent are drawn, every one is listed in the table under the picture.
const MAX_KEY_BARS: usize = 24;

/// Acceptance lines drawn per endpoint: an even spread over all checks, plus the oldest
/// accepted and the youngest refused ticket (the two figures the findings rest on).
const MAX_CHECK_LINES: usize = 24;

/// Writes `page` to `path` so that no reader ever sees part of it: a new temporary file in the
/// same directory (so the rename cannot cross file systems), written, synced, then renamed over
/// `path`. On failure the temporary file is removed and `path` is left as it was.
pub fn write(path: &Path, page: &str) -> io::Result<()> {
    let mut tmp = temporary_beside(path)?;
    tmp.write_all(page.as_bytes())?;
    tmp.as_file().sync_all()?;
    // On error the returned temporary file is dropped, which removes it.
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Fails as [`write`] would when `path`'s directory is missing or not writable, before a scan
/// that may observe for hours; creates nothing that outlives the call.
pub fn check_writable(path: &Path) -> io::Result<()> {
    temporary_beside(path).map(drop)
}

/// A new temporary file in `path`'s directory, removed when dropped.
fn temporary_beside(path: &Path) -> io::Result<tempfile::NamedTempFile> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    // 0o666 less the umask: the mode `File::create` would give; the page holds no secret
    // (key names identify keys, they do not reveal them).
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
}

/// Text escaped for HTML text and for double-quoted attribute values alike. Control characters
/// other than tab and newline (which HTML forbids and a hostile server may send) become U+FFFD.
struct Esc<'a>(&'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut start = 0;
        for (i, c) in self.0.char_indices() {
            let replacement = match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                '\n' | '\t' => continue,
                c if c.is_control() => "\u{FFFD}",
                _ => continue,
            };
            f.write_str(&self.0[start..i])?;
            f.write_str(replacement)?;
            start = i + c.len_utf8();
        }
        f.write_str(&self.0[start..])
    }
}

/// The report as one HTML page (UTF-8, no external resources).
pub fn render(report: &Report) -> String {
    let mut out = String::with_capacity(32 * 1024);
    head(&mut out, report);
    verdict(&mut out, report);
    warnings(&mut out, report);
    findings(&mut out, report);
    // Notes (findings of severity info) are facts about one endpoint: shown with it.
    let labels: Vec<String> = report.targets.iter().map(TargetReport::label).collect();
    let info = |f: &&Finding| f.severity == Severity::Info;
    let _ = writeln!(out, "<section id=\"endpoints\"><h2>Endpoints</h2>");
    for (i, (t, label)) in report.targets.iter().zip(&labels).enumerate() {
        let notes: Vec<&Finding> = report
            .findings
            .iter()
            .filter(info)
            .filter(|f| f.target == *label)
            .collect();
        endpoint(&mut out, i, t, &notes);
    }
    out.push_str("</section>\n");
    fleets(&mut out, report);
    let other: Vec<&Finding> = report
        .findings
        .iter()
        .filter(info)
        .filter(|f| !labels.contains(&f.target))
        .collect();
    if !other.is_empty() {
        out.push_str("<section id=\"notes\"><h2>Other notes</h2>");
        notes(&mut out, &other);
        out.push_str("</section>\n");
    }
    let _ = writeln!(
        out,
        "<footer><p>Written by {} from a scan started {}. This page is self-contained: it loads \
         nothing and runs no script. The same data as JSON: <code>stek scan --json</code>.</p>\
         </footer>\n</main>\n</body>\n</html>",
        Esc(&report.scanner),
        stamp(report.started_at)
    );
    out
}

fn head(out: &mut String, r: &Report) {
    let names: Vec<String> = r.targets.iter().map(TargetReport::label).collect();
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n\
         <meta name=\"generator\" content=\"{}\">\n\
         <title>{}: {} (stek scan)</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>",
        Esc(&r.scanner),
        Esc(&r.verdict.to_uppercase()),
        Esc(&names.join(", ")),
    );
}

fn verdict(out: &mut String, r: &Report) {
    let class = match r.verdict.as_str() {
        "pass" => "pass",
        "fail" => "fail",
        _ => "error",
    };
    let meaning = match class {
        "pass" => "no finding of medium severity or worse",
        "fail" => "findings of medium severity or worse",
        _ => "the scan could not assess every endpoint",
    };
    // The summary of a pass says the same already.
    let meaning = if r.summary == meaning { "" } else { meaning };
    let _ = writeln!(
        out,
        "<header id=\"verdict\" class=\"verdict v-{class}\" data-verdict=\"{}\" \
         data-exit-code=\"{}\">\n<p class=\"tool\">stek scan: TLS session resumption audit</p>\n\
         <p class=\"word\"><span id=\"verdict-word\">{}</span> <span class=\"meaning\">{meaning}\
         </span></p>\n<p id=\"summary\">{}</p>\n<p class=\"meta\">exit code <strong \
         id=\"exit-code\">{}</strong> · {} endpoint(s) · scan took {} · started {}</p>",
        Esc(&r.verdict),
        r.exit_code,
        Esc(&r.verdict.to_uppercase()),
        Esc(&r.summary),
        r.exit_code,
        r.targets.len(),
        report::human(r.duration_secs),
        stamp(r.started_at)
    );
    if !r.targets.is_empty() {
        out.push_str("<nav><ul class=\"toc\">");
        for (i, t) in r.targets.iter().enumerate() {
            let _ = write!(
                out,
                "<li><a href=\"#endpoint-{i}\">{}</a></li>",
                Esc(&t.label())
            );
        }
        out.push_str("</ul></nav>\n");
    }
    out.push_str("</header>\n");
}

fn warnings(out: &mut String, r: &Report) {
    if r.warnings.is_empty() {
        return;
    }
    out.push_str("<section id=\"warnings\"><h2>About this scan</h2><ul>\n");
    for w in &r.warnings {
        let _ = writeln!(out, "<li class=\"warning\">{}</li>", Esc(w));
    }
    out.push_str("</ul></section>\n");
}

fn findings(out: &mut String, r: &Report) {
    let shown: Vec<&Finding> = r
        .findings
        .iter()
        .filter(|f| f.severity > Severity::Info)
        .collect();
    let _ = writeln!(
        out,
        "<section id=\"findings\"><h2>Findings <span class=\"count\">{}</span></h2>",
        shown.len()
    );
    if shown.is_empty() {
        out.push_str("<p class=\"none\">No finding of low severity or worse.</p>\n");
    }
    for f in shown {
        finding(out, f);
    }
    out.push_str("</section>\n");
}

fn finding(out: &mut String, f: &Finding) {
    let sev = f.severity.word();
    let _ = writeln!(
        out,
        "<article class=\"finding sev-{sev}\" data-id=\"{}\" data-severity=\"{sev}\" \
         data-target=\"{}\">\n<h3><span class=\"sev\">{}</span> {}</h3>\n\
         <p class=\"fid\"><code>{}</code> · {}</p>\n<p class=\"evidence\">{}</p>",
        Esc(&f.id),
        Esc(&f.target),
        sev.to_uppercase(),
        Esc(&f.title),
        Esc(&f.id),
        Esc(&f.target),
        Esc(&f.evidence),
    );
    if !f.remediation.is_empty() {
        // <pre>: the fix is written in lines (one per server, configuration lines indented).
        let _ = writeln!(
            out,
            "<div class=\"fix\"><p class=\"fix-label\">Fix</p><pre>{}</pre></div>",
            Esc(&f.remediation)
        );
    }
    out.push_str("</article>\n");
}

/// Findings of severity info, one compact list item each.
fn notes(out: &mut String, notes: &[&Finding]) {
    out.push_str("<ul class=\"notes\">\n");
    for f in notes {
        let _ = writeln!(
            out,
            "<li class=\"finding sev-info\" data-id=\"{id}\" data-severity=\"info\" \
             data-target=\"{target}\"><strong>{}</strong> <code>{id}</code><br><span \
             class=\"evidence\">{}</span> <span class=\"note-fix\">{}</span></li>",
            Esc(&f.title),
            Esc(&f.evidence),
            Esc(&f.remediation),
            id = Esc(&f.id),
            target = Esc(&f.target),
        );
    }
    out.push_str("</ul>\n");
}

fn endpoint(out: &mut String, i: usize, t: &TargetReport, facts: &[&Finding]) {
    let _ = write!(
        out,
        "<section class=\"endpoint\" id=\"endpoint-{i}\" data-target=\"{}\" data-address=\"{}\">\n\
         <h3>{}</h3>\n<dl class=\"facts\"><dt>Address</dt><dd>{}</dd><dt>Server name (SNI)</dt>\
         <dd class=\"sni\">{}</dd><dt>Server</dt><dd class=\"family\" data-family=\"{}\">\
         <strong>{}</strong>",
        Esc(&t.target),
        Esc(&t.address),
        Esc(&t.label()),
        Esc(&t.address),
        match &t.sni {
            Some(s) => Esc(s).to_string(),
            None => "no SNI".into(),
        },
        Esc(&t.server_family.id),
        Esc(&t.server_family.name),
    );
    if t.server_family.evidence.is_empty() {
        out.push_str(" <span class=\"muted\">(nothing pointed to a known server)</span>");
    } else {
        out.push_str("<ul class=\"evidence-list\">");
        for e in &t.server_family.evidence {
            let _ = write!(out, "<li>{}</li>", Esc(e));
        }
        out.push_str("</ul>");
    }
    out.push_str("</dd></dl>\n");
    if let Some(e) = &t.error {
        let _ = writeln!(
            out,
            "<p class=\"error\"><strong>Could not scan:</strong> {}</p>",
            Esc(e)
        );
    }
    if observed(t) {
        timeline(out, i, t);
    } else if t.error.is_none() {
        let tickets = t.tls12.tickets_issued || t.tls13.tickets_issued;
        let _ = writeln!(
            out,
            "<p class=\"no-timeline\">No timeline: {}</p>",
            if tickets {
                "this scan saw a single moment. To see keys change and old tickets refused, \
                 observe for a while (<code>--observe DUR</code>, e.g. <code>--observe 2h</code>) \
                 or keep observations across runs (<code>--state FILE</code>, e.g. from a \
                 daily cron job: each run offers the tickets kept by the one before)."
            } else {
                "the server issued no tickets, so there is no key to follow. \
                 (<code>--observe DUR</code> or <code>--state FILE</code> draw one when there \
                 are.)"
            }
        );
    }
    if !facts.is_empty() {
        let _ = writeln!(
            out,
            "<h4>Notes <span class=\"count\">{}</span></h4>",
            facts.len()
        );
        notes(out, facts);
    }
    out.push_str("<h4>Each TLS version</h4>\n");
    versions(out, t);
    out.push_str("</section>\n");
}

/// The endpoint has something to draw: old tickets were offered again (after `--observe`, or
/// on a later run with `--state`), or the key changed while the scan looked. A plain first scan
/// sees one key at one moment: nothing to put on a time axis.
fn observed(t: &TargetReport) -> bool {
    !t.acceptance.is_empty() || t.keys.len() >= 2
}

fn versions(out: &mut String, t: &TargetReport) {
    let both = [("tls12", &t.tls12), ("tls13", &t.tls13)];
    out.push_str(
        "<div class=\"scroll\"><table class=\"versions\"><thead><tr><th scope=\"col\">\
         </th><th scope=\"col\">TLS 1.2</th><th scope=\"col\">TLS 1.3</th></tr></thead><tbody>\n",
    );
    type Cell = fn(&VersionReport) -> String;
    let rows: [(&str, &str, Cell); 12] = [
        ("outcome", "Outcome", outcome),
        ("cipher", "Cipher suite", |v| opt(v.cipher.as_deref())),
        ("session-id", "Session-ID resumption", |v| {
            assessed(v, yes(v.session_id_resumption))
        }),
        ("tickets", "Tickets per connection", |v| {
            assessed(
                v,
                if v.tickets_issued {
                    v.tickets_per_connection.to_string()
                } else {
                    "none".into()
                },
            )
        }),
        ("lifetime", "Ticket lifetime", |v| match v.lifetime_hint {
            Some(0) => "unspecified (0)".into(),
            Some(l) => format!("{} ({l} s)", report::human(f64::from(l))),
            None => "—".into(),
        }),
        ("format", "Ticket format", |v| {
            match v.ticket_format {
                Some(TicketFormat::Named) => "encrypted, with a key name",
                Some(TicketFormat::Nameless) => "encrypted, no key name",
                Some(TicketFormat::CacheId) => "session-cache ID (no ticket key)",
                None => "—",
            }
            .into()
        }),
        ("resumption", "Ticket resumption", |v| {
            let mut s = yes(v.ticket_resumption);
            if v.ticket_renewed == Some(true) {
                s.push_str(", ticket renewed");
            }
            s
        }),
        ("single-use", "Single-use tickets", |v| yes(v.single_use)),
        ("dhe", "Resumption with (EC)DHE", |v| {
            match v.resumption_with_dhe {
                Some(true) => "yes (psk_dhe_ke)".into(),
                Some(false) => "no (psk_ke: no forward secrecy)".into(),
                None => "—".into(),
            }
        }),
        ("early-data", "0-RTT data per ticket", |v| {
            v.max_early_data
                .map_or_else(|| "—".into(), |n| format!("{n} bytes"))
        }),
        ("key-name", "Key name", |v| {
            match (&v.key_name, v.key_name_confirmed) {
                (Some(n), true) => format!("{n} (confirmed on {} tickets)", v.tickets_seen),
                (Some(n), false) => format!("{n} (not confirmed on a second ticket)"),
                (None, _) if v.tickets_issued => "none in the tickets".into(),
                (None, _) => "—".into(),
            }
        }),
        ("weak-key", "Guessable key", |v| match &v.weak_key {
            Some(w) if v.weak_key_decrypts => format!("{w} (decrypts the ticket)"),
            Some(w) => format!("{w} (MAC key only)"),
            None if v.tickets_issued => "none found".into(),
            None => "—".into(),
        }),
    ];
    for (field, label, cell) in rows {
        let _ = write!(out, "<tr><th scope=\"row\">{label}</th>");
        for (id, v) in both {
            let bad = match field {
                // A version the server does not speak is a fact, not a failure.
                "outcome" => !matches!(v.outcome, Outcome::Assessed | Outcome::NotOffered),
                "weak-key" => v.weak_key.is_some(),
                "dhe" => v.resumption_with_dhe == Some(false),
                _ => false,
            };
            let _ = write!(
                out,
                "<td data-version=\"{id}\" data-field=\"{field}\"{}{}>{}</td>",
                if field == "outcome" {
                    format!(" data-outcome=\"{}\"", v.outcome.word())
                } else {
                    String::new()
                },
                if bad { " class=\"bad\"" } else { "" },
                Esc(&cell(v))
            );
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></div>\n");
}

fn outcome(v: &VersionReport) -> String {
    let mut s = match v.outcome {
        Outcome::Assessed => "assessed",
        Outcome::NotOffered => "not offered",
        Outcome::NameRefused => "the server refused the name",
        Outcome::Failed => "handshake did not complete",
        Outcome::Unreachable => "unreachable",
    }
    .to_owned();
    if let Some(a) = &v.alert {
        let _ = write!(s, "; alert {a}");
    }
    if let Some(e) = &v.error {
        let _ = write!(s, ": {e}");
    }
    s
}

/// A cell that means something only when the version was assessed.
fn assessed(v: &VersionReport, s: String) -> String {
    if v.outcome == Outcome::Assessed {
        s
    } else {
        "—".into()
    }
}

fn opt(s: Option<&str>) -> String {
    s.unwrap_or("—").to_owned()
}

fn yes(b: Option<bool>) -> String {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "—",
    }
    .into()
}

fn answer(c: &AcceptanceCheck) -> (&'static str, &'static str) {
    match c.accepted {
        Some(true) => ("true", "accepted"),
        Some(false) => ("false", "refused"),
        None => ("unknown", "no answer"),
    }
}

/// What was offered again: an encrypted ticket, or a key into the server's session cache
/// (stateful TLS 1.3 tickets, no ticket key involved).
fn kind(c: &AcceptanceCheck) -> &'static str {
    if c.cache_id {
        "session-cache ID"
    } else {
        "ticket"
    }
}

fn version_label(v: &str) -> &str {
    match v {
        "tls12" => "TLS 1.2",
        "tls13" => "TLS 1.3",
        other => other,
    }
}

/// Geometry of the timeline, in SVG user units (the picture scales to the page width and
/// scrolls sideways below a minimum width, so text stays legible in a narrow window).
const W: f64 = 960.0;
const PLOT_X0: f64 = 64.0;
const PLOT_X1: f64 = 800.0;
const KEY_ROW: f64 = 21.0;
/// The advance of one character of the monospace labels at 11 px (DejaVu Sans Mono, the
/// widest common one: 0.602 em).
const CHAR_W: f64 = 6.7;
const CHECK_ROW: f64 = 17.0;

/// Maps Unix seconds to x.
#[derive(Debug, Clone, Copy)]
struct Axis {
    /// The drawn range: the data, padded.
    t0: f64,
    t1: f64,
    /// The earliest and latest time drawn.
    first: f64,
    last: f64,
}

impl Axis {
    /// Spans every time drawn, padded so marks at either end stay inside the plot.
    fn new(times: impl Iterator<Item = f64>) -> Option<Axis> {
        let (lo, hi) = times
            .filter(|t| t.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), t| {
                (lo.min(t), hi.max(t))
            });
        if !lo.is_finite() {
            return None;
        }
        let span = (hi - lo).max(1.0);
        let (first, last) = (lo, hi);
        let mid = (lo + hi) / 2.0;
        let (lo, hi) = (mid - span / 2.0, mid + span / 2.0);
        Some(Axis {
            t0: lo - span * 0.02,
            t1: hi + span * 0.02,
            first,
            last,
        })
    }

    fn x(&self, t: f64) -> f64 {
        let f = if t.is_finite() {
            ((t - self.t0) / (self.t1 - self.t0)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        PLOT_X0 + f * (PLOT_X1 - PLOT_X0)
    }

    /// Tick times at a round UTC step giving at most 8 ticks.
    fn ticks(&self) -> (f64, Vec<f64>) {
        #[rustfmt::skip]
        const STEPS: [f64; 26] = [
            0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0,
            1800.0, 3600.0, 7200.0, 10800.0, 21600.0, 43200.0, 86400.0, 172_800.0, 345_600.0,
            604_800.0, 1_209_600.0, 2_592_000.0,
        ];
        let span = self.t1 - self.t0;
        let step = STEPS
            .iter()
            .copied()
            .find(|s| span / s <= 8.0)
            .unwrap_or_else(|| 2_592_000.0 * (span / (8.0 * 2_592_000.0)).ceil());
        let mut t = (self.t0 / step).ceil() * step;
        let mut out = Vec::new();
        while t <= self.t1 && out.len() < 16 {
            out.push(t);
            t += step;
        }
        (step, out)
    }
}

fn utc(secs: f64) -> Option<time::OffsetDateTime> {
    if !secs.is_finite() {
        return None;
    }
    // Whole seconds: the sub-second part is added back where a label shows tenths.
    time::OffsetDateTime::from_unix_timestamp(secs.floor() as i64).ok()
}

/// `2026-12-07 09:37:07 UTC`.
fn stamp(secs: f64) -> String {
    match utc(secs) {
        Some(d) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        None => "?".into(),
    }
}

fn date(secs: f64) -> String {
    utc(secs).map_or_else(
        || "?".into(),
        |d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
    )
}

/// A tick label for a step of `step` seconds.
fn tick_label(t: f64, step: f64) -> String {
    let Some(d) = utc(t) else { return "?".into() };
    if step >= 86400.0 {
        format!("{:02}-{:02}", u8::from(d.month()), d.day())
    } else if step >= 60.0 {
        format!("{:02}:{:02}", d.hour(), d.minute())
    } else if step >= 1.0 {
        format!("{:02}:{:02}:{:02}", d.hour(), d.minute(), d.second())
    } else {
        let tenths = ((t - t.floor()) * 10.0).round().min(9.0) as u8;
        format!(
            "{:02}:{:02}:{:02}.{tenths}",
            d.hour(),
            d.minute(),
            d.second()
        )
    }
}

/// Where a bar's label goes: after the bar if it fits, else before it, else inside it (light
/// text), else after it anyway (the picture clips it). (x, text-anchor, inside).
fn place_label(x0: f64, x1: f64, chars: usize) -> (f64, &'static str, bool) {
    let w = chars as f64 * CHAR_W;
    if x1 + 6.0 + w <= W - 4.0 {
        (x1 + 6.0, "start", false)
    } else if x0 - 6.0 - w >= 4.0 {
        (x0 - 6.0, "end", false)
    } else if x1 - x0 >= w + 8.0 {
        (x0 + 4.0, "start", true)
    } else {
        (x1 + 6.0, "start", false)
    }
}

/// The checks to draw: all of them up to [`MAX_CHECK_LINES`], else an even spread that keeps
/// the oldest accepted and the youngest refused. Ordered by issue time.
fn checks_to_draw(all: &[AcceptanceCheck]) -> Vec<&AcceptanceCheck> {
    let mut sorted: Vec<&AcceptanceCheck> = all.iter().collect();
    sorted.sort_by(|a, b| {
        a.issued_at
            .total_cmp(&b.issued_at)
            .then(a.checked_at.total_cmp(&b.checked_at))
    });
    if sorted.len() <= MAX_CHECK_LINES {
        return sorted;
    }
    let n = sorted.len();
    let mut keep: Vec<usize> = (0..MAX_CHECK_LINES - 2)
        .map(|i| i * (n - 1) / (MAX_CHECK_LINES - 3))
        .collect();
    let pick = |want: Option<bool>, oldest: bool| {
        (0..n)
            // The figures (oldest accepted, youngest refused) are about tickets only.
            .filter(|&i| sorted[i].accepted == want && !sorted[i].cache_id)
            .reduce(|a, b| {
                let older = sorted[b].age_secs > sorted[a].age_secs;
                if older == oldest {
                    b
                } else {
                    a
                }
            })
    };
    keep.extend(pick(Some(true), true));
    keep.extend(pick(Some(false), false));
    keep.sort_unstable();
    keep.dedup();
    keep.into_iter().map(|i| sorted[i]).collect()
}

/// The figures beside the picture, and the picture.
fn timeline(out: &mut String, i: usize, t: &TargetReport) {
    let keys: &[KeyReport] = &t.keys[t.keys.len().saturating_sub(MAX_KEY_BARS)..];
    let hidden_keys = t.keys.len() - keys.len();
    let checks = checks_to_draw(&t.acceptance);
    let count = |want: Option<bool>| t.acceptance.iter().filter(|c| c.accepted == want).count();
    let (acc, refd, unk) = (count(Some(true)), count(Some(false)), count(None));
    let nameless = t.keys.is_empty();

    // The summary, in words: beside the picture, and its text alternative.
    let rotation = match t.rotation_observed_secs {
        Some(r) => format!("every {}", report::human(r)),
        None if t.keys.len() >= 2 => "one change seen".into(),
        None if nameless => "not measured (no key name)".into(),
        None => "no change seen".into(),
    };
    let oldest = t
        .oldest_accepted_secs
        .map_or_else(|| "none accepted".into(), report::human);
    let youngest = t
        .youngest_refused_secs
        .map_or_else(|| "none refused".into(), report::human);
    let desc = format!(
        "{}; rotation: {rotation}; {} old ticket(s) offered again over {}: {acc} accepted \
         (oldest {oldest}), {refd} refused (youngest {youngest}), {unk} without an answer.",
        if nameless {
            "the tickets carry no key name".to_owned()
        } else {
            format!("{} key name(s)", t.keys.len())
        },
        t.acceptance.len(),
        report::human(t.observed_secs),
    );

    let _ = writeln!(
        out,
        "<h4>Timeline</h4>\n<div class=\"figure\">\n<dl class=\"measures\" id=\"measures-{i}\">\
         <div><dt>New key</dt><dd class=\"rotation\">{}</dd></div>\
         <div><dt>Key names seen</dt><dd>{}</dd></div>\
         <div><dt>Observed for</dt><dd>{}</dd></div>\
         <div><dt>Oldest ticket accepted</dt><dd class=\"oldest-accepted\">{}</dd></div>\
         <div><dt>Youngest ticket refused</dt><dd class=\"youngest-refused\">{}</dd></div>\
         <div><dt>Old tickets offered again</dt><dd>{} <small>{acc} accepted, {refd} refused, \
         {unk} no answer{}</small></dd></div></dl>",
        Esc(&rotation),
        if nameless {
            "none (no name in the tickets)".to_owned()
        } else {
            t.keys.len().to_string()
        },
        report::human(t.observed_secs),
        Esc(&oldest),
        Esc(&youngest),
        t.acceptance.len(),
        match t.acceptance.iter().filter(|c| c.cache_id).count() {
            0 => String::new(),
            n => format!("; {n} of them session-cache IDs (no ticket key)"),
        },
    );

    let Some(axis) = Axis::new(
        keys.iter()
            .flat_map(|k| [k.first_seen, k.last_seen])
            .chain(checks.iter().flat_map(|c| [c.issued_at, c.checked_at])),
    ) else {
        out.push_str("<p>No time to draw.</p></div>\n");
        return;
    };

    let mut svg = String::new();
    let mut y = 24.0;
    let _ = writeln!(
        svg,
        "<text class=\"lane\" x=\"8\" y=\"{y}\">Key names: each bar runs from the first to the \
         last fresh ticket made with that key</text>"
    );
    y += 8.0;
    let grid_top = y;
    if nameless {
        y += 16.0;
        let _ = writeln!(
            svg,
            "<text class=\"note\" x=\"{PLOT_X0}\" y=\"{y}\">These tickets carry no key name: the \
             key shows only through which old tickets are still accepted (below).</text>"
        );
        y += 10.0;
    }
    for (n, k) in keys.iter().enumerate() {
        let (x0, x1) = (axis.x(k.first_seen), axis.x(k.last_seen));
        let width = (x1 - x0).max(3.0);
        let life = report::human(k.last_seen - k.first_seen);
        let label = format!("{} · seen {life}", k.name);
        let (lx, anchor, inside) = place_label(x0, x0 + width, label.chars().count());
        let _ = writeln!(
            svg,
            "<g class=\"key-bar\" data-name=\"{name}\"><title>key {name}: fresh tickets from {} \
             to {} ({life}, {} sample(s), {})</title>\
             <rect class=\"bar k{}\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{width:.1}\" height=\"13\" \
             rx=\"3\"/><text class=\"key-name{}\" x=\"{lx:.1}\" y=\"{:.1}\" \
             text-anchor=\"{anchor}\">{}</text></g>",
            stamp(k.first_seen),
            stamp(k.last_seen),
            k.samples,
            Esc(&k.versions.join("+")),
            n % 6,
            y + 4.0,
            if inside { " inside" } else { "" },
            y + 14.5,
            Esc(&label),
            name = Esc(&k.name),
        );
        y += KEY_ROW;
    }
    if hidden_keys > 0 {
        y += 12.0;
        let _ = writeln!(
            svg,
            "<text class=\"note\" x=\"{PLOT_X0}\" y=\"{y}\">{hidden_keys} earlier key name(s) \
             not drawn: all are listed in the table below.</text>"
        );
        y += 6.0;
    }

    y += 24.0;
    let _ = writeln!(
        svg,
        "<text class=\"lane\" x=\"8\" y=\"{y}\">Old tickets offered again: each line runs from \
         the ticket's issue to the offer; the mark is the answer</text>"
    );
    y += 6.0;
    if checks.is_empty() {
        y += 18.0;
        let _ = writeln!(
            svg,
            "<text class=\"note\" x=\"{PLOT_X0}\" y=\"{y}\">No old ticket offered again yet: \
             <tspan font-style=\"italic\">--observe</tspan> offers the first tickets at its end; \
             <tspan font-style=\"italic\">--state</tspan> on the next run.</text>"
        );
        y += 6.0;
    }
    for c in &checks {
        let (x0, x1) = (axis.x(c.issued_at), axis.x(c.checked_at));
        let (data, word) = answer(c);
        let cy = y + CHECK_ROW / 2.0 + 2.0;
        let mark = match c.accepted {
            Some(true) => {
                format!("<circle class=\"m-acc\" cx=\"{x1:.1}\" cy=\"{cy:.1}\" r=\"5\"/>")
            }
            Some(false) => format!(
                "<path class=\"m-ref\" d=\"M{:.1},{:.1}l8,8m0,-8l-8,8\"/>",
                x1 - 4.0,
                cy - 4.0
            ),
            None => format!("<circle class=\"m-unk\" cx=\"{x1:.1}\" cy=\"{cy:.1}\" r=\"4.5\"/>"),
        };
        let age = report::human(c.age_secs);
        let _ = writeln!(
            svg,
            "<g class=\"acceptance\" data-accepted=\"{data}\" data-version=\"{}\" \
             data-age=\"{:.1}\" data-cache-id=\"{}\"><title>{} {}{} issued {}, offered again {} \
             ({age} old): {word}</title>\
             <text class=\"ver\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <line class=\"l-{data}\" x1=\"{x0:.1}\" y1=\"{cy:.1}\" x2=\"{x1:.1}\" y2=\"{cy:.1}\"/>\
             <line class=\"issue\" x1=\"{x0:.1}\" y1=\"{:.1}\" x2=\"{x0:.1}\" y2=\"{:.1}\"/>{mark}\
             <text class=\"answer a-{data}\" x=\"{:.1}\" y=\"{:.1}\">{word} · {age} old{}</text></g>",
            Esc(&c.version),
            c.age_secs,
            c.cache_id,
            Esc(version_label(&c.version)),
            kind(c),
            c.name
                .as_ref()
                .map(|n| format!(" of key {}", Esc(n)))
                .unwrap_or_default(),
            stamp(c.issued_at),
            stamp(c.checked_at),
            PLOT_X0 - 8.0,
            cy + 3.5,
            Esc(version_label(&c.version)),
            cy - 4.0,
            cy + 4.0,
            x1 + 9.0,
            cy + 3.5,
            if c.cache_id { " · cache ID" } else { "" },
        );
        y += CHECK_ROW;
    }
    if checks.len() < t.acceptance.len() {
        y += 12.0;
        let _ = writeln!(
            svg,
            "<text class=\"note\" x=\"{PLOT_X0}\" y=\"{y}\">{} of {} checks drawn (an even \
             spread, the oldest accepted and the youngest refused): all are in the table below.\
             </text>",
            checks.len(),
            t.acceptance.len()
        );
    }

    // The time axis, with vertical grid lines through both lanes.
    y += 12.0;
    let axis_y = y;
    let (step, ticks) = axis.ticks();
    let mut grid = String::new();
    let mut last_date = String::new();
    for &tt in &ticks {
        let x = axis.x(tt);
        let _ = write!(
            grid,
            "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{grid_top}\" x2=\"{x:.1}\" y2=\"{axis_y}\"/>"
        );
        let _ = write!(
            svg,
            "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{axis_y}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>\
             <text class=\"tick-label\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            axis_y + 5.0,
            axis_y + 18.0,
            tick_label(tt, step)
        );
        let d = date(tt);
        if step < 86400.0 && d != last_date {
            let _ = write!(
                svg,
                "<text class=\"tick-date\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{d}</text>",
                axis_y + 31.0
            );
            last_date = d;
        }
    }
    let _ = writeln!(
        svg,
        "\n<line class=\"axis\" x1=\"{PLOT_X0}\" y1=\"{axis_y}\" x2=\"{PLOT_X1}\" y2=\"{axis_y}\"/>\
         <text class=\"caption\" x=\"{PLOT_X0}\" y=\"{:.1}\">time (UTC): {} to {}, {}</text>",
        axis_y + 50.0,
        stamp(axis.first),
        stamp(axis.last),
        report::human(axis.last - axis.first)
    );
    let height = axis_y + 60.0;

    // No xmlns: the HTML parser puts inline <svg> in the SVG namespace, and the page then holds
    // no URL at all of its own.
    let _ = writeln!(
        out,
        "<div class=\"scroll\"><svg class=\"timeline\" id=\"timeline-{i}\" \
         viewBox=\"0 0 {W} {height:.0}\" role=\"img\" \
         aria-labelledby=\"timeline-{i}-title timeline-{i}-desc\">\n\
         <title id=\"timeline-{i}-title\">Timeline of {}: key names and old tickets offered \
         again</title>\n<desc id=\"timeline-{i}-desc\">{}</desc>\n{grid}\n{svg}</svg></div>\n</div>",
        Esc(&t.label()),
        Esc(&desc),
    );
    tables(out, t);
}

/// Every key and every check, as tables under the picture (folded).
fn tables(out: &mut String, t: &TargetReport) {
    if !t.keys.is_empty() {
        let _ = writeln!(
            out,
            "<details class=\"keys\"><summary>{} key name(s)</summary><div class=\"scroll\">\
             <table><thead><tr><th scope=\"col\">Key name</th><th scope=\"col\">First fresh \
             ticket</th><th scope=\"col\">Last fresh ticket</th><th scope=\"col\">Encrypting for \
             at least</th><th scope=\"col\">Samples</th><th scope=\"col\">Versions</th></tr>\
             </thead><tbody>",
            t.keys.len()
        );
        for k in &t.keys {
            let _ = writeln!(
                out,
                "<tr><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td></tr>",
                Esc(&k.name),
                stamp(k.first_seen),
                stamp(k.last_seen),
                report::human(k.last_seen - k.first_seen),
                k.samples,
                Esc(&k.versions.join("+"))
            );
        }
        out.push_str("</tbody></table></div></details>\n");
    }
    if !t.acceptance.is_empty() {
        let _ = writeln!(
            out,
            "<details class=\"checks\"><summary>{} old ticket(s) offered again</summary>\
             <div class=\"scroll\"><table><thead><tr><th scope=\"col\">Version</th><th \
             scope=\"col\">Offered</th><th scope=\"col\">Key name</th><th scope=\"col\">Issued</th><th scope=\"col\">Offered \
             again</th><th scope=\"col\">Age</th><th scope=\"col\">Answer</th></tr></thead>\
             <tbody>",
            t.acceptance.len()
        );
        for c in &t.acceptance {
            let (data, word) = answer(c);
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td class=\"a-{data}\">{word}</td></tr>",
                Esc(version_label(&c.version)),
                kind(c),
                Esc(c.name.as_deref().unwrap_or("none")),
                stamp(c.issued_at),
                stamp(c.checked_at),
                report::human(c.age_secs)
            );
        }
        out.push_str("</tbody></table></div></details>\n");
    }
}

fn fleets(out: &mut String, r: &Report) {
    if r.fleets.is_empty() {
        return;
    }
    out.push_str("<section id=\"fleets\"><h2>Addresses sharing a name</h2>\n");
    for f in &r.fleets {
        let accepted = f
            .cross_resumption
            .iter()
            .filter(|c| c.accepted == Some(true))
            .count();
        let _ = writeln!(
            out,
            "<div class=\"fleet\" data-sni=\"{}\"><h3>{}</h3><dl class=\"facts\"><dt>Addresses\
             </dt><dd>{}</dd><dt>Same key name</dt><dd>{}</dd><dt>A ticket from one resumes on \
             another</dt><dd>{accepted} of {} pair(s)</dd></dl></div>",
            Esc(&f.sni),
            Esc(&f.sni),
            Esc(&f.addresses.join(", ")),
            match f.same_key_name {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unknown",
            },
            f.cross_resumption.len()
        );
    }
    out.push_str("</section>\n");
}

/// The style sheet: system fonts only (nothing to download), light and dark schemes.
const CSS: &str = r#"
:root{--bg:#f6f7f9;--card:#fff;--fg:#1c2330;--muted:#5b6576;--line:#dde1e7;--code:#eef1f5;
--pass:#1d7a46;--fail:#b42318;--error:#b54708;--acc:#1d7a46;--ref:#c0262d;--unk:#7a8394;
--critical:#7a1010;--high:#c0262d;--medium:#c4530c;--low:#8a6d00;--info:#3d6fb6;
--k0:#3d6fb6;--k1:#7a4fb5;--k2:#1f8a8a;--k3:#b5651d;--k4:#5a7d1e;--k5:#a63d7a;
--badge:#fff;--warn-bg:#fff6db;--warn-fg:#4a3b00;--warn-line:#ecd27a}
@media (prefers-color-scheme:dark){:root{--bg:#14181f;--card:#1c222b;--fg:#e6e9ee;
--muted:#9aa4b2;--line:#323a46;--code:#262e39;--pass:#4cc38a;--fail:#ff6b60;--error:#f5a524;
--acc:#4cc38a;--ref:#ff6b60;--unk:#9aa4b2;--critical:#ff8a80;--high:#ff6b60;--medium:#f5a524;
--low:#d6c14a;--info:#7fb0ff;--badge:#14181f;--warn-bg:#3a3113;--warn-fg:#f5e7b8;
--warn-line:#7a6420}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:16px}
h2{font-size:1.25rem;margin:28px 0 10px}
h3{font-size:1.05rem;margin:0 0 6px}
h4{font-size:.95rem;margin:18px 0 6px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
code,pre,.mono{font-family:ui-monospace,"SFMono-Regular","DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.88em}
code{background:var(--code);padding:1px 5px;border-radius:4px}
.count{font-size:.85rem;font-weight:600;background:var(--code);border-radius:10px;padding:1px 9px;vertical-align:middle}
.muted,.meta,.tool,.meaning{color:var(--muted)}
.verdict{background:var(--card);border:1px solid var(--line);border-left:10px solid var(--c);
border-radius:10px;padding:14px 20px;margin-top:8px}
.v-pass{--c:var(--pass)}.v-fail{--c:var(--fail)}.v-error{--c:var(--error)}
.verdict p{margin:4px 0}.tool{font-size:.85rem}
.word{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 14px}
#verdict-word{font-size:2.4rem;font-weight:800;letter-spacing:.04em;color:var(--c);line-height:1.1}
#summary{font-size:1.1rem;font-weight:600}
.toc{list-style:none;padding:0;margin:8px 0 0;display:flex;flex-wrap:wrap;gap:6px}
.toc a{display:inline-block;padding:2px 10px;border:1px solid var(--line);border-radius:12px;
color:inherit;text-decoration:none;font-size:.88rem}
.warning{margin:4px 0}
#warnings ul{background:var(--warn-bg);color:var(--warn-fg);border:1px solid var(--warn-line);border-radius:8px;padding:10px 10px 10px 30px}
.finding{background:var(--card);border:1px solid var(--line);border-left:6px solid var(--s);
border-radius:8px;padding:12px 16px;margin:10px 0}
.sev-critical{--s:var(--critical)}.sev-high{--s:var(--high)}.sev-medium{--s:var(--medium)}
.sev-low{--s:var(--low)}.sev-info{--s:var(--info)}
.sev{display:inline-block;min-width:5.2em;text-align:center;font-size:.72rem;font-weight:700;
letter-spacing:.06em;color:var(--badge);background:var(--s);border-radius:4px;padding:2px 6px;margin-right:6px;vertical-align:2px}
.fid{margin:0 0 6px;color:var(--muted);font-size:.9rem;overflow-wrap:anywhere}
.evidence{margin:6px 0;overflow-wrap:anywhere}
.fix{background:var(--code);border-radius:6px;padding:8px 12px;margin-top:8px}
.fix-label{margin:0 0 2px;font-weight:700;font-size:.8rem;text-transform:uppercase;letter-spacing:.05em;color:var(--muted)}
.fix pre{margin:0;white-space:pre-wrap;overflow-wrap:anywhere}
.notes{list-style:none;padding:0;margin:0}
.notes li.finding{background:none;border:0;border-left:3px solid var(--info);border-radius:0;
padding:3px 0 3px 12px;margin:6px 0;font-size:.9rem;overflow-wrap:anywhere}
.notes code{font-size:.78em;color:var(--muted)}
.note-fix{white-space:pre-wrap;color:var(--muted)}
.endpoint{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 18px;margin:12px 0}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:6px 0 10px}
.facts dt{color:var(--muted)}.facts dd{margin:0;overflow-wrap:anywhere}
.evidence-list{margin:2px 0 0;padding-left:18px;font-size:.9rem}
.error{color:var(--fail);overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:4px 10px;border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:anywhere}
thead th{font-weight:600;color:var(--muted)}
.versions{min-width:480px}.versions tbody th{font-weight:500;white-space:nowrap;width:12em}
td.bad{color:var(--fail);font-weight:600}
.measures{display:grid;grid-template-columns:repeat(auto-fill,minmax(155px,1fr));gap:8px;margin:0 0 12px}
.measures div{background:var(--code);border-radius:8px;padding:7px 12px}
.measures dt{color:var(--muted);font-size:.78rem}
.measures dd{margin:0;font-size:1.1rem;font-weight:650;overflow-wrap:anywhere}
.measures small{display:block;font-size:.75rem;font-weight:400;color:var(--muted)}
svg.timeline{display:block;width:100%;min-width:760px;height:auto;font-family:inherit}
svg .lane{font-size:13px;font-weight:650;fill:var(--fg)}
svg .note{font-size:12px;fill:var(--muted)}
svg .key-name{font-size:11px;fill:var(--fg);font-family:ui-monospace,"DejaVu Sans Mono",monospace}
svg .bar{stroke:none}
svg .key-name.inside{fill:#fff}
svg .k0{fill:var(--k0)}svg .k1{fill:var(--k1)}svg .k2{fill:var(--k2)}
svg .k3{fill:var(--k3)}svg .k4{fill:var(--k4)}svg .k5{fill:var(--k5)}
svg .ver{font-size:10px;fill:var(--muted)}
svg .l-true{stroke:var(--acc);stroke-width:2}
svg .l-false{stroke:var(--ref);stroke-width:2;stroke-dasharray:5 3}
svg .l-unknown{stroke:var(--unk);stroke-width:2;stroke-dasharray:1 3}
svg .issue{stroke:var(--muted);stroke-width:1.5}
svg .m-acc{fill:var(--acc)}
svg .m-ref{stroke:var(--ref);stroke-width:2.6;fill:none;stroke-linecap:round}
svg .m-unk{fill:var(--card);stroke:var(--unk);stroke-width:2}
svg .answer{font-size:11px}
svg .a-true,.a-true{fill:var(--acc);color:var(--acc)}
svg .a-false,.a-false{fill:var(--ref);color:var(--ref)}
svg .a-unknown,.a-unknown{fill:var(--unk);color:var(--unk)}
svg .grid{stroke:var(--line);stroke-width:1}
svg .axis,svg .tick{stroke:var(--muted);stroke-width:1}
svg .tick-label{font-size:11px;fill:var(--fg)}
svg .tick-date{font-size:10px;fill:var(--muted)}
svg .caption{font-size:11px;fill:var(--muted)}
details{margin:8px 0}summary{cursor:pointer;color:var(--muted)}
.no-timeline{color:var(--muted);font-size:.92rem}
.fleet{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 16px;margin:10px 0}
footer{margin:30px 0 10px;color:var(--muted);font-size:.85rem}
@media (max-width:600px){main{padding:8px}.endpoint,.finding{padding:10px}
#verdict-word{font-size:1.9rem}.facts{grid-template-columns:1fr}.facts dt{margin-top:4px}
.versions{min-width:0}.versions tbody th{white-space:normal;width:auto}th,td{padding:4px 6px}}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::report::{FleetReport, ServerFamily};

    /// 2027-01-15 08:00:00 UTC.
    const T0: f64 = 1_800_000_000.0;

    /// A fix in lines, indented as the real ones are.
    const FIX: &str =
        "Rotate the ticket key (or turn tickets off) on every server behind this name:
nginx:   stek up, then in the server block `include /run/stek/nginx/tickets.conf;` and
         `stek up --on-change 'nginx -s reload'`; or `ssl_session_tickets off;`";

    /// Everything a server or a state file can put in a report, at once.
    const HOSTILE: &str =
        "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>&amp;\u{1b}[31m";

    fn version(name: Option<&str>) -> VersionReport {
        VersionReport {
            supported: true,
            outcome: Outcome::Assessed,
            cipher: Some("TLS13_AES_256_GCM_SHA384".into()),
            tickets_issued: true,
            tickets_per_connection: 2,
            lifetime_hint: Some(3600),
            ticket_resumption: Some(true),
            single_use: Some(false),
            key_name: name.map(str::to_owned),
            key_name_confirmed: name.is_some(),
            tickets_seen: 3,
            ticket_format: Some(if name.is_some() {
                TicketFormat::Named
            } else {
                TicketFormat::Nameless
            }),
            ..VersionReport::default()
        }
    }

    fn key(name: &str, first: f64, last: f64) -> KeyReport {
        KeyReport {
            name: name.into(),
            first_seen: first,
            last_seen: last,
            samples: 3,
            versions: vec!["tls12".into(), "tls13".into()],
        }
    }

    fn check(
        name: Option<&str>,
        issued: f64,
        checked: f64,
        accepted: Option<bool>,
    ) -> AcceptanceCheck {
        let mut c: AcceptanceCheck = serde_json::from_value(serde_json::json!({
            "version": "tls13", "name": name, "issued_at": 0.0, "checked_at": 0.0,
            "age_secs": 0.0, "accepted": accepted,
        }))
        .expect("an acceptance check");
        // Assigned, not through JSON: the times may be NaN or infinite.
        (c.issued_at, c.checked_at, c.age_secs) = (issued, checked, checked - issued);
        c
    }

    fn target(keys: Vec<KeyReport>, acceptance: Vec<AcceptanceCheck>) -> TargetReport {
        let name = keys.last().map(|k| k.name.clone());
        // From the JSON interface, whose new fields come with defaults: fields added to the
        // report later need no change here.
        let mut t: TargetReport = serde_json::from_value(serde_json::json!({
            "target": "example.com", "address": "192.0.2.1:443", "sni": "example.com",
            "tls12": version(name.as_deref()), "tls13": version(name.as_deref()),
            "keys": [], "observed_secs": 7.0, "acceptance": [],
        }))
        .expect("a target report");
        // Assigned, not through JSON: the times may be NaN or infinite (JSON has neither).
        (t.keys, t.acceptance) = (keys, acceptance);
        t.server_family = ServerFamily {
            id: "nginx".into(),
            name: "nginx".into(),
            evidence: vec!["80-byte key layout verified".into()],
        };
        t.rotation_observed_secs = (t.keys.len() >= 3).then_some(2.0);
        // The figures as `analyze` makes them: of tickets, not of session-cache IDs.
        t.oldest_accepted_secs = t
            .acceptance
            .iter()
            .filter(|c| c.accepted == Some(true) && !c.cache_id)
            .map(|c| c.age_secs)
            .reduce(f64::max);
        t.youngest_refused_secs = t
            .acceptance
            .iter()
            .filter(|c| c.accepted == Some(false) && !c.cache_id)
            .map(|c| c.age_secs)
            .reduce(f64::min);
        t
    }

    fn finding(id: &str, severity: Severity, remediation: &str) -> Finding {
        Finding {
            id: id.into(),
            severity,
            target: "example.com (192.0.2.1:443)".into(),
            title: format!("title of {id}"),
            evidence: format!("evidence of {id}"),
            remediation: remediation.into(),
        }
    }

    fn report(targets: Vec<TargetReport>, findings: Vec<Finding>) -> Report {
        let base: Report = serde_json::from_value(serde_json::json!({
            "scanner": "", "started_at": 0.0, "duration_secs": 0.0, "verdict": "",
            "summary": "", "exit_code": 0, "targets": [], "fleets": [], "findings": [],
        }))
        .expect("a report");
        let mut r = Report {
            scanner: "stek 0.1.0".into(),
            started_at: T0,
            duration_secs: 7.3,
            targets,
            findings,
            ..base
        };
        r.conclude();
        r
    }

    /// A rotating server observed for 7 s: three keys, one old ticket refused, one accepted.
    fn observed_report() -> Report {
        let keys = vec![
            key(&"aa".repeat(16), T0, T0 + 1.9),
            key(&"bb".repeat(16), T0 + 2.0, T0 + 3.9),
            key(&"cc".repeat(16), T0 + 4.0, T0 + 6.9),
        ];
        let checks = vec![
            check(Some(&"aa".repeat(16)), T0, T0 + 7.0, Some(false)),
            check(Some(&"bb".repeat(16)), T0 + 2.0, T0 + 7.0, Some(true)),
            check(Some(&"cc".repeat(16)), T0 + 4.0, T0 + 7.1, None),
        ];
        report(
            vec![target(keys, checks)],
            vec![
                finding("stek.rotation", Severity::Info, "Nothing to change."),
                finding("stek.not_rotated", Severity::High, FIX),
                finding("stek.weak_key", Severity::Critical, FIX),
            ],
        )
    }

    /// Tags and attributes of a page written by [`render`] (attribute values are always
    /// double-quoted, text never holds a raw `<`): (tag, [(name, value)]) in order.
    fn tags(page: &str) -> Vec<(String, Vec<(String, String)>)> {
        let mut out = Vec::new();
        let mut rest = page;
        while let Some(start) = rest.find('<') {
            rest = &rest[start + 1..];
            if let Some(r) = rest.strip_prefix("!--") {
                rest = &r[r.find("-->").expect("comment closes") + 3..];
                continue;
            }
            let end = {
                // '>' inside a quoted value does not end the tag.
                let mut quoted = false;
                rest.char_indices()
                    .find(|&(_, c)| {
                        if c == '"' {
                            quoted = !quoted;
                        }
                        c == '>' && !quoted
                    })
                    .expect("tag closes")
                    .0
            };
            let inner = &rest[..end];
            rest = &rest[end + 1..];
            if inner.starts_with('/') || inner.starts_with('!') {
                continue;
            }
            let name_end = inner
                .find(|c: char| c.is_whitespace() || c == '/')
                .unwrap_or(inner.len());
            let name = inner[..name_end].to_ascii_lowercase();
            let mut attrs = Vec::new();
            let mut a = inner[name_end..].trim_start();
            while !a.is_empty() && a != "/" {
                let eq = a.find(['=', ' ']).unwrap_or(a.len());
                let key = a[..eq].trim_end_matches('/').to_ascii_lowercase();
                if a[eq..].starts_with("=\"") {
                    let v = &a[eq + 2..];
                    let close = v.find('"').expect("value closes");
                    attrs.push((key, v[..close].to_owned()));
                    a = v[close + 1..].trim_start();
                } else {
                    attrs.push((key, String::new()));
                    a = a[eq..].trim_start();
                }
            }
            out.push((name, attrs));
        }
        out
    }

    fn count(page: &str, needle: &str) -> usize {
        page.matches(needle).count()
    }

    #[test]
    fn escaping_covers_markup_quotes_and_control_characters() {
        assert_eq!(
            Esc("a<b>&\"'\u{0}\u{1b}c\n\td").to_string(),
            "a&lt;b&gt;&amp;&quot;&#39;\u{FFFD}\u{FFFD}c\n\td"
        );
        assert_eq!(Esc("plain é 日本").to_string(), "plain é 日本");
    }

    #[test]
    fn hostile_strings_from_the_server_stay_text() {
        let mut r = observed_report();
        r.summary = HOSTILE.into();
        r.warnings = vec![HOSTILE.into()];
        r.scanner = HOSTILE.into();
        for f in &mut r.findings {
            f.id = HOSTILE.into();
            f.target = HOSTILE.into();
            f.title = HOSTILE.into();
            f.evidence = HOSTILE.into();
            f.remediation = format!("{HOSTILE}\n{HOSTILE}");
        }
        let t = &mut r.targets[0];
        t.target = HOSTILE.into();
        t.sni = Some(HOSTILE.into());
        t.server_family = ServerFamily {
            id: HOSTILE.into(),
            name: HOSTILE.into(),
            evidence: vec![HOSTILE.into()],
        };
        for v in [&mut t.tls12, &mut t.tls13] {
            v.outcome = Outcome::Failed;
            v.alert = Some(HOSTILE.into());
            v.error = Some(HOSTILE.into());
            v.cipher = Some(HOSTILE.into());
            v.key_name = Some(HOSTILE.into());
            v.weak_key = Some(HOSTILE.into());
        }
        for k in &mut t.keys {
            k.name = HOSTILE.into();
            k.versions = vec![HOSTILE.into()];
        }
        for c in &mut t.acceptance {
            c.version = HOSTILE.into();
            c.name = Some(HOSTILE.into());
        }
        r.fleets = vec![FleetReport {
            sni: HOSTILE.into(),
            addresses: vec![HOSTILE.into()],
            same_key_name: None,
            cross_resumption: vec![],
        }];
        let page = render(&r);
        let mut tl = observed_report();
        tl.targets[0].error = Some(HOSTILE.into());
        let page2 = render(&tl);
        for page in [&page, &page2] {
            assert!(!page.contains(HOSTILE));
            assert!(
                !page.contains("<script") && !page.contains("<img"),
                "{page}"
            );
            assert!(!page.contains('\u{1b}'));
            assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&gt;&lt;img"));
            // The markup is the renderer's own: only its elements, no event handler.
            let allowed = [
                "html", "head", "meta", "title", "style", "body", "main", "header", "p", "span",
                "strong", "small", "br", "nav", "ul", "li", "a", "section", "h2", "h3", "h4",
                "article", "code", "div", "pre", "dl", "dt", "dd", "table", "thead", "tbody", "tr",
                "th", "td", "details", "summary", "footer", "svg", "desc", "g", "text", "tspan",
                "rect", "line", "path", "circle",
            ];
            for (tag, attrs) in tags(page) {
                assert!(allowed.contains(&tag.as_str()), "element <{tag}>");
                for (name, _) in attrs {
                    assert!(
                        !name.starts_with("on") && !name.contains('<'),
                        "attribute {name}"
                    );
                }
            }
        }
        // Still there, as text: the fix keeps its lines, the hostile key name its bar.
        assert_eq!(count(&page, "class=\"key-bar\""), 3);
        assert!(page.contains("&lt;/script&gt;&quot;&#39;&gt;&lt;img src=x onerror=alert(2)&gt;&amp;amp;\u{FFFD}[31m\n&lt;script&gt;"));
    }

    #[test]
    fn the_page_fetches_nothing() {
        let mut r = observed_report();
        r.findings[0].evidence = "see https://example.com/x and url(http://example.com/y)".into();
        let page = render(&r);
        assert!(page.contains(
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        ));
        assert!(!page.contains("<script") && !page.contains("<link") && !page.contains("@import"));
        let css = &page[page.find("<style>").unwrap()..page.find("</style>").unwrap()];
        assert!(!css.contains("url(") && !css.contains("://"), "{css}");
        let mut links = 0;
        for (tag, attrs) in tags(&page) {
            for (name, value) in attrs {
                let fetching = [
                    "src",
                    "href",
                    "xlink:href",
                    "srcset",
                    "action",
                    "formaction",
                    "poster",
                    "data",
                    "background",
                    "style",
                ];
                if name == "href" {
                    assert!(value.starts_with('#'), "<{tag} href={value}>");
                    links += 1;
                } else {
                    assert!(!fetching.contains(&name.as_str()), "<{tag} {name}={value}>");
                }
                assert!(
                    !value.contains("http://") && !value.contains("https://"),
                    "{value}"
                );
                assert!(!value.contains("url("), "{value}");
            }
        }
        assert_eq!(links, 1, "one link per endpoint, inside the page");
    }

    #[test]
    fn verdict_findings_worst_first_and_fixes_in_lines() {
        let r = observed_report();
        let page = render(&r);
        assert!(page.contains(
            "<header id=\"verdict\" class=\"verdict v-fail\" data-verdict=\"fail\" data-exit-code=\"1\">"
        ));
        assert!(page.contains("<span id=\"verdict-word\">FAIL</span>"));
        assert!(page.contains(&format!("<p id=\"summary\">{}</p>", Esc(&r.summary))));
        assert!(page.contains("<title>FAIL: example.com (192.0.2.1:443) (stek scan)</title>"));
        let at = |id: &str| {
            page.find(&format!("class=\"finding sev-{id}"))
                .unwrap_or_else(|| panic!("{id}"))
        };
        assert!(at("critical") < at("high") && at("high") < at("info"));
        assert!(page.contains("data-id=\"stek.weak_key\" data-severity=\"critical\""));
        // Every line of the fix, in order, with its indentation.
        let fix = format!("<pre>{}</pre>", Esc(FIX));
        assert!(fix.contains("\n         `stek up --on-change"));
        assert_eq!(count(&page, &fix), 2);
        let mut pass = report(vec![target(vec![], vec![])], vec![]);
        pass.warnings = vec!["--sni 127.0.0.1: an IP address is never sent as SNI".into()];
        let page = render(&pass);
        assert!(page.contains("data-verdict=\"pass\" data-exit-code=\"0\""));
        assert!(page.contains("<li class=\"warning\">--sni 127.0.0.1: an IP address"));
        assert!(page.contains("No finding of low severity or worse."));
    }

    #[test]
    fn notes_sit_with_their_endpoint_or_apart() {
        let mut r = observed_report();
        let mut fleet = finding("fleet.shared_key", Severity::Info, "Nothing to change.");
        fleet.target = "fleet example.com".into();
        r.findings.push(fleet);
        let page = render(&r);
        let endpoint = page.find("<section class=\"endpoint\"").unwrap();
        let note = page.find("data-id=\"stek.rotation\"").unwrap();
        let other = page
            .find("<section id=\"notes\"><h2>Other notes</h2>")
            .unwrap();
        let fleet = page.find("data-id=\"fleet.shared_key\"").unwrap();
        assert!(endpoint < note && note < other && other < fleet);
        assert!(page.contains("<h4>Notes <span class=\"count\">1</span></h4>"));
        assert!(!render(&observed_report()).contains("Other notes"));
    }

    #[test]
    fn endpoint_tables_say_what_each_version_did() {
        let mut r = observed_report();
        let t = &mut r.targets[0];
        t.sni = None;
        t.tls12 = VersionReport {
            outcome: Outcome::NameRefused,
            alert: Some("unrecognized_name".into()),
            ..VersionReport::default()
        };
        t.tls13.ticket_format = Some(TicketFormat::CacheId);
        let page = render(&r);
        assert!(page.contains("<dd class=\"sni\">no SNI</dd>"));
        assert!(page.contains("data-family=\"nginx\"><strong>nginx</strong><ul class=\"evidence-list\"><li>80-byte key layout verified</li>"));
        assert!(page.contains(
            "<td data-version=\"tls12\" data-field=\"outcome\" data-outcome=\"name_refused\" class=\"bad\">the server refused the name; alert unrecognized_name</td>"
        ));
        assert!(page.contains(
            "<td data-version=\"tls13\" data-field=\"outcome\" data-outcome=\"assessed\">assessed</td>"
        ));
        assert!(page.contains("<td data-version=\"tls13\" data-field=\"format\">session-cache ID (no ticket key)</td>"));
        assert!(page
            .contains("<td data-version=\"tls13\" data-field=\"lifetime\">60 min (3600 s)</td>"));
        assert!(page.contains("<td data-version=\"tls12\" data-field=\"tickets\">—</td>"));
        assert!(page.contains(&format!(
            "<td data-version=\"tls13\" data-field=\"key-name\">{} (confirmed on 3 tickets)</td>",
            "cc".repeat(16)
        )));
    }

    #[test]
    fn the_timeline_is_drawn_exactly_when_there_is_observation_data() {
        let page = render(&observed_report());
        assert_eq!(count(&page, "<svg class=\"timeline\" id=\"timeline-0\""), 1);
        assert_eq!(count(&page, "class=\"no-timeline\""), 0);
        for n in ["aa", "bb", "cc"] {
            assert_eq!(
                count(
                    &page,
                    &format!("<g class=\"key-bar\" data-name=\"{}\">", n.repeat(16))
                ),
                1
            );
        }
        for (a, word) in [
            ("true", "accepted"),
            ("false", "refused"),
            ("unknown", "no answer"),
        ] {
            assert_eq!(
                count(
                    &page,
                    &format!("<g class=\"acceptance\" data-accepted=\"{a}\"")
                ),
                1,
                "{a}"
            );
            assert!(page.contains(&format!(">{word} · ")), "{word}");
        }
        // The figures beside it, and the text alternative inside it.
        assert!(page.contains("<dd class=\"rotation\">every 2.0 s</dd>"));
        assert!(page.contains("<dd class=\"oldest-accepted\">5.0 s</dd>"));
        assert!(page.contains("<dd class=\"youngest-refused\">7.0 s</dd>"));
        assert!(
            page.contains("<title id=\"timeline-0-title\">Timeline of example.com (192.0.2.1:443)")
        );
        assert!(page.contains("<desc id=\"timeline-0-desc\">3 key name(s); rotation: every 2.0 s; 3 old ticket(s) offered again over 7.0 s: 1 accepted (oldest 5.0 s), 1 refused (youngest 7.0 s), 1 without an answer.</desc>"));
        // The axis in UTC.
        assert!(page.contains(">08:00:00</text>") && page.contains(">08:00:07</text>"));
        assert!(page.contains(">2027-01-15</text>"));

        // One key at one moment, nothing offered again: no picture, and how to get one.
        let plain = report(
            vec![target(vec![key(&"aa".repeat(16), T0, T0 + 0.2)], vec![])],
            vec![],
        );
        let page = render(&plain);
        assert!(!page.contains("<svg") && !page.contains("key-bar"));
        assert!(
            page.contains("<p class=\"no-timeline\">No timeline: this scan saw a single moment.")
        );
        assert!(
            page.contains("<code>--observe DUR</code>")
                && page.contains("<code>--state FILE</code>")
        );

        // A key change seen within one scan is drawn, and so is one old ticket with --state.
        let changed = report(
            vec![target(
                vec![
                    key(&"aa".repeat(16), T0, T0),
                    key(&"bb".repeat(16), T0 + 1.0, T0 + 1.0),
                ],
                vec![],
            )],
            vec![],
        );
        assert_eq!(count(&render(&changed), "class=\"key-bar\""), 2);
        let later = report(
            vec![target(
                vec![key(&"aa".repeat(16), T0, T0 + 86400.0)],
                vec![check(Some(&"aa".repeat(16)), T0, T0 + 86400.0, Some(true))],
            )],
            vec![],
        );
        let page = render(&later);
        assert_eq!(count(&page, "<svg"), 1);
        assert!(page.contains("accepted · 24.0 h old"));

        // An endpoint that could not be scanned gets neither picture nor hint.
        let mut down = report(vec![target(vec![], vec![])], vec![]);
        down.targets[0].error = Some("TLS 1.2: connection refused".into());
        let page = render(&down);
        assert!(!page.contains("<svg") && !page.contains("class=\"no-timeline\""));
        assert!(page.contains("<strong>Could not scan:</strong> TLS 1.2: connection refused"));
    }

    #[test]
    fn nameless_tickets_draw_acceptance_without_keys() {
        let checks = vec![
            check(None, T0, T0 + 20.0, Some(true)),
            check(None, T0 + 10.0, T0 + 20.0, Some(true)),
            check(None, T0 - 30.0, T0 + 20.0, Some(false)),
        ];
        let r = report(vec![target(vec![], checks)], vec![]);
        let page = render(&r);
        assert_eq!(count(&page, "<svg class=\"timeline\""), 1);
        assert_eq!(count(&page, "class=\"key-bar\""), 0);
        assert_eq!(count(&page, "data-accepted=\"true\""), 2);
        assert_eq!(count(&page, "data-accepted=\"false\""), 1);
        assert!(page.contains("These tickets carry no key name"));
        assert!(page.contains("<dd class=\"rotation\">not measured (no key name)</dd>"));
        assert!(page.contains("<dd class=\"oldest-accepted\">20.0 s</dd>"));
        assert!(page.contains("<dd class=\"youngest-refused\">50.0 s</dd>"));
        assert!(page.contains("<desc id=\"timeline-0-desc\">the tickets carry no key name;"));
        // The axis spans the checks: from the oldest issue to the last offer.
        assert!(page.contains("time (UTC): 2027-01-15 07:59:30 UTC to 2027-01-15 08:00:20 UTC"));
        assert!(page.contains("<td class=\"mono\">none</td>"));
    }

    #[test]
    fn session_cache_ids_are_told_apart_from_tickets() {
        let mut cached = check(None, T0, T0 + 30.0, Some(true));
        cached.cache_id = true;
        let r = report(
            vec![target(
                vec![],
                vec![cached, check(None, T0 + 10.0, T0 + 30.0, Some(false))],
            )],
            vec![],
        );
        let page = render(&r);
        assert_eq!(count(&page, "data-cache-id=\"true\""), 1);
        assert_eq!(count(&page, "data-cache-id=\"false\""), 1);
        assert!(page.contains("accepted · 30.0 s old · cache ID</text>"));
        assert!(page.contains("<title>TLS 1.3 session-cache ID issued "));
        assert!(page.contains("1 of them session-cache IDs (no ticket key)"));
        assert!(page.contains("<td>session-cache ID</td>") && page.contains("<td>ticket</td>"));
        // The figures are the report's: no ticket was accepted.
        assert!(page.contains("<dd class=\"oldest-accepted\">none accepted</dd>"));
    }

    #[test]
    fn months_of_state_are_drawn_within_bounds() {
        let day = 86400.0;
        let keys: Vec<KeyReport> = (0..50)
            .map(|i| {
                key(
                    &format!("{i:032x}"),
                    T0 + f64::from(i) * day,
                    T0 + f64::from(i) * day + day - 60.0,
                )
            })
            .collect();
        let checks: Vec<AcceptanceCheck> = (0..100)
            .map(|i| {
                let issued = T0 + f64::from(i) * day / 2.0;
                // Refused from 3 days on, except one very old ticket still accepted.
                let accepted = i == 7 || i % 10 < 5;
                check(
                    None,
                    issued,
                    issued
                        + if i == 7 {
                            40.0 * day
                        } else {
                            f64::from(i % 10) * day / 2.0 + 60.0
                        },
                    Some(accepted),
                )
            })
            .collect();
        let r = report(vec![target(keys, checks.clone())], vec![]);
        let page = render(&r);
        assert_eq!(count(&page, "class=\"key-bar\""), MAX_KEY_BARS);
        assert!(page.contains(&format!("data-name=\"{:032x}\"", 49)));
        let hidden = 50 - MAX_KEY_BARS;
        assert!(!page.contains(&format!("data-name=\"{:032x}\"", hidden - 1)));
        assert!(page.contains(&format!("data-name=\"{hidden:032x}\"")));
        assert!(page.contains(&format!("{hidden} earlier key name(s) not drawn")));
        assert_eq!(
            count(&page, "<td class=\"mono\">000000000000000000000000000000"),
            50
        );
        let drawn = count(&page, "<g class=\"acceptance\"");
        assert!(
            (MAX_CHECK_LINES - 3..=MAX_CHECK_LINES).contains(&drawn),
            "{drawn}"
        );
        assert!(page.contains(&format!("{drawn} of 100 checks drawn")));
        // The figures the findings rest on are among those drawn.
        assert!(
            page.contains("data-age=\"3456000.0\""),
            "the 40-day-old accepted ticket"
        );
        let youngest_refused = checks
            .iter()
            .filter(|c| c.accepted == Some(false))
            .map(|c| c.age_secs)
            .fold(f64::INFINITY, f64::min);
        assert!(page.contains(&format!(
            "data-accepted=\"false\" data-version=\"tls13\" data-age=\"{youngest_refused:.1}\""
        )));
        // Every coordinate is a finite number inside the picture.
        for (tag, attrs) in tags(&page) {
            for (name, value) in attrs {
                if ["x", "x1", "x2", "cx"].contains(&name.as_str()) {
                    let x: f64 = value
                        .parse()
                        .unwrap_or_else(|_| panic!("<{tag} {name}={value}>"));
                    assert!((0.0..=W).contains(&x), "<{tag} {name}={value}>");
                }
            }
        }
        // Two-week steps are labelled by date (multiples of 14 days since the epoch).
        assert!(page.contains("<text class=\"tick-label\" x=\"") && page.contains(">01-28</text>"));
        assert!(page.contains(">02-11</text>"));
    }

    #[test]
    fn broken_times_from_a_state_file_do_not_break_the_picture() {
        let r = report(
            vec![target(
                vec![key("aa", f64::NAN, T0), key("bb", T0, f64::INFINITY)],
                vec![check(None, f64::NEG_INFINITY, T0, Some(true))],
            )],
            vec![],
        );
        let page = render(&r);
        assert_eq!(count(&page, "class=\"key-bar\""), 2);
        assert!(!page.contains("NaN"));
        for (tag, attrs) in tags(&page) {
            for (name, value) in attrs {
                if ["x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "width"].contains(&name.as_str())
                {
                    let v: f64 = value
                        .parse()
                        .unwrap_or_else(|_| panic!("<{tag} {name}={value}>"));
                    assert!(v.is_finite(), "<{tag} {name}={value}>");
                }
            }
        }
    }

    #[test]
    fn ticks_are_round_utc_times() {
        let a = Axis {
            t0: T0 - 0.3,
            t1: T0 + 7.2,
            first: T0,
            last: T0 + 7.0,
        };
        let (step, ticks) = a.ticks();
        assert_eq!(step, 1.0);
        assert_eq!(ticks.first(), Some(&T0));
        assert_eq!(ticks.len(), 8);
        assert_eq!(tick_label(T0 + 7.0, step), "08:00:07");
        let a = Axis {
            t0: T0,
            t1: T0 + 5.0 * 3600.0,
            first: T0,
            last: T0 + 5.0 * 3600.0,
        };
        let (step, ticks) = a.ticks();
        assert_eq!(step, 3600.0);
        assert_eq!(tick_label(ticks[1], step), "09:00");
        assert_eq!(tick_label(T0 + 0.5, 0.5), "08:00:00.5");
        assert_eq!(stamp(T0 + 0.9), "2027-01-15 08:00:00 UTC");
        assert_eq!(stamp(f64::NAN), "?");
        let a = Axis::new([T0, T0].into_iter()).expect("one moment");
        assert!(a.t1 - a.t0 >= 1.0 && a.x(T0) > PLOT_X0 && a.x(T0) < PLOT_X1);
        assert!(Axis::new([f64::NAN].into_iter()).is_none());
    }

    #[test]
    fn the_file_is_replaced_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.html");
        std::fs::write(&path, "old").unwrap();
        write(&path, "<!DOCTYPE html>new").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "<!DOCTYPE html>new"
        );
        let names = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(dir.path()), ["report.html"]);
        // A directory in the way: the rename fails, the temporary file is gone.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), "keep").unwrap();
        assert!(write(&blocked, "page").is_err());
        assert_eq!(names(dir.path()), ["blocked", "report.html"]);
        assert_eq!(names(&blocked), ["x"]);
        let missing = dir.path().join("no/such/dir/r.html");
        let e = write(&missing, "page").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            check_writable(&missing).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(write(Path::new("/"), "page").is_err());
        assert!(check_writable(Path::new("/")).is_err());
        // The early check leaves nothing behind, and the file keeps the usual mode.
        check_writable(&path).unwrap();
        assert_eq!(names(dir.path()), ["blocked", "report.html"]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o600, 0o600, "{mode:o}");
    }
}
