//! HAProxy's runtime API: pushes the ticket keys into HAProxy's live rings over its admin socket
//! (`stats socket PATH mode 600 level admin`), with no reload.
//!
//! A check lists HAProxy's rings (`show tls-keys`), dumps every ring whose file is stek's keys
//! file (`show tls-keys FILE`: its 3 keys oldest first, the middle one encrypts) and pushes the
//! wanted keys that are missing with `set ssl tls-key FILE BASE64`. Each push drops the ring's
//! oldest key and appends the new one, so pushing the last `n` wanted keys oldest first turns a
//! ring whose newest `3 - n` keys are the wanted oldest `3 - n` into the wanted ring; `n = 3`
//! works from any state, `n = 0` when HAProxy already holds the ring (nothing is sent). A ring
//! that needs 3 pushes passes through two mixed states for the few microseconds the pushes
//! take; tickets made in that instant may not resume later.
//!
//! Checks run every second while HAProxy is in step (a restart or a reload is noticed within a
//! second, though HAProxy then reads the same keys from the file anyway), and with backoff while
//! it is not; a new ring cuts the wait short. Every socket has its own task: a dead socket never
//! delays another socket, the files, memcached or the agent. Failures are logged once per change
//! of state, not at every retry.
//!
//! Rings whose file is not stek's are left alone: stek does not write their files, so HAProxy
//! would go back to the stale keys of those files at its next reload. Point every bind line's
//! `tls-ticket-keys` at stek's file instead (bind lines naming one file share one ring).
//!
//! HAProxy's replies are untrusted: read within 5 s, capped at 64 KiB, parsed without panics.
//! Replies that hold keys and the commands that push them live in zeroizing buffers; logs name
//! keys by their 16-byte public name only.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use stek_core::{Backoff, KeyBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::files::{HaproxyKeys, HAPROXY_KEY_B64_LEN};
use crate::status::HaproxySocketStatus;

/// The largest reply read; HAProxy's replies to these commands are well under 1 KiB per ring.
const MAX_REPLY: usize = 64 * 1024;
/// How long one command (connect, send, read to the end) may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a socket is checked while HAProxy is in step.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The first retry delay after a failure; doubled up to the backoff cap.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest base64 key accepted in a reply (HAProxy's keys are 48 or 80 bytes).
const MAX_KEY_B64: usize = 256;

/// Why a check of one HAProxy failed. Messages quote HAProxy where it said something.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The admin socket could not be reached: HAProxy is not running, the path is wrong, or this
    /// user may not open it.
    Connect(String),
    /// The connection failed or timed out in the middle of a command.
    Io(String),
    /// HAProxy refused a command; its own message.
    Refused {
        /// The command, without its arguments.
        command: &'static str,
        /// HAProxy's message (first line, printable characters only).
        message: String,
    },
    /// The reply was not in the form HAProxy 2.6 uses.
    Malformed {
        /// The command, without its arguments.
        command: &'static str,
        /// What was wrong.
        why: String,
    },
    /// HAProxy has no ring whose file is stek's keys file.
    NoRing {
        /// stek's keys file.
        file: String,
        /// The files of the rings HAProxy has.
        listed: Vec<String>,
    },
    /// A ring stek manages cannot take stek's keys as they are.
    Incompatible {
        /// The ring's file, as HAProxy names it.
        file: String,
        /// Why.
        why: String,
    },
    /// After the pushes the ring still differs from the wanted one (another client pushing?).
    Diverged {
        /// The ring's file, as HAProxy names it.
        file: String,
    },
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::Connect(e) => write!(f, "cannot connect to the admin socket: {e}"),
            RuntimeError::Io(e) => write!(f, "the admin socket failed mid-command: {e}"),
            RuntimeError::Refused { command, message } => {
                write!(f, "HAProxy refused `{command}`: {message}")
            }
            RuntimeError::Malformed { command, why } => {
                write!(f, "unexpected reply to `{command}`: {why}")
            }
            RuntimeError::NoRing { file, listed } if listed.is_empty() => write!(
                f,
                "HAProxy has no ticket-key ring: add `tls-ticket-keys {file}` to its bind lines"
            ),
            RuntimeError::NoRing { file, listed } => write!(
                f,
                "no ring of HAProxy uses {file} (it has {}): point `tls-ticket-keys` at {file}",
                listed.join(", ")
            ),
            RuntimeError::Incompatible { file, why } => write!(f, "ring {file}: {why}"),
            RuntimeError::Diverged { file } => write!(
                f,
                "ring {file} still differs from stek's keys after the pushes (is another client setting keys?)"
            ),
        }
    }
}

