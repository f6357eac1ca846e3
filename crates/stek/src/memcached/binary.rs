//! The memcached binary protocol's framing: just enough to answer a binary request with a
//! binary error instead of leaving its client waiting.
//!
//! A binary request starts with the magic byte 0x80 and a 24-byte header (opcode, key and
//! extras lengths, total body length, an opaque the reply must echo). stek serves the text
//! protocol only; a binary client (nghttpx's ticket-key fetcher, for one) would otherwise sit
//! on a connection that never answers until the idle timeout. It gets one error response in
//! its own protocol, then the connection closes (what follows its header cannot be trusted to
//! be framed as the client thinks).
//!
//! Layout (all integers big-endian), request and response alike:
//!
//! | offset | size | request | response |
//! |---|---|---|---|
//! | 0 | 1 | magic 0x80 | magic 0x81 |
//! | 1 | 1 | opcode | the request's opcode |
//! | 2 | 2 | key length | key length (0 here) |
//! | 4 | 1 | extras length | extras length (0 here) |
//! | 5 | 1 | data type | data type (0) |
//! | 6 | 2 | vbucket | status |
//! | 8 | 4 | total body length | total body length |
//! | 12 | 4 | opaque | the request's opaque |
//! | 16 | 8 | cas | cas (0 here) |

/// The first byte of every binary request.
pub const REQUEST_MAGIC: u8 = 0x80;
/// The first byte of every binary response.
pub const RESPONSE_MAGIC: u8 = 0x81;
/// The length of a request or response header.
pub const HEADER_LEN: usize = 24;

/// A binary response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// 0x0081: the opcode is not one this server serves.
    UnknownCommand,
    /// 0x0083: the command exists but is not supported here.
    NotSupported,
}

impl Status {
    /// The status's code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Status::UnknownCommand => 0x0081,
            Status::NotSupported => 0x0083,
        }
    }
}

/// What a reply needs from a request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The command.
    pub opcode: u8,
    /// Echoed in the reply, so the client can match it.
    pub opaque: u32,
    /// Key, extras and value bytes following the header.
    pub body_len: u32,
}

/// The header at the front of `buf`, or `None` while fewer than [`HEADER_LEN`] bytes are
/// there. `buf` must start with [`REQUEST_MAGIC`] (the caller checked it to pick this framing).
pub fn header(buf: &[u8]) -> Option<Header> {
    let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    debug_assert_eq!(h[0], REQUEST_MAGIC);
    Some(Header {
        opcode: h[1],
        body_len: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        opaque: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
    })
}

/// Appends an error response to `request` with `status` and `message` as its body (memcached
/// sends a short text there too).
pub fn write_error(request: &Header, status: Status, message: &str, out: &mut Vec<u8>) {
    // The messages are short constants; a longer one would still be framed right.
    let body = u32::try_from(message.len()).unwrap_or(u32::MAX);
    out.push(RESPONSE_MAGIC);
    out.push(request.opcode);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&status.code().to_be_bytes());
    out.extend_from_slice(&body.to_be_bytes());
    out.extend_from_slice(&request.opaque.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&message.as_bytes()[..body as usize]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_echoes_opcode_and_opaque() {
        // A binary GET of key "ab", opaque 0xdeadbeef.
        let mut req = vec![
            0x80, 0x00, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0xde, 0xad, 0xbe, 0xef,
        ];
        req.extend_from_slice(&[0; 8]);
        assert_eq!(header(&req[..23]), None);
        req.extend_from_slice(b"ab");
        let h = header(&req).unwrap();
        assert_eq!(
            h,
            Header {
                opcode: 0,
                opaque: 0xdead_beef,
                body_len: 2
            }
        );
        let mut out = Vec::new();
        write_error(&h, Status::UnknownCommand, "Unknown command", &mut out);
        assert_eq!(out.len(), HEADER_LEN + 15);
        assert_eq!(&out[..2], &[0x81, 0x00]);
        assert_eq!(&out[6..8], &[0x00, 0x81]);
        assert_eq!(&out[8..12], &15u32.to_be_bytes());
        assert_eq!(&out[12..16], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&out[16..24], &[0; 8]);
        assert_eq!(&out[24..], b"Unknown command");
        assert_eq!(Status::NotSupported.code(), 0x0083);
    }
}
