//! What a TLS server sent, read off the wire: records, the ServerHello, NewSessionTicket messages
//! (TLS 1.2 in plaintext, TLS 1.3 decrypted with our own connection's traffic secrets), whether a
//! TLS 1.2 handshake was abbreviated, alerts.
//!
//! Everything here parses bytes from an untrusted peer: sizes are capped, nothing panics, and
//! `fuzz/fuzz_targets/server_flight.rs` drives [`parse_server_flight`] with arbitrary input.

use ring::{aead, hkdf};
use zeroize::Zeroizing;

/// The most server bytes parsed from one connection.
pub const MAX_FLIGHT: usize = 256 * 1024;
/// The largest handshake message accepted (certificate chains included).
const MAX_MESSAGE: usize = 64 * 1024;
/// A TLS record's largest ciphertext (RFC 8446 §5.2).
const MAX_RECORD: usize = (1 << 14) + 256;

/// TLS 1.2 on the wire.
pub const TLS12: u16 = 0x0303;
/// TLS 1.3 on the wire.
pub const TLS13: u16 = 0x0304;

const CONTENT_CCS: u8 = 20;
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPDATA: u8 = 23;

const HS_SERVER_HELLO: u8 = 2;
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_CERTIFICATE: u8 = 11;
const HS_SERVER_KEY_EXCHANGE: u8 = 12;
const HS_FINISHED: u8 = 20;
const HS_KEY_UPDATE: u8 = 24;

const EXT_SESSION_TICKET: u16 = 35;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_EARLY_DATA: u16 = 42;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_KEY_SHARE: u16 = 51;

/// SHA-256("HelloRetryRequest"): the ServerHello random of a HelloRetryRequest (RFC 8446 §4.1.3).
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// Why server bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A length field points past the data.
    Truncated(&'static str),
    /// A field holds a value that cannot be.
    Malformed(&'static str),
    /// A record or message above the protocol's or our cap.
    TooLarge(&'static str),
    /// A TLS 1.3 record that does not decrypt under the connection's traffic key.
    Decrypt,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated(what) => write!(f, "truncated {what}"),
            WireError::Malformed(what) => write!(f, "malformed {what}"),
            WireError::TooLarge(what) => write!(f, "{what} too large"),
            WireError::Decrypt => f.write_str("a TLS 1.3 record does not decrypt"),
        }
    }
}

impl std::error::Error for WireError {}

/// A bounds-checked reader over untrusted bytes.
#[derive(Debug, Clone, Copy)]
struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(self.what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Result<usize, WireError> {
        let b = self.take(3)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn vec8(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u8()?;
        self.take(n.into())
    }

    fn vec16(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()?;
        self.take(n.into())
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The server's answer to our ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// The negotiated version (`supported_versions` when present, else the legacy field).
    pub version: u16,
    /// The cipher suite.
    pub cipher: u16,
    /// The session ID the server chose or echoed.
    pub session_id: Vec<u8>,
    /// TLS 1.3: the server accepted one of our PSKs (a ticket).
    pub psk_accepted: bool,
    /// TLS 1.3: the server sent a key share (`psk_dhe_ke` or a full handshake).
    pub key_share: bool,
    /// TLS 1.2: the server will send a NewSessionTicket.
    pub ticket_extension: bool,
    /// This is a HelloRetryRequest, not a ServerHello.
    pub retry_request: bool,
}

fn parse_server_hello(body: &[u8]) -> Result<ServerHello, WireError> {
    let mut c = Cursor::new(body, "ServerHello");
    let legacy = c.u16()?;
    let random = c.take(32)?;
    let session_id = c.vec8()?.to_vec();
    if session_id.len() > 32 {
        return Err(WireError::Malformed("ServerHello session id"));
    }
    let cipher = c.u16()?;
    let _compression = c.u8()?;
    let mut hello = ServerHello {
        version: legacy,
        cipher,
        session_id,
        psk_accepted: false,
        key_share: false,
        ticket_extension: false,
        retry_request: random == HRR_RANDOM,
    };
    if c.is_empty() {
        return Ok(hello);
    }
    let mut exts = Cursor::new(c.vec16()?, "ServerHello extensions");
    while !exts.is_empty() {
        let typ = exts.u16()?;
        let mut data = Cursor::new(exts.vec16()?, "ServerHello extension");
        match typ {
            EXT_SUPPORTED_VERSIONS => hello.version = data.u16()?,
            EXT_PRE_SHARED_KEY => {
                data.u16()?;
                hello.psk_accepted = true;
            }
            EXT_KEY_SHARE => hello.key_share = true,
            EXT_SESSION_TICKET => hello.ticket_extension = true,
            _ => {}
        }
    }
    Ok(hello)
}

/// A NewSessionTicket, TLS 1.2 or 1.3.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// `TLS12` or `TLS13`.
    pub version: u16,
    /// The lifetime hint (TLS 1.2, 0 = unspecified) or lifetime (TLS 1.3), seconds.
    pub lifetime: u32,
    /// The opaque ticket: the server's encryption of the session state.
    pub bytes: Vec<u8>,
    /// TLS 1.3 `early_data` extension: the most 0-RTT bytes the server takes.
    pub max_early_data: Option<u32>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("version", &format_args!("{:#06x}", self.version))
            .field("lifetime", &self.lifetime)
            .field("len", &self.bytes.len())
            .field("max_early_data", &self.max_early_data)
            .finish()
    }
}

