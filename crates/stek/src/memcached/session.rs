//! The protocol state of one connection, without I/O.
//!
//! A [`Session`] takes the bytes a client sent and appends the replies to a buffer; the
//! connection does the reading and writing around it. Keeping the protocol free of I/O lets
//! the fuzzer and the unit tests drive it with any input cut at any point, and lets the
//! connection answer everything one read brought with one write.

use super::binary;
use super::cmd;
use super::frame::{self, Frame};
use super::parse::{parse_line, Command};
use super::server::Limits;
use super::stats::{Counters, Stats};
use super::table::KeyTable;

/// When the reply buffer holds this much, the session stops so the connection can write it
/// out: a client pipelining large replies without reading them costs the server at most this
/// (plus one value) per connection.
pub const FLUSH_AT: usize = 32 * 1024;

/// Room made in the reply buffer before each request: more than any reply but a `get`'s
/// values (which reserve their own), so no reply grows the buffer by reallocation, which
/// would leave earlier key bytes in freed memory.
const REPLY_MARGIN: usize = 4096;

/// What a session answers from.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The keys served.
    pub table: &'a KeyTable,
    /// The server's counters (for `stats`, and where this session's counts go).
    pub stats: &'a Stats,
    /// The server's limits.
    pub limits: &'a Limits,
}

/// Why [`Session::process`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Every complete request was answered; the rest of the input (if any) is the start of
    /// a request: keep it and read more.
    NeedInput,
    /// The reply buffer is full: write it out, then call again with the unconsumed input.
    Flush,
    /// Write the reply buffer out, then close the connection (`quit`, a line too long, a data
    /// block that cannot be delimited; binary QUIT, or a binary request that cannot be framed,
    /// is malformed or announces too large a body).
    Close,
}

/// The outcome of [`Session::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// How many bytes of the input were used; the caller drops them.
    pub consumed: usize,
    /// Why processing stopped.
    pub stop: Stop,
}

/// What to answer once a request's data (a text storage command's data block, a refused binary
/// request's body) is swallowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A text storage command: the refusal, or why its line was malformed.
    Text {
        noreply: bool,
        malformed: Option<&'static str>,
    },
    /// A binary request: the error for its header.
    Binary {
        header: binary::Header,
        status: binary::Status,
        message: &'static str,
    },
}

/// Which protocol a connection speaks: decided by its first byte (0x80: binary), for its whole
/// life, as memcached 1.6 does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Protocol {
    #[default]
    Undecided,
    Text,
    Binary,
}

/// The protocol state of one connection.
#[derive(Debug, Default)]
pub struct Session {
    /// Bytes of a data block (its `\r\n` included) still to swallow.
    discard: usize,
    /// The last two bytes swallowed: a data block must end with `\r\n`.
    tail: [u8; 2],
    /// The reply owed once the data block is swallowed.
    pending: Option<Pending>,
    /// Keys of the `get` at the front of the input already answered (see [`cmd::get`]).
    resume: usize,
    protocol: Protocol,
    counters: Counters,
}

impl Session {
    /// A session at the start of a connection.
    pub fn new() -> Session {
        Session::default()
    }

    /// Whether the session is in the middle of a multi-get cut by a flush: the connection then
    /// keeps answering from the same table, so that one `get` never mixes two rings.
    pub fn mid_request(&self) -> bool {
        self.resume > 0
    }

    /// Whether the session waits for the rest of a storage command's data block (or of a
    /// refused binary request's body): the client is in the middle of a request even when no
    /// input is buffered.
    pub fn awaiting_data(&self) -> bool {
        self.discard > 0
    }

    /// Answers the complete requests at the front of `input`, appending replies to `out`.
    pub fn process(&mut self, input: &[u8], ctx: &Context<'_>, out: &mut Vec<u8>) -> Progress {
        if self.protocol == Protocol::Undecided {
            match input.first() {
                None => {
                    return Progress {
                        consumed: 0,
                        stop: Stop::NeedInput,
                    }
                }
                Some(&binary::REQUEST_MAGIC) => self.protocol = Protocol::Binary,
                Some(_) => self.protocol = Protocol::Text,
            }
        }
        let progress = if self.protocol == Protocol::Binary {
            self.process_binary(input, ctx, out)
        } else {
            self.process_text(input, ctx, out)
        };
        self.counters.flush(ctx.stats);
        progress
    }

