//! Weak ticket keys, found from one ticket alone.
//!
//! Every server family below authenticates its tickets with HMAC-SHA256 over everything before
//! the 32-byte MAC at the end of the ticket, so one MAC check per guessed HMAC key covers all of
//! them. They differ in where the keys sit in the operator's key material and in how the body is
//! encrypted:
//!
//! | Layout | Ticket | Key material | Families |
//! |---|---|---|---|
//! | 80-byte, HMAC first | name, IV, AES-256-CBC, MAC | name 16, HMAC 32, AES 32 | nginx, lighttpd, openssl |
//! | 80-byte, AES first | name, IV, AES-256-CBC, MAC | name 16, AES 32, HMAC 32 | haproxy, nghttpx |
//! | 48-byte, AES first | name, IV, AES-128-CBC, MAC | name 16, AES 16, HMAC 16 | nginx, haproxy, nghttpx |
//! | 48-byte, HMAC first | name, IV, AES-128-CBC, MAC | name 16, HMAC 16, AES 16 | apache |
//! | h2o ticket-file | name, IV, AES-CBC, MAC | `key:` = AES 32 (or 16), HMAC 64 | h2o |
//! | Go <= 1.20 | name, IV, AES-128-CTR, MAC | 32 bytes, SHA-512 -> name, AES, HMAC | go, caddy |
//! | Go >= 1.21 | IV, AES-128-CTR, MAC (no name) | the same 32 bytes | go, caddy |
//!
//! Sources: nginx src/event/ngx_event_openssl.c `ngx_ssl_session_ticket_keys` (48 = name, AES,
//! HMAC; 80 = name, HMAC, AES); HAProxy `struct tls_sess_key_128/256` (name, aes_key,
//! hmac_key); Apache mod_ssl `ssl_init_ticket_key` (name, hmac, aes, 48 bytes); lighttpd 1.4.69
//! `mod_openssl_session_ticket_key_file` (12-byte header, then these 80 bytes copied onto
//! name, HMAC, AES); nghttpx `read_tls_ticket_key_file` (name, enc key, HMAC key; the HMAC key is
//! 16 bytes with aes-128-cbc "as a legacy of using same file format with nginx and apache");
//! OpenSSL >= 1.1 `SSL_CTX_set_tlsext_ticket_keys` (`ssl3_ctx_ctrl`: name, `tick_hmac_key[32]`,
//! `tick_aes_key[32]`); h2o `src/ssl.c` `parse_ticket_entry` (the hex `key` is the cipher key
//! followed by an HMAC key of the hash's block size, 64 bytes for SHA-256, the name a separate
//! field); Go `crypto/tls` `ticketKeyFromBytes` and `encryptTicket` (1.19: common.go, ticket.go;
//! 1.23: the same derivation, the name no longer written). All OpenSSL-based servers let OpenSSL
//! write the ticket, so their layouts differ only in the key material.
//!
//! If the key material was left all zero, filled with one byte, counted, or typed in ASCII, the
//! MAC verifies under a guessed HMAC key and the body decrypts under the guessed AES key into a
//! session: anyone holding a recording can then decrypt every session the key covered.
//!
//! HMAC pads keys shorter than its 64-byte block with zeros (RFC 2104 §2), so one MAC key can
//! stand for several layouts (16, 32 or 64 zero bytes are the same key). [`check`] returns every
//! layout the key fits, with the families that use it, so the ambiguity stays visible.

use aes::cipher::{
    consts::U16, generic_array::GenericArray, BlockDecrypt, BlockEncrypt, BlockSizeUser, KeyInit,
};
use ring::hmac;
use sha2::{Digest as _, Sha512};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::OnceLock;
use zeroize::{Zeroize as _, Zeroizing};

const NAME: usize = 16;
const IV: usize = 16;
const MAC: usize = 32;
const BLOCK: usize = 16;
/// HMAC-SHA256 zero-pads shorter keys to its block size (RFC 2104 §2): keys are compared in
/// that padded form.
const HMAC_BLOCK: usize = 64;
/// The longest key material a pattern covers (h2o's 32-byte AES key and 64-byte HMAC key).
const MAX_MATERIAL: usize = 96;
/// The Go key `SetSessionTicketKeys` takes (crypto/tls common.go, `ticketKeyFromBytes`).
const GO_KEY: usize = 32;

/// Tickets longer than this are not checked. TLS caps a ticket at 2^16 - 1 bytes (RFC 5077
/// §3.3, RFC 8446 §4.6.1), but one MAC per guess over 64 KiB is too slow for a scan, and a
/// ticket issued to our probe (no client certificate) is a few hundred bytes.
pub const MAX_TICKET: usize = 16 * 1024;

/// A guessed key whose MAC verifies a ticket, and every layout it fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeakKey {
    /// How the key was guessed, in words ("all zero", "every byte 0x41", ...).
    pub pattern: String,
    /// Every layout the guessed MAC key fits, never empty: those that also decrypted the ticket
    /// first, then those that only verified the MAC.
    pub matches: Vec<Match>,
}

/// One layout of key material under which the guessed key opens the ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// Where the keys sit and how the ticket is built, in words.
    pub layout: &'static str,
    /// Server families that use this layout: nginx, apache, haproxy, go, caddy, lighttpd, h2o,
    /// nghttpx, openssl.
    pub families: &'static [&'static str],
    /// The layout's HMAC key length in bytes.
    pub hmac_len: usize,
    /// The AES key size in bits, when the body also decrypted.
    pub aes_bits: Option<usize>,
    /// The length of the decrypted session state, when the body decrypted to a state of that
    /// layout's shape (an OpenSSL DER `SSL_SESSION`, or a Go session state).
    pub session_len: Option<usize>,
}

impl WeakKey {
    /// Whether some layout also decrypted the ticket to a session.
    pub fn decrypts(&self) -> bool {
        self.matches.iter().any(|m| m.session_len.is_some())
    }

    /// Every family named by a match, best match first, each once.
    pub fn families(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for f in self.matches.iter().flat_map(|m| m.families) {
            if !out.contains(f) {
                out.push(f);
            }
        }
        out
    }
}

/// Where a server keeps the keys in its key material, for tickets that OpenSSL builds:
/// `name (16) | IV (16) | AES-CBC(DER session) | HMAC-SHA256 (32)`.
#[derive(Debug)]
struct FileLayout {
    name: &'static str,
    families: &'static [&'static str],
    /// The length of the key material (the key file, or h2o's `key` field).
    len: usize,
    hmac: Range<usize>,
    aes: Range<usize>,
}

