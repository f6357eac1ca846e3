//! The library's modules depend on each other one way (docs/DESIGN.md §7): this reads every
//! source file, collects which top-level modules each one names (`crate::x`, `stek::x`), and fails
//! on any cycle between top-level modules, printing it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src` belongs to (`agent` for `src/agent/syncer.rs`).
fn top(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_owned())
}

/// The code of `text` without `#[cfg(test)]` modules (tests may use anything) and comments.
fn production_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let code = code
        .split("#[cfg(test)]\npub(crate) mod tests")
        .next()
        .unwrap_or(code);
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(from) = top(&src, f) else { continue };
        // The binary's own modules and the crate root are the top of the graph.
        if ["main", "cli", "settings", "setup", "lib"].contains(&from.as_str()) {
            continue;
        }
        let code = production_code(&fs::read_to_string(f).expect("read"));
        for m in &modules {
            if *m == from {
                continue;
            }
            let named = [
                format!("crate::{m}::"),
                format!("crate::{m}::{{"),
                format!("crate::{m};"),
            ]
            .iter()
            .any(|p| code.contains(p.as_str()))
                || code.contains(&format!("use crate::{{{m}"))
                || code.contains(&format!("crate::{m},"));
            if named {
                edges.entry(from.clone()).or_default().insert(m.clone());
            }
        }
    }
    edges
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_owned());
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycle() {
    let edges = graph();
    // The checker sees edges at all (a parser that finds nothing would pass vacuously).
    assert!(
        edges
            .get("agent")
            .is_some_and(|e| e.contains("sink") && e.contains("store")),
        "{edges:#?}"
    );
    if let Some(cycle) = find_cycle(&edges) {
        panic!("module cycle: {}\n{edges:#?}", cycle.join(" -> "));
    }
    // Nothing the agent builds on reaches back into it.
    for (from, to) in &edges {
        if !["feed", "up"].contains(&from.as_str()) {
            assert!(!to.contains("agent"), "{from} imports agent");
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&edges), None);
    edges.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&edges).unwrap(), ["a", "b", "c", "a"]);
}
