//! The nginx and Apache key-file sinks, and HAProxy's keys (written by [`super::haproxy`]).

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

use base64::Engine as _;
use stek_core::{Format, KeyBytes, KeyName, Ring};
use zeroize::Zeroizing;

use super::{Delivered, Sink};
use crate::files::KeyDir;

fn check_len(format: Format, bytes: &[u8]) -> io::Result<()> {
    // Servers die or silently misbehave on short key files (Apache exits at graceful restart):
    // never write one.
    if bytes.len() == format.key_len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} key of {} bytes, expected {}",
                format.id(),
                bytes.len(),
                format.key_len()
            ),
        ))
    }
}

/// The size of nginx's key files (`--nginx-key-size`), which decides their layout and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NginxKeySize {
    /// 80 bytes, name16 hmac32 aes32: AES-256-CBC tickets ([`Format::Nginx80`]).
    #[default]
    Bytes80,
    /// 48 bytes, name16 aes16 hmac16: AES-128-CBC tickets, byte for byte the value served at
    /// memcached `ticket-key/<slot start>` ([`Format::Memcached48`]), i.e. what Cloudflare's
    /// lua-ssl-nginx-module installs in the nginx hosts that run it (and nghttpx's 48-byte
    /// layout). Hosts reading stek's files and hosts running that client then hold the same
    /// keys, so they resume each other's tickets. [`Format::Nginx48`] has the same layout
    /// but other bytes (a label of its own): it is not the one written.
    Bytes48,
}

impl NginxKeySize {
    /// The size in bytes.
    pub fn bytes(self) -> usize {
        self.format().key_len()
    }

    /// The size for `bytes`, if nginx takes it.
    pub fn from_bytes(bytes: u64) -> Option<NginxKeySize> {
        match bytes {
            80 => Some(NginxKeySize::Bytes80),
            48 => Some(NginxKeySize::Bytes48),
            _ => None,
        }
    }

    /// The format the key files are written in.
    pub fn format(self) -> Format {
        match self {
            NginxKeySize::Bytes80 => Format::Nginx80,
            NginxKeySize::Bytes48 => Format::Memcached48,
        }
    }
}

/// nginx: one file per key of the window under `nginx/keys/` (80 bytes, or 48 with
/// [`NginxKeySize::Bytes48`]), named by slot start, and `nginx/tickets.conf` with one
/// `ssl_session_ticket_key` line per key, the encrypting key first, then the next key, then
/// past keys newest first. Keys held ahead of the window ([`Ring::ahead`]) are never written:
/// nginx decrypts with every key it is given.
#[derive(Debug)]
pub struct NginxSink {
    dir: KeyDir,
    size: NginxKeySize,
}

impl NginxSink {
    /// A sink writing `size`-byte keys under `DIR/nginx`, `dir` being the key directory DIR. The
    /// subdirectories are opened (and checked, [`KeyDir::subdir`]) at every write.
    pub fn new(dir: KeyDir, size: NginxKeySize) -> Self {
        NginxSink { dir, size }
    }

    /// The include file nginx reads.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("nginx/tickets.conf")
    }

    /// Writes the key files, then the include file, then erases key files that left the window
    /// (and anything else found in `nginx/keys`, e.g. a temporary file left by a crash).
    pub fn write(&mut self, ring: &Ring) -> io::Result<PathBuf> {
        let nginx = self.dir.subdir("nginx")?;
        let keys = nginx.subdir("keys")?;
        let mut conf = format!(
            "# Written by stek: session ticket keys, the encrypting key first. Do not edit.\n# Encrypting: {}.\n",
            crate::status::encrypting_words(ring)
        );
        let format = self.size.format();
        let mut wanted = HashSet::new();
        for (i, entry) in ring.entries().iter().enumerate() {
            let file = format!("{}.key", ring.schedule().start(entry.slot()).as_secs());
            let bytes = format.encode(&entry.key);
            check_len(format, &bytes)?;
            keys.write_atomic(&file, &bytes)?;
            conf.push_str(&format!(
                "ssl_session_ticket_key {}; # slot {} {} {} {}{}\n",
                keys.path().join(&file).display(),
                entry.slot(),
                entry.role,
                entry.key.name(),
                crate::status::key_use(i),
                match entry.origin {
                    stek_core::Origin::Shared => "",
                    stek_core::Origin::Local => " (local)",
                }
            ));
            wanted.insert(OsString::from(file));
        }
        nginx.write_atomic("tickets.conf", conf.as_bytes())?;
        for name in keys.names()? {
            if !wanted.contains(&name) {
                keys.erase(&name)?;
            }
        }
        Ok(self.conf_path())
    }
}

/// The three keys HAProxy holds, in its order: previous, encrypting, next (oldest first; HAProxy
/// encrypts with the penultimate). 80 bytes each (name16 aes32 hmac32), checked when made. The
/// same value feeds the keys file and the runtime API, so both always say the same.
pub struct HaproxyKeys {
    keys: [KeyBytes; 3],
    names: [KeyName; 3],
}

