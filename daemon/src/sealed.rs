//! End-to-end sealing of what a device leaves on a hub: a source's key, the AEAD that seals
//! bundles, cursors, snapshots and chunks, the keyed names of chunks, and the padding of sizes
//! into buckets. The hub and its storage only ever see the output of this module.
//!
//! One 256-bit key per source and key generation. From it, HKDF-SHA256 derives the AEAD key
//! (XChaCha20-Poly1305, random 192-bit nonces, so no counter has to be kept in step between
//! devices), the key that names chunks, and the source's opaque name on the hub (the space).
//! What an object is (its kind, the member that wrote it, its sequence or chunk name) is bound
//! in as associated data, so a hub that serves one object in place of another is caught.
//!
//! Must not: do I/O, or know a path, a hub or a wire type.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a source key.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// First byte of every sealed object: the layout below, so it can change later.
const LAYOUT: u8 = 1;
/// Layout byte, key generation (u32), nonce.
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// The length prefix of padded plaintext.
const LEN_PREFIX: usize = 8;
/// The smallest bucket: below it every object looks the same size.
const MIN_BUCKET: usize = 512;

/// Why a source key or a sealed object is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("not a source key: {0}; copy it whole from `tandemctl source key ID` on a member")]
    BadKey(String),
    #[error("no random numbers from the system: {0}")]
    NoRandom(String),
    #[error("sealed object is too short or of an unknown layout")]
    Malformed,
    #[error("sealed under key generation {found}, and this device has no key of it")]
    UnknownGeneration { found: u32 },
    #[error("sealed object fails authentication: changed, or not the object asked for")]
    Forged,
    #[error("object of {0} bytes is too large to seal")]
    TooLarge(usize),
}

/// A source's secret: 32 random bytes and the generation they belong to (a new generation
/// is made when a member is removed).
#[derive(Clone, PartialEq, Eq)]
pub struct SourceKey {
    pub generation: u32,
    bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a secret in a log.
        write!(f, "SourceKey(generation {})", self.generation)
    }
}

/// Text form: `tk1-` + lowercase base32 (no padding) of the generation (4 bytes, big end)
/// and the key: something a user can copy between terminals in one piece.
const TEXT_PREFIX: &str = "tk1-";

impl SourceKey {
    /// A fresh random key of `generation`.
    ///
    /// # Errors
    /// The system gives no random numbers.
    pub fn generate(generation: u32) -> Result<SourceKey, SealError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| SealError::NoRandom(e.to_string()))?;
        Ok(SourceKey { generation, bytes })
    }

    /// A key from its bytes.
    #[must_use]
    pub fn from_bytes(generation: u32, bytes: [u8; KEY_LEN]) -> SourceKey {
        SourceKey { generation, bytes }
    }

    /// The key's bytes, to keep in the store.
    #[must_use]
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// The text a user copies (`source key`) and gives (`source add --key`).
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut raw = Vec::with_capacity(4 + KEY_LEN);
        raw.extend_from_slice(&self.generation.to_be_bytes());
        raw.extend_from_slice(&self.bytes);
        format!(
            "{TEXT_PREFIX}{}",
            data_encoding::BASE32_NOPAD.encode(&raw).to_lowercase()
        )
    }

    /// Reads the text form; spaces and case do not matter.
    ///
    /// # Errors
    /// Not a key's text.
    pub fn from_text(text: &str) -> Result<SourceKey, SealError> {
        let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let lower = cleaned.to_lowercase();
        let body = lower
            .strip_prefix(TEXT_PREFIX)
            .ok_or_else(|| SealError::BadKey(format!("it does not start with {TEXT_PREFIX:?}")))?;
        let raw = data_encoding::BASE32_NOPAD
            .decode(body.to_uppercase().as_bytes())
            .map_err(|e| SealError::BadKey(e.to_string()))?;
        let (generation, bytes) = raw
            .split_first_chunk::<4>()
            .ok_or_else(|| SealError::BadKey("it is too short".into()))?;
        let bytes: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| SealError::BadKey(format!("it holds {} bytes, not 36", raw.len())))?;
        Ok(SourceKey {
            generation: u32::from_be_bytes(*generation),
            bytes,
        })
    }
}