    /// [`Session::process`] for a text-protocol connection.
    fn process_text(&mut self, input: &[u8], ctx: &Context<'_>, out: &mut Vec<u8>) -> Progress {
        let mut pos = 0;
        let stop = loop {
            // Room for the reply is made before each one is written, and only then: a client
            // trickling an incomplete request costs no reply buffer.
            if self.discard > 0 {
                let chunk = &input[pos..pos + self.discard.min(input.len() - pos)];
                self.swallow(chunk);
                pos += chunk.len();
                if self.discard > 0 {
                    break Stop::NeedInput;
                }
                cmd::reserve(out, REPLY_MARGIN);
                if self.tail != *b"\r\n" {
                    // The client's length was wrong: what follows is not a request boundary.
                    self.counters.client_errors += 1;
                    out.extend_from_slice(b"CLIENT_ERROR bad data chunk\r\n");
                    break Stop::Close;
                }
                if let Some(Pending::Text { noreply, malformed }) = self.pending.take() {
                    cmd::write::after_data(noreply, malformed, out);
                }
                continue;
            }
            if out.len() >= FLUSH_AT {
                break Stop::Flush;
            }
            let (line, len) = match frame::next_line(&input[pos..], ctx.limits.max_line) {
                Frame::Incomplete => break Stop::NeedInput,
                Frame::TooLong => {
                    self.counters.client_errors += 1;
                    cmd::reserve(out, REPLY_MARGIN);
                    out.extend_from_slice(b"CLIENT_ERROR line too long\r\n");
                    break Stop::Close;
                }
                Frame::Line { line, len } => (line, len),
            };
            cmd::reserve(out, REPLY_MARGIN);
            match parse_line(line) {
                Err(e) => {
                    self.counters.client_errors += 1;
                    e.write_reply(out);
                    if e.closes() {
                        pos += len;
                        break Stop::Close;
                    }
                }
                Ok(Command::Get { keys, cas }) => {
                    let skip = self.resume;
                    let flush_at = FLUSH_AT;
                    let c = &mut self.counters;
                    if let Some(done) =
                        cmd::get::execute(keys, cas, skip, ctx.table, c, out, flush_at)
                    {
                        // The line stays in the input; the next call resumes after `done`.
                        self.resume = done;
                        break Stop::Flush;
                    }
                    self.resume = 0;
                }
                Ok(Command::Version) => cmd::version::execute(out),
                Ok(Command::Stats(group)) => {
                    // Our own counts first, so `stats` after a `get` on the same connection
                    // shows it.
                    self.counters.flush(ctx.stats);
                    cmd::stats::execute(group, ctx, out);
                }
                Ok(Command::Quit) => {
                    pos += len;
                    break Stop::Close;
                }
                Ok(Command::Store(s)) => {
                    self.counters.refused_writes += 1;
                    self.discard = s.data_len + 2;
                    self.tail = [0, 0];
                    self.pending = Some(Pending::Text {
                        noreply: s.noreply,
                        malformed: s.malformed,
                    });
                }
                Ok(Command::Refused { noreply }) => {
                    self.counters.refused_writes += 1;
                    cmd::write::refuse(noreply, out);
                }
            }
            pos += len;
        };
        Progress {
            consumed: pos,
            stop,
        }
    }

