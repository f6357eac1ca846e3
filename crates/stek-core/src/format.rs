//! Per-server key layouts, derived from a slot's secret.
//!
//! Each format's AES and HMAC keys come from HKDF-SHA256 (RFC 5869) over the slot secret with
//! the key name as salt and a label naming the format and the part, so no two uses ever share key
//! bytes (the AES key an nginx host gets is not the one HAProxy or Apache get). The 16-byte name
//! is the same in every format.
//!
//! Layouts (docs/DESIGN.md §4):
//!
//! | format | bytes | layout |
//! |---|---|---|
//! | nginx 80 | 80 | name16 hmac32 aes32 |
//! | nginx 48 | 48 | name16 aes16 hmac16 |
//! | HAProxy 80 | 80 | name16 aes32 hmac32 |
//! | Apache 48 | 48 | name16 hmac16 aes16 |
//! | Cloudflare memcached 48 | 48 | name16 aes16 hmac16 |
//! | rustls 48 | 48 | name16 aead32 (the AES-256-GCM-SIV key of stek's rustls ticketer) |
//!
//! h2o's ticket file and lighttpd's STEK file take nginx 80's keys (the same AES-256-CBC and
//! HMAC-SHA256 in the same ticket construction): the sinks lay them out as those servers want.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::key::{KeyBytes, SlotKey, NAME_LEN};

/// A server's key container layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Format {
    /// nginx `ssl_session_ticket_key` file of 80 bytes: name16 hmac32 aes32 (AES-256-CBC).
    Nginx80,
    /// nginx `ssl_session_ticket_key` file of 48 bytes: name16 aes16 hmac16 (AES-128-CBC).
    Nginx48,
    /// HAProxy `tls-ticket-keys` line of 80 bytes (base64): name16 aes32 hmac32.
    Haproxy80,
    /// Apache `SSLSessionTicketKeyFile` of 48 bytes: name16 hmac16 aes16.
    Apache48,
    /// The 48-byte value of Cloudflare's memcached key scheme: name16 aes16 hmac16.
    Memcached48,
    /// The 48-byte key of stek's rustls ticketer (crate `stek-rustls`): name16 aead32, where
    /// aead32 is the AES-256-GCM-SIV key its tickets are sealed with.
    Rustls48,
}

/// Where each part sits in a format's bytes.
#[derive(Clone, Copy)]
enum Order {
    AesThenHmac,
    HmacThenAes,
}

impl Format {
    /// Every format, for tables and tests.
    pub const ALL: [Format; 6] = [
        Format::Nginx80,
        Format::Nginx48,
        Format::Haproxy80,
        Format::Apache48,
        Format::Memcached48,
        Format::Rustls48,
    ];

    /// Total length in bytes.
    pub fn key_len(self) -> usize {
        NAME_LEN + 2 * self.part_len()
    }

    /// A short stable identifier (used in memcached keys and labels).
    pub fn id(self) -> &'static str {
        match self {
            Format::Nginx80 => "nginx-80",
            Format::Nginx48 => "nginx-48",
            Format::Haproxy80 => "haproxy-80",
            Format::Apache48 => "apache-48",
            Format::Memcached48 => "memcached-48",
            Format::Rustls48 => "rustls-48",
        }
    }

    /// Parses an identifier as returned by [`Format::id`].
    pub fn from_id(id: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.id() == id)
    }

    fn part_len(self) -> usize {
        match self {
            Format::Nginx80 | Format::Haproxy80 => 32,
            // Rustls48 has one 32-byte part; 16 keeps `key_len` = 48.
            Format::Nginx48 | Format::Apache48 | Format::Memcached48 | Format::Rustls48 => 16,
        }
    }

    fn order(self) -> Order {
        match self {
            Format::Nginx80 | Format::Apache48 => Order::HmacThenAes,
            Format::Nginx48 | Format::Haproxy80 | Format::Memcached48 | Format::Rustls48 => {
                Order::AesThenHmac
            }
        }
    }

    /// Encodes `key` in this format: the name, then the derived AES and HMAC keys in the
    /// format's order (for [`Format::Rustls48`], the name and one derived AEAD key).
    pub fn encode(self, key: &SlotKey) -> KeyBytes {
        if self == Format::Rustls48 {
            let aead = derive(key, self.id(), "aead", 2 * self.part_len());
            let mut out = Zeroizing::new(Vec::with_capacity(self.key_len()));
            out.extend_from_slice(&key.name().0);
            out.extend_from_slice(&aead);
            return out;
        }
        let n = self.part_len();
        let aes = derive(key, self.id(), "aes", n);
        let hmac = derive(key, self.id(), "hmac", n);
        let mut out = Zeroizing::new(Vec::with_capacity(self.key_len()));
        out.extend_from_slice(&key.name().0);
        let (first, second) = match self.order() {
            Order::AesThenHmac => (&aes, &hmac),
            Order::HmacThenAes => (&hmac, &aes),
        };
        out.extend_from_slice(first);
        out.extend_from_slice(second);
        out
    }
}

