//! The record of one slot's key: what a generator puts in the store and an agent reads back.
//!
//! Encoding, version 1 (all integers big-endian):
//!
//! ```text
//! magic      "STEK"                              4
//! version    1                                   1
//! kind       1 = plain (in-process stores only)  1
//!            2 = sealed (HPKE, issue 3)
//! header     length u16, then:                   2 + n
//!              group     length u8 + 1..=64 bytes of [A-Za-z0-9._-]
//!              slot u64, period u32 (s), lifetime u32 (s),
//!              not_before u64 (unix s), not_after u64 (unix s),
//!              name [16], generator id [32]
//! body       length u32, then the body           4 + m
//!              plain: the 32-byte secret
//!              sealed: opaque here
//! trailer    length u16, then the trailer        2 + k
//!              plain: empty; sealed: the generator's signature over every byte before it
//! ```
//!
//! The header is bound to the body by the signature (and, for sealed bodies, as HPKE associated
//! data): [`Record::signed_bytes`] and [`RecordHeader::encode`] give the exact bytes. Decoding
//! treats its input as hostile: sizes are capped first, every length is checked, nothing panics.

use core::fmt;

use zeroize::Zeroizing;

use crate::key::{KeyBytes, KeyName, Secret, SlotKey, NAME_LEN, SECRET_LEN};
use crate::schedule::{Schedule, Slot};

/// The largest record accepted, in bytes (a sealed record for a few hundred recipients fits).
pub const MAX_RECORD_LEN: usize = 64 * 1024;
/// The longest group name.
pub const MAX_GROUP_LEN: usize = 64;
/// Length of a generator id (its public signing key, or zeros for in-process generators).
pub const GENERATOR_ID_LEN: usize = 32;

const MAGIC: &[u8; 4] = b"STEK";
const VERSION: u8 = 1;

/// Why a record was rejected. Each reason is stable: agents count rejections by
/// [`RecordError::reason`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// Longer than [`MAX_RECORD_LEN`].
    TooLarge(usize),
    /// Ends before a field it announces.
    Truncated,
    /// Does not start with `STEK`.
    BadMagic,
    /// A format version this build does not know.
    UnsupportedVersion(u8),
    /// A body kind this build does not know.
    UnknownKind(u8),
    /// The group name is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    BadGroup,
    /// A length field disagrees with the bytes that follow.
    BadLength,
    /// Bytes after the trailer.
    TrailingBytes,
    /// A header field disagrees with what the reader expects (named).
    Mismatch(&'static str),
    /// Signed by a generator the reader does not trust.
    UntrustedGenerator,
    /// The signature is missing, malformed or does not verify.
    BadSignature,
    /// The record is not sealed to the reader's group key.
    NotARecipient,
    /// The reader's entry does not decrypt.
    OpenFailed,
}

impl RecordError {
    /// A short stable identifier, for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::TooLarge(_) => "too_large",
            RecordError::Truncated => "truncated",
            RecordError::BadMagic => "bad_magic",
            RecordError::UnsupportedVersion(_) => "unsupported_version",
            RecordError::UnknownKind(_) => "unknown_kind",
            RecordError::BadGroup => "bad_group",
            RecordError::BadLength => "bad_length",
            RecordError::TrailingBytes => "trailing_bytes",
            RecordError::Mismatch(_) => "header_mismatch",
            RecordError::UntrustedGenerator => "untrusted_generator",
            RecordError::BadSignature => "bad_signature",
            RecordError::NotARecipient => "not_a_recipient",
            RecordError::OpenFailed => "open_failed",
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::TooLarge(n) => {
                write!(f, "record of {n} bytes exceeds {MAX_RECORD_LEN} bytes")
            }
            RecordError::Truncated => f.write_str("record is truncated"),
            RecordError::BadMagic => f.write_str("not a stek record (bad magic)"),
            RecordError::UnsupportedVersion(v) => write!(f, "unsupported record version {v}"),
            RecordError::UnknownKind(k) => write!(f, "unknown record body kind {k}"),
            RecordError::BadGroup => f.write_str("invalid group name"),
            RecordError::BadLength => f.write_str("a length field disagrees with the record"),
            RecordError::TrailingBytes => f.write_str("bytes after the end of the record"),
            RecordError::Mismatch(field) => {
                write!(f, "header field {field} is not the expected one")
            }
            RecordError::UntrustedGenerator => {
                f.write_str("signed by a generator that is not trusted")
            }
            RecordError::BadSignature => f.write_str("the generator's signature does not verify"),
            RecordError::NotARecipient => f.write_str("not sealed to this host's group key"),
            RecordError::OpenFailed => f.write_str("the sealed key does not decrypt"),
        }
    }
}