impl std::error::Error for RuntimeError {}

/// Keeps the rings of HAProxy processes in step with the keys it is given, one task per admin
/// socket. Dropping it stops the tasks.
#[derive(Debug)]
pub struct HaproxyRuntime {
    tx: watch::Sender<Option<Arc<HaproxyKeys>>>,
    book: Arc<SocketBook>,
}

impl HaproxyRuntime {
    /// Starts following `sockets`, managing the rings whose file is `keys_file` (stek's keys
    /// file, written before every [`HaproxyRuntime::deliver`]). Retries back off up to
    /// `max_backoff`. Must be called within a tokio runtime.
    pub fn spawn(sockets: &[PathBuf], keys_file: PathBuf, max_backoff: Duration) -> HaproxyRuntime {
        let (tx, rx) = watch::channel(None);
        let book = Arc::new(SocketBook::default());
        for socket in sockets {
            tokio::spawn(follow(
                socket.clone(),
                keys_file.clone(),
                rx.clone(),
                max_backoff,
                book.clone(),
            ));
        }
        HaproxyRuntime { tx, book }
    }

    /// The keys HAProxy should hold from now on (the keys file already holds them).
    pub fn deliver(&self, keys: HaproxyKeys) {
        self.tx.send_replace(Some(Arc::new(keys)));
    }

    /// Every socket's state after its last check, by path.
    pub fn sockets(&self) -> Vec<HaproxySocketStatus> {
        crate::lock(&self.book.0).values().cloned().collect()
    }
}

/// The state of every socket, as the status reports it; the follow tasks write it.
#[derive(Debug, Default)]
struct SocketBook(Mutex<BTreeMap<String, HaproxySocketStatus>>);

impl SocketBook {
    /// Records one check of `socket`: the rings kept in step and the keys pushed, or the error.
    fn checked(&self, socket: &str, result: Result<(&[String], usize), String>) {
        let mut g = crate::lock(&self.0);
        let h = g
            .entry(socket.to_owned())
            .or_insert_with(|| HaproxySocketStatus {
                socket: socket.to_owned(),
                ok: false,
                error: None,
                rings: Vec::new(),
                keys_pushed: 0,
                failures: 0,
            });
        match result {
            Ok((rings, pushed)) => {
                h.ok = true;
                h.error = None;
                h.rings = rings.to_vec();
                h.keys_pushed += pushed as u64;
            }
            Err(e) => {
                h.ok = false;
                h.error = Some(e);
                h.failures += 1;
            }
        }
    }
}

/// A file name HAProxy's command line cannot carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotACliWord(pub String);

impl fmt::Display for NotACliWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} cannot be named on HAProxy's command line (spaces, ';', '\\' or non-ASCII characters)",
            self.0
        )
    }
}

impl std::error::Error for NotACliWord {}

/// Whether `file` can be named on HAProxy's command line, which splits words at spaces and
/// commands at `;` and treats `\` as an escape.
pub fn check_cli_word(file: &str) -> Result<(), NotACliWord> {
    if !file.is_empty()
        && file
            .chars()
            .all(|c| c.is_ascii_graphic() && c != ';' && c != '\\')
    {
        Ok(())
    } else {
        Err(NotACliWord(file.to_owned()))
    }
}

/// The state of one socket, remembered so that changes are logged once.
#[derive(Debug, PartialEq)]
enum State {
    Unknown,
    InStep {
        rings: Vec<String>,
        others: Vec<String>,
    },
    Failing(RuntimeError),
}

