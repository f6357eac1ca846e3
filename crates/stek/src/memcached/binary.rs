//! The memcached binary protocol's read commands: framing, the decision per request header, and
//! the response writer. Pure functions over bytes (no I/O, no allocation but the reply, no
//! panics on any input), so they can be fuzzed and unit-tested alone; [`super::session`]
//! drives them.
//!
//! nghttpx fetches its ticket keys this way and no other (`MemcachedConnection::make_request`
//! in nghttp2's `src/shrpx_memcached_connection.cc` sends a binary GET of
//! `nghttpx:tls-ticket-key`). A connection whose first byte is [`REQUEST_MAGIC`] speaks this
//! protocol for its whole life, as in memcached 1.6.
//!
//! Layout (all integers big-endian), request and response alike:
//!
//! | offset | size | request | response |
//! |---|---|---|---|
//! | 0 | 1 | magic 0x80 | magic 0x81 |
//! | 1 | 1 | opcode | the request's opcode |
//! | 2 | 2 | key length | key length |
//! | 4 | 1 | extras length | extras length |
//! | 5 | 1 | data type | data type (0) |
//! | 6 | 2 | vbucket | status |
//! | 8 | 4 | total body length (extras + key + value) | total body length |
//! | 12 | 4 | opaque | the request's opaque |
//! | 16 | 8 | cas | cas |
//!
//! What each opcode gets ([`decide`]):
//!
//! | opcodes | answer |
//! |---|---|
//! | GET 0x00, GETQ 0x09, GETK 0x0c, GETKQ 0x0d | the value with 4 bytes of flags (0) as extras and the item's cas; GETK/GETKQ add the key. A miss: status 0x0001 for GET/GETK, nothing for the quiet GETQ/GETKQ |
//! | NOOP 0x0a | an empty success: the client's marker that every quiet request before it is answered |
//! | VERSION 0x0b | the version as the value |
//! | QUIT 0x07, QUITQ 0x17 | an empty success (QUIT only), then the connection closes |
//! | writes: SET 0x01 ADD REPLACE DELETE INCR DECR FLUSH 0x08, APPEND PREPEND 0x0e-0x0f, their quiet forms 0x11-0x1a, VERBOSITY 0x1b, TOUCH GAT GATQ 0x1c-0x1e, GATK GATKQ 0x23-0x24 | status 0x0083 "not supported" with the text protocol's read-only message, after the body is dropped (quiet forms too: only successes are quiet) |
//! | STAT 0x10 | status 0x0083: the text protocol's `stats` answers |
//! | everything else (SASL 0x20-0x22 as memcached without SASL, range commands, unassigned) | status 0x0081 "unknown command", after the body is dropped |
//!
//! Requests that cannot be framed or are malformed get an error and a close, before their body
//! is read: a bad magic, extras and key longer than the body, a read command whose lengths are
//! not exactly its own (memcached's `handle_binary_protocol_error`: status 0x0004 and close),
//! a key over 250 bytes, a body over [`MAX_BODY`] (status 0x0003 and close).

use super::parse::{MAX_DATA_BLOCK, MAX_KEY_LEN};

/// The first byte of every binary request.
pub const REQUEST_MAGIC: u8 = 0x80;
/// The first byte of every binary response.
pub const RESPONSE_MAGIC: u8 = 0x81;
/// The length of a request or response header.
pub const HEADER_LEN: usize = 24;
/// The longest body a request may announce: the text protocol's data block cap. A longer one is
/// refused and the connection closed without reading it.
pub const MAX_BODY: u32 = MAX_DATA_BLOCK as u32;

/// The opcodes stek answers or names (memcached's `protocol_binary.h`).
pub mod opcode {
    /// Get a value.
    pub const GET: u8 = 0x00;
    /// Close after an empty success.
    pub const QUIT: u8 = 0x07;
    /// Get, answering only a hit.
    pub const GETQ: u8 = 0x09;
    /// An empty success; flushes quiet requests.
    pub const NOOP: u8 = 0x0a;
    /// The server's version.
    pub const VERSION: u8 = 0x0b;
    /// Get, with the key in the response.
    pub const GETK: u8 = 0x0c;
    /// Get with the key, answering only a hit.
    pub const GETKQ: u8 = 0x0d;
    /// Statistics (answered by the text protocol only).
    pub const STAT: u8 = 0x10;
    /// Close without a response.
    pub const QUITQ: u8 = 0x17;
}

/// A binary response status (memcached's `protocol_binary_response_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// 0x0000.
    Ok,
    /// 0x0001: no value under the key.
    NotFound,
    /// 0x0003: the announced body is larger than the server takes.
    TooLarge,
    /// 0x0004: the request's lengths do not fit its command.
    InvalidArguments,
    /// 0x0081: the opcode is not one this server knows.
    UnknownCommand,
    /// 0x0083: the command exists but is not served here (writes, STAT).
    NotSupported,
}

