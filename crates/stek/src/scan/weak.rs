//! Weak ticket keys, found from one ticket alone.
//!
//! OpenSSL-based servers (nginx, HAProxy, Apache, and anything using
//! `SSL_CTX_set_tlsext_ticket_key_cb` the usual way) issue RFC 5077-style tickets:
//! `key name (16) | IV (16) | AES-CBC(session) | HMAC-SHA256(name | IV | ciphertext) (32)`.
//! A ticket key file of 48 bytes holds a 16-byte HMAC key and an AES-128 key, one of 80 bytes a
//! 32-byte HMAC key and an AES-256 key, in an order that differs per server. If the file was
//! left all zero, filled with one byte, counted, or typed in ASCII, the MAC of the ticket
//! verifies under the guessed HMAC key and the body decrypts under the guessed AES key into an
//! ASN.1 session: anyone holding a recording can then decrypt every session the key covered.

use aes::cipher::{generic_array::GenericArray, BlockDecrypt, KeyInit};
use ring::hmac;
use std::collections::HashSet;
use std::sync::OnceLock;
use zeroize::Zeroizing;

const NAME: usize = 16;
const IV: usize = 16;
const MAC: usize = 32;
const BLOCK: usize = 16;

/// A guessed key that opens a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeakKey {
    /// How the key was guessed, in words ("all zero", "every byte 0x41", ...).
    pub pattern: String,
    /// Where in a key file the guessed keys sit (`nginx 80-byte`, ...).
    pub layout: &'static str,
    /// HMAC key length in bytes.
    pub hmac_len: usize,
    /// The AES key size in bits, when the body also decrypted.
    pub aes_bits: Option<usize>,
    /// The decrypted session's length, when it decrypted to an ASN.1 session.
    pub session_len: Option<usize>,
}

/// Where a server keeps the keys in its key file (the name is always the first 16 bytes).
#[derive(Debug, Clone)]
struct Layout {
    name: &'static str,
    hmac: std::ops::Range<usize>,
    aes: std::ops::Range<usize>,
}

const LAYOUTS: [Layout; 4] = [
    Layout {
        name: "nginx 80-byte (name, HMAC, AES-256)",
        hmac: 16..48,
        aes: 48..80,
    },
    Layout {
        name: "HAProxy 80-byte (name, AES-256, HMAC)",
        hmac: 48..80,
        aes: 16..48,
    },
    Layout {
        name: "nginx/HAProxy 48-byte (name, AES-128, HMAC)",
        hmac: 32..48,
        aes: 16..32,
    },
    Layout {
        name: "Apache 48-byte (name, HMAC, AES-128)",
        hmac: 16..32,
        aes: 32..48,
    },
];

/// Byte patterns a careless operator leaves in a key file, as (description, 80 bytes), not
/// counting the one made of the ticket's own name.
fn patterns() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(300);
    out.push(("all zero".to_owned(), vec![0u8; 80]));
    out.push(("all 0xff".to_owned(), vec![0xffu8; 80]));
    for b in 1u8..=0xfe {
        out.push((format!("every byte {b:#04x}"), vec![b; 80]));
    }
    out.push(("counting 0, 1, 2, ...".to_owned(), (0..80u8).collect()));
    out.push(("counting 1, 2, 3, ...".to_owned(), (1..81u8).collect()));
    for text in [
        "0123456789",
        "0123456789abcdef",
        "abcdefghijklmnopqrstuvwxyz",
        "password",
        "secret",
        "changeme",
        "ticketkey",
        "sessionticketkey",
    ] {
        let bytes = text.bytes().cycle().take(80).collect();
        out.push((format!("ASCII {text:?} repeated"), bytes));
    }
    out
}

/// One guessed HMAC key with the AES key that sits beside it in the same guessed file.
#[derive(Debug)]
struct Guess {
    pattern: String,
    layout: &'static str,
    hmac_len: usize,
    hmac: hmac::Key,
    aes: Vec<u8>,
}

/// Guesses from patterns: each laid over a whole key file (the name at the front, then the keys
/// in the server's order) or over each key alone; one guess per distinct HMAC key (the first),
/// and every distinct AES key.
#[derive(Debug, Default)]
struct Guesses {
    mac: Vec<Guess>,
    aes: Vec<Vec<u8>>,
}

impl Guesses {
    fn of(patterns: Vec<(String, Vec<u8>)>) -> Guesses {
        let mut out = Guesses::default();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        for (pattern, file) in patterns {
            for l in LAYOUTS {
                for (h, a) in [
                    (&file[l.hmac.clone()], &file[l.aes.clone()]),
                    (&file[..l.hmac.len()], &file[..l.aes.len()]),
                ] {
                    if !out.aes.iter().any(|k| k.as_slice() == a) {
                        out.aes.push(a.to_vec());
                    }
                    if seen.insert(h.to_vec()) {
                        out.mac.push(Guess {
                            pattern: pattern.clone(),
                            layout: l.name,
                            hmac_len: h.len(),
                            hmac: hmac::Key::new(hmac::HMAC_SHA256, h),
                            aes: a.to_vec(),
                        });
                    }
                }
            }
        }
        out
    }
}

/// The guesses that do not depend on the ticket, made once.
fn common() -> &'static Guesses {
    static COMMON: OnceLock<Guesses> = OnceLock::new();
    COMMON.get_or_init(|| Guesses::of(patterns()))
}

