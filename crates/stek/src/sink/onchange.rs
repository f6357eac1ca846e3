//! Runs the operator's `--on-change` command (e.g. `nginx -s reload`) after the files change.
//!
//! A failing command is retried with exponential backoff; it is never fatal, and the files it
//! would have loaded stay valid meanwhile (they were written atomically). A change that arrives
//! during the backoff cuts it short: the command runs for the newest files. Failures are logged
//! once when they start (the command's output folded to one line) and once when they end, and
//! counted in between (`stek_sink_failures_total{sink="on_change"}`): a broken reload does not
//! flood the log, nor stay silent.
//!
//! As a [`Sink`] it comes last: every changed ring was already written by the file sinks when
//! it asks for a run. Its failures happen after `deliver` returned, so they show in
//! [`Sink::health`].

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stek_core::Ring;

use stek_core::Backoff;
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Applied, Delivered, Health, Sink};

/// The longest one run of the command may take before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// The first retry delay; doubled after each failure up to the caller's maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// What the runner is asked to make the server take: the encrypting key of the newest ring
/// (slot, public name). A new value means the files changed.
type Wanted = Option<(u64, String)>;

/// The handle that tells the runner the files changed.
#[derive(Debug)]
pub struct OnChange {
    tx: watch::Sender<(u64, Wanted)>,
    state: Arc<Mutex<Health>>,
}

impl OnChange {
    /// Starts the runner for `cmd` (run with `sh -c`), backing off up to `max_backoff`.
    pub fn spawn(cmd: String, max_backoff: Duration) -> OnChange {
        let (tx, rx) = watch::channel((0u64, None));
        let state = Arc::new(Mutex::new(Health::default()));
        tokio::spawn(run(cmd, rx, max_backoff, state.clone()));
        OnChange { tx, state }
    }

    /// Signals that the files changed (with no ring to name: the applied key stays unknown).
    pub fn notify(&self) {
        self.tx.send_modify(|(n, _)| *n = n.wrapping_add(1));
    }

    /// Signals that the files changed to `ring`: once the command succeeds, its encrypting key
    /// is the one the server took.
    fn notify_ring(&self, ring: &Ring) {
        let key = ring.encrypting_entry();
        let wanted = Some((key.slot().0, key.key.name().to_hex()));
        self.tx.send_modify(|(n, w)| {
            *n = n.wrapping_add(1);
            *w = wanted;
        });
    }
}

impl Sink for OnChange {
    fn name(&self) -> &'static str {
        "on_change"
    }

    fn deliver(&mut self, ring: &Ring) -> std::io::Result<Delivered> {
        self.notify_ring(ring);
        Ok(Delivered::Handed)
    }

    fn health(&self) -> Health {
        crate::lock(&self.state).clone()
    }
}