/// Of two keys that members hold for one source, the one both keep: the later generation, and
/// between two of one generation (made on two devices before they met), the one whose space
/// sorts first, so both devices choose alike without another round.
#[must_use]
pub fn prefer<'k>(a: &'k SourceKey, b: &'k SourceKey) -> &'k SourceKey {
    if a.generation != b.generation {
        return if a.generation > b.generation { a } else { b };
    }
    let space = |k: &SourceKey| derive(&k.bytes, "space");
    if space(b) < space(a) { b } else { a }
}

/// Which key hand-over a sealed key is: the space, the member that sealed it, the member it
/// is for, and its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover<'a> {
    pub space: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub generation: u32,
}

impl Handover<'_> {
    fn info(&self) -> Vec<u8> {
        let mut info = b"tandem key handover\0".to_vec();
        for part in [self.space, self.from, self.to] {
            info.extend_from_slice(&(part.len() as u64).to_be_bytes());
            info.extend_from_slice(part.as_bytes());
        }
        info.extend_from_slice(&self.generation.to_be_bytes());
        info
    }
}

/// The key two devices share without meeting: ECDH between one's device key (PKCS#8 PEM)
/// and the other's certificate (DER), through HKDF bound to the hand-over.
fn pair_key(own_key_pem: &str, their_cert: &[u8], h: &Handover<'_>) -> Result<[u8; 32], SealError> {
    use p256::pkcs8::DecodePrivateKey;
    use x509_cert::der::Decode;
    let secret = p256::SecretKey::from_pkcs8_pem(own_key_pem)
        .map_err(|e| SealError::BadKey(format!("this device's key: {e}")))?;
    let cert = x509_cert::Certificate::from_der(their_cert)
        .map_err(|e| SealError::BadKey(format!("a member's certificate: {e}")))?;
    let public = p256::PublicKey::from_sec1_bytes(
        cert.tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes(),
    )
    .map_err(|e| SealError::BadKey(format!("a member's certificate key: {e}")))?;
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine());
    let hk = Hkdf::<Sha256>::new(Some(b"tandem key handover v1"), shared.raw_secret_bytes());
    let mut out = [0u8; 32];
    let _ = hk.expand(&h.info(), &mut out);
    Ok(out)
}

/// Seals a source key for one member, so that only that member (and the sealer) can open
/// it: for members that do not meet the sealer directly after a member was removed.
///
/// # Errors
/// A key or certificate that cannot be read, or no random numbers.
pub fn hand_over(
    own_key_pem: &str,
    their_cert: &[u8],
    h: &Handover<'_>,
    key: &SourceKey,
) -> Result<Vec<u8>, SealError> {
    let wrap = XChaCha20Poly1305::new(&pair_key(own_key_pem, their_cert, h)?.into());
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| SealError::NoRandom(e.to_string()))?;
    let sealed = wrap
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: key.bytes(),
                aad: &h.info(),
            },
        )
        .map_err(|_| SealError::TooLarge(KEY_LEN))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a key another member sealed for this device ([`hand_over`]).
///
/// # Errors
/// A key or certificate that cannot be read, or a sealed key that is not this hand-over's.
pub fn take_over(
    own_key_pem: &str,
    their_cert: &[u8],
    h: &Handover<'_>,
    sealed: &[u8],
) -> Result<SourceKey, SealError> {
    let wrap = XChaCha20Poly1305::new(&pair_key(own_key_pem, their_cert, h)?.into());
    let (nonce, body) = sealed
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(SealError::Malformed)?;
    let plain = wrap
        .decrypt(
            &XNonce::from(*nonce),
            Payload {
                msg: body,
                aad: &h.info(),
            },
        )
        .map_err(|_| SealError::Forged)?;
    let bytes: [u8; KEY_LEN] = plain.try_into().map_err(|_| SealError::Malformed)?;
    Ok(SourceKey::from_bytes(h.generation, bytes))
}