impl std::error::Error for RecordError {}

/// Whether `group` is a valid group name: 1 to 64 bytes of `[A-Za-z0-9._-]`.
pub fn valid_group(group: &str) -> bool {
    !group.is_empty()
        && group.len() <= MAX_GROUP_LEN
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The public part of a record: everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The host group the key belongs to.
    pub group: String,
    /// The slot of the key.
    pub slot: Slot,
    /// The group's period in seconds.
    pub period: u32,
    /// The group's lifetime in seconds.
    pub lifetime: u32,
    /// Unix seconds from which the key may be held (when its slot becomes "next").
    pub not_before: u64,
    /// Unix seconds at which the key leaves every window and must be erased.
    pub not_after: u64,
    /// The key's public name.
    pub name: KeyName,
    /// The generator's id (its public signing key; zeros for an in-process generator).
    pub generator: [u8; GENERATOR_ID_LEN],
}

impl RecordHeader {
    /// The header for `key` in `group` under `schedule`.
    pub fn new(
        schedule: &Schedule,
        group: &str,
        key: &SlotKey,
        generator: [u8; GENERATOR_ID_LEN],
    ) -> RecordHeader {
        let slot = key.slot();
        RecordHeader {
            group: group.to_owned(),
            slot,
            // Both are at most 7 days by construction of a Schedule.
            period: u32::try_from(schedule.period().as_secs()).unwrap_or(u32::MAX),
            lifetime: schedule.lifetime_hint(),
            not_before: schedule.start(slot.minus(1)).as_secs(),
            not_after: schedule.erase_at(slot).as_secs(),
            name: key.name(),
            generator,
        }
    }

    /// Checks the header against what the reader expects: its group, its schedule, the slot the
    /// store filed the record under. Every field is compared; the first mismatch is named.
    pub fn check(&self, schedule: &Schedule, group: &str, slot: Slot) -> Result<(), RecordError> {
        let key = SlotKey::new(slot, self.name, Secret::from_bytes([0; SECRET_LEN]));
        let want = RecordHeader::new(schedule, group, &key, self.generator);
        let fields: [(&'static str, bool); 6] = [
            ("group", self.group == want.group),
            ("slot", self.slot == want.slot),
            ("period", self.period == want.period),
            ("lifetime", self.lifetime == want.lifetime),
            ("not_before", self.not_before == want.not_before),
            ("not_after", self.not_after == want.not_after),
        ];
        match fields.iter().find(|(_, ok)| !ok) {
            Some((field, _)) => Err(RecordError::Mismatch(field)),
            None => Ok(()),
        }
    }

    /// The canonical encoding of the header (without its length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.group.len() + 8 + 4 + 4 + 8 + 8 + 16 + 32);
        // valid_group is enforced on decode; an encoder with an invalid group would produce a
        // record nobody accepts, which is the safe failure.
        out.push(u8::try_from(self.group.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.group.as_bytes());
        out.extend_from_slice(&self.slot.0.to_be_bytes());
        out.extend_from_slice(&self.period.to_be_bytes());
        out.extend_from_slice(&self.lifetime.to_be_bytes());
        out.extend_from_slice(&self.not_before.to_be_bytes());
        out.extend_from_slice(&self.not_after.to_be_bytes());
        out.extend_from_slice(&self.name.0);
        out.extend_from_slice(&self.generator);
        out
    }

    fn decode(r: &mut Reader<'_>) -> Result<RecordHeader, RecordError> {
        let glen = usize::from(r.u8()?);
        let group = core::str::from_utf8(r.take(glen)?).map_err(|_| RecordError::BadGroup)?;
        if !valid_group(group) {
            return Err(RecordError::BadGroup);
        }
        Ok(RecordHeader {
            group: group.to_owned(),
            slot: Slot(r.u64()?),
            period: r.u32()?,
            lifetime: r.u32()?,
            not_before: r.u64()?,
            not_after: r.u64()?,
            name: KeyName(r.array::<NAME_LEN>()?),
            generator: r.array::<GENERATOR_ID_LEN>()?,
        })
    }
}

/// A record's body.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Body {
    /// The secret itself. Only for stores inside one process (the embedded store of `stek up`):
    /// never written to a shared store, never accepted from one.
    Plain(Secret),
    /// The secret sealed to the group's recipients (opaque at this layer).
    Sealed(Vec<u8>),
}

