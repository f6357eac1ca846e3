//! Sealed, signed records: what crosses a shared store (docs/DESIGN.md §3).
//!
//! A slot's 32-byte secret is sealed to every recipient key of its group with HPKE (RFC 9180,
//! base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305), with the encoded
//! header as associated data. The whole record (magic through body, header included) is signed by
//! the generator with Ed25519; the generator's public key is the header's generator id.
//!
//! An agent accepts a record only if, in this order (authenticity before any decryption):
//! the header matches its group, schedule and the slot the store filed it under; the generator
//! id is one it trusts; the signature verifies (strict Ed25519); an entry for its own key exists
//! and opens. Sealed body layout:
//!
//! ```text
//! count u16 (1..=MAX_RECIPIENTS)
//! count x { recipient id [8] = SHA-256(public key)[..8] | enc [32] | ciphertext [48] }
//! ```

use core::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::key::{fill_random, RandomError, Secret, SlotKey, SECRET_LEN};
use crate::record::{Body, Record, RecordError, RecordHeader};
use crate::schedule::{Schedule, Slot};

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// The HPKE `info` of every record.
const INFO: &[u8] = b"stek v1 record";
/// The most recipients one record may carry.
pub const MAX_RECIPIENTS: usize = 512;
const RID_LEN: usize = 8;
const ENC_LEN: usize = 32;
const CT_LEN: usize = SECRET_LEN + 16;
const ENTRY_LEN: usize = RID_LEN + ENC_LEN + CT_LEN;
const SIG_LEN: usize = 64;

const GROUP_PUB_PREFIX: &str = "stek-group1:";
const GEN_PUB_PREFIX: &str = "stek-generator1:";
const GROUP_SECRET_PREFIX: &str = "STEK-GROUP-SECRET-KEY-1:";
const GEN_SECRET_PREFIX: &str = "STEK-GENERATOR-SECRET-KEY-1:";

/// Why a key could not be parsed or used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The text does not have the expected prefix (the message names it).
    WrongKind(&'static str),
    /// The base64 or its length is wrong.
    Malformed,
    /// No key line was found in an identity file.
    NoKey(&'static str),
    /// Randomness was unavailable.
    Random(RandomError),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::WrongKind(want) => write!(f, "not a {want}"),
            KeyError::Malformed => f.write_str("malformed key (bad base64 or length)"),
            KeyError::NoKey(want) => write!(f, "no {want} line found"),
            // Says what failed itself; its source says why.
            KeyError::Random(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: its Display is this one's, so its cause comes next.
            KeyError::Random(e) => e.source(),
            KeyError::WrongKind(_) | KeyError::Malformed | KeyError::NoKey(_) => None,
        }
    }
}

impl From<RandomError> for KeyError {
    fn from(e: RandomError) -> Self {
        KeyError::Random(e)
    }
}

fn decode32(text: &str, prefix: &'static str, kind: &'static str) -> Result<[u8; 32], KeyError> {
    let body = text
        .trim()
        .strip_prefix(prefix)
        .ok_or(KeyError::WrongKind(kind))?;
    let bytes = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| KeyError::Malformed)?,
    );
    bytes.as_slice().try_into().map_err(|_| KeyError::Malformed)
}

fn find_line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().map(str::trim).find(|l| l.starts_with(prefix))
}

/// A host group's public key (X25519), text form `stek-group1:<base64url>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupPublicKey([u8; 32]);

impl GroupPublicKey {
    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let b = decode32(text, GROUP_PUB_PREFIX, "group public key (stek-group1:...)")?;
        <Kem as hpke::Kem>::PublicKey::from_bytes(&b).map_err(|_| KeyError::Malformed)?;
        Ok(GroupPublicKey(b))
    }

    fn recipient_id(&self) -> [u8; RID_LEN] {
        let h = Sha256::digest(self.0);
        let mut id = [0u8; RID_LEN];
        id.copy_from_slice(&h[..RID_LEN]);
        id
    }
}

impl fmt::Display for GroupPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{GROUP_PUB_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for GroupPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupPublicKey({self})")
    }
}

