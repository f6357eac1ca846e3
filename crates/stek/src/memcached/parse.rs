//! The request parser: one request line in, one [`Command`] out.
//!
//! [`parse_line`] is a pure function over bytes (no I/O, no allocation, no panics on any
//! input), so it can be fuzzed and unit-tested alone. It follows the memcached text protocol
//! (`protocol.txt` of memcached 1.6): tokens are separated by runs of spaces, command names are
//! case-sensitive, keys are 1 to 250 bytes without control characters or spaces.
//!
//! The line it is given has already been cut by [`super::frame`]: no `\r\n`, at most
//! [`super::Limits::max_line`] bytes. Storage commands announce a data block that follows the
//! line; the parser only reads its announced length ([`Store::data_len`]) so that the session
//! can swallow it: the data never reaches the parser.

use core::fmt;

/// The longest key memcached accepts (`KEY_MAX_LENGTH`).
pub const MAX_KEY_LEN: usize = 250;

/// The largest data block a storage command may announce. Storage is refused anyway; the cap
/// only bounds how long a connection spends swallowing data nobody will keep (memcached's
/// default item size limit is the same 1 MiB).
pub const MAX_DATA_BLOCK: usize = 1024 * 1024;

/// The reply to every command that would change data.
pub const READ_ONLY: &[u8] = b"SERVER_ERROR read-only: stek serves ticket keys only\r\n";

/// One request, borrowed from the line it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `get <key>*` or `gets <key>*`: at least one key, every key already validated.
    Get {
        /// The keys, in request order (duplicates allowed, as in memcached).
        keys: Keys<'a>,
        /// `gets`: each `VALUE` line carries a cas unique.
        cas: bool,
    },
    /// `version`.
    Version,
    /// `stats` with an optional group.
    Stats(StatsGroup),
    /// `quit`: close the connection without a reply.
    Quit,
    /// A storage command (`set`, `add`, `replace`, `append`, `prepend`, `cas`, meta `ms`). Its
    /// data block follows the line and must be swallowed before the reply.
    Store(Store),
    /// A command that would change data and carries no data block (`delete`, `incr`, `decr`,
    /// `touch`, `gat`, `gats`, `flush_all`, `verbosity`, meta `md`/`ma`).
    Refused {
        /// Whether the client asked for no reply.
        noreply: bool,
    },
}

/// The `stats` groups stek answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsGroup {
    /// Plain `stats`: counters and the served ring.
    General,
    /// `stats settings`: the server's limits.
    Settings,
    /// `stats items`, `stats slabs`, `stats sizes`, `stats conns`: memcached's storage
    /// internals, which stek does not have; answered with an empty list so monitoring tools
    /// that poll them keep working.
    Empty,
}

/// A refused storage command: how much data to swallow and what to answer after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Store {
    /// The announced data block length, without its trailing `\r\n` (at most
    /// [`MAX_DATA_BLOCK`]).
    pub data_len: usize,
    /// Whether the client asked for no reply (`noreply`, or meta `q`).
    pub noreply: bool,
    /// What else is wrong with the command line, if anything: answered with `CLIENT_ERROR`
    /// (never suppressed by `noreply`) once the data block is swallowed.
    pub malformed: Option<&'static str>,
}

/// The keys of a `get`, split lazily from the line (no allocation per request).
#[derive(Clone, PartialEq, Eq)]
pub struct Keys<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Keys<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let mut t = Tokens { rest: self.rest };
        let key = t.next();
        self.rest = t.rest;
        key
    }
}

impl fmt::Debug for Keys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are public names (`ticket-key/…`), never key bytes.
        f.debug_list()
            .entries(self.clone().map(String::from_utf8_lossy))
            .finish()
    }
}