impl Body {
    fn kind(&self) -> u8 {
        match self {
            Body::Plain(_) => 1,
            Body::Sealed(_) => 2,
        }
    }
}

/// One slot's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The public header.
    pub header: RecordHeader,
    /// The secret, plain or sealed.
    pub body: Body,
    /// The signature over [`Record::signed_bytes`] (empty for plain records).
    pub trailer: Vec<u8>,
}

impl Record {
    /// A plain record for an in-process store.
    pub fn plain(schedule: &Schedule, group: &str, key: &SlotKey) -> Record {
        Record {
            header: RecordHeader::new(schedule, group, key, [0; GENERATOR_ID_LEN]),
            body: Body::Plain(key.secret().clone()),
            trailer: Vec::new(),
        }
    }

    /// The key of a plain record, after checking its header against the reader's expectations.
    pub fn open_plain(
        &self,
        schedule: &Schedule,
        group: &str,
        slot: Slot,
    ) -> Result<SlotKey, RecordError> {
        self.header.check(schedule, group, slot)?;
        match &self.body {
            Body::Plain(secret) => Ok(SlotKey::new(slot, self.header.name, secret.clone())),
            Body::Sealed(_) => Err(RecordError::Mismatch("kind")),
        }
    }

    /// Every byte the trailer's signature covers: magic through body.
    pub fn signed_bytes(&self) -> KeyBytes {
        let header = self.header.encode();
        let body: &[u8] = match &self.body {
            Body::Plain(s) => s.expose(),
            Body::Sealed(b) => b,
        };
        let mut out = Zeroizing::new(Vec::with_capacity(12 + header.len() + body.len()));
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.body.kind());
        // Header length <= 1 + 64 + 80; body length is capped by MAX_RECORD_LEN for records that
        // can be decoded.
        out.extend_from_slice(
            &u16::try_from(header.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&header);
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// The full encoding. Zeroized on drop since a plain record holds the secret.
    pub fn encode(&self) -> KeyBytes {
        let mut out = self.signed_bytes();
        out.extend_from_slice(
            &u16::try_from(self.trailer.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.trailer);
        out
    }

    /// Decodes a record from untrusted bytes. Checks structure only: the caller checks the
    /// header ([`RecordHeader::check`]) and the signature.
    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        if bytes.len() > MAX_RECORD_LEN {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(RecordError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(RecordError::UnsupportedVersion(version));
        }
        let kind = r.u8()?;
        if !(1..=2).contains(&kind) {
            return Err(RecordError::UnknownKind(kind));
        }
        let hlen = usize::from(r.u16()?);
        let mut h = Reader(r.take(hlen)?);
        let header = RecordHeader::decode(&mut h)?;
        if !h.0.is_empty() {
            return Err(RecordError::BadLength);
        }
        let blen = usize::try_from(r.u32()?).map_err(|_| RecordError::BadLength)?;
        let body = r.take(blen)?;
        let body = if kind == 1 {
            let secret: [u8; SECRET_LEN] = body.try_into().map_err(|_| RecordError::BadLength)?;
            Body::Plain(Secret::from_bytes(secret))
        } else {
            Body::Sealed(body.to_vec())
        };
        let tlen = usize::from(r.u16()?);
        let trailer = r.take(tlen)?.to_vec();
        if !r.0.is_empty() {
            return Err(RecordError::TrailingBytes);
        }
        Ok(Record {
            header,
            body,
            trailer,
        })
    }
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if n > self.0.len() {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        self.take(N)?.try_into().map_err(|_| RecordError::Truncated)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;
    use proptest::prelude::*;

    fn setup() -> (Schedule, SlotKey) {
        let s = Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap();
        (s, SlotKey::generate(Slot(100)).unwrap())
    }

    #[test]
    fn round_trip_and_open() {
        let (s, k) = setup();
        let rec = Record::plain(&s, "web", &k);
        assert_eq!(rec.header.not_before, 396);
        assert_eq!(rec.header.not_after, 416);
        let bytes = rec.encode();
        let back = Record::decode(&bytes).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.open_plain(&s, "web", Slot(100)).unwrap(), k);
    }

    #[test]
    fn header_mismatches_are_named() {
        let (s, k) = setup();
        let rec = Record::plain(&s, "web", &k);
        let err = |g: &str, slot: u64, sched: &Schedule| {
            rec.open_plain(sched, g, Slot(slot)).unwrap_err()
        };
        assert_eq!(err("api", 100, &s), RecordError::Mismatch("group"));
        assert_eq!(err("web", 101, &s), RecordError::Mismatch("slot"));
        let other = Schedule::new(Duration::from_secs(4), Duration::from_secs(16)).unwrap();
        assert_eq!(err("web", 100, &other), RecordError::Mismatch("lifetime"));
    }

    #[test]
    fn structural_damage_is_rejected() {
        let (s, k) = setup();
        let bytes = Record::plain(&s, "web", &k).encode();
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(Record::decode(&long), Err(RecordError::TrailingBytes));
        let mut v = bytes.to_vec();
        v[4] = 9;
        assert_eq!(Record::decode(&v), Err(RecordError::UnsupportedVersion(9)));
        let mut v = bytes.to_vec();
        v[0] = b'X';
        assert_eq!(Record::decode(&v), Err(RecordError::BadMagic));
        let mut v = bytes.to_vec();
        v[9] = b'/';
        assert_eq!(Record::decode(&v), Err(RecordError::BadGroup));
        assert!(matches!(
            Record::decode(&vec![0; MAX_RECORD_LEN + 1]),
            Err(RecordError::TooLarge(_))
        ));
        // Only the two body kinds exist.
        for kind in [0u8, 3, 255] {
            let mut v = bytes.to_vec();
            v[5] = kind;
            assert_eq!(Record::decode(&v), Err(RecordError::UnknownKind(kind)));
        }
        // A header longer than its fields (junk after them, the length grown to cover it) is
        // not a canonical encoding: refused, as a second encoding of one record would be.
        let hlen = usize::from(u16::from_be_bytes([bytes[6], bytes[7]]));
        let mut v = bytes.to_vec();
        v.insert(8 + hlen, 0);
        v[6..8].copy_from_slice(&u16::try_from(hlen + 1).unwrap().to_be_bytes());
        assert_eq!(Record::decode(&v), Err(RecordError::BadLength));
    }

    /// The limits and the rejection reasons are interfaces: the reasons are metric labels
    /// (`stek_records_rejected_total{reason}`), the size cap is documented as 64 KiB, and a record
    /// of exactly that size is not too large.
    #[test]
    fn limits_and_reasons_are_pinned() {
        assert_eq!(MAX_RECORD_LEN, 65_536);
        assert_ne!(
            Record::decode(&vec![0; MAX_RECORD_LEN]),
            Err(RecordError::TooLarge(MAX_RECORD_LEN))
        );
        let all = [
            (
                RecordError::TooLarge(70_000),
                "too_large",
                "record of 70000 bytes exceeds 65536 bytes",
            ),
            (RecordError::Truncated, "truncated", "record is truncated"),
            (
                RecordError::BadMagic,
                "bad_magic",
                "not a stek record (bad magic)",
            ),
            (
                RecordError::UnsupportedVersion(9),
                "unsupported_version",
                "unsupported record version 9",
            ),
            (
                RecordError::UnknownKind(3),
                "unknown_kind",
                "unknown record body kind 3",
            ),
            (RecordError::BadGroup, "bad_group", "invalid group name"),
            (
                RecordError::BadLength,
                "bad_length",
                "a length field disagrees with the record",
            ),
            (
                RecordError::TrailingBytes,
                "trailing_bytes",
                "bytes after the end of the record",
            ),
            (
                RecordError::Mismatch("slot"),
                "header_mismatch",
                "header field slot is not the expected one",
            ),
            (
                RecordError::UntrustedGenerator,
                "untrusted_generator",
                "signed by a generator that is not trusted",
            ),
            (
                RecordError::BadSignature,
                "bad_signature",
                "the generator's signature does not verify",
            ),
            (
                RecordError::NotARecipient,
                "not_a_recipient",
                "not sealed to this host's group key",
            ),
            (
                RecordError::OpenFailed,
                "open_failed",
                "the sealed key does not decrypt",
            ),
        ];
        for (e, reason, text) in all {
            assert_eq!(e.reason(), reason);
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn group_names() {
        assert!(valid_group("web-eu.1_a"));
        assert!(!valid_group(""));
        assert!(!valid_group("a b"));
        assert!(!valid_group(&"a".repeat(65)));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Record::decode(&bytes);
        }

        #[test]
        fn any_flip_is_caught_or_changes_the_record(i in 0usize..200, bit in 0u8..8) {
            let (s, k) = setup();
            let rec = Record::plain(&s, "web", &k);
            let mut bytes = rec.encode().to_vec();
            let i = i % bytes.len();
            bytes[i] ^= 1 << bit;
            if let Ok(back) = Record::decode(&bytes) {
                prop_assert_ne!(back, rec);
            }
        }
    }
}