/// A host group's private key. Every TLS host of the group holds it; it opens the group's records.
pub struct GroupIdentity {
    seed: Zeroizing<[u8; 32]>,
    sk: <Kem as hpke::Kem>::PrivateKey,
    public: GroupPublicKey,
}

impl GroupIdentity {
    /// A fresh identity.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        fill_random(seed.as_mut())?;
        Ok(Self::from_seed(seed))
    }

    fn from_seed(seed: Zeroizing<[u8; 32]>) -> Self {
        let (sk, pk) = Kem::derive_keypair(seed.as_ref());
        let mut p = [0u8; 32];
        p.copy_from_slice(&pk.to_bytes());
        GroupIdentity {
            seed,
            sk,
            public: GroupPublicKey(p),
        }
    }

    /// The public key to give to generators.
    pub fn public(&self) -> GroupPublicKey {
        self.public
    }

    /// The identity file's text (secret: write it with mode 0600).
    pub fn to_file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "# stek group identity (X25519). Secret: every host of the group holds it, nobody else.\n# public key: {}\n{GROUP_SECRET_PREFIX}{}\n",
            self.public,
            URL_SAFE_NO_PAD.encode(self.seed.as_ref())
        ))
    }

    /// Reads an identity file's text.
    pub fn from_file_text(text: &str) -> Result<Self, KeyError> {
        let line = find_line(text, GROUP_SECRET_PREFIX)
            .ok_or(KeyError::NoKey("STEK-GROUP-SECRET-KEY-1"))?;
        let seed = Zeroizing::new(decode32(line, GROUP_SECRET_PREFIX, "group identity")?);
        Ok(Self::from_seed(seed))
    }
}

impl fmt::Debug for GroupIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupIdentity(public: {})", self.public)
    }
}

/// A generator's public (verifying) key, text form `stek-generator1:<base64url>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GeneratorPublicKey([u8; 32]);

impl GeneratorPublicKey {
    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let b = decode32(
            text,
            GEN_PUB_PREFIX,
            "generator public key (stek-generator1:...)",
        )?;
        VerifyingKey::from_bytes(&b).map_err(|_| KeyError::Malformed)?;
        Ok(GeneratorPublicKey(b))
    }

    /// The raw 32 bytes (the generator id of records).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
}

impl fmt::Display for GeneratorPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{GEN_PUB_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for GeneratorPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GeneratorPublicKey({self})")
    }
}

/// A generator's signing key (Ed25519; zeroized on drop).
pub struct GeneratorKey {
    sk: SigningKey,
}
const _: () = crate::key::zeroized_on_drop::<SigningKey>();
const _: () = crate::key::zeroized_on_drop::<Zeroizing<[u8; 32]>>();

impl GeneratorKey {
    /// A fresh signing key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        fill_random(seed.as_mut())?;
        Ok(GeneratorKey {
            sk: SigningKey::from_bytes(&seed),
        })
    }

    /// The public key agents pin with `--trust`.
    pub fn public(&self) -> GeneratorPublicKey {
        GeneratorPublicKey(self.sk.verifying_key().to_bytes())
    }

    /// The key file's text (secret: write it with mode 0600).
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let seed = Zeroizing::new(self.sk.to_bytes());
        Zeroizing::new(format!(
            "# stek generator signing key (Ed25519). Secret: only generators hold it.\n# public key: {}\n{GEN_SECRET_PREFIX}{}\n",
            self.public(),
            URL_SAFE_NO_PAD.encode(seed.as_ref())
        ))
    }

    /// Reads a key file's text.
    pub fn from_file_text(text: &str) -> Result<Self, KeyError> {
        let line = find_line(text, GEN_SECRET_PREFIX)
            .ok_or(KeyError::NoKey("STEK-GENERATOR-SECRET-KEY-1"))?;
        let seed = Zeroizing::new(decode32(line, GEN_SECRET_PREFIX, "generator signing key")?);
        Ok(GeneratorKey {
            sk: SigningKey::from_bytes(&seed),
        })
    }
}

impl fmt::Debug for GeneratorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GeneratorKey(public: {})", self.public())
    }
}