const FILE_LAYOUTS: [FileLayout; 6] = [
    FileLayout {
        name: "80-byte key file: name, HMAC-SHA256 key (32), AES-256 key",
        // lighttpd's stek-file is a 12-byte header followed by exactly these 80 bytes.
        families: &["nginx", "lighttpd", "openssl"],
        len: 80,
        hmac: 16..48,
        aes: 48..80,
    },
    FileLayout {
        name: "80-byte key file: name, AES-256 key, HMAC-SHA256 key (32)",
        families: &["haproxy", "nghttpx"],
        len: 80,
        hmac: 48..80,
        aes: 16..48,
    },
    FileLayout {
        name: "48-byte key file: name, AES-128 key, HMAC-SHA256 key (16)",
        families: &["nginx", "haproxy", "nghttpx"],
        len: 48,
        hmac: 32..48,
        aes: 16..32,
    },
    FileLayout {
        name: "48-byte key file: name, HMAC-SHA256 key (16), AES-128 key",
        families: &["apache"],
        len: 48,
        hmac: 16..32,
        aes: 32..48,
    },
    FileLayout {
        name: "h2o ticket-file key (aes-256-cbc, sha256): AES-256 key, HMAC-SHA256 key (64)",
        families: &["h2o"],
        len: 96,
        hmac: 32..96,
        aes: 0..32,
    },
    FileLayout {
        name: "h2o ticket-file key (aes-128-cbc, sha256): AES-128 key, HMAC-SHA256 key (64)",
        families: &["h2o"],
        len: 80,
        hmac: 16..80,
        aes: 0..16,
    },
];

const GO_NAMED: &str = "Go crypto/tls <= 1.20: name, IV, AES-128-CTR, HMAC-SHA256 (16), \
                        keys from SHA-512 of the 32-byte key";
const GO_NAMELESS: &str = "Go crypto/tls >= 1.21: IV, AES-128-CTR, HMAC-SHA256 (16), no key \
                           name, keys from SHA-512 of the 32-byte key";
/// Caddy is Go crypto/tls: its tickets are Go's.
const GO_FAMILIES: &[&str] = &["go", "caddy"];
/// Go's HMAC key length (crypto/tls common.go, `ticketKey.hmacKey [16]byte`, both versions).
const GO_HMAC: usize = 16;

/// Byte patterns a careless operator leaves in key material, as (description, bytes), not
/// counting the one made of the ticket's own name.
fn patterns() -> Vec<(String, Zeroizing<Vec<u8>>)> {
    let mut out = Vec::with_capacity(300);
    let fill = |b: u8| Zeroizing::new(vec![b; MAX_MATERIAL]);
    out.push(("all zero".to_owned(), fill(0)));
    out.push(("all 0xff".to_owned(), fill(0xff)));
    for b in 1u8..=0xfe {
        out.push((format!("every byte {b:#04x}"), fill(b)));
    }
    let counting =
        |from: usize| Zeroizing::new((from..from + MAX_MATERIAL).map(|i| i as u8).collect());
    out.push(("counting 0, 1, 2, ...".to_owned(), counting(0)));
    out.push(("counting 1, 2, 3, ...".to_owned(), counting(1)));
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
        let repeated = text.bytes().cycle().take(MAX_MATERIAL).collect();
        out.push((format!("ASCII {text:?} repeated"), Zeroizing::new(repeated)));
        // What `copy(key[:], "secret")` into a Go `[32]byte` leaves.
        let mut padded = Zeroizing::new(vec![0u8; MAX_MATERIAL]);
        padded[..text.len()].copy_from_slice(text.as_bytes());
        out.push((format!("ASCII {text:?} then zeros"), padded));
    }
    out
}

/// Where a guessed MAC key came from, with the AES key that goes with it.
enum Origin {
    /// A layout of [`FILE_LAYOUTS`], with the AES key beside the HMAC key in the same material.
    File {
        layout: &'static FileLayout,
        aes: Zeroizing<Vec<u8>>,
    },
    /// A Go key expanded with SHA-512 into the key name and the AES key.
    Go {
        name: [u8; NAME],
        aes: Zeroizing<[u8; 16]>,
    },
}

/// One distinct HMAC key (zero-padded to the block) and every place it was guessed from.
struct MacGuess {
    pattern: String,
    key: hmac::Key,
    origins: Vec<Origin>,
}

/// Guesses from patterns: each laid over a whole layout's key material or over each key alone,
/// and each taken as a Go key. One entry per distinct HMAC key, in pattern order.
#[derive(Default)]
struct Guesses {
    mac: Vec<MacGuess>,
    /// Every distinct AES key of the file layouts, for a MAC key guessed apart from its AES key.
    aes: Vec<Zeroizing<Vec<u8>>>,
}

impl Guesses {
    fn of(patterns: &[(String, Zeroizing<Vec<u8>>)], go: bool) -> Guesses {
        let mut out = Guesses::default();
        let mut index: HashMap<[u8; HMAC_BLOCK], usize> = HashMap::new();
        let mut add = |out: &mut Guesses, pattern: &str, hmac_key: &[u8], origin: Origin| {
            let mut padded = [0u8; HMAC_BLOCK];
            padded[..hmac_key.len()].copy_from_slice(hmac_key);
            let i = *index.entry(padded).or_insert_with(|| {
                out.mac.push(MacGuess {
                    pattern: pattern.to_owned(),
                    key: hmac::Key::new(hmac::HMAC_SHA256, &padded),
                    origins: Vec::new(),
                });
                out.mac.len() - 1
            });
            padded.zeroize();
            let origins = &mut out.mac[i].origins;
            let known = origins.iter().any(|o| match (o, &origin) {
                (Origin::File { layout: a, aes: x }, Origin::File { layout: b, aes: y }) => {
                    std::ptr::eq(*a, *b) && x == y
                }
                (Origin::Go { name: a, .. }, Origin::Go { name: b, .. }) => a == b,
                _ => false,
            });
            if !known {
                origins.push(origin);
            }
        };
        for (pattern, bytes) in patterns {
            for l in &FILE_LAYOUTS {
                let whole = &bytes[..l.len];
                for (h, a) in [
                    (&whole[l.hmac.clone()], &whole[l.aes.clone()]),
                    (&bytes[..l.hmac.len()], &bytes[..l.aes.len()]),
                ] {
                    if !out.aes.iter().any(|k| k.as_slice() == a) {
                        out.aes.push(Zeroizing::new(a.to_vec()));
                    }
                    let aes = Zeroizing::new(a.to_vec());
                    add(&mut out, pattern, h, Origin::File { layout: l, aes });
                }
            }
            if go {
                // crypto/tls common.go `ticketKeyFromBytes` (1.19 and 1.23): name = h[0:16],
                // AES-128 key = h[16:32], HMAC-SHA256 key = h[32:48] of SHA-512(key).
                let h = Zeroizing::new(<[u8; 64]>::from(Sha512::digest(&bytes[..GO_KEY])));
                let mut name = [0u8; NAME];
                name.copy_from_slice(&h[..NAME]);
                let mut aes = Zeroizing::new([0u8; 16]);
                aes.copy_from_slice(&h[NAME..NAME + 16]);
                add(
                    &mut out,
                    pattern,
                    &h[32..32 + GO_HMAC],
                    Origin::Go { name, aes },
                );
            }
        }
        for (mut k, _) in index.drain() {
            k.zeroize();
        }
        out
    }
}

