//! One place per command: each module turns a parsed request into reply bytes.
//!
//! Commands write into the connection's reply buffer, never to the socket: the connection
//! answers a whole batch of pipelined requests with one write.

pub(crate) mod get;
pub(crate) mod stats;
pub(crate) mod version;
pub(crate) mod write;

/// Makes room for `additional` more bytes in a reply buffer without leaving key bytes behind.
///
/// `Vec` growth copies into a new allocation and frees the old one as it is; the reply buffer
/// holds key bytes, so it grows here instead: a new allocation, a copy, and the old one zeroed
/// before it is freed.
pub(crate) fn reserve(out: &mut Vec<u8>, additional: usize) {
    use zeroize::Zeroize;

    if out.capacity() - out.len() >= additional {
        return;
    }
    let want = out
        .len()
        .saturating_add(additional)
        .max(out.capacity().saturating_mul(2));
    let mut bigger = Vec::with_capacity(want);
    bigger.extend_from_slice(out);
    // Zeroes the whole capacity of the old buffer, then it is dropped.
    out.zeroize();
    *out = bigger;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_keeps_content_and_grows_once() {
        let mut out = Vec::with_capacity(4);
        out.extend_from_slice(b"abc");
        reserve(&mut out, 1);
        assert_eq!(out.capacity(), 4, "enough room: no reallocation");
        reserve(&mut out, 100);
        assert_eq!(out, b"abc");
        assert!(out.capacity() >= 103);
    }
}