/// Derives `len` bytes for `use_label`/`part` from a key: HKDF-SHA256 with the key name as salt
/// and the info `"stek v1 " || use_label || " " || part`. Other crates (the rustls ticketer)
/// derive their own keys through this function with their own label.
pub fn derive(key: &SlotKey, use_label: &str, part: &str, len: usize) -> KeyBytes {
    let hk = Hkdf::<Sha256>::new(Some(&key.name().0), key.secret().expose());
    let mut out = Zeroizing::new(vec![0u8; len]);
    // Labels are distinct and short; HKDF-SHA256 can expand up to 8160 bytes, far more than any
    // caller asks for, so this cannot fail for len <= 8160.
    let info: [&[u8]; 4] = [b"stek v1 ", use_label.as_bytes(), b" ", part.as_bytes()];
    if hk.expand_multi_info(&info, &mut out).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{hex, KeyName, Secret};
    use crate::schedule::Slot;

    fn fixed_key() -> SlotKey {
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = i as u8;
        }
        SlotKey::new(
            Slot(493_000),
            KeyName(*b"stek-test-name-1"),
            Secret::from_bytes(secret),
        )
    }

    /// Byte-exact vectors: if any of these change, every deployed host would disagree with
    /// every upgraded one. Never edit them to make a test pass.
    #[test]
    fn vectors() {
        let k = fixed_key();
        let name = hex(b"stek-test-name-1");
        let aes = |f: Format| hex(&derive(&k, f.id(), "aes", f.part_len()));
        let hmac = |f: Format| hex(&derive(&k, f.id(), "hmac", f.part_len()));
        let cases = [
            (
                Format::Nginx80,
                format!("{name}{}{}", hmac(Format::Nginx80), aes(Format::Nginx80)),
            ),
            (
                Format::Nginx48,
                format!("{name}{}{}", aes(Format::Nginx48), hmac(Format::Nginx48)),
            ),
            (
                Format::Haproxy80,
                format!(
                    "{name}{}{}",
                    aes(Format::Haproxy80),
                    hmac(Format::Haproxy80)
                ),
            ),
            (
                Format::Apache48,
                format!("{name}{}{}", hmac(Format::Apache48), aes(Format::Apache48)),
            ),
            (
                Format::Memcached48,
                format!(
                    "{name}{}{}",
                    aes(Format::Memcached48),
                    hmac(Format::Memcached48)
                ),
            ),
            (
                Format::Rustls48,
                format!("{name}{}", hex(&derive(&k, "rustls-48", "aead", 32))),
            ),
        ];
        for (f, layout) in &cases {
            assert_eq!(hex(&f.encode(&k)), *layout, "{f:?} layout");
            assert_eq!(f.encode(&k).len(), f.key_len());
        }
        // The derived bytes themselves, pinned.
        let pinned = [
            (
                Format::Nginx80,
                "7374656b2d746573742d6e616d652d3118743cc3e614342a489a3e156aa0e0696db4d33945a6ce61ba08c997749a7375d0b8e4cf1f4c50a72057d83dca02bad0b4156da9da995c1dd0377025be60b10d",
            ),
            (
                Format::Nginx48,
                "7374656b2d746573742d6e616d652d3122318076b405e236eb6d56b6bc8c7e11b5870d960adf4f1bc1ffefa9db9219ef",
            ),
            (
                Format::Haproxy80,
                "7374656b2d746573742d6e616d652d31dd1c867e0397b43999abae66373777d847e80d03fb2e8ec80b9c4e39e324728f811566a2f9f8c2d3b47b1a5e8cdfc3dbe9608893728d13e4d8e951125b998e5f",
            ),
            (
                Format::Apache48,
                "7374656b2d746573742d6e616d652d31e11ff299b57908a4ba08b21f579f4607ac57e20330787b3c214ce2636989f85f",
            ),
            (
                Format::Memcached48,
                "7374656b2d746573742d6e616d652d31deb7ae311ae801b24b8d49925c8bf3778b39c98de6c5943b05b3d3bf0d44c2b4",
            ),
            (
                Format::Rustls48,
                "7374656b2d746573742d6e616d652d310277a492fa4d1158a71d9ad453110a5403b8ebf757301c8ea1f0736f61be92d6",
            ),
        ];
        for (f, want) in pinned {
            assert_eq!(hex(&f.encode(&k)), want, "{f:?} vector");
        }
    }

    #[test]
    fn every_use_gets_different_bytes() {
        let k = fixed_key();
        let mut seen = std::collections::HashSet::new();
        for f in Format::ALL {
            let b = f.encode(&k);
            assert_eq!(&b[..16], b"stek-test-name-1");
            for part in b[16..].chunks(16) {
                assert!(seen.insert(part.to_vec()), "{f:?} repeats key bytes");
            }
        }
    }

    #[test]
    fn ids_round_trip() {
        for f in Format::ALL {
            assert_eq!(Format::from_id(f.id()), Some(f));
        }
        assert_eq!(Format::from_id("nope"), None);
    }
}
