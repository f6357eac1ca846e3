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

/// The body of the binary error reply (memcached puts a short text there too).
const BINARY_REFUSED: &str = "Unknown command: stek serves the text protocol only";

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
    /// block that cannot be delimited, a binary-protocol request).
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

/// What to answer once a storage command's data block is swallowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    noreply: bool,
    malformed: Option<&'static str>,
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

    /// Whether the session waits for the rest of a storage command's data block: the client
    /// is in the middle of a request even when no input is buffered.
    pub fn awaiting_data(&self) -> bool {
        self.discard > 0
    }

    /// Answers the complete requests at the front of `input`, appending replies to `out`.
    pub fn process(&mut self, input: &[u8], ctx: &Context<'_>, out: &mut Vec<u8>) -> Progress {
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
                if let Some(p) = self.pending.take() {
                    cmd::write::after_data(p.noreply, p.malformed, out);
                }
                continue;
            }
            if out.len() >= FLUSH_AT {
                break Stop::Flush;
            }
            if input.get(pos) == Some(&binary::REQUEST_MAGIC) {
                // A binary-protocol client: no text line will ever come. Answer in its
                // protocol once its header is here, then close (see `binary`).
                let Some(h) = binary::header(&input[pos..]) else {
                    break Stop::NeedInput;
                };
                self.counters.client_errors += 1;
                cmd::reserve(out, REPLY_MARGIN);
                binary::write_error(&h, binary::Status::UnknownCommand, BINARY_REFUSED, out);
                pos += binary::HEADER_LEN;
                break Stop::Close;
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
                    self.pending = Some(Pending {
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
        self.counters.flush(ctx.stats);
        Progress {
            consumed: pos,
            stop,
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

    #[test]
    fn a_binary_request_gets_a_binary_error_and_closes() {
        let f = Fixture::new();
        // A text request, then a binary GET (opcode 0, opaque 7, key "k") and more after it.
        let mut input = b"version\r\n".to_vec();
        input.extend_from_slice(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 7]);
        input.extend_from_slice(&[0; 8]);
        input.extend_from_slice(b"kversion\r\n");
        let (out, closed, used) = f.run(&mut Session::new(), &input);
        assert!(closed);
        assert_eq!(used, 9 + binary::HEADER_LEN);
        let version = format!("VERSION {}\r\n", cmd::version::VERSION);
        let (text, bin) = out.split_at(version.len());
        assert_eq!(text, version.as_bytes());
        assert_eq!(&bin[..8], &[0x81, 0, 0, 0, 0, 0, 0x00, 0x81]);
        assert_eq!(&bin[12..16], &[0, 0, 0, 7]);
        assert_eq!(&bin[binary::HEADER_LEN..], BINARY_REFUSED.as_bytes());
        // Cut anywhere, the same reply once the header is complete, nothing before.
        let (bytewise, closed) = f.run_bytewise(&mut Session::new(), &input);
        assert!(closed);
        assert_eq!(bytewise, out);
        let (partial, closed, used) = f.run(&mut Session::new(), &input[9..9 + 23]);
        assert!(partial.is_empty() && !closed && used == 0);
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
            "STAT curr_items 10\r\n",
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