async fn follow(
    socket: PathBuf,
    keys_file: PathBuf,
    mut rx: watch::Receiver<Option<Arc<HaproxyKeys>>>,
    max_backoff: Duration,
    book: Arc<SocketBook>,
) {
    let label = socket.display().to_string();
    let mut state = State::Unknown;
    let mut retry = Backoff::new(FIRST_RETRY, max_backoff);
    loop {
        let keys = rx.borrow_and_update().clone();
        let wait = match keys {
            None => None,
            Some(keys) => {
                let result = converge(&socket, &keys_file, &keys).await;
                let wait = if result.is_ok() {
                    retry.reset();
                    CHECK_EVERY
                } else {
                    retry.next()
                };
                state = observe(&label, state, result, &keys, wait, &book);
                Some(wait)
            }
        };
        tokio::select! {
            _ = async {
                match wait {
                    Some(w) => tokio::time::sleep(w).await,
                    None => std::future::pending().await,
                }
            } => {}
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Logs and records one check's outcome; returns the new state.
fn observe(
    label: &str,
    old: State,
    result: Result<Converged, RuntimeError>,
    keys: &HaproxyKeys,
    wait: Duration,
    book: &SocketBook,
) -> State {
    let [previous, current, next] = keys.names();
    match result {
        Ok(c) => {
            let rings: Vec<String> = c.rings.iter().map(|(file, _)| file.clone()).collect();
            let pushed: usize = c.rings.iter().map(|(_, n)| n).sum();
            book.checked(label, Ok((&rings, pushed)));
            for (file, n) in c.rings.iter().filter(|(_, n)| *n > 0) {
                let names: Vec<String> = keys.names()[3 - n..].iter().map(|k| k.to_hex()).collect();
                info!(
                    "HAProxy {label}: ring {file}: pushed {n} key(s) ({}): previous {previous}, current {current} (encrypts), next {next}",
                    names.join(", ")
                );
            }
            let new = State::InStep {
                rings,
                others: c.others,
            };
            if new != old {
                if let State::InStep { rings, others } = &new {
                    info!(
                        "HAProxy {label}: in step: ring(s) {} hold previous {previous}, current {current}, next {next}; checked every {}s",
                        rings.join(", "),
                        CHECK_EVERY.as_secs()
                    );
                    if !others.is_empty() {
                        info!(
                            "HAProxy {label}: leaving ring(s) {} alone (stek manages the rings of its own keys file only)",
                            others.join(", ")
                        );
                    }
                }
            } else {
                debug!("HAProxy {label}: in step");
            }
            new
        }
        Err(e) => {
            book.checked(label, Err(e.to_string()));
            if old != State::Failing(e.clone()) {
                warn!(
                    "HAProxy {label}: {e}; retrying with backoff (first in {} ms); the other sinks carry on",
                    wait.as_millis()
                );
            } else {
                debug!("HAProxy {label}: still failing: {e}");
            }
            State::Failing(e)
        }
    }
}

/// The outcome of a successful check: every managed ring (HAProxy's name for its file, keys
/// pushed) and the files of the rings left alone.
#[derive(Debug, Default, PartialEq)]
struct Converged {
    rings: Vec<(String, usize)>,
    others: Vec<String>,
}

/// One check of one HAProxy: brings every ring whose file is `keys_file` to `keys`.
async fn converge(
    socket: &Path,
    keys_file: &Path,
    keys: &HaproxyKeys,
) -> Result<Converged, RuntimeError> {
    const SHOW: &str = "show tls-keys";
    let reply = command(socket, b"show tls-keys\n", SHOW).await?;
    let listed = parse_rings(text(&reply, SHOW)?)?;
    let ours = std::fs::canonicalize(keys_file).ok();
    let mut done = Converged::default();
    for file in listed {
        let same = Path::new(&file) == keys_file
            || (ours.is_some() && std::fs::canonicalize(&file).ok() == ours);
        if !same {
            done.others.push(file);
            continue;
        }
        let incompatible = |why| RuntimeError::Incompatible {
            file: file.clone(),
            why,
        };
        check_cli_word(&file).map_err(|e| incompatible(e.to_string()))?;
        let n = plan(&show_ring(socket, &file).await?, keys.keys()).map_err(incompatible)?;
        for i in 3 - n..3 {
            push(socket, &file, keys, i).await?;
        }
        if n > 0 && plan(&show_ring(socket, &file).await?, keys.keys()) != Ok(0) {
            return Err(RuntimeError::Diverged { file });
        }
        done.rings.push((file, n));
    }
    if done.rings.is_empty() {
        return Err(RuntimeError::NoRing {
            file: keys_file.display().to_string(),
            listed: done.others,
        });
    }
    Ok(done)
}

/// `show tls-keys FILE`: the ring's keys, oldest first.
async fn show_ring(socket: &Path, file: &str) -> Result<Vec<KeyBytes>, RuntimeError> {
    const SHOW: &str = "show tls-keys FILE";
    let line = format!("show tls-keys {file}\n");
    let reply = command(socket, line.as_bytes(), SHOW).await?;
    parse_keys(text(&reply, SHOW)?)
}

/// `set ssl tls-key FILE BASE64` with wanted key `i`.
async fn push(socket: &Path, file: &str, keys: &HaproxyKeys, i: usize) -> Result<(), RuntimeError> {
    const SET: &str = "set ssl tls-key";
    // Sized up front: the line holds a key and must not leave copies behind when it grows.
    let mut line = Zeroizing::new(String::with_capacity(
        SET.len() + file.len() + HAPROXY_KEY_B64_LEN + 3,
    ));
    line.push_str(SET);
    line.push(' ');
    line.push_str(file);
    line.push(' ');
    keys.push_base64(i, &mut line);
    line.push('\n');
    let reply = command(socket, line.as_bytes(), SET).await?;
    check_set(text(&reply, SET)?)
}

/// Sends one command line on a fresh connection and reads the reply to its end: HAProxy's CLI
/// answers one command per connection in non-interactive mode, then closes.
async fn command(
    socket: &Path,
    line: &[u8],
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, RuntimeError> {
    let mut stream = match tokio::time::timeout(IO_TIMEOUT, UnixStream::connect(socket)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(RuntimeError::Connect(e.to_string())),
        Err(_) => return Err(RuntimeError::Connect("timed out".into())),
    };
    let exchange = async {
        stream.write_all(line).await?;
        stream.shutdown().await?;
        // Allocated once at its full size: the reply may hold keys and must not be copied by a
        // growing buffer.
        let mut buf = Zeroizing::new(vec![0u8; MAX_REPLY + 1]);
        let mut n = 0;
        while n < buf.len() {
            match stream.read(&mut buf[n..]).await? {
                0 => break,
                m => n += m,
            }
        }
        buf.truncate(n);
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(IO_TIMEOUT, exchange).await {
        Ok(Ok(buf)) if buf.len() > MAX_REPLY => Err(RuntimeError::Malformed {
            command: what,
            why: format!("the reply is longer than {} KiB", MAX_REPLY / 1024),
        }),
        Ok(Ok(buf)) => Ok(buf),
        Ok(Err(e)) => Err(RuntimeError::Io(e.to_string())),
        Err(_) => Err(RuntimeError::Io(format!(
            "no complete reply to `{what}` within {} s",
            IO_TIMEOUT.as_secs()
        ))),
    }
}

fn text<'a>(reply: &'a [u8], command: &'static str) -> Result<&'a str, RuntimeError> {
    std::str::from_utf8(reply).map_err(|_| RuntimeError::Malformed {
        command,
        why: "the reply is not UTF-8".into(),
    })
}

/// HAProxy's message in a reply: its first non-empty line, printable ASCII only, at most 200
/// characters, with anything that looks like a base64 key replaced.
fn message(reply: &str) -> String {
    let line = reply.lines().map(str::trim).find(|l| !l.is_empty());
    let line = line.unwrap_or("(empty reply)");
    let words: Vec<&str> = line
        .split(' ')
        .map(|w| {
            let b64 = w
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
            if b64 && w.len() >= 64 {
                "(key)"
            } else {
                w
            }
        })
        .collect();
    words
        .join(" ")
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}

/// Parses the reply to `show tls-keys`: `# id (file)`, then one `ID (FILE)` line per ring.
/// Returns the files.
fn parse_rings(reply: &str) -> Result<Vec<String>, RuntimeError> {
    const SHOW: &str = "show tls-keys";
    let mut files = Vec::new();
    for line in body(reply, "# id (file)", SHOW)? {
        let file = line
            .split_once(' ')
            .and_then(|(_, rest)| rest.strip_prefix('('))
            .and_then(|rest| rest.strip_suffix(')'))
            .ok_or_else(|| RuntimeError::Malformed {
                command: SHOW,
                why: format!("a ring line is {:?}", message(line)),
            })?;
        files.push(file.to_owned());
    }
    Ok(files)
}

/// Parses the reply to `show tls-keys FILE`: `# id secret`, `# ID (FILE)`, then `ID.N BASE64`
/// per key, oldest first. Returns the keys.
fn parse_keys(reply: &str) -> Result<Vec<KeyBytes>, RuntimeError> {
    const SHOW: &str = "show tls-keys FILE";
    let malformed = |why: String| RuntimeError::Malformed { command: SHOW, why };
    let mut keys = Vec::new();
    let mut rings = 0;
    for line in body(reply, "# id secret", SHOW)? {
        if line.starts_with("# ") {
            rings += 1;
            if rings > 1 {
                return Err(malformed("it lists more than one ring".into()));
            }
            continue;
        }
        let b64 = match line.split_once(' ') {
            Some((id, b64)) if id.contains('.') && b64.len() <= MAX_KEY_B64 => b64,
            // Never quote a key line: it may hold a key.
            _ => return Err(malformed("a key line is not `ID.N BASE64`".into())),
        };
        let mut key = Zeroizing::new(Vec::with_capacity(b64.len() / 4 * 3 + 3));
        base64::engine::general_purpose::STANDARD
            .decode_vec(b64, &mut key)
            .map_err(|_| malformed("a key is not valid base64".into()))?;
        keys.push(key);
    }
    Ok(keys)
}

/// Checks the reply to `set ssl tls-key`.
fn check_set(reply: &str) -> Result<(), RuntimeError> {
    body(reply, "TLS ticket key updated!", "set ssl tls-key").map(drop)
}

/// The lines of a reply that starts with `header`, up to the blank line that ends it. A reply
/// that starts otherwise is HAProxy refusing `command`, in its own words.
fn body<'a>(
    reply: &'a str,
    header: &str,
    command: &'static str,
) -> Result<impl Iterator<Item = &'a str>, RuntimeError> {
    let mut lines = reply.lines().map(str::trim_end);
    if lines.next() != Some(header) {
        return Err(RuntimeError::Refused {
            command,
            message: message(reply),
        });
    }
    Ok(lines.take_while(|l| !l.is_empty()))
}

/// How many of the wanted keys to push, the last `n` oldest first, so that the `live` ring (oldest
/// first) becomes `wanted`: the least `n` such that the newest `3 - n` live keys are the oldest
/// `3 - n` wanted keys. Refuses a ring that cannot hold `wanted`: HAProxy fixes a ring's size
/// and key length when it reads the file, and answers a key of another size with an error.
fn plan<L: AsRef<[u8]>, W: AsRef<[u8]>>(live: &[L], wanted: &[W; 3]) -> Result<usize, String> {
    if live.len() != 3 {
        return Err(format!(
            "HAProxy holds {} keys in it, stek expects 3 (a HAProxy built with another TLS_TICKETS_NO?)",
            live.len()
        ));
    }
    let size = wanted[0].as_ref().len();
    if let Some(k) = live.iter().find(|k| k.as_ref().len() != size) {
        return Err(format!(
            "it holds {}-byte keys and stek's are {size} bytes: HAProxy takes the key size from the file when it starts; reload HAProxy so it reads stek's file",
            k.as_ref().len()
        ));
    }
    let held = |n: usize| {
        live[n..]
            .iter()
            .map(AsRef::as_ref)
            .eq(wanted[..3 - n].iter().map(AsRef::as_ref))
    };
    Ok((0..3).find(|&n| held(n)).unwrap_or(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u8) -> Vec<u8> {
        vec![b; 80]
    }

    /// What HAProxy does with a push: drop the oldest, append.
    fn apply(live: &mut Vec<Vec<u8>>, wanted: &[Vec<u8>; 3], n: usize) {
        for w in &wanted[3 - n..] {
            live.remove(0);
            live.push(w.clone());
        }
    }

    #[test]
    fn plans_the_fewest_pushes_from_any_state() {
        let wanted = [k(1), k(2), k(3)];
        let cases: &[(&[u8], usize)] = &[
            (&[1, 2, 3], 0),
            (&[0, 1, 2], 1), // one rotation behind: push the next key
            (&[9, 0, 1], 2), // two behind
            (&[7, 8, 9], 3), // a foreign ring
            (&[1, 2, 9], 3), // the next key changed within the slot
            (&[2, 3, 1], 2), // the oldest wanted key is already the newest
            (&[3, 9, 1], 2),
            (&[1, 9, 3], 3),
            (&[2, 1, 2], 1),
        ];
        for (ids, want) in cases {
            let mut live: Vec<Vec<u8>> = ids.iter().map(|b| k(*b)).collect();
            let n = plan(&live, &wanted).unwrap();
            assert_eq!(n, *want, "{ids:?}");
            apply(&mut live, &wanted, n);
            assert_eq!(live, wanted.to_vec(), "pushing {n} key(s) converges");
        }
        // Every ring over 4 distinct keys converges in one plan.
        for a in 0..4 {
            for b in 0..4 {
                for c in 0..4 {
                    let mut live = vec![k(a), k(b), k(c)];
                    let n = plan(&live, &wanted).unwrap();
                    apply(&mut live, &wanted, n);
                    assert_eq!(live, wanted.to_vec());
                }
            }
        }
    }

    #[test]
    fn refuses_rings_that_cannot_hold_the_keys() {
        let wanted = [k(1), k(2), k(3)];
        let e = plan(&[vec![1u8; 48], vec![2; 48], vec![3; 48]], &wanted).unwrap_err();
        assert!(e.contains("48-byte keys"), "{e}");
        let e = plan(&[k(1), k(2)], &wanted).unwrap_err();
        assert!(e.contains("holds 2 keys"), "{e}");
    }

    #[test]
    fn parses_haproxy_2_6_replies() {
        // Verbatim from HAProxy 2.6.12 (keys shortened to 3 bytes).
        let list = "# id (file)\n0 (/etc/haproxy/b.keys)\n1 (/run/stek/haproxy/tickets.keys)\n\n";
        assert_eq!(
            parse_rings(list).unwrap(),
            ["/etc/haproxy/b.keys", "/run/stek/haproxy/tickets.keys"]
        );
        assert_eq!(
            parse_rings("# id (file)\n\n").unwrap(),
            Vec::<String>::new()
        );
        let dump =
            "# id secret\n# 1 (/run/stek/haproxy/tickets.keys)\n1.0 AQID\n1.1 BAUG\n1.2 BwgJ\n\n";
        let keys = parse_keys(dump).unwrap();
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        assert_eq!(keys, [&[1u8, 2, 3][..], &[4, 5, 6], &[7, 8, 9]]);
        check_set("TLS ticket key updated!\n\n").unwrap();
    }

    #[test]
    fn reports_haproxys_own_messages() {
        let e =
            check_set("'set ssl tls-key' unable to locate referenced filename\n\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "HAProxy refused `set ssl tls-key`: 'set ssl tls-key' unable to locate referenced filename"
        );
        let e = check_set("'set ssl tls-key' received a key of wrong size.\n\n").unwrap_err();
        assert!(e.to_string().ends_with("received a key of wrong size."));
        let e = parse_keys("'show tls-keys' unable to locate referenced filename\n\n").unwrap_err();
        assert!(e
            .to_string()
            .contains("unable to locate referenced filename"));
        let e = parse_rings("Permission denied\n\n").unwrap_err();
        assert!(e.to_string().ends_with(": Permission denied"), "{e}");
        // A key-like word in a message is never repeated.
        let key = "A".repeat(108);
        let e = check_set(&format!("Unknown command: {key}\n")).unwrap_err();
        assert!(!e.to_string().contains(&key), "{e}");
    }

    #[test]
    fn hostile_replies_are_errors_not_panics() {
        for reply in [
            "",
            "\n",
            "# id (file)\nno-parens\n",
            "# id (file)\n0 (unterminated\n",
            "\u{0}\u{1}garbage",
        ] {
            assert!(parse_rings(reply).is_err(), "{reply:?}");
        }
        for reply in [
            "# id secret\n1.0 !!!notbase64\n",
            "# id secret\nno-space-here\n",
            "# id secret\n# 1 (a)\n1.0 AQID\n# 2 (b)\n2.0 AQID\n",
            &format!("# id secret\n1.0 {}\n", "A".repeat(MAX_KEY_B64 + 4)),
        ] {
            assert!(parse_keys(reply).is_err(), "{reply:?}");
        }
        // A failed reply's message quotes no key line.
        let e = parse_keys("# id secret\n1.0 c2VjcmV0 extra\n").unwrap_err();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        assert!(check_set("").is_err());
    }

    /// HAProxy's rings: file, keys oldest first.
    type Rings = Vec<(String, Vec<Vec<u8>>)>;

    /// An in-process stand-in for HAProxy 2.6's CLI: rings by file, `set ssl tls-key` drops the
    /// oldest key, one command per connection. `oversize` answers everything with 65 KiB.
    #[derive(Clone, Default)]
    struct Fake {
        rings: Arc<std::sync::Mutex<Rings>>,
        sets: Arc<std::sync::atomic::AtomicUsize>,
        oversize: bool,
    }

    impl Fake {
        fn answer(&self, line: &str) -> String {
            let b64 = base64::engine::general_purpose::STANDARD;
            let mut rings = self.rings.lock().unwrap();
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["show", "tls-keys"] => {
                    let mut out = String::from("# id (file)\n");
                    for (i, (f, _)) in rings.iter().enumerate() {
                        out += &format!("{i} ({f})\n");
                    }
                    out + "\n"
                }
                ["show", "tls-keys", file] => match rings.iter().position(|(f, _)| f == file) {
                    Some(i) => {
                        let mut out = format!("# id secret\n# {i} ({file})\n");
                        for (j, k) in rings[i].1.iter().enumerate() {
                            out += &format!("{i}.{j} {}\n", b64.encode(k));
                        }
                        out + "\n"
                    }
                    None => "'show tls-keys' unable to locate referenced filename\n\n".into(),
                },
                ["set", "ssl", "tls-key", file, key] => {
                    self.sets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(ring) = rings.iter_mut().find(|(f, _)| f == file) else {
                        return "'set ssl tls-key' unable to locate referenced filename\n\n".into();
                    };
                    match b64.decode(key) {
                        Ok(k) if k.len() == ring.1[0].len() => {
                            ring.1.remove(0);
                            ring.1.push(k);
                            "TLS ticket key updated!\n\n".into()
                        }
                        Ok(_) => "'set ssl tls-key' received a key of wrong size.\n\n".into(),
                        Err(_) => {
                            "'set ssl tls-key' received invalid base64 encoded TLS key.\n\n".into()
                        }
                    }
                }
                _ => "Unknown command, but maybe one of the following ones is a better match:\n\n"
                    .into(),
            }
        }

        fn serve(&self, path: &Path) {
            let listener = tokio::net::UnixListener::bind(path).unwrap();
            let fake = self.clone();
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let mut line = Vec::new();
                    let mut byte = [0u8; 1];
                    while conn.read(&mut byte).await.unwrap_or(0) == 1 && byte[0] != b'\n' {
                        line.push(byte[0]);
                    }
                    let reply = if fake.oversize {
                        "x".repeat(65 * 1024)
                    } else {
                        fake.answer(std::str::from_utf8(&line).unwrap())
                    };
                    let _ = conn.write_all(reply.as_bytes()).await;
                }
            });
        }

        fn ring(&self, file: &str) -> Vec<Vec<u8>> {
            let rings = self.rings.lock().unwrap();
            rings.iter().find(|(f, _)| f == file).unwrap().1.clone()
        }

        fn set_ring(&self, file: &str, keys: Vec<Vec<u8>>) {
            let mut rings = self.rings.lock().unwrap();
            rings.retain(|(f, _)| f != file);
            rings.push((file.to_owned(), keys));
        }
    }

    fn keys_at(slot: u64) -> HaproxyKeys {
        use std::collections::BTreeMap;
        use stek_core::{LocalKeys, Ring, Schedule, Slot, SlotKey};
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(4)).unwrap();
        let shared: BTreeMap<Slot, SlotKey> = (slot - 1..=slot + 1)
            .map(|i| (Slot(i), SlotKey::generate(Slot(i)).unwrap()))
            .collect();
        let ring = Ring::build(
            &s,
            Duration::from_secs(slot * 4),
            &shared,
            &mut LocalKeys::new(),
            1,
        )
        .unwrap();
        HaproxyKeys::of(&ring).unwrap()
    }

    fn wanted(keys: &HaproxyKeys) -> Vec<Vec<u8>> {
        keys.keys().iter().map(|k| k.to_vec()).collect()
    }

    #[tokio::test]
    async fn converges_a_fake_haproxy_from_any_state() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("admin.sock");
        let file = d.path().join("tickets.keys");
        std::fs::write(&file, "").unwrap();
        let f = file.display().to_string();
        let fake = Fake::default();
        fake.serve(&sock);
        let keys = keys_at(100);

        // No ring yet; then a foreign ring only: reported, left alone.
        let e = converge(&sock, &file, &keys).await.unwrap_err();
        assert!(matches!(e, RuntimeError::NoRing { .. }), "{e}");
        fake.set_ring("/etc/haproxy/other.keys", vec![k(7), k(8), k(9)]);
        let e = converge(&sock, &file, &keys).await.unwrap_err();
        assert!(e.to_string().contains("/etc/haproxy/other.keys"), "{e}");

        // stek's ring with foreign keys: three pushes, then nothing to do.
        fake.set_ring(&f, vec![k(7), k(8), k(9)]);
        let done = converge(&sock, &file, &keys).await.unwrap();
        assert_eq!(done.rings, [(f.clone(), 3)]);
        assert_eq!(done.others, ["/etc/haproxy/other.keys"]);
        assert_eq!(fake.ring(&f), wanted(&keys));
        assert_eq!(fake.ring("/etc/haproxy/other.keys"), [k(7), k(8), k(9)]);
        let sets = fake.sets.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            converge(&sock, &file, &keys).await.unwrap().rings,
            [(f.clone(), 0)]
        );
        assert_eq!(
            fake.sets.load(std::sync::atomic::Ordering::SeqCst),
            sets,
            "in step: nothing sent"
        );

        // A ring of 48-byte keys is refused before anything is sent.
        fake.set_ring(&f, vec![vec![1; 48], vec![2; 48], vec![3; 48]]);
        let e = converge(&sock, &file, &keys).await.unwrap_err();
        assert!(e.to_string().contains("48-byte keys"), "{e}");
        assert_eq!(fake.sets.load(std::sync::atomic::Ordering::SeqCst), sets);

        // Nobody listening; an oversized reply.
        let e = converge(&d.path().join("nobody.sock"), &file, &keys)
            .await
            .unwrap_err();
        assert!(matches!(e, RuntimeError::Connect(_)), "{e}");
        let big = Fake {
            oversize: true,
            ..Fake::default()
        };
        big.serve(&d.path().join("big.sock"));
        let e = converge(&d.path().join("big.sock"), &file, &keys)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("longer than 64 KiB"), "{e}");
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn follows_rotations_and_repairs_drift_within_a_second_or_two() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("admin.sock");
        let file = d.path().join("tickets.keys");
        std::fs::write(&file, "").unwrap();
        let f = file.display().to_string();
        let rt = HaproxyRuntime::spawn(
            std::slice::from_ref(&sock),
            file.clone(),
            Duration::from_secs(1),
        );
        let first = keys_at(100);
        let want = wanted(&first);
        rt.deliver(first);
        // HAProxy is not up yet: the failure is recorded, then HAProxy comes up.
        until("a failed check", || {
            rt.sockets()
                .first()
                .is_some_and(|h| !h.ok && h.failures > 0)
        })
        .await;
        let fake = Fake::default();
        fake.set_ring(&f, vec![k(7), k(8), k(9)]);
        fake.serve(&sock);
        until("the first ring", || fake.ring(&f) == want).await;
        // A rotation is pushed at once.
        let second = keys_at(101);
        let want = wanted(&second);
        rt.deliver(second);
        until("the next ring", || fake.ring(&f) == want).await;
        // Someone changes HAProxy's ring: repaired by the next check.
        fake.set_ring(&f, vec![k(7), k(8), k(9)]);
        until("the repair", || fake.ring(&f) == want).await;
        let h = &rt.sockets()[0];
        assert!(h.ok && h.error.is_none() && h.rings == [f.clone()], "{h:?}");
        assert_eq!(h.keys_pushed, 3 + 3 + 3);
    }

    #[test]
    fn socket_book_counts_checks_and_keeps_the_last_error() {
        let book = SocketBook::default();
        let rings = ["/run/stek/haproxy/tickets.keys".to_owned()];
        book.checked("/run/a.sock", Ok((&rings, 3)));
        book.checked("/run/a.sock", Err("cannot connect".into()));
        let g = crate::lock(&book.0);
        let h = &g["/run/a.sock"];
        assert!(!h.ok && h.error.as_deref() == Some("cannot connect") && h.rings == rings);
        assert_eq!((h.keys_pushed, h.failures), (3, 1));
    }

    #[test]
    fn file_names_must_fit_haproxys_command_line() {
        assert!(check_cli_word("/run/stek/haproxy/tickets.keys").is_ok());
        for bad in ["", "/a b/t.keys", "/a;b", "/a\\b", "/é", "/a\tb"] {
            assert!(check_cli_word(bad).is_err(), "{bad:?}");
        }
    }
}