impl Status {
    /// The status's code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 0x0000,
            Status::NotFound => 0x0001,
            Status::TooLarge => 0x0003,
            Status::InvalidArguments => 0x0004,
            Status::UnknownCommand => 0x0081,
            Status::NotSupported => 0x0083,
        }
    }

    /// The short text memcached puts in an error's body.
    fn text(self) -> &'static str {
        match self {
            Status::Ok => "",
            Status::NotFound => "Not found",
            Status::TooLarge => "Too large.",
            Status::InvalidArguments => "Invalid arguments",
            Status::UnknownCommand => "Unknown command",
            Status::NotSupported => "Not supported",
        }
    }
}

/// A request header, as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The first byte; [`REQUEST_MAGIC`] in a valid request.
    pub magic: u8,
    /// The command.
    pub opcode: u8,
    /// Key bytes in the body.
    pub key_len: u16,
    /// Extras bytes in the body (before the key).
    pub extras_len: u8,
    /// Extras, key and value bytes following the header.
    pub body_len: u32,
    /// Echoed in the reply, so the client can match it.
    pub opaque: u32,
}

/// The header at the front of `buf`, or `None` while fewer than [`HEADER_LEN`] bytes are there.
pub fn header(buf: &[u8]) -> Option<Header> {
    let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    Some(Header {
        magic: h[0],
        opcode: h[1],
        key_len: u16::from_be_bytes([h[2], h[3]]),
        extras_len: h[4],
        body_len: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        opaque: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
    })
}

/// Which get a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Get {
    /// GETQ, GETKQ: a miss gets no response.
    pub quiet: bool,
    /// GETK, GETKQ: the response carries the key.
    pub with_key: bool,
}

/// What to do with a request, decided from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A get: its body is exactly its key (1 to 250 bytes); answer once the key is here.
    Get(Get),
    /// NOOP: an empty success (the body is empty).
    Noop,
    /// VERSION: the version (the body is empty).
    Version,
    /// QUIT (`quiet`: QUITQ): an empty success unless quiet, then close (the body is empty).
    Quit {
        /// QUITQ: close without a response.
        quiet: bool,
    },
    /// Drop the body (at most [`MAX_BODY`] bytes), then answer with this error and go on.
    Refuse {
        /// The error status.
        status: Status,
        /// The response's body.
        message: &'static str,
    },
    /// Answer with this error, then close without reading the body: what follows the header
    /// cannot be trusted to be framed as the client thinks, or is too large to drop.
    Close(Status),
}

/// The body of the refusal of a write: the text protocol's read-only message, without `\r\n`.
pub const READ_ONLY_MESSAGE: &str = "read-only: stek serves ticket keys only";
/// The body of the refusal of STAT.
pub const STAT_MESSAGE: &str = "Not supported: use the text protocol's stats";

/// Decides what `h` gets. Lengths are checked here, before any byte of the body is read.
pub fn decide(h: &Header) -> Action {
    if h.magic != REQUEST_MAGIC {
        return Action::Close(Status::InvalidArguments);
    }
    let key_len = u32::from(h.key_len);
    let extras_len = u32::from(h.extras_len);
    // key + extras fit in 65,790 bytes: no overflow in u32.
    if key_len + extras_len > h.body_len {
        return Action::Close(Status::InvalidArguments);
    }
    let bare = |action: Action| {
        // memcached refuses a NOOP, VERSION or QUIT with any body as a protocol error.
        if h.body_len == 0 {
            action
        } else {
            Action::Close(Status::InvalidArguments)
        }
    };
    match h.opcode {
        opcode::GET | opcode::GETQ | opcode::GETK | opcode::GETKQ => {
            // A get carries its key and nothing else (memcached's `process_bin_get_or_touch`).
            if h.extras_len != 0
                || h.key_len == 0
                || key_len > MAX_KEY_LEN as u32
                || h.body_len != key_len
            {
                return Action::Close(Status::InvalidArguments);
            }
            Action::Get(Get {
                quiet: matches!(h.opcode, opcode::GETQ | opcode::GETKQ),
                with_key: matches!(h.opcode, opcode::GETK | opcode::GETKQ),
            })
        }
        opcode::NOOP => bare(Action::Noop),
        opcode::VERSION => bare(Action::Version),
        opcode::QUIT => bare(Action::Quit { quiet: false }),
        opcode::QUITQ => bare(Action::Quit { quiet: true }),
        _ if h.body_len > MAX_BODY => Action::Close(Status::TooLarge),
        // SET ADD REPLACE DELETE INCR DECR FLUSH, APPEND PREPEND, their quiet forms SETQ ..
        // PREPENDQ, VERBOSITY, TOUCH GAT GATQ, GATK GATKQ: every one would change data.
        0x01..=0x06 | 0x08 | 0x0e | 0x0f | 0x11..=0x16 | 0x18..=0x1e | 0x23 | 0x24 => {
            Action::Refuse {
                status: Status::NotSupported,
                message: READ_ONLY_MESSAGE,
            }
        }
        opcode::STAT => Action::Refuse {
            status: Status::NotSupported,
            message: STAT_MESSAGE,
        },
        _ => Action::Refuse {
            status: Status::UnknownCommand,
            message: Status::UnknownCommand.text(),
        },
    }
}