fn parse_ticket12(body: &[u8]) -> Result<Ticket, WireError> {
    let mut c = Cursor::new(body, "NewSessionTicket");
    let lifetime = c.u32()?;
    let bytes = c.vec16()?.to_vec();
    Ok(Ticket {
        version: TLS12,
        lifetime,
        bytes,
        max_early_data: None,
    })
}

fn parse_ticket13(body: &[u8]) -> Result<Ticket, WireError> {
    let mut c = Cursor::new(body, "NewSessionTicket");
    let lifetime = c.u32()?;
    let _age_add = c.u32()?;
    let _nonce = c.vec8()?;
    let bytes = c.vec16()?.to_vec();
    if bytes.is_empty() {
        return Err(WireError::Malformed("empty TLS 1.3 ticket"));
    }
    let mut exts = Cursor::new(c.vec16()?, "NewSessionTicket extensions");
    let mut max_early_data = None;
    while !exts.is_empty() {
        let typ = exts.u16()?;
        let mut data = Cursor::new(exts.vec16()?, "NewSessionTicket extension");
        if typ == EXT_EARLY_DATA {
            max_early_data = Some(data.u32()?);
        }
    }
    Ok(Ticket {
        version: TLS13,
        lifetime,
        bytes,
        max_early_data,
    })
}

/// Our own connection's TLS 1.3 server traffic secrets (from rustls's key log), to read the
/// encrypted part of the server's flight. They protect only the scan's own session.
#[derive(Default)]
pub struct Secrets {
    /// `SERVER_HANDSHAKE_TRAFFIC_SECRET`.
    pub handshake: Option<Zeroizing<Vec<u8>>>,
    /// `SERVER_TRAFFIC_SECRET_0`.
    pub application: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("handshake", &self.handshake.is_some())
            .field("application", &self.application.is_some())
            .finish()
    }
}

/// What the server's side of one connection showed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFlight {
    /// The ServerHello (or HelloRetryRequest), once seen.
    pub hello: Option<ServerHello>,
    /// TLS 1.2: the handshake went on with a Certificate or ServerKeyExchange (a full handshake).
    pub full_handshake: bool,
    /// TLS 1.2: the server went straight to NewSessionTicket or ChangeCipherSpec (resumption).
    pub abbreviated: bool,
    /// Tickets, in the order sent.
    pub tickets: Vec<Ticket>,
    /// The server's handshake finished (TLS 1.3 Finished decrypted, or TLS 1.2 ChangeCipherSpec).
    pub finished: bool,
    /// Application data arrived after the handshake (TLS 1.3, decrypted).
    pub application_data: bool,
    /// An alert (level, description), if the server sent one we could read.
    pub alert: Option<(u8, u8)>,
}