/// Why a line is not a valid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// The first token names no command stek knows (memcached answers `ERROR`).
    UnknownCommand,
    /// The command is known but its arguments are wrong; the connection goes on.
    Malformed(&'static str),
    /// A storage command whose data block length is missing, not a number or over
    /// [`MAX_DATA_BLOCK`]: the data that follows cannot be told apart from commands, so the
    /// connection must close after the reply.
    BadDataBlock(&'static str),
}

impl ParseError {
    /// Whether the connection must close after the reply.
    pub fn closes(self) -> bool {
        matches!(self, ParseError::BadDataBlock(_))
    }

    /// Appends the protocol reply to `out`.
    pub fn write_reply(self, out: &mut Vec<u8>) {
        match self {
            ParseError::UnknownCommand => out.extend_from_slice(b"ERROR\r\n"),
            ParseError::Malformed(why) | ParseError::BadDataBlock(why) => {
                out.extend_from_slice(b"CLIENT_ERROR ");
                out.extend_from_slice(why.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::UnknownCommand => f.write_str("unknown command"),
            ParseError::Malformed(why) => write!(f, "malformed request: {why}"),
            ParseError::BadDataBlock(why) => write!(f, "bad data block: {why}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Space-separated tokens: memcached's tokenizer skips runs of spaces; any other byte
/// (tab, control characters) belongs to a token and is judged by whoever reads it.
#[derive(Clone)]
struct Tokens<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|&b| b != b' ')?;
        let rest = &self.rest[start..];
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        self.rest = &rest[end..];
        Some(&rest[..end])
    }
}

/// Whether `key` is a valid memcached key: 1 to 250 bytes, none of them a control character,
/// a space or DEL.
pub fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// Parses a decimal number of at most `max` (no sign, no spaces, no leading `+`).
fn number(token: &[u8], max: u64) -> Option<u64> {
    if token.is_empty() || token.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in token {
        let d = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n = n.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    (n <= max).then_some(n)
}

/// A signed decimal (memcached's exptime may be negative: "expire now").
fn signed(token: &[u8]) -> bool {
    let digits = token.strip_prefix(b"-").unwrap_or(token);
    number(digits, u64::MAX).is_some()
}

/// Parses one request line (without its `\r\n` or `\n`).
pub fn parse_line(line: &[u8]) -> Result<Command<'_>, ParseError> {
    let mut tokens = Tokens { rest: line };
    let Some(name) = tokens.next() else {
        // An empty line: memcached answers `ERROR`.
        return Err(ParseError::UnknownCommand);
    };
    match name {
        b"get" => get(tokens, false),
        b"gets" => get(tokens, true),
        b"version" => no_args(tokens, Command::Version),
        b"quit" => no_args(tokens, Command::Quit),
        b"stats" => stats(tokens),
        b"set" | b"add" | b"replace" | b"append" | b"prepend" => store(tokens, false),
        b"cas" => store(tokens, true),
        b"ms" => meta_store(tokens),
        b"delete" | b"incr" | b"decr" | b"touch" | b"gat" | b"gats" | b"flush_all"
        | b"verbosity" | b"md" | b"ma" => refused(tokens),
        _ => Err(ParseError::UnknownCommand),
    }
}

fn get(tokens: Tokens<'_>, cas: bool) -> Result<Command<'_>, ParseError> {
    let keys = Keys { rest: tokens.rest };
    let mut any = false;
    for key in keys.clone() {
        if key.len() > MAX_KEY_LEN {
            return Err(ParseError::Malformed("key longer than 250 bytes"));
        }
        if !valid_key(key) {
            return Err(ParseError::Malformed("key contains a control character"));
        }
        any = true;
    }
    if !any {
        return Err(ParseError::Malformed("get needs at least one key"));
    }
    Ok(Command::Get { keys, cas })
}

fn no_args<'a>(mut tokens: Tokens<'a>, cmd: Command<'a>) -> Result<Command<'a>, ParseError> {
    match tokens.next() {
        None => Ok(cmd),
        Some(_) => Err(ParseError::Malformed("this command takes no arguments")),
    }
}

fn stats(mut tokens: Tokens<'_>) -> Result<Command<'_>, ParseError> {
    let group = match tokens.next() {
        None => StatsGroup::General,
        Some(b"settings") => StatsGroup::Settings,
        Some(b"items" | b"slabs" | b"sizes" | b"conns") => StatsGroup::Empty,
        Some(b"reset") => return Ok(Command::Refused { noreply: false }),
        Some(_) => return Err(ParseError::Malformed("unknown stats group")),
    };
    match tokens.next() {
        None => Ok(Command::Stats(group)),
        Some(_) => Err(ParseError::Malformed("stats takes at most one argument")),
    }
}

/// `set <key> <flags> <exptime> <bytes> [noreply]`, `cas` with a cas unique after `<bytes>`.
fn store(tokens: Tokens<'_>, cas: bool) -> Result<Command<'_>, ParseError> {
    // At most 7 tokens matter; more is malformed but the length may still be read.
    let mut t: [&[u8]; 7] = [b""; 7];
    let mut n = 0;
    for tok in tokens {
        if n < t.len() {
            t[n] = tok;
        }
        n += 1;
    }
    let (args, with_noreply) = if cas { (5, 6) } else { (4, 5) };
    if n < args {
        return Err(ParseError::BadDataBlock(
            "storage command without a data length",
        ));
    }
    let data_len = number(t[3], MAX_DATA_BLOCK as u64).ok_or(ParseError::BadDataBlock(
        "data length is not a number of at most 1048576",
    ))?;
    // Bounded by MAX_DATA_BLOCK just above, so it fits any usize.
    let data_len = usize::try_from(data_len).unwrap_or(MAX_DATA_BLOCK);
    let noreply = n == with_noreply && t[args] == b"noreply";
    let malformed = if n > with_noreply || (n == with_noreply && !noreply) {
        Some("bad command line format")
    } else if !valid_key(t[0]) {
        Some("bad key")
    } else if number(t[1], u64::from(u32::MAX)).is_none() {
        Some("bad flags")
    } else if !signed(t[2]) {
        Some("bad exptime")
    } else if cas && number(t[4], u64::MAX).is_none() {
        Some("bad cas unique")
    } else {
        None
    };
    Ok(Command::Store(Store {
        data_len,
        noreply,
        malformed,
    }))
}

/// Meta set: `ms <key> <datalen> <flag>*`; the `q` flag asks for no reply.
fn meta_store(mut tokens: Tokens<'_>) -> Result<Command<'_>, ParseError> {
    let key = tokens.next().unwrap_or(b"");
    let len = tokens
        .next()
        .ok_or(ParseError::BadDataBlock("ms without a data length"))?;
    let data_len = number(len, MAX_DATA_BLOCK as u64).ok_or(ParseError::BadDataBlock(
        "data length is not a number of at most 1048576",
    ))?;
    let data_len = usize::try_from(data_len).unwrap_or(MAX_DATA_BLOCK);
    let noreply = tokens.any(|f| f == b"q");
    Ok(Command::Store(Store {
        data_len,
        noreply,
        malformed: (!valid_key(key)).then_some("bad key"),
    }))
}

/// Commands that would change data and have no data block. Their arguments are not checked:
/// they are refused whatever they say; only `noreply` (last token) or meta `q` is honoured.
fn refused(tokens: Tokens<'_>) -> Result<Command<'_>, ParseError> {
    let noreply = tokens.last().is_some_and(|t| t == b"noreply" || t == b"q");
    Ok(Command::Refused { noreply })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(line: &[u8]) -> Vec<&[u8]> {
        match parse_line(line) {
            Ok(Command::Get { keys, .. }) => keys.collect(),
            other => panic!("not a get: {other:?}"),
        }
    }

    #[test]
    fn get_splits_keys_on_runs_of_spaces() {
        assert_eq!(keys(b"get a"), vec![&b"a"[..]]);
        assert_eq!(
            keys(b"get  ticket-key/1  ticket-ring/nginx-80 a "),
            vec![&b"ticket-key/1"[..], b"ticket-ring/nginx-80", b"a"]
        );
        assert!(matches!(
            parse_line(b"gets x"),
            Ok(Command::Get { cas: true, .. })
        ));
        assert!(matches!(
            parse_line(b"get x"),
            Ok(Command::Get { cas: false, .. })
        ));
    }

    #[test]
    fn get_rejects_bad_keys() {
        assert_eq!(
            parse_line(b"get"),
            Err(ParseError::Malformed("get needs at least one key"))
        );
        assert_eq!(
            parse_line(b"get   "),
            Err(ParseError::Malformed("get needs at least one key"))
        );
        let long = [b'k'; 251];
        let mut line = b"get ".to_vec();
        line.extend_from_slice(&long);
        assert_eq!(
            parse_line(&line),
            Err(ParseError::Malformed("key longer than 250 bytes"))
        );
        line.pop();
        assert!(parse_line(&line).is_ok(), "250 bytes is allowed");
        for bad in [
            &b"get a\tb"[..],
            b"get a\x00",
            b"get \x7f",
            b"get ok \x1b[31m",
        ] {
            assert_eq!(
                parse_line(bad),
                Err(ParseError::Malformed("key contains a control character")),
                "{bad:?}"
            );
        }
        // High bytes (UTF-8) are not control characters.
        assert!(parse_line("get clé".as_bytes()).is_ok());
    }

    #[test]
    fn commands_are_case_sensitive_and_unknown_ones_error() {
        for line in [
            &b"GET a"[..],
            b"",
            b"   ",
            b"bogus",
            b"\x00\x01",
            b"shutdown",
            b"mg a v",
        ] {
            assert_eq!(
                parse_line(line),
                Err(ParseError::UnknownCommand),
                "{line:?}"
            );
        }
        let mut out = Vec::new();
        ParseError::UnknownCommand.write_reply(&mut out);
        assert_eq!(out, b"ERROR\r\n");
    }

    #[test]
    fn simple_commands() {
        assert_eq!(parse_line(b"version"), Ok(Command::Version));
        assert_eq!(parse_line(b"quit"), Ok(Command::Quit));
        assert_eq!(
            parse_line(b"stats"),
            Ok(Command::Stats(StatsGroup::General))
        );
        assert_eq!(
            parse_line(b"stats settings"),
            Ok(Command::Stats(StatsGroup::Settings))
        );
        assert_eq!(
            parse_line(b"stats slabs"),
            Ok(Command::Stats(StatsGroup::Empty))
        );
        assert_eq!(
            parse_line(b"stats reset"),
            Ok(Command::Refused { noreply: false })
        );
        assert!(matches!(
            parse_line(b"stats detail on"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            parse_line(b"version 2"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn storage_commands_announce_their_data() {
        let s = |line: &[u8]| match parse_line(line) {
            Ok(Command::Store(s)) => s,
            other => panic!("{line:?}: {other:?}"),
        };
        assert_eq!(
            s(b"set k 0 0 5"),
            Store {
                data_len: 5,
                noreply: false,
                malformed: None
            }
        );
        assert!(s(b"add k 1 -1 0 noreply").noreply);
        assert_eq!(s(b"cas k 0 0 7 99 noreply").data_len, 7);
        assert!(s(b"cas k 0 0 7 99 noreply").noreply);
        assert_eq!(s(b"cas k 0 0 7 x").malformed, Some("bad cas unique"));
        assert_eq!(
            s(b"set k 0 0 7 extra").malformed,
            Some("bad command line format")
        );
        assert_eq!(
            s(b"set k 0 0 7 noreply x").malformed,
            Some("bad command line format")
        );
        assert_eq!(s(b"set k x 0 7").malformed, Some("bad flags"));
        assert_eq!(s(b"set k 4294967296 0 7").malformed, Some("bad flags"));
        assert_eq!(s(b"set k 0 zz 7").malformed, Some("bad exptime"));
        assert_eq!(s(b"set k\x01 0 0 7").malformed, Some("bad key"));
        assert_eq!(s(b"set k 0 0 1048576").data_len, MAX_DATA_BLOCK);
        assert_eq!(
            s(b"ms k 3 T0 q"),
            Store {
                data_len: 3,
                noreply: true,
                malformed: None
            }
        );
        for bad in [
            &b"set k 0 0"[..],
            b"set",
            b"set k 0 0 -5",
            b"set k 0 0 1048577",
            b"set k 0 0 99999999999999999999999",
            b"set k 0 0 5x",
            b"cas k 0 0 5",
            b"ms k",
            b"ms k big",
        ] {
            let e = parse_line(bad).unwrap_err();
            assert!(e.closes(), "{bad:?} must close: {e:?}");
            let mut out = Vec::new();
            e.write_reply(&mut out);
            assert!(out.starts_with(b"CLIENT_ERROR "), "{bad:?}");
            assert!(out.ends_with(b"\r\n"));
        }
    }

    #[test]
    fn other_writes_are_refused_and_noreply_is_honoured() {
        for line in [
            &b"delete k"[..],
            b"incr k 1",
            b"decr k 1",
            b"touch k 10",
            b"gat 10 k",
            b"flush_all",
            b"verbosity 1",
            b"md k",
        ] {
            assert_eq!(parse_line(line), Ok(Command::Refused { noreply: false }));
        }
        assert_eq!(
            parse_line(b"delete k noreply"),
            Ok(Command::Refused { noreply: true })
        );
        assert_eq!(
            parse_line(b"flush_all noreply"),
            Ok(Command::Refused { noreply: true })
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(number(b"0", 10), Some(0));
        assert_eq!(number(b"10", 10), Some(10));
        assert_eq!(number(b"11", 10), None);
        assert_eq!(number(b"", 10), None);
        assert_eq!(number(b"+1", 10), None);
        assert_eq!(number(b"18446744073709551615", u64::MAX), Some(u64::MAX));
        assert_eq!(number(b"18446744073709551616", u64::MAX), None);
        assert!(signed(b"-1"));
        assert!(!signed(b"--1"));
        assert!(!signed(b"-"));
    }
}
