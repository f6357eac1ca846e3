//! `stek scan` run as a user runs it, and the assertions every scan test makes on its report:
//! verdict and exit code, finding ids (each once per endpoint), the server family with its
//! evidence, and the family's own mechanism in each fix.

use std::process::Command;

use serde_json::Value;

/// Runs `stek scan ARGS --json`: (exit code, the JSON document).
pub fn scan(args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_stek"))
        .arg("scan")
        .args(args)
        .arg("--json")
        .output()
        .expect("run stek scan");
    let code = out.status.code().expect("exit code");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let json = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "stek scan {args:?} printed no JSON ({e}), exit {code}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

/// Runs `stek scan ARGS` for the human report: (exit code, stdout).
pub fn scan_text(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stek"))
        .arg("scan")
        .args(args)
        .output()
        .expect("run stek scan");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

pub fn findings(r: &Value) -> &Vec<Value> {
    r["findings"].as_array().expect("findings")
}

pub fn ids(r: &Value) -> Vec<String> {
    findings(r)
        .iter()
        .map(|f| f["id"].as_str().expect("id").to_owned())
        .collect()
}

pub fn has(r: &Value, id: &str) -> bool {
    ids(r).iter().any(|i| i == id)
}

pub fn count(r: &Value, id: &str) -> usize {
    ids(r).iter().filter(|i| *i == id).count()
}

pub fn finding<'a>(r: &'a Value, id: &str) -> &'a Value {
    findings(r)
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no finding {id} in {r:#}"))
}

/// Verdict and exit code, agreeing with each other and with the document.
pub fn assert_verdict(code: i32, r: &Value, verdict: &str, want_code: i32) {
    assert_eq!(
        (code, r["verdict"].as_str().unwrap_or("?")),
        (want_code, verdict),
        "{r:#}"
    );
    assert_eq!(r["exit_code"], want_code, "{r:#}");
}

/// The server family of every target, each with at least one piece of evidence for it.
pub fn assert_family(r: &Value, id: &str) {
    let targets = r["targets"].as_array().expect("targets");
    assert!(!targets.is_empty(), "no target: {r:#}");
    for t in targets {
        let family = &t["server_family"];
        assert_eq!(family["id"], id, "server family of {}: {r:#}", t["target"]);
        assert!(
            family["evidence"].as_array().is_some_and(|e| !e.is_empty()),
            "no evidence for the family: {family:#}"
        );
    }
}

/// The fix of finding `id` names the family's own mechanism `word`.
pub fn assert_fix(r: &Value, id: &str, word: &str) {
    let fix = finding(r, id)["remediation"].as_str().expect("remediation");
    assert!(fix.contains(word), "the fix of {id} lacks {word:?}:\n{fix}");
}

/// Issue 12, rule 8: each finding id appears at most once per target.
pub fn assert_once_per_target(r: &Value) {
    let mut seen: Vec<(String, String)> = findings(r)
        .iter()
        .map(|f| (f["target"].to_string(), f["id"].to_string()))
        .collect();
    seen.sort();
    let before = seen.len();
    seen.dedup();
    assert_eq!(
        seen.len(),
        before,
        "a finding repeated for one target: {r:#}"
    );
}

pub fn no_stek_finding(r: &Value) {
    assert!(
        ids(r).iter().all(|i| !i.starts_with("stek.")),
        "a stek.* finding: {r:#}"
    );
}