/// The guesses that do not depend on the ticket, made once.
fn common() -> &'static Guesses {
    static COMMON: OnceLock<Guesses> = OnceLock::new();
    COMMON.get_or_init(|| Guesses::of(&patterns(), true))
}

/// Whether the ticket has the shape OpenSSL gives it: name, IV, at least one CBC block, MAC.
fn cbc_shape(len: usize) -> bool {
    len >= NAME + IV + BLOCK + MAC && (len - NAME - IV - MAC) % BLOCK == 0
}

/// Try guessable keys of every known layout on a ticket. `None` when no guess verifies its MAC,
/// or it is shorter than an IV and a MAC, or longer than [`MAX_TICKET`].
pub fn check(ticket: &[u8]) -> Option<WeakKey> {
    if ticket.len() < IV + MAC + 1 || ticket.len() > MAX_TICKET {
        return None;
    }
    let cbc = cbc_shape(ticket.len());
    let (signed, mac) = ticket.split_at(ticket.len() - MAC);
    // The ticket's own name repeated over the key material: only where a name leads the ticket.
    let own = if cbc {
        let name: Zeroizing<Vec<u8>> = Zeroizing::new(
            ticket[..NAME]
                .iter()
                .copied()
                .cycle()
                .take(MAX_MATERIAL)
                .collect(),
        );
        Guesses::of(&[("the key name repeated".to_owned(), name)], false)
    } else {
        Guesses::default()
    };
    let common = common();
    let fits = |o: &Origin| match o {
        Origin::File { .. } => cbc,
        Origin::Go { .. } => true,
    };
    let hit = common
        .mac
        .iter()
        .chain(&own.mac)
        .filter(|g| g.origins.iter().any(fits))
        .find(|g| hmac::verify(&g.key, signed, mac).is_ok())?;
    let mut matches = Vec::new();
    if cbc {
        for l in &FILE_LAYOUTS {
            let partners: Vec<&[u8]> = hit
                .origins
                .iter()
                .filter_map(|o| match o {
                    Origin::File { layout, aes } if std::ptr::eq(*layout, l) => {
                        Some(aes.as_slice())
                    }
                    _ => None,
                })
                .collect();
            if partners.is_empty() {
                continue;
            }
            // The AES key is most likely the MAC key's partner, else any other guess of the size.
            let session = partners
                .into_iter()
                .chain(common.aes.iter().chain(&own.aes).map(|k| k.as_slice()))
                .filter(|k| k.len() == l.aes.len())
                .find_map(|k| decrypt_cbc(ticket, k));
            matches.push(Match {
                layout: l.name,
                families: l.families,
                hmac_len: l.hmac.len(),
                aes_bits: session.map(|_| l.aes.len() * 8),
                session_len: session,
            });
        }
    }
    for o in &hit.origins {
        if let Origin::Go { name, aes } = o {
            matches.push(go_match(ticket, name, aes));
        }
    }
    // A layout that also decrypts beats one that only verifies the MAC; the sort is stable.
    matches.sort_by_key(|m| m.session_len.is_none());
    (!matches.is_empty()).then(|| WeakKey {
        pattern: hit.pattern.clone(),
        matches,
    })
}

/// A Go ticket whose MAC verified under a guessed Go key: a ticket that starts with the key's
/// name is Go <= 1.20's (a name-less ticket starts with a random IV, equal to the name with
/// probability 2^-128); decrypt and parse it as that version's state.
fn go_match(ticket: &[u8], name: &[u8; NAME], aes: &[u8; 16]) -> Match {
    // `check` lets only tickets longer than an IV and a MAC through.
    let body = &ticket[..ticket.len() - MAC];
    let named = ticket.starts_with(name);
    let (from, parse): (usize, fn(&[u8]) -> bool) = if named {
        (NAME, go_legacy_state)
    } else {
        (0, go_state)
    };
    let session = body
        .get(from..)
        .and_then(|b| b.split_first_chunk::<IV>())
        .map(|(iv, state)| ctr(aes, iv, state))
        .filter(|p| parse(p))
        .map(|p| p.len());
    Match {
        layout: if named { GO_NAMED } else { GO_NAMELESS },
        families: GO_FAMILIES,
        hmac_len: GO_HMAC,
        aes_bits: session.map(|_| 128),
        session_len: session,
    }
}

/// AES-128-CTR as Go's `cipher.NewCTR` runs it: the IV is the first counter block, incremented
/// as one 128-bit big-endian number (crypto/cipher/ctr.go, `refill`).
fn ctr(key: &[u8; 16], iv: &[u8; IV], data: &[u8]) -> Zeroizing<Vec<u8>> {
    let cipher = aes::Aes128::new(GenericArray::from_slice(key));
    let mut counter = u128::from_be_bytes(*iv);
    let mut out = Zeroizing::new(data.to_vec());
    let mut stream = Zeroizing::new([0u8; BLOCK]);
    for chunk in out.chunks_mut(BLOCK) {
        *stream = counter.to_be_bytes();
        cipher.encrypt_block(GenericArray::from_mut_slice(&mut stream[..]));
        for (b, k) in chunk.iter_mut().zip(stream.iter()) {
            *b ^= k;
        }
        counter = counter.wrapping_add(1);
    }
    out
}

