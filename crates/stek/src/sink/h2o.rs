//! h2o: `DIR/h2o/tickets.yaml`, the file of
//! `ssl-session-resumption: {mode: ticket, ticket-store: file, ticket-file: PATH}`.
//!
//! What h2o does with the file (h2o 2.2.5, `src/ssl.c`):
//! - `ticket_file_updater` looks at the file's modification time every 10 s and loads the file
//!   whenever it differs from the last one seen (whole seconds): no reload is needed, a new file
//!   is live within 10 s.
//! - `parse_ticket_entry`: a YAML list of `name` (32 hex digits), `cipher`, `hash`, `key` =
//!   hex(cipher key ‖ HMAC key as long as the hash's *block*: 64 bytes for SHA-256), `not_before`
//!   and `not_after` (Unix seconds, `not_before <= not_after`). One bad entry rejects the file and
//!   h2o keeps the keys it had.
//! - `find_ticket_for_encryption`: the entries sorted by `not_before`, newest first; the first
//!   whose `not_before` has come encrypts if `now <= not_after`, else none does (h2o then makes a
//!   throw-away key per ticket: nothing resumes, nothing is exposed).
//! - `ticket_key_callback`, decrypting: the entry is found by name among *all* entries whatever
//!   their dates, so an entry whose `not_before` is still ahead decrypts: the next key works for
//!   hosts whose clocks run ahead. A ticket whose key is not the newest entry is renewed.
//!
//! So every key of the window goes in, with the dates that make h2o encrypt with the ring's
//! encrypting key, and switch by itself at the boundary before it reads the next file:
//!
//! | entry | not_before | not_after |
//! |---|---|---|
//! | the encrypting key (current, stale or local) | `s_e` | `s_{e+1} - 1` |
//! | the next key | `s_{e+1}` | `s_{e+2} - 1` |
//! | every other key, slot `j` | `s_j` | `s_{j+1} - 1` |
//!
//! The other keys' dates lie before `s_e` (a local stand-in newer than a stale encrypting key is
//! moved to `s_e - 1`), so they only ever decrypt. If stek stops, h2o keeps encrypting with the
//! next key through its slot and then with none: it never encrypts with a key past the slot
//! the schedule gave it.
//!
//! The AES-256-CBC and HMAC-SHA256 keys are nginx-80's ([`Format::Nginx80`]): the same cipher,
//! MAC and ticket layout (key name ‖ IV ‖ AES-256-CBC ‖ HMAC-SHA256) under the same name, so a
//! separate derivation would buy nothing. The HMAC key is followed by 32 zero bytes: HMAC pads a
//! shorter key with zeros to the block size (RFC 2104 §2), so the MAC is nginx's.
//!
//! `ticket-store: memcached` cannot use stek's memcached server: h2o writes the keys itself
//! there (`ticket_memcached_update_tickets` adds or replaces `h2o:ssl-session-key` with keys it
//! makes), and stek's server is read-only.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stek_core::{Format, KeyName, Ring, RingEntry, Slot};
use zeroize::Zeroizing;

use super::{Delivered, RetryGate, Sink};
use crate::files::KeyDir;

/// How long h2o keeps a session: OpenSSL's default timeout, which h2o 2.2.5 leaves as it is in
/// `ticket-store: file` mode (`setup_cache_disable` sets none; the lifetime hint of its tickets
/// is 7200 s, measured). Clients drop tickets older than the hint, and OpenSSL refuses TLS 1.2
/// sessions older than the timeout.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(7200);

/// The file's name in `DIR/h2o`.
const FILE: &str = "tickets.yaml";

/// The AES-256 key, then the 32-byte HMAC-SHA256 key and the zeros that pad it to SHA-256's
/// 64-byte block: h2o reads `cipher key_len + hash block_size` bytes (`parse_ticket_entry`).
const KEY_LEN: usize = 32 + 64;

/// h2o's ticket file under the key directory `dir` (`DIR/h2o/tickets.yaml`).
pub fn file_path(dir: &Path) -> PathBuf {
    dir.join("h2o").join(FILE)
}