/// What a sealed object is; bound into its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A run of one member's index updates, numbered by that member.
    Bundle,
    /// A member's whole index at one of its sequences.
    Snapshot,
    /// How far a member has applied each other member.
    Cursor,
    /// Content, named by its keyed hash.
    Chunk,
    /// A source key of a later generation, sealed for the members that stay.
    Rekey,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Bundle => 1,
            Kind::Snapshot => 2,
            Kind::Cursor => 3,
            Kind::Chunk => 4,
            Kind::Rekey => 5,
        }
    }
}

/// Which object a sealed one claims to be: opened only as the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub kind: Kind,
    /// The member that wrote it (empty for chunks, which any member may write).
    pub device: String,
    /// Its sequence (bundles, snapshots), or 0.
    pub sequence: u64,
    /// A chunk's name, or empty.
    pub name: String,
}

impl Binding {
    /// A member's bundle `sequence`.
    #[must_use]
    pub fn bundle(device: &str, sequence: u64) -> Binding {
        Binding {
            kind: Kind::Bundle,
            device: device.to_owned(),
            sequence,
            name: String::new(),
        }
    }

    /// A member's snapshot at `sequence`.
    #[must_use]
    pub fn snapshot(device: &str, sequence: u64) -> Binding {
        Binding {
            kind: Kind::Snapshot,
            device: device.to_owned(),
            sequence,
            name: String::new(),
        }
    }

    /// A member's cursor object.
    #[must_use]
    pub fn cursor(device: &str) -> Binding {
        Binding {
            kind: Kind::Cursor,
            device: device.to_owned(),
            sequence: 0,
            name: String::new(),
        }
    }

    /// The chunk stored as `name`.
    #[must_use]
    pub fn chunk(name: &str) -> Binding {
        Binding {
            kind: Kind::Chunk,
            device: String::new(),
            sequence: 0,
            name: name.to_owned(),
        }
    }

    /// A key of `generation` sealed by `device` for the member `name`.
    #[must_use]
    pub fn rekey(device: &str, generation: u32, name: &str) -> Binding {
        Binding {
            kind: Kind::Rekey,
            device: device.to_owned(),
            sequence: u64::from(generation),
            name: name.to_owned(),
        }
    }

    fn associated(&self, space: &str, generation: u32) -> Vec<u8> {
        // Lengths first, so no two bindings make the same bytes.
        let mut aad = Vec::with_capacity(64 + self.device.len() + self.name.len());
        aad.extend_from_slice(b"tandem hub object\0");
        for part in [
            space.as_bytes(),
            self.device.as_bytes(),
            self.name.as_bytes(),
        ] {
            aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad.push(self.kind.tag());
        aad.extend_from_slice(&self.sequence.to_be_bytes());
        aad.extend_from_slice(&generation.to_be_bytes());
        aad
    }
}

/// Seals and opens one source's objects, names its chunks, and names the source itself.
pub struct Sealer {
    /// Keys by generation, newest last: objects written before a rekey stay readable.
    keys: Vec<(u32, XChaCha20Poly1305)>,
    names: Hmac<Sha256>,
    space: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("space", &self.space)
            .field(
                "generations",
                &self.keys.iter().map(|(g, _)| g).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn derive(key: &[u8; KEY_LEN], what: &str) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(b"tandem source key v1"), key);
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit, so `expand` cannot fail.
    let _ = hk.expand(what.as_bytes(), &mut out);
    out
}

impl Sealer {
    /// A sealer over the keys of every generation this device holds. The space (the source's
    /// name on the hub) comes from the first generation's key, so it never changes.
    ///
    /// # Errors
    /// No key was given.
    pub fn new(keys: &[SourceKey]) -> Result<Sealer, SealError> {
        let mut keys: Vec<&SourceKey> = keys.iter().collect();
        keys.sort_by_key(|k| k.generation);
        let first = keys
            .first()
            .ok_or_else(|| SealError::BadKey("no key for the source".into()))?;
        let space_bytes = derive(&first.bytes, "space");
        let space = data_encoding::BASE32_NOPAD
            .encode(space_bytes.get(..20).unwrap_or(&space_bytes))
            .to_lowercase();
        let names_key = derive(&first.bytes, "chunk names");
        let names = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&names_key)
            .map_err(|e| SealError::BadKey(e.to_string()))?;
        let keys = keys
            .iter()
            .map(|k| {
                let aead = derive(&k.bytes, "aead");
                (k.generation, XChaCha20Poly1305::new(&aead.into()))
            })
            .collect();
        Ok(Sealer { keys, names, space })
    }