/// Big-endian reads over untrusted bytes; every read that runs past the end is `None`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn uint(&mut self, n: usize) -> Option<usize> {
        Some(
            self.take(n)?
                .iter()
                .fold(0, |v, &b| v << 8 | usize::from(b)),
        )
    }

    /// A vector with an `n`-byte length prefix (RFC 8446 §3.4).
    fn vec(&mut self, n: usize) -> Option<Reader<'a>> {
        let len = self.uint(n)?;
        self.take(len).map(Reader)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Read items until empty; `None` when one fails.
    fn each(mut self, mut item: impl FnMut(&mut Reader<'a>) -> Option<()>) -> Option<()> {
        while !self.is_empty() {
            item(&mut self)?;
        }
        Some(())
    }
}

/// Go's `marshalCertificate` (crypto/tls handshake_messages.go): a 24-bit list of entries, each
/// a 24-bit certificate and 16-bit extensions of (type, 16-bit data).
fn go_certificate(r: &mut Reader) -> Option<()> {
    r.vec(3)?.each(|e| {
        e.vec(3)?;
        e.vec(2)?.each(|x| {
            x.take(2)?;
            x.vec(2).map(drop)
        })
    })
}

/// A non-empty secret with a `n`-byte length prefix.
fn secret(r: &mut Reader, n: usize) -> Option<()> {
    (!r.vec(n)?.is_empty()).then_some(())
}

/// A server's session state as Go 1.19/1.20 marshals it (crypto/tls ticket.go): TLS 1.3
/// `sessionStateTLS13` (version 0x0304, revision 0, suite, created_at, secret<1..2^8-1>,
/// certificate), else TLS 1.0-1.2 `sessionState` (version, suite, created_at,
/// master_secret<1..2^16-1>, certificates<0..2^24-1>). Read to the last byte.
fn go_legacy_state(p: &[u8]) -> bool {
    let mut r = Reader(p);
    let parsed = (|| match r.uint(2)? {
        0x0304 => {
            (r.uint(1)? == 0).then_some(())?;
            r.take(2 + 8)?;
            secret(&mut r, 1)?;
            go_certificate(&mut r)
        }
        0x0300..=0x0303 => {
            r.take(2 + 8)?;
            secret(&mut r, 2)?;
            r.vec(3)?.each(|c| c.vec(3).map(drop))
        }
        _ => None,
    })();
    parsed.is_some() && r.is_empty()
}

/// A server's `SessionState` as Go >= 1.21 marshals it (crypto/tls ticket.go of 1.23,
/// `SessionState.Bytes`): version, type 1 (server: a ticket is always the server's), suite,
/// created_at, secret<1..2^8-1>, extra<0..2^24-1>, ext_master_secret and early_data (0 or 1),
/// certificate, verified_chains, then the ALPN protocol only with early data. Read to the end.
fn go_state(p: &[u8]) -> bool {
    let mut r = Reader(p);
    let parsed = (|| {
        (0x0301..=0x0304).contains(&r.uint(2)?).then_some(())?;
        (r.uint(1)? == 1).then_some(())?;
        r.take(2 + 8)?;
        secret(&mut r, 1)?;
        r.vec(3)?.each(|e| e.vec(3).map(drop))?;
        let flag = |r: &mut Reader| r.uint(1).filter(|&b| b <= 1);
        flag(&mut r)?;
        let early = flag(&mut r)? == 1;
        go_certificate(&mut r)?;
        r.vec(3)?
            .each(|chain| chain.vec(3)?.each(|c| c.vec(3).map(drop)))?;
        if early {
            r.vec(1)?;
        }
        Some(())
    })();
    parsed.is_some() && r.is_empty()
}

/// Decrypt an OpenSSL-built ticket's body with AES-CBC under `key`: the session's length if the
/// padding is right and the plaintext is exactly one DER SEQUENCE (the `i2d_SSL_SESSION` that
/// OpenSSL encrypts). The last block is tried first, so a wrong key costs two block decryptions.
fn decrypt_cbc(ticket: &[u8], key: &[u8]) -> Option<usize> {
    let body = ticket.get(NAME..ticket.len().checked_sub(MAC)?)?;
    if body.len() < IV + BLOCK || body.len() % BLOCK != 0 {
        return None;
    }
    let last = body.len() - BLOCK;
    padding(&cbc_decrypt(key, &body[last - BLOCK..last], &body[last..])?)?;
    let plain = cbc_decrypt(key, &body[..IV], &body[IV..])?;
    let pad = padding(&plain)?;
    let session = &plain[..plain.len() - pad];
    der_sequence_len(session).filter(|&n| n == session.len())
}

/// AES-CBC decryption of whole blocks under an AES-128 or AES-256 key.
fn cbc_decrypt(key: &[u8], iv: &[u8], body: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    match key.len() {
        16 => Some(cbc_with(&aes::Aes128::new_from_slice(key).ok()?, iv, body)),
        32 => Some(cbc_with(&aes::Aes256::new_from_slice(key).ok()?, iv, body)),
        _ => None,
    }
}

fn cbc_with<C>(cipher: &C, iv: &[u8], body: &[u8]) -> Zeroizing<Vec<u8>>
where
    C: BlockDecrypt + BlockSizeUser<BlockSize = U16>,
{
    let mut plain = Zeroizing::new(body.to_vec());
    let mut prev: &[u8] = iv;
    for (block, cipher_block) in plain.chunks_exact_mut(BLOCK).zip(body.chunks_exact(BLOCK)) {
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
        for (p, c) in block.iter_mut().zip(prev) {
            *p ^= c;
        }
        prev = cipher_block;
    }
    plain
}

/// The PKCS#7 padding length at the end of `plain`, if well formed.
fn padding(plain: &[u8]) -> Option<usize> {
    let pad = usize::from(*plain.last()?);
    let ok = (1..=BLOCK).contains(&pad)
        && pad <= plain.len()
        && plain[plain.len() - pad..]
            .iter()
            .all(|&b| usize::from(b) == pad);
    ok.then_some(pad)
}