/// One entry of h2o's file: a key of the ring and when h2o may encrypt with it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The ring's key.
    pub entry: &'a RingEntry,
    /// Unix seconds from which h2o may encrypt with it.
    pub not_before: u64,
    /// The last Unix second in which h2o may encrypt with it.
    pub not_after: u64,
}

/// The entries of h2o's file for `ring`, in the ring's order (h2o sorts them itself). See the
/// module documentation for the dates.
pub fn entries(ring: &Ring) -> Vec<Entry<'_>> {
    let s = ring.schedule();
    let e = ring.current();
    let secs = |slot: Slot| s.start(slot).as_secs();
    let slot_dates = |slot: Slot| (secs(slot), secs(slot.plus(1)).saturating_sub(1));
    let encrypting = ring.encrypting_entry().slot();
    let current_start = secs(e);
    ring.entries()
        .iter()
        .map(|x| {
            let (not_before, not_after) = if x.slot() == encrypting {
                slot_dates(e)
            } else if x.slot() == e.plus(1) {
                slot_dates(e.plus(1))
            } else {
                // Decrypt-only: dates that end before the encrypting key's begin, so h2o never
                // picks it. Only a local stand-in newer than a stale encrypting key is moved.
                let (b, a) = slot_dates(x.slot());
                let last = current_start.saturating_sub(1);
                (b.min(last), a.min(last))
            };
            Entry {
                entry: x,
                not_before,
                not_after,
            }
        })
        .collect()
}

/// h2o's key for `entry`: nginx-80's AES-256 key, then its HMAC-SHA256 key padded with zeros to
/// SHA-256's block (see the module documentation).
fn h2o_key(entry: &RingEntry) -> io::Result<Zeroizing<Vec<u8>>> {
    let nginx = Format::Nginx80.encode(&entry.key);
    if nginx.len() != Format::Nginx80.key_len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("nginx-80 key of {} bytes", nginx.len()),
        ));
    }
    // nginx-80 = name16 hmac32 aes32.
    let mut key = Zeroizing::new(Vec::with_capacity(KEY_LEN));
    key.extend_from_slice(&nginx[48..80]);
    key.extend_from_slice(&nginx[16..48]);
    key.resize(KEY_LEN, 0);
    Ok(key)
}

/// The text of h2o's file for `ring`: one entry per key, laid out as h2o itself writes them
/// (`serialize_ticket_entry`). Key bytes are in it: it lives in zeroizing memory, sized up
/// front so that no reallocation leaves a copy behind.
pub fn file_text(ring: &Ring) -> io::Result<Zeroizing<String>> {
    let entries = entries(ring);
    // The comment line is 78 bytes; an entry at most 347: 115 fixed, 32 + 192 hex digits, two
    // numbers of at most 20 digits.
    let mut text = Zeroizing::new(String::with_capacity(128 + entries.len() * 400));
    text.push_str(
        "# Written by stek: h2o session ticket keys (ticket-store: file). Do not edit.\n",
    );
    for x in &entries {
        let key = h2o_key(x.entry)?;
        text.push_str("- name: ");
        text.push_str(&x.entry.key.name().to_hex());
        text.push_str("\n  cipher: aes-256-cbc\n  hash: sha256\n  key: ");
        push_hex(&mut text, &key);
        text.push_str(&format!(
            "\n  not_before: {}\n  not_after: {}\n",
            x.not_before, x.not_after
        ));
    }
    Ok(text)
}

/// Appends `bytes` in lowercase hex, in place (no temporary string holds them).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// What a written file held, without key bytes: each key's name and dates.
type Written = BTreeSet<(KeyName, u64, u64)>;

fn written(ring: &Ring) -> Written {
    entries(ring)
        .iter()
        .map(|x| (x.entry.key.name(), x.not_before, x.not_after))
        .collect()
}

/// h2o: `h2o/tickets.yaml`, every key of the window with its dates. Written at the first tick
/// after each delivery that changes it, with a modification time that differs from the last
/// file's: h2o compares whole seconds, so two files written within one second would look the
/// same to it (`ticket_file_updater`).
#[derive(Debug)]
pub struct H2oSink {
    dir: KeyDir,
    ring: Option<Ring>,
    written: Option<Written>,
    /// The whole-second modification time of the last file written.
    last_mtime: Option<u64>,
    retry: RetryGate,
}

