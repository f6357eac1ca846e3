//! lighttpd: `DIR/lighttpd/stek.key`, the file of `ssl.stek-file = PATH`.
//!
//! What lighttpd does with the file (lighttpd 1.4.69, `src/mod_openssl.c`):
//! - `mod_openssl_session_ticket_key_file`: 92 bytes, `int` format version 0, `int` activation
//!   time, `int` expiry time (host byte order, 32 bits), then the key name (16), the HMAC-SHA256
//!   key (32) and the AES-256-CBC key (32): nginx's 80-byte layout.
//! - `mod_openssl_handle_trigger` looks at the file only when its clock's second is a multiple of
//!   64 (`cur_ts & 0x3f`), and at start; `mod_openssl_session_ticket_key_check` loads it if its
//!   modification time is *later* than the last load (whole seconds), pushes the key in front
//!   of the 3 it keeps and drops the oldest, then wipes the keys past their expiry.
//! - `tlsext_ticket_key_get`: the first of the 3 (newest first) that is active and not expired
//!   encrypts; `tlsext_ticket_key_find`: any unexpired key decrypts, active or not.
//!
//! So lighttpd takes one key per file and holds 3, and each file written costs it its oldest key.
//! The file changes once per slot, to the next slot's key with activation at the next slot's
//! start, early enough that lighttpd loads it before the boundary and switches by itself at the
//! boundary ([`switch_at`]):
//!
//! ```text
//!  slot e:   [s_e ........................ m_e ........ c_e - 64 ....... s_e+1)
//!  file:      K_e (act. s_e) ............. K_e+1 (act. s_e+1) ................
//!  lighttpd:  K_e K_e-1 K_e-2 ............................ K_e+1 K_e K_e-1 ...
//! ```
//!
//! `m_e` is three seconds before lighttpd's second-to-last check of the slot (the slot's start
//! when the slot is too short for that): the next key is held 65 to 128 s before the boundary
//! (hosts whose clocks differ by less than that resume each other's tickets across it), and a
//! lighttpd restarted after `m_e`, which loads only the next key, goes at most 68 to 131 s
//! without a key to encrypt with. Before `m_e` the file holds the encrypting key, so a lighttpd
//! started then encrypts at once. Nothing is written when the contents would not change (a
//! reload of the same key would push out a key still in use), not even after stek restarts (the
//! file's head is read first), and nothing in a second lighttpd checks in: a file written in
//! the second of a load would carry that second as its time and never be loaded.
//!
//! Expiry is the end of the key's window in stek's schedule; with `L <= P` lighttpd then
//! resumes a ticket exactly as long as every other server, otherwise its 3 keys and its
//! session timeout (OpenSSL's default, 7200 s: lighttpd sets none) cut it short:
//! [`ticket_life`]. When the store is unreachable the file keeps the last shared key (a stale
//! key encrypts, as the ring says), then holds the ring's local fallback key.
//!
//! The file's modification time is the agent's clock, the clock its activation and expiry
//! times are computed with, which is also the clock lighttpd compares it with.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stek_core::{Format, KeyBytes, Origin, Ring, RingEntry, Schedule, Slot};
use zeroize::Zeroizing;

use super::{Delivered, RetryGate, Sink};
use crate::files::KeyDir;

/// The file's name in `DIR/lighttpd`.
const FILE: &str = "stek.key";

/// lighttpd looks at the file when its clock's second is a multiple of this
/// (`mod_openssl_handle_trigger`: `if (cur_ts & 0x3f) return`).
pub const CHECK_EVERY: u64 = 64;

/// The shortest period lighttpd can follow: every slot must hold one of its checks after the
/// boundary's write, so the period must be longer than [`CHECK_EVERY`].
pub const MIN_PERIOD: Duration = Duration::from_secs(CHECK_EVERY + 1);

/// How long lighttpd keeps a session: OpenSSL's default timeout, which lighttpd 1.4.69 leaves
/// as it is (the lifetime hint of its tickets is 7200 s, measured).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(7200);