    /// The source's opaque name on the hub: the same for every member, and no clue to the
    /// source's id.
    #[must_use]
    pub fn space(&self) -> &str {
        &self.space
    }

    /// The newest key generation: what new objects are sealed under.
    #[must_use]
    pub fn generation(&self) -> u32 {
        self.keys.last().map_or(0, |(g, _)| *g)
    }

    /// The storage name of the chunk with this content hash: a keyed hash, so the hub cannot
    /// test a guess of the content.
    #[must_use]
    pub fn chunk_name(&self, content_hash: &[u8]) -> String {
        let mut mac = self.names.clone();
        mac.update(content_hash);
        let tag = mac.finalize().into_bytes();
        data_encoding::BASE32_NOPAD
            .encode(tag.get(..20).unwrap_or(&tag))
            .to_lowercase()
    }

    /// Pads `plain` into its size bucket and seals it as `binding` under the newest key.
    ///
    /// # Errors
    /// No random numbers, or an object too large.
    pub fn seal(&self, binding: &Binding, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let (generation, aead) = self
            .keys
            .last()
            .ok_or_else(|| SealError::BadKey("no key for the source".into()))?;
        let padded_len = bucket(plain.len() + LEN_PREFIX);
        let mut padded = Vec::with_capacity(padded_len);
        padded.extend_from_slice(&(plain.len() as u64).to_be_bytes());
        padded.extend_from_slice(plain);
        padded.resize(padded_len, 0);
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| SealError::NoRandom(e.to_string()))?;
        let aad = binding.associated(&self.space, *generation);
        let sealed = aead
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &padded,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::TooLarge(plain.len()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(LAYOUT);
        out.extend_from_slice(&generation.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens an object only as the `binding` it was sealed as.
    ///
    /// # Errors
    /// Malformed, of a key generation this device does not hold, or not authentic (changed,
    /// or another object than the one asked for).
    pub fn open(&self, binding: &Binding, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (layout, rest) = sealed.split_first().ok_or(SealError::Malformed)?;
        if *layout != LAYOUT || rest.len() < 4 + NONCE_LEN + TAG_LEN + LEN_PREFIX {
            return Err(SealError::Malformed);
        }
        let (generation, rest) = rest.split_first_chunk::<4>().ok_or(SealError::Malformed)?;
        let (nonce, body) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(SealError::Malformed)?;
        let generation = u32::from_be_bytes(*generation);
        let (_, aead) = self
            .keys
            .iter()
            .find(|(g, _)| *g == generation)
            .ok_or(SealError::UnknownGeneration { found: generation })?;
        let aad = binding.associated(&self.space, generation);
        let padded = aead
            .decrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Forged)?;
        let (len, data) = padded
            .split_first_chunk::<LEN_PREFIX>()
            .ok_or(SealError::Forged)?;
        let len = usize::try_from(u64::from_be_bytes(*len)).map_err(|_| SealError::Forged)?;
        data.get(..len).map(<[u8]>::to_vec).ok_or(SealError::Forged)
    }
}

/// The padded size of `len` bytes: at least [`MIN_BUCKET`], and above it rounded up so only
/// the top few bits of the length are kept (Padmé, Nikitin et al. 2019): at most about 12%
/// overhead, and a size tells little more than its order of magnitude.
#[must_use]
pub fn bucket(len: usize) -> usize {
    if len <= MIN_BUCKET {
        return MIN_BUCKET;
    }
    let e = usize::BITS - 1 - len.leading_zeros(); // floor(log2 len)
    let s = u32::BITS - e.leading_zeros(); // floor(log2 e) + 1
    let low = e.saturating_sub(s);
    let mask = (1usize << low) - 1;
    (len + mask) & !mask
}

/// The size a sealed object of `plain_len` bytes has on the hub.
#[must_use]
pub fn sealed_len(plain_len: usize) -> usize {
    HEADER_LEN + bucket(plain_len + LEN_PREFIX) + TAG_LEN
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealer() -> Sealer {
        Sealer::new(&[SourceKey::from_bytes(0, [7; KEY_LEN])]).unwrap()
    }

    #[test]
    fn a_key_round_trips_through_its_text() {
        let key = SourceKey::generate(3).unwrap();
        let text = key.to_text();
        assert!(text.starts_with("tk1-"));
        assert_eq!(SourceKey::from_text(&text).unwrap(), key);
        let spaced = format!("  {}\n", text.to_uppercase());
        assert_eq!(SourceKey::from_text(&spaced).unwrap(), key);
        assert!(matches!(
            SourceKey::from_text("tk1-abc"),
            Err(SealError::BadKey(_))
        ));
        assert!(matches!(
            SourceKey::from_text("hello"),
            Err(SealError::BadKey(_))
        ));
        assert!(!format!("{key:?}").contains(&text[4..10]));
    }

    #[test]
    fn an_object_opens_only_as_what_it_was_sealed_as() {
        let s = sealer();
        let sealed = s
            .seal(&Binding::bundle("AAA", 5), b"index updates")
            .unwrap();
        assert_eq!(
            s.open(&Binding::bundle("AAA", 5), &sealed).unwrap(),
            b"index updates"
        );
        // A replayed older bundle, another member's, another kind: all refused.
        for other in [
            Binding::bundle("AAA", 6),
            Binding::bundle("BBB", 5),
            Binding::snapshot("AAA", 5),
            Binding::chunk("x"),
        ] {
            assert_eq!(s.open(&other, &sealed), Err(SealError::Forged), "{other:?}");
        }
        // Another source's key.
        let other = Sealer::new(&[SourceKey::from_bytes(0, [8; KEY_LEN])]).unwrap();
        assert_ne!(other.space(), s.space());
        assert_eq!(
            other.open(&Binding::bundle("AAA", 5), &sealed),
            Err(SealError::Forged)
        );
        // Every flipped byte is caught.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(
                s.open(&Binding::bundle("AAA", 5), &bad).is_err(),
                "byte {i}"
            );
        }
        assert_eq!(
            s.open(&Binding::bundle("AAA", 5), &sealed[..10]),
            Err(SealError::Malformed)
        );
    }

    #[test]
    fn a_later_generation_seals_and_earlier_ones_still_open() {
        let first = SourceKey::from_bytes(0, [1; KEY_LEN]);
        let old = Sealer::new(std::slice::from_ref(&first)).unwrap();
        let sealed_old = old.seal(&Binding::cursor("A"), b"c").unwrap();
        let second = SourceKey::from_bytes(1, [2; KEY_LEN]);
        let new = Sealer::new(&[second.clone(), first]).unwrap();
        assert_eq!(new.space(), old.space(), "the space stays");
        assert_eq!(new.generation(), 1);
        assert_eq!(new.open(&Binding::cursor("A"), &sealed_old).unwrap(), b"c");
        let sealed_new = new.seal(&Binding::cursor("A"), b"d").unwrap();
        assert_eq!(
            old.open(&Binding::cursor("A"), &sealed_new),
            Err(SealError::UnknownGeneration { found: 1 })
        );
    }

    #[test]
    fn a_key_handed_over_opens_only_for_its_member() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<crate::identity::Identity> = (0..3)
            .map(|i| {
                crate::identity::Identity::load_or_create(&dir.path().join(i.to_string())).unwrap()
            })
            .collect();
        let der = |i: &crate::identity::Identity| {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::from_pem_slice(i.cert_pem.as_bytes())
                .unwrap()
                .to_vec()
        };
        let key = SourceKey::from_bytes(1, [5; KEY_LEN]);
        let h = Handover {
            space: "s",
            from: "A",
            to: "B",
            generation: 1,
        };
        let sealed = hand_over(&ids[0].key_pem, &der(&ids[1]), &h, &key).unwrap();
        assert_eq!(
            take_over(&ids[1].key_pem, &der(&ids[0]), &h, &sealed).unwrap(),
            key
        );
        // The third device (a removed member, say) cannot open it.
        assert!(take_over(&ids[2].key_pem, &der(&ids[0]), &h, &sealed).is_err());
        // Nor is it another hand-over.
        let other = Handover {
            to: "C",
            ..h.clone()
        };
        assert!(take_over(&ids[1].key_pem, &der(&ids[0]), &other, &sealed).is_err());
    }

    #[test]
    fn two_members_prefer_the_same_key() {
        let (x, y) = (
            SourceKey::from_bytes(0, [1; KEY_LEN]),
            SourceKey::from_bytes(0, [2; KEY_LEN]),
        );
        assert_eq!(prefer(&x, &y), prefer(&y, &x));
        let later = SourceKey::from_bytes(1, [0; KEY_LEN]);
        assert_eq!(prefer(&x, &later), &later);
        assert_eq!(prefer(&later, &y), &later);
    }

    #[test]
    fn chunk_names_are_keyed() {
        let a = sealer();
        let b = Sealer::new(&[SourceKey::from_bytes(0, [9; KEY_LEN])]).unwrap();
        assert_eq!(a.chunk_name(b"hash"), a.chunk_name(b"hash"));
        assert_ne!(a.chunk_name(b"hash"), b.chunk_name(b"hash"));
        assert_ne!(a.chunk_name(b"hash"), a.chunk_name(b"hasi"));
    }

    #[test]
    fn sizes_fall_into_few_buckets() {
        assert_eq!(bucket(1), MIN_BUCKET);
        assert_eq!(bucket(MIN_BUCKET), MIN_BUCKET);
        let mut sizes = std::collections::BTreeSet::new();
        for len in 1000..2000 {
            sizes.insert(bucket(len));
        }
        // 1000..1024 rounds to 1024; 1024..2000 to multiples of 64: 17 sizes, not 1000.
        assert!(sizes.len() <= 17, "{sizes:?}");
        let s = sealer();
        let a = s.seal(&Binding::chunk("n"), &[1; 1000]).unwrap();
        let b = s.seal(&Binding::chunk("n"), &[1; 1010]).unwrap();
        assert_eq!(a.len(), b.len());
        assert_eq!(a.len(), sealed_len(1000));
    }

    proptest! {
        #[test]
        fn buckets_cover_and_cost_little(len in 1usize..(64 << 20)) {
            let b = bucket(len);
            prop_assert!(b >= len);
            prop_assert!(b <= MIN_BUCKET.max(len + len / 8 + 1), "{len} -> {b}");
        }

        #[test]
        fn sealing_round_trips(data in proptest::collection::vec(any::<u8>(), 0..5000), seq in any::<u64>()) {
            let s = sealer();
            let sealed = s.seal(&Binding::bundle("D", seq), &data).unwrap();
            prop_assert_eq!(s.open(&Binding::bundle("D", seq), &sealed).unwrap(), data);
        }

        #[test]
        fn opening_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = sealer().open(&Binding::bundle("D", 1), &data);
        }
    }
}