/// Why a record could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// No recipients, or more than [`MAX_RECIPIENTS`].
    Recipients(usize),
    /// HPKE failed (a malformed recipient key); HPKE's error is the source.
    Hpke(hpke::HpkeError),
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::Recipients(n) => {
                write!(
                    f,
                    "a record needs 1 to {MAX_RECIPIENTS} recipients, got {n}"
                )
            }
            SealError::Hpke(_) => f.write_str("HPKE sealing failed"),
        }
    }
}

impl std::error::Error for SealError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SealError::Hpke(e) => Some(e),
            SealError::Recipients(_) => None,
        }
    }
}

impl Record {
    /// Seals `key` to every recipient of `group` and signs the record with `signer`.
    pub fn seal(
        schedule: &Schedule,
        group: &str,
        key: &SlotKey,
        recipients: &[GroupPublicKey],
        signer: &GeneratorKey,
    ) -> Result<Record, SealError> {
        if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
            return Err(SealError::Recipients(recipients.len()));
        }
        let header = RecordHeader::new(schedule, group, key, signer.public().0);
        let aad = header.encode();
        let mut body = Vec::with_capacity(2 + recipients.len() * ENTRY_LEN);
        // MAX_RECIPIENTS fits in u16.
        body.extend_from_slice(
            &u16::try_from(recipients.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        for r in recipients {
            let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&r.0).map_err(SealError::Hpke)?;
            let (enc, ct) = hpke::single_shot_seal::<Aead, Kdf, Kem>(
                &OpModeS::Base,
                &pk,
                INFO,
                key.secret().expose(),
                &aad,
            )
            .map_err(SealError::Hpke)?;
            if ct.len() != CT_LEN {
                return Err(SealError::Hpke(hpke::HpkeError::SealError));
            }
            body.extend_from_slice(&r.recipient_id());
            body.extend_from_slice(&enc.to_bytes());
            body.extend_from_slice(&ct);
        }
        let mut record = Record {
            header,
            body: Body::Sealed(body),
            trailer: Vec::new(),
        };
        let sig = signer.sk.sign(&record.signed_bytes());
        record.trailer = sig.to_bytes().to_vec();
        Ok(record)
    }

    /// Checks that this is a sealed record whose signature verifies (strict Ed25519) under the
    /// generator key its header names, and returns that key: whoever wrote it held that
    /// generator's signing key. Needs no group identity and opens nothing; says nothing about
    /// whether the generator is trusted, nor about the header (check it with
    /// [`RecordHeader::check`]). Generators use it to tell another generator's record, which
    /// they must leave alone, from a value no generator could have written.
    pub fn verify_signature(&self) -> Result<GeneratorPublicKey, RecordError> {
        if !matches!(self.body, Body::Sealed(_)) {
            return Err(RecordError::Mismatch("kind"));
        }
        self.check_signature()?;
        Ok(GeneratorPublicKey(self.header.generator))
    }

    fn check_signature(&self) -> Result<(), RecordError> {
        let vk = VerifyingKey::from_bytes(&self.header.generator)
            .map_err(|_| RecordError::BadSignature)?;
        let sig: [u8; SIG_LEN] = self
            .trailer
            .as_slice()
            .try_into()
            .map_err(|_| RecordError::BadSignature)?;
        vk.verify_strict(&self.signed_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| RecordError::BadSignature)
    }