    /// [`Session::process`] for a binary-protocol connection (see [`binary`] for what each
    /// opcode gets). Every request is decided from its header alone; only a get's key (at most
    /// 250 bytes) is waited for, and a refused request's body is dropped as it arrives, never
    /// buffered.
    fn process_binary(&mut self, input: &[u8], ctx: &Context<'_>, out: &mut Vec<u8>) -> Progress {
        use binary::{Action, Body, Status, HEADER_LEN};

        let mut pos = 0;
        let stop = loop {
            if self.discard > 0 {
                let n = self.discard.min(input.len() - pos);
                self.discard -= n;
                pos += n;
                if self.discard > 0 {
                    break Stop::NeedInput;
                }
                self.finish_binary_refusal(out);
                continue;
            }
            if out.len() >= FLUSH_AT {
                break Stop::Flush;
            }
            let Some(h) = binary::header(&input[pos..]) else {
                break Stop::NeedInput;
            };
            match binary::decide(&h) {
                Action::Get(get) => {
                    // The body is the key alone, at most 250 bytes (`decide` checked).
                    let end = pos + HEADER_LEN + h.body_len as usize;
                    let Some(key) = input.get(pos + HEADER_LEN..end) else {
                        break Stop::NeedInput;
                    };
                    cmd::get::execute_binary(&h, get, key, ctx.table, &mut self.counters, out);
                    pos = end;
                }
                Action::Noop => {
                    cmd::reserve(out, REPLY_MARGIN);
                    binary::write_response(&h, Status::Ok, 0, Body::default(), out);
                    pos += HEADER_LEN;
                }
                Action::Version => {
                    cmd::reserve(out, REPLY_MARGIN);
                    let body = Body {
                        value: cmd::version::VERSION.as_bytes(),
                        ..Body::default()
                    };
                    binary::write_response(&h, Status::Ok, 0, body, out);
                    pos += HEADER_LEN;
                }
                Action::Quit { quiet } => {
                    if !quiet {
                        cmd::reserve(out, REPLY_MARGIN);
                        binary::write_response(&h, Status::Ok, 0, Body::default(), out);
                    }
                    pos += HEADER_LEN;
                    break Stop::Close;
                }
                Action::Refuse { status, message } => {
                    if message == binary::READ_ONLY_MESSAGE {
                        self.counters.refused_writes += 1;
                    } else {
                        self.counters.client_errors += 1;
                    }
                    pos += HEADER_LEN;
                    // At most `binary::MAX_BODY` (`decide` checked): dropped as it arrives.
                    self.discard = h.body_len as usize;
                    self.pending = Some(Pending::Binary {
                        header: h,
                        status,
                        message,
                    });
                    if self.discard == 0 {
                        self.finish_binary_refusal(out);
                    }
                }
                Action::Close(status) => {
                    self.counters.client_errors += 1;
                    cmd::reserve(out, REPLY_MARGIN);
                    binary::write_error(&h, status, "", out);
                    pos += HEADER_LEN;
                    break Stop::Close;
                }
            }
        };
        Progress {
            consumed: pos,
            stop,
        }
    }

    /// Writes the error owed to a refused binary request whose body is dropped.
    fn finish_binary_refusal(&mut self, out: &mut Vec<u8>) {
        if let Some(Pending::Binary {
            header,
            status,
            message,
        }) = self.pending.take()
        {
            cmd::reserve(out, REPLY_MARGIN);
            binary::write_error(&header, status, message, out);
        }
    }

    /// Drops `chunk` of a data block, remembering its last two bytes.
    fn swallow(&mut self, chunk: &[u8]) {
        self.discard -= chunk.len();
        match chunk {
            [] => {}
            [b] => self.tail = [self.tail[1], *b],
            [.., a, b] => self.tail = [*a, *b],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memcached::table::tests::ring_with;

    struct Fixture {
        table: KeyTable,
        stats: Stats,
        limits: Limits,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                table: KeyTable::from_ring(&ring_with(&[99, 100, 101])),
                stats: Stats::new(),
                limits: Limits {
                    max_line: 64,
                    ..Limits::default()
                },
            }
        }

        fn ctx(&self) -> Context<'_> {
            Context {
                table: &self.table,
                stats: &self.stats,
                limits: &self.limits,
            }
        }

        /// Feeds `input` in one piece, flushing as a connection would; returns the replies and
        /// whether the session closed.
        fn run(&self, session: &mut Session, input: &[u8]) -> (Vec<u8>, bool, usize) {
            let mut out = Vec::new();
            let mut pos = 0;
            loop {
                let p = session.process(&input[pos..], &self.ctx(), &mut out);
                pos += p.consumed;
                match p.stop {
                    Stop::Flush => continue,
                    Stop::NeedInput => return (out, false, pos),
                    Stop::Close => return (out, true, pos),
                }
            }
        }

