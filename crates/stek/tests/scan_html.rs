//! `stek scan --html` checked the way a person would see it: real nginx servers on loopback (one
//! fed by `stek up`, one with a static key), a real observing scan, and the page rendered by
//! headless Chromium, whose DOM is compared with the JSON report of the same run.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

/// Runs `stek scan ARGS`.
fn stek_scan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stek"))
        .arg("scan")
        .args(args)
        .output()
        .expect("run stek scan")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An nginx whose ticket key is the file `key` (never rotated).
fn nginx_with_key(root: &Path, cert: &Cert, name: &str, key: &[u8]) -> Nginx {
    let file = root.join(format!("{name}.key"));
    fs::write(&file, key).expect("key file");
    Nginx::start_with(
        &root.join(name),
        cert,
        &format!("ssl_session_ticket_key {};", file.display()),
        "TLSv1.2 TLSv1.3",
    )
}

fn random_key() -> Vec<u8> {
    let mut key = vec![0u8; 80];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
        .expect("urandom");
    key
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// The DOM headless Chromium builds from `page` (a file), serialized. Never skipped: without
/// Chromium the test fails and says how to get it.
fn chromium_dom(page: &Path) -> String {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is not installed: run ./scripts/test (it installs chromium with the other \
         tools the tests need)"
    );
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let out = tempfile::NamedTempFile::new().expect("dom file");
    let err = tempfile::NamedTempFile::new().expect("stderr file");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(out.reopen().expect("dom file"))
        .stderr(err.reopen().expect("stderr file"))
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for chromium") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within 90 s:\n{}",
                fs::read_to_string(err.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = fs::read_to_string(out.path()).expect("chromium's DOM");
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium failed ({status}):\n{}\n{dom}",
        fs::read_to_string(err.path()).unwrap_or_default()
    );
    dom
}

/// A parsed DOM: Chromium's serialization (attribute values double-quoted, text escaped, every
/// non-void element closed) read into a tree.
#[derive(Debug, Default)]
struct Dom {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    tag: String,
    attrs: BTreeMap<String, String>,
    children: Vec<usize>,
    /// Text and child positions interleaved: `None` marks where a child element sits.
    content: Vec<Option<String>>,
}

const VOID: [&str; 14] = [
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

impl Dom {
    fn parse(html: &str) -> Dom {
        let mut dom = Dom {
            nodes: vec![Node {
                tag: "#document".into(),
                ..Node::default()
            }],
        };
        let mut stack = vec![0usize];
        let mut rest = html;
        loop {
            let top = *stack.last().expect("document stays open");
            let lt = rest.find('<').unwrap_or(rest.len());
            if lt > 0 {
                dom.nodes[top].content.push(Some(unescape(&rest[..lt])));
            }
            rest = &rest[lt..];
            if rest.is_empty() {
                break;
            }
            if let Some(r) = rest.strip_prefix("<!--") {
                rest = &r[r.find("-->").expect("comment closes") + 3..];
                continue;
            }
            // '>' inside a quoted attribute value does not end the tag.
            let mut quoted = false;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    quoted ^= c == '"';
                    c == '>' && !quoted
                })
                .expect("tag closes")
                .0;
            let inner = &rest[1..end];
            rest = &rest[end + 1..];
            if inner.starts_with('!') {
                continue;
            }
            if let Some(name) = inner.strip_prefix('/') {
                let name = name.trim().to_ascii_lowercase();
                if let Some(pos) = stack.iter().rposition(|&n| dom.nodes[n].tag == name) {
                    stack.truncate(pos.max(1));
                }
                continue;
            }
            let name_end = inner
                .find(|c: char| c.is_whitespace() || c == '/')
                .unwrap_or(inner.len());
            let tag = inner[..name_end].to_ascii_lowercase();
            let mut attrs = BTreeMap::new();
            let mut a = inner[name_end..].trim_start();
            while !a.is_empty() && a != "/" {
                let stop = a.find(['=', ' ']).unwrap_or(a.len());
                let key = a[..stop].trim_end_matches('/').to_ascii_lowercase();
                if a[stop..].starts_with("=\"") {
                    let v = &a[stop + 2..];
                    let close = v.find('"').expect("attribute value closes");
                    attrs.insert(key, unescape(&v[..close]));
                    a = v[close + 1..].trim_start();
                } else {
                    attrs.insert(key, String::new());
                    a = a[stop..].trim_start_matches('=').trim_start();
                }
            }
            let id = dom.nodes.len();
            dom.nodes.push(Node {
                tag: tag.clone(),
                attrs,
                ..Node::default()
            });
            dom.nodes[top].children.push(id);
            dom.nodes[top].content.push(None);
            if tag == "style" || tag == "script" {
                // Raw text up to the closing tag.
                let close = rest.find(&format!("</{tag}>")).expect("raw text closes");
                dom.nodes[id].content.push(Some(rest[..close].to_owned()));
                rest = &rest[close + tag.len() + 3..];
            } else if !VOID.contains(&tag.as_str()) && !inner.ends_with('/') {
                stack.push(id);
            }
        }
        dom
    }

    fn all(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes.iter().enumerate()
    }

    /// Elements under `root` (itself included) for which `pred` holds, in document order.
    fn find(&self, root: usize, pred: impl Fn(&Node) -> bool) -> Vec<usize> {
        let mut out = Vec::new();
        let mut todo = vec![root];
        while let Some(n) = todo.pop() {
            if pred(&self.nodes[n]) {
                out.push(n);
            }
            todo.extend(self.nodes[n].children.iter().rev());
        }
        out
    }

    /// Elements under `root` (itself included) that have `class` among their classes.
    fn by_class(&self, root: usize, class: &str) -> Vec<usize> {
        self.find(root, |n| {
            n.attrs
                .get("class")
                .is_some_and(|c| c.split_whitespace().any(|c| c == class))
        })
    }

    fn by_id(&self, id: &str) -> usize {
        let found: Vec<usize> = self
            .all()
            .filter(|(_, n)| n.attrs.get("id").is_some_and(|v| v == id))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(found.len(), 1, "one element with id {id}");
        found[0]
    }

    fn attr(&self, n: usize, name: &str) -> &str {
        self.nodes[n]
            .attrs
            .get(name)
            .unwrap_or_else(|| panic!("<{}> has no {name}", self.nodes[n].tag))
    }

    /// The text of an element and its descendants, white space collapsed.
    fn text(&self, n: usize) -> String {
        fn walk(dom: &Dom, n: usize, out: &mut String) {
            let mut children = dom.nodes[n].children.iter();
            for part in &dom.nodes[n].content {
                match part {
                    Some(t) => out.push_str(t),
                    None => walk(dom, *children.next().expect("child"), out),
                }
            }
        }
        let mut s = String::new();
        walk(self, n, &mut s);
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The direct children of `n` with tag `tag`.
    fn children(&self, n: usize, tag: &str) -> Vec<usize> {
        self.nodes[n]
            .children
            .iter()
            .copied()
            .filter(|&c| self.nodes[c].tag == tag)
            .collect()
    }
}