impl ServerFlight {
    /// The negotiated version, if a ServerHello was seen.
    pub fn version(&self) -> Option<u16> {
        self.hello.as_ref().map(|h| h.version)
    }

    /// Whether the server resumed: a TLS 1.3 PSK was accepted, or a TLS 1.2 handshake was
    /// abbreviated. `None` while undecided.
    pub fn resumed(&self) -> Option<bool> {
        let hello = self.hello.as_ref()?;
        if hello.retry_request {
            return None;
        }
        if hello.version == TLS13 {
            return Some(hello.psk_accepted);
        }
        if self.abbreviated {
            Some(true)
        } else if self.full_handshake {
            Some(false)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Epoch {
    Plain,
    Handshake,
    Application,
    Done,
}

/// A TLS 1.3 record-protection key for one direction and epoch (RFC 8446 §5.3).
struct RecordKey {
    key: aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl RecordKey {
    fn new(cipher: u16, secret: &[u8]) -> Result<RecordKey, WireError> {
        let (alg, prf): (&'static aead::Algorithm, hkdf::Algorithm) = match cipher {
            0x1301 => (&aead::AES_128_GCM, hkdf::HKDF_SHA256),
            0x1302 => (&aead::AES_256_GCM, hkdf::HKDF_SHA384),
            0x1303 => (&aead::CHACHA20_POLY1305, hkdf::HKDF_SHA256),
            _ => return Err(WireError::Malformed("TLS 1.3 cipher suite")),
        };
        if secret.len() != prf.hmac_algorithm().digest_algorithm().output_len() {
            return Err(WireError::Malformed("traffic secret length"));
        }
        let prk = hkdf::Prk::new_less_safe(prf, secret);
        let mut key = Zeroizing::new(vec![0u8; alg.key_len()]);
        expand_label(&prk, b"key", &mut key)?;
        let mut iv = [0u8; 12];
        expand_label(&prk, b"iv", &mut iv)?;
        let unbound = aead::UnboundKey::new(alg, &key).map_err(|_| WireError::Decrypt)?;
        Ok(RecordKey {
            key: aead::LessSafeKey::new(unbound),
            iv,
            seq: 0,
        })
    }

    /// Protect one record (what a server does): header, then content, type and tag sealed.
    fn seal(&mut self, inner_type: u8, content: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let mut body = content.to_vec();
        body.push(inner_type);
        let len = u16::try_from(body.len() + self.key.algorithm().tag_len())
            .map_err(|_| WireError::TooLarge("record"))?;
        let [hi, lo] = len.to_be_bytes();
        let header = [CONTENT_APPDATA, 3, 3, hi, lo];
        let nonce = self.nonce();
        self.key
            .seal_in_place_append_tag(nonce, aead::Aad::from(header), &mut body)
            .map_err(|_| WireError::Decrypt)?;
        out.extend_from_slice(&header);
        out.extend_from_slice(&body);
        Ok(())
    }

    fn nonce(&mut self) -> aead::Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        aead::Nonce::assume_unique_for_key(nonce)
    }

    /// Open one record in place; returns the inner content type and the content.
    fn open<'b>(
        &mut self,
        header: [u8; 5],
        body: &'b mut [u8],
    ) -> Result<(u8, &'b [u8]), WireError> {
        let nonce = self.nonce();
        let plain = self
            .key
            .open_in_place(nonce, aead::Aad::from(header), body)
            .map_err(|_| WireError::Decrypt)?;
        let end = plain
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(WireError::Malformed("record without content type"))?;
        Ok((plain[end], &plain[..end]))
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) (RFC 8446 §7.1).
fn expand_label(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) -> Result<(), WireError> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let len = u16::try_from(out.len()).map_err(|_| WireError::TooLarge("HKDF output"))?;
    let len = len.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).map_err(|_| WireError::TooLarge("label"))?];
    let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &[0]];
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| WireError::Malformed("HKDF expansion"))
}

/// Reassembles handshake messages from record fragments.
#[derive(Debug, Default)]
struct Messages {
    buf: Vec<u8>,
}