/// The parts of a response after its header.
#[derive(Debug, Clone, Copy, Default)]
pub struct Body<'a> {
    /// Extras (a get's 4 bytes of flags).
    pub extras: &'a [u8],
    /// The key (GETK, GETKQ).
    pub key: &'a [u8],
    /// The value, or an error's text.
    pub value: &'a [u8],
}

impl Body<'_> {
    /// How many bytes the body takes.
    pub fn len(&self) -> usize {
        self.extras.len() + self.key.len() + self.value.len()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends a response to `request` (its opcode and opaque echoed) with `status`, `cas` and
/// `body`. The caller has made room for `HEADER_LEN + body.len()` bytes when the body holds key
/// bytes (`cmd::reserve`), so the buffer does not grow by reallocation here.
pub fn write_response(
    request: &Header,
    status: Status,
    cas: u64,
    body: Body<'_>,
    out: &mut Vec<u8>,
) {
    // Extras are at most 4 bytes, keys at most 250, values far below 4 GiB: the casts hold.
    let key_len = u16::try_from(body.key.len()).unwrap_or(u16::MAX);
    let extras_len = u8::try_from(body.extras.len()).unwrap_or(u8::MAX);
    let total = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.push(RESPONSE_MAGIC);
    out.push(request.opcode);
    out.extend_from_slice(&key_len.to_be_bytes());
    out.push(extras_len);
    out.push(0);
    out.extend_from_slice(&status.code().to_be_bytes());
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&request.opaque.to_be_bytes());
    out.extend_from_slice(&cas.to_be_bytes());
    out.extend_from_slice(body.extras);
    out.extend_from_slice(body.key);
    out.extend_from_slice(body.value);
}