fn accepted_word(v: &Value) -> &'static str {
    match v.as_bool() {
        Some(true) => "true",
        Some(false) => "false",
        None => "unknown",
    }
}

#[test]
fn an_observing_scan_renders_its_verdict_findings_and_timeline_in_chromium() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let prefix = dir.path().join("nginx");
    let _stek = stek_up(
        dir.path(),
        &[
            "--period",
            "2s",
            "--lifetime",
            "4s",
            "--no-memcached",
            "--sinks",
            "nginx",
            "--on-change",
            &Nginx::reload_cmd(&prefix),
        ],
    );
    let conf = wait_nginx_conf(dir.path());
    let rotated = Nginx::start(&prefix, &cert, &conf);
    let key = random_key();
    let fixed = nginx_with_key(dir.path(), &cert, "static", &key);
    let (a, b) = (
        format!("127.0.0.1:{}", rotated.port),
        format!("127.0.0.1:{}", fixed.port),
    );
    let page = dir.path().join("report.html");
    let out = stek_scan(&[
        &a,
        &b,
        "--observe",
        "7s",
        "--interval",
        "1s",
        "--max-rotation",
        "3s",
        "--json",
        "--html",
        page.to_str().unwrap(),
    ]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}):\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    // The static key is never rotated: FAIL, exit 1, with or without the page.
    assert_eq!(out.status.code(), Some(1), "{json:#}");
    assert_eq!(json["verdict"], "fail");

    let html = fs::read_to_string(&page).expect("the page was written");
    let dom = Dom::parse(&chromium_dom(&page));

    // The verdict, as JSON has it.
    let verdict = dom.by_id("verdict");
    assert_eq!(dom.attr(verdict, "data-verdict"), "fail");
    assert_eq!(dom.text(dom.by_id("verdict-word")), "FAIL");
    assert_eq!(dom.text(dom.by_id("exit-code")), "1");
    assert_eq!(
        dom.text(dom.by_id("summary")),
        json["summary"].as_str().unwrap()
    );
    let title = dom
        .all()
        .find(|(_, n)| n.tag == "title")
        .expect("<title>")
        .0;
    assert!(dom.text(title).starts_with("FAIL: "), "{}", dom.text(title));

    // Every finding: the serious ones first, in the JSON's order (worst first); the notes
    // (severity info) then sit with their endpoint.
    let findings: Vec<(String, String, String)> = dom
        .by_class(0, "finding")
        .into_iter()
        .map(|f| {
            (
                dom.attr(f, "data-severity").to_owned(),
                dom.attr(f, "data-id").to_owned(),
                dom.attr(f, "data-target").to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap().to_owned(),
                f["id"].as_str().unwrap().to_owned(),
                f["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let serious = want.iter().filter(|f| f.0 != "info").count();
    assert!(serious >= 1);
    assert_eq!(findings[..serious], want[..serious]);
    let (mut got_all, mut want_all) = (findings.clone(), want.clone());
    got_all.sort();
    want_all.sort();
    assert_eq!(got_all, want_all);
    for (section, t) in dom
        .by_class(0, "endpoint")
        .into_iter()
        .zip(json["targets"].as_array().unwrap())
    {
        let label = t["target"].as_str().unwrap();
        for f in dom.by_class(section, "finding") {
            assert_eq!(dom.attr(f, "data-severity"), "info");
            assert_eq!(dom.attr(f, "data-target"), label);
        }
    }
    let not_rotated = dom
        .by_class(0, "finding")
        .into_iter()
        .find(|&f| dom.attr(f, "data-id") == "stek.not_rotated")
        .expect("stek.not_rotated shown");
    assert_eq!(dom.attr(not_rotated, "data-target"), b);
    assert_eq!(dom.attr(not_rotated, "data-severity"), "high");
    let fix = dom.by_class(not_rotated, "fix");
    assert_eq!(fix.len(), 1);
    let pre = dom.children(fix[0], "pre");
    let f = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "stek.not_rotated")
        .unwrap();
    // The fix keeps its lines (a <pre>, so the browser keeps them too).
    let remediation = f["remediation"].as_str().unwrap();
    assert!(remediation.lines().count() > 1);
    let mut pre_text = String::new();
    for part in dom.nodes[pre[0]].content.iter().flatten() {
        pre_text.push_str(part);
    }
    assert_eq!(pre_text, remediation);

    // Each endpoint: its table and its timeline, matching the JSON of the same run.
    let endpoints = dom.by_class(0, "endpoint");
    assert_eq!(endpoints.len(), 2);
    for (t, &section) in json["targets"].as_array().unwrap().iter().zip(&endpoints) {
        assert_eq!(
            dom.attr(section, "data-address"),
            t["address"].as_str().unwrap()
        );
        let sni = dom.by_class(section, "sni");
        assert_eq!(dom.text(sni[0]), "no SNI");
        // The server family the scan settled on, with its evidence.
        let family = dom.by_class(section, "family");
        assert_eq!(
            dom.attr(family[0], "data-family"),
            t["server_family"]["id"].as_str().unwrap()
        );
        for e in t["server_family"]["evidence"].as_array().unwrap() {
            let e: String = e
                .as_str()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(dom.text(family[0]).contains(&e), "{e}");
        }
        let outcomes = dom.find(section, |n| {
            n.tag == "td" && n.attrs.get("data-field").is_some_and(|f| f == "outcome")
        });
        assert_eq!(outcomes.len(), 2);
        for td in outcomes {
            let v = dom.attr(td, "data-version");
            assert_eq!(
                dom.attr(td, "data-outcome"),
                t[v]["outcome"].as_str().unwrap()
            );
            assert_eq!(dom.text(td), "assessed");
        }

        let timelines = dom.by_class(section, "timeline");
        assert_eq!(timelines.len(), 1, "one timeline per observed endpoint");
        let svg = timelines[0];
        assert_eq!(dom.nodes[svg].tag, "svg");
        assert_eq!(dom.attr(svg, "role"), "img");
        let (svg_title, svg_desc) = (dom.children(svg, "title"), dom.children(svg, "desc"));
        assert_eq!((svg_title.len(), svg_desc.len()), (1, 1));
        assert!(dom
            .text(svg_title[0])
            .contains(t["address"].as_str().unwrap()));
        let keys: Vec<&str> = t["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap())
            .collect();
        let bars: Vec<&str> = dom
            .by_class(section, "key-bar")
            .into_iter()
            .map(|g| dom.attr(g, "data-name"))
            .collect();
        assert_eq!(bars, keys, "one bar per key name, in order");
        assert!(dom
            .text(svg_desc[0])
            .contains(&format!("{} key name(s)", keys.len())));
        let mut marks: BTreeMap<&str, usize> = BTreeMap::new();
        for g in dom.by_class(section, "acceptance") {
            let a = dom.attr(g, "data-accepted");
            // Readable without colour: the answer is written next to the mark.
            let word = match a {
                "true" => "accepted",
                "false" => "refused",
                _ => "no answer",
            };
            assert!(dom.text(g).contains(word), "{}", dom.text(g));
            *marks.entry(a).or_default() += 1;
        }
        let mut want: BTreeMap<&str, usize> = BTreeMap::new();
        for c in t["acceptance"].as_array().unwrap() {
            *want.entry(accepted_word(&c["accepted"])).or_default() += 1;
        }
        assert_eq!(marks, want, "{t:#}");
        assert!(!want.is_empty(), "old tickets were offered again: {t:#}");
    }
    // The rotated server: several keys and its measured period beside the picture; the static
    // one: its single key, named as in its key file, over the whole observation.
    let rot = dom.by_class(endpoints[0], "key-bar");
    assert!(rot.len() >= 3, "{}", rot.len());
    let period = dom.by_class(endpoints[0], "rotation");
    let measured = json["targets"][0]["rotation_observed_secs"]
        .as_f64()
        .unwrap();
    assert_eq!(
        dom.text(period[0]),
        format!("every {measured:.1} s"),
        "the measured period"
    );
    let fixed_bars = dom.by_class(endpoints[1], "key-bar");
    assert_eq!(fixed_bars.len(), 1);
    assert_eq!(dom.attr(fixed_bars[0], "data-name"), hex(&key[..16]));
    let oldest = dom.by_class(endpoints[1], "oldest-accepted");
    let age = json["targets"][1]["oldest_accepted_secs"].as_f64().unwrap();
    assert!(age > 4.0, "{age}");
    assert_eq!(dom.text(oldest[0]), format!("{age:.1} s"));

    // Nothing outside the page: no script, no fetched resource, links only within the page.
    for (_, n) in dom.all() {
        assert!(
            !["script", "link", "img", "iframe", "object", "embed"].contains(&n.tag.as_str()),
            "<{}>",
            n.tag
        );
        for (k, v) in &n.attrs {
            if ["src", "href", "xlink:href", "srcset", "action", "style"].contains(&k.as_str()) {
                assert!(k == "href" && v.starts_with('#'), "<{} {k}={v:?}>", n.tag);
            }
            assert!(
                !v.contains("http:") && !v.contains("https:"),
                "<{} {k}={v:?}>",
                n.tag
            );
        }
    }
    let style = dom
        .all()
        .find(|(_, n)| n.tag == "style")
        .expect("<style>")
        .0;
    assert!(!dom.text(style).contains("url("));
    assert!(html.contains("Content-Security-Policy"));
}

#[test]
fn the_page_comes_with_the_human_report_and_a_bad_path_is_named() {
    let dir = shm_dir();
    let cert = make_cert(dir.path());
    let n = nginx_with_key(dir.path(), &cert, "n", &random_key());
    let target = format!("127.0.0.1:{}", n.port);

    // With the human report: same exit code, the page is named, and a plain scan says how to
    // get a timeline instead of drawing one.
    let page = dir.path().join("plain.html");
    let out = stek_scan(&[&target, "--html", page.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("PASS: "), "{stdout}");
    assert!(
        stdout.contains(&format!("HTML report: {}", page.display())),
        "{stdout}"
    );
    let dom = Dom::parse(&chromium_dom(&page));
    assert_eq!(dom.text(dom.by_id("verdict-word")), "PASS");
    assert!(dom.by_class(0, "timeline").is_empty());
    let hint = dom.by_class(0, "no-timeline");
    assert_eq!(hint.len(), 1);
    let hint = dom.text(hint[0]);
    assert!(
        hint.contains("--observe DUR") && hint.contains("--state FILE"),
        "{hint}"
    );

    // A directory that does not exist: said before the scan (an observation of a minute would
    // otherwise be lost), exit 2, nothing printed on stdout.
    let missing = dir.path().join("no/such/dir/report.html");
    let started = Instant::now();
    let out = stek_scan(&[
        &target,
        "--observe",
        "60s",
        "--html",
        missing.to_str().unwrap(),
    ]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "stek scan: cannot write the HTML report to {}: ",
            missing.display()
        )) && stderr.contains("No such file or directory"),
        "{stderr}"
    );

    // A directory in the way, found only at the rename: the scan is reported, then exit 2,
    // and no temporary file is left beside it.
    let blocked: PathBuf = dir.path().join("out");
    fs::create_dir(&blocked).unwrap();
    fs::write(blocked.join("keep"), "x").unwrap();
    let before: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let out = stek_scan(&[&target, "--json", "--html", blocked.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).expect("the JSON report still printed");
    assert_eq!(json["verdict"], "pass");
    assert!(
        text(&out.stderr).contains(&format!(
            "stek scan: cannot write the HTML report to {}: ",
            blocked.display()
        )),
        "{}",
        text(&out.stderr)
    );
    let after: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after);
    assert_eq!(fs::read_dir(&blocked).unwrap().count(), 1);
}