/// How far ahead of the check it is meant for the next key is written: the agent's loop wakes
/// at least once a second, so the write lands two to three seconds before that check.
const MARGIN: u64 = 3;

/// The file: version, activation, expiry (4 bytes each), then the 80-byte key.
pub const FILE_LEN: usize = 12 + 80;

/// The public part of the file: version, times, key name.
const HEAD_LEN: usize = 12 + 16;

/// The key directory's lighttpd file (`DIR/lighttpd/stek.key`).
pub fn file_path(dir: &Path) -> PathBuf {
    dir.join("lighttpd").join(FILE)
}

/// The Unix second from which the file holds the next slot's key, in slot `e`: three seconds
/// before lighttpd's second-to-last check of the slot, or the slot's start when that is too
/// early (short slots: the next key is then loaded at the slot's first check).
pub fn switch_at(schedule: &Schedule, e: Slot) -> u64 {
    let start = schedule.start(e).as_secs();
    let next = schedule.start(e.plus(1)).as_secs();
    let last_check = next.saturating_sub(1) / CHECK_EVERY * CHECK_EVERY;
    last_check.saturating_sub(CHECK_EVERY + MARGIN).max(start)
}

/// When lighttpd loads a file written at Unix second `written` (not a check second: those are
/// skipped): at its first check after.
pub fn loaded_at(written: u64) -> u64 {
    (written / CHECK_EVERY + 1) * CHECK_EVERY
}

/// The file's contents, without the key bytes.
#[derive(Debug, Clone, Copy)]
pub struct StekFile<'a> {
    /// The ring's key the file holds.
    pub entry: &'a RingEntry,
    /// When lighttpd may start encrypting with it (Unix seconds).
    pub activation: u64,
    /// The last Unix second lighttpd may use it: the end of its window.
    pub expiry: u64,
}

/// What the file holds at `now` for `ring`: from [`switch_at`] on, the next slot's key if it is
/// the group's (a local stand-in would only push a useful key out of lighttpd's 3); before
/// that, the ring's encrypting key (current, stale or local fallback).
pub fn choose(ring: &Ring, now: Duration) -> StekFile<'_> {
    let s = ring.schedule();
    let e = ring.current();
    let next = ring
        .get(e.plus(1))
        .filter(|n| n.origin == Origin::Shared && now.as_secs() >= switch_at(s, e));
    let entry = next.unwrap_or_else(|| ring.encrypting_entry());
    // The window of slot j ends when slot j + R + 1 begins.
    let end = s.start(entry.slot().plus(s.past_keys() + 1)).as_secs();
    StekFile {
        entry,
        activation: s.start(entry.slot()).as_secs(),
        expiry: end.saturating_sub(1),
    }
}

/// Why the file cannot be written: lighttpd's times are 32-bit.
fn time_field(t: u64) -> io::Result<[u8; 4]> {
    i32::try_from(t).map(i32::to_ne_bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "lighttpd's key file holds 32-bit times and {t} does not fit (after 2038-01-19)"
            ),
        )
    })
}

/// The file's public head: version 0, activation, expiry, key name.
fn head(file: &StekFile<'_>) -> io::Result<[u8; HEAD_LEN]> {
    let mut h = [0u8; HEAD_LEN];
    h[4..8].copy_from_slice(&time_field(file.activation)?);
    h[8..12].copy_from_slice(&time_field(file.expiry)?);
    h[12..].copy_from_slice(&file.entry.key.name().0);
    Ok(h)
}

/// The 92 bytes of the file: the head, then nginx-80's bytes after the name (HMAC, then AES).
pub fn file_bytes(file: &StekFile<'_>) -> io::Result<KeyBytes> {
    let key = Format::Nginx80.encode(&file.entry.key);
    if key.len() != Format::Nginx80.key_len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("nginx-80 key of {} bytes", key.len()),
        ));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(FILE_LEN));
    out.extend_from_slice(&head(file)?);
    out.extend_from_slice(&key[16..]);
    Ok(out)
}