/// Try guessable keys on an RFC 5077-style ticket. `None` when no guess opens it (or the ticket
/// does not have that shape).
pub fn check(ticket: &[u8]) -> Option<WeakKey> {
    if ticket.len() < NAME + IV + BLOCK + MAC || (ticket.len() - NAME - IV - MAC) % BLOCK != 0 {
        return None;
    }
    let (signed, mac) = ticket.split_at(ticket.len() - MAC);
    let name = &ticket[..NAME];
    let own = Guesses::of(vec![(
        "the key name repeated".to_owned(),
        name.iter().copied().cycle().take(80).collect(),
    )]);
    let common = common();
    let g = common
        .mac
        .iter()
        .chain(&own.mac)
        .find(|g| hmac::verify(&g.hmac, signed, mac).is_ok())?;
    // The MAC key is guessed; the AES key is most likely its partner, else any other guess.
    let opened = std::iter::once(&g.aes)
        .chain(&common.aes)
        .chain(&own.aes)
        .filter(|k| k.len() == 16 || k.len() == 32)
        .find_map(|k| decrypt(ticket, k).map(|n| (k.len() * 8, n)));
    Some(WeakKey {
        pattern: g.pattern.clone(),
        layout: g.layout,
        hmac_len: g.hmac_len,
        aes_bits: opened.map(|o| o.0),
        session_len: opened.map(|o| o.1),
    })
}

/// Decrypt the ticket body with AES-CBC under `key`; the session's length if the padding is
/// right and the plaintext is a DER SEQUENCE (an OpenSSL `SSL_SESSION`).
fn decrypt(ticket: &[u8], key: &[u8]) -> Option<usize> {
    let iv = &ticket[NAME..NAME + IV];
    let body = &ticket[NAME + IV..ticket.len() - MAC];
    let mut plain = Zeroizing::new(body.to_vec());
    let mut prev: [u8; BLOCK] = iv.try_into().ok()?;
    for block in plain.chunks_exact_mut(BLOCK) {
        let cipher: [u8; BLOCK] = (*block).try_into().ok()?;
        let b = GenericArray::from_mut_slice(block);
        match key.len() {
            16 => aes::Aes128::new_from_slice(key).ok()?.decrypt_block(b),
            32 => aes::Aes256::new_from_slice(key).ok()?.decrypt_block(b),
            _ => return None,
        }
        for (p, c) in block.iter_mut().zip(prev) {
            *p ^= c;
        }
        prev = cipher;
    }
    let pad = usize::from(*plain.last()?);
    if pad == 0
        || pad > BLOCK
        || plain[plain.len() - pad..]
            .iter()
            .any(|&b| usize::from(b) != pad)
    {
        return None;
    }
    let session = &plain[..plain.len() - pad];
    (session.first() == Some(&0x30)).then_some(session.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::BlockEncrypt;

    /// Make an RFC 5077-style ticket the way OpenSSL does.
    fn ticket(name: [u8; 16], hmac_key: &[u8], aes_key: &[u8], session: &[u8]) -> Vec<u8> {
        let iv = [0x5a; 16];
        let mut body = session.to_vec();
        let pad = 16 - body.len() % 16;
        body.extend(std::iter::repeat_n(pad as u8, pad));
        let mut prev = iv;
        for block in body.chunks_exact_mut(16) {
            for (b, p) in block.iter_mut().zip(prev) {
                *b ^= p;
            }
            let b = GenericArray::from_mut_slice(block);
            match aes_key.len() {
                16 => aes::Aes128::new_from_slice(aes_key)
                    .unwrap()
                    .encrypt_block(b),
                _ => aes::Aes256::new_from_slice(aes_key)
                    .unwrap()
                    .encrypt_block(b),
            }
            prev.copy_from_slice(block);
        }
        let mut t = name.to_vec();
        t.extend_from_slice(&iv);
        t.extend_from_slice(&body);
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, hmac_key), &t);
        t.extend_from_slice(tag.as_ref());
        t
    }

    const SESSION: &[u8] = &[
        0x30, 0x81, 0x90, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
    ];

    #[test]
    fn all_zero_80_byte_key() {
        let t = ticket([0; 16], &[0; 32], &[0; 32], SESSION);
        let w = check(&t).unwrap();
        assert_eq!(w.pattern, "all zero");
        assert_eq!(w.hmac_len, 32);
        assert_eq!(w.aes_bits, Some(256));
        assert_eq!(w.session_len, Some(SESSION.len()));
    }

    #[test]
    fn counting_48_byte_apache_key() {
        let file: Vec<u8> = (0..48u8).collect();
        let t = ticket(
            file[..16].try_into().unwrap(),
            &file[16..32],
            &file[32..48],
            SESSION,
        );
        let w = check(&t).unwrap();
        assert_eq!(w.pattern, "counting 0, 1, 2, ...");
        assert_eq!(w.layout, LAYOUTS[3].name);
        assert_eq!(w.aes_bits, Some(128));
    }

    #[test]
    fn random_key_is_not_weak() {
        let t = ticket([9; 16], &[0x13; 7].repeat(4)[..], &[0x37; 32], SESSION);
        assert_eq!(check(&t), None);
        assert_eq!(check(b"short"), None);
        assert_eq!(check(&[0; 95]), None);
    }

    #[test]
    fn weak_mac_key_with_strong_aes_key_is_still_found() {
        let t = ticket([1; 16], &[0; 16], &[0x42, 0x17].repeat(8), SESSION);
        let w = check(&t).unwrap();
        // HMAC pads its key with zeros, so 16 and 32 zero bytes are the same key.
        assert_eq!(w.pattern, "all zero");
        assert_eq!(w.session_len, None);
    }
}
