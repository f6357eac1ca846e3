//! Framing: where a request line ends.
//!
//! A request is one line ended by `\n`, optionally preceded by `\r` (memcached accepts both).
//! The length cap is checked before anything else: a client that sends more than
//! `max_line` bytes without a newline is answered and dropped, so a connection never buffers
//! more than `max_line + 2` bytes of one request.

/// What the front of a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line.
    Line {
        /// The line without its `\r\n` or `\n`.
        line: &'a [u8],
        /// How many bytes of the buffer it used, terminator included.
        len: usize,
    },
    /// No newline yet, and not too long so far: read more.
    Incomplete,
    /// The line is longer than `max_line` bytes.
    TooLong,
}

/// Finds the first line of `buf`, looking at no more than `max_line + 2` bytes.
pub fn next_line(buf: &[u8], max_line: usize) -> Frame<'_> {
    let window = max_line.saturating_add(2);
    let head = &buf[..buf.len().min(window)];
    match head.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let line = &buf[..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > max_line {
                Frame::TooLong
            } else {
                Frame::Line { line, len: nl + 1 }
            }
        }
        None if buf.len() >= window => Frame::TooLong,
        None => Frame::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_with_lf_or_crlf() {
        assert_eq!(
            next_line(b"get a\r\nget b\n", 100),
            Frame::Line {
                line: b"get a",
                len: 7
            }
        );
        assert_eq!(
            next_line(b"get b\n", 100),
            Frame::Line {
                line: b"get b",
                len: 6
            }
        );
        assert_eq!(next_line(b"\r\n", 100), Frame::Line { line: b"", len: 2 });
        assert_eq!(next_line(b"get a\r", 100), Frame::Incomplete);
        assert_eq!(next_line(b"", 100), Frame::Incomplete);
        // Only one \r is part of the terminator.
        assert_eq!(
            next_line(b"a\r\r\n", 100),
            Frame::Line {
                line: b"a\r",
                len: 4
            }
        );
    }

    #[test]
    fn the_cap_is_exact() {
        // Exactly max_line bytes of content: accepted with either terminator.
        assert_eq!(
            next_line(b"abcd\r\n", 4),
            Frame::Line {
                line: b"abcd",
                len: 6
            }
        );
        assert_eq!(
            next_line(b"abcd\n", 4),
            Frame::Line {
                line: b"abcd",
                len: 5
            }
        );
        // One more byte is too long, whether or not the newline has arrived.
        assert_eq!(next_line(b"abcde\n", 4), Frame::TooLong);
        assert_eq!(next_line(b"abcde\r\n", 4), Frame::TooLong);
        assert_eq!(next_line(b"abcdef", 4), Frame::TooLong);
        // Waiting for the rest of a line that may still fit.
        assert_eq!(next_line(b"abcd\r", 4), Frame::Incomplete);
        assert_eq!(next_line(b"abcde", 4), Frame::Incomplete);
        // A huge buffer is not scanned past the cap.
        let big = vec![b'x'; 1 << 20];
        assert_eq!(next_line(&big, 8192), Frame::TooLong);
        assert_eq!(
            next_line(b"\n", usize::MAX),
            Frame::Line { line: b"", len: 1 }
        );
    }
}