/// How long lighttpd resumes a ticket under `schedule`, from the shortest (a ticket issued at
/// the end of its slot) to the longest (one issued at its start): a key decrypts until its
/// expiry or until the third file after it is loaded, whichever comes first, and never past
/// lighttpd's [`SESSION_TIMEOUT`]. Computed over 64 consecutive slots: a slot's place against
/// lighttpd's 64-second checks repeats at least that often.
pub fn ticket_life(schedule: &Schedule) -> (Duration, Duration) {
    let p = schedule.period().as_secs();
    let r = schedule.past_keys();
    // Far from 0, so that no subtraction saturates; the pattern depends on e*P mod 64 only.
    let first = 1 << 20;
    let (mut min, mut max) = (u64::MAX, 0);
    for e in first..first + CHECK_EVERY {
        let start = e * p;
        let dropped = loaded_at(switch_at(schedule, Slot(e + 2)));
        let until = dropped.min((e + r + 1) * p);
        min = min.min(until.saturating_sub(start + p));
        max = max.max(until - start);
    }
    let cap = SESSION_TIMEOUT.as_secs();
    (
        Duration::from_secs(min.min(cap)),
        Duration::from_secs(max.min(cap)),
    )
}

/// lighttpd: `lighttpd/stek.key`, one key at a time (see the module documentation). Written at
/// the agent's ticks: after each delivery and at [`switch_at`].
#[derive(Debug)]
pub struct LighttpdSink {
    dir: KeyDir,
    ring: Option<Ring>,
    /// The head of the file as last written (or found at start).
    written: Option<[u8; HEAD_LEN]>,
    retry: RetryGate,
}

impl LighttpdSink {
    /// A sink writing under `DIR/lighttpd`, `dir` being the key directory DIR. The
    /// subdirectory is opened (and checked, [`KeyDir::subdir`]) at every write.
    pub fn new(dir: KeyDir) -> Self {
        LighttpdSink {
            dir,
            ring: None,
            written: None,
            retry: RetryGate::new(),
        }
    }

    /// The file `ssl.stek-file` points at.
    pub fn file_path(&self) -> PathBuf {
        file_path(self.dir.path())
    }

    /// Writes the file `ring` calls for at `now`, unless the file already holds it.
    fn write(&mut self, ring: &Ring, now: Duration) -> io::Result<Option<PathBuf>> {
        let file = choose(ring, now);
        let head = head(&file)?;
        if self.written == Some(head) {
            return Ok(None);
        }
        let dir = self.dir.subdir("lighttpd")?;
        if self.written.is_none() {
            // Started again: the file may already hold this key, and loading it twice would
            // cost lighttpd a key.
            if dir.read_head(FILE, HEAD_LEN)?.as_deref() == Some(&head[..]) {
                self.written = Some(head);
                return Ok(None);
            }
        }
        dir.write_atomic_mtime(FILE, &file_bytes(&file)?, now)?;
        self.written = Some(head);
        Ok(Some(self.file_path()))
    }
}