impl HaproxyKeys {
    /// HAProxy's keys for `ring`.
    pub fn of(ring: &Ring) -> io::Result<HaproxyKeys> {
        let triple = ring.haproxy_triple();
        let keys = triple.map(|e| Format::Haproxy80.encode(&e.key));
        for k in &keys {
            check_len(Format::Haproxy80, k)?;
        }
        Ok(HaproxyKeys {
            keys,
            names: triple.map(|e| e.key.name()),
        })
    }

    /// The keys' bytes, oldest first.
    pub fn keys(&self) -> &[KeyBytes; 3] {
        &self.keys
    }

    /// The keys' public names, oldest first.
    pub fn names(&self) -> [KeyName; 3] {
        self.names
    }

    /// Appends key `i` in base64 to `out`. Reserve room first ([`HAPROXY_KEY_B64_LEN`]): a
    /// reallocation would leave a copy of the key behind that is never zeroized.
    pub fn push_base64(&self, i: usize, out: &mut String) {
        base64::engine::general_purpose::STANDARD.encode_string(&self.keys[i], out);
    }

    /// The keys file: one base64 key per line, oldest first.
    pub fn file_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(3 * (HAPROXY_KEY_B64_LEN + 1)));
        for i in 0..3 {
            self.push_base64(i, &mut text);
            text.push('\n');
        }
        text
    }
}

impl std::fmt::Debug for HaproxyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaproxyKeys")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// The length of one HAProxy key in base64 (80 bytes, padded).
pub const HAPROXY_KEY_B64_LEN: usize = 108;

/// Apache: `apache/ticket.key`, the encrypting key, 48 bytes.
#[derive(Debug)]
pub struct ApacheSink {
    dir: KeyDir,
}

impl ApacheSink {
    /// A sink writing under `DIR/apache`, `dir` being the key directory DIR.
    pub fn new(dir: KeyDir) -> Self {
        ApacheSink { dir }
    }

    /// The file `SSLSessionTicketKeyFile` points at.
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("apache/ticket.key")
    }

    /// Writes the key file.
    pub fn write(&mut self, ring: &Ring) -> io::Result<PathBuf> {
        let apache = self.dir.subdir("apache")?;
        let bytes = Format::Apache48.encode(&ring.encrypting_entry().key);
        check_len(Format::Apache48, &bytes)?;
        apache.write_atomic("ticket.key", &bytes)?;
        Ok(self.key_path())
    }
}

impl Sink for NginxSink {
    fn name(&self) -> &'static str {
        "nginx"
    }

    fn deliver(&mut self, ring: &Ring) -> io::Result<Delivered> {
        self.write(ring).map(|p| Delivered::Files(vec![p]))
    }
}