        /// Feeds `input` one byte at a time (the worst a network can cut it).
        fn run_bytewise(&self, session: &mut Session, input: &[u8]) -> (Vec<u8>, bool) {
            let mut out = Vec::new();
            let mut buffered = Vec::new();
            for &b in input {
                buffered.push(b);
                loop {
                    let p = session.process(&buffered, &self.ctx(), &mut out);
                    buffered.drain(..p.consumed);
                    match p.stop {
                        Stop::Flush => continue,
                        Stop::NeedInput => break,
                        Stop::Close => return (out, true),
                    }
                }
            }
            (out, false)
        }
    }

    fn value_block(key: &str, value: &[u8]) -> Vec<u8> {
        let mut v = format!("VALUE {key} 0 {}\r\n", value.len()).into_bytes();
        v.extend_from_slice(value);
        v.extend_from_slice(b"\r\n");
        v
    }

    fn ticket(f: &Fixture, slot: u64) -> Vec<u8> {
        f.table
            .get(format!("ticket-key/{}", slot * 4).as_bytes())
            .unwrap()
            .value()
            .to_vec()
    }

    #[test]
    fn pipelined_gets_are_answered_in_order() {
        let f = Fixture::new();
        let k400 = ticket(&f, 100);
        let k396 = ticket(&f, 99);
        let input = b"get ticket-key/400\r\nget nope ticket-key/396 ticket-key/400\nversion\r\n";
        let mut want = value_block("ticket-key/400", &k400);
        want.extend_from_slice(b"END\r\n");
        want.extend_from_slice(&value_block("ticket-key/396", &k396));
        want.extend_from_slice(&value_block("ticket-key/400", &k400));
        want.extend_from_slice(b"END\r\n");
        want.extend_from_slice(format!("VERSION {}\r\n", cmd::version::VERSION).as_bytes());
        let (out, closed, used) = f.run(&mut Session::new(), input);
        assert_eq!(out, want);
        assert!(!closed);
        assert_eq!(used, input.len());
        let (bytewise, _) = f.run_bytewise(&mut Session::new(), input);
        assert_eq!(bytewise, want);
        let s = f.stats.snapshot();
        assert_eq!((s.cmd_get, s.get_hits, s.get_misses), (8, 6, 2));
    }

    #[test]
    fn gets_adds_the_cas_unique() {
        let f = Fixture::new();
        let (out, _, _) = f.run(&mut Session::new(), b"gets ticket-key/400\r\n");
        let head = out.split(|&b| b == b'\n').next().unwrap();
        let words: Vec<&[u8]> = head.trim_ascii_end().split(|&b| b == b' ').collect();
        assert_eq!(words.len(), 5, "{:?}", String::from_utf8_lossy(head));
        assert_eq!(words[3], b"48");
        let cas: u64 = std::str::from_utf8(words[4]).unwrap().parse().unwrap();
        assert_ne!(cas, 0);
    }

    #[test]
    fn an_incomplete_request_waits() {
        let f = Fixture::new();
        let mut s = Session::new();
        let (out, closed, used) = f.run(&mut s, b"version\r\nget ticket-k");
        assert!(out.starts_with(b"VERSION "));
        assert!(!closed);
        assert_eq!(used, 9);
    }

    #[test]
    fn writes_are_refused_and_their_data_swallowed() {
        let f = Fixture::new();
        // The data block holds what looks like commands: they must not run.
        let input = b"set ticket-key/400 0 0 13\r\nget x\r\nquit\r\n\r\n\
            set k 0 0 2 noreply\r\nab\r\n\
            delete ticket-key/400\r\n\
            incr k 1 noreply\r\n\
            cas k 0 0 1 5\r\nx\r\n\
            set k zz 0 1\r\nx\r\n\
            set k 0 0 1 noreply\r\nx\r\n\
            ms k 2 q\r\nab\r\n\
            version\r\n";
        let (out, closed, _) = f.run(&mut Session::new(), input);
        let ro = "SERVER_ERROR read-only: stek serves ticket keys only\r\n";
        let want = format!(
            "{ro}{ro}{ro}CLIENT_ERROR bad flags\r\nVERSION {}\r\n",
            cmd::version::VERSION
        );
        assert_eq!(String::from_utf8_lossy(&out), want);
        assert!(!closed);
        let (bytewise, _) = f.run_bytewise(&mut Session::new(), input);
        assert_eq!(bytewise, out);
        assert_eq!(f.stats.snapshot().refused_writes, 16);
    }

    #[test]
    fn a_wrong_data_length_closes() {
        let f = Fixture::new();
        let (out, closed, _) = f.run(&mut Session::new(), b"set k 0 0 2\r\nabc\r\nversion\r\n");
        assert_eq!(out, b"CLIENT_ERROR bad data chunk\r\n");
        assert!(closed);
        let (out, closed, _) = f.run(&mut Session::new(), b"set k 0 0 999999999\r\nversion\r\n");
        assert!(out.starts_with(b"CLIENT_ERROR data length"));
        assert!(closed);
    }

    /// A binary request: header (opaque = `opaque`) and body (extras, key, value).
    fn bin(opcode: u8, opaque: u32, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
        let body = extras.len() + key.len() + value.len();
        let mut r =
            binary::tests::request(opcode, key.len() as u16, extras.len() as u8, body as u32)
                .to_vec();
        r[12..16].copy_from_slice(&opaque.to_be_bytes());
        r.extend_from_slice(extras);
        r.extend_from_slice(key);
        r.extend_from_slice(value);
        r
    }

    /// One binary response cut from the front of `out`: (opcode, status, opaque, extras, key,
    /// value), and the rest.
    #[allow(clippy::type_complexity)]
    fn response(out: &[u8]) -> ((u8, u16, u32, &[u8], &[u8], &[u8]), &[u8]) {
        assert_eq!(out[0], binary::RESPONSE_MAGIC, "{out:?}");
        let key_len = usize::from(u16::from_be_bytes([out[2], out[3]]));
        let extras_len = usize::from(out[4]);
        let status = u16::from_be_bytes([out[6], out[7]]);
        let body = u32::from_be_bytes(out[8..12].try_into().unwrap()) as usize;
        let opaque = u32::from_be_bytes(out[12..16].try_into().unwrap());
        let b = &out[binary::HEADER_LEN..binary::HEADER_LEN + body];
        let (extras, rest) = b.split_at(extras_len);
        let (key, value) = rest.split_at(key_len);
        (
            (out[1], status, opaque, extras, key, value),
            &out[binary::HEADER_LEN + body..],
        )
    }

    #[test]
    fn binary_gets_quiet_gets_and_noop_pipeline() {
        let f = Fixture::new();
        let k400 = ticket(&f, 100);
        let mut input = Vec::new();
        input.extend(bin(binary::opcode::GETQ, 1, &[], b"nope", &[]));
        input.extend(bin(binary::opcode::GETKQ, 2, &[], b"ticket-key/400", &[]));
        input.extend(bin(binary::opcode::GETKQ, 3, &[], b"nope", &[]));
        input.extend(bin(binary::opcode::GETQ, 4, &[], b"ticket-key/400", &[]));
        input.extend(bin(binary::opcode::NOOP, 5, &[], &[], &[]));
        input.extend(bin(binary::opcode::GET, 6, &[], b"nope", &[]));
        input.extend(bin(binary::opcode::GETK, 7, &[], b"nope", &[]));
        input.extend(bin(binary::opcode::GET, 8, &[], b"ticket-key/400", &[]));
        input.extend(bin(binary::opcode::VERSION, 9, &[], &[], &[]));
        let (out, closed, used) = f.run(&mut Session::new(), &input);
        assert!(!closed);
        assert_eq!(used, input.len());
        let cas = f.table.get(b"ticket-key/400").unwrap().cas();

        let (r, rest) = response(&out);
        assert_eq!(
            r,
            (0x0d, 0, 2, &[0u8; 4][..], &b"ticket-key/400"[..], &k400[..])
        );
        assert_eq!(u64::from_be_bytes(out[16..24].try_into().unwrap()), cas);
        let (r, rest) = response(rest);
        assert_eq!(r, (0x09, 0, 4, &[0u8; 4][..], &b""[..], &k400[..]));
        let (r, rest) = response(rest);
        assert_eq!(r, (0x0a, 0, 5, &b""[..], &b""[..], &b""[..]));
        let (r, rest) = response(rest);
        assert_eq!(r, (0x00, 1, 6, &b""[..], &b""[..], &b"Not found"[..]));
        let (r, rest) = response(rest);
        assert_eq!(r, (0x0c, 1, 7, &b""[..], &b"nope"[..], &b""[..]));
        let (r, rest) = response(rest);
        assert_eq!(r, (0x00, 0, 8, &[0u8; 4][..], &b""[..], &k400[..]));
        let (r, rest) = response(rest);
        assert_eq!(
            r,
            (
                0x0b,
                0,
                9,
                &b""[..],
                &b""[..],
                cmd::version::VERSION.as_bytes()
            )
        );
        assert!(rest.is_empty());
        // Cut anywhere, the same replies.
        let (bytewise, closed) = f.run_bytewise(&mut Session::new(), &input);
        assert!(!closed);
        assert_eq!(bytewise, out);
        let s = f.stats.snapshot();
        assert_eq!((s.cmd_get, s.get_hits, s.get_misses), (14, 6, 8));
    }

    #[test]
    fn binary_nghttpx_fetch() {
        // What nghttpx sends (`MemcachedConnection::make_request`): GET, no extras, opaque 0.
        let f = Fixture::new();
        let input = bin(binary::opcode::GET, 0, &[], b"nghttpx:tls-ticket-key", &[]);
        let (out, closed, _) = f.run(&mut Session::new(), &input);
        assert!(!closed);
        let (r, rest) = response(&out);
        assert!(rest.is_empty());
        let (op, status, _, extras, key, value) = r;
        // nghttpx wants: the same opcode, no key, extras on a successful GET, body <= 16 KiB.
        assert_eq!((op, status, extras.len(), key.len()), (0, 0, 4, 0));
        assert_eq!(
            value,
            f.table.get(b"nghttpx:tls-ticket-key").unwrap().value()
        );
        assert!(out.len() - binary::HEADER_LEN <= 16 * 1024);
    }

    #[test]
    fn every_binary_opcode_is_answered_or_closes() {
        let f = Fixture::new();
        for op in 0..=u8::MAX {
            // The opcode with a 3-byte key and 2 bytes of value, then a NOOP.
            let mut input = bin(op, 0x0102_0304, &[], b"abc", b"xy");
            input.extend(bin(binary::opcode::NOOP, 77, &[], &[], &[]));
            let (out, closed, used) = f.run(&mut Session::new(), &input);
            let (r, rest) = response(&out);
            assert_eq!(r.0, op);
            assert_eq!(r.2, 0x0102_0304);
            match op {
                // Reads with a body that is not exactly their key: memcached's protocol error.
                0x00 | 0x09 | 0x0c | 0x0d | 0x0a | 0x0b | 0x07 | 0x17 => {
                    assert_eq!(r.1, 0x0004, "{op:#x}");
                    assert!(closed && rest.is_empty(), "{op:#x}");
                    assert_eq!(used, binary::HEADER_LEN);
                }
                _ => {
                    assert!(r.1 == 0x0081 || r.1 == 0x0083, "{op:#x}: {:#x}", r.1);
                    assert!(!closed, "{op:#x}");
                    assert_eq!(used, input.len());
                    // The body was dropped and the NOOP after it answered.
                    let (noop, rest) = response(rest);
                    assert_eq!((noop.0, noop.1, noop.2), (0x0a, 0, 77));
                    assert!(rest.is_empty());
                }
            }
        }
        // The bare ones, bare.
        for (op, closes, answered) in [
            (binary::opcode::NOOP, false, true),
            (binary::opcode::VERSION, false, true),
            (binary::opcode::QUIT, true, true),
            (binary::opcode::QUITQ, true, false),
        ] {
            let (out, closed, _) = f.run(&mut Session::new(), &bin(op, 1, &[], &[], &[]));
            assert_eq!(closed, closes, "{op:#x}");
            assert_eq!(!out.is_empty(), answered, "{op:#x}");
        }
    }

    #[test]
    fn binary_writes_are_refused_after_their_body() {
        let f = Fixture::new();
        // A SET of ticket-key/400 whose value looks like a GET: it must not run.
        let smuggled = bin(binary::opcode::GET, 9, &[], b"ticket-key/400", &[]);
        let mut input = bin(0x01, 5, &[0; 8], b"ticket-key/400", &smuggled);
        input.extend(bin(0x11, 6, &[0; 8], b"k", b"v"));
        input.extend(bin(binary::opcode::NOOP, 7, &[], &[], &[]));
        let (out, closed, _) = f.run(&mut Session::new(), &input);
        assert!(!closed);
        let (r, rest) = response(&out);
        assert_eq!((r.0, r.1, r.2), (0x01, 0x0083, 5));
        assert_eq!(r.5, binary::READ_ONLY_MESSAGE.as_bytes());
        // SETQ: quiet hides successes only.
        let (r, rest) = response(rest);
        assert_eq!((r.0, r.1, r.2), (0x11, 0x0083, 6));
        let (r, rest) = response(rest);
        assert_eq!((r.0, r.1, r.2), (0x0a, 0, 7));
        assert!(rest.is_empty());
        let (bytewise, _) = f.run_bytewise(&mut Session::new(), &input);
        assert_eq!(bytewise, out);
        assert_eq!(f.stats.snapshot().refused_writes, 4);
        assert_eq!(f.stats.snapshot().cmd_get, 0);
    }

    #[test]
    fn an_oversize_binary_body_closes_before_it_is_read() {
        let f = Fixture::new();
        let mut input = binary::tests::request(0x01, 3, 8, 50_000_000).to_vec();
        input.extend_from_slice(&[b'x'; 100]);
        let (out, closed, used) = f.run(&mut Session::new(), &input);
        assert!(closed);
        assert_eq!(used, binary::HEADER_LEN);
        let (r, rest) = response(&out);
        assert_eq!((r.0, r.1), (0x01, 0x0003));
        assert!(rest.is_empty());
        // A session never waits for such a body: its header alone is answered.
        let (out, closed, _) = f.run(&mut Session::new(), &input[..binary::HEADER_LEN]);
        assert!(closed && !out.is_empty());
    }

    #[test]
    fn a_bad_magic_after_binary_requests_closes() {
        let f = Fixture::new();
        let mut input = bin(binary::opcode::NOOP, 1, &[], &[], &[]);
        input.extend_from_slice(b"get ticket-key/400\r\n0123456789abcdef");
        let (out, closed, _) = f.run(&mut Session::new(), &input);
        assert!(closed);
        let (r, rest) = response(&out);
        assert_eq!((r.0, r.1), (0x0a, 0));
        let (r, rest) = response(rest);
        assert_eq!(r.1, 0x0004);
        assert!(rest.is_empty());
        // A half header waits, answering nothing.
        let (out, closed, used) = f.run(&mut Session::new(), &input[..23]);
        assert!(out.is_empty() && !closed && used == 0);
    }

    #[test]
    fn a_text_connection_stays_text() {
        let f = Fixture::new();
        // After a text request, a line starting with 0x80 is an unknown text command.
        let mut input = b"version\r\n".to_vec();
        input.extend_from_slice(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4]);
        input.extend_from_slice(b"\r\nversion\r\n");
        let (out, closed, used) = f.run(&mut Session::new(), &input);
        let version = format!("VERSION {}\r\n", cmd::version::VERSION);
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("{version}ERROR\r\n{version}")
        );
        assert!(!closed);
        assert_eq!(used, input.len());
    }

    #[test]
    fn a_long_line_closes_without_waiting_for_its_end() {
        let f = Fixture::new();
        let mut input = b"version\r\nget ".to_vec();
        input.extend_from_slice(&[b'a'; 100]);
        let (out, closed, _) = f.run(&mut Session::new(), &input);
        let want = format!(
            "VERSION {}\r\nCLIENT_ERROR line too long\r\n",
            cmd::version::VERSION
        );
        assert_eq!(String::from_utf8_lossy(&out), want);
        assert!(closed);
    }

    #[test]
    fn errors_keep_the_connection() {
        let f = Fixture::new();
        let input = b"bogus\r\n\r\nGET a\r\nget\r\nget a\x01b\r\nget ticket-key/400\r\n";
        let (out, closed, _) = f.run(&mut Session::new(), input);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(
                "ERROR\r\nERROR\r\nERROR\r\nCLIENT_ERROR get needs at least one key\r\n\
                 CLIENT_ERROR key contains a control character\r\nVALUE ticket-key/400 0 48\r\n"
            ),
            "{text}"
        );
        assert!(!closed);
        assert_eq!(f.stats.snapshot().client_errors, 5);
    }

    #[test]
    fn quit_closes_without_reply() {
        let f = Fixture::new();
        let (out, closed, used) = f.run(&mut Session::new(), b"quit\r\nversion\r\n");
        assert!(out.is_empty());
        assert!(closed);
        assert_eq!(used, 6);
    }

    #[test]
    fn a_huge_multiget_is_answered_in_bounded_pieces() {
        let mut f = Fixture::new();
        f.limits.max_line = 8192;
        let mut line = b"get".to_vec();
        while line.len() < 8000 {
            line.extend_from_slice(b" ticket-ring/nginx-80");
        }
        line.extend_from_slice(b"\r\n");
        let n = (line.len() - 5) / 21;
        let mut s = Session::new();
        let mut pos = 0;
        let mut total = 0;
        let mut flushes = 0;
        loop {
            let mut out = Vec::new();
            let p = s.process(&line[pos..], &f.ctx(), &mut out);
            pos += p.consumed;
            // One piece holds at most FLUSH_AT plus one value.
            assert!(out.len() < FLUSH_AT + 5 * 80 + 64, "{}", out.len());
            total += out.len();
            match p.stop {
                Stop::Flush => {
                    assert!(s.mid_request());
                    flushes += 1;
                }
                Stop::NeedInput => break,
                Stop::Close => panic!("closed"),
            }
        }
        assert!(
            flushes >= total / (FLUSH_AT + 500),
            "{flushes} flushes for {total} bytes"
        );
        assert!(!s.mid_request());
        assert_eq!(pos, line.len());
        let block = value_block("ticket-ring/nginx-80", &[0; 400]).len();
        assert_eq!(total, n * block + 5);
        assert_eq!(f.stats.snapshot().get_hits, n as u64);
    }

    #[test]
    fn stats_and_schedule_tell_no_secrets() {
        let f = Fixture::new();
        let (out, _, _) = f.run(
            &mut Session::new(),
            b"get ticket-key/400\r\nstats\r\nstats settings\r\nstats slabs\r\nget ticket-schedule\r\n",
        );
        let text = String::from_utf8_lossy(&out);
        for want in [
            "STAT pid ",
            "STAT cmd_get 1\r\n",
            "STAT get_hits 1\r\n",
            "STAT curr_items 11\r\n",
            "STAT ring_slot 100\r\n",
            "STAT ring_start 400\r\n",
            "STAT ring_shared_keys 3\r\n",
            "STAT ring_ahead_keys 0\r\n",
            "STAT maxconns 4096\r\n",
            "STAT max_line 64\r\n",
            "END\r\nEND\r\nVALUE ticket-schedule 0 ",
        ] {
            assert!(text.contains(want), "{want:?} missing from {text}");
        }
        // No key bytes beyond the first reply.
        let key = ticket(&f, 100);
        let after_first = &out[80..];
        assert!(!after_first.windows(16).any(|w| w == &key[16..32]));
    }
}