impl Sink for LighttpdSink {
    fn name(&self) -> &'static str {
        "lighttpd"
    }

    fn deliver(&mut self, ring: &Ring) -> io::Result<Delivered> {
        // Written at the tick that follows at once: the contents depend on the time.
        self.ring = Some(ring.clone());
        Ok(Delivered::Handed)
    }

    fn tick(&mut self, now: Duration) -> io::Result<Option<Delivered>> {
        if now.as_secs() % CHECK_EVERY == 0 || !self.retry.ready(now) {
            return Ok(None);
        }
        let Some(ring) = self.ring.take() else {
            return Ok(None);
        };
        let result = self.write(&ring, now);
        self.ring = Some(ring);
        self.retry.record(now, result.is_ok());
        Ok(result?.map(|p| Delivered::Files(vec![p])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use stek_core::{Encrypting, LocalKeys, SlotKey};

    fn sched(p: u64, l: u64) -> Schedule {
        Schedule::new(Duration::from_secs(p), Duration::from_secs(l)).unwrap()
    }

    fn keys_for(slots: impl IntoIterator<Item = u64>) -> BTreeMap<Slot, SlotKey> {
        slots
            .into_iter()
            .map(|s| (Slot(s), SlotKey::generate(Slot(s)).unwrap()))
            .collect()
    }

    /// lighttpd 1.4.69 as `src/mod_openssl.c` describes it: 3 keys, newest first; a check at
    /// every multiple of 64 loads the file if its modification time is later than the last load.
    #[derive(Default)]
    struct Lighttpd {
        keys: Vec<([u8; 16], i64, i64)>,
        last_load: i64,
    }

    impl Lighttpd {
        fn load(&mut self, bytes: &[u8], mtime: i64, now: i64) {
            assert_eq!(bytes.len(), FILE_LEN);
            let int = |i: usize| i64::from(i32::from_ne_bytes(bytes[i..i + 4].try_into().unwrap()));
            assert_eq!(int(0), 0, "format version 0");
            if mtime > self.last_load {
                self.keys
                    .insert(0, (bytes[12..28].try_into().unwrap(), int(4), int(8)));
                self.keys.truncate(3);
                self.last_load = now;
            }
            self.keys.retain(|k| k.2 >= now);
        }

        fn encrypts(&self, now: i64) -> Option<[u8; 16]> {
            self.keys
                .iter()
                .find(|k| k.1 <= now && k.2 >= now)
                .map(|k| k.0)
        }

        fn decrypts(&self, name: [u8; 16], now: i64) -> bool {
            self.keys.iter().any(|k| k.0 == name && k.2 >= now)
        }
    }

    /// Whole days of rotation, second by second, for several periods against lighttpd's
    /// 64-second grid: the sink's file (written at the agent's ticks, once a second) loaded by a
    /// model of lighttpd. lighttpd always encrypts with the ring's key, holds the next key 65 to
    /// 128 s before its boundary (short slots: from the slot's first check), holds the key of
    /// the previous slot, and tickets resume exactly as long as [`ticket_life`] states.
    #[test]
    fn lighttpd_follows_the_ring_over_whole_days() {
        let cases = [
            (65, 65),
            (100, 300),
            (200, 200),
            (900, 1800),
            (3600, 3600),
            (3600, 18 * 3600),
        ];
        for (p, l) in cases {
            let s = sched(p, l);
            let slots = (2 * 86_400 / p).min(400);
            let first = 1_700_000_000 / p;
            let shared = keys_for(first - 30..first + slots + 3);
            let mut local = LocalKeys::new();
            let mut lt = Lighttpd::default();
            let mut ring: Option<Ring> = None;
            let mut file: Option<(Vec<u8>, i64)> = None;
            let mut written = None;
            let mut issued: Vec<([u8; 16], u64)> = Vec::new();
            let (mut seen_min, mut seen_max) = (u64::MAX, 0);
            for t in first * p..(first + slots) * p {
                let now = Duration::from_secs(t);
                if ring.as_ref().is_none_or(|r| r.current() != s.slot_at(now)) {
                    ring = Some(Ring::build(&s, now, &shared, &mut local, 1).unwrap());
                }
                let ring = ring.as_ref().unwrap();
                if t % CHECK_EVERY != 0 {
                    let f = choose(ring, now);
                    let h = head(&f).unwrap();
                    if written != Some(h) {
                        file = Some((file_bytes(&f).unwrap().to_vec(), t as i64));
                        written = Some(h);
                    }
                } else if let Some((bytes, mtime)) = &file {
                    lt.load(bytes, *mtime, t as i64);
                }
                if t < (first + 3) * p {
                    continue; // lighttpd fills its 3 keys.
                }
                let want = ring.encrypting_entry().key.name().0;
                assert_eq!(lt.encrypts(t as i64), Some(want), "P {p}: at {t}");
                let e = ring.current();
                let boundary = s.start(e.plus(1)).as_secs();
                let next = ring.get(e.plus(1)).unwrap().key.name().0;
                let ahead = if p >= 3 * CHECK_EVERY { 65 } else { 1 };
                if boundary - t <= ahead {
                    assert!(lt.decrypts(next, t as i64), "P {p}: next key at {t}");
                }
                if boundary - t == 1 {
                    let prev = ring.get(e.minus(1)).unwrap().key.name().0;
                    assert!(lt.decrypts(prev, t as i64), "P {p}: previous key at {t}");
                }
                // A ticket at the very start and one at the very end of each slot.
                if t % p == 0 {
                    issued.push((want, t));
                } else if t % p == p - 1 {
                    issued.push((want, t + 1));
                }
                issued.retain(|(name, at)| {
                    let age = t.saturating_sub(*at);
                    if lt.decrypts(*name, t as i64) && age < SESSION_TIMEOUT.as_secs() {
                        return true;
                    }
                    seen_min = seen_min.min(age);
                    seen_max = seen_max.max(age);
                    false
                });
            }
            assert_eq!(
                (Duration::from_secs(seen_min), Duration::from_secs(seen_max)),
                ticket_life(&s),
                "P {p}, L {l}"
            );
        }
    }

    #[test]
    fn ticket_life_as_stated() {
        let h = 3600;
        // L <= P: stek's window (P to 2P), as on every other server.
        assert_eq!(
            ticket_life(&sched(200, 200)),
            (Duration::from_secs(200), Duration::from_secs(400))
        );
        // The defaults: 3 keys hold a ticket 2P - 128 s to 3P - 65 s, and the session timeout
        // cuts that at 2 h.
        let (min, max) = ticket_life(&sched(h, 18 * h));
        assert!(
            min >= Duration::from_secs(2 * h - 128) && min < Duration::from_secs(2 * h - 64),
            "{min:?}"
        );
        assert_eq!(max, SESSION_TIMEOUT);
        // 30 min periods, 1 h lifetime: the second past key is held, L is honoured.
        let (min, _) = ticket_life(&sched(1800, h));
        assert!(min >= Duration::from_secs(h - 128), "{min:?}");
    }

    #[test]
    fn the_file_is_lighttpds_92_bytes() {
        // Too late for 32 bits (slot 600000 of 1 h starts in 2038): a typed refusal.
        let s = sched(3600, 3 * 3600);
        let shared = keys_for(600_000..600_010);
        let now = Duration::from_secs(600_005 * 3600 + 10);
        let ring = Ring::build(&s, now, &shared, &mut LocalKeys::new(), 1).unwrap();
        let f = choose(&ring, now);
        assert_eq!(f.entry.slot(), Slot(600_005));
        assert!(file_bytes(&f).unwrap_err().to_string().contains("2038"));

        let s = sched(600, 1800);
        let shared = keys_for(2_000_000..2_000_010);
        let t0 = 2_000_005 * 600;
        let now = Duration::from_secs(t0 + 10);
        let ring = Ring::build(&s, now, &shared, &mut LocalKeys::new(), 1).unwrap();
        let f = choose(&ring, now);
        let b = file_bytes(&f).unwrap();
        assert_eq!(b.len(), FILE_LEN);
        assert_eq!(&b[..4], &0i32.to_ne_bytes());
        assert_eq!(&b[4..8], &(t0 as i32).to_ne_bytes());
        // R = 3: the window of slot e ends when slot e + 4 begins.
        assert_eq!(&b[8..12], &((t0 + 4 * 600 - 1) as i32).to_ne_bytes());
        assert_eq!(
            &b[12..],
            &Format::Nginx80.encode(&shared[&Slot(2_000_005)])[..]
        );
        // The switch: 3 s before lighttpd's second-to-last check of the slot.
        let last_check = (t0 + 599) / 64 * 64;
        let m = switch_at(&s, Slot(2_000_005));
        assert_eq!(m, last_check - 64 - 3);
        let f = choose(&ring, Duration::from_secs(m));
        assert_eq!(f.entry.slot(), Slot(2_000_006));
        assert_eq!(f.activation, t0 + 600);
        assert_eq!(f.expiry, t0 + 5 * 600 - 1);
        let f = choose(&ring, Duration::from_secs(m - 1));
        assert_eq!(f.entry.slot(), Slot(2_000_005));
    }

    #[test]
    fn switch_points_sit_before_lighttpds_checks() {
        for p in [65, 66, 100, 127, 128, 129, 130, 131, 192, 200, 3600, 86_400] {
            let s = sched(p, p);
            for e in 1_000_000..1_000_000 + 64 {
                let start = e * p;
                let m = switch_at(&s, Slot(e));
                assert!(m >= start && m < start + p, "P {p} slot {e}");
                let load = loaded_at(m);
                let before = (start + p) - load;
                assert!(
                    load > m && load < start + p,
                    "P {p} slot {e}: loaded at {load}"
                );
                if p >= 3 * CHECK_EVERY {
                    assert!((65..=128).contains(&before), "P {p}: {before}");
                }
            }
        }
    }

    /// Shared keys stop arriving: the file keeps the last shared key (lighttpd encrypts with it,
    /// as the stale ring does), then holds the ring's local fallback key.
    #[test]
    fn stale_then_local_fallback() {
        let s = sched(600, 600);
        let shared = keys_for(2_000_000..=2_000_005);
        let mut local = LocalKeys::new();
        let at = |slot: u64, off: u64| Duration::from_secs(slot * 600 + off);
        let ring = Ring::build(&s, at(2_000_005, 599), &shared, &mut local, 1).unwrap();
        assert_eq!(
            choose(&ring, at(2_000_005, 599)).entry.slot(),
            Slot(2_000_005),
            "no shared next key: keep the current one"
        );
        let ring = Ring::build(&s, at(2_000_006, 10), &shared, &mut local, 1).unwrap();
        assert_eq!(ring.encrypting(), Encrypting::Stale { behind: 1 });
        let f = choose(&ring, at(2_000_006, 10));
        assert_eq!(f.entry.key.name(), shared[&Slot(2_000_005)].name());
        let ring = Ring::build(&s, at(2_000_007, 10), &shared, &mut local, 1).unwrap();
        assert_eq!(ring.encrypting(), Encrypting::LocalFallback);
        let f = choose(&ring, at(2_000_007, 10));
        assert_eq!(f.entry.origin, Origin::Local);
        assert_eq!(f.activation, 2_000_007 * 600);
    }

    #[test]
    fn the_sink_writes_once_per_change_never_in_a_check_second_and_not_again_after_a_restart() {
        use std::os::unix::fs::MetadataExt as _;
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let (k, _) = KeyDir::open(d.path(), false).unwrap();
        let s = sched(600, 600);
        let shared = keys_for(2_000_000..2_000_010);
        let mut local = LocalKeys::new();
        let t0 = 2_000_005 * 600;
        let now = Duration::from_secs(t0 + 1);
        let ring = Ring::build(&s, now, &shared, &mut local, 1).unwrap();
        let mut sink = LighttpdSink::new(k.clone());
        sink.deliver(&ring).unwrap();
        let check_second = Duration::from_secs((t0 / 64 + 1) * 64);
        assert_eq!(
            sink.tick(check_second).unwrap(),
            None,
            "not in a check second"
        );
        let path = sink.file_path();
        assert_eq!(
            sink.tick(now).unwrap(),
            Some(Delivered::Files(vec![path.clone()]))
        );
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.len(), meta.mode() & 0o777), (92, 0o600));
        assert_eq!(meta.mtime() as u64, now.as_secs(), "the agent's clock");
        assert_eq!(
            sink.tick(now + Duration::from_secs(1)).unwrap(),
            None,
            "unchanged"
        );
        // A new sink (stek restarted) finds the same head: no second load for lighttpd.
        let mut again = LighttpdSink::new(k);
        again.deliver(&ring).unwrap();
        assert_eq!(again.tick(now + Duration::from_secs(2)).unwrap(), None);
        // At the switch: the next key.
        let m = Duration::from_secs(switch_at(&s, Slot(2_000_005)));
        assert!(again.tick(m).unwrap().is_some());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[12..28], &shared[&Slot(2_000_006)].name().0);
    }
}