async fn run(
    cmd: String,
    mut rx: watch::Receiver<(u64, Wanted)>,
    max_backoff: Duration,
    state: Arc<Mutex<Health>>,
) {
    // Since when, and how many runs, the command has been failing (across changes).
    let mut failing: Option<(Instant, u32)> = None;
    while rx.changed().await.is_ok() {
        let mut wanted = rx.borrow_and_update().1.clone();
        let mut backoff = retries(max_backoff);
        let mut delay;
        loop {
            match run_once(&cmd).await {
                Ok(took) => {
                    {
                        let mut h = crate::lock(&state);
                        h.failing = None;
                        // The command ran after the files of `wanted` were written.
                        if let Some((slot, name)) = wanted.clone() {
                            h.applied = Some(Applied {
                                slot,
                                name,
                                since: unix_now(),
                            });
                        }
                    }
                    match failing.take() {
                        Some((since, runs)) => info!(
                            "on-change command works again after {runs} failed run(s) over {}: reload ok in {} ms: {cmd}",
                            crate::duration::format(since.elapsed()),
                            took.as_millis()
                        ),
                        None => info!(
                            "on-change command succeeded in {} ms (reload ok): {cmd}",
                            took.as_millis()
                        ),
                    }
                    break;
                }
                Err(why) => {
                    delay = backoff.next();
                    {
                        let mut h = crate::lock(&state);
                        h.failures += 1;
                        h.failing = Some(why.clone());
                    }
                    match &mut failing {
                        None => {
                            failing = Some((Instant::now(), 1));
                            warn!("on-change command failing (reload failed; the server keeps its previous keys, which stek erases on schedule: retrying with backoff up to {} s, further failures counted in stek_sink_failures_total{{sink=\"on_change\"}}, logged again when it works): {cmd}: {why}", max_backoff.as_secs());
                        }
                        Some((_, runs)) => {
                            *runs += 1;
                            debug!("on-change command failed again (run {runs}, retrying in {} ms): {cmd}: {why}", delay.as_millis());
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                changed = rx.changed() => {
                    if changed.is_err() { return; }
                    wanted = rx.borrow_and_update().1.clone();
                }
            }
        }
    }
}

/// The delays between runs of a failing command: from [`FIRST_BACKOFF`], doubling, capped at
/// `max_backoff` (the cap holds from the first retry on, even below `FIRST_BACKOFF`).
fn retries(max_backoff: Duration) -> Backoff {
    Backoff::new(FIRST_BACKOFF.min(max_backoff), max_backoff)
}

async fn run_once(cmd: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start sh: {e}"))?;
    let out = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("timed out after {}s and was killed", RUN_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot wait for it: {e}"))?;
    if out.status.success() {
        return Ok(start.elapsed());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    let text = fold(&text);
    Err(match out.status.code() {
        Some(code) => format!("exit status {code}: {text}"),
        None => format!("killed by a signal: {text}"),
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A command's output on one line: its lines trimmed and joined with ` / `, at most 500
/// characters (nginx's errors span several lines; logs are one line per event).
fn fold(text: &str) -> String {
    let one: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ");
    // Tabs become spaces; other control characters (terminal escapes) go.
    one.chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .filter(|c| !c.is_control())
        .take(500)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_cap_from_the_first_on() {
        let mut b = retries(Duration::from_secs(30));
        let delays: Vec<Duration> = (0..12).map(|_| b.next()).collect();
        assert_eq!(delays[0], FIRST_BACKOFF);
        for w in delays.windows(2) {
            assert!(
                w[1] == (w[0] * 2).min(Duration::from_secs(30)),
                "{delays:?}"
            );
        }
        assert_eq!(delays[11], Duration::from_secs(30), "capped: {delays:?}");
        // A cap below the usual first delay holds for the first retry too.
        let tiny = FIRST_BACKOFF / 4;
        let mut b = retries(tiny);
        assert!((0..4).all(|_| b.next() == tiny));
    }

    #[test]
    fn output_is_folded_to_one_line() {
        let nginx = "nginx: [emerg] unknown directive \"bogus\" in /etc/nginx/nginx.conf:12\n\nnginx: configuration file /etc/nginx/nginx.conf test failed\n";
        assert_eq!(
            fold(nginx),
            "nginx: [emerg] unknown directive \"bogus\" in /etc/nginx/nginx.conf:12 / nginx: configuration file /etc/nginx/nginx.conf test failed"
        );
        assert_eq!(fold("a\tb\r\n\x1b[31mc"), "a b / [31mc");
        assert_eq!(fold(&"x".repeat(900)).len(), 500);
    }

    #[tokio::test]
    async fn retries_until_it_succeeds() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("n");
        // Fails twice, then succeeds: counts its runs in a file.
        let cmd = format!(
            "n=$(cat {m} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {m}; [ $n -ge 3 ]",
            m = marker.display()
        );
        let logs = crate::testlog::start();
        let h = OnChange::spawn(cmd, Duration::from_millis(100));
        h.notify();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n: u32 = std::fs::read_to_string(&marker)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            if n >= 3 {
                break;
            }
            assert!(Instant::now() < deadline, "command ran only {n} times");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // It stops once it succeeded, and says it failed twice.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "3");
        let health = h.health();
        assert_eq!((health.failing, health.failures), (None, 2));
        // Logged once when it started failing, once when it worked again, with the count.
        let text = logs.text();
        assert_eq!(text.matches("WARN").count(), 1, "{text}");
        assert!(
            text.contains("on-change command works again after 2 failed run(s)"),
            "{text}"
        );
    }

    /// As a sink it is `on_change` (the label of its metrics and its line in `stek status`),
    /// and a run after a ring was delivered records that ring's encrypting key as the one the
    /// server took.
    #[tokio::test]
    async fn a_delivered_ring_is_applied_once_the_command_ran() {
        use std::collections::BTreeMap;
        use stek_core::{LocalKeys, Schedule, Slot, SlotKey};
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        let now = Duration::from_secs(400);
        let shared: BTreeMap<Slot, SlotKey> = [100, 101]
            .map(|e| (Slot(e), SlotKey::generate(Slot(e)).unwrap()))
            .into();
        let ring = Ring::build(&s, now, &shared, &mut LocalKeys::new(), 1).unwrap();
        let mut sink = OnChange::spawn("true".into(), Duration::from_millis(100));
        assert_eq!(sink.name(), "on_change");
        assert!(sink.health().applied.is_none());
        assert!(matches!(sink.deliver(&ring).unwrap(), Delivered::Handed));
        let deadline = Instant::now() + Duration::from_secs(10);
        let applied = loop {
            if let Some(a) = sink.health().applied {
                break a;
            }
            assert!(Instant::now() < deadline, "the command never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            (applied.slot, applied.name),
            (100, shared[&Slot(100)].name().to_hex())
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(applied.since.abs_diff(now) <= 2, "{} {now}", applied.since);
    }
}
