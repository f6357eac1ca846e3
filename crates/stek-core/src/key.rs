//! Key material: a slot's 16-byte name (public) and 32-byte secret (never shown).

use core::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::schedule::Slot;

/// Length of a key name in bytes (the first 16 bytes of every OpenSSL-style ticket).
pub const NAME_LEN: usize = 16;
/// Length of a slot secret in bytes.
pub const SECRET_LEN: usize = 32;

/// Why fresh randomness could not be had: the operating system's error is the
/// [`source`](std::error::Error::source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomError(getrandom::Error);

impl fmt::Display for RandomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the operating system's random generator failed")
    }
}

impl std::error::Error for RandomError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Fills `buf` from the operating system's random generator.
pub fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::getrandom(buf).map_err(RandomError)
}

/// The public name of a key. It is the same in every format, so an auditor can map a ticket's
/// first 16 bytes to its slot. Displayed as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyName(pub [u8; NAME_LEN]);

impl KeyName {
    /// The name as lowercase hex (32 characters).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Option<KeyName> {
        let b = s.as_bytes();
        if b.len() != 2 * NAME_LEN {
            return None;
        }
        let mut out = [0u8; NAME_LEN];
        for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
            *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(KeyName(out))
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyName({})", self.to_hex())
    }
}

/// A slot's 32-byte secret. Zeroized on drop; `Debug` shows nothing of it; the bytes are only
/// reachable through [`Secret::expose`], at the point of use (key derivation, sealing).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret([u8; SECRET_LEN]);

/// Fails to compile unless `T` is zeroized when dropped: the secret types assert it where they
/// are defined, so a derive or wrapper removed by mistake breaks the build, not only a test.
pub(crate) const fn zeroized_on_drop<T: ZeroizeOnDrop>() {}
const _: () = zeroized_on_drop::<Secret>();
const _: () = zeroized_on_drop::<KeyBytes>();

impl Secret {
    /// Takes ownership of secret bytes (the caller's copy should be zeroized).
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Secret {
        Secret(bytes)
    }

    /// A fresh secret from the operating system's random generator.
    pub fn random() -> Result<Secret, RandomError> {
        let mut s = Secret([0; SECRET_LEN]);
        fill_random(&mut s.0)?;
        Ok(s)
    }

    /// The secret bytes. Never log, print or persist them.
    pub fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl PartialEq for Secret {
    /// Constant-time comparison.
    fn eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for Secret {}

/// One slot's key `K_e`: its slot, its public name, its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotKey {
    slot: Slot,
    name: KeyName,
    secret: Secret,
}

impl SlotKey {
    /// Assembles a key from its parts.
    pub fn new(slot: Slot, name: KeyName, secret: Secret) -> SlotKey {
        SlotKey { slot, name, secret }
    }

    /// A fresh key for `slot`: random name, random secret.
    pub fn generate(slot: Slot) -> Result<SlotKey, RandomError> {
        let mut name = [0u8; NAME_LEN];
        fill_random(&mut name)?;
        Ok(SlotKey {
            slot,
            name: KeyName(name),
            secret: Secret::random()?,
        })
    }

    /// The slot this key belongs to.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The key's public name.
    pub fn name(&self) -> KeyName {
        self.name
    }

    /// The key's secret.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

impl fmt::Debug for SlotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotKey")
            .field("slot", &self.slot)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A heap buffer of key bytes that is zeroized on drop.
pub type KeyBytes = Zeroizing<Vec<u8>>;

#[cfg(test)]
pub(crate) mod tests_support {
    /// A `RandomError` for tests elsewhere in the crate (its field is private).
    pub(crate) fn random_error() -> super::RandomError {
        super::RandomError(getrandom::Error::UNSUPPORTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_errors_keep_the_systems_error() {
        use std::error::Error as _;
        let e = RandomError(getrandom::Error::UNSUPPORTED);
        assert_eq!(
            e.to_string(),
            "the operating system's random generator failed"
        );
        let cause = e.source().unwrap();
        assert!(cause.is::<getrandom::Error>());
        assert_eq!(cause.to_string(), getrandom::Error::UNSUPPORTED.to_string());
    }

    #[test]
    fn debug_never_shows_secret_bytes() {
        let k = SlotKey::new(Slot(7), KeyName([0xab; 16]), Secret::from_bytes([0x5a; 32]));
        let d = format!("{k:?}");
        assert!(d.contains("abababab"), "{d}");
        assert!(!d.contains("5a") && !d.contains("90"), "{d}");
        assert_eq!(format!("{:?}", k.secret()), "Secret(..)");
    }

    #[test]
    fn names_round_trip_through_hex() {
        let n = KeyName(*b"0123456789abcdef");
        assert_eq!(KeyName::from_hex(&n.to_hex()), Some(n));
        assert_eq!(KeyName::from_hex("zz"), None);
        assert_eq!(KeyName::from_hex(&"g".repeat(32)), None);
        // Every byte value, in lowercase and in uppercase digits; Display is the lowercase hex.
        for chunk in (0..=255u8).collect::<Vec<_>>().chunks(16) {
            let n = KeyName(chunk.try_into().unwrap());
            let hex = n.to_hex();
            assert_eq!(format!("{n}"), hex);
            assert_eq!(KeyName::from_hex(&hex), Some(n), "{hex}");
            assert_eq!(KeyName::from_hex(&hex.to_uppercase()), Some(n), "{hex}");
        }
        assert_eq!(
            KeyName::from_hex("00112233445566778899aabbccddeeff")
                .unwrap()
                .0[15],
            0xff
        );
        assert_eq!(
            KeyName::from_hex("00112233445566778899AABBCCDDEEFF")
                .unwrap()
                .0[10],
            0xaa
        );
    }

    /// The comparison folds every byte difference with OR: two differences that XOR would
    /// cancel out still make the secrets unequal.
    #[test]
    fn secrets_differing_in_two_bytes_alike_are_unequal() {
        let a = Secret::from_bytes([0; SECRET_LEN]);
        let mut b = [0; SECRET_LEN];
        b[3] = 0x41;
        b[17] = 0x41;
        assert_ne!(a, Secret::from_bytes(b));
        assert_eq!(a, Secret::from_bytes([0; SECRET_LEN]));
    }

    #[test]
    fn generated_keys_differ() {
        let a = SlotKey::generate(Slot(1)).unwrap();
        let b = SlotKey::generate(Slot(1)).unwrap();
        assert_ne!(a.name(), b.name());
        assert_ne!(a.secret(), b.secret());
    }
}
