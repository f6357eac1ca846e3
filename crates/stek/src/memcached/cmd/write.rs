//! Commands that would change data: every one is refused.
//!
//! stek's keys come from its own schedule; nothing a client sends may replace them (a client
//! that could `set ticket-key/<start>` could choose the key every TLS server of the host
//! encrypts with).

use crate::memcached::parse::READ_ONLY;

/// Appends the refusal, unless the client asked for no reply.
pub(crate) fn refuse(noreply: bool, out: &mut Vec<u8>) {
    if !noreply {
        out.extend_from_slice(READ_ONLY);
    }
}

/// Appends the reply to a storage command whose data block has been swallowed: a
/// `CLIENT_ERROR` if the command line was malformed (never suppressed), else the refusal.
pub(crate) fn after_data(noreply: bool, malformed: Option<&'static str>, out: &mut Vec<u8>) {
    match malformed {
        Some(why) => {
            out.extend_from_slice(b"CLIENT_ERROR ");
            out.extend_from_slice(why.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        None => refuse(noreply, out),
    }
}
