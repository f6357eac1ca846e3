//! Records the commit stek is built from, for `stek_build_info` and `stek --version` readers:
//! `git rev-parse` when building from a checkout, `unknown` otherwise (a crate tarball).

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=STEK_COMMIT={commit}");
    // A new commit changes HEAD (a branch) or the ref it points at. Only paths that exist: a
    // missing one would rerun this script, and rebuild stek, on every build (a worktree's .git
    // is a file, a tarball has none).
    println!("cargo:rerun-if-changed=build.rs");
    for f in ["../../.git/HEAD", "../../.git/refs/heads"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
}
