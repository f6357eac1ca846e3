//! The value nghttpx reads at [`NGHTTPX_KEY`]: its whole ticket key list, in its own framing.
//!
//! nghttpx (`--tls-ticket-key-memcached=HOST,PORT`) sends a binary GET of
//! `nghttpx:tls-ticket-key` every `--tls-ticket-key-memcached-interval` and parses the value in
//! `memcached_get_ticket_key_cb` (nghttp2's `src/shrpx_worker_process.cc`):
//!
//! - a u32 big-endian version, which must be 1;
//! - then, repeated, a u16 big-endian length and that many key bytes. The first key encrypts,
//!   every key decrypts. A length other than 48 with `--tls-ticket-key-cipher=aes-128-cbc`
//!   (its default), or other than 80 with `aes-256-cbc`, rejects the whole value;
//! - each key is name16, then the AES key (16 or 32 bytes), then the HMAC-SHA256 key (16 or 32).
//!
//! stek serves the ring in nginx order (the encrypting key, the next key, then past keys newest
//! first), every key of the window, shared and local alike: its client is a TLS server of this
//! host, like the `ticket-ring/` clients. The bytes are those other sinks already hand out, so a
//! name maps to one key everywhere: with aes-128-cbc, each key is exactly the 48-byte
//! `ticket-key/<slot start>` value (Cloudflare's layout is nghttpx's); with aes-256-cbc, the AES
//! and HMAC keys of nginx's 80-byte key file, reordered (nginx puts the HMAC key first).
//!
//! nghttpx drops a response whose body exceeds 16 KiB (`parse_packet` in
//! `src/shrpx_memcached_connection.cc`), so the list stops at the last key that fits
//! ([`max_keys`]): 199 keys of 80 bytes, 327 of 48. The keys left out are the oldest past keys;
//! a ticket older than that many periods does not resume on nghttpx.

use std::fmt;
use std::str::FromStr;

use stek_core::{Format, Ring, SlotKey};
use zeroize::Zeroizing;

/// The memcached key nghttpx reads (`memcached_get_ticket_key_cb`).
pub const NGHTTPX_KEY: &str = "nghttpx:tls-ticket-key";

/// The only value format nghttpx knows.
const VERSION: u32 = 1;

/// The largest response body nghttpx accepts (`totalbody > 16_k` is an error).
pub const NGHTTPX_MAX_BODY: usize = 16 * 1024;

/// The extras of a binary GET response: 4 bytes of flags. They count in nghttpx's body limit.
const GET_EXTRAS: usize = 4;

const NAME_LEN: usize = 16;

/// nghttpx's `--tls-ticket-key-cipher`, which fixes the length of every key it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NghttpxCipher {
    /// `aes-128-cbc` (nghttpx's default): 48-byte keys, name16 aes16 hmac16.
    #[default]
    Aes128Cbc,
    /// `aes-256-cbc`: 80-byte keys, name16 aes32 hmac32.
    Aes256Cbc,
}

impl NghttpxCipher {
    /// The name nghttpx and stek's `--nghttpx-cipher` use.
    pub fn name(self) -> &'static str {
        match self {
            NghttpxCipher::Aes128Cbc => "aes-128-cbc",
            NghttpxCipher::Aes256Cbc => "aes-256-cbc",
        }
    }

    /// The length of one key.
    pub fn key_len(self) -> usize {
        match self {
            NghttpxCipher::Aes128Cbc => 48,
            NghttpxCipher::Aes256Cbc => 80,
        }
    }

    /// `key` in nghttpx's layout for this cipher: name, AES key, HMAC key.
    pub fn encode(self, key: &SlotKey) -> Zeroizing<Vec<u8>> {
        match self {
            // name16 aes16 hmac16: the same layout, and the same bytes as `ticket-key/`.
            NghttpxCipher::Aes128Cbc => Format::Memcached48.encode(key),
            NghttpxCipher::Aes256Cbc => {
                // nginx's 80-byte file is name16 hmac32 aes32; nghttpx wants the AES key first.
                let nginx = Format::Nginx80.encode(key);
                let mut out = Zeroizing::new(Vec::with_capacity(self.key_len()));
                // Always 80 bytes (HKDF gives 32-byte parts); were it not, an empty key makes
                // nghttpx reject the value rather than take wrong bytes.
                if nginx.len() == self.key_len() {
                    out.extend_from_slice(&nginx[..NAME_LEN]);
                    out.extend_from_slice(&nginx[NAME_LEN + 32..]);
                    out.extend_from_slice(&nginx[NAME_LEN..NAME_LEN + 32]);
                }
                out
            }
        }
    }
}