impl H2oSink {
    /// A sink writing under `DIR/h2o`, `dir` being the key directory DIR. The subdirectory is
    /// opened (and checked, [`KeyDir::subdir`]) at every write.
    pub fn new(dir: KeyDir) -> Self {
        H2oSink {
            dir,
            ring: None,
            written: None,
            last_mtime: None,
            retry: RetryGate::new(),
        }
    }

    /// The file `ticket-file` points at.
    pub fn file_path(&self) -> PathBuf {
        file_path(self.dir.path())
    }

    /// Writes the file for `ring` at `now` (the agent's clock), whatever was written before.
    pub fn write(&mut self, ring: &Ring, now: Duration) -> io::Result<PathBuf> {
        let text = file_text(ring)?;
        let h2o = self.dir.subdir("h2o")?;
        let mtime = match self.last_mtime {
            Some(last) if now.as_secs() <= last => last + 1,
            _ => now.as_secs(),
        };
        h2o.write_atomic_mtime(FILE, text.as_bytes(), Duration::from_secs(mtime))?;
        self.last_mtime = Some(mtime);
        self.written = Some(written(ring));
        Ok(self.file_path())
    }
}

impl Sink for H2oSink {
    fn name(&self) -> &'static str {
        "h2o"
    }

    fn deliver(&mut self, ring: &Ring) -> io::Result<Delivered> {
        // Written at the tick that follows at once, with the agent's clock for the file's time.
        self.ring = Some(ring.clone());
        Ok(Delivered::Handed)
    }

    fn tick(&mut self, now: Duration) -> io::Result<Option<Delivered>> {
        if !self.retry.ready(now) {
            return Ok(None);
        }
        let Some(ring) = self.ring.take() else {
            return Ok(None);
        };
        if self.written.as_ref() == Some(&written(&ring)) {
            return Ok(None);
        }
        let result = self.write(&ring, now);
        self.retry.record(now, result.is_ok());
        if result.is_err() {
            // Tried again once the gate opens; the previous file stays meanwhile.
            self.ring = Some(ring);
        }
        result.map(|p| Some(Delivered::Files(vec![p])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use stek_core::{Encrypting, LocalKeys, Origin, Schedule, SlotKey};

    const P: u64 = 3600;

    fn schedule() -> Schedule {
        Schedule::new(Duration::from_secs(P), Duration::from_secs(3 * P)).unwrap()
    }

    /// Parses the file the way h2o does (`parse_ticket_entry`), strictly: every attribute of
    /// every entry, hex of the exact length, `not_before <= not_after`.
    fn parse(text: &str) -> Vec<(String, Vec<u8>, u64, u64)> {
        let mut out = Vec::new();
        let mut lines = text.lines().filter(|l| !l.starts_with('#')).peekable();
        while let Some(first) = lines.next() {
            let name = first
                .strip_prefix("- name: ")
                .expect("an entry starts with its name");
            assert_eq!(name.len(), 32);
            let mut field = |k: &str| {
                let l = lines.next().expect("attribute");
                l.strip_prefix(&format!("  {k}: "))
                    .unwrap_or_else(|| panic!("{k} in {l:?}"))
                    .to_owned()
            };
            assert_eq!(field("cipher"), "aes-256-cbc");
            assert_eq!(field("hash"), "sha256");
            let key = field("key");
            assert_eq!(key.len(), 2 * KEY_LEN);
            let key: Vec<u8> = (0..KEY_LEN)
                .map(|i| u8::from_str_radix(&key[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let nb: u64 = field("not_before").parse().unwrap();
            let na: u64 = field("not_after").parse().unwrap();
            assert!(nb <= na);
            out.push((name.to_owned(), key, nb, na));
        }
        out
    }

    /// What h2o encrypts with at `now` given the parsed entries (`find_ticket_for_encryption`).
    fn h2o_encrypts(entries: &[(String, Vec<u8>, u64, u64)], now: u64) -> Option<String> {
        let mut sorted: Vec<_> = entries.iter().collect();
        sorted.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        let first = sorted.into_iter().find(|e| e.2 <= now)?;
        (now <= first.3).then(|| first.0.clone())
    }

    fn keys_for(slots: impl IntoIterator<Item = u64>) -> BTreeMap<Slot, SlotKey> {
        slots
            .into_iter()
            .map(|s| (Slot(s), SlotKey::generate(Slot(s)).unwrap()))
            .collect()
    }

    #[test]
    fn the_file_is_exactly_what_h2o_reads() {
        let s = schedule();
        let shared = keys_for(500_000..500_010);
        let now = Duration::from_secs(500_005 * P + 17);
        let ring = Ring::build(&s, now, &shared, &mut LocalKeys::new(), 1).unwrap();
        let text = file_text(&ring).unwrap();
        let parsed = parse(&text);
        assert_eq!(parsed.len(), ring.entries().len());
        for ((name, key, nb, na), e) in parsed.iter().zip(ring.entries()) {
            assert_eq!(*name, e.key.name().to_hex());
            let nginx = Format::Nginx80.encode(&e.key);
            assert_eq!(&key[..32], &nginx[48..80], "the AES key is nginx-80's");
            assert_eq!(&key[32..64], &nginx[16..48], "the HMAC key is nginx-80's");
            assert_eq!(&key[64..], &[0u8; 32], "padded to SHA-256's block");
            let start = e.slot().0 * P;
            assert_eq!((*nb, *na), (start, start + P - 1), "{e:?}");
        }
        // Byte for byte, the first entry.
        let first = &ring.entries()[0];
        let nginx = Format::Nginx80.encode(&first.key);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let want = format!(
            "- name: {}\n  cipher: aes-256-cbc\n  hash: sha256\n  key: {}{}{}\n  not_before: {}\n  not_after: {}\n",
            first.key.name().to_hex(),
            hex(&nginx[48..80]),
            hex(&nginx[16..48]),
            "00".repeat(32),
            500_005 * P,
            500_006 * P - 1
        );
        let body = text.split_once('\n').unwrap().1;
        assert!(body.starts_with(&want), "{body}");
        // Sized up front: never reallocated, so no copy of the key bytes was left behind.
        assert_eq!(text.capacity(), 128 + ring.entries().len() * 400);
    }

    /// Over two whole days of rotation, second by second around every boundary and every ten
    /// minutes in between: h2o, reading the file of the ring of any moment, encrypts with the
    /// ring's encrypting key, and at the next boundary (before it reads the next file) with the
    /// next key; every key of the window is in the file; no two keys of a file can encrypt at
    /// the same moment.
    #[test]
    fn h2o_encrypts_with_the_ring_and_switches_at_the_boundary_by_itself() {
        let s = schedule();
        let day = 86_400 / P;
        let first = 480_000;
        let shared = keys_for(first - 4..first + 2 * day + 3);
        let mut local = LocalKeys::new();
        for slot in first..first + 2 * day {
            for off in [0, 1, 2, P / 2, P - 2, P - 1] {
                let t = slot * P + off;
                let now = Duration::from_secs(t);
                let ring = Ring::build(&s, now, &shared, &mut local, 1).unwrap();
                let parsed = parse(&file_text(&ring).unwrap());
                let names: Vec<String> = ring
                    .entries()
                    .iter()
                    .map(|e| e.key.name().to_hex())
                    .collect();
                assert_eq!(
                    parsed.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
                    names
                );
                assert_eq!(
                    h2o_encrypts(&parsed, t).as_ref(),
                    Some(&ring.encrypting_entry().key.name().to_hex()),
                    "at {t}"
                );
                let next_start = s.next_rotation(now).as_secs();
                let next = ring.get(ring.current().plus(1)).unwrap();
                assert_eq!(
                    h2o_encrypts(&parsed, next_start),
                    Some(next.key.name().to_hex()),
                    "the old file at the boundary {next_start}"
                );
            }
        }
    }

    /// The store is gone: a stale key encrypts, then a local one; h2o follows the ring, and a
    /// local stand-in newer than the stale encrypting key never encrypts.
    #[test]
    fn stale_and_local_rings_are_followed() {
        let s = schedule();
        let shared = keys_for(500_000..=500_005);
        let mut local = LocalKeys::new();
        let at = |slot: u64| Duration::from_secs(slot * P + 100);
        let ring = Ring::build(&s, at(500_006), &shared, &mut local, 1).unwrap();
        assert_eq!(ring.encrypting(), Encrypting::Stale { behind: 1 });
        let parsed = parse(&file_text(&ring).unwrap());
        let t = 500_006 * P + 100;
        assert_eq!(
            h2o_encrypts(&parsed, t),
            Some(shared[&Slot(500_005)].name().to_hex())
        );
        let stand_in = ring.get(Slot(500_006)).unwrap();
        assert_eq!(stand_in.origin, Origin::Local);
        let e = parsed
            .iter()
            .find(|p| p.0 == stand_in.key.name().to_hex())
            .unwrap();
        assert_eq!((e.2, e.3), (500_006 * P - 1, 500_006 * P - 1));
        let ring = Ring::build(&s, at(500_007), &shared, &mut local, 1).unwrap();
        assert_eq!(ring.encrypting(), Encrypting::LocalFallback);
        let parsed = parse(&file_text(&ring).unwrap());
        assert_eq!(
            h2o_encrypts(&parsed, 500_007 * P + 100),
            Some(ring.encrypting_entry().key.name().to_hex())
        );
    }

    /// A failed write (the subdirectory turned into a symbolic link) is an error once, then
    /// waits for the retry gate, then succeeds once the directory is sound again.
    #[test]
    fn a_failed_write_is_retried_after_a_pause() {
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let elsewhere = tempfile::tempdir_in("/dev/shm").unwrap();
        let (k, _) = KeyDir::open(d.path(), false).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), d.path().join("h2o")).unwrap();
        let s = schedule();
        let shared = keys_for(500_000..500_010);
        let now = Duration::from_secs(500_005 * P + 10);
        let ring = Ring::build(&s, now, &shared, &mut LocalKeys::new(), 1).unwrap();
        let mut sink = H2oSink::new(k);
        sink.deliver(&ring).unwrap();
        assert!(
            sink.tick(now).is_err(),
            "a symbolic link is never written through"
        );
        assert_eq!(
            std::fs::read_dir(elsewhere.path()).unwrap().count(),
            0,
            "nothing written at the link's target"
        );
        assert_eq!(sink.tick(now + Duration::from_millis(500)).unwrap(), None);
        std::fs::remove_file(d.path().join("h2o")).unwrap();
        let later = now + Duration::from_secs(1);
        assert_eq!(
            sink.tick(later).unwrap(),
            Some(Delivered::Files(vec![sink.file_path()]))
        );
    }

    #[test]
    fn the_sink_writes_on_change_with_a_new_mtime_each_time() {
        use std::os::unix::fs::MetadataExt as _;
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let (k, _) = KeyDir::open(d.path(), false).unwrap();
        let s = schedule();
        let shared = keys_for(500_000..500_010);
        let mut local = LocalKeys::new();
        let now = Duration::from_secs(500_005 * P + 10);
        let ring = Ring::build(&s, now, &shared, &mut local, 1).unwrap();
        let mut sink = H2oSink::new(k);
        assert_eq!(sink.tick(now).unwrap(), None, "nothing delivered yet");
        sink.deliver(&ring).unwrap();
        let path = sink.file_path();
        assert_eq!(
            sink.tick(now).unwrap(),
            Some(Delivered::Files(vec![path.clone()]))
        );
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.mtime() as u64, now.as_secs());
        // The same ring again: nothing to write.
        sink.deliver(&ring).unwrap();
        assert_eq!(sink.tick(now).unwrap(), None);
        // A new ring within the same second: a new file, one second later.
        let ring = Ring::build(&s, now + Duration::from_secs(P), &shared, &mut local, 1).unwrap();
        sink.deliver(&ring).unwrap();
        assert!(sink.tick(now).unwrap().is_some());
        assert_eq!(
            std::fs::metadata(&path).unwrap().mtime() as u64,
            now.as_secs() + 1
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse(&text).len(), ring.entries().len());
    }
}