    /// Checks and opens a sealed record filed under `slot`: header, trusted generator, signature,
    /// then decryption with `identity`. See the module documentation for the order.
    pub fn open_sealed(
        &self,
        schedule: &Schedule,
        group: &str,
        slot: Slot,
        identity: &GroupIdentity,
        trusted: &[GeneratorPublicKey],
    ) -> Result<SlotKey, RecordError> {
        self.header.check(schedule, group, slot)?;
        let Body::Sealed(body) = &self.body else {
            return Err(RecordError::Mismatch("kind"));
        };
        if !trusted.iter().any(|t| t.0 == self.header.generator) {
            return Err(RecordError::UntrustedGenerator);
        }
        self.check_signature()?;

        let (count, entries) = body.split_at_checked(2).ok_or(RecordError::Truncated)?;
        let count = usize::from(u16::from_be_bytes([count[0], count[1]]));
        if count == 0 || count > MAX_RECIPIENTS || entries.len() != count * ENTRY_LEN {
            return Err(RecordError::BadLength);
        }
        let me = identity.public.recipient_id();
        let aad = self.header.encode();
        let mut mine = false;
        for e in entries.chunks_exact(ENTRY_LEN) {
            let (rid, rest) = e.split_at(RID_LEN);
            if rid != me {
                continue;
            }
            mine = true;
            let (enc, ct) = rest.split_at(ENC_LEN);
            let Ok(enc) = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc) else {
                continue;
            };
            if let Ok(pt) = hpke::single_shot_open::<Aead, Kdf, Kem>(
                &OpModeR::Base,
                &identity.sk,
                &enc,
                INFO,
                ct,
                &aad,
            ) {
                let pt = Zeroizing::new(pt);
                if let Ok(secret) = <[u8; SECRET_LEN]>::try_from(pt.as_slice()) {
                    return Ok(SlotKey::new(
                        slot,
                        self.header.name,
                        Secret::from_bytes(secret),
                    ));
                }
            }
        }
        Err(if mine {
            RecordError::OpenFailed
        } else {
            RecordError::NotARecipient
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;
    use std::error::Error as _;

    #[test]
    fn key_and_seal_errors_keep_their_causes() {
        let random = crate::key::tests_support::random_error();
        let e = KeyError::from(random);
        assert_eq!(e.to_string(), random.to_string());
        // Transparent: the cause after "the random generator failed" is the system's error.
        assert!(e.source().unwrap().is::<getrandom::Error>());
        assert!(KeyError::Malformed.source().is_none());

        let e = SealError::Hpke(hpke::HpkeError::ValidationError);
        assert_eq!(e.to_string(), "HPKE sealing failed");
        assert_eq!(
            e.source().unwrap().downcast_ref::<hpke::HpkeError>(),
            Some(&hpke::HpkeError::ValidationError)
        );
        assert!(SealError::Recipients(0).source().is_none());
    }

    #[test]
    fn signatures_verify_without_a_group_identity() {
        let w = world();
        let r = sealed(&w);
        assert_eq!(r.verify_signature(), Ok(w.gen.public()));
        // Survives the store: decoded from its bytes.
        let back = Record::decode(&r.encode()).unwrap();
        assert_eq!(back.verify_signature(), Ok(w.gen.public()));
        // Any change to what is signed, or to the signature, fails it.
        let mut bad = r.clone();
        bad.header.not_after += 1;
        assert_eq!(bad.verify_signature(), Err(RecordError::BadSignature));
        let mut bad = r.clone();
        bad.trailer[0] ^= 1;
        assert_eq!(bad.verify_signature(), Err(RecordError::BadSignature));
        let mut bad = r.clone();
        bad.trailer.pop();
        assert_eq!(bad.verify_signature(), Err(RecordError::BadSignature));
        // Claiming another generator's id does not make its signature.
        let mut bad = r.clone();
        bad.header.generator = GeneratorKey::generate().unwrap().public().0;
        assert_eq!(bad.verify_signature(), Err(RecordError::BadSignature));
        // A plain record carries no signature at all.
        let plain = Record::plain(&w.s, "web", &w.key);
        assert_eq!(plain.verify_signature(), Err(RecordError::Mismatch("kind")));
    }

    /// The identity point as the generator key and as R, with s = 0: the cofactorless equation
    /// of non-strict Ed25519 verification holds for every message, so anyone could "sign" as
    /// that key. Strict verification refuses small-order keys and R: the record is refused even
    /// where an operator trusted such a key.
    #[test]
    fn small_order_keys_and_signatures_are_refused() {
        use ed25519_dalek::Verifier as _;
        let w = world();
        let mut rec = sealed(&w);
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let mut sig = [0u8; SIG_LEN];
        sig[0] = 1;
        rec.header.generator = weak;
        rec.trailer = sig.to_vec();
        let vk = VerifyingKey::from_bytes(&weak).unwrap();
        assert!(
            vk.verify(&rec.signed_bytes(), &Signature::from_bytes(&sig))
                .is_ok(),
            "the forgery passes non-strict verification (else this test proves nothing)"
        );
        assert_eq!(rec.verify_signature(), Err(RecordError::BadSignature));
        let trusted = GeneratorPublicKey(weak);
        assert_eq!(
            rec.open_sealed(&w.s, "web", Slot(100), &w.members[0], &[trusted]),
            Err(RecordError::BadSignature)
        );
    }

    /// A record is sealed to 1 to MAX_RECIPIENTS recipients; one whose (signed) body claims
    /// none, too many, or another count than its entries is refused, even signed by a trusted
    /// generator.
    #[test]
    fn recipient_counts_are_bounded_when_sealing_and_opening() {
        let w = world();
        let one = [w.members[0].public()];
        assert!(matches!(
            Record::seal(&w.s, "web", &w.key, &[], &w.gen),
            Err(SealError::Recipients(0))
        ));
        let many = vec![w.members[0].public(); MAX_RECIPIENTS + 1];
        assert!(matches!(
            Record::seal(&w.s, "web", &w.key, &many, &w.gen),
            Err(SealError::Recipients(n)) if n == MAX_RECIPIENTS + 1
        ));
        let full = vec![w.members[0].public(); MAX_RECIPIENTS];
        let rec = Record::seal(&w.s, "web", &w.key, &full, &w.gen).unwrap();
        let trust = [w.gen.public()];
        assert_eq!(
            rec.open_sealed(&w.s, "web", Slot(100), &w.members[0], &trust),
            Ok(w.key.clone())
        );
        // Bodies a trusted but broken generator could sign: the count field lies.
        let rec = Record::seal(&w.s, "web", &w.key, &one, &w.gen).unwrap();
        let Body::Sealed(body) = &rec.body else {
            panic!("sealed")
        };
        for count in [0u16, 2, u16::try_from(MAX_RECIPIENTS + 1).unwrap()] {
            let mut bad = rec.clone();
            let mut b = body.clone();
            b[..2].copy_from_slice(&count.to_be_bytes());
            if count as usize > MAX_RECIPIENTS {
                // As many entries as it claims: only the cap refuses it.
                let entry = b[2..2 + ENTRY_LEN].to_vec();
                for _ in 1..count {
                    b.extend_from_slice(&entry);
                }
            }
            bad.body = Body::Sealed(b);
            bad.trailer = w.gen.sk.sign(&bad.signed_bytes()).to_bytes().to_vec();
            assert_eq!(
                bad.open_sealed(&w.s, "web", Slot(100), &w.members[0], &trust),
                Err(RecordError::BadLength),
                "count {count}"
            );
        }
    }

    /// Keys print by their public text form only; a signing key shows its public half.
    #[test]
    fn debug_and_bytes_show_public_forms_only() {
        let w = world();
        let gp = w.members[0].public();
        assert_eq!(format!("{gp:?}"), format!("GroupPublicKey({gp})"));
        let pk = w.gen.public();
        assert_eq!(format!("{pk:?}"), format!("GeneratorPublicKey({pk})"));
        assert_eq!(
            format!("{:?}", w.gen),
            format!("GeneratorKey(public: {pk})")
        );
        assert_eq!(pk.to_bytes(), sealed(&w).header.generator);
        assert_eq!(
            GeneratorPublicKey::parse(&pk.to_string())
                .unwrap()
                .to_bytes(),
            pk.to_bytes()
        );
    }

    struct World {
        s: Schedule,
        gen: GeneratorKey,
        members: Vec<GroupIdentity>,
        key: SlotKey,
    }

    fn world() -> World {
        World {
            s: Schedule::new(Duration::from_secs(4), Duration::from_secs(12)).unwrap(),
            gen: GeneratorKey::generate().unwrap(),
            members: (0..3).map(|_| GroupIdentity::generate().unwrap()).collect(),
            key: SlotKey::generate(Slot(100)).unwrap(),
        }
    }

    fn sealed(w: &World) -> Record {
        let pubs: Vec<_> = w.members.iter().map(|m| m.public()).collect();
        Record::seal(&w.s, "web", &w.key, &pubs, &w.gen).unwrap()
    }

    #[test]
    fn every_member_opens_after_a_round_trip() {
        let w = world();
        let bytes = sealed(&w).encode();
        let rec = Record::decode(&bytes).unwrap();
        for m in &w.members {
            let k = rec
                .open_sealed(&w.s, "web", Slot(100), m, &[w.gen.public()])
                .unwrap();
            assert_eq!(k, w.key);
        }
        // Nothing of the secret is visible in the record.
        let secret = w.key.secret().expose();
        assert!(!bytes.windows(8).any(|x| secret.windows(8).any(|y| x == y)));
    }

    #[test]
    fn outsiders_and_untrusted_generators_get_nothing() {
        let w = world();
        let rec = sealed(&w);
        let outsider = GroupIdentity::generate().unwrap();
        assert_eq!(
            rec.open_sealed(&w.s, "web", Slot(100), &outsider, &[w.gen.public()]),
            Err(RecordError::NotARecipient)
        );
        let other = GeneratorKey::generate().unwrap();
        assert_eq!(
            rec.open_sealed(&w.s, "web", Slot(100), &w.members[0], &[other.public()]),
            Err(RecordError::UntrustedGenerator)
        );
    }

    #[test]
    fn forgeries_and_replays_are_rejected() {
        let w = world();
        let rec = sealed(&w);
        let m = &w.members[0];
        let trust = [w.gen.public()];
        // Replayed into another slot or group.
        assert_eq!(
            rec.open_sealed(&w.s, "web", Slot(101), m, &trust),
            Err(RecordError::Mismatch("slot"))
        );
        assert_eq!(
            rec.open_sealed(&w.s, "api", Slot(100), m, &trust),
            Err(RecordError::Mismatch("group"))
        );
        // A forger who re-signs with its own key, claiming the trusted generator's id.
        let forger = GeneratorKey::generate().unwrap();
        let mut forged = Record::seal(
            &w.s,
            "web",
            &SlotKey::generate(Slot(100)).unwrap(),
            &[m.public()],
            &forger,
        )
        .unwrap();
        forged.header.generator = w.gen.public().0;
        assert_eq!(
            forged.open_sealed(&w.s, "web", Slot(100), m, &trust),
            Err(RecordError::BadSignature)
        );
        // A changed key name (header) breaks the signature.
        let mut renamed = rec.clone();
        renamed.header.name.0[0] ^= 1;
        assert_eq!(
            renamed.open_sealed(&w.s, "web", Slot(100), m, &trust),
            Err(RecordError::BadSignature)
        );
        // Every single-bit flip of the encoding is caught somewhere.
        let bytes = rec.encode();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x10;
            if let Ok(r) = Record::decode(&b) {
                assert!(
                    r.open_sealed(&w.s, "web", Slot(100), m, &trust).is_err(),
                    "flip at byte {i} accepted"
                );
            }
        }
        // Truncation at every length.
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn key_text_forms_round_trip() {
        let g = GroupIdentity::generate().unwrap();
        let text = g.to_file_text();
        let back = GroupIdentity::from_file_text(&text).unwrap();
        assert_eq!(back.public(), g.public());
        assert_eq!(
            GroupPublicKey::parse(&g.public().to_string()).unwrap(),
            g.public()
        );
        assert!(format!("{g:?}").contains("stek-group1:"));
        assert!(!format!("{g:?}").contains(&URL_SAFE_NO_PAD.encode(g.seed.as_ref())));

        let k = GeneratorKey::generate().unwrap();
        let back = GeneratorKey::from_file_text(&k.to_file_text()).unwrap();
        assert_eq!(back.public(), k.public());
        assert_eq!(
            GeneratorPublicKey::parse(&k.public().to_string()).unwrap(),
            k.public()
        );
        assert!(
            GroupPublicKey::parse(&k.public().to_string()).is_err(),
            "kinds are not confused"
        );
        assert!(GroupIdentity::from_file_text("garbage").is_err());
    }
}