impl Messages {
    fn push(&mut self, data: &[u8]) -> Result<(), WireError> {
        if self.buf.len() + data.len() > MAX_MESSAGE + 4 {
            return Err(WireError::TooLarge("handshake message"));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete message (type, body), if any.
    fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = usize::from(self.buf[1]) << 16
            | usize::from(self.buf[2]) << 8
            | usize::from(self.buf[3]);
        if len > MAX_MESSAGE {
            return Err(WireError::TooLarge("handshake message"));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let typ = self.buf[0];
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some((typ, body)))
    }
}

/// Parse what a server sent on one connection. Stops quietly at an incomplete record (the
/// connection may have been cut on purpose); fails on bytes that cannot be TLS. With `secrets`,
/// TLS 1.3 handshake and application records are decrypted to read the tickets.
pub fn parse_server_flight(bytes: &[u8], secrets: &Secrets) -> Result<ServerFlight, WireError> {
    let bytes = &bytes[..bytes.len().min(MAX_FLIGHT)];
    let mut flight = ServerFlight::default();
    let mut epoch = Epoch::Plain;
    let mut messages = Messages::default();
    let mut key: Option<RecordKey> = None;
    let mut rest = Cursor::new(bytes, "record");
    while epoch != Epoch::Done && rest.buf.len() >= 5 {
        let mut head = Cursor::new(&rest.buf[..5], "record header");
        let typ = head.u8()?;
        let version = head.u16()?;
        let len = usize::from(head.u16()?);
        if version >> 8 != 3 {
            return Err(WireError::Malformed("record version (not TLS)"));
        }
        if len > MAX_RECORD {
            return Err(WireError::TooLarge("record"));
        }
        if rest.buf.len() < 5 + len {
            break;
        }
        let header: [u8; 5] = [
            rest.buf[0],
            rest.buf[1],
            rest.buf[2],
            rest.buf[3],
            rest.buf[4],
        ];
        rest.take(5)?;
        let body = rest.take(len)?;
        match (epoch, typ) {
            (_, CONTENT_ALERT) => {
                let mut c = Cursor::new(body, "alert");
                flight.alert = Some((c.u8()?, c.u8()?));
                epoch = Epoch::Done;
            }
            (Epoch::Plain, CONTENT_HANDSHAKE) => {
                messages.push(body)?;
                while let Some((msg, body)) = messages.next()? {
                    epoch = plain_message(&mut flight, msg, &body)?;
                    if epoch != Epoch::Plain {
                        break;
                    }
                }
                if epoch == Epoch::Handshake {
                    if !messages.buf.is_empty() {
                        return Err(WireError::Malformed("plaintext after TLS 1.3 ServerHello"));
                    }
                    let cipher = flight.hello.as_ref().map_or(0, |h| h.cipher);
                    key = match &secrets.handshake {
                        Some(s) => Some(RecordKey::new(cipher, s)?),
                        None => {
                            epoch = Epoch::Done;
                            None
                        }
                    };
                }
            }
            (Epoch::Plain, CONTENT_CCS) => {
                // TLS 1.2: what follows is encrypted under the session's keys.
                if !flight.full_handshake {
                    flight.abbreviated = true;
                }
                flight.finished = true;
                epoch = Epoch::Done;
            }
            (Epoch::Handshake | Epoch::Application, CONTENT_CCS) => {} // TLS 1.3 compatibility
            (Epoch::Handshake | Epoch::Application, CONTENT_APPDATA) => {
                let Some(k) = key.as_mut() else { break };
                let mut buf = Zeroizing::new(body.to_vec());
                let (inner, content) = k.open(header, &mut buf)?;
                match inner {
                    CONTENT_HANDSHAKE => {
                        messages.push(content)?;
                        while let Some((msg, body)) = messages.next()? {
                            match (epoch, msg) {
                                (Epoch::Handshake, HS_FINISHED) => {
                                    flight.finished = true;
                                    epoch = Epoch::Application;
                                    key = match &secrets.application {
                                        Some(s) => Some(RecordKey::new(
                                            flight.hello.as_ref().map_or(0, |h| h.cipher),
                                            s,
                                        )?),
                                        None => {
                                            epoch = Epoch::Done;
                                            None
                                        }
                                    };
                                    if !messages.buf.is_empty() {
                                        return Err(WireError::Malformed("data after Finished"));
                                    }
                                    break;
                                }
                                (Epoch::Application, HS_NEW_SESSION_TICKET) => {
                                    flight.tickets.push(parse_ticket13(&body)?);
                                }
                                (Epoch::Application, HS_KEY_UPDATE) => epoch = Epoch::Done,
                                _ => {}
                            }
                        }
                    }
                    CONTENT_APPDATA if epoch == Epoch::Application => {
                        flight.application_data = true;
                    }
                    CONTENT_ALERT => {
                        let mut c = Cursor::new(content, "alert");
                        flight.alert = Some((c.u8()?, c.u8()?));
                        epoch = Epoch::Done;
                    }
                    _ => return Err(WireError::Malformed("inner content type")),
                }
            }
            _ => return Err(WireError::Malformed("record type")),
        }
    }
    Ok(flight)
}

/// One plaintext handshake message; returns the epoch that follows it.
fn plain_message(flight: &mut ServerFlight, msg: u8, body: &[u8]) -> Result<Epoch, WireError> {
    match msg {
        HS_SERVER_HELLO => {
            let hello = parse_server_hello(body)?;
            let next = if hello.version == TLS13 && !hello.retry_request {
                Epoch::Handshake
            } else if hello.retry_request {
                Epoch::Done
            } else {
                Epoch::Plain
            };
            flight.hello = Some(hello);
            Ok(next)
        }
        _ if flight.hello.is_none() => Err(WireError::Malformed("message before ServerHello")),
        HS_CERTIFICATE | HS_SERVER_KEY_EXCHANGE => {
            if !flight.abbreviated {
                flight.full_handshake = true;
            }
            Ok(Epoch::Plain)
        }
        HS_NEW_SESSION_TICKET => {
            if !flight.full_handshake {
                flight.abbreviated = true;
            }
            flight.tickets.push(parse_ticket12(body)?);
            Ok(Epoch::Plain)
        }
        _ => Ok(Epoch::Plain),
    }
}

/// The ticket a ClientHello offers, if any: the TLS 1.3 PSK identity or the TLS 1.2
/// `session_ticket` extension. Reads our own ClientHello (the first record we wrote).
pub fn offered_ticket(client_hello: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
    let mut rec = Cursor::new(client_hello, "ClientHello record");
    if rec.u8()? != CONTENT_HANDSHAKE {
        return Err(WireError::Malformed("ClientHello record type"));
    }
    rec.u16()?;
    let mut msg = Cursor::new(rec.vec16()?, "ClientHello");
    if msg.u8()? != 1 {
        return Err(WireError::Malformed("ClientHello type"));
    }
    let len = msg.u24()?;
    let mut c = Cursor::new(msg.take(len)?, "ClientHello");
    c.u16()?;
    c.take(32)?;
    c.vec8()?;
    c.vec16()?;
    c.vec8()?;
    let mut exts = Cursor::new(c.vec16()?, "ClientHello extensions");
    let mut ticket = None;
    while !exts.is_empty() {
        let typ = exts.u16()?;
        let data = exts.vec16()?;
        match typ {
            EXT_PRE_SHARED_KEY => {
                let mut ids = Cursor::new(data, "pre_shared_key");
                let mut ids = Cursor::new(ids.vec16()?, "PSK identities");
                ticket = Some(ids.vec16()?.to_vec());
            }
            EXT_SESSION_TICKET if !data.is_empty() => ticket = Some(data.to_vec()),
            _ => {}
        }
    }
    Ok(ticket)
}

/// Build server records protected under `secret` with TLS 1.3 suite `cipher`, one per
/// `(inner content type, content)`, sequence numbers from 0: what a server would send. For tests
/// and the fuzz target, which need encrypted flights whose contents they choose.
#[doc(hidden)]
pub fn protect(cipher: u16, secret: &[u8], records: &[(u8, &[u8])]) -> Result<Vec<u8>, WireError> {
    let mut key = RecordKey::new(cipher, secret)?;
    let mut out = Vec::new();
    for (typ, content) in records {
        key.seal(*typ, content, &mut out)?;
    }
    Ok(out)
}

/// A TLS 1.3 ServerHello record choosing `cipher` (with a key share, and a PSK when `psk`).
#[doc(hidden)]
pub fn server_hello13(cipher: u16, psk: bool) -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend_from_slice(&[7; 32]);
    b.push(0);
    b.extend_from_slice(&cipher.to_be_bytes());
    b.push(0);
    let mut exts = vec![0, 43, 0, 2, 3, 4, 0, 51, 0, 4, 0, 29, 0, 0];
    if psk {
        exts.extend_from_slice(&[0, 41, 0, 2, 0, 0]);
    }
    b.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    b.extend_from_slice(&exts);
    let mut msg = vec![HS_SERVER_HELLO];
    msg.extend_from_slice(&(b.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&b);
    let mut rec = vec![CONTENT_HANDSHAKE, 3, 3];
    rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    rec.extend_from_slice(&msg);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(typ: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![typ, 3, 3];
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    fn message(typ: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![typ];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        m.extend_from_slice(body);
        m
    }

    fn server_hello(version: Option<u16>, psk: bool) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&[7; 32]);
        b.push(0);
        b.extend_from_slice(&[0x13, 0x01, 0]);
        let mut exts = Vec::new();
        if let Some(v) = version {
            exts.extend_from_slice(&[0, 43, 0, 2]);
            exts.extend_from_slice(&v.to_be_bytes());
        }
        if psk {
            exts.extend_from_slice(&[0, 41, 0, 2, 0, 0]);
        }
        b.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        b.extend_from_slice(&exts);
        b
    }