impl Sink for ApacheSink {
    fn name(&self) -> &'static str {
        "apache"
    }

    fn deliver(&mut self, ring: &Ring) -> io::Result<Delivered> {
        self.write(ring).map(|p| Delivered::Files(vec![p]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::KeyDir;
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::Path;
    use std::time::Duration;
    use stek_core::{LocalKeys, Schedule, Slot, SlotKey};

    fn ring_at(t: u64, shared: &BTreeMap<Slot, SlotKey>, local: &mut LocalKeys) -> Ring {
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        Ring::build(&s, Duration::from_secs(t), shared, local, 1).unwrap()
    }

    #[test]
    fn nginx_files_follow_the_window() {
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let (k, _) = KeyDir::open(d.path(), false).unwrap();
        let mut sink = NginxSink::new(k, NginxKeySize::default());
        let mut shared = BTreeMap::new();
        for s in [100, 101] {
            shared.insert(Slot(s), SlotKey::generate(Slot(s)).unwrap());
        }
        let mut local = LocalKeys::new();
        let r = ring_at(400, &shared, &mut local);
        let conf = sink.write(&r).unwrap();
        let text = fs::read_to_string(&conf).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("ssl_")).collect();
        assert_eq!(lines.len(), 5);
        let files: Vec<&str> = lines
            .iter()
            .map(|l| l.split(' ').nth(1).unwrap().trim_end_matches(';'))
            .collect();
        assert!(
            files[0].ends_with("/400.key")
                && files[1].ends_with("/404.key")
                && files[2].ends_with("/396.key")
        );
        for f in &files {
            assert_eq!(fs::read(f).unwrap().len(), 80);
        }
        assert_eq!(
            &fs::read(files[0]).unwrap()[..16],
            &shared[&Slot(100)].name().0
        );
        // Next slot: 388.key (slot 97) leaves and is erased.
        shared.insert(Slot(102), SlotKey::generate(Slot(102)).unwrap());
        let r = ring_at(404, &shared, &mut local);
        sink.write(&r).unwrap();
        assert!(!Path::new(&files[4]).exists());
        assert_eq!(
            fs::read_dir(d.path().join("nginx/keys")).unwrap().count(),
            5
        );
    }

    /// With the current slot's shared key missing, a stale past key encrypts: the comments say
    /// so, and the current slot's local stand-in is labelled as only decrypting.
    #[test]
    fn nginx_comments_name_the_key_that_encrypts_when_stale() {
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let (k, _) = KeyDir::open(d.path(), false).unwrap();
        let mut sink = NginxSink::new(k, NginxKeySize::default());
        let shared = BTreeMap::from([(Slot(99), SlotKey::generate(Slot(99)).unwrap())]);
        let mut local = LocalKeys::new();
        let r = ring_at(400, &shared, &mut local);
        let text = fs::read_to_string(sink.write(&r).unwrap()).unwrap();
        assert!(
            text.contains("# Encrypting: a stale shared key (1 period(s) old)"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("ssl_")).collect();
        let name = shared[&Slot(99)].name();
        assert!(
            lines[0].ends_with(&format!("# slot 99 past-1 {name} encrypts")),
            "{text}"
        );
        let current = lines.iter().find(|l| l.contains("# slot 100 ")).unwrap();
        assert!(current.ends_with("decrypts (local)"), "{text}");
        assert!(
            lines[1..].iter().all(|l| !l.contains(" encrypts")),
            "{text}"
        );
    }

    /// With 48-byte keys every file holds exactly what memcached serves at
    /// `ticket-key/<slot start>` for a shared key; a size change rewrites every file.
    #[test]
    fn nginx_48_files_are_the_memcached_values() {
        use crate::memcached::KeyTable;

        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let (k, _) = KeyDir::open(d.path(), false).unwrap();
        let mut shared = BTreeMap::new();
        for s in 98..=102 {
            shared.insert(Slot(s), SlotKey::generate(Slot(s)).unwrap());
        }
        // Window 97..=101 at 400: 97 is a local stand-in, 102 is held ahead.
        let r = ring_at(400, &shared, &mut LocalKeys::new());
        let table = KeyTable::from_ring(&r);
        let mut sink = NginxSink::new(k.clone(), NginxKeySize::Bytes48);
        assert_eq!(NginxKeySize::Bytes48.bytes(), 48);
        sink.write(&r).unwrap();
        let keys = d.path().join("nginx/keys");
        let mut files: Vec<String> = fs::read_dir(&keys)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["388.key", "392.key", "396.key", "400.key", "404.key"],
            "the window, not the key held ahead (408)"
        );
        for slot in 98..=101u64 {
            let start = slot * 4;
            let file = fs::read(keys.join(format!("{start}.key"))).unwrap();
            let served = table
                .get(format!("ticket-key/{start}").as_bytes())
                .unwrap()
                .value();
            // assert!, not assert_eq!: a failure must not print key bytes.
            assert!(
                file == served,
                "slot {slot}: the file is not the ticket-key value"
            );
            assert!(file[..] != Format::Nginx48.encode(&shared[&Slot(slot)])[..]);
        }
        assert_eq!(fs::read(keys.join("388.key")).unwrap().len(), 48);
        // Back to 80 bytes: every file rewritten at the new size.
        NginxSink::new(k, NginxKeySize::Bytes80).write(&r).unwrap();
        for f in &files {
            assert_eq!(fs::read(keys.join(f)).unwrap().len(), 80, "{f}");
        }
        assert_eq!(NginxKeySize::from_bytes(48), Some(NginxKeySize::Bytes48));
        assert_eq!(NginxKeySize::from_bytes(80), Some(NginxKeySize::Bytes80));
        assert_eq!(NginxKeySize::from_bytes(64), None);
    }

    #[test]
    fn haproxy_and_apache_files() {
        let d = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut shared = BTreeMap::new();
        for s in 99..=101 {
            shared.insert(Slot(s), SlotKey::generate(Slot(s)).unwrap());
        }
        let r = ring_at(400, &shared, &mut LocalKeys::new());
        let (k, _) = KeyDir::open(d.path(), false).unwrap();
        let p = crate::sink::HaproxySink::new(k.clone(), None)
            .write(&r)
            .unwrap();
        let text = fs::read_to_string(p).unwrap();
        let keys: Vec<Vec<u8>> = text
            .lines()
            .inspect(|l| assert_eq!(l.len(), HAPROXY_KEY_B64_LEN))
            .map(|l| base64::engine::general_purpose::STANDARD.decode(l).unwrap())
            .collect();
        assert_eq!(keys.len(), 3);
        for (k, slot) in keys.iter().zip([99, 100, 101]) {
            assert_eq!(k.len(), 80);
            assert_eq!(&k[..16], &shared[&Slot(slot)].name().0);
        }
        let p = ApacheSink::new(k).write(&r).unwrap();
        let k = fs::read(p).unwrap();
        assert_eq!(k.len(), 48);
        assert_eq!(&k[..16], &shared[&Slot(100)].name().0);
    }
}