/// Appends an error response with `message` as its body (memcached sends a short text there).
/// An empty `message` takes the status's own text.
pub fn write_error(request: &Header, status: Status, message: &str, out: &mut Vec<u8>) {
    let text = if message.is_empty() {
        status.text()
    } else {
        message
    };
    let body = Body {
        value: text.as_bytes(),
        ..Body::default()
    };
    write_response(request, status, 0, body, out);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request header with these fields and the rest zero.
    pub(crate) fn request(opcode: u8, key_len: u16, extras_len: u8, body_len: u32) -> [u8; 24] {
        let mut h = [0u8; 24];
        h[0] = REQUEST_MAGIC;
        h[1] = opcode;
        h[2..4].copy_from_slice(&key_len.to_be_bytes());
        h[4] = extras_len;
        h[8..12].copy_from_slice(&body_len.to_be_bytes());
        h[12..16].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        h
    }

    fn decide_bytes(bytes: &[u8]) -> Action {
        decide(&header(bytes).unwrap())
    }

    #[test]
    fn the_header_is_read_whole_or_not_at_all() {
        let h = request(opcode::GETK, 2, 0, 2);
        assert_eq!(header(&h[..23]), None);
        assert_eq!(
            header(&h),
            Some(Header {
                magic: 0x80,
                opcode: 0x0c,
                key_len: 2,
                extras_len: 0,
                body_len: 2,
                opaque: 0xdead_beef,
            })
        );
    }

    #[test]
    fn gets_need_exactly_a_key() {
        for (op, quiet, with_key) in [
            (opcode::GET, false, false),
            (opcode::GETQ, true, false),
            (opcode::GETK, false, true),
            (opcode::GETKQ, true, true),
        ] {
            assert_eq!(
                decide_bytes(&request(op, 22, 0, 22)),
                Action::Get(Get { quiet, with_key })
            );
            assert_eq!(
                decide_bytes(&request(op, 250, 0, 250)),
                Action::Get(Get { quiet, with_key })
            );
            for bad in [
                request(op, 0, 0, 0),
                request(op, 2, 0, 3),
                request(op, 2, 4, 6),
                request(op, 251, 0, 251),
                request(op, 3, 0, 2),
            ] {
                assert_eq!(
                    decide_bytes(&bad),
                    Action::Close(Status::InvalidArguments),
                    "{op:#x} {bad:?}"
                );
            }
        }
    }

    #[test]
    fn bare_commands_take_no_body() {
        assert_eq!(decide_bytes(&request(opcode::NOOP, 0, 0, 0)), Action::Noop);
        assert_eq!(
            decide_bytes(&request(opcode::VERSION, 0, 0, 0)),
            Action::Version
        );
        assert_eq!(
            decide_bytes(&request(opcode::QUIT, 0, 0, 0)),
            Action::Quit { quiet: false }
        );
        assert_eq!(
            decide_bytes(&request(opcode::QUITQ, 0, 0, 0)),
            Action::Quit { quiet: true }
        );
        for op in [opcode::NOOP, opcode::VERSION, opcode::QUIT, opcode::QUITQ] {
            assert_eq!(
                decide_bytes(&request(op, 0, 0, 1)),
                Action::Close(Status::InvalidArguments)
            );
        }
    }

    #[test]
    fn writes_stat_and_unknown_opcodes_are_refused_after_their_body() {
        // SET with extras (flags, expiry), a key and a value.
        assert_eq!(
            decide_bytes(&request(0x01, 3, 8, 20)),
            Action::Refuse {
                status: Status::NotSupported,
                message: READ_ONLY_MESSAGE
            }
        );
        for op in [0x04, 0x08, 0x11, 0x1a, 0x1b, 0x1c, 0x1e, 0x23, 0x24] {
            assert!(
                matches!(
                    decide_bytes(&request(op, 0, 0, 0)),
                    Action::Refuse {
                        status: Status::NotSupported,
                        ..
                    }
                ),
                "{op:#x}"
            );
        }
        assert_eq!(
            decide_bytes(&request(opcode::STAT, 0, 0, 0)),
            Action::Refuse {
                status: Status::NotSupported,
                message: STAT_MESSAGE
            }
        );
        // SASL without SASL, as memcached: unknown command.
        for op in [0x20, 0x21, 0x22, 0x1f, 0x30, 0x3c, 0xff] {
            assert_eq!(
                decide_bytes(&request(op, 5, 0, 9)),
                Action::Refuse {
                    status: Status::UnknownCommand,
                    message: "Unknown command"
                },
                "{op:#x}"
            );
        }
    }

    #[test]
    fn bad_framing_and_oversize_bodies_close_before_the_body() {
        let mut bad_magic = request(opcode::GET, 1, 0, 1);
        bad_magic[0] = 0x81;
        assert_eq!(
            decide_bytes(&bad_magic),
            Action::Close(Status::InvalidArguments)
        );
        assert_eq!(
            decide_bytes(&request(0x01, 10, 8, 17)),
            Action::Close(Status::InvalidArguments)
        );
        assert_eq!(
            decide_bytes(&request(0x01, 3, 8, 50 * 1000 * 1000)),
            Action::Close(Status::TooLarge)
        );
        assert_eq!(
            decide_bytes(&request(0x42, 0, 0, u32::MAX)),
            Action::Close(Status::TooLarge)
        );
        assert!(matches!(
            decide_bytes(&request(0x42, 0, 0, MAX_BODY)),
            Action::Refuse { .. }
        ));
        assert_eq!(
            decide_bytes(&request(opcode::GET, u16::MAX, u8::MAX, u32::MAX)),
            Action::Close(Status::InvalidArguments)
        );
    }

    #[test]
    fn responses_echo_opcode_and_opaque() {
        let h = header(&request(opcode::GETK, 2, 0, 2)).unwrap();
        let mut out = Vec::new();
        let body = Body {
            extras: &[0; 4],
            key: b"ab",
            value: b"xyz",
        };
        write_response(&h, Status::Ok, 0x0102_0304_0506_0708, body, &mut out);
        assert_eq!(
            out,
            [
                &[0x81, 0x0c, 0, 2, 4, 0, 0, 0, 0, 0, 0, 9, 0xde, 0xad, 0xbe, 0xef][..],
                &[1, 2, 3, 4, 5, 6, 7, 8],
                &[0; 4],
                b"ab",
                b"xyz"
            ]
            .concat()
        );
        out.clear();
        write_error(&h, Status::UnknownCommand, "", &mut out);
        assert_eq!(out.len(), HEADER_LEN + 15);
        assert_eq!(&out[6..8], &[0x00, 0x81]);
        assert_eq!(&out[8..12], &15u32.to_be_bytes());
        assert_eq!(&out[16..24], &[0; 8]);
        assert_eq!(&out[24..], b"Unknown command");
        for (s, code) in [
            (Status::Ok, 0),
            (Status::NotFound, 1),
            (Status::TooLarge, 3),
            (Status::InvalidArguments, 4),
            (Status::UnknownCommand, 0x81),
            (Status::NotSupported, 0x83),
        ] {
            assert_eq!(s.code(), code);
        }
    }
}