impl fmt::Display for NghttpxCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A cipher name that is neither `aes-128-cbc` nor `aes-256-cbc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCipher(pub String);

impl fmt::Display for UnknownCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown nghttpx cipher {:?} (aes-128-cbc or aes-256-cbc, as nghttpx's --tls-ticket-key-cipher)",
            self.0
        )
    }
}

impl std::error::Error for UnknownCipher {}

impl FromStr for NghttpxCipher {
    type Err = UnknownCipher;

    fn from_str(s: &str) -> Result<NghttpxCipher, UnknownCipher> {
        match s {
            "aes-128-cbc" => Ok(NghttpxCipher::Aes128Cbc),
            "aes-256-cbc" => Ok(NghttpxCipher::Aes256Cbc),
            other => Err(UnknownCipher(other.to_owned())),
        }
    }
}

/// How many keys of `cipher` fit in one value nghttpx accepts.
pub fn max_keys(cipher: NghttpxCipher) -> usize {
    (NGHTTPX_MAX_BODY - GET_EXTRAS - 4) / (2 + cipher.key_len())
}

/// The value of [`NGHTTPX_KEY`] for `ring`, and how many keys it holds.
pub fn value(ring: &Ring, cipher: NghttpxCipher) -> (Zeroizing<Vec<u8>>, usize) {
    let n = ring.entries().len().min(max_keys(cipher));
    let mut out = Zeroizing::new(Vec::with_capacity(4 + n * (2 + cipher.key_len())));
    out.extend_from_slice(&VERSION.to_be_bytes());
    // The key length is 48 or 80: it fits a u16.
    let len = u16::try_from(cipher.key_len()).unwrap_or(u16::MAX);
    for e in ring.entries().iter().take(n) {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&cipher.encode(&e.key));
    }
    (out, n)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use stek_core::{LocalKeys, Schedule, Slot};

    use super::*;
    use crate::memcached::table::tests::ring_with;

    /// Parses a value as nghttpx does (`memcached_get_ticket_key_cb`), returning the keys or
    /// why nghttpx would reject it.
    fn parse_like_nghttpx(value: &[u8], expected_len: usize) -> Result<Vec<Vec<u8>>, String> {
        if value.len() < 4 {
            return Err("too small".into());
        }
        let version = u32::from_be_bytes(value[..4].try_into().unwrap());
        if version != 1 {
            return Err(format!("version {version}"));
        }
        let mut p = &value[4..];
        let mut keys = Vec::new();
        while !p.is_empty() {
            if p.len() < 2 {
                return Err("data too small".into());
            }
            let len = usize::from(u16::from_be_bytes([p[0], p[1]]));
            p = &p[2..];
            if len != expected_len {
                return Err(format!("wrong size {len}"));
            }
            if p.len() < len {
                return Err("payload too short".into());
            }
            keys.push(p[..len].to_vec());
            p = &p[len..];
        }
        Ok(keys)
    }

    #[test]
    fn the_value_is_the_ring_in_nginx_order_with_the_shared_bytes() {
        let ring = ring_with(&[98, 99, 100, 101]);
        let (v, n) = value(&ring, NghttpxCipher::Aes128Cbc);
        let keys = parse_like_nghttpx(&v, 48).unwrap();
        assert_eq!(n, 5);
        assert_eq!(keys.len(), ring.entries().len());
        for (k, e) in keys.iter().zip(ring.entries()) {
            assert_eq!(k[..], Format::Memcached48.encode(&e.key)[..]);
            assert_eq!(k[..16], e.key.name().0);
        }
        // The encrypting key first: the current slot's.
        assert_eq!(keys[0][..16], ring.shared(Slot(100)).unwrap().name().0);
        // The wrong cipher is rejected whole, as nghttpx does.
        assert!(parse_like_nghttpx(&v, 80).is_err());

        let (v, _) = value(&ring, NghttpxCipher::Aes256Cbc);
        let keys = parse_like_nghttpx(&v, 80).unwrap();
        assert_eq!(keys.len(), 5);
        for (k, e) in keys.iter().zip(ring.entries()) {
            let nginx = Format::Nginx80.encode(&e.key);
            assert_eq!(k[..16], nginx[..16]);
            // nghttpx: aes then hmac; nginx: hmac then aes.
            assert_eq!(k[16..48], nginx[48..80]);
            assert_eq!(k[48..80], nginx[16..48]);
        }
    }

    #[test]
    fn a_long_ring_is_cut_to_what_nghttpx_accepts_oldest_keys_first() {
        // P = 1 s, L = 400 s: 402 keys.
        let schedule = Schedule::new(Duration::from_secs(1), Duration::from_secs(400)).unwrap();
        let ring = Ring::build(
            &schedule,
            Duration::from_secs(10_000),
            &BTreeMap::new(),
            &mut LocalKeys::new(),
            1,
        )
        .unwrap();
        assert_eq!(ring.entries().len(), 402);
        for cipher in [NghttpxCipher::Aes128Cbc, NghttpxCipher::Aes256Cbc] {
            let (v, n) = value(&ring, cipher);
            assert_eq!(n, max_keys(cipher));
            // The GET response's body: 4 bytes of flags, then the value.
            assert!(GET_EXTRAS + v.len() <= NGHTTPX_MAX_BODY);
            assert!(GET_EXTRAS + v.len() + 2 + cipher.key_len() > NGHTTPX_MAX_BODY);
            let keys = parse_like_nghttpx(&v, cipher.key_len()).unwrap();
            // The encrypting key, the next one, then past keys newest first: what is cut is
            // the oldest.
            for (k, e) in keys.iter().zip(ring.entries()) {
                assert_eq!(k[..16], e.key.name().0);
            }
        }
        assert_eq!(max_keys(NghttpxCipher::Aes128Cbc), 327);
        assert_eq!(max_keys(NghttpxCipher::Aes256Cbc), 199);
    }

    #[test]
    fn cipher_names_round_trip() {
        for c in [NghttpxCipher::Aes128Cbc, NghttpxCipher::Aes256Cbc] {
            assert_eq!(c.name().parse::<NghttpxCipher>(), Ok(c));
            assert_eq!(c.to_string(), c.name());
        }
        let e = "aes-128-gcm".parse::<NghttpxCipher>().unwrap_err();
        assert!(e.to_string().contains("aes-128-cbc or aes-256-cbc"), "{e}");
        assert_eq!(NghttpxCipher::default(), NghttpxCipher::Aes128Cbc);
    }
}