    #[test]
    fn tls12_full_handshake_with_ticket() {
        let mut hs = message(HS_SERVER_HELLO, &server_hello(None, false));
        hs.extend(message(HS_CERTIFICATE, &[0, 0, 0]));
        let mut nst = vec![0, 0, 0x1c, 0x20, 0, 5];
        nst.extend_from_slice(b"abcde");
        let mut wire = record(CONTENT_HANDSHAKE, &hs);
        // The ticket arrives in its own record, split across two to test reassembly.
        let m = message(HS_NEW_SESSION_TICKET, &nst);
        wire.extend(record(CONTENT_HANDSHAKE, &m[..3]));
        wire.extend(record(CONTENT_HANDSHAKE, &m[3..]));
        wire.extend(record(CONTENT_CCS, &[1]));
        let f = parse_server_flight(&wire, &Secrets::default()).unwrap();
        assert_eq!(f.version(), Some(TLS12));
        assert_eq!(f.resumed(), Some(false));
        assert_eq!(f.tickets.len(), 1);
        assert_eq!(f.tickets[0].lifetime, 7200);
        assert_eq!(f.tickets[0].bytes, b"abcde");
    }

    #[test]
    fn tls12_abbreviated_handshake() {
        let mut wire = record(
            CONTENT_HANDSHAKE,
            &message(HS_SERVER_HELLO, &server_hello(None, false)),
        );
        wire.extend(record(CONTENT_CCS, &[1]));
        let f = parse_server_flight(&wire, &Secrets::default()).unwrap();
        assert_eq!(f.resumed(), Some(true));
        assert!(f.tickets.is_empty());
    }