/// The total length (header and content) of a DER SEQUENCE at the start of `d`.
fn der_sequence_len(d: &[u8]) -> Option<usize> {
    let mut r = Reader(d);
    (r.uint(1)? == 0x30).then_some(())?;
    let first = r.uint(1)?;
    if first < 0x80 {
        return Some(2 + first);
    }
    let n = first & 0x7f;
    // DER: the long form only from 128, in the fewest bytes; 3 bytes is far beyond MAX_TICKET.
    if !(1..=3).contains(&n) {
        return None;
    }
    let len = r.uint(n)?;
    (len >= 0x80 && len >> (8 * (n - 1)) != 0).then_some(2 + n + len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::{SecureRandom as _, SystemRandom};

    /// A DER SEQUENCE of `len` content bytes, the shape of an OpenSSL `SSL_SESSION`.
    fn der_session(len: usize) -> Vec<u8> {
        let mut s = vec![0x30];
        match len {
            0..=0x7f => s.push(len as u8),
            0x80..=0xff => s.extend([0x81, len as u8]),
            _ => s.extend([0x82, (len >> 8) as u8, len as u8]),
        }
        s.extend((0..len).map(|i| (i * 7) as u8));
        s
    }

    /// Make a ticket the way OpenSSL does for every OpenSSL-based server:
    /// name | IV | AES-CBC(session, PKCS#7) | HMAC-SHA256(name | IV | ciphertext).
    fn openssl_ticket(name: &[u8], hmac_key: &[u8], aes_key: &[u8], session: &[u8]) -> Vec<u8> {
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

    /// Make a ticket the way Go's `encryptTicket` does (crypto/tls ticket.go): keys from
    /// SHA-512 of the 32-byte key; [name |] IV | AES-128-CTR(state) | HMAC-SHA256 of the rest.
    fn go_ticket(key: &[u8; 32], named: bool, state: &[u8]) -> Vec<u8> {
        let h = Sha512::digest(key);
        let aes: [u8; 16] = h[16..32].try_into().unwrap();
        let iv = [0xa5; 16];
        let mut t = if named { h[..16].to_vec() } else { Vec::new() };
        t.extend_from_slice(&iv);
        t.extend_from_slice(&ctr(&aes, &iv, state));
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &h[32..48]), &t);
        t.extend_from_slice(tag.as_ref());
        t
    }

    /// Go 1.19's TLS 1.2 `sessionState.marshal`: vers, suite, created_at, master_secret<2>,
    /// certificates<3> (here one certificate<3>).
    fn go119_tls12_state() -> Vec<u8> {
        let mut s = vec![0x03, 0x03, 0xc0, 0x2b];
        s.extend(1_796_000_000u64.to_be_bytes());
        s.extend([0, 48]);
        s.extend([0x11; 48]);
        s.extend([0, 0, 8, 0, 0, 5, 1, 2, 3, 4, 5]);
        s
    }

    /// Go 1.23's `SessionState.Bytes` for a server's TLS 1.3 session: version, type 1, suite,
    /// created_at, secret<1>, extra<3>, ems, early_data, certificate<3> with one entry, chains<3>.
    fn go123_tls13_state() -> Vec<u8> {
        let mut s = vec![0x03, 0x04, 1, 0x13, 0x01];
        s.extend(1_796_000_000u64.to_be_bytes());
        s.push(32);
        s.extend([0x22; 32]);
        s.extend([0, 0, 4, 0, 0, 1, 9]); // one extra entry
        s.extend([1, 0]);
        s.extend([0, 0, 7, 0, 0, 2, 0xde, 0xad, 0, 0]);
        s.extend([0, 0, 0]);
        s
    }

    fn counting(n: usize) -> Vec<u8> {
        (0..n).map(|i| i as u8).collect()
    }

    fn layout(m: &Match) -> &'static str {
        m.layout
    }

    #[test]
    fn all_zero_80_byte_key_names_every_layout_it_fits() {
        let s = der_session(150);
        let t = openssl_ticket(&[0; 16], &[0; 32], &[0; 32], &s);
        let w = check(&t).unwrap();
        assert_eq!(w.pattern, "all zero");
        assert!(w.decrypts());
        // Zero HMAC keys of 16, 32 and 64 bytes are one key; zero AES-256 keys open the body
        // under every 80-byte and the h2o aes-256 layout, not under AES-128 ones.
        let decrypting: Vec<_> = w
            .matches
            .iter()
            .filter(|m| m.session_len.is_some())
            .map(layout)
            .collect();
        assert_eq!(
            decrypting,
            [
                FILE_LAYOUTS[0].name,
                FILE_LAYOUTS[1].name,
                FILE_LAYOUTS[4].name
            ]
        );
        assert_eq!(w.matches.len(), FILE_LAYOUTS.len());
        assert!(w.matches[..3]
            .iter()
            .all(|m| m.session_len == Some(s.len()) && m.aes_bits == Some(256)));
        assert!(w.matches[3..]
            .iter()
            .all(|m| m.session_len.is_none() && m.aes_bits.is_none()));
        for f in [
            "nginx", "lighttpd", "openssl", "haproxy", "nghttpx", "h2o", "apache",
        ] {
            assert!(w.families().contains(&f), "{f}");
        }
        assert!(!w.families().contains(&"go"));
    }

    #[test]
    fn counting_keys_find_each_file_layout_alone() {
        let file = counting(96);
        let s = der_session(100);
        // (name, HMAC key, AES key, index in FILE_LAYOUTS, families)
        type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], usize, &'a [&'a str]);
        let cases: [Case; 6] = [
            // nginx / lighttpd / OpenSSL 80: name, HMAC 32, AES 32.
            (
                &file[..16],
                &file[16..48],
                &file[48..80],
                0,
                &["nginx", "lighttpd", "openssl"],
            ),
            // HAProxy / nghttpx 80: name, AES 32, HMAC 32.
            (
                &file[..16],
                &file[48..80],
                &file[16..48],
                1,
                &["haproxy", "nghttpx"],
            ),
            // nginx / HAProxy / nghttpx 48: name, AES 16, HMAC 16.
            (
                &file[..16],
                &file[32..48],
                &file[16..32],
                2,
                &["nginx", "haproxy", "nghttpx"],
            ),
            // Apache 48: name, HMAC 16, AES 16.
            (&file[..16], &file[16..32], &file[32..48], 3, &["apache"]),
            // h2o aes-256-cbc: random name, `key:` = AES 32 then HMAC 64.
            (&[0x77; 16], &file[32..96], &file[..32], 4, &["h2o"]),
            // h2o aes-128-cbc: `key:` = AES 16 then HMAC 64.
            (&[0x77; 16], &file[16..80], &file[..16], 5, &["h2o"]),
        ];
        for (name, h, a, i, families) in cases {
            let w = check(&openssl_ticket(name, h, a, &s)).unwrap_or_else(|| panic!("layout {i}"));
            assert_eq!(w.pattern, "counting 0, 1, 2, ...");
            assert_eq!(w.matches.len(), 1, "{:?}", w.matches);
            let m = &w.matches[0];
            assert_eq!(m.layout, FILE_LAYOUTS[i].name);
            assert_eq!(m.families, families);
            assert_eq!(m.hmac_len, h.len());
            assert_eq!(m.aes_bits, Some(a.len() * 8));
            assert_eq!(m.session_len, Some(s.len()));
        }
    }

    #[test]
    fn lighttpd_stek_file_opens_under_the_80_byte_layout() {
        // lighttpd 1.4.69 mod_openssl.c: i32 version 0, i32 activation, i32 expiry, then name,
        // HMAC 32, AES 32 copied in one memcpy; tickets AES-256-CBC with HMAC-SHA256.
        let mut stek = vec![0u8; 12];
        stek[4..8].copy_from_slice(&1_796_000_000u32.to_ne_bytes());
        stek[8..12].copy_from_slice(&1_796_086_400u32.to_ne_bytes());
        stek.extend(b"abcdefghijklmnopqrstuvwxyz".iter().cycle().take(80));
        let s = der_session(90);
        let t = openssl_ticket(&stek[12..28], &stek[28..60], &stek[60..92], &s);
        let w = check(&t).unwrap();
        assert_eq!(w.pattern, "ASCII \"abcdefghijklmnopqrstuvwxyz\" repeated");
        assert_eq!(w.matches.len(), 1);
        assert_eq!(w.matches[0].layout, FILE_LAYOUTS[0].name);
        assert!(w.matches[0].families.contains(&"lighttpd"));
        assert_eq!(w.matches[0].session_len, Some(s.len()));
    }

    #[test]
    fn nghttpx_80_byte_key_file_opens_under_its_layout() {
        // nghttpx read_tls_ticket_key_file: name, encryption key, HMAC key (aes-256-cbc: 32, 32).
        // Not a text of 16 (or 8) letters: repeated, it would put equal keys in both 80-byte
        // layouts, and the ticket would rightly fit both.
        let file: Vec<u8> = b"ticketkey".iter().cycle().take(80).copied().collect();
        let s = der_session(300);
        let t = openssl_ticket(&file[..16], &file[48..80], &file[16..48], &s);
        let w = check(&t).unwrap();
        assert_eq!(w.pattern, "ASCII \"ticketkey\" repeated");
        assert_eq!(w.matches.len(), 1);
        assert_eq!(w.matches[0].layout, FILE_LAYOUTS[1].name);
        assert!(w.families().contains(&"nghttpx"));
        assert_eq!(w.matches[0].session_len, Some(s.len()));
    }

    #[test]
    fn the_key_name_repeated_is_guessed() {
        let name: Vec<u8> = (0..16).map(|i| 0x90 ^ (i * 13) as u8).collect();
        let file: Vec<u8> = name.iter().cycle().take(80).copied().collect();
        let t = openssl_ticket(&name, &file[16..48], &file[48..80], &der_session(60));
        let w = check(&t).unwrap();
        assert_eq!(w.pattern, "the key name repeated");
        assert_eq!(w.matches[0].layout, FILE_LAYOUTS[0].name);
        assert!(w.decrypts());
    }

    #[test]
    fn apache_zero_mac_key_is_ambiguous_and_says_so() {
        // mod_ssl on this build keys the HMAC with 16 zero bytes (see the notes): the MAC
        // verifies under every layout whose HMAC key is zero, and no AES key is guessable.
        let t = openssl_ticket(
            &[1; 16],
            &[0; 16],
            &[0x42, 0x17].repeat(8),
            &der_session(120),
        );
        let w = check(&t).unwrap();
        assert_eq!(w.pattern, "all zero");
        assert!(!w.decrypts());
        assert_eq!(w.matches.len(), FILE_LAYOUTS.len());
        assert!(w.matches.iter().any(|m| m.families.contains(&"apache")));
        assert!(w.families().contains(&"nginx") && w.families().contains(&"h2o"));
    }

    #[test]
    fn weak_mac_key_with_a_guessable_aes_key_elsewhere_still_decrypts() {
        // HMAC all zero, AES key counting: the AES key is found among the other guesses.
        let aes = counting(32);
        let t = openssl_ticket(&[3; 16], &[0; 32], &aes, &der_session(70));
        let w = check(&t).unwrap();
        assert!(w.decrypts());
        assert_eq!(w.matches[0].aes_bits, Some(256));
    }

    #[test]
    fn go_named_ticket_under_a_zero_key_decrypts_to_a_go_119_state() {
        let state = go119_tls12_state();
        let w = check(&go_ticket(&[0; 32], true, &state)).unwrap();
        assert_eq!(w.pattern, "all zero");
        assert_eq!(w.matches.len(), 1);
        let m = &w.matches[0];
        assert_eq!(m.layout, GO_NAMED);
        assert_eq!(m.families, ["go", "caddy"]);
        assert_eq!(m.hmac_len, 16);
        assert_eq!(m.aes_bits, Some(128));
        assert_eq!(m.session_len, Some(state.len()));
        assert_eq!(w.families(), ["go", "caddy"]);
    }

    #[test]
    fn go_nameless_ticket_is_found_for_go_key_patterns() {
        let state = go123_tls13_state();
        let mut words = [0u8; 32];
        words[..6].copy_from_slice(b"secret");
        let keys: [([u8; 32], &str); 4] = [
            (counting(32).try_into().unwrap(), "counting 0, 1, 2, ..."),
            ([0x41; 32], "every byte 0x41"),
            ([0xff; 32], "all 0xff"),
            (words, "ASCII \"secret\" then zeros"),
        ];
        for (key, pattern) in keys {
            let w = check(&go_ticket(&key, false, &state)).unwrap_or_else(|| panic!("{pattern}"));
            assert_eq!(w.pattern, pattern);
            assert_eq!(w.matches.len(), 1);
            assert_eq!(w.matches[0].layout, GO_NAMELESS);
            assert_eq!(w.matches[0].session_len, Some(state.len()));
        }
    }

    #[test]
    fn go_ticket_that_is_no_go_state_only_verifies_the_mac() {
        // The MAC is Go's, but the plaintext is not a session state of either version. (The
        // named ticket is 144 bytes, the shape of an OpenSSL ticket too: only Go's key fits.)
        let garbage = vec![0x99u8; 80];
        for named in [true, false] {
            let w = check(&go_ticket(&[0; 32], named, &garbage)).unwrap();
            assert_eq!(w.matches.len(), 1);
            assert_eq!(
                w.matches[0].layout,
                if named { GO_NAMED } else { GO_NAMELESS }
            );
            assert_eq!(w.matches[0].session_len, None);
            assert!(!w.decrypts());
        }
        // A Go 1.23 state in a named ticket, or a 1.19 one in a name-less ticket, is not taken.
        let w = check(&go_ticket(&[0; 32], true, &go123_tls13_state())).unwrap();
        assert!(!w.decrypts());
        let w = check(&go_ticket(&[0; 32], false, &go119_tls12_state())).unwrap();
        assert!(!w.decrypts());
    }

    #[test]
    fn random_keys_are_not_weak() {
        let rng = SystemRandom::new();
        let mut k = [0u8; 32 + 32 + 16];
        rng.fill(&mut k).unwrap();
        let s = der_session(150);
        assert_eq!(
            check(&openssl_ticket(&k[64..], &k[..32], &k[32..64], &s)),
            None
        );
        assert_eq!(
            check(&openssl_ticket(&k[64..], &k[..16], &k[16..32], &s)),
            None
        );
        let go: [u8; 32] = k[..32].try_into().unwrap();
        assert_eq!(check(&go_ticket(&go, true, &go119_tls12_state())), None);
        assert_eq!(check(&go_ticket(&go, false, &go123_tls13_state())), None);
    }

    /// Tickets from real servers on loopback, all with `SetSessionTicketKeys([][32]byte{{}})`:
    /// a throwaway Go program (not in this repository; `tls.Listen` on 127.0.0.1:0, echo one
    /// read) built with Debian's go1.19.8 and with go1.23.5 from bookworm-backports
    /// (GOTOOLCHAIN=local, `go 1.23` in its go.mod), one ticket each per TLS version taken with
    /// `openssl s_client -tls1_2|-tls1_3 -sess_out F -ign_eof` and read from
    /// `openssl sess_id -in F -noout -text` ("TLS session ticket:"). 1.19's start with
    /// 5046adc1..., the first 16 bytes of SHA-512 of 32 zero bytes.
    const GO119_TLS12: &str = "5046adc1dba838867b2bbbfdd0c3423ea54920fb411bb088407fc427b9420944727100346857b7c43210c30dbf2a5069f9998bce1ca47f29ae97dead26181391ddbd1e0c336b02f9463c2b867eba9c3234a1a2fddba69206b1e703223ffb0d9a9ff77d9743ddfbe009adca4472d0f68f48ec1d6bcd4a84cfe4abb958b5f69b4087";
    const GO119_TLS13: &str = "5046adc1dba838867b2bbbfdd0c3423e5bc7c22adfb6c404a72a1024312b2c9604cdd9291218ffc33cc2517a249b75ac7a46531561a0c6204b20ecb4b38937c0315ccd1c711e7216d9b3fc8c55e95df526afb2c5f51a4e3e3d14b01caae9f85b12bcb32c17aa8779989d640293feb19a5c";
    const GO123_TLS12: &str = "945a060bb3fc8b431aad3732afc3fbf6445007a2cdab955647bdb85200dcf6f0899220baf04fe924d1d560c142cd574c26270b972720432673ae35efbb5bc3fef45178541cd3550ad13d9de0e7072dbf388fbeb6d14c49702a3102820fa076c818b0929fdea349f1e99b4c7c8fbd7de2cb466eaa149a7f8bdb";
    const GO123_TLS13: &str = "bdc5a5af2a26f492204b5072b5d2523f7bfe41f60ea9066ba5ada1245100e2b18067fe792dccb2e53e634bb1459e3ceb6a3e33ac4bf500f33da53d7557db1940851590f4d65e9d1422722a1546b6542ac099d1dfcaa9f89d817e810bc657fc0b6fd1f474e4c6229626";
    /// The same programs with Go's default, random keys (run with the argument `random`):
    /// go1.19.8 TLS 1.2 and go1.23.5 TLS 1.3.
    const GO119_RANDOM: &str = "5842716ba0a0a21d9ecf62f2e7ab2c80871e0300bc940e13348a630c1af59d7bd67c674a73995b0c8587dc0e6d1d9c9b1f5a5881fcd3ef25bd3dc3a8df5a953b4ada2831097467cf751ac094b39ae051ab74e250ec811cba611531432634b1521376a0ac0b57647bf7ff02b2dd3ecad601eeca79abe961a2286e16c44dda06e4ff";
    const GO123_RANDOM: &str = "b703b231cc8d48005844cded98febd71fbe78616c7c2ed69083055937d806f883f656f3fc1ccfbf26125fc2f059f9bafa7107db37e3dd0d1cdcb79b54358fa2d0de02b20ee9080b04a5b33a782b34988be8a241cc7334a4ef756f6a00e0c4aceeb93df9a10414ec985";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn real_go_tickets_under_the_zero_key_are_found_and_decrypt() {
        for (v, layout, state_len) in [
            // 16 + 16 + state + 32; the states: 1.19 TLS 1.2 2+2+8+2+48+3, TLS 1.3
            // 2+1+2+8+1+32+3; 1.23 TLS 1.2 2+1+2+8+1+48+3+1+1+3+3, TLS 1.3 the same with 32.
            (GO119_TLS12, GO_NAMED, 65),
            (GO119_TLS13, GO_NAMED, 49),
            (GO123_TLS12, GO_NAMELESS, 73),
            (GO123_TLS13, GO_NAMELESS, 57),
        ] {
            let w = check(&hex(v)).unwrap_or_else(|| panic!("{v}"));
            assert_eq!(w.pattern, "all zero");
            assert_eq!(w.matches.len(), 1, "{:?}", w.matches);
            assert_eq!(w.matches[0].layout, layout);
            assert_eq!(w.matches[0].session_len, Some(state_len));
            assert_eq!(w.families(), ["go", "caddy"]);
        }
        assert_eq!(check(&hex(GO119_RANDOM)), None);
        assert_eq!(check(&hex(GO123_RANDOM)), None);
    }

    /// Tickets from real OpenSSL-based servers on loopback (OpenSSL 3.0 on Debian 12), taken
    /// with `openssl s_client -tls1_2|-tls1_3 -sess_out F -ign_eof` and `openssl sess_id -text`.
    /// lighttpd 1.4.69 with `ssl.stek-file` = i32 0, i32 now - 60, i32 now + 86400 (host order),
    /// then the bytes 0, 1, ..., 79: the name on the wire is 000102...0f.
    const LIGHTTPD_TLS12: &str = "000102030405060708090a0b0c0d0e0fbbc44d0f4ba366c58725bcc66cb38593f068bc5da0eb0d34153220b091bfa28307b664f6780caf5a379ccf2b1880da0c05a952a327172823183fafeb6319a81745a609fa54d73b4a51f15990432fcd5e8a0bfdda829ea489b0a521c3dfc159a47560c92020de17b88f213c4a2ce93ee2df74c3483cb9a1b994bee7f7364670d1811e26fe4a1e9686a5cfe7fa940263e62e97e33d1fdcb21dd123edd2a7ac16f5";
    const LIGHTTPD_TLS13: &str = "000102030405060708090a0b0c0d0e0f450de25798568934e8ac66c33563f0b90f1ab98ea9c896b0a4b16e4ad228a714bcbcdb0df12b29bcebdeb8d39d37df9581a850f1a595a3ee61e2e966875b0eca5df69cf0b4e3411e95153b2f2c0cb5f2f66c7156853096f081cc60ab01199250be6f16dabb6a09c80329ab6acebddb70891a29b7682962c7d3b8717506cfbdb71c9e536fba82e47e24ad9eba1fc6e792a7bb32b00d43c07d3bb4ce6b0f0fdb9e647b8e4d68828ca801d2df1970e42c0c5b527158c30b08663b94ce5707ab15b7";
    /// h2o 2.2.5 with `ssl-session-resumption: {mode: ticket, ticket-store: file}` and one
    /// entry `name: 00112233445566778899aabbccddeeff`, `cipher: aes-256-cbc`, `hash: sha256`,
    /// `key:` the bytes 0, 1, ..., 95 in hex, valid from now - 60 for an hour.
    const H2O_TLS12: &str = "00112233445566778899aabbccddeeff3399c3dae01cc86e368865ea22cb598a633aecb03ef12169f362784b100ae42c61c1ebbfb8e81da06c6392a2489feb6e3f465d541e5a92a92576440b8aa558c30bc29b32004028760a59007c7e597f999e050c3fb4e1a69b28425f7b820be24f2ea028dbd732abb657944aae7c68b4bb86ce30859bb840b49468f52f731afc39b598e50e8fb120077f0ac47a35ee0004";
    const H2O_TLS13: &str = "00112233445566778899aabbccddeeff5a8bc448cfba394e95db32b488641ab0432825ef247464318f78fe341d54b202501d043fb4a45b0e0cf946c899323efacd55ead4dea3fb3fa97812ccfe2551d3d30093a1fb40955c20872c3312bafaaa744917ca362e63fc0687990903b1fcb35cd9d92338f7db1366ebe16e24cf0b278d9e3b3ca2944b4564b572dbc4709f0510d4b85762fedd2aa0fc6dddfe6d95647faf26190b35f244544f62f5a81b585b62b0b49be635c521827c41927e4410e437b4ec9ad1524fd4ccbf9e95cc2603d6";

    #[test]
    fn real_lighttpd_and_h2o_tickets_open_under_their_layouts() {
        for (v, i, family) in [
            (LIGHTTPD_TLS12, 0, "lighttpd"),
            (LIGHTTPD_TLS13, 0, "lighttpd"),
            (H2O_TLS12, 4, "h2o"),
            (H2O_TLS13, 4, "h2o"),
        ] {
            let t = hex(v);
            let w = check(&t).unwrap_or_else(|| panic!("{v}"));
            assert_eq!(w.pattern, "counting 0, 1, 2, ...");
            assert_eq!(w.matches.len(), 1, "{:?}", w.matches);
            let m = &w.matches[0];
            assert_eq!(m.layout, FILE_LAYOUTS[i].name);
            assert!(m.families.contains(&family));
            assert_eq!(m.aes_bits, Some(256));
            // name, IV and MAC around a body of whole blocks, at most one block of padding.
            let session = m.session_len.unwrap();
            assert!(
                session < t.len() - 64 && session + 16 >= t.len() - 64,
                "{session}"
            );
        }
    }

    #[test]
    fn a_changed_byte_or_a_cut_never_verifies() {
        for v in [GO119_TLS12, GO123_TLS13] {
            let t = hex(v);
            for i in [0, 16, 40, t.len() - 33, t.len() - 1] {
                let mut bad = t.clone();
                bad[i] ^= 1;
                assert_eq!(check(&bad), None, "byte {i}");
            }
            for n in 0..t.len() {
                assert_eq!(check(&t[..n]), None, "first {n} bytes");
            }
        }
    }

    #[test]
    fn odd_short_and_huge_inputs_never_panic() {
        let s = der_session(40);
        let zero = openssl_ticket(&[0; 16], &[0; 32], &[0; 32], &s);
        for n in 0..zero.len() {
            assert_eq!(check(&zero[..n]), None);
        }
        for len in 0..=200 {
            for b in [0u8, 0xff, 0x30] {
                let _ = check(&vec![b; len]);
            }
        }
        assert_eq!(check(&vec![0u8; MAX_TICKET + 1]), None);
        // A MAC that verifies over a body of nonsense: no session, no panic.
        let mut t = vec![0u8; 16 + 16 + 16];
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[0; 32]), &t);
        t.extend_from_slice(tag.as_ref());
        let w = check(&t).unwrap();
        assert!(!w.decrypts());
        // DER lengths that lie or are not minimal are not sessions.
        assert_eq!(der_sequence_len(&[0x30, 0x81, 0x10]), None);
        assert_eq!(der_sequence_len(&[0x30, 0x84, 0, 0, 0, 1]), None);
        assert_eq!(der_sequence_len(&[0x30]), None);
        assert_eq!(der_sequence_len(&[0x30, 0x82, 0x01, 0x00]), Some(4 + 256));
    }

    /// Not an assertion on time: prints what one check costs, for the record
    /// (`cargo test -p stek --lib scan::weak::tests::timing -- --nocapture`).
    #[test]
    fn timing_of_random_tickets() {
        let _ = common();
        let rng = SystemRandom::new();
        // 200 bytes (a Go-sized ticket, not CBC-shaped) and 208 (CBC-shaped: every guess).
        for len in [200, 208] {
            let mut t = vec![0u8; len];
            let runs = 50;
            let start = std::time::Instant::now();
            for _ in 0..runs {
                rng.fill(&mut t).unwrap();
                assert_eq!(check(&t), None);
            }
            let per = start.elapsed() / runs;
            println!("weak::check on a random {len}-byte ticket: {per:?} per check");
        }
        println!("distinct guessed MAC keys: {}", common().mac.len());
    }
}