    #[test]
    fn tls13_psk_acceptance_without_secrets() {
        let wire = record(
            CONTENT_HANDSHAKE,
            &message(HS_SERVER_HELLO, &server_hello(Some(TLS13), true)),
        );
        let f = parse_server_flight(&wire, &Secrets::default()).unwrap();
        assert_eq!(f.version(), Some(TLS13));
        assert_eq!(f.resumed(), Some(true));
        let wire = record(
            CONTENT_HANDSHAKE,
            &message(HS_SERVER_HELLO, &server_hello(Some(TLS13), false)),
        );
        assert_eq!(
            parse_server_flight(&wire, &Secrets::default())
                .unwrap()
                .resumed(),
            Some(false)
        );
    }

    #[test]
    fn plaintext_alert_and_garbage() {
        let f = parse_server_flight(&record(CONTENT_ALERT, &[2, 40]), &Secrets::default()).unwrap();
        assert_eq!(f.alert, Some((2, 40)));
        assert!(
            parse_server_flight(b"HTTP/1.1 400 Bad Request\r\n\r\n", &Secrets::default()).is_err()
        );
        // A cut connection is not an error: nothing decided yet.
        let wire = record(
            CONTENT_HANDSHAKE,
            &message(HS_SERVER_HELLO, &server_hello(None, false)),
        );
        let f = parse_server_flight(&wire[..wire.len() - 1], &Secrets::default()).unwrap();
        assert_eq!(f.hello, None);
    }

    #[test]
    fn oversized_message_is_refused() {
        let mut m = vec![HS_CERTIFICATE, 0x10, 0, 0];
        m.extend_from_slice(&[0; 100]);
        let mut wire = record(
            CONTENT_HANDSHAKE,
            &message(HS_SERVER_HELLO, &server_hello(None, false)),
        );
        wire.extend(record(CONTENT_HANDSHAKE, &m));
        assert_eq!(
            parse_server_flight(&wire, &Secrets::default()),
            Err(WireError::TooLarge("handshake message"))
        );
    }

    #[test]
    fn tls13_tickets_are_read_from_encrypted_records() {
        for (cipher, len) in [(0x1301, 32), (0x1302, 48), (0x1303, 32)] {
            let secrets = Secrets {
                handshake: Some(Zeroizing::new(vec![1; len])),
                application: Some(Zeroizing::new(vec![2; len])),
            };
            let mut wire = server_hello13(cipher, false);
            wire.extend(record(CONTENT_CCS, &[1]));
            let mut flight = message(8, &[0, 0]); // EncryptedExtensions
            flight.extend(message(HS_FINISHED, &[9; 32]));
            wire.extend(protect(cipher, &[1; 48][..len], &[(CONTENT_HANDSHAKE, &flight)]).unwrap());
            let mut nst = vec![0, 0, 0x0e, 0x10, 1, 2, 3, 4, 1, 0, 0, 3, b'a', b'b', b'c'];
            nst.extend_from_slice(&[0, 8, 0, 42, 0, 4, 0, 0, 0x40, 0]);
            let nst = message(HS_NEW_SESSION_TICKET, &nst);
            wire.extend(
                protect(
                    cipher,
                    &[2; 48][..len],
                    &[
                        (CONTENT_HANDSHAKE, &nst),
                        (CONTENT_APPDATA, b"HTTP/1.1 200"),
                    ],
                )
                .unwrap(),
            );
            let f = parse_server_flight(&wire, &secrets).unwrap();
            assert!(f.finished && f.application_data, "{cipher:#x}");
            assert_eq!(f.tickets.len(), 1);
            assert_eq!(f.tickets[0].lifetime, 3600);
            assert_eq!(f.tickets[0].bytes, b"abc");
            assert_eq!(f.tickets[0].max_early_data, Some(16384));
            // The wrong secret does not decrypt.
            let wrong = Secrets {
                handshake: Some(Zeroizing::new(vec![3; len])),
                application: None,
            };
            assert_eq!(parse_server_flight(&wire, &wrong), Err(WireError::Decrypt));
        }
    }

    #[test]
    fn expand_label_matches_rfc8448() {
        // RFC 8448 §3 (simple 1-RTT): server handshake traffic secret -> key and iv.
        let secret = hex("b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38");
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &secret);
        let mut key = [0u8; 16];
        expand_label(&prk, b"key", &mut key).unwrap();
        assert_eq!(key.to_vec(), hex("3fce516009c21727d0f2e4e86ee403bc"));
        let mut iv = [0u8; 12];
        expand_label(&prk, b"iv", &mut iv).unwrap();
        assert_eq!(iv.to_vec(), hex("5d313eb2671276ee13000b30"));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
